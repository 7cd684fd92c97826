//! Live reconfiguration, the control thread's side: every change (an RPC method, a SIGHUP
//! reload) is a whole new configuration, validated like a file, compared with the running one
//! and applied without stopping I/O:
//!
//! 1. the new configuration is checked by the same validator as the YAML file (every rule,
//!    every message), and what cannot change while running (reactors, transports, discovery,
//!    state_dir, metrics, a subsystem's serial/model/controller IDs, a bdev's settings) is
//!    refused; new bdevs are opened and new listener addresses bound — any failure here and
//!    nothing has changed;
//! 2. each reactor gets the new bdevs (it opens its own channel) and then the new immutable
//!    [`Target`] snapshot as messages on its own queue; it swaps them in between polls and
//!    closes the queue pairs the change ends (`reactor/live.rs`, `core/live.rs`). The control
//!    thread waits until every reactor has carried the messages out;
//! 3. only then are the events raised (Namespace Attribute Changed on every controller of a
//!    subsystem whose namespaces changed; the discovery log's generation counter and the
//!    Discovery Log Page Change notice when what the log shows changed), so a host reacting to
//!    one finds the change on every queue; then deleted bdevs are closed (each reactor once its
//!    I/O on them is back) and listener addresses no longer used stop accepting.
//!
//! The state here (the running configuration and the bdev table) is the control plane's own,
//! behind a mutex that only the control threads (RPC, signals) take; the reactors never see it.

use crate::core::{AsyncEvent, Identities, Listener, Namespace, SubsysRef, Subsystem, Target};
use crate::reactor::{ControlLink, ReactorMsg};
use crossbeam_queue::ArrayQueue;
use nvmfd_bdev::{Bdev, BdevInfo};
use nvmfd_config::{BdevConfig, Config, SubsystemConfig, TransportKind};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long the control thread waits for the reactors to carry out a change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One block device of the running daemon, in its slot (namespaces and reactor channel tables
/// name it by slot; slots are never reused).
pub struct Slot {
    pub cfg: BdevConfig,
    pub info: BdevInfo,
    bdev: Arc<dyn Bdev>,
}

/// A listener address bound by the acceptor: the address as configured and as bound (port 0
/// picks one).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bound {
    listener: Listener,
    addr: SocketAddr,
}

/// The acceptor's control queue: listening sockets to add, bound addresses to stop serving.
pub enum AcceptorMsg {
    Add(TcpListener),
    Remove(SocketAddr),
}

#[derive(Clone)]
pub struct AcceptorLink {
    pub queue: Arc<ArrayQueue<(u64, AcceptorMsg)>>,
    pub applied: Arc<AtomicU64>,
}

