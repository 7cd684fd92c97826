//! Connection-level tests over an in-memory stream (the daemon's tests in target/tests drive the
//! same code over real sockets; here the test controls exactly when buffers come back).

use super::*;
use crate::proto::nvme::{opcode, Sqe};
use crate::proto::tcp::{encode_capsule_cmd, pdu_type, IcReq};
use std::time::Duration;

/// Bytes the "host" wrote, read by the connection; and what the connection wrote.
///
/// Writes go by `write_plan`, as a socket with a small, busy send buffer does: each write takes at
/// most the next budget of the plan (cycling) over all the slices it is given, cutting a slice
/// anywhere, and a budget of 0 is EAGAIN. So every test drives the send queue's partial-progress
/// logic: a writev ending inside a header, inside a command's data, or between slices.
struct MemStream {
    input: VecDeque<u8>,
    output: Vec<u8>,
    write_plan: Vec<usize>,
    write_step: usize,
    /// writev calls that ended inside one of their slices, and that said EAGAIN.
    cut_writes: usize,
    would_block: usize,
}

/// Budgets that cut headers (1, 5, 13), data (4096 + 7), whole PDUs and runs of them.
const CHOPPY: &[usize] = &[1, 0, 7, 4103, 0, 13, 70_000, 5, 0, 100_000, 24, 0];

impl Default for MemStream {
    fn default() -> Self {
        MemStream::with_plan(CHOPPY)
    }
}

impl MemStream {
    fn with_plan(plan: &[usize]) -> Self {
        MemStream {
            input: VecDeque::new(),
            output: Vec::new(),
            write_plan: plan.to_vec(),
            write_step: 0,
            cut_writes: 0,
            would_block: 0,
        }
    }

    /// A stream that takes every write whole.
    fn unlimited() -> Self {
        MemStream::with_plan(&[])
    }
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.input.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        for (d, s) in buf.iter_mut().zip(self.input.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
}

impl Transmit for MemStream {
    fn transmit(&mut self, bufs: &[Piece<'_>]) -> std::io::Result<usize> {
        let mut budget = if self.write_plan.is_empty() {
            usize::MAX
        } else {
            let b = self.write_plan[self.write_step % self.write_plan.len()];
            self.write_step += 1;
            b
        };
        if budget == 0 {
            self.would_block += 1;
            return Err(ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            let take = b.copy_to(&mut self.output, budget);
            n += take;
            budget -= take;
            if take < b.len() {
                self.cut_writes += 1;
                break;
            }
        }
        Ok(n)
    }
}

const LARGE: usize = 128 * 1024;

/// The core's side of the two phases, as far as these tests need it (the core's own rules are
/// tested in nvmfd-target): a descriptor the transport refused is answered with its status, a
/// transfer past MDTS with Invalid Field, anything else has its data fetched.
trait Drive {
    /// Receive, then admit every new command (as a reactor does right after each receive), so
    /// R2Ts go out; commands with data in place stay queued for [`Drive::next_ready`].
    fn recv(&mut self) -> Result<bool, ConnError>;
    /// Admit one new command.
    fn admit(&mut self, slot: u16, sqe: Sqe, desc: DataDesc) -> Option<u16>;
    /// The next command ready to execute (admitted without data, or with its data in place).
    fn next_ready(&mut self) -> Option<u16>;
    fn complete(&mut self, slot: u16, resp: Response);
}

impl Drive for TcpConn<MemStream> {
    fn recv(&mut self) -> Result<bool, ConnError> {
        let r = self.poll_recv();
        let mut keep = VecDeque::new();
        while let Some(e) = self.inner.events.pop_front() {
            match e {
                SlotEvent::New(slot) => {
                    self.stats.commands += 1;
                    let s = &self.inner.slots[slot as usize];
                    let (sqe, desc) = (s.capsule.sqe, s.desc);
                    if self.admit(slot, sqe, desc).is_some() {
                        keep.push_back(SlotEvent::New(slot));
                    }
                }
                SlotEvent::Ready(_) => keep.push_back(e),
            }
        }
        self.inner.events = keep;
        r
    }

    fn next_ready(&mut self) -> Option<u16> {
        while let Some(ev) = self.next_event() {
            let slot = match ev {
                ConnEvent::Command { slot, sqe, desc } => self.admit(slot, sqe, desc),
                ConnEvent::DataReady { slot } => Some(slot),
            };
            if slot.is_some() {
                return slot;
            }
        }
        None
    }

    fn admit(&mut self, slot: u16, sqe: Sqe, desc: DataDesc) -> Option<u16> {
        let refuse = |status| Response {
            cqe: Cqe {
                cid: sqe.cid,
                status,
                ..Default::default()
            },
            data_len: 0,
        };
        match desc {
            DataDesc::Refused(status) => self.respond(slot, refuse(status)),
            DataDesc::None => return Some(slot),
            DataDesc::InCapsule { len, .. } | DataDesc::Remote { len, .. }
                if len as usize > LARGE =>
            {
                self.respond(slot, refuse(Status::INVALID_FIELD))
            }
            DataDesc::InCapsule { len, .. } | DataDesc::Remote { len, .. } => {
                let dir = sqe.data_direction();
                self.fetch(
                    slot,
                    DataNeed {
                        len,
                        dir,
                        bdev: None,
                    },
                )
            }
        }
        None
    }

    fn complete(&mut self, slot: u16, resp: Response) {
        self.respond(slot, resp);
    }
}

/// A connected connection whose reactor pool holds at most `large_limit` 128 KiB buffers.
fn conn(large_limit: usize) -> (TcpConn<MemStream>, Rc<RefCell<BufPool>>) {
    let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, large_limit)));
    (conn_on(&pool), pool)
}

/// A connected connection drawing buffers from `pool`.
fn conn_on(pool: &Rc<RefCell<BufPool>>) -> TcpConn<MemStream> {
    conn_with(pool, Digests::default())
}

/// A connected connection whose host asked for `digests`.
fn conn_with(pool: &Rc<RefCell<BufPool>>, digests: Digests) -> TcpConn<MemStream> {
    conn_over(pool, digests, MemStream::default())
}

fn params() -> TcpParams {
    TcpParams {
        in_capsule_data_size: 8192,
        max_io_size: LARGE as u32,
        max_queue_depth: 32,
        header_digest: DigestMode::Allowed,
        data_digest: DigestMode::Allowed,
        c2h_success: false,
    }
}

