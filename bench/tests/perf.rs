//! nvmfd-perf's engine against the real nvmfd (in-process, one reactor, RAM namespaces) on
//! 127.0.0.1: short runs that assert data correctness, counts and how connections spread over
//! threads. Never speed.

// nvmfd-target's shared test helpers, by path: no crate dependency on another crate's tests.
#[path = "../../target/tests/common/mod.rs"]
mod common;

use common::{free_port, start_yaml};
use std::net::SocketAddr;
use std::time::Duration;

use nvmfd_bench::perf::{self, PerfConfig, PerfReport, Workload};
use nvmfd_bench::{pattern, Host, HostOptions};
use nvmfd_target::daemon::Daemon;

const NQN: &str = "nqn.2026-12.io.nvmfd:perf";
const NQN512: &str = "nqn.2026-12.io.nvmfd:perf512";

fn start() -> (Daemon, SocketAddr) {
    let port = free_port();
    let yaml = format!(
        r#"
reactors: {{ cores: [0], idle_sleep_us: 20 }}
transports: {{ tcp: {{ in_capsule_data_size: 8KiB, max_io_size: 128KiB, max_queue_depth: 64 }} }}
bdevs:
  - {{ name: ram0, malloc: {{ size: 16MiB }} }}
  - {{ name: ram1, malloc: {{ size: 4MiB, block_size: 512 }} }}
subsystems:
  - nqn: {NQN}
    serial: PERF0001
    namespaces: [ {{ nsid: 1, bdev: ram0 }} ]
    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {port} }} ]
  - nqn: {NQN512}
    serial: PERF0002
    namespaces: [ {{ nsid: 1, bdev: ram1 }} ]
    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {port} }} ]
"#
    );
    let d = start_yaml(&yaml, "perf.yaml");
    let addr = d.listen_addrs[0];
    (d, addr)
}

fn cfg(addr: SocketAddr, nqn: &str) -> PerfConfig {
    let mut c = PerfConfig::new(addr, nqn);
    c.host.io_timeout = Duration::from_secs(20);
    c.duration = None;
    c.verify = true;
    c
}

fn assert_clean(r: &PerfReport) {
    assert_eq!(r.errors, 0, "first error: {:?}", r.first_error);
    assert_eq!(
        r.verify_failure_count, 0,
        "verify failures: {:?}",
        r.verify_failures
    );
    assert_eq!(r.reads + r.writes, r.ios);
}

/// A 70/30 random mix on 2 threads x 2 connections: every read and the read-back check out, the
/// count is exact, and each thread drove its own two queues.
#[test]
fn verify_mix_on_two_threads_of_two_connections() {
    let (_d, addr) = start();
    let mut c = cfg(addr, NQN);
    c.workload = Workload::RandRw;
    c.mix_read_pct = 70;
    c.queue_depth = 8;
    c.cores = 2;
    c.connections = 2;
    c.io_count = Some(6000);
    // 1 MiB = 256 units of 4 KiB, 64 per connection: reads hit blocks written this run.
    c.span_bytes = Some(1 << 20);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    c.cpus = if ncpu > 1 { vec![0, 1] } else { vec![0] };
    let r = perf::run(&c).expect("run");
    assert_clean(&r);
    assert_eq!(r.ios, 6000);
    assert!(
        r.writes > 0 && r.reads > r.writes,
        "{} reads, {} writes",
        r.reads,
        r.writes
    );
    // Timed reads plus the read-back of every unit written (at most 256).
    assert!(r.verified_blocks > r.reads, "{} blocks", r.verified_blocks);
    assert_eq!(r.threads.len(), 2);
    assert_eq!(r.threads[0].qids, vec![1, 2]);
    assert_eq!(r.threads[1].qids, vec![3, 4]);
    for (t, want) in r.threads.iter().zip(c.cpus.iter().cycle()) {
        assert_eq!(t.ios, 3000, "thread {}: the count splits evenly", t.index);
        assert_eq!(t.pinned, Some(*want));
        assert_eq!(
            t.ran_on, *want,
            "thread {} ran where it was pinned",
            t.index
        );
    }
    let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(json["ios"], 6000);
    assert_eq!(json["threads"][1]["qids"], serde_json::json!([3, 4]));
    assert!(
        json["latency_us"]["p99_9"].as_f64().unwrap()
            >= json["latency_us"]["p50"].as_f64().unwrap()
    );
}

/// Sequential 128 KiB writes (R2T/H2CData, above the 8 KiB in-capsule size) for a fixed time,
/// then the read-back of all of them; 512-byte blocks.
#[test]
fn verify_timed_sequential_large_writes() {
    let (_d, addr) = start();
    let mut c = cfg(addr, NQN512);
    c.workload = Workload::Write;
    c.io_size = 128 << 10;
    c.queue_depth = 4;
    c.duration = Some(Duration::from_millis(300));
    let r = perf::run(&c).expect("run");
    assert_clean(&r);
    assert!(r.writes > 0 && r.reads == 0);
    // Each write's 256 blocks are read back (sequential over 32 units: at most 32 distinct).
    let units = (4u64 << 20) / (128 << 10);
    assert_eq!(r.verified_blocks, r.writes.min(units) * 256);
}

/// The verify can fail: a block stamped for another LBA is planted, and a verifying read of the
/// whole range finds exactly it.
#[test]
fn verify_catches_a_misplaced_block() {
    let (_d, addr) = start();
    let mut w = cfg(addr, NQN);
    w.workload = Workload::Write;
    w.span_bytes = Some(64 << 10);
    w.io_count = Some(16);
    assert_clean(&perf::run(&w).expect("seed writes"));

    let mut ctrl = Host::connect_admin(addr, &HostOptions::new(NQN)).unwrap();
    let mut q = ctrl.connect_io(1, 4).unwrap();
    let mut block = vec![0u8; 4096];
    pattern::fill(&mut block, 3, 4096, 42);
    assert!(q.write(1, 9, &block, 4096).unwrap().is_success());
    q.close();
    let _ = ctrl.disconnect();

    let mut r = cfg(addr, NQN);
    r.workload = Workload::Read;
    r.span_bytes = Some(64 << 10);
    r.io_count = Some(16);
    r.queue_depth = 4;
    // This one polls without blocking (the other single-connection run blocks).
    r.busy_poll = true;
    let rep = perf::run(&r).expect("read run");
    assert_eq!(rep.errors, 0);
    assert_eq!(rep.verified_blocks, 16);
    assert_eq!(rep.verify_failure_count, 1, "{:?}", rep.verify_failures);
    assert!(
        rep.verify_failures[0].contains("LBA 9") && rep.verify_failures[0].contains("LBA 3"),
        "{:?}",
        rep.verify_failures
    );
}
