//! The peer-to-peer decision for a (provider, client) pair.
//!
//! The kernel part follows Linux `drivers/pci/p2pdma.c` (`calc_map_type_and_dist()`,
//! `pci_bridge_has_acs_redir()`, `host_bridge_whitelist()`, `cpu_supports_p2pdma()`),
//! re-implemented on the sysfs model; the other findings are nvmfd's own and say so in their
//! rule names' documentation (docs/p2p.md).

use super::bdf::Bdf;
use super::config_space::acs_bit_names;
use super::model::{Link, PciFunction, Topology};
use serde::Serialize;

/// How the client reaches the provider's memory (Linux `enum pci_p2pdma_map_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapType {
    /// TLPs turn around in a common switch: the client is given PCI bus addresses.
    BusAddress,
    /// TLPs go up to the root complex and back down (it is known to forward them).
    ThroughHostBridge,
    /// Not supported: the kernel refuses the pair.
    None,
}

impl MapType {
    /// Human name.
    pub fn label(&self) -> &'static str {
        match self {
            MapType::BusAddress => "bus address",
            MapType::ThroughHostBridge => "through host bridge",
            MapType::None => "none",
        }
    }
}

/// How much a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Peer-to-peer is refused because of it.
    Block,
    /// Peer-to-peer works, worse than it could, or only if the data path takes care.
    Warn,
    /// Context: why the decision came out as it did.
    Info,
}

/// One reason, with its rule name (stable, documented in docs/p2p.md) and what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable rule name, e.g. `acs_redirect`.
    pub rule: &'static str,
    /// Its weight.
    pub severity: Severity,
    /// The functions it is about.
    pub devices: Vec<Bdf>,
    /// What was found.
    pub message: String,
    /// What to change (BIOS setting, kernel parameter, slot), when something can be.
    pub fix: Option<String>,
}

/// One side of the pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Its PCI function, `None` for a software RDMA device or an unknown address.
    pub pci: Option<Bdf>,
    /// The RDMA device name when the side was given as one.
    pub rdma: Option<String>,
    /// `vendor:device class (driver)` for display.
    pub description: String,
}

/// The decision: a value with every reason, never a bare bool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The memory side (the SSD with the CMB).
    pub provider: Peer,
    /// The DMA side (the RDMA NIC).
    pub client: Peer,
    /// Whether nvmfd may put data for `client` in `provider`'s memory.
    pub permitted: bool,
    /// The kernel's mapping type.
    pub map_type: MapType,
    /// The kernel's distance (hops up from both sides); `None` when not computable.
    pub distance: Option<u32>,
    /// The nearest common upstream bridge, if any.
    pub common_upstream_bridge: Option<Bdf>,
    /// The bridges walked from the provider up and down to the client, in order.
    pub bridges: Vec<Bdf>,
    /// Bridges whose ACS Control redirects peer-to-peer TLPs (after `disable_acs_redir`).
    pub acs_redirect: Vec<Bdf>,
    /// The host bridges of provider and client (`pciDDDD:BB`).
    pub host_bridges: Vec<String>,
    /// Every reason, most severe first.
    pub findings: Vec<Finding>,
}

