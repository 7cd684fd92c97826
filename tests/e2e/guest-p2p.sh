#!/usr/bin/env bash
# shellcheck shell=bash
# tests/e2e/guest-p2p.sh - sourced by tests/e2e/guest-nvme-vfio.sh (in the guest, the SSD at $BDF
# bound to vfio-pci, its 64 MiB CMB behind the emulated switch): peer-to-peer placement over
# NVMe/TCP (docs/p2p.md).
#   1. `p2p: auto`: the start-up decision stages writes in the CMB; the kernel nvme-tcp host's
#      fio verify=crc32c passes and nvmfd_get_p2p shows the written bytes went through the CMB
#      (and Prometheus nvmfd_p2p_cmb_bytes_total agrees); a pattern is written through the CMB;
#   2. `p2p: off`: the same fio passes, the counters show host memory only, and the pattern
#      written through the CMB reads back identically through the host path;
#   3. `p2p: required` on a malloc namespace stops start-up with the decision in the message.
# Uses run_step/why/note/wait_for and the nsdev helpers of lib/common.sh, $NVMFD, $BDF, $MIB.

P2P_NQN=nqn.2026-11.io.nvmfd:p2p
P2P_PORT=4422
P2P_SOCK=/tmp/nvmfd-p2p.sock
P2P_METRICS=127.0.0.1:9478
P2P_LOG=/tmp/nvmfd-p2p.log
P2P_PID=
P2P_DEV=
P2P_OFF_MIB=300

p2p_config() {
    cat >/tmp/nvmfd-p2p.yaml <<YAML
reactors: { count: 1 }
state_dir: /tmp/nvmfd-p2p-state
rpc: { socket: $P2P_SOCK }
metrics: { listen: "$P2P_METRICS" }
bdevs:
  - name: ssd0
    nvme: { pci: "$BDF", namespace: 1 }
subsystems:
  - nqn: $P2P_NQN
    allow_any_host: true
    p2p: $1
    namespaces:
      - { nsid: 1, bdev: ssd0 }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: $P2P_PORT }
YAML
}

p2p_start() {
    p2p_config "$1"
    : >"$P2P_LOG"
    "$NVMFD" --config /tmp/nvmfd-p2p.yaml >"$P2P_LOG" 2>&1 &
    P2P_PID=$!
    wait_for 60 grep -q "nvmfd started" "$P2P_LOG" ||
        { why "nvmfd (p2p: $1) did not start"; cat "$P2P_LOG"; kill "$P2P_PID"; P2P_PID=; return 1; }
    note "$(grep -m1 -o 'p2p: namespace .*' "$P2P_LOG")"
}

p2p_stop() {
    [[ -n $P2P_PID ]] || return 0
    kill -TERM "$P2P_PID"
    local rc=0
    wait "$P2P_PID" || rc=$?
    P2P_PID=
    ((rc == 0)) || { why "nvmfd exited $rc"; tail -n 20 "$P2P_LOG"; return 1; }
    note "$(grep -m1 -o 'p2p counters at shutdown.*' "$P2P_LOG")"
}

p2p_connect() {
    local i
    for i in 1 2 3; do
        nvme connect -t tcp -a 127.0.0.1 -s $P2P_PORT -n $P2P_NQN >/dev/null && break
        ((i < 3)) || { why "nvme connect failed 3 times"; return 1; }
        sleep 2
    done
    wait_for 20 has_nsdev $P2P_NQN || { why "no namespace device"; return 1; }
    P2P_DEV=$(nsdev_for $P2P_NQN)
}

p2p_disconnect() {
    nvme disconnect -n $P2P_NQN >/dev/null || { why "disconnect failed"; return 1; }
    wait_for 20 no_ctrls $P2P_NQN || { why "controllers left"; return 1; }
}

# p2p_get JQ: apply JQ to the nvmfd_get_p2p answer.
p2p_get() {
    timeout 30 "$NVMFD" rpc --rpc-socket "$P2P_SOCK" -o json nvmfd_get_p2p | jq -r "$1"
}

p2p_fio() {
    local log=/tmp/fio-p2p-$1.log
    # 128 KiB writes: more than the 8 KiB in-capsule size, so the data comes by R2T/H2CData.
    timeout 600 fio --name="p2p-$1" --filename="$P2P_DEV" --direct=1 --ioengine=libaio \
        --rw=randwrite --bs="$2" --size="$3" --iodepth=8 \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
        --allow_file_create=0 --eta=never --output="$log" ||
        { why "fio ($1) failed"; cat "$log"; return 1; }
    grep -q 'err= 0' "$log" || { why "fio ($1) reported errors"; cat "$log"; return 1; }
    grep -E '^ *(read|write):' "$log"
}

