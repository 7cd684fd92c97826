use super::*;
use std::mem::{offset_of, size_of};
use std::process::Command;

/// Every size and offset the raw layer relies on, as (C expression, Rust value). Prefix
/// structures are checked field by field (their C size is larger by design).
fn rust_layout() -> Vec<(&'static str, usize)> {
    macro_rules! off {
        ($t:ident, $cf:literal, $($rf:tt)+) => {
            (concat!("offsetof(struct ", stringify!($t), ", ", $cf, ")"), offset_of!($t, $($rf)+))
        };
    }
    macro_rules! size {
        ($t:ident) => {
            (
                concat!("sizeof(struct ", stringify!($t), ")"),
                size_of::<$t>(),
            )
        };
    }
    vec![
        off!(ibv_context, "ops", ops),
        off!(ibv_context_ops, "poll_cq", poll_cq),
        off!(ibv_context_ops, "post_srq_recv", post_srq_recv),
        off!(ibv_context_ops, "post_send", post_send),
        off!(ibv_context_ops, "post_recv", post_recv),
        size!(ibv_context_ops),
        off!(ibv_pd, "context", context),
        size!(ibv_mr),
        off!(ibv_mr, "addr", addr),
        off!(ibv_mr, "length", length),
        off!(ibv_mr, "lkey", lkey),
        off!(ibv_mr, "rkey", rkey),
        off!(ibv_cq, "context", context),
        off!(ibv_srq, "context", context),
        off!(ibv_qp, "context", context),
        off!(ibv_qp, "qp_num", qp_num),
        size!(ibv_sge),
        off!(ibv_sge, "length", length),
        off!(ibv_sge, "lkey", lkey),
        size!(ibv_recv_wr),
        off!(ibv_recv_wr, "next", next),
        off!(ibv_recv_wr, "sg_list", sg_list),
        off!(ibv_recv_wr, "num_sge", num_sge),
        size!(ibv_send_wr),
        off!(ibv_send_wr, "next", next),
        off!(ibv_send_wr, "sg_list", sg_list),
        off!(ibv_send_wr, "num_sge", num_sge),
        off!(ibv_send_wr, "opcode", opcode),
        off!(ibv_send_wr, "send_flags", send_flags),
        off!(ibv_send_wr, "invalidate_rkey", imm_or_invalidate),
        off!(ibv_send_wr, "wr.rdma.remote_addr", rdma.remote_addr),
        off!(ibv_send_wr, "wr.rdma.rkey", rdma.rkey),
        off!(ibv_send_wr, "qp_type.xrc.remote_srqn", remote_srqn),
        size!(ibv_wc),
        off!(ibv_wc, "status", status),
        off!(ibv_wc, "opcode", opcode),
        off!(ibv_wc, "byte_len", byte_len),
        off!(ibv_wc, "invalidated_rkey", imm_or_invalidated),
        off!(ibv_wc, "qp_num", qp_num),
        off!(ibv_wc, "wc_flags", wc_flags),
        off!(ibv_wc, "dlid_path_bits", dlid_path_bits),
        size!(ibv_qp_cap),
        size!(ibv_qp_init_attr),
        off!(ibv_qp_init_attr, "srq", srq),
        off!(ibv_qp_init_attr, "cap", cap),
        off!(ibv_qp_init_attr, "qp_type", qp_type),
        off!(ibv_qp_init_attr, "sq_sig_all", sq_sig_all),
        size!(ibv_srq_init_attr),
        off!(ibv_srq_init_attr, "attr", attr),
        size!(rdma_event_channel),
        off!(rdma_cm_id, "verbs", verbs),
        off!(rdma_cm_id, "channel", channel),
        off!(rdma_cm_id, "context", context),
        off!(rdma_cm_id, "qp", qp),
        off!(rdma_cm_id, "route.addr.src_addr", src_addr),
        off!(rdma_cm_id, "route.addr.dst_addr", dst_addr),
        size!(rdma_conn_param),
        off!(rdma_conn_param, "private_data_len", private_data_len),
        off!(rdma_conn_param, "rnr_retry_count", rnr_retry_count),
        off!(rdma_conn_param, "srq", srq),
        off!(rdma_conn_param, "qp_num", qp_num),
        off!(rdma_cm_event, "listen_id", listen_id),
        off!(rdma_cm_event, "event", event),
        off!(rdma_cm_event, "status", status),
        off!(rdma_cm_event, "param.conn", conn),
    ]
}

