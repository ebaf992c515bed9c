"""Starts real ppgate processes for the integration tests and talks HTTP to them.

Every wait here has a bound: a node that does not come up, answer or stop in time fails the
test instead of hanging it.
"""

import atexit
import http.client
import json
import os
import select
import signal
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def ppgate_binary():
    env = os.environ.get("PPGATE_BINARY")
    if env:
        return env
    return os.path.join(ROOT, "build", "gateway", "ppgate")


START_TIMEOUT = 20.0
_live_nodes = set()


@atexit.register
def _kill_leftover_nodes():
    # A test that dies between start() and stop() must not leave a node (and its workers) behind.
    for node in list(_live_nodes):
        node.kill()
REQUEST_TIMEOUT = 60.0


class Node:
    """A `ppgate serve` child listening on a free loopback port."""

    def __init__(self, *args, env=None, workers=2, pass_fds=()):
        self.args = ["serve", "--listen", "127.0.0.1:0", "--workers", str(workers)] + list(args)
        self.env = dict(os.environ)
        self.env.pop("PPGATE_SECRET", None)
        if env:
            self.env.update(env)
        self.pass_fds = tuple(pass_fds)  # descriptors the node inherits (--adopt-from)
        self.proc = None
        self.port = None
        self.token = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        # The node's log goes to a file: a pipe nobody reads could fill up and stall the node.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [ppgate_binary()] + self.args, stdout=subprocess.PIPE, stderr=self.log, env=self.env,
            pass_fds=self.pass_fds)
        line = self.read_stdout_line(START_TIMEOUT)
        if not line.startswith("ppgate listening on http://127.0.0.1:"):
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            log = self.log_text()
            self.kill()
            raise RuntimeError("ppgate did not start: %r %r" % (line, log))
        self.port = int(line.rsplit(":", 1)[1])
        _live_nodes.add(self)
        self.peer_port = None
        if "--peer-listen" in self.args:
            line = self.read_stdout_line(START_TIMEOUT)
            if not line.startswith("ppgate accepting peers on 127.0.0.1:"):
                self.kill()
                raise RuntimeError("ppgate did not accept peers: %r %r" % (line, self.log_text()))
            self.peer_port = int(line.split()[4].rsplit(":", 1)[1])

    def log_text(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def read_stdout_line(self, timeout):
        """One line of the node's standard output, or '' when none comes within `timeout`."""
        deadline = time.monotonic() + timeout
        data = b""
        fd = self.proc.stdout.fileno()
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 1)
            if not chunk:
                break
            data += chunk
        return data.decode().rstrip("\n")

    def stop(self, timeout=15.0, sig=signal.SIGINT):
        """SIGINT (stop at once; SIGTERM drains), then wait; SIGKILL if it does not stop in
        time. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("ppgate did not stop within %s s of signal %d" % (timeout, sig))
        finally:
            self.close_files()

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.close_files()

    def close_files(self):
        _live_nodes.discard(self)
        self.proc.stdout.close()
        self.log.close()

    # --- HTTP ---

    def connection(self, timeout=REQUEST_TIMEOUT):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None):
        """Returns (status, parsed JSON or text, response headers)."""
        own = conn is None
        conn = conn or self.connection()
        hdrs = {}
        if self.token:
            hdrs["Authorization"] = "Bearer " + self.token
        if headers:
            hdrs.update(headers)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            res = conn.getresponse()
            raw = res.read()
            ctype = res.getheader("Content-Type", "")
            data = json.loads(raw) if ctype.startswith("application/json") else raw.decode()
            return res.status, data, res
        finally:
            if own:
                conn.close()

    def run(self, source, function, args=(), wait=30, **fields):
        """Submits one job with ?wait and returns the job JSON (asserting the answer is 200)."""
        body = dict(source=source, function=function, args=list(args), **fields)
        status, data, _ = self.request("POST", "/v1/jobs?wait=%s" % wait, body)
        if status != 200:
            raise AssertionError("job did not finish: %s %r" % (status, data))
        return data

    def worker_pids(self):
        status, data, _ = self.request("GET", "/v1/nodes")
        assert status == 200, data
        return [w["pid"] for w in data["nodes"][0]["workers"] if w["pid"]]

    def wait_until(self, predicate, timeout=20.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError("timed out waiting for " + what)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:  # gone between the two looks
        return False


def rss_bytes(pid):
    """The resident memory of process `pid`."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def run_ppgate(*args, env=None, timeout=20):
    """Runs ppgate to completion (for --help and bad flags)."""
    e = dict(os.environ)
    e.pop("PPGATE_SECRET", None)
    if env:
        e.update(env)
    return subprocess.run([ppgate_binary()] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=e)
