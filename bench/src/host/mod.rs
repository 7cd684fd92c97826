//! A userspace NVMe/TCP host (initiator) over blocking sockets: enough for integration tests and
//! a perf initiator.
//!
//! [`Host::connect_admin`] gives an enabled [`Controller`] (admin queue); from it
//! [`Controller::connect_io`] gives [`IoQueue`]s, each on its own TCP connection, with a
//! synchronous API (`read`, `write`, ...) and a pipelined one (`submit` + `poll_completions`).
//! [`RawConnection`] writes arbitrary bytes for malformed-PDU tests. All wire formats come from
//! `nvmfd_transport::proto`.

mod conn;
mod controller;
mod error;
pub mod fabric;
pub mod frame;
mod io;
mod queue;
mod raw;
pub mod rdma;

pub use conn::MAX_PDU_DATA;
pub use controller::{format_uuid, Controller, ControllerInfo, Host, HostOptions, NamespaceInfo};
pub use error::{fes_name, pdu_name, HostError, Result};
pub use fabric::{Fabric, FabricController, FabricQueue, IoDone};
pub use io::{
    deallocate_sqe, read_sqe, write_sqe, write_zeroes_sqe, IoQueue, MAX_BLOCKS_PER_COMMAND,
    MAX_DSM_RANGES,
};
pub use queue::Completion;
pub use raw::{OwnedPdu, RawConnection, RawEvent};
