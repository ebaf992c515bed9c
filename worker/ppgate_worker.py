"""Starts a ppgate worker in this interpreter; the node runs it as
`<python> ppgate_worker.py --fd 3 --node-pid PID [--max-memory BYTES [--memory-rlimit]]`.

The worker loop is C++ (the extension module _ppgate_worker, stable ABI, beside this file) and the
job runtime is Python (ppgate_worker_runtime.py, beside it too). Both are loaded from this folder
by path, so nothing of ppgate's shadows the user's modules on sys.path.

Jobs see the caller's environment: with $PPGATE_SYS_PATH (a JSON list, set by the client that
started a private node) sys.path becomes exactly the caller's; otherwise it is this interpreter's
own with the working directory first, as for `python -c`.

`--check` prints what the node needs to know about this interpreter as one JSON line, after
loading both halves, so a node whose interpreter cannot run the worker fails at start.
This file runs on every CPython from 3.8 on.
"""

import _imp
import importlib.machinery
import importlib.util
import json
import marshal
import os
import signal
import sys


def _load(name, filename, code=None):
    """Module `name` from `filename` beside this file; a .py module runs `code` when given (its
    bytecode, read already: see prepare_fork)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    if filename.endswith(".so"):
        loader = importlib.machinery.ExtensionFileLoader(name, path)
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    else:
        spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if code is None and filename.endswith(".py"):
        code = _built_bytecode(path)
    if code is not None:
        exec(code, module.__dict__)
    else:
        spec.loader.exec_module(module)
    return module


def _built_bytecode(path):
    """The code of `path` from the bytecode the build made beside it (NAME.<cache tag>.pyc,
    checked against the source's hash), or None when there is none for this interpreter."""
    try:
        with open(path[:-3] + "." + sys.implementation.cache_tag + ".pyc", "rb") as f:
            data = f.read()
        with open(path, "rb") as f:
            source = f.read()
    except OSError:
        return None
    checked_hash = 0b11  # PEP 552 flags: hash-based, checked against the source
    if (data[:4] != importlib.util.MAGIC_NUMBER or int.from_bytes(data[4:8], "little") != checked_hash
            or data[8:16] != importlib.util.source_hash(source)):
        return None
    code = marshal.loads(data[16:])
    _imp._fix_co_filename(code, path)  # tracebacks name the source, as an import's would
    return code


def _use_callers_path():
    given = os.environ.pop("PPGATE_SYS_PATH", None)
    if given:
        sys.path[:] = [p for p in json.loads(given) if isinstance(p, str)]
    else:
        sys.path[0] = os.getcwd()  # was this file's folder


def main(argv):
    if sys.version_info < (3, 8) or sys.implementation.name != "cpython":
        import platform  # (only here: serving needs it not)
        sys.stderr.write("ppgate workers need CPython 3.8 or later; this is %s %s\n"
                         % (platform.python_implementation(), platform.python_version()))
        return 78
    _use_callers_path()
    if argv[1:] == ["--check"]:
        import platform
        _load_halves()
        print(json.dumps({"version": platform.python_version(),
                          "implementation": platform.python_implementation(),
                          "executable": sys.executable}))
        return 0
    options = argv[5:]
    memory = options[1] if options[:1] == ["--max-memory"] and len(options) > 1 else None
    rlimit = options[2:] == ["--memory-rlimit"]
    if (len(argv) < 5 or argv[1] != "--fd" or argv[3] != "--node-pid"
            or not argv[2].isdigit() or not argv[4].isdigit()
            or (options and (memory is None or not memory.isdigit() or options[2:] not in ([], ["--memory-rlimit"])))):
        sys.stderr.write("usage: python ppgate_worker.py --fd N --node-pid PID [--max-memory BYTES [--memory-rlimit]]"
                         " | --check\n"
                         "Runs Python jobs for the ppgate node PID over the socket on fd N; "
                         "it is started by `ppgate serve`, not by hand.\n")
        return 64
    serve(int(argv[2]), int(argv[4]), None if memory is None else int(memory), rlimit)
    return 0


def _load_halves(prepared=None):
    """The loop and the runtime; `prepared` is what prepare_fork returned in the process this
    one is a fork of."""
    # Under a batch system, SIGTERM (walltime, scancel) reaches every process of the job: the
    # node drains, and stops its workers itself (SIGKILL), so a worker lets the signal pass.
    # (Before the runtime loads: it watches jobs that change signal handlers.)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if prepared is not None:
        loop, runtime_code = prepared
        sys.modules[loop.__name__] = loop
        return loop, _load("ppgate_worker_runtime", "ppgate_worker_runtime.py", runtime_code)
    return _load("_ppgate_worker", "_ppgate_worker.abi3.so"), _load("ppgate_worker_runtime", "ppgate_worker_runtime.py")


def prepare_fork():
    """For a process that forks itself into workers (the Python client, which calls `serve` in
    each fork): the loop, imported here, as it changes nothing in the process, and the
    runtime's code, read and checked but not run, as its import watches the process's signal
    functions. Done once before forking, it is not done again by every fork on its way to its
    first job."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ppgate_worker_runtime.py")
    code = _built_bytecode(path)
    if code is None:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
    loop = _load("_ppgate_worker", "_ppgate_worker.abi3.so")
    del sys.modules[loop.__name__]  # the forks' module, not the caller's
    return loop, code


def serve(fd, node_pid, memory=None, rlimit=False, prepared=None):
    """Runs jobs from the node on socket `fd` until it closes the link. `node_pid` is this
    process's parent, whose death ends it. Also the entry of a worker the Python client forks
    from itself for its private node to adopt (`ppgate serve --adopt-from`), with `prepared`
    from prepare_fork."""
    loop, runtime = _load_halves(prepared)
    runtime.own_link(fd)
    if memory is not None:
        runtime.limit_memory(memory, rlimit)
    # Under a memory limit every reply goes at once: the kernel's kill leaves no time to write
    # held ones (worker_module.cpp, reply_writer).
    loop.serve(fd, runtime.handle, node_pid, memory is None)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
