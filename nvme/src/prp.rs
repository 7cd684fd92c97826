//! Physical Region Page entries (NVMe Base 2.0, 4.1.1 "Physical Region Page Entry and List").
//!
//! A transfer is described by PRP1 (the first page, which may start at a dword-aligned offset)
//! and PRP2: nothing when the data fits in PRP1's page, the second page when it ends there, or
//! else the address of a PRP list. List entries are page addresses with offset 0; when a list
//! page is full and entries remain, its last entry points to the next list page (list chaining).
//! Addresses are device addresses (IOVA for host memory, controller addresses for the CMB): the
//! builder never sees a CPU pointer.

/// One contiguous stretch of device-addressable memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: usize,
}

/// Where a command's PRP list may be written: `entries` (one or more whole pages of u64
/// entries, so `entries.len()` is a multiple of `page_size / 8`) whose first entry is at device
/// address `addr` (page aligned), pages contiguous in device address space.
pub struct ListSpace<'a> {
    pub entries: &'a mut [u64],
    pub addr: u64,
}

/// The data pointer of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prps {
    pub prp1: u64,
    pub prp2: u64,
    /// List entries written (0 when PRP2 is not a list pointer).
    pub list_entries: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrpError {
    #[error("empty transfer")]
    Empty,
    #[error("PRP1 address {0:#x} is not dword aligned")]
    Unaligned(u64),
    #[error("segment at {0:#x} does not start on a page boundary (only the first one may)")]
    GapStart(u64),
    #[error("segment at {0:#x} does not end on a page boundary (only the last one may)")]
    GapEnd(u64),
    #[error("transfer needs {needed} PRP list entries, the command has room for {room}")]
    ListTooSmall { needed: usize, room: usize },
    #[error("PRP list space is not page aligned or not whole pages")]
    BadListSpace,
}

/// Number of memory pages a transfer of `len` bytes starting at `addr` touches.
pub fn pages_spanned(addr: u64, len: usize, page_size: usize) -> usize {
    let off = (addr as usize) & (page_size - 1);
    (off + len).div_ceil(page_size)
}

/// List entries (including chain pointers) needed to describe `pages` pages after PRP1.
pub fn list_entries_needed(pages_after_first: usize, page_size: usize) -> usize {
    if pages_after_first <= 1 {
        return 0;
    }
    let per_page = page_size / 8;
    // Every full list page but the last gives one slot to the chain pointer.
    let mut left = pages_after_first;
    let mut used = 0;
    while left > per_page {
        used += per_page;
        left -= per_page - 1;
    }
    used + left
}

