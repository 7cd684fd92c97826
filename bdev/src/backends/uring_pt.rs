//! `uring` with `passthrough: true`: NVMe commands go as they are to a namespace's generic
//! character device (`/dev/ngXnY`, Linux 5.19+) through io_uring's `IORING_OP_URING_CMD`, on a
//! ring of 128-byte SQEs (the 80-byte command area holds a `struct nvme_uring_cmd`) and 32-byte
//! CQEs (Linux 6.1's nvme driver refuses URING_CMD on a ring without both: EOPNOTSUPP). The kernel's
//! nvme driver builds the PRPs; the SSD's own status comes back in the CQE (`res` > 0) and goes
//! to the host unchanged ([`IoError::Nvme`]). Unlike the block device path there is no block
//! layer in between: no merging, splitting or retrying.
//!
//! Geometry and capabilities come from Identify (Namespace and Controller) through the
//! `NVME_IOCTL_ADMIN_CMD` ioctl at open. A request larger than the controller's MDTS is split
//! into several commands; it completes when all have, with the first failure. Each channel owns
//! one ring and a slab of request slots: an SQE's `user_data` is its slot, whose [`Io`] (and so
//! the buffer the SSD reads or writes) stays owned by the channel until the last completion.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nvmfd_nvme::cmd::{Sqe, Status};
use nvmfd_nvme::ctrl::{parse_identify_ctrl, parse_identify_ns};
use nvmfd_nvme::regs::Cap;

use crate::{Bdev, BdevChannel, BdevInfo, Completion, DsmRange, Io, IoError, Op};

/// Request slots per channel (each may take several SQEs when split).
const REQUESTS: usize = 128;
/// Ring entries: room for every slot's commands in the common case (a request needs more only
/// when it is larger than MDTS; then `submit` waits for room).
const RING_DEPTH: u32 = 256;

/// `struct nvme_uring_cmd` / `struct nvme_passthru_cmd` (include/uapi/linux/nvme_ioctl.h): the
/// same 72 bytes, the last field is `rsvd2` in the first and `result` in the second.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct NvmeCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

const _: () = assert!(std::mem::size_of::<NvmeCmd>() == 72);

/// `_IOWR('N', 0x80, struct nvme_uring_cmd)`.
const NVME_URING_CMD_IO: u32 = 0xC048_4E80;
/// `_IOWR('N', 0x41, struct nvme_admin_cmd)`.
const NVME_IOCTL_ADMIN_CMD: libc::c_ulong = 0xC048_4E41;
/// `_IO('N', 0x40)`: the namespace id of the device.
const NVME_IOCTL_ID: libc::c_ulong = 0x4E40;

impl NvmeCmd {
    /// The command of `sqe` (opcode, NSID, CDW10-15) with its data at `addr`, `len` bytes.
    fn from_sqe(sqe: &Sqe, addr: u64, len: u32) -> NvmeCmd {
        NvmeCmd {
            opcode: sqe.opcode(),
            nsid: sqe.dw[1],
            addr,
            data_len: len,
            cdw10: sqe.dw[10],
            cdw11: sqe.dw[11],
            cdw12: sqe.dw[12],
            cdw13: sqe.dw[13],
            cdw14: sqe.dw[14],
            cdw15: sqe.dw[15],
            ..NvmeCmd::default()
        }
    }

