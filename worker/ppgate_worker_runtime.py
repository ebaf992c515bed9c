"""The Python half of the worker: runs one job per message.

The worker loop (C++, _ppgate_worker) reads a frame from its node, calls handle(payload) and writes
the bytes it returns as the reply frame. A message is a job of the session format (lib/job_message.hpp):

    {"tag": 7, "fn_id": 1, "function": "sq", "source": "def sq(x): ...", "modules": ["math"],
     "codec": "json", "args": [7], "kwargs": {}, "globals": {}}

"function", "source" and "modules" come only the first time this process sees a function; later
jobs carry its fn_id alone. The reply is one header line, then JSON object members:

    7 ok 0.0000123
    "result":49,"stdout":"","stderr":""

or "7 error <seconds>" followed by "error":{"type","message","traceback"} and the captured output.
"""

import base64
import binascii
import builtins
import functools
import importlib
import itertools
import io
import json
import linecache
import mmap
import os
import pickle
import re
import signal
import sys
import _thread
import time
import traceback
import types

_RUNTIME_FILE = __file__

# Private references to what the runtime uses: a job may rebind any name it can reach
# (builtins.len = None, io.StringIO = None, time.perf_counter = None, pickle.loads = None) without
# breaking the worker for the jobs after it.
_StringIO = io.StringIO
_perf_counter = time.perf_counter
_json_loads = json.loads
_json_scan = json.JSONDecoder().scan_once
_crc32 = binascii.crc32
_starmap, _partial = itertools.starmap, functools.partial
_pickle_loads, _pickle_dumps, _PICKLE_PROTOCOL = pickle.loads, pickle.dumps, pickle.HIGHEST_PROTOCOL
_Unpickler, _BytesIO = pickle.Unpickler, io.BytesIO
_b2a_base64 = binascii.b2a_base64
if sys.version_info >= (3, 11):
    # b64decode(validate=True) first checks the text with a regular expression, in Python.
    def _b64decode(text, _a2b=binascii.a2b_base64):
        return _a2b(text, strict_mode=True)
else:
    def _b64decode(text, _decode=base64.b64decode):
        return _decode(text, validate=True)
_ModuleType, _FunctionType = types.ModuleType, types.FunctionType
_import_module = importlib.import_module
_getcwd, _chdir, _umask = os.getcwd, os.chdir, os.umask
_waitpid, _WNOHANG = os.waitpid, os.WNOHANG
_thread_count = _thread._count  # threads other than the main one, however they were started
_PYTHON_VERSION = sys.version.split()[0]  # platform.python_version(), without platform
_open, _close, _fstat, _pwrite, _unlink = os.open, os.close, os.fstat, os.pwrite, os.unlink
_mmap, _ACCESS_COPY = mmap.mmap, mmap.ACCESS_COPY
_O_READ, _O_WRITE = os.O_RDONLY | os.O_CLOEXEC, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_memoryview, _len, _type, _sum = memoryview, len, type, sum

_functions = {}  # fn_id -> _Function (compiled once per process)
_dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
_quote = json.JSONEncoder(separators=(",", ":")).encode


class ResultEncodingError(Exception):
    """The job's result could not be encoded in the requested codec."""


class _Function:
    __slots__ = ("entry", "code", "imports", "error", "aliases")

    def __init__(self, msg):
        self.entry = msg.get("function", "")
        self.code = None
        self.imports = None
        self.error = None  # a compile error is replayed for every job of this function
        self.aliases = None  # module names the source's classes and functions claim (see _run)
        try:
            statements = [_import_statement(m) for m in msg.get("modules", ())]
            if statements:  # (None: nothing to run before each job)
                self.imports = compile("\n".join(statements), "<ppgate modules>", "exec")
            source = msg.get("source", "")
            if source:
                # Named by the source's checksum: the same on every worker and node.
                filename = "<ppgate job %08x>" % _crc32(source.encode("utf-8", "surrogatepass"))
                # Tracebacks show the job's own source lines.
                linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
                self.code = compile(source, filename, "exec")
        except BaseException as exc:  # noqa: BLE001 - reported to the submitter
            self.error = exc


def _import_statement(module):
    module = module.strip()
    if module.startswith(("import ", "from ")):
        return module
    return "import " + module


