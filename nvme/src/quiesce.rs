//! Stopping a dead controller's DMA before the buffers of its in-flight commands are reused.
//!
//! When a controller reset fails, or cannot even be started, the commands that were in flight
//! must still complete at the host, but their data buffers may only go back to a pool once the
//! SSD can no longer write into them (a read landing in a buffer already lent to another
//! command is a use-after-free by DMA). [`stop_dma`] decides, from what the device answers:
//!
//! 1. the failed reset got as far as disabling the controller (CC.EN = 0 and CSTS.RDY = 0
//!    seen): a Controller Level Reset deletes every I/O queue and stops command processing
//!    (NVMe Base 2.0, 3.7.2), so nothing more is needed;
//! 2. else Bus Master Enable is cleared in the PCI Command register (PCI Local Bus 3.0, 6.2.2:
//!    with it clear the function issues no memory requests) and the register read back: only a
//!    read that shows the bit clear (and is not all ones, a device that is gone) counts;
//! 3. else, where the kernel offers one (VFIO_DEVICE_FLAGS_RESET), VFIO_DEVICE_RESET: a function
//!    (or slot/bus) reset returns the function to its power-on state, its controller disabled
//!    and its queues gone (PCIe Base 6.0, 6.6.2: after an FLR the function issues no requests
//!    for what it was doing before). It counts when the ioctl succeeds and the function answers
//!    config reads afterwards; Bus Master Enable, which the kernel restores with the saved
//!    config state, is cleared again (best effort: the reset already stopped the queues).
//!
//! When nothing worked, the buffers of the commands in flight are leaked, never reused
//! ([`crate::BufferFate::Leak`]), and the commands still complete with a retryable status.

use std::io;

use crate::vfio::{Device, PCI_COMMAND_MASTER};

/// The device operations the decision needs, so it can be tested with a fake.
pub trait DmaStopper {
    /// Read-modify-write of the PCI Command register clearing Bus Master Enable.
    fn clear_bus_master(&self) -> io::Result<()>;
    /// The PCI Command register now.
    fn pci_command(&self) -> io::Result<u16>;
    /// Whether a device reset is offered (VFIO_DEVICE_FLAGS_RESET).
    fn can_reset(&self) -> bool;
    /// VFIO_DEVICE_RESET.
    fn reset(&self) -> io::Result<()>;
}

impl DmaStopper for Device {
    fn clear_bus_master(&self) -> io::Result<()> {
        Device::clear_bus_master(self)
    }
    fn pci_command(&self) -> io::Result<u16> {
        Device::pci_command(self)
    }
    fn can_reset(&self) -> bool {
        Device::can_reset(self)
    }
    fn reset(&self) -> io::Result<()> {
        Device::reset(self)
    }
}

/// A stopper whose every step fails: the test-only fault injection
/// (`NVMFD_TEST_ONLY_NVME_RESET_FAIL=BDF:no-dma-stop`) runs the leak path against a real device.
pub struct Refusing;

impl DmaStopper for Refusing {
    fn clear_bus_master(&self) -> io::Result<()> {
        Err(io::Error::other(
            "clearing bus master refused (test-only fault injection)",
        ))
    }
    fn pci_command(&self) -> io::Result<u16> {
        Err(io::Error::other(
            "config read refused (test-only fault injection)",
        ))
    }
    fn can_reset(&self) -> bool {
        true
    }
    fn reset(&self) -> io::Result<()> {
        Err(io::Error::other(
            "device reset refused (test-only fault injection)",
        ))
    }
}

/// How a dead controller's DMA was stopped, or why it could not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmaStop {
    /// The controller was disabled before the reset failed (CSTS.RDY = 0 seen).
    Disabled,
    /// Bus Master Enable cleared, and read back clear.
    BusMasterOff,
    /// VFIO_DEVICE_RESET succeeded.
    DeviceReset,
    /// Nothing worked: the device may still write into the buffers of its commands.
    Failed(String),
}

impl DmaStop {
    /// Whether the buffers of the commands in flight may be reused.
    pub fn stopped(&self) -> bool {
        !matches!(self, DmaStop::Failed(_))
    }
}

/// Whether a Command register value shows Bus Master Enable clear (all ones: no device
/// answered the read, which proves nothing).
fn master_off(cmd: u16) -> bool {
    cmd != u16::MAX && cmd & PCI_COMMAND_MASTER == 0
}

