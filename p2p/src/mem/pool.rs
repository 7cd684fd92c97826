//! [`BufPool`]: one reactor's data buffers of one memory domain, carved from a few regions,
//! recycled, capped, and handed to waiting commands in arrival order.

use super::region::Carver;
use super::{Domain, IoBuf, IovaSpace, Region, ALIGN};
use crossbeam_queue::ArrayQueue;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Registers every region a pool makes, before a buffer is carved from it (RDMA: `ibv_reg_mr`
/// with each protection domain, then [`Region::register`]; VFIO: a DMA mapping, then
/// [`Region::set_device_addr`]). Called when the pool is made and when it grows, never per I/O
/// (so a buffer [`BufPool::get`] makes past the cap, a region of its own, is not registered).
/// A registration that fails leaves the region without that entry (the buffer then has no keys
/// or device address, and the I/O must take a path that needs none); the registrar says why.
pub trait Registrar {
    fn register(&self, region: &mut Region);
}

/// A region grows the pool by at least this much (one 2 MiB hugepage), unless the cap is nearer.
const GROW_MIN_BYTES: usize = 2 << 20;
/// And by at most this much at once.
const GROW_MAX_BYTES: usize = 64 << 20;

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh id for a pool (its regions record it, so a returned buffer is known as its own).
pub(crate) fn next_pool_id() -> u64 {
    NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed)
}

/// Buffers of one size, carved from regions on demand.
struct Class {
    size: usize,
    /// The region being carved (None before the first).
    carver: Option<Carver>,
    /// Buffers carved so far, from every region.
    carved: usize,
    regions: Vec<Arc<Region>>,
    /// The next region, made and mapped ahead of need by the IOVA space's thread
    /// ([`IovaSpace::make_ahead`]), and whether one was asked for and not taken yet.
    ready: Arc<ArrayQueue<Region>>,
    pending: bool,
}

impl Class {
    fn new(size: usize) -> Class {
        Class {
            size,
            carver: None,
            carved: 0,
            regions: Vec::new(),
            ready: Arc::new(ArrayQueue::new(1)),
            pending: false,
        }
    }

    /// Buffers the next region holds: as many again as there are, within the bounds (and, for
    /// large ones, the cap `limit`: 0 at the cap).
    fn next_count(&self, limit: Option<usize>) -> usize {
        let count = self
            .carved
            .max(GROW_MIN_BYTES / self.size)
            .min(GROW_MAX_BYTES / self.size)
            .max(1);
        match limit {
            Some(l) => count.min(l.saturating_sub(self.carved)),
            None => count,
        }
    }
}

/// Buffers of the two sizes a reactor hands out, recycled instead of freed. A command takes one
/// when it arrives and gives it back when it completes, so after warm-up the data path never
/// allocates; memory follows the reactor's peak of commands in flight, not connections × queue
/// depth. Transfers up to `small_size` bytes (most 4 KiB I/O and every admin command) take a
/// small buffer, larger ones a large buffer. Owned by one reactor; not shared across threads.
///
/// Buffers are slices of a few large regions of the pool's [`Domain`], made when the pool is made
/// and, as it grows, one more each time its free buffers run out (each at least as large as
/// everything carved before, so a pool holds a handful of regions); every region is registered
/// ([`Registrar`]) before a buffer is carved from it. Pages of a region are touched only when a
/// buffer carved from it is first used, so memory still follows the peak of buffers made.
///
/// Large buffers are capped: [`BufPool::try_get`] makes at most `large_limit` of them and then
/// says no, so a reactor's memory has a ceiling however many hosts ask at once. A command that
/// was refused queues for a turn ([`BufPool::wait`]) and gets a buffer with
/// [`BufPool::take_turn`] strictly in arrival order across all of the reactor's connections, so
/// no connection starves while others keep the pool busy. [`BufPool::get`] always succeeds;
/// buffers it makes past the cap are freed when they come back.
pub struct BufPool {
    id: u64,
    domain: Domain,
    small_class: Class,
    large_class: Class,
    small: Vec<IoBuf>,
    large: Vec<IoBuf>,
    /// Large buffers alive now (free or lent), and the most that [`BufPool::try_get`] makes.
    large_made: usize,
    large_limit: usize,
    /// Large buffers that came back while the pool was past its cap and so count as freed, but
    /// are slices of a region that cannot be unmapped piecemeal: the next buffer "made" is one
    /// of these before anything new is carved.
    reserve: Vec<IoBuf>,
    /// One entry per command waiting for a large buffer: its connection's waiter id.
    waiters: VecDeque<u32>,
    next_waiter: u32,
    /// Buffers created because the free list was empty (after the preallocated ones).
    grown: u64,
    /// Regions the pool grew by that were made and mapped ahead, off its thread, and those it
    /// had to make itself when it ran out first.
    grown_ahead: u64,
    grown_inline: u64,
    registrars: Vec<Box<dyn Registrar>>,
    /// The IOVA space host regions are registered in (the process's; a test's own).
    space: Arc<IovaSpace>,
}

