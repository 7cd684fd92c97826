//! An NVMe SSD's Controller Memory Buffer registered with RDMA devices, for peer-to-peer data
//! (docs/p2p.md, "RDMA").
//!
//! At start-up, for every RDMA device that serves a namespace whose SSD has a CMB, the daemon
//! hands [`DevicePd::register_cmb`] a dma-buf of the CMB (exported by VFIO) and the CPU address
//! of its BAR mapping; the result is one memory region per device (`ibv_reg_dmabuf_mr`), on the
//! device's protection domain ([`DevicePd`]), shared by every reactor's queue pairs on that
//! device (librdmacm opens each device once per process, so every reactor's context is the same
//! one).
//! The MR is registered at the CPU address of the mapping (the `iova` argument): a CMB buffer's
//! SGE address is then its CPU address, like a host buffer's, and nothing guesses an address.
//!
//! Only a dma-buf can be registered: `ibv_reg_mr` of a BAR mmap, or of the kernel's
//! `p2pmem/allocate` mmap, is refused upstream (EFAULT: the RDMA core pins pages with
//! `pin_user_pages`, and BAR memory has no struct pages it can pin; the "RDMA/umem P2P" series
//! that would allow it is not upstream). Neither is tried. ODP registration of a BAR mmap
//! succeeds on rxe but every transfer then fails: a registration that succeeds is not proof of
//! P2P, so it is not tried either.
//!
//! Per I/O nothing is registered: [`CmbPool`] gives a reactor's RDMA device its share of the
//! CMB's buffers (already carrying the keys of that device's PD), and the poll group takes a
//! buffer from the pool of the domain the core chose for the command.

use super::verbs::{Access, Devices, Error, Mr, Pd};
use nvmfd_p2p::mem::{Domain, Keys, PdId, Region, Registrar, SharedPool};
use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

/// Why a CMB could not be registered with an RDMA device: a reason of the P2P decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegError {
    /// rdma-core is absent, or the device is not in librdmacm's list.
    NoDevice { device: String, detail: String },
    /// `ibv_alloc_pd` failed.
    Pd { device: String, detail: String },
    /// `ibv_reg_dmabuf_mr` answered `errno`.
    Refused { device: String, errno: i32 },
}

impl RegError {
    /// A short stable name, for logs, metrics and tests.
    pub fn code(&self) -> &'static str {
        match self {
            RegError::NoDevice { .. } => "rdma_device_missing",
            RegError::Pd { .. } => "rdma_pd_failed",
            RegError::Refused { errno, .. } => match *errno {
                libc::EOPNOTSUPP => "dmabuf_mr_unsupported",
                libc::EFAULT => "dmabuf_mr_efault",
                libc::EINVAL => "dmabuf_mr_invalid",
                libc::ENOSYS => "dmabuf_mr_no_library_support",
                _ => "dmabuf_mr_failed",
            },
        }
    }

    /// The RDMA device the reason is about.
    pub fn device(&self) -> &str {
        match self {
            RegError::NoDevice { device, .. }
            | RegError::Pd { device, .. }
            | RegError::Refused { device, .. } => device,
        }
    }
}

impl fmt::Display for RegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegError::NoDevice { device, detail } => {
                write!(f, "RDMA device {device}: not usable ({detail})")
            }
            RegError::Pd { device, detail } => {
                write!(f, "RDMA device {device}: no protection domain ({detail})")
            }
            RegError::Refused { device, errno } => {
                let e = std::io::Error::from_raw_os_error(*errno);
                let why = match *errno {
                    libc::EOPNOTSUPP => {
                        " (EOPNOTSUPP: the driver cannot import dma-bufs; software RDMA \
                         (rxe, siw) never can, nor a driver that only pins, such as efa: the \
                         VFIO exporter revokes, so the importer must be dynamic, as mlx5 is)"
                    }
                    libc::EFAULT => " (EFAULT: the device could not map the CMB)",
                    libc::EINVAL => {
                        " (EINVAL: the driver or the PCI topology refused the dma-buf \
                         attachment; see `nvmfd topology`)"
                    }
                    libc::ENOSYS => " (ENOSYS: libibverbs or the provider is too old)",
                    _ => "",
                };
                write!(
                    f,
                    "RDMA device {device}: ibv_reg_dmabuf_mr of the CMB refused: {e}{why}; \
                     ibv_reg_mr of a BAR mmap or of a p2pmem/allocate mapping is not \
                     registrable upstream (EFAULT) and is not tried"
                )
            }
        }
    }
}

impl std::error::Error for RegError {}

/// The protection domain of one RDMA device for peer-to-peer memory, made at start-up and shared
/// by every reactor's queue pairs on that device (a registration's keys are valid on its PD
/// only). Every CMB registered with the device is registered on this one PD.
#[derive(Clone)]
pub struct DevicePd {
    device: String,
    pd: Arc<Pd>,
    pd_id: PdId,
}

impl fmt::Debug for DevicePd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevicePd")
            .field("device", &self.device)
            .field("pd", &self.pd_id)
            .finish()
    }
}

