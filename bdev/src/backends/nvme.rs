//! `nvme`: an NVMe SSD namespace through nvmfd's userspace VFIO driver (`nvmfd-nvme`).
//!
//! Each reactor's channel owns one I/O queue pair (created with interrupts off, polled by that
//! reactor) and the DMA memory its commands use. Where the data goes depends on the buffer's
//! memory domain:
//! - a buffer **in this SSD's CMB** (from [`Nvme::cmb_pool`], `Domain::Cmb`): the PRPs point
//!   at the buffer's controller address ([`IoBuf::device_addr`](crate::IoBuf::device_addr)) and
//!   nothing is copied. A command's data is then wholly in the CMB, since one buffer is one
//!   slice of one region (NVMe Base 2.0: data partly in and partly out of the CMB is Generic
//!   Command Status 12h, Invalid Use of Controller Memory Buffer);
//! - a **host-memory buffer with a device address** (every buffer of a reactor's pool): the PRPs
//!   point at its IOVA. The driver keeps one VFIO container for all controllers, and every pool
//!   region is mapped in it once, when the region is made or when the first controller comes up
//!   (`nvmfd_p2p::mem::IovaSpace`), never per I/O; nothing is copied;
//! - any other buffer (one made past a pool's cap, a region whose mapping failed, a buffer of
//!   its own) is **bounced**: a write is copied into the channel's IOMMU-mapped memory, a read
//!   copied back out; counted ([`Nvme::data_path_counts`]) and logged once per bdev.
//!
//! Several bdevs on one controller (one per namespace) share it: the first opens it, the others
//! find it in a table of open controllers; each channel still has its own queue pair.
//!
//! Requests larger than the controller's MDTS (or 65536 blocks) are split into several
//! commands; the request completes when all of them have, with the first failure. An NVMe
//! error from the SSD is returned as [`IoError::Nvme`] with the SSD's own status.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nvmfd_nvme::cmd::{Cqe, Sqe, Status};
use nvmfd_nvme::prp::Segment;
use nvmfd_nvme::{BufferFate, Controller, DmaRegion, IoQpair, NsInfo, OpenOptions};
use nvmfd_p2p::mem::{Domain, IoBuf, SharedPool, ALIGN};
use nvmfd_p2p::placement::{CmbFacts, DeviceMemory};

use crate::{Bdev, BdevChannel, BdevInfo, Completion, DsmRange, Io, IoError, Op};
use tracing::warn;

/// Largest request a channel takes (bytes): the bounce slot size. nvmfd's transports cap
/// `max_io_size` at 8 MiB; 1 MiB covers the default 128 KiB and fio's 1 MiB jobs.
const MAX_REQUEST: usize = 1 << 20;
/// Requests in flight per channel (each owns one bounce slot).
const REQUESTS: usize = 32;
/// I/O queue depth per channel.
const QUEUE_DEPTH: u16 = 256;

/// Controllers open in this process, by PCI address: a second namespace of an SSD shares the
/// controller (its VFIO group can be opened once). Control plane only (bdev open).
static CONTROLLERS: Mutex<Vec<(String, Weak<Controller>)>> = Mutex::new(Vec::new());

fn controller(pci: &str, opts: &OpenOptions) -> nvmfd_nvme::ctrl::Result<Arc<Controller>> {
    let bdf = nvmfd_nvme::sysfs::parse_bdf(pci).map_err(nvmfd_nvme::Error::Invalid)?;
    let mut open = CONTROLLERS.lock().unwrap_or_else(|p| p.into_inner());
    open.retain(|(_, w)| w.strong_count() > 0);
    // A controller released to the kernel (hot-removal) is not shared: a bdev made now (the
    // device rescanned and bound again) opens the SSD anew. One given up but still holding its
    // VFIO group cannot be opened a second time (the group is busy): say so rather than fail
    // on the group.
    let live: Vec<Arc<Controller>> = (open.iter())
        .filter(|(b, _)| *b == bdf)
        .filter_map(|(_, w)| w.upgrade())
        .filter(|c| !c.is_released())
        .collect();
    if let Some(c) = live.iter().find(|c| !c.is_dead()) {
        return Ok(c.clone());
    }
    if !live.is_empty() {
        return Err(nvmfd_nvme::ctrl::Error::Invalid(format!(
            "NVMe controller {bdf} was given up (failed reset or removal) and is still held by \
             this nvmfd: remove the bdevs on it and restart nvmfd to use the SSD again"
        )));
    }
    let c = Controller::open(&bdf, opts)?;
    open.push((bdf, Arc::downgrade(&c)));
    Ok(c)
}

