#!/usr/bin/env bash
# tests/rpc/run.sh NVMFD_BINARY - SPDK's own Python client (the `spdk` package from PyPI) against
# a running nvmfd on 127.0.0.1: its JSONRPCClient module and its `spdk-rpc` command line, plus
# `nvmfd rpc save-config` → `nvmfd check-config` → restart from the saved file, and live changes
# made with SPDK's client that the in-repo host (nvmfd-perf --verify) then uses.
#
# The package is installed into a virtualenv under build/ (reused when present). When PyPI is
# unreachable this fails with a clear message instead of testing nothing.
set -euo pipefail

NVMFD=$(realpath "${1:?usage: tests/rpc/run.sh path/to/nvmfd}")
# The in-repo host (nvmfd-perf, built next to nvmfd) does verified I/O through what the RPC
# methods create.
PERF=${PERF:-$(dirname "$NVMFD")/nvmfd-perf}
[[ -x $PERF ]] || { echo "tests/rpc: no nvmfd-perf next to $NVMFD (cargo build -p nvmfd-bench)" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${RPC_VENV:-$REPO/build/rpc-venv}
SPDK_PKG=${SPDK_PKG:-spdk}

if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import spdk.rpc.client' 2>/dev/null; then
    python3 -m venv "$VENV"
    if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check --timeout 30 "$SPDK_PKG"; then
        echo "tests/rpc: cannot install the '$SPDK_PKG' package from PyPI (offline?); this test needs it" >&2
        exit 1
    fi
fi

WORK=$(mktemp -d)
PID=
cleanup() {
    if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

PORT=$(free_port)
SOCK=$WORK/nvmfd.sock
cat >"$WORK/target.yaml" <<YAML
reactors: { cores: [0], idle_sleep_us: 100 }
bdevs:
  - { name: ram0, malloc: { size: 16MiB } }
  - { name: ram1, malloc: { size: 8MiB, block_size: 512 } }
subsystems:
  - nqn: nqn.2026-11.io.nvmfd:rpc-py
    serial: PY0001
    model: nvmfd-rpc-test
    namespaces:
      - { nsid: 1, bdev: ram0, uuid: 3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10 }
    listeners: [ { address: 127.0.0.1, port: $PORT } ]
  - nqn: nqn.2026-11.io.nvmfd:rpc-py-locked
    hosts: [ nqn.2014-08.org.nvmexpress:uuid:0a0a0a0a-0000-4000-8000-0000000000aa ]
    namespaces: [ { bdev: ram1 } ]
    listeners: [ { address: 127.0.0.1, port: $PORT } ]
state_dir: $WORK/state
rpc: { socket: $SOCK }
YAML

start() {
    "$NVMFD" --config "$1" >"$WORK/nvmfd.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        [[ -S $SOCK ]] && return 0
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "tests/rpc: nvmfd did not create $SOCK" >&2
    cat "$WORK/nvmfd.log" >&2
    return 1
}
stop() {
    kill -TERM "$PID"
    wait "$PID" || true
    PID=
}

start "$WORK/target.yaml"
PORT=$PORT PORT2=$(free_port) SOCK=$SOCK NVMFD=$NVMFD PERF=$PERF WORK=$WORK "$VENV/bin/python" "$HERE/test_spdk_client.py"

# save-config through nvmfd's own CLI, validated, and the daemon restarted from it: the state
# SPDK's client reads back is the same.
"$NVMFD" rpc --rpc-socket "$SOCK" save-config >"$WORK/saved.yaml"
"$NVMFD" check-config "$WORK/saved.yaml"
"$VENV/bin/spdk-rpc" -s "$SOCK" nvmf_get_subsystems >"$WORK/before.json"
"$VENV/bin/spdk-rpc" -s "$SOCK" bdev_get_bdevs >"$WORK/bdevs-before.json"
stop
[[ ! -e $SOCK ]] || { echo "tests/rpc: socket left behind after shutdown" >&2; exit 1; }
start "$WORK/saved.yaml"
"$VENV/bin/spdk-rpc" -s "$SOCK" nvmf_get_subsystems >"$WORK/after.json"
"$VENV/bin/spdk-rpc" -s "$SOCK" bdev_get_bdevs >"$WORK/bdevs-after.json"
diff -u "$WORK/before.json" "$WORK/after.json"
diff -u "$WORK/bdevs-before.json" "$WORK/bdevs-after.json"
"$NVMFD" rpc --rpc-socket "$SOCK" save_config >"$WORK/saved2.yaml"
diff -u "$WORK/saved.yaml" "$WORK/saved2.yaml"
stop
echo "tests/rpc: save-config round trip: same subsystems, bdevs and saved text after a restart"

# SIGHUP re-reads the file the daemon was started with and applies the difference live; a bad
# file is reported with file:line:column and changes nothing.
nsids() {
    "$VENV/bin/spdk-rpc" -s "$SOCK" nvmf_get_subsystems nqn.2026-11.io.nvmfd:rpc-py-locked |
        python3 -c 'import json,sys; print(" ".join(str(n["nsid"]) for n in json.load(sys.stdin)[0]["namespaces"]))'
}
wait_nsids() {
    for _ in $(seq 50); do
        [[ $(nsids) == "$1" ]] && return 0
        sleep 0.1
    done
    echo "tests/rpc: after SIGHUP the locked subsystem has namespaces '$(nsids)', expected '$1'" >&2
    tail -20 "$WORK/nvmfd.log" >&2
    return 1
}
cp "$WORK/target.yaml" "$WORK/live.yaml"
start "$WORK/live.yaml"
[[ $(nsids) == "1" ]]
python3 - "$WORK/live.yaml" <<'PY'
import sys
p = sys.argv[1]
t = open(p).read()
t = t.replace("  - { name: ram1,", "  - { name: ram2, null: { size: 4MiB } }\n  - { name: ram1,")
t = t.replace("    namespaces: [ { bdev: ram1 } ]", "    namespaces: [ { bdev: ram1 }, { nsid: 5, bdev: ram2 } ]")
open(p, "w").write(t)
PY
kill -HUP "$PID"
wait_nsids "1 5"
"$VENV/bin/spdk-rpc" -s "$SOCK" bdev_get_bdevs -b ram2 >/dev/null
# A bad value: the error names the file, line and column; nothing changes.
sed -i 's/{ nsid: 5, bdev: ram2 }/{ nsid: 5, bdev: ram9 }/' "$WORK/live.yaml"
kill -HUP "$PID"
for _ in $(seq 50); do
    grep -q "SIGHUP: the configuration file is not valid" "$WORK/nvmfd.log" && break
    sleep 0.1
done
line=$(grep -n 'bdev: ram9' "$WORK/live.yaml" | cut -d: -f1)
grep -qE "live\.yaml:$line:[0-9]+: subsystems\[1\]\.namespaces\[1\]\.bdev: no bdev named" "$WORK/nvmfd.log" || {
    echo "tests/rpc: the bad file was not reported with file:line:column" >&2
    tail -20 "$WORK/nvmfd.log" >&2
    exit 1
}
[[ $(nsids) == "1 5" ]]
# Back to the first file: the namespace and its bdev go again.
cp "$WORK/target.yaml" "$WORK/live.yaml"
kill -HUP "$PID"
wait_nsids "1"
if "$VENV/bin/spdk-rpc" -s "$SOCK" bdev_get_bdevs -b ram2 >/dev/null 2>&1; then
    echo "tests/rpc: ram2 still exists after SIGHUP removed it" >&2
    exit 1
fi
stop
echo "tests/rpc: SIGHUP applies the file's changes live; a bad file is reported with its location and changes nothing"
