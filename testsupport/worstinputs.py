"""The slowest inputs we know for every parsing step, at the largest size the limits let in.

Why this module exists: a parser whose cost grows faster than its input lets
one client stall every connection (``re`` holds the GIL).  A backtracking
regex shows it only on crafted shapes: whitespace runs ended by a bare CR,
token runs without their delimiter, quoted strings left open, separators
repeated.  The benchmark (``bench/parse_worst.py``) times each shape and the
test (``tests/test_parse_linear.py``) bounds it; both take the shapes from
here, built at the maximal size of a set of ``Limits``: the WSGI server's
(8,190-byte lines) and the handler server's (the stdlib's 65,536).

Each ``Case`` parses its bytes through the same functions the servers call
(``parse_request_line``, ``read_fields`` on the buffered fast path and line
by line, ``framing``, ``Body``, ``proxy.forwarded``, the access-log
formatters) and swallows only the documented errors.  Pure: thread-safe.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from graceserve.http import proxy
from graceserve.http.accesslog import AccessRecord, format_combined, format_json
from graceserve.http.body import Body
from graceserve.http.framing import framing
from graceserve.http.parse import (
    Framing,
    IncompleteBodyError,
    IncompleteHeadError,
    Limits,
    RequestError,
    parse_request_line,
    read_fields,
)

__all__ = ["BODY_SIZE", "HANDLER_LIMITS", "WSGI_LIMITS", "Case", "cases"]

WSGI_LIMITS = Limits()
HANDLER_LIMITS = Limits(request_line=65536, fields=100, field_size=65536)
BODY_SIZE = 512 * 1024
"""Bytes of the chunked-body shapes (a body has no limit but ``--max-body-size``)."""
_BUFFER = 65536  # the WSGI connection's rfile buffer
_ERRORS = (RequestError, IncompleteHeadError, IncompleteBodyError)
_CHUNKED = Framing(None, True, True, False)
_TRUST_ANY = proxy.Trust(True, ())


@dataclass(frozen=True)
class Case:
    """One input and the parsing step it goes through."""

    step: str
    shape: str
    size: int
    """Bytes of input."""
    run: Callable[[], object]
    """Parse the input once (documented errors swallowed)."""


def _head(raw: bytes, limits: Limits, by_line: bool) -> Callable[[], object]:
    def run() -> object:
        rfile = io.BufferedReader(io.BytesIO(raw), _BUFFER)
        readline: Callable[[int], bytes] = rfile.readline
        if by_line:  # not the BufferedReader's own method: no peek, one line per call

            def readline(size: int) -> bytes:
                return rfile.readline(size)

        try:
            line = parse_request_line(readline(limits.request_line + 2), limits)
            return framing(line, read_fields(readline, limits), limits)
        except _ERRORS as error:
            return error

    return run


def _request_line(raw: bytes, limits: Limits) -> Callable[[], object]:
    def run() -> object:
        try:
            line = parse_request_line(raw + b"\r\n", limits)
            return framing(line, [("Host", "h")], limits)
        except _ERRORS as error:
            return error

    return run


def _chunked(raw: bytes, limits: Limits) -> Callable[[], object]:
    def run() -> object:
        body = Body(io.BufferedReader(io.BytesIO(raw), _BUFFER), _CHUNKED, limits)
        try:
            return len(body.read())
        except _ERRORS as error:
            return error

    return run


def _forwarded(fields: dict[str, str]) -> Callable[[], object]:
    return lambda: proxy.forwarded("127.0.0.1", fields, _TRUST_ANY)


def _access(text: str) -> Callable[[], object]:
    record = AccessRecord(0.0, text, "GET", text, text, "HTTP/1.1", 200, 1, 0.1, text, text)
    return lambda: (format_combined(record), format_json(record))


def _fit(prefix: bytes, unit: bytes, size: int, suffix: bytes = b"") -> bytes:
    """``prefix`` + ``unit`` repeated + ``suffix``, ``size`` bytes at most (as close as fits)."""
    count = max((size - len(prefix) - len(suffix)) // len(unit), 0)
    return prefix + unit * count + suffix


# Field-line shapes: (name, builder of one line of exactly ``size`` bytes, no CRLF).
_FIELD_SHAPES: list[tuple[str, Callable[[int], bytes]]] = [
    ("valid", lambda n: _fit(b"X: ", b"a", n)),
    ("tabs then bare CR", lambda n: _fit(b"X:", b"\t", n, b"\ra")),
    ("spaces then bare CR", lambda n: _fit(b"X:", b" ", n, b"\ra")),
    ("value, tab, repeated, then bare CR", lambda n: _fit(b"X: ", b"a\t", n, b"\ra")),
    ("only whitespace", lambda n: _fit(b"X:", b" \t", n)),
    ("trailing whitespace", lambda n: _fit(b"X: a", b"\t", n)),
    ("bare CRs", lambda n: _fit(b"X: ", b"\r", n)),
    ("CR space pairs", lambda n: _fit(b"X: ", b"\r ", n)),
    ("name without a colon", lambda n: _fit(b"", b"a", n)),
    ("colons", lambda n: _fit(b"X", b":", n)),
    ("control byte at the end", lambda n: _fit(b"X: ", b"a", n, b"\x01")),
    ("obs-fold", lambda n: _fit(b" ", b"a", n)),
    ("space before the colon", lambda n: _fit(b"X", b" ", n, b":a")),
]


def _field_block(shape: Callable[[int], bytes], limits: Limits, ending: bytes) -> bytes:
    return (shape(limits.field_size) + ending) * limits.fields + ending


# Request-line shapes: one line of ``size`` bytes (no CRLF).
_LINE_SHAPES: list[tuple[str, Callable[[int], bytes]]] = [
    ("valid", lambda n: _fit(b"GET /", b"a", n, b" HTTP/1.1")),
    ("method only", lambda n: _fit(b"", b"A", n)),
    ("spaces", lambda n: _fit(b"GET", b" /", n, b" HTTP/1.1")),
    ("bad version", lambda n: _fit(b"GET ", b"/", n, b" HTTP/1.1x")),
    ("control byte at the end", lambda n: _fit(b"GET /", b"a", n, b"\x01")),
    ("absolute-form, long host", lambda n: _fit(b"GET http://", b"a", n, b"/ HTTP/1.1")),
    ("absolute-form, dots and colons", lambda n: _fit(b"GET http://", b".:", n, b"/ HTTP/1.1")),
    ("absolute-form, percent runs", lambda n: _fit(b"GET http://", b"%a", n, b"/ HTTP/1.1")),
    ("absolute-form, open bracket", lambda n: _fit(b"GET http://[", b":", n, b"/ HTTP/1.1")),
    ("absolute-form, userinfo runs", lambda n: _fit(b"GET http://", b"a@", n, b"/ HTTP/1.1")),
    ("absolute-form, scheme run", lambda n: _fit(b"GET ", b"a", n, b":/ HTTP/1.1")),
    ("authority-form, no port", lambda n: _fit(b"CONNECT ", b"a", n, b": HTTP/1.1")),
    ("fragment runs", lambda n: _fit(b"GET /", b"#", n, b" HTTP/1.1")),
]

# Host field values: one value that fills a field line.
_HOST_SHAPES: list[tuple[str, Callable[[int], bytes]]] = [
    ("reg-name", lambda n: _fit(b"", b"a", n)),
    ("percent signs", lambda n: _fit(b"", b"%", n)),
    ("percent-encoded, then bad", lambda n: _fit(b"", b"%41", n, b"%")),
    ("open IP literal", lambda n: _fit(b"[", b":", n)),
    ("IP literal, long", lambda n: _fit(b"[", b"0:", n, b"]")),
    ("long port", lambda n: _fit(b"a:", b"1", n)),
    ("colons", lambda n: _fit(b"a", b":", n)),
]

# Chunk-size lines: one line of ``size`` bytes (no CRLF).
_CHUNK_SHAPES: list[tuple[str, Callable[[int], bytes]]] = [
    ("extensions, then a bad byte", lambda n: _fit(b"1", b";a", n, b"\x01")),
    ("extension values, then a bad byte", lambda n: _fit(b"1", b";a=b", n, b"\x01")),
    ("open quoted string", lambda n: _fit(b'1;a="', b"\\a", n)),
    ("escaped quotes", lambda n: _fit(b'1;a="', b'\\"', n)),
    ("whitespace before the semicolon", lambda n: _fit(b"1", b" \t", n, b";a\x01")),
    ("whitespace runs around =", lambda n: _fit(b"1;a", b" ", n, b"=")),
    ("leading zeros", lambda n: _fit(b"", b"0", n, b"1")),
    ("hex digits", lambda n: _fit(b"", b"f", n)),
    ("semicolons", lambda n: _fit(b"1", b";", n)),
]


def cases(limits: Limits) -> list[Case]:
    """Every shape, at the largest input ``limits`` let in (or just past it)."""
    found: list[Case] = []
    start = b"GET / HTTP/1.1\r\n"
    for name, shape in _FIELD_SHAPES:
        for ending, how in ((b"\r\n", "CRLF"), (b"\n", "LF")):
            block = start + _field_block(shape, limits, ending)
            found.append(Case("head, buffered", f"{name} ({how})", len(block),
                              _head(block, limits, False)))  # fmt: skip
            found.append(Case("head, line by line", f"{name} ({how})", len(block),
                              _head(block, limits, True)))  # fmt: skip
        trailer = b"0\r\n" + _field_block(shape, limits, b"\r\n")
        found.append(Case("chunked trailer", name, len(trailer), _chunked(trailer, limits)))
    for name, shape in _LINE_SHAPES:
        line = shape(limits.request_line)
        found.append(Case("request line", name, len(line), _request_line(line, limits)))
    for name, shape in _HOST_SHAPES:
        value = shape(limits.field_size - len(b"Host: "))
        head = start + b"Host: " + value + b"\r\n\r\n"
        found.append(Case("Host", name, len(head), _head(head, limits, False)))
    for name, shape in _CHUNK_SHAPES:
        line = shape(limits.field_size) + b"\r\n"
        body = line + b"a\r\n0\r\n\r\n"
        found.append(Case("chunk-size line", name, len(body), _chunked(body, limits)))
    valid_line = _fit(b"1", b";a=b", limits.field_size) + b"\r\na\r\n"
    many = valid_line * (BODY_SIZE // len(valid_line)) + b"0\r\n\r\n"
    found.append(Case("chunk-size line", "valid extensions, many chunks", len(many),
                      _chunked(many, limits)))  # fmt: skip
    tiny = b"1\r\na\r\n" * (BODY_SIZE // 6) + b"0\r\n\r\n"
    found.append(Case("chunked body", "one-byte chunks", len(tiny), _chunked(tiny, limits)))
    found.extend(_forwarded_cases(limits))
    text = '\x85"\\ \x7f' * (limits.field_size // 5)  # in five fields of the record
    found.append(Case("access log", "unprintable and quote bytes", len(text) * 5, _access(text)))
    return found


def _forwarded_cases(limits: Limits) -> list[Case]:
    """X-Forwarded-* and Forwarded values: ``fields`` field lines of ``field_size``
    bytes each, joined with ``,`` (as the servers join repeated fields)."""
    line = limits.field_size - len("X-Forwarded-For: ")

    def joined(unit: str, prefix: str = "", suffix: str = "") -> str:
        one = prefix + unit * max((line - len(prefix) - len(suffix)) // len(unit), 1) + suffix
        return ",".join([one] * limits.fields)

    shapes: list[tuple[str, dict[str, str]]] = [
        ("X-Forwarded-For, many addresses", {"x-forwarded-for": joined("1.2.3.4, ")}),
        ("X-Forwarded-For, zone id", {"x-forwarded-for": joined("a", "fe80::1%")}),
        ("X-Forwarded-For, open bracket", {"x-forwarded-for": joined(":", "[")}),
        ("X-Forwarded-For, colons", {"x-forwarded-for": joined(":")}),
        ("X-Forwarded-For, ports", {"x-forwarded-for": joined("1.2.3.4:80,")}),
        ("X-Forwarded-Host, bad end", {"x-forwarded-host": joined("a", "", "%")}),
        ("X-Forwarded-Host, percent runs", {"x-forwarded-host": joined("%41", "", "%")}),
        ("X-Forwarded-Proto, many", {"x-forwarded-proto": joined("https,")}),
        ("Forwarded, many elements", {"forwarded": joined("for=1.2.3.4;proto=http,")}),
        ("Forwarded, open quote", {"forwarded": joined("\\a", 'for="')}),
        ("Forwarded, escaped quotes", {"forwarded": joined('\\"', 'for="', '"')}),
        ("Forwarded, whitespace runs", {"forwarded": joined(" ", "for", "=a")}),
        ("Forwarded, semicolons", {"forwarded": joined(";", "for=1.2.3.4")}),
    ]
    return [
        Case("forwarded", name, sum(map(len, fields.values())), _forwarded(fields))
        for name, fields in shapes
    ]


def _fits(unit: str, size: int) -> str:
    return unit * max(size // len(unit), 1)
