//! The admin queue: controller state (CC/CSTS, features, keep-alive, async events) and the admin
//! command set.

use super::controller::CtrlShared;
use super::qpair::{Outcome, QueuePair, State};
use super::{identify, logpage, SubsysRef};
use nvmfd_transport::proto::nvme::{cns, feature, opcode};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::Capsule;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

/// Asynchronous Event Request Limit (0-based): up to 4 outstanding.
pub const AERL: u8 = 3;

/// The controller's mutable state, owned by its admin queue.
#[derive(Debug)]
pub struct AdminState {
    pub ctrl: Arc<CtrlShared>,
    pub cc: u32,
    pub csts: u32,
    pub kato_ms: u32,
    ka_deadline: Option<Instant>,
    pub async_event_config: u32,
    /// CIDs of outstanding Asynchronous Event Requests.
    pub aers: Vec<u16>,
}

impl AdminState {
    pub fn new(ctrl: Arc<CtrlShared>, kato_ms: u32, now: Instant) -> Self {
        let mut s = AdminState {
            ctrl,
            cc: 0,
            csts: 0,
            kato_ms,
            ka_deadline: None,
            async_event_config: 0,
            aers: Vec::with_capacity(AERL as usize + 1),
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
        self.cc & 1 != 0 && self.csts & 1 != 0
    }

    /// A host wrote CC: enable, disable (reset) or shut down.
    pub fn set_cc(&mut self, cc: u32) {
        let was = self.cc;
        self.cc = cc;
        let en = cc & 1 != 0;
        let shn = (cc >> 14) & 3;
        if shn != 0 {
            // Shutdown: nothing is cached beyond what the bdevs persist on completion.
            self.csts = (self.csts & !0xc) | (2 << 2);
            self.ctrl.ready.store(false, Ordering::Release);
            info!(cntlid = self.ctrl.cntlid, "controller shut down by host");
        } else if en && was & 1 == 0 {
            self.csts = 1;
            self.ctrl.ready.store(true, Ordering::Release);
        } else if !en && was & 1 != 0 {
            self.csts = 0;
            self.ctrl.ready.store(false, Ordering::Release);
            info!(cntlid = self.ctrl.cntlid, "controller reset by host");
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
            match identify::identify(&target, &ctrl, &sqe, out) {
                Ok(()) => qp.respond(cap, Status::SUCCESS, 0, len),
                Err(s) => qp.respond(cap, s, 0, 0),
            }
        }
        opcode::ADMIN_GET_LOG_PAGE => {
            let target = qp.target.clone();
            let ctrl = a.ctrl.clone();
            match logpage::get_log_page(&target, &ctrl, cap) {
                Ok(len) => qp.respond(cap, Status::SUCCESS, 0, len),
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

fn features(qp: &mut QueuePair, cap: &mut Capsule, now: Instant) -> Outcome {
    let set = cap.sqe.opcode == opcode::ADMIN_SET_FEATURES;
    let fid = cap.sqe.cdw10 as u8;
    let cdw11 = cap.sqe.cdw11;
    let max_io = qp.target.limits.max_io_queues;
    let State::Admin(a) = &mut qp.state else {
        unreachable!()
    };
    let discovery = a.ctrl.subsys == SubsysRef::Discovery;
    let vwc = match a.ctrl.subsys {
        SubsysRef::Nvm(i) => qp.target.subsystems[i].volatile_cache(),
        SubsysRef::Discovery => false,
    };
    // Get Features SEL (bits 10:8): current, default and saved all read the current value here;
    // supported capabilities (3) reports "changeable".
    if !set && (cap.sqe.cdw10 >> 8) & 7 == 3 {
        return qp.respond(cap, Status::SUCCESS, 0b100, 0);
    }
    // Save (bit 31) is not supported: no feature is saveable.
    if set && cap.sqe.cdw10 & (1 << 31) != 0 {
        return qp.respond(cap, Status::FEATURE_NOT_SAVEABLE, 0, 0);
    }
    let dw0 = match fid {
        feature::KEEP_ALIVE_TIMER => {
            if set {
                a.kato_ms = cdw11;
                a.keep_alive(now);
            }
            a.kato_ms
        }
        feature::ASYNC_EVENT_CONFIG => {
            if set {
                a.async_event_config = cdw11;
            }
            a.async_event_config
        }
        feature::NUMBER_OF_QUEUES if !discovery => {
            if set {
                let (nsqr, ncqr) = (cdw11 & 0xffff, cdw11 >> 16);
                if nsqr == 0xffff || ncqr == 0xffff {
                    return qp.respond(cap, Status::INVALID_FIELD, 0, 0);
                }
                let granted = (nsqr.min(ncqr) + 1).min(max_io as u32) as u16;
                a.ctrl.io_queues.store(granted, Ordering::Release);
                info!(
                    cntlid = a.ctrl.cntlid,
                    requested = nsqr.min(ncqr) + 1,
                    granted,
                    "number of I/O queues set"
                );
            }
            let n = a.ctrl.io_queues.load(Ordering::Acquire) as u32 - 1;
            n | (n << 16)
        }
        // Volatile Write Cache (Base 2.0, FID 06h; only when Identify Controller VWC bit 0 says a
        // cache is present, else Invalid Field). CDW11/DW0 bit 0 is WCE. The setting lives in
        // CtrlShared, so the I/O queues of this controller (any reactor) see it on their next
        // write: with WCE cleared they send every write down with FUA (core/io.rs).
        feature::VOLATILE_WRITE_CACHE if vwc => {
            if set {
                let wce = cdw11 & 1 != 0;
                a.ctrl.set_write_cache(wce);
                info!(
                    cntlid = a.ctrl.cntlid,
                    enabled = wce,
                    "volatile write cache set"
                );
            }
            a.ctrl.write_cache() as u32
        }
        _ => return qp.respond(cap, Status::INVALID_FIELD, 0, 0),
    };
    qp.respond(cap, Status::SUCCESS, dw0, 0)
}
