#!/usr/bin/env python3
"""Big arguments and results: ppgate against multiprocessing.Pool, in the same invocation.

(a) a 100 MiB numpy array argument, the job returns a float (its sum):
    ppgate job time / Pool.apply time, as a speed-up.                Target >= 2x.
(b) a 100 MiB array argument, the job returns it:                 Target >= 2x.
(c) one 200 MiB array (twice --mib) taken by 100 jobs (each reads one element): passed to each job, against
    put once (Server.put) and the Ref passed instead.                 Target >= 10x.
(e) a bound method of an object holding a --mib array, called by 20 jobs: the array passed to
    each job as an argument, against the method (its instance is sent once, each job unpickling
    a fresh copy of it).
(d) the private node's peak resident memory (VmHWM) after (a) to (c), against the payload:
    the node must not hold the payload twice (with shared memory it holds none of it).

Each case alternates Pool and ppgate runs, `--repeats` times, and compares medians. Needs numpy
(Debian: python3-numpy; run with /usr/bin/python3).

With --as-if-remote the client does not claim the node's /dev/shm, as a client on another host:
big pickles then go as attachments of binary WebSocket messages (the node still maps them to its
workers through shared memory).

Usage: python3 bench/bench_data.py [--mib N] [--repeats N] [--as-if-remote]
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clients", "python"))
import numpy  # noqa: E402
import ppgate  # noqa: E402


def total(a):
    return float(a.sum())


def same(a):
    return a


def element(a, i):
    return float(a[i])


class Model:
    def __init__(self, weights):
        self.weights = weights

    def predict(self, i):
        return float(self.weights[i])


def predict(weights, i):
    return float(weights[i])


def timed(call):
    t = time.perf_counter()
    call()
    return time.perf_counter() - t


def peak_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--as-if-remote", action="store_true")
    args = ap.parse_args()
    if args.as_if_remote:
        from ppgate import _shared_memory
        _shared_memory.host_identity = lambda: None
    array = numpy.random.default_rng(1).random(args.mib * 1024 * 1024 // 8)
    expected = float(array.sum())

    with multiprocessing.Pool(2) as pool, ppgate.Server(2) as server:
        # Warm both: workers started, numpy imported in each.
        for _ in range(2):
            pool.apply(total, (array[:10],))
            server.submit(total, (array[:10],))()
        cases = [("(a) %d MiB argument -> float" % args.mib, total, lambda r: abs(r - expected) < 1e-6 * abs(expected)),
                 ("(b) %d MiB argument -> the same array" % args.mib, same, lambda r: numpy.array_equal(r, array))]
        for title, fn, ok in cases:
            pool_times, ppgate_times = [], []
            for _ in range(args.repeats):
                pool_times.append(timed(lambda: ok(pool.apply(fn, (array,))) or sys.exit("Pool: wrong result")))
                ppgate_times.append(timed(lambda: ok(server.submit(fn, (array,))()) or sys.exit("ppgate: wrong result")))
            p, g = statistics.median(pool_times), statistics.median(ppgate_times)
            print("%s: Pool.apply %.1f ms, ppgate %.1f ms: %.2fx" % (title, p * 1e3, g * 1e3, p / g))
        big = numpy.random.default_rng(2).random(2 * args.mib * 1024 * 1024 // 8)  # 200 MiB by default
        jobs = 100

        def each_job_gets_it():
            assert [server.submit(element, (big, i))() for i in range(jobs)] == [float(big[i]) for i in range(jobs)]

        def put_once():
            ref = server.put(big)
            assert [server.submit(element, (ref, i))() for i in range(jobs)] == [float(big[i]) for i in range(jobs)]
            ref.release()

        direct, once = [], []
        for _ in range(max(1, args.repeats // 2)):
            direct.append(timed(each_job_gets_it))
            once.append(timed(put_once))
        d, o = statistics.median(direct), statistics.median(once)
        print("(c) a %d MiB array taken by %d jobs: passed to each %.1f ms, put once %.1f ms: %.1fx"
              % (2 * args.mib, jobs, d * 1e3, o * 1e3, d / o))
        model, calls = Model(array), 20
        expected_predictions = [float(array[i]) for i in range(calls)]

        def array_each_time():
            assert [server.submit(predict, (array, i))() for i in range(calls)] == expected_predictions

        def bound_method():
            assert [server.submit(model.predict, (i,))() for i in range(calls)] == expected_predictions

        direct, once = [], []
        for _ in range(max(1, args.repeats // 2)):
            direct.append(timed(array_each_time))
            once.append(timed(bound_method))
        d, o = statistics.median(direct), statistics.median(once)
        print("(e) a bound method of an object with a %d MiB array, %d calls: array passed to each %.1f ms, "
              "the bound method %.1f ms: %.1fx" % (args.mib, calls, d * 1e3, o * 1e3, d / o))
        node_pid = server._node.proc.pid
        print("(d) the node's peak RSS: %.1f MiB, with %d MiB arguments and results in flight"
              % (peak_rss(node_pid) / 2**20, args.mib))


if __name__ == "__main__":
    main()
