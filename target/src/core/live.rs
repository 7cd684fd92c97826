//! Live reconfiguration, the core's side: a new [`Target`] snapshot built from the old one, a
//! queue pair taking a new snapshot between polls, and the Changed Namespace List log.
//!
//! The control thread (`crate::live`) builds every change as a whole new immutable snapshot
//! ([`Target::next`]) and sends it to each reactor as a message; a reactor hands it to each of
//! its queue pairs ([`QueuePair::set_target`]) between polls. The I/O path keeps reading its own
//! `Arc<Target>` as before: no lock, no pause, no per-command generation check.
//!
//! What a command in flight on a removed namespace gets: a command admitted before its queue
//! took the snapshot without the namespace runs to completion on the block device and completes
//! with the device's status (the removal is ordered after it; the device stays open on the
//! reactor until its in-flight I/O is back). A command admitted after that is checked against
//! the new snapshot and gets Invalid Namespace or Format, like any NSID that is not an active
//! namespace of the controller (NVMe base 2.0, 3.2.1.4 and Figure "Generic Command Status
//! Values": 0Bh). Linux nvmet behaves the same way (it waits for the namespace's in-flight
//! requests before the namespace goes; new ones find no namespace); SPDK instead pauses the
//! whole subsystem, which the design does not allow.

use super::qpair::{QueuePair, State};
use super::{SubsysRef, Subsystem, Target};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Namespace changes kept for the Changed Namespace List log. A controller that has not read
/// the log since more changes than this were made sees the overflow entry (FFFFFFFFh).
pub const NS_JOURNAL: usize = 1024;

/// Entries of the Changed Namespace List log page (NVMe base 2.0, 5.16.1.5: up to 1024 NSIDs;
/// more changes than that are reported as a single entry FFFFFFFFh).
const CHANGED_NS_MAX: usize = 1024;

impl Target {
    /// A new snapshot with `subsystems` in place of this one's (same slots, a tombstone for a
    /// deleted one, new ones appended), `ns_changed` (subsystem slot, NSID) journaled for the
    /// Changed Namespace List log. The registry, the discovery generation counter and the
    /// refusal budget are shared with this snapshot.
    pub fn next(&self, subsystems: Vec<Subsystem>, ns_changed: &[(usize, u32)]) -> Arc<Target> {
        assert!(
            subsystems.len() >= self.subsystems.len(),
            "slots never go away"
        );
        let generation = self.generation + 1;
        let mut journal: Vec<(u64, usize, u32)> = self.ns_changes.as_ref().clone();
        journal.extend(ns_changed.iter().map(|&(s, n)| (generation, s, n)));
        let mut floor = self.ns_changes_floor;
        if journal.len() > NS_JOURNAL {
            let drop = journal.len() - NS_JOURNAL;
            floor = journal[drop - 1].0;
            journal.drain(..drop);
        }
        Arc::new(Target {
            subsystems,
            discovery_enabled: self.discovery_enabled,
            transports: self.transports.clone(),
            generation,
            ns_changes: Arc::new(journal),
            ns_changes_floor: floor,
            discovery_genctr: self.discovery_genctr.clone(),
            registry: self.registry.clone(),
            refusals: self.refusals.clone(),
        })
    }

    /// The live NVM subsystem in slot `i`.
    pub fn live_subsystem(&self, i: usize) -> Option<&Subsystem> {
        self.subsystems.get(i).filter(|s| s.live)
    }

