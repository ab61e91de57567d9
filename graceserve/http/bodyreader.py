"""Where a request body is read from: the connection's file, timed for the reaper.

Why this module exists: a client that stops sending half-way through a body
holds the application's thread for ever unless something times a blocked
body read.  So the one body reader (``httpbody.Body``, which frames the body:
Content-Length or chunked) reads from a ``TimedSource``: each read marks the
connection as reading a body (``HTTPConnection.to_body``, so progress moves
the reaper's clock) and adds the seconds it waited and the bytes it got to
the body's clock (``body_waited``, ``body_received``: the reaper's minimum
rate, ``graceserve.http.slowclients``).  A stalled body is then cut by the idle
timeout (and at the drain, after the linger) and the reader meets EOF.  A
request without a body never gets one: the per-request path stays lean.

It frames nothing itself: a stdlib handler given a chunked body reads this
source directly and de-chunks it itself (the connection is then not reused).

Not thread-safe: used by the connection's own thread only (the reaper only
reads the connection's ``state`` and ``since``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from graceserve.http.connection import HTTPConnection

__all__ = ["DISCARD_LIMIT", "TimedSource"]

DISCARD_LIMIT = 64 * 1024  # bytes of unread body discarded after a response; beyond: close
_CHUNK = 65536
_now = time.monotonic


class TimedSource:
    """``rfile`` whose every read is timed on ``conn`` as a body read (unbounded).

    Attributes not defined here (``fileno``, ``peek``, ``closed``, ...) are
    the raw stream's.
    """

    __slots__ = ("_conn", "rfile")

    def __init__(self, rfile: Any, conn: HTTPConnection) -> None:
        self.rfile = rfile
        self._conn = conn
        conn.new_body()

    def read1(self, size: int | None = -1) -> bytes:
        """At most ``size`` bytes (a chunk for None or a negative size), one socket read at most."""
        if size is None or size < 0 or size > _CHUNK:
            size = _CHUNK
        conn = self._conn
        began = _now()
        conn.to_body(began)
        data: bytes = b""
        try:
            read1 = getattr(self.rfile, "read1", None)
            data = read1(size) if read1 else self.rfile.read(size)
        finally:
            conn.body_read(began, len(data))
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, fewer only at EOF (to EOF for None or a negative size)."""
        chunks: list[bytes] = []
        wanted = (1 << 62) if size is None or size < 0 else size
        while wanted:
            chunk = self.read1(min(wanted, _CHUNK))
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
        """One line (through LF), at most ``size`` bytes."""
        conn = self._conn
        began = _now()
        conn.to_body(began)
        data: bytes = b""
        try:
            data = self.rfile.readline(-1 if size is None else size)
        finally:
            conn.body_read(began, len(data))
        return data

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

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rfile, name)
