"""Clients and would-be peers that misbehave cost the node neither its memory nor its service.

Regression tests from the hardening issue: what each case broke before is in its docstring.
"""

import os
import socket
import struct
import time
import unittest

from harness import Node

SECRET = "cluster-secret-for-tests"
SQ = "def sq(x):\n    return x*x\n"


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def peer_node():
    node = Node("--peer-listen", "127.0.0.1:0", workers=1, env={"PPGATE_SECRET": SECRET})
    node.token = SECRET
    return node


class TestPeerPortBeforeAuthentication(unittest.TestCase):
    def test_large_frames_before_the_handshake_are_refused_unread(self):
        """Before: the peer port accepted frames up to 256 MiB before the handshake (6 connections
        took the node to 1.16 GB)."""
        with peer_node() as node:
            before = rss_bytes(node.proc.pid)
            conns = []
            try:
                for _ in range(6):
                    s = socket.create_connection(("127.0.0.1", node.peer_port), timeout=10)
                    conns.append(s)
                    s.sendall(struct.pack("<I", 200 * 1024 * 1024) + b"\x01" + b"x" * (4 * 1024 * 1024))
            except OSError:
                pass  # the node may close a connection while it is being written to: that is the point
            for s in conns:
                s.settimeout(10)
                try:
                    while s.recv(65536):
                        pass  # the refusal, then EOF
                except OSError:
                    pass
                s.close()
            self.assertLess(rss_bytes(node.proc.pid) - before, 64 * 1024 * 1024)
            self.assertEqual(node.run(SQ, "sq", [7])["result"], 49)

    def test_idle_connections_to_the_peer_port_do_not_starve_rest_clients(self):
        """Before: 1,100 idle peer connections exhausted the node's descriptors and starved REST
        clients."""
        with peer_node() as node:
            idle = []
            try:
                for _ in range(300):
                    idle.append(socket.create_connection(("127.0.0.1", node.peer_port), timeout=10))
                for i in range(5):
                    self.assertEqual(node.run(SQ, "sq", [i])["result"], i * i)
                # The node closed every connection past its cap of handshakes at once.
                closed = 0
                for s in idle[100:]:
                    s.settimeout(5)
                    try:
                        closed += s.recv(1) == b""
                    except OSError:
                        closed += 1
                self.assertEqual(closed, 200)
                fds = len(os.listdir("/proc/%d/fd" % node.proc.pid))
                self.assertLess(fds, 150)
            finally:
                for s in idle:
                    s.close()


if __name__ == "__main__":
    unittest.main()
