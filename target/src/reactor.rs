//! Reactors: one pinned thread per configured core, polling its connections and block-device
//! channels forever. A connection lives on one reactor for its whole life; so do the channels.
//! New connections arrive through a lock-free queue from the acceptor; nothing else is shared
//! except the read-only [`Target`] and the atomics inside it.

use crate::core::{Action, Outcome, QueuePair, Target};
use crossbeam_queue::ArrayQueue;
use nvmfd_bdev::{Bdev, BdevChannel, Completion, Io};
use nvmfd_p2p::mem::{BufPool, Pages};
use nvmfd_config::TransportKind;
use nvmfd_transport::rdma::{Incoming, RdmaGroup, RdmaParams};
use nvmfd_transport::tcp::{ConnError, Socket, TcpConn, TcpParams};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How many empty polls before an idle reactor sleeps (when `idle_sleep_us` is set).
const IDLE_POLLS_BEFORE_SLEEP: u32 = 1024;
/// Timers (keep-alive) are checked this often, in loop iterations.
const TIMER_EVERY: u32 = 256;
/// A connection that received nothing for this many polls is cold: its socket is then read
/// every COLD_EVERY iterations instead of every one. A busy connection stays hot (one
/// non-blocking recv per iteration, the lowest latency); idle ones (admin queues, quiet hosts)
/// cost a fraction of a system call each, and the first command after a quiet spell waits at
/// most COLD_EVERY iterations (tens of microseconds).
const HOT_POLLS: u32 = 20_000;
const COLD_EVERY: u32 = 64;
/// Data buffers: commands moving up to SMALL_BUF bytes take a small one, others a max_io_size
/// one. This many of each are made at start; more are made (once) if a reactor's peak of
/// commands in flight needs them, large ones up to `buffer_pool_size`.
const SMALL_BUF: usize = 8192;
const PREALLOC_SMALL: usize = 512;
const PREALLOC_LARGE: usize = 64;
/// The tag slot of a controller-shutdown flush (transport slots are below `max_queue_depth`,
/// at most 1024).
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

/// The hand-off from the acceptor to a reactor.
pub struct NewConn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

/// What the daemon keeps to talk to a running reactor.
pub struct ReactorHandle {
    pub inbox: Arc<ArrayQueue<NewConn>>,
    /// RDMA connections admitted by the listener, for this reactor to accept.
    pub rdma_inbox: Arc<ArrayQueue<Incoming>>,
    pub thread: std::thread::JoinHandle<()>,
}

struct Conn {
    tcp: TcpConn<Socket>,
    /// Polls since this connection last received anything: past [`HOT_POLLS`] it is cold and
    /// its socket is read only every [`COLD_EVERY`] iterations.
    idle_polls: u32,
    qp: QueuePair,
    peer: SocketAddr,
    generation: u32,
    /// Bdev I/Os in flight for this connection (shutdown flushes included).
    in_flight: u32,
    /// Commands the core holds (AERs): (CID, transport slot), answered by [`Action::Complete`].
    held: Vec<(u16, u16)>,
}

/// An NVMe/RDMA queue pair's core side (the transport side lives in the reactor's
/// [`RdmaGroup`]).
struct RdmaQp {
    qp: QueuePair,
    peer: Option<SocketAddr>,
    /// Bdev I/Os in flight (shutdown flushes included).
    in_flight: u32,
    /// Commands the core holds (AERs): (CID, slot).
    held: Vec<(u16, u16)>,
}

/// Tags of RDMA block-device I/O have bit 63 set (TCP generations are 31 bits): generation of
/// the queue pair (16) | its index (16) | slot (16).
const RDMA_TAG: u64 = 1 << 63;

fn rdma_tag(generation: u16, idx: usize, slot: u16) -> u64 {
    RDMA_TAG | ((generation as u64) << 32) | ((idx as u64 & 0xffff) << 16) | slot as u64
}

/// A pending block-device submission that the channel refused (queue full).
struct Deferred {
    bdev: usize,
    io: Io,
}

