//! A queue pair: one connection's view of the core. It starts unconnected, becomes an admin queue
//! (owning its controller) or an I/O queue (sharing one) at Connect, and answers every capsule.
//!
//! Besides answering capsules ([`QueuePair::execute`], [`QueuePair::io_done`]) the core has work of
//! its own that the reactor carries out: [`QueuePair::poll_timers`] says when a queue must be torn
//! down, [`QueuePair::next_action`] hands out completions of held commands and the flushes a
//! shutdown needs, and [`QueuePair::wants_close`] says when a disconnected queue may close.

use super::admin::{AdminState, Step};
use super::controller::CtrlShared;
use super::{fabrics, io, SubsysRef, Target};
use nvmfd_bdev::{IoError, Op};
use nvmfd_transport::proto::fabrics::fctype;
use nvmfd_transport::proto::nvme::{opcode, Cqe};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::{Capsule, Response};
use nvmfd_config::TransportKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
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
    /// The core keeps the command (an Asynchronous Event Request) and answers it later through
    /// [`Action::Complete`], naming it by its CID.
    Held,
}

/// Work the core asks of the reactor outside any capsule (from [`QueuePair::next_action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send this response for the held command with CID `resp.cqe.cid` (no data).
    Complete(Response),
    /// Flush block device `bdev` (make completed writes durable), then call
    /// [`QueuePair::flush_done`].
    Flush { bdev: usize },
}

pub(super) enum State {
    Unconnected,
    Admin(Box<AdminState>),
    Io {
        ctrl: Arc<CtrlShared>,
        subsys: usize,
        /// The controller epoch this queue connected in.
        epoch: u32,
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
    /// The local address the connection arrived on (set by the transport).
    pub(super) local: Option<SocketAddr>,
    /// The transport that carries this queue (its limits, Identify's SGL support).
    pub(super) transport: TransportKind,
    /// Block-device I/Os handed out ([`Outcome::Io`]) and not yet back ([`QueuePair::io_done`]).
    in_flight: u32,
    /// The last controller shutdown this I/O queue acknowledged.
    shutdown_acked: u32,
    /// Fabrics Disconnect ended this I/O queue: its QID is given back and the connection closes
    /// once nothing is in flight.
    disconnected: bool,
}

impl QueuePair {
    pub fn new(target: Arc<Target>) -> Self {
        QueuePair {
            target,
            qid: 0,
            sq_entries: 0,
            sqhd: 0,
            state: State::Unconnected,
            local: None,
            transport: TransportKind::Tcp,
            in_flight: 0,
            shutdown_acked: 0,
            disconnected: false,
        }
    }

    /// Tell the core which local address the connection arrived on (the discovery log
    /// advertises it for listeners on a wildcard address, as Linux nvmet does).
    pub fn set_local_addr(&mut self, addr: SocketAddr) {
        self.local = Some(addr);
    }

    /// Tell the core which transport carries the queue (TCP unless told otherwise).
    pub fn set_transport(&mut self, transport: TransportKind) {
        self.transport = transport;
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
        Outcome::Done(self.response(cap.sqe.cid, status, dw0, data_len))
    }

