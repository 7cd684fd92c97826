//! NVMe/TCP PDUs: the common header, each PDU type's header, digests, and a sans-IO framer that
//! finds whole PDUs in a byte stream and checks them.
//!
//! Layout of every PDU: common header (8 bytes) + type-specific header (hlen bytes in all), an optional
//! header digest (CRC32C of the hlen header bytes), padding up to PDO, data, and an optional data
//! digest (CRC32C of the data).

use super::le;
use super::nvme::{Cqe, Sqe};

/// PDU types.
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common header flags.
pub mod flags {
    pub const HDGST: u8 = 0x01;
    pub const DDGST: u8 = 0x02;
    /// Last data PDU of a command (H2CData, C2HData).
    pub const DATA_LAST: u8 = 0x04;
    /// C2HData only: the command succeeded and no CapsuleResp follows.
    pub const DATA_SUCCESS: u8 = 0x08;
}

/// Fatal error status values carried by termination requests.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const R2T_LIMIT_EXCEEDED: u16 = 0x05;
    /// The same value's later name: an H2CData PDU carries more than MAXH2CDATA.
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

pub const COMMON_HEADER_SIZE: usize = 8;
pub const DIGEST_SIZE: usize = 4;
/// A termination request carries at most this many bytes of the PDU header that caused it.
pub const TERM_REQ_MAX_DATA: usize = 128;

/// The header length each PDU type must declare, or None for an unknown type.
pub const fn header_len(pdu_type: u8) -> Option<usize> {
    Some(match pdu_type {
        pdu_type::IC_REQ | pdu_type::IC_RESP => 128,
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => 24,
        pdu_type::CAPSULE_CMD => 8 + Sqe::SIZE,
        pdu_type::CAPSULE_RESP => 8 + Cqe::SIZE,
        pdu_type::H2C_DATA | pdu_type::C2H_DATA | pdu_type::R2T => 24,
        _ => return None,
    })
}

// Wire sizes (NVMe/TCP transport spec, PDU headers): the common header is 8 bytes, a digest 4;
// HLEN is 128 for ICReq/ICResp, 24 for H2CTermReq/C2HTermReq, 72 for CapsuleCmd (8 + a 64-byte
// SQE), 24 for CapsuleResp (8 + a 16-byte CQE), and 24 for H2CData, C2HData and R2T. The framer's
// table, the constants and the arrays the codecs use must agree with them; a change to any fails
// the build.
const _: () = {
    assert!(COMMON_HEADER_SIZE == 8);
    assert!(DIGEST_SIZE == 4);
    assert!(TERM_REQ_MAX_DATA == 128);
    assert!(matches!(header_len(pdu_type::IC_REQ), Some(128)));
    assert!(matches!(header_len(pdu_type::IC_RESP), Some(128)));
    assert!(matches!(header_len(pdu_type::H2C_TERM_REQ), Some(24)));
    assert!(matches!(header_len(pdu_type::C2H_TERM_REQ), Some(24)));
    assert!(matches!(header_len(pdu_type::CAPSULE_CMD), Some(72)));
    assert!(matches!(header_len(pdu_type::CAPSULE_RESP), Some(24)));
    assert!(matches!(header_len(pdu_type::H2C_DATA), Some(24)));
    assert!(matches!(header_len(pdu_type::C2H_DATA), Some(24)));
    assert!(matches!(header_len(pdu_type::R2T), Some(24)));
    // PDU type 0x08 is reserved.
    assert!(header_len(0x08).is_none());
};
const _: fn(&[u8; COMMON_HEADER_SIZE]) -> CommonHeader = CommonHeader::decode;
const _: fn(&CommonHeader) -> [u8; COMMON_HEADER_SIZE] = CommonHeader::encode;
// The type-specific part of the data PDUs' and R2T's 24-byte header.
const _: fn(&DataHeader) -> [u8; 24 - COMMON_HEADER_SIZE] = DataHeader::specific;

