//! Helpers shared by the integration tests of nvmfd-target (`mod common;` in each test file).
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use nvmfd_target::daemon::Daemon;
use nvmfd_target::rpc::client::Client;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A TCP port free on 127.0.0.1 right now (the kernel's pick for port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh temporary directory `nvmfd-TAG-PID-N` (unique in the process), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "nvmfd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `yaml` as a configuration (named `file` in errors); panics with the diagnostics.
pub fn config(yaml: &str, file: &str) -> nvmfd_config::Config {
    nvmfd_config::parse_str(yaml, file).unwrap_or_else(|e| panic!("{e}\n--- {file} ---\n{yaml}"))
}

/// A daemon running `yaml`.
pub fn start_yaml(yaml: &str, file: &str) -> Daemon {
    Daemon::start(&config(yaml, file)).expect("daemon starts")
}

/// An RPC call that must succeed: its result. `p`: the params (a `Value`, or `None`).
pub fn call(c: &mut Client, m: &str, p: impl Into<Option<Value>>) -> Value {
    match c.call(m, p.into()).unwrap() {
        Ok(v) => v,
        Err(e) => panic!("{m}: error {e:?}"),
    }
}

/// An RPC call that must fail: its error code and message.
pub fn err(c: &mut Client, m: &str, p: impl Into<Option<Value>>) -> (i32, String) {
    match c.call(m, p.into()).unwrap() {
        Ok(v) => panic!("{m}: expected an error, got {v}"),
        Err(e) => (e.code, e.message),
    }
}

/// `GET path` on an HTTP server: the whole response (status line, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The body of a response.
pub fn body_of(m: &str) -> &str {
    &m[m.find("\r\n\r\n").map_or(0, |i| i + 4)..]
}

/// `/metrics` of a metrics endpoint: the body of a 200 answer.
pub fn scrape(addr: SocketAddr) -> String {
    let out = http_get(addr, "/metrics");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    body_of(&out).to_string()
}
