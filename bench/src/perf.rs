//! The engine of `nvmfd-perf`: one I/O queue kept `queue_depth` deep for a fixed time, latency in
//! an HDR histogram, writes stamped with [`crate::pattern`] and optionally read back and checked.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

use crate::host::{Controller, Host, HostOptions, IoQueue};
use crate::pattern;

/// The access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    RandRead,
    RandWrite,
    Read,
    Write,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Read => "read",
            Workload::Write => "write",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Some(match s {
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "read" => Workload::Read,
            "write" => Workload::Write,
            _ => return None,
        })
    }

    pub fn is_write(self) -> bool {
        matches!(self, Workload::RandWrite | Workload::Write)
    }

    pub fn is_random(self) -> bool {
        matches!(self, Workload::RandRead | Workload::RandWrite)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PerfConfig {
    pub addr: SocketAddr,
    pub host: HostOptions,
    pub workload: Workload,
    pub io_size: usize,
    pub queue_depth: u16,
    pub duration: Duration,
    pub nsid: u32,
    pub qid: u16,
    /// Limit the LBA range to this many bytes from LBA 0 (whole namespace if None).
    pub span_bytes: Option<u64>,
    /// Write workloads: read everything written back and check it. Read workloads: check that
    /// every stamped block read sits at its own LBA and is intact.
    pub verify: bool,
    pub seed: u64,
}

/// Results of one run.
#[derive(Debug, Clone)]
pub struct PerfReport {
    pub workload: Workload,
    pub io_size: usize,
    pub queue_depth: u16,
    pub seconds: f64,
    pub ios: u64,
    /// Commands that completed with an error status.
    pub errors: u64,
    pub first_error: Option<String>,
    pub iops: f64,
    pub mb_per_s: f64,
    pub lat_avg_us: f64,
    pub lat_min_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    pub lat_max_us: f64,
    /// Blocks checked by `verify`, and the mismatches found (at most 10 kept).
    pub verified_blocks: u64,
    pub verify_failures: Vec<String>,
    pub verify_failure_count: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct Verify {
    count: u64,
    kept: Vec<String>,
    blocks: u64,
}

impl Verify {
    fn fail(&mut self, what: String) {
        self.count += 1;
        if self.kept.len() < 10 {
            self.kept.push(what);
        }
    }
}

/// Connect, run the workload, optionally verify, disconnect.
pub fn run(cfg: &PerfConfig) -> anyhow::Result<PerfReport> {
    let mut ctrl = Host::connect_admin(cfg.addr, &cfg.host)
        .with_context(|| format!("connecting to {} at {}", cfg.host.subnqn, cfg.addr))?;
    let ns = ctrl
        .namespace_info(cfg.nsid)
        .with_context(|| format!("identifying namespace {}", cfg.nsid))?;
    let bs = ns.block_size as usize;
    if bs == 0 || ns.nsze == 0 {
        bail!("namespace {} is not active", cfg.nsid);
    }
    if cfg.io_size == 0 || !cfg.io_size.is_multiple_of(bs) {
        bail!(
            "io size {} is not a multiple of the {bs}-byte block size",
            cfg.io_size
        );
    }
    let mqes = (ctrl.cap() & 0xffff) as u32 + 1;
    if cfg.queue_depth as u32 > mqes {
        bail!(
            "queue depth {} is above the controller's maximum of {mqes}",
            cfg.queue_depth
        );
    }
    let io_blocks = (cfg.io_size / bs) as u64;
    let span_blocks = cfg
        .span_bytes
        .map_or(ns.nsze, |b| (b / bs as u64).min(ns.nsze));
    let units = span_blocks / io_blocks;
    if units == 0 {
        bail!(
            "the LBA range of {span_blocks} blocks holds no {}-byte I/O",
            cfg.io_size
        );
    }
    // A queue has at least two entries (Connect's 0-based SQSIZE must be >= 1), so QD 1 still
    // connects a 2-entry queue and keeps one command in flight.
    let mut io = ctrl
        .connect_io(cfg.qid, cfg.queue_depth.max(2))
        .context("connecting the I/O queue")?;
    let mut r = Runner {
        cfg,
        bs,
        io_blocks,
        units,
        hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds"),
        written: HashMap::new(),
        verify: Verify {
            count: 0,
            kept: Vec::new(),
            blocks: 0,
        },
        errors: 0,
        first_error: None,
    };
    let (ios, elapsed) = r.measure(&mut ctrl, &mut io)?;
    if cfg.verify && cfg.workload.is_write() {
        r.read_back(&mut io)?;
    }
    io.close();
    let _ = ctrl.disconnect();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let h = &r.hist;
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(PerfReport {
        workload: cfg.workload,
        io_size: cfg.io_size,
        queue_depth: cfg.queue_depth,
        seconds: secs,
        ios,
        errors: r.errors,
        first_error: r.first_error,
        iops: ios as f64 / secs,
        mb_per_s: ios as f64 * cfg.io_size as f64 / secs / 1e6,
        lat_avg_us: h.mean() / 1000.0,
        lat_min_us: us(h.min()),
        lat_p50_us: us(h.value_at_quantile(0.5)),
        lat_p99_us: us(h.value_at_quantile(0.99)),
        lat_p999_us: us(h.value_at_quantile(0.999)),
        lat_max_us: us(h.max()),
        verified_blocks: r.verify.blocks,
        verify_failures: r.verify.kept,
        verify_failure_count: r.verify.count,
    })
}

struct Runner<'a> {
    cfg: &'a PerfConfig,
    bs: usize,
    io_blocks: u64,
    units: u64,
    hist: Histogram<u64>,
    /// Unit -> generation of the last write submitted to it.
    written: HashMap<u64, u64>,
    verify: Verify,
    errors: u64,
    first_error: Option<String>,
}

impl Runner<'_> {
    /// The timed phase. Returns the number of I/Os completed and the time they took.
    fn measure(
        &mut self,
        ctrl: &mut Controller,
        io: &mut IoQueue,
    ) -> anyhow::Result<(u64, Duration)> {
        let cfg = self.cfg;
        let w = cfg.workload;
        let mut rng = Rng(cfg.seed);
        // Generations are unique to this run so stale data from earlier runs never matches.
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            & 0xffff_ffff;
        let mut generation = run_id << 32;
        let mut next_seq = 0u64;
        let mut busy: HashSet<u64> = HashSet::new();
        let mut by_cid: HashMap<u16, u64> = HashMap::new();
        let mut wbuf = vec![0u8; cfg.io_size];
        let keep_alive_every = Duration::from_millis((cfg.host.kato_ms as u64 / 3).max(100));
        let start = Instant::now();
        let deadline = start + cfg.duration;
        let mut last_keep_alive = start;
        let mut ios = 0u64;
        loop {
            let now = Instant::now();
            if now < deadline {
                while io.outstanding() < cfg.queue_depth as usize {
                    let unit = if w.is_random() {
                        rng.next() % self.units
                    } else {
                        let u = next_seq;
                        next_seq = (next_seq + 1) % self.units;
                        u
                    };
                    // Never two writes to one place at once: the last one submitted must be
                    // the one the read-back expects.
                    if w.is_write() && busy.contains(&unit) {
                        if !w.is_random() {
                            next_seq = unit;
                        }
                        break;
                    }
                    let lba = unit * self.io_blocks;
                    let cid = if w.is_write() {
                        generation += 1;
                        pattern::fill(&mut wbuf, lba, self.bs, generation);
                        busy.insert(unit);
                        if cfg.verify {
                            self.written.insert(unit, generation);
                        }
                        io.submit_write(cfg.nsid, lba, &wbuf, self.bs)?
                    } else {
                        io.submit_read(cfg.nsid, lba, self.io_blocks as u32, self.bs)?
                    };
                    by_cid.insert(cid, unit);
                }
                if now.duration_since(last_keep_alive) >= keep_alive_every && cfg.host.kato_ms != 0
                {
                    ctrl.keep_alive().context("keep alive")?;
                    last_keep_alive = now;
                }
            } else if io.outstanding() == 0 {
                return Ok((ios, start.elapsed()));
            }
            for c in io.poll_completions(1)? {
                let unit = by_cid
                    .remove(&c.cid)
                    .expect("completion for a submitted command");
                busy.remove(&unit);
                ios += 1;
                self.hist.saturating_record(c.latency.as_nanos() as u64);
                if let Some(e) = c.error {
                    bail!("I/O at LBA {}: {e}", unit * self.io_blocks);
                }
                if !c.cqe.status.is_success() {
                    self.errors += 1;
                    if self.first_error.is_none() {
                        self.first_error =
                            Some(format!("LBA {}: {}", unit * self.io_blocks, c.cqe.status));
                    }
                    if w.is_write() {
                        self.written.remove(&unit);
                    }
                } else if cfg.verify && !w.is_write() {
                    let lba = unit * self.io_blocks;
                    self.verify.blocks += self.io_blocks;
                    if let Err(m) = pattern::check_placement(&c.data, lba, self.bs) {
                        self.verify.fail(m.to_string());
                    }
                }
                io.recycle_buffer(c.data);
            }
        }
    }

    /// Read back every unit written and check its pattern.
    fn read_back(&mut self, io: &mut IoQueue) -> anyhow::Result<()> {
        let cfg = self.cfg;
        let mut todo: Vec<(u64, u64)> = self.written.iter().map(|(&u, &g)| (u, g)).collect();
        todo.sort_unstable();
        let mut todo = todo.into_iter();
        let mut by_cid: HashMap<u16, (u64, u64)> = HashMap::new();
        loop {
            while io.outstanding() < cfg.queue_depth as usize {
                let Some((unit, generation)) = todo.next() else {
                    break;
                };
                let cid = io.submit_read(
                    cfg.nsid,
                    unit * self.io_blocks,
                    self.io_blocks as u32,
                    self.bs,
                )?;
                by_cid.insert(cid, (unit, generation));
            }
            if io.outstanding() == 0 {
                return Ok(());
            }
            for c in io.poll_completions(1)? {
                let (unit, generation) = by_cid
                    .remove(&c.cid)
                    .expect("completion for a submitted read");
                let lba = unit * self.io_blocks;
                if let Some(e) = c.error {
                    bail!("verify read at LBA {lba}: {e}");
                }
                if !c.cqe.status.is_success() {
                    self.verify
                        .fail(format!("LBA {lba}: read failed: {}", c.cqe.status));
                    continue;
                }
                self.verify.blocks += self.io_blocks;
                if let Err(m) = pattern::check(&c.data, lba, self.bs, generation) {
                    self.verify.fail(m.to_string());
                }
                io.recycle_buffer(c.data);
            }
        }
    }
}

