"""The peer protocol: nodes using each other's workers, authentication, fault tolerance, TLS,
and the Python client's ppservers."""

import hashlib
import hmac
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "clients", "python"))

import ppgate as pp  # noqa: E402
from client_helpers import add  # noqa: E402
from harness import Node  # noqa: E402

SECRET = "cluster-secret-for-tests"
NAP = "import os, time\ndef nap(x):\n    time.sleep(0.005)\n    return x * x\n"


def serving_node(*extra, workers=1, secret=SECRET):
    node = Node("--peer-listen", "127.0.0.1:0", "--peer-heartbeat", "0.2", *extra,
                workers=workers, env={"PPGATE_SECRET": secret})
    node.token = secret
    return node


def dialing_node(*servers, workers=1, secret=SECRET, extra=()):
    peers = ",".join("127.0.0.1:%d" % s.peer_port for s in servers)
    node = Node("--peers", peers, "--peer-heartbeat", "0.2", *extra, workers=workers,
                env={"PPGATE_SECRET": secret})
    node.token = secret
    return node


def remote_nodes(node):
    return [n for n in node.request("GET", "/v1/nodes")[1]["nodes"] if n["kind"] == "remote"]


def wait_connected(node, count, timeout=20):
    node.wait_until(lambda: sum(n["connected"] for n in remote_nodes(node)) == count, timeout,
                    "%d connected peers" % count)


def submit_all(node, n, wait=90):
    batch = [{"source": NAP, "function": "nap", "args": [i]} for i in range(n)]
    status, data, _ = node.request("POST", "/v1/jobs?wait=%d" % wait, batch)
    return status, data["jobs"]


class TestThreeNodes(unittest.TestCase):
    def test_jobs_spread_over_all_nodes_and_the_stats_name_them(self):
        with serving_node() as a, serving_node() as b, dialing_node(a, b) as c:
            wait_connected(c, 2)
            status, jobs = submit_all(c, 120)
            self.assertEqual(status, 200)
            self.assertEqual([j["result"] for j in jobs], [i * i for i in range(120)])
            nodes = Counter(j["node"] for j in jobs)
            names = {"local", "127.0.0.1:%d" % a.peer_port, "127.0.0.1:%d" % b.peer_port}
            self.assertEqual(set(nodes), names)
            status, table, _ = c.request("GET", "/v1/stats", headers={"Accept": "text/plain"})
            for name in names:
                self.assertIn("| " + name + "\n", table)
            # Capacity follows the remote pool as it is resized.
            a.request("PUT", "/v1/workers", {"count": 3})
            c.wait_until(lambda: [n["slots"] for n in remote_nodes(c)
                                  if n["name"] == "127.0.0.1:%d" % a.peer_port] == [3], what="capacity 3")

    def test_kill_9_of_a_node_mid_run_loses_no_job(self):
        with serving_node() as a, serving_node() as b, dialing_node(a, b) as c:
            wait_connected(c, 2)
            result = {}
            runner = threading.Thread(target=lambda: result.update(zip(("status", "jobs"), submit_all(c, 500))))
            runner.start()
            c.wait_until(lambda: c.request("GET", "/v1/stats")[1]["jobs"]["done"] >= 50, what="50 jobs done")
            b.proc.send_signal(signal.SIGKILL)
            runner.join(120)
            self.assertFalse(runner.is_alive())
            jobs = result["jobs"]
            self.assertEqual(len(jobs), 500)
            self.assertEqual(len({j["id"] for j in jobs}), 500)  # each result once
            self.assertEqual([j["status"] for j in jobs], ["done"] * 500)
            self.assertEqual([j["result"] for j in jobs], [i * i for i in range(500)])
            self.assertIn("127.0.0.1:%d" % b.peer_port, {j["node"] for j in jobs})
            peers = {n["name"]: n for n in remote_nodes(c)}
            self.assertFalse(peers["127.0.0.1:%d" % b.peer_port]["connected"])

    def test_a_node_cut_off_mid_run_is_detected_by_heartbeats(self):
        with serving_node() as a, serving_node() as b, dialing_node(a, b) as c:
            wait_connected(c, 2)
            result = {}
            runner = threading.Thread(target=lambda: result.update(zip(("status", "jobs"), submit_all(c, 300))))
            runner.start()
            c.wait_until(lambda: c.request("GET", "/v1/stats")[1]["jobs"]["done"] >= 30, what="30 jobs done")
            b.proc.send_signal(signal.SIGSTOP)  # the process is there; the link is silent
            try:
                runner.join(120)
                self.assertFalse(runner.is_alive())
                jobs = result["jobs"]
                self.assertEqual([j["status"] for j in jobs], ["done"] * 300)
                self.assertEqual([j["result"] for j in jobs], [i * i for i in range(300)])
                self.assertIn("silent", c.log_text())
            finally:
                b.proc.send_signal(signal.SIGCONT)

    def test_a_job_lost_with_every_node_ends_lost_saying_where(self):
        with serving_node() as a, dialing_node(a, workers=0) as c:
            wait_connected(c, 1)
            status, job, _ = c.request("POST", "/v1/jobs", {"source": "import time\ndef f():\n    time.sleep(60)\n",
                                                            "function": "f"})
            c.wait_until(lambda: c.request("GET", "/v1/jobs/%d" % job["id"])[1]["status"] == "running",
                         what="the job to start remotely")
            a.proc.send_signal(signal.SIGKILL)
            c.wait_until(lambda: c.request("GET", "/v1/jobs/%d" % job["id"])[1]["status"] != "running",
                         what="the job to leave the lost node")
            status, job, _ = c.request("GET", "/v1/jobs/%d?wait=5" % job["id"])
            # No node is left to run it: it waits in the queue until one comes back.
            self.assertEqual(job["status"], "queued")
            status, cancelled, _ = c.request("DELETE", "/v1/jobs/%d" % job["id"])
            self.assertEqual(cancelled["status"], "cancelled")


