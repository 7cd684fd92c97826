//! Every error names `file:line:column: path: message`; these tests pin the exact spot.

mod common;

use common::{diags, err1, ok, BASE};

// ---------------------------------------------------------------- syntax and shape

#[test]
fn syntax_error() {
    let shown = err1(
        "subsystems:\n  - nqn: nqn.2026-11.io.nvmfd:a\n    hosts: [nqn.2014-08.org.nvmexpress:uuid:1\n",
        3,
        12,
        "subsystems[0].hosts",
        "unclosed bracket",
    );
    assert!(
        shown.starts_with("t.yaml:3:12: subsystems[0].hosts: YAML syntax error"),
        "{shown}"
    );
    err1(
        "subsystems:\n  - nqn: a\n   bad: x\n",
        3,
        4,
        "subsystems",
        "YAML syntax error",
    );
    err1("a: b: c\n", 1, 5, "<document>", "YAML syntax error");
}

#[test]
fn second_document_is_an_error() {
    err1(
        "discovery: {}\n---\ndiscovery: {}\n",
        2,
        1,
        "<document>",
        "one YAML document",
    );
}

#[test]
fn duplicate_key() {
    let shown = err1(
        "discovery:\n  enabled: true\n  enabled: false\n",
        3,
        3,
        "discovery.enabled",
        "duplicate key `enabled` (first given at line 2, column 3)",
    );
    assert_eq!(
        shown,
        "t.yaml:3:3: discovery.enabled: duplicate key `enabled` (first given at line 2, column 3)"
    );
}

#[test]
fn unknown_keys() {
    let shown = err1(
        "reactors:\n  cores: [0]\n  corez: [1]\n",
        3,
        3,
        "reactors.corez",
        "unknown field `corez`",
    );
    assert_eq!(
        shown,
        "t.yaml:3:3: reactors.corez: unknown field `corez` (expected one of `cores`, `count`, `idle_sleep_us`)"
    );
    err1(
        "discover: {}\n",
        1,
        1,
        "discover",
        "unknown field `discover`",
    );
    err1(
        &format!("{BASE}    namespace: []\n"),
        10,
        5,
        "subsystems[0].namespace",
        "unknown field `namespace`",
    );
    err1(
        "bdevs:\n  - name: x\n    malloc: { size: 1MiB, blocksize: 512 }\n",
        3,
        27,
        "bdevs[0].malloc.blocksize",
        "unknown field `blocksize`",
    );
    err1(
        &BASE.replace(
            "      - address: 127.0.0.1\n",
            "      - { address: 127.0.0.1, prot: 1 }\n",
        ),
        9,
        31,
        "subsystems[0].listeners[0].prot",
        "unknown field `prot`",
    );
    // The YAML 1.1 "no" spelling is just a key here, not `false`.
    err1("no: 1\n", 1, 1, "no", "unknown field `no`");
}

#[test]
fn wrong_types() {
    err1(
        "reactors:\n  cores: [0, one]\n",
        2,
        14,
        "reactors.cores[1]",
        "expected an integer, found string \"one\"",
    );
    err1(
        "transports: 5\n",
        1,
        13,
        "transports",
        "expected a mapping, found integer 5",
    );
    err1(
        "bdevs: {}\n",
        1,
        8,
        "bdevs",
        "expected a list, found a mapping",
    );
    err1(
        "- a\n",
        1,
        1,
        "<document>",
        "expected a mapping, found a list",
    );
    err1(
        "discovery:\n  enabled: yes\n",
        2,
        12,
        "discovery.enabled",
        "expected `true` or `false`, found string \"yes\"",
    );
    err1(
        "transports:\n  tcp:\n    max_queue_depth: \"64\"\n",
        3,
        22,
        "transports.tcp.max_queue_depth",
        "expected an integer, found string \"64\"",
    );
    err1(
        "transports:\n  tcp:\n    header_digest: sometimes\n",
        3,
        20,
        "transports.tcp.header_digest",
        "unknown value `sometimes` (expected one of `allowed`, `required`, `off`)",
    );
    err1(
        "subsystems:\n  - nqn: [a]\n",
        2,
        10,
        "subsystems[0].nqn",
        "expected a string, found a list",
    );
    err1(
        "reactors: { idle_sleep_us: -1 }\n",
        1,
        28,
        "reactors.idle_sleep_us",
        "integer -1 is out of range (0..=4294967295)",
    );
    err1(
        "bdevs:\n  - name: x\n    null: { size: 1.5 }\n",
        3,
        19,
        "bdevs[0].null.size",
        "expected a size",
    );
}

