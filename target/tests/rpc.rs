//! The JSON-RPC control plane against a real daemon: the socket, framing, errors, and the
//! content of every read-only method (checked against the config and a connected host).

mod common;

use common::{body_of, call, config, err, free_port, http_get, TempDir};
use nvmfd_bench::{Host, HostOptions};
use nvmfd_target::daemon::Daemon;
use nvmfd_target::rpc::client::Client;
use serde_json::{json, Value};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

const NQN: &str = "nqn.2026-11.io.nvmfd:rpc";
const LOCKED: &str = "nqn.2026-11.io.nvmfd:rpc-locked";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0a0a0a0a-0000-4000-8000-00000000000a";
const UUID: &str = "3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10";

fn yaml(port: u16, state: &std::path::Path) -> String {
    format!(
        r#"
reactors: {{ cores: [0], idle_sleep_us: 20 }}
transports: {{ tcp: {{ max_queue_depth: 64, header_digest: off }} }}
bdevs:
  - {{ name: ram0, malloc: {{ size: 8MiB }} }}
  - {{ name: ram1, malloc: {{ size: 4MiB, block_size: 512 }} }}
  - {{ name: spare, null: {{ size: 1MiB }} }}
subsystems:
  - nqn: {NQN}
    serial: RPC0001
    model: rpc-model
    namespaces:
      - {{ nsid: 3, bdev: ram0, uuid: {UUID}, eui64: 0026b7680000f00d }}
    listeners: [ {{ address: 127.0.0.1, port: {port} }} ]
  - nqn: {LOCKED}
    hosts: [ {HOST} ]
    cntlid_min: 100
    cntlid_max: 200
    namespaces: [ {{ bdev: ram1 }} ]
    listeners: [ {{ address: 127.0.0.1, port: {port} }} ]
state_dir: {}
"#,
        state.display()
    )
}

fn start(dir: &TempDir) -> (Daemon, PathBuf, nvmfd_config::Config) {
    let port = free_port();
    let cfg = config(&yaml(port, &dir.0.join("state")), "rpc.yaml");
    let mut d = Daemon::start(&cfg).expect("daemon starts");
    let sock = dir.0.join("nvmfd.sock");
    d.serve_rpc(&sock).expect("rpc starts");
    (d, sock, cfg)
}

#[test]
fn socket_mode_and_removal() {
    let dir = TempDir::new("rpc-it-sock");
    let (d, sock, _) = start(&dir);
    let m = std::fs::symlink_metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o777, 0o600);
    d.shutdown();
    assert!(!sock.exists(), "socket removed at shutdown");
}

