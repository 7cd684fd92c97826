//! The NVMe/RDMA side of the userspace host.
//!
//! - [`probe_connect`]: one RDMA_CM connect request with NVMe/RDMA private data
//!   ([`nvmfd_transport::proto::rdma`], the target's own layouts), answered by an accept
//!   (CRQSIZE) or a reject (the NVMe/RDMA reject status), for the requests a kernel host never
//!   sends (unknown QID, bad RECFMT, oversize queues, short private data, no RDMA READ
//!   resources).
//! - [`RdmaQueue`]: a connected queue pair carrying capsules: SEND of the SQE (and in-capsule
//!   bytes), keyed SGL descriptors naming the queue's registered buffers, the target's RDMA
//!   READ/WRITE of them, the response CQE by RECV. Any descriptor can be sent (tests get them
//!   wrong on purpose: a bad rkey, a length past MDTS or past the capsule, a foreign
//!   descriptor type).
//! - [`RdmaController`]: the admin queue (Fabrics Connect, Property Get/Set, enable, Identify)
//!   and I/O queues connected to it; with [`RdmaQueue`] it implements the perf engine's
//!   [`FabricController`]/[`FabricQueue`] (`nvmfd-perf --transport rdma`).

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

// ---------------------------------------------------------------------------------------------
// Capsules over an accepted queue pair.

use super::controller::{HostOptions, NamespaceInfo};
use super::error::{HostError, Result as HResult};
use super::fabric::blocks_of;
use super::fabric::{FabricController, FabricQueue, IoDone};
use super::io::{read_sqe, write_sqe};
use nvmfd_transport::proto::fabrics::{ConnectCommand, ConnectData, PropertyCommand};
use nvmfd_transport::proto::nvme::{cns, opcode, property, Cqe, SglDescriptor, Sqe};
use nvmfd_transport::rdma::verbs::{Access, HostMem, Mr, RecvWr, SendWr, Sge, Wc};
use std::os::fd::BorrowedFd;

/// Bytes after the SQE a capsule this host sends may carry (the Connect command's 1024 bytes of
/// data, or a test's in-capsule bytes). The target's receive buffers must hold at least this
/// much: its in-capsule data size (at least 1024, NVMe-oF 1.1 requires in-capsule Connect data
/// on the admin queue).
pub const CAPSULE_DATA: usize = 4096;
/// Bytes of host memory per command for data the target moves with RDMA READ/WRITE.
pub const DEFAULT_DATA_SIZE: usize = 256 * 1024;
/// A response capsule is one CQE (NVMe/RDMA 1.0, 2.2: IORCSZ 1, no in-capsule data).
const RESP_SLOT: usize = 64;
const KIND_SEND: u64 = 1;
const KIND_RECV: u64 = 2;

/// Where a command's data pointer points.
#[derive(Debug, Clone, Copy)]
pub enum DataPtr {
    /// No data (DPTR left as the SQE has it).
    None,
    /// The command's own registered buffer, `len` bytes, with the queue's rkey or `rkey`
    /// (a bad one, for tests). Keyed SGL Data Block, Address subtype (NVMe-oF 1.1, 7.3.2):
    /// the target RDMA READs (writes) or RDMA WRITEs (reads) it.
    Keyed { len: u32, rkey: Option<u32> },
    /// In-capsule data: an SGL Data Block descriptor, Offset subtype 0, saying `len` bytes
    /// (whatever the capsule really carries).
    InCapsule { len: u32 },
    /// This descriptor, as given.
    Raw(SglDescriptor),
}

#[derive(Debug, Clone, Copy, Default)]
struct CidState {
    busy: bool,
    /// The SEND is not completed yet: its capsule buffer is still the device's.
    sending: bool,
    /// The response arrived (or the command cannot get one).
    answered: bool,
    read_len: u32,
    cqe: Cqe,
    start: Option<Instant>,
    reported: bool,
}