/// Linux `pci_p2pdma_whitelist[]` (drivers/pci/p2pdma.c, as of Linux 6.18/7.x): root complexes
/// known to forward peer-to-peer TLPs between their root ports. `None` device: any.
const WHITELIST: &[(u16, Option<u16>, bool)] = &[
    // Intel Xeon E5/Core i7, Xeon E7 v3/E5 v3/Core i7: only within one host bridge.
    (0x8086, Some(0x3c00), true),
    (0x8086, Some(0x3c01), true),
    (0x8086, Some(0x2f00), true),
    (0x8086, Some(0x2f01), true),
    // Intel Skylake-E and later.
    (0x8086, Some(0x2030), false),
    (0x8086, Some(0x2031), false),
    (0x8086, Some(0x2032), false),
    (0x8086, Some(0x2033), false),
    (0x8086, Some(0x2020), false),
    (0x8086, Some(0x09a2), false),
    // Intel DSA/IAX/QAT integrated endpoints (newer kernels).
    (0x8086, Some(0x0b25), false),
    (0x8086, Some(0x0cfe), false),
    (0x8086, Some(0x11fb), false),
    (0x8086, Some(0x1212), false),
    (0x8086, Some(0x1216), false),
    (0x8086, Some(0x4940), false),
    (0x8086, Some(0x4942), false),
    (0x8086, Some(0x4944), false),
    (0x8086, Some(0x4946), false),
    (0x8086, Some(0x4948), false),
    // Google SoCs: any device.
    (0x1ae0, None, false),
    // NVIDIA CPUs.
    (0x10de, Some(0x2f95), false),
    (0x10de, Some(0x2f96), false),
    (0x10de, Some(0x2f97), false),
    (0x10de, Some(0x2f98), false),
    // Zhaoxin KX-6000/KH-40000/KX-6000G/KX-7000/KH-50000.
    (0x1d17, Some(0x1003), true),
    (0x1d17, Some(0x1005), true),
    (0x1d17, Some(0x1006), true),
    (0x1d17, Some(0x1007), true),
    (0x1d17, Some(0x1008), false),
];

/// The outcome of the whitelist for one host bridge.
enum Whitelist {
    Listed { vendor: u16, device: u16, at: Bdf },
    NeedsSameHostBridge { vendor: u16, device: u16, at: Bdf },
    NotListed { vendor: u16, device: u16, at: Bdf },
    NoHostBridgeDevice,
}

fn whitelist(topo: &Topology, host: &str, same_host_bridge: bool) -> Whitelist {
    let Some(root) = topo.host_bridge_device(host) else {
        return Whitelist::NoHostBridgeDevice;
    };
    let (vendor, device, at) = (root.vendor, root.device, root.bdf);
    for (v, d, same_only) in WHITELIST {
        if *v != vendor || d.is_some_and(|d| d != device) {
            continue;
        }
        if *same_only && !same_host_bridge {
            return Whitelist::NeedsSameHostBridge { vendor, device, at };
        }
        return Whitelist::Listed { vendor, device, at };
    }
    Whitelist::NotListed { vendor, device, at }
}

fn describe(f: &PciFunction) -> String {
    let mut s = format!("{:04x}:{:04x} {}", f.vendor, f.device, f.class_name());
    if let Some(d) = &f.driver {
        s.push_str(&format!(" ({d})"));
    }
    s
}

/// What Linux sees on one bridge of the path.
enum Redir {
    No,
    Yes(u16),
    ClearedByParam(u16),
    Unknown,
}

fn redir(topo: &Topology, bdf: Bdf) -> Redir {
    let Some(f) = topo.get(bdf) else {
        return Redir::Unknown;
    };
    match f.acs_redirect_bits() {
        None => Redir::Unknown,
        Some(0) => Redir::No,
        // The kernel clears RR/CR/EC on the functions `disable_acs_redir` names when it
        // enumerates them (pci_enable_acs), so the decision sees them cleared.
        Some(bits) if topo.acs_redir_disabled_by_param(bdf) => Redir::ClearedByParam(bits),
        Some(bits) => Redir::Yes(bits),
    }
}

fn bits_label(bits: u16) -> String {
    acs_bit_names(bits).join(" ")
}

impl Decision {
    fn unknown(provider: Peer, client: Peer, finding: Finding) -> Decision {
        Decision {
            provider,
            client,
            permitted: false,
            map_type: MapType::None,
            distance: None,
            common_upstream_bridge: None,
            bridges: Vec::new(),
            acs_redirect: Vec::new(),
            host_bridges: Vec::new(),
            findings: vec![finding],
        }
    }

    /// The first blocking finding, if any.
    pub fn blocker(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| f.severity == Severity::Block)
    }
}

fn peer(topo: &Topology, bdf: Bdf, rdma: Option<&str>) -> Peer {
    Peer {
        pci: Some(bdf),
        rdma: rdma.map(str::to_string),
        description: topo
            .get(bdf)
            .map(describe)
            .unwrap_or_else(|| "not present".into()),
    }
}