#[test]
fn read_only_methods() {
    let dir = TempDir::new("rpc-it-ro");
    let (d, sock, _cfg) = start(&dir);
    let mut c = Client::connect(&sock).unwrap();

    let v = call(&mut c, "spdk_get_version", None);
    assert_eq!(
        v["version"],
        format!("nvmfd v{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        v["fields"]["minor"],
        json!(env!("CARGO_PKG_VERSION_MINOR").parse::<u64>().unwrap())
    );

    let methods = call(&mut c, "rpc_get_methods", None);
    let names: Vec<&str> = methods
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in [
        "spdk_get_version",
        "nvmf_get_subsystems",
        "bdev_get_bdevs",
        "save_config",
        "nvmf_create_subsystem",
    ] {
        assert!(names.contains(&m), "{m} missing from {names:?}");
    }

    let r = call(&mut c, "framework_get_reactors", None);
    assert_eq!(r["pid"], json!(std::process::id()));
    assert_eq!(r["reactors"].as_array().unwrap().len(), 1);
    assert_eq!(r["reactors"][0]["lcore"], 0);
    assert_eq!(r["reactors"][0]["lw_threads"][0]["name"], "reactor-0");
    assert!(r["reactors"][0]["tid"].as_u64().unwrap() > 0, "{r}");

    let b = call(&mut c, "bdev_get_bdevs", None);
    let b = b.as_array().unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!(b[0]["name"], "ram0");
    assert_eq!(b[0]["block_size"], 4096);
    assert_eq!(b[0]["num_blocks"], 2048);
    assert_eq!(b[0]["product_name"], "Malloc disk");
    assert_eq!(b[0]["uuid"], UUID);
    assert_eq!(b[0]["claimed"], true);
    assert_eq!(b[1]["block_size"], 512);
    assert_eq!(b[1]["num_blocks"], 8192);
    assert_eq!(b[2]["product_name"], "Null disk");
    assert_eq!(b[2]["claimed"], false);
    assert!(b[2].get("uuid").is_none());
    let one = call(&mut c, "bdev_get_bdevs", Some(json!({"name": "ram1"})));
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["name"], "ram1");
    assert_eq!(
        err(&mut c, "bdev_get_bdevs", Some(json!({"name": "nope"}))).0,
        -19
    );

    let t = call(&mut c, "nvmf_get_transports", None);
    assert_eq!(t[0]["trtype"], "TCP");
    assert_eq!(t[0]["max_queue_depth"], 64);
    assert_eq!(t[0]["header_digest"], "off");
    assert_eq!(
        err(
            &mut c,
            "nvmf_get_transports",
            Some(json!({"trtype": "RDMA"}))
        )
        .0,
        -19
    );

    let s = call(&mut c, "nvmf_get_subsystems", None);
    let s = s.as_array().unwrap();
    assert_eq!(s.len(), 3, "discovery + 2");
    assert_eq!(s[0]["subtype"], "Discovery");
    assert_eq!(s[1]["nqn"], NQN);
    assert_eq!(s[1]["subtype"], "NVMe");
    assert_eq!(s[1]["serial_number"], "RPC0001");
    assert_eq!(s[1]["model_number"], "rpc-model");
    assert_eq!(s[1]["allow_any_host"], true);
    let la = &s[1]["listen_addresses"][0];
    assert_eq!(
        (
            la["trtype"].as_str(),
            la["adrfam"].as_str(),
            la["traddr"].as_str()
        ),
        (Some("TCP"), Some("IPv4"), Some("127.0.0.1"))
    );
    assert_eq!(la["trsvcid"], d.listen_addrs[0].port().to_string());
    let ns = &s[1]["namespaces"][0];
    assert_eq!(ns["nsid"], 3);
    assert_eq!(ns["bdev_name"], "ram0");
    assert_eq!(ns["uuid"], UUID);
    assert_eq!(ns["eui64"], "0026B7680000F00D");
    assert_eq!(ns["nguid"].as_str().unwrap().len(), 32);
    assert_eq!(s[2]["allow_any_host"], false);
    assert_eq!(s[2]["hosts"], json!([{"nqn": HOST}]));
    assert_eq!(
        (s[2]["min_cntlid"].as_u64(), s[2]["max_cntlid"].as_u64()),
        (Some(100), Some(200))
    );
    // The serial the daemon derived (no serial in the YAML) is the one hosts see.
    let derived = d.target.subsystems[1].serial.clone();
    assert_eq!(s[2]["serial_number"], derived);
    let one = call(&mut c, "nvmf_get_subsystems", Some(json!({"nqn": LOCKED})));
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["nqn"], LOCKED);
    assert_eq!(
        err(
            &mut c,
            "nvmf_get_subsystems",
            Some(json!({"nqn": "nqn.x:none"}))
        )
        .0,
        -19
    );
    assert_eq!(
        err(
            &mut c,
            "nvmf_get_subsystems",
            Some(json!({"tgt_name": "other"}))
        )
        .0,
        -32603
    );
    call(
        &mut c,
        "nvmf_get_subsystems",
        Some(json!({"tgt_name": "nvmf_tgt"})),
    );

    let fs = call(&mut c, "framework_get_subsystems", None);
    assert_eq!(fs[1], json!({"subsystem": "nvmf", "depends_on": ["bdev"]}));
    let bc = call(
        &mut c,
        "framework_get_config",
        Some(json!({"name": "bdev"})),
    );
    assert_eq!(bc.as_array().unwrap().len(), 3);
    assert_eq!(
        bc[2],
        json!({"method": "bdev_null_create", "params": {"name": "spare", "num_blocks": 256, "block_size": 4096}})
    );
    assert_eq!(
        err(
            &mut c,
            "framework_get_config",
            Some(json!({"name": "iscsi"}))
        )
        .0,
        -19
    );

    // Controllers: none, then the one a host connects, with its identity.
    assert_eq!(
        call(
            &mut c,
            "nvmf_subsystem_get_controllers",
            Some(json!({"nqn": LOCKED}))
        ),
        json!([])
    );
    let mut o = HostOptions::new(LOCKED);
    o.hostnqn = HOST.into();
    o.hostid = [0xab; 16];
    o.io_timeout = Duration::from_secs(20);
    let mut host = Host::connect_admin(d.listen_addrs[0], &o).expect("admin connect");
    let _q = host.connect_io(1, 16).expect("io connect");
    let ctrls = call(
        &mut c,
        "nvmf_subsystem_get_controllers",
        Some(json!({"nqn": LOCKED})),
    );
    assert_eq!(ctrls.as_array().unwrap().len(), 1, "{ctrls}");
    assert_eq!(ctrls[0]["cntlid"], json!(host.cntlid()));
    assert!((100..=200).contains(&host.cntlid()));
    assert_eq!(ctrls[0]["hostnqn"], HOST);
    assert_eq!(ctrls[0]["hostid"], "abababab-abab-abab-abab-abababababab");
    assert_eq!(ctrls[0]["cntrltype"], "io");
    assert_eq!(ctrls[0]["num_io_qpairs"], 1);
    assert_eq!(
        call(
            &mut c,
            "nvmf_subsystem_get_controllers",
            Some(json!({"nqn": NQN}))
        ),
        json!([])
    );
    assert_eq!(
        err(
            &mut c,
            "nvmf_subsystem_get_controllers",
            Some(json!({"nqn": "nqn.x:none"}))
        )
        .0,
        -32602
    );
    assert_eq!(
        err(&mut c, "nvmf_subsystem_get_controllers", None).0,
        -32602
    );
    drop(_q);
    drop(host);
    d.shutdown();
}

