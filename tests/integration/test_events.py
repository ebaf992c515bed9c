"""The live stats: /v1/events (snapshots and job events over WebSocket) and /metrics."""

import json
import os
import re
import select
import socket
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "clients", "python"))

from ppgate._websocket import HandshakeError, WebSocket  # noqa: E402
from harness import Node  # noqa: E402

SQ = "def sq(x):\n    return x*x\n"
FAIL = "def boom(n):\n    print('x' * n)\n    raise ValueError('boom %d' % n)\n"


def recv_json(ws, timeout=20.0):
    """The next message, or AssertionError after `timeout` seconds: no test waits forever."""
    if not ws.buffered() and not select.select([ws], [], [], timeout)[0]:
        raise AssertionError("no message within %s s" % timeout)
    return json.loads(ws.recv())


def subscribe(node, query="", headers=None):
    return WebSocket("127.0.0.1", node.port, "/v1/events" + query, headers or {})


class TestEventStream(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node("--stats-interval", "0.2", workers=2)
        cls.node.start()

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def test_snapshots_arrive_at_the_stated_rate(self):
        ws = subscribe(self.node)
        try:
            snapshots = [recv_json(ws) for _ in range(8)]
        finally:
            ws.close()
        self.assertTrue(all(s["type"] == "snapshot" for s in snapshots))
        self.assertTrue(all(s["interval"] == 0.2 for s in snapshots))
        seqs = [s["seq"] for s in snapshots[1:]]
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))))
        gaps = sorted(b["time"] - a["time"] for a, b in zip(snapshots[1:], snapshots[2:]))
        median = gaps[len(gaps) // 2]
        self.assertTrue(0.1 <= median <= 0.6, gaps)  # a loose band: the rate, not a speed
        s = snapshots[-1]
        for key in ("stats", "rates", "nodes", "recent_failures"):
            self.assertIn(key, s)
        self.assertEqual(s["nodes"][0]["slots"], 2)
        self.assertEqual(len(s["nodes"][0]["workers"]), 2)
        self.assertIn("jobs_per_second", s["rates"])

    def test_job_events_match_the_submitted_jobs(self):
        ws = subscribe(self.node, "?jobs=1")
        try:
            batch = [{"source": SQ, "function": "sq", "args": [i], "group": "evt"} for i in range(10)]
            batch.append({"source": FAIL, "function": "boom", "args": [3]})
            status, data, _ = self.node.request("POST", "/v1/jobs?wait=30", batch)
            self.assertEqual(status, 200)
            ids = [j["id"] for j in data["jobs"]]
            seen = {i: [] for i in ids}
            deadline = time.monotonic() + 30
            while any(not events or events[-1] in ("queued", "started") for events in seen.values()):
                self.assertLess(time.monotonic(), deadline, "events missing: %r" % seen)
                m = recv_json(ws)
                if m["type"] != "jobs":
                    continue
                for e in m["events"]:
                    if e["id"] in seen:
                        seen[e["id"]].append(e["event"])
                        if e["event"] == "failed":
                            self.assertEqual(e["error"]["type"], "ValueError")
                            self.assertEqual(e["function"], "boom")
            # A job placed behind a running one may be taken back for another worker when that
            # one runs long (a slow machine, a sanitized build): it is queued and started again.
            def attempts(events, end):
                self.assertEqual(events[-1:], [end], events)
                self.assertTrue(events[:-1] and events[:-1] == ["queued", "started"] * (len(events) // 2), events)
            for i in ids[:10]:
                attempts(seen[i], "done")
            attempts(seen[ids[10]], "failed")
            # The failure also shows in the snapshots' recent failures.
            deadline = time.monotonic() + 10
            while True:
                m = recv_json(ws)
                if m["type"] == "snapshot" and any(f["id"] == ids[10] for f in m["recent_failures"]):
                    failure = [f for f in m["recent_failures"] if f["id"] == ids[10]][0]
                    self.assertIn("boom 3", failure["error"]["traceback"])
                    break
                self.assertLess(time.monotonic(), deadline)
        finally:
            ws.close()

    def test_a_stalled_client_does_not_delay_another(self):
        # The stalled subscriber asks for job events and never reads; its socket buffers fill.
        stalled = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /v1/events?jobs=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        b"Sec-WebSocket-Version: 13\r\n\r\n")
        healthy = subscribe(self.node, "?jobs=1")
        try:
            # 600 failing jobs whose events each carry 8 KB of output: far more than the
            # stalled client's buffers hold.
            batch = [{"source": FAIL, "function": "boom", "args": [8000]} for _ in range(600)]
            status, data, _ = self.node.request("POST", "/v1/jobs", batch)
            self.assertEqual(status, 202)
            wanted = {j["id"] for j in data["jobs"]}
            ended = set()
            snapshots = 0
            deadline = time.monotonic() + 60
            while wanted - ended:
                self.assertLess(time.monotonic(), deadline, "the healthy subscriber fell behind")
                m = recv_json(healthy)
                if m["type"] == "snapshot":
                    snapshots += 1
                else:
                    self.assertEqual(m["dropped"], 0)
                    ended |= {e["id"] for e in m["events"] if e["event"] == "failed"}
            self.assertGreater(snapshots, 0)
            self.assertEqual(self.node.run(SQ, "sq", [3])["result"], 9)
        finally:
            healthy.close()
            stalled.close()

    def test_the_stats_page_is_served(self):
        status, html, res = self.node.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertIn("/v1/events", html)
        self.assertNotIn("http://", html.replace("http://HOST:PORT", ""))  # nothing from elsewhere


class TestEventStreamAccess(unittest.TestCase):
    def test_the_stream_needs_the_token_when_the_node_has_a_secret(self):
        with Node(env={"PPGATE_SECRET": "stream-secret"}, workers=0) as node:
            with self.assertRaises(HandshakeError) as caught:
                subscribe(node)
            self.assertEqual(caught.exception.status, 401)
            ws = subscribe(node, "?access_token=stream-secret")
            self.assertEqual(recv_json(ws)["type"], "snapshot")
            ws.close()
            ws = subscribe(node, headers={"Authorization": "Bearer stream-secret"})
            self.assertEqual(recv_json(ws)["type"], "snapshot")
            ws.close()

    def test_a_foreign_origin_is_refused(self):
        with Node(workers=0) as node:
            with self.assertRaises(HandshakeError) as caught:
                subscribe(node, headers={"Origin": "http://evil.example"})
            self.assertEqual(caught.exception.status, 403)


def parse_metrics(text):
    """Parses the Prometheus text format strictly enough to catch malformed output:
    returns ({name: type}, [(name, labels dict, value)])."""
    types, samples = {}, []
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            m = sample.match(line)
            if not m:
                raise AssertionError("not a sample line: %r" % line)
            labels = dict(label.findall(m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return types, samples


class TestMetrics(unittest.TestCase):
    def test_metrics_parse_and_count_jobs(self):
        with Node(workers=1) as node:
            for i in range(5):
                node.run(SQ, "sq", [i])
            for i in range(2):
                node.run(FAIL, "boom", [1])
            status, text, res = node.request("GET", "/metrics")
            self.assertEqual(status, 200)
            self.assertTrue(res.getheader("Content-Type").startswith("text/plain; version=0.0.4"))
            types, samples = parse_metrics(text)

            def value(name, **labels):
                found = [v for n, l, v in samples if n == name and l == labels]
                self.assertEqual(len(found), 1, (name, labels))
                return found[0]

            self.assertEqual(types["ppgate_jobs_ended_total"], "counter")
            self.assertEqual(types["ppgate_job_latency_seconds"], "histogram")
            self.assertEqual(value("ppgate_jobs_submitted_total"), 7)
            self.assertEqual(value("ppgate_jobs_ended_total", state="done"), 5)
            self.assertEqual(value("ppgate_jobs_ended_total", state="failed"), 2)
            self.assertEqual(value("ppgate_queue_depth"), 0)
            for reason in ("died", "timeout", "cancelled", "max_jobs", "memory", "job_state", "protocol"):
                self.assertEqual(value("ppgate_worker_restarts_total", reason=reason), 0)
            self.assertEqual(value("ppgate_node_jobs_total", node="local"), 7)
            self.assertEqual(value("ppgate_node_slots", node="local"), 1)
            buckets = [(l["le"], v) for n, l, v in samples if n == "ppgate_job_latency_seconds_bucket"]
            counts = [v for _, v in buckets]
            self.assertEqual(counts, sorted(counts))  # cumulative
            self.assertEqual(buckets[-1], ("+Inf", 7))
            self.assertEqual(value("ppgate_job_latency_seconds_count"), 7)
            for name in {n for n, _, _ in samples}:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                self.assertTrue(name in types or base in types, "no TYPE for %s" % name)


if __name__ == "__main__":
    unittest.main()
