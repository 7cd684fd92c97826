//! End-to-end tests of the host library against a tiny in-test fake controller on a loopback
//! socket.
//!
//! The fake stands in ONLY because the real target lives in another crate (target/), which is
//! tested with this host library in target/tests. It speaks just enough NVMe/TCP for the host
//! paths: ICReq/ICResp, Connect (cntlid 7), Property Get/Set, Identify, Keep Alive, Read (several
//! C2HData PDUs, optionally ending with DATA_SUCCESS) and Write (in-capsule, or R2T/H2CData),
//! plus injected faults (bad digests, C2HTermReq, stray PDUs, silence). It checks the PDUs the
//! host sends and records what it saw so the tests can assert on it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nvmfd_bench::host::{read_sqe, HostError};
use nvmfd_bench::{pattern, Host, HostOptions, RawConnection, RawEvent};
use nvmfd_transport::proto::fabrics::{fctype, ConnectCommand, ConnectData, PropertyCommand};
use nvmfd_transport::proto::nvme::{cns, opcode, property, Cqe, SglDescriptor, Sqe};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::proto::tcp::{
    encode_capsule_resp, encode_term_req, fes, flags, parse_pdu, pdu_type, DataHeader, Digests,
    Header, IcResp, R2t,
};

const CNTLID: u16 = 7;
const BS: usize = 512;
const NS_BLOCKS: u64 = 2048;
const SUBNQN: &str = "nqn.2026-01.io.nvmfd:fake";

/// Something the fake does wrong on purpose, on the first Read of an I/O queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Flip a byte of the first C2HData's data digest.
    BadDataDigest,
    /// Flip a byte of the CapsuleResp's header digest.
    BadHeaderDigest,
    /// Answer with a C2HTermReq instead of data.
    TermReq,
    /// Answer the read with an R2T.
    R2tForRead,
    /// Never answer.
    Silence,
    /// Send the C2HData at a wrong offset.
    BadOffset,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    maxh2cdata: u32,
    /// In-capsule data size advertised through IOCCSZ.
    in_capsule: u32,
    /// Largest R2T the fake issues (writes bigger than this take several R2Ts).
    r2t_max: u32,
    /// Data bytes per C2HData PDU.
    c2h_chunk: usize,
    /// End reads with DATA_SUCCESS instead of a CapsuleResp.
    data_success: bool,
    /// Grant no digests, whatever is asked.
    refuse_digests: bool,
    fault: Fault,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            maxh2cdata: 4096,
            in_capsule: 4096,
            r2t_max: 8192,
            c2h_chunk: 1536,
            data_success: false,
            refuse_digests: false,
            fault: Fault::None,
        }
    }
}

/// What the fake observed.
#[derive(Debug, Default)]
struct Log {
    /// (qid, sqsize, kato, cntlid, hostnqn, subnqn)
    connects: Vec<(u16, u16, u32, u16, String, String)>,
    cc: u32,
    /// (ttag, offset, length, last) of every H2CData.
    h2c: Vec<(u16, u32, u32, bool)>,
    in_capsule_writes: usize,
    r2t_writes: usize,
    /// H2CTermReqs received: (fes, fei).
    term_reqs: Vec<(u16, u32)>,
    /// Protocol violations by the host that the fake detected.
    violations: Vec<String>,
    icreq_digests: Vec<Digests>,
}

struct Fake {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    shared: Arc<Shared>,
}

struct Shared {
    cfg: Config,
    log: Arc<Mutex<Log>>,
    disk: Mutex<Vec<u8>>,
    fault_armed: Mutex<bool>,
    enabled: Mutex<(bool, bool)>,
}

fn start(cfg: Config) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let shared = Arc::new(Shared {
        cfg,
        log: log.clone(),
        disk: Mutex::new(vec![0u8; NS_BLOCKS as usize * BS]),
        fault_armed: Mutex::new(cfg.fault != Fault::None),
        enabled: Mutex::new((false, false)),
    });
    let for_fake = shared.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut c = FakeConn {
                    stream,
                    buf: Vec::new(),
                    digests: Digests::default(),
                    qid: 0,
                    shared,
                    pending: Default::default(),
                };
                c.serve();
            });
        }
    });
    Fake {
        addr,
        log,
        shared: for_fake,
    }
}

