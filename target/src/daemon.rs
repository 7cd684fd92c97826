//! The daemon: open block devices, build the target, bind listeners, start reactors, accept
//! connections, and stop cleanly on SIGINT/SIGTERM.

use crate::core::Target;
use crate::reactor::{self, ReactorConfig, ReactorHandle};
use anyhow::{bail, Context};
use nvmfd_bdev::Bdev;
use nvmfd_config::{Config, TransportKind};
use nvmfd_transport::group::{AnyGroup, AnyGroupConfig, AnyIncoming};
use nvmfd_transport::tcp::{TcpGroupConfig, TcpParams};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// A running daemon (used by `main` and by integration tests).
pub struct Daemon {
    /// The target as the daemon started (live changes make new snapshots: [`Daemon::live`];
    /// the controller registry and the discovery counter are shared by all of them).
    pub target: Arc<Target>,
    /// The addresses actually bound (port 0 in the config picks a free port).
    pub listen_addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    reactors: Vec<ReactorHandle<AnyIncoming>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
    /// What the control plane reports and changes (`crate::live`).
    cfg: Config,
    live: Arc<crate::live::Live>,
    rpc: Option<crate::rpc::RpcServer>,
    metrics: Option<crate::rpc::metrics::MetricsServer>,
    /// The start-up placement decisions (`crate::p2p`).
    placements: Arc<Vec<nvmfd_p2p::placement::PlacementDecision>>,
}

impl Daemon {
    /// Open everything the config names and start serving.
    pub fn start(cfg: &Config) -> anyhow::Result<Daemon> {
        let mut bdevs = Vec::with_capacity(cfg.bdevs.len());
        for b in &cfg.bdevs {
            let bdev =
                nvmfd_bdev::open(b).with_context(|| format!("cannot open bdev {:?}", b.name))?;
            let i = bdev.info();
            info!(bdev = %i.name, kind = i.kind, block_size = i.block_size, blocks = i.num_blocks,
                size_bytes = i.block_size as u64 * i.num_blocks, "bdev opened");
            bdevs.push(bdev);
        }
        Self::start_with_bdevs(cfg, bdevs)
    }

