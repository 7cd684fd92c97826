//! Unit tests of the NVMe-oF rules, with no socket and no block device: capsules in, outcomes out.

use super::*;
use nvmfd_bdev::{IoError, Op};
use nvmfd_p2p::mem::IoBuf;
use nvmfd_transport::proto::fabrics::{
    ConnectCommand, ConnectData, PropertyCommand, DISCOVERY_NQN,
};
use nvmfd_transport::proto::nvme::{cns, feature, log_page, opcode, property, SglDescriptor, Sqe};
use nvmfd_transport::proto::status::Status;
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2026-11.io.nvmfd:t1";
const LOCKED: &str = "nqn.2026-11.io.nvmfd:locked";
const HOST_A: &str = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-0000-0000-0000-000000000001";
const HOST_B: &str = "nqn.2014-08.org.nvmexpress:uuid:bbbbbbbb-0000-0000-0000-000000000002";
/// CC with EN = 1, IOSQES = 6, IOCQES = 4 (the only valid entry sizes).
const CC_ENABLE: u64 = 1 | (6 << 16) | (4 << 20);

fn target() -> Arc<Target> {
    let yaml = format!(
        r#"
transports: {{ tcp: {{ max_queue_depth: 64, max_io_queues: 4, max_io_size: 128KiB }} }}
bdevs:
  - {{ name: ram0, malloc: {{ size: 1MiB, block_size: 4096 }} }}
  - {{ name: ram1, malloc: {{ size: 1MiB, block_size: 512 }} }}
subsystems:
  - nqn: {NQN}
    serial: SER123
    namespaces: [ {{ nsid: 1, bdev: ram0 }} ]
    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: 4420 }} ]
  - nqn: {LOCKED}
    hosts: [ {HOST_A} ]
    namespaces: [ {{ nsid: 3, bdev: ram1 }} ]
    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: 4421 }} ]
"#
    );
    let cfg = nvmfd_config::parse_str(&yaml, "test.yaml").expect("test config is valid");
    let infos = vec![
        BdevInfo {
            name: "ram0".into(),
            kind: "malloc",
            block_size: 4096,
            num_blocks: 256,
            deallocate_zeroes: true,
            volatile_cache: false,
        },
        BdevInfo {
            name: "ram1".into(),
            kind: "malloc",
            block_size: 512,
            num_blocks: 2048,
            deallocate_zeroes: true,
            volatile_cache: false,
        },
    ];
    Target::new(&cfg, &infos)
}

/// A queue pair arrived over NVMe/TCP as the target configures it.
fn tcp_qp(t: Arc<Target>) -> QueuePair {
    let tcp = *t.transport(nvmfd_config::TransportKind::Tcp).expect("tcp");
    QueuePair::new(t, tcp)
}

/// Both phases, as a transport drives them: admit the command with its data described as one
/// transport-moved descriptor of `data_len` bytes (no descriptor when 0), then, unless admission
/// answered, execute it with the data in place. (Tests build SQEs without PSDT; fabrics commands
/// always use SGLs, so admission sees PSDT 01b.)
trait Run {
    fn run(&mut self, cap: &mut Capsule, now: Instant) -> Outcome;
}

impl Run for QueuePair {
    fn run(&mut self, cap: &mut Capsule, now: Instant) -> Outcome {
        let mut sqe = cap.sqe;
        if sqe.psdt() == 0 {
            sqe.flags |= 0x40;
        }
        let desc = match cap.data_len {
            0 => DataDesc::None,
            len => DataDesc::Remote {
                len,
                descriptors: 1,
            },
        };
        match self.admit(&sqe, desc) {
            Admission::Respond(r) => Outcome::Done(r),
            Admission::Execute | Admission::Data(_) => self.execute(cap, now),
        }
    }
}

fn capsule(sqe: Sqe, data: &[u8], data_len: u32) -> Capsule {
    let mut buf = IoBuf::new(256 * 1024);
    buf.as_mut_slice()[..data.len()].copy_from_slice(data);
    Capsule {
        sqe,
        buf: Some(buf),
        data_len,
        lent: None,
    }
}

fn done(o: Outcome) -> Response {
    match o {
        Outcome::Done(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn connect_cmd(
    qp: &mut QueuePair,
    qid: u16,
    sqsize: u16,
    cntlid: u16,
    subnqn: &str,
    hostnqn: &str,
    now: Instant,
) -> Response {
    let data = ConnectData {
        hostid: [1; 16],
        cntlid,
        subnqn: subnqn.into(),
        hostnqn: hostnqn.into(),
    };
    let sqe = ConnectCommand {
        recfmt: 0,
        qid,
        sqsize,
        cattr: 0,
        kato_ms: 1000,
    }
    .to_sqe(1, 1024);
    done(qp.run(&mut capsule(sqe, &data.encode(), 1024), now))
}

fn prop(qp: &mut QueuePair, set: bool, offset: u32, size: u8, value: u64) -> Response {
    let sqe = PropertyCommand {
        size,
        offset,
        value,
    }
    .to_sqe(2, set);
    done(qp.run(&mut capsule(sqe, &[], 0), Instant::now()))
}

/// An enabled admin queue for `host` on `nqn`; returns the queue and its controller ID.
fn admin(t: &Arc<Target>, nqn: &str, host: &str) -> (QueuePair, u16) {
    let mut qp = tcp_qp(t.clone());
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, nqn, host, Instant::now());
    assert_eq!(r.cqe.status, Status::SUCCESS);
    assert_eq!(
        prop(&mut qp, true, property::CC, 4, CC_ENABLE).cqe.status,
        Status::SUCCESS
    );
    (qp, r.cqe.dw0 as u16)
}

fn csts(qp: &mut QueuePair) -> u32 {
    prop(qp, false, property::CSTS, 4, 0).cqe.dw0
}

/// CSTS.SHST.
fn shst(qp: &mut QueuePair) -> u32 {
    (csts(qp) >> 2) & 3
}

fn admin_cmd(qp: &mut QueuePair, sqe: Sqe, data_len: u32) -> (Response, Capsule) {
    let mut cap = capsule(sqe, &[], data_len);
    let r = done(qp.run(&mut cap, Instant::now()));
    (r, cap)
}

fn identify(qp: &mut QueuePair, cns: u8, nsid: u32) -> (Status, Vec<u8>) {
    let sqe = Sqe {
        opcode: opcode::ADMIN_IDENTIFY,
        nsid,
        cdw10: cns as u32,
        dptr: SglDescriptor::transport(4096),
        flags: 0x40,
        ..Default::default()
    };
    let (r, cap) = admin_cmd(qp, sqe, 4096);
    (r.cqe.status, cap.buf.unwrap().as_slice()[..4096].to_vec())
}

fn io_sqe(op: u8, nsid: u32, lba: u64, blocks: u32) -> Sqe {
    Sqe {
        flags: 0x40,
        ..Sqe::lba_command(op, nsid, lba, blocks)
    }
}

#[test]
fn admin_connect_allocates_distinct_controllers() {
    let t = target();
    let (_a, c1) = admin(&t, NQN, HOST_A);
    let (_b, c2) = admin(&t, NQN, HOST_B);
    assert_ne!(c1, c2);
    assert_eq!(t.controller_count(), 2);
}

#[test]
fn connect_rules() {
    let t = target();
    let now = Instant::now();
    let mut qp = tcp_qp(t.clone());
    let r = connect_cmd(
        &mut qp,
        0,
        31,
        0xffff,
        "nqn.2026-11.io.nvmfd:nope",
        HOST_A,
        now,
    );
    assert_eq!(r.cqe.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(
        r.cqe.dw0,
        256 | (1 << 16),
        "IPO points at SUBNQN in the connect data"
    );
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, LOCKED, HOST_B, now);
    assert_eq!(r.cqe.status, Status::CONNECT_INVALID_HOST);
    let r = connect_cmd(&mut qp, 0, 0, 0xffff, NQN, HOST_A, now);
    assert_eq!(
        (r.cqe.status, r.cqe.dw0),
        (Status::CONNECT_INVALID_PARAMETERS, 44)
    );
    let r = connect_cmd(&mut qp, 0, 64, 0xffff, NQN, HOST_A, now);
    assert_eq!(
        r.cqe.status,
        Status::CONNECT_INVALID_PARAMETERS,
        "65 entries exceed max_queue_depth 64"
    );
    let r = connect_cmd(&mut qp, 0, 31, 7, NQN, HOST_A, now);
    assert_eq!(
        (r.cqe.status, r.cqe.dw0),
        (Status::CONNECT_INVALID_PARAMETERS, 16 | (1 << 16))
    );
    // A host that sends no host NQN may use an open subsystem, never one with an allow-list;
    // a host NQN that is not an NQN is refused.
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, LOCKED, "", now);
    assert_eq!(r.cqe.status, Status::CONNECT_INVALID_HOST);
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, NQN, "host-1", now);
    assert_eq!(
        (r.cqe.status, r.cqe.dw0),
        (Status::CONNECT_INVALID_PARAMETERS, 512 | (1 << 16))
    );
    let mut anon = tcp_qp(t.clone());
    assert_eq!(
        connect_cmd(&mut anon, 0, 31, 0xffff, NQN, "", now)
            .cqe
            .status,
        Status::SUCCESS
    );
    drop(anon);
    // The allowed host gets in; nothing was leaked by the refusals.
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, LOCKED, HOST_A, now);
    assert_eq!(r.cqe.status, Status::SUCCESS);
    assert_eq!(t.controller_count(), 1);
    // A second Connect on a connected queue is out of sequence.
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, LOCKED, HOST_A, now);
    assert_eq!(r.cqe.status, Status::COMMAND_SEQUENCE_ERROR);
}

