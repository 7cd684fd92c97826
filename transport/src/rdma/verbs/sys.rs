//! The raw layer: `#[repr(C)]` layouts of the libibverbs/librdmacm structures we touch, and the
//! two libraries loaded at run time (`dlopen`), their functions resolved once.
//!
//! Layouts are written by hand from rdma-core's `infiniband/verbs.h` and `rdma/rdma_cma.h`. A
//! structure the libraries allocate and we only read through a pointer (`ibv_context`,
//! `ibv_qp`, `rdma_cm_id`, `rdma_cm_event`, ...) is declared as a *prefix*: the leading fields
//! we read, nothing after them; we never make or copy one. Structures we build and hand in
//! (`ibv_send_wr`, `ibv_recv_wr`, `ibv_sge`, `ibv_wc`, `ibv_qp_init_attr`, ...) are complete.
//! The test `layout_matches_headers` compiles a C program against the installed headers and
//! checks every size and offset declared here.
//!
//! These are ABI-stable structures: rdma-core keeps `ibv_context_ops` slots as `_compat_*`
//! placeholders rather than moving the data-path entries (`poll_cq`, `post_send`, `post_recv`,
//! `post_srq_recv`), because the `static inline` functions of every program ever compiled
//! against verbs.h dispatch through them.

#![allow(non_camel_case_types, clippy::unused_unit)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

// ---------------------------------------------------------------- libibverbs structures

/// Opaque.
#[repr(C)]
pub struct ibv_device {
    _opaque: [u8; 0],
}

/// Opaque.
#[repr(C)]
pub struct ibv_comp_channel {
    _opaque: [u8; 0],
}

pub type PollCqFn =
    unsafe extern "C" fn(cq: *mut ibv_cq, num_entries: c_int, wc: *mut ibv_wc) -> c_int;
pub type PostSendFn = unsafe extern "C" fn(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad: *mut *mut ibv_send_wr,
) -> c_int;
pub type PostRecvFn = unsafe extern "C" fn(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad: *mut *mut ibv_recv_wr,
) -> c_int;
pub type PostSrqRecvFn = unsafe extern "C" fn(
    srq: *mut ibv_srq,
    wr: *mut ibv_recv_wr,
    bad: *mut *mut ibv_recv_wr,
) -> c_int;

/// `struct ibv_context_ops`: 32 pointer slots; we name the four data-path ones.
#[repr(C)]
pub struct ibv_context_ops {
    _slots_0_10: [*mut c_void; 11],
    pub poll_cq: Option<PollCqFn>,
    _slots_12_19: [*mut c_void; 8],
    pub post_srq_recv: Option<PostSrqRecvFn>,
    _slots_21_24: [*mut c_void; 4],
    pub post_send: Option<PostSendFn>,
    pub post_recv: Option<PostRecvFn>,
    _slots_27_31: [*mut c_void; 5],
}

/// `struct ibv_context` (prefix: `device`, `ops`).
#[repr(C)]
pub struct ibv_context {
    pub device: *mut ibv_device,
    pub ops: ibv_context_ops,
}

/// `struct ibv_pd` (prefix).
#[repr(C)]
pub struct ibv_pd {
    pub context: *mut ibv_context,
}

/// `struct ibv_mr` (complete; allocated by the library).
#[repr(C)]
pub struct ibv_mr {
    pub context: *mut ibv_context,
    pub pd: *mut ibv_pd,
    pub addr: *mut c_void,
    pub length: usize,
    pub handle: u32,
    pub lkey: u32,
    pub rkey: u32,
}

/// `struct ibv_cq` (prefix).
#[repr(C)]
pub struct ibv_cq {
    pub context: *mut ibv_context,
}

/// `struct ibv_srq` (prefix).
#[repr(C)]
pub struct ibv_srq {
    pub context: *mut ibv_context,
}

/// `struct ibv_qp` (prefix, up to `qp_num`).
#[repr(C)]
pub struct ibv_qp {
    pub context: *mut ibv_context,
    pub qp_context: *mut c_void,
    pub pd: *mut ibv_pd,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub handle: u32,
    pub qp_num: u32,
}

/// `struct ibv_sge`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ibv_sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

