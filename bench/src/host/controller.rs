//! Connecting to a controller (admin queue), admin commands, and the parsed bits of Identify.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nvmfd_transport::proto::fabrics::{
    decode_discovery_header, subtype, DiscoveryLogEntry, PropertyCommand, DISCOVERY_NQN,
};
use nvmfd_transport::proto::get_str;
use nvmfd_transport::proto::le;
use nvmfd_transport::proto::nvme::{cns, log_page, opcode, property, Cqe, Sqe};
use nvmfd_transport::proto::tcp::{Digests, IcResp};

use super::error::{HostError, Result};
use super::frame::{in_capsule_size_from_identify, ADMIN_IN_CAPSULE_SIZE};
use super::io::IoQueue;
use super::queue::{Completion, ConnectParams, Queue};
use super::raw::RawConnection;

/// How the host introduces itself and what it asks for.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The subsystem to connect to.
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Admin queue entries; the Connect SQSIZE is `queue_depth - 1`. Default 32.
    pub queue_depth: u16,
    /// Keep-alive timeout sent in the admin Connect, in milliseconds (0 disables). Default 30 s.
    pub kato_ms: u32,
    /// Ask for header digests in ICReq.
    pub header_digest: bool,
    /// Ask for data digests in ICReq.
    pub data_digest: bool,
    /// TCP connect timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a blocking receive waits for the target. Default 10 s.
    pub io_timeout: Duration,
    /// How long to wait for CSTS.RDY after enabling, and for CSTS.SHST after shutdown. Default 5 s.
    pub ready_timeout: Duration,
}

impl HostOptions {
    /// Defaults with `subnqn` as the subsystem.
    pub fn new(subnqn: impl Into<String>) -> Self {
        HostOptions {
            subnqn: subnqn.into(),
            ..Default::default()
        }
    }
}

impl Default for HostOptions {
    /// The discovery subsystem, a random host ID and a UUID-based host NQN derived from it.
    fn default() -> Self {
        let hostid = random_hostid();
        HostOptions {
            subnqn: DISCOVERY_NQN.to_string(),
            hostnqn: format!("nqn.2014-08.org.nvmexpress:uuid:{}", format_uuid(&hostid)),
            hostid,
            queue_depth: 32,
            kato_ms: 30_000,
            header_digest: false,
            data_digest: false,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(5),
        }
    }
}

fn random_hostid() -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    // A version 4, variant 1 UUID.
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Format 16 bytes as a UUID string.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Entry points of the host library.
pub struct Host;

impl Host {
    /// Connect the admin queue of `opts.subnqn` and enable the controller: TCP connect
    /// (TCP_NODELAY), ICReq/ICResp, fabrics Connect on queue 0 (cntlid 0xFFFF), Property Get CAP
    /// and VS, Property Set CC (EN=1, IOSQES=6, IOCQES=4) and wait for CSTS.RDY.
    pub fn connect_admin(addr: SocketAddr, opts: &HostOptions) -> Result<Controller> {
        let (q, cqe) = Queue::connect(
            addr,
            ConnectParams {
                opts,
                qid: 0,
                depth: opts.queue_depth,
                cntlid: 0xffff,
                kato_ms: opts.kato_ms,
                in_capsule_size: ADMIN_IN_CAPSULE_SIZE,
            },
        )?;
        let mut c = Controller {
            q,
            addr,
            opts: opts.clone(),
            cntlid: cqe.dw0 as u16,
            cap: 0,
            vs: 0,
            cc: 0,
            io_in_capsule: None,
        };
        c.cap = c.property_get(property::CAP, 8)?;
        c.vs = c.property_get(property::VS, 4)? as u32;
        c.enable()?;
        Ok(c)
    }

