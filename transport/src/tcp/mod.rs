//! NVMe/TCP, controller side: one [`TcpConn`] per host connection, owned and polled by one reactor.
//!
//! The connection negotiates ICReq/ICResp and turns each CapsuleCmd PDU into a new command
//! ([`ConnEvent::Command`]) with its SGL parsed into a [`DataDesc`]: NVMe/TCP knows two descriptor
//! types, Data Block/Offset (in-capsule data) and Transport Data Block (R2T/H2CData, C2HData), and
//! refuses others. The core admits the command from that alone; only then does the connection
//! move data, when told to ([`TcpConn::fetch`]: a buffer from the pool, then the in-capsule copy
//! or an R2T), and says when it is in place ([`ConnEvent::DataReady`]). Responses
//! ([`TcpConn::respond`]) go out as C2HData and CapsuleResp PDUs. It checks every PDU; a malformed
//! one ends this connection (after a C2HTermReq saying why) and nothing else.
//!
//! [`TcpGroup`] is the reactor's [`crate::group::PollGroup`] over all its NVMe/TCP connections.

use crate::logsafe::{LogDecision, RateLimit};
use crate::proto::nvme::{Cqe, Direction, SglDescriptor};
use crate::proto::status::Status;
use crate::proto::tcp::{
    encode_capsule_resp, encode_term_req, fes, flags, parse_header, DataHeader, Digests,
    FatalError, Header, IcResp, R2t, COMMON_HEADER_SIZE,
};
use crate::staging::{P2pCounters, Staging};
use crate::{Capsule, DataDesc, DataNeed, Piece, Response, Transmit};
use nvmfd_config::DigestMode;
use nvmfd_p2p::mem::{BufPool, Domain, IoBuf};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

mod group;
mod socket;
pub use group::{TcpGroup, TcpGroupConfig, TcpIncoming};
pub use socket::Socket;

/// Transient Transport Error: what a command whose data digest failed gets. It is a generic
/// status (NVMe base 2.0, Generic Command Status Values: SCT 0h, SC 22h), retryable (no DNR). It is
/// not a path-related status (SCT 3h): Linux multipath treats those as a path failure and fails
/// over, where a digest error calls only for a retry of the command.
pub const TRANSIENT_TRANSPORT_ERROR: Status = Status {
    sct: 0,
    sc: 0x22,
    dnr: false,
};

/// In-capsule data the admin queue may carry whatever IOCCSZ says (IOCCSZ is for I/O queues
/// only; Linux sends admin commands with up to 8 KiB in the capsule, NVME_TCP_ADMIN_CCSZ).
const ADMIN_IN_CAPSULE: u32 = 8192;

/// How long the data an R2T asked for may take to arrive, all of it, from the R2T's dispatch. A
/// host that takes longer holds a large buffer others could use: its connection is ended. Far
/// longer than any live host needs for max_io_size bytes, far shorter than a host's I/O timeout.
pub const R2T_TIMEOUT: Duration = Duration::from_secs(10);

/// The part of the reactor's large-buffer pool one connection may hold, as a divisor: a quarter
/// (at least one buffer). A connection at its share waits for its own buffers to come back while
/// the rest of the pool keeps serving the reactor's other connections; with the default pool
/// (64 MiB of 128 KiB buffers) a quarter is still 128 buffers, a full default queue of large I/O.
/// It does not have to be: with a small pool a lone connection is throttled to its quarter, the
/// price of never letting one host take everything.
const POOL_SHARE_DIVISOR: usize = 4;

/// Per-connection budget for log lines the host can cause (digest errors, malformed PDUs): the
/// first few, then one in LOG_EVERY with the count of those left out.
const LOG_BURST: u32 = 8;
const LOG_EVERY: u32 = 1024;

/// What a connection needs to know of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct TcpParams {
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    /// Entries of the largest queue a host may connect (MQES + 1): a connection's command
    /// slots, allocated when it is set up. After Connect a host may have as many commands
    /// outstanding as its queue has entries (SQSIZE + 1), no more.
    pub max_queue_depth: u16,
    pub header_digest: DigestMode,
    pub data_digest: DigestMode,
    /// Flag successful reads' last C2HData SUCCESS and send no CapsuleResp.
    pub c2h_success: bool,
}

impl TcpParams {
    fn max_h2c_data(&self) -> u32 {
        self.max_io_size
    }

    fn max_in_capsule(&self) -> u32 {
        self.in_capsule_data_size.max(ADMIN_IN_CAPSULE)
    }
}

/// What the core needs to know of NVMe/TCP as configured in `transports.tcp`.
pub fn transport_info(cfg: &nvmfd_config::TcpTransport) -> crate::TransportInfo {
    crate::TransportInfo {
        kind: nvmfd_config::TransportKind::Tcp,
        in_capsule_data_size: cfg.in_capsule_data_size,
        admin_in_capsule_data_size: ADMIN_IN_CAPSULE,
        max_io_size: cfg.max_io_size,
        max_queue_depth: cfg.max_queue_depth,
        max_io_queues: cfg.max_io_queues,
        // SGLS: SGLs supported (bits 1:0 = 01b), address field as offset (bit 20): the two
        // descriptor types NVMe/TCP uses (Data Block/Offset in the capsule, Transport Data Block).
        sgls: 0x0010_0001,
        // IORCSZ: 16-byte responses; ICDOFF 0 (in-capsule data right after the SQE).
        iorcsz: 1,
        icdoff: 0,
        // MSDBD: one SGL descriptor per command (NVMe/TCP 1.0 allows no more).
        msdbd: 1,
        trtype: crate::proto::fabrics::trtype::TCP,
        // TSAS byte 0 SECTYPE 0: no security (NVMe/TCP 1.0, 3.6.1.1).
        tsas: [0; 16],
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("host closed the connection")]
    Closed,
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error, connection terminated: {0}")]
    Fatal(FatalError),
    #[error("host terminated the connection (fes {fes:#x}, fei {fei})")]
    HostTerminated { fes: u16, fei: u32 },
}