/// One NVMe/RDMA queue pair of the userspace host: an RC connection over rdma_cm, one
/// registered region holding every command's capsule, response receive and data buffer (so a
/// command's SGL names its own slice of the region with the region's rkey), and a CQ polled in
/// batches. Per command: the capsule (SQE + in-capsule bytes) goes out with one SEND; the
/// target moves the data with RDMA READ/WRITE against the keyed descriptor and answers with a
/// SEND of the CQE, which lands in one of our posted receives (NVMe/RDMA 1.0, 2.2-2.3).
pub struct RdmaQueue {
    ch: EventChannel,
    id: CmId,
    cq: Arc<Cq>,
    mr: Mr,
    qid: u16,
    depth: u16,
    crqsize: u16,
    data_size: usize,
    send_off: usize,
    recv_off: usize,
    data_off: usize,
    send_sges: Vec<Sge>,
    send_wrs: Vec<SendWr>,
    _recv_sges: Vec<Sge>,
    recv_wrs: Vec<RecvWr>,
    cids: Vec<CidState>,
    free: Vec<u16>,
    queued: Vec<u32>,
    outstanding: usize,
    wcs: Vec<Wc>,
    dead: Option<String>,
    io_timeout: Duration,
    recv_scratch: [u8; Cqe::SIZE],
    scratch: Vec<u8>,
    _devices: Arc<Devices>,
}

/// What [`RdmaQueue::reap_with`] hands each completed command: CID, CQE, latency, and the
/// data the target wrote (a successful read's).
pub type OnDone<'a> = dyn FnMut(u16, &Cqe, Duration, &[u8]) + 'a;

/// How to open a queue pair.
#[derive(Debug, Clone)]
pub struct QueueParams {
    pub qid: u16,
    /// Entries (HSQSIZE + 1, and HRQSIZE): commands the host may have in flight.
    pub depth: u16,
    /// Bytes of data buffer per command.
    pub data_size: usize,
    pub io_timeout: Duration,
}

fn verr(what: &'static str) -> impl Fn(nvmfd_transport::rdma::verbs::Error) -> HostError {
    move |e| HostError::Protocol(format!("{what}: {e}"))
}

