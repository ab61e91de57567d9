"""graceserve.http.parse and httpbody: every rule, limit and body behaviour, without sockets.

Heads and bodies are read from ``io.BytesIO`` / ``io.BufferedReader``, as the
server reads them from a socket's buffered file.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graceserve.http.body import Body
from graceserve.http.framing import framing
from graceserve.http.parse import (
    Framing,
    IncompleteBodyError,
    IncompleteHeadError,
    Limits,
    RequestError,
    RequestLine,
    parse_request_line,
    read_fields,
    read_request_line,
    to_message,
)

DEFAULT = Limits()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(
    raw: bytes, limits: Limits = DEFAULT
) -> tuple[RequestLine, list[tuple[str, str]], Framing]:
    """Request line, fields and framing of a whole head."""
    rfile = io.BufferedReader(io.BytesIO(raw))
    line = read_request_line(rfile.readline, limits)
    assert line is not None
    fields = read_fields_every_way(rfile.read(), limits)
    return line, fields, framing(line, fields, limits)


def status(raw: bytes, limits: Limits = DEFAULT) -> int | None:
    """The status a head is refused with, or None if it is accepted."""
    try:
        parse(raw, limits)
    except RequestError as error:
        message, code = error.message, error.status
    else:
        return None
    assert message
    assert "\n" not in message
    return code


def get(fields: bytes = b"", target: bytes = b"/", version: bytes = b"HTTP/1.1") -> bytes:
    """A GET head with Host and the given extra field lines."""
    return b"GET " + target + b" " + version + b"\r\nHost: example.com\r\n" + fields + b"\r\n"


def read_fields_every_way(raw: bytes, limits: Limits = DEFAULT) -> list[tuple[str, str]]:
    """``read_fields`` line by line (BytesIO), from a whole buffered block
    (BufferedReader) and from a block arriving in pieces (a 7-byte buffer):
    same fields, same bytes left, or the same error, which is raised."""
    outcomes: list[tuple[object, ...]] = []
    for rfile in (
        io.BytesIO(raw),
        io.BufferedReader(io.BytesIO(raw)),
        io.BufferedReader(io.BytesIO(raw), buffer_size=7),
    ):
        try:
            fields = read_fields(rfile.readline, limits)
        except RequestError as error:
            outcomes.append((RequestError, error.status, error.message))
        except IncompleteHeadError:
            outcomes.append((IncompleteHeadError,))
        else:
            outcomes.append((fields, rfile.read()))
    assert outcomes[1] == outcomes[0]
    assert outcomes[2] == outcomes[0]
    if outcomes[0][0] is RequestError:
        raise RequestError(*outcomes[0][1:])  # type: ignore[arg-type]
    if outcomes[0][0] is IncompleteHeadError:
        raise IncompleteHeadError
    return outcomes[0][0]  # type: ignore[return-value]


def fields_of(raw: bytes, limits: Limits = DEFAULT) -> list[tuple[str, str]]:
    return read_fields_every_way(raw, limits)


def field_status(raw: bytes, limits: Limits = DEFAULT) -> int | None:
    try:
        fields_of(raw, limits)
    except RequestError as error:
        return error.status
    return None


# -- request line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET / HTTP/1.1\r\n", ("GET", "/", "HTTP/1.1")),
        (b"POST /a?b=c HTTP/1.0\r\n", ("POST", "/a?b=c", "HTTP/1.0")),
        (b"GET / HTTP/1.1\n", ("GET", "/", "HTTP/1.1")),
        (b"OPTIONS * HTTP/1.1\r\n", ("OPTIONS", "*", "HTTP/1.1")),
        (b"CONNECT example.com:443 HTTP/1.1\r\n", ("CONNECT", "example.com:443", "HTTP/1.1")),
        (b"GET http://x.org/p HTTP/1.1\r\n", ("GET", "http://x.org/p", "HTTP/1.1")),
        (b"M-SEARCH * HTTP/1.1\r\n", ("M-SEARCH", "*", "HTTP/1.1")),
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\n", ("GET", "/caf\xc3\xa9", "HTTP/1.1")),
        (b"GET /\r\n", ("GET", "/", "HTTP/0.9")),
        (b"get / HTTP/1.1\r\n", ("get", "/", "HTTP/1.1")),
    ],
)
def test_request_line_accepted(raw: bytes, expected: tuple[str, str, str]) -> None:
    assert parse_request_line(raw) == RequestLine(*expected)


@pytest.mark.parametrize(
    "raw",
    [
        b"\r\n",
        b"GET\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET / HTTP/1.1 \r\n",
        b" GET / HTTP/1.1\r\n",
        b"GET /  HTTP/1.1\r\n",
        b"GET\t/ HTTP/1.1\r\n",
        b"GET /\tHTTP/1.1\r\n",
        b"G(T / HTTP/1.1\r\n",
        b"GE\x00T / HTTP/1.1\r\n",
        b"GET /a b HTTP/1.1\r\n",
        b"GET /\x00 HTTP/1.1\r\n",
        b"GET /\x7f HTTP/1.1\r\n",
        b"GET /\x1b HTTP/1.1\r\n",
        b"GET / HTTP/1.1\rX\r\n",
        b"GET / HTTP/1.1\r\r\n",
        b"GET / http/1.1\r\n",
        b"GET / HTTP/1\r\n",
        b"GET / HTTP/11.1\r\n",
        b"GET / HTTP/1.1.1\r\n",
        b"GET / HTTPS/1.1\r\n",
        b"GET / HTTP/1.1 extra\r\n",
    ],
)
def test_request_line_rejected_400(raw: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request_line(raw)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "raw", [b"GET /x#top HTTP/1.1\r\n", b"GET /x?a=1#top HTTP/1.1\r\n", b"GET # HTTP/1.1\r\n"]
)
def test_a_fragment_in_the_target_400(raw: bytes) -> None:
    # No form of request-target has a fragment (RFC 9112 3.2); a client strips it.
    with pytest.raises(RequestError) as caught:
        parse_request_line(raw)
    assert caught.value.status == 400
    assert caught.value.message == "fragment (#) in the request-target"


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0"])
def test_unknown_version_505(version: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request_line(b"GET / " + version + b"\r\n")
    assert caught.value.status == 505


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_request_line_limit_boundary(ending: bytes) -> None:
    limits = Limits(request_line=40)
    at = b"GET /" + b"a" * (40 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(at) == 40
    over = b"GET /" + b"a" * (41 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    rfile = io.BytesIO(at + ending + over + ending)
    assert read_request_line(rfile.readline, limits) == RequestLine(
        "GET", at[4:-9].decode(), "HTTP/1.1"
    )
    with pytest.raises(RequestError) as caught:
        read_request_line(rfile.readline, limits)
    assert caught.value.status == 414


def test_request_line_far_over_limit_414() -> None:
    rfile = io.BytesIO(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
    with pytest.raises(RequestError) as caught:
        read_request_line(rfile.readline, Limits(request_line=100))
    assert caught.value.status == 414


@pytest.mark.parametrize("raw", [b"", b"GET / HTT", b"GET / HTTP/1.1\r"])
def test_request_line_cut_short_is_incomplete(raw: bytes) -> None:
    with pytest.raises(IncompleteHeadError):
        parse_request_line(raw)


def test_read_request_line_eof_and_one_leading_empty_line() -> None:
    assert read_request_line(io.BytesIO(b"").readline) is None
    assert read_request_line(io.BytesIO(b"\r\n").readline) is None
    rfile = io.BytesIO(b"\r\nGET / HTTP/1.1\r\n")
    assert read_request_line(rfile.readline) == RequestLine("GET", "/", "HTTP/1.1")
    with pytest.raises(RequestError) as caught:
        read_request_line(io.BytesIO(b"\r\n\r\nGET / HTTP/1.1\r\n").readline)
    assert caught.value.status == 400


# -- header fields ---------------------------------------------------------------


def test_fields_names_as_sent_values_stripped() -> None:
    raw = (
        b"Host: example.com\r\n"
        b"x-lower:no-space\r\n"
        b"X-Pad: \t padded value \t \r\n"
        b"Empty:\r\n"
        b"Blank:   \r\n"
        b"Tabbed: a\tb  c\r\n"
        b"Latin: caf\xe9\x85\xff\r\n"
        b"Lf-Only: yes\n"
        b"Odd-Name!#$%&'*+-.^_`|~09: v\r\n"
        b"\r\n"
        b"NEXT"
    )
    rfile = io.BytesIO(raw)
    assert read_fields(rfile.readline) == [
        ("Host", "example.com"),
        ("x-lower", "no-space"),
        ("X-Pad", "padded value"),
        ("Empty", ""),
        ("Blank", ""),
        ("Tabbed", "a\tb  c"),
        ("Latin", "caf\xe9\x85\xff"),
        ("Lf-Only", "yes"),
        ("Odd-Name!#$%&'*+-.^_`|~09", "v"),
    ]
    assert rfile.read() == b"NEXT"


def test_no_fields_and_bare_lf_blank_line() -> None:
    assert fields_of(b"\r\n") == []
    assert fields_of(b"\n") == []
    assert fields_of(b"A: b\n\n") == [("A", "b")]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"A: b\r\n c\r\n\r\n", "obs-fold"),
        (b"A: b\r\n\tc\r\n\r\n", "obs-fold"),
        (b" A: b\r\n\r\n", "obs-fold"),
        (b"Content-Length : 5\r\n\r\n", "before the colon"),
        (b"Host\t: x\r\n\r\n", "before the colon"),
        (b"NoColon\r\n\r\n", "without a colon"),
        (b": value\r\n\r\n", "empty header field name"),
        (b"Ho st: x\r\n\r\n", "bad character"),
        (b"X(y): z\r\n\r\n", "bad character"),
        (b"X/y: z\r\n\r\n", "bad character"),
        (b"\xe9t\xe9: z\r\n\r\n", "bad character"),
        (b"A: b\rc\r\n\r\n", "bare CR"),
        (b"A: b\r\r\n\r\n", "bare CR"),
        (b"A: b\r\n\r\r\n\r\n", "without a colon"),
        (b"A: b\x00c\r\n\r\n", "NUL"),
        (b"A: \x00\r\n\r\n", "NUL"),
        (b"A: b\x01\r\n\r\n", "control character"),
        (b"A: b\x0bc\r\n\r\n", "control character"),
        (b"A: b\x0cc\r\n\r\n", "control character"),
        (b"A: b\x1fc\r\n\r\n", "control character"),
        (b"A: b\x7fc\r\n\r\n", "control character"),
        (b"A\x00: b\r\n\r\n", "bad character"),
    ],
)
def test_fields_rejected_400(raw: bytes, why: str) -> None:
    with pytest.raises(RequestError) as caught:
        fields_of(raw)
    assert caught.value.status == 400
    assert why in caught.value.message


def test_field_count_limit_boundary() -> None:
    limits = Limits(fields=5)
    five = b"".join(b"F%d: v\r\n" % i for i in range(5))
    assert len(fields_of(five + b"\r\n", limits)) == 5
    assert field_status(five + b"F5: v\r\n\r\n", limits) == 431


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_field_size_limit_boundary(ending: bytes) -> None:
    limits = Limits(field_size=20)
    at = b"Name: " + b"v" * 14
    assert len(at) == 20
    assert fields_of(at + ending + b"\r\n", limits) == [("Name", "v" * 14)]
    assert field_status(at + b"v" + ending + b"\r\n", limits) == 431
    assert field_status(at + b"v" * 1000 + ending + b"\r\n", limits) == 431


@pytest.mark.parametrize(
    "raw",
    [b"", b"A: b\r\n", b"A: b\r\nB: c", b"A: b\r\n\r", b"A", b"A:"],
)
def test_fields_cut_short_is_incomplete(raw: bytes) -> None:
    with pytest.raises(IncompleteHeadError):
        fields_of(raw)


def test_eof_right_after_the_field_count_limit_is_incomplete() -> None:
    with pytest.raises(IncompleteHeadError):
        fields_of(b"A: b\r\nB: c\r\n", Limits(fields=2))


# -- framing ---------------------------------------------------------------------


def test_framing_plain_get() -> None:
    _line, _fields, result = parse(get())
    assert result == Framing(None, False, True, False)
    assert not result.has_body


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (b"Content-Length: 5\r\n", Framing(5, False, True, False)),
        (b"Content-Length: 0\r\n", Framing(0, False, True, False)),
        (b"Content-Length:  007 \r\n", Framing(7, False, True, False)),
        (b"Transfer-Encoding: chunked\r\n", Framing(None, True, True, False)),
        (b"transfer-encoding: Chunked\r\n", Framing(None, True, True, False)),
        (b"Transfer-Encoding: ,chunked,\r\n", Framing(None, True, True, False)),
        (b"Connection: close\r\n", Framing(None, False, False, False)),
        (b"Connection: Keep-Alive, CLOSE\r\n", Framing(None, False, False, False)),
        (b"Connection: upgrade\r\nConnection: close\r\n", Framing(None, False, False, False)),
        (b"Connection: keep-alive\r\n", Framing(None, False, True, False)),
        (b"Expect: 100-continue\r\n", Framing(None, False, True, True)),
        (b"Expect: 100-Continue\r\n", Framing(None, False, True, True)),
        (b"Expect: something-else\r\n", Framing(None, False, True, False)),
    ],
)
def test_framing_http11(extra: bytes, expected: Framing) -> None:
    assert parse(get(extra))[2] == expected


@pytest.mark.parametrize(
    ("extra", "keep_alive"),
    [
        (b"", False),
        (b"Connection: keep-alive\r\n", True),
        (b"Connection: Keep-Alive\r\n", True),
        (b"Connection: upgrade, keep-alive\r\n", True),
        (b"Connection: keep-alive, close\r\n", False),
        (b"Connection: close\r\n", False),
    ],
)
def test_framing_http10_persistence(extra: bytes, keep_alive: bool) -> None:
    raw = b"GET / HTTP/1.0\r\n" + extra + b"Expect: 100-continue\r\n\r\n"
    assert parse(raw)[2] == Framing(None, False, keep_alive, False)


def test_field_names_are_case_insensitive() -> None:
    raw = (
        b"POST / HTTP/1.1\r\nHOST: a\r\ncOnTeNt-LeNgTh: 3\r\nCONNECTION: CLOSE\r\n"
        b"EXPECT: 100-continue\r\n\r\n"
    )
    assert parse(raw)[2] == Framing(3, False, False, True)
    assert status(b"GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n") == 400
    assert status(get(b"transfer-ENCODING: chunked\r\nCONTENT-length: 1\r\n")) == 400


def test_http10_without_host_and_http09() -> None:
    assert parse(b"GET / HTTP/1.0\r\n\r\n")[2] == Framing(None, False, False, False)
    assert parse(b"GET /\r\n\r\n")[2] == Framing(None, False, False, False)


def test_has_body() -> None:
    assert Framing(3, False, True, False).has_body
    assert Framing(None, True, True, False).has_body
    assert not Framing(0, False, True, False).has_body


@pytest.mark.parametrize(
    "extra",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: gzip\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 5\r\nContent-Length: 5\r\n",
        b"Content-Length: 5, 5\r\n",
        b"Content-Length: 5,5\r\n",
        b"Content-Length: 5, 6\r\n",
        b"Content-Length: +5\r\n",
        b"Content-Length: -5\r\n",
        b"Content-Length: 0x5\r\n",
        b"Content-Length: 5.0\r\n",
        b"Content-Length: 1_0\r\n",
        b"Content-Length: 5 5\r\n",
        b"Content-Length: \xb2\r\n",
        b"Content-Length: \r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: \r\n",
        b"Transfer-Encoding: ,\r\n",
        b"Host: second.example\r\n",
        b"Host: bad host\r\n",
        b"Host: a/b\r\n",
    ],
)
def test_framing_rejected_400(extra: bytes) -> None:
    assert status(get(extra)) == 400


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    ],
)
def test_missing_or_repeated_host_400(raw: bytes) -> None:
    assert status(raw) == 400


@pytest.mark.parametrize(
    "host", [b"", b"example.com", b"example.com:8080", b"[::1]:8000", b"127.0.0.1"]
)
def test_host_values_accepted(host: bytes) -> None:
    assert status(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") is None


@pytest.mark.parametrize(
    "extra",
    [
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: identity\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: chunked;q=1\r\n",
        b'Transfer-Encoding: "chunked"\r\n',
    ],
)
def test_transfer_encoding_not_ending_in_chunked_501(extra: bytes) -> None:
    assert status(get(extra)) == 501


def test_transfer_encoding_on_http10_501() -> None:
    assert status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == 501


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (b"OPTIONS", b"*", None),
        (b"OPTIONS", b"/", None),
        (b"GET", b"*", 400),
        (b"CONNECT", b"*", 400),
        (b"CONNECT", b"example.com:443", None),
        (b"CONNECT", b"[::1]:443", None),
        (b"CONNECT", b"example.com", 400),
        (b"CONNECT", b"/", 400),
        (b"CONNECT", b"http://example.com/", 400),
        (b"GET", b"example.com:443", 400),
        (b"POST", b"example.com:443", 400),
        (b"GET", b"http://example.com/a?b", None),
        (b"GET", b"https://example.com", None),
        (b"GET", b"a/b", 400),
        (b"GET", b"?q", 400),
    ],
)
def test_target_form_by_method(method: bytes, target: bytes, expected: int | None) -> None:
    raw = method + b" " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert status(raw) == expected


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (b"http://good.com@evil.com/reset", "userinfo"),  # RFC 9110 4.2.4
        (b"http://user:pw@example.com/", "userinfo"),
        (b"http://@example.com/", "userinfo"),
        (b'http://evil.com"><script>/x', "authority"),
        (b"http://evil.com<x>/", "authority"),
        (b"http://exa mple.com/", None),  # a space ends the target: the request line is bad
        (b"http:///path", "authority"),  # an http URI must have a host (RFC 9110 4.2.1)
        (b"http://:80/", "authority"),
        (b"http://example.com:8o/", "authority"),
        (b"http://example.com%/", "authority"),
        (b"http://example.com%zz/", "authority"),
        (b"http://[::1/", "authority"),
        (b"http://[1.2.3.4]/", "authority"),
        (b"http://[fe80::1%25eth0]/", "authority"),  # a zone means something only to the client
        (b"http://[::1]x/", "authority"),
        (b"ftp://example.com/", "scheme"),
        (b"javascript://example.com/", "scheme"),
        (b"http://example.com/a#frag", "fragment"),
    ],
)
def test_absolute_form_target_is_held_to_the_rules_of_host(target: bytes, why: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        parse(b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert caught.value.status == 400
    if why is not None:
        assert why in caught.value.message


@pytest.mark.parametrize(
    "target",
    [
        b"http://example.com",
        b"HTTP://Example.COM:8080/p?q",
        b"https://example.com?q=1",
        b"http://[::1]:8080/",
        b"http://[2001:db8::1]/",
        b"http://[v1.fe:80]/",
        b"http://127.0.0.1:80/x",
        b"http://ex%41mple.com/",
        b"http://a.b-c_d~e!$&'()*+,;=f/",
        b"http://example.com:/",
    ],
)
def test_absolute_form_targets_accepted(target: bytes) -> None:
    assert status(b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n") is None


@pytest.mark.parametrize(
    "host",
    [
        b"good.com@evil.com",
        b"%",
        b"a%4",
        b"a%zz",
        b"[::1",
        b"::1",
        b"[1.2.3.4]",
        b"[fe80::1%25eth0]",
        b"[fe80::1%eth0]",
        b"[::1]x",
        b"[::1]:8o",
        b'evil.com"><script>',
        b"a\\b",
        b"a{b}",
        b"a:1:2",
    ],
)
def test_malformed_host_values_400(host: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert (caught.value.status, caught.value.message) == (400, "malformed Host header field")


@pytest.mark.parametrize("name", ["Content-Type", "Authorization"])
@pytest.mark.parametrize("second", ["same", "lower", "other"])
def test_a_second_single_field_400(name: str, second: str) -> None:
    # A front end that reads the first copy and an app that reads the last (or both
    # joined) would parse the body, or name the client, differently.
    other = {"same": name, "lower": name.lower(), "other": name.upper()}[second]
    fields = f"{name}: a\r\nX: y\r\n{other}: b\r\n".encode()
    with pytest.raises(RequestError) as caught:
        parse(get(fields))
    assert caught.value.status == 400
    assert f"more than one {other}" in caught.value.message


def test_single_fields_once_are_fine() -> None:
    fields = b"Content-Type: text/plain\r\nAuthorization: Basic eDp5\r\nAccept: a\r\nAccept: b\r\n"
    assert status(get(fields)) is None


def test_body_limit_by_content_length() -> None:
    limits = Limits(body=10)
    assert parse(get(b"Content-Length: 10\r\n"), limits)[2].content_length == 10
    assert status(get(b"Content-Length: 11\r\n"), limits) == 413
    assert status(get(b"Content-Length: " + b"9" * 19 + b"\r\n")) == 413
    assert status(get(b"Content-Length: " + b"9" * 18 + b"\r\n")) is None


def test_request_error_carries_status_and_message() -> None:
    error = RequestError(400, "bad")
    assert (error.status, error.message, error.args) == (400, "bad", (400, "bad"))
    assert issubclass(IncompleteBodyError, ConnectionError)


# -- to_message ------------------------------------------------------------------


def test_to_message_behaves_like_a_parsed_message() -> None:
    fields = [
        ("Host", "example.com"),
        ("Content-Type", "text/html; charset=utf-8"),
        ("Cookie", "a=1"),
        ("cookie", "b=2"),
    ]
    message = to_message(fields)
    assert isinstance(message, http.client.HTTPMessage)
    assert message.get("host") == message["HOST"] == "example.com"
    assert message.get("missing") is None
    assert message["missing"] is None
    assert message.get("missing", "x") == "x"
    assert message.get_all("Cookie") == ["a=1", "b=2"]
    assert message.get_all("missing") is None
    assert "content-type" in message
    assert "missing" not in message
    assert message.keys() == ["Host", "Content-Type", "Cookie", "cookie"]
    assert message.values() == ["example.com", "text/html; charset=utf-8", "a=1", "b=2"]
    assert message.items() == fields
    assert len(message) == 4
    assert list(message) == ["Host", "Content-Type", "Cookie", "cookie"]
    assert message.get_content_type() == "text/html"
    assert message.get_content_charset() == "utf-8"
    assert message.get_param("charset") == "utf-8"
    del message["cookie"]
    message["X-New"] = "1"
    assert fields[2:] == [("Cookie", "a=1"), ("cookie", "b=2")]  # the caller's list is untouched
    assert message.items() == [
        ("Host", "example.com"),
        ("Content-Type", "text/html; charset=utf-8"),
        ("X-New", "1"),
    ]
    assert to_message([]).get_content_type() == "text/plain"


def test_to_message_state_matches_parse_headers() -> None:
    raw = b"Host: x\r\nContent-Type: application/json\r\n\r\n"
    parsed = http.client.parse_headers(io.BytesIO(raw))
    built = to_message(fields_of(raw))
    assert vars(parsed) == vars(built)


def test_trailing_whitespace_is_not_part_of_the_value_unlike_parse_headers() -> None:
    # RFC 9110 5.5: OWS around a field value is not part of it; email.parser keeps trailing OWS.
    raw = b"A: b  \r\n\r\n"
    assert http.client.parse_headers(io.BytesIO(raw)).get("A") == "b  "
    assert to_message(fields_of(raw)).get("A") == "b"


_TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE_CHARS = "".join(chr(c) for c in [*range(0x21, 0x7F), *range(0x80, 0x100)])
_names = st.text(alphabet=_TCHARS, min_size=1, max_size=20)
_values = st.text(alphabet=_VALUE_CHARS + " \t", max_size=40).map(lambda v: v.strip(" \t"))


@st.composite
def _valid_fields(draw: st.DrawFn) -> list[tuple[str, str]]:
    return draw(st.lists(st.tuples(_names, _values), max_size=15))


@pytest.mark.slow
@FUZZ
@given(fields=_valid_fields(), ows=st.sampled_from(["", " ", "\t", "  "]), lf=st.booleans())
def test_to_message_equals_parse_headers_on_valid_heads(
    fields: list[tuple[str, str]], ows: str, lf: bool
) -> None:
    ending = "\n" if lf else "\r\n"
    raw = ("".join(f"{n}:{ows}{v}{ending}" for n, v in fields) + ending).encode("latin-1")
    ours = to_message(read_fields_every_way(raw))
    stdlib = http.client.parse_headers(io.BytesIO(raw))
    assert ours.items() == stdlib.items() == fields
    for name, _ in fields:
        assert ours.get_all(name) == stdlib.get_all(name)
        assert ours[name.upper()] == stdlib[name.upper()]
        assert name.lower() in ours
    assert ours.get_content_type() == stdlib.get_content_type()


_FORBIDDEN = [bytes([c]) for c in [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F]]


@pytest.mark.slow
@FUZZ
@given(
    fields=_valid_fields().filter(bool),
    which=st.integers(0, 14),
    where=st.integers(0, 50),
    bad=st.sampled_from(_FORBIDDEN),
)
def test_a_control_byte_anywhere_in_a_valid_head_is_refused(
    fields: list[tuple[str, str]], which: int, where: int, bad: bytes
) -> None:
    lines = [f"{n}: {v}\r\n".encode("latin-1") for n, v in fields]
    line = lines[which % len(lines)]
    at = where % (len(line) - 1)  # anywhere before the final LF
    lines[which % len(lines)] = line[:at] + bad + line[at:]
    with pytest.raises(RequestError) as caught:
        read_fields_every_way(b"".join(lines) + b"\r\n")
    assert caught.value.status == 400


# -- bodies: Content-Length ------------------------------------------------------


def buffered(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data), buffer_size=16)


def cl_body(data: bytes, length: int, **kwargs: object) -> tuple[Body, io.BufferedReader]:
    rfile = buffered(data)
    return Body(rfile, Framing(length, False, True, False), **kwargs), rfile  # type: ignore[arg-type]


def test_content_length_read_all_then_past_the_end() -> None:
    body, rfile = cl_body(b"hello worldGET /next HTTP/1.1\r\n", 11)
    assert not body.complete
    assert body.read() == b"hello world"
    assert body.complete
    assert body.read() == body.read(5) == body.readline() == b""
    assert body.readlines() == []
    assert list(body) == []
    assert rfile.read() == b"GET /next HTTP/1.1\r\n"


def test_content_length_read_in_pieces() -> None:
    body, rfile = cl_body(b"0123456789NEXT", 10)
    assert body.read(3) == b"012"
    assert body.read(0) == b""
    assert body.read(None) == b"3456789"
    body, rfile = cl_body(b"0123456789NEXT", 10)
    assert [body.read(4), body.read(4), body.read(4), body.read(4)] == [
        b"0123",
        b"4567",
        b"89",
        b"",
    ]
    assert body.read(-1) == b""
    assert rfile.read() == b"NEXT"


def test_content_length_lines() -> None:
    data = b"one\ntwo\nthree"
    body, rfile = cl_body(data + b"\nNEXT\n", len(data))
    assert body.readline() == b"one\n"
    assert body.readline(2) == b"tw"
    assert body.readline(None) == b"o\n"
    assert body.readline(100) == b"three"
    assert body.readline() == b""
    assert rfile.read() == b"\nNEXT\n"
    body, _ = cl_body(data + b"\nNEXT\n", len(data))
    assert body.readlines() == [b"one\n", b"two\n", b"three"]
    body, _ = cl_body(data + b"\nNEXT\n", len(data))
    assert body.readlines(5) == [b"one\n", b"two\n"]
    body, _ = cl_body(data + b"\nNEXT\n", len(data))
    assert list(body) == [b"one\n", b"two\n", b"three"]


def test_content_length_eof_inside_the_body() -> None:
    body, _ = cl_body(b"abc", 10)
    with pytest.raises(IncompleteBodyError):
        body.read()
    body, _ = cl_body(b"abc", 10)
    with pytest.raises(IncompleteBodyError):
        body.read(5)
    body, _ = cl_body(b"abc", 10)
    with pytest.raises(IncompleteBodyError):
        body.readline()
    body, _ = cl_body(b"abc", 10)
    assert body.read(3) == b"abc"
    with pytest.raises(IncompleteBodyError):
        list(body)


def test_content_length_over_the_body_limit_413() -> None:
    with pytest.raises(RequestError) as caught:
        cl_body(b"x" * 11, 11, limits=Limits(body=10))
    assert caught.value.status == 413
    body, _ = cl_body(b"x" * 10, 10, limits=Limits(body=10))
    assert body.read() == b"x" * 10


def test_before_first_read_once_just_before_the_first_byte() -> None:
    calls: list[int] = []
    rfile = buffered(b"abcdef")

    def hook() -> None:
        calls.append(rfile.tell())

    body = Body(rfile, Framing(6, False, True, True), before_first_read=hook)
    assert calls == []
    assert body.read(0) == b""
    assert calls == []
    assert body.read(2) == b"ab"
    assert body.readline() == b"cdef"
    assert body.read() == b""
    assert calls == [0]


@pytest.mark.parametrize("length", [None, 0])
def test_before_first_read_never_called_for_an_empty_body(length: int | None) -> None:
    calls: list[str] = []
    body = Body(
        buffered(b"NEXT"),
        Framing(length, False, True, True),
        before_first_read=lambda: calls.append("x"),
    )
    assert body.complete
    assert body.read() == b""
    assert body.readline() == b""
    assert body.discard(0)
    assert calls == []


def test_discard_content_length() -> None:
    body, rfile = cl_body(b"0123456789NEXT", 10)
    assert body.read(2) == b"01"
    assert body.discard(8)
    assert body.complete
    assert rfile.read() == b"NEXT"
    body, rfile = cl_body(b"0123456789NEXT", 10)
    assert not body.discard(9)
    body, rfile = cl_body(b"01234", 10)
    assert not body.discard(100)


def test_discard_does_not_read_a_body_the_client_was_never_asked_for() -> None:
    calls: list[str] = []
    rfile = buffered(b"0123456789")
    body = Body(
        rfile, Framing(10, False, True, True), before_first_read=lambda: calls.append("100")
    )
    assert not body.discard(100)
    assert calls == []
    assert rfile.read() == b"0123456789"
    # Without Expect, the hook runs as for any first read.
    body = Body(
        buffered(b"0123456789"),
        Framing(10, False, True, False),
        before_first_read=lambda: calls.append("r"),
    )
    assert body.discard(100)
    assert calls == ["r"]


# -- bodies: chunked -------------------------------------------------------------


def chunked(
    data: bytes, limits: Limits = DEFAULT, hook: object = None
) -> tuple[Body, io.BufferedReader]:
    rfile = buffered(data)
    return Body(rfile, Framing(None, True, True, False), limits, hook), rfile  # type: ignore[arg-type]


CHUNKED = b"5\r\nhello\r\n7\r\n, world\r\nA\r\n\nsecond \nl\r\n0\r\n\r\n"
DECODED = b"hello, world\nsecond \nl"
NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


def test_chunked_read_all_and_past_the_end() -> None:
    body, rfile = chunked(CHUNKED + NEXT)
    assert body.read() == DECODED
    assert body.complete
    assert body.read() == body.read(3) == body.readline() == b""
    assert rfile.read() == NEXT


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_chunked_read_in_pieces(size: int) -> None:
    body, rfile = chunked(CHUNKED + NEXT)
    pieces = []
    for _ in range(100):
        piece = body.read(size)
        if not piece:
            break
        assert len(piece) <= size
        pieces.append(piece)
    assert b"".join(pieces) == DECODED
    assert all(len(piece) == size for piece in pieces[:-1])
    assert rfile.read() == NEXT


def test_chunked_lines_across_chunks() -> None:
    body, rfile = chunked(CHUNKED + NEXT)
    assert body.readline() == b"hello, world\n"
    assert body.readline(3) == b"sec"
    assert body.readline() == b"ond \n"
    assert body.readline() == b"l"
    assert body.readline() == b""
    assert rfile.read() == NEXT
    body, _ = chunked(CHUNKED)
    assert list(body) == [b"hello, world\n", b"second \n", b"l"]
    body, _ = chunked(CHUNKED)
    assert body.readlines() == [b"hello, world\n", b"second \n", b"l"]
    body, _ = chunked(CHUNKED)
    assert body.readlines(1) == [b"hello, world\n"]


@pytest.mark.parametrize(
    "size_line",
    [
        b"5;ext\r\n",
        b"5;a=b\r\n",
        b"5 ; a = b ; c\r\n",
        b'5;a="quoted \\" value"\r\n',
        b'5;a=""\r\n',
        b"0005\r\n",
        b"00000000000000005\r\n"[1:],
        # Leading zeros: any number (RFC 9112 7.1); the value is capped, not the digits.
        pytest.param(b"0" * 17 + b"5\r\n", id="17 zeros"),
        pytest.param(b"0" * 5000 + b"5\r\n", id="5000 zeros"),
    ],
)
def test_chunk_extensions_and_sizes_accepted(size_line: bytes) -> None:
    body, rfile = chunked(size_line + b"hello\r\n0\r\n\r\n" + NEXT)
    assert body.read() == b"hello"
    assert rfile.read() == NEXT


def test_chunked_hex_digits_any_case_and_trailer_dropped() -> None:
    data = b"a\r\n0123456789\r\nB\r\nabcdefghijk\r\n0;end\r\nChecksum: x\r\nOther: y\r\n\r\n"
    body, rfile = chunked(data + NEXT)
    assert body.read() == b"0123456789abcdefghijk"
    assert rfile.read() == NEXT


@pytest.mark.parametrize(
    "data",
    [
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5_0\r\nhello\r\n0\r\n\r\n",
        b"_5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\rhello\r\n0\r\n\r\n",
        b"5;\r\nhello\r\n0\r\n\r\n",
        b"5;a=\r\nhello\r\n0\r\n\r\n",
        b'5;a="open\r\nhello\r\n0\r\n\r\n',
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"5;a=\x00\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r0\r\n\r\n",
        b"5\r\nhello!\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nBad Trailer: x\r\n\r\n",
        b"5\r\nhello\r\n0\n\r\n",
        # The trailer section ends in CRLF, every trailer line too (RFC 9112 7.1):
        # a bare LF there would end the body early for a lenient peer (smuggling).
        b"5\r\nhello\r\n0\r\n\n",
        b"5\r\nhello\r\n0\r\nX: y\n\r\n",
        b"5\r\nhello\r\n0\r\nX: y\r\n\n",
        b"5\r\nhello\r\n0\r\nX: y\r\nZ: w\n\r\n",
        b"5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n",  # obs-fold
        b"5\r\nhello\r\n0\r\nX: a\rb\r\n\r\n",  # bare CR
    ],
)
def test_malformed_chunks_400(data: bytes) -> None:
    body, _ = chunked(data)
    with pytest.raises(RequestError) as caught:
        body.read()
    assert caught.value.status == 400
    with pytest.raises(RequestError):  # the body stays broken
        body.read()
    assert not body.discard(1000)
    assert not body.complete


@pytest.mark.parametrize(
    "name",
    [
        "Content-Length", "Transfer-Encoding", "Host", "Trailer", "Connection", "TE",
        "Authorization", "Proxy-Authorization", "Cookie", "Content-Type", "Content-Encoding",
        "Content-Range", "Cache-Control", "Expect", "Max-Forwards", "Range", "If-Match",
        "X-Forwarded-For", "Forwarded", "content-length", "HOST",
    ],
)  # fmt: skip
def test_fields_not_allowed_in_a_trailer_400(name: str) -> None:
    # RFC 9110 6.5.1: framing, routing, authentication, modifiers and content format
    # must come before the content.
    body, _ = chunked(b"5\r\nhello\r\n0\r\nChecksum: 1\r\n" + name.encode() + b": 5\r\n\r\n")
    with pytest.raises(RequestError) as caught:
        body.read()
    assert caught.value.status == 400
    assert caught.value.message == f"{name} is not allowed in a chunked trailer"


@pytest.mark.parametrize(
    "size", [b"1" * 17, b"0" * 20 + b"1" * 17, b"f" * 32, b"%x" % (sys.maxsize + 1)]
)
def test_a_chunk_size_past_sys_maxsize_413(size: bytes) -> None:
    body, _ = chunked(size + b"\r\nhello\r\n0\r\n\r\n")
    with pytest.raises(RequestError) as caught:
        body.read()
    assert (caught.value.status, caught.value.message) == (413, "chunk size too large")


@pytest.mark.parametrize("chunk", [False, True])
def test_a_huge_declared_size_is_not_allocated(chunk: bool) -> None:
    # A buffered file's read(n) allocates n bytes first: a client's 10**15 (or a chunk of
    # sys.maxsize) must not turn into a MemoryError, only into the EOF it is.
    if chunk:
        body, _ = chunked(b"%x\r\nhello" % sys.maxsize)
    else:
        body, _ = cl_body(b"hello", 10**15)
    with pytest.raises(IncompleteBodyError):
        body.read()
    assert isinstance(body.error, IncompleteBodyError)


def test_a_bare_lf_ending_the_body_does_not_end_it() -> None:
    # ``0 CRLF LF`` then a request: a peer that ends the body at the bare LF serves
    # the request; one that does not sees it as the body's.  Neither is told apart
    # from the other: refused.
    for ending in (b"0\r\n\n", b"0\r\nX: y\n\r\n"):
        body, _ = chunked(b"1\r\na\r\n" + ending + b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
        with pytest.raises(RequestError) as caught:
            body.read()
        assert caught.value.status == 400
        assert not body.complete


def test_chunk_size_line_limited_by_field_size() -> None:
    limits = Limits(field_size=10)
    at = b"5;abcdefgh\r\n"  # 10 bytes before CRLF
    body, _ = chunked(at + b"hello\r\n0\r\n\r\n", limits)
    assert body.read() == b"hello"
    body, _ = chunked(b"5;abcdefghi\r\nhello\r\n0\r\n\r\n", limits)
    with pytest.raises(RequestError) as caught:
        body.read()
    assert caught.value.status == 400


def test_chunked_trailer_bounded_by_field_limits() -> None:
    limits = Limits(fields=2)
    body, _ = chunked(b"0\r\nA: 1\r\nB: 2\r\n\r\n", limits)
    assert body.read() == b""
    body, _ = chunked(b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits)
    with pytest.raises(RequestError) as caught:
        body.read()
    assert caught.value.status == 431


def test_chunked_body_limit_on_the_running_total() -> None:
    limits = Limits(body=10)
    body, _ = chunked(b"6\r\n012345\r\n4\r\n6789\r\n0\r\n\r\n", limits)
    assert body.read() == b"0123456789"
    body, _ = chunked(b"6\r\n012345\r\n5\r\n6789a\r\n0\r\n\r\n", limits)
    assert body.read(6) == b"012345"
    with pytest.raises(RequestError) as caught:
        body.read(1)
    assert caught.value.status == 413
    # Refused on the declared size, before its data is read.
    body, _rfile = chunked(b"b\r\n", limits)
    with pytest.raises(RequestError) as caught:
        body.read()
    assert caught.value.status == 413
    body, _ = chunked(b"ffffffffffffffff\r\n", limits)
    with pytest.raises(RequestError) as caught:
        body.read()
    assert caught.value.status == 413


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"5",
        b"5\r",
        b"5\r\nhel",
        b"5\r\nhello",
        b"5\r\nhello\r",
        b"5\r\nhello\r\n",
        b"0\r\n",
        b"0\r\nA: b\r\n",
    ],
)
def test_chunked_eof_is_incomplete(data: bytes) -> None:
    body, _ = chunked(data)
    with pytest.raises(IncompleteBodyError):
        body.read()
    body, _ = chunked(data)
    with pytest.raises(IncompleteBodyError):
        body.readline()
    body, _ = chunked(data)
    assert not body.discard(100)


def test_chunked_before_first_read_even_for_an_empty_body() -> None:
    calls: list[int] = []
    rfile = buffered(b"0\r\n\r\n" + NEXT)
    body = Body(
        rfile, Framing(None, True, True, True), before_first_read=lambda: calls.append(rfile.tell())
    )
    assert calls == []
    assert body.read() == b""
    assert body.read() == b""
    assert calls == [0]
    assert rfile.read() == NEXT


def test_chunked_discard() -> None:
    body, rfile = chunked(CHUNKED + NEXT)
    assert body.read(3) == b"hel"
    assert body.discard(len(DECODED) - 3)
    assert body.complete
    assert rfile.read() == NEXT
    body, _ = chunked(CHUNKED + NEXT)
    assert not body.discard(len(DECODED) - 1)
    body, rfile = chunked(b"0\r\n\r\n" + NEXT)
    assert body.discard(0)
    assert rfile.read() == NEXT


@pytest.mark.slow
@FUZZ
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    extensions=st.lists(st.sampled_from([b"", b";a", b";a=b", b' ; q="x y"']), min_size=9),
    upper=st.booleans(),
    sizes=st.lists(st.one_of(st.none(), st.integers(-1, 50).filter(bool)), min_size=1, max_size=20),
    lines=st.booleans(),
)
def test_chunked_round_trip(
    pieces: list[bytes], extensions: list[bytes], upper: bool, sizes: list[int | None], lines: bool
) -> None:
    wire = b"".join(
        (b"%X" if upper else b"%x") % len(piece) + ext + b"\r\n" + piece + b"\r\n"
        for piece, ext in zip(pieces, extensions, strict=False)
    )
    body, rfile = chunked(wire + b"0" + extensions[-1] + b"\r\nT: v\r\n\r\n" + NEXT)
    got = []
    for i in range(1000):  # at least a byte per read: 8 x 40 bytes at most
        size = sizes[i % len(sizes)]
        data = body.readline(size) if lines else body.read(size)
        if not data:
            break
        assert size is None or size < 0 or len(data) <= size
        got.append(data)
    assert b"".join(got) == b"".join(pieces)
    assert body.complete
    assert rfile.read() == NEXT


# -- fuzz ------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.0\r\n", b"Host: a\r\n", b"\r\n", b"\n", b"\r",
        b"Content-Length: ", b"Transfer-Encoding: ", b"chunked", b"gzip", b"Connection: ",
        b"close", b"keep-alive", b"Expect: 100-continue\r\n", b":", b" ", b"\t", b";", b"=",
        b"0", b"5", b"a", b"ff", b"\x00", b"\x7f", b"\xe9", b"*", b"CONNECT", b"OPTIONS", b'"',
    ]
)  # fmt: skip
_INPUTS = st.one_of(st.binary(max_size=300), st.lists(_PIECES, max_size=40).map(b"".join))


@FUZZ
@given(data=_INPUTS, small=st.booleans())
def test_arbitrary_bytes_raise_only_the_documented_errors(data: bytes, small: bool) -> None:
    limits = Limits(request_line=40, fields=4, field_size=30, body=50) if small else Limits()
    rfile = buffered(data)
    try:
        line = read_request_line(rfile.readline, limits)
        if line is None:
            return
        fields = read_fields(rfile.readline, limits)
        result = framing(line, fields, limits)
        to_message(fields)
        body = Body(rfile, result, limits)
        if len(data) % 2:
            body.read()
            assert body.complete
        else:
            for _ in range(1000):
                if not body.readline(7):
                    break
    except RequestError as error:
        code: int | None = error.status
    except (IncompleteHeadError, IncompleteBodyError):
        code = None
    else:
        code = None
    assert code in (None, 400, 413, 414, 431, 501, 505)


@FUZZ
@given(data=_INPUTS, small=st.booleans())
def test_arbitrary_field_blocks_read_the_same_every_way(data: bytes, small: bool) -> None:
    limits = Limits(fields=4, field_size=30) if small else Limits()
    with contextlib.suppress(RequestError, IncompleteHeadError):
        read_fields_every_way(data, limits)


@FUZZ
@given(data=_INPUTS, chunk=st.booleans(), limit=st.integers(0, 100))
def test_discard_never_raises(data: bytes, chunk: bool, limit: int) -> None:
    body = Body(buffered(data), Framing(None if chunk else len(data) // 2, chunk, True, False))
    assert body.discard(limit) in (True, False)


class _Stalls(io.RawIOBase):
    """A raw stream that hands out ``data`` in ``piece``-byte reads, then times out."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.data, self.piece = data, piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.data:
            raise TimeoutError("timed out")
        n = min(self.piece, len(buffer), len(self.data))
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


@pytest.mark.parametrize("chunk", [False, True])
def test_a_timeout_inside_the_body_leaves_it_unusable(chunk: bool) -> None:
    data = b"a\r\n0123456789\r\n0\r\n\r\n" if chunk else b"0123456789"
    rfile = io.BufferedReader(_Stalls(data[:-3], 4), buffer_size=4)
    body = Body(rfile, Framing(None if chunk else 10, chunk, True, False))
    with pytest.raises(TimeoutError):
        body.read()
    assert not body.complete
    assert not body.discard(100)
    if chunk:
        with pytest.raises(TimeoutError):
            body.read()
    else:
        assert body.read() == b""


def test_discard_never_raises_even_when_the_hook_does() -> None:
    def hook() -> None:
        raise BrokenPipeError

    body = Body(buffered(b"0123456789"), Framing(10, False, True, False), before_first_read=hook)
    assert not body.discard(100)
