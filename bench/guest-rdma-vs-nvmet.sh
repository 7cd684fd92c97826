#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# bench/guest-rdma-vs-nvmet.sh - INSIDE the guest started by bench/rdma-vs-nvmet.sh: rxe0 on
# eth0; A = the kernel's nvmet-rdma (configfs) on a 256 MiB memory-backed null_blk device,
# B = nvmfd (one reactor, vCPU 0) on a 256 MiB malloc namespace, both listening on rxe0's
# address. Each round connects the kernel's nvme-rdma host to A, runs the three fio jobs,
# disconnects, then the same for B. Writes $RIG_OUT/results.md and the raw lines to
# $RIG_OUT/raw.txt.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../tests/e2e/lib/common.sh
. "$HERE/../tests/e2e/lib/common.sh"
# shellcheck source=../tests/e2e/lib/kernel-nvmet.sh
. "$HERE/../tests/e2e/lib/kernel-nvmet.sh"
[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me through bench/rdma-vs-nvmet.sh" >&2; exit 2; }
NVMFD=${NVMFD_BIN_DIR:?}/nvmfd
ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_SECS:-10}
OUT=${RIG_OUT:-/tmp}
WORK=/tmp/bench-rdma
RAW=$OUT/raw.txt
KNQN=nqn.2026-12.io.nvmfd:bench-kernel
BNQN=nqn.2026-12.io.nvmfd:bench-nvmfd
KPORT=4421
BPORT=4420
JOBS=("randread 4k 32" "randwrite 4k 32" "write 128k 8")
mkdir -p "$WORK"
: >"$RAW"
DPID=
cleanup() {
    nvme disconnect-all >/dev/null 2>&1 || true
    [[ -z $DPID ]] || kill -TERM "$DPID" 2>/dev/null || true
    cp "$WORK/nvmfd.log" "$OUT/nvmfd.log" 2>/dev/null || true
}
trap cleanup EXIT
die() { echo "bench: $*" >&2; exit 1; }

rdma link add rxe0 type rxe netdev eth0 || die "rdma link add rxe0 failed"
ADDR=$(ip -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]; exit}')
[[ -n $ADDR ]] || die "eth0 has no IPv4 address"
wait_for 30 rxe_ready rxe0 "$ADDR" || die "rxe0 not ready"

# A: the kernel's target.
nullb=$(knvmet_nullb bench0 256) || die "null_blk"
knvmet_subsys "$KNQN" bench-kernel BENCHK0001 1 || die "nvmet subsystem"
knvmet_ns "$KNQN" 1 "$nullb" || die "nvmet namespace"
knvmet_port 1 rdma "$ADDR" "$KPORT" "$KNQN" || die "nvmet rdma port"

# B: nvmfd, with the same queue limits the kernel host asks of either (128 entries).
cat >"$WORK/nvmfd.yaml" <<YAML
state_dir: $WORK/state
rpc: { socket: $WORK/rpc.sock }
reactors:
  cores: [0]
  idle_sleep_us: 100
transports:
  rdma: { max_queue_depth: 128, srq_depth: 2048 }
bdevs:
  - name: m0
    malloc: { size: 256MiB, block_size: 4096 }
subsystems:
  - nqn: $BNQN
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: m0 }
    listeners:
      - { transport: rdma, address: $ADDR, port: $BPORT }
YAML
NO_COLOR=1 RUST_LOG=warn "$NVMFD" --config "$WORK/nvmfd.yaml" >"$WORK/nvmfd.log" 2>&1 &
DPID=$!
sleep 2
kill -0 "$DPID" 2>/dev/null || { cat "$WORK/nvmfd.log" >&2; die "nvmfd did not start"; }

# connect NQN PORT: the kernel host, 2 I/O queues (the vCPUs), 128 entries; prints the device.
connect() {
    timeout 120 nvme connect -t rdma -a "$ADDR" -s "$2" -n "$1" -i 2 >&2 || return 1
    wait_for 20 has_nsdev "$1" || return 1
    nsdev_for "$1"
}

# run SIDE ROUND DEV: the three jobs; appends "side job round iops" lines.
run() {
    local side=$1 round=$2 dev=$3 j rw bs qd f
    for j in "${JOBS[@]}"; do
        read -r rw bs qd <<<"$j"
        f=$WORK/fio-$side-$round-$rw-$bs.json
        fio --name=bench --filename="$dev" --direct=1 --ioengine=libaio --rw="$rw" --bs="$bs" \
            --iodepth="$qd" --size=256M --time_based --runtime="$SECS" --norandommap \
            --output-format=json --output="$f" >/dev/null 2>&1 || { cat "$f" >&2; return 1; }
        python3 - "$f" "$side" "$rw-$bs-qd$qd" "$round" >>"$RAW" <<'PY'
import json, sys
f, side, job, rnd = sys.argv[1:]
j = json.load(open(f))["jobs"][0]
d = j["read"] if j["read"]["total_ios"] else j["write"]
if j["error"] or not d["total_ios"]:
    sys.exit("fio error %s, %d I/Os" % (j["error"], d["total_ios"]))
print(side, job, rnd, round(d["iops"]))
PY
        tail -n 1 "$RAW"
    done
}

for ((r = 1; r <= ROUNDS; r++)); do
    for side in A B; do
        if [[ $side == A ]]; then nqn=$KNQN port=$KPORT; else nqn=$BNQN port=$BPORT; fi
        dev=$(connect "$nqn" "$port") || die "connect to $side failed"
        run "$side" "$r" "$dev" || die "fio on $side failed (round $r)"
        nvme disconnect -n "$nqn" >/dev/null || die "disconnect $side"
        wait_for 20 no_ctrls "$nqn" || die "controllers of $side still present"
    done
done

python3 - "$RAW" "$ROUNDS" "$SECS" "$(uname -r)" "${BENCH_COMMIT:-unknown}" >"$OUT/results.md" <<'PY'
import sys, collections
raw, rounds, secs, kver, commit = sys.argv[1:]
v = collections.defaultdict(list)
order = []
for line in open(raw):
    side, job, rnd, iops = line.split()
    if job not in order:
        order.append(job)
    v[(side, job)].append(int(iops))
mean = lambda xs: sum(xs) / len(xs)
print(f"kernel {kver}, commit {commit}, {rounds} rounds alternating A and B, {secs} s per fio job")
print()
print("| fio job | kernel nvmet-rdma IOPS (A) | nvmfd IOPS (B) | B/A |")
print("|---|---|---|---|")
for job in order:
    a, b = v[("A", job)], v[("B", job)]
    print(f"| {job} | {mean(a):.0f} [{min(a)}-{max(a)}] | {mean(b):.0f} [{min(b)}-{max(b)}] | {mean(b) / mean(a):.2f} |")
print()
print("Per round (B/A): " + "; ".join(
    job + " " + ", ".join(f"{b / a:.2f}" for a, b in zip(v[("A", job)], v[("B", job)])) for job in order))
PY
cat "$OUT/results.md"
