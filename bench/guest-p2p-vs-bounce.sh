#!/usr/bin/env bash
# bench/guest-p2p-vs-bounce.sh - INSIDE the guest started by `bench/p2p-vs-bounce.sh rig`: the
# emulated SSD (64 MiB CMB, 0000:03:00.0 behind a PCIe switch, intel-iommu with intremap=off)
# is handed to vfio-pci and measured by bench/p2p-vs-bounce-run.sh with the settings in PVB_*.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me through bench/p2p-vs-bounce.sh rig" >&2; exit 2; }
# VFIO without interrupt remapping (the rig's IOMMU has intremap=off).
echo 1 >/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
exec "$HERE/p2p-vs-bounce-run.sh"
