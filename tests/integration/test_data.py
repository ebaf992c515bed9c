"""Big arguments and results (docs/rest.md, "Shared memory" and "Pickled arguments in parts"):
through shared memory when the client shares the node's host, inline to a remote peer, and the
message limit, which refuses one job and leaves its session serving."""

import base64
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from unittest import mock
import zlib

from harness import ROOT, Node, run_ppgate  # noqa: F401

CLIENT = os.path.join(ROOT, "clients", "python")
sys.path.insert(0, CLIENT)
import ppgate as pp  # noqa: E402
from ppgate import _shared_memory as shared_memory  # noqa: E402
from ppgate._websocket import WebSocket  # noqa: E402
from test_client import SharedServer  # noqa: E402
from test_peers import SECRET, serving_node  # noqa: E402

WAIT = 60
MIB = 1024 * 1024
DEBIAN_PYTHON = "/usr/bin/python3"  # has numpy (python3-numpy)


def describe(data):
    """What a job sees of a bytes-like argument: its type, length, checksum and writability."""
    view = memoryview(data)
    return type(data).__name__, len(data), zlib.crc32(view), not view.readonly


def echo(data):
    return data


def blank_and_echo(data):
    data[:1] = b"\0"  # the job's own copy: the caller's stays as it was
    return data


def where_and_which(value, i=0):
    """The worker's pid and the identity of the object it got: the same pair for every job a
    worker runs with a value put once, if it unpickled the value once."""
    return os.getpid(), id(value), len(value), i


def same_object(a, b, pair):
    return pair[0] is a, pair[1] is b, a is not b


def values_held():
    """How many values put once this worker holds (the runtime's cache)."""
    runtime = sys.modules["ppgate_worker_runtime"]
    return len(set(runtime._values) | set(runtime._fields))


class Holder:
    """A bound method's instance: poke() changes its copy and says what it found."""

    def __init__(self, size):
        self.data = bytearray(size)

    def poke(self, i):
        found = self.data[0]
        self.data[0] = 255  # this job's copy only: the next job gets the caller's again
        return found, len(self.data), i


def reading(table):
    def first_and_length(i):
        return table[0], len(table), i
    return first_and_length


BIG_TABLE = bytes(range(256)) * 1024  # 256 KiB, read by a function as a module-level value


def reads_big_table(i):
    return BIG_TABLE[i], len(BIG_TABLE)


def counting_puts(server):
    """Wraps the server's session so that it counts the values put on it: returns the counter."""
    session, puts = server._session, []
    put_value = session.put_value
    session.put_value = lambda value_id, field: (puts.append(value_id), put_value(value_id, field))[1]
    return puts


def pickle_naming_refs(value):
    """Pickles `value`, each "REF" in it becoming persistent id 0."""
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return 0 if obj == "REF" else None
    out = io.BytesIO()
    Pickler(out, 5).dump(value)
    return out.getvalue()


def shared_files(prefix):
    return sorted(f for f in os.listdir(shared_memory.FOLDER) if f.startswith(prefix))


