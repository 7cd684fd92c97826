//! The small interface the perf engine drives, so a host for another fabric (NVMe/RDMA) plugs in
//! as one more implementation: a [`FabricController`] (the admin side: identify, keep alive,
//! connect I/O queues) hands out [`FabricQueue`]s (one connection each) that queue commands,
//! send them in batches and hand completions to a callback without allocating.
//!
//! NVMe/TCP implements both here on top of [`Controller`] and [`IoQueue`]; NVMe/RDMA in
//! [`super::rdma`] ([`super::rdma::RdmaController`], [`super::rdma::RdmaQueue`]).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nvmfd_transport::proto::status::Status;

use super::controller::{Controller, Host, HostOptions, NamespaceInfo};
use super::error::{HostError, Result};
use super::io::{read_sqe, write_sqe, IoQueue, MAX_BLOCKS_PER_COMMAND};
use super::queue::Completion;

/// The fabrics a perf run can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fabric {
    Tcp,
    Rdma,
}

impl Fabric {
    pub fn name(self) -> &'static str {
        match self {
            Fabric::Tcp => "tcp",
            Fabric::Rdma => "rdma",
        }
    }

    pub fn parse(s: &str) -> Option<Fabric> {
        match s {
            "tcp" => Some(Fabric::Tcp),
            "rdma" => Some(Fabric::Rdma),
            _ => None,
        }
    }
}

/// One finished I/O as a [`FabricQueue`] reports it; `data` is only valid during the callback.
#[derive(Debug)]
pub struct IoDone<'a> {
    pub cid: u16,
    pub status: Status,
    pub latency: Duration,
    /// Data the controller returned (reads).
    pub data: &'a [u8],
    /// A transport error that hit only this command (e.g. a data digest mismatch).
    pub error: Option<&'a HostError>,
}

/// One I/O queue on its own connection.
pub trait FabricQueue: Send {
    fn qid(&self) -> u16;
    /// Most commands in flight at once; CIDs handed out are below it.
    fn depth(&self) -> u16;
    /// Commands queued or in flight and not yet reaped.
    fn outstanding(&self) -> usize;
    /// Queue a Read of `blocks` blocks at `lba`; it may wait for [`FabricQueue::send_queued`].
    /// Returns the command's CID.
    fn queue_read(&mut self, nsid: u32, lba: u64, blocks: u32, block_size: usize) -> Result<u16>;
    /// Queue a Write of `data` (whole blocks) at `lba`; the data is copied before this returns.
    fn queue_write(&mut self, nsid: u32, lba: u64, data: &[u8], block_size: usize) -> Result<u16>;
    /// Send everything queued.
    fn send_queued(&mut self) -> Result<()>;
    /// Hand completed commands to `f` (flushing first). Without `wait`, at most one
    /// non-blocking receive; with it, block until at least one completes if any is in flight.
    fn reap(&mut self, wait: bool, f: &mut dyn FnMut(IoDone<'_>)) -> Result<usize>;
    /// A descriptor that becomes readable when completions may be waiting (for poll(2) over
    /// several queues), if the fabric has one.
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Close the connection.
    fn close(self: Box<Self>);
}

/// A connected, enabled controller.
pub trait FabricController {
    fn namespace(&mut self, nsid: u32) -> Result<NamespaceInfo>;
    /// CAP.MQES + 1: the most entries an I/O queue may have.
    fn max_queue_entries(&self) -> u32;
    fn connect_io(&mut self, qid: u16, depth: u16) -> Result<Box<dyn FabricQueue>>;
    fn keep_alive(&mut self) -> Result<()>;
    /// Normal shutdown and close.
    fn disconnect(self: Box<Self>) -> Result<()>;
}

/// Connect the admin queue of `opts.subnqn` at `addr` over `fabric` and enable the controller.
pub fn connect(
    fabric: Fabric,
    addr: SocketAddr,
    opts: &HostOptions,
) -> Result<Box<dyn FabricController>> {
    match fabric {
        Fabric::Tcp => Ok(Box::new(Host::connect_admin(addr, opts)?)),
        Fabric::Rdma => Ok(Box::new(super::rdma::RdmaController::connect(addr, opts)?)),
    }
}

impl FabricController for Controller {
    fn namespace(&mut self, nsid: u32) -> Result<NamespaceInfo> {
        self.namespace_info(nsid)
    }

    fn max_queue_entries(&self) -> u32 {
        (self.cap() & 0xffff) as u32 + 1
    }

    fn connect_io(&mut self, qid: u16, depth: u16) -> Result<Box<dyn FabricQueue>> {
        let mut q = Controller::connect_io(self, qid, depth)?;
        q.set_batch(true)?;
        Ok(Box::new(q))
    }

    fn keep_alive(&mut self) -> Result<()> {
        Controller::keep_alive(self)
    }

    fn disconnect(self: Box<Self>) -> Result<()> {
        Controller::disconnect(*self)
    }
}

pub(super) fn blocks_of(len: usize, block_size: usize) -> Result<u32> {
    if block_size == 0 || len == 0 || !len.is_multiple_of(block_size) {
        return Err(HostError::InvalidArgument(format!(
            "{len} bytes is not a whole number of {block_size}-byte blocks"
        )));
    }
    let b = len / block_size;
    if b > MAX_BLOCKS_PER_COMMAND as usize {
        return Err(HostError::InvalidArgument(format!(
            "{b} blocks: a command covers at most {MAX_BLOCKS_PER_COMMAND}"
        )));
    }
    Ok(b as u32)
}

impl FabricQueue for IoQueue {
    fn qid(&self) -> u16 {
        IoQueue::qid(self)
    }

    fn depth(&self) -> u16 {
        IoQueue::depth(self)
    }

    fn outstanding(&self) -> usize {
        IoQueue::outstanding(self)
    }

    fn queue_read(&mut self, nsid: u32, lba: u64, blocks: u32, block_size: usize) -> Result<u16> {
        let len = blocks as usize * block_size;
        blocks_of(len, block_size)?;
        self.submit(read_sqe(nsid, lba, blocks), None, len)
    }

    fn queue_write(&mut self, nsid: u32, lba: u64, data: &[u8], block_size: usize) -> Result<u16> {
        let blocks = blocks_of(data.len(), block_size)?;
        self.submit(write_sqe(nsid, lba, blocks), Some(data), 0)
    }

    fn send_queued(&mut self) -> Result<()> {
        IoQueue::send_queued(self)
    }

    fn reap(&mut self, wait: bool, f: &mut dyn FnMut(IoDone<'_>)) -> Result<usize> {
        self.reap_with(wait, &mut |c: &Completion| {
            f(IoDone {
                cid: c.cid,
                status: c.cqe.status,
                latency: c.latency,
                data: &c.data,
                error: c.error.as_ref(),
            })
        })
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.raw_stream().as_fd())
    }

    fn close(self: Box<Self>) {
        IoQueue::close(*self)
    }
}