#[test]
fn commands_before_connect_or_enable_are_out_of_sequence() {
    let t = target();
    let mut qp = tcp_qp(t.clone());
    let (s, _) = identify(&mut qp, cns::CONTROLLER, 0);
    assert_eq!(s, Status::COMMAND_SEQUENCE_ERROR);
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, NQN, HOST_A, Instant::now());
    assert_eq!(r.cqe.status, Status::SUCCESS);
    let (s, _) = identify(&mut qp, cns::CONTROLLER, 0);
    assert_eq!(s, Status::COMMAND_SEQUENCE_ERROR, "CC.EN is still 0");
}

#[test]
fn properties_enable_and_shutdown() {
    let t = target();
    let mut qp = tcp_qp(t.clone());
    connect_cmd(&mut qp, 0, 31, 0xffff, NQN, HOST_A, Instant::now());
    let cap = prop(&mut qp, false, property::CAP, 8, 0);
    let cap_value = cap.cqe.dw0 as u64 | ((cap.cqe.dw1 as u64) << 32);
    assert_eq!(cap_value & 0xffff, 63, "MQES is 0-based");
    assert_ne!(cap_value & (1 << 37), 0, "NVM command set");
    assert_eq!(
        prop(&mut qp, false, property::VS, 4, 0).cqe.dw0,
        0x0001_0400
    );
    assert_eq!(prop(&mut qp, false, property::CSTS, 4, 0).cqe.dw0 & 1, 0);
    prop(&mut qp, true, property::CC, 4, 1 | (6 << 16) | (4 << 20));
    assert_eq!(prop(&mut qp, false, property::CSTS, 4, 0).cqe.dw0 & 1, 1);
    assert!(qp
        .controller()
        .unwrap()
        .ready
        .load(std::sync::atomic::Ordering::Acquire));
    prop(
        &mut qp,
        true,
        property::CC,
        4,
        1 | (1 << 14) | (6 << 16) | (4 << 20),
    );
    // No I/O queue and one namespace: the flush of its device is the only step; SHST stays
    // 01b (processing) until it completes.
    assert_eq!(shst(&mut qp), 1, "shutdown processing");
    assert_eq!(qp.next_action(), Some(Action::Flush { bdev: 0 }));
    assert_eq!(qp.next_action(), None, "one flush per namespace");
    assert_eq!(shst(&mut qp), 1, "still processing while the flush runs");
    qp.flush_done(Ok(()));
    assert_eq!(shst(&mut qp), 2, "shutdown complete");
    assert_eq!(
        prop(&mut qp, false, property::CAP, 4, 0).cqe.status,
        Status::INVALID_FIELD,
        "CAP is an 8-byte property"
    );
    assert_eq!(
        prop(&mut qp, false, property::VS, 8, 0).cqe.status,
        Status::INVALID_FIELD,
        "VS is a 4-byte property"
    );
    assert_eq!(
        prop(&mut qp, false, 0x24, 4, 0).cqe.status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        prop(&mut qp, true, property::VS, 4, 0).cqe.status,
        Status::INVALID_FIELD
    );
}

#[test]
fn io_queue_connect_rules() {
    let t = target();
    let now = Instant::now();
    let mut io = tcp_qp(t.clone());
    assert_eq!(
        connect_cmd(&mut io, 1, 31, 99, NQN, HOST_A, now).cqe.status,
        Status::CONNECT_INVALID_PARAMETERS
    );

    let mut aq = tcp_qp(t.clone());
    let cntlid = connect_cmd(&mut aq, 0, 31, 0xffff, NQN, HOST_A, now)
        .cqe
        .dw0 as u16;
    assert_eq!(
        connect_cmd(&mut io, 1, 31, cntlid, NQN, HOST_A, now)
            .cqe
            .status,
        Status::COMMAND_SEQUENCE_ERROR,
        "not enabled yet"
    );
    prop(&mut aq, true, property::CC, 4, CC_ENABLE);
    assert_eq!(
        connect_cmd(&mut io, 1, 31, cntlid, NQN, HOST_B, now)
            .cqe
            .status,
        Status::CONNECT_INVALID_PARAMETERS,
        "other host"
    );
    assert_eq!(
        connect_cmd(&mut io, 5, 31, cntlid, NQN, HOST_A, now)
            .cqe
            .status,
        Status::CONNECT_INVALID_PARAMETERS,
        "qid > 4"
    );
    assert_eq!(
        connect_cmd(&mut io, 1, 31, cntlid, NQN, HOST_A, now)
            .cqe
            .status,
        Status::SUCCESS
    );
    let mut dup = tcp_qp(t.clone());
    assert_eq!(
        connect_cmd(&mut dup, 1, 31, cntlid, NQN, HOST_A, now)
            .cqe
            .status,
        Status::CONNECT_INVALID_PARAMETERS,
        "qid 1 taken"
    );
    // Dropping the I/O queue frees its QID.
    drop(io);
    assert_eq!(
        connect_cmd(&mut dup, 1, 31, cntlid, NQN, HOST_A, now)
            .cqe
            .status,
        Status::SUCCESS
    );
    // Losing the admin queue takes the controller and tells its I/O queues.
    assert_eq!(dup.poll_timers(now), None);
    drop(aq);
    assert_eq!(dup.poll_timers(now), Some("controller is gone"));
    assert_eq!(t.controller_count(), 0);
}

#[test]
fn number_of_queues_limits_io_connect() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    let sqe = Sqe {
        opcode: opcode::ADMIN_SET_FEATURES,
        cdw10: feature::NUMBER_OF_QUEUES as u32,
        cdw11: 1 | (1 << 16),
        ..Default::default()
    };
    let (r, _) = admin_cmd(&mut aq, sqe, 0);
    assert_eq!(
        (r.cqe.status, r.cqe.dw0),
        (Status::SUCCESS, 1 | (1 << 16)),
        "2 queues granted, 0-based"
    );
    let mut io = tcp_qp(t.clone());
    assert_eq!(
        connect_cmd(&mut io, 3, 31, cntlid, NQN, HOST_A, Instant::now())
            .cqe
            .status,
        Status::CONNECT_INVALID_PARAMETERS
    );
    assert_eq!(
        connect_cmd(&mut io, 2, 31, cntlid, NQN, HOST_A, Instant::now())
            .cqe
            .status,
        Status::SUCCESS
    );
    // Once an I/O queue exists the count is fixed: Command Sequence Error, and the live
    // count is unchanged.
    let sqe4 = Sqe {
        cdw11: 3 | (3 << 16),
        ..sqe
    };
    assert_eq!(
        admin_cmd(&mut aq, sqe4, 0).0.cqe.status,
        Status::COMMAND_SEQUENCE_ERROR
    );
    assert_eq!(
        io.controller()
            .unwrap()
            .io_queues
            .load(std::sync::atomic::Ordering::Acquire),
        2
    );
    let mut io1 = tcp_qp(t.clone());
    assert_eq!(
        connect_cmd(&mut io1, 3, 31, cntlid, NQN, HOST_A, Instant::now())
            .cqe
            .status,
        Status::CONNECT_INVALID_PARAMETERS,
        "still 2 queues"
    );
    let (mut aq2, _) = admin(&t, NQN, HOST_B);
    let sqe = Sqe {
        opcode: opcode::ADMIN_SET_FEATURES,
        cdw10: feature::NUMBER_OF_QUEUES as u32,
        cdw11: 0xffff,
        ..Default::default()
    };
    assert_eq!(
        admin_cmd(&mut aq2, sqe, 0).0.cqe.status,
        Status::INVALID_FIELD
    );
    let sqe = Sqe {
        opcode: opcode::ADMIN_GET_FEATURES,
        cdw10: 0x7e,
        ..Default::default()
    };
    assert_eq!(
        admin_cmd(&mut aq, sqe, 0).0.cqe.status,
        Status::INVALID_FIELD
    );
}

