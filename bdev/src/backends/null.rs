//! `null`: a device of a given size that discards writes and reads zeroes. Every in-range I/O
//! succeeds; completions wait in the channel's ring until `poll`.

use std::io;

use super::malloc::SYNC_QUEUE_DEPTH;
use super::{CompletionRing, Geometry};
use crate::{Bdev, BdevChannel, BdevInfo, Completion, Io, IoBuf, IoError, Op};

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
        Ok(Box::new(NullChannel {
            geo: self.geo,
            done: CompletionRing::new(SYNC_QUEUE_DEPTH),
        }))
    }
}

struct NullChannel {
    geo: Geometry,
    done: CompletionRing,
}

impl NullChannel {
    fn execute(&self, op: Op, buf: &mut IoBuf) -> Result<(), IoError> {
        match op {
            Op::Read { lba, blocks } => {
                let (_, len) = self.geo.transfer(lba, blocks, buf)?;
                buf.as_mut_slice()
                    .get_mut(..len)
                    .ok_or(IoError::BufferTooSmall)?
                    .fill(0);
                Ok(())
            }
            Op::Write { lba, blocks } => self.geo.transfer(lba, blocks, buf).map(drop),
            Op::Flush => Ok(()),
            Op::WriteZeroes { lba, blocks } => self.geo.extent(lba, u64::from(blocks)).map(drop),
            Op::Deallocate { ranges } => self.geo.check_dsm(ranges, buf),
        }
    }
}

impl BdevChannel for NullChannel {
    fn submit(&mut self, io: Io) -> Result<(), Io> {
        if self.done.is_full() {
            return Err(io);
        }
        let Io { tag, op, mut buf } = io;
        let result = self.execute(op, &mut buf);
        self.done.push(Completion { tag, result, buf });
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        self.done.drain(done)
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