impl Default for AcceptorLink {
    fn default() -> Self {
        AcceptorLink {
            queue: Arc::new(ArrayQueue::new(64)),
            applied: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// What the control plane reads: one consistent picture of the running state.
pub struct View {
    pub target: Arc<Target>,
    /// The running configuration: every identifier written in, the socket actually served.
    pub config: Config,
    /// (slot, config, facts) of every bdev, in slot order.
    pub bdevs: Vec<(usize, BdevConfig, BdevInfo)>,
}

impl View {
    /// The slot of the bdev named `name`.
    pub fn bdev_slot(&self, name: &str) -> Option<usize> {
        self.bdevs.iter().find(|b| b.1.name == name).map(|b| b.0)
    }
}

struct State {
    target: Arc<Target>,
    config: Config,
    slots: Vec<Option<Slot>>,
    bound: Vec<Bound>,
    seq: u64,
}

/// The running daemon's live state and its links to the reactors and the acceptor.
pub struct Live {
    state: Mutex<State>,
    reactors: Vec<ControlLink>,
    acceptor: AcceptorLink,
    /// Each reactor's last report, for every reader of them (`collect`).
    reports: crate::rpc::reports::ReportCache,
}

/// Why a change was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a change did, for logs and replies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub bdevs_added: Vec<String>,
    pub bdevs_removed: Vec<String>,
    pub subsystems_added: Vec<String>,
    pub subsystems_removed: Vec<String>,
    /// (NQN, NSID) of namespaces added, removed or replaced.
    pub namespaces_changed: Vec<(String, u32)>,
    pub discovery_changed: bool,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        *self == Applied::default()
    }
}

/// The configuration `cfg` with the identities start-up (or a change) resolved written in, so
/// that saving it and starting from the saved file gives the same target.
pub fn with_identities(cfg: &Config, ids: &Identities) -> Config {
    let mut c = cfg.clone();
    for (sc, sid) in c.subsystems.iter_mut().zip(&ids.subsystems) {
        sc.serial = sid.serial.clone();
        sc.serial_is_default = false;
        for (nc, nid) in sc.namespaces.iter_mut().zip(&sid.namespaces) {
            nc.uuid = Some(nid.uuid);
            nc.nguid = Some(nid.nguid);
            nc.eui64 = (nid.eui64 != [0; 8]).then_some(nid.eui64);
        }
    }
    c
}

/// The core's subsystem for a (fully resolved) subsystem configuration; None if a namespace
/// names a bdev that is not in `slot_of`.
fn subsystem(
    sc: &SubsystemConfig,
    slot_of: &dyn Fn(&str) -> Option<(usize, BdevInfo)>,
) -> Subsystem {
    let mut namespaces: Vec<Namespace> = sc
        .namespaces
        .iter()
        .filter_map(|n| {
            let (bdev, info) = slot_of(&n.bdev)?;
            Some(Namespace {
                nsid: n.nsid,
                bdev,
                info,
                nguid: n.nguid.unwrap_or_default(),
                uuid: n.uuid.unwrap_or_default(),
                eui64: n.eui64.unwrap_or_default(),
            })
        })
        .collect();
    namespaces.sort_by_key(|n| n.nsid);
    Subsystem {
        nqn: sc.nqn.clone(),
        live: true,
        serial: sc.serial.clone(),
        model: sc.model.clone(),
        allow_any_host: sc.allow_any_host,
        hosts: sc.hosts.clone(),
        cntlid_range: (sc.cntlid_min, sc.cntlid_max),
        max_namespaces: sc.max_namespaces,
        namespaces,
        listeners: listeners(sc),
    }
}

fn listeners(sc: &SubsystemConfig) -> Vec<Listener> {
    sc.listeners
        .iter()
        .map(|l| Listener {
            transport: l.transport,
            address: l.address,
            port: l.port,
        })
        .collect()
}

fn tombstone(s: &Subsystem) -> Subsystem {
    Subsystem {
        live: false,
        allow_any_host: false,
        hosts: Vec::new(),
        namespaces: Vec::new(),
        listeners: Vec::new(),
        ..s.clone()
    }
}

/// What the discovery log can show of a subsystem (for deciding whether it changed).
fn discovery_view(sc: &SubsystemConfig) -> (String, bool, BTreeSet<String>, Vec<Listener>) {
    (
        sc.nqn.clone(),
        sc.allow_any_host,
        sc.hosts.iter().cloned().collect(),
        listeners(sc),
    )
}

impl Live {
    /// `target` is what the daemon started with, `config` the configuration it was built from
    /// with its identities written in, `bdevs` the opened devices in `config.bdevs` order,
    /// `bound` the addresses the acceptor listens on for the TCP listeners of
    /// `target.listeners()`, in that order (RDMA listeners are served where configured).
    pub fn new(
        target: Arc<Target>,
        config: Config,
        bdevs: &[Arc<dyn Bdev>],
        bound: &[SocketAddr],
        reactors: Vec<ControlLink>,
        acceptor: AcceptorLink,
    ) -> Live {
        let slots = config
            .bdevs
            .iter()
            .zip(bdevs)
            .map(|(c, b)| {
                Some(Slot {
                    cfg: c.clone(),
                    info: b.info().clone(),
                    bdev: b.clone(),
                })
            })
            .collect();
        let mut tcp_bound = bound.iter();
        let bound = target
            .listeners()
            .into_iter()
            .filter_map(|listener| {
                let addr = match listener.transport {
                    TransportKind::Tcp => *tcp_bound.next()?,
                    TransportKind::Rdma => SocketAddr::new(listener.address, listener.port),
                };
                Some(Bound { listener, addr })
            })
            .collect();
        Live {
            state: Mutex::new(State {
                target,
                config,
                slots,
                bound,
                seq: 0,
            }),
            reactors,
            acceptor,
            reports: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current snapshot.
    pub fn target(&self) -> Arc<Target> {
        self.lock().target.clone()
    }

    /// One consistent picture of the running state.
    pub fn view(&self) -> View {
        let st = self.lock();
        View {
            target: st.target.clone(),
            config: st.config.clone(),
            bdevs: st
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.cfg.clone(), s.info.clone())))
                .collect(),
        }
    }

