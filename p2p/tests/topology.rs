//! The decision on fixture trees: every test asserts the decision and its reasons.

use nvmfd_p2p::topology::fixture::{rig_guest, Fixture, Func, Kind};
use nvmfd_p2p::topology::{
    decide_pair, decide_rdma, render_decision, render_tree, Bdf, Decision, MapType, PortType,
    Severity, Topology, ACS_CR, ACS_RR, ACS_SV,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "nvmfd-p2p-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn b(s: &str) -> Bdf {
    s.parse().unwrap()
}

fn rules(d: &Decision) -> Vec<(&'static str, Severity)> {
    d.findings.iter().map(|f| (f.rule, f.severity)).collect()
}

fn finding<'a>(d: &'a Decision, rule: &str) -> &'a nvmfd_p2p::topology::Finding {
    d.findings
        .iter()
        .find(|f| f.rule == rule)
        .unwrap_or_else(|| panic!("no {rule} finding in {:#?}", d.findings))
}

/// Root port 00:1c.0, switch 01:00.0 with downstream ports 02:00.0 and 02:01.0, the SSD at
/// 03:00.0 and the NIC at 04:00.0; `dn1_acs` is the first downstream port's ACS Control.
fn switch_pair(root: &Path, host_dev: u16, dn1_acs: Option<u16>) -> Fixture {
    let mut fx = Fixture::new(root).unwrap();
    fx.add(Func::new(
        "0000:00:00.0",
        Kind::Conventional,
        0x8086,
        host_dev,
        0x060000,
    ))
    .unwrap();
    fx.add(Func::root_port("0000:00:1c.0", 0x8086, 0x3420).acs(0))
        .unwrap();
    fx.add(Func::upstream("0000:01:00.0", "0000:00:1c.0").link(8.0, 16))
        .unwrap();
    let mut dn1 = Func::downstream("0000:02:00.0", "0000:01:00.0");
    if let Some(ctrl) = dn1_acs {
        dn1 = dn1.acs(ctrl);
    }
    fx.add(dn1).unwrap();
    fx.add(Func::downstream("0000:02:01.0", "0000:01:00.0").acs(ACS_SV))
        .unwrap();
    fx.add(Func::nvme("0000:03:00.0", Some("0000:02:00.0"), 0x1_0000_0000).numa(0))
        .unwrap();
    fx.add(Func::nic("0000:04:00.0", Some("0000:02:01.0"), 0x1_1000_0000).numa(0))
        .unwrap();
    fx.rdma(
        "mlx5_0",
        Some("0000:04:00.0"),
        "enp4s0",
        &[(1, "192.0.2.10".parse().unwrap())],
    )
    .unwrap();
    fx
}

/// The SSD on root port 00:01.0 and the NIC on root port 00:02.0 of one host bridge whose
/// first function is `first` (vendor, device, devfn text, kind).
fn root_port_peers(root: &Path, vendor: u16, device: u16) -> Fixture {
    let mut fx = Fixture::new(root).unwrap();
    fx.add(Func::new(
        "0000:00:00.0",
        Kind::Conventional,
        vendor,
        device,
        0x060000,
    ))
    .unwrap();
    fx.add(Func::root_port("0000:00:01.0", 0x8086, 0x2031))
        .unwrap();
    fx.add(Func::root_port("0000:00:02.0", 0x8086, 0x2032))
        .unwrap();
    fx.add(Func::nvme(
        "0000:01:00.0",
        Some("0000:00:01.0"),
        0x1_0000_0000,
    ))
    .unwrap();
    fx.add(Func::nic(
        "0000:02:00.0",
        Some("0000:00:02.0"),
        0x1_1000_0000,
    ))
    .unwrap();
    fx
}

fn load(fx: &Fixture) -> Topology {
    Topology::load(&fx.sources()).unwrap()
}

