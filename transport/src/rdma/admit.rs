//! What the NVMe/RDMA transport decides without touching a verb: whether a connect request is
//! accepted (and with which sizes), and where a command's data is (its SGL). Unit-tested here.

use crate::proto::nvme::{Direction, SglDescriptor, Sqe};
use crate::proto::rdma::{CmRequest, RejectStatus, RECFMT_1_0};
use crate::proto::status::Status;

/// Keyed SGL data block descriptors one command may carry (advertised as MSDBD on RDMA).
pub const MAX_KEYED: usize = 16;
/// Last Segment descriptor type (NVMe base 2.0, Figure "SGL Descriptor Type").
const LAST_SEGMENT: u8 = 0x3;
/// Keyed SGL Data Block sub type Fh: the host asks the target to invalidate the key with the
/// response (NVMe-oF 1.1, "Keyed SGL Data Block descriptor"; NVMe/RDMA 1.0, 3.4: the response is
/// then sent with SEND with Invalidate naming that key).
pub const SUBTYPE_INVALIDATE: u8 = 0xF;

/// Queue limits a listener's transport enforces at connect time.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Highest I/O QID (max_io_queues).
    pub max_io_queues: u16,
    /// Entries an I/O submission queue may have.
    pub max_queue_depth: u16,
    /// Entries the admin submission queue may have.
    pub max_admin_entries: u16,
    /// RDMA READs this side can keep outstanding on one QP (the device's max_qp_init_rd_atom,
    /// capped by us).
    pub max_initiator_depth: u8,
}

/// An accepted connect request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub qid: u16,
    /// Commands the host may have outstanding (HSQSIZE + 1): the receive slots this queue may
    /// hold and what CRQSIZE tells the host.
    pub sq_entries: u16,
    /// Responses the host can receive at once (HRQSIZE).
    pub hrqsize: u16,
    /// RDMA READs this side may have outstanding on the QP: min(the host's responder resources
    /// (IRD), ours).
    pub initiator_depth: u8,
}

/// Validate a connect request's private data and the host's RDMA READ resources (NVMe/RDMA
/// 1.0, 3.3). `responder_resources` is the host's IRD: how many RDMA READs it lets us have
/// outstanding against it. The target pulls every host write with RDMA READ, so a host offering
/// none cannot be served (Invalid IRD). The host's ORD is not checked: NVMe/RDMA hosts never
/// READ from the target, and rdma_cm clamps what we accept to our device.
pub fn admit_connect(
    private: &[u8],
    responder_resources: u8,
    limits: &ConnLimits,
) -> Result<Admitted, RejectStatus> {
    let req = CmRequest::decode(private).ok_or(RejectStatus::InvalidLength)?;
    if req.recfmt != RECFMT_1_0 {
        return Err(RejectStatus::InvalidRecfmt);
    }
    if req.qid > limits.max_io_queues {
        return Err(RejectStatus::InvalidQid);
    }
    // HSQSIZE is 0's based (the Connect command's SQSIZE): an admin queue takes at most
    // max_admin_entries entries, an I/O queue at least 2 (SQSIZE ≥ 1; NVMe-oF 1.1, Connect)
    // and at most max_queue_depth.
    let entries = u32::from(req.hsqsize) + 1;
    let (lo, hi) = if req.qid == 0 {
        (1, u32::from(limits.max_admin_entries))
    } else {
        (2, u32::from(limits.max_queue_depth))
    };
    if entries < lo || entries > hi {
        return Err(RejectStatus::InvalidHsqsize);
    }
    // HRQSIZE: receive entries the host posted for responses. A host that cannot receive a
    // response for each command it may have outstanding (HSQSIZE of them: one SQ slot stays
    // empty) would see responses dropped by RNR, so fewer is refused (Linux sends HSQSIZE+1).
    if req.hrqsize == 0 || req.hrqsize < req.hsqsize {
        return Err(RejectStatus::InvalidHrqsize);
    }
    if responder_resources == 0 {
        return Err(RejectStatus::InvalidIrd);
    }
    Ok(Admitted {
        qid: req.qid,
        sq_entries: entries as u16,
        hrqsize: req.hrqsize,
        initiator_depth: responder_resources.min(limits.max_initiator_depth).max(1),
    })
}

/// One keyed SGL data block: host memory the target reaches with RDMA READ/WRITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keyed {
    pub addr: u64,
    pub len: u32,
    pub key: u32,
}

/// Where a command's data is.
// The keyed variant is large (its descriptors inline): a plan lives in its command's slot, made
// once; boxing it would allocate per command.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlan {
    /// No data.
    None,
    /// In the capsule, `len` bytes at `offset` of the capsule's data area (after the SQE).
    InCapsule { offset: u32, len: u32 },
    /// In host memory, descriptors `descs[..n]`, `total` bytes in order; `invalidate` names the
    /// key the response must invalidate (SEND with Invalidate), if the host asked.
    Keyed {
        descs: [Keyed; MAX_KEYED],
        n: u8,
        total: u32,
        dir: Direction,
        invalidate: Option<u32>,
    },
}

