//! NVMe/TCP, controller side: one [`TcpConn`] per host connection, owned and polled by one reactor.
//!
//! The connection negotiates ICReq/ICResp, turns CapsuleCmd PDUs into [`Capsule`]s (gathering
//! write data in-capsule or through R2T/H2CData), and turns [`Response`]s into C2HData and
//! CapsuleResp PDUs. It checks every PDU; a malformed one ends this connection (after a
//! C2HTermReq saying why) and nothing else.

use crate::proto::nvme::{Cqe, Direction, SglDescriptor};
use crate::proto::status::Status;
use crate::proto::tcp::{
    encode_capsule_resp, encode_term_req, fes, flags, parse_header, DataHeader, Digests,
    FatalError, Header, IcResp, R2t, COMMON_HEADER_SIZE,
};
use crate::{Capsule, Response};
use nvmfd_bdev::BufPool;
use nvmfd_config::DigestMode;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::rc::Rc;
use tracing::{debug, warn};

mod socket;
pub use socket::Socket;

/// Transient Transport Error (SCT 3, SC 0x22): what a command whose data digest failed gets.
pub const TRANSIENT_TRANSPORT_ERROR: Status = Status {
    sct: 3,
    sc: 0x22,
    dnr: false,
};

/// Host-side in-capsule data the admin queue may carry whatever IOCCSZ says (Linux assumes 8 KiB).
const ADMIN_IN_CAPSULE: u32 = 8192;

/// What a connection needs to know of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct TcpParams {
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    /// Commands a connection may have outstanding (the largest queue a host may connect).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Accepted, waiting for a large data buffer (all of the reactor's are lent).
    AwaitingBuffer,
    /// Waiting for H2CData after an R2T.
    AwaitingData,
    /// Data complete: waiting to be handed to the core.
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
    state: SlotState,
    received: u32,
    /// A data digest failed: answer with a transient transport error instead of executing.
    digest_failed: bool,
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
    phase: Phase,
    digests: Digests,
    /// C2H data alignment the host asked for ((HPDA + 1) * 4 bytes).
    c2h_align: usize,
    slots: Vec<Slot>,
    free: Vec<u16>,
    ready: VecDeque<u16>,
    /// Commands waiting for a large buffer, oldest first, and this connection's place in the
    /// reactor-wide queue for them.
    waiting: VecDeque<u16>,
    waiter_id: u32,
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

