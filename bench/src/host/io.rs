//! I/O queues: NVM commands, synchronous and pipelined.

use nvmfd_transport::proto::nvme::{opcode, Cqe, Sqe};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::proto::tcp::{Digests, IcResp};

use super::error::{HostError, Result};
use super::queue::{Completion, Queue};
use super::raw::RawConnection;

/// Most blocks one read/write/write-zeroes command can cover (16-bit 0-based NLB).
pub const MAX_BLOCKS_PER_COMMAND: u32 = 1 << 16;

/// Most ranges in one Dataset Management command.
pub const MAX_DSM_RANGES: usize = 256;

fn check_blocks(blocks: u32) -> Result<()> {
    if blocks == 0 || blocks > MAX_BLOCKS_PER_COMMAND {
        return Err(HostError::InvalidArgument(format!(
            "{blocks} blocks: a command covers 1..={MAX_BLOCKS_PER_COMMAND}"
        )));
    }
    Ok(())
}

fn rw_sqe(op: u8, nsid: u32, lba: u64, blocks: u32) -> Sqe {
    Sqe::lba_command(op, nsid, lba, blocks)
}

/// A Read command for `blocks` blocks at `lba` (data pointer left for the host to fill).
pub fn read_sqe(nsid: u32, lba: u64, blocks: u32) -> Sqe {
    rw_sqe(opcode::NVM_READ, nsid, lba, blocks)
}

/// A Write command for `blocks` blocks at `lba` (data pointer left for the host to fill).
pub fn write_sqe(nsid: u32, lba: u64, blocks: u32) -> Sqe {
    rw_sqe(opcode::NVM_WRITE, nsid, lba, blocks)
}

/// A Write Zeroes command.
pub fn write_zeroes_sqe(nsid: u32, lba: u64, blocks: u32) -> Sqe {
    rw_sqe(opcode::NVM_WRITE_ZEROES, nsid, lba, blocks)
}

/// A Dataset Management (deallocate) command for `nr` ranges, and its range list
/// (16 bytes per `(lba, blocks)`: context attributes, length in blocks, starting LBA).
pub fn deallocate_sqe(nsid: u32, ranges: &[(u64, u32)]) -> (Sqe, Vec<u8>) {
    let sqe = Sqe {
        opcode: opcode::NVM_DATASET_MANAGEMENT,
        nsid,
        cdw10: (ranges.len() as u32).wrapping_sub(1) & 0xff,
        cdw11: 1 << 2,
        ..Default::default()
    };
    let mut data = Vec::with_capacity(ranges.len() * 16);
    for &(lba, blocks) in ranges {
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&blocks.to_le_bytes());
        data.extend_from_slice(&lba.to_le_bytes());
    }
    (sqe, data)
}

/// An I/O queue on its own TCP connection.
pub struct IoQueue {
    q: Queue,
}

impl IoQueue {
    pub(crate) fn new(q: Queue) -> IoQueue {
        IoQueue { q }
    }

    pub fn qid(&self) -> u16 {
        self.q.qid
    }

    /// Entries of the queue (and most commands in flight at once).
    pub fn depth(&self) -> u16 {
        self.q.depth
    }

    /// Largest write sent in-capsule; larger ones go with R2T.
    pub fn in_capsule_size(&self) -> usize {
        self.q.in_capsule_size
    }

    pub fn set_in_capsule_size(&mut self, bytes: usize) {
        self.q.in_capsule_size = bytes;
    }

    pub fn icresp(&self) -> IcResp {
        self.q.icresp
    }

    /// Largest H2CData payload the controller accepts (from ICResp).
    pub fn maxh2cdata(&self) -> u32 {
        self.q.icresp.maxh2cdata
    }

    pub fn digests(&self) -> Digests {
        self.q.conn.digests
    }

    /// Commands submitted and not yet returned by `poll_completions`/`wait_for`.
    pub fn outstanding(&self) -> usize {
        self.q.outstanding()
    }

    /// Read `blocks` blocks of `block_size` bytes. Returns the status and the data (all of it on
    /// success; whatever arrived otherwise).
    pub fn read(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        block_size: usize,
    ) -> Result<(Status, Vec<u8>)> {
        check_blocks(blocks)?;
        let len = blocks as usize * block_size;
        let (cqe, data) = self.command(read_sqe(nsid, lba, blocks), None, len)?;
        if cqe.status.is_success() && data.len() != len {
            return Err(HostError::Protocol(format!(
                "read of {blocks} blocks at LBA {lba} succeeded with {} of {len} bytes",
                data.len()
            )));
        }
        Ok((cqe.status, data))
    }

    /// Write `data` (a whole number of `block_size` blocks) at `lba`: in-capsule when it fits
    /// [`IoQueue::in_capsule_size`], else with R2T/H2CData.
    pub fn write(&mut self, nsid: u32, lba: u64, data: &[u8], block_size: usize) -> Result<Status> {
        let blocks = write_blocks(data, block_size)?;
        let (cqe, _) = self.command(write_sqe(nsid, lba, blocks), Some(data), 0)?;
        Ok(cqe.status)
    }