#[test]
fn missing_required_fields() {
    // Points at the mapping that lacks the field.
    err1(
        "subsystems:\n  - serial: \"1\"\n    model: m\n",
        2,
        5,
        "subsystems[0].nqn",
        "missing required field `nqn`",
    );
    err1(
        "bdevs:\n  - malloc: { size: 1MiB }\n",
        2,
        5,
        "bdevs[0].name",
        "missing required field `name`",
    );
    err1(
        "bdevs:\n  - name: x\n    malloc: { block_size: 512 }\n",
        3,
        13,
        "bdevs[0].malloc.size",
        "missing required field `size`",
    );
    err1(
        "bdevs:\n  - name: x\n    uring: {}\n",
        3,
        12,
        "bdevs[0].uring.path",
        "missing required field `path`",
    );
    err1(
        &BASE.replace("      - bdev: ram0\n", "      - nsid: 1\n"),
        7,
        9,
        "subsystems[0].namespaces[0].bdev",
        "missing required field `bdev`",
    );
    err1(
        &BASE.replace("      - address: 127.0.0.1\n", "      - port: 4420\n"),
        9,
        9,
        "subsystems[0].listeners[0].address",
        "missing required field `address`",
    );
}

// ---------------------------------------------------------------- sizes

#[test]
fn bad_sizes() {
    let at = |size: &str| format!("bdevs:\n  - name: x\n    null: {{ size: {size} }}\n");
    err1(
        &at("4KB"),
        3,
        19,
        "bdevs[0].null.size",
        "unit \"KB\" is ambiguous",
    );
    err1(&at("1G"), 3, 19, "bdevs[0].null.size", "write 1GiB");
    err1(
        &at("lots"),
        3,
        19,
        "bdevs[0].null.size",
        "invalid size \"lots\"",
    );
    err1(
        &at("4 bananas"),
        3,
        19,
        "bdevs[0].null.size",
        "unknown unit \"bananas\"",
    );
    err1(&at("1.5GiB"), 3, 19, "bdevs[0].null.size", "whole number");
    err1(
        &at("-4096"),
        3,
        19,
        "bdevs[0].null.size",
        "must not be negative",
    );
    err1(&at("16EiB"), 3, 19, "bdevs[0].null.size", "too large");
    err1(
        &at("[4096]"),
        3,
        19,
        "bdevs[0].null.size",
        "expected a size",
    );
}

// ---------------------------------------------------------------- not supported yet

#[test]
fn rdma_transport_fields_and_listeners() {
    let cfg = nvmfd_config::parse_str(
        &BASE.replace(
            "      - address: 127.0.0.1\n",
            "      - { transport: rdma, address: 127.0.0.1 }\n      - { address: 127.0.0.1 }\n",
        )
        .replace(
            "bdevs:",
            "transports:\n  rdma: { srq_depth: 512, max_queue_depth: 64, in_capsule_data_size: 8KiB }\nbdevs:",
        ),
        "t.yaml",
    )
    .unwrap();
    let r = &cfg.transports.rdma;
    assert_eq!(
        (r.srq_depth, r.max_queue_depth, r.in_capsule_data_size),
        (512, 64, 8192)
    );
    assert_eq!(r.max_io_size, 128 * 1024, "default");
    let l = &cfg.subsystems[0].listeners;
    assert_eq!(l[0].transport, nvmfd_config::TransportKind::Rdma);
    assert_eq!(l[1].transport, nvmfd_config::TransportKind::Tcp);
    err1(
        "transports:\n  rdma:\n    srq_depth: 1\n",
        3,
        16,
        "transports.rdma.srq_depth",
        "srq_depth must be between 16 and 65536 (got 1)",
    );
    err1(
        "transports:\n  rdma:\n    in_capsule_data_size: 128KiB\n",
        3,
        27,
        "transports.rdma.in_capsule_data_size",
        "at most 64KiB",
    );
}

#[test]
fn nvme_bdev_fields() {
    let cfg = nvmfd_config::parse_str(
        "bdevs:\n  - name: ssd0\n    nvme: { pci: \"03:00.0\" }\n  - name: ssd1\n    nvme: { pci: \"0000:AB:1F.7\", namespace: 3, io_timeout_ms: 1500 }\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(
        cfg.bdevs[0].kind,
        nvmfd_config::BdevKind::Nvme {
            pci: "0000:03:00.0".into(),
            namespace: 1,
            io_timeout_ms: 30_000,
        }
    );
    assert_eq!(
        cfg.bdevs[1].kind,
        nvmfd_config::BdevKind::Nvme {
            pci: "0000:ab:1f.7".into(),
            namespace: 3,
            io_timeout_ms: 1500,
        }
    );
}

/// `io_timeout_ms` survives `to_yaml` (the live configuration save), default and set.
#[test]
fn nvme_io_timeout_round_trips() {
    let text = "bdevs:\n  - name: ssd0\n    nvme: { pci: \"03:00.0\" }\n  - name: ssd1\n    nvme: { pci: \"03:00.0\", namespace: 2, io_timeout_ms: 250 }\n";
    let cfg = nvmfd_config::parse_str(text, "t.yaml").unwrap();
    let saved = nvmfd_config::to_yaml(&cfg);
    assert!(saved.contains("io_timeout_ms: 30000"), "{saved}");
    assert!(saved.contains("io_timeout_ms: 250"), "{saved}");
    let again = nvmfd_config::parse_str(&saved, "t.yaml").unwrap();
    let kinds =
        |c: &nvmfd_config::Config| c.bdevs.iter().map(|b| b.kind.clone()).collect::<Vec<_>>();
    assert_eq!(kinds(&again), kinds(&cfg));
}

