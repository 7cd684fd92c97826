//! Seed inputs for every target, in the shapes real traffic has (what the integration tests and
//! the Linux host send: ICReq, Connect with its 1024 bytes in the capsule, Property Set CC,
//! Identify, reads, in-capsule and R2T/H2CData writes, digests) and the YAML examples.
//! `cargo test -p nvmfd-fuzz -- --ignored write_seed_corpus` writes them to `fuzz/corpus/`.

use crate::{CORE_MAX_IO, HOST_A, NQN_LOCKED, NQN_OPEN};
use nvmfd_transport::proto::fabrics::{
    ConnectCommand, ConnectData, PropertyCommand, DISCOVERY_NQN,
};
use nvmfd_transport::proto::nvme::{cns, feature, log_page, opcode, property, SglDescriptor, Sqe};
use nvmfd_transport::proto::tcp::{
    encode_capsule_cmd, encode_capsule_resp, encode_term_req, fes, flags, DataHeader, Digests,
    IcReq, IcResp, R2t,
};

/// (target, seed name, bytes) for every seed.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut v = Vec::new();
    for (name, b) in pdu() {
        v.push(("pdu", name, b));
    }
    for (name, b) in tcp_conn() {
        v.push(("tcp_conn", name, b));
    }
    for (name, b) in capsule() {
        v.push(("capsule", name, b));
    }
    for (name, b) in discovery() {
        v.push(("discovery", name, b));
    }
    for (name, b) in yaml() {
        v.push(("yaml", name, b));
    }
    v
}

const NONE: Digests = Digests {
    header: false,
    data: false,
};
const BOTH: Digests = Digests {
    header: true,
    data: true,
};

fn icreq(digests: Digests) -> Vec<u8> {
    let mut b = Vec::new();
    IcReq {
        pfv: 0,
        hpda: 0,
        digests,
        maxr2t: 0,
    }
    .encode(&mut b);
    b
}

fn connect_data(subnqn: &str, hostnqn: &str, cntlid: u16) -> [u8; 1024] {
    ConnectData {
        hostid: [0x11; 16],
        cntlid,
        subnqn: subnqn.into(),
        hostnqn: hostnqn.into(),
    }
    .encode()
}

fn connect_sqe(qid: u16, sqsize: u16) -> Sqe {
    ConnectCommand {
        recfmt: 0,
        qid,
        sqsize,
        cattr: 0,
        kato_ms: 120_000,
    }
    .to_sqe(1, 1024)
}

fn cc_enable() -> Sqe {
    PropertyCommand {
        size: 4,
        offset: property::CC,
        value: 1 | (6 << 16) | (4 << 20),
    }
    .to_sqe(2, true)
}

fn prop_get(offset: u32, size: u8) -> Sqe {
    PropertyCommand {
        size,
        offset,
        value: 0,
    }
    .to_sqe(3, false)
}

fn with_cid(mut s: Sqe, cid: u16) -> Sqe {
    s.cid = cid;
    s
}

fn identify(cid: u16, cns_: u8, nsid: u32) -> Sqe {
    Sqe {
        opcode: opcode::ADMIN_IDENTIFY,
        flags: 0x40,
        cid,
        nsid,
        cdw10: cns_ as u32,
        dptr: SglDescriptor::transport(4096),
        ..Default::default()
    }
}

fn get_log(cid: u16, lid: u8, len: u32, offset: u64) -> Sqe {
    let numd = len / 4 - 1;
    Sqe {
        opcode: opcode::ADMIN_GET_LOG_PAGE,
        flags: 0x40,
        cid,
        nsid: 0xffff_ffff,
        cdw10: lid as u32 | (numd & 0xffff) << 16,
        cdw11: numd >> 16,
        cdw12: offset as u32,
        cdw13: (offset >> 32) as u32,
        dptr: SglDescriptor::transport(len),
        ..Default::default()
    }
}

fn features(cid: u16, set: bool, fid: u8, value: u32) -> Sqe {
    Sqe {
        opcode: if set {
            opcode::ADMIN_SET_FEATURES
        } else {
            opcode::ADMIN_GET_FEATURES
        },
        flags: 0x40,
        cid,
        cdw10: fid as u32,
        cdw11: value,
        ..Default::default()
    }
}

fn plain(cid: u16, op: u8) -> Sqe {
    Sqe {
        opcode: op,
        flags: 0x40,
        cid,
        ..Default::default()
    }
}

