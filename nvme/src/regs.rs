//! Controller registers (NVMe Base 2.0, section 3.1.4 "Controller Properties"): offsets and pure
//! decoders/encoders. Nothing here touches hardware, so every field is unit tested.

/// Register offsets in BAR0.
pub mod off {
    pub const CAP: usize = 0x00;
    pub const VS: usize = 0x08;
    pub const INTMS: usize = 0x0c;
    pub const CC: usize = 0x14;
    pub const CSTS: usize = 0x1c;
    pub const AQA: usize = 0x24;
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
    pub const CMBLOC: usize = 0x38;
    pub const CMBSZ: usize = 0x3c;
    pub const CMBMSC: usize = 0x50;
    pub const CMBSTS: usize = 0x58;
    /// First doorbell (SQ 0 tail).
    pub const DOORBELLS: usize = 0x1000;
}

/// Controller Capabilities (CAP, offset 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, as a count (the field is 0's based).
    pub fn mqes(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Contiguous Queues Required.
    pub fn cqr(self) -> bool {
        self.0 >> 16 & 1 == 1
    }
    /// Timeout (CAP.TO) in milliseconds: the worst case time for CSTS.RDY to change after CC.EN
    /// changes, in 500 ms units.
    pub fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff).max(1) * 500
    }
    /// Doorbell stride in bytes (4 << CAP.DSTRD).
    pub fn doorbell_stride(self) -> usize {
        4 << ((self.0 >> 32) & 0xf)
    }
    /// NVM command set supported (CSS bit 0 of bits 44:37).
    pub fn css_nvm(self) -> bool {
        self.0 >> 37 & 1 == 1
    }
    /// Memory page size minimum in bytes (2 ^ (12 + MPSMIN)).
    pub fn mps_min(self) -> usize {
        1 << (12 + ((self.0 >> 48) & 0xf))
    }
    /// Memory page size maximum in bytes.
    pub fn mps_max(self) -> usize {
        1 << (12 + ((self.0 >> 52) & 0xf))
    }
    /// Controller Memory Buffer Supported (bit 57): CMBLOC/CMBSZ are meaningful only after
    /// CMBMSC.CRE is set.
    pub fn cmbs(self) -> bool {
        self.0 >> 57 & 1 == 1
    }
}

/// Controller Configuration (CC, offset 0x14) as the driver writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cc(pub u32);

impl Cc {
    pub const EN: u32 = 1;
    /// CC.SHN = 01b, normal shutdown.
    pub const SHN_NORMAL: u32 = 1 << 14;
    pub const SHN_MASK: u32 = 3 << 14;

    /// An enabled configuration: NVM command set, memory page size `page_size`, round robin
    /// arbitration, SQ entry 64 bytes (IOSQES 6), CQ entry 16 bytes (IOCQES 4).
    pub fn enabled(page_size: usize) -> Cc {
        let mps = page_size.trailing_zeros() - 12;
        Cc(Self::EN | (mps << 7) | (6 << 16) | (4 << 20))
    }
    pub fn en(self) -> bool {
        self.0 & Self::EN != 0
    }
}

/// Controller Status (CSTS, offset 0x1c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Csts(pub u32);

impl Csts {
    pub fn rdy(self) -> bool {
        self.0 & 1 != 0
    }
    /// Controller Fatal Status.
    pub fn cfs(self) -> bool {
        self.0 >> 1 & 1 != 0
    }
    /// Shutdown status: 0 normal operation, 1 in progress, 2 complete.
    pub fn shst(self) -> u32 {
        (self.0 >> 2) & 3
    }
    /// A register read that returned all ones: the device is gone (surprise removal) or its
    /// link is down. No real CSTS has every bit set (bits 31:7 are reserved).
    pub fn is_all_ones(self) -> bool {
        self.0 == u32::MAX
    }
}

/// Size units of CMBSZ.SZU (NVMe Base 2.0, Figure 73): 4 KiB × 16^n for n in 0..=6.
pub fn cmb_size_unit(szu: u32) -> Option<u64> {
    if szu <= 6 {
        Some(4096u64 << (4 * szu))
    } else {
        None
    }
}

/// Controller Memory Buffer Location (CMBLOC, offset 0x38).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmbloc(pub u32);

impl Cmbloc {
    /// Base Indicator Register: which BAR holds the CMB (0, 2, 3, 4 or 5 are valid; the
    /// BAR pair 0/1 holds the registers, so 0 means "after the registers").
    pub fn bir(self) -> u32 {
        self.0 & 7
    }
    /// CMB Data Pointer Mixed Locations Support: a command may have its PRP/SGL list in one
    /// place and its data in another.
    pub fn cdpmls(self) -> bool {
        self.0 >> 5 & 1 == 1
    }
    /// CMB Data Pointer and Command Independent Locations Support.
    pub fn cdpcils(self) -> bool {
        self.0 >> 6 & 1 == 1
    }
    /// CMB Data Metadata Mixed Memory Support.
    pub fn cdmmms(self) -> bool {
        self.0 >> 8 & 1 == 1
    }
    /// Offset field (bits 31:12) in CMBSZ.SZU units.
    pub fn ofst(self) -> u64 {
        u64::from(self.0 >> 12)
    }
}