def _resolve(function, namespace):
    target = namespace.get(function.entry)  # the common case: a name the source defines
    if target is not None and callable(target):
        return target
    if ":" in function.entry:
        module_name, _, qualname = function.entry.partition(":")
        target = _import_module(module_name)
        parts = qualname.split(".")
    else:
        first, *parts = function.entry.split(".")
        if first not in namespace:
            raise NameError("the source defines no %r" % first)
        target = namespace[first]
    for part in parts:
        target = getattr(target, part)
    if not callable(target):
        raise TypeError("%r is not callable" % function.entry)
    return target


def _safe_text(what, fallback):
    """what() as text, or `fallback` when it raises: a job's exception may break its own __str__."""
    try:
        text = what()
        return text if type(text) is str else fallback
    except BaseException:  # noqa: BLE001 - whatever the job's object raises
        return fallback


def _error_parts(exc):
    """(type name, message, traceback text) of a job's exception, whatever it breaks."""
    kind = type(exc)
    name = _safe_text(lambda: kind.__qualname__, "?")
    module = _safe_text(lambda: kind.__module__, "")
    if module not in ("builtins", "__main__", _RUNTIME_MODULE, ""):
        name = module + "." + name
    if _memory.limit and isinstance(exc, MemoryError):
        _memory.crossed = True
        return "WorkerMemoryError", _memory.describe(exc), _safe_text(
            lambda: "".join(traceback.format_exception(kind, exc, exc.__traceback__)), "")

    def traceback_text():
        tb = exc.__traceback__
        # Drop the runtime's own frames: the submitter wants to see where their code failed.
        while tb is not None and tb.tb_frame.f_code.co_filename == _RUNTIME_FILE:
            tb = tb.tb_next
        return "".join(traceback.format_exception(kind, exc, tb))

    message = _safe_text(lambda: str(exc), "<the exception's message could not be rendered>")
    text = _safe_text(traceback_text, "%s: %s\n(the traceback could not be rendered)\n" % (name, message))
    if isinstance(exc, ImportError):
        # What was missing is only half the story: say where the worker looked.
        message += " (the worker runs Python %s, %s, with sys.path = %r)" % (
            _PYTHON_VERSION, sys.executable, _baseline.path)
    return name, message, text


def _format_error(exc):
    name, message, text = _error_parts(exc)
    return '"error":{"type":%s,"message":%s,"traceback":%s}' % (
        _quote(name), _quote(message), _quote(text))


def _map(target, args, kwargs, pickled):
    """A map job (docs/rest.md, "Map jobs"): `target` called once per call, in order; a call that
    raises keeps its error and the others go on. The calls are `args` as JSON (one argument list
    per call), or, pickled, zip(*args) (one column of arguments per parameter, as map() takes
    them). The result: the values in order (None where a call raised) and the errors by index,
    as (values, [(index, type, message, traceback)]) or {"values": [...], "errors": [{...}]}."""
    values, errors = [], []
    total = min(map(len, args), default=0) if pickled else len(args)
    calls = iter(zip(*args) if pickled else args)
    call = _partial(target, **kwargs) if kwargs else target
    while len(values) < total:
        try:
            # starmap runs the calls in C, and extend keeps the values of the calls before one
            # that raises; that call's place is then kept with None, and the rest go on.
            values.extend(_starmap(call, calls))
            break
        except BaseException as exc:  # noqa: BLE001 - as for a whole job: the call's error
            index = len(values)
            values.append(None)
            name, message, text = _error_parts(exc)
            errors.append((index, name, message, text) if pickled
                          else {"index": index, "type": name, "message": message, "traceback": text})
    return (values, errors) if pickled else {"values": values, "errors": errors}


_RUNTIME_MODULE = __name__

# Pickles in shared memory (docs/rest.md, "Shared memory"): a session on this host names files in
# /dev/shm that hold a pickle and its out-of-band buffers; a big result goes back likewise, under
# the session's prefix ("shm" in the run message). The client's half is ppgate/_shared_memory.py.
_SHM_FOLDER = "/dev/shm/"
_SHM_RESULT_MIN = 64 * 1024  # smaller results go inline
_SHM_ALIGN = 64


