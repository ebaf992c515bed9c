"""Parallel Python's API (pp / ppft) on a ppgate node: Server, the job object, Template."""

from __future__ import annotations

import atexit
import base64
import binascii
import collections
import itertools
import json
import os
import pickle
import sys
import threading
import time
import types
import warnings
import weakref

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)

from . import _shared_memory as shared_memory
from ._errors import DestroyedServerError, JobError, JobLostError, SubmitError
from ._errors import error_from_job
from ._functions import (PLAIN_TYPES, FunctionSpec, all_plain, closure_values, describe,
                         dumps_noting_sources, name_unpicklable, with_sources)
from ._node import PrivateNode, python_version, random_token
from ._refs import Ref
from ._session import Session, host_and_port, open_session

if TYPE_CHECKING:  # imported where used: `import ppgate` stays quick (docs/python-client.md)
    from typing import Any, Callable, Dict, List, Optional, Tuple, Union
    import concurrent.futures
    import http.client
    from queue import SimpleQueue

_PICKLE = pickle.HIGHEST_PROTOCOL
_a2b_base64 = binascii.a2b_base64  # base64.b64decode without its Python wrapper
_b2a_base64 = binascii.b2a_base64  # (newline=False) base64.b64encode without its wrapper
_EMPTY_ARGS = base64.b64encode(pickle.dumps((), _PICKLE)).decode()


class Statistics:
    """Per-node statistics, as pp's get_stats() returns them."""

    def __init__(self, ncpus: int, rworker: Any = None) -> None:
        self.ncpus = ncpus
        self.time = 0.0
        self.njobs = 0
        self.rworker = rworker

    def __repr__(self) -> str:
        return "Statistics(ncpus=%r, njobs=%r, time=%r)" % (self.ncpus, self.njobs, self.time)


class Call:
    """One call to run on a node, as Server.submit and Executor.submit describe it. (A plain
    class: a dataclass would cost `import ppgate` the dataclasses module, and a frozen one each
    job ~2 us more.)"""

    __slots__ = ("func", "args", "kwargs", "depfuncs", "modules", "globals", "group", "timeout", "retries",
                 "retry_backoff", "priority", "detach", "map")

    def __init__(self, func: Callable[..., Any], args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None,
                 depfuncs: Tuple[Any, ...] = (), modules: Tuple[str, ...] = (),
                 globals: Optional[Dict[str, Any]] = None, group: str = "default", timeout: Optional[float] = None,
                 retries: int = 0, retry_backoff: float = 0.0, priority: int = 0, detach: bool = False,
                 map: bool = False) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.depfuncs = depfuncs
        self.modules = modules
        self.globals = globals
        self.group = group
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.priority = priority
        self.detach = detach
        # A map job (docs/rest.md, "Map jobs"): `args` holds one column of arguments per
        # parameter, as map() takes them, and the result is (values, [(index, type, message,
        # traceback)]).
        self.map = map


def check_job_options(retries: int, retry_backoff: float, priority: int) -> None:
    """Refuses, before anything is sent, what the node would refuse (docs/rest.md)."""
    if type(retries) is int and type(priority) is int and type(retry_backoff) in (int, float) \
            and 0 <= retries <= 100 and 0 <= retry_backoff <= 3600 and -10**9 <= priority <= 10**9:
        return  # (every job passes here: one test of each, no error message to pick)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        raise ValueError("retries must be an integer from 0 to 100")
    if not isinstance(retry_backoff, (int, float)) or isinstance(retry_backoff, bool) or not 0 <= retry_backoff <= 3600:
        raise ValueError("retry_backoff must be a number of seconds from 0 to 3600")
    if not isinstance(priority, int) or isinstance(priority, bool) or not -10**9 <= priority <= 10**9:
        raise ValueError("priority must be an integer from -1000000000 to 1000000000")


