#!/usr/bin/env bash
# tests/e2e/nvme-vfio.sh - boot the rig's guest with an emulated NVMe SSD (64 MiB CMB, behind an
# emulated PCIe switch, intel-iommu; namespace 2 on a blkdebug image that fails some I/O,
# namespace 3 answering after 7 s; an e1000e NIC on the switch's other downstream port) and run
# tests/e2e/guest-nvme-vfio.sh in it: the userspace VFIO driver end to end, on an Intel-modelled
# CPU (E2E_CPU, default Skylake-Client: GenuineIntel family 6; its topology check must refuse
# peer-to-peer through q35's root complex, which is not on Linux's whitelist). Then one short
# boot per CPU model in E2E_TOPO_CPUS (default EPYC, AuthenticAMD family 0x17, which must flip
# that verdict), same devices, running only the topology check (tests/e2e/guest-p2p-topology.sh).
# (Under TCG QEMU's default `-cpu max` is an AuthenticAMD family 15: neither of the two.)
#
#   tests/e2e/nvme-vfio.sh            (builds nothing: uses build/debug or $NVMFD_BIN_DIR)
#
# The guest runs the newest kernel the rig set up (deploy/rig/setup.sh label "newest", Linux 7.2
# when written): VFIO dma-buf export of the CMB (tests/e2e/guest-p2p-rdma.sh) needs Linux 6.19.
# The guest's kernel command line gets intel_iommu=on (through RIG_APPEND) and no_timer_check
# (a loaded host once made the TCG guest panic with "IO-APIC + timer doesn't work").
# Environment: NVMFD_BIN_DIR (default build/debug), E2E_WORK (default build/e2e-nvme),
#   E2E_TIMEOUT (default 1150 for the main boot; the boot now also runs the P2P checks over TCP
#   and RDMA), E2E_CPU (the main boot's CPU model, default Skylake-Client), E2E_TOPO_CPUS
#   (default "EPYC"; empty: no short boots; "max" runs QEMU's default model without an
#   expected vendor),
#   E2E_TOPO_TIMEOUT (default 240, each short boot), E2E_TOPO_ONLY=1 (only the short boots).
#   deploy/test.sh's step limit covers all of them.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=$(realpath "${NVMFD_BIN_DIR:-$REPO/build/debug}")
WORK=${E2E_WORK:-$REPO/build/e2e-nvme}
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
for b in nvmfd nvmfd-nvme-selftest nvmfd-bdev-nvme-check nvmfd-perf; do
    [[ -x $BIN/$b ]] || { echo "nvme-vfio: $BIN/$b missing: cargo build -p nvmfd-target -p nvmfd-nvme -p nvmfd-bdev -p nvmfd-bench" >&2; exit 2; }
done
# The guest runs copies: a rebuild during the run must not change binaries under its feet.
rm -rf "${WORK:?}/bin" && mkdir -p "$WORK/bin"
cp "$BIN/nvmfd" "$BIN/nvmfd-nvme-selftest" "$BIN/nvmfd-bdev-nvme-check" "$BIN/nvmfd-perf" "$WORK/bin/"
img=$WORK/ssd.img
rm -f "$img"
qemu-img create -q -f raw "$img" 1G
# Namespace 2 is a disk that fails I/O: blkdebug turns reads covering byte 4 MiB and writes
# covering byte 8 MiB into EIO, which the emulated SSD answers as Unrecovered Read Error (0x281)
# and Write Fault (0x280); tests/e2e/guest-nvme-vfio.sh expects those statuses at the host.
bad=$WORK/bad.img
rm -f "$bad"
qemu-img create -q -f raw "$bad" 64M
cat >"$WORK/blkdebug.conf" <<'CONF'
[inject-error]
event = "read_aio"
errno = "5"
sector = "8192"

