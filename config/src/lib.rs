//! nvmfd's YAML configuration: the schema, its defaults, validation, and the embedded default.
//!
//! ```
//! let yaml = r#"
//! bdevs:
//!   - name: ram0
//!     malloc: { size: 64MiB }
//! subsystems:
//!   - nqn: nqn.2026-11.io.nvmfd:a
//!     namespaces: [{ bdev: ram0 }]
//!     listeners: [{ address: 127.0.0.1 }]
//! "#;
//! let cfg = nvmfd_config::parse_str(yaml, "target.yaml").unwrap();
//! assert_eq!(cfg.subsystems[0].listeners[0].port, 4420);
//! assert_eq!(cfg.subsystems[0].namespaces[0].nsid, 1);
//!
//! let err = nvmfd_config::parse_str("reactors: { cores: [0], count: 2 }", "t.yaml").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "t.yaml:1:25: reactors.count: give either `cores` or `count`, not both"
//! );
//! ```
//!
//! # Errors
//! Every problem is reported as `FILE:LINE:COLUMN: FIELD.PATH: message` (line and column are
//! 1-based), for syntax errors, wrong types, unknown keys, missing required keys and the checks
//! on values alike:
//! ```text
//! target.yaml:14:15: subsystems[0].namespaces[1].bdev: no bdev named "nvme9"
//! ```
//! Problems with a value point at the value; problems with a key (unknown, not supported yet,
//! duplicated) point at the key; a problem with a field that was left out (its default is what
//! conflicts) points at the enclosing mapping. See [`ConfigError`] for how several errors show.
//!
//! # How it reads YAML
//! The text is parsed with serde-saphyr's YAML parser (the `granit_parser` it re-exports) into a
//! tree that keeps every key's and value's position; a small serde `Deserializer` over that tree
//! feeds the derived, `deny_unknown_fields` structs and tracks the field path as it goes. This
//! replaces `serde_saphyr::from_str` because its errors carry a position but no field path, and
//! its untyped reading of scalars follows YAML 1.1 (`n` → `false`, `0001` → `1.0`); here a
//! scalar is typed by the field that receives it (`serial: 0001` is the string `"0001"`).
//! Anchors, aliases and `<<` merge keys work; several documents in one file do not.
//!
//! # Sizes
//! Size fields take an integer (bytes) or a string with a binary unit: `4096`, `"512"`, `4KiB`,
//! `128 KiB`, `1GiB` (B, KiB, MiB, GiB, TiB, PiB, EiB; case-insensitive). Decimal or bare units
//! (`4KB`, `1G`) are rejected as ambiguous, with a message suggesting the binary spelling.
//!
//! # Not supported yet
//! Keys of the settled shape that belong to later work are rejected by name, never ignored:
//! `transports.rdma`, the `nvme` bdev kind, `uring.passthrough: true`, `p2p` (subsystem and
//! namespace level) and `transport: rdma` on a listener.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod de;
mod error;
mod path;
mod raw;
mod size;
mod validate;
mod yaml;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, Diagnostic};

/// The embedded default configuration (commented YAML): one reactor on core 0, a 1 GiB RAM
/// bdev `ram0` exported as namespace 1 of `nqn.2026-11.io.nvmfd:default` on 127.0.0.1:4420
/// over TCP, any host allowed, discovery on.
pub const EMBEDDED_DEFAULT_YAML: &str = include_str!("default.yaml");

/// The NQN of the discovery service; no subsystem may use it.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Reads, parses and validates a configuration file. Messages name the file as given.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
        path: path.to_owned(),
        error,
    })?;
    parse_str(&text, &path.display().to_string())
}

/// Parses and validates configuration text; `file_name` is used in error messages.
pub fn parse_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
    validate::parse(text, file_name)
}

/// A complete, validated configuration with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// The polling threads.
    pub reactors: Reactors,
    /// Transport tuning.
    pub transports: Transports,
    /// Block devices, in file order.
    pub bdevs: Vec<BdevConfig>,
    /// NVMe subsystems, in file order.
    pub subsystems: Vec<SubsystemConfig>,
    /// The discovery service.
    pub discovery: Discovery,
}

impl Config {
    /// The parse of [`EMBEDDED_DEFAULT_YAML`] (error messages would name `<embedded default>`).
    pub fn embedded_default() -> Config {
        match parse_str(EMBEDDED_DEFAULT_YAML, "<embedded default>") {
            Ok(c) => c,
            // Covered by tests; core 0 exists on every machine.
            Err(e) => panic!("the embedded default configuration is invalid:\n{e}"),
        }
    }

    /// The bdev called `name`, if any.
    pub fn bdev(&self, name: &str) -> Option<&BdevConfig> {
        self.bdevs.iter().find(|b| b.name == name)
    }
}

/// Reactors: one polling thread pinned to each listed CPU core.
///
/// YAML: `cores: [0, 1]` or `count: N` (cores `0..N`), not both; plus `idle_sleep_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reactors {
    /// CPU core ids, unique, each below `std::thread::available_parallelism()`. Default `[0]`.
    pub cores: Vec<usize>,
    /// When a reactor has found no work for a while it sleeps this many microseconds before
    /// polling again; `0` (the default) means pure busy polling (lowest latency, one full core
    /// per reactor).
    pub idle_sleep_us: u32,
}

impl Default for Reactors {
    fn default() -> Self {
        Reactors {
            cores: vec![0],
            idle_sleep_us: 0,
        }
    }
}

