//! Reactors: one pinned thread per configured core, polling its poll groups (one per transport,
//! see `nvmfd_transport::group`) and block-device channels forever. A connection lives on one
//! reactor for its whole life; so do the channels. New connections arrive through a lock-free
//! queue from the acceptor; nothing else is shared except the read-only [`Target`] and the
//! atomics inside it.
//!
//! The reactor knows no transport: it is generic over [`PollGroup`] (the daemon instantiates it
//! with [`nvmfd_transport::group::AnyGroup`]) and carries out the two phases of every command
//! between a group and the core: a new command is admitted ([`QueuePair::admit`]) and answered
//! at once or its data fetched by the group; a command whose data is in place is executed
//! ([`QueuePair::execute`]) and its outcome carried out (a response, a block-device I/O, a held
//! command); block-device completions and the core's own actions (held AERs completed, shutdown
//! flushes, queue teardown) go back the same way.

use crate::core::{Action, Admission, Admitted, Outcome, QueuePair, Target};
use crossbeam_queue::ArrayQueue;
use nvmfd_bdev::{Bdev, BdevChannel, Completion, Io};
use nvmfd_p2p::mem::BufPool;
use nvmfd_transport::group::{ConnId, Event, PollGroup};
use nvmfd_transport::proto::nvme::Sqe;
use nvmfd_transport::proto::status::Status;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

mod live;
pub mod stats;
pub use live::{ControlLink, QpairReport, ReactorMsg, ReactorReport};
use stats::{IoStats, OpClass, StatIds, Track};

/// How many empty polls before an idle reactor sleeps (when `idle_sleep_us` is set).
const IDLE_POLLS_BEFORE_SLEEP: u32 = 1024;
/// Timers (keep-alive) are checked this often, in loop iterations.
const TIMER_EVERY: u32 = 256;
/// Every COLD_EVERY iterations is a cold turn: groups then also poll their idle connections
/// (see `nvmfd_transport::tcp::TcpGroup`), which otherwise cost nothing.
const COLD_EVERY: u32 = 64;
/// The buffer a block-device I/O that moves no data carries (Flush, Write Zeroes; the reactor's
/// own, see [`OWN_BUF`]). Made at start: OWN_PREALLOC of them; more if ever needed.
const FLUSH_BUF: usize = 4096;
const OWN_PREALLOC: usize = 64;
/// Tag bit of an I/O whose buffer is the reactor's own (a command admitted without data, or a
/// shutdown flush): it goes back to the reactor's pool, not the group's.
const OWN_BUF: u64 = 1 << 63;
/// The tag slot of a controller-shutdown flush (transport slots are below 0x8000, see
/// `nvmfd_transport::group`).
const FLUSH_SLOT: u16 = 0x8000;
/// On shutdown, how long to wait for in-flight I/O and unsent responses.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

