"""docs/openapi.yaml describes the node as it is: every route is requested on a real node, in its
successes and its errors, and each answer is checked against the description (status code,
content type, required headers, the body's schema) by openapi_check.py under Debian's python3
(python3-yaml, python3-jsonschema)."""

import base64
import http.client
import json
import os
import subprocess
import tempfile
import unittest

from harness import Node, ROOT

SPEC = os.path.join(ROOT, "docs", "openapi.yaml")
CHECKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi_check.py")
DEBIAN_PYTHON = "/usr/bin/python3"
SECRET = "openapi-test-secret"
SQ = "def sq(x):\n    return x*x\n"
NAP = "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n"
FAIL = "def boom():\n    return 1 / 0\n"
WEBSOCKET = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}


class TestOpenAPI(unittest.TestCase):
    def setUp(self):
        self.exchanges = []

    def exchange(self, node, method, template, path, body=None, headers=None, token=True):
        """One request on a fresh connection, recorded for the checker; returns (status, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
        hdrs = {"Authorization": "Bearer " + SECRET} if token else {}
        hdrs.update(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            res = conn.getresponse()
            raw = b"" if res.status == 101 else res.read()
            self.exchanges.append({
                "method": method, "path": template, "status": res.status,
                "content_type": res.getheader("Content-Type", ""), "body": raw.decode(),
                "headers": {k.lower(): v for k, v in res.getheaders()}})
            return res.status, raw.decode()
        finally:
            conn.close()

    def check(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(self.exchanges, f)
        try:
            done = subprocess.run([DEBIAN_PYTHON, CHECKER, SPEC, f.name], capture_output=True, text=True, timeout=60)
        finally:
            os.unlink(f.name)
        self.assertEqual(done.returncode, 0, done.stderr)
        return json.loads(done.stdout)

    def test_every_route_answers_as_the_description_says(self):
        with Node("--max-body", "4096", "--max-header", "2048", env={"PPGATE_SECRET": SECRET}) as node:
            x = lambda *a, **k: self.exchange(node, *a, **k)  # noqa: E731
            job = {"source": SQ, "function": "sq", "args": [7]}
            # Jobs: submitted alone and in batches, with and without ?wait, done and failed.
            status, body = x("POST", "/v1/jobs", "/v1/jobs", job)
            self.assertEqual(status, 202)
            first = json.loads(body)["id"]
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs?wait=10", job)[0], 200)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs?wait=10", [job, dict(job, args=[8])])[0], 200)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs?wait=10", {"source": FAIL, "function": "boom"})[0], 200)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs", "[1,,2]")[0], 400)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs", dict(job, colour="red"))[0], 400)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs?wait=forever", job)[0], 400)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs", job, token=False)[0], 401)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs", job, headers={"Origin": "http://evil.example"})[0], 403)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs", dict(job, source="#" * 8000))[0], 413)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs", job, headers={"X-Filler": "f" * 4000})[0], 431)
            self.assertEqual(x("PUT", "/v1/jobs", "/v1/jobs", "{}")[0], 405)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs", dict(job, id=1 << 33))[0], 202)
            self.assertEqual(x("POST", "/v1/jobs", "/v1/jobs", dict(job, id=1 << 33))[0], 409)
            # The listing.
            self.assertEqual(x("GET", "/v1/jobs", "/v1/jobs")[0], 200)
            self.assertEqual(x("GET", "/v1/jobs", "/v1/jobs?status=done&limit=2")[0], 200)
            self.assertEqual(x("GET", "/v1/jobs", "/v1/jobs?status=bored")[0], 400)
            self.assertEqual(x("GET", "/v1/jobs", "/v1/jobs", token=False)[0], 401)
            # One job: polled, long-polled, cancelled while it runs, cancelled once ended, unknown.
            self.assertEqual(x("GET", "/v1/jobs/{id}", "/v1/jobs/%d?wait=10" % first)[0], 200)
            self.assertEqual(x("GET", "/v1/jobs/{id}", "/v1/jobs/%d?wait=-1" % first)[0], 400)
            self.assertEqual(x("GET", "/v1/jobs/{id}", "/v1/jobs/999999")[0], 404)
            self.assertEqual(x("GET", "/v1/jobs/{id}", "/v1/jobs/%d" % first, token=False)[0], 401)
            status, body = x("POST", "/v1/jobs", "/v1/jobs", {"source": NAP, "function": "nap", "args": [30]})
            napping = json.loads(body)["id"]
            node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % napping,
                                                 headers={"Authorization": "Bearer " + SECRET})[1]["status"] == "running",
                            what="the job to run")
            self.assertEqual(x("GET", "/v1/jobs/{id}", "/v1/jobs/%d" % napping)[0], 200)  # running
            self.assertEqual(x("DELETE", "/v1/jobs/{id}", "/v1/jobs/%d" % napping)[0], 200)
            self.assertEqual(x("GET", "/v1/jobs/{id}", "/v1/jobs/%d" % napping)[0], 200)  # cancelled
            self.assertEqual(x("DELETE", "/v1/jobs/{id}", "/v1/jobs/%d" % first)[0], 409)
            self.assertEqual(x("DELETE", "/v1/jobs/{id}", "/v1/jobs/999999")[0], 404)
            self.assertEqual(x("PUT", "/v1/jobs/{id}", "/v1/jobs/%d" % first, "{}")[0], 405)
            # Stats, nodes and workers.
            self.assertEqual(x("GET", "/v1/stats", "/v1/stats")[0], 200)
            self.assertEqual(x("GET", "/v1/stats", "/v1/stats", headers={"Accept": "text/plain"})[0], 200)
            self.assertEqual(x("GET", "/v1/stats", "/v1/stats", token=False)[0], 401)
            self.assertEqual(x("POST", "/v1/stats", "/v1/stats", "{}")[0], 405)
            self.assertEqual(x("GET", "/v1/nodes", "/v1/nodes")[0], 200)
            self.assertEqual(x("GET", "/v1/workers", "/v1/workers")[0], 200)
            self.assertEqual(x("PUT", "/v1/workers", "/v1/workers", {"count": 1})[0], 200)
            self.assertEqual(x("PUT", "/v1/workers", "/v1/workers", {"count": "auto"})[0], 200)
            self.assertEqual(x("PUT", "/v1/workers", "/v1/workers", {"count": -1})[0], 400)
            self.assertEqual(x("DELETE", "/v1/workers", "/v1/workers")[0], 405)
            # The WebSockets: upgraded, refused, and asked for without an upgrade.
            for route in ("/v1/session", "/v1/events"):
                self.assertEqual(x("GET", route, route, headers=WEBSOCKET)[0], 101)
                self.assertEqual(x("GET", route, route + "?access_token=" + SECRET, headers=WEBSOCKET, token=False)[0], 101)
                self.assertEqual(x("GET", route, route, headers=dict(WEBSOCKET, **{"Sec-WebSocket-Key": "short"}))[0], 400)
                self.assertEqual(x("GET", route, route, headers=WEBSOCKET, token=False)[0], 401)
                self.assertEqual(x("GET", route, route, headers=dict(WEBSOCKET, Origin="http://evil.example"))[0], 403)
                self.assertEqual(x("GET", route, route)[0], 404)
            self.assertEqual(x("GET", "/v1/events", "/v1/events?jobs=1", headers=WEBSOCKET)[0], 101)
            # Metrics, health and the page.
            self.assertEqual(x("GET", "/metrics", "/metrics")[0], 200)
            self.assertEqual(x("GET", "/metrics", "/metrics", token=False)[0], 401)
            self.assertEqual(x("GET", "/healthz", "/healthz", token=False)[0], 200)
            self.assertEqual(x("POST", "/healthz", "/healthz", "{}")[0], 405)
            self.assertEqual(x("GET", "/", "/", token=False)[0], 200)

        report = self.check()
        self.assertEqual(report["problems"], [])
        self.assertEqual(report["covered"], report["operations"], "a route of the spec was never requested")

    def test_the_checker_catches_an_answer_that_breaks_the_description(self):
        """The check itself can fail: a job without its status, a wrong type, an unlisted status."""
        self.exchanges = [
            {"method": "GET", "path": "/v1/jobs/{id}", "status": 200, "content_type": "application/json",
             "body": json.dumps({"id": 1, "function": "f", "group": "default", "codec": "json", "attempts": 1}),
             "headers": {}},
            {"method": "GET", "path": "/v1/workers", "status": 200, "content_type": "application/json",
             "body": '{"count": "two"}', "headers": {}},
            {"method": "GET", "path": "/healthz", "status": 418, "content_type": "application/json",
             "body": "{}", "headers": {}},
            {"method": "GET", "path": "/v1/stats", "status": 200, "content_type": "text/html",
             "body": "<html>", "headers": {}},
        ]
        problems = self.check()["problems"]
        self.assertEqual(len(problems), 4, problems)
        self.assertIn("'status' is a required property", problems[0])
        self.assertIn("'two' is not of type 'integer'", problems[1])
        self.assertIn("status not in the spec", problems[2])
        self.assertIn("content type 'text/html'", problems[3])


if __name__ == "__main__":
    unittest.main()
