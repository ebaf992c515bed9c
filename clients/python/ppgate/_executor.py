"""ppgate.Executor: a concurrent.futures.Executor whose calls run on a ppgate node."""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple, TypeVar

    T = TypeVar("T")

from ._errors import JobError
from ._refs import Ref
from ._pp import Call, Job, Server, check_job_options


def _cancel_job_of(future: concurrent.futures.Future[Any], job: Job) -> None:
    """A future cancelled by its owner cancels its job on the node. The notify step is what
    executors owe a cancelled future, so that concurrent.futures.wait() counts it as done."""
    if future.cancelled():
        future.set_running_or_notify_cancel()
        job.cancel()


class _JobFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """A future whose result() and exception() read the job's result on the waiting thread, as
    job() does (docs/python-client.md, "Speed"), rather than wait for the session's background
    reader to hand it over: one thread wake-up less on every call."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self._server = server

    def _read_until_done(self, timeout: Optional[float]) -> Optional[float]:
        if not self.done():
            self._server.read_results_until(self.done, timeout)
        # Done, or the timeout has passed: the base class answers at once either way.
        return None if self.done() else 0

    def result(self, timeout: Optional[float] = None) -> Any:
        return super().result(self._read_until_done(timeout))

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        return super().exception(self._read_until_done(timeout))


class Executor(concurrent.futures.Executor):
    """Runs calls on a ppgate node; the futures work with concurrent.futures.wait/as_completed.

    ``max_workers`` sizes a private node (default: one worker per CPU); with ``url=`` (and
    ``token=``) the calls go to a running node; with ``cluster=`` (a ppgate.slurm.SlurmCluster),
    to the cluster's nodes, which join the private node (then of ``max_workers`` workers, default 0). ``map`` sends its calls in chunks of ``chunksize``
    calls per job (by default as ``multiprocessing.Pool.map`` picks it: about four chunks per
    slot), yields results in order while later chunks run, and raises a call's exception (a
    ``JobError``) when the iteration reaches that call. ``retries``, ``retry_backoff`` and
    ``priority`` apply to every call, as Server.submit takes them (a map chunk is rerun only when
    the chunk as a whole fails, not when one of its calls raises).
    """

    def __init__(self, max_workers: Optional[int] = None, *, url: Optional[str] = None,
                 token: Optional[str] = None, cluster: Any = None, retries: int = 0,
                 retry_backoff: float = 0.0, priority: int = 0) -> None:
        check_job_options(retries, retry_backoff, priority)
        # For every call (Server.submit describes them).
        self._retries, self._retry_backoff, self._priority = retries, retry_backoff, priority
        if cluster is not None:
            # The calls run on the cluster's nodes (ppgate.slurm.SlurmCluster), which join a
            # private node with max_workers workers of its own (default none).
            if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 0):
                raise ValueError("max_workers must be 0 or more")
            self._server = Server(max_workers or 0, ppservers=cluster, url=url, token=token)
        else:
            if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
                raise ValueError("max_workers must be greater than 0")
            self._server = Server("autodetect" if max_workers is None else max_workers, url=url, token=token)
        self._lock = threading.Lock()
        self._futures: Set[concurrent.futures.Future[Any]] = set()
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        return self._submit_call(self._call(fn, args, kwargs))

    def put(self, value: Any) -> Ref:
        """Sends `value` to the node once; pass the returned Ref to jobs in its place (Server.put)."""
        return self._server.put(value)

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: Optional[int] = None) -> Iterator[T]:
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        # As concurrent.futures does: every call is submitted now, and `timeout` runs from now.
        deadline = None if timeout is None else time.monotonic() + timeout
        # The arguments travel as columns, one per iterable (cut to the shortest, as zip does).
        # A range stays one: its slices are ranges, which pickle in a few bytes, not as lists;
        # a list or a tuple is sliced as it is (the slices are copies, taken now).
        columns: List[Any] = [it if type(it) in (range, list, tuple) else list(it) for it in iterables]
        count = min(map(len, columns), default=0)
        if chunksize is None:
            chunks, extra = divmod(count, max(1, self._server.get_ncpus()) * 4)
            chunksize = chunks + 1 if extra else max(chunks, 1)
        # One map job per chunk; each future gives (values, errors).
        futures = [self._submit_call(self._call(fn, tuple(c[i:min(i + chunksize, count)] for c in columns),
                                                map=True))
                   for i in range(0, count, chunksize)]
        # The values of each chunk are yielded by chain at C speed: a generator's own `yield
        # from` would cost about as much per item as the call in the worker.
        return itertools.chain.from_iterable(self._results_in_order(futures, deadline))

    def _call(self, fn: Callable[..., Any], args: Tuple[Any, ...], kwargs: Optional[Dict[str, Any]] = None,
              map: bool = False) -> Call:
        return Call(fn, args, kwargs, retries=self._retries, retry_backoff=self._retry_backoff,
                    priority=self._priority, map=map)

    def _submit_call(self, call: Call) -> concurrent.futures.Future[Any]:
        """Sends `call` as a job and returns its future. A call that cannot be sent (its function
        has no source, an argument does not pickle) raises here and leaves no future behind for
        shutdown to wait on."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = _JobFuture(self._server)
            job = Job(self._server, future=future)
            self._futures.add(future)
        try:
            self._server.submit_call(job, call)
        except BaseException:
            self._forget(future)
            raise
        future.add_done_callback(self._forget)
        future.add_done_callback(lambda f: _cancel_job_of(f, job))
        return future

    @staticmethod
    def _results_in_order(futures: List[concurrent.futures.Future[Any]], deadline: Optional[float]) -> Iterator[List[Any]]:
        """Each chunk's values, in order; a call's exception raises after the values before it.
        A generator of its own, so that submitting happens at the call, not at the first next();
        whoever drops it (closing it) cancels the chunks not yet read."""
        try:
            for future in futures:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                values, errors = future.result(left)
                if not errors:
                    yield values
                    continue
                first_error = errors[0]
                yield values[:first_error[0]]
                raise JobError(*first_error[1:])
        finally:
            for future in futures:
                future.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for f in futures:
                f.cancel()
        if wait:
            concurrent.futures.wait(futures)
        self._server.destroy()
