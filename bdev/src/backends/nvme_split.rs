//! A bdev [`Op`] as NVMe I/O commands, split at the controller's transfer limit: one function for
//! both backends that speak NVMe to an SSD (`nvme` over VFIO, `uring_pt` through the kernel's
//! generic device).
//!
//! NVMe Base 2.0, 5.2.13 (MDTS): a command's data transfer must not exceed 2^MDTS minimum
//! memory pages; NLB is 16 bits (NVM Command Set 3.2.4), so at most 65536 blocks per command
//! whatever MDTS says. `max_blocks` carries both limits.

use nvmfd_nvme::cmd::{nvm, Sqe};

use crate::{DsmRange, Op};

/// Commands `op` needs with at most `max_blocks` blocks each.
pub(crate) fn parts(op: &Op, max_blocks: u32) -> u32 {
    match *op {
        Op::Read { blocks, .. }
        | Op::ReadLent { blocks, .. }
        | Op::Write { blocks, .. }
        | Op::WriteZeroes { blocks, .. } => blocks.div_ceil(max_blocks.max(1)).max(1),
        Op::Flush | Op::Deallocate { .. } => 1,
    }
}

/// Call `each(sqe, offset, len)` for every command of `op` on namespace `nsid`, in LBA order:
/// `sqe` has opcode, NSID, LBA range, FUA and the DSM fields set but no data pointer;
/// `offset..offset + len` is where its data lies in the request's buffer (`len` 0: no data).
pub(crate) fn commands(
    op: Op,
    nsid: u32,
    block_size: usize,
    max_blocks: u32,
    mut each: impl FnMut(Sqe, usize, usize),
) {
    let max_blocks = max_blocks.max(1);
    match op {
        Op::Read { lba, blocks }
        | Op::ReadLent { lba, blocks }
        | Op::Write { lba, blocks, .. }
        | Op::WriteZeroes { lba, blocks, .. } => {
            let (opcode, fua, data) = match op {
                Op::Write { fua, .. } => (nvm::WRITE, fua, true),
                Op::WriteZeroes { fua, .. } => (nvm::WRITE_ZEROES, fua, false),
                _ => (nvm::READ, false, true),
            };
            let mut done = 0u32;
            while done < blocks {
                let n = (blocks - done).min(max_blocks);
                let mut s = Sqe::new(opcode, nsid);
                s.set_lba_range(lba + u64::from(done), n);
                s.set_fua(fua);
                if data {
                    each(s, done as usize * block_size, n as usize * block_size);
                } else {
                    each(s, 0, 0);
                }
                done += n;
            }
        }
        Op::Flush => each(Sqe::new(nvm::FLUSH, nsid), 0, 0),
        Op::Deallocate { ranges } => {
            let mut s = Sqe::new(nvm::DSM, nsid);
            s.dw[10] = u32::from(ranges) - 1;
            s.dw[11] = 1 << 2; // AD: deallocate
            each(s, 0, usize::from(ranges) * DsmRange::SIZE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(op: Op, max_blocks: u32) -> Vec<(Sqe, usize, usize)> {
        let mut v = Vec::new();
        commands(op, 3, 512, max_blocks, |s, o, l| v.push((s, o, l)));
        assert_eq!(v.len() as u32, parts(&op, max_blocks), "parts agrees");
        v
    }

    #[test]
    fn a_read_splits_at_max_blocks_in_lba_order() {
        let v = all(
            Op::Read {
                lba: 100,
                blocks: 10,
            },
            4,
        );
        let got: Vec<(u8, u32, u32, u32, usize, usize)> = v
            .iter()
            .map(|(s, o, l)| (s.opcode(), s.dw[1], s.dw[10], s.dw[12] & 0xffff, *o, *l))
            .collect();
        assert_eq!(
            got,
            vec![
                (nvm::READ, 3, 100, 3, 0, 2048),
                (nvm::READ, 3, 104, 3, 2048, 2048),
                (nvm::READ, 3, 108, 1, 4096, 1024),
            ]
        );
    }

    #[test]
    fn write_keeps_fua_on_every_part_and_write_zeroes_has_no_data() {
        let v = all(
            Op::Write {
                lba: 0,
                blocks: 3,
                fua: true,
            },
            2,
        );
        assert_eq!(v.len(), 2);
        assert!(v
            .iter()
            .all(|(s, _, l)| s.opcode() == nvm::WRITE && s.dw[12] >> 30 & 1 == 1 && *l > 0));
        let v = all(
            Op::WriteZeroes {
                lba: 0,
                blocks: 70000,
                fua: false,
            },
            65536,
        );
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].0.dw[12] & 0xffff, v[1].0.dw[12] & 0xffff),
            (65535, 70000 - 65536 - 1)
        );
        assert!(v
            .iter()
            .all(|(s, o, l)| s.opcode() == nvm::WRITE_ZEROES && (*o, *l) == (0, 0)));
    }

    #[test]
    fn flush_and_deallocate_are_one_command() {
        let v = all(Op::Flush, 1);
        assert_eq!((v[0].0.opcode(), v[0].2), (nvm::FLUSH, 0));
        let v = all(Op::Deallocate { ranges: 3 }, 1);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].0.opcode(), v[0].0.dw[10], v[0].0.dw[11], v[0].2),
            (nvm::DSM, 2, 4, 48)
        );
    }
}