def read_message(sock):
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            return None, b""
        header += chunk
    n = struct.unpack("<I", header)[0]
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            break
        body += chunk
    return body[0], body[1:]


def send_message(sock, kind, payload):
    body = bytes([kind]) + payload
    sock.sendall(struct.pack("<I", len(body)) + body)


HELLO, CHALLENGE, PROOF, WELCOME, REFUSED, CAPACITY, RUN, RESULT, CANCEL, PING, PONG = range(1, 12)


VERSION = 6  # the peer protocol's version (lib/peer/peer_protocol.hpp)


def proof(secret, label, first, second):
    return hmac.new(secret.encode(), ("%s\n%s\n%s" % (label, first, second)).encode(), hashlib.sha256).hexdigest()


class FrameAuth:
    """One direction's message tags after the handshake, as lib/peer/peer_protocol.hpp defines them."""

    def __init__(self, secret, nonce_d, nonce_a, sender):
        self.key = hmac.new(secret.encode(), ("session\n%s\n%s" % (nonce_d, nonce_a)).encode(),
                            hashlib.sha256).digest()
        self.sender = sender.encode()
        self.seq = 0

    def tag(self, body):
        t = hmac.new(self.key, self.sender + b"\n" + struct.pack("<Q", self.seq) + body, hashlib.sha256)
        self.seq += 1
        return t.digest()[:16]

    def send(self, sock, kind, payload):
        body = bytes([kind]) + payload
        body += self.tag(body)
        sock.sendall(struct.pack("<I", len(body)) + body)

    def read(self, sock):
        kind, rest = read_message(sock)
        if kind is None:
            return None, b""
        body, tag = bytes([kind]) + rest[:-16], rest[-16:]
        assert hmac.compare_digest(self.tag(body), tag), "a message with a bad tag"
        return kind, rest[:-16]


