#!/usr/bin/env python3
"""A deep queue: 1M trivial jobs queued on one node, as ratios against the same node's shallow queue
in the same invocation.

(a) gateway memory with 1M jobs queued (VmRSS of the ppgate process, beyond its resident size
    before the first job).                                        Target < 1 GiB.
(b) no slowdown per job: the REST submission rate with 1M jobs queued, as a ratio of the rate into
    a shallow queue (its first 100k after a warm-up batch); and the rate at which workers take jobs from the 1M-deep queue, as a ratio of
    the rate over the queue's last (shallow) 100k.                Target: ~1.0x (no slowdown).

The node starts with no worker, so submitted jobs stay queued; then PUT /v1/workers starts them.

Usage: python3 bench/bench_queue.py [--jobs N] [--batch N] [--workers N]
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIVIAL = "def f(x):\n    return x+1\n"


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for pid %d" % pid)


def request(conn, method, path, body=None):
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    data = json.loads(res.read())
    if res.status >= 300 and not (method == "POST" and res.status == 202):
        raise RuntimeError("%s %s: %s %r" % (method, path, res.status, data))
    return data


def submit(conn, first, count, batch):
    """Submits jobs f(first) .. f(first+count-1); returns jobs per second."""
    one = '{"source":%s,"function":"f","args":[%%d]}' % json.dumps(TRIVIAL)
    t = time.perf_counter()
    for start in range(first, first + count, batch):
        body = "[" + ",".join(one % i for i in range(start, min(first + count, start + batch))) + "]"
        request(conn, "POST", "/v1/jobs", body)
    return count / (time.perf_counter() - t)


def finished(conn):
    jobs = request(conn, "GET", "/v1/stats")["jobs"]
    return jobs["done"] + jobs["failed"]


def wait_until_finished(conn, target, deadline):
    while True:
        n = finished(conn)
        if n >= target:
            return time.perf_counter(), n
        if time.monotonic() > deadline:
            raise RuntimeError("only %d of %d jobs finished in time" % (n, target))
        time.sleep(0.005)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--sample", type=int, default=100_000, help="jobs per rate sample")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()

    binary = os.environ.get("PPGATE_BINARY", os.path.join(ROOT, "build", "gateway", "ppgate"))
    proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--workers", "0",
                             "--log-level", "warn"], stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        if not line.startswith("ppgate listening on"):
            sys.exit("ppgate did not start: %r" % line)
        conn = http.client.HTTPConnection("127.0.0.1", int(line.rsplit(":", 1)[1]), timeout=600)
        rss_empty = rss_bytes(proc.pid)

        submit(conn, 0, args.batch, args.batch)  # warm-up: the function is interned, buffers grow
        shallow_submit = submit(conn, args.batch, args.sample, args.batch)  # into a shallow queue
        submit(conn, args.batch + args.sample, args.jobs - 2 * args.sample - args.batch, args.batch)
        deep_submit = submit(conn, args.jobs - args.sample, args.sample, args.batch)  # ~1M deep
        queued = request(conn, "GET", "/v1/stats")["queue_depth"]
        rss_full = rss_bytes(proc.pid)

        print("%d trivial jobs queued on a node with no worker (REST batches of %d):" % (queued, args.batch))
        print("  gateway memory: %.0f MiB before, %.0f MiB with the queue full: %.0f bytes per queued job"
              % (rss_empty / 2**20, rss_full / 2**20, (rss_full - rss_empty) / queued))
        print("  growth %.0f MiB   (target < 1024 MiB)" % ((rss_full - rss_empty) / 2**20))
        print("  submission rate into a shallow queue  %8.0f jobs/s" % shallow_submit)
        print("  submission rate with ~1M queued       %8.0f jobs/s" % deep_submit)
        print("  ratio                                 %8.2fx   (target ~1.0x)" % (deep_submit / shallow_submit))

        # Drain: the first `sample` jobs come off a ~1M-deep queue, the last `sample` off a shallow one.
        deadline = time.monotonic() + 1800
        request(conn, "PUT", "/v1/workers", json.dumps({"count": args.workers}))
        t0, n0 = wait_until_finished(conn, 1, deadline)
        t1, n1 = wait_until_finished(conn, n0 + args.sample, deadline)
        deep_run = (n1 - n0) / (t1 - t0)
        t2, n2 = wait_until_finished(conn, args.jobs - args.sample, deadline)
        t3, n3 = wait_until_finished(conn, args.jobs, deadline)
        shallow_run = (n3 - n2) / (t3 - t2)
        print("jobs run by %d workers:" % args.workers)
        print("  from the ~1M-deep queue        %8.0f jobs/s" % deep_run)
        print("  from the last %dk of it      %8.0f jobs/s" % (args.sample // 1000, shallow_run))
        print("  ratio                          %8.2fx   (target ~1.0x)" % (deep_run / shallow_run))
        print("  gateway memory after the drain: %.0f MiB" % (rss_bytes(proc.pid) / 2**20))
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
