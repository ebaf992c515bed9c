"""Start-up of the Python client's private node: Server() forks itself into one worker per slot
while its node starts, which adopts them (`ppgate serve --adopt-from FD`); once their
queue is empty, fresh interpreters take their slots. Each case runs a program of its own, so that
the fork happens in a process with one thread, as in a user's script."""

import array
import importlib.util
import json
import os
import py_compile
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT = os.path.join(ROOT, "clients", "python")
sys.path.insert(0, HERE)

from harness import Node, ppgate_binary  # noqa: E402

WAIT = 60  # seconds: the bound on every wait in these tests
DEBIAN_PYTHON = "/usr/bin/python3"  # has numpy (python3-numpy)

PRELUDE = """
import json, os, sys, threading, time, urllib.request
sys.path.insert(0, %r)
import ppgate

def who(delay=0.0):
    import os, time
    time.sleep(delay)
    return os.getpid(), os.getppid()

def die_if_forked(client):
    import os, signal
    if os.getppid() == client:  # a fork of `client`, not a fresh interpreter
        os.kill(os.getpid(), signal.SIGKILL)
    return "fresh"

def nodes(server):
    request = urllib.request.Request(server.url + "/v1/nodes",
                                     headers={"Authorization": "Bearer " + server._token})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["nodes"][0]

def stats(server):
    request = urllib.request.Request(server.url + "/v1/stats",
                                     headers={"Authorization": "Bearer " + server._token})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)

def wait_until(predicate, what):
    deadline = time.monotonic() + 30
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.02)
""" % CLIENT


