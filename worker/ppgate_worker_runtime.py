"""The Python half of the worker: runs one job per message.

The worker loop (C++, _ppgate_worker) reads a frame from its node, calls handle(payload) and writes
the bytes it returns as the reply frame. A message is JSON:

    {"id": 7, "fn": "<hash>", "entry": "sq", "source": "def sq(x): ...", "modules": ["math"],
     "codec": "json", "args": [7], "kwargs": {}, "globals": {}}

"entry", "source" and "modules" come only the first time this process sees a function hash;
later jobs carry the hash alone. The reply is one header line, then JSON object members:

    7 ok 0.0000123
    "result":49,"stdout":"","stderr":""

or "7 error <seconds>" followed by "error":{"type","message","traceback"} and the captured output.
"""

import base64
import builtins
import importlib
import io
import json
import linecache
import os
import pickle
import platform
import sys
import time
import traceback
import types

_RUNTIME_FILE = __file__

_functions = {}  # function hash -> _Function (compiled once per process)
_dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
_quote = json.JSONEncoder(separators=(",", ":")).encode


class ResultEncodingError(Exception):
    """The job's result could not be encoded in the requested codec."""


class _Function:
    __slots__ = ("entry", "code", "imports", "error", "aliases")

    def __init__(self, msg):
        self.entry = msg.get("entry", "")
        self.code = None
        self.imports = None
        self.error = None  # a compile error is replayed for every job of this function
        self.aliases = None  # module names the source's classes and functions claim (see _run)
        try:
            statements = [_import_statement(m) for m in msg.get("modules", ())]
            self.imports = compile("\n".join(statements), "<ppgate modules>", "exec")
            source = msg.get("source", "")
            if source:
                filename = "<ppgate job %s>" % msg["fn"][:12]
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
    if ":" in function.entry:
        module_name, _, qualname = function.entry.partition(":")
        target = importlib.import_module(module_name)
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


def _format_error(exc):
    tb = exc.__traceback__
    # Drop the runtime's own frames: the submitter wants to see where their code failed.
    while tb is not None and tb.tb_frame.f_code.co_filename == _RUNTIME_FILE:
        tb = tb.tb_next
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__", _RUNTIME_MODULE):
        name = kind.__module__ + "." + name
    text = "".join(traceback.format_exception(kind, exc, tb))
    message = str(exc)
    if isinstance(exc, ImportError):
        # What was missing is only half the story: say where the worker looked.
        message += " (the worker runs Python %s, %s, with sys.path = %r)" % (
            platform.python_version(), sys.executable, sys.path)
    return '"error":{"type":%s,"message":%s,"traceback":%s}' % (
        _quote(name), _quote(message), _quote(text))


_RUNTIME_MODULE = __name__


def _run(msg):
    fn_hash = msg["fn"]
    function = _functions.get(fn_hash)
    if function is None:
        if "entry" not in msg:
            raise RuntimeError("this worker has not been sent function %s" % fn_hash)
        function = _functions[fn_hash] = _Function(msg)
    if function.error is not None:
        raise function.error.with_traceback(None)

    # Each job gets a fresh __main__: jobs of different functions never see each other's
    # definitions, and pickled instances of classes defined in the source resolve to them.
    main = types.ModuleType("__main__")
    namespace = main.__dict__
    namespace["__builtins__"] = builtins
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    aliased = []
    try:
        pickled = msg.get("codec") == "pickle"
        exec(function.imports, namespace)
        if function.code is not None:
            exec(function.code, namespace)
        # Classes and functions shipped from a client module other than __main__ keep that
        # module's name (the client adds `X.__module__ = "name"`), so pickles name them as the
        # client does. During the job, that name resolves to this job's namespace.
        if function.aliases is None:
            function.aliases = sorted({
                v.__module__ for v in namespace.values()
                if isinstance(v, (type, types.FunctionType)) and isinstance(v.__module__, str)
                and v.__module__ not in ("__main__", "builtins") and v.__module__ not in sys.modules})
        for alias in function.aliases:
            if alias not in sys.modules:
                sys.modules[alias] = main
                aliased.append(alias)
        extra = msg.get("globals")
        if extra:
            # pp's globals=, and the captured variables of a closure. Set after the source ran, so
            # pickled instances of classes the source defines can be loaded.
            namespace.update(pickle.loads(base64.b64decode(extra, validate=True)) if pickled else extra)
        target = _resolve(function, namespace)
        if pickled:
            args = pickle.loads(base64.b64decode(msg.get("args") or _EMPTY_TUPLE, validate=True))
            kwargs = msg.get("kwargs")
            kwargs = pickle.loads(base64.b64decode(kwargs, validate=True)) if kwargs else {}
        else:
            args = msg.get("args", ())
            kwargs = msg.get("kwargs") or {}
        started = time.perf_counter()
        try:
            result = target(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
        try:
            if pickled:
                encoded = '"' + base64.b64encode(pickle.dumps(result, pickle.HIGHEST_PROTOCOL)).decode("ascii") + '"'
            else:
                encoded = _dumps(result)
        except Exception as exc:  # noqa: BLE001
            raise ResultEncodingError(
                "the job's result (a %s) cannot be encoded as %s: %s"
                % (type(result).__name__, msg.get("codec", "json"), exc)) from None
        return elapsed, encoded
    finally:
        for alias in aliased:
            del sys.modules[alias]
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


_EMPTY_TUPLE = base64.b64encode(pickle.dumps(()))


def own_link(fd):
    """Keeps the worker's link to its node out of the processes that jobs start."""
    os.set_inheritable(fd, False)  # not inherited by exec'd children (os.system, subprocess)

    def close_in_child():
        try:
            os.close(fd)
        except OSError:
            pass

    os.register_at_fork(after_in_child=close_in_child)  # nor kept open by forked ones


def handle(payload):
    """Runs the job in `payload` (bytes) and returns the reply (bytes). Never raises."""
    started = time.perf_counter()
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    job_id = 0
    try:
        msg = json.loads(payload)
        job_id = int(msg.get("id", 0))
        sys.stdout, sys.stderr = out, err
        elapsed, encoded = _run(msg)
        status, body = "ok", '"result":' + encoded
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are job errors too
        elapsed = time.perf_counter() - started
        status, body = "error", _format_error(exc)
    finally:
        sys.stdout, sys.stderr = saved
    reply = "%d %s %r\n%s,\"stdout\":%s,\"stderr\":%s" % (
        job_id, status, elapsed, body, _quote(out.getvalue()), _quote(err.getvalue()))
    return reply.encode("utf-8", "surrogatepass")
