//! Per-command choice of the memory domain a namespace's data is staged in, and the P2P
//! counters (bytes through the CMB, bytes through host memory, fallbacks by reason).
//!
//! The start-up decision (`nvmfd_p2p::placement`) says, per namespace and transport, whether
//! its writes go to the SSD's CMB. The daemon turns that into one [`StagingSource`] per block
//! device (by index, the key [`DataNeed::bdev`](crate::DataNeed) gives); each reactor's group
//! builds a [`Staging`] from them, holding one [`PoolCache`] per staged device, so taking a CMB
//! buffer is a pop from a local stack: no lock, no allocation on the I/O path.
//!
//! A command's data is wholly in one buffer, so wholly in the CMB or wholly out of it (NVMe Base
//! 2.0, 8.2.1 Controller Memory Buffer: data partly in the CMB is status 12h, Invalid Use of
//! Controller Memory Buffer). When the CMB pool has no free buffer the command takes host
//! memory at once rather than waiting: the host path always works, waiting would hold the
//! connection's other commands behind a resource that may not come back soon (other reactors
//! hold it), and the bdev reaches both. The fallback is counted
//! ([`P2pCounters::fallback_exhausted`]) and logged once for the whole daemon per device (the
//! first reactor to hit it; a shared flag, touched only on a fallback).

use nvmfd_p2p::mem::{Domain, IoBuf, PoolCache, SharedPool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::warn;

/// The P2P counters of a namespace (on one reactor) or of a queue pair. Plain integers: one
/// owner (the reactor), read through its reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct P2pCounters {
    /// Data bytes of commands whose buffer was in the CMB.
    pub cmb_bytes: u64,
    /// Data bytes of commands whose buffer was in host memory (reads over TCP, namespaces not
    /// staged, fallbacks).
    pub host_bytes: u64,
    /// Commands of a staged namespace that took host memory because the CMB pool was empty.
    pub fallback_exhausted: u64,
    /// Commands of a staged namespace that took host memory because their data is larger than
    /// a CMB buffer.
    pub fallback_too_large: u64,
    /// RDMA: commands of a CMB-placed namespace that took host memory because the RDMA device
    /// serving their queue pair has no registration of the CMB.
    pub fallback_unregistered: u64,
}

impl P2pCounters {
    /// Add `o` into `self`.
    pub fn add(&mut self, o: &P2pCounters) {
        self.cmb_bytes += o.cmb_bytes;
        self.host_bytes += o.host_bytes;
        self.fallback_exhausted += o.fallback_exhausted;
        self.fallback_too_large += o.fallback_too_large;
        self.fallback_unregistered += o.fallback_unregistered;
    }

    /// Fallbacks by reason, with their stable names (RPC, metrics, docs/p2p.md).
    pub fn fallbacks(&self) -> [(&'static str, u64); 3] {
        [
            ("cmb_pool_exhausted", self.fallback_exhausted),
            ("larger_than_cmb_buffer", self.fallback_too_large),
            ("cmb_not_registered", self.fallback_unregistered),
        ]
    }
}

/// Where one block device's staged writes take their buffers (made by the daemon from the
/// start-up decision; cloned into every reactor's group configuration).
#[derive(Debug, Clone)]
pub struct StagingSource {
    pub pool: Arc<SharedPool>,
    /// For the log line: which namespace this is (`nqn nsid N`).
    pub label: Arc<str>,
    /// Set by the first reactor to log that the pool ran out (one line per device, not per I/O).
    pub warned: Arc<AtomicBool>,
}

impl StagingSource {
    pub fn new(pool: Arc<SharedPool>, label: &str) -> Self {
        StagingSource {
            pool,
            label: label.into(),
            warned: Arc::new(AtomicBool::new(false)),
        }
    }
}

struct Staged {
    cache: PoolCache,
    label: Arc<str>,
    warned: Arc<AtomicBool>,
    /// This reactor has already seen an exhaustion (so it never touches `warned` again).
    seen_exhausted: bool,
}

/// One reactor's staging table: per block device, its CMB cache (when staged) and its counters.
pub struct Staging {
    staged: Vec<Option<Staged>>,
    counters: Vec<P2pCounters>,
}

impl Staging {
    /// The table for `sources` (by block-device index). Control plane (group creation).
    pub fn new(sources: &[Option<StagingSource>]) -> Self {
        Staging {
            staged: sources
                .iter()
                .map(|s| {
                    s.as_ref().map(|s| Staged {
                        cache: s.pool.reactor_cache(),
                        label: s.label.clone(),
                        warned: s.warned.clone(),
                        seen_exhausted: false,
                    })
                })
                .collect(),
            counters: vec![P2pCounters::default(); sources.len()],
        }
    }

