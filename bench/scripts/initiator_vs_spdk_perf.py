#!/usr/bin/env python3
"""nvmfd-perf against SPDK's spdk_nvme_perf, one initiator core each, against the same nvmfd.

    bench/scripts/initiator_vs_spdk_perf.py SPDK_DIR [--rounds 3] [--time 10] [--no-qd1]
                                            [--busy-poll] [--record bench/RESULTS.md]

Issue 13: with --cores 1, nvmfd-perf must at least match spdk_nvme_perf on one core against
the same target. One nvmfd (build/release/nvmfd: one reactor on core 0, a 256 MiB RAM
namespace, `c2h_success: true`, warmed with a 2 s 128K write) serves both initiators, which run
in turn on core 1: `nvmfd-perf --cores 1 --cpus 1` and `spdk_nvme_perf -c 0x2`. Per round and
workload each initiator runs once, the order reversed on even rounds so drift hits both alike.
Workloads: 4K randread and randwrite at QD32 and (unless --no-qd1) QD1. --busy-poll adds
`nvmfd-perf --busy-poll` as a third initiator.

Two things are measured per run: IOPS, and the initiator's own CPU time per I/O (user + system
time of the initiator process from its rusage, over the I/Os it completed). On a 2-core machine
the target (one core) saturates before either initiator does, so equal IOPS only say the
initiator kept up; the CPU time per I/O says what each I/O cost the initiator's core, which is
the initiator's ceiling when nothing else limits it. Read it knowing how each one waits:
spdk_nvme_perf always polls, so its CPU time is its whole run time whatever the target does;
nvmfd-perf blocks in the kernel when nothing is due (unless --busy-poll), so its CPU time is
work done. The rusage covers the whole process, start-up included (SPDK's EAL set-up,
nvmfd-perf's connect): a fraction of a second against the run's --time seconds.

The table shows per workload and initiator the median [min-max] of both, and the ratio of
medians against spdk_nvme_perf (IOPS: higher is better; CPU per I/O: lower is better).
--record appends it with the date, commit and load average to a Markdown file. SPDK_DIR is an
SPDK v24.01 build made OUTSIDE this repository (build/bin/spdk_nvme_perf; nothing of SPDK is
committed here). The nvmfd harness and the spdk_nvme_perf run come from compare_spdk.py.
"""

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile

import compare_spdk as cs
from benchlib import REPO, die, wait_port

# name, workload, I/O size, queue depth
WORKLOADS = [
    ("4K randread QD32", "randread", 4096, 32),
    ("4K randwrite QD32", "randwrite", 4096, 32),
    ("4K randread QD1", "randread", 4096, 1),
    ("4K randwrite QD1", "randwrite", 4096, 1),
]
SPDK = "spdk_nvme_perf"


class Target(cs.Nvmfd):
    """compare_spdk.py's nvmfd (core 0, one reactor, RAM namespace, c2h_success), with its state
    and RPC socket in the work folder so it runs beside other daemons of this machine."""

    def start(self):
        cfg = os.path.join(self.workdir, "nvmfd-bench.yaml")
        state = os.path.join(self.workdir, "state")
        os.makedirs(state, exist_ok=True)
        with open(cfg, "w") as f:
            f.write(
                f"state_dir: {state}\n"
                f"rpc: {{ socket: {os.path.join(self.workdir, 'nvmfd.sock')} }}\n"
                "reactors: { cores: [0] }\n"
                "transports: { tcp: { c2h_success: true } }\n"
                f"bdevs: [ {{ name: ram0, malloc: {{ size: {cs.RAM_MIB}MiB }} }} ]\n"
                f"subsystems: [ {{ nqn: {self.nqn}, namespaces: [ {{ nsid: 1, bdev: ram0 }} ],\n"
                f"  listeners: [ {{ transport: tcp, address: 127.0.0.1, port: {self.port} }} ] }} ]\n"
            )
        log = open(os.path.join(self.workdir, "nvmfd.log"), "w")
        self.proc = subprocess.Popen(["taskset", "-c", "0", self.binary, "--config", cfg],
                                     stdout=log, stderr=log)
        wait_port(self.port)


