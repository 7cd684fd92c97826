//! Live reconfiguration against a real daemon on 127.0.0.1: RPC calls change the running target
//! while the in-repo host does verified I/O; the host sees namespaces come and go through
//! asynchronous events, a removed host is disconnected and refused, a removed listener stops
//! accepting, and `nvmf_get_subsystems` / `save_config` follow every change.

mod common;

use common::{call, err, free_port, start_yaml, TempDir};
use nvmfd_bench::{Controller, Host, HostOptions};
use nvmfd_target::rpc::client::Client;
use nvmfd_transport::proto::fabrics::DISCOVERY_NQN;
use nvmfd_transport::proto::nvme::{feature, log_page, opcode, Sqe};
use nvmfd_transport::proto::status::Status;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const NQN: &str = "nqn.2026-11.io.nvmfd:live";
const NEW: &str = "nqn.2026-11.io.nvmfd:live-new";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0b0b0b0b-0000-4000-8000-00000000000b";

fn opts(nqn: &str, host: &str) -> HostOptions {
    let mut o = HostOptions::new(nqn);
    o.hostnqn = host.to_string();
    o
}

/// A Connect that must be refused: its error.
fn refused(addr: std::net::SocketAddr, o: &HostOptions) -> nvmfd_bench::HostError {
    match Host::connect_admin(addr, o) {
        Ok(_) => panic!("connect to {} as {} succeeded", o.subnqn, o.hostnqn),
        Err(e) => e,
    }
}

fn aer_sqe() -> Sqe {
    Sqe {
        opcode: opcode::ADMIN_ASYNC_EVENT_REQUEST,
        ..Default::default()
    }
}

/// A pattern for (nsid, lba) blocks, so a read that returns another block's data is caught.
fn pattern(nsid: u32, lba: u64, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ lba.wrapping_mul(31) ^ (nsid as u64 * 7)) as u8 ^ salt)
        .collect()
}