#[test]
fn identify_controller_and_namespace() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    let (s, id) = identify(&mut aq, cns::CONTROLLER, 0);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(&id[4..10], b"SER123");
    assert_eq!(&id[24..29], b"nvmfd");
    assert_eq!(id[77], 5, "MDTS: 128 KiB / 4 KiB = 2^5");
    assert_eq!(u16::from_le_bytes([id[78], id[79]]), cntlid);
    assert_eq!(id[111], 1, "I/O controller");
    // NN is the subsystem's max_namespaces (default 32), not its highest NSID (1).
    assert_eq!(
        u32::from_le_bytes(id[516..520].try_into().unwrap()),
        32,
        "NN"
    );
    assert_eq!(&id[768..768 + NQN.len()], NQN.as_bytes());
    assert_eq!(
        u32::from_le_bytes(id[1792..1796].try_into().unwrap()),
        (64 + 8192) / 16,
        "IOCCSZ"
    );

    let (s, ns) = identify(&mut aq, cns::NAMESPACE, 1);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), 256);
    assert_eq!(ns[130], 12, "LBADS = log2(4096)");
    // NSID 2 is valid (<= NN) but inactive: a zero-filled structure (NVMe base 2.x, Identify
    // CNS 00h); above NN it is an invalid NSID.
    let (s, inactive) = identify(&mut aq, cns::NAMESPACE, 2);
    assert_eq!(s, Status::SUCCESS);
    assert!(inactive.iter().all(|&b| b == 0));
    assert_eq!(
        identify(&mut aq, cns::NAMESPACE, 33).0,
        Status::INVALID_NAMESPACE
    );

    let (_, list) = identify(&mut aq, cns::ACTIVE_NAMESPACES, 0);
    assert_eq!(&list[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    let (_, list) = identify(&mut aq, cns::ACTIVE_NAMESPACES, 1);
    assert!(list.iter().all(|&b| b == 0));

    let (s, desc) = identify(&mut aq, cns::NAMESPACE_DESCRIPTORS, 1);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!((desc[0], desc[1]), (2, 16), "NGUID descriptor first");
    assert_eq!(
        &desc[4..20],
        &ns[104..120],
        "same NGUID as Identify Namespace"
    );
    assert_eq!(identify(&mut aq, 0x1f, 0).0, Status::INVALID_FIELD);
}

#[test]
fn discovery_controller_lists_what_the_host_may_use() {
    let t = target();
    let (mut dq, _) = admin(&t, DISCOVERY_NQN, HOST_B);
    let (_, id) = identify(&mut dq, cns::CONTROLLER, 0);
    assert_eq!(id[111], 2, "discovery controller");
    let get_log = |qp: &mut QueuePair, len: u32| {
        let numd = len / 4 - 1;
        let sqe = Sqe {
            opcode: opcode::ADMIN_GET_LOG_PAGE,
            cdw10: log_page::DISCOVERY as u32 | (numd << 16),
            dptr: SglDescriptor::transport(len),
            flags: 0x40,
            ..Default::default()
        };
        let (r, cap) = admin_cmd(qp, sqe, len);
        (r, cap.buf.unwrap().as_slice()[..len as usize].to_vec())
    };
    let (r, page) = get_log(&mut dq, 4096);
    assert_eq!(r.cqe.status, Status::SUCCESS);
    assert_eq!(
        u64::from_le_bytes(page[8..16].try_into().unwrap()),
        1,
        "host B sees only the open subsystem"
    );
    let e = nvmfd_transport::proto::fabrics::DiscoveryLogEntry::decode(
        page[1024..2048].try_into().unwrap(),
    );
    assert_eq!(
        (
            e.subnqn.as_str(),
            e.trsvcid.as_str(),
            e.traddr.as_str(),
            e.trtype
        ),
        (NQN, "4420", "127.0.0.1", 3)
    );

    let (mut dq_a, _) = admin(&t, DISCOVERY_NQN, HOST_A);
    let (_, page) = get_log(&mut dq_a, 4096);
    assert_eq!(
        u64::from_le_bytes(page[8..16].try_into().unwrap()),
        2,
        "host A is on the allow list"
    );

    // I/O controllers have no discovery log; discovery controllers no SMART log.
    let (mut aq, _) = admin(&t, NQN, HOST_A);
    assert_eq!(get_log(&mut aq, 4096).0.cqe.status, Status::INVALID_FIELD);
    let sqe = Sqe {
        opcode: opcode::ADMIN_GET_LOG_PAGE,
        cdw10: log_page::SMART_HEALTH as u32 | (127 << 16),
        flags: 0x40,
        ..Default::default()
    };
    assert_eq!(
        admin_cmd(&mut dq, sqe, 512).0.cqe.status,
        Status::INVALID_FIELD
    );
    assert_eq!(admin_cmd(&mut aq, sqe, 512).0.cqe.status, Status::SUCCESS);
    // Asking for more than the buffer holds.
    assert_eq!(
        admin_cmd(&mut aq, sqe, 256).0.cqe.status,
        Status::DATA_SGL_LENGTH_INVALID
    );
}

#[test]
fn keep_alive_expiry_and_reset() {
    let t = target();
    let t0 = Instant::now();
    let mut qp = tcp_qp(t.clone());
    connect_cmd(&mut qp, 0, 31, 0xffff, NQN, HOST_A, t0); // kato 1000 ms
    prop(&mut qp, true, property::CC, 4, CC_ENABLE);
    assert_eq!(qp.poll_timers(t0 + Duration::from_millis(900)), None);
    let ka = Sqe {
        opcode: opcode::ADMIN_KEEP_ALIVE,
        ..Default::default()
    };
    let r = done(qp.run(&mut capsule(ka, &[], 0), t0 + Duration::from_millis(900)));
    assert_eq!(r.cqe.status, Status::SUCCESS);
    assert_eq!(
        qp.poll_timers(t0 + Duration::from_millis(1800)),
        None,
        "keep alive restarted the timer"
    );
    assert_eq!(
        qp.poll_timers(t0 + Duration::from_millis(2000)),
        Some("keep-alive timeout expired")
    );
}

#[test]
fn async_event_requests_are_held_up_to_the_limit() {
    let t = target();
    let (mut aq, _) = admin(&t, NQN, HOST_A);
    for cid in 0..4 {
        let sqe = Sqe {
            opcode: opcode::ADMIN_ASYNC_EVENT_REQUEST,
            cid,
            ..Default::default()
        };
        assert_eq!(
            aq.run(&mut capsule(sqe, &[], 0), Instant::now()),
            Outcome::Held
        );
    }
    let sqe = Sqe {
        opcode: opcode::ADMIN_ASYNC_EVENT_REQUEST,
        cid: 9,
        ..Default::default()
    };
    assert_eq!(
        admin_cmd(&mut aq, sqe, 0).0.cqe.status,
        Status::ASYNC_EVENT_LIMIT_EXCEEDED
    );
    let sqe = Sqe {
        opcode: 0xc1,
        ..Default::default()
    };
    assert_eq!(
        admin_cmd(&mut aq, sqe, 0).0.cqe.status,
        Status::INVALID_OPCODE
    );
}

#[test]
fn io_command_checks() {
    let t = target();
    let (_aq, cntlid) = admin(&t, NQN, HOST_A);
    let mut io = tcp_qp(t.clone());
    assert_eq!(
        connect_cmd(&mut io, 1, 31, cntlid, NQN, HOST_A, Instant::now())
            .cqe
            .status,
        Status::SUCCESS
    );
    let mut run = |sqe: Sqe, len: u32| {
        let mut cap = capsule(sqe, &[], len);
        io.run(&mut cap, Instant::now())
    };
    assert_eq!(
        run(io_sqe(opcode::NVM_READ, 1, 0, 8), 32768),
        Outcome::Io {
            bdev: 0,
            op: Op::Read { lba: 0, blocks: 8 }
        }
    );
    assert_eq!(
        run(io_sqe(opcode::NVM_WRITE, 1, 248, 8), 32768),
        Outcome::Io {
            bdev: 0,
            op: Op::Write {
                lba: 248,
                blocks: 8,
                fua: false
            }
        }
    );
    let status = |o: Outcome| done(o).cqe.status;
    assert_eq!(
        status(run(io_sqe(opcode::NVM_READ, 1, 250, 8), 32768)),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        status(run(io_sqe(opcode::NVM_READ, 1, u64::MAX - 2, 8), 32768)),
        Status::LBA_OUT_OF_RANGE,
        "no overflow"
    );
    assert_eq!(
        status(run(io_sqe(opcode::NVM_READ, 2, 0, 1), 4096)),
        Status::INVALID_NAMESPACE
    );
    assert_eq!(
        status(run(io_sqe(opcode::NVM_READ, 1, 0, 33), 33 * 4096)),
        Status::INVALID_FIELD,
        "beyond MDTS"
    );
    assert_eq!(
        status(run(io_sqe(opcode::NVM_WRITE, 1, 0, 2), 4096)),
        Status::DATA_SGL_LENGTH_INVALID
    );
    assert_eq!(
        status(run(io_sqe(0x7e, 1, 0, 1), 0)),
        Status::INVALID_OPCODE
    );
    assert_eq!(
        run(io_sqe(opcode::NVM_WRITE_ZEROES, 1, 0, 256), 0),
        Outcome::Io {
            bdev: 0,
            op: Op::WriteZeroes {
                lba: 0,
                blocks: 256,
                fua: false
            }
        }
    );
    assert_eq!(
        status(run(io_sqe(opcode::NVM_WRITE_ZEROES, 1, 1, 256), 0)),
        Status::LBA_OUT_OF_RANGE
    );

    // Dataset management: every range is checked; deallocate becomes one bdev op.
    let ranges = [
        nvmfd_bdev::DsmRange {
            attributes: 0,
            blocks: 8,
            lba: 0,
        },
        nvmfd_bdev::DsmRange {
            attributes: 0,
            blocks: 8,
            lba: 250,
        },
    ];
    let data: Vec<u8> = ranges.iter().flat_map(|r| r.encode()).collect();
    let dsm = Sqe {
        opcode: opcode::NVM_DATASET_MANAGEMENT,
        nsid: 1,
        cdw10: 1,
        cdw11: 1 << 2,
        flags: 0x40,
        ..Default::default()
    };
    let mut cap = capsule(dsm, &data, 32);
    assert_eq!(
        done(io.run(&mut cap, Instant::now())).cqe.status,
        Status::LBA_OUT_OF_RANGE
    );
    let mut cap = capsule(dsm, &data[..16], 32);
    let dsm1 = Sqe { cdw10: 0, ..dsm };
    cap.sqe = dsm1;
    assert_eq!(
        io.run(&mut cap, Instant::now()),
        Outcome::Io {
            bdev: 0,
            op: Op::Deallocate { ranges: 1 }
        }
    );

    // Completions map block-device errors to NVMe statuses and reads return their data.
    let cap = capsule(io_sqe(opcode::NVM_READ, 1, 0, 2), &[], 8192);
    let r = io.io_done(&cap, Ok(()));
    assert_eq!(
        (r.cqe.status, r.data_len, r.cqe.sqid),
        (Status::SUCCESS, 8192, 1)
    );
    assert_eq!(
        io.io_done(&cap, Err(IoError::Media(5))).cqe.status,
        Status::UNRECOVERED_READ_ERROR
    );
    let cap = capsule(io_sqe(opcode::NVM_WRITE, 1, 0, 2), &[], 8192);
    let r = io.io_done(&cap, Err(IoError::Media(5)));
    assert_eq!((r.cqe.status, r.data_len), (Status::WRITE_FAULT, 0));
    // An NVMe SSD's own status (here Invalid Use of CMB with DNR, and a retryable media error)
    // reaches the host unchanged, not as a generic error.
    let r = io.io_done(
        &cap,
        Err(IoError::Nvme {
            sct: 0,
            sc: 0x12,
            dnr: true,
        }),
    );
    assert_eq!(r.cqe.status, Status::INVALID_CMB_USE);
    let r = io.io_done(
        &cap,
        Err(IoError::Nvme {
            sct: 2,
            sc: 0x81,
            dnr: false,
        }),
    );
    assert_eq!(
        r.cqe.status,
        Status {
            sct: 2,
            sc: 0x81,
            dnr: false
        }
    );
}

#[test]
fn admin_commands_are_refused_on_io_queues_and_vice_versa() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    let mut io = tcp_qp(t.clone());
    connect_cmd(&mut io, 1, 31, cntlid, NQN, HOST_A, Instant::now());
    let (s, _) = identify(&mut io, cns::CONTROLLER, 0);
    assert_eq!(
        s,
        Status::INVALID_NAMESPACE,
        "opcode 0x06 on an I/O queue is not an NVM command (nsid 0)"
    );
    let r = done(aq.run(
        &mut capsule(io_sqe(opcode::NVM_WRITE, 1, 0, 1), &[], 4096),
        Instant::now(),
    ));
    assert_eq!(r.cqe.status, Status::INVALID_OPCODE);
}