impl<S: Read + Write> TcpConn<S> {
    /// Wrap an accepted, non-blocking stream; data buffers come from `pool` (the reactor's).
    pub fn new(stream: S, params: TcpParams, pool: Rc<RefCell<BufPool>>) -> Self {
        // Slots: a full queue plus room for the admin queue's held async event requests.
        let nslots = params.max_queue_depth as usize + 8;
        let slots = (0..nslots)
            .map(|_| Slot {
                capsule: Capsule {
                    sqe: Default::default(),
                    buf: None,
                    data_len: 0,
                    lent: None,
                },
                state: SlotState::Free,
                received: 0,
                digest_failed: false,
            })
            .collect();
        let rx_cap = params.max_io_size.max(params.max_in_capsule()) as usize + 64 * 1024;
        let waiter_id = pool.borrow_mut().waiter_id();
        TcpConn {
            stream,
            rx: vec![0; rx_cap],
            rx_start: 0,
            rx_end: 0,
            inner: Inner {
                params,
                pool,
                phase: Phase::AwaitIcReq,
                digests: Digests::default(),
                c2h_align: 4,
                slots,
                free: (0..nslots as u16).rev().collect(),
                ready: VecDeque::with_capacity(nslots),
                waiting: VecDeque::with_capacity(nslots),
                waiter_id,
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
                    self.inner.h2c_check(dh, &buf[..frame.ch.hlen as usize])?;
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
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
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
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
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
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n_iov = inner.segs.len().min(MAX_IOV);
            let mut cur = inner.tx_off;
            for (i, seg) in inner.segs.iter().take(MAX_IOV).enumerate() {
                let skip = if i == 0 { inner.front_off } else { 0 };
                iov[i] = match *seg {
                    Seg::Tx(len) => {
                        let l = len - skip;
                        cur += l;
                        IoSlice::new(&inner.tx[cur - l..cur])
                    }
                    Seg::Slot { slot, len } => {
                        inner.slots[slot as usize].capsule.data_io_slice(skip, len)
                    }
                };
            }
            self.stats.send_calls += 1;
            match self.stream.write_vectored(&iov[..n_iov]) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => {
                    inner.advance(n);
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
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

    /// Whether read data may come lent from a block device (sent as it is, never read here):
    /// not when data digests are on, since computing one reads the data.
    pub fn takes_lent_data(&self) -> bool {
        !self.inner.digests.data
    }

    /// Whether commands are waiting for a data buffer (the reactor keeps polling this connection).
    pub fn awaiting_buffers(&self) -> bool {
        !self.inner.waiting.is_empty()
    }

    /// Whether anything queued is not yet written.
    pub fn has_unsent(&self) -> bool {
        !self.inner.segs.is_empty() || self.inner.tx.len() > self.inner.tx_marked
    }

    /// The next capsule whose data is complete, now owned by the caller until [`Self::complete`].
    pub fn next_ready(&mut self) -> Option<u16> {
        let slot = self.inner.ready.pop_front()?;
        self.inner.slots[slot as usize].state = SlotState::Executing;
        self.stats.commands += 1;
        Some(slot)
    }

    pub fn capsule_mut(&mut self, slot: u16) -> &mut Capsule {
        &mut self.inner.slots[slot as usize].capsule
    }

    /// Send the response for `slot` (data first for controller-to-host commands) and free it.
    pub fn complete(&mut self, slot: u16, resp: Response) {
        self.inner.complete(slot, resp);
    }
}

impl<S> Drop for TcpConn<S> {
    /// Buffers of commands still held by this connection go back to the reactor's pool (those a
    /// block device holds come back through the reactor when the I/O completes).
    fn drop(&mut self) {
        let mut pool = self.inner.pool.borrow_mut();
        if !self.inner.waiting.is_empty() {
            pool.forget(self.inner.waiter_id);
        }
        for s in &mut self.inner.slots {
            if let Some(b) = s.capsule.buf.take() {
                pool.put(b);
            }
        }
    }
}

impl Inner {
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

    /// The command in `slot` is over: its buffer goes back to the pool, the slot to the free list.
    fn release(&mut self, slot: u16) {
        let s = &mut self.slots[slot as usize];
        if let Some(buf) = s.capsule.buf.take() {
            self.pool.borrow_mut().put(buf);
        }
        s.capsule.lent = None;
        s.state = SlotState::Free;
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
            (Phase::Ready, Header::H2CData(dh)) => self.h2c_data(dh, data, digest_ok, hdr),
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
        let Some(slot) = self.free.pop() else {
            return Err(self.terminate(
                fatal(fes::PDU_SEQUENCE_ERROR, 0, "host exceeded the queue depth"),
                hdr,
            ));
        };
        let max_io = self.params.max_io_size;
        let dir = sqe.data_direction();
        let sgl = sqe.dptr;
        let s = &mut self.slots[slot as usize];
        s.capsule.sqe = sqe;
        s.capsule.data_len = 0;
        s.capsule.buf = None;
        s.received = 0;
        s.digest_failed = !digest_ok;
        let reject = |this: &mut Inner, status: Status| {
            this.slots[slot as usize].state = SlotState::Executing;
            this.complete(slot, error_response(&sqe, status));
            Ok(())
        };
        if sqe.psdt() == 0 {
            return reject(self, Status::INVALID_FIELD);
        }
        if !data.is_empty() {
            // In-capsule data: a data block descriptor with an offset into the capsule.
            if sgl.identifier != (SglDescriptor::DATA_BLOCK << 4 | SglDescriptor::SUBTYPE_OFFSET) {
                return reject(self, Status::SGL_DESCRIPTOR_TYPE_INVALID);
            }
            if sgl.address != 0 {
                return reject(self, Status::SGL_OFFSET_INVALID);
            }
            if sgl.length as usize != data.len() || dir != Direction::HostToController {
                return reject(self, Status::DATA_SGL_LENGTH_INVALID);
            }
            // The data is here already, so it gets a buffer even past the pool's cap (a command
            // slot bounds how many can).
            let mut buf = self.pool.borrow_mut().get(data.len());
            buf.as_mut_slice()[..data.len()].copy_from_slice(data);
            let s = &mut self.slots[slot as usize];
            s.capsule.buf = Some(buf);
            s.capsule.data_len = data.len() as u32;
            self.make_ready(slot);
            return Ok(());
        }
        match dir {
            Direction::Bidirectional => return reject(self, Status::INVALID_OPCODE),
            Direction::None => {}
            _ if sgl.length == 0 => {}
            _ if sgl.length > max_io.max(ADMIN_IN_CAPSULE) => {
                return reject(self, Status::DATA_SGL_LENGTH_INVALID)
            }
            _ if sgl.sgl_type() != SglDescriptor::TRANSPORT_DATA_BLOCK => {
                return reject(self, Status::SGL_DESCRIPTOR_TYPE_INVALID)
            }
            _ => self.slots[slot as usize].capsule.data_len = sgl.length,
        }
        // The buffer comes from the reactor's pool and goes back when the command completes.
        // A command needing a large one waits its turn while all are lent (in arrival order
        // across the reactor's connections); its R2T (for a write) is sent only once it has
        // one, so H2CData in the stream always has a buffer to land in and reading the stream
        // never stalls.
        let need = self.slots[slot as usize].capsule.data_len as usize;
        let mut pool = self.pool.borrow_mut();
        let buf = pool.try_get(need);
        if buf.is_none() {
            pool.wait(self.waiter_id);
        }
        drop(pool);
        let s = &mut self.slots[slot as usize];
        match buf {
            Some(b) => {
                s.capsule.buf = Some(b);
                self.start(slot);
            }
            None => {
                s.state = SlotState::AwaitingBuffer;
                self.waiting.push_back(slot);
            }
        }
        Ok(())
    }

    /// Give buffers to waiting commands while it is their turn and the pool has them. Returns
    /// whether any started.
    fn serve_waiting(&mut self) -> bool {
        let mut progress = false;
        while let Some(&slot) = self.waiting.front() {
            let Some(buf) = self.pool.borrow_mut().take_turn(self.waiter_id) else {
                break;
            };
            self.waiting.pop_front();
            self.slots[slot as usize].capsule.buf = Some(buf);
            self.start(slot);
            progress = true;
        }
        progress
    }

    /// A command with its buffer: ready to execute, or (a write) waiting for data after an R2T.
    fn start(&mut self, slot: u16) {
        let s = &mut self.slots[slot as usize];
        let sqe = s.capsule.sqe;
        if sqe.data_direction() != Direction::HostToController || s.capsule.data_len == 0 {
            return self.make_ready(slot);
        }
        s.state = SlotState::AwaitingData;
        self.awaiting_data += 1;
        R2t {
            cccid: sqe.cid,
            ttag: slot,
            offset: 0,
            length: s.capsule.data_len,
        }
        .encode(&mut self.tx, self.digests);
    }

    /// Check an H2CData header against the transfer its tag names.
    fn h2c_check(&mut self, dh: DataHeader, hdr: &[u8]) -> Result<(), ConnError> {
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
        if dh.offset != s.received || end > s.capsule.data_len as u64 {
            return Err(self.terminate(
                fatal(
                    fes::DATA_OUT_OF_RANGE,
                    12,
                    "H2CData outside the requested range",
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
        data: &[u8],
        digest_ok: bool,
        hdr: &[u8],
    ) -> Result<(), ConnError> {
        self.h2c_check(dh, hdr)?;
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
            warn!(
                cid = s.capsule.sqe.cid,
                "data digest mismatch: command failed with a transient transport error"
            );
            s.state = SlotState::Executing;
            let sqe = s.capsule.sqe;
            self.complete(slot, error_response(&sqe, TRANSIENT_TRANSPORT_ERROR));
            return;
        }
        s.state = SlotState::Ready;
        self.ready.push_back(slot);
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
            warn!(
                cid = resp.cqe.cid,
                "lent read data on a connection with data digests; failing the command"
            );
            let sqe = s.capsule.sqe;
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
        warn!(
            fes = e.fes,
            fei = e.fei,
            reason = e.reason,
            "malformed PDU from host: terminating the connection"
        );
        encode_term_req(&mut self.tx, true, e.fes, e.fei, offending);
        self.phase = Phase::Terminating;
        ConnError::Fatal(e)
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
