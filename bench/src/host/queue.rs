//! The command engine shared by the admin queue and I/O queues: command identifiers, commands in
//! flight keyed by CID, in-capsule vs R2T data, C2HData reassembly, completions.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nvmfd_transport::proto::fabrics::{ConnectCommand, ConnectData};
use nvmfd_transport::proto::nvme::{Cqe, Sqe};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::proto::tcp::{
    encode_capsule_cmd, encode_term_req, fes, flags, pdu_type, Digests, Header, IcReq, IcResp, R2t,
};

use super::conn::Conn;
use super::error::{pdu_name, HostError, Result};
use super::frame::{encode_h2c_data, prepare_dptr, DataPlacement};
use super::HostOptions;

/// A finished command.
#[derive(Debug)]
pub struct Completion {
    /// The command identifier the host gave the command.
    pub cid: u16,
    /// The completion queue entry (synthesized with success status when the target ended the
    /// data with a C2HData carrying DATA_SUCCESS).
    pub cqe: Cqe,
    /// The data the controller sent (C2HData), at most the `data_in_len` the command asked for.
    pub data: Vec<u8>,
    /// Time from submission to completion as seen by the host.
    pub latency: Duration,
    /// True when no CapsuleResp came because the last C2HData carried DATA_SUCCESS.
    pub data_success: bool,
    /// A transport error that hit only this command (a data digest mismatch); the connection
    /// stays usable.
    pub error: Option<HostError>,
}

impl Completion {
    pub fn status(&self) -> Status {
        self.cqe.status
    }

    /// `(cqe, data)`, or the command's transport error.
    pub fn into_result(self) -> Result<(Cqe, Vec<u8>)> {
        match self.error {
            Some(e) => Err(e),
            None => Ok((self.cqe, self.data)),
        }
    }
}

struct Inflight {
    placement: DataPlacement,
    /// Host-to-controller data kept for R2Ts (empty otherwise).
    data_out: Vec<u8>,
    /// Controller-to-host buffer, `data_in_len` long.
    data_in: Vec<u8>,
    received: usize,
    error: Option<HostError>,
    submitted: Instant,
}

/// How far a receive may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Block (up to the socket timeout) for a whole PDU.
    Block,
    /// One non-blocking read attempt if no whole PDU is buffered.
    NonBlock,
    /// Only PDUs already in the receive buffer.
    Buffered,
}

pub(crate) struct Queue {
    pub conn: Conn,
    pub qid: u16,
    pub depth: u16,
    pub icresp: IcResp,
    pub in_capsule_size: usize,
    /// Data alignment of H2C PDUs, (CPDA + 1) * 4 bytes.
    pub h2c_align: usize,
    slots: Vec<Option<Inflight>>,
    free: Vec<u16>,
    in_flight: usize,
    ready: VecDeque<Completion>,
    dead: Option<String>,
    pool: Vec<Vec<u8>>,
    /// Batched mode: submissions and R2T answers are appended to `conn.sbuf` and go out on the
    /// next [`Queue::flush`] (or before any blocking receive), one send for many PDUs.
    batch: bool,
}

/// Parameters of a queue's fabrics Connect.
pub(crate) struct ConnectParams<'a> {
    pub opts: &'a HostOptions,
    pub qid: u16,
    pub depth: u16,
    pub cntlid: u16,
    pub kato_ms: u32,
    pub in_capsule_size: usize,
}

