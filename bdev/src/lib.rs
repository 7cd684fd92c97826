//! Block devices behind one trait.
//!
//! A [`Bdev`] is shared by all reactors (it is `Send + Sync` and holds no per-I/O state); each reactor
//! opens its own [`BdevChannel`] and drives it from its polling loop, like SPDK's I/O channels. I/O is
//! submitted with an owned [`IoBuf`] that comes back in the [`Completion`], so an asynchronous backend
//! (io_uring) can never outlive the memory it writes into, and nothing is allocated per I/O.

pub mod testing;

pub use backends::malloc::Malloc;
pub use backends::null::Null;
pub use backends::nvme::Nvme;
pub use backends::uring::Uring;
pub use backends::uring_pt::UringPassthrough;

use nvmfd_p2p::mem::{IoBuf, Lent};
use std::sync::Arc;

/// Static facts about a block device.
#[derive(Debug, Clone)]
pub struct BdevInfo {
    pub name: String,
    /// Backend kind for logs and reports: "malloc", "null", "uring", "nvme".
    pub kind: &'static str,
    /// Logical block size in bytes (a power of two, 512..=65536).
    pub block_size: u32,
    pub num_blocks: u64,
    /// Deallocated blocks read back as zeroes.
    pub deallocate_zeroes: bool,
    /// The device has a volatile write cache (Flush means something).
    pub volatile_cache: bool,
}

/// One NVMe DSM range as the host sends it (16 bytes, little endian): context attributes, length in
/// blocks, starting LBA. Deallocate I/O carries a list of these in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsmRange {
    pub attributes: u32,
    pub blocks: u32,
    pub lba: u64,
}

impl DsmRange {
    pub const SIZE: usize = 16;

    pub fn parse(b: &[u8; 16]) -> Self {
        DsmRange {
            attributes: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            blocks: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            lba: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.attributes.to_le_bytes());
        b[4..8].copy_from_slice(&self.blocks.to_le_bytes());
        b[8..16].copy_from_slice(&self.lba.to_le_bytes());
        b
    }
}

/// What an I/O does. LBAs and block counts are already checked against the device size by the
/// caller; a backend still refuses out-of-range requests with [`IoError::OutOfRange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read `blocks` blocks at `lba` into the first `blocks * block_size` bytes of the buffer.
    Read { lba: u64, blocks: u32 },
    /// As `Read`, but a device that holds the data in memory (malloc) may lend it instead of
    /// copying: the completion's `lent` then has the bytes and the buffer is untouched. For a
    /// submitter that hands the data straight to the kernel (a socket) and never reads it.
    ReadLent { lba: u64, blocks: u32 },
    /// Write `blocks` blocks at `lba` from the first `blocks * block_size` bytes of the buffer.
    /// With `fua` (Force Unit Access), the data is on non-volatile media when the I/O completes
    /// (NVMe Base 2.0, Write command, CDW12 bit 30): a backend with a volatile cache writes through
    /// it or flushes before completing. The core also sets it for every write while the host has
    /// the Volatile Write Cache feature disabled.
    Write { lba: u64, blocks: u32, fua: bool },
    /// Make completed writes durable.
    Flush,
    /// Write zeroes to `blocks` blocks at `lba` (the buffer is not used). `fua` as for `Write`
    /// (Write Zeroes has its own FUA bit, CDW12 bit 30).
    WriteZeroes { lba: u64, blocks: u32, fua: bool },
    /// Deallocate the `ranges` [`DsmRange`]s stored at the start of the buffer.
    Deallocate { ranges: u16 },
}

/// An I/O handed to a channel. `tag` is the submitter's and comes back unchanged.
#[derive(Debug)]
pub struct Io {
    pub tag: u64,
    pub op: Op,
    pub buf: IoBuf,
}

/// Why an I/O failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    #[error("LBA range outside the device")]
    OutOfRange,
    #[error("buffer smaller than the transfer")]
    BufferTooSmall,
    #[error("operation not supported by this backend")]
    Unsupported,
    /// The backend's device failed; carries the errno.
    #[error("device I/O error (errno {0})")]
    Media(i32),
    /// An NVMe SSD answered with this status; the target returns it to the host unchanged.
    #[error("NVMe status SCT {sct:#x} SC {sc:#04x}{}", if *.dnr { " DNR" } else { "" })]
    Nvme { sct: u8, sc: u8, dnr: bool },
}

/// A finished I/O: the submitter's tag, the result and the buffer back (and, for an
/// [`Op::ReadLent`] the device served from its own memory, the lent data).
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub result: Result<(), IoError>,
    pub buf: IoBuf,
    pub lent: Option<Lent>,
}

/// A block device, shared by every reactor.
pub trait Bdev: Send + Sync {
    fn info(&self) -> &BdevInfo;
    /// The device's configured name (shorthand for `info().name`).
    fn name(&self) -> &str {
        &self.info().name
    }
    /// Open this reactor's channel. Called once per reactor at start-up, never on the I/O path.
    fn channel(&self) -> std::io::Result<Box<dyn BdevChannel>>;
    /// Whether buffers of memory `domain` can be handed to this device (design.md "Memory": the
    /// core picks a buffer both the transport and the bdev can use). Every backend takes host
    /// memory; `nvme` also takes buffers in its own SSD's CMB, without a copy.
    fn reaches(&self, domain: nvmfd_p2p::mem::Domain) -> bool {
        domain == nvmfd_p2p::mem::Domain::HostMemory
    }
    /// The NVMe controller behind an `nvme` bdev (its CMB, its VFIO device for a dma-buf
    /// export): for the start-up RDMA registration of the CMB. None for every other backend.
    fn nvme_controller(&self) -> Option<&Arc<nvmfd_nvme::Controller>> {
        None
    }
    /// What the device offers for peer-to-peer placement (the start-up decision,
    /// `nvmfd_p2p::placement`): only `nvme` has device memory (its SSD's CMB).
    fn device_memory(&self) -> nvmfd_p2p::placement::DeviceMemory {
        nvmfd_p2p::placement::DeviceMemory::NotNvme {
            kind: self.info().kind.to_owned(),
        }
    }
    /// The pool of the device's CMB, whose buffers this device uses in place (made on first
    /// call if no one made it; control plane). None without a usable CMB.
    fn cmb_domain_pool(&self) -> Option<Arc<nvmfd_p2p::mem::SharedPool>> {
        None
    }
}

/// One reactor's view of a device. Not `Send`: it lives and dies on the reactor that opened it.
pub trait BdevChannel {
    /// Queue an I/O. On refusal (the channel is full) the I/O is handed back untouched; the caller
    /// retries after a `poll`.
    fn submit(&mut self, io: Io) -> Result<(), Io>;
    /// Reap finished I/Os, calling `done` for each; returns how many. Never blocks.
    fn poll(&mut self, done: &mut dyn FnMut(Completion)) -> usize;
    /// I/Os submitted and not yet reaped.
    fn in_flight(&self) -> usize;
}

/// Open the device a config entry describes.
pub fn open(cfg: &nvmfd_config::BdevConfig) -> std::io::Result<Arc<dyn Bdev>> {
    backends::open(cfg)
}

mod backends;