#[test]
fn model_reads_the_hierarchy() {
    let t = TempDir::new();
    let fx = switch_pair(t.path(), 0x29c0, Some(ACS_RR | ACS_CR));
    let topo = load(&fx);
    assert_eq!(topo.functions.len(), 7);
    let ssd = topo.get(b("0000:03:00.0")).unwrap();
    assert!(ssd.is_nvme());
    assert_eq!(ssd.driver.as_deref(), Some("nvme"));
    assert_eq!(ssd.port_type, Some(PortType::Endpoint));
    assert_eq!(ssd.numa_node, Some(0));
    assert_eq!(ssd.bars.len(), 2);
    assert_eq!(ssd.bars[1].index, 2);
    assert_eq!(ssd.bars[1].size, 64 << 20);
    assert!(ssd.bars[1].prefetchable);
    assert_eq!(ssd.bars[1].bus_address, Some(0x1_0400_0000));
    assert_eq!(ssd.current_link.as_ref().unwrap().width, Some(4));
    assert_eq!(
        topo.chain(b("0000:03:00.0")),
        vec![
            b("0000:03:00.0"),
            b("0000:02:00.0"),
            b("0000:01:00.0"),
            b("0000:00:1c.0")
        ]
    );
    let dn1 = topo.get(b("0000:02:00.0")).unwrap();
    assert_eq!(dn1.port_type, Some(PortType::SwitchDownstream));
    assert_eq!(dn1.acs_redirect_bits(), Some(ACS_RR | ACS_CR));
    assert_eq!(
        topo.get(b("0000:01:00.0")).unwrap().port_type,
        Some(PortType::SwitchUpstream)
    );
    assert_eq!(
        topo.host_bridge_device("pci0000:00").unwrap().bdf,
        b("0000:00:00.0")
    );
    let tree = render_tree(&topo);
    assert!(
        tree.contains("pci0000:00  (root complex 8086:29c0 at 0000:00:00.0)"),
        "{tree}"
    );
    assert!(tree.contains("      +- 02:00.0  [104c:8233] PCI bridge, switch downstream port (pcieport)  [ACS ctrl RR CR (REDIRECT)]"), "{tree}");
    assert!(
        tree.contains("      |  \\- 03:00.0  [1b36:0010] NVMe SSD (nvme)"),
        "{tree}"
    );
    assert!(tree.contains("BAR2 64 MiB pref"), "{tree}");
    assert!(
        tree.contains("mlx5_0     PCI 0000:04:00.0  gids 1:192.0.2.10@enp4s0"),
        "{tree}"
    );
}

#[test]
fn two_endpoints_under_one_switch_use_bus_addresses() {
    let t = TempDir::new();
    let fx = switch_pair(t.path(), 0x29c0, None);
    let topo = load(&fx);
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:04:00.0"));
    assert!(d.permitted, "{d:#?}");
    assert_eq!(d.map_type, MapType::BusAddress);
    assert_eq!(d.distance, Some(4));
    assert_eq!(d.common_upstream_bridge, Some(b("0000:01:00.0")));
    assert_eq!(
        d.bridges,
        vec![b("0000:02:00.0"), b("0000:01:00.0"), b("0000:02:01.0")]
    );
    assert!(d.acs_redirect.is_empty());
    // SV on the other downstream port is not a redirect bit; same NUMA node, full links.
    assert_eq!(rules(&d), vec![], "{d:#?}");
    let text = render_decision(&d);
    assert!(
        text.contains(
            "PERMITTED (bus address, distance 4) via 0000:02:00.0 -> 0000:01:00.0 -> 0000:02:01.0"
        ),
        "{text}"
    );
    // The same through the RDMA device's name.
    let r = decide_rdma(&topo, b("0000:03:00.0"), "mlx5_0");
    assert_eq!(r.client.pci, Some(b("0000:04:00.0")));
    assert_eq!(r.client.rdma.as_deref(), Some("mlx5_0"));
    assert_eq!(
        (r.permitted, r.map_type, r.distance),
        (true, MapType::BusAddress, Some(4))
    );
}

#[test]
fn acs_redirect_on_a_downstream_port_sends_traffic_up_and_intel_q35_refuses() {
    let t = TempDir::new();
    let fx = switch_pair(t.path(), 0x29c0, Some(ACS_SV | ACS_RR | ACS_CR));
    let d = decide_pair(&load(&fx), b("0000:03:00.0"), b("0000:04:00.0"));
    assert!(!d.permitted);
    assert_eq!(d.map_type, MapType::None);
    assert_eq!(d.distance, Some(4), "the kernel still counts the distance");
    assert_eq!(d.acs_redirect, vec![b("0000:02:00.0")]);
    let acs = finding(&d, "acs_redirect");
    assert_eq!(acs.severity, Severity::Block);
    assert!(
        acs.message.contains("0000:02:00.0 (RR CR)"),
        "{}",
        acs.message
    );
    assert!(
        acs.fix
            .as_deref()
            .unwrap()
            .contains("pci=disable_acs_redir=0000:02:00.0"),
        "{acs:?}"
    );
    let hb = finding(&d, "host_bridge_not_whitelisted");
    assert_eq!(hb.severity, Severity::Block);
    assert!(hb.message.contains("8086:29c0"), "{}", hb.message);
    assert!(render_decision(&d).contains("REFUSED (map type none, distance 4): acs_redirect"));
}

