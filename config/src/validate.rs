//! From the raw YAML shape to a validated [`Config`] with every default filled in.
//!
//! All checks run even after one fails, so one run reports every problem found in the values.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::de::NodeDe;
use crate::path::FieldPath;
use crate::raw::{
    RawBdev, RawConfig, RawDigest, RawListener, RawMemBdev, RawMetrics, RawNamespace, RawNvme,
    RawP2p, RawRdma, RawReactors, RawRpc, RawSubsystem, RawTcp, RawTransportKind, RawUring,
};
use crate::size::Size;
use crate::yaml::{self, Node, Pos};
use crate::{
    BdevConfig, BdevKind, Config, ConfigError, Diagnostic, DigestMode, Discovery, ListenerConfig,
    Metrics, NamespaceConfig, P2pMode, RdmaTransport, Reactors, Rpc, SubsystemConfig, TcpTransport,
    TransportKind, Transports, DISCOVERY_NQN,
};

use crate::{DEFAULT_MAX_NAMESPACES, MAX_CNTLID, MAX_NSID};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const MAX_NQN_LEN: usize = 223;
const MAX_SERIAL_LEN: usize = 20;
const MAX_MODEL_LEN: usize = 40;
const DEFAULT_PORT: u16 = 4420;
const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// `sizeof(sockaddr_un.sun_path)` on Linux, the terminating NUL included (unix(7)).
const MAX_UNIX_PATH: usize = 108;

fn diagnostic(file: &str, pos: Pos, path: &FieldPath, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: pos.line,
        column: pos.column,
        path: path.to_string(),
        message,
    }
}

/// Parse, deserialize and validate.
pub(crate) fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let root = yaml::parse(text)
        .map_err(|e| ConfigError::Invalid(vec![diagnostic(file, e.pos, &e.path, e.message)]))?;
    // A document that is just `~` or empty means "all defaults", like an empty file.
    let root = if root.is_null() {
        Node::empty_map(root.pos)
    } else {
        root
    };
    let raw = RawConfig::deserialize(NodeDe {
        node: &root,
        path: FieldPath::root(),
    })
    .map_err(|e| {
        let path = e.path.unwrap_or_default();
        let pos = e.pos.unwrap_or(root.pos);
        ConfigError::Invalid(vec![diagnostic(file, pos, &path, e.message)])
    })?;
    let mut v = Validator {
        root: &root,
        file,
        diags: Vec::new(),
    };
    let config = v.config(raw);
    if v.diags.is_empty() {
        Ok(config)
    } else {
        // Stable: problems on the same spot keep the order they were found in.
        v.diags.sort_by_key(|d| (d.line, d.column));
        Err(ConfigError::Invalid(v.diags))
    }
}

/// Namespace identifiers already given, by field name and value: the path of the namespace
/// that gave each first.
type IdsSeen = HashMap<(&'static str, Vec<u8>), String>;

/// What earlier subsystems already use, for the uniqueness checks of the next one.
struct Taken<'m> {
    /// NQN → subsystem index.
    nqns: &'m mut HashMap<String, usize>,
    /// Bdev name → bdev index (every defined bdev).
    bdevs: &'m HashMap<String, usize>,
    /// Bdev name → path of the namespace it backs.
    bdev_users: &'m mut HashMap<String, String>,
    ids: &'m mut IdsSeen,
}

/// Where a diagnostic points: at the key (`foo:`) or at its value.
#[derive(Clone, Copy)]
enum At {
    Key,
    Value,
}

struct Validator<'a> {
    root: &'a Node,
    file: &'a str,
    diags: Vec<Diagnostic>,
}

/// `4096` → `4KiB`, `1000` → `1000 bytes`.
fn fmt_size(n: u64) -> String {
    for (unit, shift) in [
        ("EiB", 60),
        ("PiB", 50),
        ("TiB", 40),
        ("GiB", 30),
        ("MiB", 20),
    ] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    if n >= KIB && n.is_multiple_of(KIB) {
        return format!("{}KiB", n / KIB);
    }
    format!("{n} bytes")
}

/// NQN rules shared by subsystem and host NQNs; `None` when valid.
fn nqn_problem(nqn: &str) -> Option<String> {
    if !nqn.starts_with("nqn.") || nqn.len() <= 4 {
        return Some(format!(
            "{nqn:?} is not a valid NQN: it must start with \"nqn.\" \
             (e.g. nqn.2026-11.io.example:disk1)"
        ));
    }
    if nqn.len() > MAX_NQN_LEN {
        return Some(format!(
            "NQN is {} bytes long, at most {MAX_NQN_LEN} are allowed",
            nqn.len()
        ));
    }
    if let Some(c) = nqn.chars().find(|c| !c.is_ascii_graphic()) {
        return Some(format!(
            "{nqn:?} is not a valid NQN: it may only contain printable ASCII without spaces \
             (found {c:?})"
        ));
    }
    None
}

