//! Helpers shared by the backend tests: drive a channel to completion, make patterns, temp files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nvmfd_bdev::{BdevChannel, Completion, DsmRange, Io, IoError, Op};
use nvmfd_p2p::mem::IoBuf;

/// Poll until `n` completions arrived (panics after 10 s).
pub fn reap(ch: &mut dyn BdevChannel, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        ch.poll(&mut |c| out.push(c));
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {n} completions",
            out.len()
        );
    }
    out
}

/// Submit one I/O and wait for its completion.
pub fn run(ch: &mut dyn BdevChannel, op: Op, buf: IoBuf) -> Completion {
    ch.submit(Io { tag: 42, op, buf })
        .unwrap_or_else(|io| panic!("submit refused {:?}", io.op));
    let mut c = reap(ch, 1);
    assert_eq!(c.len(), 1);
    let c = c.remove(0);
    assert_eq!(c.tag, 42);
    assert_eq!(ch.in_flight(), 0);
    c
}

/// Distinct content for every block: depends on the LBA, a seed and the byte offset.
pub fn pattern(lba: u64, blocks: u32, bs: u32, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(blocks as usize * bs as usize);
    for b in 0..u64::from(blocks) {
        let l = lba + b;
        for i in 0..u64::from(bs) {
            let x = l
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(i.wrapping_mul(31))
                .wrapping_add(u64::from(seed) << 7);
            // Never zero, so a zeroed block cannot pass for a written one.
            v.push(((x >> 24) as u8) | 1);
        }
    }
    v
}

pub fn write(ch: &mut dyn BdevChannel, lba: u64, data: &[u8], bs: u32) -> Result<(), IoError> {
    let blocks = (data.len() / bs as usize) as u32;
    let mut buf = IoBuf::new(data.len());
    buf.as_mut_slice()[..data.len()].copy_from_slice(data);
    run(
        ch,
        Op::Write {
            lba,
            blocks,
            fua: false,
        },
        buf,
    )
    .result
}

pub fn read(ch: &mut dyn BdevChannel, lba: u64, blocks: u32, bs: u32) -> Vec<u8> {
    let len = blocks as usize * bs as usize;
    let mut buf = IoBuf::new(len);
    buf.as_mut_slice().fill(0xee);
    let c = run(ch, Op::Read { lba, blocks }, buf);
    assert_eq!(c.result, Ok(()), "read lba {lba} blocks {blocks}");
    c.buf.as_slice()[..len].to_vec()
}

pub fn dsm_buf(ranges: &[(u64, u32)]) -> IoBuf {
    let mut buf = IoBuf::new(ranges.len() * DsmRange::SIZE);
    for (i, &(lba, blocks)) in ranges.iter().enumerate() {
        let r = DsmRange {
            attributes: 0,
            blocks,
            lba,
        };
        buf.as_mut_slice()[i * 16..i * 16 + 16].copy_from_slice(&r.encode());
    }
    buf
}

/// Write distinct patterns to several LBAs (queued together, then reaped), read each back and
/// compare; blocks between them read as zeroes.
pub fn check_patterns(ch: &mut dyn BdevChannel, num_blocks: u64, bs: u32) {
    let targets = [
        (0u64, 1u32),
        (1, 3),
        (9, 2),
        (num_blocks / 2, 4),
        (num_blocks - 1, 1),
    ];
    for (i, &(lba, blocks)) in targets.iter().enumerate() {
        let data = pattern(lba, blocks, bs, 1);
        let mut buf = IoBuf::new(data.len());
        buf.as_mut_slice()[..data.len()].copy_from_slice(&data);
        ch.submit(Io {
            tag: i as u64,
            op: Op::Write {
                lba,
                blocks,
                fua: false,
            },
            buf,
        })
        .unwrap_or_else(|_| panic!("write {i} refused"));
    }
    let mut tags: Vec<u64> = reap(ch, targets.len())
        .into_iter()
        .map(|c| {
            assert_eq!(c.result, Ok(()), "write tag {}", c.tag);
            c.tag
        })
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, [0, 1, 2, 3, 4]);
    assert_eq!(ch.in_flight(), 0);
    for &(lba, blocks) in &targets {
        assert!(
            read(ch, lba, blocks, bs) == pattern(lba, blocks, bs, 1),
            "lba {lba} reads back different bytes"
        );
    }
    // Never written: zeroes.
    assert!(read(ch, 4, 5, bs).iter().all(|&b| b == 0));
    // Overwrite one block in the middle of a multi-block extent.
    let data = pattern(2, 1, bs, 9);
    write(ch, 2, &data, bs).expect("overwrite");
    let back = read(ch, 1, 3, bs);
    let b = bs as usize;
    assert!(back[..b] == pattern(1, 1, bs, 1)[..]);
    assert!(back[b..2 * b] == data[..]);
    assert!(back[2 * b..] == pattern(3, 1, bs, 1)[..]);
}

