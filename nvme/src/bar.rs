//! A mapped BAR (or a slice of one): the only place that dereferences device memory. Registers
//! are read and written with volatile accesses of their own width. A CMB's mapping is handed to
//! a `p2p::mem` region (its memory domain), whose buffers are the only way to its bytes.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::vfio::{Device, RegionInfo, VFIO_REGION_INFO_FLAG_MMAP};

#[derive(Debug)]
pub struct Bar {
    ptr: NonNull<u8>,
    len: usize,
    /// The device mapping was replaced by anonymous memory ([`Bar::revoke`]).
    revoked: AtomicBool,
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
        let p = dev.with_fd(|fd| {
            // SAFETY: a fresh shared mapping of the device fd at a region offset the kernel
            // gave us; no Rust object aliases it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
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
            Ok(p)
        })?;
        Ok(Bar {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL"),
            len,
            revoked: AtomicBool::new(false),
        })
    }

    /// Replace the device mapping, in place and at once, by anonymous memory that reads all
    /// ones (what a removed PCI device answers): the mapping holds a reference to the VFIO
    /// device file, which the kernel's removal of the device waits for, while reactors may
    /// still read registers or ring doorbells through this address. No access ever finds the
    /// range unmapped: the replacement is prepared elsewhere, filled with 0xff, and moved over
    /// the BAR with `mremap(MREMAP_FIXED)`, which unmaps the old pages and maps the new ones
    /// under one lock of the address space (the same trick DPDK's hot-unplug handler plays with
    /// `MAP_FIXED`). Writes land in the anonymous pages, reaching no device: a doorbell rung
    /// late is lost, and the status registers, which the driver only reads, keep reading all
    /// ones. Idempotent.
    ///
    /// `ones: false` leaves the replacement zero-filled on demand, for a mapping of data (a
    /// CMB) rather than registers: nothing decides on its contents, and filling 64 MiB costs
    /// seconds under emulation.
    pub fn revoke(&self, ones: bool) -> io::Result<()> {
        if self.revoked.load(Ordering::Acquire) {
            return Ok(());
        }
        let tmp = anon(self.len, ones)?;
        // SAFETY: moves our own fresh anonymous mapping `tmp` (exactly `len` bytes) over the
        // `len` bytes this Bar owns, replacing them atomically; no Rust reference points into
        // either (the BAR is only reached through volatile accesses of raw pointers).
        let p = unsafe {
            libc::mremap(
                tmp.as_ptr().cast(),
                self.len,
                self.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.ptr.as_ptr().cast::<libc::c_void>(),
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping the temporary mapping made above, which nothing else uses.
            unsafe { libc::munmap(tmp.as_ptr().cast(), self.len) };
            return Err(io::Error::new(
                e.kind(),
                format!("mremap over the BAR: {e}"),
            ));
        }
        self.revoked.store(true, Ordering::Release);
        Ok(())
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
        // SAFETY: unmapping exactly the range mapped in `map` (or its anonymous replacement
        // from `revoke`, same address and length), once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A fresh private anonymous mapping of `len` bytes, every byte 0xff if `ones` (else zero).
fn anon(len: usize, ones: bool) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping; nothing aliases it.
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
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("mmap {len} bytes: {e}")));
    }
    if ones {
        // SAFETY: the `len` bytes just mapped, writable, owned by nobody else yet.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0xff, len) };
    }
    Ok(NonNull::new(p.cast()).expect("mmap returned NULL"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// A Bar over ordinary anonymous memory standing in for a BAR mapping.
    fn fake_bar(len: usize) -> Bar {
        let p = anon(len, false).unwrap();
        Bar {
            ptr: p,
            len,
            revoked: AtomicBool::new(false),
        }
    }

    /// Revoking swaps the memory under concurrent readers and writers: every read sees either a
    /// value written before or all ones, never a fault; afterwards everything reads all ones and
    /// writes vanish.
    #[test]
    fn revoke_replaces_the_mapping_with_all_ones_under_live_accesses() {
        let bar = Arc::new(fake_bar(2 * 4096));
        bar.write32(0x14, 0x0046_0001);
        bar.write64(0x1000, 0x1122_3344_5566_7788);
        let stop = Arc::new(AtomicBool::new(false));
        let seen_ones = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (bar, stop, seen) = (bar.clone(), stop.clone(), seen_ones.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let v = bar.read32(0x14);
                        assert!(v == 0x0046_0001 || v == u32::MAX, "read {v:#x}");
                        if v == u32::MAX {
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                        bar.write32(0x1008, 7); // a doorbell write
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        bar.revoke(true).unwrap();
        assert!(bar.revoked.load(Ordering::Acquire));
        bar.revoke(true).unwrap(); // idempotent
                                   // Bounded: a reader that panicked (a torn value) must fail the test, not hang it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while seen_ones.load(Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline && !readers.iter().any(|r| r.is_finished()),
                "no reader saw the revoked BAR read all ones"
            );
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(bar.read32(0x14), u32::MAX);
        assert_eq!(bar.read64(0x1000), u64::MAX);
        // A late doorbell write lands in the anonymous page: no fault, and the status
        // registers next to it still read all ones.
        bar.write32(0x1000, 0);
        assert_eq!(bar.read32(0x1c), u32::MAX);
    }
}

#[cfg(test)]
mod data_tests {
    use super::*;

    #[test]
    fn a_revoked_data_mapping_reads_zero() {
        let p = anon(4096, true).unwrap();
        let bar = Bar {
            ptr: p,
            len: 4096,
            revoked: AtomicBool::new(false),
        };
        assert_eq!(bar.read32(0), u32::MAX);
        bar.revoke(false).unwrap();
        assert_eq!(bar.read32(0), 0, "a fresh zero page, not the old contents");
    }
}