pub struct ReactorConfig {
    pub id: usize,
    pub core: usize,
    pub idle_sleep: Option<Duration>,
    pub tcp: TcpParams,
    /// Bytes of large data buffers this reactor may hold (`transports.tcp.buffer_pool_size`).
    pub buffer_pool_size: u64,
    /// NVMe/RDMA settings, when the daemon has RDMA listeners.
    pub rdma: Option<RdmaParams>,
}

/// Start a reactor thread pinned to `cfg.core`. It opens its own channel to every bdev.
pub fn spawn(
    cfg: ReactorConfig,
    target: Arc<Target>,
    bdevs: Vec<Arc<dyn Bdev>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<ReactorHandle> {
    let inbox = Arc::new(ArrayQueue::new(1024));
    let rx = inbox.clone();
    let rdma_inbox = Arc::new(ArrayQueue::new(1024));
    let rdma_rx = rdma_inbox.clone();
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
        let large = (cfg.tcp.max_io_size as usize).max(SMALL_BUF);
        let large_limit = usize::try_from(cfg.buffer_pool_size / large as u64).unwrap_or(usize::MAX);
        let pool = BufPool::new(
            SMALL_BUF,
            PREALLOC_SMALL,
            large,
            PREALLOC_LARGE.min(large_limit),
            large_limit,
        );
        // Buffer memory is on hugepages only where the system has them reserved.
        let hugepages = pool.regions().all(|r| matches!(r.pages(), Pages::Huge { .. }));
        info!(reactor = cfg.id, core = cfg.core, buffers_on_hugepages = hugepages, "reactor running");
        let rdma = match cfg.rdma {
            None => None,
            Some(p) => match RdmaGroup::new(p) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::error!(reactor = cfg.id, error = %e, "cannot start the RDMA poll group; this reactor serves no RDMA queue pair");
                    None
                }
            },
        };
        let mut r = Reactor {
            rdma,
            rdma_inbox: rdma_rx,
            cfg,
            target,
            inbox: rx,
            conns: Vec::new(),
            free: Vec::new(),
            channels,
            deferred: VecDeque::with_capacity(4096),
            stop,
            pool: Rc::new(RefCell::new(pool)),
        };
        r.run();
    })?;
    Ok(ReactorHandle {
        inbox,
        rdma_inbox,
        thread,
    })
}

struct Reactor {
    /// NVMe/RDMA queue pairs (first, so they go before anything they use).
    rdma: Option<RdmaGroup<RdmaQp>>,
    rdma_inbox: Arc<ArrayQueue<Incoming>>,
    cfg: ReactorConfig,
    target: Arc<Target>,
    inbox: Arc<ArrayQueue<NewConn>>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    channels: Vec<Box<dyn BdevChannel>>,
    deferred: VecDeque<Deferred>,
    stop: Arc<AtomicBool>,
    /// Data buffers of every command on this reactor.
    pool: Rc<RefCell<BufPool>>,
}

/// Tag layout for block-device I/O: generation (31 bits) | connection index (16) | slot (16).
fn tag(generation: u32, conn: usize, slot: u16) -> u64 {
    (((generation & GENERATION_MASK) as u64) << 32) | ((conn as u64 & 0xffff) << 16) | slot as u64
}

fn untag(tag: u64) -> (u32, usize, u16) {
    (
        ((tag >> 32) as u32) & GENERATION_MASK,
        ((tag >> 16) & 0xffff) as usize,
        tag as u16,
    )
}

const GENERATION_MASK: u32 = 0x7fff_ffff;

