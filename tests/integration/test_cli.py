"""ppgate's command line, limits and authentication, each with its own node."""

import http.client
import json
import os
import socket
import tempfile
import time
import unittest

from harness import Node, run_ppgate

SQ = "def sq(x):\n    return x*x\n"


def healthy(node):
    """True when /healthz answers 200; a refused or reset connection (over the limit) is False."""
    try:
        return node.request("GET", "/healthz")[0] == 200
    except (OSError, http.client.HTTPException):
        return False


class TestCommandLine(unittest.TestCase):
    def test_help_documents_every_flag(self):
        r = run_ppgate("--help")
        self.assertEqual(r.returncode, 0)
        for flag in ("--listen", "--workers", "--secret-file", "--secret-env", "--insecure", "--restart",
                     "--pid-file", "--idle-exit", "--max-body", "--max-header", "--max-connections",
                     "--idle-timeout", "--keep-finished", "--worker-dir", "--python", "--log-level", "--busy-poll",
                     "--stats-interval", "--parent-pid", "--drain-timeout", "--join", "--max-jobs-per-worker",
                     "--max-worker-memory", "--config", "--log-format", "--journal", "--keep-finished-for",
                     "--adopt-from"):
            self.assertIn(flag, r.stdout)

    def test_bad_flags_get_a_clear_error(self):
        cases = [
            (["serve", "--bogus"], "unknown option '--bogus'"),
            (["serve", "--workers", "many"], "--workers expects a whole number"),
            (["serve", "--listen", "nowhere:80"], "not an IP address"),
            (["serve", "--listen", "127.0.0.1:99999"], "--listen port"),
            (["serve", "--secret", "abc"], "use --secret-file or --secret-env"),
            (["serve", "--log-level", "loud"], "--log-level"),
            (["serve", "--busy-poll", "-5"], "--busy-poll"),
            (["serve", "--busy-poll", "20000"], "--busy-poll"),
            (["serve", "--busy-poll", "soon"], "--busy-poll"),
            (["serve", "--listen", "0.0.0.0:0"], "not a loopback address"),
            (["serve", "--python-version", "2.7"], "--python-version"),
            (["serve", "--python-version", "3.11; rm"], "--python-version"),
            (["serve", "--drain-timeout", "-1"], "--drain-timeout"),
            (["serve", "--drain-timeout", "soon"], "--drain-timeout"),
            (["serve", "--max-jobs-per-worker", "0"], "--max-jobs-per-worker"),
            (["serve", "--join", "nowhere"], "--join"),
            (["serve", "--log-format", "xml"], "--log-format expects text or json"),
            (["serve", "--max-worker-memory", "1M"], "--max-worker-memory expects a size from 16 MiB"),
            (["serve", "--max-worker-memory", "2X"], "--max-worker-memory"),
            (["serve", "--max-worker-memory", "99999999999T"], "--max-worker-memory"),
            (["frobnicate"], "unknown command"),
            ([], "missing command"),
        ]
        for args, fragment in cases:
            r = run_ppgate(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(fragment, r.stderr, args)

    def test_a_config_file_sets_options_and_the_command_line_overrides_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ppgate.toml")
            with open(path, "w") as f:
                f.write("# a node for the tests\n"
                        "[serve]\n"
                        "workers = 1              # the command line says 2\n"
                        "keep_finished = 2\n"
                        "log-format = \"json\"\n"
                        "insecure = false\n"
                        "; an INI comment\n"
                        "drain-timeout = 5\n")
            with Node("--config", path, workers=2) as node:
                self.assertEqual(node.request("GET", "/v1/workers")[1]["count"], 2)
                ids = [node.run(SQ, "sq", [i])["id"] for i in range(3)]
                self.assertEqual(node.request("GET", "/v1/jobs/%d" % ids[0])[0], 404)  # kept: 2
                self.assertEqual(node.request("GET", "/v1/jobs/%d" % ids[2])[0], 200)
                lines = [line for line in node.log_text().splitlines() if line]
            # --log-format json from the file: every line of the log is one JSON object.
            self.assertGreater(len(lines), 1)
            for line in lines:
                record = json.loads(line)
                self.assertEqual(set(record), {"time", "level", "pid", "message"}, record)
                self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
                self.assertIn(record["level"], ("debug", "info", "warn", "error"))

    def test_a_bad_config_file_is_refused_naming_the_line(self):
        cases = [
            ("workers = many\n", "line 1: --workers expects a whole number"),
            ("\n# fine\nbogus = 1\n", "line 3: unknown option '--bogus'"),
            ("secret = \"hunter2hunter2\"\n", "line 1: --secret is not accepted"),
            ("[peers]\n", "line 1: only a [serve] section"),
            ("listen\n", "line 1: expected 'key = value'"),
            ("python = \"/usr/bin/python3\n", "line 1: a quoted value does not end"),
            ("config = \"other.toml\"\n", "a config file cannot name another"),
        ]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bad.ini")
            for text, fragment in cases:
                with open(path, "w") as f:
                    f.write(text)
                r = run_ppgate("serve", "--config", path)
                self.assertEqual(r.returncode, 2, text)
                self.assertIn(path, r.stderr, text)
                self.assertIn(fragment, r.stderr, text)
            r = run_ppgate("serve", "--config", os.path.join(tmp, "missing.toml"))
            self.assertEqual(r.returncode, 2)
            self.assertIn("--config: cannot read", r.stderr)
            with open(path, "w") as f:
                f.write("peers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n")
            r = run_ppgate("serve", "--config", path, "--config", path)
            self.assertIn("--config may be given once", r.stderr)

    def test_a_blank_secret_is_refused(self):
        r = run_ppgate("serve", "--workers", "0", env={"PPGATE_SECRET": " " * 8})
        self.assertEqual(r.returncode, 2)
        self.assertIn("not all blanks", r.stderr)

    def test_python_version_skips_the_probe_and_a_broken_worker_is_retried_slowly(self):
        # /bin/false is no Python: with --python-version nothing checks that at start, so each
        # worker exits at once. The node must keep serving, back off instead of spinning, and
        # end the job with an error rather than keep it forever.
        with Node("--python", "/bin/false", "--python-version", "3.11.2", "--log-level", "info",
                  workers=1) as node:
            status, stats, _ = node.request("GET", "/v1/stats")
            self.assertEqual(status, 200)
            status, data, _ = node.request("POST", "/v1/jobs?wait=30",
                                           {"source": "def f():\n    return 1\n", "function": "f"})
            self.assertEqual(status, 200, data)
            self.assertEqual(data["status"], "failed", data)
            self.assertEqual(data["error"]["type"], "WorkerDied", data)
            time.sleep(1.0)
            restarts = node.request("GET", "/v1/stats")[1]["worker_restarts"]
            # Backing off from 200 ms, a spinning restart loop would have made hundreds by now.
            self.assertLess(restarts, 20, restarts)
            self.assertIn("right after it started", node.log_text())

    def test_a_port_in_use_is_reported(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            r = run_ppgate("serve", "--listen", "127.0.0.1:%d" % s.getsockname()[1], "--workers", "0")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("in use", r.stderr)

    def test_pid_file_is_written_and_removed(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ppgate.pid")
            node = Node("--pid-file", path, workers=0)
            node.start()
            with open(path) as f:
                self.assertEqual(int(f.read()), node.proc.pid)
            self.assertEqual(node.stop(), 0)
            self.assertFalse(os.path.exists(path))

    def test_idle_exit_stops_an_unused_node(self):
        node = Node("--idle-exit", "1", workers=1)
        node.start()
        try:
            self.assertEqual(node.proc.wait(20), 0)
        finally:
            node.kill()


class TestAuthentication(unittest.TestCase):
    def test_with_a_secret_every_request_needs_the_bearer_token(self):
        with tempfile.NamedTemporaryFile("w") as f:
            f.write("correct horse battery\n")
            f.flush()
            with Node("--secret-file", f.name, workers=1) as node:
                status, data, res = node.request("GET", "/v1/stats")
                self.assertEqual(status, 401)
                self.assertEqual(res.getheader("WWW-Authenticate"), "Bearer")
                status, data, _ = node.request("GET", "/v1/stats", headers={"Authorization": "Bearer wrong"})
                self.assertEqual(status, 401)
                self.assertEqual(node.request("GET", "/healthz")[0], 200)
                node.token = "correct horse battery"
                self.assertEqual(node.run(SQ, "sq", [3])["result"], 9)
                # NamedTemporaryFile makes it 0600: nothing to warn about.
                self.assertNotIn("can be read by other users", node.log_text())

    def test_a_secret_file_others_can_read_is_warned_about(self):
        with tempfile.NamedTemporaryFile("w") as f:
            f.write("correct horse battery\n")
            f.flush()
            os.chmod(f.name, 0o644)
            with Node("--secret-file", f.name, workers=0) as node:
                self.assertIn("the secret file '%s' can be read by other users (mode 0644); chmod 600 it" % f.name,
                              node.log_text())

    def test_the_secret_can_come_from_the_environment(self):
        with Node(env={"PPGATE_SECRET": "from-the-environment"}, workers=1) as node:
            self.assertEqual(node.request("GET", "/v1/nodes")[0], 401)
            node.token = "from-the-environment"
            self.assertEqual(node.request("GET", "/v1/nodes")[0], 200)


class TestLimits(unittest.TestCase):
    def test_an_oversized_body_is_413_and_the_node_keeps_serving(self):
        with Node("--max-body", "2048", workers=1) as node:
            status, data, _ = node.request("POST", "/v1/jobs", "x" * 10000)
            self.assertEqual(status, 413)
            self.assertIn("message", data["error"])
            self.assertEqual(node.run(SQ, "sq", [2])["result"], 4)

    def test_an_oversized_header_is_431(self):
        with Node("--max-header", "2048", workers=0) as node:
            status, data, _ = node.request("GET", "/healthz", headers={"X-Big": "y" * 5000})
            self.assertEqual(status, 431)

    def test_a_slow_client_is_cut_off_after_the_idle_timeout(self):
        with Node("--idle-timeout", "1", workers=0) as node:
            with socket.create_connection(("127.0.0.1", node.port), timeout=20) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes
                started = time.monotonic()
                self.assertEqual(s.recv(100), b"")  # closed by the node
                self.assertLess(time.monotonic() - started, 15)
            self.assertEqual(node.request("GET", "/healthz")[0], 200)

    def test_connections_over_the_limit_get_503(self):
        with Node("--max-connections", "2", workers=0) as node:
            status, job, _ = node.request("POST", "/v1/jobs", {"source": "def f():\n    return 1\n", "function": "f"})
            held = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(2)]
            try:
                # Each held connection is busy in a long poll (with no workers the job never ends):
                # busy connections are not closed to make room, idle ones would be.
                for s in held:
                    s.sendall(b"GET /v1/jobs/%d?wait=4 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % job["id"])
                time.sleep(1)  # not a bound: lets the node read both heads (a connection still
                #                waiting for its head would be closed to make room instead)
                with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 503"))
            finally:
                for s in held:
                    s.close()
            node.wait_until(lambda: healthy(node), what="a free connection slot")


if __name__ == "__main__":
    unittest.main()