#[test]
fn nvme_bdev_bad_values() {
    err1(
        "bdevs:\n  - name: ssd0\n    nvme: { pci: \"0000:03:00\", namespace: 1 }\n",
        3,
        18,
        "bdevs[0].nvme.pci",
        "is not a PCI address (DDDD:BB:DD.F",
    );
    err1(
        "bdevs:\n  - name: ssd0\n    nvme: { pci: \"0000:03:20.0\" }\n",
        3,
        18,
        "bdevs[0].nvme.pci",
        "is not a PCI address",
    );
    err1(
        "bdevs:\n  - name: ssd0\n    nvme: { pci: \"0000:03:00.0\", namespace: 0 }\n",
        3,
        45,
        "bdevs[0].nvme.namespace",
        "namespace 0 is not a valid NSID",
    );
    err1(
        "bdevs:\n  - name: ssd0\n    nvme: { namespace: 1 }\n",
        3,
        11,
        "bdevs[0].nvme.pci",
        "missing required field `pci`",
    );
    // io_timeout_ms: 0 is refused (no "off"), so is more than an hour, and a non-number.
    err1(
        "bdevs:\n  - name: ssd0\n    nvme:\n      pci: \"0000:03:00.0\"\n      io_timeout_ms: 0\n",
        5,
        22,
        "bdevs[0].nvme.io_timeout_ms",
        "io_timeout_ms 0 is out of range (1..=3600000 ms",
    );
    err1(
        "bdevs:\n  - name: ssd0\n    nvme: { pci: \"0000:03:00.0\", io_timeout_ms: 3600001 }\n",
        3,
        49,
        "bdevs[0].nvme.io_timeout_ms",
        "io_timeout_ms 3600001 is out of range",
    );
    err1(
        "bdevs:\n  - name: ssd0\n    nvme: { pci: \"0000:03:00.0\", io_timeout_ms: 1s }\n",
        3,
        49,
        "bdevs[0].nvme.io_timeout_ms",
        "expected an integer",
    );
}

#[test]
fn uring_passthrough_takes_no_block_size() {
    err1(
        "bdevs:\n  - name: ng0\n    uring: { path: /dev/ng0n1, passthrough: true, block_size: 4096 }\n",
        3,
        51,
        "bdevs[0].uring.block_size",
        "block_size cannot be set with `passthrough: true`",
    );
    err1(
        "bdevs:\n  - name: ng0\n    uring: { path: /dev/ng0n1, passthrough: 1 }\n",
        3,
        45,
        "bdevs[0].uring.passthrough",
        "expected `true` or `false`",
    );
}

#[test]
fn p2p_bad_values() {
    err1(
        &format!("{BASE}    p2p: always\n"),
        10,
        10,
        "subsystems[0].p2p",
        "unknown value `always` (expected one of `auto`, `off`, `required`)",
    );
    err1(
        &BASE.replace(
            "      - bdev: ram0\n",
            "      - bdev: ram0\n        p2p: true\n",
        ),
        8,
        14,
        "subsystems[0].namespaces[0].p2p",
        "unknown value `true`",
    );
    err1(
        &format!("{BASE}    p2p: [auto]\n"),
        10,
        10,
        "subsystems[0].p2p",
        "expected",
    );
}

// ---------------------------------------------------------------- reactors

#[test]
fn cores_and_count_together() {
    let shown = err1(
        "reactors:\n  cores: [0]\n  count: 1\n",
        3,
        3,
        "reactors.count",
        "give either `cores` or `count`, not both",
    );
    assert_eq!(
        shown,
        "t.yaml:3:3: reactors.count: give either `cores` or `count`, not both"
    );
}

#[test]
fn bad_cores() {
    err1(
        "reactors: { count: 0 }\n",
        1,
        20,
        "reactors.count",
        "at least 1",
    );
    err1(
        "reactors: { cores: [] }\n",
        1,
        20,
        "reactors.cores",
        "at least one core",
    );
    err1(
        "reactors:\n  cores: [0, 0]\n",
        2,
        14,
        "reactors.cores[1]",
        "core 0 is already listed as cores[0]",
    );
    let shown = err1(
        "reactors:\n  cores:\n    - 0\n    - 100000\n",
        4,
        7,
        "reactors.cores[1]",
        "core 100000 does not exist (this machine has",
    );
    assert!(shown.starts_with("t.yaml:4:7: reactors.cores[1]: core 100000 does not exist"));
    let cpus = std::thread::available_parallelism().unwrap().get();
    err1(
        &format!("reactors: {{ count: {} }}\n", cpus + 1),
        1,
        20,
        "reactors.count",
        &format!("but core {cpus} does not exist"),
    );
}

// ---------------------------------------------------------------- transports

