//! The NVMe-oF target core: subsystems, namespaces, controllers and queue pairs, as a state machine
//! over commands and completions. It never touches a socket, a block device or a clock. A command
//! goes through it in two phases: [`QueuePair::admit`] looks at the SQE and the transport's
//! description of its data ([`DataDesc`]) and answers at once or says what data it needs
//! ([`Admission`]); once the transport has that data in place, [`QueuePair::execute`] runs it and
//! answers with an [`Outcome`], which the reactor carries out. Every NVMe-oF rule is therefore
//! testable without I/O, and shared by every transport.

mod admin;
mod controller;
mod fabrics;
mod identify;
mod io;
mod live;
mod logpage;
mod qpair;

pub use controller::{AsyncEvent, CtrlShared};
pub use qpair::{Action, Admitted, Outcome, QueuePair};

use nvmfd_bdev::BdevInfo;
use nvmfd_config::{Config, TransportKind};
use nvmfd_transport::proto::fabrics::DISCOVERY_NQN;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nvmfd_transport::logsafe::{LogDecision, RateLimit};

pub use nvmfd_transport::{Admission, Capsule, DataDesc, DataNeed, Response, TransportInfo};

/// The identifiers a namespace reports to hosts (Identify Namespace NGUID/EUI64 and the
/// Namespace Identification Descriptor list). All bytes are in wire order: NGUID and EUI-64 are
/// big-endian as written in the config, the UUID in RFC 4122 byte order. An all-zero EUI-64
/// means none (NVMe Base 2.0, Identify Namespace EUI64: cleared to 0h if not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NamespaceIds {
    pub uuid: [u8; 16],
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

/// What start-up decided about one subsystem's identity (see `crate::identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsysIdentity {
    /// Identify Controller serial number.
    pub serial: String,
    /// One per namespace, in config order.
    pub namespaces: Vec<NamespaceIds>,
}

/// Identities of every subsystem, in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identities {
    pub subsystems: Vec<SubsysIdentity>,
}

/// A namespace: an NSID mapped to a block device.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub nsid: u32,
    /// Index of the block device in the daemon's bdev table (and each reactor's channel table).
    pub bdev: usize,
    pub info: BdevInfo,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    /// All zero when the namespace has none.
    pub eui64: [u8; 8],
}

/// A listener address as the discovery log reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub transport: TransportKind,
    pub address: IpAddr,
    pub port: u16,
}

/// An NVM subsystem.
#[derive(Debug, Clone)]
pub struct Subsystem {
    pub nqn: String,
    /// False once deleted at run time: a deleted subsystem keeps its slot (its index is the
    /// [`SubsysRef::Nvm`] controllers and queues name it by) but has no namespaces, hosts or
    /// listeners, admits no host and is found by no lookup.
    pub live: bool,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    /// Controller IDs this subsystem hands out (inclusive).
    pub cntlid_range: (u16, u16),
    /// The highest NSID a namespace may have (`max_namespaces`; Identify Controller NN).
    pub max_namespaces: u32,
    /// Sorted by NSID.
    pub namespaces: Vec<Namespace>,
    pub listeners: Vec<Listener>,
}

impl Subsystem {
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.live && self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }

    pub fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespaces
            .binary_search_by_key(&nsid, |n| n.nsid)
            .ok()
            .map(|i| &self.namespaces[i])
    }

    /// Identify Controller NN: NVMe base 2.x defines it as "the maximum value of a valid NSID
    /// for the NVM subsystem", a fixed limit and not the highest NSID in use, so a host that
    /// sized its view by NN at connect sees a namespace added later at any NSID up to it.
    /// Every NSID in 1..=NN is valid; those without a namespace are inactive.
    pub fn max_nsid(&self) -> u32 {
        self.max_namespaces
    }

    /// Whether any namespace's device has a volatile write cache.
    pub fn volatile_cache(&self) -> bool {
        self.namespaces.iter().any(|n| n.info.volatile_cache)
    }
}

/// Which subsystem a controller belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubsysRef {
    Discovery,
    Nvm(usize),
}