/// A connected connection over `stream`.
fn conn_over(
    pool: &Rc<RefCell<BufPool>>,
    digests: Digests,
    stream: MemStream,
) -> TcpConn<MemStream> {
    let mut c = conn_full(pool, params(), digests, stream);
    c.set_queue(1, 32);
    c
}

/// A connection past ICReq with `params`, not yet a queue (no Connect).
fn conn_full(
    pool: &Rc<RefCell<BufPool>>,
    params: TcpParams,
    digests: Digests,
    stream: MemStream,
) -> TcpConn<MemStream> {
    let mut c = TcpConn::new(stream, params, pool.clone());
    let mut ic = Vec::new();
    IcReq {
        pfv: 0,
        hpda: 0,
        digests,
        maxr2t: 0,
    }
    .encode(&mut ic);
    c.stream.input.extend(ic);
    c.recv().unwrap();
    flush(&mut c);
    assert_eq!(c.stream.output[0], pdu_type::IC_RESP);
    c.stream.output.clear();
    c
}

/// Queue a host command capsule (with the connection's digests) for `len` bytes of data.
fn send_cmd(c: &mut TcpConn<MemStream>, op: u8, cid: u16, len: u32) {
    let mut sqe = Sqe::lba_command(op, 1, u64::from(cid) * 64, len / 4096);
    sqe.cid = cid;
    sqe.flags = 0x40;
    sqe.dptr = SglDescriptor::transport(len);
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, &sqe, None, c.inner.digests, 4);
    c.stream.input.extend(b);
}

/// Write everything queued, however many writes (and EAGAINs) the stream's plan takes.
fn flush(c: &mut TcpConn<MemStream>) {
    for _ in 0..100_000 {
        if !c.has_unsent() {
            return;
        }
        c.poll_send().unwrap();
    }
    panic!("the send queue makes no progress");
}

/// Types of the PDUs the connection wrote since the last call.
fn sent_types(c: &mut TcpConn<MemStream>) -> Vec<u8> {
    flush(c);
    let out = std::mem::take(&mut c.stream.output);
    let mut types = Vec::new();
    let mut at = 0;
    while at < out.len() {
        types.push(out[at]);
        at += crate::proto::le::u32(&out, at + 4) as usize;
    }
    types
}

fn ok(cid: u16, data_len: u32) -> Response {
    Response {
        cqe: Cqe {
            cid,
            ..Default::default()
        },
        data_len,
    }
}

/// The H2CData PDU answering the R2T the connection sent for command `cid`.
fn h2c_for(c: &TcpConn<MemStream>, cid: u16, data: &[u8]) -> Vec<u8> {
    let ttag = c
        .inner
        .slots
        .iter()
        .position(|s| s.state == SlotState::AwaitingData && s.capsule.sqe.cid == cid)
        .expect("an R2T was sent for the command") as u16;
    let mut b = Vec::new();
    DataHeader {
        cccid: cid,
        ttag,
        offset: 0,
        length: data.len() as u32,
    }
    .encode(&mut b, false, flags::DATA_LAST, data, c.inner.digests, 4);
    b
}

#[test]
fn reads_wait_for_a_large_buffer_when_the_pool_is_lent_out() {
    let (mut c, pool) = conn(1);
    for cid in 0..3 {
        send_cmd(&mut c, opcode::NVM_READ, cid, LARGE as u32);
    }
    c.recv().unwrap();
    let first = c.next_ready().expect("the first read has the only buffer");
    assert!(c.next_ready().is_none(), "the others wait for it");
    assert!(c.awaiting_buffers());
    assert_eq!(pool.borrow().large_made(), 1);
    // Small commands are not held up behind them.
    send_cmd(&mut c, opcode::NVM_READ, 9, 4096);
    c.recv().unwrap();
    let small = c.next_ready().expect("a 4 KiB read runs at once");
    assert_eq!(c.capsule_mut(small).sqe.cid, 9);
    c.complete(small, ok(9, 4096));

    c.complete(first, ok(0, LARGE as u32));
    assert_eq!(
        sent_types(&mut c),
        [0x07, 0x05, 0x07, 0x05],
        "data and responses"
    );
    for cid in 1..3 {
        c.recv().unwrap();
        let s = c
            .next_ready()
            .expect("the returned buffer goes to the next read");
        assert_eq!(c.capsule_mut(s).sqe.cid, cid, "in arrival order");
        assert!(c.next_ready().is_none());
        c.complete(s, ok(cid, LARGE as u32));
        flush(&mut c);
    }
    assert!(!c.awaiting_buffers());
    assert_eq!(pool.borrow().large_made(), 1, "never more than the cap");
}

#[test]
fn writes_get_their_r2t_only_once_they_have_a_buffer() {
    // A pool of 8: this connection's share is 2 of them.
    let (mut c, pool) = conn(8);
    for cid in 0..3 {
        send_cmd(&mut c, opcode::NVM_WRITE, cid, LARGE as u32);
    }
    c.recv().unwrap();
    assert_eq!(sent_types(&mut c), [0x09, 0x09], "two R2Ts for two buffers");
    assert!(c.awaiting_buffers());
    // The host answers the first R2T; that write runs and completes, freeing its buffer.
    let b = h2c_for(&c, 0, &vec![7u8; LARGE]);
    c.stream.input.extend(b);
    c.recv().unwrap();
    let s = c.next_ready().expect("the write's data arrived");
    assert!(c.capsule_mut(s).buf.as_ref().unwrap().as_slice()[..LARGE]
        .iter()
        .all(|&x| x == 7));
    c.complete(s, ok(0, 0));
    assert_eq!(sent_types(&mut c), [0x05]);
    c.recv().unwrap();
    assert_eq!(
        sent_types(&mut c),
        [0x09],
        "the third write now gets its R2T"
    );
    assert!(!c.awaiting_buffers());
    assert_eq!(pool.borrow().large_made(), 2);
}

