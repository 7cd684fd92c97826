//! A BAR range exported as a dma-buf (`VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_GET |
//! VFIO_DEVICE_FEATURE_DMA_BUF`, Linux ≥ 6.19, `CONFIG_VFIO_PCI_DMABUF`): what an RDMA device
//! imports with `ibv_reg_dmabuf_mr` to reach an SSD's CMB directly. [`DmaBuf`] owns the fd.
//!
//! Layout (`include/uapi/linux/vfio.h`, 6.19 and 7.2):
//! ```text
//! struct vfio_device_feature        { u32 argsz; u32 flags; u8 data[]; }
//! struct vfio_device_feature_dma_buf { u32 region_index, open_flags, flags, nr_ranges;
//!                                      struct vfio_region_dma_range { u64 offset, length; }
//!                                      dma_ranges[]; }
//! ```
//! The kernel (`drivers/vfio/pci/vfio_pci_dmabuf.c`) checks: `flags` 0, at least one range,
//! each range non-empty and page-aligned (EINVAL), inside the BAR (EINVAL), a BAR index below
//! the ROM region (ENODEV), a driver that can export (EOPNOTSUPP), a BAR the PCI P2PDMA core
//! accepts as a provider (EINVAL). A kernel without the feature answers ENOTTY. The exporter
//! revokes the mapping (memory disabled, reset, close) instead of pinning it: an importer must
//! attach dynamically (mlx5 does; a pinning importer such as efa is refused). The fd cannot be
//! mmapped: the CPU keeps reaching the CMB through the BAR mapping.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::vfio::Device;

/// `VFIO_DEVICE_FEATURE` = `_IO(VFIO_TYPE, VFIO_BASE + 17)`.
const VFIO_DEVICE_FEATURE: u64 = ((b';' as u64) << 8) | (100 + 17);
const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
/// The feature number (`VFIO_DEVICE_FEATURE_DMA_BUF`).
pub const VFIO_DEVICE_FEATURE_DMA_BUF: u32 = 11;

/// The ioctl argument with room for one range: `vfio_device_feature` followed by
/// `vfio_device_feature_dma_buf` and its one `vfio_region_dma_range`.
#[repr(C)]
#[derive(Debug, Default)]
struct FeatureDmaBuf {
    argsz: u32,
    flags: u32,
    region_index: u32,
    open_flags: u32,
    dmabuf_flags: u32,
    nr_ranges: u32,
    offset: u64,
    length: u64,
}
// 8 (feature header) + 16 (dma_buf header) + 16 (one range), no padding: the range starts at
// byte 24, 8-aligned, where the C flexible array member puts it.
const _: () = assert!(std::mem::size_of::<FeatureDmaBuf>() == 40);
const _: () = assert!(std::mem::offset_of!(FeatureDmaBuf, offset) == 24);

/// Why a BAR range could not be exported: each is one reason of the P2P decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportError {
    /// The range is not page aligned (the kernel would refuse it with EINVAL).
    Unaligned { offset: u64, len: u64, page: u64 },
    /// ENOTTY: the kernel has no VFIO dma-buf export (older than 6.19, or built without
    /// `CONFIG_VFIO_PCI_DMABUF`).
    KernelTooOld { release: String },
    /// EOPNOTSUPP: the device's VFIO driver cannot export dma-bufs.
    DriverCannot,
    /// EINVAL from the kernel for an aligned range inside the BAR: the PCI P2PDMA core did not
    /// accept the BAR as a provider (`CONFIG_PCI_P2PDMA` off, or a BAR it refuses).
    Refused,
    /// ENODEV: no such BAR, or the device is going away.
    NoDevice,
    /// Anything else (`errno`).
    Os(i32),
}

impl ExportError {
    /// A short stable name, for logs, metrics and tests.
    pub fn code(&self) -> &'static str {
        match self {
            ExportError::Unaligned { .. } => "dmabuf_unaligned",
            ExportError::KernelTooOld { .. } => "dmabuf_kernel_too_old",
            ExportError::DriverCannot => "dmabuf_driver_cannot_export",
            ExportError::Refused => "dmabuf_refused",
            ExportError::NoDevice => "dmabuf_no_device",
            ExportError::Os(_) => "dmabuf_failed",
        }
    }

    /// The error the kernel answered `errno` means, for a range already checked to be aligned.
    pub fn from_errno(errno: i32) -> ExportError {
        match errno {
            libc::ENOTTY => ExportError::KernelTooOld {
                release: kernel_release(),
            },
            libc::EOPNOTSUPP => ExportError::DriverCannot,
            libc::EINVAL => ExportError::Refused,
            libc::ENODEV => ExportError::NoDevice,
            e => ExportError::Os(e),
        }
    }
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Unaligned { offset, len, page } => write!(
                f,
                "the CMB range {offset:#x}+{len:#x} is not aligned to the {page}-byte page \
                 (VFIO dma-buf ranges must be)"
            ),
            ExportError::KernelTooOld { release } => write!(
                f,
                "VFIO dma-buf export is not available on this kernel ({release}): \
                 VFIO_DEVICE_FEATURE_DMA_BUF answered ENOTTY; it needs Linux 6.19 or newer \
                 built with CONFIG_VFIO_PCI_DMABUF"
            ),
            ExportError::DriverCannot => write!(
                f,
                "the device's VFIO driver cannot export dma-bufs (EOPNOTSUPP)"
            ),
            ExportError::Refused => write!(
                f,
                "the kernel refused to export the CMB as a dma-buf (EINVAL): the PCI P2PDMA \
                 core does not accept this BAR (kernel built without CONFIG_PCI_P2PDMA?)"
            ),
            ExportError::NoDevice => write!(
                f,
                "VFIO dma-buf export: no such BAR, or the device is going away (ENODEV)"
            ),
            ExportError::Os(e) => write!(
                f,
                "VFIO dma-buf export failed: {}",
                std::io::Error::from_raw_os_error(*e)
            ),
        }
    }
}

