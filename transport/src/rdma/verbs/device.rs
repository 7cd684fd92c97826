//! The RDMA devices librdmacm has opened ([`Devices`]) and one device's context ([`Context`]).

use super::cm::{IdCore, IdHandle};
use super::sys::{self, ibv_context, ibv_device, Lib};
use super::{last_os, Result};
use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

/// `rdma_get_devices()`: every RDMA device, opened by librdmacm, kept open until this list is
/// dropped (`rdma_free_devices`). A cm_id's `verbs` context is usually one of these (not
/// always: see [`super::CmId::own_context`]); PDs and CQs made on a listed context hold the
/// list so the context outlives them.
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
            keep: Keep::List(Arc::clone(self)),
            lib: self.lib,
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

/// What keeps a [`Context`] open.
#[derive(Clone)]
enum Keep {
    /// A device list (`rdma_get_devices` counts a hold on each listed context until
    /// `rdma_free_devices`). Only held, never read.
    List(#[allow(dead_code)] Arc<Devices>),
    /// A cm_id bound to the device: librdmacm holds the id's device (and so its `verbs`
    /// context) open until the id is destroyed (cma.c: `ucma_get_device` takes a reference that
    /// `rdma_destroy_id` puts back), whether or not a later device list still shows that context.
    Id(Arc<IdCore>),
}

/// One opened device (`struct ibv_context`), borrowed from a [`Devices`] list or from a cm_id
/// bound to it ([`super::CmId::own_context`]), which stays alive as long as any clone does.
#[derive(Clone)]
pub struct Context {
    raw: NonNull<ibv_context>,
    keep: Keep,
    lib: &'static Lib,
}

// SAFETY: a context is a thread-safe libibverbs object; what `keep` holds keeps it open, and
// is itself only dropped through the Arc (see IdCore's Send/Sync).
unsafe impl Send for Context {}
// SAFETY: see Send.
unsafe impl Sync for Context {}

impl Context {
    /// The context `raw` (a live id's `verbs`), kept open by the id itself.
    pub(crate) fn held_by_id(
        raw: NonNull<ibv_context>,
        id: Arc<IdCore>,
        lib: &'static Lib,
    ) -> Self {
        Context {
            raw,
            keep: Keep::Id(id),
            lib,
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_context {
        self.raw.as_ptr()
    }

    pub(crate) fn lib(&self) -> &'static Lib {
        self.lib
    }

    /// The cm_id keeping this context open, when a cm_id does (not a device list).
    pub fn held_by(&self) -> Option<IdHandle> {
        match &self.keep {
            Keep::Id(core) => Some(core.handle()),
            Keep::List(_) => None,
        }
    }

    /// libibverbs' device of this context (`ibv_context.device`). libibverbs keeps one
    /// `ibv_device` per kernel device for as long as that device exists, and every context opened
    /// on it holds it (`verbs_init_context`), so while this context is open the pointer names
    /// this device and no other.
    fn device(&self) -> *mut ibv_device {
        // SAFETY: raw is an open context (kept open by self.keep); libibverbs sets its device
        // pointer when opening it and never changes it.
        unsafe { (*self.raw.as_ptr()).device }
    }

    /// The device's name (`rxe0`, `mlx5_0`).
    pub fn name(&self) -> String {
        // SAFETY: the context's device, alive while the context is (see `device`).
        let name = unsafe { (self.lib.ibv_get_device_name)(self.device()) };
        if name.is_null() {
            return "?".into();
        }
        // SAFETY: a non-NULL device name is a NUL-terminated string owned by the device.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    }

    /// The device's node GUID (`ibv_get_device_guid`, in host byte order; 0 when unknown).
    pub fn guid(&self) -> u64 {
        // SAFETY: the context's device, alive while the context is (see `device`).
        u64::from_be(unsafe { (self.lib.ibv_get_device_guid)(self.device()) })
    }

    /// Whether `other` is on the same RDMA device, maybe through another context: the same
    /// context; else the same libibverbs device; else the same name and (known) node GUID. Two
    /// contexts of one device exist when librdmacm, refreshing its device list, took a device
    /// that is still there for gone and opened it again (rdma-core before v52 can do this when
    /// another device is added, see [`super::CmId::own_context`]): ids made
    /// before carry the old context, later ones and later lists the new one. The name and GUID
    /// also match a device libibverbs dropped and found again under the same name (it keys
    /// devices by uverbs name and kernel index).
    pub fn same_device(&self, other: &Context) -> bool {
        if self.raw == other.raw || self.device() == other.device() {
            return true;
        }
        let g = self.guid();
        g != 0 && g == other.guid() && self.name() == other.name()
    }
}

impl Devices {
    /// The context in this list for the same device as `ctx` ([`Context::same_device`]).
    pub fn same_device(self: &Arc<Self>, ctx: &Context) -> Option<Context> {
        if let Some(c) = self.find(ctx.as_ptr()) {
            return Some(c);
        }
        (0..self.len)
            .filter_map(|i| self.get(i))
            .find(|c| c.same_device(ctx))
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name())
            .field("held_by_id", &self.held_by().is_some())
            .finish()
    }
}
