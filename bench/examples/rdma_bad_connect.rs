//! Bad NVMe/RDMA connect requests against a target, each of which must be rejected with its
//! NVMe/RDMA reject status (NVMe/RDMA 1.0, 3.3), and a good one, which must be accepted with the
//! CRQSIZE asked for. Prints "PASS name: detail" / "FAIL name: why" per case (the guest test
//! counts them); exit code 0 only if all passed.
//!
//!   rdma_bad_connect ADDR:PORT [MAX_IO_QUEUES]

use nvmfd_bench::host::rdma::{probe_connect, ConnectAnswer, ConnectRequest};
use nvmfd_transport::proto::rdma::RejectStatus;
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
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
