#!/usr/bin/env python3
"""Resident memory of nvmfd under many connections, and whether it grows over time.

    bench/scripts/memory.py [--conns 64] [--qd 128] [--time 30] [--sample 5]
                            [--phase randread:4096] [--phase randwrite:131072+randread:131072] ...
                            [--pool 64MiB] [--record bench/RESULTS.md]

Starts build/release/nvmfd on core 0 (one reactor, a null namespace so only nvmfd's own memory
counts), records its resident size (VmRSS) idle, then runs each phase: --conns nvmfd-perf
processes on core 1, each with an admin and one I/O queue kept --qd deep. A phase names one
workload:io_size, or several joined by '+' that the processes take in turn. During a phase
the RSS is sampled every --sample seconds. The table shows idle, after warm-up (the first
sample past a fifth of the phase), peak, end, and growth = end - warm-up; for a long phase
(--time 600) a growth of zero is the no-leak check. --samples prints every sample.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from benchlib import REPO, die, wait_port

NQN = "nqn.2026-11.io.nvmfd:mem"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    die(f"no VmRSS for pid {pid}")


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def run_phase(a, perf, port, daemon_pid, spec):
    loads = [w.split(":") for w in spec.split("+")]
    procs = []
    for i in range(a.conns):
        wl, size = loads[i % len(loads)]
        procs.append(subprocess.Popen(
            [perf, "--addr", f"127.0.0.1:{port}", "--nqn", NQN, "--workload", wl, "--io-size", size,
             "--queue-depth", str(a.qd), "--time", str(a.time), "--core", "1", "--json",
             "--seed", str(1000 + i)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    start = time.time()
    samples = []
    while any(p.poll() is None for p in procs):
        time.sleep(a.sample)
        samples.append((time.time() - start, rss_kib(daemon_pid)))
        if a.samples:
            print(f"  {spec} t={samples[-1][0]:.0f}s rss={mib(samples[-1][1])}", flush=True)
    iops, errors = 0.0, 0
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            die(f"nvmfd-perf failed (exit {p.returncode}): {err.strip()[-500:]}", 1)
        r = json.loads(out.strip().splitlines()[-1])
        iops += r["iops"]
        errors += r["errors"]
    if errors:
        die(f"phase {spec}: {errors} I/O errors", 1)
    # Only samples under load count (the processes may linger a moment after --time), and of
    # those, growth is measured from the first one past a fifth of the phase (connections made,
    # queues full, pool at its peak).
    samples = [s for s in samples if s[0] <= a.time] or samples
    settled = [s for s in samples if s[0] >= a.time / 5] or samples
    warm, end = settled[0][1], samples[-1][1]
    return {"spec": spec, "warm": warm, "peak": max(s[1] for s in samples), "end": end,
            "growth": end - warm, "iops": iops, "samples": len(samples)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=64, help="nvmfd-perf processes (default 64)")
    ap.add_argument("--qd", type=int, default=128, help="queue depth of each (default 128)")
    ap.add_argument("--time", type=int, default=30, help="seconds per phase (default 30)")
    ap.add_argument("--sample", type=float, default=5, help="seconds between RSS samples (default 5)")
    ap.add_argument("--phase", action="append", help="workload:io_size[+workload:io_size...] (repeatable)")
    ap.add_argument("--pool", default="64MiB", help="transports.tcp.buffer_pool_size (default 64MiB)")
    ap.add_argument("--samples", action="store_true", help="print every RSS sample")
    ap.add_argument("--record", help="append the table to this Markdown file")
    a = ap.parse_args()
    phases = a.phase or ["randread:4096", "randwrite:4096", "randread:131072", "randwrite:131072"]
    nvmfd = os.path.join(REPO, "build", "release", "nvmfd")
    perf = os.path.join(REPO, "build", "release", "nvmfd-perf")
    for b in (nvmfd, perf):
        if not os.access(b, os.X_OK):
            die(f"{b} is not an executable: run `cargo build --release` first")
    if not shutil.which("taskset"):
        die("taskset (util-linux) is needed")
    workdir = tempfile.mkdtemp(prefix="nvmfd-memory-")
    port = free_port()
    cfg = os.path.join(workdir, "nvmfd.yaml")
    with open(cfg, "w") as f:
        f.write(
            "reactors: { cores: [0] }\n"
            f"transports: {{ tcp: {{ max_queue_depth: {max(128, a.qd + 1)}, buffer_pool_size: {a.pool} }} }}\n"
            "bdevs: [ { name: z, null: { size: 1GiB } } ]\n"
            f"subsystems: [ {{ nqn: {NQN}, namespaces: [ {{ nsid: 1, bdev: z }} ],\n"
            f"  listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {port} }} ] }} ]\n"
        )
    log = open(os.path.join(workdir, "nvmfd.log"), "w")
    d = subprocess.Popen(["taskset", "-c", "0", nvmfd, "--config", cfg], stdout=log, stderr=log)
    try:
        wait_port(port)
        time.sleep(1)
        idle = rss_kib(d.pid)
        print(f"memory: {a.conns} connections x QD{a.qd}, {a.time}s phases, buffer_pool_size {a.pool}, "
              f"idle RSS {mib(idle)}, logs in {workdir}", flush=True)
        rows = [run_phase(a, perf, port, d.pid, spec) for spec in phases]
    finally:
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=60)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    lines = [
        f"### {datetime.date.today()} commit {commit}: memory, {a.conns} connections x QD{a.qd}, "
        f"{a.time}s per phase, 1 reactor, null namespace, buffer_pool_size {a.pool}",
        "",
        "| workload | IOPS | RSS idle | RSS warm | RSS peak | RSS end | growth (end - warm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['spec']} | {r['iops'] / 1000:.0f}K | {mib(idle)} | {mib(r['warm'])} | "
                     f"{mib(r['peak'])} | {mib(r['end'])} | {r['growth'] / 1024:+.1f} MiB |")
    table = "\n".join(lines)
    print(table)
    if a.record:
        with open(a.record, "a") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
