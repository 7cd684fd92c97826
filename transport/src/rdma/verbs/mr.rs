//! Memory regions: host memory ([`Mr::register`]), raw ranges, and dma-bufs.

use super::mem::HostMem;
use super::pd::Pd;
use super::sys::{self, ibv_mr};
use super::wr::Sge;
use super::{last_os, Error, Result};
use std::ffi::c_int;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;

/// `ibv_access_flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(c_int);

impl Access {
    pub const LOCAL_WRITE: Access = Access(sys::IBV_ACCESS_LOCAL_WRITE);
    pub const REMOTE_WRITE: Access = Access(sys::IBV_ACCESS_REMOTE_WRITE);
    pub const REMOTE_READ: Access = Access(sys::IBV_ACCESS_REMOTE_READ);
    /// Local write, remote read and remote write: what a target's data buffers need.
    pub const ALL: Access = Access(
        sys::IBV_ACCESS_LOCAL_WRITE | sys::IBV_ACCESS_REMOTE_READ | sys::IBV_ACCESS_REMOTE_WRITE,
    );
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, o: Access) -> Access {
        Access(self.0 | o.0)
    }
}

/// A registered memory region (`ibv_reg_mr` / `ibv_reg_dmabuf_mr`, `ibv_dereg_mr`).
pub struct Mr {
    raw: NonNull<ibv_mr>,
    pd: Arc<Pd>,
    /// The host memory it covers, when it owns it (deregistered before it is unmapped).
    mem: Option<HostMem>,
}

// SAFETY: an MR is a thread-safe libibverbs object; Mr never mutates it after registration.
unsafe impl Send for Mr {}
// SAFETY: see Send; CPU access goes through HostMem, which is Sync.
unsafe impl Sync for Mr {}

impl Mr {
    /// Registers `mem` (owned from now on).
    pub fn register(pd: &Arc<Pd>, mem: HostMem, access: Access) -> Result<Mr> {
        // SAFETY: mem is a live mapping of mem.len() bytes, kept alive in the returned Mr until
        // after ibv_dereg_mr.
        let mut mr = unsafe { Self::register_raw(pd, mem.as_ptr(), mem.len(), access)? };
        mr.mem = Some(mem);
        Ok(mr)
    }

    /// Registers `len` bytes at `addr`, memory the caller owns.
    ///
    /// # Safety
    /// The range must stay mapped until this Mr is dropped, and the caller must not hand out
    /// Rust references over it while a device may write it.
    pub unsafe fn register_raw(
        pd: &Arc<Pd>,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Mr> {
        let lib = pd.context().lib();
        // SAFETY: pd is a live PD; the caller promises addr/len stay mapped for the MR's life.
        let raw = unsafe { (lib.ibv_reg_mr)(pd.as_ptr(), addr.cast(), len, access.0) };
        let raw = NonNull::new(raw).ok_or_else(|| last_os("ibv_reg_mr"))?;
        Ok(Mr {
            raw,
            pd: Arc::clone(pd),
            mem: None,
        })
    }

    /// Registers `len` bytes at `offset` of a dma-buf (e.g. a VFIO CMB slice), reached by the
    /// device at `iova` (the address remote peers use with the rkey). The kernel holds its own
    /// reference to the dma-buf: `fd` may be closed afterwards. The CPU cannot reach this
    /// memory through the Mr.
    pub fn register_dmabuf(
        pd: &Arc<Pd>,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        iova: u64,
        access: Access,
    ) -> Result<Mr> {
        let lib = pd.context().lib();
        // SAFETY: pd is a live PD and fd an open descriptor for the call's duration; the
        // kernel validates that it is a dma-buf covering offset+len.
        let raw = unsafe {
            (lib.ibv_reg_dmabuf_mr)(pd.as_ptr(), offset, len, iova, fd.as_raw_fd(), access.0)
        };
        let raw = NonNull::new(raw).ok_or_else(|| last_os("ibv_reg_dmabuf_mr"))?;
        Ok(Mr {
            raw,
            pd: Arc::clone(pd),
            mem: None,
        })
    }

    fn get(&self) -> &ibv_mr {
        // SAFETY: raw is a registered MR until drop; libibverbs never changes these fields.
        unsafe { self.raw.as_ref() }
    }

    pub fn lkey(&self) -> u32 {
        self.get().lkey
    }

    pub fn rkey(&self) -> u32 {
        self.get().rkey
    }

    /// The address the region was registered at (the iova for a dma-buf).
    pub fn addr(&self) -> u64 {
        self.get().addr as u64
    }

    pub fn len(&self) -> usize {
        self.get().length
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// The host memory this Mr owns, if it was made by [`Mr::register`].
    pub fn mem(&self) -> Option<&HostMem> {
        self.mem.as_ref()
    }

    /// An SGE for `len` bytes at `offset`, checked to lie inside the region.
    pub fn sge(&self, offset: usize, len: u32) -> Result<Sge> {
        match offset.checked_add(len as usize) {
            Some(end) if end <= self.len() => {
                Ok(Sge::new(self.addr() + offset as u64, len, self.lkey()))
            }
            _ => Err(Error::Invalid("SGE outside its memory region")),
        }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: raw came from ibv_reg_mr/ibv_reg_dmabuf_mr and is deregistered once; the
        // memory (self.mem) is unmapped only after, when the field drops.
        let rc = unsafe { (self.pd.context().lib().ibv_dereg_mr)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_dereg_mr failed");
        }
    }
}
