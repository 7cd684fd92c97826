//! `nvmfd-nvme-selftest --pci BDF [--nsid N]`: drive an SSD bound to vfio-pci through the
//! userspace driver and check what it does, end to end: host-memory write/read round trips of
//! several shapes (PRP1 only, PRP2 as page, PRP lists), Write Zeroes, Flush, Compare, errors for
//! LBAs past the end and for a namespace the SSD lacks, and with a CMB: CMB -> host and
//! host -> CMB round trips and status 0x12 for a command that mixes both. Writes the namespace's
//! first blocks and its last block: use a scratch SSD. Exit 0 only when every check passed.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvmfd_nvme::cmd::{nvm, Cqe, Sqe, Status};
use nvmfd_nvme::prp::Segment;
use nvmfd_nvme::{Controller, DmaRegion, IoQpair, MakePool, OpenOptions};
use nvmfd_p2p::mem::Domain;

struct T {
    failed: u32,
}

impl T {
    fn check(&mut self, what: &str, ok: bool, detail: String) {
        if ok {
            println!("PASS {what}");
        } else {
            println!("FAIL {what}: {detail}");
            self.failed += 1;
        }
    }
}

fn run(q: &mut IoQpair, sqe: Sqe, segs: &[Segment]) -> Result<Cqe, String> {
    q.submit(sqe, segs, 7).map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        let mut got = None;
        q.poll(&mut |_, c, _| got = Some(c));
        if let Some(c) = got {
            return Ok(c);
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err("no completion in 30 s".into());
        }
    }
}

fn rw(op: u8, nsid: u32, lba: u64, blocks: u32) -> Sqe {
    let mut s = Sqe::new(op, nsid);
    s.set_lba_range(lba, blocks);
    s
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn status_of(r: &Result<Cqe, String>) -> String {
    match r {
        Ok(c) => c.status().to_string(),
        Err(e) => e.clone(),
    }
}

fn main() -> ExitCode {
    tracing_init();
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(bdf) = get("--pci") else {
        eprintln!("usage: nvmfd-nvme-selftest --pci BDF [--nsid N]");
        return ExitCode::from(2);
    };
    let nsid: u32 = get("--nsid").and_then(|s| s.parse().ok()).unwrap_or(1);
    let ctrl = match Controller::open(&bdf, &OpenOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("open {bdf}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut t = T { failed: 0 };
    let info = ctrl.info().clone();
    println!(
        "controller {bdf}: {} sn {} mdts {} bytes, {} namespaces, oncs {:#x}, cmb {} bytes",
        info.model,
        info.serial,
        info.max_transfer,
        info.nn,
        info.oncs,
        ctrl.cmb().map_or(0, |c| c.len())
    );
    let bad = ctrl.namespace(info.nn + 1);
    t.check(
        "namespace the SSD does not have is refused",
        matches!(&bad, Err(e) if e.to_string().contains("does not exist")),
        format!("{bad:?}"),
    );
    let ns = match ctrl.namespace(nsid) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "namespace {nsid}: {} blocks of {} bytes",
        ns.blocks, ns.block_size
    );
    let bs = ns.block_size as usize;
    let mut q = match ctrl.io_qpair(64) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("I/O queue: {e}");
            return ExitCode::FAILURE;
        }
    };
    let buf = match ctrl.dma_region(4 << 20) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("DMA region: {e}");
            return ExitCode::FAILURE;
        }
    };
    host_roundtrips(&mut t, &mut q, &buf, nsid, bs, ns.blocks);
    errors(&mut t, &mut q, &buf, nsid, bs, ns.blocks);
    if ctrl.cmb().is_some() {
        cmb_checks(&mut t, &ctrl, &mut q, &buf, nsid, bs);
    } else {
        println!("SKIP CMB checks: the controller has no usable CMB");
    }
    reset_checks(&mut t, &ctrl, &mut q, &buf, nsid, bs);
    drop(q);
    drop(buf);
    drop(ctrl);
    if t.failed == 0 {
        println!("ALL PASSED");
        ExitCode::SUCCESS
    } else {
        println!("{} FAILED", t.failed);
        ExitCode::FAILURE
    }
}

