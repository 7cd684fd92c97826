//! Waiting for listening sockets on the control plane (poll(2) with a timeout).

use std::os::fd::RawFd;
use std::time::Duration;

/// Block until one of `fds` is readable or `timeout` passes; returns whether one is readable.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> bool {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfds` holds `pfds.len()` initialised pollfd entries and outlives the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    rc > 0
}
