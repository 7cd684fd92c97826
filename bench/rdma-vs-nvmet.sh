#!/usr/bin/env bash
# bench/rdma-vs-nvmet.sh - nvmfd's NVMe/RDMA target against the kernel's own nvmet-rdma, in one
# guest boot (not part of deploy/test.sh). Boots the rig's guest and runs
# bench/guest-rdma-vs-nvmet.sh in it: soft-RoCE (rxe0 on eth0), the kernel's nvmet-rdma on a
# memory-backed null_blk device (configfs) and nvmfd on a malloc namespace, both driven by the
# kernel's nvme-rdma initiator with the same fio jobs (4 KiB random read QD 32, 4 KiB random
# write QD 32, 128 KiB sequential write QD 8), the two targets alternated for --rounds rounds.
# Prints a markdown table (IOPS per target, mean and range over the rounds, and the ratio
# nvmfd/kernel) to stdout and $WORK/results.md.
#
#   bench/rdma-vs-nvmet.sh [--rounds N] [--time SECS] [--kernel stable|newest]   (defaults 3, 10, stable)
#
# Emulated everything: TCG vCPUs, soft-RoCE doing the "NIC" work on the same vCPUs as both
# targets and the initiator. Compare the two targets within one run only. Environment:
# NVMFD_BIN_DIR (default build/release), E2E_WORK (default build/bench-rdma), RIG_CACHE.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=3 secs=10 kernel=stable
while (($#)); do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --time) secs=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--time SECS] [--kernel stable|newest]" >&2; exit 2 ;;
    esac
done
BIN=$(realpath "${NVMFD_BIN_DIR:-$REPO/build/release}")
WORK=${E2E_WORK:-$REPO/build/bench-rdma}
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
[[ -x $BIN/nvmfd ]] || { echo "$BIN/nvmfd missing: cargo build --release -p nvmfd-target" >&2; exit 2; }
# The guest runs a copy: a rebuild during the run must not change the binary under its feet.
rm -rf "${WORK:?}/bin" && mkdir -p "$WORK/bin" && cp "$BIN/nvmfd" "$WORK/bin/"
export RIG_CACHE=${RIG_CACHE:-$REPO/deploy/rig/.cache}
rc=0
"$REPO/deploy/rig/run-guest.sh" --kernel "$kernel" --timeout 1800 --out "$WORK/out" -q \
    -e "NVMFD_BIN_DIR=$WORK/bin" -e "BENCH_ROUNDS=$rounds" -e "BENCH_SECS=$secs" \
    -e "BENCH_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$REPO/bench/guest-rdma-vs-nvmet.sh" || rc=$?
cp "$WORK/out/results.md" "$WORK/results.md" 2>/dev/null && cat "$WORK/results.md"
exit "$rc"
