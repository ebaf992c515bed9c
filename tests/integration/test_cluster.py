"""Clusters (docs/clusters.md): nodes that join a head (ppgate serve --join) and the jobs the
head runs on them, through kill -9, a head that restarts, a wrong secret and 16 nodes; and the
drain on SIGTERM, with and without other nodes to take the rest."""

import os
import re
import signal
import socket
import sys
import threading
import time
import unittest
from collections import Counter

from harness import ROOT, Node, run_ppgate
from test_peers import HELLO, REFUSED, SECRET, VERSION, read_message, remote_nodes, send_message, submit_all

sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import ppgate as pp  # noqa: E402

WAIT = 60


def joining_node(head, *extra, workers=1, secret=SECRET, port=None):
    node = Node("--join", "127.0.0.1:%d" % (port or head.peer_port), "--peer-heartbeat", "0.2", *extra,
                workers=workers, env={"PPGATE_SECRET": secret})
    node.token = secret
    return node


def joined(head):
    return [n for n in remote_nodes(head) if n["joined"]]


def wait_joined(head, count, timeout=30):
    head.wait_until(lambda: sum(n["connected"] for n in joined(head)) == count, timeout,
                    "%d joined nodes" % count)


def head_node(*extra, workers=0, port=0):
    """A head: a node with a peer port (`port`: a given one, to restart a head on it)."""
    node = Node("--peer-listen", "127.0.0.1:%d" % port, "--peer-heartbeat", "0.2", *extra,
                workers=workers, env={"PPGATE_SECRET": SECRET})
    node.token = SECRET
    return node


class TestJoin(unittest.TestCase):
    def test_three_nodes_join_a_head_and_run_its_jobs(self):
        with head_node() as head, joining_node(head) as a, joining_node(head) as b, joining_node(head) as c:
            wait_joined(head, 3)
            names = {n["name"] for n in joined(head)}
            self.assertEqual(len(names), 3)
            status, jobs = submit_all(head, 150)
            self.assertEqual(status, 200)
            self.assertEqual([j["result"] for j in jobs], [i * i for i in range(150)])
            self.assertEqual(set(Counter(j["node"] for j in jobs)), names)  # the head has no workers
            status, table, _ = head.request("GET", "/v1/stats", headers={"Accept": "text/plain"})
            for name in names:
                self.assertIn("| " + name + "\n", table)
            # A joined node's capacity follows its pool.
            a.request("PUT", "/v1/workers", {"count": 2})
            head.wait_until(lambda: sorted(n["slots"] for n in joined(head)) == [1, 1, 2], what="capacity 2")
            self.assertIn("joined head 127.0.0.1:%d" % head.peer_port, a.log_text())

    def test_kill_9_of_a_joined_node_mid_run_loses_no_job(self):
        with head_node() as head, joining_node(head) as a, joining_node(head) as b:
            wait_joined(head, 2)
            result = {}
            runner = threading.Thread(target=lambda: result.update(zip(("status", "jobs"), submit_all(head, 500))))
            runner.start()
            head.wait_until(lambda: head.request("GET", "/v1/stats")[1]["jobs"]["done"] >= 50, what="50 jobs done")
            b.proc.send_signal(signal.SIGKILL)
            runner.join(120)
            self.assertFalse(runner.is_alive())
            jobs = result["jobs"]
            self.assertEqual(len({j["id"] for j in jobs}), 500)  # each result once
            self.assertEqual([j["status"] for j in jobs], ["done"] * 500)
            self.assertEqual([j["result"] for j in jobs], [i * i for i in range(500)])
            self.assertEqual(len({j["node"] for j in jobs}), 2)  # both ran some
            self.assertEqual(sorted(n["connected"] for n in joined(head)), [False, True])

    def test_a_restarted_head_gets_its_joined_nodes_back(self):
        first = head_node()
        first.start()
        port = first.peer_port
        try:
            with joining_node(first) as a, joining_node(first) as b:
                wait_joined(first, 2)
                self.assertEqual(first.stop(), 0)
                with head_node(port=port) as second:
                    wait_joined(second, 2)  # nobody told them: they joined again
                    status, jobs = submit_all(second, 60)
                    self.assertEqual([j["result"] for j in jobs], [i * i for i in range(60)])
                for node in (a, b):
                    self.assertIn("joining again", node.log_text())
        finally:
            first.kill()

    def test_a_node_with_the_wrong_secret_is_refused_and_both_sides_say_so(self):
        with head_node(workers=1) as head, joining_node(head, secret="not-the-cluster-secret") as stranger:
            head.wait_until(lambda: "authentication failed" in head.log_text(), what="the head's refusal")
            stranger.wait_until(lambda: "authentication failed" in stranger.log_text(), what="the node's refusal")
            self.assertEqual(joined(head), [])
            status, jobs = submit_all(head, 5)  # the head runs its jobs itself
            self.assertEqual({j["node"] for j in jobs}, {"local"})

    def test_a_hello_with_an_unknown_mode_is_refused(self):
        with head_node() as head:
            with socket.create_connection(("127.0.0.1", head.peer_port), timeout=10) as sock:
                send_message(sock, HELLO, b"PPGATE %d %s me leave" % (VERSION, os.urandom(32).hex().encode()))
                self.assertEqual(read_message(sock), (REFUSED, b"not a ppgate peer"))

    def test_joining_without_a_secret_is_a_usage_error(self):
        result = run_ppgate("serve", "--join", "127.0.0.1:1")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("secret", result.stderr)