thread_local! {
    static IS_REACTOR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is a reactor (lets a counting allocator in a test or benchmark
/// attribute allocations to the data path; reading it never allocates).
pub fn is_reactor_thread() -> bool {
    IS_REACTOR.with(|r| r.get())
}

/// What the daemon keeps to talk to a running reactor: new connections go into `inbox`.
pub struct ReactorHandle<I> {
    pub inbox: Arc<ArrayQueue<I>>,
    /// Live reconfiguration messages (`crate::live`).
    pub control: ControlLink,
    pub thread: std::thread::JoinHandle<()>,
}

/// The core's side of one connection of a group.
struct Conn {
    qp: QueuePair,
    peer: SocketAddr,
    generation: u32,
    /// Bdev I/Os in flight for this connection (shutdown flushes included).
    in_flight: u32,
    /// Commands the core holds (AERs): (CID, transport slot), answered by [`Action::Complete`].
    held: Vec<(u16, u16)>,
    /// Whether the group was told the queue's ID and size (after Connect).
    queue_set: bool,
    /// The commands being counted (`stats`), by transport slot.
    track: Vec<Track>,
    /// What admission found of each command waiting for its data (by transport slot), for
    /// its execution ([`QueuePair::execute_with`]).
    admitted: Vec<Option<Admitted>>,
}

/// One poll group and the queue pairs of its connections (indexed by [`ConnId`]).
struct Side<G> {
    group: G,
    conns: Vec<Option<Conn>>,
    /// This transport's I/O counters on this reactor.
    stats: IoStats,
}

/// A pending block-device submission that the channel refused (queue full).
struct Deferred {
    bdev: usize,
    io: Io,
}

pub struct ReactorConfig<C> {
    pub id: usize,
    pub core: usize,
    pub idle_sleep: Option<Duration>,
    /// One poll group per transport, built on the reactor's thread.
    pub groups: Vec<C>,
}

/// Start a reactor thread pinned to `cfg.core`. It opens its own channel to every bdev and
/// builds its poll groups.
pub fn spawn<G: PollGroup + 'static>(
    cfg: ReactorConfig<G::Config>,
    target: Arc<Target>,
    bdevs: Vec<Arc<dyn Bdev>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<ReactorHandle<G::Incoming>> {
    let inbox = Arc::new(ArrayQueue::new(1024));
    let rx = inbox.clone();
    let control = ControlLink::new();
    let ctl = control.clone();
    let thread = std::thread::Builder::new().name(format!("reactor-{}", cfg.id)).spawn(move || {
        IS_REACTOR.with(|r| r.set(true));
        crate::affinity::pin_to_core(cfg.core);
        let channels: Vec<Box<dyn BdevChannel>> = match bdevs.iter().map(|b| b.channel()).collect() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(reactor = cfg.id, error = %e, "cannot open block device channels; reactor stops");
                return;
            }
        };
        let mut sides = Vec::with_capacity(cfg.groups.len());
        for g in &cfg.groups {
            match G::new(g, cfg.id) {
                Ok(group) => sides.push(Side { group, conns: Vec::new(), stats: IoStats::new() }),
                Err(e) => {
                    tracing::error!(reactor = cfg.id, error = %e, "cannot build a poll group; reactor stops");
                    return;
                }
            }
        }
        info!(reactor = cfg.id, core = cfg.core, groups = sides.len(), "reactor running");
        let ids = StatIds::new(&target);
        for s in sides.iter_mut() {
            s.stats.grow(ids.keys().len());
        }
        let mut r = Reactor {
            id: cfg.id,
            idle_sleep: cfg.idle_sleep,
            target,
            inbox: rx,
            sides,
            channels,
            deferred: VecDeque::with_capacity(4096),
            stop,
            own_pool: BufPool::new(FLUSH_BUF, OWN_PREALLOC, FLUSH_BUF, 0, 1),
            generation: 0,
            control: ctl,
            completed: 0,
            ids,
            epoch: Instant::now(),
            polls_busy: 0,
            polls_idle: 0,
        };
        r.run();
        r.control.stopped.store(true, Ordering::Release);
    })?;
    Ok(ReactorHandle {
        inbox,
        control,
        thread,
    })
}

struct Reactor<G: PollGroup> {
    id: usize,
    idle_sleep: Option<Duration>,
    target: Arc<Target>,
    inbox: Arc<ArrayQueue<G::Incoming>>,
    sides: Vec<Side<G>>,
    channels: Vec<Box<dyn BdevChannel>>,
    deferred: VecDeque<Deferred>,
    stop: Arc<AtomicBool>,
    /// The buffers of block-device I/Os that move no data (Flush, Write Zeroes, shutdown flushes).
    own_pool: BufPool,
    generation: u32,
    /// Live reconfiguration messages (see `reactor/live.rs`).
    control: ControlLink,
    /// Block-device I/Os completed on this reactor (read only by reports, `reactor/live.rs`).
    completed: u64,
    /// Dense ids of what the I/O counters count (`stats`), for the snapshot in `target`.
    ids: StatIds,
    /// Command times are kept as nanoseconds since this.
    epoch: Instant,
    /// Loop iterations that found work, and that found none.
    polls_busy: u64,
    polls_idle: u64,
}

