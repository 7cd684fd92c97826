//! `nvmfd topology` on fixture trees: the human report and the JSON document.

mod common;

use common::TempDir;
use nvmfd_p2p::topology::fixture::{rig_guest, Fixture, Func};
use nvmfd_p2p::topology::ACS_RR;
use std::path::Path;
use std::process::{Command, Output};

fn nvmfd(fx: &Fixture, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nvmfd"));
    cmd.arg("topology")
        .arg("--sysfs-root")
        .arg(fx.sysfs())
        .arg("--proc-root")
        .arg(fx.proc_dir())
        .args(args);
    cmd.output().expect("run nvmfd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The rig guest plus a hardware RDMA NIC (`mlx5_0`) on the switch's second downstream port.
fn rig_with_nic(dir: &Path) -> Fixture {
    let fx = rig_guest(dir).unwrap();
    fx.rdma(
        "mlx5_0",
        Some("0000:04:00.0"),
        "enp4s0",
        &[(1, "192.0.2.10".parse().unwrap())],
    )
    .unwrap();
    fx
}

#[test]
fn human_report_shows_the_tree_and_every_rdma_device_by_ssd() {
    let t = TempDir::new("topology-cli");
    let fx = rig_with_nic(&t.0);
    let o = nvmfd(&fx, &[]);
    assert!(o.status.success(), "{o:?}");
    let s = stdout(&o);
    assert!(
        s.contains("pci0000:00  (root complex 8086:29c0 at 0000:00:00.0)"),
        "{s}"
    );
    assert!(
        s.contains("\\- 00:1c.0  [8086:3420] PCI bridge, root port (pcieport)"),
        "{s}"
    );
    assert!(
        s.contains("      +- 02:00.0  [104c:8233] PCI bridge, switch downstream port (pcieport)"),
        "{s}"
    );
    assert!(
        s.contains("|  \\- 03:00.0  [1b36:0010] NVMe SSD (nvme)  link 2.5 GT/s x1  iommu 2 DMA  BAR0 16 KiB  BAR2 64 MiB pref"),
        "{s}"
    );
    assert!(
        s.contains("rxe0       software (rxe on eth0)  gids 1:10.0.2.15@eth0"),
        "{s}"
    );
    assert!(
        s.contains(
            "0000:03:00.0 (1b36:0010 NVMe SSD (nvme)) -> mlx5_0 0000:04:00.0 (15b3:1017 Ethernet controller (mlx5_core))\n  PERMITTED (bus address, distance 4) via 0000:02:00.0 -> 0000:01:00.0 -> 0000:02:01.0\n"
        ),
        "{s}"
    );
    assert!(
        s.contains("-> rxe0 (rxe RDMA device on network device eth0)\n  REFUSED (map type none): rdma_not_pci\n  [block] rdma_not_pci: rxe0 is a software RDMA device"),
        "{s}"
    );
    assert!(s.contains("          fix: use a PCIe RDMA NIC"), "{s}");
    // The matrix: SSDs down, RDMA devices across.
    assert!(
        s.contains("              mlx5_0   rxe0\n0000:03:00.0  BUS/4    SW\nLegend: BUS/n"),
        "{s}"
    );
}

#[test]
fn json_report_has_the_documented_keys() {
    let t = TempDir::new("topology-cli");
    let fx = rig_with_nic(&t.0);
    let o = nvmfd(&fx, &["--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["schema"], "nvmfd.topology.v1");
    let ssd = &v["topology"]["functions"]["0000:03:00.0"];
    assert_eq!(ssd["vendor"], "0x1b36");
    assert_eq!(ssd["class"], "0x010802");
    assert_eq!(ssd["parent"], "0000:02:00.0");
    assert_eq!(ssd["port_type"], "endpoint");
    assert_eq!(ssd["driver"], "nvme");
    assert_eq!(ssd["iommu_group"], 2);
    assert_eq!(ssd["bars"][1]["index"], 2);
    assert_eq!(ssd["bars"][1]["bus_address"], "0x104000000");
    assert_eq!(ssd["current_link"]["width"], 1);
    // 2.5 GT/s x1 with 8b/10b: 2 Gbit/s per direction, the model's own figure.
    assert_eq!(ssd["current_link"]["gbps"], 2.0);
    let dn = &v["topology"]["functions"]["0000:02:00.0"];
    assert_eq!(dn["port_type"], "switch_downstream");
    assert_eq!(dn["acs"]["state"], "absent");
    assert_eq!(v["topology"]["cpu"]["vendor_id"], "GenuineIntel");
    assert_eq!(v["topology"]["rdma"][0]["name"], "mlx5_0");
    assert_eq!(v["topology"]["rdma"][0]["pci"], "0000:04:00.0");

    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let d = &entries[0]["decision"];
    assert_eq!(d["provider"]["pci"], "0000:03:00.0");
    assert_eq!(d["client"]["rdma"], "mlx5_0");
    assert_eq!(d["client"]["pci"], "0000:04:00.0");
    assert_eq!(d["permitted"], true);
    assert_eq!(d["map_type"], "bus_address");
    assert_eq!(d["distance"], 4);
    assert_eq!(d["common_upstream_bridge"], "0000:01:00.0");
    assert_eq!(
        d["bridges"],
        serde_json::json!(["0000:02:00.0", "0000:01:00.0", "0000:02:01.0"])
    );
    assert_eq!(d["findings"], serde_json::json!([]));
    let r = &entries[1]["decision"];
    assert_eq!(r["client"]["rdma"], "rxe0");
    assert_eq!(r["client"]["pci"], serde_json::Value::Null);
    assert_eq!(r["permitted"], false);
    assert_eq!(r["map_type"], "none");
    assert_eq!(r["distance"], serde_json::Value::Null);
    assert_eq!(r["findings"][0]["rule"], "rdma_not_pci");
    assert_eq!(r["findings"][0]["severity"], "block");
    assert!(r["findings"][0]["fix"]
        .as_str()
        .unwrap()
        .contains("PCIe RDMA NIC"));
}

#[test]
fn pair_decides_one_pair_and_its_exit_status_says_the_verdict() {
    let t = TempDir::new("topology-cli");
    let mut fx = rig_guest(&t.0).unwrap();
    // A third downstream port with ACS redirect and an endpoint below it.
    fx.add(Func::downstream("0000:02:02.0", "0000:01:00.0").acs(ACS_RR))
        .unwrap();
    fx.add(Func::nic(
        "0000:05:00.0",
        Some("0000:02:02.0"),
        0x1_2000_0000,
    ))
    .unwrap();
    let ok = nvmfd(&fx, &["--pair", "0000:03:00.0", "04:00.0"]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let s = stdout(&ok);
    assert!(
        s.starts_with("0000:03:00.0 (1b36:0010 NVMe SSD (nvme)) -> 0000:04:00.0"),
        "{s}"
    );
    assert!(s.contains("PERMITTED (bus address, distance 4)"), "{s}");
    assert!(!s.contains("pci0000:00"), "no tree for --pair: {s}");

    let refused = nvmfd(&fx, &["--pair", "0000:03:00.0", "0000:05:00.0"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let s = stdout(&refused);
    assert!(
        s.contains("REFUSED (map type none, distance 4): acs_redirect"),
        "{s}"
    );
    assert!(
        s.contains("fix: add the kernel parameter pci=disable_acs_redir=0000:02:02.0"),
        "{s}"
    );
    assert!(s.contains("host_bridge_not_whitelisted"), "{s}");

    let j = nvmfd(&fx, &["--pair", "0000:03:00.0", "0000:05:00.0", "--json"]);
    assert_eq!(j.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["schema"], "nvmfd.topology.v1");
    assert!(v.get("topology").is_none());
    let d = &v["entries"][0]["decision"];
    assert_eq!(d["acs_redirect"], serde_json::json!(["0000:02:02.0"]));
    assert_eq!(d["findings"][0]["rule"], "acs_redirect");
    assert_eq!(
        d["findings"][0]["devices"],
        serde_json::json!(["0000:02:02.0"])
    );

    // With the parameter naming the port, the pair is permitted.
    fx.cmdline("intel_iommu=on pci=disable_acs_redir=0000:02:02.0")
        .unwrap();
    let fixed = nvmfd(&fx, &["--pair", "0000:03:00.0", "0000:05:00.0"]);
    assert_eq!(fixed.status.code(), Some(0), "{fixed:?}");
    assert!(stdout(&fixed).contains("[info]  disable_acs_redir: 0000:02:02.0 has ACS RR set"));
}

#[test]
fn config_mode_lists_every_listener_by_namespace() {
    let t = TempDir::new("topology-cli");
    let fx = rig_with_nic(&t.0);
    let cfg = t.0.join("c.yaml");
    std::fs::write(
        &cfg,
        "bdevs:\n  - name: ssd\n    uring: { path: /dev/nvme0n1 }\n  - name: ram\n    malloc: { size: 1MiB }\n\
         subsystems:\n  - nqn: nqn.2026-11.io.nvmfd:t\n    namespaces:\n      - bdev: ssd\n      - bdev: ram\n    \
         listeners:\n      - { transport: tcp, address: 127.0.0.1, port: 4420 }\n",
    )
    .unwrap();
    let o = nvmfd(&fx, &["--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let s = stdout(&o);
    assert!(
        s.contains("nqn.2026-11.io.nvmfd:t tcp://127.0.0.1:4420 namespace 1 (bdev ssd):\n  not decided: NVMe/TCP listener: data goes through host memory, P2P needs an RDMA listener (bdev ssd: kernel NVMe device on 0000:03:00.0)"),
        "{s}"
    );
    assert!(
        s.contains("namespace 2 (bdev ram):\n  not decided: NVMe/TCP listener"),
        "{s}"
    );
    let j = nvmfd(&fx, &["--config", cfg.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["entries"][0]["subsystem"], "nqn.2026-11.io.nvmfd:t");
    assert_eq!(v["entries"][0]["listener"], "tcp://127.0.0.1:4420");
    assert_eq!(v["entries"][0]["nsid"], 1);
    assert_eq!(v["entries"][0]["bdev"], "ssd");
    assert!(v["entries"][0]["skipped"]
        .as_str()
        .unwrap()
        .contains("NVMe/TCP"));
    assert!(v["entries"][0].get("decision").is_none());
}

#[test]
fn a_missing_sysfs_tree_is_an_error() {
    let t = TempDir::new("topology-cli");
    let o = Command::new(env!("CARGO_BIN_EXE_nvmfd"))
        .args(["topology", "--sysfs-root"])
        .arg(t.0.join("nope"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8(o.stderr).unwrap();
    assert!(
        e.contains("nvmfd topology: cannot read the PCI tree under"),
        "{e}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_nvmfd"))
        .args(["topology", "--pair", "0000:03:00.0", "zz"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8(bad.stderr)
        .unwrap()
        .contains("not a PCI address"));
}