#[test]
fn acs_redirect_with_an_amd_zen_cpu_goes_through_the_host_bridge() {
    let t = TempDir::new();
    let fx = switch_pair(t.path(), 0x29c0, Some(ACS_RR));
    fx.cpuinfo("AuthenticAMD", 0x19).unwrap();
    let d = decide_pair(&load(&fx), b("0000:03:00.0"), b("0000:04:00.0"));
    assert!(d.permitted, "{d:#?}");
    assert_eq!(d.map_type, MapType::ThroughHostBridge);
    assert_eq!(d.distance, Some(4));
    assert_eq!(finding(&d, "acs_redirect").severity, Severity::Warn);
    assert!(finding(&d, "amd_zen_root_complex").message.contains("0x19"));
    assert!(d
        .findings
        .iter()
        .all(|f| f.rule != "host_bridge_not_whitelisted"));
}

#[test]
fn disable_acs_redir_naming_the_port_restores_bus_addresses() {
    for param in [
        "pci=disable_acs_redir=0000:02:00.0",
        "pci=noaer,disable_acs_redir=02:00.0;0000:02:01.0",
        "pci=disable_acs_redir=0000:00:1c.0/00.0/00.0",
        "pci=disable_acs_redir=pci:104c:8233",
    ] {
        let t = TempDir::new();
        let fx = switch_pair(t.path(), 0x29c0, Some(ACS_RR | ACS_CR));
        fx.cmdline(&format!("root=/dev/sda {param} quiet")).unwrap();
        let d = decide_pair(&load(&fx), b("0000:03:00.0"), b("0000:04:00.0"));
        assert!(d.permitted, "{param}: {d:#?}");
        assert_eq!(d.map_type, MapType::BusAddress, "{param}");
        assert!(d.acs_redirect.is_empty(), "{param}");
        let f = finding(&d, "disable_acs_redir");
        assert_eq!(f.severity, Severity::Info);
        assert_eq!(f.devices, vec![b("0000:02:00.0")]);
    }
    // A path that names another device does not help.
    let t = TempDir::new();
    let fx = switch_pair(t.path(), 0x29c0, Some(ACS_RR));
    fx.cmdline("pci=disable_acs_redir=0000:00:1c.0/00.0/01.0;zz")
        .unwrap();
    let d = decide_pair(&load(&fx), b("0000:03:00.0"), b("0000:04:00.0"));
    assert_eq!(d.map_type, MapType::None);
    assert_eq!(
        finding(&d, "disable_acs_redir_unparsed").severity,
        Severity::Warn
    );
}

#[test]
fn root_port_peers_under_a_whitelisted_intel_root_complex() {
    let t = TempDir::new();
    let fx = root_port_peers(t.path(), 0x8086, 0x2020);
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:02:00.0"));
    assert!(d.permitted, "{d:#?}");
    assert_eq!(d.map_type, MapType::ThroughHostBridge);
    // No common bridge: the kernel adds both chains' lengths (2 + 2).
    assert_eq!(d.distance, Some(4));
    assert_eq!(d.common_upstream_bridge, None);
    assert_eq!(d.bridges, vec![b("0000:00:01.0"), b("0000:00:02.0")]);
    assert!(finding(&d, "host_bridge_whitelisted")
        .message
        .contains("8086:2020"));
    assert_eq!(
        finding(&d, "no_common_upstream_bridge").severity,
        Severity::Warn
    );
}

#[test]
fn root_port_peers_under_an_unlisted_root_complex_are_refused() {
    let t = TempDir::new();
    let fx = root_port_peers(t.path(), 0x8086, 0x1234);
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:02:00.0"));
    assert!(!d.permitted);
    assert_eq!(d.map_type, MapType::None);
    assert_eq!(d.distance, Some(4));
    assert_eq!(
        finding(&d, "host_bridge_not_whitelisted").severity,
        Severity::Block
    );
    assert_eq!(
        finding(&d, "no_common_upstream_bridge").severity,
        Severity::Block
    );
    assert!(finding(&d, "no_common_upstream_bridge")
        .fix
        .as_deref()
        .unwrap()
        .contains("one PCIe switch"));
}

#[test]
fn root_port_peers_on_amd_family_0x19_go_through_the_host_bridge() {
    let t = TempDir::new();
    let fx = root_port_peers(t.path(), 0x1022, 0x1480);
    fx.cpuinfo("AuthenticAMD", 0x19).unwrap();
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:02:00.0"));
    assert!(d.permitted, "{d:#?}");
    assert_eq!(d.map_type, MapType::ThroughHostBridge);
    assert_eq!(
        rules(&d),
        vec![
            ("no_common_upstream_bridge", Severity::Warn),
            ("amd_zen_root_complex", Severity::Info)
        ]
    );
    // Family 0x15 (pre-Zen) is not enough.
    fx.cpuinfo("AuthenticAMD", 0x15).unwrap();
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:02:00.0"));
    assert_eq!(d.map_type, MapType::None);
}

