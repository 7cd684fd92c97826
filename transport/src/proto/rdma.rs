//! NVMe/RDMA connection private data: what rides in the rdma_cm CONNECT REQUEST, ACCEPT (REP) and
//! REJECT (NVMe/RDMA Transport Specification 1.0, 3.3 "RDMA_CM_REQUEST, RDMA_CM_ACCEPT,
//! RDMA_CM_REJECT"; the same layouts as Linux's `include/linux/nvme-rdma.h`). Shared by the target
//! and the userspace host in `bench/`, so the two cannot disagree on a layout.
//!
//! All fields are little-endian. The IB CM pads private data to its message size (a REQ carries
//! 92 bytes, a REJ 148), so a decoder takes at least the structure's size and ignores the rest.

use super::le;

/// Record format 0: the only one NVMe/RDMA 1.0 defines (RECFMT).
pub const RECFMT_1_0: u16 = 0;

/// The host's RDMA_CM_REQUEST private data (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CmRequest {
    /// Record format (0).
    pub recfmt: u16,
    /// The queue this connection will carry: 0 admin, 1.. I/O.
    pub qid: u16,
    /// Receive queue entries the host posted for responses (HRQSIZE; not 0's based).
    pub hrqsize: u16,
    /// The host's submission queue size, 0's based (HSQSIZE; the Connect command's SQSIZE).
    pub hsqsize: u16,
    /// Bytes 09:08: the controller ID the host expects for an I/O queue (reserved in 1.0,
    /// filled by newer hosts; informational here, the Connect command decides).
    pub cntlid: u16,
}

impl CmRequest {
    pub const SIZE: usize = 32;

    /// None if fewer than [`CmRequest::SIZE`] bytes arrived (reject with
    /// [`RejectStatus::InvalidLength`]).
    pub fn decode(b: &[u8]) -> Option<CmRequest> {
        if b.len() < Self::SIZE {
            return None;
        }
        Some(CmRequest {
            recfmt: le::u16(b, 0),
            qid: le::u16(b, 2),
            hrqsize: le::u16(b, 4),
            hsqsize: le::u16(b, 6),
            cntlid: le::u16(b, 8),
        })
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        le::put_u16(&mut b, 0, self.recfmt);
        le::put_u16(&mut b, 2, self.qid);
        le::put_u16(&mut b, 4, self.hrqsize);
        le::put_u16(&mut b, 6, self.hsqsize);
        le::put_u16(&mut b, 8, self.cntlid);
        b
    }
}

/// The target's RDMA_CM_ACCEPT private data (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CmAccept {
    pub recfmt: u16,
    /// Controller receive queue size: commands the controller can take at once on this queue
    /// (CRQSIZE; the host never has more outstanding).
    pub crqsize: u16,
}

impl CmAccept {
    pub const SIZE: usize = 32;

    pub fn decode(b: &[u8]) -> Option<CmAccept> {
        if b.len() < 4 {
            return None;
        }
        Some(CmAccept {
            recfmt: le::u16(b, 0),
            crqsize: le::u16(b, 2),
        })
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        le::put_u16(&mut b, 0, self.recfmt);
        le::put_u16(&mut b, 2, self.crqsize);
        b
    }
}

/// Why the target refused a connection: STS of the RDMA_CM_REJECT private data (NVMe/RDMA 1.0,
/// Figure "RDMA_CM_REJECT Private Data": 01h..09h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum RejectStatus {
    /// The private data was shorter than the request structure.
    InvalidLength = 0x01,
    InvalidRecfmt = 0x02,
    /// QID above what the controller offers.
    InvalidQid = 0x03,
    InvalidHsqsize = 0x04,
    InvalidHrqsize = 0x05,
    /// The controller cannot make the queue now (receive slots, QP, memory).
    NoResources = 0x06,
    /// The host's responder resources (IRD) leave the controller no RDMA READ to pull data.
    InvalidIrd = 0x07,
    InvalidOrd = 0x08,
    InvalidCntlid = 0x09,
}

impl RejectStatus {
    pub fn from_raw(v: u16) -> Option<RejectStatus> {
        use RejectStatus::*;
        Some(match v {
            0x01 => InvalidLength,
            0x02 => InvalidRecfmt,
            0x03 => InvalidQid,
            0x04 => InvalidHsqsize,
            0x05 => InvalidHrqsize,
            0x06 => NoResources,
            0x07 => InvalidIrd,
            0x08 => InvalidOrd,
            0x09 => InvalidCntlid,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            RejectStatus::InvalidLength => "invalid private data length",
            RejectStatus::InvalidRecfmt => "invalid RECFMT",
            RejectStatus::InvalidQid => "invalid QID",
            RejectStatus::InvalidHsqsize => "invalid HSQSIZE",
            RejectStatus::InvalidHrqsize => "invalid HRQSIZE",
            RejectStatus::NoResources => "no resources",
            RejectStatus::InvalidIrd => "invalid IRD",
            RejectStatus::InvalidOrd => "invalid ORD",
            RejectStatus::InvalidCntlid => "invalid CNTLID",
        }
    }
}

/// The target's RDMA_CM_REJECT private data (4 bytes: RECFMT, STS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmReject {
    pub recfmt: u16,
    pub status: u16,
}

impl CmReject {
    pub const SIZE: usize = 4;

    pub fn new(status: RejectStatus) -> CmReject {
        CmReject {
            recfmt: RECFMT_1_0,
            status: status as u16,
        }
    }

    pub fn decode(b: &[u8]) -> Option<CmReject> {
        if b.len() < Self::SIZE {
            return None;
        }
        Some(CmReject {
            recfmt: le::u16(b, 0),
            status: le::u16(b, 2),
        })
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        le::put_u16(&mut b, 0, self.recfmt);
        le::put_u16(&mut b, 2, self.status);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_linux_nvme_rdma_cm_req() {
        // recfmt 0, qid 3, hrqsize 128, hsqsize 127, cntlid 5, then 22 reserved bytes.
        let mut b = [0u8; 92];
        b[2] = 3;
        b[4] = 128;
        b[6] = 127;
        b[8] = 5;
        let r = CmRequest::decode(&b).unwrap();
        assert_eq!(
            r,
            CmRequest {
                recfmt: 0,
                qid: 3,
                hrqsize: 128,
                hsqsize: 127,
                cntlid: 5
            }
        );
        assert_eq!(&r.encode()[..], &b[..32]);
        assert!(CmRequest::decode(&b[..31]).is_none());
    }

    #[test]
    fn accept_and_reject_layouts() {
        let a = CmAccept {
            recfmt: 0,
            crqsize: 0x0180,
        };
        let e = a.encode();
        assert_eq!(&e[..4], &[0, 0, 0x80, 0x01]);
        assert!(e[4..].iter().all(|&x| x == 0));
        assert_eq!(CmAccept::decode(&e), Some(a));
        let r = CmReject::new(RejectStatus::InvalidHsqsize).encode();
        assert_eq!(r, [0, 0, 4, 0]);
        let d = CmReject::decode(&[0, 0, 6, 0, 0xff, 0xff]).unwrap();
        assert_eq!(
            RejectStatus::from_raw(d.status),
            Some(RejectStatus::NoResources)
        );
        assert_eq!(RejectStatus::from_raw(0x0a), None);
    }
}
