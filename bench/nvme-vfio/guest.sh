#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# bench/nvme-vfio/guest.sh - INSIDE the guest started by bench/nvme-vfio/run.sh: alternate fio on
# the kernel's nvme driver (A) and on nvmfd's nvme bdev through the kernel's nvme-tcp on
# 127.0.0.1 (B), 4 KiB random reads at QD 1 and QD 32, BENCH_ROUNDS rounds of BENCH_SECS per
# run. Per run: IOPS, guest CPU time per I/O (all vCPUs' non-idle time from /proc/stat over the
# run, divided by the I/Os fio completed) and, for B, nvmfd's own CPU time per I/O (its polling
# reactor is busy the whole run, by design). Writes $RIG_OUT/results.md.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../tests/e2e/lib/common.sh
. "$HERE/../../tests/e2e/lib/common.sh"
[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me through bench/nvme-vfio/run.sh" >&2; exit 2; }
NVMFD=${NVMFD_BIN_DIR:?}/nvmfd
BDF=0000:03:00.0
NQN=nqn.2026-12.io.nvmfd:bench
ROUNDS=${BENCH_ROUNDS:-2}
SECS=${BENCH_SECS:-10}
OUT=${RIG_OUT:-/tmp}
RAW=/tmp/bench-raw.txt
# BENCH_PIN=1: fio (both sides) on the last CPU, so the initiator never shares the vCPU of
# nvmfd's polling reactor (CPU 0, reactors: { count: 1 }). Off by default: under TCG on a loaded
# host it made the nvmfd side far slower (bench/RESULTS.md, 2026-12-01).
PIN=${BENCH_PIN:-0}
FIO_CPU=$(($(nproc) - 1))
fio_cmd() { if ((PIN)); then taskset -c "$FIO_CPU" fio "$@"; else fio "$@"; fi; }
: >"$RAW"
DPID=

busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
pci_driver() { basename "$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null)" 2>/dev/null || echo none; }
kernel_nsdev() {
    local d
    for d in /sys/bus/pci/devices/"$BDF"/nvme/nvme*/nvme*n1; do
        [[ -e $d ]] && { echo "/dev/$(basename "$d")"; return 0; }
    done
    return 1
}

# fio_run SIDE ROUND QD DEV: one run; appends "side qd round iops ios guest_us_per_io nvmfd_us_per_io".
fio_run() {
    local side=$1 round=$2 qd=$3 dev=$4 f=/tmp/fio-$1-$2-$3.json b0 b1 p0=0 p1=0
    b0=$(busy_ticks)
    [[ -n $DPID ]] && p0=$(proc_ticks "$DPID")
    fio_cmd --name=bench --filename="$dev" --direct=1 --ioengine=libaio --rw=randread --bs=4k \
        --iodepth="$qd" --size=256M --time_based --runtime="$SECS" --norandommap \
        --output-format=json --output="$f" >/dev/null 2>&1 || { echo "fio $side QD$qd failed" >&2; cat "$f" >&2; return 1; }
    b1=$(busy_ticks)
    [[ -n $DPID ]] && p1=$(proc_ticks "$DPID")
    python3 - "$f" "$side" "$round" "$qd" "$((b1 - b0))" "$((p1 - p0))" "$(getconf CLK_TCK)" >>"$RAW" <<'PY'
import json, sys
f, side, rnd, qd, busy, proc, hz = sys.argv[1:]
j = json.load(open(f))["jobs"][0]["read"]
ios = j["total_ios"] or 1
us = lambda ticks: int(ticks) / int(hz) * 1e6 / ios
print(side, qd, rnd, round(j["iops"]), ios, round(us(busy), 1), round(us(proc), 1) if side == "B" else "-")
PY
    tail -n 1 "$RAW"
}

start_nvmfd() {
    cat >/tmp/bench.yaml <<YAML
reactors: { count: 1 }
state_dir: /tmp/nvmfd-state
rpc: { socket: /tmp/nvmfd-bench.sock }
bdevs:
  - name: ssd0
    nvme: { pci: "$BDF", namespace: 1 }
subsystems:
  - nqn: $NQN
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: ssd0 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: 4420 }
YAML
    "$NVMFD" setup --pci $BDF >/dev/null || return 1
    "$NVMFD" --config /tmp/bench.yaml >>/tmp/nvmfd.log 2>&1 &
    DPID=$!
    wait_for 60 grep -q "nvmfd started" /tmp/nvmfd.log || { cat /tmp/nvmfd.log >&2; return 1; }
    nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN >/dev/null || return 1
    wait_for 20 has_nsdev $NQN || return 1
}

