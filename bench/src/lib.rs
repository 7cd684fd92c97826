//! nvmfd-bench: a userspace NVMe/TCP host library ([`host`]) used by the target's integration
//! tests and by the `nvmfd-perf` initiator, plus the data pattern ([`pattern`]) perf writes and
//! verifies.

pub mod host;
pub mod pattern;
pub mod perf;
pub mod report;

pub use host::{
    Completion, Controller, ControllerInfo, Host, HostError, HostOptions, IoQueue, NamespaceInfo,
    OwnedPdu, RawConnection, RawEvent,
};
