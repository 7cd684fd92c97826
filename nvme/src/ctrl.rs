//! Controller bring-up (NVMe Base 2.0, 3.5.1 "Memory-based Controller Initialization"), the
//! admin queue, Identify, I/O queue pairs, the CMB, and shutdown.

use std::io;
use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use nvmfd_p2p::mem::{Domain, IovaSpace, Region, Registrar, SharedPool};

use crate::bar::Bar;
use crate::cmd::{admin, feature, Cqe, Sqe, Status};
use crate::dma::DmaRegion;
use crate::prp::{self, ListSpace, Segment};
use crate::queue::{timeout_scan, CidTable, CqRing, Inflight, QueueMem, SqRing, TimeoutAction};
use crate::quiesce::{self, DmaStop};
use crate::regs::{cmbmsc, off, Cap, Cc, CmbLayout, Cmbloc, Cmbsz, Csts};
use crate::sysfs;
use crate::vfio::{self, Container, Device, EventFd, Group};

/// Memory page size the driver configures (CC.MPS = 0).
pub const PAGE: usize = 4096;
/// Admin queue depth.
const ADMIN_DEPTH: u16 = 32;
/// Highest number of I/O queue pairs the driver asks for (the BAR0 mapping covers their
/// doorbells).
pub const MAX_IO_QUEUES: u16 = 64;
/// I/O command time limit before an Abort (and twice that before the queue is failed).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Polls between health checks (CSTS, timeouts) while commands are in flight.
const HEALTH_EVERY: u32 = 4096;
/// Admin command time limit.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Driver errors that carry an NVMe status or say the device is unusable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{what}: NVMe status {status}")]
    Status { what: &'static str, status: Status },
    #[error("{what}: no completion within {ms} ms")]
    Timeout { what: &'static str, ms: u128 },
    #[error("controller {bdf} is gone: registers read all ones (surprise removal or link down)")]
    Removed { bdf: String },
    #[error("controller {bdf} reports a fatal status (CSTS.CFS): it needs a reset")]
    Fatal { bdf: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Identify Controller facts the driver uses.
#[derive(Debug, Clone)]
pub struct CtrlInfo {
    pub vid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Largest transfer in bytes (MDTS; 0 in the field = no limit, capped here by the PRP list
    /// room of one page: 2 MiB).
    pub max_transfer: usize,
    /// Optional NVM Command Support (ONCS).
    pub oncs: u16,
    /// Volatile Write Cache present.
    pub vwc: bool,
    /// Number of namespaces (NN).
    pub nn: u32,
    pub version: u32,
}

impl CtrlInfo {
    pub fn compare(&self) -> bool {
        self.oncs & 1 != 0
    }
    pub fn dsm(&self) -> bool {
        self.oncs & 1 << 2 != 0
    }
    pub fn write_zeroes(&self) -> bool {
        self.oncs & 1 << 3 != 0
    }
}

/// Identify Namespace facts.
#[derive(Debug, Clone, Copy)]
pub struct NsInfo {
    pub nsid: u32,
    /// Namespace size in logical blocks (NSZE).
    pub blocks: u64,
    pub block_size: u32,
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect()
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from(le32(b, o)) | u64::from(le32(b, o + 4)) << 32
}

/// Decode an Identify Controller page (NVMe Base 2.0, Figure 275).
pub fn parse_identify_ctrl(b: &[u8; 4096], cap: Cap) -> CtrlInfo {
    let mdts = b[77];
    let room = PAGE * (PAGE / 8);
    let max_transfer = if mdts == 0 {
        room
    } else {
        (cap.mps_min() << mdts.min(20)).min(room)
    };
    CtrlInfo {
        vid: le16(b, 0),
        serial: ascii(&b[4..24]),
        model: ascii(&b[24..64]),
        firmware: ascii(&b[64..72]),
        max_transfer,
        oncs: le16(b, 520),
        vwc: b[525] & 1 != 0,
        nn: le32(b, 516),
        version: le32(b, 80),
    }
}

/// Decode an Identify Namespace page (NVMe Base 2.0 NVM Command Set spec, Figure 97); `None`
/// for an inactive namespace (all zero).
pub fn parse_identify_ns(nsid: u32, b: &[u8; 4096]) -> Option<NsInfo> {
    let nsze = le64(b, 0);
    if nsze == 0 {
        return None;
    }
    // FLBAS: bits 3:0 plus bits 6:5 as the high bits of the format index.
    let flbas = b[26];
    let idx = usize::from(flbas & 0xf | (flbas >> 5 & 3) << 4);
    let lbaf = le32(b, 128 + 4 * idx.min(63));
    let lbads = (lbaf >> 16) & 0xff;
    if !(9..=16).contains(&lbads) {
        return None;
    }
    Some(NsInfo {
        nsid,
        blocks: nsze,
        block_size: 1 << lbads,
    })
}

/// Submission + completion entry memory of one queue pair.
struct Rings {
    sq: DmaRegion,
    cq: DmaRegion,
}

impl QueueMem for Rings {
    fn write_sqe(&mut self, idx: u16, sqe: &Sqe) {
        self.sq
            .write_64(usize::from(idx) * Sqe::SIZE, &sqe.to_bytes());
    }
    fn read_cqe(&self, idx: u16) -> Cqe {
        let off = usize::from(idx) * Cqe::SIZE;
        let c = Cqe::from_bytes(&self.cq.read_16(off));
        // The phase tag says the entry is complete; read it again after an acquire fence so
        // no field is older than the tag.
        fence(Ordering::Acquire);
        let again = Cqe::from_bytes(&self.cq.read_16(off));
        if again.phase() == c.phase() {
            again
        } else {
            c
        }
    }
}

struct AdminQueue {
    rings: Rings,
    sq: SqRing,
    cq: CqRing,
    next_cid: u16,
    sq_db: usize,
    cq_db: usize,
}

/// The CMB once enabled: its layout, the address the controller knows it by, and the memory
/// domain over its mapped BAR slice ([`Domain::Cmb`]). The domain's pool is the only way to the
/// CMB's bytes: every buffer it hands out knows its CPU address and the controller address PRPs
/// must use ([`IoBuf::device_addr`](nvmfd_p2p::mem::IoBuf::device_addr)).
///
/// The pool is made once, on first use: [`Cmb::make_pool`] lets the first user register the
/// CMB's region with more than the controller (an RDMA protection domain through a dma-buf of
/// the BAR range, [`Cmb::layout`] and [`Controller::vfio_device`] say where it is) before any
/// buffer exists; [`Cmb::pool`] makes it with the controller address alone.
pub struct Cmb {
    pub layout: CmbLayout,
    /// Controller address of the CMB's first byte (CMBMSC.CBA plus nothing: the driver puts
    /// CBA at the CMB's BAR bus address).
    pub ctrl_addr: u64,
    len: usize,
    /// CPU address of the CMB's mapping (what an RDMA dma-buf registration is made at, so a
    /// buffer's SGE address is its CPU address).
    cpu_addr: usize,
    domain: Domain,
    buf_size: usize,
    /// The region over the mapped BAR slice until the pool takes it.
    region: Mutex<Option<Region>>,
    pool: OnceLock<Arc<SharedPool>>,
    /// The BAR slice's mapping (also the region's owner): revoked when the device goes back to
    /// the kernel ([`Controller::release_to_kernel`]).
    bar: Arc<Bar>,
}

impl Cmb {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Device address of CMB byte `off`, for PRPs.
    pub fn addr(&self, off: usize) -> u64 {
        assert!(off <= self.len());
        self.ctrl_addr + off as u64
    }
    /// Whether the device address range `addr..addr + len` lies in the CMB.
    pub fn contains(&self, addr: u64, len: usize) -> bool {
        addr >= self.ctrl_addr
            && addr
                .checked_add(len as u64)
                .is_some_and(|e| e <= self.ctrl_addr + self.len as u64)
    }
    /// The CMB's memory domain: buffers of [`OpenOptions::cmb_buf_size`] bytes shared by every
    /// reactor (each takes a [`SharedPool::cache`]), made now if no one made it yet.
    pub fn pool(&self) -> &Arc<SharedPool> {
        match self.make_pool(self.buf_size, &[]) {
            Ok(p) | Err(MakePool::Made(p)) => p,
            Err(MakePool::Refused(e)) => panic!("CMB pool with checked parameters refused: {e}"),
        }
    }

    /// Make the CMB's pool with buffers of `buf_size` bytes, its region registered by
    /// `registrars` (and given its controller address) before any buffer is carved; refused
    /// with the existing pool once it was made. Control plane.
    pub fn make_pool(
        &self,
        buf_size: usize,
        registrars: &[&dyn Registrar],
    ) -> std::result::Result<&Arc<SharedPool>, MakePool<'_>> {
        let mut region = self.region.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = self.pool.get() {
            return Err(MakePool::Made(p));
        }
        // Checked before the region is handed over: a refused pool must not lose the CMB.
        if buf_size == 0 || !buf_size.is_multiple_of(PAGE) || buf_size > self.len {
            return Err(MakePool::Refused(format!(
                "CMB buffer size {buf_size} is not a multiple of 4 KiB within the CMB's {} bytes",
                self.len
            )));
        }
        let r = region
            .take()
            .expect("region present until the pool is made");
        let addr = CmbAddr(self.ctrl_addr);
        let mut all: Vec<&dyn Registrar> = vec![&addr];
        all.extend_from_slice(registrars);
        let p = SharedPool::new(vec![r], buf_size, &all)
            .expect("one region of one domain holding a checked buffer size");
        Ok(self.pool.get_or_init(|| p))
    }

    /// The domain the CMB's buffers are in.
    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// CPU address of the CMB's first byte in this process (its BAR mapping). An address only:
    /// the bytes are reached through the pool's buffers.
    pub fn cpu_addr(&self) -> u64 {
        self.cpu_addr as u64
    }

    /// The size of the pool's buffers ([`OpenOptions::cmb_buf_size`]).
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
}

/// Why [`Cmb::make_pool`] made no pool.
#[derive(Debug)]
pub enum MakePool<'a> {
    /// It exists already (made by an earlier call): this one.
    Made(&'a Arc<SharedPool>),
    /// The parameters do not fit the CMB.
    Refused(String),
}

/// Sets the controller address of a CMB region's first byte (the [`Registrar`] the CMB domain is
/// made with; RDMA registrations of the same regions come later, from the transport).
struct CmbAddr(u64);

impl Registrar for CmbAddr {
    fn register(&self, region: &mut Region) {
        region.set_device_addr(self.0, None);
    }
}

/// Controllers opened so far: each one's CMB is the domain `Domain::Cmb { device: id }`.
static NEXT_CTRL_ID: AtomicU32 = AtomicU32::new(0);

/// An NVMe controller driven through VFIO. Shared by reactors (`Arc`); the admin queue is behind
/// a mutex because only the control plane uses it (bring-up, queue creation, abort, shutdown).
pub struct Controller {
    bdf: String,
    /// This controller's number, for its CMB domain.
    id: u32,
    cap: Cap,
    stride: usize,
    bar0: Arc<Bar>,
    admin: Mutex<AdminQueue>,
    info: CtrlInfo,
    io_queues: u16,
    next_qid: AtomicU16,
    cmb: Option<Cmb>,
    /// Bumped by every completed controller reset: a queue pair made in an older generation
    /// no longer exists on the controller and must be re-created ([`IoQpair::poll`]).
    generation: AtomicU32,
    /// A reset is running (one at a time, on its own thread).
    resetting: AtomicBool,
    /// The controller is gone (all-ones reads) or a reset failed: no more resets, every queue
    /// answers [`DEVICE_GONE`]. Set only after `dma_stop`.
    dead: AtomicBool,
    /// How the DMA of a dead controller was stopped (or why it could not be): decides whether
    /// the buffers of the commands it had in flight may be reused ([`BufferFate`]).
    dma_stop: OnceLock<DmaStop>,
    /// Buffers (and their bytes) of in-flight commands leaked because the DMA could not be
    /// stopped ([`Controller::record_leak`]); whether that was logged.
    leaked_buffers: AtomicU64,
    leaked_bytes: AtomicU64,
    leak_logged: AtomicBool,
    /// Test-only fault injection ([`RESET_FAULT_ENV`]).
    fault: TestFault,
    /// The kernel asked for the device back: no more resets ([`Controller::release_to_kernel`]).
    releasing: AtomicBool,
    /// Its VFIO resources are released (BARs revoked, device fd closed, group left): nothing
    /// is left to shut down.
    released: AtomicBool,
    /// The thread waiting for the kernel's device request, stopped when the controller drops.
    watch: OnceLock<Arc<RequestWatch>>,
    /// Drop order: mappings before the device, the device before the group, the group before
    /// the container.
    device: Device,
    group: Member,
    container: Arc<Container>,
}

/// The device request eventfd (signalled by vfio-pci when the kernel wants the device back) and
/// the one that stops its watcher thread.
struct RequestWatch {
    request: EventFd,
    stop: EventFd,
}

/// Why a controller is given up ([`Controller::give_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GiveUp {
    /// A controller reset failed (or could not be started).
    ResetFailed,
    /// The kernel asked for the device back (VFIO device request).
    Released,
}

/// The process's one VFIO container: every controller's group joins it, so a host buffer region
/// has one IOVA for all SSDs ([`IovaSpace`]), mapped once when the first controller comes up
/// (or when the region is made, after that).
struct Shared {
    container: Option<Arc<Container>>,
    groups: usize,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    container: None,
    groups: 0,
});

/// A controller's group in the shared container. The last one to leave unmaps the host buffer
/// regions first: the kernel drops a container's IOMMU context (and its mappings) with its last
/// group, and the next controller starts a new container that maps them again.
struct Member {
    group: Mutex<Option<Group>>,
}

impl Member {
    fn new(group: Group) -> Member {
        Member {
            group: Mutex::new(Some(group)),
        }
    }

    fn device(&self, bdf: &str) -> io::Result<Device> {
        self.group
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .ok_or_else(|| io::Error::other("the IOMMU group was left"))?
            .device(bdf)
    }

    /// Close the group (once; its device fd must be closed first). The last group of the
    /// shared container unmaps the host buffer regions and retires the container: the kernel
    /// drops a container's IOMMU context with its last group, and a later controller starts a
    /// new container. `true` if this was the container's last group.
    fn leave(&self) -> bool {
        let mut s = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        let Some(group) = self.group.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return false;
        };
        s.groups = s.groups.saturating_sub(1);
        let last = s.groups == 0;
        if last {
            IovaSpace::host().detach();
        }
        drop(group);
        if last {
            if let Some(c) = s.container.take() {
                c.mark_gone();
            }
        }
        last
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Open IOMMU group `group_id` and put it in the shared container, making the container (type1
/// IOMMU, every registered host buffer region mapped) if this is the first controller.
fn join_container(group_id: u32, bdf: &str) -> Result<(Member, Arc<Container>)> {
    let mut s = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    let group = Group::open(group_id, || sysfs::describe_group(group_id))?;
    if let Some(c) = s.container.clone() {
        // Type1 attaches the group to the container's IOMMU domain (or to a new one, replaying
        // the existing mappings into it).
        group.set_container(&c)?;
        s.groups += 1;
        return Ok((Member::new(group), c));
    }
    let container = Arc::new(Container::open()?);
    let model = if container.has_extension(vfio::VFIO_TYPE1V2_IOMMU) {
        vfio::VFIO_TYPE1V2_IOMMU
    } else if container.has_extension(vfio::VFIO_TYPE1_IOMMU) {
        vfio::VFIO_TYPE1_IOMMU
    } else if container.has_extension(vfio::VFIO_NOIOMMU_IOMMU) {
        return Err(Error::Invalid(
            "VFIO is in no-IOMMU mode: this driver programs IOVAs and needs an IOMMU \
             (intel_iommu=on / amd_iommu=on)"
                .into(),
        ));
    } else {
        return Err(Error::Invalid(
            "VFIO offers no type1 IOMMU: is vfio_iommu_type1 loaded and the IOMMU on?".into(),
        ));
    };
    group.set_container(&container)?;
    container.set_iommu(model)?;
    let (regions, bytes, _) = IovaSpace::host().stats();
    IovaSpace::host()
        .attach(container.clone())
        .map_err(|e| Error::Invalid(format!("{bdf}: cannot map the buffer memory for DMA: {e}")))?;
    info!(%bdf, regions, bytes, "VFIO container up; host buffer regions mapped for DMA");
    s.container = Some(container.clone());
    s.groups = 1;
    Ok((Member::new(group), container))
}

/// **Test only**: makes the controller reset of the listed controllers fail, so the paths that
/// give a controller up run against a real (emulated) device. A comma-separated list of PCI
/// addresses, each optionally followed by `:no-dma-stop`:
/// - `BDF`: every reset of that controller fails at once, as if CSTS.RDY stayed 1 (the
///   controller is left enabled and may still move data), so the DMA is stopped by clearing Bus
///   Master Enable (or a device reset) before the in-flight I/O fails;
/// - `BDF:no-dma-stop`: the same, and every way of stopping the DMA is reported as failed
///   without touching the device, so the buffers of the in-flight I/O are leaked.
///
/// Never set it in production: it turns a controller reset into the loss of the controller.
pub const RESET_FAULT_ENV: &str = "NVMFD_TEST_ONLY_NVME_RESET_FAIL";

/// What [`RESET_FAULT_ENV`] asks for one controller.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TestFault {
    reset_fails: bool,
    no_dma_stop: bool,
}

/// Parse [`RESET_FAULT_ENV`]'s value for controller `bdf` (normalised); a malformed entry is an
/// error, so a test that means to inject a fault cannot silently run without it.
fn parse_fault(spec: &str, bdf: &str) -> std::result::Result<TestFault, String> {
    let mut f = TestFault::default();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (addr, mode) = match entry.rsplit_once(':') {
            Some((a, m)) if m.chars().all(|c| c.is_ascii_alphabetic() || c == '-') => (a, Some(m)),
            _ => (entry, None),
        };
        let addr =
            sysfs::parse_bdf(addr).map_err(|e| format!("{RESET_FAULT_ENV}: {entry:?}: {e}"))?;
        let no_dma_stop = match mode {
            None => false,
            Some("no-dma-stop") => true,
            Some(m) => {
                return Err(format!(
                    "{RESET_FAULT_ENV}: {entry:?}: unknown mode {m:?} (only `no-dma-stop`)"
                ))
            }
        };
        if addr == bdf {
            f.reset_fails = true;
            f.no_dma_stop |= no_dma_stop;
        }
    }
    Ok(f)
}

/// Options for [`Controller::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Enable and map the CMB when the controller has one.
    pub cmb: bool,
    /// I/O queue pairs to ask for.
    pub io_queues: u16,
    /// Bytes of DMA memory the caller will map (for the locked-memory check).
    pub dma_bytes: u64,
    /// Size of the CMB domain's buffers (a multiple of 4 KiB): the largest transfer a command
    /// with its data in the CMB can have.
    pub cmb_buf_size: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cmb: true,
            io_queues: 4,
            dma_bytes: 64 << 20,
            cmb_buf_size: 128 << 10,
        }
    }
}

