//! `nvmfd-nvme`: a userspace, polled NVMe driver over VFIO.
//!
//! Layers, bottom up: [`regs`], [`cmd`], [`prp`] and [`queue`] are pure (no I/O, unit tested);
//! the VFIO wrappers own one kernel object each; the controller brings the SSD up and hands out
//! one I/O queue pair per reactor, created with interrupts off and polled by that reactor.

pub mod cmd;
pub mod prp;
pub mod queue;
pub mod regs;
pub mod setup;
pub mod sysfs;

mod bar;
pub mod ctrl;
pub mod dma;
pub mod dmabuf;
pub mod quiesce;
pub mod vfio;

pub use ctrl::{
    BufferFate, Cmb, Controller, CtrlInfo, Error, IoQpair, MakePool, NsInfo, OpenOptions,
    SubmitError,
};
pub use dma::DmaRegion;
pub use dmabuf::{DmaBuf, ExportError};