    fn to_bytes(self) -> [u8; 80] {
        let mut b = [0u8; 80];
        let d = [
            self.nsid,
            self.cdw2,
            self.cdw3,
            self.metadata as u32,
            (self.metadata >> 32) as u32,
            self.addr as u32,
            (self.addr >> 32) as u32,
            self.metadata_len,
            self.data_len,
            self.cdw10,
            self.cdw11,
            self.cdw12,
            self.cdw13,
            self.cdw14,
            self.cdw15,
            self.timeout_ms,
            self.result,
        ];
        b[0] = self.opcode;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.rsvd1.to_ne_bytes());
        for (i, v) in d.iter().enumerate() {
            b[4 + i * 4..8 + i * 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// An NVMe namespace through its generic character device.
pub struct UringPassthrough {
    info: BdevInfo,
    path: PathBuf,
    file: Arc<File>,
    nsid: u32,
    max_blocks: u32,
    write_zeroes: bool,
    dsm: bool,
}

/// Identify with CNS `cns` for `nsid` through the admin passthrough ioctl (start-up only).
fn identify(f: &File, cns: u32, nsid: u32) -> io::Result<Box<[u8; 4096]>> {
    let mut page = Box::new([0u8; 4096]);
    let mut cmd = NvmeCmd {
        opcode: 0x06,
        nsid,
        addr: page.as_mut_ptr() as u64,
        data_len: 4096,
        cdw10: cns,
        ..NvmeCmd::default()
    };
    // SAFETY: NVME_IOCTL_ADMIN_CMD reads and writes one `struct nvme_passthru_cmd` (NvmeCmd has
    // its layout) and lets the device write `data_len` bytes at `addr`, the live 4 KiB page.
    let rc = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            NVME_IOCTL_ADMIN_CMD,
            &mut cmd as *mut NvmeCmd,
        )
    };
    match rc {
        0 => Ok(page),
        r if r < 0 => Err(io::Error::last_os_error()),
        r => Err(io::Error::other(format!(
            "Identify CNS {cns} failed with NVMe status {}",
            Status(r as u16)
        ))),
    }
}

impl UringPassthrough {
    pub fn open(name: impl Into<String>, path: impl AsRef<Path>) -> io::Result<UringPassthrough> {
        let name = name.into();
        let path = path.as_ref().to_path_buf();
        let err = |what: &str, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("bdev {name}: {what} {}: {e}", path.display()),
            )
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| err("open", e))?;
        let ft = file.metadata().map_err(|e| err("stat", e))?.file_type();
        if !ft.is_char_device() {
            return Err(io::Error::other(format!(
                "bdev {name}: {} is not a character device: `passthrough: true` takes an NVMe \
                 generic device (/dev/ngXnY)",
                path.display()
            )));
        }
        // SAFETY: NVME_IOCTL_ID takes no argument and returns the namespace id (or -1).
        let nsid = unsafe { libc::ioctl(file.as_raw_fd(), NVME_IOCTL_ID) };
        if nsid <= 0 {
            return Err(err(
                "NVME_IOCTL_ID (is it an NVMe generic device?) on",
                io::Error::last_os_error(),
            ));
        }
        let nsid = nsid as u32;
        let ctrl = identify(&file, 1, 0).map_err(|e| err("Identify Controller on", e))?;
        // CAP is not readable from here; Cap(0) takes MPSMIN as 4 KiB (what the kernel driver
        // configures on x86), and MDTS 0 as the one-page-of-PRPs cap.
        let ci = parse_identify_ctrl(&ctrl, Cap(0));
        let ns = identify(&file, 0, nsid).map_err(|e| err("Identify Namespace on", e))?;
        let ni = parse_identify_ns(nsid, &ns).ok_or_else(|| {
            io::Error::other(format!(
                "bdev {name}: namespace {nsid} of {} is inactive or has an unsupported LBA format",
                path.display()
            ))
        })?;
        let max_blocks = (ci.max_transfer / ni.block_size as usize).clamp(1, 65536) as u32;
        Ok(UringPassthrough {
            info: BdevInfo {
                name,
                kind: "uring-passthrough",
                block_size: ni.block_size,
                num_blocks: ni.blocks,
                deallocate_zeroes: false,
                volatile_cache: ci.vwc,
            },
            path,
            file: Arc::new(file),
            nsid,
            max_blocks,
            write_zeroes: ci.write_zeroes(),
            dsm: ci.dsm(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Bdev for UringPassthrough {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn channel(&self) -> io::Result<Box<dyn BdevChannel>> {
        let ring: IoUring<squeue::Entry128, cqueue::Entry32> =
            IoUring::builder().build(RING_DEPTH).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "bdev {}: io_uring with 128-byte SQEs and 32-byte CQEs: {e}",
                        self.info.name
                    ),
                )
            })?;
        Ok(Box::new(PtChannel {
            ring,
            file: self.file.clone(),
            nsid: self.nsid,
            block_size: self.info.block_size as usize,
            num_blocks: self.info.num_blocks,
            max_blocks: self.max_blocks,
            write_zeroes: self.write_zeroes,
            dsm: self.dsm,
            reqs: (0..REQUESTS).map(|_| None).collect(),
            free: (0..REQUESTS).rev().collect(),
            finished: VecDeque::with_capacity(REQUESTS),
            queued: 0,
            in_flight: 0,
            warned: false,
        }))
    }
}

