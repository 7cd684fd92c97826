mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use common::*;
use nvmfd_bdev::{Bdev, Io, IoError, Op, Uring};
use nvmfd_p2p::mem::IoBuf;

fn file_bytes(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let all = std::fs::read(path).expect("read file");
    all[off as usize..off as usize + len].to_vec()
}

#[test]
fn info_and_block_size() {
    let f = TempFile::new("info", 1 << 20);
    let u = Uring::open("u0", &f.0, None).expect("open");
    let i = u.info();
    assert_eq!((i.name.as_str(), i.kind), ("u0", "uring"));
    assert_eq!((i.block_size, i.num_blocks), (4096, 256));
    assert!(i.deallocate_zeroes);
    assert!(i.volatile_cache);
    eprintln!("O_DIRECT in {}: {}", f.0.display(), u.direct_io());
    let u = Uring::open("u0", &f.0, Some(512)).expect("open");
    assert_eq!((u.info().block_size, u.info().num_blocks), (512, 2048));
    assert!(Uring::open("u0", &f.0, Some(1000)).is_err());
}

#[test]
fn size_not_a_multiple_of_block_size_is_refused() {
    let f = TempFile::new("odd", 6144);
    let e = Uring::open("u", &f.0, None)
        .err()
        .expect("6144 is not a multiple of 4096");
    let msg = e.to_string();
    assert!(msg.contains(&*f.0.to_string_lossy()), "{msg}");
    assert!(
        msg.contains("not a multiple of the block size 4096"),
        "{msg}"
    );
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    // 512-byte blocks fit.
    assert_eq!(
        Uring::open("u", &f.0, Some(512))
            .expect("open")
            .info()
            .num_blocks,
        12
    );
    let f = TempFile::new("odd", 4097);
    assert!(Uring::open("u", &f.0, Some(512)).is_err());
    let f = TempFile::new("empty", 0);
    assert!(Uring::open("u", &f.0, None).is_err());
    let missing = std::env::temp_dir().join("nvmfd-bdev-test-does-not-exist.img");
    let e = Uring::open("u", &missing, None)
        .err()
        .expect("missing file");
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    let e = Uring::open("u", std::env::temp_dir(), None)
        .err()
        .expect("a directory");
    assert!(
        e.to_string()
            .contains(&*std::env::temp_dir().to_string_lossy()),
        "{e}"
    );
    let e = Uring::open("u", "/dev/null", None)
        .err()
        .expect("a character device");
    assert!(
        e.to_string()
            .contains("/dev/null: not a regular file or a block device"),
        "{e}"
    );
}

#[test]
fn write_read_patterns() {
    for bs in [512u32, 4096] {
        let f = TempFile::new("rw", 4 << 20);
        let u = Uring::open("u", &f.0, Some(bs)).expect("open");
        let mut ch = u.channel().expect("channel");
        check_patterns(&mut *ch, u.info().num_blocks, bs);
        // The bytes really are in the file, at lba * block size.
        let last = u.info().num_blocks - 1;
        assert!(file_bytes(&f.0, last * u64::from(bs), bs as usize) == pattern(last, 1, bs, 1));
        assert!(file_bytes(&f.0, 9 * u64::from(bs), 2 * bs as usize) == pattern(9, 2, bs, 1));
        assert_eq!(run(&mut *ch, Op::Flush, IoBuf::new(0)).result, Ok(()));
    }
}

#[test]
fn large_transfer() {
    let bs = 4096u32;
    let f = TempFile::new("large", 16 << 20);
    let u = Uring::open("u", &f.0, None).expect("open");
    let mut ch = u.channel().expect("channel");
    let data = pattern(100, 2048, bs, 4); // 8 MiB in one I/O
    write(&mut *ch, 100, &data, bs).expect("write");
    assert!(read(&mut *ch, 100, 2048, bs) == data);
}

#[test]
fn errors_are_completions() {
    let f = TempFile::new("err", 1 << 20);
    let u = Uring::open("u", &f.0, Some(512)).expect("open");
    let mut ch = u.channel().expect("channel");
    let data = pattern(2047, 1, 512, 3);
    write(&mut *ch, 2047, &data, 512).expect("write last block");
    check_errors(&mut *ch, 2048, 512);
    assert!(read(&mut *ch, 2047, 1, 512) == data);
    // A zero-block read succeeds without touching anything.
    let c = run(
        &mut *ch,
        Op::Read {
            lba: 2048,
            blocks: 0,
        },
        IoBuf::new(0),
    );
    assert_eq!(c.result, Ok(()));
}

