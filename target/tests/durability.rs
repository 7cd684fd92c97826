//! Durability: Force Unit Access and the Volatile Write Cache feature, end to end. The daemon runs
//! with its block device wrapped in `nvmfd_bdev::testing::Recorder`, which logs every operation
//! and models a volatile cache, so the test sees whether a write was durable when the host got
//! its completion. A `uring` file namespace shows that a FUA write is in the file for another
//! process reading with O_DIRECT as soon as the host has the completion.

mod common;

use common::{free_port, TempDir};
use nvmfd_bdev::testing::{Event, Recorder};
use nvmfd_bdev::{Bdev, Op};
use nvmfd_bench::host::{write_sqe, write_zeroes_sqe};
use nvmfd_bench::{Controller, Host, HostOptions, IoQueue};
use nvmfd_target::daemon::Daemon;
use nvmfd_transport::proto::nvme::{feature, Sqe};
use nvmfd_transport::proto::status::Status;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const NQN: &str = "nqn.2026-11.io.nvmfd:durability";
const BS: usize = 4096;
/// CDW12 bit 30 of Write / Write Zeroes.
const FUA: u32 = 1 << 30;

fn config(bdev: &str) -> (nvmfd_config::Config, TempDir) {
    let port = free_port();
    let state = TempDir::new("durability-state");
    let yaml = format!(
        r#"
state_dir: {}
reactors: {{ cores: [0], idle_sleep_us: 20 }}
bdevs:
  - {{ name: d0, {bdev} }}
subsystems:
  - nqn: {NQN}
    allow_any_host: true
    namespaces: [ {{ nsid: 1, bdev: d0 }} ]
    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {port} }} ]
"#,
        state.0.display()
    );
    let cfg = common::config(&yaml, "durability.yaml");
    (cfg, state)
}

/// A daemon whose only bdev (a RAM disk) is wrapped in a Recorder.
fn start_recorded() -> (Daemon, SocketAddr, Arc<Recorder>, TempDir) {
    let (cfg, state) = config("malloc: { size: 4MiB }");
    let inner = nvmfd_bdev::open(&cfg.bdevs[0]).expect("open malloc");
    let rec = Arc::new(Recorder::new(inner));
    let d = Daemon::start_with_bdevs(&cfg, vec![rec.clone() as Arc<dyn Bdev>]).expect("start");
    let addr = d.listen_addrs[0];
    (d, addr, rec, state)
}

fn connect(addr: SocketAddr) -> (Controller, IoQueue) {
    let mut o = HostOptions::new(NQN);
    o.io_timeout = Duration::from_secs(20);
    let mut c = Host::connect_admin(addr, &o).expect("admin connect");
    let q = c.connect_io(1, 16).expect("io connect");
    (c, q)
}

