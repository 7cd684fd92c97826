//! A queue pair: one connection's view of the core. It starts unconnected, becomes an admin queue
//! (owning its controller) or an I/O queue (sharing one) at Connect, and answers every command,
//! in two phases: [`QueuePair::admit`] (from the SQE and the transport's [`DataDesc`] alone: an
//! answer now, or the data it needs) and [`QueuePair::execute`] (once that data is in place).
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
use nvmfd_transport::proto::nvme::{opcode, Cqe, Direction, Sqe};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::{Admission, Capsule, DataDesc, DataNeed, Response, TransportInfo};
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

/// What the admission of an I/O command found, for [`QueuePair::execute_with`]: the namespace's
/// block device and block size, and which snapshot of the target they are of (see
/// [`QueuePair::admitted`]). Executed under the same snapshot, a Read or Write of that namespace
/// needs no second look at what admission checked (namespace, LBA range, MDTS, SGL length);
/// under a newer one (live reconfiguration came in between) it is checked again in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    snapshot: u32,
    nsid: u32,
    bdev: usize,
    block_size: u32,
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
    /// The transport the queue pair arrived on: its limits and the values Identify reports.
    pub(super) transport: TransportInfo,
    pub(super) qid: u16,
    /// Entries in the submission queue (Connect's SQSIZE + 1); 0 before Connect.
    pub(super) sq_entries: u16,
    sqhd: u16,
    pub(super) state: State,
    /// The local address the connection arrived on (set by the transport).
    pub(super) local: Option<SocketAddr>,
    /// Block-device I/Os handed out ([`Outcome::Io`]) and not yet back ([`QueuePair::io_done`]).
    in_flight: u32,
    /// The last controller shutdown this I/O queue acknowledged.
    shutdown_acked: u32,
    /// Fabrics Disconnect ended this I/O queue: its QID is given back and the connection closes
    /// once nothing is in flight.
    disconnected: bool,
    /// Snapshots replaced while commands were in flight (live reconfiguration, `live.rs`).
    pub(super) retired: Vec<Arc<Target>>,
    /// How many snapshots this queue took after its first ([`Self::set_target`]): what an
    /// [`Admitted`] is stamped with.
    pub(super) snapshot: u32,
    /// What the last command admitted found ([`Self::admitted`]).
    last_admitted: Option<Admitted>,
}

impl QueuePair {
    /// A queue pair on a new connection of the transport `transport` describes.
    pub fn new(target: Arc<Target>, transport: TransportInfo) -> Self {
        QueuePair {
            target,
            transport,
            qid: 0,
            sq_entries: 0,
            sqhd: 0,
            state: State::Unconnected,
            local: None,
            in_flight: 0,
            shutdown_acked: 0,
            disconnected: false,
            retired: Vec::new(),
            snapshot: 0,
            last_admitted: None,
        }
    }

