//! [`MemRegion`]: the RAM behind a malloc bdev. An anonymous private mapping, faulted in lazily by
//! the kernel (a 1 GiB disk costs nothing until it is written; never-written pages read as zeroes).
//! This module owns the mapping and is the only place in the malloc backend that touches it through
//! raw pointers.
//!
//! # Concurrent access
//!
//! One region is shared (through an `Arc`) by the channels of every reactor, so two threads may copy
//! to or from it at the same time. That is acceptable here for the same reason it is on a real
//! disk: I/Os to disjoint LBA ranges touch disjoint bytes and do not interact at all, and a host
//! that issues *overlapping* I/Os concurrently (a read racing a write, or two writes, to the same
//! blocks) gets undefined content ordering from any NVMe device, so whatever mix of old and new
//! bytes it sees is a valid outcome. No Rust code reads or writes the region through references:
//! bytes move with `ptr::copy_nonoverlapping` / `ptr::write_bytes` between the region and a buffer
//! the caller owns exclusively (an `IoBuf`, which never points into the region), or are lent
//! ([`MemRegion::lend`]) as a raw pointer and length that only describe them to the kernel, which
//! copies them out (`writev`) like a device would by DMA; and the region's bytes carry no
//! invariant whatsoever (any bit pattern is a valid block content), so a torn copy cannot break
//! anything but the data the host itself raced on. The one formal caveat: the Rust memory model calls
//! such an overlapping unsynchronised access a data race; we treat the region like memory shared
//! with a device or another process, which the compiler cannot reason about (it is only reached via
//! raw pointers from `mmap`), and only a misbehaving host can make it happen.

use std::any::Any;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::IoError;
use nvmfd_p2p::mem::Lent;

/// Spans at least this long (after trimming to page boundaries) are zeroed by dropping their pages
/// with `madvise(MADV_DONTNEED)` rather than by writing zeroes.
const MADVISE_MIN: usize = 64 * 1024;

pub(crate) struct MemRegion {
    base: NonNull<u8>,
    len: usize,
    page: usize,
}

// SAFETY: the region is plain memory owned by this value (unmapped only in Drop); see the module
// documentation for why concurrent copies from several threads are acceptable.
unsafe impl Send for MemRegion {}
// SAFETY: as above: every method takes &self and only copies bytes with raw pointer primitives after
// a bounds check; no references into the mapping are ever handed out.
unsafe impl Sync for MemRegion {}

