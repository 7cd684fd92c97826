//! Identity: namespace identifiers (NGUID, UUID, EUI-64) and serial numbers that a host's
//! multipath can trust. Checked through the in-repo host: Identify Namespace (NGUID bytes
//! 119:104, EUI64 bytes 127:120), the Namespace Identification Descriptor list (CNS 03h) and
//! Identify Controller (serial, bytes 23:4). Every daemon gets its own temporary state directory.

mod common;

use common::{free_port, TempDir};
use nvmfd_bench::{Host, HostOptions};
use nvmfd_config::Config;
use nvmfd_target::daemon::Daemon;
use nvmfd_transport::proto::nvme::cns;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NQN: &str = "nqn.2026-11.io.nvmfd:ident";

/// What a host learns about a controller and one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    serial: String,
    nguid: [u8; 16],
    eui64: [u8; 8],
    /// Descriptors of the NIDT list: (type, bytes).
    descriptors: Vec<(u8, Vec<u8>)>,
}

impl Seen {
    fn descriptor(&self, nidt: u8) -> Option<&[u8]> {
        self.descriptors
            .iter()
            .find(|(t, _)| *t == nidt)
            .map(|(_, v)| v.as_slice())
    }

    fn uuid(&self) -> [u8; 16] {
        self.descriptor(3)
            .expect("UUID descriptor")
            .try_into()
            .unwrap()
    }
}

fn parse_descriptors(page: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut o = 0;
    while o + 4 <= page.len() && page[o] != 0 {
        let (t, l) = (page[o], page[o + 1] as usize);
        out.push((t, page[o + 4..o + 4 + l].to_vec()));
        o += 4 + l;
    }
    out
}

fn look(addr: SocketAddr, nqn: &str, nsid: u32) -> Seen {
    let mut o = HostOptions::new(nqn);
    o.io_timeout = Duration::from_secs(20);
    let mut c = Host::connect_admin(addr, &o).expect("admin connect");
    let serial = c.controller_info().expect("identify controller").serial;
    let ns = c.namespace_info(nsid).expect("identify namespace");
    let desc = c
        .identify(cns::NAMESPACE_DESCRIPTORS, nsid)
        .expect("descriptor list");
    c.disconnect().ok();
    let seen = Seen {
        serial: serial.trim_end().to_string(),
        nguid: ns.nguid,
        eui64: ns.eui64,
        descriptors: parse_descriptors(&desc),
    };
    // The list and Identify Namespace agree, in the same byte order.
    assert_eq!(seen.descriptor(2), Some(&seen.nguid[..]), "{seen:?}");
    let eui = seen.descriptor(1);
    if seen.eui64 == [0; 8] {
        assert_eq!(eui, None, "no EUI-64 descriptor when there is none");
    } else {
        assert_eq!(eui, Some(&seen.eui64[..]));
    }
    // No Command Set Identifier descriptor: NIDT 4 is NVMe 2.0's and the controller reports VS 1.4.
    assert_eq!(seen.descriptor(4), None, "no CSI descriptor under VS 1.4");
    seen
}

/// The embedded default, on a free port and with its own state directory.
fn embedded_default(state: &Path) -> Config {
    let mut cfg = Config::embedded_default();
    cfg.subsystems[0].listeners[0].port = free_port();
    cfg.state_dir = state.to_path_buf();
    cfg
}

const DEFAULT_NQN: &str = "nqn.2026-11.io.nvmfd:default";

