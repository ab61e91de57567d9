"""The request body as a drain-aware handler reads it: bounded, and timed for the reaper.

Why this module exists: two holes share one cause.  A handler that leaves a
body unread lets its bytes be parsed as the next request (request smuggling),
and a client that stops sending half-way through a body holds the handler's
thread for ever, because nothing times a blocked body read.  So a request
with a body gets ``rfile`` replaced by a ``RequestBody``: reads stop at the
body's end, each blocking read marks the connection as reading a body
(``HTTPConnection.state`` BODY, ``since`` moved on every chunk, so progress
resets the reaper's timer) and adds the seconds it waited and the bytes it
got to the body's clock (``body_waited``, ``body_received``: the reaper's
minimum rate, ``graceserve.slowclients``), and after the response the rest of
the body is discarded (bounded) or the connection is closed.  A request
without a body never gets one: the per-request path stays the stdlib's.

Not thread-safe: used by the connection's own thread only (the reaper only
reads the connection's ``state`` and ``since``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .httpparse import IncompleteBodyError

__all__ = ["DISCARD_LIMIT", "RequestBody"]

DISCARD_LIMIT = 64 * 1024  # bytes of unread body discarded after a response; beyond: close
_BUSY, _BODY = 0, 3  # HTTPConnection.state values (see httphandler)
_CHUNK = 65536
_now = time.monotonic


class RequestBody:
    """``rfile`` bounded to ``length`` bytes of body (None: passed through to EOF, unbounded).

    A Content-Length body ends at its length: reading on returns ``b""``, and
    EOF before the end raises ``IncompleteBodyError`` (a ConnectionError).
    An unbounded one (chunked, which a stdlib handler de-chunks itself) reads
    like the raw stream.  Attributes not defined here (``fileno``, ``peek``,
    ``closed``, ...) are the raw stream's.
    """

    __slots__ = ("_conn", "_remaining", "rfile")

    def __init__(self, rfile: Any, conn: Any, length: int | None) -> None:
        self.rfile = rfile
        self._conn = conn
        self._remaining = length
        conn.body_waited = 0.0  # a new body's clock: the serial goes last, the reaper keys on it
        conn.body_received = 0
        conn.body_serial += 1

    @property
    def left_over(self) -> int:
        """Bytes of the body not read yet (a huge number when unbounded)."""
        return 1 << 62 if self._remaining is None else self._remaining

    @property
    def complete(self) -> bool:
        """Whether the whole body has been read."""
        return self._remaining == 0

    def _wanted(self, size: int | None) -> int:
        remaining = self._remaining
        if size is None or size < 0:
            return (1 << 62) if remaining is None else remaining
        return size if remaining is None else min(size, remaining)

    def _took(self, data: bytes, wanted: int) -> bytes:
        if self._remaining is not None:
            if not data and wanted:
                raise IncompleteBodyError(f"EOF with {self._remaining} bytes of the body unsent")
            self._remaining -= len(data)
        return data

    def read1(self, size: int | None = -1) -> bytes:
        """At most ``size`` bytes, with at most one read from the socket."""
        wanted = self._wanted(size)
        if not wanted:
            return b""
        conn = self._conn
        conn.since = began = _now()
        conn.state = _BODY
        try:
            read1 = getattr(self.rfile, "read1", None)
            data = read1(min(wanted, _CHUNK)) if read1 else self.rfile.read(min(wanted, _CHUNK))
        finally:
            conn.state = _BUSY  # before the clock moves: the reaper never counts a wait twice
            conn.body_waited += _now() - began
        conn.body_received += len(data)
        return self._took(data, wanted)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (the rest of the body for None or a negative size)."""
        wanted = self._wanted(size)
        chunks: list[bytes] = []
        while wanted:
            try:
                chunk = self.read1(wanted)
            except IncompleteBodyError:
                if chunks:  # what arrived before the EOF is returned first
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer``; the number of bytes read."""
        view = memoryview(buffer).cast("B")
        data = self.read1(len(view))
        view[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        """One line (through LF), at most ``size`` bytes, never past the body's end."""
        wanted = self._wanted(size)
        if not wanted:
            return b""
        conn = self._conn
        conn.since = began = _now()
        conn.state = _BODY
        try:
            data = self.rfile.readline(wanted if wanted < (1 << 62) else -1)
        finally:
            conn.state = _BUSY
            conn.body_waited += _now() - began
        conn.body_received += len(data)
        return self._took(data, wanted)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The remaining lines (stopping once ``hint`` bytes have been read)."""
        lines: list[bytes] = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body, up to ``limit`` bytes; True if it ended.

        False when more than ``limit`` is left, the body is unbounded, or the
        client went away: then the connection must not carry another request.
        """
        if self._remaining is None or self._remaining > limit:
            return False
        try:
            while self._remaining:
                self.read1(self._remaining)
        except (OSError, ValueError):
            return False
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rfile, name)
