//! The admin queue: controller state (CC/CSTS, features, keep-alive, async events, shutdown) and
//! the admin command set.

use super::controller::{AsyncEvent, CtrlShared};
use super::qpair::{Outcome, QueuePair, State};
use super::{identify, logpage, SubsysRef, Target};
use nvmfd_transport::proto::nvme::{cns, feature, opcode};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::Capsule;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Asynchronous Event Request Limit (0-based): up to 4 outstanding.
pub const AERL: u8 = 3;

/// Keep Alive Granularity (Identify Controller KAS, units of 100 ms): 1 s.
pub const KAS: u16 = 10;

/// CAP.MPSMIN and CAP.MPSMAX: memory pages of 2^(12 + n) bytes; only 4 KiB.
pub const MPSMIN: u32 = 0;
pub const MPSMAX: u32 = 0;

/// A keep-alive timeout as the controller applies it: rounded up to a multiple of the Keep Alive
/// Granularity (NVMe base 2.0, Keep Alive: the controller rounds KATO up to a multiple of KAS;
/// KATO 0 disables the timer and stays 0).
pub fn round_kato(ms: u32) -> u32 {
    let g = KAS as u32 * 100;
    ms.div_ceil(g).saturating_mul(g)
}

/// Where a host-requested shutdown (CC.SHN) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    None,
    /// CSTS.SHST = 01b: waiting for every I/O queue to have nothing in flight (sequence `seq`).
    Draining {
        seq: u32,
    },
    /// Flushing the namespaces' block devices: `next` is the next namespace to flush, `left` the
    /// flushes not yet completed.
    Flushing {
        next: usize,
        left: usize,
        failed: bool,
    },
    /// CSTS.SHST = 10b (or CSTS.CFS if a flush failed).
    Done,
}

/// The controller's mutable state, owned by its admin queue.
#[derive(Debug)]
pub struct AdminState {
    pub ctrl: Arc<CtrlShared>,
    pub cc: u32,
    pub csts: u32,
    pub kato_ms: u32,
    /// KATO from Connect (the Keep Alive Timer feature's default).
    connect_kato_ms: u32,
    ka_deadline: Option<Instant>,
    pub async_event_config: u32,
    /// CIDs of outstanding Asynchronous Event Requests, oldest first.
    pub aers: Vec<u16>,
    /// CIDs of AERs a controller reset aborted, still to be answered.
    aborted_aers: Vec<u16>,
    /// Events raised and enabled but not reported yet ([`AsyncEvent::bit`]).
    pending_events: u32,
    /// Events reported whose log page the host has not read yet: not reported again until it
    /// has (NVMe base 2.0, 5.2: an event type is masked until its log page is read).
    masked_events: u32,
    shutdown: Shutdown,
    /// The local address the admin connection arrived on (the discovery log reports it for
    /// listeners on a wildcard address).
    pub local: Option<SocketAddr>,
}

/// CC fields (NVMe base 2.0, 3.1.4.5).
mod cc {
    pub fn en(cc: u32) -> bool {
        cc & 1 != 0
    }
    pub fn css(cc: u32) -> u32 {
        (cc >> 4) & 7
    }
    pub fn mps(cc: u32) -> u32 {
        (cc >> 7) & 0xf
    }
    pub fn ams(cc: u32) -> u32 {
        (cc >> 11) & 7
    }
    pub fn shn(cc: u32) -> u32 {
        (cc >> 14) & 3
    }
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> 16) & 0xf
    }
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> 20) & 0xf
    }
}

/// CSTS bits.
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
const SHST_MASK: u32 = 3 << 2;
const SHST_PROCESSING: u32 = 1 << 2;
const SHST_COMPLETE: u32 = 2 << 2;

/// What a held-command or shutdown step asks the queue pair to do next (see
/// [`super::Action`]).
pub(super) enum Step {
    /// Complete the held command `cid` with `status` and dword 0.
    Complete { cid: u16, status: Status, dw0: u32 },
    /// Flush block device `bdev`.
    Flush { bdev: usize },
}

