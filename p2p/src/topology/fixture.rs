//! Builds small sysfs/proc trees in a directory, for tests (here and in other crates) and for
//! trying `nvmfd topology --sysfs-root` without the hardware.
//!
//! The files are the ones [`Topology::load`](super::Topology::load) reads, in the kernel's
//! formats: `vendor`, `device`, `class` (hex), binary `config` (4096 bytes, or 64 to play a
//! non-root reader), `resource`, `current_link_*`/`max_link_*`, `numa_node`, and the
//! `iommu_group`, `driver`, `physfn` symlinks; `class/infiniband/DEV` with `device`, `parent`
//! and `ports/N/gids`; `class/block/NAME` and `class/net/NAME` links.

use super::bdf::Bdf;
use super::model::Sources;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// What a function is, for its config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PCIe endpoint (type 0 header, PCIe capability type 0).
    Endpoint,
    /// Root complex integrated endpoint / host bridge (type 0, PCIe capability type 9).
    Integrated,
    /// Conventional PCI function without a PCIe capability (type 0).
    Conventional,
    /// Root port (type 1, PCIe type 4).
    RootPort,
    /// Switch upstream port (type 1, PCIe type 5).
    SwitchUpstream,
    /// Switch downstream port (type 1, PCIe type 6).
    SwitchDownstream,
}

/// One BAR of a fixture function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixtureBar {
    /// Index 0..=5.
    pub index: u8,
    /// CPU address (`resource`).
    pub cpu: u64,
    /// Bus address (config space); equal to `cpu` unless the host bridge offsets it.
    pub bus: u64,
    /// Size in bytes.
    pub size: u64,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// A function to write.
#[derive(Debug, Clone)]
pub struct Func {
    /// Address.
    pub bdf: Bdf,
    /// The bridge above it (`None`: on the root bus of `host`).
    pub parent: Option<Bdf>,
    /// Host bridge directory name, `pci0000:00` by default.
    pub host: String,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code.
    pub class: u32,
    /// Config-space kind.
    pub kind: Kind,
    /// ACS extended capability Control register (`None`: no ACS capability).
    pub acs_ctrl: Option<u16>,
    /// Memory BARs (64-bit).
    pub bars: Vec<FixtureBar>,
    /// Current link (GT/s, width).
    pub link: Option<(f64, u32)>,
    /// Maximum link (GT/s, width); defaults to `link`.
    pub max_link: Option<(f64, u32)>,
    /// SR-IOV PF of a VF.
    pub physfn: Option<Bdf>,
    /// IOMMU group and its type.
    pub iommu: Option<(u32, String)>,
    /// NUMA node (-1 for none).
    pub numa: i32,
    /// Bound driver.
    pub driver: Option<String>,
    /// Multi-function header bit.
    pub multifunction: bool,
    /// How many bytes of `config` to write (4096; 64 plays a non-root reader).
    pub config_len: usize,
}

impl Func {
    /// A function at `bdf` (given as text) of `kind`.
    pub fn new(bdf: &str, kind: Kind, vendor: u16, device: u16, class: u32) -> Func {
        Func {
            bdf: bdf.parse().expect("fixture BDF"),
            parent: None,
            host: "pci0000:00".into(),
            vendor,
            device,
            class,
            kind,
            acs_ctrl: None,
            bars: Vec::new(),
            link: None,
            max_link: None,
            physfn: None,
            iommu: None,
            numa: -1,
            driver: None,
            multifunction: false,
            config_len: 4096,
        }
    }

    /// A root port (`pcieport`).
    pub fn root_port(bdf: &str, vendor: u16, device: u16) -> Func {
        Func::new(bdf, Kind::RootPort, vendor, device, 0x060400).driver("pcieport")
    }

    /// A switch upstream port.
    pub fn upstream(bdf: &str, parent: &str) -> Func {
        Func::new(bdf, Kind::SwitchUpstream, 0x104c, 0x8232, 0x060400)
            .under(parent)
            .driver("pcieport")
    }

    /// A switch downstream port.
    pub fn downstream(bdf: &str, parent: &str) -> Func {
        Func::new(bdf, Kind::SwitchDownstream, 0x104c, 0x8233, 0x060400)
            .under(parent)
            .driver("pcieport")
    }