class TestHandshake(unittest.TestCase):
    def test_a_wrong_secret_is_refused_on_both_sides_without_a_storm(self):
        with serving_node() as a, dialing_node(a, secret="another-secret-entirely") as c:
            c.wait_until(lambda: "secret" in remote_nodes(c)[0]["last_error"], what="the refusal")
            self.assertFalse(remote_nodes(c)[0]["connected"])
            self.assertIn("does not hold this cluster's secret", remote_nodes(c)[0]["last_error"])
            a.wait_until(lambda: "authentication failed" in a.log_text(), what="a's log")
            time.sleep(2)  # not a bound: counting the attempts made meanwhile
            self.assertLessEqual(a.log_text().count("authentication failed"), 2)

    def test_a_replayed_handshake_fails(self):
        with serving_node() as a:
            nonce_d = os.urandom(32).hex()
            with socket.create_connection(("127.0.0.1", a.peer_port), timeout=10) as s:
                send_message(s, HELLO, ("PPGATE %d %s eavesdropped" % (VERSION, nonce_d)).encode())
                kind, payload = read_message(s)
                self.assertEqual(kind, CHALLENGE)
                _, nonce_a, _ = payload.decode().split()
                recorded = proof(SECRET, "dialer", nonce_a, nonce_d).encode()
                send_message(s, PROOF, recorded)
                self.assertEqual(read_message(s)[0], WELCOME)
            # Replaying the same hello and proof on a new connection: a fresh nonce_a defeats it.
            with socket.create_connection(("127.0.0.1", a.peer_port), timeout=10) as s:
                send_message(s, HELLO, ("PPGATE %d %s eavesdropped" % (VERSION, nonce_d)).encode())
                kind, payload = read_message(s)
                self.assertEqual(kind, CHALLENGE)
                send_message(s, PROOF, recorded)
                kind, payload = read_message(s)
                self.assertEqual(kind, REFUSED)
                self.assertIn(b"authentication failed", payload)

    def test_a_relayed_handshake_gives_the_relay_nothing(self):
        """Before: a man in the middle relaying hello, challenge, proof and welcome between two real
        nodes got an authenticated link and ran its own job on one of them without the secret."""
        with serving_node() as a, tempfile.TemporaryDirectory() as d:
            marker = os.path.join(d, "injected")
            relay = Relay(a.peer_port, inject=[{
                "tag": 900001, "fn_id": 900001, "function": "f", "args": [],
                "source": "def f():\n    open(%r, 'w').write('ran')\n" % marker}])
            try:
                with dialing_node_at(relay.port) as c:
                    relay.injected.wait(20)
                    self.assertTrue(relay.injected.is_set(), "the relay saw no welcome")
                    a.wait_until(lambda: "fails authentication" in a.log_text(), what="a to refuse the frame")
                    time.sleep(1)  # not a bound: time for a job that should never run
                    self.assertFalse(os.path.exists(marker), "the relay's job ran")
                    # The real nodes still work together once they talk directly.
                    self.assertEqual(a.run(NAP, "nap", [6])["result"], 36)
            finally:
                relay.close()

    def test_a_version_mismatch_is_refused_clearly(self):
        with serving_node() as a:
            with socket.create_connection(("127.0.0.1", a.peer_port), timeout=10) as s:
                send_message(s, HELLO, ("PPGATE 99 %s future-node" % os.urandom(32).hex()).encode())
                kind, payload = read_message(s)
                self.assertEqual(kind, REFUSED)
                self.assertIn(b"protocol version mismatch: this node speaks version %d, the peer speaks version 99" % VERSION,
                              payload)

    def test_garbage_on_the_peer_port_is_refused_and_the_node_serves_on(self):
        with serving_node() as a:
            with socket.create_connection(("127.0.0.1", a.peer_port), timeout=15) as s:
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")  # read as a frame of ~542 MB: over the limit
                kind, payload = read_message(s)
                self.assertEqual(kind, REFUSED)
                self.assertEqual(payload, b"expected a hello")
            self.assertEqual(a.run(NAP, "nap", [3])["result"], 9)


def dialing_node_at(port, secret=SECRET):
    node = Node("--peers", "127.0.0.1:%d" % port, "--peer-heartbeat", "0.2", workers=1,
                env={"PPGATE_SECRET": secret})
    node.token = secret
    return node


