#!/usr/bin/env bash
# bench/nvme-vfio/run.sh - the nvme bdev against the kernel's own nvme driver, in one guest boot
# (not part of deploy/test.sh). Boots the rig's guest with the emulated SSD of
# tests/e2e/nvme-vfio.sh (64 MiB CMB behind a PCIe switch, intel-iommu) and runs
# bench/nvme-vfio/guest.sh in it: rounds alternate A (fio on the kernel nvme driver's
# /dev/nvme0n1) and B (fio on nvmfd's `nvme` bdev through the kernel's nvme-tcp over the guest's
# loopback), 4 KiB random reads at QD 1 and QD 32. Prints a markdown table (IOPS, guest CPU time
# per I/O, nvmfd's own CPU time per I/O) to stdout and $WORK/results.md.
#
#   bench/nvme-vfio/run.sh [--rounds N] [--time SECS] [--pin]    (defaults 2 and 10; --pin runs
#                                                                  fio on the guest's last vCPU)
#
# Numbers are emulation-bound (TCG: every MMIO access, doorbell and DMA is QEMU's work): read the
# ratio and the CPU time per I/O, not the IOPS. Environment: NVMFD_BIN_DIR (default
# build/release), E2E_WORK (default build/bench-nvme), RIG_CACHE.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
rounds=2 secs=10 pin=0
while (($#)); do
    case $1 in
    --pin) pin=1; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --time) secs=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--time SECS] [--pin]" >&2; exit 2 ;;
    esac
done
BIN=$(realpath "${NVMFD_BIN_DIR:-$REPO/build/release}")
WORK=${E2E_WORK:-$REPO/build/bench-nvme}
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
[[ -x $BIN/nvmfd ]] || { echo "$BIN/nvmfd missing: cargo build --release -p nvmfd-target" >&2; exit 2; }
rm -rf "${WORK:?}/bin" && mkdir -p "$WORK/bin" && cp "$BIN/nvmfd" "$WORK/bin/"
img=$WORK/ssd.img
rm -f "$img"
qemu-img create -q -f raw "$img" 1G
export RIG_APPEND="intel_iommu=on no_timer_check"
export RIG_CACHE=${RIG_CACHE:-$REPO/deploy/rig/.cache}
export RIG_QEMU_EXTRA="-device intel-iommu,intremap=off
 -device ioh3420,id=rp1,chassis=1,slot=1 -device x3130-upstream,id=up1,bus=rp1
 -device xio3130-downstream,id=dn1,bus=up1,chassis=2,slot=0
 -drive if=none,id=d0,file=$img,format=raw
 -device nvme,serial=bench0,cmb_size_mb=64,drive=d0,bus=dn1"
rc=0
"$REPO/deploy/rig/run-guest.sh" --timeout 1800 --out "$WORK/out" -q \
    -e "NVMFD_BIN_DIR=$WORK/bin" -e "BENCH_ROUNDS=$rounds" -e "BENCH_SECS=$secs" -e "BENCH_PIN=$pin" \
    "$REPO/bench/nvme-vfio/guest.sh" || rc=$?
cp "$WORK/out/results.md" "$WORK/results.md" 2>/dev/null && cat "$WORK/results.md"
exit "$rc"
