#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# tests/e2e/kernel-nvmet-selftest.sh - prove the rig: the kernel's own NVMe/TCP target (nvmet) and
# initiator (nvme-tcp) talk to each other inside the guest. This checks the rig (modules, configfs,
# nvme-cli, fio, network), not nvmfd. Runs INSIDE the guest:
#
#   deploy/rig/run-guest.sh tests/e2e/kernel-nvmet-selftest.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/kernel-nvmet.sh
. "$HERE/lib/kernel-nvmet.sh"

[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me in the guest: deploy/rig/run-guest.sh $0" >&2; exit 2; }

NQN=nqn.2026-11.io.nvmfd:rig-selftest
ADDR=127.0.0.1
PORT=4420
DEV=

setup_target() {
    local nullb
    nullb=$(knvmet_nullb selftest0 64) || { why "null_blk configfs device"; return 1; }
    knvmet_subsys "$NQN" rig-selftest RIGSELF0001 1 || { why "nvmet subsystem"; return 1; }
    knvmet_ns "$NQN" 1 "$nullb" || { why "nvmet namespace on $nullb"; return 1; }
    knvmet_port 1 tcp "$ADDR" "$PORT" "$NQN" || { why "nvmet tcp port"; return 1; }
}

discover() {
    local out
    out=$(nvme discover -t tcp -a "$ADDR" -s "$PORT") || { why "nvme discover failed"; return 1; }
    grep -q "subnqn: *$NQN\$" <<<"$out" || { why "discovery log lacks $NQN"; echo "$out"; return 1; }
}

connect() {
    nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" || { why "nvme connect failed"; return 1; }
    wait_for 20 has_nsdev "$NQN" || { why "no namespace block device after 20s"; return 1; }
    DEV=$(nsdev_for "$NQN")
    note "namespace: $DEV"
}

list() {
    local out
    out=$(nvme list) || { why "nvme list failed"; return 1; }
    echo "$out"
    grep -q "^$DEV .*RIGSELF0001 .*rig-selftest" <<<"$out" || { why "$DEV not listed"; return 1; }
}

fio_verify() {
    fio --name=selftest --filename="$DEV" --allow_file_create=0 \
        --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
        --size=16M --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --verify_state_save=0 --eta=never --output=/tmp/fio-selftest.log ||
        { why "fio failed"; cat /tmp/fio-selftest.log; return 1; }
    grep -E '^ *(read|write):' /tmp/fio-selftest.log
}

disconnect() {
    nvme disconnect -n "$NQN" || { why "nvme disconnect failed"; return 1; }
    wait_for 20 no_ctrls "$NQN" || { why "controller still present"; return 1; }
}

run_step "kernel nvmet: configure target on $ADDR:$PORT" setup_target
run_step "nvme discover" discover
run_step "nvme connect" connect
run_step "nvme list" list
run_step "fio 4k randwrite --verify=crc32c" fio_verify
run_step "nvme disconnect" disconnect
summary "rig selftest"