/// Where the channels' data went, for tests and reports: requests whose data the SSD reached in
/// place (a CMB buffer, or a host buffer by its IOVA) and requests bounced (copied).
#[derive(Debug, Default)]
struct DataPath {
    direct: AtomicU64,
    bounced: AtomicU64,
}

pub struct Nvme {
    info: BdevInfo,
    timeout: Duration,
    ctrl: Arc<Controller>,
    ns: NsInfo,
    path: Arc<DataPath>,
}

impl Nvme {
    /// Bring the controller at `pci` up and open namespace `nsid`. `channels` is how many
    /// reactors will open a channel (one I/O queue pair each). `timeout`: the I/O command time
    /// limit of this bdev's queue pairs (the config's `io_timeout_ms`; a command older than this
    /// is aborted, and the controller reset when it is still outstanding after twice that).
    pub fn open(
        name: String,
        pci: &str,
        nsid: u32,
        channels: u16,
        timeout: Duration,
    ) -> io::Result<Nvme> {
        if timeout.is_zero() {
            return Err(io::Error::other(format!(
                "bdev {name}: an I/O timeout of 0 would fail every command"
            )));
        }
        let opts = OpenOptions {
            cmb: true,
            io_queues: channels.max(1),
            dma_bytes: u64::from(channels.max(1)) * (REQUESTS * MAX_REQUEST) as u64 + (16 << 20),
            ..OpenOptions::default()
        };
        let err = |e: nvmfd_nvme::Error| io::Error::other(format!("bdev {name}: {e}"));
        let ctrl = controller(pci, &opts).map_err(err)?;
        let ns = ctrl.namespace(nsid).map_err(err)?;
        let info = BdevInfo {
            name,
            kind: "nvme",
            block_size: ns.block_size,
            num_blocks: ns.blocks,
            // Deallocated blocks reading zeroes is DLFEAT's business; not claimed here.
            deallocate_zeroes: false,
            volatile_cache: ctrl.info().vwc,
        };
        if timeout != nvmfd_nvme::ctrl::IO_TIMEOUT {
            tracing::info!(bdev = %info.name, timeout_ms = timeout.as_millis() as u64, "I/O command timeout set by io_timeout_ms");
        }
        Ok(Nvme {
            info,
            timeout,
            ctrl,
            ns,
            path: Arc::default(),
        })
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrl
    }

    /// The SSD's CMB as a memory domain, when it has one: buffers from it (through a
    /// per-reactor [`SharedPool::cache`]) reach the SSD without a copy.
    pub fn cmb_pool(&self) -> Option<&Arc<SharedPool>> {
        self.ctrl.cmb().map(|c| c.pool())
    }

    /// Requests sent with the SSD reaching their buffer in place (CMB address or host IOVA: no
    /// copy) and requests bounced through the channel's own DMA memory, over every channel so far.
    pub fn data_path_counts(&self) -> (u64, u64) {
        (
            self.path.direct.load(Ordering::Relaxed),
            self.path.bounced.load(Ordering::Relaxed),
        )
    }
}

impl Bdev for Nvme {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn reaches(&self, domain: Domain) -> bool {
        domain == Domain::HostMemory || self.ctrl.cmb().is_some_and(|c| c.domain() == domain)
    }

    fn nvme_controller(&self) -> Option<&Arc<Controller>> {
        Some(&self.ctrl)
    }

    fn device_memory(&self) -> DeviceMemory {
        let pci = self.ctrl.bdf().to_owned();
        match self.ctrl.cmb() {
            Some(c) => DeviceMemory::Cmb(CmbFacts {
                pci,
                domain: c.domain(),
                bytes: c.len() as u64,
                rds: c.layout.sz.rds(),
                wds: c.layout.sz.wds(),
                mixed_lists: c.layout.loc.cdpmls(),
            }),
            None if self.ctrl.cap().cmbs() => DeviceMemory::CmbUnusable { pci },
            None => DeviceMemory::NoCmb { pci },
        }
    }

    fn cmb_domain_pool(&self) -> Option<Arc<SharedPool>> {
        self.cmb_pool().cloned()
    }

