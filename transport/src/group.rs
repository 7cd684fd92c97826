//! The transport-neutral side of a transport: what the core needs to know of one ([`TransportInfo`],
//! [`DataDesc`]) and the [`PollGroup`] a reactor drives (design.md: "one poll group per transport").
//!
//! # The life of a command
//! ```text
//!  group.poll_recv()      ─▶ Event::Command { conn, slot, sqe, desc }
//!  core.admit(sqe, desc)  ─▶ Admission::Respond(resp)  ─▶ group.respond(conn, slot, resp)
//!                         ─▶ Admission::Execute        ─▶ core.execute(group.capsule_mut(..))
//!                         ─▶ Admission::Data(need)     ─▶ group.fetch_ready(conn, slot, need)
//!     data in place now   ─▶ true                      ─▶ core.execute(group.capsule_mut(..))
//!  group (data in place)  ─▶ Event::DataReady { conn, slot } ─▶ core.execute(group.capsule_mut(..))
//!  core.execute / bdev completion ─▶ Response ─▶ group.respond(conn, slot, resp)
//! ```
//! The transport parses only its own SGL descriptor types into a [`DataDesc`] (or refuses one it
//! does not know with [`DataDesc::Refused`]); every rule that is the same for all transports
//! (SGL length against MDTS, direction, in-capsule data against the queue's capsule size, the
//! namespace and LBA range) is the core's, checked at admission, so a bad write is answered before
//! any data moves (no R2T, no RDMA READ) and before any data buffer is taken.
//!
//! # Connections and slots
//! A group owns its connections; each has a [`ConnId`] (an index the group hands out, dense, so a
//! reactor can keep its per-connection state in a `Vec`) and per connection up to
//! [`TransportInfo::max_slots`] command slots (`u16`, below 0x8000: a reactor may use the
//! top bit for its own tags). A `ConnId` is not reused until the reactor has seen the connection
//! end: either it called [`PollGroup::close`], or it took [`Event::Closed`] from
//! [`PollGroup::next_event`].
//!
//! A slot belongs to the group from [`Event::Command`] until the reactor answers it with
//! [`PollGroup::fetch`] or [`PollGroup::respond`]; after `fetch` the group moves the data and
//! yields [`Event::DataReady`]; from then on the capsule ([`PollGroup::capsule_mut`]) is the
//! reactor's (it may take the buffer out for a block device and put it back) until
//! [`PollGroup::respond`], which sends data (controller-to-host) and the completion and frees the
//! slot once that is on the wire.
//!
//! A command admitted with `Admission::Execute` (no data) is executed at once, with no call to
//! the group: its capsule has no buffer (a block-device I/O for it, a Flush or Write Zeroes,
//! carries one of the reactor's own). The core keeps nothing between admission and execution,
//! so a command the transport itself ends after admission (TCP: its data digest failed, answered
//! with a Transient Transport Error) needs no word to the core. Held commands (AERs) stay with
//! the group, in the reactor's hands, until the core completes them (`Action::Complete`).
//!
//! In-capsule data must be kept when the capsule arrives (it is not in the transport's receive
//! buffer later): a group copies it then into a buffer, but only where the core can accept it
//! (direction, offset and length within the queue's capsule size, see `QueuePair::admit`); data
//! it could not accept is left uncopied, and such a command is refused at admission.
//!
//! # Polling
//! A reactor calls, each loop iteration: [`PollGroup::poll_recv`] once (it reads what its
//! connections have; TCP: one non-blocking recv per hot connection, RDMA: one CQ poll for the
//! whole group), then [`PollGroup::next_event`] until it returns `None`, then, after reaping its
//! block devices, [`PollGroup::poll_send`] once (TCP: one writev per connection with something
//! queued; RDMA: ring the doorbells of posted sends). Every few hundred iterations it calls
//! [`PollGroup::poll_timers`] with a clock it read once; the data path itself never reads a clock.
//!
//! Nothing on this path allocates: events are plain values, buffers come from the group's pools.
//! Reactors use static dispatch: the reactor is generic over `PollGroup` and is instantiated with
//! `AnyGroup`, an enum over the group kinds this build has (one `match` per call, no vtable).