#[test]
fn tcp_rules() {
    let tcp = |body: &str| format!("transports:\n  tcp:\n    {body}\n");
    let p = "transports.tcp";
    err1(
        &tcp("max_io_size: 12KiB"),
        3,
        18,
        &format!("{p}.max_io_size"),
        "power of two from 4KiB to 8MiB (got 12KiB)",
    );
    err1(
        &tcp("max_io_size: 2KiB"),
        3,
        18,
        &format!("{p}.max_io_size"),
        "(got 2KiB)",
    );
    err1(
        &tcp("max_io_size: 16MiB"),
        3,
        18,
        &format!("{p}.max_io_size"),
        "(got 16MiB)",
    );
    err1(
        &tcp("in_capsule_data_size: 1000"),
        3,
        27,
        &format!("{p}.in_capsule_data_size"),
        "multiple of 16 bytes (got 1000 bytes)",
    );
    err1(
        &tcp("in_capsule_data_size: 256KiB\n    max_io_size: 1MiB"),
        3,
        27,
        &format!("{p}.in_capsule_data_size"),
        "at most 128KiB (got 256KiB)",
    );
    // The default in-capsule size (8KiB) exceeds a small max_io_size: points at the `tcp`
    // mapping, since the offending field was not written.
    let shown = err1(
        &tcp("max_io_size: 4KiB"),
        3,
        5,
        &format!("{p}.in_capsule_data_size"),
        "in_capsule_data_size (8KiB, the default) must not exceed max_io_size (4KiB)",
    );
    assert!(shown.starts_with("t.yaml:3:5: transports.tcp.in_capsule_data_size:"));
    err1(
        &tcp("buffer_pool_size: 64KiB"),
        3,
        23,
        &format!("{p}.buffer_pool_size"),
        "buffer_pool_size (64KiB) must hold at least one max_io_size buffer (128KiB, the default)",
    );
    err1(
        &tcp("max_queue_depth: 1"),
        3,
        22,
        &format!("{p}.max_queue_depth"),
        "between 2 and 1024 (got 1)",
    );
    err1(
        &tcp("max_queue_depth: 1025"),
        3,
        22,
        &format!("{p}.max_queue_depth"),
        "(got 1025)",
    );
    err1(
        &tcp("max_io_queues: 0"),
        3,
        20,
        &format!("{p}.max_io_queues"),
        "between 1 and 1024 (got 0)",
    );
    err1(
        &tcp("max_io_queues: 99999"),
        3,
        20,
        &format!("{p}.max_io_queues"),
        "(got 99999)",
    );
}

// ---------------------------------------------------------------- bdevs

#[test]
fn bdev_kind_count() {
    err1(
        "bdevs:\n  - name: x\n",
        2,
        5,
        "bdevs[0]",
        "a bdev needs exactly one kind: `malloc`, `null`, `uring` or `nvme`",
    );
    err1(
        "bdevs:\n  - name: x\n    malloc: { size: 1MiB }\n    uring: { path: /tmp/x }\n",
        4,
        5,
        "bdevs[0].uring",
        "exactly one kind, but `malloc` and `uring` are both given",
    );
    // An empty kind section counts as given (and then lacks its required field).
    err1(
        "bdevs:\n  - name: x\n    null:\n",
        3,
        9,
        "bdevs[0].null.size",
        "missing required field `size`",
    );
}

#[test]
fn bdev_names() {
    let two = |a: &str, b: &str| {
        format!("bdevs:\n  - name: {a}\n    null: {{ size: 1MiB }}\n  - name: {b}\n    null: {{ size: 1MiB }}\n")
    };
    err1(
        &two("a", "a"),
        4,
        11,
        "bdevs[1].name",
        "bdev name \"a\" is already used by bdevs[0]",
    );
    err1(
        &two("a", "\"\""),
        4,
        11,
        "bdevs[1].name",
        "must not be empty",
    );
    err1(
        &two("a", "\"b c\""),
        4,
        11,
        "bdevs[1].name",
        "may only contain letters, digits",
    );
    err1(
        &two("a", "b/c"),
        4,
        11,
        "bdevs[1].name",
        "may only contain letters, digits",
    );
    crate::common::ok(&two("a.b-c_D9", "x"));
}

#[test]
fn bdev_sizes_and_block_sizes() {
    let b = |kind: &str| format!("bdevs:\n  - name: x\n    {kind}\n");
    err1(
        &b("malloc: { size: 0 }"),
        3,
        21,
        "bdevs[0].malloc.size",
        "greater than 0",
    );
    err1(
        &b("malloc: { size: 6000 }"),
        3,
        21,
        "bdevs[0].malloc.size",
        "size 6000 bytes is not a multiple of block_size (4096, the default)",
    );
    err1(
        &b("null: { size: 1MiB, block_size: 1000 }"),
        3,
        37,
        "bdevs[0].null.block_size",
        "power of two from 512 to 65536 bytes (got 1000 bytes)",
    );
    err1(
        &b("null: { size: 1MiB, block_size: 256 }"),
        3,
        37,
        "bdevs[0].null.block_size",
        "(got 256 bytes)",
    );
    err1(
        &b("null: { size: 1MiB, block_size: 128KiB }"),
        3,
        37,
        "bdevs[0].null.block_size",
        "(got 128KiB)",
    );
    err1(
        &b("uring: { path: /x, block_size: 3000 }"),
        3,
        36,
        "bdevs[0].uring.block_size",
        "power of two",
    );
    err1(
        &b("uring: { path: \"\" }"),
        3,
        20,
        "bdevs[0].uring.path",
        "must not be empty",
    );
    crate::common::ok(&b("null: { size: 64KiB, block_size: 64KiB }"));
}

