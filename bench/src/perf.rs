//! The engine of `nvmfd-perf`: `cores` threads (optionally pinned), each driving `connections`
//! I/O queues kept `queue_depth` deep for a time or an I/O count; reads and writes mixed by
//! percentage, random or sequential; latency in HDR histograms merged at the end; writes stamped
//! with [`crate::pattern`] and, with `verify`, every read and a read-back of everything written
//! checked.
//!
//! Each connection owns its own slice of the LBA range (connection k of n gets units
//! `[k*u/n, (k+1)*u/n)`), so no two connections ever touch one block and a verify never races.
//! The per-thread loop queues a whole round of commands per connection and sends them in one
//! write, then reaps everything that arrived in one non-blocking receive per connection (a lone
//! connection blocks instead); it allocates nothing per I/O once the buffers are warm.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

use crate::host::{fabric, Fabric, FabricQueue, HostOptions, IoDone};
use crate::pattern;

/// The access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    RandRead,
    RandWrite,
    Read,
    Write,
    /// Random reads and writes, `read_pct` percent reads.
    RandRw,
    /// Sequential reads and writes, `read_pct` percent reads.
    Rw,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::RandRead,
        Workload::RandWrite,
        Workload::Read,
        Workload::Write,
        Workload::RandRw,
        Workload::Rw,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRw => "randrw",
            Workload::Rw => "rw",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Reads in percent: fixed for the pure workloads, `mix` for the mixed ones.
    pub fn read_pct(self, mix: u8) -> u8 {
        match self {
            Workload::RandRead | Workload::Read => 100,
            Workload::RandWrite | Workload::Write => 0,
            Workload::RandRw | Workload::Rw => mix.min(100),
        }
    }

    pub fn is_random(self) -> bool {
        matches!(
            self,
            Workload::RandRead | Workload::RandWrite | Workload::RandRw
        )
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PerfConfig {
    pub fabric: Fabric,
    pub addr: SocketAddr,
    pub host: HostOptions,
    pub workload: Workload,
    /// Percentage of reads for `randrw`/`rw` (ignored otherwise).
    pub mix_read_pct: u8,
    pub io_size: usize,
    /// Commands in flight per connection.
    pub queue_depth: u16,
    /// Stop after this long...
    pub duration: Option<Duration>,
    /// ...or after this many I/Os in all (split over the connections); whichever comes first.
    pub io_count: Option<u64>,
    pub nsid: u32,
    /// The I/O queue ID of the first connection; the others follow.
    pub first_qid: u16,
    /// Worker threads.
    pub cores: usize,
    /// I/O queues (connections) per thread.
    pub connections: usize,
    /// CPUs to pin the threads to, round-robin (none: not pinned).
    pub cpus: Vec<usize>,
    /// Limit the LBA range to this many bytes from LBA 0 (whole namespace if None).
    pub span_bytes: Option<u64>,
    /// Check every read (exact generation where this run wrote the block, else that any stamped
    /// block sits at its own LBA and is intact) and read back and check everything written.
    /// Without it writes carry an unstamped fixed buffer (no per-I/O fill cost).
    pub verify: bool,
    pub seed: u64,
    /// Print IOPS and MB/s to stderr once a second.
    pub progress: bool,
    /// Never sleep in the kernel waiting for completions: poll the sockets without blocking,
    /// as a polled-mode initiator (spdk_nvme_perf) does. Burns the whole core.
    pub busy_poll: bool,
}

impl PerfConfig {
    /// A config for `subnqn` at `addr` with spdk_nvme_perf-like defaults (4 KiB randread QD 32,
    /// one thread, one connection, 10 s).
    pub fn new(addr: SocketAddr, subnqn: &str) -> PerfConfig {
        PerfConfig {
            fabric: Fabric::Tcp,
            addr,
            host: HostOptions::new(subnqn),
            workload: Workload::RandRead,
            mix_read_pct: 50,
            io_size: 4096,
            queue_depth: 32,
            duration: Some(Duration::from_secs(10)),
            io_count: None,
            nsid: 1,
            first_qid: 1,
            cores: 1,
            connections: 1,
            cpus: Vec::new(),
            span_bytes: None,
            verify: false,
            seed: 0x5eed,
            progress: false,
            busy_poll: false,
        }
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    pub avg: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            avg: h.mean() / 1000.0,
            min: us(h.min()),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// What one worker thread did.
#[derive(Debug, Clone)]
pub struct ThreadReport {
    pub index: usize,
    /// The CPU it was pinned to, if any.
    pub pinned: Option<usize>,
    /// The CPU it was running on when it finished.
    pub ran_on: usize,
    /// The I/O queues it drove.
    pub qids: Vec<u16>,
    pub ios: u64,
    pub seconds: f64,
    pub iops: f64,
}

/// Results of one run.
#[derive(Debug, Clone)]
pub struct PerfReport {
    pub fabric: Fabric,
    pub workload: Workload,
    pub read_pct: u8,
    pub io_size: usize,
    pub queue_depth: u16,
    pub cores: usize,
    pub connections: usize,
    pub seconds: f64,
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    /// Commands that completed with an error status.
    pub errors: u64,
    pub first_error: Option<String>,
    pub iops: f64,
    pub mb_per_s: f64,
    pub latency_us: Latency,
    /// Blocks checked by `verify`, and the mismatches found (at most 10 kept).
    pub verified_blocks: u64,
    pub verify_failures: Vec<String>,
    pub verify_failure_count: u64,
    pub threads: Vec<ThreadReport>,
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

#[derive(Default)]
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

    fn merge(&mut self, o: Verify) {
        self.count += o.count;
        self.blocks += o.blocks;
        for k in o.kept {
            if self.kept.len() < 10 {
                self.kept.push(k);
            }
        }
    }
}

/// The split of `total` units over `n` connections: connection k gets `[k*total/n,
/// (k+1)*total/n)`. Every unit belongs to exactly one connection.
pub fn slice_of(total: u64, n: u64, k: u64) -> (u64, u64) {
    let lo = (total as u128 * k as u128 / n as u128) as u64;
    let hi = (total as u128 * (k + 1) as u128 / n as u128) as u64;
    (lo, hi - lo)
}

/// Pin the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        bail!("CPU {cpu} is beyond the largest CPU set");
    }
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)
        .map_err(std::io::Error::from)
        .with_context(|| format!("pinning to CPU {cpu}"))
}