fn block(seed: u8) -> Vec<u8> {
    (0..BS).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// Write one block at `lba`, with `cdw12_extra` or'ed into CDW12 (FUA).
fn write(q: &mut IoQueue, lba: u64, seed: u8, cdw12_extra: u32) {
    let mut sqe: Sqe = write_sqe(1, lba, 1);
    sqe.cdw12 |= cdw12_extra;
    let (cqe, _) = q.command(sqe, Some(&block(seed)), 0).expect("write");
    assert_eq!(cqe.status, Status::SUCCESS, "write at {lba}");
}

fn write_zeroes(q: &mut IoQueue, lba: u64, blocks: u32, cdw12_extra: u32) {
    let mut sqe = write_zeroes_sqe(1, lba, blocks);
    sqe.cdw12 |= cdw12_extra;
    let (cqe, _) = q.command(sqe, None, 0).expect("write zeroes");
    assert_eq!(cqe.status, Status::SUCCESS, "write zeroes at {lba}");
}

/// Whether the log holds a completed, successful write at `lba` sent with FUA.
fn completed_with_fua(rec: &Recorder, lba: u64) -> bool {
    rec.events().iter().any(|e| {
        matches!(e, Event::Completed { op: Op::Write { lba: l, fua: true, .. }, result: Ok(()), .. } if *l == lba)
    })
}

/// The host gets a write's completion only once the write is durable when it asked for FUA; a
/// plain write may stay in the (modeled) cache until a Flush.
#[test]
fn fua_write_is_durable_at_completion() {
    let (d, addr, rec, _state) = start_recorded();
    let (mut c, mut q) = connect(addr);
    // The device claims a volatile cache, so Identify Controller says so (VWC bit 0) and the
    // feature is enabled by default.
    let id = c.identify_controller().expect("identify");
    assert_eq!(id[525] & 1, 1, "VWC present");
    assert_eq!(c.get_features(feature::VOLATILE_WRITE_CACHE, 0).unwrap(), 1);

    // Control: without FUA the write is completed but still volatile.
    write(&mut q, 3, 1, 0);
    assert_eq!(rec.volatile(), [(3, 1)]);
    assert_eq!(q.flush(1).expect("flush"), Status::SUCCESS);
    assert_eq!(rec.volatile(), []);

    write(&mut q, 4, 2, FUA);
    assert_eq!(rec.volatile(), [], "FUA write completed while volatile");
    assert!(completed_with_fua(&rec, 4));
    write_zeroes(&mut q, 5, 2, FUA);
    assert_eq!(
        rec.volatile(),
        [],
        "FUA write zeroes completed while volatile"
    );
    write_zeroes(&mut q, 7, 1, 0);
    assert_eq!(rec.volatile(), [(7, 1)]);

    let (_, data) = q.read(1, 4, 1, BS).expect("read");
    assert!(data == block(2));
    q.close();
    c.disconnect().ok();
    d.shutdown();
}

/// With the Volatile Write Cache feature disabled every write of that controller is durable at
/// completion; Get Features reports what is in force; another controller keeps its own setting
/// (the feature is per controller); enabling it again brings back cached writes.
#[test]
fn volatile_write_cache_disabled_makes_every_write_durable() {
    let (d, addr, rec, _state) = start_recorded();
    let (mut c, mut q) = connect(addr);
    let (mut c2, mut q2) = connect(addr);
    assert_eq!(c.set_features(feature::VOLATILE_WRITE_CACHE, 0).unwrap(), 0);
    assert_eq!(c.get_features(feature::VOLATILE_WRITE_CACHE, 0).unwrap(), 0);
    assert_eq!(
        c2.get_features(feature::VOLATILE_WRITE_CACHE, 0).unwrap(),
        1
    );

    for lba in 10..14 {
        write(&mut q, lba, lba as u8, 0);
        assert_eq!(rec.volatile(), [], "write at {lba} with the cache disabled");
        assert!(completed_with_fua(&rec, lba));
    }
    write_zeroes(&mut q, 20, 4, 0);
    assert_eq!(rec.volatile(), []);

    // The other controller still caches.
    write(&mut q2, 30, 9, 0);
    assert_eq!(rec.volatile(), [(30, 1)]);
    assert_eq!(q2.flush(1).unwrap(), Status::SUCCESS);

    c.set_features(feature::VOLATILE_WRITE_CACHE, 1).unwrap();
    assert_eq!(c.get_features(feature::VOLATILE_WRITE_CACHE, 0).unwrap(), 1);
    write(&mut q, 40, 1, 0);
    assert_eq!(rec.volatile(), [(40, 1)]);

    q.close();
    q2.close();
    c.disconnect().ok();
    c2.disconnect().ok();
    d.shutdown();
}

/// Without a volatile cache anywhere (a RAM disk), the feature does not exist: Identify says no
/// cache and Get/Set Features VWC fail with Invalid Field.
#[test]
fn no_volatile_cache_no_feature() {
    let (cfg, _state) = config("malloc: { size: 4MiB }");
    let d = Daemon::start(&cfg).expect("start");
    let (mut c, q) = connect(d.listen_addrs[0]);
    let id = c.identify_controller().expect("identify");
    assert_eq!(id[525] & 1, 0);
    for e in [
        c.get_features(feature::VOLATILE_WRITE_CACHE, 0)
            .unwrap_err(),
        c.set_features(feature::VOLATILE_WRITE_CACHE, 0)
            .unwrap_err(),
    ] {
        assert_eq!(e.status(), Some(Status::INVALID_FIELD), "{e}");
    }
    q.close();
    c.disconnect().ok();
    d.shutdown();
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn read_direct_elsewhere(path: &Path, lba: u64) -> Vec<u8> {
    let out = std::process::Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["bs=4096", "count=1", "iflag=direct", "status=none"])
        .arg(format!("skip={lba}"))
        .output()
        .expect("run dd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A FUA write to a `uring` file namespace is in the file when the host has its completion: a
/// second process reading with O_DIRECT sees it; so is every write once the cache is disabled.
#[test]
fn fua_write_on_a_file_namespace_is_in_the_file() {
    let f =
        TempFile(std::env::temp_dir().join(format!("nvmfd-durability-{}.img", std::process::id())));
    std::fs::File::create(&f.0)
        .and_then(|h| h.set_len(1 << 20))
        .expect("create image");
    let (cfg, _state) = config(&format!("uring: {{ path: {} }}", f.0.display()));
    let d = Daemon::start(&cfg).expect("start");
    let (mut c, mut q) = connect(d.listen_addrs[0]);
    write(&mut q, 2, 5, FUA);
    assert!(read_direct_elsewhere(&f.0, 2) == block(5));
    assert!(read_direct_elsewhere(&f.0, 1).iter().all(|&b| b == 0));
    c.set_features(feature::VOLATILE_WRITE_CACHE, 0).unwrap();
    write(&mut q, 3, 6, 0);
    assert!(read_direct_elsewhere(&f.0, 3) == block(6));
    q.close();
    c.disconnect().ok();
    d.shutdown();
}
