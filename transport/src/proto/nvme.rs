//! NVMe submission and completion queue entries, SGL descriptors and opcodes.

use super::le;
use super::status::Status;

// Wire sizes (NVMe Base 2.0): a submission queue entry is 64 bytes, a completion queue entry 16,
// an SGL descriptor 16. The constants, and the arrays `decode` takes and `encode` returns, must
// agree with them; a change to either fails the build.
const _: () = assert!(Sqe::SIZE == 64);
const _: () = assert!(Cqe::SIZE == 16);
const _: () = assert!(SglDescriptor::SIZE == 16);
const _: () = assert!(std::mem::size_of::<[u8; Sqe::SIZE]>() == 64);
const _: fn(&[u8; Sqe::SIZE]) -> Sqe = Sqe::decode;
const _: fn(&Sqe) -> [u8; Sqe::SIZE] = Sqe::encode;
const _: fn(&[u8; Cqe::SIZE]) -> Cqe = Cqe::decode;
const _: fn(&Cqe) -> [u8; Cqe::SIZE] = Cqe::encode;
const _: fn(&[u8; SglDescriptor::SIZE]) -> SglDescriptor = SglDescriptor::decode;
const _: fn(&SglDescriptor) -> [u8; SglDescriptor::SIZE] = SglDescriptor::encode;
// DPTR is bytes 24..40 of the SQE: one SGL descriptor.
const _: () = assert!(40 - 24 == SglDescriptor::SIZE);

/// A 64-byte submission queue entry (command), decoded into its dwords. Fabrics commands reuse the
/// same layout with their own meaning for some dwords (see [`super::fabrics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sqe {
    pub opcode: u8,
    /// FUSE (bits 1:0) and PSDT (bits 7:6).
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub dptr: SglDescriptor,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

impl Sqe {
    pub const SIZE: usize = 64;

    pub fn decode(b: &[u8; 64]) -> Self {
        Sqe {
            opcode: b[0],
            flags: b[1],
            cid: le::u16(b, 2),
            nsid: le::u32(b, 4),
            cdw2: le::u32(b, 8),
            cdw3: le::u32(b, 12),
            mptr: le::u64(b, 16),
            dptr: SglDescriptor::decode(b[24..40].try_into().expect("16 bytes")),
            cdw10: le::u32(b, 40),
            cdw11: le::u32(b, 44),
            cdw12: le::u32(b, 48),
            cdw13: le::u32(b, 52),
            cdw14: le::u32(b, 56),
            cdw15: le::u32(b, 60),
        }
    }

    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = self.opcode;
        b[1] = self.flags;
        le::put_u16(&mut b, 2, self.cid);
        le::put_u32(&mut b, 4, self.nsid);
        le::put_u32(&mut b, 8, self.cdw2);
        le::put_u32(&mut b, 12, self.cdw3);
        le::put_u64(&mut b, 16, self.mptr);
        b[24..40].copy_from_slice(&self.dptr.encode());
        for (i, dw) in [
            self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15,
        ]
        .iter()
        .enumerate()
        {
            le::put_u32(&mut b, 40 + 4 * i, *dw);
        }
        b
    }

    /// A Read, Write or Write Zeroes style command: `blocks` (1..=65536) blocks at `slba`. The
    /// data pointer is left for the sender to fill in.
    pub fn lba_command(opcode: u8, nsid: u32, slba: u64, blocks: u32) -> Sqe {
        Sqe {
            opcode,
            nsid,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: blocks.wrapping_sub(1) & 0xffff,
            ..Default::default()
        }
    }

    /// PSDT: 0 = PRPs, 1 or 2 = SGLs (fabrics always use SGLs).
    pub fn psdt(&self) -> u8 {
        self.flags >> 6
    }

    /// Fabrics command type (byte 4, where the namespace ID sits in other commands).
    pub fn fctype(&self) -> u8 {
        self.nsid as u8
    }

    /// Starting LBA of a read/write/write-zeroes command.
    pub fn slba(&self) -> u64 {
        (self.cdw10 as u64) | ((self.cdw11 as u64) << 32)
    }

    /// Number of logical blocks, converted from the command's 0-based field.
    pub fn nlb(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }

    /// Direction of the data transfer the command implies.
    pub fn data_direction(&self) -> Direction {
        // Opcode bits 1:0 (fabrics: fctype bits 1:0) say which way data flows.
        let code = if self.opcode == opcode::FABRICS {
            self.fctype()
        } else {
            self.opcode
        };
        match code & 3 {
            0 => Direction::None,
            1 => Direction::HostToController,
            2 => Direction::ControllerToHost,
            _ => Direction::Bidirectional,
        }
    }
}