/// Out-of-range and too-small-buffer requests complete with the right errors and change nothing.
pub fn check_errors(ch: &mut dyn BdevChannel, num_blocks: u64, bs: u32) {
    let page = IoBuf::new(bs as usize);
    let cases = [
        (
            Op::Read {
                lba: num_blocks,
                blocks: 1,
            },
            IoError::OutOfRange,
        ),
        (
            Op::Write {
                lba: num_blocks - 1,
                blocks: 2,
                fua: false,
            },
            IoError::OutOfRange,
        ),
        (
            Op::Write {
                lba: u64::MAX,
                blocks: 2,
                fua: false,
            },
            IoError::OutOfRange,
        ),
        (
            Op::WriteZeroes {
                lba: num_blocks,
                blocks: 1,
                fua: false,
            },
            IoError::OutOfRange,
        ),
        (
            Op::Read {
                lba: 0,
                blocks: (page.capacity() / bs as usize) as u32 + 1,
            },
            IoError::BufferTooSmall,
        ),
        (
            Op::Write {
                lba: 0,
                blocks: (page.capacity() / bs as usize) as u32 + 1,
                fua: false,
            },
            IoError::BufferTooSmall,
        ),
    ];
    for (op, want) in cases {
        let c = run(ch, op, IoBuf::new(bs as usize));
        assert_eq!(c.result, Err(want), "{op:?}");
    }
    // Deallocate: one bad range fails the whole request; more ranges than the buffer holds.
    let c = run(
        ch,
        Op::Deallocate { ranges: 2 },
        dsm_buf(&[(0, 1), (num_blocks - 1, 2)]),
    );
    assert_eq!(c.result, Err(IoError::OutOfRange));
    let c = run(ch, Op::Deallocate { ranges: 257 }, dsm_buf(&[(0, 1)]));
    assert_eq!(c.result, Err(IoError::BufferTooSmall));
}

/// A file in the temp directory, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new_in(dir: &Path, tag: &str, len: u64) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = dir.join(format!(
            "nvmfd-bdev-test-{}-{tag}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = std::fs::File::create(&path).expect("create temp file");
        f.set_len(len).expect("size temp file");
        TempFile(path)
    }

    pub fn new(tag: &str, len: u64) -> Self {
        Self::new_in(&std::env::temp_dir(), tag, len)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Two threads, each with its own channel on `bdev`: each writes every other LBA, then reads
/// what the other wrote (the channels of one device see each other's completed writes).
pub fn check_two_threads_share(bdev: std::sync::Arc<dyn nvmfd_bdev::Bdev>, bs: u32) {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2u64)
        .map(|me| {
            let bdev = std::sync::Arc::clone(&bdev);
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut ch = bdev.channel().expect("channel");
                // Thread 0 writes even LBAs, thread 1 odd ones.
                for i in 0..64u64 {
                    let lba = i * 2 + me;
                    write(&mut *ch, lba, &pattern(lba, 1, bs, me as u8), bs).expect("write");
                }
                barrier.wait();
                let other = 1 - me;
                for i in 0..64u64 {
                    let lba = i * 2 + other;
                    assert!(
                        read(&mut *ch, lba, 1, bs) == pattern(lba, 1, bs, other as u8),
                        "thread {me} does not see lba {lba} written by thread {other}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}
