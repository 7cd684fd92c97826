//! NVMe-oF wire formats ([`proto`]) and transports.

mod capsule;
pub mod logsafe;
mod piece;
pub mod proto;
pub mod rdma;
pub mod tcp;

pub use capsule::{Capsule, Response};
pub use piece::{Piece, Transmit};
