//! The NVM command set on I/O queues: Read, Write, Flush, Write Zeroes, Dataset Management.

use super::qpair::State;
use super::{Namespace, Subsystem, Target};
use nvmfd_bdev::{DsmRange, Op};
use nvmfd_transport::proto::nvme::{opcode, Sqe};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::{Capsule, TransportInfo};

/// A checked I/O command: hand it to a block device, or it is already done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Io { bdev: usize, op: Op },
    Done,
}

/// Force Unit Access, CDW12 bit 30 of Write and Write Zeroes (NVM Command Set 1.0, Figures
/// "Write - Command Dword 12" and "Write Zeroes - Command Dword 12"): the data is on non-volatile
/// media before the command completes.
const CDW12_FUA: u32 = 1 << 30;

/// Admission of an I/O command (before its data moves): the namespace exists, the LBA range is
/// in it, the transfer is within MDTS and the SGL (`sgl_len` bytes) covers it. Returns the
/// namespace's block device and block size. What needs the data itself (Dataset Management's
/// ranges) is checked by [`check`] when the command executes.
pub fn admit(
    subsys: &Subsystem,
    limits: &TransportInfo,
    sqe: &Sqe,
    sgl_len: u32,
) -> Result<(usize, u32), Status> {
    admitted(subsys, limits, sqe, sgl_len).map(|ns| (ns.bdev, ns.info.block_size))
}

