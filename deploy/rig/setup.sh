#!/usr/bin/env bash
# deploy/rig/setup.sh - prepare the QEMU guest that the end-to-end tests boot.
#
# Idempotent: every step checks whether its result is already there and up to date.
#   1. apt packages (QEMU, busybox, nvme-cli, fio, ...), installed only when missing;
#   2. two Debian guest kernels (`apt-get download` + `dpkg -x` + `depmod`) in .cache/kernel/KVER:
#      "stable", this machine's release's (Debian 12: 6.1), and "newest", Debian unstable's (7.2
#      when written; looked up at run time through a private apt state in .cache/apt-sid);
#   3. for each, a busybox initramfs whose /init (deploy/rig/guest-init.sh) loads the modules
#      computed here, mounts this machine's / read-only over 9p and runs the script named on the
#      kernel command line.
# Results: .cache/rig-stable.env and .cache/rig-newest.env (LABEL, KVER, KERNEL, INITRD), read by
# run-guest.sh --kernel LABEL; .cache/rig.env is a copy of the stable one (the default).
# A kernel already extracted is reused when apt cannot name or download one (offline).
#
# Environment:
#   RIG_CACHE          cache folder (default: deploy/rig/.cache)
#   RIG_KERNELS        labels to set up (default "stable newest")
#   RIG_KERNEL_PKG     stable kernel package to use (default: what linux-image-amd64 depends on)
#   RIG_NEWEST_SUITE   Debian suite of the newest kernel (default sid)
#   RIG_DEBIAN_MIRROR  Debian archive URI for it (default: the one this machine's apt uses)
#   RIG_SKIP_APT=1     never call apt-get install (packages must already be there)
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
    busybox-static cpio gzip xz-utils   # the initramfs (newer kernels ship .ko.xz modules)
    kmod                            # modprobe --show-depends, depmod
    nvme-cli fio jq                 # the initiator-side tools, run inside the guest from this /
    iproute2 procps util-linux coreutils   # ip/ss, pgrep, blockdev/uuidgen, timeout
    rdma-core ibverbs-providers ibverbs-utils  # soft-RoCE (rxe) userspace for RDMA tests
    python3-venv                    # tests/rpc: SPDK's Python client from PyPI in a venv
    # What deploy/test.sh needs beyond the rig: a C toolchain (linking, the verbs layout test),
    # the rdma-core headers that test compares our layouts with, and shellcheck.
    build-essential pkg-config libibverbs-dev librdmacm-dev shellcheck
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
# 2. Guest kernels
# ---------------------------------------------------------------------------------------------
# Two kernels, each known by a label (run-guest.sh --kernel LABEL):
#   stable  the kernel of this machine's Debian release (Debian 12: 6.1), from its own apt lists;
#   newest  the newest kernel Debian ships, in unstable ("sid"; 7.2 when this was written). Its
#           package lists live in a private apt state under .cache/apt-sid; this machine's apt
#           setup (sources, lists, package cache) is not touched.
# Both resolve linux-image-amd64 at run time, so neither version is written down here.

# A shared apt state for the newest kernel: a sources file and lists folder of our own.
SID=$CACHE/apt-sid
SID_OPTS=(
    -o "Dir::Etc::SourceList=$SID/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::State::Lists=$SID/lists" -o "Dir::Cache=$SID/cache"
    -o Acquire::Languages=none
)

# The Debian archive this machine already uses (its main suite's URI: not -security or
# -updates), so the newest kernel comes from the same mirror. RIG_DEBIAN_MIRROR overrides it.
debian_mirror() {
    if [[ -n ${RIG_DEBIAN_MIRROR:-} ]]; then
        echo "$RIG_DEBIAN_MIRROR"
        return
    fi
    # shellcheck disable=SC2016  # $(...) are apt-get indextargets fields, not shell
    apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Identifier: Packages' 2>/dev/null |
        awk '$1 ~ /^[a-z]+$/ && $2 ~ /\/debian\/?$/ { sub(/\/$/, "", $2); print $2; exit }'
}

# sid_update: fetch unstable's package lists into $SID (about 15 MB, a few seconds).
sid_update() {
    local mirror
    mirror=$(debian_mirror)
    [[ -n $mirror ]] || { log "cannot tell this machine's Debian mirror (set RIG_DEBIAN_MIRROR)"; return 1; }
    mkdir -p "$SID/lists/partial" "$SID/cache/archives/partial"
    echo "deb $mirror ${RIG_NEWEST_SUITE:-sid} main" >"$SID/sources.list"
    log "newest: updating ${RIG_NEWEST_SUITE:-sid}'s package lists from $mirror"
    timeout 900 apt-get "${APT_OPTS[@]}" "${SID_OPTS[@]}" update -qq
}