/// Which way a command moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

/// An SGL descriptor as carried in DPTR (16 bytes). The identifier byte holds the type in bits 7:4
/// and the sub type in bits 3:0. Keyed descriptors (RDMA) put a 24-bit length and a 32-bit key
/// where unkeyed ones have a 32-bit length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SglDescriptor {
    pub address: u64,
    pub length: u32,
    pub key: u32,
    pub identifier: u8,
}

impl SglDescriptor {
    pub const SIZE: usize = 16;
    pub const DATA_BLOCK: u8 = 0x0;
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
    pub const SUBTYPE_ADDRESS: u8 = 0x0;
    pub const SUBTYPE_OFFSET: u8 = 0x1;
    pub const SUBTYPE_TRANSPORT: u8 = 0xA;

    /// In-capsule data at `offset` into the capsule's data area.
    pub fn in_capsule(offset: u64, length: u32) -> Self {
        SglDescriptor {
            address: offset,
            length,
            key: 0,
            identifier: (Self::DATA_BLOCK << 4) | Self::SUBTYPE_OFFSET,
        }
    }

    /// Data moved by the transport (NVMe/TCP R2T/H2CData or C2HData).
    pub fn transport(length: u32) -> Self {
        SglDescriptor {
            address: 0,
            length,
            key: 0,
            identifier: (Self::TRANSPORT_DATA_BLOCK << 4) | Self::SUBTYPE_TRANSPORT,
        }
    }

    pub fn sgl_type(&self) -> u8 {
        self.identifier >> 4
    }

    pub fn sub_type(&self) -> u8 {
        self.identifier & 0xf
    }

    pub fn decode(b: &[u8; 16]) -> Self {
        let identifier = b[15];
        if identifier >> 4 == Self::KEYED_DATA_BLOCK {
            SglDescriptor {
                address: le::u64(b, 0),
                length: u32::from_le_bytes([b[8], b[9], b[10], 0]),
                key: le::u32(b, 11),
                identifier,
            }
        } else {
            SglDescriptor {
                address: le::u64(b, 0),
                length: le::u32(b, 8),
                key: 0,
                identifier,
            }
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        le::put_u64(&mut b, 0, self.address);
        if self.sgl_type() == Self::KEYED_DATA_BLOCK {
            b[8..11].copy_from_slice(&self.length.to_le_bytes()[..3]);
            le::put_u32(&mut b, 11, self.key);
        } else {
            le::put_u32(&mut b, 8, self.length);
        }
        b[15] = self.identifier;
        b
    }
}

/// A 16-byte completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl Cqe {
    pub const SIZE: usize = 16;

    pub fn decode(b: &[u8; 16]) -> Self {
        Cqe {
            dw0: le::u32(b, 0),
            dw1: le::u32(b, 4),
            sqhd: le::u16(b, 8),
            sqid: le::u16(b, 10),
            cid: le::u16(b, 12),
            status: Status::from_field(le::u16(b, 14)),
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        le::put_u32(&mut b, 0, self.dw0);
        le::put_u32(&mut b, 4, self.dw1);
        le::put_u16(&mut b, 8, self.sqhd);
        le::put_u16(&mut b, 10, self.sqid);
        le::put_u16(&mut b, 12, self.cid);
        le::put_u16(&mut b, 14, self.status.to_field());
        b
    }
}

/// Command opcodes.
pub mod opcode {
    /// Fabrics commands (Connect, Property Get/Set, Disconnect), on any queue.
    pub const FABRICS: u8 = 0x7f;