/// The clock of one batch of events or completions: read at most once, when first needed.
struct BatchClock {
    epoch: Instant,
    at: Option<(Instant, u64)>,
}

impl BatchClock {
    fn new(epoch: Instant) -> Self {
        BatchClock { epoch, at: None }
    }

    fn read(&mut self) -> (Instant, u64) {
        let epoch = self.epoch;
        *self.at.get_or_insert_with(|| {
            let now = Instant::now();
            (now, stats::ns_since(epoch, now))
        })
    }

    /// The time.
    fn now(&mut self) -> Instant {
        self.read().0
    }

    /// The time as the counters keep it: nanoseconds since the reactor's epoch.
    fn ns(&mut self) -> u64 {
        self.read().1
    }
}

/// What counting a command needs besides its connection: the ids and the snapshot they are for,
/// and the time (read once per batch).
struct Count<'a> {
    ids: &'a StatIds,
    target: &'a Target,
    now_ns: u64,
}

/// Start counting command `slot` of `c` (when counting is on).
#[inline]
fn track_start(stats: &mut IoStats, cnt: &Count, c: &mut Conn, slot: u16, sqe: &Sqe) {
    if !stats.on {
        // A command counted before counting went off whose slot is taken again (the transport
        // ended it without an answer) ends here, so `tracking()` drains to false.
        if stats.any_tracked() {
            if let Some(t) = c.track.get_mut(slot as usize) {
                stats.drop_track(t);
            }
        }
        return;
    }
    let io_queue = c.qp.is_connected() && c.qp.qid() != 0;
    let class = OpClass::of(sqe.opcode, io_queue);
    let subsys = c.qp.controller().map(|x| x.subsys);
    let (id, block_size) = cnt.ids.resolve(cnt.target, subsys, io_queue, sqe.nsid);
    let bytes = match class {
        OpClass::Read | OpClass::Write => u64::from(sqe.nlb()) * u64::from(block_size),
        _ => 0,
    };
    if let Some(t) = c.track.get_mut(slot as usize) {
        stats.start(t, id, class, bytes, cnt.now_ns);
    }
}

/// Count command `slot` of `c` as answered with `status`.
#[inline]
fn track_finish(stats: &mut IoStats, cnt: &Count, c: &mut Conn, slot: u16, status: Status) {
    if !stats.any_tracked() {
        return;
    }
    let Some(t) = c.track.get_mut(slot as usize) else {
        return;
    };
    if !t.active {
        return;
    }
    // A Connect is counted under the subsystem it made its queue part of.
    let id = (t.id == stats::NONE_ID)
        .then(|| c.qp.controller().map(|x| x.subsys))
        .flatten()
        .map(|s| cnt.ids.resolve(cnt.target, Some(s), false, 0).0);
    stats.finish(t, status, cnt.now_ns, id);
}

/// Tag layout for block-device I/O: [`OWN_BUF`] (1 bit) | generation (23) | group (8) |
/// connection (16) | slot (16).
fn tag(generation: u32, group: usize, conn: ConnId, slot: u16) -> u64 {
    (((generation & GENERATION_MASK) as u64) << 40)
        | ((group as u64 & 0xff) << 32)
        | ((conn as u64) << 16)
        | slot as u64
}

fn untag(tag: u64) -> (u32, usize, ConnId, u16) {
    (
        ((tag >> 40) as u32) & GENERATION_MASK,
        ((tag >> 32) & 0xff) as usize,
        (tag >> 16) as u16,
        tag as u16,
    )
}

const GENERATION_MASK: u32 = 0x007f_ffff;