class Job:
    """A submitted job (pp's _Task): call it for the result.

    ``job()`` waits and returns the result, or raises ppgate.JobError (and its subclasses) when the
    job failed, timed out, was cancelled or lost. ``job(raw_result=True)`` returns the pickled
    result. The job's captured output is printed on the first retrieval, as pp does, and is kept
    in ``stdout``/``stderr``.
    """

    # Jobs are many and short-lived: no per-job lock or event. A job ends on the session's reader
    # thread (or its callback thread), which sets the fields, then `finished`, then wakes waiters
    # through the server's condition.
    __slots__ = ("id", "group", "stdout", "stderr", "callback_error", "finished", "_server",
                 "_callback", "_callbackargs", "_future", "_raw", "_result", "_error", "_printed",
                 "_tag", "_ending", "_lock", "_shared_files", "_refs", "_attached")

    id: Optional[int]
    group: str
    stdout: str
    stderr: str
    callback_error: Optional[Exception]
    finished: bool
    _tag: Optional[int]

    def __init__(self, server: Server, group: str = "default", callback: Optional[Callable[..., Any]] = None,
                 callbackargs: Tuple[Any, ...] = (), future: Optional[concurrent.futures.Future[Any]] = None) -> None:
        self.id = None  # the node's job id: chosen by this client as it submits the job
        self.group = group
        self.stdout = ""
        self.stderr = ""
        self.callback_error = None  # what a raising callback raised
        self.finished = False
        self._server = server
        self._callback = callback
        self._callbackargs = callbackargs
        self._future = future
        self._raw: Optional[bytes] = None
        self._result: Any = None
        self._error: Optional[JobError] = None
        self._printed = False
        self._tag = None  # this connection's name for the job (see _session.py)
        self._ending = False
        self._lock: Optional[threading.Lock] = None  # made on demand (see `lock`)
        self._shared_files: Optional[List[str]] = None  # its arguments in shared memory
        self._refs: Optional[List[Ref]] = None  # the values put once that it takes, kept until it ends
        self._attached = False  # re-attached (Server.job): its end is asked of the node over REST

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits for the job to end; returns True if it has ended."""
        if self.finished:
            return True
        if self._attached:
            return self._server._poll_job(self, timeout)
        if self._callback is None and self._future is None and self._server._session is not None:
            # Its end arrives as a message: read it on this thread (see _session.py).
            return self._server._session.wait_for(lambda: self.finished, timeout)
        return self._server._wait_for(lambda: self.finished, timeout)

    def __call__(self, raw_result: bool = False, timeout: Optional[float] = None) -> Any:
        if not self.finished and not self.wait(timeout):
            raise TimeoutError("job %s has not finished within %s s" % (self.id, timeout))
        if not self._printed:
            self._printed = True
            if self.stdout:
                print(self.stdout, end="")
            if self.stderr:
                print(self.stderr, end="", file=sys.stderr)
        if self._error is not None:
            raise self._error
        if raw_result and self._raw is None:
            return pickle.dumps(self._result, _PICKLE)  # the result came in parts
        return self._raw if raw_result else self._result

    def cancel(self) -> None:
        """Asks the node to cancel the job: a queued job is dropped, a running one stopped."""
        session = self._server._session
        if session is not None and not self.finished:
            session.cancel(self)

    def __repr__(self) -> str:
        state = "finished" if self.finished else "pending"
        return "<ppgate.Job id=%s group=%r %s>" % (self.id, self.group, state)

    # --- what pp's _Task has, and pathos reads ---

    @property
    def tid(self) -> Optional[int]:
        """pp's task id: the node's job id once known, else this connection's number for it."""
        return self.id if self.id is not None else self._tag

    @property
    def server(self) -> Server:
        return self._server

    @property
    def callback(self) -> Optional[Callable[..., Any]]:
        return self._callback

    @property
    def callbackargs(self) -> Tuple[Any, ...]:
        return self._callbackargs

    @property
    def lock(self) -> threading.Lock:
        """A lock held until the job has finished, as pp's _Task.lock (pathos waits on it)."""
        with self._server._cv:
            if self._lock is None:
                self._lock = threading.Lock()
                if not self.finished:
                    self._lock.acquire()  # released by Server._job_finished
            return self._lock

    @property
    def sresult(self) -> Optional[bytes]:
        """pp's pickled ``(result, output)`` pair, once the job has finished (None before). For
        a job that failed: ``(None, its traceback and output)``, as pp's workers send it."""
        if not self.finished:
            return None
        if self._error is None:
            return pickle.dumps((self._result, self.stdout + self.stderr), _PICKLE)
        error = self._error
        text = getattr(error, "traceback", "") or "%s: %s\n" % (type(error).__name__, error)
        return pickle.dumps((None, text + self.stdout + self.stderr), _PICKLE)

    # --- called by the session's threads ---

    def _complete(self, data: Dict[str, Any], notify: bool = True) -> None:
        stdout, stderr = data.get("stdout", ""), data.get("stderr", "")
        if data["status"] == "done":
            raw: Optional[bytes] = None
            result: Any = None
            error: Optional[JobError] = None
            try:
                value = data["result"]
                if isinstance(value, str):
                    raw = _a2b_base64(value)
                    result = pickle.loads(raw)
                else:  # in parts: out-of-band buffers, maybe in shared memory (_shared_memory.py)
                    try:
                        result = shared_memory.load(value, base64.b64decode, data.get("attachments"))
                    finally:
                        if "shm" in value:
                            shared_memory.remove(value["shm"])
            except Exception as exc:  # noqa: BLE001 - becomes the job's error
                raw = result = None
                error = JobError(type(exc).__name__, "the result could not be unpickled here: %s" % exc,
                                 "", stdout, stderr, self.id)
            self._end(raw, result, error, stdout, stderr, notify)
        else:
            self._end(None, None, error_from_job(data), stdout, stderr, notify)

    def _release_shared_files(self) -> None:
        if self._shared_files is not None:
            for name in self._shared_files:
                shared_memory.remove(name)
            self._shared_files = None
        if self._refs is not None:
            for ref in self._refs:
                ref._job_ended()
            self._refs = None

    def _fail(self, error: JobError) -> None:
        self._end(None, None, error, error.stdout, error.stderr)

    def _end(self, raw: Optional[bytes], result: Any, error: Optional[JobError], stdout: str, stderr: str,
             notify: bool = True) -> None:
        # A job ends once: a result racing a connection loss is settled by the first to arrive.
        with self._server._ending_lock:
            if self._ending:
                return
            self._ending = True
        self._raw, self._result, self._error = raw, result, error
        self.stdout, self.stderr = stdout, stderr
        if self._shared_files is not None or self._refs is not None:
            self._release_shared_files()
        # The future's done callbacks hold this job (to cancel it) and outlive it: the job lets go
        # of the future, or the pair would be a cycle keeping the result until a gc collection.
        future, self._future = self._future, None
        if future is not None:
            if not future.done():
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
            self._server._job_finished(self, notify)
        elif self._callback is not None and error is None:
            self._server._run_callback(self)
        else:
            self._server._job_finished(self, notify)