/// Whether a PDU type carries digests once they are negotiated.
fn digestible(pdu_type: u8) -> bool {
    !matches!(
        pdu_type,
        pdu_type::IC_REQ | pdu_type::IC_RESP | pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ
    )
}

/// The 8-byte common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    pub fn decode(b: &[u8; 8]) -> Self {
        CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: le::u32(b, 4),
        }
    }

    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.pdu_type;
        b[1] = self.flags;
        b[2] = self.hlen;
        b[3] = self.pdo;
        le::put_u32(&mut b, 4, self.plen);
        b
    }
}

/// Initialize Connection Request (host to controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    /// Host PDU data alignment: C2H data starts at a multiple of (hpda + 1) * 4 bytes.
    pub hpda: u8,
    pub digests: Digests,
    /// Maximum outstanding R2Ts per command, 0-based.
    pub maxr2t: u32,
}

/// Initialize Connection Response (controller to host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    /// Controller PDU data alignment for H2C data, (cpda + 1) * 4 bytes.
    pub cpda: u8,
    pub digests: Digests,
    /// Largest H2CData payload the controller accepts.
    pub maxh2cdata: u32,
}

/// Which digests are on for a connection (or requested in ICReq / granted in ICResp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    fn to_byte(self) -> u8 {
        (self.header as u8) | ((self.data as u8) << 1)
    }
    fn from_byte(b: u8) -> Self {
        Digests {
            header: b & 1 != 0,
            data: b & 2 != 0,
        }
    }
}

/// H2CData and C2HData headers (for C2HData `ttag` is reserved and zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    pub cccid: u16,
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
}

/// Ready to Transfer: the controller asks for `length` bytes at `offset` of command `cccid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2t {
    pub cccid: u16,
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
}

/// A decoded PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    IcReq(IcReq),
    IcResp(IcResp),
    /// H2CTermReq or C2HTermReq: fatal error status and information.
    TermReq {
        fes: u16,
        fei: u32,
    },
    CapsuleCmd(Sqe),
    CapsuleResp(Cqe),
    H2CData(DataHeader),
    C2HData(DataHeader),
    R2t(R2t),
}

/// A whole PDU found in a receive buffer.
#[derive(Debug)]
pub struct Pdu<'a> {
    pub ch: CommonHeader,
    pub header: Header,
    /// The PDU's data (between PDO and the data digest), possibly empty.
    pub data: &'a [u8],
    /// False when the data digest did not match (the PDU is otherwise well formed).
    pub data_digest_ok: bool,
    /// Bytes of the stream this PDU occupies.
    pub len: usize,
}

/// A malformed PDU: the connection must be terminated with a TermReq carrying these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fatal NVMe/TCP error (fes {fes:#x}, fei {fei}): {reason}")]
pub struct FatalError {
    pub fes: u16,
    /// For an invalid header field, the byte offset of the field in the PDU.
    pub fei: u32,
    pub reason: &'static str,
}

fn fatal(fes: u16, fei: u32, reason: &'static str) -> FatalError {
    FatalError { fes, fei, reason }
}

/// A PDU whose header (and header digest) has arrived and checks out; its data may not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub ch: CommonHeader,
    pub header: Header,
    /// Where the data starts (PDO) and how long it is, in bytes of the PDU.
    pub data_offset: usize,
    pub data_len: usize,
    /// 4 when a data digest follows the data, else 0.
    pub data_digest_len: usize,
}

impl Frame {
    /// Bytes of the stream the whole PDU occupies.
    pub fn len(&self) -> usize {
        self.ch.plen as usize
    }

    pub fn is_empty(&self) -> bool {
        self.ch.plen == 0
    }

    /// The whole PDU this frame heads, once all of it is in `buf` (which starts with the
    /// frame's header); None while data bytes are still missing.
    pub fn pdu<'a>(&self, buf: &'a [u8]) -> Option<Pdu<'a>> {
        let plen = self.len();
        if buf.len() < plen {
            return None;
        }
        let data = &buf[self.data_offset..self.data_offset + self.data_len];
        let data_digest_ok = self.data_digest_len == 0
            || crc32c::crc32c(data) == le::u32(buf, plen - self.data_digest_len);
        Some(Pdu {
            ch: self.ch,
            header: self.header,
            data,
            data_digest_ok,
            len: plen,
        })
    }
}