stop_nvmfd() {
    nvme disconnect -n $NQN >/dev/null
    wait_for 20 no_ctrls $NQN
    kill -TERM "$DPID"; wait "$DPID"; DPID=
    : >/tmp/nvmfd.log
    "$NVMFD" setup --reset --pci $BDF >/dev/null
    wait_for 30 kernel_nsdev && dev=$(kernel_nsdev) && wait_for 10 test -b "$dev"
}

echo 1 >/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
"$NVMFD" setup --hugemem 64MiB >/dev/null || echo "no hugepages reserved" >&2
[[ $(pci_driver $BDF) == nvme ]] || { echo "expected the kernel nvme driver on $BDF" >&2; exit 1; }
rc=0
for ((r = 1; r <= ROUNDS; r++)); do
    dev=$(kernel_nsdev) || { echo "no kernel device" >&2; rc=1; break; }
    for qd in 1 32; do fio_run A "$r" "$qd" "$dev" || rc=1; done
    start_nvmfd || { echo "nvmfd did not come up" >&2; rc=1; break; }
    dev=$(nsdev_for $NQN)
    for qd in 1 32; do fio_run B "$r" "$qd" "$dev" || rc=1; done
    stop_nvmfd || { echo "nvmfd did not stop cleanly" >&2; rc=1; break; }
done
python3 - "$RAW" "$ROUNDS" "$SECS" "$(uname -r)" "$PIN" >"$OUT/results.md" <<'PY'
import statistics, sys
raw, rounds, secs, kver, pin = sys.argv[1:]
rows = [l.split() for l in open(raw) if l.strip()]
def med(side, qd, col):
    v = [float(r[col]) for r in rows if r[0] == side and r[1] == qd and r[col] != "-"]
    return (statistics.median(v), min(v), max(v)) if v else None
def fmt(m, unit=""):
    return "-" if m is None else f"{m[0]:.0f}{unit} [{m[1]:.0f}-{m[2]:.0f}]" if m[0] >= 100 else f"{m[0]:.1f}{unit} [{m[1]:.1f}-{m[2]:.1f}]"
where = "fio pinned to the last vCPU" if pin == "1" else "fio not pinned"
print(f"{rounds} A/B rounds x {secs}s, 4 KiB randread, guest kernel {kver}, 2 vCPUs (TCG), {where}, nvmfd's reactor on vCPU 0")
print()
print("| QD | kernel nvme IOPS | nvmfd nvme bdev over nvme-tcp IOPS | ratio | guest CPU us/IO kernel | guest CPU us/IO nvmfd path | of which nvmfd us/IO |")
print("|---|---|---|---|---|---|---|")
for qd in ("1", "32"):
    a, b = med("A", qd, 3), med("B", qd, 3)
    ratio = f"{b[0] / a[0]:.2f}" if a and b else "-"
    print(f"| {qd} | {fmt(a)} | {fmt(b)} | {ratio} | {fmt(med('A', qd, 5))} | {fmt(med('B', qd, 5))} | {fmt(med('B', qd, 6))} |")
print()
print("raw (side qd round iops ios guest_us_per_io nvmfd_us_per_io):")
print()
for r in rows:
    print("    " + " ".join(r))
PY
cat "$OUT/results.md"
exit "$rc"