#[derive(Clone, Copy, Default)]
struct Slot {
    unit: u64,
    generation: u64,
    write: bool,
    active: bool,
}

/// One connection and its share of the work.
struct Conn {
    q: Box<dyn FabricQueue>,
    first_unit: u64,
    units: u64,
    cursor: u64,
    rng: Rng,
    /// I/Os this connection may still submit (u64::MAX without a count).
    quota: u64,
    generation: u64,
    slots: Vec<Slot>,
    /// Unit -> generation of the last successful-so-far write this run (verify only).
    written: HashMap<u64, u64>,
}

/// Counters the main thread reads for the progress line.
#[derive(Default)]
struct Live {
    ios: AtomicU64,
    bytes: AtomicU64,
}

struct Shared<'a> {
    cfg: &'a PerfConfig,
    bs: usize,
    io_blocks: u64,
    read_pct: u8,
    stop: AtomicBool,
    start: Barrier,
}

struct ThreadOut {
    hist: Histogram<u64>,
    ios: u64,
    reads: u64,
    writes: u64,
    errors: u64,
    first_error: Option<String>,
    verify: Verify,
    seconds: f64,
    report: ThreadReport,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Connect, run the workload, optionally verify, disconnect.
pub fn run(cfg: &PerfConfig) -> anyhow::Result<PerfReport> {
    if cfg.cores == 0 || cfg.connections == 0 {
        bail!("--cores and --connections must be at least 1");
    }
    if cfg.duration.is_none() && cfg.io_count.is_none() {
        bail!("give a duration or an I/O count");
    }
    let total_conns = cfg.cores * cfg.connections;
    if cfg.first_qid == 0 || cfg.first_qid as usize + total_conns - 1 > u16::MAX as usize {
        bail!("I/O queue IDs must lie in 1..=65535");
    }
    let mut ctrl = fabric::connect(cfg.fabric, cfg.addr, &cfg.host)
        .with_context(|| format!("connecting to {} at {}", cfg.host.subnqn, cfg.addr))?;
    let ns = ctrl
        .namespace(cfg.nsid)
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
    if cfg.verify && bs < pattern::STAMP_SIZE {
        bail!(
            "--verify needs blocks of at least {} bytes",
            pattern::STAMP_SIZE
        );
    }
    let mqes = ctrl.max_queue_entries();
    if cfg.queue_depth == 0 || cfg.queue_depth as u32 > mqes {
        bail!(
            "queue depth {} is not within 1..={mqes} (the controller's maximum)",
            cfg.queue_depth
        );
    }
    let io_blocks = (cfg.io_size / bs) as u64;
    let span_blocks = cfg
        .span_bytes
        .map_or(ns.nsze, |b| (b / bs as u64).min(ns.nsze));
    let units = span_blocks / io_blocks;
    if units < total_conns as u64 {
        bail!(
            "the LBA range of {span_blocks} blocks holds {units} {}-byte I/Os, fewer than the {total_conns} connections",
            cfg.io_size
        );
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        & 0xffff_ffff;
    let mut conns = Vec::with_capacity(total_conns);
    for k in 0..total_conns {
        let qid = cfg.first_qid + k as u16;
        // A queue has at least two entries (Connect's 0-based SQSIZE must be >= 1), so QD 1
        // still connects a 2-entry queue and keeps one command in flight.
        let q = ctrl
            .connect_io(qid, cfg.queue_depth.max(2))
            .with_context(|| format!("connecting I/O queue {qid}"))?;
        let (first_unit, n) = slice_of(units, total_conns as u64, k as u64);
        let quota = cfg.io_count.map_or(u64::MAX, |c| {
            c / total_conns as u64 + u64::from((k as u64) < c % total_conns as u64)
        });
        let depth = q.depth() as usize;
        conns.push(Conn {
            q,
            first_unit,
            units: n,
            cursor: 0,
            rng: Rng(cfg.seed.wrapping_add(k as u64 * 0x1000_0000_01b3)),
            quota,
            generation: run_id << 32,
            slots: vec![Slot::default(); depth],
            written: HashMap::new(),
        });
    }
    let shared = Shared {
        cfg,
        bs,
        io_blocks,
        read_pct: cfg.workload.read_pct(cfg.mix_read_pct),
        stop: AtomicBool::new(false),
        start: Barrier::new(cfg.cores + 1),
    };
    let live: Vec<Live> = (0..cfg.cores).map(|_| Live::default()).collect();
    // Thread t drives connections t*connections..(t+1)*connections (queue IDs in that order).
    let mut groups: Vec<Vec<Conn>> = Vec::with_capacity(cfg.cores);
    let mut it = conns.into_iter();
    for _ in 0..cfg.cores {
        groups.push(it.by_ref().take(cfg.connections).collect());
    }
    let outs: Vec<anyhow::Result<ThreadOut>> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(t, g)| {
                let (shared, live) = (&shared, &live[t]);
                std::thread::Builder::new()
                    .name(format!("perf-{t}"))
                    .spawn_scoped(s, move || {
                        let r = worker(shared, live, t, g);
                        if r.is_err() {
                            shared.stop.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                    .expect("spawn a worker thread")
            })
            .collect();
        shared.start.wait();
        supervise(cfg, &mut *ctrl, &live, &handles, &shared.stop);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a worker thread panicked"))
            })
            .collect()
    });
    let _ = ctrl.disconnect();
    let mut hist = new_hist();
    let mut verify = Verify::default();
    let (mut ios, mut reads, mut writes, mut errors) = (0, 0, 0, 0);
    let mut first_error = None;
    let mut seconds: f64 = 0.0;
    let mut threads = Vec::new();
    for o in outs {
        let o = o?;
        hist.add(&o.hist).expect("same histogram bounds");
        ios += o.ios;
        reads += o.reads;
        writes += o.writes;
        errors += o.errors;
        if first_error.is_none() {
            first_error = o.first_error;
        }
        verify.merge(o.verify);
        seconds = seconds.max(o.seconds);
        threads.push(o.report);
    }
    let secs = seconds.max(1e-9);
    Ok(PerfReport {
        fabric: cfg.fabric,
        workload: cfg.workload,
        read_pct: shared.read_pct,
        io_size: cfg.io_size,
        queue_depth: cfg.queue_depth,
        cores: cfg.cores,
        connections: cfg.connections,
        seconds: secs,
        ios,
        reads,
        writes,
        errors,
        first_error,
        iops: ios as f64 / secs,
        mb_per_s: ios as f64 * cfg.io_size as f64 / secs / 1e6,
        latency_us: Latency::of(&hist),
        verified_blocks: verify.blocks,
        verify_failures: verify.kept,
        verify_failure_count: verify.count,
        threads,
    })
}

