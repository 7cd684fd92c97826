//! Fuzz harnesses for the parts of nvmfd that read untrusted bytes, one function per target:
//!
//! | target      | what it drives                                                              |
//! |-------------|-----------------------------------------------------------------------------|
//! | [`pdu`]       | the NVMe/TCP framer (`proto::tcp::parse_header` / `parse_pdu`) and codecs |
//! | [`tcp_conn`]  | a whole [`TcpConn`] receive/send state machine over an in-memory stream   |
//! | [`capsule`]   | capsule and SGL admission in the core's `QueuePair` (Connect, then anything) |
//! | [`discovery`] | the discovery log page as Get Log Page returns it, for generated configs  |
//! | [`yaml`]      | the YAML configuration loader                                             |
//!
//! Each harness checks properties, not just "no panic": what the target sends must be well-formed
//! PDUs, a response never carries more data than the command's SGL describes, I/Os handed to a
//! block device stay inside the namespace, the discovery log matches the configuration, etc. A
//! violated property panics, which libFuzzer reports as a crash.
//!
//! The same functions run in three ways: under libFuzzer (`fuzz_targets/*.rs`, nightly, see
//! `fuzz/run.sh`), over the committed corpus `fuzz/corpus/<target>/` in this crate's plain tests on
//! stable (`cargo test -p nvmfd-fuzz`), and on the seeds [`seeds`] builds from real traffic.

#![forbid(unsafe_code)]

pub mod seeds;

use nvmfd_bdev::{BdevInfo, Op};
use nvmfd_config::{
    Config, DigestMode, ListenerConfig, SubsystemConfig, TcpTransport, TransportKind,
};
use nvmfd_p2p::mem::BufPool;
use nvmfd_target::core::{Capsule, Outcome, QueuePair, Response, Target};
use nvmfd_transport::proto::fabrics::{
    decode_discovery_header, subtype, trtype, ConnectCommand, ConnectData, DiscoveryLogEntry,
    PropertyCommand, DISCOVERY_NQN,
};
use nvmfd_transport::proto::nvme::{
    log_page, opcode, property, Cqe, Direction, SglDescriptor, Sqe,
};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::proto::tcp::{
    encode_capsule_cmd, encode_capsule_resp, encode_term_req, fes, flags, parse_header, parse_pdu,
    pdu_type, DataHeader, Digests, FatalError, Header, IcResp, R2t,
};
use nvmfd_transport::tcp::{ConnError, ConnEvent, TcpConn, TcpParams};
use nvmfd_transport::{DataDesc, DataNeed};
use std::cell::RefCell;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A harness: takes any bytes, panics when a checked property does not hold.
pub type Harness = fn(&[u8]);

/// Every target: its name (the folder of its corpus, the cargo-fuzz binary) and its harness.
pub const TARGETS: &[(&str, Harness)] = &[
    ("pdu", pdu),
    ("tcp_conn", tcp_conn),
    ("capsule", capsule),
    ("discovery", discovery),
    ("yaml", yaml),
];

/// Reads a fuzz input front to back; past its end every read gives zeroes.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

// ---------------------------------------------------------------------------------------------
// pdu: the framer.

/// Input: one selector byte (bit 0 header digest, bit 1 data digest, bits 3:2 the data size
/// limit), then the bytes of a receive buffer.
///
/// Checks: a frame's pieces add up to its PDU length and respect the limit; parsing a prefix of
/// the buffer gives "need more bytes" or exactly the answer the whole buffer gives (the receive
/// path parses as bytes trickle in); a decoded header re-encodes to one that decodes the same.
pub fn pdu(data: &[u8]) {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let digests = Digests {
        header: sel & 1 != 0,
        data: sel & 2 != 0,
    };
    let max_data = [0, 4096, 131_072, u32::MAX][(sel >> 2 & 3) as usize];
    let full = parse_header(buf, digests, max_data);
    // Prefixes: every cut up to the end of the header and its digest, and the whole buffer.
    for cut in (0..buf.len().min(160)).chain([buf.len()]) {
        match parse_header(&buf[..cut], digests, max_data) {
            Ok(None) => {}
            other => assert_eq!(other, full, "a {cut}-byte prefix decides differently"),
        }
    }
    let frame = match full {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => return check_fatal(&e),
    };
    let plen = frame.len();
    assert_eq!(
        frame.data_offset + frame.data_len + frame.data_digest_len,
        plen,
        "{frame:?}"
    );
    assert!(frame.data_offset >= frame.ch.hlen as usize, "{frame:?}");
    let limit = match frame.header {
        Header::TermReq { .. } => 128,
        _ => max_data as usize,
    };
    assert!(frame.data_len <= limit, "{frame:?}");
    let pdu = parse_pdu(buf, digests, max_data).expect("the header was fine");
    let Some(pdu) = pdu else {
        assert!(buf.len() < plen);
        return;
    };
    assert_eq!(
        (pdu.len, pdu.data.len(), pdu.header),
        (plen, frame.data_len, frame.header)
    );
    // Re-encode what was decoded; it must decode the same.
    let mut out = Vec::new();
    let d = Some(pdu.data).filter(|d| !d.is_empty());
    match pdu.header {
        Header::IcReq(r) => r.encode(&mut out),
        Header::IcResp(r) => r.encode(&mut out),
        Header::TermReq { fes, fei } => encode_term_req(
            &mut out,
            pdu.ch.pdu_type == pdu_type::C2H_TERM_REQ,
            fes,
            fei,
            pdu.data,
        ),
        Header::CapsuleCmd(sqe) => {
            assert_eq!(Sqe::decode(&sqe.encode()), sqe);
            encode_capsule_cmd(&mut out, &sqe, d, digests, 4)
        }
        Header::CapsuleResp(cqe) => {
            assert_eq!(Cqe::decode(&cqe.encode()), cqe);
            encode_capsule_resp(&mut out, &cqe, digests)
        }
        Header::H2CData(dh) | Header::C2HData(dh) => {
            let c2h = matches!(pdu.header, Header::C2HData(_));
            dh.encode(&mut out, c2h, 0, pdu.data, digests, 8)
        }
        Header::R2t(r) => r.encode(&mut out, digests),
    }
    let again = parse_pdu(&out, digests, u32::MAX)
        .expect("a re-encoded PDU parses")
        .expect("and is whole");
    assert_eq!(
        (again.header, again.data, again.len),
        (pdu.header, pdu.data, out.len())
    );
    assert!(again.data_digest_ok);
}