    /// An NVMe SSD (QEMU's 1b36:0010) with BAR0 registers and a 64 MiB prefetchable BAR2 (the
    /// CMB), driver `nvme`.
    pub fn nvme(bdf: &str, parent: Option<&str>, bar_base: u64) -> Func {
        let mut f = Func::new(bdf, Kind::Endpoint, 0x1b36, 0x0010, 0x010802)
            .driver("nvme")
            .bar(0, bar_base, 0x4000, false)
            .bar(2, bar_base + 0x0400_0000, 0x0400_0000, true)
            .link(8.0, 4);
        if let Some(p) = parent {
            f = f.under(p);
        }
        f
    }

    /// An RDMA NIC (ConnectX-5 15b3:1017, driver `mlx5_core`).
    pub fn nic(bdf: &str, parent: Option<&str>, bar_base: u64) -> Func {
        let mut f = Func::new(bdf, Kind::Endpoint, 0x15b3, 0x1017, 0x020000)
            .driver("mlx5_core")
            .bar(0, bar_base, 0x0200_0000, true)
            .link(8.0, 16);
        if let Some(p) = parent {
            f = f.under(p);
        }
        f
    }

    /// Puts it below `parent`.
    pub fn under(mut self, parent: &str) -> Func {
        self.parent = Some(parent.parse().expect("fixture parent BDF"));
        self
    }

    /// Puts it on another host bridge (`pci0000:80`...).
    pub fn host(mut self, host: &str) -> Func {
        self.host = host.into();
        self
    }

    /// Gives it an ACS capability with this Control register.
    pub fn acs(mut self, ctrl: u16) -> Func {
        self.acs_ctrl = Some(ctrl);
        self
    }

    /// Adds a 64-bit memory BAR whose bus address equals its CPU address.
    pub fn bar(mut self, index: u8, cpu: u64, size: u64, prefetchable: bool) -> Func {
        self.bars.push(FixtureBar {
            index,
            cpu,
            bus: cpu,
            size,
            prefetchable,
        });
        self
    }

    /// Makes every BAR's bus address `cpu + offset` (a host bridge with a bus offset).
    pub fn bus_offset(mut self, offset: i64) -> Func {
        for b in &mut self.bars {
            b.bus = (b.cpu as i64 + offset) as u64;
        }
        self
    }

    /// Sets current (and, unless set later, max) link.
    pub fn link(mut self, gts: f64, width: u32) -> Func {
        self.link = Some((gts, width));
        self
    }

    /// Sets the max link.
    pub fn max_link(mut self, gts: f64, width: u32) -> Func {
        self.max_link = Some((gts, width));
        self
    }

    /// Marks it an SR-IOV VF of `pf`.
    pub fn vf_of(mut self, pf: &str) -> Func {
        self.physfn = Some(pf.parse().expect("fixture PF BDF"));
        self
    }

    /// Sets IOMMU group and type.
    pub fn iommu(mut self, group: u32, kind: &str) -> Func {
        self.iommu = Some((group, kind.into()));
        self
    }

    /// Sets the NUMA node.
    pub fn numa(mut self, node: i32) -> Func {
        self.numa = node;
        self
    }

    /// Sets the bound driver.
    pub fn driver(mut self, name: &str) -> Func {
        self.driver = Some(name.into());
        self
    }

    /// Sets the multi-function bit.
    pub fn multifunction(mut self) -> Func {
        self.multifunction = true;
        self
    }

    /// Writes only the first `n` bytes of config (64 = what a non-root reader gets).
    pub fn config_len(mut self, n: usize) -> Func {
        self.config_len = n;
        self
    }

