//! RDMA listeners: rdma_cm ids listening on the configured addresses, their event channel polled
//! without blocking. A connect request is validated here (NVMe/RDMA private data and the host's
//! RDMA READ resources) and either rejected with the NVMe/RDMA reject status, so the host logs
//! why, or handed on to a reactor ([`Incoming`]), which makes the queue pair and accepts.

use super::admit::{admit_connect, Admitted, ConnLimits};
use super::verbs::{CmId, Devices, EventChannel, EventKind, Result};
use crate::proto::rdma::CmReject;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How often a listener that lost its device tries to listen again (and how often every
/// listening id's device is checked).
const RELISTEN_EVERY: Duration = Duration::from_secs(2);

/// A connect request that passed admission, for a reactor to accept.
pub struct Incoming {
    pub id: CmId,
    pub admitted: Admitted,
    /// RDMA READs the host wants outstanding against us (its ORD; NVMe/RDMA hosts ask 0).
    pub host_ord: u8,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

/// Every RDMA listen id of the daemon, on one event channel.
pub struct Listeners {
    channel: EventChannel,
    ids: Vec<(CmId, SocketAddr)>,
    /// Addresses whose listen id went with its device (DEVICE_REMOVAL) or address
    /// (ADDR_CHANGE), and when to try listening on each again.
    lost: Vec<(SocketAddr, Instant)>,
    /// When to check next that every listening id's device is still there.
    next_check: Instant,
    /// Listening ids (by address) already logged as bound to a context librdmacm no longer
    /// lists although their device is there (logged once each).
    reopened: Vec<SocketAddr>,
    limits: ConnLimits,
}

impl Listeners {
    pub fn new(limits: ConnLimits) -> Result<Listeners> {
        Ok(Listeners {
            channel: EventChannel::new()?,
            ids: Vec::new(),
            lost: Vec::new(),
            next_check: Instant::now(),
            reopened: Vec::new(),
            limits,
        })
    }

    /// Listen on `addr` (checked beforehand with [`super::check_listen_address`]).
    pub fn listen(&mut self, addr: SocketAddr) -> Result<()> {
        let id = CmId::new(&self.channel)?;
        id.bind(addr)?;
        id.listen(128)?;
        self.ids.push((id, addr));
        Ok(())
    }

    /// Every `RELISTEN_EVERY`, check that each listening id's device is still there
    /// (`check_devices`). Then try again, when due, to listen on every address that lost its
    /// device. librdmacm's
    /// device list is refreshed first (`rdma_get_devices`), so a removed device is marked
    /// dead there (and closed once nothing holds it, which the kernel waits for before it
    /// can finish removing it) and one added since is found.
    pub fn relisten(&mut self, now: Instant) {
        if now >= self.next_check {
            self.next_check = now + RELISTEN_EVERY;
            self.check_devices(now);
        }
        if !self.lost.iter().any(|(_, due)| *due <= now) {
            return;
        }
        drop(Devices::open());
        let mut i = 0;
        while i < self.lost.len() {
            let (addr, due) = self.lost[i];
            if due > now {
                i += 1;
                continue;
            }
            match self.listen(addr) {
                Ok(()) => {
                    info!(transport = "rdma", address = %addr, "listening again: an RDMA device has the address");
                    self.lost.swap_remove(i);
                }
                Err(e) => {
                    debug!(address = %addr, error = %e, "RDMA listener: still no device with the address");
                    self.lost[i].1 = now + RELISTEN_EVERY;
                    i += 1;
                }
            }
        }
    }

    /// A listening id whose device has left librdmacm's (refreshed) device list is destroyed
    /// and its address listened on again later, as on DEVICE_REMOVAL. Needed because that
    /// event may never come: Linux 7.2 removes the uverbs client of a device (which, for a
    /// driver without ucontext disassociation such as rxe, waits for this process to close
    /// the device) before the rdma_cm client that would tell the listener, so the listener's
    /// hold on the device would block its removal for good. With no device left at all,
    /// librdmacm returns no list (see `relisten`) and nothing is learnt here.
    ///
    /// The device is looked for by identity, not by the id's context pointer: after another
    /// device is added, librdmacm may list a device that is still there under a new context
    /// (see `CmId::own_context`), and the listener would otherwise be torn down, and connects
    /// refused until it listens again, for a device that never left.
    fn check_devices(&mut self, now: Instant) {
        if !self.ids.iter().any(|(id, _)| id.has_device()) {
            return;
        }
        let Ok(list) = Devices::open() else {
            return;
        };
        let mut i = 0;
        while i < self.ids.len() {
            let (id, addr) = &self.ids[i];
            if !id.has_device() || id.context(&list).is_ok() {
                i += 1;
                continue;
            }
            if id.device_listed(&list) {
                if !self.reopened.contains(addr) {
                    info!(transport = "rdma", address = %addr,
                        "librdmacm lists the RDMA listener's device under a new context (it opened the device again when refreshing its device list); still listening");
                    self.reopened.push(*addr);
                }
                i += 1;
                continue;
            }
            self.lose(i, "no longer among the RDMA devices", now);
        }
    }

    /// Listening id `i` lost its device: destroy it (else the device's removal waits for
    /// this process; rdma_cm_event(3): destroy the id on DEVICE_REMOVAL) and listen on its
    /// address again once a device has it.
    fn lose(&mut self, i: usize, why: &str, now: Instant) {
        let (id, addr) = self.ids.remove(i);
        drop(id);
        self.reopened.retain(|a| *a != addr);
        warn!(transport = "rdma", address = %addr, why,
            "RDMA listener lost its device: not listening on this address until a device has it again (retried every 2 s)");
        self.lost.push((addr, now + RELISTEN_EVERY));
    }

    /// The event channel's descriptor (readable when an event waits).
    pub fn fd(&self) -> RawFd {
        self.channel.fd()
    }

    /// Handle the next waiting event, if any (the first value says whether one was read): a
    /// connect request that passed admission comes back for a reactor; bad ones are rejected
    /// here.
    pub fn poll(&mut self) -> Result<(bool, Option<Incoming>)> {
        let Some(mut ev) = self.channel.poll()? else {
            return Ok((false, None));
        };
        let listen = self
            .ids
            .iter()
            .find(|(id, _)| id.handle() == ev.listen_id || id.handle() == ev.id)
            .map(|(_, a)| *a);
        match ev.kind {
            Some(EventKind::ConnectRequest) => {
                let Some(id) = ev.take_id() else {
                    return Ok((true, None));
                };
                let peer = id.peer_addr();
                let local = id.local_addr();
                // The CM reports the peer's IRD as our initiator depth (see `Event`).
                match admit_connect(ev.private_data(), ev.initiator_depth, &self.limits) {
                    Ok(admitted) => {
                        debug!(peer = ?peer, qid = admitted.qid, entries = admitted.sq_entries,
                            initiator_depth = admitted.initiator_depth, "RDMA connect request admitted");
                        Ok((
                            true,
                            Some(Incoming {
                                id,
                                admitted,
                                host_ord: ev.responder_resources,
                                peer,
                                local,
                            }),
                        ))
                    }
                    Err(status) => {
                        let private = ev.private_data();
                        warn!(peer = ?peer, listener = ?listen, reason = status.describe(),
                            private_data = ?&private[..private.len().min(32)],
                            "RDMA connect request rejected");
                        if let Err(e) = id.reject(&CmReject::new(status).encode()) {
                            warn!(peer = ?peer, error = %e, "rdma_reject failed");
                        }
                        Ok((true, None))
                    }
                }
            }
            Some(EventKind::DeviceRemoval) | Some(EventKind::AddrChange) => {
                // The id is bound to a device that is going (or no longer has the address).
                if let Some(i) = self.ids.iter().position(|(id, _)| id.handle() == ev.id) {
                    self.lose(i, &ev.name(), Instant::now());
                } else {
                    warn!(listener = ?listen, event = %ev.name(), "RDMA device or address event on a listener");
                }
                Ok((true, None))
            }
            _ => {
                info!(listener = ?listen, event = %ev.name(), status = ev.status, "rdma_cm event on a listener");
                Ok((true, None))
            }
        }
    }
}
