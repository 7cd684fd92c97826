//! `null`: a device of a given size that discards writes and reads zeroes. Every in-range I/O
//! succeeds; completions wait in the channel's ring until `poll`.

use std::io;

use super::malloc::SYNC_QUEUE_DEPTH;
use super::{Geometry, Immediate, ImmediateChannel};
use crate::{Bdev, BdevChannel, BdevInfo, IoError, Op};
use nvmfd_p2p::mem::{IoBuf, Lent};

/// A bit bucket.
pub struct Null {
    info: BdevInfo,
    geo: Geometry,
}

impl Null {
    pub fn new(name: impl Into<String>, size: u64, block_size: u32) -> io::Result<Self> {
        let name = name.into();
        let geo = Geometry::new(&name, size, block_size)?;
        Ok(Null {
            info: BdevInfo {
                name,
                kind: "null",
                block_size,
                num_blocks: geo.num_blocks,
                deallocate_zeroes: true,
                volatile_cache: false,
            },
            geo,
        })
    }
}

impl Bdev for Null {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn channel(&self) -> io::Result<Box<dyn BdevChannel>> {
        let exec = NullChannel { geo: self.geo };
        Ok(Box::new(ImmediateChannel::new(exec, SYNC_QUEUE_DEPTH)))
    }
}

struct NullChannel {
    geo: Geometry,
}

impl Immediate for NullChannel {
    fn execute(&self, op: Op, buf: &mut IoBuf) -> Result<Option<Lent>, IoError> {
        match op {
            Op::Read { lba, blocks } | Op::ReadLent { lba, blocks } => {
                let (_, len) = self.geo.transfer(lba, blocks, buf)?;
                buf.as_mut_slice()
                    .get_mut(..len)
                    .ok_or(IoError::BufferTooSmall)?
                    .fill(0);
            }
            Op::Write { lba, blocks, .. } => drop(self.geo.transfer(lba, blocks, buf)?),
            Op::Flush => {}
            Op::WriteZeroes { lba, blocks, .. } => drop(self.geo.extent(lba, u64::from(blocks))?),
            Op::Deallocate { ranges } => self.geo.check_dsm(ranges, buf)?,
        }
        Ok(None)
    }
}