    /// The binary config space.
    pub fn config_bytes(&self) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        c[0..2].copy_from_slice(&self.vendor.to_le_bytes());
        c[2..4].copy_from_slice(&self.device.to_le_bytes());
        c[0x04] = 0x06; // memory space + bus master
        c[0x09] = (self.class & 0xff) as u8;
        c[0x0a] = ((self.class >> 8) & 0xff) as u8;
        c[0x0b] = ((self.class >> 16) & 0xff) as u8;
        let bridge = matches!(
            self.kind,
            Kind::RootPort | Kind::SwitchUpstream | Kind::SwitchDownstream
        );
        c[0x0e] = u8::from(bridge) | if self.multifunction { 0x80 } else { 0 };
        let pcie_type = match self.kind {
            Kind::Endpoint => Some(0u8),
            Kind::Integrated => Some(9),
            Kind::Conventional => None,
            Kind::RootPort => Some(4),
            Kind::SwitchUpstream => Some(5),
            Kind::SwitchDownstream => Some(6),
        };
        if let Some(t) = pcie_type {
            c[0x06] = 0x10; // capabilities list
            c[0x34] = 0x40;
            // Power management at 0x40, then PCI Express at 0x60.
            c[0x40] = 0x01;
            c[0x41] = 0x60;
            c[0x60] = 0x10;
            c[0x61] = 0x00;
            c[0x62] = (t << 4) | 2;
        }
        if let Some(ctrl) = self.acs_ctrl {
            // AER at 0x100 pointing to ACS at 0x148.
            c[0x100..0x104].copy_from_slice(&(0x0001u32 | (2 << 16) | (0x148 << 20)).to_le_bytes());
            c[0x148..0x14c].copy_from_slice(&(0x000du32 | (1 << 16)).to_le_bytes());
            c[0x14c..0x14e].copy_from_slice(&0x005fu16.to_le_bytes());
            c[0x14e..0x150].copy_from_slice(&ctrl.to_le_bytes());
        }
        let max_bars = if bridge { 2 } else { 6 };
        for b in &self.bars {
            let i = b.index as usize;
            assert!(
                i + 1 < max_bars || (i < max_bars && b.bus >> 32 == 0),
                "BAR slot"
            );
            let lo = (b.bus as u32 & !0xf) | 0x4 | if b.prefetchable { 0x8 } else { 0 };
            c[0x10 + 4 * i..0x14 + 4 * i].copy_from_slice(&lo.to_le_bytes());
            c[0x14 + 4 * i..0x18 + 4 * i].copy_from_slice(&((b.bus >> 32) as u32).to_le_bytes());
        }
        c.truncate(self.config_len);
        c
    }
}

/// A fixture tree: `ROOT/sys` and `ROOT/proc`.
#[derive(Debug)]
pub struct Fixture {
    root: PathBuf,
    dirs: BTreeMap<Bdf, PathBuf>,
}

fn speed_text(gts: f64) -> String {
    format!("{gts:.1} GT/s PCIe")
}

impl Fixture {
    /// Creates `root/sys/devices` and a `proc` with an Intel CPU and an empty command line.
    pub fn new(root: &Path) -> io::Result<Fixture> {
        fs::create_dir_all(root.join("sys/devices"))?;
        fs::create_dir_all(root.join("proc"))?;
        let f = Fixture {
            root: root.to_path_buf(),
            dirs: BTreeMap::new(),
        };
        f.cpuinfo("GenuineIntel", 6)?;
        f.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/vda ro")?;
        Ok(f)
    }

    /// The sysfs directory.
    pub fn sysfs(&self) -> PathBuf {
        self.root.join("sys")
    }

    /// The proc directory.
    pub fn proc_dir(&self) -> PathBuf {
        self.root.join("proc")
    }

    /// [`Sources`] for [`Topology::load`](super::Topology::load).
    pub fn sources(&self) -> Sources {
        Sources::new(&self.sysfs(), &self.proc_dir())
    }

    /// Writes `proc/cpuinfo` for two processors of `vendor` and `family`.
    pub fn cpuinfo(&self, vendor: &str, family: u32) -> io::Result<()> {
        let block = |n: u32| {
            format!(
                "processor\t: {n}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 1\nmodel name\t: fixture CPU\n\n"
            )
        };
        fs::write(self.root.join("proc/cpuinfo"), block(0) + &block(1))
    }

    /// Writes `proc/cmdline`.
    pub fn cmdline(&self, line: &str) -> io::Result<()> {
        fs::write(self.root.join("proc/cmdline"), format!("{line}\n"))
    }

    /// The directory of an added function.
    pub fn dir(&self, bdf: &str) -> PathBuf {
        self.dirs[&bdf.parse::<Bdf>().expect("BDF")].clone()
    }