/// Check the header of the first PDU in `buf` once its header (and header digest) are there,
/// before its data: Ok(None) while more header bytes are needed. `digests` are those negotiated
/// for the connection (none before ICReq/ICResp), `max_data` the largest data payload this side
/// accepts in one PDU.
pub fn parse_header(
    buf: &[u8],
    digests: Digests,
    max_data: u32,
) -> Result<Option<Frame>, FatalError> {
    let Some(chb) = buf.get(..COMMON_HEADER_SIZE) else {
        return Ok(None);
    };
    let ch = CommonHeader::decode(chb.try_into().expect("8 bytes"));
    let hlen =
        header_len(ch.pdu_type).ok_or(fatal(fes::INVALID_HEADER_FIELD, 0, "unknown PDU type"))?;
    if ch.hlen as usize != hlen {
        return Err(fatal(
            fes::INVALID_HEADER_FIELD,
            2,
            "wrong header length for PDU type",
        ));
    }
    let can_digest = digestible(ch.pdu_type);
    let hd = if can_digest && digests.header {
        DIGEST_SIZE
    } else {
        0
    };
    if can_digest && (ch.flags & flags::HDGST != 0) != digests.header {
        return Err(fatal(
            fes::INVALID_HEADER_FIELD,
            1,
            "header digest flag disagrees with negotiation",
        ));
    }
    let plen = ch.plen as usize;
    let data_start = hlen + hd;
    if plen < data_start {
        return Err(fatal(
            fes::INVALID_HEADER_FIELD,
            4,
            "PDU length shorter than its header",
        ));
    }
    let has_data = plen > data_start;
    let (dd, pdo) = if has_data {
        if matches!(
            ch.pdu_type,
            pdu_type::IC_REQ | pdu_type::IC_RESP | pdu_type::CAPSULE_RESP | pdu_type::R2T
        ) {
            return Err(fatal(
                fes::INVALID_HEADER_FIELD,
                4,
                "PDU length too long for a PDU type without data",
            ));
        }
        let term = matches!(ch.pdu_type, pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ);
        let dd = if !term && digests.data {
            DIGEST_SIZE
        } else {
            0
        };
        if !term && (ch.flags & flags::DDGST != 0) != digests.data {
            return Err(fatal(
                fes::INVALID_HEADER_FIELD,
                1,
                "data digest flag disagrees with negotiation",
            ));
        }
        let pdo = if term { data_start } else { ch.pdo as usize };
        if pdo < data_start || pdo + dd > plen {
            return Err(fatal(
                fes::INVALID_HEADER_FIELD,
                3,
                "PDU data offset outside the PDU",
            ));
        }
        let limit = if term {
            TERM_REQ_MAX_DATA
        } else {
            max_data as usize
        };
        if plen - pdo - dd > limit {
            // An H2CData PDU past MAXH2CDATA has its own status (NVMe/TCP 1.0, C2HTermReq
            // FES 05h); other PDUs too large for this side are out of range.
            return Err(if ch.pdu_type == pdu_type::H2C_DATA {
                fatal(
                    fes::DATA_LIMIT_EXCEEDED,
                    0,
                    "H2CData larger than MAXH2CDATA",
                )
            } else {
                fatal(fes::DATA_OUT_OF_RANGE, 4, "PDU data larger than allowed")
            });
        }
        (dd, pdo)
    } else {
        (0, data_start)
    };
    if buf.len() < data_start {
        return Ok(None);
    }
    if hd != 0 {
        let want = le::u32(buf, hlen);
        if crc32c::crc32c(&buf[..hlen]) != want {
            return Err(fatal(fes::HEADER_DIGEST_ERROR, 0, "header digest mismatch"));
        }
    }
    let data_len = plen - pdo - dd;
    let h = &buf[..hlen];
    let header = match ch.pdu_type {
        pdu_type::IC_REQ | pdu_type::IC_RESP => {
            if plen != 128 {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    4,
                    "ICReq/ICResp must be 128 bytes",
                ));
            }
            if ch.pdu_type == pdu_type::IC_REQ {
                Header::IcReq(IcReq {
                    pfv: le::u16(h, 8),
                    hpda: h[10],
                    digests: Digests::from_byte(h[11]),
                    maxr2t: le::u32(h, 12),
                })
            } else {
                Header::IcResp(IcResp {
                    pfv: le::u16(h, 8),
                    cpda: h[10],
                    digests: Digests::from_byte(h[11]),
                    maxh2cdata: le::u32(h, 12),
                })
            }
        }
        pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ => Header::TermReq {
            fes: le::u16(h, 8),
            fei: le::u32(h, 10),
        },
        pdu_type::CAPSULE_CMD => {
            Header::CapsuleCmd(Sqe::decode(h[8..72].try_into().expect("64 bytes")))
        }
        pdu_type::CAPSULE_RESP => {
            Header::CapsuleResp(Cqe::decode(h[8..24].try_into().expect("16 bytes")))
        }
        pdu_type::H2C_DATA | pdu_type::C2H_DATA => {
            let dh = DataHeader {
                cccid: le::u16(h, 8),
                ttag: le::u16(h, 10),
                offset: le::u32(h, 12),
                length: le::u32(h, 16),
            };
            if dh.length as usize != data_len {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    16,
                    "data length disagrees with PDU length",
                ));
            }
            if ch.pdu_type == pdu_type::H2C_DATA {
                Header::H2CData(dh)
            } else {
                Header::C2HData(dh)
            }
        }
        _ => Header::R2t(R2t {
            cccid: le::u16(h, 8),
            ttag: le::u16(h, 10),
            offset: le::u32(h, 12),
            length: le::u32(h, 16),
        }),
    };
    Ok(Some(Frame {
        ch,
        header,
        data_offset: pdo,
        data_len,
        data_digest_len: dd,
    }))
}