// ---------------------------------------------------------------- subsystems

const NS2: &str = "\
bdevs:
  - name: ram0
    malloc: { size: 1MiB }
  - name: ram1
    malloc: { size: 1MiB }
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:a
    namespaces:
      - nsid: 1
        bdev: ram0
      - nsid: 2
        bdev: nvme9
";

/// The nested case from the specification, exact to the column.
#[test]
fn unknown_bdev_in_nested_namespace() {
    let shown = err1(
        NS2,
        12,
        15,
        "subsystems[0].namespaces[1].bdev",
        "no bdev named \"nvme9\"",
    );
    assert_eq!(
        shown,
        "t.yaml:12:15: subsystems[0].namespaces[1].bdev: no bdev named \"nvme9\" (defined: ram0, ram1)"
    );
}

#[test]
fn bdev_backs_one_namespace_only() {
    err1(
        &NS2.replace("nvme9", "ram0"),
        12,
        15,
        "subsystems[0].namespaces[1].bdev",
        "bdev \"ram0\" already backs subsystems[0].namespaces[0]",
    );
    // Across subsystems too.
    let text = NS2.replace("nvme9", "ram1")
        + "  - nqn: nqn.2026-11.io.nvmfd:b\n    namespaces:\n      - bdev: ram1\n";
    err1(
        &text,
        15,
        15,
        "subsystems[1].namespaces[0].bdev",
        "bdev \"ram1\" already backs subsystems[0].namespaces[1]",
    );
}

#[test]
fn nsid_rules() {
    err1(
        &NS2.replace("nvme9", "ram1").replace("nsid: 2", "nsid: 1"),
        11,
        15,
        "subsystems[0].namespaces[1].nsid",
        "nsid 1 is already used by namespaces[0]",
    );
    err1(
        &NS2.replace("nvme9", "ram1").replace("nsid: 2", "nsid: 0"),
        11,
        15,
        "subsystems[0].namespaces[1].nsid",
        "nsid must be between 1 and 4294967294 (got 0)",
    );
    err1(
        &NS2.replace("nvme9", "ram1")
            .replace("nsid: 2", "nsid: 4294967295"),
        11,
        15,
        "subsystems[0].namespaces[1].nsid",
        "(got 4294967295)",
    );
    // A defaulted nsid (position + 1) colliding with an explicit one: points at the entry.
    err1(
        &NS2.replace("nvme9", "ram1")
            .replace("      - nsid: 1\n", "      - nsid: 2\n")
            .replace("      - nsid: 2\n        bdev: ram1", "      - bdev: ram1"),
        11,
        9,
        "subsystems[0].namespaces[1].nsid",
        "nsid 2 (the default, position + 1) is already used by namespaces[0]",
    );
}

/// `max_namespaces` is the highest NSID a subsystem reports (Identify Controller NN): a
/// namespace above it is refused, pointing at its nsid.
#[test]
fn nsid_within_max_namespaces() {
    let base = NS2.replace("nvme9", "ram1");
    assert_eq!(ok(&base).subsystems[0].max_namespaces, 32);
    err1(
        &base.replace("nsid: 2", "nsid: 33"),
        11,
        15,
        "subsystems[0].namespaces[1].nsid",
        "nsid 33 exceeds the subsystem's max_namespaces 32 (the default)",
    );
    let raised = base.replace("nsid: 2", "nsid: 33").replace(
        "    namespaces:\n",
        "    max_namespaces: 1024\n    namespaces:\n",
    );
    assert_eq!(ok(&raised).subsystems[0].max_namespaces, 1024);
    err1(
        &base.replace(
            "    namespaces:\n",
            "    max_namespaces: 1\n    namespaces:\n",
        ),
        12,
        15,
        "subsystems[0].namespaces[1].nsid",
        "nsid 2 exceeds the subsystem's max_namespaces 1,",
    );
    err1(
        &base.replace(
            "    namespaces:\n",
            "    max_namespaces: 0\n    namespaces:\n",
        ),
        8,
        21,
        "subsystems[0].max_namespaces",
        "max_namespaces must be between 1 and 4294967294 (got 0)",
    );
}

#[test]
fn nqn_rules() {
    let sub = |nqn: &str| format!("subsystems:\n  - nqn: {nqn}\n");
    err1(
        &sub("iqn.2026-11.io.x:a"),
        2,
        10,
        "subsystems[0].nqn",
        "must start with \"nqn.\"",
    );
    err1(
        &sub("\"nqn.2026-11.io.x:a b\""),
        2,
        10,
        "subsystems[0].nqn",
        "printable ASCII",
    );
    err1(
        &sub(&format!("nqn.{}", "x".repeat(220))),
        2,
        10,
        "subsystems[0].nqn",
        "NQN is 224 bytes long, at most 223",
    );
    err1(
        &sub("nqn.2014-08.org.nvmexpress.discovery"),
        2,
        10,
        "subsystems[0].nqn",
        "discovery service's NQN",
    );
    err1(
        "subsystems:\n  - nqn: nqn.2026-11.io.x:a\n  - nqn: nqn.2026-11.io.x:a\n",
        3,
        10,
        "subsystems[1].nqn",
        "NQN \"nqn.2026-11.io.x:a\" is already used by subsystems[0]",
    );
    crate::common::ok(&sub(&format!("nqn.{}", "x".repeat(219))));
}

