//! Who this target is: the identifiers of its namespaces and the install identity behind its
//! default serial numbers, resolved once at start-up.
//!
//! Identifiers must be unique: a Linux host's native multipath merges every namespace that
//! reports the same NGUID/UUID (under one subsystem NQN) into one, and would spread writes over
//! two different disks if two nodes reported equal ones for different data. So each is, in order:
//! 1. the value the YAML gives (`uuid`, `nguid`, `eui64`), used as is: giving two nodes the same
//!    value for the same data is how an administrator builds a real multipath pair; for the UUID,
//!    the namespace's own `uuid`, else its bdev's (`bdevs[].uuid`, SPDK's `bdev_*_create uuid`:
//!    in SPDK a namespace's UUID defaults to its bdev's);
//! 2. for a namespace on a persistent bdev (`uring`: a file or a block device; `nvme`: an SSD,
//!    keyed `nvme://PCI/NSID`), the value stored
//!    in `<state_dir>/namespaces` by an earlier start, if it was made for the same backing path;
//! 3. otherwise 128 fresh random bits from the kernel (`/dev/urandom`), stored for persistent
//!    bdevs. `malloc` and `null` namespaces get new identifiers on every start: their data does
//!    not survive a restart, so a host must not take them for the namespace it saw before.
//!
//! No EUI-64 is generated: an EUI-64 begins with its owner's IEEE OUI (NVMe Base 2.0, "IEEE
//! Extended Unique Identifier"), which nvmfd does not have. A namespace without one reports zero
//! there, which the specification reads as "not reported".
//!
//! The install identity (`<state_dir>/install-id`, a random UUID made on first start) plays the
//! part of a host ID for the target: default serial numbers are derived from it and from the
//! subsystem's NQN, so two machines running the embedded default report different serials, and
//! one subsystem keeps its serial whatever its place in the file (reordering the file, or
//! adding and removing other subsystems, changes no serial: hosts and udev rules key devices on
//! it, and Linux multipath checks that paths to one subsystem agree on it).
//!
//! Every default serial given out is recorded per NQN in `<state_dir>/serials` and used from
//! there on later starts, so no later change of the derivation can change a serial a host has
//! seen. An nvmfd before this file existed derived default serials from the subsystem's place
//! in the file instead ([`positional_serial`]: `NV`, 14 hex digits of the install identity,
//! the 1-based place in 4 digits). When the install identity is there already but the serials
//! file is not, the state directory was written by such an nvmfd: each subsystem with a default
//! serial then keeps the serial that nvmfd gave it (its place in the file as now given) and it
//! is recorded; from then on only new NQNs get derived serials. A fresh state directory gives
//! derived serials only. (The state directory cannot tell that older nvmfd from a development
//! build between commit eed418c and this one, which already derived serials from the NQN but did
//! not record them: such an install gets the positional serials back; see the README's upgrade
//! notes.)
//!
//! Files are written to a temporary name, synced and renamed, so a crash leaves the old or the
//! new content, never half of one.

use crate::core::{Identities, NamespaceIds};
use anyhow::{bail, Context};
use nvmfd_config::{uuid_text, BdevKind, Config};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use tracing::{info, warn};

/// File (under `state_dir`) holding the install identity.
pub const INSTALL_ID_FILE: &str = "install-id";
/// File (under `state_dir`) holding the generated identifiers of persistent namespaces.
pub const NAMESPACES_FILE: &str = "namespaces";
/// File (under `state_dir`) holding the default serial given to each subsystem NQN.
pub const SERIALS_FILE: &str = "serials";

/// Fill `buf` with random bytes from the kernel's CSPRNG. Called at start-up only.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// A random (version 4, RFC 9562 variant) UUID.
fn random_uuid() -> anyhow::Result<[u8; 16]> {
    let mut u = [0u8; 16];
    fill_random(&mut u).context("cannot read /dev/urandom")?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}