    /// Whether bdev `bdev`'s writes are staged in a CMB.
    pub fn stages(&self, bdev: Option<usize>) -> bool {
        bdev.and_then(|b| self.staged.get(b))
            .is_some_and(|s| s.is_some())
    }

    /// A CMB buffer for `len` bytes of write data of bdev `bdev`, when its writes are staged and
    /// one is free; counted here and in the queue pair's `qp`. None: take host memory and call
    /// [`Staging::count_host`] (a fallback is already counted).
    pub fn take_write(
        &mut self,
        bdev: Option<usize>,
        len: usize,
        qp: &mut P2pCounters,
    ) -> Option<IoBuf> {
        let b = bdev?;
        let s = self.staged.get_mut(b)?.as_mut()?;
        let c = &mut self.counters[b];
        if len > s.cache.pool().buf_size() {
            c.fallback_too_large += 1;
            qp.fallback_too_large += 1;
            return None;
        }
        match s.cache.try_get(len) {
            Some(buf) => {
                c.cmb_bytes += len as u64;
                qp.cmb_bytes += len as u64;
                Some(buf)
            }
            None => {
                c.fallback_exhausted += 1;
                qp.fallback_exhausted += 1;
                if !s.seen_exhausted {
                    s.seen_exhausted = true;
                    if !s.warned.swap(true, Ordering::Relaxed) {
                        warn!(namespace = %s.label, cmb_buffers = s.cache.pool().total(),
                            buf_size = s.cache.pool().buf_size(),
                            "p2p: the CMB pool is exhausted; writes take host memory while it is \
                             (counted as fallback cmb_pool_exhausted; logged once)");
                    }
                }
                None
            }
        }
    }

    /// `len` data bytes of bdev `bdev` went through host memory.
    pub fn count_host(&mut self, bdev: Option<usize>, len: usize, qp: &mut P2pCounters) {
        if let Some(c) = bdev.and_then(|b| self.counters.get_mut(b)) {
            c.host_bytes += len as u64;
            qp.host_bytes += len as u64;
        }
    }

    /// Give a buffer back to the CMB cache it came from; a host-memory buffer is handed back
    /// (the caller returns it to its own pool).
    pub fn put(&mut self, buf: IoBuf) -> Option<IoBuf> {
        let d = buf.domain();
        if d == Domain::HostMemory {
            return Some(buf);
        }
        match self
            .staged
            .iter_mut()
            .flatten()
            .find(|s| s.cache.domain() == d)
        {
            Some(s) => {
                s.cache.put(buf);
                None
            }
            // Not a domain of this table (cannot happen: only this table hands CMB buffers to
            // this group's commands). Dropping it would lose it to its pool; hand it back.
            None => Some(buf),
        }
    }

    /// The reactor's timer pass: a CMB cache that handed out nothing for a while gives what it
    /// keeps back to its pool ([`PoolCache::idle_tick`]), so an idle reactor holds none of a
    /// small CMB that other reactors need.
    pub fn idle_tick(&mut self, now: std::time::Instant) {
        for s in self.staged.iter_mut().flatten() {
            s.cache.idle_tick(now);
        }
    }

