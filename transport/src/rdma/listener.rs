//! RDMA listeners: rdma_cm ids listening on the configured addresses, their event channel polled
//! without blocking. A connect request is validated here (NVMe/RDMA private data and the host's
//! RDMA READ resources) and either rejected with the NVMe/RDMA reject status, so the host logs
//! why, or handed on to a reactor ([`Incoming`]), which makes the queue pair and accepts.

use super::admit::{admit_connect, Admitted, ConnLimits};
use super::verbs::{CmId, EventChannel, EventKind, Result};
use crate::proto::rdma::CmReject;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use tracing::{debug, info, warn};

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
    limits: ConnLimits,
}

impl Listeners {
    pub fn new(limits: ConnLimits) -> Result<Listeners> {
        Ok(Listeners {
            channel: EventChannel::new()?,
            ids: Vec::new(),
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
                warn!(listener = ?listen, event = %ev.name(),
                    "RDMA listener's device or address changed; it may no longer receive connections");
                Ok((true, None))
            }
            _ => {
                info!(listener = ?listen, event = %ev.name(), status = ev.status, "rdma_cm event on a listener");
                Ok((true, None))
            }
        }
    }
}
