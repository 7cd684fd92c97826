//! Our own thin, safe layer over libibverbs and librdmacm.
//!
//! # Why our own, and why loaded at run time
//! The transport needs shared receive queues, rdma_cm (listen/accept/reject with private
//! data), `ibv_reg_dmabuf_mr`, CQ polling in batches into a caller-provided array, and *no heap
//! allocation per posted work request* (WRs and SGEs are built once, kept in the request pool
//! and re-posted). And a daemon with only TCP listeners must start on a machine with no
//! rdma-core at all. The crates on offer (2026):
//! - `sideway` 0.4: rdma_cm and `reg_dmabuf_mr`, but no SRQ (its issue #85), a heap allocation
//!   per post (#120), a `PostRecvGuard` that drops `bad_wr` (a partial post is invisible), and
//!   its own rc_pingpong failed on rxe once receives were re-posted.
//! - `ibverbs` 0.9: active, `rdmacm` feature and dma-buf registration, but its `ibverbs-sys`
//!   builds a vendored rdma-core (cmake + bindgen) and links `libibverbs`: the binary would
//!   not even load where rdma-core is absent.
//! - `rdma-sys` (dormant since 2023) finds rdma-core with pkg-config and links it.
//! - `rdma-mummy-sys` (sideway's raw layer) does load at run time: it builds the C shim
//!   `rdma-core-mummy` (cmake, a git submodule) whose ELF constructor `dlopen`s
//!   libibverbs/librdmacm at *every* process start, TCP-only or not; when they are absent it
//!   stays silent and each call just returns NULL/EOPNOTSUPP, so nothing can say "libibverbs
//!   is not installed". The shim's wrapper list (as read in its `src/ibverbs.c`) has no
//!   `ibv_reg_dmabuf_mr`, and it needs bindgen (libclang) at build time. Raw bindings only:
//!   the safe layer would still be ours; what it would save us, the layouts, a test checks.
//!
//! So: [`sys`] declares the few structures we touch as hand-written `#[repr(C)]` layouts,
//! checked against the installed headers by a unit test (a C program compiled with `cc` prints
//! every size and offset), and `dlopen`s `libibverbs.so.1` and `librdmacm.so.1` on first use,
//! resolving each function once. The data-path calls (`ibv_poll_cq`, `ibv_post_send`,
//! `ibv_post_recv`, `ibv_post_srq_recv`) are `static inline` in verbs.h: they call through the
//! provider's ops table in `struct ibv_context`; we take those pointers once, when the CQ, QP or
//! SRQ is made. Nothing needs rdma-core to *build* except that layout test.
//!
//! Proven on soft-RoCE by `examples/rdma_pingpong.rs` (run by tests/e2e/guest-rdma-pingpong.sh,
//! the `rdma` step of deploy/test.sh). Not here yet: memory windows and fast-registration MRs
//! (so SEND_WITH_INV, though built by [`SendWr::send_with_inv`], is untested), completion
//! channels (CQs are polled only), device/port queries, async events.
//!
//! # Ownership
//! Each type owns one kernel object and releases it on drop; a child holds an `Arc` of its
//! parents so they cannot be released first (a QP keeps its PD, CQs and SRQ; an MR its PD; a
//! PD the device list its context comes from; a cm_id its event channel).
//!
//! # Posting
//! [`RecvWr`], [`SendWr`] and [`Sge`] are the C structures themselves (`repr(transparent)`), made
//! once and kept by their owner. A post links the given WRs through their `next` fields in
//! place (a slice, or chosen slots of a pool) and reports how many the provider took
//! ([`PostError::posted`]). Posting is `unsafe`: the memory an SGE names must stay registered
//! and untouched by the CPU until its completion is polled.

use std::io;

mod cm;
mod cq;
mod device;
mod mem;
mod mr;
mod pd;
mod qp;
mod srq;
pub mod sys;
mod wr;

pub use cm::{CmId, ConnParam, Event, EventChannel, EventKind, IdHandle, MAX_PRIVATE_DATA};
pub use cq::{Cq, Wc, WcOpcode};
pub use device::{Context, Devices};
pub use mem::HostMem;
pub use mr::{Access, Mr};
pub use pd::Pd;
pub use qp::{Qp, QpCaps};
pub use srq::Srq;
pub use sys::LoadError;
pub use wr::{RecvWr, SendWr, Sge};

/// What a verbs call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rdma-core is not installed (or too old).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A call failed; `op` names it.
    #[error("{op}: {source}")]
    Os { op: &'static str, source: io::Error },
    /// The request itself was wrong (out-of-range SGE, duplicate slot, ...).
    #[error("{0}")]
    Invalid(&'static str),
}

/// A post the provider took only part of.
#[derive(Debug, thiserror::Error)]
#[error("{op} took {posted} of {total} work requests: {source}")]
pub struct PostError {
    pub op: &'static str,
    /// How many WRs (from the first) were posted.
    pub posted: usize,
    pub total: usize,
    pub source: io::Error,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error of a call that returned NULL or -1 with `errno` set.
fn last_os(op: &'static str) -> Error {
    Error::Os {
        op,
        source: io::Error::last_os_error(),
    }
}
