//! [`Lent`]: read data a device lends out of its own memory instead of copying it into the I/O's
//! buffer (a RAM disk answering [`crate::Op::ReadLent`]). This module owns the raw pointer and is
//! the only place that turns it into something a caller can use.

use std::any::Any;
use std::io::IoSlice;
use std::ptr::NonNull;
use std::sync::Arc;

/// Bytes lent by a device, kept valid by a share of the memory's owner.
///
/// Rust code never reads through a `Lent`: [`Lent::io_slice`] only describes the bytes to the
/// kernel (`writev`), which copies them out the way a NIC would DMA them. The memory is a RAM
/// disk's, which other reactors may write at the same time if a host races a write against its
/// own read of the same blocks; the host then gets an undefined mix of old and new data, as from
/// any NVMe device (see the malloc backend's memory module).
pub struct Lent {
    ptr: NonNull<u8>,
    len: usize,
    _owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: the pointer targets memory kept alive by `_owner` (Send + Sync) and is only read, by
// the kernel, through `io_slice`; moving the handle to another thread changes nothing.
unsafe impl Send for Lent {}

impl Lent {
    /// # Safety
    /// `ptr..ptr + len` must stay mapped and readable for as long as `owner` is alive.
    pub(crate) unsafe fn new(
        ptr: NonNull<u8>,
        len: usize,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Self {
        Lent {
            ptr,
            len,
            _owner: owner,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `from..to` (clamped to the length) as a piece of a `writev`.
    pub fn io_slice(&self, from: usize, to: usize) -> IoSlice<'_> {
        let to = to.min(self.len);
        let from = from.min(to);
        // SAFETY: from..to lies within the lent range, which `_owner` keeps mapped while self
        // lives; the slice only describes the bytes to the kernel (see the type's docs).
        IoSlice::new(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(from), to - from) })
    }
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent").field("len", &self.len).finish()
    }
}