impl DataPlan {
    /// Bytes of data the command names.
    pub fn len(&self) -> u32 {
        match *self {
            DataPlan::None => 0,
            DataPlan::InCapsule { len, .. } => len,
            DataPlan::Keyed { total, .. } => total,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What bounds a command's descriptor list on this queue.
#[derive(Debug, Clone, Copy)]
pub struct SglLimits {
    /// In-capsule data bytes this queue's capsules carry (IOCCSZ·16 − 64).
    pub in_capsule: u32,
    /// Keyed descriptors per command (MSDBD, at most [`MAX_KEYED`]).
    pub msdbd: u8,
}

fn keyed(d: &SglDescriptor) -> Result<Keyed, Status> {
    match (d.sgl_type(), d.sub_type()) {
        (SglDescriptor::KEYED_DATA_BLOCK, SglDescriptor::SUBTYPE_ADDRESS | SUBTYPE_INVALIDATE) => {
            Ok(Keyed {
                addr: d.address,
                len: d.length,
                key: d.key,
            })
        }
        _ => Err(Status::SGL_DESCRIPTOR_TYPE_INVALID),
    }
}

/// Read a command's SGL descriptors (DPTR and, for a Last Segment, the descriptor list in the
/// capsule). `data` is the in-capsule data that arrived after the SQE. Only the rules of this
/// transport's descriptor types are checked here (type, subtype, the list's own shape); the
/// rules every transport shares (PSDT, direction, lengths against MDTS and the capsule, MSDBD)
/// are the core's, at admission. Errors are the status the command is answered with, before any
/// data moves.
pub fn plan(sqe: &Sqe, data: &[u8], lim: &SglLimits) -> Result<DataPlan, Status> {
    let d = sqe.dptr;
    let dir = sqe.data_direction();
    if sqe.psdt() == 0 || dir == Direction::None {
        return Ok(DataPlan::None);
    }
    match (d.sgl_type(), d.sub_type()) {
        (SglDescriptor::DATA_BLOCK, SglDescriptor::SUBTYPE_OFFSET) => {
            // In-capsule data (NVMe/RDMA 1.0, 3.4: a Data Block descriptor with the Offset
            // subtype; ICDOFF is 0, so the offset counts from the first byte after the SQE).
            // The core checks offset and length against what the capsule carried.
            if d.length == 0 {
                return Ok(DataPlan::None);
            }
            Ok(DataPlan::InCapsule {
                offset: d.address.min(u64::from(u32::MAX)) as u32,
                len: d.length,
            })
        }
        (SglDescriptor::KEYED_DATA_BLOCK, _) => {
            let k = keyed(&d)?;
            let mut descs = [Keyed::default(); MAX_KEYED];
            descs[0] = k;
            let invalidate = (d.sub_type() == SUBTYPE_INVALIDATE).then_some(k.key);
            Ok(DataPlan::Keyed {
                descs,
                n: 1,
                total: k.len,
                dir,
                invalidate,
            })
        }
        (LAST_SEGMENT, SglDescriptor::SUBTYPE_OFFSET) => {
            // Several keyed descriptors, listed in the capsule (a Last Segment descriptor
            // with the Offset subtype pointing into the in-capsule data: what SPDK's host sends
            // when MSDBD > 1).
            let n = d.length as usize / SglDescriptor::SIZE;
            if !(d.length as usize).is_multiple_of(SglDescriptor::SIZE) || n == 0 {
                return Err(Status::INVALID_SGL_SEGMENT_DESCRIPTOR);
            }
            if n > usize::from(lim.msdbd).clamp(1, MAX_KEYED) {
                return Err(Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS);
            }
            let start = d.address;
            let end = start + u64::from(d.length);
            if start > u64::from(lim.in_capsule) {
                return Err(Status::SGL_OFFSET_INVALID);
            }
            if end > data.len() as u64 || end > u64::from(lim.in_capsule) {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            let list = &data[start as usize..end as usize];
            let mut descs = [Keyed::default(); MAX_KEYED];
            let mut total: u64 = 0;
            let mut invalidate: Option<u32> = None;
            let mut several_keys = false;
            for (i, raw) in list.chunks_exact(SglDescriptor::SIZE).enumerate() {
                let sd = SglDescriptor::decode(raw.try_into().expect("16 bytes"));
                let k = keyed(&sd)?;
                if sd.sub_type() == SUBTYPE_INVALIDATE {
                    match invalidate {
                        None => invalidate = Some(k.key),
                        Some(x) if x != k.key => several_keys = true,
                        Some(_) => {}
                    }
                }
                total += u64::from(k.len);
                descs[i] = k;
            }
            // The core checks the total against MDTS.
            let total = total.min(u64::from(u32::MAX));
            // One SEND with Invalidate names one key: with several, none is invalidated by us
            // and the host invalidates its own (it must check IB_WC_WITH_INVALIDATE anyway).
            if several_keys {
                invalidate = None;
            }
            Ok(DataPlan::Keyed {
                descs,
                n: n as u8,
                total: total as u32,
                dir,
                invalidate,
            })
        }
        (LAST_SEGMENT | 0x2, _) => Err(Status::INVALID_SGL_SEGMENT_DESCRIPTOR),
        _ => Err(Status::SGL_DESCRIPTOR_TYPE_INVALID),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::nvme::opcode;

    const LIM: ConnLimits = ConnLimits {
        max_io_queues: 4,
        max_queue_depth: 128,
        max_admin_entries: 32,
        max_initiator_depth: 16,
    };

    fn req(qid: u16, hrq: u16, hsq: u16) -> Vec<u8> {
        CmRequest {
            recfmt: 0,
            qid,
            hrqsize: hrq,
            hsqsize: hsq,
            cntlid: 0,
        }
        .encode()
        .to_vec()
    }

    #[test]
    fn linux_host_requests_are_admitted() {
        // nvme-rdma: admin hrqsize 32 hsqsize 31; I/O hrqsize 128 hsqsize 127.
        let a = admit_connect(&req(0, 32, 31), 16, &LIM).unwrap();
        assert_eq!((a.qid, a.sq_entries, a.initiator_depth), (0, 32, 16));
        let a = admit_connect(&req(4, 128, 127), 128, &LIM).unwrap();
        assert_eq!((a.qid, a.sq_entries, a.hrqsize), (4, 128, 128));
        assert_eq!(a.initiator_depth, 16, "capped by ours");
        let a = admit_connect(&req(1, 2, 1), 3, &LIM).unwrap();
        assert_eq!(a.initiator_depth, 3, "capped by the host's IRD");
    }

    #[test]
    fn each_bad_field_is_rejected_with_its_own_status() {
        use RejectStatus::*;
        let bad = |p: &[u8], ird| admit_connect(p, ird, &LIM).unwrap_err();
        assert_eq!(bad(&req(0, 32, 31)[..31], 16), InvalidLength);
        assert_eq!(bad(&[], 16), InvalidLength);
        let mut r = req(0, 32, 31);
        r[0] = 1;
        assert_eq!(bad(&r, 16), InvalidRecfmt);
        assert_eq!(bad(&req(5, 32, 31), 16), InvalidQid);
        assert_eq!(
            bad(&req(0, 64, 32), 16),
            InvalidHsqsize,
            "admin queue too deep"
        );
        assert_eq!(
            bad(&req(1, 200, 128), 16),
            InvalidHsqsize,
            "I/O queue too deep"
        );
        assert_eq!(
            bad(&req(1, 2, 0), 16),
            InvalidHsqsize,
            "I/O queue of one entry"
        );
        assert_eq!(bad(&req(1, 64, 127), 16), InvalidHrqsize);
        assert_eq!(bad(&req(1, 0, 0), 16), InvalidHsqsize);
        assert_eq!(bad(&req(0, 0, 0), 16), InvalidHrqsize);
        assert_eq!(bad(&req(1, 128, 127), 0), InvalidIrd);
    }

    const SL: SglLimits = SglLimits {
        in_capsule: 4096,
        msdbd: 16,
    };

    fn write(dptr: SglDescriptor) -> Sqe {
        let mut s = Sqe::lba_command(opcode::NVM_WRITE, 1, 0, 1);
        s.flags = 0x40; // PSDT 01b: SGLs
        s.dptr = dptr;
        s
    }

    fn keyed_desc(addr: u64, len: u32, key: u32, sub: u8) -> SglDescriptor {
        SglDescriptor {
            address: addr,
            length: len,
            key,
            identifier: (SglDescriptor::KEYED_DATA_BLOCK << 4) | sub,
        }
    }

    #[test]
    fn keyed_descriptor_with_and_without_invalidate() {
        let p = plan(&write(keyed_desc(0x1000, 8192, 0xabcd, 0)), &[], &SL).unwrap();
        let DataPlan::Keyed {
            descs,
            n,
            total,
            invalidate,
            dir,
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!((n, total, invalidate), (1, 8192, None));
        assert_eq!(dir, Direction::HostToController);
        assert_eq!(
            descs[0],
            Keyed {
                addr: 0x1000,
                len: 8192,
                key: 0xabcd
            }
        );
        let p = plan(&write(keyed_desc(0, 4096, 7, 0xF)), &[], &SL).unwrap();
        assert!(matches!(
            p,
            DataPlan::Keyed {
                invalidate: Some(7),
                ..
            }
        ));
        // Keyed subtypes other than 0h and Fh.
        assert_eq!(
            plan(&write(keyed_desc(0, 4096, 7, 1)), &[], &SL),
            Err(Status::SGL_DESCRIPTOR_TYPE_INVALID)
        );
        // Lengths are the core's to judge (MDTS): passed through.
        assert_eq!(
            plan(&write(keyed_desc(0, 0xff_ffff, 7, 0)), &[], &SL).map(|p| p.len()),
            Ok(0xff_ffff)
        );
    }

    #[test]
    fn in_capsule_and_other_descriptor_types() {
        let data = [0u8; 4096];
        let p = plan(&write(SglDescriptor::in_capsule(16, 4000)), &data, &SL).unwrap();
        assert_eq!(
            p,
            DataPlan::InCapsule {
                offset: 16,
                len: 4000
            }
        );
        assert_eq!(
            plan(&write(SglDescriptor::in_capsule(0, 0)), &data, &SL),
            Ok(DataPlan::None)
        );
        // NVMe/TCP's Transport Data Block is not an RDMA descriptor.
        let t = write(SglDescriptor::transport(4096));
        assert_eq!(plan(&t, &[], &SL), Err(Status::SGL_DESCRIPTOR_TYPE_INVALID));
        // A command that moves no data: its SGL is not looked at.
        let mut f = write(SglDescriptor::transport(4096));
        f.opcode = opcode::NVM_FLUSH;
        assert_eq!(plan(&f, &[], &SL), Ok(DataPlan::None));
        // A Segment descriptor (more lists in host memory) is not supported.
        let seg = SglDescriptor {
            address: 0,
            length: 32,
            key: 0,
            identifier: 0x20,
        };
        assert_eq!(
            plan(&write(seg), &data, &SL),
            Err(Status::INVALID_SGL_SEGMENT_DESCRIPTOR)
        );
    }

    fn last_segment(offset: u64, descs: &[SglDescriptor]) -> (Sqe, Vec<u8>) {
        let mut data = vec![0u8; offset as usize];
        for d in descs {
            data.extend_from_slice(&d.encode());
        }
        let seg = SglDescriptor {
            address: offset,
            length: (descs.len() * 16) as u32,
            key: 0,
            identifier: (LAST_SEGMENT << 4) | SglDescriptor::SUBTYPE_OFFSET,
        };
        (write(seg), data)
    }

    #[test]
    fn a_last_segment_list_of_keyed_descriptors() {
        let ds = [
            keyed_desc(0x10000, 4096, 1, 0xF),
            keyed_desc(0x30000, 8192, 1, 0xF),
            keyed_desc(0x50000, 512, 1, 0),
        ];
        let (sqe, data) = last_segment(0, &ds);
        let p = plan(&sqe, &data, &SL).unwrap();
        let DataPlan::Keyed {
            descs,
            n,
            total,
            invalidate,
            ..
        } = p
        else {
            panic!()
        };
        assert_eq!((n, total, invalidate), (3, 4096 + 8192 + 512, Some(1)));
        assert_eq!(descs[1].addr, 0x30000);
        // Two different keys to invalidate: the host invalidates them itself.
        let (sqe, data) = last_segment(32, &[ds[0], keyed_desc(0, 16, 2, 0xF)]);
        assert!(matches!(
            plan(&sqe, &data, &SL),
            Ok(DataPlan::Keyed {
                invalidate: None,
                n: 2,
                ..
            })
        ));
        // More than MSDBD.
        let lim = SglLimits { msdbd: 2, ..SL };
        let (sqe, data) = last_segment(0, &ds);
        assert_eq!(
            plan(&sqe, &data, &lim),
            Err(Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS)
        );
        // The list reaches past the capsule's data.
        assert_eq!(
            plan(&sqe, &data[..40], &SL),
            Err(Status::DATA_SGL_LENGTH_INVALID)
        );
        // An entry that is not keyed.
        let (sqe, data) = last_segment(0, &[ds[0], SglDescriptor::in_capsule(0, 16)]);
        assert_eq!(
            plan(&sqe, &data, &SL),
            Err(Status::SGL_DESCRIPTOR_TYPE_INVALID)
        );
        // A length that is not a whole number of descriptors.
        let (mut sqe, data) = last_segment(0, &ds);
        sqe.dptr.length = 20;
        assert_eq!(
            plan(&sqe, &data, &SL),
            Err(Status::INVALID_SGL_SEGMENT_DESCRIPTOR)
        );
    }
}
