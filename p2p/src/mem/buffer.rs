//! [`IoBuf`]: a 4 KiB-aligned slice of a [`Region`], owned exclusively, the unit of data that moves
//! between a transport and a block device. This module is the only place that turns a buffer's
//! pointer into Rust references.

use super::region::Carver;
use super::{Domain, Keys, PdId, Region};
use std::alloc::{handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment of every buffer: enough for O_DIRECT on any logical block size up to 4 KiB and for
/// NVMe PRP entries.
pub const ALIGN: usize = 4096;

/// A data buffer: `capacity` bytes of a region, which it keeps alive.
///
/// The CPU address and length are held inline, so [`IoBuf::as_slice`] and
/// [`IoBuf::as_mut_slice`] cost what a `Vec`'s do; the region is asked only for what a device
/// needs ([`IoBuf::keys`], [`IoBuf::device_addr`]). Moving a buffer (through a pool, a command,
/// a block device) touches no reference count.
pub struct IoBuf {
    ptr: NonNull<u8>,
    cap: usize,
    region: Arc<Region>,
}

// SAFETY: an IoBuf owns its slice of the region exclusively (like a Vec<u8> its heap block), and
// the region is Send + Sync; moving the buffer to another thread is sound.
unsafe impl Send for IoBuf {}

impl IoBuf {
    /// A buffer of its own: `cap` bytes (rounded up to [`ALIGN`], at least one page) of zeroed
    /// host memory in a region made for it alone, unmapped when the buffer is dropped. For
    /// buffers made once (a device's scratch buffer, tests); the data path takes buffers from a
    /// [`super::BufPool`].
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1).div_ceil(ALIGN) * ALIGN;
        let region = Region::anonymous(cap).unwrap_or_else(|_| {
            handle_alloc_error(Layout::from_size_align(cap, ALIGN).expect("IoBuf size overflows"))
        });
        Carver::new(region, cap, 0)
            .carve()
            .expect("a region of the buffer's size holds it")
    }

    /// # Safety
    /// `offset..offset + cap` must lie inside `region`, and no other live `IoBuf` may cover any
    /// byte of it.
    pub(crate) unsafe fn from_region(region: Arc<Region>, offset: usize, cap: usize) -> Self {
        // SAFETY: offset is inside the mapping (the caller's contract), so the pointer is in
        // bounds and not null.
        let ptr = unsafe { NonNull::new_unchecked(region.as_ptr().add(offset)) };
        IoBuf { ptr, cap, region }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap bytes, initialised (mapped zeroed, then only written
        // through this buffer), kept mapped by `region`, and no one else reaches them (the buffer
        // owns its slice); we hold &self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and we hold &mut self, so no alias exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// The CPU address of the first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Raw pointer for a device or the kernel to fill (io_uring). The caller keeps the IoBuf alive
    /// and unaliased until the device is done with it.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The region the buffer is a slice of.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Where the buffer starts in its region.
    pub fn offset(&self) -> usize {
        self.ptr.as_ptr() as usize - self.region.as_ptr() as usize
    }

    pub fn domain(&self) -> Domain {
        self.region.domain()
    }

    /// The keys for protection domain `pd` (an SGE's lkey, the rkey a peer is given), if the
    /// buffer's region is registered with it. Its address for the SGE is [`IoBuf::as_ptr`].
    pub fn keys(&self, pd: PdId) -> Option<Keys> {
        self.region.keys(pd)
    }

    /// The address a PCIe device must use for the buffer's first byte (the IOVA of host memory
    /// mapped through VFIO, a CMB's controller address), if its region has one.
    pub fn device_addr(&self) -> Option<u64> {
        self.region.device_addr().map(|a| a + self.offset() as u64)
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf").field("cap", &self.cap).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::region::Carver;

    #[test]
    fn aligned_zeroed_and_rounded() {
        let mut b = IoBuf::new(5000);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[8191] = 7;
        assert_eq!(b.as_slice()[8191], 7);
        assert_eq!((b.offset(), b.domain()), (0, Domain::HostMemory));
        assert_eq!((b.keys(PdId(0)), b.device_addr()), (None, None));
    }

    #[test]
    fn keys_and_device_address_come_from_the_region() {
        let mut r = Region::anonymous(4 * ALIGN).unwrap();
        r.register(PdId(7), Keys { lkey: 11, rkey: 12 }, None);
        r.set_device_addr(0xfee0_0000, None);
        let mut c = Carver::new(r, 2 * ALIGN, 0);
        let (a, b) = (c.carve().unwrap(), c.carve().unwrap());
        assert_eq!(b.offset(), 2 * ALIGN);
        assert_eq!(a.device_addr(), Some(0xfee0_0000));
        assert_eq!(b.device_addr(), Some(0xfee0_0000 + 2 * ALIGN as u64));
        assert_eq!(b.keys(PdId(7)), Some(Keys { lkey: 11, rkey: 12 }));
        assert_eq!(b.keys(PdId(8)), None);
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, 2 * ALIGN);
    }
}