/// Transport settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transports {
    /// NVMe/TCP.
    pub tcp: TcpTransport,
}

/// NVMe/TCP transport settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTransport {
    /// Largest write payload carried inside the command capsule (no R2T round trip).
    /// Default 8 KiB; a multiple of 16, at most `max_io_size` and at most 128 KiB.
    pub in_capsule_data_size: u32,
    /// Largest I/O in bytes, advertised as MDTS. Default 128 KiB; a power of two in 4 KiB..=8 MiB.
    pub max_io_size: u32,
    /// Entries per I/O queue. Default 128; 2..=1024.
    pub max_queue_depth: u16,
    /// I/O queues per controller. Default 16; 1..=1024.
    pub max_io_queues: u16,
    /// PDU header digest (CRC32C). Default allowed.
    pub header_digest: DigestMode,
    /// PDU data digest (CRC32C). Default allowed.
    pub data_digest: DigestMode,
    /// End successful reads with a C2HData PDU flagged SUCCESS and no CapsuleResp (one PDU less
    /// per read, as SPDK does by default). Default false: the NVMe/TCP spec allows it only when
    /// the host disabled SQ flow control, which stock Linux and SPDK hosts do not; both hosts
    /// accept it anyway.
    pub c2h_success: bool,
    /// Memory per reactor for the data buffers of transfers larger than 8 KiB (reads and
    /// R2T writes up to `max_io_size`). Commands that find it all lent wait in their queue
    /// until a buffer comes back, so a reactor's memory stays bounded however many hosts and
    /// queues are connected. Default 64 MiB; at least `max_io_size`.
    pub buffer_pool_size: u64,
}

impl Default for TcpTransport {
    fn default() -> Self {
        TcpTransport {
            in_capsule_data_size: 8 * 1024,
            max_io_size: 128 * 1024,
            max_queue_depth: 128,
            max_io_queues: 16,
            header_digest: DigestMode::Allowed,
            data_digest: DigestMode::Allowed,
            c2h_success: false,
            buffer_pool_size: 64 * 1024 * 1024,
        }
    }
}

/// Whether a digest is used. YAML: `allowed | required | off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DigestMode {
    /// Used when the host asks for it.
    #[default]
    Allowed,
    /// Hosts that do not enable it are refused.
    Required,
    /// Never used, even if the host asks.
    Off,
}

impl DigestMode {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestMode::Allowed => "allowed",
            DigestMode::Required => "required",
            DigestMode::Off => "off",
        }
    }
}

impl fmt::Display for DigestMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdevConfig {
    /// Unique name, `[A-Za-z0-9_.-]+`; namespaces refer to it.
    pub name: String,
    /// The backend and its settings.
    pub kind: BdevKind,
}

/// A bdev backend. In YAML each bdev entry has exactly one of `malloc`, `null`, `uring`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdevKind {
    /// RAM. `size` is a positive multiple of `block_size`; `block_size` (default 4096) is a
    /// power of two in 512..=65536.
    Malloc {
        /// Capacity in bytes.
        size: u64,
        /// Logical block size in bytes.
        block_size: u32,
    },
    /// Discards writes, reads zeroes. Same rules as `Malloc`.
    Null {
        /// Capacity in bytes.
        size: u64,
        /// Logical block size in bytes.
        block_size: u32,
    },
    /// A file or block device through io_uring with O_DIRECT.
    Uring {
        /// The file or block device.
        path: PathBuf,
        /// The logical block size to expose; `None` lets the bdev backend decide (the device's
        /// logical block size). When given: a power of two in 512..=65536.
        block_size: Option<u32>,
    },
}

/// An NVMe subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemConfig {
    /// Subsystem NQN: starts with `nqn.`, at most 223 bytes, printable ASCII without spaces,
    /// unique, not the discovery NQN.
    pub nqn: String,
    /// Serial number, at most 20 printable ASCII bytes. Default `NVMFD0001` for the first
    /// subsystem, `NVMFD0002` for the second, and so on.
    pub serial: String,
    /// Model number, at most 40 printable ASCII bytes. Default `nvmfd`.
    pub model: String,
    /// Whether any host may connect. Default: true when `hosts` is empty, false otherwise.
    /// `false` with no hosts is allowed and means nobody can connect.
    pub allow_any_host: bool,
    /// Host NQNs allowed to connect when `allow_any_host` is false.
    pub hosts: Vec<String>,
    /// Namespaces, in file order.
    pub namespaces: Vec<NamespaceConfig>,
    /// Addresses this subsystem is reachable on.
    pub listeners: Vec<ListenerConfig>,
}

/// A namespace of a subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// Namespace id, 1..=0xFFFFFFFE, unique in the subsystem. Default: position + 1.
    pub nsid: u32,
    /// The backing bdev's name; each bdev backs at most one namespace.
    pub bdev: String,
}

/// A listen address of a subsystem.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerConfig {
    /// The transport. Default `tcp`.
    pub transport: TransportKind,
    /// An IPv4 or IPv6 literal (no host names).
    pub address: IpAddr,
    /// TCP port, default 4420.
    pub port: u16,
}

/// A fabrics transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// NVMe/TCP.
    Tcp,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
        })
    }
}

/// The discovery service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Serve the discovery subsystem on every listener address. Default true.
    pub enabled: bool,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery { enabled: true }
    }
}
