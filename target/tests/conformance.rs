//! NVMe-oF core conformance, end to end: the real daemon (reactors, NVMe/TCP, malloc bdevs) on
//! loopback, driven by the in-repo userspace host. The rules themselves are unit-tested sans-IO in
//! `target/src/core/tests.rs`; these tests prove the reactor carries the core's outputs out
//! (shutdown flushes, queue teardown, held-command completions) and that the wire shows it.

mod common;

use common::{free_port, start_yaml};
use nvmfd_bench::host::read_sqe;
use nvmfd_bench::{Controller, Host, HostOptions};
use nvmfd_target::daemon::Daemon;
use nvmfd_transport::proto::fabrics::{fctype, subtype, DISCOVERY_NQN};
use nvmfd_transport::proto::nvme::{feature, log_page, opcode, property, Sqe};
use nvmfd_transport::proto::status::Status;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2026-11.io.nvmfd:conf";
const BS: usize = 4096;
/// CC: EN = 1, IOSQES = 6, IOCQES = 4.
const CC_ENABLE: u64 = 1 | (6 << 16) | (4 << 20);

/// A daemon with one subsystem listening on `address` (a free port); returns the daemon and the
/// loopback address to connect to.
fn start(address: &str) -> (Daemon, SocketAddr) {
    let port = free_port();
    let yaml = format!(
        r#"
reactors: {{ cores: [0, 1], idle_sleep_us: 20 }}
transports: {{ tcp: {{ max_queue_depth: 64, max_io_queues: 4 }} }}
bdevs:
  - {{ name: ram0, malloc: {{ size: 16MiB }} }}
subsystems:
  - nqn: {NQN}
    namespaces: [ {{ nsid: 1, bdev: ram0 }} ]
    listeners: [ {{ transport: tcp, address: "{address}", port: {port} }} ]
"#
    );
    let d = start_yaml(&yaml, "conf.yaml");
    (d, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn opts(nqn: &str) -> HostOptions {
    let mut o = HostOptions::new(nqn);
    o.io_timeout = Duration::from_secs(10);
    o
}

fn csts(c: &mut Controller) -> u32 {
    c.property_get(property::CSTS, 4)
        .expect("Property Get CSTS") as u32
}

/// Poll CSTS until `done` holds (as a host does), at most 5 s.
fn wait_csts(c: &mut Controller, what: &str, done: impl Fn(u32) -> bool) -> u32 {
    let start = Instant::now();
    loop {
        let s = csts(c);
        if done(s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: CSTS {s:#x}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn shutdown_is_reported_complete_after_polling_csts() {
    let (d, addr) = start("127.0.0.1");
    let mut c = Host::connect_admin(addr, &opts(NQN)).unwrap();
    let mut q = c.connect_io(1, 32).unwrap();
    let data = vec![0x5a; BS * 4];
    assert_eq!(q.write(1, 0, &data, BS).unwrap(), Status::SUCCESS);
    c.property_set(property::CC, 4, CC_ENABLE | (1 << 14))
        .unwrap();
    let s = csts(&mut c);
    assert_ne!((s >> 2) & 3, 0, "SHST is processing or complete at once");
    let s = wait_csts(&mut c, "shutdown complete", |s| (s >> 2) & 3 == 2);
    assert_eq!(s & 2, 0, "no fatal status");
    // After the shutdown the I/O queue takes no commands.
    let (st, _) = q.read(1, 0, 1, BS).unwrap();
    assert_eq!(st, Status::COMMAND_SEQUENCE_ERROR);
    d.shutdown();
}

#[test]
fn disconnect_ends_the_io_queue_and_its_qid_can_be_reused() {
    let (d, addr) = start("127.0.0.1");
    let mut c = Host::connect_admin(addr, &opts(NQN)).unwrap();
    let mut q = c.connect_io(1, 32).unwrap();
    let disconnect = Sqe {
        opcode: opcode::FABRICS,
        nsid: fctype::DISCONNECT as u32,
        flags: 0x40,
        ..Default::default()
    };
    let (cqe, _) = q.command(disconnect, None, 0).unwrap();
    assert_eq!(cqe.status, Status::SUCCESS);
    // The target closes the connection after the response.
    let start = Instant::now();
    loop {
        match q.command(read_sqe(1, 0, 1), None, BS) {
            Err(e) if e.is_connection_closed() => break,
            Ok((cqe, _)) => assert_eq!(cqe.status, Status::COMMAND_SEQUENCE_ERROR),
            Err(e) => panic!("unexpected error {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "connection stays open"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut q2 = c.connect_io(1, 32).expect("QID 1 is free again");
    let (st, _) = q2.read(1, 0, 1, BS).unwrap();
    assert_eq!(st, Status::SUCCESS);
    c.disconnect().unwrap();
    d.shutdown();
}

#[test]
fn reset_tears_io_queues_down_and_reenable_takes_new_ones() {
    let (d, addr) = start("127.0.0.1");
    let mut c = Host::connect_admin(addr, &opts(NQN)).unwrap();
    let mut q = c.connect_io(1, 32).unwrap();
    assert_eq!(q.read(1, 0, 1, BS).unwrap().0, Status::SUCCESS);
    c.property_set(property::CC, 4, 0).unwrap();
    wait_csts(&mut c, "not ready after CC.EN=0", |s| s & 1 == 0);
    // The old queue's commands are aborted, then its connection goes.
    let start = Instant::now();
    loop {
        match q.command(read_sqe(1, 0, 1), None, BS) {
            Err(e) if e.is_connection_closed() => break,
            Ok((cqe, _)) => assert_eq!(cqe.status, Status::ABORTED_SQ_DELETION),
            Err(e) => panic!("unexpected error {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the reset I/O queue stays connected"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    c.property_set(property::CC, 4, CC_ENABLE).unwrap();
    wait_csts(&mut c, "ready again", |s| s & 1 == 1);
    let mut q2 = c.connect_io(1, 32).expect("QID 1 after the reset");
    assert_eq!(q2.read(1, 0, 1, BS).unwrap().0, Status::SUCCESS);
    c.disconnect().unwrap();
    d.shutdown();
}

#[test]
fn number_of_queues_is_fixed_once_io_queues_exist() {
    let (d, addr) = start("127.0.0.1");
    let mut c = Host::connect_admin(addr, &opts(NQN)).unwrap();
    assert_eq!(
        c.set_features(feature::NUMBER_OF_QUEUES, 1 | (1 << 16))
            .unwrap(),
        1 | (1 << 16)
    );
    let _q = c.connect_io(1, 32).unwrap();
    let err = c
        .set_features(feature::NUMBER_OF_QUEUES, 3 | (3 << 16))
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::COMMAND_SEQUENCE_ERROR));
    assert_eq!(
        c.get_features(feature::NUMBER_OF_QUEUES, 0).unwrap(),
        1 | (1 << 16),
        "the live count did not change"
    );
    assert!(c.connect_io(3, 32).is_err(), "QID 3 beyond the 2 granted");
    c.disconnect().unwrap();
    d.shutdown();
}

#[test]
fn kato_is_rounded_up_to_the_granularity() {
    let (d, addr) = start("127.0.0.1");
    let mut o = opts(NQN);
    o.kato_ms = 1;
    let mut c = Host::connect_admin(addr, &o).unwrap();
    assert_eq!(
        c.get_features(feature::KEEP_ALIVE_TIMER, 0).unwrap(),
        1000,
        "1 ms rounds up to KAS (1 s)"
    );
    // Well past 1 ms and within 1 s the controller is alive.
    std::thread::sleep(Duration::from_millis(200));
    c.keep_alive().expect("controller still alive");
    let cap = c.property_get(property::CAP, 8).unwrap();
    assert_eq!(cap & 0xffff, 63);
    let err = c.property_get(property::CAP, 4).unwrap_err();
    assert_eq!(
        err.status(),
        Some(Status::INVALID_FIELD),
        "CAP is an 8-byte property"
    );
    c.disconnect().unwrap();
    d.shutdown();
}

#[test]
fn discovery_on_a_wildcard_listener_advertises_the_arrival_address() {
    let (d, addr) = start("0.0.0.0");
    let mut c = Host::connect_admin(addr, &opts(DISCOVERY_NQN)).unwrap();
    let log = c.discovery_log().unwrap();
    let got: Vec<(u8, &str, &str, String)> = log
        .iter()
        .map(|e| {
            (
                e.subtype,
                e.subnqn.as_str(),
                e.traddr.as_str(),
                e.trsvcid.clone(),
            )
        })
        .collect();
    let port = addr.port().to_string();
    assert_eq!(
        got,
        vec![
            (
                subtype::CURRENT_DISCOVERY,
                DISCOVERY_NQN,
                "127.0.0.1",
                port.clone()
            ),
            (subtype::NVME, NQN, "127.0.0.1", port),
        ]
    );
    assert!(log.iter().all(|e| e.adrfam == 1 && e.asqsz == 64));
    // The advertised address works.
    let nvm: SocketAddr = format!("{}:{}", log[1].traddr, log[1].trsvcid)
        .parse()
        .unwrap();
    let n = Host::connect_admin(nvm, &opts(NQN)).unwrap();
    n.disconnect().unwrap();
    c.disconnect().unwrap();
    d.shutdown();
}

#[test]
fn discovery_log_change_moves_genctr_and_completes_a_held_aer() {
    let (d, addr) = start("127.0.0.1");
    let mut c = Host::connect_admin(addr, &opts(DISCOVERY_NQN)).unwrap();
    let genctr = |c: &mut Controller| {
        let h = c
            .get_log_page(log_page::DISCOVERY, 0, 1024, 0)
            .expect("discovery log header");
        u64::from_le_bytes(h[0..8].try_into().unwrap())
    };
    let g0 = genctr(&mut c);
    assert_eq!(genctr(&mut c), g0, "stable while nothing changes");
    c.set_features(feature::ASYNC_EVENT_CONFIG, 1 << 31)
        .unwrap();
    let aer = Sqe {
        opcode: opcode::ADMIN_ASYNC_EVENT_REQUEST,
        ..Default::default()
    };
    let cid = c.submit(aer, None, 0).unwrap();
    // The control plane changes the log (what live reconfiguration will do).
    d.target.discovery_changed();
    let done = c.wait_for(cid).expect("the AER completes");
    assert_eq!(done.status(), Status::SUCCESS);
    assert_eq!(done.cqe.dw0, 0x02 | (0xf0 << 8) | (0x70 << 16));
    assert_ne!(genctr(&mut c), g0, "the generation counter moved");
    c.disconnect().unwrap();
    d.shutdown();
}
