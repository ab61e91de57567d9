"""Strict HTTP/1.1 request heads and bodies (RFC 9110/9112), without email.parser.

Why this module exists: the stdlib reads request headers with
``http.client.parse_headers``, which goes through ``email.parser``: it is the
largest per-request CPU cost of ``BaseHTTPRequestHandler``, and it is lenient
where leniency is a security hole (a ``Content-Length`` next to a
``Transfer-Encoding``, two ``Content-Length`` fields, whitespace before a
colon, obs-fold, bare CR, NUL in a value: each one a request-smuggling
vector behind a proxy that reads the head differently).  Both the drain-aware
``BaseHTTPRequestHandler`` and the WSGI server read heads and bodies through
this module, so there is one definition of a valid request.

Rule: no sockets, no threads, no clock.  Functions take bytes, or a
``readline``-shaped callable over a buffered binary file, and raise
``RequestError`` (with the status to answer) or ``IncompleteHeadError`` (EOF
inside a head: never dispatch it).  Everything here is tested without I/O.

STATUS: interface only.  The implementation is being written on the
``parser`` branch; code against the signatures and docstrings below.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "Body",
    "Framing",
    "IncompleteBodyError",
    "IncompleteHeadError",
    "Limits",
    "RequestError",
    "RequestLine",
    "framing",
    "parse_request_line",
    "read_fields",
    "to_message",
]

ReadLine = Callable[[int], bytes]
"""``rfile.readline`` of a buffered binary file: reads up to n bytes, through LF."""


@dataclass(frozen=True)
class Limits:
    """Request size limits; each breach has its own status.  Immutable."""

    request_line: int = 8190
    """Bytes in the request line, CRLF excluded (414 beyond)."""
    fields: int = 100
    """Header field lines (431 beyond)."""
    field_size: int = 8190
    """Bytes in one header field line, CRLF excluded (431 beyond)."""
    body: int | None = None
    """Bytes of request body, declared or de-chunked (413 beyond); None: no limit."""


class RequestError(Exception):
    """The request is malformed or over a limit: answer ``status`` and close.

    ``message`` is one line, safe to send to the client and to log.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class IncompleteHeadError(Exception):
    """EOF (or a cut) arrived inside a request head: the request must not be dispatched."""


class IncompleteBodyError(ConnectionError):
    """EOF arrived inside a request body: the client went away mid-request."""


@dataclass(frozen=True)
class RequestLine:
    """A parsed request line.  ``version`` is ``"HTTP/1.1"``, ``"HTTP/1.0"`` or
    ``"HTTP/0.9"`` (a line of just ``METHOD target``)."""

    method: str
    target: str
    version: str


@dataclass(frozen=True)
class Framing:
    """How the request's body is delimited and whether the connection may persist."""

    content_length: int | None
    """Declared body length, None when absent (or when chunked)."""
    chunked: bool
    """Transfer-Encoding ends in ``chunked``."""
    keep_alive: bool
    """Persistent by version and ``Connection`` (1.1 unless close; 1.0 only with keep-alive)."""
    expect_continue: bool
    """``Expect: 100-continue`` was sent (on HTTP/1.1)."""

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head."""
        return self.chunked or bool(self.content_length)


def parse_request_line(line: bytes, limits: Limits = Limits()) -> RequestLine:
    """Parse ``METHOD SP request-target SP HTTP-version CRLF`` (LF alone tolerated).

    ``line`` is what ``readline`` returned, line ending included.  Raises
    RequestError: 414 over ``limits.request_line``; 400 for a bad method
    token, a target with whitespace/control bytes, extra spaces, or a
    malformed version; 505 for a well-formed but unsupported version (not
    1.0/1.1).  ``METHOD target`` with no version parses as HTTP/0.9 (the
    caller decides how to answer it).
    """
    raise NotImplementedError


def read_fields(readline: ReadLine, limits: Limits = Limits()) -> list[tuple[str, str]]:
    """Read header field lines up to and including the blank line.

    Returns ``(name, value)`` pairs in order, names as sent, values with
    surrounding whitespace removed, both latin-1 decoded.  Raises
    IncompleteHeadError at EOF before the blank line; RequestError 431 over
    ``limits.fields`` or ``limits.field_size``; 400 for obs-fold (a line that
    starts with SP/HTAB), whitespace before the colon, an empty or non-token
    name, a bare CR, NUL or other control bytes (HTAB allowed) in a value.
    """
    raise NotImplementedError


def framing(line: RequestLine, fields: list[tuple[str, str]], limits: Limits = Limits()) -> Framing:
    """Decide body framing and persistence; reject what RFC 9112 says to reject.

    RequestError: 400 for ``Content-Length`` together with
    ``Transfer-Encoding``, conflicting/list-form/non-decimal
    ``Content-Length``, a missing ``Host`` on HTTP/1.1, a request-target in
    the wrong form for its method (``*`` only with OPTIONS, authority-form
    only with CONNECT, else origin-form or absolute-form); 501 for a
    Transfer-Encoding whose last coding is not ``chunked`` (or any
    Transfer-Encoding on HTTP/1.0); 413 for a ``Content-Length`` over
    ``limits.body``.
    """
    raise NotImplementedError


def to_message(fields: list[tuple[str, str]]) -> http.client.HTTPMessage:
    """The fields as the ``http.client.HTTPMessage`` that ``BaseHTTPRequestHandler.headers`` is.

    Cheap: no ``email.parser``.  ``get``, ``get_all``, ``items``, ``in`` and
    ``[]`` behave as on a parsed message.
    """
    raise NotImplementedError


class Body:
    """A request body read from the connection's buffered ``rfile``, bounded by its framing.

    Content-Length or chunked (de-chunked here; trailers read and dropped).
    Reading past the end returns ``b""`` and never touches the next request's
    bytes.  ``before_first_read`` (if given) is called once, just before the
    first byte is read: the place to send ``100 Continue``.  Malformed chunks
    raise RequestError(400); a body over ``limits.body`` raises
    RequestError(413); EOF before the end raises IncompleteBodyError (a
    ConnectionError: the client went away).

    Not thread-safe: used by the connection's own thread only.
    """

    def __init__(
        self,
        rfile: BinaryIO,
        framing: Framing,
        limits: Limits = Limits(),
        before_first_read: Callable[[], None] | None = None,
    ) -> None:
        raise NotImplementedError

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left for None or a negative size)."""
        raise NotImplementedError

    def readline(self, size: int | None = -1) -> bytes:
        """One line (through LF), at most ``size`` bytes."""
        raise NotImplementedError

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Lines until the end (or until ``hint`` bytes have been read)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[bytes]:
        """The remaining lines."""
        raise NotImplementedError

    @property
    def complete(self) -> bool:
        """Whether the whole body (and, if chunked, its trailer) has been read."""
        raise NotImplementedError

    def discard(self, limit: int) -> bool:
        """Read and drop what is left, up to ``limit`` bytes; True if the end was reached.

        After a response, so the connection can carry the next request; on
        False (too much left, or an error) the caller closes the connection.
        Never raises.
        """
        raise NotImplementedError