/// The main thread while the workers run: keep alives, the progress line, and noticing that
/// every worker is done.
fn supervise(
    cfg: &PerfConfig,
    ctrl: &mut dyn fabric::FabricController,
    live: &[Live],
    handles: &[std::thread::ScopedJoinHandle<'_, anyhow::Result<ThreadOut>>],
    stop: &AtomicBool,
) {
    let keep_alive_every = Duration::from_millis((cfg.host.kato_ms as u64 / 3).max(100));
    let start = Instant::now();
    let (mut last_ka, mut last_tick) = (start, start);
    let (mut last_ios, mut last_bytes) = (0u64, 0u64);
    let mut printed = false;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        if cfg.host.kato_ms != 0 && now.duration_since(last_ka) >= keep_alive_every {
            if let Err(e) = ctrl.keep_alive() {
                eprintln!("nvmfd-perf: keep alive failed: {e}");
                stop.store(true, Ordering::Relaxed);
            }
            last_ka = now;
        }
        let dt = now.duration_since(last_tick);
        if cfg.progress && dt >= Duration::from_secs(1) {
            let ios: u64 = live.iter().map(|l| l.ios.load(Ordering::Relaxed)).sum();
            let bytes: u64 = live.iter().map(|l| l.bytes.load(Ordering::Relaxed)).sum();
            let s = dt.as_secs_f64();
            eprint!(
                "\r[{:>5.0} s] {:>10.1}K IOPS {:>10.1} MB/s ",
                now.duration_since(start).as_secs_f64(),
                (ios - last_ios) as f64 / s / 1000.0,
                (bytes - last_bytes) as f64 / s / 1e6
            );
            printed = true;
            (last_ios, last_bytes, last_tick) = (ios, bytes, now);
        }
    }
    if printed {
        eprintln!();
    }
}