use crate::proto::nvme::{Direction, Sqe};
use crate::proto::status::Status;
use crate::staging::P2pCounters;
use crate::{Capsule, Response};
use nvmfd_config::TransportKind;
use nvmfd_p2p::mem::IoBuf;
use std::net::SocketAddr;
use std::time::Instant;

/// What the core needs to know of the transport a queue pair arrived on: the limits it enforces
/// at admission and the values Identify Controller and the discovery log report. Each transport
/// builds its own from its section of the configuration (`transports.tcp`, `transports.rdma`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportInfo {
    pub kind: TransportKind,
    /// In-capsule data an I/O queue's command may carry (IOCCSZ = (64 + this) / 16).
    pub in_capsule_data_size: u32,
    /// In-capsule data an admin queue's command may carry (IOCCSZ is for I/O queues only; NVMe/TCP
    /// hosts send admin commands with up to 8 KiB in the capsule).
    pub admin_in_capsule_data_size: u32,
    /// Largest transfer of one command, bytes (MDTS, a power of two of at least 4 KiB).
    pub max_io_size: u32,
    /// Entries of the largest queue a host may connect (MQES + 1; also the admin queue's).
    pub max_queue_depth: u16,
    /// I/O queues a controller may have.
    pub max_io_queues: u16,
    /// Identify Controller SGLS.
    pub sgls: u32,
    /// Identify Controller IORCSZ (16-byte units).
    pub iorcsz: u32,
    /// Identify Controller ICDOFF (16-byte units).
    pub icdoff: u16,
    /// Identify Controller MSDBD: most SGL data block descriptors in one command.
    pub msdbd: u8,
    /// Discovery log TRTYPE.
    pub trtype: u8,
    /// Discovery log TSAS (transport-specific address subtype), first bytes; the rest are 0.
    pub tsas: [u8; 16],
}

impl TransportInfo {
    /// Identify Controller IOCCSZ (16-byte units: the 64-byte SQE plus in-capsule data).
    pub fn ioccsz(&self) -> u32 {
        (64 + self.in_capsule_data_size) / 16
    }

    /// Identify Controller MDTS (a power of two in units of the 4 KiB minimum page size).
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / 4096).trailing_zeros() as u8
    }

    /// Entries an admin submission queue may have (NVMe-oF 1.1, 5.3: "Admin Max SQ Size";
    /// what the discovery log reports as ASQSZ).
    pub fn max_admin_queue_entries(&self) -> u16 {
        self.max_queue_depth
    }

    /// Command slots one connection may use: twice its queue's entries at most (NVMe/RDMA keeps
    /// a slot until its response's SEND completion is polled, which can come after the host's
    /// next command; see rdma::group). Per-connection tables indexed by slot take this size.
    pub fn max_slots(&self) -> usize {
        2 * usize::from(self.max_queue_depth)
    }
}

/// A command's data as its SGL describes it, parsed by the transport from the descriptor types
/// it knows (NVMe/TCP: Data Block with the Offset subtype for in-capsule data, Transport Data
/// Block for R2T/H2CData; NVMe/RDMA: Data Block/Offset, Keyed Data Block). The core checks it
/// against the command and the queue ([`Admission`]); the transport never answers a command
/// for an SGL rule that is not about its own descriptor types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDesc {
    /// No data (an SGL of length 0, or a command that moves none).
    None,
    /// Data in the capsule: `len` bytes at `offset` into the capsule's data, of which `carried`
    /// bytes came with the command. The transport has already copied the data (if `carried` is
    /// within the queue's capsule size) so [`PollGroup::fetch`] needs no I/O.
    InCapsule { offset: u64, len: u32, carried: u32 },
    /// Data the transport moves on request: `len` bytes in `descriptors` descriptors (TCP: one
    /// Transport Data Block, moved by R2T/H2CData or C2HData; RDMA: keyed descriptors, moved by
    /// RDMA READ/WRITE).
    Remote { len: u32, descriptors: u16 },
    /// A descriptor this transport does not support (usually SGL Descriptor Type Invalid, or
    /// Invalid SGL Segment Descriptor): the core answers the command with this status.
    Refused(Status),
}

