"""Clusters (docs/clusters.md): nodes that join a head (ppgate serve --join) and the jobs the
head runs on them, through kill -9, a head that restarts, and a wrong secret."""

import os
import signal
import socket
import threading
import unittest
from collections import Counter

from harness import Node, run_ppgate
from test_peers import HELLO, REFUSED, SECRET, VERSION, read_message, remote_nodes, send_message, submit_all


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


if __name__ == "__main__":
    unittest.main()