fn worker(
    sh: &Shared<'_>,
    live: &Live,
    index: usize,
    mut conns: Vec<Conn>,
) -> anyhow::Result<ThreadOut> {
    let cfg = sh.cfg;
    let pinned = (!cfg.cpus.is_empty()).then(|| cfg.cpus[index % cfg.cpus.len()]);
    let pin = pinned.map(pin_current_thread).transpose();
    sh.start.wait();
    pin?;
    let mut st = ThreadOut {
        hist: new_hist(),
        ios: 0,
        reads: 0,
        writes: 0,
        errors: 0,
        first_error: None,
        verify: Verify::default(),
        seconds: 0.0,
        report: ThreadReport {
            index,
            pinned,
            ran_on: 0,
            qids: conns.iter().map(|c| c.q.qid()).collect(),
            ios: 0,
            seconds: 0.0,
            iops: 0.0,
        },
    };
    // Without verify, writes send one fixed, unstamped buffer (no MAGIC at any block start, so
    // a later verifying read treats those blocks as unknown rather than misplaced).
    let mut wbuf = vec![0xa5u8; cfg.io_size];
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    // A lone connection blocks in its receive when it has nothing else to do (unless busy
    // polling); several are polled without blocking and, after a run of empty rounds, waited
    // for together with poll(2).
    let block = conns.len() == 1 && !cfg.busy_poll;
    let nap = conns.len() > 1 && !cfg.busy_poll;
    let mut idle_rounds = 0u32;
    loop {
        let stopping =
            sh.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d);
        let mut busy = false;
        for c in conns.iter_mut() {
            if !stopping {
                while c.quota > 0 && c.q.outstanding() < cfg.queue_depth as usize {
                    if !submit(sh, c, &mut wbuf)? {
                        break;
                    }
                }
            }
            busy |= c.q.outstanding() > 0;
        }
        if !busy && (stopping || conns.iter().all(|c| c.quota == 0)) {
            break;
        }
        let mut done = 0;
        let mut bytes = 0u64;
        for c in conns.iter_mut() {
            if c.q.outstanding() == 0 {
                c.q.send_queued()?;
                continue;
            }
            let Conn {
                q, slots, written, ..
            } = c;
            let n = q.reap(block, &mut |d: IoDone<'_>| {
                complete(sh, &mut st, slots, written, d);
            })?;
            done += n;
            bytes += n as u64 * cfg.io_size as u64;
        }
        if done > 0 {
            live.ios.fetch_add(done as u64, Ordering::Relaxed);
            live.bytes.fetch_add(bytes, Ordering::Relaxed);
            idle_rounds = 0;
        } else if nap {
            idle_rounds += 1;
            if idle_rounds >= 64 {
                wait_any(&conns)?;
                idle_rounds = 0;
            }
        }
        if let Some(e) = st
            .first_error
            .as_ref()
            .filter(|_| st.errors > 0 && cfg.verify)
        {
            // A failed command under verify leaves nothing trustworthy to compare against.
            bail!("I/O failed during a verify run: {e}");
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    st.seconds = elapsed;
    st.report.ios = st.ios;
    st.report.seconds = elapsed;
    st.report.iops = st.ios as f64 / elapsed;
    if cfg.verify {
        for c in conns.iter_mut() {
            read_back(sh, c, &mut st.verify)?;
        }
    }
    st.report.ran_on = rustix::thread::sched_getcpu();
    for c in conns {
        c.q.close();
    }
    Ok(st)
}