/// What the core needs for a command it admitted with data: `len` bytes moving `dir`, for the
/// namespace whose block device has index `bdev` (None for admin and fabrics commands; the
/// memory-domain key: the buffer must be one that block device can reach).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataNeed {
    pub len: u32,
    pub dir: Direction,
    pub bdev: Option<usize>,
}

/// The core's answer to a new command (`QueuePair::admit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Answer at once (an error, or a command with nothing to execute).
    Respond(Response),
    /// No data to move: execute now.
    Execute,
    /// Move the data ([`PollGroup::fetch`]: a buffer for it, and for host-to-controller commands
    /// its content), then execute.
    Data(DataNeed),
}

/// A connection of a group (see the module docs on reuse).
pub type ConnId = u16;

/// What a group tells its reactor.
#[derive(Debug)]
pub enum Event {
    /// A connection joined the group (from [`PollGroup::add`], or accepted by the group itself).
    Connected {
        conn: ConnId,
        peer: SocketAddr,
        /// The local address it arrived on, if known (the discovery log's wildcard listeners).
        local: Option<SocketAddr>,
    },
    /// A new command, to be admitted by the core and answered with [`PollGroup::fetch`] or
    /// [`PollGroup::respond`].
    Command {
        conn: ConnId,
        slot: u16,
        sqe: Sqe,
        desc: DataDesc,
    },
    /// The data [`PollGroup::fetch`] asked for is in the capsule's buffer: execute it.
    DataReady { conn: ConnId, slot: u16 },
    /// The connection ended (the peer left, a protocol error, a transport timer). The group has
    /// released it; the reactor tears its queue pair down. Block-device I/Os of its commands
    /// still in flight come back to the reactor, whose buffers go back through
    /// [`PollGroup::recycle`].
    Closed { conn: ConnId, why: String },
}

/// A transport's poll group: every connection of one transport on one reactor. See the module
/// docs for the protocol between a group and its reactor.
pub trait PollGroup {
    /// What the daemon's acceptor hands a reactor for this transport (TCP: an accepted stream;
    /// RDMA: a connect request). Moved across threads once per connection.
    type Incoming: Send + 'static;
    /// What a reactor needs to build its group (the transport's configuration section and the
    /// reactor's id); the group is built on the reactor's own thread ([`PollGroup::new`]), so
    /// its pools and queues are that thread's.
    type Config: Clone + Send + 'static;

    /// Build the group of reactor `reactor`.
    fn new(cfg: &Self::Config, reactor: usize) -> std::io::Result<Self>
    where
        Self: Sized;

    /// Whether `incoming` is for this group (an enum over several kinds of group says no to the
    /// other kinds' connections).
    fn accepts(&self, _incoming: &Self::Incoming) -> bool {
        true
    }

    /// The transport's limits and reported values (the same for every connection of the group).
    fn info(&self) -> &TransportInfo;

    /// Take a new connection: [`Event::Connected`] follows (or nothing, with a log line saying
    /// why it was dropped).
    fn add(&mut self, incoming: Self::Incoming);

    /// Receive: read what the connections have and turn it into events. Returns whether
    /// anything happened. `cold_turn` lets a group poll idle connections less often.
    fn poll_recv(&mut self, cold_turn: bool) -> bool;

    /// The next event, or None when there is none until the next poll.
    fn next_event(&mut self) -> Option<Event>;

    /// Get the data the core asked for for command `slot`: a buffer (the group may make the
    /// command wait, in arrival order, for one), then for host-to-controller data its content
    /// (TCP: in-capsule copy or R2T; RDMA: RDMA READ). [`Event::DataReady`] follows.
    fn fetch(&mut self, conn: ConnId, slot: u16, need: DataNeed);