/// A read or write of `blocks` blocks at `slba`, its data moved by the transport.
fn rw(cid: u16, op: u8, nsid: u32, slba: u64, blocks: u32, bytes: u32) -> Sqe {
    let mut s = Sqe::lba_command(op, nsid, slba, blocks);
    s.cid = cid;
    s.flags = 0x40;
    s.dptr = SglDescriptor::transport(bytes);
    s
}

/// A write whose `bytes` ride in the capsule.
fn write_in_capsule(cid: u16, nsid: u32, slba: u64, blocks: u32, bytes: u32) -> Sqe {
    let mut s = rw(cid, opcode::NVM_WRITE, nsid, slba, blocks, bytes);
    s.dptr = SglDescriptor::in_capsule(0, bytes);
    s
}

fn cmd(out: &mut Vec<u8>, sqe: &Sqe, data: Option<&[u8]>, d: Digests) {
    encode_capsule_cmd(out, sqe, data, d, 4);
}

fn h2c(out: &mut Vec<u8>, cid: u16, ttag: u16, offset: u32, data: &[u8], last: bool, d: Digests) {
    DataHeader {
        cccid: cid,
        ttag,
        offset,
        length: data.len() as u32,
    }
    .encode(
        out,
        false,
        if last { flags::DATA_LAST } else { 0 },
        data,
        d,
        4,
    );
}

/// What a host sends to set up an admin queue: ICReq, Connect, CC.EN = 1, Identify Controller.
fn admin_setup(d: Digests, subnqn: &str) -> Vec<u8> {
    let mut b = icreq(d);
    cmd(
        &mut b,
        &connect_sqe(0, 31),
        Some(&connect_data(subnqn, HOST_A, 0xffff)),
        d,
    );
    cmd(&mut b, &cc_enable(), None, d);
    cmd(&mut b, &identify(4, cns::CONTROLLER, 0), None, d);
    b
}

fn pdu() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    // Selector: bits 1:0 digests, bits 3:2 the data limit (2 = 128 KiB).
    for (tag, d, sel) in [("plain", NONE, 0x08u8), ("digests", BOTH, 0x0b)] {
        let one = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = vec![sel];
            f(&mut b);
            b
        };
        v.push((format!("icreq-{tag}"), one(&|b| b.extend(icreq(d)))));
        v.push((
            format!("icresp-{tag}"),
            one(&|b| {
                IcResp {
                    pfv: 0,
                    cpda: 0,
                    digests: d,
                    maxh2cdata: 131_072,
                }
                .encode(b)
            }),
        ));
        v.push((
            format!("connect-{tag}"),
            one(&|b| {
                cmd(
                    b,
                    &connect_sqe(0, 31),
                    Some(&connect_data(NQN_OPEN, HOST_A, 0xffff)),
                    d,
                )
            }),
        ));
        v.push((
            format!("read-{tag}"),
            one(&|b| cmd(b, &rw(7, opcode::NVM_READ, 1, 8, 2, 8192), None, d)),
        ));
        v.push((
            format!("write-in-capsule-{tag}"),
            one(&|b| {
                cmd(
                    b,
                    &write_in_capsule(8, 1, 0, 1, 4096),
                    Some(&[0xa5; 4096]),
                    d,
                )
            }),
        ));
        v.push((
            format!("h2cdata-{tag}"),
            one(&|b| h2c(b, 9, 1, 0, &[0x3c; 512], true, d)),
        ));
        v.push((
            format!("c2hdata-{tag}"),
            one(&|b| {
                DataHeader {
                    cccid: 7,
                    ttag: 0,
                    offset: 0,
                    length: 256,
                }
                .encode(
                    b,
                    true,
                    flags::DATA_LAST | flags::DATA_SUCCESS,
                    &[0x42; 256],
                    d,
                    8,
                )
            }),
        ));
        v.push((
            format!("r2t-{tag}"),
            one(&|b| {
                R2t {
                    cccid: 9,
                    ttag: 1,
                    offset: 0,
                    length: 65536,
                }
                .encode(b, d)
            }),
        ));
        v.push((
            format!("capsule-resp-{tag}"),
            one(&|b| encode_capsule_resp(b, &Default::default(), d)),
        ));
    }
    v.push((
        "term-req".into(),
        [vec![0x08], {
            let mut b = Vec::new();
            encode_term_req(&mut b, false, fes::PDU_SEQUENCE_ERROR, 0, &[0x04; 72]);
            b
        }]
        .concat(),
    ));
    // A header digest that does not match, and a truncated PDU.
    let mut bad = vec![0x0b];
    cmd(
        &mut bad,
        &rw(7, opcode::NVM_READ, 1, 8, 2, 8192),
        None,
        BOTH,
    );
    bad[10] ^= 0xff;
    v.push(("bad-header-digest".into(), bad));
    let mut cut = vec![0x08];
    cmd(
        &mut cut,
        &write_in_capsule(8, 1, 0, 1, 4096),
        Some(&[1; 4096]),
        NONE,
    );
    cut.truncate(100);
    v.push(("truncated".into(), cut));
    v
}