    // Admin command set.
    pub const ADMIN_DELETE_IO_SQ: u8 = 0x00;
    pub const ADMIN_CREATE_IO_SQ: u8 = 0x01;
    pub const ADMIN_GET_LOG_PAGE: u8 = 0x02;
    pub const ADMIN_DELETE_IO_CQ: u8 = 0x04;
    pub const ADMIN_CREATE_IO_CQ: u8 = 0x05;
    pub const ADMIN_IDENTIFY: u8 = 0x06;
    pub const ADMIN_ABORT: u8 = 0x08;
    pub const ADMIN_SET_FEATURES: u8 = 0x09;
    pub const ADMIN_GET_FEATURES: u8 = 0x0a;
    pub const ADMIN_ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const ADMIN_KEEP_ALIVE: u8 = 0x18;

    // NVM command set.
    pub const NVM_FLUSH: u8 = 0x00;
    pub const NVM_WRITE: u8 = 0x01;
    pub const NVM_READ: u8 = 0x02;
    pub const NVM_WRITE_ZEROES: u8 = 0x08;
    pub const NVM_DATASET_MANAGEMENT: u8 = 0x09;
}

/// Identify CNS values.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    pub const NAMESPACE_DESCRIPTORS: u8 = 0x03;
    pub const CSI_CONTROLLER: u8 = 0x06;
}

/// Log page identifiers.
pub mod log_page {
    pub const ERROR_INFORMATION: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NAMESPACES: u8 = 0x04;
    pub const DISCOVERY: u8 = 0x70;
}

/// Feature identifiers.
pub mod feature {
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
}

/// Controller properties (fabrics stand-ins for the PCIe register file).
pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_round_trip_and_layout() {
        let sqe = Sqe {
            opcode: opcode::NVM_WRITE,
            flags: 0x40,
            cid: 0x1234,
            nsid: 1,
            dptr: SglDescriptor::transport(8192),
            cdw10: 0xdead_beef,
            cdw11: 0x1,
            cdw12: 7,
            ..Default::default()
        };
        let b = sqe.encode();
        assert_eq!(b[0], 0x01);
        assert_eq!(&b[2..4], &[0x34, 0x12]);
        assert_eq!(b[39], 0x5a);
        assert_eq!(Sqe::decode(&b), sqe);
        assert_eq!(sqe.slba(), 0x1_dead_beef);
        assert_eq!(sqe.nlb(), 8);
        assert_eq!(sqe.psdt(), 1);
        assert_eq!(sqe.data_direction(), Direction::HostToController);
    }

    #[test]
    fn keyed_sgl_layout() {
        let d = SglDescriptor {
            address: 0x1000,
            length: 0x12_3456,
            key: 0xabcd_ef01,
            identifier: 0x40,
        };
        let b = d.encode();
        assert_eq!(&b[8..11], &[0x56, 0x34, 0x12]);
        assert_eq!(&b[11..15], &[0x01, 0xef, 0xcd, 0xab]);
        assert_eq!(SglDescriptor::decode(&b), d);
    }

    #[test]
    fn cqe_round_trip() {
        let c = Cqe {
            dw0: 5,
            dw1: 6,
            sqhd: 7,
            sqid: 1,
            cid: 9,
            status: Status::LBA_OUT_OF_RANGE,
        };
        let b = c.encode();
        assert_eq!(Cqe::decode(&b), c);
        assert_eq!(u16::from_le_bytes([b[14], b[15]]) >> 1 & 0xff, 0x80);
    }

    #[test]
    fn fabrics_direction_from_fctype() {
        let connect = Sqe {
            opcode: opcode::FABRICS,
            nsid: 0x01,
            ..Default::default()
        };
        assert_eq!(connect.data_direction(), Direction::HostToController);
        let get = Sqe {
            opcode: opcode::FABRICS,
            nsid: 0x04,
            ..Default::default()
        };
        assert_eq!(get.data_direction(), Direction::None);
        let read = Sqe {
            opcode: opcode::NVM_READ,
            ..Default::default()
        };
        assert_eq!(read.data_direction(), Direction::ControllerToHost);
    }
}
