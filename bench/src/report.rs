//! The P2P-vs-bounce report: `results.json` (written by `bench/p2p-vs-bounce.sh` through
//! `nvmfd-bench add-run`) and the topology (`nvmfd topology --json`) in; a Markdown table, an
//! SVG bar chart and a PCIe traffic *model* out.
//!
//! The model, per run, from the bytes moved and the recorded topology:
//! - Where the bytes went: the daemon's counters when it has them (`bytes_via_cmb`,
//!   `bytes_via_host`); without counters all of fio's bytes are taken to have gone the way the
//!   run's effective mode says (labelled "assumed").
//! - DRAM traffic = host bytes x DRAM passes of a bounced byte + CMB bytes x passes of a staged
//!   byte. NVMe/RDMA: a bounced byte is written to DRAM by one DMA and read by the other (2), a
//!   P2P byte never touches DRAM (0). NVMe/TCP (kernel sockets): the NIC's DMA into the socket
//!   buffer, the CPU's copy out of it (read + write) and the SSD's DMA (4); staged in the CMB, the
//!   copy writes straight into the SSD's memory (2: the socket buffer's write and read).
//! - Root-complex traffic = bytes crossing the host bridge: a bounced byte twice (NIC side and SSD
//!   side); a P2P byte zero times when NIC and SSD meet below it (a switch), once when their
//!   common point is the root complex; a TCP-staged byte twice (NIC DMA in, CPU write out).
//! - Ceiling: the narrowest hop of the path each mode uses, divided by how often a byte crosses
//!   it, and the DRAM bandwidth (if given) divided by the DRAM passes. A link's bandwidth per
//!   direction is the topology's own `gbps` (Gbit/s after line encoding, computed once by
//!   `nvmfd topology`, docs/p2p.md "JSON") / 8; a topology recorded without it has no link
//!   bandwidths (the ceiling then says so).
//!
//! It is a model: it does not measure PCIe or DRAM, it multiplies measured bytes by stated
//! assumptions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const RESULTS_SCHEMA: &str = "nvmfd.bench.p2p-vs-bounce.v1";

/// The whole comparison.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub schema: String,
    /// Free text: when and where (host, kernel, commit).
    #[serde(default)]
    pub generated: String,
    /// "tcp" or "rdma".
    pub transport: String,
    /// BDF of the SSD whose CMB is (or would be) used.
    #[serde(default)]
    pub ssd: Option<String>,
    /// BDF of the RDMA NIC; None for TCP or a software RDMA device.
    #[serde(default)]
    pub nic: Option<String>,
    /// DRAM bandwidth in GB/s for the ceiling, if known.
    #[serde(default)]
    pub dram_gbs: Option<f64>,
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub runs: Vec<Run>,
}

/// One fio job in one mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub job: String,
    /// The `p2p:` setting the daemon was started with ("auto", "off").
    pub mode: String,
    /// What the data path did: "p2p" or "bounce".
    pub effective: String,
    pub iops: f64,
    pub mb_per_s: f64,
    /// The larger of fio's read and write completion-latency p99.
    pub p99_us: f64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub seconds: f64,
    /// Daemon counters; None when the daemon has no such counter.
    #[serde(default)]
    pub bytes_via_cmb: Option<u64>,
    #[serde(default)]
    pub bytes_via_host: Option<u64>,
    /// Where the counters came from, or why there are none.
    #[serde(default)]
    pub counters_source: String,
    /// The daemon's user + system CPU time during the job.
    #[serde(default)]
    pub daemon_cpu_seconds: Option<f64>,
    /// Outcome of the job's verify variant, if it was run.
    #[serde(default)]
    pub verify: Option<bool>,
}

/// One PCIe link on a device's way to the root complex.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    /// The function below the link and the one above it.
    pub below: String,
    pub above: String,
    /// For the label.
    pub speed_gts: Option<f64>,
    pub width: Option<u32>,
    /// Usable bandwidth per direction in Gbit/s, as `nvmfd topology --json` computed it
    /// (`current_link.gbps`); `None` when it is unknown or was not recorded.
    pub gbps: Option<f64>,
}