/// Block until any of the connections has something to read (1 ms at most).
fn wait_any(conns: &[Conn]) -> anyhow::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds: Vec<PollFd<'_>> = conns
        .iter()
        .filter(|c| c.q.outstanding() > 0)
        .filter_map(|c| c.q.readiness_fd())
        .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
        .collect();
    if fds.is_empty() {
        return Ok(());
    }
    let t = Timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000,
    };
    match poll(&mut fds, Some(&t)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(std::io::Error::from(e)).context("poll"),
    }
}

/// Queue one command on `c`. Ok(false) when the next place to go is busy (verify only).
fn submit(sh: &Shared<'_>, c: &mut Conn, wbuf: &mut [u8]) -> anyhow::Result<bool> {
    let cfg = sh.cfg;
    let write = match sh.read_pct {
        100 => false,
        0 => true,
        p => c.rng.next() % 100 >= p as u64,
    };
    let off = if cfg.workload.is_random() {
        c.rng.next() % c.units
    } else {
        c.cursor
    };
    let unit = c.first_unit + off;
    // Under verify never two commands on one place at once: what a read sees, and which write
    // the read-back expects, must be decided.
    if cfg.verify && c.slots.iter().any(|s| s.active && s.unit == unit) {
        return Ok(false);
    }
    if !cfg.workload.is_random() {
        c.cursor = (c.cursor + 1) % c.units;
    }
    let lba = unit * sh.io_blocks;
    let mut generation = 0;
    let cid = if write {
        if cfg.verify {
            c.generation += 1;
            generation = c.generation;
            pattern::fill(wbuf, lba, sh.bs, generation);
        }
        c.q.queue_write(cfg.nsid, lba, wbuf, sh.bs)?
    } else {
        c.q.queue_read(cfg.nsid, lba, sh.io_blocks as u32, sh.bs)?
    };
    c.quota -= 1;
    c.slots[cid as usize] = Slot {
        unit,
        generation,
        write,
        active: true,
    };
    Ok(true)
}

