//! Defaults, the embedded default, the shipped examples, and the accepted spellings.

mod common;

use common::{ok, BASE};
use nvmfd_config::{
    load_file, parse_str, BdevConfig, BdevKind, Config, ConfigError, DigestMode, Discovery,
    ListenerConfig, NamespaceConfig, P2pMode, Reactors, SubsystemConfig, TcpTransport,
    TransportKind, Transports, EMBEDDED_DEFAULT_YAML,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

#[test]
fn empty_documents_are_all_defaults() {
    for text in ["", "{}", "# nothing\n", "---\n", "~\n", "---\n...\n"] {
        let c = ok(text);
        assert_eq!(c, Config::default(), "{text:?}");
    }
    let c = ok("");
    assert_eq!(c.reactors.cores, vec![0]);
    assert_eq!(c.reactors.idle_sleep_us, 0);
    assert!(c.bdevs.is_empty());
    assert!(c.subsystems.is_empty());
    assert!(c.discovery.enabled);
}

#[test]
fn empty_sections_are_defaults() {
    let c = ok("reactors:\ntransports:\n  tcp:\nbdevs:\nsubsystems:\ndiscovery:\n");
    assert_eq!(c, Config::default());
}

#[test]
fn tcp_defaults() {
    let t = ok("").transports.tcp;
    assert_eq!(t.in_capsule_data_size, 8 * 1024);
    assert_eq!(t.max_io_size, 128 * 1024);
    assert_eq!(t.max_queue_depth, 128);
    assert_eq!(t.max_io_queues, 16);
    assert_eq!(t.header_digest, DigestMode::Allowed);
    assert_eq!(t.data_digest, DigestMode::Allowed);
    assert_eq!(t.buffer_pool_size, 64 * 1024 * 1024);
    assert_eq!(t, TcpTransport::default());
}

#[test]
fn subsystem_defaults() {
    let text = format!(
        "{BASE}  - nqn: nqn.2026-11.io.nvmfd:b\n    hosts: [nqn.2014-08.org.nvmexpress:uuid:1]\n"
    );
    let c = ok(&text);
    let a = &c.subsystems[0];
    assert_eq!(a.serial, "NVMFD0001");
    assert!(a.serial_is_default);
    assert_eq!(a.model, "nvmfd");
    assert!(a.allow_any_host, "no hosts listed => any host");
    assert!(a.hosts.is_empty());
    assert_eq!(
        a.namespaces,
        vec![NamespaceConfig {
            nsid: 1,
            bdev: "ram0".into(),
            uuid: None,
            nguid: None,
            eui64: None,
            p2p: P2pMode::Auto,
        }]
    );
    assert_eq!(
        a.listeners,
        vec![ListenerConfig {
            transport: TransportKind::Tcp,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4420
        }]
    );
    let b = &c.subsystems[1];
    assert_eq!(b.serial, "NVMFD0002", "serial follows the 1-based index");
    assert!(!b.allow_any_host, "hosts listed => only those hosts");
    assert!(b.namespaces.is_empty() && b.listeners.is_empty());
}

#[test]
fn allow_any_host_false_without_hosts_is_allowed() {
    let c = ok("subsystems:\n  - nqn: nqn.2026-11.io.nvmfd:a\n    allow_any_host: false\n");
    assert!(!c.subsystems[0].allow_any_host);
    assert!(c.subsystems[0].hosts.is_empty());
    let c = ok("subsystems:\n  - nqn: nqn.2026-11.io.nvmfd:a\n    allow_any_host: true\n");
    assert!(c.subsystems[0].allow_any_host);
}

#[test]
fn nsid_defaults_to_position() {
    let c = ok("\
bdevs:
  - { name: a, null: { size: 1MiB } }
  - { name: b, null: { size: 1MiB } }
  - { name: c, null: { size: 1MiB } }
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:a
    namespaces: [{ bdev: a }, { bdev: b, nsid: 7 }, { bdev: c }]
");
    let ids: Vec<u32> = c.subsystems[0].namespaces.iter().map(|n| n.nsid).collect();
    assert_eq!(ids, [1, 7, 3]);
}

#[test]
fn bdev_kinds_and_block_size_defaults() {
    let c = ok("\
bdevs:
  - name: m
    malloc: { size: 64MiB }
  - name: z
    null: { size: 1TiB, block_size: 512 }
  - name: f
    uring: { path: /var/lib/nvmfd/disk0.img }
  - name: g
    uring: { path: /dev/nvme0n1, block_size: 4KiB, passthrough: false }
");
    assert_eq!(
        c.bdevs,
        vec![
            BdevConfig {
                name: "m".into(),
                uuid: None,
                kind: BdevKind::Malloc {
                    size: 64 << 20,
                    block_size: 4096
                }
            },
            BdevConfig {
                name: "z".into(),
                uuid: None,
                kind: BdevKind::Null {
                    size: 1 << 40,
                    block_size: 512
                }
            },
            BdevConfig {
                name: "f".into(),
                uuid: None,
                kind: BdevKind::Uring {
                    path: PathBuf::from("/var/lib/nvmfd/disk0.img"),
                    block_size: None,
                    passthrough: false
                }
            },
            BdevConfig {
                name: "g".into(),
                uuid: None,
                kind: BdevKind::Uring {
                    path: PathBuf::from("/dev/nvme0n1"),
                    block_size: Some(4096),
                    passthrough: false
                }
            },
        ]
    );
    assert_eq!(c.bdev("z").map(|b| b.name.as_str()), Some("z"));
    assert!(c.bdev("nope").is_none());
}

#[test]
fn sizes_with_units() {
    for (written, bytes) in [
        ("4096", 4096u64),
        ("\"4096\"", 4096),
        ("'512'", 512),
        ("512B", 512),
        ("4KiB", 4096),
        ("\"128 KiB\"", 128 << 10),
        ("128 KiB", 128 << 10),
        ("1MiB", 1 << 20),
        ("1GiB", 1 << 30),
        ("2TiB", 2 << 40),
        ("1PiB", 1 << 50),
        ("8kib", 8192),
        ("0x1000", 4096),
    ] {
        let c = ok(&format!(
            "bdevs:\n  - name: x\n    null: {{ size: {written}, block_size: 512 }}\n"
        ));
        match c.bdevs[0].kind {
            BdevKind::Null { size, .. } => assert_eq!(size, bytes, "{written}"),
            ref k => panic!("{k:?}"),
        }
    }
    let c = ok("transports:\n  tcp: { max_io_size: 8MiB, in_capsule_data_size: 0 }\n");
    assert_eq!(c.transports.tcp.max_io_size, 8 << 20);
    assert_eq!(c.transports.tcp.in_capsule_data_size, 0);
    let c = ok("transports:\n  tcp: { max_io_size: 4096, in_capsule_data_size: 4KiB }\n");
    assert_eq!(c.transports.tcp.max_io_size, 4096);
    assert_eq!(c.transports.tcp.in_capsule_data_size, 4096);
}

#[test]
fn reactors_cores_and_count() {
    let c = ok("reactors: { cores: [0] }");
    assert_eq!(c.reactors.cores, vec![0]);
    let c = ok("reactors: { count: 1, idle_sleep_us: 50 }");
    assert_eq!(
        c.reactors,
        Reactors {
            cores: vec![0],
            idle_sleep_us: 50
        }
    );
    let cpus = std::thread::available_parallelism().unwrap().get();
    let c = ok(&format!("reactors: {{ count: {cpus} }}"));
    assert_eq!(c.reactors.cores, (0..cpus).collect::<Vec<_>>());
    if cpus >= 2 {
        let c = ok("reactors:\n  cores:\n    - 1\n    - 0\n");
        assert_eq!(c.reactors.cores, vec![1, 0], "order is kept");
    }
}

#[test]
fn scalars_are_typed_by_their_field() {
    let c = ok("\
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:a
    serial: 0001
    model: 12345
    listeners:
      - { transport: tcp, address: \"::1\", port: 0x1144 }
      - { address: 0.0.0.0 }
      - { address: fd00::1, port: 4421 }
");
    let s = &c.subsystems[0];
    assert_eq!(s.serial, "0001", "leading zeros survive");
    assert_eq!(s.model, "12345");
    assert_eq!(s.listeners[0].address, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(s.listeners[0].port, 4420);
    assert_eq!(s.listeners[1].address, "0.0.0.0".parse::<IpAddr>().unwrap());
    assert_eq!(s.listeners[2].address, "fd00::1".parse::<IpAddr>().unwrap());
}

#[test]
fn digest_modes() {
    let c = ok("transports:\n  tcp: { header_digest: required, data_digest: off }\n");
    assert_eq!(c.transports.tcp.header_digest, DigestMode::Required);
    assert_eq!(c.transports.tcp.data_digest, DigestMode::Off);
    assert_eq!(DigestMode::Required.to_string(), "required");
}

#[test]
fn anchors_and_merge_keys_work() {
    let c = ok("\
bdevs:
  - { name: a, null: &small { size: 1MiB, block_size: 512 } }
  - { name: b, null: *small }
subsystems:
  - &sub
    nqn: nqn.2026-11.io.nvmfd:a
    model: shared
    namespaces: [{ bdev: a }]
  - <<: *sub
    nqn: nqn.2026-11.io.nvmfd:b
    namespaces: [{ bdev: b }]
");
    assert_eq!(c.bdevs[0].kind, c.bdevs[1].kind);
    assert_eq!(c.subsystems[1].model, "shared");
    assert_eq!(c.subsystems[1].nqn, "nqn.2026-11.io.nvmfd:b");
    assert_eq!(c.subsystems[1].namespaces[0].bdev, "b");
}

/// The embedded default is exactly what the specification says.
#[test]
fn embedded_default_matches_spec() {
    let expected = Config {
        reactors: Reactors {
            cores: vec![0],
            idle_sleep_us: 0,
        },
        transports: Transports {
            tcp: TcpTransport::default(),
            rdma: nvmfd_config::RdmaTransport::default(),
        },
        bdevs: vec![BdevConfig {
            name: "ram0".into(),
            uuid: None,
            kind: BdevKind::Malloc {
                size: 1 << 30,
                block_size: 4096,
            },
        }],
        subsystems: vec![SubsystemConfig {
            nqn: "nqn.2026-11.io.nvmfd:default".into(),
            serial: "NVMFD0001".into(),
            serial_is_default: true,
            model: "nvmfd".into(),
            allow_any_host: true,
            hosts: vec![],
            cntlid_min: 1,
            cntlid_max: 0xFFEF,
            max_namespaces: 32,
            p2p: P2pMode::Auto,
            namespaces: vec![NamespaceConfig {
                nsid: 1,
                bdev: "ram0".into(),
                uuid: None,
                nguid: None,
                eui64: None,
                p2p: P2pMode::Auto,
            }],
            listeners: vec![ListenerConfig {
                transport: TransportKind::Tcp,
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 4420,
            }],
        }],
        discovery: Discovery { enabled: true },
        state_dir: nvmfd_config::default_state_dir(),
        rpc: nvmfd_config::Rpc::default(),
        metrics: nvmfd_config::Metrics::default(),
    };
    assert_eq!(Config::embedded_default(), expected);
    assert_eq!(
        parse_str(EMBEDDED_DEFAULT_YAML, "<embedded default>").unwrap(),
        expected
    );
    assert!(
        EMBEDDED_DEFAULT_YAML.contains("\n# ") || EMBEDDED_DEFAULT_YAML.starts_with('#'),
        "the embedded default is commented"
    );
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// Every shipped example parses.
#[test]
fn every_example_parses() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).expect("deploy/examples exists") {
        let path = entry.unwrap().path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        if let Err(e) = load_file(&path) {
            panic!("{} does not parse:\n{e}", path.display());
        }
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    seen.sort();
    assert!(
        seen.iter().any(|n| n == "default.yaml")
            && seen.iter().any(|n| n == "tcp-two-namespaces.yaml"),
        "{seen:?}"
    );
}

#[test]
fn default_example_equals_embedded_default() {
    let c = load_file(&examples_dir().join("default.yaml")).unwrap();
    assert_eq!(c, Config::embedded_default());
}

#[test]
fn two_namespace_example_content() {
    let c = load_file(&examples_dir().join("tcp-two-namespaces.yaml")).unwrap();
    let t = &c.transports.tcp;
    assert_eq!(t.header_digest, DigestMode::Required);
    assert_eq!(t.data_digest, DigestMode::Required);
    assert!(matches!(c.bdevs[0].kind, BdevKind::Malloc { .. }));
    assert!(matches!(c.bdevs[1].kind, BdevKind::Uring { .. }));
    let s = &c.subsystems[0];
    assert_eq!(s.namespaces.len(), 2);
    assert_eq!(s.listeners.len(), 2);
    assert_eq!(s.hosts.len(), 2);
    assert!(!s.allow_any_host);
}

#[test]
fn missing_file_names_the_file() {
    let e = load_file(Path::new("/nonexistent/dir/target.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert_eq!(
        e.to_string(),
        "cannot read /nonexistent/dir/target.yaml: No such file or directory"
    );
    assert!(e.diagnostics().is_empty());
}

#[test]
fn load_file_names_the_file_in_diagnostics() {
    let dir = std::env::temp_dir().join(format!("nvmfd-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("target.yaml");
    std::fs::write(&path, "discovery:\n  enabled: maybe\n").unwrap();
    let e = load_file(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:12: discovery.enabled: expected `true` or `false`, found string \"maybe\"",
            path.display()
        )
    );
}

#[test]
fn cntlid_range_defaults_and_values() {
    let c = ok(BASE);
    assert_eq!(
        (c.subsystems[0].cntlid_min, c.subsystems[0].cntlid_max),
        (1, 0xFFEF)
    );
    let c = ok(&BASE.replace(
        "  - nqn: nqn.2026-11.io.nvmfd:a\n",
        "  - nqn: nqn.2026-11.io.nvmfd:a\n    cntlid_min: 100\n    cntlid_max: 100\n",
    ));
    assert_eq!(
        (c.subsystems[0].cntlid_min, c.subsystems[0].cntlid_max),
        (100, 100)
    );
}

#[test]
fn p2p_modes_and_inheritance() {
    // Default: auto everywhere.
    let c = ok(BASE);
    assert_eq!(c.subsystems[0].p2p, P2pMode::Auto);
    assert_eq!(c.subsystems[0].namespaces[0].p2p, P2pMode::Auto);
    // The subsystem's value is inherited; a namespace's own wins.
    let text = "bdevs:\n  - { name: a, malloc: { size: 1MiB } }\n  - { name: b, malloc: { size: 1MiB } }\n\
        subsystems:\n  - nqn: nqn.2026-11.io.nvmfd:a\n    p2p: off\n    namespaces:\n\
        \x20     - { bdev: a }\n      - { bdev: b, p2p: required }\n";
    let c = ok(text);
    let s = &c.subsystems[0];
    assert_eq!(s.p2p, P2pMode::Off);
    assert_eq!(s.namespaces[0].p2p, P2pMode::Off);
    assert_eq!(s.namespaces[1].p2p, P2pMode::Required);
    // The settled example in config.yaml: subsystem auto, namespace off.
    let text = BASE.replace(
        "    namespaces:\n      - bdev: ram0\n",
        "    p2p: auto\n    namespaces:\n      - bdev: ram0\n        p2p: off\n",
    );
    let c = ok(&text);
    assert_eq!(c.subsystems[0].p2p, P2pMode::Auto);
    assert_eq!(c.subsystems[0].namespaces[0].p2p, P2pMode::Off);
    assert_eq!(P2pMode::Required.to_string(), "required");
}
