"""A job session: one WebSocket to a node's /v1/session shared by every job of a Server.

Submissions are queued and a writer thread sends whatever has accumulated as one batch, so a
loop of submit() calls becomes a few large messages (pipelining); a lone job on an idle
connection is sent by the submitting thread itself. The node pushes results as jobs end.

Reading is a role that one thread holds at a time (leader/follower): a thread waiting for a job
reads the socket itself, so the result reaches it without a hand-off between threads; when no
thread waits, a background reader takes the role, so callbacks and futures still complete.
Function sources go once per connection: later jobs refer to them by a per-connection ``fn_id``.
"""

from __future__ import annotations

import _thread
import collections
import json
import os
import select
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, Union

    class SessionJob(Protocol):
        """What the session needs of a job (ppgate.Job is one)."""

        id: Optional[int]
        finished: bool
        _tag: Optional[int]

        def _complete(self, data: Dict[str, Any], notify: bool = True) -> None: ...

        def _fail(self, error: JobError) -> None: ...

    # Queued for the writer: ("job", job, function, fields, size), ("cancel", job), ("put", id, field)
    # or ("release", id).
    _Outgoing = Tuple[Any, ...]

from . import _shared_memory as shared_memory
from ._errors import JobError, JobLostError, SubmitError
from ._functions import FunctionSpec
from ._websocket import WebSocket

_MAX_BATCH = 5000
_PLAIN_JOB = '{"codec":"pickle","args":"%s","id":%d,"tag":%d,"fn_id":%d}'
_FOREGROUND_GRACE = 0.005  # seconds the background reader defers to a thread that just read
# A thread waiting for the only job in flight polls the socket this long before sleeping, when
# such waits have recently been shorter than that: sleeping and being woken costs more than a
# short job's whole run on a busy machine (a wake-up is ~15 us for the sender, more for the
# woken). Never when several jobs are in flight, so the spin takes no CPU from a batch's workers.
# On a single CPU, the spin would only keep the node from answering.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_SPIN_SECONDS = 0.0003 if _CPUS > 1 else 0.0
_SPIN_PROBE = 16


class _Thread:
    """A daemon thread that starts without a hand-shake: threading.Thread.start() waits until the
    new thread runs, which costs Server() a scheduling round trip per thread (milliseconds while
    the private node and its forked workers start and want the CPUs too). join() as Thread's.
    Such threads are not in threading.enumerate(); _thread._count() counts them."""

    def __init__(self, target: Callable[[], None]) -> None:
        self._running = threading.Lock()
        self._running.acquire()  # released when `target` returns
        self._target = target
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._running.release()

    def join(self, timeout: float) -> None:
        if self._running.acquire(timeout=timeout):
            self._running.release()


def open_session(url: str, token: Optional[str] = None, timeout: float = 30.0) -> WebSocket:
    """Connects to a node's /v1/session and sends the upgrade request, without waiting for the
    answer (Session reads it): a private node's client connects before the node runs."""
    host, port = host_and_port(url)
    headers = {"Authorization": "Bearer " + token} if token else {}
    headers["PPGate-Binary"] = "1"  # big results as attachments of binary messages, please
    identity = shared_memory.host_identity()
    if identity is not None:
        headers["PPGate-Shared-Memory"] = identity  # the node answers with a prefix if it matches
    return WebSocket(host, port, "/v1/session", headers, timeout, answer=False)


def host_and_port(url: str) -> Tuple[str, int]:
    """HOST and PORT of http://HOST:PORT (ValueError for another URL); a private node's URL
    without urllib.parse, whose import (with ipaddress) took ~2 ms of a program's start."""
    head, _, port = url.rpartition(":")
    if head == "http://127.0.0.1" and port.isdigit() and port.isascii():
        return "127.0.0.1", int(port)
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("url must look like http://HOST:PORT, not %r" % url)
    return parts.hostname, parts.port or 80


