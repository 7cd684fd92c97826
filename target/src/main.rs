//! `nvmfd`: the NVMe-oF target daemon.

use clap::{Parser, Subcommand, ValueEnum};
use nvmfd_target::daemon::Daemon;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing::{error, info, warn};

mod logwriter;
mod setup;
mod topology_cli;

#[derive(Parser)]
#[command(
    name = "nvmfd",
    version,
    about = "NVMe over Fabrics target (NVMe/TCP) with polled reactors"
)]
struct Cli {
    /// YAML configuration; without it the embedded default runs (NVMe/TCP on 127.0.0.1:4420, one
    /// 1 GiB RAM namespace).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// The JSON-RPC control socket (overrides `rpc.socket` of the config; default
    /// /var/tmp/nvmfd.sock). `nvmfd rpc` connects to the same path.
    #[arg(long, global = true, value_name = "PATH")]
    rpc_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and exit (0 if valid).
    CheckConfig { file: PathBuf },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Print the PCIe hierarchy and the peer-to-peer decision for every RDMA device × NVMe SSD
    /// (or listener × namespace of --config), or for one --pair.
    Topology(topology_cli::TopologyArgs),
    /// Call a JSON-RPC method of a running nvmfd (SPDK-style names, see docs/rpc.md), e.g.
    /// `nvmfd rpc nvmf_get_subsystems` or `nvmfd rpc save-config > saved.yaml`.
    Rpc(nvmfd_target::rpc::cli::RpcArgs),
    /// Bind an NVMe SSD to vfio-pci for the `nvme` bdev (--pci BDF), give it back to the
    /// kernel (--reset --pci BDF), list NVMe devices (--status), reserve hugepages (--hugemem).
    Setup(setup::SetupArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Logs go to stderr through a queue and a writer thread of their own (see `logwriter`), so no
/// thread that logs, reactors included, ever waits on stderr. Keep the guard until exit: dropping
/// it writes what is queued.
fn init_logs(format: LogFormat) -> Option<logwriter::Guard> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (writer, guard) = match logwriter::stderr() {
        Ok((w, g)) => (Some(w), Some(g)),
        Err(e) => {
            eprintln!("nvmfd: cannot start the log writer thread ({e}); logging synchronously");
            (None, None)
        }
    };
    // Colour only on a terminal: a file, a pipe or the journal gets plain text (escape codes
    // there are noise that log readers show literally).
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal());
    match (format, writer) {
        (LogFormat::Human, Some(w)) => b.with_writer(w).init(),
        (LogFormat::Json, Some(w)) => b.json().with_writer(w).init(),
        (LogFormat::Human, None) => b.with_writer(std::io::stderr).init(),
        (LogFormat::Json, None) => b.json().with_writer(std::io::stderr).init(),
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            return match nvmfd_config::load_file(&file) {
                Ok(cfg) => {
                    eprintln!(
                        "{}: ok ({} bdevs, {} subsystems)",
                        file.display(),
                        cfg.bdevs.len(),
                        cfg.subsystems.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::DefaultConfig) => {
            print!("{}", nvmfd_config::EMBEDDED_DEFAULT_YAML);
            return ExitCode::SUCCESS;
        }
        Some(Command::Topology(args)) => return topology_cli::run(&args),
        Some(Command::Rpc(args)) => {
            let socket = match (&cli.rpc_socket, &cli.config) {
                (Some(s), _) => s.clone(),
                (None, Some(path)) => match nvmfd_config::load_file(path) {
                    Ok(c) => c.rpc.socket,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
                (None, None) => PathBuf::from(nvmfd_config::DEFAULT_RPC_SOCKET),
            };
            return nvmfd_target::rpc::cli::run(&args, socket);
        }
        Some(Command::Setup(a)) => return setup::run(a),
        None => {}
    }
    // Block SIGINT/SIGTERM before any thread starts (the log writer is the first) so every thread
    // inherits the mask and the main thread alone receives them through sigwait.
    let signals = nvmfd_target::signals::block_termination_signals();
    let _log_guard = init_logs(cli.log_format);
    let cfg = match &cli.config {
        Some(path) => match nvmfd_config::load_file(path) {
            Ok(c) => c,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => {
            info!("no --config given: running the embedded default (NVMe/TCP 127.0.0.1:4420, 1 GiB RAM namespace)");
            nvmfd_config::Config::embedded_default()
        }
    };
    let mut daemon = match Daemon::start(&cfg) {
        Ok(d) => d,
        Err(e) => {
            error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let socket = cli
        .rpc_socket
        .clone()
        .unwrap_or_else(|| cfg.rpc.socket.clone());
    if let Err(e) = daemon.serve_rpc(&socket) {
        // Refuse to run without the control plane asked for: a second daemon on the same
        // socket, or a path someone else controls, is a configuration mistake to fix.
        error!("{e:#}");
        daemon.shutdown();
        return ExitCode::FAILURE;
    }
    if let Some(addr) = cfg.metrics.listen {
        if let Err(e) = daemon.serve_metrics(addr) {
            error!("{e:#}");
            daemon.shutdown();
            return ExitCode::FAILURE;
        }
    }
    info!(version = env!("CARGO_PKG_VERSION"), "nvmfd started");
    let sig = loop {
        match signals.wait() {
            "SIGHUP" => reload(cli.config.as_deref(), &daemon),
            other => break other,
        }
    };
    info!(
        signal = sig,
        "stopping: no new connections, finishing in-flight I/O"
    );
    daemon.shutdown();
    info!("nvmfd stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: re-read the configuration file and apply the difference live (as the RPC methods
/// do). A file that does not load, or a change that cannot be made while running, is reported
/// (with file:line:column for the former) and nothing changes.
fn reload(path: Option<&std::path::Path>, daemon: &Daemon) {
    let Some(path) = path else {
        warn!(
            "SIGHUP: no --config file to re-read (running the embedded default); nothing changed"
        );
        return;
    };
    info!(file = %path.display(), "SIGHUP: re-reading the configuration");
    let cfg = match nvmfd_config::load_file(path) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            error!(file = %path.display(), "SIGHUP: the configuration file is not valid; nothing changed");
            return;
        }
    };
    match daemon.live().reload(cfg, "SIGHUP") {
        Ok(a) if a.is_empty() => info!("SIGHUP: the configuration file matches the running state"),
        Ok(_) => info!("SIGHUP: configuration applied"),
        Err(e) => {
            error!(file = %path.display(), reason = %e, "SIGHUP: change refused; nothing changed")
        }
    }
}
