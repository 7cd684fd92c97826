//! The block-device backends and what they share: geometry checks, DSM range parsing and the
//! preallocated completion ring of the synchronous backends.

pub(crate) mod malloc;
mod mem;
pub(crate) mod null;
pub(crate) mod nvme;
mod nvme_split;
pub(crate) mod uring;
pub(crate) mod uring_pt;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use crate::{Bdev, BdevChannel, Completion, DsmRange, Io, IoError, Op};
use nvmfd_p2p::mem::{IoBuf, Lent};

/// Open the device a config entry describes.
pub(crate) fn open(cfg: &nvmfd_config::BdevConfig) -> io::Result<Arc<dyn Bdev>> {
    use nvmfd_config::BdevKind;
    let name = cfg.name.clone();
    let bdev: Arc<dyn Bdev> = match &cfg.kind {
        BdevKind::Malloc { size, block_size } => {
            Arc::new(malloc::Malloc::new(name, *size, *block_size)?)
        }
        BdevKind::Null { size, block_size } => Arc::new(null::Null::new(name, *size, *block_size)?),
        BdevKind::Uring {
            path,
            passthrough: true,
            ..
        } => Arc::new(uring_pt::UringPassthrough::open(name, path)?),
        BdevKind::Uring {
            path, block_size, ..
        } => Arc::new(uring::Uring::open(name, path, *block_size)?),
        BdevKind::Nvme {
            pci,
            namespace,
            io_timeout_ms,
        } => Arc::new(nvme::Nvme::open(
            name,
            pci,
            *namespace,
            nvmfd_nvme::ctrl::MAX_IO_QUEUES,
            std::time::Duration::from_millis(*io_timeout_ms),
        )?),
    };
    let info = bdev.info();
    tracing::info!(
        bdev = %info.name,
        kind = info.kind,
        block_size = info.block_size,
        num_blocks = info.num_blocks,
        "block device opened"
    );
    Ok(bdev)
}

/// Smallest and largest logical block size a backend accepts.
pub(crate) const MIN_BLOCK_SIZE: u32 = 512;
pub(crate) const MAX_BLOCK_SIZE: u32 = 65536;

/// Size of a device in blocks, and the checks every I/O goes through. Copied into each channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub block_size: u32,
    pub num_blocks: u64,
}

impl Geometry {
    /// Validate a device size and block size. `what` names the device in the error (a bdev name or
    /// a path).
    pub fn new(what: &str, size: u64, block_size: u32) -> io::Result<Self> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(invalid(format!(
                "{what}: block size {block_size} is not a power of two in \
                 {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"
            )));
        }
        if size == 0 {
            return Err(invalid(format!("{what}: size is zero")));
        }
        // block_size is a power of two (checked above).
        if size & (u64::from(block_size) - 1) != 0 {
            return Err(invalid(format!(
                "{what}: size {size} bytes is not a multiple of the block size {block_size}"
            )));
        }
        Ok(Geometry {
            block_size,
            num_blocks: size / u64::from(block_size),
        })
    }

    pub fn size(&self) -> u64 {
        self.num_blocks * u64::from(self.block_size)
    }

    /// Byte offset and length of `blocks` blocks at `lba`, or `OutOfRange`.
    pub fn extent(&self, lba: u64, blocks: u64) -> Result<(u64, u64), IoError> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks => {
                let bs = u64::from(self.block_size);
                Ok((lba * bs, blocks * bs))
            }
            _ => Err(IoError::OutOfRange),
        }
    }

    /// Byte offset and length of a read or write, checked against the device (`OutOfRange`) and
    /// the buffer (`BufferTooSmall`).
    pub fn transfer(&self, lba: u64, blocks: u32, buf: &IoBuf) -> Result<(u64, usize), IoError> {
        let (off, len) = self.extent(lba, u64::from(blocks))?;
        match usize::try_from(len) {
            Ok(len) if len <= buf.capacity() => Ok((off, len)),
            _ => Err(IoError::BufferTooSmall),
        }
    }

    /// Check a deallocate request: the `ranges` descriptors fit in the buffer and every range lies
    /// inside the device.
    pub fn check_dsm(&self, ranges: u16, buf: &IoBuf) -> Result<(), IoError> {
        if usize::from(ranges) * DsmRange::SIZE > buf.capacity() {
            return Err(IoError::BufferTooSmall);
        }
        for i in 0..ranges {
            let r = dsm_range(buf, i).ok_or(IoError::BufferTooSmall)?;
            self.extent(r.lba, u64::from(r.blocks))?;
        }
        Ok(())
    }
}

/// The `i`th DSM range stored in a deallocate buffer, if the buffer holds it.
pub(crate) fn dsm_range(buf: &IoBuf, i: u16) -> Option<DsmRange> {
    let start = usize::from(i) * DsmRange::SIZE;
    let bytes: &[u8; DsmRange::SIZE] = buf
        .as_slice()
        .get(start..start + DsmRange::SIZE)?
        .try_into()
        .ok()?;
    Some(DsmRange::parse(bytes))
}