    /// The socket the RPC server serves (written into the running configuration).
    pub fn set_rpc_socket(&self, path: &std::path::Path) {
        self.lock().config.rpc.socket = path.to_owned();
    }

    /// Change the running configuration with `edit` (on a copy of it) and apply the result.
    pub fn change(
        &self,
        why: &str,
        edit: impl FnOnce(&mut Config) -> Result<(), Refused>,
    ) -> Result<Applied, Refused> {
        let mut st = self.lock();
        let mut cand = st.config.clone();
        edit(&mut cand)?;
        self.apply_locked(&mut st, cand, why)
    }

    /// Apply a configuration read from a file (SIGHUP): identities the file leaves out are
    /// those the running daemon already has for the same subsystem and namespace (same bdev),
    /// so a reload does not change what hosts see of what stayed; the RPC socket is the one
    /// being served.
    pub fn reload(&self, mut file: Config, why: &str) -> Result<Applied, Refused> {
        let mut st = self.lock();
        file.rpc = st.config.rpc.clone();
        // A bdev's own UUID (given by RPC, say) is kept for the same bdev when the file has none.
        for b in &mut file.bdevs {
            if let Some(r) = st.config.bdev(&b.name) {
                if b.uuid.is_none() && r.kind == b.kind {
                    b.uuid = r.uuid;
                }
            }
        }
        for sc in &mut file.subsystems {
            let Some(run) = st.config.subsystems.iter().find(|r| r.nqn == sc.nqn) else {
                continue;
            };
            if sc.serial_is_default {
                sc.serial = run.serial.clone();
                sc.serial_is_default = false;
            }
            for n in &mut sc.namespaces {
                if let Some(rn) = run
                    .namespaces
                    .iter()
                    .find(|r| r.nsid == n.nsid && r.bdev == n.bdev)
                {
                    n.uuid = n.uuid.or(rn.uuid);
                    n.nguid = n.nguid.or(rn.nguid);
                    n.eui64 = n.eui64.or(rn.eui64);
                }
            }
        }
        self.apply_locked(&mut st, file, why)
    }

