//! The PCIe hierarchy read from sysfs, plus the RDMA devices and the host facts the decision
//! needs. Every path is under [`Sources`], so fixtures stand in for the machine.

use super::bdf::Bdf;
use super::config_space::{AcsState, ConfigSpace, PortType, ACS_REDIRECT_BITS};
use super::host::{CpuInfo, DevMatch, KernelParams};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Where the model is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// The sysfs mount (`/sys`).
    pub sysfs: PathBuf,
    /// `/proc/cpuinfo`.
    pub cpuinfo: PathBuf,
    /// `/proc/cmdline`.
    pub cmdline: PathBuf,
}

impl Sources {
    /// The running machine: `/sys`, `/proc/cpuinfo`, `/proc/cmdline`.
    pub fn live() -> Sources {
        Sources::new(Path::new("/sys"), Path::new("/proc"))
    }

    /// A sysfs tree and a proc directory holding `cpuinfo` and `cmdline`.
    pub fn new(sysfs: &Path, proc_root: &Path) -> Sources {
        Sources {
            sysfs: sysfs.to_path_buf(),
            cpuinfo: proc_root.join("cpuinfo"),
            cmdline: proc_root.join("cmdline"),
        }
    }
}

/// JSON spelling of IDs and addresses: hexadecimal strings (`"0x8086"`, `"0x010802"`,
/// `"0x1004000000"`), so 64-bit addresses survive readers that hold numbers as doubles.
mod hex {
    use serde::Serializer;

    pub fn u16<S: Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:#06x}"))
    }

    pub fn u32<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:#08x}"))
    }

    pub fn u64<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:#x}"))
    }

    pub fn opt_u64<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => u64(v, s),
            None => s.serialize_none(),
        }
    }
}

/// A link's speed and width as sysfs reports them. In JSON it also carries `gbps`, its
/// [`Link::gbps`], so readers of `nvmfd topology --json` (the bench report) use this one
/// computation instead of their own.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Transfer rate in GT/s (`None` when sysfs says "Unknown").
    pub speed_gts: Option<f64>,
    /// Lane count.
    pub width: Option<u32>,
}

impl Serialize for Link {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Link", 3)?;
        st.serialize_field("speed_gts", &self.speed_gts)?;
        st.serialize_field("width", &self.width)?;
        st.serialize_field("gbps", &self.gbps())?;
        st.end()
    }
}

impl Link {
    /// Usable bandwidth per direction in Gbit/s after line encoding (8b/10b up to 5 GT/s,
    /// 128b/130b for 8–32 GT/s, FLIT mode from 64 GT/s taken as 242/256); `None` when the speed
    /// or the width is unknown.
    pub fn gbps(&self) -> Option<f64> {
        let s = self.speed_gts?;
        let w = self.width? as f64;
        let eff = if s <= 5.0 {
            0.8
        } else if s < 64.0 {
            128.0 / 130.0
        } else {
            242.0 / 256.0
        };
        Some(s * w * eff)
    }

    /// `8.0 GT/s x4`.
    pub fn label(&self) -> String {
        let s = self
            .speed_gts
            .map(|s| format!("{s:.1} GT/s"))
            .unwrap_or_else(|| "? GT/s".into());
        let w = self
            .width
            .map(|w| format!("x{w}"))
            .unwrap_or_else(|| "x?".into());
        format!("{s} {w}")
    }
}

/// One BAR: the CPU's view (`resource`) next to the bus's view (config space).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bar {
    /// BAR index 0..=5.
    pub index: u8,
    /// CPU physical start address (`resource`).
    #[serde(serialize_with = "hex::u64")]
    pub cpu_start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Memory (not I/O) space.
    pub memory: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// 64-bit BAR.
    pub is_64: bool,
    /// The address the device decodes on the bus (config space), if readable and programmed.
    #[serde(serialize_with = "hex::opt_u64")]
    pub bus_address: Option<u64>,
}

impl Bar {
    /// Bus address minus CPU address, when the two differ.
    pub fn bus_offset(&self) -> Option<i128> {
        let bus = self.bus_address?;
        (bus != self.cpu_start).then(|| bus as i128 - self.cpu_start as i128)
    }
}

