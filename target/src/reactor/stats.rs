//! Per-reactor I/O counters: what `/metrics` reports about commands (`crate::rpc::metrics`).
//!
//! Every reactor counts on its own, in plain integers it alone writes: one [`IoStats`] per poll
//! group (so per transport), indexed by small dense ids ([`StatIds`]: one per subsystem and
//! namespace the reactor has seen) and by opcode class ([`OpClass`]), with a fixed log2-bucket
//! latency histogram ([`Hist`]). Counting a command is a few additions into memory of the
//! reactor's own cache: no lock, no atomic, no allocation, no clock read of its own (the reactor
//! reads the clock once per batch of commands and once per batch of completions). The tables
//! grow only on the control path, when a snapshot of the target with new namespaces arrives
//! ([`StatIds::update`]).
//!
//! **How the numbers get out: on request, not published.** The control thread asks each reactor
//! with a `ReactorMsg::Report` message (the same one `nvmf_get_stats` uses); the reactor answers
//! on its next poll with a copy of its tables, and the scrape sums the copies. The other design
//! (each reactor periodically writing a snapshot into a single-writer seqlock or double buffer)
//! costs the reactors a copy every period whether anyone scrapes or not, needs atomics and
//! `unsafe` for the seqlock, and serves numbers up to one period old; the message costs nothing
//! between scrapes, gives the numbers as of the scrape, and a copy made by the reactor itself is
//! consistent by construction (no torn reads). Its price: a scrape waits for every reactor's next
//! poll (microseconds when busy, at most `idle_sleep_us` when idle), and the copy is an allocation
//! on the reactor thread once per scrape (never per I/O).
//!
//! Counting is off until the metrics endpoint is served (`ReactorMsg::CountIo`), so a daemon
//! without `metrics.listen` does none of this work. A command is counted when its response is
//! handed to the transport (latency: from the reactor taking the command off the transport to
//! that moment; the time on the wire back is not in it).

use crate::core::{SubsysRef, Target};
use nvmfd_transport::proto::nvme::opcode;
use nvmfd_transport::proto::status::Status;

/// Where a counted command belongs: a subsystem (or none: a queue that never connected) and a
/// namespace (NSID 0: not a namespace: admin and fabrics commands, and I/O commands naming an
/// NSID that is not an active namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatSubsys {
    /// A queue that was not connected when the command was answered (a refused Connect).
    None,
    Discovery,
    Nvm(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatKey {
    pub subsys: StatSubsys,
    pub nsid: u32,
}

/// The id of [`StatSubsys::None`].
pub const NONE_ID: u32 = 0;
/// The id of the discovery subsystem.
pub const DISCOVERY_ID: u32 = 1;

/// Dense ids of [`StatKey`]s, assigned by one reactor and never reused or moved (a namespace
/// removed and added again gets its old id back), with the lookup tables of the snapshot the
/// reactor serves.
#[derive(Debug, Clone)]
pub struct StatIds {
    keys: Vec<StatKey>,
    /// By subsystem slot: the id of (subsystem, NSID 0).
    subsys: Vec<u32>,
    /// By subsystem slot, then by the namespace's index in `Subsystem::namespaces`.
    ns: Vec<Vec<u32>>,
}

impl StatIds {
    pub fn new(target: &Target) -> Self {
        let mut ids = StatIds {
            keys: vec![
                StatKey {
                    subsys: StatSubsys::None,
                    nsid: 0,
                },
                StatKey {
                    subsys: StatSubsys::Discovery,
                    nsid: 0,
                },
            ],
            subsys: Vec::new(),
            ns: Vec::new(),
        };
        ids.update(target);
        ids
    }

    /// Rebuild the lookup tables for a new snapshot, giving new namespaces ids (the control path:
    /// a reactor taking a snapshot).
    pub fn update(&mut self, target: &Target) {
        self.subsys.clear();
        self.ns.clear();
        for (i, s) in target.subsystems.iter().enumerate() {
            let sid = self.id_of(StatKey {
                subsys: StatSubsys::Nvm(i),
                nsid: 0,
            });
            self.subsys.push(sid);
            let ns = (s.namespaces.iter())
                .map(|n| {
                    self.id_of(StatKey {
                        subsys: StatSubsys::Nvm(i),
                        nsid: n.nsid,
                    })
                })
                .collect();
            self.ns.push(ns);
        }
    }

    fn id_of(&mut self, key: StatKey) -> u32 {
        match self.keys.iter().position(|k| *k == key) {
            Some(i) => i as u32,
            None => {
                self.keys.push(key);
                (self.keys.len() - 1) as u32
            }
        }
    }

    /// Every id's key, by id.
    pub fn keys(&self) -> &[StatKey] {
        &self.keys
    }

    /// The id of a command naming `nsid` on a queue of `subsys` (`io_queue`: an I/O queue; only
    /// its commands count for a namespace), and the namespace's block size (0: not a namespace).
    /// `target` is the snapshot the tables were built from.
    #[inline]
    pub fn resolve(
        &self,
        target: &Target,
        subsys: Option<SubsysRef>,
        io_queue: bool,
        nsid: u32,
    ) -> (u32, u32) {
        match subsys {
            None => (NONE_ID, 0),
            Some(SubsysRef::Discovery) => (DISCOVERY_ID, 0),
            Some(SubsysRef::Nvm(s)) => {
                let base = self.subsys.get(s).copied().unwrap_or(NONE_ID);
                if !io_queue {
                    return (base, 0);
                }
                let Some(sub) = target.subsystems.get(s) else {
                    return (base, 0);
                };
                match sub.namespaces.binary_search_by_key(&nsid, |n| n.nsid) {
                    Ok(i) => match self.ns.get(s).and_then(|v| v.get(i)) {
                        Some(&id) => (id, sub.namespaces[i].info.block_size),
                        None => (base, 0),
                    },
                    Err(_) => (base, 0),
                }
            }
        }
    }
}

/// Opcode classes commands are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum OpClass {
    Read = 0,
    Write,
    Flush,
    WriteZeroes,
    DatasetManagement,
    /// Any other opcode on an I/O queue.
    OtherIo,
    /// Admin commands (on an admin queue, or on a queue not connected yet).
    Admin,
    /// Fabrics commands (Connect, Property Get/Set, Disconnect, ...).
    Fabrics,
}

