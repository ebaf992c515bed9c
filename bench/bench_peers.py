#!/usr/bin/env python3
"""Jobs through a remote node over loopback, as ratios against the local node in the same run.

(a) 2000 trivial jobs (def f(x): return x+1) submitted all then collected through pp.Server(0,
    ppservers=(remote,)) -- every job crosses a peer link -- as a ratio of the same through a
    local pp.Server(2).                                   Target >= 0.5x (ppft stock: ~45 jobs/s).
(b) one trivial job's round trip via the remote node, as a ratio of the local round trip.
                                                          Target <= 2x.

Usage: python3 bench/bench_peers.py [--jobs N] [--repeats N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ppgate  # noqa: E402
from sampling import latencies  # noqa: E402

SECRET = "bench-cluster-secret"


def f(x):
    return x + 1


def rate(server, jobs):
    t = time.perf_counter()
    pending = [server.submit(f, (i,)) for i in range(jobs)]
    assert [p() for p in pending] == [i + 1 for i in range(jobs)]
    return jobs / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    binary = os.environ.get("PPGATE_BINARY", os.path.join(ROOT, "build", "gateway", "ppgate"))
    remote = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--workers", "2",
                               "--peer-listen", "127.0.0.1:0", "--log-level", "warn"],
                              stdout=subprocess.PIPE, env=dict(os.environ, PPGATE_SECRET=SECRET))
    try:
        remote.stdout.readline()
        peer = remote.stdout.readline().decode().split()[4]
        with ppgate.Server(2) as local, ppgate.Server(0, ppservers=(peer,), secret=SECRET) as via:
            deadline = time.monotonic() + 20
            while peer not in via.get_active_nodes():
                if time.monotonic() > deadline:
                    sys.exit("the remote node did not connect")
                time.sleep(0.05)
            rate(local, 200)
            rate(via, 200)
            local_rates, remote_rates = [], []
            for _ in range(args.repeats):
                local_rates.append(rate(local, args.jobs))
                remote_rates.append(rate(via, args.jobs))
            lr, rr = statistics.median(local_rates), statistics.median(remote_rates)
            print("%d trivial jobs, submit all then collect:" % args.jobs)
            print("  local node (2 workers)          %8.0f jobs/s" % lr)
            print("  via a remote node (2 workers)   %8.0f jobs/s" % rr)
            print("  ratio                           %8.2fx   (target >= 0.5x)" % (rr / lr))

            ll, rl = latencies([lambda i: local.submit(f, (i,))(), lambda i: via.submit(f, (i,))()], 1000)
            print("one trivial job's round trip (median of 1000, sampled in alternating blocks of 250):")
            print("  local %.1f us, via the remote node %.1f us, ratio %.2fx   (target <= 2x)"
                  % (ll * 1e6, rl * 1e6, rl / ll))
    finally:
        remote.terminate()
        remote.wait(15)


if __name__ == "__main__":
    main()