/// One PCI function.
#[derive(Debug, Clone, Serialize)]
pub struct PciFunction {
    /// Its address.
    pub bdf: Bdf,
    /// The host bridge it sits under (`pciDDDD:BB`, the top of its sysfs path).
    pub host_bridge: String,
    /// The function whose sysfs directory holds this one (the bridge above it; for a VF the
    /// bridge above its PF), `None` on a root bus.
    pub parent: Option<Bdf>,
    /// Vendor ID.
    #[serde(serialize_with = "hex::u16")]
    pub vendor: u16,
    /// Device ID.
    #[serde(serialize_with = "hex::u16")]
    pub device: u16,
    /// Class code (base, sub, prog-if).
    #[serde(serialize_with = "hex::u32")]
    pub class: u32,
    /// Subsystem vendor ID.
    #[serde(serialize_with = "hex::u16")]
    pub subsystem_vendor: u16,
    /// Subsystem device ID.
    #[serde(serialize_with = "hex::u16")]
    pub subsystem_device: u16,
    /// Header type 0 (endpoint), 1 (bridge), 2 (CardBus), if readable.
    pub header_type: Option<u8>,
    /// The multi-function bit of the header.
    pub multifunction: bool,
    /// PCIe Device/Port Type (`None`: no PCIe capability or unreadable).
    pub port_type: Option<PortType>,
    /// How many bytes of `config` were readable (64 without root, 256 for conventional PCI,
    /// 4096 with extended space).
    pub config_bytes: usize,
    /// The ACS extended capability.
    pub acs: AcsState,
    /// Memory and I/O BARs.
    pub bars: Vec<Bar>,
    /// Current link (`current_link_speed`/`current_link_width`).
    pub current_link: Option<Link>,
    /// Maximum link (`max_link_speed`/`max_link_width`).
    pub max_link: Option<Link>,
    /// The SR-IOV physical function of a virtual function (`physfn`).
    pub physfn: Option<Bdf>,
    /// IOMMU group number.
    pub iommu_group: Option<u32>,
    /// The group's default domain type (`DMA`, `DMA-FQ`, `identity`, `blocked`...).
    pub iommu_type: Option<String>,
    /// NUMA node (`None` when sysfs says -1 or nothing).
    pub numa_node: Option<u32>,
    /// The bound driver.
    pub driver: Option<String>,
    /// Size of memory the kernel publishes as p2pmem (`p2pmem/size`).
    pub p2pmem_size: Option<u64>,
}

impl PciFunction {
    /// A short class description.
    pub fn class_name(&self) -> &'static str {
        match self.class >> 8 {
            0x0108 if self.class & 0xff == 0x02 => "NVMe SSD",
            0x0108 => "non-volatile memory controller",
            0x0200 => "Ethernet controller",
            0x0207 => "InfiniBand controller",
            0x0600 => "host bridge",
            0x0601 => "ISA bridge",
            0x0604 => "PCI bridge",
            0x0c03 => "USB controller",
            c => match c >> 8 {
                0x01 => "storage controller",
                0x02 => "network controller",
                0x03 => "display controller",
                0x05 => "memory controller",
                0x06 => "bridge",
                0x0c => "serial bus controller",
                0x12 => "processing accelerator",
                _ => "device",
            },
        }
    }

    /// Whether this is an NVMe controller (class 01:08:02).
    pub fn is_nvme(&self) -> bool {
        self.class == 0x010802
    }

    /// The ACS Control bits Linux's `pci_bridge_has_acs_redir()` would see: `Some(bits)` with
    /// the redirect bits that are set (possibly 0), `None` when the state cannot be read.
    pub fn acs_redirect_bits(&self) -> Option<u16> {
        match self.acs {
            AcsState::Absent => Some(0),
            AcsState::Present { control, .. } => Some(control & ACS_REDIRECT_BITS),
            AcsState::Unreadable => {
                // Single-function endpoints need no ACS (PCIe base §6.12.1.2): a 64-byte
                // config read says enough for those.
                if self.header_type == Some(0) && !self.multifunction {
                    Some(0)
                } else {
                    None
                }
            }
        }
    }
}

