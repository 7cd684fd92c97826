//! rdma_cm: an event channel polled without blocking ([`EventChannel`]) and connection
//! identifiers ([`CmId`]): listen, accept or reject with private data, connect, disconnect.

use super::cq::Cq;
use super::device::{Context, Devices};
use super::pd::Pd;
use super::qp::{Qp, QpCaps};
use super::srq::Srq;
use super::sys::{
    self, ibv_context, ibv_qp_cap, ibv_qp_init_attr, rdma_cm_event, rdma_cm_id, rdma_conn_param,
    rdma_event_channel, Lib,
};
use super::{last_os, Error, Result};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

/// Private data bytes an [`Event`] keeps (IB CM carries at most 196, in a REP).
pub const MAX_PRIVATE_DATA: usize = 256;

/// `enum rdma_cm_event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum EventKind {
    AddrResolved = 0,
    AddrError = 1,
    RouteResolved = 2,
    RouteError = 3,
    ConnectRequest = 4,
    ConnectResponse = 5,
    ConnectError = 6,
    Unreachable = 7,
    Rejected = 8,
    Established = 9,
    Disconnected = 10,
    DeviceRemoval = 11,
    MulticastJoin = 12,
    MulticastError = 13,
    AddrChange = 14,
    TimewaitExit = 15,
}

impl EventKind {
    fn from_raw(v: u32) -> Option<EventKind> {
        use EventKind::*;
        Some(match v {
            0 => AddrResolved,
            1 => AddrError,
            2 => RouteResolved,
            3 => RouteError,
            4 => ConnectRequest,
            5 => ConnectResponse,
            6 => ConnectError,
            7 => Unreachable,
            8 => Rejected,
            9 => Established,
            10 => Disconnected,
            11 => DeviceRemoval,
            12 => MulticastJoin,
            13 => MulticastError,
            14 => AddrChange,
            15 => TimewaitExit,
            _ => return None,
        })
    }

    /// Whether `param.conn` of the event is meaningful (it carries the peer's private data).
    fn has_conn_param(self) -> bool {
        matches!(
            self,
            EventKind::ConnectRequest
                | EventKind::ConnectResponse
                | EventKind::Established
                | EventKind::Rejected
        )
    }
}

/// Which cm_id an event is about (compare with [`CmId::handle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdHandle(usize);

struct Channel {
    raw: NonNull<rdma_event_channel>,
    lib: &'static Lib,
}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: raw came from rdma_create_event_channel; every CmId on it holds an
        // Arc<Channel>, so all are destroyed before this runs (as librdmacm requires).
        unsafe { (self.lib.rdma_destroy_event_channel)(self.raw.as_ptr()) }
    }
}

// SAFETY: the channel is a file descriptor plus library state that librdmacm locks.
unsafe impl Send for Channel {}
// SAFETY: see Send.
unsafe impl Sync for Channel {}

/// `rdma_create_event_channel`, its fd made non-blocking: [`poll`](EventChannel::poll) never
/// blocks, and the fd can join an epoll/io_uring poll set.
#[derive(Clone)]
pub struct EventChannel(Arc<Channel>);