struct FakeConn {
    stream: TcpStream,
    buf: Vec<u8>,
    digests: Digests,
    qid: u16,
    shared: Arc<Shared>,
    /// Capsules that arrived while an R2T was being answered, handled afterwards.
    pending: std::collections::VecDeque<In>,
}

struct In {
    header: Header,
    flags: u8,
    data: Vec<u8>,
    raw: Vec<u8>,
}

impl FakeConn {
    fn violation(&self, what: String) {
        self.shared.log.lock().unwrap().violations.push(what);
    }

    /// The next PDU from the host; None when it closed or sent garbage (then a C2HTermReq is sent).
    fn recv(&mut self) -> Option<In> {
        loop {
            match parse_pdu(&self.buf, self.digests, 1 << 20) {
                Ok(Some(p)) => {
                    if !p.data_digest_ok {
                        self.violation("bad data digest from host".into());
                    }
                    let r = In {
                        header: p.header,
                        flags: p.ch.flags,
                        data: p.data.to_vec(),
                        raw: self.buf[..p.len].to_vec(),
                    };
                    let n = p.len;
                    self.buf.drain(..n);
                    return Some(r);
                }
                Ok(None) => {}
                Err(e) => {
                    let mut out = Vec::new();
                    encode_term_req(
                        &mut out,
                        true,
                        e.fes,
                        e.fei,
                        &self.buf[..self.buf.len().min(24)],
                    );
                    let _ = self.stream.write_all(&out);
                    return None;
                }
            }
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    fn send(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b);
    }

    fn respond(&mut self, sqe: &Sqe, status: Status, dw0: u32, dw1: u32) {
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd: 0,
            sqid: self.qid,
            cid: sqe.cid,
            status,
        };
        let mut out = Vec::new();
        encode_capsule_resp(&mut out, &cqe, self.digests);
        self.send(&out);
    }

    fn serve(&mut self) {
        let cfg = self.shared.cfg;
        let Some(ic) = self.recv() else { return };
        let Header::IcReq(req) = ic.header else {
            self.violation("first PDU is not an ICReq".into());
            return;
        };
        self.shared
            .log
            .lock()
            .unwrap()
            .icreq_digests
            .push(req.digests);
        let granted = if cfg.refuse_digests {
            Digests::default()
        } else {
            req.digests
        };
        let mut out = Vec::new();
        IcResp {
            pfv: 0,
            cpda: 0,
            digests: granted,
            maxh2cdata: cfg.maxh2cdata,
        }
        .encode(&mut out);
        self.send(&out);
        self.digests = granted;
        while let Some(pdu) = self.pending.pop_front().or_else(|| self.recv()) {
            match pdu.header {
                Header::CapsuleCmd(sqe) => {
                    if !self.command(sqe, pdu.data) {
                        return;
                    }
                }
                Header::TermReq { fes, fei } => {
                    self.shared.log.lock().unwrap().term_reqs.push((fes, fei));
                    return;
                }
                other => self.violation(format!("unexpected PDU {other:?} ({:?})", &pdu.raw[..8])),
            }
        }
    }

    /// Handle one command; false to drop the connection.
    fn command(&mut self, sqe: Sqe, data: Vec<u8>) -> bool {
        if sqe.psdt() != 1 {
            self.violation(format!("command {:#x} without PSDT=SGL", sqe.opcode));
        }
        if sqe.opcode == opcode::FABRICS {
            self.fabrics(sqe, data);
            return true;
        }
        if self.qid == 0 {
            self.admin(sqe);
            return true;
        }
        match sqe.opcode {
            opcode::NVM_READ => return self.read(sqe),
            opcode::NVM_WRITE => self.write(sqe, data),
            opcode::NVM_FLUSH => self.respond(&sqe, Status::SUCCESS, 0, 0),
            _ => self.respond(&sqe, Status::INVALID_OPCODE, 0, 0),
        }
        true
    }

