#!/usr/bin/env python3
"""What --journal costs: trivial-job throughput of a node with the journal, as a ratio of the same
node without it, in the same invocation (rounds alternate between the two, so the machine's noise
falls on both).

(a) through the Python client (a session: jobs pipelined, results pushed), N jobs per round;
(b) through REST batches of 1000 (each answered only once its jobs are committed).
Target: >= 0.5x (issue 14, with batched commits).

Usage: python3 bench/bench_journal.py [--jobs N] [--rounds N] [--workers N]
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

import ppgate  # noqa: E402


def inc(x):
    return x + 1


def start_node(workers, extra):
    binary = os.environ.get("PPGATE_BINARY", os.path.join(ROOT, "build", "gateway", "ppgate"))
    proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--workers", str(workers),
                             "--log-level", "warn"] + extra, stdout=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    if not line.startswith("ppgate listening on"):
        sys.exit("ppgate did not start: %r" % line)
    return proc, int(line.rsplit(":", 1)[1])


def client_rate(port, jobs):
    with ppgate.Server(url="http://127.0.0.1:%d" % port) as server:
        server.submit(inc, (0,))()  # the function is defined on the session
        t = time.perf_counter()
        pending = [server.submit(inc, (i,)) for i in range(jobs)]
        for job in pending:
            job()
        return jobs / (time.perf_counter() - t)


def rest_rate(port, batches):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    one = '{"source":"def f(x):\\n    return x+1\\n","function":"f","args":[%d]}'
    t = time.perf_counter()
    for b in range(batches):
        body = "[" + ",".join(one % i for i in range(1000)) + "]"
        conn.request("POST", "/v1/jobs?wait=600", body=body)
        res = conn.getresponse()
        data = json.loads(res.read())
        if res.status != 200:
            raise RuntimeError("batch %d: %s %r" % (b, res.status, data)[:300])
    conn.close()
    return batches * 1000 / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=5000, help="jobs per client round")
    ap.add_argument("--batches", type=int, default=5, help="REST batches of 1000 per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, plain_port = start_node(args.workers, [])
        journaled, journal_port = start_node(args.workers, ["--journal", os.path.join(tmp, "jobs.db")])
        try:
            rates = {"client": ([], []), "rest": ([], [])}
            for _ in range(args.rounds):
                for which, port in ((0, plain_port), (1, journal_port)):
                    rates["client"][which].append(client_rate(port, args.jobs))
                    rates["rest"][which].append(rest_rate(port, args.batches))
            size = os.path.getsize(os.path.join(tmp, "jobs.db")) + os.path.getsize(os.path.join(tmp, "jobs.db-wal"))
        finally:
            for proc in (plain, journaled):
                proc.terminate()
                proc.wait(30)
    print("trivial jobs on %d workers, median of %d rounds, with --journal against without:" % (args.workers, args.rounds))
    for name, label in (("client", "Python client (session), %d jobs" % args.jobs),
                        ("rest", "REST batches of 1000, %d batches" % args.batches)):
        without, with_journal = (statistics.median(r) for r in rates[name])
        print("  %-40s without %8.0f jobs/s   with %8.0f jobs/s   ratio %.2fx   (target >= 0.5x)"
              % (label, without, with_journal, with_journal / without))
    print("  journal file after the runs: %.1f MiB" % (size / 2**20))


if __name__ == "__main__":
    main()
