//! Socket readiness for a reactor without a system call per idle poll: one io_uring per reactor
//! with a multishot POLL_ADD (POLLIN) per connection. An idle reactor only reads the completion
//! ring (memory); the kernel posts a completion when data arrives, and the reactor then reads
//! the socket until it is drained. Where io_uring is unavailable (disabled by sysctl, old
//! kernel) every connection counts as readable on every poll, which is correct but costs one
//! `recv` per connection per iteration.

use io_uring::{cqueue, opcode, types, IoUring};
use std::os::fd::RawFd;
use tracing::warn;

pub struct Poller {
    ring: Option<IoUring>,
    /// SQEs pushed but not yet submitted.
    unsubmitted: bool,
}

impl Poller {
    pub fn new(entries: u32) -> Self {
        match IoUring::new(entries) {
            Ok(ring) => Poller {
                ring: Some(ring),
                unsubmitted: false,
            },
            Err(e) => {
                warn!(error = %e, "io_uring unavailable: reactors will poll every socket with recv()");
                Poller {
                    ring: None,
                    unsubmitted: false,
                }
            }
        }
    }

    /// Whether readiness comes from the ring (false: treat every socket as readable).
    pub fn enabled(&self) -> bool {
        self.ring.is_some()
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        for _ in 0..2 {
            // SAFETY: poll add/remove entries reference no memory of ours (only an fd and a
            // user_data value), so nothing must outlive the submission.
            if unsafe { ring.submission().push(&entry) }.is_ok() {
                self.unsubmitted = true;
                return;
            }
            // Submission queue full: hand what is queued to the kernel and retry once.
            if let Err(e) = ring.submit() {
                warn!(error = %e, "io_uring submit failed");
            }
        }
        warn!("io_uring submission queue full; a socket may be polled late");
    }

    /// Start watching `fd` for input; completions carry `token`.
    pub fn watch(&mut self, fd: RawFd, token: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token);
        self.push(e);
    }

    /// Stop watching the poll that carries `token` (before its socket is closed, so the kernel
    /// releases its reference to the socket).
    pub fn unwatch(&mut self, token: u64) {
        // Removal completions carry REMOVE_TOKEN, which never matches a connection.
        self.push(
            opcode::PollRemove::new(token)
                .build()
                .user_data(REMOVE_TOKEN),
        );
        self.submit();
    }

    /// Hand queued watches to the kernel (one system call, only when something was queued).
    pub fn submit(&mut self) {
        if let (true, Some(ring)) = (self.unsubmitted, self.ring.as_mut()) {
            match ring.submit() {
                Ok(_) => self.unsubmitted = false,
                Err(e) => warn!(error = %e, "io_uring submit failed"),
            }
        }
    }

    /// Report sockets that became readable: `ready(token, still_armed)`. When `still_armed` is
    /// false the multishot poll ended and the caller must `watch` again if it still cares.
    pub fn poll(&mut self, ready: &mut dyn FnMut(u64, bool)) -> usize {
        let Some(ring) = self.ring.as_mut() else {
            return 0;
        };
        let mut n = 0;
        for cqe in ring.completion() {
            if cqe.user_data() == REMOVE_TOKEN {
                continue;
            }
            n += 1;
            let armed = cqueue::more(cqe.flags());
            // A cancelled poll (removed or its socket closed) ends with an error: not readable.
            if cqe.result() >= 0 || armed {
                ready(cqe.user_data(), armed);
            } else {
                ready(cqe.user_data() | CANCELLED_BIT, false);
            }
        }
        n
    }
}

/// user_data of poll-remove requests.
const REMOVE_TOKEN: u64 = u64::MAX;
/// Set in a token passed to `ready` when the poll ended with an error (cancelled).
pub const CANCELLED_BIT: u64 = 1 << 63;
