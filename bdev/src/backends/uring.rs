//! `uring`: a regular file or a block device, driven through one io_uring per channel.
//!
//! The file is opened once (O_DIRECT when the filesystem allows it) and shared by every channel.
//! Each channel owns a ring of [`QUEUE_DEPTH`] entries and a slab of as many slots; an SQE's
//! `user_data` is the index of the slot that holds its [`Io`], so the buffer the kernel reads or
//! writes stays owned by the channel until the completion is reaped. Every slot has at most one SQE
//! in the ring or the kernel at a time, which bounds the submission queue (never overflows) and the
//! completion queue (twice as deep) alike. Nothing is allocated per I/O.
//!
//! Multi-step I/Os run as a little state machine in their slot: a short read or write resubmits the
//! remainder, a Deallocate punches its ranges one after the other, and zeroing falls back to writing
//! a preallocated zero buffer when the filesystem refuses `fallocate` with EOPNOTSUPP.
//!
//! Submission is batched: `submit` only queues SQEs (it enters the kernel early only once
//! [`SUBMIT_BATCH`] are waiting) and `poll` submits whatever is queued before reaping completions.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};

use super::{dsm_range, CompletionRing, Geometry};
use crate::{Bdev, BdevChannel, BdevInfo, Completion, Io, IoError, Op};
use nvmfd_p2p::mem::IoBuf;

/// Ring entries and slab slots per channel.
pub(crate) const QUEUE_DEPTH: usize = 256;
/// Largest read or write issued in one SQE; a bigger transfer continues in further SQEs.
const MAX_CHUNK: usize = 1 << 30;
/// Size of the zero buffer that backs WriteZeroes/Deallocate when `fallocate` is not supported.
const ZERO_BUF_LEN: usize = 1 << 20;
/// `submit` enters the kernel itself once this many SQEs wait (otherwise `poll` does).
const SUBMIT_BATCH: usize = 32;
/// Block size of a regular file when the config gives none.
const DEFAULT_FILE_BLOCK_SIZE: u32 = 4096;

