"""Clients and would-be peers that misbehave cost the node neither its memory nor its service.

Regression tests from the hardening issue: what each case broke before is in its docstring.
"""

import json
import os
import socket
import struct
import sys
import unittest

from harness import ROOT, Node, rss_bytes

sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from ppgate._websocket import WebSocket  # noqa: E402

SECRET = "cluster-secret-for-tests"
SQ = "def sq(x):\n    return x*x\n"


def peer_node():
    node = Node("--peer-listen", "127.0.0.1:0", workers=1, env={"PPGATE_SECRET": SECRET})
    node.token = SECRET
    return node


class TestPeerPortBeforeAuthentication(unittest.TestCase):
    def test_large_frames_before_the_handshake_are_refused_unread(self):
        """Before: the peer port accepted frames up to 256 MiB before the handshake (6 connections
        took the node to 1.16 GB)."""
        with peer_node() as node:
            before = rss_bytes(node.proc.pid)
            conns = []
            try:
                for _ in range(6):
                    s = socket.create_connection(("127.0.0.1", node.peer_port), timeout=10)
                    conns.append(s)
                    s.sendall(struct.pack("<I", 200 * 1024 * 1024) + b"\x01" + b"x" * (4 * 1024 * 1024))
            except OSError:
                pass  # the node may close a connection while it is being written to: that is the point
            for s in conns:
                s.settimeout(10)
                try:
                    while s.recv(65536):
                        pass  # the refusal, then EOF
                except OSError:
                    pass
                s.close()
            self.assertLess(rss_bytes(node.proc.pid) - before, 64 * 1024 * 1024)
            self.assertEqual(node.run(SQ, "sq", [7])["result"], 49)

    def test_idle_connections_to_the_peer_port_do_not_starve_rest_clients(self):
        """Before: 1,100 idle peer connections exhausted the node's descriptors and starved REST
        clients."""
        with peer_node() as node:
            idle = []
            try:
                for _ in range(300):
                    idle.append(socket.create_connection(("127.0.0.1", node.peer_port), timeout=10))
                for i in range(5):
                    self.assertEqual(node.run(SQ, "sq", [i])["result"], i * i)
                # The node closed every connection past its cap of handshakes at once.
                closed = 0
                for s in idle[100:]:
                    s.settimeout(5)
                    try:
                        closed += s.recv(1) == b""
                    except OSError:
                        closed += 1
                self.assertEqual(closed, 200)
                fds = len(os.listdir("/proc/%d/fd" % node.proc.pid))
                self.assertLess(fds, 150)
            finally:
                for s in idle:
                    s.close()


