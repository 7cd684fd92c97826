//! The YAML shape as written, before defaults and validation (see `/work/shared/config.yaml`).
//!
//! Every struct denies unknown fields. Optional fields are `Option` so validation can tell "not
//! written" from "written".

use serde::de::Deserializer;
use serde::Deserialize;

use crate::size::Size;

/// `deserialize_with` for optional fields: present (even as an empty value) means `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub reactors: RawReactors,
    pub transports: RawTransports,
    pub bdevs: Vec<RawBdev>,
    pub subsystems: Vec<RawSubsystem>,
    pub discovery: RawDiscovery,
    pub state_dir: Option<String>,
    pub rpc: RawRpc,
    pub metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawReactors {
    pub cores: Option<Vec<u64>>,
    pub count: Option<u64>,
    pub idle_sleep_us: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTransports {
    pub tcp: RawTcp,
    #[serde(deserialize_with = "present")]
    pub rdma: Option<RawRdma>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRdma {
    pub in_capsule_data_size: Option<Size>,
    pub max_io_size: Option<Size>,
    pub max_queue_depth: Option<u64>,
    pub max_io_queues: Option<u64>,
    pub srq_depth: Option<u64>,
    pub buffer_pool_size: Option<Size>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTcp {
    pub in_capsule_data_size: Option<Size>,
    pub max_io_size: Option<Size>,
    pub max_queue_depth: Option<u64>,
    pub max_io_queues: Option<u64>,
    pub header_digest: Option<RawDigest>,
    pub data_digest: Option<RawDigest>,
    pub c2h_success: Option<bool>,
    pub buffer_pool_size: Option<Size>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawDigest {
    Allowed,
    Required,
    Off,
}

/// `p2p: auto | off | required` (subsystem and namespace level).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawP2p {
    Auto,
    Off,
    Required,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBdev {
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub malloc: Option<RawMemBdev>,
    #[serde(default, deserialize_with = "present")]
    pub null: Option<RawMemBdev>,
    #[serde(default, deserialize_with = "present")]
    pub uring: Option<RawUring>,
    #[serde(default, deserialize_with = "present")]
    pub nvme: Option<RawNvme>,
}

/// `malloc:` and `null:` take the same fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMemBdev {
    pub size: Size,
    #[serde(default)]
    pub block_size: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNvme {
    pub pci: String,
    #[serde(default)]
    pub namespace: Option<u32>,
    #[serde(default)]
    pub io_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUring {
    pub path: String,
    #[serde(default)]
    pub block_size: Option<Size>,
    #[serde(default)]
    pub passthrough: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSubsystem {
    pub nqn: String,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub allow_any_host: Option<bool>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub cntlid_min: Option<u64>,
    #[serde(default)]
    pub cntlid_max: Option<u64>,
    #[serde(default)]
    pub max_namespaces: Option<u64>,
    #[serde(default)]
    pub p2p: Option<RawP2p>,
    #[serde(default)]
    pub namespaces: Vec<RawNamespace>,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNamespace {
    #[serde(default)]
    pub nsid: Option<u64>,
    pub bdev: String,
    #[serde(default)]
    pub p2p: Option<RawP2p>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub nguid: Option<String>,
    #[serde(default)]
    pub eui64: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    #[serde(default)]
    pub transport: Option<RawTransportKind>,
    pub address: String,
    #[serde(default)]
    pub port: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawTransportKind {
    Tcp,
    Rdma,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawDiscovery {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRpc {
    pub socket: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawMetrics {
    pub listen: Option<String>,
}