#[test]
fn a_root_port_first_on_the_bus_stands_for_the_host_bridge() {
    // Skylake-SP has no 00.0 host bridge function; its root ports are on the whitelist.
    let t = TempDir::new();
    let mut fx = Fixture::new(t.path()).unwrap();
    fx.add(Func::root_port("0000:00:01.0", 0x8086, 0x2030))
        .unwrap();
    fx.add(Func::root_port("0000:00:02.0", 0x8086, 0x2031))
        .unwrap();
    fx.add(Func::nvme(
        "0000:01:00.0",
        Some("0000:00:01.0"),
        0x1_0000_0000,
    ))
    .unwrap();
    fx.add(Func::nic(
        "0000:02:00.0",
        Some("0000:00:02.0"),
        0x1_1000_0000,
    ))
    .unwrap();
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:02:00.0"));
    assert_eq!(d.map_type, MapType::ThroughHostBridge, "{d:#?}");
    assert_eq!(
        finding(&d, "host_bridge_whitelisted").devices,
        vec![b("0000:00:01.0")]
    );
    // An endpoint first on the bus at a devfn other than 00.0 identifies nothing.
    let t = TempDir::new();
    let mut fx = Fixture::new(t.path()).unwrap();
    fx.add(Func::new(
        "0000:00:01.0",
        Kind::Integrated,
        0x8086,
        0x2030,
        0x088000,
    ))
    .unwrap();
    fx.add(Func::root_port("0000:00:02.0", 0x8086, 0x2031))
        .unwrap();
    fx.add(Func::root_port("0000:00:03.0", 0x8086, 0x2031))
        .unwrap();
    fx.add(Func::nvme(
        "0000:01:00.0",
        Some("0000:00:02.0"),
        0x1_0000_0000,
    ))
    .unwrap();
    fx.add(Func::nic(
        "0000:02:00.0",
        Some("0000:00:03.0"),
        0x1_1000_0000,
    ))
    .unwrap();
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:02:00.0"));
    assert_eq!(d.map_type, MapType::None);
    assert_eq!(finding(&d, "host_bridge_unknown").severity, Severity::Block);
}

/// SSD under pci0000:00, NIC under pci0000:80, each host bridge's 00.0 being `dev`.
fn two_host_bridges(root: &Path, vendor: u16, dev: u16) -> Fixture {
    let mut fx = Fixture::new(root).unwrap();
    fx.add(Func::new(
        "0000:00:00.0",
        Kind::Conventional,
        vendor,
        dev,
        0x060000,
    ))
    .unwrap();
    fx.add(Func::root_port("0000:00:01.0", vendor, 0x0001))
        .unwrap();
    fx.add(Func::nvme("0000:01:00.0", Some("0000:00:01.0"), 0x1_0000_0000).numa(0))
        .unwrap();
    fx.add(Func::new("0000:80:00.0", Kind::Conventional, vendor, dev, 0x060000).host("pci0000:80"))
        .unwrap();
    fx.add(Func::root_port("0000:80:01.0", vendor, 0x0001).host("pci0000:80"))
        .unwrap();
    fx.add(Func::nic("0000:81:00.0", Some("0000:80:01.0"), 0x2_0000_0000).numa(1))
        .unwrap();
    fx
}

#[test]
fn endpoints_under_different_host_bridges() {
    // Skylake-E: both whitelisted without the same-host-bridge requirement.
    let t = TempDir::new();
    let fx = two_host_bridges(t.path(), 0x8086, 0x2020);
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:81:00.0"));
    assert!(d.permitted, "{d:#?}");
    assert_eq!(d.map_type, MapType::ThroughHostBridge);
    assert_eq!(
        d.host_bridges,
        vec!["pci0000:00".to_string(), "pci0000:80".to_string()]
    );
    assert!(finding(&d, "no_common_upstream_bridge")
        .message
        .contains("different host bridges (pci0000:00, pci0000:80)"));
    let numa = finding(&d, "numa_mismatch");
    assert_eq!(numa.severity, Severity::Warn);
    assert!(numa.message.contains("node 0") && numa.message.contains("node 1"));
    // Xeon E5 (0x3c00) forwards only within one host bridge.
    let t = TempDir::new();
    let fx = two_host_bridges(t.path(), 0x8086, 0x3c00);
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:81:00.0"));
    assert!(!d.permitted);
    assert_eq!(d.map_type, MapType::None);
    assert_eq!(
        finding(&d, "host_bridge_not_shared").severity,
        Severity::Block
    );
    // ... but it does within one.
    let t = TempDir::new();
    let fx = root_port_peers(t.path(), 0x8086, 0x3c00);
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:02:00.0"));
    assert_eq!(d.map_type, MapType::ThroughHostBridge, "{d:#?}");
    // Any Google host bridge is listed.
    let t = TempDir::new();
    let fx = two_host_bridges(t.path(), 0x1ae0, 0x4242);
    let d = decide_pair(&load(&fx), b("0000:01:00.0"), b("0000:81:00.0"));
    assert_eq!(d.map_type, MapType::ThroughHostBridge, "{d:#?}");
}