[inject-error]
event = "write_aio"
errno = "5"
sector = "16384"
CONF
export RIG_APPEND="intel_iommu=on no_timer_check"
export RIG_CACHE=${RIG_CACHE:-$REPO/deploy/rig/.cache}
# shellcheck source=/dev/null
. "$RIG_CACHE/rig-newest.env"   # KVER: the guest loads ext4 from this kernel's module tree
export RIG_QEMU_EXTRA="-device intel-iommu,intremap=off
 -device ioh3420,id=rp1,chassis=1,slot=1 -device x3130-upstream,id=up1,bus=rp1
 -device xio3130-downstream,id=dn1,bus=up1,chassis=2,slot=0
 -device xio3130-downstream,id=dn2,bus=up1,chassis=2,slot=1
 -drive if=none,id=d0,file=$img,format=raw
 -drive if=none,id=d1,file=blkdebug:$WORK/blkdebug.conf:$bad,format=raw
 -device nvme,id=nvme0,serial=cmb0,cmb_size_mb=64,drive=d0,bus=dn1
 -device nvme-ns,drive=d1,bus=nvme0,nsid=2"
# Issue 11: a second endpoint on the switch, the peer the topology check decides against the
# SSD (bus addresses, distance 4). A NIC, as a real P2P client would be, whose driver the rig
# never loads (e1000e is a module outside its initramfs list): it shares the switch's IOMMU group
# with the SSD (no ACS on QEMU's switch ports), and a bound driver would make that group
# unusable for VFIO. No option ROM (SeaBIOS would run it at every boot).
RIG_QEMU_EXTRA+="
 -device e1000e,id=nic1,bus=dn2,romfile="
# s16 (issue 10, error handling): namespace 3 answers every I/O after 7 s (null-co latency), so
# with io_timeout_ms: 250 the driver aborts (0.25 s) and then resets the controller (0.5 s), or,
# with the test-only NVMFD_TEST_ONLY_NVME_RESET_FAIL, fails to reset it and gives it up; 6.5 s
# before the SSD answers, so a reactor (or guest) stalled 5 s on a loaded machine still sees the
# command outstanding. The latency cannot be made longer for free: QEMU drains a namespace's
# in-flight I/O when CC.EN is cleared (nvme_ctrl_reset), inside the MMIO write, so a successful
# reset waits for the rest of it (seen taking 13 s in all from the reset at 0.5 s: the host side
# of that check waits up to a minute).
RIG_QEMU_EXTRA+="
 -blockdev driver=null-co,node-name=slow0,size=67108864,latency-ns=7000000000
 -device nvme-ns,drive=slow0,bus=nvme0,nsid=3"
start=$(date +%s)
rc=0
if [[ ${E2E_TOPO_ONLY:-0} != 1 ]]; then
    "$REPO/deploy/rig/run-guest.sh" --kernel newest --cpu "${E2E_CPU:-Skylake-Client}" --timeout "${E2E_TIMEOUT:-1150}" -e "NVMFD_BIN_DIR=$WORK/bin" -e "E2E_WORK=$WORK" \
        -e "E2E_KDIR=$RIG_CACHE/kernel/$KVER" \
        "$REPO/tests/e2e/guest-nvme-vfio.sh" || rc=$?
    echo "nvme-vfio: guest exited $rc after $(($(date +%s) - start)) s"
fi
# The short boots: the same devices and kernel, only the topology check, with the CPU model's
# vendor and family expected in /proc/cpuinfo (QEMU's model definitions).
for cpu in ${E2E_TOPO_CPUS-EPYC}; do
    case $cpu in
    EPYC*) want="AuthenticAMD 23" ;;
    max) want="" ;; # what the main boot runs; QEMU's versions differ in what it models
    Skylake* | Cascadelake* | Icelake* | Broadwell* | Haswell*) want="GenuineIntel 6" ;;
    *)
        echo "nvme-vfio: no expected vendor/family for CPU model $cpu" >&2
        if ((rc == 0)); then rc=2; fi
        continue
        ;;
    esac
    start=$(date +%s)
    trc=0
    "$REPO/deploy/rig/run-guest.sh" --kernel newest --cpu "$cpu" --timeout "${E2E_TOPO_TIMEOUT:-240}" \
        -e "NVMFD_BIN_DIR=$WORK/bin" -e "TOPO_WANT_CPU=$want" -e "TOPO_WANT_MODEL=$cpu" \
        "$REPO/tests/e2e/guest-p2p-topology.sh" || trc=$?
    echo "nvme-vfio: topology boot with -cpu $cpu exited $trc after $(($(date +%s) - start)) s"
    if ((rc == 0)); then rc=$trc; fi
done
exit "$rc"
