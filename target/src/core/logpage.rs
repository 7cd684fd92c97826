//! Get Log Page: error information, SMART / health, firmware slot, changed namespace list and the
//! discovery log.

use super::controller::CtrlShared;
use super::identify::FIRMWARE_REVISION;
use super::{Listener, SubsysRef, Target};
use nvmfd_config::TransportKind;
use nvmfd_transport::proto::fabrics::{
    encode_discovery_header, subtype, treq, DiscoveryLogEntry, DISCOVERY_NQN,
};
use nvmfd_transport::proto::nvme::log_page;
use nvmfd_transport::proto::put_str;
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::Capsule;
use std::net::{IpAddr, SocketAddr};

/// Copy the window [offset, offset+len) of the log page the command asks for into the capsule's
/// buffer; returns the number of bytes to send. `local` is the address the admin connection
/// arrived on.
pub(super) fn get_log_page(
    target: &Target,
    ctrl: &CtrlShared,
    arrived: TransportKind,
    local: Option<SocketAddr>,
    cap: &mut Capsule,
) -> Result<u32, Status> {
    let sqe = cap.sqe;
    let lid = sqe.cdw10 as u8;
    let numd = ((sqe.cdw10 >> 16) | ((sqe.cdw11 & 0xffff) << 16)) as u64 + 1;
    let len = numd * 4;
    let offset = (sqe.cdw12 as u64) | ((sqe.cdw13 as u64) << 32);
    if len > cap.data_len as u64 {
        return Err(Status::DATA_SGL_LENGTH_INVALID);
    }
    if !offset.is_multiple_of(4) {
        return Err(Status::INVALID_FIELD);
    }
    let discovery = ctrl.subsys == SubsysRef::Discovery;
    let page: Vec<u8> = match lid {
        log_page::DISCOVERY if discovery => discovery_log(target, &ctrl.hostnqn, arrived, local),
        log_page::ERROR_INFORMATION => vec![0; 64],
        log_page::SMART_HEALTH if !discovery => smart(),
        log_page::FIRMWARE_SLOT if !discovery => {
            let mut p = vec![0u8; 512];
            p[0] = 1; // AFI: slot 1 active
            put_str(&mut p[8..16], FIRMWARE_REVISION, b' ');
            p
        }
        // No namespace changes happen at run time yet: an empty list.
        log_page::CHANGED_NAMESPACES if !discovery => vec![0; 4096],
        // An unsupported log page is Invalid Field in Command (NVMe base 1.4 5.14 / 2.0 5.16:
        // "...specifies a Log Identifier that is not supported, then the controller should abort
        // the command with status Invalid Field in Command").
        _ => return Err(Status::INVALID_FIELD),
    };
    if offset > page.len() as u64 {
        return Err(Status::INVALID_FIELD);
    }
    let Some(buf) = cap.buf.as_mut() else {
        return Err(Status::INTERNAL_ERROR);
    };
    let out = &mut buf.as_mut_slice()[..len as usize];
    let avail = &page[offset as usize..];
    let n = avail.len().min(out.len());
    out[..n].copy_from_slice(&avail[..n]);
    out[n..].fill(0);
    Ok(len as u32)
}

/// SMART / health information: healthy, 25 °C, full spare; counters are not tracked yet.
fn smart() -> Vec<u8> {
    let mut p = vec![0u8; 512];
    p[1..3].copy_from_slice(&298u16.to_le_bytes()); // composite temperature, kelvin
    p[3] = 100; // available spare
    p[4] = 10; // available spare threshold
    p
}

/// TREQ of a listener: no secure channel (TLS) is offered yet, so none is required (10b); SQ flow
/// control cannot be disabled (bit 2 clear: Connect's CATTR bit 2 is not honoured).
fn treq(_l: &Listener) -> u8 {
    treq::SECURE_CHANNEL_NOT_REQUIRED
}

/// The address to advertise for listener `l` to a host whose discovery connection arrived on
/// `local`: the listener's own, or for a wildcard listener (0.0.0.0, ::) the address the host
/// reached us on (as Linux nvmet does: `nvmet_set_disc_traddr`). None when a wildcard listener
/// cannot be reached at that address (an IPv4 wildcard and a host that came over IPv6, or no
/// local address known): a literal wildcard is no address a host can connect to.
fn advertised_address(l: &Listener, local: Option<SocketAddr>) -> Option<IpAddr> {
    if !l.address.is_unspecified() {
        return Some(l.address);
    }
    let here = canonical(local?.ip());
    match (l.address, here) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some(here),
        (IpAddr::V4(_), IpAddr::V6(_)) => None,
        // `::` accepts IPv4 too (dual stack, the Linux default).
        (IpAddr::V6(_), _) => Some(here),
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of an IPv4 peer) as plain IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

fn adrfam(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        1
    } else {
        2
    }
}

/// The discovery log as `hostnqn` may see it over a connection that arrived on `local`: first
/// the entry of this discovery subsystem itself at the listener the host used (SUBTYPE 3,
/// "current discovery subsystem", TP 8013/8014 in NVMe base 2.0: nvme-cli 2.x uses it for
/// persistent discovery controllers), then one entry per (subsystem the host may use, listener).
/// `arrived` is the transport the discovery connection came over: the listener it used is one of
/// that transport. Each entry reports its own listener's transport (TRTYPE, TSAS, ASQSZ).
pub fn discovery_log(
    target: &Target,
    hostnqn: &str,
    arrived: TransportKind,
    local: Option<SocketAddr>,
) -> Vec<u8> {
    let mut entries = Vec::new();
    let all_listeners = target.listeners();
    let portid = |l: &Listener| all_listeners.iter().position(|x| x == l).unwrap_or(0) as u16 + 1;
    let entry = |l: &Listener, addr: IpAddr, sub: u8, nqn: &str| {
        // A listener of a transport this target has not configured has no entry.
        let t = target.transport(l.transport)?;
        Some(DiscoveryLogEntry {
            trtype: t.trtype,
            adrfam: adrfam(addr),
            subtype: sub,
            treq: treq(l),
            portid: portid(l),
            cntlid: 0xffff,
            asqsz: t.max_admin_queue_entries(),
            eflags: 0,
            trsvcid: l.port.to_string(),
            subnqn: nqn.to_string(),
            traddr: addr.to_string(),
            tsas: t.tsas,
        })
    };
    if let Some(here) = local {
        let ip = canonical(here.ip());
        let came_by = all_listeners.iter().find(|l| {
            l.transport == arrived
                && l.port == here.port()
                && (canonical(l.address) == ip
                    || l.address.is_unspecified() && advertised_address(l, local).is_some())
        });
        if let Some(e) =
            came_by.and_then(|l| entry(l, ip, subtype::CURRENT_DISCOVERY, DISCOVERY_NQN))
        {
            entries.push(e.encode());
        }
    }
    for s in target.subsystems.iter().filter(|s| s.host_allowed(hostnqn)) {
        for l in &s.listeners {
            if let Some(e) =
                advertised_address(l, local).and_then(|a| entry(l, a, subtype::NVME, &s.nqn))
            {
                entries.push(e.encode());
            }
        }
    }
    let mut page = Vec::with_capacity(
        DiscoveryLogEntry::HEADER_SIZE + entries.len() * DiscoveryLogEntry::SIZE,
    );
    page.extend_from_slice(&encode_discovery_header(
        target.discovery_genctr(),
        entries.len() as u64,
    ));
    for e in entries {
        page.extend_from_slice(&e);
    }
    page
}