class _Pickles:
    """The pickled fields of one job, or one value put once: base64 of the pickle or, for a big
    pickle, its parts, in a file when the node shares this host's memory, else as attachments of
    a binary message (_shared_memory.py). Keeps the files it wrote, the Refs its pickles name (in
    the order they number them) and the classes and functions in them that travel as source."""

    __slots__ = ("shm_prefix", "binary", "files", "refs", "travelling", "size", "_session", "_takes_refs")

    def __init__(self, session: Session, takes_refs: bool = True) -> None:
        self.shm_prefix = session.shm_prefix
        self.binary = session.binary
        self.files: List[str] = []
        self.refs: List[Ref] = []
        self.travelling: List[Any] = []
        self.size = 0  # bytes the fields take in a message
        self._session = session
        self._takes_refs = takes_refs

    def field(self, value: Any) -> Any:
        if type(value) is tuple and all_plain(value):
            # The common case: small, and nothing to look for.
            stream = pickle.dumps(value, _PICKLE)
            if (self.shm_prefix is None and not self.binary) or len(stream) < shared_memory.THRESHOLD:
                text = _b2a_base64(stream, newline=False).decode("ascii")
                self.size += len(text) + 16
                return text
            return self._shared(stream, [])
        persistent_id = self._persistent_id if self._takes_refs else None
        if self.shm_prefix is None and not self.binary:
            return self._inline(dumps_noting_sources(value, self.travelling, None, persistent_id))
        buffers: List[pickle.PickleBuffer] = []
        stream = dumps_noting_sources(value, self.travelling, buffers, persistent_id)
        try:
            raws = [b.raw() for b in buffers]
        except BufferError:  # a non-contiguous buffer: pickle it in-band
            raws = None
        if raws is None or len(stream) + sum(r.nbytes for r in raws) < shared_memory.THRESHOLD:
            if buffers:
                stream = dumps_noting_sources(value, [], None, persistent_id)
            return self._inline(stream)
        return self._shared(stream, raws)

    def pickled(self, stream: bytes, raws: List[memoryview]) -> Any:
        """The field of a pickle made already (with out-of-band buffers only when the session
        takes them: shared memory or binary messages)."""
        if self.shm_prefix is None and not self.binary:
            return self._inline(stream)
        return self._shared(stream, raws)

    def _inline(self, stream: bytes) -> str:
        text = _b2a_base64(stream, newline=False).decode("ascii")
        self.size += len(text) + 16
        return text

    def _shared(self, stream: bytes, raws: List[memoryview]) -> Any:
        if self.shm_prefix is None:  # another host: attachments of a binary message
            attached = shared_memory.Attached(stream, raws)
            self.size += attached.nbytes + 32 * len(attached.parts) + 128
            return attached
        parts = shared_memory.write(self.shm_prefix, stream, raws)
        self.files.append(parts["shm"])
        self.size += 32 * len(parts["parts"]) + 128
        return parts

    def _persistent_id(self, obj: Any) -> Optional[int]:
        """A pickler's persistent_id: a Ref becomes its index in `refs` (the job's "refs")."""
        if type(obj) is not Ref:
            return None
        for index, ref in enumerate(self.refs):
            if ref is obj:
                break
        else:
            obj._taken_by_job(self._session)
            self.refs.append(obj)
            index = len(self.refs) - 1
        # The worker unpickles a value sent once afresh for each job (-1 - index), one put once
        # once for all its jobs (index).
        return -1 - index if obj.fresh else index

    def abandon(self) -> None:
        """Nothing was sent: remove the files, and the Refs are not taken after all."""
        for name in self.files:
            shared_memory.remove(name)
        for ref in self.refs:
            ref._job_ended()


class _SentOnce:
    """A closure's big captured values and a bound method's big instance, sent to the node once
    rather than with every job: each becomes a Ref that the node keeps and forwards once per link,
    and that every job unpickles a fresh copy of, so jobs see what they saw when it went with each
    of them. Known by the SHA-256 of its pickle, so a value changed between jobs goes again; the
    MAX_COUNT most recent (at most MAX_BYTES together) are kept, older ones released.

    Through shared memory, a big value costs a job one write into a file that the workers map,
    and no copy through the node: hashing it would cost as much. There it is sent once only when
    the node has peers to forward it to (``ppservers``)."""

    MAX_COUNT = 32
    MAX_BYTES = 1 << 30

    def __init__(self, through_shared_memory: bool) -> None:
        self.through_shared_memory = through_shared_memory
        self._lock = threading.Lock()
        self._refs: "collections.OrderedDict[bytes, Tuple[Ref, int]]" = collections.OrderedDict()
        self._bytes = 0

    def stand_in(self, server: "Server", session: Session, value: Any) -> Any:
        """`value`, or a Ref to send in its place when its pickle is big."""
        if session.shm_prefix is not None and not self.through_shared_memory:
            return value
        if type(value) in PLAIN_TYPES and not (type(value) in (str, bytes)
                                               and len(value) >= shared_memory.THRESHOLD):
            return value
        out_of_band = session.shm_prefix is not None or session.binary
        travelling: List[Any] = []
        buffers: List[pickle.PickleBuffer] = []
        try:
            stream = dumps_noting_sources(value, travelling, buffers if out_of_band else None)
            try:
                raws = [b.raw() for b in buffers]
            except BufferError:  # a non-contiguous buffer: pickle it in-band
                del travelling[:]
                stream, raws = dumps_noting_sources(value, travelling), []
        except Exception:  # noqa: BLE001 - a Ref inside, or unpicklable: the job's own path says so
            return value
        size = len(stream) + sum(r.nbytes for r in raws)
        if size < shared_memory.THRESHOLD:
            return value
        import hashlib
        digest = hashlib.sha256(stream)
        for raw in raws:
            digest.update(raw)
        key = digest.digest()
        with self._lock:
            entry = self._refs.get(key)
            if entry is not None and not entry[0].released and entry[0]._session is session:
                self._refs.move_to_end(key)
                return entry[0]
        ref = server._put_pickled(session, stream, raws, travelling)
        evicted = []
        with self._lock:
            old = self._refs.pop(key, None)
            if old is not None:
                evicted.append(old[0])
                self._bytes -= old[1]
            self._refs[key] = (ref, size)
            self._bytes += size
            while len(self._refs) > 1 and (len(self._refs) > self.MAX_COUNT or self._bytes > self.MAX_BYTES):
                _, (dropped, dropped_size) = self._refs.popitem(last=False)
                self._bytes -= dropped_size
                evicted.append(dropped)
        for dropped in evicted:  # the node keeps each until the jobs that take it have ended
            dropped.release()
        return ref


