"""The job session protocol (GET /v1/session, docs/rest.md "Sessions") spoken raw, as a JS or curl
user would: json codec, tags, fn_id, cancel, and bad input of every kind, which must get a clear
answer or close only the offending connection while the node serves everyone else."""

import json
import os
import socket
import struct
import sys
import time
import unittest

from harness import ROOT, Node

sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from ppgate._websocket import ConnectionClosed, WebSocket  # noqa: E402

WAIT = 30  # seconds: the bound on every read in these tests
SQ = "def sq(x):\n    return x*x\n"
NAP = "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n"


def open_session(node, token=None):
    headers = {"Authorization": "Bearer " + token} if token else {}
    ws = WebSocket("127.0.0.1", node.port, "/v1/session", headers, timeout=WAIT)
    ws._sock.settimeout(WAIT)  # every read below is bounded
    return ws


def send(ws, message):
    ws.send_text(message if isinstance(message, bytes) else json.dumps(message).encode())


def receive(ws):
    return json.loads(ws.recv())


def results_for(ws, tags):
    """Reads result messages until every tag in `tags` has its result; returns {tag: result}."""
    found = {}
    while set(tags) - set(found):
        message = receive(ws)
        if "results" not in message:
            raise AssertionError("expected results, got %r" % message)
        for r in message["results"]:
            found[r["tag"]] = r
    return found


