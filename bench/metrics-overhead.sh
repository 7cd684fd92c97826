#!/usr/bin/env bash
# bench/metrics-overhead.sh - the cost of observability: randread 4 KiB at QD32 and QD1 with
# the metrics endpoint on and scraped every second, against the same daemon with metrics off.
#
# Each round starts nvmfd (one reactor, a malloc namespace) in one mode, runs nvmfd-perf for
# MO_TIME seconds per workload, and stops it; the modes alternate in ABBA order (on off off on
# ...) so drift of a shared machine falls on both alike. "on" means `metrics.listen` is set (the
# reactors count every command: commands, bytes, latency histograms) and a scraper fetches
# /metrics once a second during the run; "off" means no `metrics:` at all (nothing counted).
# The table gives the median IOPS and mean latency of each mode and their ratio (goal: on/off
# IOPS ≥ 0.98, i.e. a cost ≤ 2 %).
#
#   MO_BIN     folder with nvmfd and nvmfd-perf (default build/release of this checkout)
#   MO_ROUNDS  rounds of each mode (default 6)
#   MO_TIME    seconds per perf run (default 5)
#   MO_OUT     output folder (default build/metrics-overhead): results.csv, nvmfd-*.log
#   MO_TARGET_CPU / MO_PERF_CPU  the reactor's core and the perf thread's (default 0 / 1)
#
# Build first: cargo build --release -p nvmfd-target -p nvmfd-bench
#
# On a shared, loaded machine the IOPS of two runs differ by far more than 2 %; what counting
# adds per command, measured in a tight loop (much less sensitive to load), is printed by
#   cargo test --release -p nvmfd-target --test metrics -- --ignored --nocapture counting_cost
# and is to be read against the reactor's time per I/O (1 / IOPS of one reactor).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${MO_BIN:-$ROOT/build/release}
ROUNDS=${MO_ROUNDS:-6}
TIME=${MO_TIME:-5}
OUT=${MO_OUT:-$ROOT/build/metrics-overhead}
TCPU=${MO_TARGET_CPU:-0}
PCPU=${MO_PERF_CPU:-1}
NQN=nqn.2026-12.io.nvmfd:mo
STATE=$(mktemp -d "${TMPDIR:-/tmp}/nvmfd-mo.XXXXXX")
DPID=
SPID=

log() { echo "[$(date +%H:%M:%S)] metrics-overhead: $*" >&2; }
stop() {
    [[ -n $SPID ]] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
    SPID=
    if [[ -n $DPID ]]; then
        kill -TERM "$DPID" 2>/dev/null
        wait "$DPID" 2>/dev/null
    fi
    DPID=
}
trap 'stop; rm -rf "$STATE"' EXIT
for b in nvmfd nvmfd-perf; do
    [[ -x $BIN/$b ]] || { log "no $BIN/$b (cargo build --release -p nvmfd-target -p nvmfd-bench)"; exit 2; }
done
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # MODE (on|off)
    local mode=$1 port mport cfg=$STATE/nvmfd.yaml
    port=$(free_port)
    mport=$(free_port)
    {
        echo "reactors: { cores: [$TCPU] }"
        echo "state_dir: $STATE/state"
        echo "rpc: { socket: $STATE/rpc.sock }"
        [[ $mode == on ]] && echo "metrics: { listen: \"127.0.0.1:$mport\" }"
        echo "bdevs: [ { name: r, malloc: { size: 256MiB } } ]"
        echo "subsystems:"
        echo "  - nqn: $NQN"
        echo "    allow_any_host: true"
        echo "    namespaces: [ { nsid: 1, bdev: r } ]"
        echo "    listeners: [ { transport: tcp, address: 127.0.0.1, port: $port } ]"
    } >"$cfg"
    rm -rf "$STATE/state" "$STATE/rpc.sock"
    "$BIN/nvmfd" --config "$cfg" >>"$OUT/nvmfd-$mode.log" 2>&1 &
    DPID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.05
    done
    ADDR=127.0.0.1:$port
    if [[ $mode == on ]]; then
        # The scraper: one GET /metrics a second, the body discarded (its size is logged once).
        (
            curl -fsS "http://127.0.0.1:$mport/metrics" | wc -c | sed 's/^/scrape bytes: /' >>"$OUT/nvmfd-on.log"
            while sleep 1; do curl -fsS -o /dev/null "http://127.0.0.1:$mport/metrics" || echo "scrape failed" >>"$OUT/nvmfd-on.log"; done
        ) &
        SPID=$!
    fi
}

perf() { # QD -> prints "iops avg_us"
    "$BIN/nvmfd-perf" --addr "$ADDR" --nqn "$NQN" --workload randread --io-size 4096 \
        --queue-depth "$1" --time "$TIME" --core "$PCPU" --json 2>>"$OUT/perf.log" |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["iops"], j["latency_us"]["avg"], j["errors"])'
}

CSV=$OUT/results.csv
echo "round,mode,qd,iops,avg_us,errors" >"$CSV"
log "$ROUNDS rounds x 2 modes x (QD32, QD1) x ${TIME}s; binaries from $BIN; results in $CSV"
for ((r = 0; r < ROUNDS; r++)); do
    if ((r % 2 == 0)); then order="on off"; else order="off on"; fi
    for mode in $order; do
        start "$mode"
        for qd in 32 1; do
            read -r iops avg errs < <(perf "$qd") || { log "perf failed (round $r, $mode, QD$qd)"; continue; }
            echo "$r,$mode,$qd,$iops,$avg,$errs" >>"$CSV"
            log "round $r $mode QD$qd: $iops IOPS, avg ${avg} us, errors $errs"
        done
        stop
    done
done

python3 - "$CSV" "$ROUNDS" "$TIME" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"\nrandread 4 KiB, {sys.argv[2]} rounds per mode, {sys.argv[3]} s per run, ABBA order")
print(f"{'QD':>4} {'mode':>4} {'median IOPS':>12} {'min':>10} {'max':>10} {'mean lat us':>12}")
ratios = {}
for qd in ("32", "1"):
    med = {}
    for mode in ("off", "on"):
        v = [float(r["iops"]) for r in rows if r["qd"] == qd and r["mode"] == mode]
        lat = [float(r["avg_us"]) for r in rows if r["qd"] == qd and r["mode"] == mode]
        if not v:
            continue
        med[mode] = statistics.median(v)
        print(f"{qd:>4} {mode:>4} {med[mode]:>12.0f} {min(v):>10.0f} {max(v):>10.0f} {statistics.mean(lat):>12.2f}")
    if "on" in med and "off" in med:
        ratios[qd] = med["on"] / med["off"]
print()
print(f"{'QD':>4} {'on/off IOPS':>12} {'cost':>8}")
for qd, r in ratios.items():
    print(f"{qd:>4} {r:>12.4f} {100 * (1 - r):>7.2f}%")
errs = sum(int(r["errors"]) for r in rows)
if errs:
    print(f"\nWARNING: {errs} I/O errors in the runs")
EOF