impl BufPool {
    /// A host-memory pool with `small` buffers of `small_size` and `large` buffers of
    /// `large_size` made now, and at most `large_limit` large buffers (at least one, and at least
    /// `large`). Sizes are rounded up to [`ALIGN`].
    pub fn new(
        small_size: usize,
        small: usize,
        large_size: usize,
        large: usize,
        large_limit: usize,
    ) -> Self {
        Self::with_registrars(
            small_size,
            small,
            large_size,
            large,
            large_limit,
            Vec::new(),
        )
    }

    /// As [`BufPool::new`], with every region registered by each of `registrars` before use.
    pub fn with_registrars(
        small_size: usize,
        small: usize,
        large_size: usize,
        large: usize,
        large_limit: usize,
        registrars: Vec<Box<dyn Registrar>>,
    ) -> Self {
        let small_size = small_size.max(1).next_multiple_of(ALIGN);
        let large_size = large_size.next_multiple_of(ALIGN).max(small_size);
        let large_limit = large_limit.max(large).max(1);
        let mut p = BufPool {
            id: next_pool_id(),
            domain: Domain::HostMemory,
            small_class: Class::new(small_size),
            large_class: Class::new(large_size),
            // Room for twice the preallocated buffers, not for the limit: a large
            // buffer_pool_size must not cost memory up front.
            small: Vec::with_capacity(small * 2),
            large: Vec::with_capacity(large * 2),
            large_made: large,
            large_limit,
            reserve: Vec::new(),
            waiters: VecDeque::new(),
            next_waiter: 0,
            grown: 0,
            grown_ahead: 0,
            grown_inline: 0,
            registrars,
            space: IovaSpace::host().clone(),
        };
        // The preallocated buffers: one region each for the small and the large ones.
        if small > 0 {
            p.add_region(false, small);
            for _ in 0..small {
                let b = p.carve(false);
                p.small.push(b);
            }
        }
        if large > 0 {
            p.add_region(true, large);
            for _ in 0..large {
                let b = p.carve(true);
                p.large.push(b);
            }
        }
        p
    }

    /// Map a region for `count` more buffers of a class, register it and start carving it.
    fn add_region(&mut self, large: bool, count: usize) {
        let class = if large {
            &self.large_class
        } else {
            &self.small_class
        };
        let len = count.max(1) * class.size;
        let mut region = Region::host(len).unwrap_or_else(|_| alloc_failed(len));
        // Its IOVA first (mapped now if the NVMe driver's container is up, else when it is).
        self.space.register(&mut region);
        self.adopt(large, region);
    }

    /// Register a region that has its IOVA already with the pool's registrars and start carving
    /// it for a class.
    fn adopt(&mut self, large: bool, mut region: Region) {
        for r in &self.registrars {
            r.register(&mut region);
        }
        let id = self.id;
        let class = if large {
            &mut self.large_class
        } else {
            &mut self.small_class
        };
        let carver = Carver::new(region, class.size, id);
        class.regions.push(carver.region().clone());
        class.carver = Some(carver);
    }

    /// The next unused slice of a class's regions, growing it by a region if they are all used.
    fn carve(&mut self, large: bool) -> IoBuf {
        let class = if large {
            &mut self.large_class
        } else {
            &mut self.small_class
        };
        if let Some(b) = class.carver.as_mut().and_then(Carver::carve) {
            class.carved += 1;
            return b;
        }
        // The region made and mapped ahead, if it is there; else grow here by as much again as
        // there is, within the bounds (and, for large ones, the cap: carving happens only below
        // it).
        if let Some(region) = class.ready.pop() {
            class.pending = false;
            self.grown_ahead += 1;
            self.adopt(large, region);
        } else {
            let limit = large.then_some(self.large_limit);
            let count = class.next_count(limit).max(1);
            self.grown_inline += 1;
            self.add_region(large, count);
        }
        let class = if large {
            &mut self.large_class
        } else {
            &mut self.small_class
        };
        class.carved += 1;
        class
            .carver
            .as_mut()
            .and_then(Carver::carve)
            .expect("a new region holds a buffer")
    }

