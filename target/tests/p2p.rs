//! P2P placement end to end without an SSD: the start-up decision for a namespace that cannot
//! have a CMB (`required` refuses to start, naming the reason; `auto` serves from host memory
//! and says why), and the counters `nvmfd_get_p2p` reports after real I/O over NVMe/TCP.
//! (The CMB path itself: transport/src/tcp/tests.rs with a stand-in CMB pool, and the guest's
//! emulated SSD in tests/e2e/guest-p2p.sh.)

mod common;

use common::{free_port, TempDir};
use nvmfd_bench::{Host, HostOptions};
use nvmfd_target::daemon::Daemon;
use nvmfd_target::rpc::client::Client;
use nvmfd_transport::proto::status::Status;
use serde_json::{json, Value};

const NQN: &str = "nqn.2026-11.io.nvmfd:p2p-it";

fn config(dir: &TempDir, subsystem_p2p: &str, ns_p2p: &str) -> nvmfd_config::Config {
    let port = free_port();
    let ns_p2p = if ns_p2p.is_empty() {
        String::new()
    } else {
        format!(", p2p: {ns_p2p}")
    };
    let text = format!(
        r#"
reactors: {{ cores: [0], idle_sleep_us: 20 }}
bdevs:
  - {{ name: ram0, malloc: {{ size: 8MiB }} }}
  - {{ name: ram1, malloc: {{ size: 8MiB }} }}
subsystems:
  - nqn: {NQN}
    p2p: {subsystem_p2p}
    namespaces:
      - {{ nsid: 1, bdev: ram0{ns_p2p} }}
      - {{ nsid: 2, bdev: ram1, p2p: off }}
    listeners: [ {{ address: 127.0.0.1, port: {port} }} ]
state_dir: {}
"#,
        dir.0.join("state").display()
    );
    common::config(&text, "p2p.yaml")
}

#[test]
fn required_on_a_bdev_without_a_cmb_refuses_to_start_with_the_decision() {
    let dir = TempDir::new("p2p-it-req");
    // The namespace inherits `required` from its subsystem.
    let cfg = config(&dir, "required", "");
    let e = match Daemon::start(&cfg) {
        Ok(_) => panic!("started with p2p: required on a malloc bdev"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("p2p: required cannot be met"), "{e}");
    assert!(
        e.contains("namespace 1 of nqn.2026-11.io.nvmfd:p2p-it (bdev ram0) over tcp"),
        "{e}"
    );
    assert!(
        e.contains("[bdev_not_nvme] bdev is not an nvme bdev (malloc)"),
        "{e}"
    );
    assert!(e.contains("(fix: "), "{e}");
    // Namespace 2 (`off`) is not what refused.
    assert!(!e.contains("namespace 2"), "{e}");
    // The namespace's own `off` wins over the subsystem's `required`: it starts.
    let cfg = config(&dir, "required", "off");
    Daemon::start(&cfg).expect("starts").shutdown();
}

#[test]
fn auto_without_a_cmb_serves_from_host_memory_and_counts_it() {
    let dir = TempDir::new("p2p-it-auto");
    let cfg = config(&dir, "auto", "");
    let mut d = Daemon::start(&cfg).expect("starts");
    let sock = dir.0.join("rpc.sock");
    d.serve_rpc(&sock).unwrap();
    let ds = d.placements().clone();
    assert_eq!(ds.len(), 2, "one decision per (tcp, namespace)");
    assert!(!ds[0].uses_cmb() && !ds[0].refuses_start());
    assert_eq!(ds[0].reasons[0].rule(), "bdev_not_nvme");
    assert_eq!(ds[1].reasons[0].rule(), "p2p_off");

    let o = HostOptions::new(NQN);
    let mut c = Host::connect_admin(d.listen_addrs[0], &o).expect("admin connect");
    let mut q = c.connect_io(1, 32).expect("io connect");
    let data = vec![0x5au8; 64 * 1024];
    assert_eq!(q.write(1, 0, &data, 4096).unwrap(), Status::SUCCESS);
    assert_eq!(
        q.write(1, 16, &data[..4096], 4096).unwrap(),
        Status::SUCCESS
    );
    let (st, back) = q.read(1, 0, 16, 4096).unwrap();
    assert_eq!((st, back == data), (Status::SUCCESS, true));
    assert_eq!(q.write(2, 0, &data[..8192], 4096).unwrap(), Status::SUCCESS);

    let mut rpc = Client::connect(&sock).unwrap();
    let v: Value = rpc
        .call("nvmfd_get_p2p", None)
        .unwrap()
        .expect("nvmfd_get_p2p answers");
    let d0 = &v["decisions"][0];
    assert_eq!(d0["writes"]["memory"], "host", "{v}");
    assert_eq!(d0["mode"], "auto");
    assert_eq!(d0["reasons"][0]["rule"], "bdev_not_nvme");
    assert_eq!(d0["reasons"][0]["severity"], "block");
    let ns = v["namespaces"].as_array().unwrap();
    let n1 = ns.iter().find(|n| n["nsid"] == 1).unwrap();
    assert_eq!(n1["nqn"], NQN);
    assert_eq!(n1["cmb_bytes"], 0);
    assert_eq!(n1["host_bytes"], 64 * 1024 + 4096 + 64 * 1024, "{v}");
    assert_eq!(n1["fallbacks"]["cmb_pool_exhausted"], 0);
    let n2 = ns.iter().find(|n| n["nsid"] == 2).unwrap();
    assert_eq!(n2["host_bytes"], 8192);
    // The I/O queue pair counts its own (the admin queue moves no namespace data).
    let qps = v["qpairs"].as_array().unwrap();
    let io = qps.iter().find(|q| q["qid"] == 1).expect("the I/O queue");
    assert_eq!(io["host_bytes"], 64 * 1024 + 4096 + 64 * 1024 + 8192);
    let admin = qps.iter().find(|q| q["qid"] == 0).expect("the admin queue");
    assert_eq!(admin["host_bytes"], 0);
    // Bad params are refused as the other methods do.
    let e = rpc
        .call("nvmfd_get_p2p", Some(json!({"bogus": 1})))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, -32602);
    // Placement is decided at start-up: a reload that changes it is refused, nothing changes.
    let mut next = cfg.clone();
    next.subsystems[0].namespaces[0].p2p = nvmfd_config::P2pMode::Off;
    let e = d.live().reload(next, "test").unwrap_err();
    assert!(
        e.to_string()
            .contains("namespace 1: p2p is decided at start-up"),
        "{e}"
    );
    drop(q);
    drop(c);
    d.shutdown();
}
