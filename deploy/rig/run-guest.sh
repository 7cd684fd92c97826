#!/usr/bin/env bash
# deploy/rig/run-guest.sh - boot the QEMU test guest, run one script in it, return its exit code.
#
#   run-guest.sh [options] SCRIPT [ARGS...]
#
# SCRIPT is a path on THIS machine's file system: the guest's root is this machine's / shared
# read-only over 9p, so the guest runs this machine's nvme-cli, fio and freshly built binaries.
# Keep SCRIPT and everything it reads out of /tmp, /run, /var/tmp and /etc/nvme: those are fresh
# tmpfs mounts in the guest. Inside the guest, 10.0.2.2 is this machine's 127.0.0.1.
#
# Options:
#   --kernel NAME     guest kernel: a label of deploy/rig/setup.sh, "stable" (this machine's Debian
#                     release's, 6.1 on Debian 12) or "newest" (Debian unstable's, 7.2 when
#                     written), or a version prefix of one of them ("6.1", "7.2", a full KVER);
#                     default $RIG_KERNEL or stable
#   --timeout SECS    whole-run limit, boot included (default $RIG_TIMEOUT or 900)
#   --cpu MODEL       QEMU CPU model (default $RIG_CPU or max; under TCG "max" is an
#                     AuthenticAMD family 15 CPU), e.g. EPYC (AMD family 0x17) or
#                     Skylake-Client (GenuineIntel family 6); `qemu-system-x86_64 -cpu help`
#   --out DIR         host folder mounted writable at the same path in the guest; the script
#                     finds it in $RIG_OUT (default: a fresh folder under the run folder)
#   --log FILE        console log (default: RUN_DIR/console.log)
#   --hostnqn NQN     guest's /etc/nvme/hostnqn (default: unique per run)
#   --hostid UUID     guest's /etc/nvme/hostid (default: unique per run)
#   -e NAME=VALUE     export NAME=VALUE to SCRIPT (repeatable); E2E_* variables pass through too
#   -q, --quiet       do not copy the console to stdout (it is still logged)
# Environment: RIG_MEM (MiB, default 2048), RIG_SMP (default 2), RIG_CPU (see --cpu),
#   RIG_PRINTK (guest console log level, default 4), RIG_QEMU_EXTRA (extra QEMU arguments,
#   word-split), RIG_CACHE.
#
# Exit code: the script's, parsed from the "NVMFD-GUEST-EXIT=<rc>" marker the guest's /init
# prints; 124 when the time ran out; 125 when the rig itself failed (no marker, no QEMU, ...).
set -euo pipefail

RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${RIG_CACHE:-$RIG_DIR/.cache}

log() { printf 'run-guest: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 125; }
usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit 125; }

timeout_s=${RIG_TIMEOUT:-900}
cpu_model=${RIG_CPU:-max}
kernel_name=${RIG_KERNEL:-stable}
out_dir="" console_log="" hostnqn=${RIG_HOSTNQN:-} hostid=${RIG_HOSTID:-} quiet=0
envs=()
while (($#)); do
    case $1 in
    --kernel) kernel_name=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --cpu) cpu_model=$2; shift 2 ;;
    --out) out_dir=$2; shift 2 ;;
    --log) console_log=$2; shift 2 ;;
    --hostnqn) hostnqn=$2; shift 2 ;;
    --hostid) hostid=$2; shift 2 ;;
    -e) [[ $2 == [A-Za-z_]*=* ]] || die "-e wants NAME=VALUE, got '$2'"; envs+=("$2"); shift 2 ;;
    -q | --quiet) quiet=1; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
    esac
