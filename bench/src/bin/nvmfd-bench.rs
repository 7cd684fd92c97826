//! nvmfd-bench: the P2P-vs-bounce report tools. `init` starts a results.json, `add-run` appends
//! one fio job's result (with the daemon's counters and CPU time), `note` adds a note, `report` writes the Markdown
//! table + PCIe traffic model and the SVG chart. `bench/p2p-vs-bounce.sh` drives them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use nvmfd_bench::report::{self, Results, RESULTS_SCHEMA};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "nvmfd-bench",
    about = "P2P-vs-bounce results, report and chart"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start an empty results file.
    Init {
        #[arg(long)]
        results: PathBuf,
        /// tcp or rdma.
        #[arg(long)]
        transport: String,
        /// BDF of the SSD (its CMB).
        #[arg(long)]
        ssd: Option<String>,
        /// BDF of the RDMA NIC (none for TCP or soft-RoCE).
        #[arg(long)]
        nic: Option<String>,
        /// DRAM bandwidth in GB/s, for the model's ceiling.
        #[arg(long)]
        dram_gbs: Option<f64>,
        /// When and where (free text).
        #[arg(long, default_value = "")]
        generated: String,
        /// A note printed above the table (repeatable).
        #[arg(long)]
        note: Vec<String>,
    },
    /// Append one fio job's result.
    AddRun {
        #[arg(long)]
        results: PathBuf,
        /// The job's name (bench/fio/NAME.fio).
        #[arg(long)]
        job: String,
        /// The daemon's `p2p:` setting for the run (auto, off).
        #[arg(long)]
        mode: String,
        /// fio --output-format=json output of the timed job.
        #[arg(long)]
        fio: PathBuf,
        /// The daemon's /metrics before and after the job (for P2P byte counters).
        #[arg(long)]
        metrics_before: Option<PathBuf>,
        #[arg(long)]
        metrics_after: Option<PathBuf>,
        /// The daemon's CPU seconds (user + system) during the job.
        #[arg(long)]
        cpu_seconds: Option<f64>,
        /// Outcome of the verify variant: pass or fail.
        #[arg(long)]
        verify: Option<String>,
    },
    /// Add a note to the results (shown above the table).
    Note {
        #[arg(long)]
        results: PathBuf,
        text: String,
    },
    /// Write the Markdown report and the SVG chart.
    Report {
        #[arg(long)]
        results: PathBuf,
        /// `nvmfd topology --json` of the machine the runs were on.
        #[arg(long)]
        topology: Option<PathBuf>,
        #[arg(long)]
        markdown: PathBuf,
        #[arg(long)]
        svg: PathBuf,
    },
}

fn read_json(p: &Path) -> anyhow::Result<Value> {
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&t).with_context(|| format!("parsing {}", p.display()))
}

fn load(p: &Path) -> anyhow::Result<Results> {
    let r: Results = serde_json::from_value(read_json(p)?)
        .with_context(|| format!("{} is not a results file", p.display()))?;
    if r.schema != RESULTS_SCHEMA {
        bail!(
            "{}: schema {:?}, expected {RESULTS_SCHEMA:?}",
            p.display(),
            r.schema
        );
    }
    Ok(r)
}

fn save(p: &Path, r: &Results) -> anyhow::Result<()> {
    let t = serde_json::to_string_pretty(r)? + "\n";
    std::fs::write(p, t).with_context(|| format!("writing {}", p.display()))
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvmfd-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(a: Args) -> anyhow::Result<()> {
    match a.cmd {
        Cmd::Init {
            results,
            transport,
            ssd,
            nic,
            dram_gbs,
            generated,
            note,
        } => {
            if transport != "tcp" && transport != "rdma" {
                bail!("--transport is tcp or rdma");
            }
            save(
                &results,
                &Results {
                    schema: RESULTS_SCHEMA.to_string(),
                    generated,
                    transport,
                    ssd,
                    nic,
                    dram_gbs,
                    notes: note,
                    runs: Vec::new(),
                },
            )
        }
        Cmd::AddRun {
            results,
            job,
            mode,
            fio,
            metrics_before,
            metrics_after,
            cpu_seconds,
            verify,
        } => {
            let mut r = load(&results)?;
            let counters = match (&metrics_before, &metrics_after) {
                (Some(b), Some(a)) => {
                    let rd = |p: &PathBuf| {
                        std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))
                    };
                    let (b, a) = (rd(b)?, rd(a)?);
                    match (report::p2p_counters(&b), report::p2p_counters(&a)) {
                        (Some(b), Some(a)) => {
                            Some((a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            // The data path is P2P only when the daemon says bytes went through the CMB.
            let effective = match counters {
                Some((cmb, _)) if cmb > 0 => "p2p",
                _ => "bounce",
            };
            let mut run = report::run_from_fio(&read_json(&fio)?, &job, &mode, effective)
                .map_err(|e| anyhow!("{}: {e}", fio.display()))?;
            run.bytes_via_cmb = counters.map(|c| c.0);
            run.bytes_via_host = counters.map(|c| c.1);
            run.counters_source = match (counters, &metrics_after) {
                (Some(_), _) => "nvmfd /metrics (nvmfd_p2p_*_bytes_total)".to_string(),
                (None, Some(_)) => {
                    "absent: nvmfd's /metrics has no P2P byte counters yet".to_string()
                }
                (None, None) => "absent: no metrics were collected".to_string(),
            };
            run.daemon_cpu_seconds = cpu_seconds;
            run.verify = match verify.as_deref() {
                None => None,
                Some("pass") => Some(true),
                Some("fail") => Some(false),
                Some(v) => bail!("--verify is pass or fail, not {v:?}"),
            };
            r.runs.push(run);
            save(&results, &r)
        }
        Cmd::Note { results, text } => {
            let mut r = load(&results)?;
            r.notes.push(text);
            save(&results, &r)
        }
        Cmd::Report {
            results,
            topology,
            markdown,
            svg,
        } => {
            let mut r = load(&results)?;
            let topo = match &topology {
                Some(t) => read_json(t)?,
                None => {
                    r.notes
                        .push("No topology was recorded: the model has no link speeds.".into());
                    r.ssd = None;
                    r.nic = None;
                    serde_json::json!({"topology": {"functions": {}}})
                }
            };
            let md = report::markdown(&r, &topo).map_err(|e| anyhow!(e))?;
            std::fs::write(&markdown, md)
                .with_context(|| format!("writing {}", markdown.display()))?;
            std::fs::write(&svg, report::svg(&r))
                .with_context(|| format!("writing {}", svg.display()))?;
            Ok(())
        }
    }
}