impl EventChannel {
    pub fn new() -> Result<EventChannel> {
        let lib = sys::lib()?;
        // SAFETY: no preconditions.
        let raw = unsafe { (lib.rdma_create_event_channel)() };
        let raw = NonNull::new(raw).ok_or_else(|| last_os("rdma_create_event_channel"))?;
        let ch = EventChannel(Arc::new(Channel { raw, lib }));
        let fd = ch.fd();
        // SAFETY: fd is the channel's open descriptor; F_GETFL/F_SETFL touch only its flags.
        let rc = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 {
                fl
            } else {
                libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)
            }
        };
        if rc < 0 {
            return Err(last_os("fcntl(O_NONBLOCK) on the rdma_cm channel"));
        }
        Ok(ch)
    }

    /// The channel's descriptor (readable when an event is waiting).
    pub fn fd(&self) -> RawFd {
        // SAFETY: raw is a live channel; fd is fixed at creation.
        unsafe { (*self.0.raw.as_ptr()).fd }
    }

    /// The next event, if one is waiting. The event is copied out and acknowledged at once, so
    /// nothing borrowed from librdmacm outlives this call.
    pub fn poll(&self) -> Result<Option<Event>> {
        let lib = self.0.lib;
        let mut ev: *mut rdma_cm_event = std::ptr::null_mut();
        // SAFETY: raw is a live channel; ev is a valid out-pointer.
        let rc = unsafe { (lib.rdma_get_cm_event)(self.0.raw.as_ptr(), &mut ev) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::Os {
                op: "rdma_get_cm_event",
                source: e,
            });
        }
        // SAFETY: rdma_get_cm_event succeeded: ev is a live event until rdma_ack_cm_event.
        let e = unsafe { &*ev };
        let kind = EventKind::from_raw(e.event);
        let mut out = Event {
            kind,
            raw_kind: e.event,
            status: e.status,
            id: IdHandle(e.id as usize),
            listen_id: IdHandle(e.listen_id as usize),
            private: [0; MAX_PRIVATE_DATA],
            private_len: 0,
            responder_resources: 0,
            initiator_depth: 0,
            new_id: None,
        };
        if kind.is_some_and(EventKind::has_conn_param) && !e.conn.private_data.is_null() {
            let n = usize::from(e.conn.private_data_len).min(MAX_PRIVATE_DATA);
            // SAFETY: for these event kinds param.conn is the valid union member; its private
            // data is private_data_len bytes, live until the ack below.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    e.conn.private_data.cast::<u8>(),
                    out.private.as_mut_ptr(),
                    n,
                )
            };
            out.private_len = n;
        }
        if kind.is_some_and(EventKind::has_conn_param) {
            out.responder_resources = e.conn.responder_resources;
            out.initiator_depth = e.conn.initiator_depth;
        }
        if kind == Some(EventKind::ConnectRequest) {
            if let Some(id) = NonNull::new(e.id) {
                out.new_id = Some(CmId {
                    core: Arc::new(IdCore {
                        raw: id,
                        channel: self.clone(),
                    }),
                    qp: None,
                });
            }
        }
        // SAFETY: ev is the event just read, acknowledged once; nothing of it is used after.
        if unsafe { (lib.rdma_ack_cm_event)(ev) } != 0 {
            return Err(last_os("rdma_ack_cm_event"));
        }
        Ok(Some(out))
    }
}

/// One rdma_cm event, copied.
pub struct Event {
    /// `None` for an event type newer than this code.
    pub kind: Option<EventKind>,
    pub raw_kind: u32,
    /// 0, or a negative errno (or, for `Rejected`, the CM's reject reason).
    pub status: i32,
    pub id: IdHandle,
    pub listen_id: IdHandle,
    private: [u8; MAX_PRIVATE_DATA],
    private_len: usize,
    /// For a connect request, as the CM reports it from this side (it swaps the peer's two
    /// values): RDMA READs the peer may have outstanding against us (the peer's initiator
    /// depth, its ORD).
    pub responder_resources: u8,
    /// For a connect request, from this side: RDMA READs we may have outstanding against the
    /// peer (the peer's responder resources, its IRD).
    pub initiator_depth: u8,
    new_id: Option<CmId>,
}

impl Event {
    /// The peer's private data (connect request, accept, reject). IB pads it to the CM
    /// message's size: the protocol on top must carry its own lengths.
    pub fn private_data(&self) -> &[u8] {
        &self.private[..self.private_len]
    }

    /// For a connect request: the new connection's cm_id, to accept or reject (dropping it
    /// unanswered rejects the request).
    pub fn take_id(&mut self) -> Option<CmId> {
        self.new_id.take()
    }

    /// The librdmacm name of the event (`RDMA_CM_EVENT_ESTABLISHED`, ...).
    pub fn name(&self) -> String {
        let Ok(lib) = sys::lib() else {
            return format!("event {}", self.raw_kind);
        };
        // SAFETY: rdma_event_str accepts any value and returns a static string.
        let s = unsafe { (lib.rdma_event_str)(self.raw_kind) };
        if s.is_null() {
            return format!("event {}", self.raw_kind);
        }
        // SAFETY: a static NUL-terminated string of librdmacm.
        unsafe { std::ffi::CStr::from_ptr(s) }
            .to_string_lossy()
            .into_owned()
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("id", &self.id)
            .field("private_len", &self.private_len)
            .finish()
    }
}

