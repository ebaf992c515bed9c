#!/usr/bin/env python3
"""pp's dynamic_ncpus example: the worker pool resized between rounds of the same work."""

import math
import time

import ppgate as pp


def part_sum(start, end):
    """Calculates partial sum"""
    sum = 0
    for x in range(start, end):
        if x % 2 == 0:
            sum -= 1.0 / x
        else:
            sum += 1.0 / x
    return sum


start = 1
end = 2000000
parts = 32
step = (end - start) // parts + 1

job_server = pp.Server()
for ncpus in (1, 2, 4, 3, 1):
    job_server.set_ncpus(ncpus)
    started = time.time()
    jobs = [job_server.submit(part_sum, (start + i * step, min(start + (i + 1) * step, end)), (), ())
            for i in range(parts)]
    result = sum(job() for job in jobs)
    print("ncpus=%d workers=%d diff=%.3g time=%.2fs"
          % (ncpus, job_server.get_ncpus(), math.log(2) - result, time.time() - started))
job_server.print_stats()