    /// When a class is down to its last quarter (free buffers plus what its region still holds)
    /// and may grow, have its next region made and mapped for DMA ahead of need, on the IOVA
    /// space's thread: mapping pins every page under the space's process-wide lock, which a
    /// reactor must not wait for. Two comparisons on the way to a buffer, a channel send once
    /// per region; nothing when no DMA mapper is attached (no NVMe SSD: registering is then only
    /// bookkeeping, done when the region is made).
    fn ask_ahead(&mut self, large: bool) {
        let (class, free, limit) = if large {
            (
                &mut self.large_class,
                self.large.len(),
                Some(self.large_limit),
            )
        } else {
            (&mut self.small_class, self.small.len(), None)
        };
        if class.pending || self.domain != Domain::HostMemory {
            return;
        }
        let left = class.carver.as_ref().map_or(0, Carver::left);
        if free + left > class.carved / 4 {
            return;
        }
        let count = class.next_count(limit);
        if count > 0 && self.space.make_ahead(count * class.size, &class.ready) {
            class.pending = true;
        }
    }

    /// A large buffer past the cap: a region of its own, unmapped when it comes back. It is not
    /// registered (that would be a registration per I/O): it has no keys and no device address.
    fn standalone_large(&self) -> IoBuf {
        let len = self.large_class.size;
        let region = Region::anonymous(len).unwrap_or_else(|_| alloc_failed(len));
        Carver::new(region, len, 0)
            .carve()
            .expect("a region of the buffer's size holds it")
    }

    /// The memory domain the pool's buffers are in.
    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// The regions the pool carves buffers from (not those of buffers made past the cap).
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.small_class
            .regions
            .iter()
            .chain(&self.large_class.regions)
            .map(|r| &**r)
    }

    /// Whether a transfer of `len` bytes takes a small buffer (those are never refused).
    pub fn is_small(&self, len: usize) -> bool {
        len <= self.small_class.size
    }

    /// A buffer of at least `len` bytes (`len` at most the large size), or None when it needs a
    /// large one and all `large_limit` are lent or commands are queued for them.
    pub fn try_get(&mut self, len: usize) -> Option<IoBuf> {
        if self.is_small(len) {
            self.ask_ahead(false);
            if let Some(b) = self.small.pop() {
                return Some(b);
            }
            self.grown += 1;
            return Some(self.carve(false));
        }
        if !self.waiters.is_empty() {
            return None;
        }
        self.free_large()
    }

    fn free_large(&mut self) -> Option<IoBuf> {
        self.ask_ahead(true);
        if let Some(b) = self.large.pop() {
            return Some(b);
        }
        (self.large_made < self.large_limit).then(|| self.make_large())
    }

    /// An id for one connection's place in the queue for large buffers.
    pub fn waiter_id(&mut self) -> u32 {
        self.next_waiter = self.next_waiter.wrapping_add(1);
        self.next_waiter
    }

    /// Queue one command of waiter `id` for a large buffer (after [`BufPool::try_get`] said no).
    pub fn wait(&mut self, id: u32) {
        self.waiters.push_back(id);
    }

    /// A large buffer for the oldest waiting command, if that is one of waiter `id`'s and a
    /// buffer is free.
    pub fn take_turn(&mut self, id: u32) -> Option<IoBuf> {
        if self.waiters.front() != Some(&id) {
            return None;
        }
        let b = self.free_large()?;
        self.waiters.pop_front();
        Some(b)
    }

    /// Waiter `id` is gone (its connection closed): drop its place in the queue.
    pub fn forget(&mut self, id: u32) {
        self.waiters.retain(|&w| w != id);
    }

    /// A buffer of at least `len` bytes, past the cap if need be.
    pub fn get(&mut self, len: usize) -> IoBuf {
        match self.try_get(len) {
            Some(b) => b,
            None => self.make_large(),
        }
    }

    fn make_large(&mut self) -> IoBuf {
        self.grown += 1;
        self.large_made += 1;
        if let Some(b) = self.reserve.pop() {
            return b;
        }
        if self.large_made <= self.large_limit {
            self.carve(true)
        } else {
            self.standalone_large()
        }
    }

    /// Give a buffer back (buffers of other sizes are dropped; a large one that comes back while
    /// the pool is past its cap counts as freed).
    pub fn put(&mut self, buf: IoBuf) {
        debug_assert_eq!(
            buf.domain(),
            self.domain,
            "a buffer returns to its own domain"
        );
        if buf.capacity() == self.small_class.size {
            self.small.push(buf);
        } else if buf.capacity() == self.large_class.size {
            if self.large_made > self.large_limit {
                self.large_made -= 1;
                if buf.region().carved_by() == self.id {
                    self.reserve.push(buf);
                }
            } else {
                self.large.push(buf);
            }
        }
    }

    /// Buffers made on demand since the pool was created.
    pub fn grown(&self) -> u64 {
        self.grown
    }

    /// Regions the pool grew by: made and mapped ahead off its thread, and made on its own
    /// thread because it ran out before one was ready (or no DMA mapper is attached).
    pub fn regions_grown(&self) -> (u64, u64) {
        (self.grown_ahead, self.grown_inline)
    }

    /// Register this pool's future regions in `space` instead of the process's (tests).
    #[cfg(test)]
    fn use_space(&mut self, space: Arc<IovaSpace>) {
        self.space = space;
    }

    /// Large buffers alive now (free or lent).
    pub fn large_made(&self) -> usize {
        self.large_made
    }

    /// The most large buffers [`BufPool::try_get`] makes.
    pub fn large_limit(&self) -> usize {
        self.large_limit
    }

    /// Buffers lent out now (small and large, those made past the cap included).
    pub fn in_use(&self) -> usize {
        let small = self.small_class.carved.saturating_sub(self.small.len());
        let large = self.large_made.saturating_sub(self.large.len());
        small + large
    }

    /// Commands queued for a large buffer now.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
}