pub const CLASSES: usize = 8;

impl OpClass {
    pub const ALL: [OpClass; CLASSES] = [
        OpClass::Read,
        OpClass::Write,
        OpClass::Flush,
        OpClass::WriteZeroes,
        OpClass::DatasetManagement,
        OpClass::OtherIo,
        OpClass::Admin,
        OpClass::Fabrics,
    ];

    #[inline]
    pub fn of(op: u8, io_queue: bool) -> OpClass {
        if op == opcode::FABRICS {
            return OpClass::Fabrics;
        }
        if !io_queue {
            return OpClass::Admin;
        }
        match op {
            opcode::NVM_READ => OpClass::Read,
            opcode::NVM_WRITE => OpClass::Write,
            opcode::NVM_FLUSH => OpClass::Flush,
            opcode::NVM_WRITE_ZEROES => OpClass::WriteZeroes,
            opcode::NVM_DATASET_MANAGEMENT => OpClass::DatasetManagement,
            _ => OpClass::OtherIo,
        }
    }

    /// The `opcode` label.
    pub fn name(self) -> &'static str {
        match self {
            OpClass::Read => "read",
            OpClass::Write => "write",
            OpClass::Flush => "flush",
            OpClass::WriteZeroes => "write_zeroes",
            OpClass::DatasetManagement => "dataset_management",
            OpClass::OtherIo => "other_io",
            OpClass::Admin => "admin",
            OpClass::Fabrics => "fabrics",
        }
    }

    /// The latency histogram the class goes into: 0 read, 1 write, 2 everything else.
    #[inline]
    pub fn latency_class(self) -> usize {
        match self {
            OpClass::Read => 0,
            OpClass::Write => 1,
            _ => 2,
        }
    }
}

/// The `class` label of latency histogram `i`.
pub const LATENCY_CLASSES: [&str; 3] = ["read", "write", "other"];

/// Latency buckets: bucket `i` < [`BUCKETS`] - 1 holds latencies of at most 2^(10 + i) ns
/// (1.024 µs, 2.048 µs, ... 4.29 s); the last one everything longer.
pub const BUCKETS: usize = 24;
pub const FIRST_BUCKET_LOG2: u32 = 10;

/// A latency histogram with fixed log2 buckets (counts per bucket, not cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hist {
    pub counts: [u64; BUCKETS],
    pub sum_ns: u64,
}

