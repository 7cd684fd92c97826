//! One reactor's NVMe/RDMA poll group: its own rdma_cm event channel (polled without blocking),
//! and per RDMA device a protection domain, one completion queue polled in batches, one shared
//! receive queue with its receive buffers posted once and re-posted as they are consumed, and a
//! registered data buffer pool (regions registered once, never per I/O). Queue pairs are made on
//! that SRQ and CQ when a reactor takes a connection ([`RdmaGroup::add`]).
//!
//! A command's life, per slot of its queue pair (NVMe/RDMA 1.0, 3.4), in the terms of
//! [`crate::group`]: RECV (SQE and in-capsule bytes copied out, the receive buffer re-posted at
//! once) → descriptors parsed ([`super::admit::plan`]) → `Event::Command` → the core admits →
//! `fetch`: a registered buffer, then for host writes RDMA READs (at most the initiator depth
//! outstanding) → `Event::DataReady` → the core executes → `respond`: for reads RDMA WRITEs
//! (unsignaled) chained before the response SEND (SEND with Invalidate when the descriptor
//! asked) → the SEND's completion frees the slot.
//!
//! Failures: a completion in error (other than a flush) or a disconnect/time-wait/device event
//! closes the queue pair: it is disconnected (the QP moves to error and every posted WR comes
//! back flushed), commands not yet posted are dropped, the reactor hears `Event::Closed` at once,
//! and once nothing it posted is outstanding the QP is destroyed, its buffers return to the pool
//! and its id is free again. Other queue pairs are not touched.

use super::admit::{self, Admitted, DataPlan, SglLimits, MAX_KEYED};
use super::cmb::CmbPool;
use super::listener::Incoming;
use super::p2p::{Fallback, Got, P2pTable};
use super::sched::{cut, Kind, Piece, Reads, WrId};
use super::verbs::{
    Access, CmId, ConnParam, Context, Cq, EventChannel, EventKind, HostMem, IdHandle, Mr, Pd,
    QpCaps, RecvWr, SendWr, Sge, Srq, Wc,
};
use crate::group::{ConnId, DataDesc, DataNeed, Event, PollGroup, TransportInfo};
use crate::proto::nvme::{Cqe, Direction, Sqe};
use crate::proto::rdma::{CmAccept, CmReject, RejectStatus, RECFMT_1_0};
use crate::staging::P2pCounters;
use crate::{Capsule, Response};
use nvmfd_p2p::mem::{BufPool, Domain, IoBuf, Keys, PdId, PoolCache, Region, Registrar};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Completions taken from a CQ per poll call.
const CQ_BATCH: usize = 32;
/// IBV_WC_WR_FLUSH_ERR: the WR was flushed because the QP went to the error state.
const WC_FLUSH: u32 = 5;
/// WRs per slot: the response SEND and one RDMA READ or WRITE per descriptor.
const WRS_PER_SLOT: usize = 1 + MAX_KEYED;

/// Command slots of a queue pair of `entries` entries: twice as many. A slot holds its response
/// until the SEND's completion is polled, but the host may reuse the command's place as soon as
/// the response has arrived, and its next command can arrive before that completion is polled
/// (the acknowledgement is the host's RDMA stack's, not ordered with its next SEND on our CQ;
/// soft-RoCE coalesces them). So a queue the host keeps full needs up to `entries` slots still
/// sending beside `entries` in use; queue-size violations are counted on the latter
/// (`Conn::active`). Linux nvmet-rdma allocates twice its receive queue size in responses for
/// the same reason (nvmet_rdma_alloc_rsps).
fn slots_for(entries: u16) -> usize {
    2 * usize::from(entries)
}
/// How long a closing queue pair waits for its flushed completions before it is destroyed
/// anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Data buffers up to this size are small ones (most 4 KiB I/O and admin commands).
const SMALL_BUF: usize = 8192;
/// The rdma_cm event channel (a system call per look) is read every this many polls; the CQs
/// (shared memory) every poll.
const EVENTS_EVERY: u32 = 64;
/// A device with no queue pair (and none of its buffers out) for this long is released: its
/// CQ, SRQ, memory regions and PD destroyed, and the cm_id that held its context open
/// destroyed with them (see `RdmaGroup::device_for`). A device being removed (`rdma link delete`, a PCI hot-unplug, a driver unbind)
/// cannot finish while a process holds objects on it (a driver without ucontext
/// disassociation, such as rxe, waits for them; mlx5 tears them away), and the last queue pair
/// on it often ends with a plain DISCONNECTED before any DEVICE_REMOVAL reaches this reactor,
/// so an idle device is never kept. The next connection makes them again (a control-path cost
/// of a few milliseconds).
const DEVICE_IDLE_RELEASE: Duration = Duration::from_secs(2);
/// RDMA READs we let one queue pair have outstanding at most, whatever the host offers.
pub const MAX_INITIATOR_DEPTH: u8 = 16;

static NEXT_PD_ID: AtomicU32 = AtomicU32::new(1 << 16);

/// A fresh protection domain number (keys are looked up by it).
pub(crate) fn next_pd_id() -> PdId {
    PdId(NEXT_PD_ID.fetch_add(1, Ordering::Relaxed))
}

/// Settings of the group (from `transports.rdma`).
#[derive(Debug, Clone, Copy)]
pub struct RdmaParams {
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    pub srq_depth: u32,
    pub buffer_pool_size: u64,
}

/// What a reactor needs to build its NVMe/RDMA group.
#[derive(Debug, Clone)]
pub struct RdmaGroupConfig {
    pub params: RdmaParams,
    pub info: TransportInfo,
    /// CMBs registered at start-up with RDMA devices (peer-to-peer; empty when none is, the
    /// usual case: every buffer is then host memory).
    pub cmb: Arc<[CmbPool]>,
    /// Per block device (by index, the key `DataNeed::bdev` gives): the domains the start-up
    /// decision placed its RDMA data in. Devices past the end, and admin commands, use host
    /// memory.
    pub staged: Arc<[RdmaStaging]>,
}

/// Where one block device's data goes over RDMA (from its namespace's placement decision).
#[derive(Debug, Clone, Default)]
pub struct RdmaStaging {
    /// Host-to-controller data (writes): pulled by RDMA READ into this domain.
    pub writes: Option<Domain>,
    /// Controller-to-host data (reads): written there by the SSD, sent by RDMA WRITE.
    pub reads: Option<Domain>,
    /// For the fallback log line: which namespace this is (`nqn nsid N`).
    pub label: Arc<str>,
    /// Fallback reasons already logged for this namespace by some reactor (bits, see
    /// `super::p2p::Fallback`): each is logged once for the whole daemon, not per I/O.
    pub warned: Arc<AtomicU8>,
}

impl RdmaStaging {
    pub fn new(writes: Option<Domain>, reads: Option<Domain>, label: &str) -> RdmaStaging {
        RdmaStaging {
            writes,
            reads,
            label: label.into(),
            warned: Arc::default(),
        }
    }
}

/// The placement and the label; not the flags of what was logged.
impl PartialEq for RdmaStaging {
    fn eq(&self, o: &RdmaStaging) -> bool {
        (self.writes, self.reads, &*self.label) == (o.writes, o.reads, &*o.label)
    }
}

/// One RDMA device's data buffer pools: host memory, and the CMBs registered with its PD. A
/// buffer goes back to the pool of its own domain.
pub(crate) struct Pools {
    host: BufPool,
    cmb: Vec<PoolCache>,
}

impl Pools {
    pub(crate) fn new(host: BufPool, cmb: Vec<PoolCache>) -> Pools {
        Pools { host, cmb }
    }

    /// A buffer of `len` bytes in `domain` when this device has that CMB registered and a
    /// buffer is free in it; else host memory (the fallback never fails an I/O: every block
    /// device reaches host memory), with the reason when `domain` was a CMB. `None` only when
    /// host memory is exhausted too (nothing to count then: the command waits and asks again).
    pub(crate) fn try_get(&mut self, domain: Domain, len: usize) -> Option<Got> {
        let mut fallback = None;
        if domain != Domain::HostMemory {
            fallback = Some(match self.cmb.iter_mut().find(|c| c.domain() == domain) {
                None => Fallback::Unregistered,
                Some(c) if len > c.pool().buf_size() => Fallback::TooLarge,
                Some(c) => match c.try_get(len) {
                    Some(buf) => {
                        return Some(Got {
                            buf,
                            fallback: None,
                        })
                    }
                    None => Fallback::Exhausted,
                },
            });
        }
        let buf = self.host.try_get(len)?;
        Some(Got { buf, fallback })
    }

