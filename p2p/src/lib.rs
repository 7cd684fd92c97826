//! `nvmfd-p2p`: where data lives and who may reach it.
//!
//! This crate knows nothing of the other nvmfd crates (design.md, "Crates"). Today it holds the
//! PCIe topology model and the peer-to-peer decision ([`topology`]); memory domains and
//! registration routes come later.

pub mod topology;
