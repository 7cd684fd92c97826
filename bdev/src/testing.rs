//! Test aids: a block device wrapper that records every operation and models a volatile write
//! cache, so a test (in this crate or another) can prove *when* data became durable.
//!
//! [`Recorder`] wraps any [`Bdev`] and reports a volatile write cache whatever the inner device
//! says. Every submitted I/O and every completion is appended to a shared log, in the order the
//! submitter saw them. From the log, [`Recorder::volatile`] computes which written extents would
//! still sit in the modeled cache: a write is durable once it completed with FUA, or once a Flush
//! submitted after the write's completion has completed itself (NVMe NVM Command Set 1.0, Flush:
//! it commits data of commands completed before the Flush was submitted).
//!
//! Not for production: the log takes a lock per I/O.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Bdev, BdevChannel, BdevInfo, Completion, Io, IoError, Op};

/// One entry of a [`Recorder`]'s log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An I/O was accepted by the channel's `submit`.
    Submitted { tag: u64, op: Op },
    /// An I/O's completion was handed to the submitter by `poll`.
    Completed {
        tag: u64,
        op: Op,
        result: Result<(), IoError>,
    },
}

type Log = Arc<Mutex<Vec<Event>>>;

fn lock(log: &Log) -> MutexGuard<'_, Vec<Event>> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`Bdev`] that records what its channels do (see the module docs).
pub struct Recorder {
    inner: Arc<dyn Bdev>,
    info: BdevInfo,
    log: Log,
}

impl Recorder {
    /// Wrap `inner`; the wrapper claims a volatile write cache (so a target advertises one and
    /// lets a host turn it off).
    pub fn new(inner: Arc<dyn Bdev>) -> Self {
        let mut info = inner.info().clone();
        info.volatile_cache = true;
        Recorder {
            inner,
            info,
            log: Arc::default(),
        }
    }

    /// A copy of the log so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.log).clone()
    }

    /// Forget everything logged so far.
    pub fn clear(&self) {
        lock(&self.log).clear();
    }

    /// Extents `(lba, blocks)` of successful writes (and write-zeroes) that completed without
    /// FUA and were not followed by a completed Flush submitted after their completion: what a
    /// volatile cache could still lose.
    pub fn volatile(&self) -> Vec<(u64, u32)> {
        volatile(&lock(&self.log))
    }
}

/// See [`Recorder::volatile`].
pub fn volatile(events: &[Event]) -> Vec<(u64, u32)> {
    // Extents written without FUA, each with the log index of its completion.
    let mut cached: Vec<(usize, u64, u32)> = Vec::new();
    // Flush tags in flight, with the log index of their submission.
    let mut flushes: HashMap<u64, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        match *e {
            Event::Submitted { tag, op: Op::Flush } => {
                flushes.insert(tag, i);
            }
            Event::Completed {
                tag,
                op: Op::Flush,
                result,
            } => {
                if let Some(submitted) = flushes.remove(&tag) {
                    if result.is_ok() {
                        cached.retain(|&(done, _, _)| done > submitted);
                    }
                }
            }
            Event::Completed {
                op:
                    Op::Write {
                        lba,
                        blocks,
                        fua: false,
                    }
                    | Op::WriteZeroes {
                        lba,
                        blocks,
                        fua: false,
                    },
                result: Ok(()),
                ..
            } => cached.push((i, lba, blocks)),
            _ => {}
        }
    }
    cached.into_iter().map(|(_, l, b)| (l, b)).collect()
}

impl Bdev for Recorder {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn channel(&self) -> io::Result<Box<dyn BdevChannel>> {
        Ok(Box::new(RecorderChannel {
            inner: self.inner.channel()?,
            ops: HashMap::new(),
            log: Arc::clone(&self.log),
        }))
    }
}

struct RecorderChannel {
    inner: Box<dyn BdevChannel>,
    /// Op of each I/O in flight, by tag (completions carry only the tag).
    ops: HashMap<u64, Op>,
    log: Log,
}

impl BdevChannel for RecorderChannel {
    fn submit(&mut self, io: Io) -> Result<(), Io> {
        let (tag, op) = (io.tag, io.op);
        self.inner.submit(io)?;
        // Completions are logged in `poll`, so this entry precedes its completion even when the
        // inner backend finished the I/O inside `submit`.
        lock(&self.log).push(Event::Submitted { tag, op });
        self.ops.insert(tag, op);
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let (ops, log) = (&mut self.ops, &self.log);
        self.inner.poll(&mut |c: Completion| {
            if let Some(op) = ops.remove(&c.tag) {
                lock(log).push(Event::Completed {
                    tag: c.tag,
                    op,
                    result: c.result,
                });
            }
            done(c);
        })
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Malloc;
    use nvmfd_p2p::mem::IoBuf;

    fn run(ch: &mut dyn BdevChannel, tag: u64, op: Op) {
        ch.submit(Io {
            tag,
            op,
            buf: IoBuf::new(4096),
        })
        .expect("room");
        let mut n = 0;
        while n == 0 {
            n = ch.poll(&mut |c| assert_eq!(c.result, Ok(())));
        }
    }

    #[test]
    fn models_a_volatile_cache() {
        let m = Malloc::new("m", 1 << 20, 4096).expect("malloc");
        let r = Recorder::new(Arc::new(m));
        assert!(r.info().volatile_cache);
        let mut ch = r.channel().expect("channel");
        let w = |lba, fua| Op::Write {
            lba,
            blocks: 1,
            fua,
        };
        run(&mut *ch, 1, w(1, false));
        run(&mut *ch, 2, w(2, true));
        assert_eq!(r.volatile(), [(1, 1)]);
        run(&mut *ch, 3, Op::Flush);
        assert_eq!(r.volatile(), []);
        run(&mut *ch, 4, w(3, false));
        assert_eq!(r.volatile(), [(3, 1)]);
        let ev = r.events();
        assert_eq!(ev.len(), 8);
        assert_eq!(
            ev[0],
            Event::Submitted {
                tag: 1,
                op: w(1, false)
            }
        );
        assert_eq!(
            ev[1],
            Event::Completed {
                tag: 1,
                op: w(1, false),
                result: Ok(())
            }
        );

        // A flush submitted before a write completed does not cover it.
        let log = [
            Event::Submitted {
                tag: 9,
                op: Op::Flush,
            },
            Event::Completed {
                tag: 1,
                op: w(5, false),
                result: Ok(()),
            },
            Event::Completed {
                tag: 9,
                op: Op::Flush,
                result: Ok(()),
            },
        ];
        assert_eq!(volatile(&log), [(5, 1)]);
    }
}