# kernel_pkgs APT_OPTION...: print "KVER PACKAGE..." for the kernel that linux-image-amd64 names
# in those apt lists. Newer Debian kernels split linux-image-KVER into linux-binary-KVER (the
# image), linux-modules-KVER and linux-base-KVER, on which it depends; older ones (Debian 12)
# have everything in linux-image-KVER itself.
kernel_pkgs() {
    local img kver parts
    img=$(apt-cache "$@" depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }' || true)
    [[ -n $img ]] || return 1
    kver=${img#linux-image-}
    parts=$(apt-cache "$@" depends "$img" 2>/dev/null |
        awk -v k="$kver" '$1 == "Depends:" { p = $2; sub(/^linux-[a-z]+-/, "", p); if (p == k) print $2 }' |
        sort -u | tr '\n' ' ' || true)
    echo "$kver ${parts:-$img}"
}

# env_get FILE NAME: a variable of a rig env file (empty if there is none).
env_get() { if [[ -f $1 ]]; then sed -n "s/^$2=//p" "$1" | tail -n 1; fi; }

# Modules the guest loads, in this order (dependencies are expanded below). Order matters:
#  - virtio_pci first: without it there is no virtio NIC and no 9p channel;
#  - crc32_generic (and crc32c) before rdma_rxe, else "failed to init crc32 algorithm err:-2".
# dummy gives the rdma step a second netdev for a second soft-RoCE device (see device_removal
# in tests/e2e/guest-rdma.sh).
# A leading "?" marks a module some kernels do not have (7.2 builds CRC32 into the kernel and
# has no crc32_generic); a module that is built in is skipped either way.
MODULES=(
    virtio_pci virtio_net virtio_rng 9pnet_virtio 9p dummy
    configfs crc32c ?crc32_generic
    null_blk
    nvme-core nvme nvme-fabrics nvme-tcp
    nvmet nvmet-tcp
    rdma_rxe rdma_ucm nvme-rdma nvmet-rdma
    vfio vfio_iommu_type1 vfio-pci
)
# Module parameters. null_blk: create no default device; tests make memory-backed ones in
# configfs (/sys/kernel/config/nullb), because the default nullb0 does not keep data.
declare -A MODPARAMS=([null_blk]="nr_devices=0")

# build_initramfs KVER KROOT: .cache/initramfs-KVER.cpio.gz for the kernel extracted in KROOT.
build_initramfs() {
    local kver=$1 kroot=$2 m deps kind path order=() initrd stamp stage i name file key params
    local -A seen=()
    # `modprobe --show-depends` prints "insmod /path/x.ko[.xz] [params]" (or "builtin x") for
    # each dependency in load order. -C /dev/null: ignore this machine's /etc/modprobe.d.
    for m in "${MODULES[@]}"; do
        if ! deps=$(modprobe -C /dev/null -d "$kroot" -S "$kver" --show-depends "${m#\?}" 2>&1); then
            [[ $m == \?* ]] || die "$kver: modprobe --show-depends $m failed: $deps"
            log "$kver: no module ${m#\?} (optional; skipped)"
            continue
        fi
        while read -r kind path _; do
            [[ $kind == insmod ]] || continue              # builtin: nothing to load
            [[ -n ${seen[$path]:-} ]] && continue
            seen[$path]=1
            order+=("$path")
        done <<<"$deps"
    done

    initrd=$CACHE/initramfs-$kver.cpio.gz
    # Rebuild whenever an input changes: this script, /init, busybox or the module list.
    stamp=$({
        sha256sum "$0" "$INIT_SRC" "$BUSYBOX"
        printf '%s\n' "$kver" "${order[@]}"
    } | sha256sum | cut -d' ' -f1)
    if [[ -f $initrd && $(cat "$initrd.stamp" 2>/dev/null || true) == "$stamp" ]]; then
        log "$kver: initramfs up to date"
        return 0
    fi
    log "$kver: building the initramfs (${#order[@]} modules)"
    stage=$CACHE/initramfs-$kver.stage
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,dev,proc,sys,newroot,modules}
    # A static busybox is the whole userland; /init installs its applet links at boot.
    cp "$BUSYBOX" "$stage/bin/busybox"
    install -m 0755 "$INIT_SRC" "$stage/init"
    # The kernel opens /dev/console before /init runs: it must exist in the archive.
    mknod -m 600 "$stage/dev/console" c 5 1
    mknod -m 666 "$stage/dev/null" c 1 3
    # Modules, numbered in load order, plus an "order" file with their parameters. Compressed
    # ones (.ko.xz, .ko.zst, .ko.gz) are stored uncompressed: busybox insmod reads plain ELF.
    i=0
    : >"$stage/modules/order"
    for path in "${order[@]}"; do
        name=$(basename "$path")
        name=${name%.xz} name=${name%.zst} name=${name%.gz} name=${name%.ko}
        file=$(printf '%03d-%s.ko' "$i" "$name")
        case $path in
        *.ko.xz) xz -dc "$path" >"$stage/modules/$file" ;;
        *.ko.zst) zstd -qdc "$path" >"$stage/modules/$file" ;;
        *.ko.gz) gzip -dc "$path" >"$stage/modules/$file" ;;
        *) cp "$path" "$stage/modules/$file" ;;
        esac
        key=${name//_/-}
        params=${MODPARAMS[$name]:-${MODPARAMS[$key]:-}}
        printf '%s %s\n' "$file" "$params" >>"$stage/modules/order"
        i=$((i + 1))
    done
    (cd "$stage" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc --quiet --owner=0:0 | gzip -1) >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    echo "$stamp" >"$initrd.stamp"
    rm -rf "$stage"
    log "$kver: initramfs $initrd ($(du -h "$initrd" | cut -f1))"
}