/// `struct ibv_recv_wr`.
#[repr(C)]
pub struct ibv_recv_wr {
    pub wr_id: u64,
    pub next: *mut ibv_recv_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
}

/// The `rdma` member of `ibv_send_wr.wr` (the union is 32 bytes: its `atomic` member).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ibv_send_wr_rdma {
    pub remote_addr: u64,
    pub rkey: u32,
    _pad: u32,
    _rest_of_union: [u64; 2],
}

/// `struct ibv_send_wr`.
#[repr(C)]
pub struct ibv_send_wr {
    pub wr_id: u64,
    pub next: *mut ibv_send_wr,
    pub sg_list: *mut ibv_sge,
    pub num_sge: c_int,
    pub opcode: c_uint,
    pub send_flags: c_uint,
    /// `imm_data` (network order) or `invalidate_rkey` (for `SEND_WITH_INV`).
    pub imm_or_invalidate: u32,
    pub rdma: ibv_send_wr_rdma,
    /// `qp_type.xrc.remote_srqn`.
    pub remote_srqn: u32,
    /// The `bind_mw`/`tso` union (48 bytes, 8-aligned).
    _bind_mw_tso: [u64; 6],
}

/// `struct ibv_wc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ibv_wc {
    pub wr_id: u64,
    pub status: c_uint,
    pub opcode: c_uint,
    pub vendor_err: u32,
    pub byte_len: u32,
    /// `imm_data` or `invalidated_rkey`.
    pub imm_or_invalidated: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: c_uint,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}

/// `struct ibv_qp_cap`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ibv_qp_cap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

/// `struct ibv_qp_init_attr`.
#[repr(C)]
pub struct ibv_qp_init_attr {
    pub qp_context: *mut c_void,
    pub send_cq: *mut ibv_cq,
    pub recv_cq: *mut ibv_cq,
    pub srq: *mut ibv_srq,
    pub cap: ibv_qp_cap,
    pub qp_type: c_uint,
    pub sq_sig_all: c_int,
}

/// `struct ibv_srq_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ibv_srq_attr {
    pub max_wr: u32,
    pub max_sge: u32,
    pub srq_limit: u32,
}

/// `struct ibv_srq_init_attr`.
#[repr(C)]
pub struct ibv_srq_init_attr {
    pub srq_context: *mut c_void,
    pub attr: ibv_srq_attr,
}

pub const IBV_QPT_RC: c_uint = 2;

pub const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
pub const IBV_ACCESS_REMOTE_WRITE: c_int = 1 << 1;
pub const IBV_ACCESS_REMOTE_READ: c_int = 1 << 2;

pub const IBV_WR_RDMA_WRITE: c_uint = 0;
pub const IBV_WR_SEND: c_uint = 2;
pub const IBV_WR_RDMA_READ: c_uint = 4;
pub const IBV_WR_SEND_WITH_INV: c_uint = 9;

pub const IBV_SEND_SIGNALED: c_uint = 1 << 1;

pub const IBV_WC_SUCCESS: c_uint = 0;
pub const IBV_WC_SEND: c_uint = 0;
pub const IBV_WC_RDMA_WRITE: c_uint = 1;
pub const IBV_WC_RDMA_READ: c_uint = 2;
pub const IBV_WC_RECV: c_uint = 1 << 7;
pub const IBV_WC_WITH_INV: c_uint = 1 << 3;

// ---------------------------------------------------------------- librdmacm structures

/// `struct rdma_event_channel`.
#[repr(C)]
pub struct rdma_event_channel {
    pub fd: c_int,
}

/// `struct rdma_cm_id` (prefix: `verbs`, `channel`, `context`, `qp`, and the two addresses
/// that open `route.addr`, which `rdma_get_local_addr`/`rdma_get_peer_addr` (inline in
/// rdma_cma.h) return).
#[repr(C)]
pub struct rdma_cm_id {
    pub verbs: *mut ibv_context,
    pub channel: *mut rdma_event_channel,
    pub context: *mut c_void,
    pub qp: *mut ibv_qp,
    pub src_addr: libc::sockaddr_storage,
    pub dst_addr: libc::sockaddr_storage,
}

