//! What the decision needs from outside the PCI tree: the CPU (from `/proc/cpuinfo`) and the
//! kernel command line's `pci=disable_acs_redir=` (from `/proc/cmdline`).

use serde::Serialize;

/// The boot CPU as `/proc/cpuinfo` describes its first processor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuInfo {
    /// `vendor_id` (x86 only), e.g. `AuthenticAMD`, `GenuineIntel`.
    pub vendor_id: Option<String>,
    /// `cpu family`, decimal in the file.
    pub family: Option<u32>,
    /// `model name`.
    pub model_name: Option<String>,
}

impl CpuInfo {
    /// Parses the first processor block of `/proc/cpuinfo` (the kernel looks at CPU 0).
    pub fn parse(text: &str) -> CpuInfo {
        let mut info = CpuInfo::default();
        for line in text.lines() {
            if line.trim().is_empty() {
                if info.vendor_id.is_some() || info.family.is_some() {
                    break;
                }
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            match k {
                "vendor_id" if info.vendor_id.is_none() => info.vendor_id = Some(v.to_string()),
                "cpu family" if info.family.is_none() => info.family = v.parse().ok(),
                "model name" if info.model_name.is_none() => info.model_name = Some(v.to_string()),
                _ => {}
            }
        }
        info
    }

    /// Linux `cpu_supports_p2pdma()`: any AMD CPU of family 0x17 (Zen) or newer routes
    /// peer-to-peer traffic through its root complex. Hygon and every other vendor: no.
    pub fn supports_p2pdma(&self) -> bool {
        self.vendor_id.as_deref() == Some("AuthenticAMD") && self.family.is_some_and(|f| f >= 0x17)
    }
}

/// One entry of a device-matching kernel parameter (Linux `pci_dev_str_match()`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DevMatch {
    /// `pci:VVVV:DDDD[:SSSS:ssss]`; a zero field matches anything.
    Ids {
        /// Vendor ID (0: any).
        vendor: u16,
        /// Device ID (0: any).
        device: u16,
        /// Subsystem vendor ID (0: any).
        subsystem_vendor: u16,
        /// Subsystem device ID (0: any).
        subsystem_device: u16,
    },
    /// `[SEGMENT:]BUS:DEV.FN[/DEV.FN]*`: the first element names a function by address, each
    /// later one a device/function below the previous one (robust against bus renumbering).
    Path {
        /// PCI segment (0 when omitted).
        domain: u32,
        /// Bus of the first element.
        bus: u8,
        /// devfn of the first element followed by the devfn of each later element.
        devfns: Vec<u8>,
    },
}

fn hex_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

fn dev_fn(s: &str) -> Option<u8> {
    let (d, f) = s.split_once('.')?;
    let (d, f) = (hex_u32(d)?, hex_u32(f)?);
    // PCI_DEVFN masks: slot to 5 bits, function to 3.
    Some((((d & 0x1f) << 3) | (f & 7)) as u8)
}

impl DevMatch {
    /// Parses one `;`-separated entry.
    pub fn parse(entry: &str) -> Result<DevMatch, String> {
        let bad = || format!("cannot parse device {entry:?}");
        if let Some(ids) = entry.strip_prefix("pci:") {
            let f: Vec<&str> = ids.split(':').collect();
            if f.len() != 2 && f.len() != 4 {
                return Err(bad());
            }
            let mut v = [0u16; 4];
            for (i, s) in f.iter().enumerate() {
                let n = hex_u32(s).ok_or_else(bad)?;
                v[i] = u16::try_from(n).map_err(|_| bad())?;
            }
            return Ok(DevMatch::Ids {
                vendor: v[0],
                device: v[1],
                subsystem_vendor: v[2],
                subsystem_device: v[3],
            });
        }
        let mut parts = entry.split('/');
        let first = parts.next().ok_or_else(bad)?;
        let (addr, df) = first.rsplit_once(':').ok_or_else(bad)?;
        let (domain, bus) = match addr.split_once(':') {
            Some((d, b)) => (hex_u32(d).ok_or_else(bad)?, hex_u32(b).ok_or_else(bad)?),
            None => (0, hex_u32(addr).ok_or_else(bad)?),
        };
        let mut devfns = vec![dev_fn(df).ok_or_else(bad)?];
        for p in parts {
            devfns.push(dev_fn(p).ok_or_else(bad)?);
        }
        Ok(DevMatch::Path {
            domain,
            bus: (bus & 0xff) as u8,
            devfns,
        })
    }
}

/// `pci=disable_acs_redir=` as the kernel reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AcsRedirParam {
    /// The raw value (after `disable_acs_redir=`), if the parameter is present.
    pub raw: Option<String>,
    /// The entries that parsed, in order.
    pub entries: Vec<DevMatch>,
    /// The parse error that ended the list (the kernel stops at the first bad entry too).
    pub error: Option<String>,
}