/// Two daemons running the embedded default (think: two machines) report different NGUIDs,
/// UUIDs and serials; a restart keeps the serial (install identity) but gives the RAM disk new
/// identifiers, since its data did not survive.
#[test]
fn two_embedded_defaults_differ() {
    let (sa, sb) = (TempDir::new("identity-a"), TempDir::new("identity-b"));
    let a = Daemon::start(&embedded_default(&sa.0)).expect("daemon a");
    let b = Daemon::start(&embedded_default(&sb.0)).expect("daemon b");
    let seen_a = look(a.listen_addrs[0], DEFAULT_NQN, 1);
    let seen_b = look(b.listen_addrs[0], DEFAULT_NQN, 1);
    assert_ne!(seen_a.nguid, seen_b.nguid);
    assert_ne!(seen_a.uuid(), seen_b.uuid());
    assert_ne!(seen_a.serial, seen_b.serial);
    for s in [&seen_a, &seen_b] {
        assert_ne!(s.nguid, [0; 16]);
        assert_eq!(s.eui64, [0; 8]);
        let u = s.uuid();
        assert_eq!((u[6] >> 4, u[8] >> 6), (4, 2), "random (version 4) UUID");
        assert_eq!(s.serial.len(), 20, "{}", s.serial);
    }
    b.shutdown();
    a.shutdown();
    assert!(sa.0.join("install-id").is_file());

    let a2 = Daemon::start(&embedded_default(&sa.0)).expect("daemon a again");
    let again = look(a2.listen_addrs[0], DEFAULT_NQN, 1);
    assert_eq!(again.serial, seen_a.serial, "serial survives a restart");
    assert_ne!(
        again.nguid, seen_a.nguid,
        "a new RAM disk is a new namespace"
    );
    assert_ne!(again.uuid(), seen_a.uuid());
    a2.shutdown();
}

fn file_config(state: &Path, image: &Path, extra_ns: &str) -> Config {
    let port = free_port();
    let yaml = format!(
        r#"
state_dir: {}
reactors: {{ cores: [0], idle_sleep_us: 20 }}
bdevs:
  - {{ name: f0, uring: {{ path: {} }} }}
  - {{ name: r0, malloc: {{ size: 1MiB }} }}
subsystems:
  - nqn: {NQN}
    serial: ID0001
    namespaces:
      - {{ nsid: 1, bdev: f0 }}
      - {{ nsid: 2, bdev: r0 {extra_ns} }}
    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {port} }} ]
"#,
        state.display(),
        image.display()
    );
    common::config(&yaml, "identity.yaml")
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    p
}

/// A file namespace keeps its NGUID and UUID across restarts (stored in the state directory);
/// pointing the NSID at another file gives new ones; a daemon with another state directory
/// (another machine) gives others again.
#[test]
fn file_namespace_keeps_its_identifiers() {
    let state = TempDir::new("identity-state");
    let data = TempDir::new("identity-data");
    let img = image(&data.0, "disk0.img");

    let d = Daemon::start(&file_config(&state.0, &img, "")).expect("start");
    let first = look(d.listen_addrs[0], NQN, 1);
    let ram_first = look(d.listen_addrs[0], NQN, 2);
    d.shutdown();
    assert_eq!(first.serial, "ID0001", "a configured serial is kept");
    assert!(
        !state.0.join("install-id").exists(),
        "no install identity needed"
    );
    let stored = std::fs::read_to_string(state.0.join("namespaces")).expect("state file");
    let nguid_hex: String = first.nguid.iter().map(|b| format!("{b:02x}")).collect();
    assert!(stored.contains(&nguid_hex), "{stored}");

    let d = Daemon::start(&file_config(&state.0, &img, "")).expect("restart");
    let second = look(d.listen_addrs[0], NQN, 1);
    let ram_second = look(d.listen_addrs[0], NQN, 2);
    d.shutdown();
    assert_eq!(second, first, "identifiers survive a restart");
    assert_ne!(ram_second.nguid, ram_first.nguid, "RAM namespaces are new");
    assert_ne!(ram_second.nguid, second.nguid);

    // Other data under the same NSID is another namespace.
    let other = image(&data.0, "disk1.img");
    let d = Daemon::start(&file_config(&state.0, &other, "")).expect("other file");
    let moved = look(d.listen_addrs[0], NQN, 1);
    d.shutdown();
    assert_ne!(moved.nguid, first.nguid);
    assert_ne!(moved.uuid(), first.uuid());

    // The same file behind another machine's state: other identifiers.
    let state2 = TempDir::new("identity-state2");
    let d = Daemon::start(&file_config(&state2.0, &img, "")).expect("second machine");
    let elsewhere = look(d.listen_addrs[0], NQN, 1);
    d.shutdown();
    assert_ne!(elsewhere.nguid, first.nguid);
    assert_ne!(elsewhere.uuid(), first.uuid());
}