/// Stop the DMA of a controller whose reset failed (`disabled`: it got as far as CSTS.RDY = 0)
/// or never ran. See the module documentation for the order and what counts.
pub fn stop_dma(disabled: bool, d: &dyn DmaStopper) -> DmaStop {
    if disabled {
        return DmaStop::Disabled;
    }
    let mut why = Vec::new();
    match d.clear_bus_master().and_then(|()| d.pci_command()) {
        Ok(v) if master_off(v) => return DmaStop::BusMasterOff,
        Ok(v) => why.push(format!(
            "the PCI Command register reads {v:#06x} after clearing Bus Master Enable"
        )),
        Err(e) => why.push(format!("clearing Bus Master Enable: {e}")),
    }
    if !d.can_reset() {
        why.push("the device offers no reset (VFIO_DEVICE_FLAGS_RESET clear)".into());
        return DmaStop::Failed(why.join("; "));
    }
    match d.reset() {
        Ok(()) => {
            // The kernel restores the saved config state after the reset, Bus Master Enable
            // included: clear it again (the reset already stopped the controller).
            let _ = d.clear_bus_master();
            match d.pci_command() {
                Ok(v) if v != u16::MAX => return DmaStop::DeviceReset,
                Ok(_) => why.push("after VFIO_DEVICE_RESET the config space reads all ones".into()),
                Err(e) => why.push(format!("after VFIO_DEVICE_RESET: {e}")),
            }
        }
        Err(e) => why.push(e.to_string()),
    }
    DmaStop::Failed(why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// A fake PCI function: a Command register, whether writes to it take, whether it can be
    /// reset and whether the reset works. Records the calls.
    struct Fake {
        cmd: Cell<u16>,
        writes_take: bool,
        gone: bool,
        resettable: bool,
        reset_ok: bool,
        /// The Command register after a reset (the kernel restores the saved state).
        restored: u16,
        calls: RefCell<Vec<&'static str>>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                cmd: Cell::new(0x0406),
                writes_take: true,
                gone: false,
                resettable: true,
                reset_ok: true,
                restored: 0x0406,
                calls: RefCell::new(Vec::new()),
            }
        }
        fn calls(&self) -> Vec<&'static str> {
            self.calls.borrow().clone()
        }
    }

    impl DmaStopper for Fake {
        fn clear_bus_master(&self) -> io::Result<()> {
            self.calls.borrow_mut().push("clear");
            if self.gone {
                return Ok(()); // config writes to a missing device vanish
            }
            if self.writes_take {
                self.cmd.set(self.cmd.get() & !PCI_COMMAND_MASTER);
            }
            Ok(())
        }
        fn pci_command(&self) -> io::Result<u16> {
            self.calls.borrow_mut().push("read");
            Ok(if self.gone { u16::MAX } else { self.cmd.get() })
        }
        fn can_reset(&self) -> bool {
            self.resettable
        }
        fn reset(&self) -> io::Result<()> {
            self.calls.borrow_mut().push("reset");
            if !self.reset_ok {
                return Err(io::Error::other("VFIO_DEVICE_RESET: Input/output error"));
            }
            self.cmd.set(self.restored);
            Ok(())
        }
    }

    #[test]
    fn a_disabled_controller_needs_nothing_more() {
        let f = Fake::new();
        assert_eq!(stop_dma(true, &f), DmaStop::Disabled);
        assert!(f.calls().is_empty(), "the device is not touched");
    }

    #[test]
    fn bus_master_off_read_back_is_enough() {
        let f = Fake::new();
        let r = stop_dma(false, &f);
        assert_eq!(r, DmaStop::BusMasterOff);
        assert!(r.stopped());
        assert_eq!(
            f.calls(),
            ["clear", "read"],
            "no reset once BME reads back 0"
        );
        assert_eq!(f.cmd.get(), 0x0402, "only bit 2 cleared");
    }

    #[test]
    fn a_write_that_does_not_take_falls_back_to_the_device_reset() {
        let f = Fake {
            writes_take: false,
            ..Fake::new()
        };
        let r = stop_dma(false, &f);
        assert_eq!(r, DmaStop::DeviceReset);
        assert!(r.stopped());
        assert_eq!(f.calls(), ["clear", "read", "reset", "clear", "read"]);
    }

    #[test]
    fn no_reset_offered_means_leak() {
        let f = Fake {
            writes_take: false,
            resettable: false,
            ..Fake::new()
        };
        let r = stop_dma(false, &f);
        assert!(!r.stopped());
        let DmaStop::Failed(why) = r else { panic!() };
        assert!(why.contains("reads 0x0406"), "{why}");
        assert!(why.contains("offers no reset"), "{why}");
        assert_eq!(f.calls(), ["clear", "read"], "no reset attempted");
    }

    #[test]
    fn a_failed_reset_means_leak() {
        let f = Fake {
            writes_take: false,
            reset_ok: false,
            ..Fake::new()
        };
        let r = stop_dma(false, &f);
        let DmaStop::Failed(why) = &r else {
            panic!("{r:?}")
        };
        assert!(why.contains("Input/output error"), "{why}");
    }

    #[test]
    fn a_device_that_is_gone_proves_nothing() {
        // All-ones config reads have bit 2 set, but "clear" cannot be told from "gone" by the
        // bit alone: an all-ones read never counts, before or after a reset.
        let f = Fake {
            gone: true,
            ..Fake::new()
        };
        let r = stop_dma(false, &f);
        let DmaStop::Failed(why) = &r else {
            panic!("{r:?}")
        };
        assert!(why.contains("0xffff"), "{why}");
        assert!(why.contains("reads all ones"), "{why}");
        let f = Fake {
            gone: true,
            resettable: false,
            ..Fake::new()
        };
        assert!(!stop_dma(false, &f).stopped());
        assert!(!master_off(0xffff) && master_off(0x0402) && !master_off(0x0406));
    }

    #[test]
    fn the_refusing_stopper_leaks() {
        let r = stop_dma(false, &Refusing);
        let DmaStop::Failed(why) = &r else {
            panic!("{r:?}")
        };
        assert!(why.contains("bus master refused (test-only"), "{why}");
        assert!(why.contains("device reset refused (test-only"), "{why}");
        // A controller that was disabled is safe whatever the stopper.
        assert_eq!(stop_dma(true, &Refusing), DmaStop::Disabled);
    }
}
