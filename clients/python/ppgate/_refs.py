"""Values put once: Server.put(value) sends a value to the node once and returns a Ref that jobs
take as an argument, anywhere in their arguments (docs/python-client.md, "Values put once").

A job's pickles name each Ref by its index in the job's "refs" list (a persistent id); the node
keeps the value while the Ref lives, and each worker unpickles it once, the first time a job
there takes it. release() (or dropping the last reference to the Ref) lets it go everywhere.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)
if TYPE_CHECKING:
    from typing import Any, Callable, List

from . import _shared_memory as shared_memory

_lock = threading.Lock()  # guards every Ref's release and its users count


class Ref:
    """A value put once on a Server's node (Server.put, Executor.put). Pass it to jobs in place of
    the value; call release() when no more jobs need it."""

    __slots__ = ("id", "fresh", "_session", "_files", "_travelling", "_released", "_users", "__weakref__")

    def __init__(self, ref_id: int, session: Any, files: List[str], travelling: List[Any],
                 fresh: bool = False) -> None:
        self.id = ref_id               # the session's number for it
        self.fresh = fresh             # each job unpickles a copy of its own (a value sent once)
        self._session = session        # the session it was put on: it means nothing on another
        self._files = files            # its pickle in shared memory, if it went that way
        self._travelling = travelling  # classes and functions in it that go as source
        self._released = False
        self._users = 0                # jobs that take it and have not ended

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """The node and its workers let go of the value (once the jobs that take it have ended);
        a job submitted with it afterwards is refused. Idempotent."""
        self._release(lambda: self._session.release_value(self.id))

    def __del__(self) -> None:
        try:
            # No job holds this Ref any more (jobs keep theirs until they end): the release may
            # go with the session's next message, and must not wait for its lock here.
            self._release(lambda: self._session.release_value_later(self.id))
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __reduce__(self) -> Any:
        raise TypeError("a ppgate Ref stands for its value only in the arguments of jobs of the "
                        "Server it was put on")

    def __repr__(self) -> str:
        return "<ppgate.Ref %d%s>" % (self.id, " released" if self._released else "")

    # --- for Server ---

    def _taken_by_job(self, session: Any) -> None:
        if session is not self._session:
            raise ValueError("%r was put on another Server's node" % self)
        with _lock:
            if self._released:
                raise ValueError("%r was released: put the value again" % self)
            self._users += 1

    def _job_ended(self) -> None:
        with _lock:
            self._users -= 1
            remove = self._released and self._users == 0
        if remove:
            self._remove_files()

    def _release(self, tell_node: Callable[[], Any]) -> None:
        with _lock:
            if self._released:
                return
            self._released = True
            remove = self._users == 0
        tell_node()
        if remove:
            self._remove_files()

    def _remove_files(self) -> None:
        files, self._files = self._files, []
        for name in files:
            shared_memory.remove(name)
