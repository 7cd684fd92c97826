//! The RPC methods that show per-reactor numbers (`nvmf_get_stats`,
//! `nvmf_subsystem_get_qpairs`, `nvmfd_get_p2p`) with a reactor that misses their 2 s deadline:
//! it sleeps 4 s between polls when idle, so it answers about every other call. Its queue pair
//! and counters must stay in every answer (from its last report, marked `stale` with `age_ms`),
//! never vanish or go down.

mod common;

use common::{call, config, free_port, TempDir};
use nvmfd_bench::{RawConnection, RawEvent};
use nvmfd_target::daemon::Daemon;
use nvmfd_target::rpc::client::Client;
use nvmfd_transport::proto::fabrics::{ConnectCommand, ConnectData};
use nvmfd_transport::proto::tcp::{Digests, Header};
use serde_json::{json, Value};
use std::time::Duration;

const NQN: &str = "nqn.2026-12.io.nvmfd:late";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0b0b0b0b-0000-4000-8000-00000000000b";
const GROUP: &str = "nvmf_tgt_poll_group_000";

/// What one answer showed of reactor 0: never heard from, or its report, fresh or stale.
#[derive(Debug, PartialEq)]
enum Shown {
    Unreported,
    Fresh,
    Stale,
}

/// The freshness members of `v` (a poll group or queue pair entry), checked for consistency.
fn shown(v: &Value) -> Shown {
    match (v.get("stale"), v.get("reported"), v.get("age_ms")) {
        (Some(Value::Bool(true)), Some(Value::Bool(false)), None) => Shown::Unreported,
        // A fresh entry carries SPDK's members only, or an explicit "stale": false.
        (None | Some(Value::Bool(false)), None, None) => Shown::Fresh,
        (Some(Value::Bool(true)), None, Some(age)) => {
            // The last report came in before this call, which then waited its 2 s.
            let age = age.as_u64().expect("age_ms is a whole number");
            assert!(age >= 1000, "a stale report younger than the wait: {v}");
            Shown::Stale
        }
        _ => panic!("inconsistent freshness members: {v}"),
    }
}