impl Hop {
    /// Usable bandwidth per direction in GB/s: the topology's `gbps` in bytes.
    pub fn gbytes_per_s(&self) -> Option<f64> {
        Some(self.gbps? / 8.0)
    }

    pub fn label(&self) -> String {
        let s = self
            .speed_gts
            .map_or("? GT/s".to_string(), |s| format!("{s} GT/s"));
        let w = self.width.map_or("x?".to_string(), |w| format!("x{w}"));
        format!("{} -> {} ({s} {w})", self.below, self.above)
    }
}

/// The functions from `bdf` up to its root port (inclusive), from `nvmfd topology --json`.
pub fn ancestry(topo: &Value, bdf: &str) -> Result<Vec<String>, String> {
    let funcs = functions(topo)?;
    let mut out = Vec::new();
    let mut cur = Some(bdf.to_string());
    while let Some(b) = cur {
        let f = funcs
            .get(&b)
            .ok_or_else(|| format!("the topology has no function {b}"))?;
        if out.contains(&b) || out.len() > 64 {
            return Err(format!("the topology's parents loop at {b}"));
        }
        out.push(b);
        cur = f.get("parent").and_then(Value::as_str).map(str::to_string);
    }
    Ok(out)
}

fn functions(topo: &Value) -> Result<&serde_json::Map<String, Value>, String> {
    topo.get("topology")
        .unwrap_or(topo)
        .get("functions")
        .and_then(Value::as_object)
        .ok_or_else(|| "not `nvmfd topology --json` output: no topology.functions".to_string())
}

/// The physical links from `bdf` up to the root complex. A link is reported by the function
/// below it when that is an endpoint, a switch's upstream port or a PCIe-to-PCI bridge (a
/// downstream or root port reports the link below itself, the same one again); the bus inside
/// a switch is no link.
pub fn hops_to_root(topo: &Value, bdf: &str) -> Result<Vec<Hop>, String> {
    let funcs = functions(topo)?;
    let chain = ancestry(topo, bdf)?;
    let mut hops = Vec::new();
    for (i, b) in chain.iter().enumerate() {
        let f = &funcs[b];
        let pt = f.get("port_type").and_then(Value::as_str).unwrap_or("");
        let Some(above) = chain.get(i + 1) else {
            break;
        };
        if matches!(
            pt,
            "endpoint" | "legacy_endpoint" | "switch_upstream" | "pcie_to_pci_bridge"
        ) {
            let link = f.get("current_link");
            hops.push(Hop {
                below: b.clone(),
                above: above.clone(),
                speed_gts: link
                    .and_then(|l| l.get("speed_gts"))
                    .and_then(Value::as_f64),
                width: link
                    .and_then(|l| l.get("width"))
                    .and_then(Value::as_u64)
                    .map(|w| w as u32),
                gbps: link.and_then(|l| l.get("gbps")).and_then(Value::as_f64),
            });
        }
    }
    Ok(hops)
}

/// Where two devices' ways up meet.
#[derive(Debug, Clone, PartialEq)]
pub enum Meeting {
    /// Below the root complex, at this bridge (a switch port).
    Switch(String),
    /// Only at the root complex (different root ports, or one of them not on PCIe).
    RootComplex,
}

pub fn meeting(topo: &Value, a: &str, b: &str) -> Result<Meeting, String> {
    let (ca, cb) = (ancestry(topo, a)?, ancestry(topo, b)?);
    let funcs = functions(topo)?;
    for x in &ca {
        if cb.contains(x) {
            let pt = funcs[x].get("port_type").and_then(Value::as_str);
            return Ok(if pt == Some("root_port") {
                Meeting::RootComplex
            } else {
                Meeting::Switch(x.clone())
            });
        }
    }
    Ok(Meeting::RootComplex)
}

/// The model of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    pub job: String,
    pub mode: String,
    pub effective: String,
    pub cmb_bytes: u64,
    pub host_bytes: u64,
    /// True when the split came from daemon counters, false when assumed from the mode.
    pub counted: bool,
    pub dram_bytes: u64,
    pub rc_bytes: u64,
    /// DRAM bytes a full bounce of the same bytes would have needed, minus `dram_bytes`.
    pub dram_saved: u64,
    /// Throughput ceiling in GB/s of this mode on the recorded topology, and what sets it.
    pub ceiling_gbs: Option<f64>,
    pub limit: String,
    /// What all of the run's bytes would need if bounced, and if all went through the CMB:
    /// (DRAM bytes, root-complex bytes).
    pub if_bounce: (u64, u64),
    pub if_p2p: (u64, u64),
}

