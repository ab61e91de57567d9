"""A request body, read from the connection's buffered file and bounded by its framing.

Why this module exists: a handler or a WSGI app reads the body from the same
buffered file that holds the next request, so the body reader is where one
request must end and the next begin.  A ``Content-Length`` body is read with
the file's own ``read``/``readline`` capped at what is left (no copy, no
loop); a chunked body is de-chunked here, strictly: chunk-size lines and the
CRLF after each chunk's data must be exact (CRLF, not a bare LF: a lenient
chunk parser behind a strict proxy, or the reverse, is a smuggling vector),
sizes are hex digits with no sign, ``0x`` or ``_`` (any number of leading
zeros; the value is capped at ``sys.maxsize``), extensions must follow
the grammar (a chunk-size line is bounded by ``limits.field_size``), and the
trailer is read under the header field limits, every line ended by CRLF
(the bare-LF leniency of a head does not extend to the body: RFC 9112 7.1),
without the fields that must come before the content (RFC 9110 6.5.1), and
dropped.  Re-exported by ``httpparse``, whose errors and limits it uses.

Linear: each chunk-size line is matched by one regex whose parts are
separated by bytes the neighbouring parts cannot hold (``;``, ``=``, ``"``),
so a failing line costs one pass, not one per way to split it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from graceserve.http.parse import (
    TCHAR,
    Framing,
    IncompleteBodyError,
    IncompleteHeadError,
    Limits,
    RequestError,
    read_fields,
)

__all__ = ["Body"]

_TOKEN = b"[" + TCHAR.encode() + b"]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# chunk-size [ chunk-ext ] CRLF   (RFC 9112 7.1, 7.1.1)
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*\r\n"
)
_MAX_SIZE_DIGITS = 16  # significant hex digits of a chunk size (2**64 - 1)
_READ_STEP = 1 << 20  # the most read from the file at once (a client's size is not allocated)
_DISCARD_STEP = 65536
_DEFAULT = Limits()

# Fields a chunked trailer must not carry: those RFC 9110 6.5.1 says are
# needed before the content (framing, routing, authentication, request
# modifiers, content format), and those graceserve itself reads from the
# head.  They are dropped anyway; refusing them leaves no doubt for a peer
# that would merge a trailer into the head.
_NOT_IN_TRAILER = frozenset(
    {
        # framing and the connection
        "content-length", "transfer-encoding", "trailer", "connection", "keep-alive",
        "upgrade", "te",
        # routing, and what graceserve believes from a trusted proxy
        "host", "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
        # authentication
        "authorization", "proxy-authorization", "cookie",
        # request modifiers: controls, conditionals, range
        "cache-control", "expect", "max-forwards", "pragma", "range", "if-match",
        "if-none-match", "if-modified-since", "if-unmodified-since", "if-range",
        # content format
        "content-type", "content-encoding", "content-range",
    }
)  # fmt: skip


class Body:
    """A request body read from the connection's buffered ``rfile``, bounded by its framing.

    Content-Length or chunked (de-chunked here; trailers read and dropped).
    Reading past the end returns ``b""`` and never touches the next request's
    bytes.  ``before_first_read`` (if given) is called once, just before the
    first byte is read: the place to send ``100 Continue``.  Malformed chunks
    or trailers raise RequestError(400); a body over ``limits.body`` raises
    RequestError(413) (a chunked one as soon as a chunk's declared size takes
    the total past it; a ``Content-Length`` one at construction, though
    ``framing`` already refuses it), and so does a chunk size past ``sys.maxsize``;
    EOF before the end raises
    IncompleteBodyError (a ConnectionError: the client went away).  After
    any error (these, or the file's own, such as a timeout) the body is
    unusable: it is not ``complete``, ``discard`` answers False, and further
    reads raise the error again (chunked) or return ``b""``.

    Not thread-safe: used by the connection's own thread only.
    """

    __slots__ = (
        "_chunked",
        "_done",
        "_error",
        "_expect",
        "_hook",
        "_left",
        "_limits",
        "_rfile",
        "_total",
    )

    def __init__(
        self,
        rfile: BinaryIO,
        framing: Framing,
        limits: Limits = _DEFAULT,
        before_first_read: Callable[[], None] | None = None,
    ) -> None:
        self._rfile = rfile
        self._limits = limits
        self._chunked = framing.chunked
        self._expect = framing.expect_continue
        self._error: Exception | None = None
        self._done = False  # chunked only: last chunk and trailer read
        self._total = 0
        if framing.chunked:
            self._left = 0  # bytes left in the current chunk
        else:
            length = framing.content_length or 0
            if limits.body is not None and length > limits.body:
                raise RequestError(413, f"request body larger than {limits.body} bytes")
            self._left = length  # bytes left in the body
            if length == 0:
                before_first_read = None
        self._hook = before_first_read

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left for None or a negative size)."""
        if self._chunked:
            return self._read_chunked(-1 if size is None or size < 0 else size, False)
        want = self._take(size)
        if not want:
            return b""
        try:
            data = self._rfile.read(want) if want <= _READ_STEP else self._read_steps(want)
        except Exception as error:  # a timeout, a reset: where the body stands is unknown
            raise self._fail(error) from None
        self._left -= len(data)
        if len(data) < want:
            raise self._fail(IncompleteBodyError("EOF inside the request body"))
        return data

    def readline(self, size: int | None = -1) -> bytes:
        """One line (through LF), at most ``size`` bytes."""
        if self._chunked:
            return self._read_chunked(-1 if size is None or size < 0 else size, True)
        want = self._take(size)
        if not want:
            return b""
        try:
            line = self._rfile.readline(want)
        except Exception as error:
            raise self._fail(error) from None
        self._left -= len(line)
        if len(line) < want and not line.endswith(b"\n"):
            raise self._fail(IncompleteBodyError("EOF inside the request body"))
        return line

    def _take(self, size: int | None) -> int:
        """How many bytes of a fixed-length body a read of ``size`` asks for now (0 when
        nothing is left or nothing is asked); the body's first read starts it."""
        left = self._left
        if left <= 0 or size == 0:
            return 0
        if self._hook is not None:
            self._start()
        if size is None or size < 0 or size > left:
            return left
        return size

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Lines until the end (or until ``hint`` bytes have been read)."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        """The remaining lines."""
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def read1(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (at most one step of ``_READ_STEP`` for None or negative)."""
        return self.read(_READ_STEP if size is None or size < 0 else min(size, _READ_STEP))

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer``; the number of bytes read (0 at the body's end)."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def __getattr__(self, name: str) -> Any:
        # What a stdlib handler may ask of ``rfile`` beyond reading (``fileno``, ``closed``).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._rfile, name)

    @property
    def error(self) -> Exception | None:
        """What made reading fail (a RequestError for a malformed or oversized
        body, an IncompleteBodyError, the file's own), or None."""
        return self._error

    @property
    def complete(self) -> bool:
        """Whether the whole body (and, if chunked, its trailer) has been read."""
        if self._error is not None:
            return False
        return self._done if self._chunked else self._left <= 0

    def ends_connection(self, limit: int) -> bool:
        """Whether what is left of the body will end the connection (the unread-body rule).

        Decided before the response head goes out, so it can say ``close``:
        True for a body that failed, one the client was never told to send
        (``Expect: 100-continue``), or one that may be more than ``limit``
        (chunked, or a longer ``Content-Length``), when not read to its end.
        """
        if self.complete:
            return False
        if self._error is not None or (self._hook is not None and self._expect):
            return True
        return self._chunked or self._left > limit

    def discard(self, limit: int) -> bool:
        """Read and drop what is left, up to ``limit`` bytes; True if the end was reached.

        After a response, so the connection can carry the next request; on
        False (too much left, or an error) the caller closes the connection.
        Never raises.  A client that sent ``Expect: 100-continue`` and was
        never told to continue (``before_first_read`` not yet called) may
        or may not send its body: nothing is read and the answer is False,
        unless the body is empty.
        """
        if self.complete:
            return True
        if self._error is not None or (self._hook is not None and self._expect):
            return False
        try:
            if not self._chunked:
                if self._left > limit:
                    return False
                self.read()
                return True
            budget = limit
            while not self._done:
                budget -= len(self._read_chunked(min(budget + 1, _DISCARD_STEP), False))
                if budget < 0:
                    return False
            return True
        except Exception:  # documented: never raises (the caller closes)
            return False

    def _read_steps(self, size: int) -> bytes:
        """``size`` bytes (fewer at EOF), read ``_READ_STEP`` at a time: a buffered
        file's ``read(n)`` allocates ``n`` bytes first, and ``n`` is the client's."""
        parts = []
        read = self._rfile.read
        while size > 0:
            data = read(min(size, _READ_STEP))
            if not data:
                break
            parts.append(data)
            size -= len(data)
        return b"".join(parts)

    def _fail(self, error: Exception) -> Exception:
        """Record that reading failed part-way (the body is unusable from now on)."""
        self._error = error
        self._left = 0
        return error

    def _start(self) -> None:
        """Call ``before_first_read``, once."""
        hook, self._hook = self._hook, None
        if hook is not None:
            hook()

    def _read_chunked(self, size: int, line: bool) -> bytes:
        """Up to ``size`` de-chunked bytes (all for -1); through the first LF if ``line``."""
        if self._error is not None:
            raise self._error
        if self._done or size == 0:
            return b""
        if self._hook is not None:
            self._start()
        parts: list[bytes] = []
        rfile = self._rfile
        try:
            while size != 0:
                left = self._left
                if left == 0:
                    if self._done:
                        break
                    self._next_chunk()
                    continue
                want = left if size < 0 or size > left else size
                if want > _READ_STEP and not line:  # the client's size: no allocation of it
                    want = _READ_STEP
                data = rfile.readline(want) if line else rfile.read(want)
                got = len(data)
                self._left = left - got
                parts.append(data)
                if self._left == 0:
                    self._end_of_data()
                if line and data.endswith(b"\n"):
                    break
                if got < want:
                    raise IncompleteBodyError("EOF inside a chunk")
                if size > 0:
                    size -= got
        except Exception as error:  # a bad chunk, EOF, a timeout: the framing is lost
            self._error = error
            raise
        return b"".join(parts)

    def _next_chunk(self) -> None:
        """Read a chunk-size line; after the last chunk, the trailer too."""
        limits = self._limits
        most = limits.field_size + 2
        line = self._rfile.readline(most)
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            if len(line) < most and not line.endswith(b"\n"):
                raise IncompleteBodyError("EOF inside a chunk-size line")
            raise RequestError(400, _chunk_line_problem(line, most))
        digits = match.group(1)
        if len(digits) > _MAX_SIZE_DIGITS and len(digits.lstrip(b"0")) > _MAX_SIZE_DIGITS:
            raise RequestError(413, "chunk size too large")
        size = int(digits, 16)
        if size > sys.maxsize:  # no file reads that much in one call
            raise RequestError(413, "chunk size too large")
        if size == 0:
            try:  # the trailer: checked, then dropped
                trailer = read_fields(self._rfile.readline, limits, bare_lf=False)
            except IncompleteHeadError:
                raise IncompleteBodyError("EOF inside the chunked trailer") from None
            for name, _ in trailer:
                if name.lower() in _NOT_IN_TRAILER:
                    raise RequestError(400, f"{name} is not allowed in a chunked trailer")
            self._done = True
            return
        self._total += size
        if limits.body is not None and self._total > limits.body:
            raise RequestError(413, f"request body larger than {limits.body} bytes")
        self._left = size

    def _end_of_data(self) -> None:
        """Read the CRLF that must follow a chunk's data."""
        crlf = self._rfile.read(2)
        if crlf != b"\r\n":
            if len(crlf) < 2:
                raise IncompleteBodyError("EOF after a chunk's data")
            raise RequestError(400, "chunk data not followed by CRLF")


def _chunk_line_problem(line: bytes, most: int) -> str:
    """Why a chunk-size line that failed the regex is bad (slow path)."""
    if len(line) >= most:
        return "chunk-size line too long"
    if not line.endswith(b"\r\n"):
        return "chunk-size line not ended by CRLF"
    digits = re.match(rb"[0-9A-Fa-f]*", line)
    count = len(digits.group()) if digits else 0
    if count == 0:
        return "malformed chunk size"
    return "malformed chunk size or extension"
