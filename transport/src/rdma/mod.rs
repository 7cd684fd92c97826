//! NVMe/RDMA: the verbs layer ([`verbs`]), connect admission and SGL planning ([`admit`]),
//! the listeners ([`Listeners`]), one poll group per reactor ([`RdmaGroup`]) and the start-up
//! check of an RDMA listener's address ([`check_listen_address`]).

pub mod admit;
pub mod cmb;
mod group;
mod listener;
mod p2p;
mod sched;
pub mod verbs;

pub use group::{RdmaGroup, RdmaGroupConfig, RdmaParams, RdmaStaging, MAX_INITIATOR_DEPTH};
pub use listener::{Incoming, Listeners};

use std::net::SocketAddr;
use verbs::{CmId, Devices, Error, EventChannel};

/// What the core needs to know of NVMe/RDMA as configured (`transports.rdma`).
pub fn transport_info(cfg: &nvmfd_config::RdmaTransport) -> crate::TransportInfo {
    crate::TransportInfo {
        kind: nvmfd_config::TransportKind::Rdma,
        in_capsule_data_size: cfg.in_capsule_data_size,
        // Every queue receives into the same SRQ buffers: the admin queue's capsules are
        // bounded by the same size as the I/O queues'.
        admin_in_capsule_data_size: cfg.in_capsule_data_size,
        max_io_size: cfg.max_io_size,
        max_queue_depth: cfg.max_queue_depth,
        max_io_queues: cfg.max_io_queues,
        // SGLS: SGLs supported (bits 1:0 = 01b), Keyed SGL Data Block (bit 2: mandatory for
        // NVMe/RDMA, NVMe-oF 1.1 7.3.2; the Linux host refuses a controller without it),
        // address as offset (bit 20: in-capsule data).
        sgls: 0x0010_0005,
        iorcsz: 1,
        icdoff: 0,
        // MSDBD: a Last Segment list of keyed descriptors in the capsule.
        msdbd: admit::MAX_KEYED as u8,
        trtype: crate::proto::fabrics::trtype::RDMA,
        // TSAS (NVMe-oF 1.1, Figure "Transport Specific Address Subtype Definition for NVMe/RDMA
        // Transport"): RDMA_QPTYPE 1 (reliable connected), RDMA_PRTYPE 1 (no provider
        // specified), RDMA_CMS 1 (RDMA_CM); RDMA_PKEY 0. As Linux nvmet reports.
        tsas: [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    }
}

/// Whether an RDMA listener can use `addr`: rdma-core is installed, rdma_cm is reachable, and
/// (for a specific address) an RDMA device owns it. Returns the device's name (`None` for a
/// wildcard address, which any device may serve), or one line naming the address and what is
/// missing. Only called for RDMA listeners: a TCP-only daemon never loads rdma-core.
pub fn check_listen_address(addr: SocketAddr) -> Result<Option<String>, String> {
    let fail = |what: String| format!("RDMA listener {addr}: {what}");
    let channel = EventChannel::new().map_err(|e| match e {
        Error::Os { ref source, .. }
            if source.raw_os_error() == Some(libc::ENOENT)
                || source.raw_os_error() == Some(libc::ENODEV) =>
        {
            fail(format!(
                "{e} (no /dev/infiniband/rdma_cm: no RDMA device, or rdma_ucm is not loaded)"
            ))
        }
        e => fail(e.to_string()),
    })?;
    let id = CmId::new(&channel).map_err(|e| fail(e.to_string()))?;
    id.bind(addr).map_err(|e| match e {
        Error::Os { ref source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::ENODEV) | Some(libc::EADDRNOTAVAIL)
            ) =>
        {
            fail(format!("no RDMA device has this address ({e})"))
        }
        e => fail(e.to_string()),
    })?;
    let devices = Devices::open().map_err(|e| fail(e.to_string()))?;
    if addr.ip().is_unspecified() {
        if devices.is_empty() {
            return Err(fail("no RDMA device on this machine".into()));
        }
        return Ok(None);
    }
    let ctx = id
        .context(&devices)
        .map_err(|e| fail(format!("no RDMA device has this address ({e})")))?;
    Ok(Some(ctx.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdma_transport_info_is_what_a_linux_host_requires() {
        let cfg = nvmfd_config::RdmaTransport::default();
        let t = transport_info(&cfg);
        // nvme-rdma refuses a controller without keyed SGLs ("Mandatory keyed sgls are not
        // supported!") and uses in-capsule data only with SGL offsets (bit 20).
        assert_eq!(t.sgls & (1 << 2), 1 << 2);
        assert_eq!(t.sgls & (1 << 20), 1 << 20);
        assert_eq!(t.sgls & 3, 1);
        assert_eq!(t.icdoff, 0);
        assert_eq!(t.ioccsz(), (64 + 4096) / 16);
        assert_eq!(t.admin_in_capsule_data_size, cfg.in_capsule_data_size);
        assert_eq!(t.trtype, 1);
        assert_eq!(&t.tsas[..4], &[1, 1, 1, 0]);
        assert_eq!(usize::from(t.msdbd), admit::MAX_KEYED);
    }

    #[test]
    fn an_address_without_an_rdma_device_fails_in_one_line_naming_it() {
        // 192.0.2.1 (TEST-NET-1) is on no machine's interfaces.
        let err = check_listen_address("192.0.2.1:4420".parse().unwrap()).unwrap_err();
        assert!(err.starts_with("RDMA listener 192.0.2.1:4420: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.len() > "RDMA listener 192.0.2.1:4420: ".len() + 10,
            "{err}"
        );
    }
}