/// WriteZeroes and Deallocate read back as zeroes, in the device and in the file.
fn check_zeroing(dir: &Path) {
    let bs = 4096u32;
    let nb = 1024u64; // 4 MiB
    let f = TempFile::new_in(dir, "zero", nb * u64::from(bs));
    let u = Uring::open("u", &f.0, None).expect("open");
    eprintln!("O_DIRECT in {}: {}", dir.display(), u.direct_io());
    let mut ch = u.channel().expect("channel");
    let all = pattern(0, nb as u32, bs, 5);
    write(&mut *ch, 0, &all, bs).expect("fill");
    assert_eq!(run(&mut *ch, Op::Flush, IoBuf::new(0)).result, Ok(()));
    let allocated = std::fs::metadata(&f.0).expect("stat").blocks();

    // 600 blocks = 2.4 MiB: more than one zero-buffer write if fallocate is not supported.
    let c = run(
        &mut *ch,
        Op::WriteZeroes {
            lba: 3,
            blocks: 600,
            fua: false,
        },
        IoBuf::new(0),
    );
    assert_eq!(c.result, Ok(()));
    let c = run(
        &mut *ch,
        Op::Deallocate { ranges: 3 },
        dsm_buf(&[(700, 1), (710, 0), (800, 200)]),
    );
    assert_eq!(c.result, Ok(()));
    let zeroed = |lba: usize| (3..603).contains(&lba) || lba == 700 || (800..1000).contains(&lba);

    let back = read(&mut *ch, 0, nb as u32, bs);
    let file = std::fs::read(&f.0).expect("read file");
    assert_eq!(file.len(), back.len(), "file size changed");
    let b = bs as usize;
    for lba in 0..nb as usize {
        let r = lba * b..(lba + 1) * b;
        if zeroed(lba) {
            assert!(
                back[r.clone()].iter().all(|&x| x == 0),
                "lba {lba} not zeroed"
            );
            assert!(
                file[r].iter().all(|&x| x == 0),
                "lba {lba} not zeroed in the file"
            );
        } else {
            assert!(back[r.clone()] == all[r.clone()], "lba {lba} changed");
            assert!(file[r.clone()] == all[r], "lba {lba} changed in the file");
        }
    }
    let after = std::fs::metadata(&f.0).expect("stat").blocks();
    eprintln!(
        "{}: 512-byte blocks allocated {allocated} -> {after}",
        dir.display()
    );
    assert!(after < allocated, "deallocate punched no hole");
}

#[test]
fn zeroing_on_temp_dir() {
    check_zeroing(&std::env::temp_dir());
}

#[test]
fn zeroing_on_tmpfs_falls_back_to_writes() {
    // tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE: WriteZeroes takes the write path.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm, skipped");
        return;
    }
    check_zeroing(shm);
}

#[test]
fn full_queue_refuses_and_recovers() {
    let bs = 4096u32;
    let f = TempFile::new("full", 4 << 20);
    let u = Uring::open("u", &f.0, None).expect("open");
    let mut ch = u.channel().expect("channel");
    let data = pattern(7, 1, bs, 2);
    write(&mut *ch, 7, &data, bs).expect("write");
    let mut n = 0u64;
    let refused = loop {
        let io = Io {
            tag: n,
            op: Op::Read { lba: 7, blocks: 1 },
            buf: IoBuf::new(bs as usize),
        };
        match ch.submit(io) {
            Ok(()) => n += 1,
            Err(io) => break io,
        }
        assert!(n <= 10_000, "never refused");
    };
    assert_eq!(n, 256);
    assert_eq!(refused.tag, 256);
    assert_eq!(refused.op, Op::Read { lba: 7, blocks: 1 });
    assert_eq!(ch.in_flight(), 256);
    // Refused again until something is reaped.
    let refused = ch.submit(refused).expect_err("still full");
    let mut tags: Vec<u64> = reap(&mut *ch, 256)
        .into_iter()
        .map(|c| {
            assert_eq!(c.result, Ok(()));
            assert!(c.buf.as_slice()[..bs as usize] == data);
            c.tag
        })
        .collect();
    tags.sort_unstable();
    assert!(tags.iter().copied().eq(0..256));
    assert_eq!(ch.in_flight(), 0);
    ch.submit(refused).expect("accepted after poll");
    let c = reap(&mut *ch, 1).remove(0);
    assert_eq!((c.tag, c.result), (256, Ok(())));
    // Errors count against the depth too, and are reaped by poll.
    for t in 0..256 {
        let io = Io {
            tag: t,
            op: Op::Read {
                lba: 1 << 40,
                blocks: 1,
            },
            buf: IoBuf::new(0),
        };
        ch.submit(io).expect("room");
    }
    let io = Io {
        tag: 0,
        op: Op::Flush,
        buf: IoBuf::new(0),
    };
    let io = ch.submit(io).expect_err("full of errors");
    assert!(reap(&mut *ch, 256)
        .iter()
        .all(|c| c.result == Err(IoError::OutOfRange)));
    ch.submit(io).expect("room again");
    assert_eq!(reap(&mut *ch, 1)[0].result, Ok(()));
}