class Server:
    """pp.Server on ppgate: submit Python functions as jobs to a node.

    With no ``url``, starts a private node on loopback (random port and token) with ``ncpus``
    workers, stopped by destroy(), at interpreter exit, or when this process dies. With
    ``url=`` (and ``token=``, or $PPGATE_TOKEN), uses a running node.

    ``proto`` and ``socket_timeout`` are accepted for compatibility and have no effect.
    """

    default_port = 8080
    default_secret: Optional[str] = None

    def __init__(self, ncpus: Union[int, str] = "autodetect", ppservers: Any = (),
                 secret: Optional[str] = None, restart: bool = False, proto: int = 2,
                 socket_timeout: float = 3600, *, url: Optional[str] = None, token: Optional[str] = None) -> None:
        # A cluster (ppgate.slurm.SlurmCluster) in ppservers: its nodes join this one.
        clusters = [p for p in (ppservers if isinstance(ppservers, tuple) else (ppservers,))
                    if hasattr(p, "_attach")]
        if clusters:
            if url is not None:
                raise ValueError("a cluster's nodes join the Server's private node: give no url")
            ppservers = tuple(p for p in ppservers if p not in clusters) if isinstance(ppservers, tuple) else ()
            # The batch jobs get the secret in a file; one is made up when none is given.
            secret = secret or os.environ.get("PPGATE_SECRET") or random_token(32)
        if not isinstance(ppservers, tuple):
            raise TypeError("ppservers argument must be a tuple (or a cluster)")
        _check_ncpus(ncpus)
        for ppserver in ppservers:
            if ppserver != "*" and (not isinstance(ppserver, str) or ":" not in ppserver):
                raise ValueError("ppservers are 'host:port' strings or '*', not %r" % (ppserver,))
        # As ppft: no secret given means the environment's (pp's public default secret is gone).
        if secret is None and ppservers:
            secret = os.environ.get("PPGATE_SECRET")
        if ppservers and url is None and (not secret or len(secret) < 8):
            raise ValueError("ppservers need the cluster's secret (8 characters or more): "
                             "Server(..., ppservers=..., secret=...) or $PPGATE_SECRET")
        if ncpus == 0 and not ppservers and not clusters and url is None:
            raise ValueError("ncpus=0 with no ppservers: no worker would ever run a job")
        # pp's attributes, which pathos reads: the remote nodes as (host, port), whether '*' asked
        # for discovery, and a flag pathos sets while it closes its pool.
        self.ppservers = [(h, int(p)) for h, _, p in (x.rpartition(":") for x in ppservers if x != "*")]
        self.auto_ppservers = "*" in ppservers
        self._exiting = False
        self._node: Optional[PrivateNode] = None
        self._session: Optional[Session] = None
        self._destroyed = False
        self._creation_time = time.time()
        # One condition for every wait of this server (job(), wait(group)); `_waiters` counts
        # threads inside it, so ending a job costs a notify only when someone waits. Its lock is
        # taken directly where nothing waits or notifies: Condition's `with` is Python code.
        self._cv_lock = threading.RLock()
        self._cv = threading.Condition(self._cv_lock)
        self._waiters = 0
        self._unfinished: Dict[str, int] = {}  # group -> number of unfinished jobs
        self._ending_lock = threading.Lock()
        self._functions: Dict[Any, FunctionSpec] = {}  # function key -> its FunctionSpec
        # Big captured values and instances, sent once when they would cross a link.
        self._sent_once = _SentOnce(through_shared_memory=bool(ppservers or clusters))
        self._callbacks: Optional[SimpleQueue[Optional[Job]]] = None
        self._rest_lock = threading.Lock()
        self._rest: Optional[http.client.HTTPConnection] = None
        # The ids this client gives its jobs: a random start in the range submitters choose from
        # (2^32 to 2^53: docs/rest.md), then one by one, so two clients' ranges meet only by a
        # one-in-a-billion chance; itertools.count is atomic under the GIL.
        self._last_detached: Optional[Job] = None  # see _confirm_detached
        self._job_ids = itertools.count((1 << 32) + int.from_bytes(os.urandom(8), "big") % ((1 << 53) - (1 << 40) - (1 << 32)))
        self._clusters: List[Any] = []
        if url is None:
            listen = {c._peer_listen_host() for c in clusters}
            if len(listen) > 1:
                raise ValueError("the clusters' nodes would dial the head on different interfaces: %s"
                                 % ", ".join(sorted(listen)))
            self._node = PrivateNode(ncpus, restart, ppservers, secret, listen.pop() if listen else None,
                                     connect=open_session)
            url, token = self._node.url, self._node.token
        else:
            token = token if token is not None else (secret or os.environ.get("PPGATE_TOKEN"))
        self.url = url
        self._token = token
        try:
            opened = None
            if self._node is not None:  # connected while the node started
                opened, self._node.connection = self._node.connection, None
            self._session = Session(url, token, on_results=self._wake_waiters, opened=opened)
            if self._node is None:
                if ncpus != "autodetect":
                    self.set_ncpus(ncpus)
                self._warn_if_python_differs()
            for cluster in clusters:  # submits its batch jobs, which join the private node
                assert self._node is not None and secret is not None
                cluster._attach(self._node.peer_port, secret)
                self._clusters.append(cluster)
        except BaseException:
            self.destroy()
            raise
        ref = weakref.ref(self)

        def destroy_at_exit() -> None:
            server = ref()
            if server is not None:
                server.destroy()

        self._atexit: Optional[Callable[[], None]] = destroy_at_exit
        atexit.register(destroy_at_exit)

    # --- pp's API ---

    def submit(self, func: Callable[..., Any], args: Tuple[Any, ...] = (), depfuncs: Tuple[Any, ...] = (),
               modules: Tuple[str, ...] = (), callback: Optional[Callable[..., Any]] = None,
               callbackargs: Tuple[Any, ...] = (), group: str = "default",
               globals: Optional[Dict[str, Any]] = None, *, timeout: Optional[float] = None,
               retries: int = 0, retry_backoff: float = 0.0, priority: int = 0, detach: bool = False) -> Job:
        """Submits func(*args) and returns a Job. ppgate's additions: ``timeout`` (seconds of
        running time per attempt); ``retries``, extra attempts when the job raises (or times out,
        or goes over the node's worker memory), only the last exception being reported, and as
        many again when its worker dies; ``retry_backoff``, seconds before the first rerun,
        doubled before each later one; ``priority``, higher first (first come, first served
        within one priority); ``detach``, the job outlives this Server's connection: destroy()
        does not cancel it, and its result stays on the node for ``Server(url=...).job(job.id)``
        in any process (its arguments then travel in the message, not in shared memory)."""
        if self._destroyed:
            raise DestroyedServerError("Cannot submit jobs: server instance has been destroyed")
        if not isinstance(args, tuple):
            raise TypeError("args argument must be a tuple")
        if not isinstance(depfuncs, tuple):
            raise TypeError("depfuncs argument must be a tuple")
        if not isinstance(modules, tuple):
            raise TypeError("modules argument must be a tuple")
        if not isinstance(callbackargs, tuple):
            raise TypeError("callbackargs argument must be a tuple")
        if globals is not None and not isinstance(globals, dict):
            raise TypeError("globals argument must be a dictionary")
        for module in modules:
            if not isinstance(module, str):
                raise TypeError("modules argument must be a list of strings")
        check_job_options(retries, retry_backoff, priority)
        job = Job(self, group, callback, callbackargs)
        self.submit_call(job, Call(func, args, None, depfuncs, modules, globals, group, timeout, retries,
                                   retry_backoff, priority, bool(detach)))
        return job

    def job(self, job_id: int) -> Job:
        """The job `job_id` of the node, whoever submitted it (a detached job of a process that has
        exited, say): ``job()`` waits for its end and returns its result, or raises its error.
        Raises JobLostError when the node does not know the job (never submitted, or forgotten
        past its --keep-finished)."""
        if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id < 1:
            raise ValueError("a job id is a positive integer")
        data = self._job_record(job_id, 0)
        job = Job(self, data.get("group", "default"))
        job.id = job_id
        job._attached = True
        if data["status"] in _ENDED:
            job._complete(data, notify=False)
        return job

    def group(self, name: str) -> List[Job]:
        """Every job of the node in group `name` (the node's listing: those it still keeps), in the
        order they were submitted, re-attached as by ``job(id)``."""
        jobs: List[Job] = []
        import urllib.parse  # (http.client, which _request uses, imports it anyway)
        after = 0
        while True:
            page = self._request("GET", "/v1/jobs?group=%s&limit=1000&after=%d"
                                 % (urllib.parse.quote(name, safe=""), after))
            for summary in page["jobs"]:
                job = Job(self, name)
                job.id = summary["id"]
                job._attached = True
                jobs.append(job)
            if "next_after" not in page:
                return jobs
            after = page["next_after"]

    def wait(self, group: Optional[str] = None) -> None:
        """Waits until every job of `group` (every job, when None) has finished."""
        if group is None:
            self._wait_for(lambda: not any(self._unfinished.values()), None)
        else:
            name = group
            self._wait_for(lambda: not self._unfinished.get(name), None)

    def put(self, value: Any) -> Ref:
        """Sends `value` to the node once and returns a Ref that jobs take in its place, anywhere
        in their arguments: the node keeps it, and each worker unpickles it once, the first time a
        job there takes it (as Dask's scatter and Ray's put). On this host it goes through shared
        memory. ``ref.release()``, or dropping the last reference to it, lets it go."""
        session = self._session
        if session is None:
            raise DestroyedServerError("server instance has been destroyed")
        pickles = _Pickles(session, takes_refs=False)
        try:
            return self._put_field(session, pickles, pickles.field(value))
        except BaseException:
            pickles.abandon()
            raise

    def _put_pickled(self, session: Session, stream: bytes, raws: List[memoryview], travelling: List[Any]) -> Ref:
        """put() of a value pickled already, as a value that each job gets a fresh copy of."""
        pickles = _Pickles(session, takes_refs=False)
        pickles.travelling = travelling
        try:
            return self._put_field(session, pickles, pickles.pickled(stream, raws), fresh=True)
        except BaseException:
            pickles.abandon()
            raise

    def _put_field(self, session: Session, pickles: _Pickles, field: Any, fresh: bool = False) -> Ref:
        self._check_size(pickles.size + 256, what="the value's message")
        ref = Ref(session.new_value_id(), session, pickles.files, pickles.travelling, fresh)
        session.put_value(ref.id, field)
        return ref

    def get_ncpus(self) -> int:
        return int(self._request("GET", "/v1/workers")["count"])

    def set_ncpus(self, ncpus: Union[int, str] = "autodetect") -> None:
        """Resizes the node's local worker pool, up or down ("autodetect": one per CPU)."""
        _check_ncpus(ncpus)
        self._request("PUT", "/v1/workers", {"count": "auto" if ncpus == "autodetect" else ncpus})

    def get_active_nodes(self) -> Dict[str, int]:
        """{node name: number of workers}, as pp's get_active_nodes(): "local" and each connected
        remote node by host:port."""
        return {n["name"]: n["slots"] for n in self._request("GET", "/v1/nodes")["nodes"]
                if n.get("connected", True)}

    def get_stats(self) -> Dict[str, Statistics]:
        """{node name: Statistics}, as pp's get_stats()."""
        stats: Dict[str, Statistics] = {}
        for n in self._request("GET", "/v1/stats")["nodes"]:
            s = Statistics(n.get("ncpus", 0))
            s.njobs, s.time = n["njobs"], n["time"]
            stats[n["name"]] = s
        return stats

    def print_stats(self) -> None:
        """Prints pp's job execution statistics table."""
        print(self._request("GET", "/v1/stats", accept="text/plain"), end="")

    def destroy(self) -> None:
        """Cancels this server's unfinished jobs and closes the connection; a private node is
        stopped, and the clusters whose nodes joined it are closed. Safe to call more than once."""
        if self._destroyed:
            return
        self._destroyed = True
        at_exit = getattr(self, "_atexit", None)
        if at_exit is not None:
            atexit.unregister(at_exit)
        if self._session is not None:
            # Unfinished jobs are cancelled on the node when their session closes, and end here
            # as lost; detached ones carry on, once the node surely has them.
            self._confirm_detached()
            self._session.close()
        if self._callbacks is not None:
            self._callbacks.put(None)
        with self._rest_lock:
            if self._rest is not None:
                self._rest.close()
        for cluster in getattr(self, "_clusters", ()):
            try:  # its batch jobs would only dial a head that is gone
                cluster.close()
            except Exception as exc:  # noqa: BLE001 - the node still stops
                warnings.warn("closing %r: %s" % (cluster, exc))
        if self._node is not None:
            self._node.stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # --- for Executor (internal, but not private) ---

    def submit_call(self, job: Job, call: Call) -> None:
        """Sends `call` as `job` (made by the caller, for this server): what submit() does after
        checking its arguments, and what Executor.submit() does."""
        func, args, kwargs, depfuncs, modules = call.func, call.args, call.kwargs, call.depfuncs, call.modules
        user_globals, group, timeout, retries = call.globals, call.group, call.timeout, call.retries
        if self._node is not None and self._node.forked_alive:
            self._node.reap_exited()  # the forks the node has handed over, no zombies left
        key: Tuple[Any, ...] = (func.__func__ if isinstance(func, types.MethodType) else func, depfuncs, modules,
               user_globals is not None)
        if isinstance(func, types.MethodType):
            key += (func.__self__ if isinstance(func.__self__, type) else type(func.__self__),)
        try:
            cached = self._functions.get(key)
        except TypeError:  # an unhashable callable
            cached = None
        if cached is None:
            function, _ = describe(func, depfuncs, modules, user_globals)
            try:
                self._functions[key] = function
            except TypeError:
                pass
        else:
            function = cached
        session = self._session
        if session is None:
            raise DestroyedServerError("server instance has been destroyed")
        if isinstance(func, types.MethodType) and not isinstance(func.__self__, type):
            instance = self._sent_once.stand_in(self, session, func.__self__)
            if call.map:  # the instance as a column of its own, pickled once
                args = ([instance] * min(map(len, args), default=0),) + args
            else:
                args = (instance,) + args
        stream = None
        if not kwargs and type(args) is tuple and all_plain(args) and not (function.closure or function.value_names):
            # The common case, as _Pickles.field takes it, without the bookkeeping no plain
            # value needs (files, Refs, classes that travel as source).
            stream = pickle.dumps(args, _PICKLE)
        if stream is not None and len(stream) < shared_memory.THRESHOLD:
            text = _b2a_base64(stream, newline=False).decode("ascii")
            fields: Dict[str, Any] = {"codec": "pickle", "args": text}
            size = len(text) + 16 + 1024
            self._check_size(size, function)
        else:
            pickles = _Pickles(session)
            if call.detach:
                pickles.shm_prefix = None  # the session's files go with it; a detached job may outlive it
            try:
                if stream is not None:  # pickled above already, and too big to go inline
                    fields = {"codec": "pickle", "args": pickles.pickled(stream, [])}
                else:
                    fields = {"codec": "pickle", "args": pickles.field(args) if args else _EMPTY_ARGS}
                if kwargs:
                    fields["kwargs"] = pickles.field(kwargs)
                if function.closure or function.value_names:
                    values = closure_values(function, user_globals)
                    for name, value in values.items():
                        values[name] = self._sent_once.stand_in(self, session, value)
                    if values:
                        try:
                            fields["globals"] = pickles.field(values)
                        except Exception as exc:  # noqa: BLE001 - say which variable
                            raise name_unpicklable(values, exc) from None
                travelling = pickles.travelling
                if pickles.refs:
                    fields["refs"] = [ref.id for ref in pickles.refs]
                    for ref in pickles.refs:
                        travelling.extend(ref._travelling)
                if travelling:
                    function = self._with_sources(function, tuple(travelling))
                # The other fields (function name, group, options) take less than the allowance.
                size = pickles.size + 16 * len(pickles.refs) + 1024
                self._check_size(size, function)
            except BaseException:
                pickles.abandon()
                raise
            job._shared_files, job._refs = pickles.files or None, pickles.refs or None
        if call.map:
            fields["map"] = True
        if group != "default":
            fields["group"] = group
        if timeout is not None:
            fields["timeout"] = timeout
        if retries:
            fields["retries"] = retries
        if call.retry_backoff:
            fields["retry_backoff"] = call.retry_backoff
        if call.priority:
            fields["priority"] = call.priority
        # Known from now on (Job.id): the node takes the id this client picks.
        job.id = fields["id"] = next(self._job_ids)
        if call.detach:
            fields["detach"] = True
            self._last_detached = job
        with self._cv_lock:
            self._unfinished[group] = self._unfinished.get(group, 0) + 1
        try:
            if self._session is None:
                raise DestroyedServerError("server instance has been destroyed")
            self._session.submit(job, function, fields, size)
        except BaseException:
            job._ending = True
            job._release_shared_files()
            self._job_finished(job)
            raise

    def read_results_until(self, done: Callable[[], bool], timeout: Optional[float] = None) -> bool:
        """Reads the node's messages on this thread until done() holds (True) or `timeout` passes
        (False): a waiting thread takes its own result off the socket (docs/python-client.md)."""
        if self._session is None:
            return done()
        return self._session.wait_for(done, timeout)

    # --- internals ---

    def _check_size(self, size: int, function: Optional[FunctionSpec] = None, what: str = "the job's message") -> None:
        """A job (or value) whose message would take `size` bytes (and its function's definition)
        over the node's limit is refused here, saying so: sent, the node would have to end the
        whole session."""
        if function is not None:
            size += function.definition_size
        limit = self._session.max_message if self._session is not None else None
        if limit is not None and size > limit - 4096:
            raise SubmitError("SubmitError", "%s would take %d bytes, over the node's limit of "
                              "%d bytes (ppgate serve --max-body); pass big arguments to a node on this host, "
                              "which takes them through shared memory, or raise the limit" % (what, size, limit))


    def _warn_if_python_differs(self) -> None:
        """A node started by hand may run another Python than this one: pickles, C extensions
        and syntax may not carry over. Say so once, naming both versions."""
        here = "%d.%d" % sys.version_info[:2]
        for n in self._request("GET", "/v1/nodes")["nodes"]:
            there = n.get("python") or ""
            if there and ".".join(there.split(".")[:2]) != here:
                warnings.warn("ppgate node %s runs Python %s, this program Python %s: jobs run on %s"
                              % (n["name"], there, python_version(), there),
                              RuntimeWarning, stacklevel=3)
                return

    def _with_sources(self, function: FunctionSpec, travelling: Tuple[Any, ...]) -> FunctionSpec:
        key = (function.key, travelling)
        spec = self._functions.get(key)
        if spec is None:
            spec = self._functions[key] = with_sources(function, travelling)
        return spec

    def _job_finished(self, job: Job, notify: bool = True) -> None:
        # As in pp, a job counts as finished only after its callback ran: wait() covers callbacks.
        with self._cv_lock:
            job.finished = True
            if not job._attached:  # (a re-attached job was never counted: it was not sent from here)
                self._unfinished[job.group] -= 1
            if job._lock is not None:
                job._lock.release()
            if notify and self._waiters:
                self._cv.notify_all()

    def _wake_waiters(self) -> None:
        """After a batch of results: one wake-up for all of them."""
        if self._waiters:
            with self._cv:
                self._cv.notify_all()

    def _wait_for(self, predicate: Callable[[], bool], timeout: Optional[float]) -> bool:
        with self._cv:
            self._waiters += 1
            try:
                return self._cv.wait_for(predicate, timeout)
            finally:
                self._waiters -= 1

    def _run_callback(self, job: Job) -> None:
        # Callbacks run on a thread of their own, so a slow callback never holds up results.
        if self._callbacks is None:
            with self._cv:
                if self._callbacks is None:
                    import queue
                    self._callbacks = queue.SimpleQueue()
                    threading.Thread(target=self._callback_loop, args=(self._callbacks,),
                                     name="ppgate-callbacks", daemon=True).start()
        self._callbacks.put(job)

    @staticmethod
    def _callback_loop(jobs: SimpleQueue[Optional[Job]]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                assert job._callback is not None
                job._callback(*(job._callbackargs + (job._result,)))
            except Exception as exc:  # noqa: BLE001 - reported, and the job still finishes
                job.callback_error = exc
                print("ppgate: the callback of job %s raised:" % job.id, file=sys.stderr)
                import traceback
                traceback.print_exc()
            finally:
                job._server._job_finished(job)

    def _confirm_detached(self) -> None:
        """Before the connection closes: the last detached job not yet ended has reached the node
        (and so have the jobs sent before it), so closing loses none. Bounded: 10 s."""
        job = self._last_detached
        if job is None or job.finished or self._session is None:
            return
        import http.client
        deadline = time.monotonic() + 10
        if self._session.flush(10):
            while time.monotonic() < deadline and not job.finished:
                try:
                    self._job_record(job.id or 0, 0)
                    return
                except JobLostError:  # not there yet: the node reads the session on its own time
                    time.sleep(0.01)
                except (OSError, RuntimeError, http.client.HTTPException):
                    break
        if not job.finished:
            warnings.warn("detached job %s may not have reached the node before the connection closed" % job.id)

    def _job_record(self, job_id: int, wait: float) -> Dict[str, Any]:
        """GET /v1/jobs/{id}?wait=S on a connection of its own (a long poll must not hold up the
        other requests). JobLostError when the node does not know the job."""
        import http.client
        host, port = host_and_port(self.url)
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = "Bearer " + self._token
        conn = http.client.HTTPConnection(host, port, timeout=wait + 30)
        try:
            conn.request("GET", "/v1/jobs/%d?wait=%s" % (job_id, wait), headers=headers)
            res = conn.getresponse()
            text = res.read().decode()
        finally:
            conn.close()
        if res.status == 404:
            raise JobLostError("JobLost", "the node does not know job %d: never submitted, or forgotten "
                               "(it keeps --keep-finished finished jobs)" % job_id, job_id=job_id)
        if res.status != 200:
            raise RuntimeError("GET /v1/jobs/%d: HTTP %d: %s" % (job_id, res.status, text))
        data: Dict[str, Any] = json.loads(text)
        return data

    def _poll_job(self, job: Job, timeout: Optional[float]) -> bool:
        """Waits for a re-attached job's end by long polls; True once it has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.finished:
            left = 30.0 if deadline is None else min(30.0, deadline - time.monotonic())
            if left <= 0:
                return False
            try:
                data = self._job_record(job.id or 0, round(left, 3))
            except JobLostError as lost:
                job._fail(lost)
                break
            if data["status"] in _ENDED:
                job._complete(data, notify=False)
        return True

    def _request(self, method: str, path: str, body: Any = None, accept: str = "application/json") -> Any:
        if self._destroyed:
            raise DestroyedServerError("server instance has been destroyed")
        import http.client
        host, port = host_and_port(self.url)
        headers = {"Accept": accept}
        if self._token:
            headers["Authorization"] = "Bearer " + self._token
        payload = json.dumps(body) if body is not None else None
        with self._rest_lock:
            for attempt in (1, 2):  # once more on a fresh connection if keep-alive went stale
                if self._rest is None:
                    self._rest = http.client.HTTPConnection(host, port, timeout=60)
                try:
                    self._rest.request(method, path, body=payload, headers=headers)
                    res = self._rest.getresponse()
                    data = res.read()
                    break
                except (http.client.HTTPException, OSError):
                    self._rest.close()
                    self._rest = None
                    if attempt == 2:
                        raise
        text = data.decode()
        if res.status >= 400:
            try:
                message = json.loads(text)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = text
            raise RuntimeError("%s %s: HTTP %d: %s" % (method, path, res.status, message))
        return text if accept == "text/plain" else json.loads(text)


_ENDED = ("done", "failed", "cancelled", "lost")


def _check_ncpus(ncpus: object) -> None:
    if ncpus == "autodetect":
        return
    if not isinstance(ncpus, int) or isinstance(ncpus, bool):
        raise TypeError("ncpus must have 'int' type")
    if ncpus < 0:
        raise ValueError("ncpus must be an integer > 0")


class Template:
    """pp's Template: a function with fixed depfuncs, modules, callback and group; submit(*args)."""

    def __init__(self, job_server: Server, func: Callable[..., Any], depfuncs: Tuple[Any, ...] = (),
                 modules: Tuple[str, ...] = (), callback: Optional[Callable[..., Any]] = None,
                 callbackargs: Tuple[Any, ...] = (), group: str = "default",
                 globals: Optional[Dict[str, Any]] = None) -> None:
        self.job_server = job_server
        self.func = func
        self.depfuncs = depfuncs
        self.modules = modules
        self.callback = callback
        self.callbackargs = callbackargs
        self.group = group
        self.globals = globals

    def submit(self, *args: Any) -> Job:
        return self.job_server.submit(self.func, args, self.depfuncs, self.modules, self.callback,
                                      self.callbackargs, self.group, self.globals)