/// Find the first whole PDU in `buf`. Returns Ok(None) while more bytes are needed.
/// Arguments as for [`parse_header`].
pub fn parse_pdu(
    buf: &[u8],
    digests: Digests,
    max_data: u32,
) -> Result<Option<Pdu<'_>>, FatalError> {
    Ok(parse_header(buf, digests, max_data)?.and_then(|f| f.pdu(buf)))
}

/// Append one PDU to `out`: common header, `specific` (the type-specific header bytes), header
/// digest, padding to a multiple of `data_align` bytes, data and data digest, as negotiated.
/// `data` is None for PDUs without data. Returns the number of bytes appended.
pub fn encode_pdu(
    out: &mut Vec<u8>,
    pdu_type: u8,
    extra_flags: u8,
    specific: &[u8],
    data: Option<&[u8]>,
    digests: Digests,
    data_align: usize,
) -> usize {
    let start = out.len();
    let data_digest = encode_pdu_head(
        out,
        pdu_type,
        extra_flags,
        specific,
        data.map(|d| d.len()),
        digests,
        data_align,
    );
    if let Some(d) = data {
        out.extend_from_slice(d);
        if data_digest {
            out.extend_from_slice(&crc32c::crc32c(d).to_le_bytes());
        }
    }
    out.len() - start
}