impl std::error::Error for ExportError {}

/// `uname -r`, for the reason a kernel is too old.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown release".into())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// Checks a range before asking the kernel (it wants both ends on page boundaries).
pub fn check_range(offset: u64, len: u64, page: u64) -> Result<(), ExportError> {
    if len == 0 || !offset.is_multiple_of(page) || !len.is_multiple_of(page) {
        return Err(ExportError::Unaligned { offset, len, page });
    }
    Ok(())
}

/// A dma-buf over `len` bytes at `offset` of BAR `bar` of a VFIO device. Closing it (drop)
/// ends the export once every importer has let go (an RDMA MR holds its own reference).
#[derive(Debug)]
pub struct DmaBuf {
    fd: OwnedFd,
    bar: u32,
    offset: u64,
    len: u64,
}

impl DmaBuf {
    /// Export `len` bytes at `offset` of BAR `bar` of `dev` (page-aligned), read-write,
    /// close-on-exec.
    pub fn export(dev: &Device, bar: u32, offset: u64, len: u64) -> Result<DmaBuf, ExportError> {
        check_range(offset, len, page_size())?;
        let mut arg = FeatureDmaBuf {
            argsz: std::mem::size_of::<FeatureDmaBuf>() as u32,
            flags: VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
            region_index: bar,
            open_flags: (libc::O_RDWR | libc::O_CLOEXEC) as u32,
            dmabuf_flags: 0,
            nr_ranges: 1,
            offset,
            length: len,
        };
        let r = dev.with_fd(|fd| {
            // SAFETY: `arg` is a vfio_device_feature header followed by a
            // vfio_device_feature_dma_buf with exactly nr_ranges = 1 range, argsz covering all
            // of it; it outlives the call and the kernel only reads it. The device fd is ours
            // and stays open for the call.
            let r = unsafe { libc::ioctl(fd, VFIO_DEVICE_FEATURE as _, &mut arg) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(r)
        });
        let r = match r {
            Ok(r) => r,
            // The device was released (handed back to the kernel): as ENODEV, "going away".
            Err(e) if e.raw_os_error().is_none() => return Err(ExportError::NoDevice),
            Err(e) => return Err(ExportError::from_errno(e.raw_os_error().unwrap_or(0))),
        };
        // SAFETY: on success the ioctl returns a new dma-buf fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(r) };
        Ok(DmaBuf {
            fd,
            bar,
            offset,
            len,
        })
    }

    pub fn bar(&self) -> u32 {
        self.bar
    }
    /// Offset of the exported range in its BAR.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsFd for DmaBuf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_and_flags_are_the_uapi_ones() {
        // _IO(';', 117): no size or direction bits.
        assert_eq!(VFIO_DEVICE_FEATURE, 0x3b75);
        assert_eq!(
            VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
            0x1000b
        );
    }

    #[test]
    fn unaligned_or_empty_ranges_are_refused_before_the_kernel_sees_them() {
        assert!(check_range(0, 64 << 20, 4096).is_ok());
        assert!(check_range(8192, 4096, 4096).is_ok());
        for (o, l) in [(1, 4096), (0, 4095), (0, 0), (4096, 6000)] {
            let e = check_range(o, l, 4096).unwrap_err();
            assert_eq!(e.code(), "dmabuf_unaligned", "{o:#x}+{l:#x}");
            assert!(e.to_string().contains("not aligned"), "{e}");
        }
    }

    #[test]
    fn errnos_become_named_reasons() {
        let old = ExportError::from_errno(libc::ENOTTY);
        assert_eq!(old.code(), "dmabuf_kernel_too_old");
        assert!(old.to_string().contains("6.19"), "{old}");
        assert!(old.to_string().contains("ENOTTY"), "{old}");
        assert_eq!(
            ExportError::from_errno(libc::EOPNOTSUPP),
            ExportError::DriverCannot
        );
        assert_eq!(ExportError::from_errno(libc::EINVAL), ExportError::Refused);
        assert_eq!(ExportError::from_errno(libc::ENODEV), ExportError::NoDevice);
        let other = ExportError::from_errno(libc::ENOMEM);
        assert_eq!(other, ExportError::Os(libc::ENOMEM));
        assert_eq!(other.code(), "dmabuf_failed");
    }
}