class TestScale(unittest.TestCase):
    def test_a_head_with_16_joined_one_worker_nodes(self):
        with head_node() as head:
            nodes = [joining_node(head) for _ in range(16)]
            try:
                for node in nodes:
                    node.start()
                wait_joined(head, 16, timeout=60)
                self.assertEqual(len(head.request("GET", "/v1/nodes")[1]["nodes"]), 17)
                status, jobs = submit_all(head, 1000, wait=120)
                self.assertEqual(status, 200)
                self.assertEqual([j["result"] for j in jobs], [i * i for i in range(1000)])
                self.assertEqual(len({j["node"] for j in jobs}), 16)  # every node ran some
                self.assertEqual(head.request("GET", "/v1/workers")[1]["count"], 0)
                status, stats, _ = head.request("GET", "/v1/stats")
                self.assertEqual(stats["ncpus"], 16)  # pp's ncpus: the joined nodes' slots
            finally:
                for node in nodes:
                    node.stop()


SLEEPER = "import time\ndef sleeper(x, seconds):\n    time.sleep(seconds)\n    return x\n"


def sleepers(n, seconds):
    return [{"source": SLEEPER, "function": "sleeper", "args": [i, seconds]} for i in range(n)]


def drained_counts(node):
    """(finished, handed back, lost) from the node's closing line "drained: ..."."""
    match = re.search(r"drained: (\d+) jobs finished, (\d+) handed back, (\d+) lost", node.log_text())
    if match is None:
        raise AssertionError("no 'drained:' line in the log: " + node.log_text()[-2000:])
    return tuple(int(g) for g in match.groups())


