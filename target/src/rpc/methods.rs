//! The methods: names, parameters and result shapes follow SPDK's (`lib/nvmf/nvmf_rpc.c`,
//! `lib/bdev/bdev_rpc.c`, `lib/event/app_rpc.c`) for the subset that applies to nvmfd, so SPDK's
//! own client and scripts work unchanged. Everything here reads the running state; the methods
//! that would change it (live reconfiguration) validate their parameters like SPDK does and then
//! answer [`EOPNOTSUPP`] until the core can change a running target.

use super::jsonrpc::{
    params, Dispatch, RpcError, ENODEV, EOPNOTSUPP, INTERNAL_ERROR, METHOD_NOT_FOUND,
};
use crate::core::{SubsysRef, Target};
use nvmfd_bdev::BdevInfo;
use nvmfd_config::{uuid_text, BdevKind, Config, TransportKind};
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

/// What the methods read.
pub struct Context {
    pub target: Arc<Target>,
    /// The running configuration: the loaded one with the serials and namespace identifiers
    /// the daemon resolved at start-up written in, and the socket actually served.
    pub config: Config,
    /// One per `config.bdevs` entry, in that order.
    pub bdevs: Vec<BdevInfo>,
    pub reactors: Vec<ReactorInfo>,
}

type Handler = fn(&Context, Option<&Value>) -> Result<Value, RpcError>;

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
    ("save_config", save_config),
    ("framework_get_subsystems", framework_get_subsystems),
    ("framework_get_config", framework_get_config),
    ("bdev_malloc_create", bdev_malloc_create),
    ("bdev_malloc_delete", bdev_delete),
    ("bdev_null_create", bdev_null_create),
    ("bdev_null_delete", bdev_delete),
    ("bdev_uring_create", bdev_uring_create),
    ("bdev_uring_delete", bdev_delete),
    ("nvmf_create_subsystem", nvmf_create_subsystem),
    ("nvmf_delete_subsystem", nvmf_delete_subsystem),
    ("nvmf_subsystem_add_ns", nvmf_subsystem_add_ns),
    ("nvmf_subsystem_remove_ns", nvmf_subsystem_remove_ns),
    ("nvmf_subsystem_add_listener", nvmf_subsystem_listener),
    ("nvmf_subsystem_remove_listener", nvmf_subsystem_listener),
    ("nvmf_subsystem_add_host", nvmf_subsystem_host),
    ("nvmf_subsystem_remove_host", nvmf_subsystem_host),
    (
        "nvmf_subsystem_allow_any_host",
        nvmf_subsystem_allow_any_host,
    ),
];

/// Methods nvmfd knows but does not serve yet: the reason.
const NOT_YET: &[(&str, &str)] = &[
    ("nvmf_subsystem_get_qpairs", "per-queue-pair reporting"),
    ("nvmf_get_stats", "per-reactor statistics"),
];

impl Dispatch for Context {
    fn call(&self, method: &str, p: Option<&Value>) -> Result<Value, RpcError> {
        if let Some((_, h)) = METHODS.iter().find(|(m, _)| *m == method) {
            return h(self, p);
        }
        if let Some((_, what)) = NOT_YET.iter().find(|(m, _)| *m == method) {
            return Err(RpcError::new(
                EOPNOTSUPP,
                format!("not supported yet: {what} ({method})"),
            ));
        }
        Err(RpcError::new(METHOD_NOT_FOUND, "Method not found"))
    }
}

/// Params of methods that take none: any member is Invalid params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn spdk_get_version(_: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
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

