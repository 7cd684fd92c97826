//! [`TcpGroup`]: the NVMe/TCP poll group of one reactor, every NVMe/TCP connection it serves.
//!
//! Each connection is a [`TcpConn`] over a non-blocking socket, polled by the group: a hot one
//! (it received something in the last [`HOT_POLLS`] polls) gets one non-blocking recv per poll,
//! the lowest latency; a cold one (admin queues, quiet hosts) only on cold turns, a fraction of a
//! system call each. Data buffers come from the group's own pool, sized by `transports.tcp`.

use super::{ConnEvent, Socket, TcpConn, TcpParams};
use crate::group::{ConnId, DataNeed, Event, PollGroup, TransportInfo};
use crate::staging::{P2pCounters, Staging, StagingSource};
use crate::{Capsule, Response};
use nvmfd_p2p::mem::{BufPool, IoBuf, Pages};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Instant;
use tracing::{debug, info, warn};

/// A connection that received nothing for this many polls is cold: its socket is then read only
/// on the reactor's cold turns. The first command after a quiet spell waits at most one cold
/// period (tens of microseconds).
const HOT_POLLS: u32 = 20_000;
/// Data buffers: commands moving up to SMALL_BUF bytes take a small one, others a max_io_size
/// one. This many of each are made at start; more are made (once) if the group's peak of
/// commands in flight needs them, large ones up to `buffer_pool_size`.
const SMALL_BUF: usize = 8192;
const PREALLOC_SMALL: usize = 512;
const PREALLOC_LARGE: usize = 64;
/// Most connections one group holds (ids are `u16`).
const MAX_CONNS: usize = 0xffff;

/// An accepted NVMe/TCP connection, handed from the daemon's acceptor to a reactor.
pub struct TcpIncoming {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

/// What a reactor needs to build its NVMe/TCP group.
#[derive(Debug, Clone)]
pub struct TcpGroupConfig {
    pub params: TcpParams,
    pub info: TransportInfo,
    /// Bytes of large data buffers the group may hold (`transports.tcp.buffer_pool_size`).
    pub buffer_pool_size: u64,
    /// Per block device (by index), the CMB its namespace's write data is staged in, when the
    /// start-up decision says so (`crate::staging`); shorter than the bdev table is fine.
    pub staging: Vec<Option<StagingSource>>,
}

struct Entry {
    tcp: TcpConn<Socket>,
    /// Polls since this connection last received anything (see [`HOT_POLLS`]).
    idle_polls: u32,
    peer: SocketAddr,
}

/// Every NVMe/TCP connection of one reactor.
pub struct TcpGroup {
    params: TcpParams,
    info: TransportInfo,
    reactor: usize,
    pool: Rc<RefCell<BufPool>>,
    staging: Rc<RefCell<Staging>>,
    conns: Vec<Option<Entry>>,
    free: Vec<ConnId>,
    /// Connections that joined, for [`Event::Connected`].
    joined: VecDeque<(ConnId, SocketAddr, Option<SocketAddr>)>,
    /// Connections the group ended and the reactor has not heard of yet: their ids stay taken
    /// until [`Event::Closed`] is handed out.
    ended: VecDeque<(ConnId, String)>,
    /// Where [`PollGroup::next_event`] looks for per-connection events next.
    cursor: usize,
}

impl TcpGroup {
    /// End connection `idx` (group-initiated): flush what can go, shut the socket down, and
    /// queue [`Event::Closed`].
    fn end(&mut self, idx: usize, why: String) {
        if self.conns[idx].is_some() {
            self.release(idx);
            self.ended.push_back((idx as ConnId, why));
        }
    }

    /// Drop connection `idx`: try once to send what is queued (a termination request, last
    /// responses), shut the socket down; its buffers go back to the pool.
    fn release(&mut self, idx: usize) {
        if let Some(mut e) = self.conns[idx].take() {
            let _ = e.tcp.poll_send();
            let st = e.tcp.stats();
            debug!(peer = %e.peer, commands = st.commands, recv_calls = st.recv_calls,
                recv_empty = st.recv_empty, send_calls = st.send_calls, "connection socket counters");
            let _ = e.tcp.stream().stream().shutdown(std::net::Shutdown::Both);
        }
    }