    /// Connect to the discovery subsystem at `addr` and read its log page: the entries a host
    /// connects to (NVM subsystems and referrals), without the entry of the discovery subsystem
    /// that answered (SUBTYPE 3; `nvme connect-all` skips it too). The whole log is
    /// [`Controller::discovery_log`].
    pub fn discover(addr: SocketAddr, opts: &HostOptions) -> Result<Vec<DiscoveryLogEntry>> {
        let mut o = opts.clone();
        o.subnqn = DISCOVERY_NQN.to_string();
        let mut c = Host::connect_admin(addr, &o)?;
        let log = c.discovery_log()?;
        let _ = c.disconnect();
        Ok(log
            .into_iter()
            .filter(|e| e.subtype != subtype::CURRENT_DISCOVERY)
            .collect())
    }

    /// Connect an I/O queue with explicit parameters (any `cntlid`, the host identity in
    /// `opts`), for tests that need to get them wrong. Writes go with R2T until
    /// [`IoQueue::set_in_capsule_size`] says otherwise. Usually use [`Controller::connect_io`].
    pub fn connect_io(
        addr: SocketAddr,
        opts: &HostOptions,
        cntlid: u16,
        qid: u16,
        depth: u16,
    ) -> Result<IoQueue> {
        let (q, _) = Queue::connect(
            addr,
            ConnectParams {
                opts,
                qid,
                depth,
                cntlid,
                kato_ms: 0,
                in_capsule_size: 0,
            },
        )?;
        Ok(IoQueue::new(q))
    }
}

/// An enabled controller, reached through its admin queue.
pub struct Controller {
    q: Queue,
    addr: SocketAddr,
    opts: HostOptions,
    cntlid: u16,
    cap: u64,
    vs: u32,
    cc: u32,
    io_in_capsule: Option<usize>,
}

/// CC.SHN = normal shutdown.
const CC_SHN_NORMAL: u32 = 1 << 14;

fn check(command: &'static str, cqe: &Cqe) -> Result<()> {
    if cqe.status.is_success() {
        Ok(())
    } else {
        Err(HostError::CommandFailed {
            command,
            status: cqe.status,
            dw0: cqe.dw0,
        })
    }
}

