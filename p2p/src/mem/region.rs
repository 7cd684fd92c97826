//! [`Region`]: one large mapping of host memory that buffers are carved from, with its
//! registration table. This module owns the mapping: it is the only place that maps and unmaps
//! it, and [`Carver`] the only thing that cuts it into buffers.

use super::{Domain, IoBuf, Keys, PdId, ALIGN};
use std::any::Any;
use std::io;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};

/// Whatever keeps a registration valid (a memory region of an RDMA device, a VFIO DMA mapping).
/// The region drops it, before unmapping its memory.
pub type Handle = Box<dyn Any + Send>;

/// The pages behind a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// Reserved hugepages (MAP_HUGETLB) of `size` bytes: fewer IOMMU and NIC translation entries,
    /// no page faults on the data path.
    Huge { size: usize },
    /// Ordinary anonymous pages, faulted in when first touched.
    Normal,
    /// Memory of a device (a BAR slice: an NVMe controller's CMB) mapped by its owner
    /// ([`Region::external`]); the region neither maps nor unmaps it.
    Device,
}

struct Registration {
    pd: PdId,
    keys: Keys,
    _handle: Option<Handle>,
}

/// One mapping of host memory, made at start-up (or when a pool grows), never per I/O.
///
/// Its registration table is filled while the region is still owned by one hand (`&mut self`),
/// before any buffer is carved from it: once buffers share it, it is read-only, so a buffer's
/// keys and device address never change under it.
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    domain: Domain,
    pages: Pages,
    /// The pool that carves this region into buffers (0: none; see `BufPool::put`).
    carved_by: u64,
    registrations: Vec<Registration>,
    device: Option<(u64, Option<Handle>)>,
    /// Set for a region over someone else's mapping ([`Region::external`]): what keeps that
    /// mapping alive. Such a region is not unmapped here.
    owner: Option<Handle>,
}

// SAFETY: the region owns its mapping (unmapped only in Drop) and hands out no references to it;
// the bytes are reached only through the IoBufs carved from it, each of which owns its slice
// exclusively (see `Carver`). The registration handles are only dropped, in Drop.
unsafe impl Send for Region {}
// SAFETY: every `&self` method reads plain fields (addresses, keys) that never change once the
// region is shared; the handles (possibly not Sync) are never reached through `&self`.
unsafe impl Sync for Region {}

/// The system's default hugepage size (what MAP_HUGETLB maps), read once.
fn huge_page_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("Hugepagesize:"))
                    .and_then(|v| v.trim().strip_suffix("kB"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
            })
            .map(|kib| kib * 1024)
            .filter(|s| s.is_power_of_two())
            .unwrap_or(2 << 20)
    })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// Map `len` bytes (a multiple of the page size) of private anonymous memory.
fn map(len: usize, extra_flags: libc::c_int) -> io::Result<NonNull<u8>> {
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing; no existing memory
    // is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(raw.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned a null mapping"))
}

impl Region {
    /// At least `len` bytes of zeroed host memory: on hugepages when `len` is at least one
    /// hugepage and the system has enough reserved (the length is then rounded up to whole
    /// hugepages), else on ordinary anonymous pages.
    pub fn host(len: usize) -> io::Result<Region> {
        let huge = huge_page_size();
        if len >= huge {
            let hlen = len.next_multiple_of(huge);
            // MAP_HUGETLB fails at once (ENOMEM) when too few hugepages are reserved; the
            // reservation is taken now, so later faults cannot fail.
            if let Ok(base) = map(hlen, libc::MAP_HUGETLB) {
                return Ok(Region::mapped(base, hlen, Pages::Huge { size: huge }));
            }
        }
        Region::anonymous(len)
    }

    /// At least `len` bytes of zeroed ordinary anonymous memory (rounded up to whole pages).
    pub fn anonymous(len: usize) -> io::Result<Region> {
        let len = len.max(1).next_multiple_of(page_size().max(ALIGN));
        let base = map(len, 0)?;
        Ok(Region::mapped(base, len, Pages::Normal))
    }

