//! Integration tests: the real daemon (reactors, NVMe/TCP, malloc bdevs) on 127.0.0.1, driven by
//! the in-repo userspace host (`nvmfd-bench`), since this machine's kernel has no nvme-tcp. The
//! kernel initiator is exercised by tests/e2e in a QEMU guest.

mod common;

use common::{free_port, start_yaml};
use nvmfd_bench::host::{read_sqe, write_sqe};
use nvmfd_bench::{Host, HostError, HostOptions, IoQueue, RawConnection, RawEvent};
use nvmfd_target::daemon::Daemon;
use nvmfd_transport::proto::nvme::{opcode, SglDescriptor, Sqe};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::proto::tcp::{self, fes, Digests, Header};
use nvmfd_transport::tcp::TRANSIENT_TRANSPORT_ERROR;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2026-11.io.nvmfd:it";
const LOCKED: &str = "nqn.2026-11.io.nvmfd:locked";
const ALLOWED_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0a0a0a0a-0000-4000-8000-000000000001";
const BS: usize = 4096;

/// Start a daemon with two subsystems (one open, one with an allow-list) on a free port.
fn start(extra_tcp: &str) -> (Daemon, SocketAddr) {
    let port = free_port();
    let yaml = format!(
        r#"
reactors: {{ cores: [0], idle_sleep_us: 20 }}
transports: {{ tcp: {{ in_capsule_data_size: 8KiB, max_io_size: 128KiB, max_queue_depth: 64 {extra_tcp} }} }}
bdevs:
  - {{ name: ram0, malloc: {{ size: 64MiB }} }}
  - {{ name: ram1, malloc: {{ size: 4MiB, block_size: 512 }} }}
subsystems:
  - nqn: {NQN}
    serial: IT0001
    namespaces: [ {{ nsid: 1, bdev: ram0 }} ]
    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {port} }} ]
  - nqn: {LOCKED}
    serial: IT0002
    hosts: [ {ALLOWED_HOST} ]
    namespaces: [ {{ nsid: 1, bdev: ram1 }} ]
    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {port} }} ]
"#
    );
    let d = start_yaml(&yaml, "it.yaml");
    let addr = d.listen_addrs[0];
    (d, addr)
}

fn opts(nqn: &str) -> HostOptions {
    let mut o = HostOptions::new(nqn);
    o.io_timeout = Duration::from_secs(20);
    o
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn io_queue(addr: SocketAddr, o: &HostOptions) -> (nvmfd_bench::Controller, IoQueue) {
    let mut c = Host::connect_admin(addr, o).expect("admin connect");
    let q = c.connect_io(1, 32).expect("io connect");
    (c, q)
}

#[test]
fn identify_and_discovery() {
    let (d, addr) = start("");
    let mut c = Host::connect_admin(addr, &opts(NQN)).unwrap();
    let info = c.controller_info().unwrap();
    assert_eq!(
        (
            info.serial.as_str(),
            info.model.as_str(),
            info.subnqn.as_str()
        ),
        ("IT0001", "nvmfd", NQN)
    );
    // NN: max_namespaces (default 32), not the highest NSID in use (1).
    assert_eq!((info.mdts, info.nn, info.cntrltype), (5, 32, 1));
    let ns = c.namespace_info(1).unwrap();
    assert_eq!((ns.nsze, ns.block_size), (64 * 1024 * 1024 / 4096, 4096));
    assert_eq!(c.active_namespaces().unwrap(), vec![1]);

    // The discovery log lists only what this (random) host may use: not the locked subsystem.
    let log = Host::discover(addr, &opts(NQN)).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].subnqn.as_str(), log[0].trsvcid.clone()),
        (NQN, addr.port().to_string())
    );
    let mut allowed = opts(NQN);
    allowed.hostnqn = ALLOWED_HOST.into();
    assert_eq!(Host::discover(addr, &allowed).unwrap().len(), 2);
    c.disconnect().unwrap();
    d.shutdown();
}

#[test]
fn write_read_verify_in_capsule_and_r2t() {
    let (d, addr) = start("");
    let (_c, mut q) = io_queue(addr, &opts(NQN));
    assert_eq!(q.in_capsule_size(), 8192);
    // 4 KiB and 8 KiB travel in the capsule, larger writes through R2T/H2CData.
    for (i, blocks) in [1usize, 2, 3, 16, 32].into_iter().enumerate() {
        let lba = 1000 * i as u64;
        let data = pattern(i as u64, blocks * BS);
        assert_eq!(
            q.write(1, lba, &data, BS).unwrap(),
            Status::SUCCESS,
            "write {blocks} blocks"
        );
        let (s, back) = q.read(1, lba, blocks as u32, BS).unwrap();
        assert_eq!(s, Status::SUCCESS);
        assert!(back == data, "read back differs for {blocks} blocks");
    }
    // Flush, write zeroes and deallocate leave zeroes behind.
    assert_eq!(q.flush(1).unwrap(), Status::SUCCESS);
    assert_eq!(q.write_zeroes(1, 1000, 2).unwrap(), Status::SUCCESS);
    assert!(q.read(1, 1000, 2, BS).unwrap().1.iter().all(|&b| b == 0));
    assert_eq!(
        q.deallocate(1, &[(3000, 16), (4000, 8)]).unwrap(),
        Status::SUCCESS
    );
    assert!(q.read(1, 3000, 16, BS).unwrap().1.iter().all(|&b| b == 0));
    assert!(
        q.read(1, 4000, 32, BS).unwrap().1[8 * BS..] == pattern(4, 32 * BS)[8 * BS..],
        "outside the range stays"
    );
    d.shutdown();
}