struct Request {
    io: Io,
    parts_left: u32,
    status: Option<Result<(), IoError>>,
}

struct PtChannel {
    ring: IoUring<squeue::Entry128, cqueue::Entry32>,
    file: Arc<File>,
    nsid: u32,
    block_size: usize,
    num_blocks: u64,
    max_blocks: u32,
    write_zeroes: bool,
    dsm: bool,
    reqs: Vec<Option<Request>>,
    free: Vec<usize>,
    finished: VecDeque<Completion>,
    /// SQEs pushed since the last `submit` syscall.
    queued: usize,
    in_flight: usize,
    /// A kernel-side failure (negative result) was logged on this channel.
    warned: bool,
}

impl PtChannel {
    fn finish_now(&mut self, io: Io, result: Result<(), IoError>) {
        self.finished.push_back(Completion {
            tag: io.tag,
            result,
            buf: io.buf,
            lent: None,
        });
    }

    fn check_range(&self, lba: u64, blocks: u32) -> Result<usize, IoError> {
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= self.num_blocks && blocks > 0 => {
                Ok(blocks as usize * self.block_size)
            }
            _ => Err(IoError::OutOfRange),
        }
    }

    /// What the request needs before anything is queued: its command count, or the answer.
    fn plan(&self, io: &Io) -> Result<u32, IoError> {
        let cap = io.buf.capacity();
        match io.op {
            Op::Read { lba, blocks }
            | Op::ReadLent { lba, blocks }
            | Op::Write { lba, blocks, .. } => {
                if self.check_range(lba, blocks)? > cap {
                    return Err(IoError::BufferTooSmall);
                }
                Ok(super::nvme_split::parts(&io.op, self.max_blocks))
            }
            Op::WriteZeroes { lba, blocks, .. } => {
                if !self.write_zeroes {
                    return Err(IoError::Unsupported);
                }
                self.check_range(lba, blocks)?;
                Ok(super::nvme_split::parts(&io.op, self.max_blocks))
            }
            Op::Flush => Ok(1),
            Op::Deallocate { ranges } => {
                if !self.dsm {
                    return Err(IoError::Unsupported);
                }
                if ranges == 0 || ranges > 256 || usize::from(ranges) * DsmRange::SIZE > cap {
                    return Err(IoError::BufferTooSmall);
                }
                Ok(1)
            }
        }
    }

    fn push(&mut self, slot: usize, sqe: &Sqe, addr: u64, len: usize) {
        let cmd = NvmeCmd::from_sqe(sqe, addr, len as u32);
        let entry = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), NVME_URING_CMD_IO)
            .cmd(cmd.to_bytes())
            .build()
            .user_data(slot as u64);
        // SAFETY: the data at `addr..addr + len` is the slot's IoBuf, which the slot owns until
        // the command's completion is reaped (`poll`), and the file stays open (Arc) as long as
        // the channel; the command bytes are copied into the SQE.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        pushed.expect("room checked before queueing");
        self.queued += 1;
    }

    /// Queue the commands of a planned request held in `slot`.
    fn issue(&mut self, slot: usize) {
        let (op, base) = {
            let r = self.reqs[slot].as_mut().expect("slot in use");
            (r.io.op, r.io.buf.as_mut_ptr() as u64)
        };
        let (nsid, bs, max) = (self.nsid, self.block_size, self.max_blocks);
        super::nvme_split::commands(op, nsid, bs, max, |sqe, off, len| {
            let addr = if len > 0 { base + off as u64 } else { 0 };
            self.push(slot, &sqe, addr, len);
        });
    }

    fn flush(&mut self) {
        if self.queued == 0 {
            return;
        }
        match self.ring.submit() {
            Ok(n) => self.queued = self.queued.saturating_sub(n),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => tracing::warn!(error = %e, "io_uring submit (NVMe passthrough) failed"),
        }
    }
}

/// A passthrough CQE's result: 0 success, > 0 the NVMe status field (SCT, SC, CRD, More, DNR as
/// in the CQE without the phase tag), < 0 an errno from the kernel.
fn result_of(res: i32) -> Result<(), IoError> {
    match res {
        0 => Ok(()),
        r if r > 0 => {
            let s = Status(r as u16);
            Err(IoError::Nvme {
                sct: s.sct(),
                sc: s.sc(),
                dnr: s.dnr(),
            })
        }
        r => Err(IoError::Media(-r)),
    }
}