/// A random NGUID. The specification describes an NGUID as an IEEE OUI plus extensions; with no
/// OUI of its own, nvmfd makes all 128 bits random (as a host only compares them), never zero.
fn random_nguid() -> anyhow::Result<[u8; 16]> {
    loop {
        let mut n = [0u8; 16];
        fill_random(&mut n).context("cannot read /dev/urandom")?;
        if n != [0; 16] {
            return Ok(n);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let g: Vec<&str> = s.split('-').collect();
    if g.iter().map(|x| x.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    unhex::<16>(&g.concat())
}

/// Percent-encode everything but printable ASCII other than `%` (keeps one record per line and
/// fields split by spaces, whatever a path contains).
fn escape(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    out
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A stored record: the backing path it was made for and the identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    path: Vec<u8>,
    uuid: [u8; 16],
    nguid: [u8; 16],
}

/// `<nqn> <nsid> <path> uuid=<uuid> nguid=<hex>`, one namespace per line; `#` comments.
type Records = BTreeMap<(String, u32), Stored>;

fn parse_records(text: &str, file: &Path) -> anyhow::Result<Records> {
    let mut out = Records::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || anyhow::anyhow!("{}:{}: not a namespace record", file.display(), n + 1);
        let f: Vec<&str> = line.split(' ').collect();
        let [nqn, nsid, path, uuid, nguid] = f[..] else {
            return Err(bad());
        };
        let nqn = String::from_utf8(unescape(nqn).ok_or_else(bad)?).map_err(|_| bad())?;
        let nsid: u32 = nsid.parse().map_err(|_| bad())?;
        let path = unescape(path).ok_or_else(bad)?;
        let uuid = uuid
            .strip_prefix("uuid=")
            .and_then(parse_uuid)
            .ok_or_else(bad)?;
        let nguid = nguid
            .strip_prefix("nguid=")
            .and_then(unhex::<16>)
            .ok_or_else(bad)?;
        out.insert((nqn, nsid), Stored { path, uuid, nguid });
    }
    Ok(out)
}

fn format_records(r: &Records) -> String {
    let mut s = String::from(
        "# nvmfd: generated identifiers of namespaces on persistent bdevs.\n\
         # Hosts recognise a namespace by them. Keep this file with the data; never copy it to\n\
         # another machine. Fields: subsystem NQN, NSID, backing path, UUID, NGUID.\n",
    );
    for ((nqn, nsid), st) in r {
        let _ = writeln!(
            s,
            "{} {nsid} {} uuid={} nguid={}",
            escape(nqn.as_bytes()),
            escape(&st.path),
            uuid_text(&st.uuid),
            hex(&st.nguid)
        );
    }
    s
}

/// A synced temporary file next to `path` holding `data` (its name is unique to this call).
fn write_temp(path: &Path, data: &[u8]) -> std::io::Result<std::path::PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp)?;
    if let Err(e) = f.write_all(data).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Write `data` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = write_temp(path, data)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path)
}

/// Create `path` with `data` unless it exists (atomically: a hard link fails on an existing
/// name, so two starts racing agree on one content). False if it already existed.
fn create_atomic(path: &Path, data: &[u8]) -> std::io::Result<bool> {
    let tmp = write_temp(path, data)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_dir(path).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Create the state directory if needed; the error names it and says how to choose another.
fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the state directory {} (set `state_dir` in the configuration to a \
             writable directory)",
            dir.display()
        )
    })
}