impl PerfReport {
    /// A table like spdk_nvme_perf's summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<10} {:>8} {:>5} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "workload",
            "io_size",
            "qd",
            "IOPS",
            "MB/s",
            "avg_us",
            "p50_us",
            "p99_us",
            "p99.9_us",
            "max_us"
        );
        let _ = writeln!(
            s,
            "{:<10} {:>8} {:>5} {:>12.1} {:>10.2} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            self.workload.name(),
            self.io_size,
            self.queue_depth,
            self.iops,
            self.mb_per_s,
            self.lat_avg_us,
            self.lat_p50_us,
            self.lat_p99_us,
            self.lat_p999_us,
            self.lat_max_us
        );
        let _ = write!(s, "{} I/Os in {:.2} s", self.ios, self.seconds);
        if self.errors > 0 {
            let _ = write!(
                s,
                ", {} failed (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> String {
        let list: Vec<String> = self.verify_failures.iter().map(|f| json_str(f)).collect();
        format!(
            concat!(
                "{{\"workload\":{},\"io_size\":{},\"queue_depth\":{},\"seconds\":{:.6},\"ios\":{},",
                "\"errors\":{},\"first_error\":{},\"iops\":{:.1},\"mb_per_s\":{:.3},",
                "\"latency_us\":{{\"avg\":{:.3},\"min\":{:.3},\"p50\":{:.3},\"p99\":{:.3},\"p99_9\":{:.3},\"max\":{:.3}}},",
                "\"verify\":{{\"blocks\":{},\"failures\":{},\"examples\":[{}]}}}}"
            ),
            json_str(self.workload.name()),
            self.io_size,
            self.queue_depth,
            self.seconds,
            self.ios,
            self.errors,
            self.first_error.as_deref().map_or("null".to_string(), json_str),
            self.iops,
            self.mb_per_s,
            self.lat_avg_us,
            self.lat_min_us,
            self.lat_p50_us,
            self.lat_p99_us,
            self.lat_p999_us,
            self.lat_max_us,
            self.verified_blocks,
            self.verify_failure_count,
            list.join(",")
        )
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn workload_names_round_trip() {
        for w in [
            Workload::RandRead,
            Workload::RandWrite,
            Workload::Read,
            Workload::Write,
        ] {
            assert_eq!(Workload::parse(w.name()), Some(w));
        }
        assert_eq!(Workload::parse("trim"), None);
    }
}
