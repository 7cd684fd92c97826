//! Fabrics commands: Connect (admin and I/O queues) and Property Get/Set.

use super::admin::AdminState;
use super::qpair::{Outcome, QueuePair, State};
use super::SubsysRef;
use nvmfd_transport::logsafe::{escape, LogDecision};
use nvmfd_transport::proto::fabrics::{
    ConnectCommand, ConnectData, PropertyCommand, DISCOVERY_NQN,
};
use nvmfd_transport::proto::nvme::property;
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::Capsule;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::{info, warn};

/// NVMe version reported in VS and Identify Controller: 1.4. What is implemented is 1.4's: the
/// controller type (CNTRLTYPE) and CTRATT of 1.4 are reported; the 2.0 additions (I/O command set
/// specific Identify, CNS 06h; the command set identifier descriptor, NIDT 04h) are not, so the
/// version does not claim 2.0.
pub const NVME_VERSION: u32 = 0x0001_0400;

/// A refused Connect is logged within the target's budget for them (a host reconnecting in a
/// loop must not flood the log); the line written after suppressed ones says how many.
macro_rules! refused {
    ($target:expr, $($arg:tt)+) => {
        match $target.connect_refusal_log() {
            LogDecision::Log => warn!($($arg)+),
            LogDecision::LogWithSuppressed(suppressed) => warn!(suppressed, $($arg)+),
            LogDecision::Suppress => {}
        }
    };
}

/// Connect Invalid Parameters carries where the bad parameter is: IPO (byte offset) and IATTR
/// (set when the offset is into the Connect data rather than the command).
fn invalid_param(qp: &QueuePair, cap: &Capsule, in_data: bool, offset: u16) -> Outcome {
    qp.respond(
        cap,
        Status::CONNECT_INVALID_PARAMETERS,
        offset as u32 | ((in_data as u32) << 16),
        0,
    )
}