    fn fabrics(&mut self, sqe: Sqe, data: Vec<u8>) {
        match sqe.fctype() {
            fctype::CONNECT => {
                let c = ConnectCommand::from_sqe(&sqe);
                if sqe.dptr != SglDescriptor::in_capsule(0, 1024) || data.len() != 1024 {
                    self.violation("Connect data not in-capsule".into());
                }
                let d = ConnectData::decode(data[..1024].try_into().unwrap());
                self.shared.log.lock().unwrap().connects.push((
                    c.qid,
                    c.sqsize,
                    c.kato_ms,
                    d.cntlid,
                    d.hostnqn.clone(),
                    d.subnqn.clone(),
                ));
                self.qid = c.qid;
                let want = if c.qid == 0 { 0xffff } else { CNTLID };
                if d.cntlid != want || d.subnqn != SUBNQN {
                    self.respond(&sqe, Status::CONNECT_INVALID_PARAMETERS, 0, 0);
                } else {
                    self.respond(&sqe, Status::SUCCESS, CNTLID as u32, 0);
                }
            }
            fctype::PROPERTY_GET => {
                let p = PropertyCommand::from_sqe(&sqe);
                let (en, shn) = *self.shared.enabled.lock().unwrap();
                let v: u64 = match p.offset {
                    // MQES 127, CQR, TO 10 (5 s), CSS NVM.
                    property::CAP => 127 | (1 << 16) | (10 << 24) | (1 << 37),
                    property::VS => 0x0002_0000,
                    property::CC => self.shared.log.lock().unwrap().cc as u64,
                    property::CSTS => en as u64 | if shn { 2 << 2 } else { 0 },
                    _ => 0,
                };
                self.respond(&sqe, Status::SUCCESS, v as u32, (v >> 32) as u32);
            }
            fctype::PROPERTY_SET => {
                let p = PropertyCommand::from_sqe(&sqe);
                if p.offset == property::CC {
                    self.shared.log.lock().unwrap().cc = p.value as u32;
                    *self.shared.enabled.lock().unwrap() =
                        (p.value & 1 == 1, (p.value >> 14) & 3 == 1);
                }
                self.respond(&sqe, Status::SUCCESS, 0, 0);
            }
            _ => self.respond(&sqe, Status::INVALID_OPCODE, 0, 0),
        }
    }

    fn send_data(&mut self, sqe: &Sqe, data: &[u8], last_flags: u8) {
        let mut out = Vec::new();
        let chunk = self.shared.cfg.c2h_chunk;
        let n = data.len().div_ceil(chunk);
        for (i, piece) in data.chunks(chunk).enumerate() {
            let dh = DataHeader {
                cccid: sqe.cid,
                ttag: 0,
                offset: (i * chunk) as u32,
                length: piece.len() as u32,
            };
            let fl = if i + 1 == n {
                flags::DATA_LAST | last_flags
            } else {
                0
            };
            dh.encode(&mut out, true, fl, piece, self.digests, 4);
        }
        self.send(&out);
    }

