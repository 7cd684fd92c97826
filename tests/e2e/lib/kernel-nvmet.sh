# shellcheck shell=bash
# tests/e2e/lib/kernel-nvmet.sh - configure the Linux kernel's own NVMe-oF target (nvmet) through
# configfs, inside the rig's guest. Sourced (bash). Used by the rig self-test and by guest-tcp.sh
# --kernel-target, which points our end-to-end test at the kernel target to prove the test can
# pass. Every function returns non-zero on failure (callers may run under `set -e`).

NVMET_CFS=/sys/kernel/config/nvmet
NULLB_CFS=/sys/kernel/config/nullb

# knvmet_nullb NAME SIZE_MIB -> prints the block device path.
# A memory-backed null_blk device (the default null_blk discards data; fio --verify needs it kept).
knvmet_nullb() {
    local d=$NULLB_CFS/$1
    mkdir "$d" || return 1
    echo "$2" >"$d/size" &&         # MiB
        echo 4096 >"$d/blocksize" &&
        echo 1 >"$d/memory_backed" &&
        echo 1 >"$d/power" || return 1
    # Linux 6.1 names the disk after the configfs item; older kernels used nullb<index>.
    if [[ -e /sys/block/$1 ]]; then
        echo "/dev/$1"
    else
        echo "/dev/nullb$(cat "$d/index")"
    fi
}

# knvmet_subsys NQN MODEL SERIAL ALLOW_ANY_HOST [ALLOWED_HOST_NQN...]
knvmet_subsys() {
    local nqn=$1 model=$2 serial=$3 any=$4 h
    shift 4
    local s=$NVMET_CFS/subsystems/$nqn
    mkdir "$s" || return 1
    echo "$model" >"$s/attr_model" &&
        echo "$serial" >"$s/attr_serial" &&
        echo "$any" >"$s/attr_allow_any_host" || return 1
    for h in "$@"; do
        [[ -d $NVMET_CFS/hosts/$h ]] || mkdir "$NVMET_CFS/hosts/$h" || return 1
        ln -s "$NVMET_CFS/hosts/$h" "$s/allowed_hosts/$h" || return 1
    done
}

# knvmet_ns NQN NSID DEVICE
knvmet_ns() {
    local n=$NVMET_CFS/subsystems/$1/namespaces/$2
    mkdir "$n" || return 1
    printf '%s' "$3" >"$n/device_path" &&
        echo 1 >"$n/enable"
}

# knvmet_port ID TRTYPE ADDR PORT NQN...: a listener, with the subsystems it exposes.
knvmet_port() {
    local p=$NVMET_CFS/ports/$1 nqn
    mkdir "$p" || return 1
    echo "$2" >"$p/addr_trtype" &&
        echo ipv4 >"$p/addr_adrfam" &&
        echo "$3" >"$p/addr_traddr" &&
        echo "$4" >"$p/addr_trsvcid" || return 1
    shift 4
    for nqn in "$@"; do
        ln -s "$NVMET_CFS/subsystems/$nqn" "$p/subsystems/$nqn" || return 1
    done
}
