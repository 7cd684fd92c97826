#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# tests/e2e/guest-nvme-vfio.sh - INSIDE the guest started by tests/e2e/nvme-vfio.sh (emulated SSD
# with a 64 MiB CMB at 0000:03:00.0 behind a PCIe switch, intel-iommu): the userspace VFIO driver
# end to end.
#   1. refusals: unknown BDF, device on another driver, mounted file system;
#   2. before that, the `uring` bdev with `passthrough: true` on /dev/ngXnY (kernel nvme driver):
#      fio verify over NVMe/TCP, namespace 2's media error reaches the host unchanged;
#      `nvmfd setup --pci` binds vfio-pci, `--hugemem` reserves hugepages; the driver self-test (PRP shapes, FUA, flush, write
#      zeroes, compare, DSM, LBA range, MDTS, CMB<->host round trips with buffers of the CMB's
#      memory domain, 0x12 for a mixed command); the nvme bdev with CMB buffers (no bounce);
#   3. nvmfd exports the SSD (nvme bdev) over NVMe/TCP on 127.0.0.1; the kernel initiator in this
#      guest runs fio verify=crc32c (4 KiB random, 128 KiB and 1 MiB sequential); a pattern
#      survives a daemon restart; a namespace the SSD lacks stops start-up with a clear error;
#      namespace 2 fails some I/O (blkdebug): the SSD's statuses reach the host, the rest serves;
#      host buffers go to the SSD by IOVA (nothing bounced); an I/O that times out is aborted,
#      the controller reset, the rest keeps serving (namespace 3 answers after 7 s); a reset that
#      fails (test-only injection) stops the SSD's DMA (Bus Master Enable off, read back) before
#      buffers go back, or leaks them when that fails too (injected);
#   4. P2P placement over NVMe/TCP (tests/e2e/guest-p2p.sh);
#   5. `nvmfd setup --reset` gives the SSD back; the kernel's nvme driver reads the same pattern;
#   6. hot-removal (sysfs `remove`) of the SSD under I/O: nvmfd releases it (VFIO device request),
#      the RAM namespace keeps serving; a rescan brings it back.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me through tests/e2e/nvme-vfio.sh" >&2; exit 2; }
BIN=${NVMFD_BIN_DIR:?}
NVMFD=$BIN/nvmfd
BDF=0000:03:00.0
NQN=nqn.2026-11.io.nvmfd:ssd0
PORT=4420
MIB=$((1 << 20))
PATTERN_OFF_MIB=200
PATTERN_MIB=4
E2E_RESULTS=${RIG_OUT:+$RIG_OUT/results}
DEV=
DPID=

kmsg_tail() { dmesg | tail -n 20; }

pci_driver() { basename "$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null)" 2>/dev/null || echo none; }

# kernel_nsdev [NSID]: the kernel driver's block device for namespace NSID (default 1) of the
# SSD, found by its nsid attribute: the name's nY is the order the scan finished in, not the
# NSID (Linux 7.2 scans namespaces in parallel; namespace 2 once became nvme0n1).
kernel_nsdev() {
    local d nsid=${1:-1}
    for d in /sys/bus/pci/devices/"$BDF"/nvme/nvme*/nvme*n*; do
        [[ -e $d/nsid && $(cat "$d/nsid") == "$nsid" && $(basename "$d") != *c* ]] || continue
        echo "/dev/$(basename "$d")"
        return 0
    done
    return 1
}

refuse_unknown_bdf() {
    local out
    out=$("$NVMFD" setup --pci 0000:0f:1f.0 2>&1) && { why "setup succeeded: $out"; return 1; }
    grep -q "does not exist" <<<"$out" || { why "unclear message: $out"; return 1; }
    note "$out"
    out=$("$BIN/nvmfd-nvme-selftest" --pci 0000:0f:1f.0 2>&1) && { why "driver opened it: $out"; return 1; }
    grep -q "does not exist" <<<"$out" || { why "unclear driver message: $out"; return 1; }
}

refuse_other_driver() {
    [[ $(pci_driver "$BDF") == nvme ]] || { why "expected the kernel nvme driver at boot, got $(pci_driver "$BDF")"; return 1; }
    local out
    out=$("$BIN/nvmfd-nvme-selftest" --pci "$BDF" 2>&1) && { why "driver opened a device bound to nvme"; return 1; }
    note "$out"
    grep -q "bound to nvme, not vfio-pci" <<<"$out" || { why "unclear message: $out"; return 1; }
}

refuse_mounted() {
    local dev out
    dev=$(kernel_nsdev) || { why "no kernel block device for $BDF"; return 1; }
    # ext4 is a module the rig's initramfs does not load: take it from the guest kernel's tree.
    grep -qw ext4 /proc/filesystems || modprobe -d "${E2E_KDIR:?}" ext4 ||
        { why "cannot load ext4 from $E2E_KDIR"; return 1; }
    mkfs.ext4 -q -F "$dev" >/dev/null 2>&1 || { why "mkfs.ext4 $dev failed"; return 1; }
    mkdir -p /tmp/mnt || { why "mkdir /tmp/mnt"; return 1; }
    mount "$dev" /tmp/mnt || { why "mount $dev failed"; return 1; }
    out=$("$NVMFD" setup --pci "$BDF" 2>&1)
    local rc=$?
    umount /tmp/mnt
    ((rc != 0)) || { why "setup unbound a device with a mounted file system: $out"; return 1; }
    grep -q "is mounted on /tmp/mnt" <<<"$out" || { why "unclear message: $out"; return 1; }
    note "$out"
    [[ $(pci_driver "$BDF") == nvme ]] || { why "driver changed to $(pci_driver "$BDF")"; return 1; }
}