fn tcp_conn() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    // byte 0: digest modes allowed, bit 5 answers R2Ts; byte 1: pieces of 72 bytes (index 4).
    for (tag, d) in [("plain", NONE), ("digests", BOTH)] {
        let mut s = admin_setup(d, NQN_OPEN);
        cmd(&mut s, &with_cid(prop_get(property::CAP, 8), 5), None, d);
        cmd(&mut s, &rw(6, opcode::NVM_READ, 1, 0, 2, 8192), None, d);
        cmd(
            &mut s,
            &write_in_capsule(7, 1, 0, 1, 4096),
            Some(&[0x5a; 4096]),
            d,
        );
        cmd(&mut s, &rw(8, opcode::NVM_WRITE, 1, 4, 4, 16384), None, d);
        v.push((
            format!("session-answer-r2t-{tag}"),
            [&[0x20, 0x04][..], &s].concat(),
        ));
        v.push((
            format!("session-whole-{tag}"),
            [&[0x20, 0x00][..], &s].concat(),
        ));
    }
    // Writes answered in the stream itself: a command's transfer tag is its slot, and the first
    // command of a connection takes slot 0. One small write, one large enough (20 KiB) that its
    // payload is read straight into the command's buffer.
    for (tag, d, len) in [
        ("small-plain", NONE, 4096u32),
        ("small-digests", BOTH, 4096),
        ("large-plain", NONE, 20480),
        ("large-digests", BOTH, 20480),
    ] {
        let mut s = icreq(d);
        cmd(
            &mut s,
            &rw(1, opcode::NVM_WRITE, 1, 0, len / 4096, len),
            None,
            d,
        );
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let half = (len / 2) as usize;
        h2c(&mut s, 1, 0, 0, &data[..half], false, d);
        h2c(&mut s, 1, 0, half as u32, &data[half..], true, d);
        v.push((format!("h2cdata-{tag}"), [&[0x00, 0x09][..], &s].concat()));
    }
    // A bad data digest on in-capsule data (a transient transport error, not fatal), and a
    // PDU out of sequence (fatal: C2HTermReq).
    let mut s = icreq(BOTH);
    let mut c = Vec::new();
    cmd(
        &mut c,
        &write_in_capsule(3, 1, 0, 1, 512),
        Some(&[9; 512]),
        BOTH,
    );
    let n = c.len();
    c[n - 1] ^= 1;
    s.extend(c);
    v.push(("bad-data-digest".into(), [&[0x00, 0x00][..], &s].concat()));
    let mut s = icreq(NONE);
    s.extend(icreq(NONE));
    v.push(("second-icreq".into(), [&[0x00, 0x00][..], &s].concat()));
    // Required digests refused, and the queue depth exceeded.
    v.push((
        "digest-required".into(),
        [&[0x05, 0x00][..], &icreq(NONE)].concat(),
    ));
    let mut s = icreq(NONE);
    for cid in 0..20 {
        cmd(
            &mut s,
            &rw(cid, opcode::NVM_READ, 1, 0, 1, 4096),
            None,
            NONE,
        );
    }
    v.push((
        "queue-full-deferred".into(),
        [&[0xc0, 0x00][..], &s].concat(),
    ));
    v
}

/// One command record of the capsule harness: SQE, time step, data.
fn rec(out: &mut Vec<u8>, sqe: &Sqe, data: &[u8]) {
    out.extend_from_slice(&sqe.encode());
    out.push(0);
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data);
}