    /// The Changed Namespace List log page (4096 bytes) for a controller of subsystem slot
    /// `subsys` that last read it at generation `seen`: the NSIDs added or removed since, in
    /// increasing order, or FFFFFFFFh alone when more than 1024 changed or the journal no
    /// longer reaches back that far.
    pub(super) fn changed_ns_log(&self, subsys: usize, seen: u64) -> Vec<u8> {
        let mut page = vec![0u8; 4096];
        let mut ids: Vec<u32> = self
            .ns_changes
            .iter()
            .filter(|(g, s, _)| *g > seen && *s == subsys)
            .map(|&(_, _, n)| n)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let overflow =
            (seen < self.ns_changes_floor && !ids.is_empty()) || ids.len() > CHANGED_NS_MAX;
        if overflow {
            page[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        } else {
            for (i, n) in ids.iter().enumerate() {
                page[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
            }
        }
        page
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of an IPv4 peer) as plain IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a connection that arrived on `local` came through listener `l` (a wildcard listener
/// takes every address of its family; `::` takes IPv4 too, dual stack being the Linux default).
pub fn arrived_through(l: &super::Listener, local: SocketAddr) -> bool {
    if l.port != local.port() {
        return false;
    }
    let here = canonical(local.ip());
    match l.address {
        IpAddr::V4(a) if a.is_unspecified() => here.is_ipv4(),
        IpAddr::V6(a) if a.is_unspecified() => true,
        a => canonical(a) == here,
    }
}

/// Whether a host that reached us on `local` may connect to `s` there: only through one of the
/// subsystem's own listeners (NVMe-oF 1.1, 5.1: a host uses the transport addresses the
/// discovery log gives for the subsystem; SPDK and Linux nvmet likewise refuse a Connect to a
/// subsystem on a port it is not exposed on). An unknown local address (unit tests) passes.
pub(super) fn listener_allows(s: &Subsystem, local: Option<SocketAddr>) -> bool {
    local.is_none_or(|here| s.listeners.iter().any(|l| arrived_through(l, here)))
}

impl QueuePair {
    /// Take a new snapshot of the target (between polls, on this queue's reactor). Returns why
    /// the queue must now be closed, if it must: its subsystem was deleted, its host was taken
    /// off the allow-list, or the listener it came through was removed from its subsystem (or,
    /// for a discovery or unconnected queue, from every subsystem).
    ///
    /// Commands in flight keep the snapshot they were admitted under for their completion
    /// (see the module notes): the old snapshot is kept until this queue has nothing in flight.
    pub fn set_target(&mut self, target: Arc<Target>) -> Option<&'static str> {
        let old = std::mem::replace(&mut self.target, target);
        // Commands admitted under the old snapshot are checked again when they execute.
        self.snapshot = self.snapshot.wrapping_add(1);
        if self.in_flight() > 0 {
            self.retired.push(old);
        } else {
            self.retired.clear();
        }
        let t = &self.target;
        let bound = |local: Option<SocketAddr>| {
            local.is_none_or(|here| t.listeners().iter().any(|l| arrived_through(l, here)))
        };
        match &self.state {
            State::Unconnected => (!bound(self.local)).then_some("listener removed"),
            State::Admin(a) if a.ctrl.subsys == SubsysRef::Discovery => {
                (!bound(self.local)).then_some("listener removed")
            }
            State::Admin(a) => ended(t, a.ctrl.subsys, &a.ctrl.hostnqn, self.local),
            State::Io { ctrl, .. } => ended(t, ctrl.subsys, &ctrl.hostnqn, self.local),
        }
    }

    /// The snapshots a completion may look its namespace up in: the current one first, then
    /// those replaced while commands were in flight, newest first.
    pub(super) fn completion_targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        std::iter::once(&self.target).chain(self.retired.iter().rev())
    }

    /// The local address the connection arrived on, if the transport said.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// An I/O completed: once nothing is in flight, replaced snapshots are let go.
    pub(super) fn release_retired(&mut self) {
        if self.in_flight() == 0 && !self.retired.is_empty() {
            self.retired.clear();
        }
    }
}

fn ended(
    t: &Target,
    subsys: SubsysRef,
    hostnqn: &str,
    local: Option<SocketAddr>,
) -> Option<&'static str> {
    let SubsysRef::Nvm(i) = subsys else {
        return None;
    };
    let Some(s) = t.live_subsystem(i) else {
        return Some("subsystem deleted");
    };
    if !s.host_allowed(hostnqn) {
        return Some("host removed from the subsystem's allow list");
    }
    if !listener_allows(s, local) {
        return Some("listener removed from the subsystem");
    }
    None
}