/// Append everything of a PDU that comes before its data (of `data_len` bytes, if any): common
/// header, type-specific header, header digest and padding. Returns whether a data digest must
/// follow the data. With [`encode_pdu`] this lets a sender pass the data from elsewhere
/// (scatter-gather) instead of copying it behind the header.
pub fn encode_pdu_head(
    out: &mut Vec<u8>,
    pdu_type: u8,
    extra_flags: u8,
    specific: &[u8],
    data_len: Option<usize>,
    digests: Digests,
    data_align: usize,
) -> bool {
    let start = out.len();
    let hlen = COMMON_HEADER_SIZE + specific.len();
    let can_digest = digestible(pdu_type);
    let hd = if can_digest && digests.header {
        DIGEST_SIZE
    } else {
        0
    };
    let term = matches!(pdu_type, pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ);
    let (pdo, dd, dlen) = match data_len {
        Some(n) if !term => {
            let pdo = (hlen + hd).div_ceil(data_align.max(1)) * data_align.max(1);
            (pdo, if digests.data { DIGEST_SIZE } else { 0 }, n)
        }
        Some(n) => (hlen, 0, n),
        None => (0, 0, 0),
    };
    let plen = if data_len.is_some() {
        pdo + dlen + dd
    } else {
        hlen + hd
    };
    let mut fl = extra_flags;
    if hd != 0 {
        fl |= flags::HDGST;
    }
    if dd != 0 {
        fl |= flags::DDGST;
    }
    let ch = CommonHeader {
        pdu_type,
        flags: fl,
        hlen: hlen as u8,
        pdo: if data_len.is_some() { pdo as u8 } else { 0 },
        plen: plen as u32,
    };
    out.extend_from_slice(&ch.encode());
    out.extend_from_slice(specific);
    if hd != 0 {
        let crc = crc32c::crc32c(&out[start..start + hlen]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    if data_len.is_some() {
        out.resize(start + pdo, 0);
    }
    dd != 0
}

impl IcReq {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut s = [0u8; 120];
        le::put_u16(&mut s, 0, self.pfv);
        s[2] = self.hpda;
        s[3] = self.digests.to_byte();
        le::put_u32(&mut s, 4, self.maxr2t);
        encode_pdu(out, pdu_type::IC_REQ, 0, &s, None, Digests::default(), 1);
    }
}

impl IcResp {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut s = [0u8; 120];
        le::put_u16(&mut s, 0, self.pfv);
        s[2] = self.cpda;
        s[3] = self.digests.to_byte();
        le::put_u32(&mut s, 4, self.maxh2cdata);
        encode_pdu(out, pdu_type::IC_RESP, 0, &s, None, Digests::default(), 1);
    }
}

impl DataHeader {
    fn specific(&self) -> [u8; 16] {
        let mut s = [0u8; 16];
        le::put_u16(&mut s, 0, self.cccid);
        le::put_u16(&mut s, 2, self.ttag);
        le::put_u32(&mut s, 4, self.offset);
        le::put_u32(&mut s, 8, self.length);
        s
    }

    /// Append the part of a C2HData PDU that precedes its `self.length` bytes of data; returns
    /// whether a data digest must follow the data.
    pub fn encode_c2h_head(
        &self,
        out: &mut Vec<u8>,
        extra_flags: u8,
        digests: Digests,
        align: usize,
    ) -> bool {
        encode_pdu_head(
            out,
            pdu_type::C2H_DATA,
            extra_flags,
            &self.specific(),
            Some(self.length as usize),
            digests,
            align,
        )
    }

    /// Append an H2CData (host) or C2HData (controller) PDU carrying `data`.
    pub fn encode(
        &self,
        out: &mut Vec<u8>,
        c2h: bool,
        extra_flags: u8,
        data: &[u8],
        digests: Digests,
        align: usize,
    ) {
        let t = if c2h {
            pdu_type::C2H_DATA
        } else {
            pdu_type::H2C_DATA
        };
        encode_pdu(
            out,
            t,
            extra_flags,
            &self.specific(),
            Some(data),
            digests,
            align,
        );
    }
}

impl R2t {
    pub fn encode(&self, out: &mut Vec<u8>, digests: Digests) {
        let d = DataHeader {
            cccid: self.cccid,
            ttag: self.ttag,
            offset: self.offset,
            length: self.length,
        };
        encode_pdu(out, pdu_type::R2T, 0, &d.specific(), None, digests, 1);
    }
}

/// Append a CapsuleCmd with optional in-capsule data.
pub fn encode_capsule_cmd(
    out: &mut Vec<u8>,
    sqe: &Sqe,
    data: Option<&[u8]>,
    digests: Digests,
    align: usize,
) {
    encode_pdu(
        out,
        pdu_type::CAPSULE_CMD,
        0,
        &sqe.encode(),
        data.filter(|d| !d.is_empty()),
        digests,
        align,
    );
}