#[test]
fn dropping_a_channel_waits_for_its_io() {
    let bs = 4096u32;
    let f = TempFile::new("drop", 4 << 20);
    let u = Uring::open("u", &f.0, None).expect("open");
    let mut ch = u.channel().expect("channel");
    for lba in 0..100u64 {
        let data = pattern(lba, 1, bs, 8);
        let mut buf = IoBuf::new(bs as usize);
        buf.as_mut_slice().copy_from_slice(&data);
        let io = Io {
            tag: lba,
            op: Op::Write {
                lba,
                blocks: 1,
                fua: false,
            },
            buf,
        };
        ch.submit(io).expect("room");
    }
    ch.poll(&mut |_| {}); // gets some into the kernel
    drop(ch);
    let mut ch = u.channel().expect("channel");
    for lba in 0..100u64 {
        assert!(
            read(&mut *ch, lba, 1, bs) == pattern(lba, 1, bs, 8),
            "lba {lba}"
        );
    }
}

#[test]
fn two_channels_on_two_threads_share_data() {
    let f = TempFile::new("mt", 4 << 20);
    let u = Arc::new(Uring::open("u", &f.0, None).expect("open"));
    check_two_threads_share(u, 4096);
}

/// Runs on a real block device only when `NVMFD_TEST_BLOCK_DEVICE` names one (its contents are
/// overwritten!), e.g. a loop device: `losetup -f --show /var/tmp/x.img`.
#[test]
fn block_device_from_env() {
    let Some(dev) = std::env::var_os("NVMFD_TEST_BLOCK_DEVICE") else {
        eprintln!("NVMFD_TEST_BLOCK_DEVICE not set, skipped");
        return;
    };
    let u = Uring::open("blk", &dev, None).expect("open block device");
    let i = u.info().clone();
    eprintln!(
        "{}: block size {}, {} blocks, O_DIRECT {}",
        u.path().display(),
        i.block_size,
        i.num_blocks,
        u.direct_io()
    );
    assert!(!i.deallocate_zeroes);
    let bs = i.block_size;
    let mut ch = u.channel().expect("channel");
    check_patterns(&mut *ch, i.num_blocks, bs);
    check_errors(&mut *ch, i.num_blocks, bs);
    let c = run(
        &mut *ch,
        Op::WriteZeroes {
            lba: 1,
            blocks: 3,
            fua: false,
        },
        IoBuf::new(0),
    );
    assert_eq!(c.result, Ok(()));
    assert!(read(&mut *ch, 1, 3, bs).iter().all(|&b| b == 0));
    let c = run(&mut *ch, Op::Deallocate { ranges: 1 }, dsm_buf(&[(9, 2)]));
    assert_eq!(c.result, Ok(()));
    assert_eq!(run(&mut *ch, Op::Flush, IoBuf::new(0)).result, Ok(()));
    // A configured block size below the device's logical block size is refused.
    if i.block_size > 512 {
        assert!(Uring::open("blk", &dev, Some(512)).is_err());
    }
}

