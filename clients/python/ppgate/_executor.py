"""ppgate.Executor: a concurrent.futures.Executor whose calls run on a ppgate node."""

import concurrent.futures
import threading

from ._pp import Job, Server


def _cancel_job_of(future, job):
    """A future cancelled by its owner cancels its job on the node. The notify step is what
    executors owe a cancelled future, so that concurrent.futures.wait() counts it as done."""
    if future.cancelled():
        future.set_running_or_notify_cancel()
        job.cancel()


class _JobFuture(concurrent.futures.Future):
    """A future whose result() and exception() read the job's result on the waiting thread, as
    job() does (docs/python-client.md, "Speed"), rather than wait for the session's background
    reader to hand it over: one thread wake-up less on every call."""

    def __init__(self, session):
        super().__init__()
        self._session = session

    def _read_until_done(self, timeout):
        if not self.done():
            self._session.wait_for(self.done, timeout)
        # Done, or the timeout has passed: the base class answers at once either way.
        return None if self.done() else 0

    def result(self, timeout=None):
        return super().result(self._read_until_done(timeout))

    def exception(self, timeout=None):
        return super().exception(self._read_until_done(timeout))


class Executor(concurrent.futures.Executor):
    """Runs calls on a ppgate node; the futures work with concurrent.futures.wait/as_completed.

    ``max_workers`` sizes a private node (default: one worker per CPU); with ``url=`` (and
    ``token=``) the calls go to a running node. ``map``'s ``chunksize`` is accepted and has no
    effect: submissions are batched on the connection anyway.
    """

    def __init__(self, max_workers=None, *, url=None, token=None):
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        self._server = Server("autodetect" if max_workers is None else max_workers, url=url, token=token)
        self._lock = threading.Lock()
        self._futures = set()
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = _JobFuture(self._server._session)
            job = Job(self._server, future=future)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        future.add_done_callback(lambda f: _cancel_job_of(f, job))
        self._server._send(job, fn, args, kwargs, (), (), None, "default", None, 0)
        return future

    def _forget(self, future):
        with self._lock:
            self._futures.discard(future)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return super().map(fn, *iterables, timeout=timeout)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for f in futures:
                f.cancel()
        if wait:
            concurrent.futures.wait(futures)
        self._server.destroy()
