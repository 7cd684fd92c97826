//! `nvmfd setup`: hand an NVMe SSD to vfio-pci and back, like SPDK's `scripts/setup.sh`.
//!
//! Binding goes through `driver_override` (the device alone, not every device with its IDs),
//! then `drivers_probe`. Unbinding from the kernel's nvme driver is refused while one of the
//! SSD's block devices (or a partition) is mounted or used as swap.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use crate::sysfs::{self, dev_path};

fn write_sysfs(path: impl AsRef<Path>, value: &str) -> io::Result<()> {
    let p = path.as_ref();
    fs::write(p, value)
        .map_err(|e| io::Error::new(e.kind(), format!("write {value:?} to {}: {e}", p.display())))
}

/// `major:minor` of every block device (namespaces and partitions) the kernel's nvme driver
/// made for `bdf`, with its name.
fn block_devices(bdf: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let nvme_dir = dev_path(bdf).join("nvme");
    for ctrl in fs::read_dir(nvme_dir).into_iter().flatten().flatten() {
        for ns in fs::read_dir(ctrl.path()).into_iter().flatten().flatten() {
            let name = ns.file_name().to_string_lossy().into_owned();
            if !name.starts_with("nvme") || !ns.path().join("dev").exists() {
                continue;
            }
            if let Ok(d) = fs::read_to_string(ns.path().join("dev")) {
                out.push((name.clone(), d.trim().to_owned()));
            }
            for part in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let pn = part.file_name().to_string_lossy().into_owned();
                if pn.starts_with(&name) {
                    if let Ok(d) = fs::read_to_string(part.path().join("dev")) {
                        out.push((pn, d.trim().to_owned()));
                    }
                }
            }
        }
    }
    out
}

/// Mount points and swap use of `bdf`'s block devices.
pub fn in_use(bdf: &str) -> Vec<String> {
    let devs = block_devices(bdf);
    let mut uses = vec![];
    if devs.is_empty() {
        return uses;
    }
    // /proc/self/mountinfo: field 3 is major:minor, field 5 the mount point.
    if let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") {
        for line in mi.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() > 4 {
                if let Some((name, _)) = devs.iter().find(|(_, mm)| mm == f[2]) {
                    uses.push(format!("/dev/{name} is mounted on {}", f[4]));
                }
            }
        }
    }
    if let Ok(sw) = fs::read_to_string("/proc/swaps") {
        for line in sw.lines().skip(1) {
            let dev = line.split_whitespace().next().unwrap_or("");
            if let Some((name, _)) = devs.iter().find(|(n, _)| dev == format!("/dev/{n}")) {
                uses.push(format!("/dev/{name} is in use as swap"));
            }
        }
    }
    uses
}

fn existing(bdf: &str) -> io::Result<String> {
    let bdf = sysfs::parse_bdf(bdf).map_err(io::Error::other)?;
    if !dev_path(&bdf).exists() {
        return Err(io::Error::other(format!(
            "PCI device {bdf} does not exist (`nvmfd setup --status` lists NVMe devices)"
        )));
    }
    Ok(bdf)
}

/// Bind `bdf` to vfio-pci. Returns what was done, for the user.
pub fn bind(bdf: &str) -> io::Result<String> {
    let bdf = existing(bdf)?;
    if sysfs::class(&bdf).is_some_and(|c| c >> 8 != sysfs::CLASS_NVME >> 8) {
        return Err(io::Error::other(format!(
            "PCI device {bdf} is not an NVMe controller (class {:#08x})",
            sysfs::class(&bdf).unwrap_or(0)
        )));
    }
    let cur = sysfs::driver(&bdf);
    if cur.as_deref() == Some("vfio-pci") {
        return Ok(format!(
            "{bdf}: already bound to vfio-pci{}",
            group_note(&bdf)
        ));
    }
    let uses = in_use(&bdf);
    if !uses.is_empty() {
        return Err(io::Error::other(format!(
            "refusing to unbind {bdf} from {}: {}; unmount it first",
            cur.as_deref().unwrap_or("its driver"),
            uses.join(", ")
        )));
    }
    if !Path::new("/sys/bus/pci/drivers/vfio-pci").exists() {
        return Err(io::Error::other(
            "the vfio-pci driver is not loaded: modprobe vfio-pci".to_string(),
        ));
    }
    let dir = dev_path(&bdf);
    write_sysfs(dir.join("driver_override"), "vfio-pci")?;
    if cur.is_some() {
        write_sysfs(dir.join("driver/unbind"), &bdf)?;
    }
    // drivers_probe fails with EINVAL-like errors when no driver takes it; the check below says
    // what happened.
    let probe = write_sysfs("/sys/bus/pci/drivers_probe", &bdf);
    match sysfs::driver(&bdf).as_deref() {
        Some("vfio-pci") => Ok(format!(
            "{bdf}: {} -> vfio-pci{}",
            cur.as_deref().unwrap_or("no driver"),
            group_note(&bdf)
        )),
        other => Err(io::Error::other(format!(
            "{bdf}: vfio-pci did not take the device (driver now {}){}",
            other.unwrap_or("none"),
            probe.err().map(|e| format!(": {e}")).unwrap_or_default()
        ))),
    }
}