/// A GID of an RDMA port and the network device it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gid {
    /// Index in the port's table.
    pub index: u32,
    /// The GID as an IPv6 address (RoCE: the interface address, IPv4-mapped for IPv4).
    pub gid: Ipv6Addr,
    /// `gid_attrs/ndevs/N`.
    pub netdev: Option<String>,
}

/// One port of an RDMA device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RdmaPort {
    /// Port number (from 1).
    pub port: u32,
    /// `link_layer`: `Ethernet` (RoCE/iWARP) or `InfiniBand`.
    pub link_layer: Option<String>,
    /// Non-zero GIDs.
    pub gids: Vec<Gid>,
}

/// An RDMA device (`/sys/class/infiniband/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RdmaDevice {
    /// Kernel name (`mlx5_0`, `rxe0`).
    pub name: String,
    /// The PCI function that does its DMA, `None` for a software device or one on another bus
    /// (a platform device).
    pub pci: Option<Bdf>,
    /// Set for software devices: `rxe`, `siw` or `software`.
    pub software: Option<String>,
    /// The network device a software device runs on (`parent`).
    pub parent_netdev: Option<String>,
    /// Ports and GIDs.
    pub ports: Vec<RdmaPort>,
}

/// The whole model.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    /// Every PCI function, by address.
    pub functions: BTreeMap<Bdf, PciFunction>,
    /// Every RDMA device.
    pub rdma: Vec<RdmaDevice>,
    /// The boot CPU.
    pub cpu: CpuInfo,
    /// Kernel parameters that matter.
    pub kernel: KernelParams,
    /// Non-fatal problems met while reading (unreadable files), for the report.
    pub warnings: Vec<String>,
    #[serde(skip)]
    sysfs: PathBuf,
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_hex(p: &Path) -> Option<u64> {
    let s = read_trim(p)?;
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

fn link_name(p: &Path) -> Option<String> {
    let t = fs::read_link(p).ok()?;
    Some(t.file_name()?.to_string_lossy().into_owned())
}

fn parse_speed(s: &str) -> Option<f64> {
    // "8.0 GT/s PCIe", "8 GT/s", "2.5 GT/s", "Unknown" / "Unknown speed".
    s.split_whitespace().next()?.parse().ok()
}

fn read_link(dir: &Path, prefix: &str) -> Option<Link> {
    let speed = read_trim(&dir.join(format!("{prefix}_link_speed")));
    let width = read_trim(&dir.join(format!("{prefix}_link_width")));
    if speed.is_none() && width.is_none() {
        return None;
    }
    Some(Link {
        speed_gts: speed.as_deref().and_then(parse_speed),
        width: width.and_then(|w| w.parse().ok()).filter(|w| *w > 0),
    })
}

// Linux IORESOURCE_* flags in `resource`.
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

fn parse_resource(text: &str, cs: &ConfigSpace) -> Vec<Bar> {
    let cfg = cs.bars();
    let mut out = Vec::new();
    for (i, line) in text.lines().take(6).enumerate() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok())
            .collect();
        let [start, end, flags] = f[..] else {
            continue;
        };
        if flags & (IORESOURCE_IO | IORESOURCE_MEM) == 0 || end <= start {
            continue;
        }
        let bus = cfg.iter().find(|b| b.index as usize == i);
        out.push(Bar {
            index: i as u8,
            cpu_start: start,
            size: end - start + 1,
            memory: flags & IORESOURCE_MEM != 0,
            prefetchable: flags & IORESOURCE_PREFETCH != 0,
            is_64: flags & IORESOURCE_MEM_64 != 0,
            bus_address: bus.map(|b| b.bus_address),
        });
    }
    out
}