def status_bytes(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no %s for %d" % (field, pid))


def peak_rss(pid):
    return status_bytes(pid, "VmHWM")


def resident(pid):
    return status_bytes(pid, "VmRSS")


class TestSharedMemory(SharedServer):
    def test_the_private_node_offers_shared_memory(self):
        prefix = self.server._session.shm_prefix
        self.assertRegex(prefix or "", r"^ppgate-\d+-\d+-$")

    def test_arguments_of_every_size_arrive_whole_and_writable(self):
        for size in (0, 1, shared_memory.THRESHOLD - 1, shared_memory.THRESHOLD, 3 * MIB + 5):
            data = bytearray(os.urandom(size))
            got = self.server.submit(describe, (data,))(timeout=WAIT)
            self.assertEqual(got, ("bytearray", size, zlib.crc32(data), True), size)

    def test_a_big_result_comes_back_and_nothing_is_left_in_shared_memory(self):
        data = bytearray(os.urandom(5 * MIB))
        back = self.server.submit(blank_and_echo, (data,))(timeout=WAIT)
        self.assertEqual(len(back), len(data))
        self.assertEqual(back[0], 0)
        self.assertEqual(back[1:], data[1:])
        self.assertNotEqual(data[0:1], b"\0" if data[0] else b"x")  # ours is untouched
        self.assertEqual(shared_files(self.server._session.shm_prefix), [])

    def test_a_job_that_fails_still_removes_its_argument(self):
        data = bytearray(MIB)
        job = self.server.submit(int, (data,))  # int(bytearray of zeros) raises
        with self.assertRaises(pp.JobError):
            job(timeout=WAIT)
        self.assertEqual(shared_files(self.server._session.shm_prefix), [])

    def test_map_with_big_items(self):
        items = [bytearray([i]) * (200 * 1024) for i in range(6)]
        with pp.Executor(2) as ex:
            self.assertEqual(list(ex.map(len, items, chunksize=2)), [200 * 1024] * 6)

    def test_a_hundred_mib_round_trip_leaves_the_node_small(self):
        data = bytearray(100 * MIB)
        data[-1] = 7
        pid = self.server._node.proc.pid
        before = resident(pid)
        back = self.server.submit(echo, (data,))(timeout=WAIT)
        self.assertEqual(len(back), 100 * MIB)
        self.assertEqual(back[-1], 7)
        # The node passed file names: it never held the 100 MiB, let alone twice. (Its peak
        # against its size before: a sanitized build starts far bigger.)
        self.assertLess(peak_rss(pid) - before, 30 * MIB)

    def test_numpy_arrays(self):
        self.run_numpy_program(as_if_remote=False)

    def test_numpy_arrays_as_attachments_of_binary_messages(self):
        self.run_numpy_program(as_if_remote=True)

    def run_numpy_program(self, as_if_remote):
        program = textwrap.dedent("""
            import json, sys
            sys.path.insert(0, %r)
            import numpy as np, ppgate
            if %r:  # as a client on another host: no shared memory, binary messages
                ppgate._shared_memory.host_identity = lambda: None
            def same(a):
                return a
            def writable(a):
                a.flat[0] = 5
                return bool(a.flags.writeable), a
            out = {}
            with ppgate.Server(2) as s:
                assert (s._session.shm_prefix is None) == %r and s._session.binary == %r
                cases = {"empty": np.zeros(0), "one_byte": np.ones(1, dtype=np.uint8),
                         "big": np.arange(4_000_000, dtype=np.float64),
                         "strided": np.arange(900_000, dtype=np.int64)[::3],
                         "fortran": np.asfortranarray(np.arange(600 * 400).reshape(600, 400)),
                         "objects": np.array([1, "two", (3,)] * 10000, dtype=object),
                         "record": np.zeros(50_000, dtype=[("x", "f8"), ("n", "i4")])}
                for name, a in cases.items():
                    b = s.submit(same, (a,))()
                    out[name] = [bool(np.array_equal(a, b) if a.dtype != object else list(a) == list(b)),
                                 str(b.dtype), list(b.shape)]
                flag, b = s.submit(writable, (cases["big"],))()
                out["writable"] = [flag, float(b.flat[0]), float(cases["big"].flat[0])]
            print(json.dumps(out))
        """ % (CLIENT, as_if_remote, as_if_remote, as_if_remote))
        with tempfile.TemporaryDirectory() as folder:  # in a file: jobs' sources are read from it
            with open(os.path.join(folder, "main.py"), "w") as f:
                f.write(program)
            run = subprocess.run([DEBIAN_PYTHON, "main.py"], cwd=folder, capture_output=True, text=True,
                                 timeout=120, env=dict(os.environ, PYTHONPATH=""))
        self.assertEqual(run.returncode, 0, run.stderr)
        out = json.loads(run.stdout.strip().splitlines()[-1])
        for name in ("empty", "one_byte", "big", "strided", "fortran", "objects", "record"):
            self.assertTrue(out[name][0], (name, out[name]))
        self.assertEqual(out["fortran"][2], [600, 400])
        self.assertEqual(out["writable"], [True, 5.0, 0.0])


class TestNodeOnThisHost(unittest.TestCase):
    def test_a_node_on_another_port_takes_arguments_past_its_message_limit(self):
        # A node started by hand on loopback: shared memory works as for the private node, so
        # an argument 5 times its --max-body arrives whole.
        with Node("--max-body", str(MIB), workers=1) as node:
            with pp.Server(url="http://127.0.0.1:%d" % node.port) as server:
                self.assertIsNotNone(server._session.shm_prefix)
                data = bytearray(os.urandom(5 * MIB))
                self.assertEqual(server.submit(describe, (data,))(timeout=WAIT),
                                 ("bytearray", len(data), zlib.crc32(data), True))

    def test_without_shared_memory_a_job_over_the_limit_is_refused_and_the_session_goes_on(self):
        with Node("--max-body", str(MIB), workers=1) as node:
            with pp.Server(url="http://127.0.0.1:%d" % node.port) as server:
                server._session.shm_prefix = None  # as for a client on another host
                small = server.submit(len, (b"x" * 1000,))
                with self.assertRaises(pp.SubmitError) as caught:
                    server.submit(len, (bytearray(2 * MIB),))
                message = str(caught.exception)
                self.assertIn("%d bytes" % MIB, message)  # the limit
                self.assertRegex(message, r"take \d{7} bytes")  # and the job's size
                self.assertEqual(small(timeout=WAIT), 1000)
                # Many jobs that together pass the limit go in several messages.
                jobs = [server.submit(len, (bytes(100 * 1024),)) for _ in range(30)]
                self.assertEqual([j(timeout=WAIT) for j in jobs], [100 * 1024] * 30)


class TestRemotePeer(unittest.TestCase):
    def test_a_peer_gets_arguments_in_shared_memory_inline(self):
        # The private node has no workers: each job runs on the peer, which cannot map this
        # host's files (it could: it is on loopback, but it is another node), so the private
        # node reads the parts and sends them over the link.
        with serving_node(workers=1) as peer:
            address = "127.0.0.1:%d" % peer.peer_port
            with pp.Server(0, ppservers=(address,), secret=SECRET) as server:
                self.assertIsNotNone(server._session.shm_prefix)
                for size in (0, 70 * 1024, 3 * MIB):
                    data = bytearray(os.urandom(size))
                    self.assertEqual(server.submit(describe, (data,))(timeout=WAIT),
                                     ("bytearray", size, zlib.crc32(data), True), size)
                    back = server.submit(echo, (data,))(timeout=WAIT)
                    self.assertEqual(back, data)
                self.assertEqual(shared_files(server._session.shm_prefix), [])


class TestValuesPutOnce(SharedServer):
    def check_put(self, server, data, jobs=40):
        ref = server.put(data)
        got = [server.submit(where_and_which, (ref, i)) for i in range(jobs)]
        results = [j(timeout=WAIT) for j in got]
        self.assertEqual([r[2:] for r in results], [(len(data), i) for i in range(jobs)])
        pids = {r[0] for r in results}
        # Unpickled once per worker: one object per worker for all its jobs.
        self.assertEqual(len({r[:2] for r in results}), len(pids), results)
        ref.release()
        return ref

    def test_a_value_is_unpickled_once_per_worker(self):
        for size in (10, 5 * MIB):  # inline, and in shared memory
            self.check_put(self.server, bytearray(size))
        self.assertEqual(shared_files(self.server._session.shm_prefix), [])

    def test_refs_anywhere_in_the_arguments_stay_one_object(self):
        a, b = self.server.put([1, 2, 3]), self.server.put({"k": "v"})
        self.assertEqual(self.server.submit(same_object, (a, b, (a, b)))(timeout=WAIT), (True, True, True))
        with pp.Executor(2) as ex:
            ref = ex.put(bytearray(300 * 1024))
            self.assertEqual([r[2:] for r in ex.map(where_and_which, [ref] * 6, range(6), chunksize=2)],
                             [(300 * 1024, i) for i in range(6)])
            self.assertEqual(ex.submit(where_and_which, ref, i=9).result(WAIT)[2:], (300 * 1024, 9))

    def test_a_value_of_a_class_from_a_module_travels_with_its_source(self):
        from client_helpers import Point, scale_point
        ref = self.server.put(Point(2, 3))
        p = self.server.submit(scale_point, (ref, 10))(timeout=WAIT)
        self.assertEqual((p.x, p.y), (20, 30))

    def test_released_values_are_refused_and_dropped_everywhere(self):
        ref = self.server.put(bytearray(2 * MIB))
        name = ref._files[0]
        pending = [self.server.submit(where_and_which, (ref, i)) for i in range(10)]
        ref.release()  # the jobs already submitted still get it
        self.assertEqual([j(timeout=WAIT)[3] for j in pending], list(range(10)))
        with self.assertRaisesRegex(ValueError, "was released"):
            self.server.submit(where_and_which, (ref,))
        self.assertNotIn(name, shared_files(self.server._session.shm_prefix))
        # Each worker drops its copy before its next job.
        held = {self.server.submit(values_held)(timeout=WAIT) for _ in range(6)}
        self.assertEqual(held, {0})

    def test_a_value_dropped_by_the_caller_is_released(self):
        ref = self.server.put(bytearray(100))
        self.server.submit(where_and_which, (ref,))(timeout=WAIT)
        del ref  # its release goes with the next message
        self.assertEqual({self.server.submit(values_held)(timeout=WAIT) for _ in range(6)}, {0})

    def test_misuse_gets_a_clear_error(self):
        ref = self.server.put(1)
        with pp.Server(1) as other:
            with self.assertRaisesRegex(ValueError, "another Server"):
                other.submit(where_and_which, (ref,))
        with self.assertRaisesRegex(TypeError, "not in the value put itself"):
            self.server.put([ref])
        with self.assertRaisesRegex(TypeError, "only in the arguments of jobs"):
            pickle.dumps(ref)
        ref.release()
        ref.release()  # again: nothing happens

    def test_a_node_without_shared_memory_and_a_peer_get_values_once(self):
        with Node(workers=2) as node:
            with pp.Server(url="http://127.0.0.1:%d" % node.port) as server:
                server._session.shm_prefix = None  # as for a client on another host
                self.check_put(server, bytearray(os.urandom(3 * MIB)))
        with serving_node(workers=2) as peer:
            address = "127.0.0.1:%d" % peer.peer_port
            with pp.Server(0, ppservers=(address,), secret=SECRET) as server:
                self.check_put(server, bytearray(os.urandom(3 * MIB)), jobs=30)  # shared memory, inlined


class AsIfRemote:
    """Within it, this process's clients act as clients on another host: they do not claim the
    node's /dev/shm, so big pickles go as attachments of binary messages."""

    def __enter__(self):
        self.saved = shared_memory.host_identity
        shared_memory.host_identity = lambda: None

    def __exit__(self, *exc):
        shared_memory.host_identity = self.saved


class TestSentOnce(unittest.TestCase):
    """A closure's big captured values and a bound method's big instance go to the node once
    (as values put once) and each job gets a fresh copy: from another host, and through peers."""

    def check_instance_and_closure(self, server):
        puts = counting_puts(server)
        holder = Holder(MIB)
        self.assertEqual([server.submit(holder.poke, (i,))(timeout=WAIT) for i in range(12)],
                         [(0, MIB, i) for i in range(12)])  # each job's copy was fresh
        self.assertEqual(len(puts), 1)
        holder.data[0] = 9  # changed in place: goes again
        self.assertEqual(server.submit(holder.poke, (0,))(timeout=WAIT), (9, MIB, 0))
        self.assertEqual(len(puts), 2)
        first = reading(bytes([7]) * (300 * 1024))
        self.assertEqual([server.submit(first, (i,))(timeout=WAIT) for i in range(8)],
                         [(7, 300 * 1024, i) for i in range(8)])
        self.assertEqual(len(puts), 3)
        self.assertEqual([server.submit(reads_big_table, (i,))(timeout=WAIT) for i in range(5)],
                         [(i, len(BIG_TABLE)) for i in range(5)])
        self.assertEqual(len(puts), 4)
        small = Holder(100)  # small values go with each job, as before
        self.assertEqual(server.submit(small.poke, (1,))(timeout=WAIT), (0, 100, 1))
        self.assertEqual(len(puts), 4)

    def test_from_another_host(self):
        # Workers of its own from the start: a fork handing over to a fresh worker between these
        # jobs would leave a worker that holds nothing, having been sent nothing.
        with AsIfRemote(), mock.patch.dict(os.environ, {"PPGATE_FORK_WORKERS": "0"}), pp.Server(2) as server:
            self.assertIsNone(server._session.shm_prefix)
            self.check_instance_and_closure(server)
            # Each worker holds what it was sent, until the values are released.
            held = [server.submit(values_held)(timeout=WAIT) for _ in range(4)]
            self.assertTrue(all(1 <= h <= 4 for h in held), held)
        with AsIfRemote(), pp.Executor(2) as ex:  # a map's column of instances, in chunks
            puts, holder = counting_puts(ex._server), Holder(MIB)
            # As with Pool.map, the items of one chunk share one copy.
            self.assertEqual(list(ex.map(holder.poke, range(6), chunksize=3)),
                             [(0 if i % 3 == 0 else 255, MIB, i) for i in range(6)])
            self.assertEqual(ex.submit(holder.poke, 6).result(WAIT), (0, MIB, 6))
            self.assertEqual(len(puts), 1)

    def test_through_a_peer(self):
        with serving_node(workers=1) as peer:
            address = "127.0.0.1:%d" % peer.peer_port
            with pp.Server(0, ppservers=(address,), secret=SECRET) as server:
                self.assertIsNotNone(server._session.shm_prefix)
                self.check_instance_and_closure(server)

    def test_only_the_most_recent_are_kept(self):
        # One process serves every job: a fork's hand-over to a fresh interpreter between them
        # would leave the values sent before it behind (seen under load).
        with AsIfRemote(), mock.patch.dict(os.environ, {"PPGATE_FORK_WORKERS": "0"}), pp.Server(1) as server:
            server._sent_once.MAX_COUNT = 2
            puts = counting_puts(server)
            refs = []
            for n in range(3):
                holder = Holder(100 * 1024 + n)
                self.assertEqual(server.submit(holder.poke, (n,))(timeout=WAIT), (0, 100 * 1024 + n, n))
                refs.append(list(server._sent_once._refs.values())[-1][0])  # the newest
            self.assertEqual(len(puts), 3)
            self.assertTrue(refs[0].released)
            self.assertEqual(sorted(r.released for r in refs[1:]), [False, False])
            # The worker let go of the one released: it holds the two kept.
            self.assertEqual(server.submit(values_held)(timeout=WAIT), 2)

    def test_through_shared_memory_without_peers_values_go_with_each_job(self):
        with pp.Server(1) as server:
            puts = counting_puts(server)
            holder = Holder(MIB)
            self.assertEqual([server.submit(holder.poke, (i,))(timeout=WAIT) for i in range(3)],
                             [(0, MIB, i) for i in range(3)])
            self.assertEqual(puts, [])


class TestBinaryMessages(unittest.TestCase):
    def test_big_arguments_results_and_values_as_attachments(self):
        with AsIfRemote(), pp.Server(2) as server:
            session = server._session
            self.assertIsNone(session.shm_prefix)
            self.assertTrue(session.binary)
            for size in (shared_memory.THRESHOLD - 100, 70 * 1024, 5 * MIB):
                data = bytearray(os.urandom(size))
                self.assertEqual(server.submit(describe, (data,))(timeout=WAIT),
                                 ("bytearray", size, zlib.crc32(data), True), size)
                back = server.submit(blank_and_echo, (data,))(timeout=WAIT)
                self.assertEqual((back[0], back[1:]), (0, data[1:]), size)
            batch = [server.submit(describe, (bytearray([i]) * (100 * 1024),)) for i in range(8)]
            self.assertEqual([j(timeout=WAIT)[1] for j in batch], [100 * 1024] * 8)
            ref = server.put(bytearray(os.urandom(2 * MIB)))
            results = [server.submit(where_and_which, (ref, i))(timeout=WAIT) for i in range(10)]
            self.assertEqual(len({r[:2] for r in results}), len({r[0] for r in results}))
            node_files = [f for f in os.listdir(shared_memory.FOLDER) if f.startswith("ppgate-%d-" % server._node.proc.pid)]
            self.assertEqual(len(node_files), 1, node_files)  # the value's, while it is not released
            ref.release()
            server.submit(describe, (b"",))(timeout=WAIT)  # the release has reached the node
            node_files = [f for f in os.listdir(shared_memory.FOLDER) if f.startswith("ppgate-%d-" % server._node.proc.pid)]
            self.assertEqual(node_files, [])

    def test_through_a_peer_both_ways(self):
        # A client on another host, a node without workers, its peer: the argument crosses both
        # links as bytes, and so does the result on its way back.
        with serving_node(workers=1) as peer, AsIfRemote():
            address = "127.0.0.1:%d" % peer.peer_port
            with pp.Server(0, ppservers=(address,), secret=SECRET) as server:
                self.assertTrue(server._session.binary)
                for size in (100 * 1024, 3 * MIB):
                    data = bytearray(os.urandom(size))
                    back = server.submit(blank_and_echo, (data,))(timeout=WAIT)
                    self.assertEqual((back[0], back[1:]), (0, data[1:]), size)
                self.assertEqual([f for f in os.listdir(shared_memory.FOLDER)
                                  if f.startswith("ppgate-%d-" % server._node.proc.pid)], [])

    def test_bad_binary_messages_get_a_clear_error(self):
        with Node(workers=1) as node:
            ws = WebSocket("127.0.0.1", node.port, "/v1/session", {}, timeout=WAIT)
            ws._sock.settimeout(WAIT)
            self.assertEqual(ws.headers.get("ppgate-binary"), "1")
            job = {"tag": 1, "function": "f", "source": "def f(b):\n    return len(b)\n", "codec": "pickle",
                   "args": {"attached": True, "parts": [[0, 10]]}}
            cases = [
                (b"\x01\x00", "starts with the 4-byte length"),
                (b"\xff\x00\x00\x00[]", "longer than the message"),
                (binary(json.dumps([job]).encode(), b"short"), "lies outside the message's 5 bytes"),
                (json.dumps([job]).encode(), "only a binary message has"),  # as text
            ]
            for message, fragment in cases:
                if message.startswith(b"["):
                    ws.send_text(message)
                else:
                    ws.send_binary(message)
                reply = json.loads(ws.recv())
                self.assertIn(fragment, reply["error"]["message"], reply)
            # A good one, from a client that did not ask for binary results: they come as base64.
            stream, buffers = shared_memory.dumps((pickle.PickleBuffer(bytearray(200 * 1024)),),
                                                  lambda v, cb: pickle.dumps(v, 5, buffer_callback=cb))
            job["args"] = {"attached": True, "parts": [[0, len(stream)], [64 * 1024, len(buffers[0])]]}
            job["source"] = "def f(b):\n    return bytes(b)\n"
            attachments = bytes(stream) + bytes(64 * 1024 - len(stream)) + bytes(buffers[0])
            ws.send_binary(binary(json.dumps([job]).encode(), attachments))
            result = json.loads(ws.recv())["results"][0]
            self.assertFalse(ws.binary)
            self.assertEqual(result["status"], "done", result)
            self.assertEqual(len(pickle.loads(base64.b64decode(result["result"]))), 200 * 1024)
            ws.close()


def binary(header, attachments=b""):
    return len(header).to_bytes(4, "little") + header + attachments


class TestSharedMemoryProtocol(unittest.TestCase):
    """The session protocol spoken raw: what a session may and may not name."""

    def open(self, node, claim=True):
        headers = {"Authorization": "Bearer " + node.token} if getattr(node, "token", None) else {}
        if claim:
            headers["PPGate-Shared-Memory"] = shared_memory.host_identity()
        ws = WebSocket("127.0.0.1", node.port, "/v1/session", headers, timeout=WAIT)
        ws._sock.settimeout(WAIT)
        return ws

    def job(self, tag, args):
        return {"tag": tag, "function": "f", "source": "def f(b):\n    return len(b)\n",
                "codec": "pickle", "args": args}

    def test_names_are_checked_and_files_removed_with_the_session(self):
        with Node(workers=1) as node:
            ws = self.open(node)
            prefix = ws.headers.get("ppgate-shared-memory")
            self.assertRegex(prefix or "", r"^ppgate-\d+-\d+-$")
            self.assertEqual(int(ws.headers["ppgate-max-message"]), 64 * MIB)

            # A file of this session, written as the client writes one.
            stream, buffers = shared_memory.dumps((pickle.PickleBuffer(bytearray(b"abc" * 1000)),),
                                                  lambda v, cb: pickle.dumps(v, 5, buffer_callback=cb))
            parts = shared_memory.write(prefix, stream, buffers)
            ws.send_text(json.dumps([self.job(1, parts)]).encode())
            result = json.loads(ws.recv())["results"][0]
            self.assertEqual(result["status"], "done", result)
            self.assertEqual(pickle.loads(base64.b64decode(result["result"])), 3000)

            # Another session's name, a path, a missing file, a range past the end.
            cases = [
                ({"shm": "ppgate-1-1-a1", "parts": [[0, 1]]}, "rejected", "not this session's"),
                ({"shm": prefix + "../../etc/passwd", "parts": [[0, 1]]}, "rejected", "not this session's"),
                ({"shm": prefix + "gone", "parts": [[0, 10]]}, "failed", "FileNotFoundError"),
                (dict(parts, parts=[[0, 10 ** 9]]), "failed", "lies outside shared memory"),
                ({"shm": parts["shm"], "parts": []}, "rejected", "at least one part"),
                ({"shm": parts["shm"], "parts": [[0]]}, "rejected", "[offset, size]"),
            ]
            for i, (args, outcome, fragment) in enumerate(cases, start=2):
                ws.send_text(json.dumps([self.job(i, args)]).encode())
                reply = json.loads(ws.recv())
                if outcome == "rejected":
                    self.assertEqual(reply.get("rejected"), [i], reply)
                    self.assertIn(fragment, reply["error"]["message"])
                else:
                    r = reply["results"][0]
                    self.assertEqual(r["status"], "failed", r)
                    self.assertIn(fragment, r["error"]["type"] + r["error"]["message"])

            self.assertEqual(shared_files(prefix), [parts["shm"]])
            ws.close()
            deadline = time.monotonic() + WAIT
            while shared_files(prefix) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(shared_files(prefix), [], "the node removes what the session left")

    def test_a_session_that_does_not_share_the_host_cannot_name_shared_memory(self):
        with Node(workers=1) as node:
            for claim in (False, "1:2:3"):
                headers = {"PPGate-Shared-Memory": claim} if claim else {}
                ws = WebSocket("127.0.0.1", node.port, "/v1/session", headers, timeout=WAIT)
                ws._sock.settimeout(WAIT)
                self.assertNotIn("ppgate-shared-memory", ws.headers)
                ws.send_text(json.dumps([self.job(1, {"shm": "ppgate-1-1-x", "parts": [[0, 1]]})]).encode())
                reply = json.loads(ws.recv())
                self.assertEqual(reply.get("rejected"), [1], reply)
                self.assertIn("only a session from this node's host", reply["error"]["message"])
                ws.close()

    def test_values_put_on_a_raw_session(self):
        with Node(workers=1) as node:
            ws = self.open(node, claim=False)
            one = base64.b64encode(pickle.dumps([7, 8], 5)).decode()
            ws.send_text(json.dumps({"put": 1, "value": one}).encode())
            # The job's arguments name the value by its index in "refs": a persistent id.
            job = {"tag": 1, "function": "f", "source": "def f(v):\n    return sum(v)\n", "codec": "pickle",
                   "args": base64.b64encode(pickle_naming_refs(("REF",))).decode(), "refs": [1]}
            ws.send_text(json.dumps([job]).encode())
            result = json.loads(ws.recv())["results"][0]
            self.assertEqual(result["status"], "done", result)
            self.assertEqual(pickle.loads(base64.b64decode(result["result"])), 15)
            ws.send_text(b'{"release": 1}')
            ws.send_text(json.dumps([dict(job, tag=2)]).encode())
            reply = json.loads(ws.recv())
            self.assertEqual(reply.get("rejected"), [2], reply)
            self.assertIn("unknown ref 1", reply["error"]["message"])
            ws.send_text(b'{"put": 2}')
            self.assertIn("put", json.loads(ws.recv())["error"]["message"])
            ws.close()

    def test_parts_inline_work_for_anyone(self):
        with Node(workers=1) as node:
            # A PickleBuffer goes out-of-band (numpy's arrays make one of their data).
            stream, buffers = shared_memory.dumps((pickle.PickleBuffer(bytearray(b"xyz" * 100)),),
                                                  lambda v, cb: pickle.dumps(v, 5, buffer_callback=cb))
            self.assertEqual(len(buffers), 1)
            inline = {"parts": [base64.b64encode(p).decode() for p in [stream] + buffers]}
            body = self.job(0, inline)
            del body["tag"]
            status, data, _ = node.request("POST", "/v1/jobs?wait=30", body)
            self.assertEqual(status, 200, data)
            self.assertEqual(pickle.loads(base64.b64decode(data["result"])), 300)
            body["args"] = {"shm": "ppgate-1-1-x", "parts": [[0, 1]]}
            status, data, _ = node.request("POST", "/v1/jobs", body)
            self.assertEqual(status, 400)
            self.assertIn("only a session", data["error"]["message"])


if __name__ == "__main__":
    unittest.main()