def _loads(value, values=None):
    """Unpickles an argument as the node passes it: base64, or in parts, inline (base64) or as
    [offset, size] ranges of a shared-memory file. `values` are the values put once that the job
    takes: the pickle names them by their index (a persistent id)."""
    if isinstance(value, str):
        return _unpickle(_b64decode(value), (), values)
    parts = value["parts"]
    name = value.get("shm")
    if name is None:
        data = [_b64decode(p) for p in parts]
    else:
        fd = _open(_SHM_FOLDER + name, _O_READ)
        try:
            size = _fstat(fd).st_size
            # Private, writable (copy-on-write) pages: arguments come out writable, as unpickled
            # bytes would, and a job that writes to one changes nobody else's.
            view = _memoryview(_mmap(fd, size, access=_ACCESS_COPY)) if size else _memoryview(b"")
        finally:
            _close(fd)
        data = []
        for offset, length in parts:
            if offset + length > size:
                raise ValueError("part [%d, %d] lies outside shared memory %s of %d bytes"
                                 % (offset, length, name, size))
            data.append(view[offset:offset + length])
    return _unpickle(data[0], data[1:], values)


def _unpickle(stream, buffers, values):
    if values is None:
        return _pickle_loads(stream, buffers=buffers)
    unpickler = _Unpickler(_BytesIO(stream), buffers=buffers)
    unpickler.persistent_load = values
    return unpickler.load()


# Values put once (docs/rest.md, "Values put once"). The node sends each value the first time a
# job here takes it, and "release <key> ..." once no job takes it any more. A job's pickles name
# the values it takes by their index in its "refs": index i for a value put once, unpickled once
# per worker and shared by its jobs; -1 - i for a value the client sends once but each job gets a
# fresh copy of (a closure's big captured value, a bound method's big instance), unpickled per job.
_fields = {}  # key -> the value as sent, until unpickled for good
_values = {}  # key -> the value unpickled once


def _taken_values(refs):
    """The job's persistent_load: resolves the indices of its pickles to the values it takes,
    the same object for the same index within one job."""
    keys = []
    for entry in refs:
        if isinstance(entry, dict):  # {"put": key, "value": ...}: the first job here to take it
            _fields[entry["put"]] = entry["value"]
            entry = entry["put"]
        if entry not in _fields and entry not in _values:
            raise RuntimeError("this worker was never sent value %s" % entry)
        keys.append(entry)
    taken = {}

    def load(index):
        try:
            return taken[index]
        except KeyError:
            pass
        if index >= 0:
            key = keys[index]
            try:
                value = _values[key]
            except KeyError:
                value = _values[key] = _loads(_fields.pop(key))
        else:
            value = _loads(_fields[keys[-1 - index]])
        taken[index] = value
        return value
    return load


def _keep_definitions(payload):
    """A job the node took back (skipped here) may carry what later jobs name without sending it
    again: its function's definition and values put once. They are kept, the job is not run."""
    msg = _json_loads(payload)
    fn_id = msg.get("fn_id")
    if "function" in msg and fn_id not in _functions:
        _functions[fn_id] = _Function(msg)
    for entry in msg.get("refs") or ():
        if isinstance(entry, dict) and entry["put"] not in _values:
            _fields[entry["put"]] = entry["value"]


def _release(payload):
    for key in payload.split()[1:]:
        _values.pop(int(key), None)
        _fields.pop(int(key), None)


def _dumps_result(result, shm_prefix, job_id):
    """The pickled result as the reply's JSON (bytes): base64, or, when it is big and the session
    shares this host's memory, the parts of a file named by the session's `shm_prefix` and the
    job. Runs before restore(): it calls no builtin by name, which the job may have rebound."""
    if shm_prefix is None or _type(result) in _PLAIN_RESULTS:  # (the common case: no buffers)
        stream = _pickle_dumps(result, _PICKLE_PROTOCOL)
        if shm_prefix is not None and _len(stream) >= _SHM_RESULT_MIN:
            return _dumps(_write_shared("%sr%d" % (shm_prefix, job_id), [_memoryview(stream)])).encode("ascii")
        return b'"%s"' % _b2a_base64(stream, newline=False)
    buffers = []
    stream = _pickle_dumps(result, 5, buffer_callback=buffers.append)
    try:
        raws = [b.raw() for b in buffers]
    except BufferError:  # not contiguous: in-band it goes
        raws = None
    if raws is not None and _len(stream) + _sum([r.nbytes for r in raws]) >= _SHM_RESULT_MIN:
        return _dumps(_write_shared("%sr%d" % (shm_prefix, job_id), [_memoryview(stream)] + raws)).encode("ascii")
    if buffers:
        stream = _pickle_dumps(result, _PICKLE_PROTOCOL)
    return b'"%s"' % _b2a_base64(stream, newline=False)


