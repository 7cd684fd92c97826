//! Making what peers send safe to log, and keeping what they can trigger from flooding the log.
//!
//! Every string that comes off the wire (NQNs in Connect data, anything quoted from a PDU) goes
//! through [`escape`] before it reaches a log line or an error message: a host must not be able to
//! write newlines (forged log lines) or terminal escape sequences into the daemon's log. Log lines a
//! remote host can cause over and over (digest failures, malformed PDUs, refused connects) go through
//! a [`RateLimit`]: the first few are written, then only a periodic count.

use std::fmt;

/// Longest escaped output, in input characters; the rest is summarised as `...(+N chars)`. Every
/// NVMe string field is far shorter (an NQN is at most 223 bytes).
const MAX_CHARS: usize = 256;

/// A peer-supplied string, displayed with everything but printable ASCII escaped: `\\`, `\"`,
/// `\n`, `\r`, `\t`, and `\u{XXXX}` for every other character (control characters, ESC, non-ASCII,
/// Unicode direction overrides). Shown inside a `%` tracing field it is one inert token.
pub struct Escaped<'a>(&'a str);

/// Wrap a peer-supplied string for logging (see [`Escaped`]).
pub fn escape(s: &str) -> Escaped<'_> {
    Escaped(s)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for (n, c) in self.0.chars().enumerate() {
            if n == MAX_CHARS {
                let rest = self.0.chars().count() - MAX_CHARS;
                return write!(f, "...(+{rest} chars)");
            }
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                ' '..='~' => f.write_char(c)?,
                _ => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A log budget for events a peer can trigger: the first `burst` events are logged, then one in
/// `every` with the count of those suppressed since the last one logged. Plain integers: one owner
/// (a connection, a reactor), no clock, no allocation.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    burst: u32,
    every: u32,
    seen: u64,
    suppressed: u64,
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDecision {
    /// Log it normally.
    Log,
    /// Log it with this many earlier events left unlogged since the last one written.
    LogWithSuppressed(u64),
    /// Do not log it.
    Suppress,
}

impl RateLimit {
    /// Log the first `burst` events, then every `every`-th (at least 1).
    pub const fn new(burst: u32, every: u32) -> Self {
        RateLimit {
            burst,
            every: if every == 0 { 1 } else { every },
            seen: 0,
            suppressed: 0,
        }
    }

    /// Count one event and say whether to log it.
    pub fn event(&mut self) -> LogDecision {
        self.seen += 1;
        if self.seen <= self.burst as u64 {
            return LogDecision::Log;
        }
        if (self.seen - self.burst as u64).is_multiple_of(self.every as u64) {
            let s = std::mem::take(&mut self.suppressed);
            return LogDecision::LogWithSuppressed(s);
        }
        self.suppressed += 1;
        LogDecision::Suppress
    }

    /// Events counted so far, and how many of them were not logged and not yet reported.
    pub fn counts(&self) -> (u64, u64) {
        (self.seen, self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_passes_and_everything_else_is_escaped() {
        assert_eq!(
            escape("nqn.2014-08.org.nvmexpress:uuid:1").to_string(),
            "nqn.2014-08.org.nvmexpress:uuid:1"
        );
        let forged = "nqn.x\n2026-12-01T00:00:00Z  INFO fake line\x1b[31mred\u{202e}\"\\";
        let out = escape(forged).to_string();
        assert_eq!(
            out,
            "nqn.x\\n2026-12-01T00:00:00Z  INFO fake line\\u{1b}[31mred\\u{202e}\\\"\\\\"
        );
        assert!(!out.chars().any(|c| c.is_control()));
        assert_eq!(format!("{:?}", escape("a\tb")), "\"a\\tb\"");
    }

    #[test]
    fn long_strings_are_cut_with_a_count() {
        let s = "a".repeat(MAX_CHARS + 10);
        let out = escape(&s).to_string();
        assert_eq!(out, format!("{}...(+10 chars)", "a".repeat(MAX_CHARS)));
    }

    #[test]
    fn rate_limit_logs_a_burst_then_summaries() {
        let mut r = RateLimit::new(3, 10);
        let d: Vec<_> = (0..25).map(|_| r.event()).collect();
        assert!(d[..3].iter().all(|&x| x == LogDecision::Log));
        assert!(d[3..12].iter().all(|&x| x == LogDecision::Suppress));
        assert_eq!(d[12], LogDecision::LogWithSuppressed(9));
        assert!(d[13..22].iter().all(|&x| x == LogDecision::Suppress));
        assert_eq!(d[22], LogDecision::LogWithSuppressed(9));
        assert_eq!(r.counts(), (25, 2));
    }
}