fn host_roundtrips(t: &mut T, q: &mut IoQpair, buf: &DmaRegion, nsid: u32, bs: usize, blocks: u64) {
    let half = 2 << 20;
    // (offset in the buffer, bytes): PRP1 only; PRP1 + PRP2 page (offset start crossing a page);
    // a PRP list; the largest transfer.
    let max = q.max_transfer().min(half);
    let shapes = [
        (0usize, bs),
        (4096 - 512, 4096),
        (0, 128 << 10),
        (512, 64 << 10),
        (0, max),
    ];
    for (i, &(off, len)) in shapes.iter().enumerate() {
        if len % bs != 0 || off % 4 != 0 || off + len > half {
            continue;
        }
        let lba = 64 * i as u64;
        let n = (len / bs) as u32;
        if lba + u64::from(n) > blocks {
            continue;
        }
        let data = pattern(i as u64 + 1, len);
        buf.write(off, &data);
        let seg = [Segment {
            addr: buf.iova() + off as u64,
            len,
        }];
        let w = run(q, rw(nvm::WRITE, nsid, lba, n), &seg);
        buf.fill(half + off, len, 0xee);
        let rseg = [Segment {
            addr: buf.iova() + (half + off) as u64,
            len,
        }];
        let r = run(q, rw(nvm::READ, nsid, lba, n), &rseg);
        let mut back = vec![0u8; len];
        buf.read(half + off, &mut back);
        t.check(
            &format!("host write+read {len} bytes at buffer offset {off}"),
            matches!((&w, &r), (Ok(a), Ok(b)) if a.status().is_success() && b.status().is_success())
                && back == data,
            format!(
                "write {} read {} equal {}",
                status_of(&w),
                status_of(&r),
                back == data
            ),
        );
    }
    // FUA write, Flush, Write Zeroes.
    let data = pattern(99, bs);
    buf.write(0, &data);
    let mut s = rw(nvm::WRITE, nsid, 1000, 1);
    s.set_fua(true);
    let w = run(
        q,
        s,
        &[Segment {
            addr: buf.iova(),
            len: bs,
        }],
    );
    t.check(
        "FUA write",
        w.as_ref().is_ok_and(|c| c.status().is_success()),
        status_of(&w),
    );
    let f = run(q, Sqe::new(nvm::FLUSH, nsid), &[]);
    t.check(
        "flush",
        f.as_ref().is_ok_and(|c| c.status().is_success()),
        status_of(&f),
    );
    let z = run(q, rw(nvm::WRITE_ZEROES, nsid, 1000, 1), &[]);
    buf.fill(0, bs, 0x55);
    let r = run(
        q,
        rw(nvm::READ, nsid, 1000, 1),
        &[Segment {
            addr: buf.iova(),
            len: bs,
        }],
    );
    let mut back = vec![1u8; bs];
    buf.read(0, &mut back);
    t.check(
        "write zeroes reads back zeroes",
        z.as_ref().is_ok_and(|c| c.status().is_success())
            && r.is_ok()
            && back.iter().all(|&b| b == 0),
        format!("zeroes {} read {}", status_of(&z), status_of(&r)),
    );
    // Compare: equal data succeeds, different data fails with Compare Failure (SCT 2, SC 0x85).
    let data = pattern(5, bs);
    buf.write(0, &data);
    let _ = run(
        q,
        rw(nvm::WRITE, nsid, 1001, 1),
        &[Segment {
            addr: buf.iova(),
            len: bs,
        }],
    );
    let c = run(
        q,
        rw(nvm::COMPARE, nsid, 1001, 1),
        &[Segment {
            addr: buf.iova(),
            len: bs,
        }],
    );
    buf.fill(0, 1, !data[0]);
    let d = run(
        q,
        rw(nvm::COMPARE, nsid, 1001, 1),
        &[Segment {
            addr: buf.iova(),
            len: bs,
        }],
    );
    t.check(
        "compare equal succeeds, different fails with 0x285",
        c.as_ref().is_ok_and(|c| c.status().is_success())
            && d.as_ref()
                .is_ok_and(|c| c.status().sct() == 2 && c.status().sc() == 0x85),
        format!("equal {} different {}", status_of(&c), status_of(&d)),
    );
    // Dataset Management (deallocate) of one range.
    buf.fill(0, 4096, 0);
    let mut range = [0u8; 16];
    range[4..8].copy_from_slice(&1u32.to_le_bytes());
    range[8..16].copy_from_slice(&1001u64.to_le_bytes());
    buf.write(0, &range);
    let mut s = Sqe::new(nvm::DSM, nsid);
    s.dw[10] = 0;
    s.dw[11] = 1 << 2;
    let m = run(
        q,
        s,
        &[Segment {
            addr: buf.iova(),
            len: 4096,
        }],
    );
    t.check(
        "dataset management deallocate",
        m.as_ref().is_ok_and(|c| c.status().is_success()),
        status_of(&m),
    );
}