impl MemRegion {
    /// Map `len` bytes of zeroed, lazily allocated memory.
    pub fn new(len: u64) -> io::Result<Self> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad mapping size"))?;
        // SAFETY: an anonymous mapping at an address of the kernel's choosing; no existing memory is
        // affected. MAP_NORESERVE: the pages are only committed when written.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(raw.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        // Ask for transparent huge pages: far fewer TLB misses and page faults when I/O sweeps
        // a large RAM disk. Advisory; where THP is off this changes nothing.
        // SAFETY: the range is exactly the mapping just created.
        unsafe { libc::madvise(raw, len, libc::MADV_HUGEPAGE) };
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page)
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        Ok(MemRegion { base, len, page })
    }

    /// The byte range `off..off + len` as usize bounds, if it lies inside the region.
    fn range(&self, off: u64, len: usize) -> Result<(usize, usize), IoError> {
        let start = usize::try_from(off).map_err(|_| IoError::OutOfRange)?;
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok((start, end)),
            _ => Err(IoError::OutOfRange),
        }
    }

    /// Copy `dst.len()` bytes starting at byte `off` of the region into `dst`.
    pub fn read(&self, off: u64, dst: &mut [u8]) -> Result<(), IoError> {
        let (start, _) = self.range(off, dst.len())?;
        // SAFETY: start..start+dst.len() is inside the mapping (checked above), which stays mapped
        // while &self lives; dst is an exclusive borrow of memory outside the mapping, so the ranges
        // do not overlap. Concurrency: see the module documentation.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(start),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    /// Lend `len` bytes at byte `off` of the region `owner` holds, instead of copying them out.
    pub fn lend(owner: &Arc<RegionShare>, off: u64, len: usize) -> Result<Lent, IoError> {
        let (start, _) = owner.range(off, len)?;
        // SAFETY: start is inside the mapping (checked above), so the pointer is in bounds and
        // not null; start..start+len stays mapped while the Lent holds its share of `owner`
        // (the mapping is only unmapped when the last MemRegion reference drops).
        let ptr = unsafe { NonNull::new_unchecked(owner.base.as_ptr().add(start)) };
        let keep: Arc<dyn Any + Send + Sync> = owner.clone();
        // SAFETY: see above: `keep` keeps the range mapped and readable.
        Ok(unsafe { Lent::new(ptr, len, keep) })
    }

    /// Copy `src` into the region starting at byte `off`.
    pub fn write(&self, off: u64, src: &[u8]) -> Result<(), IoError> {
        let (start, _) = self.range(off, src.len())?;
        // SAFETY: as in `read`, with the direction reversed: the destination is inside the mapping,
        // the source is a borrowed slice outside it.
        let dst = unsafe { self.base.as_ptr().add(start) };
        if src.len() >= STREAM_MIN {
            // SAFETY: dst..dst+len lies inside the mapping (checked by `range`) and does not
            // overlap `src`.
            unsafe { stream_copy(dst, src) };
        } else {
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        }
        Ok(())
    }

    /// Zero `len` bytes starting at byte `off`. Large page-aligned spans are handed back to the
    /// kernel (they read as zeroes again and stop costing memory).
    pub fn zero(&self, off: u64, len: u64) -> Result<(), IoError> {
        let len = usize::try_from(len).map_err(|_| IoError::OutOfRange)?;
        let (start, end) = self.range(off, len)?;
        let inner_start = start.next_multiple_of(self.page);
        let inner_end = end / self.page * self.page;
        if inner_end > inner_start && inner_end - inner_start >= MADVISE_MIN {
            self.write_zeroes(start, inner_start);
            // SAFETY: inner_start..inner_end is page-aligned (the base is page-aligned) and inside
            // our private anonymous mapping; MADV_DONTNEED makes later accesses see zero-filled
            // pages. A concurrent copy to these pages from another thread either lands before the
            // discard (and is dropped) or after it (and sticks): the overlapping-I/O case of the
            // module documentation, never a memory-safety problem.
            let rc = unsafe {
                libc::madvise(
                    self.base.as_ptr().add(inner_start).cast(),
                    inner_end - inner_start,
                    libc::MADV_DONTNEED,
                )
            };
            if rc != 0 {
                tracing::debug!(
                    error = %io::Error::last_os_error(),
                    "madvise(MADV_DONTNEED) failed, writing zeroes instead"
                );
                self.write_zeroes(inner_start, inner_end);
            }
            self.write_zeroes(inner_end, end);
        } else {
            self.write_zeroes(start, end);
        }
        Ok(())
    }

    /// Write zero bytes to `start..end`, which `zero` has checked to be inside the region.
    fn write_zeroes(&self, start: usize, end: usize) {
        if end <= start || end > self.len {
            return;
        }
        // SAFETY: start..end is inside the mapping (checked by the caller and above).
        unsafe { std::ptr::write_bytes(self.base.as_ptr().add(start), 0, end - start) };
    }
}

/// One reactor's share of a region. Lent data holds a reference to this share rather than to the
/// region, so its reference count stays in that reactor's cache instead of bouncing between
/// reactors on every read.
pub(crate) struct RegionShare(pub Arc<MemRegion>);

impl std::ops::Deref for RegionShare {
    type Target = MemRegion;
    fn deref(&self) -> &MemRegion {
        &self.0
    }
}

