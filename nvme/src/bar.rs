//! A mapped BAR (or a slice of one): the only place that dereferences device memory. Registers
//! are read and written with volatile accesses of their own width. A CMB's mapping is handed to
//! a `p2p::mem` region (its memory domain), whose buffers are the only way to its bytes.

use std::io;
use std::ptr::NonNull;

use crate::vfio::{Device, RegionInfo, VFIO_REGION_INFO_FLAG_MMAP};

#[derive(Debug)]
pub struct Bar {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is device memory shared with the device; every access goes through
// volatile reads/writes of distinct registers, which is what the hardware expects from any
// thread. Who writes which doorbell is the driver's protocol, not a memory-safety question.
unsafe impl Send for Bar {}
// SAFETY: see Send; no method hands out references into the mapping.
unsafe impl Sync for Bar {}

impl Bar {
    /// Map `len` bytes at `offset` of region `ri` of `dev`.
    pub fn map(dev: &Device, ri: &RegionInfo, offset: u64, len: usize) -> io::Result<Bar> {
        if ri.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(io::Error::other(format!(
                "BAR {} cannot be mmapped through VFIO",
                ri.index
            )));
        }
        if offset + len as u64 > ri.size || len == 0 {
            return Err(io::Error::other(format!(
                "BAR {} slice {offset:#x}+{len:#x} outside its {:#x} bytes",
                ri.index, ri.size
            )));
        }
        // SAFETY: a fresh shared mapping of the device fd at a region offset the kernel gave us;
        // no Rust object aliases it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                dev.raw_fd(),
                (ri.offset + offset) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("mmap BAR {}: {e}", ri.index),
            ));
        }
        Ok(Bar {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL"),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The CPU address of the mapping's first byte (page aligned), for a memory region over it.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    fn check(&self, off: usize, width: usize) {
        assert!(
            off.is_multiple_of(width) && off + width <= self.len,
            "BAR access {off:#x}/{width} outside {:#x}",
            self.len
        );
    }

    pub fn read32(&self, off: usize) -> u32 {
        self.check(off, 4);
        // SAFETY: in bounds and aligned (checked); device memory read with its own width.
        unsafe { self.ptr.as_ptr().add(off).cast::<u32>().read_volatile() }
    }

    pub fn write32(&self, off: usize, v: u32) {
        self.check(off, 4);
        // SAFETY: as read32.
        unsafe { self.ptr.as_ptr().add(off).cast::<u32>().write_volatile(v) }
    }

    /// 64-bit registers as two 32-bit accesses, low dword first (NVMe Base 2.0, 3.1.4: the host
    /// may access 64-bit properties as two 32-bit ones).
    pub fn read64(&self, off: usize) -> u64 {
        u64::from(self.read32(off)) | u64::from(self.read32(off + 4)) << 32
    }

    pub fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A read-only look at the first page of BAR0 through sysfs (`resourceN`), whichever driver
/// owns the device: for `nvmfd setup --status`. Registers are only read.
pub struct SysfsBar {
    ptr: NonNull<u8>,
    len: usize,
}

impl SysfsBar {
    fn open(bdf: &str) -> io::Result<SysfsBar> {
        let path = crate::sysfs::dev_path(bdf).join("resource0");
        let f = std::fs::File::open(&path)?;
        let len = 4096;
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only shared mapping of the BAR file; no Rust object aliases it
        // and it is only read with volatile loads.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SysfsBar {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL"),
            len,
        })
    }

    fn read32(&self, off: usize) -> u32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: in bounds and aligned (checked); a volatile register read.
        unsafe { self.ptr.as_ptr().add(off).cast::<u32>().read_volatile() }
    }

    /// `None` without CAP.CMBS; else the CMB size as CMBSZ shows it now (0 until CRE is set)
    /// and its BAR.
    pub fn cap_cmb(bdf: &str) -> io::Result<Option<(u64, u32)>> {
        let b = Self::open(bdf)?;
        let cap = crate::regs::Cap(
            u64::from(b.read32(crate::regs::off::CAP))
                | u64::from(b.read32(crate::regs::off::CAP + 4)) << 32,
        );
        if cap.0 == u64::MAX || !cap.cmbs() {
            return Ok(None);
        }
        let sz = crate::regs::Cmbsz(b.read32(crate::regs::off::CMBSZ));
        let loc = crate::regs::Cmbloc(b.read32(crate::regs::off::CMBLOC));
        Ok(Some((sz.size_bytes().unwrap_or(0), loc.bir())))
    }
}

impl Drop for SysfsBar {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `open`, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
