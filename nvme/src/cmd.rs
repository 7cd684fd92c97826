//! Submission and completion queue entries (NVMe Base 2.0, 4.2 and 4.6), opcodes and statuses.

/// Admin opcodes used by the driver.
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
}

/// NVM command set opcodes.
pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DSM: u8 = 0x09;
}

/// Feature identifiers.
pub mod feature {
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
}

/// A 64-byte submission queue entry, kept as sixteen dwords.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sqe {
    pub dw: [u32; 16],
}

impl Sqe {
    pub const SIZE: usize = 64;

    pub fn new(opcode: u8, nsid: u32) -> Sqe {
        let mut s = Sqe::default();
        s.dw[0] = u32::from(opcode);
        s.dw[1] = nsid;
        s
    }
    pub fn opcode(&self) -> u8 {
        self.dw[0] as u8
    }
    pub fn cid(&self) -> u16 {
        (self.dw[0] >> 16) as u16
    }
    pub fn set_cid(&mut self, cid: u16) {
        self.dw[0] = (self.dw[0] & 0xffff) | u32::from(cid) << 16;
    }
    /// Data pointer as PRP entries (PSDT = 00b).
    pub fn set_prp(&mut self, prp1: u64, prp2: u64) {
        self.dw[6] = prp1 as u32;
        self.dw[7] = (prp1 >> 32) as u32;
        self.dw[8] = prp2 as u32;
        self.dw[9] = (prp2 >> 32) as u32;
    }
    pub fn prp1(&self) -> u64 {
        u64::from(self.dw[6]) | u64::from(self.dw[7]) << 32
    }
    pub fn prp2(&self) -> u64 {
        u64::from(self.dw[8]) | u64::from(self.dw[9]) << 32
    }
    /// Starting LBA (CDW10/11) and 0's based block count (CDW12 15:0) of an NVM I/O command.
    pub fn set_lba_range(&mut self, slba: u64, blocks: u32) {
        debug_assert!((1..=65536).contains(&blocks));
        self.dw[10] = slba as u32;
        self.dw[11] = (slba >> 32) as u32;
        self.dw[12] = (self.dw[12] & !0xffff) | (blocks - 1);
    }
    /// Force Unit Access, CDW12 bit 30 (Read, Write, Write Zeroes, Compare).
    pub fn set_fua(&mut self, fua: bool) {
        if fua {
            self.dw[12] |= 1 << 30;
        } else {
            self.dw[12] &= !(1 << 30);
        }
    }

    /// Little-endian bytes as they go into the queue.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        for (i, d) in self.dw.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&d.to_le_bytes());
        }
        b
    }
}

/// Status Code Type and Status Code of a completion (DW3 31:17 without the phase bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0);
    /// Generic 0x12: Invalid Use of Controller Memory Buffer.
    pub const INVALID_CMB_USE: u8 = 0x12;

    /// A status from Status Code Type and Status Code (no DNR/More).
    pub fn new(sct: u8, sc: u8) -> Status {
        Status(u16::from(sct & 7) << 8 | u16::from(sc))
    }
    pub fn sc(self) -> u8 {
        self.0 as u8
    }
    pub fn sct(self) -> u8 {
        (self.0 >> 8 & 7) as u8
    }
    /// Command Retry Delay (CRD, 2 bits).
    pub fn crd(self) -> u8 {
        (self.0 >> 11 & 3) as u8
    }
    pub fn more(self) -> bool {
        self.0 >> 13 & 1 == 1
    }
    /// Do Not Retry.
    pub fn dnr(self) -> bool {
        self.0 >> 14 & 1 == 1
    }
    pub fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SCT {:#x} SC {:#04x}", self.sct(), self.sc())?;
        if self.dnr() {
            f.write_str(" DNR")?;
        }
        Ok(())
    }
}

/// A 16-byte completion queue entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    /// DW3 31:16: phase tag in bit 0, status in 15:1.
    pub status_phase: u16,
}

impl Cqe {
    pub const SIZE: usize = 16;

    pub fn from_bytes(b: &[u8; 16]) -> Cqe {
        let d = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let dw2 = d(8);
        let dw3 = d(12);
        Cqe {
            dw0: d(0),
            dw1: d(4),
            sq_head: dw2 as u16,
            sq_id: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            status_phase: (dw3 >> 16) as u16,
        }
    }
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sq_head.to_le_bytes());
        b[10..12].copy_from_slice(&self.sq_id.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status_phase.to_le_bytes());
        b
    }
    pub fn phase(&self) -> bool {
        self.status_phase & 1 == 1
    }
    pub fn status(&self) -> Status {
        Status(self.status_phase >> 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_fields() {
        let mut s = Sqe::new(nvm::WRITE, 1);
        s.set_cid(0xbeef);
        s.set_prp(0x1_2345_6000, 0x2_0000_0000);
        s.set_lba_range(0x1_0000_0002, 8);
        s.set_fua(true);
        assert_eq!(s.opcode(), nvm::WRITE);
        assert_eq!(s.cid(), 0xbeef);
        assert_eq!(s.prp1(), 0x1_2345_6000);
        assert_eq!(s.prp2(), 0x2_0000_0000);
        assert_eq!(s.dw[10], 2);
        assert_eq!(s.dw[11], 1);
        assert_eq!(s.dw[12], 7 | 1 << 30);
        s.set_fua(false);
        assert_eq!(s.dw[12], 7);
        let b = s.to_bytes();
        assert_eq!(&b[0..4], &[0x01, 0x00, 0xef, 0xbe]);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
    }

    #[test]
    fn cqe_roundtrip_and_status() {
        // SCT 0 SC 0x12 with DNR, phase 1.
        let st = (1u16 << 14 | 0x12) << 1 | 1;
        let c = Cqe {
            dw0: 5,
            dw1: 0,
            sq_head: 17,
            sq_id: 2,
            cid: 9,
            status_phase: st,
        };
        let d = Cqe::from_bytes(&c.to_bytes());
        assert_eq!(d, c);
        assert!(d.phase());
        assert_eq!(d.status().sc(), Status::INVALID_CMB_USE);
        assert_eq!(d.status().sct(), 0);
        assert!(d.status().dnr());
        assert!(!d.status().is_success());
        assert_eq!(d.status().to_string(), "SCT 0x0 SC 0x12 DNR");
        assert_eq!(Status::new(2, 0x81).0, 0x281);
    }
}