impl Queue {
    /// TCP connect, ICReq/ICResp, fabrics Connect. Returns the queue and the Connect completion.
    pub fn connect(addr: SocketAddr, p: ConnectParams<'_>) -> Result<(Queue, Cqe)> {
        if p.depth == 0 {
            return Err(HostError::InvalidArgument(
                "queue depth must be at least 1".into(),
            ));
        }
        let opts = p.opts;
        let mut conn = Conn::open(addr, opts.connect_timeout, opts.io_timeout)?;
        let requested = Digests {
            header: opts.header_digest,
            data: opts.data_digest,
        };
        let icresp = conn.initialize(IcReq {
            pfv: 0,
            hpda: 0,
            digests: requested,
            maxr2t: 0,
        })?;
        validate_icresp(&icresp, requested)?;
        conn.digests = requested;
        let mut q = Queue::new(conn, p.qid, p.depth, icresp, p.in_capsule_size);
        let sqe = ConnectCommand {
            recfmt: 0,
            qid: p.qid,
            sqsize: p.depth - 1,
            cattr: 0,
            kato_ms: p.kato_ms,
        }
        .to_sqe(0, ConnectData::SIZE as u32);
        let data = ConnectData {
            hostid: opts.hostid,
            cntlid: p.cntlid,
            subnqn: opts.subnqn.clone(),
            hostnqn: opts.hostnqn.clone(),
        }
        .encode();
        let c = q.execute(sqe, Some(&data), 0)?;
        let (cqe, _) = c.into_result()?;
        if !cqe.status.is_success() {
            return Err(HostError::CommandFailed {
                command: "Connect",
                status: cqe.status,
                dw0: cqe.dw0,
            });
        }
        Ok((q, cqe))
    }

    pub fn new(conn: Conn, qid: u16, depth: u16, icresp: IcResp, in_capsule_size: usize) -> Queue {
        Queue {
            conn,
            qid,
            depth,
            icresp,
            in_capsule_size,
            h2c_align: (icresp.cpda as usize + 1) * 4,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            in_flight: 0,
            ready: VecDeque::new(),
            dead: None,
            pool: Vec::new(),
            batch: false,
        }
    }

    /// Commands submitted and not yet handed back by `wait_for`/`poll`.
    pub fn outstanding(&self) -> usize {
        self.depth as usize - self.free.len()
    }

    fn check_alive(&self) -> Result<()> {
        match &self.dead {
            Some(why) => Err(HostError::ConnectionDead(why.clone())),
            None => Ok(()),
        }
    }

