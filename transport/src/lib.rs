//! NVMe-oF wire formats ([`proto`]) and transports.

mod capsule;
pub mod logsafe;
pub mod proto;
pub mod rdma;
pub mod tcp;

pub use capsule::{Capsule, Response};