#[test]
fn connections_take_turns_for_large_buffers() {
    let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 1)));
    let (mut a, mut b) = (conn_on(&pool), conn_on(&pool));
    send_cmd(&mut a, opcode::NVM_READ, 0, LARGE as u32);
    a.recv().unwrap();
    let a0 = a.next_ready().unwrap();
    send_cmd(&mut b, opcode::NVM_READ, 0, LARGE as u32);
    b.recv().unwrap();
    assert!(b.next_ready().is_none(), "b waits");
    send_cmd(&mut a, opcode::NVM_READ, 1, LARGE as u32);
    a.complete(a0, ok(0, LARGE as u32));
    flush(&mut a);
    // a is polled first and has a command waiting too, but b asked first.
    a.recv().unwrap();
    assert!(
        a.next_ready().is_none(),
        "a's second read queues behind b's"
    );
    b.recv().unwrap();
    let b0 = b.next_ready().expect("b's turn");
    b.complete(b0, ok(0, LARGE as u32));
    flush(&mut b);
    a.recv().unwrap();
    let a1 = a.next_ready().expect("then a's");
    // A connection that closes while waiting gives up its place.
    send_cmd(&mut b, opcode::NVM_READ, 1, LARGE as u32);
    b.recv().unwrap();
    assert!(b.awaiting_buffers());
    drop(b);
    a.complete(a1, ok(1, LARGE as u32));
    flush(&mut a);
    assert!(
        pool.borrow_mut().try_get(LARGE).is_some(),
        "nobody queued any more"
    );
    let mut c = conn_on(&pool);
    send_cmd(&mut c, opcode::NVM_WRITE, 0, 4096);
    c.recv().unwrap();
    assert_eq!(sent_types(&mut c), [0x09], "small transfers never wait");
}

/// `data` lent as a RAM disk lends its blocks for a read: memory the connection does not own,
/// kept alive by a share of its owner.
fn lent(data: &[u8]) -> nvmfd_p2p::mem::Lent {
    let disk: std::sync::Arc<Vec<u8>> = std::sync::Arc::new(data.to_vec());
    let ptr = std::ptr::NonNull::new(disk.as_ptr().cast_mut()).unwrap();
    // SAFETY: the Vec's heap block stays allocated, unchanged, while the Lent holds `disk`.
    unsafe { nvmfd_p2p::mem::Lent::new(ptr, disk.len(), disk.clone()) }
}

#[test]
fn read_data_lent_by_a_device_goes_out_as_it_is() {
    let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 4)));
    let mut c = conn_on(&pool);
    assert!(c.takes_lent_data());
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 1) as u8).collect();
    send_cmd(&mut c, opcode::NVM_READ, 5, 8192);
    c.recv().unwrap();
    let s = c.next_ready().unwrap();
    c.capsule_mut(s).lent = Some(lent(&data));
    c.complete(s, ok(5, 8192));
    flush(&mut c);
    let out = std::mem::take(&mut c.stream.output);
    // C2HData: 24-byte header (PDO 24), the lent bytes, then the CapsuleResp.
    assert_eq!((out[0], out[3]), (pdu_type::C2H_DATA, 24));
    assert!(
        out[24..24 + 8192] == data[..],
        "the device's bytes, unchanged"
    );
    assert_eq!(out[24 + 8192], pdu_type::CAPSULE_RESP);
    assert!(c.capsule_mut(s).lent.is_none(), "released once sent");
}

#[test]
fn lent_data_is_never_sent_where_a_data_digest_is_due() {
    let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 4)));
    let digests = Digests {
        header: false,
        data: true,
    };
    let mut c = conn_with(&pool, digests);
    assert!(!c.takes_lent_data(), "a digest must read the data");
    let data = vec![3u8; 4096];
    send_cmd(&mut c, opcode::NVM_READ, 8, 4096);
    c.recv().unwrap();
    let s = c.next_ready().unwrap();
    // Against the contract, the data comes lent anyway: the command fails, nothing unchecked
    // goes out.
    c.capsule_mut(s).lent = Some(lent(&data));
    c.complete(s, ok(8, 4096));
    flush(&mut c);
    let out = std::mem::take(&mut c.stream.output);
    assert_eq!(out[0], pdu_type::CAPSULE_RESP, "no C2HData");
    let cqe = Cqe::decode(out[8..24].try_into().unwrap());
    assert_eq!((cqe.cid, cqe.status), (8, Status::INTERNAL_ERROR));
}

#[test]
fn large_write_data_arriving_with_other_pdus_lands_intact() {
    // Two 128 KiB writes whose data comes back to back, then a read capsule, all in the
    // socket at once: while data is due the connection reads in small steps and takes the
    // payloads in place; each byte must still land in its own command's buffer.
    for digests in [
        Digests::default(),
        Digests {
            header: true,
            data: true,
        },
    ] {
        let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 8)));
        let mut c = conn_with(&pool, digests);
        send_cmd(&mut c, opcode::NVM_WRITE, 1, LARGE as u32);
        send_cmd(&mut c, opcode::NVM_WRITE, 2, LARGE as u32);
        c.recv().unwrap();
        assert_eq!(sent_types(&mut c), [0x09, 0x09]);
        let data =
            |cid: u16| -> Vec<u8> { (0..LARGE).map(|i| (i / 7) as u8 ^ cid as u8).collect() };
        let mut input = h2c_for(&c, 1, &data(1));
        input.extend(h2c_for(&c, 2, &data(2)));
        c.stream.input.extend(input);
        send_cmd(&mut c, opcode::NVM_READ, 3, 4096);
        while c.recv().unwrap() {}
        let mut seen = Vec::new();
        while let Some(s) = c.next_ready() {
            let cap = c.capsule_mut(s);
            let cid = cap.sqe.cid;
            if cid != 3 {
                assert!(
                    cap.buf.as_ref().unwrap().as_slice()[..LARGE] == data(cid)[..],
                    "write {cid} data (digests {digests:?})"
                );
            }
            seen.push(cid);
        }
        assert_eq!(seen, [1, 2, 3], "digests {digests:?}");
    }
}

/// Queue a capsule for `sqe` exactly as given, with optional in-capsule data.
fn send_sqe(c: &mut TcpConn<MemStream>, sqe: &Sqe, data: Option<&[u8]>) {
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, sqe, data, c.inner.digests, 4);
    c.stream.input.extend(b);
}

/// An LBA command with an SGL (PSDT 01b) of `dptr`.
fn sgl_cmd(op: u8, cid: u16, blocks: u32, dptr: SglDescriptor) -> Sqe {
    let mut sqe = Sqe::lba_command(op, 1, 0, blocks);
    sqe.cid = cid;
    sqe.flags = 0x40;
    sqe.dptr = dptr;
    sqe
}

/// The headers of the PDUs the connection wrote since the last call.
fn sent_pdus(c: &mut TcpConn<MemStream>) -> Vec<Header> {
    flush(c);
    let out = std::mem::take(&mut c.stream.output);
    let mut at = 0;
    let mut pdus = Vec::new();
    while at < out.len() {
        let p = crate::proto::tcp::parse_pdu(&out[at..], c.inner.digests, u32::MAX)
            .expect("well-formed PDU")
            .expect("whole PDU");
        pdus.push(p.header);
        at += p.len;
    }
    pdus
}

