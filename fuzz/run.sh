#!/usr/bin/env bash
# fuzz/run.sh - run the cargo-fuzz targets (needs a nightly toolchain and `cargo install cargo-fuzz`):
#
#   fuzz/run.sh TARGET SECONDS [LIBFUZZER_ARGS...]   one target
#   fuzz/run.sh all SECONDS                          every target, one after the other
#
# Targets: pdu tcp_conn capsule discovery yaml (`cargo fuzz list`). The committed seed corpus
# fuzz/corpus/TARGET is read but never written: new inputs go to build/fuzz/corpus/TARGET, crashes
# to build/fuzz/artifacts/TARGET. A crash becomes a regression test by copying its input to
# fuzz/corpus/TARGET/crash-NAME (the stable tests replay every file there) and fixing the bug.
# Built without a sanitizer (the code under test is safe Rust; the few `unsafe` blocks of
# bdev's IoBuf are not reached with other than checked lengths), with debug assertions and
# overflow checks on, as cargo fuzz does by default.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
TARGETS=(pdu tcp_conn capsule discovery yaml)

usage() {
    sed -n '2,7p' "$0" >&2
    exit 2
}
(($# >= 2)) || usage
target=$1
secs=$2
shift 2
[[ $secs =~ ^[0-9]+$ ]] || usage

run_one() {
    local t=$1
    shift
    local work=build/fuzz/corpus/$t art=build/fuzz/artifacts/$t
    mkdir -p "$work" "$art"
    echo "=== fuzz $t for ${secs}s"
    cargo +nightly fuzz run "$t" --features libfuzzer --sanitizer none \
        --target-dir build/fuzz/target "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -artifact_prefix="$art/" -print_final_stats=1 "$@"
}

if [[ $target == all ]]; then
    for t in "${TARGETS[@]}"; do
        run_one "$t" "$@"
    done
else
    [[ " ${TARGETS[*]} " == *" $target "* ]] || { echo "unknown target $target" >&2; usage; }
    run_one "$target" "$@"
fi