#[test]
fn an_sriov_vf_walks_up_from_its_pf() {
    let t = TempDir::new();
    let mut fx = switch_pair(t.path(), 0x29c0, None);
    fx.add(
        Func::new("0000:04:00.2", Kind::Endpoint, 0x15b3, 0x1018, 0x020000)
            .driver("mlx5_core")
            .vf_of("0000:04:00.0"),
    )
    .unwrap();
    let topo = load(&fx);
    let vf = topo.get(b("0000:04:00.2")).unwrap();
    assert_eq!(vf.physfn, Some(b("0000:04:00.0")));
    assert_eq!(
        topo.upstream_bridge(b("0000:04:00.2")),
        Some(b("0000:02:01.0"))
    );
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:04:00.2"));
    assert!(d.permitted, "{d:#?}");
    assert_eq!((d.map_type, d.distance), (MapType::BusAddress, Some(4)));
    let f = finding(&d, "virtual_function");
    assert_eq!(f.devices, vec![b("0000:04:00.2"), b("0000:04:00.0")]);
}

#[test]
fn a_software_rdma_device_is_refused() {
    let t = TempDir::new();
    let fx = rig_guest(t.path()).unwrap();
    let topo = load(&fx);
    let rxe = topo.rdma_device("rxe0").unwrap();
    assert_eq!(rxe.pci, None);
    assert_eq!(rxe.software.as_deref(), Some("rxe"));
    assert_eq!(rxe.parent_netdev.as_deref(), Some("eth0"));
    let d = decide_rdma(&topo, b("0000:03:00.0"), "rxe0");
    assert!(!d.permitted);
    assert_eq!(d.map_type, MapType::None);
    assert_eq!(d.distance, None);
    let f = finding(&d, "rdma_not_pci");
    assert_eq!(f.severity, Severity::Block);
    assert!(f
        .message
        .contains("rxe0 is a software RDMA device (rxe on network device eth0)"));
    // A hardware RDMA device on another bus (no `device` link to a PCI function, no `parent`).
    let hns = fx.sysfs().join("class/infiniband/hns_0");
    std::fs::create_dir_all(&hns).unwrap();
    std::fs::write(hns.join("node_type"), "1: CA\n").unwrap();
    let topo = load(&fx);
    let dev = topo.rdma_device("hns_0").unwrap();
    assert_eq!((dev.pci, dev.software.as_deref()), (None, None));
    let d = decide_rdma(&topo, b("0000:03:00.0"), "hns_0");
    assert!(!d.permitted);
    let f = finding(&d, "rdma_not_pci");
    assert!(
        f.message.contains("hns_0 has no PCI function behind it"),
        "{}",
        f.message
    );
    let missing = decide_rdma(&topo, b("0000:03:00.0"), "mlx5_9");
    assert_eq!(rules(&missing), vec![("device_missing", Severity::Block)]);
}

#[test]
fn a_bar_with_a_bus_offset_is_reported() {
    let t = TempDir::new();
    let mut fx = Fixture::new(t.path()).unwrap();
    fx.add(Func::new(
        "0000:00:00.0",
        Kind::Conventional,
        0x1ae0,
        0x0001,
        0x060000,
    ))
    .unwrap();
    fx.add(Func::root_port("0000:00:01.0", 0x1ae0, 0x0002))
        .unwrap();
    fx.add(Func::upstream("0000:01:00.0", "0000:00:01.0"))
        .unwrap();
    fx.add(Func::downstream("0000:02:00.0", "0000:01:00.0"))
        .unwrap();
    fx.add(Func::downstream("0000:02:01.0", "0000:01:00.0"))
        .unwrap();
    fx.add(
        Func::nvme("0000:03:00.0", Some("0000:02:00.0"), 0x40_1000_0000)
            .bus_offset(-0x40_0000_0000),
    )
    .unwrap();
    fx.add(Func::nic(
        "0000:04:00.0",
        Some("0000:02:01.0"),
        0x41_0000_0000,
    ))
    .unwrap();
    let topo = load(&fx);
    let bars = &topo.get(b("0000:03:00.0")).unwrap().bars;
    assert_eq!(bars[1].cpu_start, 0x40_1400_0000);
    assert_eq!(bars[1].bus_address, Some(0x1400_0000));
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:04:00.0"));
    assert!(d.permitted);
    assert_eq!(d.map_type, MapType::BusAddress);
    let offs: Vec<_> = d
        .findings
        .iter()
        .filter(|f| f.rule == "bus_offset")
        .collect();
    assert_eq!(offs.len(), 2, "BAR0 and BAR2: {:#?}", d.findings);
    assert!(offs[1].message.contains("BAR 2 of 0000:03:00.0 is at CPU address 0x4014000000 but bus address 0x14000000 (offset -0x4000000000)"), "{}", offs[1].message);
    assert_eq!(offs[1].severity, Severity::Warn);
}

