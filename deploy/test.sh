#!/usr/bin/env bash
# deploy/test.sh - the project's one test command (CI runs it through .ci/run):
#
#   bash deploy/test.sh
#
# Steps, each under a time limit; all run even when one fails (those that need a binary are
# skipped when the build failed), and a summary with durations ends the output:
#   rig setup (deploy/rig/setup.sh) · shellcheck of the test scripts · cargo build --release ·
#   cargo test --release · cargo fmt --check · cargo clippy · rdma (on soft-RoCE in the guest,
#   one boot per kernel: the verbs layer's ping-pong, then nvmfd over NVMe/RDMA with the kernel's
#   nvme-rdma host, tests/e2e/guest-rdma-all.sh) · rpc (tests/rpc/run.sh: SPDK's Python client
#   from PyPI against build/release/nvmfd) · nvme-vfio (tests/e2e/nvme-vfio.sh: the userspace
#   VFIO NVMe driver on an emulated SSD with a CMB behind a PCIe switch, exported over NVMe/TCP,
#   Debian 12's kernel) · then for each guest kernel the rig set up
#   (Debian 12's 6.1 and Debian unstable's newest, 7.2 when written): rig self-test (kernel nvmet
#   in the guest) and e2e (tests/e2e/run.sh against build/release/nvmfd), named after the
#   kernel's version: selftest-6.1, e2e-6.1, selftest-7.2, e2e-7.2
#
# Environment: TEST_SKIP="selftest clippy ..." skips steps by name (rig, shell, build, test, fmt,
# clippy, rdma, rpc, nvme-vfio, selftest-VER, e2e-VER; "selftest" and "e2e" skip them for every kernel). Exit
# code 0 only if every step that ran passed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# rustup installs cargo here; a login shell would have it on PATH, CI's may not.
if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
    PATH=$HOME/.cargo/bin:$PATH
fi

SKIP=" ${TEST_SKIP:-} "
results=()
failed=0
build_ok=1
t0=$(date +%s)
# Each step's output is also kept in build/test-logs/NAME.log; the summary repeats the failing
# checks of failed steps so that they are in the last lines of a long run.
LOGS=$REPO/build/test-logs
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log

# step NAME LIMIT_SECS CMD...: run one step, record its outcome and duration.
step() {
    local name=$1 limit=$2 start rc=0 cmd
    shift 2
    cmd=$*
    cmd=${cmd//$'\n'/ }
    ((${#cmd} <= 70)) || cmd="${cmd:0:67}..."
    if [[ $SKIP == *" $name "* || $SKIP == *" ${name%%-*} "* ]]; then
        results+=("$(printf '%-12s %-5s %5s  %s' "$name" SKIP - "$cmd")")
        return 0
    fi
    echo
    echo "=== [$name] $* (limit ${limit}s)"
    start=$(date +%s)
    timeout -k 30 "$limit" "$@" > >(tee "$LOGS/$name.log") 2>&1 || rc=$?
    local took=$(($(date +%s) - start))
    if ((rc == 0)); then
        results+=("$(printf '%-12s %-5s %4ss  %s' "$name" PASS "$took" "$cmd")")
    else
        ((rc == 124)) && echo "=== [$name] timed out after ${limit}s"
        results+=("$(printf '%-12s %-5s %4ss  %s (exit %d)' "$name" FAIL "$took" "$cmd" "$rc")")
        failed=$((failed + 1))
    fi
    echo "=== [$name] exit $rc after ${took}s"
    return "$rc"
}

step rig 1800 deploy/rig/setup.sh || true
if command -v shellcheck >/dev/null; then
    step shell 300 shellcheck -x deploy/test.sh .ci/run deploy/rig/*.sh tests/e2e/*.sh tests/e2e/lib/*.sh tests/rpc/*.sh bench/*.sh fuzz/*.sh || true
else
    results+=("$(printf '%-12s %-5s %5s  %s' shell SKIP - "shellcheck is not installed")")
fi
step build 1800 cargo build --release --workspace || build_ok=0
step test 1800 cargo test --release --workspace || true
step fmt 300 cargo fmt --check || true
step clippy 1800 cargo clippy --all-targets -- -D warnings || true
if ((build_ok)); then
    # shellcheck disable=SC2016  # $k and $rc belong to the inner shell
    # The examples are built for the whole workspace (as cargo test built them): per-package
    # builds resolve features differently and rebuild much of the tree. `--examples` alone
    # builds no binary: `--bins` too, so the guest never runs a stale nvmfd.
    step rdma 2400 bash -c 'cargo build --release --workspace --bins --examples || exit 1
        rc=0
        for k in stable newest; do
            deploy/rig/run-guest.sh --kernel "$k" --timeout 900 tests/e2e/guest-rdma-all.sh || rc=1
        done
        exit "$rc"' || true
else
    results+=("$(printf '%-12s %-5s %5s  %s' rdma SKIP - "no binary: the build failed")")
fi
if ((build_ok)); then
    step rpc 600 tests/rpc/run.sh build/release/nvmfd || true
else
    results+=("$(printf '%-12s %-5s %5s  %s' rpc SKIP - "no binary: the build failed")")
fi
if ((build_ok)); then
    step nvme-vfio 1650 env NVMFD_BIN_DIR=build/release tests/e2e/nvme-vfio.sh || true
else
    results+=("$(printf '%-12s %-5s %5s  %s' nvme-vfio SKIP - "no binary: the build failed")")
fi
# Each kernel the rig sets up (deploy/rig/setup.sh: labels stable and newest), named by its
# major.minor version when the rig knows it (a kernel that failed to set up keeps its label, and
# its steps fail in run-guest.sh).
for label in stable newest; do
    kver=$(sed -n 's/^KVER=//p' "${RIG_CACHE:-deploy/rig/.cache}/rig-$label.env" 2>/dev/null || true)
    ver=$(grep -oE '^[0-9]+\.[0-9]+' <<<"$kver" || true)
    ver=${ver:-$label}
    step "selftest-$ver" 600 deploy/rig/run-guest.sh --kernel "$label" --timeout 540 \
        tests/e2e/kernel-nvmet-selftest.sh || true
    if ((build_ok)); then
        step "e2e-$ver" 1500 tests/e2e/run.sh --kernel "$label" build/release/nvmfd || true
    else
        results+=("$(printf '%-12s %-5s %5s  %s' "e2e-$ver" SKIP - "no binary: the build failed")")
    fi
done

echo
echo "=== summary ($(($(date +%s) - t0))s in all)"
printf '  %s\n' "${results[@]}"
if ((failed)); then
    for r in "${results[@]}"; do
        read -r name outcome _ <<<"$r"
        [[ $outcome == FAIL && -f $LOGS/$name.log ]] || continue
        echo "=== [$name] failed; its failing lines (whole output: build/test-logs/$name.log):"
        # Lines that report a failure, minus those of negative tests that expect one; the log's
        # last lines when none does.
        lines=$(grep -aE 'FAIL|ERROR|^error|panicked|timed out' "$LOGS/$name.log" |
            grep -avE '\(expected\)|PASS|^ *\|' | tail -n 25 || true)
        [[ -n $lines ]] || lines=$(tail -n 15 "$LOGS/$name.log")
        while IFS= read -r l; do echo "    $l"; done <<<"$lines"
    done
    echo "deploy/test.sh: $failed step(s) FAILED"
    exit 1
fi
echo "deploy/test.sh: all steps passed"
