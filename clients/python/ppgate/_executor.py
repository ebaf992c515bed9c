"""ppgate.Executor: a concurrent.futures.Executor whose calls run on a ppgate node."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable, Iterable, Iterator, Optional, Set, TypeVar

from ._pp import Call, Job, Server

T = TypeVar("T")


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
    ``token=``) the calls go to a running node. ``map``'s ``chunksize`` is accepted and has no
    effect: submissions are batched on the connection anyway.
    """

    def __init__(self, max_workers: Optional[int] = None, *, url: Optional[str] = None,
                 token: Optional[str] = None) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        self._server = Server("autodetect" if max_workers is None else max_workers, url=url, token=token)
        self._lock = threading.Lock()
        self._futures: Set[concurrent.futures.Future[Any]] = set()
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = _JobFuture(self._server)
            job = Job(self._server, future=future)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        future.add_done_callback(lambda f: _cancel_job_of(f, job))
        self._server.submit_call(job, Call(fn, args, kwargs))
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[T]:
        return super().map(fn, *iterables, timeout=timeout)

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