    /// Give a buffer back for reuse by later commands.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < self.depth as usize * 2 {
            self.pool.push(buf);
        }
    }

    /// A buffer of exactly `len` bytes. Old contents may remain: a C2H buffer is cut to the
    /// bytes actually received before anyone sees it, so no stale byte is ever exposed, and
    /// not zeroing saves a memset per read.
    fn take_buf(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        if b.len() >= len {
            b.truncate(len);
        } else {
            b.resize(len, 0);
        }
        b
    }

    /// Send a command without waiting. The CID in `sqe` is replaced by a free one, which is
    /// returned. A zero `dptr` is filled in (see [`prepare_dptr`]).
    pub fn submit(
        &mut self,
        mut sqe: Sqe,
        data_out: Option<&[u8]>,
        data_in_len: usize,
    ) -> Result<u16> {
        self.check_alive()?;
        let out = data_out.unwrap_or(&[]);
        if !out.is_empty() && data_in_len > 0 {
            return Err(HostError::InvalidArgument(
                "bidirectional data transfers are not supported".into(),
            ));
        }
        let cid = self
            .free
            .pop()
            .ok_or(HostError::QueueFull(self.outstanding()))?;
        sqe.cid = cid;
        let placement = prepare_dptr(&mut sqe, out.len(), data_in_len, self.in_capsule_size);
        if !self.batch {
            self.conn.sbuf.clear();
        }
        let in_capsule = (placement == DataPlacement::InCapsule).then_some(out);
        encode_capsule_cmd(
            &mut self.conn.sbuf,
            &sqe,
            in_capsule,
            self.conn.digests,
            self.h2c_align,
        );
        if !self.batch {
            if let Err(e) = self.conn.flush_sbuf() {
                self.free.push(cid);
                self.kill(&e);
                return Err(e);
            }
        }
        let data_out = if placement == DataPlacement::R2t {
            let mut b = self.take_buf(out.len());
            b.copy_from_slice(out);
            b
        } else {
            Vec::new()
        };
        let data_in = if data_in_len > 0 {
            self.take_buf(data_in_len)
        } else {
            Vec::new()
        };
        self.slots[cid as usize] = Some(Inflight {
            placement,
            data_out,
            data_in,
            received: 0,
            error: None,
            submitted: Instant::now(),
        });
        self.in_flight += 1;
        Ok(cid)
    }

    /// Switch batched sends on or off (see the `batch` field). Turning it off flushes.
    pub fn set_batch(&mut self, on: bool) -> Result<()> {
        if !on {
            self.flush()?;
        }
        self.batch = on;
        Ok(())
    }

    /// Send whatever batched PDUs are pending.
    pub fn flush(&mut self) -> Result<()> {
        self.check_alive()?;
        if self.conn.sbuf.is_empty() {
            return Ok(());
        }
        let r = self.conn.flush_sbuf();
        if let Err(e) = &r {
            self.kill(e);
        }
        r
    }

    /// Hand every command that has completed to `f` (its buffers are reused afterwards, and its
    /// CID is free again when `f` returns), reading from the socket at most once without
    /// waiting, or, with `wait` and commands in flight, blocking until at least one completes.
    /// Pending batched sends go out first. No allocation once the buffer pool is warm.
    pub fn reap(&mut self, wait: bool, f: &mut dyn FnMut(&Completion)) -> Result<usize> {
        self.flush()?;
        while self.process_one(Wait::Buffered)? {}
        if self.ready.is_empty() && self.in_flight > 0 {
            if wait {
                while self.ready.is_empty() && self.in_flight > 0 {
                    self.process_one(Wait::Block)?;
                    // A PDU may have been an R2T whose answer is now pending.
                    self.flush()?;
                }
            } else {
                self.process_one(Wait::NonBlock)?;
            }
            while self.process_one(Wait::Buffered)? {}
        }
        // R2T answers produced while processing.
        self.flush()?;
        let n = self.ready.len();
        for _ in 0..n {
            let c = self.ready.pop_front().expect("counted");
            f(&c);
            self.free.push(c.cid);
            if c.data.capacity() > 0 {
                self.recycle(c.data);
            }
        }
        Ok(n)
    }

    /// Submit and wait for that command's completion.
    pub fn execute(
        &mut self,
        sqe: Sqe,
        data_out: Option<&[u8]>,
        data_in_len: usize,
    ) -> Result<Completion> {
        let cid = self.submit(sqe, data_out, data_in_len)?;
        self.wait_for(cid)
    }

    /// Wait for the completion of `cid`, keeping completions of other commands for `poll`.
    pub fn wait_for(&mut self, cid: u16) -> Result<Completion> {
        loop {
            if let Some(i) = self.ready.iter().position(|c| c.cid == cid) {
                let c = self.ready.remove(i).expect("index in range");
                self.free.push(cid);
                return Ok(c);
            }
            if !matches!(self.slots.get(cid as usize), Some(Some(_))) {
                return Err(HostError::InvalidArgument(format!(
                    "command {cid} is not in flight"
                )));
            }
            self.process_one(Wait::Block)?;
        }
    }

    /// Wait until at least `min` completions are available (fewer if fewer commands are in
    /// flight), take whatever else has already arrived, and return them all.
    pub fn poll(&mut self, min: usize) -> Result<Vec<Completion>> {
        let min = min.min(self.in_flight + self.ready.len());
        while self.ready.len() < min {
            self.process_one(Wait::Block)?;
        }
        let mode = if min == 0 {
            Wait::NonBlock
        } else {
            Wait::Buffered
        };
        while self.process_one(mode)? {}
        let out: Vec<Completion> = self.ready.drain(..).collect();
        self.free.extend(out.iter().map(|c| c.cid));
        Ok(out)
    }

    /// Mark the connection unusable after a fatal error, telling the target why when the error
    /// is one an H2CTermReq can express, and close it.
    pub fn kill(&mut self, e: &HostError) {
        if !e.is_fatal() || self.dead.is_some() {
            return;
        }
        let term = match e {
            HostError::MalformedPdu { source, .. } => Some((source.fes, source.fei)),
            HostError::HeaderDigest { .. } => Some((fes::HEADER_DIGEST_ERROR, 0)),
            HostError::UnexpectedPdu { .. } => Some((fes::PDU_SEQUENCE_ERROR, 0)),
            _ => None,
        };
        if let Some((f, i)) = term {
            let b = self.conn.buffered();
            let quote = b[..b.len().min(b.get(2).map_or(0, |&h| h as usize))].to_vec();
            let mut out = Vec::new();
            encode_term_req(&mut out, false, f, i, &quote);
            let _ = self.conn.send(&out);
        }
        self.dead = Some(e.to_string());
        self.conn.shutdown();
    }

    /// Handle one PDU. Ok(false) when `wait` forbids waiting and none was ready.
    fn process_one(&mut self, wait: Wait) -> Result<bool> {
        self.check_alive()?;
        if wait == Wait::Block && self.batch && !self.conn.sbuf.is_empty() {
            // Never wait for an answer to a command that has not been sent.
            self.flush()?;
        }
        let r = self.process_inner(wait);
        if let Err(e) = &r {
            self.kill(e);
        }
        r
    }

    fn process_inner(&mut self, wait: Wait) -> Result<bool> {
        enum After {
            Nothing,
            Complete { cqe: Cqe, data_success: bool },
            R2t(R2t),
        }
        if wait == Wait::Buffered && self.conn.buffered().len() < 8 {
            return Ok(false);
        }
        let (qid, n) = (self.qid, self.in_flight);
        let what = move || format!("a response on queue {qid} ({n} commands in flight)");
        let pdu = match wait {
            Wait::Block => self.conn.next_pdu(true, &what)?,
            Wait::NonBlock => self.conn.next_pdu(false, &what)?,
            Wait::Buffered => {
                let b = self.conn.buffered();
                let plen = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
                if b.len() < plen {
                    return Ok(false);
                }
                self.conn.next_pdu(false, &what)?
            }
        };
        let Some(pdu) = pdu else { return Ok(false) };
        let (len, t, fl) = (pdu.len, pdu.ch.pdu_type, pdu.ch.flags);
        let after = match pdu.header {
            Header::CapsuleResp(cqe) => {
                if !matches!(self.slots.get(cqe.cid as usize), Some(Some(_))) {
                    return Err(HostError::Protocol(format!(
                        "CapsuleResp for command {} which is not in flight on queue {qid}",
                        cqe.cid
                    )));
                }
                After::Complete {
                    cqe,
                    data_success: false,
                }
            }
            Header::C2HData(dh) => {
                let cid = dh.cccid;
                let Some(Some(slot)) = self.slots.get_mut(cid as usize) else {
                    return Err(HostError::Protocol(format!(
                        "C2HData for command {cid} which is not in flight on queue {qid}"
                    )));
                };
                if slot.data_in.is_empty() {
                    return Err(HostError::Protocol(format!(
                        "C2HData for command {cid}, which transfers no data to the host"
                    )));
                }
                if dh.offset as usize != slot.received {
                    return Err(HostError::Protocol(format!(
                        "C2HData for command {cid} at offset {}, expected offset {}",
                        dh.offset, slot.received
                    )));
                }
                let end = slot.received + pdu.data.len();
                if end > slot.data_in.len() {
                    return Err(HostError::Protocol(format!(
                        "C2HData for command {cid} ends at byte {end}, beyond the {} bytes the command asked for",
                        slot.data_in.len()
                    )));
                }
                if !pdu.data_digest_ok && slot.error.is_none() {
                    slot.error = Some(HostError::DataDigest { pdu_type: t, cid });
                }
                slot.data_in[slot.received..end].copy_from_slice(pdu.data);
                slot.received = end;
                if fl & flags::DATA_SUCCESS != 0 {
                    if fl & flags::DATA_LAST == 0 {
                        return Err(HostError::Protocol(format!(
                            "C2HData for command {cid} has DATA_SUCCESS without DATA_LAST"
                        )));
                    }
                    if end != slot.data_in.len() {
                        return Err(HostError::Protocol(format!(
                            "C2HData for command {cid} has DATA_SUCCESS after {end} of {} bytes",
                            slot.data_in.len()
                        )));
                    }
                    let cqe = Cqe {
                        sqid: qid,
                        cid,
                        status: Status::SUCCESS,
                        ..Default::default()
                    };
                    After::Complete {
                        cqe,
                        data_success: true,
                    }
                } else {
                    After::Nothing
                }
            }
            Header::R2t(r) => {
                let cid = r.cccid;
                let Some(Some(slot)) = self.slots.get(cid as usize) else {
                    return Err(HostError::Protocol(format!(
                        "R2T for command {cid} which is not in flight on queue {qid}"
                    )));
                };
                if slot.placement != DataPlacement::R2t {
                    let why = if slot.placement == DataPlacement::InCapsule {
                        "whose data was sent in-capsule"
                    } else {
                        "which has no data for the controller"
                    };
                    return Err(HostError::Protocol(format!("R2T for command {cid} {why}")));
                }
                let end = r.offset as u64 + r.length as u64;
                if r.length == 0 || end > slot.data_out.len() as u64 {
                    return Err(HostError::Protocol(format!(
                        "R2T for command {cid} asks for bytes {}..{end} of its {} bytes",
                        r.offset,
                        slot.data_out.len()
                    )));
                }
                After::R2t(r)
            }
            Header::TermReq { fes, fei } if t == pdu_type::C2H_TERM_REQ => {
                return Err(HostError::TerminatedByTarget { fes, fei });
            }
            _ => {
                return Err(HostError::UnexpectedPdu {
                    pdu_type: t,
                    context: format!(
                        "a host accepts only CapsuleResp, C2HData, R2T and C2HTermReq, got {}",
                        pdu_name(t)
                    ),
                });
            }
        };
        self.conn.consume(len);
        match after {
            After::Nothing => {}
            After::Complete { cqe, data_success } => self.complete(cqe, data_success),
            After::R2t(r) => self.answer_r2t(r)?,
        }
        Ok(true)
    }

    fn complete(&mut self, cqe: Cqe, data_success: bool) {
        let slot = self.slots[cqe.cid as usize]
            .take()
            .expect("checked in flight");
        self.in_flight -= 1;
        let mut data = slot.data_in;
        data.truncate(slot.received);
        if slot.data_out.capacity() > 0 {
            self.recycle(slot.data_out);
        }
        self.ready.push_back(Completion {
            cid: cqe.cid,
            cqe,
            data,
            latency: slot.submitted.elapsed(),
            data_success,
            error: slot.error,
        });
    }

    fn answer_r2t(&mut self, r: R2t) -> Result<()> {
        let slot = self.slots[r.cccid as usize]
            .as_ref()
            .expect("checked in flight");
        let window = &slot.data_out[r.offset as usize..(r.offset + r.length) as usize];
        if !self.batch {
            self.conn.sbuf.clear();
        }
        encode_h2c_data(
            &mut self.conn.sbuf,
            r.cccid,
            r.ttag,
            r.offset,
            window,
            self.icresp.maxh2cdata,
            self.conn.digests,
            self.h2c_align,
        );
        if self.batch {
            return Ok(());
        }
        self.conn.flush_sbuf()
    }
}

/// Check an ICResp against what the host asked for.
pub(crate) fn validate_icresp(r: &IcResp, requested: Digests) -> Result<()> {
    if r.pfv != 0 {
        return Err(HostError::Negotiation(format!(
            "ICResp has PDU format version {}, expected 0",
            r.pfv
        )));
    }
    if r.digests != requested {
        return Err(HostError::Negotiation(format!(
            "ICResp digests (header {}, data {}) differ from those requested (header {}, data {})",
            r.digests.header, r.digests.data, requested.header, requested.data
        )));
    }
    if r.maxh2cdata < 4096 || !r.maxh2cdata.is_multiple_of(4) {
        return Err(HostError::Negotiation(format!(
            "ICResp MAXH2CDATA {} is below 4096 or not a multiple of 4",
            r.maxh2cdata
        )));
    }
    if r.cpda > 31 {
        return Err(HostError::Negotiation(format!(
            "ICResp CPDA {} is above 31",
            r.cpda
        )));
    }
    Ok(())
}