    fn apply_locked(&self, st: &mut State, cand: Config, why: &str) -> Result<Applied, Refused> {
        // 1. The same checks as a configuration file.
        let text = nvmfd_config::to_yaml(&cand);
        let cand = nvmfd_config::parse_str(&text, "<running configuration>").map_err(|e| {
            let msgs: Vec<String> = e
                .diagnostics()
                .iter()
                .map(|d| format!("{}: {}", d.path, d.message))
                .collect();
            Refused(if msgs.is_empty() {
                e.to_string()
            } else {
                msgs.join("; ")
            })
        })?;
        let old = &st.config;
        for (what, same) in [
            ("reactors", old.reactors == cand.reactors),
            ("transports", old.transports == cand.transports),
            ("discovery", old.discovery == cand.discovery),
            ("state_dir", old.state_dir == cand.state_dir),
            ("metrics", old.metrics == cand.metrics),
        ] {
            if !same {
                return Err(Refused(format!(
                    "{what} cannot change while nvmfd runs (restart it for that)"
                )));
            }
        }
        for b in &cand.bdevs {
            if let Some(o) = old.bdev(&b.name) {
                if o != b {
                    return Err(Refused(format!(
                        "bdev {:?}: its settings cannot change while it exists; delete it and create it again",
                        b.name
                    )));
                }
            }
        }
        for s in &cand.subsystems {
            if let Some(o) = old.subsystems.iter().find(|o| o.nqn == s.nqn) {
                // NN (max_namespaces) too: hosts size their namespace view by it at connect.
                let fixed = |c: &SubsystemConfig| {
                    (
                        c.model.clone(),
                        c.cntlid_min,
                        c.cntlid_max,
                        c.max_namespaces,
                    )
                };
                if fixed(o) != fixed(s) || (!s.serial_is_default && s.serial != o.serial) {
                    return Err(Refused(format!(
                        "subsystem {:?}: serial, model, controller ID range and max_namespaces cannot change while it exists; delete it and create it again",
                        s.nqn
                    )));
                }
                // Placement is decided at start-up (crate::p2p): a change needs a restart.
                let kept = s.namespaces.iter().filter_map(|n| {
                    let on = o
                        .namespaces
                        .iter()
                        .find(|x| x.nsid == n.nsid && x.bdev == n.bdev)?;
                    (on.p2p != n.p2p).then_some(n.nsid)
                });
                if let Some(nsid) = kept.into_iter().next() {
                    return Err(Refused(format!(
                        "subsystem {:?} namespace {nsid}: p2p is decided at start-up and cannot change while nvmfd runs (restart it for that)",
                        s.nqn
                    )));
                }
            }
        }
        let ids = crate::identity::resolve(&cand).map_err(|e| Refused(format!("{e:#}")))?;
        let run = with_identities(&cand, &ids);

        // RDMA listeners share one rdma_cm channel made at start-up (with its devices' checks):
        // they are not changed while running.
        let rdma = |l: &Listener| l.transport == TransportKind::Rdma;
        let rdma_now: Vec<Listener> = st
            .bound
            .iter()
            .map(|b| b.listener.clone())
            .filter(rdma)
            .collect();
        let rdma_wanted: Vec<Listener> = run
            .subsystems
            .iter()
            .flat_map(listeners)
            .filter(rdma)
            .collect();
        if let Some(l) = rdma_wanted
            .iter()
            .find(|l| !rdma_now.contains(l))
            .or_else(|| rdma_now.iter().find(|l| !rdma_wanted.contains(l)))
        {
            return Err(Refused(format!(
                "RDMA listener {}:{} cannot be added or removed while running: change the YAML and restart the daemon",
                l.address, l.port
            )));
        }

        // New bdevs are opened and new addresses bound before anything changes.
        let mut opened: Vec<Slot> = Vec::new();
        for b in run.bdevs.iter().filter(|b| old.bdev(&b.name).is_none()) {
            let bdev = nvmfd_bdev::open(b)
                .map_err(|e| Refused(format!("cannot open bdev {:?}: {e}", b.name)))?;
            opened.push(Slot {
                cfg: b.clone(),
                info: bdev.info().clone(),
                bdev,
            });
        }
        let mut wanted: Vec<Listener> = Vec::new();
        for l in run.subsystems.iter().flat_map(listeners) {
            if !wanted.contains(&l) {
                wanted.push(l);
            }
        }
        let mut new_sockets = Vec::new();
        for l in wanted
            .iter()
            .filter(|l| !st.bound.iter().any(|b| &b.listener == *l))
        {
            match l.transport {
                TransportKind::Tcp => {
                    let addr = SocketAddr::new(l.address, l.port);
                    let sock = TcpListener::bind(addr)
                        .and_then(|s| s.set_nonblocking(true).map(|_| s))
                        .and_then(|s| s.local_addr().map(|a| (s, a)))
                        .map_err(|e| Refused(format!("cannot listen on {addr} (tcp): {e}")))?;
                    new_sockets.push((l.clone(), sock));
                }
                // Refused above: every RDMA listener wanted is bound already.
                TransportKind::Rdma => {}
            }
        }

        // 2. The new snapshot.
        let mut slots_after: Vec<Option<&Slot>> = st.slots.iter().map(|s| s.as_ref()).collect();
        let first_new = slots_after.len();
        slots_after.extend(opened.iter().map(Some));
        let removed_bdevs: Vec<usize> = st
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| run.bdev(&s.cfg.name).is_none()))
            .map(|(i, _)| i)
            .collect();
        for &i in &removed_bdevs {
            slots_after[i] = None;
        }
        let slot_of = |name: &str| {
            slots_after
                .iter()
                .enumerate()
                .find(|(_, s)| s.is_some_and(|s| s.cfg.name == name))
                .and_then(|(i, s)| s.map(|s| (i, s.info.clone())))
        };
        let mut applied = Applied::default();
        let mut subs: Vec<Subsystem> = Vec::new();
        let mut ns_changed: Vec<(usize, u32)> = Vec::new();
        for (i, s) in st.target.subsystems.iter().enumerate() {
            let new = s
                .live
                .then(|| run.subsystems.iter().find(|r| r.nqn == s.nqn))
                .flatten();
            match new {
                None if s.live => {
                    applied.subsystems_removed.push(s.nqn.clone());
                    subs.push(tombstone(s));
                }
                None => subs.push(s.clone()),
                Some(sc) => {
                    let n = subsystem(sc, &slot_of);
                    let key = |x: &Namespace| (x.nsid, x.bdev, x.uuid, x.nguid, x.eui64);
                    let before: BTreeSet<_> = s.namespaces.iter().map(key).collect();
                    let after: BTreeSet<_> = n.namespaces.iter().map(key).collect();
                    let mut nsids: Vec<u32> =
                        before.symmetric_difference(&after).map(|k| k.0).collect();
                    nsids.dedup();
                    for nsid in nsids {
                        ns_changed.push((i, nsid));
                        applied.namespaces_changed.push((s.nqn.clone(), nsid));
                    }
                    subs.push(n);
                }
            }
        }
        for sc in run
            .subsystems
            .iter()
            .filter(|sc| !old.subsystems.iter().any(|o| o.nqn == sc.nqn))
        {
            applied.subsystems_added.push(sc.nqn.clone());
            subs.push(subsystem(sc, &slot_of));
        }
        let disc = |c: &Config| c.subsystems.iter().map(discovery_view).collect::<Vec<_>>();
        applied.discovery_changed = disc(old) != disc(&run);
        applied.bdevs_added = opened.iter().map(|s| s.cfg.name.clone()).collect();
        applied.bdevs_removed = removed_bdevs
            .iter()
            .filter_map(|&i| st.slots[i].as_ref().map(|s| s.cfg.name.clone()))
            .collect();
        let target = st.target.next(subs, &ns_changed);

        // Reactors: new bdevs first, then the snapshot.
        let mut msgs: Vec<Box<dyn Fn() -> ReactorMsg>> = Vec::new();
        for (k, s) in opened.iter().enumerate() {
            let (index, bdev) = (first_new + k, s.bdev.clone());
            msgs.push(Box::new(move || ReactorMsg::OpenBdev {
                index,
                bdev: bdev.clone(),
            }));
        }
        let t = target.clone();
        msgs.push(Box::new(move || ReactorMsg::Target(t.clone())));
        for (l, sock) in new_sockets {
            let addr = sock.1;
            info!(transport = "tcp", address = %addr, "listening");
            st.bound.push(Bound { listener: l, addr });
            self.to_acceptor(st, AcceptorMsg::Add(sock.0));
        }
        self.to_reactors(st, &msgs);

        // 3. Events, then what is no longer used goes.
        for &(i, _) in &ns_changed {
            // One notice per controller is enough: pending events are a set.
            target.raise_event(SubsysRef::Nvm(i), AsyncEvent::NamespaceAttributeChanged);
        }
        if applied.discovery_changed {
            target.discovery_changed();
        }
        let close: Vec<Box<dyn Fn() -> ReactorMsg>> = removed_bdevs
            .iter()
            .map(|&index| {
                Box::new(move || ReactorMsg::CloseBdev { index }) as Box<dyn Fn() -> ReactorMsg>
            })
            .collect();
        if !close.is_empty() {
            self.to_reactors(st, &close);
        }
        let gone: Vec<Bound> = st
            .bound
            .iter()
            .filter(|b| !wanted.contains(&b.listener))
            .cloned()
            .collect();
        for b in gone {
            info!(transport = "tcp", address = %b.addr, "no longer listening");
            st.bound.retain(|x| x != &b);
            self.to_acceptor(st, AcceptorMsg::Remove(b.addr));
        }
        for &i in &removed_bdevs {
            st.slots[i] = None;
        }
        st.slots.extend(opened.into_iter().map(Some));
        st.target = target;
        st.config = run;
        if applied.is_empty() {
            info!(reason = why, "configuration unchanged");
        } else {
            info!(reason = why, generation = st.target.generation,
                bdevs_added = ?applied.bdevs_added, bdevs_removed = ?applied.bdevs_removed,
                subsystems_added = ?applied.subsystems_added, subsystems_removed = ?applied.subsystems_removed,
                namespaces_changed = ?applied.namespaces_changed, discovery_changed = applied.discovery_changed,
                "configuration changed");
        }
        Ok(applied)
    }

    /// Every reactor (by id) with its report (queue pairs and counters), asked by message: a
    /// reactor that does not answer within 2 s is shown with its last report, flagged stale
    /// (see `crate::rpc::reports`). The one path by which the RPC methods and `/metrics` read
    /// the reactors.
    pub fn collect(&self) -> Vec<crate::rpc::reports::Seen> {
        let ids: Vec<usize> = (0..self.reactors.len()).collect();
        self.reports.merge(self.ask_reactors(), &ids)
    }

    /// Every reactor's answer within 2 s (a reactor that does not answer is left out).
    fn ask_reactors(&self) -> Vec<crate::reactor::ReactorReport> {
        let mut waiting = Vec::new();
        for r in &self.reactors {
            if r.stopped.load(Ordering::Acquire) {
                continue;
            }
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            // Numbered 0: a report changes nothing, so nobody waits on `applied` for it.
            if r.queue.push((0, ReactorMsg::Report(tx))).is_ok() {
                waiting.push(rx);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        waiting
            .into_iter()
            .filter_map(|rx| {
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok()
            })
            .collect()
    }

    /// Turn the reactors' per-command counting on or off (on when the metrics endpoint is
    /// served), waiting until every reactor has taken the change.
    pub fn count_io(&self, on: bool) {
        let mut st = self.lock();
        self.to_reactors(&mut st, &[Box::new(move || ReactorMsg::CountIo(on))]);
    }

    /// Send each message to every reactor (in order) and wait until all carried them out.
    fn to_reactors(&self, st: &mut State, msgs: &[Box<dyn Fn() -> ReactorMsg>]) {
        for m in msgs {
            st.seq += 1;
            for r in &self.reactors {
                let mut item = (st.seq, m());
                let deadline = Instant::now() + APPLY_TIMEOUT;
                loop {
                    match r.queue.push(item) {
                        Ok(()) => break,
                        Err(back)
                            if Instant::now() < deadline && !r.stopped.load(Ordering::Acquire) =>
                        {
                            item = back;
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(_) => {
                            warn!("a reactor's control queue stayed full; it misses a change");
                            break;
                        }
                    }
                }
            }
        }
        let seq = st.seq;
        let deadline = Instant::now() + APPLY_TIMEOUT;
        for (id, r) in self.reactors.iter().enumerate() {
            while r.applied.load(Ordering::Acquire) < seq && !r.stopped.load(Ordering::Acquire) {
                if Instant::now() > deadline {
                    warn!(
                        reactor = id,
                        "reactor did not take a configuration change in time"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    fn to_acceptor(&self, st: &mut State, msg: AcceptorMsg) {
        st.seq += 1;
        let seq = st.seq;
        if self.acceptor.queue.push((seq, msg)).is_err() {
            warn!("the acceptor's control queue is full; a listener change is lost");
            return;
        }
        let deadline = Instant::now() + APPLY_TIMEOUT;
        while self.acceptor.applied.load(Ordering::Acquire) < seq && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The acceptor thread: accept on every listening socket, hand each connection to a reactor
/// (round-robin), and take listener changes from `link`.
pub(crate) fn acceptor_loop(
    mut listeners: Vec<TcpListener>,
    mut rdma: Option<nvmfd_transport::rdma::Listeners>,
    inboxes: Vec<Arc<ArrayQueue<nvmfd_transport::group::AnyIncoming>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    link: AcceptorLink,
) {
    use std::os::fd::AsRawFd;
    let mut next = 0usize;
    let mut next_rdma = 0usize;
    let all_fds = |listeners: &[TcpListener], rdma: &Option<nvmfd_transport::rdma::Listeners>| {
        let mut fds: Vec<_> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        fds.extend(rdma.as_ref().map(|r| r.fd()));
        fds
    };
    let mut fds = all_fds(&listeners, &rdma);
    while !stop.load(Ordering::Relaxed) {
        while let Some((seq, msg)) = link.queue.pop() {
            match msg {
                AcceptorMsg::Add(l) => listeners.push(l),
                AcceptorMsg::Remove(addr) => {
                    listeners.retain(|l| l.local_addr().ok() != Some(addr));
                }
            }
            fds = all_fds(&listeners, &rdma);
            link.applied.store(seq, Ordering::Release);
        }
        let mut any = false;
        if let Some(rl) = rdma.as_mut() {
            rl.relisten(std::time::Instant::now());
        }
        // RDMA connect requests: admitted or rejected by the listener, then round-robin to the
        // reactors, where the queue pair lives.
        while let Some(rl) = rdma.as_mut() {
            match rl.poll() {
                Ok((false, _)) => break,
                Ok((true, None)) => any = true,
                Ok((true, Some(inc))) => {
                    any = true;
                    let inbox = &inboxes[next_rdma % inboxes.len()];
                    next_rdma = next_rdma.wrapping_add(1);
                    let peer = inc.peer;
                    if inbox
                        .push(nvmfd_transport::group::AnyIncoming::Rdma(inc))
                        .is_err()
                    {
                        warn!(?peer, "reactor inbox full; refusing RDMA connection");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "RDMA listener event channel");
                    break;
                }
            }
        }
        for l in &listeners {
            match l.accept() {
                Ok((stream, peer)) => {
                    any = true;
                    // Round-robin: each connection (queue pair) lives on one reactor.
                    let inbox = &inboxes[next % inboxes.len()];
                    next = next.wrapping_add(1);
                    if inbox
                        .push(nvmfd_transport::group::AnyIncoming::Tcp(
                            nvmfd_transport::tcp::TcpIncoming { stream, peer },
                        ))
                        .is_err()
                    {
                        warn!(%peer, "reactor inbox full; refusing connection");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => warn!(error = %e, "accept failed"),
            }
        }
        if !any {
            // Sleep in poll(2) until a host connects (or 20 ms pass, to see a stop or a
            // listener change): no periodic wake-ups on the reactors' cores.
            crate::poll::wait_readable(&fds, Duration::from_millis(20));
        }
    }
}
