"""Latency sampling shared by the benches."""

import statistics
import time


def latencies(calls, n, block=50):
    """Median round trip of each call, sampled in alternating blocks of `block` calls, so machine
    noise hits all alike. Blocks rather than single calls: each system's own idle behaviour (Pool's
    handler threads, ppgate's busy polling right after a job) would otherwise fall on the other's
    samples."""
    samples = [[] for _ in calls]
    for start in range(0, n, block):
        for call, out in zip(calls, samples):
            for i in range(start, min(n, start + block)):
                t = time.perf_counter()
                assert call(i) == i + 1
                out.append(time.perf_counter() - t)
    return [statistics.median(s) for s in samples]
