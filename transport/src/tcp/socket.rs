//! [`Socket`]: an accepted TCP stream read and written with plain system calls.
//!
//! std's `TcpStream` goes through glibc's `recv` and `writev`, which are thread-cancellation
//! points: each call brackets the system call with two atomic updates of the thread's cancel
//! state. A reactor makes millions of these calls a second and never uses cancellation, and a
//! profile of 4 KiB random reads at queue depth 32 put the bracketing at 4% of the reactor. This
//! module owns the stream and issues `recvfrom` and `writev` through `syscall(2)` instead; it
//! is the only place in the crate that does. `writev` takes its iovecs straight from the
//! [`Piece`]s it is given, so lent data reaches the kernel as the raw parts it came as.

use crate::{Piece, Transmit};
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

pub struct Socket {
    stream: TcpStream,
}

impl Socket {
    /// Take an accepted stream (already non-blocking).
    pub fn new(stream: TcpStream) -> Self {
        Socket { stream }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn result(ret: libc::c_long) -> std::io::Result<usize> {
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes for the duration of the call, the fd
        // is owned by self.stream, and the null address arguments are allowed by recvfrom(2).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                self.stream.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
                libc::MSG_DONTWAIT,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
            )
        };
        Self::result(ret)
    }
}

impl Transmit for Socket {
    fn transmit(&mut self, pieces: &[Piece<'_>]) -> std::io::Result<usize> {
        let n = pieces.len().min(libc::UIO_MAXIOV as usize);
        // SAFETY: Piece has struct iovec's layout (checked at compile time in `piece`), each
        // piece describes readable memory for as long as `pieces` is borrowed (the call), the
        // kernel only reads it, and the fd is owned by self.stream.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_writev,
                self.stream.as_raw_fd(),
                Piece::as_iovecs(pieces),
                n as libc::c_int,
            )
        };
        Self::result(ret)
    }
}