pub(super) fn connect(qp: &mut QueuePair, cap: &mut Capsule, now: Instant) -> Outcome {
    let cmd = ConnectCommand::from_sqe(&cap.sqe);
    if cmd.recfmt != 0 {
        return qp.respond(cap, Status::CONNECT_INCOMPATIBLE_FORMAT, 0, 0);
    }
    let data = match cap.buf.as_ref().map(|b| b.as_slice()) {
        Some(b) if cap.data_len as usize >= ConnectData::SIZE && b.len() >= ConnectData::SIZE => {
            ConnectData::decode(b[..ConnectData::SIZE].try_into().expect("1024 bytes"))
        }
        _ => return qp.respond(cap, Status::DATA_SGL_LENGTH_INVALID, 0, 0),
    };
    let target = qp.target.clone();
    let Some(subsys) = target.find_subsystem(&data.subnqn) else {
        refused!(target, subnqn = %escape(&data.subnqn), hostnqn = %escape(&data.hostnqn), "connect refused: no such subsystem");
        return invalid_param(qp, cap, true, 256);
    };
    // Some initiators (spdk_nvme_perf without `hostnqn:`) send no host NQN at all. Like SPDK's
    // target, accept that where any host may connect; an allow-list can never match it.
    if !data.hostnqn.is_empty() && !data.hostnqn.starts_with("nqn.") {
        refused!(target, subnqn = %escape(&data.subnqn), hostnqn = %escape(&data.hostnqn), "connect refused: malformed host NQN");
        return invalid_param(qp, cap, true, 512);
    }
    if let SubsysRef::Nvm(i) = subsys {
        if !target.subsystems[i].host_allowed(&data.hostnqn) {
            refused!(target, subnqn = %escape(&data.subnqn), hostnqn = %escape(&data.hostnqn), "connect refused: host not on the subsystem's allow list");
            return qp.respond(cap, Status::CONNECT_INVALID_HOST, 0, 0);
        }
    }
    let entries = cmd.sqsize as u32 + 1;
    let max_entries = if cmd.qid == 0 {
        qp.transport.max_admin_queue_entries()
    } else {
        qp.transport.max_queue_depth
    };
    if cmd.sqsize == 0 || entries > max_entries as u32 {
        refused!(target, subnqn = %escape(&data.subnqn), hostnqn = %escape(&data.hostnqn), sqsize = cmd.sqsize, max = max_entries,
            "connect refused: queue size out of range");
        return invalid_param(qp, cap, false, 44);
    }
    if cmd.qid == 0 {
        if data.cntlid != 0xffff {
            return invalid_param(qp, cap, true, 16);
        }
        let (max_io, ids) = match subsys {
            SubsysRef::Discovery => (0, (1, nvmfd_config::MAX_CNTLID)),
            SubsysRef::Nvm(i) => (
                qp.transport.max_io_queues,
                target.subsystems[i].cntlid_range,
            ),
        };
        let Some(ctrl) = target
            .registry
            .create(subsys, ids, &data.hostnqn, data.hostid, max_io)
        else {
            refused!(target, subnqn = %escape(&data.subnqn), hostnqn = %escape(&data.hostnqn), cntlid_min = ids.0, cntlid_max = ids.1,
                "connect refused: every controller ID of the subsystem is in use");
            return qp.respond(cap, Status::CONNECT_CONTROLLER_BUSY, 0, 0);
        };
        info!(subnqn = %escape(&data.subnqn), hostnqn = %escape(&data.hostnqn), cntlid = ctrl.cntlid, kato_ms = cmd.kato_ms, "controller created");
        let cntlid = ctrl.cntlid;
        qp.qid = 0;
        qp.sq_entries = entries as u16;
        let mut admin = AdminState::new(ctrl, cmd.kato_ms, now);
        admin.local = qp.local;
        qp.state = State::Admin(Box::new(admin));
        return qp.respond(cap, Status::SUCCESS, cntlid as u32, 0);
    }
    let SubsysRef::Nvm(si) = subsys else {
        return invalid_param(qp, cap, false, 42);
    };
    let Some(ctrl) = target.registry.get(subsys, data.cntlid) else {
        refused!(target, subnqn = %escape(&data.subnqn), cntlid = data.cntlid, "I/O queue connect refused: unknown controller");
        return invalid_param(qp, cap, true, 16);
    };
    if ctrl.hostnqn != data.hostnqn {
        refused!(target, subnqn = %escape(&data.subnqn), hostnqn = %escape(&data.hostnqn), cntlid = data.cntlid,
            "I/O queue connect refused: controller belongs to another host");
        return invalid_param(qp, cap, true, 16);
    }
    if !ctrl.ready.load(Ordering::Acquire) {
        return qp.respond(cap, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
    }
    let epoch = ctrl.epoch();
    if cmd.qid > ctrl.io_queues.load(Ordering::Acquire) || !ctrl.claim_qid(cmd.qid, epoch) {
        refused!(target, subnqn = %escape(&data.subnqn), cntlid = data.cntlid, qid = cmd.qid, "I/O queue connect refused: queue ID out of range or in use");
        return invalid_param(qp, cap, false, 42);
    }
    let cntlid = ctrl.cntlid;
    qp.qid = cmd.qid;
    qp.sq_entries = entries as u16;
    qp.state = State::Io {
        ctrl,
        subsys: si,
        epoch,
    };
    qp.respond(cap, Status::SUCCESS, cntlid as u32, 0)
}

/// CAP (NVMe base 2.0, 3.1.4.1): MQES (0-based), CQR (contiguous queues required), AMS 0 (round
/// robin only), TO 30 (15 s in 500 ms units), CSS bit 0 (the NVM command set; bit 37 of CAP),
/// MPSMIN/MPSMAX (4 KiB pages only).
pub(super) fn cap_register(max_queue_depth: u16) -> u64 {
    use super::admin::{MPSMAX, MPSMIN};
    (max_queue_depth as u64 - 1)
        | (1 << 16)
        | (30 << 24)
        | (1 << 37)
        | ((MPSMIN as u64) << 48)
        | ((MPSMAX as u64) << 52)
}

pub(super) fn property(qp: &mut QueuePair, cap: &mut Capsule) -> Outcome {
    let cmd = PropertyCommand::from_sqe(&cap.sqe);
    let set = cap.sqe.fctype() == nvmfd_transport::proto::fabrics::fctype::PROPERTY_SET;
    let max_qd = qp.transport.max_queue_depth;
    let State::Admin(a) = &mut qp.state else {
        return qp.respond(cap, Status::INVALID_OPCODE, 0, 0);
    };
    let value: u64 = match (set, cmd.offset, cmd.size) {
        // CAP is an 8-byte property, the others 4 bytes (NVMe-oF 1.1, Property Get: a size
        // that does not match the property is Invalid Field).
        (false, property::CAP, 8) => cap_register(max_qd),
        (false, property::VS, 4) => NVME_VERSION as u64,
        (false, property::CC, 4) => a.cc as u64,
        (false, property::CSTS, 4) => a.csts as u64,
        (true, property::CC, 4) => {
            a.set_cc(cmd.value as u32);
            0
        }
        _ => return qp.respond(cap, Status::INVALID_FIELD, 0, 0),
    };
    let mut out = qp.respond(cap, Status::SUCCESS, value as u32, 0);
    if let Outcome::Done(r) = &mut out {
        r.cqe.dw1 = (value >> 32) as u32;
    }
    out
}

/// The NQN of the subsystem a controller serves.
pub(super) fn subsys_nqn(target: &super::Target, s: SubsysRef) -> &str {
    match s {
        SubsysRef::Discovery => DISCOVERY_NQN,
        SubsysRef::Nvm(i) => &target.subsystems[i].nqn,
    }
}