    /// Host-memory buffers handed out and not yet back (the metrics' buffer pool in use; CMB
    /// buffers are counted by the P2P counters).
    pub(crate) fn in_use(&self) -> usize {
        self.host.in_use()
    }

    /// A host buffer of `len` bytes (small and control buffers: in-capsule data).
    pub(crate) fn get(&mut self, len: usize) -> IoBuf {
        self.host.get(len)
    }

    /// The reactor's timer pass: idle CMB caches give their buffers back to their pools.
    pub(crate) fn idle_tick(&mut self, now: Instant) {
        for c in &mut self.cmb {
            c.idle_tick(now);
        }
    }

    pub(crate) fn put(&mut self, buf: IoBuf) {
        match buf.domain() {
            Domain::HostMemory => self.host.put(buf),
            d => match self.cmb.iter_mut().find(|c| c.domain() == d) {
                Some(c) => c.put(buf),
                // Not ours (cannot happen: only this device's pools hand out buffers).
                None => drop(buf),
            },
        }
    }
}

/// Registers a pool's regions with one protection domain.
struct PdRegistrar {
    pd: Arc<Pd>,
    id: PdId,
}

impl Registrar for PdRegistrar {
    fn register(&self, region: &mut Region) {
        // SAFETY: the region's mapping lives until the region drops, and it drops the handle
        // (this Mr) before unmapping; the CPU reaches the memory only through the IoBufs carved
        // from it, each owning its slice, and never while a WR naming that slice is posted.
        // Local access only: the target moves data itself (RDMA READ into these buffers, RDMA
        // WRITE and SEND out of them) and never gives their rkey to a host; remote access on a
        // PD every host's queue pair shares would let a peer that guesses the key reach other
        // hosts' data.
        match unsafe {
            Mr::register_raw(&self.pd, region.as_ptr(), region.len(), Access::LOCAL_WRITE)
        } {
            Ok(mr) => {
                let keys = Keys {
                    lkey: mr.lkey(),
                    rkey: mr.rkey(),
                };
                region.register(self.id, keys, Some(Box::new(mr)));
            }
            Err(e) => {
                warn!(error = %e, len = region.len(), "cannot register a data buffer region with the RDMA device")
            }
        }
    }
}

struct Device {
    ctx: Context,
    pd: Arc<Pd>,
    pd_id: PdId,
    cq: Arc<Cq>,
    srq: Arc<Srq>,
    recv_mr: Mr,
    recv_size: usize,
    /// Kept for the receive WRs, which point into it.
    _recv_sges: Box<[Sge]>,
    recv_wrs: Box<[RecvWr]>,
    /// Receive buffers consumed in this poll, re-posted at its end.
    repost: Vec<u32>,
    pools: Pools,
    /// Queue pairs on this device.
    conns: usize,
    /// Commands the queue pairs on this device may have outstanding (sum of their sizes).
    commands: u32,
    /// The device is being removed (DEVICE_REMOVAL): no new queue pairs, released once idle.
    gone: bool,
    /// Since when the device has had no queue pairs (None while it has some).
    idle_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Fetched, waiting for a large buffer.
    AwaitingBuffer,
    /// RDMA READs of its data queued or in flight.
    Reading,
    /// With the core, to admit (after `Event::Command`), or to execute (after
    /// `Event::DataReady`, or `Admission::Execute`), or held (an AER), or with a block device.
    Core,
    /// The response (and read data) posted; waiting for the SEND completion.
    Sending,
}

struct Slot {
    state: SlotState,
    cap: Capsule,
    /// In-capsule data (or the descriptor list) copied out of the receive buffer, until fetch.
    icd: Option<IoBuf>,
    plan: DataPlan,
    reads_total: u8,
    reads_done: u8,
    reads_failed: bool,
    /// The memory domain the core chose for the command's data buffer.
    domain: Domain,
    /// The command's block device (by index; P2P counters), None for admin commands.
    bdev: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Accepted, waiting for ESTABLISHED (commands may arrive already).
    Accepted,
    Live,
    Closing,
}

struct Conn {
    id: CmId,
    /// This queue pair's index in the group (in its WR IDs).
    idx: u16,
    dev: usize,
    generation: u16,
    qid: u16,
    state: ConnState,
    why: String,
    closing_since: Option<Instant>,
    /// The reactor knows the queue pair ended (it took `Event::Closed`, or closed it itself):
    /// until then its id is not reused and it is not destroyed, so the reactor never names an
    /// id that is gone.
    reported: bool,
    peer: Option<SocketAddr>,
    slots: Box<[Slot]>,
    free_slots: Vec<u16>,
    /// The queue's entries (HSQSIZE + 1): commands the host may have outstanding.
    entries: u16,
    /// Slots holding a command the host still waits for (not free, not sending its response).
    active: u16,
    rsp_mr: Mr,
    /// Kept for the send WRs, which point into it.
    sges: Box<[Sge]>,
    wrs: Box<[SendWr]>,
    reads: Reads,
    buf_wait: VecDeque<u16>,
    /// Signaled WRs posted and not yet completed.
    signaled: u32,
    /// SENDs posted and not yet completed (responses not yet on the wire).
    sending: u32,
    sgl: SglLimits,
    /// This queue pair's P2P counters (bytes by memory domain, fallbacks).
    p2p: P2pCounters,
}

/// One reactor's RDMA poll group.
pub struct RdmaGroup {
    // Queue pairs first: they drop (destroying their QPs) before the devices' SRQs, CQs,
    // memory regions and PDs.
    conns: Vec<Option<Conn>>,
    cfg: RdmaGroupConfig,
    params: RdmaParams,
    reactor: usize,
    channel: EventChannel,
    /// Indexed by `Conn::dev`; a released device leaves a `None` that a later one reuses.
    devs: Vec<Option<Device>>,
    free: Vec<usize>,
    /// (device, QP number) → queue pair: QP numbers are per device (two devices hand out the
    /// same ones).
    by_qp: HashMap<(usize, u32), usize>,
    by_id: HashMap<IdHandle, usize>,
    events: VecDeque<Event>,
    generation: u16,
    wcs: Box<[Wc]>,
    polls: u32,
    /// P2P counters per block device and the fallbacks this reactor logged.
    p2p: P2pTable,
}

impl RdmaGroup {
    fn build(cfg: &RdmaGroupConfig, reactor: usize) -> super::verbs::Result<RdmaGroup> {
        Ok(RdmaGroup {
            cfg: cfg.clone(),
            params: cfg.params,
            reactor,
            channel: EventChannel::new()?,
            devs: Vec::new(),
            conns: Vec::new(),
            free: Vec::new(),
            by_qp: HashMap::new(),
            by_id: HashMap::new(),
            events: VecDeque::with_capacity(4096),
            generation: 0,
            polls: 0,
            wcs: vec![Wc::default(); CQ_BATCH].into_boxed_slice(),
            p2p: P2pTable::new(cfg.staged.clone()),
        })
    }

