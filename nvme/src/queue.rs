//! Submission/completion ring logic without memory or doorbells (sans-IO): indices, wrap,
//! phase tag, full/empty, command identifiers. The memory is behind [`QueueMem`], so the same
//! code runs over a DMA region in the driver and over a plain vector in the tests.

use crate::cmd::{Cqe, Sqe};

/// Entry storage of one queue.
pub trait QueueMem {
    fn write_sqe(&mut self, idx: u16, sqe: &Sqe);
    fn read_cqe(&self, idx: u16) -> Cqe;
}

/// A submission queue: the host owns the tail, the controller reports the head in every
/// completion (CQE DW2 SQHD). Full when tail + 1 == head (one slot is always empty, NVMe Base
/// 2.0, 3.3.1.1).
#[derive(Debug)]
pub struct SqRing {
    size: u16,
    tail: u16,
    head: u16,
    /// Tail value last written to the doorbell.
    rung: u16,
}

impl SqRing {
    pub fn new(size: u16) -> SqRing {
        assert!(size >= 2);
        SqRing {
            size,
            tail: 0,
            head: 0,
            rung: 0,
        }
    }
    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn is_full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }
    /// Slots free for new commands.
    pub fn free(&self) -> u16 {
        self.size - 1 - (self.tail + self.size - self.head) % self.size
    }
    /// Write `sqe` at the tail and advance it; `None` when full. The doorbell is not rung.
    pub fn push(&mut self, mem: &mut dyn QueueMem, sqe: &Sqe) -> Option<u16> {
        if self.is_full() {
            return None;
        }
        let at = self.tail;
        mem.write_sqe(at, sqe);
        self.tail = (self.tail + 1) % self.size;
        Some(at)
    }
    /// The new tail to write to the doorbell, if anything was queued since the last ring
    /// (doorbells are batched: one MMIO write per poll, not per command).
    pub fn take_doorbell(&mut self) -> Option<u16> {
        if self.rung == self.tail {
            None
        } else {
            self.rung = self.tail;
            Some(self.tail)
        }
    }
    /// SQ head from a completion.
    pub fn update_head(&mut self, head: u16) {
        if head < self.size {
            self.head = head;
        }
    }
    pub fn tail(&self) -> u16 {
        self.tail
    }
}

/// A completion queue: the controller writes entries with the current phase tag; the host
/// consumes while the tag matches what it expects, flipping its expectation at every wrap (NVMe
/// Base 2.0, 4.6 "Completion Queue Entry", Phase Tag). The phase starts at 1 because the
/// queue memory is zeroed at creation.
#[derive(Debug)]
pub struct CqRing {
    size: u16,
    head: u16,
    phase: bool,
    rung: u16,
}

impl CqRing {
    pub fn new(size: u16) -> CqRing {
        assert!(size >= 2);
        CqRing {
            size,
            head: 0,
            phase: true,
            rung: 0,
        }
    }
    /// The next completion if the controller has posted one.
    pub fn pop(&mut self, mem: &dyn QueueMem) -> Option<Cqe> {
        let c = mem.read_cqe(self.head);
        if c.phase() != self.phase {
            return None;
        }
        self.head += 1;
        if self.head == self.size {
            self.head = 0;
            self.phase = !self.phase;
        }
        Some(c)
    }
    pub fn take_doorbell(&mut self) -> Option<u16> {
        if self.rung == self.head {
            None
        } else {
            self.rung = self.head;
            Some(self.head)
        }
    }
    pub fn head(&self) -> u16 {
        self.head
    }
    pub fn phase(&self) -> bool {
        self.phase
    }
}

/// Command identifiers in flight, with a per-command value `T`. Fixed capacity, no allocation
/// after creation.
#[derive(Debug)]
pub struct CidTable<T> {
    slots: Vec<Option<T>>,
    free: Vec<u16>,
}