// ------------------------------------------------------------------ issue 8: conformance rules

fn target_from(yaml: &str) -> Arc<Target> {
    let cfg = nvmfd_config::parse_str(yaml, "test.yaml").expect("test config is valid");
    let infos: Vec<BdevInfo> = cfg
        .bdevs
        .iter()
        .map(|b| BdevInfo {
            name: b.name.clone(),
            kind: "malloc",
            block_size: 4096,
            num_blocks: 256,
            deallocate_zeroes: true,
            volatile_cache: false,
        })
        .collect();
    Target::new(&cfg, &infos)
}

fn set_features(qp: &mut QueuePair, fid: u8, cdw11: u32) -> Response {
    let sqe = Sqe {
        opcode: opcode::ADMIN_SET_FEATURES,
        cdw10: fid as u32,
        cdw11,
        ..Default::default()
    };
    admin_cmd(qp, sqe, 0).0
}

fn get_features(qp: &mut QueuePair, fid: u8, sel: u32) -> Response {
    let sqe = Sqe {
        opcode: opcode::ADMIN_GET_FEATURES,
        cdw10: fid as u32 | (sel << 8),
        ..Default::default()
    };
    admin_cmd(qp, sqe, 0).0
}

fn aer(qp: &mut QueuePair, cid: u16) -> Outcome {
    let sqe = Sqe {
        opcode: opcode::ADMIN_ASYNC_EVENT_REQUEST,
        cid,
        ..Default::default()
    };
    qp.run(&mut capsule(sqe, &[], 0), Instant::now())
}

fn disconnect_sqe() -> Sqe {
    Sqe {
        opcode: opcode::FABRICS,
        nsid: nvmfd_transport::proto::fabrics::fctype::DISCONNECT as u32,
        cid: 7,
        ..Default::default()
    }
}

fn io_queue(t: &Arc<Target>, qid: u16, cntlid: u16) -> (QueuePair, Status) {
    let mut io = tcp_qp(t.clone());
    let r = connect_cmd(&mut io, qid, 31, cntlid, NQN, HOST_A, Instant::now());
    (io, r.cqe.status)
}

#[test]
fn shutdown_drains_io_queues_then_flushes_then_completes() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    let (mut io, s) = io_queue(&t, 1, cntlid);
    assert_eq!(s, Status::SUCCESS);
    let now = Instant::now();
    // A write is in flight on the I/O queue when the host asks for a shutdown.
    let mut w = capsule(io_sqe(opcode::NVM_WRITE, 1, 0, 1), &[], 4096);
    assert!(matches!(io.run(&mut w, now), Outcome::Io { .. }));
    prop(&mut aq, true, property::CC, 4, CC_ENABLE | (1 << 14));
    assert_eq!(shst(&mut aq), 1, "processing");
    // New I/O is refused once a shutdown began.
    let mut r = capsule(io_sqe(opcode::NVM_READ, 1, 0, 1), &[], 4096);
    assert_eq!(
        done(io.run(&mut r, now)).cqe.status,
        Status::COMMAND_SEQUENCE_ERROR
    );
    // The I/O queue has a command in flight: no acknowledgement, so no flush yet.
    assert_eq!(io.poll_timers(now), None);
    assert_eq!(aq.next_action(), None, "no flush while I/O is in flight");
    assert_eq!(shst(&mut aq), 1);
    // The write completes; at its next poll the I/O queue acknowledges.
    let resp = io.io_done(&w, Ok(()));
    assert_eq!(resp.cqe.status, Status::SUCCESS);
    assert_eq!(io.poll_timers(now), None);
    assert_eq!(aq.next_action(), Some(Action::Flush { bdev: 0 }));
    assert_eq!(shst(&mut aq), 1, "processing until the flush completes");
    aq.flush_done(Ok(()));
    assert_eq!(shst(&mut aq), 2, "complete");
    assert_eq!(csts(&mut aq) & 2, 0, "no fatal status");
}

#[test]
fn shutdown_flush_failure_is_controller_fatal() {
    let t = target();
    let (mut aq, _) = admin(&t, NQN, HOST_A);
    prop(&mut aq, true, property::CC, 4, CC_ENABLE | (1 << 14));
    assert_eq!(aq.next_action(), Some(Action::Flush { bdev: 0 }));
    aq.flush_done(Err(IoError::Media(5)));
    assert_ne!(csts(&mut aq) & 2, 0, "CSTS.CFS");
    assert_ne!(shst(&mut aq), 2, "never reports a clean shutdown");
}

#[test]
fn shutdown_of_a_subsystem_with_several_namespaces_flushes_each() {
    let t = target_from(
        r#"
bdevs:
  - { name: a, malloc: { size: 1MiB } }
  - { name: b, malloc: { size: 1MiB } }
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:t1
    namespaces: [ { nsid: 1, bdev: b }, { nsid: 2, bdev: a } ]
    listeners: [ { address: 127.0.0.1 } ]
"#,
    );
    let (mut aq, _) = admin(&t, NQN, HOST_A);
    prop(&mut aq, true, property::CC, 4, CC_ENABLE | (1 << 14));
    assert_eq!(aq.next_action(), Some(Action::Flush { bdev: 1 }));
    assert_eq!(aq.next_action(), Some(Action::Flush { bdev: 0 }));
    assert_eq!(aq.next_action(), None);
    aq.flush_done(Ok(()));
    assert_eq!(shst(&mut aq), 1, "one flush still out");
    aq.flush_done(Ok(()));
    assert_eq!(shst(&mut aq), 2);
}

#[test]
fn reset_deletes_io_queues_and_reenable_does_not_revive_them() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    let (mut old, s) = io_queue(&t, 1, cntlid);
    assert_eq!(s, Status::SUCCESS);
    let ctrl = aq.controller().unwrap().clone();
    assert_eq!(ctrl.live_io_queues(), 1);
    // A held AER is aborted by the reset.
    assert_eq!(aer(&mut aq, 40), Outcome::Held);
    prop(&mut aq, true, property::CC, 4, 0);
    assert_eq!(csts(&mut aq) & 1, 0, "not ready");
    assert_eq!(ctrl.live_io_queues(), 0, "QIDs are free at once");
    let a = aq.next_action().expect("the AER is answered");
    let Action::Complete(r) = a else {
        panic!("{a:?}")
    };
    assert_eq!((r.cqe.cid, r.cqe.status), (40, Status::ABORTED_SQ_DELETION));
    // The old queue's commands are aborted and it is told to go.
    let mut c = capsule(io_sqe(opcode::NVM_READ, 1, 0, 1), &[], 4096);
    assert_eq!(
        done(old.run(&mut c, Instant::now())).cqe.status,
        Status::ABORTED_SQ_DELETION
    );
    assert_eq!(
        old.poll_timers(Instant::now()),
        Some("controller was reset: I/O queue deleted")
    );
    // Number of Queues may be set again after the reset, before queues exist.
    assert_eq!(
        set_features(&mut aq, feature::NUMBER_OF_QUEUES, 0)
            .cqe
            .status,
        Status::COMMAND_SEQUENCE_ERROR,
        "admin commands need CC.EN = 1"
    );
    prop(&mut aq, true, property::CC, 4, CC_ENABLE);
    assert_eq!(csts(&mut aq) & 1, 1);
    let r = set_features(&mut aq, feature::NUMBER_OF_QUEUES, 1 | (1 << 16));
    assert_eq!((r.cqe.status, r.cqe.dw0), (Status::SUCCESS, 1 | (1 << 16)));
    // Reconnecting QID 1 works while the old queue object still exists...
    let (mut new, s) = io_queue(&t, 1, cntlid);
    assert_eq!(s, Status::SUCCESS);
    // ...the old one is still dead after re-enabling...
    let mut c = capsule(io_sqe(opcode::NVM_READ, 1, 0, 1), &[], 4096);
    assert_eq!(
        done(old.run(&mut c, Instant::now())).cqe.status,
        Status::ABORTED_SQ_DELETION
    );
    assert!(old.poll_timers(Instant::now()).is_some());
    // ...and its teardown does not free the new queue's QID.
    drop(old);
    assert_eq!(ctrl.live_io_queues(), 1);
    let (_, s) = io_queue(&t, 1, cntlid);
    assert_eq!(s, Status::CONNECT_INVALID_PARAMETERS, "QID 1 is taken");
    let mut c = capsule(io_sqe(opcode::NVM_READ, 1, 0, 1), &[], 4096);
    assert!(matches!(
        new.run(&mut c, Instant::now()),
        Outcome::Io { .. }
    ));
}

