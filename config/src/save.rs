//! Writing a [`Config`] back as YAML in the settled shape (`save_config`).
//!
//! Every field is written out, defaults included, so the file says everything the daemon runs
//! with; [`crate::parse_str`] of the text gives back an equal `Config` (with
//! `serial_is_default` false for a subsystem whose serial was defaulted: the serial is written).
//! Strings are written as YAML double-quoted scalars so that no value (an NQN with `:`, a serial
//! like `0001`, a path with `#`) is ever re-typed or cut by the reader.

use std::fmt::Write;

use crate::{BdevKind, Config};

/// A YAML double-quoted scalar: `\` and `"` escaped, control characters as `\xNN` (YAML 1.2,
/// 5.7 Escaped Characters), everything else as is.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// RFC 4122 text form of a UUID in byte order (what the `uuid` field takes).
pub fn uuid_text(u: &[u8; 16]) -> String {
    let h = hex(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The configuration as YAML text that [`crate::parse_str`] reads back to an equal `Config`.
pub fn to_yaml(cfg: &Config) -> String {
    let mut y = String::new();
    // `writeln!` into a String cannot fail.
    macro_rules! w {
        ($($t:tt)*) => {{ let _ = writeln!(y, $($t)*); }};
    }
    w!("# nvmfd configuration written by save_config (every field, defaults included).");
    w!("reactors:");
    let cores: Vec<String> = cfg.reactors.cores.iter().map(|c| c.to_string()).collect();
    w!("  cores: [{}]", cores.join(", "));
    w!("  idle_sleep_us: {}", cfg.reactors.idle_sleep_us);
    let t = &cfg.transports.tcp;
    w!("transports:");
    w!("  tcp:");
    w!("    in_capsule_data_size: {}", t.in_capsule_data_size);
    w!("    max_io_size: {}", t.max_io_size);
    w!("    max_queue_depth: {}", t.max_queue_depth);
    w!("    max_io_queues: {}", t.max_io_queues);
    w!("    header_digest: {}", t.header_digest);
    w!("    data_digest: {}", t.data_digest);
    w!("    c2h_success: {}", t.c2h_success);
    w!("    buffer_pool_size: {}", t.buffer_pool_size);
    let r = &cfg.transports.rdma;
    w!("  rdma:");
    w!("    in_capsule_data_size: {}", r.in_capsule_data_size);
    w!("    max_io_size: {}", r.max_io_size);
    w!("    max_queue_depth: {}", r.max_queue_depth);
    w!("    max_io_queues: {}", r.max_io_queues);
    w!("    srq_depth: {}", r.srq_depth);
    w!("    buffer_pool_size: {}", r.buffer_pool_size);
    if cfg.bdevs.is_empty() {
        w!("bdevs: []");
    } else {
        w!("bdevs:");
    }
    for b in &cfg.bdevs {
        w!("  - name: {}", q(&b.name));
        if let Some(u) = &b.uuid {
            w!("    uuid: {}", uuid_text(u));
        }
        match &b.kind {
            BdevKind::Malloc { size, block_size } => {
                w!("    malloc: {{ size: {size}, block_size: {block_size} }}");
            }
            BdevKind::Null { size, block_size } => {
                w!("    null: {{ size: {size}, block_size: {block_size} }}");
            }
            BdevKind::Uring {
                path,
                block_size,
                passthrough,
            } => {
                w!("    uring:");
                w!("      path: {}", q(&path.to_string_lossy()));
                if let Some(bs) = block_size {
                    w!("      block_size: {bs}");
                }
                if *passthrough {
                    w!("      passthrough: true");
                }
            }
            BdevKind::Nvme {
                pci,
                namespace,
                io_timeout_ms,
            } => {
                w!(
                    "    nvme: {{ pci: {}, namespace: {namespace}, io_timeout_ms: {io_timeout_ms} }}",
                    q(pci)
                );
            }
        }
    }
    if cfg.subsystems.is_empty() {
        w!("subsystems: []");
    } else {
        w!("subsystems:");
    }
    for s in &cfg.subsystems {
        w!("  - nqn: {}", q(&s.nqn));
        w!("    serial: {}", q(&s.serial));
        w!("    model: {}", q(&s.model));
        w!("    allow_any_host: {}", s.allow_any_host);
        if s.hosts.is_empty() {
            w!("    hosts: []");
        } else {
            w!("    hosts:");
            for h in &s.hosts {
                w!("      - {}", q(h));
            }
        }
        w!("    cntlid_min: {}", s.cntlid_min);
        w!("    cntlid_max: {}", s.cntlid_max);
        w!("    max_namespaces: {}", s.max_namespaces);
        w!("    p2p: {}", s.p2p);
        if s.namespaces.is_empty() {
            w!("    namespaces: []");
        } else {
            w!("    namespaces:");
        }
        for n in &s.namespaces {
            w!("      - nsid: {}", n.nsid);
            w!("        bdev: {}", q(&n.bdev));
            if let Some(u) = &n.uuid {
                w!("        uuid: {}", uuid_text(u));
            }
            if let Some(g) = &n.nguid {
                w!("        nguid: {}", q(&hex(g)));
            }
            if let Some(e) = &n.eui64 {
                w!("        eui64: {}", q(&hex(e)));
            }
            // Inherited values are left to inheritance (the same value on reading back).
            if n.p2p != s.p2p {
                w!("        p2p: {}", n.p2p);
            }
        }
        if s.listeners.is_empty() {
            w!("    listeners: []");
        } else {
            w!("    listeners:");
        }
        for l in &s.listeners {
            w!(
                "      - {{ transport: {}, address: {}, port: {} }}",
                l.transport,
                q(&l.address.to_string()),
                l.port
            );
        }
    }
    w!("discovery:");
    w!("  enabled: {}", cfg.discovery.enabled);
    w!("state_dir: {}", q(&cfg.state_dir.to_string_lossy()));
    w!("rpc:");
    w!("  socket: {}", q(&cfg.rpc.socket.to_string_lossy()));
    match cfg.metrics.listen {
        Some(a) => {
            w!("metrics:");
            w!("  listen: {}", q(&a.to_string()));
        }
        None => w!("metrics: {{}}"),
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(q("a:b"), "\"a:b\"");
        assert_eq!(q("x\"y\\z"), "\"x\\\"y\\\\z\"");
        assert_eq!(q("\n"), "\"\\x0a\"");
    }

    #[test]
    fn uuid_form() {
        let mut u = [0u8; 16];
        for (i, b) in u.iter_mut().enumerate() {
            *b = i as u8 * 17;
        }
        assert_eq!(uuid_text(&u), "00112233-4455-6677-8899-aabbccddeeff");
    }
}
