//! VFIO container, group and device (Linux `include/uapi/linux/vfio.h`, type1 IOMMU). Each type
//! owns one file descriptor and closes it on drop. The ioctl structs are declared here with size
//! assertions instead of pulling in bindings for the handful of them the driver uses.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

const VFIO_TYPE: u64 = b';' as u64;
const fn io(nr: u64) -> u64 {
    (VFIO_TYPE << 8) | (100 + nr)
}
const VFIO_GET_API_VERSION: u64 = io(0);
const VFIO_CHECK_EXTENSION: u64 = io(1);
const VFIO_SET_IOMMU: u64 = io(2);
const VFIO_GROUP_GET_STATUS: u64 = io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = io(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = io(6);
const VFIO_DEVICE_GET_INFO: u64 = io(7);
const VFIO_DEVICE_GET_REGION_INFO: u64 = io(8);
const VFIO_DEVICE_RESET: u64 = io(11);
const VFIO_IOMMU_MAP_DMA: u64 = io(13);
const VFIO_IOMMU_UNMAP_DMA: u64 = io(14);

const VFIO_API_VERSION: i32 = 0;
pub const VFIO_TYPE1_IOMMU: u64 = 1;
pub const VFIO_TYPE1V2_IOMMU: u64 = 3;
pub const VFIO_NOIOMMU_IOMMU: u64 = 8;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 4;
/// Region index of PCI config space (VFIO_PCI_CONFIG_REGION_INDEX).
pub const CONFIG_REGION: u32 = 7;
/// The device supports VFIO_DEVICE_RESET (`vfio_device_info.flags`).
const VFIO_DEVICE_FLAGS_RESET: u32 = 1;
/// PCI Command register (PCI Local Bus 3.0, 6.2.2): offset in config space, and its Bus Master
/// Enable bit (clear: the function issues no memory or I/O requests, so no DMA).
pub const PCI_COMMAND: u64 = 4;
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;

#[repr(C)]
#[derive(Default)]
struct DeviceInfo {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
    cap_offset: u32,
    pad: u32,
}
const _: () = assert!(std::mem::size_of::<DeviceInfo>() == 24);

#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}
const _: () = assert!(std::mem::size_of::<GroupStatus>() == 8);

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}
const _: () = assert!(std::mem::size_of::<DmaMap>() == 32);

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}
const _: () = assert!(std::mem::size_of::<DmaUnmap>() == 24);

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite and mmap).
    pub offset: u64,
}
const _: () = assert!(std::mem::size_of::<RegionInfo>() == 32);

fn last_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A VFIO container with the type1 IOMMU set. IOVAs come from the process's
/// [`IovaSpace`](nvmfd_p2p::mem::IovaSpace) (one space: the driver puts every controller in one
/// container, so a host buffer has one IOVA for all of them), starting at 4 GiB, clear of the
/// x86 MSI window and far below the 39-bit width of QEMU's intel-iommu.
#[derive(Debug)]
pub struct Container {
    file: File,
}

impl Container {
    pub fn open() -> io::Result<Container> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vfio/vfio")
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "/dev/vfio/vfio: {e} (load the vfio and vfio_iommu_type1 modules: \
                         modprobe vfio-pci)"
                    ),
                )
            })?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument; the fd is a VFIO container we own.
        let v = unsafe { libc::ioctl(file.as_raw_fd(), VFIO_GET_API_VERSION as _) };
        if v != VFIO_API_VERSION {
            return Err(io::Error::other(format!(
                "VFIO API version {v}, this driver speaks {VFIO_API_VERSION}"
            )));
        }
        Ok(Container { file })
    }

    pub fn has_extension(&self, ext: u64) -> bool {
        // SAFETY: VFIO_CHECK_EXTENSION takes an integer by value and returns 0 or 1.
        unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_CHECK_EXTENSION as _, ext) > 0 }
    }

    /// Select the IOMMU model (after at least one group is attached).
    pub fn set_iommu(&self, model: u64) -> io::Result<()> {
        // SAFETY: VFIO_SET_IOMMU takes the model by value.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_SET_IOMMU as _, model) };
        if r < 0 {
            let e = io::Error::last_os_error();
            let hint = if e.raw_os_error() == Some(libc::EPERM) {
                " (no interrupt remapping: if you accept that risk, \
                 echo 1 > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts)"
            } else {
                ""
            };
            return Err(io::Error::new(
                e.kind(),
                format!("VFIO_SET_IOMMU({model}): {e}{hint}"),
            ));
        }
        Ok(())
    }

    /// Reserve `len` bytes of IOVA space (page aligned; never reused while the container lives).
    pub fn alloc_iova(&self, len: u64) -> u64 {
        nvmfd_p2p::mem::IovaSpace::host().alloc(len)
    }

    /// Map `size` bytes at `vaddr` to `iova` for device reads and writes. The kernel pins the
    /// pages; the caller keeps the memory mapped until [`Container::unmap_dma`].
    pub fn map_dma(&self, vaddr: u64, iova: u64, size: u64) -> io::Result<()> {
        let m = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        // SAFETY: `m` is a properly sized vfio_iommu_type1_dma_map that outlives the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_IOMMU_MAP_DMA as _, &m) };
        if r < 0 {
            let e = io::Error::last_os_error();
            let hint = if e.raw_os_error() == Some(libc::ENOMEM) {
                " (locked-memory limit too low? raise it with `ulimit -l` or LimitMEMLOCK=)"
            } else {
                ""
            };
            return Err(io::Error::new(
                e.kind(),
                format!("VFIO_IOMMU_MAP_DMA iova {iova:#x} size {size:#x}: {e}{hint}"),
            ));
        }
        Ok(())
    }

    pub fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()> {
        let m = DmaUnmap {
            argsz: std::mem::size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size,
        };
        // SAFETY: `m` is a properly sized vfio_iommu_type1_dma_unmap that outlives the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA as _, &m) };
        if r < 0 {
            return Err(last_err("VFIO_IOMMU_UNMAP_DMA"));
        }
        Ok(())
    }
}

