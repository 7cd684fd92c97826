//! [`IovaSpace`]: the device addresses (IOVAs) of host memory, one per buffer for every PCIe
//! device the process drives through VFIO (design.md: "a buffer knows the address a PCIe device
//! must use").
//!
//! Every host region a [`super::BufPool`] makes gets an IOVA range when it is made
//! ([`IovaSpace::register`], through the pool), recorded as its device address before a buffer
//! is carved from it, so buffers never learn an address later. The mapping itself is done by a
//! [`DmaMapper`] (the NVMe driver's one VFIO container, shared by all of its controllers):
//! - regions made before a mapper is attached are mapped when it is ([`IovaSpace::attach`]):
//!   all of them, or the attach fails and nothing is left mapped;
//! - regions made while one is attached are mapped as they are made; a region whose mapping
//!   fails gets no device address (its buffers take the path that needs none: a bounce);
//! - a region's mapping is removed when the region is dropped, before its memory is unmapped.
//!
//! So once a mapper is attached, every host region with a device address is mapped: an IOVA
//! is made once per region, at start-up or when a pool grows, never per I/O.
//!
//! The space also hands out IOVA ranges for memory the driver maps itself (queue rings, PRP
//! lists: [`IovaSpace::alloc`]); ranges are never reused while the process lives.
//!
//! Mapping a region (VFIO_IOMMU_MAP_DMA: the kernel pins and maps every page) takes the space's
//! lock and can take milliseconds for a large region, so a pool that grows on a reactor does not
//! do it there when it can help it: [`IovaSpace::make_ahead`] hands the making and mapping of
//! the pool's next region to the space's own thread (started by [`IovaSpace::attach`], on the
//! control thread that brings the first controller up), and the pool takes the finished region
//! from a lock-free queue when it runs out (`BufPool`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_queue::ArrayQueue;

use super::{Domain, Region};

/// Maps host memory for the devices of one IOMMU context (a VFIO container).
pub trait DmaMapper: Send + Sync {
    /// Map `len` bytes at CPU address `vaddr` to `iova`, readable and writable by the devices.
    fn map(&self, vaddr: usize, iova: u64, len: usize) -> io::Result<()>;
    fn unmap(&self, iova: u64, len: usize) -> io::Result<()>;
}

/// Where IOVAs start: above 4 GiB, clear of the x86 MSI window (0xfee00000) and other reserved
/// ranges low in the address space.
pub const IOVA_BASE: u64 = 1 << 32;
/// IOVA ranges are 2 MiB aligned (a hugepage region can be one IOMMU superpage entry).
const IOVA_ALIGN: u64 = 2 << 20;

struct Entry {
    vaddr: usize,
    iova: u64,
    len: usize,
    mapped: bool,
}

struct State {
    next: u64,
    /// Live registered regions.
    entries: Vec<Entry>,
    mapper: Option<Arc<dyn DmaMapper>>,
    /// Regions whose mapping failed while a mapper was attached (they have no device address).
    failed: u64,
}

/// See the module documentation. [`IovaSpace::host`] is the process's one space; tests make
/// their own.
pub struct IovaSpace {
    state: Mutex<State>,
    /// Whether a mapper is attached, readable without the lock (a pool asks on its growth
    /// path whether making a region ahead is worth it).
    attached: AtomicBool,
    /// The thread that makes and maps regions ahead of need ([`IovaSpace::make_ahead`]); None
    /// until the first attach, or if it could not be started.
    ahead: OnceLock<Option<Sender<Ahead>>>,
}

/// A request for a host region of `len` bytes, made and registered (mapped) off the caller's
/// thread, delivered into `out`.
struct Ahead {
    len: usize,
    out: Arc<ArrayQueue<Region>>,
}

/// Kept by a region as its device-address handle: dropping it removes the mapping.
struct Mapping {
    space: Arc<IovaSpace>,
    iova: u64,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.space.forget(self.iova);
    }
}

impl IovaSpace {
    pub fn new() -> Arc<IovaSpace> {
        Arc::new(IovaSpace {
            state: Mutex::new(State {
                next: IOVA_BASE,
                entries: Vec::new(),
                mapper: None,
                failed: 0,
            }),
            attached: AtomicBool::new(false),
            ahead: OnceLock::new(),
        })
    }

    /// The process's space: every [`super::BufPool`]'s host regions are registered in it.
    pub fn host() -> &'static Arc<IovaSpace> {
        static HOST: OnceLock<Arc<IovaSpace>> = OnceLock::new();
        HOST.get_or_init(IovaSpace::new)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(st: &mut State, len: u64) -> u64 {
        let len = len.max(1).div_ceil(IOVA_ALIGN) * IOVA_ALIGN;
        let iova = st.next;
        st.next += len;
        iova
    }