/// Everything the core knows: an immutable snapshot, shared read-only by all reactors. Live
/// reconfiguration (`crate::live`) builds a new snapshot ([`Target::next`]) and sends it to every
/// reactor, which swaps its queue pairs' reference between polls; nothing on the I/O path takes a
/// lock. The parts that outlive a snapshot (the controller registry, the discovery generation
/// counter, the refusal log budget) are shared by all snapshots of one daemon; the registry is
/// touched only when queues connect and disconnect, never per I/O.
#[derive(Debug)]
pub struct Target {
    /// NVM subsystems by slot ([`SubsysRef::Nvm`]); deleted ones stay as tombstones
    /// ([`Subsystem::live`] false) so that slots never move.
    pub subsystems: Vec<Subsystem>,
    pub discovery_enabled: bool,
    /// Every configured transport's limits and reported values (the discovery log reports each
    /// listener with its transport's; a queue pair takes those of the transport it arrived on).
    pub transports: Vec<TransportInfo>,
    /// Snapshot generation: 1 at start, +1 per applied change.
    pub generation: u64,
    /// Namespaces added or removed, (generation, subsystem slot, NSID), oldest first and at most
    /// [`live::NS_JOURNAL`] long: what each controller's Changed Namespace List log reports.
    pub(crate) ns_changes: Arc<Vec<(u64, usize, u32)>>,
    /// The generation of the oldest change the journal may have dropped (0: none dropped).
    pub(crate) ns_changes_floor: u64,
    /// Generation counter of the discovery log: starts from a digest of what the log can show
    /// (so a daemon restarted with another configuration shows another value, the same one
    /// the same value) and moves on at every change ([`Target::discovery_changed`]).
    discovery_genctr: Arc<AtomicU64>,
    registry: Arc<controller::Registry>,
    /// Log budget of refused Connects, shared by every reactor (touched only when a Connect is
    /// refused, never on the I/O path).
    refusals: Arc<Mutex<RateLimit>>,
}

/// Refused Connects: the first 20 are logged, then one in 1000 with the count left out.
const REFUSAL_LOG_BURST: u32 = 20;
const REFUSAL_LOG_EVERY: u32 = 1000;

impl Target {
    /// Build the target from a validated config and the facts of the bdevs it names (in config
    /// order). Identifiers the config leaves out are fresh random ones and serials are the
    /// config's (nothing is read from or written to the state directory: for tests; the daemon
    /// resolves identities with `crate::identity::resolve` and calls [`Target::with_identities`]).
    pub fn new(cfg: &Config, bdevs: &[BdevInfo]) -> Arc<Target> {
        let random = |b: &mut [u8]| {
            crate::identity::fill_random(b).expect("reading /dev/urandom");
        };
        let ids = Identities {
            subsystems: cfg
                .subsystems
                .iter()
                .map(|s| SubsysIdentity {
                    serial: s.serial.clone(),
                    namespaces: s
                        .namespaces
                        .iter()
                        .map(|n| {
                            let mut r = NamespaceIds::default();
                            random(&mut r.uuid);
                            random(&mut r.nguid);
                            r.uuid[6] = (r.uuid[6] & 0x0f) | 0x40;
                            r.uuid[8] = (r.uuid[8] & 0x3f) | 0x80;
                            NamespaceIds {
                                uuid: n.uuid.unwrap_or(r.uuid),
                                nguid: n.nguid.unwrap_or(r.nguid),
                                eui64: n.eui64.unwrap_or_default(),
                            }
                        })
                        .collect(),
                })
                .collect(),
        };
        Self::with_identities(cfg, bdevs, &ids)
    }

    /// [`Target::new`] with serials and namespace identifiers decided by the caller (`ids` has one
    /// entry per subsystem and per namespace of `cfg`, in config order).
    pub fn with_identities(cfg: &Config, bdevs: &[BdevInfo], ids: &Identities) -> Arc<Target> {
        assert_eq!(
            ids.subsystems.len(),
            cfg.subsystems.len(),
            "one identity per subsystem"
        );
        let subsystems: Vec<Subsystem> = cfg
            .subsystems
            .iter()
            .zip(&ids.subsystems)
            .map(|(s, sid)| {
                let mut namespaces: Vec<Namespace> = s
                    .namespaces
                    .iter()
                    .zip(&sid.namespaces)
                    .filter_map(|(ns, id)| {
                        let bdev = cfg.bdevs.iter().position(|b| b.name == ns.bdev)?;
                        Some(Namespace {
                            nsid: ns.nsid,
                            bdev,
                            info: bdevs[bdev].clone(),
                            nguid: id.nguid,
                            uuid: id.uuid,
                            eui64: id.eui64,
                        })
                    })
                    .collect();
                namespaces.sort_by_key(|n| n.nsid);
                Subsystem {
                    live: true,
                    nqn: s.nqn.clone(),
                    serial: sid.serial.clone(),
                    model: s.model.clone(),
                    allow_any_host: s.allow_any_host,
                    hosts: s.hosts.clone(),
                    cntlid_range: (s.cntlid_min, s.cntlid_max),
                    max_namespaces: s.max_namespaces,
                    namespaces,
                    listeners: s
                        .listeners
                        .iter()
                        .map(|l| Listener {
                            transport: l.transport,
                            address: l.address,
                            port: l.port,
                        })
                        .collect(),
                }
            })
            .collect();
        let genctr = discovery_digest(&subsystems);
        Arc::new(Target {
            subsystems,
            discovery_enabled: cfg.discovery.enabled,
            transports: vec![
                nvmfd_transport::tcp::transport_info(&cfg.transports.tcp),
                nvmfd_transport::rdma::transport_info(&cfg.transports.rdma),
            ],
            generation: 1,
            ns_changes: Arc::new(Vec::new()),
            ns_changes_floor: 0,
            discovery_genctr: Arc::new(AtomicU64::new(genctr)),
            registry: Arc::new(controller::Registry::default()),
            refusals: Arc::new(Mutex::new(RateLimit::new(
                REFUSAL_LOG_BURST,
                REFUSAL_LOG_EVERY,
            ))),
        })
    }