impl Hist {
    /// The bucket of a latency of `ns` nanoseconds: the smallest `i` with ns ≤ 2^(10+i).
    #[inline]
    pub fn bucket(ns: u64) -> usize {
        if ns <= 1 << FIRST_BUCKET_LOG2 {
            return 0;
        }
        // ceil(log2(ns)) for ns ≥ 2.
        let log2 = 64 - (ns - 1).leading_zeros();
        ((log2 - FIRST_BUCKET_LOG2) as usize).min(BUCKETS - 1)
    }

    #[inline]
    pub fn observe(&mut self, ns: u64) {
        self.counts[Self::bucket(ns)] += 1;
        self.sum_ns = self.sum_ns.wrapping_add(ns);
    }

    /// Upper bound of bucket `i`, in seconds (infinite for the last).
    pub fn upper_bound_seconds(i: usize) -> f64 {
        if i + 1 >= BUCKETS {
            f64::INFINITY
        } else {
            (1u64 << (FIRST_BUCKET_LOG2 as usize + i)) as f64 / 1e9
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn add(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.wrapping_add(o.sum_ns);
    }
}

/// The counters of one [`StatKey`] on one transport of one reactor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NsStats {
    /// Commands answered, by [`OpClass`].
    pub commands: [u64; CLASSES],
    /// Data bytes of successful Read and Write commands (NLB × block size), by class.
    pub bytes: [u64; CLASSES],
    /// Commands answered with a status other than success, by class.
    pub errors: [u64; CLASSES],
    /// Latency by [`OpClass::latency_class`] (held commands, AERs, are not in it).
    pub latency: [Hist; 3],
    /// Commands taken and not answered yet (AERs the core holds excluded).
    pub in_flight: i64,
}

/// One (id, class, status) count of the error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrEntry {
    pub id: u32,
    pub class: OpClass,
    pub sct: u8,
    pub sc: u8,
    pub count: u64,
}

/// Distinct (id, class, status) combinations one transport of a reactor tells apart; errors past
/// them are still in [`NsStats::errors`] (reported with status "other").
pub const ERR_ENTRIES: usize = 256;

/// One poll group's (one transport's) counters on one reactor.
#[derive(Debug, Clone, Default)]
pub struct IoStats {
    /// Whether commands are counted (the metrics endpoint is served).
    pub on: bool,
    /// By id ([`StatIds`]).
    pub ns: Vec<NsStats>,
    /// Errors by status, at most [`ERR_ENTRIES`] (made with that capacity: no allocation when
    /// one is added).
    pub errors: Vec<ErrEntry>,
    /// Connected queue pairs that have ended since start: admin, I/O (counted whether `on` or
    /// not; `nvmf_get_stats` adds the current ones for SPDK's `admin_qpairs`/`io_qpairs`).
    pub qpairs_ended: [u64; 2],
    /// Commands being counted now ([`Track::active`] set): zero once counting is off and the
    /// last counted command is answered, so the data path then skips its slot lookups.
    tracked: u64,
}

/// A command being counted, per transport slot of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track {
    /// When the reactor took the command, ns since the reactor's epoch.
    pub start_ns: u64,
    pub id: u32,
    /// Bytes the command moves if it succeeds (Read, Write).
    pub bytes: u64,
    pub class: OpClass,
    /// Counted in `in_flight` (and to be counted when answered).
    pub active: bool,
    /// Held by the core (an AER): not in `in_flight`, no latency.
    pub held: bool,
}

impl Track {
    pub const IDLE: Track = Track {
        start_ns: 0,
        id: 0,
        bytes: 0,
        class: OpClass::Admin,
        active: false,
        held: false,
    };
}

impl IoStats {
    pub fn new() -> Self {
        IoStats {
            on: false,
            ns: Vec::new(),
            errors: Vec::with_capacity(ERR_ENTRIES),
            qpairs_ended: [0; 2],
            tracked: 0,
        }
    }

    /// Whether commands are counted or some still are (counting was on when they were taken):
    /// when not, taking or answering a command needs no clock.
    #[inline]
    pub fn tracking(&self) -> bool {
        self.on || self.tracked != 0
    }

    /// Whether some command is being counted: when not, answering one has nothing to count.
    #[inline]
    pub fn any_tracked(&self) -> bool {
        self.tracked != 0
    }

