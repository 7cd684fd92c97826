//! Configuration errors: `FILE:LINE:COLUMN: FIELD.PATH: message`.

use std::fmt;
use std::path::PathBuf;

/// One problem in a configuration file, pointing at the key or value that causes it.
///
/// Displays as `file:line:column: path: message`, for example
/// `target.yaml:14:15: subsystems[0].namespaces[1].bdev: no bdev named "nvme9"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to [`crate::parse_str`] / [`crate::load_file`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// The field path, e.g. `subsystems[0].namespaces[1].bdev`; `<document>` for the root.
    pub path: String,
    /// What is wrong, without the location prefix.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// Why a configuration could not be loaded.
///
/// `Display` is the complete, user-facing text. For [`ConfigError::Invalid`] that is every
/// diagnostic, one per line, in file order. YAML syntax errors and errors in the shape of the
/// file (unknown key, wrong type, missing required field) stop reading at the first one, so
/// they come alone; the checks on values that follow (ranges, references, uniqueness, …) are
/// all reported together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: `cannot read target.yaml: No such file or directory`.
    #[error("cannot read {}: {}", path.display(), io_message(error))]
    Io {
        /// The path as given to [`crate::load_file`].
        path: PathBuf,
        /// The underlying error (its text is already part of this error's message).
        error: std::io::Error,
    },
    /// The text was read but is not a valid configuration. Never empty.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The diagnostics of an [`ConfigError::Invalid`] error (empty for I/O errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            ConfigError::Io { .. } => &[],
        }
    }
}

/// `No such file or directory (os error 2)` → `No such file or directory`.
fn io_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

fn join_lines(d: &[Diagnostic]) -> String {
    d.iter()
        .map(Diagnostic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
