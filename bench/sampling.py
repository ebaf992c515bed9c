"""Latency sampling shared by the benches."""

import statistics
import time


def latencies(calls, n, block=250):
    """Median round trip of each call, sampled in alternating blocks of `block` calls, so machine
    noise hits all alike. Blocks rather than single calls, and long ones: each measures a loop of
    calls in its steady state. Switching between them costs each a transient (the kernel places the
    processes of the one that was idle anew; ppgate's polling restarts), and each one's idle
    behaviour (Pool's handler threads, ppgate's polling right after a job) falls on the other's
    first samples."""
    samples = [[] for _ in calls]
    for start in range(0, n, block):
        for call, out in zip(calls, samples):
            for i in range(start, min(n, start + block)):
                t = time.perf_counter()
                assert call(i) == i + 1
                out.append(time.perf_counter() - t)
    return [statistics.median(s) for s in samples]
