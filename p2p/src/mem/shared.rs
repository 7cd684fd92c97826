//! [`SharedPool`]: a memory domain whose capacity is fixed and shared by every reactor (an NVMe
//! controller's CMB: design.md "Memory", "CMB capacity is per device and shared by every
//! reactor"), and [`PoolCache`], one reactor's slice of it.
//!
//! The shared pool carves its regions into buffers of one size once, when it is made, and keeps
//! the free ones in a lock-free bounded queue. A reactor never takes from that queue per I/O: its
//! cache hands out and takes back buffers from a local stack, and touches the shared queue only
//! to refill a batch when the stack is empty or to give a batch back when it holds too many. So
//! the I/O path takes no lock and allocates nothing, and buffers a reactor does not use flow back
//! to the others.

use super::pool::{next_pool_id, Registrar};
use super::region::Carver;
use super::{Domain, IoBuf, Region, ALIGN};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Buffers of one size carved from a few regions of one domain, shared by every reactor through
/// their [`PoolCache`]s. Registrations (RDMA keys, the device address) belong to the regions and
/// are made before the pool is made ([`SharedPool::new`] runs the registrars), never per I/O.
pub struct SharedPool {
    id: u64,
    domain: Domain,
    size: usize,
    total: usize,
    free: ArrayQueue<IoBuf>,
    regions: Vec<Arc<Region>>,
    /// Times a cache found both itself and the shared queue empty.
    exhausted: AtomicU64,
}

impl SharedPool {
    /// A pool of `buf_size`-byte buffers (a multiple of [`ALIGN`]) carved from `regions`, all of
    /// one domain, each registered by every one of `registrars` first. Bytes at a region's end
    /// that do not make a whole buffer are left unused.
    pub fn new(
        regions: Vec<Region>,
        buf_size: usize,
        registrars: &[&dyn Registrar],
    ) -> Result<Arc<SharedPool>, String> {
        if buf_size == 0 || !buf_size.is_multiple_of(ALIGN) {
            return Err(format!(
                "buffer size {buf_size} is not a positive multiple of {ALIGN}"
            ));
        }
        let domain = match regions.first() {
            Some(r) => r.domain(),
            None => return Err("a shared pool needs at least one region".into()),
        };
        if let Some(r) = regions.iter().find(|r| r.domain() != domain) {
            return Err(format!(
                "regions of two domains ({domain:?}, {:?}) in one pool",
                r.domain()
            ));
        }
        let total: usize = regions.iter().map(|r| r.len() / buf_size).sum();
        if total == 0 {
            return Err(format!("no region holds a {buf_size}-byte buffer"));
        }
        let id = next_pool_id();
        let free = ArrayQueue::new(total);
        let mut kept = Vec::with_capacity(regions.len());
        for mut region in regions {
            for r in registrars {
                r.register(&mut region);
            }
            if region.len() < buf_size {
                continue;
            }
            let mut carver = Carver::new(region, buf_size, id);
            kept.push(carver.region().clone());
            while let Some(b) = carver.carve() {
                free.push(b).expect("the queue holds every buffer");
            }
        }
        Ok(Arc::new(SharedPool {
            id,
            domain,
            size: buf_size,
            total,
            free,
            regions: kept,
            exhausted: AtomicU64::new(0),
        }))
    }

    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// The size of every buffer.
    pub fn buf_size(&self) -> usize {
        self.size
    }

    /// Buffers the pool has, lent or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Buffers in the shared queue now (not those in caches or lent).
    pub fn free_shared(&self) -> usize {
        self.free.len()
    }

    /// Times a reactor wanted a buffer and none was left anywhere it could take one from.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }

    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.iter().map(|r| &**r)
    }

    /// One reactor's cache: it refills `batch` buffers at a time (at least 1) and gives `batch`
    /// back once it holds twice that many.
    pub fn cache(self: &Arc<Self>, batch: usize) -> PoolCache {
        let batch = batch.clamp(1, self.total);
        PoolCache {
            shared: self.clone(),
            local: Vec::with_capacity(2 * batch + 1),
            batch,
        }
    }

    fn owns(&self, buf: &IoBuf) -> bool {
        buf.region().carved_by() == self.id && buf.capacity() == self.size
    }
}

