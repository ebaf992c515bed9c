"""Functions whose source is awkward to cut out of their file (test_client.py, TestSourceCut):
lines inside strings, brackets and continued lines that are indented less than the body."""
import functools


def one_line(x): return x + 1


def with_a_string_at_column_zero(x):
    text = """
not code: return 0
"""
    return len(text) + x


def with_brackets_at_column_zero(x):
    values = [1,
2, 3]
    return sum(values) + x


def with_a_continued_line(x):
    total = x + \
1
    return total


def with_comments(x):
    # inside
    y = x * 2
# a comment out of the block, then the body goes on
    return y
    # a comment at the end


def with_a_nested_def(x):
    def inner(y):
        return y * 3
    return inner(x)


async def a_coroutine(x):
    return x


@functools.lru_cache(maxsize=None)
def decorated(x):
    return x - 1


def after_everything(x):
    return x