    /// Release every device that is idle: being removed with no queue pair left, or without
    /// a queue pair for `DEVICE_IDLE_RELEASE`, and with none of its buffers out (with the core
    /// or a block device: they come back through `recycle`). Dropping a `Device` destroys its
    /// SRQ, CQ, memory regions and (unless CMBs registered at start-up share it) its PD, then
    /// the cm_id that held its context, so librdmacm can close a removed device.
    fn release_idle_devices(&mut self, now: Instant) {
        for slot in self.devs.iter_mut() {
            let Some(d) = slot.as_ref() else {
                continue;
            };
            let idle = d.conns == 0
                && d.pools.in_use() == 0
                && (d.gone
                    || d.idle_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= DEVICE_IDLE_RELEASE));
            if !idle {
                continue;
            }
            if let Some(d) = slot.take() {
                if d.gone {
                    warn!(reactor = self.reactor, device = %d.ctx.name(), "removed RDMA device released");
                } else {
                    info!(reactor = self.reactor, device = %d.ctx.name(), "RDMA device released (no queue pairs on it for 2 s)");
                }
            }
        }
    }

    /// This group's resources on the device of `id` (a connect request's id, on this group's
    /// channel): found by the id's own context, or made on it. The context comes from the id,
    /// not from a librdmacm device list: a QP must be made on a PD of exactly the id's context,
    /// and a fresh list may no longer show that context although it is valid for the id's life
    /// (see `CmId::own_context`), which once refused the first connect request after another
    /// device was added. The first id's hold keeps the context open for the `Device`'s life
    /// (its PD, CQ and buffers hold the context, and the context that id); the hold pins that
    /// one device only, and goes when the device is released. No device list is read here, so
    /// a reactor never makes librdmacm rescan the devices (netlink and sysfs reads) either.
    fn device_for(&mut self, id: &CmId) -> super::verbs::Result<usize> {
        let ctx = id.own_context()?;
        if let Some(i) = self.devs.iter().position(|d| {
            d.as_ref()
                .is_some_and(|d| !d.gone && d.ctx.as_ptr() == ctx.as_ptr())
        }) {
            return Ok(i);
        }
        if let Some(other) = self
            .devs
            .iter()
            .flatten()
            .find(|d| !d.gone && d.ctx.same_device(&ctx))
        {
            // Not an error: the queue pairs on the old context go on, new ones get their own
            // SRQ, CQ and buffers on the new one; the old set is released once idle.
            info!(reactor = self.reactor, device = %other.ctx.name(),
                "RDMA device reached through a second context (librdmacm opened it again when it refreshed its device list): queue pairs on it get resources of their own");
        }
        let ctx = &ctx;
        let p = self.params;
        // A device with CMBs registered at start-up uses the PD they were registered on (their
        // keys are valid there only); any other device gets a PD of this reactor's own.
        let (cmb, shared_pd) = cmb_for_device(&self.cfg.cmb, &ctx.name(), |pd| {
            pd.context().as_ptr() == ctx.as_ptr()
        });
        let (pd, pd_id) = match shared_pd {
            Some(x) => x,
            None => (Pd::new(ctx)?, next_pd_id()),
        };
        let depth = p.srq_depth.max(16);
        let cq = Arc::new(Cq::new(ctx, (depth * 3).clamp(1024, 32767))?);
        let srq = Arc::new(Srq::new(&pd, depth, 1)?);
        let recv_size = (64 + p.in_capsule_data_size as usize).next_multiple_of(64);
        let mem = HostMem::new(recv_size * depth as usize)?;
        let recv_mr = Mr::register(&pd, mem, Access::LOCAL_WRITE)?;
        let mut sges: Box<[Sge]> = (0..depth as usize)
            .map(|i| {
                Sge::new(
                    recv_mr.addr() + (i * recv_size) as u64,
                    recv_size as u32,
                    recv_mr.lkey(),
                )
            })
            .collect();
        let mut wrs: Box<[RecvWr]> = (0..depth as usize)
            .map(|i| {
                let id = WrId {
                    kind: Kind::Recv,
                    generation: 0,
                    conn: 0,
                    slot: i as u16,
                    desc: 0,
                };
                RecvWr::new(id.encode(), &mut sges[i..i + 1])
            })
            .collect();
        // SAFETY: every receive WR names its own slice of recv_mr, registered for local write
        // and owned by this Device (with the WRs) until the SRQ is destroyed; the CPU reads a
        // slice only after its RECV completed, and re-posts it after.
        unsafe { srq.post(&mut wrs) }.map_err(|e| super::verbs::Error::Os {
            op: "ibv_post_srq_recv",
            source: e.source,
        })?;
        let large = (p.max_io_size as usize).max(SMALL_BUF);
        let large_limit = usize::try_from(p.buffer_pool_size / large as u64)
            .unwrap_or(usize::MAX)
            .max(1);
        let small = SMALL_BUF.max(p.in_capsule_data_size as usize);
        let pool = BufPool::with_registrars(
            small,
            256,
            large,
            16.min(large_limit),
            large_limit,
            vec![Box::new(PdRegistrar {
                pd: Arc::clone(&pd),
                id: pd_id,
            })],
        );
        let cmb: Vec<PoolCache> = cmb.iter().map(|c| c.pool.reactor_cache()).collect();
        info!(reactor = self.reactor, device = %ctx.name(), srq_depth = depth, recv_size,
            cmb_domains = cmb.len(), "RDMA device ready");
        let device = Device {
            ctx: ctx.clone(),
            pd,
            pd_id,
            cq,
            srq,
            recv_mr,
            recv_size,
            _recv_sges: sges,
            recv_wrs: wrs,
            repost: Vec::with_capacity(depth as usize),
            pools: Pools::new(pool, cmb),
            conns: 0,
            commands: 0,
            gone: false,
            // Idle from the start: if the accept that made it fails, nothing else would ever
            // start the clock, and the device would be held for good.
            idle_since: Some(Instant::now()),
        };
        match self.devs.iter().position(Option::is_none) {
            Some(i) => {
                self.devs[i] = Some(device);
                Ok(i)
            }
            None => {
                self.devs.push(Some(device));
                Ok(self.devs.len() - 1)
            }
        }
    }

    /// Take a connection admitted by the listener: move its cm_id to this group's channel, make
    /// its QP on the device's PD, CQ and SRQ, and accept with CRQSIZE. On failure the host gets
    /// a "no resources" reject.
    fn add_incoming(&mut self, inc: Incoming) {
        let Incoming {
            mut id,
            admitted,
            host_ord,
            peer,
            local,
        } = inc;
        match self.try_add(&mut id, admitted, host_ord) {
            Ok(parts) => {
                let idx = match self.free.pop() {
                    Some(i) => i,
                    None => {
                        self.conns.push(None);
                        self.conns.len() - 1
                    }
                };
                self.generation = self.generation.wrapping_add(1);
                let (dev, rsp_mr, sges, wrs, sgl) = parts;
                let generation = self.generation;
                let n = slots_for(admitted.sq_entries);
                let mut wrs = wrs;
                for (i, w) in wrs.iter_mut().enumerate() {
                    let slot = (i / WRS_PER_SLOT) as u16;
                    let k = i % WRS_PER_SLOT;
                    let id = WrId {
                        kind: if k == 0 { Kind::Send } else { Kind::Read },
                        generation,
                        conn: idx as u16,
                        slot,
                        desc: k.saturating_sub(1) as u8,
                    };
                    w.set_wr_id(id.encode());
                }
                let qp_num = id.qp().map(|q| q.qp_num()).unwrap_or(0);
                self.by_qp.insert((dev, qp_num), idx);
                self.by_id.insert(id.handle(), idx);
                let d = dev_mut(&mut self.devs, dev);
                d.conns += 1;
                d.commands += u32::from(admitted.sq_entries);
                d.idle_since = None;
                let slots: Box<[Slot]> = (0..n)
                    .map(|_| Slot {
                        state: SlotState::Free,
                        icd: None,
                        cap: Capsule {
                            sqe: Sqe::default(),
                            buf: None,
                            data_len: 0,
                            lent: None,
                        },
                        plan: DataPlan::None,
                        reads_total: 0,
                        reads_done: 0,
                        reads_failed: false,
                        domain: Domain::HostMemory,
                        bdev: None,
                    })
                    .collect();
                info!(peer = ?peer, qid = admitted.qid, entries = n, initiator_depth = admitted.initiator_depth,
                    qp_num, "RDMA queue pair accepted");
                self.conns[idx] = Some(Conn {
                    id,
                    idx: idx as u16,
                    dev,
                    generation,
                    qid: admitted.qid,
                    state: ConnState::Accepted,
                    why: String::new(),
                    closing_since: None,
                    reported: false,
                    peer,
                    slots,
                    free_slots: (0..n as u16).rev().collect(),
                    entries: admitted.sq_entries,
                    active: 0,
                    rsp_mr,
                    sges,
                    wrs,
                    reads: Reads::new(admitted.initiator_depth, n),
                    buf_wait: VecDeque::with_capacity(n),
                    signaled: 0,
                    sending: 0,
                    sgl,
                    p2p: P2pCounters::default(),
                });
                self.events.push_back(Event::Connected {
                    conn: idx as ConnId,
                    peer: peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                    local,
                });
            }
            Err((status, why)) => {
                let _ = id.reject(&CmReject::new(status).encode());
                warn!(peer = ?peer, reason = %why, "RDMA connect request rejected: no resources");
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn try_add(
        &mut self,
        id: &mut CmId,
        admitted: Admitted,
        host_ord: u8,
    ) -> Result<(usize, Mr, Box<[Sge]>, Box<[SendWr]>, SglLimits), (RejectStatus, String)> {
        let nores = |e: String| (RejectStatus::NoResources, e);
        if self.free.is_empty() && self.conns.len() >= usize::from(ConnId::MAX) {
            return Err(nores("too many queue pairs on this reactor".into()));
        }
        id.migrate(&self.channel)
            .map_err(|e| nores(e.to_string()))?;
        let dev = self.device_for(id).map_err(|e| nores(e.to_string()))?;
        let n = admitted.sq_entries as usize;
        let d = dev_mut(&mut self.devs, dev);
        if d.commands + n as u32 > self.params.srq_depth {
            return Err(nores(format!(
                "the reactor's shared receive queue ({} entries) is taken by queues already connected",
                self.params.srq_depth
            )));
        }
        let n = slots_for(admitted.sq_entries);
        let caps = QpCaps {
            max_send_wr: (n * WRS_PER_SLOT).min(16000) as u32,
            max_recv_wr: 0,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let (pd, cq, srq) = (Arc::clone(&d.pd), Arc::clone(&d.cq), Arc::clone(&d.srq));
        id.create_qp(&pd, &cq, &cq, Some(&srq), caps)
            .map_err(|e| nores(e.to_string()))?;
        let rsp_mem = HostMem::new((n * Cqe::SIZE).next_multiple_of(4096))
            .map_err(|e| nores(e.to_string()))?;
        let rsp_mr =
            Mr::register(&pd, rsp_mem, Access::LOCAL_WRITE).map_err(|e| nores(e.to_string()))?;
        let mut sges: Box<[Sge]> = (0..n * WRS_PER_SLOT)
            .map(|i| {
                let slot = i / WRS_PER_SLOT;
                if i % WRS_PER_SLOT == 0 {
                    Sge::new(
                        rsp_mr.addr() + (slot * Cqe::SIZE) as u64,
                        Cqe::SIZE as u32,
                        rsp_mr.lkey(),
                    )
                } else {
                    Sge::default()
                }
            })
            .collect();
        let wrs: Box<[SendWr]> = (0..n * WRS_PER_SLOT)
            .map(|i| {
                if i % WRS_PER_SLOT == 0 {
                    SendWr::send(0, &mut sges[i..i + 1], true)
                } else {
                    SendWr::rdma_read(0, &mut sges[i..i + 1], 0, 0, true)
                }
            })
            .collect();
        let ird = host_ord.min(MAX_INITIATOR_DEPTH);
        let param = ConnParam {
            responder_resources: ird,
            initiator_depth: admitted.initiator_depth,
            retry_count: 7,
            rnr_retry_count: 7,
        };
        let rep = CmAccept {
            recfmt: RECFMT_1_0,
            crqsize: admitted.sq_entries,
        };
        id.accept(&param, &rep.encode())
            .map_err(|e| nores(e.to_string()))?;
        // Receive buffers hold in_capsule_data_size after the SQE, on every queue: what
        // IOCCSZ advertises (and the admin queue's capsule size, see `transport_info`).
        let sgl = SglLimits {
            in_capsule: self.params.in_capsule_data_size,
            msdbd: self.cfg.info.msdbd,
        };
        Ok((dev, rsp_mr, sges, wrs, sgl))
    }

    /// Poll the event channel and every device's CQ; move commands along. Returns whether
    /// anything happened.
    fn poll(&mut self) -> bool {
        self.polls = self.polls.wrapping_add(1);
        let mut work = self.polls.is_multiple_of(EVENTS_EVERY) && self.poll_events();
        for d in 0..self.devs.len() {
            if self.devs[d].is_some() {
                work |= self.poll_cq(d);
            }
        }
        for c in 0..self.conns.len() {
            self.pump(c);
        }
        self.reap();
        work
    }

    fn poll_events(&mut self) -> bool {
        let mut work = false;
        loop {
            let ev = match self.channel.poll() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "rdma_cm event channel");
                    break;
                }
            };
            work = true;
            let Some(&idx) = self.by_id.get(&ev.id) else {
                // The id of a queue pair that ended but still holds a device's context open
                // (`device_for`): its device's removal must not wait for the idle release.
                let holder = self
                    .devs
                    .iter_mut()
                    .flatten()
                    .find(|d| d.ctx.held_by() == Some(ev.id));
                match (ev.kind, holder) {
                    (Some(EventKind::DeviceRemoval), Some(d)) => {
                        if !d.gone {
                            warn!(reactor = self.reactor, device = %d.ctx.name(),
                                "RDMA device is being removed: its resources are released once no queue pair uses them");
                        }
                        d.gone = true;
                    }
                    _ => debug!(event = %ev.name(), "rdma_cm event for no queue pair"),
                }
                continue;
            };
            match ev.kind {
                Some(EventKind::Established) => {
                    if let Some(c) = self.conns[idx].as_mut() {
                        if c.state == ConnState::Accepted {
                            c.state = ConnState::Live;
                        }
                        debug!(peer = ?c.peer, qid = c.qid, "RDMA connection established");
                    }
                }
                Some(EventKind::Disconnected) => self.end(idx, "host disconnected"),
                Some(EventKind::TimewaitExit) => self.end(idx, "time-wait exit"),
                Some(EventKind::DeviceRemoval) => {
                    let dev = self.conns[idx].as_ref().map(|c| c.dev);
                    self.end(idx, "RDMA device removed");
                    if let Some(dev) = dev {
                        let d = dev_mut(&mut self.devs, dev);
                        if !d.gone {
                            warn!(reactor = self.reactor, device = %d.ctx.name(),
                                "RDMA device is being removed: its queue pairs end, and its resources are released once they are gone");
                        }
                        d.gone = true;
                        for i in 0..self.conns.len() {
                            if self.conns[i].as_ref().is_some_and(|c| c.dev == dev) {
                                self.end(i, "RDMA device removed");
                            }
                        }
                    }
                }
                Some(EventKind::AddrChange) => self.end(idx, "address changed"),
                Some(EventKind::ConnectError | EventKind::Unreachable | EventKind::Rejected) => {
                    self.end(idx, "connection failed")
                }
                _ => debug!(event = %ev.name(), "rdma_cm event ignored"),
            }
        }
        work
    }

    fn poll_cq(&mut self, d: usize) -> bool {
        let mut any = false;
        for _ in 0..8 {
            let n = match dev_mut(&mut self.devs, d).cq.poll(&mut self.wcs) {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "ibv_poll_cq");
                    break;
                }
            };
            if n == 0 {
                break;
            }
            any = true;
            for i in 0..n {
                let wc = self.wcs[i];
                self.completion(d, &wc);
            }
            if n < CQ_BATCH {
                break;
            }
        }
        // Re-post the receive buffers this poll consumed, in one call.
        let dev = dev_mut(&mut self.devs, d);
        if !dev.repost.is_empty() && !dev.gone {
            // SAFETY: as in device_for: each WR names its own registered receive slice, whose
            // contents were copied out before it was queued for re-posting.
            if let Err(e) = unsafe { dev.srq.post_slots(&mut dev.recv_wrs, &dev.repost) } {
                warn!(error = %e, "re-posting receive buffers failed");
            }
            dev.repost.clear();
        }
        any
    }

    fn completion(&mut self, d: usize, wc: &Wc) {
        let Some(id) = WrId::decode(wc.wr_id()) else {
            warn!(
                wr_id = wc.wr_id(),
                "completion with an unknown work request id"
            );
            return;
        };
        if id.kind == Kind::Recv {
            self.received(d, id.slot, wc);
            return;
        }
        let idx = id.conn as usize;
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if c.generation != id.generation {
            return;
        }
        let ok = wc.is_ok();
        if !ok && wc.status() != WC_FLUSH {
            warn!(peer = ?c.peer, qid = c.qid, status = wc.status_str(), kind = ?id.kind,
                "RDMA work request failed; closing the queue pair");
        }
        let slot = id.slot as usize;
        match id.kind {
            Kind::Read => {
                c.signaled = c.signaled.saturating_sub(1);
                c.reads.done();
                let s = &mut c.slots[slot];
                s.reads_done += 1;
                s.reads_failed |= !ok;
                if s.reads_done == s.reads_total && s.state == SlotState::Reading {
                    if s.reads_failed || c.state == ConnState::Closing {
                        free_slot(c, &mut dev_mut(&mut self.devs, d).pools, slot);
                    } else {
                        s.state = SlotState::Core;
                        self.events.push_back(Event::DataReady {
                            conn: idx as ConnId,
                            slot: slot as u16,
                        });
                    }
                }
            }
            Kind::Send => {
                c.signaled = c.signaled.saturating_sub(1);
                c.sending = c.sending.saturating_sub(1);
                free_slot(c, &mut dev_mut(&mut self.devs, d).pools, slot);
            }
            // Unsignaled WRITEs complete only in error (flushed): the SEND after them tells.
            Kind::Write | Kind::Recv => {}
        }
        if !ok {
            self.end(idx, "RDMA work request failed");
        }
    }

    /// A capsule arrived in receive buffer `r` of device `d`.
    fn received(&mut self, d: usize, r: u16, wc: &Wc) {
        let dev = dev_mut(&mut self.devs, d);
        dev.repost.push(u32::from(r));
        if !wc.is_ok() {
            if wc.status() != WC_FLUSH {
                warn!(status = wc.status_str(), "receive completion in error");
            }
            return;
        }
        let Some(&idx) = self.by_qp.get(&(d, wc.qp_num())) else {
            return;
        };
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if c.state == ConnState::Closing {
            return;
        }
        let len = wc.byte_len() as usize;
        if len < Sqe::SIZE || len > dev.recv_size {
            warn!(peer = ?c.peer, qid = c.qid, len, "capsule of a bad length; closing the queue pair");
            self.end(idx, "capsule of a bad length");
            return;
        }
        let Some(mem) = dev.recv_mr.mem() else {
            return;
        };
        let base = r as usize * dev.recv_size;
        let mut raw = [0u8; Sqe::SIZE];
        if mem.read_at(base, &mut raw).is_err() {
            return;
        }
        let sqe = Sqe::decode(&raw);
        // NVMe-oF 1.1, submission queue flow control: the host never has more commands
        // outstanding than CRQSIZE; one that does breaks the protocol.
        if c.active >= c.entries {
            warn!(peer = ?c.peer, qid = c.qid, "host exceeded its queue size; closing the queue pair");
            self.end(idx, "host exceeded its queue size");
            return;
        }
        let Some(slot) = c.free_slots.pop() else {
            warn!(peer = ?c.peer, qid = c.qid, "no command slot free (responses not yet acknowledged); closing the queue pair");
            self.end(idx, "no command slot free");
            return;
        };
        c.active += 1;
        let s = slot as usize;
        // In-capsule data (or a descriptor list) lands in a small buffer, copied out of the
        // receive buffer so that one is re-posted at once.
        let icd = len - Sqe::SIZE;
        let mut icd_buf = None;
        if icd > 0 {
            let mut buf = dev.pools.get(icd);
            if mem
                .read_at(base + Sqe::SIZE, &mut buf.as_mut_slice()[..icd])
                .is_err()
            {
                dev.pools.put(buf);
                c.free_slots.push(slot);
                c.active -= 1;
                return;
            }
            icd_buf = Some(buf);
        }
        let data: &[u8] = icd_buf.as_ref().map_or(&[], |b| &b.as_slice()[..icd]);
        let (plan, desc) = match admit::plan(&sqe, data, &c.sgl) {
            Ok(p @ DataPlan::None) => (p, DataDesc::None),
            Ok(p @ DataPlan::InCapsule { offset, len }) => (
                p,
                DataDesc::InCapsule {
                    offset: u64::from(offset),
                    len,
                    carried: icd as u32,
                },
            ),
            Ok(p @ DataPlan::Keyed { total, n, .. }) => (
                p,
                DataDesc::Remote {
                    len: total,
                    descriptors: u16::from(n),
                },
            ),
            Err(status) => (DataPlan::None, DataDesc::Refused(status)),
        };
        // The descriptor list is parsed: its bytes are not needed any more.
        if matches!(plan, DataPlan::Keyed { .. }) {
            if let Some(b) = icd_buf.take() {
                dev.pools.put(b);
            }
        }
        let sl = &mut c.slots[s];
        sl.cap.sqe = sqe;
        sl.cap.data_len = 0;
        sl.cap.lent = None;
        sl.cap.buf = None;
        sl.icd = icd_buf;
        sl.plan = plan;
        sl.reads_done = 0;
        sl.reads_total = 0;
        sl.reads_failed = false;
        sl.state = SlotState::Core;
        self.events.push_back(Event::Command {
            conn: idx as ConnId,
            slot,
            sqe,
            desc,
        });
    }

    /// Give waiting commands their buffers and issue the RDMA READs there is room for.
    fn pump(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if c.state == ConnState::Closing {
            return;
        }
        let dev = dev_mut(&mut self.devs, c.dev);
        while let Some(&slot) = c.buf_wait.front() {
            let sl = &c.slots[slot as usize];
            let (need, domain, bdev) = (sl.cap.data_len, sl.domain, sl.bdev);
            let Some(got) = dev.pools.try_get(domain, need as usize) else {
                break;
            };
            c.buf_wait.pop_front();
            (self.p2p).count(bdev, need, got.buf.domain(), got.fallback, &mut c.p2p);
            c.slots[slot as usize].cap.buf = Some(got.buf);
            start_data(c, slot, &mut self.events, idx);
        }
        let mut failed = false;
        loop {
            let slots = &c.slots;
            let Some((slot, k)) = c.reads.next(|s| slots[s as usize].reads_total) else {
                break;
            };
            if let Err(e) = post_read(c, dev.pd_id, slot, k) {
                warn!(peer = ?c.peer, qid = c.qid, error = %e, "posting an RDMA READ failed");
                c.reads.done();
                let s = &mut c.slots[slot as usize];
                s.reads_done += 1;
                s.reads_failed = true;
                failed = true;
                break;
            }
            c.signaled += 1;
        }
        if failed {
            self.end(idx, "posting an RDMA READ failed");
        }
    }

    /// Get the data of an admitted command in place (see [`PollGroup::fetch`]).
    fn do_fetch(&mut self, idx: usize, slot: u16, need: DataNeed) {
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        let s = slot as usize;
        if c.state == ConnState::Closing || c.slots[s].state != SlotState::Core {
            return;
        }
        let dev = dev_mut(&mut self.devs, c.dev);
        let plan = c.slots[s].plan;
        match plan {
            DataPlan::InCapsule { offset, len } => {
                // Admission checked offset + len against what the capsule carried.
                let sl = &mut c.slots[s];
                let Some(mut buf) = sl.icd.take() else {
                    return;
                };
                let (o, l) = (offset as usize, len as usize);
                if o != 0 {
                    buf.as_mut_slice().copy_within(o..o + l, 0);
                }
                sl.cap.buf = Some(buf);
                sl.cap.data_len = len;
                // In-capsule data came in a host receive buffer, before the command's
                // namespace was known: host memory, whatever the namespace's placement.
                (self.p2p).count(need.bdev, len, Domain::HostMemory, None, &mut c.p2p);
                self.events.push_back(Event::DataReady {
                    conn: idx as ConnId,
                    slot,
                });
            }
            DataPlan::Keyed { n, dir, .. } => {
                let sl = &mut c.slots[s];
                sl.cap.data_len = need.len;
                sl.reads_total = if dir == Direction::HostToController {
                    n
                } else {
                    0
                };
                sl.domain = need_domain(&self.cfg.staged, &need);
                sl.bdev = need.bdev;
                match dev.pools.try_get(sl.domain, need.len as usize) {
                    Some(got) => {
                        let d = got.buf.domain();
                        (self.p2p).count(need.bdev, need.len, d, got.fallback, &mut c.p2p);
                        sl.cap.buf = Some(got.buf);
                        start_data(c, slot, &mut self.events, idx);
                    }
                    None => {
                        sl.state = SlotState::AwaitingBuffer;
                        c.buf_wait.push_back(slot);
                    }
                }
            }
            DataPlan::None => {
                // Admission asked for data the descriptors do not name: a buffer all the same
                // (the core decides what to do with it).
                let sl = &mut c.slots[s];
                sl.cap.buf = Some(dev.pools.get(need.len as usize));
                sl.cap.data_len = need.len;
                (self.p2p).count(need.bdev, need.len, Domain::HostMemory, None, &mut c.p2p);
                self.events.push_back(Event::DataReady {
                    conn: idx as ConnId,
                    slot,
                });
            }
        }
    }

    /// Answer a command: move read data with RDMA WRITE, then SEND the response.
    fn do_respond(&mut self, idx: usize, slot: u16, resp: Response) {
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        let s = slot as usize;
        if c.slots[s].state != SlotState::Core {
            return;
        }
        let dev = dev_mut(&mut self.devs, c.dev);
        if let Some(b) = c.slots[s].icd.take() {
            dev.pools.put(b);
        }
        if c.state == ConnState::Closing {
            free_slot(c, &mut dev.pools, s);
            return;
        }
        if let Err(e) = post_response(c, dev.pd_id, slot, resp) {
            warn!(peer = ?c.peer, qid = c.qid, error = %e, "posting a response failed; closing the queue pair");
            free_slot(c, &mut dev.pools, s);
            self.end(idx, "posting a response failed");
            return;
        }
        c.slots[s].state = SlotState::Sending;
        c.active = c.active.saturating_sub(1);
        c.signaled += 1;
        c.sending += 1;
    }

    /// The group ends a queue pair itself: the reactor hears `Event::Closed`.
    fn end(&mut self, idx: usize, why: &str) {
        if self.begin_close(idx, why) {
            self.events.push_back(Event::Closed {
                conn: idx as ConnId,
                why: why.to_string(),
            });
        }
    }

    /// Start closing a queue pair: disconnect (its QP goes to the error state and everything
    /// posted comes back flushed) and drop what was not posted. Returns whether it was open.
    fn begin_close(&mut self, idx: usize, why: &str) -> bool {
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return false;
        };
        if c.state == ConnState::Closing {
            return false;
        }
        c.state = ConnState::Closing;
        c.why = why.to_string();
        c.closing_since = Some(Instant::now());
        if let Err(e) = c.id.disconnect() {
            debug!(peer = ?c.peer, error = %e, "rdma_disconnect");
        }
        let pool = &mut dev_mut(&mut self.devs, c.dev).pools;
        while let Some(slot) = c.buf_wait.pop_front() {
            free_slot(c, pool, slot as usize);
        }
        // READs not issued yet never will be; those issued come back flushed and free their
        // slot then (see `completion`).
        while let Some((slot, left)) = c.reads.pop_queued() {
            let sl = &mut c.slots[slot as usize];
            if sl.state == SlotState::Reading {
                sl.reads_total -= left;
                if sl.reads_done == sl.reads_total {
                    free_slot(c, pool, slot as usize);
                }
            }
        }
        // What the core or a block device has is the reactor's from now on (a block device's
        // buffer comes back through `recycle`); what waits in a slot goes back now.
        for s in 0..c.slots.len() {
            if c.slots[s].state == SlotState::Core {
                free_slot(c, pool, s);
            }
        }
        true
    }

    /// Destroy closing queue pairs that have nothing outstanding.
    fn reap(&mut self) {
        for idx in 0..self.conns.len() {
            let done = match self.conns[idx].as_ref() {
                Some(c) if c.state == ConnState::Closing && c.reported => {
                    let idle = c.signaled == 0;
                    let late = c.closing_since.is_some_and(|t| t.elapsed() > CLOSE_TIMEOUT);
                    if late && !idle {
                        warn!(peer = ?c.peer, qid = c.qid, outstanding = c.signaled,
                            "closing RDMA queue pair still has work requests outstanding; destroying it anyway");
                    }
                    idle || late
                }
                _ => false,
            };
            if !done {
                continue;
            }
            let Some(mut c) = self.conns[idx].take() else {
                continue;
            };
            let dev = dev_mut(&mut self.devs, c.dev);
            for s in 0..c.slots.len() {
                if let Some(b) = c.slots[s].cap.buf.take() {
                    dev.pools.put(b);
                }
                if let Some(b) = c.slots[s].icd.take() {
                    dev.pools.put(b);
                }
            }
            dev.conns -= 1;
            dev.commands -= u32::from(c.entries);
            if dev.conns == 0 {
                dev.idle_since = Some(Instant::now());
            }
            if let Some(q) = c.id.qp() {
                self.by_qp.remove(&(c.dev, q.qp_num()));
            }
            self.by_id.remove(&c.id.handle());
            self.free.push(idx);
            debug!(peer = ?c.peer, qid = c.qid, reason = %c.why, "RDMA queue pair destroyed");
        }
    }

    /// Queue pairs on this reactor (closing ones included).
    pub fn queue_pairs(&self) -> usize {
        self.conns.iter().flatten().count()
    }
}