# `uring` with `passthrough: true` while the kernel's nvme driver owns the SSD: NVMe commands to
# /dev/ngXnY through io_uring URING_CMD, exported over NVMe/TCP; fio verify on namespace 1, and
# namespace 2's media error (blkdebug) reaches the host as the SSD's own status.
PT_NQN=nqn.2026-11.io.nvmfd:passthrough
passthrough() {
    local dev ng log=/tmp/nvmfd-pt.log pid rc=0 before new pdev
    local dev2 ng2
    dev=$(kernel_nsdev 1) || { why "no kernel block device for $BDF"; return 1; }
    dev2=$(kernel_nsdev 2) || { why "no kernel block device for namespace 2 of $BDF"; return 1; }
    ng=${dev/\/dev\/nvme//dev/ng}
    ng2=${dev2/\/dev\/nvme//dev/ng}
    [[ -c $ng && -c $ng2 ]] || { why "no generic devices $ng $ng2"; return 1; }
    cat >/tmp/nvmfd-pt.yaml <<YAML
reactors: { count: 1 }
state_dir: /tmp/nvmfd-pt-state
rpc: { socket: /tmp/nvmfd-pt.sock }
bdevs:
  - name: pt1
    uring: { path: $ng, passthrough: true }
  - name: pt2
    uring: { path: $ng2, passthrough: true }
subsystems:
  - nqn: $PT_NQN
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: pt1 }
      - { nsid: 2, bdev: pt2 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: 4421 }
YAML
    "$NVMFD" --config /tmp/nvmfd-pt.yaml >"$log" 2>&1 &
    pid=$!
    wait_for 60 grep -q "nvmfd started" "$log" || { why "nvmfd (passthrough) did not start"; cat "$log"; kill "$pid"; return 1; }
    grep -o 'kind="\?uring-passthrough.*' "$log" | head -n 1
    nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $PT_NQN >/dev/null || { why "connect failed"; kill "$pid"; return 1; }
    wait_for 20 has_nsdev $PT_NQN 2 || { why "no namespace devices"; rc=1; }
    if ((rc == 0)); then
        pdev=$(nsdev_for $PT_NQN 1)
        timeout 300 fio --name=pt --filename="$pdev" --allow_file_create=0 \
            --direct=1 --ioengine=libaio --rw=randwrite \
            --bs=4k --size=8M --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
            --verify_state_save=0 --eta=never --output=/tmp/fio-pt.log ||
            { why "fio through passthrough failed"; cat /tmp/fio-pt.log; rc=1; }
        grep -E '^ *(read|write):' /tmp/fio-pt.log
        before=$(dmesg | wc -l)
        dd if="$(nsdev_for $PT_NQN 2)" of=/dev/null bs=4k skip=1024 count=1 iflag=direct status=none 2>/dev/null &&
            { why "a read of the failing range succeeded"; rc=1; }
        new=$(dmesg | tail -n +"$((before + 1))")
        note "$(grep -m1 'sct 0x2 / sc 0x81' <<<"$new")"
        grep -q 'sct 0x2 / sc 0x81' <<<"$new" || { why "no Unrecovered Read Error (0x281) at the host"; rc=1; }
        # The 0x281 is the SSD's: nvmfd would also answer 0x281 for a kernel-side failure
        # (errno), and logs those.
        grep -q "failed in the kernel" "$log" && { why "passthrough commands failed in the kernel"; grep -m1 "failed in the kernel" "$log"; rc=1; }
    fi
    nvme disconnect -n $PT_NQN >/dev/null
    wait_for 20 no_ctrls $PT_NQN || { why "controllers left"; rc=1; }
    kill -TERM "$pid"
    wait "$pid" || { why "nvmfd (passthrough) exited $?"; tail -n 20 "$log"; rc=1; }
    return "$rc"
}

setup_bind() {
    "$NVMFD" setup --status
    "$NVMFD" setup --pci "$BDF" || { why "setup --pci failed"; return 1; }
    [[ $(pci_driver "$BDF") == vfio-pci ]] || { why "driver is $(pci_driver "$BDF")"; return 1; }
    "$NVMFD" setup --status | grep "$BDF" | grep -q vfio-pci || { why "status does not show vfio-pci"; return 1; }
}

hugemem() {
    "$NVMFD" setup --hugemem 64MiB || { why "setup --hugemem failed"; return 1; }
    local n
    n=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)
    ((n == 32)) || { why "nr_hugepages is $n, want 32"; return 1; }
}

# The daemon's DMA regions come from the reserved hugepages (free count drops while it runs).
daemon_uses_hugepages() {
    local free
    free=$(awk '/HugePages_Free/ { print $2 }' /proc/meminfo)
    note "HugePages_Free $free of 32 while nvmfd runs"
    ((free < 32)) || { why "no hugepage in use"; return 1; }
}

selftest() {
    "$BIN/nvmfd-nvme-selftest" --pci "$BDF" --nsid 1 || { why "self-test failed"; return 1; }
}