p2p_auto() {
    p2p_start auto || return 1
    local w
    w=$(p2p_get '.decisions[0].writes.memory')
    [[ $w == cmb ]] || { why "decision for p2p: auto is writes in '$w', want cmb: $(p2p_get '.decisions[0]')"; return 1; }
    p2p_connect || return 1
    p2p_fio auto 128k 8M || return 1
    # 4 KiB writes ride in the capsule: moved into the CMB at fetch.
    p2p_fio auto4k 4k 2M || return 1
    head -c $((4 * MIB)) /dev/urandom >/tmp/p2p-pattern
    dd if=/tmp/p2p-pattern of="$P2P_DEV" bs=1M seek=$P2P_OFF_MIB oflag=direct conv=fsync,notrunc status=none ||
        { why "dd write failed"; return 1; }
    local cmb host exhausted qp
    cmb=$(p2p_get '.namespaces[0].cmb_bytes')
    host=$(p2p_get '.namespaces[0].host_bytes')
    exhausted=$(p2p_get '.namespaces[0].fallbacks.cmb_pool_exhausted')
    qp=$(p2p_get '[.qpairs[] | .cmb_bytes] | add')
    note "counters: cmb_bytes=$cmb host_bytes=$host fallback_exhausted=$exhausted (queue pairs: cmb_bytes=$qp)"
    # fio wrote 8 + 2 MiB (and read them back: host memory), dd 4 MiB: at least 14 MiB through
    # the CMB unless the pool ran out.
    ((cmb >= 14 * MIB || (cmb > 0 && exhausted > 0))) || { why "only $cmb bytes went through the CMB"; return 1; }
    ((host >= 10 * MIB)) || { why "reads ($host bytes) should be in host memory"; return 1; }
    ((qp == cmb)) || { why "queue pairs count $qp CMB bytes, the namespace $cmb"; return 1; }
    local m
    m=$(curl -s --max-time 30 "http://$P2P_METRICS/metrics" | grep '^nvmfd_p2p_cmb_bytes_total{')
    note "$m"
    [[ ${m##* } == "$cmb" ]] || { why "metrics say '${m##* }', the RPC $cmb"; return 1; }
    p2p_disconnect && p2p_stop
}

p2p_off() {
    p2p_start off || return 1
    local w
    w=$(p2p_get '.decisions[0].writes.memory + " " + .decisions[0].reasons[0].rule')
    [[ $w == "host p2p_off" ]] || { why "decision for p2p: off is '$w'"; return 1; }
    p2p_connect || return 1
    dd if="$P2P_DEV" of=/tmp/p2p-back bs=1M skip=$P2P_OFF_MIB count=4 iflag=direct status=none ||
        { why "dd read failed"; return 1; }
    cmp -s /tmp/p2p-pattern /tmp/p2p-back || { why "the pattern written through the CMB reads back differently"; return 1; }
    p2p_fio off 128k 8M || return 1
    local cmb host
    cmb=$(p2p_get '.namespaces[0].cmb_bytes')
    host=$(p2p_get '.namespaces[0].host_bytes')
    note "counters: cmb_bytes=$cmb host_bytes=$host"
    ((cmb == 0)) || { why "$cmb bytes went through the CMB with p2p: off"; return 1; }
    # dd read 4 MiB, fio wrote 8 MiB and read them back.
    ((host >= 20 * MIB)) || { why "only $host bytes counted in host memory"; return 1; }
    p2p_disconnect && p2p_stop
}

p2p_required_refused() {
    cat >/tmp/nvmfd-p2p-req.yaml <<YAML
reactors: { count: 1 }
state_dir: /tmp/nvmfd-p2p-state
rpc: { socket: /tmp/nvmfd-p2p-req.sock }
bdevs:
  - { name: ram0, malloc: { size: 16MiB } }
subsystems:
  - nqn: $P2P_NQN
    allow_any_host: true
    namespaces:
      - { nsid: 1, bdev: ram0, p2p: required }
    listeners:
      - { transport: tcp, address: 127.0.0.1, port: $P2P_PORT }
YAML
    local out rc=0
    out=$(timeout 60 "$NVMFD" --config /tmp/nvmfd-p2p-req.yaml 2>&1) || rc=$?
    ((rc != 0)) || { why "nvmfd started with p2p: required on a malloc bdev"; return 1; }
    grep -q "p2p: required cannot be met" <<<"$out" || { why "unclear message: $out"; return 1; }
    grep -q "\[bdev_not_nvme\]" <<<"$out" || { why "no reason in the message: $out"; return 1; }
    note "$(grep -o 'p2p: required cannot be met.*' <<<"$out" | head -c 300)"
}

# After a failed step: no controller or daemon left for the next one.
p2p_cleanup() {
    [[ -n $P2P_PID ]] || return 0
    nvme disconnect -n $P2P_NQN >/dev/null 2>&1
    kill -9 "$P2P_PID" 2>/dev/null
    wait "$P2P_PID" 2>/dev/null
    P2P_PID=
}

run_step "p2p: auto stages TCP writes in the CMB (fio verify, counters, metrics)" p2p_auto
p2p_cleanup
run_step "p2p: off keeps data in host memory; CMB-written data reads back the same" p2p_off
p2p_cleanup
run_step "p2p: required on a malloc namespace stops start-up with the decision" p2p_required_refused
cp "$P2P_LOG" "${RIG_OUT:-/tmp}/nvmfd-p2p.log" 2>/dev/null