    /// Room for `n` ids (the control path, after [`StatIds::update`]).
    pub fn grow(&mut self, n: usize) {
        if self.ns.len() < n {
            self.ns.resize(n, NsStats::default());
        }
    }

    /// A command was taken: start counting it in `t` (which replaces a command the transport
    /// ended on its own without an answer through the reactor, if the slot still held one).
    #[inline]
    pub fn start(&mut self, t: &mut Track, id: u32, class: OpClass, bytes: u64, now_ns: u64) {
        self.drop_track(t);
        if !self.on {
            return;
        }
        let Some(n) = self.ns.get_mut(id as usize) else {
            return;
        };
        n.in_flight += 1;
        self.tracked += 1;
        *t = Track {
            start_ns: now_ns,
            id,
            bytes,
            class,
            active: true,
            held: false,
        };
    }

    /// The core holds the command (an AER): out of `in_flight` until answered.
    #[inline]
    pub fn hold(&mut self, t: &mut Track) {
        if t.active && !t.held {
            if let Some(n) = self.ns.get_mut(t.id as usize) {
                n.in_flight -= 1;
            }
            t.held = true;
        }
    }

    /// The command is answered with `status` (`now_ns`: when). `id` replaces the id it started
    /// with when given (a Connect that made its queue part of a subsystem).
    #[inline]
    pub fn finish(&mut self, t: &mut Track, status: Status, now_ns: u64, id: Option<u32>) {
        if !t.active {
            return;
        }
        t.active = false;
        self.tracked -= 1;
        if !t.held {
            if let Some(n) = self.ns.get_mut(t.id as usize) {
                n.in_flight -= 1;
            }
        }
        let id = id.unwrap_or(t.id);
        let Some(n) = self.ns.get_mut(id as usize) else {
            return;
        };
        let c = t.class as usize;
        n.commands[c] += 1;
        if !t.held {
            n.latency[t.class.latency_class()].observe(now_ns.saturating_sub(t.start_ns));
        }
        if status.is_success() {
            n.bytes[c] += t.bytes;
        } else {
            n.errors[c] += 1;
            self.error(id, t.class, status);
        }
    }

    /// A command ends without an answer (its connection went away).
    #[inline]
    pub fn drop_track(&mut self, t: &mut Track) {
        if t.active {
            if !t.held {
                if let Some(n) = self.ns.get_mut(t.id as usize) {
                    n.in_flight -= 1;
                }
            }
            t.active = false;
            self.tracked -= 1;
        }
    }

    fn error(&mut self, id: u32, class: OpClass, s: Status) {
        if let Some(e) = (self.errors.iter_mut())
            .find(|e| e.id == id && e.class == class && e.sct == s.sct && e.sc == s.sc)
        {
            e.count += 1;
        } else if self.errors.len() < ERR_ENTRIES {
            self.errors.push(ErrEntry {
                id,
                class,
                sct: s.sct,
                sc: s.sc,
                count: 1,
            });
        }
    }
}

/// Nanoseconds from `epoch` to `now`.
#[inline]
pub fn ns_since(epoch: std::time::Instant, now: std::time::Instant) -> u64 {
    now.saturating_duration_since(epoch).as_nanos() as u64
}

