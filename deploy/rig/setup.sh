#!/usr/bin/env bash
# deploy/rig/setup.sh - prepare the QEMU guest that the end-to-end tests boot.
#
# Idempotent: every step checks whether its result is already there and up to date.
#   1. apt packages (QEMU, busybox, nvme-cli, fio, ...), installed only when missing;
#   2. the Debian guest kernel (`apt-get download` + `dpkg -x` + `depmod`) in .cache/kernel/KVER;
#   3. a busybox initramfs whose /init (deploy/rig/guest-init.sh) loads the modules computed here,
#      mounts this machine's / read-only over 9p and runs the script named on the kernel command line.
# Results: .cache/rig.env (KVER, KERNEL, INITRD), read by run-guest.sh.
#
# Environment:
#   RIG_CACHE        cache folder (default: deploy/rig/.cache)
#   RIG_KERNEL_PKG   kernel package to use (default: what linux-image-amd64 depends on)
#   RIG_SKIP_APT=1   never call apt-get install (packages must already be there)
set -euo pipefail

RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${RIG_CACHE:-$RIG_DIR/.cache}
mkdir -p "$CACHE"

log() { printf 'rig-setup: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get, mknod)"

# apt-get waits up to 10 minutes for a dpkg lock held by another process instead of failing.
APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------------------------
PACKAGES=(
    qemu-system-x86 qemu-utils      # the guest machine; qemu-img for emulated SSD images
    busybox-static cpio gzip        # the initramfs
    kmod                            # modprobe --show-depends, depmod
    nvme-cli fio jq                 # the initiator-side tools, run inside the guest from this /
    iproute2 procps util-linux coreutils   # ip/ss, pgrep, blockdev/uuidgen, timeout
    rdma-core ibverbs-providers ibverbs-utils  # soft-RoCE (rxe) userspace for RDMA tests
)

missing=()
for p in "${PACKAGES[@]}"; do
    # dpkg-query prints "install ok installed" for a fully installed package.
    if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    [[ ${RIG_SKIP_APT:-0} == 1 ]] && die "missing packages and RIG_SKIP_APT=1: ${missing[*]}"
    log "installing: ${missing[*]}"
    timeout 900 apt-get "${APT_OPTS[@]}" update -qq
    timeout 1800 apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "packages: all present"
fi

# The guest mounts a tmpfs on /etc/nvme for its per-run hostnqn/hostid; the mount point must exist
# in this machine's / (nvme-cli's package normally creates it).
mkdir -p /etc/nvme

# ---------------------------------------------------------------------------------------------
# 2. Guest kernel
# ---------------------------------------------------------------------------------------------
KPKG=${RIG_KERNEL_PKG:-}
if [[ -z $KPKG ]]; then
    KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }' || true)
fi
if [[ -z $KPKG && -f $CACHE/rig.env ]]; then
    # No apt lists (offline, never updated): keep using the kernel we extracted before.
    # shellcheck source=/dev/null
    KPKG=linux-image-$(. "$CACHE/rig.env" && echo "$KVER")
    log "apt-cache could not name the kernel; reusing cached $KPKG"
