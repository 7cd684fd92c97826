//! Queue pairs (made and destroyed through their cm_id: see [`CmId::create_qp`](super::CmId::create_qp)).

use super::cq::Cq;
use super::pd::Pd;
use super::srq::Srq;
use super::sys::{ibv_qp, ibv_recv_wr, ibv_send_wr, PostRecvFn, PostSendFn};
use super::wr::{link_all, link_slots, posted_before, Linked, RecvWr, SendWr};
use super::{Error, PostError, Result};
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

/// Queue sizes of a new QP.
#[derive(Debug, Clone, Copy)]
pub struct QpCaps {
    pub max_send_wr: u32,
    /// Ignored with an SRQ.
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

/// An RC queue pair. It belongs to its [`CmId`](super::CmId), which destroys it.
pub struct Qp {
    raw: NonNull<ibv_qp>,
    post_send_fn: PostSendFn,
    post_recv_fn: PostRecvFn,
    pub(crate) _pd: Arc<Pd>,
    pub(crate) _send_cq: Arc<Cq>,
    pub(crate) _recv_cq: Arc<Cq>,
    pub(crate) srq: Option<Arc<Srq>>,
}

// SAFETY: a QP is a thread-safe libibverbs object (the provider locks its queues).
unsafe impl Send for Qp {}
// SAFETY: see Send.
unsafe impl Sync for Qp {}

impl Qp {
    /// Wraps the QP rdma_create_qp made.
    ///
    /// # Safety
    /// `raw` must be a live QP made on `pd`, `send_cq`, `recv_cq` and `srq`, destroyed (by its
    /// cm_id) before this Qp's Arcs are released.
    pub(crate) unsafe fn from_raw(
        raw: NonNull<ibv_qp>,
        pd: Arc<Pd>,
        send_cq: Arc<Cq>,
        recv_cq: Arc<Cq>,
        srq: Option<Arc<Srq>>,
    ) -> Result<Qp> {
        // SAFETY: raw is live (caller); its context's ops are the provider's.
        let ops = unsafe { &(*(*raw.as_ptr()).context).ops };
        let (Some(post_send_fn), Some(post_recv_fn)) = (ops.post_send, ops.post_recv) else {
            return Err(Error::Invalid("provider has no post_send/post_recv"));
        };
        Ok(Qp {
            raw,
            post_send_fn,
            post_recv_fn,
            _pd: pd,
            _send_cq: send_cq,
            _recv_cq: recv_cq,
            srq,
        })
    }

    pub fn qp_num(&self) -> u32 {
        // SAFETY: raw is live; qp_num is fixed at creation.
        unsafe { (*self.raw.as_ptr()).qp_num }
    }

    /// Posts every WR of `wrs`, in order.
    ///
    /// # Safety
    /// Every SGE must name memory of a live MR of this QP's PD that stays registered (and, for
    /// a READ's destination, untouched by the CPU) until the WR's completion is polled — or,
    /// for an unsignaled WR, a later signaled one's; remote addresses and rkeys are checked by
    /// the peer's device. The SGE arrays must be alive and unmoved for the call.
    pub unsafe fn post_send(&self, wrs: &mut [SendWr]) -> Result<(), PostError> {
        let total = wrs.len();
        let head = link_all(wrs);
        // SAFETY: the chain is wrs (caller's promises).
        unsafe { self.post_send_chain(head, total) }
    }

    /// Posts `pool[slots[0]], pool[slots[1]], ...`.
    ///
    /// # Safety
    /// As [`post_send`](Qp::post_send), for the listed WRs.
    pub unsafe fn post_send_slots(
        &self,
        pool: &mut [SendWr],
        slots: &[u32],
    ) -> Result<(), PostError> {
        let head = link_slots(pool, slots).map_err(|e| invalid("ibv_post_send", slots.len(), e))?;
        // SAFETY: the chain is the listed slots of pool (caller's promises).
        unsafe { self.post_send_chain(head, slots.len()) }
    }

    unsafe fn post_send_chain(&self, head: *mut SendWr, total: usize) -> Result<(), PostError> {
        if head.is_null() {
            return Ok(());
        }
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        // SAFETY: raw is a live QP; head is a NULL-terminated chain of live WRs (caller).
        let rc = unsafe { (self.post_send_fn)(self.raw.as_ptr(), head.cast(), &mut bad) };
        // SAFETY: the chain is alive; bad is in it or NULL.
        unsafe { result("ibv_post_send", rc, head, bad.cast(), total) }
    }

    /// Posts receives to this QP's own receive queue (not for a QP on an SRQ).
    ///
    /// # Safety
    /// As [`Srq::post`].
    pub unsafe fn post_recv(&self, wrs: &mut [RecvWr]) -> Result<(), PostError> {
        let total = wrs.len();
        let head = link_all(wrs);
        // SAFETY: the chain is wrs (caller's promises).
        unsafe { self.post_recv_chain(head, total) }
    }

    /// Posts `pool[slots[0]], ...` to this QP's own receive queue.
    ///
    /// # Safety
    /// As [`Srq::post`].
    pub unsafe fn post_recv_slots(
        &self,
        pool: &mut [RecvWr],
        slots: &[u32],
    ) -> Result<(), PostError> {
        let head = link_slots(pool, slots).map_err(|e| invalid("ibv_post_recv", slots.len(), e))?;
        // SAFETY: the chain is the listed slots of pool (caller's promises).
        unsafe { self.post_recv_chain(head, slots.len()) }
    }

    unsafe fn post_recv_chain(&self, head: *mut RecvWr, total: usize) -> Result<(), PostError> {
        if head.is_null() {
            return Ok(());
        }
        if self.srq.is_some() {
            return Err(invalid(
                "ibv_post_recv",
                total,
                Error::Invalid("this QP receives on an SRQ"),
            ));
        }
        let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: raw is a live QP; head is a NULL-terminated chain of live WRs (caller).
        let rc = unsafe { (self.post_recv_fn)(self.raw.as_ptr(), head.cast(), &mut bad) };
        // SAFETY: the chain is alive; bad is in it or NULL.
        unsafe { result("ibv_post_recv", rc, head, bad.cast(), total) }
    }
}

fn invalid(op: &'static str, total: usize, e: Error) -> PostError {
    PostError {
        op,
        posted: 0,
        total,
        source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
    }
}

/// # Safety
/// `head` is a live chain; `bad` is in it or NULL.
unsafe fn result<W: Linked>(
    op: &'static str,
    rc: i32,
    head: *mut W,
    bad: *mut W,
    total: usize,
) -> Result<(), PostError> {
    if rc == 0 {
        return Ok(());
    }
    Err(PostError {
        op,
        // SAFETY: caller's promise.
        posted: unsafe { posted_before(head, bad, total) },
        total,
        source: io::Error::from_raw_os_error(rc),
    })
}
