//! Unit tests of the NVMe-oF rules, with no socket and no block device: capsules in, outcomes out.

use super::*;
use nvmfd_bdev::{IoBuf, IoError, Op};
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
    done(qp.execute(&mut capsule(sqe, &data.encode(), 1024), now))
}

fn prop(qp: &mut QueuePair, set: bool, offset: u32, size: u8, value: u64) -> Response {
    let sqe = PropertyCommand {
        size,
        offset,
        value,
    }
    .to_sqe(2, set);
    done(qp.execute(&mut capsule(sqe, &[], 0), Instant::now()))
}

/// An enabled admin queue for `host` on `nqn`; returns the queue and its controller ID.
fn admin(t: &Arc<Target>, nqn: &str, host: &str) -> (QueuePair, u16) {
    let mut qp = QueuePair::new(t.clone());
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
    let r = done(qp.execute(&mut cap, Instant::now()));
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
    let mut qp = QueuePair::new(t.clone());
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
    let mut anon = QueuePair::new(t.clone());
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
    let mut qp = QueuePair::new(t.clone());
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
    let mut qp = QueuePair::new(t.clone());
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
    let mut io = QueuePair::new(t.clone());
    assert_eq!(
        connect_cmd(&mut io, 1, 31, 99, NQN, HOST_A, now).cqe.status,
        Status::CONNECT_INVALID_PARAMETERS
    );

    let mut aq = QueuePair::new(t.clone());
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
    let mut dup = QueuePair::new(t.clone());
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
    let mut io = QueuePair::new(t.clone());
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
    let mut io1 = QueuePair::new(t.clone());
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
    assert_eq!(
        u32::from_le_bytes(id[516..520].try_into().unwrap()),
        1,
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
    assert_eq!(
        identify(&mut aq, cns::NAMESPACE, 2).0,
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
    let mut qp = QueuePair::new(t.clone());
    connect_cmd(&mut qp, 0, 31, 0xffff, NQN, HOST_A, t0); // kato 1000 ms
    prop(&mut qp, true, property::CC, 4, CC_ENABLE);
    assert_eq!(qp.poll_timers(t0 + Duration::from_millis(900)), None);
    let ka = Sqe {
        opcode: opcode::ADMIN_KEEP_ALIVE,
        ..Default::default()
    };
    let r = done(qp.execute(&mut capsule(ka, &[], 0), t0 + Duration::from_millis(900)));
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
            aq.execute(&mut capsule(sqe, &[], 0), Instant::now()),
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
    let mut io = QueuePair::new(t.clone());
    assert_eq!(
        connect_cmd(&mut io, 1, 31, cntlid, NQN, HOST_A, Instant::now())
            .cqe
            .status,
        Status::SUCCESS
    );
    let mut run = |sqe: Sqe, len: u32| {
        let mut cap = capsule(sqe, &[], len);
        io.execute(&mut cap, Instant::now())
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
        done(io.execute(&mut cap, Instant::now())).cqe.status,
        Status::LBA_OUT_OF_RANGE
    );
    let mut cap = capsule(dsm, &data[..16], 32);
    let dsm1 = Sqe { cdw10: 0, ..dsm };
    cap.sqe = dsm1;
    assert_eq!(
        io.execute(&mut cap, Instant::now()),
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
}

#[test]
fn admin_commands_are_refused_on_io_queues_and_vice_versa() {
    let t = target();
    let (mut aq, cntlid) = admin(&t, NQN, HOST_A);
    let mut io = QueuePair::new(t.clone());
    connect_cmd(&mut io, 1, 31, cntlid, NQN, HOST_A, Instant::now());
    let (s, _) = identify(&mut io, cns::CONTROLLER, 0);
    assert_eq!(
        s,
        Status::INVALID_NAMESPACE,
        "opcode 0x06 on an I/O queue is not an NVM command (nsid 0)"
    );
    let r = done(aq.execute(
        &mut capsule(io_sqe(opcode::NVM_WRITE, 1, 0, 1), &[], 4096),
        Instant::now(),
    ));
    assert_eq!(r.cqe.status, Status::INVALID_OPCODE);
}
