//! The RDMA devices librdmacm has opened ([`Devices`]) and one device's context ([`Context`]).

use super::sys::{self, ibv_context, Lib};
use super::{last_os, Result};
use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

/// `rdma_get_devices()`: every RDMA device, opened by librdmacm, kept open until this list is
/// dropped (`rdma_free_devices`). A cm_id's `verbs` context is one of these; PDs and CQs made
/// on it hold the list so the context outlives them.
pub struct Devices {
    list: NonNull<*mut ibv_context>,
    len: usize,
    lib: &'static Lib,
}

// SAFETY: the list is written once by rdma_get_devices and only read afterwards; the contexts
// it names are thread-safe library objects (libibverbs is thread safe).
unsafe impl Send for Devices {}
// SAFETY: see Send: no interior mutation through &Devices.
unsafe impl Sync for Devices {}

impl Devices {
    /// Opens every device. An empty list is not an error here (callers say what is missing).
    pub fn open() -> Result<Arc<Devices>> {
        let lib = sys::lib()?;
        let mut n = 0;
        // SAFETY: n is a valid out-pointer; the function has no other precondition.
        let list = unsafe { (lib.rdma_get_devices)(&mut n) };
        let list = NonNull::new(list).ok_or_else(|| last_os("rdma_get_devices"))?;
        Ok(Arc::new(Devices {
            list,
            len: usize::try_from(n).unwrap_or(0),
            lib,
        }))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn raw(&self, i: usize) -> *mut ibv_context {
        assert!(i < self.len);
        // SAFETY: i < len, and the list holds len entries (then a NULL) until we free it.
        unsafe { *self.list.as_ptr().add(i) }
    }

    /// The `i`th device's context.
    pub fn get(self: &Arc<Self>, i: usize) -> Option<Context> {
        (i < self.len).then(|| Context {
            raw: NonNull::new(self.raw(i)).expect("rdma_get_devices entry is NULL"),
            devices: Arc::clone(self),
        })
    }

    /// The context in this list whose pointer is `raw` (a cm_id's `verbs`), if any.
    pub(crate) fn find(self: &Arc<Self>, raw: *mut ibv_context) -> Option<Context> {
        (0..self.len)
            .find(|&i| self.raw(i) == raw)
            .and_then(|i| self.get(i))
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        // SAFETY: list came from rdma_get_devices and is freed once, here; every Context holds
        // an Arc of self, so none is used after this.
        unsafe { (self.lib.rdma_free_devices)(self.list.as_ptr()) }
        tracing::debug!(devices = self.len, "librdmacm device list freed");
    }
}

/// One opened device (`struct ibv_context`), borrowed from [`Devices`].
#[derive(Clone)]
pub struct Context {
    raw: NonNull<ibv_context>,
    devices: Arc<Devices>,
}

// SAFETY: a context is a thread-safe libibverbs object; the Arc keeps it open.
unsafe impl Send for Context {}
// SAFETY: see Send.
unsafe impl Sync for Context {}

impl Context {
    pub(crate) fn as_ptr(&self) -> *mut ibv_context {
        self.raw.as_ptr()
    }

    pub(crate) fn lib(&self) -> &'static Lib {
        self.devices.lib
    }

    /// The device's name (`rxe0`, `mlx5_0`).
    pub fn name(&self) -> String {
        // SAFETY: raw is an open context (kept open by self.devices); its device pointer is set
        // by libibverbs for the context's life.
        let dev = unsafe { (*self.raw.as_ptr()).device };
        // SAFETY: dev is the context's device; the name it returns lives as long as the device.
        let name = unsafe { (self.lib().ibv_get_device_name)(dev) };
        if name.is_null() {
            return "?".into();
        }
        // SAFETY: a non-NULL device name is a NUL-terminated string owned by the device.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name())
            .finish()
    }
}