impl<T> CidTable<T> {
    pub fn new(n: u16) -> CidTable<T> {
        CidTable {
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
        }
    }
    pub fn alloc(&mut self, v: T) -> Option<u16> {
        let cid = self.free.pop()?;
        self.slots[cid as usize] = Some(v);
        Some(cid)
    }
    /// Release `cid`; `None` for an identifier that is not in flight (a controller bug or a
    /// stale completion after a reset): the caller logs it instead of trusting it.
    pub fn release(&mut self, cid: u16) -> Option<T> {
        let v = self.slots.get_mut(cid as usize)?.take()?;
        self.free.push(cid);
        Some(v)
    }
    pub fn get(&self, cid: u16) -> Option<&T> {
        self.slots.get(cid as usize)?.as_ref()
    }
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
    /// Identifiers in flight and their values, in CID order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &T)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|v| (i as u16, v)))
    }

    pub fn get_mut(&mut self, cid: u16) -> Option<&mut T> {
        self.slots.get_mut(cid as usize)?.as_mut()
    }

    /// Take every value in flight (a reset fails them all).
    pub fn drain(&mut self) -> impl Iterator<Item = (u16, T)> + '_ {
        let free = &mut self.free;
        self.slots.iter_mut().enumerate().filter_map(move |(i, s)| {
            let v = s.take()?;
            free.push(i as u16);
            Some((i as u16, v))
        })
    }
}

/// A command in flight on an I/O queue: the submitter's tag, when it was queued and whether an
/// Abort was already sent for it.
#[derive(Debug, Clone, Copy)]
pub struct Inflight {
    pub tag: u64,
    pub since: std::time::Instant,
    pub aborted: bool,
}

/// What the timeout scan decides for a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    Nothing,
    /// Send Abort for this CID (it passed the timeout).
    Abort(u16),
    /// An aborted command is still outstanding after another timeout: the controller must be
    /// reset and everything in flight failed.
    Reset(u16),
}