/// Decides whether `client` (an RDMA device by name) may reach `provider`'s memory.
pub fn decide_rdma(topo: &Topology, provider: Bdf, rdma: &str) -> Decision {
    let prov = peer(topo, provider, None);
    let Some(dev) = topo.rdma_device(rdma) else {
        return Decision::unknown(
            prov,
            Peer {
                pci: None,
                rdma: Some(rdma.to_string()),
                description: "not present".into(),
            },
            Finding {
                rule: "device_missing",
                severity: Severity::Block,
                devices: vec![],
                message: format!("no RDMA device {rdma:?} in sysfs class/infiniband"),
                fix: Some("check the name with `rdma link show` or `ibv_devices`".into()),
            },
        );
    };
    match dev.pci {
        Some(bdf) => decide_pci(topo, provider, bdf, Some(rdma)),
        None => {
            let on = dev
                .parent_netdev
                .as_deref()
                .map(|n| format!(" on network device {n}"))
                .unwrap_or_default();
            let (description, message) = match &dev.software {
                Some(kind) => (
                    format!("{kind} RDMA device{on}"),
                    format!(
                        "{rdma} is a software RDMA device ({kind}{on}), not a PCI function: the \
                         CPU copies its data, so nothing can DMA to or from the SSD's memory for \
                         it (Linux: \"cannot be used for peer-to-peer DMA as it is not a PCI \
                         device\")"
                    ),
                ),
                None => (
                    "RDMA device that is not a PCI function".to_string(),
                    format!(
                        "{rdma} has no PCI function behind it (its sysfs `device` is missing or \
                         on another bus): Linux refuses peer-to-peer DMA for it (\"not a PCI \
                         device\")"
                    ),
                ),
            };
            let mut d = Decision::unknown(
                prov,
                Peer {
                    pci: None,
                    rdma: Some(rdma.to_string()),
                    description,
                },
                Finding {
                    rule: "rdma_not_pci",
                    severity: Severity::Block,
                    devices: vec![],
                    message,
                    fix: Some(
                        "use a PCIe RDMA NIC (RoCE or InfiniBand) for P2P; with this device \
                         nvmfd serves the namespace from host memory"
                            .into(),
                    ),
                },
            );
            if topo.get(provider).is_none() {
                d.findings.insert(0, missing(provider));
            }
            d
        }
    }
}

fn missing(bdf: Bdf) -> Finding {
    Finding {
        rule: "device_missing",
        severity: Severity::Block,
        devices: vec![bdf],
        message: format!("no PCI function {bdf} in sysfs"),
        fix: Some("check the address with `lspci -D`".into()),
    }
}

/// Decides whether PCI function `client` may reach `provider`'s memory.
pub fn decide_pair(topo: &Topology, provider: Bdf, client: Bdf) -> Decision {
    decide_pci(topo, provider, client, None)
}

