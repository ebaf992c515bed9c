"""Finding the ppgate binary and running a private node for Server() without a url."""

from __future__ import annotations

import json
import os
import platform
import select
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import Sequence

_START_TIMEOUT = 30.0


def find_ppgate() -> str:
    """The ppgate executable: $PPGATE_BINARY, then PATH, then the build tree of this checkout."""
    env = os.environ.get("PPGATE_BINARY")
    if env:
        if not os.access(env, os.X_OK):
            raise FileNotFoundError("PPGATE_BINARY=%s is not an executable" % env)
        return env
    on_path = shutil.which("ppgate")
    if on_path:
        return on_path
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(here)))  # clients/python/ppgate -> root
    for build in ("build", "builddir"):
        candidate = os.path.join(checkout, build, "gateway", "ppgate")
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "cannot find the ppgate executable: put it on PATH, set PPGATE_BINARY, or build this "
        "checkout (meson setup build && ninja -C build)")


class PrivateNode:
    """A ppgate child on a random loopback port with a random token. It stops with stop(), and
    on its own when this process exits, however it exits (--parent-pid).

    Its workers run this very interpreter (sys.executable) with this process's sys.path and
    working directory, as pp's do: a job imports whatever the calling script can."""

    def __init__(self, ncpus: int | str = "autodetect", restart: bool = False,
                 ppservers: Sequence[str] = (), secret: str | None = None,
                 peer_listen: str | None = None) -> None:
        """`peer_listen`: a host to open a peer port on (port 0: one is picked, `peer_port`),
        where nodes join this one (a SlurmCluster's batch jobs)."""
        self.token = secrets.token_urlsafe(24)
        args = [find_ppgate(), "serve", "--listen", "127.0.0.1:0",
                "--workers", "auto" if ncpus == "autodetect" else str(ncpus),
                "--parent-pid", str(os.getpid()), "--log-level", "warn"]
        if sys.executable:
            # This interpreter runs: the node need not start one just to check it.
            args += ["--python", sys.executable, "--python-version", platform.python_version()]
        if restart:
            args.append("--restart")
        env = dict(os.environ, PPGATE_SECRET=self.token,
                   PPGATE_SYS_PATH=json.dumps([os.path.abspath(p) if p else os.getcwd() for p in sys.path]))
        if peer_listen is not None:
            args += ["--peer-listen", "%s:0" % peer_listen, "--peer-secret-env", "PPGATE_PEER_SECRET"]
            env["PPGATE_PEER_SECRET"] = secret or ""
        if ppservers:
            # The remote nodes are this private node's peers; they share the cluster secret.
            # '*' (pp's autodiscovery) finds them by broadcast on the local network.
            listed = [p for p in ppservers if p != "*"]
            if listed:
                args += ["--peers", ",".join(listed)]
            if "*" in ppservers:
                args.append("--discover")
            if peer_listen is None:
                args += ["--peer-secret-env", "PPGATE_PEER_SECRET"]
                env["PPGATE_PEER_SECRET"] = secret or ""
        # A session of its own: a Ctrl-C meant for this program does not stop the node under it.
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, start_new_session=True)
        self._unread = b""
        line = self._next_line()
        prefix = "ppgate listening on "
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError("the private ppgate node did not start (%s)" % (line or "no output"))
        self.url = line[len(prefix):]
        self.peer_port = 0
        if peer_listen is not None:
            line = self._next_line()  # "ppgate accepting peers on HOST:PORT"
            if not line.startswith("ppgate accepting peers on "):
                self.stop()
                raise RuntimeError("the private ppgate node opened no peer port (%s)" % (line or "no output"))
            self.peer_port = int(line.split()[4].rsplit(":", 1)[1])

    def _next_line(self) -> str:
        """The node's next line of standard output (its start-up lines), or what came before
        _START_TIMEOUT passed or the output ended."""
        deadline = time.monotonic() + _START_TIMEOUT
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = self._unread
        while b"\n" not in data and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 256)
            if not chunk:
                break
            data += chunk
        line, _, self._unread = data.partition(b"\n")
        return line.decode(errors="replace").strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # at once, as pp's destroy() (SIGTERM would drain)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