impl PollGroup for RdmaGroup {
    type Incoming = Incoming;
    type Config = RdmaGroupConfig;

    fn new(cfg: &RdmaGroupConfig, reactor: usize) -> std::io::Result<Self> {
        let g = RdmaGroup::build(cfg, reactor).map_err(|e| std::io::Error::other(e.to_string()))?;
        info!(reactor, transport = "rdma", "poll group ready");
        Ok(g)
    }

    fn info(&self) -> &TransportInfo {
        &self.cfg.info
    }

    fn add(&mut self, incoming: Incoming) {
        self.add_incoming(incoming);
    }

    fn poll_recv(&mut self, _cold_turn: bool) -> bool {
        self.poll()
    }

    fn next_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if let Event::Closed { conn, .. } = ev {
            if let Some(c) = self.conns.get_mut(conn as usize).and_then(|c| c.as_mut()) {
                c.reported = true;
            }
        }
        Some(ev)
    }

    fn fetch(&mut self, conn: ConnId, slot: u16, need: DataNeed) {
        self.do_fetch(conn as usize, slot, need);
    }

    fn capsule_mut(&mut self, conn: ConnId, slot: u16) -> &mut Capsule {
        &mut self.conns[conn as usize]
            .as_mut()
            .expect("the reactor names only live connections")
            .slots[slot as usize]
            .cap
    }

    fn respond(&mut self, conn: ConnId, slot: u16, resp: Response) {
        self.do_respond(conn as usize, slot, resp);
    }

    fn set_queue(&mut self, conn: ConnId, qid: u16, entries: u16) {
        // The queue's size was fixed by the connect request (HSQSIZE); the Connect command
        // repeats it (NVMe/RDMA 1.0, 3.3: HSQSIZE is the SQSIZE of the Connect command).
        if let Some(c) = self.conns.get(conn as usize).and_then(|c| c.as_ref()) {
            if c.qid != qid || c.entries != entries {
                debug!(peer = ?c.peer, cm_qid = c.qid, qid, cm_entries = c.entries, entries,
                    "Connect disagrees with the RDMA connect request's QID or HSQSIZE");
            }
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.begin_close(conn as usize, "closed by the target");
        if let Some(c) = self.conns.get_mut(conn as usize).and_then(|c| c.as_mut()) {
            c.reported = true;
        }
        // Events of this queue pair not yet handed out are moot now (and must not reach the
        // reactor once its id is reused).
        self.events.retain(|e| {
            let of = match e {
                Event::Connected { conn, .. }
                | Event::Command { conn, .. }
                | Event::DataReady { conn, .. }
                | Event::Closed { conn, .. } => *conn,
            };
            of != conn
        });
    }

    fn poll_send(&mut self) -> bool {
        // Work requests are posted as they are made (one doorbell per command).
        false
    }

    fn poll_timers(&mut self, now: Instant) {
        self.reap();
        for d in self.devs.iter_mut().flatten() {
            d.pools.idle_tick(now);
        }
        self.release_idle_devices(now);
    }

    fn conn_has_unsent(&self, conn: ConnId) -> bool {
        self.conns
            .get(conn as usize)
            .and_then(|c| c.as_ref())
            .is_some_and(|c| c.sending > 0)
    }

    fn has_unsent(&self) -> bool {
        self.conns.iter().flatten().any(|c| c.sending > 0)
    }

    fn takes_lent_data(&self, _conn: ConnId) -> bool {
        // RDMA WRITE needs registered memory: a RAM disk's own blocks are not.
        false
    }

    fn recycle(&mut self, buf: IoBuf) {
        match (self.devs.iter_mut().flatten()).find(|d| buf.keys(d.pd_id).is_some()) {
            Some(d) => d.pools.put(buf),
            // Its device was released while the buffer was out (host buffers hold a device's
            // release back; CMB buffers do not): a CMB buffer goes back to its shared pool, or
            // the CMB would shrink for good. A host buffer of a released pool just drops.
            None => {
                let d = buf.domain();
                if let Some(c) = self.cfg.cmb.iter().find(|c| c.pool.domain() == d) {
                    if c.pool.put_back(buf).is_err() {
                        debug_assert!(false, "a CMB buffer not of its domain's pool");
                    }
                }
            }
        }
    }

    fn p2p_conn(&self, conn: ConnId) -> P2pCounters {
        (self.conns.get(conn as usize))
            .and_then(|c| c.as_ref())
            .map_or_else(P2pCounters::default, |c| c.p2p)
    }

    fn p2p_bdevs(&self, out: &mut Vec<P2pCounters>) {
        let c = self.p2p.counters();
        if out.len() < c.len() {
            out.resize(c.len(), P2pCounters::default());
        }
        for (o, c) in out.iter_mut().zip(c) {
            o.add(c);
        }
    }

    fn pool_stats(&self) -> crate::group::PoolStats {
        crate::group::PoolStats {
            in_use: (self.devs.iter().flatten())
                .map(|d| d.pools.in_use() as u64)
                .sum(),
            // Commands wait per queue pair here (in arrival order on each), not in the pool.
            waiters: (self.conns.iter().flatten())
                .map(|c| c.buf_wait.len() as u64)
                .sum(),
        }
    }
}

