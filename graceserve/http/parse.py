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

How it is fast: no per-byte Python.  A head already in the socket file's
buffer is taken with one ``peek``/``read`` (else one C ``readline`` per
line); its bytes are checked at once with ``bytes.translate`` and counts,
it is decoded once and split by one precompiled regex whose ``findall``
yields the ``(name, value)`` pairs.  A bad block is diagnosed slowly, only
once it has failed.  ``to_message`` fills an ``HTTPMessage``'s header list
directly.  The framing rules live in ``httpframing`` and the body reader in
``httpbody``; both build on this module, never the reverse.
"""

from __future__ import annotations

import http.client
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "Framing",
    "IncompleteBodyError",
    "IncompleteHeadError",
    "Limits",
    "RequestError",
    "RequestLine",
    "parse_request_line",
    "read_fields",
    "read_request_line",
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


class RequestLine(NamedTuple):
    """A parsed request line.  ``version`` is ``"HTTP/1.1"``, ``"HTTP/1.0"`` or
    ``"HTTP/0.9"`` (a line of just ``METHOD target``).

    Immutable.  A named tuple, not a frozen dataclass: one is made per request, and
    a frozen dataclass's ``__init__`` (an ``object.__setattr__`` per field) took a
    third of ``parse_request_line``'s time."""

    method: str
    target: str
    version: str


_new_line = tuple.__new__  # RequestLine(...) without its Python-level __new__


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


_DEFAULT = Limits()

# RFC 9110 5.6.2: tchar; as a regex character class body (str and bytes alike).
TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"  # RFC 9110 5.6.2 tchar, as a regex class body

# method SP request-target SP HTTP-version, or the HTTP/0.9 form without a
# version.  The target may hold any visible byte, obs-text included (raw
# UTF-8 paths are common); never whitespace, controls, DEL, or "#" (no form
# of request-target has a fragment, RFC 9112 3.2).  Linear: the three parts
# are separated by the one byte none of them may hold.
_REQUEST_LINE = re.compile(
    rb"([" + TCHAR.encode() + rb"]+) ([\x21\x22\x24-\x7e\x80-\xff]+)(?: (HTTP/[0-9]\.[0-9]))?"
)
_VERSIONS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}

