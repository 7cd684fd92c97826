//! Reading a function's configuration space (the binary sysfs `config` file, little-endian).
//!
//! Layouts from the PCI Local Bus spec 3.0 (header, capability list) and PCIe base spec
//! (PCI Express capability, extended capabilities from 0x100, ACS extended capability).
//! Without CAP_SYS_ADMIN the kernel returns only the first 64 bytes of `config`; every reader
//! here tells "not readable" apart from "absent".

use serde::Serialize;

/// PCI Express capability ID (PCI Local Bus 3.0 appendix H).
pub const CAP_ID_PCIE: u8 = 0x10;
/// Access Control Services extended capability ID (PCIe base 4.0 §7.7.7).
pub const EXT_CAP_ID_ACS: u16 = 0x000d;

/// ACS Control: Source Validation Enable.
pub const ACS_SV: u16 = 0x0001;
/// ACS Control: Translation Blocking Enable.
pub const ACS_TB: u16 = 0x0002;
/// ACS Control: P2P Request Redirect Enable.
pub const ACS_RR: u16 = 0x0004;
/// ACS Control: P2P Completion Redirect Enable.
pub const ACS_CR: u16 = 0x0008;
/// ACS Control: Upstream Forwarding Enable.
pub const ACS_UF: u16 = 0x0010;
/// ACS Control: P2P Egress Control Enable.
pub const ACS_EC: u16 = 0x0020;
/// ACS Control: Direct Translated P2P Enable.
pub const ACS_DT: u16 = 0x0040;
/// The Control bits that send peer-to-peer TLPs up to the root complex, the ones Linux's
/// `pci_bridge_has_acs_redir()` tests.
pub const ACS_REDIRECT_BITS: u16 = ACS_RR | ACS_CR | ACS_EC;

/// Names of ACS bits, lowest first.
pub fn acs_bit_names(bits: u16) -> Vec<&'static str> {
    const NAMES: [(u16, &str); 7] = [
        (ACS_SV, "SV"),
        (ACS_TB, "TB"),
        (ACS_RR, "RR"),
        (ACS_CR, "CR"),
        (ACS_UF, "UF"),
        (ACS_EC, "EC"),
        (ACS_DT, "DT"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// The Device/Port Type field of the PCI Express Capabilities register (bits 7:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortType {
    /// 0: PCI Express Endpoint.
    Endpoint,
    /// 1: Legacy PCI Express Endpoint.
    LegacyEndpoint,
    /// 4: Root Port of a Root Complex.
    RootPort,
    /// 5: Upstream Port of a switch.
    SwitchUpstream,
    /// 6: Downstream Port of a switch.
    SwitchDownstream,
    /// 7: PCI Express to PCI/PCI-X bridge.
    PcieToPciBridge,
    /// 8: PCI/PCI-X to PCI Express bridge.
    PciToPcieBridge,
    /// 9: Root Complex Integrated Endpoint.
    RcIntegratedEndpoint,
    /// 10: Root Complex Event Collector.
    RcEventCollector,
    /// Any other value.
    Reserved,
}

impl PortType {
    fn from_field(v: u8) -> PortType {
        match v {
            0 => PortType::Endpoint,
            1 => PortType::LegacyEndpoint,
            4 => PortType::RootPort,
            5 => PortType::SwitchUpstream,
            6 => PortType::SwitchDownstream,
            7 => PortType::PcieToPciBridge,
            8 => PortType::PciToPcieBridge,
            9 => PortType::RcIntegratedEndpoint,
            10 => PortType::RcEventCollector,
            _ => PortType::Reserved,
        }
    }

    /// A short human name.
    pub fn label(&self) -> &'static str {
        match self {
            PortType::Endpoint => "endpoint",
            PortType::LegacyEndpoint => "legacy endpoint",
            PortType::RootPort => "root port",
            PortType::SwitchUpstream => "switch upstream port",
            PortType::SwitchDownstream => "switch downstream port",
            PortType::PcieToPciBridge => "PCIe-to-PCI bridge",
            PortType::PciToPcieBridge => "PCI-to-PCIe bridge",
            PortType::RcIntegratedEndpoint => "root complex integrated endpoint",
            PortType::RcEventCollector => "root complex event collector",
            PortType::Reserved => "reserved port type",
        }
    }

    /// Whether this function has a physical link to the port above it (its Link Status then
    /// describes that link): endpoints, switch upstream ports and PCIe-to-PCI bridges. Root
    /// ports and downstream ports report the link below them instead.
    pub fn has_upstream_link(&self) -> bool {
        matches!(
            self,
            PortType::Endpoint
                | PortType::LegacyEndpoint
                | PortType::SwitchUpstream
                | PortType::PcieToPciBridge
        )
    }
}

/// What the configuration space says about ACS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AcsState {
    /// The function has no ACS extended capability.
    Absent,
    /// The ACS extended capability at `offset` with its Capability and Control registers.
    Present {
        /// Offset of the extended capability header.
        offset: u16,
        /// ACS Capability register.
        capability: u16,
        /// ACS Control register.
        control: u16,
    },
    /// The configuration space could not be read past the header (fewer than 256 bytes: the
    /// reader is not root).
    Unreadable,
}