/// The completions among `pdus`.
fn cqes(pdus: &[Header]) -> Vec<Cqe> {
    pdus.iter()
        .filter_map(|h| match h {
            Header::CapsuleResp(cqe) => Some(*cqe),
            _ => None,
        })
        .collect()
}

/// The one completion the connection sent since the last call.
fn one_cqe(c: &mut TcpConn<MemStream>) -> Cqe {
    let pdus = sent_pdus(c);
    assert_eq!(pdus.len(), 1, "one response: {pdus:?}");
    cqes(&pdus)[0]
}

/// The fatal error status of the C2HTermReq the connection sent (and that it is the last PDU).
fn term_fes(c: &mut TcpConn<MemStream>) -> u16 {
    match sent_pdus(c).last() {
        Some(Header::TermReq { fes, .. }) => *fes,
        other => panic!("expected a C2HTermReq, got {other:?}"),
    }
}

#[test]
fn a_bad_data_digest_is_a_generic_retryable_transient_transport_error_logged_sparingly() {
    let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 4)));
    let digests = Digests {
        header: false,
        data: true,
    };
    let mut c = conn_with(&pool, digests);
    c.set_queue(1, 32);
    for cid in 0..20u16 {
        let sqe = sgl_cmd(
            opcode::NVM_WRITE,
            cid,
            1,
            SglDescriptor::in_capsule(0, 4096),
        );
        let mut b = Vec::new();
        encode_capsule_cmd(&mut b, &sqe, Some(&[cid as u8; 4096]), digests, 4);
        let n = b.len();
        b[n - 1] ^= 0x5a;
        c.stream.input.extend(b);
    }
    c.recv().unwrap();
    assert!(
        c.next_ready().is_none(),
        "no command with bad data executes"
    );
    let got = cqes(&sent_pdus(&mut c));
    assert_eq!(got.len(), 20);
    for (i, cqe) in got.iter().enumerate() {
        assert_eq!(cqe.cid, i as u16);
        assert_eq!(
            (cqe.status.sct, cqe.status.sc, cqe.status.dnr),
            (0, 0x22, false),
            "generic status 22h, not path-related SCT 3, and retryable"
        );
    }
    // 20 events: the first LOG_BURST written, the rest counted for a later line or the close.
    assert_eq!(
        c.inner.log.counts(),
        (20, 20 - u64::from(LOG_BURST)),
        "log lines are rate-limited"
    );
}

#[test]
fn a_host_past_its_queue_size_is_terminated() {
    let (mut c, _pool) = conn(4);
    c.set_queue(1, 4);
    for cid in 0..4 {
        send_cmd(&mut c, opcode::NVM_READ, cid, 4096);
    }
    c.recv().unwrap();
    let held: Vec<u16> = std::iter::from_fn(|| c.next_ready()).collect();
    assert_eq!(held.len(), 4, "a full queue is fine");
    // One answered: its entry may be reused.
    c.complete(held[0], ok(0, 4096));
    flush(&mut c);
    c.stream.output.clear();
    send_cmd(&mut c, opcode::NVM_READ, 0, 4096);
    c.recv().unwrap();
    assert!(c.next_ready().is_some());
    // Five outstanding on a queue of four entries is a protocol violation.
    send_cmd(&mut c, opcode::NVM_READ, 7, 4096);
    assert!(matches!(c.recv(), Err(ConnError::Fatal(_))));
    assert_eq!(term_fes(&mut c), fes::PDU_SEQUENCE_ERROR);
}

#[test]
fn in_capsule_data_is_bounded_by_the_queue_capsule_size_without_allocating() {
    let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 1)));
    let small_icd = TcpParams {
        in_capsule_data_size: 4096,
        ..params()
    };
    let write = |cid, len: usize| {
        (
            sgl_cmd(
                opcode::NVM_WRITE,
                cid,
                (len / 4096).max(1) as u32,
                SglDescriptor::in_capsule(0, len as u32),
            ),
            vec![cid as u8; len],
        )
    };
    // Before Connect, 8 KiB (room for Connect's data on either queue type), one command.
    let mut c = conn_full(&pool, small_icd, Digests::default(), MemStream::default());
    let (sqe, d) = write(1, 8192);
    send_sqe(&mut c, &sqe, Some(&d));
    c.recv().unwrap();
    assert!(c.next_ready().is_some());
    send_sqe(&mut c, &sqe, Some(&d));
    assert!(
        matches!(c.recv(), Err(ConnError::Fatal(_))),
        "nothing but the Connect before the queue exists"
    );
    assert_eq!(term_fes(&mut c), fes::PDU_SEQUENCE_ERROR);
    // An I/O queue: IOCCSZ (here 4 KiB of data) and no more.
    let mut c = conn_full(&pool, small_icd, Digests::default(), MemStream::default());
    c.set_queue(1, 32);
    let (sqe, d) = write(2, 4096);
    send_sqe(&mut c, &sqe, Some(&d));
    c.recv().unwrap();
    let s = c.next_ready().expect("within IOCCSZ");
    assert!(c.capsule_mut(s).buf.as_ref().unwrap().as_slice()[..4096] == d[..]);
    for len in [4096 + 16, 8192, 128 * 1024] {
        let (sqe, d) = write(3, len);
        send_sqe(&mut c, &sqe, Some(&d));
        c.recv().unwrap();
        assert!(c.next_ready().is_none());
        let cqe = one_cqe(&mut c);
        assert_eq!(
            (cqe.cid, cqe.status),
            (3, Status::DATA_SGL_LENGTH_INVALID),
            "{len} bytes in the capsule"
        );
    }
    assert_eq!(
        (pool.borrow().large_made(), pool.borrow().grown()),
        (0, 2),
        "refused without a large buffer (two small ones were made for the two accepted)"
    );
    // The admin queue: 8 KiB whatever IOCCSZ says.
    let mut c = conn_full(&pool, small_icd, Digests::default(), MemStream::default());
    c.set_queue(0, 32);
    let (sqe, d) = write(4, 8192);
    send_sqe(&mut c, &sqe, Some(&d));
    c.recv().unwrap();
    assert!(c.next_ready().is_some());
    let (sqe, d) = write(5, 8192 + 16);
    send_sqe(&mut c, &sqe, Some(&d));
    c.recv().unwrap();
    assert_eq!(one_cqe(&mut c).status, Status::DATA_SGL_LENGTH_INVALID);
}