/// Append a CapsuleResp.
pub fn encode_capsule_resp(out: &mut Vec<u8>, cqe: &Cqe, digests: Digests) {
    encode_pdu(
        out,
        pdu_type::CAPSULE_RESP,
        0,
        &cqe.encode(),
        None,
        digests,
        1,
    );
}

/// Append a termination request (`c2h` true from the controller) quoting up to 128 bytes of the
/// offending PDU.
pub fn encode_term_req(out: &mut Vec<u8>, c2h: bool, fes: u16, fei: u32, offending: &[u8]) {
    let mut s = [0u8; 16];
    le::put_u16(&mut s, 0, fes);
    le::put_u32(&mut s, 2, fei);
    let t = if c2h {
        pdu_type::C2H_TERM_REQ
    } else {
        pdu_type::H2C_TERM_REQ
    };
    let quote = &offending[..offending.len().min(TERM_REQ_MAX_DATA)];
    encode_pdu(
        out,
        t,
        0,
        &s,
        (!quote.is_empty()).then_some(quote),
        Digests::default(),
        1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::nvme::SglDescriptor;

    const BOTH: Digests = Digests {
        header: true,
        data: true,
    };

    #[test]
    fn icreq_round_trip() {
        let mut out = Vec::new();
        let req = IcReq {
            pfv: 0,
            hpda: 0,
            digests: BOTH,
            maxr2t: 0,
        };
        req.encode(&mut out);
        assert_eq!(out.len(), 128);
        let pdu = parse_pdu(&out, Digests::default(), 0).unwrap().unwrap();
        assert_eq!(pdu.header, Header::IcReq(req));
        assert_eq!(pdu.len, 128);
    }

    #[test]
    fn capsule_with_data_and_digests_round_trip() {
        let sqe = Sqe {
            opcode: 1,
            cid: 3,
            dptr: SglDescriptor::in_capsule(0, 5),
            ..Default::default()
        };
        let mut out = Vec::new();
        encode_capsule_cmd(&mut out, &sqe, Some(b"hello"), BOTH, 4);
        // 72 header + 4 hdgst = 76 = pdo, then 5 data + 4 ddgst.
        assert_eq!(out[3], 76);
        assert_eq!(out.len(), 85);
        for cut in 0..out.len() {
            assert!(
                parse_pdu(&out[..cut], BOTH, 8192).unwrap().is_none(),
                "partial PDU at {cut}"
            );
        }
        let pdu = parse_pdu(&out, BOTH, 8192).unwrap().unwrap();
        assert_eq!(pdu.header, Header::CapsuleCmd(sqe));
        assert_eq!(pdu.data, b"hello");
        assert!(pdu.data_digest_ok);
    }

    #[test]
    fn bad_header_digest_is_fatal() {
        let mut out = Vec::new();
        encode_capsule_resp(&mut out, &Cqe::default(), BOTH);
        out[12] ^= 1;
        assert_eq!(
            parse_pdu(&out, BOTH, 0).unwrap_err().fes,
            fes::HEADER_DIGEST_ERROR
        );
    }

    #[test]
    fn bad_data_digest_is_reported_not_fatal() {
        let mut out = Vec::new();
        DataHeader {
            cccid: 1,
            ttag: 2,
            offset: 0,
            length: 4,
        }
        .encode(&mut out, false, flags::DATA_LAST, b"abcd", BOTH, 4);
        let n = out.len();
        out[n - 5] ^= 0xff;
        let pdu = parse_pdu(&out, BOTH, 8192).unwrap().unwrap();
        assert!(!pdu.data_digest_ok);
    }

    #[test]
    fn malformed_headers() {
        let mut out = Vec::new();
        encode_capsule_resp(&mut out, &Cqe::default(), Digests::default());
        let mut bad = out.clone();
        bad[0] = 0x0f;
        assert_eq!(parse_pdu(&bad, Digests::default(), 0).unwrap_err().fei, 0);
        let mut bad = out.clone();
        bad[2] = 30;
        assert_eq!(parse_pdu(&bad, Digests::default(), 0).unwrap_err().fei, 2);
        let mut bad = out.clone();
        bad[4] = 10;
        assert_eq!(parse_pdu(&bad, Digests::default(), 0).unwrap_err().fei, 4);
        // Digest flag set although digests are off.
        let mut bad = out.clone();
        bad[1] = flags::HDGST;
        assert_eq!(parse_pdu(&bad, Digests::default(), 0).unwrap_err().fei, 1);
    }

    #[test]
    fn bad_pdo_and_oversize_data() {
        let sqe = Sqe::default();
        let mut out = Vec::new();
        encode_capsule_cmd(&mut out, &sqe, Some(&[1u8; 64]), Digests::default(), 1);
        let mut bad = out.clone();
        bad[3] = 10;
        assert_eq!(
            parse_pdu(&bad, Digests::default(), 8192).unwrap_err().fei,
            3
        );
        assert_eq!(
            parse_pdu(&out, Digests::default(), 32).unwrap_err().fes,
            fes::DATA_OUT_OF_RANGE
        );
        let mut h2c = Vec::new();
        DataHeader {
            cccid: 1,
            ttag: 0,
            offset: 0,
            length: 64,
        }
        .encode(
            &mut h2c,
            false,
            flags::DATA_LAST,
            &[1u8; 64],
            Digests::default(),
            4,
        );
        assert_eq!(
            parse_header(&h2c, Digests::default(), 32).unwrap_err().fes,
            fes::DATA_LIMIT_EXCEEDED,
            "H2CData past MAXH2CDATA"
        );
    }

    #[test]
    fn header_checks_before_the_data_arrives() {
        let mut out = Vec::new();
        DataHeader {
            cccid: 1,
            ttag: 2,
            offset: 0,
            length: 100,
        }
        .encode(&mut out, false, 0, &[7u8; 100], BOTH, 4);
        // The 24-byte header and its digest are enough.
        assert!(parse_header(&out[..27], BOTH, 8192).unwrap().is_none());
        let f = parse_header(&out[..28], BOTH, 8192).unwrap().unwrap();
        assert_eq!(
            (f.data_offset, f.data_len, f.data_digest_len, f.len()),
            (28, 100, 4, 132)
        );
        assert!(parse_pdu(&out[..28], BOTH, 8192).unwrap().is_none());
        let mut bad = out.clone();
        bad[9] ^= 1;
        assert_eq!(
            parse_header(&bad[..28], BOTH, 8192).unwrap_err().fes,
            fes::HEADER_DIGEST_ERROR
        );
    }

    #[test]
    fn c2h_head_then_data_equals_whole_pdu() {
        for digests in [Digests::default(), BOTH] {
            let dh = DataHeader {
                cccid: 4,
                ttag: 0,
                offset: 0,
                length: 10,
            };
            let mut whole = Vec::new();
            dh.encode(
                &mut whole,
                true,
                flags::DATA_LAST,
                b"0123456789",
                digests,
                8,
            );
            let mut parts = Vec::new();
            if dh.encode_c2h_head(&mut parts, flags::DATA_LAST, digests, 8) {
                parts.extend_from_slice(b"0123456789");
                parts.extend_from_slice(&crc32c::crc32c(b"0123456789").to_le_bytes());
            } else {
                parts.extend_from_slice(b"0123456789");
            }
            assert_eq!(parts, whole);
        }
    }

    #[test]
    fn term_req_quotes_offender() {
        let mut out = Vec::new();
        encode_term_req(&mut out, true, fes::PDU_SEQUENCE_ERROR, 0, &[9u8; 200]);
        assert_eq!(out.len(), 24 + 128);
        let pdu = parse_pdu(&out, BOTH, 0).unwrap().unwrap();
        assert_eq!(
            pdu.header,
            Header::TermReq {
                fes: fes::PDU_SEQUENCE_ERROR,
                fei: 0
            }
        );
        assert_eq!(pdu.data.len(), 128);
    }
}
