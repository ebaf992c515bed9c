"""Finding the ppgate binary and running a private node for Server() without a url."""

from __future__ import annotations

import _imp
import _thread
import array
import base64
import gc
import importlib.util
import json
import marshal
import os
import select
import signal
import socket
import sys
import threading
import time
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

_START_TIMEOUT = 30.0


def python_version() -> str:
    """platform.python_version(), without importing platform (a few ms of `import ppgate`)."""
    return sys.version.split()[0]


def random_token(size: int) -> str:
    """secrets.token_urlsafe(size), without importing secrets (and random, which it imports)."""
    return base64.urlsafe_b64encode(os.urandom(size)).rstrip(b"=").decode("ascii")


# What find_ppgate and find_worker_script found, by what they looked at: a program's later
# Server()s do not search PATH again on their way to their first result.
_found_executables: Dict[Tuple[Optional[str], Optional[str]], str] = {}
_found_scripts: Dict[Tuple[str, Optional[str]], str] = {}


def find_ppgate() -> str:
    """The ppgate executable: $PPGATE_BINARY, then PATH, then the build tree of this checkout."""
    key = (os.environ.get("PPGATE_BINARY"), os.environ.get("PATH"))
    found = _found_executables.get(key)
    if found is None or not os.access(found, os.X_OK):
        found = _found_executables[key] = _search_ppgate()
    return found


def _search_ppgate() -> str:
    env = os.environ.get("PPGATE_BINARY")
    if env:
        if not os.access(env, os.X_OK):
            raise FileNotFoundError("PPGATE_BINARY=%s is not an executable" % env)
        return env
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):  # shutil.which's search
        on_path = os.path.join(folder or os.curdir, "ppgate")
        if os.access(on_path, os.X_OK) and not os.path.isdir(on_path):
            return on_path
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(here)))  # clients/python/ppgate -> root
    for build in ("build", "builddir"):
        candidate = os.path.join(checkout, build, "gateway", "ppgate")
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "cannot find the ppgate executable: put it on PATH, set PPGATE_BINARY, or build this "
        "checkout (meson setup build && ninja -C build)")


def find_worker_script(ppgate: str) -> Optional[str]:
    """The worker's bootstrap, ppgate_worker.py, as the node finds it (`locate_worker_script` in
    gateway/options.cpp): $PPGATE_WORKER_DIR, else beside the executable, in its build tree, or in
    ../libexec/ppgate. None when it is not there (the node then says why it cannot start)."""
    given = os.environ.get("PPGATE_WORKER_DIR")
    found = _found_scripts.get((ppgate, given))
    if found is not None and os.path.isfile(found):
        return found
    binary = os.path.realpath(ppgate)
    bin_dir = os.path.dirname(binary)
    parent = os.path.dirname(bin_dir)
    for folder in ([given] if given else [bin_dir, os.path.join(parent, "worker"), os.path.join(parent, "libexec", "ppgate")]):
        if all(os.path.isfile(os.path.join(folder, name))
               for name in ("ppgate_worker.py", "_ppgate_worker.abi3.so", "ppgate_worker_runtime.py")):
            found = _found_scripts[(ppgate, given)] = os.path.join(folder, "ppgate_worker.py")
            return found
    return None


# A fork copies page tables: past this much resident memory, forking costs more than the
# interpreter start it saves.
_FORK_MAX_RESIDENT_BYTES = 1 << 30