/// Device `d` of a group: a queue pair's device is never released while the queue pair exists
/// (see `release_idle_devices`), and completions come only from devices that are present.
fn dev_mut(devs: &mut [Option<Device>], d: usize) -> &mut Device {
    devs[d]
        .as_mut()
        .expect("an RDMA device in use was released")
}

/// The CMB pools registered with RDMA device `name`, and the PD they share, when `usable` (the
/// PD is on this reactor's context for the device). Pools on another PD than the first one's are
/// left out (the daemon registers every CMB of a device on one PD).
fn cmb_for_device<'a>(
    cmb: &'a [CmbPool],
    name: &str,
    usable: impl Fn(&Pd) -> bool,
) -> (Vec<&'a CmbPool>, Option<(Arc<Pd>, PdId)>) {
    let mut mine = cmb.iter().filter(|c| c.device == name);
    let Some(first) = mine.next() else {
        return (Vec::new(), None);
    };
    let shared = first
        .pd
        .as_ref()
        .filter(|pd| usable(pd))
        .map(|pd| (Arc::clone(pd), first.pd_id));
    if first.pd.is_some() && shared.is_none() {
        warn!(
            device = name,
            "CMB registered on another context of this RDMA device; its buffers are not used here"
        );
        return (Vec::new(), None);
    }
    let pd_id = first.pd_id;
    let pools = std::iter::once(first)
        .chain(mine.filter(|c| c.pd_id == pd_id))
        .collect();
    (pools, shared)
}

