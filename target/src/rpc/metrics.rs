//! Prometheus metrics: `GET /metrics` in the text exposition format (OpenMetrics, written by the
//! `prometheus-client` crate), served by the control plane on its own thread.
//!
//! Every scrape builds the numbers afresh: from the control plane's view (the controller
//! registry, the bdevs, each reactor thread's CPU time from `/proc`, the process's memory and
//! age) and from every reactor's own counters, asked for by message and summed here
//! (`crate::reactor::stats` explains why on request and not published), through the one
//! collection path the RPC methods use too (`super::reports`: a late reactor's last report). Nothing on the I/O path
//! takes a lock or touches an atomic another reactor writes. The metric names and labels are
//! listed in docs/metrics.md.

use super::methods::Context;
use super::reports::Seen;
use crate::core::SubsysRef;
use crate::reactor::stats::{Hist, OpClass, StatSubsys, BUCKETS, CLASSES, LATENCY_CLASSES};
use crate::reactor::ReactorReport;
use anyhow::Context as _;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
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

fn counter_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn clamp(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Histograms built from bucket counts summed over reactors (`prometheus-client`'s own
/// histogram only takes single observations).
#[derive(Debug, Default)]
struct Histograms(BTreeMap<Labels, Hist>);

impl EncodeMetric for Histograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            let buckets: Vec<(f64, u64)> = (0..BUCKETS)
                .map(|i| (Hist::upper_bound_seconds(i), h.counts[i]))
                .collect();
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum_ns as f64 / 1e9, h.count(), &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Register how fresh each reactor's numbers are (see [`super::reports`]); a reactor never heard
/// from has no series yet.
fn freshness_metrics(reg: &mut Registry, seen: &[Seen]) {
    let stale = gauge_family(
        reg,
        "nvmfd_reactor_report_stale",
        "1 when this scrape shows a reactor's last report because it did not answer within 2 s",
    );
    let age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    reg.register(
        "nvmfd_reactor_report_age_seconds",
        "Age of the reactor numbers this scrape shows (0: answered this scrape)",
        age.clone(),
    );
    let misses = counter_family(
        reg,
        "nvmfd_reactor_report_misses",
        "Collections of the reactors' reports (scrapes, and RPC calls that show them) a reactor did not answer within 2 s (its last report was shown instead)",
    );
    for f in seen.iter().filter(|s| s.report.is_some()) {
        let labels = l(&[("reactor", &f.reactor.to_string())]);
        stale.get_or_create(&labels).set(i64::from(f.stale));
        age.get_or_create(&labels).set(f.age.as_secs_f64());
        misses.get_or_create(&labels).inc_by(f.misses);
    }
}

/// The metrics text for one scrape. Blocks up to 2 s (waiting for the reactors' reports).
pub fn render(ctx: &Context) -> String {
    let view = ctx.live.view();
    let seen = ctx.live.collect();
    let reports = super::reports::reports(&seen);
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
    for &(sref, nqn, namespaces) in &subsystems {
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
    let nqn_of = |s: StatSubsys| -> String {
        match s {
            StatSubsys::None => String::new(),
            StatSubsys::Discovery => nvmfd_config::DISCOVERY_NQN.to_string(),
            StatSubsys::Nvm(i) => (view.target.subsystems.get(i))
                .map(|s| s.nqn.clone())
                .unwrap_or_default(),
        }
    };
    let shown: Vec<StatSubsys> = (subsystems.iter())
        .map(|(s, _, _)| match s {
            SubsysRef::Discovery => StatSubsys::Discovery,
            SubsysRef::Nvm(i) => StatSubsys::Nvm(*i),
        })
        .collect();
    io_metrics(&mut reg, &reports, &shown, &nqn_of);
    freshness_metrics(&mut reg, &seen);
    p2p_metrics(&mut reg, &view.target, &reports);
    process_metrics(&mut reg);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// Register the numbers the reactors count (`reports`, one per reactor), summed over reactors.
/// `subsystems` are the live ones (their controller and queue-pair gauges are shown even at 0);
/// `nqn` names a subsystem.
pub(crate) fn io_metrics(
    reg: &mut Registry,
    reports: &[ReactorReport],
    subsystems: &[StatSubsys],
    nqn: &dyn Fn(StatSubsys) -> String,
) {
    // Per reactor.
    let completed = counter_family(
        reg,
        "nvmfd_reactor_completed_io",
        "Block-device I/Os completed on each reactor",
    );
    let pending = gauge_family(
        reg,
        "nvmfd_reactor_pending_io",
        "Block-device I/Os in flight on each reactor",
    );
    let polls = counter_family(
        reg,
        "nvmfd_reactor_polls",
        "Poll loop iterations of each reactor, by result (busy: found work, idle: found none)",
    );
    let in_use = gauge_family(
        reg,
        "nvmfd_reactor_buffers_in_use",
        "Data buffers of each reactor's transport pools lent out now",
    );
    let waiters = gauge_family(
        reg,
        "nvmfd_reactor_buffer_waiters",
        "Commands of each reactor waiting for a data buffer now",
    );
    for r in reports {
        let id = r.reactor.to_string();
        completed
            .get_or_create(&l(&[("reactor", &id)]))
            .inc_by(r.completed_io);
        pending
            .get_or_create(&l(&[("reactor", &id)]))
            .set(clamp(r.pending_bdev_io));
        polls
            .get_or_create(&l(&[("reactor", &id), ("result", "busy")]))
            .inc_by(r.polls_busy);
        polls
            .get_or_create(&l(&[("reactor", &id), ("result", "idle")]))
            .inc_by(r.polls_idle);
        for (kind, p) in &r.pools {
            let labels = l(&[("reactor", &id), ("transport", &kind.to_string())]);
            in_use.get_or_create(&labels).inc_by(clamp(p.in_use));
            waiters.get_or_create(&labels).inc_by(clamp(p.waiters));
        }
    }

    // Connected controllers and queue pairs, per subsystem and transport.
    let ctrls = gauge_family(
        reg,
        "nvmfd_connected_controllers",
        "Controllers (admin queues) connected, per subsystem and transport",
    );
    let qps = gauge_family(
        reg,
        "nvmfd_connected_queue_pairs",
        "Queue pairs connected, per subsystem, transport and queue kind (admin, io)",
    );
    let mut transports: Vec<String> = (reports.iter())
        .flat_map(|r| r.io.iter().map(|(k, _)| k.to_string()))
        .collect();
    transports.sort();
    transports.dedup();
    for &s in subsystems {
        let n = nqn(s);
        for t in &transports {
            ctrls
                .get_or_create(&l(&[("subsystem", &n), ("transport", t)]))
                .set(0);
            for q in ["admin", "io"] {
                qps.get_or_create(&l(&[("subsystem", &n), ("transport", t), ("queue", q)]))
                    .set(0);
            }
        }
    }
    for q in reports.iter().flat_map(|r| &r.qpairs) {
        let s = match q.subsys {
            SubsysRef::Discovery => StatSubsys::Discovery,
            SubsysRef::Nvm(i) => StatSubsys::Nvm(i),
        };
        let (n, t) = (nqn(s), q.transport.to_string());
        let kind = if q.qid == 0 { "admin" } else { "io" };
        if q.qid == 0 {
            ctrls
                .get_or_create(&l(&[("subsystem", &n), ("transport", &t)]))
                .inc();
        }
        qps.get_or_create(&l(&[("subsystem", &n), ("transport", &t), ("queue", kind)]))
            .inc();
    }

    // Per command: by subsystem, namespace, transport and opcode class.
    let commands = counter_family(
        reg,
        "nvmfd_commands",
        "Commands answered, per subsystem, namespace (nsid 0: none), transport and opcode class",
    );
    let bytes = counter_family(
        reg,
        "nvmfd_bytes",
        "Data bytes of successful Read and Write commands (NLB x block size)",
    );
    let errors = counter_family(
        reg,
        "nvmfd_command_errors",
        "Commands answered with an error status, by status code type and status code (hex)",
    );
    let in_flight = gauge_family(
        reg,
        "nvmfd_commands_in_flight",
        "Commands taken and not answered yet (held AERs excluded)",
    );
    let mut latency = Histograms::default();
    for r in reports {
        for (kind, io) in &r.io {
            let t = kind.to_string();
            // Errors each reactor told apart by status, to find the rest (status "other").
            let mut by_status: BTreeMap<(u32, usize), u64> = BTreeMap::new();
            for e in &io.errors {
                let Some(key) = r.stat_keys.get(e.id as usize) else {
                    continue;
                };
                *by_status.entry((e.id, e.class as usize)).or_default() += e.count;
                let (sct, sc) = (format!("0x{:x}", e.sct), format!("0x{:02x}", e.sc));
                errors
                    .get_or_create(&l(&[
                        ("subsystem", &nqn(key.subsys)),
                        ("nsid", &key.nsid.to_string()),
                        ("transport", &t),
                        ("opcode", e.class.name()),
                        ("sct", &sct),
                        ("sc", &sc),
                    ]))
                    .inc_by(e.count);
            }
            for (id, n) in io.ns.iter().enumerate() {
                let Some(key) = r.stat_keys.get(id) else {
                    continue;
                };
                let (sub, nsid) = (nqn(key.subsys), key.nsid.to_string());
                let is_ns = key.nsid != 0;
                for class in OpClass::ALL {
                    let c = class as usize;
                    let always = is_ns && matches!(class, OpClass::Read | OpClass::Write);
                    let labels = l(&[
                        ("subsystem", &sub),
                        ("nsid", &nsid),
                        ("transport", &t),
                        ("opcode", class.name()),
                    ]);
                    if always || n.commands[c] != 0 {
                        commands.get_or_create(&labels).inc_by(n.commands[c]);
                    }
                    if always || n.bytes[c] != 0 {
                        bytes.get_or_create(&labels).inc_by(n.bytes[c]);
                    }
                    let told = by_status.get(&(id as u32, c)).copied().unwrap_or(0);
                    let rest = n.errors[c].saturating_sub(told);
                    if rest != 0 {
                        let mut labels = labels;
                        labels.push(("sct".into(), "other".into()));
                        labels.push(("sc".into(), "other".into()));
                        errors.get_or_create(&labels).inc_by(rest);
                    }
                }
                if is_ns || n.in_flight != 0 {
                    in_flight
                        .get_or_create(&l(&[
                            ("subsystem", &sub),
                            ("nsid", &nsid),
                            ("transport", &t),
                        ]))
                        .inc_by(n.in_flight);
                }
                for (k, h) in n.latency.iter().enumerate() {
                    if h.count() == 0 && !(is_ns && k < 2) {
                        continue;
                    }
                    let labels = l(&[
                        ("subsystem", &sub),
                        ("nsid", &nsid),
                        ("transport", &t),
                        ("class", LATENCY_CLASSES[k]),
                    ]);
                    latency.0.entry(labels).or_default().add(h);
                }
            }
        }
    }
    debug_assert_eq!(CLASSES, OpClass::ALL.len());
    reg.register(
        "nvmfd_command_latency_seconds",
        "Time from taking a command off the transport to handing its response back, per \
         subsystem, namespace, transport and class (read, write, other); held AERs excluded",
        latency,
    );
    // P2P counters (bytes moved through a controller memory buffer or through host memory)
    // come from the same reports when the data path keeps them: see docs/metrics.md.
}

/// P2P: data bytes staged in a CMB or in host memory per namespace, and fallbacks (summed over
/// reactors; the data path counts them per reactor, `nvmfd_transport::staging`).
fn p2p_metrics(reg: &mut Registry, target: &crate::core::Target, reports: &[ReactorReport]) {
    let cmb = counter_family(
        reg,
        "nvmfd_p2p_cmb_bytes",
        "Data bytes of commands whose buffer was in the SSD's CMB, per namespace",
    );
    let host = counter_family(
        reg,
        "nvmfd_p2p_host_bytes",
        "Data bytes of commands whose buffer was in host memory, per namespace",
    );
    let fallbacks = counter_family(
        reg,
        "nvmfd_p2p_fallbacks",
        "Commands of a CMB-staged namespace that took host memory, by reason",
    );
    for n in crate::p2p::namespace_counters(target, reports) {
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
}

/// The process's resident memory (bytes) from /proc/self/statm.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Seconds since the process started: /proc/uptime less /proc/self/stat's start time (field 22,
/// clock ticks after boot; proc(5)).
fn uptime_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the parenthesised name start with field 3 (state).
    let start: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let up: f64 = (std::fs::read_to_string("/proc/uptime").ok()?)
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    Some((up - start as f64 / hz).max(0.0))
}

fn process_metrics(reg: &mut Registry) {
    let rss = Gauge::<i64>::default();
    reg.register(
        "nvmfd_process_resident_memory_bytes",
        "Resident memory of the daemon process",
        rss.clone(),
    );
    if let Some(b) = resident_bytes() {
        rss.set(clamp(b));
    }
    let up = Gauge::<f64, AtomicU64>::default();
    reg.register(
        "nvmfd_process_uptime_seconds",
        "Seconds since the daemon process started",
        up.clone(),
    );
    if let Some(s) = uptime_seconds() {
        up.set(s);
    }
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
                                let _ = tokio::time::timeout(Duration::from_secs(10), scrape(s, ctx)).await;
                                drop(permit);
                            });
                        }
                    }
                }
            });
            // A render still waiting for reports ends within its 2 s deadline.
            rt.shutdown_timeout(Duration::from_secs(3));
        })?;
    info!(address = %bound, "metrics on /metrics");
    Ok(MetricsServer {
        addr: bound,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// One HTTP/1.x exchange: `GET /metrics` → 200, another path → 404, another method → 405.
async fn scrape(mut s: tokio::net::TcpStream, ctx: Arc<Context>) -> std::io::Result<()> {
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
        // Rendering blocks up to 2 s on the reactors' answers: on the blocking pool, so the
        // accept loop and other requests on this single-threaded runtime go on meanwhile.
        (b"GET", b"/metrics") => match tokio::task::spawn_blocking(move || render(&ctx)).await {
            Ok(text) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain",
                "metrics rendering failed\n".to_string(),
            ),
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::stats::{ErrEntry, IoStats, NsStats, PoolStats, StatKey};
    use crate::reactor::QpairReport;
    use crate::rpc::reports::ReportCache;
    use nvmfd_config::TransportKind;

    const NQN: &str = "nqn.2026-11.io.nvmfd:m";

    fn keys() -> Vec<StatKey> {
        let k = |subsys, nsid| StatKey { subsys, nsid };
        vec![
            k(StatSubsys::None, 0),
            k(StatSubsys::Discovery, 0),
            k(StatSubsys::Nvm(0), 0),
            k(StatSubsys::Nvm(0), 5),
        ]
    }

    /// A reactor that saw `reads` reads of 4 KiB and one write error on NSID 5, with `lat_ns`
    /// as each read's latency.
    fn report(reactor: usize, reads: u64, lat_ns: u64, keys: Vec<StatKey>) -> ReactorReport {
        let mut io = IoStats::new();
        io.grow(keys.len());
        let ns5 = keys.iter().position(|k| k.nsid == 5).unwrap();
        let mut n = NsStats::default();
        n.commands[OpClass::Read as usize] = reads;
        n.bytes[OpClass::Read as usize] = reads * 4096;
        n.commands[OpClass::Write as usize] = 1;
        n.errors[OpClass::Write as usize] = 2;
        n.in_flight = 3;
        for _ in 0..reads {
            n.latency[0].observe(lat_ns);
        }
        io.ns[ns5] = n;
        io.errors.push(ErrEntry {
            id: ns5 as u32,
            class: OpClass::Write,
            sct: 0,
            sc: 0x80,
            count: 1,
        });
        ReactorReport {
            reactor,
            admin_qpairs: 1,
            io_qpairs: 1,
            admin_qpairs_total: 1,
            io_qpairs_total: 1,
            pending_bdev_io: 0,
            completed_io: reads,
            qpairs: vec![0u16, 1]
                .into_iter()
                .map(|qid| QpairReport {
                    subsys: SubsysRef::Nvm(0),
                    cntlid: 1,
                    qid,
                    hostnqn: "h".into(),
                    local: None,
                    peer: "127.0.0.1:1".parse().unwrap(),
                    transport: TransportKind::Tcp,
                    p2p: Default::default(),
                })
                .collect(),
            p2p_bdevs: Vec::new(),
            polls_busy: 10,
            polls_idle: 100,
            stat_keys: keys,
            io: vec![(TransportKind::Tcp, io)],
            pools: vec![(
                TransportKind::Tcp,
                PoolStats {
                    in_use: 4,
                    waiters: 1,
                },
            )],
        }
    }

    fn text(reports: &[ReactorReport]) -> String {
        let mut reg = Registry::default();
        let nqn = |s: StatSubsys| match s {
            StatSubsys::Nvm(0) => NQN.to_string(),
            StatSubsys::Discovery => "disc".to_string(),
            _ => String::new(),
        };
        io_metrics(
            &mut reg,
            reports,
            &[StatSubsys::Discovery, StatSubsys::Nvm(0)],
            &nqn,
        );
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        out
    }

    fn has(t: &str, line: &str) {
        assert!(t.lines().any(|x| x == line), "no line {line:?} in\n{t}");
    }

    /// Two reactors (with their ids in different orders) sum into one series per label set.
    #[test]
    fn reactors_sum_into_one_series_per_labels() {
        let mut other = keys();
        other.swap(2, 3);
        let t = text(&[report(0, 3, 5000, keys()), report(1, 2, 3000, other)]);
        let ns = format!("subsystem=\"{NQN}\",nsid=\"5\",transport=\"tcp\"");
        has(
            &t,
            &format!("nvmfd_commands_total{{{ns},opcode=\"read\"}} 5"),
        );
        has(
            &t,
            &format!("nvmfd_bytes_total{{{ns},opcode=\"read\"}} 20480"),
        );
        has(
            &t,
            &format!("nvmfd_commands_total{{{ns},opcode=\"write\"}} 2"),
        );
        has(&t, &format!("nvmfd_bytes_total{{{ns},opcode=\"write\"}} 0"));
        // One error per reactor told apart by status, one more each reported as "other".
        has(
            &t,
            &format!(
                "nvmfd_command_errors_total{{{ns},opcode=\"write\",sct=\"0x0\",sc=\"0x80\"}} 2"
            ),
        );
        has(
            &t,
            &format!(
                "nvmfd_command_errors_total{{{ns},opcode=\"write\",sct=\"other\",sc=\"other\"}} 2"
            ),
        );
        has(&t, &format!("nvmfd_commands_in_flight{{{ns}}} 6"));
        // The histogram: count equals the reads, sum their latencies, buckets cumulative.
        has(
            &t,
            &format!("nvmfd_command_latency_seconds_count{{{ns},class=\"read\"}} 5"),
        );
        has(
            &t,
            &format!("nvmfd_command_latency_seconds_sum{{{ns},class=\"read\"}} 0.000021"),
        );
        // 3000 ns is in the 4.096 µs bucket, 5000 ns in the 8.192 µs one.
        has(
            &t,
            &format!(
                "nvmfd_command_latency_seconds_bucket{{le=\"0.000002048\",{ns},class=\"read\"}} 0"
            ),
        );
        has(
            &t,
            &format!(
                "nvmfd_command_latency_seconds_bucket{{le=\"0.000004096\",{ns},class=\"read\"}} 2"
            ),
        );
        has(
            &t,
            &format!(
                "nvmfd_command_latency_seconds_bucket{{le=\"0.000008192\",{ns},class=\"read\"}} 5"
            ),
        );
        has(
            &t,
            &format!("nvmfd_command_latency_seconds_bucket{{le=\"+Inf\",{ns},class=\"read\"}} 5"),
        );
        has(
            &t,
            &format!("nvmfd_command_latency_seconds_count{{{ns},class=\"write\"}} 0"),
        );
        // No series for classes nothing was counted in, beyond read and write of namespaces.
        assert!(!t.contains("opcode=\"flush\""), "{t}");
        assert!(!t.contains("nsid=\"0\""), "{t}");
        // Controllers and queue pairs: two reactors with one each; discovery shown at 0.
        has(
            &t,
            &format!("nvmfd_connected_controllers{{subsystem=\"{NQN}\",transport=\"tcp\"}} 2"),
        );
        has(
            &t,
            &format!(
                "nvmfd_connected_queue_pairs{{subsystem=\"{NQN}\",transport=\"tcp\",queue=\"io\"}} 2"
            ),
        );
        has(
            &t,
            "nvmfd_connected_controllers{subsystem=\"disc\",transport=\"tcp\"} 0",
        );
        // Per reactor.
        has(
            &t,
            "nvmfd_reactor_polls_total{reactor=\"1\",result=\"busy\"} 10",
        );
        has(
            &t,
            "nvmfd_reactor_polls_total{reactor=\"0\",result=\"idle\"} 100",
        );
        has(
            &t,
            "nvmfd_reactor_buffers_in_use{reactor=\"0\",transport=\"tcp\"} 4",
        );
        has(
            &t,
            "nvmfd_reactor_buffer_waiters{reactor=\"1\",transport=\"tcp\"} 1",
        );
        has(&t, "nvmfd_reactor_completed_io_total{reactor=\"1\"} 2");
        has(&t, "# TYPE nvmfd_command_latency_seconds histogram");
        has(&t, "# TYPE nvmfd_commands counter");
    }

    /// The sum of every sample of `metric` (all label sets) in `t`.
    fn total(t: &str, metric: &str) -> f64 {
        t.lines()
            .filter(|x| x.starts_with(&format!("{metric}{{")))
            .map(|x| x.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    fn scrape_text(cache: &ReportCache, fresh: Vec<ReactorReport>) -> String {
        let seen = cache.merge(fresh, &[0, 1]);
        let mut t = text(&crate::rpc::reports::reports(&seen));
        let mut reg = Registry::default();
        freshness_metrics(&mut reg, &seen);
        encode(&mut t, &reg).unwrap();
        t
    }

    /// A reactor that misses a scrape's deadline keeps its last numbers in the sums: counters
    /// never go down (Prometheus would read a drop as a reset), and the scrape says so.
    #[test]
    fn a_late_reactor_keeps_its_last_numbers() {
        let cache = ReportCache::default();
        let ns = format!("subsystem=\"{NQN}\",nsid=\"5\",transport=\"tcp\"");
        let reads = format!("nvmfd_commands_total{{{ns},opcode=\"read\"}}");
        let t1 = scrape_text(
            &cache,
            vec![report(0, 3, 5000, keys()), report(1, 2, 3000, keys())],
        );
        has(&t1, &format!("{reads} 5"));
        has(&t1, "nvmfd_reactor_report_stale{reactor=\"1\"} 0");
        // Reactor 1 does not answer; reactor 0 counted 4 more reads.
        let mut r0 = report(0, 7, 5000, keys());
        r0.polls_busy += 1;
        let t2 = scrape_text(&cache, vec![r0]);
        has(&t2, &format!("{reads} 9"));
        has(&t2, "nvmfd_reactor_completed_io_total{reactor=\"1\"} 2");
        has(
            &t2,
            "nvmfd_reactor_polls_total{reactor=\"1\",result=\"idle\"} 100",
        );
        has(&t2, "nvmfd_reactor_report_stale{reactor=\"1\"} 1");
        has(&t2, "nvmfd_reactor_report_stale{reactor=\"0\"} 0");
        has(&t2, "nvmfd_reactor_report_misses_total{reactor=\"1\"} 1");
        has(&t2, "nvmfd_reactor_report_age_seconds{reactor=\"0\"} 0.0");
        for metric in [
            "nvmfd_commands_total",
            "nvmfd_bytes_total",
            "nvmfd_command_errors_total",
            "nvmfd_reactor_completed_io_total",
            "nvmfd_reactor_polls_total",
            "nvmfd_command_latency_seconds_count",
        ] {
            assert!(
                total(&t2, metric) >= total(&t1, metric),
                "{metric} went down:\n{t1}\n{t2}"
            );
        }
        // Reactor 1 answers again (and an older answer of reactor 0, arriving after a newer
        // one from a concurrent scrape, does not take the newer one's place).
        let t3 = scrape_text(
            &cache,
            vec![report(0, 3, 5000, keys()), report(1, 2, 3000, keys())],
        );
        has(&t3, &format!("{reads} 9"));
        has(&t3, "nvmfd_reactor_report_stale{reactor=\"1\"} 0");
        has(&t3, "nvmfd_reactor_report_misses_total{reactor=\"1\"} 1");
        // A reactor never heard from has no series.
        let fresh = ReportCache::default();
        let t = scrape_text(&fresh, vec![report(0, 1, 1000, keys())]);
        has(&t, "nvmfd_reactor_report_stale{reactor=\"0\"} 0");
        assert!(!t.contains("reactor=\"1\""), "{t}");
    }

    #[test]
    fn process_numbers_are_plausible() {
        let rss = resident_bytes().expect("statm");
        assert!(rss > 1 << 20, "{rss}");
        let up = uptime_seconds().expect("stat");
        assert!((0.0..86400.0 * 365.0).contains(&up), "{up}");
        let mut reg = Registry::default();
        process_metrics(&mut reg);
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("nvmfd_process_resident_memory_bytes "),
            "{out}"
        );
        assert!(out.contains("nvmfd_process_uptime_seconds "), "{out}");
    }
}