def child_cpu_s():
    """User + system seconds of every child process waited for so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_spdk(spdk_dir, huge, target, wl, seconds):
    """spdk_nvme_perf on core 1 (compare_spdk.perf); I/Os are its total IOPS over its run time.
    A failed run is tried once more (on a loaded machine its Connect can time out)."""
    name, workload, size, qd = wl
    for attempt in (1, 2):
        before = child_cpu_s()
        try:
            r = cs.perf(spdk_dir, huge, target, (name, workload, size, qd, []), seconds)
        except SystemExit:
            if attempt == 2:
                raise
            print(f"  {SPDK} failed (its output is above); trying once more", flush=True)
            continue
        cpu = child_cpu_s() - before
        return r["iops"], cpu, r["iops"] * seconds


def run_nvmfd_perf(binary, target, wl, seconds, busy):
    """nvmfd-perf --cores 1 --cpus 1; I/Os as it counted them."""
    _, workload, size, qd = wl
    args = [binary, "--addr", f"127.0.0.1:{target.port}", "--nqn", target.nqn, "--hostnqn", cs.HOSTNQN,
            "--workload", workload, "--io-size", str(size), "--queue-depth", str(qd),
            "--time", str(seconds), "--cores", "1", "--cpus", "1", "--json", "--no-progress"]
    if busy:
        args.append("--busy-poll")
    before = child_cpu_s()
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120)
    cpu = child_cpu_s() - before
    if out.returncode != 0:
        die(f"nvmfd-perf failed (exit {out.returncode}):\n{out.stderr[-3000:]}", 1)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["errors"]:
        die(f"nvmfd-perf: {r['errors']} errors, first: {r['first_error']}", 1)
    return r["iops"], cpu, r["ios"]


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def spread(vals, f):
    return f"{f(statistics.median(vals))} [{f(min(vals))}-{f(max(vals))}]"


def kiops(v):
    if v < 1000:
        return f"{v:.0f}"
    return f"{v / 1000:.1f}K" if v < 10_000 else f"{v / 1000:.0f}K"


def usec(v):
    return f"{v:.2f} us"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spdk_dir", nargs="?", help="an SPDK v24.01 build folder (outside this repository)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every initiator x workload (default 3)")
    ap.add_argument("--time", type=int, default=10, help="seconds per run (default 10)")
    ap.add_argument("--no-qd1", action="store_true", help="only the QD32 workloads")
    ap.add_argument("--busy-poll", action="store_true", help="also run nvmfd-perf --busy-poll")
    ap.add_argument("--nvmfd", default=os.path.join(REPO, "build", "release", "nvmfd"))
    ap.add_argument("--port", type=int, default=cs.NVMFD_PORT, help=f"nvmfd's port (default {cs.NVMFD_PORT})")
    ap.add_argument("--record", help="append the table to this Markdown file (e.g. bench/RESULTS.md)")
    a = ap.parse_args()
    if not a.spdk_dir:
        die("give the path of an SPDK v24.01 build (made outside this repository); "
            "it needs build/bin/spdk_nvme_perf")
    spdk_perf = os.path.join(a.spdk_dir, "build", "bin", "spdk_nvme_perf")
    if not os.access(spdk_perf, os.X_OK):
        die(f"SPDK not found: {spdk_perf} is missing (build SPDK v24.01 there first)")
    perf_bin = os.path.join(os.path.dirname(a.nvmfd), "nvmfd-perf")
    for b in (a.nvmfd, perf_bin):
        if not os.access(b, os.X_OK):
            die(f"{b} is not an executable: run `cargo build --release` first")
    if not shutil.which("taskset"):
        die("taskset (util-linux) is needed")
    if a.rounds < 1 or a.time < 1:
        die("--rounds and --time must be at least 1")
    workloads = [w for w in WORKLOADS if not (a.no_qd1 and w[3] == 1)]
    huge = cs.hugepages_ok()
    workdir = tempfile.mkdtemp(prefix="nvmfd-initiators-")
    target = Target(a.nvmfd, workdir)
    target.port = a.port
    inits = [("nvmfd-perf", lambda w: run_nvmfd_perf(perf_bin, target, w, a.time, False)),
             (SPDK, lambda w: run_spdk(a.spdk_dir, huge, target, w, a.time))]
    if a.busy_poll:
        inits.insert(1, ("nvmfd-perf --busy-poll", lambda w: run_nvmfd_perf(perf_bin, target, w, a.time, True)))
    res = {(g, w[0]): [] for g, _ in inits for w in workloads}
    load_before = loadavg()
    start = datetime.datetime.now(datetime.timezone.utc)
    print(f"initiator_vs_spdk_perf: {a.rounds} rounds x {len(workloads)} workloads x {len(inits)} initiators "
          f"x {a.time}s, hugepages {'on' if huge else 'off (--no-huge)'}, load {load_before}, logs in {workdir}",
          flush=True)
    target.start()
    try:
        cs.perf(a.spdk_dir, huge, target, ("warm", "write", 131072, 8, []), 2)
        for rnd in range(a.rounds):
            order = inits if rnd % 2 == 0 else list(reversed(inits))
            for w in workloads:
                for g, run in order:
                    iops, cpu, ios = run(w)
                    us = cpu / ios * 1e6 if ios else float("nan")
                    res[(g, w[0])].append((iops, us))
                    print(f"  round {rnd + 1} {w[0]:18} {g:24} {iops:>10.0f} IOPS {cpu:6.2f} s CPU "
                          f"{us:6.2f} us/IO", flush=True)
    finally:
        target.stop()
    end = datetime.datetime.now(datetime.timezone.utc)
    load_after = loadavg()
    head = ("workload", "initiator (core 1)", "IOPS median [min-max]", "/ spdk_nvme_perf",
            "CPU per I/O median [min-max]", "/ spdk_nvme_perf")
    rows = []
    for w in workloads:
        base = res[(SPDK, w[0])]
        b_iops = statistics.median(v[0] for v in base)
        b_us = statistics.median(v[1] for v in base)
        for g, _ in inits:
            vals = res[(g, w[0])]
            iops, us = [v[0] for v in vals], [v[1] for v in vals]
            rows.append((w[0], g, spread(iops, kiops), f"{statistics.median(iops) / b_iops:.2f}",
                         spread(us, usec), f"{statistics.median(us) / b_us:.2f}"))
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    print()
    print("\n".join(table))
    if a.record:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        with open(a.record, "a") as f:
            f.write(f"\n### {start.date()} commit {commit}: initiators on one core, nvmfd-perf --cores 1 vs "
                    f"spdk_nvme_perf -c 0x2 against one nvmfd reactor (`initiator_vs_spdk_perf.py`, "
                    f"{a.rounds} rounds x {a.time}s, {start:%H:%M}-{end:%H:%M} UTC, load {load_before} "
                    f"before, {load_after} after)\n\n")
            f.write("\n".join(table) + "\n")
        print(f"\nappended to {a.record}")


if __name__ == "__main__":
    main()