/// Why [`TcpConn::poll_timers`] ends a connection.
pub const R2T_TIMEOUT_REASON: &str = "data asked for by an R2T did not arrive in time";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Handed to the core for admission ([`ConnEvent::Command`]); no buffer yet unless its data
    /// came in the capsule.
    Admitting,
    /// Accepted, waiting for a large data buffer (all of the reactor's are lent).
    AwaitingBuffer,
    /// Waiting for H2CData after an R2T.
    AwaitingData,
    /// Data complete: waiting to be handed to the core ([`ConnEvent::DataReady`]).
    Ready,
    /// The core (or a block device) has it.
    Executing,
    /// Answered; its data is still being sent from its buffer.
    Sending,
}

/// A piece of the send queue: bytes of `tx` (headers, responses, R2Ts) or a command's data
/// sent from its own buffer, so read data is never copied behind its header.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Tx(usize),
    Slot { slot: u16, len: usize },
}

/// Most pieces handed to one writev.
const MAX_IOV: usize = 64;

struct Slot {
    capsule: Capsule,
    /// The SGL as this transport parsed it (what admission is asked about).
    desc: DataDesc,
    state: SlotState,
    received: u32,
    /// A data digest failed: answer with a transient transport error instead of executing.
    digest_failed: bool,
    /// The buffer is a large one, counted in the connection's share of the pool.
    large: bool,
    /// When the R2T went out (the connection's coarse clock, see [`TcpConn::poll_timers`]).
    r2t_at: Instant,
}

/// H2CData payloads at least this large skip the receive buffer (one copy less per byte).
const DIRECT_MIN: usize = 16 * 1024;

/// Most bytes one read takes into the receive buffer while H2CData is due.
const RX_WHILE_DATA: usize = 8 * 1024;

/// An H2CData PDU whose header is handled and whose payload is read in place.
struct Direct {
    dh: DataHeader,
    /// Payload bytes already in the command's buffer.
    got: usize,
    digest: [u8; 4],
    digest_len: usize,
    digest_got: usize,
}

enum DirectStep {
    /// The PDU is complete.
    Done,
    /// Some bytes came, and the socket is empty for now.
    Partial,
    /// Nothing came.
    Blocked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitIcReq,
    Ready,
    /// A fatal error was found; only the termination request is still being sent.
    Terminating,
}

/// Everything but the receive buffer, so PDUs borrowed from it can be handled with `&mut self`.
struct Inner {
    params: TcpParams,
    pool: Rc<RefCell<BufPool>>,
    /// The reactor's CMB staging table: write data of staged namespaces takes its buffers
    /// there (`crate::staging`).
    staging: Rc<RefCell<Staging>>,
    /// This queue pair's P2P counters.
    p2p: P2pCounters,
    phase: Phase,
    digests: Digests,
    /// C2H data alignment the host asked for ((HPDA + 1) * 4 bytes).
    c2h_align: usize,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// New commands and commands whose data is in place, in the order they became so.
    events: VecDeque<SlotEvent>,
    /// Commands waiting for a large buffer, oldest first; this connection's id in the reactor's
    /// queue for them, and whether it has a place in that queue now (at most one: connections
    /// take turns, one buffer each).
    waiting: VecDeque<u16>,
    waiter_id: u32,
    pool_queued: bool,
    /// Large buffers this connection's commands hold, and the most they may.
    large_held: usize,
    large_share: usize,
    /// Commands the host may have outstanding (its queue's entries once connected).
    queue_limit: usize,
    /// In-capsule data a command may carry on this queue (admin or I/O, once connected).
    in_capsule_limit: u32,
    /// Whether Connect has told this connection its queue (see [`TcpConn::set_queue`]).
    queue_known: bool,
    /// The time of the last timer tick: R2Ts are stamped with it, never with a clock read.
    clock: Instant,
    log: RateLimit,
    /// Commands sent an R2T whose data has not all come.
    awaiting_data: u32,
    /// Bytes to send; `tx[tx_off..tx_marked]` is covered by `segs`, the rest not yet.
    tx: Vec<u8>,
    tx_off: usize,
    tx_marked: usize,
    segs: VecDeque<Seg>,
    /// Bytes of the first segment already sent.
    front_off: usize,
}

/// One NVMe/TCP connection over a non-blocking stream.
pub struct TcpConn<S> {
    stream: S,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    inner: Inner,
    stats: ConnStats,
    /// A large H2CData payload being received in place.
    direct: Option<Direct>,
    /// The last read left the socket empty (it hit EAGAIN, or returned less than it could take),
    /// so reading again in the same poll would only return EAGAIN.
    drained: bool,
}

/// What a connection has for the core (see [`TcpConn::next_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// A new command for admission; answer with [`TcpConn::fetch`] or [`TcpConn::respond`] (or,
    /// for a command without data, execute it and then respond).
    Command {
        slot: u16,
        sqe: crate::proto::nvme::Sqe,
        desc: DataDesc,
    },
    /// The data [`TcpConn::fetch`] asked for is in the command's buffer.
    DataReady { slot: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotEvent {
    New(u16),
    Ready(u16),
}

/// Socket-level counters of one connection (plain integers: one owner, read on close).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnStats {
    /// recv calls, and how many found nothing.
    pub recv_calls: u64,
    pub recv_empty: u64,
    pub send_calls: u64,
    /// Commands handed to the core.
    pub commands: u64,
}

impl<S: Read + Transmit> TcpConn<S> {
    /// Wrap an accepted, non-blocking stream; data buffers come from `pool` (the reactor's);
    /// no namespace's data is staged in a CMB.
    pub fn new(stream: S, params: TcpParams, pool: Rc<RefCell<BufPool>>) -> Self {
        Self::with_staging(
            stream,
            params,
            pool,
            Rc::new(RefCell::new(Staging::new(&[]))),
        )
    }

