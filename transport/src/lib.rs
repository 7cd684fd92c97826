//! NVMe-oF wire formats ([`proto`]) and transports.

mod capsule;
pub mod tcp;
pub mod proto;

pub use capsule::{Capsule, Response};
