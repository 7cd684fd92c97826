//! Completion queues, polled in batches.

use super::device::Context;
use super::sys::{self, ibv_cq, ibv_wc, PollCqFn};
use super::{last_os, Error, Result};
use std::ffi::CStr;
use std::ptr::NonNull;

/// What a completion completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    Recv,
    Other(u32),
}

/// `struct ibv_wc`, filled by [`Cq::poll`].
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Wc(ibv_wc);

impl Wc {
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    pub fn is_ok(&self) -> bool {
        self.0.status == sys::IBV_WC_SUCCESS
    }

    /// The raw `ibv_wc_status`.
    pub fn status(&self) -> u32 {
        self.0.status
    }

    /// The status as libibverbs words it (`ibv_wc_status_str`).
    pub fn status_str(&self) -> &'static str {
        let Ok(lib) = sys::lib() else { return "?" };
        // SAFETY: ibv_wc_status_str accepts any value and returns a static string.
        let s = unsafe { (lib.ibv_wc_status_str)(self.0.status) };
        if s.is_null() {
            return "?";
        }
        // SAFETY: a static NUL-terminated string of libibverbs (never unloaded).
        unsafe { CStr::from_ptr(s) }.to_str().unwrap_or("?")
    }

    /// Meaningful only when [`is_ok`](Wc::is_ok) (a failed completion's opcode is undefined).
    pub fn opcode(&self) -> WcOpcode {
        match self.0.opcode {
            sys::IBV_WC_SEND => WcOpcode::Send,
            sys::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
            sys::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
            sys::IBV_WC_RECV => WcOpcode::Recv,
            o => WcOpcode::Other(o),
        }
    }

    pub fn byte_len(&self) -> u32 {
        self.0.byte_len
    }

    /// The QP the completion belongs to (with an SRQ: which connection sent it).
    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }

    /// The rkey a received SEND_WITH_INV invalidated.
    pub fn invalidated_rkey(&self) -> Option<u32> {
        (self.0.wc_flags & sys::IBV_WC_WITH_INV != 0).then_some(self.0.imm_or_invalidated)
    }
}

/// `ibv_create_cq` / `ibv_destroy_cq`, no completion channel: polled only.
pub struct Cq {
    raw: NonNull<ibv_cq>,
    poll_fn: PollCqFn,
    ctx: Context,
}

// SAFETY: a CQ is a thread-safe libibverbs object (providers lock it unless told otherwise).
unsafe impl Send for Cq {}
// SAFETY: see Send.
unsafe impl Sync for Cq {}

impl Cq {
    /// A CQ of at least `cqe` entries.
    pub fn new(ctx: &Context, cqe: u32) -> Result<Cq> {
        let cqe = i32::try_from(cqe).map_err(|_| Error::Invalid("CQ size out of range"))?;
        // SAFETY: ctx is an open context; no channel, no context pointer, vector 0.
        let raw = unsafe {
            (ctx.lib().ibv_create_cq)(
                ctx.as_ptr(),
                cqe,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| last_os("ibv_create_cq"))?;
        // SAFETY: raw is a live CQ whose context is set by libibverbs; ops is the provider's.
        let poll_fn = unsafe { (*(*raw.as_ptr()).context).ops.poll_cq };
        let Some(poll_fn) = poll_fn else {
            // SAFETY: raw is ours, never shared yet.
            unsafe { (ctx.lib().ibv_destroy_cq)(raw.as_ptr()) };
            return Err(Error::Invalid("provider has no poll_cq"));
        };
        Ok(Cq {
            raw,
            poll_fn,
            ctx: ctx.clone(),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_cq {
        self.raw.as_ptr()
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Polls up to `wcs.len()` completions into `wcs`; returns how many were written.
    pub fn poll(&self, wcs: &mut [Wc]) -> Result<usize> {
        let n = i32::try_from(wcs.len()).unwrap_or(i32::MAX);
        // SAFETY: raw is a live CQ; wcs has room for n ibv_wc (Wc is repr(transparent)).
        let rc = unsafe { (self.poll_fn)(self.raw.as_ptr(), n, wcs.as_mut_ptr().cast()) };
        if rc < 0 {
            // Providers return a negative value without an errno (rxe, mlx5: -1).
            return Err(Error::Os {
                op: "ibv_poll_cq",
                source: std::io::Error::other(format!("provider returned {rc}")),
            });
        }
        Ok(rc as usize)
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: raw came from ibv_create_cq; QPs using it hold an Arc<Cq>, so none is left.
        let rc = unsafe { (self.ctx.lib().ibv_destroy_cq)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_cq failed");
        }
    }
}