    /// Anonymous host pages labelled as memory of `domain`: a stand-in for device memory (a
    /// CMB) in tests and benchmarks that have no device. Nothing reaches it but the CPU.
    pub fn stand_in(len: usize, domain: Domain) -> io::Result<Region> {
        let mut r = Region::anonymous(len)?;
        r.domain = domain;
        Ok(r)
    }

    fn mapped(base: NonNull<u8>, len: usize, pages: Pages) -> Region {
        Region {
            base,
            len,
            domain: Domain::HostMemory,
            pages,
            carved_by: 0,
            registrations: Vec::new(),
            device: None,
            owner: None,
        }
    }

    /// A region over memory mapped by someone else, in `domain`: a device BAR slice such as
    /// an NVMe controller's CMB (`Pages::Device`), whose mapping `owner` keeps alive. The region
    /// drops `owner` (after its registrations) instead of unmapping anything. `base` and `len`
    /// must be multiples of [`ALIGN`] (buffers are carved at `ALIGN` boundaries).
    ///
    /// Buffers carved from it give out `&[u8]` over that memory like any other: the device
    /// writes it only while a buffer is lent to it for a command, as with DMA into host memory.
    ///
    /// # Safety
    /// `base..base + len` must stay mapped readable and writable for as long as `owner` lives,
    /// and nothing but the buffers carved from this region (and the device, for a command they
    /// are lent to) may read or write it.
    pub unsafe fn external(base: NonNull<u8>, len: usize, domain: Domain, owner: Handle) -> Region {
        assert!(
            (base.as_ptr() as usize).is_multiple_of(ALIGN) && len.is_multiple_of(ALIGN),
            "external region {:p}+{len:#x} not {ALIGN}-aligned",
            base.as_ptr()
        );
        Region {
            base,
            len,
            domain,
            pages: Pages::Device,
            carved_by: 0,
            registrations: Vec::new(),
            device: None,
            owner: Some(owner),
        }
    }

    /// The CPU address of the first byte (what an RDMA registration or a VFIO DMA mapping is
    /// given). Nothing may be read or written through it: the bytes belong to the buffers.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn domain(&self) -> Domain {
        self.domain
    }

    pub fn pages(&self) -> Pages {
        self.pages
    }

    /// Record the region's registration with protection domain `pd` (replacing an earlier one
    /// with the same PD); `handle` is kept until the region is unmapped.
    pub fn register(&mut self, pd: PdId, keys: Keys, handle: Option<Handle>) {
        self.registrations.retain(|r| r.pd != pd);
        self.registrations.push(Registration {
            pd,
            keys,
            _handle: handle,
        });
    }

    /// The keys of the region's registration with `pd`, if it has one.
    pub fn keys(&self, pd: PdId) -> Option<Keys> {
        self.registrations
            .iter()
            .find(|r| r.pd == pd)
            .map(|r| r.keys)
    }

    /// Record the address a PCIe device must use for the region's first byte (its IOVA once
    /// VFIO has mapped it); `handle` is kept until the region is unmapped.
    pub fn set_device_addr(&mut self, addr: u64, handle: Option<Handle>) {
        self.device = Some((addr, handle));
    }

    /// The device address of the region's first byte, if one was recorded.
    pub fn device_addr(&self) -> Option<u64> {
        self.device.as_ref().map(|(a, _)| *a)
    }

    pub(crate) fn carved_by(&self) -> u64 {
        self.carved_by
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Registrations first: an MR or a DMA mapping must not outlive the memory it covers.
        self.registrations.clear();
        self.device = None;
        if self.owner.take().is_some() {
            // Someone else's mapping (`external`): releasing the owner was all there was to do.
            return;
        }
        // SAFETY: base/len describe the mapping made in `host`/`anonymous`, unmapped exactly once;
        // no buffer points into it any more (each holds the region alive).
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap of a buffer region failed");
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.len)
            .field("domain", &self.domain)
            .field("pages", &self.pages)
            .field(
                "registered_pds",
                &self.registrations.iter().map(|r| r.pd).collect::<Vec<_>>(),
            )
            .field("device_addr", &self.device_addr())
            .finish()
    }
}