# The nvme bdev takes buffers of the SSD's CMB domain and of host pools (by IOVA) in place (no
# bounce); only buffers made on their own bounce; content compared every way.
bdev_cmb() {
    "$BIN/nvmfd-bdev-nvme-check" --pci "$BDF" --nsid 1 || { why "bdev CMB check failed"; return 1; }
}

write_config() {
    cat >/tmp/nvmfd.yaml <<YAML
reactors: { count: 1 }
state_dir: /tmp/nvmfd-state
bdevs:
  - name: ssd0
    nvme: { pci: "$BDF", namespace: ${1:-1} }
  - name: bad0
    nvme: { pci: "$BDF", namespace: 2 }
subsystems:
  - nqn: $NQN
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: ssd0 }
      - { nsid: 2, bdev: bad0 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: $PORT }
YAML
}

start_daemon() {
    write_config 1
    "$NVMFD" --config /tmp/nvmfd.yaml >>/tmp/nvmfd.log 2>&1 &
    DPID=$!
    wait_for 60 grep -q "nvmfd started" /tmp/nvmfd.log ||
        { why "nvmfd did not start"; cat /tmp/nvmfd.log; return 1; }
    grep -E "NVMe controller ready|CMB enabled" /tmp/nvmfd.log | tail -n 2
}

stop_daemon() {
    [[ -n $DPID ]] || return 0
    kill -TERM "$DPID"
    local rc=0
    wait "$DPID" || rc=$?
    DPID=
    ((rc == 0)) || { why "nvmfd exited $rc"; tail -n 20 /tmp/nvmfd.log; return 1; }
    grep -q "controller shut down cleanly" /tmp/nvmfd.log || { why "no clean shutdown logged"; tail -n 20 /tmp/nvmfd.log; return 1; }
}

bad_namespace() {
    write_config 9
    local out rc=0
    out=$(timeout 60 "$NVMFD" --config /tmp/nvmfd.yaml 2>&1) || rc=$?
    ((rc != 0)) || { why "nvmfd started with namespace 9"; return 1; }
    grep -q "namespace 9 does not exist\|namespace 9 is not active" <<<"$out" || { why "unclear message: $out"; return 1; }
    note "$(grep -o 'bdev ssd0: .*' <<<"$out" | head -n 1)"
}

connect() {
    # Under TCG a connect can lose its admin queue to a keep-alive timeout while the guest is
    # starved (seen once right after a daemon restart); try up to three times and say so.
    local i
    for i in 1 2 3; do
        nvme connect -t tcp -a 127.0.0.1 -s $PORT -n $NQN >/dev/null && break
        ((i < 3)) || { why "nvme connect failed 3 times"; kmsg_tail; return 1; }
        note "connect attempt $i failed; retrying"
        sleep 2
    done
    wait_for 20 has_nsdev $NQN || { why "no namespace device"; return 1; }
    DEV=$(nsdev_for $NQN)
    note "namespace at $DEV ($(blockdev --getsize64 "$DEV") bytes)"
}

disconnect() {
    nvme disconnect -n $NQN >/dev/null || { why "disconnect failed"; return 1; }
    wait_for 20 no_ctrls $NQN || { why "controllers left"; return 1; }
}

fio_verify() {
    local name=$1 log=/tmp/fio-$1.log
    timeout 600 fio --name="$name" --filename="$DEV" --allow_file_create=0 \
        --direct=1 --ioengine=libaio \
        --rw="$2" --bs="$3" --offset="$4" --size="$5" --iodepth="$6" \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
        --eta=never --output="$log" ||
        { why "fio $name failed (rc $?)"; cat "$log"; kmsg_tail; return 1; }
    grep -E '^ *(read|write):' "$log"
    grep -q 'err= 0' "$log" || { why "fio $name reported errors"; cat "$log"; return 1; }
}

write_pattern() {
    head -c $((PATTERN_MIB * MIB)) /dev/urandom >/tmp/pattern
    dd if=/tmp/pattern of="$DEV" bs=1M seek=$PATTERN_OFF_MIB oflag=direct conv=fsync,notrunc status=none ||
        { why "dd write failed"; kmsg_tail; return 1; }
}

check_pattern() {
    local dev=${1:-$DEV}
    dd if="$dev" of=/tmp/back bs=1M skip=$PATTERN_OFF_MIB count=$PATTERN_MIB iflag=direct status=none ||
        { why "dd read from $dev failed"; return 1; }
    cmp -s /tmp/pattern /tmp/back || { why "pattern differs on $dev"; return 1; }
}

