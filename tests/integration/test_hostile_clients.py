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


def raw_request(port, head, body=b"", read_timeout=10):
    """Sends `head` (and `body`) on a fresh connection; returns the status line and the headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head.encode())
        try:
            s.sendall(body)
        except OSError:
            pass  # the node refused on the head and stopped reading: its answer is waiting
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


class TestHttpBeforeAuthentication(unittest.TestCase):
    def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(self):
        """Before: with a secret set, the node read whole bodies (up to 64 MiB) before answering 401:
        20 unauthenticated uploads took it from 7 MB to 1.2 GB."""
        with Node(workers=0, env={"PPGATE_SECRET": SECRET}) as node:
            before = rss_bytes(node.proc.pid)
            for _ in range(20):
                answer = raw_request(node.port, "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     "Content-Type: application/json\r\nContent-Length: 62914560\r\n\r\n",
                                     b"[" * (1024 * 1024))
                self.assertTrue(answer.startswith("HTTP/1.1 401"), answer[:200])
            self.assertLess(rss_bytes(node.proc.pid) - before, 32 * 1024 * 1024)
            node.token = SECRET
            self.assertEqual(node.request("GET", "/v1/workers")[0], 200)

    def test_ambiguous_hosts_and_foreign_origins_are_refused(self):
        """Before: 'Host: 127.0.0.1:P, evil.example', two Host headers and an Origin with another
        scheme were accepted."""
        with Node(workers=0) as node:
            body = '{"source":"def f():\\n    return 1\\n","function":"f"}'
            cases = [
                ("Host: 127.0.0.1:%d, evil.example\r\n" % node.port, "400"),
                ("Host: 127.0.0.1:%d\r\nHost: evil.example\r\n" % node.port, "400"),
                ("Host: 127.0.0.1:%d\r\nOrigin: https://127.0.0.1:%d\r\n" % (node.port, node.port), "403"),
                ("Host: 127.0.0.1:%d\r\nOrigin: http://127.0.0.1:%d\r\n" % (node.port, node.port), "202"),
            ]
            for headers, status in cases:
                with self.subTest(headers=headers):
                    answer = raw_request(node.port, "POST /v1/jobs HTTP/1.1\r\n%sContent-Type: application/json\r\n"
                                         "Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (headers, len(body), body))
                    self.assertTrue(answer.startswith("HTTP/1.1 " + status), answer[:300])


if __name__ == "__main__":
    unittest.main()
