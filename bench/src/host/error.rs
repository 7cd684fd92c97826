//! Typed errors of the host library. Each variant says what the target (or the caller) did wrong.

use std::time::Duration;

use nvmfd_transport::proto::status::Status;
use nvmfd_transport::proto::tcp::{fes, pdu_type, FatalError};

/// Everything that can go wrong talking to a target.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A socket call failed (connect refused, reset, ...).
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),

    /// Nothing arrived from the target in time.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        waiting_for: String,
        after: Duration,
    },

    /// The target closed the TCP connection (read returned 0 or the connection was reset).
    #[error("target closed the connection while waiting for {waiting_for}")]
    ConnectionClosed { waiting_for: String },

    /// The target sent a PDU that fails the framing checks of `parse_pdu` (bad type, length,
    /// offset, digest flag...). The host answered with an H2CTermReq carrying the same values.
    #[error("target sent a malformed PDU (type {pdu_type:#04x}): {source}")]
    MalformedPdu {
        pdu_type: u8,
        #[source]
        source: FatalError,
    },

    /// The header digest of a PDU from the target did not match (fatal for the connection).
    #[error("header digest mismatch in a {} PDU from the target", pdu_name(*pdu_type))]
    HeaderDigest { pdu_type: u8 },

    /// The data digest of a C2HData PDU did not match: the command's data is corrupt. The
    /// connection stays usable; only that command fails.
    #[error("data digest mismatch in a {} PDU for command {cid}", pdu_name(*pdu_type))]
    DataDigest { pdu_type: u8, cid: u16 },

    /// The target sent a C2HTermReq and (presumably) closed the connection.
    #[error("target terminated the connection with a C2HTermReq: {} (fes {fes:#x}, fei {fei:#x})", fes_name(*fes))]
    TerminatedByTarget { fes: u16, fei: u32 },

    /// A well-formed PDU that the target must not send at this point.
    #[error("unexpected {} PDU from the target: {context}", pdu_name(*pdu_type))]
    UnexpectedPdu { pdu_type: u8, context: String },

    /// A well-formed PDU whose contents break the protocol (unknown command ID, data offset out of
    /// range, R2T for in-capsule data...).
    #[error("target violated the NVMe/TCP protocol: {0}")]
    Protocol(String),

    /// ICReq/ICResp negotiation failed (refused digests, bad MAXH2CDATA, ...).
    #[error("connection initialization failed: {0}")]
    Negotiation(String),

    /// A command completed with an error status where the helper needs success.
    #[error("{command} failed: {status} (dw0 {dw0:#x})")]
    CommandFailed {
        command: &'static str,
        status: Status,
        dw0: u32,
    },

    /// CSTS.CFS was set while enabling or shutting down the controller.
    #[error("controller fatal status (CSTS {csts:#x}) while {doing}")]
    ControllerFatal { csts: u32, doing: &'static str },

    /// The connection was shut down after an earlier fatal error and cannot be used any more.
    #[error("connection unusable after an earlier error: {0}")]
    ConnectionDead(String),

    /// Every command identifier of the queue is in use.
    #[error("queue full: {0} commands already in flight")]
    QueueFull(usize),

    /// The caller asked for something the host cannot express.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl HostError {
    /// The NVMe status of a [`HostError::CommandFailed`].
    pub fn status(&self) -> Option<Status> {
        match self {
            HostError::CommandFailed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for [`HostError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, HostError::Timeout { .. })
    }

    /// True when the target ended the connection: closed it, or sent a C2HTermReq.
    pub fn is_connection_closed(&self) -> bool {
        matches!(
            self,
            HostError::ConnectionClosed { .. } | HostError::TerminatedByTarget { .. }
        )
    }

    /// Whether the connection can still be used after this error.
    pub(crate) fn is_fatal(&self) -> bool {
        !matches!(
            self,
            HostError::Timeout { .. }
                | HostError::DataDigest { .. }
                | HostError::CommandFailed { .. }
                | HostError::QueueFull(_)
                | HostError::InvalidArgument(_)
        )
    }
}

/// Result alias of the host library.
pub type Result<T> = std::result::Result<T, HostError>;

/// Human name of a PDU type, for messages.
pub fn pdu_name(t: u8) -> &'static str {
    match t {
        pdu_type::IC_REQ => "ICReq",
        pdu_type::IC_RESP => "ICResp",
        pdu_type::H2C_TERM_REQ => "H2CTermReq",
        pdu_type::C2H_TERM_REQ => "C2HTermReq",
        pdu_type::CAPSULE_CMD => "CapsuleCmd",
        pdu_type::CAPSULE_RESP => "CapsuleResp",
        pdu_type::H2C_DATA => "H2CData",
        pdu_type::C2H_DATA => "C2HData",
        pdu_type::R2T => "R2T",
        _ => "unknown",
    }
}

/// Human name of a fatal error status.
pub fn fes_name(f: u16) -> &'static str {
    match f {
        fes::INVALID_HEADER_FIELD => "invalid PDU header field",
        fes::PDU_SEQUENCE_ERROR => "PDU sequence error",
        fes::HEADER_DIGEST_ERROR => "header digest error",
        fes::DATA_OUT_OF_RANGE => "data transfer out of range",
        fes::R2T_LIMIT_EXCEEDED => "R2T limit exceeded",
        fes::UNSUPPORTED_PARAMETER => "unsupported parameter",
        _ => "unknown fatal error",
    }
}