/// The memory domain a command's data is placed in: its namespace's decision for the
/// direction (a CMB only where the start-up chain registered it and the topology allowed it),
/// else host memory. A table lookup: no allocation, no lock.
fn need_domain(staged: &[RdmaStaging], need: &DataNeed) -> Domain {
    let Some(s) = need.bdev.and_then(|b| staged.get(b)) else {
        return Domain::HostMemory;
    };
    let d = match need.dir {
        Direction::HostToController => s.writes,
        Direction::ControllerToHost => s.reads,
        _ => None,
    };
    d.unwrap_or(Domain::HostMemory)
}

/// Data buffer in place: reads go straight to the core, writes queue their RDMA READs.
fn start_data(c: &mut Conn, slot: u16, events: &mut VecDeque<Event>, idx: usize) {
    let s = &mut c.slots[slot as usize];
    if s.reads_total == 0 {
        s.state = SlotState::Core;
        events.push_back(Event::DataReady {
            conn: idx as ConnId,
            slot,
        });
    } else {
        s.state = SlotState::Reading;
        c.reads.push(slot, s.reads_total);
    }
}

fn free_slot(c: &mut Conn, pool: &mut Pools, s: usize) {
    let sl = &mut c.slots[s];
    if sl.state == SlotState::Free {
        return;
    }
    if sl.state != SlotState::Sending {
        c.active = c.active.saturating_sub(1);
    }
    if let Some(b) = sl.cap.buf.take() {
        pool.put(b);
    }
    if let Some(b) = sl.icd.take() {
        pool.put(b);
    }
    sl.state = SlotState::Free;
    sl.plan = DataPlan::None;
    c.free_slots.push(s as u16);
}

