#!/usr/bin/env bash
# bench/p2p-vs-bounce.sh - nvmfd with `p2p: auto` vs `p2p: off` under the same fio jobs
# (bench/fio), with a results.json, a Markdown table + PCIe traffic model and an SVG chart.
#
#   bench/p2p-vs-bounce.sh rig  [--out DIR] [--runtime S] [--size SIZE] [--jobs "A B"] [--kernel K]
#       The QEMU rig: an emulated NVMe SSD with a 64 MiB CMB behind a PCIe switch (as
#       tests/e2e/nvme-vfio.sh boots it), exported over NVMe/TCP on the guest's 127.0.0.1 and
#       driven by the guest's kernel initiator. TCP, because soft-RoCE cannot do P2P (the P2P
#       mode there would be TCP CMB staging). Emulated: absolute numbers mean nothing, compare
#       modes within one run only.
#   bench/p2p-vs-bounce.sh real --bdf BDF [--transport rdma|tcp] [--addr IP] [--nic BDF]
#                               [--dram-gbs N] [--out DIR] [--runtime S] [--size SIZE] [--jobs ...]
#       This machine, as root: binds the SSD at BDF to vfio-pci (nvmfd setup), exports it on
#       ADDR (an RDMA NIC's address for --transport rdma), connects this machine's kernel
#       initiator to it and runs the jobs. DESTROYS the data on the SSD.
#
# Binaries: build/release (cargo build --release -p nvmfd-target -p nvmfd-bench) or $PVB_BIN.
# Output (default build/p2p-vs-bounce/<mode>): results.json, report.md, chart.svg, topology.json,
# the fio JSON of every job and the daemon logs. Not part of CI (the report generator's tests
# are: cargo test -p nvmfd-bench --test report).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
where=$1
shift
out="" runtime=10 size=256M jobs="" kernel=stable bdf="" transport=tcp addr=127.0.0.1 nic="" dram=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --out) out=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    --bdf) bdf=$2; shift 2 ;;
    --transport) transport=$2; shift 2 ;;
    --addr) addr=$2; shift 2 ;;
    --nic) nic=$2; shift 2 ;;
    --dram-gbs) dram=$2; shift 2 ;;
    *) usage ;;
    esac
done
BIN=$(realpath "${PVB_BIN:-$REPO/build/release}")
for b in nvmfd nvmfd-bench; do
    [[ -x $BIN/$b ]] || { echo "p2p-vs-bounce: $BIN/$b missing: cargo build --release -p nvmfd-target -p nvmfd-bench" >&2; exit 2; }
done
out=${out:-$REPO/build/p2p-vs-bounce/$where}
commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
mkdir -p "$out"
out=$(realpath "$out")

case $where in
real)
    [[ -n $bdf ]] || { echo "p2p-vs-bounce: real needs --bdf" >&2; exit 2; }
    PVB_BIN=$BIN PVB_OUT=$out PVB_BDF=$bdf PVB_TRANSPORT=$transport PVB_ADDR=$addr PVB_NIC=$nic \
        PVB_DRAM_GBS=$dram PVB_RUNTIME=$runtime PVB_SIZE=$size PVB_SETUP=1 PVB_COMMIT=$commit \
        ${jobs:+PVB_JOBS="$jobs"} "$REPO/bench/p2p-vs-bounce-run.sh"
    ;;
rig)
    # The guest runs copies: a rebuild during the run must not change binaries under its feet.
    rm -rf "${out:?}/bin" && mkdir -p "$out/bin"
    cp "$BIN/nvmfd" "$BIN/nvmfd-bench" "$out/bin/"
    img=$out/ssd.img
    rm -f "$img"
    qemu-img create -q -f raw "$img" 1G
    export RIG_APPEND="intel_iommu=on no_timer_check"
    export RIG_QEMU_EXTRA="-device intel-iommu,intremap=off
 -device ioh3420,id=rp1,chassis=1,slot=1 -device x3130-upstream,id=up1,bus=rp1
 -device xio3130-downstream,id=dn1,bus=up1,chassis=2,slot=0
 -device xio3130-downstream,id=dn2,bus=up1,chassis=2,slot=1
 -drive if=none,id=d0,file=$img,format=raw
 -device nvme,serial=cmb0,cmb_size_mb=64,drive=d0,bus=dn1"
    njobs=$(wc -w <<<"${jobs:-a b c d e}")
    rc=0
    "$REPO/deploy/rig/run-guest.sh" --kernel "$kernel" --out "$out" \
        --timeout $((600 + njobs * 2 * (runtime * 2 + 300))) \
        -e "PVB_BIN=$out/bin" -e "PVB_OUT=$out" -e "PVB_BDF=0000:03:00.0" -e "PVB_TRANSPORT=tcp" \
        -e "PVB_RUNTIME=$runtime" -e "PVB_SIZE=$size" -e "PVB_SETUP=1" -e "PVB_COMMIT=$commit" \
        ${jobs:+-e "PVB_JOBS=$jobs"} \
        "$REPO/bench/guest-p2p-vs-bounce.sh" || rc=$?
    rm -f "$img"
    echo "p2p-vs-bounce: guest exited $rc; results in $out"
    exit "$rc"
    ;;
*) usage ;;
esac
