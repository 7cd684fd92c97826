//! Byte sizes: an integer (bytes) or a string with a binary unit.
//!
//! Accepted: `4096`, `"4096"`, `512B`, `4KiB`, `128 KiB`, `1GiB`, `2TiB`, `1PiB`, `1EiB` (units
//! are matched case-insensitively, one optional space between number and unit). Decimal units
//! (`KB`, `MB`, `GB`, ...) and bare `K`/`M`/`G` are **rejected** on purpose: in storage "1GB"
//! is 10^9 bytes to some people and 2^30 to others, and a wrong guess silently changes a device
//! size. Fractions (`1.5GiB`) and negative values are rejected too.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;

/// A size in bytes, as written in the YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

const UNITS: [(&str, u32); 7] = [
    ("b", 0),
    ("kib", 10),
    ("mib", 20),
    ("gib", 30),
    ("tib", 40),
    ("pib", 50),
    ("eib", 60),
];

const DECIMAL_UNITS: [(&str, &str); 14] = [
    ("k", "KiB"),
    ("kb", "KiB"),
    ("m", "MiB"),
    ("mb", "MiB"),
    ("g", "GiB"),
    ("gb", "GiB"),
    ("t", "TiB"),
    ("tb", "TiB"),
    ("p", "PiB"),
    ("pb", "PiB"),
    ("e", "EiB"),
    ("eb", "EiB"),
    ("ki", "KiB"),
    ("mi", "MiB"),
];

/// Parses a size string; the error text is a complete message.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("invalid size \"\": expected bytes or a number with a unit like 4KiB".into());
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, rest) = s.split_at(split);
    let unit = rest.strip_prefix(' ').unwrap_or(rest);
    if num.is_empty() || rest.starts_with('.') || rest.starts_with(',') {
        return Err(format!(
            "invalid size {text:?}: expected a whole number of bytes or a whole number with a \
             binary unit (B, KiB, MiB, GiB, TiB, PiB), e.g. 4KiB or 1GiB"
        ));
    }
    let value: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let shift = if unit.is_empty() {
        0
    } else {
        let lower = unit.to_ascii_lowercase();
        match UNITS.iter().find(|(u, _)| *u == lower) {
            Some((_, shift)) => *shift,
            None => {
                return Err(match DECIMAL_UNITS.iter().find(|(u, _)| *u == lower) {
                    Some((_, binary)) => format!(
                        "invalid size {text:?}: unit {unit:?} is ambiguous (decimal or binary?); \
                         write {num}{binary} for a binary size, or the exact number of bytes"
                    ),
                    None => format!(
                        "invalid size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, \
                         TiB, PiB or EiB)"
                    ),
                })
            }
        }
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size {text:?}: too large (more than 2^64 bytes)"))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: bytes, or a string like \"4KiB\" or \"1GiB\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4kib"), Ok(4096));
        assert_eq!(parse_size("128 KiB"), Ok(128 * 1024));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("2PiB"), Ok(2 << 50));
        assert_eq!(parse_size(" 1GiB "), Ok(1 << 30));
        assert_eq!(parse_size("15EiB"), Ok(15 << 60));
    }

    #[test]
    fn rejected() {
        for (text, needle) in [
            ("", "invalid size"),
            ("abc", "whole number"),
            ("1.5GiB", "whole number"),
            ("-4KiB", "whole number"),
            ("4KB", "ambiguous"),
            ("4 MB", "ambiguous"),
            ("1G", "ambiguous"),
            ("4 bananas", "unknown unit"),
            ("4  KiB", "unknown unit"),
            ("16EiB", "too large"),
            ("99999999999999999999999", "too large"),
        ] {
            let e = parse_size(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