impl<G: PollGroup> Reactor<G> {
    fn run(&mut self) {
        let mut idle = 0u32;
        let mut tick = 0u32;
        let mut stop_started: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            let mut work = self.control();
            if !stopping {
                while let Some(nc) = self.inbox.pop() {
                    match self.sides.iter_mut().find(|s| s.group.accepts(&nc)) {
                        Some(s) => s.group.add(nc),
                        None => warn!(
                            reactor = self.id,
                            "a connection for a transport this reactor does not serve; dropped"
                        ),
                    }
                    work = true;
                }
            }
            // Receive, admit and execute, then reap the block devices, then send: an I/O that
            // completes at once (malloc, null) is answered in the same iteration.
            let cold_turn = tick.is_multiple_of(COLD_EVERY);
            for gi in 0..self.sides.len() {
                if !stopping {
                    work |= self.sides[gi].group.poll_recv(cold_turn);
                }
                work |= self.events(gi);
            }
            work |= self.poll_bdevs();
            work |= self.retry_deferred();
            for gi in 0..self.sides.len() {
                work |= self.sides[gi].group.poll_send();
                self.close_finished(gi);
            }
            tick = tick.wrapping_add(1);
            if work {
                self.polls_busy += 1;
            } else {
                self.polls_idle += 1;
            }
            if tick.is_multiple_of(TIMER_EVERY) {
                self.check_timers();
            }
            if stopping {
                let since = *stop_started.get_or_insert_with(Instant::now);
                if self.drained() {
                    break;
                }
                if since.elapsed() > DRAIN_TIMEOUT {
                    warn!(
                        reactor = self.id,
                        "in-flight I/O or unsent responses left after the drain timeout"
                    );
                    break;
                }
            }
            if work {
                idle = 0;
            } else if let Some(d) = self.idle_sleep {
                idle += 1;
                if idle >= IDLE_POLLS_BEFORE_SLEEP {
                    std::thread::sleep(d);
                }
            } else {
                std::hint::spin_loop();
            }
        }
        let mut n = 0;
        for gi in 0..self.sides.len() {
            // Events still queued (connections the group ended) first, then everyone else.
            self.events(gi);
            for ci in 0..self.sides[gi].conns.len() {
                if self.sides[gi].conns[ci].is_some() {
                    n += 1;
                    self.close(gi, ci as ConnId, "daemon shutting down");
                }
            }
        }
        self.flush_bdevs();
        info!(reactor = self.id, connections = n, "reactor stopped");
    }

    /// A Flush of a block device: the daemon's stop path and a controller shutdown (CC.SHN) both
    /// make completed writes durable through this.
    fn flush_io(&mut self, tag: u64) -> Io {
        Io {
            tag,
            op: nvmfd_bdev::Op::Flush,
            buf: self.own_pool.get(FLUSH_BUF),
        }
    }

    /// Make every completed write durable before the daemon exits (a Flush on each channel).
    fn flush_bdevs(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..self.channels.len() {
            let io = self.flush_io(i as u64);
            let ch = &mut self.channels[i];
            if ch.submit(io).is_err() {
                warn!(
                    reactor = self.id,
                    bdev = i,
                    "cannot submit the shutdown flush"
                );
                continue;
            }
            let mut result = None;
            let pool = &mut self.own_pool;
            while result.is_none() && Instant::now() < deadline {
                ch.poll(&mut |c: Completion| {
                    pool.put(c.buf);
                    result = Some(c.result)
                });
                std::hint::spin_loop();
            }
            match result {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    warn!(reactor = self.id, bdev = i, error = %e, "shutdown flush failed")
                }
                None => warn!(reactor = self.id, bdev = i, "shutdown flush timed out"),
            }
        }
    }

    /// Stopping: no I/O in flight anywhere and every response written.
    fn drained(&self) -> bool {
        self.deferred.is_empty()
            && self.channels.iter().all(|c| c.in_flight() == 0)
            && self.sides.iter().all(|s| {
                !s.group.has_unsent() && s.conns.iter().flatten().all(|c| c.in_flight == 0)
            })
    }

    /// End connection `conn` of group `gi` from this side (the core asked, or the daemon stops).
    fn close(&mut self, gi: usize, conn: ConnId, why: &str) {
        let side = &mut self.sides[gi];
        if let Some(c) = side.conns[conn as usize].take() {
            side.group.close(conn);
            teardown(c, &mut side.stats, why);
        }
    }

    /// Hand group `gi`'s events to the core and carry out its answers. Returns whether there
    /// were any.
    fn events(&mut self, gi: usize) -> bool {
        let Reactor {
            target,
            sides,
            channels,
            deferred,
            generation,
            own_pool,
            ids,
            epoch,
            ..
        } = self;
        let side = &mut sides[gi];
        let mut work = false;
        // The clock is read at most once per batch of commands, and only if something needs it:
        // counting (the metrics endpoint is served), or an admin command or Connect (the
        // keep-alive timer). I/O commands on their own never read it.
        let mut clock = BatchClock::new(*epoch);
        let mut cnt = Count {
            ids,
            target,
            now_ns: 0,
        };
        let mut dev = Devices {
            channels,
            own_pool,
            deferred,
        };
        while let Some(ev) = side.group.next_event() {
            work = true;
            match ev {
                Event::Connected { conn, peer, local } => {
                    let info = *side.group.info();
                    let mut qp = QueuePair::new(target.clone(), info);
                    if let Some(local) = local {
                        qp.set_local_addr(local);
                    }
                    *generation = generation.wrapping_add(1) & GENERATION_MASK;
                    let i = conn as usize;
                    if side.conns.len() <= i {
                        side.conns.resize_with(i + 1, || None);
                    }
                    side.conns[i] = Some(Conn {
                        qp,
                        peer,
                        generation: *generation,
                        in_flight: 0,
                        held: Vec::new(),
                        queue_set: false,
                        track: vec![Track::IDLE; info.max_slots()],
                        admitted: vec![None; info.max_slots()],
                    });
                }
                Event::Command {
                    conn,
                    slot,
                    sqe,
                    desc,
                } => {
                    let Some(c) = side.conns[conn as usize].as_mut() else {
                        continue;
                    };
                    if side.stats.tracking() {
                        cnt.now_ns = clock.ns();
                    }
                    if side.stats.on {
                        track_start(&mut side.stats, &cnt, c, slot, &sqe);
                    }
                    let mut admitted = None;
                    let now = match c.qp.admit(&sqe, desc) {
                        Admission::Respond(resp) => {
                            track_finish(&mut side.stats, &cnt, c, slot, resp.cqe.status);
                            side.group.respond(conn, slot, resp);
                            false
                        }
                        // Data in place at once (in-capsule, or a buffer for a read): executed
                        // now, without the round trip of an Event::DataReady.
                        Admission::Data(need) => {
                            admitted = c.qp.admitted();
                            let ready = side.group.fetch_ready(conn, slot, need);
                            if !ready {
                                if let Some(a) = c.admitted.get_mut(slot as usize) {
                                    *a = admitted;
                                }
                            }
                            ready
                        }
                        Admission::Execute => true,
                    };
                    if now {
                        if side.stats.tracking() {
                            cnt.now_ns = clock.ns();
                        }
                        let (group, stats) = (&mut side.group, &mut side.stats);
                        let at = (gi, conn, slot, admitted);
                        execute(group, stats, c, &mut dev, at, &mut clock, &cnt);
                    }
                }
                Event::DataReady { conn, slot } => {
                    let Some(c) = side.conns[conn as usize].as_mut() else {
                        continue;
                    };
                    if side.stats.tracking() {
                        cnt.now_ns = clock.ns();
                    }
                    let admitted = c.admitted.get_mut(slot as usize).and_then(Option::take);
                    let (group, stats) = (&mut side.group, &mut side.stats);
                    let at = (gi, conn, slot, admitted);
                    execute(group, stats, c, &mut dev, at, &mut clock, &cnt);
                }
                Event::Closed { conn, why } => {
                    if let Some(c) = side.conns[conn as usize].take() {
                        teardown(c, &mut side.stats, &why);
                    }
                }
            }
        }
        work
    }

    /// Close the connections whose queue ended (Fabrics Disconnect) once their responses are
    /// out and nothing is in flight.
    fn close_finished(&mut self, gi: usize) {
        for ci in 0..self.sides[gi].conns.len() {
            let side = &self.sides[gi];
            let Some(c) = side.conns[ci].as_ref() else {
                continue;
            };
            if let Some(why) = c.qp.wants_close() {
                if c.in_flight == 0 && !side.group.conn_has_unsent(ci as ConnId) {
                    self.close(gi, ci as ConnId, why);
                }
            }
        }
    }

    fn retry_deferred(&mut self) -> bool {
        let mut work = false;
        for _ in 0..self.deferred.len() {
            let Some(d) = self.deferred.pop_front() else {
                break;
            };
            match self.channels[d.bdev].submit(d.io) {
                Ok(()) => work = true,
                Err(io) => {
                    self.deferred.push_front(Deferred { bdev: d.bdev, io });
                    break;
                }
            }
        }
        work
    }

    fn poll_bdevs(&mut self) -> bool {
        let mut n = 0;
        let sides = &mut self.sides;
        let own_pool = &mut self.own_pool;
        let epoch = self.epoch;
        // The clock is read once per batch of completions, and only when counting.
        let mut cnt = Count {
            ids: &self.ids,
            target: &self.target,
            now_ns: 0,
        };
        let mut clock_read = !sides.iter().any(|s| s.stats.tracking());
        for ch in self.channels.iter_mut() {
            n += ch.poll(&mut |done: Completion| {
                if !clock_read {
                    cnt.now_ns = stats::ns_since(epoch, Instant::now());
                    clock_read = true;
                }
                complete_io(sides, own_pool, done, &cnt)
            });
        }
        self.completed += n as u64;
        n > 0
    }

    fn check_timers(&mut self) {
        let now = Instant::now();
        for gi in 0..self.sides.len() {
            self.sides[gi].group.poll_timers(now);
            for ci in 0..self.sides[gi].conns.len() {
                let why = match self.sides[gi].conns[ci].as_mut() {
                    Some(c) => c.qp.poll_timers(now),
                    None => continue,
                };
                if let Some(why) = why {
                    if let Some(c) = self.sides[gi].conns[ci].as_ref() {
                        warn!(peer = %c.peer, queue = %c.qp.describe(), reason = why, "tearing down queue pair");
                    }
                    self.close(gi, ci as ConnId, why);
                    continue;
                }
                self.core_actions(gi, ci as ConnId);
            }
        }
    }

    /// Carry out what the core asks of a connection outside any command: completions of held
    /// commands and shutdown flushes.
    fn core_actions(&mut self, gi: usize, conn: ConnId) {
        loop {
            let side = &mut self.sides[gi];
            let Some(c) = side.conns[conn as usize].as_mut() else {
                return;
            };
            match c.qp.next_action() {
                None => return,
                Some(Action::Complete(resp)) => {
                    match c.held.iter().position(|&(cid, _)| cid == resp.cqe.cid) {
                        Some(k) => {
                            let (_, slot) = c.held.swap_remove(k);
                            // Held commands have no latency: no clock needed.
                            let cnt = Count {
                                ids: &self.ids,
                                target: &self.target,
                                now_ns: 0,
                            };
                            track_finish(&mut side.stats, &cnt, c, slot, resp.cqe.status);
                            side.group.respond(conn, slot, resp);
                        }
                        None => {
                            warn!(peer = %c.peer, cid = resp.cqe.cid, "core completed a command this connection does not hold")
                        }
                    }
                }
                Some(Action::Flush { bdev }) => {
                    c.in_flight += 1;
                    let t = tag(c.generation, gi, conn, FLUSH_SLOT) | OWN_BUF;
                    let io = self.flush_io(t);
                    if let Err(io) = self.channels[bdev].submit(io) {
                        self.deferred.push_back(Deferred { bdev, io });
                    }
                }
            }
        }
    }
}

