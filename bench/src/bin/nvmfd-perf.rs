//! nvmfd-perf: an NVMe/TCP perf initiator loosely like spdk_nvme_perf. One I/O queue, pipelined
//! at the given depth, for the given time; prints IOPS, bandwidth and latency percentiles.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use nvmfd_bench::perf::{self, PerfConfig, Workload};
use nvmfd_bench::HostOptions;

#[derive(Parser, Debug)]
#[command(name = "nvmfd-perf", about = "NVMe/TCP perf initiator")]
struct Args {
    /// Target address.
    #[arg(long, default_value = "127.0.0.1:4420")]
    addr: SocketAddr,
    /// Subsystem NQN.
    #[arg(long)]
    nqn: String,
    /// randread, randwrite, read or write.
    #[arg(long, default_value = "randread", value_parser = parse_workload)]
    workload: Workload,
    /// Bytes per I/O (a multiple of the namespace block size).
    #[arg(long, default_value_t = 4096)]
    io_size: usize,
    /// Commands kept in flight on the I/O queue.
    #[arg(long, default_value_t = 32)]
    queue_depth: u16,
    /// Seconds to run (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    time: f64,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// Pin the thread to this CPU.
    #[arg(long)]
    core: Option<usize>,
    /// Request header digests.
    #[arg(long)]
    hdgst: bool,
    /// Request data digests.
    #[arg(long)]
    ddgst: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Writes: read back and check everything written. Reads: check stamped blocks.
    #[arg(long)]
    verify: bool,
    /// Limit I/O to the first MiB of the namespace.
    #[arg(long)]
    span_mib: Option<u64>,
    /// I/O queue ID.
    #[arg(long, default_value_t = 1)]
    qid: u16,
    /// Host NQN (default: a random UUID-based one).
    #[arg(long)]
    hostnqn: Option<String>,
    /// Keep-alive timeout in ms (keep alives are sent every third of it).
    #[arg(long, default_value_t = 30_000)]
    kato_ms: u32,
    /// Seed of the random offsets.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    Workload::parse(s)
        .ok_or_else(|| format!("unknown workload {s:?} (randread, randwrite, read, write)"))
}

fn pin(core: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if core >= libc::CPU_SETSIZE as usize {
            bail!("core {core} is beyond CPU_SETSIZE");
        }
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning to core {core}"));
    }
    Ok(())
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
    if let Some(core) = args.core {
        pin(core)?;
    }
    if !(args.time.is_finite() && args.time > 0.0) {
        bail!("--time must be a positive number of seconds");
    }
    let mut host = HostOptions::new(args.nqn.clone());
    host.header_digest = args.hdgst;
    host.data_digest = args.ddgst;
    host.kato_ms = args.kato_ms;
    if let Some(n) = &args.hostnqn {
        host.hostnqn = n.clone();
    }
    let cfg = PerfConfig {
        addr: args.addr,
        host,
        workload: args.workload,
        io_size: args.io_size,
        queue_depth: args.queue_depth,
        duration: Duration::from_secs_f64(args.time),
        nsid: args.nsid,
        qid: args.qid,
        span_bytes: args.span_mib.map(|m| m << 20),
        verify: args.verify,
        seed: args.seed,
    };
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