# Field lines, over "\n" + a block whose lines all end in CRLF (no other LF)
# and whose bytes were checked (no control bytes but HTAB, CR, LF): one match
# per valid line (each starts at an LF), none for an invalid one (a bare CR
# included).  Trailing OWS stays in the value; _crlf_fields strips it.
# Linear (Python 3.10 has no possessive quantifiers): the value may not start
# with the whitespace the OWS before it takes, so a line splits one way only,
# and a line that fails (a bare CR after a run of tabs) is read once, not once
# per tab as with ``[ \t]*([^\r]*)``, which took 0.3 s for an 8 KB line.  As
# fast as that one on a valid head.
_CRLF_FIELD = re.compile(r"\n([" + TCHAR + r"]+):[ \t]*(?![ \t])([^\r]*)\r(?=\n)")
_FIELD_BYTES = bytes([9, 10, 13, *range(0x20, 0x7F), *range(0x80, 0x100)])
# Each byte to 0 if it may be in a field block, else to 1: ``1 in block.translate(...)``
# finds a bad byte twice as fast as ``translate(None, _FIELD_BYTES)``, which builds its
# table of deleted bytes anew at every call.
_FIELD_CHECK = bytes(0 if byte in _FIELD_BYTES else 1 for byte in range(256))
_TOKEN = re.compile(r"[" + TCHAR + r"]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def read_request_line(readline: ReadLine, limits: Limits = _DEFAULT) -> RequestLine | None:
    """Read and parse the request line; None at EOF before any byte of it.

    One empty line before it is skipped (RFC 9112 2.2: a client may send a
    CRLF after a POST body).  Reads at most ``limits.request_line + 2`` bytes
    per line, so a line exactly at the limit passes.  Raises as
    ``parse_request_line``.
    """
    most = limits.request_line + 2
    line = readline(most)
    if line == b"\r\n" or line == b"\n":
        line = readline(most)
    if not line:
        return None
    return parse_request_line(line, limits)


def parse_request_line(line: bytes, limits: Limits = _DEFAULT) -> RequestLine:
    """Parse ``METHOD SP request-target SP HTTP-version CRLF`` (LF alone tolerated).

    ``line`` is what ``readline`` returned, line ending included: read it with
    ``readline(limits.request_line + 2)`` so a line exactly at the limit fits.
    Raises RequestError: 414 over ``limits.request_line``; 400 for a bad
    method token, a target with whitespace/control bytes, extra spaces, or a
    malformed version; 505 for a well-formed but unsupported version (not
    1.0/1.1).  ``METHOD target`` with no version parses as HTTP/0.9 (the
    caller decides how to answer it).  IncompleteHeadError for a line with
    no line ending that is not over the limit (EOF inside it).
    """
    if line[-2:] == b"\r\n":
        text = line[:-2]
    elif line[-1:] == b"\n":
        text = line[:-1]
    elif len(line) > limits.request_line:
        raise RequestError(414, "request line too long")
    else:
        raise IncompleteHeadError("EOF inside the request line")
    if len(text) > limits.request_line:
        raise RequestError(414, "request line too long")
    match = _REQUEST_LINE.fullmatch(text)
    if match is None:
        raise RequestError(400, _request_line_problem(text))
    method, target, raw_version = match.groups()
    if raw_version is None:
        version = "HTTP/0.9"
    else:
        found = _VERSIONS.get(raw_version)
        if found is None:
            raise RequestError(505, f"{raw_version.decode('ascii')} is not supported")
        version = found
    return _new_line(RequestLine, (method.decode("ascii"), target.decode("latin-1"), version))


def _request_line_problem(text: bytes) -> str:
    """Why a request line that failed the regex is bad (slow path)."""
    if not text:
        return "empty request line"
    if re.search(rb"[\x00-\x1f\x7f]", text):
        return "control character in the request line"
    parts = text.split(b" ")
    if len(parts) > 3 or b"" in parts:
        return "malformed request line (extra or missing spaces)"
    if len(parts) == 1:
        return "malformed request line (no request-target)"
    if b"#" in parts[1]:
        return "fragment (#) in the request-target"
    if re.fullmatch(rb"[" + TCHAR.encode() + rb"]+", parts[0]) is None:
        return "bad method token"
    return "malformed HTTP version"


def read_fields(
    readline: ReadLine,
    limits: Limits = _DEFAULT,
    bare_lf: bool = True,
    on_line: Callable[[bytes], object] | None = None,
) -> list[tuple[str, str]]:
    """Read header field lines up to and including the blank line.

    Returns ``(name, value)`` pairs in order, names as sent, values with
    surrounding whitespace removed, both latin-1 decoded.  Raises
    IncompleteHeadError at EOF before the blank line; RequestError 431 over
    ``limits.fields`` or ``limits.field_size``; 400 for obs-fold (a line that
    starts with SP/HTAB), whitespace before the colon, an empty or non-token
    name, a bare CR, NUL or other control bytes (HTAB allowed) in a value.
    A line may end in CRLF or, with ``bare_lf`` (a head: RFC 9112 2.2), a
    bare LF; without it (a chunked trailer, RFC 9112 7.1) a bare LF is a 400.
    A ``field_size`` counts a line's bytes without its line ending.

    When ``readline`` is an ``io.BufferedReader``'s (a socket's
    ``makefile("rb")``) and the whole block is in its buffer, the block is
    taken in one ``read``; anything unusual (bare LF, a limit reached, a
    block still arriving) goes line by line: same result, same errors.
    ``on_line``, if given, is called with each line read line by line (the
    blank line included; never for a block taken at once), before the line is
    checked; it may raise RequestError to refuse the head (the server's
    memory budget for long heads: ``graceserve.http.headbudget``).
    """
    rfile = getattr(readline, "__self__", None)
    if isinstance(rfile, io.BufferedReader):
        buffered = _buffered_block(rfile, limits)
        if buffered is not None:
            return _crlf_fields(*buffered)
    most = limits.field_size + 2
    lines: list[bytes] = []
    append = lines.append
    for _ in range(limits.fields):
        line = readline(most)
        if on_line is not None:
            on_line(line)
        if len(line) < 3:  # the blank line, or too short to be "n:" + LF
            if line == b"\r\n" or line == b"\n":
                break
            _check_line(line, most)
        elif line[-1] != 10 or len(line) == most:
            _check_line(line, most)
        append(line)
    else:
        line = readline(most)
        if on_line is not None:
            on_line(line)
        if line != b"\r\n" and line != b"\n":
            if not line:
                raise IncompleteHeadError("EOF inside the request head")
            raise RequestError(431, f"more than {limits.fields} header fields")
    block = b"".join(lines)
    if block.count(b"\r\n") != len(lines) or line == b"\n":  # a bare LF somewhere
        if not bare_lf:
            raise RequestError(400, "a line of the chunked trailer ends in a bare LF, not CRLF")
        block = b"".join(x if x[-2:] == b"\r\n" else x[:-1] + b"\r\n" for x in lines)
    return _crlf_fields(block, len(lines))


def _buffered_block(rfile: io.BufferedReader, limits: Limits) -> tuple[bytes, int] | None:
    """Take the field lines (CRLF ended) and the blank line at once, if all are buffered.

    Returns the field lines and their count, or None (nothing consumed).
    """
    buffer = rfile.peek(1)
    if buffer[:2] == b"\r\n":
        rfile.read(2)
        return b"", 0
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    block = buffer[: end + 2]
    count = block.count(b"\n")
    if count > limits.fields or count != block.count(b"\r\n"):
        return None
    if len(block) > limits.field_size and max(map(len, block.split(b"\r\n"))) > limits.field_size:
        return None
    rfile.read(end + 4)
    return block, count


def _crlf_fields(block: bytes, count: int) -> list[tuple[str, str]]:
    """Check and split ``count`` field lines, each ended by CRLF (no other LF).

    A bare CR is caught by the regex: a line holding one does not match.
    """
    if 1 in block.translate(_FIELD_CHECK):
        raise RequestError(400, _field_problem(block))
    text = block.decode("latin-1")
    fields: list[tuple[str, str]] = _CRLF_FIELD.findall("\n" + text)
    if len(fields) != count:
        raise RequestError(400, _field_problem(block))
    if " \r" in text or "\t\r" in text:
        return [(name, value.rstrip(" \t")) for name, value in fields]
    return fields


def _check_line(line: bytes, most: int) -> None:
    """Raise for a field line that hit EOF or the size limit; pass one that did not."""
    if len(line) == most:
        if line[-2:] != b"\r\n":
            raise RequestError(431, f"header field line longer than {most - 2} bytes")
    elif not line.endswith(b"\n"):
        raise IncompleteHeadError("EOF inside the request head")


def _field_problem(block: bytes) -> str:
    """Why a CRLF-ended field block that failed the checks is bad (slow path)."""
    for line in block.decode("latin-1").split("\r\n")[:-1]:
        name, colon, value = line.partition(":")
        if line[:1] in (" ", "\t"):
            return "obs-fold (a field line starting with whitespace) is not allowed"
        if not colon:
            return "header field line without a colon"
        if not name:
            return "empty header field name"
        if name[-1] in " \t":
            return "whitespace before the colon in a header field"
        if _TOKEN.fullmatch(name) is None:
            return "bad character in a header field name"
        if "\r" in value:
            return "bare CR in a header field value"
        if "\x00" in value:
            return "NUL in a header field value"
        if _CONTROL.search(value):
            return "control character in a header field value"
    return "malformed header field line"


def to_message(fields: list[tuple[str, str]]) -> http.client.HTTPMessage:
    """The fields as the ``http.client.HTTPMessage`` that ``BaseHTTPRequestHandler.headers`` is.

    Cheap: no ``email.parser``.  ``get``, ``get_all``, ``items``, ``in`` and
    ``[]`` behave as on a parsed message (compat32 stores headers as the
    very ``(name, value)`` pairs given here, and a parsed head's payload is
    ``""``).  The list is copied: changing the message leaves ``fields`` as
    they were.
    """
    message = http.client.HTTPMessage()
    state = vars(message)
    state["_headers"] = list(fields)
    state["_payload"] = ""
    return message
