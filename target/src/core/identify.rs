//! Identify data structures: controller, namespace, active namespace list, namespace
//! identification descriptors, and the NVM command set controller structure.

use super::admin::{AERL, KAS};
use super::controller::CtrlShared;
use super::fabrics::{subsys_nqn, NVME_VERSION};
use super::{SubsysRef, Target};
use nvmfd_transport::proto::nvme::{cns, Sqe};
use nvmfd_transport::proto::status::Status;
use nvmfd_transport::proto::{le, put_str};
use nvmfd_transport::TransportInfo;

pub const SIZE: usize = 4096;

/// Optional Asynchronous Events Supported (Identify Controller bytes 95:92).
pub const OAES: u32 = 0;

/// Firmware revision reported in Identify and the firmware slot log.
pub const FIRMWARE_REVISION: &str = env!("CARGO_PKG_VERSION");

/// Fill `out` (4096 bytes, zeroed) for the Identify command `sqe`.
pub fn identify(
    target: &Target,
    t: &TransportInfo,
    ctrl: &CtrlShared,
    sqe: &Sqe,
    out: &mut [u8],
) -> Result<(), Status> {
    let cns = sqe.cdw10 as u8;
    let subsys = match ctrl.subsys {
        SubsysRef::Nvm(i) => Some(&target.subsystems[i]),
        SubsysRef::Discovery => None,
    };
    match (cns, subsys) {
        (cns::CONTROLLER, _) => {
            controller(target, t, ctrl, out);
            Ok(())
        }
        (cns::NAMESPACE, Some(s)) => {
            let Some(ns) = s.namespace(sqe.nsid) else {
                // An NSID within 1..=NN without a namespace reads as zeroes (inactive).
                return if sqe.nsid != 0 && sqe.nsid <= s.max_nsid() {
                    Ok(())
                } else {
                    Err(Status::INVALID_NAMESPACE)
                };
            };
            namespace(ns, out);
            Ok(())
        }
        (cns::ACTIVE_NAMESPACES, Some(s)) => {
            if sqe.nsid >= 0xffff_fffe {
                return Err(Status::INVALID_NAMESPACE);
            }
            for (i, ns) in s
                .namespaces
                .iter()
                .filter(|n| n.nsid > sqe.nsid)
                .take(SIZE / 4)
                .enumerate()
            {
                le::put_u32(out, i * 4, ns.nsid);
            }
            Ok(())
        }
        (cns::NAMESPACE_DESCRIPTORS, Some(s)) => {
            let ns = s.namespace(sqe.nsid).ok_or(Status::INVALID_NAMESPACE)?;
            descriptors(ns, out);
            Ok(())
        }
        // Anything else (including NVMe 2.0's I/O command set specific structures, CNS 05h/06h,
        // which a 1.4 controller does not have) is Invalid Field in Command.
        _ => Err(Status::INVALID_FIELD),
    }
}

fn controller(target: &Target, t: &TransportInfo, ctrl: &CtrlShared, b: &mut [u8]) {
    let subsys = match ctrl.subsys {
        SubsysRef::Nvm(i) => Some(&target.subsystems[i]),
        SubsysRef::Discovery => None,
    };
    // VID/SSVID stay 0: a fabrics target has no PCI vendor.
    let (serial, model) = match subsys {
        Some(s) => (s.serial.as_str(), s.model.as_str()),
        None => ("nvmfd-discovery", "nvmfd discovery"),
    };
    put_str(&mut b[4..24], serial, b' ');
    put_str(&mut b[24..64], model, b' ');
    put_str(&mut b[64..72], FIRMWARE_REVISION, b' ');
    b[72] = 6; // recommended arbitration burst
               // CMIC bit 1: the subsystem may have several controllers (one per connected host).
    b[76] = if subsys.is_some() { 0x02 } else { 0 };
    // MDTS in units of the 4 KiB minimum page size, as a power of two.
    b[77] = t.mdts();
    le::put_u16(b, 78, ctrl.cntlid);
    le::put_u32(b, 80, NVME_VERSION);
    // OAES: no optional asynchronous event is advertised, since nothing raises one yet (the
    // core can complete held AERs with namespace attribute and discovery log change notices;
    // set bit 8 / bit 31 here once live reconfiguration raises them).
    le::put_u32(b, 92, OAES);
    // CTRATT bit 0: 128-bit host identifier, required over fabrics (NVMe-oF 1.1, Connect:
    // HOSTID is 128 bits).
    le::put_u32(b, 96, 1);
    // CNTRLTYPE: 1 I/O controller, 2 discovery controller.
    b[111] = if subsys.is_some() { 1 } else { 2 };
    b[258] = 3; // ACL: 4 aborts
    b[259] = AERL;
    b[260] = 0x03; // FRMW: one slot, slot 1 read-only
    b[261] = 0x04; // LPA: extended data for Get Log Page
    b[262] = 0; // ELPE: one error log entry
    le::put_u16(b, 266, 343); // WCTEMP 70 °C
    le::put_u16(b, 268, 358); // CCTEMP 85 °C
    le::put_u16(b, 320, KAS); // KAS: keep-alive granularity in 100 ms units
    b[512] = 0x66; // SQES: 64-byte entries
    b[513] = 0x44; // CQES: 16-byte entries
    le::put_u16(b, 514, t.max_queue_depth);
    if let Some(s) = subsys {
        le::put_u32(b, 516, s.max_nsid());
        le::put_u16(b, 520, 0x000c); // ONCS: Dataset Management, Write Zeroes
                                     // VWC: bit 0 cache present; bits 2:1 = 10b: Flush with NSID FFFFFFFFh not supported.
        b[525] = 0x04 | s.volatile_cache() as u8;
    }
    // SGLS: what the transport's descriptors need (TCP: SGLs supported, bits 1:0 = 01b, and
    // address as offset, bit 20; RDMA adds keyed descriptors, bit 2).
    le::put_u32(b, 536, t.sgls);
    le::put_u32(b, 540, 0); // MNAN
    put_str(&mut b[768..1024], subsys_nqn(target, ctrl.subsys), 0);
    // NVMe over Fabrics attributes: those of the transport the admin queue arrived on.
    le::put_u32(b, 1792, t.ioccsz());
    le::put_u32(b, 1796, t.iorcsz);
    le::put_u16(b, 1800, t.icdoff);
    b[1802] = 0; // FCATT: dynamic controller model
    b[1803] = t.msdbd;
    le::put_u16(b, 1804, 1); // OFCS: Disconnect supported
                             // Power state 0: 25 W max (centiwatts), entry/exit latency unreported.
    le::put_u16(b, 2048, 2500);
}

