//! Live reconfiguration, the reactor's side: control messages from the control thread
//! (`crate::live`), taken between polls. A reactor owns everything it changes here (its queue
//! pairs' snapshot references, its block-device channels); nothing is locked.

use super::Reactor;
use crate::core::{SubsysRef, Target};
use crossbeam_queue::ArrayQueue;
use nvmfd_bdev::{Bdev, BdevChannel, Completion, Io, IoError, Op};
use nvmfd_transport::group::{ConnId, PollGroup};
use nvmfd_transport::staging::P2pCounters;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tracing::warn;

/// What the control thread asks a reactor to do.
pub enum ReactorMsg {
    /// Serve this snapshot of the target from now on: every queue pair takes it, and those it
    /// ends (deleted subsystem, removed host or listener) are closed.
    Target(Arc<Target>),
    /// Open a channel to a new block device, in slot `index` of the channel table.
    OpenBdev { index: usize, bdev: Arc<dyn Bdev> },
    /// The block device in slot `index` was deleted (no namespace uses it any more): close the
    /// channel once the I/O still in flight on it is back.
    CloseBdev { index: usize },
    /// Report this reactor's queue pairs and counters (RPC `nvmf_get_stats`,
    /// `nvmf_subsystem_get_qpairs`, metrics): the reactor's own numbers, summed by the caller;
    /// nothing shared is touched on the I/O path.
    Report(std::sync::mpsc::SyncSender<ReactorReport>),
    /// Count every command from now on (or stop): the metrics endpoint is served
    /// (`super::stats`).
    CountIo(bool),
}

/// One connected queue pair as a report shows it.
#[derive(Debug, Clone)]
pub struct QpairReport {
    pub subsys: SubsysRef,
    pub cntlid: u16,
    pub qid: u16,
    pub hostnqn: String,
    pub local: Option<std::net::SocketAddr>,
    pub peer: std::net::SocketAddr,
    pub transport: nvmfd_config::TransportKind,
    /// Bytes through the CMB and host memory, fallbacks (`nvmfd_transport::staging`).
    pub p2p: P2pCounters,
}

/// What one reactor reports.
#[derive(Debug, Clone)]
pub struct ReactorReport {
    pub reactor: usize,
    /// Connected admin and I/O queues now.
    pub admin_qpairs: u64,
    pub io_qpairs: u64,
    /// Admin and I/O queues connected since start (those now and those ended).
    pub admin_qpairs_total: u64,
    pub io_qpairs_total: u64,
    /// Block-device I/Os submitted and not completed yet.
    pub pending_bdev_io: u64,
    /// Block-device I/Os completed since start.
    pub completed_io: u64,
    pub qpairs: Vec<QpairReport>,
    /// Loop iterations that found work, and that found none, since start.
    pub polls_busy: u64,
    pub polls_idle: u64,
    /// What each id of the I/O counters stands for (by id).
    pub stat_keys: Vec<super::stats::StatKey>,
    /// The I/O counters of each transport (poll group), indexed by id.
    pub io: Vec<(nvmfd_config::TransportKind, super::stats::IoStats)>,
    /// Each transport's data buffer pools.
    pub pools: Vec<(nvmfd_config::TransportKind, super::stats::PoolStats)>,
    /// P2P counters per block device (by index; a bdev backs one namespace) on this reactor.
    pub p2p_bdevs: Vec<P2pCounters>,
}

/// The control thread's end of one reactor's message queue. Messages are numbered; a reactor
/// stores the number of the last one it carried out in `applied`.
#[derive(Clone)]
pub struct ControlLink {
    pub queue: Arc<ArrayQueue<(u64, ReactorMsg)>>,
    pub applied: Arc<AtomicU64>,
    /// The reactor has stopped (it will carry out nothing more).
    pub stopped: Arc<AtomicBool>,
}