def raw_request(port, head, body=b"", read_timeout=10):
    """Sends `head` (and `body`) on a fresh connection; returns the status line and the headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head.encode())
        try:
            s.sendall(body)
        except OSError:
            pass  # the node refused on the head and stopped reading: its answer is waiting
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


class TestHttpBeforeAuthentication(unittest.TestCase):
    def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(self):
        """Before: with a secret set, the node read whole bodies (up to 64 MiB) before answering 401:
        20 unauthenticated uploads took it from 7 MB to 1.2 GB."""
        with Node(workers=0, env={"PPGATE_SECRET": SECRET}) as node:
            before = rss_bytes(node.proc.pid)
            for _ in range(20):
                answer = raw_request(node.port, "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     "Content-Type: application/json\r\nContent-Length: 62914560\r\n\r\n",
                                     b"[" * (1024 * 1024))
                self.assertTrue(answer.startswith("HTTP/1.1 401"), answer[:200])
            self.assertLess(rss_bytes(node.proc.pid) - before, 32 * 1024 * 1024)
            node.token = SECRET
            self.assertEqual(node.request("GET", "/v1/workers")[0], 200)

    def test_ambiguous_hosts_and_foreign_origins_are_refused(self):
        """Before: 'Host: 127.0.0.1:P, evil.example', two Host headers and an Origin with another
        scheme were accepted."""
        with Node(workers=0) as node:
            body = '{"source":"def f():\\n    return 1\\n","function":"f"}'
            cases = [
                ("Host: 127.0.0.1:%d, evil.example\r\n" % node.port, "400"),
                ("Host: 127.0.0.1:%d\r\nHost: evil.example\r\n" % node.port, "400"),
                ("Host: 127.0.0.1:%d\r\nOrigin: https://127.0.0.1:%d\r\n" % (node.port, node.port), "403"),
                ("Host: 127.0.0.1:%d\r\nOrigin: http://127.0.0.1:%d\r\n" % (node.port, node.port), "202"),
            ]
            for headers, status in cases:
                with self.subTest(headers=headers):
                    answer = raw_request(node.port, "POST /v1/jobs HTTP/1.1\r\n%sContent-Type: application/json\r\n"
                                         "Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (headers, len(body), body))
                    self.assertTrue(answer.startswith("HTTP/1.1 " + status), answer[:300])


def upgrade(port, extra_headers):
    return raw_request(port, "GET /v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\n%s\r\n" % extra_headers)


class TestInputRefusedAtTheDoor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node(workers=1)
        cls.node.start()

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def test_arguments_that_are_not_strict_json_are_refused_naming_the_field(self):
        """Before: these were accepted and then killed a worker, reported as a misleading WorkerDied."""
        cases = ["[1,,2]", "[01]", "[1.]", "[tru]", "[NaN]", "[Infinity]", "[1e999999]",
                 "[" * 600 + "]" * 600]
        for raw in cases:
            for field, wrap in (("args", raw), ("kwargs", '{"a":%s}' % raw)):
                with self.subTest(field=field, raw=raw[:20]):
                    body = '{"source":"def f(*a, **k):\\n    return 1\\n","function":"f","%s":%s}' % (field, wrap)
                    status, data, _ = self.node.request("POST", "/v1/jobs", body)
                    self.assertEqual(status, 400, data)
                    self.assertIn("field '%s'" % field, data["error"]["message"])
        self.assertEqual(self.node.run("def f(*a):\n    return list(a)\n", "f", [[1, 2.5, "x", None]])["result"],
                         [[1, 2.5, "x", None]])
        self.assertEqual(self.node.request("GET", "/v1/stats")[1]["worker_restarts"], 0)

    def test_a_session_job_without_a_tag_is_refused(self):
        ws = WebSocket("127.0.0.1", self.node.port, "/v1/session", {}, timeout=30)
        ws._sock.settimeout(30)
        try:
            ws.send_text(json.dumps([{"source": SQ, "function": "sq", "args": [3]}]).encode())
            answer = json.loads(ws.recv())
            self.assertIn("rejected", answer)
            self.assertIn("field 'tag' is required", answer["error"]["message"])
        finally:
            ws.close()

    def test_websocket_handshakes_with_a_bad_key_are_refused_in_json(self):
        for key in ("", "abc", "dGhlIHNhbXBsZSBub25jZQ"):
            with self.subTest(key=key):
                answer = upgrade(self.node.port, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % key)
                self.assertTrue(answer.startswith("HTTP/1.1 400"), answer[:200])
                self.assertIn("application/json", answer)
        answer = upgrade(self.node.port, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")  # no version
        self.assertTrue(answer.startswith("HTTP/1.1 4"), answer[:200])
        self.assertIn("application/json", answer)


class TestSlowClients(unittest.TestCase):
    def test_slow_connections_over_the_limit_do_not_lock_clients_out(self):
        """Before: 600 slow HTTP connections (over --max-connections) locked every client out."""
        with Node("--max-connections", "50", workers=1) as node:
            slow = []
            try:
                for _ in range(200):
                    s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
                    s.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never more
                    slow.append(s)
                for i in range(10):
                    self.assertEqual(node.run(SQ, "sq", [i])["result"], i * i)
            finally:
                for s in slow:
                    s.close()


    def test_a_half_sent_head_is_cut_off_and_an_idle_connection_is_not(self):
        """Before: a half-sent request head held its connection for the whole idle timeout."""
        with Node("--header-timeout", "1", "--idle-timeout", "60", workers=1) as node:
            idle = socket.create_connection(("127.0.0.1", node.port), timeout=15)
            half = socket.create_connection(("127.0.0.1", node.port), timeout=15)
            try:
                half.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                self.assertEqual(half.recv(4096), b"", "closed by the node, well before the idle timeout")
                idle.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                self.assertEqual(idle.recv(4096).split(b"\r\n", 1)[0], b"HTTP/1.1 200 OK")
            finally:
                idle.close()
                half.close()

    def test_each_address_keeps_a_fair_share_of_the_connections(self):
        """Before: at the limit the oldest waiting connection was closed whoever held it, so one
        address opening connections by the hundred closed everyone else's idle keep-alives."""
        def connect(source):
            s = socket.socket()
            s.settimeout(10)
            s.bind((source, 0))  # every 127/8 address is this host's loopback
            s.connect(("127.0.0.1", node.port))
            return s

        def ask(s):
            s.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return s.recv(4096).split(b"\r\n", 1)[0]

        with Node("--max-connections", "20", workers=1) as node:
            calm = [connect("127.0.0.2") for _ in range(3)]  # idle keep-alives, the oldest
            flood = []
            try:
                for _ in range(200):
                    s = connect("127.0.0.3")
                    s.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    flood.append(s)
                for s in calm:
                    self.assertEqual(ask(s), b"HTTP/1.1 200 OK")
                status, _, _ = node.request("GET", "/v1/stats")  # a third address gets in too
                self.assertEqual(status, 200)
            finally:
                for s in calm + flood:
                    s.close()