impl Controller {
    /// The controller ID from the Connect completion (dw0 bits 15:0).
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// The CAP property read during connect.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The VS property read during connect.
    pub fn vs(&self) -> u32 {
        self.vs
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn options(&self) -> &HostOptions {
        &self.opts
    }

    /// The admin connection's ICResp.
    pub fn icresp(&self) -> IcResp {
        self.q.icresp
    }

    /// Digests in force on the admin connection.
    pub fn digests(&self) -> Digests {
        self.q.conn.digests
    }

    fn enable(&mut self) -> Result<()> {
        let mpsmin = ((self.cap >> 48) & 0xf) as u32;
        self.cc = 1 | (mpsmin << 7) | (6 << 16) | (4 << 20);
        self.property_set(property::CC, 4, self.cc as u64)?;
        self.wait_csts(
            "enabling the controller",
            "CSTS.RDY=1 after CC.EN=1",
            |csts| csts & 1 == 1,
        )
    }

    fn wait_csts(
        &mut self,
        doing: &'static str,
        waiting_for: &str,
        done: impl Fn(u32) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(200);
        loop {
            let csts = self.property_get(property::CSTS, 4)? as u32;
            if csts & 2 != 0 {
                return Err(HostError::ControllerFatal { csts, doing });
            }
            if done(csts) {
                return Ok(());
            }
            if start.elapsed() > self.opts.ready_timeout {
                return Err(HostError::Timeout {
                    waiting_for: format!("{waiting_for} (CSTS {csts:#x})"),
                    after: self.opts.ready_timeout,
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }

    /// Send any admin command and wait for it. A zero `sqe.dptr` is filled in (SGL, in-capsule
    /// up to 8 KiB or transport data block); the CID is chosen by the host. The status is not
    /// checked; data is what the controller sent (at most `data_in_len` bytes).
    pub fn admin_command(
        &mut self,
        sqe: Sqe,
        data_out: Option<&[u8]>,
        data_in_len: usize,
    ) -> Result<(Cqe, Vec<u8>)> {
        self.q.execute(sqe, data_out, data_in_len)?.into_result()
    }

    /// Send an admin command without waiting (e.g. an Asynchronous Event Request); returns its CID.
    pub fn submit(&mut self, sqe: Sqe, data_out: Option<&[u8]>, data_in_len: usize) -> Result<u16> {
        self.q.submit(sqe, data_out, data_in_len)
    }

    /// Wait for the admin command `cid`.
    pub fn wait_for(&mut self, cid: u16) -> Result<Completion> {
        self.q.wait_for(cid)
    }

    /// Completions of submitted admin commands: waits for at least `min` (0 = don't wait).
    pub fn poll_completions(&mut self, min: usize) -> Result<Vec<Completion>> {
        self.q.poll(min)
    }

    /// Identify with any CNS; fails unless it succeeds with 4096 bytes.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<[u8; 4096]> {
        let sqe = Sqe {
            opcode: opcode::ADMIN_IDENTIFY,
            nsid,
            cdw10: cns as u32,
            ..Default::default()
        };
        let (cqe, data) = self.admin_command(sqe, None, 4096)?;
        check("Identify", &cqe)?;
        data.try_into().map_err(|d: Vec<u8>| {
            HostError::Protocol(format!(
                "Identify CNS {cns:#x} returned {} of 4096 bytes",
                d.len()
            ))
        })
    }

    pub fn identify_controller(&mut self) -> Result<[u8; 4096]> {
        self.identify(cns::CONTROLLER, 0)
    }

    pub fn identify_namespace(&mut self, nsid: u32) -> Result<[u8; 4096]> {
        self.identify(cns::NAMESPACE, nsid)
    }

    pub fn controller_info(&mut self) -> Result<ControllerInfo> {
        Ok(ControllerInfo::parse(&self.identify_controller()?))
    }

    pub fn namespace_info(&mut self, nsid: u32) -> Result<NamespaceInfo> {
        Ok(NamespaceInfo::parse(&self.identify_namespace(nsid)?))
    }

    /// All active namespace IDs (Identify CNS 02h, following the list past 1024 entries).
    pub fn active_namespaces(&mut self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut start = 0u32;
        loop {
            let page = self.identify(cns::ACTIVE_NAMESPACES, start)?;
            let ids: Vec<u32> = page
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .take_while(|&id| id != 0)
                .collect();
            let full = ids.len() == 1024;
            if let Some(&last) = ids.last() {
                if last <= start && start != 0 {
                    return Err(HostError::Protocol(format!(
                        "active namespace list after {start} does not increase"
                    )));
                }
                start = last;
            }
            out.extend(ids);
            if !full || start >= 0xffff_fffe {
                return Ok(out);
            }
        }
    }

    /// Get Log Page: `len` bytes (a non-zero multiple of 4) of log `lid` from byte `offset`.
    pub fn get_log_page(&mut self, lid: u8, nsid: u32, len: usize, offset: u64) -> Result<Vec<u8>> {
        if len == 0 || !len.is_multiple_of(4) || len as u64 > (1u64 << 32) * 4 {
            return Err(HostError::InvalidArgument(format!(
                "log page length {len} is not a non-zero multiple of 4"
            )));
        }
        let numd = (len / 4 - 1) as u32;
        let sqe = Sqe {
            opcode: opcode::ADMIN_GET_LOG_PAGE,
            nsid,
            cdw10: lid as u32 | ((numd & 0xffff) << 16),
            cdw11: numd >> 16,
            cdw12: offset as u32,
            cdw13: (offset >> 32) as u32,
            ..Default::default()
        };
        let (cqe, data) = self.admin_command(sqe, None, len)?;
        check("Get Log Page", &cqe)?;
        if data.len() != len {
            return Err(HostError::Protocol(format!(
                "Get Log Page {lid:#x} returned {} of {len} bytes",
                data.len()
            )));
        }
        Ok(data)
    }

    /// The discovery log page (on a discovery controller): header first, then all records,
    /// retried while the generation counter changes underneath.
    pub fn discovery_log(&mut self) -> Result<Vec<DiscoveryLogEntry>> {
        const HDR: usize = DiscoveryLogEntry::HEADER_SIZE;
        for _ in 0..8 {
            let hdr = self.get_log_page(log_page::DISCOVERY, 0, HDR, 0)?;
            let (genctr, numrec) = decode_discovery_header(&hdr).expect("header is 1024 bytes");
            if numrec == 0 {
                return Ok(Vec::new());
            }
            if numrec > 4096 {
                return Err(HostError::Protocol(format!(
                    "discovery log claims {numrec} records"
                )));
            }
            let len = HDR + numrec as usize * DiscoveryLogEntry::SIZE;
            let page = self.get_log_page(log_page::DISCOVERY, 0, len, 0)?;
            let (genctr2, numrec2) = decode_discovery_header(&page).expect("page has a header");
            if genctr2 != genctr || numrec2 != numrec {
                continue;
            }
            return Ok(page[HDR..]
                .chunks_exact(DiscoveryLogEntry::SIZE)
                .map(|e| DiscoveryLogEntry::decode(e.try_into().expect("1024 bytes")))
                .collect());
        }
        Err(HostError::Protocol(
            "discovery log generation counter keeps changing".into(),
        ))
    }

    /// Set Features `fid` (not saved) with `cdw11`; returns completion dw0.
    pub fn set_features(&mut self, fid: u8, cdw11: u32) -> Result<u32> {
        let sqe = Sqe {
            opcode: opcode::ADMIN_SET_FEATURES,
            cdw10: fid as u32,
            cdw11,
            ..Default::default()
        };
        let (cqe, _) = self.admin_command(sqe, None, 0)?;
        check("Set Features", &cqe)?;
        Ok(cqe.dw0)
    }

    /// Get Features `fid` (current value) with `cdw11`; returns completion dw0.
    pub fn get_features(&mut self, fid: u8, cdw11: u32) -> Result<u32> {
        let sqe = Sqe {
            opcode: opcode::ADMIN_GET_FEATURES,
            cdw10: fid as u32,
            cdw11,
            ..Default::default()
        };
        let (cqe, _) = self.admin_command(sqe, None, 0)?;
        check("Get Features", &cqe)?;
        Ok(cqe.dw0)
    }

    pub fn keep_alive(&mut self) -> Result<()> {
        let sqe = Sqe {
            opcode: opcode::ADMIN_KEEP_ALIVE,
            ..Default::default()
        };
        let (cqe, _) = self.admin_command(sqe, None, 0)?;
        check("Keep Alive", &cqe)
    }

    /// Property Get of `size` (4 or 8) bytes at `offset`.
    pub fn property_get(&mut self, offset: u32, size: u8) -> Result<u64> {
        let sqe = PropertyCommand {
            size,
            offset,
            value: 0,
        }
        .to_sqe(0, false);
        let (cqe, _) = self.admin_command(sqe, None, 0)?;
        check("Property Get", &cqe)?;
        Ok(if size == 8 {
            cqe.dw0 as u64 | ((cqe.dw1 as u64) << 32)
        } else {
            cqe.dw0 as u64
        })
    }

    /// Property Set of `size` (4 or 8) bytes at `offset`.
    pub fn property_set(&mut self, offset: u32, size: u8, value: u64) -> Result<()> {
        let sqe = PropertyCommand {
            size,
            offset,
            value,
        }
        .to_sqe(0, true);
        let (cqe, _) = self.admin_command(sqe, None, 0)?;
        check("Property Set", &cqe)
    }

    /// The in-capsule data size of I/O queues (from Identify Controller IOCCSZ, asked once).
    pub fn io_in_capsule_size(&mut self) -> Result<usize> {
        if let Some(n) = self.io_in_capsule {
            return Ok(n);
        }
        let n = in_capsule_size_from_identify(&self.identify_controller()?);
        self.io_in_capsule = Some(n);
        Ok(n)
    }

    /// Connect I/O queue `qid` with `depth` entries (SQSIZE `depth - 1`) to this controller on a
    /// new TCP connection, with the same digests and host identity.
    pub fn connect_io(&mut self, qid: u16, depth: u16) -> Result<IoQueue> {
        let in_capsule_size = self.io_in_capsule_size()?;
        let (q, _) = Queue::connect(
            self.addr,
            ConnectParams {
                opts: &self.opts,
                qid,
                depth,
                cntlid: self.cntlid,
                kato_ms: 0,
                in_capsule_size,
            },
        )?;
        Ok(IoQueue::new(q))
    }

    /// Normal shutdown (CC.SHN = 01b, wait for CSTS.SHST = 10b), then close the connection.
    pub fn disconnect(mut self) -> Result<()> {
        let r = self
            .property_set(property::CC, 4, (self.cc | CC_SHN_NORMAL) as u64)
            .and_then(|_| {
                self.wait_csts("shutting down", "CSTS.SHST=10b after CC.SHN=01b", |csts| {
                    (csts >> 2) & 3 == 2
                })
            });
        self.q.conn.shutdown();
        r
    }

    /// Give up the typed API and keep the bare connection (with its negotiated digests).
    pub fn into_raw(self) -> RawConnection {
        RawConnection::from_conn(self.q.conn, self.q.h2c_align)
    }
}

/// Fields of an Identify Controller page the host and tests care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    pub vid: u16,
    pub ssvid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum data transfer size, as a power of two of CAP.MPSMIN pages (0 = no limit).
    pub mdts: u8,
    pub cntlid: u16,
    pub version: u32,
    /// Controller type (1 I/O, 2 discovery, 3 administrative).
    pub cntrltype: u8,
    /// Keep alive support granularity in 100 ms units (0 = unsupported).
    pub kas: u16,
    pub maxcmd: u16,
    /// Number of namespaces.
    pub nn: u32,
    pub sgls: u32,
    pub subnqn: String,
    /// I/O queue command capsule size in 16-byte units.
    pub ioccsz: u32,
    /// I/O queue response capsule size in 16-byte units.
    pub iorcsz: u32,
    pub icdoff: u16,
    pub fcatt: u8,
    pub msdbd: u8,
}

impl ControllerInfo {
    pub fn parse(b: &[u8; 4096]) -> Self {
        ControllerInfo {
            vid: le::u16(b, 0),
            ssvid: le::u16(b, 2),
            serial: get_str(&b[4..24]),
            model: get_str(&b[24..64]),
            firmware: get_str(&b[64..72]),
            mdts: b[77],
            cntlid: le::u16(b, 78),
            version: le::u32(b, 80),
            cntrltype: b[111],
            kas: le::u16(b, 320),
            maxcmd: le::u16(b, 514),
            nn: le::u32(b, 516),
            sgls: le::u32(b, 536),
            subnqn: get_str(&b[768..1024]),
            ioccsz: le::u32(b, 1792),
            iorcsz: le::u32(b, 1796),
            icdoff: le::u16(b, 1800),
            fcatt: b[1802],
            msdbd: b[1803],
        }
    }

    /// In-capsule data bytes an I/O command may carry (IOCCSZ * 16 - 64).
    pub fn in_capsule_size(&self) -> usize {
        (self.ioccsz as usize * 16).saturating_sub(64)
    }
}

/// Fields of an Identify Namespace page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Size in logical blocks.
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    /// Number of LBA formats, 0-based.
    pub nlbaf: u8,
    pub flbas: u8,
    /// Bytes per logical block of the format in use (0 for an inactive namespace).
    pub block_size: u32,
    /// Metadata bytes per block of the format in use.
    pub metadata_size: u16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

impl NamespaceInfo {
    pub fn parse(b: &[u8; 4096]) -> Self {
        let flbas = b[26];
        let idx = (flbas & 0xf) as usize | ((((flbas >> 5) & 3) as usize) << 4);
        let lbaf = 128 + 4 * idx;
        let lbads = b[lbaf + 2];
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&b[104..120]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&b[120..128]);
        NamespaceInfo {
            nsze: le::u64(b, 0),
            ncap: le::u64(b, 8),
            nuse: le::u64(b, 16),
            nlbaf: b[25],
            flbas,
            block_size: if (9..32).contains(&lbads) {
                1 << lbads
            } else {
                0
            },
            metadata_size: le::u16(b, lbaf),
            nguid,
            eui64,
        }
    }
}