/// Controller Memory Buffer Size (CMBSZ, offset 0x3c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmbsz(pub u32);

impl Cmbsz {
    /// Submission queues may live in the CMB.
    pub fn sqs(self) -> bool {
        self.0 & 1 != 0
    }
    /// Completion queues may live in the CMB.
    pub fn cqs(self) -> bool {
        self.0 >> 1 & 1 != 0
    }
    /// PRP/SGL lists may live in the CMB.
    pub fn lists(self) -> bool {
        self.0 >> 2 & 1 != 0
    }
    /// Read data (controller-to-host transfers) may target the CMB.
    pub fn rds(self) -> bool {
        self.0 >> 3 & 1 != 0
    }
    /// Write data (host-to-controller transfers) may come from the CMB.
    pub fn wds(self) -> bool {
        self.0 >> 4 & 1 != 0
    }
    pub fn szu(self) -> u32 {
        (self.0 >> 8) & 0xf
    }
    /// Size field (bits 31:12) in SZU units.
    pub fn sz(self) -> u64 {
        u64::from(self.0 >> 12)
    }
    /// Size in bytes, or `None` for a reserved size unit.
    pub fn size_bytes(self) -> Option<u64> {
        cmb_size_unit(self.szu()).map(|u| u * self.sz())
    }
}

/// Where the CMB is, decoded from CMBLOC and CMBSZ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmbLayout {
    pub bar: u32,
    /// Offset of the CMB inside the BAR, in bytes.
    pub offset: u64,
    pub size: u64,
    pub loc: Cmbloc,
    pub sz: Cmbsz,
}

/// Why a CMB cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmbError {
    #[error("the controller does not report a CMB (CAP.CMBS = 0)")]
    NotSupported,
    #[error("CMBSZ is zero: the controller exposes no CMB (is CMBMSC.CRE set?)")]
    Empty,
    #[error("CMBSZ.SZU {0} is a reserved size unit")]
    BadUnit(u32),
    #[error("CMBLOC.BIR {0} does not name a memory BAR (valid: 0, 2, 3, 4, 5)")]
    BadBar(u32),
    #[error("the CMB ({offset:#x}+{size:#x}) does not fit in BAR {bar} ({bar_size:#x} bytes)")]
    OutsideBar {
        bar: u32,
        offset: u64,
        size: u64,
        bar_size: u64,
    },
    #[error("the CMB supports neither read nor write data (RDS = WDS = 0)")]
    NoData,
}

impl CmbLayout {
    pub fn decode(loc: Cmbloc, sz: Cmbsz) -> Result<CmbLayout, CmbError> {
        if sz.0 == 0 {
            return Err(CmbError::Empty);
        }
        let unit = cmb_size_unit(sz.szu()).ok_or(CmbError::BadUnit(sz.szu()))?;
        let bar = loc.bir();
        if bar == 1 || bar > 5 {
            return Err(CmbError::BadBar(bar));
        }
        Ok(CmbLayout {
            bar,
            offset: loc.ofst() * unit,
            size: sz.sz() * unit,
            loc,
            sz,
        })
    }

    /// Check the CMB against the size of the BAR that holds it.
    pub fn check_bar(&self, bar_size: u64) -> Result<(), CmbError> {
        let end = self.offset.checked_add(self.size);
        if end.is_none_or(|e| e > bar_size) {
            return Err(CmbError::OutsideBar {
                bar: self.bar,
                offset: self.offset,
                size: self.size,
                bar_size,
            });
        }
        Ok(())
    }
}

/// Controller Memory Buffer Memory Space Control (CMBMSC, offset 0x50).
pub mod cmbmsc {
    /// Capabilities Registers Enabled: CMBLOC and CMBSZ read their values only while set.
    pub const CRE: u64 = 1;
    /// Controller Memory Space Enable: the controller treats addresses in CBA..CBA+size as its
    /// CMB.
    pub const CMSE: u64 = 2;

    /// The value that enables the registers and memory space at controller base address `cba`
    /// (4 KiB aligned: bits 63:12).
    pub fn enable(cba: u64) -> u64 {
        (cba & !0xfff) | CRE | CMSE
    }
}

/// Doorbell offsets in BAR0 for queue `qid` (NVMe Base 2.0, 3.1.4.21/22).
pub fn sq_tail_doorbell(qid: u16, stride: usize) -> usize {
    off::DOORBELLS + (2 * qid as usize) * stride
}