impl Topology {
    /// Reads the model from `src`. A missing sysfs tree is an error; unreadable details
    /// become `None` fields and entries in `warnings`.
    pub fn load(src: &Sources) -> std::io::Result<Topology> {
        let devices = src.sysfs.join("devices");
        let mut topo = Topology {
            functions: BTreeMap::new(),
            rdma: Vec::new(),
            cpu: CpuInfo::parse(&fs::read_to_string(&src.cpuinfo).unwrap_or_default()),
            kernel: KernelParams::parse(&fs::read_to_string(&src.cmdline).unwrap_or_default()),
            warnings: Vec::new(),
            sysfs: src.sysfs.clone(),
        };
        let mut hosts: Vec<(String, PathBuf)> = Vec::new();
        for e in fs::read_dir(&devices)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pci") && e.file_type()?.is_dir() {
                hosts.push((name, e.path()));
            }
        }
        hosts.sort();
        for (host, path) in hosts {
            topo.scan(&host, &path, None);
        }
        topo.load_rdma();
        Ok(topo)
    }

    fn scan(&mut self, host: &str, dir: &Path, parent: Option<Bdf>) {
        let Ok(rd) = fs::read_dir(dir) else {
            return;
        };
        let mut kids: Vec<(Bdf, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let bdf: Bdf = e.file_name().to_str()?.parse().ok()?;
                Some((bdf, e.path()))
            })
            .collect();
        kids.sort();
        for (bdf, path) in kids {
            if !path.join("vendor").exists() {
                continue;
            }
            let f = self.read_function(host, bdf, &path, parent);
            self.functions.insert(bdf, f);
            self.scan(host, &path, Some(bdf));
        }
    }

    fn read_function(
        &mut self,
        host: &str,
        bdf: Bdf,
        dir: &Path,
        parent: Option<Bdf>,
    ) -> PciFunction {
        let config = fs::read(dir.join("config")).unwrap_or_else(|e| {
            self.warnings
                .push(format!("{bdf}: cannot read config: {e}"));
            Vec::new()
        });
        let cs = ConfigSpace::new(config);
        let id16 = |n: &str| read_hex(&dir.join(n)).map(|v| v as u16).unwrap_or(0);
        let iommu_group: Option<u32> =
            link_name(&dir.join("iommu_group")).and_then(|n| n.parse().ok());
        let iommu_type = iommu_group.and_then(|g| {
            read_trim(
                &self
                    .sysfs
                    .join("kernel/iommu_groups")
                    .join(g.to_string())
                    .join("type"),
            )
        });
        let numa_node = read_trim(&dir.join("numa_node"))
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|n| u32::try_from(n).ok());
        PciFunction {
            bdf,
            host_bridge: host.to_string(),
            parent,
            vendor: id16("vendor"),
            device: id16("device"),
            class: read_hex(&dir.join("class")).unwrap_or(0) as u32,
            subsystem_vendor: id16("subsystem_vendor"),
            subsystem_device: id16("subsystem_device"),
            header_type: cs.header_type(),
            multifunction: cs.multifunction(),
            port_type: cs.port_type().ok().flatten(),
            config_bytes: cs.len(),
            acs: cs.acs(),
            bars: parse_resource(
                &fs::read_to_string(dir.join("resource")).unwrap_or_default(),
                &cs,
            ),
            current_link: read_link(dir, "current"),
            max_link: read_link(dir, "max"),
            physfn: link_name(&dir.join("physfn")).and_then(|n| n.parse().ok()),
            iommu_group,
            iommu_type,
            numa_node,
            driver: link_name(&dir.join("driver")),
            p2pmem_size: read_trim(&dir.join("p2pmem/size")).and_then(|s| s.parse().ok()),
        }
    }

    fn load_rdma(&mut self) {
        let class = self.sysfs.join("class/infiniband");
        let Ok(rd) = fs::read_dir(&class) else {
            return;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let dir = class.join(&name);
            let pci = link_name(&dir.join("device"))
                .and_then(|n| n.parse::<Bdf>().ok())
                .filter(|b| self.functions.contains_key(b));
            let parent_netdev = read_trim(&dir.join("parent"));
            // rxe and siw have no `device` link (they do no DMA of their own) and name their
            // network device in `parent`; their default names say which they are.
            let software = if name.starts_with("rxe") {
                Some("rxe".to_string())
            } else if name.starts_with("siw") {
                Some("siw".to_string())
            } else if parent_netdev.is_some() {
                Some("software".to_string())
            } else {
                None
            };
            let ports = read_ports(&dir.join("ports"));
            self.rdma.push(RdmaDevice {
                name,
                pci: if software.is_some() { None } else { pci },
                software,
                parent_netdev,
                ports,
            });
        }
    }

    /// The function at `bdf`.
    pub fn get(&self, bdf: Bdf) -> Option<&PciFunction> {
        self.functions.get(&bdf)
    }

    /// Linux `pci_upstream_bridge()`: the bridge above the function (for a VF, the bridge
    /// above its PF), `None` on a root bus.
    pub fn upstream_bridge(&self, bdf: Bdf) -> Option<Bdf> {
        let f = self.get(bdf)?;
        let base = match f.physfn {
            Some(pf) => self.get(pf).unwrap_or(f),
            None => f,
        };
        base.parent
    }

    /// `bdf` followed by every upstream bridge to the root bus.
    pub fn chain(&self, bdf: Bdf) -> Vec<Bdf> {
        let mut v = vec![bdf];
        let mut cur = bdf;
        while let Some(up) = self.upstream_bridge(cur) {
            if v.contains(&up) || v.len() > 64 {
                break;
            }
            v.push(up);
            cur = up;
        }
        v
    }

    /// Linux `pci_host_bridge_dev()`: the first function on the host bridge's root bus, if it
    /// is devfn 00.0 or a root port; the whitelist is checked against it.
    pub fn host_bridge_device(&self, host: &str) -> Option<&PciFunction> {
        let first = self
            .functions
            .values()
            .filter(|f| f.host_bridge == host && f.parent.is_none() && f.physfn.is_none())
            .min_by_key(|f| (f.bdf.bus, f.bdf.devfn()))?;
        (first.bdf.devfn() == 0 || first.port_type == Some(PortType::RootPort)).then_some(first)
    }

    /// Whether one `pci_dev_str_match()` entry names `bdf`.
    pub fn dev_matches(&self, m: &DevMatch, bdf: Bdf) -> bool {
        let Some(f) = self.get(bdf) else {
            return false;
        };
        match m {
            DevMatch::Ids {
                vendor,
                device,
                subsystem_vendor,
                subsystem_device,
            } => {
                (*vendor == 0 || *vendor == f.vendor)
                    && (*device == 0 || *device == f.device)
                    && (*subsystem_vendor == 0 || *subsystem_vendor == f.subsystem_vendor)
                    && (*subsystem_device == 0 || *subsystem_device == f.subsystem_device)
            }
            DevMatch::Path {
                domain,
                bus,
                devfns,
            } => {
                // The last element names `bdf`; each earlier one its upstream bridge; the
                // first also gives segment and bus.
                let mut cur = bdf;
                for (i, devfn) in devfns.iter().enumerate().rev() {
                    if cur.devfn() != *devfn {
                        return false;
                    }
                    if i == 0 {
                        return cur.domain == *domain && cur.bus == *bus;
                    }
                    match self.upstream_bridge(cur) {
                        Some(up) => cur = up,
                        None => return false,
                    }
                }
                false
            }
        }
    }

    /// Whether `pci=disable_acs_redir=` names `bdf`.
    pub fn acs_redir_disabled_by_param(&self, bdf: Bdf) -> bool {
        self.kernel
            .disable_acs_redir
            .entries
            .iter()
            .any(|m| self.dev_matches(m, bdf))
    }

    /// The RDMA device called `name`.
    pub fn rdma_device(&self, name: &str) -> Option<&RdmaDevice> {
        self.rdma.iter().find(|d| d.name == name)
    }

    /// The RDMA devices an rdma_cm listener on `addr` binds to: the ones with a GID equal to
    /// the address (RoCE keeps each interface address as a GID, IPv4 as `::ffff:a.b.c.d`);
    /// every device for the unspecified address.
    pub fn rdma_devices_for_address(&self, addr: IpAddr) -> Vec<&RdmaDevice> {
        if addr.is_unspecified() {
            return self.rdma.iter().collect();
        }
        let want = match addr {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        self.rdma
            .iter()
            .filter(|d| d.ports.iter().any(|p| p.gids.iter().any(|g| g.gid == want)))
            .collect()
    }

    /// The PCI function behind a kernel NVMe block or generic device (`nvme0n1`, `/dev/ng0n1`,
    /// a partition), from its sysfs path; through `multipath/` for a native-multipath head.
    pub fn nvme_device_bdf(&self, dev: &str) -> Option<Bdf> {
        let name = Path::new(dev).file_name()?.to_str()?;
        for class in ["class/block", "block", "class/nvme-generic"] {
            let p = self.sysfs.join(class).join(name);
            let Ok(real) = fs::canonicalize(&p) else {
                continue;
            };
            if let Some(b) = last_bdf(&real) {
                return Some(b);
            }
            if let Ok(rd) = fs::read_dir(real.join("multipath")) {
                let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
                paths.sort();
                for p in paths {
                    if let Some(b) = fs::canonicalize(&p).ok().as_deref().and_then(last_bdf) {
                        return Some(b);
                    }
                }
            }
        }
        None
    }

    /// Every NVMe controller function.
    pub fn nvme_functions(&self) -> Vec<&PciFunction> {
        self.functions.values().filter(|f| f.is_nvme()).collect()
    }
}