    /// Writes one function (its parent first).
    pub fn add(&mut self, f: Func) -> io::Result<PathBuf> {
        let base = match (f.parent, f.physfn) {
            // A VF's sysfs directory sits next to its PF's.
            (_, Some(pf)) => self.dirs[&pf]
                .parent()
                .expect("PF has a parent directory")
                .to_path_buf(),
            (Some(p), None) => self
                .dirs
                .get(&p)
                .cloned()
                .unwrap_or_else(|| panic!("fixture: add the parent {p} before {}", f.bdf)),
            (None, None) => self.sysfs().join("devices").join(&f.host),
        };
        let dir = base.join(f.bdf.to_string());
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("vendor"), format!("0x{:04x}\n", f.vendor))?;
        fs::write(dir.join("device"), format!("0x{:04x}\n", f.device))?;
        fs::write(dir.join("class"), format!("0x{:06x}\n", f.class))?;
        fs::write(
            dir.join("subsystem_vendor"),
            format!("0x{:04x}\n", f.vendor),
        )?;
        fs::write(dir.join("subsystem_device"), "0x0000\n")?;
        fs::write(dir.join("config"), f.config_bytes())?;
        let mut res = String::new();
        for i in 0..13u8 {
            match f.bars.iter().find(|b| b.index == i) {
                Some(b) => {
                    let flags = 0x0014_0204u64 | if b.prefetchable { 0x2000 } else { 0 };
                    res.push_str(&format!(
                        "0x{:016x} 0x{:016x} 0x{:016x}\n",
                        b.cpu,
                        b.cpu + b.size - 1,
                        flags
                    ));
                }
                None => res.push_str(&format!("0x{0:016x} 0x{0:016x} 0x{0:016x}\n", 0)),
            }
        }
        fs::write(dir.join("resource"), res)?;
        fs::write(dir.join("numa_node"), format!("{}\n", f.numa))?;
        if let Some((s, w)) = f.link {
            let (ms, mw) = f.max_link.unwrap_or((s, w));
            fs::write(dir.join("current_link_speed"), speed_text(s) + "\n")?;
            fs::write(dir.join("current_link_width"), format!("{w}\n"))?;
            fs::write(dir.join("max_link_speed"), speed_text(ms) + "\n")?;
            fs::write(dir.join("max_link_width"), format!("{mw}\n"))?;
        }
        if let Some((g, kind)) = &f.iommu {
            let gdir = self.sysfs().join("kernel/iommu_groups").join(g.to_string());
            fs::create_dir_all(gdir.join("devices"))?;
            fs::write(gdir.join("type"), format!("{kind}\n"))?;
            symlink(&gdir, dir.join("iommu_group"))?;
        }
        if let Some(d) = &f.driver {
            let ddir = self.sysfs().join("bus/pci/drivers").join(d);
            fs::create_dir_all(&ddir)?;
            symlink(&ddir, dir.join("driver"))?;
        }
        if let Some(pf) = f.physfn {
            symlink(Path::new("..").join(pf.to_string()), dir.join("physfn"))?;
        }
        let bus_link = self.sysfs().join("bus/pci/devices");
        fs::create_dir_all(&bus_link)?;
        symlink(&dir, bus_link.join(f.bdf.to_string()))?;
        self.dirs.insert(f.bdf, dir.clone());
        Ok(dir)
    }

    /// Adds an RDMA device. `pci`: the function that does its DMA (hardware); `None` makes a
    /// software device under `devices/virtual` whose `parent` names `netdev`. Each GID is
    /// `(port, address, netdev)`.
    pub fn rdma(
        &self,
        name: &str,
        pci: Option<&str>,
        netdev: &str,
        gids: &[(u32, IpAddr)],
    ) -> io::Result<()> {
        let dir = match pci {
            Some(b) => self.dir(b).join("infiniband").join(name),
            None => self.sysfs().join("devices/virtual/infiniband").join(name),
        };
        fs::create_dir_all(&dir)?;
        match pci {
            Some(b) => symlink(self.dir(b), dir.join("device"))?,
            None => fs::write(dir.join("parent"), format!("{netdev}\n"))?,
        }
        fs::write(dir.join("node_type"), "1: CA\n")?;
        let mut ports: BTreeMap<u32, u32> = BTreeMap::new();
        for (port, addr) in gids {
            let pdir = dir.join("ports").join(port.to_string());
            fs::create_dir_all(pdir.join("gids"))?;
            fs::create_dir_all(pdir.join("gid_attrs/ndevs"))?;
            fs::write(pdir.join("link_layer"), "Ethernet\n")?;
            let idx = ports.entry(*port).or_insert(0);
            let v6 = match addr {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => *a,
            };
            let seg = v6.segments();
            let text: Vec<String> = seg.iter().map(|s| format!("{s:04x}")).collect();
            fs::write(
                pdir.join("gids").join(idx.to_string()),
                text.join(":") + "\n",
            )?;
            fs::write(
                pdir.join("gid_attrs/ndevs").join(idx.to_string()),
                format!("{netdev}\n"),
            )?;
            // An unused entry after it, as sysfs shows them.
            fs::write(
                pdir.join("gids").join((*idx + 1).to_string()),
                "0000:0000:0000:0000:0000:0000:0000:0000\n",
            )?;
            *idx += 2;
        }
        let class = self.sysfs().join("class/infiniband");
        fs::create_dir_all(&class)?;
        symlink(&dir, class.join(name))
    }

    /// Adds a network device `name` on function `bdf` (`class/net/NAME/device`).
    pub fn net(&self, name: &str, bdf: &str) -> io::Result<()> {
        let dir = self.dir(bdf).join("net").join(name);
        fs::create_dir_all(&dir)?;
        symlink(self.dir(bdf), dir.join("device"))?;
        let class = self.sysfs().join("class/net");
        fs::create_dir_all(&class)?;
        symlink(&dir, class.join(name))
    }

    /// Adds the kernel NVMe controller `ctrl` and its namespace block device `ns` on `bdf`.
    pub fn nvme_block(&self, bdf: &str, ctrl: &str, ns: &str) -> io::Result<()> {
        let dir = self.dir(bdf).join("nvme").join(ctrl).join(ns);
        fs::create_dir_all(&dir)?;
        let class = self.sysfs().join("class/block");
        fs::create_dir_all(&class)?;
        symlink(&dir, class.join(ns))
    }
}