impl std::fmt::Debug for SharedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPool")
            .field("domain", &self.domain)
            .field("buf_size", &self.size)
            .field("total", &self.total)
            .field("free_shared", &self.free.len())
            .finish()
    }
}

/// One reactor's share of a [`SharedPool`]: `Send` (made on the control thread, moved to its
/// reactor), not shared. Dropping it gives its buffers back to the pool.
pub struct PoolCache {
    shared: Arc<SharedPool>,
    local: Vec<IoBuf>,
    batch: usize,
}

impl PoolCache {
    pub fn domain(&self) -> Domain {
        self.shared.domain
    }

    pub fn pool(&self) -> &Arc<SharedPool> {
        &self.shared
    }

    /// Buffers held by this cache now.
    pub fn cached(&self) -> usize {
        self.local.len()
    }

    /// A buffer of at least `len` bytes, or None when `len` is larger than the pool's buffers or
    /// none is free anywhere (the caller falls back to host memory and says so).
    pub fn try_get(&mut self, len: usize) -> Option<IoBuf> {
        if len > self.shared.size {
            return None;
        }
        if let Some(b) = self.local.pop() {
            return Some(b);
        }
        for _ in 0..self.batch {
            match self.shared.free.pop() {
                Some(b) => self.local.push(b),
                None => break,
            }
        }
        let b = self.local.pop();
        if b.is_none() {
            self.shared.exhausted.fetch_add(1, Ordering::Relaxed);
        }
        b
    }

    /// Give a buffer back. It must be one of this pool's (a buffer of another pool would be
    /// lost to its own: that is a caller bug, caught in debug builds; release builds drop it).
    pub fn put(&mut self, buf: IoBuf) {
        if !self.shared.owns(&buf) {
            debug_assert!(false, "a buffer of another pool was put into a CMB cache");
            return;
        }
        self.local.push(buf);
        if self.local.len() > 2 * self.batch {
            for _ in 0..self.batch {
                let b = self.local.pop().expect("more than a batch held");
                if let Err(b) = self.shared.free.push(b) {
                    // Cannot happen (the queue holds every buffer); keep it rather than lose it.
                    self.local.push(b);
                    break;
                }
            }
        }
    }
}

impl Drop for PoolCache {
    fn drop(&mut self) {
        for b in self.local.drain(..) {
            let _ = self.shared.free.push(b);
        }
    }
}

