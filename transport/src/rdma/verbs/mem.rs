//! Host memory to register: anonymous, page-aligned, owned ([`HostMem`]).

use super::{last_os, Error, Result};
use std::ptr::NonNull;

/// An anonymous private mapping (`mmap`/`munmap`). The CPU reaches it only through
/// [`write_at`](HostMem::write_at)/[`read_at`](HostMem::read_at) (raw copies: a device may be
/// writing other parts of it at the same time, so no `&[u8]` is ever made over it).
pub struct HostMem {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: HostMem owns its mapping; it is plain memory.
unsafe impl Send for HostMem {}
// SAFETY: &HostMem gives only raw copies in and out, never references into the mapping.
unsafe impl Sync for HostMem {}

impl HostMem {
    pub fn new(len: usize) -> Result<HostMem> {
        if len == 0 {
            return Err(Error::Invalid("HostMem of length 0"));
        }
        // SAFETY: an anonymous private mapping with no address hint: no aliasing with anything.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_os("mmap"));
        }
        Ok(HostMem {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL"),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, off: usize, n: usize) -> Result<()> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::Invalid("range outside the memory")),
        }
    }

    /// Copies `data` to `off`.
    pub fn write_at(&self, off: usize, data: &[u8]) -> Result<()> {
        self.check(off, data.len())?;
        // SAFETY: [off, off+len) is inside the mapping (checked); data is a separate Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
        Ok(())
    }

    /// Copies from `off` into `out`.
    pub fn read_at(&self, off: usize, out: &mut [u8]) -> Result<()> {
        self.check(off, out.len())?;
        // SAFETY: [off, off+len) is inside the mapping (checked); out is a separate Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: ptr/len are our mapping, unmapped once; an Mr over it holds the HostMem, so it
        // is deregistered first.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_in_and_out_within_bounds() {
        let m = HostMem::new(8192).unwrap();
        m.write_at(4090, b"abcdef").unwrap();
        let mut out = [0u8; 6];
        m.read_at(4090, &mut out).unwrap();
        assert_eq!(&out, b"abcdef");
        assert!(m.write_at(8190, b"abc").is_err());
        assert!(m.read_at(usize::MAX, &mut out).is_err());
        assert!(HostMem::new(0).is_err());
    }
}
