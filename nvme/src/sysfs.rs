//! What sysfs says about a PCI function: its driver, IOMMU group, NUMA node, the other members of
//! its group. Used by the driver's pre-flight checks and by `nvmfd setup`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const SYS_PCI: &str = "/sys/bus/pci/devices";

/// A PCI address `DDDD:BB:DD.F` (or `BB:DD.F`, domain 0), validated by p2p's topology parser
/// and written the way sysfs names the device (lower case, four-digit domain).
pub fn parse_bdf(s: &str) -> Result<String, String> {
    s.parse::<nvmfd_p2p::topology::Bdf>()
        .map(|b| b.to_string())
        .map_err(|e| e.to_string())
}

pub fn dev_path(bdf: &str) -> PathBuf {
    Path::new(SYS_PCI).join(bdf)
}

/// Name of the driver bound to `bdf`, if any.
pub fn driver(bdf: &str) -> Option<String> {
    let l = fs::read_link(dev_path(bdf).join("driver")).ok()?;
    Some(l.file_name()?.to_string_lossy().into_owned())
}

pub fn iommu_group(bdf: &str) -> Option<u32> {
    let l = fs::read_link(dev_path(bdf).join("iommu_group")).ok()?;
    l.file_name()?.to_str()?.parse().ok()
}

pub fn numa_node(bdf: &str) -> Option<i32> {
    fs::read_to_string(dev_path(bdf).join("numa_node"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn read_hex(p: PathBuf) -> Option<u32> {
    let s = fs::read_to_string(p).ok()?;
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// PCI class code (24 bits).
pub fn class(bdf: &str) -> Option<u32> {
    read_hex(dev_path(bdf).join("class"))
}

/// Mass storage / NVM / NVMe I/O controller (class 01 08 02).
pub const CLASS_NVME: u32 = 0x010802;

/// The members of `group` and their drivers.
pub fn group_members(group: u32) -> Vec<(String, Option<String>)> {
    let dir = format!("/sys/kernel/iommu_groups/{group}/devices");
    let mut v: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let b = e.file_name().to_string_lossy().into_owned();
            let d = driver(&b);
            (b, d)
        })
        .collect();
    v.sort();
    v
}

/// Size in bytes of BAR `n` from the `resource` file (start end flags per line).
pub fn bar_size(bdf: &str, n: usize) -> Option<u64> {
    let s = fs::read_to_string(dev_path(bdf).join("resource")).ok()?;
    let line = s.lines().nth(n)?;
    let mut it = line.split_whitespace();
    let p = |x: &str| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok();
    let start = p(it.next()?)?;
    let end = p(it.next()?)?;
    if end == 0 {
        None
    } else {
        Some(end - start + 1)
    }
}

/// The checks before VFIO is touched: the device exists, is bound to vfio-pci, has an IOMMU
/// group whose `/dev/vfio` node exists. Each failure says what to do.
pub fn preflight(bdf: &str) -> io::Result<u32> {
    let err = |m: String| io::Error::other(m);
    if !dev_path(bdf).exists() {
        return Err(err(format!(
            "PCI device {bdf} does not exist (see `nvmfd setup --status` or lspci)"
        )));
    }
    match driver(bdf).as_deref() {
        Some("vfio-pci") => {}
        Some(other) => {
            return Err(err(format!(
                "PCI device {bdf} is bound to {other}, not vfio-pci: run `nvmfd setup --pci {bdf}`"
            )))
        }
        None => {
            return Err(err(format!(
                "PCI device {bdf} has no driver: run `nvmfd setup --pci {bdf}` to bind vfio-pci"
            )))
        }
    }
    let group = iommu_group(bdf).ok_or_else(|| {
        err(format!(
            "PCI device {bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on or \
             amd_iommu=on on the kernel command line) or, without one and at your own risk, \
             load vfio with enable_unsafe_noiommu_mode=1"
        ))
    })?;
    let node = format!("/dev/vfio/{group}");
    if !Path::new(&node).exists() {
        return Err(err(format!(
            "{node} is missing though {bdf} is bound to vfio-pci (no devtmpfs/udev node? \
             create it or check `ls /dev/vfio`)"
        )));
    }
    Ok(group)
}

/// Text for a non-viable group: every member and its driver.
pub fn describe_group(group: u32) -> String {
    group_members(group)
        .into_iter()
        .map(|(b, d)| format!("{b} ({})", d.as_deref().unwrap_or("no driver")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// RLIMIT_MEMLOCK soft limit in bytes (`None` = unlimited) and whether the process has
/// CAP_IPC_LOCK (which lifts the limit for VFIO's pinning).
pub fn memlock() -> (Option<u64>, bool) {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
    let cap = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapEff:"))
                .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
        })
        .is_some_and(|c| c >> 14 & 1 == 1);
    (lim, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_parsing() {
        assert_eq!(parse_bdf("0000:03:00.0").unwrap(), "0000:03:00.0");
        assert_eq!(parse_bdf("03:00.0").unwrap(), "0000:03:00.0");
        assert_eq!(parse_bdf("0000:AB:1f.7").unwrap(), "0000:ab:1f.7");
        for bad in [
            "",
            "0000:03:00.8",
            "0000:03:00",
            "zz00:03:00.0",
            "0000-03:00.0",
            "../x",
        ] {
            assert!(parse_bdf(bad).is_err(), "{bad}");
        }
    }
}