/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)`; the encoding of `_IOR` differs on a few
/// architectures (libc does not export this request).
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const BLKGETSIZE64: u64 = 0x4008_1272;
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const BLKGETSIZE64: u64 = 0x8008_1272;

/// A file or block device behind io_uring.
pub struct Uring {
    info: BdevInfo,
    geo: Geometry,
    file: Arc<File>,
    path: PathBuf,
    direct: bool,
}

impl Uring {
    /// Open `path` (a regular file or a block device) read-write. The block size defaults to the
    /// device's logical block size, or 4096 for a regular file; the size must be a multiple of it.
    pub fn open(
        name: impl Into<String>,
        path: impl AsRef<Path>,
        block_size: Option<u32>,
    ) -> io::Result<Self> {
        Self::open_with(name.into(), path.as_ref(), block_size, &mut open_rw)
    }

    /// `open`, with the function that opens the file (`direct` asks for O_DIRECT) passed in.
    fn open_with(
        name: String,
        path: &Path,
        block_size: Option<u32>,
        opener: &mut dyn FnMut(&Path, bool) -> io::Result<File>,
    ) -> io::Result<Self> {
        let ctx = |e: io::Error, what: &str| {
            io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
        };
        let (file, direct) = match opener(path, true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    bdev = %name,
                    path = %path.display(),
                    "O_DIRECT refused by the filesystem, falling back to buffered I/O"
                );
                (opener(path, false).map_err(|e| ctx(e, "open"))?, false)
            }
            Err(e) => return Err(ctx(e, "open")),
        };
        let meta = file.metadata().map_err(|e| ctx(e, "stat"))?;
        let ft = meta.file_type();
        let (size, block_size, regular) = if ft.is_block_device() {
            let size = blk_size_bytes(&file).map_err(|e| ctx(e, "BLKGETSIZE64"))?;
            let logical = blk_logical_block_size(&file).map_err(|e| ctx(e, "BLKSSZGET"))?;
            let bs = block_size.unwrap_or(logical);
            if bs < logical {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: block size {bs} is smaller than the device's logical block size {logical}",
                        path.display()
                    ),
                ));
            }
            (size, bs, false)
        } else if ft.is_file() {
            (
                meta.len(),
                block_size.unwrap_or(DEFAULT_FILE_BLOCK_SIZE),
                true,
            )
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file or a block device", path.display()),
            ));
        };
        let geo = Geometry::new(&path.display().to_string(), size, block_size)?;
        Ok(Uring {
            info: BdevInfo {
                name,
                kind: "uring",
                block_size,
                num_blocks: geo.num_blocks,
                // A punched hole in a regular file reads back as zeroes; a discard on a block
                // device may not.
                deallocate_zeroes: regular,
                volatile_cache: true,
            },
            geo,
            file: Arc::new(file),
            path: path.to_path_buf(),
            direct,
        })
    }

    /// Whether the file is open with O_DIRECT (false after the buffered fallback).
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_rw(path: &Path, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

fn blk_size_bytes(f: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 stores one u64 through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn blk_logical_block_size(f: &File) -> io::Result<u32> {
    let mut bs: libc::c_int = 0;
    // SAFETY: BLKSSZGET stores one int through the pointer, which points at a live local.
    let rc = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            libc::BLKSSZGET as _,
            &mut bs as *mut libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(bs).map_err(|_| io::Error::other(format!("bad logical block size {bs}")))
}

impl Bdev for Uring {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn channel(&self) -> io::Result<Box<dyn BdevChannel>> {
        Ok(Box::new(self.new_channel()?))
    }
}

impl Uring {
    fn new_channel(&self) -> io::Result<UringChannel> {
        let ring = IoUring::new(QUEUE_DEPTH as u32).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: creating an io_uring: {e}", self.path.display()),
            )
        })?;
        let slots = (0..QUEUE_DEPTH)
            .map(|_| Slot {
                io: None,
                task: Task::Idle,
            })
            .collect();
        Ok(UringChannel {
            ring,
            fd: self.file.as_raw_fd(),
            _file: Arc::clone(&self.file),
            geo: self.geo,
            name: self.info.name.clone(),
            dealloc_must_zero: self.info.deallocate_zeroes,
            slots,
            free: (0..QUEUE_DEPTH).rev().collect(),
            ready: CompletionRing::new(QUEUE_DEPTH),
            zeroes: IoBuf::new(ZERO_BUF_LEN.max(self.geo.block_size as usize)),
            punch_ok: true,
            zero_range_ok: true,
            submit_error_logged: false,
            max_chunk: MAX_CHUNK,
        })
    }
}

/// How the current extent of a zeroing task is being zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroVia {
    Fallocate,
    Writes,
}

/// What a slot is doing; the state of a multi-step I/O.
#[derive(Debug, Clone, Copy)]
enum Task {
    Idle,
    /// Read or write `len` bytes at byte `off` of the device through `ptr` (the Io's buffer);
    /// `done` bytes are finished.
    /// `fua`: each write SQE carries RWF_DSYNC.
    Rw {
        write: bool,
        fua: bool,
        ptr: *mut u8,
        off: u64,
        len: usize,
        done: usize,
    },
    Flush,
    /// Zero bytes `pos..end` of the device; a Deallocate then moves on to DSM range `next` of
    /// `ranges`. `via` says how the SQE in flight zeroes. `fua`: once everything is zeroed, the
    /// task becomes a `Flush` (fallocate has no RWF_DSYNC; its extent changes need fdatasync).
    Zero {
        fua: bool,
        dealloc: bool,
        next: u16,
        ranges: u16,
        pos: u64,
        end: u64,
        via: ZeroVia,
    },
}

struct Slot {
    io: Option<Io>,
    task: Task,
}

/// What the completion of a slot's SQE leads to.
enum Outcome {
    /// Another SQE was queued for the slot.
    Continue,
    /// The I/O is finished.
    Finished(Result<(), IoError>),
    /// The completion matched no busy slot (a bug); ignored.
    Stray,
}

struct UringChannel {
    ring: IoUring,
    fd: RawFd,
    /// Keeps `fd` open for as long as this channel lives.
    _file: Arc<File>,
    geo: Geometry,
    name: String,
    /// Deallocated ranges must read back as zeroes (regular files), so a Deallocate that cannot
    /// punch holes writes zeroes instead of doing nothing.
    dealloc_must_zero: bool,
    slots: Vec<Slot>,
    /// Indices of idle slots.
    free: Vec<usize>,
    /// I/Os finished without the kernel (refused requests, empty transfers).
    ready: CompletionRing,
    /// Zeroes written by the fallback of WriteZeroes/Deallocate; the kernel only reads it.
    zeroes: IoBuf,
    /// `fallocate(PUNCH_HOLE)` / `fallocate(ZERO_RANGE)` have not failed with EOPNOTSUPP yet.
    punch_ok: bool,
    zero_range_ok: bool,
    submit_error_logged: bool,
    /// Largest read or write per SQE ([`MAX_CHUNK`]; tests lower it to exercise continuations).
    max_chunk: usize,
}

impl UringChannel {
    fn busy(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Check a request and turn it into the first state of its task.
    fn plan(&self, op: Op, buf: &mut IoBuf) -> Result<Task, IoError> {
        Ok(match op {
            Op::Read { lba, blocks }
            | Op::ReadLent { lba, blocks }
            | Op::Write { lba, blocks, .. } => {
                let (off, len) = self.geo.transfer(lba, blocks, buf)?;
                Task::Rw {
                    write: matches!(op, Op::Write { .. }),
                    fua: matches!(op, Op::Write { fua: true, .. }),
                    ptr: buf.as_mut_ptr(),
                    off,
                    len,
                    done: 0,
                }
            }
            Op::Flush => Task::Flush,
            Op::WriteZeroes { lba, blocks, fua } => {
                let (off, len) = self.geo.extent(lba, u64::from(blocks))?;
                Task::Zero {
                    fua,
                    dealloc: false,
                    next: 0,
                    ranges: 0,
                    pos: off,
                    end: off + len,
                    via: ZeroVia::Fallocate,
                }
            }
            Op::Deallocate { ranges } => {
                self.geo.check_dsm(ranges, buf)?;
                Task::Zero {
                    fua: false,
                    dealloc: true,
                    next: 0,
                    ranges,
                    pos: 0,
                    end: 0,
                    via: ZeroVia::Fallocate,
                }
            }
        })
    }

    /// The next SQE of slot `idx`'s task, or its result if nothing is left to do. Updates the
    /// slot's state to describe that SQE.
    fn next_sqe(&mut self, idx: usize) -> Result<squeue::Entry, Result<(), IoError>> {
        let fd = types::Fd(self.fd);
        let slot = &mut self.slots[idx];
        match slot.task {
            Task::Idle => Err(Err(IoError::Media(libc::EINVAL))),
            Task::Rw {
                write,
                fua,
                ptr,
                off,
                len,
                done,
            } => {
                if done >= len {
                    return Err(Ok(()));
                }
                // At most max_chunk (<= MAX_CHUNK < u32::MAX), so the cast is lossless.
                let n = (len - done).min(self.max_chunk) as u32;
                // The pointer stays inside the buffer: done < len <= capacity.
                let p = ptr.wrapping_add(done);
                let pos = off + done as u64;
                // FUA: RWF_DSYNC makes this write durable before it completes, as if the file
                // were open with O_DSYNC (pwritev2(2)): with O_DIRECT the kernel sends the
                // device a FUA write or a cache flush, and syncs any metadata (allocation) the
                // data needs to be found again. Only this write pays, not the whole file.
                let flags = if fua { libc::RWF_DSYNC } else { 0 };
                Ok(if write {
                    opcode::Write::new(fd, p, n)
                        .offset(pos)
                        .rw_flags(flags)
                        .build()
                } else {
                    opcode::Read::new(fd, p, n).offset(pos).build()
                })
            }
            Task::Flush => Ok(opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
            Task::Zero {
                fua,
                dealloc,
                mut next,
                ranges,
                mut pos,
                mut end,
                via: _,
            } => loop {
                if pos >= end {
                    if !dealloc || next >= ranges {
                        if fua {
                            // Everything is zeroed; make it durable before completing.
                            slot.task = Task::Flush;
                            return Ok(opcode::Fsync::new(fd)
                                .flags(types::FsyncFlags::DATASYNC)
                                .build());
                        }
                        slot.task = Task::Idle;
                        return Err(Ok(()));
                    }
                    let range = slot.io.as_ref().and_then(|io| dsm_range(&io.buf, next));
                    let Some(r) = range else {
                        return Err(Err(IoError::BufferTooSmall));
                    };
                    next += 1;
                    let (off, len) = match self.geo.extent(r.lba, u64::from(r.blocks)) {
                        Ok(e) => e,
                        Err(e) => return Err(Err(e)),
                    };
                    pos = off;
                    end = off + len;
                    continue;
                }
                let via = if dealloc && self.punch_ok || !dealloc && self.zero_range_ok {
                    ZeroVia::Fallocate
                } else if !dealloc || self.dealloc_must_zero {
                    ZeroVia::Writes
                } else {
                    // Deallocation is advisory where it need not read back zeroes.
                    pos = end;
                    continue;
                };
                slot.task = Task::Zero {
                    fua,
                    dealloc,
                    next,
                    ranges,
                    pos,
                    end,
                    via,
                };
                return Ok(match via {
                    ZeroVia::Fallocate => {
                        let mode = if dealloc {
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                        } else {
                            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                        };
                        opcode::Fallocate::new(fd, end - pos)
                            .offset(pos)
                            .mode(mode)
                            .build()
                    }
                    ZeroVia::Writes => {
                        // At most ZERO_BUF_LEN bytes, a multiple of the block size.
                        let n = (end - pos).min(self.zeroes.capacity() as u64) as u32;
                        opcode::Write::new(fd, self.zeroes.as_slice().as_ptr(), n)
                            .offset(pos)
                            .build()
                    }
                });
            },
        }
    }

    /// Queue the next SQE of slot `idx`. `None`: queued; `Some(result)`: the task is finished
    /// (nothing left to do, or the SQE could not be queued).
    fn advance(&mut self, idx: usize) -> Option<Result<(), IoError>> {
        let entry = match self.next_sqe(idx) {
            Ok(e) => e.user_data(idx as u64),
            Err(result) => return Some(result),
        };
        // Cannot fail: every busy slot has at most one SQE queued and there are as many slots as
        // SQ entries. Should the kernel be slow to consume them anyway, enter it once.
        if self.ring.submission().is_full() {
            self.flush();
        }
        // SAFETY: the SQE points into memory that outlives the operation: a Read/Write into the
        // slot's IoBuf, which the slot owns until this SQE's completion is reaped (`release`), or a
        // zero-buffer Write from `self.zeroes`, which lives as long as the channel, and Drop waits
        // for every outstanding completion (or leaks the buffers) before anything is freed. Fsync
        // and Fallocate carry no pointers. The fd stays open through `_file`.
        match unsafe { self.ring.submission().push(&entry) } {
            Ok(()) => None,
            Err(_) => {
                tracing::error!(bdev = %self.name, "io_uring submission queue full");
                Some(Err(IoError::Media(libc::EAGAIN)))
            }
        }
    }

    /// Enter the kernel if SQEs are waiting. Never waits for completions.
    fn flush(&mut self) {
        if self.ring.submission().is_empty() {
            return;
        }
        match self.ring.submit() {
            Ok(_) => self.submit_error_logged = false,
            Err(e) => match e.raw_os_error() {
                // Transient; the SQEs stay queued and the next poll tries again.
                Some(libc::EAGAIN | libc::EBUSY | libc::EINTR) => {}
                _ => {
                    if !self.submit_error_logged {
                        tracing::error!(bdev = %self.name, error = %e, "io_uring submit failed");
                        self.submit_error_logged = true;
                    }
                }
            },
        }
    }

    /// Apply the completion `res` of slot `idx`'s SQE.
    fn on_cqe(&mut self, idx: usize, res: i32) -> Outcome {
        let Some(slot) = self.slots.get_mut(idx) else {
            return Outcome::Stray;
        };
        if slot.io.is_none() {
            return Outcome::Stray;
        }
        match &mut slot.task {
            Task::Idle => return Outcome::Stray,
            Task::Flush => {
                return Outcome::Finished(if res < 0 {
                    Err(IoError::Media(-res))
                } else {
                    Ok(())
                })
            }
            Task::Rw { done, .. } => match usize::try_from(res) {
                Err(_) => return Outcome::Finished(Err(IoError::Media(-res))),
                // End of file inside the device: the file shrank under us.
                Ok(0) => return Outcome::Finished(Err(IoError::Media(libc::EIO))),
                Ok(n) => *done += n,
            },
            Task::Zero {
                pos,
                end,
                via,
                dealloc,
                ..
            } => match *via {
                ZeroVia::Fallocate if res == 0 => *pos = *end,
                ZeroVia::Fallocate if res == -libc::EOPNOTSUPP => {
                    let dealloc = *dealloc;
                    tracing::warn!(
                        bdev = %self.name,
                        "fallocate({}) not supported here, {}",
                        if dealloc { "PUNCH_HOLE" } else { "ZERO_RANGE" },
                        if dealloc && !self.dealloc_must_zero {
                            "deallocate becomes a no-op"
                        } else {
                            "writing zeroes instead"
                        }
                    );
                    if dealloc {
                        self.punch_ok = false;
                    } else {
                        self.zero_range_ok = false;
                    }
                }
                _ if res < 0 => return Outcome::Finished(Err(IoError::Media(-res))),
                ZeroVia::Fallocate => *pos = *end,
                ZeroVia::Writes if res == 0 => {
                    return Outcome::Finished(Err(IoError::Media(libc::EIO)))
                }
                ZeroVia::Writes => *pos += res as u64,
            },
        }
        match self.advance(idx) {
            None => Outcome::Continue,
            Some(result) => Outcome::Finished(result),
        }
    }

    /// Free slot `idx` and return its I/O.
    fn release(&mut self, idx: usize) -> Option<Io> {
        let slot = self.slots.get_mut(idx)?;
        slot.task = Task::Idle;
        let io = slot.io.take()?;
        self.free.push(idx);
        Some(io)
    }
}

impl BdevChannel for UringChannel {
    fn submit(&mut self, io: Io) -> Result<(), Io> {
        if self.busy() + self.ready.len() >= QUEUE_DEPTH {
            return Err(io);
        }
        let Io { tag, op, mut buf } = io;
        let task = match self.plan(op, &mut buf) {
            Ok(task) => task,
            Err(e) => {
                self.ready.push(Completion {
                    tag,
                    result: Err(e),
                    buf,
                    lent: None,
                });
                return Ok(());
            }
        };
        let Some(idx) = self.free.pop() else {
            return Err(Io { tag, op, buf });
        };
        let slot = &mut self.slots[idx];
        slot.io = Some(Io { tag, op, buf });
        slot.task = task;
        match self.advance(idx) {
            None => {
                if self.ring.submission().len() >= SUBMIT_BATCH {
                    self.flush();
                }
            }
            Some(result) => {
                if let Some(Io { tag, buf, .. }) = self.release(idx) {
                    self.ready.push(Completion {
                        tag,
                        result,
                        buf,
                        lent: None,
                    });
                }
            }
        }
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = self.ready.drain(done);
        self.flush();
        let mut batch = [(0u64, 0i32); 32];
        loop {
            let mut k = 0;
            for cqe in self.ring.completion() {
                batch[k] = (cqe.user_data(), cqe.result());
                k += 1;
                if k == batch.len() {
                    break;
                }
            }
            if k == 0 {
                break;
            }
            for &(user_data, res) in &batch[..k] {
                let idx = user_data as usize;
                match self.on_cqe(idx, res) {
                    Outcome::Continue => {}
                    Outcome::Finished(result) => {
                        if let Some(Io { tag, buf, .. }) = self.release(idx) {
                            done(Completion {
                                tag,
                                result,
                                buf,
                                lent: None,
                            });
                            n += 1;
                        }
                    }
                    Outcome::Stray => {
                        tracing::error!(bdev = %self.name, user_data, res, "stray io_uring completion");
                    }
                }
            }
        }
        // Continuations of multi-step I/Os queued above.
        self.flush();
        n
    }

    fn in_flight(&self) -> usize {
        self.busy() + self.ready.len()
    }
}

impl Drop for UringChannel {
    /// The kernel may still be using slot buffers and the zero buffer: wait for every outstanding
    /// SQE to complete before they are freed.
    fn drop(&mut self) {
        let mut outstanding = self.busy();
        while outstanding > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                tracing::error!(
                    bdev = %self.name,
                    error = %e,
                    outstanding,
                    "cannot wait for io_uring completions; leaking their buffers"
                );
                for slot in &mut self.slots {
                    if let Some(io) = slot.io.take() {
                        std::mem::forget(io);
                    }
                }
                std::mem::forget(std::mem::replace(&mut self.zeroes, IoBuf::new(1)));
                return;
            }
            let mut cq = self.ring.completion();
            for cqe in &mut cq {
                if let Some(slot) = self.slots.get_mut(cqe.user_data() as usize) {
                    if slot.io.take().is_some() {
                        slot.task = Task::Idle;
                        outstanding -= 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_buffered_when_o_direct_is_refused() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("nvmfd-bdev-fallback-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 8192]).expect("create file");
        let mut asked = Vec::new();
        let mut opener = |p: &Path, direct: bool| {
            asked.push(direct);
            if direct {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                open_rw(p, false)
            }
        };
        let u = Uring::open_with("fb".into(), &path, None, &mut opener);
        let _ = std::fs::remove_file(&path);
        let u = u.expect("buffered fallback");
        assert_eq!(asked, [true, false]);
        assert!(!u.direct_io());
        assert_eq!(u.info().num_blocks, 2);

        // Any other error is not retried.
        let mut opener = |_: &Path, _: bool| Err(io::Error::from_raw_os_error(libc::EACCES));
        let e = Uring::open_with("x".into(), &path, None, &mut opener)
            .err()
            .expect("EACCES is an error");
        assert_eq!(e.raw_os_error(), None);
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    }

    fn temp_file(dir: &Path, tag: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(format!("nvmfd-bdev-unit-{}-{tag}.img", std::process::id()));
        std::fs::write(&path, data).expect("create file");
        path
    }

    fn run(ch: &mut UringChannel, op: Op, buf: IoBuf) -> Completion {
        assert_eq!(ch.in_flight(), 0);
        ch.submit(Io { tag: 1, op, buf }).expect("room");
        let mut out = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while out.is_none() {
            ch.poll(&mut |c| out = Some(c));
            assert!(std::time::Instant::now() < deadline, "timed out");
        }
        out.expect("completion")
    }

    fn dsm(lba: u64, blocks: u32) -> IoBuf {
        let mut buf = IoBuf::new(16);
        let r = crate::DsmRange {
            attributes: 0,
            blocks,
            lba,
        };
        buf.as_mut_slice()[..16].copy_from_slice(&r.encode());
        buf
    }

    /// A transfer split into several SQEs lands at the right offsets (the continuation path that a
    /// short read or write also takes).
    #[test]
    fn transfers_continue_in_chunks() {
        let path = temp_file(&std::env::temp_dir(), "chunks", &[0u8; 64 * 512]);
        let u = Uring::open("c", &path, Some(512)).expect("open");
        let mut ch = u.new_channel().expect("channel");
        ch.max_chunk = 1024;
        let mut buf = IoBuf::new(40 * 512);
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = (i / 512) as u8 + 1;
        }
        let c = run(
            &mut ch,
            Op::Write {
                lba: 3,
                blocks: 39,
                fua: false,
            },
            buf,
        );
        assert_eq!(c.result, Ok(()));
        let file = std::fs::read(&path).expect("read file");
        let _ = std::fs::remove_file(&path);
        for (i, &b) in file.iter().enumerate() {
            let lba = i / 512;
            let want = if (3..42).contains(&lba) {
                lba as u8 - 2
            } else {
                0
            };
            assert_eq!(b, want, "byte {i}");
        }
        ch.max_chunk = 1536;
        let c = run(
            &mut ch,
            Op::Read { lba: 2, blocks: 41 },
            IoBuf::new(41 * 512),
        );
        assert_eq!(c.result, Ok(()));
        assert!(c.buf.as_slice()[..41 * 512] == file[2 * 512..43 * 512]);
    }

    /// Zeroing takes the fallocate path where the filesystem has it and the zero-buffer write path
    /// where it answers EOPNOTSUPP (tmpfs has no ZERO_RANGE); a Deallocate that need not read back
    /// zeroes is skipped when holes cannot be punched.
    #[test]
    fn zeroing_paths() {
        let shm = Path::new("/dev/shm");
        let mut dirs = vec![(std::env::temp_dir(), true)];
        if shm.is_dir() {
            dirs.push((shm.to_path_buf(), false));
        }
        for (dir, has_zero_range) in dirs {
            let path = temp_file(&dir, "paths", &[0x77u8; 64 * 4096]);
            let u = Uring::open("z", &path, None);
            let _ = std::fs::remove_file(&path);
            let u = u.expect("open");
            let mut ch = u.new_channel().expect("channel");
            let c = run(
                &mut ch,
                Op::WriteZeroes {
                    lba: 1,
                    blocks: 2,
                    fua: false,
                },
                IoBuf::new(0),
            );
            assert_eq!(c.result, Ok(()));
            assert_eq!(ch.zero_range_ok, has_zero_range, "{}", dir.display());
            assert!(ch.punch_ok);
            let c = run(&mut ch, Op::Deallocate { ranges: 1 }, dsm(10, 1));
            assert_eq!(c.result, Ok(()));
            assert!(ch.punch_ok, "{}", dir.display());

            // Pretend holes cannot be punched: regular files then write zeroes...
            ch.punch_ok = false;
            let c = run(&mut ch, Op::Deallocate { ranges: 1 }, dsm(20, 3));
            assert_eq!(c.result, Ok(()));
            // ...and a device whose deallocated blocks need not read zero skips the range: the
            // I/O finishes in `submit`, without the kernel.
            ch.dealloc_must_zero = false;
            ch.submit(Io {
                tag: 9,
                op: Op::Deallocate { ranges: 1 },
                buf: dsm(30, 1),
            })
            .expect("room");
            assert_eq!((ch.busy(), ch.ready.len()), (0, 1));
            let mut got = Vec::new();
            assert_eq!(ch.poll(&mut |c| got.push((c.tag, c.result))), 1);
            assert_eq!(got, [(9, Ok(()))]);
            assert_eq!(run(&mut ch, Op::Flush, IoBuf::new(0)).result, Ok(()));

            let c = run(
                &mut ch,
                Op::Read { lba: 0, blocks: 64 },
                IoBuf::new(64 * 4096),
            );
            assert_eq!(c.result, Ok(()));
            for lba in 0..64usize {
                let zero = matches!(lba, 1 | 2 | 10 | 20 | 21 | 22);
                let want = if zero { 0 } else { 0x77 };
                let got = &c.buf.as_slice()[lba * 4096..(lba + 1) * 4096];
                assert!(
                    got.iter().all(|&b| b == want),
                    "{} lba {lba}",
                    dir.display()
                );
            }
        }
    }
}
