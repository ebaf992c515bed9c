"""Worker nodes as Slurm batch jobs that join the caller's node (docs/clusters.md, "Slurm").

In the spirit of dask-jobqueue::

    from ppgate.slurm import SlurmCluster
    cluster = SlurmCluster(jobs=4, cpus_per_job=8, walltime="02:00:00", partition="compute")
    job_server = pp.Server(0, ppservers=cluster)     # or ppgate.Executor(cluster=cluster)
    ...
    cluster.close()                                   # scancel (job_server.destroy() does it too)

The Server's private node is the head: it listens on a peer port, and each batch job runs
``ppgate serve --join HEAD:PORT`` with as many workers as its CPUs. The cluster's secret reaches
the batch jobs through a file only this user can read, in ``shared_directory`` (by default
``~/.ppgate``, which must be on a file system the compute nodes see), never on a command line.
On walltime, Slurm's SIGTERM makes each node drain: its running jobs finish within
``drain_timeout`` (keep it under Slurm's KillWait), the ones it had not started run elsewhere.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
from typing import List, Optional, Sequence

from ._node import find_ppgate

__all__ = ["SlurmCluster", "SlurmError"]


class SlurmError(RuntimeError):
    """sbatch or scancel failed; the message holds what it said."""


class SlurmCluster:
    """Slurm batch jobs, each a ppgate node that joins the head (the caller's Server).

    ``jobs`` batch jobs of ``cpus_per_job`` CPUs (one worker each) and ``walltime`` (Slurm's
    ``--time``), in ``partition`` (default: Slurm's), with ``memory`` (``--mem``) and any
    ``extra_directives`` (``"--account=x"`` or whole ``"#SBATCH ..."`` lines). ``head_host`` is the
    address the batch jobs dial (default: this host's name); the head listens on every interface,
    or on ``head_host`` itself when it is a loopback address. ``python`` is the interpreter the
    workers run (default: this one), ``ppgate`` the executable the batch jobs start (default: the
    one this client runs). Nothing is submitted until a Server uses the cluster.
    """

    def __init__(self, jobs: int = 1, cpus_per_job: int = 1, walltime: str = "01:00:00",
                 partition: Optional[str] = None, memory: Optional[str] = None,
                 extra_directives: Sequence[str] = (), *, job_name: str = "ppgate",
                 head_host: Optional[str] = None, shared_directory: Optional[str] = None,
                 drain_timeout: float = 20, python: Optional[str] = None, ppgate: Optional[str] = None) -> None:
        if not isinstance(jobs, int) or jobs < 0:
            raise ValueError("jobs must be a whole number, 0 or more")
        if not isinstance(cpus_per_job, int) or cpus_per_job < 1:
            raise ValueError("cpus_per_job must be a whole number, 1 or more")
        for name, value in (("walltime", walltime), ("partition", partition), ("memory", memory),
                            ("job_name", job_name)):
            if value is not None and (not isinstance(value, str) or not value or any(c.isspace() for c in value)):
                raise ValueError("%s must be a word, not %r" % (name, value))
        if isinstance(extra_directives, str):
            raise TypeError("extra_directives is a list of directives, not one string")
        for directive in extra_directives:
            if not isinstance(directive, str) or "\n" in directive:
                raise ValueError("a directive is one line, not %r" % (directive,))
        self.jobs = jobs
        self.cpus_per_job = cpus_per_job
        self.walltime = walltime
        self.partition = partition
        self.memory = memory
        self.extra_directives = list(extra_directives)
        self.job_name = job_name
        self.head_host = head_host or socket.gethostname()
        self.shared_directory = shared_directory or os.path.join(os.path.expanduser("~"), ".ppgate")
        self.drain_timeout = drain_timeout
        self.python = python or sys.executable
        self.ppgate = ppgate or find_ppgate()
        self._lock = threading.Lock()
        self._job_ids: List[str] = []
        self._head: Optional[str] = None       # HOST:PORT of the head's peer port, once attached
        self._secret_file: Optional[str] = None
        self._closed = False

    # --- what users call ---

    @property
    def job_ids(self) -> List[str]:
        """The Slurm job ids submitted and not cancelled by this object."""
        with self._lock:
            return list(self._job_ids)

    def job_script(self) -> str:
        """The batch script each job runs (before a Server uses the cluster, the head's port
        reads PORT)."""
        head = self._head or "%s:PORT" % self.head_host
        secret_file = self._secret_file or os.path.join(self.shared_directory, "secret-PORT")
        lines = ["#!/bin/bash",
                 "#SBATCH --job-name=%s" % self.job_name,
                 "#SBATCH --ntasks=1",
                 "#SBATCH --cpus-per-task=%d" % self.cpus_per_job,
                 "#SBATCH --time=%s" % self.walltime,
                 "#SBATCH --output=%s" % os.path.join(self.shared_directory, "%s-%%j.out" % self.job_name)]
        if self.partition:
            lines.append("#SBATCH --partition=%s" % self.partition)
        if self.memory:
            lines.append("#SBATCH --mem=%s" % self.memory)
        for directive in self.extra_directives:
            lines.append(directive if directive.startswith("#SBATCH") else "#SBATCH " + directive)
        # The workers import what the calling script can (as the private node's do).
        sys_path = json.dumps([os.path.abspath(p) if p else os.getcwd() for p in sys.path])
        lines += ["",
                  "# A ppgate node that joins the head; on SIGTERM (walltime, scancel) it drains.",
                  "export PPGATE_SYS_PATH=%s" % shlex.quote(sys_path),
                  "cd %s" % shlex.quote(os.getcwd()),
                  "exec %s" % " ".join(shlex.quote(a) for a in [
                      self.ppgate, "serve", "--listen", "127.0.0.1:0", "--workers", str(self.cpus_per_job),
                      "--join", head, "--secret-file", secret_file, "--python", self.python,
                      "--drain-timeout", "%g" % self.drain_timeout]),
                  ""]
        return "\n".join(lines)

    def scale(self, jobs: int) -> None:
        """Runs `jobs` batch jobs: submits more, or cancels the newest."""
        if not isinstance(jobs, int) or jobs < 0:
            raise ValueError("jobs must be a whole number, 0 or more")
        with self._lock:
            self.jobs = jobs
            attached = self._head is not None and not self._closed
            surplus = self._job_ids[jobs:] if attached else []
            del self._job_ids[len(self._job_ids) - len(surplus):]
            missing = jobs - len(self._job_ids) if attached else 0
        if surplus:
            self._scancel(surplus)
        for _ in range(missing):
            self._submit_one()

    def close(self) -> None:
        """Cancels every batch job (each drains: Slurm sends SIGTERM) and removes the secret file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ids, self._job_ids = self._job_ids, []
            secret_file, self._secret_file = self._secret_file, None
        try:
            if ids:
                self._scancel(ids)
        finally:
            if secret_file:
                try:
                    os.unlink(secret_file)
                except FileNotFoundError:
                    pass

    def __enter__(self) -> "SlurmCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<SlurmCluster %d jobs of %d CPUs, head %s>" % (len(self._job_ids), self.cpus_per_job,
                                                               self._head or "not started")

    # --- for Server ---

    def _peer_listen_host(self) -> str:
        """Where the head's peer port listens: on head_host when it is a loopback address."""
        try:
            if ipaddress.ip_address(self.head_host).is_loopback:
                return self.head_host
        except ValueError:
            pass
        return "0.0.0.0"

    def _attach(self, port: int, secret: str) -> None:
        """The head listens on `port` with `secret`: write the secret file, submit the jobs."""
        with self._lock:
            if self._closed:
                raise ValueError("this SlurmCluster was closed")
            if self._head is not None:
                raise ValueError("this SlurmCluster already serves a Server")
            os.makedirs(self.shared_directory, mode=0o700, exist_ok=True)
            path = os.path.join(self.shared_directory, "secret-%d-%d" % (os.getpid(), port))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # this user only
            with os.fdopen(fd, "w") as f:
                f.write(secret)
            self._secret_file = path
            self._head = "%s:%d" % (self.head_host, port)
        self.scale(self.jobs)

    def _submit_one(self) -> None:
        done = _run(["sbatch", "--parsable"], self.job_script())
        if done.returncode != 0:
            raise SlurmError("sbatch failed: " + (done.stderr.strip() or "exit %d" % done.returncode))
        job_id = done.stdout.strip().split(";")[0]
        with self._lock:
            self._job_ids.append(job_id)

    @staticmethod
    def _scancel(ids: Sequence[str]) -> None:
        done = _run(["scancel"] + list(ids))
        if done.returncode != 0:
            raise SlurmError("scancel failed: " + (done.stderr.strip() or "exit %d" % done.returncode))


def _run(command: List[str], stdin: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
    try:
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SlurmError("%s is not on PATH: is this a Slurm submit host?" % command[0]) from None
    except subprocess.TimeoutExpired:
        raise SlurmError("%s did not answer within 120 s" % command[0]) from None