impl Controller {
    pub fn open(bdf: &str, opts: &OpenOptions) -> Result<Arc<Controller>> {
        let bdf = sysfs::parse_bdf(bdf).map_err(Error::Invalid)?;
        let fault = match std::env::var(RESET_FAULT_ENV) {
            Ok(v) => parse_fault(&v, &bdf).map_err(Error::Invalid)?,
            Err(_) => TestFault::default(),
        };
        if fault.reset_fails {
            warn!(%bdf, no_dma_stop = fault.no_dma_stop, "TEST-ONLY fault injection ({RESET_FAULT_ENV}): every reset of this controller fails and gives it up");
        }
        let group_id = sysfs::preflight(&bdf)?;
        let (limit, cap_ipc_lock) = sysfs::memlock();
        // The reactors' buffer regions are pinned too (mapped once for every controller).
        let want = opts.dma_bytes + IovaSpace::host().stats().1;
        if let Some(l) = limit {
            if !cap_ipc_lock && l < want {
                return Err(Error::Invalid(format!(
                    "locked-memory limit {l} bytes is below the {} bytes of DMA memory VFIO must \
                     pin: raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in the unit) or \
                     run with CAP_IPC_LOCK",
                    want
                )));
            }
        }
        let (group, container) = join_container(group_id, &bdf)?;
        let device = group.device(&bdf)?;

        // PCI command register: memory space on, INTx off (we poll), bus mastering off until
        // the controller is disabled (`disable_then_master`).
        let cfg = device.region_info(vfio::CONFIG_REGION)?;
        enable_memory(&device)?;

        let r0 = device.region_info(0)?;
        // Registers and doorbells only: QEMU and many SSDs put the MSI-X table later in BAR0,
        // and VFIO refuses to map it without interrupt remapping.
        let probe = Bar::map(&device, &r0, 0, PAGE)?;
        let cap = Cap(probe.read64(off::CAP));
        drop(probe);
        let stride = cap.doorbell_stride();
        let want = (0x1000 + 2 * (usize::from(MAX_IO_QUEUES) + 1) * stride).div_ceil(PAGE) * PAGE;
        let bar0 = Arc::new(Bar::map(&device, &r0, 0, want.min(r0.size as usize))?);
        if cap.0 == u64::MAX {
            return Err(Error::Removed { bdf });
        }
        if !cap.css_nvm() {
            return Err(Error::Invalid(format!(
                "{bdf}: controller does not support the NVM command set"
            )));
        }
        if cap.mps_min() > PAGE || cap.mps_max() < PAGE {
            return Err(Error::Invalid(format!(
                "{bdf}: controller page sizes {}..{} exclude 4 KiB",
                cap.mps_min(),
                cap.mps_max()
            )));
        }
        let vs = bar0.read32(off::VS);
        info!(%bdf, cap = format_args!("{:#x}", cap.0), vs = format_args!("{vs:#x}"), "NVMe controller found");

        // 1. Disable and wait for CSTS.RDY = 0 (within CAP.TO); only then bus mastering on.
        disable_then_master(&device, &*bar0, &bdf, cap)?;

        // 2. Admin queues.
        let rings = Rings {
            sq: DmaRegion::new(&container, usize::from(ADMIN_DEPTH) * Sqe::SIZE)?,
            cq: DmaRegion::new(&container, usize::from(ADMIN_DEPTH) * Cqe::SIZE)?,
        };
        let aqa = u32::from(ADMIN_DEPTH - 1) << 16 | u32::from(ADMIN_DEPTH - 1);
        bar0.write32(off::AQA, aqa);
        bar0.write64(off::ASQ, rings.sq.iova());
        bar0.write64(off::ACQ, rings.cq.iova());
        bar0.write32(off::INTMS, u32::MAX);

        // 3. CMB before enabling: CRE makes CMBLOC/CMBSZ readable; CMSE with CBA opens it.
        let id = NEXT_CTRL_ID.fetch_add(1, Ordering::Relaxed);
        let cmb = if opts.cmb && cap.cmbs() {
            match enable_cmb(&device, &cfg, &bar0, &bdf, id, opts.cmb_buf_size) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(%bdf, error = %e, "CMB not usable; continuing without it");
                    None
                }
            }
        } else {
            None
        };

        // 4. Enable and wait for RDY = 1.
        bar0.write32(off::CC, Cc::enabled(PAGE).0);
        wait_ready(&*bar0, &bdf, cap, true)?;

        let admin = AdminQueue {
            rings,
            sq: SqRing::new(ADMIN_DEPTH),
            cq: CqRing::new(ADMIN_DEPTH),
            next_cid: 0,
            sq_db: crate::regs::sq_tail_doorbell(0, stride),
            cq_db: crate::regs::cq_head_doorbell(0, stride),
        };
        let mut ctrl = Controller {
            bdf: bdf.clone(),
            id,
            cap,
            stride,
            bar0,
            admin: Mutex::new(admin),
            info: CtrlInfo {
                vid: 0,
                serial: String::new(),
                model: String::new(),
                firmware: String::new(),
                max_transfer: PAGE,
                oncs: 0,
                vwc: false,
                nn: 0,
                version: vs,
            },
            io_queues: 0,
            next_qid: AtomicU16::new(1),
            cmb,
            generation: AtomicU32::new(0),
            resetting: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            dma_stop: OnceLock::new(),
            leaked_buffers: AtomicU64::new(0),
            leaked_bytes: AtomicU64::new(0),
            leak_logged: AtomicBool::new(false),
            fault,
            releasing: AtomicBool::new(false),
            released: AtomicBool::new(false),
            watch: OnceLock::new(),
            device,
            group,
            container,
        };
        // 5. Identify Controller.
        let page = ctrl.identify(1, 0)?;
        ctrl.info = parse_identify_ctrl(&page, cap);
        // 6. Number of Queues (0's based in both halves); the controller answers with what it
        // allocated, which may be fewer.
        let n = opts.io_queues.clamp(1, MAX_IO_QUEUES);
        let mut s = Sqe::new(admin::SET_FEATURES, 0);
        s.dw[10] = u32::from(feature::NUMBER_OF_QUEUES);
        s.dw[11] = u32::from(n - 1) << 16 | u32::from(n - 1);
        let c = ctrl.admin_cmd(s, "Set Features (Number of Queues)")?;
        let nsq = (c.dw0 & 0xffff) as u16 + 1;
        let ncq = (c.dw0 >> 16) as u16 + 1;
        ctrl.io_queues = nsq.min(ncq).min(n);
        info!(
            %bdf,
            model = %ctrl.info.model,
            serial = %ctrl.info.serial,
            max_transfer = ctrl.info.max_transfer,
            namespaces = ctrl.info.nn,
            io_queues = ctrl.io_queues,
            cmb_bytes = ctrl.cmb.as_ref().map_or(0, |c| c.len()),
            "NVMe controller ready"
        );
        let ctrl = Arc::new(ctrl);
        ctrl.watch_requests();
        Ok(ctrl)
    }

    /// Register the device request eventfd and start the thread that waits on it: when the
    /// kernel wants the device back (hot-removal, driver unbind, sysfs `remove`), vfio-pci
    /// signals it and waits until the device fd is closed ("Relaying device request to user"),
    /// re-signalling every 10 s. The thread then gives the controller up and releases it
    /// ([`Controller::release_to_kernel`]). Without the IRQ (an older kernel, another VFIO
    /// driver) removal is only noticed by all-ones register reads, and the kernel's removal
    /// waits until nvmfd exits: logged.
    fn watch_requests(self: &Arc<Self>) {
        let bdf = &self.bdf;
        let none = |why: String| {
            warn!(%bdf, why = %why, "no device request IRQ: a hot-removal or unbind is noticed only when the registers read all ones, and the kernel's removal of the device waits until nvmfd exits");
        };
        match self.device.has_request_irq() {
            Ok(true) => {}
            Ok(false) => return none("VFIO_PCI_REQ_IRQ_INDEX not offered".into()),
            Err(e) => return none(e.to_string()),
        }
        let watch = match EventFd::new().and_then(|request| {
            Ok(RequestWatch {
                request,
                stop: EventFd::new()?,
            })
        }) {
            Ok(w) => Arc::new(w),
            Err(e) => return none(e.to_string()),
        };
        if let Err(e) = self.device.set_request_irq(&watch.request) {
            return none(e.to_string());
        }
        let weak = Arc::downgrade(self);
        let w = watch.clone();
        let spawned = std::thread::Builder::new()
            .name("nvme-request".into())
            .spawn(move || request_watcher(&w, &weak));
        match spawned {
            Ok(_) => {
                let _ = self.watch.set(watch);
                info!(%bdf, "device request IRQ registered: a hot-removal or unbind releases the device");
            }
            Err(e) => none(format!("cannot start its thread: {e}")),
        }
    }

    /// The kernel wants the device back: give the controller up as a failed reset does (its
    /// DMA stopped first: shut down and disabled if it answers, else Bus Master Enable off or a
    /// device reset; in-flight I/O then fails with a retryable status, new I/O with Internal
    /// Error + DNR), then release every VFIO resource of the device so the kernel's removal can
    /// complete: the BAR mappings (replaced by all-ones anonymous memory, so reactors still
    /// touching them read "removed"), the device fd, and the IOMMU group (with the container's
    /// mappings if it was the last group). Control plane (the request watcher thread).
    ///
    /// The shutdown comes first because a removal may be followed by power-off of the slot:
    /// NVMe Base 2.0, 3.6.1 (CC.SHN = 01b, then CSTS.SHST = 10b) lets the controller make its
    /// volatile write cache durable; then CC.EN = 0 and CSTS.RDY = 0 (3.7.2, a Controller Level
    /// Reset) deletes its queues and ends all command processing, so the buffers of the commands
    /// it had are safe to reuse.
    pub fn release_to_kernel(&self) {
        let bdf = &self.bdf;
        warn!(%bdf, "the kernel asks for the NVMe device back (VFIO device request: hot-removal, driver unbind or sysfs remove); giving the controller up and releasing it");
        self.releasing.store(true, Ordering::Release);
        {
            // Waits for a reset that is running; none starts after `releasing`.
            let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
            if !self.is_dead() {
                let disabled = self.stop_for_release();
                self.give_up(disabled, GiveUp::Released);
            }
            if let Err(e) = self.bar0.revoke(true) {
                tracing::error!(%bdf, error = %e, "cannot revoke the BAR 0 mapping: the kernel's removal of the device waits until nvmfd exits");
            }
            if let Some(c) = &self.cmb {
                if let Err(e) = c.bar.revoke(false) {
                    tracing::error!(%bdf, error = %e, "cannot revoke the CMB mapping: the kernel's removal of the device waits until nvmfd exits");
                }
            }
        }
        self.device.release();
        let last = self.group.leave();
        self.released.store(true, Ordering::Release);
        warn!(%bdf, dma_stop = ?self.dma_stop(), last_group = last, "NVMe device released to the kernel (BARs unmapped, device and group closed): its namespaces fail I/O with Internal Error (DNR) from now on, other bdevs keep serving");
    }

    /// Shut the controller down and disable it before it is released; `true` once CSTS.RDY
    /// reads 0 (its DMA is over). Each step waits at most CAP.TO.
    fn stop_for_release(&self) -> bool {
        let bdf = &self.bdf;
        if let Err(e) = self.shutdown() {
            warn!(%bdf, error = %e, "shutdown before the release failed; disabling the controller");
        }
        let cc = self.bar0.read32(off::CC);
        if cc == u32::MAX {
            return false;
        }
        // CC.EN = 0 (and SHN cleared: the next owner starts from a clean CC).
        self.bar0.write32(off::CC, 0);
        match wait_ready(&*self.bar0, bdf, self.cap, false) {
            Ok(()) => true,
            Err(e) => {
                warn!(%bdf, error = %e, "controller not disabled before the release; stopping its DMA otherwise");
                false
            }
        }
    }

    /// Whether the device went back to the kernel ([`Controller::release_to_kernel`]).
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }
    /// This controller's number (its CMB is `Domain::Cmb { device: id }`).
    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn info(&self) -> &CtrlInfo {
        &self.info
    }
    pub fn cap(&self) -> Cap {
        self.cap
    }
    pub fn io_queues(&self) -> u16 {
        self.io_queues
    }
    pub fn cmb(&self) -> Option<&Cmb> {
        self.cmb.as_ref()
    }
    /// The VFIO device (its fd exports BAR ranges as dma-bufs for RDMA registration).
    pub fn vfio_device(&self) -> &Device {
        &self.device
    }
    /// The VFIO container, to map more host memory for this controller.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }
    /// A fresh host-memory DMA region mapped for this controller.
    pub fn dma_region(&self, len: usize) -> Result<DmaRegion> {
        Ok(DmaRegion::new(&self.container, len)?)
    }

    /// Controller status; `Removed` when the BAR reads all ones.
    pub fn csts(&self) -> Result<Csts> {
        let c = Csts(self.bar0.read32(off::CSTS));
        if c.is_all_ones() {
            return Err(Error::Removed {
                bdf: self.bdf.clone(),
            });
        }
        Ok(c)
    }

    /// Run one admin command to completion (control plane only: it waits).
    pub fn admin_cmd(&self, sqe: Sqe, what: &'static str) -> Result<Cqe> {
        let mut a = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.admin_cmd_locked(&mut a, sqe, what)
    }

    fn admin_cmd_locked(
        &self,
        a: &mut AdminQueue,
        mut sqe: Sqe,
        what: &'static str,
    ) -> Result<Cqe> {
        let cid = a.next_cid;
        a.next_cid = a.next_cid.wrapping_add(1);
        sqe.set_cid(cid);
        let AdminQueue {
            rings,
            sq,
            cq,
            sq_db,
            cq_db,
            ..
        } = a;
        if sq.push(rings, &sqe).is_none() {
            return Err(Error::Invalid(format!("{what}: admin queue full")));
        }
        fence(Ordering::SeqCst);
        if let Some(t) = sq.take_doorbell() {
            self.bar0.write32(*sq_db, u32::from(t));
        }
        let start = Instant::now();
        loop {
            while let Some(c) = cq.pop(rings) {
                sq.update_head(c.sq_head);
                if let Some(h) = cq.take_doorbell() {
                    self.bar0.write32(*cq_db, u32::from(h));
                }
                if c.cid != cid {
                    debug!(cid = c.cid, "stale admin completion ignored");
                    continue;
                }
                if !c.status().is_success() {
                    return Err(Error::Status {
                        what,
                        status: c.status(),
                    });
                }
                return Ok(c);
            }
            let st = self.csts()?;
            if st.cfs() {
                return Err(Error::Fatal {
                    bdf: self.bdf.clone(),
                });
            }
            if start.elapsed() > ADMIN_TIMEOUT {
                return Err(Error::Timeout {
                    what,
                    ms: ADMIN_TIMEOUT.as_millis(),
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Queue an admin command without waiting for its completion: the Abort a reactor sends for
    /// a timed-out command, which must not wait for the admin queue (a reset or a queue creation
    /// from another thread may hold it for seconds) nor for the answer. `Ok(false)` when the
    /// admin queue is busy: nothing was sent, the caller tries again at its next check.
    /// Completions already posted are reaped first, so the queue never fills with them; this
    /// command's own completion is reaped (and ignored: an Abort's result is informational,
    /// the aborted command completes on its own queue) by the next admin command.
    fn admin_post(&self, mut sqe: Sqe, what: &'static str) -> Result<bool> {
        let mut a = match self.admin.try_lock() {
            Ok(a) => a,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        let a = &mut *a;
        let cid = a.next_cid;
        a.next_cid = a.next_cid.wrapping_add(1);
        sqe.set_cid(cid);
        while let Some(c) = a.cq.pop(&a.rings) {
            a.sq.update_head(c.sq_head);
            debug!(cid = c.cid, status = %c.status(), "earlier admin completion reaped");
        }
        if let Some(h) = a.cq.take_doorbell() {
            self.bar0.write32(a.cq_db, u32::from(h));
        }
        if a.sq.push(&mut a.rings, &sqe).is_none() {
            return Err(Error::Invalid(format!("{what}: admin queue full")));
        }
        fence(Ordering::SeqCst);
        if let Some(t) = a.sq.take_doorbell() {
            self.bar0.write32(a.sq_db, u32::from(t));
        }
        Ok(true)
    }

    /// Identify with CNS `cns` for `nsid`, returning the 4 KiB page.
    pub fn identify(&self, cns: u8, nsid: u32) -> Result<Box<[u8; 4096]>> {
        let buf = self.dma_region(PAGE)?;
        let mut s = Sqe::new(admin::IDENTIFY, nsid);
        s.set_prp(buf.iova(), 0);
        s.dw[10] = u32::from(cns);
        self.admin_cmd(s, "Identify")?;
        let mut page = Box::new([0u8; 4096]);
        buf.read(0, &mut page[..]);
        Ok(page)
    }

    /// Identify namespace `nsid`; a clear error when the SSD has no such active namespace.
    pub fn namespace(&self, nsid: u32) -> Result<NsInfo> {
        if nsid == 0 || nsid > self.info.nn {
            return Err(Error::Invalid(format!(
                "{}: namespace {nsid} does not exist (the controller has namespaces 1..={})",
                self.bdf, self.info.nn
            )));
        }
        let page = self.identify(0, nsid)?;
        parse_identify_ns(nsid, &page).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: namespace {nsid} is not active (or has an unsupported LBA format)",
                self.bdf
            ))
        })
    }

    /// Create an I/O queue pair of `depth` entries, interrupts off, for one reactor to poll.
    pub fn io_qpair(self: &Arc<Self>, depth: u16) -> Result<IoQpair> {
        let depth = depth.clamp(2, self.cap.mqes().min(1024) as u16);
        let qid = self.next_qid.fetch_add(1, Ordering::Relaxed);
        if qid > self.io_queues {
            return Err(Error::Invalid(format!(
                "{}: all {} I/O queues granted by the controller are in use",
                self.bdf, self.io_queues
            )));
        }
        let rings = Rings {
            sq: self.dma_region(usize::from(depth) * Sqe::SIZE)?,
            cq: self.dma_region(usize::from(depth) * Cqe::SIZE)?,
        };
        let lists = self.dma_region(usize::from(depth) * PAGE)?;
        let generation = self.generation();
        self.create_io_queues(qid, depth, &rings)?;
        debug!(bdf = %self.bdf, qid, depth, "I/O queue pair created");
        Ok(IoQpair {
            ctrl: self.clone(),
            qid,
            rings,
            lists,
            sq: SqRing::new(depth),
            cq: CqRing::new(depth),
            cids: CidTable::new(depth - 1),
            failed: None,
            generation,
            depth,
            polls: 0,
            timeout: IO_TIMEOUT,
            sq_db: crate::regs::sq_tail_doorbell(qid, self.stride),
            cq_db: crate::regs::cq_head_doorbell(qid, self.stride),
            max_transfer: self.info.max_transfer,
        })
    }

    /// Completed controller resets so far.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the controller is gone for good (removed, or a reset failed).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Controller Level Reset through CC.EN (NVMe Base 2.0, 3.7.2: clearing CC.EN resets the
    /// controller; every I/O queue is deleted and its commands are lost), then the
    /// initialization of 3.5.1 again: admin queue, CMB (CMBMSC programmed as before), CC.EN = 1,
    /// Number of Queues. Queue pairs notice the new generation on their next poll, fail what
    /// they had in flight with a retryable status and re-create their queues. Control plane: it
    /// waits (up to CAP.TO twice).
    ///
    /// A reset that fails gives the controller up ([`Controller::give_up`]): its DMA is stopped
    /// if it can be, then it is dead.
    pub fn reset(&self) -> Result<()> {
        let mut a = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_dead() || self.releasing.load(Ordering::Acquire) {
            // Given up (or going back to the kernel) while this reset waited for the admin
            // queue: nothing to reset, and giving it up again would touch a released device.
            return Err(Error::Removed {
                bdf: self.bdf.clone(),
            });
        }
        let mut disabled = false;
        let r = self.reset_locked(&mut a, &mut disabled);
        drop(a);
        match &r {
            Ok(()) => {
                let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                info!(bdf = %self.bdf, generation = g, "controller reset done");
            }
            Err(e) => {
                tracing::error!(bdf = %self.bdf, error = %e, disabled, "controller reset failed; its I/O fails from now on");
                self.give_up(disabled, GiveUp::ResetFailed);
            }
        }
        r
    }

    /// `disabled` is set once CC.EN = 0 took effect (CSTS.RDY = 0): from then on the controller
    /// has no I/O queue left and moves no data for the commands it had (NVMe Base 2.0, 3.7.2).
    fn reset_locked(&self, a: &mut AdminQueue, disabled: &mut bool) -> Result<()> {
        if self.fault.reset_fails {
            // Test only: fail before CC.EN is touched, the controller left running, as when
            // CSTS.RDY stays 1.
            return Err(Error::Timeout {
                what: "disable (CSTS.RDY = 0) [TEST-ONLY fault injection: the controller is left enabled]",
                ms: 0,
            });
        }
        let cc = Cc(self.bar0.read32(off::CC));
        if cc.0 == u32::MAX {
            return Err(Error::Removed {
                bdf: self.bdf.clone(),
            });
        }
        self.bar0.write32(off::CC, cc.0 & !Cc::EN);
        wait_ready(&*self.bar0, &self.bdf, self.cap, false)?;
        *disabled = true;
        // The admin queue starts empty again: zeroed entries (the phase tag restarts at 1).
        a.rings.sq.fill(0, a.rings.sq.len(), 0);
        a.rings.cq.fill(0, a.rings.cq.len(), 0);
        a.sq = SqRing::new(ADMIN_DEPTH);
        a.cq = CqRing::new(ADMIN_DEPTH);
        let aqa = u32::from(ADMIN_DEPTH - 1) << 16 | u32::from(ADMIN_DEPTH - 1);
        self.bar0.write32(off::AQA, aqa);
        self.bar0.write64(off::ASQ, a.rings.sq.iova());
        self.bar0.write64(off::ACQ, a.rings.cq.iova());
        self.bar0.write32(off::INTMS, u32::MAX);
        if let Some(c) = &self.cmb {
            // Program CMBMSC as at bring-up (high dword first) in case the reset cleared it;
            // writing the value it already holds changes nothing.
            let v = cmbmsc::enable(c.ctrl_addr);
            self.bar0.write32(off::CMBMSC + 4, (v >> 32) as u32);
            self.bar0.write32(off::CMBMSC, v as u32);
        }
        self.bar0.write32(off::CC, Cc::enabled(PAGE).0);
        wait_ready(&*self.bar0, &self.bdf, self.cap, true)?;
        // Number of Queues again (it must be set before any I/O queue is created after a reset).
        let n = self.io_queues.max(1);
        let mut s = Sqe::new(admin::SET_FEATURES, 0);
        s.dw[10] = u32::from(feature::NUMBER_OF_QUEUES);
        s.dw[11] = u32::from(n - 1) << 16 | u32::from(n - 1);
        let c = self.admin_cmd_locked(a, s, "Set Features (Number of Queues)")?;
        let granted = ((c.dw0 & 0xffff) as u16 + 1).min((c.dw0 >> 16) as u16 + 1);
        if granted < n {
            return Err(Error::Invalid(format!(
                "{}: after the reset the controller grants {granted} I/O queues, fewer than the {n} in use",
                self.bdf
            )));
        }
        Ok(())
    }

    /// Ask for a reset on a thread of its own (a reactor that saw the failure must not wait
    /// for it); a no-op while one runs or once the controller is dead.
    pub fn request_reset(self: &Arc<Self>) {
        if self.is_dead()
            || self.releasing.load(Ordering::Acquire)
            || self.resetting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let c = self.clone();
        let spawned = std::thread::Builder::new()
            .name("nvme-reset".into())
            .spawn(move || {
                let _ = c.reset();
                c.resetting.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            // Without a reset its queues' commands would never complete: give the controller up,
            // here on the caller's thread (a reactor: config-space accesses and perhaps a device
            // reset, once in the controller's life), since no thread could be made for it.
            tracing::error!(bdf = %self.bdf, error = %e, "cannot start the controller reset thread; the controller is given up");
            self.give_up(false, GiveUp::ResetFailed);
            self.resetting.store(false, Ordering::Release);
        }
    }

    /// Give the controller up after a failed (or impossible) reset: stop its DMA if it can be
    /// done ([`quiesce::stop_dma`]: it was disabled, Bus Master Enable cleared and read back
    /// clear, or the device reset), record how, then mark it dead. Queue pairs that see it dead
    /// fail their in-flight commands with a retryable status, handing their buffers back only
    /// if the DMA was stopped ([`BufferFate`]). Control plane (the reset thread), except when no
    /// thread could be started.
    fn give_up(&self, disabled: bool, cause: GiveUp) {
        let stop = if self.fault.no_dma_stop && cause == GiveUp::ResetFailed {
            quiesce::stop_dma(disabled, &quiesce::Refusing)
        } else {
            quiesce::stop_dma(disabled, &self.device)
        };
        let msg = match &stop {
            DmaStop::Disabled => "controller given up after it was disabled (CSTS.RDY = 0): its in-flight I/O fails with a retryable status and its buffers are reused",
            DmaStop::BusMasterOff => "controller given up with bus mastering off (PCI Command BME cleared, read back 0): its in-flight I/O fails with a retryable status and its buffers are reused",
            DmaStop::DeviceReset => "controller given up after a device reset (VFIO_DEVICE_RESET): its in-flight I/O fails with a retryable status and its buffers are reused",
            DmaStop::Failed(_) => "controller given up and its DMA could not be stopped: the buffers of its in-flight I/O are leaked, never reused; that I/O fails with a retryable status",
        };
        let why = match &stop {
            DmaStop::Failed(w) => w.as_str(),
            _ => "",
        };
        let cause_name = match cause {
            GiveUp::ResetFailed => "reset failed",
            GiveUp::Released => "device requested back by the kernel",
        };
        // A release the kernel asked for is an orderly event (warn) once the DMA is stopped; a
        // failed reset, or buffers leaked, are errors.
        if cause == GiveUp::Released && stop.stopped() {
            warn!(bdf = %self.bdf, cause = cause_name, "{msg}");
        } else {
            tracing::error!(bdf = %self.bdf, cause = cause_name, why = %why, "{msg}");
        }
        // The outcome before `dead` (release): a queue pair that sees `dead` sees the outcome.
        let _ = self.dma_stop.set(stop);
        self.dead.store(true, Ordering::Release);
    }

    /// What becomes of the buffers of commands failed because the controller is dead: reused
    /// only if its DMA was stopped. Read after [`Controller::is_dead`] said true.
    pub fn buffer_fate(&self) -> BufferFate {
        fate_of(self.dma_stop.get())
    }

    /// How the DMA of the dead controller was stopped, if it is dead.
    pub fn dma_stop(&self) -> Option<&DmaStop> {
        self.dma_stop.get()
    }

    /// The owner of the data buffers of commands completed with [`BufferFate::Leak`] reports
    /// what it leaked: counted, and logged at error level once per controller (later reports, one
    /// per queue pair, at warn level with the totals).
    pub fn record_leak(&self, buffers: u64, bytes: u64) {
        if buffers == 0 {
            return;
        }
        let total_buffers = self.leaked_buffers.fetch_add(buffers, Ordering::Relaxed) + buffers;
        let total_bytes = self.leaked_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if !self.leak_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(bdf = %self.bdf, buffers, bytes, "DMA of a dead controller could not be stopped: leaked the data buffers of its in-flight I/O (never reused; the memory stays allocated and mapped until the process exits)");
        } else {
            warn!(bdf = %self.bdf, buffers, bytes, total_buffers, total_bytes, "more buffers of a dead controller's in-flight I/O leaked");
        }
    }

    /// Buffers and bytes leaked so far ([`Controller::record_leak`]).
    pub fn leaked(&self) -> (u64, u64) {
        (
            self.leaked_buffers.load(Ordering::Relaxed),
            self.leaked_bytes.load(Ordering::Relaxed),
        )
    }

    /// Create (or, after a reset, re-create) I/O queue `qid` over `rings`.
    fn create_io_queues(&self, qid: u16, depth: u16, rings: &Rings) -> Result<()> {
        // Create I/O Completion Queue: PC = 1, IEN = 0 (polled).
        let mut s = Sqe::new(admin::CREATE_IO_CQ, 0);
        s.set_prp(rings.cq.iova(), 0);
        s.dw[10] = u32::from(depth - 1) << 16 | u32::from(qid);
        s.dw[11] = 1;
        self.admin_cmd(s, "Create I/O Completion Queue")?;
        let mut s = Sqe::new(admin::CREATE_IO_SQ, 0);
        s.set_prp(rings.sq.iova(), 0);
        s.dw[10] = u32::from(depth - 1) << 16 | u32::from(qid);
        s.dw[11] = u32::from(qid) << 16 | 1;
        if let Err(e) = self.admin_cmd(s, "Create I/O Submission Queue") {
            let mut d = Sqe::new(admin::DELETE_IO_CQ, 0);
            d.dw[10] = u32::from(qid);
            let _ = self.admin_cmd(d, "Delete I/O Completion Queue");
            return Err(e);
        }
        Ok(())
    }

    /// Normal shutdown: CC.SHN = 01b, wait for CSTS.SHST = 10b (within CAP.TO, at least 1 s).
    pub fn shutdown(&self) -> Result<()> {
        let cc = self.bar0.read32(off::CC);
        self.bar0
            .write32(off::CC, (cc & !Cc::SHN_MASK) | Cc::SHN_NORMAL);
        let limit = Duration::from_millis(self.cap.timeout_ms().max(1000));
        let start = Instant::now();
        loop {
            let st = self.csts()?;
            if st.shst() == 2 {
                info!(bdf = %self.bdf, "controller shut down cleanly");
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout {
                    what: "shutdown (CSTS.SHST)",
                    ms: limit.as_millis(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(w) = self.watch.get() {
            let _ = w.stop.signal();
        }
        if self.is_released() {
            debug!(bdf = %self.bdf, "controller was released to the kernel: nothing to shut down");
            return;
        }
        if self.csts().is_err() {
            warn!(bdf = %self.bdf, "controller gone: no shutdown");
            return;
        }
        if let Err(e) = self.shutdown() {
            warn!(bdf = %self.bdf, error = %e, "controller shutdown failed");
        }
        // Leave the controller disabled so the next owner starts clean.
        self.bar0.write32(off::CC, 0);
        let _ = &self.device;
    }
}

/// 32-bit controller register access: the BAR, or a fake in tests.
trait Regs {
    fn read32(&self, off: usize) -> u32;
    fn write32(&self, off: usize, v: u32);
}

impl Regs for Bar {
    fn read32(&self, off: usize) -> u32 {
        Bar::read32(self, off)
    }
    fn write32(&self, off: usize, v: u32) {
        Bar::write32(self, off, v)
    }
}

/// The PCI Command register: the VFIO device's config space, or a fake in tests.
trait CommandReg {
    fn command(&self) -> io::Result<u16>;
    fn set_command(&self, v: u16) -> io::Result<()>;
}

impl CommandReg for Device {
    fn command(&self) -> io::Result<u16> {
        self.pci_command()
    }
    fn set_command(&self, v: u16) -> io::Result<()> {
        self.set_pci_command(v)
    }
}

/// First bring-up step: Memory Space Enable on (the BAR must answer), INTx off (the driver
/// polls), and Bus Master Enable **off**: the controller may still be enabled with queues from
/// an earlier owner (a controller given up earlier in this process with only its bus mastering
/// cleared, or one left running), and must not reach memory before it is disabled.
fn enable_memory(cmd: &dyn CommandReg) -> io::Result<()> {
    let v = cmd.command()?;
    cmd.set_command(
        (v | vfio::PCI_COMMAND_MEMORY | vfio::PCI_COMMAND_INTX_DISABLE) & !vfio::PCI_COMMAND_MASTER,
    )
}

/// Disable the controller (CC.EN = 0), wait for CSTS.RDY = 0 within CAP.TO, and only then turn
/// Bus Master Enable on. NVMe Base 2.0, 3.5.1 (initialization starts from CC.EN = 0 and
/// CSTS.RDY = 0) and 3.7.2 (CC.EN 1 -> 0 is a Controller Level Reset: every I/O queue deleted,
/// command processing stopped once RDY reads 0): a controller whose RDY does not drop may still
/// be processing an old owner's queues, so it never gets bus mastering back (an error instead).
fn disable_then_master(cmd: &dyn CommandReg, regs: &dyn Regs, bdf: &str, cap: Cap) -> Result<()> {
    let cc = Cc(regs.read32(off::CC));
    if cc.en() {
        regs.write32(off::CC, cc.0 & !Cc::EN);
    }
    wait_ready(regs, bdf, cap, false)?;
    let v = cmd.command()?;
    cmd.set_command(v | vfio::PCI_COMMAND_MASTER)?;
    Ok(())
}

/// The device request watcher: waits for the kernel's request (or the stop signal of a
/// controller being dropped), then releases the controller. Holds only a weak reference, so it
/// never keeps a controller alive.
fn request_watcher(w: &RequestWatch, ctrl: &Weak<Controller>) {
    match vfio::wait_any(&[&w.request, &w.stop]) {
        Ok(0) => {
            let n = w.request.take();
            if let Some(c) = ctrl.upgrade() {
                debug!(bdf = %c.bdf, signals = n, "device request IRQ");
                c.release_to_kernel();
            }
        }
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "device request watcher failed: a hot-removal is noticed only by all-ones register reads")
        }
    }
}

fn wait_ready(bar0: &dyn Regs, bdf: &str, cap: Cap, want: bool) -> Result<()> {
    let limit = Duration::from_millis(cap.timeout_ms());
    let start = Instant::now();
    loop {
        let st = Csts(bar0.read32(off::CSTS));
        if st.is_all_ones() {
            return Err(Error::Removed { bdf: bdf.into() });
        }
        if st.rdy() == want {
            return Ok(());
        }
        if want && st.cfs() {
            return Err(Error::Fatal { bdf: bdf.into() });
        }
        if start.elapsed() > limit {
            return Err(Error::Timeout {
                what: if want {
                    "enable (CSTS.RDY = 1)"
                } else {
                    "disable (CSTS.RDY = 0)"
                },
                ms: limit.as_millis(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Bus address of BAR `n` from config space (64-bit BARs span two registers).
fn bar_bus_addr(dev: &Device, cfg: &vfio::RegionInfo, n: u32) -> io::Result<u64> {
    let mut b = [0u8; 8];
    dev.config_read(cfg, 0x10 + 4 * u64::from(n), &mut b[..4])?;
    let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut addr = u64::from(lo & !0xf);
    if lo >> 1 & 3 == 2 {
        dev.config_read(cfg, 0x14 + 4 * u64::from(n), &mut b[4..])?;
        addr |= u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]])) << 32;
    }
    Ok(addr)
}

fn enable_cmb(
    dev: &Device,
    cfg: &vfio::RegionInfo,
    bar0: &Bar,
    bdf: &str,
    id: u32,
    buf_size: usize,
) -> Result<Cmb> {
    // CRE first: CMBLOC/CMBSZ read zero until it is set (and may hold a stale value from the
    // kernel driver: program the register fully ourselves).
    bar0.write32(off::CMBMSC + 4, 0);
    bar0.write32(off::CMBMSC, cmbmsc::CRE as u32);
    let loc = Cmbloc(bar0.read32(off::CMBLOC));
    let sz = Cmbsz(bar0.read32(off::CMBSZ));
    let layout = CmbLayout::decode(loc, sz).map_err(|e| Error::Invalid(e.to_string()))?;
    if !sz.rds() && !sz.wds() {
        return Err(Error::Invalid(crate::regs::CmbError::NoData.to_string()));
    }
    let ri = dev.region_info(layout.bar)?;
    layout
        .check_bar(ri.size)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let bus = bar_bus_addr(dev, cfg, layout.bar)?;
    let cba = bus + layout.offset;
    // High dword first: QEMU (and the spec's 64-bit property written as two dwords) latch
    // CMSE/CBA when the low dword is written.
    let v = cmbmsc::enable(cba);
    bar0.write32(off::CMBMSC + 4, (v >> 32) as u32);
    bar0.write32(off::CMBMSC, v as u32);
    if bar0.read32(off::CMBSTS) & 1 != 0 {
        return Err(Error::Invalid(format!(
            "{bdf}: controller rejected CMB base address {cba:#x} (CMBSTS.CBAI)"
        )));
    }
    let map = Arc::new(Bar::map(dev, &ri, layout.offset, layout.size as usize)?);
    info!(
        %bdf,
        bar = layout.bar,
        offset = layout.offset,
        size = layout.size,
        cba = format_args!("{cba:#x}"),
        sqs = sz.sqs(), cqs = sz.cqs(), lists = sz.lists(), rds = sz.rds(), wds = sz.wds(),
        cdpmls = loc.cdpmls(), cdpcils = loc.cdpcils(),
        "CMB enabled"
    );
    let len = map.len();
    let base = map.as_ptr();
    let domain = Domain::Cmb { device: id };
    // SAFETY: the mapping lives as long as the `Bar` that owns it, which the region keeps as its
    // owner (one of two `Arc`s: the other, in Cmb, only revokes it, replacing the device pages
    // by anonymous ones at the same address, never unmapping it); nothing else reaches the
    // CMB's bytes (Cmb gives no access of its own; only the pool's buffers and the controller,
    // for commands given them).
    let region = unsafe { Region::external(base, len, domain, Box::new(map.clone())) };
    if buf_size == 0 || !buf_size.is_multiple_of(PAGE) || buf_size > len {
        return Err(Error::Invalid(format!(
            "{bdf}: CMB buffer size {buf_size} is not a multiple of 4 KiB within the CMB's {len} bytes"
        )));
    }
    Ok(Cmb {
        layout,
        ctrl_addr: cba,
        len,
        cpu_addr: base.as_ptr() as usize,
        domain,
        buf_size,
        region: Mutex::new(Some(region)),
        pool: OnceLock::new(),
        bar: map,
    })
}

/// Why a submission was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("queue full")]
    Full,
    #[error("transfer of {len} bytes exceeds the controller's {max} (MDTS)")]
    TooLarge { len: usize, max: usize },
    #[error("PRP: {0}")]
    Prp(#[from] prp::PrpError),
    /// The queue failed (controller fatal status, removal, unanswered abort); the status says
    /// whether the host may retry.
    #[error("queue failed: {0}")]
    Failed(Status),
}

/// Status for commands failed because the controller stopped working: Command Aborted due to
/// SQ Deletion (generic 0x08) without DNR, which a host retries (on another path, or after the
/// controller is back).
pub const RETRYABLE_ABORT: Status = Status(0x08);
/// Status once the device is gone (all-ones reads): Internal Error (0x06) with DNR.
pub const DEVICE_GONE: Status = Status(0x06 | 1 << 14);

/// Whether the data buffers of a completed command may be reused ([`IoQpair::poll`] says it for
/// every completion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferFate {
    /// The SSD is done with them: a real completion, or a command failed after the controller
    /// was disabled or its DMA stopped.
    Reusable,
    /// The command was failed on a dead controller whose DMA could not be stopped: the SSD may
    /// still write into (or read from) its buffers. Their owner must never reuse them: leak
    /// them and report it ([`Controller::record_leak`]).
    Leak,
}

/// One I/O queue pair, owned by one reactor. Not `Sync`; `Send` so it can be made on the
/// control thread and moved to its reactor.
pub struct IoQpair {
    ctrl: Arc<Controller>,
    qid: u16,
    rings: Rings,
    /// One PRP list page per command slot, indexed by CID.
    lists: DmaRegion,
    sq: SqRing,
    cq: CqRing,
    cids: CidTable<Inflight>,
    /// Set once the controller failed (CSTS.CFS, all-ones reads, an abort that went
    /// unanswered): every new command is answered with this status without reaching the SSD.
    failed: Option<Status>,
    /// The controller generation the queues were created in (see [`Controller::reset`]).
    generation: u32,
    depth: u16,
    polls: u32,
    timeout: Duration,
    sq_db: usize,
    cq_db: usize,
    max_transfer: usize,
}

impl IoQpair {
    pub fn qid(&self) -> u16 {
        self.qid
    }
    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrl
    }
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }
    pub fn in_flight(&self) -> usize {
        self.cids.in_flight()
    }
    /// Commands that can be queued now.
    pub fn room(&self) -> usize {
        (self.sq.free() as usize).min(self.cids_free())
    }
    fn cids_free(&self) -> usize {
        usize::from(self.sq.size() - 1) - self.cids.in_flight()
    }

    /// Queue `sqe` with its data at `data` (device addresses), remembered as `tag`. The
    /// doorbell is rung by the next [`IoQpair::poll`] or [`IoQpair::ring`].
    pub fn submit(
        &mut self,
        mut sqe: Sqe,
        data: &[Segment],
        tag: u64,
    ) -> std::result::Result<(), SubmitError> {
        let len: usize = data.iter().map(|s| s.len).sum();
        if let Some(st) = self.failed {
            return Err(SubmitError::Failed(st));
        }
        if self.ctrl.is_dead() {
            // Given up on another queue's behalf; this one notices at its next poll.
            return Err(SubmitError::Failed(DEVICE_GONE));
        }
        if self.generation != self.ctrl.generation.load(Ordering::Acquire) {
            // The controller was reset under this queue: it no longer exists there until the
            // next poll re-creates it.
            return Err(SubmitError::Failed(RETRYABLE_ABORT));
        }
        if len > self.max_transfer {
            return Err(SubmitError::TooLarge {
                len,
                max: self.max_transfer,
            });
        }
        if self.sq.is_full() {
            return Err(SubmitError::Full);
        }
        let cid = self
            .cids
            .alloc(Inflight {
                tag,
                since: Instant::now(),
                aborted: false,
            })
            .ok_or(SubmitError::Full)?;
        if len > 0 {
            let mut entries = [0u64; PAGE / 8];
            let list_addr = self.lists.iova() + u64::from(cid) * PAGE as u64;
            let p = match prp::build(
                data,
                PAGE,
                ListSpace {
                    entries: &mut entries,
                    addr: list_addr,
                },
            ) {
                Ok(p) => p,
                Err(e) => {
                    self.cids.release(cid);
                    return Err(e.into());
                }
            };
            let base = usize::from(cid) * PAGE;
            for (i, e) in entries[..p.list_entries].iter().enumerate() {
                self.lists.write_u64(base + i * 8, *e);
            }
            sqe.set_prp(p.prp1, p.prp2);
        }
        sqe.set_cid(cid);
        self.sq
            .push(&mut self.rings, &sqe)
            .expect("checked not full");
        Ok(())
    }

    /// Ring the SQ doorbell for everything queued since the last ring.
    pub fn ring(&mut self) {
        if let Some(t) = self.sq.take_doorbell() {
            // The SQEs (and PRP lists) must be visible before the doorbell write.
            fence(Ordering::SeqCst);
            self.ctrl.bar0.write32(self.sq_db, u32::from(t));
        }
    }

    /// Ring the SQ doorbell, then reap completions, calling `done(tag, cqe, fate)` for each
    /// (`fate`: whether the command's buffers may be reused); one CQ doorbell write per call.
    /// Never blocks (but for re-creating the queues once after a controller reset).
    pub fn poll(&mut self, done: &mut dyn FnMut(u64, Cqe, BufferFate)) -> usize {
        if self.generation != self.ctrl.generation.load(Ordering::Acquire) || self.ctrl.is_dead() {
            return self.recover(done);
        }
        self.ring();
        let mut n = 0;
        while let Some(c) = self.cq.pop(&self.rings) {
            self.sq.update_head(c.sq_head);
            match self.cids.release(c.cid) {
                Some(f) => {
                    done(f.tag, c, BufferFate::Reusable);
                    n += 1;
                }
                None => warn!(
                    qid = self.qid,
                    cid = c.cid,
                    "completion for a command not in flight"
                ),
            }
        }
        if let Some(h) = self.cq.take_doorbell() {
            self.ctrl.bar0.write32(self.cq_db, u32::from(h));
        }
        if self.cids.in_flight() > 0 {
            self.polls = self.polls.wrapping_add(1);
            // No health check while a reset runs (from any queue's request): the registers say
            // what the reset is doing, the commands in flight wait for it, and an Abort now
            // would only queue behind it.
            if self.polls.is_multiple_of(HEALTH_EVERY)
                && !self.ctrl.resetting.load(Ordering::Acquire)
            {
                self.health();
            }
        }
        n
    }

    /// Set the I/O timeout (default [`IO_TIMEOUT`]).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// The status new commands get now: once the queue failed, or while the controller was
    /// reset under it and the next poll has not re-created it yet.
    pub fn failed(&self) -> Option<Status> {
        self.failed.or_else(|| {
            if self.ctrl.is_dead() {
                Some(DEVICE_GONE)
            } else {
                (self.generation != self.ctrl.generation.load(Ordering::Acquire))
                    .then_some(RETRYABLE_ABORT)
            }
        })
    }

    /// Health check while commands are in flight: a removed device (all ones), a fatal
    /// controller status, and command timeouts (Abort first, then a controller reset). Nothing
    /// in flight completes here: only once the reset disabled the controller, or the controller
    /// was given up ([`IoQpair::recover`]), so no buffer goes back while the SSD may use it.
    /// Never blocks: the Abort is queued without waiting for the admin queue or its answer.
    fn health(&mut self) {
        let csts = Csts(self.ctrl.bar0.read32(off::CSTS));
        match health_check(
            csts,
            self.failed.is_some(),
            &self.cids,
            Instant::now(),
            self.timeout,
        ) {
            Health::Fine => {}
            Health::Gone => {
                // The reset finds CC all ones and gives the controller up, stopping its DMA if
                // it still can (a link that is down may come back up with the SSD mid-command).
                // Not logged when the controller is dead already (released to the kernel: its
                // BARs read all ones by design): the next poll fails the queue.
                if self.failed.is_none() && !self.ctrl.is_dead() {
                    tracing::error!(bdf = %self.ctrl.bdf, qid = self.qid, in_flight = self.cids.in_flight(), "NVMe device removed (registers read all ones); giving the controller up, in-flight I/O fails once its DMA is stopped or its buffers are leaked");
                }
                self.failed = Some(DEVICE_GONE);
                self.ctrl.request_reset();
            }
            Health::Fatal => {
                tracing::error!(bdf = %self.ctrl.bdf, qid = self.qid, in_flight = self.cids.in_flight(), "NVMe controller fatal status (CSTS.CFS); resetting the controller, in-flight I/O fails with a retryable status once it is disabled");
                self.fail_after_reset();
            }
            Health::Abort(cid) => {
                // Abort: CDW10 = CID << 16 | SQID (NVMe Base 2.0, 5.1). Queued, not waited for;
                // best effort anyway (the controller may complete the command instead): the
                // command counts as aborted once the Abort is queued, and twice the timeout
                // after its submission the controller is reset.
                let mut s = Sqe::new(admin::ABORT, 0);
                s.dw[10] = u32::from(cid) << 16 | u32::from(self.qid);
                let sent = match self.ctrl.admin_post(s, "Abort") {
                    Ok(true) => {
                        warn!(bdf = %self.ctrl.bdf, qid = self.qid, cid, "I/O command timed out; sending Abort");
                        true
                    }
                    Ok(false) => {
                        debug!(bdf = %self.ctrl.bdf, qid = self.qid, cid, "I/O command timed out; admin queue busy, the Abort goes at the next check");
                        false
                    }
                    Err(e) => {
                        warn!(bdf = %self.ctrl.bdf, qid = self.qid, cid, error = %e, "I/O command timed out and the Abort could not be queued");
                        true
                    }
                };
                if let Some(f) = self.cids.get_mut(cid).filter(|_| sent) {
                    f.aborted = true;
                }
            }
            Health::Reset(cid) => {
                tracing::error!(bdf = %self.ctrl.bdf, qid = self.qid, cid, in_flight = self.cids.in_flight(), "aborted command still outstanding; resetting the controller, in-flight I/O fails with a retryable status once it is disabled");
                self.fail_after_reset();
            }
        }
    }

    /// After a controller reset: everything in flight was lost with the old queues, so it
    /// fails with a retryable status; then the queues are made again in the new generation
    /// (admin commands: this waits, but only once per reset). A dead controller fails the
    /// queue for good with [`DEVICE_GONE`].
    ///
    /// A dead controller's commands fail with [`RETRYABLE_ABORT`] (another path may serve
    /// them) and [`BufferFate::Leak`] unless its DMA was stopped ([`Controller::buffer_fate`]);
    /// new ones get [`DEVICE_GONE`].
    fn recover(&mut self, done: &mut dyn FnMut(u64, Cqe, BufferFate)) -> usize {
        let n = self.cids.in_flight();
        if self.ctrl.is_dead() {
            self.failed = Some(DEVICE_GONE);
            if n > 0 {
                let fate = self.ctrl.buffer_fate();
                tracing::error!(bdf = %self.ctrl.bdf, qid = self.qid, in_flight = n, buffers = ?fate, "controller dead: in-flight I/O fails with a retryable status");
                self.fail_all(RETRYABLE_ABORT, fate, done);
            }
            return n;
        }
        // The reset disabled the controller: its queues and their commands are gone.
        self.fail_all(RETRYABLE_ABORT, BufferFate::Reusable, done);
        let generation = self.ctrl.generation();
        self.generation = generation;
        self.rings.sq.fill(0, self.rings.sq.len(), 0);
        self.rings.cq.fill(0, self.rings.cq.len(), 0);
        self.sq = SqRing::new(self.depth);
        self.cq = CqRing::new(self.depth);
        match self
            .ctrl
            .create_io_queues(self.qid, self.depth, &self.rings)
        {
            Ok(()) => {
                self.failed = None;
                info!(bdf = %self.ctrl.bdf, qid = self.qid, generation, failed_in_flight = n, "I/O queue re-created after the controller reset");
            }
            Err(e) => {
                // Retryable: a later reset may bring it back.
                self.failed = Some(RETRYABLE_ABORT);
                tracing::error!(bdf = %self.ctrl.bdf, qid = self.qid, error = %e, "I/O queue not re-created after the controller reset");
            }
        }
        n
    }

    /// Refuse new commands and have the controller reset; what is in flight completes (with a
    /// retryable status) only in [`IoQpair::recover`], after the reset disabled the controller:
    /// until then the SSD may still move data for those commands (NVMe Base 2.0, 3.7.2: a
    /// Controller Level Reset stops it), and their buffers, handed back early, could be reused
    /// by other I/O while it does. A controller that cannot be reset is dead, and a dead one
    /// fails everything at the next poll.
    fn fail_after_reset(&mut self) {
        self.failed = Some(RETRYABLE_ABORT);
        self.ctrl.request_reset();
    }

    /// Fail every command in flight with `status` (after a controller failure), handing their
    /// tags to `done` with `fate`.
    fn fail_all(
        &mut self,
        status: Status,
        fate: BufferFate,
        done: &mut dyn FnMut(u64, Cqe, BufferFate),
    ) {
        for (cid, f) in self.cids.drain() {
            done(
                f.tag,
                Cqe {
                    cid,
                    status_phase: status.0 << 1,
                    ..Cqe::default()
                },
                fate,
            );
        }
    }
}

/// The fate of a dead controller's in-flight buffers from how its DMA was stopped: reusable only
/// after a recorded, successful stop (no record at all is treated as a failure).
fn fate_of(stop: Option<&DmaStop>) -> BufferFate {
    match stop {
        Some(s) if s.stopped() => BufferFate::Reusable,
        _ => BufferFate::Leak,
    }
}

/// What a queue pair's health check does.
#[derive(Debug, PartialEq, Eq)]
enum Health {
    Fine,
    /// CSTS reads all ones: the device is gone (surprise removal, link down).
    Gone,
    /// CSTS.CFS: reset the controller.
    Fatal,
    /// Command `cid` is past the timeout: send an Abort.
    Abort(u16),
    /// Aborted command `cid` is past twice the timeout: reset the controller.
    Reset(u16),
}

/// The health decision from the controller status register and the commands in flight, kept
/// apart from the register read so it can be tested with made-up CSTS values (QEMU's emulated
/// controller never raises CFS). `failed`: a reset is already on its way, so no more Aborts.
fn health_check(
    csts: Csts,
    failed: bool,
    cids: &CidTable<Inflight>,
    now: Instant,
    timeout: Duration,
) -> Health {
    if csts.is_all_ones() {
        return Health::Gone;
    }
    // A reset already on its way also answers CFS: reporting it again would log and request
    // the reset on every check until the reset clears it.
    if failed {
        return Health::Fine;
    }
    if csts.cfs() {
        return Health::Fatal;
    }
    match timeout_scan(cids, now, timeout) {
        TimeoutAction::Nothing => Health::Fine,
        TimeoutAction::Abort(cid) => Health::Abort(cid),
        TimeoutAction::Reset(cid) => Health::Reset(cid),
    }
}

impl Drop for IoQpair {
    fn drop(&mut self) {
        if self.ctrl.is_dead() || self.generation != self.ctrl.generation() {
            // The queues are gone with the controller (or with its last reset).
            return;
        }
        let mut s = Sqe::new(admin::DELETE_IO_SQ, 0);
        s.dw[10] = u32::from(self.qid);
        if let Err(e) = self.ctrl.admin_cmd(s, "Delete I/O Submission Queue") {
            warn!(qid = self.qid, error = %e, "delete I/O SQ failed");
            return;
        }
        let mut s = Sqe::new(admin::DELETE_IO_CQ, 0);
        s.dw[10] = u32::from(self.qid);
        if let Err(e) = self.ctrl.admin_cmd(s, "Delete I/O Completion Queue") {
            warn!(qid = self.qid, error = %e, "delete I/O CQ failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake CSTS register stands in for the controller (QEMU cannot raise CFS or read all
    /// ones on demand): the decision the queue pair acts on, for each register value.
    #[test]
    fn health_decision_from_csts_and_timeouts() {
        let t = Duration::from_secs(1);
        let start = Instant::now();
        let mut cids = CidTable::new(8);
        let c0 = cids
            .alloc(Inflight {
                tag: 1,
                since: start,
                aborted: false,
            })
            .unwrap();
        let ready = Csts(1);
        let cfs = Csts(1 | 1 << 1);
        let gone = Csts(u32::MAX);
        // Removal wins over everything, even with a reset pending; CFS over timeouts, and once
        // a reset is pending CFS is not reported again.
        assert_eq!(health_check(gone, true, &cids, start, t), Health::Gone);
        assert_eq!(health_check(cfs, false, &cids, start, t), Health::Fatal);
        assert_eq!(health_check(cfs, true, &cids, start, t), Health::Fine);
        assert_eq!(health_check(ready, false, &cids, start, t), Health::Fine);
        let late = start + Duration::from_millis(1500);
        assert_eq!(
            health_check(ready, false, &cids, late, t),
            Health::Abort(c0)
        );
        cids.get_mut(c0).unwrap().aborted = true;
        assert_eq!(health_check(ready, false, &cids, late, t), Health::Fine);
        let later = start + Duration::from_millis(2500);
        assert_eq!(
            health_check(ready, false, &cids, later, t),
            Health::Reset(c0)
        );
        // Once the queue waits for its reset, timeouts ask for nothing more.
        assert_eq!(health_check(ready, true, &cids, later, t), Health::Fine);
    }

    /// Which buffers go back for which outcome of stopping a dead controller's DMA.
    #[test]
    fn buffer_fate_follows_the_dma_stop() {
        assert_eq!(fate_of(Some(&DmaStop::Disabled)), BufferFate::Reusable);
        assert_eq!(fate_of(Some(&DmaStop::BusMasterOff)), BufferFate::Reusable);
        assert_eq!(fate_of(Some(&DmaStop::DeviceReset)), BufferFate::Reusable);
        assert_eq!(
            fate_of(Some(&DmaStop::Failed("no reset".into()))),
            BufferFate::Leak
        );
        assert_eq!(fate_of(None), BufferFate::Leak, "unknown is unsafe");
        // End to end through the decision with a stopper that refuses everything and one
        // that never gets asked (the controller was disabled).
        assert_eq!(
            fate_of(Some(&quiesce::stop_dma(false, &quiesce::Refusing))),
            BufferFate::Leak
        );
        assert_eq!(
            fate_of(Some(&quiesce::stop_dma(true, &quiesce::Refusing))),
            BufferFate::Reusable
        );
    }

    /// A fake PCI function with an NVMe controller behind it: the Command register, CC and
    /// CSTS. CSTS.RDY follows CC.EN after `lag` CSTS reads (never when `stuck`); registers read
    /// all ones while Memory Space Enable is off, as on a real function. Records every access.
    struct FakeFn {
        cmd: std::cell::Cell<u16>,
        cc: std::cell::Cell<u32>,
        rdy: std::cell::Cell<bool>,
        lag: std::cell::Cell<u32>,
        stuck: bool,
        log: std::cell::RefCell<Vec<String>>,
    }

    impl FakeFn {
        fn new(cmd: u16, enabled: bool) -> FakeFn {
            FakeFn {
                cmd: std::cell::Cell::new(cmd),
                cc: std::cell::Cell::new(if enabled { Cc::enabled(PAGE).0 } else { 0 }),
                rdy: std::cell::Cell::new(enabled),
                lag: std::cell::Cell::new(3),
                stuck: false,
                log: std::cell::RefCell::new(Vec::new()),
            }
        }
        fn log(&self) -> Vec<String> {
            self.log.borrow().clone()
        }
    }

    impl Regs for FakeFn {
        fn read32(&self, o: usize) -> u32 {
            if self.cmd.get() & vfio::PCI_COMMAND_MEMORY == 0 {
                self.log
                    .borrow_mut()
                    .push(format!("read {o:#x} with memory off"));
                return u32::MAX;
            }
            match o {
                off::CC => self.cc.get(),
                off::CSTS => {
                    let en = self.cc.get() & Cc::EN != 0;
                    if self.rdy.get() != en && !self.stuck {
                        if self.lag.get() == 0 {
                            self.rdy.set(en);
                        } else {
                            self.lag.set(self.lag.get() - 1);
                        }
                    }
                    self.log
                        .borrow_mut()
                        .push(format!("csts rdy={}", u8::from(self.rdy.get())));
                    u32::from(self.rdy.get())
                }
                _ => 0,
            }
        }
        fn write32(&self, o: usize, v: u32) {
            self.log.borrow_mut().push(format!("write {o:#x}={v:#x}"));
            if o == off::CC {
                self.cc.set(v);
            }
        }
    }

    impl CommandReg for FakeFn {
        fn command(&self) -> io::Result<u16> {
            Ok(self.cmd.get())
        }
        fn set_command(&self, v: u16) -> io::Result<()> {
            self.log.borrow_mut().push(format!("command={v:#06x}"));
            self.cmd.set(v);
            Ok(())
        }
    }

    /// Bus Master Enable goes on only once the controller reads disabled (CSTS.RDY = 0): a
    /// controller left enabled with bus mastering on (an earlier owner, or one given up in this
    /// process with only BME cleared) gets it cleared first and back only after the reset.
    #[test]
    fn bus_mastering_only_after_the_controller_is_disabled() {
        let cap = Cap(0x0f << 24);
        let f = FakeFn::new(0x0006, true); // memory + bus master on, controller enabled
        enable_memory(&f).unwrap();
        assert_eq!(
            f.cmd.get(),
            0x0402,
            "memory on, INTx off, bus mastering off"
        );
        disable_then_master(&f, &f, "0000:03:00.0", cap).unwrap();
        let log = f.log();
        assert_eq!(log[0], "command=0x0402", "{log:?}");
        assert_eq!(
            log[1],
            format!("write {:#x}={:#x}", off::CC, Cc::enabled(PAGE).0 & !Cc::EN),
            "CC.EN cleared, the rest kept: {log:?}"
        );
        let rdy0 = log
            .iter()
            .position(|l| l == "csts rdy=0")
            .expect("RDY seen 0");
        let master = log
            .iter()
            .position(|l| l == "command=0x0406")
            .expect("bus mastering on at the end");
        assert!(master > rdy0, "BME set before CSTS.RDY read 0: {log:?}");
        assert_eq!(master, log.len() - 1, "{log:?}");
        assert!(
            log[..master].iter().all(|l| !l.starts_with("command=")
                || u16::from_str_radix(&l[10..], 16).unwrap() & vfio::PCI_COMMAND_MASTER == 0),
            "no earlier command write enabled bus mastering: {log:?}"
        );
        assert!(!log.iter().any(|l| l.contains("memory off")), "{log:?}");

        // Already disabled: nothing written to CC, bus mastering after the RDY check.
        let f = FakeFn::new(0x0000, false);
        enable_memory(&f).unwrap();
        disable_then_master(&f, &f, "0000:03:00.0", cap).unwrap();
        assert_eq!(f.log(), ["command=0x0402", "csts rdy=0", "command=0x0406"]);
    }

    /// A controller whose CSTS.RDY never drops is refused, and never gets bus mastering.
    #[test]
    fn a_controller_that_stays_ready_never_gets_bus_mastering() {
        let f = FakeFn {
            stuck: true,
            ..FakeFn::new(0x0006, true)
        };
        enable_memory(&f).unwrap();
        let e = disable_then_master(&f, &f, "0000:03:00.0", Cap(1 << 24)).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert_eq!(f.cmd.get() & vfio::PCI_COMMAND_MASTER, 0);
        assert!(!f.log().iter().any(|l| l == "command=0x0406"));
    }

    #[test]
    fn test_only_reset_fault_spec() {
        let bdf = "0000:03:00.0";
        let none = TestFault::default();
        let fails = TestFault {
            reset_fails: true,
            no_dma_stop: false,
        };
        let leaks = TestFault {
            reset_fails: true,
            no_dma_stop: true,
        };
        assert_eq!(parse_fault("", bdf), Ok(none));
        assert_eq!(parse_fault("0000:03:00.0", bdf), Ok(fails));
        assert_eq!(
            parse_fault("03:00.0", bdf),
            Ok(fails),
            "domain 0000 implied"
        );
        assert_eq!(
            parse_fault("0000:04:00.0", bdf),
            Ok(none),
            "another controller"
        );
        assert_eq!(
            parse_fault("0000:04:00.0, 0000:03:00.0:no-dma-stop", bdf),
            Ok(leaks)
        );
        let e = parse_fault("0000:03:00.0:bogus", bdf).unwrap_err();
        assert!(
            e.contains("unknown mode") && e.contains(RESET_FAULT_ENV),
            "{e}"
        );
        assert!(parse_fault("nonsense", bdf).is_err());
    }

    #[test]
    fn identify_ctrl_decoding() {
        let mut b = [0u8; 4096];
        b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        b[4..12].copy_from_slice(b"cmb0    ");
        b[24..39].copy_from_slice(b"QEMU NVMe Ctrl ");
        b[77] = 7;
        b[516..520].copy_from_slice(&256u32.to_le_bytes());
        b[520..522].copy_from_slice(&0x1fu16.to_le_bytes());
        b[525] = 1;
        let i = parse_identify_ctrl(&b, Cap(0));
        assert_eq!(i.vid, 0x1b36);
        assert_eq!(i.serial, "cmb0");
        assert_eq!(i.model, "QEMU NVMe Ctrl");
        assert_eq!(i.max_transfer, 512 << 10);
        assert_eq!(i.nn, 256);
        assert!(i.compare() && i.dsm() && i.write_zeroes() && i.vwc);
        // MDTS 0 (no limit) and a huge MDTS are capped by one PRP list page: 2 MiB.
        b[77] = 0;
        assert_eq!(parse_identify_ctrl(&b, Cap(0)).max_transfer, 2 << 20);
        b[77] = 12;
        assert_eq!(parse_identify_ctrl(&b, Cap(0)).max_transfer, 2 << 20);
    }

    #[test]
    fn identify_ns_decoding() {
        let mut b = [0u8; 4096];
        assert!(parse_identify_ns(1, &b).is_none(), "inactive");
        b[0..8].copy_from_slice(&2_097_152u64.to_le_bytes());
        b[26] = 1; // format 1
        b[128 + 4..128 + 8].copy_from_slice(&(12u32 << 16).to_le_bytes());
        let n = parse_identify_ns(1, &b).unwrap();
        assert_eq!((n.blocks, n.block_size), (2_097_152, 4096));
        b[26] = 0;
        b[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        assert_eq!(parse_identify_ns(1, &b).unwrap().block_size, 512);
        b[128..132].copy_from_slice(&(3u32 << 16).to_le_bytes());
        assert!(parse_identify_ns(1, &b).is_none(), "LBADS < 9 refused");
    }
}
