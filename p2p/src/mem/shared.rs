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
//!
//! A CMB can be small (a few MiB: a few dozen buffers), so a cache's batch and the most it keeps
//! are derived from the pool's size and the number of caches that share it
//! ([`SharedPool::share_among`]): no cache keeps more than `total / (2 * caches)` buffers, so
//! at least half the pool is always lent out or in the shared queue, never stranded in one
//! reactor's cache. And a cache that has handed out nothing for [`IDLE_RELEASE`] gives all it
//! keeps back ([`PoolCache::idle_tick`], from the reactor's timer pass): an idle reactor holds
//! none of the CMB.

use super::pool::{next_pool_id, Registrar};
use super::region::Carver;
use super::{Domain, IoBuf, Region, ALIGN};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most buffers a cache takes from the shared queue at a time (a large pool's batch).
pub const CACHE_BATCH: usize = 8;
/// Most buffers a cache keeps (a large pool's): twice a batch.
pub const CACHE_KEEP: usize = 2 * CACHE_BATCH;
/// A cache that handed out no buffer for this long gives back every one it keeps.
pub const IDLE_RELEASE: Duration = Duration::from_millis(5);

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
    /// Caches the daemon said will share the pool ([`SharedPool::share_among`]).
    sharers: AtomicUsize,
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
            sharers: AtomicUsize::new(0),
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

    /// Say that `caches` more caches will share this pool (control plane, before the
    /// reactors make them: one per reactor and user of the pool). Their sizes follow from it.
    pub fn share_among(&self, caches: usize) {
        self.sharers.fetch_add(caches, Ordering::Relaxed);
    }

    /// Caches sharing the pool (at least 1).
    pub fn sharers(&self) -> usize {
        self.sharers.load(Ordering::Relaxed).max(1)
    }

    /// The batch and the most a cache keeps, for a pool of `total` buffers shared by `caches`
    /// caches: keep at most `total / (2 * caches)` (0 for a pool too small to split: then every
    /// take and give goes to the shared queue, a lock-free pop or push), and at most
    /// [`CACHE_KEEP`]; refill half of that at a time (1 to [`CACHE_BATCH`]).
    pub fn cache_sizes(total: usize, caches: usize) -> (usize, usize) {
        let keep = (total / (2 * caches.max(1))).min(CACHE_KEEP);
        let batch = (keep / 2).clamp(1, CACHE_BATCH);
        (batch, keep)
    }

    /// One reactor's cache, sized for the pool and its sharers ([`SharedPool::cache_sizes`]).
    pub fn reactor_cache(self: &Arc<Self>) -> PoolCache {
        let (batch, keep) = Self::cache_sizes(self.total, self.sharers());
        self.cache_with(batch, keep)
    }

    /// A cache that refills `batch` buffers at a time and keeps at most twice that (tools and
    /// tests that own the pool; reactors take [`SharedPool::reactor_cache`]).
    pub fn cache(self: &Arc<Self>, batch: usize) -> PoolCache {
        self.cache_with(batch, 2 * batch)
    }

    /// A cache that refills `batch` buffers at a time (at least 1) and keeps at most `keep`
    /// (at least `batch - 1`: what a refill leaves after handing one out).
    pub fn cache_with(self: &Arc<Self>, batch: usize, keep: usize) -> PoolCache {
        let batch = batch.clamp(1, self.total);
        let keep = keep.max(batch - 1);
        PoolCache {
            shared: self.clone(),
            local: Vec::with_capacity(keep + 1),
            batch,
            keep,
            takes: 0,
            seen_takes: 0,
            idle_since: None,
        }
    }

    /// Give a buffer straight back to the shared queue, without a reactor cache (its cache
    /// is gone: the RDMA device it was taken for was released while the buffer was out).
    /// A buffer of another pool comes back as the error.
    pub fn put_back(&self, buf: IoBuf) -> Result<(), IoBuf> {
        if !self.owns(&buf) {
            return Err(buf);
        }
        self.free.push(buf)
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
    keep: usize,
    /// Buffers handed out (wrapping), and the count the last timer pass saw.
    takes: u32,
    seen_takes: u32,
    /// Since when the timer passes have seen no take.
    idle_since: Option<Instant>,
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

    /// The refill batch and the most this cache keeps.
    pub fn sizes(&self) -> (usize, usize) {
        (self.batch, self.keep)
    }

    /// The reactor's timer pass: once no buffer was taken for [`IDLE_RELEASE`], give every
    /// kept buffer back to the shared queue (other reactors may be short of them). Returns how
    /// many went back. Touches the shared queue only then.
    pub fn idle_tick(&mut self, now: Instant) -> usize {
        if self.takes != self.seen_takes {
            self.seen_takes = self.takes;
            self.idle_since = None;
            return 0;
        }
        let since = *self.idle_since.get_or_insert(now);
        if self.local.is_empty() || now.saturating_duration_since(since) < IDLE_RELEASE {
            return 0;
        }
        self.release()
    }

    /// Give every kept buffer back to the shared queue; returns how many.
    pub fn release(&mut self) -> usize {
        let n = self.local.len();
        self.give_back(n);
        n - self.local.len()
    }

    fn give_back(&mut self, n: usize) {
        for _ in 0..n {
            let Some(b) = self.local.pop() else {
                break;
            };
            if let Err(b) = self.shared.free.push(b) {
                // Cannot happen (the queue holds every buffer); keep it rather than lose it.
                self.local.push(b);
                break;
            }
        }
    }

    /// A buffer of at least `len` bytes, or None when `len` is larger than the pool's buffers or
    /// none is free anywhere (the caller falls back to host memory and says so).
    pub fn try_get(&mut self, len: usize) -> Option<IoBuf> {
        if len > self.shared.size {
            return None;
        }
        self.takes = self.takes.wrapping_add(1);
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
        if self.local.len() > self.keep {
            // Down to a batch below the most kept, so the next few puts stay local.
            let n = self.local.len() - self.keep.saturating_sub(self.batch);
            self.give_back(n);
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
            .field("keep", &self.keep)
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
        let mut c = p.cache_with(2, 4);
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
    fn a_buffer_whose_cache_is_gone_goes_straight_back() {
        let p = SharedPool::new(vec![device_like(4 * ALIGN, 5)], ALIGN, &[]).unwrap();
        let other = SharedPool::new(vec![device_like(4 * ALIGN, 6)], ALIGN, &[]).unwrap();
        let mut c = p.cache_with(4, 4);
        let b = c.try_get(ALIGN).unwrap();
        drop(c);
        assert_eq!(
            p.free_shared(),
            3,
            "the cache's other buffers went back when it dropped"
        );
        let b = other
            .put_back(b)
            .expect_err("another pool's buffer is refused");
        p.put_back(b).unwrap();
        assert_eq!(p.free_shared(), 4);
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
        let mut a = p.cache_with(4, 8);
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
        let mut b = p.cache_with(4, 8);
        let _y = b.try_get(ALIGN).unwrap();
        drop(a);
        assert_eq!(
            p.free_shared() + b.cached(),
            31,
            "a dropped cache gives all back"
        );
    }

    #[test]
    fn cache_sizes_follow_the_pool_size_and_its_sharers() {
        // A 64 MiB CMB of 128 KiB buffers over 2 reactors: the large-pool sizes.
        assert_eq!(SharedPool::cache_sizes(512, 2), (CACHE_BATCH, CACHE_KEEP));
        // 4 MiB (32 buffers) over 4 reactors: keep 4, refill 2.
        assert_eq!(SharedPool::cache_sizes(32, 4), (2, 4));
        // Too small to split: nothing kept, one at a time.
        assert_eq!(SharedPool::cache_sizes(3, 2), (1, 0));
        assert_eq!(
            SharedPool::cache_sizes(1, 0),
            (1, 0),
            "no sharers said: one"
        );
        for total in 1..200 {
            for caches in 1..9 {
                let (batch, keep) = SharedPool::cache_sizes(total, caches);
                assert!(keep <= total / (2 * caches) && keep <= CACHE_KEEP);
                assert!((1..=CACHE_BATCH).contains(&batch) && batch <= keep.max(1));
            }
        }
    }

    #[test]
    fn caches_of_a_small_pool_never_strand_more_than_their_share() {
        // 16 buffers shared by 4 reactors: each keeps at most 16 / 8 = 2.
        let p = SharedPool::new(vec![device_like(16 * ALIGN, 0)], ALIGN, &[]).unwrap();
        p.share_among(4);
        let mut caches: Vec<PoolCache> = (0..4).map(|_| p.reactor_cache()).collect();
        assert_eq!(caches[0].sizes(), (1, 2));
        // Reactor 0 takes the whole pool, then gives it all back: it keeps 2, the rest is
        // shared again for the others.
        let held: Vec<IoBuf> = (0..16).map(|_| caches[0].try_get(ALIGN).unwrap()).collect();
        assert!(caches[1].try_get(ALIGN).is_none(), "all lent");
        for b in held {
            caches[0].put(b);
            assert!(caches[0].cached() <= 2);
        }
        assert_eq!(caches[0].cached() + p.free_shared(), 16);
        assert!(p.free_shared() >= 14);
        // Each reactor in turn takes and returns buffers: none ever holds more than its share,
        // and the others can always take what is not lent.
        for round in 0..50 {
            let r = round % 4;
            let mut held = Vec::new();
            while held.len() < 5 {
                held.push(caches[r].try_get(ALIGN).expect("the others keep at most 6"));
            }
            for b in held {
                caches[r].put(b);
            }
            let kept: usize = caches.iter().map(|c| c.cached()).sum();
            assert!(caches.iter().all(|c| c.cached() <= 2));
            assert_eq!(kept + p.free_shared(), 16, "round {round}: a buffer lost");
            assert!(p.free_shared() >= 16 - 4 * 2);
        }
    }

    #[test]
    fn an_idle_cache_gives_its_buffers_back() {
        let p = SharedPool::new(vec![device_like(64 * ALIGN, 0)], ALIGN, &[]).unwrap();
        let mut busy = p.reactor_cache();
        let mut idle = p.reactor_cache();
        let t0 = Instant::now();
        let b = idle.try_get(ALIGN).unwrap();
        idle.put(b);
        let kept = idle.cached();
        assert!(kept > 0);
        // The first pass sees the take; the next ones see none, and after IDLE_RELEASE the
        // cache empties into the shared queue.
        assert_eq!(idle.idle_tick(t0), 0);
        assert_eq!(idle.idle_tick(t0 + Duration::from_millis(1)), 0);
        assert_eq!(
            idle.idle_tick(t0 + Duration::from_millis(2)),
            0,
            "not idle long enough"
        );
        assert_eq!(
            idle.idle_tick(t0 + Duration::from_millis(1) + IDLE_RELEASE),
            kept
        );
        assert_eq!(idle.cached(), 0);
        // A cache that keeps taking keeps its buffers.
        for i in 0..10u64 {
            let b = busy.try_get(ALIGN).unwrap();
            busy.put(b);
            assert_eq!(busy.idle_tick(t0 + IDLE_RELEASE * (i as u32 + 1)), 0);
        }
        assert!(busy.cached() > 0);
        assert_eq!(p.free_shared() + busy.cached(), 64);
    }

    #[test]
    fn reactors_share_capacity_without_handing_a_buffer_twice() {
        let p = SharedPool::new(vec![device_like(64 * ALIGN, 0)], ALIGN, &[]).unwrap();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut c = p.cache_with(3, 6);
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
