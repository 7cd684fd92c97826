//! [`IoBuf`]: an owned, 4 KiB-aligned, zero-initialised byte buffer, the unit of data that moves
//! between a transport and a block device. This module owns the allocation and is the only place in
//! the crate that touches it through raw pointers.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::ptr::NonNull;

/// Alignment of every buffer: enough for O_DIRECT on any logical block size up to 4 KiB and for
/// NVMe PRP entries.
pub const ALIGN: usize = 4096;

pub struct IoBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: IoBuf uniquely owns its allocation (like Vec<u8>), so moving it to another thread is sound.
unsafe impl Send for IoBuf {}

impl IoBuf {
    /// Allocate `cap` bytes (rounded up to [`ALIGN`], at least one page), zeroed.
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1).div_ceil(ALIGN) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).expect("IoBuf size overflows");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        IoBuf { ptr, cap }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap initialised bytes (zeroed at allocation) and we hold &self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap initialised bytes and we hold &mut self, so no alias exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Raw pointer for a device or the kernel to fill (io_uring). The caller keeps the IoBuf alive
    /// and unaliased until the device is done with it.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.cap, ALIGN),
            )
        }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf").field("cap", &self.cap).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_rounded() {
        let mut b = IoBuf::new(5000);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[8191] = 7;
        assert_eq!(b.as_slice()[8191], 7);
    }
}

/// Buffers of the two sizes a reactor hands out, recycled instead of freed. A command takes one
/// when it arrives and gives it back when it completes, so after warm-up the data path never
/// allocates; memory follows the reactor's peak of commands in flight, not connections × queue
/// depth. Transfers up to `small_size` bytes (most 4 KiB I/O and every admin command) take a
/// small buffer, larger ones a large buffer. Owned by one reactor; not shared across threads.
///
/// Large buffers are capped: [`BufPool::try_get`] makes at most `large_limit` of them and then
/// says no, so a reactor's memory has a ceiling however many hosts ask at once. A command that
/// was refused queues for a turn ([`BufPool::wait`]) and gets a buffer with
/// [`BufPool::take_turn`] strictly in arrival order across all of the reactor's connections, so
/// no connection starves while others keep the pool busy. [`BufPool::get`] always succeeds;
/// buffers it makes past the cap are freed when they come back.
#[derive(Debug)]
pub struct BufPool {
    small_size: usize,
    large_size: usize,
    small: Vec<IoBuf>,
    large: Vec<IoBuf>,
    /// Large buffers alive now (free or lent), and the most that [`BufPool::try_get`] makes.
    large_made: usize,
    large_limit: usize,
    /// One entry per command waiting for a large buffer: its connection's waiter id.
    waiters: VecDeque<u32>,
    next_waiter: u32,
    /// Buffers created because the free list was empty (after the preallocated ones).
    grown: u64,
}

impl BufPool {
    /// A pool with `small` buffers of `small_size` and `large` buffers of `large_size` made now,
    /// and at most `large_limit` large buffers (at least one, and at least `large`).
    pub fn new(
        small_size: usize,
        small: usize,
        large_size: usize,
        large: usize,
        large_limit: usize,
    ) -> Self {
        let large_size = large_size.max(small_size);
        let large_limit = large_limit.max(large).max(1);
        let mut s = Vec::with_capacity(small * 2);
        // Room for twice the preallocated buffers, not for the limit: a large
        // buffer_pool_size must not cost memory up front.
        let mut l = Vec::with_capacity(large * 2);
        s.extend((0..small).map(|_| IoBuf::new(small_size)));
        l.extend((0..large).map(|_| IoBuf::new(large_size)));
        BufPool {
            small_size,
            large_size,
            small: s,
            large: l,
            large_made: large,
            large_limit,
            waiters: VecDeque::new(),
            next_waiter: 0,
            grown: 0,
        }
    }

    /// Whether a transfer of `len` bytes takes a small buffer (those are never refused).
    pub fn is_small(&self, len: usize) -> bool {
        len <= self.small_size
    }

    /// A buffer of at least `len` bytes (`len` at most the large size), or None when it needs a
    /// large one and all `large_limit` are lent or commands are queued for them.
    pub fn try_get(&mut self, len: usize) -> Option<IoBuf> {
        if self.is_small(len) {
            return Some(self.small.pop().unwrap_or_else(|| {
                self.grown += 1;
                IoBuf::new(self.small_size)
            }));
        }
        if !self.waiters.is_empty() {
            return None;
        }
        self.free_large()
    }

    fn free_large(&mut self) -> Option<IoBuf> {
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
        IoBuf::new(self.large_size)
    }

    /// Give a buffer back (buffers of other sizes, and large ones past the cap, are dropped).
    pub fn put(&mut self, buf: IoBuf) {
        if buf.capacity() == self.small_size {
            self.small.push(buf);
        } else if buf.capacity() == self.large_size {
            if self.large_made > self.large_limit {
                self.large_made -= 1;
            } else {
                self.large.push(buf);
            }
        }
    }

    /// Buffers made on demand since the pool was created.
    pub fn grown(&self) -> u64 {
        self.grown
    }

    /// Large buffers alive now (free or lent).
    pub fn large_made(&self) -> usize {
        self.large_made
    }

    /// The most large buffers [`BufPool::try_get`] makes.
    pub fn large_limit(&self) -> usize {
        self.large_limit
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

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
}
