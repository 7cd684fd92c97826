//! Field paths such as `subsystems[0].namespaces[1].bdev`, used in every error message.

use std::fmt;

/// One step of a [`FieldPath`]: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// The path from the document root to a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(Vec<Seg>);

impl FieldPath {
    /// The document root (displayed as `<document>`).
    pub(crate) fn root() -> Self {
        Self::default()
    }

    /// This path extended by a mapping key.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(key.to_owned()));
        Self(v)
    }

    /// This path extended by a list index.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(index));
        Self(v)
    }

    pub(crate) fn push(&mut self, seg: Seg) {
        self.0.push(seg);
    }

    pub(crate) fn segments(&self) -> &[Seg] {
        &self.0
    }

    /// The key this path ends with ("" when it ends with an index or is the root).
    pub(crate) fn last_key(&self) -> &str {
        match self.0.last() {
            Some(Seg::Key(k)) => k,
            _ => "",
        }
    }
}

/// Keys made only of these characters are printed bare; others are quoted.
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("<document>");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        assert_eq!(FieldPath::root().to_string(), "<document>");
        let p = FieldPath::root()
            .key("subsystems")
            .index(0)
            .key("namespaces")
            .index(1)
            .key("bdev");
        assert_eq!(p.to_string(), "subsystems[0].namespaces[1].bdev");
        assert_eq!(
            FieldPath::root().key("reactors").key("a b").to_string(),
            "reactors.\"a b\""
        );
    }
}