#[test]
fn errors_and_framing() {
    let dir = TempDir::new("rpc-it-err");
    let (d, sock, _) = start(&dir);
    let mut c = Client::connect(&sock).unwrap();
    let (code, msg) = err(&mut c, "no_such_method", None);
    assert_eq!((code, msg.as_str()), (-32601, "Method not found"));
    assert_eq!(
        err(&mut c, "spdk_get_version", Some(json!({"x": 1}))).0,
        -32602
    );
    assert_eq!(
        err(&mut c, "nvmf_get_subsystems", Some(json!(["nqn"]))).0,
        -32602
    );
    assert_eq!(
        err(&mut c, "bdev_get_bdevs", Some(json!({"name": 5}))).0,
        -32602
    );

    // Mutating methods refuse bad input clearly; nothing changes.
    let before = call(&mut c, "save_config", None);
    assert_eq!(
        err(&mut c, "nvmf_create_subsystem", Some(json!({}))).0,
        -32602
    );
    let (code, msg) = err(
        &mut c,
        "nvmf_create_subsystem",
        Some(json!({"nqn": "not-an-nqn"})),
    );
    assert_eq!(code, -32602, "{msg}");
    assert_eq!(
        err(&mut c, "nvmf_create_subsystem", Some(json!({"nqn": NQN}))).0,
        -32603,
        "exists"
    );
    assert_eq!(
        err(
            &mut c,
            "bdev_malloc_create",
            Some(json!({"num_blocks": 8, "block_size": 1000}))
        )
        .0,
        -32602
    );
    assert_eq!(
        err(
            &mut c,
            "bdev_malloc_create",
            Some(json!({"name": "ram0", "num_blocks": 8, "block_size": 4096}))
        )
        .0,
        -17
    );
    assert_eq!(
        err(
            &mut c,
            "bdev_malloc_create",
            Some(json!({"num_blocks": "8", "block_size": 4096}))
        )
        .0,
        -32602,
        "wrong type"
    );
    assert_eq!(
        err(&mut c, "bdev_malloc_delete", Some(json!({"name": "nope"}))).0,
        -19
    );
    assert_eq!(
        err(&mut c, "bdev_null_delete", Some(json!({"name": "ram0"}))).0,
        -19,
        "not a null bdev"
    );
    let (code, msg) = err(&mut c, "bdev_malloc_delete", Some(json!({"name": "ram0"})));
    assert_eq!(code, -16, "in use: {msg}");
    assert!(msg.contains("namespace 3"), "{msg}");
    assert_eq!(
        err(
            &mut c,
            "nvmf_subsystem_add_ns",
            Some(json!({"nqn": NQN, "namespace": {}}))
        )
        .0,
        -32602
    );
    assert_eq!(
        err(
            &mut c,
            "nvmf_subsystem_add_ns",
            Some(json!({"nqn": NQN, "namespace": {"bdev_name": "missing"}}))
        )
        .0,
        -19
    );
    let (code, msg) = err(
        &mut c,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "spare", "nsid": 3}})),
    );
    assert_eq!(code, -32602, "duplicate NSID");
    assert!(msg.contains("NSID 3"), "{msg}");
    let (code, msg) = err(
        &mut c,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "ram1"}})),
    );
    assert_eq!(code, -32602, "bdev in use elsewhere");
    assert!(msg.contains("already backs"), "{msg}");
    assert_eq!(
        err(
            &mut c,
            "nvmf_subsystem_add_ns",
            Some(json!({"nqn": "nqn.2026-11.io.nvmfd:none", "namespace": {"bdev_name": "spare"}}))
        )
        .0,
        -32602
    );
    assert_eq!(
        err(
            &mut c,
            "nvmf_subsystem_remove_ns",
            Some(json!({"nqn": NQN, "nsid": 9}))
        )
        .0,
        -32602
    );
    assert_eq!(err(&mut c, "nvmf_subsystem_add_listener", Some(json!({"nqn": "nqn.x:none", "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1"}}))).0, -32602);
    assert_eq!(err(&mut c, "nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": {"trtype": "rdma", "traddr": "127.0.0.1", "trsvcid": "4420"}}))).0, -32602);
    assert_eq!(err(&mut c, "nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "traddr": "localhost", "trsvcid": "4420"}}))).0, -32602);
    assert_eq!(
        err(
            &mut c,
            "nvmf_subsystem_remove_host",
            Some(json!({"nqn": LOCKED, "host": "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000099"}))
        )
        .0,
        -32602
    );
    assert_eq!(
        err(
            &mut c,
            "nvmf_subsystem_allow_any_host",
            Some(json!({"nqn": NQN, "allow_any_host": "no"}))
        )
        .0,
        -32602
    );
    assert_eq!(
        err(
            &mut c,
            "nvmf_delete_subsystem",
            Some(json!({"nqn": "nqn.2014-08.org.nvmexpress.discovery"}))
        )
        .0,
        -32602
    );
    assert_eq!(call(&mut c, "save_config", None), before, "nothing changed");
    assert_eq!(
        err(&mut c, "nvmf_get_stats", Some(json!({"tgt_name": "other"}))).0,
        -32603
    );
    assert_eq!(
        err(
            &mut c,
            "nvmf_subsystem_get_qpairs",
            Some(json!({"nqn": "nqn.x:none"}))
        )
        .0,
        -32602
    );
    assert_eq!(
        call(&mut c, "nvmf_get_subsystems", None)
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Two requests in one write, pretty-printed like SPDK's client sends them.
    c.send_raw(b"{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"spdk_get_version\",\n  \"id\": 100\n}\n{\"jsonrpc\":\"2.0\",\"method\":\"nope\",\"id\":101}").unwrap();
    assert_eq!(c.read_value().unwrap()["id"], 100);
    assert_eq!(c.read_value().unwrap()["error"]["code"], -32601);
    // A batch.
    c.send_raw(br#"[{"jsonrpc":"2.0","method":"spdk_get_version","id":1},{"jsonrpc":"2.0","method":"spdk_get_version"},{"jsonrpc":"2.0","id":2}]"#).unwrap();
    let b = c.read_value().unwrap();
    assert_eq!(b.as_array().unwrap().len(), 2, "{b}");
    assert_eq!(b[1]["error"]["code"], -32600);

    // A second client is served while the first stays connected.
    let mut c2 = Client::connect(&sock).unwrap();
    call(&mut c2, "spdk_get_version", None);

    // Garbage: a parse error with id null, then the connection is closed.
    c.send_raw(b"{\"jsonrpc\": nope}").unwrap();
    let e = c.read_value().unwrap();
    assert_eq!(e["error"]["code"], -32700);
    assert_eq!(e["id"], Value::Null);
    assert!(c.read_value().is_err(), "closed after a parse error");

    // Oversized: refused without waiting for the end, connection closed.
    let mut c3 = Client::connect(&sock).unwrap();
    let mut big = b"{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"params\":{\"a\":\"".to_vec();
    big.extend(vec![
        b'x';
        nvmfd_target::rpc::jsonrpc::MAX_REQUEST_BYTES + 10
    ]);
    let _ = c3.send_raw(&big);
    let e = c3.read_value().unwrap();
    assert_eq!(e["error"]["code"], -32600);

    // The others are unaffected.
    call(&mut c2, "spdk_get_version", None);
    let mut raw = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    drop(c2);
    let mut none = [0u8; 1];
    raw.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    assert!(raw.read(&mut none).is_err(), "nothing is sent unasked");
    d.shutdown();
}

/// save_config → check-config → start from it: the same target (subsystems, identities).
#[test]
fn save_config_round_trip() {
    let dir = TempDir::new("rpc-it-save");
    let (d, sock, _) = start(&dir);
    let mut c = Client::connect(&sock).unwrap();
    let saved = call(&mut c, "save_config", None);
    let text = saved.as_str().expect("YAML text");
    let subs_before = call(&mut c, "nvmf_get_subsystems", None);
    let bdevs_before = call(&mut c, "bdev_get_bdevs", None);
    drop(c);
    d.shutdown();

    let cfg2 = config(text, "saved.yaml");
    assert_eq!(cfg2.rpc.socket, sock);
    let mut d2 = Daemon::start(&cfg2).expect("restart from the saved config");
    d2.serve_rpc(&sock).unwrap();
    let mut c = Client::connect(&sock).unwrap();
    assert_eq!(call(&mut c, "nvmf_get_subsystems", None), subs_before);
    assert_eq!(call(&mut c, "bdev_get_bdevs", None), bdevs_before);
    // Saving again writes the same text.
    assert_eq!(call(&mut c, "save_config", None), saved);
    d2.shutdown();
}

/// `/metrics`: the text format, with the live controllers and bdevs in it.
#[test]
fn metrics_endpoint() {
    let dir = TempDir::new("rpc-it-metrics");
    let (mut d, _sock, _) = start(&dir);
    let addr = d.serve_metrics("127.0.0.1:0".parse().unwrap()).unwrap();
    let get = |path: &str| http_get(addr, path);
    let mut o = HostOptions::new(LOCKED);
    o.hostnqn = HOST.into();
    o.io_timeout = Duration::from_secs(20);
    let mut host = Host::connect_admin(d.listen_addrs[0], &o).expect("admin connect");
    let mut q = host.connect_io(1, 16).expect("io connect");
    for lba in 0..5 {
        assert!(q.read(1, lba, 1, 512).unwrap().0.is_success());
    }
    let m = get("/metrics");
    assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
    // Five reads completed on the one reactor (summed from the reactor's own report).
    assert!(
        body_of(&m).contains("nvmfd_reactor_completed_io_total{reactor=\"0\"} 5\n"),
        "{m}"
    );
    assert!(m.contains("application/openmetrics-text"), "{m}");
    let body = &m[m.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains(&format!(
            "nvmfd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    assert!(body.contains("nvmfd_reactors 1\n"), "{body}");
    assert!(
        body.contains(&format!(
            "nvmfd_subsystem_controllers{{nqn=\"{LOCKED}\"}} 1\n"
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!("nvmfd_subsystem_controllers{{nqn=\"{NQN}\"}} 0\n")),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "nvmfd_controller_io_queues{{nqn=\"{LOCKED}\",cntlid=\"{}\",hostnqn=\"{HOST}\"}} 1\n",
            host.cntlid()
        )),
        "{body}"
    );
    assert!(
        body.contains("nvmfd_bdev_size_bytes{bdev=\"ram0\",kind=\"malloc\"} 8388608\n"),
        "{body}"
    );
    assert!(
        body.contains("nvmfd_reactor_cpu_seconds_total{reactor=\"0\",core=\"0\",mode=\"usr\"}"),
        "{body}"
    );
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    drop(q);
    drop(host);
    d.shutdown();
}

/// Identify Controller NN is the subsystem's `max_namespaces` (SPDK's `nvmf_create_subsystem`
/// parameter), fixed for its life: a namespace added later may take any NSID up to it, and none
/// above it (by RPC or by a reloaded file), and a reload may not change it.
#[test]
fn max_namespaces_is_nn_and_the_nsid_limit() {
    const SMALL: &str = "nqn.2026-11.io.nvmfd:rpc-small";
    let dir = TempDir::new("rpc-it-maxns");
    let (d, sock, cfg) = start(&dir);
    let mut c = Client::connect(&sock).unwrap();
    let port = d.listen_addrs[0].port().to_string();
    call(
        &mut c,
        "nvmf_create_subsystem",
        Some(json!({"nqn": SMALL, "allow_any_host": true, "max_namespaces": 4})),
    );
    call(
        &mut c,
        "nvmf_subsystem_add_listener",
        Some(
            json!({"nqn": SMALL, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port}}),
        ),
    );
    let ns = |bdev: &str, nsid: u32| {
        Some(json!({"nqn": SMALL, "namespace": {"bdev_name": bdev, "nsid": nsid}}))
    };
    let (code, msg) = err(&mut c, "nvmf_subsystem_add_ns", ns("spare", 5));
    assert_eq!(code, -32602, "{msg}");
    assert!(msg.contains("NSID 5 is above max_namespaces 4"), "{msg}");
    assert_eq!(
        call(&mut c, "nvmf_subsystem_add_ns", ns("spare", 4)),
        json!(4)
    );
    let s = call(&mut c, "nvmf_get_subsystems", Some(json!({"nqn": SMALL})));
    assert_eq!(s[0]["max_namespaces"], 4, "{s}");

    // A host sees NN 4 with the only namespace at NSID 4 (not NN = highest NSID in use).
    let mut o = HostOptions::new(SMALL);
    o.io_timeout = Duration::from_secs(20);
    let mut h = Host::connect_admin(d.listen_addrs[0], &o).expect("admin connect");
    assert_eq!(h.controller_info().unwrap().nn, 4);
    assert_eq!(h.active_namespaces().unwrap(), vec![4]);
    drop(h);

    // Every NSID up to 4 taken: an automatic NSID is refused, not picked above NN.
    for (i, nsid) in [1, 2, 3].into_iter().enumerate() {
        let b = format!("extra{i}");
        call(
            &mut c,
            "bdev_null_create",
            Some(json!({"name": b, "num_blocks": 16, "block_size": 4096})),
        );
        assert_eq!(
            call(
                &mut c,
                "nvmf_subsystem_add_ns",
                Some(json!({"nqn": SMALL, "namespace": {"bdev_name": b}}))
            ),
            json!(nsid)
        );
    }
    call(
        &mut c,
        "bdev_null_create",
        Some(json!({"name": "extra3", "num_blocks": 16, "block_size": 4096})),
    );
    let (code, msg) = err(
        &mut c,
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": SMALL, "namespace": {"bdev_name": "extra3"}})),
    );
    assert_eq!(code, -32602, "{msg}");
    assert!(msg.contains("no free NSID"), "{msg}");

    // A reloaded file: an NSID above the default 32 is refused with the rule; so is a change
    // of max_namespaces of a subsystem that stays.
    let mut file = cfg.clone();
    file.subsystems[0].namespaces[0].nsid = 40;
    let e = d.live().reload(file, "test").unwrap_err().to_string();
    assert!(
        e.contains("nsid 40 exceeds the subsystem's max_namespaces 32"),
        "{e}"
    );
    let mut file = cfg.clone();
    file.subsystems[0].max_namespaces = 64;
    let e = d.live().reload(file, "test").unwrap_err().to_string();
    assert!(e.contains("max_namespaces cannot change"), "{e}");
    let s = call(&mut c, "nvmf_get_subsystems", Some(json!({"nqn": NQN})));
    assert_eq!(s[0]["max_namespaces"], 32, "{s}");
    assert_eq!(s[0]["namespaces"][0]["nsid"], 3, "{s}");
    drop(c);
    d.shutdown();
}

/// Identities made by RPC survive save_config and a restart from the saved file: a bdev's own
/// `uuid` (bdev_malloc_create) is kept, becomes the UUID of the namespace it then backs (as in
/// SPDK), and a namespace added without any UUID keeps the one generated for it.
#[test]
fn rpc_made_identities_survive_save_config_and_restart() {
    const BDEV_UUID: &str = "7d1e0c6a-5b4f-4e3a-8c2d-1f0e9d8c7b6a";
    const SPARE_UUID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3";
    let dir = TempDir::new("rpc-it-rpcids");
    let (d, sock, _) = start(&dir);
    let mut c = Client::connect(&sock).unwrap();
    let malloc = |name: &str, uuid: &str| {
        Some(json!({"name": name, "num_blocks": 64, "block_size": 4096, "uuid": uuid}))
    };
    call(&mut c, "bdev_malloc_create", malloc("withid", BDEV_UUID));
    call(&mut c, "bdev_malloc_create", malloc("unused", SPARE_UUID));
    call(
        &mut c,
        "bdev_malloc_create",
        Some(json!({"name": "noid", "num_blocks": 64, "block_size": 4096})),
    );
    // A bad or all-zero UUID is refused.
    for bad in ["not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
        let (code, _) = err(&mut c, "bdev_malloc_create", malloc("bad", bad));
        assert_eq!(code, -32602);
    }
    let bdev = |c: &mut Client, name: &str| {
        call(c, "bdev_get_bdevs", Some(json!({"name": name})))[0].clone()
    };
    assert_eq!(
        bdev(&mut c, "unused")["uuid"],
        SPARE_UUID,
        "an unclaimed bdev shows its own"
    );
    assert!(bdev(&mut c, "noid").get("uuid").is_none());
    let add = |c: &mut Client, b: &str| {
        call(
            c,
            "nvmf_subsystem_add_ns",
            Some(json!({"nqn": NQN, "namespace": {"bdev_name": b}})),
        )
    };
    let nsid_with = add(&mut c, "withid");
    let nsid_no = add(&mut c, "noid");
    let ns_uuid = |c: &mut Client, nsid: &Value| -> String {
        let s = call(c, "nvmf_get_subsystems", Some(json!({"nqn": NQN})));
        let ns = s[0]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| &n["nsid"] == nsid);
        ns.unwrap_or_else(|| panic!("no nsid {nsid} in {s}"))["uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        ns_uuid(&mut c, &nsid_with),
        BDEV_UUID,
        "the namespace takes its bdev's UUID"
    );
    let generated = ns_uuid(&mut c, &nsid_no);
    assert_ne!(generated, "00000000-0000-0000-0000-000000000000");

    // What a host reads (Namespace Identification Descriptor list, NIDT 3: UUID).
    let host_uuid = |addr, nsid: u32| {
        let mut o = HostOptions::new(NQN);
        o.io_timeout = Duration::from_secs(20);
        let mut h = Host::connect_admin(addr, &o).expect("admin connect");
        let page = h
            .identify(
                nvmfd_transport::proto::nvme::cns::NAMESPACE_DESCRIPTORS,
                nsid,
            )
            .expect("descriptors");
        let mut i = 0;
        while i + 4 <= page.len() && page[i] != 0 {
            let len = page[i + 1] as usize;
            if page[i] == 3 {
                return page[i + 4..i + 4 + len].to_vec();
            }
            i += 4 + len;
        }
        panic!("no UUID descriptor for nsid {nsid}");
    };
    let nsid_with = nsid_with.as_u64().unwrap() as u32;
    let nsid_no = nsid_no.as_u64().unwrap() as u32;
    let seen_with = host_uuid(d.listen_addrs[0], nsid_with);
    let seen_no = host_uuid(d.listen_addrs[0], nsid_no);

    let saved = call(&mut c, "save_config", None);
    let text = saved.as_str().unwrap().to_string();
    assert!(
        text.contains(SPARE_UUID),
        "the unclaimed bdev's UUID is saved:\n{text}"
    );
    drop(c);
    d.shutdown();

    let cfg2 = config(&text, "saved.yaml");
    let mut d2 = Daemon::start(&cfg2).expect("restart from the saved config");
    d2.serve_rpc(&sock).unwrap();
    let mut c = Client::connect(&sock).unwrap();
    assert_eq!(ns_uuid(&mut c, &json!(nsid_with)), BDEV_UUID);
    assert_eq!(ns_uuid(&mut c, &json!(nsid_no)), generated);
    assert_eq!(bdev(&mut c, "unused")["uuid"], SPARE_UUID);
    assert_eq!(bdev(&mut c, "withid")["uuid"], BDEV_UUID);
    assert_eq!(host_uuid(d2.listen_addrs[0], nsid_with), seen_with);
    assert_eq!(host_uuid(d2.listen_addrs[0], nsid_no), seen_no);
    // SPDK's JSON config (framework_get_config) carries the bdevs' UUIDs too.
    let calls = call(
        &mut c,
        "framework_get_config",
        Some(json!({"name": "bdev"})),
    );
    let created: Vec<(&str, Option<&str>)> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["params"]["name"].as_str().unwrap(),
                x["params"]["uuid"].as_str(),
            )
        })
        .collect();
    assert!(
        created.contains(&("unused", Some(SPARE_UUID))),
        "{created:?}"
    );
    assert!(
        created.contains(&("withid", Some(BDEV_UUID))),
        "{created:?}"
    );
    assert_eq!(
        call(&mut c, "save_config", None),
        saved,
        "saving again: the same text"
    );
    drop(c);
    d2.shutdown();
}