fn check_fatal(e: &FatalError) {
    assert!(
        (fes::INVALID_HEADER_FIELD..=fes::UNSUPPORTED_PARAMETER).contains(&e.fes),
        "{e:?}"
    );
    // The field offset points into the PDU header (the largest is 128 bytes).
    assert!(e.fei < 128, "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// tcp_conn: one connection's receive and send paths.

/// Both directions of an in-memory non-blocking socket: reads give at most `read_max` bytes of
/// `input[read..]` (then `WouldBlock`), writes take at most `write_max` bytes into `output`.
/// (Plain slices and memcpy: byte-wise loops cost most of an execution under libFuzzer's
/// comparison tracing.)
#[derive(Default)]
pub struct MemWire {
    pub input: Vec<u8>,
    pub read: usize,
    pub output: Vec<u8>,
    pub read_max: usize,
    pub write_max: usize,
}

/// The connection's end of a [`MemWire`] (the harness keeps the other handle).
#[derive(Clone, Default)]
pub struct MemStream(pub Rc<RefCell<MemWire>>);

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut w = self.0.borrow_mut();
        let avail = w.input.len() - w.read;
        if avail == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(avail).min(w.read_max.max(1));
        let at = w.read;
        buf[..n].copy_from_slice(&w.input[at..at + n]);
        w.read += n;
        if w.read == w.input.len() {
            w.input.clear();
            w.read = 0;
        }
        Ok(n)
    }
}