fn buf_sge(buf: &IoBuf, pd: PdId, off: u32, len: u32) -> Result<(u64, u32), &'static str> {
    let keys = buf
        .keys(pd)
        .ok_or("data buffer is not registered with this device")?;
    if off as usize + len as usize > buf.capacity() {
        return Err("transfer beyond the data buffer");
    }
    Ok((buf.as_ptr() as u64 + u64::from(off), keys.lkey))
}

/// Post RDMA READ number `k` of slot `slot`'s data.
fn post_read(c: &mut Conn, pd: PdId, slot: u16, k: u8) -> Result<(), String> {
    let s = &c.slots[slot as usize];
    let DataPlan::Keyed { descs, n, .. } = s.plan else {
        return Err("no keyed descriptors".into());
    };
    let mut pieces = [Piece::default(); MAX_KEYED];
    let np = cut(&descs[..n as usize], s.cap.data_len, &mut pieces);
    // Zero-length descriptors have no piece; READ k is the k-th piece (reads_total counts
    // descriptors, so a missing piece is a no-op READ of nothing, signaled all the same).
    let buf = s.cap.buf.as_ref().ok_or("no data buffer")?;
    let wi = slot as usize * WRS_PER_SLOT + 1 + k as usize;
    let (addr, lkey, len, raddr, rkey) = match pieces[..np].get(k as usize) {
        Some(p) => {
            let d = descs[p.desc as usize];
            let (a, l) = buf_sge(buf, pd, p.buf_off, p.len)?;
            (a, l, p.len, d.addr, d.key)
        }
        None => {
            let (a, l) = buf_sge(buf, pd, 0, 0)?;
            (a, l, 0, descs[0].addr, descs[0].key)
        }
    };
    c.sges[wi].set(addr, len, lkey);
    c.wrs[wi].set_rdma(true, raddr, rkey, true);
    let id = WrId {
        kind: Kind::Read,
        generation: c.generation,
        conn: c.idx,
        slot,
        desc: k,
    };
    c.wrs[wi].set_wr_id(id.encode());
    let qp = c.id.qp().ok_or("no QP")?;
    // SAFETY: the SGE names `len` bytes of the slot's data buffer, registered with this PD
    // (checked by buf_sge); the buffer stays in the slot, untouched by the CPU, until this
    // READ's completion is polled (the slot is in state Reading until all its READs are back).
    unsafe { qp.post_send_slots(&mut c.wrs, &[wi as u32]) }.map_err(|e| e.to_string())
}

/// Post the response of slot `slot`: RDMA WRITEs of `resp.data_len` bytes of read data
/// (unsignaled), then the SEND (with Invalidate if the host asked), in one chain.
fn post_response(c: &mut Conn, pd: PdId, slot: u16, resp: Response) -> Result<(), String> {
    let s = slot as usize;
    c.rsp_mr
        .mem()
        .ok_or("no response buffer")?
        .write_at(s * Cqe::SIZE, &resp.cqe.encode())
        .map_err(|e| e.to_string())?;
    let plan = c.slots[s].plan;
    let base = s * WRS_PER_SLOT;
    let mut chain = [0u32; WRS_PER_SLOT];
    let mut n = 0;
    let conn = c.idx;
    let invalidate = match plan {
        DataPlan::Keyed {
            descs,
            n: nd,
            dir,
            invalidate,
            total,
        } => {
            if dir == Direction::ControllerToHost && resp.data_len > 0 {
                let len = resp.data_len.min(total);
                let mut pieces = [Piece::default(); MAX_KEYED];
                let np = cut(&descs[..nd as usize], len, &mut pieces);
                let buf = c.slots[s].cap.buf.as_ref().ok_or("no data buffer")?;
                for (k, p) in pieces[..np].iter().enumerate() {
                    let d = descs[p.desc as usize];
                    let (addr, lkey) = buf_sge(buf, pd, p.buf_off, p.len)?;
                    let wi = base + 1 + k;
                    c.sges[wi].set(addr, p.len, lkey);
                    c.wrs[wi].set_rdma(false, d.addr, d.key, false);
                    c.wrs[wi].set_wr_id(
                        WrId {
                            kind: Kind::Write,
                            generation: c.generation,
                            conn,
                            slot,
                            desc: k as u8,
                        }
                        .encode(),
                    );
                    chain[n] = wi as u32;
                    n += 1;
                }
            }
            invalidate
        }
        _ => None,
    };
    c.wrs[base].set_send(invalidate);
    c.wrs[base].set_wr_id(
        WrId {
            kind: Kind::Send,
            generation: c.generation,
            conn,
            slot,
            desc: 0,
        }
        .encode(),
    );
    chain[n] = base as u32;
    n += 1;
    let qp = c.id.qp().ok_or("no QP")?;
    // SAFETY: the SEND names this slot's 16-byte response in rsp_mr (registered, written
    // above, not touched again until the SEND completes); each WRITE names part of the slot's
    // data buffer (registered with this PD, checked by buf_sge), which stays in the slot until
    // the SEND after them completes (RC executes a QP's WRs in order).
    unsafe { qp.post_send_slots(&mut c.wrs, &chain[..n]) }.map_err(|e| e.to_string())
}

