"""ppgate: Parallel Python's API on a ppgate node, plus a concurrent.futures executor.

pp programs change only their import line::

    import ppgate as pp
    job_server = pp.Server()
    job = job_server.submit(sum_primes, (100,), (isprime,), ("math",))
    print(job())   # 1060

Unlike pp, a job whose function raised makes ``job()`` raise ppgate.JobError with the remote
type, message and traceback (pp returned None).

Programs written for ppft, pathos's ParallelPool among them, run on ppgate once ``ppft`` names it::

    import sys, ppgate
    sys.modules["ppft"] = ppgate
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)
if TYPE_CHECKING:
    from typing import Any

from ._errors import (DestroyedServerError, JobCancelledError, JobError, JobLostError,
                      JobTimeoutError, SubmitError, WorkerDiedError)
from ._node import find_ppgate
from ._pp import Job, Server, Statistics, Template
from ._refs import Ref

if TYPE_CHECKING:
    from ._executor import Executor


def __getattr__(name: str) -> Any:
    # Executor is loaded on first use: concurrent.futures (and the logging it imports) would
    # otherwise cost every `import ppgate` ~10 ms.
    if name == "Executor":
        from ._executor import Executor
        return Executor
    raise AttributeError("module %r has no attribute %r" % (__name__, name))

_Task = Job  # pp's and ppft's name for the job class (pathos imports it)

version = __version__ = "0.1.0"

__all__ = [
    "DestroyedServerError", "Executor", "Job", "JobCancelledError", "JobError", "JobLostError",
    "JobTimeoutError", "Ref", "Server", "Statistics", "SubmitError", "Template", "WorkerDiedError",
    "find_ppgate", "version",
]
