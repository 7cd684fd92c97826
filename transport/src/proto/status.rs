//! NVMe completion status: status code type (SCT), status code (SC) and the Do Not Retry bit.

/// A completion status. `Status::SUCCESS` is all zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Status {
    pub const fn generic(sc: u8) -> Self {
        Status {
            sct: 0,
            sc,
            dnr: true,
        }
    }
    pub const fn command_specific(sc: u8) -> Self {
        Status {
            sct: 1,
            sc,
            dnr: true,
        }
    }
    pub const fn media(sc: u8) -> Self {
        Status {
            sct: 2,
            sc,
            dnr: false,
        }
    }

    pub const SUCCESS: Status = Status {
        sct: 0,
        sc: 0,
        dnr: false,
    };
    // Generic command status (SCT 0).
    pub const INVALID_OPCODE: Status = Status::generic(0x01);
    pub const INVALID_FIELD: Status = Status::generic(0x02);
    pub const CID_CONFLICT: Status = Status::generic(0x03);
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL_ERROR: Status = Status {
        sct: 0,
        sc: 0x06,
        dnr: false,
    };
    pub const ABORTED_SQ_DELETION: Status = Status {
        sct: 0,
        sc: 0x08,
        dnr: false,
    };
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0B);
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0C);
    pub const INVALID_SGL_SEGMENT_DESCRIPTOR: Status = Status::generic(0x0D);
    pub const INVALID_NUMBER_OF_SGL_DESCRIPTORS: Status = Status::generic(0x0E);
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0F);
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::generic(0x11);
    pub const INVALID_CMB_USE: Status = Status::generic(0x12);
    pub const SGL_OFFSET_INVALID: Status = Status::generic(0x16);
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81);
    // Command specific status (SCT 1).
    pub const INVALID_QUEUE_IDENTIFIER: Status = Status::command_specific(0x01);
    pub const INVALID_QUEUE_SIZE: Status = Status::command_specific(0x02);
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = Status::command_specific(0x05);
    pub const INVALID_LOG_PAGE: Status = Status::command_specific(0x09);
    pub const FEATURE_NOT_SAVEABLE: Status = Status::command_specific(0x0D);
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::command_specific(0x80);
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::command_specific(0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::command_specific(0x82);
    pub const CONNECT_INVALID_HOST: Status = Status::command_specific(0x84);
    // Media and data integrity errors (SCT 2).
    pub const WRITE_FAULT: Status = Status::media(0x80);
    pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);

    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 15 status bits of a completion queue entry's status field (phase bit clear).
    pub fn to_field(self) -> u16 {
        ((self.sc as u16) << 1) | (((self.sct & 7) as u16) << 9) | ((self.dnr as u16) << 15)
    }

    pub fn from_field(f: u16) -> Self {
        Status {
            sc: ((f >> 1) & 0xff) as u8,
            sct: ((f >> 9) & 7) as u8,
            dnr: f & 0x8000 != 0,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match (self.sct, self.sc) {
            (0, 0x00) => "success",
            (0, 0x01) => "invalid opcode",
            (0, 0x02) => "invalid field in command",
            (0, 0x03) => "command ID conflict",
            (0, 0x04) => "data transfer error",
            (0, 0x06) => "internal error",
            (0, 0x08) => "aborted: SQ deletion",
            (0, 0x0B) => "invalid namespace or format",
            (0, 0x0C) => "command sequence error",
            (0, 0x0D) => "invalid SGL segment descriptor",
            (0, 0x0E) => "invalid number of SGL descriptors",
            (0, 0x0F) => "data SGL length invalid",
            (0, 0x11) => "SGL descriptor type invalid",
            (0, 0x12) => "invalid use of controller memory buffer",
            (0, 0x80) => "LBA out of range",
            (1, 0x01) => "invalid queue identifier",
            (1, 0x02) => "invalid queue size",
            (1, 0x05) => "asynchronous event request limit exceeded",
            (1, 0x09) => "invalid log page",
            (1, 0x80) => "connect: incompatible format",
            (1, 0x81) => "connect: controller busy",
            (1, 0x82) => "connect: invalid parameters",
            (1, 0x84) => "connect: invalid host",
            (2, 0x80) => "write fault",
            (2, 0x81) => "unrecovered read error",
            _ => "status",
        };
        write!(
            f,
            "{name} (sct {:#x}, sc {:#04x}{})",
            self.sct,
            self.sc,
            if self.dnr { ", dnr" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_round_trip() {
        for s in [
            Status::SUCCESS,
            Status::LBA_OUT_OF_RANGE,
            Status::CONNECT_INVALID_HOST,
            Status::WRITE_FAULT,
        ] {
            assert_eq!(Status::from_field(s.to_field()), s);
        }
        // SC 0x80 in bits 8:1, SCT 1 in bits 11:9, DNR bit 15.
        assert_eq!(
            Status::CONNECT_INVALID_HOST.to_field(),
            (0x84 << 1) | (1 << 9) | 0x8000
        );
    }
}