# Namespace 2 (same SSD, blkdebug image, see nvme-vfio.sh) fails reads at 4 MiB and writes at
# 8 MiB. The host must get the SSD's own status (Unrecovered Read Error 0x281, Write Fault
# 0x280, as the kernel logs them), and the daemon must keep serving the rest.
bad_disk_errors() {
    local dev2 before
    wait_for 20 has_nsdev $NQN 2 || { why "no device for namespace 2"; return 1; }
    dev2=$(nsdev_for $NQN 2)
    dd if="$dev2" of=/dev/null bs=4k count=16 iflag=direct status=none ||
        { why "a good range of namespace 2 failed to read"; kmsg_tail; return 1; }
    before=$(dmesg | wc -l)
    dd if="$dev2" of=/dev/null bs=4k skip=1024 count=1 iflag=direct status=none 2>/dev/null &&
        { why "a read of the failing range succeeded"; return 1; }
    dd if=/dev/zero of="$dev2" bs=4k seek=2048 count=1 oflag=direct status=none 2>/dev/null &&
        { why "a write of the failing range succeeded"; return 1; }
    local new
    new=$(dmesg | tail -n +"$((before + 1))")
    note "$(grep -m1 'sct 0x2 / sc 0x81' <<<"$new")"
    note "$(grep -m1 'sct 0x2 / sc 0x80' <<<"$new")"
    grep -q 'sct 0x2 / sc 0x81' <<<"$new" || { why "no Unrecovered Read Error (0x281) at the host"; echo "$new" | tail -n 20; return 1; }
    grep -q 'sct 0x2 / sc 0x80' <<<"$new" || { why "no Write Fault (0x280) at the host"; echo "$new" | tail -n 20; return 1; }
    kill -0 "$DPID" || { why "nvmfd died"; return 1; }
    # Namespace 2 still serves its good blocks, namespace 1 its data.
    dd if="$dev2" of=/dev/null bs=4k skip=4096 count=16 iflag=direct status=none ||
        { why "namespace 2's good blocks no longer read"; return 1; }
    check_pattern || return 1
    grep -q "panicked" /tmp/nvmfd.log && { why "nvmfd logged a panic"; return 1; }
    return 0
}

# --- s16: host memory mapped once, never bounced (issue 10) ---
# The reactors' pool regions are mapped in the driver's one VFIO container at start-up; the fio
# runs above must not have taken the bounce path (the nvme bdev logs its first bounce).
no_bounce() {
    grep -q "host buffer regions mapped for DMA" /tmp/nvmfd.log ||
        { why "no 'host buffer regions mapped' at start-up"; grep -m3 "VFIO\|IOVA" /tmp/nvmfd.log; return 1; }
    note "$(grep -m1 -o 'regions=[0-9]* bytes=[0-9]*' /tmp/nvmfd.log)"
    if grep -q "copied through the driver's own DMA memory" /tmp/nvmfd.log; then
        why "the nvme bdev bounced I/O: $(grep -m1 "copied through" /tmp/nvmfd.log)"
        return 1
    fi
}

# --- s16: an SSD that does not answer in time: Abort, then a controller reset (issue 10) ---
# Namespace 3 answers each I/O after 7 s (null-co latency-ns, see nvme-vfio.sh); a daemon with a
# 250 ms I/O timeout on it must send an Abort (QEMU's does not abort: NVMe Base 2.0, 5.1, Abort
# is best effort), reset the controller when the command is still outstanding at 0.5 s (6.5 s of
# margin: a reactor stalled 5 s under load still resets before the SSD answers), re-create its
# queues, and fail the stuck I/O with Command Aborted due to SQ Deletion without DNR (a status
# the host retries) within seconds, never hang; namespace 1 of the same SSD keeps serving. The
# host is nvmfd-perf (userspace NVMe/TCP): the kernel's would scan namespace 3's partition
# table at connect, every read of it retried 5 times through a reset each.
SLOW_NQN=nqn.2026-11.io.nvmfd:slow
timeout_abort_reset() {
    local log=/tmp/nvmfd-slow.log pid rc=0 out t0 took errs first
    cat >/tmp/nvmfd-slow.yaml <<YAML
reactors: { count: 1 }
state_dir: /tmp/nvmfd-slow-state
rpc: { socket: /tmp/nvmfd-slow.sock }
bdevs:
  - name: ssd0
    nvme: { pci: "$BDF", namespace: 1 }
  - name: slow0
    nvme: { pci: "$BDF", namespace: 3, io_timeout_ms: 250 }
subsystems:
  - nqn: $SLOW_NQN
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: ssd0 }
      - { nsid: 3, bdev: slow0 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: 4422 }