impl nvmfd_transport::Transmit for MemStream {
    /// Like writev(2) with at most `write_max` bytes accepted per call (pieces cut anywhere).
    fn transmit(&mut self, pieces: &[nvmfd_transport::Piece<'_>]) -> std::io::Result<usize> {
        let mut w = self.0.borrow_mut();
        let mut budget = w.write_max.max(1);
        let mut n = 0;
        for p in pieces {
            let take = p.copy_to(&mut w.output, budget);
            n += take;
            budget -= take;
            if take < p.len() {
                break;
            }
        }
        Ok(n)
    }
}

/// The TCP harness's limits (small, so queue-depth and buffer waits are easy to reach).
pub const TCP_MAX_IO: u32 = 32 * 1024;
pub const TCP_QUEUE_DEPTH: u16 = 8;

fn digest_mode(bits: u8) -> DigestMode {
    match bits & 3 {
        0 => DigestMode::Allowed,
        1 => DigestMode::Required,
        _ => DigestMode::Off,
    }
}

/// What the harness learned of the connection from what it sent.
#[derive(Default)]
struct HostView {
    /// Negotiated digests (from ICResp) and the largest H2CData payload.
    ic: Option<IcResp>,
    parsed: usize,
    term_sent: bool,
}

impl HostView {
    /// Parse every PDU the target wrote since the last call; each must be whole and well formed.
    /// R2Ts are answered (when `answer`) by queueing H2CData for them on `to_target`.
    fn check_output(&mut self, out: &[u8], answer: bool, to_target: &mut Vec<u8>) {
        while self.parsed < out.len() {
            assert!(!self.term_sent, "the target wrote after its C2HTermReq");
            let rest = &out[self.parsed..];
            let digests = self.ic.map_or(Digests::default(), |ic| ic.digests);
            let pdu = match parse_pdu(rest, digests, u32::MAX) {
                Ok(Some(p)) => p,
                Ok(None) => panic!(
                    "the target wrote part of a PDU: {:02x?}",
                    &rest[..rest.len().min(64)]
                ),
                Err(e) => panic!(
                    "the target wrote a malformed PDU ({e}): {:02x?}",
                    &rest[..rest.len().min(64)]
                ),
            };
            assert!(pdu.data_digest_ok, "the target's data digest is wrong");
            match pdu.header {
                Header::IcResp(r) => {
                    assert!(self.ic.is_none(), "a second ICResp");
                    assert_eq!((r.pfv, r.cpda), (0, 0));
                    self.ic = Some(r);
                }
                _ if self.ic.is_none() && pdu.ch.pdu_type != pdu_type::C2H_TERM_REQ => {
                    panic!("the target sent {:?} before ICResp", pdu.header)
                }
                Header::CapsuleResp(_) => {}
                Header::C2HData(_) => {}
                Header::R2t(r) => {
                    assert!(r.length > 0 && r.length <= TCP_MAX_IO.max(8192), "{r:?}");
                    if answer {
                        let ic = self.ic.expect("checked above");
                        answer_r2t(r, ic, to_target);
                    }
                }
                Header::TermReq { .. } if pdu.ch.pdu_type == pdu_type::C2H_TERM_REQ => {
                    self.term_sent = true;
                }
                h => panic!("the target sent a host PDU: {h:?}"),
            }
            self.parsed += pdu.len;
        }
    }
}

/// The H2CData PDUs a well-behaved host sends for `r`, in pieces of at most MAXH2CDATA.
fn answer_r2t(r: R2t, ic: IcResp, to_target: &mut Vec<u8>) {
    let mut off = 0;
    while off < r.length {
        let n = (r.length - off).min(ic.maxh2cdata.max(1));
        let data = vec![(r.cccid as u8) ^ 0x5a; n as usize];
        let last = off + n == r.length;
        DataHeader {
            cccid: r.cccid,
            ttag: r.ttag,
            offset: r.offset + off,
            length: n,
        }
        .encode(
            to_target,
            false,
            if last { flags::DATA_LAST } else { 0 },
            &data,
            ic.digests,
            4,
        );
        off += n;
    }
}

/// Input: two setup bytes, then the bytes a host sends.
/// - byte 0: bits 1:0 header digest mode, 3:2 data digest mode (allowed/required/off),
///   bit 4 C2HData SUCCESS, bit 5 answer R2Ts like a host would, bit 6 complete commands only
///   every other round (buffers stay lent longer), bit 7 two large buffers instead of one;
/// - byte 1: low nibble sizes the pieces the host's bytes arrive in and the reads return, high
///   nibble the most one write takes.
///
/// Checks: the target writes only whole, well-formed controller PDUs (ICResp first, data
/// digests right, nothing after a C2HTermReq); a fatal error always sends a C2HTermReq; a
/// command handed over has a buffer for all its data.
pub fn tcp_conn(data: &[u8]) {
    let mut input = Bytes(data);
    let b0 = input.u8();
    let b1 = input.u8();
    let params = TcpParams {
        in_capsule_data_size: 8192,
        max_io_size: TCP_MAX_IO,
        max_queue_depth: TCP_QUEUE_DEPTH,
        header_digest: digest_mode(b0),
        data_digest: digest_mode(b0 >> 2),
        c2h_success: b0 & 0x10 != 0,
    };
    let answer = b0 & 0x20 != 0;
    let defer = b0 & 0x40 != 0;
    let large = if b0 & 0x80 != 0 { 2 } else { 1 };
    // Mostly large pieces: each round costs a poll, and small pieces of a large input make
    // many rounds (libFuzzer's executions per second fall with them).
    let piece = [
        usize::MAX,
        1,
        7,
        24,
        72,
        128,
        512,
        1000,
        1500,
        4096,
        8192,
        9000,
        16384,
        20_000,
        65_536,
        usize::MAX,
    ][(b1 & 15) as usize];
    let write_max = [usize::MAX, 1, 3, 8, 24, 100, 1000, 9000][(b1 >> 4 & 7) as usize];
    let pool = Rc::new(RefCell::new(BufPool::new(
        8192,
        0,
        TCP_MAX_IO as usize,
        0,
        large,
    )));
    let wire = MemStream(Rc::new(RefCell::new(MemWire {
        read_max: piece,
        write_max,
        ..Default::default()
    })));
    let mut conn = TcpConn::new(wire.clone(), params, pool);
    let mut host = HostView::default();
    let mut replies: Vec<u8> = Vec::new();
    let mut held: Vec<u16> = Vec::new();
    let mut pending = input.0;
    for round in 0..1000u32 {
        // The host's next bytes: answers to R2Ts first, then a piece of the fuzz stream.
        let (now, later) = pending.split_at(piece.min(pending.len()));
        pending = later;
        let fed = !replies.is_empty() || !now.is_empty();
        {
            let mut w = wire.0.borrow_mut();
            w.input.extend_from_slice(&replies);
            w.input.extend_from_slice(now);
        }
        replies.clear();
        let recv = conn.poll_recv();
        let received = matches!(recv, Ok(true));
        // Admission as a core would answer it for the transport's part: refused descriptors and
        // transfers past MDTS get an error, everything else has its data fetched.
        while let Some(ev) = conn.next_event() {
            let slot = match ev {
                ConnEvent::Command { slot, sqe, desc } => {
                    let refuse = |status| Response {
                        cqe: nvmfd_transport::proto::nvme::Cqe {
                            cid: sqe.cid,
                            status,
                            ..Default::default()
                        },
                        data_len: 0,
                    };
                    match desc {
                        DataDesc::Refused(status) => conn.respond(slot, refuse(status)),
                        DataDesc::None => held.push(slot),
                        DataDesc::InCapsule { len, .. } | DataDesc::Remote { len, .. }
                            if len > TCP_MAX_IO.max(8192) =>
                        {
                            conn.respond(slot, refuse(Status::INVALID_FIELD))
                        }
                        DataDesc::InCapsule { len, .. } | DataDesc::Remote { len, .. } => {
                            let dir = sqe.data_direction();
                            conn.fetch(
                                slot,
                                DataNeed {
                                    len,
                                    dir,
                                    bdev: None,
                                },
                            )
                        }
                    }
                    continue;
                }
                ConnEvent::DataReady { slot } => slot,
            };
            let cap = conn.capsule_mut(slot);
            let need = cap.data_len as usize;
            assert!(need <= TCP_MAX_IO.max(8192) as usize, "data_len {need}");
            if need > 0 {
                let room = cap.buf.as_ref().map_or(0, |b| b.capacity());
                assert!(
                    room >= need,
                    "a {need}-byte command got a {room}-byte buffer"
                );
            }
            held.push(slot);
        }
        // After a fatal error the connection is dropped once its C2HTermReq is out: nothing
        // completes on it any more.
        if (!defer || round % 2 == 1) && recv.is_ok() {
            for slot in held.drain(..) {
                let resp = respond(conn.capsule_mut(slot));
                conn.respond(slot, resp);
            }
        }
        conn.poll_send().expect("the in-memory stream never fails");
        assert!(!conn.has_unsent(), "a blocking-free stream took everything");
        let out = std::mem::take(&mut wire.0.borrow_mut().output);
        host.parsed = 0;
        host.check_output(&out, answer, &mut replies);
        match recv {
            Ok(_) => {}
            Err(ConnError::Fatal(e)) => {
                check_fatal(&e);
                assert!(host.term_sent, "fatal error {e} without a C2HTermReq");
                return;
            }
            Err(ConnError::HostTerminated { .. }) => return,
            Err(e) => panic!("unexpected connection error: {e}"),
        }
        let idle = !fed && !received && out.is_empty() && held.is_empty();
        if idle
            || (pending.is_empty()
                && replies.is_empty()
                && wire.0.borrow().input.len() == wire.0.borrow().read
                && held.is_empty())
        {
            return;
        }
    }
}

/// What the harness's "core" answers: reads return their data, everything else nothing;
/// commands whose CDW15 bit 0 is set fail.
fn respond(cap: &mut Capsule) -> Response {
    let fail = cap.sqe.cdw15 & 1 != 0;
    let data_len = match cap.sqe.data_direction() {
        Direction::ControllerToHost if !fail => cap.data_len,
        _ => 0,
    };
    Response {
        cqe: Cqe {
            cid: cap.sqe.cid,
            status: if fail {
                Status::INVALID_FIELD
            } else {
                Status::SUCCESS
            },
            ..Default::default()
        },
        data_len,
    }
}

// ---------------------------------------------------------------------------------------------
// capsule: the core's admission of commands.

const NQN_OPEN: &str = "nqn.2026-11.io.nvmfd:fuzz-open";
const NQN_LOCKED: &str = "nqn.2026-11.io.nvmfd:fuzz-locked";
const HOST_A: &str = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-0000-0000-0000-000000000001";
const HOST_B: &str = "nqn.2014-08.org.nvmexpress:uuid:bbbbbbbb-0000-0000-0000-000000000002";
/// The capsule harness's limits.
pub const CORE_MAX_IO: u32 = 32 * 1024;

/// The target the capsule harness talks to (built once: state lives in its queue pairs).
fn core_target() -> &'static Arc<Target> {
    static T: OnceLock<Arc<Target>> = OnceLock::new();
    T.get_or_init(|| {
        let yaml = format!(
            r#"
transports: {{ tcp: {{ max_queue_depth: 32, max_io_queues: 4, max_io_size: 32KiB, in_capsule_data_size: 8KiB }} }}
bdevs:
  - {{ name: ram0, malloc: {{ size: 1MiB, block_size: 4096 }} }}
  - {{ name: ram1, malloc: {{ size: 1MiB, block_size: 512 }} }}
  - {{ name: ram2, malloc: {{ size: 1MiB, block_size: 512 }} }}
subsystems:
  - nqn: {NQN_OPEN}
    namespaces: [ {{ nsid: 1, bdev: ram0 }}, {{ nsid: 5, bdev: ram1 }} ]
    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: 4420 }} ]
  - nqn: {NQN_LOCKED}
    hosts: [ {HOST_A} ]
    namespaces: [ {{ nsid: 3, bdev: ram2 }} ]
    listeners: [ {{ transport: tcp, address: "::1", port: 4421 }} ]
"#
        );
        let cfg = nvmfd_config::parse_str(&yaml, "fuzz.yaml").expect("the harness config is valid");
        let infos: Vec<BdevInfo> = [("ram0", 4096u32), ("ram1", 512), ("ram2", 512)]
            .iter()
            .map(|&(name, bs)| BdevInfo {
                name: name.into(),
                kind: "malloc",
                block_size: bs,
                num_blocks: (1 << 20) / bs as u64,
                deallocate_zeroes: true,
                volatile_cache: name == "ram1",
            })
            .collect();
        Target::new(&cfg, &infos)
    })
}