/// A mode's throughput ceiling on the recorded topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Ceiling {
    pub gbs: Option<f64>,
    /// What sets it.
    pub limit: String,
}

fn ceiling_of(path: &[(Hop, u64)], passes: u64, dram_gbs: Option<f64>) -> Ceiling {
    let mut best: Option<(f64, String)> = None;
    let mut consider = |gbs: f64, why: String| {
        if best.as_ref().is_none_or(|(c, _)| gbs < *c) {
            best = Some((gbs, why));
        }
    };
    for (h, n) in path {
        if let Some(bw) = h.gbytes_per_s() {
            consider(bw / *n as f64, format!("link {}", h.label()));
        }
    }
    if let (Some(d), true) = (dram_gbs, passes > 0) {
        consider(
            d / passes as f64,
            format!("DRAM {d} GB/s / {passes} passes"),
        );
    }
    Ceiling {
        gbs: best.as_ref().map(|c| c.0),
        limit: best.map_or(
            "no link bandwidth recorded (the topology has no `gbps`)".to_string(),
            |c| c.1,
        ),
    }
}

/// The ceilings of (bounce, P2P) on the recorded topology.
pub fn ceilings(r: &Results, topo: &Value) -> Result<(Ceiling, Ceiling), String> {
    let (hp, cp) = dram_passes(&r.transport);
    Ok((
        ceiling_of(&mode_path(r, topo, false)?.hops, hp, r.dram_gbs),
        ceiling_of(&mode_path(r, topo, true)?.hops, cp, r.dram_gbs),
    ))
}

/// DRAM passes of a bounced byte and of a byte through the CMB.
pub fn dram_passes(transport: &str) -> (u64, u64) {
    if transport == "rdma" {
        (2, 0)
    } else {
        (4, 2)
    }
}

/// The PCIe hops a mode's data crosses (each with crossings per payload byte, per direction)
/// and how often a byte crosses the root complex.
struct ModePath {
    hops: Vec<(Hop, u64)>,
    rc: u64,
}

fn mode_path(r: &Results, topo: &Value, p2p: bool) -> Result<ModePath, String> {
    let Some(ssd) = r.ssd.as_deref() else {
        return Ok(ModePath {
            hops: Vec::new(),
            rc: if p2p && r.transport == "rdma" { 0 } else { 2 },
        });
    };
    let ssd_hops = hops_to_root(topo, ssd)?;
    let nic_hops = match r.nic.as_deref() {
        Some(n) => hops_to_root(topo, n)?,
        None => Vec::new(),
    };
    if !p2p || r.transport != "rdma" {
        // Bounce, or TCP staging (the CPU writes into the CMB over the SSD's whole way up):
        // every hop of both ways once.
        let hops = ssd_hops
            .into_iter()
            .chain(nic_hops)
            .map(|h| (h, 1))
            .collect();
        return Ok(ModePath { hops, rc: 2 });
    }
    // P2P: only the hops below the point where NIC and SSD meet; above it nothing.
    let stop = match r.nic.as_deref() {
        Some(n) => match meeting(topo, ssd, n)? {
            Meeting::Switch(b) => Some(b),
            Meeting::RootComplex => None,
        },
        None => None,
    };
    let mut hops = Vec::new();
    for side in [ssd_hops, nic_hops] {
        for h in side {
            if Some(&h.below) == stop.as_ref() {
                break;
            }
            let last = Some(&h.above) == stop.as_ref();
            hops.push((h, 1));
            if last {
                break;
            }
        }
    }
    Ok(ModePath {
        hops,
        rc: u64::from(stop.is_none()),
    })
}

