#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# tests/e2e/guest-rdma.sh - nvmfd's NVMe/RDMA transport against the kernel's nvme-rdma host, on
# soft-RoCE, all inside the guest: rxe0 on eth0, nvmfd with an RDMA and a TCP listener on the rxe
# address (one subsystem, a RAM disk), then nvme-cli and fio: discovery over RDMA listing both
# transports, connects with 1 and 2 I/O queues, fio crc32c verify (4 KiB random, 128 KiB and
# 1 MiB sequential writes), a disconnect in the middle of fio then reconnect and verify, two hosts
# at once, data written over RDMA read back over TCP and the other way, and SIGTERM exiting 0.
#
#   deploy/rig/run-guest.sh [--kernel stable|newest] tests/e2e/guest-rdma.sh [NVMFD_BIN [PROBE_BIN [PERF_BIN]]]
#
# PROBE_BIN (bench's rdma_bad_connect example: cargo build --release -p nvmfd-bench --example
# rdma_bad_connect) is the userspace host that sends bad connect requests (unknown QID, bad
# RECFMT, oversize queues, short (CM-padded) private data, IRD 0), each of which must be rejected with its
# NVMe/RDMA status, then bad commands on its own controller's queue pairs (bad rkeys, SGL
# lengths past MDTS or the capsule, foreign descriptor types, LBAs out of range), each answered
# with its NVMe status (a bad rkey: the queue pair ends, see the example), while the kernel
# host's queue pair keeps doing verified I/O. PERF_BIN (nvmfd-perf) then runs a short verified
# mix over NVMe/RDMA.
#
# When $RDMA_SKIP_RXE is 1 the rxe device is expected to exist already (guest-rdma-pingpong.sh
# ran first in the same boot). Prints "PASS: step" / "FAIL: step - reason", ends with
# "guest-rdma: N passed, M failed"; exit code 0 only if all passed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"

[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me in the guest: deploy/rig/run-guest.sh $0" >&2; exit 2; }

REPO=$(cd "$HERE/../.." && pwd)
NVMFD=${1:-$REPO/build/release/nvmfd}
PROBE=${2:-$REPO/build/release/examples/rdma_bad_connect}
PERF=${3:-$REPO/build/release/nvmfd-perf}
NQN=nqn.2026-12.io.nvmfd:rdma
PORT=4420
ADDR=
PID=
DEV=
CTRL=
WORK=/tmp/guest-rdma
MIB=$((1024 * 1024))
HOST1NQN=$(cat /etc/nvme/hostnqn)
HOST2ID=$(new_uuid)
HOST2NQN=nqn.2014-08.org.nvmexpress:uuid:$HOST2ID
mkdir -p "$WORK"

cleanup() {
    nvme disconnect-all >/dev/null 2>&1 || true
    if [[ -n $PID ]]; then kill -KILL "$PID" 2>/dev/null || true; fi
    [[ -z ${RIG_OUT:-} ]] || {
        dmesg >"$RIG_OUT/dmesg-rdma.log" 2>/dev/null || true
        cp "$WORK/nvmfd.log" "$RIG_OUT/nvmfd-rdma.log" 2>/dev/null || true
    }
}
trap cleanup EXIT

kmsg_tail() { dmesg | tail -n 8 | sed 's/^/    dmesg: /'; }
log_tail() { tail -n 15 "$WORK/nvmfd.log" | sed 's/^/    nvmfd: /'; }

# add_rxe1: a second soft-RoCE device, rxe1 on a dummy netdev (added, not waited for).
add_rxe1() {
    modprobe dummy 2>/dev/null || true
    if ! { ip link add nvmfd-dummy0 type dummy && ip addr add 192.0.2.77/24 dev nvmfd-dummy0 &&
        ip link set nvmfd-dummy0 up && rdma link add rxe1 type rxe netdev nvmfd-dummy0; }; then
        why "cannot add a second soft-RoCE device (rxe1 on a dummy netdev)"
        return 1
    fi
}

second_rxe() {
    [[ -e /sys/class/infiniband/rxe1 ]] || add_rxe1 || return 1
    wait_for 30 rxe_ready rxe1 192.0.2.77 || { why "rxe1 not ready after 30 s"; return 1; }
}

setup_rxe() {
    if [[ ${RDMA_SKIP_RXE:-0} != 1 ]]; then
        rdma link add rxe0 type rxe netdev eth0 || { why "rdma link add rxe0 failed (rdma_rxe loaded?)"; return 1; }
    fi
    wait_for 10 test -e /dev/infiniband/uverbs0 || true
    [[ -e /dev/infiniband/rdma_cm ]] || { why "no /dev/infiniband/rdma_cm (rdma_ucm loaded?)"; return 1; }
    ADDR=$(ip -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]; exit}')
    [[ -n $ADDR ]] || { why "eth0 has no IPv4 address"; return 1; }
    wait_for 30 rxe_ready rxe0 "$ADDR" || { why "rxe0 port not ACTIVE with the GID of $ADDR after 30 s"; return 1; }
    modprobe nvme-rdma 2>/dev/null || true
    [[ -e /dev/nvme-fabrics ]] || { why "no /dev/nvme-fabrics (nvme-fabrics loaded?)"; return 1; }
    note "rxe0 on eth0, $ADDR"
}

