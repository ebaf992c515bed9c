"""The REST API of a real ppgate node: every route, every error status, supervision, load."""

import base64
import json
import os
import pickle
import re
import signal
import socket
import threading
import time
import unittest

from harness import Node, pid_alive

SQ = "def sq(x):\n    return x*x\n"
SLEEP = "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n"


class SharedNode(unittest.TestCase):
    """One node for the tests that do not care about its configuration."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node(workers=2)
        cls.node.start()

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()


class TestMapJobs(SharedNode):
    """A map job ("map": true) calls its function once per argument list, in one job."""

    def test_a_map_job_answers_one_outcome_per_call_in_order(self):
        job = self.node.run(SQ, "sq", [[1], [2], [3]], map=True)
        self.assertEqual(job["status"], "done")
        self.assertEqual(job["result"], {"values": [1, 4, 9], "errors": []})

    def test_a_call_that_raises_keeps_its_error_and_the_others_go_on(self):
        inverse = "def inverse(x):\n    return 1 / x\n"
        job = self.node.run(inverse, "inverse", [[2], [0], [4]], map=True)
        self.assertEqual(job["status"], "done")
        self.assertEqual(job["result"]["values"], [0.5, None, 0.25])
        [bad] = job["result"]["errors"]
        self.assertEqual((bad["index"], bad["type"]), (1, "ZeroDivisionError"))
        self.assertIn("in inverse", bad["traceback"])

    def test_map_jobs_are_refused_without_argument_lists(self):
        for fields, why in (({"args": [1, 2]}, "array of argument arrays"), ({}, "needs 'args'"),
                            ({"args": [[1]], "map": 1}, "true or false")):
            body = dict({"source": SQ, "function": "sq", "map": True}, **fields)
            status, data, _ = self.node.request("POST", "/v1/jobs", body)
            self.assertEqual(status, 400, body)
            self.assertIn(why, data["error"]["message"])


class TestJobs(SharedNode):
    def test_the_readme_curl_job_answers_49(self):
        job = self.node.run(SQ, "sq", [7], wait=10)
        self.assertEqual(job["status"], "done")
        self.assertEqual(job["result"], 49)
        self.assertEqual(job["node"], "local")

    def test_submit_without_wait_is_accepted_and_can_be_polled(self):
        status, job, res = self.node.request("POST", "/v1/jobs", {"source": SQ, "function": "sq", "args": [3]})
        self.assertEqual(status, 202)
        self.assertIn(job["status"], ("queued", "running", "done"))
        self.assertEqual(res.getheader("Location"), "/v1/jobs/%d" % job["id"])
        status, polled, _ = self.node.request("GET", "/v1/jobs/%d?wait=10" % job["id"])
        self.assertEqual(status, 200)
        self.assertEqual(polled["status"], "done")
        self.assertEqual(polled["result"], 9)

    def test_long_poll_returns_early_when_the_job_ends(self):
        status, job, _ = self.node.request("POST", "/v1/jobs", {"source": SLEEP, "function": "nap", "args": [0.3]})
        started = time.monotonic()
        status, polled, _ = self.node.request("GET", "/v1/jobs/%d?wait=20" % job["id"])
        self.assertEqual(polled["status"], "done")
        self.assertLess(time.monotonic() - started, 15)  # bound, not a timing measurement

    def test_long_poll_on_an_unfinished_job_answers_its_current_state(self):
        status, job, _ = self.node.request("POST", "/v1/jobs", {"source": SLEEP, "function": "nap", "args": [2]})
        status, polled, _ = self.node.request("GET", "/v1/jobs/%d?wait=0.1" % job["id"])
        self.assertEqual(status, 200)
        self.assertIn(polled["status"], ("queued", "running"))
        self.assertNotIn("result", polled)
        self.node.request("DELETE", "/v1/jobs/%d" % job["id"])

    def test_a_batch_is_submitted_and_answered_in_order(self):
        batch = [{"source": SQ, "function": "sq", "args": [i]} for i in range(50)]
        status, data, _ = self.node.request("POST", "/v1/jobs?wait=30", batch)
        self.assertEqual(status, 200)
        self.assertEqual([j["result"] for j in data["jobs"]], [i * i for i in range(50)])

    def test_an_exception_comes_back_with_type_message_traceback_and_output(self):
        src = "def f(x):\n    print('before')\n    import sys\n    sys.stderr.write('warn')\n    return 1 / x\n"
        job = self.node.run(src, "f", [0])
        self.assertEqual(job["status"], "failed")
        self.assertEqual(job["error"]["type"], "ZeroDivisionError")
        self.assertEqual(job["error"]["message"], "division by zero")
        self.assertIn("return 1 / x", job["error"]["traceback"])
        self.assertEqual(job["stdout"], "before\n")
        self.assertEqual(job["stderr"], "warn")

    def test_depfuncs_modules_and_kwargs_reach_the_function(self):
        src = "def sum_primes(n, start=2):\n    return sum(x for x in range(start, n) if isprime(x))\n"
        dep = "def isprime(n):\n    return n > 1 and all(n % d for d in range(2, int(math.sqrt(n)) + 1))\n"
        job = self.node.run(src, "sum_primes", [100], depfuncs=[dep], modules=["math"], kwargs={"start": 2})
        self.assertEqual(job["result"], 1060)
        job = self.node.run("def f():\n    return p.join('a', 'b'), sqrt(4)\n", "f",
                            modules=["import os.path as p", "from math import sqrt"])
        self.assertEqual(job["result"], ["a/b", 2.0])

    def test_an_importable_reference_runs_without_source(self):
        status, job, _ = self.node.request("POST", "/v1/jobs?wait=10", {"function": "math:factorial", "args": [5]})
        self.assertEqual(job["result"], 120)

    def test_pickle_codec_round_trips_python_objects(self):
        args = base64.b64encode(pickle.dumps(({1, 2}, b"x"))).decode()
        body = {"source": "def f(s, b):\n    return (sorted(s), b * 2)\n", "function": "f",
                "codec": "pickle", "args": args}
        status, job, _ = self.node.request("POST", "/v1/jobs?wait=10", body)
        self.assertEqual(job["codec"], "pickle")
        self.assertEqual(pickle.loads(base64.b64decode(job["result"])), ([1, 2], b"xx"))

    def test_an_unencodable_result_fails_the_job_only(self):
        job = self.node.run("def f():\n    return {1, 2}\n", "f")
        self.assertEqual(job["status"], "failed")
        self.assertEqual(job["error"]["type"], "ResultEncodingError")
        self.assertEqual(self.node.run(SQ, "sq", [2])["result"], 4)

    def test_a_syntax_error_in_the_source_fails_the_job_clearly(self):
        job = self.node.run("def f(:\n", "f")
        self.assertEqual(job["error"]["type"], "SyntaxError")
        # The same function again fails the same way, from the worker's cache.
        job = self.node.run("def f(:\n", "f")
        self.assertEqual(job["error"]["type"], "SyntaxError")

    def test_a_missing_entry_function_is_a_name_error(self):
        job = self.node.run(SQ, "cube")
        self.assertEqual(job["error"]["type"], "NameError")

    def test_functions_do_not_leak_into_each_other(self):
        self.node.run("LEAK = 1\ndef a():\n    return LEAK\n", "a")
        job = self.node.run("def b():\n    return 'LEAK' in globals() or 'a' in globals()\n", "b")
        self.assertIs(job["result"], False)

    def test_a_job_calling_sys_exit_fails_and_the_worker_stays(self):
        before = self.node.request("GET", "/v1/stats")[1]["worker_restarts"]
        job = self.node.run("import sys\ndef f():\n    sys.exit(3)\n", "f")
        self.assertEqual(job["error"]["type"], "SystemExit")
        self.assertEqual(self.node.request("GET", "/v1/stats")[1]["worker_restarts"], before)


class TestErrors(SharedNode):
    def assertError(self, status, expected_status, data):
        self.assertEqual(status, expected_status, data)
        self.assertIsInstance(data["error"]["message"], str)
        self.assertTrue(data["error"]["message"])

    def test_unknown_job_is_404(self):
        for path in ("/v1/jobs/999999", "/v1/jobs/abc", "/v1/jobs/-1"):
            status, data, _ = self.node.request("GET", path)
            self.assertError(status, 404, data)
        status, data, _ = self.node.request("DELETE", "/v1/jobs/999999")
        self.assertError(status, 404, data)

    def test_unknown_route_is_404_and_wrong_method_is_405(self):
        status, data, _ = self.node.request("GET", "/v2/nothing")
        self.assertError(status, 404, data)
        status, data, res = self.node.request("PUT", "/v1/jobs", "{}")
        self.assertError(status, 405, data)
        self.assertEqual(res.getheader("Allow"), "GET, POST")
        status, data, _ = self.node.request("POST", "/v1/stats", "{}")
        self.assertError(status, 405, data)

    def test_bad_bodies_are_400_with_a_message(self):
        cases = {
            "not json": "job object",
            "{\"source\": ": "invalid JSON",
            "[]": "at least one job",
            '{"function": "f"}': "importable reference",
            '{"source": "x", "function": "f", "args": 5}': "'args'",
            '{"source": "x", "function": "f", "nope": 1}': "unknown field 'nope'",
            '{"source": "x", "function": "f"} trailing': "invalid JSON",
            '{"source": "x", "function": "f", "timeout": "soon"}': "'timeout'",
            '"\xff"': "invalid JSON",
        }
        for body, fragment in cases.items():
            status, data, _ = self.node.request("POST", "/v1/jobs", body.encode("latin-1"))
            self.assertError(status, 400, data)
            self.assertIn(fragment, data["error"]["message"], body)

    def test_bad_wait_is_400(self):
        for q in ("wait=x", "wait=-1", "wait=99999"):
            status, data, _ = self.node.request("POST", "/v1/jobs?" + q, {"source": SQ, "function": "sq", "args": [1]})
            self.assertError(status, 400, data)

    def test_cancel_of_a_finished_job_is_409(self):
        job = self.node.run(SQ, "sq", [1])
        status, data, _ = self.node.request("DELETE", "/v1/jobs/%d" % job["id"])
        self.assertError(status, 409, data)

    def test_a_malformed_request_line_gets_400_and_the_node_keeps_serving(self):
        with socket.create_connection(("127.0.0.1", self.node.port), timeout=10) as s:
            s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
            reply = s.recv(4096)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply)
        self.assertEqual(self.node.run(SQ, "sq", [5])["result"], 25)

    def test_bad_resize_requests_are_400(self):
        for body in ('{"count": -1}', '{"count": "many"}', '{"size": 2}', "[]", "{"):
            status, data, _ = self.node.request("PUT", "/v1/workers", body)
            self.assertError(status, 400, data)

    def test_a_cross_origin_state_change_is_refused(self):
        status, data, _ = self.node.request("POST", "/v1/jobs", {"source": SQ, "function": "sq"},
                                            headers={"Origin": "http://evil.example"})
        self.assertError(status, 403, data)
        status, data, _ = self.node.request("GET", "/v1/stats", headers={"Host": "evil.example"})
        self.assertError(status, 403, data)
        # Same origin is fine.
        status, data, _ = self.node.request(
            "POST", "/v1/jobs?wait=10", {"source": SQ, "function": "sq", "args": [2]},
            headers={"Origin": "http://127.0.0.1:%d" % self.node.port})
        self.assertEqual(status, 200, data)


class TestRoutes(SharedNode):
    def test_stats_json_has_pp_figures(self):
        self.node.run(SQ, "sq", [1])
        status, s, _ = self.node.request("GET", "/v1/stats")
        self.assertEqual(status, 200)
        self.assertEqual(s["ncpus"], 2)
        local = [n for n in s["nodes"] if n["name"] == "local"][0]
        self.assertGreaterEqual(local["njobs"], 1)
        for key in ("elapsed", "active_tasks", "queue_depth", "worker_restarts", "jobs"):
            self.assertIn(key, s)
        self.assertGreaterEqual(s["jobs"]["done"], 1)

    def test_stats_as_text_is_pp_print_stats_table(self):
        self.node.run(SQ, "sq", [1])
        status, text, res = self.node.request("GET", "/v1/stats", headers={"Accept": "text/plain"})
        self.assertEqual(status, 200)
        self.assertTrue(res.getheader("Content-Type").startswith("text/plain"))
        lines = text.split("\n")
        self.assertEqual(lines[0], "Job execution statistics:")
        self.assertEqual(lines[1], " job count | % of all jobs | job time sum | time per job | job server")
        self.assertRegex(lines[2], r"^    [ \d]{6} \|        [ \d]{3}\.\d\d \|     [ \d]{3}\.\d{4} \|  [ \d]{4}\.\d{6} \| local$")
        self.assertRegex(lines[3], r"^Time elapsed since server creation \d+\.\d+(e[-+]\d+)?$")
        self.assertRegex(lines[4], r"^\d+ active tasks, 2 cores$")
        self.assertRegex(lines[5], r"^Python 3\.\d+\.\d+\S* on local$")  # the workers' Python
        self.assertEqual(lines[6:], ["", ""])

    def test_nodes_lists_the_local_node_and_its_workers(self):
        status, data, _ = self.node.request("GET", "/v1/nodes")
        self.assertEqual(status, 200)
        local = data["nodes"][0]
        self.assertEqual(local["name"], "local")
        self.assertEqual(local["slots"], 2)
        self.assertEqual(len(local["workers"]), 2)

    def test_healthz_and_the_web_page(self):
        status, data, _ = self.node.request("GET", "/healthz")
        self.assertEqual((status, data["status"]), (200, "ok"))
        status, html, res = self.node.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertTrue(res.getheader("Content-Type").startswith("text/html"))
        self.assertIn("<title>ppgate node</title>", html)

    def test_keep_alive_serves_many_requests_on_one_connection(self):
        conn = self.node.connection()
        try:
            for i in range(20):
                status, job, _ = self.node.request("POST", "/v1/jobs?wait=10",
                                                   {"source": SQ, "function": "sq", "args": [i]}, conn=conn)
                self.assertEqual(job["result"], i * i)
        finally:
            conn.close()


class TestSupervision(unittest.TestCase):
    def test_a_crashing_job_fails_and_its_worker_is_replaced(self):
        with Node(workers=1) as node:
            job = node.run("import os\ndef f():\n    os._exit(9)\n", "f")
            self.assertEqual(job["status"], "failed")
            self.assertEqual(job["error"]["type"], "WorkerDied")
            self.assertIn("exited with status 9", job["error"]["message"])
            job = node.run("import ctypes\ndef f():\n    ctypes.string_at(0)\n", "f", retries=1)
            self.assertEqual(job["attempts"], 2)
            self.assertIn("SIGSEGV", job["error"]["message"])
            self.assertEqual(node.run(SQ, "sq", [4])["result"], 16)
            self.assertGreaterEqual(node.request("GET", "/v1/stats")[1]["worker_restarts"], 3)

    def test_a_timeout_stops_the_job_and_replaces_its_worker(self):
        with Node(workers=1) as node:
            pid = node.worker_pids()[0]
            job = node.run(SLEEP, "nap", [60], timeout=0.3)
            self.assertEqual(job["status"], "failed")
            self.assertEqual(job["error"]["type"], "TimeoutError")
            node.wait_until(lambda: not pid_alive(pid), what="the timed-out worker to die")
            self.assertEqual(node.run(SQ, "sq", [3])["result"], 9)

    def test_cancel_of_a_running_job_kills_its_worker(self):
        with Node(workers=1) as node:
            status, job, _ = node.request("POST", "/v1/jobs", {"source": SLEEP, "function": "nap", "args": [60]})
            node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % job["id"])[1]["status"] == "running",
                            what="the job to start")
            pid = node.worker_pids()[0]
            status, cancelled, _ = node.request("DELETE", "/v1/jobs/%d" % job["id"])
            self.assertEqual(status, 200)
            self.assertEqual(cancelled["status"], "cancelled")
            node.wait_until(lambda: not pid_alive(pid), what="the cancelled job's worker to die")
            self.assertEqual(node.run(SQ, "sq", [6])["result"], 36)

    def test_cancel_of_a_queued_job_drops_it(self):
        with Node(workers=0) as node:
            status, job, _ = node.request("POST", "/v1/jobs", {"source": SQ, "function": "sq", "args": [2]})
            self.assertEqual(job["status"], "queued")
            status, cancelled, _ = node.request("DELETE", "/v1/jobs/%d" % job["id"])
            self.assertEqual((status, cancelled["status"]), (200, "cancelled"))
            node.request("PUT", "/v1/workers", {"count": 1})
            self.assertEqual(node.run(SQ, "sq", [5])["result"], 25)
            self.assertEqual(node.request("GET", "/v1/jobs/%d" % job["id"])[1]["status"], "cancelled")

    def test_the_pool_is_resized_up_and_down(self):
        with Node(workers=1) as node:
            status, data, _ = node.request("PUT", "/v1/workers", {"count": 3})
            self.assertEqual((status, data["count"]), (200, 3))
            node.wait_until(lambda: len(node.worker_pids()) == 3, what="3 workers")
            pids = node.worker_pids()
            status, data, _ = node.request("PUT", "/v1/workers", {"count": 1})
            self.assertEqual(data["count"], 1)
            node.wait_until(lambda: sum(pid_alive(p) for p in pids) == 1, what="2 workers to stop")
            self.assertEqual(node.request("GET", "/v1/stats")[1]["ncpus"], 1)
            status, data, _ = node.request("PUT", "/v1/workers", {"count": "auto"})
            self.assertEqual(data["count"], len(os.sched_getaffinity(0)))
            self.assertEqual(node.run(SQ, "sq", [7])["result"], 49)

    def test_restart_gives_each_job_a_fresh_worker(self):
        with Node("--restart", workers=1) as node:
            pids = [node.run("import os\ndef f():\n    return os.getpid()\n", "f")["result"] for _ in range(3)]
            self.assertEqual(len(set(pids)), 3)

    def test_sigterm_stops_the_node_and_all_its_workers(self):
        node = Node(workers=2)
        node.start()
        node.wait_until(lambda: len(node.worker_pids()) == 2, what="workers")
        pids = node.worker_pids()
        node.request("POST", "/v1/jobs", {"source": SLEEP, "function": "nap", "args": [60]})
        self.assertEqual(node.stop(), 0)
        for pid in pids:
            self.assertFalse(pid_alive(pid), "worker %d outlived its node" % pid)

    def test_killing_the_node_takes_its_workers_down(self):
        node = Node(workers=2)
        node.start()
        node.wait_until(lambda: len(node.worker_pids()) == 2, what="workers")
        pids = node.worker_pids()
        node.request("POST", "/v1/jobs", {"source": SLEEP, "function": "nap", "args": [60]})
        node.kill()
        node.wait_until(lambda: not any(pid_alive(p) for p in pids), what="orphaned workers to exit")

    def test_sigusr1_prints_the_stats_table(self):
        with Node(workers=1) as node:
            node.run(SQ, "sq", [2])
            node.proc.send_signal(signal.SIGUSR1)
            self.assertEqual(node.read_stdout_line(10), "Job execution statistics:")
            self.assertEqual(node.read_stdout_line(10),
                             " job count | % of all jobs | job time sum | time per job | job server")


class TestLoad(SharedNode):
    def test_a_burst_of_1000_jobs_from_concurrent_clients_all_come_back_right(self):
        clients, per_client = 4, 250
        results = {}
        errors = []

        def client(c):
            conn = self.node.connection()
            try:
                ids = {}
                for i in range(per_client):
                    x = c * per_client + i
                    status, job, _ = self.node.request(
                        "POST", "/v1/jobs", {"source": SQ, "function": "sq", "args": [x]}, conn=conn)
                    if status != 202:
                        errors.append((status, job))
                        return
                    ids[job["id"]] = x
                for job_id, x in ids.items():
                    status, job, _ = self.node.request("GET", "/v1/jobs/%d?wait=60" % job_id, conn=conn)
                    results[x] = job.get("result")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads), "clients did not finish")
        self.assertEqual(errors, [])
        self.assertEqual(len(results), clients * per_client)
        for x, r in results.items():
            self.assertEqual(r, x * x)


if __name__ == "__main__":
    unittest.main()