/// [`admit`]'s checks, giving the namespace.
fn admitted<'a>(
    subsys: &'a Subsystem,
    limits: &TransportInfo,
    sqe: &Sqe,
    sgl_len: u32,
) -> Result<&'a Namespace, Status> {
    let ns = subsys
        .namespace(sqe.nsid)
        .ok_or(Status::INVALID_NAMESPACE)?;
    let in_range = |lba: u64, blocks: u64| {
        lba.checked_add(blocks)
            .is_some_and(|end| end <= ns.info.num_blocks)
    };
    match sqe.opcode {
        opcode::NVM_READ | opcode::NVM_WRITE => {
            let (lba, blocks) = (sqe.slba(), sqe.nlb());
            let bytes = blocks as u64 * ns.info.block_size as u64;
            if bytes > limits.max_io_size as u64 {
                return Err(Status::INVALID_FIELD);
            }
            if !in_range(lba, blocks as u64) {
                return Err(Status::LBA_OUT_OF_RANGE);
            }
            if (sgl_len as u64) < bytes {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
        }
        opcode::NVM_FLUSH => {}
        opcode::NVM_WRITE_ZEROES => {
            if !in_range(sqe.slba(), sqe.nlb() as u64) {
                return Err(Status::LBA_OUT_OF_RANGE);
            }
        }
        opcode::NVM_DATASET_MANAGEMENT => {
            let ranges = (sqe.cdw10 & 0xff) as usize + 1;
            if (sgl_len as usize) < ranges * DsmRange::SIZE {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
        }
        _ => return Err(Status::INVALID_OPCODE),
    }
    Ok(ns)
}

/// A Read or Write of `cap` on block device `bdev` (blocks of `block_size` bytes), once its
/// namespace and range are known good: the buffer must hold the whole transfer.
#[inline]
fn read_write(cap: &Capsule, bdev: usize, block_size: u32, fua: bool) -> Result<Checked, Status> {
    let sqe = &cap.sqe;
    let (lba, blocks) = (sqe.slba(), sqe.nlb());
    let bytes = blocks as u64 * block_size as u64;
    if cap
        .buf
        .as_ref()
        .is_none_or(|b| (b.capacity() as u64) < bytes)
    {
        return Err(Status::DATA_SGL_LENGTH_INVALID);
    }
    let op = if sqe.opcode == opcode::NVM_READ {
        Op::Read { lba, blocks }
    } else {
        Op::Write { lba, blocks, fua }
    };
    Ok(Checked::Io { bdev, op })
}

/// Validate an I/O command against its namespace and turn it into a block-device operation.
/// `found` is the block device and block size admission found for it in this same snapshot
/// (its checks then hold as they were: only what needs the data is looked at again).
///
/// `write_cache` is the controller's Volatile Write Cache feature (FID 06h) as the host last set
/// it. With the cache disabled every write must be durable when it completes (Base 2.0, Volatile
/// Write Cache: WCE cleared disables the cache), so writes then go down with FUA whatever the
/// host asked. The FUA bit of a Read (commit, then read from media) is not acted on: a read
/// through these backends already returns the newest data, and the host's ordering is its own.
pub fn check(
    subsys: &Subsystem,
    limits: &TransportInfo,
    cap: &Capsule,
    write_cache: bool,
    found: Option<(usize, u32)>,
) -> Result<Checked, Status> {
    let sqe = &cap.sqe;
    let fua = sqe.cdw12 & CDW12_FUA != 0 || !write_cache;
    if let (Some((bdev, block_size)), opcode::NVM_READ | opcode::NVM_WRITE) = (found, sqe.opcode) {
        // Namespace, LBA range, MDTS and SGL length were checked at admission against this
        // snapshot; the buffer is the one thing that came since.
        return read_write(cap, bdev, block_size, fua);
    }
    // The admission rules again, with the data in place: the namespace may have changed since
    // (live reconfiguration swaps the target between the two phases).
    let ns = admitted(subsys, limits, sqe, cap.data_len)?;
    let bdev = ns.bdev;
    let in_range = |lba: u64, blocks: u64| {
        lba.checked_add(blocks)
            .is_some_and(|end| end <= ns.info.num_blocks)
    };
    match sqe.opcode {
        opcode::NVM_READ | opcode::NVM_WRITE => read_write(cap, bdev, ns.info.block_size, fua),
        opcode::NVM_FLUSH => Ok(Checked::Io {
            bdev,
            op: Op::Flush,
        }),
        opcode::NVM_WRITE_ZEROES => Ok(Checked::Io {
            bdev,
            op: Op::WriteZeroes {
                lba: sqe.slba(),
                blocks: sqe.nlb(),
                fua,
            },
        }),
        opcode::NVM_DATASET_MANAGEMENT => {
            let ranges = (sqe.cdw10 & 0xff) as usize + 1;
            let deallocate = sqe.cdw11 & (1 << 2) != 0;
            let need = ranges * DsmRange::SIZE;
            let data = match &cap.buf {
                Some(b) if cap.data_len as usize >= need => &b.as_slice()[..need],
                _ => return Err(Status::DATA_SGL_LENGTH_INVALID),
            };
            for chunk in data.chunks_exact(DsmRange::SIZE) {
                let r = DsmRange::parse(chunk.try_into().expect("16 bytes"));
                if !in_range(r.lba, r.blocks as u64) {
                    return Err(Status::LBA_OUT_OF_RANGE);
                }
            }
            // Only the deallocate attribute does anything; integral read/write hints are advisory.
            if !deallocate {
                return Ok(Checked::Done);
            }
            Ok(Checked::Io {
                bdev,
                op: Op::Deallocate {
                    ranges: ranges as u16,
                },
            })
        }
        _ => Err(Status::INVALID_OPCODE),
    }
}

/// Bytes a finished read returns to the host.
pub(super) fn transfer_len(target: &Target, state: &State, cap: &Capsule) -> u32 {
    let State::Io { subsys, .. } = state else {
        return 0;
    };
    target
        .subsystems
        .get(*subsys)
        .and_then(|s| s.namespace(cap.sqe.nsid))
        .map_or(0, |ns| cap.sqe.nlb() * ns.info.block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmfd_bdev::BdevInfo;
    use nvmfd_p2p::mem::IoBuf;
    use nvmfd_transport::proto::nvme::Sqe;

    fn target() -> std::sync::Arc<Target> {
        let yaml = "bdevs: [ { name: d, malloc: { size: 1MiB } } ]\n\
                    subsystems: [ { nqn: nqn.2026-11.io.nvmfd:io, namespaces: [ { bdev: d } ] } ]\n";
        let cfg = nvmfd_config::parse_str(yaml, "t.yaml").expect("valid");
        let info = BdevInfo {
            name: "d".into(),
            kind: "test",
            block_size: 4096,
            num_blocks: 256,
            deallocate_zeroes: true,
            volatile_cache: true,
        };
        Target::new(&cfg, &[info])
    }

    fn op(t: &Target, opcode: u8, cdw12_extra: u32, write_cache: bool) -> Op {
        let mut sqe = Sqe::lba_command(opcode, 1, 8, 2);
        sqe.cdw12 |= cdw12_extra;
        let cap = Capsule {
            sqe,
            buf: Some(IoBuf::new(8192)),
            data_len: 8192,
            lent: None,
        };
        let tcp = t.transports[0];
        match check(&t.subsystems[0], &tcp, &cap, write_cache, None) {
            Ok(Checked::Io { op, .. }) => op,
            other => panic!("{other:?}"),
        }
    }

    /// FUA comes from CDW12 bit 30, or from a disabled volatile write cache; reads never carry
    /// it (Op::Read has no such field) and the NLB field (bits 15:0) is unaffected.
    #[test]
    fn fua_from_the_command_or_the_cache_setting() {
        let t = target();
        let w = |fua| Op::Write {
            lba: 8,
            blocks: 2,
            fua,
        };
        let z = |fua| Op::WriteZeroes {
            lba: 8,
            blocks: 2,
            fua,
        };
        assert_eq!(op(&t, opcode::NVM_WRITE, 0, true), w(false));
        assert_eq!(op(&t, opcode::NVM_WRITE, CDW12_FUA, true), w(true));
        assert_eq!(op(&t, opcode::NVM_WRITE, 0, false), w(true));
        assert_eq!(op(&t, opcode::NVM_WRITE_ZEROES, 0, true), z(false));
        assert_eq!(op(&t, opcode::NVM_WRITE_ZEROES, CDW12_FUA, true), z(true));
        assert_eq!(op(&t, opcode::NVM_WRITE_ZEROES, 0, false), z(true));
        assert_eq!(
            op(&t, opcode::NVM_READ, CDW12_FUA, false),
            Op::Read { lba: 8, blocks: 2 }
        );
    }
}