class Relay:
    """A man in the middle: accepts a dialing node, connects to `port`, relays every frame both
    ways, and once the welcome has passed injects `inject` (a run batch) towards the acceptor."""

    def __init__(self, port, inject):
        self.target, self.inject = port, inject
        self.injected = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        self.to_acceptor = threading.Lock()  # whole frames only: relayed and injected never interleave
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            dialer, _ = self.listener.accept()
            acceptor = socket.create_connection(("127.0.0.1", self.target), timeout=20)
        except OSError:
            return
        self.sockets += [dialer, acceptor]
        threading.Thread(target=self._pump, args=(acceptor, dialer, True), daemon=True).start()
        self._pump(dialer, acceptor, False)

    def _pump(self, src, dst, from_acceptor):
        try:
            while True:
                kind, payload = read_message(src)
                if kind is None:
                    break
                frame = struct.pack("<I", 1 + len(payload)) + bytes([kind]) + payload
                if from_acceptor:
                    dst.sendall(frame)
                    if kind == WELCOME and not self.injected.is_set():
                        with self.to_acceptor:
                            send_message(self.sockets[1], RUN, json.dumps(self.inject).encode())
                        self.injected.set()
                else:
                    with self.to_acceptor:
                        dst.sendall(frame)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.listener.close()
        for s in self.sockets:
            s.close()


class FakePeer:
    """The acceptor side of the peer protocol, played by the test: it proves the secret, offers
    one slot, and answers each job of a `run` message with whatever `answer(job)` returns."""

    def __init__(self, answer, slots=1, answer_frame=None):
        self.answer = answer
        self.slots = slots
        # answer_frame(jobs) -> one (state, outcome) per job of a run frame (default: answer's)
        self.answer_frame = answer_frame or (lambda jobs: [answer(job) for job in jobs])
        self.frames = []  # the jobs of each run frame received
        self.jobs = []  # every job object received, in order
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(20)
            kind, payload = read_message(conn)
            assert kind == HELLO, kind
            _, version, nonce_d, _ = payload.decode().split(" ", 3)
            nonce_a = os.urandom(32).hex()
            send_message(conn, CHALLENGE, ("%s %s %s" % (version, nonce_a,
                                                        proof(SECRET, "acceptor", nonce_d, nonce_a))).encode())
            kind, payload = read_message(conn)
            assert kind == PROOF and payload.decode() == proof(SECRET, "dialer", nonce_a, nonce_d)
            out = FrameAuth(SECRET, nonce_d, nonce_a, "acceptor")
            incoming = FrameAuth(SECRET, nonce_d, nonce_a, "dialer")
            out.send(conn, WELCOME, b"%d 3.11.2 fake-peer" % self.slots)
            while True:
                try:
                    kind, payload = incoming.read(conn)
                except OSError:
                    return
                if kind is None:
                    return
                if kind == PING:
                    out.send(conn, PONG, b"")
                elif kind == RUN:
                    jobs = json.loads(payload)
                    self.frames.append(jobs)
                    self.jobs.extend(jobs)
                    for job, (state, outcome) in zip(jobs, self.answer_frame(jobs)):
                        out.send(conn, RESULT, ("%d %s 0.001\n%s" % (job["tag"], state, outcome)).encode())

    def close(self):
        self.listener.close()