def run_program(body, python=sys.executable, env=None):
    """Runs PRELUDE + body as a script; returns the JSON object its last line prints."""
    e = dict(os.environ)
    e.pop("PPGATE_FORK_WORKERS", None)
    e.update(env or {})
    with tempfile.TemporaryDirectory() as folder:
        script = os.path.join(folder, "program.py")  # a file: the client sends its functions' source
        with open(script, "w") as f:
            f.write(PRELUDE + textwrap.dedent(body))
        r = subprocess.run([python, script], capture_output=True, text=True, timeout=WAIT, env=e)
    if r.returncode != 0:
        raise AssertionError("the program failed (%d):\n%s\n%s" % (r.returncode, r.stdout, r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


class TestForkedWorkers(unittest.TestCase):
    def test_the_first_jobs_run_in_forks_of_the_client_then_in_fresh_interpreters(self):
        out, stderr = run_program("""
            server = ppgate.Server(2)
            node_pid = server._node.proc.pid
            forked = list(server._node._forked)
            # Two jobs at once, one per slot: both in the client's forks.
            first = [job() for job in [server.submit(who, (0.3,)) for _ in range(2)]]
            # Their queue is empty: fresh interpreters, the node's children, take the slots.
            wait_until(lambda: all(w["pid"] and w["pid"] not in forked for w in nodes(server)["workers"]),
                       "fresh workers")
            later = [job() for job in [server.submit(who, (0.3,)) for _ in range(2)]]
            restarts = stats(server)["worker_restarts"]
            server.destroy()
            try:
                os.waitpid(-1, os.WNOHANG)
                children_left = True
            except ChildProcessError:
                children_left = False
            print(json.dumps({"me": os.getpid(), "node": node_pid, "forked": forked, "first": first,
                              "later": later, "restarts": restarts, "children_left": children_left}))
        """)
        self.assertEqual(len(out["forked"]), 2)
        self.assertEqual(sorted(pid for pid, _ in out["first"]), sorted(out["forked"]))
        self.assertTrue(all(parent == out["me"] for _, parent in out["first"]), out)
        self.assertTrue(all(parent == out["node"] for _, parent in out["later"]), out)
        self.assertFalse(set(pid for pid, _ in out["later"]) & set(out["forked"]))
        self.assertEqual(out["restarts"], 0)  # a hand-over is no restart
        self.assertFalse(out["children_left"], "destroy() reaps the forks and the node")
        self.assertEqual(stderr, "")

    def test_jobs_keep_running_in_the_fork_while_its_fresh_successor_starts(self):
        out, stderr = run_program("""
            server = ppgate.Server(1)
            forked = list(server._node._forked)
            # One job after another: the queue is empty after each, so the slot readies a fresh
            # interpreter meanwhile, and the fork goes on serving until that one answers.
            first = server.submit(who)()
            second = server.submit(who)()
            wait_until(lambda: all(w["pid"] and w["pid"] not in forked for w in nodes(server)["workers"]),
                       "the fresh worker")
            later = server.submit(who)()
            print(json.dumps({"me": os.getpid(), "node": server._node.proc.pid, "forked": forked,
                              "first": first, "second": second, "later": later,
                              "restarts": stats(server)["worker_restarts"]}))
            server.destroy()
        """)
        self.assertEqual(out["first"], [out["forked"][0], out["me"]])
        # (a fresh interpreter takes far longer to start than one round trip takes)
        self.assertEqual(out["second"], [out["forked"][0], out["me"]])
        self.assertEqual(out["later"][1], out["node"])
        self.assertEqual(out["restarts"], 0)
        self.assertEqual(stderr, "")

    def test_a_fork_runs_jobs_on_the_program_s_own_classes_as_a_fresh_worker_does(self):
        out, _ = run_program("""
            import tempfile
            folder = tempfile.mkdtemp()
            with open(os.path.join(folder, "shapes.py"), "w") as f:
                f.write("class Point:\\n    def __init__(self, x):\\n        self.x = x\\n"
                        "    def __eq__(self, other):\\n        return self.x == other.x\\n")
            sys.path.insert(0, folder)
            from shapes import Point  # its source goes with the job, under the name shapes.Point

            def grow(p):
                import os
                return Point(p.x + 1), os.getppid()

            with ppgate.Server(1) as server:
                point, parent = server.submit(grow, (Point(1),))()  # in the fork
            print(json.dumps({"x": point.x, "same_class": type(point) is Point,
                              "in_fork": parent == os.getpid()}))
        """)
        self.assertEqual(out, {"x": 2, "same_class": True, "in_fork": True})

    def test_no_fork_with_other_threads_running_or_when_turned_off(self):
        out, _ = run_program("""
            stop = threading.Event()
            helper = threading.Thread(target=stop.wait)
            helper.start()
            with ppgate.Server(1) as server:
                threaded = (server._node._forked, server.submit(who)()[1], server._node.proc.pid)
            stop.set()
            helper.join()
            print(json.dumps({"threaded": threaded}))
        """)
        forked, parent, node = out["threaded"]
        self.assertEqual(forked, [])
        self.assertEqual(parent, node)
        out, _ = run_program("""
            with ppgate.Server(1) as server:
                print(json.dumps({"off": [server._node._forked, server.submit(who)()[1], server._node.proc.pid]}))
        """, env={"PPGATE_FORK_WORKERS": "0"})
        forked, parent, node = out["off"]
        self.assertEqual(forked, [])
        self.assertEqual(parent, node)

    def test_a_fork_that_dies_before_answering_gives_its_job_to_a_fresh_worker(self):
        out, _ = run_program("""
            with ppgate.Server(1) as server:
                # The fork answered nothing: as far as anyone knows, it never became a worker.
                first = server.submit(die_if_forked, (os.getpid(),))()
                restarts = stats(server)["worker_restarts"]
            print(json.dumps({"first": first, "restarts": restarts}))
        """)
        self.assertEqual(out, {"first": "fresh", "restarts": 1})

    def test_a_job_that_kills_a_fork_that_has_answered_fails_as_with_any_worker(self):
        out, _ = run_program("""
            with ppgate.Server(1) as server:
                # Queued together: the second goes to the fork once the first has answered.
                quick, killer = server.submit(who, (0.2,)), server.submit(die_if_forked, (os.getpid(),))
                first = quick()
                try:
                    killer()
                    lost = None
                except ppgate.WorkerDiedError as e:
                    lost = str(e)
                again = server.submit(die_if_forked, (os.getpid(),))()
                restarts = stats(server)["worker_restarts"]
            print(json.dumps({"me": os.getpid(), "first": first, "lost": lost, "again": again,
                              "restarts": restarts}))
        """)
        self.assertEqual(out["first"][1], out["me"])
        self.assertIn("exited", out["lost"] or "", out)
        self.assertEqual(out["again"], "fresh")
        self.assertEqual(out["restarts"], 1)

    def test_forked_workers_do_not_share_numpy_s_random_state(self):
        out, _ = run_program("""
            import numpy as np
            np.random.seed(1234)  # the client's own state, which forks would copy
            def draw():
                import os, numpy as np
                return os.getppid(), np.random.random()
            with ppgate.Server(2) as server:
                draws = [job() for job in [server.submit(draw) for _ in range(2)]]
            print(json.dumps({"me": os.getpid(), "draws": draws, "client": np.random.random()}))
        """, python=DEBIAN_PYTHON)
        (parent_a, a), (parent_b, b) = out["draws"]
        self.assertEqual({parent_a, parent_b}, {out["me"]})  # both ran in forks
        self.assertNotEqual(a, b)
        self.assertNotIn(out["client"], (a, b))

    def test_a_fork_leaves_the_client_s_garbage_to_the_client(self):
        # Garbage the client has not collected yet when it forks: a cycle whose finalizer records
        # the process it runs in. A fork collecting it would run the client's finalizer a second
        # time, in the wrong process (and copy the client's heap doing so).
        out, _ = run_program("""
            import gc
            gc.disable()
            record = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finalized")
            class Finalized:
                def __del__(self):
                    with open(record, "a") as f:
                        f.write("%d\\n" % os.getpid())
            cycle = Finalized()
            cycle.me = cycle
            del cycle
            def collect():
                import gc, os
                gc.collect()
                return os.getppid()
            with ppgate.Server(1) as server:
                parent = server.submit(collect)()
            in_forks = open(record).read().split() if os.path.exists(record) else []
            gc.collect()
            print(json.dumps({"me": os.getpid(), "parent": parent, "in_forks": in_forks,
                              "after": open(record).read().split()}))
        """)
        self.assertEqual(out["parent"], out["me"])  # the job ran in a fork
        self.assertEqual(out["in_forks"], [])
        self.assertEqual(out["after"], [str(out["me"])])  # the client's own collection finalizes it


class TestForkBootstrap(unittest.TestCase):
    """A fork loads ppgate_worker.py from the bytecode the build made, unless that is stale."""

    def load(self, folder):
        program = ("import sys; sys.path.insert(0, %r)\n"
                   "from ppgate import _node\n"
                   "m = _node._load_worker_bootstrap(%r)\n"
                   "print(m.__file__, m.serve.__code__.co_filename, m.MARK)"
                   % (CLIENT, os.path.join(folder, "ppgate_worker.py")))
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=WAIT)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.split()

    def test_the_build_s_bytecode_is_used_and_a_stale_one_is_not(self):
        # Where the node and the client look for the worker (the sanitized run points both at the
        # regular build's, whose extension an ordinary interpreter can load).
        built = os.environ.get("PPGATE_WORKER_DIR") or os.path.join(os.path.dirname(ppgate_binary()), "..", "worker")
        tag = sys.implementation.cache_tag
        self.assertTrue(os.path.isfile(os.path.join(built, "ppgate_worker.%s.pyc" % tag)),
                        "the build compiles the bootstrap for the python3 on PATH")
        with open(os.path.join(built, "ppgate_worker.py"), "rb") as f:
            source = f.read()
        with tempfile.TemporaryDirectory() as folder:
            script = os.path.join(folder, "ppgate_worker.py")
            bytecode = os.path.join(folder, "ppgate_worker.%s.pyc" % tag)
            with open(script, "wb") as f:
                f.write(source)
            # Bytecode that says where it came from, stamped with the hash of the source on disk.
            marked = os.path.join(folder, "marked.py")
            with open(marked, "wb") as f:
                f.write(source + b"\nMARK = 'bytecode'\n")
            py_compile.compile(marked, bytecode, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
            with open(bytecode, "r+b") as f:
                f.seek(8)
                f.write(importlib.util.source_hash(source))
            # Matching the source: used, and naming the source in tracebacks.
            self.assertEqual(self.load(folder), [script, script, "bytecode"])
            # The source changed since: compiled from the source.
            with open(script, "ab") as f:
                f.write(b"\nMARK = 'source'\n")
            self.assertEqual(self.load(folder), [script, script, "source"])


def send_workers(channel, pids_text, fds):
    """What the client sends on --adopt-from: one message, the sockets and their pids as text."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    channel.sendmsg([pids_text.encode()], ancillary)


class TestAdoptFromFlag(unittest.TestCase):
    def test_bad_adoption_channels_are_refused_at_start(self):
        with open(os.devnull) as not_a_socket:
            fd = not_a_socket.fileno()
            os.set_inheritable(fd, True)
            cases = [
                (["--adopt-from", "five"], "--adopt-from expects a whole number from 3"),
                (["--adopt-from", "1"], "--adopt-from expects a whole number from 3"),
                (["--adopt-from", str(fd)], "is not an open Unix stream socket"),
                (["--adopt-from", "900"], "is not an open Unix stream socket"),
            ]
            for args, fragment in cases:
                r = subprocess.run([ppgate_binary(), "serve", "--workers", "1"] + args,
                                   capture_output=True, text=True, timeout=20, pass_fds=(fd,))
                self.assertEqual(r.returncode, 2, args)
                self.assertIn(fragment, r.stderr, args)
        a, b = socket.socketpair()
        with a, b:
            r = subprocess.run([ppgate_binary(), "serve", "--adopt-from", str(a.fileno()),
                                "--max-worker-memory", "1G"],
                               capture_output=True, text=True, timeout=20, pass_fds=(a.fileno(),))
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot be held to --max-worker-memory", r.stderr)

    def adopting_node(self, pids_text, fds):
        """A one-worker node that was sent (pids_text, fds) on --adopt-from, then EOF."""
        node_end, sender = socket.socketpair()
        with node_end, sender:
            if pids_text or fds:
                send_workers(sender, pids_text, fds)
            sender.close()  # the node reads what was sent before it starts
            node = Node("--adopt-from", str(node_end.fileno()), workers=1, pass_fds=(node_end.fileno(),))
            node.start()
        return node

    def test_an_adopted_process_that_is_gone_leaves_its_slot_to_a_worker_of_its_own(self):
        link, worker_end = socket.socketpair()
        child = subprocess.Popen(["true"])
        child.wait()  # reaped: its pid names nobody now
        with link, worker_end:
            node = self.adopting_node(str(child.pid), [link.fileno()])
        try:
            self.assertEqual(node.run("def f():\n    return 6 * 7\n", "f")["result"], 42)
            self.assertIn("is gone", node.log_text())
        finally:
            node.stop()

    def test_a_malformed_adoption_adopts_nothing_and_the_node_serves(self):
        link, worker_end = socket.socketpair()
        with link, worker_end, open(os.devnull) as not_a_socket:
            cases = [
                ("12x", [link.fileno()], "the pids are not whole numbers"),
                ("%d %d" % (os.getpid(), os.getpid()), [link.fileno()], "not one pid for each socket"),
                (str(os.getpid()), [not_a_socket.fileno()], "is not a Unix stream socket"),
                ("", [], None),  # nothing sent: nothing to adopt, and nothing to say
            ]
            for pids_text, fds, complaint in cases:
                node = self.adopting_node(pids_text, fds)
                try:
                    self.assertEqual(node.run("def f():\n    import os\n    return os.getppid()\n", "f")["result"],
                                     node.proc.pid, pids_text)  # a worker of its own
                    if complaint:
                        self.assertIn(complaint, node.log_text())
                        self.assertIn("no worker adopted", node.log_text())
                    else:
                        self.assertNotIn("adopt", node.log_text())
                finally:
                    node.stop()


class TestImportCost(unittest.TestCase):
    # What only some programs need is imported on first use, not by `import ppgate`: together
    # these took ~60 ms of every program's start (docs/python-client.md, "Start-up").
    LATER = ["concurrent.futures", "dataclasses", "hashlib", "http.client", "inspect", "platform", "queue",
             "random", "secrets", "shutil", "subprocess", "sysconfig", "textwrap", "traceback", "typing",
             "urllib.parse"]

    def test_import_ppgate_leaves_out_what_only_some_programs_use(self):
        probe = ("import json, sys\nbefore = set(sys.modules)\nsys.path.insert(0, %r)\nimport ppgate\n"
                 "print(json.dumps(sorted(set(sys.modules) - before)))" % CLIENT)
        # Debian's python3 too: this pyenv's site imports some of them (for certifi) before any
        # program runs.
        for python in (sys.executable, DEBIAN_PYTHON):
            r = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=WAIT)
            self.assertEqual(r.returncode, 0, r.stderr)
            added = set(json.loads(r.stdout))
            self.assertIn("ppgate._pp", added)
            self.assertEqual(sorted(added & set(self.LATER)), [], python)

    def test_what_is_left_out_is_there_when_used(self):
        out, _ = run_program("""
            from ppgate import *  # every name of __all__, Executor (loaded on first use) too
            import concurrent.futures
            with Executor(1) as executor:
                assert isinstance(executor, concurrent.futures.Executor)
                value = executor.submit(pow, 2, 10).result(timeout=30)
            try:
                ppgate.no_such_name
                missing = "found"
            except AttributeError as e:
                missing = str(e)
            print(json.dumps({"value": value, "ref": Ref.__name__, "same": Executor is ppgate.Executor,
                              "missing": missing,
                              # connecting to an address looks no name up (no idna codec)
                              "idna": "encodings.idna" in sys.modules}))
        """)
        self.assertEqual(out, {"value": 1024, "ref": "Ref", "same": True,
                               "missing": "module 'ppgate' has no attribute 'no_such_name'", "idna": False})


def worker_sockets(node_pid):
    """The inodes of the sockets the node's children (its workers) hold, once it has some."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        with open("/proc/%d/task/%d/children" % (node_pid, node_pid)) as f:
            children = [int(pid) for pid in f.read().split()]
        inodes = set()
        for child in children:
            try:
                for fd in os.listdir("/proc/%d/fd" % child):
                    target = os.readlink("/proc/%d/fd/%s" % (child, fd))
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
            except FileNotFoundError:
                continue  # gone meanwhile
        if children and inodes:  # a worker's link to the node is a socket: it is there
            return inodes
        time.sleep(0.02)
    raise AssertionError("the node started no worker within %d s" % WAIT)


class TestPrivateNodeProcess(unittest.TestCase):
    """The client spawns its node itself (os.posix_spawn, not subprocess)."""

    def test_the_node_inherits_no_descriptor_of_the_program_s_own(self):
        out, _ = run_program("""
            read_end, write_end = os.pipe()
            os.set_inheritable(write_end, True)  # one a program made inheritable, for its own children
            with ppgate.Server(1) as server:
                node = server._node.proc.pid
                held = sorted(os.readlink("/proc/%d/fd/%s" % (node, fd)) for fd in os.listdir("/proc/%d/fd" % node))
                result = server.submit(who)()
                ours = os.readlink("/proc/self/fd/%d" % write_end)
            code = server._node.proc.returncode
            print(json.dumps({"held": held, "ours": ours, "ran": result[0] > 0, "code": code}))
        """)
        self.assertTrue(out["ran"])
        self.assertNotIn(out["ours"], out["held"])
        self.assertEqual(out["code"], 0, "destroy() waits for the node, which exits cleanly")

    def test_a_node_that_cannot_start_says_why(self):
        out, _ = run_program("""
            try:
                ppgate.Server(1)
                outcome = "started"
            except Exception as e:
                outcome = "%s: %s" % (type(e).__name__, e)
            print(json.dumps({"outcome": outcome}))
        """, env={"PPGATE_BINARY": "/bin/false"})
        self.assertIn("did not start", out["outcome"])


class TestListenFdFlag(unittest.TestCase):
    def test_sockets_that_are_not_listening_tcp_ones_are_refused_at_start(self):
        unix_a, unix_b = socket.socketpair()
        bound = socket.socket()
        bound.bind(("127.0.0.1", 0))  # bound but not listening
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        with unix_a, unix_b, bound, udp, listening:
            fds = (unix_a.fileno(), bound.fileno(), udp.fileno(), listening.fileno())
            cases = [
                (["--listen-fd", "two"], "--listen-fd expects a whole number from 3"),
                (["--listen-fd", "900"], "is not a listening TCP socket"),
                (["--listen-fd", str(unix_a.fileno())], "is not a listening TCP socket"),
                (["--listen-fd", str(bound.fileno())], "is not a listening TCP socket"),
                (["--listen-fd", str(udp.fileno())], "is not a listening TCP socket"),
                (["--listen-fd", str(listening.fileno()), "--listen", "127.0.0.1:0"],
                 "give either --listen or --listen-fd"),
            ]
            for args, fragment in cases:
                r = subprocess.run([ppgate_binary(), "serve", "--workers", "1"] + args,
                                   capture_output=True, text=True, timeout=20, pass_fds=fds)
                self.assertEqual(r.returncode, 2, args)
                self.assertIn(fragment, r.stderr, args)

    def test_a_client_that_connected_before_the_node_ran_is_served(self):
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        port.listen(8)
        number = port.getsockname()[1]
        inode = os.fstat(port.fileno()).st_ino
        client = None
        try:
            proc = subprocess.Popen([ppgate_binary(), "serve", "--workers", "1", "--listen-fd", str(port.fileno()),
                                     "--log-level", "warn"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(port.fileno(),))
            port.close()
            # Connected and asked before the node has read its options: the kernel holds both.
            client = socket.create_connection(("127.0.0.1", number), timeout=WAIT)
            client.sendall(b"GET /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            self.assertEqual(proc.stdout.readline().decode().strip(), "ppgate listening on http://127.0.0.1:%d" % number)
            answer = b""
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    break
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            self.assertEqual(len(json.loads(body)["nodes"]), 1)
            # The workers the node starts do not hold the port (else it outlives the node).
            self.assertEqual(worker_sockets(proc.pid) & {inode}, set())
            proc.terminate()
            proc.communicate(timeout=WAIT)
        finally:
            if client is not None:
                client.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)


if __name__ == "__main__":
    unittest.main()