impl AdminState {
    pub fn new(ctrl: Arc<CtrlShared>, kato_ms: u32, now: Instant) -> Self {
        let kato_ms = round_kato(kato_ms);
        let mut s = AdminState {
            ctrl,
            cc: 0,
            csts: 0,
            kato_ms,
            connect_kato_ms: kato_ms,
            ka_deadline: None,
            async_event_config: 0,
            aers: Vec::with_capacity(AERL as usize + 1),
            aborted_aers: Vec::new(),
            pending_events: 0,
            masked_events: 0,
            shutdown: Shutdown::None,
            local: None,
        };
        s.keep_alive(now);
        s
    }

    /// Restart the keep-alive timer (Connect, Keep Alive, Set Features KATO).
    pub fn keep_alive(&mut self, now: Instant) {
        self.ka_deadline =
            (self.kato_ms != 0).then(|| now + Duration::from_millis(self.kato_ms as u64));
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.ka_deadline.is_some_and(|d| now > d)
    }

    fn enabled(&self) -> bool {
        cc::en(self.cc) && self.csts & CSTS_RDY != 0
    }

    /// A host wrote CC: enable, disable (reset) or shut down.
    pub fn set_cc(&mut self, value: u32) {
        let was = self.cc;
        self.cc = value;
        if !cc::en(value) && cc::en(was) {
            self.reset();
        } else if cc::en(value) && !cc::en(was) {
            self.enable(value);
        }
        if cc::shn(value) != 0 && cc::shn(was) == 0 {
            self.begin_shutdown();
        }
    }

    /// CC.EN 0 → 1. The controller checks the settings it depends on and, where one is not
    /// supported, reports Controller Fatal Status instead of becoming ready (NVMe base 2.0,
    /// 3.1.4.5: CC.MPS within CAP.MPSMIN..=MPSMAX, CC.CSS a command set CAP.CSS reports, CC.AMS
    /// an arbitration CAP.AMS reports; CC.IOSQES/IOCQES as Identify SQES/CQES require — 6 and 4
    /// for the NVM command set). Linux nvmet does the same (CSTS.CFS at enable).
    fn enable(&mut self, value: u32) {
        let problem = if cc::iosqes(value) != 6 || cc::iocqes(value) != 4 {
            Some("CC.IOSQES/IOCQES are not 6/4 (64-byte SQ, 16-byte CQ entries)")
        } else if !(MPSMIN..=MPSMAX).contains(&cc::mps(value)) {
            Some("CC.MPS outside CAP.MPSMIN..=MPSMAX")
        } else if cc::css(value) != 0 {
            Some("CC.CSS is not the NVM command set")
        } else if cc::ams(value) != 0 {
            Some("CC.AMS is not round robin")
        } else {
            None
        };
        match problem {
            Some(p) => {
                self.csts |= CSTS_CFS;
                warn!(
                    cntlid = self.ctrl.cntlid,
                    cc = value,
                    problem = p,
                    "controller enable refused: fatal status set"
                );
            }
            None => {
                self.csts = CSTS_RDY;
                self.ctrl.ready.store(true, Ordering::Release);
            }
        }
    }

    /// CC.EN 1 → 0: a controller reset. Over fabrics the admin queue and its association stay
    /// (NVMe base 2.0, 3.7.2); every I/O queue is deleted (the epoch moves on: each one sees it at
    /// its next command or poll, aborts what it has and closes; its QID is free at once), held
    /// AERs are aborted, and features return to their defaults.
    fn reset(&mut self) {
        self.ctrl.ready.store(false, Ordering::Release);
        self.ctrl.epoch.fetch_add(1, Ordering::AcqRel);
        self.ctrl.queues_created.store(false, Ordering::Release);
        self.ctrl
            .io_queues
            .store(self.ctrl.max_io_queues, Ordering::Release);
        self.csts = 0;
        self.async_event_config = 0;
        self.ctrl.set_write_cache(true);
        self.kato_ms = self.connect_kato_ms;
        self.aborted_aers.append(&mut self.aers);
        self.pending_events = 0;
        self.masked_events = 0;
        self.ctrl.raised.store(0, Ordering::Release);
        self.shutdown = Shutdown::None;
        info!(cntlid = self.ctrl.cntlid, "controller reset by host");
    }

