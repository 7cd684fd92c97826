//! Bad NVMe/RDMA connect requests against a target, each of which must be rejected with its
//! NVMe/RDMA reject status (NVMe/RDMA 1.0, 3.3), and a good one, which must be accepted with the
//! CRQSIZE asked for. Given a subsystem NQN, then bad commands on connected queue pairs of a
//! controller of that subsystem (see `bad_io`), each answered with its NVMe status, the queue
//! pair serving good I/O after. Prints "PASS name: detail" / "FAIL name: why" per case (the
//! guest test counts them); exit code 0 only if all passed.
//!
//!   rdma_bad_connect ADDR:PORT [MAX_IO_QUEUES [NQN [LBA_OFFSET_MIB]]]

use nvmfd_bench::host::rdma::{
    probe_connect, ConnectAnswer, ConnectRequest, DataPtr, RdmaController, RdmaQueue,
};
use nvmfd_bench::host::{read_sqe, write_sqe, FabricController, HostError};
use nvmfd_bench::HostOptions;
use nvmfd_transport::proto::nvme::SglDescriptor;
use nvmfd_transport::proto::rdma::RejectStatus;
use nvmfd_transport::proto::status::Status;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(Ok(dst)) = args.next().map(|a| a.parse::<SocketAddr>()) else {
        eprintln!("usage: rdma_bad_connect ADDR:PORT [MAX_IO_QUEUES]");
        return ExitCode::from(2);
    };
    let max_io_queues: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let nqn = args.next();
    let offset_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(192);
    let good = ConnectRequest::queue(0, 32);
    let mut recfmt = good.clone();
    recfmt.private[0] = 1;
    // The IB/RoCE CM pads private data with zeros to its message size (56 bytes after rdma_cm's
    // header in a REQ), so a short request arrives long enough, its missing fields zero: HRQSIZE
    // 0 is what the target sees. (Invalid Length needs a CM that does not pad, e.g. iWARP; the
    // transport's unit tests cover it.)
    let mut short = good.clone();
    short.private.truncate(4);
    let mut no_ird = good.clone();
    no_ird.responder_resources = 0;
    let mut hrq_small = ConnectRequest::queue(1, 64);
    hrq_small.private[4] = 8; // HRQSIZE 8 < HSQSIZE 63
    hrq_small.private[5] = 0;
    let cases: Vec<(&str, ConnectRequest, Option<RejectStatus>)> = vec![
        ("admin queue of 32 is accepted", good, None),
        (
            "4 bytes of private data (padded by the CM: HRQSIZE 0)",
            short,
            Some(RejectStatus::InvalidHrqsize),
        ),
        ("RECFMT 1", recfmt, Some(RejectStatus::InvalidRecfmt)),
        (
            "unknown QID",
            ConnectRequest::queue(max_io_queues + 1, 32),
            Some(RejectStatus::InvalidQid),
        ),
        (
            "oversize admin queue",
            ConnectRequest::queue(0, 4096),
            Some(RejectStatus::InvalidHsqsize),
        ),
        (
            "oversize I/O queue",
            ConnectRequest::queue(1, 4096),
            Some(RejectStatus::InvalidHsqsize),
        ),
        (
            "HRQSIZE below HSQSIZE",
            hrq_small,
            Some(RejectStatus::InvalidHrqsize),
        ),
        (
            "no RDMA READ resources (IRD 0)",
            no_ird,
            Some(RejectStatus::InvalidIrd),
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, req, want) in cases {
        let got = probe_connect(dst, &req, Duration::from_secs(30));
        let verdict = match (&got, want) {
            (Ok(ConnectAnswer::Accepted { crqsize }), None) if *crqsize == 32 => {
                Ok(format!("accepted, CRQSIZE {crqsize}"))
            }
            (Ok(ConnectAnswer::Rejected { status, raw }), Some(w)) if *status == Some(w) => {
                Ok(format!("rejected, status {raw:#x} ({})", w.describe()))
            }
            (Ok(a), _) => Err(format!("answer {a:?}, expected {want:?}")),
            (Err(e), _) => Err(e.clone()),
        };
        match verdict {
            Ok(d) => {
                passed += 1;
                println!("PASS {name}: {d}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
    if let Some(nqn) = nqn {
        let mut report = |name: &str, r: Result<String, String>| match r {
            Ok(d) => {
                passed += 1;
                println!("PASS {name}: {d}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        };
        if let Err(e) = bad_io(dst, &nqn, offset_mib, &mut report) {
            report("bad commands over RDMA", Err(e));
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A block pattern that names its LBA and a round, so a read-back proves what was written.
fn pattern(lba: u64, round: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k as u8).wrapping_mul(31) ^ (lba as u8).wrapping_mul(7) ^ round ^ (k >> 9) as u8)
        .collect()
}

/// Write `blocks` blocks at `lba` with keyed SGLs and read them back: Ok when they match.
fn write_read(
    q: &mut RdmaQueue,
    lba: u64,
    blocks: u32,
    bs: usize,
    round: u8,
) -> Result<String, String> {
    let len = blocks as usize * bs;
    let data = pattern(lba, round, len);
    let keyed = DataPtr::Keyed {
        len: len as u32,
        rkey: None,
    };
    let (cqe, _) = q
        .execute(write_sqe(1, lba, blocks), keyed, Some(&data), &[])
        .map_err(|e| format!("write: {e}"))?;
    if !cqe.status.is_success() {
        return Err(format!("write: {}", cqe.status));
    }
    let (cqe, back) = q
        .execute(read_sqe(1, lba, blocks), keyed, None, &[])
        .map_err(|e| format!("read: {e}"))?;
    if !cqe.status.is_success() {
        return Err(format!("read: {}", cqe.status));
    }
    if back != data {
        let at = back.iter().zip(&data).position(|(a, b)| a != b);
        return Err(format!("read back differs (first at byte {at:?} of {len})"));
    }
    Ok(format!("{len} bytes at LBA {lba} written and read back"))
}

/// Send one bad command; Ok when the response carries `want`.
fn expect_status(
    q: &mut RdmaQueue,
    sqe: nvmfd_transport::proto::nvme::Sqe,
    dptr: DataPtr,
    out: Option<&[u8]>,
    icd: &[u8],
    want: Status,
) -> Result<String, String> {
    match q.execute(sqe, dptr, out, icd) {
        Ok((cqe, _)) if cqe.status == want => Ok(format!("answered {}", cqe.status)),
        Ok((cqe, _)) => Err(format!("answered {}, expected {want}", cqe.status)),
        Err(e) => Err(format!("no response: {e}")),
    }
}

/// A bad rkey: the target's RDMA READ (for a write) or WRITE (for a read) of our memory fails
/// with a remote access error. That is fatal to the reliable connection (IBA 1.4, 9.9.3 and
/// 10.8.3.3: a requester's Remote Access Error completes the WR in error and moves its QP to
/// the Error state; our side, the responder, NAKs and errors too), so no response capsule can
/// be sent on it: the command cannot complete with a status, the queue pair ends. Linux nvmet
/// does the same (nvmet_rdma_read_data_done / nvmet_rdma_write_data_done: a failed WR that was
/// not flushed calls nvmet_rdma_error_comp, which disconnects the queue). What must hold: no
/// success is reported, the queue pair ends promptly (no hang until the timeout), and the
/// target keeps serving the controller's other queues.
fn bad_rkey(q: &mut RdmaQueue, write: bool, lba: u64, bs: usize) -> Result<String, String> {
    let bad = q.rkey() ^ 0x00ba_d000;
    let dptr = DataPtr::Keyed {
        len: bs as u32,
        rkey: Some(bad),
    };
    let data = pattern(lba, 0xee, bs);
    let r = if write {
        q.execute(write_sqe(1, lba, 1), dptr, Some(&data), &[])
    } else {
        q.execute(read_sqe(1, lba, 1), dptr, None, &[])
    };
    match r {
        Ok((cqe, _)) if cqe.status.is_success() => {
            Err("the command succeeded with a key the host never registered".into())
        }
        // A target that could answer (e.g. one that detected the bad key before moving data)
        // would be within the rules too.
        Ok((cqe, _)) => Ok(format!("answered {}", cqe.status)),
        Err(HostError::ConnectionDead(why)) => Ok(format!("queue pair ended: {why}")),
        Err(e) => Err(format!("expected the queue pair to end, got: {e}")),
    }
}

/// The userspace host's bad commands, on a controller of its own (so the kernel host's
/// controller, doing I/O meanwhile, is untouched): each is answered with its status, and the
/// same queue pair then does verified I/O.
fn bad_io(
    dst: SocketAddr,
    nqn: &str,
    offset_mib: u64,
    report: &mut dyn FnMut(&str, Result<String, String>),
) -> Result<(), String> {
    let mut opts = HostOptions::new(nqn);
    opts.io_timeout = Duration::from_secs(20);
    opts.ready_timeout = Duration::from_secs(20);
    let mut ctrl = RdmaController::connect(dst, &opts).map_err(|e| format!("admin queue: {e}"))?;
    let ns = ctrl
        .namespace(1)
        .map_err(|e| format!("Identify Namespace: {e}"))?;
    let bs = ns.block_size as usize;
    if bs == 0 || ns.nsze == 0 {
        return Err("namespace 1 is not active".into());
    }
    let lba = offset_mib * 1024 * 1024 / bs as u64;
    let mdts = ctrl.max_transfer();
    let icd = ctrl.in_capsule_size();
    report(
        "userspace RDMA host: controller enabled",
        Ok(format!(
            "cntlid {}, namespace of {} blocks of {bs}, MDTS {mdts} bytes, in-capsule {icd} bytes",
            ctrl.cntlid(),
            ns.nsze
        )),
    );
    let mut q = ctrl
        .connect_io_queue(1, 16)
        .map_err(|e| format!("I/O queue 1: {e}"))?;
    report(
        "keyed write and read back",
        write_read(&mut q, lba, 8, bs, 1),
    );
    // SGL longer than MDTS (one block named, MDTS + one block described): Invalid Field in
    // Command (NVMe base 2.0, MDTS: a command exceeding it is aborted with that status).
    let over = SglDescriptor {
        address: 0,
        length: (mdts + bs) as u32,
        key: q.rkey(),
        identifier: SglDescriptor::KEYED_DATA_BLOCK << 4,
    };
    report(
        "keyed SGL longer than MDTS",
        expect_status(
            &mut q,
            write_sqe(1, lba, 1),
            DataPtr::Raw(over),
            None,
            &[],
            Status::INVALID_FIELD,
        ),
    );
    let blocks = (mdts / bs + 1) as u32;
    let over_nlb = SglDescriptor {
        length: blocks * bs as u32,
        ..over
    };
    report(
        "write of MDTS + one block",
        expect_status(
            &mut q,
            write_sqe(1, lba, blocks),
            DataPtr::Raw(over_nlb),
            None,
            &[],
            Status::INVALID_FIELD,
        ),
    );
    // In-capsule data: a descriptor longer than the capsule carries, and one longer than the
    // capsule may carry: Data SGL Length Invalid (NVMe-oF 1.1, 7.3.3 / base 2.0 SGL rules).
    let some = pattern(lba, 2, 512);
    report(
        "in-capsule descriptor longer than the data carried",
        expect_status(
            &mut q,
            write_sqe(1, lba, 1),
            DataPtr::InCapsule { len: bs as u32 },
            None,
            &some,
            Status::DATA_SGL_LENGTH_INVALID,
        ),
    );
    report(
        "in-capsule descriptor longer than the capsule size",
        expect_status(
            &mut q,
            write_sqe(1, lba, ((icd + bs) / bs) as u32),
            DataPtr::InCapsule {
                len: (icd + bs) as u32,
            },
            None,
            &some,
            Status::DATA_SGL_LENGTH_INVALID,
        ),
    );
    // Descriptor types NVMe/RDMA does not take for data: Bit Bucket (1h) and NVMe/TCP's
    // Transport Data Block (5h): SGL Descriptor Type Invalid; a Keyed Data Block with the
    // Offset subtype: the same (NVMe-oF 1.1: keyed descriptors use subtypes 0h and Fh).
    let bit_bucket = SglDescriptor {
        address: 0,
        length: bs as u32,
        key: 0,
        identifier: 0x1 << 4,
    };
    report(
        "Bit Bucket descriptor",
        expect_status(
            &mut q,
            read_sqe(1, lba, 1),
            DataPtr::Raw(bit_bucket),
            None,
            &[],
            Status::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
    );
    report(
        "Transport Data Block descriptor (NVMe/TCP's)",
        expect_status(
            &mut q,
            read_sqe(1, lba, 1),
            DataPtr::Raw(SglDescriptor::transport(bs as u32)),
            None,
            &[],
            Status::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
    );
    let keyed_offset = SglDescriptor {
        identifier: SglDescriptor::KEYED_DATA_BLOCK << 4 | SglDescriptor::SUBTYPE_OFFSET,
        length: bs as u32,
        ..over
    };
    report(
        "Keyed Data Block with the Offset subtype",
        expect_status(
            &mut q,
            read_sqe(1, lba, 1),
            DataPtr::Raw(keyed_offset),
            None,
            &[],
            Status::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
    );
    let keyed1 = DataPtr::Keyed {
        len: bs as u32,
        rkey: None,
    };
    report(
        "read at the LBA after the last",
        expect_status(
            &mut q,
            read_sqe(1, ns.nsze, 1),
            keyed1,
            None,
            &[],
            Status::LBA_OUT_OF_RANGE,
        ),
    );
    report(
        "write of 2 blocks from the last LBA",
        expect_status(
            &mut q,
            write_sqe(1, ns.nsze - 1, 2),
            DataPtr::Keyed {
                len: 2 * bs as u32,
                rkey: None,
            },
            Some(&pattern(0, 3, 2 * bs)),
            &[],
            Status::LBA_OUT_OF_RANGE,
        ),
    );
    report(
        "the same queue pair after the bad commands",
        write_read(&mut q, lba + 8, 8, bs, 4),
    );
    for (qid, write) in [(2u16, true), (3u16, false)] {
        let name = if write {
            "write with a bad rkey (the target's RDMA READ fails)"
        } else {
            "read with a bad rkey (the target's RDMA WRITE fails)"
        };
        match ctrl.connect_io_queue(qid, 4) {
            Ok(mut bq) => {
                report(name, bad_rkey(&mut bq, write, lba + 16, bs));
                bq.close();
            }
            Err(e) => report(name, Err(format!("I/O queue {qid}: {e}"))),
        }
    }
    report(
        "queue 1 after the other queue pairs ended",
        write_read(&mut q, lba + 24, 8, bs, 5),
    );
    report(
        "admin queue after the other queue pairs ended (Keep Alive)",
        ctrl.keep_alive()
            .map(|_| "answered".into())
            .map_err(|e| e.to_string()),
    );
    q.close();
    Box::new(ctrl)
        .disconnect()
        .map_err(|e| format!("controller shutdown: {e}"))?;
    Ok(())
}
