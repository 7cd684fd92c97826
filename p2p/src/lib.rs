//! `nvmfd-p2p`: where data lives and who may reach it.
//!
//! This crate knows nothing of the other nvmfd crates (design.md, "Crates"). It holds the memory
//! domains, regions, buffers and their pools ([`mem`]), and the PCIe topology model and the
//! peer-to-peer decision ([`topology`]); registration routes come later.

pub mod mem;
pub mod topology;