/// Printable ASCII (spaces allowed), non-empty, at most `max` bytes; `None` when valid.
fn ascii_field_problem(what: &str, value: &str, max: usize) -> Option<String> {
    if value.is_empty() {
        return Some(format!("{what} must not be empty"));
    }
    if let Some(c) = value.chars().find(|c| !(' '..='~').contains(c)) {
        return Some(format!(
            "{what} {value:?} may only contain printable ASCII (found {c:?})"
        ));
    }
    if value.len() > max {
        return Some(format!(
            "{what} {value:?} is {} bytes long, at most {max} are allowed",
            value.len()
        ));
    }
    None
}

/// `n` bytes written as `2n` hex digits (either case), or why not.
fn hex_bytes(what: &str, text: &str, n: usize, example: &str) -> Result<Vec<u8>, String> {
    let bad = || {
        format!(
            "{text:?} is not a valid {what}: write {} hex digits, e.g. {example}",
            2 * n
        )
    };
    if text.len() != 2 * n || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    (0..n)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// A UUID in the RFC 4122 text form (`8-4-4-4-12` hex digits, either case), in byte order.
fn uuid_bytes(text: &str) -> Result<Vec<u8>, String> {
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return Err(format!(
            "{text:?} is not a UUID: write 8-4-4-4-12 hex digits, e.g. \
             3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10"
        ));
    }
    hex_bytes(
        "UUID",
        &groups.concat(),
        16,
        "3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10",
    )
    .map_err(|_| {
        format!(
            "{text:?} is not a UUID: write 8-4-4-4-12 hex digits, e.g. \
                 3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10"
        )
    })
}

fn p2p_mode(p: RawP2p) -> P2pMode {
    match p {
        RawP2p::Auto => P2pMode::Auto,
        RawP2p::Off => P2pMode::Off,
        RawP2p::Required => P2pMode::Required,
    }
}

fn digest(d: Option<RawDigest>) -> DigestMode {
    match d {
        None | Some(RawDigest::Allowed) => DigestMode::Allowed,
        Some(RawDigest::Required) => DigestMode::Required,
        Some(RawDigest::Off) => DigestMode::Off,
    }
}