/// Connection parameters for [`CmId::connect`] and [`CmId::accept`].
#[derive(Debug, Clone, Copy)]
pub struct ConnParam {
    /// RDMA READs the peer may have outstanding against us.
    pub responder_resources: u8,
    /// RDMA READs we may have outstanding against the peer.
    pub initiator_depth: u8,
    /// Transport retries (connect only; 7 = the most).
    pub retry_count: u8,
    /// RNR retries (7 = forever).
    pub rnr_retry_count: u8,
}

impl Default for ConnParam {
    fn default() -> Self {
        ConnParam {
            responder_resources: 16,
            initiator_depth: 16,
            retry_count: 7,
            rnr_retry_count: 7,
        }
    }
}

impl ConnParam {
    fn raw(&self, private: &[u8]) -> Result<rdma_conn_param> {
        let len = u8::try_from(private.len())
            .map_err(|_| Error::Invalid("private data longer than 255 bytes"))?;
        Ok(rdma_conn_param {
            private_data: if private.is_empty() {
                std::ptr::null()
            } else {
                private.as_ptr().cast()
            },
            private_data_len: len,
            responder_resources: self.responder_resources,
            initiator_depth: self.initiator_depth,
            flow_control: 0,
            retry_count: self.retry_count,
            rnr_retry_count: self.rnr_retry_count,
            srq: 0,
            qp_num: 0,
        })
    }
}

/// One cm_id, destroyed (`rdma_destroy_id`) when the last holder lets go: its [`CmId`], and
/// any [`Context`] taken from it with [`CmId::own_context`] (the id keeps its device open).
pub(crate) struct IdCore {
    raw: NonNull<rdma_cm_id>,
    /// The id's event channel: librdmacm destroys the id through it, so it outlives the id.
    channel: EventChannel,
}

// SAFETY: a cm_id is librdmacm state it locks itself. Only the CmId calls librdmacm on it
// (through &self/&mut self); the other holders (contexts taken from it) never touch it but to
// drop their Arc, and the last one destroys it, after the CmId is gone.
unsafe impl Send for IdCore {}
// SAFETY: see Send: nothing is done through a shared &IdCore but reading `raw` for a handle.
unsafe impl Sync for IdCore {}

impl IdCore {
    pub(crate) fn handle(&self) -> IdHandle {
        IdHandle(self.raw.as_ptr() as usize)
    }
}

impl Drop for IdCore {
    fn drop(&mut self) {
        // SAFETY: raw came from rdma_create_id or a connect request and is destroyed once, here;
        // its QP (if any) was destroyed by its CmId; every event on it was acknowledged in
        // EventChannel::poll, so this cannot wait forever.
        let rc = unsafe { (self.channel.0.lib.rdma_destroy_id)(self.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "rdma_destroy_id failed");
        }
    }
}

/// `rdma_create_id` / `rdma_destroy_id` (RDMA_PS_TCP: reliable connections), and the QP made on it.
pub struct CmId {
    core: Arc<IdCore>,
    qp: Option<Qp>,
}

// SAFETY: a cm_id is librdmacm state it locks itself; CmId mutates it only through &mut self
// (create_qp) or librdmacm calls.
unsafe impl Send for CmId {}