YAML
    "$NVMFD" --config /tmp/nvmfd-slow.yaml >"$log" 2>&1 &
    pid=$!
    wait_for 60 grep -q "nvmfd started" "$log" || { why "nvmfd (slow) did not start"; cat "$log"; kill "$pid"; return 1; }
    wait_for 10 grep -q "timeout_ms=250" "$log" || { why "io_timeout_ms: 250 was not taken"; rc=1; }
    t0=$(date +%s)
    # The reset waits for QEMU to drain the slow reads (up to twice their 7 s): the host waits
    # a minute for an answer instead of nvmfd-perf's default 10 s.
    out=$(timeout 120 "$BIN/nvmfd-perf" --addr 127.0.0.1:4422 --nqn $SLOW_NQN --nsid 3 \
        --workload randread --queue-depth 4 --ios 4 --span-mib 1 --io-timeout-ms 60000 --json 2>&1)
    took=$(($(date +%s) - t0))
    errs=$(grep -o '"errors": *[0-9]*' <<<"$out" | grep -o '[0-9]*$')
    first=$(grep -o '"first_error": *"[^"]*"' <<<"$out")
    note "4 reads of namespace 3: ${errs:-?} failed after ${took} s; $first"
    ((took < 100)) || { why "reads of the stuck namespace took ${took} s"; rc=1; }
    [[ ${errs:-0} -ge 1 ]] || { why "no read failed: $out"; rc=1; }
    grep -q "sc 0x08)" <<<"$first" || { why "not Command Aborted due to SQ Deletion without DNR: $first"; rc=1; }
    grep -q "I/O command timed out; sending Abort" "$log" || { why "no Abort logged"; rc=1; }
    grep -q "aborted command still outstanding; resetting the controller" "$log" || { why "no reset after the Abort"; rc=1; }
    grep -q "controller reset done" "$log" || { why "no completed reset"; rc=1; }
    grep -q "I/O queue re-created after the controller reset" "$log" || { why "queues not re-created"; rc=1; }
    note "$(grep -c "controller reset done" "$log") controller reset(s)"
    grep -m4 -E "timed out|resetting|reset done|re-created" "$log"
    kill -0 "$pid" || { why "nvmfd died"; rc=1; }
    # Namespace 1 of the same SSD serves after the resets: written and read back, checked.
    out=$(timeout 120 "$BIN/nvmfd-perf" --addr 127.0.0.1:4422 --nqn $SLOW_NQN --nsid 1 \
        --workload randwrite --queue-depth 8 --ios 256 --span-mib 8 --verify --json 2>&1) ||
        { why "namespace 1 after the resets: $out"; rc=1; }
    errs=$(grep -o '"errors": *[0-9]*' <<<"$out" | grep -o '[0-9]*$')
    [[ ${errs:-x} == 0 ]] || { why "namespace 1 errors after the resets: $out"; rc=1; }
    grep -q "panicked" "$log" && { why "nvmfd logged a panic"; rc=1; }
    kill -TERM "$pid"
    wait "$pid" || { why "nvmfd (slow) exited $?"; tail -n 20 "$log"; rc=1; }
    cp "$log" "${RIG_OUT:-/tmp}/nvmfd-slow.log" 2>/dev/null
    return "$rc"
}

# --- s17: a controller whose reset fails must not hand back buffers the SSD may still write into
# (issue 10) ---
# The test-only NVMFD_TEST_ONLY_NVME_RESET_FAIL makes every reset of the SSD fail at once with the
# controller left enabled (as when CSTS.RDY stays 1). Namespace 3's reads (answered after 7 s)
# time out at 0.25 s and the reset at 0.5 s fails, with the reads still inside the SSD:
# - `bme`: the driver clears Bus Master Enable and reads it back before the reads fail: the
#   kernel's view of the PCI Command register (sysfs config) must show bit 2 clear;
# - `leak`: with `:no-dma-stop` every way of stopping the DMA fails (injected, the device is not
#   touched: bit 2 stays set), so the read buffers are leaked, logged at error level with the
#   BDF and the bytes.
# Both: the reads fail with 0x08 without DNR (retryable), namespace 1 of the dead SSD fails at
# once with Internal Error + DNR (never hangs), the RAM namespace of the same subsystem keeps
# serving, no panic, a clean exit.
GONE_NQN=nqn.2026-11.io.nvmfd:gone
# The PCI Command register of $1 as the kernel reads it from config space (4 hex digits).
pci_command() { od -An -tx2 -j4 -N2 "/sys/bus/pci/devices/$1/config" | tr -d ' \n'; }
reset_fails() {
    local mode=$1 log=/tmp/nvmfd-gone-$1.log pid rc=0 out errs first cmd fault=$BDF line
    [[ $mode == leak ]] && fault=$BDF:no-dma-stop
    cat >/tmp/nvmfd-gone.yaml <<YAML
reactors: { count: 1 }
state_dir: /tmp/nvmfd-gone-state
rpc: { socket: /tmp/nvmfd-gone.sock }
bdevs:
  - name: ssd0
    nvme: { pci: "$BDF", namespace: 1 }
  - name: slow0
    nvme: { pci: "$BDF", namespace: 3, io_timeout_ms: 250 }
  - name: ram0
    malloc: { size: 16MiB }
subsystems:
  - nqn: $GONE_NQN
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: ssd0 }
      - { nsid: 2, bdev: ram0 }
      - { nsid: 3, bdev: slow0 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: 4423 }