fn decide_pci(topo: &Topology, provider: Bdf, client: Bdf, rdma: Option<&str>) -> Decision {
    let prov_peer = peer(topo, provider, None);
    let client_peer = peer(topo, client, rdma);
    for b in [provider, client] {
        if topo.get(b).is_none() {
            return Decision::unknown(prov_peer, client_peer, missing(b));
        }
    }
    let mut findings = Vec::new();
    let chain_a = topo.chain(provider);
    let chain_b = topo.chain(client);

    // Linux calc_map_type_and_dist(): walk up from the provider; at each step check the
    // bridge's ACS, then look for it on the client's chain.
    let mut redirect: Vec<(Bdf, u16)> = Vec::new();
    let mut cleared: Vec<(Bdf, u16)> = Vec::new();
    let mut unknown: Vec<Bdf> = Vec::new();
    let mut note = |b: Bdf, redirect: &mut Vec<(Bdf, u16)>| match redir(topo, b) {
        Redir::No => {}
        Redir::Yes(bits) => redirect.push((b, bits)),
        Redir::ClearedByParam(bits) => cleared.push((b, bits)),
        Redir::Unknown => unknown.push(b),
    };
    let mut common = None;
    for (i, a) in chain_a.iter().enumerate() {
        note(*a, &mut redirect);
        if let Some(j) = chain_b.iter().position(|b| b == a) {
            common = Some((i, j));
            break;
        }
    }
    let (distance, bridges, common_bridge) = match common {
        Some((i, j)) => {
            for b in &chain_b[..j] {
                note(*b, &mut redirect);
            }
            let mut bridges: Vec<Bdf> = chain_a[1..=i].to_vec();
            if j > 0 {
                bridges.extend(chain_b[1..j].iter().rev());
            }
            bridges.retain(|b| *b != provider && *b != client);
            (i + j, bridges, Some(chain_a[i]))
        }
        None => {
            // Without a common bridge the kernel's distance is the length of both chains.
            redirect.clear();
            cleared.clear();
            unknown.clear();
            let mut bridges: Vec<Bdf> = chain_a[1..].to_vec();
            bridges.extend(chain_b[1..].iter().rev());
            (chain_a.len() + chain_b.len(), bridges, None)
        }
    };

    let host_a = topo
        .get(provider)
        .map(|f| f.host_bridge.clone())
        .unwrap_or_default();
    let host_b = topo
        .get(client)
        .map(|f| f.host_bridge.clone())
        .unwrap_or_default();
    let mut host_bridges = vec![host_a.clone()];
    if host_b != host_a {
        host_bridges.push(host_b.clone());
    }

    for (b, bits) in &cleared {
        findings.push(Finding {
            rule: "disable_acs_redir",
            severity: Severity::Info,
            devices: vec![*b],
            message: format!(
                "{b} has ACS {} set in config space; pci=disable_acs_redir= names it, so the \
                 kernel clears them at boot: counted as not redirecting",
                bits_label(*bits)
            ),
            fix: None,
        });
    }
    if let Some(e) = &topo.kernel.disable_acs_redir.error {
        findings.push(Finding {
            rule: "disable_acs_redir_unparsed",
            severity: Severity::Warn,
            devices: vec![],
            message: format!(
                "pci=disable_acs_redir= {e}; the kernel ignores it and every entry after it"
            ),
            fix: Some(
                "write each device as [SEGMENT:]BUS:DEV.FN[/DEV.FN]* or pci:VENDOR:DEVICE, \
                 separated by ';'"
                    .into(),
            ),
        });
    }

    let mut must_cross_root = common.is_none();
    let acs_redirects = !redirect.is_empty() || !unknown.is_empty();
    if common.is_some() && acs_redirects {
        must_cross_root = true;
    }

    // Linux's fallback: through the host bridge on AMD Zen or a whitelisted root complex.
    let mut map_type = if must_cross_root {
        MapType::ThroughHostBridge
    } else {
        MapType::BusAddress
    };
    let mut host_findings = Vec::new();
    let mut host_ok = true;
    if must_cross_root {
        if topo.cpu.supports_p2pdma() {
            host_findings.push(Finding {
                rule: "amd_zen_root_complex",
                severity: Severity::Info,
                devices: vec![],
                message: format!(
                    "the CPU is AMD family {:#x} (Zen or newer): Linux lets peer-to-peer TLPs \
                     cross its root complex",
                    topo.cpu.family.unwrap_or(0)
                ),
                fix: None,
            });
        } else {
            let same = host_a == host_b;
            let verdicts: Vec<(String, Whitelist)> = if same {
                vec![(host_a.clone(), whitelist(topo, &host_a, true))]
            } else {
                vec![
                    (host_a.clone(), whitelist(topo, &host_a, false)),
                    (host_b.clone(), whitelist(topo, &host_b, false)),
                ]
            };
            for (host, w) in verdicts {
                match w {
                    Whitelist::Listed { vendor, device, at } => host_findings.push(Finding {
                        rule: "host_bridge_whitelisted",
                        severity: Severity::Info,
                        devices: vec![at],
                        message: format!(
                            "host bridge {host} ({vendor:04x}:{device:04x} at {at}) is on Linux's \
                             P2PDMA whitelist: it forwards peer-to-peer TLPs between root ports"
                        ),
                        fix: None,
                    }),
                    Whitelist::NeedsSameHostBridge { vendor, device, at } => {
                        host_ok = false;
                        host_findings.push(Finding {
                            rule: "host_bridge_not_shared",
                            severity: Severity::Block,
                            devices: vec![at],
                            message: format!(
                                "root complex {vendor:04x}:{device:04x} ({at}) forwards peer-to-peer \
                                 TLPs only within one host bridge, and the devices are under {} \
                                 and {}",
                                host_a, host_b
                            ),
                            fix: Some(
                                "put the SSD and the NIC in slots of the same host bridge (same \
                                 socket and root complex), ideally under one PCIe switch"
                                    .into(),
                            ),
                        });
                    }
                    Whitelist::NotListed { vendor, device, at } => {
                        host_ok = false;
                        host_findings.push(Finding {
                            rule: "host_bridge_not_whitelisted",
                            severity: Severity::Block,
                            devices: vec![at],
                            message: format!(
                                "host bridge {host} ({vendor:04x}:{device:04x} at {at}) is not on \
                                 Linux's P2PDMA whitelist and the CPU is not AMD family >= 0x17: \
                                 peer-to-peer through the root complex is refused"
                            ),
                            fix: Some(
                                "put the SSD and the NIC under one PCIe switch with ACS redirect \
                                 off, or use a platform whose root complex Linux whitelists \
                                 (AMD Zen, Intel Skylake-SP and later)"
                                    .into(),
                            ),
                        });
                    }
                    Whitelist::NoHostBridgeDevice => {
                        host_ok = false;
                        host_findings.push(Finding {
                            rule: "host_bridge_unknown",
                            severity: Severity::Block,
                            devices: vec![],
                            message: format!(
                                "host bridge {host} has no 00.0 function or root port first on \
                                 its root bus, so Linux cannot identify the root complex and \
                                 refuses peer-to-peer through it"
                            ),
                            fix: Some(
                                "put the SSD and the NIC under one PCIe switch with ACS redirect \
                                 off"
                                .into(),
                            ),
                        });
                    }
                }
            }
            if !host_ok {
                map_type = MapType::None;
            }
        }
    }

    if common.is_none() {
        let tops = [chain_a.last().copied(), chain_b.last().copied()];
        let differ = host_a != host_b;
        findings.push(Finding {
            rule: "no_common_upstream_bridge",
            severity: if map_type == MapType::None {
                Severity::Block
            } else {
                Severity::Warn
            },
            devices: tops.iter().flatten().copied().collect(),
            message: if differ {
                format!(
                    "the devices are under different host bridges ({host_a}, {host_b}): traffic \
                     must cross the root complex{}",
                    if map_type == MapType::None {
                        ", which is not known to forward it"
                    } else {
                        ""
                    }
                )
            } else {
                format!(
                    "no common upstream bridge: the paths meet only in the root complex (their \
                     tops: {} and {}){}",
                    tops[0].map(|b| b.to_string()).unwrap_or_default(),
                    tops[1].map(|b| b.to_string()).unwrap_or_default(),
                    if map_type == MapType::None {
                        ", which is not known to forward them"
                    } else {
                        ""
                    }
                )
            },
            fix: Some(
                "put the SSD and the NIC under one PCIe switch (or one multi-function device) so \
                 TLPs turn around below the root complex"
                    .into(),
            ),
        });
    }

    if common.is_some() && !redirect.is_empty() {
        let list: Vec<String> = redirect.iter().map(|(b, _)| b.to_string()).collect();
        let which: Vec<String> = redirect
            .iter()
            .map(|(b, bits)| format!("{b} ({})", bits_label(*bits)))
            .collect();
        findings.push(Finding {
            rule: "acs_redirect",
            severity: if map_type == MapType::None {
                Severity::Block
            } else {
                Severity::Warn
            },
            devices: redirect.iter().map(|(b, _)| *b).collect(),
            message: format!(
                "ACS redirect is set between the provider and the client on {}: peer-to-peer TLPs \
                 go up to the root complex instead of turning around in the switch",
                which.join(", ")
            ),
            fix: Some(format!(
                "add the kernel parameter pci=disable_acs_redir={} (Linux's own advice), or turn \
                 ACS off for those ports in the BIOS (\"ACS Control\"); with ACS redirect off the \
                 devices below share one IOMMU group",
                list.join(";")
            )),
        });
    }
    if common.is_some() && !unknown.is_empty() {
        findings.push(Finding {
            rule: "acs_unreadable",
            severity: if map_type == MapType::None {
                Severity::Block
            } else {
                Severity::Warn
            },
            devices: unknown.clone(),
            message: format!(
                "the ACS registers of {} cannot be read (only {} bytes of config space): counted \
                 as redirecting",
                unknown.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
                unknown
                    .first()
                    .and_then(|b| topo.get(*b))
                    .map(|f| f.config_bytes)
                    .unwrap_or(0)
            ),
            fix: Some(
                "run `nvmfd topology` as root: sysfs gives the extended config space (0x100-0xfff) \
                 only to CAP_SYS_ADMIN"
                    .into(),
            ),
        });
    }

    findings.append(&mut host_findings);
    beyond_kernel(
        topo,
        provider,
        client,
        &chain_a,
        &chain_b,
        common,
        map_type,
        &mut findings,
    );

    findings.sort_by_key(|f| f.severity);
    let permitted =
        map_type != MapType::None && !findings.iter().any(|f| f.severity == Severity::Block);
    Decision {
        provider: prov_peer,
        client: client_peer,
        permitted,
        map_type,
        distance: Some(distance as u32),
        common_upstream_bridge: common_bridge,
        bridges,
        acs_redirect: redirect.iter().map(|(b, _)| *b).collect(),
        host_bridges,
        findings,
    }
}