    /// Reserve an IOVA range of `len` bytes (2 MiB aligned) for memory the caller maps itself.
    pub fn alloc(&self, len: u64) -> u64 {
        Self::take(&mut self.lock(), len)
    }

    /// Give a fresh host-memory `region` its IOVA as its device address (mapping it now when a
    /// mapper is attached; on failure the region keeps no device address). Called once per
    /// region, before any buffer is carved from it. Other domains are left alone.
    pub fn register(self: &Arc<Self>, region: &mut Region) {
        if region.domain() != Domain::HostMemory || region.device_addr().is_some() {
            return;
        }
        let vaddr = region.as_ptr() as usize;
        let len = region.len();
        let mut st = self.lock();
        let iova = Self::take(&mut st, len as u64);
        let mut mapped = false;
        if let Some(m) = st.mapper.clone() {
            if let Err(e) = m.map(vaddr, iova, len) {
                st.failed += 1;
                tracing::warn!(error = %e, len, "cannot map a buffer region for the NVMe SSDs; I/O with its buffers is copied through the driver's own memory");
                return;
            }
            mapped = true;
        }
        st.entries.push(Entry {
            vaddr,
            iova,
            len,
            mapped,
        });
        drop(st);
        region.set_device_addr(
            iova,
            Some(Box::new(Mapping {
                space: self.clone(),
                iova,
            })),
        );
    }

    fn forget(&self, iova: u64) {
        let mut st = self.lock();
        let Some(i) = st.entries.iter().position(|e| e.iova == iova) else {
            return;
        };
        let e = st.entries.swap_remove(i);
        if e.mapped {
            if let Some(m) = &st.mapper {
                if let Err(err) = m.unmap(e.iova, e.len) {
                    tracing::warn!(error = %err, iova = e.iova, "buffer region DMA unmap failed");
                }
            }
        }
    }

    /// Attach `mapper` and map every registered region with it. All or nothing: on a failure the
    /// regions mapped so far are unmapped again and the mapper is not attached. Refused while
    /// another mapper is attached. The first attach also starts the space's map-ahead thread
    /// ([`IovaSpace::make_ahead`]).
    pub fn attach(self: &Arc<Self>, mapper: Arc<dyn DmaMapper>) -> io::Result<()> {
        self.ahead.get_or_init(|| self.start_ahead());
        let mut st = self.lock();
        if st.mapper.is_some() {
            return Err(io::Error::other("a DMA mapper is attached already"));
        }
        let mut done = 0;
        let mut err = None;
        for e in &st.entries {
            match mapper.map(e.vaddr, e.iova, e.len) {
                Ok(()) => done += 1,
                Err(x) => {
                    err = Some(io::Error::new(
                        x.kind(),
                        format!("mapping a {} byte buffer region: {x}", e.len),
                    ));
                    break;
                }
            }
        }
        if let Some(x) = err {
            for e in &st.entries[..done] {
                let _ = mapper.unmap(e.iova, e.len);
            }
            return Err(x);
        }
        for e in &mut st.entries {
            e.mapped = true;
        }
        st.mapper = Some(mapper);
        self.attached.store(true, Ordering::Release);
        Ok(())
    }