/// A data buffer pool's use, for reports.
pub use nvmfd_transport::group::PoolStats;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2_with_inclusive_upper_bounds() {
        assert_eq!(Hist::bucket(0), 0);
        assert_eq!(Hist::bucket(1024), 0);
        assert_eq!(Hist::bucket(1025), 1);
        assert_eq!(Hist::bucket(2048), 1);
        assert_eq!(Hist::bucket(2049), 2);
        assert_eq!(Hist::bucket(1 << 20), 10);
        assert_eq!(Hist::bucket(1 << 32), BUCKETS - 2);
        assert_eq!(Hist::bucket((1 << 32) + 1), BUCKETS - 1);
        assert_eq!(Hist::bucket(u64::MAX), BUCKETS - 1);
        // Every latency lies within its bucket's bounds.
        for ns in [1u64, 1000, 1500, 4096, 99_999, 1_000_000, 123_456_789] {
            let b = Hist::bucket(ns);
            assert!(ns as f64 / 1e9 <= Hist::upper_bound_seconds(b), "{ns}");
            if b > 0 {
                assert!(ns as f64 / 1e9 > Hist::upper_bound_seconds(b - 1), "{ns}");
            }
        }
        assert_eq!(Hist::upper_bound_seconds(0), 1024e-9);
        assert!(Hist::upper_bound_seconds(BUCKETS - 1).is_infinite());
    }

    fn stats(n: usize) -> IoStats {
        let mut s = IoStats::new();
        s.on = true;
        s.grow(n);
        s
    }

    #[test]
    fn a_command_counts_once_with_bytes_only_on_success() {
        let mut s = stats(3);
        let mut t = Track::IDLE;
        s.start(&mut t, 2, OpClass::Read, 8192, 1000);
        assert_eq!(s.ns[2].in_flight, 1);
        s.finish(&mut t, Status::SUCCESS, 6000, None);
        // Finishing twice (a stale slot) counts nothing more.
        s.finish(&mut t, Status::SUCCESS, 9000, None);
        s.start(&mut t, 2, OpClass::Write, 4096, 10_000);
        s.finish(&mut t, Status::LBA_OUT_OF_RANGE, 10_500, None);
        let n = &s.ns[2];
        assert_eq!(n.in_flight, 0);
        assert_eq!(n.commands[OpClass::Read as usize], 1);
        assert_eq!(n.commands[OpClass::Write as usize], 1);
        assert_eq!(n.bytes[OpClass::Read as usize], 8192);
        assert_eq!(n.bytes[OpClass::Write as usize], 0);
        assert_eq!(n.errors[OpClass::Write as usize], 1);
        assert_eq!(n.latency[0].count(), 1);
        assert_eq!(n.latency[0].sum_ns, 5000);
        assert_eq!(n.latency[0].counts[Hist::bucket(5000)], 1);
        assert_eq!(n.latency[1].sum_ns, 500);
        let e = LBA_OUT_OF_RANGE_ENTRY;
        assert_eq!(
            s.errors,
            vec![ErrEntry {
                count: 1,
                id: 2,
                ..e
            }]
        );
    }

    /// Commands counted while counting was on are still tracked once it is off, until they
    /// are answered or dropped; only then does the data path skip counting altogether.
    #[test]
    fn tracking_lasts_until_the_last_counted_command_ends() {
        let mut s = stats(3);
        assert!(s.tracking() && !s.any_tracked(), "on, nothing taken yet");
        let (mut a, mut b, mut c) = (Track::IDLE, Track::IDLE, Track::IDLE);
        s.start(&mut a, 1, OpClass::Read, 4096, 0);
        s.start(&mut b, 1, OpClass::Write, 4096, 0);
        s.start(&mut c, 1, OpClass::Admin, 0, 0);
        s.hold(&mut c);
        s.on = false;
        assert!(s.tracking() && s.any_tracked());
        s.finish(&mut a, Status::SUCCESS, 10, None);
        s.drop_track(&mut b);
        assert!(s.any_tracked(), "the held command is still counted");
        s.finish(&mut c, Status::SUCCESS, 20, None);
        assert!(!s.tracking() && !s.any_tracked());
        // Off, a new command is not counted (and its slot's finish does nothing).
        s.start(&mut a, 1, OpClass::Read, 4096, 30);
        assert!(!s.any_tracked() && !a.active);
        assert_eq!(s.ns[1].commands[OpClass::Read as usize], 1);
        assert_eq!(s.ns[1].in_flight, 0);
    }

    const LBA_OUT_OF_RANGE_ENTRY: ErrEntry = ErrEntry {
        id: 0,
        class: OpClass::Write,
        sct: Status::LBA_OUT_OF_RANGE.sct,
        sc: Status::LBA_OUT_OF_RANGE.sc,
        count: 0,
    };

    #[test]
    fn held_dropped_and_reused_slots_keep_in_flight_exact() {
        let mut s = stats(2);
        let mut aer = Track::IDLE;
        s.start(&mut aer, 1, OpClass::Admin, 0, 0);
        s.hold(&mut aer);
        assert_eq!(s.ns[1].in_flight, 0);
        s.finish(&mut aer, Status::SUCCESS, 5_000_000_000, None);
        assert_eq!(s.ns[1].commands[OpClass::Admin as usize], 1);
        assert_eq!(
            s.ns[1].latency[2].count(),
            0,
            "held commands have no latency"
        );
        assert_eq!(s.ns[1].in_flight, 0);
        // A slot reused while still counted (the transport ended the command itself).
        let mut t = Track::IDLE;
        s.start(&mut t, 1, OpClass::Write, 512, 0);
        s.start(&mut t, 1, OpClass::Write, 512, 10);
        assert_eq!(s.ns[1].in_flight, 1);
        s.drop_track(&mut t);
        assert_eq!(s.ns[1].in_flight, 0);
        assert_eq!(s.ns[1].commands[OpClass::Write as usize], 0);
        // A Connect counted under the subsystem it joined.
        s.start(&mut t, NONE_ID, OpClass::Fabrics, 0, 0);
        s.finish(&mut t, Status::SUCCESS, 100, Some(1));
        assert_eq!(s.ns[0].in_flight, 0);
        assert_eq!(s.ns[0].commands[OpClass::Fabrics as usize], 0);
        assert_eq!(s.ns[1].commands[OpClass::Fabrics as usize], 1);
    }

    #[test]
    fn counting_off_counts_nothing() {
        let mut s = IoStats::new();
        s.grow(2);
        let mut t = Track::IDLE;
        s.start(&mut t, 1, OpClass::Read, 4096, 0);
        s.finish(&mut t, Status::SUCCESS, 10, None);
        assert_eq!(s.ns[1], NsStats::default());
    }

    #[test]
    fn the_error_table_is_bounded() {
        let mut s = stats(2);
        let mut t = Track::IDLE;
        for sc in 0..=255u8 {
            for class in [OpClass::Read, OpClass::Write] {
                s.start(&mut t, 1, class, 0, 0);
                s.finish(&mut t, Status::generic(sc.max(1)), 1, None);
            }
        }
        assert_eq!(s.errors.len(), ERR_ENTRIES);
        assert_eq!(s.errors.capacity(), ERR_ENTRIES);
        let tracked: u64 = s.errors.iter().map(|e| e.count).sum();
        let all = s.ns[1].errors.iter().sum::<u64>();
        assert_eq!(all, 512);
        assert!(tracked < all);
    }

    #[test]
    fn ids_are_dense_stable_and_resolve_namespaces() {
        let yaml = "bdevs: [ { name: a, malloc: { size: 1MiB } }, { name: b, malloc: { size: 1MiB, block_size: 512 } } ]\n\
                    subsystems: [ { nqn: nqn.2026-11.io.nvmfd:x, namespaces: [ { nsid: 7, bdev: a }, { nsid: 2, bdev: b } ] } ]\n";
        let cfg = nvmfd_config::parse_str(yaml, "t.yaml").expect("valid");
        let info = |name: &str, bs| nvmfd_bdev::BdevInfo {
            name: name.into(),
            kind: "test",
            block_size: bs,
            num_blocks: 256,
            deallocate_zeroes: true,
            volatile_cache: true,
        };
        let t = Target::new(&cfg, &[info("a", 4096), info("b", 512)]);
        let ids = StatIds::new(&t);
        let key = |id: u32| ids.keys()[id as usize];
        let nvm = Some(SubsysRef::Nvm(0));
        let (a, bs_a) = ids.resolve(&t, nvm, true, 7);
        let (b, bs_b) = ids.resolve(&t, nvm, true, 2);
        assert_eq!((bs_a, bs_b), (4096, 512));
        assert_eq!(key(a).nsid, 7);
        assert_eq!(key(b).nsid, 2);
        assert_eq!(key(a).subsys, StatSubsys::Nvm(0));
        // Not a namespace: the subsystem's own id, as for the admin queue.
        let (sub, bs) = ids.resolve(&t, nvm, true, 9);
        assert_eq!(
            (key(sub), bs),
            (
                StatKey {
                    subsys: StatSubsys::Nvm(0),
                    nsid: 0
                },
                0
            )
        );
        assert_eq!(ids.resolve(&t, nvm, false, 7).0, sub);
        assert_eq!(ids.resolve(&t, None, true, 7), (NONE_ID, 0));
        assert_eq!(
            ids.resolve(&t, Some(SubsysRef::Discovery), false, 0),
            (DISCOVERY_ID, 0)
        );
        assert_eq!(ids.keys().len(), 5);
        // The same snapshot again changes no id.
        let mut again = ids.clone();
        again.update(&t);
        assert_eq!(again.keys(), ids.keys());
        assert_eq!(again.resolve(&t, nvm, true, 7).0, a);
    }
}
