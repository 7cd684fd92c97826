//! A bare NVMe/TCP connection for malformed-PDU tests: write any bytes, read whatever PDU comes
//! next, or observe the target closing the connection.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nvmfd_transport::proto::nvme::Sqe;
use nvmfd_transport::proto::tcp::{
    encode_capsule_cmd, CommonHeader, Digests, Header, IcReq, IcResp,
};

use super::conn::Conn;
use super::error::{HostError, Result};

/// A PDU received on a [`RawConnection`], copied out of the receive buffer.
#[derive(Debug, Clone)]
pub struct OwnedPdu {
    pub ch: CommonHeader,
    pub header: Header,
    /// The PDU's data (between PDO and the data digest).
    pub data: Vec<u8>,
    /// False when the data digest did not match.
    pub data_digest_ok: bool,
    /// The whole PDU as it came off the wire.
    pub bytes: Vec<u8>,
}

/// What a receive on a [`RawConnection`] saw.
#[derive(Debug)]
pub enum RawEvent {
    /// A whole, well-formed PDU.
    Pdu(OwnedPdu),
    /// The target closed (or reset) the connection.
    Closed,
    /// Nothing (or only part of a PDU) arrived in time.
    Timeout,
}

/// A TCP connection to a target with no protocol state beyond the digests used to frame
/// received PDUs.
pub struct RawConnection {
    conn: Conn,
    h2c_align: usize,
}

impl RawConnection {
    /// Open a TCP connection (TCP_NODELAY) and send nothing.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<RawConnection> {
        Ok(RawConnection {
            conn: Conn::open(addr, timeout, timeout)?,
            h2c_align: 4,
        })
    }

    /// Open a TCP connection and exchange ICReq/ICResp asking for `digests`. The connection
    /// then frames PDUs with the digests the ICResp granted.
    pub fn connect_initialized(
        addr: SocketAddr,
        digests: Digests,
        timeout: Duration,
    ) -> Result<(RawConnection, IcResp)> {
        let mut raw = RawConnection::connect(addr, timeout)?;
        let resp = raw.initialize(IcReq {
            pfv: 0,
            hpda: 0,
            digests,
            maxr2t: 0,
        })?;
        Ok((raw, resp))
    }

    pub(crate) fn from_conn(conn: Conn, h2c_align: usize) -> RawConnection {
        RawConnection { conn, h2c_align }
    }

    /// Send `req` and wait for the ICResp; adopts the digests it grants and its CPDA.
    pub fn initialize(&mut self, req: IcReq) -> Result<IcResp> {
        let resp = self.conn.initialize(req)?;
        self.conn.digests = resp.digests;
        self.h2c_align = (resp.cpda as usize + 1) * 4;
        Ok(resp)
    }

    /// Digests used to frame received PDUs (and sent capsules).
    pub fn digests(&self) -> Digests {
        self.conn.digests
    }

    pub fn set_digests(&mut self, digests: Digests) {
        self.conn.digests = digests;
    }

    /// Write `bytes` as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.conn.send(bytes)
    }

    /// Send a well-formed CapsuleCmd (sqe exactly as given, optional in-capsule data).
    pub fn send_capsule(&mut self, sqe: &Sqe, data: Option<&[u8]>) -> Result<()> {
        let mut out = Vec::new();
        encode_capsule_cmd(&mut out, sqe, data, self.conn.digests, self.h2c_align);
        self.conn.send(&out)
    }

    /// The next event within `timeout`. Malformed PDUs are errors
    /// ([`HostError::MalformedPdu`], [`HostError::HeaderDigest`]).
    pub fn read_event(&mut self, timeout: Duration) -> Result<RawEvent> {
        self.conn.set_timeout(timeout)?;
        let r = self.conn.next_pdu(true, &|| "a PDU".to_string());
        match r {
            Ok(Some(p)) => {
                let owned = OwnedPdu {
                    ch: p.ch,
                    header: p.header,
                    data: p.data.to_vec(),
                    data_digest_ok: p.data_digest_ok,
                    bytes: Vec::new(),
                };
                let len = p.len;
                let bytes = self.conn.buffered()[..len].to_vec();
                self.conn.consume(len);
                Ok(RawEvent::Pdu(OwnedPdu { bytes, ..owned }))
            }
            Ok(None) => Ok(RawEvent::Timeout),
            Err(HostError::ConnectionClosed { .. }) => Ok(RawEvent::Closed),
            Err(HostError::Timeout { .. }) => Ok(RawEvent::Timeout),
            Err(e) => Err(e),
        }
    }

    /// The next PDU; closing and timeouts are errors.
    pub fn read_pdu(&mut self, timeout: Duration) -> Result<OwnedPdu> {
        match self.read_event(timeout)? {
            RawEvent::Pdu(p) => Ok(p),
            RawEvent::Closed => Err(HostError::ConnectionClosed {
                waiting_for: "a PDU".into(),
            }),
            RawEvent::Timeout => Err(HostError::Timeout {
                waiting_for: "a PDU".into(),
                after: timeout,
            }),
        }
    }

    /// Read until the target closes the connection, returning the PDUs it sent before (such as
    /// a C2HTermReq). [`HostError::Timeout`] if it is still open after `timeout`.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Vec<OwnedPdu>> {
        let deadline = Instant::now() + timeout;
        let mut pdus = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HostError::Timeout {
                    waiting_for: "the target to close the connection".into(),
                    after: timeout,
                });
            }
            match self.read_event(left)? {
                RawEvent::Pdu(p) => pdus.push(p),
                RawEvent::Closed => return Ok(pdus),
                RawEvent::Timeout => {}
            }
        }
    }

    /// Bytes received and not yet returned as a PDU.
    pub fn buffered(&self) -> &[u8] {
        self.conn.buffered()
    }

    pub fn stream(&self) -> &TcpStream {
        &self.conn.stream
    }

    /// Shut down one or both directions (e.g. `Shutdown::Write` to send FIN and keep reading).
    pub fn shutdown(&self, how: Shutdown) -> Result<()> {
        Ok(self.conn.stream.shutdown(how)?)
    }
}