impl nvmfd_p2p::mem::DmaMapper for Container {
    fn map(&self, vaddr: usize, iova: u64, len: usize) -> io::Result<()> {
        self.map_dma(vaddr as u64, iova, len as u64)
    }
    fn unmap(&self, iova: u64, len: usize) -> io::Result<()> {
        self.unmap_dma(iova, len as u64)
    }
}

/// A VFIO group attached to a container.
#[derive(Debug)]
pub struct Group {
    file: File,
}

impl Group {
    /// Open `/dev/vfio/<id>` and check that it is viable (every device in it bound to vfio-pci
    /// or a harmless driver). `describe` explains a non-viable group (which devices, which
    /// drivers).
    pub fn open(id: u32, describe: impl FnOnce() -> String) -> io::Result<Group> {
        let path = format!("/dev/vfio/{id}");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{path}: {e} (is the device bound to vfio-pci? `nvmfd setup --pci BDF`; \
                         another process may hold the group)"
                    ),
                )
            })?;
        let mut st = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: `st` is a properly sized vfio_group_status the kernel fills in.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), VFIO_GROUP_GET_STATUS as _, &mut st) };
        if r < 0 {
            return Err(last_err("VFIO_GROUP_GET_STATUS"));
        }
        if st.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other(format!(
                "IOMMU group {id} is not viable: {}; bind every device of the group to vfio-pci \
                 (`nvmfd setup --pci BDF` for each) or move the SSD to a slot with its own group",
                describe()
            )));
        }
        Ok(Group { file })
    }

    pub fn set_container(&self, c: &Container) -> io::Result<()> {
        let fd: libc::c_int = c.file.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER takes a pointer to the container fd.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_GROUP_SET_CONTAINER as _, &fd) };
        if r < 0 {
            return Err(last_err("VFIO_GROUP_SET_CONTAINER"));
        }
        Ok(())
    }

    pub fn device(&self, bdf: &str) -> io::Result<Device> {
        let name = CString::new(bdf).map_err(|_| io::Error::other("BDF contains a NUL byte"))?;
        // SAFETY: the argument is a NUL-terminated string that outlives the call.
        let fd = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VFIO_GROUP_GET_DEVICE_FD as _,
                name.as_ptr(),
            )
        };
        if fd < 0 {
            return Err(last_err(&format!("VFIO_GROUP_GET_DEVICE_FD {bdf}")));
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Device { file })
    }
}

/// A VFIO device fd: regions (BARs, config space), reset.
#[derive(Debug)]
pub struct Device {
    file: File,
}

impl Device {
    pub fn region_info(&self, index: u32) -> io::Result<RegionInfo> {
        let mut ri = RegionInfo {
            argsz: std::mem::size_of::<RegionInfo>() as u32,
            index,
            ..RegionInfo::default()
        };
        // SAFETY: `ri` is a properly sized vfio_region_info the kernel fills in.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VFIO_DEVICE_GET_REGION_INFO as _,
                &mut ri,
            )
        };
        if r < 0 {
            return Err(last_err(&format!("VFIO_DEVICE_GET_REGION_INFO {index}")));
        }
        Ok(ri)
    }

    /// `vfio_device_info.flags` (VFIO_DEVICE_GET_INFO).
    fn flags(&self) -> io::Result<u32> {
        let mut di = DeviceInfo {
            argsz: std::mem::size_of::<DeviceInfo>() as u32,
            ..DeviceInfo::default()
        };
        // SAFETY: `di` is a properly sized vfio_device_info the kernel fills in (it writes at
        // most `argsz` bytes); it outlives the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_DEVICE_GET_INFO as _, &mut di) };
        if r < 0 {
            return Err(last_err("VFIO_DEVICE_GET_INFO"));
        }
        Ok(di.flags)
    }

    /// Whether the kernel can reset this device (VFIO_DEVICE_FLAGS_RESET: a function-level,
    /// slot or bus reset vfio-pci found at probe).
    pub fn can_reset(&self) -> bool {
        self.flags().is_ok_and(|f| f & VFIO_DEVICE_FLAGS_RESET != 0)
    }

    /// The PCI Command register, read through the config region.
    pub fn pci_command(&self) -> io::Result<u16> {
        let cfg = self.region_info(CONFIG_REGION)?;
        let mut b = [0u8; 2];
        self.config_read(&cfg, PCI_COMMAND, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Clear Bus Master Enable (read-modify-write of the 16-bit Command register; the other bits
    /// are kept). The caller reads the register again to know whether the device took it.
    pub fn clear_bus_master(&self) -> io::Result<()> {
        let cfg = self.region_info(CONFIG_REGION)?;
        let mut b = [0u8; 2];
        self.config_read(&cfg, PCI_COMMAND, &mut b)?;
        let v = u16::from_le_bytes(b) & !PCI_COMMAND_MASTER;
        self.config_write(&cfg, PCI_COMMAND, &v.to_le_bytes())
    }

    /// Function-level reset where the device supports one; errors are informational.
    pub fn reset(&self) -> io::Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_DEVICE_RESET as _) };
        if r < 0 {
            return Err(last_err("VFIO_DEVICE_RESET"));
        }
        Ok(())
    }

    pub fn config_read(&self, cfg: &RegionInfo, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, cfg.offset + off)
    }

    pub fn config_write(&self, cfg: &RegionInfo, off: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, cfg.offset + off)
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}