impl Drop for MemRegion {
    fn drop(&mut self) {
        // SAFETY: base/len describe the mapping created in `new`, unmapped exactly once; no pointer
        // into it outlives `self` (nothing hands one out).
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if rc != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "munmap of a malloc bdev failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_memory_reads_zero() {
        let m = MemRegion::new(1 << 30).expect("1 GiB lazy mapping");
        let mut b = vec![0xffu8; 4096];
        m.read((1 << 30) - 4096, &mut b).expect("in range");
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(m.read(1 << 30, &mut b[..1]), Err(IoError::OutOfRange));
        assert_eq!(m.write((1 << 30) - 1, &b[..2]), Err(IoError::OutOfRange));
        assert_eq!(m.zero(u64::MAX, 2), Err(IoError::OutOfRange));
    }

    #[test]
    fn zero_small_and_large_spans() {
        let size = 1 << 20;
        let m = MemRegion::new(size as u64).expect("map");
        let ones = vec![0x5au8; size];
        m.write(0, &ones).expect("write");
        // Small, unaligned span: written zeroes.
        m.zero(100, 300).expect("zero");
        // Large span with unaligned ends: head and tail written, the middle madvised away.
        m.zero(5000, 600_000).expect("zero");
        let mut back = vec![0u8; size];
        m.read(0, &mut back).expect("read");
        for (i, &b) in back.iter().enumerate() {
            let zeroed = (100..400).contains(&i) || (5000..605_000).contains(&i);
            assert_eq!(b, if zeroed { 0 } else { 0x5a }, "byte {i}");
        }
    }
}

/// Writes at least this large bypass the CPU caches: a RAM disk's destination is rarely read
/// again soon, and ordinary stores to cold memory first read every line they overwrite.
const STREAM_MIN: usize = 32 * 1024;

/// Copy `src` to `dst` with non-temporal stores where the CPU has them (SSE2, every x86_64);
/// elsewhere an ordinary copy.
///
/// # Safety
/// `dst` must be valid for `src.len()` bytes of writes and must not overlap `src`.
unsafe fn stream_copy(dst: *mut u8, src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let len = src.len();
        // Ordinary copy up to the first 16-byte aligned destination byte.
        let head = dst.align_offset(16).min(len);
        // SAFETY: head <= len, both ranges valid per the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, head) };
        let body = (len - head) / 64 * 64;
        let mut i = head;
        while i < head + body {
            // SAFETY: i + 64 <= len; loads are unaligned, stores go to 16-byte aligned dst + i.
            unsafe {
                let s = src.as_ptr().add(i) as *const __m128i;
                let d = dst.add(i) as *mut __m128i;
                let (a, b, c, e) = (
                    _mm_loadu_si128(s),
                    _mm_loadu_si128(s.add(1)),
                    _mm_loadu_si128(s.add(2)),
                    _mm_loadu_si128(s.add(3)),
                );
                _mm_stream_si128(d, a);
                _mm_stream_si128(d.add(1), b);
                _mm_stream_si128(d.add(2), c);
                _mm_stream_si128(d.add(3), e);
            }
            i += 64;
        }
        // SAFETY: the tail [i, len) is inside both ranges; the fence orders the streaming stores
        // before the completion that reports them.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr().add(i), dst.add(i), len - i);
            _mm_sfence();
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len())
    };
}

#[cfg(test)]
mod stream_tests {
    #[test]
    fn stream_copy_matches_at_every_alignment() {
        let src: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + 3) as u8).collect();
        for shift in [0usize, 1, 8, 15, 16, 33] {
            for len in [0usize, 5, 64, 100, 32 * 1024, 65_537] {
                let mut dst = vec![0u8; len + 64];
                // SAFETY: dst has room for `len` bytes at `shift`, and does not overlap src.
                unsafe { super::stream_copy(dst.as_mut_ptr().add(shift), &src[3..3 + len]) };
                assert_eq!(
                    &dst[shift..shift + len],
                    &src[3..3 + len],
                    "shift {shift} len {len}"
                );
                assert!(
                    dst[..shift].iter().all(|&b| b == 0)
                        && dst[shift + len..].iter().all(|&b| b == 0)
                );
            }
        }
    }
}
