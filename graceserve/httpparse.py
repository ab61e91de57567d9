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

How it is fast: a head is read with the buffered file's own ``readline``
(C code), one call per line; the field lines are joined once, decoded once
(latin-1) and checked and split by a single precompiled regex anchored at
each line start, whose ``findall`` returns the ``(name, value)`` pairs
directly.  A malformed block is diagnosed (slowly, line by line) only once
it has failed.  ``to_message`` fills an ``HTTPMessage``'s header list
directly instead of parsing text again.  ``Body`` lives in ``httpbody``
(re-exported here).
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graceserve.httpbody import Body

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


_DEFAULT = Limits()

# RFC 9110 5.6.2: tchar; as a regex character class body (str and bytes alike).
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"

# method SP request-target SP HTTP-version, or the HTTP/0.9 form without a
# version.  The target may hold any visible byte, obs-text included (raw
# UTF-8 paths are common); never whitespace, controls or DEL.
_REQUEST_LINE = re.compile(
    rb"([" + _TCHAR.encode() + rb"]+) ([\x21-\x7e\x80-\xff]+)(?: (HTTP/[0-9]\.[0-9]))?"
)
_VERSIONS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}

# One field line, CRLF (or LF) included, value without its surrounding OWS.
# Anchored at line starts (re.M), so findall over the joined block finds
# exactly one match per valid line and none in an invalid one.
_FIELD_LINE = re.compile(
    r"^([" + _TCHAR + r"]+):[ \t]*"
    r"((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*\r?\n",
    re.M,
)
_TOKEN = re.compile(r"[" + _TCHAR + r"]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# Request-target forms (RFC 9112 3.2) other than origin-form ("/...") and "*".
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*://")
_HOST = r"(?:\[[0-9A-Za-z:.%_~\-]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)"
_AUTHORITY_FORM = re.compile(_HOST + r":[0-9]+")
_HOST_FIELD = re.compile(_HOST + r"(?::[0-9]*)?")

# The fields framing() looks at, by lower-cased name.
_CL, _TE, _HOST_N, _CONN, _EXPECT = range(5)
_FRAMING_FIELDS = {
    "content-length": _CL,
    "transfer-encoding": _TE,
    "host": _HOST_N,
    "connection": _CONN,
    "expect": _EXPECT,
}


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
    return RequestLine(method.decode("ascii"), target.decode("latin-1"), version)


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
    if re.fullmatch(rb"[" + _TCHAR.encode() + rb"]+", parts[0]) is None:
        return "bad method token"
    return "malformed HTTP version"


def read_fields(readline: ReadLine, limits: Limits = _DEFAULT) -> list[tuple[str, str]]:
    """Read header field lines up to and including the blank line.

    Returns ``(name, value)`` pairs in order, names as sent, values with
    surrounding whitespace removed, both latin-1 decoded.  Raises
    IncompleteHeadError at EOF before the blank line; RequestError 431 over
    ``limits.fields`` or ``limits.field_size``; 400 for obs-fold (a line that
    starts with SP/HTAB), whitespace before the colon, an empty or non-token
    name, a bare CR, NUL or other control bytes (HTAB allowed) in a value.
    A line may end in CRLF or a bare LF (RFC 9112 2.2).
    """
    most = limits.field_size + 2
    lines: list[bytes] = []
    append = lines.append
    for _ in range(limits.fields):
        line = readline(most)
        if len(line) < 3:  # the blank line, or too short to be "n:" + LF
            if line == b"\r\n" or line == b"\n":
                break
            _check_line(line, most)
        elif line[-1] != 10 or len(line) == most:
            _check_line(line, most)
        append(line)
    else:
        line = readline(most)
        if line != b"\r\n" and line != b"\n":
            if not line:
                raise IncompleteHeadError("EOF inside the request head")
            raise RequestError(431, f"more than {limits.fields} header fields")
    fields: list[tuple[str, str]] = _FIELD_LINE.findall(b"".join(lines).decode("latin-1"))
    if len(fields) != len(lines):
        raise RequestError(400, _field_problem(lines))
    return fields


def _check_line(line: bytes, most: int) -> None:
    """Raise for a field line that hit EOF or the size limit; pass one that did not."""
    if len(line) == most:
        if line[-2:] != b"\r\n":
            raise RequestError(431, f"header field line longer than {most - 2} bytes")
    elif not line.endswith(b"\n"):
        raise IncompleteHeadError("EOF inside the request head")


def _field_problem(lines: list[bytes]) -> str:
    """Why a header block that failed the regex is bad (slow path)."""
    for raw in lines:
        text = raw.decode("latin-1")
        if _FIELD_LINE.fullmatch(text):
            continue
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
        if text[:1] in (" ", "\t"):
            return "obs-fold (a field line starting with whitespace) is not allowed"
        name, colon, value = text.partition(":")
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
        break
    return "malformed header field line"


def framing(line: RequestLine, fields: list[tuple[str, str]], limits: Limits = _DEFAULT) -> Framing:
    """Decide body framing and persistence; reject what RFC 9112 says to reject.

    RequestError: 400 for ``Content-Length`` together with
    ``Transfer-Encoding``, conflicting/list-form/non-decimal
    ``Content-Length``, a missing ``Host`` on HTTP/1.1, a request-target in
    the wrong form for its method (``*`` only with OPTIONS, authority-form
    only with CONNECT, else origin-form or absolute-form); 501 for a
    Transfer-Encoding whose last coding is not ``chunked`` (or any
    Transfer-Encoding on HTTP/1.0); 413 for a ``Content-Length`` over
    ``limits.body``.

    Also 400 for: two ``Content-Length`` fields even with equal values (RFC
    9110 8.6 lets a recipient reject them; a proxy may have picked either),
    more than one ``Host`` or a malformed one, an empty ``Transfer-Encoding``
    or ``chunked`` applied twice.  501 for a coding before ``chunked`` (none
    is implemented).
    """
    _check_target(line.method, line.target)
    version = line.version
    if version == "HTTP/0.9":
        return Framing(None, False, False, False)
    lengths: list[str] = []
    codings: list[str] = []
    hosts: list[str] = []
    connection: list[str] = []
    expect = False
    for name, value in fields:
        which = _FRAMING_FIELDS.get(name.lower())
        if which is None:
            continue
        if which == _CL:
            lengths.append(value)
        elif which == _TE:
            codings.append(value)
        elif which == _HOST_N:
            hosts.append(value)
        elif which == _CONN:
            connection.append(value)
        elif value.lower() == "100-continue":
            expect = True
    if len(hosts) > 1:
        raise RequestError(400, "more than one Host header field")
    if hosts:
        if _HOST_FIELD.fullmatch(hosts[0]) is None:
            raise RequestError(400, "malformed Host header field")
    elif version == "HTTP/1.1":
        raise RequestError(400, "missing Host header field")
    length: int | None = None
    chunked = False
    if codings:
        if lengths:
            raise RequestError(400, "Content-Length together with Transfer-Encoding")
        chunked = _chunked(codings, version)
    elif lengths:
        length = _content_length(lengths, limits)
    if connection:
        tokens = {token.strip() for token in ",".join(connection).lower().split(",")}
        if version == "HTTP/1.1":
            keep_alive = "close" not in tokens
        else:
            keep_alive = "keep-alive" in tokens and "close" not in tokens
    else:
        keep_alive = version == "HTTP/1.1"
    return Framing(length, chunked, keep_alive, expect and version == "HTTP/1.1")


def _check_target(method: str, target: str) -> None:
    """400 unless the request-target has the form its method allows (RFC 9112 3.2)."""
    if target[0] == "/" or _ABSOLUTE_FORM.match(target):
        if method == "CONNECT":
            raise RequestError(400, "CONNECT needs an authority-form target (host:port)")
    elif target == "*":
        if method != "OPTIONS":
            raise RequestError(400, "the asterisk-form target is only for OPTIONS")
    elif _AUTHORITY_FORM.fullmatch(target):
        if method != "CONNECT":
            raise RequestError(400, "the authority-form target is only for CONNECT")
    else:
        raise RequestError(400, "malformed request-target")


def _chunked(values: list[str], version: str) -> bool:
    """Check the Transfer-Encoding field values: True, or raise 400/501."""
    if version != "HTTP/1.1":
        raise RequestError(501, "Transfer-Encoding on an HTTP/1.0 request")
    codings = [c.strip().lower() for c in ",".join(values).split(",")]
    codings = [c for c in codings if c]
    if not codings:
        raise RequestError(400, "empty Transfer-Encoding")
    if codings[-1] != "chunked":
        raise RequestError(501, "Transfer-Encoding does not end in chunked")
    if "chunked" in codings[:-1]:
        raise RequestError(400, "chunked applied more than once")
    if len(codings) > 1:
        raise RequestError(501, f"transfer coding {codings[0]!r} is not implemented")
    return True


def _content_length(values: list[str], limits: Limits) -> int:
    """The one decimal Content-Length, or raise 400/413."""
    if len(values) > 1:
        raise RequestError(400, "more than one Content-Length header field")
    value = values[0]
    if not (value.isdigit() and value.isascii()):
        raise RequestError(400, "Content-Length is not a single decimal number")
    if len(value) > 18:
        raise RequestError(413, "Content-Length too large")
    length = int(value)
    if limits.body is not None and length > limits.body:
        raise RequestError(413, f"request body larger than {limits.body} bytes")
    return length


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


def __getattr__(name: str) -> Any:
    # Body lives in httpbody, which imports this module: resolve it lazily
    # so either module can be imported first.
    if name == "Body":
        from graceserve.httpbody import Body

        return Body
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
