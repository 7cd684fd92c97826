//! `malloc`: a RAM disk shared by every reactor. I/Os are plain memory copies done during `submit`;
//! their completions wait in the channel's ring until `poll`.

use std::io;
use std::sync::Arc;

use super::mem::{MemRegion, RegionShare};
use super::{dsm_range, Geometry, Immediate, ImmediateChannel};
use crate::{Bdev, BdevChannel, BdevInfo, IoError, Op};
use nvmfd_p2p::mem::{IoBuf, Lent};

/// Completions a malloc or null channel holds before `submit` refuses more.
pub(crate) const SYNC_QUEUE_DEPTH: usize = 4096;

/// A RAM disk.
pub struct Malloc {
    info: BdevInfo,
    geo: Geometry,
    mem: Arc<MemRegion>,
}

impl Malloc {
    /// A zeroed RAM disk of `size` bytes (a multiple of `block_size`). Memory is only committed as
    /// blocks are written.
    pub fn new(name: impl Into<String>, size: u64, block_size: u32) -> io::Result<Self> {
        let name = name.into();
        let geo = Geometry::new(&name, size, block_size)?;
        let mem = MemRegion::new(geo.size())
            .map_err(|e| io::Error::new(e.kind(), format!("{name}: mapping {size} bytes: {e}")))?;
        Ok(Malloc {
            info: BdevInfo {
                name,
                kind: "malloc",
                block_size,
                num_blocks: geo.num_blocks,
                deallocate_zeroes: true,
                volatile_cache: false,
            },
            geo,
            mem: Arc::new(mem),
        })
    }
}

impl Bdev for Malloc {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn channel(&self) -> io::Result<Box<dyn BdevChannel>> {
        let exec = MallocChannel {
            geo: self.geo,
            mem: Arc::new(RegionShare(Arc::clone(&self.mem))),
        };
        Ok(Box::new(ImmediateChannel::new(exec, SYNC_QUEUE_DEPTH)))
    }
}

struct MallocChannel {
    geo: Geometry,
    mem: Arc<RegionShare>,
}

impl Immediate for MallocChannel {
    fn execute(&self, op: Op, buf: &mut IoBuf) -> Result<Option<Lent>, IoError> {
        match op {
            Op::Read { lba, blocks } => {
                let (off, len) = self.geo.transfer(lba, blocks, buf)?;
                let dst = buf
                    .as_mut_slice()
                    .get_mut(..len)
                    .ok_or(IoError::BufferTooSmall)?;
                self.mem.read(off, dst)?;
            }
            Op::ReadLent { lba, blocks } => {
                // No copy: the socket sends straight from the RAM disk. A 4 KiB random read
                // then costs one copy from cold memory (the kernel's) instead of two.
                let (off, len) = self.geo.transfer(lba, blocks, buf)?;
                return MemRegion::lend(&self.mem, off, len).map(Some);
            }
            // Writes land in the region at once: there is no cache, FUA changes nothing.
            Op::Write { lba, blocks, .. } => {
                let (off, len) = self.geo.transfer(lba, blocks, buf)?;
                let src = buf.as_slice().get(..len).ok_or(IoError::BufferTooSmall)?;
                self.mem.write(off, src)?;
            }
            Op::Flush => {}
            Op::WriteZeroes { lba, blocks, .. } => {
                let (off, len) = self.geo.extent(lba, u64::from(blocks))?;
                self.mem.zero(off, len)?;
            }
            Op::Deallocate { ranges } => {
                // Check every range before touching any, so a bad request changes nothing.
                self.geo.check_dsm(ranges, buf)?;
                for i in 0..ranges {
                    let r = dsm_range(buf, i).ok_or(IoError::BufferTooSmall)?;
                    let (off, len) = self.geo.extent(r.lba, u64::from(r.blocks))?;
                    self.mem.zero(off, len)?;
                }
            }
        }
        Ok(None)
    }
}