done
(($#)) || usage
script=$(realpath -e "$1") || die "no such script: $1"
shift
[[ -x $script ]] || die "script is not executable: $script"

# The env file setup.sh wrote for the kernel: by label, else the one whose KVER is NAME or starts
# with NAME followed by a version separator ("6.1" matches 6.1.0-57-amd64, not 6.10...).
rig_env=
if [[ $kernel_name =~ ^[a-z]+$ ]]; then
    rig_env=$CACHE/rig-$kernel_name.env
    # A cache set up before the labels existed has only rig.env (the stable kernel).
    [[ $kernel_name == stable && ! -f $rig_env && -f $CACHE/rig.env ]] && rig_env=$CACHE/rig.env
    [[ -f $rig_env ]] ||
        die "no kernel '$kernel_name' set up (no $rig_env): run deploy/rig/setup.sh (RIG_KERNELS=\"stable newest\")"
else
    for f in "$CACHE"/rig-*.env; do
        [[ -f $f ]] || continue
        v=$(sed -n 's/^KVER=//p' "$f")
        if [[ $v == "$kernel_name" || $v == "$kernel_name".* || $v == "$kernel_name"-* || $v == "$kernel_name"+* ]]; then
            rig_env=$f
            break
        fi
    done
    [[ -n $rig_env ]] || die "no kernel matching '$kernel_name' is set up: run deploy/rig/setup.sh"
fi
# shellcheck source=/dev/null
. "$rig_env"
[[ -f $KERNEL && -f $INITRD ]] || die "kernel or initramfs of $KVER missing: run deploy/rig/setup.sh"

# A path the guest must see as it is on this machine (not hidden by one of its tmpfs mounts),
# and that fits on the kernel command line (no spaces).
check_guest_path() {
    case $2 in
    /tmp/* | /run/* | /var/tmp/* | /etc/nvme/*)
        die "$1 $2 is under a folder that is a fresh tmpfs in the guest; put it elsewhere" ;;
    *[[:space:]]*) die "$1 '$2' contains whitespace" ;;
    esac
}
check_guest_path "script" "$script"

# Each run gets its own folder: the wrapper the guest runs, the console log, the output share.
runs=$CACHE/runs
mkdir -p "$runs"
run_dir=$(mktemp -d "$runs/$(date +%Y%m%d-%H%M%S)-XXXX")
check_guest_path "run folder" "$run_dir"
# Keep the 20 newest run folders.
find "$runs" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +21 |
    cut -d' ' -f2- | xargs -r rm -rf

if [[ -z $out_dir ]]; then
    out_dir=$run_dir/out
fi
mkdir -p "$out_dir"
out_dir=$(realpath "$out_dir")
check_guest_path "output folder" "$out_dir"
console_log=${console_log:-$run_dir/console.log}
: >"$console_log"

# The wrapper carries the arguments and environment (the kernel command line is too small and
# too lossy for them). printf %q quotes for bash, so the wrapper is a bash script.
wrapper=$run_dir/cmd
{
    echo '#!/bin/bash'
    echo '# Generated by deploy/rig/run-guest.sh; runs inside the guest.'
    for name in $(compgen -e); do
        [[ $name == E2E_* ]] && printf 'export %s=%q\n' "$name" "${!name}"
    done
    for kv in "${envs[@]}"; do
        printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
    printf 'cd %q\n' "$(dirname "$script")"
    printf 'exec %q' "$script"
    for a in "$@"; do printf ' %q' "$a"; done
    echo
} >"$wrapper"
chmod +x "$wrapper"

# The guest's own limit fires first, so a hung script still prints dmesg and the marker.
guest_timeout=$((timeout_s > 60 ? timeout_s - 30 : timeout_s))
append="console=ttyS0 panic=-1 quiet loglevel=4 script=$wrapper rig.out=$out_dir"
append+=" rig.timeout=$guest_timeout rig.printk=${RIG_PRINTK:-4}"
[[ -n $hostnqn ]] && append+=" rig.hostnqn=$hostnqn"
[[ -n $hostid ]] && append+=" rig.hostid=$hostid"
# Extra kernel parameters first-class, e.g. RIG_APPEND="intel_iommu=on" for VFIO tests.
[[ -n ${RIG_APPEND:-} ]] && append="${RIG_APPEND} $append"

# shellcheck disable=SC2054  # the commas are QEMU option syntax
qemu=(
    qemu-system-x86_64
    -machine q35 -accel tcg,thread=multi -cpu "$cpu_model"
    -smp "${RIG_SMP:-2}" -m "${RIG_MEM:-2048}"
    -nographic -no-reboot
    # -nographic alone multiplexes the monitor onto stdio; we want only the serial console
    # there, and a copy of it in the log file.
    -monitor none
    -chardev "stdio,id=con,signal=off,logfile=$console_log"
    -serial chardev:con
    -kernel "$KERNEL" -initrd "$INITRD" -append "$append"
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$out_dir,mount_tag=rigout,security_model=none"
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=
    -device virtio-rng-pci
    # Keep SeaBIOS off the serial console (its banner clears the terminal); QEMU warns that the
    # name lacks an "opt/" prefix, but etc/sercon-port is the name SeaBIOS reads.
    -fw_cfg name=etc/sercon-port,string=0
)
if [[ -n ${RIG_QEMU_EXTRA:-} ]]; then
    # shellcheck disable=SC2206  # word splitting is the point
    qemu+=($RIG_QEMU_EXTRA)
fi

# One boot; sets qrc (QEMU's exit code) and elapsed. Exits 125 when a signal stopped it.
boot() {
    log "booting $KVER, CPU $cpu_model: $script${*:+ $*} (timeout ${timeout_s}s, log $console_log)"
    start=$(date +%s)
    # QEMU runs in the background so that a signal to this script reaches it: stopping the
    # test must not leave a guest running until its time limit. (Not `>/dev/stdout`: that
    # reopens and truncates a log file that stdout may be.)
    if ((quiet)); then
        timeout -k 10 "$timeout_s" "${qemu[@]}" </dev/null >/dev/null &
    else
        timeout -k 10 "$timeout_s" "${qemu[@]}" </dev/null &
    fi
    qpid=$!
    signalled=
    trap 'signalled=1; kill -TERM "$qpid" 2>/dev/null || true' TERM INT HUP
    while :; do
        qrc=0
        wait "$qpid" || qrc=$?
        # A trapped signal interrupts `wait` while QEMU still runs: wait again until it exits.
        kill -0 "$qpid" 2>/dev/null || break
    done
    trap - TERM INT HUP
    elapsed=$(($(date +%s) - start))
    if [[ -n $signalled ]]; then
        log "ERROR: interrupted by a signal after ${elapsed}s; guest stopped"
        exit 125
    fi
}

boot "$@"
# The guest kernel itself can die while booting under TCG, before /init runs anything of ours
# (seen once with 7.2: "Oops: int3" in sched_clock_cpu during an initcall, multi-threaded TCG
# patching kernel text). The script never ran, so one more boot hides no test result; a kernel
# that dies twice fails the step.
if ! grep -aq 'rig-init:' "$console_log" && ! grep -aq 'NVMFD-GUEST-EXIT=' "$console_log"; then
    log "the guest kernel died before /init ran (QEMU exit $qrc after ${elapsed}s; console kept in $console_log.boot1); booting again"
    tail -n 5 "$console_log" | tr -d '\r' | sed 's/^/  | /' >&2
    mv "$console_log" "$console_log.boot1"
    boot "$@"
fi

# The last marker wins: /init prints it after the script has ended.
marker=$(tr -d '\r' <"$console_log" | grep -a -o 'NVMFD-GUEST-EXIT=[0-9]\+' | tail -n 1 || true)
if [[ -n $marker ]]; then
    rc=${marker#NVMFD-GUEST-EXIT=}
    log "guest script exited $rc after ${elapsed}s (console: $console_log)"
    exit "$rc"
fi
if ((qrc == 124 || qrc == 137)); then
    log "ERROR: guest timed out after ${elapsed}s (limit ${timeout_s}s), no exit marker"
    rc=124
else
    log "ERROR: QEMU exited $qrc after ${elapsed}s without printing the exit marker"
    rc=125
fi
log "last console lines ($console_log):"
tail -n 40 "$console_log" | tr -d '\r' | sed 's/^/  | /' >&2
exit "$rc"