fn complete(
    sh: &Shared<'_>,
    st: &mut ThreadOut,
    slots: &mut [Slot],
    written: &mut HashMap<u64, u64>,
    d: IoDone<'_>,
) {
    let cfg = sh.cfg;
    let slot = std::mem::take(&mut slots[d.cid as usize]);
    debug_assert!(slot.active, "completion of a command not in flight");
    st.ios += 1;
    if slot.write {
        st.writes += 1;
    } else {
        st.reads += 1;
    }
    st.hist.saturating_record(d.latency.as_nanos() as u64);
    let lba = slot.unit * sh.io_blocks;
    let failed = if let Some(e) = d.error {
        Some(format!("LBA {lba}: {e}"))
    } else if !d.status.is_success() {
        Some(format!("LBA {lba}: {}", d.status))
    } else {
        None
    };
    if let Some(f) = failed {
        st.errors += 1;
        if st.first_error.is_none() {
            st.first_error = Some(f);
        }
        if slot.write {
            written.remove(&slot.unit);
        }
        return;
    }
    if !cfg.verify {
        return;
    }
    if slot.write {
        written.insert(slot.unit, slot.generation);
        return;
    }
    st.verify.blocks += sh.io_blocks;
    let r = match written.get(&slot.unit) {
        Some(&g) => pattern::check(d.data, lba, sh.bs, g),
        None => pattern::check_placement(d.data, lba, sh.bs),
    };
    if d.data.len() != cfg.io_size {
        st.verify.fail(format!(
            "LBA {lba}: read returned {} of {} bytes",
            d.data.len(),
            cfg.io_size
        ));
    } else if let Err(m) = r {
        st.verify.fail(m.to_string());
    }
}

/// Read back every unit this connection wrote and check its pattern (not timed).
fn read_back(sh: &Shared<'_>, c: &mut Conn, verify: &mut Verify) -> anyhow::Result<()> {
    let cfg = sh.cfg;
    let mut todo: Vec<(u64, u64)> = c.written.iter().map(|(&u, &g)| (u, g)).collect();
    todo.sort_unstable();
    let mut todo = todo.into_iter();
    let mut pending: Vec<(u64, u64)> = vec![(0, 0); c.q.depth() as usize];
    loop {
        while c.q.outstanding() < cfg.queue_depth as usize {
            let Some((unit, generation)) = todo.next() else {
                break;
            };
            let cid =
                c.q.queue_read(cfg.nsid, unit * sh.io_blocks, sh.io_blocks as u32, sh.bs)?;
            pending[cid as usize] = (unit, generation);
        }
        if c.q.outstanding() == 0 {
            c.q.send_queued()?;
            return Ok(());
        }
        c.q.reap(true, &mut |d: IoDone<'_>| {
            let (unit, generation) = pending[d.cid as usize];
            let lba = unit * sh.io_blocks;
            if let Some(e) = d.error {
                verify.fail(format!("LBA {lba}: verify read: {e}"));
            } else if !d.status.is_success() {
                verify.fail(format!("LBA {lba}: verify read failed: {}", d.status));
            } else {
                verify.blocks += sh.io_blocks;
                if let Err(m) = pattern::check(d.data, lba, sh.bs, generation) {
                    verify.fail(m.to_string());
                }
            }
        })?;
    }
}

