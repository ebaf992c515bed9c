"""Module-level functions and classes the client tests send as jobs (their source must live in a
file, as with pp)."""

import math
import os
import time


def isprime(n):
    if n < 2:
        return False
    return all(n % d for d in range(2, int(math.sqrt(n)) + 1))


def sum_primes(n):
    return sum(x for x in range(2, n) if isprime(x))


def uses_math_without_declaring_it(x):
    return math.factorial(x)


def add(a, b=0, *, c=0):
    return a + b + c


def nap(seconds):
    time.sleep(seconds)
    return seconds


def crash():
    os._exit(13)


def fail(message):
    raise KeyError(message)


def shout(text):
    print("out:", text)
    import sys
    sys.stderr.write("err:" + text)
    return text.upper()


def getpid(_=None):
    return os.getpid()


def scale_point(point, k):
    return Point(point.x * k, point.y * k)


def uses_global_value(x):
    return x * FACTOR  # noqa: F821 - supplied through globals=


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def norm2(self):
        return self.x * self.x + self.y * self.y

    def plus(self, other):
        return Point(self.x + other.x, self.y + other.y)

    @staticmethod
    def origin_distance(x, y):
        return math.hypot(x, y)

    @classmethod
    def unit(cls):
        return cls(1, 0).norm2()

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def make_multiplier(k):
    def multiply(x):
        return x * k
    return multiply


def make_bad_closure():
    import threading
    lock = threading.Lock()

    def locked(x):
        with lock:
            return x
    return locked


def fail_at(x, bad):
    """x, unless x == bad: then ValueError (for map's exceptions at their item)."""
    if x == bad:
        raise ValueError("item %r is bad" % x)
    return x


def flaky(counter, failures):
    """Fails until it has been called `failures` times (counted in the file `counter`), then
    returns how many calls it took."""
    calls = (int(open(counter).read()) if os.path.exists(counter) else 0) + 1
    open(counter, "w").write(str(calls))
    if calls <= failures:
        raise ConnectionError("flaky call %d" % calls)
    return calls


def hold(release, started=None):
    """Holds its worker until the file `release` exists (at most 30 s); creates `started` first."""
    if started:
        open(started, "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(release)


def mark(path, tag):
    """Appends its tag to the file `path`: the file gives the order jobs ran in."""
    with open(path, "a") as f:
        f.write("%d\n" % tag)
    return tag