fn changed_ns(c: &mut Controller) -> Vec<u32> {
    let page = c
        .get_log_page(log_page::CHANGED_NAMESPACES, 0xffff_ffff, 4096, 0)
        .expect("changed namespace list");
    page.chunks(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .take_while(|&n| n != 0)
        .collect()
}

fn subsystem(c: &mut Client, nqn: &str) -> Value {
    call(c, "nvmf_get_subsystems", json!({ "nqn": nqn }))[0].clone()
}

#[test]
fn live_reconfiguration_with_io_running() {
    let dir = TempDir::new("live-it");
    let port = free_port();
    let yaml = format!(
        r#"
reactors: {{ cores: [0, 1], idle_sleep_us: 20 }}
bdevs:
  - {{ name: ram0, malloc: {{ size: 8MiB, block_size: 512 }} }}
subsystems:
  - nqn: {NQN}
    namespaces: [ {{ nsid: 1, bdev: ram0 }} ]
    listeners: [ {{ address: 127.0.0.1, port: {port} }} ]
state_dir: {}
"#,
        dir.0.join("state").display()
    );
    let mut d = start_yaml(&yaml, "live.yaml");
    let sock = dir.0.join("nvmfd.sock");
    d.serve_rpc(&sock).unwrap();
    let addr = d.listen_addrs[0];
    let mut c = Client::connect(&sock).unwrap();

    // Verified I/O on namespace 1 runs on its own queue for the whole test: no command may
    // fail, whatever the control plane does to other namespaces and subsystems.
    let stop = Arc::new(AtomicBool::new(false));
    let ios = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, ios) = (stop.clone(), ios.clone());
        std::thread::spawn(move || {
            let mut h = Host::connect_admin(addr, &opts(NQN, HOST)).unwrap();
            let mut q = h.connect_io(1, 16).unwrap();
            let mut round = 0u8;
            while !stop.load(Ordering::Relaxed) {
                round = round.wrapping_add(1);
                for lba in (0..256u64).step_by(8) {
                    let data = pattern(1, lba, 4096, round);
                    assert_eq!(q.write(1, lba, &data, 512).unwrap(), Status::SUCCESS);
                    let (s, back) = q.read(1, lba, 8, 512).unwrap();
                    assert_eq!(s, Status::SUCCESS);
                    assert!(back == data, "namespace 1 LBA {lba}: data differs");
                    ios.fetch_add(2, Ordering::Relaxed);
                }
            }
            h.disconnect().unwrap();
        })
    };

    // A controller of the same subsystem that waits for namespace notices, and a persistent
    // discovery controller that waits for discovery log changes.
    let mut admin = Host::connect_admin(addr, &opts(NQN, HOST)).unwrap();
    let id = admin.identify_controller().unwrap();
    assert_eq!(
        u32::from_le_bytes(id[92..96].try_into().unwrap()),
        1 << 8,
        "OAES: namespace attribute notices"
    );
    admin
        .set_features(feature::ASYNC_EVENT_CONFIG, 1 << 8)
        .unwrap();
    let mut disc = Host::connect_admin(addr, &opts(DISCOVERY_NQN, HOST)).unwrap();
    let id = disc.identify_controller().unwrap();
    assert_eq!(u32::from_le_bytes(id[92..96].try_into().unwrap()), 1 << 31);
    disc.set_features(feature::ASYNC_EVENT_CONFIG, 1 << 31)
        .unwrap();
    let genctr = |c: &mut Controller| {
        let h = c.get_log_page(log_page::DISCOVERY, 0, 1024, 0).unwrap();
        u64::from_le_bytes(h[0..8].try_into().unwrap())
    };
    let g0 = genctr(&mut disc);
    let disc_aer = disc.submit(aer_sqe(), None, 0).unwrap();

    // --- A new bdev, subsystem, namespace, listener and host, all through RPC.
    let port2 = free_port();
    assert_eq!(
        call(
            &mut c,
            "bdev_malloc_create",
            json!({"name": "live0", "num_blocks": 4096, "block_size": 512})
        ),
        json!("live0")
    );
    call(
        &mut c,
        "nvmf_create_subsystem",
        json!({"nqn": NEW, "serial_number": "LIVE0001", "model_number": "live-model"}),
    );
    assert_eq!(
        call(
            &mut c,
            "nvmf_subsystem_add_ns",
            json!({"nqn": NEW, "namespace": {"bdev_name": "live0"}})
        ),
        json!(1)
    );
    call(
        &mut c,
        "nvmf_subsystem_add_listener",
        json!({"nqn": NEW, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port2.to_string()}}),
    );
    call(
        &mut c,
        "nvmf_subsystem_add_host",
        json!({"nqn": NEW, "host": HOST}),
    );
    let done = disc.wait_for(disc_aer).expect("discovery AER completes");
    assert_eq!(done.cqe.dw0, 0x02 | (0xf0 << 8) | (0x70 << 16));
    assert_ne!(genctr(&mut disc), g0, "generation counter moved");
    let log = disc.discovery_log().unwrap();
    assert!(
        log.iter()
            .any(|e| e.subnqn == NEW && e.trsvcid == port2.to_string()),
        "discovery log lists the new subsystem at its listener"
    );
    let s = subsystem(&mut c, NEW);
    assert_eq!(s["serial_number"], "LIVE0001");
    assert_eq!(s["allow_any_host"], false);
    assert_eq!(s["hosts"], json!([{"nqn": HOST}]));
    assert_eq!(s["namespaces"][0]["bdev_name"], "live0");
    assert_eq!(s["listen_addresses"][0]["trsvcid"], port2.to_string());
    let b = call(&mut c, "bdev_get_bdevs", json!({"name": "live0"}));
    assert_eq!(b[0]["num_blocks"], 4096);
    assert_eq!(b[0]["claimed"], true);

    // The in-repo host uses it: verified I/O.
    let addr2: std::net::SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    let mut h = Host::connect_admin(addr2, &opts(NEW, HOST)).unwrap();
    assert_eq!(h.active_namespaces().unwrap(), vec![1]);
    let mut q = h.connect_io(1, 8).unwrap();
    let data = pattern(1, 40, 8192, 0x5a);
    assert_eq!(q.write(1, 40, &data, 512).unwrap(), Status::SUCCESS);
    assert_eq!(q.read(1, 40, 16, 512).unwrap(), (Status::SUCCESS, data));
    // Another host is not allowed; nor is the new subsystem reachable on the old port.
    let other = "nqn.2014-08.org.nvmexpress:uuid:0c0c0c0c-0000-4000-8000-00000000000c";
    let e = refused(addr2, &opts(NEW, other));
    assert_eq!(e.status(), Some(Status::CONNECT_INVALID_HOST), "{e}");
    let e = refused(addr, &opts(NEW, HOST));
    assert_eq!(e.status(), Some(Status::CONNECT_INVALID_PARAMETERS), "{e}");
    let ctrls = call(
        &mut c,
        "nvmf_subsystem_get_controllers",
        json!({"nqn": NEW}),
    );
    assert_eq!(ctrls.as_array().unwrap().len(), 1);
    assert_eq!(ctrls[0]["hostnqn"], HOST);
    // Queue pairs and per-reactor counters, reported by the reactors themselves.
    let qps = call(&mut c, "nvmf_subsystem_get_qpairs", json!({"nqn": NEW}));
    let qids: Vec<(u64, String)> = qps
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["qid"].as_u64().unwrap(),
                q["listen_address"]["trsvcid"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        qids,
        vec![(0, port2.to_string()), (1, port2.to_string())],
        "{qps}"
    );
    assert_eq!(qps[0]["hostnqn"], HOST);
    assert_eq!(qps[0]["cntlid"], ctrls[0]["cntlid"]);
    let stats = call(&mut c, "nvmf_get_stats", json!({}));
    let groups = stats["poll_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "one per reactor: {stats}");
    let sum = |k: &str| groups.iter().map(|g| g[k].as_u64().unwrap()).sum::<u64>();
    // The worker (admin + I/O), `admin`, `disc`, and `h` (admin + I/O).
    assert_eq!(sum("current_admin_qpairs"), 4, "{stats}");
    assert_eq!(sum("current_io_qpairs"), 2, "{stats}");
    let done0 = sum("completed_nvme_io");
    assert!(done0 >= 2, "{stats}");

    // --- Namespace 2 appears on the running subsystem: notice, changed list, I/O.
    let aer = admin.submit(aer_sqe(), None, 0).unwrap();
    call(
        &mut c,
        "bdev_null_create",
        json!({"name": "live1", "num_blocks": 2048, "block_size": 4096}),
    );
    let (code, _) = err(
        &mut c,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": "live1", "nsid": 1}}),
    );
    assert_eq!(code, -32602, "duplicate NSID");
    assert_eq!(
        call(
            &mut c,
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "live1", "uuid": "5c0ffee0-1234-4abc-8def-0123456789ab"}})
        ),
        json!(2)
    );
    let done = admin.wait_for(aer).expect("namespace notice");
    assert_eq!(done.cqe.dw0, 0x02 | (0x04 << 16));
    assert_eq!(changed_ns(&mut admin), vec![2]);
    assert_eq!(
        changed_ns(&mut admin),
        Vec::<u32>::new(),
        "cleared by the read"
    );
    assert_eq!(admin.active_namespaces().unwrap(), vec![1, 2]);
    assert_eq!(admin.namespace_info(2).unwrap().block_size, 4096);
    let mut q2 = admin.connect_io(2, 8).unwrap();
    let (s, zeroes) = q2.read(2, 0, 2, 4096).unwrap();
    assert_eq!(s, Status::SUCCESS);
    assert!(zeroes.iter().all(|&b| b == 0), "a null bdev reads zeroes");
    assert_eq!(
        subsystem(&mut c, NQN)["namespaces"][1]["uuid"],
        "5c0ffee0-1234-4abc-8def-0123456789ab"
    );

    // --- ... and vanishes: notice again, then its NSID is invalid; namespace 1 is unaffected.
    let aer = admin.submit(aer_sqe(), None, 0).unwrap();
    let (code, msg) = err(&mut c, "bdev_null_delete", json!({"name": "live1"}));
    assert_eq!(code, -16, "in use: {msg}");
    call(
        &mut c,
        "nvmf_subsystem_remove_ns",
        json!({"nqn": NQN, "nsid": 2}),
    );
    let done = admin.wait_for(aer).expect("namespace notice");
    assert_eq!(done.cqe.dw0, 0x02 | (0x04 << 16));
    assert_eq!(changed_ns(&mut admin), vec![2]);
    assert_eq!(admin.active_namespaces().unwrap(), vec![1]);
    let (s, _) = q2.read(2, 0, 1, 4096).unwrap();
    assert_eq!(s, Status::INVALID_NAMESPACE);
    call(&mut c, "bdev_null_delete", json!({"name": "live1"}));
    assert_eq!(
        err(&mut c, "bdev_get_bdevs", json!({"name": "live1"})).0,
        -19
    );

    // --- save_config reflects every change, and is a valid configuration.
    let saved = call(&mut c, "save_config", json!({}));
    let saved = saved.as_str().unwrap();
    let back = nvmfd_config::parse_str(saved, "saved.yaml").expect("saved config is valid");
    let sc = back.subsystems.iter().find(|s| s.nqn == NEW).unwrap();
    assert_eq!(sc.serial, "LIVE0001");
    assert_eq!(sc.hosts, vec![HOST.to_string()]);
    assert_eq!(sc.namespaces[0].bdev, "live0");
    assert_eq!(sc.listeners[0].port, port2);
    assert!(back.bdev("live0").is_some() && back.bdev("live1").is_none());

    // --- Removing the host ends its controller; it cannot come back.
    call(
        &mut c,
        "nvmf_subsystem_remove_host",
        json!({"nqn": NEW, "host": HOST}),
    );
    assert_eq!(
        call(
            &mut c,
            "nvmf_subsystem_get_controllers",
            json!({"nqn": NEW})
        ),
        json!([])
    );
    let gone = q.read(1, 40, 1, 512);
    assert!(
        gone.as_ref().is_err_and(|e| e.is_connection_closed()),
        "the I/O queue is closed: {gone:?}"
    );
    let e = refused(addr2, &opts(NEW, HOST));
    assert_eq!(e.status(), Some(Status::CONNECT_INVALID_HOST), "{e}");

    // --- Removing the listener stops accepting there; deleting the subsystem ends it.
    call(
        &mut c,
        "nvmf_subsystem_allow_any_host",
        json!({"nqn": NEW, "allow_any_host": true}),
    );
    let mut h3 = Host::connect_admin(addr2, &opts(NEW, other)).unwrap();
    call(
        &mut c,
        "nvmf_subsystem_remove_listener",
        json!({"nqn": NEW, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port2.to_string()}}),
    );
    assert!(
        h3.keep_alive().is_err(),
        "connections through the removed listener are closed"
    );
    assert!(
        std::net::TcpStream::connect_timeout(&addr2, Duration::from_secs(2)).is_err(),
        "nothing listens on the removed address"
    );
    call(&mut c, "nvmf_delete_subsystem", json!({"nqn": NEW}));
    assert_eq!(
        err(&mut c, "nvmf_get_subsystems", json!({"nqn": NEW})).0,
        -19
    );
    call(&mut c, "bdev_malloc_delete", json!({"name": "live0"}));

    // Namespace 1's I/O never failed and kept going.
    std::thread::sleep(Duration::from_millis(200));
    let stats = call(&mut c, "nvmf_get_stats", json!({}));
    let done1: u64 = stats["poll_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["completed_nvme_io"].as_u64().unwrap())
        .sum();
    assert!(
        done1 > done0 + 100,
        "completed I/O counts grow: {done0} then {done1}"
    );
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("namespace 1 I/O saw no error");
    assert!(ios.load(Ordering::Relaxed) > 100, "I/O ran throughout");
    drop(h);
    admin.disconnect().unwrap();
    disc.disconnect().unwrap();
    d.shutdown();
}