impl RdmaQueue {
    /// Resolve `dst`, make the QP and its memory, post the receives and connect with the
    /// NVMe/RDMA private data of `p` (no Fabrics Connect yet: see [`RdmaQueue::fabrics_connect`]).
    pub fn open(dst: SocketAddr, p: &QueueParams) -> HResult<RdmaQueue> {
        if p.depth < 2 {
            return Err(HostError::InvalidArgument(
                "an NVMe/RDMA queue has at least 2 entries".into(),
            ));
        }
        let deadline = Instant::now() + p.io_timeout;
        let ch = EventChannel::new().map_err(verr("event channel"))?;
        let devices = Devices::open().map_err(verr("devices"))?;
        let mut id = CmId::new(&ch).map_err(verr("cm_id"))?;
        id.resolve_addr(None, dst, 2000)
            .map_err(verr("resolve_addr"))?;
        expect(
            wait(&ch, deadline, "address").map_err(HostError::Protocol)?,
            EventKind::AddrResolved,
            "address",
        )
        .map_err(HostError::Protocol)?;
        id.resolve_route(2000).map_err(verr("resolve_route"))?;
        expect(
            wait(&ch, deadline, "route").map_err(HostError::Protocol)?,
            EventKind::RouteResolved,
            "route",
        )
        .map_err(HostError::Protocol)?;
        let ctx = id.context(&devices).map_err(verr("device"))?;
        let pd = Pd::new(&ctx).map_err(verr("PD"))?;
        let n = usize::from(p.depth);
        let cq = Arc::new(Cq::new(&ctx, (2 * n + 8) as u32).map_err(verr("CQ"))?);
        let send_slot = Sqe::SIZE + CAPSULE_DATA;
        let send_off = 0;
        let recv_off = n * send_slot;
        let data_off = (recv_off + n * RESP_SLOT).next_multiple_of(4096);
        let total = data_off + n * p.data_size;
        let mem = HostMem::new(total).map_err(verr("mmap"))?;
        // The target writes (reads) our data buffers: remote read and write access; nothing
        // asks it to invalidate the rkey (Address subtype), so one MR serves every command.
        let mr = Mr::register(&pd, mem, Access::ALL).map_err(verr("ibv_reg_mr"))?;
        let mut send_sges: Vec<Sge> = (0..n)
            .map(|i| mr.sge(send_off + i * send_slot, send_slot as u32))
            .collect::<std::result::Result<_, _>>()
            .map_err(verr("SGE"))?;
        let send_wrs: Vec<SendWr> = send_sges
            .chunks_mut(1)
            .enumerate()
            .map(|(i, s)| SendWr::send(KIND_SEND << 32 | i as u64, s, true))
            .collect();
        let mut recv_sges: Vec<Sge> = (0..n)
            .map(|i| mr.sge(recv_off + i * RESP_SLOT, RESP_SLOT as u32))
            .collect::<std::result::Result<_, _>>()
            .map_err(verr("SGE"))?;
        let mut recv_wrs: Vec<RecvWr> = recv_sges
            .chunks_mut(1)
            .enumerate()
            .map(|(i, s)| RecvWr::new(KIND_RECV << 32 | i as u64, s))
            .collect();
        let caps = QpCaps {
            max_send_wr: n as u32 + 2,
            max_recv_wr: n as u32,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        id.create_qp(&pd, &cq, &cq, None, caps)
            .map_err(verr("QP"))?;
        let qp = id.qp().expect("QP just made");
        // SAFETY: every receive SGE names its own slice of `mr`, which this queue owns (with the
        // WRs and SGEs, which do not move: their Vecs are never resized) until the QP is
        // destroyed in drop; the CPU reads a slice only after its completion.
        unsafe { qp.post_recv(&mut recv_wrs) }
            .map_err(|e| HostError::Protocol(format!("posting receives: {e}")))?;
        let private = CmRequest {
            recfmt: 0,
            qid: p.qid,
            hrqsize: p.depth,
            hsqsize: p.depth - 1,
            cntlid: 0,
        }
        .encode();
        let param = ConnParam {
            responder_resources: 16,
            initiator_depth: 0,
            ..ConnParam::default()
        };
        id.connect(&param, &private).map_err(verr("connect"))?;
        let ev = wait(&ch, deadline, "connect").map_err(HostError::Protocol)?;
        let crqsize = match ev.kind {
            Some(EventKind::Established) => {
                CmAccept::decode(ev.private_data())
                    .ok_or_else(|| {
                        HostError::Protocol(format!(
                            "accept private data {:02x?}",
                            ev.private_data()
                        ))
                    })?
                    .crqsize
            }
            Some(EventKind::Rejected) => {
                let why = match CmReject::decode(ev.private_data()) {
                    Some(r) => match RejectStatus::from_raw(r.status) {
                        Some(s) => format!("{} ({:#x})", s.describe(), r.status),
                        None => format!("status {:#x}", r.status),
                    },
                    None => format!("CM status {}", ev.status),
                };
                return Err(HostError::Negotiation(format!(
                    "queue {} connect rejected: {why}",
                    p.qid
                )));
            }
            _ => {
                return Err(HostError::Protocol(format!(
                    "connect: got {} (status {})",
                    ev.name(),
                    ev.status
                )))
            }
        };
        // NVMe-oF 1.1 flow control: never more commands outstanding than CRQSIZE.
        let depth = p.depth.min(crqsize.max(1));
        Ok(RdmaQueue {
            ch,
            id,
            cq,
            mr,
            qid: p.qid,
            depth,
            crqsize,
            data_size: p.data_size,
            send_off,
            recv_off,
            data_off,
            send_sges,
            send_wrs,
            _recv_sges: recv_sges,
            recv_wrs,
            cids: vec![CidState::default(); n],
            free: (0..depth).rev().collect(),
            queued: Vec::with_capacity(n),
            outstanding: 0,
            wcs: vec![Wc::default(); 32],
            dead: None,
            io_timeout: p.io_timeout,
            recv_scratch: [0; Cqe::SIZE],
            scratch: vec![0; p.data_size],
            _devices: devices,
        })
    }

    /// CRQSIZE from the target's accept.
    pub fn crqsize(&self) -> u16 {
        self.crqsize
    }

    /// The rkey the queue's SGLs carry.
    pub fn rkey(&self) -> u32 {
        self.mr.rkey()
    }

    fn mem(&self) -> &HostMem {
        self.mr.mem().expect("host memory MR")
    }

    /// Fabrics Connect on this queue (in-capsule Connect data); returns the response.
    pub fn fabrics_connect(
        &mut self,
        opts: &HostOptions,
        cntlid: u16,
        kato_ms: u32,
    ) -> HResult<Cqe> {
        let cmd = ConnectCommand {
            recfmt: 0,
            qid: self.qid,
            sqsize: self.depth - 1,
            cattr: 0,
            kato_ms,
        };
        let data = ConnectData {
            hostid: opts.hostid,
            cntlid,
            subnqn: opts.subnqn.clone(),
            hostnqn: opts.hostnqn.clone(),
        }
        .encode();
        let sqe = cmd.to_sqe(0, ConnectData::SIZE as u32);
        let (cqe, _) = self.execute(sqe, DataPtr::Raw(sqe.dptr), None, &data)?;
        Ok(cqe)
    }

    /// Queue a command: `cid` is chosen here; `out` is copied into the command's data buffer
    /// (for keyed writes), `icd` placed after the SQE in the capsule. Sent by
    /// [`RdmaQueue::send_queued`].
    pub fn submit(
        &mut self,
        mut sqe: Sqe,
        dptr: DataPtr,
        out: Option<&[u8]>,
        icd: &[u8],
    ) -> HResult<u16> {
        if let Some(why) = &self.dead {
            return Err(HostError::ConnectionDead(why.clone()));
        }
        if icd.len() > CAPSULE_DATA {
            return Err(HostError::InvalidArgument(format!(
                "{} bytes of in-capsule data (at most {CAPSULE_DATA})",
                icd.len()
            )));
        }
        if out.is_some_and(|d| d.len() > self.data_size) {
            return Err(HostError::InvalidArgument(format!(
                "{} bytes of data (buffers are {})",
                out.map_or(0, |d| d.len()),
                self.data_size
            )));
        }
        let Some(cid) = self.take_cid()? else {
            return Err(HostError::QueueFull(usize::from(self.depth)));
        };
        let i = usize::from(cid);
        sqe.cid = cid;
        sqe.flags = (sqe.flags & 0x3f) | 0x40; // PSDT 01b: SGLs (NVMe-oF 1.1: fabrics use SGLs)
        let data_addr = self.mr.addr() + (self.data_off + i * self.data_size) as u64;
        let mut read_len = 0;
        match dptr {
            DataPtr::None => {}
            DataPtr::Keyed { len, rkey } => {
                if len as usize > self.data_size {
                    self.free.push(cid);
                    return Err(HostError::InvalidArgument(format!(
                        "{len} bytes of data (buffers are {})",
                        self.data_size
                    )));
                }
                sqe.dptr = SglDescriptor {
                    address: data_addr,
                    length: len,
                    key: rkey.unwrap_or(self.mr.rkey()),
                    identifier: SglDescriptor::KEYED_DATA_BLOCK << 4
                        | SglDescriptor::SUBTYPE_ADDRESS,
                };
                read_len = len;
            }
            DataPtr::InCapsule { len } => sqe.dptr = SglDescriptor::in_capsule(0, len),
            DataPtr::Raw(d) => sqe.dptr = d,
        }
        if let Some(d) = out {
            if let Err(e) = self.mem().write_at(self.data_off + i * self.data_size, d) {
                self.free.push(cid);
                return Err(verr("copy")(e));
            }
        }
        let slot = self.send_off + i * (Sqe::SIZE + CAPSULE_DATA);
        let mem = self.mr.mem().expect("host memory MR");
        mem.write_at(slot, &sqe.encode()).map_err(verr("copy"))?;
        if !icd.is_empty() {
            mem.write_at(slot + Sqe::SIZE, icd).map_err(verr("copy"))?;
        }
        self.send_sges[i] = self
            .mr
            .sge(slot, (Sqe::SIZE + icd.len()) as u32)
            .map_err(verr("SGE"))?;
        self.cids[i] = CidState {
            busy: true,
            sending: true,
            answered: false,
            read_len,
            cqe: Cqe::default(),
            start: Some(Instant::now()),
            reported: false,
        };
        self.queued.push(u32::from(cid));
        self.outstanding += 1;
        Ok(cid)
    }

    /// A free CID. One whose response came but whose SEND completion has not been polled yet
    /// is not free (its capsule buffer is still the device's): poll for it then, briefly (the
    /// target answered, so the SEND was acknowledged).
    fn take_cid(&mut self) -> HResult<Option<u16>> {
        if let Some(c) = self.free.pop() {
            return Ok(Some(c));
        }
        if self.outstanding >= usize::from(self.depth) {
            return Ok(None);
        }
        let deadline = Instant::now() + self.io_timeout;
        loop {
            self.poll_once()?;
            self.reclaim();
            if let Some(c) = self.free.pop() {
                return Ok(Some(c));
            }
            if let Some(why) = &self.dead {
                return Err(HostError::ConnectionDead(why.clone()));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
        }
    }

    /// Free the CIDs that are answered, reported and sent.
    fn reclaim(&mut self) {
        for i in 0..self.cids.len() {
            let c = self.cids[i];
            if c.busy && c.reported && !c.sending {
                self.cids[i] = CidState::default();
                self.free.push(i as u16);
            }
        }
    }

    /// Post every queued capsule in one call.
    pub fn send_queued(&mut self) -> HResult<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        if let Some(why) = &self.dead {
            return Err(HostError::ConnectionDead(why.clone()));
        }
        let qp = self.id.qp().expect("connected QP");
        // SAFETY: each queued WR's SGE names its capsule slice of `mr` (owned by self, alive
        // until the QP is destroyed); the slice is not written again until its SEND completes
        // (`sending`), and the WR/SGE Vecs never move.
        let r = unsafe { qp.post_send_slots(&mut self.send_wrs, &self.queued) };
        self.queued.clear();
        r.map_err(|e| {
            let why = format!("ibv_post_send: {e}");
            self.dead = Some(why.clone());
            HostError::ConnectionDead(why)
        })
    }

    /// Poll the CQ once; returns how many completions were handled.
    fn poll_once(&mut self) -> HResult<usize> {
        let n = self.cq.poll(&mut self.wcs).map_err(verr("ibv_poll_cq"))?;
        for k in 0..n {
            let wc = self.wcs[k];
            let kind = wc.wr_id() >> 32;
            let slot = (wc.wr_id() & 0xffff_ffff) as usize;
            if !wc.is_ok() {
                // A failed work request puts an RC QP in the error state (IBA 10.8.3.3): every
                // other one is flushed and nothing more arrives. Commands in flight get no
                // response.
                if self.dead.is_none() {
                    self.dead = Some(format!(
                        "{} completion in error: {}",
                        if kind == KIND_SEND { "send" } else { "receive" },
                        wc.status_str()
                    ));
                }
                if kind == KIND_SEND {
                    if let Some(c) = self.cids.get_mut(slot) {
                        c.sending = false;
                    }
                }
                continue;
            }
            match kind {
                KIND_SEND => {
                    if let Some(c) = self.cids.get_mut(slot) {
                        c.sending = false;
                    }
                }
                KIND_RECV => {
                    let off = self.recv_off + slot * RESP_SLOT;
                    let mut raw = self.recv_scratch;
                    let ok = wc.byte_len() as usize >= Cqe::SIZE
                        && self.mem().read_at(off, &mut raw).is_ok();
                    // Re-post the receive at once (the CQE is copied out).
                    let qp = self.id.qp().expect("connected QP");
                    // SAFETY: as in open: the WR names its own slice of `mr`, read above.
                    let _ = unsafe { qp.post_recv_slots(&mut self.recv_wrs, &[slot as u32]) };
                    if !ok {
                        self.dead = Some(format!("response of {} bytes", wc.byte_len()));
                        continue;
                    }
                    let cqe = Cqe::decode(&raw);
                    match self.cids.get_mut(usize::from(cqe.cid)) {
                        Some(c) if c.busy && !c.answered => {
                            c.answered = true;
                            c.cqe = cqe;
                        }
                        _ => {
                            self.dead = Some(format!(
                                "response for command {} that is not in flight",
                                cqe.cid
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(n)
    }

    /// Whether the target ended the connection (an rdma_cm DISCONNECTED or similar event).
    fn check_events(&mut self) {
        while let Ok(Some(ev)) = self.ch.poll() {
            if matches!(
                ev.kind,
                Some(
                    EventKind::Disconnected
                        | EventKind::DeviceRemoval
                        | EventKind::TimewaitExit
                        | EventKind::ConnectError
                )
            ) && self.dead.is_none()
            {
                self.dead = Some(format!("target ended the connection ({})", ev.name()));
            }
        }
    }

    /// Hand every answered command to `f` (its data slice valid during the call) and free its
    /// CID once its SEND has completed too.
    fn deliver(&mut self, f: &mut OnDone<'_>) -> usize {
        let mut done = 0;
        for i in 0..self.cids.len() {
            let c = self.cids[i];
            if !c.busy || !c.answered {
                continue;
            }
            if !c.reported {
                self.cids[i].reported = true;
                self.outstanding -= 1;
                done += 1;
                let lat = c.start.map_or(Duration::ZERO, |t| t.elapsed());
                let base = self.data_off + i * self.data_size;
                // Read data is copied out (HostMem gives no references into memory a device
                // may be writing); only a successful read's.
                let len = if c.cqe.status.is_success() {
                    c.read_len as usize
                } else {
                    0
                };
                let mem = self.mr.mem().expect("host memory MR");
                let view = match mem.read_at(base, &mut self.scratch[..len]) {
                    Ok(()) => &self.scratch[..len],
                    Err(_) => &self.scratch[..0],
                };
                f(i as u16, &c.cqe, lat, view);
            }
            if !c.sending {
                self.cids[i] = CidState::default();
                self.free.push(i as u16);
            }
        }
        done
    }

    /// Completions: waits until at least one command completes when `wait` (and any is in
    /// flight), up to the I/O timeout.
    pub fn reap_with(&mut self, wait: bool, f: &mut OnDone<'_>) -> HResult<usize> {
        self.send_queued()?;
        let deadline = Instant::now() + self.io_timeout;
        let mut idle = 0u32;
        loop {
            let n = self.poll_once()?;
            let done = self.deliver(f);
            if done > 0 || !wait || self.outstanding == 0 {
                return Ok(done);
            }
            if self.dead.is_none() && n == 0 {
                idle += 1;
                if idle.is_multiple_of(256) {
                    self.check_events();
                }
            }
            if let Some(why) = &self.dead {
                // Nothing in flight will be answered any more.
                return Err(HostError::ConnectionDead(why.clone()));
            }
            if Instant::now() > deadline {
                return Err(HostError::Timeout {
                    waiting_for: format!("a response on RDMA queue {}", self.qid),
                    after: self.io_timeout,
                });
            }
            if n == 0 && idle > 64 {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    /// Send one command and wait for its response: `(cqe, data)` with the data the target
    /// wrote for a successful read (`DataPtr::Keyed`).
    pub fn execute(
        &mut self,
        sqe: Sqe,
        dptr: DataPtr,
        out: Option<&[u8]>,
        icd: &[u8],
    ) -> HResult<(Cqe, Vec<u8>)> {
        let cid = self.submit(sqe, dptr, out, icd)?;
        self.send_queued()?;
        let mut got: Option<(Cqe, Vec<u8>)> = None;
        let deadline = Instant::now() + self.io_timeout;
        while got.is_none() {
            let mut f = |c: u16, cqe: &Cqe, _: Duration, data: &[u8]| {
                if c == cid {
                    got = Some((*cqe, data.to_vec()));
                }
            };
            self.reap_with(true, &mut f)?;
            if got.is_none() && Instant::now() > deadline {
                return Err(HostError::Timeout {
                    waiting_for: format!("command {cid} on RDMA queue {}", self.qid),
                    after: self.io_timeout,
                });
            }
        }
        Ok(got.expect("set above"))
    }

    /// Disconnect (the target sees DISCONNECTED and tears its side down).
    pub fn close(self) {
        let _ = self.id.disconnect();
        let _ = wait(
            &self.ch,
            Instant::now() + Duration::from_secs(2),
            "disconnect",
        );
    }
}

/// CC.SHN = normal shutdown.
const CC_SHN_NORMAL: u32 = 1 << 14;

fn check(command: &'static str, cqe: &Cqe) -> HResult<()> {
    if cqe.status.is_success() {
        Ok(())
    } else {
        Err(HostError::CommandFailed {
            command,
            status: cqe.status,
            dw0: cqe.dw0,
        })
    }
}

/// An enabled controller reached over NVMe/RDMA: its admin queue, and I/O queues connected to
/// it on their own queue pairs.
pub struct RdmaController {
    admin: RdmaQueue,
    addr: SocketAddr,
    opts: HostOptions,
    cntlid: u16,
    cap: u64,
    cc: u32,
    /// Largest transfer per command (MDTS), capped at 1 MiB: each I/O queue's buffer per command.
    max_transfer: usize,
    /// In-capsule data bytes of an I/O command (IOCCSZ·16 − 64).
    in_capsule: usize,
}

impl RdmaController {
    /// Connect the admin queue of `opts.subnqn` at `addr` (rdma_cm connect, Fabrics Connect
    /// with cntlid 0xFFFF), read CAP, enable (CC.EN=1, wait CSTS.RDY) and read Identify
    /// Controller's MDTS.
    pub fn connect(addr: SocketAddr, opts: &HostOptions) -> HResult<RdmaController> {
        let mut admin = RdmaQueue::open(
            addr,
            &QueueParams {
                qid: 0,
                depth: opts.queue_depth.max(2),
                data_size: 8192,
                io_timeout: opts.io_timeout,
            },
        )?;
        let cqe = admin.fabrics_connect(opts, 0xffff, opts.kato_ms)?;
        check("Connect (admin queue)", &cqe)?;
        let mut c = RdmaController {
            admin,
            addr,
            opts: opts.clone(),
            cntlid: cqe.dw0 as u16,
            cap: 0,
            cc: 0,
            max_transfer: DEFAULT_DATA_SIZE,
            in_capsule: 0,
        };
        c.cap = c.property_get(property::CAP, 8)?;
        let mpsmin = ((c.cap >> 48) & 0xf) as u32;
        c.cc = 1 | (mpsmin << 7) | (6 << 16) | (4 << 20);
        c.property_set(property::CC, 4, u64::from(c.cc))?;
        c.wait_csts("enabling the controller", "CSTS.RDY=1 after CC.EN=1", |s| {
            s & 1 == 1
        })?;
        let id = c.identify(cns::CONTROLLER, 0)?;
        let mdts = id[77];
        let ioccsz = u32::from_le_bytes(id[1792..1796].try_into().expect("4 bytes")) as usize;
        c.in_capsule = (ioccsz * 16).saturating_sub(Sqe::SIZE);
        let page = 4096usize << mpsmin;
        c.max_transfer = if mdts == 0 || mdts > 8 {
            1 << 20
        } else {
            (page << mdts).min(1 << 20)
        };
        Ok(c)
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes one command may move (MDTS, at most 1 MiB here).
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// In-capsule data bytes an I/O command may carry (Identify Controller IOCCSZ).
    pub fn in_capsule_size(&self) -> usize {
        self.in_capsule
    }

    /// The admin queue, for raw commands.
    pub fn admin(&mut self) -> &mut RdmaQueue {
        &mut self.admin
    }

    pub fn property_get(&mut self, offset: u32, size: u8) -> HResult<u64> {
        let sqe = PropertyCommand {
            size,
            offset,
            value: 0,
        }
        .to_sqe(0, false);
        let (cqe, _) = self.admin.execute(sqe, DataPtr::None, None, &[])?;
        check("Property Get", &cqe)?;
        Ok(if size == 8 {
            u64::from(cqe.dw0) | (u64::from(cqe.dw1) << 32)
        } else {
            u64::from(cqe.dw0)
        })
    }

    pub fn property_set(&mut self, offset: u32, size: u8, value: u64) -> HResult<()> {
        let sqe = PropertyCommand {
            size,
            offset,
            value,
        }
        .to_sqe(0, true);
        let (cqe, _) = self.admin.execute(sqe, DataPtr::None, None, &[])?;
        check("Property Set", &cqe)
    }

    fn wait_csts(
        &mut self,
        doing: &'static str,
        waiting_for: &str,
        done: impl Fn(u32) -> bool,
    ) -> HResult<()> {
        let start = Instant::now();
        loop {
            let csts = self.property_get(property::CSTS, 4)? as u32;
            if csts & 2 != 0 {
                return Err(HostError::ControllerFatal { csts, doing });
            }
            if done(csts) {
                return Ok(());
            }
            if start.elapsed() > self.opts.ready_timeout {
                return Err(HostError::Timeout {
                    waiting_for: format!("{waiting_for} (CSTS {csts:#x})"),
                    after: self.opts.ready_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Identify with CNS `cns`; the 4096 bytes the target RDMA WROTE into our buffer.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> HResult<[u8; 4096]> {
        let sqe = Sqe {
            opcode: opcode::ADMIN_IDENTIFY,
            nsid,
            cdw10: u32::from(cns),
            ..Default::default()
        };
        let (cqe, data) = self.admin.execute(
            sqe,
            DataPtr::Keyed {
                len: 4096,
                rkey: None,
            },
            None,
            &[],
        )?;
        check("Identify", &cqe)?;
        data.try_into().map_err(|d: Vec<u8>| {
            HostError::Protocol(format!("Identify returned {} of 4096 bytes", d.len()))
        })
    }

    /// Connect I/O queue `qid` with `depth` entries on a new queue pair (Fabrics Connect with
    /// this controller's ID).
    pub fn connect_io_queue(&mut self, qid: u16, depth: u16) -> HResult<RdmaQueue> {
        let mut q = RdmaQueue::open(
            self.addr,
            &QueueParams {
                qid,
                depth,
                data_size: self.max_transfer,
                io_timeout: self.opts.io_timeout,
            },
        )?;
        let cqe = q.fabrics_connect(&self.opts, self.cntlid, 0)?;
        check("Connect (I/O queue)", &cqe)?;
        Ok(q)
    }
}

impl FabricController for RdmaController {
    fn namespace(&mut self, nsid: u32) -> HResult<NamespaceInfo> {
        Ok(NamespaceInfo::parse(&self.identify(cns::NAMESPACE, nsid)?))
    }

    fn max_queue_entries(&self) -> u32 {
        (self.cap & 0xffff) as u32 + 1
    }

    fn connect_io(&mut self, qid: u16, depth: u16) -> HResult<Box<dyn FabricQueue>> {
        Ok(Box::new(self.connect_io_queue(qid, depth)?))
    }

    fn keep_alive(&mut self) -> HResult<()> {
        let sqe = Sqe {
            opcode: opcode::ADMIN_KEEP_ALIVE,
            ..Default::default()
        };
        let (cqe, _) = self.admin.execute(sqe, DataPtr::None, None, &[])?;
        check("Keep Alive", &cqe)
    }

    fn disconnect(mut self: Box<Self>) -> HResult<()> {
        let cc = u64::from(self.cc | CC_SHN_NORMAL);
        let r = self.property_set(property::CC, 4, cc).and_then(|_| {
            self.wait_csts("shutting down", "CSTS.SHST=10b after CC.SHN=01b", |s| {
                (s >> 2) & 3 == 2
            })
        });
        let RdmaController { admin, .. } = *self;
        admin.close();
        r
    }
}

impl FabricQueue for RdmaQueue {
    fn qid(&self) -> u16 {
        self.qid
    }

    fn depth(&self) -> u16 {
        self.depth
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn queue_read(&mut self, nsid: u32, lba: u64, blocks: u32, block_size: usize) -> HResult<u16> {
        let len = blocks as usize * block_size;
        blocks_of(len, block_size)?;
        self.submit(
            read_sqe(nsid, lba, blocks),
            DataPtr::Keyed {
                len: len as u32,
                rkey: None,
            },
            None,
            &[],
        )
    }

    fn queue_write(&mut self, nsid: u32, lba: u64, data: &[u8], block_size: usize) -> HResult<u16> {
        let blocks = blocks_of(data.len(), block_size)?;
        self.submit(
            write_sqe(nsid, lba, blocks),
            DataPtr::Keyed {
                len: data.len() as u32,
                rkey: None,
            },
            Some(data),
            &[],
        )
    }

    fn send_queued(&mut self) -> HResult<()> {
        RdmaQueue::send_queued(self)
    }

    fn reap(&mut self, wait: bool, f: &mut dyn FnMut(IoDone<'_>)) -> HResult<usize> {
        self.reap_with(wait, &mut |cid, cqe, latency, data| {
            f(IoDone {
                cid,
                status: cqe.status,
                latency,
                data,
                error: None,
            })
        })
    }

    /// None: the CQ has no completion channel (polled only), so a perf run over several RDMA
    /// queues polls them in turn.
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn close(self: Box<Self>) {
        RdmaQueue::close(*self)
    }
}