#[test]
fn in_capsule_data_at_an_offset() {
    let (mut c, _pool) = conn(1);
    c.set_queue(1, 32);
    let payload: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut capsule_data = vec![0xeeu8; 512];
    capsule_data.extend_from_slice(&payload);
    let sqe = sgl_cmd(
        opcode::NVM_WRITE,
        1,
        1,
        SglDescriptor::in_capsule(512, 4096),
    );
    send_sqe(&mut c, &sqe, Some(&capsule_data));
    c.recv().unwrap();
    let s = c
        .next_ready()
        .expect("an offset within the capsule is fine");
    let cap = c.capsule_mut(s);
    assert_eq!(cap.data_len, 4096);
    assert!(
        cap.buf.as_ref().unwrap().as_slice()[..4096] == payload[..],
        "the command's data starts at the offset"
    );
    c.complete(s, ok(1, 0));
    flush(&mut c);
    c.stream.output.clear();
    // What the core refuses (its statuses are the core's, tested there): the transport hands it
    // the descriptor as it came and keeps no copy of data it could not accept.
    let ic = |offset, len, carried| DataDesc::InCapsule {
        offset,
        len,
        carried,
    };
    let cases = [
        // Offset past the capsule size (IOCCSZ: 8 KiB of data here).
        (
            SglDescriptor::in_capsule(8192 + 16, 16),
            Some(vec![0u8; 64]),
            ic(8192 + 16, 16, 64),
        ),
        // Offset and length reaching past the data the capsule carries.
        (
            SglDescriptor::in_capsule(512, 4096),
            Some(vec![0u8; 4096]),
            ic(512, 4096, 4096),
        ),
        // ... or past the capsule size.
        (
            SglDescriptor::in_capsule(4096, 8192),
            Some(vec![0u8; 4096]),
            ic(4096, 8192, 4096),
        ),
        // An in-capsule descriptor on a capsule with no data.
        (SglDescriptor::in_capsule(0, 4096), None, ic(0, 4096, 0)),
    ];
    for (i, (dptr, data, want)) in cases.into_iter().enumerate() {
        let cid = 10 + i as u16;
        let sqe = sgl_cmd(opcode::NVM_WRITE, cid, 1, dptr);
        send_sqe(&mut c, &sqe, data.as_deref());
        c.poll_recv().unwrap();
        match c.next_event() {
            Some(ConnEvent::Command { slot, desc, .. }) => {
                assert_eq!(desc, want, "case {i}");
                assert!(
                    c.capsule_mut(slot).buf.is_none(),
                    "case {i}: nothing copied"
                );
                let refusal = Response {
                    cqe: Cqe {
                        cid,
                        status: Status::DATA_SGL_LENGTH_INVALID,
                        ..Default::default()
                    },
                    data_len: 0,
                };
                c.respond(slot, refusal);
            }
            other => panic!("case {i}: {other:?}"),
        }
        assert_eq!(one_cqe(&mut c).cid, cid, "case {i}");
    }
}

/// The two phases: a new command is only described to the core; an R2T goes out only when the
/// core asks for the data, and a command refused at admission never gets one, nor a buffer.
#[test]
fn no_r2t_before_the_core_admits_the_write_and_none_for_a_refused_one() {
    let (mut c, pool) = conn(4);
    send_cmd(&mut c, opcode::NVM_WRITE, 1, LARGE as u32);
    c.poll_recv().unwrap();
    assert_eq!(
        sent_types(&mut c),
        Vec::<u8>::new(),
        "nothing before admission"
    );
    let Some(ConnEvent::Command { slot, sqe, desc }) = c.next_event() else {
        panic!("a new command")
    };
    assert_eq!(sqe.cid, 1);
    assert_eq!(
        desc,
        DataDesc::Remote {
            len: LARGE as u32,
            descriptors: 1
        }
    );
    // Refused (as the core does for a bad namespace): the response, and no R2T.
    let refusal = Response {
        cqe: Cqe {
            cid: 1,
            status: Status::INVALID_NAMESPACE,
            ..Default::default()
        },
        data_len: 0,
    };
    c.respond(slot, refusal);
    assert_eq!(sent_types(&mut c), vec![pdu_type::CAPSULE_RESP]);
    assert_eq!(pool.borrow().large_made(), 0, "no buffer was taken");
    // Admitted: the R2T follows the fetch.
    send_cmd(&mut c, opcode::NVM_WRITE, 2, LARGE as u32);
    c.poll_recv().unwrap();
    let Some(ConnEvent::Command { slot, sqe, .. }) = c.next_event() else {
        panic!("a new command")
    };
    c.fetch(
        slot,
        DataNeed {
            len: LARGE as u32,
            dir: sqe.data_direction(),
            bdev: Some(0),
        },
    );
    assert_eq!(sent_types(&mut c), vec![pdu_type::R2T]);
}