/// A capsule as the TCP transport hands it over: `data_len` bytes described by the SGL, a
/// buffer from a pool like a reactor's (room for at least `data_len`), `data` at its start.
fn make_capsule(pool: &mut BufPool, sqe: Sqe, data: &[u8], data_len: u32) -> Capsule {
    let mut buf = pool.get(data_len as usize);
    let n = data.len().min(data_len as usize);
    buf.as_mut_slice()[..n].copy_from_slice(&data[..n]);
    Capsule {
        sqe,
        buf: Some(buf),
        data_len,
        lent: None,
    }
}

fn connect_sqe(qid: u16, sqsize: u16, kato_ms: u32) -> Sqe {
    ConnectCommand {
        recfmt: 0,
        qid,
        sqsize,
        cattr: 0,
        kato_ms,
    }
    .to_sqe(1, ConnectData::SIZE as u32)
}

/// Connect `qp` as queue `qid` of `sqsize` + 1 entries (`queue`), for (subsystem, host) `who`;
/// returns the response.
fn connect(
    qp: &mut QueuePair,
    pool: &mut BufPool,
    (qid, sqsize): (u16, u16),
    cntlid: u16,
    (subnqn, hostnqn): (&str, &str),
    now: Instant,
) -> Response {
    let data = ConnectData {
        hostid: [7; 16],
        cntlid,
        subnqn: subnqn.into(),
        hostnqn: hostnqn.into(),
    };
    let mut cap = make_capsule(pool, connect_sqe(qid, sqsize, 1000), &data.encode(), 1024);
    run(qp, &mut cap, now).expect("Connect is answered at once")
}