/// The QEMU rig's guest as deploy/rig and shared/rig.md describe it: q35 (host bridge
/// 8086:29c0 at 00:00.0), an ioh3420 root port at 00:1c.0, an x3130 switch (upstream 01:00.0,
/// downstream 02:00.0 and 02:01.0, no ACS), the NVMe SSD with its 64 MiB CMB at 03:00.0 on the
/// first downstream port, a second endpoint (`peer`, an RDMA-capable NIC here) at 04:00.0 on the
/// second, a virtio-net at 00:02.0 carrying `rxe0`, all in one IOMMU group under intel-iommu.
pub fn rig_guest(root: &Path) -> io::Result<Fixture> {
    let mut fx = Fixture::new(root)?;
    fx.cpuinfo("GenuineIntel", 6)?;
    fx.cmdline("console=ttyS0 intel_iommu=on")?;
    fx.add(
        Func::new("0000:00:00.0", Kind::Conventional, 0x8086, 0x29c0, 0x060000).config_len(256),
    )?;
    fx.add(
        Func::new("0000:00:02.0", Kind::Endpoint, 0x1af4, 0x1041, 0x020000)
            .driver("virtio-pci")
            .bar(4, 0xfe00_0000, 0x4000, true)
            .iommu(1, "DMA"),
    )?;
    fx.add(
        Func::root_port("0000:00:1c.0", 0x8086, 0x3420)
            .link(2.5, 1)
            .max_link(2.5, 1)
            .iommu(2, "DMA"),
    )?;
    fx.add(
        Func::upstream("0000:01:00.0", "0000:00:1c.0")
            .link(2.5, 1)
            .iommu(2, "DMA"),
    )?;
    fx.add(
        Func::downstream("0000:02:00.0", "0000:01:00.0")
            .link(2.5, 1)
            .iommu(2, "DMA"),
    )?;
    fx.add(
        Func::downstream("0000:02:01.0", "0000:01:00.0")
            .link(2.5, 1)
            .iommu(2, "DMA"),
    )?;
    fx.add(
        Func::nvme("0000:03:00.0", Some("0000:02:00.0"), 0x1_0000_0000)
            .link(2.5, 1)
            .max_link(2.5, 1)
            .iommu(2, "DMA"),
    )?;
    fx.add(
        Func::nic("0000:04:00.0", Some("0000:02:01.0"), 0x1_1000_0000)
            .link(2.5, 1)
            .max_link(2.5, 1)
            .iommu(2, "DMA"),
    )?;
    fx.net("eth0", "0000:00:02.0")?;
    fx.rdma(
        "rxe0",
        None,
        "eth0",
        &[(1, "10.0.2.15".parse().expect("ip"))],
    )?;
    fx.nvme_block("0000:03:00.0", "nvme0", "nvme0n1")?;
    Ok(fx)
}