impl std::fmt::Debug for PoolCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCache")
            .field("domain", &self.shared.domain)
            .field("cached", &self.local.len())
            .field("batch", &self.batch)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr::NonNull;

    /// A page-aligned mapping standing in for a BAR slice, unmapped when dropped.
    struct Mapping(NonNull<u8>, usize);
    // SAFETY: owns its mapping; only unmapped in Drop.
    unsafe impl Send for Mapping {}
    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmapping exactly the mapping made in `device_like`, once.
            unsafe { libc::munmap(self.0.as_ptr().cast(), self.1) };
        }
    }

    fn device_like(len: usize, device: u32) -> Region {
        // SAFETY: a fresh anonymous mapping.
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
        assert_ne!(p, libc::MAP_FAILED);
        let base = NonNull::new(p.cast::<u8>()).unwrap();
        // SAFETY: the mapping lives as long as its owner, handed to the region; nothing else
        // touches it.
        unsafe {
            Region::external(
                base,
                len,
                Domain::Cmb { device },
                Box::new(Mapping(base, len)),
            )
        }
    }

    struct DeviceAddr(u64);
    impl Registrar for DeviceAddr {
        fn register(&self, region: &mut Region) {
            region.set_device_addr(self.0, None);
        }
    }

    #[test]
    fn buffers_know_their_cpu_and_device_address() {
        let r = device_like(16 * ALIGN, 3);
        let base = r.as_ptr() as usize;
        let reg = DeviceAddr(0xfe00_0000);
        let p = SharedPool::new(vec![r], 4 * ALIGN, &[&reg]).unwrap();
        assert_eq!((p.total(), p.domain()), (4, Domain::Cmb { device: 3 }));
        let mut c = p.cache(2);
        let mut bufs: Vec<IoBuf> = (0..4).map(|_| c.try_get(ALIGN).unwrap()).collect();
        assert!(c.try_get(1).is_none(), "all four lent");
        assert_eq!(p.exhausted(), 1);
        bufs.sort_by_key(|b| b.as_ptr() as usize);
        for (i, b) in bufs.iter_mut().enumerate() {
            assert_eq!(b.as_ptr() as usize, base + i * 4 * ALIGN);
            assert_eq!(b.device_addr(), Some(0xfe00_0000 + (i * 4 * ALIGN) as u64));
            assert_eq!(b.domain(), Domain::Cmb { device: 3 });
            assert_eq!(b.region().pages(), crate::mem::Pages::Device);
            b.as_mut_slice().fill(i as u8);
        }
        assert!(c.try_get(5 * ALIGN).is_none(), "larger than a buffer");
        for b in bufs {
            c.put(b);
        }
        assert!(c.try_get(ALIGN).is_some());
    }

    #[test]
    fn refused_shapes() {
        assert!(SharedPool::new(vec![], ALIGN, &[]).is_err());
        assert!(SharedPool::new(vec![Region::anonymous(ALIGN).unwrap()], 100, &[]).is_err());
        assert!(SharedPool::new(vec![Region::anonymous(ALIGN).unwrap()], 2 * ALIGN, &[]).is_err());
        let mixed = vec![Region::anonymous(ALIGN).unwrap(), device_like(ALIGN, 1)];
        assert!(SharedPool::new(mixed, ALIGN, &[]).is_err());
    }

    #[test]
    fn caches_refill_in_batches_and_give_back_surplus() {
        let p = SharedPool::new(vec![device_like(32 * ALIGN, 0)], ALIGN, &[]).unwrap();
        let mut a = p.cache(4);
        let x = a.try_get(ALIGN).unwrap();
        assert_eq!((a.cached(), p.free_shared()), (3, 28), "one batch taken");
        let held: Vec<IoBuf> = (0..9).map(|_| a.try_get(ALIGN).unwrap()).collect();
        assert_eq!(p.free_shared(), 20);
        a.put(x);
        for b in held {
            a.put(b);
        }
        assert!(a.cached() <= 8, "surplus went back: {}", a.cached());
        assert_eq!(a.cached() + p.free_shared(), 32);
        let mut b = p.cache(4);
        let _y = b.try_get(ALIGN).unwrap();
        drop(a);
        assert_eq!(
            p.free_shared() + b.cached(),
            31,
            "a dropped cache gives all back"
        );
    }

    #[test]
    fn reactors_share_capacity_without_handing_a_buffer_twice() {
        let p = SharedPool::new(vec![device_like(64 * ALIGN, 0)], ALIGN, &[]).unwrap();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut c = p.cache(3);
                    let mut got = 0;
                    for round in 0..2000u32 {
                        let mut held = Vec::new();
                        while held.len() < 12 {
                            match c.try_get(ALIGN) {
                                Some(mut b) => {
                                    b.as_mut_slice()[..8].fill(t);
                                    held.push(b);
                                }
                                None => break,
                            }
                        }
                        std::thread::yield_now();
                        for b in held {
                            assert!(
                                b.as_slice()[..8].iter().all(|&x| x == t),
                                "buffer shared by two threads (round {round})"
                            );
                            got += 1;
                            c.put(b);
                        }
                    }
                    got
                })
            })
            .collect();
        let got: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(got > 0);
        assert_eq!(p.free_shared(), 64, "every buffer came back");
    }

    #[test]
    fn external_region_releases_its_owner_not_the_mapping_it_does_not_own() {
        let dropped = Arc::new(());
        let host = Region::anonymous(ALIGN).unwrap();
        let ptr = NonNull::new(host.as_ptr()).unwrap();
        struct Keep(#[allow(dead_code)] Region, #[allow(dead_code)] Arc<()>);
        // SAFETY: the memory is `host`'s mapping, kept alive by the owner; nothing else uses it.
        let r = unsafe {
            Region::external(
                ptr,
                ALIGN,
                Domain::Cmb { device: 9 },
                Box::new(Keep(host, dropped.clone())),
            )
        };
        assert_eq!(Arc::strong_count(&dropped), 2);
        drop(r);
        assert_eq!(Arc::strong_count(&dropped), 1);
    }
}