fn translating(t: &str) -> bool {
    matches!(t, "DMA" | "DMA-FQ")
}

/// The physical links on the path: each function below the meeting point whose Link Status
/// describes the link above it.
fn path_links<'a>(
    topo: &'a Topology,
    chain_a: &[Bdf],
    chain_b: &[Bdf],
    common: Option<(usize, usize)>,
) -> Vec<(&'a PciFunction, &'a Link)> {
    let (ea, eb) = match common {
        Some((i, j)) => (i, j),
        None => (chain_a.len(), chain_b.len()),
    };
    chain_a[..ea]
        .iter()
        .chain(chain_b[..eb].iter())
        .filter_map(|b| topo.get(*b))
        .filter(|f| f.physfn.is_none())
        .filter(|f| match f.port_type {
            Some(t) => t.has_upstream_link(),
            // Unreadable capabilities (not root): an endpoint header still has a link above.
            None => f.header_type == Some(0),
        })
        .filter_map(|f| Some((f, f.current_link.as_ref()?)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn beyond_kernel(
    topo: &Topology,
    provider: Bdf,
    client: Bdf,
    chain_a: &[Bdf],
    chain_b: &[Bdf],
    common: Option<(usize, usize)>,
    map_type: MapType,
    findings: &mut Vec<Finding>,
) {
    let (Some(p), Some(c)) = (topo.get(provider), topo.get(client)) else {
        return;
    };

    // SR-IOV: Linux walks up from the PF's bridge.
    for f in [p, c] {
        if let Some(pf) = f.physfn {
            findings.push(Finding {
                rule: "virtual_function",
                severity: Severity::Info,
                devices: vec![f.bdf, pf],
                message: format!(
                    "{} is an SR-IOV virtual function of {pf}: its path starts at the PF's \
                     upstream bridge",
                    f.bdf
                ),
                fix: None,
            });
        }
    }

    // Bus offset: the client must be given bus addresses, not CPU physical ones.
    for bar in p.bars.iter().filter(|b| b.memory) {
        if let Some(off) = bar.bus_offset() {
            findings.push(Finding {
                rule: "bus_offset",
                severity: Severity::Warn,
                devices: vec![provider],
                message: format!(
                    "BAR {} of {provider} is at CPU address {:#x} but bus address {:#x} (offset \
                     {}{:#x}): a peer must be given the bus address",
                    bar.index,
                    bar.cpu_start,
                    bar.bus_address.unwrap_or(0),
                    if off < 0 { "-" } else { "+" },
                    off.unsigned_abs()
                ),
                fix: Some(
                    "nothing to change in the machine; the data path must translate CPU to bus \
                     addresses (Linux does it with the pagemap's bus_offset)"
                        .into(),
                ),
            });
        }
    }

    // IOMMU: on a path through the root complex it translates the client's requests.
    if map_type == MapType::ThroughHostBridge {
        if let Some(t) = c.iommu_type.as_deref().filter(|t| translating(t)) {
            findings.push(Finding {
                rule: "iommu_translation",
                severity: Severity::Warn,
                devices: vec![client],
                message: format!(
                    "the IOMMU translates DMA of {client} (group {}, type {t}) and the path \
                     crosses the root complex: the SSD's BAR must be mapped into the client's \
                     IOMMU domain, or the client faults",
                    c.iommu_group.map(|g| g.to_string()).unwrap_or_default()
                ),
                fix: Some(
                    "boot with iommu=pt (pass-through for kernel-owned devices), or put both \
                     devices under one switch so TLPs never reach the IOMMU"
                        .into(),
                ),
            });
        }
    }

    // Links: the narrowest one against the SSD's own.
    let links = path_links(topo, chain_a, chain_b, common);
    if let (Some(own), Some((nf, nl))) = (
        p.current_link.as_ref().and_then(|l| Some((l, l.gbps()?))),
        links
            .iter()
            .filter_map(|(f, l)| Some((f, l, l.gbps()?)))
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .map(|(f, l, _)| (*f, *l)),
    ) {
        if nl.gbps().unwrap_or(f64::MAX) + 1e-9 < own.1 {
            findings.push(Finding {
                rule: "narrow_link",
                severity: Severity::Warn,
                devices: vec![nf.bdf],
                message: format!(
                    "the narrowest link on the path ({}, above {}) is slower than the SSD's own \
                     ({}): peer-to-peer transfers are capped at {:.1} Gbit/s",
                    nl.label(),
                    nf.bdf,
                    own.0.label(),
                    nl.gbps().unwrap_or(0.0)
                ),
                fix: Some(format!(
                    "move {} to a slot with at least {} (check the slot's lane wiring and the \
                     BIOS link-speed setting)",
                    nf.bdf,
                    own.0.label()
                )),
            });
        }
    }
    for (f, cur) in &links {
        let Some(max) = &f.max_link else { continue };
        let slower = matches!((cur.speed_gts, max.speed_gts), (Some(c), Some(m)) if c + 1e-9 < m);
        let narrower = matches!((cur.width, max.width), (Some(c), Some(m)) if c < m);
        if slower || narrower {
            findings.push(Finding {
                rule: "link_degraded",
                severity: Severity::Info,
                devices: vec![f.bdf],
                message: format!(
                    "{} trained at {} but is capable of {}",
                    f.bdf,
                    cur.label(),
                    max.label()
                ),
                fix: Some(
                    "reseat the card or use a slot wired for its full width; a link limited by \
                     the slot or the other end is expected"
                        .into(),
                ),
            });
        }
    }

    // NUMA.
    if let (Some(a), Some(b)) = (p.numa_node, c.numa_node) {
        if a != b {
            findings.push(Finding {
                rule: "numa_mismatch",
                severity: Severity::Warn,
                devices: vec![provider, client],
                message: format!(
                    "{provider} is on NUMA node {a} and {client} on node {b}: their traffic and \
                     the reactors serving them cross the socket interconnect"
                ),
                fix: Some(
                    "put the SSD and the NIC in slots of the same socket, and pin the reactors to \
                     that node's cores"
                        .into(),
                ),
            });
        }
    }
}