    /// The map-ahead thread: it holds only a weak reference, so a space that is dropped (a
    /// test's) ends it when its sender goes.
    fn start_ahead(self: &Arc<Self>) -> Option<Sender<Ahead>> {
        let (tx, rx) = mpsc::channel::<Ahead>();
        let space = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("nvmfd-map-ahead".into())
            .spawn(move || {
                for job in rx {
                    let Some(space) = space.upgrade() else { return };
                    // A region that cannot be made is not delivered: the pool grows on its own
                    // thread instead, and reports the failure there.
                    let Ok(mut region) = Region::host(job.len) else {
                        continue;
                    };
                    space.register(&mut region);
                    // The pool asks for one region at a time; a full queue cannot happen.
                    let _ = job.out.push(region);
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the buffer map-ahead thread; pools that grow map their new regions on their own thread");
                None
            }
        }
    }

    /// Ask for a host region of `len` bytes to be made and registered (given its IOVA and, with
    /// a mapper attached, mapped) on the space's own thread, delivered into `out` (a queue of
    /// one). `false` when there is no such thread or no mapper is attached (registering is then
    /// only bookkeeping and the caller does it itself, at no cost). Called when a pool is about
    /// to run out, not per I/O; it takes no lock (a channel send).
    pub fn make_ahead(&self, len: usize, out: &Arc<ArrayQueue<Region>>) -> bool {
        if !self.attached.load(Ordering::Acquire) {
            return false;
        }
        let Some(Some(tx)) = self.ahead.get() else {
            return false;
        };
        tx.send(Ahead {
            len,
            out: out.clone(),
        })
        .is_ok()
    }

    /// Unmap every region and detach the mapper (the last device left the container). Regions
    /// keep their IOVAs: a later [`IovaSpace::attach`] maps them again at the same addresses.
    pub fn detach(&self) {
        let mut st = self.lock();
        let Some(m) = st.mapper.take() else {
            return;
        };
        self.attached.store(false, Ordering::Release);
        for e in &mut st.entries {
            if e.mapped {
                let _ = m.unmap(e.iova, e.len);
                e.mapped = false;
            }
        }
    }

    pub fn attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Registered regions, the bytes they cover and regions that could not be mapped.
    pub fn stats(&self) -> (usize, u64, u64) {
        let st = self.lock();
        let bytes = st.entries.iter().map(|e| e.len as u64).sum();
        (st.entries.len(), bytes, st.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        maps: Mutex<Vec<(usize, u64, usize)>>,
        fail_after: Mutex<Option<usize>>,
        calls: Mutex<usize>,
    }

    impl DmaMapper for Fake {
        fn map(&self, vaddr: usize, iova: u64, len: usize) -> io::Result<()> {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            if self.fail_after.lock().unwrap().is_some_and(|n| *c > n) {
                return Err(io::Error::other("fake: out of IOMMU space"));
            }
            self.maps.lock().unwrap().push((vaddr, iova, len));
            Ok(())
        }
        fn unmap(&self, iova: u64, _len: usize) -> io::Result<()> {
            let mut m = self.maps.lock().unwrap();
            let i = m
                .iter()
                .position(|x| x.1 == iova)
                .expect("unmap of a mapped range");
            m.remove(i);
            Ok(())
        }
    }

    fn region(space: &Arc<IovaSpace>, len: usize) -> Region {
        let mut r = Region::anonymous(len).unwrap();
        space.register(&mut r);
        r
    }

    #[test]
    fn regions_before_attach_are_mapped_at_attach_and_unmapped_on_drop() {
        let s = IovaSpace::new();
        let a = region(&s, 8192);
        let b = region(&s, 3 << 20);
        let (ia, ib) = (a.device_addr().unwrap(), b.device_addr().unwrap());
        assert_eq!(ia, IOVA_BASE);
        assert_eq!(ib, IOVA_BASE + IOVA_ALIGN, "2 MiB aligned, no overlap");
        assert!(!s.attached());
        let f = Arc::new(Fake::default());
        s.attach(f.clone()).unwrap();
        assert_eq!(
            *f.maps.lock().unwrap(),
            vec![
                (a.as_ptr() as usize, ia, a.len()),
                (b.as_ptr() as usize, ib, b.len())
            ]
        );
        // Made while attached: mapped at once, a fresh IOVA past the others.
        let c = region(&s, 4096);
        let ic = c.device_addr().unwrap();
        assert_eq!(ic, ib + (4 << 20));
        assert_eq!(f.maps.lock().unwrap().len(), 3);
        drop(a);
        assert_eq!(f.maps.lock().unwrap().len(), 2, "dropped region unmapped");
        s.detach();
        assert!(f.maps.lock().unwrap().is_empty(), "detach unmaps all");
        // Attach again: the live regions get the same IOVAs.
        s.attach(f.clone()).unwrap();
        let mut got: Vec<u64> = f.maps.lock().unwrap().iter().map(|m| m.1).collect();
        got.sort_unstable();
        assert_eq!(got, vec![ib, ic]);
        assert_eq!(s.stats().0, 2);
    }

    #[test]
    fn attach_is_all_or_nothing() {
        let s = IovaSpace::new();
        let _a = region(&s, 4096);
        let _b = region(&s, 4096);
        let f = Arc::new(Fake::default());
        *f.fail_after.lock().unwrap() = Some(1);
        assert!(s.attach(f.clone()).is_err());
        assert!(!s.attached());
        assert!(
            f.maps.lock().unwrap().is_empty(),
            "the first mapping was undone"
        );
    }

    #[test]
    fn a_region_that_cannot_be_mapped_has_no_device_address() {
        let s = IovaSpace::new();
        let f = Arc::new(Fake::default());
        *f.fail_after.lock().unwrap() = Some(0);
        s.attach(f.clone()).unwrap();
        let r = region(&s, 4096);
        assert_eq!(r.device_addr(), None);
        assert_eq!(s.stats(), (0, 0, 1));
    }

    #[test]
    fn other_domains_are_left_alone() {
        let s = IovaSpace::new();
        let mut r = Region::anonymous(4096).unwrap();
        r.set_device_addr(0x1234_0000, None);
        s.register(&mut r);
        assert_eq!(r.device_addr(), Some(0x1234_0000));
        assert_eq!(s.stats().0, 0);
    }
}