#[test]
fn sgl_types_and_mdts_get_their_statuses_and_the_connection_lives_on() {
    let (mut c, _pool) = conn(1);
    c.set_queue(1, 32);
    let cases = [
        // Transport SGL Data Block, but not the transport-specific subtype (Ah).
        (
            SglDescriptor::TRANSPORT_DATA_BLOCK << 4,
            4096,
            Status::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
        (
            SglDescriptor::TRANSPORT_DATA_BLOCK << 4 | SglDescriptor::SUBTYPE_OFFSET,
            4096,
            Status::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
        // Keyed (RDMA) and plain address descriptors mean nothing over TCP.
        (
            SglDescriptor::KEYED_DATA_BLOCK << 4,
            4096,
            Status::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
        (
            SglDescriptor::DATA_BLOCK << 4,
            4096,
            Status::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
        // Past MDTS (128 KiB): Invalid Field, as the core answers for NLB past it.
        (
            SglDescriptor::TRANSPORT_DATA_BLOCK << 4 | SglDescriptor::SUBTYPE_TRANSPORT,
            2 * LARGE as u32,
            Status::INVALID_FIELD,
        ),
    ];
    for (i, (identifier, length, want)) in cases.into_iter().enumerate() {
        for op in [opcode::NVM_READ, opcode::NVM_WRITE] {
            let dptr = SglDescriptor {
                address: 0,
                length,
                key: 0,
                identifier,
            };
            let sqe = sgl_cmd(op, i as u16, length.div_ceil(4096), dptr);
            send_sqe(&mut c, &sqe, None);
            c.recv().unwrap();
            assert!(c.next_ready().is_none(), "case {i} op {op}");
            let cqe = one_cqe(&mut c);
            assert_eq!((cqe.cid, cqe.status), (i as u16, want), "case {i} op {op}");
            assert!(cqe.status.dnr, "case {i}: not worth retrying");
        }
    }
    send_cmd(&mut c, opcode::NVM_READ, 77, 4096);
    c.recv().unwrap();
    assert!(c.next_ready().is_some(), "still serving");
}

/// H2CData PDUs for `cid` covering `data` in pieces of `piece` bytes, LAST_PDU on those `last`
/// says.
fn h2c_pieces(
    c: &TcpConn<MemStream>,
    cid: u16,
    data: &[u8],
    piece: usize,
    last: impl Fn(usize, bool) -> bool,
) -> Vec<u8> {
    let ttag = c
        .inner
        .slots
        .iter()
        .position(|s| s.state == SlotState::AwaitingData && s.capsule.sqe.cid == cid)
        .expect("an R2T was sent") as u16;
    let mut b = Vec::new();
    let n = data.len().div_ceil(piece);
    for (i, chunk) in data.chunks(piece).enumerate() {
        let fl = if last(i, i + 1 == n) {
            flags::DATA_LAST
        } else {
            0
        };
        DataHeader {
            cccid: cid,
            ttag,
            offset: (i * piece) as u32,
            length: chunk.len() as u32,
        }
        .encode(&mut b, false, fl, chunk, c.inner.digests, 4);
    }
    b
}

#[test]
fn last_pdu_marks_the_last_h2c_data_and_only_it() {
    let data: Vec<u8> = (0..LARGE).map(|i| (i * 13 / 7) as u8).collect();
    // Pieces of 64 KiB go to the buffer in place, pieces of 4 KiB through the receive buffer.
    for piece in [64 * 1024, 4096] {
        let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 4)));
        // Right: LAST_PDU on the last piece only.
        let mut c = conn_on(&pool);
        send_cmd(&mut c, opcode::NVM_WRITE, 1, LARGE as u32);
        c.recv().unwrap();
        assert_eq!(sent_types(&mut c), [pdu_type::R2T]);
        let b = h2c_pieces(&c, 1, &data, piece, |_, is_last| is_last);
        c.stream.input.extend(b);
        while c.recv().unwrap() {}
        let s = c.next_ready().expect("all data came");
        assert!(c.capsule_mut(s).buf.as_ref().unwrap().as_slice()[..LARGE] == data[..]);
        // Wrong: LAST_PDU on the first piece; or on none.
        for early in [true, false] {
            let mut c = conn_on(&pool);
            send_cmd(&mut c, opcode::NVM_WRITE, 1, LARGE as u32);
            c.recv().unwrap();
            assert_eq!(sent_types(&mut c), [pdu_type::R2T]);
            let b = h2c_pieces(&c, 1, &data, piece, |i, _| early && i == 0);
            c.stream.input.extend(b);
            let err = loop {
                match c.recv() {
                    Ok(true) => continue,
                    Ok(false) => panic!("piece {piece} early {early}: accepted"),
                    Err(e) => break e,
                }
            };
            assert!(matches!(err, ConnError::Fatal(_)), "{err}");
            assert_eq!(term_fes(&mut c), fes::PDU_SEQUENCE_ERROR);
            assert!(c.next_ready().is_none());
        }
    }
}

#[test]
fn one_connection_holds_at_most_its_share_of_the_large_buffers() {
    // 8 large buffers: a share of 2 per connection.
    let (mut a, pool) = conn(8);
    let mut b = conn_on(&pool);
    for cid in 0..4 {
        send_cmd(&mut a, opcode::NVM_WRITE, cid, LARGE as u32);
    }
    a.recv().unwrap();
    assert_eq!(sent_types(&mut a), [pdu_type::R2T, pdu_type::R2T]);
    assert!(a.awaiting_buffers(), "the rest wait for a's own buffers");
    // The pool has plenty left for b, and a is not in b's way.
    for cid in 0..2 {
        send_cmd(&mut b, opcode::NVM_READ, cid, LARGE as u32);
    }
    b.recv().unwrap();
    let got: Vec<u16> = std::iter::from_fn(|| b.next_ready()).collect();
    assert_eq!(got.len(), 2, "b gets its buffers at once");
    assert_eq!(pool.borrow().large_made(), 4);
    // a polled again with free buffers in the pool: still at its share.
    a.recv().unwrap();
    assert!(sent_types(&mut a).is_empty());
    // One of a's writes gets its data and completes: a's next write gets the buffer.
    let h = h2c_for(&a, 0, &vec![1u8; LARGE]);
    a.stream.input.extend(h);
    a.recv().unwrap();
    let s = a.next_ready().unwrap();
    a.complete(s, ok(0, 0));
    assert_eq!(sent_types(&mut a), [pdu_type::CAPSULE_RESP]);
    a.recv().unwrap();
    assert_eq!(sent_types(&mut a), [pdu_type::R2T]);
    assert_eq!(
        pool.borrow().large_made(),
        4,
        "the returned buffer was reused, none made"
    );
}

#[test]
fn an_r2t_left_unanswered_times_out_and_others_keep_their_io() {
    // Two large buffers, one each.
    let (mut hostile, pool) = conn(2);
    let mut good = conn_on(&pool);
    let t0 = Instant::now();
    assert_eq!(hostile.poll_timers(t0), None);
    assert_eq!(good.poll_timers(t0), None);
    for cid in 0..8 {
        send_cmd(&mut hostile, opcode::NVM_WRITE, cid, LARGE as u32);
    }
    hostile.recv().unwrap();
    assert_eq!(sent_types(&mut hostile), [pdu_type::R2T]);
    // The other connection's large writes go on, one buffer at a time, verified.
    for round in 0..4u8 {
        send_cmd(&mut good, opcode::NVM_WRITE, round as u16, LARGE as u32);
        good.recv().unwrap();
        assert_eq!(sent_types(&mut good), [pdu_type::R2T], "round {round}");
        let data = vec![round; LARGE];
        let h = h2c_for(&good, round as u16, &data);
        good.stream.input.extend(h);
        good.recv().unwrap();
        let s = good.next_ready().expect("data arrived");
        assert!(good.capsule_mut(s).buf.as_ref().unwrap().as_slice()[..LARGE] == data[..]);
        good.complete(s, ok(round as u16, 0));
        assert_eq!(sent_types(&mut good), [pdu_type::CAPSULE_RESP]);
    }
    // Within the timeout nothing happens; past it the hostile connection is to be closed.
    let half = t0 + R2T_TIMEOUT / 2;
    assert_eq!(hostile.poll_timers(half), None);
    assert_eq!(good.poll_timers(half), None);
    let late = t0 + R2T_TIMEOUT + Duration::from_secs(1);
    assert_eq!(hostile.poll_timers(late), Some(R2T_TIMEOUT_REASON));
    assert_eq!(good.poll_timers(late), None, "nothing outstanding");
    // Its buffer goes back when the reactor drops it.
    drop(hostile);
    send_cmd(&mut good, opcode::NVM_READ, 9, LARGE as u32);
    send_cmd(&mut good, opcode::NVM_READ, 10, LARGE as u32);
    good.recv().unwrap();
    assert!(good.next_ready().is_some());
    assert!(
        good.next_ready().is_none(),
        "one at a time: good's share is one buffer"
    );
    assert_eq!(pool.borrow().large_made(), 2, "never past the cap");
}

#[test]
fn partial_writes_and_eagain_mid_writev_send_the_same_bytes() {
    // The same commands answered over a stream that takes every write whole and over one that
    // cuts writes anywhere (and says EAGAIN): the bytes on the wire must be the same, and a
    // command's data (lent, or in its buffer) must stay until all of it is written.
    let run = |stream: MemStream| {
        let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 8)));
        let mut c = conn_over(&pool, Digests::default(), stream);
        let sizes = [4096u32, LARGE as u32, 8192, 4096, 12288];
        for (cid, &len) in sizes.iter().enumerate() {
            send_cmd(&mut c, opcode::NVM_READ, cid as u16, len);
        }
        send_cmd(&mut c, opcode::NVM_WRITE, 20, 4096);
        c.recv().unwrap();
        let mut slots: Vec<u16> = std::iter::from_fn(|| c.next_ready()).collect();
        assert_eq!(slots.len(), sizes.len());
        // Answer out of order, some with lent data, one with an error, writing in between.
        slots.reverse();
        for (i, &s) in slots.iter().enumerate() {
            let cid = c.capsule_mut(s).sqe.cid;
            let len = sizes[cid as usize] as usize;
            let data: Vec<u8> = (0..len).map(|j| (j as u8) ^ (cid as u8 * 31)).collect();
            if i % 2 == 0 {
                c.capsule_mut(s).lent = Some(lent(&data));
            } else {
                c.capsule_mut(s).buf.as_mut().unwrap().as_mut_slice()[..len].copy_from_slice(&data);
            }
            let resp = if i == 3 {
                Response {
                    cqe: Cqe {
                        cid,
                        status: Status::LBA_OUT_OF_RANGE,
                        ..Default::default()
                    },
                    data_len: 0,
                }
            } else {
                ok(cid, len as u32)
            };
            c.complete(s, resp);
            c.poll_send().unwrap();
            if resp.data_len > 0 && c.stream.output.len() < len {
                // Not all of its data is out: the slot still holds it.
                let cap = c.capsule_mut(s);
                assert!(
                    cap.lent.is_some() || cap.buf.is_some(),
                    "data kept until written"
                );
            }
        }
        flush(&mut c);
        (
            std::mem::take(&mut c.stream.output),
            c.stream.cut_writes,
            c.stream.would_block,
        )
    };
    let (whole, cut0, eagain0) = run(MemStream::unlimited());
    let (choppy, cut, eagain) = run(MemStream::default());
    assert_eq!((cut0, eagain0), (0, 0));
    assert!(
        cut > 5 && eagain > 3,
        "the plan cuts ({cut}) and blocks ({eagain})"
    );
    assert_eq!(whole.len(), choppy.len());
    assert!(whole == choppy, "same bytes whatever the write sizes");
    // And they are what was asked for: five C2HData + CapsuleResp pairs, one error response,
    // one R2T (for the write), in completion order.
    let mut types = Vec::new();
    let mut at = 0;
    while at < whole.len() {
        types.push(whole[at]);
        at += crate::proto::le::u32(&whole, at + 4) as usize;
    }
    assert_eq!(
        types.iter().filter(|&&t| t == pdu_type::C2H_DATA).count(),
        4
    );
    assert_eq!(
        types
            .iter()
            .filter(|&&t| t == pdu_type::CAPSULE_RESP)
            .count(),
        5
    );
    assert_eq!(types[0], pdu_type::R2T);
}