    /// [`TcpConn::new`], write data of the namespaces `staging` stages going to their CMB.
    pub fn with_staging(
        stream: S,
        params: TcpParams,
        pool: Rc<RefCell<BufPool>>,
        staging: Rc<RefCell<Staging>>,
    ) -> Self {
        // Slots: the largest queue a host may connect. Once it has, the host may use as many
        // as its queue has entries; the admin queue's held async event requests count among
        // them, as they do on the host's side.
        let nslots = (params.max_queue_depth as usize).max(1);
        let clock = Instant::now();
        let slots = (0..nslots)
            .map(|_| Slot {
                capsule: Capsule {
                    sqe: Default::default(),
                    buf: None,
                    data_len: 0,
                    lent: None,
                },
                desc: DataDesc::None,
                state: SlotState::Free,
                received: 0,
                digest_failed: false,
                large: false,
                r2t_at: clock,
            })
            .collect();
        let rx_cap = params.max_io_size.max(params.max_in_capsule()) as usize + 64 * 1024;
        let (waiter_id, large_share) = {
            let mut p = pool.borrow_mut();
            (p.waiter_id(), (p.large_limit() / POOL_SHARE_DIVISOR).max(1))
        };
        TcpConn {
            stream,
            rx: vec![0; rx_cap],
            rx_start: 0,
            rx_end: 0,
            inner: Inner {
                params,
                pool,
                staging,
                p2p: P2pCounters::default(),
                phase: Phase::AwaitIcReq,
                digests: Digests::default(),
                c2h_align: 4,
                slots,
                free: (0..nslots as u16).rev().collect(),
                events: VecDeque::with_capacity(2 * nslots),
                waiting: VecDeque::with_capacity(nslots),
                waiter_id,
                pool_queued: false,
                large_held: 0,
                large_share,
                // Before Connect completes the host may send nothing but the Connect itself
                // (NVMe-oF: Connect creates the queue; until it succeeds no other command can
                // be on it), so nobody gets slots or buffers on a connection that is not a
                // queue yet.
                queue_limit: 1,
                // Until Connect says which queue this is: the larger of the two (Connect's own
                // 1 KiB of data must fit either way).
                in_capsule_limit: params.max_in_capsule(),
                queue_known: false,
                clock,
                log: RateLimit::new(LOG_BURST, LOG_EVERY),
                awaiting_data: 0,
                tx: Vec::with_capacity(64 * 1024),
                tx_off: 0,
                tx_marked: 0,
                segs: VecDeque::with_capacity(4 * nslots),
                front_off: 0,
            },
            stats: ConnStats::default(),
            drained: false,
            direct: None,
        }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// Read what the socket has and process every whole PDU. Returns whether anything happened.
    pub fn poll_recv(&mut self) -> Result<bool, ConnError> {
        if self.inner.phase == Phase::Terminating {
            return Ok(false);
        }
        // Commands held for want of a buffer go first: buffers may have come back since.
        let mut progress = self.inner.serve_waiting();
        self.drained = false;
        loop {
            // A large H2CData payload goes from the socket straight into its command's buffer.
            if self.direct.is_some() {
                match self.read_direct()? {
                    DirectStep::Done => {
                        progress = true;
                        continue;
                    }
                    DirectStep::Partial => {
                        progress = true;
                        self.drained = true;
                        break;
                    }
                    DirectStep::Blocked => {
                        self.drained = true;
                        break;
                    }
                }
            }
            // Handle every whole PDU already buffered.
            loop {
                let buf = &self.rx[self.rx_start..self.rx_end];
                let max_data = self
                    .inner
                    .params
                    .max_h2c_data()
                    .max(self.inner.params.max_in_capsule());
                // The header is parsed once: a whole PDU is handled, a partial large H2CData
                // has its data read in place from here on.
                let frame = match parse_header(buf, self.inner.digests, max_data) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        let quote_len = buf
                            .len()
                            .min(COMMON_HEADER_SIZE.max(buf.get(2).map_or(0, |&h| h as usize)));
                        let quote = buf[..quote_len].to_vec();
                        return Err(self.inner.terminate(e, &quote));
                    }
                };
                if let Some(pdu) = frame.pdu(buf) {
                    let len = pdu.len;
                    let res =
                        self.inner
                            .handle(pdu.header, pdu.data, pdu.data_digest_ok, &buf[..len]);
                    self.rx_start += len;
                    progress = true;
                    res?;
                    continue;
                }
                if let (Header::H2CData(dh), true) = (
                    frame.header,
                    frame.data_len >= DIRECT_MIN && buf.len() >= frame.data_offset,
                ) {
                    // Check it now; its data then bypasses the receive buffer.
                    self.inner
                        .h2c_check(dh, frame.ch.flags, &buf[..frame.ch.hlen as usize])?;
                    let have = &buf[frame.data_offset..];
                    let got = have.len().min(frame.data_len);
                    let slot = &mut self.inner.slots[dh.ttag as usize];
                    if let Some(b) = slot.capsule.buf.as_mut() {
                        let at = dh.offset as usize;
                        b.as_mut_slice()[at..at + got].copy_from_slice(&have[..got]);
                    }
                    let mut d = Direct {
                        dh,
                        got,
                        digest: [0; 4],
                        digest_len: frame.data_digest_len,
                        digest_got: have.len() - got,
                    };
                    d.digest[..d.digest_got].copy_from_slice(&have[got..]);
                    self.direct = Some(d);
                    self.rx_start = self.rx_end;
                    progress = true;
                }
                break;
            }
            if self.direct.is_some() {
                continue;
            }
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
            } else if self.rx_start > 0 {
                self.rx.copy_within(self.rx_start..self.rx_end, 0);
                self.rx_end -= self.rx_start;
                self.rx_start = 0;
            }
            if self.drained {
                break;
            }
            if self.rx_end == self.rx.len() {
                // The framer bounds PDU sizes below the buffer size, so a full buffer always
                // holds a whole PDU and was drained above.
                break;
            }
            self.stats.recv_calls += 1;
            // While H2CData is due, read little at a time: a large payload then mostly goes
            // straight to its command's buffer (read_direct) instead of through this one.
            let mut room = self.rx.len() - self.rx_end;
            if self.inner.awaiting_data > 0 {
                room = room.min(RX_WHILE_DATA);
            }
            match self
                .stream
                .read(&mut self.rx[self.rx_end..self.rx_end + room])
            {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => {
                    self.rx_end += n;
                    progress = true;
                    // A short read emptied the socket: reading again now would only say EAGAIN.
                    self.drained = n < room;
                }
                Err(e) if would_block(&e) => {
                    self.stats.recv_empty += 1;
                    self.drained = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        Ok(progress)
    }

    /// Continue reading a large H2CData payload (then its data digest) into the command's buffer.
    fn read_direct(&mut self) -> Result<DirectStep, ConnError> {
        loop {
            let Some(d) = self.direct.as_mut() else {
                return Ok(DirectStep::Done);
            };
            let total = d.dh.length as usize;
            let dst: &mut [u8] = if d.got < total {
                let at = d.dh.offset as usize;
                match self.inner.slots[d.dh.ttag as usize].capsule.buf.as_mut() {
                    Some(b) => &mut b.as_mut_slice()[at + d.got..at + total],
                    None => {
                        return Err(ConnError::Io(std::io::Error::other(
                            "transfer buffer missing",
                        )))
                    }
                }
            } else if d.digest_got < d.digest_len {
                &mut d.digest[d.digest_got..d.digest_len]
            } else {
                let dh = d.dh;
                let ok = d.digest_len == 0
                    || self.inner.slots[dh.ttag as usize]
                        .capsule
                        .buf
                        .as_ref()
                        .is_some_and(|b| {
                            let at = dh.offset as usize;
                            crc32c::crc32c(&b.as_slice()[at..at + total])
                                == u32::from_le_bytes(d.digest)
                        });
                self.direct = None;
                self.inner.h2c_done(dh, ok);
                return Ok(DirectStep::Done);
            };
            let want = dst.len();
            self.stats.recv_calls += 1;
            match self.stream.read(dst) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => {
                    if d.got < total {
                        d.got += n;
                    } else {
                        d.digest_got += n;
                    }
                    if n < want {
                        return Ok(DirectStep::Partial);
                    }
                }
                Err(e) if would_block(&e) => {
                    self.stats.recv_empty += 1;
                    return Ok(DirectStep::Blocked);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
    }

    /// Write queued PDUs (one writev for up to 64 pieces). Returns whether anything was written.
    pub fn poll_send(&mut self) -> Result<bool, ConnError> {
        let inner = &mut self.inner;
        inner.mark_tx();
        let mut progress = false;
        while !inner.segs.is_empty() {
            let mut iov = [Piece::EMPTY; MAX_IOV];
            let n_iov = inner.segs.len().min(MAX_IOV);
            let mut cur = inner.tx_off;
            for (i, seg) in inner.segs.iter().take(MAX_IOV).enumerate() {
                let skip = if i == 0 { inner.front_off } else { 0 };
                iov[i] = match *seg {
                    Seg::Tx(len) => {
                        let l = len - skip;
                        cur += l;
                        Piece::bytes(&inner.tx[cur - l..cur])
                    }
                    Seg::Slot { slot, len } => {
                        inner.slots[slot as usize].capsule.data_piece(skip, len)
                    }
                };
            }
            self.stats.send_calls += 1;
            match self.stream.transmit(&iov[..n_iov]) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => {
                    inner.advance(n);
                    progress = true;
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        if inner.segs.is_empty() {
            inner.tx.clear();
            inner.tx_off = 0;
            inner.tx_marked = 0;
        }
        Ok(progress)
    }

    /// This queue pair's P2P counters (bytes through the CMB and host memory, fallbacks).
    pub fn p2p_counters(&self) -> P2pCounters {
        self.inner.p2p
    }

    /// Whether read data may come lent from a block device (sent as it is, never read here):
    /// not when data digests are on, since computing one reads the data.
    #[inline]
    pub fn takes_lent_data(&self) -> bool {
        !self.inner.digests.data
    }

    /// Whether commands are waiting for a data buffer (the reactor keeps polling this connection).
    pub fn awaiting_buffers(&self) -> bool {
        !self.inner.waiting.is_empty()
    }

    /// Connect made this connection queue `qid` with `entries` entries (SQSIZE + 1). From now on
    /// the host may have at most that many commands outstanding (a host with more violates SQ
    /// flow control: the connection is terminated), and in-capsule data is bounded by the
    /// queue's capsule size: IOCCSZ on an I/O queue, 8 KiB on the admin queue.
    pub fn set_queue(&mut self, qid: u16, entries: u16) {
        let inner = &mut self.inner;
        inner.queue_known = true;
        inner.queue_limit = (entries as usize).clamp(1, inner.slots.len());
        inner.in_capsule_limit = if qid == 0 {
            ADMIN_IN_CAPSULE
        } else {
            inner.params.in_capsule_data_size
        };
    }

    /// Whether [`Self::set_queue`] was called.
    pub fn queue_known(&self) -> bool {
        self.inner.queue_known
    }

    /// The reactor's timer tick (every few hundred polls, with a clock it read once for all its
    /// connections): R2Ts sent from now on are stamped with `now`, and a connection whose host
    /// has left an R2T unanswered for [`R2T_TIMEOUT`] is to be closed (returns why). The data
    /// path itself never reads the clock.
    pub fn poll_timers(&mut self, now: Instant) -> Option<&'static str> {
        let inner = &mut self.inner;
        inner.clock = now;
        if inner.awaiting_data == 0 || inner.phase == Phase::Terminating {
            return None;
        }
        let late = inner.slots.iter().find(|s| {
            s.state == SlotState::AwaitingData
                && now.saturating_duration_since(s.r2t_at) > R2T_TIMEOUT
        })?;
        // The reactor logs the close (once, with the peer); this adds which command.
        debug!(
            cid = late.capsule.sqe.cid,
            timeout_s = R2T_TIMEOUT.as_secs(),
            "R2T unanswered"
        );
        inner.phase = Phase::Terminating;
        Some(R2T_TIMEOUT_REASON)
    }

    /// Whether anything queued is not yet written.
    pub fn has_unsent(&self) -> bool {
        !self.inner.segs.is_empty() || self.inner.tx.len() > self.inner.tx_marked
    }

    /// The next new command or command whose data is in place, in arrival order. None once the
    /// connection is terminating: after a C2HTermReq nothing else goes to the host.
    pub fn next_event(&mut self) -> Option<ConnEvent> {
        let inner = &mut self.inner;
        if inner.phase == Phase::Terminating {
            return None;
        }
        Some(match inner.events.pop_front()? {
            SlotEvent::New(slot) => {
                self.stats.commands += 1;
                let s = &inner.slots[slot as usize];
                ConnEvent::Command {
                    slot,
                    sqe: s.capsule.sqe,
                    desc: s.desc,
                }
            }
            SlotEvent::Ready(slot) => {
                inner.slots[slot as usize].state = SlotState::Executing;
                ConnEvent::DataReady { slot }
            }
        })
    }

    /// Whether [`Self::next_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.inner.events.is_empty()
    }

    /// The core admitted command `slot` and needs `need`: take a buffer (the command may wait
    /// for a large one, in arrival order, see `serve_waiting`), then copy in-capsule data, send
    /// an R2T (host-to-controller data not in the capsule), or nothing (controller-to-host).
    /// [`ConnEvent::DataReady`] follows once the data is in place.
    pub fn fetch(&mut self, slot: u16, need: DataNeed) {
        self.inner.fetch(slot, need, false);
    }

    /// [`Self::fetch`], except that data in place at once (in-capsule data; a small buffer for
    /// controller-to-host data) is not queued as [`ConnEvent::DataReady`]: it returns true and
    /// the command is the caller's to execute now, as after `DataReady`.
    pub fn fetch_ready(&mut self, slot: u16, need: DataNeed) -> bool {
        self.inner.fetch(slot, need, true)
    }

    /// The command's capsule (its SQE, and once its data is in place its buffer).
    #[inline]
    pub fn capsule_mut(&mut self, slot: u16) -> &mut Capsule {
        &mut self.inner.slots[slot as usize].capsule
    }

    /// Send the response for `slot` (data first for controller-to-host commands) and free it,
    /// whether the core answered at admission or after executing.
    pub fn respond(&mut self, slot: u16, resp: Response) {
        let s = &mut self.inner.slots[slot as usize];
        debug_assert!(
            matches!(
                s.state,
                SlotState::Admitting | SlotState::Ready | SlotState::Executing
            ),
            "{:?}",
            s.state
        );
        s.state = SlotState::Executing;
        self.inner.complete(slot, resp);
    }
}

impl<S> Drop for TcpConn<S> {
    /// Buffers of commands still held by this connection go back to the reactor's pool (those a
    /// block device holds come back through the reactor when the I/O completes).
    fn drop(&mut self) {
        let (events, suppressed) = self.inner.log.counts();
        if suppressed > 0 {
            warn!(
                events,
                suppressed, "connection closed; some of its host-caused log lines were left out"
            );
        }
        let mut pool = self.inner.pool.borrow_mut();
        let mut staging = self.inner.staging.borrow_mut();
        if self.inner.pool_queued {
            pool.forget(self.inner.waiter_id);
        }
        for s in &mut self.inner.slots {
            if let Some(b) = s.capsule.buf.take().and_then(|b| staging.put(b)) {
                pool.put(b);
            }
        }
    }
}

impl Inner {
    /// Count one log line the host caused: Some(lines left out since the last one written) if
    /// this one is to be written, None if it is left out (and counted).
    fn log_gate(&mut self) -> Option<u64> {
        match self.log.event() {
            LogDecision::Log => Some(0),
            LogDecision::LogWithSuppressed(n) => Some(n),
            LogDecision::Suppress => None,
        }
    }

    /// Cover bytes appended to `tx` since the last mark with a segment.
    fn mark_tx(&mut self) {
        let n = self.tx.len() - self.tx_marked;
        if n == 0 {
            return;
        }
        self.tx_marked = self.tx.len();
        if let Some(Seg::Tx(len)) = self.segs.back_mut() {
            *len += n;
        } else {
            self.segs.push_back(Seg::Tx(n));
        }
    }

    /// `n` bytes from the front of the send queue were written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(&seg) = self.segs.front() else {
                return;
            };
            let len = match seg {
                Seg::Tx(len) | Seg::Slot { len, .. } => len,
            };
            let step = n.min(len - self.front_off);
            if let Seg::Tx(_) = seg {
                self.tx_off += step;
            }
            self.front_off += step;
            n -= step;
            if self.front_off == len {
                self.segs.pop_front();
                self.front_off = 0;
                if let Seg::Slot { slot, .. } = seg {
                    self.release(slot);
                }
            }
        }
    }