impl ControlLink {
    pub(super) fn new() -> Self {
        ControlLink {
            queue: Arc::new(ArrayQueue::new(256)),
            applied: Arc::new(AtomicU64::new(0)),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A channel that was closed or could not be opened. I/O still in flight on the channel it
/// replaces is reaped through it; once that is done the device is let go. Nothing new reaches it
/// through a namespace (the snapshot without the namespace came first); whatever does (the
/// daemon's final flush) completes at once: a flush with success (nothing is cached here), any
/// other operation as unsupported.
pub(super) struct Retired {
    inner: Option<Box<dyn BdevChannel>>,
    done: VecDeque<Io>,
}

impl Retired {
    pub(super) fn boxed(inner: Option<Box<dyn BdevChannel>>) -> Box<dyn BdevChannel> {
        Box::new(Retired {
            inner,
            done: VecDeque::new(),
        })
    }
}

impl BdevChannel for Retired {
    fn submit(&mut self, io: Io) -> Result<(), Io> {
        self.done.push_back(io);
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = 0;
        if let Some(inner) = self.inner.as_mut() {
            n += inner.poll(done);
            if inner.in_flight() == 0 {
                self.inner = None;
            }
        }
        while let Some(io) = self.done.pop_front() {
            let result = match io.op {
                Op::Flush => Ok(()),
                _ => Err(IoError::Unsupported),
            };
            done(Completion {
                tag: io.tag,
                result,
                buf: io.buf,
                lent: None,
            });
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.inner.as_ref().map_or(0, |c| c.in_flight()) + self.done.len()
    }
}

impl<G: PollGroup> Reactor<G> {
    /// Carry out the control messages waiting (called once per loop iteration: one atomic
    /// load when there are none).
    pub(super) fn control(&mut self) -> bool {
        let mut work = false;
        while let Some((seq, msg)) = self.control.queue.pop() {
            work = true;
            match msg {
                ReactorMsg::Target(t) => self.take_target(t),
                ReactorMsg::OpenBdev { index, bdev } => {
                    let ch = match bdev.channel() {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(reactor = self.id, bdev = %bdev.name(), error = %e,
                                "cannot open a channel to the new block device; its I/O fails on this reactor");
                            Retired::boxed(None)
                        }
                    };
                    while self.channels.len() < index {
                        self.channels.push(Retired::boxed(None));
                    }
                    if index == self.channels.len() {
                        self.channels.push(ch);
                    } else {
                        self.channels[index] = ch;
                    }
                }
                ReactorMsg::Report(reply) => {
                    let _ = reply.try_send(self.report());
                }
                ReactorMsg::CountIo(on) => {
                    for s in self.sides.iter_mut() {
                        s.stats.on = on;
                    }
                }
                ReactorMsg::CloseBdev { index } => {
                    if let Some(ch) = self.channels.get_mut(index) {
                        let old = std::mem::replace(ch, Retired::boxed(None));
                        *ch = Retired::boxed(Some(old));
                    }
                }
            }
            // Reports are numbered 0 and acknowledged by their answer.
            if seq != 0 {
                self.control.applied.store(seq, Ordering::Release);
            }
        }
        work
    }

    fn report(&self) -> ReactorReport {
        let qpairs: Vec<QpairReport> = (self.sides.iter())
            .flat_map(|s| {
                (s.conns.iter().enumerate()).filter_map(move |(i, c)| Some((s, i, c.as_ref()?)))
            })
            .filter_map(|(side, i, c)| {
                let ctrl = c.qp.controller()?;
                Some(QpairReport {
                    p2p: side.group.p2p_conn(i as ConnId),
                    subsys: ctrl.subsys,
                    cntlid: ctrl.cntlid,
                    qid: c.qp.qid(),
                    hostnqn: ctrl.hostnqn.clone(),
                    local: c.qp.local_addr(),
                    peer: c.peer,
                    transport: side.group.info().kind,
                })
            })
            .collect();
        let admin = qpairs.iter().filter(|q| q.qid == 0).count() as u64;
        let mut p2p_bdevs = Vec::new();
        for s in &self.sides {
            s.group.p2p_bdevs(&mut p2p_bdevs);
        }
        ReactorReport {
            p2p_bdevs,
            reactor: self.id,
            admin_qpairs: admin,
            io_qpairs: qpairs.len() as u64 - admin,
            admin_qpairs_total: admin
                + self
                    .sides
                    .iter()
                    .map(|s| s.stats.qpairs_ended[0])
                    .sum::<u64>(),
            io_qpairs_total: (qpairs.len() as u64 - admin)
                + self
                    .sides
                    .iter()
                    .map(|s| s.stats.qpairs_ended[1])
                    .sum::<u64>(),
            pending_bdev_io: self.channels.iter().map(|c| c.in_flight() as u64).sum(),
            completed_io: self.completed,
            qpairs,
            polls_busy: self.polls_busy,
            polls_idle: self.polls_idle,
            stat_keys: self.ids.keys().to_vec(),
            io: (self.sides.iter())
                .map(|s| (s.group.info().kind, s.stats.clone()))
                .collect(),
            pools: (self.sides.iter())
                .map(|s| (s.group.info().kind, s.group.pool_stats()))
                .collect(),
        }
    }

    fn take_target(&mut self, t: Arc<Target>) {
        self.target = t.clone();
        // New namespaces get counter ids (the only place the counter tables grow).
        self.ids.update(&t);
        for s in self.sides.iter_mut() {
            s.stats.grow(self.ids.keys().len());
        }
        for gi in 0..self.sides.len() {
            for ci in 0..self.sides[gi].conns.len() {
                let why = match self.sides[gi].conns[ci].as_mut() {
                    Some(c) => c.qp.set_target(t.clone()),
                    None => None,
                };
                if let Some(why) = why {
                    // `close` logs the queue and the reason.
                    self.close(gi, ci as ConnId, why);
                }
            }
        }
    }
}