/// The Namespace Identification Descriptor list (CNS 03h; NVMe Base 2.0, "Namespace
/// Identification Descriptor"): each entry is NIDT (byte 0), NIDL (byte 1), two reserved bytes,
/// then NIDL bytes of identifier; a zero NIDT ends the list (the rest of the page is zero).
/// Types: 1 = IEEE EUI-64 (8 bytes), 2 = NGUID (16), 3 = UUID (16). Type 4 (Command Set
/// Identifier) is NVMe 2.0's and not reported: VS says 1.4. Identifiers go out in the same byte order as in Identify Namespace (NGUID and
/// EUI-64 big-endian); a zero identifier is "not reported" and left out, so the list matches
/// the Identify Namespace fields, which a Linux host cross-checks.
fn descriptors(ns: &super::Namespace, out: &mut [u8]) {
    let ids: [(u8, &[u8]); 3] = [(1, &ns.eui64), (2, &ns.nguid), (3, &ns.uuid)];
    let mut o = 0;
    for (nidt, id) in ids {
        if id.iter().all(|&b| b == 0) {
            continue;
        }
        out[o] = nidt;
        out[o + 1] = id.len() as u8;
        out[o + 4..o + 4 + id.len()].copy_from_slice(id);
        o += 4 + id.len();
    }
}

fn namespace(ns: &super::Namespace, b: &mut [u8]) {
    let n = ns.info.num_blocks;
    le::put_u64(b, 0, n); // NSZE
    le::put_u64(b, 8, n); // NCAP
    le::put_u64(b, 16, n); // NUSE
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS: format 0
               // DLFEAT: deallocated blocks read zero (001b) and Write Zeroes may deallocate (bit 3).
    b[33] = if ns.info.deallocate_zeroes { 0x09 } else { 0 };
    b[30] = 1; // NMIC: may be attached to several controllers
               // NGUID (bytes 119:104) and EUI64 (bytes 127:120), big-endian, zero when not reported.
    b[104..120].copy_from_slice(&ns.nguid);
    b[120..128].copy_from_slice(&ns.eui64);
    // LBA format 0: no metadata, LBADS = log2(block size), best relative performance.
    b[128 + 2] = ns.info.block_size.trailing_zeros() as u8;
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmfd_bdev::BdevInfo;

    fn ns(eui64: [u8; 8]) -> crate::core::Namespace {
        crate::core::Namespace {
            nsid: 1,
            bdev: 0,
            info: BdevInfo {
                name: "b".into(),
                kind: "malloc",
                block_size: 512,
                num_blocks: 8,
                deallocate_zeroes: true,
                volatile_cache: false,
            },
            nguid: [0x10; 16],
            uuid: [0x20; 16],
            eui64,
        }
    }

    #[test]
    fn descriptor_list_layout() {
        let mut out = [0u8; SIZE];
        descriptors(&ns([0; 8]), &mut out);
        // NGUID, UUID; no EUI-64, no CSI (a 2.0 descriptor).
        assert_eq!(&out[0..4], &[2, 16, 0, 0]);
        assert_eq!(&out[4..20], &[0x10; 16]);
        assert_eq!(&out[20..24], &[3, 16, 0, 0]);
        assert_eq!(&out[24..40], &[0x20; 16]);
        assert!(out[40..].iter().all(|&b| b == 0));

        let mut out = [0u8; SIZE];
        let e = [0x00, 0x26, 0xb7, 0x68, 0, 0, 0xf0, 0x0d];
        descriptors(&ns(e), &mut out);
        assert_eq!(&out[0..4], &[1, 8, 0, 0]);
        assert_eq!(&out[4..12], &e);
        assert_eq!(&out[12..14], &[2, 16]);
        let mut id = [0u8; SIZE];
        namespace(&ns(e), &mut id);
        assert_eq!(&id[104..120], &[0x10; 16]);
        assert_eq!(&id[120..128], &e);
    }
}