    /// A buffer back to the pool it came from: a CMB cache or the reactor's host pool.
    fn put_buf(&mut self, buf: IoBuf) {
        // Host memory is the pool's (most buffers: one check, not a look through the table).
        let buf = if buf.domain() == Domain::HostMemory {
            Some(buf)
        } else {
            self.staging.borrow_mut().put(buf)
        };
        if let Some(buf) = buf {
            self.pool.borrow_mut().put(buf);
        }
    }

    /// The command in `slot` is over: its buffer goes back to the pool, the slot to the free list.
    fn release(&mut self, slot: u16) {
        let s = &mut self.slots[slot as usize];
        if std::mem::take(&mut s.large) {
            self.large_held -= 1;
        }
        s.capsule.lent = None;
        s.state = SlotState::Free;
        if let Some(buf) = s.capsule.buf.take() {
            self.put_buf(buf);
        }
        self.free.push(slot);
    }

    fn handle(
        &mut self,
        header: Header,
        data: &[u8],
        digest_ok: bool,
        raw: &[u8],
    ) -> Result<(), ConnError> {
        let hdr = &raw[..raw.len().min(raw.get(2).map_or(0, |&h| h as usize))];
        match (self.phase, header) {
            (Phase::AwaitIcReq, Header::IcReq(req)) => {
                if req.pfv != 0 {
                    return Err(self.terminate(
                        fatal(
                            fes::UNSUPPORTED_PARAMETER,
                            8,
                            "unsupported PDU format version",
                        ),
                        hdr,
                    ));
                }
                if req.hpda > 31 {
                    return Err(self.terminate(
                        fatal(fes::INVALID_HEADER_FIELD, 10, "HPDA out of range"),
                        hdr,
                    ));
                }
                let grant = |asked: bool, mode: DigestMode| asked && mode != DigestMode::Off;
                let digests = Digests {
                    header: grant(req.digests.header, self.params.header_digest),
                    data: grant(req.digests.data, self.params.data_digest),
                };
                if (self.params.header_digest == DigestMode::Required && !digests.header)
                    || (self.params.data_digest == DigestMode::Required && !digests.data)
                {
                    warn!(
                        asked_header = req.digests.header,
                        asked_data = req.digests.data,
                        "host did not enable a digest this target requires"
                    );
                    return Err(self.terminate(
                        fatal(fes::UNSUPPORTED_PARAMETER, 11, "digest required by target"),
                        hdr,
                    ));
                }
                IcResp {
                    pfv: 0,
                    cpda: 0,
                    digests,
                    maxh2cdata: self.params.max_h2c_data(),
                }
                .encode(&mut self.tx);
                self.digests = digests;
                self.c2h_align = (req.hpda as usize + 1) * 4;
                self.phase = Phase::Ready;
                debug!(?digests, hpda = req.hpda, "NVMe/TCP connection initialized");
                Ok(())
            }
            (Phase::AwaitIcReq, _) | (Phase::Ready, Header::IcReq(_)) => Err(self.terminate(
                fatal(fes::PDU_SEQUENCE_ERROR, 0, "PDU out of sequence"),
                hdr,
            )),
            (Phase::Ready, Header::CapsuleCmd(sqe)) => self.capsule(sqe, data, digest_ok, hdr),
            (Phase::Ready, Header::H2CData(dh)) => self.h2c_data(dh, raw[1], data, digest_ok, hdr),
            (_, Header::TermReq { fes, fei }) => {
                self.phase = Phase::Terminating;
                Err(ConnError::HostTerminated { fes, fei })
            }
            _ => Err(self.terminate(
                fatal(
                    fes::INVALID_HEADER_FIELD,
                    0,
                    "PDU type not valid from a host",
                ),
                hdr,
            )),
        }
    }