    fn channel(&self) -> io::Result<Box<dyn BdevChannel>> {
        let mut qp = self
            .ctrl
            .io_qpair(QUEUE_DEPTH)
            .map_err(|e| io::Error::other(format!("bdev {}: {e}", self.info.name)))?;
        qp.set_timeout(self.timeout);
        let bounce = self
            .ctrl
            .dma_region(REQUESTS * MAX_REQUEST)
            .map_err(|e| io::Error::other(format!("bdev {}: {e}", self.info.name)))?;
        // Split unit: the controller's largest transfer, in whole blocks, at most 65536 blocks
        // (NLB is 16 bits).
        let bs = self.ns.block_size as usize;
        let max_blocks = (qp.max_transfer() / bs).clamp(1, 65536);
        Ok(Box::new(NvmeChannel {
            bounce,
            qp,
            name: self.info.name.clone(),
            nsid: self.ns.nsid,
            block_size: bs,
            num_blocks: self.ns.blocks,
            max_blocks: max_blocks as u32,
            write_zeroes: self.ctrl.info().write_zeroes(),
            dsm: self.ctrl.info().dsm(),
            reqs: (0..REQUESTS).map(|_| None).collect(),
            free: (0..REQUESTS).rev().collect(),
            finished: VecDeque::with_capacity(REQUESTS),
            in_flight: 0,
            cmb: self.ctrl.cmb().map(|c| c.domain()),
            path: self.path.clone(),
        }))
    }
}

struct Request {
    io: Io,
    parts_left: u32,
    status: Option<Status>,
    /// Bytes to copy back into the IoBuf when a read completes (0 for data in the CMB).
    read_len: usize,
    /// The SSD reaches the IoBuf itself (its IOVA or CMB address is in the PRPs) for this many
    /// bytes; 0 when the data is bounced or there is none.
    dma_len: usize,
    /// A part was failed on a dead controller whose DMA could not be stopped
    /// ([`BufferFate::Leak`]): the IoBuf must never be reused.
    leak: bool,
}

/// Take a request's buffer out of circulation for good (the SSD may still write into it): it is
/// forgotten, so its region stays allocated and mapped and its slice is never carved again, and
/// the completion carries a one-page buffer of its own in its place (no pool keeps a buffer of a
/// size it does not hand out; the failed command moves no data, so nothing reads it). Only on a
/// dead controller, once per command it had in flight; returns the bytes leaked.
fn leak_buffer(buf: &mut IoBuf) -> usize {
    let old = std::mem::replace(buf, IoBuf::new(ALIGN));
    let n = old.capacity();
    std::mem::forget(old);
    n
}

struct NvmeChannel {
    /// Dropped before the queue pair (which may hold the last reference to the controller, whose
    /// group leaving the VFIO container removes every mapping).
    bounce: DmaRegion,
    qp: IoQpair,
    name: String,
    nsid: u32,
    block_size: usize,
    num_blocks: u64,
    max_blocks: u32,
    write_zeroes: bool,
    dsm: bool,
    reqs: Vec<Option<Request>>,
    free: Vec<usize>,
    /// Requests finished during submit (refused before reaching the SSD), delivered by `poll`.
    finished: VecDeque<Completion>,
    in_flight: usize,
    /// The controller's CMB domain: buffers in it are used in place.
    cmb: Option<Domain>,
    path: Arc<DataPath>,
}

impl NvmeChannel {
    fn slot_addr(&self, slot: usize, off: usize) -> u64 {
        self.bounce.iova() + (slot * MAX_REQUEST + off) as u64
    }