fn last_bdf(p: &Path) -> Option<Bdf> {
    p.components()
        .rev()
        .find_map(|c| c.as_os_str().to_str()?.parse::<Bdf>().ok())
}

fn parse_gid(s: &str) -> Option<Ipv6Addr> {
    s.trim().parse().ok()
}

fn read_ports(dir: &Path) -> Vec<RdmaPort> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ports: Vec<RdmaPort> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let port: u32 = e.file_name().to_str()?.parse().ok()?;
            let pdir = e.path();
            let mut gids = Vec::new();
            if let Ok(g) = fs::read_dir(pdir.join("gids")) {
                for ge in g.filter_map(|e| e.ok()) {
                    let Some(index) = ge.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    let Some(gid) = read_trim(&ge.path()).as_deref().and_then(parse_gid) else {
                        continue;
                    };
                    if gid.is_unspecified() {
                        continue;
                    }
                    let netdev = read_trim(&pdir.join("gid_attrs/ndevs").join(index.to_string()));
                    gids.push(Gid { index, gid, netdev });
                }
            }
            gids.sort_by_key(|g| g.index);
            Some(RdmaPort {
                port,
                link_layer: read_trim(&pdir.join("link_layer")),
                gids,
            })
        })
        .collect();
    ports.sort_by_key(|p| p.port);
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_bandwidth_accounts_for_encoding() {
        let gen1 = Link {
            speed_gts: Some(2.5),
            width: Some(1),
        };
        assert!((gen1.gbps().unwrap() - 2.0).abs() < 1e-9);
        let gen3 = Link {
            speed_gts: Some(8.0),
            width: Some(4),
        };
        assert!((gen3.gbps().unwrap() - 31.5077).abs() < 1e-3);
        assert_eq!(
            Link {
                speed_gts: None,
                width: Some(4)
            }
            .gbps(),
            None
        );
        assert_eq!(parse_speed("16.0 GT/s PCIe"), Some(16.0));
        assert_eq!(parse_speed("Unknown"), None);
    }

    #[test]
    fn link_json_carries_its_bandwidth() {
        // 16 GT/s x8, 128b/130b: 16 x 8 x 128 / 130 = 126.0307... Gbit/s.
        let v = serde_json::to_value(Link {
            speed_gts: Some(16.0),
            width: Some(8),
        })
        .unwrap();
        assert_eq!(v["speed_gts"], 16.0);
        assert_eq!(v["width"], 8);
        assert!((v["gbps"].as_f64().unwrap() - 16.0 * 8.0 * 128.0 / 130.0).abs() < 1e-9);
        // 64 GT/s x4 in FLIT mode, 242/256: 242 Gbit/s.
        let flit = serde_json::to_value(Link {
            speed_gts: Some(64.0),
            width: Some(4),
        })
        .unwrap();
        assert!((flit["gbps"].as_f64().unwrap() - 242.0).abs() < 1e-9);
        // Unknown speed: the key is there, null.
        let unknown = serde_json::to_value(Link {
            speed_gts: None,
            width: Some(4),
        })
        .unwrap();
        assert!(unknown.as_object().unwrap().contains_key("gbps"));
        assert!(unknown["gbps"].is_null());
    }

    #[test]
    fn parses_gids_as_sysfs_prints_them() {
        assert_eq!(
            parse_gid("0000:0000:0000:0000:0000:ffff:0a00:020f\n"),
            Some("::ffff:10.0.2.15".parse().unwrap())
        );
    }
}