/// One base address register as the configuration space holds it (a bus address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigBar {
    /// BAR index 0..=5.
    pub index: u8,
    /// The bus address the BAR decodes (low flag bits masked off).
    pub bus_address: u64,
    /// I/O space instead of memory.
    pub io: bool,
    /// A 64-bit memory BAR (takes two slots).
    pub is_64: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// A parsed configuration space.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
}

impl ConfigSpace {
    /// Wraps the bytes read from sysfs `config`.
    pub fn new(bytes: Vec<u8>) -> ConfigSpace {
        ConfigSpace { bytes }
    }

    /// How many bytes were readable.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing was readable.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn u8_at(&self, off: usize) -> Option<u8> {
        self.bytes.get(off).copied()
    }

    fn u16_at(&self, off: usize) -> Option<u16> {
        Some(u16::from_le_bytes([
            *self.bytes.get(off)?,
            *self.bytes.get(off + 1)?,
        ]))
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        let b = self.bytes.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Header Type bits 6:0 (0 = endpoint, 1 = PCI-PCI bridge, 2 = CardBus).
    pub fn header_type(&self) -> Option<u8> {
        self.u8_at(0x0e).map(|h| h & 0x7f)
    }

    /// Header Type bit 7: the device has more than one function.
    pub fn multifunction(&self) -> bool {
        self.u8_at(0x0e).is_some_and(|h| h & 0x80 != 0)
    }

    /// Offset of the first standard capability with `id`, walking the list from 0x34 the way
    /// the spec describes it (pointers below 0x40 end the list; at most 48 entries).
    /// `Err(())` when the list runs past the readable bytes.
    #[allow(clippy::result_unit_err)]
    pub fn find_capability(&self, id: u8) -> Result<Option<usize>, ()> {
        let status = self.u16_at(0x06).ok_or(())?;
        if status & 0x0010 == 0 {
            return Ok(None);
        }
        let start = match self.header_type().ok_or(())? {
            0 | 1 => 0x34,
            2 => 0x14,
            _ => return Ok(None),
        };
        let mut pos = self.u8_at(start).ok_or(())? as usize;
        for _ in 0..48 {
            if pos < 0x40 {
                return Ok(None);
            }
            pos &= !3;
            let ent = self.u16_at(pos).ok_or(())?;
            let cid = (ent & 0xff) as u8;
            if cid == 0xff {
                return Ok(None);
            }
            if cid == id {
                return Ok(Some(pos));
            }
            pos = (ent >> 8) as usize;
        }
        Ok(None)
    }

    /// The PCIe Device/Port Type, `None` if the function has no PCI Express capability,
    /// `Err(())` if the capability list is not readable.
    #[allow(clippy::result_unit_err)]
    pub fn port_type(&self) -> Result<Option<PortType>, ()> {
        let Some(pos) = self.find_capability(CAP_ID_PCIE)? else {
            return Ok(None);
        };
        let caps = self.u16_at(pos + 2).ok_or(())?;
        Ok(Some(PortType::from_field(((caps >> 4) & 0xf) as u8)))
    }

    /// Offset of the extended capability with `id` (PCIe base §7.6: list from 0x100, a zero
    /// header means none). `Err(())` when the extended space is not readable.
    #[allow(clippy::result_unit_err)]
    pub fn find_ext_capability(&self, id: u16) -> Result<Option<usize>, ()> {
        // 256 bytes is a whole conventional configuration space (no extended space at all,
        // Linux `pci_find_next_ext_capability()` gives up the same way); less is a partial
        // read (64 bytes without CAP_SYS_ADMIN).
        if self.bytes.len() < 0x100 {
            return Err(());
        }
        if self.bytes.len() < 0x104 {
            return Ok(None);
        }
        let mut pos = 0x100usize;
        // Each extended capability takes at least 8 bytes.
        for _ in 0..((4096 - 256) / 8) {
            let header = self.u32_at(pos).ok_or(())?;
            if header == 0 || header == 0xffff_ffff {
                return Ok(None);
            }
            if (header & 0xffff) as u16 == id {
                return Ok(Some(pos));
            }
            let next = (header >> 20) as usize & !3;
            if next < 0x100 {
                return Ok(None);
            }
            pos = next;
        }
        Ok(None)
    }

    /// The ACS capability and control registers.
    pub fn acs(&self) -> AcsState {
        match self.find_ext_capability(EXT_CAP_ID_ACS) {
            Err(()) => AcsState::Unreadable,
            Ok(None) => AcsState::Absent,
            Ok(Some(pos)) => match (self.u16_at(pos + 4), self.u16_at(pos + 6)) {
                (Some(capability), Some(control)) => AcsState::Present {
                    offset: pos as u16,
                    capability,
                    control,
                },
                _ => AcsState::Unreadable,
            },
        }
    }

    /// The BARs of a type 0 (six) or type 1 (two) header, as bus addresses. Unimplemented
    /// (zero) BARs are left out.
    pub fn bars(&self) -> Vec<ConfigBar> {
        let count = match self.header_type() {
            Some(0) => 6,
            Some(1) => 2,
            _ => 0,
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < count {
            let Some(lo) = self.u32_at(0x10 + 4 * i) else {
                break;
            };
            if lo & 1 == 1 {
                if lo & !3 != 0 {
                    out.push(ConfigBar {
                        index: i as u8,
                        bus_address: (lo & !3) as u64,
                        io: true,
                        is_64: false,
                        prefetchable: false,
                    });
                }
                i += 1;
                continue;
            }
            let is_64 = (lo >> 1) & 3 == 2;
            let prefetchable = lo & 8 != 0;
            let mut addr = (lo & !0xf) as u64;
            if is_64 {
                let hi = if i + 1 < count {
                    self.u32_at(0x10 + 4 * (i + 1)).unwrap_or(0)
                } else {
                    0
                };
                addr |= (hi as u64) << 32;
            }
            if addr != 0 {
                out.push(ConfigBar {
                    index: i as u8,
                    bus_address: addr,
                    io: false,
                    is_64,
                    prefetchable,
                });
            }
            i += if is_64 { 2 } else { 1 };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        c[0x0e] = kind;
        c
    }

    #[test]
    fn finds_pcie_capability_and_port_type_through_the_list() {
        let mut c = header(1);
        c[0x06] = 0x10; // capability list present
        c[0x34] = 0x40;
        c[0x40] = 0x01; // PM capability, next 0x60
        c[0x41] = 0x60;
        c[0x60] = CAP_ID_PCIE;
        c[0x61] = 0x00;
        c[0x62] = 0x62; // version 2, port type 6 (downstream)
        let cs = ConfigSpace::new(c);
        assert_eq!(cs.find_capability(CAP_ID_PCIE), Ok(Some(0x60)));
        assert_eq!(cs.port_type(), Ok(Some(PortType::SwitchDownstream)));
    }

    #[test]
    fn no_capability_list_means_no_pcie() {
        let cs = ConfigSpace::new(header(0));
        assert_eq!(cs.port_type(), Ok(None));
    }

    #[test]
    fn a_64_byte_config_is_unreadable_past_the_header() {
        let mut c = header(0);
        c[0x06] = 0x10;
        c[0x34] = 0x40;
        c.truncate(64);
        let cs = ConfigSpace::new(c);
        assert_eq!(cs.port_type(), Err(()));
        assert_eq!(cs.acs(), AcsState::Unreadable);
    }

    #[test]
    fn walks_extended_capabilities_to_acs() {
        let mut c = header(1);
        // AER (id 1) at 0x100, next 0x148; ACS at 0x148, next 0.
        c[0x100..0x104].copy_from_slice(&(0x0001u32 | (1 << 16) | (0x148 << 20)).to_le_bytes());
        c[0x148..0x14c].copy_from_slice(&(0x000du32 | (1 << 16)).to_le_bytes());
        c[0x14c..0x14e].copy_from_slice(&0x005fu16.to_le_bytes());
        c[0x14e..0x150].copy_from_slice(&(ACS_SV | ACS_RR | ACS_CR).to_le_bytes());
        let cs = ConfigSpace::new(c);
        assert_eq!(
            cs.acs(),
            AcsState::Present {
                offset: 0x148,
                capability: 0x5f,
                control: 0x000d
            }
        );
        assert_eq!(acs_bit_names(0x000d), vec!["SV", "RR", "CR"]);
    }

    #[test]
    fn a_conventional_256_byte_config_has_no_acs() {
        let mut c = header(0);
        c.truncate(256);
        assert_eq!(ConfigSpace::new(c).acs(), AcsState::Absent);
    }

    #[test]
    fn empty_extended_space_has_no_acs() {
        let cs = ConfigSpace::new(header(0));
        assert_eq!(cs.acs(), AcsState::Absent);
    }

    #[test]
    fn decodes_32_and_64_bit_bars() {
        let mut c = header(0);
        c[0x10..0x14].copy_from_slice(&0xfe00_0004u32.to_le_bytes()); // 64-bit, low
        c[0x14..0x18].copy_from_slice(&0x0000_0001u32.to_le_bytes()); // high
        c[0x18..0x1c].copy_from_slice(&0x0000_c001u32.to_le_bytes()); // I/O
        c[0x1c..0x20].copy_from_slice(&0xfd00_0008u32.to_le_bytes()); // 32-bit prefetchable
        let bars = ConfigSpace::new(c).bars();
        assert_eq!(bars.len(), 3);
        assert_eq!(bars[0].index, 0);
        assert_eq!(bars[0].bus_address, 0x1_fe00_0000);
        assert!(bars[0].is_64 && !bars[0].prefetchable);
        assert_eq!(
            (bars[1].index, bars[1].io, bars[1].bus_address),
            (2, true, 0xc000)
        );
        assert_eq!((bars[2].index, bars[2].prefetchable), (3, true));
    }
}
