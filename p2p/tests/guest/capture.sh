#!/bin/bash
# Runs inside the rig's QEMU guest (deploy/rig/run-guest.sh): adds a soft-RoCE device, runs
# `nvmfd topology` on the live sysfs, and copies the sysfs files the topology model reads into
# $RIG_OUT/tree.tar (a fixture for p2p/tests: sys/ and proc/). Symlinks keep their target text.
# The tree is built in the guest's tmpfs and written to the 9p share once (small writes over 9p
# under TCG are slow).
# Usage (on the host): RIG_QEMU_EXTRA="..." deploy/rig/run-guest.sh p2p/tests/guest/capture.sh NVMFD
# p2p/tests/fixtures/qemu-q35-switch was made this way with
#   -device ioh3420,id=rp1,chassis=1,slot=1 -device x3130-upstream,id=up1,bus=rp1
#   -device xio3130-downstream,id=dn1,bus=up1,chassis=2,slot=0
#   -device xio3130-downstream,id=dn2,bus=up1,chassis=2,slot=1
#   -drive if=none,id=d0,file=D0,format=raw -device nvme,serial=cmb0,cmb_size_mb=64,drive=d0,bus=dn1
#   -drive if=none,id=d1,file=D1,format=raw -device nvme,serial=n1,drive=d1,bus=dn2
#   -device ioh3420,id=rp2,chassis=3,slot=2
#   -drive if=none,id=d2,file=D2,format=raw -device nvme,serial=n2,drive=d2,bus=rp2
# then pruned: rxe0's unused GID entries past index 4 and empty ndevs files removed, the run's
# paths dropped from proc/cmdline.
set -u
[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me in the rig guest (deploy/rig/run-guest.sh)" >&2; exit 2; }
nvmfd=$1
"$nvmfd" topology >"$RIG_OUT/topology-before-rxe.txt" 2>&1
out=/tmp/tree
rm -rf "$out"
mkdir -p "$out/sys" "$out/proc"
ip link set eth0 up 2>/dev/null
rdma link add rxe0 type rxe netdev eth0 || echo "no rxe" >&2
sleep 1
# One find and one cp for the whole tree: forks are slow under TCG. cp reads sysfs attributes
# to EOF (tar would pad them to their nominal 4096 bytes).
pci_files=(-name vendor -o -name device -o -name class -o -name subsystem_vendor
    -o -name subsystem_device -o -name config -o -name resource -o -name numa_node
    -o -name current_link_speed -o -name current_link_width -o -name max_link_speed
    -o -name max_link_width -o -name size)
{
    find /sys/devices/pci0000:00 -type f \( "${pci_files[@]}" \)
    find /sys/devices/pci0000:00 -type l \( -name driver -o -name iommu_group -o -name physfn \)
    find /sys/kernel/iommu_groups -name type 2>/dev/null
    find /sys/class/block -maxdepth 1 -type l -name 'nvme*' 2>/dev/null
    find /sys/class/infiniband -maxdepth 1 -type l 2>/dev/null
    for ib in /sys/class/infiniband/*; do
        [[ -e $ib ]] || continue
        real=$(realpath "$ib")
        find "$real" -maxdepth 1 \( -name device -o -name parent -o -name node_type \)
        find "$real/ports" \( -name link_layer -o -path '*/gids/*' -o -path '*/ndevs/*' \)
        ls -la "$real" >"$RIG_OUT/infiniband-$(basename "$ib").ls"
    done
} | grep -v '/infiniband/[^/]*/device/' >/tmp/files
xargs -a /tmp/files -d '\n' cp -P --parents -t "$out" 2>/tmp/cp.err
# Directories the class links point to (namespace block devices, RDMA devices).
for l in /sys/class/block/nvme* /sys/class/infiniband/*; do
    [[ -L $l ]] && mkdir -p "$out$(realpath "$l")"
done
cp /proc/cpuinfo "$out/proc/cpuinfo"
cp /proc/cmdline "$out/proc/cmdline"
"$nvmfd" topology >"$RIG_OUT/topology.txt" 2>&1
echo "rc=$?" >>"$RIG_OUT/topology.txt"
"$nvmfd" topology --json >"$RIG_OUT/topology.json" 2>&1
"$nvmfd" topology --pair 0000:03:00.0 0000:04:00.0 >"$RIG_OUT/pair.txt" 2>&1
echo "rc=$?" >>"$RIG_OUT/pair.txt"
tar cf "$RIG_OUT/tree.tar" -C "$out" .
exit 0