/// Splits a command line into arguments the way the kernel does (whitespace, double quotes
/// group).
fn cmdline_args(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

impl AcsRedirParam {
    /// Reads every `pci=` argument of `/proc/cmdline`: its options are `,`-separated, the last
    /// `disable_acs_redir=` wins (Linux `pci_setup()`), its devices are `;`-separated.
    pub fn from_cmdline(cmdline: &str) -> AcsRedirParam {
        let mut raw = None;
        for arg in cmdline_args(cmdline) {
            if let Some(opts) = arg.strip_prefix("pci=") {
                for opt in opts.split(',') {
                    if let Some(v) = opt.strip_prefix("disable_acs_redir=") {
                        raw = Some(v.to_string());
                    }
                }
            }
        }
        let mut p = AcsRedirParam {
            raw: raw.clone(),
            ..AcsRedirParam::default()
        };
        if let Some(raw) = raw {
            for entry in raw.split(';') {
                if entry.is_empty() {
                    continue;
                }
                match DevMatch::parse(entry) {
                    Ok(m) => p.entries.push(m),
                    Err(e) => {
                        p.error = Some(e);
                        break;
                    }
                }
            }
        }
        p
    }
}

/// Other kernel parameters that change what the decision means.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelParams {
    /// The whole command line, as read.
    pub cmdline: String,
    /// `pci=disable_acs_redir=`.
    pub disable_acs_redir: AcsRedirParam,
    /// `iommu=pt` (or `intel_iommu=`/`amd_iommu=` pass-through spellings): the IOMMU does not
    /// translate DMA of kernel-owned devices.
    pub iommu_passthrough: bool,
}

impl KernelParams {
    /// Parses `/proc/cmdline`.
    pub fn parse(cmdline: &str) -> KernelParams {
        let args = cmdline_args(cmdline);
        let iommu_passthrough = args
            .iter()
            .any(|a| a == "iommu=pt" || a == "iommu.passthrough=1" || a == "amd_iommu=pt");
        KernelParams {
            cmdline: cmdline.trim().to_string(),
            disable_acs_redir: AcsRedirParam::from_cmdline(cmdline),
            iommu_passthrough,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd_zen_and_newer_support_p2pdma() {
        let zen3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC 7763\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n";
        let c = CpuInfo::parse(zen3);
        assert_eq!(c.family, Some(25));
        assert!(c.supports_p2pdma());
        let zen1 = CpuInfo::parse("vendor_id : AuthenticAMD\ncpu family : 23\n");
        assert!(zen1.supports_p2pdma());
        let bulldozer = CpuInfo::parse("vendor_id : AuthenticAMD\ncpu family : 21\n");
        assert!(!bulldozer.supports_p2pdma());
        let intel = CpuInfo::parse("vendor_id : GenuineIntel\ncpu family : 6\n");
        assert!(!intel.supports_p2pdma());
        let hygon = CpuInfo::parse("vendor_id : HygonGenuine\ncpu family : 24\n");
        assert!(!hygon.supports_p2pdma());
        assert!(!CpuInfo::parse("processor : 0\nBogoMIPS : 50.00\n").supports_p2pdma());
    }

    #[test]
    fn parses_both_device_formats() {
        assert_eq!(
            DevMatch::parse("pci:8086:0"),
            Ok(DevMatch::Ids {
                vendor: 0x8086,
                device: 0,
                subsystem_vendor: 0,
                subsystem_device: 0
            })
        );
        assert_eq!(
            DevMatch::parse("0000:00:1c.0/00.0/01.0"),
            Ok(DevMatch::Path {
                domain: 0,
                bus: 0,
                devfns: vec![0xe0, 0x00, 0x08]
            })
        );
        assert_eq!(
            DevMatch::parse("02:01.0"),
            Ok(DevMatch::Path {
                domain: 0,
                bus: 2,
                devfns: vec![0x08]
            })
        );
        assert!(DevMatch::parse("02:01").is_err());
        assert!(DevMatch::parse("pci:8086").is_err());
        assert!(DevMatch::parse("pci:18086:1").is_err());
    }

    #[test]
    fn reads_the_last_disable_acs_redir_of_any_pci_argument() {
        let p = KernelParams::parse(
            "BOOT_IMAGE=/vmlinuz root=/dev/sda1 pci=noaer,disable_acs_redir=0000:02:00.0;pci:10b5:8747 quiet iommu=pt\n",
        );
        assert!(p.iommu_passthrough);
        let r = &p.disable_acs_redir;
        assert_eq!(r.raw.as_deref(), Some("0000:02:00.0;pci:10b5:8747"));
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.error, None);
        let later = AcsRedirParam::from_cmdline(
            "pci=disable_acs_redir=01:00.0 pci=disable_acs_redir=02:00.0;zz;03:00.0",
        );
        assert_eq!(later.raw.as_deref(), Some("02:00.0;zz;03:00.0"));
        assert_eq!(later.entries.len(), 1, "the kernel stops at the bad entry");
        assert!(later.error.unwrap().contains("zz"));
        assert_eq!(
            AcsRedirParam::from_cmdline("quiet"),
            AcsRedirParam::default()
        );
    }
}
