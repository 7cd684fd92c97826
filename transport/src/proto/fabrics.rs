//! NVMe over Fabrics commands: Connect (and its 1024-byte data), Property Get/Set, Disconnect, and
//! the discovery log page.

use super::nvme::Sqe;
use super::{get_str, le, put_str};

/// Fabrics command types (byte 4 of a fabrics command).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTHENTICATION_SEND: u8 = 0x05;
    pub const AUTHENTICATION_RECEIVE: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// The well-known NQN of discovery subsystems.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Maximum NQN length in bytes (the field is 256 bytes, NUL terminated).
pub const NQN_MAX_LEN: usize = 223;

/// The command dwords of a Connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectCommand {
    pub recfmt: u16,
    pub qid: u16,
    /// Submission queue size, 0-based (so entries = sqsize + 1).
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep-alive timeout in milliseconds (admin queue only; 0 disables).
    pub kato_ms: u32,
}

impl ConnectCommand {
    pub fn from_sqe(sqe: &Sqe) -> Self {
        ConnectCommand {
            recfmt: sqe.cdw10 as u16,
            qid: (sqe.cdw10 >> 16) as u16,
            sqsize: sqe.cdw11 as u16,
            cattr: (sqe.cdw11 >> 16) as u8,
            kato_ms: sqe.cdw12,
        }
    }

    /// Write these fields into a fabrics Connect command.
    pub fn to_sqe(&self, cid: u16, data_len: u32) -> Sqe {
        Sqe {
            opcode: super::nvme::opcode::FABRICS,
            flags: 0x40,
            cid,
            nsid: fctype::CONNECT as u32,
            dptr: super::nvme::SglDescriptor::in_capsule(0, data_len),
            cdw10: (self.recfmt as u32) | ((self.qid as u32) << 16),
            cdw11: (self.sqsize as u32) | ((self.cattr as u32) << 16),
            cdw12: self.kato_ms,
            ..Default::default()
        }
    }
}

// Wire sizes (NVMe-oF 1.1 / NVMe Base 2.0): Connect command data is 1024 bytes, the discovery log
// page header 1024 bytes and each of its entries 1024 bytes. The constants and the arrays the
// codecs use must agree with them; a change to either fails the build.
const _: () = assert!(ConnectData::SIZE == 1024);
const _: () = assert!(DiscoveryLogEntry::SIZE == 1024);
const _: () = assert!(DiscoveryLogEntry::HEADER_SIZE == 1024);
const _: fn(&[u8; ConnectData::SIZE]) -> ConnectData = ConnectData::decode;
const _: fn(&ConnectData) -> [u8; ConnectData::SIZE] = ConnectData::encode;
const _: fn(&[u8; DiscoveryLogEntry::SIZE]) -> DiscoveryLogEntry = DiscoveryLogEntry::decode;
const _: fn(&DiscoveryLogEntry) -> [u8; DiscoveryLogEntry::SIZE] = DiscoveryLogEntry::encode;
const _: fn(u64, u64) -> [u8; DiscoveryLogEntry::HEADER_SIZE] = encode_discovery_header;

/// The 1024-byte data of a Connect command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    /// 0xFFFF on the admin queue (dynamic controller model), the controller's ID on I/O queues.
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

impl ConnectData {
    pub const SIZE: usize = 1024;

    pub fn decode(b: &[u8; 1024]) -> Self {
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[0..16]);
        ConnectData {
            hostid,
            cntlid: le::u16(b, 16),
            subnqn: get_str(&b[256..512]),
            hostnqn: get_str(&b[512..768]),
        }
    }

    pub fn encode(&self) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        b[0..16].copy_from_slice(&self.hostid);
        le::put_u16(&mut b, 16, self.cntlid);
        put_str(&mut b[256..512], &self.subnqn, 0);
        put_str(&mut b[512..768], &self.hostnqn, 0);
        b
    }
}

/// Property Get/Set fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyCommand {
    /// 4 or 8 bytes.
    pub size: u8,
    pub offset: u32,
    /// The value to set (Property Set only).
    pub value: u64,
}

impl PropertyCommand {
    pub fn from_sqe(sqe: &Sqe) -> Self {
        let size = if sqe.cdw10 & 0x7 == 1 { 8 } else { 4 };
        PropertyCommand {
            size,
            offset: sqe.cdw11,
            value: (sqe.cdw12 as u64) | ((sqe.cdw13 as u64) << 32),
        }
    }

    pub fn to_sqe(&self, cid: u16, set: bool) -> Sqe {
        Sqe {
            opcode: super::nvme::opcode::FABRICS,
            flags: 0x40,
            cid,
            nsid: if set {
                fctype::PROPERTY_SET
            } else {
                fctype::PROPERTY_GET
            } as u32,
            cdw10: if self.size == 8 { 1 } else { 0 },
            cdw11: self.offset,
            cdw12: self.value as u32,
            cdw13: (self.value >> 32) as u32,
            ..Default::default()
        }
    }
}

