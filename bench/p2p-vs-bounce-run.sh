#!/usr/bin/env bash
# bench/p2p-vs-bounce-run.sh - the measuring half of bench/p2p-vs-bounce.sh, on the machine that
# has the SSD (real hardware, or INSIDE the QEMU rig's guest). Start it through
# bench/p2p-vs-bounce.sh; it reads its settings from the environment:
#
#   PVB_BIN        folder with nvmfd and nvmfd-bench (required)
#   PVB_OUT        writable output folder (required): results.json, topology.json, report.md,
#                  chart.svg, fio-*.json, nvmfd-*.log
#   PVB_BDF        PCI address of the NVMe SSD to export (its CMB is the P2P target)
#   PVB_TRANSPORT  tcp or rdma (default tcp)
#   PVB_ADDR       listener address (default 127.0.0.1); PVB_PORT (default 4420)
#   PVB_NIC        PCI address of the RDMA NIC, for the model (optional)
#   PVB_DRAM_GBS   DRAM bandwidth in GB/s, for the model's ceiling (optional)
#   PVB_RUNTIME    seconds per timed fio job (default 10); PVB_SIZE fio region (default 256M)
#   PVB_JOBS       fio job names (default: all five in bench/fio)
#   PVB_MODES      p2p settings to compare (default "off auto")
#   PVB_COMMIT     the commit the binaries were built from (for the report)
#   PVB_SETUP      1: bind the SSD to vfio-pci and reserve hugepages (PVB_HUGEMEM, default 64MiB)
#                  with `nvmfd setup` first
#
# For each mode it starts nvmfd with the same configuration except `p2p:`, connects the kernel
# initiator with nvme-cli, runs every timed fio job (JSON output) and its -verify variant, reads
# the daemon's CPU time from /proc and its /metrics before and after each job, and appends the
# run to results.json with `nvmfd-bench add-run`; at the end `nvmfd-bench report` writes the
# table, the model and the chart.
#
# Honesty rules: a run counts as P2P only if the daemon's counters say bytes went through the
# CMB. This build's config refuses `p2p:` ("not supported yet"); the script then starts the same
# configuration without the field, says so in the report, and every run is a bounce run.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${PVB_BIN:?PVB_BIN: folder with nvmfd and nvmfd-bench}
OUT=${PVB_OUT:?PVB_OUT: output folder}
BDF=${PVB_BDF:?PVB_BDF: the SSD to export}
TRANSPORT=${PVB_TRANSPORT:-tcp}
ADDR=${PVB_ADDR:-127.0.0.1}
PORT=${PVB_PORT:-4420}
METRICS=127.0.0.1:${PVB_METRICS_PORT:-9477}
RUNTIME=${PVB_RUNTIME:-10}
SIZE=${PVB_SIZE:-256M}
JOBS=${PVB_JOBS:-randwrite-4k-qd32 seqwrite-128k-qd8 seqwrite-1m-qd4 randread-4k-qd32 randrw70-4k-qd32}
MODES=${PVB_MODES:-off auto}
NQN=nqn.2026-12.io.nvmfd:bench
NVMFD=$BIN/nvmfd
BENCH=$BIN/nvmfd-bench
STATE=${TMPDIR:-/tmp}/nvmfd-pvb
RESULTS=$OUT/results.json
DPID=
DEV=

log() { echo "[$(date +%H:%M:%S)] p2p-vs-bounce: $*"; }
die() { log "ERROR: $*"; stop_daemon; exit 1; }

write_config() { # MODE|"" FILE
    {
        echo "reactors: { count: 1 }"
        echo "state_dir: $STATE/state"
        echo "rpc: { socket: $STATE/rpc.sock }"
        echo "metrics: { listen: \"$METRICS\" }"
        echo "bdevs:"
        echo "  - name: ssd0"
        echo "    nvme: { pci: \"$BDF\", namespace: 1 }"
        echo "subsystems:"
        echo "  - nqn: $NQN"
        echo "    allow_any_host: true"
        [[ -n $1 ]] && echo "    p2p: $1"
        echo "    namespaces: [ { nsid: 1, bdev: ssd0 } ]"
        echo "    listeners: [ { transport: $TRANSPORT, address: $ADDR, port: $PORT } ]"
    } >"$2"
}

# start_daemon MODE: sets DPID; echoes "refused" on fd 3 when p2p: was refused by the config.
start_daemon() {
    local mode=$1 cfg=$STATE/nvmfd-$1.yaml log=$OUT/nvmfd-$1.log
    mkdir -p "$STATE/state"
    write_config "$mode" "$cfg"
    : >"$log"
    "$NVMFD" --config "$cfg" >>"$log" 2>&1 &
    DPID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q "nvmfd started" "$log" && return 0
        if ! kill -0 "$DPID" 2>/dev/null; then
            wait "$DPID" 2>/dev/null
            DPID=
            if grep -q "p2p.*not supported yet" "$log"; then
                P2P_REFUSED=1
                log "p2p: $mode refused by this build's config: $(grep -m1 -o 'peer-to-peer[^"]*' "$log")"
                write_config "" "$cfg"
                : >"$log"
                "$NVMFD" --config "$cfg" >>"$log" 2>&1 &
                DPID=$!
                continue
            fi
            cat "$log"
            return 1
        fi
        sleep 0.2
    done
    cat "$log"
    return 1
}