    /// The limits and reported values of transport `kind` as configured.
    pub fn transport(&self, kind: TransportKind) -> Option<&TransportInfo> {
        self.transports.iter().find(|t| t.kind == kind)
    }

    /// Look a subsystem up by NQN (the discovery NQN when discovery is enabled).
    pub fn find_subsystem(&self, nqn: &str) -> Option<SubsysRef> {
        if nqn == DISCOVERY_NQN {
            return self.discovery_enabled.then_some(SubsysRef::Discovery);
        }
        self.subsystems
            .iter()
            .position(|s| s.live && s.nqn == nqn)
            .map(SubsysRef::Nvm)
    }

    /// The discovery log's generation counter now.
    pub fn discovery_genctr(&self) -> u64 {
        self.discovery_genctr.load(Ordering::Acquire)
    }

    /// Something the discovery log shows changed (control plane: live reconfiguration): move
    /// the generation counter on and tell every discovery controller (a Discovery Log Page
    /// Change notice completes a held AER of each one that enabled it).
    pub fn discovery_changed(&self) {
        self.discovery_genctr.fetch_add(1, Ordering::AcqRel);
        self.raise_event(SubsysRef::Discovery, AsyncEvent::DiscoveryLogChanged);
    }

    /// Raise `event` on every controller of `subsys` (from any thread).
    pub fn raise_event(&self, subsys: SubsysRef, event: AsyncEvent) {
        for c in self.registry.of_subsystem(subsys) {
            c.raise(event);
        }
    }

    /// Count one refused Connect and say whether to log it.
    pub(crate) fn connect_refusal_log(&self) -> LogDecision {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .event()
    }

    /// A snapshot of the live controllers of `subsys` (control plane: reports).
    pub fn controllers(&self, subsys: SubsysRef) -> Vec<Arc<CtrlShared>> {
        self.registry.of_subsystem(subsys)
    }

    /// Live controllers (for reports and tests).
    pub fn controller_count(&self) -> usize {
        self.registry.len()
    }

    /// Every listener address of every subsystem, deduplicated: what the daemon binds.
    pub fn listeners(&self) -> Vec<Listener> {
        let mut out: Vec<Listener> = Vec::new();
        for l in self.subsystems.iter().flat_map(|s| s.listeners.iter()) {
            if !out.contains(l) {
                out.push(l.clone());
            }
        }
        out
    }
}

/// A digest of the discovery-relevant configuration (subsystem NQNs, host lists, listeners),
/// never 0: the discovery log's first generation counter.
fn discovery_digest(subsystems: &[Subsystem]) -> u64 {
    let mut a = 0u32;
    let mut b = 0x5eed_u32;
    for s in subsystems {
        let mut feed = |bytes: &[u8]| {
            a = crc32c::crc32c_append(a, bytes);
            b = crc32c::crc32c_append(b, bytes);
            b = crc32c::crc32c_append(b, &[0xa5]);
        };
        feed(s.nqn.as_bytes());
        feed(&[s.allow_any_host as u8]);
        for h in &s.hosts {
            feed(h.as_bytes());
        }
        for l in &s.listeners {
            feed(l.address.to_string().as_bytes());
            feed(&l.port.to_le_bytes());
        }
    }
    (((a as u64) << 32) | b as u64).max(1)
}

#[cfg(test)]
mod tests;
