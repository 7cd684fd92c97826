//! Human output: the hierarchy as a tree (in the spirit of `lspci -tv`) and each decision with
//! its reasons.

use super::bdf::Bdf;
use super::config_space::{acs_bit_names, AcsState, ACS_REDIRECT_BITS};
use super::decide::{Decision, Severity};
use super::model::{PciFunction, Topology};
use std::fmt::Write;

fn size_label(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (u, name) in UNITS {
        if n >= u && n & (u - 1) == 0 {
            return format!("{} {name}", n / u);
        }
    }
    format!("{n} B")
}

fn acs_label(topo: &Topology, f: &PciFunction) -> Option<String> {
    match f.acs {
        AcsState::Absent => None,
        AcsState::Unreadable => (f.acs_redirect_bits().is_none())
            .then(|| "ACS ? (config unreadable: run as root)".into()),
        AcsState::Present { control, .. } => {
            let names = acs_bit_names(control);
            let mut s = if names.is_empty() {
                "ACS ctrl -".to_string()
            } else {
                format!("ACS ctrl {}", names.join(" "))
            };
            if control & ACS_REDIRECT_BITS != 0 {
                if topo.acs_redir_disabled_by_param(f.bdf) {
                    s.push_str(" (redirect cleared by disable_acs_redir)");
                } else {
                    s.push_str(" (REDIRECT)");
                }
            }
            Some(s)
        }
    }
}

/// One line describing a function.
pub fn function_line(topo: &Topology, f: &PciFunction) -> String {
    let mut s = format!(
        "{}  [{:04x}:{:04x}] {}",
        f.bdf.short(),
        f.vendor,
        f.device,
        f.class_name()
    );
    if let Some(t) = f.port_type {
        if !matches!(t, super::config_space::PortType::Endpoint) {
            let _ = write!(s, ", {}", t.label());
        }
    }
    if let Some(d) = &f.driver {
        let _ = write!(s, " ({d})");
    }
    if let Some(pf) = f.physfn {
        let _ = write!(s, "  VF of {}", pf.short());
    }
    if let Some(a) = acs_label(topo, f) {
        let _ = write!(s, "  [{a}]");
    }
    if let Some(l) = &f.current_link {
        let _ = write!(s, "  link {}", l.label());
        if let Some(m) = &f.max_link {
            if m != l && m.speed_gts.is_some() && m.width.is_some() {
                let _ = write!(s, " (max {})", m.label());
            }
        }
    }
    if let Some(n) = f.numa_node {
        let _ = write!(s, "  numa {n}");
    }
    if let Some(g) = f.iommu_group {
        let _ = write!(s, "  iommu {g}");
        if let Some(t) = &f.iommu_type {
            let _ = write!(s, " {t}");
        }
    }
    for b in f.bars.iter().filter(|b| b.memory) {
        let _ = write!(
            s,
            "  BAR{} {}{}",
            b.index,
            size_label(b.size),
            if b.prefetchable { " pref" } else { "" }
        );
        if let Some(off) = b.bus_offset() {
            let _ = write!(s, " (bus offset {off:+#x})");
        }
    }
    if let Some(p) = f.p2pmem_size {
        let _ = write!(s, "  p2pmem {}", size_label(p));
    }
    s
}

fn children<'a>(topo: &'a Topology, host: &str, parent: Option<Bdf>) -> Vec<&'a PciFunction> {
    topo.functions
        .values()
        .filter(|f| f.host_bridge == host && f.parent == parent)
        .collect()
}

fn tree_rec(topo: &Topology, host: &str, parent: Option<Bdf>, prefix: &str, out: &mut String) {
    let kids = children(topo, host, parent);
    for (i, f) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        let _ = writeln!(
            out,
            "{prefix}{}{}",
            if last { "\\- " } else { "+- " },
            function_line(topo, f)
        );
        let deeper = format!("{prefix}{}", if last { "   " } else { "|  " });
        tree_rec(topo, host, Some(f.bdf), &deeper, out);
    }
}