/// Cuts one region into `size`-byte buffers, front to back, each byte range handed out once.
pub(crate) struct Carver {
    region: Arc<Region>,
    size: usize,
    next: usize,
}

impl Carver {
    /// `size` is a multiple of [`ALIGN`] (so every buffer is aligned: the base is page aligned).
    /// `carved_by` names the pool the buffers belong to (0: none).
    pub(crate) fn new(mut region: Region, size: usize, carved_by: u64) -> Carver {
        assert!(
            size > 0 && size.next_multiple_of(ALIGN) == size,
            "buffer size {size}"
        );
        region.carved_by = carved_by;
        Carver {
            region: Arc::new(region),
            size,
            next: 0,
        }
    }

    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Buffers still to be carved.
    pub(crate) fn left(&self) -> usize {
        (self.region.len - self.next) / self.size
    }

    pub(crate) fn carve(&mut self) -> Option<IoBuf> {
        if self.left() == 0 {
            return None;
        }
        let offset = self.next;
        self.next += self.size;
        // SAFETY: offset..offset + size lies inside the region (checked by `left`), and `next`
        // only moves forward, so no other buffer ever covers any of these bytes.
        Some(unsafe { IoBuf::from_region(self.region.clone(), offset, self.size) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carves_disjoint_aligned_buffers_and_stops_at_the_end() {
        let mut c = Carver::new(Region::anonymous(5 * 8192).unwrap(), 8192, 0);
        let base = c.region().as_ptr() as usize;
        let mut bufs: Vec<IoBuf> = std::iter::from_fn(|| c.carve()).collect();
        assert_eq!(bufs.len(), 5);
        for (i, b) in bufs.iter_mut().enumerate() {
            assert_eq!(b.as_mut_ptr() as usize, base + i * 8192);
            assert!(b.as_slice().iter().all(|&x| x == 0), "fresh memory is zero");
            b.as_mut_slice().fill(i as u8 + 1);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.as_slice().iter().all(|&x| x == i as u8 + 1), "buffer {i}");
        }
        assert!(c.carve().is_none());
    }

    #[test]
    fn registration_table() {
        let mut r = Region::anonymous(4096).unwrap();
        assert_eq!((r.keys(PdId(1)), r.device_addr()), (None, None));
        let dropped = Arc::new(());
        r.register(PdId(1), Keys { lkey: 1, rkey: 2 }, None);
        r.register(
            PdId(2),
            Keys { lkey: 3, rkey: 4 },
            Some(Box::new(dropped.clone())),
        );
        r.register(PdId(1), Keys { lkey: 5, rkey: 6 }, None);
        r.set_device_addr(0x1000_0000, None);
        assert_eq!(r.keys(PdId(1)), Some(Keys { lkey: 5, rkey: 6 }));
        assert_eq!(r.keys(PdId(2)), Some(Keys { lkey: 3, rkey: 4 }));
        assert_eq!(r.keys(PdId(3)), None);
        assert_eq!(r.device_addr(), Some(0x1000_0000));
        assert_eq!(Arc::strong_count(&dropped), 2);
        drop(r);
        assert_eq!(Arc::strong_count(&dropped), 1, "handles go with the region");
    }

    #[test]
    fn host_memory_is_usable_with_or_without_hugepages() {
        let len = huge_page_size();
        let r = Region::host(len + 1).unwrap();
        assert!(r.len() > len);
        match r.pages() {
            Pages::Huge { size } => assert_eq!(r.len() % size, 0),
            Pages::Normal => assert_eq!(r.len() % page_size(), 0),
            Pages::Device => panic!("host memory is not device memory"),
        }
        let mut c = Carver::new(r, ALIGN, 0);
        let mut b = c.carve().unwrap();
        b.as_mut_slice()[ALIGN - 1] = 9;
        assert_eq!(b.as_slice()[ALIGN - 1], 9);
    }
}