impl Validator<'_> {
    fn report(&mut self, path: &FieldPath, at: At, message: impl Into<String>) {
        let pos = self.root.locate(path, matches!(at, At::Key));
        self.diags
            .push(diagnostic(self.file, pos, path, message.into()));
    }

    /// Report the size at `field` for breaking `rule` against the size at `other`:
    /// "NAME (SIZE) RULE (OTHER SIZE)", each size marked when it is the default.
    fn report_against(&mut self, field: (&FieldPath, u64), rule: &str, other: (&FieldPath, u64)) {
        let note = self.default_note(field.0);
        let other_note = self.default_note(other.0);
        let name = field.0.last_key();
        self.report(
            field.0,
            At::Value,
            format!(
                "{name} ({}{note}) {rule} ({}{other_note})",
                fmt_size(field.1),
                fmt_size(other.1)
            ),
        );
    }

    /// Whether `path` was written in the file (as opposed to defaulted).
    fn written(&self, path: &FieldPath) -> bool {
        self.root.get(path).is_some()
    }

    /// `, the default` when `path` was not written.
    fn default_note(&self, path: &FieldPath) -> &'static str {
        if self.written(path) {
            ""
        } else {
            ", the default"
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let root = FieldPath::root();
        let reactors = self.reactors(&root.key("reactors"), raw.reactors);
        let tcp = self.tcp(&root.key("transports").key("tcp"), raw.transports.tcp);
        let rdma = self.rdma(
            &root.key("transports").key("rdma"),
            raw.transports.rdma.unwrap_or_default(),
        );
        let mut bdev_index = HashMap::new();
        let mut bdev_uuids = HashMap::new();
        let mut bdevs = Vec::new();
        for (i, b) in raw.bdevs.into_iter().enumerate() {
            let path = root.key("bdevs").index(i);
            if let Some(b) = self.bdev(&path, i, b, &mut bdev_index, &mut bdev_uuids) {
                bdevs.push(b);
            }
        }
        let mut nqns = HashMap::new();
        let mut bdev_users = HashMap::new();
        let mut ns_ids = HashMap::new();
        let mut subsystems = Vec::new();
        for (i, s) in raw.subsystems.into_iter().enumerate() {
            let path = root.key("subsystems").index(i);
            let taken = Taken {
                nqns: &mut nqns,
                bdevs: &bdev_index,
                bdev_users: &mut bdev_users,
                ids: &mut ns_ids,
            };
            subsystems.push(self.subsystem(&path, i, s, taken));
        }
        self.effective_uuids(&root, &bdevs, &subsystems);
        let state_dir = match raw.state_dir {
            None => crate::default_state_dir(),
            Some(d) => {
                if d.is_empty() || !d.starts_with('/') {
                    self.report(
                        &root.key("state_dir"),
                        At::Value,
                        format!("state_dir must be an absolute path (got {d:?})"),
                    );
                }
                PathBuf::from(d)
            }
        };
        let rpc = self.rpc(&root.key("rpc"), raw.rpc);
        let metrics = self.metrics(&root.key("metrics"), raw.metrics);
        Config {
            rpc,
            metrics,
            reactors,
            transports: Transports { tcp, rdma },
            bdevs,
            subsystems,
            discovery: Discovery {
                enabled: raw.discovery.enabled.unwrap_or(true),
            },
            state_dir,
        }
    }

    /// Parse a namespace's `uuid`, `nguid` and `eui64` (kept as text in `raw_ids` until here) and
    /// refuse values that are all zero (NVMe: a zero identifier means "none") or already used by
    /// another namespace: equal identifiers tell a host's multipath that two namespaces are one.
    /// A namespace without a uuid of its own takes its bdev's: two namespaces must not end up
    /// with one UUID that way either (a host's multipath would take them for paths to one
    /// namespace). Two explicit namespace uuids that clash are reported by `namespace_ids`.
    fn effective_uuids(
        &mut self,
        root: &FieldPath,
        bdevs: &[BdevConfig],
        subsystems: &[SubsystemConfig],
    ) {
        let of_bdev: HashMap<&str, [u8; 16]> = bdevs
            .iter()
            .filter_map(|b| b.uuid.map(|u| (b.name.as_str(), u)))
            .collect();
        let mut first: HashMap<[u8; 16], (String, bool)> = HashMap::new();
        for (i, s) in subsystems.iter().enumerate() {
            for (k, n) in s.namespaces.iter().enumerate() {
                let (u, own) = match (n.uuid, of_bdev.get(n.bdev.as_str())) {
                    (Some(u), _) => (u, true),
                    (None, Some(u)) => (*u, false),
                    (None, None) => continue,
                };
                let np = root.key("subsystems").index(i).key("namespaces").index(k);
                match first.get(&u) {
                    Some((_, true)) if own => {}
                    Some((other, _)) => {
                        let (field, whose) = if own {
                            ("uuid", "its own")
                        } else {
                            ("bdev", "its bdev's")
                        };
                        self.report(
                            &np.key(field),
                            At::Value,
                            format!(
                                "namespace UUID {} ({whose}) is already the UUID of {other}",
                                crate::save::uuid_text(&u)
                            ),
                        );
                    }
                    None => {
                        first.insert(u, (np.to_string(), own));
                    }
                }
            }
        }
    }

    fn namespace_ids(
        &mut self,
        np: &FieldPath,
        n: &RawNamespace,
        ns: &mut NamespaceConfig,
        seen: &mut IdsSeen,
    ) {
        let fields: [(&'static str, &Option<String>, usize); 3] = [
            ("uuid", &n.uuid, 16),
            ("nguid", &n.nguid, 16),
            ("eui64", &n.eui64, 8),
        ];
        for (name, text, n) in fields {
            let Some(text) = text else { continue };
            let text = text.as_str();
            let p = np.key(name);
            let parsed = match name {
                "uuid" => uuid_bytes(text),
                "nguid" => hex_bytes("NGUID", text, n, "0c6a1e5d4e2f7a4e9a1b0c0ffee00002"),
                _ => hex_bytes("EUI-64", text, n, "0026b7680000f00d"),
            };
            let bytes = match parsed {
                Ok(b) => b,
                Err(e) => {
                    self.report(&p, At::Value, e);
                    continue;
                }
            };
            if bytes.iter().all(|&b| b == 0) {
                self.report(
                    &p,
                    At::Value,
                    format!(
                        "an all-zero {name} means \"no {name}\" to a host; leave the field out \
                         to have one generated"
                    ),
                );
                continue;
            }
            match seen.get(&(name, bytes.clone())) {
                Some(first) => {
                    self.report(
                        &p,
                        At::Value,
                        format!("{name} {text} is already used by {first}"),
                    );
                    continue;
                }
                None => {
                    seen.insert((name, bytes.clone()), np.to_string());
                }
            }
            match name {
                "uuid" => ns.uuid = bytes.try_into().ok(),
                "nguid" => ns.nguid = bytes.try_into().ok(),
                _ => ns.eui64 = bytes.try_into().ok(),
            }
        }
    }

    fn rpc(&mut self, p: &FieldPath, r: RawRpc) -> Rpc {
        let Some(socket) = r.socket else {
            return Rpc::default();
        };
        let sp = p.key("socket");
        if !socket.starts_with('/') {
            self.report(
                &sp,
                At::Value,
                format!("rpc.socket must be an absolute path (got {socket:?})"),
            );
        } else if socket.ends_with('/') {
            self.report(
                &sp,
                At::Value,
                format!("rpc.socket names a directory ({socket:?}); give the socket's file name"),
            );
        } else if socket.len() >= MAX_UNIX_PATH {
            // sockaddr_un.sun_path holds 108 bytes including the terminating NUL (unix(7)).
            self.report(
                &sp,
                At::Value,
                format!(
                    "rpc.socket is {} bytes long; a Unix socket path has at most {} bytes",
                    socket.len(),
                    MAX_UNIX_PATH - 1
                ),
            );
        }
        Rpc {
            socket: PathBuf::from(socket),
        }
    }

    fn metrics(&mut self, p: &FieldPath, m: RawMetrics) -> Metrics {
        let Some(listen) = m.listen else {
            return Metrics::default();
        };
        match listen.parse::<std::net::SocketAddr>() {
            Ok(a) if a.port() != 0 => Metrics { listen: Some(a) },
            Ok(_) => {
                self.report(
                    &p.key("listen"),
                    At::Value,
                    "metrics.listen needs a port between 1 and 65535",
                );
                Metrics::default()
            }
            Err(_) => {
                self.report(
                    &p.key("listen"),
                    At::Value,
                    format!(
                        "{listen:?} is not an address and port: write e.g. 127.0.0.1:9477 or \
                         [::1]:9477 (host names are not resolved)"
                    ),
                );
                Metrics::default()
            }
        }
    }

    fn reactors(&mut self, p: &FieldPath, r: RawReactors) -> Reactors {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let machine = if cpus == 1 {
            "this machine has 1 CPU: core 0".to_owned()
        } else {
            format!("this machine has {cpus} CPUs: cores 0-{}", cpus - 1)
        };
        let mut cores = Vec::new();
        match (r.cores, r.count) {
            (Some(_), Some(_)) => self.report(
                &p.key("count"),
                At::Key,
                "give either `cores` or `count`, not both",
            ),
            (Some(list), None) => {
                if list.is_empty() {
                    self.report(&p.key("cores"), At::Value, "at least one core is needed");
                }
                for (i, &core) in list.iter().enumerate() {
                    let cp = p.key("cores").index(i);
                    if let Some(first) = list[..i].iter().position(|&c| c == core) {
                        self.report(
                            &cp,
                            At::Value,
                            format!("core {core} is already listed as cores[{first}]"),
                        );
                    } else if core >= cpus as u64 {
                        self.report(
                            &cp,
                            At::Value,
                            format!("core {core} does not exist ({machine})"),
                        );
                    } else {
                        cores.push(core as usize);
                    }
                }
            }
            (None, Some(count)) => {
                if count == 0 {
                    self.report(&p.key("count"), At::Value, "count must be at least 1");
                } else if count > cpus as u64 {
                    self.report(
                        &p.key("count"),
                        At::Value,
                        format!(
                            "count {count} needs cores 0-{}, but core {cpus} does not exist ({machine})",
                            count - 1
                        ),
                    );
                } else {
                    cores = (0..count as usize).collect();
                }
            }
            (None, None) => cores.push(0),
        }
        Reactors {
            cores,
            idle_sleep_us: r.idle_sleep_us.unwrap_or(0),
        }
    }

    fn tcp(&mut self, p: &FieldPath, t: RawTcp) -> TcpTransport {
        let d = TcpTransport::default();
        let mio_path = p.key("max_io_size");
        let max_io = t.max_io_size.map_or(u64::from(d.max_io_size), |s| s.0);
        let max_io_ok = max_io.is_power_of_two() && (4 * KIB..=8 * MIB).contains(&max_io);
        if !max_io_ok {
            self.report(
                &mio_path,
                At::Value,
                format!(
                    "max_io_size must be a power of two from 4KiB to 8MiB (got {})",
                    fmt_size(max_io)
                ),
            );
        }
        let icd_path = p.key("in_capsule_data_size");
        let icd = t
            .in_capsule_data_size
            .map_or(u64::from(d.in_capsule_data_size), |s| s.0);
        if !icd.is_multiple_of(16) {
            self.report(
                &icd_path,
                At::Value,
                format!(
                    "in_capsule_data_size must be a multiple of 16 bytes (got {})",
                    fmt_size(icd)
                ),
            );
        } else if icd > 128 * KIB {
            self.report(
                &icd_path,
                At::Value,
                format!(
                    "in_capsule_data_size must be at most 128KiB (got {})",
                    fmt_size(icd)
                ),
            );
        } else if max_io_ok && icd > max_io {
            self.report_against(
                (&icd_path, icd),
                "must not exceed max_io_size",
                (&mio_path, max_io),
            );
        }
        let mut ranged = |name: &str, value: Option<u64>, default: u16, lo: u16, hi: u16| {
            let v = value.unwrap_or(u64::from(default));
            if v < u64::from(lo) || v > u64::from(hi) {
                self.report(
                    &p.key(name),
                    At::Value,
                    format!("{name} must be between {lo} and {hi} (got {v})"),
                );
                default
            } else {
                v as u16
            }
        };
        let max_queue_depth = ranged(
            "max_queue_depth",
            t.max_queue_depth,
            d.max_queue_depth,
            2,
            1024,
        );
        let max_io_queues = ranged("max_io_queues", t.max_io_queues, d.max_io_queues, 1, 1024);
        let bps_path = p.key("buffer_pool_size");
        let buffer_pool_size = t.buffer_pool_size.map_or(d.buffer_pool_size, |s| s.0);
        if max_io_ok && buffer_pool_size < max_io {
            self.report_against(
                (&bps_path, buffer_pool_size),
                "must hold at least one max_io_size buffer",
                (&mio_path, max_io),
            );
        }
        TcpTransport {
            in_capsule_data_size: u32::try_from(icd).unwrap_or(d.in_capsule_data_size),
            max_io_size: u32::try_from(max_io).unwrap_or(d.max_io_size),
            max_queue_depth,
            max_io_queues,
            header_digest: digest(t.header_digest),
            data_digest: digest(t.data_digest),
            c2h_success: t.c2h_success.unwrap_or(d.c2h_success),
            buffer_pool_size,
        }
    }

    /// `transports.rdma`: the sizes checked as for TCP, plus `srq_depth`.
    fn rdma(&mut self, p: &FieldPath, t: RawRdma) -> RdmaTransport {
        let d = RdmaTransport::default();
        let mio_path = p.key("max_io_size");
        let max_io = t.max_io_size.map_or(u64::from(d.max_io_size), |s| s.0);
        let max_io_ok = max_io.is_power_of_two() && (4 * KIB..=8 * MIB).contains(&max_io);
        if !max_io_ok {
            self.report(
                &mio_path,
                At::Value,
                format!(
                    "max_io_size must be a power of two from 4KiB to 8MiB (got {})",
                    fmt_size(max_io)
                ),
            );
        }
        let icd_path = p.key("in_capsule_data_size");
        let icd = t
            .in_capsule_data_size
            .map_or(u64::from(d.in_capsule_data_size), |s| s.0);
        if !icd.is_multiple_of(16) {
            self.report(
                &icd_path,
                At::Value,
                format!(
                    "in_capsule_data_size must be a multiple of 16 bytes (got {})",
                    fmt_size(icd)
                ),
            );
        } else if icd > 64 * KIB {
            self.report(
                &icd_path,
                At::Value,
                format!(
                    "in_capsule_data_size must be at most 64KiB (got {})",
                    fmt_size(icd)
                ),
            );
        } else if max_io_ok && icd > max_io {
            self.report_against(
                (&icd_path, icd),
                "must not exceed max_io_size",
                (&mio_path, max_io),
            );
        }
        let mut ranged = |name: &str, value: Option<u64>, default: u32, lo: u32, hi: u32| {
            let v = value.unwrap_or(u64::from(default));
            if v < u64::from(lo) || v > u64::from(hi) {
                self.report(
                    &p.key(name),
                    At::Value,
                    format!("{name} must be between {lo} and {hi} (got {v})"),
                );
                default
            } else {
                v as u32
            }
        };
        let max_queue_depth = ranged(
            "max_queue_depth",
            t.max_queue_depth,
            d.max_queue_depth.into(),
            2,
            1024,
        ) as u16;
        let max_io_queues = ranged(
            "max_io_queues",
            t.max_io_queues,
            d.max_io_queues.into(),
            1,
            1024,
        ) as u16;
        let srq_depth = ranged("srq_depth", t.srq_depth, d.srq_depth, 16, 65536);
        let bps_path = p.key("buffer_pool_size");
        let buffer_pool_size = t.buffer_pool_size.map_or(d.buffer_pool_size, |s| s.0);
        if max_io_ok && buffer_pool_size < max_io {
            self.report_against(
                (&bps_path, buffer_pool_size),
                "must hold at least one max_io_size buffer",
                (&mio_path, max_io),
            );
        }
        RdmaTransport {
            in_capsule_data_size: u32::try_from(icd).unwrap_or(d.in_capsule_data_size),
            max_io_size: u32::try_from(max_io).unwrap_or(d.max_io_size),
            max_queue_depth,
            max_io_queues,
            srq_depth,
            buffer_pool_size,
        }
    }

    /// A block size: power of two in 512..=65536.
    fn block_size(&mut self, p: &FieldPath, size: Option<Size>) -> Option<u32> {
        let bs = size?.0;
        if bs.is_power_of_two() && (512..=64 * KIB).contains(&bs) {
            Some(bs as u32)
        } else {
            self.report(
                p,
                At::Value,
                format!(
                    "block_size must be a power of two from 512 to 65536 bytes (got {})",
                    fmt_size(bs)
                ),
            );
            None
        }
    }

    fn mem_bdev(&mut self, p: &FieldPath, m: RawMemBdev) -> (u64, u32) {
        let bs = if m.block_size.is_some() {
            self.block_size(&p.key("block_size"), m.block_size)
        } else {
            Some(DEFAULT_BLOCK_SIZE)
        };
        let size = m.size.0;
        if size == 0 {
            self.report(&p.key("size"), At::Value, "size must be greater than 0");
        } else if let Some(bs) = bs {
            if !size.is_multiple_of(u64::from(bs)) {
                let note = self.default_note(&p.key("block_size"));
                self.report(
                    &p.key("size"),
                    At::Value,
                    format!(
                        "size {} is not a multiple of block_size ({bs}{note})",
                        fmt_size(size)
                    ),
                );
            }
        }
        (size, bs.unwrap_or(DEFAULT_BLOCK_SIZE))
    }

    fn nvme_bdev(&mut self, p: &FieldPath, n: RawNvme) -> BdevKind {
        let pci = match pci_address(&n.pci) {
            Some(a) => a,
            None => {
                self.report(
                    &p.key("pci"),
                    At::Value,
                    format!(
                        "{:?} is not a PCI address (DDDD:BB:DD.F, e.g. \"0000:03:00.0\")",
                        n.pci
                    ),
                );
                n.pci
            }
        };
        let namespace = n.namespace.unwrap_or(1);
        if namespace == 0 || namespace == u32::MAX {
            self.report(
                &p.key("namespace"),
                At::Value,
                format!("namespace {namespace} is not a valid NSID (1..=4294967294)"),
            );
        }
        let io_timeout_ms = n.io_timeout_ms.unwrap_or(crate::DEFAULT_NVME_IO_TIMEOUT_MS);
        if !(1..=crate::MAX_NVME_IO_TIMEOUT_MS).contains(&io_timeout_ms) {
            self.report(
                &p.key("io_timeout_ms"),
                At::Value,
                format!(
                    "io_timeout_ms {io_timeout_ms} is out of range (1..={} ms; there is no \
                     \"off\": a command the SSD never answers would hang its host)",
                    crate::MAX_NVME_IO_TIMEOUT_MS
                ),
            );
        }
        BdevKind::Nvme {
            pci,
            namespace,
            io_timeout_ms,
        }
    }

    fn uring_bdev(&mut self, p: &FieldPath, u: RawUring) -> BdevKind {
        if u.path.is_empty() {
            self.report(&p.key("path"), At::Value, "path must not be empty");
        }
        let passthrough = u.passthrough == Some(true);
        if passthrough && u.block_size.is_some() {
            self.report(
                &p.key("block_size"),
                At::Key,
                "block_size cannot be set with `passthrough: true`: the namespace's LBA format decides",
            );
        }
        BdevKind::Uring {
            path: PathBuf::from(u.path),
            block_size: self.block_size(&p.key("block_size"), u.block_size),
            passthrough,
        }
    }

    fn bdev(
        &mut self,
        p: &FieldPath,
        i: usize,
        b: RawBdev,
        names: &mut HashMap<String, usize>,
        uuids: &mut HashMap<Vec<u8>, usize>,
    ) -> Option<BdevConfig> {
        let mut uuid = None;
        if let Some(text) = &b.uuid {
            let up = p.key("uuid");
            match uuid_bytes(text) {
                Err(e) => self.report(&up, At::Value, e),
                Ok(u) if u.iter().all(|&x| x == 0) => self.report(
                    &up,
                    At::Value,
                    "an all-zero uuid means \"no uuid\" to a host; leave the field out",
                ),
                Ok(u) => {
                    if let Some(first) = uuids.get(&u) {
                        self.report(
                            &up,
                            At::Value,
                            format!("uuid {text} is already used by bdevs[{first}]"),
                        );
                    } else {
                        uuids.insert(u.clone(), i);
                    }
                    uuid = <[u8; 16]>::try_from(u.as_slice()).ok();
                }
            }
        }
        let name_path = p.key("name");
        if b.name.is_empty() {
            self.report(&name_path, At::Value, "bdev name must not be empty");
        } else if !b
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            self.report(
                &name_path,
                At::Value,
                format!(
                    "bdev name {:?} may only contain letters, digits, '_', '.' and '-'",
                    b.name
                ),
            );
        } else if let Some(first) = names.get(&b.name) {
            self.report(
                &name_path,
                At::Value,
                format!("bdev name {:?} is already used by bdevs[{first}]", b.name),
            );
        } else {
            names.insert(b.name.clone(), i);
        }

        let given: Vec<&str> = [
            ("malloc", b.malloc.is_some()),
            ("null", b.null.is_some()),
            ("uring", b.uring.is_some()),
            ("nvme", b.nvme.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect();
        if given.len() != 1 {
            if given.is_empty() {
                self.report(
                    p,
                    At::Value,
                    "a bdev needs exactly one kind: `malloc`, `null`, `uring` or `nvme`",
                );
            } else {
                self.report(
                    &p.key(given[1]),
                    At::Key,
                    format!(
                        "a bdev has exactly one kind, but `{}` and `{}` are both given",
                        given[0], given[1]
                    ),
                );
            }
            return None;
        }
        let kind = if let Some(m) = b.malloc {
            let (size, block_size) = self.mem_bdev(&p.key("malloc"), m);
            BdevKind::Malloc { size, block_size }
        } else if let Some(m) = b.null {
            let (size, block_size) = self.mem_bdev(&p.key("null"), m);
            BdevKind::Null { size, block_size }
        } else if let Some(n) = b.nvme {
            self.nvme_bdev(&p.key("nvme"), n)
        } else {
            let u = b.uring?;
            self.uring_bdev(&p.key("uring"), u)
        };
        Some(BdevConfig {
            name: b.name,
            uuid,
            kind,
        })
    }

    fn subsystem(
        &mut self,
        p: &FieldPath,
        i: usize,
        s: RawSubsystem,
        taken: Taken<'_>,
    ) -> SubsystemConfig {
        let Taken {
            nqns,
            bdevs,
            bdev_users,
            ids,
        } = taken;
        let nqn_path = p.key("nqn");
        if let Some(problem) = nqn_problem(&s.nqn) {
            self.report(&nqn_path, At::Value, problem);
        } else if s.nqn == DISCOVERY_NQN {
            self.report(
                &nqn_path,
                At::Value,
                format!(
                    "{DISCOVERY_NQN} is the discovery service's NQN and cannot name a subsystem"
                ),
            );
        } else if let Some(first) = nqns.get(&s.nqn) {
            self.report(
                &nqn_path,
                At::Value,
                format!("NQN {:?} is already used by subsystems[{first}]", s.nqn),
            );
        } else {
            nqns.insert(s.nqn.clone(), i);
        }

        let serial_is_default = s.serial.is_none();
        let serial = s.serial.unwrap_or_else(|| format!("NVMFD{:04}", i + 1));
        if let Some(problem) = ascii_field_problem("serial", &serial, MAX_SERIAL_LEN) {
            self.report(&p.key("serial"), At::Value, problem);
        }
        let model = s.model.unwrap_or_else(|| "nvmfd".to_owned());
        if let Some(problem) = ascii_field_problem("model", &model, MAX_MODEL_LEN) {
            self.report(&p.key("model"), At::Value, problem);
        }

        for (k, host) in s.hosts.iter().enumerate() {
            let hp = p.key("hosts").index(k);
            if let Some(problem) = nqn_problem(host) {
                self.report(&hp, At::Value, problem);
            } else if let Some(first) = s.hosts[..k].iter().position(|h| h == host) {
                self.report(
                    &hp,
                    At::Value,
                    format!("host {host:?} is already listed as hosts[{first}]"),
                );
            }
        }
        let allow_any_host = match s.allow_any_host {
            None => s.hosts.is_empty(),
            Some(true) if !s.hosts.is_empty() => {
                self.report(
                    &p.key("allow_any_host"),
                    At::Value,
                    "`allow_any_host: true` admits every host, so the `hosts` list would have no \
                     effect; remove one of them",
                );
                true
            }
            Some(x) => x,
        };
        let (cntlid_min, cntlid_max) = self.cntlid_range(p, s.cntlid_min, s.cntlid_max);
        let max_namespaces = match s.max_namespaces {
            None => DEFAULT_MAX_NAMESPACES,
            Some(m) if (1..=u64::from(MAX_NSID)).contains(&m) => m as u32,
            Some(m) => {
                self.report(
                    &p.key("max_namespaces"),
                    At::Value,
                    format!("max_namespaces must be between 1 and {MAX_NSID} (got {m})"),
                );
                MAX_NSID
            }
        };
        // Namespaces inherit the subsystem's placement unless they give their own.
        let p2p = s.p2p.map_or(P2pMode::Auto, p2p_mode);

        let mut namespaces: Vec<NamespaceConfig> = Vec::new();
        for (j, n) in s.namespaces.into_iter().enumerate() {
            let np = p.key("namespaces").index(j);
            let nsid_path = np.key("nsid");
            let nsid = n.nsid.unwrap_or(j as u64 + 1);
            let nsid = if (1..=0xFFFF_FFFE).contains(&nsid) {
                nsid as u32
            } else {
                self.report(
                    &nsid_path,
                    At::Value,
                    format!("nsid must be between 1 and 4294967294 (got {nsid})"),
                );
                0
            };
            if nsid > max_namespaces {
                let note = if n.nsid.is_none() {
                    " (the default, position + 1)"
                } else {
                    ""
                };
                let default = if s.max_namespaces.is_none() {
                    " (the default)"
                } else {
                    ""
                };
                self.report(
                    &nsid_path,
                    At::Value,
                    format!(
                        "nsid {nsid}{note} exceeds the subsystem's max_namespaces \
                         {max_namespaces}{default}, the highest NSID it reports to hosts \
                         (Identify Controller NN); raise max_namespaces"
                    ),
                );
            }
            if nsid != 0 {
                if let Some(first) = namespaces.iter().position(|x| x.nsid == nsid) {
                    let note = if n.nsid.is_none() {
                        " (the default, position + 1)"
                    } else {
                        ""
                    };
                    self.report(
                        &nsid_path,
                        At::Value,
                        format!("nsid {nsid}{note} is already used by namespaces[{first}]"),
                    );
                }
            }
            let bp = np.key("bdev");
            if !bdevs.contains_key(&n.bdev) {
                let mut known: Vec<&str> = bdevs.keys().map(String::as_str).collect();
                known.sort_unstable();
                let hint = if known.is_empty() {
                    " (no bdevs are defined)".to_owned()
                } else {
                    format!(" (defined: {})", known.join(", "))
                };
                self.report(&bp, At::Value, format!("no bdev named {:?}{hint}", n.bdev));
            } else if let Some(first) = bdev_users.get(&n.bdev) {
                self.report(
                    &bp,
                    At::Value,
                    format!(
                        "bdev {:?} already backs {first}; a bdev can back only one namespace",
                        n.bdev
                    ),
                );
            } else {
                bdev_users.insert(n.bdev.clone(), np.to_string());
            }
            let mut ns = NamespaceConfig {
                nsid,
                bdev: n.bdev.clone(),
                uuid: None,
                nguid: None,
                eui64: None,
                p2p: n.p2p.map_or(p2p, p2p_mode),
            };
            self.namespace_ids(&np, &n, &mut ns, ids);
            namespaces.push(ns);
        }

        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for (k, l) in s.listeners.into_iter().enumerate() {
            if let Some(listener) = self.listener(&p.key("listeners").index(k), l) {
                if let Some(first) = listeners.iter().position(|x| *x == listener) {
                    self.report(
                        &p.key("listeners").index(k),
                        At::Value,
                        format!(
                            "listener {} {} is already listed as listeners[{first}]",
                            listener.transport,
                            std::net::SocketAddr::new(listener.address, listener.port)
                        ),
                    );
                }
                listeners.push(listener);
            }
        }

        SubsystemConfig {
            nqn: s.nqn,
            serial,
            serial_is_default,
            model,
            allow_any_host,
            hosts: s.hosts,
            cntlid_min,
            cntlid_max,
            max_namespaces,
            p2p,
            namespaces,
            listeners,
        }
    }

    /// `cntlid_min`/`cntlid_max`: each within 1..=0xFFEF (controller IDs 0xFFF0..=0xFFFF are
    /// reserved, NVMe base 2.0 Identify Controller CNTLID), and min <= max.
    fn cntlid_range(&mut self, p: &FieldPath, min: Option<u64>, max: Option<u64>) -> (u16, u16) {
        let mut one = |name: &str, v: Option<u64>, default: u16| -> Option<u16> {
            let v = v.unwrap_or(u64::from(default));
            if (1..=u64::from(MAX_CNTLID)).contains(&v) {
                Some(v as u16)
            } else {
                self.report(
                    &p.key(name),
                    At::Value,
                    format!("{name} must be between 1 and {MAX_CNTLID} (0xFFEF) (got {v})"),
                );
                None
            }
        };
        let lo = one("cntlid_min", min, 1);
        let hi = one("cntlid_max", max, MAX_CNTLID);
        match (lo, hi) {
            (Some(lo), Some(hi)) if lo > hi => {
                let (min_path, max_path) = (p.key("cntlid_min"), p.key("cntlid_max"));
                // Point at whichever was written (cntlid_min when both were).
                let (at, note_min, note_max) = if self.written(&min_path) {
                    (&min_path, "", self.default_note(&max_path))
                } else {
                    (&max_path, self.default_note(&min_path), "")
                };
                self.report(
                    at,
                    At::Value,
                    format!(
                        "cntlid_min ({lo}{note_min}) must not exceed cntlid_max ({hi}{note_max})"
                    ),
                );
                (1, MAX_CNTLID)
            }
            (lo, hi) => (lo.unwrap_or(1), hi.unwrap_or(MAX_CNTLID)),
        }
    }

    fn listener(&mut self, p: &FieldPath, l: RawListener) -> Option<ListenerConfig> {
        let ok = true;
        let transport = match l.transport {
            None | Some(RawTransportKind::Tcp) => TransportKind::Tcp,
            Some(RawTransportKind::Rdma) => TransportKind::Rdma,
        };
        let address = match l.address.parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.report(
                    &p.key("address"),
                    At::Value,
                    format!(
                        "{:?} is not an IP address: write an IPv4 or IPv6 literal such as \
                         192.0.2.10 or fd00::1 (host names are not resolved)",
                        l.address
                    ),
                );
                None
            }
        };
        let port = l.port.unwrap_or(u64::from(DEFAULT_PORT));
        let port = match u16::try_from(port) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                self.report(
                    &p.key("port"),
                    At::Value,
                    format!("port must be between 1 and 65535 (got {port})"),
                );
                None
            }
        };
        match (ok, address, port) {
            (true, Some(address), Some(port)) => Some(ListenerConfig {
                transport,
                address,
                port,
            }),
            _ => None,
        }
    }
}