_PLAIN_RESULTS = frozenset((int, float, bool, type(None), str, bytes, complex))


def _write_shared(name, parts):
    fd = _open(_SHM_FOLDER + name, _O_WRITE, 0o600)
    try:
        ranges = []
        offset = 0
        for part in parts:
            offset = -(-offset // _SHM_ALIGN) * _SHM_ALIGN
            size = part.nbytes
            view = part if part.ndim == 1 and part.format == "B" else part.cast("B")
            done = 0
            while done < size:
                done += _pwrite(fd, view[done:], offset + done)
            ranges.append([offset, size])
            offset += size
    except BaseException:
        _close(fd)
        try:
            _unlink(_SHM_FOLDER + name)
        except OSError:
            pass
        raise
    _close(fd)
    return {"shm": name, "parts": ranges}


def _run(msg):
    fn_id = msg["fn_id"]
    function = _functions.get(fn_id)
    if function is None:
        if "function" not in msg:
            raise RuntimeError("this worker has not been sent function %s" % fn_id)
        function = _functions[fn_id] = _Function(msg)
    if function.error is not None:
        raise function.error.with_traceback(None)

    # Each job gets a fresh __main__: jobs of different functions never see each other's
    # definitions, and pickled instances of classes defined in the source resolve to them.
    main = _ModuleType("__main__")
    namespace = main.__dict__
    namespace["__builtins__"] = builtins
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    aliased = []
    try:
        pickled = msg.get("codec") == "pickle"
        if function.imports is not None:
            exec(function.imports, namespace)
        if function.code is not None:
            exec(function.code, namespace)
        # Classes and functions shipped from a client module other than __main__ keep that
        # module's name (the client adds `X.__module__ = "name"`), so pickles name them as the
        # client does. During the job, that name resolves to this job's namespace.
        if function.aliases is None:
            function.aliases = sorted({
                v.__module__ for v in namespace.values()
                if isinstance(v, (type, _FunctionType)) and isinstance(v.__module__, str)
                and v.__module__ not in ("__main__", "builtins") and v.__module__ not in sys.modules})
        for alias in function.aliases:
            if alias not in sys.modules:
                sys.modules[alias] = main
                aliased.append(alias)
        # Values put once, then pp's globals= and the captured variables of a closure: after the
        # source ran, so pickled instances of classes the source defines can be loaded.
        refs = msg.get("refs")
        values = _taken_values(refs) if refs else None
        extra = msg.get("globals")
        if extra:
            namespace.update(_loads(extra, values) if pickled else extra)
        target = _resolve(function, namespace)
        if pickled:
            args = _loads(msg.get("args") or _EMPTY_TUPLE, values)
            kwargs = msg.get("kwargs")
            kwargs = _loads(kwargs, values) if kwargs else {}
        else:
            args = msg.get("args", ())
            kwargs = msg.get("kwargs") or {}
        started = _perf_counter()
        try:
            result = _map(target, args, kwargs, pickled) if msg.get("map") else target(*args, **kwargs)
        finally:
            elapsed = _perf_counter() - started
        try:
            if pickled:
                encoded = _dumps_result(result, msg.get("shm"), msg["tag"])
            else:
                encoded = _dumps(result).encode("ascii")  # (ensure_ascii: \u escapes only)
        except BaseException as exc:  # noqa: BLE001 - a result's __reduce__ may raise anything
            raise ResultEncodingError(
                "the job's result (a %s) cannot be encoded as %s: %s"
                % (type(result).__name__, msg.get("codec", "json"), exc)) from None
        return elapsed, encoded
    finally:
        for alias in aliased:
            del sys.modules[alias]
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


_EMPTY_TUPLE = base64.b64encode(pickle.dumps(())).decode("ascii")


def own_link(fd):
    """Keeps the worker's link to its node out of the processes that jobs start."""
    os.set_inheritable(fd, False)  # not inherited by exec'd children (os.system, subprocess)

    def close_in_child():
        try:
            os.close(fd)
        except OSError:
            pass

    os.register_at_fork(after_in_child=close_in_child)  # nor kept open by forked ones


class _MemoryCap:
    """--max-worker-memory (lib/worker_memory.hpp). The node names the limit; with `rlimit` (no
    cgroup could be made) the worker caps itself: before each job, its address space may grow by
    what the limit leaves its resident memory, so an allocation past the limit raises MemoryError
    (reported as WorkerMemoryError, and the worker is replaced). After each job, a worker whose
    resident memory is over the limit is replaced."""

    def __init__(self):
        self.limit = 0
        self.rlimit = False
        self.crossed = False  # the job ran out of memory under the cap
        self._statm = None
        self._page = 4096

    def set(self, limit, rlimit):
        import resource
        self.limit, self.rlimit = limit, rlimit
        self._page = resource.getpagesize()
        self._statm = os.open("/proc/self/statm", _O_READ)
        # Private references, as for the rest of the runtime: a job may rebind os.pread.
        self._pread = os.pread
        self._setrlimit, self._RLIMIT_AS = resource.setrlimit, resource.RLIMIT_AS
        self._unlimited = resource.getrlimit(resource.RLIMIT_AS)

    def _pages(self):
        size, resident = self._pread(self._statm, 128, 0).split()[:2]
        return int(size), int(resident)

    def before_job(self):
        self.crossed = False
        if self.rlimit:
            size, resident = self._pages()
            headroom = max(self.limit - resident * self._page, 0)
            soft = size * self._page + headroom
            hard = self._unlimited[1]
            self._setrlimit(self._RLIMIT_AS, (soft if hard < 0 else min(soft, hard), hard))

    def after_job(self):
        """True when the worker must be replaced: the job crossed the limit, or the worker is
        over it now."""
        if self.rlimit:
            self._setrlimit(self._RLIMIT_AS, self._unlimited)  # the reply must be made
        return self.crossed or self._pages()[1] * self._page > self.limit

    def describe(self, exc):
        detail = _safe_text(lambda: str(exc), "")
        return ("the job went over the worker memory limit of %d bytes (--max-worker-memory)%s; "
                "its worker is replaced" % (self.limit, " (%s)" % detail if detail else ""))


_memory = _MemoryCap()


def limit_memory(limit, rlimit):
    """Called once at start when the node gives --max-memory."""
    _memory.set(limit, rlimit)


# The largest reply the node takes (lib/frame.hpp max_frame_size), less room for the header.
_MAX_REPLY = 256 * 1024 * 1024 - 4096
_JOB_ID = re.compile(rb'\{"tag":(\d+)')

class _Baseline:
    """What a job may change and the next job must not see: taken once, before the first job."""

    def __init__(self):
        self.cwd = _getcwd()
        self.environ = dict(os.environ._data)  # noqa: SLF001 - the mapping os.environ wraps
        self.path = list(sys.path)
        self.recursion_limit = sys.getrecursionlimit()
        self.umask = _umask(0o022)
        _umask(self.umask)
        self.builtins = dict(builtins.__dict__)
        # Unchanged versions (_dict_version) spare comparing the dicts with their copies.
        self.environ_version = _dict_version(_environ_data)
        self.builtins_version = _dict_version(builtins.__dict__)
        self.signals_touched = False  # a job called signal.signal, alarm or setitimer
        self.process_touched = False  # a job called os.chdir, fchdir or umask

    def restore(self, job_seconds):
        """Puts back what the job changed. Returns why the worker must be replaced (what cannot be
        put back: threads, alarms, signal handlers, children), or None.

        It runs after every job, so what costs a system call is done only when a watched function
        (_watch) says the job went there."""
        if self.process_touched:
            self.process_touched = False
            if _getcwd_safe() != self.cwd:
                _chdir(self.cwd)
            _umask(self.umask)
        version = _dict_version(_environ_data)
        if version is None or version != self.environ_version:
            if _environ_data != self.environ:
                os.environ.clear()
                os.environ.update((k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                                  if isinstance(k, bytes) else (k, v) for k, v in self.environ.items())
            self.environ_version = _dict_version(_environ_data)
        if sys.path != self.path:
            sys.path[:] = self.path
        if sys.getrecursionlimit() != self.recursion_limit:
            sys.setrecursionlimit(self.recursion_limit)
        current = builtins.__dict__
        version = _dict_version(current)
        if version is None or version != self.builtins_version:
            if not _same_dict(current, self.builtins):
                current.clear()
                current.update(self.builtins)
            self.builtins_version = _dict_version(current)
        if _thread_count() > 0:
            return "the job left threads running"
        if self.signals_touched:
            self.signals_touched = False
            return "the job changed signal handlers or set an alarm"
        # Starting a process takes far longer than this: a job this short started none, and the
        # system call that would tell is spared.
        if job_seconds > _QUICKER_THAN_ANY_PROCESS_START and _children_alive():
            return "the job left child processes running"
        return None


def _getcwd_safe():
    try:
        return _getcwd()
    except OSError:  # the job removed the directory it was in
        return None


def _dict_version_reader():
    """The worker loop's dict_version, when it tells this interpreter's dicts apart as PEP 509's
    version tag does (CPython 3.8-3.13: a new number after every change); else a function that
    says None, and restore() compares the dicts. Checked here, on each kind of change, since it
    reads a field the stable ABI does not promise."""
    read = getattr(sys.modules.get("_ppgate_worker"), "dict_version", None)
    if read is not None:
        try:
            d = {"a": 1, "b": 2}
            seen = [read(d), read(d)]
            d["a"] = 3  # (the same keys: a field counting them would not change)
            seen.append(read(d))
            d["c"] = 4
            seen.append(read(d))
            del d["c"]
            seen.append(read(d))
            d.update(a=5)
            seen.append(read(d))
            d.clear()
            seen.append(read(d))
            if seen[0] == seen[1] and len(set(seen[1:])) == len(seen) - 1:
                return read
        except BaseException:  # noqa: BLE001 - anything odd: compare the dicts instead
            pass
    return lambda d: None


_dict_version = _dict_version_reader()


def _same_dict(a, b):
    try:
        return a == b
    except BaseException:  # noqa: BLE001 - a job's object may break ==
        return False


def _python_children_alive():
    try:
        while True:
            pid, _ = _waitpid(-1, _WNOHANG)
            if pid == 0:
                return True
    except ChildProcessError:
        return False


# The worker loop's C version when it is loaded (ppgate_worker.py loads it first).
_children_alive = getattr(sys.modules.get("_ppgate_worker"), "children_alive", _python_children_alive)


def _watch(module, names, flag):
    """Makes module.name note, in _baseline.<flag>, that a job called it."""
    for name in names:
        original = getattr(module, name, None)
        if original is None:
            continue

        def watched(*args, __original=original, **kwargs):
            setattr(_baseline, flag, True)
            return __original(*args, **kwargs)

        watched.__name__ = name
        watched.__doc__ = original.__doc__
        setattr(module, name, watched)


_QUICKER_THAN_ANY_PROCESS_START = 20e-6  # seconds
_environ_data = os.environ._data  # noqa: SLF001 - the dict os.environ keeps (and changes in place)
_baseline = _Baseline()
# What these set outlives the job: that worker is replaced after it.
_watch(signal, ("signal", "alarm", "setitimer", "pthread_kill", "pthread_sigmask", "set_wakeup_fd"), "signals_touched")
# What these change is put back after the job.
_watch(os, ("chdir", "fchdir", "umask"), "process_touched")


def _flush_first(module, names):
    """Makes module.name write the replies the worker loop holds back before it ends or replaces
    the process: those jobs ended, and the node must hear so before it hears of the worker's end
    (worker_module.cpp, reply_writer)."""
    flush = getattr(sys.modules.get("_ppgate_worker"), "flush_replies", None)
    if flush is None:
        return
    for name in names:
        original = getattr(module, name, None)
        if original is None:
            continue

        def flushing(*args, __original=original, **kwargs):
            flush()
            return __original(*args, **kwargs)

        flushing.__name__ = name
        flushing.__doc__ = original.__doc__
        setattr(module, name, flushing)


# (os.execl, execlp, execvp and the rest call these two.)
_flush_first(os, ("_exit", "execv", "execve"))


# A job's captured output is cut beyond this (each stream), with a marker that says so: the node
# keeps finished jobs' output, and one chatty job must not fill it.
_MAX_OUTPUT = 16 * 1024 * 1024


def _capped(text):
    if len(text) <= _MAX_OUTPUT:
        return text
    return text[:_MAX_OUTPUT] + "\n[ppgate: output truncated, %d more characters dropped]\n" % (
        len(text) - _MAX_OUTPUT)


def _reply(job_id, status, elapsed, body, stdout, stderr, retire):
    """The reply frame (bytes); `body` is bytes of JSON members ("result": or "error":)."""
    # Seconds to the nanosecond: "%.9f" costs a third of repr's shortest round trip.
    if not (stdout or stderr or retire):  # (the common case: bytes formatting, no encoding)
        return b'%d %s %.9f\n%s,"stdout":"","stderr":""' % (job_id, status, elapsed, body)
    suffix = b" retire-memory" if retire is _OVER_MEMORY else b" retire" if retire else b""
    return b'%d %s %.9f%s\n%s,"stdout":%s,"stderr":%s' % (
        job_id, status, elapsed, suffix, body,
        _quote(stdout).encode("utf-8", "surrogatepass") if stdout else b'""',
        _quote(stderr).encode("utf-8", "surrogatepass") if stderr else b'""')


def _parse_run_message(payload):
    """json.loads(payload) for the node's run messages, through the decoder's C scanner: the
    node writes them, so the checks json.loads makes first (encoding, whitespace) find nothing,
    and cost half as much as the parse. Anything else goes to json.loads, and its error."""
    try:
        text = payload.decode("utf-8", "surrogatepass")
        msg, end = _json_scan(text, 0)
        if end == len(text) and type(msg) is dict:
            return msg
    except BaseException:  # noqa: BLE001 - json.loads says what is wrong with it
        pass
    return _json_loads(payload)


_OVER_MEMORY = "the worker is over --max-worker-memory"


def handle(payload):
    """Runs the job in `payload` (bytes) and returns the reply (bytes). Never raises.

    The reply's header ends with " retire" when the job left something behind that cannot be
    undone (threads, alarms, signal handlers, children): the node replaces this worker.
    A "release <key> ..." note is no job: it gets no reply (b""); nor does "skipped <job>", a job
    the node took back, of which only the definitions it carries are kept."""
    if payload.startswith(b"release "):
        try:
            _release(payload)
        except BaseException:  # noqa: BLE001 - a note the node made; nothing to answer
            pass
        return b""
    if payload.startswith(b"skipped "):
        try:
            _keep_definitions(payload[8:])
        except BaseException:  # noqa: BLE001 - the job is not run; a later one reports any problem
            pass
        return b""
    started = run_started = _perf_counter()
    out, err = _StringIO(), _StringIO()
    saved = sys.stdout, sys.stderr
    job_id = 0
    try:
        msg = _parse_run_message(payload)
        job_id = int(msg.get("tag", 0))
        sys.stdout, sys.stderr = out, err
        if _memory.limit:
            _memory.before_job()
        run_started = _perf_counter()
        elapsed, encoded = _run(msg)
        status, body = b"ok", b'"result":' + encoded
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are job errors too
        elapsed = _perf_counter() - started
        if job_id == 0:
            # A run message that did not parse: answer for the job it names all the same.
            found = _JOB_ID.match(payload)
            job_id = int(found.group(1)) if found else 0
        try:
            status, body = b"error", _format_error(exc).encode("utf-8", "surrogatepass")
        except BaseException:  # noqa: BLE001 - out of memory, and worse
            status, body = b"error", b'"error":{"type":"Error","message":"the job failed","traceback":""}'
    finally:
        sys.stdout, sys.stderr = saved
    try:
        # (from the job's start: parsing its message starts no process)
        retire = _baseline.restore(_perf_counter() - run_started)
        if not retire and _memory.limit and _memory.after_job():
            retire = _OVER_MEMORY
    except BaseException as exc:  # noqa: BLE001 - the job broke what restore() uses
        retire = "the job left the worker in a state it cannot restore (%s)" % _safe_text(lambda: repr(exc), "?")
    try:
        stdout, stderr = out.getvalue(), err.getvalue()
        if len(stdout) > _MAX_OUTPUT or len(stderr) > _MAX_OUTPUT:
            stdout, stderr = _capped(stdout), _capped(stderr)
        reply = _reply(job_id, status, elapsed, body, stdout, stderr, retire)
        if len(reply) > _MAX_REPLY:
            raise MemoryError
    except BaseException:  # noqa: BLE001 - a result or output too large to send, or to encode
        message = ("the job's result and output take more than the %d MiB a reply may hold"
                   % (_MAX_REPLY >> 20))
        reply = _reply(job_id, b"error", elapsed, b'"error":{"type":"ResultTooLarge","message":%s,"traceback":""}'
                       % _quote(message).encode("ascii"), "", "", retire)
    return reply