class TestPeerProtocolEdges(unittest.TestCase):
    def test_a_function_whose_defining_job_the_peer_refused_is_sent_again(self):
        refused_once = []

        def answer(job):
            if "source" in job and not refused_once:
                refused_once.append(job["tag"])
                # A refusal is typed (protocol version 4): the job fails, the definition is not kept.
                return "refused", '"error":{"type":"SubmitError","message":"refused by the test"},"stdout":"","stderr":""'
            return "done", '"result":%d,"stdout":"","stderr":""' % (job["args"][0] * job["args"][0])

        peer = FakePeer(answer)
        try:
            with Node("--peers", "127.0.0.1:%d" % peer.port, "--peer-heartbeat", "0.2", workers=0,
                      env={"PPGATE_SECRET": SECRET}) as node:
                node.token = SECRET
                wait_connected(node, 1)
                first = node.run(NAP, "nap", [3])
                self.assertEqual(first["status"], "failed")
                self.assertEqual(first["error"]["type"], "SubmitError")
                self.assertEqual(node.run(NAP, "nap", [4])["result"], 16)
                self.assertEqual(node.run(NAP, "nap", [5])["result"], 25)
                # The source went with the refused job and once more with the next; not again.
                self.assertEqual(["source" in j for j in peer.jobs], [True, True, False])
                self.assertNotEqual(peer.jobs[0]["fn_id"], peer.jobs[1]["fn_id"])
        finally:
            peer.close()


    def test_a_frame_of_jobs_refused_for_one_bad_job_fails_only_that_job(self):
        refused = '"error":{"type":"SubmitError","message":"job 13 is bad"},"stdout":"","stderr":""'

        def answer(job):
            return "done", '"result":%d,"stdout":"","stderr":""' % (job["args"][0] * job["args"][0])

        def answer_frame(jobs):
            # As a real acceptor refuses a batch: whole, when one of its jobs does not parse.
            if any(job["args"][0] == 13 for job in jobs):
                return [("refused", refused)] * len(jobs)
            return [answer(job) for job in jobs]

        peer = FakePeer(answer, slots=4, answer_frame=answer_frame)
        try:
            with Node("--peers", "127.0.0.1:%d" % peer.port, "--peer-heartbeat", "0.2", workers=0,
                      env={"PPGATE_SECRET": SECRET}) as node:
                node.token = SECRET
                wait_connected(node, 1)
                batch = [{"source": NAP, "function": "nap", "args": [i]} for i in range(10, 18)]
                status, data, _ = node.request("POST", "/v1/jobs?wait=30", batch)
                by_arg = {i: j for i, j in zip(range(10, 18), data["jobs"])}
                self.assertEqual(by_arg[13]["status"], "failed")
                self.assertEqual(by_arg[13]["error"]["message"], "job 13 is bad")
                self.assertEqual({i: j.get("result") for i, j in by_arg.items() if i != 13},
                                 {i: i * i for i in range(10, 18) if i != 13})
                self.assertTrue(any(len(f) > 1 and any(j["args"][0] == 13 for j in f) for f in peer.frames),
                                [len(f) for f in peer.frames])  # it did share a frame with others
                self.assertEqual([len(f) for f in peer.frames if any(j["args"][0] == 13 for j in f)][-1], 1)
        finally:
            peer.close()


def make_certificates(directory):
    """A CA and a certificate it signed, with Debian's openssl command."""
    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=60)
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr, cert = (os.path.join(directory, n) for n in ("node.key", "node.csr", "node.pem"))
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=ppgate test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=ppgate node")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2")
    other_key, other = os.path.join(directory, "other.key"), os.path.join(directory, "other.pem")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", other_key, "-out", other, "-days", "2",
        "-subj", "/CN=not from the CA")
    return ca, key, cert, other_key, other


class TestTls(unittest.TestCase):
    def test_links_over_tls_with_a_ca_and_a_stranger_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            ca, key, cert, other_key, other = make_certificates(d)
            tls = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", ca)
            with serving_node(*tls) as a, dialing_node(a, extra=tls) as c:
                wait_connected(c, 1)
                status, jobs = submit_all(c, 40)
                self.assertEqual([j["result"] for j in jobs], [i * i for i in range(40)])
                self.assertIn("127.0.0.1:%d" % a.peer_port, {j["node"] for j in jobs})
                stranger = ("--tls-cert", other, "--tls-key", other_key, "--tls-ca", ca)
                with dialing_node(a, extra=stranger) as s:
                    a.wait_until(lambda: "TLS handshake failed" in a.log_text(), what="the TLS refusal")
                    s.wait_until(lambda: remote_nodes(s)[0]["last_error"] != "", what="the stranger's failure")
                    self.assertFalse(remote_nodes(s)[0]["connected"])
                with dialing_node(a) as plain:  # no TLS at all
                    plain.wait_until(lambda: remote_nodes(plain)[0]["last_error"] != "", what="a failure")
                    self.assertFalse(remote_nodes(plain)[0]["connected"])


class TestPythonClientPpservers(unittest.TestCase):
    def test_server_with_ppservers_runs_jobs_remotely(self):
        with serving_node(workers=2) as a:
            address = "127.0.0.1:%d" % a.peer_port
            with pp.Server(0, ppservers=(address,), secret=SECRET) as server:
                jobs = [server.submit(add, (i, 1)) for i in range(20)]
                self.assertEqual([j(timeout=60) for j in jobs], [i + 1 for i in range(20)])
                self.assertEqual(server.get_active_nodes(), {"local": 0, address: 2})
                self.assertIn(address, server.get_stats())


if __name__ == "__main__":
    unittest.main()