#[test]
fn hosts_rules() {
    let base = "subsystems:\n  - nqn: nqn.2026-11.io.x:a\n    hosts:\n      - nqn.2014-08.org.nvmexpress:uuid:1\n";
    err1(
        &format!("{base}      - hostname\n"),
        5,
        9,
        "subsystems[0].hosts[1]",
        "\"hostname\" is not a valid NQN",
    );
    err1(
        &format!("{base}      - nqn.2014-08.org.nvmexpress:uuid:1\n"),
        5,
        9,
        "subsystems[0].hosts[1]",
        "already listed as hosts[0]",
    );
    err1(
        &format!("{base}    allow_any_host: true\n"),
        5,
        21,
        "subsystems[0].allow_any_host",
        "`allow_any_host: true` admits every host",
    );
}

#[test]
fn serial_and_model_rules() {
    let sub = |extra: &str| format!("subsystems:\n  - nqn: nqn.2026-11.io.x:a\n    {extra}\n");
    err1(
        &sub("serial: ABCDEFGHIJKLMNOPQRSTU"),
        3,
        13,
        "subsystems[0].serial",
        "21 bytes long, at most 20",
    );
    err1(
        &sub("serial: \"\""),
        3,
        13,
        "subsystems[0].serial",
        "must not be empty",
    );
    err1(
        &sub("serial: \"caf\u{e9}\""),
        3,
        13,
        "subsystems[0].serial",
        "printable ASCII",
    );
    err1(
        &sub(&format!("model: {}", "m".repeat(41))),
        3,
        12,
        "subsystems[0].model",
        "41 bytes long, at most 40",
    );
    crate::common::ok(&sub("serial: ABCDEFGHIJKLMNOPQRST"));
    crate::common::ok(&sub(&format!("model: {}", "m".repeat(40))));
    // More than 9999 subsystems would overflow the default serial's 4 digits only in width,
    // "NVMFD10000" is still within 20 bytes; nothing to test there.
}

#[test]
fn listener_rules() {
    let l = |body: &str| BASE.replace("      - address: 127.0.0.1\n", &format!("      - {body}\n"));
    err1(
        &l("{ address: storage.example.com }"),
        9,
        20,
        "subsystems[0].listeners[0].address",
        "\"storage.example.com\" is not an IP address",
    );
    err1(
        &l("{ address: \"[::1]\" }"),
        9,
        20,
        "subsystems[0].listeners[0].address",
        "not an IP address",
    );
    err1(
        &l("{ address: 127.0.0.1, port: 0 }"),
        9,
        37,
        "subsystems[0].listeners[0].port",
        "between 1 and 65535 (got 0)",
    );
    err1(
        &l("{ address: 127.0.0.1, port: 65536 }"),
        9,
        37,
        "subsystems[0].listeners[0].port",
        "(got 65536)",
    );
    err1(
        &l("{ address: 127.0.0.1 }\n      - { address: 127.0.0.1, port: 4420, transport: tcp }"),
        10,
        9,
        "subsystems[0].listeners[1]",
        "listener tcp 127.0.0.1:4420 is already listed as listeners[0]",
    );
    err1(
        &l("{ address: \"::1\" }\n      - { address: \"::1\" }"),
        10,
        9,
        "subsystems[0].listeners[1]",
        "listener tcp [::1]:4420 is already listed",
    );
    // Same address on another port, or in another subsystem, is fine.
    crate::common::ok(&l(
        "{ address: 127.0.0.1 }\n      - { address: 127.0.0.1, port: 4421 }",
    ));
}

// ---------------------------------------------------------------- several errors

/// Checks of values all run: several problems come out together, sorted by position.
#[test]
fn several_errors_are_all_reported_in_file_order() {
    let text = "\
transports:
  tcp:
    max_queue_depth: 0
  rdma: { srq_depth: 1 }
bdevs:
  - name: ram0
    malloc: { size: 1000 }
subsystems:
  - nqn: nqn.2026-11.io.x:a
    namespaces:
      - bdev: ram9
";
    let d = diags(text);
    let got: Vec<(usize, usize, &str)> = d
        .iter()
        .map(|d| (d.line, d.column, d.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (3, 22, "transports.tcp.max_queue_depth"),
            (4, 22, "transports.rdma.srq_depth"),
            (7, 21, "bdevs[0].malloc.size"),
            (11, 15, "subsystems[0].namespaces[0].bdev"),
        ]
    );
    let e = nvmfd_config::parse_str(text, "t.yaml").unwrap_err();
    assert_eq!(e.to_string().lines().count(), 4);
}

#[test]
fn quoted_keys_in_paths() {
    err1(
        "discovery:\n  \"a b\": 1\n",
        2,
        3,
        "discovery.\"a b\"",
        "unknown field `a b`",
    );
}

// ---------------------------------------------------------------- namespace identifiers

