"""Running a node for real (docs/cli.md): worker memory caps and recycling, retries, priorities,
and what an operator watches (/metrics read with the Prometheus client's own parser)."""

import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "clients", "python"))

import ppgate as pp  # noqa: E402
from client_helpers import flaky, hold, mark  # noqa: E402
from harness import Node, rss_bytes  # noqa: E402

# Debian's python3 has python3-prometheus-client (tools/install-deps.sh); the tests themselves run
# on whatever python3 is on PATH.
DEBIAN_PYTHON = "/usr/bin/python3"

# Each call keeps 50 MiB more in a module of the worker, as a leaking library does.
LEAK = ("import json\n"
        "def leak():\n"
        "    json.kept = getattr(json, 'kept', []) + [bytearray(50 << 20)]\n"
        "    return len(json.kept)\n")


def prometheus_samples(text):
    """[(name, labels, value)] as prometheus_client's text parser reads `text`; it raises on
    anything that is not the exposition format."""
    program = ("import json, sys\n"
               "from prometheus_client.parser import text_string_to_metric_families\n"
               "out = []\n"
               "for family in text_string_to_metric_families(sys.stdin.read()):\n"
               "    for s in family.samples:\n"
               "        out.append([s.name, s.labels, s.value, family.type])\n"
               "print(json.dumps(out))\n")
    done = subprocess.run([DEBIAN_PYTHON, "-c", program], input=text, capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise AssertionError("prometheus_client cannot parse /metrics: " + done.stderr)
    return [(name, labels, value, kind) for name, labels, value, kind in json.loads(done.stdout)]


def metric(samples, name, **labels):
    found = [v for n, l, v, _ in samples if n == name and l == labels]
    if len(found) != 1:
        raise AssertionError("%s %r: %d samples" % (name, labels, len(found)))
    return found[0]


class TestWorkerMemory(unittest.TestCase):
    def test_a_leaking_job_hits_the_cap_and_fails_clearly_while_the_next_job_runs(self):
        limit = 200 << 20
        with Node("--max-worker-memory", "200M", workers=1) as node:
            ends = []
            for _ in range(6):
                ends.append(node.run(LEAK, "leak"))
                if ends[-1]["status"] != "done":
                    break
            self.assertEqual(ends[0]["result"], 1)
            self.assertGreaterEqual(len(ends), 3, ends)  # 2 x 50 MiB fit in 200 MiB
            failed = ends[-1]
            self.assertEqual(failed["status"], "failed", failed)
            self.assertEqual(failed["error"]["type"], "WorkerMemoryError")
            self.assertIn("%d bytes" % limit, failed["error"]["message"])
            self.assertIn("--max-worker-memory", failed["error"]["message"])
            # A fresh worker took the slot: the leak is gone.
            self.assertEqual(node.run(LEAK, "leak")["result"], 1)
            samples = prometheus_samples(node.request("GET", "/metrics")[1])
            self.assertEqual(metric(samples, "ppgate_worker_restarts_total", reason="memory"), 1)
            stats = node.request("GET", "/v1/stats")[1]
            self.assertEqual(stats["worker_restarts_by_reason"]["memory"], 1)
            # This machine has no cgroup v2 memory controller: the log says which cap is used.
            self.assertRegex(node.log_text(), r"--max-worker-memory: (each worker runs in a cgroup|workers cap "
                                              r"their address space \(RLIMIT_AS\))")

    def test_numpy_imports_under_a_modest_cap(self):
        # RLIMIT_AS counts address space, which numpy's thread pools reserve by the hundred MiB:
        # the cap leaves each job what the limit leaves its resident memory, not a flat total.
        probe = subprocess.run([DEBIAN_PYTHON, "-c", "import numpy"], capture_output=True, timeout=60)
        if probe.returncode != 0:
            self.fail("numpy is not installed for %s (tools/install-deps.sh)" % DEBIAN_PYTHON)
        with Node("--max-worker-memory", "300M", "--python", DEBIAN_PYTHON, workers=1) as node:
            source = "import numpy\ndef total(n):\n    return float(numpy.ones(n).sum())\n"
            self.assertEqual(node.run(source, "total", [1000])["result"], 1000.0)
            big = node.run(source, "total", [100 << 20])  # 800 MiB of float64
            self.assertEqual(big["error"]["type"], "WorkerMemoryError", big)
            self.assertEqual(node.run(source, "total", [10])["result"], 10.0)


# Their sources, for jobs sent over REST; the Python client sends the functions themselves.
FLAKY, HOLD, MARK = ("import os, time\n" + textwrap.dedent(inspect.getsource(f)) for f in (flaky, hold, mark))


def read_lines(path):
    with open(path) as f:
        return f.read().split()


def expected_order(priorities):
    """Tags by priority, higher first, in submission order within one."""
    return [tag for tag, _ in sorted(enumerate(priorities), key=lambda tp: -tp[1])]


class TestRetries(unittest.TestCase):
    def test_a_job_that_fails_twice_then_succeeds_with_retries_2(self):
        with tempfile.TemporaryDirectory() as tmp, Node(workers=1) as node:
            job = node.run(FLAKY, "flaky", [os.path.join(tmp, "a"), 2], retries=2)
            self.assertEqual((job["status"], job["result"]), ("done", 3), job)
            self.assertEqual(job["attempts"], 3)
            self.assertEqual(job["failed_attempts"], 2)
            self.assertNotIn("interrupted_attempts", job)
            # Out of retries: only the last exception is reported.
            job = node.run(FLAKY, "flaky", [os.path.join(tmp, "b"), 5], retries=1)
            self.assertEqual(job["status"], "failed")
            self.assertEqual(job["error"]["type"], "ConnectionError")
            self.assertEqual(job["error"]["message"], "flaky call 2")
            self.assertEqual(job["attempts"], 2)
            stats = node.request("GET", "/v1/stats")[1]
            self.assertEqual((stats["retried"], stats["jobs"]["done"], stats["jobs"]["failed"]), (3, 1, 1))

    def test_a_backoff_spaces_the_reruns(self):
        source = ("import time\n"
                  "def stamp(path):\n"
                  "    with open(path, 'a') as f:\n"
                  "        f.write('%r\\n' % time.monotonic())\n"
                  "    raise RuntimeError('again')\n")
        with tempfile.TemporaryDirectory() as tmp, Node(workers=1) as node:
            path = os.path.join(tmp, "stamps")
            job = node.run(source, "stamp", [path], retries=2, retry_backoff=0.2)
            self.assertEqual((job["status"], job["attempts"]), ("failed", 3))
            stamps = [float(line) for line in read_lines(path)]
            self.assertEqual(len(stamps), 3)
            # 0.2 s before the first rerun, 0.4 s before the second: waits, at least that long.
            self.assertGreaterEqual(stamps[1] - stamps[0], 0.2)
            self.assertGreaterEqual(stamps[2] - stamps[1], 0.4)

    def test_bad_retry_fields_are_refused(self):
        with Node(workers=1) as node:
            for fields, fragment in (({"retry_backoff": -1}, "retry_backoff"), ({"retry_backoff": "soon"}, "retry_backoff"),
                                     ({"priority": 1.5}, "priority"), ({"priority": 10 ** 12}, "priority"),
                                     ({"retries": 101}, "retries")):
                body = dict(source="def f():\n    return 1\n", function="f", **fields)
                status, data, _ = node.request("POST", "/v1/jobs", body)
                self.assertEqual(status, 400, fields)
                self.assertIn(fragment, data["error"]["message"], fields)

    def test_the_python_client_retries_per_submit_and_per_executor(self):
        with tempfile.TemporaryDirectory() as tmp, pp.Server(1) as server:
            job = server.submit(flaky, (os.path.join(tmp, "a"), 1), retries=1)
            self.assertEqual(job(), 2)
            job = server.submit(flaky, (os.path.join(tmp, "b"), 3), retries=1)
            with self.assertRaises(pp.JobError) as raised:
                job()
            self.assertIn("flaky call 2", str(raised.exception))
            with self.assertRaises(ValueError):
                server.submit(flaky, (os.path.join(tmp, "c"), 0), retries=-1)
        with tempfile.TemporaryDirectory() as tmp, pp.Executor(1, retries=2, retry_backoff=0.01) as executor:
            self.assertEqual(executor.submit(flaky, os.path.join(tmp, "d"), 2).result(60), 3)


class TestPriorities(unittest.TestCase):
    def submit_held(self, node, tmp, priorities):
        """A job holding the only worker, then one job per priority; returns the order they ran."""
        release, marks = os.path.join(tmp, "release"), os.path.join(tmp, "marks")
        status, held, _ = node.request("POST", "/v1/jobs", {"source": HOLD, "function": "hold", "args": [release]})
        self.assertEqual(status, 202, held)
        node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % held["id"])[1]["status"] == "running",
                        what="the holding job to start")
        batch = [{"source": MARK, "function": "mark", "args": [marks, tag], "priority": p}
                 for tag, p in enumerate(priorities)]
        status, queued, _ = node.request("POST", "/v1/jobs", batch)
        self.assertEqual(status, 202, queued)
        open(release, "w").close()
        ids = [j["id"] for j in queued["jobs"]]
        for job_id in ids:
            status, job, _ = node.request("GET", "/v1/jobs/%d?wait=60" % job_id)
            self.assertEqual(job["status"], "done", job)
            if priorities[ids.index(job_id)]:
                self.assertEqual(job["priority"], priorities[ids.index(job_id)])
        return [int(line) for line in read_lines(marks)]

    def test_priorities_reorder_a_queue_of_100(self):
        priorities = [(i * 37) % 7 - 3 for i in range(100)]  # -3 .. 3, interleaved
        with tempfile.TemporaryDirectory() as tmp, Node(workers=1) as node:
            self.assertEqual(self.submit_held(node, tmp, priorities), expected_order(priorities))

    def test_a_peer_runs_the_jobs_it_is_given_in_priority_order(self):
        secret = "priority-peer-secret"
        priorities = [(i * 5) % 4 for i in range(30)]
        peer = Node("--peer-listen", "127.0.0.1:0", workers=1, env={"PPGATE_SECRET": secret})
        with tempfile.TemporaryDirectory() as tmp, peer:
            peer.token = secret
            head = Node("--peers", "127.0.0.1:%d" % peer.peer_port, "--peer-inflight", "1", workers=0,
                        env={"PPGATE_SECRET": secret})
            with head:
                head.token = secret
                head.wait_until(lambda: any(n["connected"] for n in head.request("GET", "/v1/nodes")[1]["nodes"]
                                            if n["kind"] == "remote"), what="the peer link")
                self.assertEqual(self.submit_held(head, tmp, priorities), expected_order(priorities))

    def test_the_python_client_sends_priorities(self):
        priorities = [0, 5, 1, 5, -2, 9]
        with tempfile.TemporaryDirectory() as tmp, pp.Server(1) as server:
            release, marks = os.path.join(tmp, "release"), os.path.join(tmp, "marks")
            started = os.path.join(tmp, "started")
            held = server.submit(hold, (release, started))
            deadline = time.monotonic() + 30
            while not os.path.exists(started) and time.monotonic() < deadline:
                time.sleep(0.01)
            jobs = [server.submit(mark, (marks, tag), priority=p) for tag, p in enumerate(priorities)]
            # The client's writer thread may still be sending the last ones: priorities order
            # what is queued together, so the holding job ends once all six are on the node.
            while server._request("GET", "/v1/stats")["jobs"]["queued"] < len(priorities):
                self.assertLess(time.monotonic(), deadline, "the jobs did not all reach the node")
                time.sleep(0.01)
            open(release, "w").close()
            self.assertTrue(held())
            self.assertEqual([job() for job in jobs], list(range(len(priorities))))
            self.assertEqual([int(line) for line in read_lines(marks)], expected_order(priorities))


CLIENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "clients", "python")

# A first process: submits to the node, detached and not, prints the ids and exits at once.
SUBMITTER = """
import json, os, sys
sys.path[:0] = [%(clients)r, %(here)r]
import ppgate as pp
from client_helpers import hold, nap
server = pp.Server(url=sys.argv[1], token=sys.argv[2])
release = sys.argv[3]
detached = [server.submit(nap, (0.01 * i,), group="batch-7", detach=True) for i in range(5)]
held = server.submit(hold, (release,), group="batch-7", detach=True)
plain = server.submit(hold, (release,), group="plain")
print(json.dumps({"detached": [j.id for j in detached], "held": held.id, "plain": plain.id}))
sys.stdout.flush()
# The script ends: the Server closes its connection at exit.
"""


class TestDetachedJobs(unittest.TestCase):
    def test_a_second_process_collects_the_detached_jobs_of_a_first_that_exited(self):
        secret = "detach-test-secret"
        with tempfile.TemporaryDirectory() as tmp, Node(workers=2, env={"PPGATE_SECRET": secret}) as node:
            node.token = secret
            url = "http://127.0.0.1:%d" % node.port
            release = os.path.join(tmp, "release")
            script = os.path.join(tmp, "submit.py")
            with open(script, "w") as f:
                f.write(SUBMITTER % {"clients": CLIENTS_DIR, "here": HERE})
            done = subprocess.run([sys.executable, script, url, secret, release], capture_output=True,
                                  text=True, timeout=60)
            self.assertEqual(done.returncode, 0, done.stderr)
            ids = json.loads(done.stdout)
            # Known at submit time, in the range clients choose from.
            for job_id in ids["detached"] + [ids["held"], ids["plain"]]:
                self.assertGreaterEqual(job_id, 1 << 32)
            # The session is gone: its plain job was cancelled, the detached ones live on.
            node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % ids["plain"])[1]["status"] == "cancelled",
                            what="the plain job cancelled")
            status, held, _ = node.request("GET", "/v1/jobs/%d" % ids["held"])
            self.assertIn(held["status"], ("queued", "running"))
            self.assertTrue(held["detached"])
            open(release, "w").close()
            with pp.Server(url=url, token=secret) as server:
                self.assertEqual([server.job(i)(timeout=60) for i in ids["detached"]],
                                 [0.01 * i for i in range(5)])
                self.assertTrue(server.job(ids["held"])(timeout=60))
                group = server.group("batch-7")
                self.assertEqual([j.id for j in group], ids["detached"] + [ids["held"]])
                self.assertEqual([j(timeout=60) for j in group][:5], [0.01 * i for i in range(5)])
                with self.assertRaises(pp.JobError) as cancelled:
                    server.job(ids["plain"])(timeout=60)
                self.assertEqual(cancelled.exception.type, "Cancelled")
                with self.assertRaises(pp.JobLostError):
                    server.job(12345678)

    def test_the_job_listing_filters_and_pages(self):
        with Node(workers=1) as node:
            batch = [{"source": "def f(x):\n    return x\n", "function": "f", "args": [i],
                      "group": "odd" if i % 2 else "even"} for i in range(25)]
            batch.append({"source": "def g():\n    raise ValueError('no')\n", "function": "g", "group": "odd"})
            status, data, _ = node.request("POST", "/v1/jobs?wait=60", batch)
            self.assertEqual(status, 200, data)
            ids = [j["id"] for j in data["jobs"]]
            status, page, _ = node.request("GET", "/v1/jobs?group=odd&limit=5")
            self.assertEqual(status, 200)
            self.assertEqual([j["id"] for j in page["jobs"]], ids[1:10:2])
            self.assertNotIn("result", page["jobs"][0])  # summaries: results are at /v1/jobs/{id}
            seen = [j["id"] for j in page["jobs"]]
            while "next_after" in page:
                page = node.request("GET", "/v1/jobs?group=odd&limit=5&after=%d" % page["next_after"])[1]
                seen += [j["id"] for j in page["jobs"]]
            self.assertEqual(seen, ids[1:25:2] + [ids[25]])
            failed = node.request("GET", "/v1/jobs?status=failed")[1]["jobs"]
            self.assertEqual([j["id"] for j in failed], [ids[25]])
            spaced = node.request("POST", "/v1/jobs", {"source": "def f():\n    return 1\n", "function": "f",
                                                       "group": "a b/c"})[1]
            listed = node.request("GET", "/v1/jobs?group=a+b%2Fc")[1]["jobs"]
            self.assertEqual([j["id"] for j in listed], [spaced["id"]])
            for query, fragment in (("status=sleeping", "status"), ("limit=0", "limit"), ("after=x", "after"),
                                    ("group=%zz", "group")):
                status, err, _ = node.request("GET", "/v1/jobs?" + query)
                self.assertEqual(status, 400, query)
                self.assertIn(fragment, err["error"]["message"], query)

    def test_a_chosen_id_is_kept_and_a_taken_one_refused(self):
        with Node(workers=1) as node:
            job_id = (1 << 40) + 7
            job = node.run("def f():\n    return 1\n", "f", id=job_id)
            self.assertEqual(job["id"], job_id)
            status, err, _ = node.request("POST", "/v1/jobs", {"source": "def f():\n    return 1\n",
                                                               "function": "f", "id": job_id})
            self.assertEqual(status, 409)
            self.assertIn("already in use", err["error"]["message"])
            for bad in (5, 1 << 53, -1, "x"):
                status, err, _ = node.request("POST", "/v1/jobs", {"source": "def f():\n    return 1\n",
                                                                   "function": "f", "id": bad})
                self.assertEqual(status, 400, bad)