tcp_listening() { [[ -n $(ss -Hltn "sport = :$PORT") ]]; }
# nvmfd logs through a writer thread of its own, so its "listening" line for RDMA can reach the
# file after the TCP socket (bound later in the same loop) is visible: wait for the line too.
rdma_logged() { grep -q 'listening transport="rdma"' "$WORK/nvmfd.log"; }

start_nvmfd() {
    [[ -x $NVMFD ]] || { why "$NVMFD not built"; return 1; }
    cat >"$WORK/nvmfd.yaml" <<YAML || { why "cannot write the configuration"; return 1; }
state_dir: $WORK/state
rpc: { socket: $WORK/rpc.sock }
# One reactor: soft-RoCE does its work on the guest's CPUs, the host's as well as ours.
reactors:
  cores: [0]
  idle_sleep_us: 100
transports:
  rdma: { max_queue_depth: 128, srq_depth: 2048 }
bdevs:
  - name: m0
    malloc: { size: 256MiB, block_size: 4096 }
subsystems:
  - nqn: $NQN
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: m0 }
    listeners:
      - { transport: rdma, address: $ADDR, port: $PORT }
      - { transport: tcp, address: $ADDR, port: $PORT }
discovery:
  enabled: true
YAML
    NO_COLOR=1 RUST_LOG=${E2E_RUST_LOG:-info} "$NVMFD" --config "$WORK/nvmfd.yaml" >"$WORK/nvmfd.log" 2>&1 &
    PID=$!
    wait_for 30 tcp_listening || { why "nvmfd did not start listening"; log_tail; return 1; }
    wait_for 10 rdma_logged || { why "no RDMA listener in nvmfd's log after 10 s"; log_tail; return 1; }
    note "nvmfd pid $PID on $ADDR:$PORT (rdma + tcp)"
}

discover_rdma() {
    local out
    out=$(timeout 60 nvme discover -t rdma -a "$ADDR" -s "$PORT" 2>&1) ||
        { why "nvme discover -t rdma failed: $out"; kmsg_tail; log_tail; return 1; }
    echo "$out" | sed 's/^/    /' | head -60
    grep -Eq '^trtype: +rdma' <<<"$out" || { why "no rdma entry"; return 1; }
    grep -Eq '^trtype: +tcp' <<<"$out" || { why "no tcp entry"; return 1; }
    grep -Eq '^rdma_qptype: +connected' <<<"$out" || { why "TSAS: RDMA QP type is not 'connected'"; return 1; }
    grep -Eq '^rdma_cms: +rdma-cm' <<<"$out" || { why "TSAS: RDMA CMS is not rdma-cm"; return 1; }
    grep -Eq '^rdma_prtype: +not specified' <<<"$out" || { why "TSAS: RDMA provider type is not 'not specified'"; return 1; }
    grep -Eq "^subnqn: +$NQN\$" <<<"$out" || { why "discovery log lacks $NQN"; return 1; }
}