def _fork_possible() -> bool:
    """The part of _may_fork that holds for the whole process: Linux, and not turned off."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") \
        and os.environ.get("PPGATE_FORK_WORKERS", "1") != "0"


def _may_fork() -> bool:
    """Whether this process can fork itself into workers safely and cheaply: Linux, no thread but
    this one (a fork copies only the calling thread; a lock another thread holds would stay held),
    under _FORK_MAX_RESIDENT_BYTES, and not turned off with PPGATE_FORK_WORKERS=0."""
    if not _fork_possible():
        return False
    # (_thread._count: every thread but the main one, however started; sessions start theirs raw)
    if _thread._count() != 0 or threading.current_thread() is not threading.main_thread():
        return False
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") <= _FORK_MAX_RESIDENT_BYTES
    except (OSError, ValueError, IndexError):
        return False


def _become_worker(kit: Tuple[Any, Any], link: socket.socket, own: Sequence[str], first: bool) -> None:
    """In a forked child: serve the node on `link` as its worker, then exit. Never returns into
    the caller's program. `kit`: _fork_kit's; `own`: the program's own modules; `first`: the
    first slot's fork, which the node gives the first job."""
    status = 70
    try:
        # What this process held when it forked stays as it is: a collection would walk (and,
        # freeing the garbage among it, write) the caller's whole heap, copying its pages into
        # this process - tens of milliseconds before the first job after a big map, in each fork.
        gc.freeze()
        # The node's probe (lib/held_replies.hpp: SIGRTMIN + 5) waits until the worker loop
        # can answer it, which unblocks it; its default action would end this process.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN + 5})
        os.setsid()  # a Ctrl-C at the terminal is for the program, not for its workers
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        # Forked workers would share the caller's random state: numpy's global one is not
        # reseeded on fork as the random module's is, and Monte Carlo jobs would repeat each other.
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            try:
                numpy.random.seed()
            except Exception:  # noqa: BLE001 - a numpy without it, or half imported
                pass
        for name in own:  # (fork_workers says why)
            sys.modules.pop(name, None)
        if not first:
            # Loading the runtime takes a fork about a millisecond of CPU: while Server() waits
            # for its first result, that is wanted by the node starting and by the first fork,
            # which loads at once. The others load when their first job comes (or the node ends:
            # the link reads EOF). SIGTERM passes meanwhile, as it does once the worker serves.
            signal.signal(signal.SIGTERM, lambda signum, frame: None)
            select.select([link], [], [])
        bootstrap, prepared = kit
        if prepared is None:
            bootstrap.serve(link.detach(), os.getppid())
        else:
            bootstrap.serve(link.detach(), os.getppid(), prepared=prepared)
        status = 0
    except BaseException:  # noqa: BLE001 - whatever happens, this process must not go on
        try:
            import traceback
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(status)