fn capsule() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    // Admin queue of the open subsystem.
    let mut s = vec![0u8];
    rec(&mut s, &identify(1, cns::CONTROLLER, 0), &[]);
    rec(&mut s, &identify(2, cns::NAMESPACE, 1), &[]);
    rec(&mut s, &identify(3, cns::ACTIVE_NAMESPACES, 0), &[]);
    rec(&mut s, &identify(4, cns::NAMESPACE_DESCRIPTORS, 5), &[]);
    rec(&mut s, &get_log(5, log_page::SMART_HEALTH, 512, 0), &[]);
    rec(&mut s, &get_log(6, log_page::ERROR_INFORMATION, 64, 0), &[]);
    rec(
        &mut s,
        &features(7, true, feature::NUMBER_OF_QUEUES, 0x0003_0003),
        &[],
    );
    rec(
        &mut s,
        &features(8, false, feature::VOLATILE_WRITE_CACHE, 0),
        &[],
    );
    rec(
        &mut s,
        &features(9, true, feature::KEEP_ALIVE_TIMER, 5000),
        &[],
    );
    rec(&mut s, &plain(10, opcode::ADMIN_KEEP_ALIVE), &[]);
    rec(&mut s, &plain(11, opcode::ADMIN_ASYNC_EVENT_REQUEST), &[]);
    rec(&mut s, &with_cid(prop_get(property::CSTS, 4), 12), &[]);
    rec(&mut s, &with_cid(prop_get(property::VS, 4), 13), &[]);
    v.push(("admin-open".into(), s));
    // The allow-listed subsystem, and discovery.
    let mut s = vec![1u8];
    rec(&mut s, &identify(1, cns::NAMESPACE, 3), &[]);
    rec(
        &mut s,
        &get_log(2, log_page::CHANGED_NAMESPACES, 4096, 0),
        &[],
    );
    v.push(("admin-locked".into(), s));
    let mut s = vec![2u8];
    rec(&mut s, &get_log(1, log_page::DISCOVERY, 4096, 0), &[]);
    rec(&mut s, &get_log(2, log_page::DISCOVERY, 1024, 1024), &[]);
    rec(&mut s, &identify(3, cns::CONTROLLER, 0), &[]);
    v.push(("admin-discovery".into(), s));
    // An I/O queue (qid 1, 16 entries): reads, writes, flush, write zeroes, deallocate.
    let mut s = vec![3u8, 0, 15];
    rec(&mut s, &rw(1, opcode::NVM_READ, 1, 0, 2, 8192), &[]);
    rec(
        &mut s,
        &rw(2, opcode::NVM_WRITE, 1, 8, 1, 4096),
        &[0x77; 64],
    );
    rec(&mut s, &rw(3, opcode::NVM_READ, 5, 100, 16, 8192), &[]);
    rec(&mut s, &rw(4, opcode::NVM_WRITE, 1, 255, 2, 8192), &[]);
    rec(&mut s, &rw(5, opcode::NVM_READ, 1, 0, 8, CORE_MAX_IO), &[]);
    rec(&mut s, &plain(6, opcode::NVM_FLUSH), &[]);
    let mut wz = rw(7, opcode::NVM_WRITE_ZEROES, 1, 16, 8, 0);
    wz.dptr = SglDescriptor::default();
    rec(&mut s, &wz, &[]);
    let mut dsm = plain(8, opcode::NVM_DATASET_MANAGEMENT);
    dsm.nsid = 1;
    dsm.cdw10 = 1; // two ranges
    dsm.cdw11 = 1 << 2; // deallocate
    dsm.dptr = SglDescriptor::in_capsule(0, 32);
    let mut ranges = Vec::new();
    for (lba, n) in [(0u64, 4u32), (32, 8)] {
        ranges.extend_from_slice(&0u32.to_le_bytes());
        ranges.extend_from_slice(&n.to_le_bytes());
        ranges.extend_from_slice(&lba.to_le_bytes());
    }
    rec(&mut s, &dsm, &ranges);
    let mut disc = plain(9, opcode::FABRICS);
    disc.nsid = 0x08; // FCTYPE Disconnect (byte 4, see Sqe::fctype)
    rec(&mut s, &disc, &[]);
    v.push(("io-queue".into(), s));
    // Nothing prepared: the host's own Connect, then a command before CC.EN.
    let mut s = vec![4u8];
    rec(
        &mut s,
        &connect_sqe(0, 31),
        &connect_data(NQN_LOCKED, HOST_A, 0xffff),
    );
    rec(&mut s, &identify(2, cns::CONTROLLER, 0), &[]);
    rec(&mut s, &cc_enable(), &[]);
    rec(&mut s, &identify(3, cns::CONTROLLER, 0), &[]);
    rec(
        &mut s,
        &connect_sqe(0, 31),
        &connect_data(DISCOVERY_NQN, HOST_A, 0xffff),
    );
    v.push(("raw-connect".into(), s));
    v
}

