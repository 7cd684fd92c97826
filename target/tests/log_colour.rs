//! The human log format colours its output only on a terminal: stderr redirected to a file or a
//! pipe (the journal is one) gets plain text.

use std::process::Command;

#[test]
fn human_logs_to_a_pipe_have_no_escape_codes() {
    // A missing config file is logged as an error (through the tracing subscriber) and ends the
    // daemon at once.
    let out = Command::new(env!("CARGO_BIN_EXE_nvmfd"))
        .args(["--config", "/nonexistent/nvmfd-log-colour-test.yaml"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run nvmfd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nvmfd-log-colour-test.yaml"),
        "the error is logged: {err:?}"
    );
    assert!(
        !out.stderr.contains(&0x1b),
        "ANSI escape codes in redirected logs: {err:?}"
    );
}
