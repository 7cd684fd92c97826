//! The PCIe topology model and the peer-to-peer decision.
//!
//! [`Topology::load`] reads every PCI function from sysfs (addresses, IDs, the chain of
//! upstream bridges from the `/sys/devices/pciDDDD:BB/...` path, PCIe port type and ACS from
//! `config`, BARs from `resource` and config space, links, SR-IOV, IOMMU group, NUMA node,
//! driver), the RDMA devices, `/proc/cpuinfo` and `/proc/cmdline`; all of them come from
//! [`Sources`], so every rule runs on fixtures. [`decide_pair`] and [`decide_rdma`] return a
//! [`Decision`]: the kernel's verdict (Linux `drivers/pci/p2pdma.c`) and nvmfd's own findings,
//! each with its rule name and what to change. docs/p2p.md explains every rule.

mod bdf;
mod config_space;
mod decide;
pub mod fixture;
mod host;
mod model;
mod render;

pub use bdf::{Bdf, BdfError};
pub use config_space::{
    acs_bit_names, AcsState, ConfigSpace, PortType, ACS_CR, ACS_DT, ACS_EC, ACS_REDIRECT_BITS,
    ACS_RR, ACS_SV, ACS_TB, ACS_UF,
};
pub use decide::{decide_pair, decide_rdma, Decision, Finding, MapType, Peer, Severity};
pub use host::{AcsRedirParam, CpuInfo, DevMatch, KernelParams};
pub use model::{Bar, Gid, Link, PciFunction, RdmaDevice, RdmaPort, Sources, Topology};
pub use render::{function_line, matrix_cell, render_decision, render_matrix, render_tree};