#[test]
fn c2h_success_flag_replaces_the_response_of_good_reads() {
    let (d, addr) = start(", c2h_success: true");
    let (_c, mut q) = io_queue(addr, &opts(NQN));
    let data = pattern(21, 8 * BS);
    assert_eq!(q.write(1, 40, &data, BS).unwrap(), Status::SUCCESS);
    q.submit(read_sqe(1, 40, 8), None, 8 * BS).unwrap();
    let done = q.poll_completions(1).unwrap();
    assert!(
        done[0].data_success,
        "no CapsuleResp after a SUCCESS-flagged C2HData"
    );
    assert!(done[0].data == data);
    // A failed read still gets its CapsuleResp with the status.
    assert_eq!(
        q.read(1, 1 << 40, 1, BS).unwrap().0,
        Status::LBA_OUT_OF_RANGE
    );
    d.shutdown();
}

#[test]
fn io_errors_get_nvme_statuses() {
    let (d, addr) = start("");
    let (_c, mut q) = io_queue(addr, &opts(NQN));
    let last = 64 * 1024 * 1024 / BS as u64;
    assert_eq!(
        q.read(1, last - 1, 2, BS).unwrap().0,
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        q.write(1, last, &[0u8; BS], BS).unwrap(),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(q.read(1, 0, 1, BS).map(|r| r.0).unwrap(), Status::SUCCESS);
    assert_eq!(q.read(2, 0, 1, BS).unwrap().0, Status::INVALID_NAMESPACE);
    // An opcode the NVM command set does not have.
    let (cqe, _) = q
        .command(
            Sqe {
                opcode: 0x7e,
                nsid: 1,
                ..Default::default()
            },
            None,
            0,
        )
        .unwrap();
    assert_eq!(cqe.status, Status::INVALID_OPCODE);
    // Larger than MDTS (128 KiB): Invalid Field (NVMe base, MDTS), whether the transport sees it
    // first (an SGL it would never buffer, refused before any R2T) or the core does (NLB past
    // MDTS with an SGL the transport takes).
    let big = vec![7u8; 256 * 1024];
    let (cqe, _) = q.command(write_sqe(1, 0, 64), Some(&big), 0).unwrap();
    assert_eq!(cqe.status, Status::INVALID_FIELD);
    assert!(cqe.status.dnr);
    let (cqe, _) = q.command(read_sqe(1, 0, 64), None, 256 * 1024).unwrap();
    assert_eq!(cqe.status, Status::INVALID_FIELD, "read past MDTS");
    let mut sqe = read_sqe(1, 0, 64);
    sqe.dptr = SglDescriptor::transport(128 * 1024);
    sqe.flags = 0x40;
    let (cqe, _) = q.command(sqe, None, 128 * 1024).unwrap();
    assert_eq!(cqe.status, Status::INVALID_FIELD, "NLB past MDTS");
    // An SGL shorter than the blocks asked for.
    let mut sqe = read_sqe(1, 0, 4);
    sqe.dptr = SglDescriptor::transport(4096);
    sqe.flags = 0x40;
    let (cqe, _) = q.command(sqe, None, 4096).unwrap();
    assert_eq!(cqe.status, Status::DATA_SGL_LENGTH_INVALID);
    // The queue still works.
    let data = pattern(9, 4 * BS);
    assert_eq!(q.write(1, 5, &data, BS).unwrap(), Status::SUCCESS);
    assert!(q.read(1, 5, 4, BS).unwrap().1 == data);
    d.shutdown();
}

#[test]
fn digests_both_ways() {
    let (d, addr) = start(", header_digest: required, data_digest: required");
    // A host that does not ask for digests is refused at ICReq.
    let err = Host::connect_admin(addr, &opts(NQN))
        .err()
        .expect("refused without digests");
    assert!(
        matches!(
            err,
            HostError::TerminatedByTarget {
                fes: fes::UNSUPPORTED_PARAMETER,
                ..
            }
        ),
        "{err}"
    );
    let mut o = opts(NQN);
    o.header_digest = true;
    o.data_digest = true;
    let (_c, mut q) = io_queue(addr, &o);
    assert_eq!(
        q.digests(),
        Digests {
            header: true,
            data: true
        }
    );
    for blocks in [1usize, 32] {
        let data = pattern(blocks as u64, blocks * BS);
        assert_eq!(q.write(1, 77, &data, BS).unwrap(), Status::SUCCESS);
        assert!(q.read(1, 77, blocks as u32, BS).unwrap().1 == data);
    }
    d.shutdown();
}

#[test]
fn bad_data_digest_fails_the_command_not_the_connection() {
    let (d, addr) = start("");
    let mut o = opts(NQN);
    o.data_digest = true;
    let (_c, q) = io_queue(addr, &o);
    let mut raw = q.into_raw();
    let data = pattern(1, BS);
    let mut sqe = write_sqe(1, 0, 1);
    sqe.cid = 0x42;
    sqe.dptr = SglDescriptor::in_capsule(0, BS as u32);
    sqe.flags = 0x40;
    let mut pdu = Vec::new();
    tcp::encode_capsule_cmd(&mut pdu, &sqe, Some(&data), raw.digests(), 4);
    let n = pdu.len();
    pdu[n - 1] ^= 0xff; // corrupt the data digest
    raw.send_raw(&pdu).unwrap();
    let resp = raw.read_pdu(Duration::from_secs(10)).unwrap();
    let Header::CapsuleResp(cqe) = resp.header else {
        panic!("expected a response, got {resp:?}")
    };
    assert_eq!(
        (cqe.cid, cqe.status),
        (0x42, TRANSIENT_TRANSPORT_ERROR),
        "transient transport error: generic (SCT 0), SC 22h, retryable"
    );
    assert_eq!(
        (cqe.status.sct, cqe.status.sc, cqe.status.dnr),
        (0, 0x22, false)
    );
    // Same connection, good digest: works.
    let mut good = Vec::new();
    tcp::encode_capsule_cmd(&mut good, &sqe, Some(&data), raw.digests(), 4);
    raw.send_raw(&good).unwrap();
    let Header::CapsuleResp(cqe) = raw.read_pdu(Duration::from_secs(10)).unwrap().header else {
        panic!()
    };
    assert_eq!(cqe.status, Status::SUCCESS);
    d.shutdown();
}

/// A large H2CData payload is received in place (not through the receive buffer); its data
/// digest is still checked, in one piece or split over many segments.
#[test]
fn large_h2c_data_with_bad_digest_fails_only_that_command() {
    let (d, addr) = start("");
    let mut o = opts(NQN);
    o.data_digest = true;
    let (_c, q) = io_queue(addr, &o);
    let mut raw = q.into_raw();
    let data = pattern(8, 64 * 1024);
    for (cid, corrupt) in [(0x51u16, true), (0x52, false)] {
        let mut sqe = write_sqe(1, 64, 16);
        sqe.cid = cid;
        sqe.flags = 0x40;
        sqe.dptr = SglDescriptor::transport(data.len() as u32);
        let mut pdu = Vec::new();
        tcp::encode_capsule_cmd(&mut pdu, &sqe, None, raw.digests(), 4);
        raw.send_raw(&pdu).unwrap();
        let Header::R2t(r2t) = raw.read_pdu(Duration::from_secs(10)).unwrap().header else {
            panic!("expected R2T")
        };
        assert_eq!(
            (r2t.cccid, r2t.offset, r2t.length),
            (cid, 0, data.len() as u32)
        );
        let mut h2c = Vec::new();
        let dh = tcp::DataHeader {
            cccid: cid,
            ttag: r2t.ttag,
            offset: 0,
            length: data.len() as u32,
        };
        dh.encode(
            &mut h2c,
            false,
            tcp::flags::DATA_LAST,
            &data,
            raw.digests(),
            4,
        );
        if corrupt {
            let n = h2c.len();
            h2c[n - 2] ^= 0x10;
        }
        // Dribble it in pieces so the target sees partial payloads.
        for chunk in h2c.chunks(7000) {
            raw.send_raw(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let Header::CapsuleResp(cqe) = raw.read_pdu(Duration::from_secs(10)).unwrap().header else {
            panic!()
        };
        assert_eq!(cqe.cid, cid);
        if corrupt {
            assert_eq!(
                (cqe.status.sct, cqe.status.sc, cqe.status.dnr),
                (0, 0x22, false),
                "transient transport error: generic, not path-related, retryable"
            );
        } else {
            assert_eq!(cqe.status, Status::SUCCESS);
        }
    }
    // What the good write stored reads back.
    let mut sqe = read_sqe(1, 64, 16);
    sqe.cid = 0x53;
    sqe.flags = 0x40;
    sqe.dptr = SglDescriptor::transport(data.len() as u32);
    raw.send_capsule(&sqe, None).unwrap();
    let p = raw.read_pdu(Duration::from_secs(10)).unwrap();
    assert!(matches!(p.header, Header::C2HData(_)) && p.data_digest_ok && p.data == data);
    d.shutdown();
}

/// Each malformed PDU ends only its own connection, with a C2HTermReq naming the problem.
#[test]
fn malformed_pdus_terminate_only_their_connection() {
    let (d, addr) = start("");
    let (_c, mut good) = io_queue(addr, &opts(NQN));
    let sqe = Sqe {
        opcode: opcode::NVM_FLUSH,
        nsid: 1,
        flags: 0x40,
        ..Default::default()
    };
    let mut capsule = Vec::new();
    tcp::encode_capsule_cmd(&mut capsule, &sqe, None, Digests::default(), 4);
    let mut with_data = Vec::new();
    tcp::encode_capsule_cmd(
        &mut with_data,
        &write_sqe(1, 0, 1),
        Some(&[5u8; 64]),
        Digests::default(),
        4,
    );

    let mut cases: Vec<(&str, Vec<u8>, u16)> = Vec::new();
    let mut b = capsule.clone();
    b[0] = 0x0e;
    cases.push(("unknown PDU type", b, fes::INVALID_HEADER_FIELD));
    let mut b = capsule.clone();
    b[2] = 40;
    cases.push(("wrong header length", b, fes::INVALID_HEADER_FIELD));
    let mut b = capsule.clone();
    b[4..8].copy_from_slice(&10u32.to_le_bytes());
    cases.push((
        "PDU length shorter than its header",
        b,
        fes::INVALID_HEADER_FIELD,
    ));
    let mut b = with_data.clone();
    b[3] = 12;
    cases.push((
        "data offset inside the header",
        b,
        fes::INVALID_HEADER_FIELD,
    ));
    let mut b = capsule.clone();
    b[1] = tcp::flags::HDGST;
    cases.push(("digest flag not negotiated", b, fes::INVALID_HEADER_FIELD));
    let mut b = Vec::new();
    tcp::DataHeader {
        cccid: 1,
        ttag: 999,
        offset: 0,
        length: 4,
    }
    .encode(&mut b, false, 4, &[1, 2, 3, 4], Digests::default(), 4);
    cases.push(("H2CData for no transfer", b, fes::INVALID_HEADER_FIELD));
    let mut b = Vec::new();
    tcp::IcReq {
        pfv: 0,
        hpda: 0,
        digests: Digests::default(),
        maxr2t: 0,
    }
    .encode(&mut b);
    cases.push(("second ICReq", b, fes::PDU_SEQUENCE_ERROR));

    for (what, bytes, want_fes) in cases {
        let (mut raw, _) =
            RawConnection::connect_initialized(addr, Digests::default(), Duration::from_secs(10))
                .unwrap();
        raw.send_raw(&bytes).unwrap();
        match raw.read_event(Duration::from_secs(10)).unwrap() {
            RawEvent::Pdu(p) => match p.header {
                Header::TermReq { fes, .. } => assert_eq!(fes, want_fes, "{what}"),
                other => panic!("{what}: expected C2HTermReq, got {other:?}"),
            },
            other => panic!("{what}: expected C2HTermReq, got {other:?}"),
        }
        assert!(
            matches!(
                raw.read_event(Duration::from_secs(10)).unwrap(),
                RawEvent::Closed
            ),
            "{what}: connection closed"
        );
        // The healthy connection is unaffected.
        let data = pattern(3, BS);
        assert_eq!(
            good.write(1, 9, &data, BS).unwrap(),
            Status::SUCCESS,
            "{what}"
        );
        assert!(good.read(1, 9, 1, BS).unwrap().1 == data, "{what}");
    }

    // A bad header digest once digests are on.
    let (mut raw, _) = RawConnection::connect_initialized(
        addr,
        Digests {
            header: true,
            data: false,
        },
        Duration::from_secs(10),
    )
    .unwrap();
    let mut b = Vec::new();
    tcp::encode_capsule_cmd(&mut b, &sqe, None, raw.digests(), 4);
    b[72] ^= 1;
    raw.send_raw(&b).unwrap();
    let RawEvent::Pdu(p) = raw.read_event(Duration::from_secs(10)).unwrap() else {
        panic!("no TermReq")
    };
    assert_eq!(
        p.header,
        Header::TermReq {
            fes: fes::HEADER_DIGEST_ERROR,
            fei: 0
        }
    );
    // A command before ICReq.
    let mut raw = RawConnection::connect(addr, Duration::from_secs(10)).unwrap();
    raw.send_raw(&capsule).unwrap();
    let RawEvent::Pdu(p) = raw.read_event(Duration::from_secs(10)).unwrap() else {
        panic!("no TermReq")
    };
    assert!(matches!(
        p.header,
        Header::TermReq {
            fes: fes::PDU_SEQUENCE_ERROR,
            ..
        }
    ));
    d.shutdown();
}

#[test]
fn allow_list_and_wrong_nqn() {
    let (d, addr) = start("");
    let err = Host::connect_admin(addr, &opts(LOCKED))
        .err()
        .expect("host not on the list");
    assert_eq!(err.status(), Some(Status::CONNECT_INVALID_HOST), "{err}");
    let mut o = opts(LOCKED);
    o.hostnqn = ALLOWED_HOST.into();
    let (_c, mut q) = io_queue(addr, &o);
    let data = pattern(5, 8 * 512);
    assert_eq!(q.write(1, 0, &data, 512).unwrap(), Status::SUCCESS);
    assert!(q.read(1, 0, 8, 512).unwrap().1 == data);
    let err = Host::connect_admin(addr, &opts("nqn.2026-11.io.nvmfd:none"))
        .err()
        .expect("no such subsystem");
    assert_eq!(
        err.status(),
        Some(Status::CONNECT_INVALID_PARAMETERS),
        "{err}"
    );
    d.shutdown();
}

#[test]
fn pipelined_queue_depth_32_on_two_queues() {
    let (d, addr) = start("");
    let mut c = Host::connect_admin(addr, &opts(NQN)).unwrap();
    let mut queues = [c.connect_io(1, 64).unwrap(), c.connect_io(2, 64).unwrap()];
    for (qi, q) in queues.iter_mut().enumerate() {
        let lba = |i: u64| (qi as u64 * 10_000) + i * 4;
        for round in 0..4u64 {
            // Each CID is tied to its LBA: a completion must name a CID in flight, once, and a
            // read's data must be that CID's LBA's (swapped completions fail here).
            let mut writes = std::collections::HashMap::new();
            for i in 0..32u64 {
                let cid = q
                    .submit(
                        write_sqe(1, lba(i), 4),
                        Some(&pattern(lba(i) + round, 4 * BS)),
                        0,
                    )
                    .unwrap();
                assert!(writes.insert(cid, lba(i)).is_none(), "CID {cid} reused");
            }
            let done = q.poll_completions(32).unwrap();
            assert_eq!(done.len(), 32);
            for c in &done {
                assert_eq!(c.status(), Status::SUCCESS, "write CID {}", c.cid);
                assert!(
                    writes.remove(&c.cid).is_some(),
                    "CID {} answered twice or never sent",
                    c.cid
                );
            }
            let mut reads = std::collections::HashMap::new();
            for i in 0..32u64 {
                let cid = q.submit(read_sqe(1, lba(i), 4), None, 4 * BS).unwrap();
                assert!(reads.insert(cid, lba(i)).is_none(), "CID {cid} reused");
            }
            let done = q.poll_completions(32).unwrap();
            assert_eq!(done.len(), 32);
            for c in &done {
                assert_eq!(c.status(), Status::SUCCESS, "read CID {}", c.cid);
                let at = reads
                    .remove(&c.cid)
                    .unwrap_or_else(|| panic!("CID {} answered twice or never sent", c.cid));
                assert!(
                    c.data == pattern(at + round, 4 * BS),
                    "queue {qi} round {round}: CID {} (LBA {at}) got data that is not its LBA's",
                    c.cid
                );
            }
        }
    }
    d.shutdown();
}

#[test]
fn keep_alive_timeout_tears_the_controller_down() {
    let (d, addr) = start("");
    let kato = Duration::from_millis(1000);
    let mut o = opts(NQN);
    o.kato_ms = kato.as_millis() as u32;
    // Every admin command is sent after `before` and before `after`: the controller may go no
    // sooner than KATO after `before`, and must be gone soon after KATO past `after` (the slack
    // covers this machine's load, not a coarse timer: the target checks every few ms).
    let before = Instant::now();
    let (c, mut q) = io_queue(addr, &o);
    let after = Instant::now();
    assert_eq!(q.read(1, 0, 1, BS).unwrap().0, Status::SUCCESS);
    let slack = Duration::from_secs(2);
    // Send nothing on the admin queue: the controller must go, and its I/O queue with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut gone = None;
    while Instant::now() < deadline && gone.is_none() {
        std::thread::sleep(Duration::from_millis(20));
        if d.target.controller_count() == 0 {
            gone = Some(Instant::now());
        }
    }
    let gone = gone.expect("controller still there after 30 s");
    assert!(
        gone - before >= kato,
        "torn down {:?} after the first admin command, before KATO",
        gone - before
    );
    assert!(
        gone - after <= kato + slack,
        "torn down {:?} after the last admin command, KATO is {kato:?}",
        gone - after
    );
    // Its I/O queue goes with it, as promptly.
    let mut closed = false;
    while Instant::now() < after + kato + 2 * slack {
        match q.read(1, 0, 1, BS) {
            Err(e)
                if e.is_connection_closed()
                    || matches!(e, HostError::Io(_) | HostError::ConnectionDead(_)) =>
            {
                closed = true;
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(
        closed,
        "I/O queue still served {:?} after the keep-alive timeout",
        Instant::now() - after
    );
    drop(c);
    // A host that keeps talking keeps its controller.
    let mut o = opts(NQN);
    o.kato_ms = 1000;
    let mut c = Host::connect_admin(addr, &o).unwrap();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(300));
        c.keep_alive().unwrap();
    }
    assert_eq!(d.target.controller_count(), 1);
    d.shutdown();
}

#[test]
fn shutdown_closes_connections_cleanly() {
    let (d, addr) = start("");
    let (_c, mut q) = io_queue(addr, &opts(NQN));
    let data = pattern(11, 32 * BS);
    assert_eq!(q.write(1, 0, &data, BS).unwrap(), Status::SUCCESS);
    d.shutdown();
    assert!(q.read(1, 0, 1, BS).is_err(), "daemon is gone");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener closed"
    );
}

#[test]
fn a_small_buffer_pool_makes_commands_wait_not_fail() {
    // Two 128 KiB buffers for the whole reactor; two queues each keep 16 large writes, then 16
    // large reads, in flight at once (one thread per queue, as a real host's queues are
    // independent). Everything completes and reads back what was written.
    let (d, addr) = start(", buffer_pool_size: 256KiB");
    let mut c = Host::connect_admin(addr, &opts(NQN)).unwrap();
    let queues = [c.connect_io(1, 32).unwrap(), c.connect_io(2, 32).unwrap()];
    std::thread::scope(|s| {
        for (qi, mut q) in queues.into_iter().enumerate() {
            s.spawn(move || {
                let lba = |i: u64| qi as u64 * 4096 + i * 32;
                for round in 0..3u64 {
                    for i in 0..16u64 {
                        q.submit(
                            write_sqe(1, lba(i), 16),
                            Some(&pattern(lba(i) + round, 16 * BS)),
                            0,
                        )
                        .unwrap();
                    }
                    let done = q.poll_completions(16).unwrap();
                    assert!(done.iter().all(|c| c.status() == Status::SUCCESS));
                    let mut cid_lba = Vec::new();
                    for i in 0..16u64 {
                        cid_lba
                            .push((q.submit(read_sqe(1, lba(i), 32), None, 32 * BS).unwrap(), i));
                    }
                    let reads = q.poll_completions(16).unwrap();
                    assert_eq!(reads.len(), 16);
                    for r in reads {
                        assert_eq!(r.status(), Status::SUCCESS);
                        let i = cid_lba.iter().find(|(cid, _)| *cid == r.cid).unwrap().1;
                        assert!(
                            r.data[..16 * BS] == pattern(lba(i) + round, 16 * BS)[..],
                            "queue {qi} round {round}: read of LBA {} differs",
                            lba(i)
                        );
                    }
                }
            });
        }
    });
    d.shutdown();
}

/// The next CapsuleResp on `raw` (for `cid`).
fn raw_cqe(raw: &mut RawConnection, cid: u16) -> nvmfd_transport::proto::nvme::Cqe {
    match raw.read_pdu(Duration::from_secs(10)).unwrap().header {
        Header::CapsuleResp(cqe) => {
            assert_eq!(cqe.cid, cid);
            cqe
        }
        other => panic!("expected the response to {cid}, got {other:?}"),
    }
}

/// The C2HTermReq a target sent just before closing `raw`.
fn raw_term_fes(raw: &mut RawConnection) -> u16 {
    let pdus = raw.wait_closed(Duration::from_secs(10)).unwrap();
    match pdus.last().map(|p| p.header) {
        Some(Header::TermReq { fes, .. }) => fes,
        other => panic!("expected a C2HTermReq before the close, got {other:?}"),
    }
}

fn sgl_sqe(mut sqe: Sqe, cid: u16, dptr: SglDescriptor) -> Sqe {
    sqe.cid = cid;
    sqe.flags = 0x40;
    sqe.dptr = dptr;
    sqe
}

/// In-capsule data (size and offsets), SGL types, LAST_PDU and the queue size, over a socket.
#[test]
fn sgl_and_h2c_data_rules_over_the_wire() {
    let (d, addr) = start("");
    let mut c = Host::connect_admin(addr, &opts(NQN)).unwrap();
    let q = c.connect_io(1, 32).unwrap();
    assert_eq!(q.in_capsule_size(), 8192, "IOCCSZ: 8 KiB of data");
    let mut raw = q.into_raw();
    // More in-capsule data than IOCCSZ: refused, the queue lives on.
    let big = pattern(30, 16 * 1024);
    let sqe = sgl_sqe(
        write_sqe(1, 0, 4),
        1,
        SglDescriptor::in_capsule(0, 16 * 1024),
    );
    raw.send_capsule(&sqe, Some(&big)).unwrap();
    assert_eq!(raw_cqe(&mut raw, 1).status, Status::DATA_SGL_LENGTH_INVALID);
    // In-capsule data at an offset: the command's data starts there.
    let payload = pattern(31, BS);
    let mut data = vec![0xa5u8; 512];
    data.extend_from_slice(&payload);
    let sqe = sgl_sqe(
        write_sqe(1, 300, 1),
        2,
        SglDescriptor::in_capsule(512, BS as u32),
    );
    raw.send_capsule(&sqe, Some(&data)).unwrap();
    assert_eq!(raw_cqe(&mut raw, 2).status, Status::SUCCESS);
    let sqe = sgl_sqe(read_sqe(1, 300, 1), 3, SglDescriptor::transport(BS as u32));
    raw.send_capsule(&sqe, None).unwrap();
    let p = raw.read_pdu(Duration::from_secs(10)).unwrap();
    assert!(matches!(p.header, Header::C2HData(_)), "{p:?}");
    assert!(p.data == payload, "the data after the offset was written");
    assert_eq!(raw_cqe(&mut raw, 3).status, Status::SUCCESS);
    // A Transport SGL Data Block without the transport subtype.
    let mut dptr = SglDescriptor::transport(BS as u32);
    dptr.identifier = SglDescriptor::TRANSPORT_DATA_BLOCK << 4;
    raw.send_capsule(&sgl_sqe(read_sqe(1, 0, 1), 4, dptr), None)
        .unwrap();
    assert_eq!(
        raw_cqe(&mut raw, 4).status,
        Status::SGL_DESCRIPTOR_TYPE_INVALID
    );
    // LAST_PDU on the first of two H2CData PDUs: fatal.
    let data = pattern(32, 128 * 1024);
    let sqe = sgl_sqe(
        write_sqe(1, 0, 32),
        5,
        SglDescriptor::transport(data.len() as u32),
    );
    raw.send_capsule(&sqe, None).unwrap();
    let Header::R2t(r2t) = raw.read_pdu(Duration::from_secs(10)).unwrap().header else {
        panic!("expected an R2T")
    };
    let mut h2c = Vec::new();
    for (i, half) in data.chunks(64 * 1024).enumerate() {
        tcp::DataHeader {
            cccid: 5,
            ttag: r2t.ttag,
            offset: (i * 64 * 1024) as u32,
            length: half.len() as u32,
        }
        .encode(
            &mut h2c,
            false,
            tcp::flags::DATA_LAST,
            half,
            raw.digests(),
            4,
        );
    }
    raw.send_raw(&h2c).unwrap();
    assert_eq!(raw_term_fes(&mut raw), fes::PDU_SEQUENCE_ERROR);

    // A queue of 4 entries with a fifth command outstanding: the host broke flow control.
    let q = c.connect_io(2, 4).unwrap();
    let mut raw = q.into_raw();
    for cid in 0..4u16 {
        let sqe = sgl_sqe(
            write_sqe(1, 0, 32),
            cid,
            SglDescriptor::transport(128 * 1024),
        );
        raw.send_capsule(&sqe, None).unwrap();
    }
    let sqe = sgl_sqe(read_sqe(1, 0, 1), 4, SglDescriptor::transport(BS as u32));
    raw.send_capsule(&sqe, None).unwrap();
    assert_eq!(raw_term_fes(&mut raw), fes::PDU_SEQUENCE_ERROR);
    // The controller's other queues are unaffected.
    let mut q = c.connect_io(3, 32).unwrap();
    let data = pattern(33, 32 * BS);
    assert_eq!(q.write(1, 64, &data, BS).unwrap(), Status::SUCCESS);
    assert!(q.read(1, 64, 32, BS).unwrap().1 == data);
    d.shutdown();
}

/// A host that takes R2Ts and never sends the data holds at most its share of the reactor's
/// large buffers, and only until the R2T timeout; another host's large I/O goes on meanwhile.
#[test]
fn a_host_sitting_on_r2ts_neither_starves_others_nor_keeps_its_buffers() {
    use nvmfd_transport::tcp::R2T_TIMEOUT;
    // Four 128 KiB buffers on the reactor: a share of one per connection.
    let (d, addr) = start(", buffer_pool_size: 512KiB");
    let (_hc, hq) = io_queue(addr, &opts(NQN));
    let mut hostile = hq.into_raw();
    for cid in 0..8u16 {
        let sqe = sgl_sqe(
            write_sqe(1, 0, 32),
            cid,
            SglDescriptor::transport(128 * 1024),
        );
        hostile.send_capsule(&sqe, None).unwrap();
    }
    let Header::R2t(_) = hostile.read_pdu(Duration::from_secs(10)).unwrap().header else {
        panic!("expected an R2T")
    };
    let got_r2t = Instant::now();
    assert!(
        matches!(
            hostile.read_event(Duration::from_millis(500)).unwrap(),
            RawEvent::Timeout
        ),
        "one R2T only: the others wait for this connection's own buffer"
    );
    // Meanwhile another host's large writes and reads, four at a time, verified.
    let (_gc, mut good) = io_queue(addr, &opts(NQN));
    for round in 0..3u64 {
        let lba = |i: u64| 2048 + i * 32;
        let mut cids = std::collections::HashMap::new();
        for i in 0..4u64 {
            let cid = good
                .submit(
                    write_sqe(1, lba(i), 32),
                    Some(&pattern(lba(i) + round, 32 * BS)),
                    0,
                )
                .unwrap();
            cids.insert(cid, i);
        }
        for c in good.poll_completions(4).unwrap() {
            assert_eq!(c.status(), Status::SUCCESS);
        }
        cids.clear();
        for i in 0..4u64 {
            cids.insert(
                good.submit(read_sqe(1, lba(i), 32), None, 32 * BS).unwrap(),
                i,
            );
        }
        for c in good.poll_completions(4).unwrap() {
            assert_eq!(c.status(), Status::SUCCESS);
            let i = cids[&c.cid];
            assert!(
                c.data == pattern(lba(i) + round, 32 * BS),
                "round {round} read {i}"
            );
        }
    }
    // The hostile connection is closed once its R2T has waited R2T_TIMEOUT.
    hostile
        .wait_closed(R2T_TIMEOUT + Duration::from_secs(10))
        .expect("closed after the R2T timeout");
    let waited = got_r2t.elapsed();
    assert!(
        waited >= R2T_TIMEOUT - Duration::from_millis(500)
            && waited <= R2T_TIMEOUT + Duration::from_secs(5),
        "closed {waited:?} after its R2T (timeout {R2T_TIMEOUT:?})"
    );
    // Its buffer came back: the good host can use the pool again.
    let data = pattern(40, 32 * BS);
    assert_eq!(good.write(1, 4096, &data, BS).unwrap(), Status::SUCCESS);
    assert!(good.read(1, 4096, 32, BS).unwrap().1 == data);
    d.shutdown();
}

/// Two phases over the wire: a write the core refuses (bad namespace, LBA out of range, past
/// MDTS, an SGL shorter than NLB, an in-capsule offset outside the capsule) is answered at once
/// with its status, and no R2T is ever sent for it; a good write on the same queue then gets its
/// R2T and completes.
#[test]
fn refused_writes_get_no_r2t() {
    let (d, addr) = start("");
    let mut c = Host::connect_admin(addr, &opts(NQN)).unwrap();
    let mut raw = c.connect_io(1, 32).unwrap().into_raw();
    let t = SglDescriptor::transport;
    // ram0: 64 MiB of 4 KiB blocks = 16384 blocks; MDTS 128 KiB.
    let cases = [
        (
            write_sqe(9, 0, 32),
            t(128 * 1024),
            Status::INVALID_NAMESPACE,
        ),
        (
            write_sqe(1, 16380, 32),
            t(128 * 1024),
            Status::LBA_OUT_OF_RANGE,
        ),
        (write_sqe(1, 0, 64), t(256 * 1024), Status::INVALID_FIELD),
        (
            write_sqe(1, 0, 32),
            t(4096),
            Status::DATA_SGL_LENGTH_INVALID,
        ),
    ];
    for (i, (sqe, dptr, want)) in cases.into_iter().enumerate() {
        let cid = 10 + i as u16;
        raw.send_capsule(&sgl_sqe(sqe, cid, dptr), None).unwrap();
        // raw_cqe fails on anything but a CapsuleResp: an R2T here would be the bug.
        assert_eq!(raw_cqe(&mut raw, cid).status, want, "case {i}");
    }
    let sqe = sgl_sqe(
        write_sqe(1, 0, 1),
        20,
        SglDescriptor::in_capsule(8192 + 16, 16),
    );
    raw.send_capsule(&sqe, Some(&[0u8; 64])).unwrap();
    assert_eq!(raw_cqe(&mut raw, 20).status, Status::SGL_OFFSET_INVALID);
    // An admitted write: its R2T comes, then (data sent) its response.
    let data = pattern(40, 128 * 1024);
    let sqe = sgl_sqe(write_sqe(1, 0, 32), 21, t(data.len() as u32));
    raw.send_capsule(&sqe, None).unwrap();
    let Header::R2t(r2t) = raw.read_pdu(Duration::from_secs(10)).unwrap().header else {
        panic!("expected an R2T for the admitted write")
    };
    assert_eq!((r2t.cccid, r2t.length), (21, data.len() as u32));
    let mut h2c = Vec::new();
    tcp::DataHeader {
        cccid: 21,
        ttag: r2t.ttag,
        offset: 0,
        length: data.len() as u32,
    }
    .encode(
        &mut h2c,
        false,
        tcp::flags::DATA_LAST,
        &data,
        raw.digests(),
        4,
    );
    raw.send_raw(&h2c).unwrap();
    assert_eq!(raw_cqe(&mut raw, 21).status, Status::SUCCESS);
    d.shutdown();
}
