//! [`Lent`]: read data an owner lends out of its own memory instead of copying it into an I/O's
//! buffer (a RAM disk answering a read). This module owns the raw pointer.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

/// Bytes lent by their owner, kept valid (mapped) by a share of that owner.
///
/// The memory is not the holder's: it is, say, a RAM disk's, which other reactors may write at the
/// same time if a host races a write against its own read of the same blocks (the host then gets
/// an undefined mix of old and new data, as from any NVMe device). So no Rust reference is ever
/// made over it: a `Lent` gives out only its raw parts ([`Lent::raw`]), which the code at the
/// boundary hands to the kernel (a `writev` iovec) or a device, which copy the bytes out the way
/// a NIC would DMA them.
pub struct Lent {
    ptr: NonNull<u8>,
    len: usize,
    _owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: the pointer targets memory kept alive by `_owner` (Send + Sync) and is never
// dereferenced here; moving the handle to another thread changes nothing.
unsafe impl Send for Lent {}

impl Lent {
    /// # Safety
    /// `ptr..ptr + len` must stay mapped and readable for as long as `owner` is alive.
    pub unsafe fn new(ptr: NonNull<u8>, len: usize, owner: Arc<dyn Any + Send + Sync>) -> Self {
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

    /// Bytes `from..to` (clamped to the length) as a raw pointer and a length, valid (mapped and
    /// readable) while `self` lives. Only for the kernel or a device to read: never make a Rust
    /// reference over them (see the type's docs).
    pub fn raw(&self, from: usize, to: usize) -> (*const u8, usize) {
        let to = to.min(self.len);
        let from = from.min(to);
        // wrapping_add: plain address arithmetic, no claim about the bytes (from <= len keeps it
        // inside the lent range).
        (self.ptr.as_ptr().wrapping_add(from).cast_const(), to - from)
    }
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_parts_are_clamped_and_keep_the_owner_alive() {
        let owner: Arc<Vec<u8>> = Arc::new(vec![1, 2, 3, 4, 5]);
        let base = owner.as_ptr();
        let keep: Arc<dyn Any + Send + Sync> = owner.clone();
        // SAFETY: the Vec's heap block stays allocated while `keep` holds it.
        let l = unsafe { Lent::new(NonNull::new(base.cast_mut()).unwrap(), 5, keep) };
        assert_eq!(Arc::strong_count(&owner), 2);
        assert_eq!(l.raw(1, 3), (base.wrapping_add(1), 2));
        assert_eq!(l.raw(4, 99), (base.wrapping_add(4), 1));
        assert_eq!(l.raw(9, 99), (base.wrapping_add(5), 0));
        assert_eq!(l.raw(3, 2), (base.wrapping_add(2), 0));
        drop(l);
        assert_eq!(Arc::strong_count(&owner), 1);
    }
}