fn group_note(bdf: &str) -> String {
    match sysfs::iommu_group(bdf) {
        None => ", no IOMMU group (no IOMMU enabled?)".into(),
        Some(g) => {
            let others: Vec<String> = sysfs::group_members(g)
                .into_iter()
                .filter(|(b, d)| {
                    b != bdf && !matches!(d.as_deref(), Some("vfio-pci") | Some("pcieport") | None)
                })
                .map(|(b, d)| format!("{b} ({})", d.unwrap_or_default()))
                .collect();
            if others.is_empty() {
                format!(", IOMMU group {g}")
            } else {
                format!(
                    ", IOMMU group {g} (not usable yet: also holds {}; bind those to vfio-pci too)",
                    others.join(", ")
                )
            }
        }
    }
}

/// Give `bdf` back to the kernel's nvme driver.
pub fn reset(bdf: &str) -> io::Result<String> {
    let bdf = existing(bdf)?;
    let cur = sysfs::driver(&bdf);
    let dir = dev_path(&bdf);
    write_sysfs(dir.join("driver_override"), "\n")?;
    if cur.as_deref() == Some("nvme") {
        return Ok(format!("{bdf}: already bound to nvme"));
    }
    if cur.is_some() {
        write_sysfs(dir.join("driver/unbind"), &bdf)?;
    }
    let probe = write_sysfs("/sys/bus/pci/drivers_probe", &bdf);
    match sysfs::driver(&bdf).as_deref() {
        Some("nvme") => Ok(format!(
            "{bdf}: {} -> nvme",
            cur.as_deref().unwrap_or("no driver")
        )),
        other => Err(io::Error::other(format!(
            "{bdf}: the nvme driver did not take the device (driver now {}; is the nvme module \
             loaded?){}",
            other.unwrap_or("none"),
            probe.err().map(|e| format!(": {e}")).unwrap_or_default()
        ))),
    }
}

/// Reserve `bytes` of 2 MiB hugepages (rounded up).
pub fn hugemem(bytes: u64) -> io::Result<String> {
    let pages = bytes.div_ceil(2 << 20);
    let p = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    write_sysfs(p, &pages.to_string())?;
    let got: u64 = fs::read_to_string(p)?.trim().parse().unwrap_or(0);
    if got < pages {
        return Err(io::Error::other(format!(
            "asked for {pages} hugepages of 2 MiB, the kernel reserved {got} (memory fragmented? \
             reserve them at boot with hugepages={pages})"
        )));
    }
    Ok(format!("{got} hugepages of 2 MiB reserved"))
}

/// The table `nvmfd setup --status` prints: every NVMe controller, its driver, IOMMU group, NUMA
/// node and CMB.
pub fn status() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<10} {:>6} {:>5}  CMB",
        "BDF", "DRIVER", "GROUP", "NUMA"
    );
    let mut devs: Vec<String> = fs::read_dir(sysfs::SYS_PCI)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|b| sysfs::class(b) == Some(sysfs::CLASS_NVME))
        .collect();
    devs.sort();
    if devs.is_empty() {
        let _ = writeln!(out, "(no NVMe controllers)");
    }
    for b in devs {
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:>6} {:>5}  {}",
            b,
            sysfs::driver(&b).unwrap_or_else(|| "-".into()),
            sysfs::iommu_group(&b).map_or("-".into(), |g| g.to_string()),
            sysfs::numa_node(&b).map_or("-".into(), |n| n.to_string()),
            cmb_text(&b)
        );
    }
    out
}

fn cmb_text(bdf: &str) -> String {
    // The kernel nvme driver (with P2PDMA) publishes the CMB as p2pmem.
    if let Ok(s) = fs::read_to_string(dev_path(bdf).join("p2pmem/size")) {
        if let Ok(n) = s.trim().parse::<u64>() {
            return format!("{} MiB (kernel p2pmem)", n >> 20);
        }
    }
    match crate::bar::SysfsBar::cap_cmb(bdf) {
        Ok(None) => "none".into(),
        Ok(Some((sz, bir))) if sz > 0 => format!("{} MiB in BAR {bir}", sz >> 20),
        Ok(Some(_)) => "yes (size shown once enabled: CMBMSC.CRE)".into(),
        // A driver holding the BAR (nvme, vfio-pci) makes sysfs refuse the mapping
        // (CONFIG_IO_STRICT_DEVMEM): name the memory BARs beyond BAR0, where a CMB lives.
        Err(e) => {
            let bars: Vec<String> = (2..6)
                .filter_map(|n| {
                    sysfs::bar_size(bdf, n).map(|sz| format!("BAR {n}: {} MiB", sz >> 20))
                })
                .collect();
            format!(
                "? (registers not readable: {}){}{}",
                e.raw_os_error().map_or_else(
                    || e.to_string(),
                    |c| io::Error::from_raw_os_error(c).to_string()
                ),
                if bars.is_empty() { "" } else { "; " },
                bars.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_a_clear_error() {
        let e = bind("0000:ff:1f.7").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = reset("zz").unwrap_err().to_string();
        assert!(e.contains("not a PCI address"), "{e}");
    }
}