    /// Tell the core which local address the connection arrived on (the discovery log
    /// advertises it for listeners on a wildcard address, as Linux nvmet does).
    pub fn set_local_addr(&mut self, addr: SocketAddr) {
        self.local = Some(addr);
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

    /// The transport this queue pair arrived on.
    pub fn transport(&self) -> &TransportInfo {
        &self.transport
    }

    /// In-capsule data a command may carry on this queue: IOCCSZ's on an I/O queue, the
    /// transport's admin capsule size on the admin queue, the larger of the two before Connect
    /// (Connect's own 1 KiB of data must fit either way).
    pub fn in_capsule_limit(&self) -> u32 {
        let t = &self.transport;
        match (&self.state, self.qid) {
            (State::Unconnected, _) => t.in_capsule_data_size.max(t.admin_in_capsule_data_size),
            (_, 0) => t.admin_in_capsule_data_size,
            _ => t.in_capsule_data_size,
        }
    }

    /// The SQ head moves past one entry.
    fn consume_entry(&mut self) {
        if self.sq_entries != 0 {
            // sqhd < sq_entries: wrapping by comparison, not by a division.
            self.sqhd += 1;
            if self.sqhd >= self.sq_entries {
                self.sqhd = 0;
            }
        }
    }

    /// Phase one: admit a new command from its SQE and the transport's description of its data,
    /// before any data moves or any buffer is taken. The answer is a response to send now (the
    /// command is refused, or its SGL is), "execute now" (no data), or the data to move first.
    ///
    /// The SGL rules every transport shares are checked here, once: PSDT must select SGLs
    /// (NVMe-oF 1.1, 2.x: fabrics commands use SGLs only), in-capsule data must be for a
    /// host-to-controller command and lie within the queue's capsule size, data the transport
    /// moves may not exceed MDTS (Invalid Field in Command, as Identify MDTS says), nor number
    /// more descriptors than MSDBD. Then, for I/O commands, the namespace, the LBA range, MDTS
    /// against NLB and whether the SGL covers NLB blocks. A refused command never reaches
    /// [`Self::execute`]; an admitted one must, once (the SQ head moves then).
    pub fn admit(&mut self, sqe: &Sqe, desc: DataDesc) -> Admission {
        self.last_admitted = None;
        match self.admission(sqe, desc) {
            Ok(a) => a,
            Err(status) => {
                self.consume_entry();
                Admission::Respond(self.response(sqe.cid, status, 0, 0))
            }
        }
    }

    fn admission(&mut self, sqe: &Sqe, desc: DataDesc) -> Result<Admission, Status> {
        if sqe.psdt() == 0 {
            return Err(Status::INVALID_FIELD);
        }
        let dir = sqe.data_direction();
        let t = &self.transport;
        let len = match desc {
            // In-capsule data (NVMe base 2.0, SGL Data Block descriptor, Offset subtype): its
            // address is an offset into the capsule's data. The capsule size bounds it: an offset
            // past it points outside the capsule (SGL Offset Invalid, as SPDK; Linux nvmet
            // answers that for a length past it too); data past it, or a descriptor reaching past
            // the data the capsule carries, is a length error.
            DataDesc::InCapsule {
                offset,
                len,
                carried,
            } => {
                if dir != Direction::HostToController {
                    return Err(Status::DATA_SGL_LENGTH_INVALID);
                }
                let limit = self.in_capsule_limit() as u64;
                if offset > limit {
                    return Err(Status::SGL_OFFSET_INVALID);
                }
                let end = offset + len as u64;
                if carried as u64 > limit || end > limit || end > carried as u64 {
                    return Err(Status::DATA_SGL_LENGTH_INVALID);
                }
                len
            }
            _ if dir == Direction::Bidirectional => return Err(Status::INVALID_OPCODE),
            DataDesc::Refused(status) => return Err(status),
            DataDesc::None => 0,
            // A command that moves no data ignores its SGL.
            DataDesc::Remote { .. } if dir == Direction::None => 0,
            DataDesc::Remote { len, descriptors } => {
                if descriptors > t.msdbd as u16 {
                    return Err(Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS);
                }
                // More than MDTS: Invalid Field in Command (NVMe base 2.0, Identify Controller,
                // MDTS: a command exceeding the transfer size is aborted with that status). Admin
                // commands may move up to the admin capsule size even with a smaller MDTS.
                if len > t.max_io_size.max(t.admin_in_capsule_data_size) {
                    return Err(Status::INVALID_FIELD);
                }
                len
            }
        };
        let mut bdev = None;
        if sqe.opcode == opcode::FABRICS {
            if matches!(self.state, State::Unconnected) && sqe.fctype() != fctype::CONNECT {
                return Err(Status::COMMAND_SEQUENCE_ERROR);
            }
        } else {
            match &self.state {
                State::Unconnected => return Err(Status::COMMAND_SEQUENCE_ERROR),
                State::Admin(_) => {}
                State::Io {
                    ctrl,
                    subsys,
                    epoch,
                } => {
                    if ctrl.epoch.load(Ordering::Acquire) != *epoch {
                        return Err(Status::ABORTED_SQ_DELETION);
                    }
                    if self.disconnected || !ctrl.ready.load(Ordering::Acquire) {
                        return Err(Status::COMMAND_SEQUENCE_ERROR);
                    }
                    let (b, block_size) = io::admit(&self.target.subsystems[*subsys], t, sqe, len)?;
                    bdev = Some(b);
                    self.last_admitted = Some(Admitted {
                        snapshot: self.snapshot,
                        nsid: sqe.nsid,
                        bdev: b,
                        block_size,
                    });
                }
            }
        }
        Ok(if len == 0 {
            Admission::Execute
        } else {
            Admission::Data(DataNeed { len, dir, bdev })
        })
    }

    /// What execution may take over from the admission of the command [`Self::admit`] last
    /// admitted: Some for an I/O command on a namespace, to be handed to
    /// [`Self::execute_with`] with it.
    pub fn admitted(&self) -> Option<Admitted> {
        self.last_admitted
    }

    /// Phase two: run an admitted command whose data is in place (host-to-controller data has
    /// fully arrived; a controller-to-host command has a buffer of the length admitted). `now`
    /// is the time, for the commands that need one (see [`Self::execute_with`]).
    pub fn execute(&mut self, cap: &mut Capsule, now: Instant) -> Outcome {
        self.execute_with(cap, || now, None)
    }

    /// [`Self::execute`], the time coming from `clock`, which only admin commands (the
    /// keep-alive timer) and Connect call: a reactor reads no clock for an I/O command.
    /// `admitted` is what [`Self::admitted`] said when the command was admitted, if anything.
    pub fn execute_with(
        &mut self,
        cap: &mut Capsule,
        clock: impl FnOnce() -> Instant,
        admitted: Option<Admitted>,
    ) -> Outcome {
        self.consume_entry();
        let sqe = cap.sqe;
        if sqe.opcode == opcode::FABRICS {
            return match (&self.state, sqe.fctype()) {
                (State::Unconnected, fctype::CONNECT) => fabrics::connect(self, cap, clock()),
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
            State::Admin(_) => super::admin::execute(self, cap, clock()),
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
                let admitted = admitted
                    .filter(|a| a.snapshot == self.snapshot && a.nsid == cap.sqe.nsid)
                    .map(|a| (a.bdev, a.block_size));
                match io::check(
                    &self.target.subsystems[subsys],
                    &self.transport,
                    cap,
                    write_cache,
                    admitted,
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
            // The snapshot the command was admitted under may have been replaced since.
            (self.completion_targets())
                .map(|t| io::transfer_len(t, &self.state, cap))
                .find(|&n| n != 0)
                .unwrap_or(0)
        } else {
            0
        };
        self.release_retired();
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
