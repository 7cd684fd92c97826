//! `nvmfd topology`: prints the PCIe hierarchy and the peer-to-peer decision for every RDMA
//! device × NVMe SSD (or every listener × namespace of a configuration), or for one pair.
//! The model and the rules live in `nvmfd_p2p::topology`; this module only picks the pairs and
//! prints. JSON keys are documented in docs/p2p.md.

use clap::Args;
use nvmfd_config::{BdevKind, Config, TransportKind};
use nvmfd_p2p::topology::{
    decide_pair, decide_rdma, render_decision, render_matrix, render_tree, Bdf, Decision, Sources,
    Topology,
};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The JSON document's `schema` value; bumped only when a key changes meaning or goes away.
pub const JSON_SCHEMA: &str = "nvmfd.topology.v1";

/// Arguments of `nvmfd topology`.
#[derive(Args, Debug)]
pub struct TopologyArgs {
    /// Decide every listener × namespace of this configuration instead of every RDMA device ×
    /// NVMe SSD.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The sysfs tree to read (a fixture, or a copy from another machine).
    #[arg(long, default_value = "/sys")]
    pub sysfs_root: PathBuf,
    /// The directory holding `cpuinfo` and `cmdline`.
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Print one JSON document (keys documented in docs/p2p.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Decide one pair: the provider (the SSD whose memory is used) and the client (the device
    /// doing DMA). Exit status 0 if permitted, 1 if refused.
    #[arg(long, num_args = 2, value_names = ["PROVIDER_BDF", "CLIENT_BDF"])]
    pub pair: Option<Vec<Bdf>>,
}

/// One line of the report: a decision, or why a pair was not decided.
#[derive(Debug, Serialize)]
struct Entry {
    /// Subsystem NQN (config mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    subsystem: Option<String>,
    /// `transport://address:port` (config mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    listener: Option<String>,
    /// Namespace ID (config mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    nsid: Option<u32>,
    /// Backing bdev name (config mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    bdev: Option<String>,
    /// The decision, when the pair could be decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<Decision>,
    /// Why no decision was made (not an RDMA listener, not an NVMe SSD...).
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    schema: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topology: Option<&'a Topology>,
    entries: &'a [Entry],
}

fn every_rdma_by_ssd(topo: &Topology) -> Vec<Entry> {
    let mut out = Vec::new();
    for ssd in topo.nvme_functions() {
        for dev in &topo.rdma {
            out.push(Entry {
                subsystem: None,
                listener: None,
                nsid: None,
                bdev: None,
                decision: Some(decide_rdma(topo, ssd.bdf, &dev.name)),
                skipped: None,
            });
        }
    }
    out
}

fn config_pairs(topo: &Topology, cfg: &Config) -> Vec<Entry> {
    let mut out = Vec::new();
    for sub in &cfg.subsystems {
        for l in &sub.listeners {
            for ns in &sub.namespaces {
                let bdev = cfg.bdevs.iter().find(|b| b.name == ns.bdev);
                let ssd = match bdev.map(|b| &b.kind) {
                    Some(BdevKind::Uring { path, .. }) => path
                        .to_str()
                        .and_then(|p| topo.nvme_device_bdf(p))
                        .map(|b| format!("kernel NVMe device on {b}")),
                    _ => None,
                };
                let skipped = match l.transport {
                    // NVMe/TCP moves data through host memory: there is no peer to decide.
                    TransportKind::Tcp => format!(
                        "NVMe/TCP listener: data goes through host memory, P2P needs an RDMA \
                         listener{}",
                        ssd.map(|s| format!(" (bdev {}: {s})", ns.bdev))
                            .unwrap_or_default()
                    ),
                    // The RDMA transport bounces through registered host memory for now.
                    TransportKind::Rdma => format!(
                        "NVMe/RDMA listener: data goes through registered host memory (no CMB \
                         buffers yet){}",
                        ssd.map(|s| format!(" (bdev {}: {s})", ns.bdev))
                            .unwrap_or_default()
                    ),
                };
                out.push(Entry {
                    subsystem: Some(sub.nqn.clone()),
                    listener: Some(format!("{}://{}:{}", l.transport, l.address, l.port)),
                    nsid: Some(ns.nsid),
                    bdev: Some(ns.bdev.clone()),
                    decision: None,
                    skipped: Some(skipped),
                });
            }
        }
    }
    out
}

fn print_entries(out: &mut String, entries: &[Entry]) {
    for e in entries {
        if let (Some(s), Some(l), Some(n)) = (&e.subsystem, &e.listener, e.nsid) {
            out.push_str(&format!(
                "{s} {l} namespace {n} (bdev {}):\n",
                e.bdev.as_deref().unwrap_or("?")
            ));
        }
        if let Some(d) = &e.decision {
            out.push_str(&render_decision(d));
        }
        if let Some(why) = &e.skipped {
            out.push_str(&format!("  not decided: {why}\n"));
        }
    }
}

/// Runs the subcommand, printing to stdout; errors go to stderr with exit status 2.
pub fn run(args: &TopologyArgs) -> ExitCode {
    match report(args) {
        Ok((text, code)) => {
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(text.as_bytes()).is_err() {
                return ExitCode::from(2);
            }
            code
        }
        Err(e) => {
            eprintln!("nvmfd topology: {e}");
            ExitCode::from(2)
        }
    }
}

/// Builds the report text and the exit status.
fn report(args: &TopologyArgs) -> Result<(String, ExitCode), String> {
    let src = Sources::new(&args.sysfs_root, &args.proc_root);
    let topo = Topology::load(&src).map_err(|e| {
        format!(
            "cannot read the PCI tree under {}: {e}",
            args.sysfs_root.join("devices").display()
        )
    })?;
    if let Some(pair) = &args.pair {
        let [provider, client] = pair[..] else {
            return Err("--pair takes two PCI addresses".into());
        };
        let d = decide_pair(&topo, provider, client);
        let code = if d.permitted {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
        let entries = [Entry {
            subsystem: None,
            listener: None,
            nsid: None,
            bdev: None,
            decision: Some(d),
            skipped: None,
        }];
        let text = if args.json {
            json(&Report {
                schema: JSON_SCHEMA,
                topology: None,
                entries: &entries,
            })?
        } else {
            let mut s = String::new();
            print_entries(&mut s, &entries);
            s
        };
        return Ok((text, code));
    }
    let entries = match &args.config {
        Some(path) => {
            let cfg = nvmfd_config::load_file(path).map_err(|e| e.to_string())?;
            config_pairs(&topo, &cfg)
        }
        None => every_rdma_by_ssd(&topo),
    };
    let text = if args.json {
        json(&Report {
            schema: JSON_SCHEMA,
            topology: Some(&topo),
            entries: &entries,
        })?
    } else {
        let mut s = render_tree(&topo);
        s.push('\n');
        if entries.is_empty() {
            s.push_str(&format!(
                "no pairs to decide: {} NVMe SSD(s), {} RDMA device(s)\n",
                topo.nvme_functions().len(),
                topo.rdma.len()
            ));
        }
        let decided: Vec<&Decision> = entries.iter().filter_map(|e| e.decision.as_ref()).collect();
        if !decided.is_empty() {
            s.push_str(&render_matrix(&decided));
            s.push('\n');
        }
        print_entries(&mut s, &entries);
        for w in &topo.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    };
    Ok((text, ExitCode::SUCCESS))
}

fn json<T: Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}