#[test]
fn iommu_translation_matters_only_through_the_root_complex() {
    let t = TempDir::new();
    let mut fx = Fixture::new(t.path()).unwrap();
    fx.cpuinfo("AuthenticAMD", 0x17).unwrap();
    fx.add(Func::new(
        "0000:00:00.0",
        Kind::Conventional,
        0x1022,
        0x1450,
        0x060000,
    ))
    .unwrap();
    fx.add(Func::root_port("0000:00:01.1", 0x1022, 0x1453))
        .unwrap();
    fx.add(Func::root_port("0000:00:01.2", 0x1022, 0x1453))
        .unwrap();
    fx.add(Func::nvme("0000:01:00.0", Some("0000:00:01.1"), 0x1_0000_0000).iommu(7, "DMA-FQ"))
        .unwrap();
    fx.add(Func::nic("0000:02:00.0", Some("0000:00:01.2"), 0x1_1000_0000).iommu(8, "DMA"))
        .unwrap();
    fx.add(Func::nic("0000:02:00.1", Some("0000:00:01.2"), 0x1_2000_0000).iommu(9, "identity"))
        .unwrap();
    let topo = load(&fx);
    let d = decide_pair(&topo, b("0000:01:00.0"), b("0000:02:00.0"));
    assert_eq!(d.map_type, MapType::ThroughHostBridge);
    let f = finding(&d, "iommu_translation");
    assert_eq!(f.severity, Severity::Warn);
    assert!(f.message.contains("group 8, type DMA"), "{}", f.message);
    assert!(f.fix.as_deref().unwrap().contains("iommu=pt"));
    let d = decide_pair(&topo, b("0000:01:00.0"), b("0000:02:00.1"));
    assert!(
        d.findings.iter().all(|f| f.rule != "iommu_translation"),
        "{d:#?}"
    );
    // Below one switch the IOMMU never sees the TLPs.
    let t = TempDir::new();
    let fx = rig_guest(t.path()).unwrap();
    let d = decide_pair(&load(&fx), b("0000:03:00.0"), b("0000:04:00.0"));
    assert_eq!(d.map_type, MapType::BusAddress);
    assert!(d.findings.iter().all(|f| f.rule != "iommu_translation"));
}

#[test]
fn a_narrow_link_on_the_path_is_reported_with_its_slot() {
    let t = TempDir::new();
    let mut fx = Fixture::new(t.path()).unwrap();
    fx.add(Func::new(
        "0000:00:00.0",
        Kind::Conventional,
        0x8086,
        0x2020,
        0x060000,
    ))
    .unwrap();
    fx.add(Func::root_port("0000:00:1c.0", 0x8086, 0x2030))
        .unwrap();
    fx.add(Func::upstream("0000:01:00.0", "0000:00:1c.0").link(8.0, 16))
        .unwrap();
    fx.add(Func::downstream("0000:02:00.0", "0000:01:00.0"))
        .unwrap();
    fx.add(Func::downstream("0000:02:01.0", "0000:01:00.0"))
        .unwrap();
    fx.add(Func::nvme("0000:03:00.0", Some("0000:02:00.0"), 0x1_0000_0000).link(16.0, 4))
        .unwrap();
    fx.add(
        Func::nic("0000:04:00.0", Some("0000:02:01.0"), 0x1_1000_0000)
            .link(8.0, 4)
            .max_link(16.0, 16),
    )
    .unwrap();
    let d = decide_pair(&load(&fx), b("0000:03:00.0"), b("0000:04:00.0"));
    assert!(d.permitted);
    let n = finding(&d, "narrow_link");
    assert_eq!(n.severity, Severity::Warn);
    assert_eq!(n.devices, vec![b("0000:04:00.0")]);
    assert!(
        n.message.contains("8.0 GT/s x4, above 0000:04:00.0"),
        "{}",
        n.message
    );
    assert!(
        n.message.contains("SSD's own (16.0 GT/s x4)"),
        "{}",
        n.message
    );
    let g = finding(&d, "link_degraded");
    assert!(g
        .message
        .contains("trained at 8.0 GT/s x4 but is capable of 16.0 GT/s x16"));
    // The switch's own upstream link is not on a path that turns around in the switch.
    assert!(d
        .findings
        .iter()
        .all(|f| !f.devices.contains(&b("0000:01:00.0"))));
}

