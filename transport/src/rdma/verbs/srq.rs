//! Shared receive queues.

use super::pd::Pd;
use super::sys::{ibv_recv_wr, ibv_srq, ibv_srq_attr, ibv_srq_init_attr, PostSrqRecvFn};
use super::wr::{link_all, link_slots, posted_before, RecvWr};
use super::{last_os, Error, PostError, Result};
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

/// `ibv_create_srq` / `ibv_destroy_srq`.
pub struct Srq {
    raw: NonNull<ibv_srq>,
    post_fn: PostSrqRecvFn,
    pd: Arc<Pd>,
}

// SAFETY: an SRQ is a thread-safe libibverbs object (the provider locks its queue).
unsafe impl Send for Srq {}
// SAFETY: see Send.
unsafe impl Sync for Srq {}

impl Srq {
    /// An SRQ of `max_wr` receives of up to `max_sge` SGEs each.
    pub fn new(pd: &Arc<Pd>, max_wr: u32, max_sge: u32) -> Result<Srq> {
        let mut attr = ibv_srq_init_attr {
            srq_context: std::ptr::null_mut(),
            attr: ibv_srq_attr {
                max_wr,
                max_sge,
                srq_limit: 0,
            },
        };
        let lib = pd.context().lib();
        // SAFETY: pd is a live PD; attr is a valid init structure for the call.
        let raw = unsafe { (lib.ibv_create_srq)(pd.as_ptr(), &mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| last_os("ibv_create_srq"))?;
        // SAFETY: raw is a live SRQ; its context is set by libibverbs.
        let post_fn = unsafe { (*(*raw.as_ptr()).context).ops.post_srq_recv };
        let Some(post_fn) = post_fn else {
            // SAFETY: raw is ours, never shared yet.
            unsafe { (lib.ibv_destroy_srq)(raw.as_ptr()) };
            return Err(Error::Invalid("provider has no post_srq_recv"));
        };
        Ok(Srq {
            raw,
            post_fn,
            pd: Arc::clone(pd),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_srq {
        self.raw.as_ptr()
    }

    /// Posts every WR of `wrs`, in order.
    ///
    /// # Safety
    /// Every SGE of every WR must name memory of a live MR of this SRQ's PD, which stays
    /// registered, and which the CPU does not touch, until the receive's completion is polled;
    /// the WRs' SGE arrays must be alive and unmoved for the call.
    pub unsafe fn post(&self, wrs: &mut [RecvWr]) -> Result<(), PostError> {
        let total = wrs.len();
        let head = link_all(wrs);
        // SAFETY: the chain is wrs (caller's promises for the SGEs).
        unsafe { self.post_chain(head, total) }
    }

    /// Posts `pool[slots[0]], pool[slots[1]], ...` (re-posting consumed receives of a pool).
    ///
    /// # Safety
    /// As [`post`](Srq::post), for the listed WRs.
    pub unsafe fn post_slots(&self, pool: &mut [RecvWr], slots: &[u32]) -> Result<(), PostError> {
        let head = link_slots(pool, slots).map_err(|e| PostError {
            op: "ibv_post_srq_recv",
            posted: 0,
            total: slots.len(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        // SAFETY: the chain is the listed slots of pool (caller's promises).
        unsafe { self.post_chain(head, slots.len()) }
    }

    unsafe fn post_chain(&self, head: *mut RecvWr, total: usize) -> Result<(), PostError> {
        if head.is_null() {
            return Ok(());
        }
        let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: raw is a live SRQ; head is a NULL-terminated chain of live WRs whose SGEs the
        // caller vouches for.
        let rc = unsafe { (self.post_fn)(self.raw.as_ptr(), head.cast(), &mut bad) };
        if rc == 0 {
            return Ok(());
        }
        Err(PostError {
            op: "ibv_post_srq_recv",
            // SAFETY: the chain is still alive (we hold it); bad is one of it or NULL.
            posted: unsafe { posted_before(head, bad.cast(), total) },
            total,
            source: io::Error::from_raw_os_error(rc),
        })
    }

    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }
}

impl Drop for Srq {
    fn drop(&mut self) {
        // SAFETY: raw came from ibv_create_srq; QPs attached to it hold an Arc<Srq>.
        let rc = unsafe { (self.pd.context().lib().ibv_destroy_srq)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_srq failed");
        }
    }
}