/// A connected connection whose writes for bdev 0 are staged in `staging`.
fn conn_staged(pool: &Rc<RefCell<BufPool>>, staging: &Rc<RefCell<Staging>>) -> TcpConn<MemStream> {
    let mut c = TcpConn::with_staging(
        MemStream::default(),
        params(),
        pool.clone(),
        staging.clone(),
    );
    let mut ic = Vec::new();
    IcReq {
        pfv: 0,
        hpda: 0,
        digests: Digests::default(),
        maxr2t: 0,
    }
    .encode(&mut ic);
    c.stream.input.extend(ic);
    c.poll_recv().unwrap();
    flush(&mut c);
    c.stream.output.clear();
    c.set_queue(1, 32);
    c
}

/// Admit every new command as the core would for namespace-on-bdev-0 I/O (so the staging
/// table is asked); returns the slots whose data is in place.
fn admit_for_bdev0(c: &mut TcpConn<MemStream>) -> Vec<u16> {
    let mut ready = Vec::new();
    while let Some(ev) = c.next_event() {
        match ev {
            ConnEvent::Command { slot, sqe, desc } => {
                let len = match desc {
                    DataDesc::InCapsule { len, .. } | DataDesc::Remote { len, .. } => len,
                    _ => panic!("unexpected descriptor {desc:?}"),
                };
                let need = DataNeed {
                    len,
                    dir: sqe.data_direction(),
                    bdev: Some(0),
                };
                c.fetch(slot, need);
            }
            ConnEvent::DataReady { slot } => ready.push(slot),
        }
    }
    ready
}