#[test]
fn unreadable_acs_is_counted_as_redirecting() {
    let t = TempDir::new();
    let mut fx = Fixture::new(t.path()).unwrap();
    fx.add(Func::new(
        "0000:00:00.0",
        Kind::Conventional,
        0x8086,
        0x29c0,
        0x060000,
    ))
    .unwrap();
    fx.add(Func::root_port("0000:00:1c.0", 0x8086, 0x3420).config_len(64))
        .unwrap();
    fx.add(Func::upstream("0000:01:00.0", "0000:00:1c.0").config_len(64))
        .unwrap();
    fx.add(Func::downstream("0000:02:00.0", "0000:01:00.0").config_len(64))
        .unwrap();
    fx.add(Func::downstream("0000:02:01.0", "0000:01:00.0").config_len(64))
        .unwrap();
    fx.add(Func::nvme("0000:03:00.0", Some("0000:02:00.0"), 0x1_0000_0000).config_len(64))
        .unwrap();
    fx.add(Func::nic("0000:04:00.0", Some("0000:02:01.0"), 0x1_1000_0000).config_len(64))
        .unwrap();
    let topo = load(&fx);
    assert_eq!(topo.get(b("0000:02:00.0")).unwrap().port_type, None);
    // BARs live in the first 64 bytes and stay readable.
    assert_eq!(
        topo.get(b("0000:03:00.0")).unwrap().bars[1].bus_address,
        Some(0x1_0400_0000)
    );
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:04:00.0"));
    assert!(!d.permitted);
    assert_eq!(d.map_type, MapType::None);
    let f = finding(&d, "acs_unreadable");
    assert_eq!(
        f.devices,
        vec![b("0000:02:00.0"), b("0000:01:00.0"), b("0000:02:01.0")],
        "the single-function endpoints need no ACS"
    );
    assert!(f.fix.as_deref().unwrap().contains("as root"));
}

#[test]
fn functions_of_one_device_and_one_function_with_itself() {
    let t = TempDir::new();
    let mut fx = switch_pair(t.path(), 0x29c0, None);
    fx.add(Func::nic("0000:03:00.1", Some("0000:02:00.0"), 0x1_2000_0000).multifunction())
        .unwrap();
    let topo = load(&fx);
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:03:00.1"));
    assert_eq!(
        (d.permitted, d.map_type, d.distance),
        (true, MapType::BusAddress, Some(2))
    );
    assert_eq!(d.bridges, vec![b("0000:02:00.0")]);
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:03:00.0"));
    assert_eq!((d.map_type, d.distance), (MapType::BusAddress, Some(0)));
    assert!(d.bridges.is_empty());
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:09:00.0"));
    assert!(!d.permitted);
    assert_eq!(rules(&d), vec![("device_missing", Severity::Block)]);
}

#[test]
fn maps_rdma_devices_listen_addresses_and_nvme_block_devices() {
    let t = TempDir::new();
    let fx = rig_guest(t.path()).unwrap();
    fx.rdma(
        "mlx5_0",
        Some("0000:04:00.0"),
        "enp4s0",
        &[
            (1, "192.0.2.10".parse().unwrap()),
            (1, "2001:db8::10".parse().unwrap()),
        ],
    )
    .unwrap();
    let topo = load(&fx);
    assert_eq!(
        topo.rdma_device("mlx5_0").unwrap().pci,
        Some(b("0000:04:00.0"))
    );
    let names = |a: &str| -> Vec<String> {
        topo.rdma_devices_for_address(a.parse().unwrap())
            .iter()
            .map(|d| d.name.clone())
            .collect()
    };
    assert_eq!(names("192.0.2.10"), vec!["mlx5_0"]);
    assert_eq!(names("2001:db8::10"), vec!["mlx5_0"]);
    assert_eq!(names("10.0.2.15"), vec!["rxe0"]);
    assert_eq!(names("0.0.0.0"), vec!["mlx5_0", "rxe0"]);
    assert!(names("198.51.100.1").is_empty());
    assert_eq!(
        topo.nvme_device_bdf("/dev/nvme0n1"),
        Some(b("0000:03:00.0"))
    );
    assert_eq!(topo.nvme_device_bdf("nvme9n1"), None);
    assert_eq!(topo.nvme_functions().len(), 1);
}

#[test]
fn the_rig_guest_permits_the_switch_pair_with_bus_addresses() {
    let t = TempDir::new();
    let fx = rig_guest(t.path()).unwrap();
    let topo = load(&fx);
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:04:00.0"));
    assert!(d.permitted, "{d:#?}");
    assert_eq!((d.map_type, d.distance), (MapType::BusAddress, Some(4)));
    assert!(d.findings.is_empty(), "{:#?}", d.findings);
    // The virtio-net (rxe0's carrier) sits on the root bus: through q35's root complex, refused.
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:00:02.0"));
    assert_eq!(d.map_type, MapType::None);
    assert_eq!(d.distance, Some(5));
}

