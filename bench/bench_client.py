#!/usr/bin/env python3
"""The Python client against multiprocessing.Pool, in the same invocation (ratios, not times).

(a) 2000 trivial jobs (def f(x): return x+1), submitted all then collected:
    ppgate.Server rate / multiprocessing.Pool(2).apply_async rate.   Target >= 2x (issue 12's floor;
    DESIGN.md asks 3x; ppft: ~0.1x).
(b) one trivial job's round trip: ppgate job() latency / Pool apply_async().get() latency.
    Target <= 1.0x.
(c) pp's sum_primes example (sums of primes below 100000 .. 100700) on 2 workers, as a speed-up
    over serial.   Target >= 1.9x. Pool.map's speed-up on the same inputs is printed alongside: on a
    shared VM, two busy vCPUs often run each other slower, which caps both.
(d) map over many trivial items (default 1M), given as a range and as a list: ppgate.Executor.map
    rate / Pool.map rate, each with its default chunking.   Target >= 1.0x.
(e) start-up: ppgate.Server(2) to its first result (a private node and its workers started) /
    multiprocessing.Pool(2) with fork to its first result.   Target <= 1.0x.
(f) a program's start: a fresh interpreter's `import ppgate`, Server(2) and first result / its
    `import multiprocessing`, Pool(2) with fork and first result (with bytecode cached, as for an
    installed package). Printed for reference.

Usage: python3 bench/bench_client.py [--jobs N] [--repeats N] [--map-items N]
"""

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clients", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ppgate  # noqa: E402
from pp_example import INPUTS, isprime, sum_primes  # noqa: E402
from sampling import latencies  # noqa: E402


def f(x):
    return x + 1


def throughput_pool(pool, jobs):
    t = time.perf_counter()
    pending = [pool.apply_async(f, (i,)) for i in range(jobs)]
    results = [p.get() for p in pending]
    elapsed = time.perf_counter() - t
    assert results == [i + 1 for i in range(jobs)]
    return jobs / elapsed


def throughput_ppgate(server, jobs):
    t = time.perf_counter()
    pending = [server.submit(f, (i,)) for i in range(jobs)]
    results = [p() for p in pending]
    elapsed = time.perf_counter() - t
    assert results == [i + 1 for i in range(jobs)]
    return jobs / elapsed


# (f): one program's start, timed from its first statement to its first result.
PROGRAM_START = r"""
import time
started = time.perf_counter()
import sys
def f(x):
    return x + 1
if sys.argv[1] == "pool":
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.apply(f, (1,)) == 2
        print(time.perf_counter() - started)
else:
    sys.path.insert(0, sys.argv[1])
    import ppgate
    with ppgate.Server(2) as server:
        assert server.submit(f, (1,))() == 2
        print(time.perf_counter() - started)
"""


