//! Connection-level tests over an in-memory stream (the daemon's tests in target/tests drive the
//! same code over real sockets; here the test controls exactly when buffers come back).

use super::*;
use crate::proto::nvme::{opcode, Sqe};
use crate::proto::tcp::{encode_capsule_cmd, pdu_type, IcReq};

/// Bytes the "host" wrote, read by the connection; and what the connection wrote.
#[derive(Default)]
struct MemStream {
    input: VecDeque<u8>,
    output: Vec<u8>,
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

impl Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const LARGE: usize = 128 * 1024;

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
    let params = TcpParams {
        in_capsule_data_size: 8192,
        max_io_size: LARGE as u32,
        max_queue_depth: 32,
        header_digest: DigestMode::Allowed,
        data_digest: DigestMode::Allowed,
        c2h_success: false,
    };
    let mut c = TcpConn::new(MemStream::default(), params, pool.clone());
    let mut ic = Vec::new();
    IcReq {
        pfv: 0,
        hpda: 0,
        digests,
        maxr2t: 0,
    }
    .encode(&mut ic);
    c.stream.input.extend(ic);
    c.poll_recv().unwrap();
    c.poll_send().unwrap();
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

/// Types of the PDUs the connection wrote since the last call.
fn sent_types(c: &mut TcpConn<MemStream>) -> Vec<u8> {
    c.poll_send().unwrap();
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
    c.poll_recv().unwrap();
    let first = c.next_ready().expect("the first read has the only buffer");
    assert!(c.next_ready().is_none(), "the others wait for it");
    assert!(c.awaiting_buffers());
    assert_eq!(pool.borrow().large_made(), 1);
    // Small commands are not held up behind them.
    send_cmd(&mut c, opcode::NVM_READ, 9, 4096);
    c.poll_recv().unwrap();
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
        c.poll_recv().unwrap();
        let s = c
            .next_ready()
            .expect("the returned buffer goes to the next read");
        assert_eq!(c.capsule_mut(s).sqe.cid, cid, "in arrival order");
        assert!(c.next_ready().is_none());
        c.complete(s, ok(cid, LARGE as u32));
        c.poll_send().unwrap();
    }
    assert!(!c.awaiting_buffers());
    assert_eq!(pool.borrow().large_made(), 1, "never more than the cap");
}

#[test]
fn writes_get_their_r2t_only_once_they_have_a_buffer() {
    let (mut c, pool) = conn(2);
    for cid in 0..3 {
        send_cmd(&mut c, opcode::NVM_WRITE, cid, LARGE as u32);
    }
    c.poll_recv().unwrap();
    assert_eq!(sent_types(&mut c), [0x09, 0x09], "two R2Ts for two buffers");
    assert!(c.awaiting_buffers());
    // The host answers the first R2T; that write runs and completes, freeing its buffer.
    let b = h2c_for(&c, 0, &vec![7u8; LARGE]);
    c.stream.input.extend(b);
    c.poll_recv().unwrap();
    let s = c.next_ready().expect("the write's data arrived");
    assert!(c.capsule_mut(s).buf.as_ref().unwrap().as_slice()[..LARGE]
        .iter()
        .all(|&x| x == 7));
    c.complete(s, ok(0, 0));
    assert_eq!(sent_types(&mut c), [0x05]);
    c.poll_recv().unwrap();
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
    a.poll_recv().unwrap();
    let a0 = a.next_ready().unwrap();
    send_cmd(&mut b, opcode::NVM_READ, 0, LARGE as u32);
    b.poll_recv().unwrap();
    assert!(b.next_ready().is_none(), "b waits");
    send_cmd(&mut a, opcode::NVM_READ, 1, LARGE as u32);
    a.complete(a0, ok(0, LARGE as u32));
    a.poll_send().unwrap();
    // a is polled first and has a command waiting too, but b asked first.
    a.poll_recv().unwrap();
    assert!(
        a.next_ready().is_none(),
        "a's second read queues behind b's"
    );
    b.poll_recv().unwrap();
    let b0 = b.next_ready().expect("b's turn");
    b.complete(b0, ok(0, LARGE as u32));
    b.poll_send().unwrap();
    a.poll_recv().unwrap();
    let a1 = a.next_ready().expect("then a's");
    // A connection that closes while waiting gives up its place.
    send_cmd(&mut b, opcode::NVM_READ, 1, LARGE as u32);
    b.poll_recv().unwrap();
    assert!(b.awaiting_buffers());
    drop(b);
    a.complete(a1, ok(1, LARGE as u32));
    a.poll_send().unwrap();
    assert!(
        pool.borrow_mut().try_get(LARGE).is_some(),
        "nobody queued any more"
    );
    let mut c = conn_on(&pool);
    send_cmd(&mut c, opcode::NVM_WRITE, 0, 4096);
    c.poll_recv().unwrap();
    assert_eq!(sent_types(&mut c), [0x09], "small transfers never wait");
}

/// `data` (whole 4 KiB blocks) as a RAM disk lends it for a read.
fn lent(data: &[u8]) -> nvmfd_bdev::Lent {
    use nvmfd_bdev::{Bdev, Io, IoBuf, Malloc, Op};
    let m = Malloc::new("m", 1 << 20, 4096).unwrap();
    let mut ch = m.channel().unwrap();
    let blocks = (data.len() / 4096) as u32;
    let mut buf = IoBuf::new(data.len());
    buf.as_mut_slice()[..data.len()].copy_from_slice(data);
    let mut last = None;
    for op in [
        Op::Write {
            lba: 0,
            blocks,
            fua: false,
        },
        Op::ReadLent { lba: 0, blocks },
    ] {
        ch.submit(Io { tag: 0, op, buf }).unwrap();
        let mut done = None;
        ch.poll(&mut |c| done = Some(c));
        let c = done.unwrap();
        assert_eq!(c.result, Ok(()));
        buf = c.buf;
        last = c.lent;
    }
    last.expect("malloc lends")
}

#[test]
fn read_data_lent_by_a_device_goes_out_as_it_is() {
    let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 4)));
    let mut c = conn_on(&pool);
    assert!(c.takes_lent_data());
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 1) as u8).collect();
    send_cmd(&mut c, opcode::NVM_READ, 5, 8192);
    c.poll_recv().unwrap();
    let s = c.next_ready().unwrap();
    c.capsule_mut(s).lent = Some(lent(&data));
    c.complete(s, ok(5, 8192));
    c.poll_send().unwrap();
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
    c.poll_recv().unwrap();
    let s = c.next_ready().unwrap();
    // Against the contract, the data comes lent anyway: the command fails, nothing unchecked
    // goes out.
    c.capsule_mut(s).lent = Some(lent(&data));
    c.complete(s, ok(8, 4096));
    c.poll_send().unwrap();
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
        let pool = Rc::new(RefCell::new(BufPool::new(8192, 0, LARGE, 0, 4)));
        let mut c = conn_with(&pool, digests);
        send_cmd(&mut c, opcode::NVM_WRITE, 1, LARGE as u32);
        send_cmd(&mut c, opcode::NVM_WRITE, 2, LARGE as u32);
        c.poll_recv().unwrap();
        assert_eq!(sent_types(&mut c), [0x09, 0x09]);
        let data =
            |cid: u16| -> Vec<u8> { (0..LARGE).map(|i| (i / 7) as u8 ^ cid as u8).collect() };
        let mut input = h2c_for(&c, 1, &data(1));
        input.extend(h2c_for(&c, 2, &data(2)));
        c.stream.input.extend(input);
        send_cmd(&mut c, opcode::NVM_READ, 3, 4096);
        while c.poll_recv().unwrap() {}
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