fn sockaddr(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in (smaller, same alignment).
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::from((
                sin.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

impl CmId {
    pub fn new(channel: &EventChannel) -> Result<CmId> {
        let lib = channel.0.lib;
        let mut id: *mut rdma_cm_id = std::ptr::null_mut();
        // SAFETY: the channel is live; id is a valid out-pointer; no context pointer.
        let rc = unsafe {
            (lib.rdma_create_id)(
                channel.0.raw.as_ptr(),
                &mut id,
                std::ptr::null_mut(),
                sys::RDMA_PS_TCP,
            )
        };
        if rc != 0 {
            return Err(last_os("rdma_create_id"));
        }
        Ok(CmId {
            core: Arc::new(IdCore {
                raw: NonNull::new(id).ok_or_else(|| last_os("rdma_create_id"))?,
                channel: channel.clone(),
            }),
            qp: None,
        })
    }

    fn lib(&self) -> &'static Lib {
        self.core.channel.0.lib
    }

    fn raw(&self) -> *mut rdma_cm_id {
        self.core.raw.as_ptr()
    }

    fn check(&self, op: &'static str, rc: i32) -> Result<()> {
        if rc != 0 {
            return Err(last_os(op));
        }
        Ok(())
    }

    pub fn handle(&self) -> IdHandle {
        self.core.handle()
    }

    /// Binds to a local address; with a specific address this also binds the device.
    pub fn bind(&self, addr: SocketAddr) -> Result<()> {
        let mut ss = sockaddr(addr);
        // SAFETY: raw is a live id; ss is a valid sockaddr of addr's family for the call.
        let rc = unsafe {
            (self.lib().rdma_bind_addr)(self.raw(), (&mut ss as *mut libc::sockaddr_storage).cast())
        };
        self.check("rdma_bind_addr", rc)
    }

    pub fn listen(&self, backlog: i32) -> Result<()> {
        // SAFETY: raw is a live, bound id.
        let rc = unsafe { (self.lib().rdma_listen)(self.raw(), backlog) };
        self.check("rdma_listen", rc)
    }

    /// Starts resolving `dst` (an `AddrResolved` or `AddrError` event follows).
    pub fn resolve_addr(
        &self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        timeout_ms: i32,
    ) -> Result<()> {
        let mut s = src.map(sockaddr);
        let mut d = sockaddr(dst);
        let sp = s.as_mut().map_or(std::ptr::null_mut(), |s| {
            (s as *mut libc::sockaddr_storage).cast()
        });
        // SAFETY: raw is live; sp is NULL or a valid sockaddr, d a valid sockaddr, for the call.
        let rc = unsafe {
            (self.lib().rdma_resolve_addr)(
                self.raw(),
                sp,
                (&mut d as *mut libc::sockaddr_storage).cast(),
                timeout_ms,
            )
        };
        self.check("rdma_resolve_addr", rc)
    }

    /// Starts resolving the route (a `RouteResolved` or `RouteError` event follows).
    pub fn resolve_route(&self, timeout_ms: i32) -> Result<()> {
        // SAFETY: raw is a live id with a resolved address.
        let rc = unsafe { (self.lib().rdma_resolve_route)(self.raw(), timeout_ms) };
        self.check("rdma_resolve_route", rc)
    }

    /// Whether the id is bound to a device (a listener on a wildcard address is not).
    pub fn has_device(&self) -> bool {
        // SAFETY: raw is a live id; verbs is set by librdmacm once the id has a device.
        !unsafe { (*self.raw()).verbs }.is_null()
    }

    /// The id's `verbs` context, if it has a device yet.
    fn verbs(&self) -> Result<NonNull<ibv_context>> {
        // SAFETY: raw is a live id; verbs is set by librdmacm once the id has a device.
        NonNull::new(unsafe { (*self.raw()).verbs })
            .ok_or(Error::Invalid("cm_id has no RDMA device yet"))
    }

    /// The device context this id is bound to (after bind to a device address, address
    /// resolution, or on a connect request's id), from `devices`: only when `devices` lists
    /// that very context (see [`own_context`](Self::own_context) for when it does not).
    pub fn context(&self, devices: &Arc<Devices>) -> Result<Context> {
        devices
            .find(self.verbs()?.as_ptr())
            .ok_or(Error::Invalid("cm_id's device is not in the device list"))
    }

    /// The device context this id is bound to, kept open by the id itself (the id is destroyed
    /// only once this context and every clone of it are gone, as well as the `CmId`). A QP on
    /// the id must be made on a PD of exactly this context (librdmacm's `rdma_create_qp`
    /// refuses another: `id->verbs != pd->context`), so this is the one to build on.
    ///
    /// Why not take it from a device list: the id's context is the one librdmacm's device
    /// entry had when the id got its device, and a later `rdma_get_devices` may list another
    /// context for the same device. librdmacm (rdma-core v30 to v51, cma.c `sync_devices_list`)
    /// refreshes its list by merging libibverbs' old and new device arrays, both sorted by
    /// pointer with a comparator that truncated the pointer difference to `int`
    /// (`dev_cmp`, fixed by rdma-core commit c4a5ac8, "librdmacm: Fix an overflow bug in qsort
    /// comparison function", v52). In a process with several threads the `ibv_device`s of
    /// devices found at different times can come from different malloc arenas, far apart, and
    /// then the sort can be wrong (whether it is depends on the addresses); the merge then
    /// takes a device that is still there for removed: its entry is marked dead (kept, with its context, while ids hold
    /// it) and a new entry opens the device again with a fresh context. A connect request
    /// whose id got the device before that refresh carries the old context, which no list
    /// shows any more; the context itself stays valid for the id's life.
    pub fn own_context(&self) -> Result<Context> {
        Ok(Context::held_by_id(
            self.verbs()?,
            Arc::clone(&self.core),
            self.lib(),
        ))
    }

    /// Whether `devices` lists this id's device, under its own context or another one
    /// ([`Context::same_device`]). False for an id with no device.
    pub fn device_listed(&self, devices: &Arc<Devices>) -> bool {
        self.own_context()
            .is_ok_and(|c| devices.same_device(&c).is_some())
    }

    /// Makes this id's RC QP on `pd` (which must be on this id's device), with an SRQ for
    /// receives if given. rdma_cm moves it through INIT/RTR/RTS as the connection proceeds.
    pub fn create_qp(
        &mut self,
        pd: &Arc<Pd>,
        send_cq: &Arc<Cq>,
        recv_cq: &Arc<Cq>,
        srq: Option<&Arc<Srq>>,
        caps: QpCaps,
    ) -> Result<&Qp> {
        if self.qp.is_some() {
            return Err(Error::Invalid("cm_id already has a QP"));
        }
        let mut attr = ibv_qp_init_attr {
            qp_context: std::ptr::null_mut(),
            send_cq: send_cq.as_ptr(),
            recv_cq: recv_cq.as_ptr(),
            srq: srq.map_or(std::ptr::null_mut(), |s| s.as_ptr()),
            cap: ibv_qp_cap {
                max_send_wr: caps.max_send_wr,
                max_recv_wr: if srq.is_some() { 0 } else { caps.max_recv_wr },
                max_send_sge: caps.max_send_sge,
                max_recv_sge: if srq.is_some() { 0 } else { caps.max_recv_sge },
                max_inline_data: caps.max_inline_data,
            },
            qp_type: sys::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: raw is live; pd, CQs and SRQ are live objects (their Arcs go into the Qp,
        // so they outlive it); attr is valid for the call.
        let rc = unsafe { (self.lib().rdma_create_qp)(self.raw(), pd.as_ptr(), &mut attr) };
        self.check("rdma_create_qp", rc)?;
        // SAFETY: rdma_create_qp succeeded, so id->qp is the new QP.
        let raw = NonNull::new(unsafe { (*self.raw()).qp })
            .ok_or(Error::Invalid("rdma_create_qp left no QP"))?;
        // SAFETY: raw was made on exactly these objects; CmId::drop destroys it before
        // dropping the Qp (and so its Arcs).
        let qp = unsafe {
            Qp::from_raw(
                raw,
                Arc::clone(pd),
                Arc::clone(send_cq),
                Arc::clone(recv_cq),
                srq.cloned(),
            )
        };
        match qp {
            Ok(qp) => Ok(self.qp.insert(qp)),
            Err(e) => {
                // SAFETY: the QP was just made on this id and is not used elsewhere.
                unsafe { (self.lib().rdma_destroy_qp)(self.raw()) };
                Err(e)
            }
        }
    }

    pub fn qp(&self) -> Option<&Qp> {
        self.qp.as_ref()
    }

    /// Moves this id (and its future events) to `channel`: a connection accepted on a listener's
    /// channel continues on the channel of the reactor that serves it.
    /// Only before a context is taken from the id (`own_context`): the channel is the id's, and
    /// moves with it.
    pub fn migrate(&mut self, channel: &EventChannel) -> Result<()> {
        let lib = self.lib();
        let core = Arc::get_mut(&mut self.core).ok_or(Error::Invalid(
            "cm_id migrated after a context was taken from it",
        ))?;
        // SAFETY: raw is a live id and channel a live event channel; the id's Arc moves to the
        // new channel below, so the channel outlives the id.
        let rc = unsafe { (lib.rdma_migrate_id)(core.raw.as_ptr(), channel.0.raw.as_ptr()) };
        if rc != 0 {
            return Err(last_os("rdma_migrate_id"));
        }
        core.channel = channel.clone();
        Ok(())
    }

    /// The local address (`rdma_get_local_addr`), once bound or connected.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: raw is a live id; librdmacm fills route.addr and keeps it while the id lives.
        from_sockaddr(unsafe { &(*self.raw()).src_addr })
    }

    /// The peer's address (`rdma_get_peer_addr`), for a connected or requesting id.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as local_addr.
        from_sockaddr(unsafe { &(*self.raw()).dst_addr })
    }

    /// Connects (after `RouteResolved`), sending `private` in the request.
    pub fn connect(&self, param: &ConnParam, private: &[u8]) -> Result<()> {
        let mut p = param.raw(private)?;
        // SAFETY: raw is live; p and the private data it points to are valid for the call
        // (librdmacm copies the private data).
        let rc = unsafe { (self.lib().rdma_connect)(self.raw(), &mut p) };
        self.check("rdma_connect", rc)
    }

    /// Accepts a connect request, sending `private` in the reply.
    pub fn accept(&self, param: &ConnParam, private: &[u8]) -> Result<()> {
        let mut p = param.raw(private)?;
        // SAFETY: as connect.
        let rc = unsafe { (self.lib().rdma_accept)(self.raw(), &mut p) };
        self.check("rdma_accept", rc)
    }

    /// Rejects a connect request, sending `private` in the reject (NVMe/RDMA's RDMA_CM_REJECT).
    pub fn reject(&self, private: &[u8]) -> Result<()> {
        let len = u8::try_from(private.len())
            .map_err(|_| Error::Invalid("private data longer than 255 bytes"))?;
        let ptr = if private.is_empty() {
            std::ptr::null()
        } else {
            private.as_ptr().cast()
        };
        // SAFETY: raw is live; ptr/len describe private (copied by librdmacm).
        let rc = unsafe { (self.lib().rdma_reject)(self.raw(), ptr, len) };
        self.check("rdma_reject", rc)
    }

    /// Starts a disconnect, or answers the peer's: the side that receives `Disconnected`
    /// first must call this too (it sends the DREP; until then the other side's `Disconnected`
    /// waits for the CM's DREQ timeout). The QP moves to the error state and its outstanding
    /// WRs complete as flushed.
    pub fn disconnect(&self) -> Result<()> {
        // SAFETY: raw is a live id.
        let rc = unsafe { (self.lib().rdma_disconnect)(self.raw()) };
        self.check("rdma_disconnect", rc)
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        if self.qp.is_some() {
            // SAFETY: the id's QP, destroyed once; the Qp (and its Arcs) drops after.
            unsafe { (self.lib().rdma_destroy_qp)(self.raw()) };
        }
        self.qp = None;
        // The id itself goes with the last holder of `core` (IdCore::drop): now, unless a
        // context taken from it is still in use.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_encodes_v4_and_v6() {
        let ss = sockaddr("10.0.2.15:4420".parse().unwrap());
        // SAFETY: sockaddr() wrote a sockaddr_in for a V4 address.
        let sin: &libc::sockaddr_in = unsafe { &*(&ss as *const libc::sockaddr_storage).cast() };
        assert_eq!(sin.sin_family as i32, libc::AF_INET);
        assert_eq!(u16::from_be(sin.sin_port), 4420);
        assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [10, 0, 2, 15]);
        let ss = sockaddr("[fe80::1%2]:4420".parse().unwrap());
        // SAFETY: sockaddr() wrote a sockaddr_in6 for a V6 address.
        let sin6: &libc::sockaddr_in6 = unsafe { &*(&ss as *const libc::sockaddr_storage).cast() };
        assert_eq!(sin6.sin6_family as i32, libc::AF_INET6);
        assert_eq!(sin6.sin6_scope_id, 2);
        assert_eq!(sin6.sin6_addr.s6_addr[0], 0xfe);
        for a in ["10.0.2.15:4420", "[fe80::1%2]:4420"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(from_sockaddr(&sockaddr(a)), Some(a));
        }
    }

    #[test]
    fn private_data_over_255_bytes_is_refused() {
        assert!(ConnParam::default().raw(&[0; 256]).is_err());
        let p = ConnParam::default().raw(&[1; 32]).unwrap();
        assert_eq!(p.private_data_len, 32);
    }
}