impl Reactor {
    fn run(&mut self) {
        let mut idle = 0u32;
        let mut tick = 0u32;
        let mut generation = 0u32;
        let mut stop_started: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            let mut work = false;
            if !stopping {
                while let Some(nc) = self.inbox.pop() {
                    generation = generation.wrapping_add(1) & GENERATION_MASK;
                    self.add_conn(nc, generation);
                    work = true;
                }
                while let Some(inc) = self.rdma_inbox.pop() {
                    self.add_rdma(inc);
                    work = true;
                }
            }
            // RDMA: completions and cm events, then every command that is ready.
            work |= self.rdma_poll();
            // Receive and execute, then reap the block devices, then send: an I/O that
            // completes at once (malloc, null) is answered in the same iteration.
            if !stopping {
                let cold_turn = tick.is_multiple_of(COLD_EVERY);
                for i in 0..self.conns.len() {
                    work |= self.receive(i, cold_turn);
                }
            }
            work |= self.poll_bdevs();
            work |= self.retry_deferred();
            for i in 0..self.conns.len() {
                work |= self.send(i);
            }
            tick = tick.wrapping_add(1);
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
                        reactor = self.cfg.id,
                        "in-flight I/O or unsent responses left after the drain timeout"
                    );
                    break;
                }
            }
            if work {
                idle = 0;
            } else if let Some(d) = self.cfg.idle_sleep {
                idle += 1;
                if idle >= IDLE_POLLS_BEFORE_SLEEP {
                    std::thread::sleep(d);
                }
            } else {
                std::hint::spin_loop();
            }
        }
        let n = self.conns.iter().flatten().count();
        for i in 0..self.conns.len() {
            self.close(i, "daemon shutting down");
        }
        self.rdma_shutdown();
        self.flush_bdevs();
        info!(reactor = self.cfg.id, connections = n, "reactor stopped");
    }

    /// A Flush of a block device: the daemon's stop path and a controller shutdown (CC.SHN) both
    /// make completed writes durable through this.
    fn flush_io(&self, tag: u64) -> Io {
        Io {
            tag,
            op: nvmfd_bdev::Op::Flush,
            buf: self.pool.borrow_mut().get(SMALL_BUF),
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
                    reactor = self.cfg.id,
                    bdev = i,
                    "cannot submit the shutdown flush"
                );
                continue;
            }
            let mut result = None;
            let pool = &self.pool;
            while result.is_none() && Instant::now() < deadline {
                ch.poll(&mut |c: Completion| {
                    pool.borrow_mut().put(c.buf);
                    result = Some(c.result)
                });
                std::hint::spin_loop();
            }
            match result {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    warn!(reactor = self.cfg.id, bdev = i, error = %e, "shutdown flush failed")
                }
                None => warn!(reactor = self.cfg.id, bdev = i, "shutdown flush timed out"),
            }
        }
    }

    /// Stopping: no I/O in flight anywhere and every response written.
    fn drained(&self) -> bool {
        let rdma_idle = match self.rdma.as_ref() {
            None => true,
            Some(g) => g.indices().all(|i| g.is_idle(i)),
        };
        rdma_idle
            && self.deferred.is_empty()
            && self.channels.iter().all(|c| c.in_flight() == 0)
            && self
                .conns
                .iter()
                .flatten()
                .all(|c| c.in_flight == 0 && !c.tcp.has_unsent())
    }

    fn add_conn(&mut self, nc: NewConn, generation: u32) {
        if let Err(e) = nc
            .stream
            .set_nonblocking(true)
            .and_then(|_| nc.stream.set_nodelay(true))
        {
            warn!(peer = %nc.peer, error = %e, "cannot configure accepted socket; dropping it");
            return;
        }
        let mut qp = QueuePair::new(self.target.clone());
        if let Ok(local) = nc.stream.local_addr() {
            qp.set_local_addr(local);
        }
        let conn = Conn {
            idle_polls: 0,
            tcp: TcpConn::new(Socket::new(nc.stream), self.cfg.tcp, self.pool.clone()),
            qp,
            peer: nc.peer,
            generation,
            in_flight: 0,
            held: Vec::new(),
        };
        let idx = match self.free.pop() {
            Some(i) => i,
            None if self.conns.len() < 0xffff => {
                self.conns.push(None);
                self.conns.len() - 1
            }
            None => {
                warn!(peer = %nc.peer, "too many connections on this reactor; dropping");
                return;
            }
        };
        debug!(reactor = self.cfg.id, peer = %nc.peer, conn = idx, "connection accepted");
        self.conns[idx] = Some(conn);
    }

    fn close(&mut self, idx: usize, why: &str) {
        if let Some(mut c) = self.conns[idx].take() {
            let _ = c.tcp.poll_send();
            let st = c.tcp.stats();
            debug!(peer = %c.peer, commands = st.commands, recv_calls = st.recv_calls, recv_empty = st.recv_empty,
                send_calls = st.send_calls, "connection socket counters");
            if c.qp.is_connected() {
                info!(peer = %c.peer, queue = %c.qp.describe(), reason = why, "queue pair closed");
            } else {
                debug!(peer = %c.peer, reason = why, "connection closed before connect");
            }
            let was_admin = c.qp.qid() == 0 && c.qp.is_connected();
            c.qp.teardown();
            if was_admin {
                info!(peer = %c.peer, "controller destroyed");
            }
            let _ = c.tcp.stream().stream().shutdown(std::net::Shutdown::Both);
            self.free.push(idx);
        }
    }

    /// Read a connection's socket and hand every complete capsule to the core.
    fn receive(&mut self, idx: usize, cold_turn: bool) -> bool {
        let Some(c) = self.conns[idx].as_mut() else {
            return false;
        };
        if c.idle_polls > HOT_POLLS && !cold_turn && !c.tcp.awaiting_buffers() {
            return false;
        }
        let mut work = match c.tcp.poll_recv() {
            Ok(p) => {
                c.idle_polls = if p { 0 } else { c.idle_polls.saturating_add(1) };
                p
            }
            Err(e) => {
                let why = e.to_string();
                if matches!(e, ConnError::Fatal(_)) {
                    let _ = c.tcp.poll_send();
                }
                self.close(idx, &why);
                return true;
            }
        };
        // The clock is read once per batch of commands, not once per poll.
        let mut now = None;
        let lend = c.tcp.takes_lent_data();
        while let Some(slot) = c.tcp.next_ready() {
            work = true;
            let cap = c.tcp.capsule_mut(slot);
            match c.qp.execute(cap, *now.get_or_insert_with(Instant::now)) {
                Outcome::Done(resp) => c.tcp.complete(slot, resp),
                Outcome::Held => c.held.push((cap.sqe.cid, slot)),
                Outcome::Io { bdev, mut op } => {
                    // Reads go out from a RAM disk's own memory when the connection can send
                    // data it never reads (no data digest): one copy less per byte.
                    if let nvmfd_bdev::Op::Read { lba, blocks } = op {
                        if lend {
                            op = nvmfd_bdev::Op::ReadLent { lba, blocks };
                        }
                    }
                    let Some(buf) = cap.buf.take() else {
                        // Unreachable by construction: every slot owns a buffer while it runs.
                        warn!("capsule without a buffer; dropping the command");
                        continue;
                    };
                    c.in_flight += 1;
                    let io = Io {
                        tag: tag(c.generation, idx, slot),
                        op,
                        buf,
                    };
                    if let Err(io) = self.channels[bdev].submit(io) {
                        self.deferred.push_back(Deferred { bdev, io });
                    }
                }
            }
        }
        // Once Connect has made this a queue, the transport holds the host to its size.
        if !c.tcp.queue_known() && c.qp.is_connected() {
            c.tcp.set_queue(c.qp.qid(), c.qp.sq_entries());
        }
        work
    }

    /// Write what a connection has queued.
    fn send(&mut self, idx: usize) -> bool {
        let Some(c) = self.conns[idx].as_mut() else {
            return false;
        };
        if !c.tcp.has_unsent() {
            // A disconnected queue closes once its responses are out and nothing is in flight.
            if let Some(why) = c.qp.wants_close().filter(|_| c.in_flight == 0) {
                self.close(idx, why);
                return true;
            }
            return false;
        }
        match c.tcp.poll_send() {
            Ok(p) => p,
            Err(e) => {
                let why = e.to_string();
                self.close(idx, &why);
                true
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
        let conns = &mut self.conns;
        let pool = &self.pool;
        let rdma = &mut self.rdma;
        for ch in self.channels.iter_mut() {
            n += ch.poll(&mut |done: Completion| {
                if done.tag & RDMA_TAG != 0 {
                    complete_rdma_io(rdma, pool, done)
                } else {
                    complete_io(conns, pool, done)
                }
            });
        }
        n > 0
    }

    /// Take an RDMA connection the listener admitted.
    fn add_rdma(&mut self, inc: Incoming) {
        let Some(g) = self.rdma.as_mut() else {
            warn!(peer = ?inc.peer, "no RDMA poll group on this reactor; dropping the connection");
            return;
        };
        let mut qp = QueuePair::new(self.target.clone());
        qp.set_transport(TransportKind::Rdma);
        if let Some(local) = inc.local {
            qp.set_local_addr(local);
        }
        let user = RdmaQp {
            qp,
            peer: inc.peer,
            in_flight: 0,
            held: Vec::new(),
        };
        if let Ok(idx) = g.add(inc, user) {
            debug!(reactor = self.cfg.id, conn = idx, "RDMA queue pair added");
        }
    }

    /// Poll the RDMA group and run every ready command through the core.
    fn rdma_poll(&mut self) -> bool {
        let Some(g) = self.rdma.as_mut() else {
            return false;
        };
        let mut work = g.poll();
        let mut now = None;
        while let Some((idx, slot)) = g.next_ready() {
            work = true;
            let generation = g.generation(idx).unwrap_or(0);
            let Some((u, cap)) = g.parts(idx, slot) else {
                continue;
            };
            match u.qp.execute(cap, *now.get_or_insert_with(Instant::now)) {
                Outcome::Done(resp) => g.complete(idx, slot, resp),
                Outcome::Held => {
                    u.held.push((cap.sqe.cid, slot));
                    g.hold(idx, slot);
                }
                Outcome::Io { bdev, op } => {
                    let Some(buf) = cap.buf.take() else {
                        warn!("RDMA capsule without a buffer; dropping the command");
                        continue;
                    };
                    u.in_flight += 1;
                    let io = Io {
                        tag: rdma_tag(generation, idx, slot),
                        op,
                        buf,
                    };
                    if let Err(io) = self.channels[bdev].submit(io) {
                        self.deferred.push_back(Deferred { bdev, io });
                    }
                }
            }
        }
        while let Some((mut u, peer, why)) = g.take_closed() {
            if u.qp.is_connected() {
                info!(peer = ?peer, queue = %u.qp.describe(), reason = why, "queue pair closed");
            } else {
                debug!(peer = ?peer, reason = why, "RDMA connection closed before connect");
            }
            u.qp.teardown();
        }
        work
    }

    /// Timers and core actions of the RDMA queue pairs.
    fn rdma_timers(&mut self, now: Instant) {
        let Some(g) = self.rdma.as_mut() else {
            return;
        };
        let n = g.indices().last().map_or(0, |i| i + 1);
        for idx in 0..n {
            if g.is_closing(idx) {
                continue;
            }
            let idle = g.is_idle(idx);
            let generation = g.generation(idx).unwrap_or(0);
            let Some(u) = g.user_mut(idx) else {
                continue;
            };
            let why = u
                .qp
                .poll_timers(now)
                .or_else(|| u.qp.wants_close().filter(|_| u.in_flight == 0 && idle));
            if let Some(why) = why {
                if u.qp.wants_close().is_none() {
                    warn!(peer = ?u.peer, queue = %u.qp.describe(), reason = why, "tearing down queue pair");
                }
                g.close(idx, why);
                continue;
            }
            loop {
                let Some(u) = g.user_mut(idx) else {
                    break;
                };
                match u.qp.next_action() {
                    None => break,
                    Some(Action::Complete(resp)) => {
                        match u.held.iter().position(|&(cid, _)| cid == resp.cqe.cid) {
                            Some(k) => {
                                let (_, slot) = u.held.swap_remove(k);
                                g.complete(idx, slot, resp);
                            }
                            None => {
                                warn!(peer = ?u.peer, cid = resp.cqe.cid, "core completed a command this queue pair does not hold")
                            }
                        }
                    }
                    Some(Action::Flush { bdev }) => {
                        u.in_flight += 1;
                        let io = Io {
                            tag: rdma_tag(generation, idx, FLUSH_SLOT),
                            op: nvmfd_bdev::Op::Flush,
                            buf: self.pool.borrow_mut().get(SMALL_BUF),
                        };
                        if let Err(io) = self.channels[bdev].submit(io) {
                            self.deferred.push_back(Deferred { bdev, io });
                        }
                    }
                }
            }
        }
    }

    /// Daemon stop: close every RDMA queue pair and wait (briefly) for their flushes.
    fn rdma_shutdown(&mut self) {
        if self.rdma.is_none() {
            return;
        }
        if let Some(g) = self.rdma.as_mut() {
            g.close_all();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.poll_bdevs();
            self.rdma_poll();
            let empty = self.rdma.as_ref().is_none_or(|g| g.is_empty());
            if empty || Instant::now() > deadline {
                break;
            }
            std::hint::spin_loop();
        }
    }

    fn check_timers(&mut self) {
        let now = Instant::now();
        self.rdma_timers(now);
        for i in 0..self.conns.len() {
            let why = match self.conns[i].as_mut() {
                Some(c) => c.qp.poll_timers(now).or_else(|| c.tcp.poll_timers(now)),
                None => None,
            };
            if let Some(why) = why {
                if let Some(c) = self.conns[i].as_ref() {
                    warn!(peer = %c.peer, queue = %c.qp.describe(), reason = why, "tearing down queue pair");
                }
                self.close(i, why);
                continue;
            }
            self.core_actions(i);
        }
    }

    /// Carry out what the core asks of connection `idx` outside any capsule: completions of held
    /// commands and shutdown flushes.
    fn core_actions(&mut self, idx: usize) {
        loop {
            let Some(c) = self.conns[idx].as_mut() else {
                return;
            };
            match c.qp.next_action() {
                None => return,
                Some(Action::Complete(resp)) => {
                    match c.held.iter().position(|&(cid, _)| cid == resp.cqe.cid) {
                        Some(k) => {
                            let (_, slot) = c.held.swap_remove(k);
                            c.tcp.complete(slot, resp);
                        }
                        None => {
                            warn!(peer = %c.peer, cid = resp.cqe.cid, "core completed a command this connection does not hold")
                        }
                    }
                }
                Some(Action::Flush { bdev }) => {
                    c.in_flight += 1;
                    let t = tag(c.generation, idx, FLUSH_SLOT);
                    let io = self.flush_io(t);
                    if let Err(io) = self.channels[bdev].submit(io) {
                        self.deferred.push_back(Deferred { bdev, io });
                    }
                }
            }
        }
    }
}

/// Route a block-device completion of an RDMA queue pair back to it.
fn complete_rdma_io(
    rdma: &mut Option<RdmaGroup<RdmaQp>>,
    pool: &RefCell<BufPool>,
    done: Completion,
) {
    let generation = ((done.tag >> 32) & 0xffff) as u16;
    let idx = ((done.tag >> 16) & 0xffff) as usize;
    let slot = done.tag as u16;
    let Some(g) = rdma.as_mut() else {
        return;
    };
    if g.generation(idx) != Some(generation) {
        // The queue pair was destroyed after its close timed out; the buffer is dropped (it
        // returns to its region, not to a pool of this reactor's other transport).
        return;
    }
    if slot == FLUSH_SLOT {
        pool.borrow_mut().put(done.buf);
        if let Some(u) = g.user_mut(idx) {
            u.in_flight -= 1;
            u.qp.flush_done(done.result);
        }
        return;
    }
    let Some((u, cap)) = g.parts(idx, slot) else {
        return;
    };
    u.in_flight -= 1;
    cap.buf = Some(done.buf);
    cap.lent = done.lent;
    let resp = u.qp.io_done(cap, done.result);
    g.complete(idx, slot, resp);
}

/// Route a block-device completion back to its connection (dropped if the connection is gone).
fn complete_io(conns: &mut [Option<Conn>], pool: &RefCell<BufPool>, done: Completion) {
    let (generation, idx, slot) = untag(done.tag);
    let c = match conns.get_mut(idx) {
        Some(Some(c)) if c.generation == generation => c,
        _ => {
            // The connection is gone; its buffer still goes back to the pool.
            pool.borrow_mut().put(done.buf);
            return;
        }
    };
    c.in_flight -= 1;
    if slot == FLUSH_SLOT {
        pool.borrow_mut().put(done.buf);
        c.qp.flush_done(done.result);
        return;
    }
    let cap = c.tcp.capsule_mut(slot);
    cap.buf = Some(done.buf);
    cap.lent = done.lent;
    let resp = c.qp.io_done(cap, done.result);
    c.tcp.complete(slot, resp);
}
