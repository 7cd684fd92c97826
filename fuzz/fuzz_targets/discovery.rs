//! libFuzzer entry for [`nvmfd_fuzz::discovery`] (run it with `fuzz/run.sh discovery SECONDS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvmfd_fuzz::discovery(data));