/// Identifiers the YAML gives are reported exactly, in the byte order they are written in.
#[test]
fn configured_identifiers_are_reported_as_written() {
    let state = TempDir::new("identity-cfg");
    let data = TempDir::new("identity-cfgdata");
    let img = image(&data.0, "disk.img");
    let extra = ", uuid: 3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10, nguid: 0c6a1e5d4e2f7a4e9a1b0c0ffee00002, eui64: 0026b7680000f00d";
    let d = Daemon::start(&file_config(&state.0, &img, extra)).expect("start");
    let s = look(d.listen_addrs[0], NQN, 2);
    d.shutdown();
    assert_eq!(
        s.uuid(),
        [
            0x3b, 0x1f, 0x2c, 0x4e, 0x8d, 0x7a, 0x4f, 0x7e, 0x9a, 0x51, 0x6c, 0x2d, 0x0e, 0x9b,
            0x7a, 0x10
        ]
    );
    assert_eq!(
        s.nguid,
        [
            0x0c, 0x6a, 0x1e, 0x5d, 0x4e, 0x2f, 0x7a, 0x4e, 0x9a, 0x1b, 0x0c, 0x0f, 0xfe, 0xe0,
            0x00, 0x02
        ]
    );
    assert_eq!(s.eui64, [0x00, 0x26, 0xb7, 0x68, 0x00, 0x00, 0xf0, 0x0d]);
    assert_eq!(
        s.descriptors.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        [1, 2, 3],
        "EUI-64, NGUID, UUID (no NVMe 2.0 CSI descriptor under VS 1.4)"
    );
}

/// A state directory that cannot be written stops the start with an error naming it.
#[test]
fn unwritable_state_dir_is_a_clear_error() {
    let tmp = TempDir::new("identity-bad");
    let blocker = tmp.0.join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let bad = blocker.join("state");
    let e = Daemon::start(&embedded_default(&bad))
        .err()
        .expect("start must fail");
    let msg = format!("{e:#}");
    assert!(msg.contains(&*bad.to_string_lossy()), "{msg}");
    assert!(msg.contains("state directory"), "{msg}");

    // A corrupt install identity is refused too, naming the file.
    let st = TempDir::new("identity-corrupt");
    std::fs::write(st.0.join("install-id"), b"not a uuid\n").unwrap();
    let e = Daemon::start(&embedded_default(&st.0))
        .err()
        .expect("start must fail");
    let msg = format!("{e:#}");
    assert!(msg.contains("install-id"), "{msg}");
}

/// Default serials follow the subsystem (its NQN), not its place in the file: reordering the
/// subsystems, or adding one in front, changes no serial across a restart with the same state
/// directory; each subsystem still has its own.
#[test]
fn default_serials_survive_reordering_the_file() {
    const A: &str = "nqn.2026-11.io.nvmfd:serial-a";
    const B: &str = "nqn.2026-11.io.nvmfd:serial-b";
    const C: &str = "nqn.2026-11.io.nvmfd:serial-c";
    let state = TempDir::new("identity-serials");
    let config = |order: &[&str]| {
        let port = free_port();
        let mut y = format!(
            "state_dir: {}\nreactors: {{ cores: [0], idle_sleep_us: 20 }}\nbdevs:\n",
            state.0.display()
        );
        for i in 0..order.len() {
            y += &format!("  - {{ name: r{i}, malloc: {{ size: 1MiB }} }}\n");
        }
        y += "subsystems:\n";
        for (i, nqn) in order.iter().enumerate() {
            y += &format!(
                "  - nqn: {nqn}\n    namespaces: [ {{ nsid: 1, bdev: r{i} }} ]\n    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {port} }} ]\n"
            );
        }
        common::config(&y, "serials.yaml")
    };
    let serials = |order: &[&str]| {
        let d = Daemon::start(&config(order)).expect("start");
        let s: Vec<String> = [A, B]
            .iter()
            .map(|nqn| look(d.listen_addrs[0], nqn, 1).serial)
            .collect();
        d.shutdown();
        s
    };
    let first = serials(&[A, B]);
    assert_ne!(first[0], first[1], "each subsystem has its own serial");
    for s in &first {
        assert_eq!(s.len(), 20, "{s}");
    }
    assert_eq!(serials(&[B, A]), first, "reordered");
    assert_eq!(serials(&[C, B, A]), first, "another subsystem in front");
}