/// `struct rdma_conn_param`.
#[repr(C)]
pub struct rdma_conn_param {
    pub private_data: *const c_void,
    pub private_data_len: u8,
    pub responder_resources: u8,
    pub initiator_depth: u8,
    pub flow_control: u8,
    pub retry_count: u8,
    pub rnr_retry_count: u8,
    pub srq: u8,
    pub qp_num: u32,
}

/// `struct rdma_cm_event` (prefix: the `conn` member of the `param` union).
#[repr(C)]
pub struct rdma_cm_event {
    pub id: *mut rdma_cm_id,
    pub listen_id: *mut rdma_cm_id,
    pub event: c_uint,
    pub status: c_int,
    pub conn: rdma_conn_param,
}

pub const RDMA_PS_TCP: c_uint = 0x0106;

// ---------------------------------------------------------------- the loaded libraries

pub const LIBIBVERBS: &str = "libibverbs.so.1";
pub const LIBRDMACM: &str = "librdmacm.so.1";

/// Why the verbs libraries could not be used. Kept as text so the one load result can be
/// shared (cloned) by every caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("{lib} not found: install rdma-core/ibverbs-providers ({detail})")]
    Missing { lib: String, detail: String },
    #[error("{lib} has no symbol {symbol}: rdma-core too old?")]
    Symbol { lib: String, symbol: &'static str },
}

/// One `dlopen`ed library; never closed (function pointers taken from it live as long as the
/// process).
struct Dl(*mut c_void);

impl Dl {
    fn open(name: &str) -> Result<Dl, LoadError> {
        let cname = std::ffi::CString::new(name).map_err(|_| LoadError::Missing {
            lib: name.to_owned(),
            detail: "name contains NUL".into(),
        })?;
        // SAFETY: cname is a valid C string; dlopen has no other precondition. RTLD_NOW makes a
        // broken library fail here rather than at a later call.
        let handle = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(LoadError::Missing {
                lib: name.to_owned(),
                detail: dlerror_text(),
            });
        }
        Ok(Dl(handle))
    }

    fn sym(&self, lib: &str, symbol: &'static CStr) -> Result<*mut c_void, LoadError> {
        // SAFETY: self.0 is a live handle from dlopen (never closed); symbol is a C string.
        let p = unsafe { libc::dlsym(self.0, symbol.as_ptr()) };
        if p.is_null() {
            return Err(LoadError::Symbol {
                lib: lib.to_owned(),
                symbol: symbol.to_str().unwrap_or("?"),
            });
        }
        Ok(p)
    }
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns NULL or a C string valid until the next dl* call on this thread;
    // we copy it at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return "dlopen failed".into();
    }
    // SAFETY: non-NULL dlerror result is a NUL-terminated string (see above).
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

macro_rules! library {
    ($( $field:ident : $from:ident = fn($($arg:ty),*) -> $ret:ty; )*) => {
        /// The functions of libibverbs and librdmacm we call (the data-path ones are not here:
        /// they are `static inline` in verbs.h and dispatch through [`ibv_context_ops`]).
        pub struct Lib {
            $( pub $field: unsafe extern "C" fn($($arg),*) -> $ret, )*
        }

        impl Lib {
            fn resolve(ibv: &Dl, ibv_name: &str, cm: &Dl, cm_name: &str) -> Result<Lib, LoadError> {
                let _ = (&ibv, &ibv_name, &cm, &cm_name);
                Ok(Lib {
                    $( $field: {
                        let (dl, name) = library!(@pick $from, ibv, ibv_name, cm, cm_name);
                        let p = dl.sym(name, library!(@cstr $field))?;
                        // SAFETY: the symbol is this function of the library, whose C prototype
                        // the declared type repeats (verbs.h / rdma_cma.h).
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> $ret>(p) }
                    }, )*
                })
            }
        }
    };
    (@pick ibv, $ibv:ident, $ibv_name:ident, $cm:ident, $cm_name:ident) => { ($ibv, $ibv_name) };
    (@pick cm, $ibv:ident, $ibv_name:ident, $cm:ident, $cm_name:ident) => { ($cm, $cm_name) };
    (@cstr $field:ident) => {
        // concat! of an identifier and "\0" is a valid C string.
        match CStr::from_bytes_with_nul(concat!(stringify!($field), "\0").as_bytes()) {
            Ok(c) => c,
            Err(_) => unreachable!(),
        }
    };
}