impl BdevChannel for PtChannel {
    fn submit(&mut self, io: Io) -> Result<(), Io> {
        let parts = match self.plan(&io) {
            Ok(p) => p,
            Err(e) => {
                self.finish_now(io, Err(e));
                return Ok(());
            }
        };
        let room = {
            let mut sq = self.ring.submission();
            sq.sync();
            sq.capacity() - sq.len()
        };
        if self.free.is_empty() || room < parts as usize {
            return Err(io);
        }
        let slot = self.free.pop().expect("checked non-empty");
        self.reqs[slot] = Some(Request {
            io,
            parts_left: parts,
            status: None,
        });
        self.in_flight += 1;
        self.issue(slot);
        if self.queued >= 32 {
            self.flush();
        }
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.finished.pop_front() {
            done(c);
            n += 1;
        }
        self.flush();
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let slot = cqe.user_data() as usize;
            let Some(r) = self.reqs.get_mut(slot).and_then(|r| r.as_mut()) else {
                tracing::warn!(slot, "NVMe passthrough completion for no request");
                continue;
            };
            let res = result_of(cqe.result());
            if cqe.result() < 0 && !self.warned {
                self.warned = true;
                tracing::warn!(
                    errno = -cqe.result(),
                    error = %io::Error::from_raw_os_error(-cqe.result()),
                    "NVMe passthrough command failed in the kernel (logged once per channel)"
                );
            }
            if res.is_err() && r.status.is_none() {
                r.status = Some(res);
            }
            r.parts_left -= 1;
            if r.parts_left > 0 {
                continue;
            }
            let r = self.reqs[slot].take().expect("slot in use");
            self.free.push(slot);
            self.in_flight -= 1;
            done(Completion {
                tag: r.io.tag,
                result: r.status.unwrap_or(Ok(())),
                buf: r.io.buf,
                lent: None,
            });
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.finished.len()
    }
}

impl Drop for PtChannel {
    fn drop(&mut self) {
        // The kernel may still write into buffers of commands in flight: wait for them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.in_flight > 0 && std::time::Instant::now() < deadline {
            self.flush();
            let _ = self.ring.submit_and_wait(1);
            self.poll(&mut |_| {});
        }
        if self.in_flight > 0 {
            // Leak what is still lent to the kernel rather than free memory it may write.
            for r in self.reqs.drain(..).flatten() {
                std::mem::forget(r.io);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmfd_nvme::cmd::nvm;

    #[test]
    fn command_layout_and_status_decoding() {
        let mut s = Sqe::new(nvm::WRITE, 3);
        s.set_lba_range(0x1_0000_0002, 8);
        s.set_fua(true);
        let b = NvmeCmd::from_sqe(&s, 0xdead_beef_0000, 4096).to_bytes();
        let dw = |i: usize| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(b[0], nvm::WRITE);
        assert_eq!(dw(1), 3, "nsid");
        assert_eq!((dw(6), dw(7)), (0xbeef_0000, 0xdead), "addr");
        assert_eq!(dw(9), 4096, "data_len");
        assert_eq!((dw(10), dw(11)), (2, 1), "slba");
        assert_eq!(dw(12), 7 | 1 << 30, "nlb and FUA");
        assert_eq!(result_of(0), Ok(()));
        assert_eq!(
            result_of(0x281),
            Err(IoError::Nvme {
                sct: 2,
                sc: 0x81,
                dnr: false
            })
        );
        assert_eq!(
            result_of(0x4002),
            Err(IoError::Nvme {
                sct: 0,
                sc: 2,
                dnr: true
            })
        );
        assert_eq!(result_of(-libc::EIO), Err(IoError::Media(libc::EIO)));
    }

    #[test]
    fn refuses_what_is_not_a_generic_nvme_device() {
        let f = std::env::temp_dir().join(format!("nvmfd-pt-{}", std::process::id()));
        std::fs::write(&f, [0u8; 4096]).unwrap();
        let e = UringPassthrough::open("pt", &f)
            .err()
            .expect("a regular file");
        std::fs::remove_file(&f).unwrap();
        assert!(e.to_string().contains("not a character device"), "{e}");
        let e = UringPassthrough::open("pt", "/dev/null")
            .err()
            .expect("/dev/null");
        assert!(e.to_string().contains("NVME_IOCTL_ID"), "{e}");
    }
}
