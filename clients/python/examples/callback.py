#!/usr/bin/env python3
"""pp's callback example: partial sums accumulated by a callback under a lock."""

import math
import threading

import ppgate as pp


class Sum:
    def __init__(self):
        self.value = 0.0
        self.lock = threading.Lock()
        self.count = 0

    # the callback function
    def add(self, value):
        # we must use lock here because += is not atomic
        self.count += 1
        self.lock.acquire()
        self.value += value
        self.lock.release()


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
# Divide the task into 64 subtasks
parts = 64
step = (end - start) // parts + 1

job_server = pp.Server()
sum = Sum()

for index in range(parts):
    starti = start + index * step
    endi = min(start + (index + 1) * step, end)
    # Submit a job which will calculate partial sum; add is called with the result
    job_server.submit(part_sum, (starti, endi), callback=sum.add)

# Wait for jobs in all groups to finish
job_server.wait()

# Compare the partial sums with the exact result of ln 2
print("Partial sum is", sum.value, "| diff =", math.log(2) - sum.value)
print("Callbacks run:", sum.count)
job_server.print_stats()