/// A backend whose I/O finishes during `submit` (malloc, null).
pub(crate) trait Immediate {
    /// Run `op`; a [`Op::ReadLent`] may answer with lent data instead of filling `buf`.
    fn execute(&self, op: Op, buf: &mut IoBuf) -> Result<Option<Lent>, IoError>;
}

/// The channel of an [`Immediate`] backend: each I/O runs in `submit` and its completion waits
/// in a [`CompletionRing`] for `poll`.
pub(crate) struct ImmediateChannel<E> {
    exec: E,
    done: CompletionRing,
}

impl<E: Immediate> ImmediateChannel<E> {
    pub fn new(exec: E, depth: usize) -> Self {
        ImmediateChannel {
            exec,
            done: CompletionRing::new(depth),
        }
    }
}

impl<E: Immediate> BdevChannel for ImmediateChannel<E> {
    fn submit(&mut self, io: Io) -> Result<(), Io> {
        if self.done.is_full() {
            return Err(io);
        }
        let Io { tag, op, mut buf } = io;
        let (result, lent) = match self.exec.execute(op, &mut buf) {
            Ok(lent) => (Ok(()), lent),
            Err(e) => (Err(e), None),
        };
        self.done.push(Completion {
            tag,
            result,
            buf,
            lent,
        });
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        self.done.drain(done)
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

/// Completions of a synchronous channel, waiting for `poll`. Capacity is reserved when the channel
/// is created and never grows: `submit` refuses an I/O when the ring is full.
pub(crate) struct CompletionRing {
    queue: VecDeque<Completion>,
    depth: usize,
}

impl CompletionRing {
    pub fn new(depth: usize) -> Self {
        CompletionRing {
            queue: VecDeque::with_capacity(depth),
            depth,
        }
    }

    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.depth
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Queue a completion. The caller checked `is_full` first; a push past the depth would still
    /// work (the deque grows) but would allocate, so it is a debug assertion.
    pub fn push(&mut self, c: Completion) {
        debug_assert!(!self.is_full(), "completion ring over its depth");
        self.queue.push_back(c);
    }

    /// Hand every queued completion to `done`; returns how many.
    pub fn drain(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let n = self.queue.len();
        for c in self.queue.drain(..) {
            done(c);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_validates_sizes() {
        let g = Geometry::new("d", 1 << 20, 4096).expect("valid");
        assert_eq!(g.num_blocks, 256);
        assert_eq!(g.size(), 1 << 20);
        for bs in [0, 256, 1000, 131072] {
            assert!(Geometry::new("d", 1 << 20, bs).is_err(), "block size {bs}");
        }
        assert!(Geometry::new("d", 0, 512).is_err());
        let e = Geometry::new("/x/y", 4097, 512).expect_err("not a multiple");
        assert!(e.to_string().contains("/x/y"), "{e}");
        assert!(e.to_string().contains("multiple"), "{e}");
    }

    #[test]
    fn extent_and_transfer_checks() {
        let g = Geometry::new("d", 8 * 512, 512).expect("valid");
        assert_eq!(g.extent(0, 8), Ok((0, 4096)));
        assert_eq!(g.extent(7, 1), Ok((3584, 512)));
        assert_eq!(g.extent(8, 0), Ok((4096, 0)));
        assert_eq!(g.extent(8, 1), Err(IoError::OutOfRange));
        assert_eq!(g.extent(u64::MAX, 2), Err(IoError::OutOfRange));
        let buf = IoBuf::new(4096);
        assert_eq!(g.transfer(0, 8, &buf), Ok((0, 4096)));
        let g = Geometry::new("d", 64 * 512, 512).expect("valid");
        assert_eq!(g.transfer(0, 9, &buf), Err(IoError::BufferTooSmall));
        assert_eq!(g.transfer(60, 9, &buf), Err(IoError::OutOfRange));
    }

    #[test]
    fn dsm_checks() {
        let g = Geometry::new("d", 64 * 512, 512).expect("valid");
        let mut buf = IoBuf::new(4096);
        let r0 = DsmRange {
            attributes: 0,
            blocks: 4,
            lba: 60,
        };
        let r1 = DsmRange {
            attributes: 0,
            blocks: 5,
            lba: 60,
        };
        buf.as_mut_slice()[..16].copy_from_slice(&r0.encode());
        buf.as_mut_slice()[16..32].copy_from_slice(&r1.encode());
        assert_eq!(dsm_range(&buf, 0), Some(r0));
        assert_eq!(dsm_range(&buf, 256), None);
        assert_eq!(g.check_dsm(1, &buf), Ok(()));
        assert_eq!(g.check_dsm(2, &buf), Err(IoError::OutOfRange));
        assert_eq!(g.check_dsm(257, &buf), Err(IoError::BufferTooSmall));
    }
}