/// Constants, as (C expression, Rust value).
fn rust_constants() -> Vec<(&'static str, i64)> {
    macro_rules! c {
        ($n:ident) => {
            (stringify!($n), $n as i64)
        };
    }
    vec![
        c!(IBV_QPT_RC),
        c!(IBV_ACCESS_LOCAL_WRITE),
        c!(IBV_ACCESS_REMOTE_WRITE),
        c!(IBV_ACCESS_REMOTE_READ),
        c!(IBV_WR_RDMA_WRITE),
        c!(IBV_WR_SEND),
        c!(IBV_WR_RDMA_READ),
        c!(IBV_WR_SEND_WITH_INV),
        c!(IBV_SEND_SIGNALED),
        c!(IBV_WC_SUCCESS),
        c!(IBV_WC_SEND),
        c!(IBV_WC_RDMA_WRITE),
        c!(IBV_WC_RDMA_READ),
        c!(IBV_WC_RECV),
        c!(IBV_WC_WITH_INV),
        c!(RDMA_PS_TCP),
        (
            "RDMA_CM_EVENT_ADDR_RESOLVED",
            crate::rdma::verbs::cm::EventKind::AddrResolved as i64,
        ),
        (
            "RDMA_CM_EVENT_ROUTE_RESOLVED",
            crate::rdma::verbs::cm::EventKind::RouteResolved as i64,
        ),
        (
            "RDMA_CM_EVENT_CONNECT_REQUEST",
            crate::rdma::verbs::cm::EventKind::ConnectRequest as i64,
        ),
        (
            "RDMA_CM_EVENT_ESTABLISHED",
            crate::rdma::verbs::cm::EventKind::Established as i64,
        ),
        (
            "RDMA_CM_EVENT_DISCONNECTED",
            crate::rdma::verbs::cm::EventKind::Disconnected as i64,
        ),
        (
            "RDMA_CM_EVENT_TIMEWAIT_EXIT",
            crate::rdma::verbs::cm::EventKind::TimewaitExit as i64,
        ),
    ]
}

/// Compiles a C program printing the same expressions against the installed rdma-core headers
/// (libibverbs-dev, librdmacm-dev: installed on CI by .ci/run) and compares.
#[test]
fn layout_matches_headers() {
    if std::env::var_os("NVMFD_SKIP_VERBS_LAYOUT").is_some() {
        eprintln!("layout check skipped (NVMFD_SKIP_VERBS_LAYOUT)");
        return;
    }
    let layout = rust_layout();
    let consts = rust_constants();
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <infiniband/verbs.h>\n\
         #include <rdma/rdma_cma.h>\nint main(void) {\n",
    );
    for (expr, _) in &layout {
        c.push_str(&format!("  printf(\"%zu\\n\", (size_t)({expr}));\n"));
    }
    for (expr, _) in &consts {
        c.push_str(&format!("  printf(\"%lld\\n\", (long long)({expr}));\n"));
    }
    c.push_str("  return 0;\n}\n");
    let dir = std::env::temp_dir().join(format!("nvmfd-verbs-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, c).unwrap();
    let out = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect(
            "cc not found (needed to check the verbs layouts; NVMFD_SKIP_VERBS_LAYOUT=1 skips)",
        );
    assert!(
        out.status.success(),
        "compiling the layout probe failed (libibverbs-dev/librdmacm-dev installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let text = String::from_utf8(run.stdout).unwrap();
    let values: Vec<i64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(values.len(), layout.len() + consts.len());
    let mut bad = Vec::new();
    for (i, (expr, rust)) in layout.iter().enumerate() {
        if values[i] != *rust as i64 {
            bad.push(format!("{expr}: C {} Rust {rust}", values[i]));
        }
    }
    for (i, (expr, rust)) in consts.iter().enumerate() {
        let v = values[layout.len() + i];
        if v != *rust {
            bad.push(format!("{expr}: C {v} Rust {rust}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        bad.is_empty(),
        "layouts differ from the headers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn missing_library_is_a_clear_error() {
    let err = load("libibverbs-does-not-exist.so.1", LIBRDMACM)
        .err()
        .expect("a library that does not exist loaded");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "libibverbs-does-not-exist.so.1 not found: install rdma-core/ibverbs-providers ("
        ),
        "{text}"
    );
    let err = load(LIBIBVERBS, "librdmacm-does-not-exist.so.1").err();
    // Where libibverbs itself is absent the first name is what is reported; either way the
    // missing one is named.
    let text = err.expect("missing librdmacm loaded").to_string();
    assert!(
        text.contains("not found: install rdma-core/ibverbs-providers"),
        "{text}"
    );
}

#[test]
fn installed_libraries_resolve_every_symbol() {
    // This machine and CI have rdma-core installed (libibverbs-dev pulls libibverbs1).
    match load(LIBIBVERBS, LIBRDMACM) {
        Ok(_) => {}
        Err(e @ LoadError::Symbol { .. }) => panic!("{e}"),
        Err(e) => panic!("rdma-core is expected on build machines: {e}"),
    }
}
