//! A receive-heavy SEND/RECV ping-pong over rdma_cm through `nvmfd_transport::rdma::verbs`,
//! server and client in one thread of one process (run on soft-RoCE: see
//! tests/e2e/guest-rdma-pingpong.sh).
//!
//! The server receives on a shared receive queue whose receives are pre-posted and re-posted in
//! batches as they are consumed; both sides poll their CQs in batches into fixed arrays and post
//! only WRs and SGEs built before the loop (no allocation per post). Every message's content is
//! checked. Then RDMA WRITE (server -> client memory, announced by a SEND that RC orders after
//! it) and RDMA READ (client memory -> server) with content checks, a connect rejected with
//! private data, and the listener address check.
//!
//! Prints `PASS name` / `FAIL name: why` per check and `N passed, M failed` last; exit code 1
//! if anything failed.
//!
//! ```text
//! rdma_pingpong --addr 10.0.2.15 [--port 18515] [--iters 10000] [--size 512] [--window 4]
//! ```

use nvmfd_transport::rdma::check_listen_address;
use nvmfd_transport::rdma::verbs::{
    Access, CmId, ConnParam, Cq, Devices, Event, EventChannel, EventKind, HostMem, Mr, Pd, QpCaps,
    RecvWr, SendWr, Sge, Srq, Wc, WcOpcode,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type R<T> = Result<T, String>;

/// Counts the Rust heap allocations, to show the ping-pong loop makes none (C allocations
/// inside libibverbs are not seen; rxe's post and poll paths make none).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout (alloc above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SLOT: usize = 4096;
const SRQ_DEPTH: usize = 64;
const REPOST_BATCH: usize = 8;
const CLIENT_RECVS: usize = 32;
const WC_BATCH: usize = 16;
const RDMA_LEN: usize = 256 * 1024;

const MAGIC_OK: u64 = 0x6e766d66_64706f6e; // "nvmfdpon"
const MAGIC_BAD: u64 = 0x6261645f_6d616769;
const REJECT_DATA: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

const MSG_PING: u8 = 1;
const MSG_PONG: u8 = 2;
const MSG_WRITE_DONE: u8 = 3;

// wr_id = kind << 32 | slot
const K_RECV: u64 = 1;
const K_SEND: u64 = 2;
const K_READ: u64 = 3;
const K_WRITE: u64 = 4;

struct Args {
    addr: IpAddr,
    port: u16,
    iters: u64,
    size: usize,
    window: usize,
}

fn parse_args() -> R<Args> {
    let mut a = Args {
        addr: IpAddr::from([10, 0, 2, 15]),
        port: 18515,
        iters: 10_000,
        size: 512,
        window: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{k} {v}: {e}");
        match k.as_str() {
            "--addr" => a.addr = v.parse().map_err(|e| bad(&e))?,
            "--port" => a.port = v.parse().map_err(|e| bad(&e))?,
            "--iters" => a.iters = v.parse().map_err(|e| bad(&e))?,
            "--size" => a.size = v.parse().map_err(|e| bad(&e))?,
            "--window" => a.window = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if a.size < 16 || a.size > SLOT {
        return Err(format!("--size must be 16..={SLOT}"));
    }
    if a.window == 0 || a.window > 16 {
        return Err("--window must be 1..=16".into());
    }
    Ok(a)
}

/// Message `seq` of type `ty`: [ty][7 x 0][seq LE][pattern].
fn fill(buf: &mut [u8], ty: u8, seq: u64) {
    buf[..8].copy_from_slice(&[ty, 0, 0, 0, 0, 0, 0, 0]);
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    for (k, b) in buf[16..].iter_mut().enumerate() {
        *b = (seq.wrapping_mul(31) as u8) ^ (k as u8).wrapping_mul(7) ^ ty;
    }
}

fn check_msg(buf: &[u8], ty: u8, seq: u64, scratch: &mut [u8]) -> R<()> {
    let want = &mut scratch[..buf.len()];
    fill(want, ty, seq);
    if buf != &want[..] {
        let at = buf
            .iter()
            .zip(want.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "message type {ty} seq {seq}: byte {at} is {:#04x}, expected {:#04x}",
            buf[at], want[at]
        ));
    }
    Ok(())
}

fn rdma_pattern(round: u8, k: usize) -> u8 {
    (k as u8).wrapping_mul(13) ^ ((k >> 8) as u8) ^ round.wrapping_mul(0x55)
}

/// Waits up to 20 s for the next event on `ch`, which must be `want`.
fn wait_event(ch: &EventChannel, want: EventKind, what: &str) -> R<Event> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(ev) = ch.poll().map_err(|e| format!("{what}: {e}"))? {
            if ev.kind == Some(want) {
                return Ok(ev);
            }
            return Err(format!(
                "{what}: got {} (status {}), expected {want:?}",
                ev.name(),
                ev.status
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: no {want:?} event in time"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn ctx_err(what: &'static str) -> impl Fn(nvmfd_transport::rdma::verbs::Error) -> String {
    move |e| format!("{what}: {e}")
}

struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, name: &str, r: R<String>) {
        match r {
            Ok(detail) => {
                self.passed += 1;
                println!(
                    "PASS {name}{}{detail}",
                    if detail.is_empty() { "" } else { ": " }
                );
            }
            Err(why) => {
                self.failed += 1;
                println!("FAIL {name}: {why}");
            }
        }
    }
}

/// One side's memory: a single MR over one mapping, carved into areas.
struct Side {
    mr: Mr,
}

impl Side {
    fn new(pd: &Arc<Pd>, len: usize, access: Access) -> R<Side> {
        let mem = HostMem::new(len).map_err(ctx_err("mmap"))?;
        let mr = Mr::register(pd, mem, access).map_err(ctx_err("ibv_reg_mr"))?;
        Ok(Side { mr })
    }
    fn mem(&self) -> &HostMem {
        self.mr.mem().expect("host MR")
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rdma_pingpong: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rep = Report {
        passed: 0,
        failed: 0,
    };
    if let Err(e) = run(&args, &mut rep) {
        rep.check("run", Err(e));
    }
    println!("{} passed, {} failed", rep.passed, rep.failed);
    if rep.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(a: &Args, rep: &mut Report) -> R<()> {
    let server_addr = SocketAddr::new(a.addr, a.port);

    // The listener check, both ways.
    rep.check(
        "listen address with an RDMA device",
        check_listen_address(server_addr).map(|d| format!("device {}", d.unwrap_or_default())),
    );
    rep.check(
        "listen address without an RDMA device is refused",
        match check_listen_address("192.0.2.1:4420".parse().unwrap()) {
            Ok(d) => Err(format!("accepted (device {d:?})")),
            Err(line)
                if line.starts_with("RDMA listener 192.0.2.1:4420: ") && !line.contains('\n') =>
            {
                Ok(line)
            }
            Err(line) => Err(format!("unexpected message {line:?}")),
        },
    );

    let devices = Devices::open().map_err(ctx_err("rdma_get_devices"))?;
    if devices.is_empty() {
        return Err("no RDMA device (is rxe0 set up?)".into());
    }

    // ---- server: listener, PD, CQ, SRQ with every receive pre-posted
    let sch = EventChannel::new().map_err(ctx_err("server channel"))?;
    let listener = CmId::new(&sch).map_err(ctx_err("server cm_id"))?;
    listener.bind(server_addr).map_err(ctx_err("bind"))?;
    listener.listen(8).map_err(ctx_err("listen"))?;
    let sctx = listener
        .context(&devices)
        .map_err(ctx_err("listener device"))?;
    let spd = Pd::new(&sctx).map_err(ctx_err("server PD"))?;
    let scq = Arc::new(Cq::new(&sctx, 256).map_err(ctx_err("server CQ"))?);
    let srq = Arc::new(Srq::new(&spd, SRQ_DEPTH as u32, 1).map_err(ctx_err("SRQ"))?);
    // Server memory: SRQ_DEPTH receive slots | window send slots | RDMA_LEN read target
    // | RDMA_LEN write source.
    let s_recv_off = 0;
    let s_send_off = SRQ_DEPTH * SLOT;
    let s_read_off = s_send_off + a.window * SLOT;
    let s_write_off = s_read_off + RDMA_LEN;
    let smem = Side::new(&spd, s_write_off + RDMA_LEN, Access::LOCAL_WRITE)?;
    let mut s_recv_sges: Vec<Sge> = (0..SRQ_DEPTH)
        .map(|i| smem.mr.sge(s_recv_off + i * SLOT, SLOT as u32))
        .collect::<Result<_, _>>()
        .map_err(ctx_err("SGE"))?;
    let mut s_recv_wrs: Vec<RecvWr> = s_recv_sges
        .chunks_mut(1)
        .enumerate()
        .map(|(i, sge)| RecvWr::new(K_RECV << 32 | i as u64, sge))
        .collect();
    let mut s_send_sges: Vec<Sge> = (0..a.window)
        .map(|i| smem.mr.sge(s_send_off + i * SLOT, a.size as u32))
        .collect::<Result<_, _>>()
        .map_err(ctx_err("SGE"))?;
    let mut s_send_wrs: Vec<SendWr> = s_send_sges
        .chunks_mut(1)
        .enumerate()
        .map(|(i, sge)| SendWr::send(K_SEND << 32 | i as u64, sge, true))
        .collect();
    // SAFETY: every SGE names the server MR, which lives (with its WRs) until after the
    // connection is torn down at the end of run(); the CPU reads a slot only after its
    // completion and before re-posting it.
    unsafe { srq.post(&mut s_recv_wrs) }.map_err(|e| e.to_string())?;

    // ---- ibv_reg_dmabuf_mr reaches the kernel and fails cleanly: rxe imports no dma-bufs
    // (rig.md), and a memfd is not one anyway
    rep.check("reg_dmabuf_mr error path", dmabuf_refused(&spd));

    // ---- a post larger than the queue is taken in part, and the part is reported
    rep.check(
        "partial post reported",
        partial_post(&spd, &smem, s_write_off),
    );

    // ---- client: resolve, PD, CQ, its own receive queue
    let cch = EventChannel::new().map_err(ctx_err("client channel"))?;
    let mut client = CmId::new(&cch).map_err(ctx_err("client cm_id"))?;
    client
        .resolve_addr(None, server_addr, 2000)
        .map_err(ctx_err("resolve_addr"))?;
    wait_event(&cch, EventKind::AddrResolved, "client")?;
    client
        .resolve_route(2000)
        .map_err(ctx_err("resolve_route"))?;
    wait_event(&cch, EventKind::RouteResolved, "client")?;
    let cctx = client.context(&devices).map_err(ctx_err("client device"))?;
    let cpd = Pd::new(&cctx).map_err(ctx_err("client PD"))?;
    let ccq = Arc::new(Cq::new(&cctx, 256).map_err(ctx_err("client CQ"))?);
    // Client memory: window send slots | CLIENT_RECVS receive slots | RDMA_LEN write target
    // | RDMA_LEN read source (the last two open to the server).
    let c_send_off = 0;
    let c_recv_off = a.window * SLOT;
    let c_wtarget_off = c_recv_off + CLIENT_RECVS * SLOT;
    let c_rsource_off = c_wtarget_off + RDMA_LEN;
    let cmem = Side::new(&cpd, c_rsource_off + RDMA_LEN, Access::ALL)?;
    let mut c_send_sges: Vec<Sge> = (0..a.window)
        .map(|i| cmem.mr.sge(c_send_off + i * SLOT, a.size as u32))
        .collect::<Result<_, _>>()
        .map_err(ctx_err("SGE"))?;
    let mut c_send_wrs: Vec<SendWr> = c_send_sges
        .chunks_mut(1)
        .enumerate()
        .map(|(i, sge)| SendWr::send(K_SEND << 32 | i as u64, sge, true))
        .collect();
    let mut c_recv_sges: Vec<Sge> = (0..CLIENT_RECVS)
        .map(|i| cmem.mr.sge(c_recv_off + i * SLOT, SLOT as u32))
        .collect::<Result<_, _>>()
        .map_err(ctx_err("SGE"))?;
    let mut c_recv_wrs: Vec<RecvWr> = c_recv_sges
        .chunks_mut(1)
        .enumerate()
        .map(|(i, sge)| RecvWr::new(K_RECV << 32 | i as u64, sge))
        .collect();
    let caps = QpCaps {
        max_send_wr: 64,
        max_recv_wr: CLIENT_RECVS as u32,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    client
        .create_qp(&cpd, &ccq, &ccq, None, caps)
        .map_err(ctx_err("client QP"))?;
    // SAFETY: as for the server's receives: client MR and WRs outlive the connection.
    unsafe { client.qp().unwrap().post_recv(&mut c_recv_wrs) }.map_err(|e| e.to_string())?;
    // The read source holds round 1's pattern.
    let mut pattern = vec![0u8; RDMA_LEN];
    for (k, b) in pattern.iter_mut().enumerate() {
        *b = rdma_pattern(1, k);
    }
    cmem.mem()
        .write_at(c_rsource_off, &pattern)
        .map_err(ctx_err("write"))?;

    // ---- a connect with a bad magic is rejected, with private data
    rep.check(
        "reject with private data",
        reject_round(server_addr, &sch, &cch, &devices),
    );

    // ---- the real connection; the client's private data says where its RDMA area is
    let mut priv_data = [0u8; 28];
    priv_data[..8].copy_from_slice(&MAGIC_OK.to_le_bytes());
    priv_data[8..16].copy_from_slice(&(cmem.mr.addr() + c_wtarget_off as u64).to_le_bytes());
    priv_data[16..20].copy_from_slice(&cmem.mr.rkey().to_le_bytes());
    priv_data[20..28].copy_from_slice(&(2 * RDMA_LEN as u64).to_le_bytes());
    client
        .connect(&ConnParam::default(), &priv_data)
        .map_err(ctx_err("connect"))?;
    let mut req = wait_event(&sch, EventKind::ConnectRequest, "server")?;
    let pd_in = req.private_data();
    if pd_in.len() < 28 || u64::from_le_bytes(pd_in[..8].try_into().unwrap()) != MAGIC_OK {
        return Err(format!(
            "connect request private data wrong: {:02x?}",
            pd_in
        ));
    }
    let remote_base = u64::from_le_bytes(pd_in[8..16].try_into().unwrap());
    let remote_rkey = u32::from_le_bytes(pd_in[16..20].try_into().unwrap());
    let mut conn = req.take_id().ok_or("connect request without an id")?;
    let scaps = QpCaps {
        max_send_wr: 64,
        max_recv_wr: 0,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    conn.create_qp(&spd, &scq, &scq, Some(&srq), scaps)
        .map_err(ctx_err("server QP"))?;
    conn.accept(&ConnParam::default(), &MAGIC_OK.to_le_bytes())
        .map_err(ctx_err("accept"))?;
    let est = wait_event(&cch, EventKind::Established, "client")?;
    let accept_data_ok = est.private_data().get(..8) == Some(&MAGIC_OK.to_le_bytes()[..]);
    wait_event(&sch, EventKind::Established, "server")?;
    rep.check(
        "connect/accept with private data",
        if accept_data_ok {
            Ok(format!(
                "server qp {} client qp {}",
                conn.qp().unwrap().qp_num(),
                client.qp().unwrap().qp_num()
            ))
        } else {
            Err(format!(
                "accept private data wrong: {:02x?}",
                est.private_data()
            ))
        },
    );

    // ---- the ping-pong
    let t0 = Instant::now();
    let r = {
        let mut pp = PingPong {
            a,
            smem: &smem,
            cmem: &cmem,
            s_recv_off,
            s_send_off,
            c_send_off,
            c_recv_off,
            srq: &srq,
            scq: &scq,
            ccq: &ccq,
            s_recv_wrs: &mut s_recv_wrs,
            s_send_wrs: &mut s_send_wrs,
            c_send_wrs: &mut c_send_wrs,
            c_recv_wrs: &mut c_recv_wrs,
            sqp: conn.qp().unwrap(),
            cqp: client.qp().unwrap(),
        };
        pp.run()
    };
    let took = t0.elapsed();
    rep.check(
        "send/recv ping-pong on an SRQ with re-posting",
        r.map(|reposts| {
            format!(
                "{} iterations of {} bytes, content checked, no heap allocation, {} SRQ re-posts in batches of {}, {:.1} s, {:.0} us/iteration",
                a.iters,
                a.size,
                reposts,
                REPOST_BATCH,
                took.as_secs_f64(),
                took.as_secs_f64() * 1e6 / a.iters.max(1) as f64
            )
        }),
    );

    // ---- RDMA WRITE then RDMA READ
    let rw = RdmaCheck {
        smem: &smem,
        cmem: &cmem,
        s_read_off,
        s_write_off,
        s_send_off,
        c_wtarget_off,
        c_recv_off,
        remote_base,
        remote_rkey,
        scq: &scq,
        ccq: &ccq,
        sqp: conn.qp().unwrap(),
        cqp: client.qp().unwrap(),
        c_recv_wrs: &mut c_recv_wrs,
    };
    let (w, r) = rw.run();
    rep.check("rdma write (server to client memory), content checked", w);
    rep.check("rdma read (client memory to server), content checked", r);

    // ---- disconnect: the client sends a DREQ; the server sees Disconnected and answers with
    // its own rdma_disconnect (the DREP), and only then does the client see Disconnected.
    client.disconnect().map_err(ctx_err("disconnect"))?;
    let d = wait_event(&sch, EventKind::Disconnected, "server")
        .and_then(|_| conn.disconnect().map_err(ctx_err("server disconnect")))
        .and_then(|_| wait_event(&cch, EventKind::Disconnected, "client"));
    rep.check("disconnect", d.map(|_| String::new()));
    drop(conn);
    drop(client);
    drop(listener);
    Ok(())
}

fn dmabuf_refused(pd: &Arc<Pd>) -> R<String> {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    // SAFETY: memfd_create with a static name; the fd is owned at once.
    let fd = unsafe { libc::memfd_create(c"nvmfd-not-a-dmabuf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    match Mr::register_dmabuf(pd, fd.as_fd(), 0, 4096, 0, Access::LOCAL_WRITE) {
        Ok(_) => Err("a memfd registered as a dma-buf".into()),
        Err(e) => Ok(e.to_string()),
    }
}

/// Posts 64 receives to an SRQ made for 4: the provider takes what fits (rxe rounds queues up)
/// and refuses the rest; the error must say how many were taken.
fn partial_post(pd: &Arc<Pd>, mem: &Side, off: usize) -> R<String> {
    let srq = Srq::new(pd, 4, 1).map_err(ctx_err("small SRQ"))?;
    let mut sges: Vec<Sge> = (0..64)
        .map(|i| mem.mr.sge(off + i * 64, 64))
        .collect::<Result<_, _>>()
        .map_err(ctx_err("SGE"))?;
    let mut wrs: Vec<RecvWr> = sges
        .chunks_mut(1)
        .enumerate()
        .map(|(i, s)| RecvWr::new(i as u64, s))
        .collect();
    // SAFETY: the SGEs name the server MR's write-source area (unused until the RDMA WRITE
    // check), alive past this SRQ, which is destroyed at the end of this function; no QP is
    // attached, so nothing is ever received into it.
    match unsafe { srq.post(&mut wrs) } {
        Ok(()) => Err("an SRQ of 4 took 64 receives".into()),
        Err(e) if e.posted >= 4 && e.posted < 64 && e.total == 64 => Ok(e.to_string()),
        Err(e) => Err(format!("implausible report: {e}")),
    }
}

fn reject_round(
    server_addr: SocketAddr,
    sch: &EventChannel,
    cch: &EventChannel,
    devices: &Arc<Devices>,
) -> R<String> {
    let mut bad = CmId::new(cch).map_err(ctx_err("cm_id"))?;
    bad.resolve_addr(None, server_addr, 2000)
        .map_err(ctx_err("resolve_addr"))?;
    wait_event(cch, EventKind::AddrResolved, "rejected client")?;
    bad.resolve_route(2000).map_err(ctx_err("resolve_route"))?;
    wait_event(cch, EventKind::RouteResolved, "rejected client")?;
    let ctx = bad.context(devices).map_err(ctx_err("device"))?;
    let pd = Pd::new(&ctx).map_err(ctx_err("PD"))?;
    let cq = Arc::new(Cq::new(&ctx, 16).map_err(ctx_err("CQ"))?);
    let caps = QpCaps {
        max_send_wr: 4,
        max_recv_wr: 4,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    bad.create_qp(&pd, &cq, &cq, None, caps)
        .map_err(ctx_err("QP"))?;
    bad.connect(&ConnParam::default(), &MAGIC_BAD.to_le_bytes())
        .map_err(ctx_err("connect"))?;
    let mut req = wait_event(sch, EventKind::ConnectRequest, "server")?;
    if req.private_data().get(..8) != Some(&MAGIC_BAD.to_le_bytes()[..]) {
        return Err(format!("request private data {:02x?}", req.private_data()));
    }
    let id = req.take_id().ok_or("no id")?;
    id.reject(&REJECT_DATA).map_err(ctx_err("reject"))?;
    let ev = wait_event(cch, EventKind::Rejected, "rejected client")?;
    drop(id);
    if ev.private_data().get(..4) != Some(&REJECT_DATA[..]) {
        return Err(format!("reject private data {:02x?}", ev.private_data()));
    }
    Ok(format!(
        "status {}, private data {:02x?}",
        ev.status,
        &ev.private_data()[..4]
    ))
}

struct PingPong<'a> {
    a: &'a Args,
    smem: &'a Side,
    cmem: &'a Side,
    s_recv_off: usize,
    s_send_off: usize,
    c_send_off: usize,
    c_recv_off: usize,
    srq: &'a Srq,
    scq: &'a Cq,
    ccq: &'a Cq,
    s_recv_wrs: &'a mut [RecvWr],
    s_send_wrs: &'a mut [SendWr],
    c_send_wrs: &'a mut [SendWr],
    c_recv_wrs: &'a mut [RecvWr],
    sqp: &'a nvmfd_transport::rdma::verbs::Qp,
    cqp: &'a nvmfd_transport::rdma::verbs::Qp,
}

impl PingPong<'_> {
    /// Runs the iterations; returns how many SRQ re-post calls were made. Nothing in the loop
    /// allocates: WRs, SGEs, WC arrays, re-post lists and message buffers are all made before.
    fn run(&mut self) -> R<u64> {
        let size = self.a.size;
        let w = self.a.window;
        let iters = self.a.iters;
        let mut wcs = [Wc::default(); WC_BATCH];
        let mut msg = vec![0u8; SLOT];
        let mut scratch = vec![0u8; SLOT];
        let mut s_repost: Vec<u32> = Vec::with_capacity(SRQ_DEPTH);
        let mut c_repost: Vec<u32> = Vec::with_capacity(CLIENT_RECVS);
        let mut s_send_busy = vec![false; w];
        let mut c_send_busy = vec![false; w];
        // Pings the server has received but not answered yet (its send slot still busy).
        let mut s_pending: VecDeque<u64> = VecDeque::with_capacity(w + 1);
        let mut next_ping = 0u64; // next seq the client sends
        let mut next_srv = 0u64; // next seq the server expects
        let mut next_pong = 0u64; // next seq the client expects back
        let mut srq_reposts = 0u64;
        let mut last_progress = Instant::now();
        let mut slot_of = [0u32; 1];
        let allocs_before = ALLOCATIONS.load(Ordering::Relaxed);
        while next_pong < iters {
            // client: send while the window and the send slots allow
            while next_ping < iters
                && next_ping < next_pong + w as u64
                && !c_send_busy[(next_ping % w as u64) as usize]
            {
                let s = (next_ping % w as u64) as usize;
                fill(&mut msg[..size], MSG_PING, next_ping);
                self.cmem
                    .mem()
                    .write_at(self.c_send_off + s * SLOT, &msg[..size])
                    .map_err(|e| e.to_string())?;
                slot_of[0] = s as u32;
                // SAFETY: the slot's SGE names the client MR (alive); the slot is not busy, so
                // no earlier post of it is outstanding.
                unsafe { self.cqp.post_send_slots(self.c_send_wrs, &slot_of) }
                    .map_err(|e| e.to_string())?;
                c_send_busy[s] = true;
                next_ping += 1;
            }
            // server: answer pings whose send slot became free
            while let Some(&seq) = s_pending.front() {
                let t = (seq % w as u64) as usize;
                if s_send_busy[t] {
                    break;
                }
                s_pending.pop_front();
                fill(&mut msg[..size], MSG_PONG, seq);
                self.smem
                    .mem()
                    .write_at(self.s_send_off + t * SLOT, &msg[..size])
                    .map_err(|e| e.to_string())?;
                slot_of[0] = t as u32;
                // SAFETY: server MR alive; slot t has no outstanding post (not busy).
                unsafe { self.sqp.post_send_slots(self.s_send_wrs, &slot_of) }
                    .map_err(|e| e.to_string())?;
                s_send_busy[t] = true;
            }
            let mut progressed = false;
            // server CQ: receives (from the SRQ) and its send completions
            let n = self.scq.poll(&mut wcs).map_err(|e| e.to_string())?;
            for wc in &wcs[..n] {
                progressed = true;
                if !wc.is_ok() {
                    return Err(format!(
                        "server completion {:#x}: {} ({})",
                        wc.wr_id(),
                        wc.status_str(),
                        wc.status()
                    ));
                }
                let slot = (wc.wr_id() & 0xffff_ffff) as usize;
                match (wc.wr_id() >> 32, wc.opcode()) {
                    (K_RECV, WcOpcode::Recv) => {
                        if wc.byte_len() as usize != size {
                            return Err(format!(
                                "server received {} bytes, expected {size}",
                                wc.byte_len()
                            ));
                        }
                        self.smem
                            .mem()
                            .read_at(self.s_recv_off + slot * SLOT, &mut msg[..size])
                            .map_err(|e| e.to_string())?;
                        check_msg(&msg[..size], MSG_PING, next_srv, &mut scratch)?;
                        s_pending.push_back(next_srv);
                        next_srv += 1;
                        s_repost.push(slot as u32);
                        if s_repost.len() >= REPOST_BATCH {
                            // SAFETY: the slots' receives completed and their content was copied
                            // out; the server MR is alive.
                            unsafe { self.srq.post_slots(self.s_recv_wrs, &s_repost) }
                                .map_err(|e| e.to_string())?;
                            s_repost.clear();
                            srq_reposts += 1;
                        }
                    }
                    (K_SEND, WcOpcode::Send) => s_send_busy[slot] = false,
                    (k, op) => {
                        return Err(format!(
                            "server: unexpected completion kind {k} opcode {op:?}"
                        ))
                    }
                }
            }
            // client CQ
            let n = self.ccq.poll(&mut wcs).map_err(|e| e.to_string())?;
            for wc in &wcs[..n] {
                progressed = true;
                if !wc.is_ok() {
                    return Err(format!(
                        "client completion {:#x}: {} ({})",
                        wc.wr_id(),
                        wc.status_str(),
                        wc.status()
                    ));
                }
                let slot = (wc.wr_id() & 0xffff_ffff) as usize;
                match (wc.wr_id() >> 32, wc.opcode()) {
                    (K_RECV, WcOpcode::Recv) => {
                        if wc.byte_len() as usize != size {
                            return Err(format!(
                                "client received {} bytes, expected {size}",
                                wc.byte_len()
                            ));
                        }
                        self.cmem
                            .mem()
                            .read_at(self.c_recv_off + slot * SLOT, &mut msg[..size])
                            .map_err(|e| e.to_string())?;
                        check_msg(&msg[..size], MSG_PONG, next_pong, &mut scratch)?;
                        next_pong += 1;
                        c_repost.push(slot as u32);
                        if c_repost.len() >= REPOST_BATCH {
                            // SAFETY: as for the SRQ, on the client's own receive queue.
                            unsafe { self.cqp.post_recv_slots(self.c_recv_wrs, &c_repost) }
                                .map_err(|e| e.to_string())?;
                            c_repost.clear();
                        }
                    }
                    (K_SEND, WcOpcode::Send) => c_send_busy[slot] = false,
                    (k, op) => {
                        return Err(format!(
                            "client: unexpected completion kind {k} opcode {op:?}"
                        ))
                    }
                }
            }
            if progressed {
                last_progress = Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "stalled: client sent {next_ping}, server got {next_srv}, client got {next_pong} back"
                ));
            }
        }
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs_before;
        if allocs != 0 {
            return Err(format!(
                "{allocs} heap allocations in the ping-pong loop (expected none)"
            ));
        }
        // Drain the last send completions, then put every consumed receive back (so the RDMA
        // phase starts with full queues).
        let until = Instant::now() + Duration::from_secs(10);
        while s_send_busy.iter().any(|&b| b) || c_send_busy.iter().any(|&b| b) {
            for (cq, busy) in [(self.scq, &mut s_send_busy), (self.ccq, &mut c_send_busy)] {
                let n = cq.poll(&mut wcs).map_err(|e| e.to_string())?;
                for wc in &wcs[..n] {
                    if !wc.is_ok() || wc.wr_id() >> 32 != K_SEND {
                        return Err(format!(
                            "drain: completion {:#x} {}",
                            wc.wr_id(),
                            wc.status_str()
                        ));
                    }
                    busy[(wc.wr_id() & 0xffff_ffff) as usize] = false;
                }
            }
            if Instant::now() > until {
                return Err("send completions missing after the last iteration".into());
            }
        }
        // SAFETY: as above: completed, copied out, MRs alive.
        unsafe {
            self.srq
                .post_slots(self.s_recv_wrs, &s_repost)
                .map_err(|e| e.to_string())?;
            self.cqp
                .post_recv_slots(self.c_recv_wrs, &c_repost)
                .map_err(|e| e.to_string())?;
        }
        if next_srv != iters {
            return Err(format!(
                "server received {next_srv} pings, expected {iters}"
            ));
        }
        Ok(srq_reposts)
    }
}

struct RdmaCheck<'a> {
    smem: &'a Side,
    cmem: &'a Side,
    s_read_off: usize,
    s_write_off: usize,
    s_send_off: usize,
    c_wtarget_off: usize,
    c_recv_off: usize,
    remote_base: u64,
    remote_rkey: u32,
    scq: &'a Cq,
    ccq: &'a Cq,
    sqp: &'a nvmfd_transport::rdma::verbs::Qp,
    cqp: &'a nvmfd_transport::rdma::verbs::Qp,
    c_recv_wrs: &'a mut [RecvWr],
}

fn wait_wc(cq: &Cq, what: &str) -> R<Wc> {
    let mut wcs = [Wc::default(); 1];
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if cq.poll(&mut wcs).map_err(|e| e.to_string())? == 1 {
            let wc = wcs[0];
            if !wc.is_ok() {
                return Err(format!(
                    "{what}: completion {:#x} {} ({})",
                    wc.wr_id(),
                    wc.status_str(),
                    wc.status()
                ));
            }
            return Ok(wc);
        }
        if Instant::now() > until {
            return Err(format!("{what}: no completion"));
        }
    }
}

impl RdmaCheck<'_> {
    fn run(mut self) -> (R<String>, R<String>) {
        let w = self.write();
        let r = self.read();
        (w, r)
    }

    /// The server writes round 2's pattern into the client's write target, then SENDs
    /// "write done"; RC ordering places the data before that SEND's receive completes.
    fn write(&mut self) -> R<String> {
        let mut pattern = vec![0u8; RDMA_LEN];
        for (k, b) in pattern.iter_mut().enumerate() {
            *b = rdma_pattern(2, k);
        }
        self.smem
            .mem()
            .write_at(self.s_write_off, &pattern)
            .map_err(|e| e.to_string())?;
        self.cmem
            .mem()
            .write_at(self.c_wtarget_off, &vec![0u8; RDMA_LEN])
            .map_err(|e| e.to_string())?;
        let mut msg = [0u8; 64];
        fill(&mut msg, MSG_WRITE_DONE, 2);
        self.smem
            .mem()
            .write_at(self.s_send_off, &msg)
            .map_err(|e| e.to_string())?;
        let mut sge_w = [self
            .smem
            .mr
            .sge(self.s_write_off, RDMA_LEN as u32)
            .map_err(|e| e.to_string())?];
        let mut sge_s = [self
            .smem
            .mr
            .sge(self.s_send_off, 64)
            .map_err(|e| e.to_string())?];
        // The write target is the first RDMA_LEN bytes the client advertised.
        let mut wrs = [
            SendWr::rdma_write(
                K_WRITE << 32,
                &mut sge_w,
                self.remote_base,
                self.remote_rkey,
                true,
            ),
            SendWr::send(K_SEND << 32, &mut sge_s, true),
        ];
        // SAFETY: both SGEs name the server MR (alive until run() ends); the CPU does not touch
        // those areas until both completions are polled below.
        unsafe { self.sqp.post_send(&mut wrs) }.map_err(|e| e.to_string())?;
        let wc1 = wait_wc(self.scq, "rdma write")?;
        let wc2 = wait_wc(self.scq, "write-done send")?;
        if wc1.opcode() != WcOpcode::RdmaWrite || wc2.opcode() != WcOpcode::Send {
            return Err(format!("completions {:?} {:?}", wc1.opcode(), wc2.opcode()));
        }
        let wc = wait_wc(self.ccq, "write-done receive")?;
        if wc.opcode() != WcOpcode::Recv || wc.byte_len() != 64 {
            return Err(format!(
                "client got {:?} of {} bytes",
                wc.opcode(),
                wc.byte_len()
            ));
        }
        let slot = (wc.wr_id() & 0xffff_ffff) as usize;
        let mut got = [0u8; 64];
        self.cmem
            .mem()
            .read_at(self.c_recv_off + slot * SLOT, &mut got)
            .map_err(|e| e.to_string())?;
        let mut scratch = [0u8; 64];
        check_msg(&got, MSG_WRITE_DONE, 2, &mut scratch)?;
        let mut landed = vec![0u8; RDMA_LEN];
        self.cmem
            .mem()
            .read_at(self.c_wtarget_off, &mut landed)
            .map_err(|e| e.to_string())?;
        if landed != pattern {
            let at = landed
                .iter()
                .zip(&pattern)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "client memory differs from what was written at byte {at}"
            ));
        }
        // SAFETY: that receive completed and was copied out; the client MR is alive.
        unsafe { self.cqp.post_recv_slots(self.c_recv_wrs, &[slot as u32]) }
            .map_err(|e| e.to_string())?;
        Ok(format!("{RDMA_LEN} bytes"))
    }

    /// The server reads the client's read source (round 1's pattern, written before connect).
    fn read(&self) -> R<String> {
        self.smem
            .mem()
            .write_at(self.s_read_off, &vec![0u8; RDMA_LEN])
            .map_err(|e| e.to_string())?;
        let mut sge = [self
            .smem
            .mr
            .sge(self.s_read_off, RDMA_LEN as u32)
            .map_err(|e| e.to_string())?];
        let mut wrs = [SendWr::rdma_read(
            K_READ << 32,
            &mut sge,
            self.remote_base + RDMA_LEN as u64,
            self.remote_rkey,
            true,
        )];
        // SAFETY: the SGE names the server MR; the CPU reads the area only after the completion.
        unsafe { self.sqp.post_send(&mut wrs) }.map_err(|e| e.to_string())?;
        let wc = wait_wc(self.scq, "rdma read")?;
        if wc.opcode() != WcOpcode::RdmaRead {
            return Err(format!("completion {:?}", wc.opcode()));
        }
        let mut got = vec![0u8; RDMA_LEN];
        self.smem
            .mem()
            .read_at(self.s_read_off, &mut got)
            .map_err(|e| e.to_string())?;
        for (k, b) in got.iter().enumerate() {
            if *b != rdma_pattern(1, k) {
                return Err(format!(
                    "byte {k} read {b:#04x}, expected {:#04x}",
                    rdma_pattern(1, k)
                ));
            }
        }
        Ok(format!("{RDMA_LEN} bytes"))
    }
}