/// The model of every run.
pub fn model(r: &Results, topo: &Value) -> Result<Vec<ModelRow>, String> {
    let (host_passes, cmb_passes) = dram_passes(&r.transport);
    let mut rows = Vec::new();
    for run in &r.runs {
        let total = run.read_bytes + run.write_bytes;
        let (cmb, host, counted) = match (run.bytes_via_cmb, run.bytes_via_host) {
            (Some(c), Some(h)) => (c, h, true),
            _ if run.effective == "p2p" => (total, 0, false),
            _ => (0, total, false),
        };
        let p2p = run.effective == "p2p";
        let host_path = mode_path(r, topo, false)?;
        let cmb_path = mode_path(r, topo, true)?;
        let dram = host * host_passes + cmb * cmb_passes;
        let rc_bytes = host * host_path.rc + cmb * cmb_path.rc;
        // The ceiling of the mode's own path (bounce path for bounce, P2P path for P2P).
        let c = if p2p {
            ceiling_of(&cmb_path.hops, cmb_passes, r.dram_gbs)
        } else {
            ceiling_of(&host_path.hops, host_passes, r.dram_gbs)
        };
        rows.push(ModelRow {
            job: run.job.clone(),
            mode: run.mode.clone(),
            effective: run.effective.clone(),
            cmb_bytes: cmb,
            host_bytes: host,
            counted,
            dram_bytes: dram,
            rc_bytes,
            dram_saved: (cmb + host) * host_passes - dram,
            ceiling_gbs: c.gbs,
            limit: c.limit,
            if_bounce: (total * host_passes, total * host_path.rc),
            if_p2p: (total * cmb_passes, total * cmb_path.rc),
        });
    }
    Ok(rows)
}

/// Bytes in binary units.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map_or("n/a (no counter)".to_string(), human_bytes)
}

