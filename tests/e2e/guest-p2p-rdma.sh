# shellcheck shell=bash
# tests/e2e/guest-p2p-rdma.sh - sourced by tests/e2e/guest-nvme-vfio.sh (INSIDE its guest, newest
# kernel, the SSD at $BDF bound to vfio-pci, no nvmfd running): the RDMA registration chain of the
# CMB for peer-to-peer (docs/p2p.md, "RDMA").
#   1. rxe0 on eth0 (soft-RoCE);
#   2. nvmfd with the nvme bdev (VFIO, 64 MiB CMB) and an RDMA listener on rxe0's address,
#      `p2p: auto`: the VFIO dma-buf export of the CMB succeeds, ibv_reg_dmabuf_mr on rxe0 is
#      refused (EOPNOTSUPP), the topology refuses a software RDMA device, and the namespace falls
#      back to host memory naming both reasons; the kernel's nvme-rdma runs fio verify=crc32c,
#      and the RDMA P2P counters (nvmfd_get_p2p per namespace and per queue pair, Prometheus
#      nvmfd_p2p_host_bytes_total) grow by exactly fio's bytes, all host memory (rxe cannot
#      import the CMB's dma-buf), no CMB bytes and no fallback (host memory was the decision);
#   3. the same with `p2p: required`: nvmfd refuses to start, both reasons in its message.
# Uses from the caller: NVMFD, BDF, run_step/why/note/wait_for and the nsdev helpers.

RP2P_NQN=nqn.2026-12.io.nvmfd:p2p-rdma
RP2P_PORT=4430
RP2P_LOG=/tmp/nvmfd-p2p-rdma.log
RP2P_ADDR=
RP2P_PID=
RP2P_SOCK=/tmp/nvmfd-p2p-rdma.sock
RP2P_METRICS=127.0.0.1:9479

rp2p_setup_rxe() {
    if ! rdma link show 2>/dev/null | grep -q rxe0; then
        rdma link add rxe0 type rxe netdev eth0 || { why "rdma link add rxe0 failed (rdma_rxe loaded?)"; return 1; }
    fi
    wait_for 10 test -e /dev/infiniband/uverbs0 || { why "no /dev/infiniband/uverbs0"; return 1; }
    [[ -e /dev/infiniband/rdma_cm ]] || { why "no /dev/infiniband/rdma_cm (rdma_ucm loaded?)"; return 1; }
    ibv_devices | grep -q rxe0 || { why "libibverbs does not see rxe0 (ibverbs-providers?)"; return 1; }
    RP2P_ADDR=$(ip -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]; exit}')
    [[ -n $RP2P_ADDR ]] || { why "eth0 has no IPv4 address"; return 1; }
    note "rxe0 on eth0, $RP2P_ADDR"
}

rp2p_config() {
    cat >/tmp/nvmfd-p2p-rdma.yaml <<YAML
reactors: { count: 1 }
state_dir: /tmp/nvmfd-p2p-rdma-state
rpc: { socket: $RP2P_SOCK }
metrics: { listen: "$RP2P_METRICS" }
bdevs:
  - name: ssd0
    nvme: { pci: "$BDF", namespace: 1 }
subsystems:
  - nqn: $RP2P_NQN
    allow_any_host: true
    p2p: $1
    namespaces:
      - { nsid: 1, bdev: ssd0 }
    listeners:
      - { transport: rdma, address: $RP2P_ADDR, port: $RP2P_PORT }
YAML
}

# The reasons both runs must name: the export worked, the MR did not, the topology refused.
rp2p_reasons() {
    local text=$1
    grep -q "ibv_reg_dmabuf_mr" <<<"$text" || { why "no ibv_reg_dmabuf_mr reason"; return 1; }
    grep -q "EOPNOTSUPP" <<<"$text" || { why "the ibv_reg_dmabuf_mr reason does not say EOPNOTSUPP"; return 1; }
    grep -q "topology_refused" <<<"$text" || { why "no topology reason"; return 1; }
}

