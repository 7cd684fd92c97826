"""SPDK's Python client (spdk.rpc.client.JSONRPCClient and the spdk-rpc CLI) against nvmfd.

Run by tests/rpc/run.sh with PORT, SOCK, NVMFD and WORK set and a daemon serving SOCK.
Prints one line per check and closes with 'N passed, N failed'.
"""
import json
import os
import socket
import subprocess
import sys
import threading

from spdk.rpc.client import JSONRPCClient, JSONRPCException

SOCK = os.environ["SOCK"]
PORT = os.environ["PORT"]
NVMFD = os.environ["NVMFD"]
PERF = os.environ["PERF"]
SPDK_RPC = os.path.join(os.path.dirname(sys.executable), "spdk-rpc")
NQN = "nqn.2026-11.io.nvmfd:rpc-py"
LOCKED = "nqn.2026-11.io.nvmfd:rpc-py-locked"

results = []


def check(name):
    def wrap(f):
        try:
            f()
            results.append((name, None))
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            results.append((name, e))
            print(f"FAIL {name}: {e!r}")
        return f
    return wrap


def client():
    return JSONRPCClient(SOCK, timeout=10.0)


def rpc_error(c, method, **params):
    """The JSON-RPC error object the call got (it must fail)."""
    try:
        c.call(method, params)
    except JSONRPCException as e:
        text = e.message
        body = text[text.index("response:") + len("response:"):]
        return json.loads(body)
    raise AssertionError(f"{method} succeeded")


@check("spdk_get_version answers nvmfd's version")
def _():
    with client() as c:
        v = c.spdk_get_version()
    assert v["version"].startswith("nvmfd v"), v
    assert set(v["fields"]) == {"major", "minor", "patch", "suffix"}, v


@check("rpc_get_methods lists the served methods")
def _():
    with client() as c:
        m = c.rpc_get_methods(current=True)
    for name in ("spdk_get_version", "framework_get_reactors", "bdev_get_bdevs",
                 "nvmf_get_transports", "nvmf_get_subsystems",
                 "nvmf_subsystem_get_controllers", "save_config"):
        assert name in m, (name, m)


@check("framework_get_reactors: one reactor on core 0")
def _():
    with client() as c:
        r = c.framework_get_reactors()
    assert [x["lcore"] for x in r["reactors"]] == [0], r


@check("bdev_get_bdevs: names, sizes, the namespace UUID")
def _():
    with client() as c:
        b = c.bdev_get_bdevs()
        one = c.bdev_get_bdevs(name="ram1")
        err = rpc_error(c, "bdev_get_bdevs", name="missing")
    assert [(x["name"], x["block_size"], x["num_blocks"]) for x in b] == \
        [("ram0", 4096, 4096), ("ram1", 512, 16384)], b
    assert b[0]["uuid"] == "3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10", b[0]
    assert [x["name"] for x in one] == ["ram1"], one
    assert err["code"] == -19, err


@check("nvmf_get_transports: TCP")
def _():
    with client() as c:
        t = c.nvmf_get_transports()
    assert [x["trtype"] for x in t] == ["TCP"], t
    assert t[0]["max_io_size"] == 131072, t


@check("nvmf_get_subsystems: discovery and both subsystems, SPDK's shape")
def _():
    with client() as c:
        s = c.nvmf_get_subsystems()
        one = c.nvmf_get_subsystems(nqn=LOCKED)
    assert [x["nqn"] for x in s] == ["nqn.2014-08.org.nvmexpress.discovery", NQN, LOCKED], s
    a = s[1]
    assert a["subtype"] == "NVMe" and a["serial_number"] == "PY0001", a
    assert a["model_number"] == "nvmfd-rpc-test" and a["allow_any_host"] is True, a
    assert a["listen_addresses"] == [{"trtype": "TCP", "adrfam": "IPv4",
                                      "traddr": "127.0.0.1", "trsvcid": PORT}], a
    ns = a["namespaces"]
    assert [(n["nsid"], n["bdev_name"], n["uuid"]) for n in ns] == \
        [(1, "ram0", "3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10")], ns
    assert len(ns[0]["nguid"]) == 32, ns
    assert one[0]["allow_any_host"] is False, one
    assert one[0]["hosts"] == [{"nqn": "nqn.2014-08.org.nvmexpress:uuid:0a0a0a0a-0000-4000-8000-0000000000aa"}], one


@check("nvmf_subsystem_get_controllers: none connected")
def _():
    with client() as c:
        assert c.nvmf_subsystem_get_controllers(nqn=NQN) == []
        assert rpc_error(c, "nvmf_subsystem_get_controllers", nqn="nqn.x:none")["code"] == -32602


@check("unknown method: Method not found (-32601)")
def _():
    with client() as c:
        e = rpc_error(c, "bdev_lvol_create_lvstore", bdev_name="ram0", lvs_name="x")
    assert e == {"code": -32601, "message": "Method not found"}, e