    /// [`PollGroup::fetch`], saying whether the data is in place at once (TCP: in-capsule data,
    /// or a small buffer for controller-to-host data). `true`: it is, the capsule is the
    /// reactor's now and no [`Event::DataReady`] follows (the reactor executes the command at
    /// once, saving the event's round trip). `false`: as after `fetch` (`DataReady` follows, or
    /// the group answered the command itself). A group that cannot tell keeps this default.
    fn fetch_ready(&mut self, conn: ConnId, slot: u16, need: DataNeed) -> bool {
        self.fetch(conn, slot, need);
        false
    }

    /// The command's capsule: its SQE, data buffer and length (after [`Event::DataReady`], or
    /// after `Admission::Execute` for a command without data).
    fn capsule_mut(&mut self, conn: ConnId, slot: u16) -> &mut Capsule;

    /// Answer command `slot`: send `resp.data_len` bytes of its data (controller-to-host), then
    /// the completion; the slot is freed once that is sent.
    fn respond(&mut self, conn: ConnId, slot: u16, resp: Response);

    /// Connect made this connection queue `qid` with `entries` entries (SQSIZE + 1): the group
    /// holds the host to that many outstanding commands and to the queue's capsule size.
    fn set_queue(&mut self, conn: ConnId, qid: u16, entries: u16);

    /// End a connection now (the core asked, or the reactor is stopping): what is queued is sent
    /// if the transport can without blocking, and the id is free again. No `Closed` event follows.
    fn close(&mut self, conn: ConnId);

    /// Send what is queued. Returns whether anything was sent. A connection that fails here ends
    /// with [`Event::Closed`].
    fn poll_send(&mut self) -> bool;

    /// The reactor's timer tick, with a clock read once for the whole reactor: transport timers
    /// (TCP: R2T timeout) end connections with [`Event::Closed`].
    fn poll_timers(&mut self, now: Instant);

    /// Whether connection `conn` has responses not yet sent.
    fn conn_has_unsent(&self, conn: ConnId) -> bool;

    /// Whether any connection has something not yet sent (draining at shutdown).
    fn has_unsent(&self) -> bool;

    /// Whether read data for this connection may be lent by a block device (sent from the
    /// device's memory, never read here; TCP: not when data digests are on).
    fn takes_lent_data(&self, conn: ConnId) -> bool;

    /// A data buffer of a command whose connection is gone, back to the pool it came from.
    fn recycle(&mut self, buf: IoBuf);

    /// The group's data buffer pools now (reports and metrics; the control path).
    fn pool_stats(&self) -> PoolStats {
        PoolStats::default()
    }

    /// Connection `conn`'s P2P counters (`crate::staging`); zero for a group that stages
    /// nothing.
    fn p2p_conn(&self, _conn: ConnId) -> P2pCounters {
        P2pCounters::default()
    }

    /// Add this group's P2P counters per block device (by index) into `out` (grown as needed).
    fn p2p_bdevs(&self, _out: &mut Vec<P2pCounters>) {}
}

/// A group's data buffer pools: buffers lent out now and commands queued for one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub in_use: u64,
    pub waiters: u64,
}

/// Every kind of poll group this build has, as one type: what a reactor is instantiated with
/// (static dispatch: one `match` per call). A transport adds its variant here, to
/// [`AnyIncoming`] and to [`AnyGroupConfig`].
pub enum AnyGroup {
    Tcp(crate::tcp::TcpGroup),
    Rdma(Box<crate::rdma::RdmaGroup>),
}

/// A new connection for one of the kinds of [`AnyGroup`].
pub enum AnyIncoming {
    Tcp(crate::tcp::TcpIncoming),
    Rdma(crate::rdma::Incoming),
}

/// How to build one of the kinds of [`AnyGroup`].
#[derive(Debug, Clone)]
pub enum AnyGroupConfig {
    Tcp(crate::tcp::TcpGroupConfig),
    Rdma(crate::rdma::RdmaGroupConfig),
}