    fn capsule(
        &mut self,
        sqe: crate::proto::nvme::Sqe,
        data: &[u8],
        digest_ok: bool,
        hdr: &[u8],
    ) -> Result<(), ConnError> {
        // NVMe-oF 1.1, submission queue flow control: a host keeps at most as many commands
        // outstanding as its queue has entries. One that sends more breaks the protocol; its
        // connection ends rather than this side finding room it never promised.
        let in_use = self.slots.len() - self.free.len();
        let slot = match self.free.pop() {
            Some(s) if in_use < self.queue_limit => s,
            other => {
                if let Some(s) = other {
                    self.free.push(s);
                }
                return Err(self.terminate(
                    fatal(fes::PDU_SEQUENCE_ERROR, 0, "host exceeded its queue size"),
                    hdr,
                ));
            }
        };
        let dir = sqe.data_direction();
        let sgl = sqe.dptr;
        let s = &mut self.slots[slot as usize];
        s.capsule.sqe = sqe;
        s.capsule.data_len = 0;
        s.capsule.buf = None;
        s.received = 0;
        s.digest_failed = !digest_ok;
        s.state = SlotState::Admitting;
        let in_capsule_desc =
            sgl.identifier == (SglDescriptor::DATA_BLOCK << 4 | SglDescriptor::SUBTYPE_OFFSET);
        // The SGL as NVMe/TCP knows it (NVMe/TCP 1.0, command capsules): in-capsule data is a
        // Data Block descriptor with the Offset subtype, whose address is an offset into the
        // capsule's data (ICDOFF 0: the PDU's data; SGLS bit 20); data moved by R2T/H2CData or
        // C2HData is a Transport SGL Data Block with the transport subtype (type 5h, subtype
        // Ah). Any other type or subtype is one this controller does not support. Whether the
        // length, direction and offset are right is the core's to say.
        let desc = if !data.is_empty() || (in_capsule_desc && sgl.length != 0) {
            if in_capsule_desc {
                DataDesc::InCapsule {
                    offset: sgl.address,
                    len: sgl.length,
                    carried: data.len() as u32,
                }
            } else {
                DataDesc::Refused(Status::SGL_DESCRIPTOR_TYPE_INVALID)
            }
        } else if dir == Direction::None || sgl.length == 0 {
            DataDesc::None
        } else if sgl.identifier
            == (SglDescriptor::TRANSPORT_DATA_BLOCK << 4 | SglDescriptor::SUBTYPE_TRANSPORT)
        {
            DataDesc::Remote {
                len: sgl.length,
                descriptors: 1,
            }
        } else {
            DataDesc::Refused(Status::SGL_DESCRIPTOR_TYPE_INVALID)
        };
        self.slots[slot as usize].desc = desc;
        if let DataDesc::InCapsule {
            offset,
            len,
            carried,
        } = desc
        {
            // A digest error in the capsule's data: answered here, with a retryable transient
            // transport error; the core never sees the command.
            if !digest_ok {
                self.make_ready(slot);
                return Ok(());
            }
            // The data must be kept now (the receive buffer moves on). It is copied only where
            // the core can accept it: within the queue's capsule size and within what came (the
            // core refuses anything else, before any buffer is taken). Being here already, it gets
            // a buffer even past the pool's cap; a large one counts in this connection's share.
            let limit = self.in_capsule_limit as u64;
            // The offset is the host's 64-bit SGL address field: any value may come.
            let end = offset.saturating_add(len as u64);
            if dir == Direction::HostToController
                && offset <= limit
                && carried as u64 <= limit
                && end <= carried as u64
            {
                let data = &data[offset as usize..end as usize];
                let mut pool = self.pool.borrow_mut();
                let large = !pool.is_small(data.len());
                let mut buf = pool.get(data.len());
                drop(pool);
                buf.as_mut_slice()[..data.len()].copy_from_slice(data);
                let s = &mut self.slots[slot as usize];
                s.capsule.buf = Some(buf);
                s.capsule.data_len = data.len() as u32;
                s.large = large;
                self.large_held += large as usize;
            }
        }
        self.events.push_back(SlotEvent::New(slot));
        Ok(())
    }

