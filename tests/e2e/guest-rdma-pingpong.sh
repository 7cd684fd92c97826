#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# tests/e2e/guest-rdma-pingpong.sh - prove nvmfd's verbs layer (transport::rdma::verbs) on
# soft-RoCE: set up rxe0 on eth0, then run the rdma_pingpong example (server on an SRQ with
# re-posted receives, batched CQ polling, pre-built WRs; SEND/RECV ping-pong with content checks,
# RDMA WRITE and READ checks, a reject with private data, the listener address check). Also
# checks that nvmfd itself does not link rdma-core (it loads it only for RDMA listeners).
# Runs INSIDE the guest:
#
#   cargo build --release -p nvmfd-transport --example rdma_pingpong
#   deploy/rig/run-guest.sh tests/e2e/guest-rdma-pingpong.sh [PINGPONG_BIN [NVMFD_BIN]]
#
# E2E_RDMA_ITERS (default 10000), E2E_RDMA_SIZE (512) and E2E_RDMA_WINDOW (4) tune the run.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"

[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me in the guest: deploy/rig/run-guest.sh $0" >&2; exit 2; }

REPO=$(cd "$HERE/../.." && pwd)
PINGPONG=${1:-$REPO/build/release/examples/rdma_pingpong}
NVMFD=${2:-$REPO/build/release/nvmfd}
ITERS=${E2E_RDMA_ITERS:-10000}
SIZE=${E2E_RDMA_SIZE:-512}
WINDOW=${E2E_RDMA_WINDOW:-4}
ADDR=

setup_rxe() {
    rdma link add rxe0 type rxe netdev eth0 || { why "rdma link add rxe0 failed (rdma_rxe loaded?)"; return 1; }
    wait_for 10 test -e /dev/infiniband/uverbs0 || true
    [[ -e /dev/infiniband/rdma_cm ]] || { why "no /dev/infiniband/rdma_cm (rdma_ucm loaded?)"; return 1; }
    [[ -e /dev/infiniband/uverbs0 ]] || { why "no /dev/infiniband/uverbs0"; return 1; }
    ibv_devices | grep -q rxe0 || { why "libibverbs does not see rxe0 (ibverbs-providers?)"; return 1; }
    ADDR=$(ip -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]; exit}')
    [[ -n $ADDR ]] || { why "eth0 has no IPv4 address"; return 1; }
    wait_for 30 rxe_ready rxe0 "$ADDR" || { why "rxe0 port not ACTIVE with the GID of $ADDR after 30 s"; return 1; }
    note "rxe0 on eth0, $ADDR"
}

no_rdma_core_link() {
    [[ -x $NVMFD ]] || { why "$NVMFD not built"; return 1; }
    local needed
    needed=$(readelf -d "$NVMFD" | grep NEEDED) || { why "readelf -d $NVMFD failed"; return 1; }
    note "$(tr -s ' ' <<<"$needed" | sed 's/.*Shared library: //' | tr '\n' ' ')"
    if grep -Eq 'libibverbs|librdmacm' <<<"$needed"; then
        why "nvmfd links rdma-core: a TCP-only daemon would not start without it"
        return 1
    fi
}

# The example prints "PASS name: detail" / "FAIL name: why" per check: count each as a step.
pingpong() {
    [[ -x $PINGPONG ]] || { why "$PINGPONG not built (cargo build --release -p nvmfd-transport --example rdma_pingpong)"; return 1; }
    local out rc=0 line fails=0
    out=$(timeout 240 "$PINGPONG" --addr "$ADDR" --iters "$ITERS" --size "$SIZE" --window "$WINDOW" 2>&1) || rc=$?
    while IFS= read -r line; do
        case $line in
        PASS\ *)
            echo "[$(ts)]   $line"
            E2E_PASSED=$((E2E_PASSED + 1))
            record "PASS rdma_pingpong: ${line#PASS }"
            ;;
        FAIL\ *)
            echo "[$(ts)]   $line"
            E2E_FAILED=$((E2E_FAILED + 1))
            fails=$((fails + 1))
            record "FAIL rdma_pingpong: ${line#FAIL }"
            ;;
        *) echo "[$(ts)]   $line" ;;
        esac
    done <<<"$out"
    ((rc == 0)) || { why "rdma_pingpong exited $rc ($fails check(s) failed)"; return 1; }
}