/// The install identity: read from `<dir>/install-id`, or made and stored on first start.
fn install_id(dir: &Path) -> anyhow::Result<[u8; 16]> {
    ensure_dir(dir)?;
    let path = dir.join(INSTALL_ID_FILE);
    if !path.exists() {
        let id = random_uuid()?;
        let created = create_atomic(&path, format!("{}\n", uuid_text(&id)).as_bytes())
            .with_context(|| format!("cannot write the install identity {}", path.display()))?;
        if created {
            info!(path = %path.display(), id = %uuid_text(&id), "new install identity");
            return Ok(id);
        }
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the install identity {}", path.display()))?;
    parse_uuid(text.trim()).with_context(|| {
        format!(
            "{}: not a UUID; remove the file to make a new install identity",
            path.display()
        )
    })
}

/// 128-bit FNV-1a (a fixed, documented hash: the serial must be the same on every build).
fn fnv1a128(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for p in parts {
        for &b in *p {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// The default serial of subsystem `nqn`, derived from the install identity and the NQN (never
/// from the subsystem's position in the file): `NV` and 18 hex digits of a hash of both, 20
/// bytes (Identify Controller SN).
pub fn derived_serial(install: &[u8; 16], nqn: &str) -> String {
    // The NUL keeps (identity, NQN) pairs apart whatever bytes the NQN holds.
    let h = fnv1a128(&[install, b"\0", nqn.as_bytes()]);
    format!("NV{}", &format!("{h:032x}")[..18])
}

/// The default serial an nvmfd before the serials file gave the subsystem at `index` (0-based,
/// its place among all subsystems of the file): `NV`, the first 14 hex digits of the install
/// identity and the 1-based place in 4 digits, 20 bytes. Only for subsystems that were there
/// when such an nvmfd last ran (see the module docs).
pub fn positional_serial(install: &[u8; 16], index: usize) -> String {
    format!("NV{}{:04}", &hex(install)[..14], (index + 1) % 10000)
}

/// NQN → default serial given to it.
type Serials = BTreeMap<String, String>;

/// A serial as Identify Controller's SN field takes it: 1 to 20 bytes of printable ASCII (NVMe
/// Base 2.0, Figure 276: SN is 20 bytes of ASCII, padded with spaces, so no other byte fits).
fn serial_ok(s: &[u8]) -> bool {
    !s.is_empty() && s.len() <= 20 && s.iter().all(|b| (0x20..=0x7e).contains(b))
}

fn parse_serials(text: &str, file: &Path) -> anyhow::Result<Serials> {
    let mut out = Serials::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| {
            anyhow::anyhow!(
                "{}:{}: {what} (each line is: NQN SERIAL; mend or restore the line: without \
                 this file nvmfd takes the state directory for an older nvmfd's and gives each \
                 subsystem without `serial` its positional serial, which may differ)",
                file.display(),
                n + 1
            )
        };
        let f: Vec<&str> = line.split(' ').collect();
        let [nqn, serial] = f[..] else {
            return Err(bad("not a serial record"));
        };
        let nqn = unescape(nqn)
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("not a serial record"))?;
        let serial = unescape(serial)
            .filter(|b| serial_ok(b))
            .ok_or_else(|| bad("not a serial of 1 to 20 printable ASCII bytes"))?;
        // serial_ok admits ASCII only, so this is valid UTF-8.
        let serial = String::from_utf8(serial).map_err(|_| bad("not a serial record"))?;
        if out.insert(nqn, serial).is_some() {
            return Err(bad("a second serial for the same NQN"));
        }
    }
    Ok(out)
}

fn format_serials(r: &Serials) -> String {
    let mut s = String::from(
        "# nvmfd: the default serial number given to each subsystem NQN (hosts, udev rules and\n\
         # multipath key devices on it). Kept with the install identity; never copy it to\n\
         # another machine. Fields: subsystem NQN, serial.\n",
    );
    for (nqn, serial) in r {
        let _ = writeln!(
            s,
            "{} {}",
            escape(nqn.as_bytes()),
            escape(serial.as_bytes())
        );
    }
    s
}

/// Resolve every identity the config leaves open (see the module docs), reading and writing
/// `cfg.state_dir` as needed. Errors name the file or directory that failed.
pub fn resolve(cfg: &Config) -> anyhow::Result<Identities> {
    let dir = cfg.state_dir.as_path();
    let persistent = |bdev: &str| {
        cfg.bdev(bdev).and_then(|b| match &b.kind {
            BdevKind::Uring { path, .. } => Some(path.clone()),
            // An SSD's data survives a restart as a file's does; its record is keyed by the
            // PCI address and namespace (a key, never opened as a path).
            BdevKind::Nvme { pci, namespace, .. } => Some(std::path::PathBuf::from(format!(
                "nvme://{pci}/{namespace}"
            ))),
            _ => None,
        })
    };
    // The UUID the configuration gives a namespace: its own, else its bdev's.
    let given_uuid = |n: &nvmfd_config::NamespaceConfig| {
        n.uuid.or_else(|| cfg.bdev(&n.bdev).and_then(|b| b.uuid))
    };
    let needs_install_id = cfg.subsystems.iter().any(|s| s.serial_is_default);
    let needs_records = cfg.subsystems.iter().any(|s| {
        s.namespaces.iter().any(|n| {
            persistent(&n.bdev).is_some() && (given_uuid(n).is_none() || n.nguid.is_none())
        })
    });
    let serials_path = dir.join(SERIALS_FILE);
    let write_serials = |s: &Serials| {
        write_atomic(&serials_path, format_serials(s).as_bytes())
            .with_context(|| format!("cannot write default serials to {}", serials_path.display()))
    };
    let install = if needs_install_id {
        ensure_dir(dir)?;
        // A fresh state directory gets its (empty) serials file before its install identity,
        // so an install identity without a serials file is always one an nvmfd that kept no
        // serials made, whatever failed or crashed in between.
        if !dir.join(INSTALL_ID_FILE).exists() && !serials_path.exists() {
            write_serials(&Serials::new())?;
        }
        Some(install_id(dir)?)
    } else {
        None
    };
    // The serials given before, and whether this state directory was written by an nvmfd that
    // kept none (the install identity is there, the serials file is not: see the module docs).
    let mut serials = Serials::new();
    let mut positional = false;
    if install.is_some() {
        match std::fs::read_to_string(&serials_path) {
            Ok(text) => serials = parse_serials(&text, &serials_path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => positional = true,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", serials_path.display()))
            }
        }
    }
    let serials_before = serials.clone();
    let records_path = dir.join(NAMESPACES_FILE);
    let mut records = Records::new();
    if needs_records {
        ensure_dir(dir)?;
        match std::fs::read_to_string(&records_path) {
            Ok(text) => records = parse_records(&text, &records_path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", records_path.display()))
            }
        }
    }
    let before = records.clone();

    let mut out = Identities {
        subsystems: Vec::with_capacity(cfg.subsystems.len()),
    };
    for (index, s) in cfg.subsystems.iter().enumerate() {
        let serial = match (&install, s.serial_is_default) {
            (Some(id), true) => match serials.get(&s.nqn) {
                Some(kept) => kept.clone(),
                None => {
                    let serial = if positional {
                        let serial = positional_serial(id, index);
                        info!(nqn = %s.nqn, serial, file = %serials_path.display(),
                            "default serial kept as the earlier nvmfd gave it (by the subsystem's place in the file), recorded per NQN from now on");
                        serial
                    } else {
                        derived_serial(id, &s.nqn)
                    };
                    serials.insert(s.nqn.clone(), serial.clone());
                    serial
                }
            },
            _ => s.serial.clone(),
        };
        let mut namespaces = Vec::with_capacity(s.namespaces.len());
        for n in &s.namespaces {
            let given = given_uuid(n);
            let ids = match persistent(&n.bdev) {
                None => NamespaceIds {
                    uuid: given.map_or_else(random_uuid, Ok)?,
                    nguid: n.nguid.map_or_else(random_nguid, Ok)?,
                    eui64: n.eui64.unwrap_or_default(),
                },
                Some(path) => {
                    let path = path.as_os_str().as_encoded_bytes().to_vec();
                    let key = (s.nqn.clone(), n.nsid);
                    let stored = match records.get(&key) {
                        Some(st) if st.path == path => Some(st.clone()),
                        Some(st) => {
                            warn!(nqn = %s.nqn, nsid = n.nsid,
                                old_path = %String::from_utf8_lossy(&st.path),
                                new_path = %String::from_utf8_lossy(&path),
                                "namespace now backed by a different path: new identifiers");
                            None
                        }
                        None => None,
                    };
                    let uuid = match (given, &stored) {
                        (Some(u), _) => u,
                        (None, Some(st)) => st.uuid,
                        (None, None) => random_uuid()?,
                    };
                    let nguid = match (n.nguid, &stored) {
                        (Some(g), _) => g,
                        (None, Some(st)) => st.nguid,
                        (None, None) => random_nguid()?,
                    };
                    if given.is_none() || n.nguid.is_none() {
                        records.insert(key, Stored { path, uuid, nguid });
                    }
                    NamespaceIds {
                        uuid,
                        nguid,
                        eui64: n.eui64.unwrap_or_default(),
                    }
                }
            };
            info!(nqn = %s.nqn, nsid = n.nsid, uuid = %uuid_text(&ids.uuid),
                nguid = %hex(&ids.nguid), "namespace identifiers");
            namespaces.push(ids);
        }
        out.subsystems
            .push(crate::core::SubsysIdentity { serial, namespaces });
    }
    if records != before {
        write_atomic(&records_path, format_records(&records).as_bytes()).with_context(|| {
            format!(
                "cannot write namespace identifiers to {}",
                records_path.display()
            )
        })?;
    }
    if serials != serials_before {
        write_serials(&serials)?;
    }
    check_unique(&out)?;
    Ok(out)
}

/// Generated and stored identifiers may not collide with each other or with configured ones (a
/// stored value the YAML now also gives to another namespace, say).
fn check_unique(ids: &Identities) -> anyhow::Result<()> {
    let mut uuids = std::collections::HashSet::new();
    let mut nguids = std::collections::HashSet::new();
    for n in ids.subsystems.iter().flat_map(|s| &s.namespaces) {
        if !uuids.insert(n.uuid) {
            bail!(
                "two namespaces would report UUID {}; give each its own `uuid`",
                uuid_text(&n.uuid)
            );
        }
        if !nguids.insert(n.nguid) {
            bail!(
                "two namespaces would report NGUID {}; give each its own `nguid`",
                hex(&n.nguid)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_any_path() {
        let mut r = Records::new();
        r.insert(
            ("nqn.2026-11.io.nvmfd:a".into(), 7),
            Stored {
                path: b"/srv/my disk%1.img\n".to_vec(),
                uuid: [0x11; 16],
                nguid: [0xab; 16],
            },
        );
        let text = format_records(&r);
        assert!(text.contains("/srv/my%20disk%251.img%0a"), "{text}");
        assert_eq!(parse_records(&text, Path::new("f")).unwrap(), r);
        let e = parse_records("nqn.a 1 /x uuid=zz nguid=00\n", Path::new("/s/ns")).unwrap_err();
        assert_eq!(e.to_string(), "/s/ns:1: not a namespace record");
    }

    #[test]
    fn random_ids_are_version_4_and_distinct() {
        let a = random_uuid().unwrap();
        let b = random_uuid().unwrap();
        assert_ne!(a, b);
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(a[8] >> 6, 2);
        assert_eq!(parse_uuid(&uuid_text(&a)), Some(a));
        assert_ne!(random_nguid().unwrap(), random_nguid().unwrap());
        let s = derived_serial(&a, "nqn.2026-11.io.nvmfd:a");
        assert_eq!(s.len(), 20);
        assert_ne!(s, derived_serial(&b, "nqn.2026-11.io.nvmfd:a"));
    }

    /// A state directory of its own under the system's temporary directory, removed on drop.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            static N: AtomicU32 = AtomicU32::new(0);
            let d = std::env::temp_dir().join(format!(
                "nvmfd-identity-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&d);
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const A: &str = "nqn.2026-12.io.nvmfd:serial-a";
    const B: &str = "nqn.2026-12.io.nvmfd:serial-b";
    const C: &str = "nqn.2026-12.io.nvmfd:serial-c";

    /// A configuration with one subsystem per NQN, in this order; `serial` gives the last one
    /// an explicit serial.
    fn config(state: &Path, nqns: &[&str], serial: Option<&str>) -> Config {
        let mut y = format!("state_dir: {}\nbdevs:\n", state.display());
        for i in 0..nqns.len() {
            y += &format!("  - {{ name: r{i}, malloc: {{ size: 1MiB }} }}\n");
        }
        y += "subsystems:\n";
        for (i, nqn) in nqns.iter().enumerate() {
            y += &format!(
                "  - nqn: {nqn}\n    namespaces: [ {{ nsid: 1, bdev: r{i} }} ]\n    listeners: [ {{ transport: tcp, address: 127.0.0.1, port: 4420 }} ]\n"
            );
            if let (Some(sn), true) = (serial, i + 1 == nqns.len()) {
                y += &format!("    serial: {sn}\n");
            }
        }
        nvmfd_config::parse_str(&y, "serials.yaml").expect("test configuration")
    }

    /// The serial each NQN of `nqns` gets from `resolve` (in that order).
    fn serials_of(state: &Path, nqns: &[&str], serial: Option<&str>) -> BTreeMap<String, String> {
        let ids = resolve(&config(state, nqns, serial)).expect("resolve");
        nqns.iter()
            .map(|n| n.to_string())
            .zip(ids.subsystems.into_iter().map(|s| s.serial))
            .collect()
    }

    fn stored(state: &Path) -> Serials {
        let path = state.join(SERIALS_FILE);
        parse_serials(
            &std::fs::read_to_string(&path).expect("serials file"),
            &path,
        )
        .unwrap()
    }

    fn no_temp_files(state: &Path) {
        for e in std::fs::read_dir(state).unwrap() {
            let name = e.unwrap().file_name();
            assert!(
                !name.to_string_lossy().contains(".tmp."),
                "left over: {name:?}"
            );
        }
    }

    fn read_install_id(state: &Path) -> [u8; 16] {
        let t = std::fs::read_to_string(state.join(INSTALL_ID_FILE)).unwrap();
        parse_uuid(t.trim()).unwrap()
    }

    /// A fresh state directory: every default serial is derived from the install identity and
    /// the NQN, recorded per NQN, and kept when the file is reordered or grows; a configured
    /// serial is used as written and not recorded.
    #[test]
    fn fresh_install_derives_and_records_serials() {
        let st = Dir::new("fresh");
        let first = serials_of(&st.0, &[A, B], None);
        let id = read_install_id(&st.0);
        assert_eq!(first[A], derived_serial(&id, A));
        assert_eq!(first[B], derived_serial(&id, B));
        assert_ne!(first[A], first[B]);
        assert_eq!(stored(&st.0), first);
        no_temp_files(&st.0);
        let again = serials_of(&st.0, &[C, B, A], None);
        assert_eq!((&again[A], &again[B]), (&first[A], &first[B]));
        assert_eq!(again[C], derived_serial(&id, C));
        let rec = stored(&st.0);
        assert_eq!(rec.len(), 3, "{rec:?}");
        // The last subsystem (C) with a serial of its own: used as written, not recorded.
        let again = serials_of(&st.0, &[B, A, C], Some("SN-GIVEN-1"));
        assert_eq!(again[C], "SN-GIVEN-1");
        assert_eq!((&again[A], &again[B]), (&first[A], &first[B]));
        assert_eq!(stored(&st.0), rec, "a configured serial is not recorded");
    }

    /// A state directory an earlier nvmfd wrote (an install identity, no serials file): each
    /// subsystem keeps the serial that nvmfd gave it by its place in the file, recorded per NQN,
    /// so reordering the file afterwards changes none; an NQN added later gets a derived one.
    #[test]
    fn upgrade_keeps_the_earlier_positional_serials() {
        let st = Dir::new("upgrade");
        std::fs::create_dir_all(&st.0).unwrap();
        let id = [0x5a; 16];
        std::fs::write(st.0.join(INSTALL_ID_FILE), format!("{}\n", uuid_text(&id))).unwrap();
        let first = serials_of(&st.0, &[A, B], None);
        // What the earlier nvmfd reported (its derived_serial(install, index)).
        assert_eq!(first[A], "NV5a5a5a5a5a5a5a0001");
        assert_eq!(first[B], "NV5a5a5a5a5a5a5a0002");
        assert_eq!(positional_serial(&id, 1), first[B]);
        assert_eq!(stored(&st.0), first);
        no_temp_files(&st.0);
        let again = serials_of(&st.0, &[C, B, A], None);
        assert_eq!((&again[A], &again[B]), (&first[A], &first[B]));
        assert_eq!(again[C], derived_serial(&id, C), "a new NQN: derived");
        for s in again.values() {
            assert!(serial_ok(s.as_bytes()) && s.len() == 20, "{s}");
        }
    }

    /// A serials file that cannot be read as one stops the start with the file and line named,
    /// and is left as it was.
    #[test]
    fn corrupt_serials_file_is_a_clear_error() {
        for (text, why) in [
            ("nqn.2026-12.io.nvmfd:serial-a\n", "not a serial record"),
            (
                "# ok\nnqn.2026-12.io.nvmfd:serial-a NV123456789012345678901\n",
                "not a serial of 1 to 20 printable ASCII bytes",
            ),
            ("nqn.x AB\nnqn.x CD\n", "a second serial for the same NQN"),
            ("nqn.x A%1\n", "not a serial of 1 to 20"),
        ] {
            let st = Dir::new("corrupt");
            std::fs::create_dir_all(&st.0).unwrap();
            std::fs::write(
                st.0.join(INSTALL_ID_FILE),
                format!("{}\n", uuid_text(&[1; 16])),
            )
            .unwrap();
            let path = st.0.join(SERIALS_FILE);
            std::fs::write(&path, text).unwrap();
            let e = resolve(&config(&st.0, &[A], None)).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(why), "{msg}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }

    /// A serial with bytes the file format escapes comes back the same.
    #[test]
    fn serials_round_trip() {
        let mut r = Serials::new();
        r.insert("nqn.2026-12.io.nvmfd:a b%".into(), "SN 1%2".into());
        let text = format_serials(&r);
        assert_eq!(parse_serials(&text, Path::new("f")).unwrap(), r);
    }

    /// A default serial depends on the install identity and the NQN only: the same for the
    /// same pair (the subsystem's place in the file is no input), different for another.
    #[test]
    fn derived_serials_are_stable_per_nqn() {
        let id = [0x5a; 16];
        let s = derived_serial(&id, "nqn.2026-11.io.nvmfd:a");
        assert_eq!(s.len(), 20);
        assert!(
            s.starts_with("NV") && s[2..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{s}"
        );
        // Fixed values: the derivation must not change between builds or releases (the FNV
        // value is the published 128-bit FNV-1a test vector of "a").
        assert_eq!(s, "NVecc8f3ae6810560299");
        assert_eq!(fnv1a128(&[b"a"]), 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
        assert_ne!(s, derived_serial(&id, "nqn.2026-11.io.nvmfd:b"));
        let mut other = id;
        other[15] ^= 1;
        assert_ne!(s, derived_serial(&other, "nqn.2026-11.io.nvmfd:a"));
    }
}
