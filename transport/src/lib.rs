//! NVMe-oF wire formats ([`proto`]) and transports.

pub mod proto;