    /// See [`TcpConn::fetch`] and, with `direct`, [`TcpConn::fetch_ready`]: returns whether
    /// the data is in place and the command the caller's to execute (never without `direct`).
    fn fetch(&mut self, slot: u16, need: DataNeed, direct: bool) -> bool {
        let s = &mut self.slots[slot as usize];
        debug_assert_eq!(s.state, SlotState::Admitting);
        if let DataDesc::InCapsule { .. } = s.desc {
            // Copied when the capsule came (the core admits no in-capsule data that was not).
            if s.capsule.buf.is_none() || s.capsule.data_len < need.len {
                let sqe = s.capsule.sqe;
                s.state = SlotState::Executing;
                self.complete(slot, error_response(&sqe, Status::DATA_SGL_LENGTH_INVALID));
                return false;
            }
            self.stage_in_capsule(slot, need);
            return self.in_place(slot, direct);
        }
        s.capsule.data_len = need.len;
        // Write data of a namespace staged in its SSD's CMB is received straight into a CMB
        // buffer (the whole transfer: one buffer per command, so its data is wholly in the CMB).
        // Without a free one it takes host memory below, at once (crate::staging says why).
        // Not with data digests: the digest is computed over the received data, and reading a
        // BAR back across PCIe costs far more than the copy staging saves.
        let len = need.len as usize;
        if need.dir == Direction::HostToController && !self.digests.data {
            let cmb = (self.staging.borrow_mut()).take_write(need.bdev, len, &mut self.p2p);
            if let Some(buf) = cmb {
                self.slots[slot as usize].capsule.buf = Some(buf);
                return self.start(slot, direct);
            }
        }
        (self.staging.borrow_mut()).count_host(need.bdev, len, &mut self.p2p);
        // The buffer comes from the reactor's pool and goes back when the command completes.
        // A command needing a large one waits while the pool has none or this connection holds
        // its share; connections take turns for them (see `serve_waiting`). An R2T (for a
        // write) is sent only once the command has its buffer, so H2CData in the stream always
        // has a buffer to land in and reading the stream never stalls.
        let need = need.len as usize;
        if self.pool.borrow().is_small(need) {
            let buf = self.pool.borrow_mut().get(need);
            self.slots[slot as usize].capsule.buf = Some(buf);
            self.start(slot, direct)
        } else {
            self.slots[slot as usize].state = SlotState::AwaitingBuffer;
            self.waiting.push_back(slot);
            self.serve_waiting();
            false
        }
    }

