//! VFIO container, group and device (Linux `include/uapi/linux/vfio.h`, type1 IOMMU). Each type
//! owns one file descriptor and closes it on drop. The ioctl structs are declared here with size
//! assertions instead of pulling in bindings for the handful of them the driver uses.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

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
const VFIO_DEVICE_GET_IRQ_INFO: u64 = io(9);
const VFIO_DEVICE_SET_IRQS: u64 = io(10);
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
/// Memory Space Enable (the BARs answer) and Interrupt Disable (no INTx: the driver polls).
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
pub const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// IRQ index of the device request (VFIO_PCI_REQ_IRQ_INDEX): vfio-pci signals it when the
/// kernel wants the device back (hot-removal, unbind, sysfs `remove`) and waits until the
/// device fd is closed.
const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
const VFIO_IRQ_INFO_EVENTFD: u32 = 1;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

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

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(Default)]
struct IrqInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}
const _: () = assert!(std::mem::size_of::<IrqInfo>() == 16);

/// `struct vfio_irq_set` with one eventfd as its data.
#[repr(C)]
struct IrqSetOneFd {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    fd: i32,
}
const _: () = assert!(std::mem::size_of::<IrqSetOneFd>() == 24);

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
    /// Its last group left: the kernel dropped the IOMMU context with every mapping in it
    /// (VFIO releases a container's IOMMU driver when its last group detaches), so unmapping
    /// is a no-op from now on.
    gone: AtomicBool,
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
        Ok(Container {
            file,
            gone: AtomicBool::new(false),
        })
    }

    /// Record that the container's last group left (its mappings went with it).
    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
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
        if self.gone.load(Ordering::Acquire) {
            return Ok(());
        }
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
        Ok(Device {
            file: RwLock::new(Some(file)),
        })
    }
}

/// A VFIO device fd: regions (BARs, config space), reset, the device request IRQ. The fd can be
/// closed early ([`Device::release`], when the kernel asks for the device back); every method
/// after that fails with [`io::ErrorKind::NotConnected`]. The lock is only ever taken by control
/// threads (bring-up, reset, giving up, dma-buf export), never per I/O: it makes sure no ioctl
/// runs on a closed (and perhaps reused) fd number.
#[derive(Debug)]
pub struct Device {
    file: RwLock<Option<File>>,
}

