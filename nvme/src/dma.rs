//! [`DmaRegion`]: host memory a device may read and write. It owns an mmap'd allocation
//! (2 MiB hugepages when the system has them reserved, else anonymous 4 KiB pages) and its VFIO
//! IOMMU mapping, made once when the region is created and removed when it is dropped: no
//! mapping per I/O. It hands out the CPU address and the IOVA (the device address).
//!
//! This is deliberately small and self-contained: it is the seed of `p2p::mem`'s host-memory
//! region, and moves there when memory domains land (the driver will then take regions from
//! the domain instead of making its own).
//!
//! The device writes this memory behind the compiler's back, so the region never hands out
//! `&[u8]` over it; reads and writes copy through raw pointers with bounds checks.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::vfio::Container;

const HUGE: usize = 2 << 20;

#[derive(Debug)]
pub struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    iova: u64,
    hugepages: bool,
    /// The container the region is mapped in; `None` for test regions that no device sees.
    container: Option<Arc<Container>>,
}

// SAFETY: DmaRegion uniquely owns its mapping (like a Vec); moving it between threads is sound.
unsafe impl Send for DmaRegion {}

fn anon(len: usize, huge: bool) -> Option<NonNull<u8>> {
    let flags = libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | libc::MAP_POPULATE
        | if huge { libc::MAP_HUGETLB } else { 0 };
    // SAFETY: a fresh anonymous mapping; nothing aliases it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

impl DmaRegion {
    /// Allocate `len` bytes (rounded up to 4 KiB, or 2 MiB with hugepages), zeroed, and map them
    /// for the devices of `container` at a fresh IOVA.
    pub fn new(container: &Arc<Container>, len: usize) -> io::Result<DmaRegion> {
        let mut r = Self::unmapped(len)?;
        let iova = container.alloc_iova(r.len as u64);
        container.map_dma(r.ptr.as_ptr() as u64, iova, r.len as u64)?;
        r.iova = iova;
        r.container = Some(container.clone());
        Ok(r)
    }

    /// A region no device can reach (IOVA 0): for tests of code that only needs the memory.
    pub fn unmapped(len: usize) -> io::Result<DmaRegion> {
        let len = len.max(1);
        let huge_len = len.div_ceil(HUGE) * HUGE;
        if let Some(ptr) = anon(huge_len, true) {
            return Ok(DmaRegion {
                ptr,
                len: huge_len,
                iova: 0,
                hugepages: true,
                container: None,
            });
        }
        let len = len.div_ceil(4096) * 4096;
        let ptr = anon(len, false).ok_or_else(|| {
            let e = io::Error::last_os_error();
            io::Error::new(e.kind(), format!("mmap {len} bytes for DMA: {e}"))
        })?;
        Ok(DmaRegion {
            ptr,
            len,
            iova: 0,
            hugepages: false,
            container: None,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn iova(&self) -> u64 {
        self.iova
    }
    pub fn hugepages(&self) -> bool {
        self.hugepages
    }
    /// CPU address of byte `off` (for a device that takes raw pointers, never dereferenced here).
    pub fn cpu_addr(&self, off: usize) -> *mut u8 {
        assert!(off <= self.len);
        // SAFETY: in bounds of the mapping (checked).
        unsafe { self.ptr.as_ptr().add(off) }
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off.checked_add(n).is_some_and(|e| e <= self.len),
            "DMA region access {off:#x}+{n:#x} outside {:#x}",
            self.len
        );
    }

    pub fn write(&self, off: usize, src: &[u8]) {
        self.check(off, src.len());
        // SAFETY: in bounds (checked); `src` is caller memory, never inside this mapping as no
        // reference to the mapping is ever handed out.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(off), src.len())
        }
    }

    pub fn read(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len());
        // SAFETY: as `write`, in the other direction.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        }
    }

    pub fn fill(&self, off: usize, n: usize, byte: u8) {
        self.check(off, n);
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off), byte, n) }
    }

    /// Volatile 64-bit store (PRP list entries the device reads).
    pub fn write_u64(&self, off: usize, v: u64) {
        self.check(off, 8);
        assert!(off.is_multiple_of(8));
        // SAFETY: in bounds and aligned (checked; the mapping is page aligned).
        unsafe { self.ptr.as_ptr().add(off).cast::<u64>().write_volatile(v) }
    }

    /// Volatile 16-byte read of a completion entry the device may be writing.
    pub fn read_16(&self, off: usize) -> [u8; 16] {
        self.check(off, 16);
        assert!(off.is_multiple_of(16));
        // SAFETY: in bounds and aligned (checked); read as a volatile copy.
        unsafe {
            self.ptr
                .as_ptr()
                .add(off)
                .cast::<[u8; 16]>()
                .read_volatile()
        }
    }

    /// Volatile 64-byte store of a submission entry.
    pub fn write_64(&self, off: usize, v: &[u8; 64]) {
        self.check(off, 64);
        assert!(off.is_multiple_of(64));
        // SAFETY: in bounds and aligned (checked).
        unsafe {
            self.ptr
                .as_ptr()
                .add(off)
                .cast::<[u8; 64]>()
                .write_volatile(*v)
        }
    }
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        if let Some(c) = &self.container {
            if let Err(e) = c.unmap_dma(self.iova, self.len as u64) {
                tracing::warn!(error = %e, iova = self.iova, "DMA unmap failed");
            }
        }
        // SAFETY: unmapping exactly the mapping made at creation, once, after the IOMMU mapping
        // is gone.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapped_region_roundtrip() {
        let r = DmaRegion::unmapped(10000).unwrap();
        assert!(r.len() >= 12288);
        assert_eq!(r.cpu_addr(0) as usize % 4096, 0);
        let mut b = [1u8; 16];
        r.read(4096, &mut b);
        assert_eq!(b, [0; 16], "zeroed");
        r.write(4096, &[7; 16]);
        assert_eq!(r.read_16(4096), [7; 16]);
        r.write_u64(8, 0x1122_3344_5566_7788);
        let mut e = [0u8; 8];
        r.read(8, &mut e);
        assert_eq!(u64::from_le_bytes(e), 0x1122_3344_5566_7788);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_panics() {
        let r = DmaRegion::unmapped(4096).unwrap();
        let len = r.len();
        r.write(len - 4, &[0; 8]);
    }
}