# connect TRANSPORT NR_IO_QUEUES: host 1's controller over TRANSPORT; sets CTRL and DEV.
connect() {
    local out
    out=$(timeout 120 nvme connect -t "$1" -a "$ADDR" -s "$PORT" -n "$NQN" -i "$2" \
        --ctrl-loss-tmo=10 --reconnect-delay=2 2>&1) ||
        { why "nvme connect -t $1 -i $2 failed: $out"; kmsg_tail; log_tail; return 1; }
    # A bound, not a timing assertion: on a loaded machine the emulated guest's connect alone
    # has taken 18 s.
    wait_for 60 has_nsdev "$NQN" || {
        why "no namespace block device 60 s after connect"
        printf "    %s\n" /sys/class/nvme-subsystem/*/nvme* /dev/nvme*
        kmsg_tail
        return 1
    }
    DEV=$(nsdev_for "$NQN")
    CTRL=$(ctrls_for "$NQN" "$HOST1NQN" | head -n 1)
    local tr qc
    tr=$(cat "/sys/class/nvme/$CTRL/transport")
    qc=$(cat "/sys/class/nvme/$CTRL/queue_count" 2>/dev/null || echo "?")
    note "$CTRL over $tr, queue_count $qc (admin + I/O), namespace $DEV"
    [[ $tr == "$1" ]] || { why "controller transport is $tr, not $1"; return 1; }
    if [[ $qc != "?" ]]; then
        ((qc == $2 + 1)) || { why "queue_count $qc, expected $(($2 + 1))"; return 1; }
    fi
}

disconnect() {
    timeout 120 nvme disconnect -n "$NQN" >/dev/null || { why "nvme disconnect failed"; return 1; }
    wait_for 20 no_ctrls "$NQN" || { why "controllers still present 20s after disconnect"; return 1; }
}

fio_verify() {
    local name=$1 log=$WORK/fio-$1.log
    # fio would create a regular file of that name, and later steps would test that file.
    [[ -b $DEV ]] || { why "$DEV is not a block device"; return 1; }
    timeout 600 fio --name="$name" --filename="$DEV" --allow_file_create=0 \
        --direct=1 --ioengine=libaio \
        --rw="$2" --bs="$3" --offset="$4" --size="$5" --iodepth="$6" \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
        --eta=never --output="$log" ||
        { why "fio $name failed (rc $?)"; cat "$log"; kmsg_tail; log_tail; return 1; }
    grep -E '^ *(read|write):' "$log"
    grep -q 'err= 0' "$log" || { why "fio $name reported errors"; cat "$log"; return 1; }
}

# Disconnect while fio writes; the target keeps serving: reconnect and verify a fresh region.
disconnect_mid_fio() {
    timeout 120 fio --name=mid --filename="$DEV" --allow_file_create=0 \
        --direct=1 --ioengine=libaio --rw=randwrite \
        --bs=4k --offset=0 --size=16M --iodepth=16 --time_based --runtime=30 --eta=never \
        --output="$WORK/fio-mid.log" >/dev/null 2>&1 &
    local fpid=$!
    sleep 4
    kill -0 "$fpid" 2>/dev/null || { why "fio ended before the disconnect"; cat "$WORK/fio-mid.log"; return 1; }
    timeout 120 nvme disconnect -n "$NQN" >/dev/null || { why "nvme disconnect (mid-fio) failed"; return 1; }
    wait "$fpid" 2>/dev/null || true
    # The disconnect removes the device node while fio runs; a time_based job that reopened its
    # file used to create a regular file of that name (now refused by allow_file_create=0),
    # which then hid the reconnected namespace's node.
    [[ ! -e $DEV || -b $DEV ]] || { why "$DEV became a regular file during the disconnect"; return 1; }
    wait_for 20 no_ctrls "$NQN" || { why "controllers still present after the mid-fio disconnect"; return 1; }
    kill -0 "$PID" 2>/dev/null || { why "nvmfd died"; log_tail; return 1; }
    connect rdma 2 || return 1
    fio_verify after-mid randwrite 4k 16M 8M 16 || return 1
}

write_pattern() {
    head -c $((4 * MIB)) /dev/urandom >"$WORK/pattern$1" || { why "making a pattern"; return 1; }
    dd if="$WORK/pattern$1" of="$DEV" bs=1M seek="$2" oflag=direct conv=fsync,notrunc status=none ||
        { why "dd write to $DEV failed"; kmsg_tail; return 1; }
}

check_pattern() {
    dd if="$DEV" of="$WORK/readback" bs=1M skip="$2" count=4 iflag=direct status=none ||
        { why "dd read from $DEV failed"; kmsg_tail; return 1; }
    cmp -s "$WORK/pattern$1" "$WORK/readback" || { why "data read back differs from what was written"; return 1; }
}

# path_ready CTRL NSID: CTRL's path device to namespace NSID exists and, where the kernel shows
# an ANA state, it is optimized.
path_ready() {
    local d
    for d in /sys/class/nvme/"$1"/nvme*n*; do
        [[ -e $d/nsid && $(cat "$d/nsid") == "$2" ]] || continue
        [[ ! -e $d/ana_state || $(cat "$d/ana_state") == optimized ]] && return 0
    done
    return 1
}

# Host 2 (its own host NQN) connects over RDMA as well; I/O runs through both controllers.
two_hosts() {
    local answer ctrl2 a1 b1 pol
    answer=$(fabrics_connect "nqn=$NQN,transport=rdma,traddr=$ADDR,trsvcid=$PORT,hostnqn=$HOST2NQN,hostid=$HOST2ID,nr_io_queues=1,ctrl_loss_tmo=10,reconnect_delay=2") ||
        { why "second host's RDMA connect was refused"; kmsg_tail; log_tail; return 1; }
    note "kernel: $answer"
    ctrl2=$(ctrls_for "$NQN" "$HOST2NQN" | head -n 1)
    [[ -n $ctrl2 ]] || { why "no controller with host NQN $HOST2NQN"; return 1; }
    # The connect returns before the kernel has scanned the new controller's namespaces: until
    # its path to namespace 1 exists the multipath head sends nothing through it, and a fio run
    # that ends first would see no I/O on host 2 (a slow machine can take that long).
    wait_for 30 path_ready "$ctrl2" 1 || { why "no live path to namespace 1 through $ctrl2 after 30 s"; kmsg_tail; return 1; }
    pol=$(subsys_dir "$NQN")/iopolicy
    echo round-robin >"$pol" 2>/dev/null || true
    a1=$(path_ios "$CTRL" 1)
    b1=$(path_ios "$ctrl2" 1)
    fio_verify twohosts randwrite 4k 32M 8M 16 || return 1
    note "I/Os: $CTRL $a1 -> $(path_ios "$CTRL" 1), $ctrl2 $b1 -> $(path_ios "$ctrl2" 1)"
    (($(path_ios "$ctrl2" 1) > b1)) || { why "no I/O went through host 2's controller"; return 1; }
    (($(path_ios "$CTRL" 1) > a1)) || { why "no I/O went through host 1's controller"; return 1; }
    timeout 60 nvme disconnect -d "$ctrl2" >/dev/null || { why "disconnecting host 2 failed"; return 1; }
}

cross_transport() {
    write_pattern A 100 || return 1
    disconnect || return 1
    connect tcp 1 || return 1
    check_pattern A 100 || { why "RDMA-written data differs over TCP"; return 1; }
    write_pattern B 104 || return 1
    disconnect || return 1
    connect rdma 1 || return 1
    check_pattern B 104 || { why "TCP-written data differs over RDMA"; return 1; }
    check_pattern A 100 || return 1
    note "4 MiB written over RDMA read back over TCP, and 4 MiB the other way"
}

# The userspace host's bad connect requests, then its bad commands on queue pairs of a
# controller of its own (bad rkeys, SGL lengths past MDTS and past the capsule, descriptor types
# NVMe/RDMA does not take, LBAs out of range), while the kernel host's queue pair writes and
# verifies without a break (fio runs again and again until the probe is done): each answered
# with its reject or NVMe status, and the I/O unharmed.
bad_connects() {
    [[ -x $PROBE ]] || { why "$PROBE not built (cargo build --release -p nvmfd-bench --example rdma_bad_connect)"; return 1; }
    rm -f "$WORK/probe.done" "$WORK/fio-busy.runs"
    (
        n=0
        while [[ ! -e $WORK/probe.done ]]; do
            timeout 300 fio --name=busy --filename="$DEV" --allow_file_create=0 --direct=1 --ioengine=libaio --rw=randwrite \
                --bs=4k --offset=48M --size=4M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
                --verify_state_save=0 --eta=never --output="$WORK/fio-busy.log" >/dev/null 2>&1 || exit 1
            grep -q 'err= 0' "$WORK/fio-busy.log" || exit 1
            n=$((n + 1))
            echo "$n" >"$WORK/fio-busy.runs"
        done
    ) &
    local fpid=$! out rc=0 frc=0 line fails=0
    out=$(timeout 240 "$PROBE" "$ADDR:$PORT" 16 "$NQN" 192 2>&1) || rc=$?
    touch "$WORK/probe.done"
    while IFS= read -r line; do
        case $line in
        PASS\ *) note "$line"; E2E_PASSED=$((E2E_PASSED + 1)); record "PASS rdma_bad_connect: ${line#PASS }" ;;
        FAIL\ *) note "$line"; E2E_FAILED=$((E2E_FAILED + 1)); fails=$((fails + 1)); record "FAIL rdma_bad_connect: ${line#FAIL }" ;;
        *) note "$line" ;;
        esac
    done <<<"$out"
    wait "$fpid" || frc=$?
    ((frc == 0)) || { why "the kernel host's fio failed (rc $frc) during the bad requests"; cat "$WORK/fio-busy.log"; kmsg_tail; return 1; }
    ((rc == 0)) || { why "rdma_bad_connect exited $rc ($fails case(s) failed)"; log_tail; return 1; }
    note "kernel host's fio verify passed alongside ($(cat "$WORK/fio-busy.runs" 2>/dev/null || echo 0) runs of 4 MiB)"
}

# nvmfd-perf over NVMe/RDMA (the userspace host's keyed SGLs, RDMA READ/WRITE by the target):
# a short mixed run whose every read is checked and whose writes are read back at the end.
perf_rdma() {
    [[ -x $PERF ]] || { why "$PERF not built (cargo build --release --workspace)"; return 1; }
    local out rc=0
    out=$(timeout 120 "$PERF" --addr "$ADDR:$PORT" --nqn "$NQN" --transport rdma --workload randrw \
        --io-size 4096 --queue-depth 16 --time 3 --span-mib 16 --verify --no-progress 2>&1) || rc=$?
    echo "$out" | sed 's/^/    /' | tail -n 12
    ((rc == 0)) || { why "nvmfd-perf --transport rdma exited $rc"; log_tail; return 1; }
    local checked
    checked=$(sed -n 's/^verify: \([0-9]*\) blocks checked, 0 mismatches$/\1/p' <<<"$out")
    [[ -n $checked ]] || { why "no 'verify: N blocks checked, 0 mismatches' line"; return 1; }
    ((checked > 0)) || { why "nothing was verified"; return 1; }
    note "$checked blocks verified"
}

# Another RDMA device is added while nvmfd serves rxe0 (rxe1, on a dummy netdev), and a host
# connects to rxe0's address at once: accepted, and verified I/O runs. This once refused that
# connect ("RDMA connect request rejected: no resources ... cm_id's device is not in the device
# list"): librdmacm of rdma-core v30 to v51 sorts its device array with a comparator that
# truncates pointer differences to int, so in a multi-threaded process the refresh after the
# hot-add took rxe0, still there, for removed about half of the time, and opened it again under
# a new context; the connect request's id still carried the old one, which nvmfd then looked
# for in a fresh device list (the reactor takes the id's own context now), and the listener's
# device check took rxe0 for gone and stopped listening for a while (it compares devices, not
# contexts, now). Set as the bug was seen: a host connected earlier, and the reactor released
# rxe0 once idle. The listener must not be torn down. Whether librdmacm reopened rxe0 this
# time (it depends on where malloc put things) is noted, from nvmfd's log.
released_all() {
    local ready released
    ready=$(grep -c 'RDMA device ready' "$WORK/nvmfd.log" || true)
    released=$(grep -c 'RDMA device released' "$WORK/nvmfd.log" || true)
    ((ready > 0 && ready == released))
}
listener_kept() {
    ! log_has "RDMA listener lost its device" ||
        { why "the listener was torn down although rxe0 never left"; log_tail; return 1; }
}
hot_add() {
    nvme disconnect-all >/dev/null 2>&1 || true
    wait_for 20 no_ctrls "$NQN" || { why "controllers left from earlier steps"; return 1; }
    [[ ! -e /sys/class/infiniband/rxe1 ]] || { why "rxe1 exists already: nothing would be added"; return 1; }
    wait_for 30 released_all || { why "the reactor did not release rxe0 within 30 s of the disconnect"; log_tail; return 1; }
    add_rxe1 || return 1
    # At once: before the listener's next device check (every 2 s) refreshes librdmacm's list.
    # (A connect after that refresh is device_removal's first one.)
    connect rdma 1 || return 1
    fio_verify hotadd randwrite 4k 56M 4M 16 || return 1
    listener_kept || return 1
    wait_for 30 rxe_ready rxe1 192.0.2.77 || { why "rxe1 not ready after 30 s"; return 1; }
    listener_kept || return 1
    if log_has "under a new context"; then
        note "librdmacm opened rxe0 again under a new context on the hot-add (the case that was refused)"
    else
        note "librdmacm kept rxe0's context on the hot-add this time"
    fi
}

# The RDMA device goes away under connected hosts (`rdma link delete`: as a NIC's hot-unplug,
# driver unbind or firmware reset), then comes back. rxe cannot tear a process's verbs objects
# away (no ucontext disassociation), so the removal finishes only once nvmfd has destroyed
# everything it made on the device: its queue pairs, CQ, SRQ, memory regions, PD and the
# listener's id. Meanwhile the TCP listener serves; once rxe0 is back, nvmfd listens on it again.
# A second soft-RoCE device (rxe1, on a dummy netdev) stays: librdmacm refreshes its device
# list only while at least one device exists (rdma-core's sync_devices_list returns early on an
# empty list), so the last device's context is never closed before the process exits, whatever
# the process released. With rxe1 present, the removal completing proves nvmfd let go of rxe0.
# rxe1 comes from hot_add (added while nvmfd ran), or is made here if that step did not get to
# it.
rxe_gone() { [[ ! -e /sys/class/infiniband/rxe0 ]]; }
log_has() { grep -q "$1" "$WORK/nvmfd.log"; }
device_removal() {
    nvme disconnect-all >/dev/null 2>&1 || true
    wait_for 20 no_ctrls "$NQN" || { why "controllers left from earlier steps"; return 1; }
    second_rxe || return 1
    connect rdma 2 || return 1
    write_pattern rm 200 || return 1
    local del rc=0
    timeout 120 rdma link delete rxe0 &
    del=$!
    if ! wait_for 90 rxe_gone; then
        why "rxe0 still present 90 s after 'rdma link delete': its removal waits for a process holding it"
        find "/proc/$PID/fd" -lname '*infiniband*' -printf '    nvmfd fd %f -> %l\n' 2>/dev/null
        log_tail
        # The removal blocks in the kernel (timeout cannot end it) until nvmfd lets go: end
        # nvmfd so the rest of the boot does not hang on the half-removed device.
        kill -KILL "$PID" 2>/dev/null || true
        wait_for 30 rxe_gone || true
        PID=
        return 1
    fi
    wait "$del" || rc=$?
    ((rc == 0)) || { why "rdma link delete rxe0 exited $rc"; return 1; }
    kill -0 "$PID" || { why "nvmfd died"; log_tail; return 1; }
    wait_for 30 log_has "RDMA listener lost its device" ||
        { why "nvmfd did not log that its listener lost the device"; log_tail; return 1; }
    # The kernel host deletes controllers on a removed device; its data is still on the target.
    wait_for 60 no_ctrls "$NQN" || { why "the RDMA controller outlived its device at the host"; return 1; }
    connect tcp 1 || return 1
    check_pattern rm 200 || return 1
    fio_verify rm-tcp randwrite 4k 32M 8M 16 || return 1
    disconnect || return 1
    rdma link add rxe0 type rxe netdev eth0 || { why "rdma link add rxe0 failed"; return 1; }
    wait_for 30 rxe_ready rxe0 "$ADDR" || { why "rxe0 not ready again after 30 s"; return 1; }
    wait_for 30 log_has "listening again" ||
        { why "nvmfd did not listen on $ADDR again within 30 s of rxe0's return"; log_tail; return 1; }
    connect rdma 2 || return 1
    check_pattern rm 200 || return 1
    fio_verify rm-rdma randwrite 4k 48M 8M 16
}

sigterm() {
    disconnect || return 1
    kill -TERM "$PID" || { why "cannot signal nvmfd"; return 1; }
    local rc=0
    timeout 30 tail --pid="$PID" -f /dev/null || { why "nvmfd did not exit within 30 s of SIGTERM"; return 1; }
    wait "$PID" || rc=$?
    PID=
    ((rc == 0)) || { why "nvmfd exited $rc after SIGTERM"; log_tail; return 1; }
    if grep -Eq 'panicked|ERROR' "$WORK/nvmfd.log"; then
        why "errors in nvmfd's log"
        grep -E 'panicked|ERROR' "$WORK/nvmfd.log" | head -5
        return 1
    fi
}

run_step "soft-RoCE: rxe0 on eth0" setup_rxe
if [[ -n $ADDR ]]; then
    run_step "nvmfd with RDMA and TCP listeners on $ADDR" start_nvmfd
fi
if [[ -n $PID ]]; then
    run_step "nvme discover -t rdma lists rdma and tcp entries (TRTYPE, TSAS)" discover_rdma
    run_step "nvme connect -t rdma -i 1" connect rdma 1
    if [[ -n $DEV ]]; then
        run_step "fio 4k randwrite crc32c verify over RDMA (1 I/O queue)" fio_verify rand4k randwrite 4k 0 8M 16
        run_step "disconnect" disconnect
        run_step "nvme connect -t rdma -i 2" connect rdma 2
        run_step "fio 4k randwrite crc32c verify over RDMA (2 I/O queues)" fio_verify rand4k2 randwrite 4k 0 8M 16
        run_step "fio 128k write crc32c verify over RDMA" fio_verify seq128k write 128k 16M 16M 8
        run_step "fio 1m write crc32c verify over RDMA" fio_verify seq1m write 1m 64M 16M 4
        run_step "disconnect in the middle of fio, reconnect, verify" disconnect_mid_fio
        run_step "two hosts over RDMA at once" two_hosts
        run_step "same subsystem over RDMA and TCP: written through one, read through the other" cross_transport
        run_step "userspace host: bad connect requests and bad commands answered while the kernel host does I/O" bad_connects
        run_step "nvmfd-perf --transport rdma: 3 s of 4k randrw QD 16, verified" perf_rdma
        run_step "another RDMA device added while nvmfd runs, then a connect to rxe0 at once: accepted, verified, still listening" hot_add
        run_step "RDMA device removed under a connected host and added again: released, TCP served meanwhile, listening again" device_removal
    fi
    run_step "SIGTERM: nvmfd exits 0" sigterm
fi
summary guest-rdma
