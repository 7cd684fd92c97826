//! The control-plane fields (`rpc`, `metrics`) and `to_yaml` round trips.

mod common;

use common::{err1, ok, BASE};
use nvmfd_config::{parse_str, to_yaml, Config};
use std::path::PathBuf;

#[test]
fn rpc_socket_default_and_value() {
    assert_eq!(ok(BASE).rpc.socket, PathBuf::from("/var/tmp/nvmfd.sock"));
    let c = ok(&format!("rpc: {{ socket: /run/nvmfd/ctl.sock }}\n{BASE}"));
    assert_eq!(c.rpc.socket, PathBuf::from("/run/nvmfd/ctl.sock"));
    assert_eq!(ok(&format!("rpc: {{}}\n{BASE}")).rpc, Default::default());
}

#[test]
fn rpc_socket_errors() {
    err1(
        &format!("rpc:\n  socket: nvmfd.sock\n{BASE}"),
        2,
        11,
        "rpc.socket",
        "rpc.socket must be an absolute path (got \"nvmfd.sock\")",
    );
    err1(
        &format!("rpc:\n  socket: /var/tmp/\n{BASE}"),
        2,
        11,
        "rpc.socket",
        "names a directory",
    );
    let long = format!("/{}", "s".repeat(107));
    err1(
        &format!("rpc:\n  socket: {long}\n{BASE}"),
        2,
        11,
        "rpc.socket",
        "is 108 bytes long; a Unix socket path has at most 107 bytes",
    );
    let fits = format!("/{}", "s".repeat(106));
    assert_eq!(
        ok(&format!("rpc:\n  socket: {fits}\n{BASE}")).rpc.socket,
        PathBuf::from(fits)
    );
    err1(
        &format!("rpc:\n  path: /x\n{BASE}"),
        2,
        3,
        "rpc.path",
        "unknown field",
    );
}

#[test]
fn metrics_listen() {
    assert_eq!(ok(BASE).metrics.listen, None);
    let c = ok(&format!("metrics: {{ listen: 127.0.0.1:9477 }}\n{BASE}"));
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9477".parse().unwrap()));
    let c = ok(&format!("metrics:\n  listen: \"[::1]:9100\"\n{BASE}"));
    assert_eq!(c.metrics.listen, Some("[::1]:9100".parse().unwrap()));
    err1(
        &format!("metrics:\n  listen: localhost:9477\n{BASE}"),
        2,
        11,
        "metrics.listen",
        "\"localhost:9477\" is not an address and port",
    );
    err1(
        &format!("metrics:\n  listen: 127.0.0.1\n{BASE}"),
        2,
        11,
        "metrics.listen",
        "is not an address and port",
    );
    err1(
        &format!("metrics:\n  listen: 127.0.0.1:0\n{BASE}"),
        2,
        11,
        "metrics.listen",
        "needs a port between 1 and 65535",
    );
}

/// `to_yaml` → `parse_str` gives the same `Config` back.
fn round_trip(c: &Config) -> Config {
    let text = to_yaml(c);
    match parse_str(&text, "saved.yaml") {
        Ok(back) => back,
        Err(e) => panic!("saved YAML does not parse:\n{e}\n--- saved ---\n{text}"),
    }
}

#[test]
fn round_trip_of_a_full_config() {
    let text = r#"
reactors: { cores: [0], idle_sleep_us: 50 }
transports:
  tcp: { in_capsule_data_size: 4KiB, max_io_size: 256KiB, max_queue_depth: 64,
         max_io_queues: 4, header_digest: required, data_digest: off, c2h_success: true,
         buffer_pool_size: 16MiB }
bdevs:
  - name: ram0
    malloc: { size: 64MiB, block_size: 512 }
  - name: zero.1
    null: { size: 1TiB }
  - name: file-0
    uring: { path: "/srv/disk #1.img", block_size: 4096 }
  - name: file1
    uring: { path: /srv/disk2.img }
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:a
    serial: "0001"
    model: 'model "x" \ y'
    hosts: [nqn.2014-08.org.nvmexpress:uuid:1, "nqn.2014-08.h:2"]
    cntlid_min: 10
    cntlid_max: 20
    p2p: required
    namespaces:
      - { nsid: 7, bdev: ram0, uuid: 3B1F2C4E-8D7A-4F7E-9A51-6C2D0E9B7A10,
          nguid: 0c6a1e5d4e2f7a4e9a1b0c0ffee00002, eui64: 0026b7680000f00d, p2p: off }
      - { bdev: zero.1 }
    listeners:
      - { address: 127.0.0.1, port: 4420 }
      - { address: "::1", port: 4421 }
  - nqn: nqn.2026-11.io.nvmfd:b
    serial: S2
    allow_any_host: false
    namespaces: [{ bdev: file-0 }]
  - nqn: nqn.2026-11.io.nvmfd:empty
    serial: S3
discovery: { enabled: false }
state_dir: /srv/nvmfd/state
rpc: { socket: /run/nvmfd.sock }
metrics: { listen: "[::1]:9477" }
"#;
    let c = ok(text);
    // p2p: the namespace's own value, else the subsystem's; both survive saving.
    let a = &c.subsystems[0];
    assert_eq!(a.p2p, nvmfd_config::P2pMode::Required);
    assert_eq!(a.namespaces[0].p2p, nvmfd_config::P2pMode::Off);
    assert_eq!(a.namespaces[1].p2p, nvmfd_config::P2pMode::Required);
    assert_eq!(c.subsystems[1].p2p, nvmfd_config::P2pMode::Auto);
    assert_eq!(round_trip(&c), c);
    assert!(
        to_yaml(&c).contains("    p2p: required\n"),
        "{}",
        to_yaml(&c)
    );
    // And it is stable: saving the reloaded config writes the same text.
    assert_eq!(to_yaml(&round_trip(&c)), to_yaml(&c));
}

#[test]
fn round_trip_of_defaults_writes_the_defaulted_serial() {
    let c = ok(BASE);
    assert!(c.subsystems[0].serial_is_default);
    let back = round_trip(&c);
    assert!(!back.subsystems[0].serial_is_default);
    let mut expect = c.clone();
    expect.subsystems[0].serial_is_default = false;
    assert_eq!(back, expect);
    let empty = ok("");
    assert_eq!(round_trip(&empty), empty);
}
