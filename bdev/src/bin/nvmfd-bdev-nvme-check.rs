//! `nvmfd-bdev-nvme-check --pci BDF [--nsid N]`: the `nvme` bdev with buffers of the SSD's CMB
//! domain, on an SSD bound to vfio-pci. Host buffer -> SSD -> CMB buffer and CMB buffer -> SSD ->
//! host buffer round trips through a bdev channel compare content; the bdev's counters must show
//! the CMB buffers went to the SSD in place (no bounce) and the host buffers bounced; a CMB
//! buffer comes back from a refused I/O; every CMB buffer is back in the pool at the end.
//! Writes LBAs 16384.. of the namespace: use a scratch SSD. Exit 0 only when every check passed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use nvmfd_bdev::{Bdev, BdevChannel, Completion, Io, IoError, Nvme, Op};
use nvmfd_p2p::mem::{Domain, IoBuf};

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
    let bdev = match Nvme::open("check".into(), &pci, nsid, 1) {
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
    let (direct, bounced) = bdev.data_path_counts();
    check(
        "CMB buffers went to the SSD in place, host buffers were bounced",
        (direct, bounced) == (2, 2),
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
