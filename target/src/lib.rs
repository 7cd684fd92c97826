//! nvmfd: the NVMe-oF target core ([`core`]), the reactor runtime ([`reactor`]) and the daemon
//! ([`daemon`]).

mod affinity;
pub mod core;
pub mod daemon;
pub mod identity;
pub mod live;
pub mod p2p;
pub mod p2p_rdma;
mod poll;
pub mod reactor;
pub mod rpc;
pub mod signals;
