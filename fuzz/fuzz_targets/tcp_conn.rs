//! libFuzzer entry for [`nvmfd_fuzz::tcp_conn`] (run it with `fuzz/run.sh tcp_conn SECONDS`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvmfd_fuzz::tcp_conn(data));