def catches_sigterm(pid):
    with open("/proc/%d/status" % pid) as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def in_background(call):
    """Runs call() on a thread; returns (thread, dict that gets its result as "value")."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(value=call()))
    thread.start()
    return thread, out


class TestDrain(unittest.TestCase):
    def test_running_jobs_finish_and_the_ones_not_started_end_lost(self):
        node = Node("--drain-timeout", "30", workers=2)
        with node:
            runner, out = in_background(lambda: node.request("POST", "/v1/jobs?wait=60", sleepers(200, 0.05)))
            node.wait_until(lambda: node.request("GET", "/v1/stats")[1]["jobs"]["done"] >= 10, what="10 jobs done")
            node.proc.send_signal(signal.SIGTERM)
            runner.join(60)
            self.assertFalse(runner.is_alive())
            status, data, _ = out["value"]
            jobs = data["jobs"]
            self.assertEqual(len({j["id"] for j in jobs}), 200)  # each job ends once
            by_status = Counter(j["status"] for j in jobs)
            self.assertEqual(set(by_status), {"done", "lost"})
            for j in jobs:
                if j["status"] == "done":
                    self.assertEqual(j["result"], j["id"] - jobs[0]["id"])
                else:
                    self.assertEqual(j["error"]["type"], "NodeStopped")
                    self.assertIn("had not started", j["error"]["message"])
            self.assertEqual(node.proc.wait(30), 0)
            finished, handed_back, lost = drained_counts(node)
            self.assertEqual((handed_back, lost), (0, by_status["lost"]))
            self.assertLessEqual(finished, 2 * 8)  # at most what the two workers held then
            self.assertGreaterEqual(by_status["done"], 10)

    def test_the_python_client_is_told_how_each_job_ended(self):
        with Node("--drain-timeout", "10", workers=1, env={"PPGATE_SECRET": SECRET}) as node:
            with pp.Server(url="http://127.0.0.1:%d" % node.port, token=SECRET) as server:
                jobs = [server.submit(time.sleep, (0.5,)) for _ in range(4)]
                # All four on the node (the client sends the last three as one batch, maybe after
                # the first has started), the first running.
                node.wait_until(lambda: (lambda counts: (counts["running"], counts["queued"]) == (1, 3))(
                                    node.request("GET", "/v1/stats", headers={"Authorization": "Bearer " + SECRET})
                                    [1]["jobs"]), what="the first job to run, the others queued")
                node.proc.send_signal(signal.SIGTERM)
                node.wait_until(lambda: "draining" in node.log_text(), what="the drain")
                late = server.submit(time.sleep, (0.1,))
                self.assertIsNone(jobs[0](timeout=WAIT))
                for job in jobs[1:]:
                    with self.assertRaisesRegex(pp.JobLostError, "had not started"):
                        job(timeout=WAIT)
                with self.assertRaisesRegex(pp.SubmitError, "draining"):
                    late(timeout=WAIT)
            self.assertEqual(node.proc.wait(30), 0)
            self.assertEqual(drained_counts(node), (1, 0, 3))

    def test_new_jobs_are_refused_while_running_ones_finish(self):
        with Node(workers=1) as node:
            status, job, _ = node.request("POST", "/v1/jobs", sleepers(1, 1.5)[0])
            node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % job["id"])[1]["status"] == "running",
                            what="the job to start")
            node.proc.send_signal(signal.SIGTERM)
            node.wait_until(lambda: "draining" in node.log_text(), what="the drain")
            status, refused, _ = node.request("POST", "/v1/jobs", sleepers(1, 0)[0])
            self.assertEqual(status, 503)
            self.assertIn("draining", refused["error"]["message"])
            status, done, _ = node.request("GET", "/v1/jobs/%d?wait=10" % job["id"])
            self.assertEqual((done["status"], done["result"]), ("done", 0))
            self.assertEqual(node.proc.wait(30), 0)
            self.assertEqual(drained_counts(node), (1, 0, 0))

    def test_the_drain_timeout_and_a_second_sigterm_end_running_jobs_lost(self):
        for second_signal in (False, True):
            with Node("--drain-timeout", "60" if second_signal else "0.5", workers=1) as node:
                status, job, _ = node.request("POST", "/v1/jobs", sleepers(1, 60)[0])
                node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % job["id"])[1]["status"] == "running",
                                what="the job to start")
                runner, out = in_background(lambda: node.request("GET", "/v1/jobs/%d?wait=30" % job["id"]))
                node.proc.send_signal(signal.SIGTERM)
                if second_signal:
                    node.wait_until(lambda: "draining" in node.log_text(), what="the drain")
                    node.proc.send_signal(signal.SIGTERM)
                self.assertEqual(node.proc.wait(20), 0)
                runner.join(10)
                status, lost, _ = out["value"]
                self.assertEqual((lost["status"], lost["error"]["type"]), ("lost", "NodeStopped"))
                self.assertIn("second SIGTERM" if second_signal else "drain timeout", lost["error"]["message"])
                self.assertEqual(drained_counts(node), (0, 0, 1))

    def test_a_sigterm_to_every_process_as_batch_systems_send_it_still_drains(self):
        # Slurm signals the whole process tree of a job: the workers let it pass to the node.
        with Node(workers=1) as node:
            # (A worker still starting its interpreter has not set its handler yet.)
            workers = [w["pid"] for w in node.request("GET", "/v1/nodes")[1]["nodes"][0]["workers"]]
            node.wait_until(lambda: all(catches_sigterm(pid) for pid in workers), what="the worker's handler")
            status, job, _ = node.request("POST", "/v1/jobs", sleepers(1, 1.5)[0])
            node.wait_until(lambda: node.request("GET", "/v1/jobs/%d" % job["id"])[1]["status"] == "running",
                            what="the job to start")
            runner, out = in_background(lambda: node.request("GET", "/v1/jobs/%d?wait=20" % job["id"]))
            for pid in workers + [node.proc.pid]:
                os.kill(pid, signal.SIGTERM)
            self.assertEqual(node.proc.wait(30), 0)
            runner.join(10)
            self.assertEqual(out["value"][1]["status"], "done", out["value"][1])
            self.assertEqual(drained_counts(node), (1, 0, 0))

    def test_a_joined_node_gives_its_queued_jobs_back_to_its_head(self):
        with head_node() as head, joining_node(head) as a, joining_node(head) as b:
            wait_joined(head, 2)
            # a's worker is busy with a job of its own client; the head's jobs wait behind it there.
            status, own, _ = a.request("POST", "/v1/jobs", sleepers(1, 2)[0])
            a.wait_until(lambda: a.request("GET", "/v1/jobs/%d" % own["id"])[1]["status"] == "running",
                         what="a's own job to start")
            runner, out = in_background(lambda: head.request("POST", "/v1/jobs?wait=60", sleepers(300, 0)))
            a.wait_until(lambda: a.request("GET", "/v1/stats")[1]["jobs"]["queued"] >= 1,
                         what="the head's jobs queued on a")
            a.proc.send_signal(signal.SIGTERM)
            runner.join(60)
            self.assertFalse(runner.is_alive())
            jobs = out["value"][1]["jobs"]
            self.assertEqual(len({j["id"] for j in jobs}), 300)
            self.assertEqual([j["status"] for j in jobs], ["done"] * 300)
            self.assertEqual([j["result"] for j in jobs], list(range(300)))
            self.assertEqual(a.proc.wait(30), 0)
            finished, handed_back, lost = drained_counts(a)
            self.assertGreaterEqual(handed_back, 1)
            self.assertEqual(lost, 0)
            self.assertGreaterEqual(finished, 1)  # its own job, at least
            self.assertIn("handed back", a.log_text())
            b_name = next(n["name"] for n in joined(head) if n["connected"])
            self.assertGreaterEqual(Counter(j["node"] for j in jobs)[b_name], handed_back)


if __name__ == "__main__":
    unittest.main()
