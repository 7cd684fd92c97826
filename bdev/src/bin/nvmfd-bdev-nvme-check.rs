//! `nvmfd-bdev-nvme-check --pci BDF [--nsid N]`: the `nvme` bdev with buffers of the SSD's CMB
//! domain, on an SSD bound to vfio-pci. Host buffer -> SSD -> CMB buffer and CMB buffer -> SSD ->
//! host buffer round trips through a bdev channel compare content, and so does a round trip
//! between buffers of two host pools (one made before the controller came up, one after); the
//! bdev's counters must show the CMB and pool buffers went to the SSD in place (no bounce) and
//! only the buffers made on their own (`IoBuf::new`, no IOVA) bounced; a CMB
//! buffer comes back from a refused I/O; every CMB buffer is back in the pool at the end.
//! Writes LBAs 16384.. of the namespace: use a scratch SSD. Exit 0 only when every check passed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use nvmfd_bdev::{Bdev, BdevChannel, Completion, Io, IoError, Nvme, Op};
use nvmfd_p2p::mem::{BufPool, Domain, IoBuf, IovaSpace};

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

fn run(ch: &mut dyn BdevChannel, op: Op, buf: IoBuf) -> Result<Completion, String> {
    ch.submit(Io { tag: 1, op, buf })
        .map_err(|_| "channel refused the I/O".to_string())?;
    let start = Instant::now();
    loop {
        let mut got = None;
        ch.poll(&mut |c| got = Some(c));
        if let Some(c) = got {
            return Ok(c);
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err("no completion in 30 s".into());
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(pci) = get("--pci") else {
        eprintln!("usage: nvmfd-bdev-nvme-check --pci BDF [--nsid N]");
        return ExitCode::from(2);
    };
    let nsid: u32 = get("--nsid").and_then(|s| s.parse().ok()).unwrap_or(1);
    // A reactor's host pool made before any controller (its region gets an IOVA now and is
    // mapped when the first controller comes up) and one made after (mapped as it is made).
    let mut early = BufPool::new(4096, 0, 128 << 10, 1, 2);
    let bdev = match Nvme::open("check".into(), &pci, nsid, 1, nvmfd_nvme::ctrl::IO_TIMEOUT) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(pool) = bdev.cmb_pool().cloned() else {
        eprintln!("{pci} has no usable CMB");
        return ExitCode::FAILURE;
    };
    let mut ch = match bdev.channel() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    let mut check = |what: &str, ok: bool, detail: String| {
        if ok {
            println!("PASS {what}");
        } else {
            println!("FAIL {what}: {detail}");
            failed += 1;
        }
    };
    let cmb = pool.domain();
    check(
        "the bdev reaches host memory and its own CMB, not another SSD's",
        bdev.reaches(Domain::HostMemory)
            && bdev.reaches(cmb)
            && !bdev.reaches(Domain::Cmb { device: 999 }),
        format!("cmb domain {cmb:?}"),
    );
    let bs = bdev.info().block_size as usize;
    let len = pool.buf_size().min(64 << 10);
    let blocks = (len / bs) as u32;
    let mut cache = pool.cache(2);
    let (Some(mut c1), Some(mut c2)) = (cache.try_get(len), cache.try_get(len)) else {
        println!("FAIL no CMB buffer");
        return ExitCode::FAILURE;
    };
    // CMB buffer -> SSD -> host buffer.
    let a = pattern(77, len);
    c1.as_mut_slice()[..len].copy_from_slice(&a);
    let w = run(&mut *ch, op_write(16384, blocks), c1);
    let r = run(&mut *ch, Op::Read { lba: 16384, blocks }, IoBuf::new(len));
    let ok = matches!((&w, &r), (Ok(w), Ok(r)) if w.result.is_ok() && r.result.is_ok()
        && r.buf.as_slice()[..len] == a[..]);
    check(
        "bdev: write from a CMB buffer, read into a host buffer: same bytes",
        ok,
        format!(
            "{:?} / {:?}",
            w.as_ref().map(|c| c.result),
            r.as_ref().map(|c| c.result)
        ),
    );
    if let Ok(c) = w {
        cache.put(c.buf);
    }
    // Host buffer -> SSD -> CMB buffer.
    let b = pattern(78, len);
    let mut h = IoBuf::new(len);
    h.as_mut_slice()[..len].copy_from_slice(&b);
    let w = run(&mut *ch, op_write(16384 + 1024, blocks), h);
    c2.as_mut_slice().fill(0);
    let r = run(
        &mut *ch,
        Op::Read {
            lba: 16384 + 1024,
            blocks,
        },
        c2,
    );
    let ok = matches!((&w, &r), (Ok(w), Ok(r)) if w.result.is_ok() && r.result.is_ok()
        && r.buf.domain() == cmb && r.buf.as_slice()[..len] == b[..]);
    check(
        "bdev: write from a host buffer, read into a CMB buffer: same bytes",
        ok,
        format!(
            "{:?} / {:?}",
            w.as_ref().map(|c| c.result),
            r.as_ref().map(|c| c.result)
        ),
    );
    if let Ok(c) = r {
        cache.put(c.buf);
    }
    // Host buffers of pools: by their IOVA, no copy. Written from the early pool's buffer,
    // read into the late pool's.
    let mut late = BufPool::new(4096, 0, 128 << 10, 1, 2);
    let (e, l) = (early.get(len), late.get(len));
    check(
        "pool buffers have IOVAs and the VFIO container maps them",
        e.device_addr().is_some() && l.device_addr().is_some() && IovaSpace::host().attached(),
        format!(
            "{:?} {:?} attached {}",
            e.device_addr(),
            l.device_addr(),
            IovaSpace::host().attached()
        ),
    );
    let mut e = e;
    let c = pattern(79, len);
    e.as_mut_slice()[..len].copy_from_slice(&c);
    let w = run(&mut *ch, op_write(16384 + 2048, blocks), e);
    let r = run(
        &mut *ch,
        Op::Read {
            lba: 16384 + 2048,
            blocks,
        },
        l,
    );
    let ok = matches!((&w, &r), (Ok(w), Ok(r)) if w.result.is_ok() && r.result.is_ok()
        && r.buf.as_slice()[..len] == c[..]);
    check(
        "bdev: write from a pool buffer made before the SSD, read into one made after: same bytes",
        ok,
        format!(
            "{:?} / {:?}",
            w.as_ref().map(|c| c.result),
            r.as_ref().map(|c| c.result)
        ),
    );
    if let (Ok(w), Ok(r)) = (w, r) {
        early.put(w.buf);
        late.put(r.buf);
    }
    let (direct, bounced) = bdev.data_path_counts();
    check(
        "CMB and pool buffers went to the SSD in place, only the buffers of their own bounced",
        (direct, bounced) == (4, 2),
        format!("direct {direct} bounced {bounced}"),
    );
    // A refused I/O hands its CMB buffer back.
    let past = bdev.info().num_blocks;
    match cache.try_get(len) {
        Some(c) => {
            let r = run(
                &mut *ch,
                Op::Read {
                    lba: past,
                    blocks: 1,
                },
                c,
            );
            let ok = matches!(&r, Ok(c) if c.result == Err(IoError::OutOfRange) && c.buf.domain() == cmb);
            check(
                "a read past the end with a CMB buffer: OutOfRange, buffer back",
                ok,
                format!("{:?}", r.as_ref().map(|c| c.result)),
            );
            if let Ok(c) = r {
                cache.put(c.buf);
            }
        }
        None => check("a third CMB buffer", false, format!("{pool:?}")),
    }
    drop(cache);
    check(
        "every CMB buffer is back in the pool",
        pool.free_shared() == pool.total(),
        format!("{} of {}", pool.free_shared(), pool.total()),
    );
    drop(ch);
    drop(bdev);
    check(
        "the last controller gone, the buffer regions are unmapped",
        !IovaSpace::host().attached(),
        String::new(),
    );
    drop((early, late));
    if failed == 0 {
        println!("ALL PASSED");
        ExitCode::SUCCESS
    } else {
        println!("{failed} FAILED");
        ExitCode::FAILURE
    }
}

fn op_write(lba: u64, blocks: u32) -> Op {
    Op::Write {
        lba,
        blocks,
        fua: false,
    }
}
