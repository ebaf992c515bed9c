"""Discovery of peers on a local network: two network namespaces joined by a veth link stand in
for two hosts (this needs root, as the CI has). Only the namespaces' own addresses are used."""

import json
import os
import subprocess
import time
import unittest

from harness import ppgate_binary

NS_A, NS_B = "ppgtest-a", "ppgtest-b"
ADDR_A, ADDR_B = "10.231.7.1", "10.231.7.2"
SECRET = "discovery-cluster-secret"


def sh(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def remove_namespaces():
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


class NsNode:
    """A ppgate node inside a namespace; its HTTP API is on the namespace's loopback."""

    def __init__(self, ns, *args, secret=SECRET):
        self.ns, self.secret = ns, secret
        env = dict(os.environ, PPGATE_SECRET=secret)
        self.log = open(os.devnull, "w")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, ppgate_binary(), "serve",
                                      "--listen", "127.0.0.1:0", "--log-level", "info"] + list(args),
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ppgate listening on http://127.0.0.1:"):
            self.stop()
            raise RuntimeError("the node in %s did not start: %r" % (ns, line))
        self.port = int(line.strip().rsplit(":", 1)[1])

    def get(self, path, body=None):
        cmd = ["ip", "netns", "exec", self.ns, "curl", "-s", "-m", "20",
               "-H", "Authorization: Bearer " + self.secret, "http://127.0.0.1:%d%s" % (self.port, path)]
        if body is not None:
            cmd += ["-d", json.dumps(body)]
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout)

    def remote(self):
        return [n for n in self.get("/v1/nodes")["nodes"] if n["kind"] == "remote"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self.log.close()


def wait_until(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


class TestDiscovery(unittest.TestCase):
    def setUp(self):
        self.assertEqual(os.geteuid(), 0, "discovery is tested in network namespaces: run the tests as root")
        remove_namespaces()
        self.addCleanup(remove_namespaces)
        sh("ip", "netns", "add", NS_A)
        sh("ip", "netns", "add", NS_B)
        sh("ip", "link", "add", "ppgt-va", "netns", NS_A, "type", "veth", "peer", "name", "ppgt-vb",
           "netns", NS_B)
        for ns, dev, addr in ((NS_A, "ppgt-va", ADDR_A), (NS_B, "ppgt-vb", ADDR_B)):
            sh("ip", "-n", ns, "addr", "add", addr + "/24", "brd", "+", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.nodes = []

    def tearDown(self):
        for node in self.nodes:
            node.stop()

    def start(self, *args, **kw):
        node = NsNode(*args, **kw)
        self.nodes.append(node)
        return node

    def test_a_node_is_found_and_used_only_once_it_proves_the_secret(self):
        a = self.start(NS_A, "--peer-listen", ADDR_A + ":7000", "--discover", "--workers", "1",
                       "--cluster", "lab")
        b = self.start(NS_B, "--discover", "--workers", "0", "--cluster", "lab")
        other_cluster = self.start(NS_B, "--discover", "--workers", "0", "--cluster", "elsewhere")
        impostor = self.start(NS_B, "--discover", "--workers", "0", "--cluster", "lab",
                              secret="not-the-cluster-secret")
        name = ADDR_A + ":7000"
        wait_until(lambda: [n["name"] for n in b.remote() if n["connected"]] == [name], "b to find a")
        job = b.get("/v1/jobs?wait=30", {"source": "def sq(x):\n    return x*x\n", "function": "sq", "args": [9]})
        self.assertEqual((job["status"], job["result"], job["node"]), ("done", 81, name))
        # The impostor hears a too, but a refuses it: it never gets a slot there.
        wait_until(lambda: any("secret" in n["last_error"] for n in impostor.remote()), "the impostor's refusal")
        self.assertFalse(any(n["connected"] for n in impostor.remote()))
        # A node of another cluster ignores a's announcements.
        self.assertEqual(other_cluster.remote(), [])


if __name__ == "__main__":
    unittest.main()