stop_daemon() {
    [[ -n $DPID ]] || return 0
    kill -TERM "$DPID" 2>/dev/null
    wait "$DPID" 2>/dev/null
    DPID=
}

connect() {
    local i d
    for i in 1 2 3; do
        nvme connect -t "$TRANSPORT" -a "$ADDR" -s "$PORT" -n "$NQN" >/dev/null && break
        ((i < 3)) || return 1
        sleep 2
    done
    for ((i = 0; i < 100; i++)); do
        for d in /sys/class/nvme-subsystem/*/subsysnqn; do
            [[ -e $d && $(cat "$d") == "$NQN" ]] || continue
            for n in "$(dirname "$d")"/nvme*n1; do
                [[ -e $n ]] && DEV=/dev/$(basename "$n") && [[ -b $DEV ]] && return 0
            done
        done
        sleep 0.2
    done
    return 1
}

disconnect() {
    nvme disconnect -n "$NQN" >/dev/null 2>&1
    DEV=
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$DPID/stat"; }

metrics() { curl -fsS "http://$METRICS/metrics" >"$1" 2>/dev/null || : >"$1"; }

run_fio() { # JOBFILE OUTJSON
    (cd "$HERE/fio" && FIO_DEV=$DEV FIO_SIZE=$SIZE FIO_RUNTIME=$RUNTIME \
        timeout $((RUNTIME * 4 + 600)) fio --eta=never --output-format=json --output="$2" "$1.fio")
}

[[ -x $NVMFD && -x $BENCH ]] || die "$BIN has no nvmfd or nvmfd-bench"
mkdir -p "$OUT" "$STATE" || die "cannot create $OUT"
{ command -v fio && command -v nvme; } >/dev/null || die "fio and nvme-cli are needed"
modprobe "nvme-$TRANSPORT" 2>/dev/null || true

if [[ ${PVB_SETUP:-0} == 1 ]]; then
    "$NVMFD" setup --pci "$BDF" || die "nvmfd setup --pci $BDF failed"
    "$NVMFD" setup --hugemem "${PVB_HUGEMEM:-64MiB}" || die "nvmfd setup --hugemem failed"
fi
"$NVMFD" topology --json >"$OUT/topology.json" 2>"$OUT/topology.err" || {
    log "nvmfd topology --json failed (the model will have no links): $(head -c 300 "$OUT/topology.err")"
    rm -f "$OUT/topology.json"
}

P2P_REFUSED=0
init=(--results "$RESULTS" --transport "$TRANSPORT" --ssd "$BDF"
    --generated "$(date -u +%Y-%m-%dT%H:%MZ), kernel $(uname -r), commit ${PVB_COMMIT:-unknown}, fio ${RUNTIME}s per job over ${SIZE}")
[[ -n ${PVB_NIC:-} ]] && init+=(--nic "$PVB_NIC")
[[ -n ${PVB_DRAM_GBS:-} ]] && init+=(--dram-gbs "$PVB_DRAM_GBS")
"$BENCH" init "${init[@]}" || die "nvmfd-bench init failed"

tck=$(getconf CLK_TCK)
for mode in $MODES; do
    log "mode p2p: $mode"
    start_daemon "$mode" || die "nvmfd did not start (mode $mode)"
    connect || die "nvme connect -t $TRANSPORT $ADDR:$PORT failed"
    log "connected: $DEV"
    for job in $JOBS; do
        [[ -f $HERE/fio/$job.fio ]] || die "no bench/fio/$job.fio"
        out=$OUT/fio-$job-$mode.json
        metrics "$STATE/m0"
        c0=$(cpu_ticks)
        run_fio "$job" "$out" || die "fio $job failed (mode $mode): $(tail -c 500 "$out")"
        c1=$(cpu_ticks)
        metrics "$STATE/m1"
        verdict=pass
        run_fio "$job-verify" "$OUT/fio-$job-verify-$mode.json" || verdict=fail
        log "$job ($mode): verify $verdict"
        cpu=$(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN { printf "%.3f", (b - a) / t }')
        args=(--results "$RESULTS" --job "$job" --mode "$mode" --fio "$out" --cpu-seconds "$cpu" --verify "$verdict")
        [[ -s $STATE/m1 ]] && args+=(--metrics-before "$STATE/m0" --metrics-after "$STATE/m1")
        "$BENCH" add-run "${args[@]}" || die "nvmfd-bench add-run failed for $job"
    done
    disconnect
    stop_daemon
done

if ((P2P_REFUSED)); then
    # Recorded in the results file itself, so every report made from it says so.
    "$BENCH" note --results "$RESULTS" "This build refuses \`p2p:\` in the configuration (not supported yet), so every mode ran the same bounce data path: the modes differ only by run-to-run noise, and no CMB byte counter exists." ||
        die "nvmfd-bench note failed"
fi
rep=(--results "$RESULTS" --markdown "$OUT/report.md" --svg "$OUT/chart.svg")
[[ -s $OUT/topology.json ]] && rep+=(--topology "$OUT/topology.json")
"$BENCH" report "${rep[@]}" || die "nvmfd-bench report failed"
log "wrote $OUT/report.md and $OUT/chart.svg"
cat "$OUT/report.md"