/// Transport types in discovery log entries.
pub mod trtype {
    pub const RDMA: u8 = 1;
    pub const TCP: u8 = 3;
}

/// Subsystem types in discovery log entries.
pub mod subtype {
    /// A referral to another discovery subsystem.
    pub const DISCOVERY: u8 = 1;
    pub const NVME: u8 = 2;
    /// The discovery subsystem that returned the log (TP 8013/8014, NVMe base 2.0).
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// TREQ (transport requirements) bits of a discovery log entry.
pub mod treq {
    /// Bits 1:0 = 10b: a secure channel is not required.
    pub const SECURE_CHANNEL_NOT_REQUIRED: u8 = 0b10;
    /// Bits 1:0 = 01b: a secure channel is required.
    pub const SECURE_CHANNEL_REQUIRED: u8 = 0b01;
    /// Bit 2: the subsystem supports disabling SQ flow control.
    pub const SQ_FLOW_CONTROL_DISABLE: u8 = 1 << 2;
}

/// One 1024-byte discovery log page entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryLogEntry {
    pub trtype: u8,
    /// 1 = IPv4, 2 = IPv6.
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    /// Entry flags (TP 8013): bit 0 duplicate returned information, bit 1 explicit persistent
    /// connection support for discovery, bit 2 no CDC connectivity.
    pub eflags: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
    /// Transport-specific address subtype, first 16 of its 256 bytes (the rest are 0). TCP:
    /// byte 0 security type (0 = none); RDMA: QPTYPE, PRTYPE, CMS, then PKEY at bytes 9:8.
    pub tsas: [u8; 16],
}

impl DiscoveryLogEntry {
    pub const SIZE: usize = 1024;
    /// Size of the log page header before the first entry.
    pub const HEADER_SIZE: usize = 1024;

    pub fn encode(&self) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        le::put_u16(&mut b, 4, self.portid);
        le::put_u16(&mut b, 6, self.cntlid);
        le::put_u16(&mut b, 8, self.asqsz);
        le::put_u16(&mut b, 10, self.eflags);
        put_str(&mut b[32..64], &self.trsvcid, b' ');
        put_str(&mut b[256..512], &self.subnqn, 0);
        put_str(&mut b[512..768], &self.traddr, b' ');
        b[768..784].copy_from_slice(&self.tsas);
        b
    }

    pub fn decode(b: &[u8; 1024]) -> Self {
        let mut tsas = [0u8; 16];
        tsas.copy_from_slice(&b[768..784]);
        DiscoveryLogEntry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            portid: le::u16(b, 4),
            cntlid: le::u16(b, 6),
            asqsz: le::u16(b, 8),
            eflags: le::u16(b, 10),
            trsvcid: get_str(&b[32..64]),
            subnqn: get_str(&b[256..512]),
            traddr: get_str(&b[512..768]),
            tsas,
        }
    }
}

/// The discovery log page header: generation counter, number of records, record format.
pub fn encode_discovery_header(genctr: u64, numrec: u64) -> [u8; 1024] {
    let mut b = [0u8; 1024];
    le::put_u64(&mut b, 0, genctr);
    le::put_u64(&mut b, 8, numrec);
    b
}

/// (generation counter, number of records) from a discovery log page header.
pub fn decode_discovery_header(b: &[u8]) -> Option<(u64, u64)> {
    (b.len() >= 16).then(|| (le::u64(b, 0), le::u64(b, 8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_data_layout() {
        let d = ConnectData {
            hostid: [7; 16],
            cntlid: 0xffff,
            subnqn: "nqn.2026-11.io.nvmfd:x".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
        };
        let b = d.encode();
        assert_eq!(&b[16..18], &[0xff, 0xff]);
        assert_eq!(&b[256..260], b"nqn.");
        assert_eq!(b[256 + 22], 0);
        assert_eq!(ConnectData::decode(&b), d);
    }

    #[test]
    fn connect_command_fields() {
        let c = ConnectCommand {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: 0,
            kato_ms: 5000,
        };
        let sqe = c.to_sqe(1, 1024);
        assert_eq!(sqe.fctype(), fctype::CONNECT);
        assert_eq!(&sqe.encode()[42..44], &[3, 0]);
        assert_eq!(ConnectCommand::from_sqe(&sqe), c);
    }

    #[test]
    fn discovery_entry_padding() {
        let e = DiscoveryLogEntry {
            trtype: trtype::TCP,
            adrfam: 1,
            subtype: subtype::NVME,
            treq: 0,
            portid: 1,
            cntlid: 0xffff,
            asqsz: 32,
            eflags: 0x0102,
            trsvcid: "4420".into(),
            subnqn: "nqn.a".into(),
            traddr: "127.0.0.1".into(),
            tsas: [0; 16],
        };
        let b = e.encode();
        assert_eq!(&b[32..38], b"4420  ");
        assert_eq!(&b[10..12], &[0x02, 0x01], "EFLAGS little endian at byte 10");
        assert_eq!(DiscoveryLogEntry::decode(&b), e);
    }
}
