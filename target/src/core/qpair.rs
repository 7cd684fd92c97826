//! A queue pair: one connection's view of the core. It starts unconnected, becomes an admin queue
//! (owning its controller) or an I/O queue (sharing one) at Connect, and answers every capsule.

use super::admin::AdminState;
use super::controller::CtrlShared;
use super::{fabrics, io, SubsysRef, Target};
use nvmfd_bdev::{IoError, Op};
use nvmfd_transport::proto::fabrics::fctype;
use nvmfd_transport::proto::nvme::{opcode, Cqe};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::{Capsule, Response};
use std::sync::Arc;
use std::time::Instant;

/// What the reactor must do with a capsule the core has looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send this response (and `data_len` bytes of the capsule's buffer before it).
    Done(Response),
    /// Move the capsule's buffer into an I/O on block device `bdev`, then call
    /// [`QueuePair::io_done`] when it completes.
    Io { bdev: usize, op: Op },
    /// The core keeps the command (an Asynchronous Event Request) and answers it later.
    Held,
}

pub(super) enum State {
    Unconnected,
    Admin(Box<AdminState>),
    Io {
        ctrl: Arc<CtrlShared>,
        subsys: usize,
    },
}

/// One queue pair's state.
pub struct QueuePair {
    pub(super) target: Arc<Target>,
    pub(super) qid: u16,
    /// Entries in the submission queue (Connect's SQSIZE + 1); 0 before Connect.
    pub(super) sq_entries: u16,
    sqhd: u16,
    pub(super) state: State,
}

impl QueuePair {
    pub fn new(target: Arc<Target>) -> Self {
        QueuePair {
            target,
            qid: 0,
            sq_entries: 0,
            sqhd: 0,
            state: State::Unconnected,
        }
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// The queue ID (meaningful once connected).
    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn is_connected(&self) -> bool {
        !matches!(self.state, State::Unconnected)
    }

    /// The controller this queue belongs to, once connected.
    pub fn controller(&self) -> Option<&Arc<CtrlShared>> {
        match &self.state {
            State::Unconnected => None,
            State::Admin(a) => Some(&a.ctrl),
            State::Io { ctrl, .. } => Some(ctrl),
        }
    }

    /// Entries of the submission queue the host negotiated (0 before Connect).
    pub fn sq_entries(&self) -> u16 {
        self.sq_entries
    }

    /// Build a response to `cap` with the current SQ head.
    pub(super) fn respond(
        &self,
        cap: &Capsule,
        status: Status,
        dw0: u32,
        data_len: u32,
    ) -> Outcome {
        Outcome::Done(self.response(cap, status, dw0, data_len))
    }

    fn response(&self, cap: &Capsule, status: Status, dw0: u32, data_len: u32) -> Response {
        let data_len = if status.is_success() { data_len } else { 0 };
        Response {
            cqe: Cqe {
                dw0,
                dw1: 0,
                sqhd: self.sqhd,
                sqid: self.qid,
                cid: cap.sqe.cid,
                status,
            },
            data_len,
        }
    }

    /// Look at a capsule whose host-to-controller data (if any) has fully arrived.
    pub fn execute(&mut self, cap: &mut Capsule, now: Instant) -> Outcome {
        if self.sq_entries != 0 {
            self.sqhd = (self.sqhd + 1) % self.sq_entries;
        }
        let sqe = cap.sqe;
        if sqe.opcode == opcode::FABRICS {
            return match (&self.state, sqe.fctype()) {
                (State::Unconnected, fctype::CONNECT) => fabrics::connect(self, cap, now),
                (_, fctype::CONNECT) => self.respond(cap, Status::COMMAND_SEQUENCE_ERROR, 0, 0),
                (State::Unconnected, _) => self.respond(cap, Status::COMMAND_SEQUENCE_ERROR, 0, 0),
                (State::Admin(_), fctype::PROPERTY_GET | fctype::PROPERTY_SET) => {
                    fabrics::property(self, cap)
                }
                // Disconnect is defined for I/O queues; an admin queue ends by closing the connection.
                (State::Io { .. }, fctype::DISCONNECT) => self.respond(cap, Status::SUCCESS, 0, 0),
                _ => self.respond(cap, Status::INVALID_OPCODE, 0, 0),
            };
        }
        match &mut self.state {
            State::Unconnected => self.respond(cap, Status::COMMAND_SEQUENCE_ERROR, 0, 0),
            State::Admin(_) => super::admin::execute(self, cap, now),
            State::Io { ctrl, subsys } => {
                if !ctrl.ready.load(std::sync::atomic::Ordering::Acquire) {
                    return self.respond(cap, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
                }
                let subsys = *subsys;
                let write_cache = ctrl.write_cache();
                match io::check(
                    &self.target.subsystems[subsys],
                    &self.target.limits,
                    cap,
                    write_cache,
                ) {
                    Ok(io::Checked::Io { bdev, op }) => Outcome::Io { bdev, op },
                    Ok(io::Checked::Done) => self.respond(cap, Status::SUCCESS, 0, 0),
                    Err(status) => self.respond(cap, status, 0, 0),
                }
            }
        }
    }

    /// A block-device I/O for `cap` finished; its buffer is back in the capsule.
    pub fn io_done(&mut self, cap: &Capsule, result: Result<(), IoError>) -> Response {
        let status = match result {
            Ok(()) => Status::SUCCESS,
            Err(IoError::OutOfRange) => Status::LBA_OUT_OF_RANGE,
            Err(IoError::BufferTooSmall) => Status::DATA_SGL_LENGTH_INVALID,
            Err(IoError::Unsupported) => Status::INVALID_OPCODE,
            Err(IoError::Media(_)) if cap.sqe.opcode == opcode::NVM_READ => {
                Status::UNRECOVERED_READ_ERROR
            }
            Err(IoError::Media(_)) => Status::WRITE_FAULT,
        };
        let data_len = if cap.sqe.opcode == opcode::NVM_READ {
            io::transfer_len(&self.target, &self.state, cap)
        } else {
            0
        };
        self.response(cap, status, 0, data_len)
    }

    /// Check time-driven rules; returns why the queue must be torn down, if it must.
    pub fn poll_timers(&mut self, now: Instant) -> Option<&'static str> {
        match &self.state {
            State::Admin(a) => a.expired(now).then_some("keep-alive timeout expired"),
            State::Io { ctrl, .. } if ctrl.is_failed() => Some("controller is gone"),
            _ => None,
        }
    }

    /// The connection is gone: release what the queue held. An admin queue takes its controller
    /// with it (its I/O queues notice through [`CtrlShared::failed`]).
    pub fn teardown(&mut self) {
        match std::mem::replace(&mut self.state, State::Unconnected) {
            State::Admin(a) => self.target.registry.destroy(&a.ctrl),
            State::Io { ctrl, .. } => ctrl.release_qid(self.qid),
            State::Unconnected => {}
        }
    }

    /// Short description for log lines: subsystem, controller and queue.
    pub fn describe(&self) -> String {
        match self.controller() {
            None => "unconnected".to_string(),
            Some(c) => {
                let nqn = match c.subsys {
                    SubsysRef::Discovery => nvmfd_transport::proto::fabrics::DISCOVERY_NQN,
                    SubsysRef::Nvm(i) => &self.target.subsystems[i].nqn,
                };
                format!("{nqn} cntlid {} qid {}", c.cntlid, self.qid)
            }
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        self.teardown();
    }
}