fn rpc_get_methods(_: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
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

fn framework_get_reactors(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
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
fn bdev_user(ctx: &Context, bdev: usize) -> Option<(&str, &crate::core::Namespace)> {
    ctx.target.subsystems.iter().find_map(|s| {
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

fn bdev_json(ctx: &Context, i: usize) -> Value {
    let info = &ctx.bdevs[i];
    let cfg = &ctx.config.bdevs[i];
    let (product, specific) = match &cfg.kind {
        BdevKind::Malloc { .. } => ("Malloc disk", json!({})),
        BdevKind::Null { .. } => ("Null disk", json!({})),
        BdevKind::Uring { path, .. } => (
            "URING bdev",
            json!({"uring": {"filename": path.to_string_lossy()}}),
        ),
        BdevKind::Nvme { pci, namespace } => (
            "NVMe disk",
            json!({"nvme": [{"pci_address": pci, "trid": {"trtype": "PCIe", "traddr": pci}, "ns_data": {"id": namespace}}]}),
        ),
    };
    let user = bdev_user(ctx, i);
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
    if let Some((nqn, ns)) = user {
        // nvmfd's bdevs have no identity of their own: the UUID shown is that of the namespace
        // the bdev backs (SPDK's namespace UUID defaults to its bdev's, so both agree there).
        v["uuid"] = json!(uuid_text(&ns.uuid));
        v["claim_type"] = json!("exclusive_write");
        v["nvmfd"] = json!({"subsystem": nqn, "nsid": ns.nsid, "kind": info.kind});
    } else {
        v["nvmfd"] = json!({"kind": info.kind});
    }
    v
}

fn bdev_get_bdevs(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: GetBdevs = params(p)?;
    match q.name {
        None => Ok(Value::Array(
            (0..ctx.bdevs.len()).map(|i| bdev_json(ctx, i)).collect(),
        )),
        Some(name) => match ctx.bdevs.iter().position(|b| b.name == name) {
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

fn nvmf_get_transports(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
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

fn subsystem_json(ctx: &Context, i: usize) -> Value {
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
fn discovery_json(ctx: &Context) -> Value {
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

fn nvmf_get_subsystems(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: GetSubsystems = params(p)?;
    check_tgt(&q.tgt_name)?;
    let mut all = Vec::new();
    if ctx.target.discovery_enabled {
        all.push((nvmfd_config::DISCOVERY_NQN, discovery_json(ctx)));
    }
    for (i, s) in ctx.target.subsystems.iter().enumerate() {
        all.push((s.nqn.as_str(), subsystem_json(ctx, i)));
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

fn find_subsys(ctx: &Context, nqn: &str) -> Result<SubsysRef, RpcError> {
    ctx.target.find_subsystem(nqn).ok_or_else(|| {
        RpcError::invalid_params(format!("Invalid parameters: no subsystem {nqn:?}"))
    })
}

fn nvmf_subsystem_get_controllers(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
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

fn save_config(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    params::<NoParams>(p)?;
    Ok(Value::String(nvmfd_config::to_yaml(&ctx.config)))
}

/// SPDK's `save_config` (client side: `spdk-rpc save_config`) walks these and asks each one's
/// `framework_get_config`; dependencies come first.
fn framework_get_subsystems(_: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
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
fn framework_get_config(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: GetConfig = params(p)?;
    let mut calls = Vec::new();
    let mut call =
        |method: &str, params: Value| calls.push(json!({"method": method, "params": params}));
    match q.name.as_str() {
        "bdev" => {
            for (i, b) in ctx.config.bdevs.iter().enumerate() {
                let info = &ctx.bdevs[i];
                match &b.kind {
                    BdevKind::Malloc { .. } => {
                        let mut p = json!({"name": b.name, "num_blocks": info.num_blocks, "block_size": info.block_size});
                        if let Some((_, ns)) = bdev_user(ctx, i) {
                            p["uuid"] = json!(uuid_text(&ns.uuid));
                        }
                        call("bdev_malloc_create", p);
                    }
                    BdevKind::Null { .. } => call(
                        "bdev_null_create",
                        json!({"name": b.name, "num_blocks": info.num_blocks, "block_size": info.block_size}),
                    ),
                    BdevKind::Uring { path, .. } => call(
                        "bdev_uring_create",
                        json!({"name": b.name, "filename": path.to_string_lossy(), "block_size": info.block_size}),
                    ),
                    // SPDK attaches a whole controller and names its bdevs NAMEnN; nvmfd's bdev
                    // is one namespace, so the namespace goes along as a parameter of our own.
                    BdevKind::Nvme { pci, namespace } => call(
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
            for s in &ctx.target.subsystems {
                call(
                    "nvmf_create_subsystem",
                    json!({"nqn": s.nqn, "serial_number": s.serial, "model_number": s.model,
                           "allow_any_host": s.allow_any_host,
                           "min_cntlid": s.cntlid_range.0, "max_cntlid": s.cntlid_range.1}),
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

// ---- Methods that change the running state: validated, then refused until the core can. ----

fn live(method: &str) -> RpcError {
    RpcError::new(
        EOPNOTSUPP,
        format!(
            "not supported yet: live reconfiguration ({method}); change the YAML configuration \
             and restart nvmfd"
        ),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MemCreate {
    #[serde(default)]
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
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
    Ok(())
}

fn bdev_malloc_create(_: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    check_mem(&params::<MemCreate>(p)?)?;
    Err(live("bdev_malloc_create"))
}

fn bdev_null_create(_: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let m: MemCreate = params(p)?;
    if m.name.is_none() {
        return Err(RpcError::invalid_params(
            "Invalid parameters: missing field `name`",
        ));
    }
    check_mem(&m)?;
    Err(live("bdev_null_create"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct UringCreate {
    name: String,
    filename: String,
    #[serde(default)]
    block_size: Option<u32>,
    #[serde(default)]
    uuid: Option<String>,
}

fn bdev_uring_create(_: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    params::<UringCreate>(p)?;
    Err(live("bdev_uring_create"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameOnly {
    name: String,
}

fn bdev_delete(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: NameOnly = params(p)?;
    if !ctx.bdevs.iter().any(|b| b.name == q.name) {
        return Err(RpcError::new(ENODEV, "No such device"));
    }
    Err(live("bdev delete"))
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

fn nvmf_create_subsystem(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: CreateSubsystem = params(p)?;
    check_tgt(&q.tgt_name)?;
    if ctx.target.find_subsystem(&q.nqn).is_some() {
        return Err(RpcError::new(
            INTERNAL_ERROR,
            format!("Unable to create subsystem {}", q.nqn),
        ));
    }
    Err(live("nvmf_create_subsystem"))
}

fn nvmf_delete_subsystem(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: SubsysQuery = params(p)?;
    check_tgt(&q.tgt_name)?;
    find_subsys(ctx, &q.nqn)?;
    Err(live("nvmf_delete_subsystem"))
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
#[allow(dead_code)]
struct AddNs {
    nqn: String,
    namespace: NsParams,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn nvmf_subsystem_add_ns(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: AddNs = params(p)?;
    check_tgt(&q.tgt_name)?;
    find_subsys(ctx, &q.nqn)?;
    Err(live("nvmf_subsystem_add_ns"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn nvmf_subsystem_remove_ns(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: RemoveNs = params(p)?;
    check_tgt(&q.tgt_name)?;
    find_subsys(ctx, &q.nqn)?;
    let _ = q.nsid;
    Err(live("nvmf_subsystem_remove_ns"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
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

fn nvmf_subsystem_listener(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: ListenerParams = params(p)?;
    check_tgt(&q.tgt_name)?;
    find_subsys(ctx, &q.nqn)?;
    Err(live("listeners"))
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

fn nvmf_subsystem_host(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: HostParams = params(p)?;
    check_tgt(&q.tgt_name)?;
    find_subsys(ctx, &q.nqn)?;
    Err(live("hosts"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAny {
    nqn: String,
    allow_any_host: bool,
    #[serde(default)]
    tgt_name: Option<String>,
}

fn nvmf_subsystem_allow_any_host(ctx: &Context, p: Option<&Value>) -> Result<Value, RpcError> {
    let q: AllowAny = params(p)?;
    check_tgt(&q.tgt_name)?;
    find_subsys(ctx, &q.nqn)?;
    let _ = q.allow_any_host;
    Err(live("nvmf_subsystem_allow_any_host"))
}

/// The running configuration: `cfg` with what start-up resolved written in (serials, namespace
/// UUIDs and NGUIDs) and `socket` as the RPC socket, so that saving it and starting from the
/// saved file gives the same target.
pub fn running_config(cfg: &Config, target: &Target, socket: &std::path::Path) -> Config {
    let mut c = cfg.clone();
    for (sc, s) in c.subsystems.iter_mut().zip(&target.subsystems) {
        sc.serial = s.serial.clone();
        sc.serial_is_default = false;
        for nc in &mut sc.namespaces {
            if let Some(n) = s.namespace(nc.nsid) {
                nc.uuid = Some(n.uuid);
                nc.nguid = Some(n.nguid);
                nc.eui64 = (n.eui64 != [0; 8]).then_some(n.eui64);
            }
        }
    }
    c.rpc.socket = socket.to_owned();
    c
}
