//! Helpers shared by the integration tests.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use nvmfd_config::{parse_str, Config, Diagnostic};

/// Parses `text` as `t.yaml`, panicking with the error text on failure.
pub fn ok(text: &str) -> Config {
    match parse_str(text, "t.yaml") {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}\n--- input ---\n{text}"),
    }
}

/// Parses `text` as `t.yaml` and returns the diagnostics, panicking if it parsed.
pub fn diags(text: &str) -> Vec<Diagnostic> {
    match parse_str(text, "t.yaml") {
        Ok(c) => panic!("expected an error, got {c:#?}\n--- input ---\n{text}"),
        Err(e) => {
            let d = e.diagnostics().to_vec();
            assert!(!d.is_empty(), "no diagnostics in {e:?}");
            // Display is exactly the diagnostics, one per line.
            let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
            assert_eq!(e.to_string(), shown.join("\n"));
            d
        }
    }
}

/// Asserts that parsing `text` fails with exactly one diagnostic at `line:column` for `path`
/// whose message contains `needle`; returns the full `Display` text.
#[track_caller]
pub fn err1(text: &str, line: usize, column: usize, path: &str, needle: &str) -> String {
    let d = diags(text);
    assert_eq!(d.len(), 1, "expected one diagnostic, got {d:#?}");
    let d = &d[0];
    assert_eq!(
        (d.file.as_str(), d.line, d.column, d.path.as_str()),
        ("t.yaml", line, column, path),
        "wrong place: {d}"
    );
    assert!(
        d.message.contains(needle),
        "message {:?} lacks {needle:?}",
        d.message
    );
    d.to_string()
}

/// A valid base: one bdev, one subsystem using it, one listener.
pub const BASE: &str = "\
bdevs:
  - name: ram0
    malloc: { size: 1MiB }
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:a
    namespaces:
      - bdev: ram0
    listeners:
      - address: 127.0.0.1
";
