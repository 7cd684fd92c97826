//! Wire formats shared by the target and by every host we write (tests, the perf initiator), so the
//! two sides can never disagree. Each format is a typed struct with explicit `decode`/`encode` over
//! fixed-size byte arrays; sizes are asserted at compile time and nothing is cast with `unsafe`.

pub mod fabrics;
pub mod nvme;
pub mod rdma;
pub mod status;
pub mod tcp;

/// Little-endian field readers and writers over byte slices; callers pass in-range offsets of
/// fixed-size arrays (they panic otherwise).
pub mod le {
    pub fn u16(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    pub fn u32(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }
    pub fn u64(b: &[u8], o: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    }
    pub fn put_u16(b: &mut [u8], o: usize, v: u16) {
        b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(b: &mut [u8], o: usize, v: u32) {
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(b: &mut [u8], o: usize, v: u64) {
        b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// Copy `s` into `dst`, padding the rest with `pad` (NVMe ASCII fields are space padded, NQNs NUL
/// padded). Truncates if `s` is longer.
pub fn put_str(dst: &mut [u8], s: &str, pad: u8) {
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    dst[n..].fill(pad);
}

/// Read an ASCII field, stopping at the first NUL and trimming trailing spaces.
pub fn get_str(src: &[u8]) -> String {
    let end = src.iter().position(|&c| c == 0).unwrap_or(src.len());
    String::from_utf8_lossy(&src[..end]).trim_end().to_string()
}
