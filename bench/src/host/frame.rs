//! Pure frame-building decisions of the host, kept free of sockets so they can be unit tested:
//! where a command's data goes (in the capsule or after an R2T) and how the data an R2T asks for
//! is cut into H2CData PDUs.

use nvmfd_transport::proto::nvme::{SglDescriptor, Sqe};
use nvmfd_transport::proto::tcp::{flags, DataHeader, Digests};

/// In-capsule data the admin queue accepts. Fabrics controllers report no IOCCSZ for the admin
/// queue; like the Linux host we assume 8 KiB.
pub const ADMIN_IN_CAPSULE_SIZE: usize = 8192;

/// Where a command's host-to-controller data travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlacement {
    /// No host-to-controller data.
    None,
    /// In the CapsuleCmd PDU, after the SQE.
    InCapsule,
    /// The controller asks for it with R2Ts; the host answers with H2CData PDUs.
    R2t,
}

/// In-capsule if `len` fits the queue's in-capsule size, else R2T.
pub fn choose_placement(len: usize, in_capsule_size: usize) -> DataPlacement {
    if len == 0 {
        DataPlacement::None
    } else if len <= in_capsule_size {
        DataPlacement::InCapsule
    } else {
        DataPlacement::R2t
    }
}

/// The in-capsule data size an I/O queue accepts, from an Identify Controller page:
/// IOCCSZ (bytes 1792..1796, in 16-byte units, including the 64-byte SQE) * 16 - 64.
pub fn in_capsule_size_from_identify(id: &[u8]) -> usize {
    if id.len() < 1796 {
        return 0;
    }
    let ioccsz = u32::from_le_bytes([id[1792], id[1793], id[1794], id[1795]]) as usize;
    (ioccsz * 16).saturating_sub(64)
}

/// Fill in a command's data pointer the way the Linux host does, unless the caller already set
/// one: PSDT = SGL (flags bit 6), and a single descriptor that is either in-capsule data at
/// offset 0 or a transport data block of `len` bytes (length 0 for commands without data).
/// Returns where host-to-controller data must go.
pub fn prepare_dptr(
    sqe: &mut Sqe,
    data_out_len: usize,
    data_in_len: usize,
    in_capsule_size: usize,
) -> DataPlacement {
    if sqe.dptr != SglDescriptor::default() {
        // The caller chose the descriptor; follow it.
        if data_out_len == 0 {
            return DataPlacement::None;
        }
        let d = sqe.dptr;
        return if d.sgl_type() == SglDescriptor::DATA_BLOCK
            && d.sub_type() == SglDescriptor::SUBTYPE_OFFSET
        {
            DataPlacement::InCapsule
        } else {
            DataPlacement::R2t
        };
    }
    if sqe.psdt() == 0 {
        sqe.flags |= 0x40;
    }
    let placement = choose_placement(data_out_len, in_capsule_size);
    sqe.dptr = match placement {
        DataPlacement::InCapsule => SglDescriptor::in_capsule(0, data_out_len as u32),
        DataPlacement::R2t => SglDescriptor::transport(data_out_len as u32),
        DataPlacement::None => SglDescriptor::transport(data_in_len as u32),
    };
    placement
}

/// One H2CData PDU to send: `len` bytes at command offset `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2cChunk {
    pub offset: u32,
    pub len: u32,
    pub last: bool,
}

/// Cut the R2T window `[offset, offset + len)` into H2CData PDUs of at most `maxh2cdata` bytes;
/// the last one carries DATA_LAST.
pub fn h2c_chunks(offset: u32, len: u32, maxh2cdata: u32) -> Vec<H2cChunk> {
    let max = maxh2cdata.max(1);
    let mut v = Vec::with_capacity(len.div_ceil(max) as usize);
    let mut done = 0u32;
    while done < len {
        let n = (len - done).min(max);
        v.push(H2cChunk {
            offset: offset + done,
            len: n,
            last: done + n == len,
        });
        done += n;
    }
    v
}