/// Forward a call to whichever group `self` is.
macro_rules! each {
    ($self:expr, $g:ident => $e:expr) => {
        match $self {
            AnyGroup::Tcp($g) => $e,
            AnyGroup::Rdma($g) => $e,
        }
    };
}

impl PollGroup for AnyGroup {
    type Incoming = AnyIncoming;
    type Config = AnyGroupConfig;

    fn new(cfg: &AnyGroupConfig, reactor: usize) -> std::io::Result<Self> {
        Ok(match cfg {
            AnyGroupConfig::Tcp(c) => AnyGroup::Tcp(crate::tcp::TcpGroup::new(c, reactor)?),
            AnyGroupConfig::Rdma(c) => {
                AnyGroup::Rdma(Box::new(crate::rdma::RdmaGroup::new(c, reactor)?))
            }
        })
    }

    fn accepts(&self, incoming: &AnyIncoming) -> bool {
        matches!(
            (self, incoming),
            (AnyGroup::Tcp(_), AnyIncoming::Tcp(_)) | (AnyGroup::Rdma(_), AnyIncoming::Rdma(_))
        )
    }

    fn info(&self) -> &TransportInfo {
        each!(self, g => g.info())
    }

    fn add(&mut self, incoming: AnyIncoming) {
        #[allow(unreachable_patterns)]
        match (self, incoming) {
            (AnyGroup::Tcp(g), AnyIncoming::Tcp(i)) => g.add(i),
            (AnyGroup::Rdma(g), AnyIncoming::Rdma(i)) => g.add(i),
            _ => tracing::warn!("a connection handed to a group of another transport; dropped"),
        }
    }

    #[inline]
    fn poll_recv(&mut self, cold_turn: bool) -> bool {
        each!(self, g => g.poll_recv(cold_turn))
    }

    #[inline]
    fn next_event(&mut self) -> Option<Event> {
        each!(self, g => g.next_event())
    }

    #[inline]
    fn fetch(&mut self, conn: ConnId, slot: u16, need: DataNeed) {
        each!(self, g => g.fetch(conn, slot, need))
    }

    #[inline]
    fn fetch_ready(&mut self, conn: ConnId, slot: u16, need: DataNeed) -> bool {
        each!(self, g => g.fetch_ready(conn, slot, need))
    }

    #[inline]
    fn capsule_mut(&mut self, conn: ConnId, slot: u16) -> &mut Capsule {
        each!(self, g => g.capsule_mut(conn, slot))
    }

    #[inline]
    fn respond(&mut self, conn: ConnId, slot: u16, resp: Response) {
        each!(self, g => g.respond(conn, slot, resp))
    }

    fn set_queue(&mut self, conn: ConnId, qid: u16, entries: u16) {
        each!(self, g => g.set_queue(conn, qid, entries))
    }

    fn close(&mut self, conn: ConnId) {
        each!(self, g => g.close(conn))
    }

    #[inline]
    fn poll_send(&mut self) -> bool {
        each!(self, g => g.poll_send())
    }

    fn poll_timers(&mut self, now: Instant) {
        each!(self, g => g.poll_timers(now))
    }

    #[inline]
    fn conn_has_unsent(&self, conn: ConnId) -> bool {
        each!(self, g => g.conn_has_unsent(conn))
    }

    fn has_unsent(&self) -> bool {
        each!(self, g => g.has_unsent())
    }

    #[inline]
    fn takes_lent_data(&self, conn: ConnId) -> bool {
        each!(self, g => g.takes_lent_data(conn))
    }

    #[inline]
    fn recycle(&mut self, buf: IoBuf) {
        each!(self, g => g.recycle(buf))
    }

    fn pool_stats(&self) -> PoolStats {
        each!(self, g => g.pool_stats())
    }

    fn p2p_conn(&self, conn: ConnId) -> P2pCounters {
        each!(self, g => g.p2p_conn(conn))
    }

    fn p2p_bdevs(&self, out: &mut Vec<P2pCounters>) {
        each!(self, g => g.p2p_bdevs(out))
    }
}
