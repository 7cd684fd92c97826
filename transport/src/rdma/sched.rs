//! The protocol bookkeeping of an NVMe/RDMA queue pair that needs no verbs: work-request IDs,
//! how a response's data is cut over the host's keyed descriptors, and RDMA READs bounded by
//! the negotiated initiator depth. Unit-tested here; `group` posts what these decide.

use super::admit::Keyed;
use std::collections::VecDeque;

/// What a work request was for (from its ID: an errored completion's opcode is undefined, IB
/// spec 11.4.2.1, so the ID alone must say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A receive buffer of the shared receive queue (`slot` = its index).
    Recv = 1,
    /// One RDMA READ of a host write (`desc` = the descriptor).
    Read = 2,
    /// An RDMA WRITE of read data (posted unsignaled).
    Write = 3,
    /// The response capsule.
    Send = 4,
}

/// A work request's ID: kind (4 bits) | connection generation (16) | connection (16) | slot (16) |
/// descriptor (8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrId {
    pub kind: Kind,
    pub generation: u16,
    pub conn: u16,
    pub slot: u16,
    pub desc: u8,
}

impl WrId {
    pub fn encode(&self) -> u64 {
        ((self.kind as u64) << 60)
            | ((self.generation as u64) << 40)
            | ((self.conn as u64) << 24)
            | ((self.slot as u64) << 8)
            | self.desc as u64
    }

    pub fn decode(v: u64) -> Option<WrId> {
        let kind = match v >> 60 {
            1 => Kind::Recv,
            2 => Kind::Read,
            3 => Kind::Write,
            4 => Kind::Send,
            _ => return None,
        };
        Some(WrId {
            kind,
            generation: (v >> 40) as u16,
            conn: (v >> 24) as u16,
            slot: (v >> 8) as u16,
            desc: v as u8,
        })
    }
}

/// One RDMA transfer of a command's buffer: bytes `buf_off..buf_off + len` to or from the host
/// memory of descriptor `desc` (its address + `desc_off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Piece {
    pub desc: u8,
    pub buf_off: u32,
    pub len: u32,
}

/// Cut `len` bytes of a buffer over the descriptors in order (the host's SGL is one logical
/// buffer: NVMe base 2.0, "SGL": data is placed in the order the descriptors are listed).
/// Descriptors of zero length are skipped; bytes beyond the descriptors' total are not moved
/// (the caller checked the transfer fits). Returns the number of pieces written to `out`.
pub fn cut(descs: &[Keyed], len: u32, out: &mut [Piece]) -> usize {
    let mut left = len;
    let mut off = 0u32;
    let mut n = 0;
    for (i, d) in descs.iter().enumerate() {
        if left == 0 || n == out.len() {
            break;
        }
        let take = d.len.min(left);
        if take == 0 {
            continue;
        }
        out[n] = Piece {
            desc: i as u8,
            buf_off: off,
            len: take,
        };
        n += 1;
        off += take;
        left -= take;
    }
    n
}

/// The RDMA READs a queue pair may issue: at most `depth` outstanding (the initiator depth
/// agreed in the connect exchange, itself at most the host's IRD; a READ beyond it would wait
/// in the NIC or, on some, break the connection). Commands take turns in arrival order; each
/// needs `reads` READs, issued one at a time as room frees.
#[derive(Debug)]
pub struct Reads {
    depth: u32,
    outstanding: u32,
    /// (slot, READs still to issue) in arrival order.
    queue: VecDeque<(u16, u8)>,
}

impl Reads {
    pub fn new(depth: u8, slots: usize) -> Reads {
        Reads {
            depth: u32::from(depth.max(1)),
            outstanding: 0,
            queue: VecDeque::with_capacity(slots),
        }
    }

    /// Queue a command needing `reads` READs.
    pub fn push(&mut self, slot: u16, reads: u8) {
        if reads > 0 {
            self.queue.push_back((slot, reads));
        }
    }

    /// The next READ to issue now, if there is room: (slot, index of the READ within the
    /// command). The caller must then issue it (or call [`Reads::done`] if it cannot).
    pub fn next(&mut self, total_of: impl Fn(u16) -> u8) -> Option<(u16, u8)> {
        if self.outstanding >= self.depth {
            return None;
        }
        let (slot, left) = self.queue.front_mut()?;
        let slot = *slot;
        let index = total_of(slot) - *left;
        *left -= 1;
        if *left == 0 {
            self.queue.pop_front();
        }
        self.outstanding += 1;
        Some((slot, index))
    }

    /// A READ completed (successfully or flushed).
    pub fn done(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    #[cfg(test)]
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Drop the queued (not yet issued) READs of every command: the queue pair is closing.
    /// One at a time: (slot, READs it had not issued).
    pub fn pop_queued(&mut self) -> Option<(u16, u8)> {
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wr_ids_round_trip() {
        for kind in [Kind::Recv, Kind::Read, Kind::Write, Kind::Send] {
            let w = WrId {
                kind,
                generation: 0xbeef,
                conn: 0xffff,
                slot: 1023,
                desc: 15,
            };
            assert_eq!(WrId::decode(w.encode()), Some(w));
        }
        assert_eq!(WrId::decode(0), None);
    }

    fn k(len: u32) -> Keyed {
        Keyed {
            addr: 0,
            len,
            key: 0,
        }
    }

    #[test]
    fn data_is_cut_over_descriptors_in_order() {
        let mut out = [Piece::default(); 4];
        let ds = [k(4096), k(0), k(8192), k(100)];
        assert_eq!(cut(&ds, 10000, &mut out), 2);
        assert_eq!(
            out[..2],
            [
                Piece {
                    desc: 0,
                    buf_off: 0,
                    len: 4096
                },
                Piece {
                    desc: 2,
                    buf_off: 4096,
                    len: 10000 - 4096
                }
            ]
        );
        assert_eq!(cut(&ds, 4096 + 8192 + 100, &mut out), 3);
        assert_eq!(out[2].len, 100);
        assert_eq!(cut(&ds, 0, &mut out), 0);
        // More bytes than descriptors: only what they hold.
        assert_eq!(cut(&ds[..1], 8192, &mut out), 1);
        assert_eq!(out[0].len, 4096);
    }

    #[test]
    fn reads_never_exceed_the_initiator_depth_and_keep_arrival_order() {
        let mut r = Reads::new(2, 8);
        let totals = |s: u16| if s == 7 { 3 } else { 1 };
        r.push(7, 3);
        r.push(1, 1);
        assert_eq!(r.next(totals), Some((7, 0)));
        assert_eq!(r.next(totals), Some((7, 1)));
        assert_eq!(r.next(totals), None, "depth 2 reached");
        r.done();
        assert_eq!(r.next(totals), Some((7, 2)));
        assert_eq!(r.next(totals), None);
        r.done();
        r.done();
        assert_eq!(r.next(totals), Some((1, 0)));
        assert_eq!(r.outstanding(), 1);
        assert_eq!(r.next(totals), None, "nothing queued");
        r.push(3, 1);
        r.push(4, 1);
        assert_eq!(r.next(totals), Some((3, 0)));
        assert_eq!(r.pop_queued(), Some((4, 1)));
        assert_eq!(r.pop_queued(), None);
        // Depth 0 from a peer is treated as 1 (admission refuses 0 anyway).
        let mut r = Reads::new(0, 1);
        r.push(0, 2);
        assert!(r.next(|_| 2).is_some());
        assert!(r.next(|_| 2).is_none());
    }
}