    #[inline]
    fn entry(&mut self, conn: ConnId) -> &mut Entry {
        self.conns[conn as usize]
            .as_mut()
            .expect("the reactor names only live connections")
    }
}

impl PollGroup for TcpGroup {
    type Incoming = TcpIncoming;
    type Config = TcpGroupConfig;

    fn new(cfg: &TcpGroupConfig, reactor: usize) -> std::io::Result<Self> {
        let large = (cfg.params.max_io_size as usize).max(SMALL_BUF);
        let large_limit =
            usize::try_from(cfg.buffer_pool_size / large as u64).unwrap_or(usize::MAX);
        let pool = BufPool::new(
            SMALL_BUF,
            PREALLOC_SMALL,
            large,
            PREALLOC_LARGE.min(large_limit),
            large_limit,
        );
        // Buffer memory is on hugepages only where the system has them reserved.
        let hugepages = pool
            .regions()
            .all(|r| matches!(r.pages(), Pages::Huge { .. }));
        info!(
            reactor,
            transport = "tcp",
            buffers_on_hugepages = hugepages,
            "poll group ready"
        );
        Ok(TcpGroup {
            params: cfg.params,
            info: cfg.info,
            reactor,
            pool: Rc::new(RefCell::new(pool)),
            staging: Rc::new(RefCell::new(Staging::new(&cfg.staging))),
            conns: Vec::new(),
            free: Vec::new(),
            joined: VecDeque::new(),
            ended: VecDeque::new(),
            cursor: 0,
        })
    }

    fn info(&self) -> &TransportInfo {
        &self.info
    }

    fn add(&mut self, nc: TcpIncoming) {
        if let Err(e) = nc
            .stream
            .set_nonblocking(true)
            .and_then(|_| nc.stream.set_nodelay(true))
        {
            warn!(peer = %nc.peer, error = %e, "cannot configure accepted socket; dropping it");
            return;
        }
        let local = nc.stream.local_addr().ok();
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None if self.conns.len() < MAX_CONNS => {
                self.conns.push(None);
                self.conns.len() - 1
            }
            None => {
                warn!(peer = %nc.peer, "too many connections on this reactor; dropping");
                return;
            }
        };
        debug!(reactor = self.reactor, peer = %nc.peer, conn = idx, "connection accepted");
        self.conns[idx] = Some(Entry {
            tcp: TcpConn::with_staging(
                Socket::new(nc.stream),
                self.params,
                self.pool.clone(),
                self.staging.clone(),
            ),
            idle_polls: 0,
            peer: nc.peer,
        });
        self.joined.push_back((idx as ConnId, nc.peer, local));
    }

    fn poll_recv(&mut self, cold_turn: bool) -> bool {
        let mut work = false;
        for i in 0..self.conns.len() {
            let Some(e) = self.conns[i].as_mut() else {
                continue;
            };
            if e.idle_polls > HOT_POLLS && !cold_turn && !e.tcp.awaiting_buffers() {
                continue;
            }
            match e.tcp.poll_recv() {
                Ok(p) => {
                    e.idle_polls = if p { 0 } else { e.idle_polls.saturating_add(1) };
                    work |= p;
                }
                Err(err) => {
                    // A fatal protocol error has a termination request queued: `end` sends it.
                    self.end(i, err.to_string());
                    work = true;
                }
            }
        }
        work
    }

    fn next_event(&mut self) -> Option<Event> {
        if let Some((conn, peer, local)) = self.joined.pop_front() {
            return Some(Event::Connected { conn, peer, local });
        }
        while self.cursor < self.conns.len() {
            if let Some(e) = self.conns[self.cursor].as_mut() {
                let conn = self.cursor as ConnId;
                match e.tcp.next_event() {
                    Some(ConnEvent::Command { slot, sqe, desc }) => {
                        return Some(Event::Command {
                            conn,
                            slot,
                            sqe,
                            desc,
                        })
                    }
                    Some(ConnEvent::DataReady { slot }) => {
                        return Some(Event::DataReady { conn, slot })
                    }
                    None => {}
                }
            }
            self.cursor += 1;
        }
        self.cursor = 0;
        let (conn, why) = self.ended.pop_front()?;
        self.free.push(conn);
        Some(Event::Closed { conn, why })
    }