def program_starts(repeats):
    """Medians of (f), each run in a fresh interpreter, interleaved."""
    client = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clients", "python")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, PYTHONPYCACHEPREFIX=cache)  # bytecode, as an installed package has
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        script = os.path.join(cache, "program_start.py")
        with open(script, "w") as out:
            out.write(PROGRAM_START)
        times = {"pool": [], client: []}
        for i in range(repeats + 1):
            for which in times:
                r = subprocess.run([sys.executable, script, which], capture_output=True, text=True,
                                   env=env, timeout=120, check=True)
                if i:  # the first run of each writes the bytecode
                    times[which].append(float(r.stdout.split()[-1]))
        return statistics.median(times["pool"]), statistics.median(times[client])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--map-items", type=int, default=1_000_000)
    args = ap.parse_args()

    with multiprocessing.Pool(args.workers) as pool, ppgate.Server(args.workers) as server:
        # Warm both up so neither pays for process start or first-use costs in the measurement.
        throughput_pool(pool, 200)
        throughput_ppgate(server, 200)
        pool_rates, pp_rates = [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            pool_rates.append(throughput_pool(pool, args.jobs))
            pp_rates.append(throughput_ppgate(server, args.jobs))
        pool_rate, pp_rate = statistics.median(pool_rates), statistics.median(pp_rates)
        print("%d trivial jobs, submit all then collect, %d workers:" % (args.jobs, args.workers))
        print("  multiprocessing.Pool.apply_async  %8.0f jobs/s" % pool_rate)
        print("  ppgate.Server.submit              %8.0f jobs/s" % pp_rate)
        print("  ratio                             %8.2fx   (target >= 2x)" % (pp_rate / pool_rate))

        with ppgate.Executor(url=server.url, token=server._token) as executor:  # the same node
            pool_lat, pp_lat, ex_lat = latencies([lambda i: pool.apply_async(f, (i,)).get(),
                                                  lambda i: server.submit(f, (i,))(),
                                                  lambda i: executor.submit(f, i).result()], 1000)
        print("one trivial job's round trip (median of 1000, sampled in alternating blocks of 250):")
        print("  Pool apply_async().get()  %7.1f us" % (pool_lat * 1e6))
        print("  ppgate submit()()         %7.1f us" % (pp_lat * 1e6))
        print("  ratio                     %7.2fx   (target <= 1.0x)" % (pp_lat / pool_lat))
        print("  (ppgate.Executor submit().result(): %.1f us, %.2fx Pool)" % (ex_lat * 1e6, ex_lat / pool_lat))

        serial_best = parallel_best = pool_best = float("inf")
        for _ in range(args.repeats):  # best of: noise only ever slows a run down
            t = time.perf_counter()
            expected = [sum_primes(n) for n in INPUTS]
            serial_best = min(serial_best, time.perf_counter() - t)
            t = time.perf_counter()
            jobs = [server.submit(sum_primes, (n,), (isprime,), ("math",)) for n in INPUTS]
            results = [j() for j in jobs]
            parallel_best = min(parallel_best, time.perf_counter() - t)
            assert results == expected
            t = time.perf_counter()
            assert pool.map(sum_primes, INPUTS, chunksize=1) == expected
            pool_best = min(pool_best, time.perf_counter() - t)
        print("sum_primes, 8 inputs near 100000:")
        print("  serial %.3f s, ppgate %.3f s, speed-up %.2fx   (target >= 1.9x on 2 workers)"
              % (serial_best, parallel_best, serial_best / parallel_best))
        print("  for reference, multiprocessing.Pool(%d).map on the same inputs: %.2fx (what this"
              " machine's CPUs allow)" % (args.workers, serial_best / pool_best))

        with ppgate.Executor(url=server.url, token=server._token) as executor:  # the same node
            # A range (which ppgate sends as ranges, Pool as lists) and the same items as a list.
            for items in (range(args.map_items), list(range(args.map_items))):
                expected_sum = sum(i + 1 for i in items)
                pool_map = ex_map = float("inf")
                for _ in range(max(1, args.repeats // 2)):  # best of, interleaved
                    t = time.perf_counter()
                    assert sum(pool.map(f, items)) == expected_sum
                    pool_map = min(pool_map, time.perf_counter() - t)
                    t = time.perf_counter()
                    assert sum(executor.map(f, items)) == expected_sum
                    ex_map = min(ex_map, time.perf_counter() - t)
                print("map over %d trivial items (a %s), default chunking:" % (args.map_items, type(items).__name__))
                print("  multiprocessing.Pool.map    %10.0f items/s" % (args.map_items / pool_map))
                print("  ppgate.Executor.map         %10.0f items/s" % (args.map_items / ex_map))
                print("  ratio                       %10.2fx   (target >= 1.0x)" % (pool_map / ex_map))

    pool_start, pp_start = [], []
    for _ in range(3 * args.repeats):  # interleaved (a start is short: more samples for the medians)
        t = time.perf_counter()
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            assert pool.apply(f, (1,)) == 2
            pool_start.append(time.perf_counter() - t)
        t = time.perf_counter()
        with ppgate.Server(args.workers) as server:
            assert server.submit(f, (1,))() == 2
            pp_start.append(time.perf_counter() - t)
    p, g = statistics.median(pool_start), statistics.median(pp_start)
    print("start-up to the first result, %d workers:" % args.workers)
    print("  multiprocessing.Pool (fork)   %6.1f ms" % (p * 1e3))
    print("  ppgate.Server                 %6.1f ms" % (g * 1e3))
    print("  ratio                         %6.2fx   (target <= 1.0x)" % (g / p))

    p, g = program_starts(max(5, args.repeats))
    print("a program's start to its first result (fresh interpreter, import included):")
    print("  import multiprocessing, Pool(2)   %6.1f ms" % (p * 1e3))
    print("  import ppgate, Server(2)          %6.1f ms" % (g * 1e3))
    print("  ratio                             %6.2fx" % (g / p))


if __name__ == "__main__":
    main()