/// Two namespaces (the second in a second subsystem) to carry identifiers.
const IDS: &str = "\
bdevs:
  - name: ram0
    malloc: { size: 1MiB }
  - name: ram1
    malloc: { size: 1MiB }
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:a
    namespaces:
      - bdev: ram0
        A0
  - nqn: nqn.2026-11.io.nvmfd:b
    namespaces:
      - bdev: ram1
        A1
";

fn ids(first: &str, second: &str) -> String {
    IDS.replace("A0", first).replace("A1", second)
}

#[test]
fn namespace_ids_are_parsed_in_byte_order() {
    let c = common::ok(&ids(
        "uuid: 3B1F2C4E-8d7a-4f7e-9a51-6c2d0e9b7a10\n        nguid: 0c6a1e5d4e2f7a4e9a1b0c0ffee00002\n        eui64: 0026b7680000f00d",
        "nguid: 0c6a1e5d4e2f7a4e9a1b0c0ffee00003",
    ));
    let a = &c.subsystems[0].namespaces[0];
    assert_eq!(
        a.uuid,
        Some([
            0x3b, 0x1f, 0x2c, 0x4e, 0x8d, 0x7a, 0x4f, 0x7e, 0x9a, 0x51, 0x6c, 0x2d, 0x0e, 0x9b,
            0x7a, 0x10
        ])
    );
    assert_eq!(
        a.nguid,
        Some([
            0x0c, 0x6a, 0x1e, 0x5d, 0x4e, 0x2f, 0x7a, 0x4e, 0x9a, 0x1b, 0x0c, 0x0f, 0xfe, 0xe0,
            0x00, 0x02
        ])
    );
    assert_eq!(
        a.eui64,
        Some([0x00, 0x26, 0xb7, 0x68, 0x00, 0x00, 0xf0, 0x0d])
    );
    let b = &c.subsystems[1].namespaces[0];
    assert_eq!((b.uuid, b.eui64), (None, None));
    assert_eq!(b.nguid.unwrap()[15], 3);
    // Digits only: still a string for these fields (not a YAML number).
    let c = common::ok(&ids(
        "eui64: 1234567890123456",
        "nguid: 12345678901234567890123456789012",
    ));
    assert_eq!(c.subsystems[0].namespaces[0].eui64.unwrap()[0], 0x12);
    assert_eq!(c.subsystems[1].namespaces[0].nguid.unwrap()[15], 0x12);
}

#[test]
fn bad_namespace_ids() {
    let shown = err1(
        &ids("uuid: 3b1f2c4e8d7a4f7e9a516c2d0e9b7a10", "nsid: 1"),
        10,
        15,
        "subsystems[0].namespaces[0].uuid",
        "is not a UUID: write 8-4-4-4-12 hex digits",
    );
    assert!(shown.starts_with("t.yaml:10:15: "), "{shown}");
    err1(
        &ids("uuid: 3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a1g", "nsid: 1"),
        10,
        15,
        "subsystems[0].namespaces[0].uuid",
        "is not a UUID",
    );
    err1(
        &ids("nguid: 0c6a1e5d4e2f7a4e9a1b0c0ffee0000", "nsid: 1"),
        10,
        16,
        "subsystems[0].namespaces[0].nguid",
        "is not a valid NGUID: write 32 hex digits",
    );
    err1(
        &ids("nsid: 1", "eui64: 0026-b768-0000-f00d"),
        14,
        16,
        "subsystems[1].namespaces[0].eui64",
        "is not a valid EUI-64: write 16 hex digits",
    );
    err1(
        &ids("nsid: 1", "eui64: 0000000000000000"),
        14,
        16,
        "subsystems[1].namespaces[0].eui64",
        "an all-zero eui64 means \"no eui64\" to a host",
    );
    err1(
        &ids("uuid: 00000000-0000-0000-0000-000000000000", "nsid: 1"),
        10,
        15,
        "subsystems[0].namespaces[0].uuid",
        "all-zero uuid",
    );
    // Unknown key next to them is still refused by name.
    err1(
        &ids("uid: 3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10", "nsid: 1"),
        10,
        9,
        "subsystems[0].namespaces[0].uid",
        "unknown field `uid`",
    );
}

/// The same identifier on two namespaces (even in two subsystems, even written differently)
/// would make a host's multipath merge them: refused, pointing at the second.
#[test]
fn duplicate_namespace_ids() {
    let shown = err1(
        &ids(
            "uuid: 3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10",
            "uuid: 3B1F2C4E-8D7A-4F7E-9A51-6C2D0E9B7A10",
        ),
        14,
        15,
        "subsystems[1].namespaces[0].uuid",
        "uuid 3B1F2C4E-8D7A-4F7E-9A51-6C2D0E9B7A10 is already used by subsystems[0].namespaces[0]",
    );
    assert!(shown.starts_with("t.yaml:14:15: "), "{shown}");
    err1(
        &ids(
            "nguid: 0c6a1e5d4e2f7a4e9a1b0c0ffee00002",
            "nguid: 0c6a1e5d4e2f7a4e9a1b0c0ffee00002",
        ),
        14,
        16,
        "subsystems[1].namespaces[0].nguid",
        "already used by subsystems[0].namespaces[0]",
    );
    err1(
        &ids("eui64: 0026b7680000f00d", "eui64: 0026b7680000f00d"),
        14,
        16,
        "subsystems[1].namespaces[0].eui64",
        "already used by subsystems[0].namespaces[0]",
    );
    // Equal bytes in different fields are not a clash.
    common::ok(&ids(
        "nguid: 3b1f2c4e8d7a4f7e9a516c2d0e9b7a10",
        "uuid: 3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10",
    ));
}

