//! The reactors' reports as every reader sees them: the RPC methods that show per-reactor
//! numbers (`nvmf_get_stats`, `nvmf_subsystem_get_qpairs`, `nvmfd_get_p2p`) and `/metrics` ask
//! through one path, `Live::collect`, which asks every reactor (by message, waiting up to 2 s)
//! and merges the answers with one [`ReportCache`].
//!
//! A reactor that misses the deadline (busy, or sleeping between polls) is shown with the last
//! report it gave, flagged stale with its age, instead of being left out: left out, its queue
//! pairs would vanish from `nvmf_subsystem_get_qpairs` and its counters would drop from the
//! sums (a counter that goes down is read by Prometheus as a reset, and `rate()` counts the
//! whole total again). A reactor never heard from is listed as such (no report).

use crate::reactor::ReactorReport;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Each reactor's last report, and the collections it missed.
#[derive(Debug, Default)]
pub struct ReportCache {
    last: Mutex<BTreeMap<usize, Kept>>,
}

#[derive(Debug, Default)]
struct Kept {
    /// The newest report and when it came in (None: never answered yet).
    report: Option<(ReactorReport, Instant)>,
    /// Collections this reactor did not answer in time, since start.
    misses: u64,
}

/// One reactor as one collection shows it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub reactor: usize,
    /// This collection's answer, or (when `stale`) the last one the reactor gave; None when it
    /// has never answered.
    pub report: Option<ReactorReport>,
    /// The reactor did not answer this collection in time.
    pub stale: bool,
    /// Age of the numbers shown (0 for an answer to this collection, and for no report).
    pub age: Duration,
    /// Collections the reactor did not answer in time, since start.
    pub misses: u64,
}

/// A report's own clock: poll loop iterations only grow, so of two reports of one reactor the
/// one with more is the newer (two collections at once may get their answers in either order).
fn polls(r: &ReactorReport) -> u64 {
    r.polls_busy.saturating_add(r.polls_idle)
}

impl ReportCache {
    /// What one collection shows: every reactor of `expected` (and any other that answered),
    /// sorted by reactor, with its answer in `fresh` or else its last report.
    pub fn merge(&self, fresh: Vec<ReactorReport>, expected: &[usize]) -> Vec<Seen> {
        let now = Instant::now();
        // A poisoned lock only means another collection panicked mid-merge; the map is whole.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut answered = Vec::with_capacity(fresh.len());
        for r in fresh {
            answered.push(r.reactor);
            let k = last.entry(r.reactor).or_default();
            match &k.report {
                Some((kept, _)) if polls(kept) > polls(&r) => {}
                _ => k.report = Some((r, now)),
            }
        }
        let mut ids: Vec<usize> = expected.iter().chain(&answered).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let k = last.entry(id).or_default();
                let stale = !answered.contains(&id);
                if stale {
                    k.misses += 1;
                }
                Seen {
                    reactor: id,
                    report: k.report.as_ref().map(|(r, _)| r.clone()),
                    stale,
                    age: match &k.report {
                        Some((_, at)) if stale => now - *at,
                        _ => Duration::ZERO,
                    },
                    misses: k.misses,
                }
            })
            .collect()
    }
}

/// The reports of `seen` (reactors never heard from have none), by reactor.
pub fn reports(seen: &[Seen]) -> Vec<ReactorReport> {
    seen.iter().filter_map(|s| s.report.clone()).collect()
}

/// `seen`'s freshness as JSON members: `stale`, and for a stale report `age_ms` (whole
/// milliseconds) and the reactor's `misses`; `reported: false` for a reactor never heard from.
/// Added to SPDK's result objects (extra keys only: SPDK's clients read the ones they know).
pub fn freshness_json(seen: &Seen) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("stale".into(), seen.stale.into());
    if seen.report.is_none() {
        m.insert("reported".into(), false.into());
    } else if seen.stale {
        let ms = u64::try_from(seen.age.as_millis()).unwrap_or(u64::MAX);
        m.insert("age_ms".into(), ms.into());
    }
    if seen.misses > 0 {
        m.insert("misses".into(), seen.misses.into());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(reactor: usize, completed: u64, polls: u64) -> ReactorReport {
        ReactorReport {
            reactor,
            admin_qpairs: 1,
            io_qpairs: 2,
            admin_qpairs_total: 1,
            io_qpairs_total: 2,
            pending_bdev_io: 0,
            completed_io: completed,
            qpairs: Vec::new(),
            polls_busy: polls,
            polls_idle: 0,
            stat_keys: Vec::new(),
            io: Vec::new(),
            pools: Vec::new(),
            p2p_bdevs: Vec::new(),
        }
    }

    /// A late reactor's last report stands in for it (stale, aged, misses counted); an older
    /// answer never replaces a newer one; a reactor never heard from is listed without one.
    #[test]
    fn late_and_silent_reactors_are_listed() {
        let c = ReportCache::default();
        let s = c.merge(vec![report(0, 5, 10)], &[0, 1]);
        assert_eq!(s.len(), 2);
        assert!(!s[0].stale && s[0].report.is_some() && s[0].age == Duration::ZERO);
        assert!(
            s[1].stale && s[1].report.is_none() && s[1].misses == 1,
            "{s:?}"
        );
        assert_eq!(freshness_json(&s[1])["reported"], false);
        assert!(!freshness_json(&s[0]).contains_key("age_ms"));

        std::thread::sleep(Duration::from_millis(20));
        let s = c.merge(vec![report(1, 1, 3)], &[0, 1]);
        assert!(s[0].stale && s[0].misses == 1);
        assert_eq!(s[0].report.as_ref().unwrap().completed_io, 5);
        assert!(s[0].age >= Duration::from_millis(20), "{:?}", s[0].age);
        let j = freshness_json(&s[0]);
        assert_eq!(j["stale"], true);
        assert!(j["age_ms"].as_u64().unwrap() >= 20, "{j:?}");
        assert!(!s[1].stale && s[1].misses == 1);

        // An answer older than the one kept (fewer polls) does not take its place.
        let s = c.merge(vec![report(0, 4, 9), report(1, 2, 4)], &[0, 1]);
        assert_eq!(s[0].report.as_ref().unwrap().completed_io, 5);
        assert!(!s[0].stale);
        assert_eq!(reports(&s).len(), 2);
    }
}