    /// CC.SHN 00b → 01b/10b: stop taking I/O, report SHST = 01b (processing) until the I/O
    /// queues have drained and the namespaces' devices are flushed, then 10b (complete).
    fn begin_shutdown(&mut self) {
        if matches!(
            self.shutdown,
            Shutdown::Draining { .. } | Shutdown::Flushing { .. }
        ) {
            return;
        }
        self.ctrl.ready.store(false, Ordering::Release);
        let seq = self.ctrl.shutdown_seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.shutdown = Shutdown::Draining { seq };
        self.csts = (self.csts & !SHST_MASK) | SHST_PROCESSING;
        info!(
            cntlid = self.ctrl.cntlid,
            "controller shutdown requested by host"
        );
    }

    /// The next thing the controller needs done: answer an aborted or event-completed AER, or
    /// flush a device for a shutdown. `bdevs` are the namespaces' devices.
    pub(super) fn next_step(&mut self, bdevs: &[super::Namespace]) -> Option<Step> {
        if let Some(cid) = self.aborted_aers.pop() {
            return Some(Step::Complete {
                cid,
                status: Status::ABORTED_SQ_DELETION,
                dw0: 0,
            });
        }
        match self.shutdown {
            Shutdown::Draining { seq } if self.ctrl.io_queues_drained(seq) => {
                self.shutdown = Shutdown::Flushing {
                    next: 0,
                    left: bdevs.len(),
                    failed: false,
                };
                return self.next_step(bdevs);
            }
            Shutdown::Flushing { next, left, failed } => {
                if left == 0 {
                    self.finish_shutdown(failed);
                } else if next < bdevs.len() {
                    self.shutdown = Shutdown::Flushing {
                        next: next + 1,
                        left,
                        failed,
                    };
                    return Some(Step::Flush {
                        bdev: bdevs[next].bdev,
                    });
                }
            }
            _ => {}
        }
        self.next_event()
    }

    /// A shutdown flush finished.
    pub(super) fn flush_done(&mut self, ok: bool) {
        if let Shutdown::Flushing { next, left, failed } = self.shutdown {
            let left = left.saturating_sub(1);
            let failed = failed || !ok;
            self.shutdown = Shutdown::Flushing { next, left, failed };
            if left == 0 {
                self.finish_shutdown(failed);
            }
        }
    }

    fn finish_shutdown(&mut self, failed: bool) {
        self.shutdown = Shutdown::Done;
        if failed {
            // The data may not be durable: the controller cannot report a clean shutdown.
            self.csts |= CSTS_CFS;
            warn!(
                cntlid = self.ctrl.cntlid,
                "shutdown flush failed: controller fatal status set"
            );
        } else {
            self.csts = (self.csts & !SHST_MASK) | SHST_COMPLETE;
            info!(cntlid = self.ctrl.cntlid, "controller shutdown complete");
        }
    }

    /// Take events raised from other threads, and complete the oldest held AER with the first
    /// enabled, unmasked one.
    fn next_event(&mut self) -> Option<Step> {
        let raised = self.ctrl.raised.swap(0, Ordering::AcqRel);
        // An event the host has not enabled is not reported, now or later.
        self.pending_events |= raised & self.async_event_config;
        if self.aers.is_empty() {
            return None;
        }
        let event = AsyncEvent::ALL
            .into_iter()
            .find(|e| self.pending_events & e.bit() != 0 && self.masked_events & e.bit() == 0)?;
        self.pending_events &= !event.bit();
        self.masked_events |= event.bit();
        let cid = self.aers.remove(0);
        Some(Step::Complete {
            cid,
            status: Status::SUCCESS,
            dw0: event.dw0(),
        })
    }

    /// The host read log page `lid` (without Retain Asynchronous Event): events that point at
    /// it may be reported again.
    fn log_read(&mut self, lid: u8) {
        for e in AsyncEvent::ALL {
            if e.log_page() == lid {
                self.masked_events &= !e.bit();
            }
        }
    }
}