fn errors(t: &mut T, q: &mut IoQpair, buf: &DmaRegion, nsid: u32, bs: usize, blocks: u64) {
    // Last block works; one past the end is LBA Out of Range (generic 0x80).
    let seg = [Segment {
        addr: buf.iova(),
        len: bs,
    }];
    let ok = run(q, rw(nvm::READ, nsid, blocks - 1, 1), &seg);
    let past = run(q, rw(nvm::READ, nsid, blocks, 1), &seg);
    let span = run(
        q,
        rw(nvm::READ, nsid, blocks - 1, 2),
        &[Segment {
            addr: buf.iova(),
            len: 2 * bs,
        }],
    );
    t.check(
        "last LBA reads; LBA past the end and a range over the end get 0x80",
        ok.as_ref().is_ok_and(|c| c.status().is_success())
            && [&past, &span].iter().all(|r| {
                r.as_ref()
                    .is_ok_and(|c| c.status().sct() == 0 && c.status().sc() == 0x80)
            }),
        format!(
            "last {} past {} span {}",
            status_of(&ok),
            status_of(&past),
            status_of(&span)
        ),
    );
    let big = q.max_transfer() + 4096;
    let e = q.submit(
        rw(nvm::READ, nsid, 0, (big / bs) as u32),
        &[Segment {
            addr: buf.iova(),
            len: big,
        }],
        1,
    );
    t.check(
        "transfer above MDTS refused before submission",
        matches!(e, Err(nvmfd_nvme::SubmitError::TooLarge { .. })),
        format!("{e:?}"),
    );
}

fn cmb_checks(
    t: &mut T,
    ctrl: &Arc<Controller>,
    q: &mut IoQpair,
    buf: &DmaRegion,
    nsid: u32,
    bs: usize,
) {
    let cmb = ctrl.cmb().expect("checked");
    // The pool is made once: a size that does not fit is refused without losing the CMB, the
    // first good call makes it, a later one gets the existing pool back.
    let refused = matches!(cmb.make_pool(3000, &[]), Err(MakePool::Refused(_)));
    let pool = cmb.pool();
    let again = matches!(cmb.make_pool(pool.buf_size(), &[]), Err(MakePool::Made(p)) if Arc::ptr_eq(p, pool));
    t.check(
        "CMB pool: a bad buffer size refused, made once, then handed back",
        refused && again,
        format!("refused {refused} again {again}"),
    );
    let len = 64 << 10;
    let n = (len / bs) as u32;
    // The CMB is a memory domain: buffers from a per-reactor cache of the shared pool, each with
    // its CPU address and the controller address PRPs use.
    let mut cache = pool.cache(4);
    let (Some(mut a), Some(mut b)) = (cache.try_get(len), cache.try_get(len)) else {
        t.check("CMB domain hands out buffers", false, format!("{pool:?}"));
        return;
    };
    let (aa, ba) = (a.device_addr(), b.device_addr());
    t.check(
        "CMB domain: buffers in Domain::Cmb with controller addresses inside the CMB",
        a.domain() == Domain::Cmb { device: ctrl.id() }
            && pool.total() == cmb.len() / pool.buf_size()
            && aa.is_some_and(|x| cmb.contains(x, a.capacity()))
            && ba.is_some_and(|x| cmb.contains(x, b.capacity()))
            && aa != ba,
        format!(
            "domain {:?} total {} addrs {aa:x?} {ba:x?} cmb {:#x}+{:#x}",
            a.domain(),
            pool.total(),
            cmb.ctrl_addr,
            cmb.len()
        ),
    );
    let (aa, ba) = (aa.unwrap_or(0), ba.unwrap_or(0));
    // CMB buffer -> SSD -> host memory.
    let data = pattern(1234, len);
    a.as_mut_slice()[..len].copy_from_slice(&data);
    let w = run(
        q,
        rw(nvm::WRITE, nsid, 4096, n),
        &[Segment { addr: aa, len }],
    );
    buf.fill(0, len, 0);
    let r = run(
        q,
        rw(nvm::READ, nsid, 4096, n),
        &[Segment {
            addr: buf.iova(),
            len,
        }],
    );
    let mut back = vec![0u8; len];
    buf.read(0, &mut back);
    t.check(
        "write from a CMB buffer, read into host memory: same bytes",
        w.as_ref().is_ok_and(|c| c.status().is_success())
            && r.as_ref().is_ok_and(|c| c.status().is_success())
            && back == data,
        format!(
            "write {} read {} equal {}",
            status_of(&w),
            status_of(&r),
            back == data
        ),
    );
    // Host memory -> SSD -> CMB buffer.
    let data = pattern(4321, len);
    buf.write(0, &data);
    let w = run(
        q,
        rw(nvm::WRITE, nsid, 8192, n),
        &[Segment {
            addr: buf.iova(),
            len,
        }],
    );
    b.as_mut_slice().fill(0);
    let r = run(
        q,
        rw(nvm::READ, nsid, 8192, n),
        &[Segment { addr: ba, len }],
    );
    let same = b.as_slice()[..len] == data[..];
    t.check(
        "write from host memory, read into a CMB buffer: same bytes",
        w.as_ref().is_ok_and(|c| c.status().is_success())
            && r.as_ref().is_ok_and(|c| c.status().is_success())
            && same,
        format!(
            "write {} read {} equal {same}",
            status_of(&w),
            status_of(&r)
        ),
    );
    // Mixed: first page in a CMB buffer, second in host memory -> Invalid Use of CMB (0x12).
    let segs = [
        Segment {
            addr: aa,
            len: 4096,
        },
        Segment {
            addr: buf.iova() + 4096,
            len: 4096,
        },
    ];
    let m = run(q, rw(nvm::READ, nsid, 0, (8192 / bs) as u32), &segs);
    t.check(
        "a command mixing CMB and host data gets 0x12",
        m.as_ref()
            .is_ok_and(|c| c.status().sct() == 0 && c.status().sc() == Status::INVALID_CMB_USE),
        status_of(&m),
    );
    cache.put(a);
    cache.put(b);
}