def raw_upgrade(node):
    """A plain socket after a successful WebSocket upgrade, to send frames no client library would."""
    s = socket.create_connection(("127.0.0.1", node.port), timeout=WAIT)
    s.sendall(b"GET /v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise AssertionError("the node closed the upgrade: %r" % head)
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def closed_by_node(s):
    """True once the node has closed the connection (a close frame, then EOF), within WAIT."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            return True
        if not chunk:
            return True
    return False


class TestSessionProtocol(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node("--max-body", "4096", workers=2).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.node.__exit__(None, None, None)

    def setUp(self):
        self.ws = open_session(self.node)

    def tearDown(self):
        self.ws.close()

    def assert_session_still_works(self, ws=None):
        ws = ws or self.ws
        send(ws, [{"tag": 900, "source": SQ, "function": "sq", "args": [30]}])
        self.assertEqual(results_for(ws, [900])[900]["result"], 900)

    def test_a_batch_runs_and_each_result_carries_its_tag(self):
        send(self.ws, [{"tag": 1, "fn_id": 1, "source": SQ, "function": "sq", "args": [7]},
                       {"tag": 2, "fn_id": 1, "args": [8]}])
        send(self.ws, [{"tag": 3, "fn_id": 1, "args": [9]}])  # the source crossed once
        got = results_for(self.ws, [1, 2, 3])
        self.assertEqual({t: r["result"] for t, r in got.items()}, {1: 49, 2: 64, 3: 81})
        for r in got.values():
            self.assertEqual(r["status"], "done")
            self.assertIsInstance(r["id"], int)
            self.assertGreaterEqual(r["run_seconds"], 0)

    def test_a_failing_job_carries_its_error(self):
        send(self.ws, [{"tag": 4, "source": "def f():\n    print('hi')\n    return 1/0\n", "function": "f"}])
        r = results_for(self.ws, [4])[4]
        self.assertEqual(r["status"], "failed")
        self.assertEqual(r["error"]["type"], "ZeroDivisionError")
        self.assertIn("1/0", r["error"]["traceback"])
        self.assertEqual(r["stdout"], "hi\n")

    def test_a_message_that_is_not_json_gets_an_error(self):
        send(self.ws, b"hello?")
        self.assertIn("a JSON array of jobs", receive(self.ws)["error"]["message"])
        self.assert_session_still_works()

    def test_a_malformed_batch_is_rejected_whole_with_its_tags(self):
        send(self.ws, b'[{"tag":5,"source":"def f(): pass","function":"f"},{"tag":6,"function":')
        message = receive(self.ws)
        self.assertEqual(message["rejected"], [5, 6])
        self.assertTrue(message["error"]["message"])
        self.assert_session_still_works()

    def test_bad_fields_and_unknown_fn_ids_are_rejected(self):
        cases = [
            ([{"tag": 7, "fn_id": 99, "args": [1]}], "fn_id"),
            ([{"tag": 8, "source": SQ, "function": "sq", "args": "seven"}], "args"),
            ([{"tag": 9, "source": SQ, "function": "sq", "timeout": -1}], "timeout"),
            ([{"tag": 10, "source": SQ}], "function"),
        ]
        for batch, fragment in cases:
            send(self.ws, batch)
            message = receive(self.ws)
            self.assertEqual(message["rejected"], [batch[0]["tag"]], batch)
            self.assertIn(fragment, message["error"]["message"], batch)
        self.assert_session_still_works()

    def test_a_malformed_cancel_gets_an_error_and_an_unknown_tag_is_ignored(self):
        send(self.ws, b'{"cancel":"seven"}')
        self.assertIn("cancel", receive(self.ws)["error"]["message"])
        send(self.ws, {"cancel": 12345})  # no such job: nothing to say
        self.assert_session_still_works()

    def test_cancel_by_tag_ends_a_running_job_as_cancelled(self):
        send(self.ws, [{"tag": 11, "source": NAP, "function": "nap", "args": [60]}])
        self.node.wait_until(lambda: self.node.request("GET", "/v1/stats")[1]["jobs"]["running"] >= 1,
                             what="the job to start")
        send(self.ws, {"cancel": 11})
        r = results_for(self.ws, [11])[11]
        self.assertEqual(r["status"], "cancelled")

    def test_an_oversized_message_closes_only_that_session(self):
        other = open_session(self.node)
        try:
            send(self.ws, [{"tag": 13, "source": SQ, "function": "sq", "args": ["x" * 8000]}])
            with self.assertRaises((ConnectionClosed, ConnectionError)):
                receive(self.ws)
            self.assert_session_still_works(other)
        finally:
            other.close()

    def test_protocol_violations_close_only_that_connection(self):
        # Each: what a broken client might send right after the upgrade.
        violations = {
            "unmasked frame": b"\x81\x05hello",
            "invalid UTF-8 in a text frame": b"\x81\x82\x00\x00\x00\x00\xc3\x28",
            "reserved opcode": b"\x83\x80\x00\x00\x00\x00",
            "garbage": b"\x00" * 64,
        }
        for name, frame in violations.items():
            s = raw_upgrade(self.node)
            try:
                s.sendall(frame)
                self.assertTrue(closed_by_node(s), name)
            finally:
                s.close()
            self.assert_session_still_works()

    def test_closing_a_session_cancels_its_unfinished_jobs(self):
        before = self.node.request("GET", "/v1/stats")[1]["jobs"]["cancelled"]
        ws = open_session(self.node)
        send(ws, [{"tag": 14, "source": NAP, "function": "nap", "args": [60]}])
        self.node.wait_until(lambda: self.node.request("GET", "/v1/stats")[1]["jobs"]["running"] >= 1,
                             what="the job to start")
        ws.close()
        self.node.wait_until(
            lambda: self.node.request("GET", "/v1/stats")[1]["jobs"]["cancelled"] == before + 1,
            what="the abandoned job to be cancelled")
        self.assert_session_still_works()


class TestSessionAccess(unittest.TestCase):
    def test_the_session_needs_the_token_when_the_node_has_a_secret(self):
        with Node(workers=1, env={"PPGATE_SECRET": "a-session-secret"}) as node:
            with self.assertRaisesRegex(ConnectionError, "401"):
                open_session(node)
            with self.assertRaisesRegex(ConnectionError, "401"):
                open_session(node, token="wrong-secret")
            ws = open_session(node, token="a-session-secret")
            try:
                send(ws, [{"tag": 1, "source": SQ, "function": "sq", "args": [5]}])
                self.assertEqual(results_for(ws, [1])[1]["result"], 25)
            finally:
                ws.close()


if __name__ == "__main__":
    unittest.main()