#[test]
fn state_dir_rules() {
    let c = common::ok(&format!("state_dir: /srv/nvmfd/state\n{BASE}"));
    assert_eq!(c.state_dir, std::path::PathBuf::from("/srv/nvmfd/state"));
    assert_eq!(
        common::ok(BASE).state_dir,
        nvmfd_config::default_state_dir()
    );
    err1(
        &format!("state_dir: var/lib/nvmfd\n{BASE}"),
        1,
        12,
        "state_dir",
        "state_dir must be an absolute path (got \"var/lib/nvmfd\")",
    );
    err1(
        &format!("state_dir: \"\"\n{BASE}"),
        1,
        12,
        "state_dir",
        "must be an absolute path",
    );
}

#[test]
fn serial_is_default_only_when_left_out() {
    let c = common::ok(&format!(
        "{BASE}  - nqn: nqn.2026-11.io.nvmfd:b\n    serial: NVMFD0001\n"
    ));
    assert!(c.subsystems[0].serial_is_default);
    assert!(!c.subsystems[1].serial_is_default);
    assert_eq!(c.subsystems[0].serial, c.subsystems[1].serial);
}

// ---------------------------------------------------------------- controller ID ranges

fn with_cntlid(lines: &str) -> String {
    BASE.replace(
        "  - nqn: nqn.2026-11.io.nvmfd:a\n",
        &format!("  - nqn: nqn.2026-11.io.nvmfd:a\n{lines}"),
    )
}

#[test]
fn cntlid_range_errors() {
    err1(
        &with_cntlid("    cntlid_min: 0\n"),
        6,
        17,
        "subsystems[0].cntlid_min",
        "cntlid_min must be between 1 and 65519 (0xFFEF) (got 0)",
    );
    err1(
        &with_cntlid("    cntlid_max: 65520\n"),
        6,
        17,
        "subsystems[0].cntlid_max",
        "cntlid_max must be between 1 and 65519 (0xFFEF) (got 65520)",
    );
    let shown = err1(
        &with_cntlid("    cntlid_min: 200\n    cntlid_max: 100\n"),
        6,
        17,
        "subsystems[0].cntlid_min",
        "cntlid_min (200) must not exceed cntlid_max (100)",
    );
    assert_eq!(
        shown,
        "t.yaml:6:17: subsystems[0].cntlid_min: cntlid_min (200) must not exceed cntlid_max (100)"
    );
    // Only the max written: the message points at it and says the min is the default.
    err1(
        &with_cntlid("    cntlid_max: 0\n"),
        6,
        17,
        "subsystems[0].cntlid_max",
        "cntlid_max must be between 1",
    );
}

/// A bdev's own `uuid`: well-formed, not all zero, unique among bdevs; saved and read back.
#[test]
fn bdev_uuid_rules() {
    const U: &str = "7d1e0c6a-5b4f-4e3a-8c2d-1f0e9d8c7b6a";
    let two = |a: &str, b: &str| {
        format!(
            "bdevs:\n  - name: m0\n    uuid: {a}\n    malloc: {{ size: 1MiB }}\n  - name: m1\n    uuid: {b}\n    malloc: {{ size: 1MiB }}\n"
        )
    };
    let c = ok(&two(U, "0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3"));
    assert_eq!(
        c.bdevs[0]
            .uuid
            .map(|u| nvmfd_config::uuid_text(&u))
            .as_deref(),
        Some(U)
    );
    let back = nvmfd_config::parse_str(&nvmfd_config::to_yaml(&c), "saved.yaml").unwrap();
    assert_eq!(back.bdevs, c.bdevs);
    err1(
        &two(U, U),
        6,
        11,
        "bdevs[1].uuid",
        "is already used by bdevs[0]",
    );
    err1(
        &two(U, "00000000-0000-0000-0000-000000000000"),
        6,
        11,
        "bdevs[1].uuid",
        "all-zero",
    );
    err1(&two("nope", U), 3, 11, "bdevs[0].uuid", "");
    // A namespace takes its bdev's uuid when it has none: no other namespace may have it.
    let clash = format!(
        "bdevs:\n  - name: m0\n    uuid: {U}\n    malloc: {{ size: 1MiB }}\n  - name: m1\n    malloc: {{ size: 1MiB }}\nsubsystems:\n  - nqn: nqn.2026-12.io.nvmfd:u\n    namespaces:\n      - {{ nsid: 1, bdev: m0 }}\n      - {{ nsid: 2, bdev: m1, uuid: {U} }}\n"
    );
    err1(
        &clash,
        11,
        36,
        "subsystems[0].namespaces[1].uuid",
        "(its own) is already the UUID of subsystems[0].namespaces[0]",
    );
}