    /// In-capsule write data came with the capsule, before admission named its namespace, so it
    /// is in host memory: a staged namespace's moves into a CMB buffer now (the copy the SSD's
    /// bounce would otherwise make), else it is counted as host memory.
    fn stage_in_capsule(&mut self, slot: u16, need: DataNeed) {
        let len = self.slots[slot as usize].capsule.data_len as usize;
        // No host buffer: nothing to move (and a CMB buffer taken now would be lost).
        if need.dir != Direction::HostToController
            || self.slots[slot as usize].capsule.buf.is_none()
        {
            return;
        }
        let cmb = (self.staging.borrow_mut()).take_write(need.bdev, len, &mut self.p2p);
        let Some(mut cmb) = cmb else {
            (self.staging.borrow_mut()).count_host(need.bdev, len, &mut self.p2p);
            return;
        };
        let s = &mut self.slots[slot as usize];
        let host = s.capsule.buf.take().expect("checked above");
        cmb.as_mut_slice()[..len].copy_from_slice(&host.as_slice()[..len]);
        s.capsule.buf = Some(cmb);
        if std::mem::take(&mut s.large) {
            self.large_held -= 1;
        }
        self.put_buf(host);
    }

    /// Give large buffers to waiting commands, oldest first, while this connection is under its
    /// share and the pool has one for it. Connections take turns: one that finds the pool empty
    /// (or others already waiting) takes one place in the reactor's queue and, served, goes to
    /// the back again for its next command. One at its share takes no place at all, so it never
    /// holds up the queue; its own buffers coming back let it go on. Returns whether any started.
    fn serve_waiting(&mut self) -> bool {
        let mut progress = false;
        while let Some(&slot) = self.waiting.front() {
            if self.large_held >= self.large_share {
                // (In-capsule data can take it there while this connection has a place in
                // the queue: give the place up rather than block everyone behind it.)
                if std::mem::take(&mut self.pool_queued) {
                    self.pool.borrow_mut().forget(self.waiter_id);
                }
                break;
            }
            let mut pool = self.pool.borrow_mut();
            let buf = if self.pool_queued {
                pool.take_turn(self.waiter_id)
            } else {
                let need = self.slots[slot as usize].capsule.data_len as usize;
                pool.try_get(need)
            };
            let Some(buf) = buf else {
                if !self.pool_queued {
                    pool.wait(self.waiter_id);
                    self.pool_queued = true;
                }
                break;
            };
            drop(pool);
            self.pool_queued = false;
            self.waiting.pop_front();
            self.large_held += 1;
            let s = &mut self.slots[slot as usize];
            s.capsule.buf = Some(buf);
            s.large = true;
            self.start(slot, false);
            progress = true;
        }
        progress
    }

    /// A command with its buffer: ready to execute (see [`Self::in_place`]), or (a write)
    /// waiting for data after an R2T.
    fn start(&mut self, slot: u16, direct: bool) -> bool {
        let s = &mut self.slots[slot as usize];
        let sqe = s.capsule.sqe;
        if sqe.data_direction() != Direction::HostToController || s.capsule.data_len == 0 {
            return self.in_place(slot, direct);
        }
        s.state = SlotState::AwaitingData;
        s.r2t_at = self.clock;
        self.awaiting_data += 1;
        R2t {
            cccid: sqe.cid,
            ttag: slot,
            offset: 0,
            length: s.capsule.data_len,
        }
        .encode(&mut self.tx, self.digests);
        false
    }

    /// The command's data is in place: with `direct` it goes to the caller at once (true, the
    /// slot executing, as [`TcpConn::next_event`] leaves it after `DataReady`); otherwise, or
    /// if its data failed its digest, as [`Self::make_ready`] says (false).
    fn in_place(&mut self, slot: u16, direct: bool) -> bool {
        let s = &mut self.slots[slot as usize];
        if direct && !s.digest_failed {
            s.state = SlotState::Executing;
            return true;
        }
        self.make_ready(slot);
        false
    }

    /// Check an H2CData header against the transfer its tag names.
    fn h2c_check(&mut self, dh: DataHeader, pdu_flags: u8, hdr: &[u8]) -> Result<(), ConnError> {
        let Some(s) = self
            .slots
            .get(dh.ttag as usize)
            .filter(|s| s.state == SlotState::AwaitingData)
        else {
            return Err(self.terminate(
                fatal(
                    fes::INVALID_HEADER_FIELD,
                    10,
                    "H2CData for an unknown transfer tag",
                ),
                hdr,
            ));
        };
        if s.capsule.sqe.cid != dh.cccid {
            return Err(self.terminate(
                fatal(
                    fes::INVALID_HEADER_FIELD,
                    8,
                    "H2CData command ID does not match its tag",
                ),
                hdr,
            ));
        }
        let end = dh.offset as u64 + dh.length as u64;
        if end > s.capsule.data_len as u64 {
            return Err(self.terminate(
                fatal(
                    fes::DATA_OUT_OF_RANGE,
                    12,
                    "H2CData outside the requested range",
                ),
                hdr,
            ));
        }
        // The PDUs of one transfer come in order, and LAST_PDU is set on the last of them and
        // on no other (NVMe/TCP 1.0, H2CData PDU): anything else is a PDU sequence error, fatal
        // (as FreeBSD's nvmf does).
        let last = end == s.capsule.data_len as u64;
        if dh.offset != s.received || last != (pdu_flags & flags::DATA_LAST != 0) {
            return Err(self.terminate(
                fatal(
                    fes::PDU_SEQUENCE_ERROR,
                    0,
                    if dh.offset != s.received {
                        "H2CData out of order"
                    } else if last {
                        "last H2CData of a transfer without LAST_PDU"
                    } else {
                        "H2CData with LAST_PDU before the end of its transfer"
                    },
                ),
                hdr,
            ));
        }
        Ok(())
    }