/// Read `len` bytes at `off` of `path` in a second process, with O_DIRECT (dd iflag=direct), so
/// neither this process's descriptors nor its page cache view are involved.
fn read_direct_elsewhere(path: &Path, off: u64, len: usize) -> Vec<u8> {
    assert!(off.is_multiple_of(4096) && len.is_multiple_of(4096));
    let out = std::process::Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["bs=4096", "iflag=direct", "status=none"])
        .arg(format!("skip={}", off / 4096))
        .arg(format!("count={}", len / 4096))
        .output()
        .expect("run dd");
    assert!(
        out.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A FUA write is in the file when it completes: another process reading with O_DIRECT sees it
/// at once, at the right offset, and a FUA Write Zeroes likewise.
#[test]
fn fua_write_is_visible_to_an_o_direct_reader() {
    let f = TempFile::new("fua", 1 << 20);
    let u = Uring::open("u", &f.0, None).expect("open");
    assert!(
        u.direct_io(),
        "the temp dir must allow O_DIRECT for this test"
    );
    let mut ch = u.channel().expect("channel");
    let data = pattern(5, 3, 4096, 7);
    let mut buf = IoBuf::new(data.len());
    buf.as_mut_slice().copy_from_slice(&data);
    let op = Op::Write {
        lba: 5,
        blocks: 3,
        fua: true,
    };
    assert_eq!(run(&mut *ch, op, buf).result, Ok(()));
    assert!(read_direct_elsewhere(&f.0, 5 * 4096, 3 * 4096) == data);
    assert!(read_direct_elsewhere(&f.0, 4 * 4096, 4096)
        .iter()
        .all(|&b| b == 0));
    let op = Op::WriteZeroes {
        lba: 6,
        blocks: 1,
        fua: true,
    };
    assert_eq!(run(&mut *ch, op, IoBuf::new(0)).result, Ok(()));
    let back = read_direct_elsewhere(&f.0, 5 * 4096, 3 * 4096);
    assert!(back[..4096] == data[..4096]);
    assert!(back[4096..8192].iter().all(|&b| b == 0));
    assert!(back[8192..] == data[8192..]);
}

/// A loop device over a temp file, detached on drop. None where loop devices cannot be set up
/// (not root, no loop driver).
struct Loop(String);

impl Loop {
    fn new(file: &Path) -> Option<Loop> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("losetup: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }

    /// Flush requests the block layer completed on this device (/sys/block/X/stat field 16,
    /// Documentation/block/stat.rst).
    fn flushes(&self) -> u64 {
        let name = self.0.trim_start_matches("/dev/");
        let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).expect("stat");
        let f: Vec<&str> = stat.split_whitespace().collect();
        f.get(15)
            .expect("flush field (Linux >= 5.5)")
            .parse()
            .expect("number")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// On a block device with a write-back cache (a loop device reports one), a FUA write makes the
/// kernel flush the device before the write completes (RWF_DSYNC; the loop driver has no native
/// FUA, so the block layer turns it into flushes), while a plain write sends no flush. The same
/// holds for Write Zeroes with FUA (a trailing fdatasync).
#[test]
fn fua_reaches_the_device_as_a_flush() {
    let f = TempFile::new("fua-loop", 4 << 20);
    let Some(dev) = Loop::new(&f.0) else {
        eprintln!("no loop device here, skipped");
        return;
    };
    let wc = std::fs::read_to_string(format!(
        "/sys/block/{}/queue/write_cache",
        dev.0.trim_start_matches("/dev/")
    ))
    .unwrap_or_default();
    assert_eq!(wc.trim(), "write back", "{}", dev.0);
    let u = Uring::open("blk", &dev.0, Some(4096)).expect("open loop device");
    assert!(u.direct_io());
    let mut ch = u.channel().expect("channel");
    let data = pattern(1, 1, 4096, 3);
    let w = |lba, fua, ch: &mut dyn nvmfd_bdev::BdevChannel| {
        let mut buf = IoBuf::new(4096);
        buf.as_mut_slice().copy_from_slice(&data);
        let before = dev.flushes();
        let op = Op::Write {
            lba,
            blocks: 1,
            fua,
        };
        assert_eq!(run(ch, op, buf).result, Ok(()));
        dev.flushes() - before
    };
    assert_eq!(w(1, false, &mut *ch), 0, "a plain write flushed");
    assert!(w(2, true, &mut *ch) >= 1, "a FUA write did not flush");
    assert_eq!(w(3, false, &mut *ch), 0, "a plain write flushed");
    let before = dev.flushes();
    let op = Op::WriteZeroes {
        lba: 4,
        blocks: 2,
        fua: true,
    };
    assert_eq!(run(&mut *ch, op, IoBuf::new(0)).result, Ok(()));
    assert!(dev.flushes() > before, "a FUA write zeroes did not flush");
    assert!(read(&mut *ch, 2, 1, 4096) == data);
}