    /// Counters per block device (by index) on this reactor.
    pub fn counters(&self) -> &[P2pCounters] {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmfd_p2p::mem::{Region, Registrar};

    struct CmbAddr(u64);
    impl Registrar for CmbAddr {
        fn register(&self, region: &mut Region) {
            region.set_device_addr(self.0, None);
        }
    }

    /// A fake CMB: a host region labelled as a CMB domain, `n` buffers of 16 KiB.
    fn fake_cmb(n: usize) -> Arc<SharedPool> {
        let r = Region::stand_in(n * 16384, Domain::Cmb { device: 7 }).unwrap();
        SharedPool::new(vec![r], 16384, &[&CmbAddr(0xf000_0000)]).unwrap()
    }

    #[test]
    fn staged_writes_take_cmb_buffers_then_fall_back_once_exhausted() {
        let pool = fake_cmb(2);
        let src = StagingSource::new(pool.clone(), "nqn.a nsid 1");
        let mut st = Staging::new(&[None, Some(src.clone())]);
        let mut qp = P2pCounters::default();
        assert!(st.stages(Some(1)) && !st.stages(Some(0)) && !st.stages(None));
        // Not staged: no buffer, nothing counted until the host bytes are.
        assert!(st.take_write(Some(0), 4096, &mut qp).is_none());
        st.count_host(Some(0), 4096, &mut qp);
        let a = st.take_write(Some(1), 8192, &mut qp).expect("a CMB buffer");
        assert_eq!(a.domain(), Domain::Cmb { device: 7 });
        assert!(a.device_addr().is_some_and(|x| x >= 0xf000_0000));
        let b = st.take_write(Some(1), 16384, &mut qp).expect("the second");
        // Exhausted: host memory, counted, the shared flag set once.
        assert!(st.take_write(Some(1), 4096, &mut qp).is_none());
        assert!(st.take_write(Some(1), 4096, &mut qp).is_none());
        assert!(src.warned.load(Ordering::Relaxed));
        // Too large for a CMB buffer.
        assert!(st.take_write(Some(1), 16385, &mut qp).is_none());
        let c = st.counters()[1];
        assert_eq!(c.cmb_bytes, 8192 + 16384);
        assert_eq!(c.fallback_exhausted, 2);
        assert_eq!(c.fallback_too_large, 1);
        assert_eq!(st.counters()[0].host_bytes, 4096);
        assert_eq!(qp.cmb_bytes, 8192 + 16384);
        assert_eq!(qp.host_bytes, 4096);
        assert_eq!(qp.fallback_exhausted, 2);
        // Buffers go back to their own pool; a host buffer is handed back.
        assert!(st.put(a).is_none());
        assert!(st.put(b).is_none());
        assert!(st.put(IoBuf::new(4096)).is_some());
        assert!(
            st.take_write(Some(1), 4096, &mut qp).is_some(),
            "back in the cache"
        );
    }

    #[test]
    fn a_small_cmb_is_not_stranded_in_one_reactors_cache() {
        // 8 buffers, 2 reactors: each keeps at most 8 / 4 = 2, and an idle one gives them back.
        let pool = fake_cmb(8);
        pool.share_among(2);
        let src = StagingSource::new(pool.clone(), "nqn.a nsid 1");
        let mut a = Staging::new(&[Some(src.clone())]);
        let mut b = Staging::new(&[Some(src)]);
        let mut qp = P2pCounters::default();
        let held: Vec<IoBuf> = (0..8)
            .map(|_| a.take_write(Some(0), 4096, &mut qp).expect("a CMB buffer"))
            .collect();
        assert!(b.take_write(Some(0), 4096, &mut qp).is_none(), "all lent");
        for buf in held {
            assert!(a.put(buf).is_none());
        }
        assert!(pool.free_shared() >= 6, "reactor a keeps at most 2");
        let got: Vec<IoBuf> = (0..6)
            .map(|_| {
                b.take_write(Some(0), 4096, &mut qp)
                    .expect("reactor b gets the rest")
            })
            .collect();
        // Reactor a goes idle: its two come back to the pool for b.
        let t = std::time::Instant::now();
        a.idle_tick(t);
        a.idle_tick(t + nvmfd_p2p::mem::IDLE_RELEASE);
        a.idle_tick(t + 2 * nvmfd_p2p::mem::IDLE_RELEASE);
        assert_eq!(pool.free_shared(), 2);
        assert!(b.take_write(Some(0), 4096, &mut qp).is_some());
        drop(got);
    }
}
