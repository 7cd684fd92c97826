//! PCI addresses: `DDDD:BB:DD.F`.

use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A PCI function address (segment/domain, bus, device, function).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment (domain).
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl Bdf {
    /// Builds an address; `device` is masked to 5 bits and `function` to 3 as in a devfn.
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Bdf {
        Bdf {
            domain,
            bus,
            device: device & 0x1f,
            function: function & 0x7,
        }
    }

    /// The 8-bit device/function number (`device << 3 | function`).
    pub fn devfn(&self) -> u8 {
        (self.device << 3) | self.function
    }

    /// `BB:DD.F`, the short form `lspci` prints.
    pub fn short(&self) -> String {
        format!("{:02x}:{:02x}.{:x}", self.bus, self.device, self.function)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for Bdf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A PCI address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdfError(pub String);

impl fmt::Display for BdfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a PCI address: {:?} (expected DDDD:BB:DD.F or BB:DD.F, hexadecimal)",
            self.0
        )
    }
}

impl std::error::Error for BdfError {}

fn hex<T: TryFrom<u64>>(s: &str, max_digits: usize) -> Option<T> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    T::try_from(u64::from_str_radix(s, 16).ok()?).ok()
}

impl FromStr for Bdf {
    type Err = BdfError;

    /// Accepts `DDDD:BB:DD.F` and `BB:DD.F` (domain 0), hexadecimal, as sysfs and `lspci` print.
    fn from_str(s: &str) -> Result<Bdf, BdfError> {
        let err = || BdfError(s.to_string());
        let (head, func) = s.rsplit_once('.').ok_or_else(err)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, dev) = match parts.as_slice() {
            [d, b, v] => (hex::<u32>(d, 8).ok_or_else(err)?, *b, *v),
            [b, v] => (0, *b, *v),
            _ => return Err(err()),
        };
        let bus = hex::<u8>(bus, 2).ok_or_else(err)?;
        let dev = hex::<u8>(dev, 2).ok_or_else(err)?;
        let func = hex::<u8>(func, 1).ok_or_else(err)?;
        if dev > 0x1f || func > 7 {
            return Err(err());
        }
        Ok(Bdf::new(domain, bus, dev, func))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_prints_the_long_one() {
        let a: Bdf = "0000:03:00.0".parse().unwrap();
        assert_eq!(a, Bdf::new(0, 3, 0, 0));
        let b: Bdf = "1c:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:1c:1f.7");
        assert_eq!(b.devfn(), 0xff);
        let c: Bdf = "10000:e1:00.1".parse().unwrap();
        assert_eq!(c.to_string(), "10000:e1:00.1");
        assert_eq!(c.short(), "e1:00.1");
    }

    #[test]
    fn rejects_malformed_addresses() {
        for s in [
            "",
            "03:00",
            "0000:03:20.0",
            "0000:03:00.8",
            "0000:103:00.0",
            "x:00.0",
            "00.0",
        ] {
            assert!(s.parse::<Bdf>().is_err(), "{s:?} parsed");
        }
    }
}
