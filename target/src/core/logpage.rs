//! Get Log Page: error information, SMART / health, firmware slot, changed namespace list and the
//! discovery log.

use super::controller::CtrlShared;
use super::identify::FIRMWARE_REVISION;
use super::{SubsysRef, Target};
use nvmfd_config::TransportKind;
use nvmfd_transport::proto::fabrics::{
    encode_discovery_header, subtype, trtype, DiscoveryLogEntry,
};
use nvmfd_transport::proto::nvme::log_page;
use nvmfd_transport::proto::put_str;
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::Capsule;

/// Copy the window [offset, offset+len) of the log page the command asks for into the capsule's
/// buffer; returns the number of bytes to send.
pub(super) fn get_log_page(
    target: &Target,
    ctrl: &CtrlShared,
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
        log_page::DISCOVERY if discovery => discovery_log(target, &ctrl.hostnqn),
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
        _ => return Err(Status::INVALID_LOG_PAGE),
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

/// The discovery log as `hostnqn` may see it: one entry per (subsystem it may use, listener).
pub fn discovery_log(target: &Target, hostnqn: &str) -> Vec<u8> {
    let mut entries = Vec::new();
    let all_listeners = target.listeners();
    for s in target.subsystems.iter().filter(|s| s.host_allowed(hostnqn)) {
        for l in &s.listeners {
            let portid = all_listeners.iter().position(|x| x == l).unwrap_or(0) as u16 + 1;
            let e = DiscoveryLogEntry {
                trtype: match l.transport {
                    TransportKind::Tcp => trtype::TCP,
                },
                adrfam: if l.address.is_ipv4() { 1 } else { 2 },
                subtype: subtype::NVME,
                // TREQ: secure channel not required (10b).
                treq: 0x02,
                portid,
                cntlid: 0xffff,
                asqsz: target.limits.max_queue_depth,
                trsvcid: l.port.to_string(),
                subnqn: s.nqn.clone(),
                traddr: l.address.to_string(),
                tsas: [0; 4],
            };
            entries.push(e.encode());
        }
    }
    let mut page = Vec::with_capacity(
        DiscoveryLogEntry::HEADER_SIZE + entries.len() * DiscoveryLogEntry::SIZE,
    );
    page.extend_from_slice(&encode_discovery_header(
        target.discovery_genctr,
        entries.len() as u64,
    ));
    for e in entries {
        page.extend_from_slice(&e);
    }
    page
}
