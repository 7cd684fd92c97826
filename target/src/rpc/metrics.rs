//! Prometheus metrics: `GET /metrics` in the text exposition format (OpenMetrics, written by the
//! `prometheus-client` crate), served by the control plane on its own thread.
//!
//! Every scrape builds the numbers afresh from the control plane's view (the controller registry,
//! the bdevs, each reactor thread's CPU time from `/proc`), so nothing is counted on the reactors
//! and no lock or atomic is shared with the I/O path. Per-I/O counters (commands, bytes,
//! latency) are not there yet: they need per-reactor counters the reactors publish.

use super::methods::Context;
use crate::core::SubsysRef;
use anyhow::Context as _;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

type Labels = Vec<(String, String)>;

fn gauge_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The metrics text for one scrape.
pub fn render(ctx: &Context) -> String {
    let view = ctx.live.view();
    let mut reg = Registry::default();
    reg.register(
        "nvmfd_build",
        "nvmfd's version",
        Info::new(vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]),
    );
    let reactors = gauge_family(&mut reg, "nvmfd_reactors", "Polling reactor threads");
    reactors
        .get_or_create(&Vec::new())
        .set(ctx.reactors.len() as i64);
    let cpu = Family::<Labels, Counter<f64, AtomicU64>>::default();
    reg.register(
        "nvmfd_reactor_cpu_seconds",
        "CPU time of each reactor thread, by mode (usr, sys)",
        cpu.clone(),
    );
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    for r in &ctx.reactors {
        if let Some((_, usr, sys)) = super::methods::thread_times(&format!("reactor-{}", r.id)) {
            let (id, core) = (r.id.to_string(), r.core.to_string());
            for (mode, ticks) in [("usr", usr), ("sys", sys)] {
                cpu.get_or_create(&l(&[("reactor", &id), ("core", &core), ("mode", mode)]))
                    .inc_by(ticks as f64 / hz);
            }
        }
    }
    // Counted by each reactor on its own and reported on request (summed here, per reactor).
    let completed = Family::<Labels, Counter<u64, AtomicU64>>::default();
    reg.register(
        "nvmfd_reactor_completed_io",
        "Block-device I/Os completed on each reactor",
        completed.clone(),
    );
    let pending = gauge_family(
        &mut reg,
        "nvmfd_reactor_pending_io",
        "Block-device I/Os in flight on each reactor",
    );
    let reports = ctx.live.reports();
    // P2P: data bytes staged in a CMB or in host memory per namespace (summed over reactors).
    let cmb = Family::<Labels, Counter<u64, AtomicU64>>::default();
    reg.register(
        "nvmfd_p2p_cmb_bytes",
        "Data bytes of commands whose buffer was in the SSD's CMB, per namespace",
        cmb.clone(),
    );
    let host = Family::<Labels, Counter<u64, AtomicU64>>::default();
    reg.register(
        "nvmfd_p2p_host_bytes",
        "Data bytes of commands whose buffer was in host memory, per namespace",
        host.clone(),
    );
    let fallbacks = Family::<Labels, Counter<u64, AtomicU64>>::default();
    reg.register(
        "nvmfd_p2p_fallbacks",
        "Commands of a CMB-staged namespace that took host memory, by reason",
        fallbacks.clone(),
    );
    for n in crate::p2p::namespace_counters(&view.target, &reports) {
        let nsid = n.nsid.to_string();
        let labels = l(&[("subsystem", &n.subsystem), ("nsid", &nsid)]);
        cmb.get_or_create(&labels).inc_by(n.counters.cmb_bytes);
        host.get_or_create(&labels).inc_by(n.counters.host_bytes);
        for (reason, v) in n.counters.fallbacks() {
            let labels = l(&[
                ("subsystem", &n.subsystem),
                ("nsid", &nsid),
                ("reason", reason),
            ]);
            fallbacks.get_or_create(&labels).inc_by(v);
        }
    }
    for r in reports {
        let id = r.reactor.to_string();
        completed
            .get_or_create(&l(&[("reactor", &id)]))
            .inc_by(r.completed_io);
        pending
            .get_or_create(&l(&[("reactor", &id)]))
            .set(r.pending_bdev_io.min(i64::MAX as u64) as i64);
    }
    let ctrls = gauge_family(
        &mut reg,
        "nvmfd_subsystem_controllers",
        "Live controllers of each subsystem",
    );
    let nss = gauge_family(
        &mut reg,
        "nvmfd_subsystem_namespaces",
        "Namespaces of each subsystem",
    );
    let ioq = gauge_family(
        &mut reg,
        "nvmfd_controller_io_queues",
        "Connected I/O queues of each live controller",
    );
    let mut subsystems: Vec<(SubsysRef, &str, usize)> = Vec::new();
    if view.target.discovery_enabled {
        subsystems.push((SubsysRef::Discovery, nvmfd_config::DISCOVERY_NQN, 0));
    }
    for (i, s) in view.target.subsystems.iter().enumerate() {
        if !s.live {
            continue;
        }
        subsystems.push((SubsysRef::Nvm(i), &s.nqn, s.namespaces.len()));
    }
    for (sref, nqn, namespaces) in subsystems {
        let live = view.target.controllers(sref);
        ctrls
            .get_or_create(&l(&[("nqn", nqn)]))
            .set(live.len() as i64);
        if sref != SubsysRef::Discovery {
            nss.get_or_create(&l(&[("nqn", nqn)]))
                .set(namespaces as i64);
        }
        for c in live {
            ioq.get_or_create(&l(&[
                ("nqn", nqn),
                ("cntlid", &c.cntlid.to_string()),
                ("hostnqn", &c.hostnqn),
            ]))
            .set(c.live_io_queues() as i64);
        }
    }
    let size = gauge_family(&mut reg, "nvmfd_bdev_size_bytes", "Capacity of each bdev");
    let bs = gauge_family(
        &mut reg,
        "nvmfd_bdev_block_size_bytes",
        "Logical block size of each bdev",
    );
    for (_, _, b) in &view.bdevs {
        let labels = l(&[("bdev", &b.name), ("kind", b.kind)]);
        size.get_or_create(&labels)
            .set((u64::from(b.block_size) * b.num_blocks).min(i64::MAX as u64) as i64);
        bs.get_or_create(&labels).set(i64::from(b.block_size));
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// A running metrics endpoint; stopped on drop.
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve `/metrics` on `addr` (port 0 picks a free port; see [`MetricsServer::addr`]).
pub fn start(addr: SocketAddr, ctx: Arc<Context>) -> anyhow::Result<MetricsServer> {
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("metrics: cannot listen on {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    warn!("metrics listener unusable");
                    return;
                };
                let busy = Arc::new(tokio::sync::Semaphore::new(16));
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        a = listener.accept() => {
                            let Ok((s, _)) = a else { continue };
                            let Ok(permit) = busy.clone().try_acquire_owned() else { continue };
                            let ctx = ctx.clone();
                            tokio::spawn(async move {
                                let _ = tokio::time::timeout(Duration::from_secs(10), scrape(s, &ctx)).await;
                                drop(permit);
                            });
                        }
                    }
                }
            })
        })?;
    info!(address = %bound, "metrics on /metrics");
    Ok(MetricsServer {
        addr: bound,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// One HTTP/1.x exchange: `GET /metrics` → 200, another path → 404, another method → 405.
async fn scrape(mut s: tokio::net::TcpStream, ctx: &Context) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(ctx),
        ),
        (b"GET", _) => ("404 Not Found", "text/plain", "see /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}