/// Build the PRPs of a transfer over `segs` with memory page size `page_size` (CC.MPS).
pub fn build(segs: &[Segment], page_size: usize, list: ListSpace<'_>) -> Result<Prps, PrpError> {
    debug_assert!(page_size.is_power_of_two() && page_size >= 4096);
    let mask = page_size as u64 - 1;
    let total: usize = segs.iter().map(|s| s.len).sum();
    let first = *segs.first().ok_or(PrpError::Empty)?;
    if total == 0 {
        return Err(PrpError::Empty);
    }
    if first.addr & 3 != 0 {
        return Err(PrpError::Unaligned(first.addr));
    }
    let last = segs.len() - 1;
    for (i, s) in segs.iter().enumerate() {
        if i > 0 && s.addr & mask != 0 {
            return Err(PrpError::GapStart(s.addr));
        }
        if i < last && (s.addr + s.len as u64) & mask != 0 {
            return Err(PrpError::GapEnd(s.addr));
        }
    }
    // The page addresses after PRP1's page, in order.
    let mut pages = segs
        .iter()
        .filter(|s| s.len > 0)
        .flat_map(|s| {
            let start = s.addr & !mask;
            let n = pages_spanned(s.addr, s.len, page_size) as u64;
            (0..n).map(move |k| start + k * page_size as u64)
        })
        .skip(1);
    let after: usize = segs
        .iter()
        .filter(|s| s.len > 0)
        .map(|s| pages_spanned(s.addr, s.len, page_size))
        .sum::<usize>()
        - 1;
    let prp1 = first.addr;
    match after {
        0 => Ok(Prps {
            prp1,
            prp2: 0,
            list_entries: 0,
        }),
        1 => Ok(Prps {
            prp1,
            prp2: pages.next().expect("one page after PRP1"),
            list_entries: 0,
        }),
        _ => {
            let per_page = page_size / 8;
            if list.addr & mask != 0 || !list.entries.len().is_multiple_of(per_page) {
                return Err(PrpError::BadListSpace);
            }
            let needed = list_entries_needed(after, page_size);
            if needed > list.entries.len() {
                return Err(PrpError::ListTooSmall {
                    needed,
                    room: list.entries.len(),
                });
            }
            let mut left = after;
            let mut i = 0;
            while left > 0 {
                let slot_in_page = i % per_page;
                if slot_in_page == per_page - 1 && left > 1 {
                    // Chain: the last slot of a full list page points at the next list page.
                    list.entries[i] = list.addr + ((i + 1) * 8) as u64;
                } else {
                    list.entries[i] = pages.next().expect("page count matches");
                    left -= 1;
                }
                i += 1;
            }
            debug_assert_eq!(i, needed);
            Ok(Prps {
                prp1,
                prp2: list.addr,
                list_entries: i,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = 4096;

    fn one(addr: u64, len: usize, list: &mut [u64]) -> Result<Prps, PrpError> {
        build(
            &[Segment { addr, len }],
            P,
            ListSpace {
                entries: list,
                addr: 0x9000_0000,
            },
        )
    }

    /// Walk PRPs the way a controller does and return the page-sized chunks it transfers.
    fn walk(p: &Prps, len: usize, list: &[u64], list_addr: u64) -> Vec<(u64, usize)> {
        let mut out = vec![];
        let first = (P - (p.prp1 as usize & (P - 1))).min(len);
        out.push((p.prp1, first));
        let mut left = len - first;
        if left == 0 {
            return out;
        }
        if left <= P {
            out.push((p.prp2, left));
            return out;
        }
        let mut idx = ((p.prp2 - list_addr) / 8) as usize;
        while left > 0 {
            let e = list[idx];
            if idx % (P / 8) == P / 8 - 1 && left > P {
                idx = ((e - list_addr) / 8) as usize;
                continue;
            }
            let n = left.min(P);
            out.push((e, n));
            left -= n;
            idx += 1;
        }
        out
    }

    #[test]
    fn single_page_and_offset() {
        let mut l = vec![0u64; 512];
        let p = one(0x10_0000, 4096, &mut l).unwrap();
        assert_eq!((p.prp1, p.prp2, p.list_entries), (0x10_0000, 0, 0));
        let p = one(0x10_0200, 512, &mut l).unwrap();
        assert_eq!((p.prp1, p.prp2), (0x10_0200, 0));
    }

    #[test]
    fn page_crossing_uses_prp2_as_page() {
        let mut l = vec![0u64; 512];
        // 4 KiB starting mid-page touches two pages.
        let p = one(0x10_0800, 4096, &mut l).unwrap();
        assert_eq!((p.prp1, p.prp2, p.list_entries), (0x10_0800, 0x10_1000, 0));
        // 8 KiB aligned: two pages.
        let p = one(0x10_0000, 8192, &mut l).unwrap();
        assert_eq!((p.prp1, p.prp2), (0x10_0000, 0x10_1000));
    }

    #[test]
    fn list_for_three_pages_and_more() {
        let mut l = vec![0u64; 512];
        let p = one(0x10_0000, 3 * 4096, &mut l).unwrap();
        assert_eq!(p.prp2, 0x9000_0000);
        assert_eq!(p.list_entries, 2);
        assert_eq!(&l[..2], &[0x10_1000, 0x10_2000]);
        // 128 KiB with an offset: 33 pages, 32 list entries.
        let p = one(0x20_0100, 128 << 10, &mut l).unwrap();
        assert_eq!(p.list_entries, 32);
        let chunks = walk(&p, 128 << 10, &l, 0x9000_0000);
        assert_eq!(chunks.len(), 33);
        assert_eq!(chunks[0], (0x20_0100, 4096 - 256));
        assert_eq!(chunks[32], (0x22_0000, 256));
    }

    #[test]
    fn list_chaining_across_list_pages() {
        // 512 entries per list page; 2 MiB + 4 KiB aligned = 513 pages, 512 after PRP1: one
        // list page exactly, no chain.
        let mut l = vec![0u64; 1024];
        let p = one(0x4000_0000, (2 << 20) + 4096, &mut l).unwrap();
        assert_eq!(p.list_entries, 512);
        assert_eq!(l[511], 0x4000_0000 + 512 * 4096);
        // One page more: 513 entries after PRP1 need a chain pointer in slot 511.
        let len = (2 << 20) + 8192;
        let p = one(0x4000_0000, len, &mut l).unwrap();
        assert_eq!(p.list_entries, 514);
        assert_eq!(l[511], 0x9000_0000 + 4096, "chain to the second list page");
        assert_eq!(l[512], 0x4000_0000 + 512 * 4096);
        assert_eq!(l[513], 0x4000_0000 + 513 * 4096);
        let chunks = walk(&p, len, &l, 0x9000_0000);
        assert_eq!(chunks.len(), 514);
        for (k, c) in chunks.iter().enumerate() {
            assert_eq!(*c, (0x4000_0000 + k as u64 * 4096, 4096));
        }
    }

    #[test]
    fn mdts_edge_list_room() {
        // A list of one page (512 entries) holds at most 512 pages after PRP1: a 2 MiB aligned
        // transfer (MDTS 9 at 4 KiB pages) fits exactly, with an offset it needs 513 and fails.
        let mut l = vec![0u64; 512];
        assert_eq!(one(0x4000_0000, 2 << 20, &mut l).unwrap().list_entries, 511);
        assert!(one(0x4000_0000, (2 << 20) + 4096, &mut l).is_ok());
        assert_eq!(
            one(0x4000_0200, (2 << 20) + 4096, &mut l),
            Err(PrpError::ListTooSmall {
                needed: 514,
                room: 512
            })
        );
        assert_eq!(list_entries_needed(1, P), 0);
        assert_eq!(list_entries_needed(2, P), 2);
        assert_eq!(list_entries_needed(512, P), 512);
        assert_eq!(list_entries_needed(513, P), 514);
        assert_eq!(list_entries_needed(1023, P), 1024);
        assert_eq!(list_entries_needed(1024, P), 1026);
    }

    #[test]
    fn segments_must_meet_on_page_boundaries() {
        let mut l = vec![0u64; 512];
        let segs = [
            Segment {
                addr: 0x10_0800,
                len: 0x800,
            },
            Segment {
                addr: 0x50_0000,
                len: 8192,
            },
        ];
        let p = build(
            &segs,
            P,
            ListSpace {
                entries: &mut l,
                addr: 0x9000_0000,
            },
        )
        .unwrap();
        assert_eq!(p.prp1, 0x10_0800);
        assert_eq!(&l[..2], &[0x50_0000, 0x50_1000]);
        let bad = [
            Segment {
                addr: 0x10_0000,
                len: 100,
            },
            Segment {
                addr: 0x50_0000,
                len: 4096,
            },
        ];
        let r = build(
            &bad,
            P,
            ListSpace {
                entries: &mut l,
                addr: 0x9000_0000,
            },
        );
        assert_eq!(r, Err(PrpError::GapEnd(0x10_0000)));
        assert_eq!(
            one(0x10_0002, 512, &mut l),
            Err(PrpError::Unaligned(0x10_0002))
        );
        assert_eq!(one(0x10_0000, 0, &mut l), Err(PrpError::Empty));
    }
}
