# shellcheck shell=bash
# tests/e2e/lib/common.sh - helpers for the guest-side end-to-end scripts (sourced by bash).
#
# Reporting: `run_step NAME FUNCTION [ARGS...]` runs one step and prints "PASS: NAME" or
# "FAIL: NAME - reason". A step function returns non-zero on failure after calling `why` with the
# reason. Results are also appended to $RIG_OUT/results (the rig's writable share), one
# "PASS NAME" / "FAIL NAME - reason" line per step, so the host side can count them.
#
# Step functions run in an `if` context, where bash ignores `set -e`: check every command
# explicitly (`cmd || { why "..."; return 1; }`).

E2E_PASSED=0
E2E_FAILED=0
E2E_WHY=
E2E_RESULTS=${RIG_OUT:+$RIG_OUT/results}

ts() { date +%H:%M:%S; }
note() { echo "[$(ts)]   $*"; }
# why REASON: record why the current step fails (the last reason wins).
why() {
    E2E_WHY=$*
    echo "[$(ts)]   ! $*" >&2
}

record() {
    if [[ -n $E2E_RESULTS ]]; then
        echo "$*" >>"$E2E_RESULTS" || true
    fi
}

run_step() {
    local name=$1 start rc
    shift
    E2E_WHY=
    start=$(date +%s)
    echo "[$(ts)] --- $name"
    if "$@"; then rc=0; else rc=1; fi
    local took=$(($(date +%s) - start))
    if ((rc == 0)); then
        E2E_PASSED=$((E2E_PASSED + 1))
        echo "[$(ts)] PASS: $name (${took}s)"
        record "PASS $name"
    else
        E2E_FAILED=$((E2E_FAILED + 1))
        echo "[$(ts)] FAIL: $name - ${E2E_WHY:-failed} (${took}s)"
        record "FAIL $name - ${E2E_WHY:-failed}"
    fi
    return 0
}

# summary LABEL: print the totals; returns non-zero if anything failed.
summary() {
    echo "$1: $E2E_PASSED passed, $E2E_FAILED failed"
    ((E2E_FAILED == 0))
}

# wait_for SECS CMD [ARGS...]: poll CMD every 0.2 s until it succeeds or SECS pass.
wait_for() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@"; do
        (($(date +%s) < deadline)) || return 1
        sleep 0.2
    done
}

# ---- NVMe sysfs lookups ------------------------------------------------------------------------

# ctrls_for NQN [HOSTNQN]: the controller names (nvme0 ...) connected to subsystem NQN, from host
# HOSTNQN if given, one per line, in instance order.
ctrls_for() {
    local c
    for c in /sys/class/nvme/nvme*; do
        [[ -e $c/subsysnqn ]] || continue
        [[ $(cat "$c/subsysnqn") == "$1" ]] || continue
        [[ -z ${2:-} || $(cat "$c/hostnqn" 2>/dev/null) == "$2" ]] || continue
        basename "$c"
    done | sort -V
}

# nsdev_for NQN [NSID]: the block device of namespace NSID (default 1) of subsystem NQN. With
# native multipath (the Debian kernel's default) that is the subsystem's head node nvmeXnY; with
# multipath off it is the first controller's namespace. Only a head whose /dev node is a block
# device counts: after a disconnect while I/O was running, the old subsystem (and its head in
# sysfs, node already gone) can outlive its controllers for a while, beside the new one that a
# reconnect creates; taking the stale one made fio create a regular file of that name in /dev.
nsdev_for() {
    local nqn=$1 nsid=${2:-1} s d c
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [[ -e $s/subsysnqn && $(cat "$s/subsysnqn") == "$nqn" ]] || continue
        for d in "$s"/nvme*n*; do
            [[ -e $d/nsid && $(basename "$d") != *c* && -b /dev/$(basename "$d") ]] || continue
            [[ $(cat "$d/nsid") == "$nsid" ]] || continue
            echo "/dev/$(basename "$d")"
            return 0
        done
    done
    for c in $(ctrls_for "$nqn"); do
        for d in /sys/class/nvme/"$c"/nvme*n*; do
            [[ -e $d/nsid && $(cat "$d/nsid") == "$nsid" && -b /dev/$(basename "$d") ]] || continue
            echo "/dev/$(basename "$d")"
            return 0
        done
    done
    return 1
}

# subsys_dir NQN: the kernel's nvme-subsystem sysfs folder for NQN (iopolicy lives there).
subsys_dir() {
    local s
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [[ -e $s/subsysnqn && $(cat "$s/subsysnqn") == "$1" ]] && { echo "$s"; return 0; }
    done
    return 1
}

# has_nsdev NQN [NSID]: true once the namespace's block device exists.
has_nsdev() {
    local dev
    dev=$(nsdev_for "$@") && [[ -b $dev ]]
}

# no_ctrls NQN: true when no controller for NQN is left.
no_ctrls() { [[ -z $(ctrls_for "$1") ]]; }

# path_ios CTRL NSID: reads+writes completed through one controller's path to a namespace
# (multipath: the hidden nvmeXcYnZ device under the controller).
path_ios() {
    local d
    for d in /sys/class/nvme/"$1"/nvme*n*; do
        [[ -e $d/nsid && $(cat "$d/nsid") == "$2" ]] || continue
        awk '{ print $1 + $5 }' "$d/stat"
        return 0
    done
    echo 0
}

# fabrics_connect KEY=VALUE,...: connect through /dev/nvme-fabrics directly, as nvme-cli does.
# Needed for a second host NQN on the same subsystem and port: nvme-cli 2.3 refuses that with
# "already connected" (its duplicate check ignores the host NQN, and -D does not bypass it),
# while the kernel accepts it. Prints the kernel's answer ("instance=N,cntlid=M").
fabrics_connect() {
    local answer rc=0
    exec {fd}<>/dev/nvme-fabrics || return 1
    printf '%s' "$1" >&"$fd" || rc=1
    if ((rc == 0)); then
        read -r answer <&"$fd" || rc=1
        echo "$answer"
    fi
    exec {fd}>&-
    return "$rc"
}

new_uuid() { cat /proc/sys/kernel/random/uuid; }

# rxe_ready DEV IPV4: true once RDMA device DEV's port 1 is ACTIVE and its GID table holds the
# RoCE v2 GID of IPV4 (::ffff:a.b.c.d). `rdma link add` returns before the kernel's RoCE GID
# work (a workqueue reacting to the netdev) has filled the table: until then rdma_bind_addr
# and rdma_resolve_addr on that address fail (EADDRNOTAVAIL / ADDR_ERROR), which a fast
# machine never shows and a slow one may.
rxe_ready() {
    local port=/sys/class/infiniband/$1/ports/1 a b c d want g
    [[ $(cat "$port/state" 2>/dev/null) == *ACTIVE* ]] || return 1
    IFS=. read -r a b c d <<<"$2"
    want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$d")
    for g in "$port"/gids/*; do
        [[ $(cat "$g" 2>/dev/null) == "$want" ]] && return 0
    done
    return 1
}