fn discovery() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    // Two subsystems: one open with two listeners (one shared), one allow-listed for host A.
    let mut s = vec![2u8];
    // flags: allow any host, 0 hosts, 2 listeners.
    s.extend([0x01 | (2 << 3), 8]);
    s.extend(b"storage1");
    s.extend([0, 0x54, 0x11, 2, 0x54, 0x11]);
    // flags: 1 host, 1 listener.
    s.extend([(1 << 1) | (1 << 3), 4]);
    s.extend(b"lock");
    s.push(0); // host A
    s.extend([0, 0x55, 0x11]);
    s.push(0); // asking: host A
    s.push(126);
    s.extend([0, 0, 1, 0xff, 0x03, 1]); // offset 0, whole page
    v.push(("two-subsystems".into(), s));
    // Many entries, a window in the middle of the page.
    let mut s = vec![4u8];
    for i in 0..4u8 {
        s.extend([0x01 | (3 << 3) | (1 << 5), 3]);
        s.extend([i, i + 1, i + 2]);
        for l in 0..4u8 {
            s.extend([l, 0x54 + i, 0x11]);
        }
    }
    s.push(1);
    s.push(30);
    s.extend([0x00, 0x01, 1, 0xff, 0x00, 1]); // offset 1024, 256 dwords
    v.push(("window".into(), s));
    // No subsystems at all; a misaligned offset.
    v.push(("empty-misaligned".into(), vec![0, 0, 0, 3, 0, 0, 0, 1]));
    v
}

fn yaml() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = vec![
        (
            "example-default".into(),
            include_bytes!("../../deploy/examples/default.yaml").to_vec(),
        ),
        (
            "example-two-namespaces".into(),
            include_bytes!("../../deploy/examples/tcp-two-namespaces.yaml").to_vec(),
        ),
        (
            "embedded-default".into(),
            nvmfd_config::EMBEDDED_DEFAULT_YAML.as_bytes().to_vec(),
        ),
    ];
    let snippets: &[(&str, &str)] = &[
        (
            "minimal",
            "bdevs:\n  - name: ram0\n    malloc: { size: 64MiB }\nsubsystems:\n  - nqn: nqn.2026-11.io.nvmfd:a\n    namespaces: [{ bdev: ram0 }]\n    listeners: [{ address: 127.0.0.1 }]\n",
        ),
        (
            "anchors-merge",
            "bdevs:\n  - { name: a, null: &small { size: 1MiB, block_size: 512 } }\n  - { name: b, null: *small }\nsubsystems:\n  - &sub\n    nqn: nqn.2026-11.io.nvmfd:a\n    model: shared\n    namespaces: [{ bdev: a }]\n  - <<: *sub\n    nqn: nqn.2026-11.io.nvmfd:b\n    namespaces: [{ bdev: b }]\n",
        ),
        (
            "tcp-all-fields",
            "transports:\n  tcp: { in_capsule_data_size: 16KiB, max_io_size: 1MiB, max_queue_depth: 256, max_io_queues: 8, header_digest: required, data_digest: off, c2h_success: true, buffer_pool_size: 128 MiB }\nreactors: { count: 1, idle_sleep_us: 50 }\ndiscovery: { enabled: false }\n",
        ),
        (
            "uring-hosts",
            "bdevs:\n  - name: f\n    uring: { path: /var/lib/nvmfd/disk0.img, block_size: 4096 }\nsubsystems:\n  - nqn: nqn.2026-11.io.nvmfd:x\n    serial: 0001\n    allow_any_host: false\n    hosts: [nqn.2014-08.org.nvmexpress:uuid:1]\n    namespaces: [{ nsid: 7, bdev: f }]\n    listeners: [{ transport: tcp, address: \"::1\", port: 4421 }]\n",
        ),
        (
            "errors",
            "reactors: { cores: [0], count: 2 }\ntransports: { tcp: { max_io_size: 4KB, rdma: {} } }\nbdevs:\n  - { name: a, malloc: { size: 1G } }\n  - { name: a, nvme: {} }\nsubsystems:\n  - nqn: nqn.2014-08.org.nvmexpress.discovery\n    namespaces: [{ nsid: 0, bdev: nope }]\n",
        ),
        (
            "syntax",
            "subsystems:\n  - nqn: nqn.2026-11.io.nvmfd:a\n    hosts: [nqn.2014-08.org.nvmexpress:uuid:1\n",
        ),
        ("two-documents", "discovery: {}\n---\ndiscovery: {}\n"),
    ];
    for (name, text) in snippets {
        v.push((name.to_string(), text.as_bytes().to_vec()));
    }
    v
}