#[test]
fn disconnect_ends_the_io_queue_and_frees_its_qid() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    let (mut io, _) = io_queue(&t, 1, cntlid);
    assert_eq!(io.wants_close(), None);
    let r = done(io.run(&mut capsule(disconnect_sqe(), &[], 0), Instant::now()));
    assert_eq!((r.cqe.status, r.cqe.cid), (Status::SUCCESS, 7));
    assert!(io.wants_close().is_some());
    let mut c = capsule(io_sqe(opcode::NVM_READ, 1, 0, 1), &[], 4096);
    assert_eq!(
        done(io.run(&mut c, Instant::now())).cqe.status,
        Status::COMMAND_SEQUENCE_ERROR,
        "nothing runs on a disconnected queue"
    );
    let (again, s) = io_queue(&t, 1, cntlid);
    assert_eq!(s, Status::SUCCESS, "the QID is free right after Disconnect");
    drop(io);
    assert_eq!(again.controller().unwrap().live_io_queues(), 1);
    // Disconnect is for I/O queues; the admin queue ends by closing its connection.
    let r = done(aq.run(&mut capsule(disconnect_sqe(), &[], 0), Instant::now()));
    assert_eq!(r.cqe.status, Status::INVALID_OPCODE);
    assert_eq!(aq.wants_close(), None);
}

#[test]
fn enable_checks_cc_and_sets_fatal_status() {
    let t = target();
    for (cc, why) in [
        (1u64, "IOSQES/IOCQES 0"),
        (1 | (7 << 16) | (4 << 20), "IOSQES 7"),
        (1 | (6 << 16) | (5 << 20), "IOCQES 5"),
        (CC_ENABLE | (1 << 7), "MPS 8 KiB above MPSMAX"),
        (CC_ENABLE | (1 << 4), "CSS 1"),
        (CC_ENABLE | (1 << 11), "AMS weighted round robin"),
    ] {
        let mut qp = tcp_qp(t.clone());
        connect_cmd(&mut qp, 0, 31, 0xffff, NQN, HOST_A, Instant::now());
        assert_eq!(
            prop(&mut qp, true, property::CC, 4, cc).cqe.status,
            Status::SUCCESS
        );
        let s = csts(&mut qp);
        assert_eq!(s & 3, 2, "{why}: CSTS.CFS set, RDY clear");
        assert!(!qp
            .controller()
            .unwrap()
            .ready
            .load(std::sync::atomic::Ordering::Acquire));
        let (s, _) = identify(&mut qp, cns::CONTROLLER, 0);
        assert_eq!(s, Status::COMMAND_SEQUENCE_ERROR, "{why}");
    }
    // CAP reports what the check enforces.
    let mut qp = tcp_qp(t.clone());
    connect_cmd(&mut qp, 0, 31, 0xffff, NQN, HOST_A, Instant::now());
    let r = prop(&mut qp, false, property::CAP, 8, 0);
    let cap = r.cqe.dw0 as u64 | ((r.cqe.dw1 as u64) << 32);
    assert_eq!(((cap >> 48) & 0xf, (cap >> 52) & 0xf), (0, 0), "MPSMIN/MAX");
    assert_eq!((cap >> 37) & 0xff, 1, "CSS: NVM only");
    assert_eq!((cap >> 17) & 3, 0, "AMS: round robin only");
}

#[test]
fn kato_is_rounded_up_to_the_keep_alive_granularity() {
    let t = target();
    let t0 = Instant::now();
    let mut qp = tcp_qp(t.clone());
    let data = ConnectData {
        hostid: [1; 16],
        cntlid: 0xffff,
        subnqn: NQN.into(),
        hostnqn: HOST_A.into(),
    };
    let sqe = ConnectCommand {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato_ms: 1,
    }
    .to_sqe(1, 1024);
    let r = done(qp.run(&mut capsule(sqe, &data.encode(), 1024), t0));
    assert_eq!(r.cqe.status, Status::SUCCESS);
    prop(&mut qp, true, property::CC, 4, CC_ENABLE);
    let (_, id) = identify(&mut qp, cns::CONTROLLER, 0);
    let kas = u16::from_le_bytes([id[320], id[321]]) as u32 * 100;
    assert_eq!(kas, 1000);
    assert_eq!(
        get_features(&mut qp, feature::KEEP_ALIVE_TIMER, 0).cqe.dw0,
        kas,
        "1 ms becomes one granule"
    );
    assert_eq!(
        qp.poll_timers(t0 + Duration::from_millis(500)),
        None,
        "not expired after 1 ms"
    );
    assert!(qp.poll_timers(t0 + Duration::from_millis(1001)).is_some());
    assert_eq!(
        set_features(&mut qp, feature::KEEP_ALIVE_TIMER, 1500)
            .cqe
            .status,
        Status::SUCCESS
    );
    assert_eq!(
        get_features(&mut qp, feature::KEEP_ALIVE_TIMER, 0).cqe.dw0,
        2000
    );
    set_features(&mut qp, feature::KEEP_ALIVE_TIMER, 0);
    assert_eq!(
        get_features(&mut qp, feature::KEEP_ALIVE_TIMER, 0).cqe.dw0,
        0
    );
    assert_eq!(
        qp.poll_timers(t0 + Duration::from_secs(3600)),
        None,
        "0 disables"
    );
}

#[test]
fn get_features_select_reports_current_default_and_capabilities() {
    let t = target();
    let (mut aq, _) = admin(&t, NQN, HOST_A);
    set_features(&mut aq, feature::NUMBER_OF_QUEUES, 0);
    assert_eq!(
        get_features(&mut aq, feature::NUMBER_OF_QUEUES, 0).cqe.dw0,
        0
    );
    assert_eq!(
        get_features(&mut aq, feature::NUMBER_OF_QUEUES, 1).cqe.dw0,
        3 | (3 << 16),
        "default: max_io_queues 4, 0-based"
    );
    assert_eq!(
        get_features(&mut aq, feature::NUMBER_OF_QUEUES, 2).cqe.dw0,
        3 | (3 << 16),
        "saved = default (nothing is saveable)"
    );
    set_features(&mut aq, feature::ASYNC_EVENT_CONFIG, 1 << 8);
    assert_eq!(
        get_features(&mut aq, feature::ASYNC_EVENT_CONFIG, 0)
            .cqe
            .dw0,
        1 << 8
    );
    assert_eq!(
        get_features(&mut aq, feature::ASYNC_EVENT_CONFIG, 1)
            .cqe
            .dw0,
        0
    );
    for fid in [
        feature::KEEP_ALIVE_TIMER,
        feature::ASYNC_EVENT_CONFIG,
        feature::NUMBER_OF_QUEUES,
    ] {
        let r = get_features(&mut aq, fid, 3);
        assert_eq!(
            (r.cqe.status, r.cqe.dw0),
            (Status::SUCCESS, 0b100),
            "fid {fid:#x}: changeable, not saveable, not per namespace"
        );
    }
    // Unsupported features are Invalid Field whatever SEL says; reserved SEL values too.
    for sel in 0..4 {
        assert_eq!(
            get_features(&mut aq, 0x7e, sel).cqe.status,
            Status::INVALID_FIELD
        );
    }
    assert_eq!(
        get_features(&mut aq, feature::VOLATILE_WRITE_CACHE, 3)
            .cqe
            .status,
        Status::INVALID_FIELD,
        "no volatile cache behind these namespaces"
    );
    assert_eq!(
        get_features(&mut aq, feature::KEEP_ALIVE_TIMER, 4)
            .cqe
            .status,
        Status::INVALID_FIELD
    );
    // A discovery controller has no Number of Queues.
    let (mut dq, _) = admin(&t, DISCOVERY_NQN, HOST_A);
    assert_eq!(
        get_features(&mut dq, feature::NUMBER_OF_QUEUES, 3)
            .cqe
            .status,
        Status::INVALID_FIELD
    );
}

#[test]
fn identify_reports_what_is_implemented() {
    let t = target();
    let (mut aq, _) = admin(&t, NQN, HOST_A);
    let (_, id) = identify(&mut aq, cns::CONTROLLER, 0);
    let vs = u32::from_le_bytes(id[80..84].try_into().unwrap());
    assert_eq!(vs, 0x0001_0400, "1.4");
    assert_eq!(vs as u64, {
        let r = prop(&mut aq, false, property::VS, 4, 0);
        r.cqe.dw0 as u64
    });
    assert_eq!(
        u32::from_le_bytes(id[96..100].try_into().unwrap()) & 1,
        1,
        "CTRATT: 128-bit host identifier"
    );
    assert_eq!(
        u32::from_le_bytes(id[92..96].try_into().unwrap()),
        1 << 8,
        "OAES: namespace attribute notices only (live reconfiguration raises them)"
    );
    assert_eq!(id[111], 1, "CNTRLTYPE (1.4)");
    // 2.0 structures are not there.
    assert_eq!(identify(&mut aq, 0x06, 0).0, Status::INVALID_FIELD);
    assert_eq!(identify(&mut aq, 0x05, 1).0, Status::INVALID_FIELD);
    let (s, desc) = identify(&mut aq, cns::NAMESPACE_DESCRIPTORS, 1);
    assert_eq!(s, Status::SUCCESS);
    let mut o = 0;
    let mut types = Vec::new();
    while o + 4 <= desc.len() && desc[o] != 0 {
        types.push(desc[o]);
        o += 4 + desc[o + 1] as usize;
    }
    assert!(
        !types.contains(&4),
        "no NIDT 4 (command set identifier, 2.0) with VS 1.4: {types:?}"
    );
}