#[test]
fn staged_write_data_lands_in_the_cmb_and_takes_host_memory_once_the_pool_is_empty() {
    use crate::staging::StagingSource;
    use nvmfd_p2p::mem::{Domain, Region, SharedPool};
    let cmb_domain = Domain::Cmb { device: 9 };
    // A stand-in CMB of two 128 KiB buffers.
    let region = Region::stand_in(2 * LARGE, cmb_domain).unwrap();
    let cmb = SharedPool::new(vec![region], LARGE, &[]).unwrap();
    let src = StagingSource::new(cmb.clone(), "nqn.test nsid 1");
    let staging = Rc::new(RefCell::new(Staging::new(&[Some(src.clone())])));
    let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 8)));
    let mut c = conn_staged(&pool, &staging);

    // Three 128 KiB writes: two get the CMB's buffers, the third host memory at once (an R2T
    // for each: nobody waits for the CMB).
    for cid in 1..=3 {
        send_cmd(&mut c, opcode::NVM_WRITE, cid, LARGE as u32);
    }
    c.poll_recv().unwrap();
    assert!(admit_for_bdev0(&mut c).is_empty());
    assert_eq!(sent_types(&mut c), [0x09, 0x09, 0x09], "three R2Ts");
    let data = |cid: u16| -> Vec<u8> { (0..LARGE).map(|i| (i / 3) as u8 ^ cid as u8).collect() };
    for cid in 1..=3 {
        let h2c = h2c_for(&c, cid, &data(cid));
        c.stream.input.extend(h2c);
    }
    while c.poll_recv().unwrap() {}
    let ready = admit_for_bdev0(&mut c);
    assert_eq!(ready.len(), 3);
    for &s in &ready {
        let cap = c.capsule_mut(s);
        let cid = cap.sqe.cid;
        let buf = cap.buf.as_ref().unwrap();
        let want = if cid < 3 {
            cmb_domain
        } else {
            Domain::HostMemory
        };
        assert_eq!(buf.domain(), want, "write {cid}'s buffer");
        assert!(
            buf.as_slice()[..LARGE] == data(cid)[..],
            "write {cid}'s data"
        );
    }
    let qp = c.p2p_counters();
    assert_eq!(qp.cmb_bytes, 2 * LARGE as u64);
    assert_eq!(qp.host_bytes, LARGE as u64);
    assert_eq!(qp.fallback_exhausted, 1);
    assert_eq!(
        staging.borrow().counters()[0],
        qp,
        "the namespace counts the same"
    );
    assert!(
        src.warned.load(std::sync::atomic::Ordering::Relaxed),
        "logged once"
    );
    for s in ready {
        let cid = c.capsule_mut(s).sqe.cid;
        c.complete(s, ok(cid, 0));
    }
    flush(&mut c);
    c.stream.output.clear();

    // The CMB buffers came back to the CMB (not the host pool): an in-capsule 4 KiB write is
    // moved into one of them; a read stays in host memory.
    let payload: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    let sqe = sgl_cmd(opcode::NVM_WRITE, 7, 1, SglDescriptor::in_capsule(0, 4096));
    send_sqe(&mut c, &sqe, Some(&payload));
    send_cmd(&mut c, opcode::NVM_READ, 8, 4096);
    c.poll_recv().unwrap();
    let ready = admit_for_bdev0(&mut c);
    assert_eq!(ready.len(), 2);
    for s in ready {
        let cap = c.capsule_mut(s);
        let buf = cap.buf.as_ref().unwrap();
        if cap.sqe.cid == 7 {
            assert_eq!(buf.domain(), cmb_domain, "in-capsule write data in the CMB");
            assert!(buf.as_slice()[..4096] == payload[..]);
        } else {
            assert_eq!(
                buf.domain(),
                Domain::HostMemory,
                "reads stay in host memory"
            );
        }
        let cid = cap.sqe.cid;
        c.complete(s, ok(cid, 0));
    }
    let qp = c.p2p_counters();
    assert_eq!(qp.cmb_bytes, 2 * LARGE as u64 + 4096);
    assert_eq!(qp.host_bytes, LARGE as u64 + 4096);
    assert_eq!(qp.fallback_exhausted, 1, "no new fallback");
    flush(&mut c);
    drop(c);
    // Every CMB buffer is back in its pool (the cache gives them back when dropped).
    drop(staging);
    assert_eq!(cmb.free_shared(), 2);
}

/// `fetch_ready`: data in place at once (a small read's buffer, in-capsule write data) goes
/// straight back to the caller with no `DataReady` after it; a write whose data comes by R2T
/// still waits for its H2CData and then comes as `DataReady`. The wire is the same either way.
#[test]
fn data_in_place_at_fetch_is_handed_over_at_once_and_only_once() {
    let (mut c, _pool) = conn(4);
    send_cmd(&mut c, opcode::NVM_READ, 1, 4096);
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    let sqe = sgl_cmd(opcode::NVM_WRITE, 2, 1, SglDescriptor::in_capsule(0, 4096));
    send_sqe(&mut c, &sqe, Some(&data));
    send_cmd(&mut c, opcode::NVM_WRITE, 3, 4096);
    c.poll_recv().unwrap();
    let mut direct = Vec::new();
    let mut waiting = Vec::new();
    while let Some(ev) = c.next_event() {
        let ConnEvent::Command { slot, sqe, desc } = ev else {
            panic!("no data is due before the commands are fetched: {ev:?}");
        };
        let len = match desc {
            DataDesc::InCapsule { len, .. } | DataDesc::Remote { len, .. } => len,
            other => panic!("{other:?}"),
        };
        let need = DataNeed {
            len,
            dir: sqe.data_direction(),
            bdev: None,
        };
        if c.fetch_ready(slot, need) {
            direct.push((sqe.cid, slot));
        } else {
            waiting.push((sqe.cid, slot));
        }
    }
    assert_eq!(direct.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(waiting.iter().map(|d| d.0).collect::<Vec<_>>(), [3]);
    let cap = c.capsule_mut(direct[1].1);
    assert_eq!(cap.data_len, 4096);
    assert!(cap.buf.as_ref().unwrap().as_slice()[..4096] == data[..]);
    assert!(
        c.capsule_mut(direct[0].1).buf.is_some(),
        "the read has its buffer"
    );
    assert_eq!(
        sent_types(&mut c),
        [pdu_type::R2T],
        "an R2T for the third only"
    );
    // Nothing more for the two handed over; the third comes once its data is in.
    let h2c = h2c_for(&c, 3, &[0xcd; 4096]);
    c.stream.input.extend(h2c);
    c.poll_recv().unwrap();
    assert_eq!(
        c.next_event(),
        Some(ConnEvent::DataReady { slot: waiting[0].1 })
    );
    assert_eq!(c.next_event(), None);
    c.respond(direct[0].1, ok(1, 4096));
    c.respond(direct[1].1, ok(2, 0));
    c.respond(waiting[0].1, ok(3, 0));
    assert_eq!(
        sent_types(&mut c),
        [
            pdu_type::C2H_DATA,
            pdu_type::CAPSULE_RESP,
            pdu_type::CAPSULE_RESP,
            pdu_type::CAPSULE_RESP
        ]
    );
    assert!(c.inner.slots.iter().all(|s| s.state == SlotState::Free));
}