impl DevicePd {
    /// Opens a PD on RDMA device `device` (its name: `mlx5_0`, `rxe0`).
    pub fn open(devices: &Arc<Devices>, device: &str) -> Result<DevicePd, RegError> {
        let ctx = (0..devices.len())
            .filter_map(|i| devices.get(i))
            .find(|c| c.name() == device)
            .ok_or_else(|| RegError::NoDevice {
                device: device.to_string(),
                detail: "not among librdmacm's devices".into(),
            })?;
        let pd = Pd::new(&ctx).map_err(|e| RegError::Pd {
            device: device.to_string(),
            detail: e.to_string(),
        })?;
        Ok(DevicePd {
            device: device.to_string(),
            pd,
            pd_id: super::group::next_pd_id(),
        })
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn pd_id(&self) -> PdId {
        self.pd_id
    }

    /// Register `len` bytes of dma-buf `fd` (a CMB exported by VFIO, from its offset 0) on this
    /// PD, at address `cpu_addr` (the CMB's BAR mapping), for local access only (as the host
    /// pool: the target issues the RDMA READs and WRITEs, no host gets its rkey). Control
    /// plane, at start-up.
    pub fn register_cmb(
        &self,
        fd: BorrowedFd<'_>,
        len: usize,
        cpu_addr: u64,
        domain: Domain,
    ) -> Result<CmbMr, RegError> {
        let device = || self.device.clone();
        let mr = Mr::register_dmabuf(&self.pd, fd, 0, len, cpu_addr, Access::LOCAL_WRITE).map_err(
            |e| match e {
                Error::Os { source, .. } => RegError::Refused {
                    device: device(),
                    errno: source.raw_os_error().unwrap_or(0),
                },
                e => RegError::NoDevice {
                    device: device(),
                    detail: e.to_string(),
                },
            },
        )?;
        Ok(CmbMr {
            pd: self.clone(),
            domain,
            keys: Keys {
                lkey: mr.lkey(),
                rkey: mr.rkey(),
            },
            len,
            mr: Mutex::new(Some(mr)),
        })
    }
}

/// The CMB of one SSD registered with one RDMA device's [`DevicePd`], until the CMB's pool takes
/// the MR (see [`Registrar`]).
pub struct CmbMr {
    pd: DevicePd,
    domain: Domain,
    keys: Keys,
    len: usize,
    mr: Mutex<Option<Mr>>,
}

impl fmt::Debug for CmbMr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmbMr")
            .field("device", &self.pd.device)
            .field("domain", &self.domain)
            .field("pd", &self.pd.pd_id)
            .field("lkey", &self.keys.lkey)
            .field("rkey", &self.keys.rkey)
            .field("len", &self.len)
            .finish()
    }
}

impl CmbMr {
    pub fn device(&self) -> &str {
        &self.pd.device
    }
    pub fn keys(&self) -> Keys {
        self.keys
    }
    pub fn domain(&self) -> Domain {
        self.domain
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What a poll group needs once the CMB's pool is made with this registration.
    pub fn pool(&self, pool: Arc<SharedPool>) -> CmbPool {
        CmbPool {
            device: self.pd.device.clone(),
            pd: Some(Arc::clone(&self.pd.pd)),
            pd_id: self.pd.pd_id,
            pool,
        }
    }
}

impl Registrar for CmbMr {
    /// Gives the CMB's region this device's keys (and the MR, which the region keeps until it
    /// is unmapped); regions of other domains are not this registration's business.
    fn register(&self, region: &mut Region) {
        if region.domain() != self.domain {
            return;
        }
        let mr = self.mr.lock().unwrap_or_else(|p| p.into_inner()).take();
        let handle = mr.map(|m| Box::new(m) as nvmfd_p2p::mem::Handle);
        region.register(self.pd.pd_id, self.keys, handle);
    }
}

/// One SSD's CMB as an RDMA device sees it: its pool (whose region carries the keys of `pd`)
/// and the PD the device's queue pairs must be made on for those keys to be valid. Given to
/// every reactor's poll group ([`super::RdmaGroupConfig::cmb`]).
#[derive(Clone)]
pub struct CmbPool {
    pub(crate) device: String,
    /// `None` only in tests, where a fake registration stands in for a real MR.
    pub(crate) pd: Option<Arc<Pd>>,
    pub(crate) pd_id: PdId,
    pub(crate) pool: Arc<SharedPool>,
}

impl CmbPool {
    pub fn device(&self) -> &str {
        &self.device
    }
    pub fn domain(&self) -> Domain {
        self.pool.domain()
    }
    /// The CMB's pool (registered with this device).
    pub fn shared_pool(&self) -> &Arc<SharedPool> {
        &self.pool
    }
    /// A pool registered by hand (no verbs): for tests of the buffer and key choice, since
    /// soft-RoCE refuses dma-buf MRs and no real registration can be made on the rig.
    #[cfg(test)]
    pub(crate) fn fake(device: &str, pd_id: PdId, pool: Arc<SharedPool>) -> CmbPool {
        CmbPool {
            device: device.to_string(),
            pd: None,
            pd_id,
            pool,
        }
    }
}

impl fmt::Debug for CmbPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmbPool")
            .field("device", &self.device)
            .field("pd", &self.pd_id)
            .field("pool", &self.pool)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_device_the_errno_and_what_is_not_tried() {
        let e = RegError::Refused {
            device: "rxe0".into(),
            errno: libc::EOPNOTSUPP,
        };
        assert_eq!(e.code(), "dmabuf_mr_unsupported");
        assert_eq!(e.device(), "rxe0");
        let s = e.to_string();
        for want in [
            "rxe0",
            "ibv_reg_dmabuf_mr",
            "EOPNOTSUPP",
            "not tried",
            "p2pmem",
        ] {
            assert!(s.contains(want), "{want:?} missing from {s}");
        }
        let f = RegError::Refused {
            device: "mlx5_0".into(),
            errno: libc::EFAULT,
        };
        assert_eq!(f.code(), "dmabuf_mr_efault");
        assert!(f.to_string().contains("EFAULT"));
    }
}
