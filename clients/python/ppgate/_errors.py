"""Exceptions of the ppgate client."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)
if TYPE_CHECKING:
    from typing import Any


class DestroyedServerError(RuntimeError):
    """The Server was destroyed: it accepts no jobs (as pp's DestroyedServerError)."""


class JobError(Exception):
    """A job did not produce a result.

    Raised by ``job()``. Unlike pp, which returned None and printed the remote traceback, ppgate
    raises: ``type``, ``message`` and ``traceback`` describe the remote exception (or what
    ppgate itself saw: the worker died, the job timed out, was cancelled or lost), and
    ``stdout``/``stderr`` hold what the job printed.
    """

    def __init__(self, type: str, message: str, traceback: str = "", stdout: str = "", stderr: str = "",
                 job_id: int | None = None) -> None:
        super().__init__(type, message)
        self.type = type
        self.message = message
        self.traceback = traceback
        self.stdout = stdout
        self.stderr = stderr
        self.job_id = job_id

    def __str__(self) -> str:
        text = "%s: %s" % (self.type, self.message)
        if self.traceback:
            text += "\n\nRemote traceback:\n" + self.traceback.rstrip("\n")
        return text


class WorkerDiedError(JobError):
    """The worker process running the job died (os._exit, a segfault, the OOM killer)."""


class JobTimeoutError(JobError):
    """The job ran longer than its ``timeout`` and was stopped."""


class JobCancelledError(JobError):
    """The job was cancelled (``job.cancel()``, a cancelled future, or ``destroy()``)."""


class JobLostError(JobError):
    """The job's fate is unknown: the connection to the node was lost, or the node lost it."""


class SubmitError(JobError):
    """The node refused the job (its message says why)."""


_BY_TYPE: dict[str, type[JobError]] = {"WorkerDied": WorkerDiedError, "TimeoutError": JobTimeoutError, "Cancelled": JobCancelledError}


def error_from_job(data: dict[str, Any]) -> JobError:
    """The exception for a job object (JSON) that did not end `done`."""
    err = data.get("error") or {}
    kind = err.get("type", data.get("status", "unknown"))
    cls = _BY_TYPE.get(kind, JobError)
    if data.get("status") == "lost":
        cls = JobLostError
    return cls(kind, err.get("message", ""), err.get("traceback", ""), data.get("stdout", ""),
               data.get("stderr", ""), data.get("id"))