YAML
    NVMFD_TEST_ONLY_NVME_RESET_FAIL=$fault "$NVMFD" --config /tmp/nvmfd-gone.yaml >"$log" 2>&1 &
    pid=$!
    wait_for 60 grep -q "nvmfd started" "$log" || { why "nvmfd ($mode) did not start"; cat "$log"; kill "$pid"; return 1; }
    wait_for 10 grep -q "TEST-ONLY fault injection" "$log" || { why "the fault injection is not armed"; rc=1; }
    cmd=$(pci_command "$BDF")
    note "PCI Command $cmd before"
    ((0x$cmd & 4)) || { why "bus mastering is off before the reset: $cmd"; rc=1; }
    out=$(timeout 120 "$BIN/nvmfd-perf" --addr 127.0.0.1:4423 --nqn $GONE_NQN --nsid 3 \
        --workload randread --queue-depth 4 --ios 4 --span-mib 1 --json 2>&1)
    errs=$(grep -o '"errors": *[0-9]*' <<<"$out" | grep -o '[0-9]*$')
    first=$(grep -o '"first_error": *"[^"]*"' <<<"$out")
    note "4 reads of namespace 3: ${errs:-?} failed; $first"
    [[ ${errs:-0} -ge 1 ]] || { why "no read failed: $out"; rc=1; }
    grep -q "sc 0x08)" <<<"$first" || { why "not Command Aborted due to SQ Deletion without DNR: $first"; rc=1; }
    wait_for 30 grep -q "controller given up" "$log" || { why "the controller was not given up"; tail -n 20 "$log"; rc=1; }
    grep -q "controller reset failed" "$log" || { why "no failed reset logged"; rc=1; }
    grep -m3 -E "reset failed|given up|leaked" "$log"
    cmd=$(pci_command "$BDF")
    note "PCI Command $cmd after"
    if [[ $mode == bme ]]; then
        grep -q "controller given up with bus mastering off" "$log" || { why "bus mastering not reported off"; rc=1; }
        ((0x$cmd & 4)) && { why "Bus Master Enable still set: PCI Command $cmd"; rc=1; }
        grep -q "leaked" "$log" && { why "buffers leaked though the DMA was stopped"; rc=1; }
    else
        grep -q "DMA could not be stopped" "$log" || { why "no failed DMA stop reported"; rc=1; }
        ((0x$cmd & 4)) || { why "Bus Master Enable was cleared though every stop was to fail: $cmd"; rc=1; }
        wait_for 10 grep -q "leaked the data buffers" "$log" || { why "no leak logged"; rc=1; }
        line=$(grep -m1 "leaked the data buffers" "$log")
        grep -q "$BDF" <<<"$line" || { why "the leak line lacks the BDF: $line"; rc=1; }
        grep -Eq 'bytes=[1-9][0-9]*' <<<"$line" || { why "the leak line lacks the bytes: $line"; rc=1; }
        (($(grep -c "leaked the data buffers" "$log") == 1)) || { why "the leak was logged more than once at error level"; rc=1; }
    fi
    # The dead SSD's other namespace answers at once, with a status the host does not retry.
    out=$(timeout 60 "$BIN/nvmfd-perf" --addr 127.0.0.1:4423 --nqn $GONE_NQN --nsid 1 \
        --workload randread --queue-depth 4 --ios 8 --span-mib 1 --json 2>&1)
    errs=$(grep -o '"errors": *[0-9]*' <<<"$out" | grep -o '[0-9]*$')
    first=$(grep -o '"first_error": *"[^"]*"' <<<"$out")
    [[ ${errs:-0} == 8 ]] || { why "namespace 1 of the dead SSD: ${errs:-?} of 8 reads failed: $out"; rc=1; }
    grep -q "sc 0x06, dnr" <<<"$first" || { why "namespace 1 not Internal Error with DNR: $first"; rc=1; }
    # The RAM namespace of the same subsystem keeps serving: written, read back, checked.
    out=$(timeout 120 "$BIN/nvmfd-perf" --addr 127.0.0.1:4423 --nqn $GONE_NQN --nsid 2 \
        --workload randwrite --queue-depth 8 --ios 256 --span-mib 8 --verify --json 2>&1) ||
        { why "the RAM namespace next to the dead SSD: $out"; rc=1; }
    errs=$(grep -o '"errors": *[0-9]*' <<<"$out" | grep -o '[0-9]*$')
    [[ ${errs:-x} == 0 ]] || { why "RAM namespace errors next to the dead SSD: $out"; rc=1; }
    kill -0 "$pid" || { why "nvmfd died"; rc=1; }
    grep -q "panicked" "$log" && { why "nvmfd logged a panic"; rc=1; }
    kill -TERM "$pid"
    wait "$pid" || { why "nvmfd ($mode) exited $?"; tail -n 20 "$log"; rc=1; }
    cp "$log" "${RIG_OUT:-/tmp}/nvmfd-gone-$mode.log" 2>/dev/null
    return "$rc"
}

restart_keeps_data() {
    disconnect && stop_daemon && start_daemon && connect && check_pattern
}

reset_to_kernel() {
    "$NVMFD" setup --reset --pci "$BDF" || { why "setup --reset failed"; return 1; }
    [[ $(pci_driver "$BDF") == nvme ]] || { why "driver is $(pci_driver "$BDF")"; return 1; }
    wait_for 30 kernel_nsdev || { why "kernel driver made no block device"; kmsg_tail; return 1; }
    local dev
    dev=$(kernel_nsdev)
    wait_for 10 test -b "$dev" || { why "$dev missing"; return 1; }
    check_pattern "$dev"
}

# --- s18: hot-removal (issue 10): the kernel asks for the SSD back ---
# `echo 1 > /sys/bus/pci/devices/BDF/remove` (like a driver unbind or QEMU's device_del) makes
# vfio-pci signal the device request IRQ and wait until nvmfd closes the device. With a kernel
# host connected over TCP running fio on the SSD's namespace and a verifying fio on a RAM
# namespace of the same subsystem: the removal completes (bounded), nvmfd logs it with the BDF,
# the SSD's fio fails (I/O errors, no hang), the RAM namespace verifies during and after, nvmfd
# still answers RPCs and exits 0 on SIGTERM; a PCI rescan brings the SSD back and
# `nvmfd setup --pci` binds it again. Without the request IRQ the removal blocks until nvmfd
# exits (seen once: the `remove` write never returned within the bound).
RM_NQN=nqn.2026-11.io.nvmfd:remove
RM_SOCK=/tmp/nvmfd-remove.sock
# io_count DEV: reads + writes completed on block device DEV (its sysfs stat).
io_count() { awk '{ print $1 + $5 }' "/sys/block/$(basename "$1")/stat" 2>/dev/null || echo 0; }
io_flowing() { (($(io_count "$1") > $2)); }
gone() { ! kill -0 "$1" 2>/dev/null; }
hot_removal() {
    local log=/tmp/nvmfd-remove.log pid rc=0 dev1 dev2 fssd fram wpid t0 took base out i fr
    [[ $(pci_driver "$BDF") == vfio-pci ]] || "$NVMFD" setup --pci "$BDF" || { why "setup --pci failed"; return 1; }
    cat >/tmp/nvmfd-remove.yaml <<YAML
reactors: { count: 1 }
state_dir: /tmp/nvmfd-remove-state
rpc: { socket: $RM_SOCK }
bdevs:
  - name: ssd0
    nvme: { pci: "$BDF", namespace: 1 }
  - name: ram0
    malloc: { size: 64MiB }
subsystems:
  - nqn: $RM_NQN
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: ssd0 }
      - { nsid: 2, bdev: ram0 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: 4424 }