rp2p_auto() {
    rp2p_config auto
    : >"$RP2P_LOG"
    "$NVMFD" --config /tmp/nvmfd-p2p-rdma.yaml >"$RP2P_LOG" 2>&1 &
    RP2P_PID=$!
    wait_for 60 grep -q "nvmfd started" "$RP2P_LOG" || { why "nvmfd (p2p auto) did not start"; tail -n 30 "$RP2P_LOG"; return 1; }
    local exported refused fallback
    exported=$(grep -m1 "CMB exported as a dma-buf" "$RP2P_LOG") ||
        { why "no successful VFIO dma-buf export logged"; grep -i "dma-buf\|p2p" "$RP2P_LOG"; return 1; }
    note "${exported##*INFO }"
    refused=$(grep -m1 "ibv_reg_dmabuf_mr of the CMB refused" "$RP2P_LOG") ||
        { why "no ibv_reg_dmabuf_mr refusal logged"; grep -i "p2p" "$RP2P_LOG"; return 1; }
    note "${refused:0:300}"
    # The placement decision: RDMA falls back to host memory, naming every reason.
    fallback=$(grep "over rdma: writes in host memory, reads in host memory (p2p: auto)" "$RP2P_LOG") ||
        { why "no RDMA fallback decision logged"; grep -i "p2p" "$RP2P_LOG"; return 1; }
    note "${fallback:0:400}"
    rp2p_reasons "$fallback" || return 1
}

# rp2p_get JQ: apply JQ to the nvmfd_get_p2p answer.
rp2p_get() {
    timeout 30 "$NVMFD" rpc --rpc-socket "$RP2P_SOCK" -o json nvmfd_get_p2p | jq -r "$1"
}

# The namespace's counters as one line: "host_bytes cmb_bytes fallbacks qpairs_host qpairs_cmb".
rp2p_counters() {
    rp2p_get '(.namespaces[0] | "\(.host_bytes) \(.cmb_bytes) \([.fallbacks[]] | add)") +
        " \([.qpairs[] | .host_bytes] | add // 0) \([.qpairs[] | .cmb_bytes] | add // 0)"'
}

# Two looks a second apart that agree: nothing else (the kernel's partition scan of the new
# namespace) is moving data.
rp2p_settled() {
    local a b
    a=$(rp2p_counters) && sleep 1 && b=$(rp2p_counters) && [[ -n $a && $a == "$b" ]]
}