    /// Check an LBA range before it reaches the SSD (the SSD would answer 0x80 too, but the
    /// bdev contract is `OutOfRange` from the backend).
    fn check_range(&self, lba: u64, blocks: u32) -> Result<usize, IoError> {
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= self.num_blocks && blocks > 0 => {
                Ok(blocks as usize * self.block_size)
            }
            _ => Err(IoError::OutOfRange),
        }
    }

    fn finish_now(&mut self, io: Io, result: Result<(), IoError>) {
        self.finished.push_back(Completion {
            tag: io.tag,
            result,
            buf: io.buf,
            lent: None,
        });
    }

    /// Queue the commands of a checked request in `slot`, its data at device address `base`
    /// (the bounce slot, or the buffer's own CMB address).
    fn issue(&mut self, slot: usize, op: Op, base: u64) {
        let queue = |s: &mut Self, sqe: Sqe, segs: &[Segment]| {
            if let Err(e) = s.qp.submit(sqe, segs, slot as u64) {
                // Room and sizes were checked: a refusal is the queue failing under this request
                // (its status says whether the host may retry) or else a driver bug. Count the
                // part as failed so the request still completes.
                let st = match e {
                    nvmfd_nvme::SubmitError::Failed(st) => st,
                    e => {
                        tracing::error!(error = %e, "nvme submit refused a checked command");
                        Status::new(0, 0x06)
                    }
                };
                let r = s.reqs[slot].as_mut().expect("slot in use");
                r.status.get_or_insert(st);
                r.parts_left -= 1;
            }
        };
        let (nsid, bs, max) = (self.nsid, self.block_size, self.max_blocks);
        super::nvme_split::commands(op, nsid, bs, max, |sqe, off, len| {
            if len > 0 {
                let seg = [Segment {
                    addr: base + off as u64,
                    len,
                }];
                queue(self, sqe, &seg);
            } else {
                queue(self, sqe, &[]);
            }
        });
    }
}

