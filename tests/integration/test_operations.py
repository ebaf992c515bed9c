"""Running a node for real (docs/cli.md): worker memory caps and recycling, retries, priorities,
and what an operator watches (/metrics read with the Prometheus client's own parser)."""

import json
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "clients", "python"))

from harness import Node  # noqa: E402

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


class TestOperatorMetrics(unittest.TestCase):
    def test_metrics_are_read_by_the_prometheus_parser(self):
        with Node(workers=1) as node:
            node.run("def f():\n    return 1\n", "f")
            samples = prometheus_samples(node.request("GET", "/metrics")[1])
            self.assertEqual(metric(samples, "ppgate_jobs_ended_total", state="done"), 1)
            for reason in ("died", "timeout", "cancelled", "max_jobs", "memory", "job_state", "protocol"):
                self.assertEqual(metric(samples, "ppgate_worker_restarts_total", reason=reason), 0)


if __name__ == "__main__":
    unittest.main()