impl std::fmt::Debug for BufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufPool")
            .field("domain", &self.domain)
            .field("small_size", &self.small_class.size)
            .field("large_size", &self.large_class.size)
            .field("small_free", &self.small.len())
            .field("large_free", &self.large.len())
            .field("large_made", &self.large_made)
            .field("large_limit", &self.large_limit)
            .field("waiters", &self.waiters.len())
            .field("grown", &self.grown)
            .field("regions", &self.regions().count())
            .finish()
    }
}

/// A region could not be mapped: out of memory, as an allocation failure would be.
fn alloc_failed(len: usize) -> ! {
    std::alloc::handle_alloc_error(
        std::alloc::Layout::from_size_align(len, ALIGN).expect("buffer region size overflows"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{Keys, PdId};
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn recycles_by_size_and_grows_when_empty() {
        let mut p = BufPool::new(8192, 1, 131072, 1, 8);
        let a = p.get(4096);
        assert_eq!(a.capacity(), 8192);
        let b = p.get(8193);
        assert_eq!(b.capacity(), 131072);
        assert_eq!(p.grown(), 0);
        let c = p.get(100);
        assert_eq!((c.capacity(), p.grown()), (8192, 1));
        p.put(a);
        p.put(c);
        p.put(b);
        let _ = (p.get(1), p.get(1), p.get(65536));
        assert_eq!(p.grown(), 1, "recycled buffers are reused");
        p.put(IoBuf::new(4096 * 3));
        assert_eq!(p.small.len() + p.large.len(), 0, "odd sizes are not kept");
    }

    #[test]
    fn large_buffers_are_capped() {
        let mut p = BufPool::new(8192, 0, 131072, 0, 2);
        let a = p.try_get(65536).expect("first");
        let b = p.try_get(65536).expect("second");
        assert!(p.try_get(65536).is_none(), "third large buffer refused");
        assert!(p.try_get(4096).is_some(), "small buffers are never refused");
        let c = p.get(65536);
        assert_eq!(p.large_made(), 3, "get goes past the cap");
        p.put(c);
        assert_eq!(
            p.large_made(),
            2,
            "a buffer past the cap is freed on return"
        );
        assert!(p.try_get(65536).is_none());
        p.put(a);
        let a = p.try_get(65536).expect("a returned buffer is lent again");
        p.put(a);
        p.put(b);
        assert_eq!(p.large_made(), 2);
    }

    #[test]
    fn waiting_commands_are_served_in_arrival_order_across_waiters() {
        let mut p = BufPool::new(8192, 0, 131072, 0, 1);
        let (x, y) = (p.waiter_id(), p.waiter_id());
        let held = p.try_get(65536).unwrap();
        assert!(p.try_get(65536).is_none());
        p.wait(x);
        p.wait(y);
        p.wait(x);
        assert!(p.take_turn(x).is_none(), "nothing free yet");
        p.put(held);
        assert!(
            p.try_get(65536).is_none(),
            "a free buffer is kept for those queued"
        );
        assert!(p.take_turn(y).is_none(), "not y's turn");
        let b = p.take_turn(x).expect("x was first");
        p.put(b);
        assert!(p.take_turn(x).is_none(), "y is next, not x again");
        let b = p.take_turn(y).unwrap();
        p.put(b);
        p.forget(x);
        assert!(p.try_get(65536).is_some(), "queue empty once x is gone");
    }

    #[test]
    fn buffers_are_carved_from_a_few_regions() {
        let (small, large) = (8192, 131072);
        let mut p = BufPool::new(small, 4, large, 2, 1000);
        assert_eq!(p.regions().count(), 2, "one region per size up front");
        let mut held: Vec<IoBuf> = (0..2000).map(|_| p.get(4096)).collect();
        held.extend((0..600).map(|_| p.get(large)));
        assert_eq!(p.large_made(), 600);
        // Doubling growth: 2000 small buffers in log2-many regions, not 2000 mappings.
        let n = p.regions().count();
        assert!(n <= 16, "{n} regions");
        // Every buffer is a disjoint slice of one of the pool's regions.
        let mut spans: Vec<(usize, usize)> = held
            .iter()
            .map(|b| (b.as_ptr() as usize, b.as_ptr() as usize + b.capacity()))
            .collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "no overlap");
        for b in &held {
            let r = b.region();
            assert!(p.regions().any(|pr| std::ptr::eq(pr, r)));
            assert!(b.offset() + b.capacity() <= r.len());
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        }
        for b in held {
            p.put(b);
        }
        let _more: Vec<IoBuf> = (0..2000).map(|_| p.get(4096)).collect();
        assert_eq!(p.regions().count(), n, "recycled, no new region");
    }

    #[test]
    fn large_regions_stay_within_the_cap() {
        let large = 131072;
        let mut p = BufPool::new(8192, 0, large, 0, 20);
        let held: Vec<IoBuf> = (0..20).map(|_| p.try_get(large).unwrap()).collect();
        let mapped: usize = p.regions().map(|r| r.len()).sum();
        // Allow a hugepage's rounding, never a region for more than the cap.
        assert!(mapped <= 20 * large + (2 << 20), "{mapped} bytes mapped");
        assert!(p.try_get(large).is_none());
        drop(held);
    }

    #[test]
    fn past_the_cap_a_returned_slice_is_kept_and_reused_not_carved_again() {
        let large = 131072;
        let mut p = BufPool::new(8192, 0, large, 0, 2);
        let a = p.try_get(large).unwrap();
        let b = p.try_get(large).unwrap();
        let c = p.get(large);
        assert_eq!(p.large_made(), 3);
        let a_at = a.as_ptr();
        // a (a slice of a pool region) comes back while the pool is past its cap: it counts as
        // freed, as c would have.
        p.put(a);
        assert_eq!(p.large_made(), 2);
        assert!(
            p.try_get(large).is_none(),
            "the cap holds: b and c are lent"
        );
        // The next buffer past the cap is that slice, not a new mapping.
        let d = p.get(large);
        assert_eq!(d.as_ptr(), a_at);
        assert_eq!((p.large_made(), p.large_class.carved), (3, 2));
        // c, a buffer of its own, is unmapped on return; d is kept again.
        p.put(c);
        p.put(d);
        p.put(b);
        assert_eq!(p.large_made(), 2);
        assert_eq!(p.large.len() + p.reserve.len(), 2);
    }

    struct CountingRegistrar {
        calls: Rc<Cell<u32>>,
    }

    impl Registrar for CountingRegistrar {
        fn register(&self, region: &mut Region) {
            let n = self.calls.get() + 1;
            self.calls.set(n);
            region.register(
                PdId(1),
                Keys {
                    lkey: n,
                    rkey: n + 100,
                },
                None,
            );
            region.set_device_addr(u64::from(n) << 32, None);
        }
    }

    #[test]
    fn every_region_is_registered_once_before_use() {
        let calls = Rc::new(Cell::new(0));
        let reg = CountingRegistrar {
            calls: calls.clone(),
        };
        let mut p = BufPool::with_registrars(8192, 2, 131072, 1, 1, vec![Box::new(reg)]);
        assert_eq!(calls.get(), 2, "the two start-up regions");
        let bufs: Vec<IoBuf> = (0..100).map(|_| p.get(4096)).collect();
        for _ in 0..3 {
            let b = p.get(4096);
            p.put(b);
        }
        let grown = calls.get();
        assert_eq!(
            grown as usize,
            p.regions().count(),
            "one call per region, not per I/O"
        );
        for b in &bufs {
            let k = b.keys(PdId(1)).expect("registered");
            let region_base = k.lkey as u64;
            assert_eq!(
                b.device_addr(),
                Some((region_base << 32) + b.offset() as u64)
            );
        }
        // Past the cap: a buffer of its own, not registered (no registration per I/O).
        let held = p.try_get(131072).unwrap();
        let past = p.get(131072);
        assert_eq!((past.keys(PdId(1)), past.device_addr()), (None, None));
        assert_eq!(calls.get(), grown);
        p.put(past);
        p.put(held);
    }

    /// Records which thread maps each region (a VFIO container stands behind this in nvmfd).
    #[derive(Default)]
    struct ThreadMapper {
        maps: std::sync::Mutex<Vec<(usize, std::thread::ThreadId)>>,
    }

    impl crate::mem::DmaMapper for ThreadMapper {
        fn map(&self, _vaddr: usize, _iova: u64, len: usize) -> std::io::Result<()> {
            let me = std::thread::current().id();
            self.maps.lock().unwrap().push((len, me));
            Ok(())
        }
        fn unmap(&self, _iova: u64, _len: usize) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// With a DMA mapper attached, a pool that runs low has its next region made and mapped on
    /// the IOVA space's thread, never on the pool's own; it takes that region when it runs out,
    /// and only grows on its own thread when it outruns the helper.
    #[test]
    fn a_growing_pool_maps_its_next_region_off_its_thread() {
        let space = IovaSpace::new();
        let m = Arc::new(ThreadMapper::default());
        space.attach(m.clone()).unwrap();
        let mut p = BufPool::new(ALIGN, 0, 2 * ALIGN, 0, 4);
        p.use_space(space.clone());
        let me = std::thread::current().id();
        let on_me = |m: &ThreadMapper| m.maps.lock().unwrap().iter().filter(|x| x.1 == me).count();
        // The first buffer: nothing carved yet, so the pool asks for a region ahead at once; it
        // grows by it if the helper was quick enough, else here.
        let mut held = vec![p.get(ALIGN)];
        let (ahead, inline) = p.regions_grown();
        assert_eq!(ahead + inline, 1);
        assert_eq!(
            on_me(&m) as u64,
            inline,
            "only a region grown here is mapped here"
        );
        // Use the pool up to its last quarter: the next region is asked for (or was) and made
        // ahead; wait for it (bounded), then use the current region up.
        let per_region = p.small_class.carved + p.small_class.carver.as_ref().unwrap().left();
        while p.small_class.carved < per_region {
            held.push(p.get(ALIGN));
        }
        let t0 = std::time::Instant::now();
        while p.small_class.ready.is_empty() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(60),
                "no region made ahead"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            p.regions_grown(),
            (ahead, inline),
            "nothing grown while the region lasted"
        );
        held.push(p.get(ALIGN));
        assert_eq!(
            p.regions_grown(),
            (ahead + 1, inline),
            "grown by the region made ahead"
        );
        assert_eq!(
            on_me(&m) as u64,
            inline,
            "which was mapped on another thread"
        );
        assert_eq!(m.maps.lock().unwrap().len() as u64, ahead + 1 + inline);
        assert!(
            held.iter().all(|b| b.device_addr().is_some()),
            "every buffer has its IOVA"
        );
        // The large class is capped at 4: it never asks beyond the cap.
        let large: Vec<_> = (0..4).map(|_| p.try_get(2 * ALIGN).unwrap()).collect();
        assert!(p.try_get(2 * ALIGN).is_none());
        assert_eq!(p.large_class.carved, 4);
        drop(large);
        drop(held);
    }

    /// Without a mapper (no NVMe SSD) nothing is asked ahead: growth stays as it was.
    #[test]
    fn no_mapper_no_region_ahead() {
        let space = IovaSpace::new();
        let mut p = BufPool::new(ALIGN, 0, 2 * ALIGN, 0, 4);
        p.use_space(space);
        let held: Vec<_> = (0..10).map(|_| p.get(ALIGN)).collect();
        assert!(!p.small_class.pending);
        assert_eq!(p.regions_grown().0, 0);
        drop(held);
    }
}