    /// The data of a checked H2CData PDU is in the command's buffer.
    fn h2c_done(&mut self, dh: DataHeader, digest_ok: bool) {
        let s = &mut self.slots[dh.ttag as usize];
        s.received = dh.offset + dh.length;
        s.digest_failed |= !digest_ok;
        if s.received == s.capsule.data_len {
            self.awaiting_data -= 1;
            self.make_ready(dh.ttag);
        }
    }

    fn h2c_data(
        &mut self,
        dh: DataHeader,
        pdu_flags: u8,
        data: &[u8],
        digest_ok: bool,
        hdr: &[u8],
    ) -> Result<(), ConnError> {
        self.h2c_check(dh, pdu_flags, hdr)?;
        if let Some(buf) = self.slots[dh.ttag as usize].capsule.buf.as_mut() {
            buf.as_mut_slice()[dh.offset as usize..(dh.offset + dh.length) as usize]
                .copy_from_slice(data);
        }
        self.h2c_done(dh, digest_ok);
        Ok(())
    }

    fn make_ready(&mut self, slot: u16) {
        let s = &mut self.slots[slot as usize];
        if s.digest_failed {
            s.state = SlotState::Executing;
            let sqe = s.capsule.sqe;
            if let Some(suppressed) = self.log_gate() {
                warn!(
                    cid = sqe.cid,
                    suppressed,
                    "data digest mismatch: command failed with a transient transport error"
                );
            }
            self.complete(slot, error_response(&sqe, TRANSIENT_TRANSPORT_ERROR));
            return;
        }
        s.state = SlotState::Ready;
        self.events.push_back(SlotEvent::Ready(slot));
    }

    fn complete(&mut self, slot: u16, resp: Response) {
        let s = &mut self.slots[slot as usize];
        debug_assert_eq!(s.state, SlotState::Executing);
        // The data is lent by the block device, or in the command's buffer.
        let len = resp.data_len.min(s.capsule.data_room() as u32);
        if len == 0 {
            encode_capsule_resp(&mut self.tx, &resp.cqe, self.digests);
            self.release(slot);
            return;
        }
        if s.capsule.lent.is_some() && self.digests.data {
            // Not by construction (see `takes_lent_data`): a digest would have to read it.
            let sqe = s.capsule.sqe;
            if let Some(suppressed) = self.log_gate() {
                warn!(
                    cid = resp.cqe.cid,
                    suppressed,
                    "lent read data on a connection with data digests; failing the command"
                );
            }
            let r = error_response(&sqe, Status::INTERNAL_ERROR);
            encode_capsule_resp(&mut self.tx, &r.cqe, self.digests);
            self.release(slot);
            return;
        }
        // SUCCESS stands for a CapsuleResp of all zeroes but the CID and SQ head.
        let answered = self.params.c2h_success
            && resp.cqe.status.is_success()
            && resp.cqe.dw0 == 0
            && resp.cqe.dw1 == 0
            && len == resp.data_len;
        let fl = if answered {
            flags::DATA_LAST | flags::DATA_SUCCESS
        } else {
            flags::DATA_LAST
        };
        let dh = DataHeader {
            cccid: s.capsule.sqe.cid,
            ttag: 0,
            offset: 0,
            length: len,
        };
        let digest = dh.encode_c2h_head(&mut self.tx, fl, self.digests, self.c2h_align);
        let crc = match (digest, s.capsule.buf.as_ref()) {
            (true, Some(b)) => Some(crc32c::crc32c(&b.as_slice()[..len as usize])),
            _ => None,
        };
        // The data goes out from the command's buffer; the slot is freed once it is written.
        s.state = SlotState::Sending;
        self.mark_tx();
        self.segs.push_back(Seg::Slot {
            slot,
            len: len as usize,
        });
        if let Some(crc) = crc {
            self.tx.extend_from_slice(&crc.to_le_bytes());
        }
        if !answered {
            encode_capsule_resp(&mut self.tx, &resp.cqe, self.digests);
        }
    }

    /// Queue a C2HTermReq for `e` and stop reading; the caller drops the connection once it is sent.
    fn terminate(&mut self, e: FatalError, offending: &[u8]) -> ConnError {
        // The reason is ours (static); the offending bytes go to the host, never to the log.
        if let Some(suppressed) = self.log_gate() {
            warn!(
                fes = e.fes,
                fei = e.fei,
                reason = e.reason,
                suppressed,
                "malformed PDU from host: terminating the connection"
            );
        }
        encode_term_req(&mut self.tx, true, e.fes, e.fei, offending);
        self.phase = Phase::Terminating;
        ConnError::Fatal(e)
    }
}

/// Whether a socket call found nothing to do (EAGAIN, the usual answer of a polled socket):
/// the errno itself first, the error kind (other streams) only if there is none.
#[inline]
fn would_block(e: &std::io::Error) -> bool {
    match e.raw_os_error() {
        Some(code) => code == libc::EAGAIN,
        None => e.kind() == ErrorKind::WouldBlock,
    }
}

fn fatal(fes: u16, fei: u32, reason: &'static str) -> FatalError {
    FatalError { fes, fei, reason }
}

/// A response for a command the transport refused before the core saw it.
fn error_response(sqe: &crate::proto::nvme::Sqe, status: Status) -> Response {
    Response {
        cqe: Cqe {
            cid: sqe.cid,
            status,
            ..Default::default()
        },
        data_len: 0,
    }
}

#[cfg(test)]
mod tests;
