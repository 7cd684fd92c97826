//! A protection domain.

use super::device::Context;
use super::sys::ibv_pd;
use super::{last_os, Result};
use std::ptr::NonNull;
use std::sync::Arc;

/// `ibv_alloc_pd` / `ibv_dealloc_pd`.
pub struct Pd {
    raw: NonNull<ibv_pd>,
    ctx: Context,
}

// SAFETY: a PD is a thread-safe libibverbs object; nothing in Pd is mutated through &Pd.
unsafe impl Send for Pd {}
// SAFETY: see Send.
unsafe impl Sync for Pd {}

impl Pd {
    pub fn new(ctx: &Context) -> Result<Arc<Pd>> {
        // SAFETY: ctx is an open context (its Devices list keeps it open).
        let raw = unsafe { (ctx.lib().ibv_alloc_pd)(ctx.as_ptr()) };
        let raw = NonNull::new(raw).ok_or_else(|| last_os("ibv_alloc_pd"))?;
        Ok(Arc::new(Pd {
            raw,
            ctx: ctx.clone(),
        }))
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_pd {
        self.raw.as_ptr()
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: raw came from ibv_alloc_pd; MRs, SRQs and QPs on it hold an Arc<Pd>, so none
        // is left when this runs.
        let rc = unsafe { (self.ctx.lib().ibv_dealloc_pd)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_dealloc_pd failed");
        }
        tracing::debug!(device = %self.ctx.name(), "protection domain deallocated");
    }
}