/// The Markdown report: results table, then the model.
pub fn markdown(r: &Results, topo: &Value) -> Result<String, String> {
    let rows = model(r, topo)?;
    let mut s = String::new();
    let _ = writeln!(s, "## P2P vs bounce ({})\n", r.transport);
    if !r.generated.is_empty() {
        let _ = writeln!(s, "{}\n", r.generated);
    }
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    if !r.notes.is_empty() {
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "| job | mode (p2p: → data path) | IOPS | MB/s | p99 latency | bytes via CMB | bytes via host memory | host-DRAM bytes saved (model) | daemon CPU | verify |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for (run, m) in r.runs.iter().zip(&rows) {
        let saved = if m.counted {
            human_bytes(m.dram_saved)
        } else {
            format!("{} (assumed: {})", human_bytes(m.dram_saved), m.effective)
        };
        let _ = writeln!(
            s,
            "| {} | {} → {} | {:.0} | {:.1} | {:.1} µs | {} | {} | {} | {} | {} |",
            run.job,
            run.mode,
            run.effective,
            run.iops,
            run.mb_per_s,
            run.p99_us,
            opt_bytes(run.bytes_via_cmb),
            opt_bytes(run.bytes_via_host),
            saved,
            run.daemon_cpu_seconds
                .map_or("n/a".to_string(), |c| format!("{c:.2} s")),
            match run.verify {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "-",
            }
        );
    }
    let sources: Vec<&str> = {
        let mut v: Vec<&str> = r.runs.iter().map(|x| x.counters_source.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v.into_iter().filter(|x| !x.is_empty()).collect()
    };
    if !sources.is_empty() {
        let _ = writeln!(s, "\nCounters: {}.", sources.join("; "));
    }
    let (hp, cp) = dram_passes(&r.transport);
    let _ = writeln!(s, "\n### PCIe traffic model (a model, not a measurement)\n");
    let _ = writeln!(
        s,
        "Assumptions ({}): a byte through host memory costs {hp} DRAM passes and crosses the root complex twice; a byte through the CMB costs {cp} DRAM passes{}. Where the daemon has no counters, all of fio's bytes are assumed to take the run's data path.",
        r.transport,
        if r.transport == "rdma" {
            " and crosses the root complex 0 times if NIC and SSD meet at a switch, once if only at the root complex"
        } else {
            " (socket buffer written and read; the copy goes straight into the CMB) and crosses the root complex twice (NIC DMA in, CPU write to the CMB)"
        }
    );
    if let Some(ssd) = &r.ssd {
        let hops = hops_to_root(topo, ssd)?;
        let l: Vec<String> = hops.iter().map(Hop::label).collect();
        let _ = writeln!(s, "\nSSD {ssd} to the root complex: {}.", l.join(", "));
    }
    match &r.nic {
        Some(n) => {
            let hops = hops_to_root(topo, n)?;
            let l: Vec<String> = hops.iter().map(Hop::label).collect();
            let m = meeting(topo, r.ssd.as_deref().unwrap_or(n), n)?;
            let _ = writeln!(
                s,
                "NIC {n} to the root complex: {}; NIC and SSD meet {}.",
                l.join(", "),
                match m {
                    Meeting::Switch(b) => format!("at switch port {b}"),
                    Meeting::RootComplex => "only at the root complex".to_string(),
                }
            );
        }
        None => {
            let _ = writeln!(
                s,
                "No PCIe NIC recorded: its side of the path is not modelled."
            );
        }
    }
    let (cb, cp2) = ceilings(r, topo)?;
    let g = |c: &Ceiling| c.gbs.map_or("-".to_string(), |v| format!("{v:.3} GB/s"));
    let _ = writeln!(
        s,
        "\nThroughput ceiling on this topology: bounce {} (set by {}), P2P {} (set by {}).",
        g(&cb),
        cb.limit,
        g(&cp2),
        cp2.limit
    );
    let _ = writeln!(
        s,
        "\nWhat each run's bytes would need on either path:\n\n| job | mode | bytes moved | DRAM if bounced | DRAM if via CMB | root complex if bounced | root complex if via CMB |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for (run, m) in r.runs.iter().zip(&rows) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.job,
            m.mode,
            human_bytes(run.read_bytes + run.write_bytes),
            human_bytes(m.if_bounce.0),
            human_bytes(m.if_p2p.0),
            human_bytes(m.if_bounce.1),
            human_bytes(m.if_p2p.1)
        );
    }
    let _ = writeln!(
        s,
        "\nThe runs as they went (split from the counters, or assumed):"
    );
    let _ = writeln!(
        s,
        "\n| job | mode | CMB bytes | host bytes | split from | DRAM traffic | root-complex traffic | DRAM saved | ceiling | set by |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for m in &rows {
        let _ = writeln!(
            s,
            "| {} | {} → {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.job,
            m.mode,
            m.effective,
            human_bytes(m.cmb_bytes),
            human_bytes(m.host_bytes),
            if m.counted { "counters" } else { "assumed" },
            human_bytes(m.dram_bytes),
            human_bytes(m.rc_bytes),
            human_bytes(m.dram_saved),
            m.ceiling_gbs
                .map_or("-".to_string(), |c| format!("{c:.3} GB/s")),
            m.limit
        );
    }
    Ok(s)
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

const COLOURS: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1"];

/// Bars of MB/s per job, one per mode, with the value on each bar and a legend: readable
/// without the table. Every bar is a `<rect class="bar" data-job=.. data-mode=..>`.
pub fn svg(r: &Results) -> String {
    let mut jobs: Vec<&str> = Vec::new();
    let mut modes: Vec<&str> = Vec::new();
    let mut val: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for run in &r.runs {
        if !jobs.contains(&run.job.as_str()) {
            jobs.push(&run.job);
        }
        if !modes.contains(&run.mode.as_str()) {
            modes.push(&run.mode);
        }
        val.insert((&run.job, &run.mode), run.mb_per_s);
    }
    let max = val.values().cloned().fold(0.0f64, f64::max).max(1e-9);
    let (bar_w, gap, left, top, plot_h) = (36.0, 28.0, 70.0, 50.0, 260.0);
    let group_w = bar_w * modes.len().max(1) as f64 + gap;
    let width = left + group_w * jobs.len().max(1) as f64 + 20.0;
    let height = top + plot_h + 110.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<title>{}</title>"#,
        xml_escape(&format!(
            "nvmfd P2P vs bounce, {} (MB/s per job and mode)",
            r.transport
        ))
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        xml_escape(&format!(
            "nvmfd over NVMe/{}: MB/s per job, p2p: auto vs off",
            r.transport.to_uppercase()
        ))
    );
    // Axis and a few grid lines.
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = top + plot_h - plot_h * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            width - 20.0,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">MB/s</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (j, job) in jobs.iter().enumerate() {
        let gx = left + gap / 2.0 + group_w * j as f64;
        for (m, mode) in modes.iter().enumerate() {
            let Some(v) = val.get(&(*job, *mode)) else {
                continue;
            };
            let h = plot_h * v / max;
            let x = gx + bar_w * m as f64;
            let y = top + plot_h - h;
            let _ = writeln!(
                s,
                r#"<rect class="bar" data-job="{}" data-mode="{}" data-value="{v:.3}" x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}</title></rect>"#,
                xml_escape(job),
                xml_escape(mode),
                bar_w - 4.0,
                COLOURS[m % COLOURS.len()],
                xml_escape(&format!("{job}, p2p: {mode}: {v:.1} MB/s"))
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{v:.0}</text>"#,
                x + (bar_w - 4.0) / 2.0,
                y - 3.0
            );
        }
        let lx = gx + (group_w - gap) / 2.0;
        let ly = top + plot_h + 14.0;
        let _ = writeln!(
            s,
            r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" transform="rotate(-30 {lx:.1} {ly:.1})">{}</text>"#,
            xml_escape(job)
        );
    }
    let ly = height - 16.0;
    for (m, mode) in modes.iter().enumerate() {
        let x = left + 150.0 * m as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 10.0,
            COLOURS[m % COLOURS.len()],
            x + 16.0,
            xml_escape(&format!("p2p: {mode}"))
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One run from fio's `--output-format=json` output: the jobs not named `fill` are summed.
pub fn run_from_fio(fio: &Value, job: &str, mode: &str, effective: &str) -> Result<Run, String> {
    let jobs = fio
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or("not fio JSON output: no jobs")?;
    let (mut iops, mut bw, mut rb, mut wb, mut p99, mut secs) =
        (0.0, 0.0, 0u64, 0u64, 0.0f64, 0.0f64);
    let mut any = false;
    for j in jobs
        .iter()
        .filter(|j| j.get("jobname").and_then(Value::as_str) != Some("fill"))
    {
        any = true;
        if let Some(e) = j.get("error").and_then(Value::as_i64).filter(|&e| e != 0) {
            return Err(format!("fio job {job} reported error {e}"));
        }
        for dir in ["read", "write"] {
            let d = &j[dir];
            iops += d["iops"].as_f64().unwrap_or(0.0);
            let bytes = d["io_bytes"].as_u64().unwrap_or(0);
            bw += d["bw_bytes"].as_f64().unwrap_or(0.0);
            if dir == "read" {
                rb += bytes;
            } else {
                wb += bytes;
            }
            if bytes > 0 {
                if let Some(p) = d["clat_ns"]["percentile"]["99.000000"].as_f64() {
                    p99 = p99.max(p / 1000.0);
                }
            }
        }
        secs = secs.max(j["job_runtime"].as_f64().unwrap_or(0.0) / 1000.0);
    }
    if !any {
        return Err(format!("fio output for {job} has no measured job"));
    }
    Ok(Run {
        job: job.to_string(),
        mode: mode.to_string(),
        effective: effective.to_string(),
        iops,
        mb_per_s: bw / 1e6,
        p99_us: p99,
        read_bytes: rb,
        write_bytes: wb,
        seconds: secs,
        bytes_via_cmb: None,
        bytes_via_host: None,
        counters_source: String::new(),
        daemon_cpu_seconds: None,
        verify: None,
    })
}

/// The P2P byte counters in a Prometheus text exposition, if the daemon exports them:
/// `nvmfd_p2p_cmb_bytes_total` and `nvmfd_p2p_host_bytes_total`, summed over labels.
pub fn p2p_counters(metrics: &str) -> Option<(u64, u64)> {
    let sum = |name: &str| -> Option<u64> {
        let mut found = false;
        let mut t = 0f64;
        for l in metrics.lines() {
            let Some(rest) = l.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                found = true;
                t += v;
            }
        }
        found.then_some(t as u64)
    };
    Some((
        sum("nvmfd_p2p_cmb_bytes_total")?,
        sum("nvmfd_p2p_host_bytes_total")?,
    ))
}