/// Set CC.EN (with 64-byte SQEs and 16-byte CQEs) on an admin queue.
fn enable(qp: &mut QueuePair, pool: &mut BufPool, now: Instant) -> Response {
    let sqe = PropertyCommand {
        size: 4,
        offset: property::CC,
        value: 1 | (6 << 16) | (4 << 20),
    }
    .to_sqe(2, true);
    let mut cap = make_capsule(pool, sqe, &[], 0);
    run(qp, &mut cap, now).expect("Property Set is answered at once")
}

/// Admit, then execute one capsule and check the answer (carrying out an I/O as a device
/// would); None if the core holds the command. The data is described as one transport-moved
/// descriptor of the capsule's length.
fn run(qp: &mut QueuePair, cap: &mut Capsule, now: Instant) -> Option<Response> {
    let desc = match cap.data_len {
        0 => nvmfd_transport::DataDesc::None,
        len => nvmfd_transport::DataDesc::Remote {
            len,
            descriptors: 1,
        },
    };
    match qp.admit(&cap.sqe, desc) {
        nvmfd_transport::Admission::Respond(r) => {
            assert!(
                !r.cqe.status.is_success(),
                "admission answers only refusals"
            );
            return Some(r);
        }
        nvmfd_transport::Admission::Data(need) => {
            assert!(need.len <= cap.data_len, "{need:?} beyond the SGL");
        }
        nvmfd_transport::Admission::Execute => {}
    }
    let resp = match qp.execute(cap, now) {
        Outcome::Done(r) => r,
        Outcome::Held => {
            assert_eq!(
                cap.sqe.opcode,
                opcode::ADMIN_ASYNC_EVENT_REQUEST,
                "{:?}",
                cap.sqe
            );
            return None;
        }
        Outcome::Io { bdev, op } => {
            check_io(qp, cap, bdev, op);
            qp.io_done(cap, Ok(()))
        }
    };
    check_response(qp, cap, &resp);
    Some(resp)
}

/// An I/O the core hands to a block device must fit the device and the capsule's buffer.
fn check_io(qp: &QueuePair, cap: &Capsule, bdev: usize, op: Op) {
    let target = qp.target();
    let ns = target
        .subsystems
        .iter()
        .flat_map(|s| s.namespaces.iter())
        .find(|n| n.bdev == bdev)
        .expect("the I/O goes to a namespace's device");
    assert_eq!(ns.nsid, cap.sqe.nsid, "{op:?}");
    let info = &ns.info;
    let fits = |lba: u64, blocks: u32| {
        lba.checked_add(blocks as u64)
            .is_some_and(|e| e <= info.num_blocks)
    };
    let room = cap.buf.as_ref().map_or(0, |b| b.capacity()) as u64;
    match op {
        Op::Read { lba, blocks } | Op::ReadLent { lba, blocks } | Op::Write { lba, blocks, .. } => {
            assert!(
                fits(lba, blocks),
                "{op:?} outside {} blocks",
                info.num_blocks
            );
            let bytes = blocks as u64 * info.block_size as u64;
            assert!(
                bytes <= cap.data_len as u64 && bytes <= room,
                "{op:?}: {bytes} bytes, SGL {}",
                cap.data_len
            );
            assert!(
                bytes <= target.transports[0].max_io_size as u64,
                "{op:?} over MDTS"
            );
        }
        Op::WriteZeroes { lba, blocks, .. } => assert!(fits(lba, blocks), "{op:?}"),
        Op::Deallocate { ranges } => {
            assert!((1..=256).contains(&ranges), "{op:?}");
            assert!(ranges as u64 * 16 <= cap.data_len as u64, "{op:?}");
        }
        Op::Flush => {}
    }
}

fn check_response(qp: &QueuePair, cap: &Capsule, r: &Response) {
    assert_eq!(r.cqe.cid, cap.sqe.cid);
    if qp.is_connected() {
        assert_eq!(r.cqe.sqid, qp.qid());
    }
    assert!(
        r.data_len <= cap.data_len,
        "{:?} answers with {} bytes for a {}-byte SGL",
        cap.sqe,
        r.data_len,
        cap.data_len
    );
    if !r.cqe.status.is_success() {
        assert_eq!(r.data_len, 0, "a failed command sends data");
    }
}

