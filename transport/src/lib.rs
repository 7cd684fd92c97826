//! NVMe-oF wire formats ([`proto`]) and transports.

mod capsule;
pub mod group;
pub mod logsafe;
mod piece;
pub mod proto;
pub mod rdma;
pub mod staging;
pub mod tcp;

pub use capsule::{Capsule, Response};
pub use group::{Admission, DataDesc, DataNeed, TransportInfo};
pub use piece::{Piece, Transmit};