    fn fetch(&mut self, conn: ConnId, slot: u16, need: DataNeed) {
        self.entry(conn).tcp.fetch(slot, need);
        // The data may be in place at once (in-capsule, or a buffer for a read): its event is
        // found by the scan of this connection, which `next_event` has not moved past.
        if (conn as usize) < self.cursor {
            self.cursor = conn as usize;
        }
    }

    fn fetch_ready(&mut self, conn: ConnId, slot: u16, need: DataNeed) -> bool {
        let ready = self.entry(conn).tcp.fetch_ready(slot, need);
        // Commands that waited for a buffer may have their data in place now (see `fetch`).
        if (conn as usize) < self.cursor {
            self.cursor = conn as usize;
        }
        ready
    }

    #[inline]
    fn capsule_mut(&mut self, conn: ConnId, slot: u16) -> &mut Capsule {
        self.entry(conn).tcp.capsule_mut(slot)
    }

    #[inline]
    fn respond(&mut self, conn: ConnId, slot: u16, resp: Response) {
        self.entry(conn).tcp.respond(slot, resp);
    }

    fn set_queue(&mut self, conn: ConnId, qid: u16, entries: u16) {
        self.entry(conn).tcp.set_queue(qid, entries);
    }

    fn close(&mut self, conn: ConnId) {
        if self.conns[conn as usize].is_some() {
            self.release(conn as usize);
            self.free.push(conn);
        }
    }

    fn poll_send(&mut self) -> bool {
        let mut work = false;
        for i in 0..self.conns.len() {
            let Some(e) = self.conns[i].as_mut() else {
                continue;
            };
            if !e.tcp.has_unsent() {
                continue;
            }
            match e.tcp.poll_send() {
                Ok(p) => work |= p,
                Err(err) => {
                    self.end(i, err.to_string());
                    work = true;
                }
            }
        }
        work
    }

    fn poll_timers(&mut self, now: Instant) {
        self.staging.borrow_mut().idle_tick(now);
        for i in 0..self.conns.len() {
            let why = match self.conns[i].as_mut() {
                Some(e) => e.tcp.poll_timers(now),
                None => None,
            };
            if let Some(why) = why {
                if let Some(e) = &self.conns[i] {
                    warn!(peer = %e.peer, reason = why, "tearing down queue pair");
                }
                self.end(i, why.to_string());
            }
        }
    }

    fn conn_has_unsent(&self, conn: ConnId) -> bool {
        self.conns[conn as usize]
            .as_ref()
            .is_some_and(|e| e.tcp.has_unsent())
    }

    fn has_unsent(&self) -> bool {
        self.conns.iter().flatten().any(|e| e.tcp.has_unsent())
    }

    #[inline]
    fn takes_lent_data(&self, conn: ConnId) -> bool {
        self.conns[conn as usize]
            .as_ref()
            .is_some_and(|e| e.tcp.takes_lent_data())
    }

    fn recycle(&mut self, buf: IoBuf) {
        if let Some(buf) = self.staging.borrow_mut().put(buf) {
            self.pool.borrow_mut().put(buf);
        }
    }

    fn p2p_conn(&self, conn: ConnId) -> P2pCounters {
        self.conns
            .get(conn as usize)
            .and_then(|e| e.as_ref())
            .map_or_else(P2pCounters::default, |e| e.tcp.p2p_counters())
    }

    fn p2p_bdevs(&self, out: &mut Vec<P2pCounters>) {
        let st = self.staging.borrow();
        let c = st.counters();
        if out.len() < c.len() {
            out.resize(c.len(), P2pCounters::default());
        }
        for (o, c) in out.iter_mut().zip(c) {
            o.add(c);
        }
    }

    fn pool_stats(&self) -> crate::group::PoolStats {
        let p = self.pool.borrow();
        crate::group::PoolStats {
            in_use: p.in_use() as u64,
            waiters: p.waiting() as u64,
        }
    }
}
