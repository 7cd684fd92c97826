//! Memory domains and data buffers (design.md, "Memory").
//!
//! - A [`Region`] is one large allocation made at start-up (or when a pool grows, never per
//!   I/O): host memory on hugepages when the system has them reserved, else anonymous pages. It
//!   carries a registration table, filled once when the region is made, by whoever needs to
//!   reach it: each RDMA protection domain's keys and the address a PCIe device uses (IOVA).
//! - An [`IoBuf`] is a slice of a region that it owns exclusively: it knows its CPU address and
//!   length, its keys for a protection domain ([`IoBuf::keys`]) and its device address
//!   ([`IoBuf::device_addr`]). Nothing guesses an address; PRP and SGE building ask the buffer.
//! - A [`BufPool`] is one reactor's allocator for one [`Domain`]: it carves buffers out of its
//!   regions, recycles them, caps the large ones and queues commands waiting for one in arrival
//!   order. A buffer returns to the pool it came from.
//! - [`Lent`] is memory another owner lends for reading (a RAM disk's blocks), described by raw
//!   pointer and length only, never as a Rust reference, since other threads may write it.
//!
//! - A [`SharedPool`] is a domain whose capacity is fixed and shared by every reactor (an NVMe
//!   controller's CMB, a [`Region::external`] over its BAR slice): buffers of one size carved
//!   once, handed out through per-reactor [`PoolCache`]s refilled in batches from a lock-free
//!   queue, so no lock is taken on the I/O path.
//!
//! RDMA and VFIO plug in through [`Registrar`]: given to a pool when it is made, it registers
//! every region the pool makes before a buffer is carved from it. Every host region a pool makes
//! also gets its device address (IOVA) from the process's [`IovaSpace`], mapped for the NVMe
//! SSDs once per region, never per I/O; a pool that grows while the SSDs are up has its next
//! region made and mapped ahead on the space's own thread ([`IovaSpace::make_ahead`]), not on
//! the reactor.

mod buffer;
pub mod iova;
mod lent;
mod pool;
mod region;
mod shared;

pub use buffer::{IoBuf, ALIGN};
pub use iova::{DmaMapper, IovaSpace};
pub use lent::Lent;
pub use pool::{BufPool, Registrar};
pub use region::{Handle, Pages, Region};
pub use shared::{PoolCache, SharedPool, CACHE_BATCH, CACHE_KEEP, IDLE_RELEASE};

/// A kind of memory with its own allocator (design.md, "Memory"). A pool serves one domain; a
/// block device and a transport each say which domains they can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    /// CPU memory of this host (hugepages when available, else anonymous pages).
    HostMemory,
    /// The Controller Memory Buffer of one NVMe device (`device`: the driver's index for it),
    /// served by a [`SharedPool`]; its buffers' device address is the controller's CMB address.
    Cmb { device: u32 },
}

/// An RDMA protection domain, as the RDMA layer numbers them (one id per PD it opens). Keys are
/// per protection domain: a buffer registered with two PDs has two pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PdId(pub u32);

/// A memory registration's keys: `lkey` for local work requests (SGEs), `rkey` for a peer's RDMA
/// READ/WRITE. Both cover a whole region, so every buffer carved from it shares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    pub lkey: u32,
    pub rkey: u32,
}
