"""A small blocking WebSocket client (RFC 6455) on the standard library, for job sessions.

One thread reads (recv); any thread may send (sends are serialized by a lock).
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import socket
import struct
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms of a program's start)
if TYPE_CHECKING:
    from typing import Mapping, Union

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _BINARY, _CLOSE, _PING, _PONG, _CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


class ConnectionClosed(ConnectionError):
    """The WebSocket connection is gone."""


class HandshakeError(ConnectionError):
    """The server refused the WebSocket upgrade; `status` and the server's message say why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__("HTTP %s: %s" % (status, message))
        self.status = status


_MASK_CHUNK = 1 << 14  # a multiple of 4: every chunk starts at the key's first byte


def _mask(payload: Union[bytes, bytearray, memoryview], key: bytes) -> bytes:
    # XOR the payload with the repeated 4-byte key, done on big integers so it runs in C; in
    # chunks, as Python's big-integer conversions slow down on very long numbers (100 MiB at
    # once: 2.8 s; in 16 KiB chunks: 0.4 s).
    n = len(payload)
    if n == 0:
        return b""
    if n <= _MASK_CHUNK:
        keystream = (key * (n // 4 + 1))[:n]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(keystream, "little")).to_bytes(n, "little")
    whole = int.from_bytes(key * (_MASK_CHUNK // 4), "little")
    out = bytearray(n)
    view = memoryview(payload).cast("B")
    for start in range(0, n, _MASK_CHUNK):
        part = view[start:start + _MASK_CHUNK]
        size = len(part)
        k = whole if size == _MASK_CHUNK else int.from_bytes((key * (size // 4 + 1))[:size], "little")
        out[start:start + size] = (int.from_bytes(part, "little") ^ k).to_bytes(size, "little")
    return bytes(out)


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """socket.create_connection((host, port), timeout), but an IP address is connected to without
    getaddrinfo, which encodes the host with the idna codec (importing it and unicodedata: a few
    ms of a program's first Server())."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection((host, port), timeout=timeout)


def _sha1(data: bytes) -> bytes:
    """SHA-1 of `data`, by CPython's own module where there is one: hashlib would load OpenSSL,
    ~3 ms of every program's way to its first result."""
    try:
        sha1 = importlib.import_module("_sha1").sha1
    except ImportError:
        from hashlib import sha1
    digest: bytes = sha1(data).digest()
    return digest


class WebSocket:
    """A client connection. The constructor connects and sends the upgrade request; it then reads
    the server's answer, unless `answer=False`: read_answer() does that later, so a caller can
    do other work while a server that is still starting gets to the request."""

    def __init__(self, host: str, port: int, path: str, headers: Mapping[str, str] | None = None,
                 timeout: float = 30.0, answer: bool = True) -> None:
        self._sock = _connect(host, port, timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send_lock = threading.Lock()
        self._keys = b""  # masking keys, drawn from os.urandom a thousand at a time
        self._buffer = bytearray()
        self.binary = False  # whether the last message recv() returned was binary
        self.headers: dict[str, str] = {}  # of the server's answer, names in lower case
        self._key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + self._key, "Sec-WebSocket-Version: 13"]
        for name, value in (headers or {}).items():
            lines.append("%s: %s" % (name, value))
        try:
            self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        except BaseException:
            self._sock.close()
            raise
        if answer:
            self.read_answer()

    def read_answer(self) -> None:
        """Reads the server's answer to the upgrade (within the constructor's timeout); raises
        HandshakeError, with the server's message, when it refused, and closes the socket."""
        try:
            head = self._read_until(b"\r\n\r\n").decode("latin-1")
            status_line, _, rest = head.partition("\r\n")
            fields: dict[str, str] = {}
            for line in rest.split("\r\n"):
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            status = int(status_line.split(" ")[1]) if " " in status_line else 0
            if status != 101:
                body = self._read_exact(int(fields.get("content-length", "0") or 0)).decode(errors="replace")
                try:
                    message = json.loads(body)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = body or status_line
                raise HandshakeError(status, message)
            expected = base64.b64encode(_sha1(self._key.encode() + _GUID)).decode()
            if fields.get("sec-websocket-accept") != expected:
                raise ConnectionError("the server answered the WebSocket upgrade wrongly")
        except BaseException:
            self._sock.close()
            raise
        self.headers = fields
        self._sock.settimeout(None)  # the reader blocks until the server says something

    def fileno(self) -> int:
        return self._sock.fileno()

    def buffered(self) -> bool:
        """True when received bytes wait in this object (select() on the socket would not see them)."""
        return bool(self._buffer)

    def poll(self) -> bool:
        """Takes in whatever bytes have arrived, without blocking; True if there were any."""
        try:
            chunk = self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not chunk:
            raise ConnectionClosed("the server closed the connection")
        self._buffer += chunk
        return True

    def _fill(self) -> None:
        chunk = self._sock.recv(1 << 16)
        if not chunk:
            raise ConnectionClosed("the server closed the connection")
        self._buffer += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while True:
            i = self._buffer.find(marker)
            if i >= 0:
                data = bytes(self._buffer[:i + len(marker)])
                del self._buffer[:i + len(marker)]
                return data
            if len(self._buffer) > 65536:
                raise ConnectionError("the server's handshake answer is too long")
            self._fill()

    def _read_exact(self, n: int) -> Union[bytes, bytearray]:
        if n > 1 << 20 and len(self._buffer) < n:
            return self._read_large(n)
        while len(self._buffer) < n:
            self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _read_large(self, n: int) -> bytearray:
        # Straight into one buffer: growing self._buffer chunk by chunk and cutting it copies a
        # big message many times over.
        data = bytearray(n)
        view = memoryview(data)
        have = len(self._buffer)
        view[:have] = self._buffer
        self._buffer = bytearray()
        while have < n:
            got = self._sock.recv_into(view[have:], n - have)
            if not got:
                raise ConnectionClosed("the server closed the connection")
            have += got
        return data

    def _send_frame(self, opcode: int, payload: Union[bytes, bytearray]) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        with self._send_lock:
            if not self._keys:
                self._keys = os.urandom(4096)
            key, self._keys = self._keys[:4], self._keys[4:]
            self._sock.sendall(header + key + _mask(payload, key))

    def send_text(self, payload: bytes) -> None:
        """Sends `payload` (UTF-8 bytes) as one text message."""
        self._send_frame(_TEXT, payload)

    def send_binary(self, payload: Union[bytes, bytearray]) -> None:
        """Sends `payload` as one binary message."""
        self._send_frame(_BINARY, payload)

    def recv(self) -> Union[bytes, bytearray]:
        """Returns the next text or binary message (`binary` tells which); answers pings on the
        way."""
        message = bytearray()
        while True:
            b0, b1 = self._read_exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = int(struct.unpack("!H", self._read_exact(2))[0])
            elif n == 127:
                n = int(struct.unpack("!Q", self._read_exact(8))[0])
            key = self._read_exact(4) if b1 & 0x80 else None
            payload = self._read_exact(n)
            if key:
                payload = _mask(payload, key)
            if opcode == _PING:
                self._send_frame(_PONG, payload)
                continue
            if opcode == _PONG:
                continue
            if opcode == _CLOSE:
                raise ConnectionClosed("the server closed the session")
            if opcode != _CONTINUATION:
                self.binary = opcode == _BINARY
            if b0 & 0x80 and not message:
                return payload  # one frame, the common case: no copy
            message += payload
            if b0 & 0x80:
                return message

    def close(self) -> None:
        try:
            self._send_frame(_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