/// What executing a command may need of the reactor's block-device side.
struct Devices<'a> {
    channels: &'a mut [Box<dyn BdevChannel>],
    own_pool: &'a mut BufPool,
    deferred: &'a mut VecDeque<Deferred>,
}

/// Phase two of command `slot` of connection `c` (`conn` of group `gi`), its data in place:
/// execute it (with what its admission found, if anything) and carry out the outcome.
fn execute<G: PollGroup>(
    group: &mut G,
    stats: &mut IoStats,
    c: &mut Conn,
    dev: &mut Devices,
    (gi, conn, slot, admitted): (usize, ConnId, u16, Option<Admitted>),
    clock: &mut BatchClock,
    cnt: &Count,
) {
    let cap = group.capsule_mut(conn, slot);
    match c.qp.execute_with(cap, || clock.now(), admitted) {
        Outcome::Done(resp) => {
            track_finish(stats, cnt, c, slot, resp.cqe.status);
            group.respond(conn, slot, resp)
        }
        Outcome::Held => {
            if let Some(t) = c.track.get_mut(slot as usize) {
                stats.hold(t);
            }
            c.held.push((cap.sqe.cid, slot))
        }
        Outcome::Io { bdev, mut op } => {
            let buf = cap.buf.take();
            // Reads go out from a RAM disk's own memory when the connection can send data it
            // never reads (TCP: no data digest): one copy less per byte.
            if let nvmfd_bdev::Op::Read { lba, blocks } = op {
                if group.takes_lent_data(conn) {
                    op = nvmfd_bdev::Op::ReadLent { lba, blocks };
                }
            }
            // A command admitted without data (Flush, Write Zeroes) has no buffer from the
            // group; the I/O carries one of the reactor's own.
            let t = tag(c.generation, gi, conn, slot);
            let (tag, buf) = match buf {
                Some(buf) => (t, buf),
                None => (t | OWN_BUF, dev.own_pool.get(FLUSH_BUF)),
            };
            c.in_flight += 1;
            let io = Io { tag, op, buf };
            if let Err(io) = dev.channels[bdev].submit(io) {
                dev.deferred.push_back(Deferred { bdev, io });
            }
        }
    }
    // Once Connect has made this a queue, the transport holds the host to its size.
    if !c.queue_set && c.qp.is_connected() {
        c.queue_set = true;
        group.set_queue(conn, c.qp.qid(), c.qp.sq_entries());
    }
}

