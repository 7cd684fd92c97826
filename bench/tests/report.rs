//! The P2P-vs-bounce report generator and its PCIe traffic model on fixed inputs. Every
//! expected number is worked out by hand in the comments.

use nvmfd_bench::report::{
    self, hops_to_root, meeting, model, Meeting, Results, Run, RESULTS_SCHEMA,
};
use serde_json::Value;

/// Root port 00:01.0 -> switch (upstream 01:00.0, link 8 GT/s x2) -> downstream 02:00.0 ->
/// SSD 03:00.0 (8 GT/s x4), downstream 02:01.0 -> NIC 04:00.0 (8 GT/s x8); a second SSD
/// 06:00.0 on root port 00:02.0 (16 GT/s x4).
fn topo() -> Value {
    serde_json::from_str(include_str!("fixtures/topology-gen3-switch.json")).unwrap()
}

// Per direction, GB/s = GT/s x lanes x 128/130 / 8:
const GEN3_X2: f64 = 8.0 * 2.0 * 128.0 / 130.0 / 8.0; // 1.969
const GEN3_X4: f64 = 8.0 * 4.0 * 128.0 / 130.0 / 8.0; // 3.938
const GEN4_X4: f64 = 16.0 * 4.0 * 128.0 / 130.0 / 8.0; // 7.877

fn run(job: &str, mode: &str, effective: &str, mbs: f64, w: u64, c: Option<(u64, u64)>) -> Run {
    Run {
        job: job.into(),
        mode: mode.into(),
        effective: effective.into(),
        iops: mbs * 1e6 / 4096.0,
        mb_per_s: mbs,
        p99_us: 100.0,
        read_bytes: 0,
        write_bytes: w,
        seconds: 10.0,
        bytes_via_cmb: c.map(|c| c.0),
        bytes_via_host: c.map(|c| c.1),
        counters_source: if c.is_some() {
            "test counters"
        } else {
            "absent"
        }
        .into(),
        daemon_cpu_seconds: Some(1.5),
        verify: Some(true),
    }
}