impl PerfReport {
    /// A table like spdk_nvme_perf's summary, one line per thread when there are several.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let head = |s: &mut String, first: &str| {
            let _ = writeln!(
                s,
                "{first:<22} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
                "IOPS", "MB/s", "avg_us", "p50_us", "p90_us", "p99_us", "p99.9_us", "max_us"
            );
        };
        let _ = writeln!(
            s,
            "{} {} {}% read, {} B, QD {} x {} connection(s) x {} thread(s)",
            self.fabric.name(),
            self.workload.name(),
            self.read_pct,
            self.io_size,
            self.queue_depth,
            self.connections,
            self.cores
        );
        if self.threads.len() > 1 {
            let _ = writeln!(s, "{:<22} {:>12}", "thread (cpu) qids", "IOPS");
            for t in &self.threads {
                let cpu = t.pinned.map_or("-".to_string(), |c| c.to_string());
                let q: Vec<String> = t.qids.iter().map(|q| q.to_string()).collect();
                let _ = writeln!(
                    s,
                    "{:<22} {:>12.1}",
                    format!("{} ({cpu}) {}", t.index, q.join(",")),
                    t.iops
                );
            }
        }
        head(&mut s, "");
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "{:<22} {:>12.1} {:>10.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1}",
            "Total", self.iops, self.mb_per_s, l.avg, l.p50, l.p90, l.p99, l.p99_9, l.max
        );
        let _ = write!(
            s,
            "{} I/Os ({} reads, {} writes) in {:.2} s",
            self.ios, self.reads, self.writes, self.seconds
        );
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

    /// The report as one JSON object (keys of the single-queue version kept).
    pub fn json(&self) -> String {
        let l = &self.latency_us;
        let threads: Vec<serde_json::Value> = self
            .threads
            .iter()
            .map(|t| {
                serde_json::json!({
                    "index": t.index, "pinned_cpu": t.pinned, "ran_on_cpu": t.ran_on,
                    "qids": t.qids, "ios": t.ios, "seconds": t.seconds, "iops": t.iops,
                })
            })
            .collect();
        serde_json::json!({
            "transport": self.fabric.name(),
            "workload": self.workload.name(),
            "read_pct": self.read_pct,
            "io_size": self.io_size,
            "queue_depth": self.queue_depth,
            "cores": self.cores,
            "connections": self.connections,
            "seconds": self.seconds,
            "ios": self.ios,
            "reads": self.reads,
            "writes": self.writes,
            "errors": self.errors,
            "first_error": self.first_error,
            "iops": self.iops,
            "mb_per_s": self.mb_per_s,
            "latency_us": {
                "avg": l.avg, "min": l.min, "p50": l.p50, "p90": l.p90, "p99": l.p99,
                "p99_9": l.p99_9, "max": l.max,
            },
            "verify": {
                "blocks": self.verified_blocks,
                "failures": self.verify_failure_count,
                "examples": self.verify_failures,
            },
            "threads": threads,
        })
        .to_string()
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
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
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()), Some(w));
        }
        assert_eq!(Workload::parse("trim"), None);
        assert_eq!(Workload::RandRw.read_pct(70), 70);
        assert_eq!(Workload::Write.read_pct(70), 0);
        assert_eq!(Workload::Read.read_pct(70), 100);
    }

    #[test]
    fn slices_cover_every_unit_once() {
        for (total, n) in [(10u64, 3u64), (7, 7), (1 << 40, 5), (100, 1)] {
            let mut next = 0;
            for k in 0..n {
                let (lo, len) = slice_of(total, n, k);
                assert_eq!(
                    lo,
                    next,
                    "slice {k} of {n} starts where {} ended",
                    k.max(1) - 1
                );
                assert!(len >= total / n && len <= total / n + 1);
                next = lo + len;
            }
            assert_eq!(next, total);
        }
    }
}