/// Input: a mode byte, then commands.
/// - mode % 5: 0 admin queue of an open subsystem, 1 admin queue of an allow-listed one, 2
///   discovery admin queue, 3 I/O queue (after an admin queue connected and enabled), 4 nothing
///   prepared (the input's first command may be a Connect);
/// - each command: a 64-byte SQE, a byte `t` (time passes `t` × 20 ms before it), a 16-bit data
///   count `n` and `n` bytes put at the start of its buffer. Its data length is the SGL's; a
///   length the transport refuses (beyond MDTS and 8 KiB) skips the command.
///
/// Checks: responses carry the command's CID and queue ID and never more data than its SGL
/// describes (none when failing); I/Os stay inside the namespace and the buffer; only AERs are
/// held.
pub fn capsule(data: &[u8]) {
    let mut input = Bytes(data);
    let target = core_target();
    let mut pool = BufPool::new(8192, 0, CORE_MAX_IO as usize, 0, 64);
    let mut now = Instant::now();
    let mode = input.u8() % 5;
    let mut admin = QueuePair::new(target.clone(), target.transports[0]);
    let mut qp = QueuePair::new(target.clone(), target.transports[0]);
    match mode {
        0 => {
            connect(&mut qp, &mut pool, (0, 31), 0xffff, (NQN_OPEN, HOST_B), now);
            enable(&mut qp, &mut pool, now);
        }
        1 => {
            connect(
                &mut qp,
                &mut pool,
                (0, 31),
                0xffff,
                (NQN_LOCKED, HOST_A),
                now,
            );
            enable(&mut qp, &mut pool, now);
        }
        2 => {
            connect(
                &mut qp,
                &mut pool,
                (0, 31),
                0xffff,
                (DISCOVERY_NQN, HOST_B),
                now,
            );
            enable(&mut qp, &mut pool, now);
        }
        3 => {
            let r = connect(
                &mut admin,
                &mut pool,
                (0, 31),
                0xffff,
                (NQN_OPEN, HOST_A),
                now,
            );
            assert!(r.cqe.status.is_success());
            enable(&mut admin, &mut pool, now);
            let qid = 1 + input.u8() as u16 % 4;
            let sqsize = 1 + input.u8() as u16 % 31;
            let r = connect(
                &mut qp,
                &mut pool,
                (qid, sqsize),
                r.cqe.dw0 as u16,
                (NQN_OPEN, HOST_A),
                now,
            );
            assert!(r.cqe.status.is_success(), "{r:?}");
        }
        _ => {}
    }
    let limit = CORE_MAX_IO.max(8192);
    while input.0.len() >= Sqe::SIZE {
        let sqe = Sqe::decode(input.take(Sqe::SIZE).try_into().expect("64 bytes"));
        now += Duration::from_millis(20 * input.u8() as u64);
        let n = input.u16() as usize;
        let bytes = input.take(n);
        let data_len = sqe.dptr.length;
        if data_len > limit {
            continue;
        }
        let mut cap = make_capsule(&mut pool, sqe, bytes, data_len);
        run(&mut qp, &mut cap, now);
        if let Some(b) = cap.buf.take() {
            pool.put(b);
        }
        if qp.poll_timers(now).is_some() || admin.poll_timers(now).is_some() {
            // The reactor closes the connection.
            qp.teardown();
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// discovery: the discovery log page.

const HOSTS: [&str; 4] = [
    HOST_A,
    HOST_B,
    "nqn.2014-08.org.nvmexpress:uuid:cccccccc",
    "",
];
const ADDRS: [IpAddr; 6] = [
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
];
/// Addresses a discovery connection may have arrived on: listed ones, an IPv4-mapped IPv6 one
/// (a dual-stack socket's view of an IPv4 peer) and one no listener names.
const LOCALS: [IpAddr; 6] = [
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x020a)),
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
];
/// Characters an NQN's tail is made of.
const NQN_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789.-:";

/// Input: subsystems (count, then for each: a flag byte (allow any host, how many hosts and
/// listeners), its NQN's tail, hosts as indexes into a fixed set, listeners as address index and
/// port), the host asking, the queue depth, the address the connection arrived on (none, or an
/// address index and a port, often a listener's), then a Get Log Page window (offset, dword
/// count).
///
/// Checks: the page starts with the entry of the discovery subsystem itself at the listener the
/// connection arrived on (SUBTYPE 3), when one matches, then has one entry per (subsystem the
/// host may use, listener with an address to advertise) with exactly that subsystem's NQN,
/// address (a wildcard listener's is the arrival address, of the listener's family), port and
/// port ID; a window of it comes back byte for byte (zero padded past the end) or fails with
/// the status the spec gives.
pub fn discovery(data: &[u8]) {
    let mut input = Bytes(data);
    let nsubs = input.u8() % 5;
    let mut cfg = Config::default();
    for i in 0..nsubs {
        let f = input.u8();
        let tail_len = input.u8() as usize % 200;
        let tail: String = input
            .take(tail_len)
            .iter()
            .map(|&c| NQN_CHARS[c as usize % NQN_CHARS.len()] as char)
            .collect();
        let hosts = (0..(f >> 1 & 3))
            .map(|_| HOSTS[input.u8() as usize % 3].to_string())
            .collect();
        let listeners = (0..(f >> 3 & 3) + (f >> 5 & 1))
            .map(|_| ListenerConfig {
                transport: TransportKind::Tcp,
                address: ADDRS[input.u8() as usize % ADDRS.len()],
                port: input.u16(),
            })
            .collect();
        cfg.subsystems.push(SubsystemConfig {
            nqn: format!("nqn.2026-11.io.fuzz:{i}{tail}"),
            serial: format!("S{i}"),
            serial_is_default: false,
            cntlid_min: 1,
            cntlid_max: 0xffef,
            max_namespaces: nvmfd_config::MAX_NSID,
            p2p: Default::default(),
            model: "nvmfd".into(),
            allow_any_host: f & 1 != 0,
            hosts,
            namespaces: Vec::new(),
            listeners,
        });
    }
    let host = HOSTS[input.u8() as usize % HOSTS.len()];
    cfg.transports.tcp = TcpTransport {
        max_queue_depth: 2 + input.u8() as u16,
        ..Default::default()
    };
    let ports: Vec<u16> = cfg
        .subsystems
        .iter()
        .flat_map(|s| s.listeners.iter().map(|l| l.port))
        .collect();
    let local = match input.u8() {
        k if k % 4 == 0 => None,
        k => {
            let ip = LOCALS[(k / 4) as usize % LOCALS.len()];
            let port = match (input.u8(), ports.len()) {
                (p, n) if n > 0 && p & 3 != 0 => ports[p as usize % n],
                _ => input.u16(),
            };
            Some(SocketAddr::new(ip, port))
        }
    };
    let target = Target::new(&cfg, &[]);
    let mut pool = BufPool::new(8192, 0, 64 * 1024, 0, 64);
    let now = Instant::now();
    let mut qp = QueuePair::new(target.clone(), target.transports[0]);
    if let Some(l) = local {
        qp.set_local_addr(l);
    }
    let sqsize = 31.min(cfg.transports.tcp.max_queue_depth - 1);
    let r = connect(
        &mut qp,
        &mut pool,
        (0, sqsize),
        0xffff,
        (DISCOVERY_NQN, host),
        now,
    );
    assert!(r.cqe.status.is_success(), "{r:?}");
    assert!(enable(&mut qp, &mut pool, now).cqe.status.is_success());

    // What the page must hold.
    let mut all_listeners: Vec<&ListenerConfig> = Vec::new();
    for l in cfg.subsystems.iter().flat_map(|s| s.listeners.iter()) {
        if !all_listeners.contains(&l) {
            all_listeners.push(l);
        }
    }
    // The model of what a host can be told (NVMe-oF 1.1, Discovery Log Page Entry: TRADDR is an
    // address the host can connect to, so a wildcard listener is advertised at the address this
    // connection arrived on, and only if that address is of the listener's family; `::` takes
    // IPv4 too, as a dual-stack socket does).
    let here = local.map(|a| match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a.ip(), IpAddr::V4),
        v4 => v4,
    });
    let advertised = |l: &ListenerConfig| -> Option<IpAddr> {
        if !l.address.is_unspecified() {
            return Some(l.address);
        }
        let here = here?;
        (l.address.is_ipv6() || here.is_ipv4()).then_some(here)
    };
    let mut expected: Vec<(&str, IpAddr, &ListenerConfig, u8)> = Vec::new();
    if let (Some(a), Some(ip)) = (local, here) {
        let arrived = all_listeners.iter().find(|l| {
            l.port == a.port()
                && (l.address == ip || l.address.is_unspecified() && advertised(l).is_some())
        });
        if let Some(l) = arrived {
            expected.push((DISCOVERY_NQN, ip, l, subtype::CURRENT_DISCOVERY));
        }
    }
    for s in cfg
        .subsystems
        .iter()
        .filter(|s| s.allow_any_host || s.hosts.iter().any(|h| h == host))
    {
        for l in &s.listeners {
            if let Some(ip) = advertised(l) {
                expected.push((&s.nqn, ip, l, subtype::NVME));
            }
        }
    }
    let size = DiscoveryLogEntry::HEADER_SIZE + expected.len() * DiscoveryLogEntry::SIZE;
    let (status, page) = get_log(&mut qp, &mut pool, 0, size as u32, size as u32, now);
    assert_eq!(status, Status::SUCCESS);
    let (genctr, numrec) = decode_discovery_header(&page).expect("a header");
    assert_eq!(numrec, expected.len() as u64);
    assert_eq!(genctr, target.discovery_genctr());
    for (i, &(nqn, ip, l, sub)) in expected.iter().enumerate() {
        let at = DiscoveryLogEntry::HEADER_SIZE + i * DiscoveryLogEntry::SIZE;
        let e = DiscoveryLogEntry::decode(page[at..at + 1024].try_into().expect("1024 bytes"));
        assert_eq!(e.subnqn, nqn);
        assert_eq!(e.traddr, ip.to_string());
        assert_eq!(e.trsvcid, l.port.to_string());
        assert_eq!(e.adrfam, if ip.is_ipv4() { 1 } else { 2 });
        assert_eq!((e.trtype, e.subtype, e.cntlid), (trtype::TCP, sub, 0xffff));
        assert_eq!(e.asqsz, target.transports[0].max_admin_queue_entries());
        let portid = all_listeners.iter().position(|x| *x == l).expect("listed") + 1;
        assert_eq!(e.portid as usize, portid);
    }

    // A window of it: offset and dword count from the input, the SGL sometimes too short.
    let offset = input.u16() as u64 * if input.u8() & 1 != 0 { 4 } else { 1 };
    let numd = 1 + input.u16() as u32 % 8192;
    let len = numd * 4;
    let sgl = if input.u8() & 3 == 0 { len - 1 } else { len };
    let (status, window) = get_log(&mut qp, &mut pool, offset, len, sgl, now);
    // Get Log Page: an offset that is not dword aligned or past the end of the page is an
    // Invalid Field; a buffer too small for NUMD dwords a Data SGL Length Invalid.
    let want = if sgl < len {
        Status::DATA_SGL_LENGTH_INVALID
    } else if !offset.is_multiple_of(4) || offset > page.len() as u64 {
        Status::INVALID_FIELD
    } else {
        Status::SUCCESS
    };
    assert_eq!(
        (status.sct, status.sc),
        (want.sct, want.sc),
        "offset {offset} len {len} sgl {sgl} page {}",
        page.len()
    );
    if status.is_success() {
        assert_eq!(window.len(), len as usize);
        let from = (offset as usize).min(page.len());
        let n = (page.len() - from).min(len as usize);
        assert_eq!(&window[..n], &page[from..from + n]);
        // (An OR over the bytes, not a comparison per byte: libFuzzer traces every comparison.)
        let padding = window[n..].iter().fold(0u8, |a, &b| a | b);
        assert_eq!(padding, 0, "padding past the page");
    }
}

