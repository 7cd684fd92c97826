//! `nvmfd-p2p`: where data lives and who may reach it.
//!
//! This crate knows nothing of the other nvmfd crates (design.md, "Crates"). It holds the memory
//! domains, regions, buffers and their pools ([`mem`]), the PCIe topology model and the
//! peer-to-peer decision ([`topology`]), and the start-up placement decision per transport and
//! namespace ([`placement`]).

pub mod mem;
pub mod placement;
pub mod topology;
