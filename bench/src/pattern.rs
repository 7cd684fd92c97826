//! A verifiable block pattern: every block is stamped with its LBA and a generation, and the rest
//! of it is filled with pseudo-random bytes derived from both, so misplaced, stale or torn blocks
//! are detected.
//!
//! Block layout: bytes 0..8 magic, 8..16 LBA, 16..24 generation (little endian), then the fill.

/// The first 8 bytes of a stamped block.
pub const MAGIC: [u8; 8] = *b"NVMFDPAT";

/// Size of the stamp at the start of each block.
pub const STAMP_SIZE: usize = 24;

/// Why a block did not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("LBA {lba}: no pattern stamp (block never written or overwritten)")]
    NotStamped { lba: u64 },
    #[error("LBA {lba}: holds the block of LBA {found_lba}")]
    WrongLba { lba: u64, found_lba: u64 },
    #[error("LBA {lba}: generation {found}, expected {expected}")]
    WrongGeneration { lba: u64, expected: u64, found: u64 },
    #[error("LBA {lba}: stamp right but byte {offset} of the block differs")]
    Corrupt { lba: u64, offset: usize },
}

fn fill_word(seed: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *seed;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *seed = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn seed_for(lba: u64, generation: u64) -> u64 {
    (lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)) | 1
}

fn fill_block(block: &mut [u8], lba: u64, generation: u64) {
    block[0..8].copy_from_slice(&MAGIC);
    block[8..16].copy_from_slice(&lba.to_le_bytes());
    block[16..24].copy_from_slice(&generation.to_le_bytes());
    let mut seed = seed_for(lba, generation);
    for chunk in block[STAMP_SIZE..].chunks_mut(8) {
        let w = fill_word(&mut seed).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Stamp `buf` (whole blocks of `block_size` >= 24 bytes) as blocks `first_lba..` of `generation`.
pub fn fill(buf: &mut [u8], first_lba: u64, block_size: usize, generation: u64) {
    assert!(block_size >= STAMP_SIZE, "block size below the stamp size");
    for (i, block) in buf.chunks_mut(block_size).enumerate() {
        fill_block(block, first_lba + i as u64, generation);
    }
}

/// The `(lba, generation)` stamp of a block, if it carries one.
pub fn stamp(block: &[u8]) -> Option<(u64, u64)> {
    if block.len() < STAMP_SIZE || block[0..8] != MAGIC {
        return None;
    }
    let lba = u64::from_le_bytes(block[8..16].try_into().expect("8 bytes"));
    let generation = u64::from_le_bytes(block[16..24].try_into().expect("8 bytes"));
    Some((lba, generation))
}

/// Check that block `lba` holds exactly generation `generation`'s pattern.
pub fn check_block(block: &[u8], lba: u64, generation: u64) -> Result<(), Mismatch> {
    let Some((found_lba, found)) = stamp(block) else {
        return Err(Mismatch::NotStamped { lba });
    };
    if found_lba != lba {
        return Err(Mismatch::WrongLba { lba, found_lba });
    }
    if found != generation {
        return Err(Mismatch::WrongGeneration {
            lba,
            expected: generation,
            found,
        });
    }
    let mut want = vec![0u8; block.len()];
    fill_block(&mut want, lba, generation);
    match block.iter().zip(&want).position(|(a, b)| a != b) {
        Some(offset) => Err(Mismatch::Corrupt { lba, offset }),
        None => Ok(()),
    }
}

/// Check whole blocks `first_lba..` of `buf` against `generation`.
pub fn check(
    buf: &[u8],
    first_lba: u64,
    block_size: usize,
    generation: u64,
) -> Result<(), Mismatch> {
    for (i, block) in buf.chunks(block_size).enumerate() {
        check_block(block, first_lba + i as u64, generation)?;
    }
    Ok(())
}

/// Check only that stamped blocks sit at their own LBA and are intact (for reads of data some
/// earlier run wrote with unknown generations). Unstamped blocks pass.
pub fn check_placement(buf: &[u8], first_lba: u64, block_size: usize) -> Result<(), Mismatch> {
    for (i, block) in buf.chunks(block_size).enumerate() {
        if let Some((_, generation)) = stamp(block) {
            check_block(block, first_lba + i as u64, generation)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mismatches() {
        let mut buf = vec![0u8; 4 * 512];
        fill(&mut buf, 100, 512, 7);
        check(&buf, 100, 512, 7).unwrap();
        check_placement(&buf, 100, 512).unwrap();
        assert_eq!(
            check(&buf, 100, 512, 8),
            Err(Mismatch::WrongGeneration {
                lba: 100,
                expected: 8,
                found: 7
            })
        );
        assert_eq!(
            check(&buf, 101, 512, 7),
            Err(Mismatch::WrongLba {
                lba: 101,
                found_lba: 100
            })
        );
        let mut torn = buf.clone();
        torn[512 + 300] ^= 1;
        assert_eq!(
            check(&torn, 100, 512, 7),
            Err(Mismatch::Corrupt {
                lba: 101,
                offset: 300
            })
        );
        assert_eq!(
            check(&[0u8; 512], 5, 512, 1),
            Err(Mismatch::NotStamped { lba: 5 })
        );
        check_placement(&[0u8; 1024], 5, 512).unwrap();
        // Different LBAs and generations give different fills.
        let mut other = vec![0u8; 512];
        fill(&mut other, 100, 512, 8);
        assert_ne!(other[STAMP_SIZE..], buf[STAMP_SIZE..512]);
    }
}