fn get_log(qp: &mut QueuePair, lid: u8, len: u32, rae: bool) -> (Response, Vec<u8>) {
    let numd = len / 4 - 1;
    let sqe = Sqe {
        opcode: opcode::ADMIN_GET_LOG_PAGE,
        cdw10: lid as u32 | ((rae as u32) << 15) | (numd << 16),
        dptr: SglDescriptor::transport(len),
        flags: 0x40,
        ..Default::default()
    };
    let (r, cap) = admin_cmd(qp, sqe, len);
    (r, cap.buf.unwrap().as_slice()[..len as usize].to_vec())
}

fn entries(page: &[u8]) -> Vec<nvmfd_transport::proto::fabrics::DiscoveryLogEntry> {
    let n = u64::from_le_bytes(page[8..16].try_into().unwrap()) as usize;
    (0..n)
        .map(|i| {
            nvmfd_transport::proto::fabrics::DiscoveryLogEntry::decode(
                page[1024 * (i + 1)..1024 * (i + 2)].try_into().unwrap(),
            )
        })
        .collect()
}

#[test]
fn held_aers_complete_with_enabled_events_and_stay_masked_until_the_log_is_read() {
    let t = target();
    let mut dq = tcp_qp(t.clone());
    dq.set_local_addr("127.0.0.1:4420".parse().unwrap());
    connect_cmd(
        &mut dq,
        0,
        31,
        0xffff,
        DISCOVERY_NQN,
        HOST_A,
        Instant::now(),
    );
    prop(&mut dq, true, property::CC, 4, CC_ENABLE);
    let g0 = get_log(&mut dq, log_page::DISCOVERY, 1024, false).1;
    let genctr0 = u64::from_le_bytes(g0[0..8].try_into().unwrap());
    assert_eq!(aer(&mut dq, 11), Outcome::Held);
    // Not enabled: the change moves the generation counter but completes nothing.
    t.discovery_changed();
    assert_eq!(dq.next_action(), None);
    let g1 = get_log(&mut dq, log_page::DISCOVERY, 1024, false).1;
    let genctr1 = u64::from_le_bytes(g1[0..8].try_into().unwrap());
    assert_ne!(
        genctr1, genctr0,
        "the generation counter moves with the log"
    );
    // Enabled (AEC bit 31: discovery log page change notices).
    assert_eq!(
        set_features(&mut dq, feature::ASYNC_EVENT_CONFIG, 1 << 31)
            .cqe
            .status,
        Status::SUCCESS
    );
    t.discovery_changed();
    let Some(Action::Complete(r)) = dq.next_action() else {
        panic!("the held AER completes")
    };
    assert_eq!((r.cqe.cid, r.cqe.status), (11, Status::SUCCESS));
    assert_eq!(r.cqe.dw0, 0x02 | (0xf0 << 8) | (0x70 << 16));
    assert_eq!(dq.next_action(), None);
    // Another change before the host reads the log: masked, even with an AER held.
    assert_eq!(aer(&mut dq, 12), Outcome::Held);
    t.discovery_changed();
    assert_eq!(dq.next_action(), None, "masked until the log is read");
    // Reading with RAE set keeps it masked; reading without unmasks and the pending one comes.
    get_log(&mut dq, log_page::DISCOVERY, 1024, true);
    assert_eq!(dq.next_action(), None);
    get_log(&mut dq, log_page::DISCOVERY, 1024, false);
    let Some(Action::Complete(r)) = dq.next_action() else {
        panic!("the pending event completes the second AER")
    };
    assert_eq!(r.cqe.cid, 12);
    // Events raised for NVM subsystems do not reach discovery controllers.
    let (mut aq, _) = admin(&t, NQN, HOST_A);
    set_features(&mut aq, feature::ASYNC_EVENT_CONFIG, 1 << 8);
    assert_eq!(aer(&mut aq, 5), Outcome::Held);
    t.discovery_changed();
    assert_eq!(aq.next_action(), None);
    t.raise_event(SubsysRef::Nvm(0), AsyncEvent::NamespaceAttributeChanged);
    let Some(Action::Complete(r)) = aq.next_action() else {
        panic!("namespace attribute notice")
    };
    assert_eq!((r.cqe.cid, r.cqe.dw0), (5, 0x02 | (0x04 << 16)));
}

fn wildcard_target() -> Arc<Target> {
    target_from(
        r#"
bdevs:
  - { name: a, malloc: { size: 1MiB } }
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:t1
    namespaces: [ { bdev: a } ]
    listeners:
      - { address: 0.0.0.0, port: 4420 }
      - { address: "::", port: 4421 }
      - { address: 192.0.2.7, port: 4422 }
"#,
    )
}

fn discovery_entries(
    t: &Arc<Target>,
    local: &str,
) -> Vec<nvmfd_transport::proto::fabrics::DiscoveryLogEntry> {
    let mut dq = tcp_qp(t.clone());
    dq.set_local_addr(local.parse().unwrap());
    connect_cmd(
        &mut dq,
        0,
        31,
        0xffff,
        DISCOVERY_NQN,
        HOST_A,
        Instant::now(),
    );
    prop(&mut dq, true, property::CC, 4, CC_ENABLE);
    let (r, page) = get_log(&mut dq, log_page::DISCOVERY, 8192, false);
    assert_eq!(r.cqe.status, Status::SUCCESS);
    entries(&page)
}

#[test]
fn discovery_advertises_the_arrival_address_for_wildcard_listeners() {
    use nvmfd_transport::proto::fabrics::subtype;
    let t = wildcard_target();
    let e = discovery_entries(&t, "127.0.0.1:4420");
    let got: Vec<(u8, &str, &str, u8, &str)> = e
        .iter()
        .map(|e| {
            (
                e.subtype,
                e.subnqn.as_str(),
                e.traddr.as_str(),
                e.adrfam,
                e.trsvcid.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                subtype::CURRENT_DISCOVERY,
                DISCOVERY_NQN,
                "127.0.0.1",
                1,
                "4420"
            ),
            (subtype::NVME, NQN, "127.0.0.1", 1, "4420"),
            (subtype::NVME, NQN, "127.0.0.1", 1, "4421"),
            (subtype::NVME, NQN, "192.0.2.7", 1, "4422"),
        ]
    );
    for x in &e {
        assert_eq!(x.treq, 0x02, "secure channel not required");
        assert_eq!(x.tsas, [0; 16], "TCP SECTYPE none");
        assert_eq!(
            x.asqsz, 128,
            "ASQSZ: the admin queue entries Connect accepts"
        );
        assert_eq!(x.cntlid, 0xffff);
    }
    assert_eq!(e[0].portid, 1);
    assert_eq!(e[2].portid, 2);
    // ...and Connect on an admin queue accepts exactly that many entries.
    let mut qp = tcp_qp(t.clone());
    let r = connect_cmd(&mut qp, 0, 128, 0xffff, NQN, HOST_A, Instant::now());
    assert_eq!(
        r.cqe.status,
        Status::CONNECT_INVALID_PARAMETERS,
        "129 entries"
    );
    let r = connect_cmd(&mut qp, 0, 127, 0xffff, NQN, HOST_A, Instant::now());
    assert_eq!(r.cqe.status, Status::SUCCESS, "128 entries");
    // Over IPv6 (the `::` listener): the IPv4 wildcard cannot be reached at ::1 and is left out.
    let e = discovery_entries(&t, "[::1]:4421");
    let got: Vec<(u8, &str, u8, &str)> = e
        .iter()
        .map(|e| (e.subtype, e.traddr.as_str(), e.adrfam, e.trsvcid.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (subtype::CURRENT_DISCOVERY, "::1", 2, "4421"),
            (subtype::NVME, "::1", 2, "4421"),
            (subtype::NVME, "192.0.2.7", 1, "4422"),
        ]
    );
    // An IPv4 host on the dual-stack `::` listener is seen as IPv4.
    let e = discovery_entries(&t, "[::ffff:10.1.2.3]:4421");
    assert_eq!(
        (e[0].traddr.as_str(), e[0].adrfam, e[0].trsvcid.as_str()),
        ("10.1.2.3", 1, "4421")
    );
    assert!(e
        .iter()
        .all(|x| !x.traddr.contains("0.0.0.0") && x.traddr != "::"));
}

#[test]
fn discovery_genctr_follows_the_configuration() {
    let a = wildcard_target();
    let b = wildcard_target();
    assert_eq!(
        a.discovery_genctr(),
        b.discovery_genctr(),
        "same config, same log"
    );
    let c = target();
    assert_ne!(a.discovery_genctr(), c.discovery_genctr());
    let before = a.discovery_genctr();
    a.discovery_changed();
    assert_ne!(a.discovery_genctr(), before);
}

#[test]
fn cntlid_ranges_bound_the_controller_ids() {
    let t = target_from(
        r#"
bdevs:
  - { name: a, malloc: { size: 1MiB } }
  - { name: b, malloc: { size: 1MiB } }
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:t1
    cntlid_min: 100
    cntlid_max: 101
    namespaces: [ { bdev: a } ]
    listeners: [ { address: 127.0.0.1 } ]
  - nqn: nqn.2026-11.io.nvmfd:t2
    cntlid_min: 100
    cntlid_max: 100
    namespaces: [ { bdev: b } ]
    listeners: [ { address: 127.0.0.1 } ]
"#,
    );
    let (a, c1) = admin(&t, NQN, HOST_A);
    let (_b, c2) = admin(&t, NQN, HOST_B);
    assert_eq!((c1.min(c2), c1.max(c2)), (100, 101));
    let mut qp = tcp_qp(t.clone());
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, NQN, HOST_A, Instant::now());
    assert_eq!(
        r.cqe.status,
        Status::CONNECT_CONTROLLER_BUSY,
        "range exhausted"
    );
    // Another subsystem has its own IDs: 100 again, and an I/O queue finds the right one.
    let (_o, c3) = admin(&t, "nqn.2026-11.io.nvmfd:t2", HOST_A);
    assert_eq!(c3, 100);
    let mut io = tcp_qp(t.clone());
    let r = connect_cmd(
        &mut io,
        1,
        31,
        c3,
        "nqn.2026-11.io.nvmfd:t2",
        HOST_A,
        Instant::now(),
    );
    assert_eq!(r.cqe.status, Status::SUCCESS);
    assert_eq!(io.controller().unwrap().subsys, SubsysRef::Nvm(1));
    drop(a);
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, NQN, HOST_A, Instant::now());
    assert_eq!((r.cqe.status, r.cqe.dw0 as u16), (Status::SUCCESS, c1));
}

