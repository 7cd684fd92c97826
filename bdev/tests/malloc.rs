mod common;

use std::sync::Arc;

use common::*;
use nvmfd_bdev::{Bdev, Io, IoError, Malloc, Op};
use nvmfd_p2p::mem::IoBuf;

#[test]
fn info_and_bad_geometry() {
    let m = Malloc::new("m0", 1 << 20, 512).expect("malloc");
    let i = m.info();
    assert_eq!((i.name.as_str(), i.kind), ("m0", "malloc"));
    assert_eq!(m.name(), "m0");
    assert_eq!((i.block_size, i.num_blocks), (512, 2048));
    assert!(i.deallocate_zeroes);
    assert!(!i.volatile_cache);
    assert!(Malloc::new("m", 1000, 512).is_err());
    assert!(Malloc::new("m", 1 << 20, 1000).is_err());
    assert!(Malloc::new("m", 0, 512).is_err());
}

#[test]
fn write_read_patterns() {
    for bs in [512, 4096] {
        let m = Malloc::new("m", 4 << 20, bs).expect("malloc");
        let mut ch = m.channel().expect("channel");
        check_patterns(&mut *ch, m.info().num_blocks, bs);
    }
}

#[test]
fn errors_are_completions() {
    let m = Malloc::new("m", 1 << 20, 512).expect("malloc");
    let mut ch = m.channel().expect("channel");
    let data = pattern(2047, 1, 512, 3);
    write(&mut *ch, 2047, &data, 512).expect("write last block");
    check_errors(&mut *ch, 2048, 512);
    // The refused requests (including the Deallocate with one good range) changed nothing.
    assert!(read(&mut *ch, 2047, 1, 512) == data);
}

#[test]
fn write_zeroes_and_deallocate_read_zeroes() {
    let bs = 512u32;
    let nb = 4096u64; // 2 MiB
    let m = Malloc::new("m", nb * u64::from(bs), bs).expect("malloc");
    let mut ch = m.channel().expect("channel");
    let all = pattern(0, nb as u32, bs, 5);
    write(&mut *ch, 0, &all, bs).expect("fill");
    let c = run(
        &mut *ch,
        Op::WriteZeroes {
            lba: 3,
            blocks: 2,
            fua: false,
        },
        IoBuf::new(0),
    );
    assert_eq!(c.result, Ok(()));
    // A small range, an empty one and a large unaligned one (exercises madvise).
    let c = run(
        &mut *ch,
        Op::Deallocate { ranges: 3 },
        dsm_buf(&[(10, 1), (20, 0), (101, 1500)]),
    );
    assert_eq!(c.result, Ok(()));
    let c = run(&mut *ch, Op::Flush, IoBuf::new(0));
    assert_eq!(c.result, Ok(()));
    let back = read(&mut *ch, 0, nb as u32, bs);
    let b = bs as usize;
    for lba in 0..nb as usize {
        let zeroed = (3..5).contains(&lba) || lba == 10 || (101..1601).contains(&lba);
        let got = &back[lba * b..(lba + 1) * b];
        if zeroed {
            assert!(got.iter().all(|&x| x == 0), "lba {lba} not zeroed");
        } else {
            assert!(got == &all[lba * b..(lba + 1) * b], "lba {lba} changed");
        }
    }
}

#[test]
fn two_channels_on_two_threads_share_data() {
    let m = Arc::new(Malloc::new("shared", 64 << 20, 4096).expect("malloc"));
    check_two_threads_share(m, 4096);
}

#[test]
fn full_ring_refuses_and_recovers() {
    let m = Malloc::new("m", 1 << 20, 512).expect("malloc");
    let mut ch = m.channel().expect("channel");
    let mut n = 0u64;
    let refused = loop {
        match ch.submit(Io {
            tag: n,
            op: Op::Flush,
            buf: IoBuf::new(0),
        }) {
            Ok(()) => n += 1,
            Err(io) => break io,
        }
        assert!(n <= 100_000, "never refused");
    };
    assert_eq!(n, 4096);
    assert_eq!(refused.tag, 4096);
    assert_eq!(ch.in_flight(), 4096);
    let mut got = 0;
    assert_eq!(
        ch.poll(&mut |c| {
            assert_eq!(c.tag, got);
            got += 1;
        }),
        4096
    );
    assert_eq!(ch.in_flight(), 0);
    ch.submit(refused).expect("accepted after poll");
    assert_eq!(reap(&mut *ch, 1)[0].result, Ok(()));
}

#[test]
fn large_disk_is_lazy() {
    // 1 GiB would be felt if it were committed eagerly; it is not even touched here.
    let bs = 4096;
    let m = Malloc::new("big", 1 << 30, bs).expect("1 GiB malloc");
    let mut ch = m.channel().expect("channel");
    let last = m.info().num_blocks - 1;
    assert!(read(&mut *ch, last, 1, bs).iter().all(|&b| b == 0));
    let data = pattern(last, 1, bs, 7);
    write(&mut *ch, last, &data, bs).expect("write");
    assert!(read(&mut *ch, last, 1, bs) == data);
    let c = run(
        &mut *ch,
        Op::Read {
            lba: last + 1,
            blocks: 1,
        },
        IoBuf::new(4096),
    );
    assert_eq!(c.result, Err(IoError::OutOfRange));
}

#[test]
fn read_lent_sends_the_disk_bytes_without_touching_the_buffer() {
    use std::io::Read;
    let m = Malloc::new("m", 1 << 20, 4096).expect("malloc");
    let mut ch = m.channel().expect("channel");
    let data = pattern(10, 3, 4096, 9);
    write(&mut *ch, 10, &data, 4096).expect("write");
    let mut buf = IoBuf::new(3 * 4096);
    buf.as_mut_slice().fill(0xee);
    let c = run(&mut *ch, Op::ReadLent { lba: 10, blocks: 3 }, buf);
    assert_eq!(c.result, Ok(()));
    assert!(
        c.buf.as_slice().iter().all(|&b| b == 0xee),
        "buffer untouched"
    );
    let lent = c.lent.expect("malloc lends its memory");
    assert_eq!(lent.len(), 3 * 4096);
    // The only way to look at lent bytes is to hand them to the kernel, as the transport does.
    let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        b.read_to_end(&mut got).expect("read");
        got
    });
    let mut off = 0;
    while off < lent.len() {
        off += send_raw(&a, lent.raw(off, lent.len()));
    }
    drop(a);
    assert!(
        reader.join().unwrap() == data,
        "the lent bytes are the disk's"
    );
    // Out of range is refused like a Read; the lent share keeps the disk mapped past the channel.
    let c = run(
        &mut *ch,
        Op::ReadLent {
            lba: 255,
            blocks: 2,
        },
        IoBuf::new(8192),
    );
    assert_eq!(c.result, Err(IoError::OutOfRange));
    assert!(c.lent.is_none());
    drop(ch);
    drop(m);
    let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    assert_eq!(send_raw(&a, lent.raw(0, 8)), 8);
    let mut head = [0u8; 8];
    b.read_exact(&mut head).expect("read");
    assert_eq!(head, data[..8], "still mapped after the disk is dropped");
}

/// Hand raw bytes to the kernel (write(2)), as the transport's writev does with lent data.
fn send_raw(s: &std::os::unix::net::UnixStream, (ptr, len): (*const u8, usize)) -> usize {
    use std::os::fd::AsRawFd;
    // SAFETY: ptr..ptr + len is readable while the Lent it came from lives (the caller holds
    // it); the kernel only reads it.
    let n = unsafe { libc::write(s.as_raw_fd(), ptr.cast(), len) };
    usize::try_from(n).expect("write")
}
