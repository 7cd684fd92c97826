#!/usr/bin/env bash
# tests/e2e/guest-rdma-all.sh - the rdma step of deploy/test.sh in one guest boot: the verbs
# layer's ping-pong (guest-rdma-pingpong.sh, which also sets up rxe0), then nvmfd's NVMe/RDMA
# transport against the kernel's nvme-rdma host (guest-rdma.sh) on the same rxe0. Runs INSIDE
# the guest:
#
#   deploy/rig/run-guest.sh [--kernel stable|newest] tests/e2e/guest-rdma-all.sh [PINGPONG_BIN [NVMFD_BIN [PROBE_BIN]]]
#
# Exit code 0 only if both passed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[[ ${RIG_GUEST:-} == 1 ]] || { echo "run me in the guest: deploy/rig/run-guest.sh $0" >&2; exit 2; }
PINGPONG=${1:-$REPO/build/release/examples/rdma_pingpong}
NVMFD=${2:-$REPO/build/release/nvmfd}
PROBE=${3:-$REPO/build/release/examples/rdma_bad_connect}
rc=0
"$HERE/guest-rdma-pingpong.sh" "$PINGPONG" "$NVMFD" || rc=1
RDMA_SKIP_RXE=1 "$HERE/guest-rdma.sh" "$NVMFD" "$PROBE" || rc=1
exit "$rc"