def _load_worker_bootstrap(script: str) -> Any:
    """ppgate_worker.py as a module, from the bytecode the build compiled beside it when it is
    this interpreter's and matches the source (as the worker loads its runtime: _built_bytecode
    there); else compiled from the source, which takes a fork ~4 ms of CPU that the node and
    the other forks want while Server() waits for its first result."""
    module = types.ModuleType("ppgate_worker")
    module.__file__ = script
    try:
        with open(script[:-3] + "." + sys.implementation.cache_tag + ".pyc", "rb") as f:
            data = f.read()
        with open(script, "rb") as f:
            source = f.read()
    except (OSError, TypeError):  # no bytecode, or no cache tag (an interpreter that caches none)
        data = source = b""
    checked_hash = 0b11  # PEP 552 flags: hash-based, checked against the source
    source_hash: Any = importlib.util.source_hash(source)  # bytes (typeshed says int)
    if data[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(data[4:8], "little") == checked_hash \
            and data[8:16] == source_hash:
        code = marshal.loads(data[16:])
        fix_filename = getattr(_imp, "_fix_co_filename", None)  # CPython's, untyped
        if fix_filename is not None:
            fix_filename(code, script)  # tracebacks name the source, as an import's would
    else:
        with open(script, "rb") as f:
            code = compile(f.read(), script, "exec")
    exec(code, module.__dict__)
    return module


# Per worker script, once per process: the bootstrap and what its prepare_fork made.
_fork_kits: Dict[str, Tuple[Any, Any]] = {}


def _fork_kit(script: str) -> Tuple[Any, Any]:
    """What forks of this process serve with: ppgate_worker.py as a module, and the loop and
    the runtime's code it prepares here once rather than in every fork (None from a bootstrap
    that has no prepare_fork)."""
    kit = _fork_kits.get(script)
    if kit is None:
        bootstrap = _load_worker_bootstrap(script)
        prepare = getattr(bootstrap, "prepare_fork", None)
        kit = _fork_kits[script] = (bootstrap, prepare() if prepare is not None else None)
    return kit


# The most sockets one message can carry (the kernel's SCM_MAX_FD): more slots than this get
# fresh interpreters from the start.
_MAX_FORKS = 253


def fork_workers(count: int, script: str, close_in_child: Sequence[int] = ()) -> List[Tuple[socket.socket, int]]:
    """Forks this process into `count` workers (at most _MAX_FORKS) for the private node to
    adopt: a fork is ready in a millisecond where a fresh interpreter takes tens, so Server() gets
    its first result as soon as multiprocessing's fork Pool would. Each is a slot's first process
    only: once it has run jobs and the queue is empty, the node hands its slot to a fresh
    interpreter, so jobs run in a clean process, as pp's do. `close_in_child`: descriptors of this
    process that the workers must not keep open. Returns the node's end of each worker's link and
    the worker's pid."""
    # What the worker's runtime imports and this program may not have: imported once here, not
    # by each fork on its way to its first job; so are the worker's halves (_fork_kit). A kit
    # that cannot load here would not serve in a fork either: no forks, fresh workers.
    import traceback  # noqa: F401
    from ._functions import own_modules
    try:
        kit = _fork_kit(script)
    except Exception:  # noqa: BLE001 - an interpreter the worker's extension does not load in
        return []
    # The program's own modules are imported here, and not in a fresh worker, where the
    # classes a job ships by source take their modules' names (the runtime's aliases): so
    # that a fork runs jobs as a fresh worker does, it forgets them (they import anew).
    own = own_modules()
    for stream in (sys.stdout, sys.stderr):  # not written twice by the children
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    forked: List[Tuple[socket.socket, int]] = []
    # The first slot's fork last: it loads the runtime at once (_become_worker), and this
    # process would compete with it for a CPU while making the others.
    for index in reversed(range(min(count, _MAX_FORKS))):
        node_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            node_end.close()
            worker_end.close()
            break
        if pid == 0:
            for earlier, _ in forked:
                earlier.close()
            node_end.close()
            for fd in close_in_child:
                try:
                    os.close(fd)
                except OSError:
                    pass
            _become_worker(kit, worker_end, own, first=index == 0)
        worker_end.close()
        forked.append((node_end, pid))
    forked.reverse()  # in the order of the slots
    return forked


def send_workers(channel: socket.socket, links: Sequence[Tuple[socket.socket, int]]) -> None:
    """Hands the forked workers to the node (`ppgate serve --adopt-from FD`): one message with
    their sockets and their pids; the node reads nothing more. A node that has already ended
    (it printed why) gets nothing, and the workers see EOF on their links once this process
    closes its copies."""
    if not links:
        return
    pids = " ".join(str(pid) for _, pid in links).encode()
    sockets = array.array("i", [link.fileno() for link, _ in links])
    try:
        channel.sendmsg([pids], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, sockets)])
    except OSError:
        pass


def reap(pid: int, timeout: float) -> None:
    """Waits up to `timeout` for forked worker `pid` to exit (the node stops it), then kills it."""
    deadline = time.monotonic() + timeout
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still this child's
                os.waitpid(pid, 0)
                return
            time.sleep(0.002)
    except ChildProcessError:  # reaped already (the program waited for any child)
        pass