# setup_kernel LABEL: download, extract and depmod LABEL's kernel into .cache/kernel/KVER (once),
# build its initramfs, write .cache/rig-LABEL.env. Returns non-zero when it cannot.
setup_kernel() {
    local label=$1 envf=$CACHE/rig-$1.env apt=() kver pkgs resolved prev kroot kernel deb p
    local -a pkgv
    prev=$(env_get "$envf" KVER)
    if [[ $label == newest ]]; then
        apt=("${SID_OPTS[@]}")
        # Refresh unstable's lists when they are older than a day (sid moves on; old kernel
        # packages disappear from the archive): at most one update per day of runs.
        if [[ -z $(find "$SID/lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null) ]]; then
            sid_update || log "newest: could not update the package lists"
        fi
    fi
    resolved=$(kernel_pkgs "${apt[@]}" || true)
    if [[ $label == stable && -n ${RIG_KERNEL_PKG:-} ]]; then
        resolved="${RIG_KERNEL_PKG#linux-image-} $RIG_KERNEL_PKG"
    fi
    if [[ -z $resolved && -n $prev && -f $CACHE/kernel/$prev/.complete ]]; then
        # No apt lists (offline, never updated): keep using the kernel we extracted before.
        log "$label: apt-cache could not name the kernel; reusing cached $prev"
        resolved="$prev linux-image-$prev"
    fi
    if [[ -z $resolved ]]; then
        if [[ $label == newest ]]; then
            log "ERROR: newest: no kernel package in ${RIG_NEWEST_SUITE:-sid}'s lists ($SID/lists; network?) and none cached"
        else
            log "ERROR: stable: cannot find the kernel package (apt-cache depends linux-image-amd64); run apt-get update"
        fi
        return 1
    fi
    read -r kver pkgs <<<"$resolved"
    read -ra pkgv <<<"$pkgs"
    kroot=$CACHE/kernel/$kver

    if [[ -f $kroot/.complete ]]; then
        log "$label: kernel $kver (cached)"
    else
        log "$label: downloading ${pkgv[*]}"
        mkdir -p "$CACHE/debs"
        for p in "${pkgv[@]}"; do rm -f "$CACHE/debs/${p}_"*.deb; done
        # apt-get download writes into the current folder. Run it as root without the _apt
        # sandbox user, who cannot write into our cache folder (only a warning, but a noisy one).
        if ! (cd "$CACHE/debs" && timeout 900 apt-get "${APT_OPTS[@]}" "${apt[@]}" \
            -o APT::Sandbox::User=root download -qq "${pkgv[@]}"); then
            log "$label: download failed; refreshing apt lists and retrying once"
            if [[ $label == newest ]]; then
                sid_update || true
            else
                timeout 900 apt-get "${APT_OPTS[@]}" update -qq || true
            fi
            if ! (cd "$CACHE/debs" && timeout 900 apt-get "${APT_OPTS[@]}" "${apt[@]}" \
                -o APT::Sandbox::User=root download -qq "${pkgv[@]}"); then
                if [[ -n $prev && $prev != "$kver" && -f $CACHE/kernel/$prev/.complete ]]; then
                    log "$label: cannot download $kver; reusing cached $prev"
                    kver=$prev kroot=$CACHE/kernel/$prev
                else
                    log "ERROR: $label: cannot download ${pkgv[*]}"
                    return 1
                fi
            fi
        fi
    fi
    if [[ ! -f $kroot/.complete ]]; then
        rm -rf "$kroot.tmp"
        mkdir -p "$kroot.tmp"
        for p in "${pkgv[@]}"; do
            deb=$(ls "$CACHE/debs/${p}_"*.deb)
            dpkg -x "$deb" "$kroot.tmp"
        done
        # Merged /usr (newer packages): modules in usr/lib/modules, where kmod does not look.
        if [[ ! -e $kroot.tmp/lib && -d $kroot.tmp/usr/lib/modules ]]; then
            ln -s usr/lib "$kroot.tmp/lib"
        fi
        depmod -b "$kroot.tmp" "$kver"
        rm -rf "$kroot"
        mv "$kroot.tmp" "$kroot"
        touch "$kroot/.complete"
        for p in "${pkgv[@]}"; do rm -f "$CACHE/debs/${p}_"*.deb; done   # ~130 MB no longer needed
        log "$label: kernel $kver extracted to $kroot"
    fi
    kernel=
    for p in "$kroot/boot/vmlinuz-$kver" "$kroot/usr/lib/modules/$kver/vmlinuz" \
        "$kroot/lib/modules/$kver/vmlinuz"; do
        [[ -f $p ]] && { kernel=$p; break; }
    done
    [[ -n $kernel ]] || { log "ERROR: $label: no kernel image in $kroot"; return 1; }

    build_initramfs "$kver" "$kroot"

    cat >"$envf.tmp" <<EOT
# Written by deploy/rig/setup.sh; sourced by deploy/rig/run-guest.sh (--kernel $label).
LABEL=$label
KVER=$kver
KERNEL=$kernel
INITRD=$CACHE/initramfs-$kver.cpio.gz
EOT
    mv "$envf.tmp" "$envf"
    # A newer kernel replaced an older one under this label: drop the old one (unless the other
    # label uses it), ~250 MB each.
    if [[ -n $prev && $prev != "$kver" ]]; then
        local other
        for other in "$CACHE"/rig-*.env; do
            [[ $other == "$envf" ]] && continue
            [[ $(env_get "$other" KVER) == "$prev" ]] && return 0
        done
        log "$label: removing the previous kernel $prev"
        rm -rf "${CACHE:?}/kernel/$prev" "$CACHE/initramfs-$prev.cpio.gz" "$CACHE/initramfs-$prev.cpio.gz.stamp"
    fi
    log "$label: ready, kernel $kver"
}

# ---------------------------------------------------------------------------------------------
# 3. Set up each kernel; 4. what run-guest.sh needs
# ---------------------------------------------------------------------------------------------
INIT_SRC=$RIG_DIR/guest-init.sh
BUSYBOX=$(command -v busybox)
failed=()
for label in ${RIG_KERNELS:-stable newest}; do
    case $label in
    stable | newest) ;;
    *) die "RIG_KERNELS: unknown kernel label '$label' (stable, newest)" ;;
    esac
    # A subshell: one kernel failing (e.g. no network for the newest) leaves the other usable.
    # Not as `(...) || ...`: bash ignores `set -e` inside a subshell that is part of such a list.
    rc=0
    set +e
    (
        set -e
        setup_kernel "$label"
    )
    rc=$?
    set -e
    ((rc == 0)) || failed+=("$label")
done
# rig.env: the default kernel (stable), for scripts that predate the labels.
if [[ -f $CACHE/rig-stable.env ]]; then
    cp "$CACHE/rig-stable.env" "$CACHE/rig.env.tmp"
    mv "$CACHE/rig.env.tmp" "$CACHE/rig.env"
fi
((${#failed[@]} == 0)) || die "kernel(s) not ready: ${failed[*]}"
for label in ${RIG_KERNELS:-stable newest}; do
    log "ready: $label = $(env_get "$CACHE/rig-$label.env" KVER)"
done