/// A controller reset under queued commands: each comes back once with the retryable status
/// (0x08 without DNR), the queue pair re-creates its queues, I/O and the CMB work again.
fn reset_checks(
    t: &mut T,
    ctrl: &Arc<Controller>,
    q: &mut IoQpair,
    buf: &DmaRegion,
    nsid: u32,
    bs: usize,
) {
    let g0 = ctrl.generation();
    let mut queued = Vec::new();
    for i in 0..8u64 {
        let seg = [Segment {
            addr: buf.iova() + i * 4096,
            len: bs,
        }];
        if q.submit(rw(nvm::READ, nsid, i * 8, 1), &seg, 100 + i)
            .is_ok()
        {
            queued.push(100 + i);
        }
    }
    q.ring();
    let reset = ctrl.reset();
    let mut got: Vec<(u64, Status)> = Vec::new();
    q.poll(&mut |tag, c, _| got.push((tag, c.status())));
    got.sort_by_key(|g| g.0);
    let tags: Vec<u64> = got.iter().map(|g| g.0).collect();
    t.check(
        "controller reset: every queued command fails once with 0x08, no DNR (the host retries)",
        reset.is_ok()
            && queued.len() == 8
            && tags == queued
            && got
                .iter()
                .all(|(_, s)| s.sct() == 0 && s.sc() == 0x08 && !s.dnr())
            && ctrl.generation() == g0 + 1
            && q.in_flight() == 0,
        format!("reset {reset:?} queued {queued:?} got {got:?}"),
    );
    let data = pattern(555, 8192);
    buf.write(0, &data);
    let n = (8192 / bs) as u32;
    let w = run(
        q,
        rw(nvm::WRITE, nsid, 2048, n),
        &[Segment {
            addr: buf.iova(),
            len: 8192,
        }],
    );
    buf.fill(8192, 8192, 0);
    let r = run(
        q,
        rw(nvm::READ, nsid, 2048, n),
        &[Segment {
            addr: buf.iova() + 8192,
            len: 8192,
        }],
    );
    let mut back = vec![0u8; 8192];
    buf.read(8192, &mut back);
    t.check(
        "after the reset the queue pair works again (queues re-created)",
        w.as_ref().is_ok_and(|c| c.status().is_success())
            && r.as_ref().is_ok_and(|c| c.status().is_success())
            && back == data,
        format!("write {} read {}", status_of(&w), status_of(&r)),
    );
    if let Some(cmb) = ctrl.cmb() {
        let mut cache = cmb.pool().cache(1);
        if let Some(mut c) = cache.try_get(8192) {
            c.as_mut_slice()[..8192].copy_from_slice(&data);
            let addr = c.device_addr().unwrap_or(0);
            let w = run(
                q,
                rw(nvm::WRITE, nsid, 2064, n),
                &[Segment { addr, len: 8192 }],
            );
            buf.fill(0, 8192, 0);
            let r = run(
                q,
                rw(nvm::READ, nsid, 2064, n),
                &[Segment {
                    addr: buf.iova(),
                    len: 8192,
                }],
            );
            buf.read(0, &mut back);
            t.check(
                "after the reset a CMB buffer still works (CMBMSC programmed again)",
                w.as_ref().is_ok_and(|c| c.status().is_success())
                    && r.as_ref().is_ok_and(|c| c.status().is_success())
                    && back == data,
                format!("write {} read {}", status_of(&w), status_of(&r)),
            );
            cache.put(c);
        }
    }
}

fn tracing_init() {
    // The library logs through `tracing`; this tool prints its own results and keeps the
    // library quiet unless NVMFD_NVME_LOG is set.
    if std::env::var_os("NVMFD_NVME_LOG").is_some() {
        eprintln!("(NVMFD_NVME_LOG set, but this tool has no subscriber; use nvmfd for logs)");
    }
}