fi
[[ -n $KPKG ]] || die "cannot find the kernel package (apt-cache depends linux-image-amd64); run apt-get update"
KVER=${KPKG#linux-image-}
KROOT=$CACHE/kernel/$KVER
KERNEL=$KROOT/boot/vmlinuz-$KVER

if [[ -f $KROOT/.complete ]]; then
    log "kernel: $KVER (cached)"
else
    log "kernel: downloading $KPKG"
    mkdir -p "$CACHE/debs"
    rm -f "$CACHE/debs/${KPKG}_"*.deb
    # apt-get download writes into the current folder. Run it as root without the _apt sandbox
    # user, who cannot write into our cache folder (that only causes a warning, but a noisy one).
    if ! (cd "$CACHE/debs" && timeout 900 apt-get "${APT_OPTS[@]}" -o APT::Sandbox::User=root \
        download -qq "$KPKG"); then
        log "download failed; refreshing apt lists and retrying once"
        timeout 900 apt-get "${APT_OPTS[@]}" update -qq
        (cd "$CACHE/debs" && timeout 900 apt-get "${APT_OPTS[@]}" -o APT::Sandbox::User=root \
            download -qq "$KPKG")
    fi
    deb=$(ls "$CACHE/debs/${KPKG}_"*.deb)
    rm -rf "$KROOT.tmp"
    mkdir -p "$CACHE/kernel"
    dpkg -x "$deb" "$KROOT.tmp"
    depmod -b "$KROOT.tmp" "$KVER"
    rm -rf "$KROOT"
    mv "$KROOT.tmp" "$KROOT"
    touch "$KROOT/.complete"
    rm -f "$deb"   # 70 MB we no longer need
    log "kernel: $KVER extracted to $KROOT"
fi
[[ -f $KERNEL ]] || die "no kernel image at $KERNEL"

# ---------------------------------------------------------------------------------------------
# 3. Initramfs
# ---------------------------------------------------------------------------------------------
# Modules the guest loads, in this order (dependencies are expanded below). Order matters:
#  - virtio_pci first: without it there is no virtio NIC and no 9p channel;
#  - crc32_generic (and crc32c) before rdma_rxe, else "failed to init crc32 algorithm err:-2".
MODULES=(
    virtio_pci virtio_net virtio_rng 9pnet_virtio 9p
    configfs crc32c crc32_generic
    null_blk
    nvme-core nvme nvme-fabrics nvme-tcp
    nvmet nvmet-tcp
    rdma_rxe rdma_ucm nvme-rdma nvmet-rdma
    vfio vfio_iommu_type1 vfio-pci
)
# Module parameters. null_blk: create no default device; tests make memory-backed ones in
# configfs (/sys/kernel/config/nullb), because the default nullb0 does not keep data.
declare -A MODPARAMS=([null_blk]="nr_devices=0")

# `modprobe --show-depends` prints "insmod /path/x.ko [params]" (or "builtin x") for each
# dependency in load order. -C /dev/null: ignore this machine's /etc/modprobe.d.
order=()
declare -A seen=()
for m in "${MODULES[@]}"; do
    deps=$(modprobe -C /dev/null -d "$KROOT" -S "$KVER" --show-depends "$m") ||
        die "modprobe --show-depends $m failed"
    while read -r kind path _; do
        [[ $kind == insmod ]] || continue              # builtin: nothing to load
        [[ -n ${seen[$path]:-} ]] && continue
        seen[$path]=1
        order+=("$path")
    done <<<"$deps"
done

INITRD=$CACHE/initramfs-$KVER.cpio.gz
INIT_SRC=$RIG_DIR/guest-init.sh
BUSYBOX=$(command -v busybox)
# Rebuild whenever an input changes: this script, /init, busybox or the module list.
stamp=$({
    sha256sum "$0" "$INIT_SRC" "$BUSYBOX"
    printf '%s\n' "$KVER" "${order[@]}"
} | sha256sum | cut -d' ' -f1)

if [[ -f $INITRD && $(cat "$INITRD.stamp" 2>/dev/null || true) == "$stamp" ]]; then
    log "initramfs: up to date"
else
    log "initramfs: building (${#order[@]} modules)"
    stage=$CACHE/initramfs.stage
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,dev,proc,sys,newroot,modules}
    # A static busybox is the whole userland; /init installs its applet links at boot.
    cp "$BUSYBOX" "$stage/bin/busybox"
    install -m 0755 "$INIT_SRC" "$stage/init"
    # The kernel opens /dev/console before /init runs: it must exist in the archive.
    mknod -m 600 "$stage/dev/console" c 5 1
    mknod -m 666 "$stage/dev/null" c 1 3
    # Modules, numbered in load order, plus an "order" file with their parameters.
    i=0
    : >"$stage/modules/order"
    for path in "${order[@]}"; do
        name=$(basename "$path" .ko)
        file=$(printf '%03d-%s.ko' "$i" "$name")
        cp "$path" "$stage/modules/$file"
        key=${name//_/-}
        params=${MODPARAMS[$name]:-${MODPARAMS[$key]:-}}
        printf '%s %s\n' "$file" "$params" >>"$stage/modules/order"
        i=$((i + 1))
    done
    (cd "$stage" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc --quiet --owner=0:0 | gzip -1) >"$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    echo "$stamp" >"$INITRD.stamp"
    rm -rf "$stage"
    log "initramfs: $INITRD ($(du -h "$INITRD" | cut -f1))"
fi

# ---------------------------------------------------------------------------------------------
# 4. What run-guest.sh needs
# ---------------------------------------------------------------------------------------------
cat >"$CACHE/rig.env.tmp" <<EOF
# Written by deploy/rig/setup.sh; sourced by deploy/rig/run-guest.sh.
KVER=$KVER
KERNEL=$KERNEL
INITRD=$INITRD
EOF
mv "$CACHE/rig.env.tmp" "$CACHE/rig.env"
log "ready: kernel $KVER"
