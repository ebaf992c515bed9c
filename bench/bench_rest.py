#!/usr/bin/env python3
"""REST benchmarks for one local ppgate node, each reported as a ratio against a baseline run in
the same invocation (absolute times on a shared machine mean little).

(a) sum_primes, pp's example: the sums of primes below 100000, 100100, ..., 100700, run through
    the REST API on all workers, as a speed-up over the same function run serially in this process.
    Target: >= 1.9x on 2 workers.
(b) trivial jobs per second through REST from one client with keep-alive and batching
    (target >= 20k jobs/s), with unbatched keep-alive submission as the reference point.

Usage: python3 bench/bench_rest.py [--workers N] [--jobs N] [--batch N]
"""

import argparse
import http.client
import inspect
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import pp_example  # noqa: E402

# The source a REST client would send: the same functions the serial baseline runs.
SUM_PRIMES = inspect.getsource(pp_example.isprime) + "\n" + inspect.getsource(pp_example.sum_primes)
INPUTS = pp_example.INPUTS
TRIVIAL = "def f(x):\n    return x+1\n"


def start_node(workers):
    binary = os.environ.get("PPGATE_BINARY", os.path.join(ROOT, "build", "gateway", "ppgate"))
    proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--workers", str(workers),
                             "--log-level", "warn"], stdout=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    if not line.startswith("ppgate listening on"):
        proc.kill()
        sys.exit("ppgate did not start: %r" % line)
    return proc, int(line.rsplit(":", 1)[1])


def post(conn, path, body):
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    data = json.loads(res.read())
    if res.status != 200:
        raise RuntimeError("%s: %r" % (res.status, data))
    return data


def bench_sum_primes(port, repeats):
    serial = pp_example.sum_primes
    serial_best = rest_best = float("inf")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    batch = json.dumps([{"source": SUM_PRIMES, "function": "sum_primes", "modules": ["math"], "args": [n]}
                        for n in INPUTS])
    expected = None
    for _ in range(repeats):
        t = time.perf_counter()
        expected = [serial(n) for n in INPUTS]
        serial_best = min(serial_best, time.perf_counter() - t)
        t = time.perf_counter()
        data = post(conn, "/v1/jobs?wait=300", batch)
        rest_best = min(rest_best, time.perf_counter() - t)
        results = [j["result"] for j in data["jobs"]]
        assert results == expected, (results, expected)
    conn.close()
    return serial_best, rest_best


def bench_trivial(port, jobs, batch_size):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    one = {"source": TRIVIAL, "function": "f"}
    # Warm up: the workers compile the function once.
    post(conn, "/v1/jobs?wait=60", json.dumps([dict(one, args=[i]) for i in range(100)]))

    # Unbatched: one request per job, keep-alive, each answered with its result.
    single_jobs = max(200, jobs // 20)
    t = time.perf_counter()
    for i in range(single_jobs):
        data = post(conn, "/v1/jobs?wait=60", json.dumps(dict(one, args=[i])))
        assert data["result"] == i + 1
    single_rate = single_jobs / (time.perf_counter() - t)

    # Batched: `batch_size` jobs per request, results in the answer.
    t = time.perf_counter()
    done = 0
    while done < jobs:
        n = min(batch_size, jobs - done)
        body = json.dumps([dict(one, args=[done + i]) for i in range(n)])
        data = post(conn, "/v1/jobs?wait=120", body)
        for i, j in enumerate(data["jobs"]):
            assert j["result"] == done + i + 1, j
        done += n
    batch_rate = jobs / (time.perf_counter() - t)
    conn.close()
    return single_rate, batch_rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--jobs", type=int, default=40000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    proc, port = start_node(args.workers)
    try:
        serial, rest = bench_sum_primes(port, args.repeats)
        print("sum_primes, 8 inputs near 100000, %d workers:" % args.workers)
        print("  serial in-process  %.3f s" % serial)
        print("  ppgate REST batch  %.3f s" % rest)
        print("  speed-up           %.2fx   (target >= 1.9x on 2 workers)" % (serial / rest))
        single, batched = bench_trivial(port, args.jobs, args.batch)
        print("trivial jobs through REST, one client, keep-alive:")
        print("  one job per request  %8.0f jobs/s" % single)
        print("  %5d jobs per batch  %8.0f jobs/s   (%.1fx the unbatched rate; target >= 20000 jobs/s)"
              % (args.batch, batched, batched / single))
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main()
