//! libFuzzer entry for [`nvmfd_fuzz::pdu`] (run it with `fuzz/run.sh pdu SECONDS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvmfd_fuzz::pdu(data));
