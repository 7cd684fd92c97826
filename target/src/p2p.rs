//! Peer-to-peer placement at start-up: one [`PlacementDecision`] per (transport, namespace) of
//! every subsystem with a listener of that transport, from the namespace's `p2p:` setting and
//! what its bdev offers ([`nvmfd_bdev::Bdev::device_memory`]). Each is logged with its reasons;
//! a `required` namespace whose decision is host memory stops the start with the decision in
//! the error. The data path then takes buffers for a namespace's writes from the domain its
//! decision chose (`nvmfd_transport::staging`); namespaces added at run time use host memory.

use crate::core::Target;
use crate::reactor::ReactorReport;
use nvmfd_bdev::Bdev;
use nvmfd_config::{Config, P2pMode, TransportKind};
use nvmfd_p2p::placement::{self, Mode, PlacementDecision, Reason};
use nvmfd_transport::staging::{P2pCounters, StagingSource};
use std::sync::Arc;
use tracing::{info, warn};

/// The config's `p2p:` as the placement decision takes it.
pub fn mode(m: P2pMode) -> Mode {
    match m {
        P2pMode::Auto => Mode::Auto,
        P2pMode::Off => Mode::Off,
        P2pMode::Required => Mode::Required,
    }
}

/// Every decision of a configuration, in config order (subsystem, namespace, transport).
/// `bdevs` are the open bdevs, one per `cfg.bdevs` entry; `rdma` is what the start-up
/// registration chain achieved ([`crate::p2p_rdma::for_config`]).
pub fn decide(
    cfg: &Config,
    bdevs: &[Arc<dyn Bdev>],
    rdma: &crate::p2p_rdma::Chain,
) -> Vec<PlacementDecision> {
    let mut out = Vec::new();
    for s in &cfg.subsystems {
        let has = |k: TransportKind| s.listeners.iter().any(|l| l.transport == k);
        for n in &s.namespaces {
            let Some(b) = cfg.bdevs.iter().position(|b| b.name == n.bdev) else {
                continue;
            };
            let memory = bdevs[b].device_memory();
            if has(TransportKind::Tcp) {
                out.push(placement::decide_tcp(
                    &s.nqn,
                    n.nsid,
                    &n.bdev,
                    mode(n.p2p),
                    &memory,
                ));
            }
            if has(TransportKind::Rdma) {
                // RDMA staging needs the CMB registered with the NIC (VFIO dma-buf export and
                // ibv_reg_dmabuf_mr) and the topology's consent: `p2p_rdma::settle` checks both
                // for every RDMA device that serves the namespace.
                let mut d = placement::decide_tcp(&s.nqn, n.nsid, &n.bdev, mode(n.p2p), &memory);
                d.transport = "rdma";
                d.reasons
                    .retain(|r| !matches!(r, Reason::CpuStaging { .. } | Reason::TcpReadsInHost));
                if d.uses_cmb() {
                    crate::p2p_rdma::settle(&mut d, rdma, bdevs[b].as_ref());
                }
                out.push(d);
            }
        }
    }
    out
}

/// Log every decision; an error naming each `required` namespace that cannot have its CMB.
pub fn check(decisions: &[PlacementDecision]) -> anyhow::Result<()> {
    let mut refused = Vec::new();
    for d in decisions {
        let blocking: Vec<&str> = d.blocking().map(|r| r.rule()).collect();
        if d.uses_cmb() {
            info!(subsystem = %d.subsystem, nsid = d.nsid, bdev = %d.bdev, transport = d.transport,
                writes = d.writes.label(), reads = d.reads.label(), "p2p: {}", d.summary());
        } else if d.refuses_start() {
            refused.push(d.summary());
        } else if d.mode == Mode::Auto {
            // `auto` that ends in host memory is worth a look; `off` is what was asked.
            warn!(subsystem = %d.subsystem, nsid = d.nsid, bdev = %d.bdev, transport = d.transport,
                reasons = ?blocking, "p2p: {}", d.summary());
        } else {
            info!(subsystem = %d.subsystem, nsid = d.nsid, bdev = %d.bdev, transport = d.transport,
                "p2p: {}", d.summary());
        }
    }
    if !refused.is_empty() {
        anyhow::bail!(
            "p2p: required cannot be met, not starting: {}",
            refused.join(" | ")
        );
    }
    Ok(())
}

/// For each bdev (by index), the CMB its namespace's TCP write data is staged in, when its
/// decision says so.
pub fn tcp_staging(
    cfg: &Config,
    bdevs: &[Arc<dyn Bdev>],
    decisions: &[PlacementDecision],
) -> Vec<Option<StagingSource>> {
    cfg.bdevs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let d = decisions
                .iter()
                .find(|d| d.transport == "tcp" && d.bdev == b.name && d.writes.is_cmb())?;
            let pool = bdevs[i].cmb_domain_pool()?;
            // Each reactor's TCP group makes one cache of it (sized by how many share it).
            pool.share_among(cfg.reactors.cores.len());
            Some(StagingSource::new(
                pool,
                &format!("{} nsid {}", d.subsystem, d.nsid),
            ))
        })
        .collect()
}

/// One namespace's P2P counters summed over the reactors.
#[derive(Debug, Clone)]
pub struct NamespaceCounters {
    pub subsystem: String,
    pub nsid: u32,
    pub bdev: String,
    pub counters: P2pCounters,
}

/// The counters of every namespace of `target`, from the reactors' `reports` (each counts per
/// bdev slot, and a bdev backs one namespace).
pub fn namespace_counters(target: &Target, reports: &[ReactorReport]) -> Vec<NamespaceCounters> {
    let mut out = Vec::new();
    for s in target.subsystems.iter().filter(|s| s.live) {
        for n in &s.namespaces {
            let mut c = P2pCounters::default();
            for r in reports {
                if let Some(x) = r.p2p_bdevs.get(n.bdev) {
                    c.add(x);
                }
            }
            out.push(NamespaceCounters {
                subsystem: s.nqn.clone(),
                nsid: n.nsid,
                bdev: n.info.name.clone(),
                counters: c,
            });
        }
    }
    out
}

/// Counters as JSON (RPC `nvmfd_get_p2p`).
pub fn counters_json(c: &P2pCounters) -> serde_json::Value {
    let fallbacks: serde_json::Map<String, serde_json::Value> = c
        .fallbacks()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect();
    serde_json::json!({
        "cmb_bytes": c.cmb_bytes,
        "host_bytes": c.host_bytes,
        "fallbacks": fallbacks,
    })
}

/// The shutdown summary: one line per namespace that moved data.
pub fn log_counters(counters: &[NamespaceCounters]) {
    for n in counters {
        let c = &n.counters;
        if c.cmb_bytes == 0 && c.host_bytes == 0 {
            continue;
        }
        info!(subsystem = %n.subsystem, nsid = n.nsid, bdev = %n.bdev,
            cmb_bytes = c.cmb_bytes, host_bytes = c.host_bytes,
            fallback_cmb_pool_exhausted = c.fallback_exhausted,
            fallback_larger_than_cmb_buffer = c.fallback_too_large,
            fallback_cmb_not_registered = c.fallback_unregistered,
            "p2p counters at shutdown");
    }
}