pub(super) fn execute(qp: &mut QueuePair, cap: &mut Capsule, now: Instant) -> Outcome {
    let State::Admin(a) = &mut qp.state else {
        unreachable!("admin::execute on a non-admin queue")
    };
    if !a.enabled() {
        return qp.respond(cap, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
    }
    let discovery = a.ctrl.subsys == SubsysRef::Discovery;
    let sqe = cap.sqe;
    match sqe.opcode {
        opcode::ADMIN_KEEP_ALIVE => {
            a.keep_alive(now);
            qp.respond(cap, Status::SUCCESS, 0, 0)
        }
        opcode::ADMIN_IDENTIFY => {
            let cns = sqe.cdw10 as u8;
            if discovery && cns != cns::CONTROLLER {
                return qp.respond(cap, Status::INVALID_FIELD, 0, 0);
            }
            let target = qp.target.clone();
            let ctrl = a.ctrl.clone();
            let len = cap.data_len.min(identify::SIZE as u32);
            let Some(buf) = cap.buf.as_mut() else {
                return qp.respond(cap, Status::INTERNAL_ERROR, 0, 0);
            };
            let out = &mut buf.as_mut_slice()[..identify::SIZE];
            out.fill(0);
            match identify::identify(&target, &qp.transport, &ctrl, &sqe, out) {
                Ok(()) => qp.respond(cap, Status::SUCCESS, 0, len),
                Err(s) => qp.respond(cap, s, 0, 0),
            }
        }
        opcode::ADMIN_GET_LOG_PAGE => {
            let target = qp.target.clone();
            let ctrl = a.ctrl.clone();
            let local = a.local;
            match logpage::get_log_page(&target, &ctrl, qp.transport.kind, local, cap) {
                Ok(len) => {
                    // RAE (dword 10 bit 15) clear: the events this page reports are unmasked.
                    if sqe.cdw10 & (1 << 15) == 0 {
                        a.log_read(sqe.cdw10 as u8);
                    }
                    qp.respond(cap, Status::SUCCESS, 0, len)
                }
                Err(s) => qp.respond(cap, s, 0, 0),
            }
        }
        opcode::ADMIN_SET_FEATURES | opcode::ADMIN_GET_FEATURES => features(qp, cap, now),
        opcode::ADMIN_ASYNC_EVENT_REQUEST => {
            if a.aers.len() > AERL as usize {
                return qp.respond(cap, Status::ASYNC_EVENT_LIMIT_EXCEEDED, 0, 0);
            }
            a.aers.push(sqe.cid);
            Outcome::Held
        }
        // Commands complete quickly here, so Abort never finds one: "not aborted" (dw0 bit 0).
        opcode::ADMIN_ABORT if !discovery => qp.respond(cap, Status::SUCCESS, 1, 0),
        _ => qp.respond(cap, Status::INVALID_OPCODE, 0, 0),
    }
}

/// Get Features SEL = 011b: the capabilities of a feature (NVMe base 2.0, Get Features, Figure
/// "Select"): bit 0 saveable, bit 1 namespace specific, bit 2 changeable. Nothing here is saveable
/// or namespace specific; every supported feature is changeable.
const CAP_CHANGEABLE: u32 = 1 << 2;

fn features(qp: &mut QueuePair, cap: &mut Capsule, now: Instant) -> Outcome {
    let set = cap.sqe.opcode == opcode::ADMIN_SET_FEATURES;
    let fid = cap.sqe.cdw10 as u8;
    let cdw11 = cap.sqe.cdw11;
    let target: &Target = &qp.target;
    let State::Admin(a) = &mut qp.state else {
        unreachable!()
    };
    let discovery = a.ctrl.subsys == SubsysRef::Discovery;
    let vwc = match a.ctrl.subsys {
        SubsysRef::Nvm(i) => target.subsystems[i].volatile_cache(),
        SubsysRef::Discovery => false,
    };
    // Which features exist on this controller; anything else is Invalid Field in Command,
    // whatever SEL asks.
    let supported = match fid {
        feature::KEEP_ALIVE_TIMER | feature::ASYNC_EVENT_CONFIG => true,
        feature::NUMBER_OF_QUEUES => !discovery,
        feature::VOLATILE_WRITE_CACHE => vwc,
        _ => false,
    };
    if !supported {
        return qp.respond(cap, Status::INVALID_FIELD, 0, 0);
    }
    let max_io = a.ctrl.max_io_queues as u32;
    let numq = |n: u32| (n - 1) | ((n - 1) << 16);
    if !set {
        // SEL (dword 10 bits 10:8): 0 current, 1 default, 2 saved (nothing is saveable, so the
        // default), 3 supported capabilities; 4..7 reserved.
        let dw0 = match ((cap.sqe.cdw10 >> 8) & 7, fid) {
            (3, _) => CAP_CHANGEABLE,
            (0, feature::KEEP_ALIVE_TIMER) => a.kato_ms,
            (1 | 2, feature::KEEP_ALIVE_TIMER) => a.connect_kato_ms,
            (0, feature::ASYNC_EVENT_CONFIG) => a.async_event_config,
            (1 | 2, feature::ASYNC_EVENT_CONFIG) => 0,
            (0, feature::NUMBER_OF_QUEUES) => numq(a.ctrl.io_queues.load(Ordering::Acquire) as u32),
            (1 | 2, feature::NUMBER_OF_QUEUES) => numq(max_io),
            (0, feature::VOLATILE_WRITE_CACHE) => a.ctrl.write_cache() as u32,
            (1 | 2, feature::VOLATILE_WRITE_CACHE) => 1,
            _ => return qp.respond(cap, Status::INVALID_FIELD, 0, 0),
        };
        return qp.respond(cap, Status::SUCCESS, dw0, 0);
    }
    // Save (bit 31) is not supported: no feature is saveable.
    if cap.sqe.cdw10 & (1 << 31) != 0 {
        return qp.respond(cap, Status::FEATURE_NOT_SAVEABLE, 0, 0);
    }
    let dw0 = match fid {
        feature::KEEP_ALIVE_TIMER => {
            a.kato_ms = round_kato(cdw11);
            a.keep_alive(now);
            0
        }
        feature::ASYNC_EVENT_CONFIG => {
            a.async_event_config = cdw11;
            0
        }
        feature::NUMBER_OF_QUEUES => {
            // Only before any I/O queue exists (since the last reset); afterwards the count
            // is fixed: Command Sequence Error (NVMe base 2.0, Number of Queues, FID 07h).
            if a.ctrl.queues_created.load(Ordering::Acquire) {
                return qp.respond(cap, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
            }
            let (nsqr, ncqr) = (cdw11 & 0xffff, cdw11 >> 16);
            if nsqr == 0xffff || ncqr == 0xffff {
                return qp.respond(cap, Status::INVALID_FIELD, 0, 0);
            }
            let granted = (nsqr.min(ncqr) + 1).min(max_io) as u16;
            a.ctrl.io_queues.store(granted, Ordering::Release);
            info!(
                cntlid = a.ctrl.cntlid,
                requested = nsqr.min(ncqr) + 1,
                granted,
                "number of I/O queues set"
            );
            numq(granted as u32)
        }
        // Volatile Write Cache (Base 2.0, FID 06h; only when Identify Controller VWC bit 0 says a
        // cache is present, else Invalid Field). CDW11/DW0 bit 0 is WCE. The setting lives in
        // CtrlShared, so the I/O queues of this controller (any reactor) see it on their next
        // write: with WCE cleared they send every write down with FUA (core/io.rs).
        feature::VOLATILE_WRITE_CACHE => {
            let wce = cdw11 & 1 != 0;
            a.ctrl.set_write_cache(wce);
            info!(
                cntlid = a.ctrl.cntlid,
                enabled = wce,
                "volatile write cache set"
            );
            0
        }
        _ => return qp.respond(cap, Status::INVALID_FIELD, 0, 0),
    };
    qp.respond(cap, Status::SUCCESS, dw0, 0)
}