/// The whole hierarchy, one host bridge after another, then the RDMA devices.
pub fn render_tree(topo: &Topology) -> String {
    let mut out = String::new();
    let mut hosts: Vec<&str> = topo
        .functions
        .values()
        .map(|f| f.host_bridge.as_str())
        .collect();
    hosts.sort();
    hosts.dedup();
    for host in hosts {
        let root = topo
            .host_bridge_device(host)
            .map(|f| {
                format!(
                    "root complex {:04x}:{:04x} at {}",
                    f.vendor, f.device, f.bdf
                )
            })
            .unwrap_or_else(|| "root complex not identifiable".into());
        let _ = writeln!(out, "{host}  ({root})");
        tree_rec(topo, host, None, "", &mut out);
    }
    if !topo.rdma.is_empty() {
        let _ = writeln!(out, "RDMA devices:");
        for d in &topo.rdma {
            let what = match (&d.pci, &d.software) {
                (Some(b), _) => format!("PCI {b}"),
                (None, Some(kind)) => format!(
                    "software ({kind}{})",
                    d.parent_netdev
                        .as_deref()
                        .map(|n| format!(" on {n}"))
                        .unwrap_or_default()
                ),
                (None, None) => "no PCI function".into(),
            };
            let mut addrs = Vec::new();
            for p in &d.ports {
                for g in &p.gids {
                    let a = match g.gid.to_ipv4_mapped() {
                        Some(v4) => v4.to_string(),
                        None => g.gid.to_string(),
                    };
                    let nd = g
                        .netdev
                        .as_deref()
                        .map(|n| format!("@{n}"))
                        .unwrap_or_default();
                    addrs.push(format!("{}:{a}{nd}", p.port));
                }
            }
            addrs.dedup();
            let _ = writeln!(
                out,
                "  {:<10} {what}{}",
                d.name,
                if addrs.is_empty() {
                    String::new()
                } else {
                    format!("  gids {}", addrs.join(" "))
                }
            );
        }
    }
    out
}

fn severity_tag(s: Severity) -> &'static str {
    match s {
        Severity::Block => "[block]",
        Severity::Warn => "[warn] ",
        Severity::Info => "[info] ",
    }
}

fn peer_label(p: &super::decide::Peer) -> String {
    match (&p.rdma, &p.pci) {
        (Some(n), Some(b)) => format!("{n} {b} ({})", p.description),
        (Some(n), None) => format!("{n} ({})", p.description),
        (None, Some(b)) => format!("{b} ({})", p.description),
        (None, None) => p.description.clone(),
    }
}

/// A decision and its reasons.
pub fn render_decision(d: &Decision) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} -> {}",
        peer_label(&d.provider),
        peer_label(&d.client)
    );
    let dist = d
        .distance
        .map(|n| format!(", distance {n}"))
        .unwrap_or_default();
    let via = if d.bridges.is_empty() {
        String::new()
    } else {
        format!(
            " via {}",
            d.bridges
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        )
    };
    if d.permitted {
        let _ = writeln!(out, "  PERMITTED ({}{dist}){via}", d.map_type.label());
    } else {
        let why = d
            .blocker()
            .map(|f| format!(": {}", f.rule))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  REFUSED (map type {}{dist}){why}{via}",
            d.map_type.label()
        );
    }
    for f in &d.findings {
        let _ = writeln!(
            out,
            "  {} {}: {}",
            severity_tag(f.severity),
            f.rule,
            f.message
        );
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "          fix: {fix}");
        }
    }
    out
}

/// One matrix cell: `BUS/4` (bus addresses, distance 4), `HOST/4` (through the host bridge),
/// `NO/4` (refused), `SW` (software RDMA device), `?` (device missing).
pub fn matrix_cell(d: &Decision) -> String {
    if d.findings.iter().any(|f| f.rule == "rdma_not_pci") {
        return "SW".into();
    }
    let Some(dist) = d.distance else {
        return "?".into();
    };
    let kind = match (d.permitted, d.map_type) {
        (true, super::decide::MapType::BusAddress) => "BUS",
        (true, super::decide::MapType::ThroughHostBridge) => "HOST",
        _ => "NO",
    };
    format!("{kind}/{dist}")
}

/// A provider × client matrix in the spirit of `nvidia-smi topo -m`: one row per provider, one
/// column per client, in first-seen order, with a legend.
pub fn render_matrix(decisions: &[&Decision]) -> String {
    fn label(p: &super::decide::Peer) -> String {
        match (&p.rdma, &p.pci) {
            (Some(n), _) => n.clone(),
            (None, Some(b)) => b.to_string(),
            (None, None) => "?".into(),
        }
    }
    let mut rows: Vec<String> = Vec::new();
    let mut cols: Vec<String> = Vec::new();
    for d in decisions {
        let (r, c) = (label(&d.provider), label(&d.client));
        if !rows.contains(&r) {
            rows.push(r);
        }
        if !cols.contains(&c) {
            cols.push(c);
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let w0 = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(8);
    let widths: Vec<usize> = cols.iter().map(|c| c.len().max(7)).collect();
    let mut out = format!("{:<w0$}", "");
    for (c, w) in cols.iter().zip(&widths) {
        let _ = write!(out, "  {c:<w$}");
    }
    out = out.trim_end().to_string() + "\n";
    for r in &rows {
        let mut line = format!("{r:<w0$}");
        for (c, w) in cols.iter().zip(&widths) {
            let cell = decisions
                .iter()
                .find(|d| &label(&d.provider) == r && &label(&d.client) == c)
                .map(|d| matrix_cell(d))
                .unwrap_or_else(|| "-".into());
            let _ = write!(line, "  {cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(
        "Legend: BUS/n = peer-to-peer with bus addresses, distance n (turns around in a switch)\n\
         \x20       HOST/n = through the host bridge (the root complex forwards it)\n\
         \x20       NO/n = refused   SW = software RDMA device (refused)   ? = device missing\n",
    );
    out
}