rp2p_fio() {
    local i dev rc=0
    for i in 1 2 3; do
        nvme connect -t rdma -a "$RP2P_ADDR" -s $RP2P_PORT -n $RP2P_NQN >/dev/null && break
        ((i < 3)) || { why "nvme connect -t rdma failed 3 times"; dmesg | tail -n 10; return 1; }
        sleep 2
    done
    wait_for 20 has_nsdev $RP2P_NQN || { why "no namespace device"; nvme disconnect -n $RP2P_NQN >/dev/null; return 1; }
    dev=$(nsdev_for $RP2P_NQN)
    wait_for 30 rp2p_settled || { why "the P2P counters keep moving before fio: $(rp2p_counters)"; rc=1; }
    local before after
    before=$(rp2p_counters)
    # 4 KiB and 128 KiB writes: in-capsule data (up to in_capsule_data_size) and keyed SGLs the
    # target pulls by RDMA READ; the verify reads go out by RDMA WRITE.
    local bs log io=0
    for bs in 4k 128k; do
        log=/tmp/fio-p2p-rdma-$bs.json
        timeout 300 fio --name=p2p-rdma --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite \
            --bs=$bs --offset=300M --size=2M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
            --verify_state_save=0 --allow_file_create=0 --eta=never --output-format=json --output="$log" ||
            { why "fio ($bs) over NVMe/RDMA failed"; cat "$log"; rc=1; continue; }
        jq -r --arg bs "$bs" '.jobs[0] | "fio \($bs): error \(.error), wrote \(.write.io_bytes) B, read (verify) \(.read.io_bytes) B"' "$log"
        [[ $(jq '.jobs[0].error' "$log") == 0 ]] || { why "fio ($bs) reported errors"; rc=1; }
        io=$((io + $(jq '.jobs[0].write.io_bytes + .jobs[0].read.io_bytes' "$log")))
    done
    after=$(rp2p_counters)
    note "counters (host cmb fallbacks qpair-host qpair-cmb) before fio: $before, after: $after; fio moved $io bytes"
    local -a b a
    read -ra b <<<"$before"
    read -ra a <<<"$after"
    ((io >= 8 * MIB)) || { why "fio moved only $io bytes"; rc=1; }
    ((a[0] - b[0] == io)) || { why "host_bytes grew by $((a[0] - b[0])), fio moved $io"; rc=1; }
    ((a[1] == 0 && a[2] == 0)) || { why "cmb_bytes ${a[1]}, fallbacks ${a[2]}: rxe cannot reach the CMB, the decision was host memory"; rc=1; }
    ((a[3] - b[3] == io && a[4] == 0)) || { why "the queue pairs count ${a[3]} host bytes (${b[3]} before), ${a[4]} CMB bytes"; rc=1; }
    local m
    m=$(curl -s --max-time 30 "http://$RP2P_METRICS/metrics" | grep '^nvmfd_p2p_host_bytes_total{')
    note "$m"
    [[ ${m##* } == "${a[0]}" ]] || { why "metrics say '${m##* }', the RPC ${a[0]}"; rc=1; }
    nvme disconnect -n $RP2P_NQN >/dev/null || { why "disconnect failed"; rc=1; }
    wait_for 20 no_ctrls $RP2P_NQN || { why "controllers left"; rc=1; }
    return "$rc"
}

rp2p_stop() {
    [[ -n $RP2P_PID ]] || return 0
    kill -TERM "$RP2P_PID"
    local rc=0
    wait "$RP2P_PID" || rc=$?
    RP2P_PID=
    ((rc == 0)) || { why "nvmfd (p2p auto) exited $rc"; tail -n 20 "$RP2P_LOG"; return 1; }
}

rp2p_required() {
    rp2p_config required
    local out rc=0
    out=$(timeout 60 "$NVMFD" --config /tmp/nvmfd-p2p-rdma.yaml 2>&1) || rc=$?
    ((rc != 0 && rc != 124)) || { why "nvmfd with p2p: required exited $rc"; return 1; }
    grep -q "nvmfd started" <<<"$out" && { why "nvmfd started with p2p: required"; return 1; }
    local line
    line=$(grep -m1 "required cannot be met" <<<"$out") || { why "no refusal message"; tail -n 10 <<<"$out"; return 1; }
    note "${line:0:400}"
    rp2p_reasons "$line" || return 1
}

run_step "p2p/rdma: rxe0 on eth0" rp2p_setup_rxe
if [[ -n $RP2P_ADDR ]]; then
    run_step "p2p/rdma auto: dma-buf export succeeds, ibv_reg_dmabuf_mr refused, host fallback naming both" rp2p_auto
    if [[ -n $RP2P_PID ]]; then
        run_step "p2p/rdma auto: kernel nvme-rdma fio verify=crc32c" rp2p_fio
        run_step "p2p/rdma auto: nvmfd stops cleanly" rp2p_stop
    fi
    [[ -n $RP2P_PID ]] && kill -9 "$RP2P_PID" 2>/dev/null
    run_step "p2p/rdma required: nvmfd refuses to start, naming both reasons" rp2p_required
    cp "$RP2P_LOG" "${RIG_OUT:-/tmp}/nvmfd-p2p-rdma.log" 2>/dev/null
fi
# The topology check against this guest's emulated PCIe hierarchy (no daemon needed).
# shellcheck source=tests/e2e/guest-p2p-topology.sh
. "$HERE/guest-p2p-topology.sh"