fn results(transport: &str, ssd: &str) -> Results {
    Results {
        schema: RESULTS_SCHEMA.into(),
        generated: "fixture".into(),
        transport: transport.into(),
        ssd: Some(ssd.into()),
        nic: Some("0000:04:00.0".into()),
        dram_gbs: Some(20.0),
        notes: vec![],
        runs: vec![
            run(
                "randwrite-4k-qd32",
                "off",
                "bounce",
                400.0,
                1_000_000_000,
                Some((0, 1_000_000_000)),
            ),
            run(
                "randwrite-4k-qd32",
                "auto",
                "p2p",
                800.0,
                1_000_000_000,
                Some((900_000_000, 100_000_000)),
            ),
            run("seqwrite-1m-qd4", "off", "bounce", 1000.0, 1 << 31, None),
            run("seqwrite-1m-qd4", "auto", "p2p", 2000.0, 1 << 31, None),
        ],
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn paths_and_meeting_points() {
    let t = topo();
    let h = hops_to_root(&t, "0000:03:00.0").unwrap();
    // The SSD's own link, then the switch's upstream link; the bus inside the switch is none.
    let ends: Vec<(&str, &str)> = h
        .iter()
        .map(|h| (h.below.as_str(), h.above.as_str()))
        .collect();
    assert_eq!(
        ends,
        vec![
            ("0000:03:00.0", "0000:02:00.0"),
            ("0000:01:00.0", "0000:00:01.0")
        ]
    );
    assert!(close(h[0].gbytes_per_s().unwrap(), GEN3_X4));
    assert!(close(h[1].gbytes_per_s().unwrap(), GEN3_X2));
    assert_eq!(
        meeting(&t, "0000:03:00.0", "0000:04:00.0").unwrap(),
        Meeting::Switch("0000:01:00.0".into())
    );
    assert_eq!(
        meeting(&t, "0000:06:00.0", "0000:04:00.0").unwrap(),
        Meeting::RootComplex
    );
    assert!(hops_to_root(&t, "0000:09:00.0").is_err());
}

/// The fixture's `gbps` values are what `nvmfd topology --json` writes for those links (the
/// model's one computation), and the report reads them rather than working its own out: a
/// topology without `gbps` has no link bandwidth at all.
#[test]
fn link_bandwidth_comes_from_the_topology() {
    let t = topo();
    let funcs = t["topology"]["functions"].as_object().unwrap();
    let mut links = 0;
    for f in funcs.values() {
        for key in ["current_link", "max_link"] {
            let l = &f[key];
            let model = nvmfd_p2p::topology::Link {
                speed_gts: l["speed_gts"].as_f64(),
                width: l["width"].as_u64().map(|w| w as u32),
            };
            let emitted = serde_json::to_value(&model).unwrap();
            let mut keys: Vec<&String> = emitted.as_object().unwrap().keys().collect();
            let mut want: Vec<&String> = l.as_object().unwrap().keys().collect();
            keys.sort();
            want.sort();
            assert_eq!(keys, want, "{f}");
            assert!(
                close(
                    emitted["gbps"].as_f64().unwrap(),
                    l["gbps"].as_f64().unwrap()
                ),
                "{f}: nvmfd writes {emitted}"
            );
            links += 1;
        }
    }
    assert_eq!(links, 16);
    // Without the key: no bandwidth, whatever speed and width say.
    let mut old = t.clone();
    for f in old["topology"]["functions"]
        .as_object_mut()
        .unwrap()
        .values_mut()
    {
        f["current_link"].as_object_mut().unwrap().remove("gbps");
    }
    let h = hops_to_root(&old, "0000:03:00.0").unwrap();
    assert_eq!(h[0].speed_gts, Some(8.0));
    assert_eq!(h[0].gbytes_per_s(), None);
    let mut r = results("rdma", "0000:03:00.0");
    r.dram_gbs = None;
    let (b, _) = report::ceilings(&r, &old).unwrap();
    assert_eq!(b.gbs, None);
    assert!(
        b.limit.contains("no link bandwidth recorded"),
        "{}",
        b.limit
    );
}

#[test]
fn rdma_model_below_a_switch() {
    let m = model(&results("rdma", "0000:03:00.0"), &topo()).unwrap();
    // Bounce, counted: 1e9 bytes via host memory, 2 DRAM passes each = 2e9; crosses the root
    // complex twice = 2e9; nothing saved. Its path is every hop of both sides; the narrowest is
    // the switch's upstream link (Gen3 x2, 1.969 GB/s), below DRAM's 20 / 2 = 10 GB/s.
    assert_eq!(
        (m[0].cmb_bytes, m[0].host_bytes, m[0].counted),
        (0, 1_000_000_000, true)
    );
    assert_eq!(m[0].dram_bytes, 2_000_000_000);
    assert_eq!(m[0].rc_bytes, 2_000_000_000);
    assert_eq!(m[0].dram_saved, 0);
    assert!(close(m[0].ceiling_gbs.unwrap(), GEN3_X2), "{m:?}");
    assert!(
        m[0].limit.contains("0000:01:00.0 -> 0000:00:01.0"),
        "{}",
        m[0].limit
    );
    // P2P, counted: 0.9e9 via the CMB (0 DRAM passes, 0 root-complex crossings: NIC and SSD
    // meet at the switch), 0.1e9 via host memory (2 each): DRAM 0.2e9, root complex 0.2e9,
    // saved 1e9 x 2 - 0.2e9 = 1.8e9. Its path stops below the switch: SSD link 3.938 GB/s and
    // NIC link 7.877 GB/s, so the SSD's link caps it.
    assert_eq!(m[1].dram_bytes, 200_000_000);
    assert_eq!(m[1].rc_bytes, 200_000_000);
    assert_eq!(m[1].dram_saved, 1_800_000_000);
    assert!(close(m[1].ceiling_gbs.unwrap(), GEN3_X4), "{m:?}");
    // No counters: all 2 GiB assumed on the run's path. Bounce: DRAM = RC = 2 x 2^31 = 2^32.
    assert_eq!((m[2].host_bytes, m[2].counted), (1 << 31, false));
    assert_eq!(
        (m[2].dram_bytes, m[2].rc_bytes, m[2].dram_saved),
        (1 << 32, 1 << 32, 0)
    );
    // Either path for all of run 0's 1e9 bytes: bounced 2e9 DRAM and 2e9 root complex; via
    // the CMB below the switch 0 and 0. Run 2's 2^31 bytes via the CMB: 0 and 0.
    assert_eq!(m[0].if_bounce, (2_000_000_000, 2_000_000_000));
    assert_eq!(m[0].if_p2p, (0, 0));
    assert_eq!(m[2].if_bounce, (1 << 32, 1 << 32));
    assert_eq!(m[2].if_p2p, (0, 0));
    // The ceilings of the topology: bounce set by the upstream link, P2P by the SSD's link.
    let (b, p) = report::ceilings(&results("rdma", "0000:03:00.0"), &topo()).unwrap();
    assert!(close(b.gbs.unwrap(), GEN3_X2) && close(p.gbs.unwrap(), GEN3_X4));
    // P2P assumed: DRAM 0, RC 0, saved 2^32.
    assert_eq!(
        (
            m[3].cmb_bytes,
            m[3].dram_bytes,
            m[3].rc_bytes,
            m[3].dram_saved
        ),
        (1 << 31, 0, 0, 1 << 32)
    );
}

#[test]
fn rdma_model_through_the_root_complex() {
    let m = model(&results("rdma", "0000:06:00.0"), &topo()).unwrap();
    // SSD on another root port: a P2P byte crosses the root complex once. Run 1: 0.9e9 x 1 +
    // 0.1e9 x 2 = 1.1e9. Its path is all of both sides: SSD link Gen4 x4 7.877, NIC link
    // 7.877, switch upstream 1.969: the upstream link caps it.
    assert_eq!(m[1].rc_bytes, 1_100_000_000);
    // All 1e9 bytes via the CMB would cross the root complex once: 1e9.
    assert_eq!(m[1].if_p2p, (0, 1_000_000_000));
    assert_eq!(m[1].dram_bytes, 200_000_000);
    assert!(close(m[1].ceiling_gbs.unwrap(), GEN3_X2), "{m:?}");
    // Bounce here: SSD link 7.877, NIC side 7.877 and 1.969 -> 1.969 again.
    assert!(close(m[0].ceiling_gbs.unwrap(), GEN3_X2));
    let h = hops_to_root(&topo(), "0000:06:00.0").unwrap();
    assert_eq!(h.len(), 1);
    assert!(close(h[0].gbytes_per_s().unwrap(), GEN4_X4));
}

#[test]
fn tcp_model_passes() {
    let mut r = results("tcp", "0000:03:00.0");
    r.nic = None;
    r.dram_gbs = Some(8.0);
    r.runs = vec![run(
        "randwrite-4k-qd32",
        "auto",
        "p2p",
        1.0,
        4000,
        Some((1000, 3000)),
    )];
    let m = model(&r, &topo()).unwrap();
    // TCP: a bounced byte costs 4 DRAM passes, a staged one 2: 3000 x 4 + 1000 x 2 = 14000;
    // saved 4000 x 4 - 14000 = 2000; root complex 2 each: 8000.
    assert_eq!(m[0].dram_bytes, 14_000);
    assert_eq!(m[0].dram_saved, 2_000);
    assert_eq!(m[0].rc_bytes, 8_000);
    // All 4000 bytes bounced: 16000 DRAM, 8000 RC; all staged: 8000 and 8000.
    assert_eq!(m[0].if_bounce, (16_000, 8_000));
    assert_eq!(m[0].if_p2p, (8_000, 8_000));
    // The CPU writes into the CMB over the SSD's whole way up: links 3.938 and 1.969; DRAM
    // 8 GB/s / 2 passes = 4. The upstream link (1.969) caps it.
    assert!(close(m[0].ceiling_gbs.unwrap(), GEN3_X2), "{m:?}");
}

#[test]
fn markdown_table_and_model() {
    let md = report::markdown(&results("rdma", "0000:03:00.0"), &topo()).unwrap();
    // 1.8e9 B = 1.676 GiB; 2^32 B = 4.00 GiB; 0.9e9 B = 858.31 MiB.
    assert!(
        md.contains("| randwrite-4k-qd32 | auto → p2p | 195312 | 800.0 | 100.0 µs | 858.31 MiB | 95.37 MiB | 1.68 GiB | 1.50 s | pass |"),
        "{md}"
    );
    assert!(md.contains("| seqwrite-1m-qd4 | off → bounce | "), "{md}");
    assert!(md.contains("n/a (no counter)"), "{md}");
    assert!(md.contains("4.00 GiB (assumed: p2p)"), "{md}");
    assert!(md.contains("a model, not a measurement"));
    assert!(
        md.contains("bounce 1.969 GB/s (set by link 0000:01:00.0 -> 0000:00:01.0 (8 GT/s x2)), P2P 3.938 GB/s"),
        "{md}"
    );
    // 1e9 B = 953.67 MiB moved; bounced 2e9 B = 1.86 GiB DRAM and root complex, 0 via the CMB.
    assert!(
        md.contains("| randwrite-4k-qd32 | off | 953.67 MiB | 1.86 GiB | 0 B | 1.86 GiB | 0 B |"),
        "{md}"
    );
    assert!(
        md.contains("NIC and SSD meet at switch port 0000:01:00.0"),
        "{md}"
    );
    assert!(
        md.contains("| 3.938 GB/s | link 0000:03:00.0 -> 0000:02:00.0 (8 GT/s x4) |"),
        "{md}"
    );
}

#[test]
fn svg_is_xml_with_one_bar_per_job_and_mode() {
    let r = results("rdma", "0000:03:00.0");
    let s = report::svg(&r);
    let doc = roxmltree::Document::parse(&s).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let bars: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("class") == Some("bar"))
        .collect();
    assert_eq!(bars.len(), 4, "2 jobs x 2 modes");
    let mut seen = Vec::new();
    for b in &bars {
        let job = b.attribute("data-job").unwrap();
        let mode = b.attribute("data-mode").unwrap();
        let h: f64 = b.attribute("height").unwrap().parse().unwrap();
        let v = r
            .runs
            .iter()
            .find(|x| x.job == job && x.mode == mode)
            .unwrap()
            .mb_per_s;
        // The largest value (2000 MB/s) is the full 260-pixel plot; the rest in proportion.
        assert!(
            (h - 260.0 * v / 2000.0).abs() < 0.11,
            "{job}/{mode}: {h} for {v}"
        );
        seen.push((job.to_string(), mode.to_string()));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4);
    // Readable alone: a legend entry per mode and the values as text.
    let text: String = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(text.contains("p2p: auto") && text.contains("p2p: off") && text.contains("2000"));
    // Names that need escaping stay well-formed.
    let mut odd = r.clone();
    odd.runs[0].job = "a<b&\"c\"".into();
    roxmltree::Document::parse(&report::svg(&odd)).expect("escaped");
}

#[test]
fn fio_json_and_counters() {
    let fio = serde_json::json!({"jobs": [
        {"jobname": "fill", "error": 0, "job_runtime": 100,
         "read": {"io_bytes": 0, "iops": 0.0, "bw_bytes": 0},
         "write": {"io_bytes": 999, "iops": 9.0, "bw_bytes": 9}},
        {"jobname": "randrw70-4k-qd32", "error": 0, "job_runtime": 10000,
         "read": {"io_bytes": 7000, "iops": 700.5, "bw_bytes": 700000,
                  "clat_ns": {"percentile": {"99.000000": 120000}}},
         "write": {"io_bytes": 3000, "iops": 300.5, "bw_bytes": 300000,
                   "clat_ns": {"percentile": {"99.000000": 250000}}}}
    ]});
    let r = report::run_from_fio(&fio, "randrw70-4k-qd32", "off", "bounce").unwrap();
    // The fill job is left out: 700.5 + 300.5 IOPS, (700000 + 300000) B/s = 1 MB/s, the larger
    // p99 (250 us), 10 s.
    assert!(close(r.iops, 1001.0) && close(r.mb_per_s, 1.0) && close(r.p99_us, 250.0));
    assert_eq!((r.read_bytes, r.write_bytes), (7000, 3000));
    assert!(close(r.seconds, 10.0));
    let mut bad = fio.clone();
    bad["jobs"][1]["error"] = 5.into();
    assert!(report::run_from_fio(&bad, "x", "off", "bounce").is_err());

    let m = "# HELP x\nnvmfd_p2p_cmb_bytes_total{ns=\"1\"} 100\nnvmfd_p2p_cmb_bytes_total{ns=\"2\"} 50\nnvmfd_p2p_host_bytes_total 7\nnvmfd_p2p_cmb_bytes_total_other 9\n";
    assert_eq!(report::p2p_counters(m), Some((150, 7)));
    assert_eq!(report::p2p_counters("nvmfd_reactors 1\n"), None);
}

/// The real `nvmfd topology` model of the QEMU rig's fixture (SSDs behind a switch at
/// 2.5 GT/s x1) feeds the same functions.
#[test]
fn real_topology_fixture() {
    let fx = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../p2p/tests/fixtures/qemu-q35-switch"
    );
    let t = nvmfd_p2p::topology::Topology::load(&nvmfd_p2p::topology::Sources::new(
        std::path::Path::new(&format!("{fx}/sys")),
        std::path::Path::new(&format!("{fx}/proc")),
    ))
    .unwrap();
    let v = serde_json::json!({"schema": "nvmfd.topology.v1", "topology": t});
    let h = hops_to_root(&v, "0000:03:00.0").unwrap();
    assert_eq!(h.len(), 2);
    // 2.5 GT/s x 1 lane x 8b/10b / 8 = 0.25 GB/s.
    assert!(h.iter().all(|h| close(h.gbytes_per_s().unwrap(), 0.25)));
    assert_eq!(
        meeting(&v, "0000:03:00.0", "0000:04:00.0").unwrap(),
        Meeting::Switch("0000:01:00.0".into())
    );
    assert_eq!(
        meeting(&v, "0000:03:00.0", "0000:05:00.0").unwrap(),
        Meeting::RootComplex
    );
}
