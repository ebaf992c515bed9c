#!/usr/bin/env python3
"""Bound methods of user-class instances as jobs: the instance travels first in the arguments
and its class's source goes with it, as pp does."""

import ppgate as pp


class Polynomial:
    def __init__(self, *coefficients):
        self.coefficients = coefficients

    def at(self, x):
        return sum(c * x ** i for i, c in enumerate(self.coefficients))

    def scaled(self, k):
        return Polynomial(*(c * k for c in self.coefficients))


job_server = pp.Server()
p = Polynomial(1, 2, 3)
print("p(2) =", job_server.submit(p.at, (2,))())
q = job_server.submit(p.scaled, (10,))()
print("10p has coefficients", q.coefficients)
print("10p(2) =", job_server.submit(q.at, (2,))())
job_server.destroy()