    /// `start` with the block devices already open: one per `cfg.bdevs` entry, in that order
    /// (lets a test wrap a device, e.g. in `nvmfd_bdev::testing::Recorder`).
    pub fn start_with_bdevs(cfg: &Config, bdevs: Vec<Arc<dyn Bdev>>) -> anyhow::Result<Daemon> {
        if bdevs.len() != cfg.bdevs.len() {
            bail!(
                "{} block devices given for {} in the config",
                bdevs.len(),
                cfg.bdevs.len()
            );
        }
        // Where each namespace's data lives, decided once, before anything is served.
        // The CMB registrations with RDMA devices first: the CMB pool is made with them, before
        // anything else (TCP staging, a bdev channel) makes it without.
        let rdma_chain = crate::p2p_rdma::for_config(cfg, &bdevs);
        let placements = crate::p2p::decide(cfg, &bdevs, &rdma_chain);
        crate::p2p::check(&placements)?;
        let infos: Vec<_> = bdevs.iter().map(|b| b.info().clone()).collect();
        let ids = crate::identity::resolve(cfg)?;
        let target = Target::with_identities(cfg, &infos, &ids);
        for s in &target.subsystems {
            info!(nqn = %s.nqn, serial = %s.serial, namespaces = s.namespaces.len(), allow_any_host = s.allow_any_host,
                hosts = s.hosts.len(), "subsystem ready");
        }

        let mut listeners = Vec::new();
        let mut listen_addrs = Vec::new();
        // RDMA listeners share one rdma_cm channel, made (and rdma-core loaded) only when the
        // config has one: a TCP-only daemon never touches the RDMA libraries.
        let mut rdma_listeners: Option<nvmfd_transport::rdma::Listeners> = None;
        for l in target.listeners() {
            match l.transport {
                TransportKind::Tcp => {
                    let addr = SocketAddr::new(l.address, l.port);
                    let sock = TcpListener::bind(addr)
                        .with_context(|| format!("cannot listen on {addr} (tcp)"))?;
                    sock.set_nonblocking(true)?;
                    let bound = sock.local_addr()?;
                    info!(transport = "tcp", address = %bound, "listening");
                    listen_addrs.push(bound);
                    listeners.push(sock);
                }
                TransportKind::Rdma => {
                    let addr = SocketAddr::new(l.address, l.port);
                    // One line naming the address and what is missing (no rdma-core, no
                    // device with this address, ...).
                    let device = match nvmfd_transport::rdma::check_listen_address(addr) {
                        Ok(d) => d,
                        Err(line) => bail!("{line}"),
                    };
                    let rl = match rdma_listeners.as_mut() {
                        Some(rl) => rl,
                        None => {
                            let r = &cfg.transports.rdma;
                            let limits = nvmfd_transport::rdma::admit::ConnLimits {
                                max_io_queues: r.max_io_queues,
                                max_queue_depth: r.max_queue_depth,
                                max_admin_entries: r.max_queue_depth,
                                max_initiator_depth: nvmfd_transport::rdma::MAX_INITIATOR_DEPTH,
                            };
                            let rl = nvmfd_transport::rdma::Listeners::new(limits)
                                .map_err(|e| anyhow::anyhow!("RDMA listener {addr}: {e}"))?;
                            rdma_listeners.insert(rl)
                        }
                    };
                    rl.listen(addr)
                        .map_err(|e| anyhow::anyhow!("RDMA listener {addr}: cannot listen: {e}"))?;
                    info!(transport = "rdma", address = %addr,
                        device = device.as_deref().unwrap_or("any"), "listening");
                }
            }
        }
        if listeners.is_empty() && rdma_listeners.is_none() {
            warn!("no listeners configured: nothing to serve");
        }

        // One poll group per transport on every reactor, each sized by its own section.
        let tcp = &cfg.transports.tcp;
        let tcp_group = TcpGroupConfig {
            params: TcpParams {
                in_capsule_data_size: tcp.in_capsule_data_size,
                max_io_size: tcp.max_io_size,
                max_queue_depth: tcp.max_queue_depth,
                header_digest: tcp.header_digest,
                data_digest: tcp.data_digest,
                c2h_success: tcp.c2h_success,
            },
            info: nvmfd_transport::tcp::transport_info(tcp),
            buffer_pool_size: tcp.buffer_pool_size,
            staging: crate::p2p::tcp_staging(cfg, &bdevs, &placements),
        };
        let mut groups = vec![AnyGroupConfig::Tcp(tcp_group)];
        if rdma_listeners.is_some() {
            let r = &cfg.transports.rdma;
            groups.push(AnyGroupConfig::Rdma(
                nvmfd_transport::rdma::RdmaGroupConfig {
                    params: nvmfd_transport::rdma::RdmaParams {
                        in_capsule_data_size: r.in_capsule_data_size,
                        max_io_size: r.max_io_size,
                        srq_depth: r.srq_depth,
                        buffer_pool_size: r.buffer_pool_size,
                    },
                    info: nvmfd_transport::rdma::transport_info(r),
                    cmb: Arc::from(rdma_chain.pools.clone()),
                    staged: Arc::from(crate::p2p_rdma::staging(cfg, &placements)),
                },
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let idle_sleep = (cfg.reactors.idle_sleep_us > 0)
            .then(|| Duration::from_micros(cfg.reactors.idle_sleep_us as u64));
        if cfg.reactors.cores.is_empty() {
            bail!("reactors: no cores configured");
        }
        let mut reactors = Vec::new();
        for (id, &core) in cfg.reactors.cores.iter().enumerate() {
            let rc = ReactorConfig {
                id,
                core,
                idle_sleep,
                groups: groups.clone(),
            };
            reactors.push(reactor::spawn::<AnyGroup>(
                rc,
                target.clone(),
                bdevs.clone(),
                stop.clone(),
            )?);
        }
        let inboxes: Vec<_> = reactors.iter().map(|r| r.inbox.clone()).collect();
        let astop = stop.clone();
        let alink = crate::live::AcceptorLink::default();
        let live = Arc::new(crate::live::Live::new(
            target.clone(),
            crate::live::with_identities(cfg, &ids),
            &bdevs,
            &listen_addrs,
            reactors.iter().map(|r| r.control.clone()).collect(),
            alink.clone(),
        ));
        let acceptor = std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || {
                crate::live::acceptor_loop(listeners, rdma_listeners, inboxes, astop, alink)
            })?;
        Ok(Daemon {
            target,
            listen_addrs,
            stop,
            reactors,
            acceptor: Some(acceptor),
            cfg: cfg.clone(),
            live,
            rpc: None,
            metrics: None,
            placements: Arc::new(placements),
        })
    }

    /// Serve the JSON-RPC control plane on a Unix socket at `socket` (see `crate::rpc`), on a
    /// thread of its own, until shutdown. Fails when the socket cannot be created safely (see
    /// `crate::rpc`); the rest of the daemon is untouched by that.
    pub fn serve_rpc(&mut self, socket: &std::path::Path) -> anyhow::Result<()> {
        let ctx = self.control_context(socket);
        self.rpc = Some(crate::rpc::RpcServer::start(socket, ctx)?);
        Ok(())
    }

    /// Serve Prometheus metrics on `addr` (`metrics.listen`; port 0 picks one) until shutdown;
    /// returns the bound address.
    pub fn serve_metrics(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let socket = self.cfg.rpc.socket.clone();
        let ctx = Arc::new(self.control_context(&socket));
        let m = crate::rpc::metrics::start(addr, ctx)?;
        // The reactors count every command from now on (nothing is counted without a scraper).
        self.live.count_io(true);
        let bound = m.addr;
        self.metrics = Some(m);
        Ok(bound)
    }

    /// The start-up placement decisions, one per (transport, namespace).
    pub fn placements(&self) -> &Arc<Vec<nvmfd_p2p::placement::PlacementDecision>> {
        &self.placements
    }

    /// The running state and the way to change it (RPC methods, SIGHUP).
    pub fn live(&self) -> &Arc<crate::live::Live> {
        &self.live
    }

    fn control_context(&self, socket: &std::path::Path) -> crate::rpc::methods::Context {
        use crate::rpc::methods::{Context, ReactorInfo};
        self.live.set_rpc_socket(socket);
        Context {
            placements: self.placements.clone(),
            live: self.live.clone(),
            reactors: (self.cfg.reactors.cores.iter().enumerate())
                .map(|(id, &core)| ReactorInfo { id, core })
                .collect(),
        }
    }

    /// Stop accepting, let reactors finish in-flight I/O and flush responses, then join them.
    pub fn shutdown(mut self) {
        if let Some(r) = self.rpc.take() {
            r.stop();
        }
        // The P2P counters, while the reactors still answer.
        let reports = crate::rpc::reports::reports(&self.live.collect());
        let target = self.live.view().target;
        crate::p2p::log_counters(&crate::p2p::namespace_counters(&target, &reports));
        self.metrics = None;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for r in self.reactors.drain(..) {
            if r.thread.join().is_err() {
                error!("a reactor panicked");
            }
        }
        info!("all reactors stopped");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