class TestOperatorMetrics(unittest.TestCase):
    def test_metrics_are_read_by_the_prometheus_parser(self):
        with Node(workers=1) as node:
            node.run("def f():\n    return 1\n", "f")
            node.run("import time\ndef nap():\n    time.sleep(0.03)\n", "nap")
            samples = prometheus_samples(node.request("GET", "/metrics")[1])
            self.assertEqual(metric(samples, "ppgate_jobs_ended_total", state="done"), 2)
            for reason in ("died", "timeout", "cancelled", "max_jobs", "memory", "job_state", "protocol"):
                self.assertEqual(metric(samples, "ppgate_worker_restarts_total", reason=reason), 0)
            info = [(labels, v) for n, labels, v, _ in samples if n == "ppgate_build_info"]
            self.assertEqual(len(info), 1)
            self.assertEqual(info[0][1], 1)
            version = subprocess.run([os.environ.get("PPGATE_BINARY", "ppgate"), "--version"], capture_output=True,
                                     text=True, timeout=30).stdout.split()[1]
            python = node.request("GET", "/v1/nodes")[1]["nodes"][0]["python"]
            self.assertEqual(info[0][0], {"version": version, "python": python})
            # The run-time histogram: both runs, the nap in the bucket past 25 ms.
            self.assertEqual(metric(samples, "ppgate_job_run_seconds_count"), 2)
            self.assertGreaterEqual(metric(samples, "ppgate_job_run_seconds_sum"), 0.03)
            self.assertEqual(metric(samples, "ppgate_job_run_seconds_bucket", le="0.025"), 1)
            self.assertEqual(metric(samples, "ppgate_job_run_seconds_bucket", le="+Inf"), 2)
            # The standard process metrics describe the node's own process.
            rss = metric(samples, "process_resident_memory_bytes")
            self.assertGreater(rss, 1 << 20)
            self.assertLess(abs(rss - rss_bytes(node.proc.pid)), 64 << 20)
            started = metric(samples, "process_start_time_seconds")
            self.assertLessEqual(started, time.time() + 1)
            self.assertGreater(started, time.time() - 300)
            # The node's CPU time as the kernel counts it, read after the metrics were made.
            with open("/proc/%d/stat" % node.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu_after = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            self.assertGreaterEqual(metric(samples, "process_cpu_seconds_total"), 0)
            self.assertLessEqual(metric(samples, "process_cpu_seconds_total"), cpu_after)
            self.assertGreater(metric(samples, "process_open_fds"), 3)
            kinds = {n: k for n, _, _, k in samples}
            self.assertEqual(kinds["process_cpu_seconds_total"], "counter")
            self.assertEqual(kinds["ppgate_job_run_seconds_bucket"], "histogram")

    def test_peer_link_counters(self):
        secret, wrong = "metrics-peer-secret", "another-cluster-secret"
        peer = Node("--peer-listen", "127.0.0.1:0", workers=1, env={"PPGATE_SECRET": secret})
        with peer:
            peer.token = secret
            port = peer.peer_port
            head = Node("--peers", "127.0.0.1:%d" % port, "--peer-heartbeat", "0.2", workers=0,
                        env={"PPGATE_SECRET": secret})
            with head:
                head.token = secret

                def head_metric(name, **labels):
                    return metric(prometheus_samples(head.request("GET", "/metrics")[1]), name, **labels)

                head.wait_until(lambda: head_metric("ppgate_peer_links_up", role="node") == 1, what="the link")
                self.assertEqual(head_metric("ppgate_peer_links_established_total"), 1)
                self.assertEqual(head_metric("ppgate_peer_reconnects_total"), 0)
                # The peer restarts on its port: the head links again, and counts a reconnect.
                peer.stop()
                head.wait_until(lambda: head_metric("ppgate_peer_links_up", role="node") == 0, what="the loss")
                peer.args[peer.args.index("--peer-listen") + 1] = "127.0.0.1:%d" % port
                peer.start()
                peer.token = secret
                head.wait_until(lambda: head_metric("ppgate_peer_reconnects_total") == 1, timeout=30,
                                what="the reconnect")
                self.assertEqual(head_metric("ppgate_peer_links_up", role="node"), 1)
                self.assertEqual(head_metric("ppgate_peer_links_established_total"), 2)
            # A node with the wrong secret: both sides count the failed handshake.
            stranger = Node("--peers", "127.0.0.1:%d" % port, workers=0, env={"PPGATE_SECRET": wrong})
            with stranger:
                stranger.token = wrong
                stranger.wait_until(lambda: metric(prometheus_samples(stranger.request("GET", "/metrics")[1]),
                                                   "ppgate_peer_auth_failures_total") >= 1, what="the refusal")
                peer.wait_until(lambda: metric(prometheus_samples(peer.request("GET", "/metrics")[1]),
                                               "ppgate_peer_auth_failures_total") >= 1, what="the refusal")


if __name__ == "__main__":
    unittest.main()