    pub fn flush(&mut self, nsid: u32) -> Result<Status> {
        let sqe = Sqe {
            opcode: opcode::NVM_FLUSH,
            nsid,
            ..Default::default()
        };
        Ok(self.command(sqe, None, 0)?.0.status)
    }

    pub fn write_zeroes(&mut self, nsid: u32, lba: u64, blocks: u32) -> Result<Status> {
        check_blocks(blocks)?;
        Ok(self
            .command(write_zeroes_sqe(nsid, lba, blocks), None, 0)?
            .0
            .status)
    }

    /// Dataset Management with the Deallocate attribute over `(lba, blocks)` ranges.
    pub fn deallocate(&mut self, nsid: u32, ranges: &[(u64, u32)]) -> Result<Status> {
        if ranges.is_empty() || ranges.len() > MAX_DSM_RANGES {
            return Err(HostError::InvalidArgument(format!(
                "{} ranges: Dataset Management takes 1..={MAX_DSM_RANGES}",
                ranges.len()
            )));
        }
        let (sqe, data) = deallocate_sqe(nsid, ranges);
        Ok(self.command(sqe, Some(&data), 0)?.0.status)
    }

    /// Send any command and wait for it. A zero `sqe.dptr` is filled in (SGL: in-capsule data
    /// when it fits, else a transport data block); the CID is chosen by the host. The status is
    /// not checked.
    pub fn command(
        &mut self,
        sqe: Sqe,
        data_out: Option<&[u8]>,
        data_in_len: usize,
    ) -> Result<(Cqe, Vec<u8>)> {
        self.q.execute(sqe, data_out, data_in_len)?.into_result()
    }

    /// Send a command without waiting for it; returns the CID it was given.
    pub fn submit(&mut self, sqe: Sqe, data_out: Option<&[u8]>, data_in_len: usize) -> Result<u16> {
        self.q.submit(sqe, data_out, data_in_len)
    }

    pub fn submit_read(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        block_size: usize,
    ) -> Result<u16> {
        check_blocks(blocks)?;
        self.submit(
            read_sqe(nsid, lba, blocks),
            None,
            blocks as usize * block_size,
        )
    }

    pub fn submit_write(
        &mut self,
        nsid: u32,
        lba: u64,
        data: &[u8],
        block_size: usize,
    ) -> Result<u16> {
        let blocks = write_blocks(data, block_size)?;
        self.submit(write_sqe(nsid, lba, blocks), Some(data), 0)
    }

    /// Wait until at least `min` commands have completed (0: don't wait; capped at the number
    /// in flight), and return those plus any others that have already arrived.
    pub fn poll_completions(&mut self, min: usize) -> Result<Vec<Completion>> {
        self.q.poll(min)
    }

    /// Wait for command `cid`; completions of others stay queued for `poll_completions`.
    pub fn wait_for(&mut self, cid: u16) -> Result<Completion> {
        self.q.wait_for(cid)
    }

    /// Batched sends: `submit` only queues the command; it goes out with others on
    /// [`IoQueue::send_queued`], [`IoQueue::reap_with`] or before any blocking wait. Off by default.
    pub fn set_batch(&mut self, on: bool) -> Result<()> {
        self.q.set_batch(on)
    }

    /// Send the commands (and H2CData) batched so far, in one write.
    pub fn send_queued(&mut self) -> Result<()> {
        self.q.flush()
    }

    /// Hand every completed command to `f` without allocating (buffers return to the queue's
    /// pool afterwards): at most one non-blocking receive, or with `wait` block until at least
    /// one completes when any is in flight. Returns how many were handed over.
    pub fn reap_with(&mut self, wait: bool, f: &mut dyn FnMut(&Completion)) -> Result<usize> {
        self.q.reap(wait, f)
    }

    pub(crate) fn raw_stream(&self) -> &std::net::TcpStream {
        &self.q.conn.stream
    }

    /// Hand a completion's data buffer back for reuse by later reads.
    pub fn recycle_buffer(&mut self, buf: Vec<u8>) {
        self.q.recycle(buf);
    }

    /// Close the TCP connection (without a fabrics Disconnect).
    pub fn close(self) {
        self.q.conn.shutdown();
    }

    /// Give up the typed API and keep the bare connection (with its negotiated digests).
    pub fn into_raw(self) -> RawConnection {
        RawConnection::from_conn(self.q.conn, self.q.h2c_align)
    }
}

fn write_blocks(data: &[u8], block_size: usize) -> Result<u32> {
    if block_size == 0 || data.is_empty() || !data.len().is_multiple_of(block_size) {
        return Err(HostError::InvalidArgument(format!(
            "write of {} bytes is not a whole number of {block_size}-byte blocks",
            data.len()
        )));
    }
    let blocks = (data.len() / block_size) as u32;
    check_blocks(blocks)?;
    Ok(blocks)
}