class Session:
    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0,
                 on_results: Optional[Callable[[], None]] = None, opened: Optional[WebSocket] = None) -> None:
        """`opened`: what open_session(url, token) returned, if the caller connected already."""
        self._ws = opened if opened is not None else open_session(url, token, timeout)
        self._ws.read_answer()
        # Where this session's big arguments may go instead of the socket (_shared_memory.py).
        self.shm_prefix: Optional[str] = self._ws.headers.get("ppgate-shared-memory") or None
        # The largest message the node takes (its --max-body): a bigger one would end the session.
        # Whether big arguments may go as attachments of binary messages (without shared memory).
        self.binary = self._ws.headers.get("ppgate-binary") == "1" and self.shm_prefix is None
        limit = self._ws.headers.get("ppgate-max-message", "")
        self.max_message: Optional[int] = int(limit) if limit.isdigit() else None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._outgoing: List[_Outgoing] = []
        self._jobs: Dict[int, SessionJob] = {}  # tag -> job, from sending until its result arrives
        self._next_tag = 1
        self._next_fn_id = 1
        self._next_value_id = 1
        self._later_releases: collections.deque[int] = collections.deque()  # from Ref.__del__
        self._fn_ids: Dict[Any, int] = {}     # function key -> fn_id defined on this connection
        self._defining: Dict[int, Any] = {}   # tag -> function key, for jobs carrying a definition
        self._on_results = on_results        # called after each batch of results is handed out
        self._error: Optional[JobLostError] = None  # set once the connection is gone
        self._turn = threading.Condition(self._lock)  # signalled when the reading role is free
        self._reading = False                 # a thread holds the reading role
        self._foreground = 0                  # threads waiting for a job that read themselves
        self._role_waiters = 0                # of those, the ones waiting for the reading role
        self._last_foreground = 0.0           # when the last of them left (time.monotonic)
        self._lone_wait = 1.0                 # how long the last wait for a lone job took (s)
        self._lone_waits = 0                  # how many such waits there have been
        self._bg_selecting = False            # the background reader is blocked in select()
        self._wake_r, self._wake_w = os.pipe()  # gets the background reader out of select()
        os.set_blocking(self._wake_w, False)
        self._sending = False                 # a thread is writing to the socket
        self._writer = _Thread(self._write_loop)
        self._reader = _Thread(self._read_loop)

    # --- called by Server/Executor threads ---

    def submit(self, job: SessionJob, function: FunctionSpec, fields: Dict[str, Any], size: int) -> None:
        """Queues the job; `size`: about how many bytes its fields take in a message, never less."""
        with self._lock:
            if self._error is not None:
                raise self._error
            self._outgoing.append(("job", job, function, fields, size))
            if self._jobs or self._sending or len(self._outgoing) > 1:
                # The connection is busy: the writer thread sends this with whatever else piles
                # up meanwhile, as one batch.
                if len(self._outgoing) == 1:
                    self._wake.notify()
                return
            # The connection is idle: send now, from this thread, saving a thread hand-off on
            # the latency of a lone job.
            messages = self._take_outgoing()
        try:
            self._send_taken(messages)
        except Exception as exc:  # noqa: BLE001 - the connection is gone; every job hears of it
            self._lost(exc)

    def new_value_id(self) -> int:
        with self._lock:
            self._next_value_id += 1
            return self._next_value_id - 1

    def put_value(self, value_id: int, field: Any) -> None:
        """Sends a value put once ({"put": ID, "value": ...}), in order with the jobs."""
        self._queue(("put", value_id, field))

    def release_value(self, value_id: int) -> None:
        """Lets the node drop a value put once, after the jobs queued before this call."""
        self._queue(("release", value_id))

    def release_value_later(self, value_id: int) -> None:
        """As release_value, from a finalizer: takes no lock; goes with the next message sent."""
        self._later_releases.append(value_id)

    def _queue(self, item: _Outgoing) -> None:
        with self._lock:
            if self._error is not None:
                return  # the session is gone, and what it held with it
            self._outgoing.append(item)
            self._wake.notify()

    def cancel(self, job: SessionJob) -> None:
        with self._lock:
            if self._error is not None or job.finished:
                return
            self._outgoing.append(("cancel", job))
            self._wake.notify()

    def flush(self, timeout: float) -> bool:
        """Waits until everything queued has been written to the socket; False after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self._outgoing or self._sending) and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._turn.wait(min(left, 0.05))
            return self._error is None

    def close(self) -> None:
        with self._lock:
            if self._error is None:
                self._error = JobLostError("Closed", "the session was closed")
            self._wake.notify()
            self._turn.notify_all()
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass
        self._ws.close()
        self._reader.join(10)
        self._writer.join(10)
        self._fail_all()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # --- writer thread ---

    def _write_loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while (not self._outgoing or self._sending) and self._error is None:
                        self._wake.wait()
                    if self._error is not None:
                        return
                    messages = self._take_outgoing()
                self._send_taken(messages)
        except Exception as exc:  # noqa: BLE001 - the connection is gone; every job hears of it
            self._lost(exc)

    def _take_outgoing(self) -> List[Union[bytes, bytearray]]:
        """Encodes what is queued and claims the socket for sending it. Runs under the lock."""
        items, self._outgoing = self._outgoing, []
        self._sending = True
        return self._encode(items)

    def _send_taken(self, messages: List[Union[bytes, bytearray]]) -> None:
        """Sends what _take_outgoing returned, then hands the socket back (to the writer thread
        if more has been queued meanwhile)."""
        try:
            for message in messages:
                if isinstance(message, bytearray):
                    self._ws.send_binary(message)
                else:
                    self._ws.send_text(message)
        finally:
            with self._lock:
                self._sending = False
                if self._outgoing:
                    self._wake.notify()

    def _encode(self, items: List[_Outgoing]) -> List[Union[bytes, bytearray]]:
        """Turns queued items into messages. Each job gets a tag, which its result will carry;
        it is registered before its message goes out. Runs under the lock."""
        messages: List[Union[bytes, bytearray]] = []  # bytearray: a binary message
        # A job's fields, or the JSON text of a plain one (_PLAIN_JOB: formatted here, which
        # costs half of what json.dumps does).
        batch: List[Union[str, Dict[str, Any]]] = []
        formatted = 0  # how many of the batch are text
        attached = False  # the batch has attachments: it goes as a binary message
        # Batches stay under the node's message limit: the jobs' text fields (source, base64
        # arguments) are nearly all of a message's size; the rest is allowed for per job.
        room = (self.max_message or 1 << 62) - 4096
        batch_size = 0

        def encode(message: Any, binary: bool) -> Union[bytes, bytearray]:
            if not binary:
                return json.dumps(message, separators=(",", ":")).encode()
            attachments = shared_memory.Attachments()
            return attachments.message(json.dumps(message, separators=(",", ":"), default=attachments).encode())

        def encode_batch() -> Union[bytes, bytearray]:
            if not formatted:
                return encode(batch, attached)
            attachments = shared_memory.Attachments() if attached else None  # (numbered in job order)
            texts = [item if type(item) is str else json.dumps(item, separators=(",", ":"), default=attachments)
                     for item in batch]
            text = ("[" + ",".join(texts) + "]").encode()
            return text if attachments is None else attachments.message(text)

        def flush() -> None:
            nonlocal batch_size, attached, formatted
            if batch:
                messages.append(encode_batch())
                batch.clear()
            batch_size = 0
            attached = False
            formatted = 0

        # Released by finalizers: no job holds them, so they may go before what is queued.
        released = []
        while self._later_releases:
            released.append(("release", self._later_releases.popleft()))
        if released:
            items = released + items
        for item in items:
            if item[0] == "cancel":
                job = item[1]
                if job._tag is not None and job._tag in self._jobs:
                    flush()
                    messages.append(b'{"cancel":%d}' % job._tag)
                continue
            if item[0] == "put":
                flush()
                messages.append(encode({"put": item[1], "value": item[2]},
                                       isinstance(item[2], shared_memory.Attached)))
                continue
            if item[0] == "release":
                flush()
                messages.append(b'{"release":%d}' % item[1])
                continue
            _, job, function, fields, size = item
            fn_id = self._fn_ids.get(function.key)
            job._tag = fields["tag"] = self._next_tag
            self._next_tag += 1
            if fn_id is None:
                fn_id = self._fn_ids[function.key] = self._next_fn_id
                self._next_fn_id += 1
                fields.update(function.definition)
                size += function.definition_size
                self._defining[job._tag] = function.key
            fields["fn_id"] = fn_id
            self._jobs[job._tag] = job
            if batch and batch_size + size > room:
                flush()
            batch_size += size
            if len(fields) == 5 and type(fields.get("args")) is str and fields.get("codec") == "pickle" \
                    and "id" in fields:  # (args: base64 text, nothing to escape), tag and fn_id
                batch.append(_PLAIN_JOB % (fields["args"], fields["id"], fields["tag"], fn_id))
                formatted += 1
            else:
                batch.append(fields)
                if self.binary and not attached:  # (only a binary session's fields are ever Attached)
                    attached = any(isinstance(v, shared_memory.Attached) for v in fields.values())
            if len(batch) >= _MAX_BATCH:
                flush()
        flush()
        return messages

    # --- reading ---

    def wait_for(self, predicate: Callable[[], bool], timeout: Optional[float] = None) -> bool:
        """Reads and dispatches messages on this thread until predicate() holds (True) or the
        timeout passes (False). For waits whose end arrives as a message: a job's result."""
        started = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._foreground += 1
            evict = self._bg_selecting
            lone = len(self._jobs) == 1
        # A wait that did not spin includes a wake-up, and so may stay over the bound even when
        # spinning would not: every _SPIN_PROBE-th lone wait spins anyway, to find out again.
        self._lone_waits += lone
        spin = lone and (self._lone_wait < _SPIN_SECONDS or self._lone_waits % _SPIN_PROBE == 0) \
            and _SPIN_SECONDS > 0
        if evict:
            try:
                os.write(self._wake_w, b"\0")  # the background reader steps aside meanwhile
            except BlockingIOError:
                pass
        try:
            while not predicate():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                with self._lock:
                    if self._error is not None:
                        self._turn.wait(0.05)  # _fail_all is ending every job
                        continue
                    if self._reading:
                        self._role_waiters += 1
                        try:
                            self._turn.wait(remaining)  # the reader hands out results, maybe ours
                        finally:
                            self._role_waiters -= 1
                        continue
                    self._reading = True
                try:
                    ready = self._ws.buffered()
                    if not ready and spin:
                        ready = spin = self._spin(_SPIN_SECONDS if remaining is None
                                                  else min(_SPIN_SECONDS, remaining))
                    if ready or select.select([self._ws], [], [], remaining)[0]:
                        self._handle(self._ws.recv())
                except Exception as exc:  # noqa: BLE001 - the connection is gone
                    self._release_reading()
                    self._lost(exc)
                    continue
                self._release_reading()
            if lone:
                self._lone_wait = time.perf_counter() - started
            return True
        finally:
            with self._lock:
                self._foreground -= 1
                self._last_foreground = time.monotonic()

    def _spin(self, seconds: float) -> bool:
        """Polls the socket for up to `seconds`; True once bytes have arrived."""
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            if self._ws.poll():
                return True
        return False

    def _release_reading(self) -> None:
        with self._lock:
            self._reading = False
            # Only threads waiting for the role are woken; the background reader polls (below),
            # so a loop of submit and job() never wakes it.
            if self._role_waiters:
                self._turn.notify_all()

    def _read_loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while self._error is None:
                        if self._foreground or self._reading:
                            self._turn.wait(_FOREGROUND_GRACE)
                        elif time.monotonic() - self._last_foreground < _FOREGROUND_GRACE:
                            # A thread that just read its own result is likely to wait again at
                            # once (a loop of submit and job()): stay out of its way a moment, so
                            # it need not wake this thread to take the role back.
                            self._turn.wait(_FOREGROUND_GRACE)
                        else:
                            break
                    if self._error is not None:
                        return
                    self._reading = True
                    self._bg_selecting = not self._ws.buffered()
                try:
                    if self._bg_selecting:
                        ready = select.select([self._ws, self._wake_r], [], [])[0]
                        with self._lock:
                            self._bg_selecting = False
                        if self._wake_r in ready:
                            os.read(self._wake_r, 4096)
                        if self._ws not in ready:
                            continue
                    self._handle(self._ws.recv())
                finally:
                    self._release_reading()
        except Exception as exc:  # noqa: BLE001 - the connection is gone; every job hears of it
            self._lost(exc)

    def _handle(self, payload: Union[bytes, bytearray]) -> None:
        """Dispatches one message from the node. Called by the thread holding the reading role,
        so messages are handled one at a time, in order."""
        attachments = None
        if self._ws.binary:  # big results as attachments (docs/rest.md, "Binary messages")
            payload, attachments = shared_memory.split_binary(payload)
        message = json.loads(payload)
        results = message.get("results")
        if results is not None:
            if attachments is not None:
                for r in results:
                    r["attachments"] = attachments
            with self._lock:
                finished = [(self._jobs.pop(r["tag"], None), r) for r in results]
                if self._defining:
                    for r in results:  # its batch was accepted: the node has the function now
                        self._defining.pop(r["tag"], None)
            for job, data in finished:
                if job is not None:
                    job.id = data["id"]
                    job._complete(data, notify=False)
            if self._on_results is not None:
                self._on_results()
            return
        text = message.get("error", {}).get("message", "the node sent %r" % message)
        with self._lock:
            refused = [self._jobs.pop(tag, None) for tag in message.get("rejected", ())]
            for tag in message.get("rejected", ()):
                # A refused batch defines nothing on the node: the function's next job sends its
                # source again.
                key = self._defining.pop(tag, None)
                if key is not None:
                    self._fn_ids.pop(key, None)
        for job in refused:
            if job is not None:
                job._fail(SubmitError("SubmitError", text))
        if self._on_results is not None:
            self._on_results()

    def _lost(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = JobLostError("ConnectionLost", "the connection to the node was lost: %s" % exc)
            self._wake.notify()
            self._turn.notify_all()
        self._fail_all()

    def _fail_all(self) -> None:
        """Every job still waiting ends with the session's error: none waits forever."""
        with self._lock:
            waiting = list(self._jobs.values())
            self._jobs.clear()
            waiting.extend(item[1] for item in self._outgoing if item[0] == "job")
            self._outgoing = []
            error = self._error
        for job in waiting:
            assert error is not None
            job._fail(JobLostError(error.type, error.message))