#[test]
fn refused_connects_are_counted_against_a_log_budget() {
    use nvmfd_transport::logsafe::LogDecision;
    let t = target();
    let mut qp = tcp_qp(t.clone());
    for _ in 0..30 {
        let r = connect_cmd(&mut qp, 0, 31, 0xffff, LOCKED, HOST_B, Instant::now());
        assert_eq!(r.cqe.status, Status::CONNECT_INVALID_HOST);
    }
    // 30 refusals counted: the 31st event is past the burst and not on the periodic line.
    assert_eq!(t.connect_refusal_log(), LogDecision::Suppress);
}

#[test]
fn a_stale_claim_never_takes_a_newer_epochs_qid() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    let ctrl = aq.controller().unwrap().clone();
    let old = ctrl.epoch();
    prop(&mut aq, true, property::CC, 4, 0);
    prop(&mut aq, true, property::CC, 4, CC_ENABLE);
    let (_new, s) = io_queue(&t, 1, cntlid);
    assert_eq!(s, Status::SUCCESS);
    // A Connect that read the epoch before the reset loses.
    assert!(!ctrl.claim_qid(1, old), "held by the newer epoch");
    assert!(!ctrl.claim_qid(2, old), "a free QID with a stale epoch");
    assert_eq!(ctrl.live_io_queues(), 1);
    assert!(ctrl.claim_qid(2, ctrl.epoch()));
}

/// Phase one alone: what `admit` answers from the SQE and the data description, with no data.
fn admit_io(io: &mut QueuePair, sqe: Sqe, desc: DataDesc) -> Admission {
    io.admit(&sqe, desc)
}

