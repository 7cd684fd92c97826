//! The NVMe/RDMA side of the userspace host, so far its connection step: an RDMA_CM connect
//! request with NVMe/RDMA private data ([`nvmfd_transport::proto::rdma`], the target's own
//! layouts), answered by an accept (CRQSIZE) or a reject (the NVMe/RDMA reject status). It lets
//! tests send the requests a kernel host never sends (unknown QID, bad RECFMT, oversize queues,
//! short private data, no RDMA READ resources) and check each answer. Capsules over an accepted
//! queue pair are not implemented here yet.

use nvmfd_transport::proto::rdma::{CmAccept, CmReject, CmRequest, RejectStatus};
use nvmfd_transport::rdma::verbs::{
    CmId, ConnParam, Cq, Devices, Event, EventChannel, EventKind, Pd, QpCaps,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the target answered a connect request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAnswer {
    /// Accepted with this CRQSIZE.
    Accepted { crqsize: u16 },
    /// Rejected with NVMe/RDMA private data: the STS (None if not one NVMe/RDMA defines).
    Rejected {
        status: Option<RejectStatus>,
        raw: u16,
    },
    /// Rejected by the CM without NVMe/RDMA private data (CM status).
    RejectedByCm { cm_status: i32 },
}

/// What to put in a connect request.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The private data bytes (usually [`CmRequest::encode`], or something malformed).
    pub private: Vec<u8>,
    /// RDMA READs the target may have outstanding against us (our IRD).
    pub responder_resources: u8,
}

impl ConnectRequest {
    /// A well-formed request for queue `qid` with `entries` entries.
    pub fn queue(qid: u16, entries: u16) -> ConnectRequest {
        ConnectRequest {
            private: CmRequest {
                recfmt: 0,
                qid,
                hrqsize: entries,
                hsqsize: entries.saturating_sub(1),
                cntlid: 0,
            }
            .encode()
            .to_vec(),
            responder_resources: 16,
        }
    }
}

fn wait(ch: &EventChannel, deadline: Instant, what: &str) -> Result<Event, String> {
    loop {
        if let Some(ev) = ch.poll().map_err(|e| format!("{what}: {e}"))? {
            return Ok(ev);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: no rdma_cm event in time"));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn expect(ev: Event, want: EventKind, what: &str) -> Result<Event, String> {
    if ev.kind == Some(want) {
        return Ok(ev);
    }
    Err(format!(
        "{what}: got {} (status {}), expected {want:?}",
        ev.name(),
        ev.status
    ))
}

/// Send one connect request to `dst` and report the answer (an accepted connection is
/// disconnected again at once).
pub fn probe_connect(
    dst: SocketAddr,
    req: &ConnectRequest,
    timeout: Duration,
) -> Result<ConnectAnswer, String> {
    let e = |what: &'static str| {
        move |err: nvmfd_transport::rdma::verbs::Error| format!("{what}: {err}")
    };
    let deadline = Instant::now() + timeout;
    let ch = EventChannel::new().map_err(e("event channel"))?;
    let devices = Devices::open().map_err(e("devices"))?;
    let mut id = CmId::new(&ch).map_err(e("cm_id"))?;
    id.resolve_addr(None, dst, 2000)
        .map_err(e("resolve_addr"))?;
    expect(
        wait(&ch, deadline, "address")?,
        EventKind::AddrResolved,
        "address",
    )?;
    id.resolve_route(2000).map_err(e("resolve_route"))?;
    expect(
        wait(&ch, deadline, "route")?,
        EventKind::RouteResolved,
        "route",
    )?;
    let ctx = id.context(&devices).map_err(e("device"))?;
    let pd = Pd::new(&ctx).map_err(e("PD"))?;
    let cq = Arc::new(Cq::new(&ctx, 16).map_err(e("CQ"))?);
    let caps = QpCaps {
        max_send_wr: 4,
        max_recv_wr: 4,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    id.create_qp(&pd, &cq, &cq, None, caps).map_err(e("QP"))?;
    let param = ConnParam {
        responder_resources: req.responder_resources,
        initiator_depth: 0,
        ..ConnParam::default()
    };
    id.connect(&param, &req.private).map_err(e("connect"))?;
    let ev = wait(&ch, deadline, "connect")?;
    match ev.kind {
        Some(EventKind::Established) => {
            let acc = CmAccept::decode(ev.private_data())
                .ok_or_else(|| format!("accept private data {:02x?}", ev.private_data()))?;
            let _ = id.disconnect();
            // Wait (briefly) for the target's side of the disconnect.
            let _ = wait(&ch, Instant::now() + Duration::from_secs(5), "disconnect");
            Ok(ConnectAnswer::Accepted {
                crqsize: acc.crqsize,
            })
        }
        Some(EventKind::Rejected) => match CmReject::decode(ev.private_data()) {
            Some(r) => Ok(ConnectAnswer::Rejected {
                status: RejectStatus::from_raw(r.status),
                raw: r.status,
            }),
            None => Ok(ConnectAnswer::RejectedByCm {
                cm_status: ev.status,
            }),
        },
        _ => Err(format!("connect: got {} (status {})", ev.name(), ev.status)),
    }
}
