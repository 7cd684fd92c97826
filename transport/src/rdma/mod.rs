//! NVMe/RDMA: the verbs layer ([`verbs`]), connect admission and SGL planning ([`admit`]),
//! the listeners ([`Listeners`]), one poll group per reactor ([`RdmaGroup`]) and the start-up
//! check of an RDMA listener's address ([`check_listen_address`]).

pub mod admit;
mod group;
mod listener;
mod sched;
pub mod verbs;

pub use group::{RdmaGroup, RdmaParams, MAX_INITIATOR_DEPTH};
pub use listener::{Incoming, Listeners};

use std::net::SocketAddr;
use verbs::{CmId, Devices, Error, EventChannel};

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
