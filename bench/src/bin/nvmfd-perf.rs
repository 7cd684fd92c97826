//! nvmfd-perf: an NVMe-oF perf initiator in the manner of spdk_nvme_perf. `--cores` threads,
//! each with `--connections` I/O queues kept `--queue-depth` deep, for `--time` seconds or
//! `--ios` I/Os; prints IOPS, MB/s and latency percentiles as a table or `--json`, and a live
//! progress line on stderr when stderr is a terminal.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use nvmfd_bench::host::Fabric;
use nvmfd_bench::perf::{self, PerfConfig, Workload};
use nvmfd_bench::HostOptions;

#[derive(Parser, Debug)]
#[command(
    name = "nvmfd-perf",
    about = "NVMe-oF perf initiator (NVMe/TCP, NVMe/RDMA)"
)]
struct Args {
    /// Target address.
    #[arg(long, default_value = "127.0.0.1:4420")]
    addr: SocketAddr,
    /// Subsystem NQN.
    #[arg(long)]
    nqn: String,
    /// Fabric: tcp or rdma (NVMe/RDMA: keyed SGLs to registered buffers, RDMA READ/WRITE by the target).
    #[arg(long, default_value = "tcp", value_parser = parse_fabric)]
    transport: Fabric,
    /// randread, randwrite, read, write, randrw or rw.
    #[arg(long, default_value = "randread", value_parser = parse_workload)]
    workload: Workload,
    /// Percentage of reads for randrw and rw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    rwmixread: u8,
    /// Bytes per I/O (a multiple of the namespace block size).
    #[arg(long, default_value_t = 4096)]
    io_size: usize,
    /// Commands kept in flight on each I/O queue.
    #[arg(long, default_value_t = 32)]
    queue_depth: u16,
    /// Seconds to run (fractions allowed); with --ios, whichever ends first.
    #[arg(long)]
    time: Option<f64>,
    /// Stop after this many I/Os in all (split evenly over the connections).
    #[arg(long)]
    ios: Option<u64>,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// I/O queues (one TCP connection each) per worker thread.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Pin the worker threads to these CPUs, round-robin (e.g. 1,2,3). Not pinned without it.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Pin to this one CPU (the same as --cpus N).
    #[arg(long)]
    core: Option<usize>,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// Request header digests.
    #[arg(long)]
    hdgst: bool,
    /// Request data digests.
    #[arg(long)]
    ddgst: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Check every read, and read back and check everything written.
    #[arg(long)]
    verify: bool,
    /// Limit I/O to the first MiB of the namespace.
    #[arg(long)]
    span_mib: Option<u64>,
    /// I/O queue ID of the first connection (the others follow).
    #[arg(long, default_value_t = 1)]
    qid: u16,
    /// Host NQN (default: a random UUID-based one).
    #[arg(long)]
    hostnqn: Option<String>,
    /// Keep-alive timeout in ms (keep alives are sent every third of it).
    #[arg(long, default_value_t = 30_000)]
    kato_ms: u32,
    /// How long a blocking receive waits for the target, in ms (a test against an SSD whose
    /// controller reset takes long raises it).
    #[arg(long, default_value_t = 10_000)]
    io_timeout_ms: u64,
    /// Seed of the random offsets.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// No progress line even on a terminal.
    #[arg(long)]
    no_progress: bool,
    /// Poll the connections without ever blocking (uses the whole core, like spdk_nvme_perf).
    #[arg(long)]
    busy_poll: bool,
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    Workload::parse(s).ok_or_else(|| {
        format!("unknown workload {s:?} (randread, randwrite, read, write, randrw, rw)")
    })
}

fn parse_fabric(s: &str) -> Result<Fabric, String> {
    Fabric::parse(s).ok_or_else(|| format!("unknown transport {s:?} (tcp, rdma)"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nvmfd-perf: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let duration = match (args.time, args.ios) {
        (Some(t), _) if !(t.is_finite() && t > 0.0) => {
            bail!("--time must be a positive number of seconds")
        }
        (Some(t), _) => Some(Duration::from_secs_f64(t)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    if args.ios == Some(0) {
        bail!("--ios must be at least 1");
    }
    let mut host = HostOptions::new(args.nqn.clone());
    host.header_digest = args.hdgst;
    host.data_digest = args.ddgst;
    host.kato_ms = args.kato_ms;
    host.io_timeout = Duration::from_millis(args.io_timeout_ms.max(1));
    if let Some(n) = &args.hostnqn {
        host.hostnqn = n.clone();
    }
    let mut cpus = args.cpus.clone();
    if let Some(c) = args.core {
        cpus = vec![c];
    }
    let mut cfg = PerfConfig::new(args.addr, &args.nqn);
    cfg.fabric = args.transport;
    cfg.host = host;
    cfg.workload = args.workload;
    cfg.mix_read_pct = args.rwmixread;
    cfg.io_size = args.io_size;
    cfg.queue_depth = args.queue_depth;
    cfg.duration = duration;
    cfg.io_count = args.ios;
    cfg.nsid = args.nsid;
    cfg.first_qid = args.qid;
    cfg.cores = args.cores;
    cfg.connections = args.connections;
    cfg.cpus = cpus;
    cfg.span_bytes = args.span_mib.map(|m| m << 20);
    cfg.verify = args.verify;
    cfg.seed = args.seed;
    cfg.busy_poll = args.busy_poll;
    cfg.progress = !args.no_progress && std::io::stderr().is_terminal();
    let report = perf::run(&cfg)?;
    if args.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.table());
        if args.verify {
            println!(
                "verify: {} blocks checked, {} mismatches",
                report.verified_blocks, report.verify_failure_count
            );
            for f in &report.verify_failures {
                println!("  {f}");
            }
        }
    }
    Ok(if report.verify_failure_count > 0 || report.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