class TestSessionsThatStopReading(unittest.TestCase):
    def test_a_session_that_reads_no_results_is_held_back_then_closed(self):
        """Before: a job session whose client stopped reading grew the node to 2.35 GB in 27 s."""
        with Node("--idle-timeout", "3", workers=2) as node:
            ws = WebSocket("127.0.0.1", node.port, "/v1/session", {}, timeout=30)
            ws._sock.settimeout(2)
            big = "def big(i, padding):\n    return 'x' * 200000\n"
            tag = 0

            def send_batch():
                nonlocal tag
                batch = [{"tag": tag + i, "source": big, "function": "big", "args": [tag + i, "y" * 4000]}
                         for i in range(50)]
                tag += 50
                ws.send_text(json.dumps(batch).encode())

            for _ in range(20):  # 1000 jobs: 200 MB of results, far over the session's bound
                send_batch()
            node.wait_until(lambda: node.request("GET", "/v1/stats")[1]["jobs"]["done"] >= 1000, timeout=60,
                            what="the first jobs to end")
            sent = 0
            try:
                for _ in range(400):  # 20,000 jobs (80 MB) more, 4 GB of results, if the node kept reading
                    send_batch()
                    sent += 1
            except OSError:
                pass  # the node stopped reading: our sends block (or it closed the session)
            self.assertLess(sent, 400, "the node kept reading submissions")
            peak = rss_bytes(node.proc.pid)
            # Meanwhile the node serves everyone else, and within the idle timeout closes the session.
            self.assertEqual(node.run(SQ, "sq", [3])["result"], 9)
            node.wait_until(lambda: "read none of its results" in node.log_text(), timeout=60,
                            what="the session to be closed")
            node.wait_until(lambda: node.request("GET", "/v1/stats")[1]["jobs"]["queued"] == 0
                            and node.request("GET", "/v1/stats")[1]["jobs"]["running"] == 0,
                            timeout=60, what="its jobs to be cancelled")
            self.assertLess(peak, 1024 * 1024 * 1024)
            ws._sock.close()


if __name__ == "__main__":
    unittest.main()