# In a mount namespace where libibverbs/librdmacm are /dev/null (rdma-core "absent"), run
# "$@"; the caller's checks follow.
without_rdma_core() {
    local ibv cm
    ibv=$(readlink -f /usr/lib/x86_64-linux-gnu/libibverbs.so.1) || return 1
    cm=$(readlink -f /usr/lib/x86_64-linux-gnu/librdmacm.so.1) || return 1
    # shellcheck disable=SC2016  # $1, $2, $@ belong to the inner shell
    unshare -m bash -c 'mount --bind /dev/null "$1" && mount --bind /dev/null "$2" && shift 2 && exec "$@"' \
        hide "$ibv" "$cm" "$@"
}

missing_library_error() {
    [[ -x $PINGPONG ]] || { why "$PINGPONG not built"; return 1; }
    local out rc=0
    out=$(without_rdma_core timeout 60 "$PINGPONG" --addr "$ADDR" --iters 10 2>&1) || rc=$?
    echo "$out" | head -3 | sed "s/^/[$(ts)]   (expected) /"
    ((rc != 0)) || { why "rdma_pingpong succeeded without rdma-core"; return 1; }
    grep -q "^FAIL listen address with an RDMA device: RDMA listener $ADDR:18515: libibverbs.so.1 not found: install rdma-core/ibverbs-providers (" <<<"$out" ||
        { why "no one-line 'libibverbs.so.1 not found' error for the listener"; return 1; }
}

tcp_only_daemon() {
    [[ -x $NVMFD ]] || { why "$NVMFD not built"; return 1; }
    cat >/tmp/tcp-only.yaml <<YAML || { why "cannot write the configuration"; return 1; }
state_dir: /tmp/nvmfd-state
rpc: { socket: /tmp/nvmfd-rpc.sock }
reactors:
  cores: [0]
  idle_sleep_us: 50
transports:
  tcp: {}
bdevs:
  - name: m0
    malloc: { size: 16MiB, block_size: 4096 }
subsystems:
  - nqn: nqn.2026-12.io.nvmfd:tcp-only
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: m0 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: 4420 }
discovery:
  enabled: true
YAML
    without_rdma_core env NO_COLOR=1 "$NVMFD" --config /tmp/tcp-only.yaml >/tmp/tcp-only.log 2>&1 &
    local pid=$! ok=0 out=
    if wait_for 30 listening_4420; then
        out=$(nvme discover -t tcp -a 127.0.0.1 -s 4420 2>&1) && ok=1
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    ((ok)) || { why "nvmfd (TCP only, no rdma-core) does not serve discovery on 127.0.0.1:4420 ($out)"; tail -n 20 /tmp/tcp-only.log; return 1; }
    grep -q "subnqn: *nqn.2026-12.io.nvmfd:tcp-only\$" <<<"$out" || { why "discovery log lacks the subsystem"; echo "$out"; return 1; }
    note "nvme discover lists nqn.2026-12.io.nvmfd:tcp-only"
}

listening_4420() { [[ -n $(ss -Hltn 'sport = :4420') ]]; }

run_step "soft-RoCE: rxe0 on eth0" setup_rxe
if [[ -n $ADDR ]]; then
    run_step "rdma_pingpong ($ITERS iterations of $SIZE bytes, window $WINDOW)" pingpong
    run_step "without rdma-core: an RDMA listener fails with one line naming what is missing" missing_library_error
fi
run_step "without rdma-core: a TCP-only nvmfd starts and listens" tcp_only_daemon
run_step "nvmfd does not link libibverbs/librdmacm" no_rdma_core_link
summary "rdma pingpong"