YAML
    "$NVMFD" --config /tmp/nvmfd-remove.yaml >"$log" 2>&1 &
    pid=$!
    wait_for 60 grep -q "nvmfd started" "$log" || { why "nvmfd (remove) did not start"; cat "$log"; kill "$pid"; return 1; }
    wait_for 10 grep -q "device request IRQ registered" "$log" || { why "no device request IRQ registered"; grep -m1 "no device request IRQ" "$log"; rc=1; }
    for i in 1 2 3; do
        nvme connect -t tcp -a 127.0.0.1 -s 4424 -n $RM_NQN >/dev/null && break
        ((i < 3)) || { why "nvme connect failed 3 times"; kill "$pid"; return 1; }
        sleep 2
    done
    { wait_for 30 has_nsdev $RM_NQN 2 && wait_for 30 has_nsdev $RM_NQN 1; } || { why "no namespace devices"; kill "$pid"; return 1; }
    dev1=$(nsdev_for $RM_NQN 1)
    dev2=$(nsdev_for $RM_NQN 2)
    note "SSD namespace $dev1, RAM namespace $dev2"
    base=$(io_count "$dev1")
    timeout 600 fio --name=ssd --filename="$dev1" --allow_file_create=0 --direct=1 --ioengine=libaio \
        --rw=randrw --bs=4k --size=64M --iodepth=8 --time_based --runtime=500 --eta=never \
        --output=/tmp/fio-remove-ssd.log &
    fssd=$!
    timeout 600 fio --name=ram --filename="$dev2" --allow_file_create=0 --direct=1 --ioengine=libaio \
        --rw=randwrite --bs=4k --size=16M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --verify_state_save=0 --eta=never --output=/tmp/fio-remove-ram.log &
    fram=$!
    # Removal under load: wait until the SSD's fio has I/O done (the head's I/O accounting; if
    # the kernel counts none, fio still issues I/O after the removal, which is what must fail).
    wait_for 120 io_flowing "$dev1" $((base + 64)) || note "no I/O counted on $dev1 yet; removing anyway"
    t0=$(date +%s)
    sh -c "echo 1 > /sys/bus/pci/devices/$BDF/remove" &
    wpid=$!
    if wait_for 60 gone "$wpid"; then
        took=$(($(date +%s) - t0))
        note "the removal of $BDF completed after ${took} s"
        [[ ! -e /sys/bus/pci/devices/$BDF ]] || { why "$BDF still present after its removal"; rc=1; }
    else
        why "the removal of $BDF did not complete within 60 s (nvmfd held the device)"
        dmesg | grep -m3 "Relaying device request\|blocked until\|in use" >&2
        rc=1
        kill -9 "$pid" 2>/dev/null # releases the device: the removal goes on
        wait_for 60 gone "$wpid"
    fi
    if ((rc == 0)); then
        wait_for 30 grep -q "NVMe device released to the kernel" "$log" || { why "no release logged"; tail -n 20 "$log"; rc=1; }
        grep -m3 -E "asks for the NVMe device back|given up|released to the kernel" "$log"
        out=$(grep -m1 "NVMe device released to the kernel" "$log")
        grep -q "$BDF" <<<"$out" || { why "the release line lacks the BDF: $out"; rc=1; }
        grep "asks for the NVMe device back" "$log" | grep -q "WARN" || { why "the request is not logged at warn level"; rc=1; }
    fi
    # The SSD's fio fails (errors, not a hang) once the device is gone.
    if wait_for 180 gone "$fssd"; then
        wait "$fssd"
        fr=$?
        note "fio on the removed SSD exited $fr: $(grep -m1 -o 'err=[^)]*' /tmp/fio-remove-ssd.log)"
        { ((fr != 0)) && grep -Eq 'err= *[1-9]' /tmp/fio-remove-ssd.log; } ||
            { why "fio on the removed SSD saw no error (exit $fr)"; cat /tmp/fio-remove-ssd.log; rc=1; }
    else
        why "fio on the removed SSD still runs 180 s after the removal (hang)"
        kill -9 "$fssd"
        rc=1
    fi
    # The RAM namespace verified through it, and verifies again after it.
    if wait_for 300 gone "$fram"; then
        wait "$fram" || { why "fio verify on the RAM namespace failed across the removal"; cat /tmp/fio-remove-ram.log; rc=1; }
    else
        why "fio on the RAM namespace did not finish"
        kill -9 "$fram"
        rc=1
    fi
    if ((rc == 0)); then
        timeout 300 fio --name=ram2 --filename="$dev2" --allow_file_create=0 --direct=1 --ioengine=libaio \
            --rw=randwrite --bs=4k --size=8M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
            --verify_state_save=0 --eta=never --output=/tmp/fio-remove-ram2.log ||
            { why "fio verify on the RAM namespace after the removal failed"; cat /tmp/fio-remove-ram2.log; rc=1; }
    fi
    if kill -0 "$pid" 2>/dev/null; then
        out=$(timeout 60 "$NVMFD" --rpc-socket $RM_SOCK rpc -o json bdev_get_bdevs 2>&1) || { why "nvmfd does not answer bdev_get_bdevs: $out"; rc=1; }
        { grep -Eq '"name": *"ssd0"' <<<"$out" && grep -Eq '"name": *"ram0"' <<<"$out"; } || { why "bdev_get_bdevs lacks a bdev: $out"; rc=1; }
        grep -q "panicked" "$log" && { why "nvmfd logged a panic"; rc=1; }
        # nvmfd goes first: a host's disconnect (CC.SHN) flushes every namespace, the dead SSD's
        # flush fails, nvmfd then reports CSTS.CFS instead of a finished shutdown, and the
        # kernel waits out its shutdown and admin timeouts (a minute) before it lets go.
        kill -TERM "$pid"
        wait "$pid" || { why "nvmfd (remove) exited $?"; tail -n 20 "$log"; rc=1; }
    fi
    timeout 90 nvme disconnect -n $RM_NQN >/dev/null 2>&1
    wait_for 60 no_ctrls $RM_NQN || { why "controllers left"; rc=1; }
    cp "$log" "${RIG_OUT:-/tmp}/nvmfd-remove.log" 2>/dev/null
    # A rescan brings the SSD back (on the kernel's nvme driver); setup binds it to vfio-pci again.
    echo 1 >/sys/bus/pci/rescan
    wait_for 60 test -e "/sys/bus/pci/devices/$BDF/driver" || { why "$BDF not back after a rescan"; return 1; }
    note "$BDF back after the rescan, driver $(pci_driver "$BDF")"
    "$NVMFD" setup --pci "$BDF" || { why "setup --pci after the rescan failed"; return 1; }
    [[ $(pci_driver "$BDF") == vfio-pci ]] || { why "driver after the rescan is $(pci_driver "$BDF")"; return 1; }
    return "$rc"
}

