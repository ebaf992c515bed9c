"""Big pickles through shared memory when the node is on this host (docs/rest.md, "Shared memory"),
and as attachments of binary messages when it is not (docs/rest.md, "Binary messages").

A session whose node shares this process's /dev/shm gets a file prefix of its own. A job's
arguments of at least THRESHOLD bytes are pickled with protocol 5, their out-of-band buffers
(numpy arrays, bytearrays, PickleBuffers) written straight from their memory into one file under
that prefix, and the job names the file instead of carrying the bytes; the worker maps it, and so
does this client for a big result the worker wrote likewise. The node never holds the bytes.
A job's files are removed when it ends; the node removes what a session left when it closes.
(The worker has its own copy of load(): it runs without this package.)
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Union

    Parts = Dict[str, Any]  # {"shm": name, "parts": [[offset, size], ...]}

FOLDER = "/dev/shm"
THRESHOLD = 64 * 1024  # smaller pickles go inline: a file costs more than copying them
_ALIGN = 64            # each part starts on a cache line, as numpy likes its data
_names = itertools.count(1)


def host_identity() -> Optional[str]:
    """Who shares this /dev/shm: the node answers with a prefix only if its view is the same."""
    try:
        st = os.stat(FOLDER)
    except OSError:
        return None
    return "%d:%d:%d" % (st.st_dev, st.st_ino, os.getuid())


def dumps(value: Any, pickler: Any) -> tuple[bytes, List[memoryview]]:
    """`pickler(value, buffer_callback)` with protocol 5; returns the stream and the raw memory
    of its out-of-band buffers."""
    buffers: List[pickle.PickleBuffer] = []
    stream = pickler(value, buffers.append)
    return stream, [b.raw() for b in buffers]


def write(prefix: str, stream: bytes, buffers: Sequence[memoryview]) -> Parts:
    """Writes the pickle and its buffers to a new file under `prefix`."""
    name = "%sa%d" % (prefix, next(_names))
    fd = os.open(os.path.join(FOLDER, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        ranges = []
        offset = 0
        for part in itertools.chain((memoryview(stream),), buffers):
            offset = -(-offset // _ALIGN) * _ALIGN
            size = part.nbytes
            view = part.cast("B") if part.ndim != 1 or part.format != "B" else part
            done = 0
            while done < size:
                done += os.pwrite(fd, view[done:], offset + done)
            ranges.append([offset, size])
            offset += size
    except BaseException:
        os.close(fd)
        remove(name)
        raise
    os.close(fd)
    return {"shm": name, "parts": ranges}


def load(value: Union[str, Parts], b64decode: Any, attachments: Optional[memoryview] = None) -> Any:
    """Unpickles a pickle as the node passes it: base64, or in parts (inline, in a file, or in
    the `attachments` of the binary message it came in)."""
    if isinstance(value, str):
        return pickle.loads(b64decode(value))
    parts = value["parts"]
    name = value.get("shm")
    if value.get("attached"):
        if attachments is None:
            raise ValueError("the result refers to attachments, and its message had none")
        data = []
        for offset, size in parts:
            if offset + size > attachments.nbytes:
                raise ValueError("part [%d, %d] lies outside the message's attachments" % (offset, size))
            data.append(attachments[offset:offset + size])
    elif name is None:
        data = [b64decode(p) for p in parts]
    else:
        view = _map(name)
        data = []
        for offset, size in parts:
            if offset + size > view.nbytes:
                raise ValueError("part [%d, %d] lies outside shared memory %s of %d bytes"
                                 % (offset, size, name, view.nbytes))
            data.append(view[offset:offset + size])
    return pickle.loads(data[0], buffers=data[1:])


def _map(name: str) -> memoryview:
    # Private, writable (copy-on-write) pages: an argument or result comes out writable, as
    # unpickled bytes would be, and writing to it changes nobody else's.
    fd = os.open(os.path.join(FOLDER, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return memoryview(bytearray())
        return memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY))
    finally:
        os.close(fd)


class Attached:
    """A big pickle for a node on another host: its stream and buffers go as attachments of the
    binary message that carries the job (the session lays them out when it encodes it)."""

    __slots__ = ("parts", "nbytes")

    def __init__(self, stream: bytes, buffers: Sequence[memoryview]) -> None:
        self.parts: List[memoryview] = [memoryview(stream)] + list(buffers)
        self.nbytes = sum(p.nbytes for p in self.parts)


class Attachments:
    """The attachments of one binary message being encoded: json.dumps's `default` for Attached."""

    def __init__(self) -> None:
        self.chunks: List[Any] = []
        self.size = 0

    def __call__(self, obj: Any) -> Any:
        if not isinstance(obj, Attached):
            raise TypeError("%r is not JSON serializable" % (obj,))
        ranges = []
        for part in obj.parts:
            pad = -self.size % _ALIGN
            if pad:
                self.chunks.append(bytes(pad))
                self.size += pad
            ranges.append([self.size, part.nbytes])
            self.chunks.append(part.cast("B") if part.ndim != 1 or part.format != "B" else part)
            self.size += part.nbytes
        return {"attached": True, "parts": ranges}

    def message(self, header: bytes) -> bytearray:
        """[4-byte little-endian length][header][attachments]."""
        out = bytearray(len(header).to_bytes(4, "little"))
        out += header
        for chunk in self.chunks:
            out += chunk
        return out


def split_binary(message: Union[bytes, bytearray]) -> tuple[bytes, memoryview]:
    """A binary message from the node: its JSON part and its attachments."""
    view = memoryview(message)
    if len(view) < 4:
        raise ValueError("a binary message shorter than its header")
    size = int.from_bytes(view[:4], "little")
    if size > len(view) - 4:
        raise ValueError("a binary message's JSON part is longer than the message")
    return bytes(view[4:4 + size]), view[4 + size:]


def remove(name: str) -> None:
    try:
        os.unlink(os.path.join(FOLDER, name))
    except OSError:
        pass
