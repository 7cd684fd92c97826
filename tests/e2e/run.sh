#!/usr/bin/env bash
# tests/e2e/run.sh - end-to-end test of nvmfd with the real Linux NVMe/TCP initiator.
#
#   tests/e2e/run.sh [--kernel NAME] [NVMFD_BINARY]   (default binary: $NVMFD, else build/release/nvmfd)
#
# Runs on this machine; builds nothing. It writes a YAML configuration, starts nvmfd with it on
# 127.0.0.1:PORT, boots the rig's QEMU guest (deploy/rig/run-guest.sh; run deploy/rig/setup.sh
# once before) with tests/e2e/guest-tcp.sh, which reaches the daemon at 10.0.2.2:PORT, then checks
# the daemon's log and that SIGTERM stops it with exit code 0.
#
# A second nvmfd instance (the "twin") serves the SAME subsystem NQN, serial and model from a
# different malloc namespace on PORT2: the guest checks that the kernel does not take the two for
# paths to one multipath namespace (their namespace identifiers must differ).
#
# --kernel NAME   guest kernel, as run-guest.sh --kernel takes it: stable (Debian 12's 6.1), newest
#                 (Debian unstable's), or a version prefix such as 6.1 or 7.2 (default $E2E_KERNEL,
#                 else $RIG_KERNEL, else stable)
#
# Environment:
#   E2E_PORT      listener port (default 4420; if it is taken, the first free port from 4421);
#                 the twin takes the next free port after it
#   E2E_TIMEOUT   guest time limit in seconds (default 900)
#   E2E_WORK      work folder, must not be under /tmp (default build/e2e/<time>)
#   RUST_LOG      passed to nvmfd (default info)
# Output: PASS/FAIL per step, and last a line "e2e: N passed, M failed". Exit 0 only if all passed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KERNEL=${E2E_KERNEL:-${RIG_KERNEL:-stable}}
while (($#)); do
    case $1 in
    --kernel) KERNEL=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
NVMFD=${1:-${NVMFD:-$REPO/build/release/nvmfd}}
TIMEOUT=${E2E_TIMEOUT:-900}

NQN=nqn.2026-11.io.nvmfd:default
RNQN=nqn.2026-11.io.nvmfd:restricted
SERIAL=NVMFDE2E0001
MODEL=nvmfd
SIZE_MIB=256
TWIN_SIZE_MIB=64
ALLOWED_HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$(cat /proc/sys/kernel/random/uuid)
REFUSED_HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$(cat /proc/sys/kernel/random/uuid)

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "[$(date +%H:%M:%S)] PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "[$(date +%H:%M:%S)] FAIL: $*"; }
info() { echo "[$(date +%H:%M:%S)] e2e: $*"; }
finish() {
    echo "e2e: $PASSED passed, $FAILED failed"
    ((FAILED == 0)) && exit 0
    exit 1
}

# ---- preconditions -------------------------------------------------------------------------
[[ -x $NVMFD ]] || { fail "nvmfd binary: $NVMFD is not an executable (build it first)"; finish; }
NVMFD=$(realpath "$NVMFD")

WORK=${E2E_WORK:-$REPO/build/e2e/$(date +%Y%m%d-%H%M%S)-$KERNEL-$$}
case $WORK in
/tmp/* | /run/* | /var/tmp/*) fail "E2E_WORK=$WORK: the guest does not see that folder"; finish ;;
esac
mkdir -p "$WORK/out"
rm -f "$WORK/out/results"   # the guest appends to it
WORK=$(realpath "$WORK")
CONFIG=$WORK/nvmfd.yaml
DLOG=$WORK/nvmfd.log
TWIN_CONFIG=$WORK/nvmfd-twin.yaml
TWIN_LOG=$WORK/nvmfd-twin.log
GLOG=$WORK/guest-console.log

port_busy() { [[ -n $(ss -Htln "sport = :$1") ]]; }
PORT=${E2E_PORT:-4420}
if port_busy "$PORT"; then
    [[ -z ${E2E_PORT:-} ]] || { fail "port $PORT (E2E_PORT) is already in use"; finish; }
    for p in $(seq 4421 4499); do
        if ! port_busy "$p"; then PORT=$p; break; fi
    done
    info "port 4420 is in use; using $PORT"
fi
PORT2=
for p in $(seq $((PORT + 1)) $((PORT + 80))); do
    if ! port_busy "$p"; then PORT2=$p; break; fi
done
[[ -n $PORT2 ]] || { fail "no free port after $PORT for the twin instance"; finish; }
MPORT=
for p in $(seq $((PORT2 + 1)) $((PORT2 + 80))); do
    if ! port_busy "$p"; then MPORT=$p; break; fi
done
[[ -n $MPORT ]] || { fail "no free port after $PORT2 for the metrics endpoint"; finish; }

# ---- configuration -------------------------------------------------------------------------
# One reactor on core 0 that sleeps 50 us when idle, so QEMU keeps CPU on these 2-core machines.
cat >"$CONFIG" <<EOF
# Written by tests/e2e/run.sh
state_dir: $WORK/state
rpc: { socket: $WORK/rpc.sock }
# The guest scrapes this (as 10.0.2.2:$MPORT) around one fio job.
metrics: { listen: "127.0.0.1:$MPORT" }
reactors:
  cores: [0]
  idle_sleep_us: 50

transports:
  tcp:
    max_io_size: 128KiB
    # Four 128 KiB buffers: fio's 128k/1m steps then keep commands waiting for a buffer (and
    # writes waiting for their R2T), so the kernel initiator exercises that path under verify.
    buffer_pool_size: 512KiB

bdevs:
  - name: e2e0
    malloc: { size: ${SIZE_MIB}MiB, block_size: 4096 }
  - name: e2e1
    malloc: { size: 16MiB, block_size: 4096 }

subsystems:
  - nqn: $NQN
    serial: $SERIAL
    model: $MODEL
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: e2e0 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: $PORT }
  - nqn: $RNQN
    serial: NVMFDE2E0002
    model: $MODEL
    allow_any_host: false
    hosts:
      - $ALLOWED_HOSTNQN
    namespaces:
      - { nsid: 1, bdev: e2e1 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: $PORT }

discovery:
  enabled: true
EOF
# The twin: the same subsystem NQN, serial and model (as when one configuration file is deployed
# on two machines), but its own, smaller malloc namespace: different data behind the same NSID.
cat >"$TWIN_CONFIG" <<EOF
# Written by tests/e2e/run.sh: a second instance serving the same NQN with other data. Its own
# state folder, as on a second machine.
state_dir: $WORK/twin-state
rpc: { socket: $WORK/twin-rpc.sock }
reactors:
  cores: [0]
  idle_sleep_us: 50

bdevs:
  - name: twin0
    malloc: { size: ${TWIN_SIZE_MIB}MiB, block_size: 4096 }

subsystems:
  - nqn: $NQN
    serial: $SERIAL
    model: $MODEL
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: twin0 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: $PORT2 }

discovery:
  enabled: false
EOF
info "work folder $WORK; nvmfd $NVMFD; port $PORT, twin port $PORT2; guest kernel $KERNEL"

for c in "$CONFIG" "$TWIN_CONFIG"; do
    if out=$(timeout 30 "$NVMFD" check-config "$c" 2>&1); then
        pass "nvmfd check-config accepts $(basename "$c")"
    else
        fail "nvmfd check-config refuses $(basename "$c"): $out"
    fi
done

# ---- start the daemons -----------------------------------------------------------------------
# Each daemon: PIDS[name], LOGS[name], PORTS[name]; "nvmfd" is the one under test, "twin" the
# second instance with the same NQN.
declare -A PIDS=() LOGS=([nvmfd]=$DLOG [twin]=$TWIN_LOG) PORTS=([nvmfd]=$PORT [twin]=$PORT2)
GPID=''
RELAY=''
# On any exit, leave nothing running: the daemons are killed, the guest (run-guest.sh) stopped.
# shellcheck disable=SC2317  # called by the traps
cleanup() {
    local n
    if [[ -n $RELAY ]]; then
        kill -TERM "$RELAY" 2>/dev/null || true
        wait "$RELAY" 2>/dev/null || true
    fi
    if [[ -n $GPID ]] && kill -0 "$GPID" 2>/dev/null; then
        kill -TERM "$GPID" 2>/dev/null || true
        wait "$GPID" 2>/dev/null || true
    fi
    for n in "${!PIDS[@]}"; do
        if [[ -z ${PIDS[$n]} ]] || ! kill -0 "${PIDS[$n]}" 2>/dev/null; then continue; fi
        kill -KILL "${PIDS[$n]}" 2>/dev/null || true
        wait "${PIDS[$n]}" 2>/dev/null || true
    done
}
trap cleanup EXIT
# shellcheck disable=SC2317
interrupted() {
    fail "interrupted by SIG$1 (not by this test)"
    cleanup
    echo "e2e: $PASSED passed, $FAILED failed"
    exit 1
}
trap 'interrupted TERM' TERM
trap 'interrupted INT' INT
trap 'interrupted HUP' HUP

listening() { kill -0 "${PIDS[$1]}" 2>/dev/null && port_busy "${PORTS[$1]}"; }

# start_daemon NAME CONFIG: start one nvmfd and wait until it listens; false if it does not.
start_daemon() {
    local n=$1 deadline rc=0
    # Plain-text logs (no colours) so they can be searched.
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$NVMFD" --config "$2" >"${LOGS[$n]}" 2>&1 &
    PIDS[$n]=$!
    deadline=$(($(date +%s) + 30))
    until listening "$n"; do
        if ! kill -0 "${PIDS[$n]}" 2>/dev/null || (($(date +%s) > deadline)); then
            break
        fi
        sleep 0.2
    done
    if listening "$n"; then
        pass "$n started (pid ${PIDS[$n]}) and listens on 127.0.0.1:${PORTS[$n]}"
        return 0
    fi
    kill -0 "${PIDS[$n]}" 2>/dev/null || { wait "${PIDS[$n]}" || rc=$?; }
    fail "$n is not listening on 127.0.0.1:${PORTS[$n]} after 30s (exit code ${rc:-running}); log tail:"
    tail -n 30 "${LOGS[$n]}" | sed "s/^/    $n: /"
    PIDS[$n]=
    return 1
}

start_daemon nvmfd "$CONFIG" || finish
start_daemon twin "$TWIN_CONFIG" || finish

# ---- the guest -------------------------------------------------------------------------------
# The guest's live-reconfiguration steps call nvmfd's JSON-RPC through files: each request
# $WORK/out/rpc/ID.req holds a method and its JSON params (two lines); the answer goes to ID.out
# and the exit status of `nvmfd rpc` to ID.rc (written last).
mkdir -p "$WORK/out/rpc"
rpc_relay() {
    local req id method params rc
    set +e   # a bad request must not end the relay
    while sleep 0.1; do
        for req in "$WORK"/out/rpc/*.req; do
            [[ -e $req ]] || continue
            id=${req%.req}
            { read -r method; read -r params; } <"$req"
            rc=0
            timeout 30 "$NVMFD" rpc --rpc-socket "$WORK/rpc.sock" -o json "$method" --json "$params" \
                >"$id.out" 2>&1 || rc=$?
            echo "[$(date +%H:%M:%S)] e2e: guest RPC $method -> $rc" >>"$WORK/rpc-relay.log"
            echo "$rc" >"$id.rc.tmp" && mv "$id.rc.tmp" "$id.rc"
            rm -f "$req"
        done
    done
}
rpc_relay &
RELAY=$!

info "booting the guest (limit ${TIMEOUT}s); console in $GLOG"
start=$(date +%s)
grc=0
# In the background, so that a signal to this script is handled at once (see the traps above).
"$REPO/deploy/rig/run-guest.sh" --kernel "$KERNEL" --timeout "$TIMEOUT" --out "$WORK/out" --log "$GLOG" \
    "$REPO/tests/e2e/guest-tcp.sh" --addr 10.0.2.2 --port "$PORT" --nqn "$NQN" \
    --model "$MODEL" --serial "$SERIAL" --size $((SIZE_MIB * 1024 * 1024)) \
    --restricted-nqn "$RNQN" --allowed-hostnqn "$ALLOWED_HOSTNQN" \
    --refused-hostnqn "$REFUSED_HOSTNQN" --twin-port "$PORT2" \
    --twin-size $((TWIN_SIZE_MIB * 1024 * 1024)) --metrics-port "$MPORT" &
GPID=$!
wait "$GPID" || grc=$?
GPID=
info "guest finished in $(($(date +%s) - start))s with exit code $grc"

# Count the guest's steps from the results file it wrote through the rig's output share.
gpass=0 gfail=0
if [[ -f $WORK/out/results ]]; then
    gpass=$(grep -c '^PASS ' "$WORK/out/results" || true)
    gfail=$(grep -c '^FAIL ' "$WORK/out/results" || true)
fi
PASSED=$((PASSED + gpass))
FAILED=$((FAILED + gfail))
info "guest steps: $gpass passed, $gfail failed"
if ((gfail > 0)); then
    sed -n 's/^FAIL /    guest FAIL: /p' "$WORK/out/results"
fi
if ((grc != 0 && gfail == 0)); then
    fail "guest run ended with exit code $grc without a failed step (rig failure or timeout; see $GLOG)"
elif ((grc == 0 && gpass == 0)); then
    fail "guest run reported no steps"
fi

# ---- the daemons' side ----------------------------------------------------------------------
for n in nvmfd twin; do
    if kill -0 "${PIDS[$n]}" 2>/dev/null; then
        pass "$n still running after the guest suite"
    else
        rc=0
        wait "${PIDS[$n]}" || rc=$?
        PIDS[$n]=
        fail "$n died during the guest suite (exit code $rc); log tail:"
        tail -n 30 "${LOGS[$n]}" | sed "s/^/    $n: /"
    fi
done

# The log without colour codes, searched as a whole (a `... | grep -q` pipeline could fail under
# pipefail when grep stops reading early).
plain=$(sed 's/\x1b\[[0-9;]*m//g' "$DLOG")
# Only if the guest got as far as the allow-list step.
if grep -q 'not on the allow-list' "$WORK/out/results" 2>/dev/null; then
    refusals=$(grep -F "$REFUSED_HOSTNQN" <<<"$plain" | grep -iE 'refus|denied|not allowed|reject|forbid' || true)
    if [[ -n $refusals ]]; then
        pass "nvmfd log explains the refusal of $REFUSED_HOSTNQN"
        head -n 2 <<<"$refusals" | sed 's/^/    nvmfd: /'
    else
        fail "nvmfd log has no refusal line mentioning $REFUSED_HOSTNQN"
    fi
fi
for n in nvmfd twin; do
    plain=$(sed 's/\x1b\[[0-9;]*m//g' "${LOGS[$n]}")
    if grep -q 'panicked' <<<"$plain"; then
        fail "$n log shows a panic:"
        grep -A5 'panicked' <<<"$plain" | head -n 20 | sed "s/^/    $n: /" || true
    else
        pass "$n log has no panic"
    fi
done

# ---- stop --------------------------------------------------------------------------------------
for n in nvmfd twin; do
    pid=${PIDS[$n]}
    [[ -n $pid ]] || continue
    kill -TERM "$pid"
    deadline=$(($(date +%s) + 30))
    while kill -0 "$pid" 2>/dev/null && (($(date +%s) < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        fail "$n still running 30s after SIGTERM (killing it)"
        kill -KILL "$pid" || true
        wait "$pid" 2>/dev/null || true
    else
        rc=0
        wait "$pid" || rc=$?
        if ((rc == 0)); then
            pass "$n exited 0 after SIGTERM"
        else
            fail "$n exited $rc after SIGTERM; log tail:"
            tail -n 15 "${LOGS[$n]}" | sed "s/^/    $n: /"
        fi
    fi
    PIDS[$n]=
done

info "daemon log $DLOG ($(grep -ci 'warn' "$DLOG" || true) warnings, $(grep -c 'ERROR' "$DLOG" || true) errors); twin log $TWIN_LOG; guest console $GLOG"
finish