#[cfg(test)]
mod cmb_tests {
    //! The CMB data path's buffer and key choice. A mock stands in for the dma-buf MR: soft-RoCE
    //! (the only RDMA device on the test rig) refuses `ibv_reg_dmabuf_mr` (EOPNOTSUPP), so no
    //! real CMB registration can be made there. The mock is what a successful registration
    //! leaves behind: a `Domain::Cmb` region whose table holds the MR's keys for the device's
    //! PD. What is checked is the transport's side: which pool a command's buffer comes from,
    //! which lkey its SGEs carry, and where it goes back.
    use super::*;
    use nvmfd_p2p::mem::SharedPool;
    use std::ptr::NonNull;

    const PD: PdId = PdId(7);
    const HOST_KEYS: Keys = Keys {
        lkey: 0x1111,
        rkey: 0x2222,
    };
    /// What `ibv_reg_dmabuf_mr` would have returned for the CMB.
    const CMB_KEYS: Keys = Keys {
        lkey: 0xc3b0,
        rkey: 0xc3b1,
    };
    const CMB: Domain = Domain::Cmb { device: 5 };

    struct FakeRegistration(Keys);
    impl Registrar for FakeRegistration {
        fn register(&self, region: &mut Region) {
            region.register(PD, self.0, None);
        }
    }

    /// A "CMB": anonymous memory as a `Domain::Cmb` region, `n` buffers of 16 KiB.
    fn fake_cmb(n: usize) -> Arc<SharedPool> {
        let mem = Region::anonymous(n * 16384).unwrap();
        let (base, len) = (NonNull::new(mem.as_ptr()).unwrap(), mem.len());
        // SAFETY: the anonymous mapping lives as long as `mem`, handed to the region as its
        // owner; nothing else touches it.
        let region = unsafe { Region::external(base, len, CMB, Box::new(mem)) };
        SharedPool::new(vec![region], 16384, &[&FakeRegistration(CMB_KEYS)]).unwrap()
    }

    fn pools(cmb: &Arc<SharedPool>) -> Pools {
        let host = BufPool::with_registrars(
            8192,
            4,
            65536,
            2,
            4,
            vec![Box::new(FakeRegistration(HOST_KEYS))],
        );
        Pools::new(host, vec![cmb.cache_with(2, 4)])
    }

    #[test]
    fn a_cmb_command_gets_a_cmb_buffer_whose_sges_carry_the_dmabuf_mr_lkey() {
        let cmb = fake_cmb(4);
        let mut p = pools(&cmb);
        let got = p.try_get(CMB, 4096).expect("a CMB buffer");
        assert_eq!(got.fallback, None);
        let b = got.buf;
        assert_eq!(b.domain(), CMB);
        assert_eq!(b.keys(PD), Some(CMB_KEYS));
        let base = cmb.regions().next().unwrap().as_ptr() as usize;
        let at = b.as_ptr() as usize;
        assert!(
            at >= base && at + b.capacity() <= base + 4 * 16384,
            "inside the CMB region"
        );
        // The MR is registered at the mapping's CPU address: the SGE address is the buffer's.
        let (addr, lkey) = buf_sge(&b, PD, 512, 1024).unwrap();
        assert_eq!((addr, lkey), (at as u64 + 512, CMB_KEYS.lkey));
        assert!(
            buf_sge(&b, PD, 16384 - 100, 200).is_err(),
            "beyond the buffer"
        );
        assert!(
            buf_sge(&b, PdId(8), 0, 8).is_err(),
            "another PD has no keys for it"
        );
        // Host memory commands keep host buffers and host keys.
        let got = p.try_get(Domain::HostMemory, 4096).unwrap();
        assert_eq!(got.fallback, None, "host memory as placed is no fallback");
        let h = got.buf;
        assert_eq!(h.domain(), Domain::HostMemory);
        assert_eq!(buf_sge(&h, PD, 0, 8).unwrap().1, HOST_KEYS.lkey);
        // Buffers go back to their own pool.
        let cached = p.cmb[0].cached();
        p.put(b);
        assert_eq!(p.cmb[0].cached(), cached + 1);
        p.put(h);
        assert_eq!(p.cmb[0].cached(), cached + 1);
    }

    #[test]
    fn without_a_registered_cmb_or_with_it_exhausted_commands_fall_back_to_host_memory() {
        let cmb = fake_cmb(2);
        let mut p = pools(&cmb);
        // Another SSD's CMB, not registered with this device.
        let got = p.try_get(Domain::Cmb { device: 6 }, 4096).unwrap();
        assert_eq!(got.fallback, Some(Fallback::Unregistered));
        let other = got.buf;
        assert_eq!(other.domain(), Domain::HostMemory);
        assert_eq!(other.keys(PD), Some(HOST_KEYS));
        // Larger than a CMB buffer.
        let got = p.try_get(CMB, 65536).unwrap();
        assert_eq!(got.fallback, Some(Fallback::TooLarge));
        let big = got.buf;
        assert_eq!(big.domain(), Domain::HostMemory);
        // Exhausted.
        let a = p.try_get(CMB, 4096).unwrap();
        let b = p.try_get(CMB, 4096).unwrap();
        assert_eq!((a.fallback, b.fallback), (None, None));
        let (a, b) = (a.buf, b.buf);
        assert_eq!((a.domain(), b.domain()), (CMB, CMB));
        let got = p.try_get(CMB, 4096).unwrap();
        assert_eq!(got.fallback, Some(Fallback::Exhausted));
        let c = got.buf;
        assert_eq!(
            c.domain(),
            Domain::HostMemory,
            "fallback, never a failed I/O"
        );
        assert!(cmb.exhausted() > 0);
        for x in [other, big, a, b, c] {
            p.put(x);
        }
        assert_eq!(
            p.cmb[0].cached() + cmb.free_shared(),
            2,
            "both CMB buffers back"
        );
    }

    #[test]
    fn a_device_uses_the_cmb_pools_registered_with_it_and_their_shared_pd() {
        let cmb = fake_cmb(1);
        let list = [
            CmbPool::fake("mlx5_0", PD, cmb.clone()),
            CmbPool::fake("mlx5_1", PdId(9), cmb.clone()),
        ];
        let (mine, pd) = cmb_for_device(&list, "mlx5_0", |_| true);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].pd_id, PD);
        assert!(pd.is_none(), "the fake has no verbs PD");
        let (none, _) = cmb_for_device(&list, "rxe0", |_| true);
        assert!(none.is_empty());
    }

    #[test]
    fn the_domain_follows_the_namespace_decision_per_direction() {
        let staged = [
            RdmaStaging::default(),
            RdmaStaging::new(Some(CMB), None, "a"),
            RdmaStaging::new(Some(CMB), Some(CMB), "b"),
        ];
        let need = |bdev, dir| DataNeed {
            len: 4096,
            dir,
            bdev,
        };
        let (w, r) = (Direction::HostToController, Direction::ControllerToHost);
        assert_eq!(need_domain(&staged, &need(Some(0), w)), Domain::HostMemory);
        assert_eq!(need_domain(&staged, &need(Some(1), w)), CMB);
        assert_eq!(need_domain(&staged, &need(Some(1), r)), Domain::HostMemory);
        assert_eq!(need_domain(&staged, &need(Some(2), r)), CMB);
        assert_eq!(
            need_domain(&staged, &need(None, w)),
            Domain::HostMemory,
            "admin"
        );
        assert_eq!(need_domain(&staged, &need(Some(9), w)), Domain::HostMemory);
    }
}
