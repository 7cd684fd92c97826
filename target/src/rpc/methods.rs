//! The methods: names, parameters and result shapes follow SPDK's (`lib/nvmf/nvmf_rpc.c`,
//! `lib/bdev/bdev_rpc.c`, `lib/event/app_rpc.c`) for the subset that applies to nvmfd, so SPDK's
//! own client and scripts work unchanged. Each call reads one consistent picture of the running
//! state ([`Call`]); the methods that change it check their parameters like SPDK does and then
//! go through `crate::live` (validated like a configuration file, applied without stopping I/O).

use super::jsonrpc::{params, Dispatch, RpcError, ENODEV, INTERNAL_ERROR, METHOD_NOT_FOUND};
use super::reports::{self, Seen};
use crate::core::{SubsysRef, Target};
use nvmfd_bdev::BdevInfo;
use nvmfd_config::{uuid_text, BdevConfig, BdevKind, Config, TransportKind};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;

/// The name of nvmfd's one NVMe-oF target, as SPDK names its default one (`tgt_name`).
pub const TARGET_NAME: &str = "nvmf_tgt";

/// A reactor as `framework_get_reactors` shows it.
#[derive(Debug, Clone)]
pub struct ReactorInfo {
    pub id: usize,
    pub core: usize,
}

/// What the methods serve: the live state (read and changed through `crate::live`) and the
/// reactors.
pub struct Context {
    pub live: Arc<crate::live::Live>,
    pub reactors: Vec<ReactorInfo>,
    /// The start-up P2P placement decisions (`crate::p2p`).
    pub placements: Arc<Vec<nvmfd_p2p::placement::PlacementDecision>>,
}

/// What one call sees: a consistent picture of the running state taken when it started.
pub struct Call<'a> {
    pub target: Arc<Target>,
    /// The running configuration: every identifier written in, the socket actually served.
    pub config: Config,
    /// (slot, config, facts) of every bdev, in slot order (namespaces name bdevs by slot).
    pub bdevs: Vec<(usize, BdevConfig, BdevInfo)>,
    pub reactors: &'a [ReactorInfo],
    pub live: &'a crate::live::Live,
    pub placements: &'a [nvmfd_p2p::placement::PlacementDecision],
}

type Handler = fn(&Call, Option<&Value>) -> Result<Value, RpcError>;

/// Every method, in the order `rpc_get_methods` lists them.
const METHODS: &[(&str, Handler)] = &[
    ("spdk_get_version", spdk_get_version),
    ("rpc_get_methods", rpc_get_methods),
    ("framework_get_reactors", framework_get_reactors),
    ("bdev_get_bdevs", bdev_get_bdevs),
    ("nvmf_get_transports", nvmf_get_transports),
    ("nvmf_get_subsystems", nvmf_get_subsystems),
    (
        "nvmf_subsystem_get_controllers",
        nvmf_subsystem_get_controllers,
    ),
    ("nvmf_subsystem_get_qpairs", nvmf_subsystem_get_qpairs),
    ("nvmf_get_stats", nvmf_get_stats),
    ("nvmfd_get_p2p", nvmfd_get_p2p),
    ("save_config", save_config),
    ("framework_get_subsystems", framework_get_subsystems),
    ("framework_get_config", framework_get_config),
    ("bdev_malloc_create", bdev_malloc_create),
    ("bdev_malloc_delete", bdev_malloc_delete),
    ("bdev_null_create", bdev_null_create),
    ("bdev_null_delete", bdev_null_delete),
    ("bdev_uring_create", bdev_uring_create),
    ("bdev_uring_delete", bdev_uring_delete),
    ("nvmf_create_subsystem", nvmf_create_subsystem),
    ("nvmf_delete_subsystem", nvmf_delete_subsystem),
    ("nvmf_subsystem_add_ns", nvmf_subsystem_add_ns),
    ("nvmf_subsystem_remove_ns", nvmf_subsystem_remove_ns),
    ("nvmf_subsystem_add_listener", nvmf_subsystem_add_listener),
    (
        "nvmf_subsystem_remove_listener",
        nvmf_subsystem_remove_listener,
    ),
    ("nvmf_subsystem_add_host", nvmf_subsystem_add_host),
    ("nvmf_subsystem_remove_host", nvmf_subsystem_remove_host),
    (
        "nvmf_subsystem_allow_any_host",
        nvmf_subsystem_allow_any_host,
    ),
];

impl Dispatch for Context {
    fn call(&self, method: &str, p: Option<&Value>) -> Result<Value, RpcError> {
        if let Some((_, h)) = METHODS.iter().find(|(m, _)| *m == method) {
            let v = self.live.view();
            let call = Call {
                target: v.target,
                config: v.config,
                bdevs: v.bdevs,
                reactors: &self.reactors,
                live: &self.live,
                placements: &self.placements,
            };
            return h(&call, p);
        }
        Err(RpcError::new(METHOD_NOT_FOUND, "Method not found"))
    }
}