/// A tree captured from the rig's QEMU guest by tests/guest/capture.sh (Linux 6.1, q35 with
/// `-cpu max` under TCG: AuthenticAMD family 0xf; an ioh3420 root port at 00:06.0 with an x3130
/// switch, NVMe SSDs at 03:00.0 (64 MiB CMB) and 04:00.0 on its two downstream ports, a second
/// root port 00:07.0 with an SSD at 05:00.0, soft-RoCE rxe0 on eth0; no IOMMU).
#[test]
fn captured_qemu_q35_switch_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qemu-q35-switch");
    let topo = Topology::load(&nvmfd_p2p::topology::Sources::new(
        &root.join("sys"),
        &root.join("proc"),
    ))
    .unwrap();
    assert_eq!(topo.cpu.vendor_id.as_deref(), Some("AuthenticAMD"));
    assert_eq!(topo.cpu.family, Some(15));
    assert!(!topo.cpu.supports_p2pdma());
    assert_eq!(topo.nvme_functions().len(), 3);
    let port = |s: &str| topo.get(b(s)).unwrap().port_type;
    assert_eq!(port("0000:00:06.0"), Some(PortType::RootPort));
    assert_eq!(port("0000:01:00.0"), Some(PortType::SwitchUpstream));
    assert_eq!(port("0000:02:01.0"), Some(PortType::SwitchDownstream));
    assert_eq!(port("0000:03:00.0"), Some(PortType::Endpoint));
    // QEMU's switch ports have no ACS; the ICH9 functions have a 256-byte (conventional) space.
    for f in topo.functions.values() {
        assert_eq!(f.acs, nvmfd_p2p::topology::AcsState::Absent, "{}", f.bdf);
    }
    assert_eq!(topo.get(b("0000:00:1f.2")).unwrap().config_bytes, 256);
    let ssd = topo.get(b("0000:03:00.0")).unwrap();
    assert_eq!(ssd.driver.as_deref(), Some("nvme"));
    let cmb = ssd.bars.iter().find(|b| b.index == 2).expect("CMB BAR 2");
    assert_eq!(cmb.size, 64 << 20);
    assert!(cmb.prefetchable && cmb.is_64);
    assert_eq!(cmb.bus_address, Some(cmb.cpu_start), "x86: no bus offset");
    assert_eq!(ssd.current_link.as_ref().unwrap().speed_gts, Some(2.5));
    assert_eq!(
        topo.nvme_device_bdf("/dev/nvme2n1"),
        Some(b("0000:05:00.0"))
    );
    let rxe = topo.rdma_device("rxe0").unwrap();
    assert_eq!((rxe.pci, rxe.software.as_deref()), (None, Some("rxe")));
    assert_eq!(rxe.parent_netdev.as_deref(), Some("eth0"));
    let names = |a: &str| -> Vec<String> {
        topo.rdma_devices_for_address(a.parse().unwrap())
            .iter()
            .map(|d| d.name.clone())
            .collect()
    };
    assert_eq!(names("10.0.2.15"), vec!["rxe0"]);
    assert_eq!(names("fe80::5054:ff:fe12:3456"), vec!["rxe0"]);

    // The two SSDs under the switch: bus addresses, distance 4, nothing to report.
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:04:00.0"));
    assert!(d.permitted, "{d:#?}");
    assert_eq!((d.map_type, d.distance), (MapType::BusAddress, Some(4)));
    assert_eq!(
        d.bridges,
        vec![b("0000:02:00.0"), b("0000:01:00.0"), b("0000:02:01.0")]
    );
    assert!(d.findings.is_empty(), "{:#?}", d.findings);
    // Across q35's two root ports: not on the whitelist, refused; distance 4 + 2.
    let d = decide_pair(&topo, b("0000:03:00.0"), b("0000:05:00.0"));
    assert!(!d.permitted);
    assert_eq!((d.map_type, d.distance), (MapType::None, Some(6)));
    assert!(finding(&d, "host_bridge_not_whitelisted")
        .message
        .contains("8086:29c0"));
    // The soft-RoCE device.
    let d = decide_rdma(&topo, b("0000:03:00.0"), "rxe0");
    assert_eq!(rules(&d), vec![("rdma_not_pci", Severity::Block)]);
    let tree = render_tree(&topo);
    assert!(tree.contains("+- 00:06.0  [8086:3420] PCI bridge, root port (pcieport)  link 2.5 GT/s x1\n|  \\- 01:00.0  [104c:8232] PCI bridge, switch upstream port (pcieport)"), "{tree}");
    assert!(!tree.contains("ACS"), "{tree}");
}
