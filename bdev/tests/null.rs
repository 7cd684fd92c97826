mod common;

use common::*;
use nvmfd_bdev::{Bdev, Null, Op};
use nvmfd_p2p::mem::IoBuf;

#[test]
fn discards_writes_and_reads_zeroes() {
    let bs = 512;
    let n = Null::new("n0", 1 << 20, bs).expect("null");
    let i = n.info();
    assert_eq!((i.kind, i.block_size, i.num_blocks), ("null", 512, 2048));
    let mut ch = n.channel().expect("channel");
    write(&mut *ch, 5, &pattern(5, 2, bs, 1), bs).expect("write succeeds");
    // Zeroes up to the transfer length; the rest of the buffer is left alone.
    let mut buf = IoBuf::new(4096);
    buf.as_mut_slice().fill(0xab);
    let c = run(&mut *ch, Op::Read { lba: 5, blocks: 2 }, buf);
    assert_eq!(c.result, Ok(()));
    assert!(c.buf.as_slice()[..1024].iter().all(|&b| b == 0));
    assert!(c.buf.as_slice()[1024..].iter().all(|&b| b == 0xab));
    for op in [
        Op::Flush,
        Op::WriteZeroes {
            lba: 0,
            blocks: 2048,
            fua: false,
        },
    ] {
        assert_eq!(run(&mut *ch, op, IoBuf::new(0)).result, Ok(()), "{op:?}");
    }
    let c = run(
        &mut *ch,
        Op::Deallocate { ranges: 1 },
        dsm_buf(&[(0, 2048)]),
    );
    assert_eq!(c.result, Ok(()));
}

#[test]
fn errors_are_completions() {
    let n = Null::new("n0", 1 << 20, 512).expect("null");
    let mut ch = n.channel().expect("channel");
    check_errors(&mut *ch, 2048, 512);
}

#[test]
fn read_lent_fills_the_buffer_like_read() {
    let n = Null::new("n", 1 << 20, 4096).expect("null");
    let mut ch = n.channel().expect("channel");
    let mut buf = IoBuf::new(4096);
    buf.as_mut_slice().fill(0xee);
    let c = run(&mut *ch, Op::ReadLent { lba: 1, blocks: 1 }, buf);
    assert_eq!(c.result, Ok(()));
    assert!(c.lent.is_none(), "null has no memory to lend");
    assert!(c.buf.as_slice().iter().all(|&b| b == 0));
}