/// Append the H2CData PDUs answering one R2T to `out`. `window` is the data the R2T asked for
/// (`data[r2t.offset..r2t.offset + r2t.length]`). Returns how many PDUs were appended.
#[allow(clippy::too_many_arguments)]
pub fn encode_h2c_data(
    out: &mut Vec<u8>,
    cccid: u16,
    ttag: u16,
    offset: u32,
    window: &[u8],
    maxh2cdata: u32,
    digests: Digests,
    align: usize,
) -> usize {
    let chunks = h2c_chunks(offset, window.len() as u32, maxh2cdata);
    for c in &chunks {
        let start = (c.offset - offset) as usize;
        let dh = DataHeader {
            cccid,
            ttag,
            offset: c.offset,
            length: c.len,
        };
        let fl = if c.last { flags::DATA_LAST } else { 0 };
        dh.encode(
            out,
            false,
            fl,
            &window[start..start + c.len as usize],
            digests,
            align,
        );
    }
    chunks.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmfd_transport::proto::nvme::opcode;
    use nvmfd_transport::proto::tcp::{parse_pdu, Header};

    #[test]
    fn placement_decision() {
        assert_eq!(choose_placement(0, 8192), DataPlacement::None);
        assert_eq!(choose_placement(4096, 8192), DataPlacement::InCapsule);
        assert_eq!(choose_placement(8192, 8192), DataPlacement::InCapsule);
        assert_eq!(choose_placement(8193, 8192), DataPlacement::R2t);
        assert_eq!(choose_placement(512, 0), DataPlacement::R2t);
    }

    #[test]
    fn ioccsz_conversion() {
        let mut id = vec![0u8; 4096];
        id[1792..1796].copy_from_slice(&((8192u32 + 64) / 16).to_le_bytes());
        assert_eq!(in_capsule_size_from_identify(&id), 8192);
        id[1792..1796].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(in_capsule_size_from_identify(&id), 0);
        id[1792..1796].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(in_capsule_size_from_identify(&id), 0);
        assert_eq!(in_capsule_size_from_identify(&id[..100]), 0);
    }

    #[test]
    fn dptr_defaults_like_linux() {
        let mut w = Sqe {
            opcode: opcode::NVM_WRITE,
            ..Default::default()
        };
        assert_eq!(
            prepare_dptr(&mut w, 4096, 0, 8192),
            DataPlacement::InCapsule
        );
        assert_eq!(w.psdt(), 1);
        assert_eq!(w.dptr, SglDescriptor::in_capsule(0, 4096));

        let mut w = Sqe {
            opcode: opcode::NVM_WRITE,
            ..Default::default()
        };
        assert_eq!(prepare_dptr(&mut w, 16384, 0, 8192), DataPlacement::R2t);
        assert_eq!(w.dptr, SglDescriptor::transport(16384));

        let mut r = Sqe {
            opcode: opcode::NVM_READ,
            ..Default::default()
        };
        assert_eq!(prepare_dptr(&mut r, 0, 4096, 8192), DataPlacement::None);
        assert_eq!(r.dptr, SglDescriptor::transport(4096));
        assert_eq!(r.dptr.encode()[15], 0x5a);

        let mut f = Sqe {
            opcode: opcode::NVM_FLUSH,
            ..Default::default()
        };
        prepare_dptr(&mut f, 0, 0, 8192);
        assert_eq!(f.dptr, SglDescriptor::transport(0));

        // A caller-chosen descriptor is kept, and decides the placement.
        let mut c = Sqe {
            dptr: SglDescriptor::transport(100),
            ..Default::default()
        };
        assert_eq!(prepare_dptr(&mut c, 100, 0, 8192), DataPlacement::R2t);
        assert_eq!(c.psdt(), 0);
        let mut c = Sqe {
            dptr: SglDescriptor::in_capsule(0, 100_000),
            ..Default::default()
        };
        assert_eq!(
            prepare_dptr(&mut c, 100_000, 0, 8192),
            DataPlacement::InCapsule
        );
    }

    #[test]
    fn h2c_split_respects_maxh2cdata() {
        let chunks = h2c_chunks(8192, 10_000, 4096);
        assert_eq!(
            chunks,
            vec![
                H2cChunk {
                    offset: 8192,
                    len: 4096,
                    last: false
                },
                H2cChunk {
                    offset: 12288,
                    len: 4096,
                    last: false
                },
                H2cChunk {
                    offset: 16384,
                    len: 1808,
                    last: true
                },
            ]
        );
        assert_eq!(
            h2c_chunks(0, 4096, 4096),
            vec![H2cChunk {
                offset: 0,
                len: 4096,
                last: true
            }]
        );
        assert!(h2c_chunks(0, 0, 4096).is_empty());
    }

    #[test]
    fn h2c_pdus_parse_back() {
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        for digests in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let mut out = Vec::new();
            // An R2T for bytes 1000..19000 of the command.
            let window = &data[1000..19_000];
            let n = encode_h2c_data(&mut out, 7, 3, 1000, window, 8192, digests, 4);
            assert_eq!(n, 3);
            let mut pos = 0;
            let mut got = Vec::new();
            let mut lasts = Vec::new();
            while pos < out.len() {
                let pdu = parse_pdu(&out[pos..], digests, 8192).unwrap().unwrap();
                let Header::H2CData(dh) = pdu.header else {
                    panic!("not H2CData")
                };
                assert!(dh.length <= 8192);
                assert_eq!(dh.cccid, 7);
                assert_eq!(dh.ttag, 3);
                assert_eq!(dh.offset as usize, 1000 + got.len());
                assert!(pdu.data_digest_ok);
                got.extend_from_slice(pdu.data);
                lasts.push(pdu.ch.flags & flags::DATA_LAST != 0);
                pos += pdu.len;
            }
            assert_eq!(got, window);
            assert_eq!(lasts, vec![false, false, true]);
        }
    }
}