library! {
    ibv_get_device_name: ibv = fn(*mut ibv_device) -> *const c_char;
    ibv_get_device_guid: ibv = fn(*mut ibv_device) -> u64;
    ibv_alloc_pd: ibv = fn(*mut ibv_context) -> *mut ibv_pd;
    ibv_dealloc_pd: ibv = fn(*mut ibv_pd) -> c_int;
    ibv_reg_mr: ibv = fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut ibv_mr;
    ibv_reg_dmabuf_mr: ibv = fn(*mut ibv_pd, u64, usize, u64, c_int, c_int) -> *mut ibv_mr;
    ibv_dereg_mr: ibv = fn(*mut ibv_mr) -> c_int;
    ibv_create_cq: ibv = fn(*mut ibv_context, c_int, *mut c_void, *mut ibv_comp_channel, c_int) -> *mut ibv_cq;
    ibv_destroy_cq: ibv = fn(*mut ibv_cq) -> c_int;
    ibv_create_srq: ibv = fn(*mut ibv_pd, *mut ibv_srq_init_attr) -> *mut ibv_srq;
    ibv_destroy_srq: ibv = fn(*mut ibv_srq) -> c_int;
    ibv_wc_status_str: ibv = fn(c_uint) -> *const c_char;
    rdma_get_devices: cm = fn(*mut c_int) -> *mut *mut ibv_context;
    rdma_free_devices: cm = fn(*mut *mut ibv_context) -> ();
    rdma_create_event_channel: cm = fn() -> *mut rdma_event_channel;
    rdma_destroy_event_channel: cm = fn(*mut rdma_event_channel) -> ();
    rdma_get_cm_event: cm = fn(*mut rdma_event_channel, *mut *mut rdma_cm_event) -> c_int;
    rdma_ack_cm_event: cm = fn(*mut rdma_cm_event) -> c_int;
    rdma_event_str: cm = fn(c_uint) -> *const c_char;
    rdma_create_id: cm = fn(*mut rdma_event_channel, *mut *mut rdma_cm_id, *mut c_void, c_uint) -> c_int;
    rdma_destroy_id: cm = fn(*mut rdma_cm_id) -> c_int;
    rdma_bind_addr: cm = fn(*mut rdma_cm_id, *mut libc::sockaddr) -> c_int;
    rdma_listen: cm = fn(*mut rdma_cm_id, c_int) -> c_int;
    rdma_resolve_addr: cm = fn(*mut rdma_cm_id, *mut libc::sockaddr, *mut libc::sockaddr, c_int) -> c_int;
    rdma_resolve_route: cm = fn(*mut rdma_cm_id, c_int) -> c_int;
    rdma_create_qp: cm = fn(*mut rdma_cm_id, *mut ibv_pd, *mut ibv_qp_init_attr) -> c_int;
    rdma_destroy_qp: cm = fn(*mut rdma_cm_id) -> ();
    rdma_connect: cm = fn(*mut rdma_cm_id, *mut rdma_conn_param) -> c_int;
    rdma_accept: cm = fn(*mut rdma_cm_id, *mut rdma_conn_param) -> c_int;
    rdma_reject: cm = fn(*mut rdma_cm_id, *const c_void, u8) -> c_int;
    rdma_disconnect: cm = fn(*mut rdma_cm_id) -> c_int;
    rdma_migrate_id: cm = fn(*mut rdma_cm_id, *mut rdma_event_channel) -> c_int;
}

/// Loads both libraries by the given names and resolves every function.
pub fn load(ibv_name: &str, cm_name: &str) -> Result<Lib, LoadError> {
    let ibv = Dl::open(ibv_name)?;
    let cm = Dl::open(cm_name)?;
    Lib::resolve(&ibv, ibv_name, &cm, cm_name)
}

/// The process-wide libraries, loaded on first use. A daemon that never uses RDMA never loads
/// them, so it starts where rdma-core is not installed.
pub fn lib() -> Result<&'static Lib, LoadError> {
    static LIB: OnceLock<Result<Lib, LoadError>> = OnceLock::new();
    LIB.get_or_init(|| load(LIBIBVERBS, LIBRDMACM))
        .as_ref()
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests;