@check("mutating methods refuse bad input clearly and change nothing")
def _():
    with client() as c:
        before = c.call("save_config")
        errs = [
            rpc_error(c, "nvmf_create_subsystem"),
            rpc_error(c, "nvmf_create_subsystem", nqn=NQN),
            rpc_error(c, "bdev_malloc_create", name="x", num_blocks="8", block_size=4096),
            rpc_error(c, "nvmf_subsystem_add_ns", nqn="nqn.2026-11.io.nvmfd:none",
                      namespace={"bdev_name": "ram0"}),
            rpc_error(c, "nvmf_subsystem_add_ns", nqn=NQN, namespace={"bdev_name": "nope"}),
            rpc_error(c, "nvmf_subsystem_add_ns", nqn=LOCKED,
                      namespace={"bdev_name": "ram0", "nsid": 1}),
            rpc_error(c, "bdev_malloc_delete", name="ram0"),
        ]
        after = c.call("save_config")
    assert [e["code"] for e in errs] == [-32602, -32603, -32602, -32602, -19, -32602, -16], errs
    assert "in use by namespace 1" in errs[-1]["message"], errs[-1]
    assert after == before


@check("spdk-rpc CLI: nvmf_get_subsystems NQN and spdk_get_version")
def _():
    out = subprocess.run([SPDK_RPC, "-s", SOCK, "nvmf_get_subsystems", NQN],
                         check=True, capture_output=True, text=True).stdout
    s = json.loads(out)
    assert [x["nqn"] for x in s] == [NQN], s
    out = subprocess.run([SPDK_RPC, "-s", SOCK, "spdk_get_version"],
                         check=True, capture_output=True, text=True).stdout
    assert "nvmfd v" in out, out
    r = subprocess.run([SPDK_RPC, "-s", SOCK, "bdev_malloc_delete", "ram0"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "-16" in r.stdout + r.stderr, r


@check("spdk-rpc CLI: every mutating command changes the running target, and back")
def _():
    n = "nqn.2026-11.io.nvmfd:cli2"
    with client() as c:
        before = c.call("save_config")
    for cmd in (["bdev_malloc_create", "-b", "m9", "8", "4096"],
                ["bdev_null_create", "n9", "8", "4096"],
                ["nvmf_create_subsystem", n, "-s", "S1", "-i", "5", "-I", "9"],
                ["nvmf_subsystem_add_ns", n, "m9", "-n", "7"],
                ["nvmf_subsystem_add_ns", n, "n9"],
                ["nvmf_subsystem_add_listener", n, "-t", "tcp", "-a", "127.0.0.1", "-s", PORT],
                ["nvmf_subsystem_add_host", n, "nqn.2014-08.h:9"]):
        r = subprocess.run([SPDK_RPC, "-s", SOCK] + cmd, capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stdout + r.stderr)
    with client() as c:
        s = c.nvmf_get_subsystems(nqn=n)[0]
        bdevs = [b["name"] for b in c.bdev_get_bdevs()]
        # nvmfd's configuration rule: an allow-list and "any host" do not go together.
        e = rpc_error(c, "nvmf_subsystem_allow_any_host", nqn=n, allow_any_host=True)
    assert (s["min_cntlid"], s["max_cntlid"], s["serial_number"]) == (5, 9, "S1"), s
    assert [(x["nsid"], x["bdev_name"]) for x in s["namespaces"]] == [(1, "n9"), (7, "m9")], s
    assert s["hosts"] == [{"nqn": "nqn.2014-08.h:9"}] and s["allow_any_host"] is False, s
    assert "m9" in bdevs and "n9" in bdevs, bdevs
    assert e["code"] == -32602 and "hosts" in e["message"], e
    for cmd in (["nvmf_subsystem_remove_host", n, "nqn.2014-08.h:9"],
                ["nvmf_subsystem_allow_any_host", n, "--allow-any-host"],
                ["nvmf_subsystem_remove_listener", n, "-t", "tcp", "-a", "127.0.0.1", "-s", PORT],
                ["nvmf_subsystem_remove_ns", n, "7"],
                ["nvmf_subsystem_remove_ns", n, "1"],
                ["nvmf_delete_subsystem", n],
                ["bdev_malloc_delete", "m9"],
                ["bdev_null_delete", "n9"]):
        r = subprocess.run([SPDK_RPC, "-s", SOCK] + cmd, capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stdout + r.stderr)
    with client() as c:
        assert c.call("save_config") == before


@check("SPDK's client builds a subsystem live; the in-repo host does verified I/O through it")
def _():
    live = "nqn.2026-11.io.nvmfd:live-py"
    host = "nqn.2014-08.org.nvmexpress:uuid:0d0d0d0d-0000-4000-8000-00000000000d"
    other = "nqn.2014-08.org.nvmexpress:uuid:0e0e0e0e-0000-4000-8000-00000000000e"
    port2 = os.environ["PORT2"]

    def perf(hostnqn):
        return subprocess.run([PERF, "--addr", f"127.0.0.1:{port2}", "--nqn", live,
                               "--hostnqn", hostnqn, "--workload", "randwrite", "--verify",
                               "--time", "1", "--queue-depth", "8", "--span-mib", "8"],
                              capture_output=True, text=True, timeout=60)
    with client() as c:
        assert c.bdev_malloc_create(name="live0", num_blocks=4096, block_size=4096) == "live0"
        assert c.nvmf_create_subsystem(nqn=live, serial_number="PYLIVE01") is True
        assert c.nvmf_subsystem_add_ns(nqn=live, namespace={"bdev_name": "live0"}) == 1
        c.nvmf_subsystem_add_listener(nqn=live, listen_address={
            "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port2})
        c.nvmf_subsystem_add_host(nqn=live, host=host)
        s = c.nvmf_get_subsystems(nqn=live)[0]
        saved = c.call("save_config")
    assert s["hosts"] == [{"nqn": host}] and s["namespaces"][0]["bdev_name"] == "live0", s
    assert live in saved and "live0" in saved, saved
    r = perf(host)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ", 0 mismatches" in r.stdout and "verify: 0 blocks" not in r.stdout, r.stdout
    r = perf(other)
    assert r.returncode != 0, "a host not on the allow list is refused"
    with client() as c:
        c.nvmf_subsystem_remove_host(nqn=live, host=host)
        assert c.nvmf_subsystem_get_controllers(nqn=live) == []
        c.nvmf_delete_subsystem(nqn=live)
        c.bdev_malloc_delete(name="live0")
        assert live not in [x["nqn"] for x in c.nvmf_get_subsystems()]
    assert perf(host).returncode != 0, "the subsystem is gone"


@check("spdk-rpc save_config: SPDK's JSON config of the running state")
def _():
    out = subprocess.run([SPDK_RPC, "-s", SOCK, "save_config"],
                         check=True, capture_output=True, text=True).stdout
    cfg = json.loads(out)
    by = {x["subsystem"]: x["config"] for x in cfg["subsystems"]}
    assert set(by) == {"bdev", "nvmf"}, cfg
    assert [(c["method"], c["params"]["name"]) for c in by["bdev"]] == \
        [("bdev_malloc_create", "ram0"), ("bdev_malloc_create", "ram1")], by["bdev"]
    methods = [c["method"] for c in by["nvmf"]]
    assert methods == ["nvmf_create_transport",
                       "nvmf_create_subsystem", "nvmf_subsystem_add_ns", "nvmf_subsystem_add_listener",
                       "nvmf_create_subsystem", "nvmf_subsystem_add_host", "nvmf_subsystem_add_ns",
                       "nvmf_subsystem_add_listener"], methods
    ns = by["nvmf"][2]["params"]
    assert ns == {"nqn": NQN, "namespace": {"nsid": 1, "bdev_name": "ram0",
                  "uuid": "3b1f2c4e-8d7a-4f7e-9a51-6c2d0e9b7a10",
                  "nguid": ns["namespace"]["nguid"]}}, ns


@check("several clients at once")
def _():
    errors = []

    def worker():
        try:
            with client() as c:
                for _ in range(20):
                    assert c.spdk_get_version()["version"].startswith("nvmfd")
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    held = client()  # one more that stays connected, idle
    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    held.close()
    assert not errors, errors


@check("malformed and oversized requests get a JSON-RPC error; the daemon keeps serving")
def _():
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCK)
    s.sendall(b'{"jsonrpc": "2.0", "method": ')
    s.sendall(b'}')
    reply = json.loads(s.recv(4096))
    assert reply["error"]["code"] == -32700 and reply["id"] is None, reply
    s.close()
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCK)
    try:
        s.sendall(b'{"jsonrpc":"2.0","method":"x","params":{"a":"' + b"x" * (2 << 20))
    except OSError:
        pass  # the server may close while we still write
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    assert json.loads(buf)["error"]["code"] == -32600, buf
    s.close()
    with client() as c:
        assert len(c.nvmf_get_subsystems()) == 3


@check("nvmfd rpc CLI: human and JSON output")
def _():
    h = subprocess.run([NVMFD, "rpc", "--rpc-socket", SOCK, "nvmf_get_subsystems", f"nqn={NQN}"],
                       check=True, capture_output=True, text=True).stdout
    assert f"nqn: {NQN}" in h and "serial_number: PY0001" in h, h
    j = subprocess.run([NVMFD, "rpc", "--rpc-socket", SOCK, "-o", "json", "bdev_get_bdevs",
                        "--json", '{"name": "ram0"}'], check=True, capture_output=True, text=True).stdout
    assert json.loads(j)[0]["name"] == "ram0", j
    r = subprocess.run([NVMFD, "rpc", "--rpc-socket", SOCK, "no_such"], capture_output=True, text=True)
    assert r.returncode == 1 and "Method not found (code -32601)" in r.stderr, r


failed = [n for n, e in results if e is not None]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
