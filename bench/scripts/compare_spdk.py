#!/usr/bin/env python3
"""Compare nvmfd with SPDK's nvmf_tgt, per core, on this machine.

    bench/scripts/compare_spdk.py SPDK_DIR [--runs 3] [--time 20] [--record bench/RESULTS.md]

SPDK_DIR is an SPDK v24.01 build made OUTSIDE this repository (nothing of SPDK is committed
here): it must hold build/bin/nvmf_tgt, build/bin/spdk_nvme_perf and scripts/rpc.py. Each
target gets one core (core 0, a RAM namespace); the same load generator, SPDK's
spdk_nvme_perf, runs on core 1 against both over 127.0.0.1. Runs alternate A/B (nvmfd first on
even runs, SPDK first on odd ones) so drift on this shared machine hits both alike; the table
shows medians with [min-max] and the ratio nvmfd/SPDK (for latency lower is better).

--second-view also drives both targets with this repository's own host, nvmfd-perf (one
thread, blocking socket: it saturates near 250K IOPS, so at QD32 it measures itself more than
the target; its QD1 latency is a second, independent view) and prints a second table.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from benchlib import REPO, die, wait_port

NVMFD_NQN = "nqn.2026-11.io.nvmfd:bench"
SPDK_NQN = "nqn.2016-06.io.spdk:cnode1"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:5d6a1e0c-7a4e-4e2f-9a1b-0c0ffee0be1c"
NVMFD_PORT, SPDK_PORT = 4440, 4441
RAM_MIB = 256

# name, workload, I/O size, queue depth, metrics reported
WORKLOADS = [
    ("4K randread QD32", "randread", 4096, 32, ["iops"]),
    ("4K randwrite QD32", "randwrite", 4096, 32, ["iops"]),
    ("128K seq write QD8", "write", 131072, 8, ["mibs"]),
    ("4K randread QD1", "randread", 4096, 1, ["avg_us", "p99_us"]),
]


def hugepages_ok():
    try:
        if int(open("/proc/sys/vm/nr_hugepages").read()) < 512:
            open("/proc/sys/vm/nr_hugepages", "w").write("1024")
        if int(open("/proc/sys/vm/nr_hugepages").read()) < 512:
            return False
        if not os.path.ismount("/dev/hugepages"):
            os.makedirs("/dev/hugepages", exist_ok=True)
            subprocess.run(["mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages"], check=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


class Nvmfd:
    name = "nvmfd"
    port, nqn = NVMFD_PORT, NVMFD_NQN

    def __init__(self, binary, workdir):
        self.binary, self.workdir, self.proc = binary, workdir, None

    def start(self):
        cfg = os.path.join(self.workdir, "nvmfd-bench.yaml")
        with open(cfg, "w") as f:
            f.write(
                "reactors: { cores: [0] }\n"
                # Same wire behaviour as SPDK, whose TCP transport uses the SUCCESS flag by default.
                "transports: { tcp: { c2h_success: true } }\n"
                f"bdevs: [ {{ name: ram0, malloc: {{ size: {RAM_MIB}MiB }} }} ]\n"
                f"subsystems: [ {{ nqn: {NVMFD_NQN}, namespaces: [ {{ nsid: 1, bdev: ram0 }} ],\n"
                f"  listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {NVMFD_PORT} }} ] }} ]\n"
            )
        log = open(os.path.join(self.workdir, "nvmfd.log"), "w")
        self.proc = subprocess.Popen(["taskset", "-c", "0", self.binary, "--config", cfg], stdout=log, stderr=log)
        wait_port(self.port)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=60) != 0:
            die(f"nvmfd exited {self.proc.returncode}; see {self.workdir}/nvmfd.log", 1)


class Spdk:
    name = "SPDK"
    port, nqn = SPDK_PORT, SPDK_NQN

    def __init__(self, spdk_dir, workdir, huge):
        self.dir, self.workdir, self.huge, self.proc = spdk_dir, workdir, huge, None
        self.sock = os.path.join(workdir, "spdk.sock")

    def rpc(self, *args):
        subprocess.run([os.path.join(self.dir, "scripts", "rpc.py"), "-s", self.sock, *args], check=True,
                       stdout=subprocess.DEVNULL)

    def start(self):
        args = [os.path.join(self.dir, "build", "bin", "nvmf_tgt"), "-m", "0x1", "--no-pci", "-r", self.sock]
        if not self.huge:
            args += ["--no-huge", "-s", "1024"]
        log = open(os.path.join(self.workdir, "nvmf_tgt.log"), "w")
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(self.dir, "build", "lib"))
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)
        end = time.time() + 30
        while not os.path.exists(self.sock):
            if time.time() > end or self.proc.poll() is not None:
                die(f"nvmf_tgt did not start; see {self.workdir}/nvmf_tgt.log", 1)
            time.sleep(0.2)
        self.rpc("nvmf_create_transport", "-t", "TCP")
        self.rpc("bdev_malloc_create", "-b", "Malloc0", str(RAM_MIB), "4096")
        self.rpc("nvmf_create_subsystem", SPDK_NQN, "-a", "-s", "SPDK0001")
        self.rpc("nvmf_subsystem_add_ns", SPDK_NQN, "Malloc0")
        self.rpc("nvmf_subsystem_add_listener", SPDK_NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", str(SPDK_PORT))
        wait_port(self.port)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if os.path.exists(self.sock):
            os.unlink(self.sock)


def perf(spdk_dir, huge, target, wl, seconds):
    _, workload, size, qd, _ = wl
    trid = (f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{target.port} "
            f"subnqn:{target.nqn} hostnqn:{HOSTNQN}")
    args = [os.path.join(spdk_dir, "build", "bin", "spdk_nvme_perf"), "-c", "0x2", "-q", str(qd),
            "-o", str(size), "-w", workload, "-t", str(seconds), "-L", "-r", trid]
    if not huge:
        args += ["--no-huge", "-s", "1024"]
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(spdk_dir, "build", "lib"))
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=seconds + 120)
    text = out.stdout + out.stderr
    m = re.search(r"^Total\s*:\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)", text, re.M)
    if out.returncode != 0 or not m:
        die(f"spdk_nvme_perf against {target.name} failed (exit {out.returncode}):\n{text[-3000:]}", 1)
    p99 = re.search(r"99\.00000%\s*:\s*([\d.]+)us", text)
    return {"iops": float(m.group(1)), "mibs": float(m.group(2)), "avg_us": float(m.group(3)),
            "p99_us": float(p99.group(1)) if p99 else float("nan")}


def nvmfd_perf(binary, target, wl, seconds):
    """The same workload from this repository's host (nvmfd-perf), pinned to core 1."""
    _, workload, size, qd, _ = wl
    args = [binary, "--addr", f"127.0.0.1:{target.port}", "--nqn", target.nqn, "--hostnqn", HOSTNQN,
            "--workload", workload, "--io-size", str(size), "--queue-depth", str(qd),
            "--time", str(seconds), "--core", "1", "--json"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        die(f"nvmfd-perf against {target.name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}", 1)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["errors"]:
        die(f"nvmfd-perf against {target.name}: {r['errors']} errors, first: {r['first_error']}", 1)
    return {"iops": r["iops"], "mibs": r["iops"] * size / 2**20, "avg_us": r["latency_us"]["avg"],
            "p99_us": r["latency_us"]["p99"]}


def fmt(v, metric):
    if metric == "iops":
        return f"{v / 1000:.0f}K"
    if metric == "mibs":
        return f"{v:.0f} MiB/s"
    return f"{v:.1f} us"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spdk_dir", nargs="?", help="an SPDK v24.01 build folder (outside this repository)")
    ap.add_argument("--runs", type=int, default=3, help="A/B alternations (default 3)")
    ap.add_argument("--time", type=int, default=20, help="seconds per workload (default 20)")
    ap.add_argument("--nvmfd", default=os.path.join(REPO, "build", "release", "nvmfd"))
    ap.add_argument("--record", help="append the table to this Markdown file (e.g. bench/RESULTS.md)")
    ap.add_argument("--second-view", action="store_true",
                    help="also run every workload with nvmfd-perf (this repository's host)")
    a = ap.parse_args()
    if not a.spdk_dir:
        die("give the path of an SPDK v24.01 build (made outside this repository); "
            "it needs build/bin/nvmf_tgt, build/bin/spdk_nvme_perf and scripts/rpc.py")
    for rel in ("build/bin/nvmf_tgt", "build/bin/spdk_nvme_perf", "scripts/rpc.py"):
        if not os.path.exists(os.path.join(a.spdk_dir, rel)):
            die(f"SPDK not found: {os.path.join(a.spdk_dir, rel)} is missing (build SPDK v24.01 there first)")
    if not os.access(a.nvmfd, os.X_OK):
        die(f"{a.nvmfd} is not an executable: run `cargo build --release` first")
    if not shutil.which("taskset"):
        die("taskset (util-linux) is needed")
    perf_bin = os.path.join(os.path.dirname(a.nvmfd), "nvmfd-perf")
    if a.second_view and not os.access(perf_bin, os.X_OK):
        die(f"{perf_bin} is not an executable: run `cargo build --release` first")
    huge = hugepages_ok()
    workdir = tempfile.mkdtemp(prefix="nvmfd-vs-spdk-")
    targets = [Nvmfd(a.nvmfd, workdir), Spdk(a.spdk_dir, workdir, huge)]
    # Load generators: name, function(target, workload, seconds).
    loads = [("spdk_nvme_perf", lambda t, w, sec: perf(a.spdk_dir, huge, t, w, sec))]
    if a.second_view:
        loads.append(("nvmfd-perf", lambda t, w, sec: nvmfd_perf(perf_bin, t, w, sec)))
    results = {(g, t.name, w[0]): [] for g, _ in loads for t in targets for w in WORKLOADS}
    print(f"compare_spdk: {a.runs} A/B runs x {len(WORKLOADS)} workloads x {len(loads)} load generators "
          f"x {a.time}s, hugepages {'on' if huge else 'off (--no-huge)'}, logs in {workdir}", flush=True)
    for run in range(a.runs):
        order = targets if run % 2 == 0 else list(reversed(targets))
        for t in order:
            t.start()
            try:
                # Touch the whole RAM namespace first: SPDK's malloc bdev is allocated up front,
                # nvmfd's is faulted in on first write; measure both in steady state.
                perf(a.spdk_dir, huge, t, ("warm", "write", 131072, 8, []), 2)
                for g, run_load in loads:
                    for w in WORKLOADS:
                        r = run_load(t, w, a.time)
                        results[(g, t.name, w[0])].append(r)
                        print(f"  run {run + 1} {g:14} {t.name:5} {w[0]:20} {r['iops']:>10.0f} IOPS "
                              f"{r['mibs']:>8.0f} MiB/s avg {r['avg_us']:.1f} us p99 {r['p99_us']:.1f} us",
                              flush=True)
            finally:
                t.stop()
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    head = ("workload", "metric", "nvmfd median [min-max]", "SPDK median [min-max]", "nvmfd/SPDK")
    for g, _ in loads:
        rows = []
        for name, _, _, _, metrics in WORKLOADS:
            for m in metrics:
                a_vals = [r[m] for r in results[(g, "nvmfd", name)]]
                b_vals = [r[m] for r in results[(g, "SPDK", name)]]
                ma, mb = statistics.median(a_vals), statistics.median(b_vals)
                rows.append((name, m, f"{fmt(ma, m)} [{fmt(min(a_vals), m)}-{fmt(max(a_vals), m)}]",
                             f"{fmt(mb, m)} [{fmt(min(b_vals), m)}-{fmt(max(b_vals), m)}]", f"{ma / mb:.2f}"))
        widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
        line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
        print(f"\nload generator: {g} on core 1")
        print(line(head))
        for r in rows:
            print(line(r))
        if a.record:
            with open(a.record, "a") as f:
                f.write(f"\n### {datetime.date.today()} commit {commit}: {a.runs} A/B runs x {a.time}s, "
                        f"1 target core, {g} on core 1\n\n")
                f.write("| " + " | ".join(head) + " |\n|" + "---|" * 5 + "\n")
                for r in rows:
                    f.write("| " + " | ".join(r) + " |\n")
    if a.record:
        print(f"\nappended to {a.record}")


if __name__ == "__main__":
    main()