fn refused(a: Admission) -> Status {
    match a {
        Admission::Respond(r) => r.cqe.status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn remote(len: u32) -> DataDesc {
    DataDesc::Remote {
        len,
        descriptors: 1,
    }
}

/// A bad write is answered at admission, before any data is asked for: the invalid namespace,
/// the LBA range, MDTS (NLB and SGL length), an SGL shorter than NLB needs. A good one says what
/// it needs (length, direction, the namespace's block device) and nothing was answered yet.
#[test]
fn admission_refuses_bad_io_before_any_data_moves() {
    let t = target();
    let (_aq, cntlid) = admin(&t, NQN, HOST_A);
    let (mut io, st) = io_queue(&t, 1, cntlid);
    assert_eq!(st, Status::SUCCESS);
    let w = |nsid, lba, blocks| io_sqe(opcode::NVM_WRITE, nsid, lba, blocks);
    assert_eq!(
        refused(admit_io(&mut io, w(9, 0, 8), remote(32768))),
        Status::INVALID_NAMESPACE
    );
    // ram0: 256 blocks of 4 KiB.
    assert_eq!(
        refused(admit_io(&mut io, w(1, 250, 8), remote(32768))),
        Status::LBA_OUT_OF_RANGE
    );
    // 64 blocks = 256 KiB > MDTS (128 KiB): Invalid Field, whatever the SGL says.
    assert_eq!(
        refused(admit_io(&mut io, w(1, 0, 64), remote(128 * 1024))),
        Status::INVALID_FIELD
    );
    // An SGL longer than MDTS is refused by the shared SGL rule.
    assert_eq!(
        refused(admit_io(&mut io, w(1, 0, 8), remote(256 * 1024))),
        Status::INVALID_FIELD
    );
    // An SGL shorter than NLB blocks.
    assert_eq!(
        refused(admit_io(&mut io, w(1, 0, 8), remote(4096))),
        Status::DATA_SGL_LENGTH_INVALID
    );
    // More descriptors than MSDBD (1 on TCP).
    assert_eq!(
        refused(admit_io(
            &mut io,
            w(1, 0, 8),
            DataDesc::Remote {
                len: 32768,
                descriptors: 2
            }
        )),
        Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS
    );
    // A descriptor type the transport refused.
    assert_eq!(
        refused(admit_io(
            &mut io,
            w(1, 0, 8),
            DataDesc::Refused(Status::SGL_DESCRIPTOR_TYPE_INVALID)
        )),
        Status::SGL_DESCRIPTOR_TYPE_INVALID
    );
    // PRPs (PSDT 0) are not for fabrics.
    let mut prp = w(1, 0, 8);
    prp.flags = 0;
    assert_eq!(
        refused(admit_io(&mut io, prp, remote(32768))),
        Status::INVALID_FIELD
    );
    assert_eq!(
        admit_io(&mut io, w(1, 8, 8), remote(32768)),
        Admission::Data(DataNeed {
            len: 32768,
            dir: nvmfd_transport::proto::nvme::Direction::HostToController,
            bdev: Some(0),
        })
    );
    // A read says it needs a buffer for the other direction; a flush needs nothing.
    assert_eq!(
        admit_io(&mut io, io_sqe(opcode::NVM_READ, 1, 0, 2), remote(8192)),
        Admission::Data(DataNeed {
            len: 8192,
            dir: nvmfd_transport::proto::nvme::Direction::ControllerToHost,
            bdev: Some(0),
        })
    );
    assert_eq!(
        admit_io(&mut io, io_sqe(opcode::NVM_FLUSH, 1, 0, 1), DataDesc::None),
        Admission::Execute
    );
}

/// In-capsule data is checked against the queue's capsule size (IOCCSZ on an I/O queue, the
/// admin capsule size on the admin queue), its direction and what the capsule carried.
#[test]
fn admission_checks_in_capsule_data_against_the_queue() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    let (mut io, _) = io_queue(&t, 1, cntlid);
    let ioc = io.transport().in_capsule_data_size;
    assert_eq!(io.in_capsule_limit(), ioc);
    assert_eq!(aq.in_capsule_limit(), 8192);
    let ic = |offset: u64, len: u32, carried: u32| DataDesc::InCapsule {
        offset,
        len,
        carried,
    };
    let blocks = ioc / 4096;
    let w = io_sqe(opcode::NVM_WRITE, 1, 0, blocks);
    assert!(matches!(
        admit_io(&mut io, w, ic(0, ioc, ioc)),
        Admission::Data(DataNeed { len, .. }) if len == ioc
    ));
    // Past the capsule size, past what came, an offset outside the capsule.
    let big = io_sqe(opcode::NVM_WRITE, 1, 0, blocks + 1);
    assert_eq!(
        refused(admit_io(&mut io, big, ic(0, ioc + 4096, ioc + 4096))),
        Status::DATA_SGL_LENGTH_INVALID
    );
    assert_eq!(
        refused(admit_io(&mut io, w, ic(0, ioc, ioc - 16))),
        Status::DATA_SGL_LENGTH_INVALID
    );
    assert_eq!(
        refused(admit_io(&mut io, w, ic(ioc as u64 + 16, 16, 16))),
        Status::SGL_OFFSET_INVALID
    );
    // In-capsule data on a read.
    assert_eq!(
        refused(admit_io(
            &mut io,
            io_sqe(opcode::NVM_READ, 1, 0, 1),
            ic(0, 4096, 4096)
        )),
        Status::DATA_SGL_LENGTH_INVALID
    );
    // Admission refusals are completions of their own: the SQ head moves for each.
    let a = refused_response(admit_io(&mut aq, w, ic(0, 9000, 9000)));
    let b = refused_response(admit_io(&mut aq, w, ic(0, 9000, 9000)));
    assert_eq!(a.cqe.sqid, 0);
    assert_eq!(b.cqe.sqhd, (a.cqe.sqhd + 1) % aq.sq_entries());
}

fn refused_response(a: Admission) -> Response {
    match a {
        Admission::Respond(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Identify Controller reports the values of the transport the admin queue arrived on.
#[test]
fn identify_reports_the_transport_of_the_admin_queue() {
    let t = target();
    let mut info = *t.transport(nvmfd_config::TransportKind::Tcp).unwrap();
    info.in_capsule_data_size = 4096;
    info.max_io_size = 64 * 1024;
    info.sgls = 0x0010_0005;
    info.msdbd = 16;
    info.iorcsz = 2;
    let mut qp = QueuePair::new(t.clone(), info);
    let r = connect_cmd(&mut qp, 0, 31, 0xffff, NQN, HOST_A, Instant::now());
    assert_eq!(r.cqe.status, Status::SUCCESS);
    prop(&mut qp, true, property::CC, 4, CC_ENABLE);
    let (st, id) = identify(&mut qp, cns::CONTROLLER, 0);
    assert_eq!(st, Status::SUCCESS);
    assert_eq!(id[77], 4, "MDTS 64 KiB = 2^4 pages");
    assert_eq!(
        u32::from_le_bytes(id[536..540].try_into().unwrap()),
        0x0010_0005
    );
    assert_eq!(
        u32::from_le_bytes(id[1792..1796].try_into().unwrap()),
        (64 + 4096) / 16
    );
    assert_eq!(u32::from_le_bytes(id[1796..1800].try_into().unwrap()), 2);
    assert_eq!(id[1803], 16);
}

/// Live reconfiguration in the core: a namespace added and removed through new snapshots. The
/// queues see it once they took the snapshot, the admin queue's held AER completes with the
/// Namespace Attribute Changed notice, the Changed Namespace List reports the NSID once (it is
/// cleared by the read), a read in flight across the removal completes with its data, and a
/// command after the removal gets Invalid Namespace or Format.
#[test]
fn live_namespace_add_and_remove() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    set_features(&mut aq, feature::ASYNC_EVENT_CONFIG, 1 << 8);
    let (mut io, s) = io_queue(&t, 1, cntlid);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(aer(&mut aq, 40), Outcome::Held);
    let (_, log) = get_log(&mut aq, log_page::CHANGED_NAMESPACES, 4096, false);
    assert!(log.iter().all(|&b| b == 0), "nothing changed yet");

    // Add NSID 2 (backed by bdev slot 1).
    let mut subs = t.subsystems.clone();
    let mut ns = subs[1].namespaces[0].clone();
    ns.nsid = 2;
    subs[0].namespaces.push(ns);
    let t2 = t.next(subs, &[(0, 2)]);
    assert_eq!(t2.generation, t.generation + 1);
    // Not yet taken by the I/O queue: NSID 2 is unknown there.
    let read2 = |q: &mut QueuePair| {
        let mut cap = capsule(io_sqe(opcode::NVM_READ, 2, 0, 8), &[], 4096);
        q.run(&mut cap, Instant::now())
    };
    assert_eq!(done(read2(&mut io)).cqe.status, Status::INVALID_NAMESPACE);
    assert_eq!(io.set_target(t2.clone()), None);
    assert_eq!(aq.set_target(t2.clone()), None);
    assert!(matches!(read2(&mut io), Outcome::Io { bdev: 1, .. }));
    // The control plane raises the notice once every reactor has the snapshot.
    t2.raise_event(SubsysRef::Nvm(0), AsyncEvent::NamespaceAttributeChanged);
    let Some(Action::Complete(r)) = aq.next_action() else {
        panic!("the held AER completes")
    };
    assert_eq!((r.cqe.cid, r.cqe.dw0), (40, 0x02 | (0x04 << 16)));
    let (_, id) = identify(&mut aq, cns::ACTIVE_NAMESPACES, 0);
    assert_eq!(&id[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    let (_, log) = get_log(&mut aq, log_page::CHANGED_NAMESPACES, 4096, false);
    assert_eq!(&log[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    let (_, log) = get_log(&mut aq, log_page::CHANGED_NAMESPACES, 4096, false);
    assert!(log.iter().all(|&b| b == 0), "cleared by the read");

    // Remove it while the read above is in flight.
    let mut subs = t2.subsystems.clone();
    subs[0].namespaces.retain(|n| n.nsid != 2);
    let t3 = t2.next(subs, &[(0, 2)]);
    assert_eq!(io.set_target(t3.clone()), None);
    assert_eq!(aq.set_target(t3.clone()), None);
    let cap = capsule(io_sqe(opcode::NVM_READ, 2, 0, 8), &[], 4096);
    let r = io.io_done(&cap, Ok(()));
    assert_eq!(
        (r.cqe.status, r.data_len),
        (Status::SUCCESS, 8 * 512),
        "the in-flight read completes with its data"
    );
    assert_eq!(done(read2(&mut io)).cqe.status, Status::INVALID_NAMESPACE);
    let (_, log) = get_log(&mut aq, log_page::CHANGED_NAMESPACES, 4096, false);
    assert_eq!(&log[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    // Another controller created after the changes sees none of them.
    let (mut aq2, _) = admin(&t3, NQN, HOST_B);
    let (_, log) = get_log(&mut aq2, log_page::CHANGED_NAMESPACES, 4096, false);
    assert!(log.iter().all(|&b| b == 0));
}

/// What admission found ([`QueuePair::admitted`]) spares execution its checks only under the
/// snapshot it was found in: a read admitted before its namespace was removed and executed
/// after gets Invalid Namespace as without it; executed under the same snapshot it gives the
/// same operation as the full check; a buffer short of the transfer is still refused.
#[test]
fn admission_findings_hold_only_for_their_snapshot() {
    let t = target();
    let (_aq, cntlid) = admin(&t, NQN, HOST_A);
    let (mut io, s) = io_queue(&t, 1, cntlid);
    assert_eq!(s, Status::SUCCESS);
    let admit = |q: &mut QueuePair, sqe: &Sqe, len: u32| {
        let mut sqe = *sqe;
        sqe.flags |= 0x40;
        let desc = DataDesc::Remote {
            len,
            descriptors: 1,
        };
        assert!(matches!(q.admit(&sqe, desc), Admission::Data(_)));
        q.admitted().expect("an I/O command on a namespace")
    };
    let read = io_sqe(opcode::NVM_READ, 1, 8, 8);
    let write = io_sqe(opcode::NVM_WRITE, 1, 16, 8);
    let run = |q: &mut QueuePair, sqe: Sqe, buf: usize, a| {
        let mut cap = Capsule {
            sqe,
            buf: Some(IoBuf::new(buf)),
            data_len: 32768,
            lent: None,
        };
        q.execute_with(&mut cap, || panic!("no clock for I/O"), a)
    };
    // Same snapshot: the operations the full check gives.
    let a = admit(&mut io, &read, 32768);
    assert_eq!(
        run(&mut io, read, 32768, Some(a)),
        Outcome::Io {
            bdev: 0,
            op: Op::Read { lba: 8, blocks: 8 }
        }
    );
    let a = admit(&mut io, &write, 32768);
    assert_eq!(
        run(&mut io, write, 32768, Some(a)),
        Outcome::Io {
            bdev: 0,
            op: Op::Write {
                lba: 16,
                blocks: 8,
                fua: false
            }
        }
    );
    let a = admit(&mut io, &read, 32768);
    assert_eq!(
        done(run(&mut io, read, 4096, Some(a))).cqe.status,
        Status::DATA_SGL_LENGTH_INVALID,
        "a short buffer is refused all the same"
    );
    // A command that is not an I/O command on a namespace has nothing to hand over.
    let flush = io_sqe(opcode::NVM_FLUSH, 1, 0, 1);
    let mut f = flush;
    f.flags |= 0x40;
    assert_eq!(io.admit(&f, DataDesc::None), Admission::Execute);
    assert!(io.admitted().is_some(), "a flush names its namespace");
    let bad = io_sqe(opcode::NVM_READ, 9, 0, 8);
    let mut b = bad;
    b.flags |= 0x40;
    let desc = DataDesc::Remote {
        len: 32768,
        descriptors: 1,
    };
    assert!(matches!(io.admit(&b, desc), Admission::Respond(_)));
    assert_eq!(io.admitted(), None, "nothing from a refused command");
    // Findings for one namespace are not taken for a command naming another.
    let a = admit(&mut io, &read, 32768);
    assert_eq!(
        done(run(&mut io, bad, 32768, Some(a))).cqe.status,
        Status::INVALID_NAMESPACE
    );
    // Admitted, then NSID 1 goes away before the command executes.
    let a = admit(&mut io, &read, 32768);
    let mut subs = t.subsystems.clone();
    subs[0].namespaces.retain(|n| n.nsid != 1);
    let t2 = t.next(subs, &[(0, 1)]);
    assert_eq!(io.set_target(t2), None);
    assert_eq!(
        done(run(&mut io, read, 32768, Some(a))).cqe.status,
        Status::INVALID_NAMESPACE,
        "checked again under the new snapshot"
    );
}

/// Taking a host off the allow-list, a listener off the subsystem, or deleting the subsystem
/// ends that host's queues when they take the snapshot; other queues are untouched.
#[test]
fn live_changes_end_the_queues_they_concern() {
    let t = target();
    let connect = |t: &Arc<Target>, nqn: &str, host: &str, port: u16| {
        let mut qp = tcp_qp(t.clone());
        qp.set_local_addr(format!("127.0.0.1:{port}").parse().unwrap());
        let r = connect_cmd(&mut qp, 0, 31, 0xffff, nqn, host, Instant::now());
        (qp, r.cqe.status)
    };
    let (mut a, s) = connect(&t, LOCKED, HOST_A, 4421);
    assert_eq!(s, Status::SUCCESS);
    let (mut b, s) = connect(&t, NQN, HOST_B, 4420);
    assert_eq!(s, Status::SUCCESS);
    // A Connect through a port the subsystem does not listen on is refused.
    assert_eq!(
        connect(&t, NQN, HOST_B, 4421).1,
        Status::CONNECT_INVALID_PARAMETERS
    );
    let mut subs = t.subsystems.clone();
    subs[1].hosts.clear();
    let t2 = t.next(subs, &[]);
    assert_eq!(
        a.set_target(t2.clone()),
        Some("host removed from the subsystem's allow list")
    );
    assert_eq!(b.set_target(t2.clone()), None);
    assert_eq!(
        connect(&t2, LOCKED, HOST_A, 4421).1,
        Status::CONNECT_INVALID_HOST
    );
    let mut subs = t2.subsystems.clone();
    subs[0].listeners.clear();
    let t3 = t2.next(subs, &[]);
    assert_eq!(
        b.set_target(t3.clone()),
        Some("listener removed from the subsystem")
    );
    let mut subs = t3.subsystems.clone();
    subs[1] = Subsystem {
        live: false,
        namespaces: vec![],
        hosts: vec![],
        listeners: vec![],
        allow_any_host: false,
        ..subs[1].clone()
    };
    let t4 = t3.next(subs, &[]);
    assert_eq!(t4.find_subsystem(LOCKED), None);
    let (mut c, s) = connect(&t, LOCKED, HOST_A, 4421);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(c.set_target(t4), Some("subsystem deleted"));
}