echo 1 >/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
run_step "IOMMU on (groups exist)" test -d /sys/kernel/iommu_groups/0
run_step "refused: a BDF that does not exist" refuse_unknown_bdf
run_step "refused: a device bound to another driver" refuse_other_driver
run_step "refused: unbinding an SSD with a mounted file system" refuse_mounted
run_step "uring passthrough (/dev/ngXnY, URING_CMD): fio verify, the SSD's status" passthrough
run_step "nvmfd setup --pci binds vfio-pci" setup_bind
run_step "driver self-test (host + CMB-domain buffers, 0x12 mixed, errors)" selftest
run_step "nvme bdev: CMB and host-pool buffers in place (IOVA), no bounce" bdev_cmb
run_step "nvmfd setup --hugemem reserves 2 MiB pages" hugemem
run_step "nvmfd refuses a namespace the SSD lacks" bad_namespace
run_step "nvmfd starts with the nvme bdev" start_daemon
if [[ -n $DPID ]]; then
    run_step "its DMA memory is on hugepages" daemon_uses_hugepages
    run_step "kernel nvme-tcp connects to 127.0.0.1" connect
    if [[ -n $DEV ]]; then
        run_step "fio 4k randwrite crc32c verify" fio_verify rand4k randwrite 4k 0 16M 16
        run_step "fio 128k write crc32c verify" fio_verify seq128k write 128k 16M 32M 8
        run_step "fio 1m write crc32c verify" fio_verify seq1m write 1m 64M 64M 4
        run_step "write a pattern" write_pattern
        run_step "host buffers reached by IOVA: nothing bounced" no_bounce
        run_step "a failing disk: the SSD's status reaches the host, the rest keeps serving" bad_disk_errors
        run_step "pattern survives a daemon restart" restart_keeps_data
        run_step "disconnect" disconnect
    fi
    run_step "nvmfd stops cleanly (CC.SHN, SHST)" stop_daemon
    run_step "I/O timeout: Abort, controller reset, retryable status, the rest serves" timeout_abort_reset
    run_step "reset fails: bus mastering off (read back in config space) before buffers go back" reset_fails bme
    run_step "reset fails, DMA not stoppable (injected): buffers leaked and logged, the rest serves" reset_fails leak
fi
. "$HERE/guest-p2p.sh"   # P2P placement over TCP (CMB staging, counters, `required` refused)
. "$HERE/guest-p2p-rdma.sh" # P2P over RDMA: the CMB dma-buf export, ibv_reg_dmabuf_mr, fallback
run_step "nvmfd setup --reset: the kernel driver reads the same pattern" reset_to_kernel
run_step "hot-removal: the kernel gets the SSD back from a busy nvmfd, the RAM namespace serves" hot_removal
[[ -n $DPID ]] && kill -9 "$DPID" 2>/dev/null
cp /tmp/nvmfd.log "${RIG_OUT:-/tmp}/nvmfd.log" 2>/dev/null
summary guest-nvme-vfio