class NodeProcess:
    """The node's process, started with os.posix_spawn: what PrivateNode (and its callers) use of
    a subprocess.Popen - pid, stdout, poll, wait, send_signal, terminate, kill, returncode -
    without importing subprocess (with locale and selectors, ~2 ms of a program's start). As
    Popen(args, stdout=PIPE, env=env, start_new_session=True, pass_fds=pass_fds) would, the node
    gets this process's standard input and error, the pipe as its output, `pass_fds` and no
    other descriptor, and SIGPIPE and SIGXFSZ at their defaults."""

    def __init__(self, args: List[str], env: Dict[str, str], pass_fds: Sequence[int]) -> None:
        read_end, write_end = os.pipe()  # (both close on exec)
        try:
            actions: List[Tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, write_end, 1)]
            actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_descriptors()
                        if fd > 2 and fd not in pass_fds]
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            spawn = os.posix_spawn if os.sep in args[0] else os.posix_spawnp  # (a bare name: PATH)
            self.pid = spawn(args[0], args, env, file_actions=actions, setsid=True,
                             setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self.stdout: Optional[Any] = open(read_end, "rb")
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already (the program waited for any child)
                self.returncode = 0  # (as Popen has it)
            else:
                if pid:
                    self.returncode = _exit_code(status)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        """The exit code (minus the signal that ended it); TimeoutError past `timeout`."""
        if timeout is None:
            while self.returncode is None:
                try:
                    self.returncode = _exit_code(os.waitpid(self.pid, 0)[1])
                except ChildProcessError:
                    self.returncode = 0
            return self.returncode
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the node (pid %d) has not exited within %s s" % (self.pid, timeout))
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # (a pid reaped might be another process's by now)
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _inheritable_descriptors() -> List[int]:
    """This process's descriptors that a spawned process would inherit."""
    try:
        candidates = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):  # no /proc: as many as Popen would close
        candidates = list(range(3, 1024))
    inheritable = []
    for fd in candidates:
        try:
            if os.get_inheritable(fd):
                inheritable.append(fd)
        except OSError:  # not open (the listing's own descriptor, closed by now)
            pass
    return inheritable


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class PrivateNode:
    """A ppgate child on a random loopback port with a random token. It stops with stop(), and
    on its own when this process exits, however it exits (--parent-pid).

    Its workers run this very interpreter (sys.executable) with this process's sys.path and
    working directory, as pp's do: a job imports whatever the calling script can."""

    def __init__(self, ncpus: int | str = "autodetect", restart: bool = False,
                 ppservers: Sequence[str] = (), secret: str | None = None,
                 peer_listen: str | None = None, connect: Optional[Callable[[str, str], Any]] = None) -> None:
        """`peer_listen`: a host to open a peer port on (port 0: one is picked, `peer_port`),
        where nodes join this one (a SlurmCluster's batch jobs). `connect(url, token)`: called
        as soon as the node's port exists, before the node runs (its connection waits in the
        port's backlog); what it returns (something with fileno() and close()) is kept in
        `connection`, for the caller to take, and kept out of forked workers."""
        self.token = random_token(24)
        self.connection: Any = None
        binary = find_ppgate()
        # The port is bound here and handed over (--listen-fd), so the caller can connect while
        # the node starts instead of after it says where it listens.
        port = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            port.bind(("127.0.0.1", 0))
            port.listen(socket.SOMAXCONN)
        except BaseException:
            port.close()
            raise
        args = [binary, "serve", "--listen-fd", str(port.fileno()),
                "--workers", "auto" if ncpus == "autodetect" else str(ncpus),
                "--parent-pid", str(os.getpid()), "--log-level", "warn"]
        if sys.executable:
            # This interpreter runs: the node need not start one just to check it.
            args += ["--python", sys.executable, "--python-version", python_version()]
        if restart:
            args.append("--restart")
        env = dict(os.environ, PPGATE_SECRET=self.token,
                   PPGATE_SYS_PATH=json.dumps([os.path.abspath(p) if p else os.getcwd() for p in sys.path]))
        if peer_listen is not None:
            args += ["--peer-listen", "%s:0" % peer_listen, "--peer-secret-env", "PPGATE_PEER_SECRET"]
            env["PPGATE_PEER_SECRET"] = secret or ""
        if ppservers:
            # The remote nodes are this private node's peers; they share the cluster secret.
            # '*' (pp's autodiscovery) finds them by broadcast on the local network.
            listed = [p for p in ppservers if p != "*"]
            if listed:
                args += ["--peers", ",".join(listed)]
            if "*" in ppservers:
                args.append("--discover")
            if peer_listen is None:
                args += ["--peer-secret-env", "PPGATE_PEER_SECRET"]
                env["PPGATE_PEER_SECRET"] = secret or ""
        self._forked: List[int] = []  # the pids of the forks the node adopted, until reaped
        self._next_reap = 0.0
        # The node starts first, and forks of this process become its first workers while it
        # does (docs/architecture.md, "Start-up"). Whether this process forks is settled after
        # the spawn, off the way to the node's start: the node gets a channel to adopt from
        # whenever it might, and one closed with nothing sent adopts nothing.
        channel: Optional[socket.socket] = None  # this end of --adopt-from
        node_channel: Optional[socket.socket] = None
        if ncpus != 0 and _fork_possible():
            node_channel, channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            args += ["--adopt-from", str(node_channel.fileno())]
        # A session of its own: a Ctrl-C meant for this program does not stop the node under it.
        try:
            self.proc = NodeProcess(args, env, [port.fileno()] + ([node_channel.fileno()] if node_channel else []))
        except BaseException:
            if channel is not None:
                channel.close()
            raise
        finally:
            if node_channel is not None:
                node_channel.close()
            url = "http://127.0.0.1:%d" % port.getsockname()[1]
            port.close()  # the node's now: should it end, connections are refused, not left waiting
        if connect is not None:
            try:
                self.connection = connect(url, self.token)
            except OSError:
                pass  # (the node has ended already: the line read below says why)
        if channel is not None:
            assert self.proc.stdout is not None
            links: List[Tuple[socket.socket, int]] = []
            try:
                script = find_worker_script(binary)
                if script is not None and _may_fork():  # (Linux: sched_getaffinity is there)
                    count = len(os.sched_getaffinity(0)) if ncpus == "autodetect" else int(ncpus)
                    keep_out = [channel.fileno(), self.proc.stdout.fileno()]
                    if self.connection is not None:
                        keep_out.append(self.connection.fileno())
                    links = fork_workers(count, script, close_in_child=keep_out)
                    self._forked = [pid for _, pid in links]
                    send_workers(channel, links)
            finally:
                channel.close()
                for link, _ in links:
                    link.close()  # the node has its copy; the worker sees EOF when the node ends
        self._unread = b""
        line = self._next_line()
        prefix = "ppgate listening on "
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError("the private ppgate node did not start (%s)" % (line or "no output"))
        self.url = line[len(prefix):]
        self.peer_port = 0
        if peer_listen is not None:
            line = self._next_line()  # "ppgate accepting peers on HOST:PORT"
            if not line.startswith("ppgate accepting peers on "):
                self.stop()
                raise RuntimeError("the private ppgate node opened no peer port (%s)" % (line or "no output"))
            self.peer_port = int(line.split()[4].rsplit(":", 1)[1])

    def _next_line(self) -> str:
        """The node's next line of standard output (its start-up lines), or what came before
        _START_TIMEOUT passed or the output ended."""
        deadline = time.monotonic() + _START_TIMEOUT
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = self._unread
        while b"\n" not in data and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 256)
            if not chunk:
                break
            data += chunk
        line, _, self._unread = data.partition(b"\n")
        return line.decode(errors="replace").strip()

    @property
    def forked_alive(self) -> bool:
        """Whether forked workers may be left to reap."""
        return bool(self._forked)

    def reap_exited(self) -> None:
        """Collects forked workers the node has handed over and stopped (no zombies linger);
        looks at most every 0.2 s."""
        now = time.monotonic()
        if now < self._next_reap:
            return
        self._next_reap = now + 0.2
        for pid in list(self._forked):
            try:
                done = os.waitpid(pid, os.WNOHANG) != (0, 0)
            except ChildProcessError:
                done = True
            if done:
                self._forked.remove(pid)

    def _reap_forked(self, timeout: float) -> None:
        pids, self._forked = self._forked, []
        for pid in pids:
            reap(pid, timeout)

    def stop(self) -> None:
        if self.connection is not None:  # not taken by the caller
            self.connection.close()
            self.connection = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # at once, as pp's destroy() (SIGTERM would drain)
            try:
                self.proc.wait(15)
            except TimeoutError:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        # The node has stopped its adopted workers; one it could not (it was killed) ends at
        # the EOF on its link, or is killed here.
        self._reap_forked(2.0)