impl BdevChannel for NvmeChannel {
    fn submit(&mut self, io: Io) -> Result<(), Io> {
        if let Some(st) = self.qp.failed() {
            self.finish_now(
                io,
                Err(IoError::Nvme {
                    sct: st.sct(),
                    sc: st.sc(),
                    dnr: st.dnr(),
                }),
            );
            return Ok(());
        }
        let parts = super::nvme_split::parts(&io.op, self.max_blocks);
        if self.free.is_empty() || self.qp.room() < parts as usize {
            return Err(io);
        }
        // Checks that answer at once, before any memory is touched.
        let (len, read_len) = match io.op {
            Op::Read { lba, blocks } | Op::ReadLent { lba, blocks } => {
                match self.check_range(lba, blocks) {
                    Ok(l) => (l, l),
                    Err(e) => {
                        self.finish_now(io, Err(e));
                        return Ok(());
                    }
                }
            }
            Op::Write { lba, blocks, .. } => match self.check_range(lba, blocks) {
                Ok(l) => (l, 0),
                Err(e) => {
                    self.finish_now(io, Err(e));
                    return Ok(());
                }
            },
            Op::WriteZeroes { lba, blocks, .. } => {
                if !self.write_zeroes {
                    self.finish_now(io, Err(IoError::Unsupported));
                    return Ok(());
                }
                if let Err(e) = self.check_range(lba, blocks) {
                    self.finish_now(io, Err(e));
                    return Ok(());
                }
                (0, 0)
            }
            Op::Flush => (0, 0),
            Op::Deallocate { ranges } => {
                if !self.dsm {
                    self.finish_now(io, Err(IoError::Unsupported));
                    return Ok(());
                }
                if ranges == 0 || ranges > 256 {
                    self.finish_now(io, Err(IoError::BufferTooSmall));
                    return Ok(());
                }
                (usize::from(ranges) * DsmRange::SIZE, 0)
            }
        };
        // A buffer in this SSD's CMB is used in place: its controller address goes in the PRPs.
        // So is a host buffer with an IOVA: its region was mapped in the driver's one VFIO
        // container (every controller's) when it was made, or when the first controller came
        // up (`IovaSpace`), never per I/O.
        let direct = match (self.cmb, io.buf.domain()) {
            (Some(d), b) if b == d => io.buf.device_addr(),
            (_, Domain::HostMemory) => io.buf.device_addr(),
            _ => None,
        };
        if (direct.is_none() && len > MAX_REQUEST) || len > io.buf.capacity() {
            let e = if len > io.buf.capacity() {
                IoError::BufferTooSmall
            } else {
                IoError::Unsupported
            };
            self.finish_now(io, Err(e));
            return Ok(());
        }
        let slot = self.free.pop().expect("checked non-empty");
        let op = io.op;
        let base = match direct {
            Some(addr) => {
                self.path.direct.fetch_add(1, Ordering::Relaxed);
                addr
            }
            None => {
                if len > 0 && self.path.bounced.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(
                        bdev = %self.name,
                        len,
                        "I/O with a buffer the SSD cannot reach (no IOVA: a buffer made past the \
                         pool's cap, or its region could not be mapped): copied through the \
                         driver's own DMA memory (logged once per bdev; see the bounce count)"
                    );
                }
                if matches!(op, Op::Write { .. } | Op::Deallocate { .. }) {
                    self.bounce
                        .write(slot * MAX_REQUEST, &io.buf.as_slice()[..len]);
                }
                self.slot_addr(slot, 0)
            }
        };
        self.reqs[slot] = Some(Request {
            io,
            parts_left: parts,
            status: None,
            read_len: if direct.is_some() { 0 } else { read_len },
            dma_len: if direct.is_some() { len } else { 0 },
            leak: false,
        });
        self.in_flight += 1;
        self.issue(slot, op, base);
        if self.reqs[slot].as_ref().is_some_and(|r| r.parts_left == 0) {
            // Every part was refused (a driver bug, logged in `issue`): complete it now.
            let r = self.reqs[slot].take().expect("slot in use");
            self.free.push(slot);
            self.in_flight -= 1;
            let s = r.status.unwrap_or(Status::new(0, 0x06));
            self.finish_now(
                r.io,
                Err(IoError::Nvme {
                    sct: s.sct(),
                    sc: s.sc(),
                    dnr: s.dnr(),
                }),
            );
        }
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.finished.pop_front() {
            done(c);
            n += 1;
        }
        let reqs = &mut self.reqs;
        let bounce = &self.bounce;
        let free = &mut self.free;
        let in_flight = &mut self.in_flight;
        let (mut leaked, mut leaked_bytes) = (0u64, 0u64);
        self.qp.poll(&mut |tag, cqe: Cqe, fate| {
            let slot = tag as usize;
            let Some(r) = reqs.get_mut(slot).and_then(|r| r.as_mut()) else {
                return;
            };
            let st = cqe.status();
            if !st.is_success() {
                r.status.get_or_insert(st);
            }
            r.leak |= fate == BufferFate::Leak;
            r.parts_left -= 1;
            if r.parts_left > 0 {
                return;
            }
            let mut r = reqs[slot].take().expect("slot in use");
            // Bounced data never exposed the IoBuf to the SSD (the bounce slot is never used
            // again: the dead controller's queue refuses every new command before it reaches
            // a slot); a buffer the SSD reaches by address is leaked.
            if r.leak && r.dma_len > 0 {
                leaked += 1;
                leaked_bytes += leak_buffer(&mut r.io.buf) as u64;
            }
            free.push(slot);
            *in_flight -= 1;
            let result = match r.status {
                None => {
                    if r.read_len > 0 {
                        bounce.read(
                            slot * MAX_REQUEST,
                            &mut r.io.buf.as_mut_slice()[..r.read_len],
                        );
                    }
                    Ok(())
                }
                Some(s) => Err(IoError::Nvme {
                    sct: s.sct(),
                    sc: s.sc(),
                    dnr: s.dnr(),
                }),
            };
            done(Completion {
                tag: r.io.tag,
                result,
                buf: r.io.buf,
                lent: None,
            });
            n += 1;
        });
        if leaked > 0 {
            self.qp.controller().record_leak(leaked, leaked_bytes);
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.finished.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmfd_p2p::mem::BufPool;

    /// A leaked buffer never comes back to its pool: the completion carries a stand-in the pool
    /// does not keep, and the pool's next buffer is another slice.
    #[test]
    fn a_leaked_buffer_is_never_reused() {
        let mut pool = BufPool::new(8192, 1, 65536, 1, 1);
        let mut small = pool.get(4096);
        let addr = small.as_ptr() as usize;
        assert_eq!(leak_buffer(&mut small), 8192);
        assert_ne!(
            small.as_ptr() as usize,
            addr,
            "the completion carries another buffer"
        );
        assert_eq!(small.capacity(), ALIGN);
        pool.put(small);
        assert_eq!(
            pool.in_use(),
            1,
            "the leaked buffer still counts as out of the pool"
        );
        let next = pool.get(4096);
        assert_ne!(
            next.as_ptr() as usize,
            addr,
            "the leaked slice is not handed out again"
        );

        let mut large = pool.get(65536);
        assert_eq!(leak_buffer(&mut large), 65536);
        pool.put(large);
        assert_eq!(
            pool.large_made(),
            1,
            "the leaked large buffer keeps its place under the cap"
        );
        assert!(pool.try_get(65536).is_none(), "and is not lent again");
    }
}