/// Params of methods that take none: any member is Invalid params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn spdk_get_version(_: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    params::<NoParams>(p)?;
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    Ok(json!({
        "version": concat!("nvmfd v", env!("CARGO_PKG_VERSION")),
        "fields": {
            "major": num(env!("CARGO_PKG_VERSION_MAJOR")),
            "minor": num(env!("CARGO_PKG_VERSION_MINOR")),
            "patch": num(env!("CARGO_PKG_VERSION_PATCH")),
            "suffix": env!("CARGO_PKG_VERSION_PRE"),
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

fn rpc_get_methods(_: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    // nvmfd has no start-up RPC state (SPDK's "current") and no deprecated aliases: both flags
    // are accepted and change nothing.
    let GetMethods {
        current: _,
        include_aliases: _,
    } = params(p)?;
    let names: Vec<&str> = METHODS.iter().map(|(m, _)| *m).collect();
    Ok(json!(names))
}

/// `/proc/self/task/TID/stat` utime and stime (clock ticks) of the thread named `comm`.
pub(super) fn thread_times(comm: &str) -> Option<(u64, u64, u64)> {
    for e in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if name.trim_end() != comm {
            continue;
        }
        // A thread that exits between the listing and these reads is skipped, not an answer:
        // another thread may carry the same name (several daemons in one test process).
        let parsed = (|| {
            let tid: u64 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Fields after the parenthesised name start with field 3 (state); utime is field 14
            // and stime field 15 (proc(5)).
            let rest = &stat[stat.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((tid, f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
        })();
        if parsed.is_some() {
            return parsed;
        }
    }
    None
}

fn framework_get_reactors(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    params::<NoParams>(p)?;
    let reactors: Vec<Value> = ctx
        .reactors
        .iter()
        .map(|r| {
            let name = format!("reactor-{}", r.id);
            let mut v = json!({
                "lcore": r.core,
                "in_interrupt": ctx.config.reactors.idle_sleep_us > 0,
                "lw_threads": [{"name": name, "id": r.id, "cpumask": format!("{:x}", 1u128 << r.core.min(127))}],
            });
            if let Some((tid, usr, sys)) = thread_times(&name) {
                v["tid"] = json!(tid);
                v["usr"] = json!(usr);
                v["sys"] = json!(sys);
            }
            v
        })
        .collect();
    Ok(json!({"pid": std::process::id(), "reactors": reactors}))
}

/// The namespace (subsystem NQN, namespace) a bdev backs, if any.
fn bdev_user<'a>(ctx: &'a Call, bdev: usize) -> Option<(&'a str, &'a crate::core::Namespace)> {
    ctx.target
        .subsystems
        .iter()
        .filter(|s| s.live)
        .find_map(|s| {
            s.namespaces
                .iter()
                .find(|n| n.bdev == bdev)
                .map(|n| (s.nqn.as_str(), n))
        })
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02X}")).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    #[serde(default)]
    name: Option<String>,
    /// SPDK waits this long for the bdev to appear; nvmfd's bdevs exist from start-up on.
    #[serde(default)]
    #[allow(dead_code)]
    timeout: Option<u64>,
}

/// The UUID a bdev shows: that of the namespace it backs (its own, unless the namespace was given
/// another: SPDK's namespace UUID defaults to its bdev's, so both agree there), else its own.
fn bdev_uuid_shown(ctx: &Call, slot: usize, cfg: &BdevConfig) -> Option<[u8; 16]> {
    bdev_user(ctx, slot).map(|(_, ns)| ns.uuid).or(cfg.uuid)
}

/// The `k`-th bdev of the call's list.
fn bdev_json(ctx: &Call, k: usize) -> Value {
    let (slot, cfg, info) = &ctx.bdevs[k];
    let (product, specific) = match &cfg.kind {
        BdevKind::Malloc { .. } => ("Malloc disk", json!({})),
        BdevKind::Null { .. } => ("Null disk", json!({})),
        BdevKind::Uring { path, .. } => (
            "URING bdev",
            json!({"uring": {"filename": path.to_string_lossy()}}),
        ),
        BdevKind::Nvme { pci, namespace, .. } => (
            "NVMe disk",
            json!({"nvme": [{"pci_address": pci, "trid": {"trtype": "PCIe", "traddr": pci}, "ns_data": {"id": namespace}}]}),
        ),
    };
    let user = bdev_user(ctx, *slot);
    let mut v = json!({
        "name": info.name,
        "aliases": [],
        "product_name": product,
        "block_size": info.block_size,
        "num_blocks": info.num_blocks,
        "claimed": user.is_some(),
        "zoned": false,
        "supported_io_types": {
            "read": true, "write": true, "flush": true, "unmap": true,
            "write_zeroes": true, "reset": false, "nvme_admin": false, "nvme_io": false,
        },
        "driver_specific": specific,
    });
    if let Some(u) = bdev_uuid_shown(ctx, *slot, cfg) {
        v["uuid"] = json!(uuid_text(&u));
    }
    if let Some((nqn, ns)) = user {
        v["claim_type"] = json!("exclusive_write");
        v["nvmfd"] = json!({"subsystem": nqn, "nsid": ns.nsid, "kind": info.kind});
    } else {
        v["nvmfd"] = json!({"kind": info.kind});
    }
    v
}

fn bdev_get_bdevs(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: GetBdevs = params(p)?;
    match q.name {
        None => Ok(Value::Array(
            (0..ctx.bdevs.len()).map(|i| bdev_json(ctx, i)).collect(),
        )),
        Some(name) => match ctx.bdevs.iter().position(|b| b.1.name == name) {
            Some(i) => Ok(json!([bdev_json(ctx, i)])),
            None => Err(RpcError::new(ENODEV, "No such device")),
        },
    }
}

fn check_tgt(name: &Option<String>) -> Result<(), RpcError> {
    match name {
        Some(n) if n != TARGET_NAME => {
            Err(RpcError::new(INTERNAL_ERROR, "Unable to find a target."))
        }
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTransports {
    #[serde(default)]
    trtype: Option<String>,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn nvmf_get_transports(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: GetTransports = params(p)?;
    check_tgt(&q.tgt_name)?;
    if let Some(t) = &q.trtype {
        if !t.eq_ignore_ascii_case("tcp") {
            return Err(RpcError::new(ENODEV, "No such device"));
        }
    }
    let t = &ctx.config.transports.tcp;
    Ok(json!([{
        "trtype": "TCP",
        "max_queue_depth": t.max_queue_depth,
        "max_io_qpairs_per_ctrlr": t.max_io_queues,
        "in_capsule_data_size": t.in_capsule_data_size,
        "max_io_size": t.max_io_size,
        "max_aq_depth": t.max_queue_depth,
        "c2h_success": t.c2h_success,
        "header_digest": t.header_digest.as_str(),
        "data_digest": t.data_digest.as_str(),
        "buffer_pool_size": t.buffer_pool_size,
    }]))
}

fn trid(transport: TransportKind, address: IpAddr, port: u16) -> Value {
    let trtype = match transport {
        TransportKind::Tcp => "TCP",
        TransportKind::Rdma => "RDMA",
    };
    json!({
        "trtype": trtype,
        "adrfam": if address.is_ipv4() { "IPv4" } else { "IPv6" },
        "traddr": address.to_string(),
        "trsvcid": port.to_string(),
    })
}

fn subsystem_json(ctx: &Call, i: usize) -> Value {
    let s = &ctx.target.subsystems[i];
    json!({
        "nqn": s.nqn,
        "subtype": "NVMe",
        "listen_addresses": s.listeners.iter().map(|l| trid(l.transport, l.address, l.port)).collect::<Vec<_>>(),
        "allow_any_host": s.allow_any_host,
        "hosts": s.hosts.iter().map(|h| json!({"nqn": h})).collect::<Vec<_>>(),
        "serial_number": s.serial,
        "model_number": s.model,
        "min_cntlid": s.cntlid_range.0,
        "max_cntlid": s.cntlid_range.1,
        "max_namespaces": s.max_namespaces,
        "namespaces": s.namespaces.iter().map(|n| {
            let mut v = json!({
                "nsid": n.nsid,
                "bdev_name": n.info.name,
                "name": n.info.name,
                "nguid": hex_upper(&n.nguid),
                "uuid": uuid_text(&n.uuid),
            });
            if n.eui64 != [0; 8] {
                v["eui64"] = json!(hex_upper(&n.eui64));
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// The discovery subsystem as SPDK lists it: every listener address of every subsystem.
fn discovery_json(ctx: &Call) -> Value {
    json!({
        "nqn": nvmfd_config::DISCOVERY_NQN,
        "subtype": "Discovery",
        "listen_addresses": ctx.target.listeners().iter().map(|l| trid(l.transport, l.address, l.port)).collect::<Vec<_>>(),
        "allow_any_host": true,
        "hosts": [],
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetSubsystems {
    #[serde(default)]
    nqn: Option<String>,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn nvmf_get_subsystems(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: GetSubsystems = params(p)?;
    check_tgt(&q.tgt_name)?;
    let mut all = Vec::new();
    if ctx.target.discovery_enabled {
        all.push((nvmfd_config::DISCOVERY_NQN, discovery_json(ctx)));
    }
    for (i, s) in ctx.target.subsystems.iter().enumerate() {
        if s.live {
            all.push((s.nqn.as_str(), subsystem_json(ctx, i)));
        }
    }
    match q.nqn {
        None => Ok(Value::Array(all.into_iter().map(|(_, v)| v).collect())),
        Some(nqn) => match all.into_iter().find(|(n, _)| *n == nqn) {
            Some((_, v)) => Ok(json!([v])),
            None => Err(RpcError::new(ENODEV, "No such device")),
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubsysQuery {
    nqn: String,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn find_subsys(ctx: &Call, nqn: &str) -> Result<SubsysRef, RpcError> {
    ctx.target.find_subsystem(nqn).ok_or_else(|| {
        RpcError::invalid_params(format!("Invalid parameters: no subsystem {nqn:?}"))
    })
}

fn nvmf_subsystem_get_controllers(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: SubsysQuery = params(p)?;
    check_tgt(&q.tgt_name)?;
    let sref = find_subsys(ctx, &q.nqn)?;
    let mut ctrls = ctx.target.controllers(sref);
    ctrls.sort_by_key(|c| c.cntlid);
    Ok(Value::Array(
        ctrls
            .iter()
            .map(|c| {
                json!({
                    "cntlid": c.cntlid,
                    "cntrltype": match c.subsys { SubsysRef::Discovery => "discovery", SubsysRef::Nvm(_) => "io" },
                    "hostnqn": c.hostnqn,
                    "hostid": uuid_text(&c.hostid),
                    "num_io_qpairs": c.live_io_queues(),
                })
            })
            .collect(),
    ))
}

fn address_json(a: std::net::SocketAddr) -> Value {
    let ip = match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    trid(TransportKind::Tcp, ip, a.port())
}

/// The poll group name SPDK gives reactor `id`'s thread.
fn poll_group(id: usize) -> String {
    format!("nvmf_tgt_poll_group_{id:03}")
}

/// Add `seen`'s freshness members to `v` when its report is not an answer to this call (SPDK's
/// members stay as they are; nothing is added for a fresh report).
fn mark_stale(v: &mut Value, seen: &Seen) {
    if let (true, Some(o)) = (seen.stale, v.as_object_mut()) {
        o.extend(reports::freshness_json(seen));
    }
}

/// The connected queue pairs of a subsystem, each reported by the reactor it lives on. A
/// reactor that did not answer in time shows the queue pairs of its last report, each marked
/// `"stale": true` with `age_ms`. Every element is one queue pair, as in SPDK (clients count
/// them and read `qid`/`listen_address` of each): a reactor never heard from adds none here;
/// `nvmf_get_stats` and `nvmfd_get_p2p` list it as `"reported": false`.
fn nvmf_subsystem_get_qpairs(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: SubsysQuery = params(p)?;
    check_tgt(&q.tgt_name)?;
    let sref = find_subsys(ctx, &q.nqn)?;
    let mut out = Vec::new();
    for seen in ctx.live.collect() {
        let Some(r) = &seen.report else {
            continue;
        };
        for qp in r.qpairs.iter().filter(|x| x.subsys == sref) {
            let mut v = json!({
                "cntlid": qp.cntlid,
                "qid": qp.qid,
                "state": "active",
                "thread": poll_group(r.reactor),
                "hostnqn": qp.hostnqn,
                "peer_address": address_json(qp.peer),
            });
            if let Some(l) = qp.local {
                v["listen_address"] = address_json(l);
            }
            mark_stale(&mut v, &seen);
            out.push(((qp.cntlid, qp.qid), v));
        }
    }
    out.sort_by_key(|(k, _)| *k);
    Ok(Value::Array(out.into_iter().map(|(_, v)| v).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TgtOnly {
    #[serde(default)]
    tgt_name: Option<String>,
}

/// SPDK's `tick_rate` (its TSC frequency): nvmfd reports no time in ticks, and says its clock is
/// in nanoseconds for clients that read the member.
const TICK_RATE: u64 = 1_000_000_000;

/// Each reactor's counters, asked of the reactor itself (nothing shared is counted on the I/O
/// path), in SPDK's shape: `tick_rate`, and one poll group per reactor with `admin_qpairs` and
/// `io_qpairs` (connected since start), `current_admin_qpairs`, `current_io_qpairs`,
/// `pending_bdev_io`, `completed_nvme_io` and `transports` (one `{"trtype": ...}` per transport
/// served). Every reactor is listed: one that did not answer in time with its last report,
/// marked `"stale": true` with `age_ms` and `misses`; one never heard from with SPDK's members
/// all zero, no transports, and `"stale": true, "reported": false` (scripts iterate
/// `.poll_groups[].transports[]`, so no member may be missing).
fn nvmf_get_stats(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: TgtOnly = params(p)?;
    check_tgt(&q.tgt_name)?;
    let groups: Vec<Value> = (ctx.live.collect().iter())
        .map(|seen| {
            let mut v = match &seen.report {
                Some(r) => json!({
                    "name": poll_group(r.reactor),
                    "admin_qpairs": r.admin_qpairs_total,
                    "io_qpairs": r.io_qpairs_total,
                    "current_admin_qpairs": r.admin_qpairs,
                    "current_io_qpairs": r.io_qpairs,
                    "pending_bdev_io": r.pending_bdev_io,
                    "completed_nvme_io": r.completed_io,
                    // The reactor's poll groups, one per transport (as SPDK's transport
                    // poll groups of the poll group).
                    "transports": (r.io.iter()).map(|(k, _)| json!({"trtype": match k {
                        TransportKind::Tcp => "TCP",
                        TransportKind::Rdma => "RDMA",
                    }})).collect::<Vec<_>>(),
                }),
                None => json!({
                    "name": poll_group(seen.reactor),
                    "admin_qpairs": 0,
                    "io_qpairs": 0,
                    "current_admin_qpairs": 0,
                    "current_io_qpairs": 0,
                    "pending_bdev_io": 0,
                    "completed_nvme_io": 0,
                    "transports": [],
                }),
            };
            if let Some(o) = v.as_object_mut() {
                o.extend(reports::freshness_json(seen));
            }
            v
        })
        .collect();
    Ok(json!({"tick_rate": TICK_RATE, "poll_groups": groups}))
}

/// nvmfd's own (SPDK has no P2P placement): the start-up placement decision of every
/// (transport, namespace) with its reasons, and the P2P counters per namespace (summed over the
/// reactors) and per connected queue pair: bytes staged in the CMB, bytes in host memory,
/// fallbacks by reason (docs/p2p.md).
///
/// Counters of a reactor that did not answer in time come from its last report (they never go
/// down); its queue pairs are marked `"stale": true` with `age_ms`, and `reactors` lists every
/// reactor's freshness (`thread`, `stale`, `age_ms`, `misses`, `reported: false` when never
/// heard from).
fn nvmfd_get_p2p(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: TgtOnly = params(p)?;
    check_tgt(&q.tgt_name)?;
    let seen = ctx.live.collect();
    let reports = reports::reports(&seen);
    let namespaces: Vec<Value> = crate::p2p::namespace_counters(&ctx.target, &reports)
        .iter()
        .map(|n| {
            let mut v = crate::p2p::counters_json(&n.counters);
            v["nqn"] = json!(n.subsystem);
            v["nsid"] = json!(n.nsid);
            v["bdev_name"] = json!(n.bdev);
            v
        })
        .collect();
    let mut qpairs = Vec::new();
    for sn in &seen {
        let Some(r) = &sn.report else {
            continue;
        };
        for qp in &r.qpairs {
            let SubsysRef::Nvm(i) = qp.subsys else {
                continue;
            };
            let Some(s) = ctx.target.subsystems.get(i) else {
                continue;
            };
            let mut v = crate::p2p::counters_json(&qp.p2p);
            v["nqn"] = json!(s.nqn);
            v["cntlid"] = json!(qp.cntlid);
            v["qid"] = json!(qp.qid);
            v["thread"] = json!(poll_group(r.reactor));
            mark_stale(&mut v, sn);
            qpairs.push(((i, qp.cntlid, qp.qid), v));
        }
    }
    qpairs.sort_by_key(|(k, _)| *k);
    let reactors: Vec<Value> = (seen.iter())
        .map(|s| {
            let mut v = json!({"thread": poll_group(s.reactor)});
            if let Some(o) = v.as_object_mut() {
                o.extend(reports::freshness_json(s));
            }
            v
        })
        .collect();
    Ok(json!({
        "decisions": ctx.placements,
        "namespaces": namespaces,
        "qpairs": qpairs.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "reactors": reactors,
    }))
}

fn save_config(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    params::<NoParams>(p)?;
    Ok(Value::String(nvmfd_config::to_yaml(&ctx.config)))
}

/// SPDK's `save_config` (client side: `spdk-rpc save_config`) walks these and asks each one's
/// `framework_get_config`; dependencies come first.
fn framework_get_subsystems(_: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    params::<NoParams>(p)?;
    Ok(json!([
        {"subsystem": "bdev", "depends_on": []},
        {"subsystem": "nvmf", "depends_on": ["bdev"]},
    ]))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    /// SPDK may group calls in batches; nvmfd lists them one by one either way.
    #[serde(default)]
    #[allow(dead_code)]
    with_batches: Option<bool>,
}

/// The running state as the SPDK RPC calls that would build it (SPDK's JSON config), with
/// the same names and parameters the methods above take.
fn framework_get_config(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: GetConfig = params(p)?;
    let mut calls = Vec::new();
    let mut call =
        |method: &str, params: Value| calls.push(json!({"method": method, "params": params}));
    match q.name.as_str() {
        "bdev" => {
            for (slot, b, info) in &ctx.bdevs {
                match &b.kind {
                    BdevKind::Malloc { .. } => {
                        let mut p = json!({"name": b.name, "num_blocks": info.num_blocks, "block_size": info.block_size});
                        if let Some(u) = bdev_uuid_shown(ctx, *slot, b) {
                            p["uuid"] = json!(uuid_text(&u));
                        }
                        call("bdev_malloc_create", p);
                    }
                    BdevKind::Null { .. } => {
                        let mut p = json!({"name": b.name, "num_blocks": info.num_blocks, "block_size": info.block_size});
                        if let Some(u) = bdev_uuid_shown(ctx, *slot, b) {
                            p["uuid"] = json!(uuid_text(&u));
                        }
                        call("bdev_null_create", p);
                    }
                    BdevKind::Uring { path, .. } => {
                        let mut p = json!({"name": b.name, "filename": path.to_string_lossy(), "block_size": info.block_size});
                        if let Some(u) = bdev_uuid_shown(ctx, *slot, b) {
                            p["uuid"] = json!(uuid_text(&u));
                        }
                        call("bdev_uring_create", p);
                    }
                    // SPDK attaches a whole controller and names its bdevs NAMEnN; nvmfd's bdev
                    // is one namespace, so the namespace goes along as a parameter of our own.
                    BdevKind::Nvme { pci, namespace, .. } => call(
                        "bdev_nvme_attach_controller",
                        json!({"name": b.name, "trtype": "PCIe", "traddr": pci, "namespace": namespace}),
                    ),
                }
            }
        }
        "nvmf" => {
            let t = &ctx.config.transports.tcp;
            call(
                "nvmf_create_transport",
                json!({"trtype": "TCP", "max_queue_depth": t.max_queue_depth,
                       "max_io_qpairs_per_ctrlr": t.max_io_queues,
                       "in_capsule_data_size": t.in_capsule_data_size,
                       "max_io_size": t.max_io_size, "c2h_success": t.c2h_success}),
            );
            for s in ctx.target.subsystems.iter().filter(|s| s.live) {
                call(
                    "nvmf_create_subsystem",
                    json!({"nqn": s.nqn, "serial_number": s.serial, "model_number": s.model,
                           "allow_any_host": s.allow_any_host,
                           "min_cntlid": s.cntlid_range.0, "max_cntlid": s.cntlid_range.1,
                           "max_namespaces": s.max_namespaces}),
                );
                for h in &s.hosts {
                    call("nvmf_subsystem_add_host", json!({"nqn": s.nqn, "host": h}));
                }
                for n in &s.namespaces {
                    let mut ns = json!({"nsid": n.nsid, "bdev_name": n.info.name,
                                        "uuid": uuid_text(&n.uuid), "nguid": hex_upper(&n.nguid)});
                    if n.eui64 != [0; 8] {
                        ns["eui64"] = json!(hex_upper(&n.eui64));
                    }
                    call(
                        "nvmf_subsystem_add_ns",
                        json!({"nqn": s.nqn, "namespace": ns}),
                    );
                }
                for l in &s.listeners {
                    call(
                        "nvmf_subsystem_add_listener",
                        json!({"nqn": s.nqn, "listen_address": trid(l.transport, l.address, l.port)}),
                    );
                }
            }
        }
        _ => return Err(RpcError::new(ENODEV, "No such device")),
    }
    Ok(Value::Array(calls))
}

// ---- Methods that change the running state (through `crate::live`: validated like a config
// file, applied without stopping I/O). Each checks what SPDK checks first, with SPDK's error
// codes, then edits a copy of the running configuration; whatever the configuration rules
// refuse comes back as Invalid params with the rule's message, and nothing changes.

/// `-EBUSY`: the bdev is in use.
pub const EBUSY: i32 = -16;
/// `-EEXIST`: a bdev of that name exists.
pub const EEXIST: i32 = -17;

fn refused(e: crate::live::Refused) -> RpcError {
    RpcError::invalid_params(format!("Invalid parameters: {e}"))
}

fn change(
    ctx: &Call,
    why: &str,
    edit: impl FnOnce(&mut Config) -> Result<(), RpcError>,
) -> Result<crate::live::Applied, RpcError> {
    let mut err = None;
    let r = ctx.live.change(why, |c| {
        edit(c).map_err(|e| {
            err = Some(e);
            crate::live::Refused(String::new())
        })
    });
    match (r, err) {
        (_, Some(e)) => Err(e),
        (Ok(a), None) => Ok(a),
        (Err(e), None) => Err(refused(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MemCreate {
    #[serde(default)]
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
    /// The bdev's own UUID, kept (`save_config`) and given to the namespace it backs unless
    /// `nvmf_subsystem_add_ns` gives that one its own.
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    physical_block_size: Option<u32>,
    #[serde(default)]
    optimal_io_boundary: Option<u32>,
    #[serde(default)]
    md_size: Option<u32>,
    #[serde(default)]
    md_interleave: Option<bool>,
    #[serde(default)]
    dif_type: Option<u32>,
    #[serde(default)]
    dif_is_head_of_md: Option<bool>,
}

/// A bdev's `uuid` parameter: kept as the bdev's own (`BdevConfig::uuid`), the UUID of the
/// namespace it will back unless that namespace is given one, as in SPDK.
fn bdev_uuid(u: &Option<String>) -> Result<Option<[u8; 16]>, RpcError> {
    let Some(u) = u else { return Ok(None) };
    match crate::identity::parse_uuid(u) {
        Some(b) if b != [0; 16] => Ok(Some(b)),
        _ => Err(RpcError::invalid_params(format!(
            "Invalid parameters: bad uuid {u:?}"
        ))),
    }
}

fn check_mem(m: &MemCreate) -> Result<(), RpcError> {
    if !(512..=65536).contains(&m.block_size) || !m.block_size.is_power_of_two() {
        return Err(RpcError::invalid_params(format!(
            "Invalid parameters: block_size {} is not a power of two in 512..=65536",
            m.block_size
        )));
    }
    if m.num_blocks == 0 {
        return Err(RpcError::invalid_params(
            "Invalid parameters: num_blocks must be greater than 0",
        ));
    }
    if m.md_size.unwrap_or(0) != 0 || m.dif_type.unwrap_or(0) != 0 {
        return Err(RpcError::invalid_params(
            "Invalid parameters: metadata and protection information are not supported",
        ));
    }
    bdev_uuid(&m.uuid)?;
    Ok(())
}

/// Add bdev `b` (its name must be new) and answer its name, as SPDK does.
fn create_bdev(ctx: &Call, method: &str, b: BdevConfig) -> Result<Value, RpcError> {
    let name = b.name.clone();
    change(ctx, method, |c| {
        if c.bdev(&b.name).is_some() {
            return Err(RpcError::new(
                EEXIST,
                format!("bdev {:?} already exists", b.name),
            ));
        }
        c.bdevs.push(b);
        Ok(())
    })?;
    Ok(json!(name))
}

/// The first `PREFIXn` name no bdev has (SPDK names unnamed malloc bdevs Malloc0, Malloc1, ...).
fn free_name(ctx: &Call, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| ctx.config.bdev(n).is_none())
        .expect("some name is free")
}

fn bdev_malloc_create(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let m: MemCreate = params(p)?;
    check_mem(&m)?;
    let name = m.name.clone().unwrap_or_else(|| free_name(ctx, "Malloc"));
    let size = m
        .num_blocks
        .checked_mul(m.block_size as u64)
        .ok_or_else(|| {
            RpcError::invalid_params("Invalid parameters: num_blocks * block_size overflows")
        })?;
    let kind = BdevKind::Malloc {
        size,
        block_size: m.block_size,
    };
    let uuid = bdev_uuid(&m.uuid)?;
    create_bdev(ctx, "bdev_malloc_create", BdevConfig { name, uuid, kind })
}

fn bdev_null_create(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let m: MemCreate = params(p)?;
    let Some(name) = m.name.clone() else {
        return Err(RpcError::invalid_params(
            "Invalid parameters: missing field `name`",
        ));
    };
    check_mem(&m)?;
    let size = m
        .num_blocks
        .checked_mul(m.block_size as u64)
        .ok_or_else(|| {
            RpcError::invalid_params("Invalid parameters: num_blocks * block_size overflows")
        })?;
    let kind = BdevKind::Null {
        size,
        block_size: m.block_size,
    };
    let uuid = bdev_uuid(&m.uuid)?;
    create_bdev(ctx, "bdev_null_create", BdevConfig { name, uuid, kind })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UringCreate {
    name: String,
    filename: String,
    #[serde(default)]
    block_size: Option<u32>,
    #[serde(default)]
    uuid: Option<String>,
}

fn bdev_uring_create(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: UringCreate = params(p)?;
    let uuid = bdev_uuid(&q.uuid)?;
    let kind = BdevKind::Uring {
        path: q.filename.into(),
        block_size: q.block_size,
        // SPDK's bdev_uring_create has no passthrough mode.
        passthrough: false,
    };
    create_bdev(
        ctx,
        "bdev_uring_create",
        BdevConfig {
            name: q.name,
            uuid,
            kind,
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameOnly {
    name: String,
}

/// Delete bdev `name` of the kind `kind` names (`malloc`, `null`, `uring`). A bdev that backs a
/// namespace is not deleted: remove the namespace first (-EBUSY).
fn delete_bdev(ctx: &Call, p: Option<&Value>, kind: &str) -> Result<Value, RpcError> {
    let q: NameOnly = params(p)?;
    let Some(b) = ctx.config.bdev(&q.name) else {
        return Err(RpcError::new(ENODEV, "No such device"));
    };
    let same_kind = matches!(
        (&b.kind, kind),
        (BdevKind::Malloc { .. }, "malloc")
            | (BdevKind::Null { .. }, "null")
            | (BdevKind::Uring { .. }, "uring")
    );
    if !same_kind {
        return Err(RpcError::new(
            ENODEV,
            format!("No such device: {:?} is not a {kind} bdev", q.name),
        ));
    }
    for s in &ctx.config.subsystems {
        if let Some(n) = s.namespaces.iter().find(|n| n.bdev == q.name) {
            return Err(RpcError::new(
                EBUSY,
                format!(
                    "bdev {:?} is in use by namespace {} of {}; remove the namespace first (nvmf_subsystem_remove_ns)",
                    q.name, n.nsid, s.nqn
                ),
            ));
        }
    }
    change(ctx, &format!("bdev_{kind}_delete"), |c| {
        c.bdevs.retain(|b| b.name != q.name);
        Ok(())
    })?;
    Ok(json!(true))
}

fn bdev_malloc_delete(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    delete_bdev(ctx, p, "malloc")
}
fn bdev_null_delete(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    delete_bdev(ctx, p, "null")
}
fn bdev_uring_delete(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    delete_bdev(ctx, p, "uring")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CreateSubsystem {
    nqn: String,
    #[serde(default)]
    serial_number: Option<String>,
    #[serde(default)]
    model_number: Option<String>,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    max_namespaces: Option<u32>,
    #[serde(default)]
    allow_any_host: Option<bool>,
    #[serde(default)]
    ana_reporting: Option<bool>,
    #[serde(default)]
    min_cntlid: Option<u16>,
    #[serde(default)]
    max_cntlid: Option<u16>,
    #[serde(default)]
    max_discard_size_kib: Option<u64>,
    #[serde(default)]
    max_write_zeroes_size_kib: Option<u64>,
    #[serde(default)]
    dmrsl: Option<u32>,
    #[serde(default)]
    wzsl: Option<u8>,
    #[serde(default)]
    passthrough: Option<bool>,
    #[serde(default)]
    enable_nssr: Option<bool>,
}

/// A subsystem entry with the configuration file's defaults for everything `nqn` leaves out.
fn default_subsystem(nqn: &str) -> Result<nvmfd_config::SubsystemConfig, RpcError> {
    // A JSON string is a YAML string: the NQN goes in quoted, whatever it holds.
    let yaml = format!("subsystems: [ {{ nqn: {} }} ]\n", json!(nqn));
    let c = nvmfd_config::parse_str(&yaml, "<nvmf_create_subsystem>").map_err(|e| {
        let m: Vec<String> = e.diagnostics().iter().map(|d| d.message.clone()).collect();
        RpcError::invalid_params(format!("Invalid parameters: nqn: {}", m.join("; ")))
    })?;
    Ok(c.subsystems.into_iter().next().expect("one subsystem"))
}

fn nvmf_create_subsystem(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: CreateSubsystem = params(p)?;
    check_tgt(&q.tgt_name)?;
    if ctx.target.find_subsystem(&q.nqn).is_some() || q.nqn == nvmfd_config::DISCOVERY_NQN {
        return Err(RpcError::new(
            INTERNAL_ERROR,
            format!("Unable to create subsystem {}", q.nqn),
        ));
    }
    if q.ana_reporting == Some(true) || q.passthrough == Some(true) || q.enable_nssr == Some(true) {
        return Err(RpcError::invalid_params(
            "Invalid parameters: ana_reporting, passthrough and enable_nssr are not supported",
        ));
    }
    let mut sc = default_subsystem(&q.nqn)?;
    if let Some(s) = q.serial_number {
        sc.serial = s;
        sc.serial_is_default = false;
    }
    if let Some(m) = q.model_number {
        sc.model = m;
    }
    sc.allow_any_host = q.allow_any_host.unwrap_or(false);
    sc.cntlid_min = q.min_cntlid.unwrap_or(sc.cntlid_min);
    sc.cntlid_max = q.max_cntlid.unwrap_or(sc.cntlid_max);
    // SPDK's client sends 0 for "not given": the default (32, SPDK's too).
    match q.max_namespaces {
        None | Some(0) => {}
        Some(m) if m <= nvmfd_config::MAX_NSID => sc.max_namespaces = m,
        Some(m) => {
            return Err(RpcError::invalid_params(format!(
                "Invalid parameters: max_namespaces {m} is above the highest NSID {}",
                nvmfd_config::MAX_NSID
            )))
        }
    }
    change(ctx, "nvmf_create_subsystem", |c| {
        c.subsystems.push(sc);
        Ok(())
    })?;
    Ok(json!(true))
}

/// The running configuration's entry for NVM subsystem `nqn` (Invalid params if none).
fn subsys_cfg<'a>(
    c: &'a mut Config,
    nqn: &str,
) -> Result<&'a mut nvmfd_config::SubsystemConfig, RpcError> {
    c.subsystems
        .iter_mut()
        .find(|s| s.nqn == nqn)
        .ok_or_else(|| {
            RpcError::invalid_params(format!("Invalid parameters: no subsystem {nqn:?}"))
        })
}

/// `nqn` names an NVM subsystem (not the discovery one).
fn nvm_subsys(ctx: &Call, nqn: &str) -> Result<usize, RpcError> {
    match find_subsys(ctx, nqn)? {
        SubsysRef::Nvm(i) => Ok(i),
        SubsysRef::Discovery => Err(RpcError::invalid_params(
            "Invalid parameters: the discovery subsystem cannot be changed",
        )),
    }
}

fn nvmf_delete_subsystem(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: SubsysQuery = params(p)?;
    check_tgt(&q.tgt_name)?;
    nvm_subsys(ctx, &q.nqn)?;
    change(ctx, "nvmf_delete_subsystem", |c| {
        c.subsystems.retain(|s| s.nqn != q.nqn);
        Ok(())
    })?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct NsParams {
    bdev_name: String,
    #[serde(default)]
    nsid: Option<u32>,
    #[serde(default)]
    nguid: Option<String>,
    #[serde(default)]
    eui64: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    ptpl_file: Option<String>,
    #[serde(default)]
    anagrpid: Option<u32>,
    #[serde(default)]
    no_auto_visible: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNs {
    nqn: String,
    namespace: NsParams,
    #[serde(default)]
    tgt_name: Option<String>,
}

/// `N` bytes from hex text (SPDK writes NGUID and EUI-64 as hex, with or without dashes).
fn hex_bytes<const N: usize>(field: &str, text: &str) -> Result<[u8; N], RpcError> {
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    let bad = || {
        RpcError::invalid_params(format!(
            "Invalid parameters: {field} {text:?} is not {} hex digits",
            N * 2
        ))
    };
    if digits.len() != N * 2 || !digits.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&digits[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn nvmf_subsystem_add_ns(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: AddNs = params(p)?;
    check_tgt(&q.tgt_name)?;
    nvm_subsys(ctx, &q.nqn)?;
    let n = q.namespace;
    if ctx.config.bdev(&n.bdev_name).is_none() {
        return Err(RpcError::new(
            ENODEV,
            format!("No such device: no bdev {:?}", n.bdev_name),
        ));
    }
    if n.ptpl_file.is_some() || n.anagrpid.is_some() || n.no_auto_visible == Some(true) {
        return Err(RpcError::invalid_params(
            "Invalid parameters: ptpl_file, anagrpid and no_auto_visible are not supported",
        ));
    }
    let uuid = match &n.uuid {
        Some(u) => Some(crate::identity::parse_uuid(u).ok_or_else(|| {
            RpcError::invalid_params(format!("Invalid parameters: bad uuid {u:?}"))
        })?),
        None => None,
    };
    let nguid = n
        .nguid
        .as_deref()
        .map(|t| hex_bytes::<16>("nguid", t))
        .transpose()?;
    let eui64 = n
        .eui64
        .as_deref()
        .map(|t| hex_bytes::<8>("eui64", t))
        .transpose()?;
    let mut nsid = n.nsid.unwrap_or(0);
    change(ctx, "nvmf_subsystem_add_ns", |c| {
        for s in &c.subsystems {
            if let Some(u) = s.namespaces.iter().find(|x| x.bdev == n.bdev_name) {
                return Err(RpcError::invalid_params(format!(
                    "Invalid parameters: bdev {:?} already backs namespace {} of {}",
                    n.bdev_name, u.nsid, s.nqn
                )));
            }
        }
        let s = subsys_cfg(c, &q.nqn)?;
        let max = s.max_namespaces;
        if nsid == 0 {
            nsid = (1..=max)
                .find(|i| !s.namespaces.iter().any(|x| x.nsid == *i))
                .ok_or_else(|| {
                    RpcError::invalid_params(format!(
                        "Invalid parameters: {} has no free NSID: all {max} (max_namespaces) are in use",
                        q.nqn
                    ))
                })?;
        } else if nsid > max {
            // NN is fixed for the subsystem's life (hosts sized their view by it): a namespace
            // above it could never be seen.
            return Err(RpcError::invalid_params(format!(
                "Invalid parameters: NSID {nsid} is above max_namespaces {max} of {} (Identify Controller NN)",
                q.nqn
            )));
        } else if s.namespaces.iter().any(|x| x.nsid == nsid) {
            return Err(RpcError::invalid_params(format!(
                "Invalid parameters: NSID {nsid} is already in use in {}",
                q.nqn
            )));
        }
        // Inherits the subsystem's placement; the P2P decision is made at start-up only, so a
        // namespace added at run time is served from host memory until a restart (docs/p2p.md).
        let p2p = s.p2p;
        s.namespaces.push(nvmfd_config::NamespaceConfig {
            nsid,
            bdev: n.bdev_name.clone(),
            uuid,
            nguid,
            eui64,
            p2p,
        });
        Ok(())
    })?;
    Ok(json!(nsid))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn nvmf_subsystem_remove_ns(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: RemoveNs = params(p)?;
    check_tgt(&q.tgt_name)?;
    nvm_subsys(ctx, &q.nqn)?;
    change(ctx, "nvmf_subsystem_remove_ns", |c| {
        let s = subsys_cfg(c, &q.nqn)?;
        let before = s.namespaces.len();
        s.namespaces.retain(|n| n.nsid != q.nsid);
        if s.namespaces.len() == before {
            return Err(RpcError::invalid_params(format!(
                "Invalid parameters: {} has no namespace {}",
                q.nqn, q.nsid
            )));
        }
        Ok(())
    })?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenAddress {
    trtype: String,
    traddr: String,
    #[serde(default)]
    adrfam: Option<String>,
    #[serde(default)]
    trsvcid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ListenerParams {
    nqn: String,
    listen_address: ListenAddress,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    secure_channel: Option<bool>,
    #[serde(default)]
    sock_impl: Option<String>,
    #[serde(default)]
    ana_state: Option<String>,
    #[serde(default)]
    anagrpid: Option<u32>,
}

/// The listener a `listen_address` names (TCP only; the address an IP literal, the port the
/// service ID, 4420 when left out as SPDK's client does for TCP).
fn listener_of(a: &ListenAddress) -> Result<nvmfd_config::ListenerConfig, RpcError> {
    if !a.trtype.eq_ignore_ascii_case("tcp") {
        return Err(RpcError::invalid_params(format!(
            "Invalid parameters: trtype {:?}: only TCP is served",
            a.trtype
        )));
    }
    let address: IpAddr = a.traddr.parse().map_err(|_| {
        RpcError::invalid_params(format!(
            "Invalid parameters: traddr {:?} is not an IP address",
            a.traddr
        ))
    })?;
    match a.adrfam.as_deref().map(|f| f.to_ascii_lowercase()) {
        None => {}
        Some(f) if (f == "ipv4" && address.is_ipv4()) || (f == "ipv6" && address.is_ipv6()) => {}
        Some(f) => {
            return Err(RpcError::invalid_params(format!(
                "Invalid parameters: adrfam {f:?} does not match traddr {:?}",
                a.traddr
            )))
        }
    }
    let port: u16 = match &a.trsvcid {
        None => 4420,
        Some(p) => p.parse().map_err(|_| {
            RpcError::invalid_params(format!("Invalid parameters: trsvcid {p:?} is not a port"))
        })?,
    };
    Ok(nvmfd_config::ListenerConfig {
        transport: TransportKind::Tcp,
        address,
        port,
    })
}

fn nvmf_subsystem_add_listener(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: ListenerParams = params(p)?;
    check_tgt(&q.tgt_name)?;
    nvm_subsys(ctx, &q.nqn)?;
    if q.secure_channel == Some(true) {
        return Err(RpcError::invalid_params(
            "Invalid parameters: secure_channel (TLS) is not supported",
        ));
    }
    let l = listener_of(&q.listen_address)?;
    change(ctx, "nvmf_subsystem_add_listener", |c| {
        let s = subsys_cfg(c, &q.nqn)?;
        if s.listeners.contains(&l) {
            return Err(RpcError::invalid_params(format!(
                "Invalid parameters: {} already listens on {}:{}",
                q.nqn, l.address, l.port
            )));
        }
        s.listeners.push(l);
        Ok(())
    })?;
    Ok(json!(true))
}

fn nvmf_subsystem_remove_listener(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: ListenerParams = params(p)?;
    check_tgt(&q.tgt_name)?;
    nvm_subsys(ctx, &q.nqn)?;
    let l = listener_of(&q.listen_address)?;
    change(ctx, "nvmf_subsystem_remove_listener", |c| {
        let s = subsys_cfg(c, &q.nqn)?;
        if !s.listeners.contains(&l) {
            return Err(RpcError::invalid_params(format!(
                "Invalid parameters: {} does not listen on {}:{}",
                q.nqn, l.address, l.port
            )));
        }
        s.listeners.retain(|x| x != &l);
        Ok(())
    })?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct HostParams {
    nqn: String,
    host: String,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    psk: Option<String>,
    #[serde(default)]
    dhchap_key: Option<String>,
    #[serde(default)]
    dhchap_ctrlr_key: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn nvmf_subsystem_add_host(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: HostParams = params(p)?;
    check_tgt(&q.tgt_name)?;
    nvm_subsys(ctx, &q.nqn)?;
    if q.psk.is_some() || q.dhchap_key.is_some() || q.dhchap_ctrlr_key.is_some() {
        return Err(RpcError::invalid_params(
            "Invalid parameters: psk and DH-HMAC-CHAP keys are not supported",
        ));
    }
    change(ctx, "nvmf_subsystem_add_host", |c| {
        let s = subsys_cfg(c, &q.nqn)?;
        // Adding a host already allowed changes nothing (as in SPDK).
        if !s.hosts.contains(&q.host) {
            s.hosts.push(q.host.clone());
        }
        Ok(())
    })?;
    Ok(json!(true))
}

/// Taking a host off the allow-list disconnects its controllers (unless any host is allowed).
fn nvmf_subsystem_remove_host(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: HostParams = params(p)?;
    check_tgt(&q.tgt_name)?;
    nvm_subsys(ctx, &q.nqn)?;
    change(ctx, "nvmf_subsystem_remove_host", |c| {
        let s = subsys_cfg(c, &q.nqn)?;
        if !s.hosts.contains(&q.host) {
            return Err(RpcError::invalid_params(format!(
                "Invalid parameters: {:?} is not on the allow list of {}",
                q.host, q.nqn
            )));
        }
        s.hosts.retain(|h| h != &q.host);
        Ok(())
    })?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAny {
    nqn: String,
    allow_any_host: bool,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn nvmf_subsystem_allow_any_host(ctx: &Call, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: AllowAny = params(p)?;
    check_tgt(&q.tgt_name)?;
    nvm_subsys(ctx, &q.nqn)?;
    change(ctx, "nvmf_subsystem_allow_any_host", |c| {
        subsys_cfg(c, &q.nqn)?.allow_any_host = q.allow_any_host;
        Ok(())
    })?;
    Ok(json!(true))
}
