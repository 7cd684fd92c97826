//! libFuzzer entry for [`nvmfd_fuzz::yaml`] (run it with `fuzz/run.sh yaml SECONDS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvmfd_fuzz::yaml(data));