pub fn cq_head_doorbell(qid: u16, stride: usize) -> usize {
    off::DOORBELLS + (2 * qid as usize + 1) * stride
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        // QEMU 7.2's CAP for an emulated controller with a CMB: MQES 2047, CQR, TO 15 (7.5 s),
        // DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4, CMBS.
        let cap = Cap(0x07ff | 1 << 16 | 0x0f << 24 | 1 << 37 | 4 << 52 | 1 << 57);
        assert_eq!(cap.mqes(), 2048);
        assert!(cap.cqr());
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 4);
        assert!(cap.css_nvm());
        assert_eq!(cap.mps_min(), 4096);
        assert_eq!(cap.mps_max(), 65536);
        assert!(cap.cmbs());
        let cap = Cap(3u64 << 32);
        assert_eq!(cap.doorbell_stride(), 32);
        assert!(!cap.cmbs());
        // TO 0 still waits 500 ms instead of not at all.
        assert_eq!(cap.timeout_ms(), 500);
    }

    #[test]
    fn cc_encoding() {
        let cc = Cc::enabled(4096);
        assert_eq!(cc.0, 0x0046_0001);
        assert!(cc.en());
        assert_eq!(Cc::enabled(16384).0 >> 7 & 0xf, 2);
    }

    #[test]
    fn csts_fields() {
        assert!(Csts(1).rdy());
        assert!(Csts(2).cfs());
        assert_eq!(Csts(0b1001).shst(), 2);
        assert!(Csts(u32::MAX).is_all_ones());
        assert!(!Csts(0x9).is_all_ones());
    }

    #[test]
    fn size_units() {
        assert_eq!(cmb_size_unit(0), Some(4 << 10));
        assert_eq!(cmb_size_unit(1), Some(64 << 10));
        assert_eq!(cmb_size_unit(2), Some(1 << 20));
        assert_eq!(cmb_size_unit(3), Some(16 << 20));
        assert_eq!(cmb_size_unit(4), Some(256 << 20));
        assert_eq!(cmb_size_unit(5), Some(4 << 30));
        assert_eq!(cmb_size_unit(6), Some(64 << 30));
        assert_eq!(cmb_size_unit(7), None);
    }

    #[test]
    fn qemu_cmb_values() {
        // What QEMU 7.2 shows once CMBMSC.CRE is set (rig.md): CMBLOC 0x62, CMBSZ 0x4021d for
        // cmb_size_mb=64.
        let loc = Cmbloc(0x62);
        let sz = Cmbsz(0x4021d);
        assert_eq!(loc.bir(), 2);
        assert!(loc.cdpmls());
        assert!(loc.cdpcils());
        assert!(!loc.cdmmms());
        assert_eq!(loc.ofst(), 0);
        assert!(sz.sqs());
        assert!(!sz.cqs());
        assert!(sz.lists());
        assert!(sz.rds());
        assert!(sz.wds());
        assert_eq!(sz.szu(), 2);
        assert_eq!(sz.sz(), 64);
        assert_eq!(sz.size_bytes(), Some(64 << 20));
        let l = CmbLayout::decode(loc, sz).unwrap();
        assert_eq!((l.bar, l.offset, l.size), (2, 0, 64 << 20));
        assert!(l.check_bar(64 << 20).is_ok());
        assert!(matches!(
            l.check_bar(32 << 20),
            Err(CmbError::OutsideBar { .. })
        ));
    }

    #[test]
    fn cmb_offset_in_units_and_bad_values() {
        // BIR 4, OFST 3 units of 64 KiB; SZ 5 units.
        let l = CmbLayout::decode(Cmbloc(4 | 3 << 12), Cmbsz(1 << 8 | 5 << 12 | 0x18)).unwrap();
        assert_eq!((l.bar, l.offset, l.size), (4, 3 * 65536, 5 * 65536));
        assert_eq!(CmbLayout::decode(Cmbloc(0), Cmbsz(0)), Err(CmbError::Empty));
        assert_eq!(
            CmbLayout::decode(Cmbloc(1), Cmbsz(1 << 12)),
            Err(CmbError::BadBar(1))
        );
        assert_eq!(
            CmbLayout::decode(Cmbloc(6), Cmbsz(1 << 12)),
            Err(CmbError::BadBar(6))
        );
        assert_eq!(
            CmbLayout::decode(Cmbloc(2), Cmbsz(7 << 8 | 1 << 12)),
            Err(CmbError::BadUnit(7))
        );
    }

    #[test]
    fn cmbmsc_and_doorbells() {
        assert_eq!(cmbmsc::enable(0xfe00_0123), 0xfe00_0003);
        assert_eq!(sq_tail_doorbell(0, 4), 0x1000);
        assert_eq!(cq_head_doorbell(0, 4), 0x1004);
        assert_eq!(sq_tail_doorbell(3, 4), 0x1018);
        assert_eq!(cq_head_doorbell(1, 16), 0x1030);
    }
}
