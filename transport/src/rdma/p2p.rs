//! One reactor's P2P accounting over NVMe/RDMA: which memory domain each command's data buffer
//! is in (bytes by domain, per block device and per queue pair), and every silent fallback from
//! a CMB to host memory, counted by reason and logged once per namespace and reason (not per
//! I/O): the RDMA counterpart of [`crate::staging`] for TCP.
//!
//! The table is made with the group (its vectors sized once, by block-device index); counting
//! adds to plain integers the reactor owns. The only shared state is each namespace's
//! [`RdmaStaging::warned`] flags, touched on the first fallback of a reason on this reactor,
//! never again (the reactor remembers it in `seen`).

use super::group::RdmaStaging;
use crate::staging::P2pCounters;
use nvmfd_p2p::mem::{Domain, IoBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::warn;

/// Why a command its namespace placed in a CMB got a host-memory buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// Every buffer of the CMB's pool is lent (to this reactor's commands or other reactors').
    Exhausted,
    /// The command's data is larger than one CMB buffer (a command's data is wholly in one
    /// buffer: NVMe Base 2.0, 8.2.1, data partly in the CMB is status 12h).
    TooLarge,
    /// The RDMA device serving the queue pair has no registration of the CMB (its MR is on
    /// another device or context).
    Unregistered,
}

impl Fallback {
    fn bit(self) -> u8 {
        match self {
            Fallback::Exhausted => 1,
            Fallback::TooLarge => 2,
            Fallback::Unregistered => 4,
        }
    }

    /// The reason's stable name ([`P2pCounters::fallbacks`]).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fallback::Exhausted => "cmb_pool_exhausted",
            Fallback::TooLarge => "larger_than_cmb_buffer",
            Fallback::Unregistered => "cmb_not_registered",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Fallback::Exhausted => {
                "the CMB pool is exhausted; RDMA data takes host memory while it is"
            }
            Fallback::TooLarge => {
                "a command's data is larger than a CMB buffer; such commands take host memory"
            }
            Fallback::Unregistered => {
                "the RDMA device of a queue pair has no registration of the CMB; its commands \
                 take host memory"
            }
        }
    }
}

/// A data buffer from the group's pools and, when its namespace wanted a CMB and got host
/// memory, why.
#[derive(Debug)]
pub(crate) struct Got {
    pub(crate) buf: IoBuf,
    pub(crate) fallback: Option<Fallback>,
}

/// One reactor's P2P counters per block device (by index) and the fallbacks it has logged.
pub(crate) struct P2pTable {
    staged: Arc<[RdmaStaging]>,
    counters: Vec<P2pCounters>,
    /// Per block device: fallback reasons this reactor has already flagged (bits of
    /// [`Fallback::bit`]); it never touches the shared flag for them again.
    seen: Vec<u8>,
}

impl P2pTable {
    /// Control plane (group creation): one entry per block device `staged` names.
    pub(crate) fn new(staged: Arc<[RdmaStaging]>) -> P2pTable {
        let n = staged.len();
        P2pTable {
            staged,
            counters: vec![P2pCounters::default(); n],
            seen: vec![0; n],
        }
    }

    /// `len` data bytes of a command of bdev `bdev` got a buffer in `domain`, with `fallback`
    /// when its namespace wanted a CMB and got host memory; counted here and in `qp`. Admin
    /// commands (`bdev` None) and block devices added at run time are not counted.
    pub(crate) fn count(
        &mut self,
        bdev: Option<usize>,
        len: u32,
        domain: Domain,
        fallback: Option<Fallback>,
        qp: &mut P2pCounters,
    ) {
        let Some(b) = bdev.filter(|&b| b < self.counters.len()) else {
            return;
        };
        let c = &mut self.counters[b];
        let len = u64::from(len);
        if domain == Domain::HostMemory {
            c.host_bytes += len;
            qp.host_bytes += len;
        } else {
            c.cmb_bytes += len;
            qp.cmb_bytes += len;
        }
        let Some(f) = fallback else {
            return;
        };
        match f {
            Fallback::Exhausted => {
                c.fallback_exhausted += 1;
                qp.fallback_exhausted += 1;
            }
            Fallback::TooLarge => {
                c.fallback_too_large += 1;
                qp.fallback_too_large += 1;
            }
            Fallback::Unregistered => {
                c.fallback_unregistered += 1;
                qp.fallback_unregistered += 1;
            }
        }
        if self.seen[b] & f.bit() != 0 {
            return;
        }
        self.seen[b] |= f.bit();
        let s = &self.staged[b];
        // The first reactor to see this reason for this namespace logs it.
        if s.warned.fetch_or(f.bit(), Ordering::Relaxed) & f.bit() == 0 {
            warn!(namespace = %s.label, transport = "rdma", reason = f.name(),
                "p2p: {} (counted as fallback {}; logged once)", f.what(), f.name());
        }
    }