/// Get Log Page (discovery) for `len` bytes at `offset`, with an SGL of `sgl` bytes.
fn get_log(
    qp: &mut QueuePair,
    pool: &mut BufPool,
    offset: u64,
    len: u32,
    sgl: u32,
    now: Instant,
) -> (Status, Vec<u8>) {
    let numd = len / 4 - 1;
    let sqe = Sqe {
        opcode: opcode::ADMIN_GET_LOG_PAGE,
        cid: 9,
        flags: 0x40,
        cdw10: log_page::DISCOVERY as u32 | (numd & 0xffff) << 16,
        cdw11: numd >> 16,
        cdw12: offset as u32,
        cdw13: (offset >> 32) as u32,
        dptr: SglDescriptor::transport(sgl),
        ..Default::default()
    };
    let mut cap = make_capsule(pool, sqe, &[], sgl);
    let r = run(qp, &mut cap, now).expect("answered at once");
    let data = cap.buf.as_ref().expect("a buffer").as_slice()[..r.data_len as usize].to_vec();
    (r.cqe.status, data)
}

// ---------------------------------------------------------------------------------------------
// yaml: the configuration loader.

/// Input: YAML text (invalid UTF-8 is replaced, as a file read would fail anyway).
///
/// Checks: an accepted configuration is consistent (namespaces name existing bdevs, NSIDs and
/// NQNs are unique, limits are in range) and builds a target; a rejected one has diagnostics
/// naming the file, with 1-based positions inside the text.
pub fn yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match nvmfd_config::parse_str(&text, "fuzz.yaml") {
        Ok(cfg) => {
            let tcp = &cfg.transports.tcp;
            assert!(tcp.in_capsule_data_size <= tcp.max_io_size, "{tcp:?}");
            assert!(tcp.max_io_size.is_power_of_two(), "{tcp:?}");
            assert!(
                tcp.max_queue_depth >= 2 && tcp.max_io_queues >= 1,
                "{tcp:?}"
            );
            assert!(!cfg.reactors.cores.is_empty());
            for (i, s) in cfg.subsystems.iter().enumerate() {
                assert!(s.nqn.len() <= 223 && s.nqn != DISCOVERY_NQN, "{:?}", s.nqn);
                assert!(
                    cfg.subsystems[..i].iter().all(|o| o.nqn != s.nqn),
                    "duplicate NQN"
                );
                for (j, ns) in s.namespaces.iter().enumerate() {
                    assert!(ns.nsid >= 1 && ns.nsid != u32::MAX, "nsid {}", ns.nsid);
                    assert!(
                        s.namespaces[..j].iter().all(|o| o.nsid != ns.nsid),
                        "duplicate NSID"
                    );
                    assert!(
                        cfg.bdev(&ns.bdev).is_some(),
                        "namespace names a missing bdev"
                    );
                }
            }
            let infos: Vec<BdevInfo> = cfg
                .bdevs
                .iter()
                .map(|b| BdevInfo {
                    name: b.name.clone(),
                    kind: "malloc",
                    block_size: 512,
                    num_blocks: 8,
                    deallocate_zeroes: true,
                    volatile_cache: false,
                })
                .collect();
            let t = Target::new(&cfg, &infos);
            assert_eq!(t.subsystems.len(), cfg.subsystems.len());
        }
        Err(e) => {
            let d = e.diagnostics();
            assert!(!d.is_empty(), "an error without a diagnostic: {e}");
            // YAML's line breaks: LF, CR and CRLF (YAML 1.2 §5.4); a lone CR starts a line too
            // (`str::lines` would not count it: an early fuzz finding in this harness).
            let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1;
            for d in d {
                assert_eq!(d.file, "fuzz.yaml");
                assert!(
                    d.line >= 1 && d.line <= lines,
                    "{d} (text has {lines} lines)"
                );
                assert!(d.column >= 1, "{d}");
                assert!(!d.message.is_empty(), "{d}");
            }
        }
    }
}