/// The timeout rule: a command older than `timeout` gets an Abort; one already aborted and
/// older than twice `timeout` means the controller is not answering and needs a reset. The
/// oldest command decides.
pub fn timeout_scan(
    cids: &CidTable<Inflight>,
    now: std::time::Instant,
    timeout: std::time::Duration,
) -> TimeoutAction {
    let Some((cid, f)) = cids.iter().min_by_key(|(_, f)| f.since) else {
        return TimeoutAction::Nothing;
    };
    let age = now.saturating_duration_since(f.since);
    if f.aborted && age > 2 * timeout {
        return TimeoutAction::Reset(cid);
    }
    if age > timeout {
        if let Some((c, _)) = cids
            .iter()
            .filter(|(_, f)| !f.aborted && now.saturating_duration_since(f.since) > timeout)
            .min_by_key(|(_, f)| f.since)
        {
            return TimeoutAction::Abort(c);
        }
    }
    TimeoutAction::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{nvm, Status};

    #[derive(Default)]
    struct Mem {
        sq: Vec<Sqe>,
        cq: Vec<Cqe>,
    }
    impl QueueMem for Mem {
        fn write_sqe(&mut self, idx: u16, sqe: &Sqe) {
            self.sq[idx as usize] = *sqe;
        }
        fn read_cqe(&self, idx: u16) -> Cqe {
            self.cq[idx as usize]
        }
    }

    /// A toy controller: consumes SQEs from its head up to `tail` and posts completions with
    /// its own phase, wrapping like hardware.
    struct Ctl {
        sq_head: u16,
        cq_tail: u16,
        phase: bool,
    }
    impl Ctl {
        fn run(&mut self, m: &mut Mem, tail: u16, n: u16) {
            while self.sq_head != tail {
                let s = m.sq[self.sq_head as usize];
                self.sq_head = (self.sq_head + 1) % n;
                m.cq[self.cq_tail as usize] = Cqe {
                    sq_head: self.sq_head,
                    cid: s.cid(),
                    status_phase: self.phase as u16 | (Status::new(0, 0).0 << 1),
                    ..Cqe::default()
                };
                self.cq_tail += 1;
                if self.cq_tail == n {
                    self.cq_tail = 0;
                    self.phase = !self.phase;
                }
            }
        }
    }

    #[test]
    fn wrap_and_phase_over_many_rounds() {
        let n = 4u16;
        let mut m = Mem {
            sq: vec![Sqe::default(); n as usize],
            cq: vec![Cqe::default(); n as usize],
        };
        let mut sq = SqRing::new(n);
        let mut cq = CqRing::new(n);
        let mut ctl = Ctl {
            sq_head: 0,
            cq_tail: 0,
            phase: true,
        };
        let mut cids = CidTable::new(n);
        let mut next = 0u32;
        let mut done = 0u32;
        for round in 0..10 {
            // Fill until full: 3 of 4 slots.
            while !sq.is_full() {
                let cid = cids.alloc(next).unwrap();
                let mut s = Sqe::new(nvm::READ, 1);
                s.set_cid(cid);
                sq.push(&mut m, &s).unwrap();
                next += 1;
            }
            assert_eq!(sq.free(), 0);
            assert!(sq.push(&mut m, &Sqe::default()).is_none());
            let t = sq.take_doorbell().unwrap();
            assert!(sq.take_doorbell().is_none(), "batched: one ring per batch");
            ctl.run(&mut m, t, n);
            while let Some(c) = cq.pop(&m) {
                assert!(c.status().is_success());
                let v = cids.release(c.cid).expect("cid in flight");
                assert_eq!(v, done, "completions in order in round {round}");
                done += 1;
                sq.update_head(c.sq_head);
            }
            assert!(cq.take_doorbell().is_some());
            assert_eq!(cids.in_flight(), 0);
        }
        assert_eq!(done, 30);
        // 30 completions through 4 entries: 7 full wraps, head at 2, phase flipped 7 times.
        assert_eq!(cq.head(), 2);
        assert!(!cq.phase());
    }

    #[test]
    fn stale_entry_is_not_consumed() {
        let mut m = Mem {
            sq: vec![Sqe::default(); 2],
            cq: vec![Cqe::default(); 2],
        };
        let mut cq = CqRing::new(2);
        assert!(cq.pop(&m).is_none(), "zeroed memory has phase 0");
        m.cq[0].status_phase = 1;
        m.cq[1].status_phase = 1;
        assert!(cq.pop(&m).is_some());
        assert!(cq.pop(&m).is_some());
        // Wrapped: entry 0 still carries phase 1 from the previous lap.
        assert!(cq.pop(&m).is_none());
        m.cq[0].status_phase = 0;
        assert!(cq.pop(&m).is_some());
    }

    #[test]
    fn timeouts_abort_then_reset() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let to = Duration::from_secs(30);
        let mut t = CidTable::new(4);
        assert_eq!(timeout_scan(&t, t0, to), TimeoutAction::Nothing);
        let a = t
            .alloc(Inflight {
                tag: 1,
                since: t0,
                aborted: false,
            })
            .unwrap();
        let _b = t
            .alloc(Inflight {
                tag: 2,
                since: t0 + Duration::from_secs(10),
                aborted: false,
            })
            .unwrap();
        assert_eq!(timeout_scan(&t, t0 + to, to), TimeoutAction::Nothing);
        let now = t0 + to + Duration::from_secs(1);
        assert_eq!(timeout_scan(&t, now, to), TimeoutAction::Abort(a));
        t.get_mut(a).unwrap().aborted = true;
        // The aborted one waits for its answer; the other is not old enough yet.
        assert_eq!(timeout_scan(&t, now, to), TimeoutAction::Nothing);
        let later = t0 + 2 * to + Duration::from_secs(1);
        assert_eq!(timeout_scan(&t, later, to), TimeoutAction::Reset(a));
        // Once the aborted command completes, the next old one is aborted in turn.
        t.release(a);
        assert_eq!(timeout_scan(&t, later, to), TimeoutAction::Abort(_b));
    }

    #[test]
    fn cid_table_rejects_unknown_and_drains() {
        let mut t = CidTable::new(3);
        let a = t.alloc("a").unwrap();
        let b = t.alloc("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(t.release(a), Some("a"));
        assert_eq!(t.release(a), None, "double completion");
        assert_eq!(t.release(99), None);
        t.alloc("c").unwrap();
        t.alloc("d").unwrap();
        assert!(t.alloc("e").is_none());
        let mut all: Vec<_> = t.drain().map(|(_, v)| v).collect();
        all.sort();
        assert_eq!(all, vec!["b", "c", "d"]);
        assert_eq!(t.in_flight(), 0);
    }
}