    /// Counters per block device (by index) on this reactor.
    pub(crate) fn counters(&self) -> &[P2pCounters] {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMB: Domain = Domain::Cmb { device: 3 };

    fn staged() -> Arc<[RdmaStaging]> {
        Arc::from(vec![
            RdmaStaging::default(),
            RdmaStaging::new(Some(CMB), Some(CMB), "nqn.a nsid 2"),
        ])
    }

    #[test]
    fn bytes_by_domain_per_bdev_and_queue_pair() {
        let mut t = P2pTable::new(staged());
        let (mut q0, mut q1) = (P2pCounters::default(), P2pCounters::default());
        t.count(Some(0), 4096, Domain::HostMemory, None, &mut q0);
        t.count(Some(1), 8192, CMB, None, &mut q1);
        t.count(Some(1), 512, Domain::HostMemory, None, &mut q0);
        // Admin commands and bdevs the table does not know are not counted.
        t.count(None, 4096, Domain::HostMemory, None, &mut q0);
        t.count(Some(7), 4096, Domain::HostMemory, None, &mut q0);
        let c = t.counters();
        assert_eq!((c[0].host_bytes, c[0].cmb_bytes), (4096, 0));
        assert_eq!((c[1].host_bytes, c[1].cmb_bytes), (512, 8192));
        assert_eq!((q0.host_bytes, q0.cmb_bytes), (4096 + 512, 0));
        assert_eq!((q1.host_bytes, q1.cmb_bytes), (0, 8192));
        assert_eq!(c[1].fallbacks().iter().map(|f| f.1).sum::<u64>(), 0);
    }

    #[test]
    fn fallbacks_count_every_time_and_flag_the_namespace_once_per_reason() {
        let st = staged();
        let mut a = P2pTable::new(st.clone());
        let mut b = P2pTable::new(st.clone());
        let mut qp = P2pCounters::default();
        let host = Domain::HostMemory;
        for _ in 0..3 {
            a.count(Some(1), 4096, host, Some(Fallback::Exhausted), &mut qp);
        }
        assert_eq!(st[1].warned.load(Ordering::Relaxed), 1);
        // Another reactor hitting the same reason does not log again (the flag is set) but
        // remembers it, so it never touches the flag again either.
        b.count(Some(1), 4096, host, Some(Fallback::Exhausted), &mut qp);
        assert_eq!(b.seen[1], Fallback::Exhausted.bit());
        b.count(Some(1), 1 << 20, host, Some(Fallback::TooLarge), &mut qp);
        b.count(Some(1), 4096, host, Some(Fallback::Unregistered), &mut qp);
        assert_eq!(st[1].warned.load(Ordering::Relaxed), 7);
        assert_eq!(st[0].warned.load(Ordering::Relaxed), 0);
        let c = a.counters()[1];
        assert_eq!((c.fallback_exhausted, c.host_bytes), (3, 3 * 4096));
        let c = b.counters()[1];
        assert_eq!(
            c.fallbacks(),
            [
                ("cmb_pool_exhausted", 1),
                ("larger_than_cmb_buffer", 1),
                ("cmb_not_registered", 1)
            ]
        );
        assert_eq!(c.host_bytes, 4096 + (1 << 20) + 4096);
        assert_eq!(
            (
                qp.fallback_exhausted,
                qp.fallback_too_large,
                qp.fallback_unregistered
            ),
            (4, 1, 1)
        );
        for f in [
            Fallback::Exhausted,
            Fallback::TooLarge,
            Fallback::Unregistered,
        ] {
            assert!(c.fallbacks().iter().any(|(n, _)| *n == f.name()));
        }
    }
}