    fn response(&self, cid: u16, status: Status, dw0: u32, data_len: u32) -> Response {
        let data_len = if status.is_success() { data_len } else { 0 };
        Response {
            cqe: Cqe {
                dw0,
                dw1: 0,
                sqhd: self.sqhd,
                sqid: self.qid,
                cid,
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
                // Disconnect deletes the I/O queue it is submitted on (NVMe-oF 1.1, Disconnect;
                // OFCS bit 0): its QID is free from now on, the response goes out and then the
                // connection closes. An admin queue ends by closing the connection.
                (State::Io { .. }, fctype::DISCONNECT) => self.disconnect(cap),
                _ => self.respond(cap, Status::INVALID_OPCODE, 0, 0),
            };
        }
        match &mut self.state {
            State::Unconnected => self.respond(cap, Status::COMMAND_SEQUENCE_ERROR, 0, 0),
            State::Admin(_) => super::admin::execute(self, cap, now),
            State::Io {
                ctrl,
                subsys,
                epoch,
            } => {
                // One load of the controller's shared line per command: a reset deleted this
                // queue (its commands are aborted), a shutdown or disable stops I/O.
                if ctrl.epoch.load(Ordering::Acquire) != *epoch {
                    return self.respond(cap, Status::ABORTED_SQ_DELETION, 0, 0);
                }
                if self.disconnected || !ctrl.ready.load(Ordering::Acquire) {
                    return self.respond(cap, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
                }
                let subsys = *subsys;
                let write_cache = ctrl.write_cache();
                match io::check(
                    &self.target.subsystems[subsys],
                    self.target.limits_for(self.transport),
                    cap,
                    write_cache,
                ) {
                    Ok(io::Checked::Io { bdev, op }) => {
                        self.in_flight += 1;
                        Outcome::Io { bdev, op }
                    }
                    Ok(io::Checked::Done) => self.respond(cap, Status::SUCCESS, 0, 0),
                    Err(status) => self.respond(cap, status, 0, 0),
                }
            }
        }
    }

    fn disconnect(&mut self, cap: &Capsule) -> Outcome {
        if let State::Io { ctrl, epoch, .. } = &self.state {
            if !self.disconnected {
                ctrl.release_qid(self.qid, *epoch);
                self.disconnected = true;
                tracing::info!(
                    cntlid = ctrl.cntlid,
                    qid = self.qid,
                    "I/O queue disconnected by host"
                );
            }
        }
        self.respond(cap, Status::SUCCESS, 0, 0)
    }

    /// A block-device I/O for `cap` finished; its buffer is back in the capsule.
    pub fn io_done(&mut self, cap: &Capsule, result: Result<(), IoError>) -> Response {
        self.in_flight = self.in_flight.saturating_sub(1);
        let status = match result {
            Ok(()) => Status::SUCCESS,
            Err(IoError::OutOfRange) => Status::LBA_OUT_OF_RANGE,
            Err(IoError::BufferTooSmall) => Status::DATA_SGL_LENGTH_INVALID,
            Err(IoError::Unsupported) => Status::INVALID_OPCODE,
            Err(IoError::Media(_)) if cap.sqe.opcode == opcode::NVM_READ => {
                Status::UNRECOVERED_READ_ERROR
            }
            Err(IoError::Media(_)) => Status::WRITE_FAULT,
            // The SSD's own answer goes back unchanged (NVMe-oF 1.1: the fabric carries the
            // controller's completion status).
            Err(IoError::Nvme { sct, sc, dnr }) => Status { sct, sc, dnr },
        };
        let data_len = if cap.sqe.opcode == opcode::NVM_READ {
            io::transfer_len(&self.target, &self.state, cap)
        } else {
            0
        };
        self.response(cap.sqe.cid, status, 0, data_len)
    }

    /// Block-device I/Os of this queue still in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Check time-driven and cross-queue rules; returns why the queue must be torn down, if it
    /// must. An I/O queue also acknowledges a controller shutdown here once it has nothing in
    /// flight.
    pub fn poll_timers(&mut self, now: Instant) -> Option<&'static str> {
        match &self.state {
            State::Admin(a) => a.expired(now).then_some("keep-alive timeout expired"),
            State::Io { ctrl, epoch, .. } => {
                if ctrl.is_failed() {
                    return Some("controller is gone");
                }
                if ctrl.epoch() != *epoch {
                    return Some("controller was reset: I/O queue deleted");
                }
                let seq = ctrl.shutdown_seq.load(Ordering::Acquire);
                if seq != self.shutdown_acked && self.in_flight == 0 {
                    ctrl.ack_shutdown(self.qid, *epoch, seq);
                    self.shutdown_acked = seq;
                }
                None
            }
            State::Unconnected => None,
        }
    }

    /// The next piece of work the core needs from the reactor (none on I/O queues): a completion
    /// for a held command, or a block-device flush for a shutdown. Call until it returns None.
    pub fn next_action(&mut self) -> Option<Action> {
        let State::Admin(a) = &mut self.state else {
            return None;
        };
        let namespaces: &[super::Namespace] = match a.ctrl.subsys {
            SubsysRef::Nvm(i) => &self.target.subsystems[i].namespaces,
            SubsysRef::Discovery => &[],
        };
        match a.next_step(namespaces)? {
            Step::Complete { cid, status, dw0 } => {
                let r = self.response(cid, status, dw0, 0);
                Some(Action::Complete(r))
            }
            Step::Flush { bdev } => Some(Action::Flush { bdev }),
        }
    }

    /// A flush asked for by [`Action::Flush`] finished.
    pub fn flush_done(&mut self, result: Result<(), IoError>) {
        if let State::Admin(a) = &mut self.state {
            if let Err(e) = result {
                tracing::warn!(cntlid = a.ctrl.cntlid, error = %e, "shutdown flush failed");
            }
            a.flush_done(result.is_ok());
        }
    }

    /// Whether the queue has ended (Fabrics Disconnect) and the connection should close once
    /// its responses are sent and nothing is in flight.
    pub fn wants_close(&self) -> Option<&'static str> {
        self.disconnected
            .then_some("host disconnected the I/O queue")
    }

    /// The connection is gone: release what the queue held. An admin queue takes its controller
    /// with it (its I/O queues notice through [`CtrlShared::failed`]).
    pub fn teardown(&mut self) {
        match std::mem::replace(&mut self.state, State::Unconnected) {
            State::Admin(a) => self.target.registry.destroy(&a.ctrl),
            State::Io { ctrl, epoch, .. } => {
                if !self.disconnected {
                    ctrl.release_qid(self.qid, epoch);
                }
            }
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