/// A connection is gone: release what its queue pair held (and stop counting its commands).
fn teardown(mut c: Conn, stats: &mut IoStats, why: &str) {
    for t in c.track.iter_mut() {
        stats.drop_track(t);
    }
    if c.qp.is_connected() {
        info!(peer = %c.peer, queue = %c.qp.describe(), reason = why, "queue pair closed");
    } else {
        debug!(peer = %c.peer, reason = why, "connection closed before connect");
    }
    let was_admin = c.qp.qid() == 0 && c.qp.is_connected();
    if c.qp.is_connected() {
        stats.qpairs_ended[usize::from(!was_admin)] += 1;
    }
    c.qp.teardown();
    if was_admin {
        info!(peer = %c.peer, "controller destroyed");
    }
}

/// Route a block-device completion back to its connection (its buffer goes back to its pool if
/// the connection is gone).
fn complete_io<G: PollGroup>(
    sides: &mut [Side<G>],
    own_pool: &mut BufPool,
    done: Completion,
    cnt: &Count,
) {
    let (generation, gi, conn, slot) = untag(done.tag);
    // The reactor's own buffer goes back to its pool at once; the group's goes back into the
    // command's capsule (or, the connection gone, to the group's pool).
    let mut buf = if done.tag & OWN_BUF != 0 {
        own_pool.put(done.buf);
        None
    } else {
        Some(done.buf)
    };
    let Some(side) = sides.get_mut(gi) else {
        return;
    };
    let c = match side.conns.get_mut(conn as usize) {
        Some(Some(c)) if c.generation == generation => c,
        _ => {
            if let Some(b) = buf.take() {
                side.group.recycle(b);
            }
            return;
        }
    };
    c.in_flight -= 1;
    if slot == FLUSH_SLOT {
        c.qp.flush_done(done.result);
        return;
    }
    let cap = side.group.capsule_mut(conn, slot);
    cap.buf = buf;
    cap.lent = done.lent;
    let resp = c.qp.io_done(cap, done.result);
    track_finish(&mut side.stats, cnt, c, slot, resp.cqe.status);
    side.group.respond(conn, slot, resp);
}