    fn admin(&mut self, sqe: Sqe) {
        match sqe.opcode {
            opcode::ADMIN_IDENTIFY => {
                let mut id = vec![0u8; 4096];
                match sqe.cdw10 as u8 {
                    cns::CONTROLLER => {
                        id[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                        id[4..8].copy_from_slice(b"SN01");
                        id[24..28].copy_from_slice(b"fake");
                        id[78..80].copy_from_slice(&CNTLID.to_le_bytes());
                        id[516..520].copy_from_slice(&1u32.to_le_bytes());
                        id[768..768 + SUBNQN.len()].copy_from_slice(SUBNQN.as_bytes());
                        let ioccsz = (self.shared.cfg.in_capsule + 64) / 16;
                        id[1792..1796].copy_from_slice(&ioccsz.to_le_bytes());
                        id[1796..1800].copy_from_slice(&1u32.to_le_bytes());
                    }
                    cns::NAMESPACE if sqe.nsid == 1 => {
                        id[0..8].copy_from_slice(&NS_BLOCKS.to_le_bytes());
                        id[8..16].copy_from_slice(&NS_BLOCKS.to_le_bytes());
                        id[128 + 2] = 9;
                    }
                    cns::ACTIVE_NAMESPACES => id[0..4].copy_from_slice(&1u32.to_le_bytes()),
                    _ => {}
                }
                if sqe.dptr != SglDescriptor::transport(4096) {
                    self.violation(format!("Identify with data pointer {:?}", sqe.dptr));
                }
                self.send_data(&sqe, &id, 0);
                self.respond(&sqe, Status::SUCCESS, 0, 0);
            }
            opcode::ADMIN_KEEP_ALIVE => self.respond(&sqe, Status::SUCCESS, 0, 0),
            opcode::ADMIN_SET_FEATURES | opcode::ADMIN_GET_FEATURES => {
                self.respond(&sqe, Status::SUCCESS, 0x0003_0003, 0)
            }
            _ => self.respond(&sqe, Status::INVALID_OPCODE, 0, 0),
        }
    }

    fn take_fault(&self) -> Fault {
        let mut armed = self.shared.fault_armed.lock().unwrap();
        if *armed {
            *armed = false;
            self.shared.cfg.fault
        } else {
            Fault::None
        }
    }

    fn read(&mut self, sqe: Sqe) -> bool {
        let (lba, len) = (sqe.slba() as usize, sqe.nlb() as usize * BS);
        if sqe.dptr != SglDescriptor::transport(len as u32) {
            self.violation(format!("Read with data pointer {:?}", sqe.dptr));
        }
        if lba * BS + len > NS_BLOCKS as usize * BS {
            self.respond(&sqe, Status::LBA_OUT_OF_RANGE, 0, 0);
            return true;
        }
        let data = self.shared.disk.lock().unwrap()[lba * BS..lba * BS + len].to_vec();
        let success = if self.shared.cfg.data_success {
            flags::DATA_SUCCESS
        } else {
            0
        };
        match self.take_fault() {
            Fault::None => {
                self.send_data(&sqe, &data, success);
                if success == 0 {
                    self.respond(&sqe, Status::SUCCESS, 0, 0);
                }
            }
            Fault::BadDataDigest => {
                let mut out = Vec::new();
                let dh = DataHeader {
                    cccid: sqe.cid,
                    ttag: 0,
                    offset: 0,
                    length: len as u32,
                };
                dh.encode(&mut out, true, flags::DATA_LAST, &data, self.digests, 4);
                let n = out.len();
                out[n - 1] ^= 0x5a;
                self.send(&out);
                self.respond(&sqe, Status::SUCCESS, 0, 0);
            }
            Fault::BadHeaderDigest => {
                self.send_data(&sqe, &data, 0);
                let cqe = Cqe {
                    cid: sqe.cid,
                    sqid: self.qid,
                    ..Default::default()
                };
                let mut out = Vec::new();
                encode_capsule_resp(&mut out, &cqe, self.digests);
                out[24] ^= 0xff;
                self.send(&out);
            }
            Fault::TermReq => {
                let mut out = Vec::new();
                encode_term_req(&mut out, true, fes::INVALID_HEADER_FIELD, 40, &[0u8; 24]);
                self.send(&out);
                return false;
            }
            Fault::R2tForRead => {
                let mut out = Vec::new();
                R2t {
                    cccid: sqe.cid,
                    ttag: 1,
                    offset: 0,
                    length: len as u32,
                }
                .encode(&mut out, self.digests);
                self.send(&out);
            }
            Fault::BadOffset => {
                let mut out = Vec::new();
                let dh = DataHeader {
                    cccid: sqe.cid,
                    ttag: 0,
                    offset: 512,
                    length: 512,
                };
                dh.encode(&mut out, true, 0, &data[..512], self.digests, 4);
                self.send(&out);
            }
            Fault::Silence => {}
        }
        true
    }

    fn write(&mut self, sqe: Sqe, data: Vec<u8>) {
        let (lba, len) = (sqe.slba() as usize, sqe.nlb() as usize * BS);
        let d = sqe.dptr;
        let payload = if d.sgl_type() == SglDescriptor::DATA_BLOCK
            && d.sub_type() == SglDescriptor::SUBTYPE_OFFSET
        {
            if data.len() != len || d.length as usize != len {
                self.violation(format!(
                    "in-capsule write of {} bytes for {len}",
                    data.len()
                ));
            }
            if len > self.shared.cfg.in_capsule as usize {
                self.violation(format!(
                    "in-capsule write of {len} bytes above the advertised size"
                ));
            }
            self.shared.log.lock().unwrap().in_capsule_writes += 1;
            data
        } else {
            if d != SglDescriptor::transport(len as u32) || !data.is_empty() {
                self.violation(format!(
                    "R2T write with data pointer {d:?} and {} in-capsule bytes",
                    data.len()
                ));
            }
            if len <= self.shared.cfg.in_capsule as usize {
                self.violation(format!("write of {len} bytes not sent in-capsule"));
            }
            self.shared.log.lock().unwrap().r2t_writes += 1;
            let mut got = vec![0u8; len];
            let mut offset = 0u32;
            let mut ttag = 100u16;
            while (offset as usize) < len {
                let r2t_len = (len as u32 - offset).min(self.shared.cfg.r2t_max);
                let mut out = Vec::new();
                R2t {
                    cccid: sqe.cid,
                    ttag,
                    offset,
                    length: r2t_len,
                }
                .encode(&mut out, self.digests);
                self.send(&out);
                let mut next = offset;
                loop {
                    let Some(p) = self.recv() else { return };
                    if let Header::CapsuleCmd(_) = p.header {
                        // The host pipelines commands; answer them after this write.
                        self.pending.push_back(p);
                        continue;
                    }
                    let Header::H2CData(dh) = p.header else {
                        self.violation(format!("expected H2CData, got {:?}", p.header));
                        return;
                    };
                    let last = p.flags & flags::DATA_LAST != 0;
                    self.shared
                        .log
                        .lock()
                        .unwrap()
                        .h2c
                        .push((dh.ttag, dh.offset, dh.length, last));
                    if dh.ttag != ttag || dh.cccid != sqe.cid || dh.offset != next {
                        self.violation(format!("H2CData {dh:?} for R2T ttag {ttag} at {next}"));
                    }
                    if dh.length > self.shared.cfg.maxh2cdata {
                        self.violation(format!("H2CData of {} bytes above MAXH2CDATA", dh.length));
                    }
                    got[dh.offset as usize..(dh.offset + dh.length) as usize]
                        .copy_from_slice(&p.data);
                    next += dh.length;
                    if last {
                        break;
                    }
                }
                if next != offset + r2t_len {
                    self.violation(format!("R2T {offset}+{r2t_len} answered up to {next}"));
                }
                offset += r2t_len;
                ttag += 1;
            }
            got
        };
        self.shared.disk.lock().unwrap()[lba * BS..lba * BS + len].copy_from_slice(&payload);
        self.respond(&sqe, Status::SUCCESS, 0, 0);
    }
}

fn opts(digests: bool) -> HostOptions {
    let mut o = HostOptions::new(SUBNQN);
    o.header_digest = digests;
    o.data_digest = digests;
    o.io_timeout = Duration::from_secs(5);
    o
}

fn patterned(lba: u64, blocks: usize, generation: u64) -> Vec<u8> {
    let mut b = vec![0u8; blocks * BS];
    pattern::fill(&mut b, lba, BS, generation);
    b
}

fn full_session(digests: bool, data_success: bool) {
    let fake = start(Config {
        data_success,
        ..Default::default()
    });
    let o = opts(digests);
    let mut ctrl = Host::connect_admin(fake.addr, &o).unwrap();
    assert_eq!(ctrl.cntlid(), CNTLID);
    assert_eq!(ctrl.cap() & 0xffff, 127);
    assert_eq!(ctrl.vs(), 0x0002_0000);
    assert_eq!(
        ctrl.digests(),
        Digests {
            header: digests,
            data: digests
        }
    );
    assert_eq!(ctrl.icresp().maxh2cdata, 4096);

    let info = ctrl.controller_info().unwrap();
    assert_eq!(info.cntlid, CNTLID);
    assert_eq!(info.subnqn, SUBNQN);
    assert_eq!(info.in_capsule_size(), 4096);
    assert_eq!(ctrl.active_namespaces().unwrap(), vec![1]);
    let ns = ctrl.namespace_info(1).unwrap();
    assert_eq!((ns.nsze, ns.block_size), (NS_BLOCKS, 512));
    ctrl.keep_alive().unwrap();
    assert_eq!(ctrl.set_features(0x07, 0x0003_0003).unwrap(), 0x0003_0003);
    // A raw admin command with an error status comes back as a completion, not an error.
    let (cqe, _) = ctrl
        .admin_command(
            Sqe {
                opcode: 0xc1,
                ..Default::default()
            },
            None,
            0,
        )
        .unwrap();
    assert_eq!(cqe.status, Status::INVALID_OPCODE);

    let mut io = ctrl.connect_io(1, 16).unwrap();
    assert_eq!(io.in_capsule_size(), 4096);
    assert_eq!(io.maxh2cdata(), 4096);

    // 4 KiB fits in-capsule; 20 KiB needs three R2Ts (8 + 8 + 4 KiB), each answered with
    // H2CData PDUs of at most MAXH2CDATA.
    let small = patterned(0, 8, 1);
    assert_eq!(io.write(1, 0, &small, BS).unwrap(), Status::SUCCESS);
    let big = patterned(100, 40, 1);
    assert_eq!(io.write(1, 100, &big, BS).unwrap(), Status::SUCCESS);
    {
        let log = fake.log.lock().unwrap();
        assert_eq!((log.in_capsule_writes, log.r2t_writes), (1, 1));
        let sizes: Vec<u32> = log.h2c.iter().map(|h| h.2).collect();
        assert_eq!(sizes, vec![4096, 4096, 4096, 4096, 4096]);
        let lasts: Vec<bool> = log.h2c.iter().map(|h| h.3).collect();
        assert_eq!(lasts, vec![false, true, false, true, true]);
        let ttags: Vec<u16> = log.h2c.iter().map(|h| h.0).collect();
        assert_eq!(ttags, vec![100, 100, 101, 101, 102]);
    }

    // Reads come back in 1536-byte C2HData pieces.
    let (st, data) = io.read(1, 100, 40, BS).unwrap();
    assert_eq!(st, Status::SUCCESS);
    pattern::check(&data, 100, BS, 1).unwrap();
    let (st, data) = io.read(1, 0, 8, BS).unwrap();
    assert_eq!(st, Status::SUCCESS);
    assert_eq!(data, small);
    let (st, data) = io.read(1, NS_BLOCKS - 1, 2, BS).unwrap();
    assert_eq!(st, Status::LBA_OUT_OF_RANGE);
    assert!(data.is_empty());
    assert_eq!(io.flush(1).unwrap(), Status::SUCCESS);

    // Pipelined: 16 commands in flight on one socket, completions matched by CID.
    let mut cids = std::collections::HashMap::new();
    for i in 0..16u64 {
        let lba = 200 + i * 8;
        let cid = if i % 2 == 0 {
            io.submit_write(1, lba, &patterned(lba, 8, 2), BS).unwrap()
        } else {
            io.submit_write(1, lba, &patterned(lba, 16, 2), BS).unwrap()
        };
        cids.insert(cid, lba);
    }
    assert_eq!(io.outstanding(), 16);
    assert!(matches!(
        io.submit_read(1, 0, 1, BS),
        Err(HostError::QueueFull(16))
    ));
    let mut done = 0;
    while done < 16 {
        for c in io.poll_completions(1).unwrap() {
            assert!(cids.remove(&c.cid).is_some());
            assert_eq!(c.status(), Status::SUCCESS);
            done += 1;
        }
    }
    assert_eq!(io.outstanding(), 0);
    for i in 0..16u64 {
        io.submit_read(1, 200 + i * 8, 8, BS).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 16 {
        got.extend(io.poll_completions(16).unwrap());
    }
    for c in got {
        assert_eq!(c.data_success, data_success);
        assert_eq!(c.data.len(), 8 * BS);
        let (lba, _) = pattern::stamp(&c.data).unwrap();
        pattern::check(&c.data, lba, BS, 2).unwrap();
    }

    io.close();
    ctrl.disconnect().unwrap();
    let log = fake.log.lock().unwrap();
    assert!(
        log.violations.is_empty(),
        "host protocol violations: {:?}",
        log.violations
    );
    assert_eq!(log.connects.len(), 2);
    let (qid, sqsize, kato, cntlid, ref hostnqn, _) = log.connects[0];
    assert_eq!((qid, sqsize, kato, cntlid), (0, 31, 30_000, 0xffff));
    assert_eq!(hostnqn, &o.hostnqn);
    let (qid, sqsize, kato, cntlid, _, _) = log.connects[1];
    assert_eq!((qid, sqsize, kato, cntlid), (1, 15, 0, CNTLID));
    // EN=1, IOSQES=6, IOCQES=4, then SHN=01b.
    assert_eq!(log.cc, 0x0046_4001);
    assert_eq!(
        log.icreq_digests,
        vec![
            Digests {
                header: digests,
                data: digests
            };
            2
        ]
    );
}

#[test]
fn session_without_digests() {
    full_session(false, false);
}

#[test]
fn session_with_digests() {
    full_session(true, false);
}

#[test]
fn session_with_data_success_flag() {
    full_session(true, true);
}

/// Connect both queues and return the I/O queue, with `fault` armed for its first read.
fn faulty(fault: Fault, digests: bool) -> (Fake, nvmfd_bench::Controller, nvmfd_bench::IoQueue) {
    let fake = start(Config {
        fault,
        ..Default::default()
    });
    let mut o = opts(digests);
    o.io_timeout = Duration::from_millis(300);
    let mut ctrl = Host::connect_admin(fake.addr, &o).unwrap();
    let io = ctrl.connect_io(1, 4).unwrap();
    (fake, ctrl, io)
}

#[test]
fn wrong_data_digest_is_detected_and_only_fails_that_command() {
    let (fake, _ctrl, mut io) = faulty(Fault::BadDataDigest, true);
    match io.read(1, 0, 8, BS) {
        Err(HostError::DataDigest { pdu_type: t, .. }) => assert_eq!(t, pdu_type::C2H_DATA),
        other => panic!("expected a data digest error, got {other:?}"),
    }
    // The connection goes on.
    let (st, data) = io.read(1, 0, 8, BS).unwrap();
    assert_eq!((st, data.len()), (Status::SUCCESS, 8 * BS));
    assert!(fake.log.lock().unwrap().term_reqs.is_empty());
}

#[test]
fn wrong_header_digest_is_fatal_and_reported_to_the_target() {
    let (fake, _ctrl, mut io) = faulty(Fault::BadHeaderDigest, true);
    match io.read(1, 0, 8, BS) {
        Err(HostError::HeaderDigest { pdu_type: t }) => assert_eq!(t, pdu_type::CAPSULE_RESP),
        other => panic!("expected a header digest error, got {other:?}"),
    }
    assert!(matches!(
        io.read(1, 0, 8, BS),
        Err(HostError::ConnectionDead(_))
    ));
    // The host told the target with an H2CTermReq before closing.
    for _ in 0..100 {
        if !fake.log.lock().unwrap().term_reqs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        fake.log.lock().unwrap().term_reqs,
        vec![(fes::HEADER_DIGEST_ERROR, 0)]
    );
}

#[test]
fn c2h_term_req_becomes_a_typed_error() {
    let (_fake, _ctrl, mut io) = faulty(Fault::TermReq, false);
    match io.read(1, 0, 1, BS) {
        Err(HostError::TerminatedByTarget { fes: f, fei }) => {
            assert_eq!((f, fei), (fes::INVALID_HEADER_FIELD, 40))
        }
        other => panic!("expected TerminatedByTarget, got {other:?}"),
    }
}

#[test]
fn r2t_for_a_read_is_a_protocol_error() {
    let (fake, _ctrl, mut io) = faulty(Fault::R2tForRead, false);
    match io.read(1, 0, 1, BS) {
        Err(HostError::Protocol(msg)) => assert!(msg.contains("R2T"), "{msg}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    drop(fake);
}

#[test]
fn c2h_data_at_a_wrong_offset_is_a_protocol_error() {
    let (_fake, _ctrl, mut io) = faulty(Fault::BadOffset, false);
    match io.read(1, 0, 2, BS) {
        Err(HostError::Protocol(msg)) => assert!(msg.contains("offset 512"), "{msg}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn silence_times_out_without_killing_the_queue() {
    let (_fake, _ctrl, mut io) = faulty(Fault::Silence, false);
    let err = io.read(1, 0, 1, BS).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The stuck command still holds its CID; others work.
    assert_eq!(io.outstanding(), 1);
    assert_eq!(io.flush(1).unwrap(), Status::SUCCESS);
}

#[test]
fn refused_digests_fail_the_connection_setup() {
    let fake = start(Config {
        refuse_digests: true,
        ..Default::default()
    });
    match Host::connect_admin(fake.addr, &opts(true)) {
        Err(HostError::Negotiation(msg)) => assert!(msg.contains("digests"), "{msg}"),
        Err(e) => panic!("expected a negotiation error, got {e}"),
        Ok(_) => panic!("expected a negotiation error, got a controller"),
    }
}

#[test]
fn connect_rejection_carries_the_status() {
    let fake = start(Config::default());
    let mut o = opts(false);
    o.subnqn = "nqn.2026-01.io.nvmfd:other".into();
    let err = Host::connect_admin(fake.addr, &o)
        .err()
        .expect("connect must fail");
    assert_eq!(err.status(), Some(Status::CONNECT_INVALID_PARAMETERS));
    // An I/O queue with a wrong controller ID is rejected too.
    let err = Host::connect_io(fake.addr, &opts(false), 99, 1, 4)
        .err()
        .expect("connect must fail");
    assert_eq!(err.status(), Some(Status::CONNECT_INVALID_PARAMETERS));
}

#[test]
fn raw_connection_sees_term_req_and_close() {
    let fake = start(Config::default());
    let (mut raw, resp) =
        RawConnection::connect_initialized(fake.addr, Digests::default(), Duration::from_secs(2))
            .unwrap();
    assert_eq!(resp.maxh2cdata, 4096);
    // Nothing arrives before the host sends something.
    assert!(matches!(
        raw.read_event(Duration::from_millis(50)).unwrap(),
        RawEvent::Timeout
    ));
    // A CapsuleCmd header with the wrong HLEN.
    let mut bad = vec![pdu_type::CAPSULE_CMD, 0, 30, 0];
    bad.extend_from_slice(&72u32.to_le_bytes());
    bad.resize(72, 0);
    raw.send_raw(&bad).unwrap();
    let pdu = raw.read_pdu(Duration::from_secs(2)).unwrap();
    assert_eq!(
        pdu.header,
        Header::TermReq {
            fes: fes::INVALID_HEADER_FIELD,
            fei: 2
        }
    );
    assert_eq!(pdu.ch.pdu_type, pdu_type::C2H_TERM_REQ);
    assert_eq!(pdu.bytes.len(), pdu.ch.plen as usize);
    assert!(raw.wait_closed(Duration::from_secs(2)).unwrap().is_empty());

    // A well-formed capsule through the raw connection gets a well-formed answer.
    let (mut raw, _) =
        RawConnection::connect_initialized(fake.addr, Digests::default(), Duration::from_secs(2))
            .unwrap();
    let mut sqe = read_sqe(1, 0, 1);
    sqe.flags = 0x40;
    sqe.dptr = SglDescriptor::transport(512);
    raw.send_capsule(&sqe, None).unwrap();
    let pdu = raw.read_pdu(Duration::from_secs(2)).unwrap();
    assert!(
        matches!(pdu.header, Header::CapsuleResp(_)),
        "{:?}",
        pdu.header
    );
}

#[test]
fn io_queue_can_become_raw() {
    let fake = start(Config::default());
    let mut ctrl = Host::connect_admin(fake.addr, &opts(true)).unwrap();
    let io = ctrl.connect_io(1, 4).unwrap();
    let mut raw = io.into_raw();
    assert_eq!(
        raw.digests(),
        Digests {
            header: true,
            data: true
        }
    );
    let mut sqe = Sqe {
        opcode: opcode::NVM_FLUSH,
        nsid: 1,
        cid: 3,
        flags: 0x40,
        ..Default::default()
    };
    sqe.dptr = SglDescriptor::transport(0);
    raw.send_capsule(&sqe, None).unwrap();
    match raw.read_pdu(Duration::from_secs(2)).unwrap().header {
        Header::CapsuleResp(cqe) => assert_eq!((cqe.cid, cqe.status), (3, Status::SUCCESS)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn perf_engine_writes_verifies_and_reads() {
    use nvmfd_bench::perf::{run, PerfConfig, Workload};
    let fake = start(Config::default());
    let mut cfg = PerfConfig::new(fake.addr, SUBNQN);
    cfg.host = opts(true);
    cfg.io_size = 8192;
    cfg.queue_depth = 8;
    cfg.duration = Some(Duration::from_millis(300));
    cfg.span_bytes = Some(256 << 10);
    cfg.verify = true;
    cfg.seed = 1;
    for w in [
        Workload::RandWrite,
        Workload::Write,
        Workload::RandRead,
        Workload::Read,
    ] {
        cfg.workload = w;
        let r = run(&cfg).unwrap();
        assert!(r.ios > 0, "{w:?}: no I/O");
        assert_eq!(r.errors, 0, "{w:?}: {:?}", r.first_error);
        assert_eq!(r.verify_failure_count, 0, "{w:?}: {:?}", r.verify_failures);
        assert!(r.verified_blocks > 0, "{w:?}: nothing verified");
        let l = &r.latency_us;
        assert!(l.p50 > 0.0 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max);
        assert!(r.table().contains(w.name()));
        assert!(r.json().starts_with('{') && r.json().contains("\"iops\""));
    }
    assert!(fake.log.lock().unwrap().violations.is_empty());

    // Corruption on the target is caught: flip one byte in the middle of a stamped block, then
    // read the range back with placement checks.
    fake.shared.disk.lock().unwrap()[100 * BS + 200] ^= 1;
    cfg.workload = Workload::Read;
    let r = run(&cfg).unwrap();
    assert!(r.verify_failure_count > 0, "corruption not detected");
    assert!(
        r.verify_failures[0].contains("LBA 100"),
        "{:?}",
        r.verify_failures
    );
}
