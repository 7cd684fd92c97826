//! libFuzzer entry for [`nvmfd_fuzz::capsule`] (run it with `fuzz/run.sh capsule SECONDS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvmfd_fuzz::capsule(data));
