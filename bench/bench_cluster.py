#!/usr/bin/env python3
"""Jobs through nodes that joined a head (docs/clusters.md), on this one machine, as ratios
against one node in the same run.

(a) trivial jobs (def f(x): return x+1) submitted all then collected, through a head with no
    workers of its own and 16 joined nodes of one worker each, as a ratio of the same through one
    node with 2 workers.                                               Target >= 0.8x.
(b) the head's CPU time per job (from /proc/PID/task/*/schedstat) with 1, 2, 4, 8 and 16 joined nodes:
    how the head's cost grows with the number of nodes.

All nodes share this machine's CPUs: on a small machine 16 nodes and their workers compete for
them, which (a) measures too.

Usage: python3 bench/bench_cluster.py [--jobs N] [--nodes N] [--repeats N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import ppgate  # noqa: E402

SECRET = "bench-cluster-secret"
BINARY = os.environ.get("PPGATE_BINARY", os.path.join(ROOT, "build", "gateway", "ppgate"))


def f(x):
    return x + 1


def start(*args, workers):
    proc = subprocess.Popen([BINARY, "serve", "--listen", "127.0.0.1:0", "--workers", str(workers),
                             "--log-level", "warn", "--python", sys.executable] + list(args),
                            stdout=subprocess.PIPE, env=dict(os.environ, PPGATE_SECRET=SECRET))
    url = proc.stdout.readline().decode().split()[-1]
    peer = proc.stdout.readline().decode().split()[4] if "--peer-listen" in args else None
    return proc, url, peer


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(60)
        p.stdout.close()


def cpu_seconds(pid):
    """Time the process's threads have run on a CPU (schedstat: nanoseconds, not clock ticks)."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
            total += int(f.read().split()[0])
    return total / 1e9


def rate(server, jobs):
    t = time.perf_counter()
    pending = [server.submit(f, (i,)) for i in range(jobs)]
    assert [p() for p in pending] == [i + 1 for i in range(jobs)]
    return jobs / (time.perf_counter() - t)


def wait_joined(server, count):
    deadline = time.monotonic() + 60
    while sum(1 for name, slots in server.get_active_nodes().items() if name != "local" and slots) < count:
        if time.monotonic() > deadline:
            sys.exit("%d nodes did not join" % count)
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    single, single_url, _ = start(workers=2)
    head, head_url, head_peer = start("--peer-listen", "127.0.0.1:0", workers=0)
    joined = []
    try:
        with ppgate.Server(url=single_url, token=SECRET) as one, ppgate.Server(url=head_url, token=SECRET) as via:
            costs = {}
            for count in sorted({n for n in (1, 2, 4, 8, 16) if n <= args.nodes} | {args.nodes}):
                while len(joined) < count:
                    joined.append(start("--join", head_peer, workers=1)[0])
                wait_joined(via, count)
                rate(via, 500)  # warm: sources sent, means known
                before = cpu_seconds(head.pid)
                rate(via, args.jobs)
                costs[count] = (cpu_seconds(head.pid) - before) / args.jobs
            rate(one, 500)
            ones, vias = [], []
            for _ in range(args.repeats):  # alternating, on this noisy machine
                ones.append(rate(one, args.jobs))
                vias.append(rate(via, args.jobs))
            o, v = statistics.median(ones), statistics.median(vias)
            print("(a) %d trivial jobs: one node with 2 workers %.0f jobs/s, a head with %d joined nodes %.0f jobs/s: "
                  "%.2fx" % (args.jobs, o, args.nodes, v, v / o))
            print("(b) the head's CPU per job: " + ", ".join(
                "%d nodes %.1f us" % (n, c * 1e6) for n, c in sorted(costs.items())))
    finally:
        stop(joined + [head, single])


if __name__ == "__main__":
    main()