#[test]
fn late_reactor_stays_in_rpc_results() {
    let dir = TempDir::new("rpc-late");
    let port = free_port();
    let yaml = format!(
        r#"
reactors: {{ cores: [0], idle_sleep_us: 4000000 }}
bdevs: [ {{ name: r0, malloc: {{ size: 1MiB }} }} ]
subsystems:
  - nqn: {NQN}
    namespaces: [ {{ nsid: 1, bdev: r0 }} ]
    listeners: [ {{ address: 127.0.0.1, port: {port} }} ]
state_dir: {}
"#,
        dir.path().join("state").display()
    );
    let mut d = Daemon::start(&config(&yaml, "late.yaml")).expect("daemon starts");
    let sock = dir.path().join("nvmfd.sock");
    d.serve_rpc(&sock).expect("rpc starts");

    // A queue pair on the sleeping reactor: ICReq and Connect only (each answered at the
    // reactor's next poll, within 4 s), no keep-alive timeout.
    let (mut raw, _) = RawConnection::connect_initialized(
        d.listen_addrs[0],
        Digests::default(),
        Duration::from_secs(30),
    )
    .expect("ICReq answered");
    let sqe = ConnectCommand {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato_ms: 0,
    }
    .to_sqe(7, ConnectData::SIZE as u32);
    let data = ConnectData {
        hostid: [0x0b; 16],
        cntlid: 0xffff,
        subnqn: NQN.into(),
        hostnqn: HOST.into(),
    }
    .encode();
    raw.send_capsule(&sqe, Some(&data)).expect("send Connect");
    let cntlid = match raw
        .read_event(Duration::from_secs(30))
        .expect("Connect answered")
    {
        RawEvent::Pdu(p) => match p.header {
            Header::CapsuleResp(cqe) => {
                assert!(cqe.status.is_success(), "Connect failed: {cqe:?}");
                cqe.dw0 as u16
            }
            other => panic!("expected a response to Connect, got {other:?}"),
        },
        other => panic!("expected a response to Connect, got {other:?}"),
    };

    let mut c = Client::connect(&sock).unwrap();
    let mut seen_stats = Vec::new();
    let mut seen_qpairs = Vec::new();
    let mut p2p_stale = false;
    let mut last_total = 0;
    let mut heard = false;
    // Every other call misses the reactor; stop once each method showed it fresh and stale.
    for round in 0..20 {
        // Before every call the reactor is let fall asleep (1024 empty polls, well under
        // 200 ms): calls in quick succession are work for it, and a reactor kept awake by them
        // answers every call in time (seen: 20 fresh rounds in 0.13 s). Asleep for 4 s, it
        // misses a call (stale after the 2 s deadline) and answers the next one when it wakes
        // (fresh), so consecutive calls alternate; with three calls a round, each method sees
        // both within two rounds.
        let nap = || std::thread::sleep(Duration::from_millis(200));
        nap();
        let stats = call(&mut c, "nvmf_get_stats", json!({}));
        assert_eq!(stats["tick_rate"], 1_000_000_000u64, "{stats}");
        let groups = stats["poll_groups"].as_array().expect("poll_groups");
        assert_eq!(
            groups.len(),
            1,
            "the reactor is listed whether it answered or not: {stats}"
        );
        let g = &groups[0];
        assert_eq!(g["name"], GROUP, "{g}");
        let s = shown(g);
        if s == Shown::Unreported {
            assert!(
                !heard,
                "a reactor heard from before is shown without its report: {g}"
            );
            // SPDK's members are all there (scripts iterate `.poll_groups[].transports[]`).
            assert_eq!(g["transports"], json!([]), "{g}");
            assert_eq!(g["io_qpairs"], 0, "{g}");
            assert_eq!(g["current_admin_qpairs"], 0, "{g}");
        } else {
            heard = true;
            // The queue pair, connected before the first call, is in every report.
            assert_eq!(g["current_admin_qpairs"], 1, "{g}");
            assert_eq!(g["current_io_qpairs"], 0, "{g}");
            let total = g["admin_qpairs"].as_u64().expect("admin_qpairs");
            assert!(
                total >= 1 && total >= last_total,
                "admin_qpairs went down: {g}"
            );
            last_total = total;
            assert_eq!(g["transports"], json!([{"trtype": "TCP"}]), "{g}");
            assert!(
                g["completed_nvme_io"].is_u64() && g["pending_bdev_io"].is_u64(),
                "{g}"
            );
        }
        if s == Shown::Stale {
            assert!(g["misses"].as_u64().unwrap_or(0) >= 1, "{g}");
        }
        seen_stats.push(s);

        nap();
        let qps = call(&mut c, "nvmf_subsystem_get_qpairs", json!({"nqn": NQN}));
        let qps = qps.as_array().expect("an array");
        // Every element is a queue pair (SPDK's shape): a reactor never heard from adds none.
        if qps.is_empty() {
            assert!(!heard, "round {round}: the queue pair vanished");
        } else {
            assert_eq!(qps.len(), 1, "round {round}: {qps:?}");
            let q = &qps[0];
            let s = shown(q);
            assert_ne!(s, Shown::Unreported, "a placeholder element: {q}");
            assert_eq!(q["thread"], GROUP, "{q}");
            heard = true;
            assert_eq!(
                (q["qid"].as_u64(), q["cntlid"].as_u64()),
                (Some(0), Some(u64::from(cntlid))),
                "{q}"
            );
            assert_eq!(q["hostnqn"], HOST, "{q}");
            assert_eq!(q["state"], "active", "{q}");
            seen_qpairs.push(s);
        }

        if seen_stats.contains(&Shown::Stale) && !p2p_stale {
            nap();
            let p = call(&mut c, "nvmfd_get_p2p", json!({}));
            let r = p["reactors"].as_array().expect("reactors");
            assert_eq!(r.len(), 1, "{p}");
            assert_eq!(r[0]["thread"], GROUP, "{p}");
            match shown(&r[0]) {
                Shown::Stale => {
                    p2p_stale = true;
                    assert_eq!(p["qpairs"].as_array().map(Vec::len), Some(1), "{p}");
                    assert_eq!(p["qpairs"][0]["stale"], true, "{p}");
                }
                Shown::Fresh => assert_eq!(p["qpairs"].as_array().map(Vec::len), Some(1), "{p}"),
                Shown::Unreported => panic!("heard from before: {p}"),
            }
        }
        let both = |v: &[Shown]| v.contains(&Shown::Fresh) && v.contains(&Shown::Stale);
        if both(&seen_stats) && both(&seen_qpairs) && p2p_stale {
            break;
        }
    }
    let both = |v: &[Shown]| v.contains(&Shown::Fresh) && v.contains(&Shown::Stale);
    assert!(both(&seen_stats), "nvmf_get_stats showed {seen_stats:?}");
    assert!(
        both(&seen_qpairs),
        "nvmf_subsystem_get_qpairs showed {seen_qpairs:?}"
    );
    assert!(p2p_stale, "nvmfd_get_p2p never showed the reactor stale");
    drop(raw);
    d.shutdown();
}