/// `dddd:bb:dd.f` (or `bb:dd.f`, domain 0) normalised to lower case, or `None`.
fn pci_address(s: &str) -> Option<String> {
    let full = if s.len() == 7 {
        format!("0000:{s}")
    } else {
        s.to_owned()
    };
    let f = full.as_bytes();
    let hex = |r: std::ops::Range<usize>| f[r].iter().all(|c| c.is_ascii_hexdigit());
    let ok = f.len() == 12
        && f[4] == b':'
        && f[7] == b':'
        && f[10] == b'.'
        && (b'0'..=b'7').contains(&f[11])
        && hex(0..4)
        && hex(5..7)
        && hex(8..10)
        // Device numbers are 5 bits.
        && u8::from_str_radix(&full[8..10], 16).is_ok_and(|d| d < 32);
    ok.then(|| full.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_formatting() {
        assert_eq!(fmt_size(4096), "4KiB");
        assert_eq!(fmt_size(1000), "1000 bytes");
        assert_eq!(fmt_size(3 << 20), "3MiB");
        assert_eq!(fmt_size(1 << 30), "1GiB");
        assert_eq!(fmt_size(1536), "1536 bytes");
    }

    #[test]
    fn nqn_rules() {
        assert!(nqn_problem("nqn.2026-11.io.nvmfd:a").is_none());
        assert!(nqn_problem("iqn.2026-11.io.nvmfd:a").is_some());
        assert!(nqn_problem("nqn.").is_some());
        assert!(nqn_problem("nqn.a b").is_some());
        assert!(nqn_problem(&format!("nqn.{}", "x".repeat(219))).is_none());
        assert!(nqn_problem(&format!("nqn.{}", "x".repeat(220))).is_some());
    }
}