impl Device {
    /// Run `f` on the open device file.
    pub fn with_file<T>(&self, f: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
        let g = self.file.read().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(file) => f(file),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "VFIO device released (the kernel asked for it back)",
            )),
        }
    }

    /// Run `f` with the open device fd (ioctl, mmap); the fd stays open until `f` returns.
    pub fn with_fd<T>(&self, f: impl FnOnce(RawFd) -> io::Result<T>) -> io::Result<T> {
        self.with_file(|file| f(file.as_raw_fd()))
    }

    /// Close the device fd now (waiting for any call running on it). The kernel's removal of
    /// the device, which waits for its last user, can then go on once nothing else holds the
    /// file (BAR mappings and dma-bufs do: they must be gone first). `false` if it was closed
    /// already.
    pub fn release(&self) -> bool {
        let mut g = self.file.write().unwrap_or_else(|p| p.into_inner());
        g.take().is_some()
    }

    pub fn region_info(&self, index: u32) -> io::Result<RegionInfo> {
        let mut ri = RegionInfo {
            argsz: std::mem::size_of::<RegionInfo>() as u32,
            index,
            ..RegionInfo::default()
        };
        self.with_fd(|fd| {
            // SAFETY: `ri` is a properly sized vfio_region_info the kernel fills in.
            let r = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_REGION_INFO as _, &mut ri) };
            if r < 0 {
                return Err(last_err(&format!("VFIO_DEVICE_GET_REGION_INFO {index}")));
            }
            Ok(())
        })?;
        Ok(ri)
    }

    /// `vfio_device_info.flags` (VFIO_DEVICE_GET_INFO).
    fn flags(&self) -> io::Result<u32> {
        let mut di = DeviceInfo {
            argsz: std::mem::size_of::<DeviceInfo>() as u32,
            ..DeviceInfo::default()
        };
        self.with_fd(|fd| {
            // SAFETY: `di` is a properly sized vfio_device_info the kernel fills in (it writes
            // at most `argsz` bytes); it outlives the call.
            let r = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_INFO as _, &mut di) };
            if r < 0 {
                return Err(last_err("VFIO_DEVICE_GET_INFO"));
            }
            Ok(())
        })?;
        Ok(di.flags)
    }

    /// Whether the kernel can reset this device (VFIO_DEVICE_FLAGS_RESET: a function-level,
    /// slot or bus reset vfio-pci found at probe).
    pub fn can_reset(&self) -> bool {
        self.flags().is_ok_and(|f| f & VFIO_DEVICE_FLAGS_RESET != 0)
    }

    /// Whether the device offers the request IRQ as an eventfd (VFIO_DEVICE_GET_IRQ_INFO on
    /// VFIO_PCI_REQ_IRQ_INDEX: one IRQ with VFIO_IRQ_INFO_EVENTFD). Not every kernel or VFIO
    /// driver has it.
    pub fn has_request_irq(&self) -> io::Result<bool> {
        let mut ii = IrqInfo {
            argsz: std::mem::size_of::<IrqInfo>() as u32,
            index: VFIO_PCI_REQ_IRQ_INDEX,
            ..IrqInfo::default()
        };
        self.with_fd(|fd| {
            // SAFETY: `ii` is a properly sized vfio_irq_info the kernel fills in; it outlives
            // the call.
            let r = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_IRQ_INFO as _, &mut ii) };
            if r < 0 {
                return Err(last_err("VFIO_DEVICE_GET_IRQ_INFO (request)"));
            }
            Ok(())
        })?;
        Ok(ii.count >= 1 && ii.flags & VFIO_IRQ_INFO_EVENTFD != 0)
    }

    /// Have the kernel signal `ev` when it wants the device back (VFIO_DEVICE_SET_IRQS,
    /// DATA_EVENTFD | ACTION_TRIGGER on the request index). vfio-pci signals it again every
    /// 10 s until the device fd is closed, and drops its reference to `ev` at that close.
    pub fn set_request_irq(&self, ev: &EventFd) -> io::Result<()> {
        let set = IrqSetOneFd {
            argsz: std::mem::size_of::<IrqSetOneFd>() as u32,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: VFIO_PCI_REQ_IRQ_INDEX,
            start: 0,
            count: 1,
            fd: ev.fd.as_raw_fd(),
        };
        self.with_fd(|fd| {
            // SAFETY: `set` is a vfio_irq_set whose data is one s32 eventfd (argsz covers it);
            // it outlives the call, and the eventfd is open (the kernel takes its own ref).
            let r = unsafe { libc::ioctl(fd, VFIO_DEVICE_SET_IRQS as _, &set) };
            if r < 0 {
                return Err(last_err("VFIO_DEVICE_SET_IRQS (request eventfd)"));
            }
            Ok(())
        })
    }

    /// The PCI Command register, read through the config region.
    pub fn pci_command(&self) -> io::Result<u16> {
        let cfg = self.region_info(CONFIG_REGION)?;
        let mut b = [0u8; 2];
        self.config_read(&cfg, PCI_COMMAND, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Write the PCI Command register.
    pub fn set_pci_command(&self, v: u16) -> io::Result<()> {
        let cfg = self.region_info(CONFIG_REGION)?;
        self.config_write(&cfg, PCI_COMMAND, &v.to_le_bytes())
    }

    /// Clear Bus Master Enable (read-modify-write of the 16-bit Command register; the other bits
    /// are kept). The caller reads the register again to know whether the device took it.
    pub fn clear_bus_master(&self) -> io::Result<()> {
        let v = self.pci_command()? & !PCI_COMMAND_MASTER;
        self.set_pci_command(v)
    }

    /// Function-level reset where the device supports one; errors are informational.
    pub fn reset(&self) -> io::Result<()> {
        self.with_fd(|fd| {
            // SAFETY: VFIO_DEVICE_RESET takes no argument.
            let r = unsafe { libc::ioctl(fd, VFIO_DEVICE_RESET as _) };
            if r < 0 {
                return Err(last_err("VFIO_DEVICE_RESET"));
            }
            Ok(())
        })
    }

    pub fn config_read(&self, cfg: &RegionInfo, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with_file(|f| f.read_exact_at(buf, cfg.offset + off))
    }

    pub fn config_write(&self, cfg: &RegionInfo, off: u64, buf: &[u8]) -> io::Result<()> {
        self.with_file(|f| f.write_all_at(buf, cfg.offset + off))
    }
}

/// An eventfd (the device request IRQ, and the wake-up that stops its watcher).
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd(2) with no pointer arguments; a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(last_err("eventfd"));
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Add one to the counter (wakes a [`wait_any`] on it).
    pub fn signal(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write from a live buffer to an eventfd we own.
        let r = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        if r != 8 {
            return Err(last_err("eventfd write"));
        }
        Ok(())
    }

    /// Read and reset the counter (0 when nothing was signalled: the fd is non-blocking).
    pub fn take(&self) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: an 8-byte read into a live buffer from an eventfd we own.
        let r = unsafe { libc::read(self.fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        if r == 8 {
            u64::from_ne_bytes(b)
        } else {
            0
        }
    }
}

/// Block until one of `evs` is signalled; its index. Retries on EINTR.
pub fn wait_any(evs: &[&EventFd]) -> io::Result<usize> {
    let mut pfds: Vec<libc::pollfd> = evs
        .iter()
        .map(|e| libc::pollfd {
            fd: e.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfds over fds we own.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::new(e.kind(), format!("poll: {e}")));
        }
        if let Some(i) = pfds.iter().position(|p| p.revents != 0) {
            return Ok(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn eventfd_wakes_the_waiter_with_its_index() {
        let a = Arc::new(EventFd::new().unwrap());
        let b = Arc::new(EventFd::new().unwrap());
        assert_eq!(a.take(), 0, "nothing signalled yet");
        let (a2, b2) = (a.clone(), b.clone());
        let t = std::thread::spawn(move || wait_any(&[&a2, &b2]).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "the waiter blocks until a signal");
        b.signal().unwrap();
        assert_eq!(t.join().unwrap(), 1);
        b.signal().unwrap();
        assert_eq!(b.take(), 2, "the counter adds signals up");
        assert_eq!(b.take(), 0, "and take resets it");
        a.signal().unwrap();
        assert_eq!(wait_any(&[&a, &b]).unwrap(), 0);
    }
}
