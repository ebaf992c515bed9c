"""Exceptions of the ppgate client."""


class DestroyedServerError(RuntimeError):
    """The Server was destroyed: it accepts no jobs (as pp's DestroyedServerError)."""


class JobError(Exception):
    """A job did not produce a result.

    Raised by ``job()``. Unlike pp, which returned None and printed the remote traceback, ppgate
    raises: ``type``, ``message`` and ``traceback`` describe the remote exception (or what
    ppgate itself saw: the worker died, the job timed out, was cancelled or lost), and
    ``stdout``/``stderr`` hold what the job printed.
    """

    def __init__(self, type, message, traceback="", stdout="", stderr="", job_id=None):
        super().__init__(type, message)
        self.type = type
        self.message = message
        self.traceback = traceback
        self.stdout = stdout
        self.stderr = stderr
        self.job_id = job_id

    def __str__(self):
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


_BY_TYPE = {"WorkerDied": WorkerDiedError, "TimeoutError": JobTimeoutError, "Cancelled": JobCancelledError}


def error_from_job(data):
    """The exception for a job object (JSON) that did not end `done`."""
    err = data.get("error") or {}
    kind = err.get("type", data.get("status", "unknown"))
    cls = JobLostError if data.get("status") == "lost" else _BY_TYPE.get(kind, JobError)
    return cls(kind, err.get("message", ""), err.get("traceback", ""), data.get("stdout", ""),
               data.get("stderr", ""), data.get("id"))
