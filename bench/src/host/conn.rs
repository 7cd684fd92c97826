//! A blocking NVMe/TCP byte stream: buffered receive of whole PDUs (framed and checked by
//! `proto::tcp::parse_pdu`) and plain sends. Shared by command queues and [`super::RawConnection`].

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use nvmfd_transport::proto::tcp::{
    fes, parse_pdu, pdu_type, Digests, Header, IcReq, IcResp, Pdu, COMMON_HEADER_SIZE,
};

use super::error::{HostError, Result};

/// Largest data payload accepted in one PDU from the target (bounds receive buffering).
pub const MAX_PDU_DATA: u32 = 64 << 20;

const INITIAL_RBUF: usize = 256 << 10;

pub(crate) struct Conn {
    pub stream: TcpStream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Scratch buffer PDUs are encoded into before a send.
    pub sbuf: Vec<u8>,
    /// Digests in force for PDUs in both directions.
    pub digests: Digests,
    /// Read timeout of blocking receives.
    pub timeout: Duration,
}

/// Clamp a timeout to something `set_read_timeout` accepts.
pub(crate) fn sock_timeout(t: Duration) -> Option<Duration> {
    Some(t.max(Duration::from_millis(1)))
}

impl Conn {
    pub fn open(addr: SocketAddr, connect_timeout: Duration, timeout: Duration) -> Result<Conn> {
        let stream =
            TcpStream::connect_timeout(&addr, connect_timeout.max(Duration::from_millis(1)))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(sock_timeout(timeout))?;
        stream.set_write_timeout(sock_timeout(timeout))?;
        Ok(Conn::from_stream(stream, timeout))
    }

    pub fn from_stream(stream: TcpStream, timeout: Duration) -> Conn {
        Conn {
            stream,
            rbuf: vec![0; INITIAL_RBUF],
            rstart: 0,
            rend: 0,
            sbuf: Vec::with_capacity(64 << 10),
            digests: Digests::default(),
            timeout,
        }
    }

    pub fn set_timeout(&mut self, t: Duration) -> Result<()> {
        self.stream.set_read_timeout(sock_timeout(t))?;
        self.stream.set_write_timeout(sock_timeout(t))?;
        self.timeout = t;
        Ok(())
    }

    /// Write `bytes` whole.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        // A send that times out may have written part of a PDU, so it is a fatal I/O error
        // rather than a (recoverable) timeout.
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => HostError::Io(std::io::Error::new(
                ErrorKind::TimedOut,
                format!("target did not accept data for {:?}", self.timeout),
            )),
            _ => HostError::Io(e),
        })
    }

    /// Send and clear the scratch buffer.
    pub fn flush_sbuf(&mut self) -> Result<()> {
        let buf = std::mem::take(&mut self.sbuf);
        let r = self.send(&buf);
        self.sbuf = buf;
        self.sbuf.clear();
        r
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rstart..self.rend]
    }

    /// Read more bytes. Ok(false) when `blocking` is false and nothing is available.
    fn fill(&mut self, blocking: bool, waiting_for: &dyn Fn() -> String) -> Result<bool> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        if self.rend == self.rbuf.len() {
            if self.rstart > 0 {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            } else {
                let n = self.rbuf.len() * 2;
                self.rbuf.resize(n, 0);
            }
        }
        // A non-blocking attempt is one recv(MSG_DONTWAIT): no fcntl pair around it, which
        // cost two extra syscalls per poll of a pipelined queue.
        let r = if blocking {
            self.stream.read(&mut self.rbuf[self.rend..])
        } else {
            rustix::net::recv(
                &self.stream,
                &mut self.rbuf[self.rend..],
                rustix::net::RecvFlags::DONTWAIT,
            )
            .map(|(n, _)| n)
            .map_err(std::io::Error::from)
        };
        match r {
            Ok(0) => Err(HostError::ConnectionClosed {
                waiting_for: waiting_for(),
            }),
            Ok(n) => {
                self.rend += n;
                Ok(true)
            }
            Err(e) => match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut if !blocking => Ok(false),
                ErrorKind::WouldBlock | ErrorKind::TimedOut => Err(HostError::Timeout {
                    waiting_for: waiting_for(),
                    after: self.timeout,
                }),
                ErrorKind::Interrupted => Ok(true),
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => Err(HostError::ConnectionClosed {
                    waiting_for: waiting_for(),
                }),
                _ => Err(HostError::Io(e)),
            },
        }
    }

    /// Make room so that a PDU of `plen` bytes starting at `rstart` fits the buffer.
    fn reserve_pdu(&mut self, plen: usize) {
        if self.rbuf.len() - self.rstart < plen {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
            if self.rbuf.len() < plen {
                self.rbuf.resize(plen, 0);
            }
        }
    }

    /// The next whole PDU, framed and checked with the connection's digests. With `blocking`
    /// false, Ok(None) when no whole PDU has arrived yet. Framing errors come back as
    /// [`HostError::MalformedPdu`] / [`HostError::HeaderDigest`] with the bytes left in the buffer.
    pub fn next_pdu(
        &mut self,
        blocking: bool,
        waiting_for: &dyn Fn() -> String,
    ) -> Result<Option<Pdu<'_>>> {
        loop {
            let avail = self.rend - self.rstart;
            if avail >= COMMON_HEADER_SIZE {
                let b = &self.rbuf[self.rstart..self.rend];
                let plen = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
                if avail >= plen {
                    break;
                }
                // Check the header before buffering a large PDU: a bogus length fails here.
                if let Err(e) = parse_pdu(b, self.digests, MAX_PDU_DATA) {
                    return Err(framing_error(b[0], e));
                }
                self.reserve_pdu(plen);
            }
            if !self.fill(blocking, waiting_for)? {
                return Ok(None);
            }
        }
        let b = &self.rbuf[self.rstart..self.rend];
        match parse_pdu(b, self.digests, MAX_PDU_DATA) {
            Ok(Some(p)) => Ok(Some(p)),
            Ok(None) => Err(HostError::Protocol("PDU framing inconsistent".into())),
            Err(e) => Err(framing_error(b[0], e)),
        }
    }

    /// Drop `n` consumed bytes from the receive buffer.
    pub fn consume(&mut self, n: usize) {
        self.rstart = (self.rstart + n).min(self.rend);
    }

    /// Send an ICReq and wait for the ICResp.
    pub fn initialize(&mut self, req: IcReq) -> Result<IcResp> {
        self.sbuf.clear();
        req.encode(&mut self.sbuf);
        self.flush_sbuf()?;
        self.digests = Digests::default();
        let pdu = self
            .next_pdu(true, &|| "ICResp".into())?
            .expect("blocking receive returns a PDU");
        let (len, header, t) = (pdu.len, pdu.header, pdu.ch.pdu_type);
        self.consume(len);
        match header {
            Header::IcResp(r) => Ok(r),
            Header::TermReq { fes, fei } if t == pdu_type::C2H_TERM_REQ => {
                Err(HostError::TerminatedByTarget { fes, fei })
            }
            _ => Err(HostError::UnexpectedPdu {
                pdu_type: t,
                context: "expected ICResp after ICReq".into(),
            }),
        }
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

pub(crate) fn framing_error(pdu_type: u8, e: nvmfd_transport::proto::tcp::FatalError) -> HostError {
    if e.fes == fes::HEADER_DIGEST_ERROR {
        HostError::HeaderDigest { pdu_type }
    } else {
        HostError::MalformedPdu {
            pdu_type,
            source: e,
        }
    }
}
