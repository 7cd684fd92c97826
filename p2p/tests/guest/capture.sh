#!/bin/bash
# Runs inside the rig's QEMU guest (deploy/rig/run-guest.sh): adds a soft-RoCE device, runs
# `nvmfd topology` on the live sysfs, and copies the sysfs files the topology model reads into
# $RIG_OUT/tree.tar (a fixture for p2p/tests: sys/ and proc/). Symlinks keep their target text.
# The tree is built in the guest's tmpfs and written to the 9p share once (small writes over 9p
# under TCG are slow).
# Usage (on the host): RIG_QEMU_EXTRA="..." deploy/rig/run-guest.sh p2p/tests/guest/capture.sh NVMFD
set -u
nvmfd=$1
"$nvmfd" topology >"$RIG_OUT/topology-before-rxe.txt" 2>&1
out=/tmp/tree
rm -rf "$out"
mkdir -p "$out/sys" "$out/proc"
ip link set eth0 up 2>/dev/null
rdma link add rxe0 type rxe netdev eth0 || echo "no rxe" >&2
sleep 1
copy_file() { # real sysfs path -> same path under $out
    local src=$1 dst=$out$1
    [[ -r $src && -f $src ]] || return 0
    mkdir -p "$(dirname "$dst")"
    cat "$src" >"$dst" 2>/dev/null || rm -f "$dst"
}
copy_link() {
    local src=$1 dst=$out$1
    [[ -L $src ]] || return 0
    mkdir -p "$(dirname "$dst")"
    ln -sfn "$(readlink "$src")" "$dst"
}
for d in /sys/bus/pci/devices/*; do
    real=$(realpath "$d")
    for f in vendor device class subsystem_vendor subsystem_device config resource numa_node \
        current_link_speed current_link_width max_link_speed max_link_width; do
        copy_file "$real/$f"
    done
    for l in driver iommu_group physfn; do copy_link "$real/$l"; done
    for p in "$real"/p2pmem/size; do copy_file "$p"; done
done
for t in /sys/kernel/iommu_groups/*/type; do copy_file "$t"; done
for b in /sys/class/block/nvme*; do
    [[ -L $b ]] || continue
    copy_link "$b"
    mkdir -p "$out$(realpath "$b")"
done
for ib in /sys/class/infiniband/*; do
    [[ -e $ib ]] || continue
    copy_link "$ib"
    real=$(realpath "$ib")
    mkdir -p "$out$real"
    copy_link "$real/device"
    for f in parent node_type; do copy_file "$real/$f"; done
    for p in "$real"/ports/*; do
        copy_file "$p/link_layer"
        for g in "$p"/gids/*; do copy_file "$g"; done
        for n in "$p"/gid_attrs/ndevs/*; do copy_file "$n"; done
    done
    ls -la "$real" >"$RIG_OUT/infiniband-$(basename "$ib").ls"
done
cp /proc/cpuinfo "$out/proc/cpuinfo"
cp /proc/cmdline "$out/proc/cmdline"
"$nvmfd" topology >"$RIG_OUT/topology.txt" 2>&1
echo "rc=$?" >>"$RIG_OUT/topology.txt"
"$nvmfd" topology --json >"$RIG_OUT/topology.json" 2>&1
"$nvmfd" topology --pair 0000:03:00.0 0000:04:00.0 >"$RIG_OUT/pair.txt" 2>&1
echo "rc=$?" >>"$RIG_OUT/pair.txt"
lspci -tv >"$RIG_OUT/lspci.txt" 2>&1 || true
tar cf "$RIG_OUT/tree.tar" -C "$out" .
exit 0
