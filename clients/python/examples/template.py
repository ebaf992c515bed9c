#!/usr/bin/env python3
"""A pp Template: one function, its dependencies and modules fixed; submit(*args) for each input."""

import ppgate as pp


def factorial(n):
    return 1 if n < 2 else n * factorial(n - 1)


def digit_sum(n):
    return sum(int(d) for d in str(factorial(n)))


job_server = pp.Server()
template = pp.Template(job_server, digit_sum, (factorial,))
jobs = [(n, template.submit(n)) for n in (10, 50, 100)]
for n, job in jobs:
    print("digit sum of %d! is %d" % (n, job()))
job_server.destroy()
