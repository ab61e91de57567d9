"""The one request cycle (``graceserve.http.cycle``): each decision once, held on both paths.

The handler path and the WSGI path used to run two copies of the request loop
and had drifted apart.  Each test here states one decision of the cycle and
runs it against a ``BaseHTTPRequestHandler`` target and a WSGI app served in
this process (``front_support.serving``): an empty line before a request, the
head limits and their statuses, the reason phrase of an error, the body
limit, a body cut short, the unread-body rule, ``Connection: close`` once
the listener is closed.  ``wsgi.errors`` under ``--log-format json`` is the
WSGI dispatcher's own (``graceserve.wsgi.errors``).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest

from graceserve import GracefulHTTPServer
from graceserve.wsgi.errors import ErrorStream
from testsupport.front import KINDS, Echo, address_of, echo_app, serving
from testsupport.rawhttp import EOF, Connection, Reply, request_bytes
from testsupport.waiting import wait_until

TIMEOUT = 10.0


def send(server: GracefulHTTPServer, data: bytes) -> tuple[Reply, str]:
    """``data`` on a new connection: the response, and how the connection ended."""
    with Connection(address_of(server), timeout=TIMEOUT) as conn:
        conn.send(data)
        reply = conn.read_reply()
        return reply, conn.ending(TIMEOUT)


def refused(server: GracefulHTTPServer, data: bytes) -> Reply:
    """The refusal ``data`` gets: a real status line, ``Connection: close``, then EOF."""
    reply, ended = send(server, data)
    assert reply.version in ("HTTP/1.0", "HTTP/1.1"), reply
    assert (reply.says_close, ended) == (True, EOF), reply
    return reply


class Counting:
    """Both targets of ``front_support``, counting the requests that reach them."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def handler(self) -> type[Echo]:
        counter = self

        class Counted(Echo):
            def do_GET(self) -> None:
                counter.seen()
                super().do_GET()

            def do_POST(self) -> None:
                counter.seen()
                super().do_POST()

        return Counted

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.seen()
        return echo_app(environ, start_response)

    def seen(self) -> None:
        with self.lock:
            self.calls += 1


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def counting() -> Counting:
    return Counting()


def target(kind: str, counting: Counting) -> Any:
    return counting.handler() if kind == "handler" else counting.app


@pytest.fixture
def server(kind: str, counting: Counting) -> Iterator[GracefulHTTPServer]:
    with serving(kind, target=target(kind, counting), max_body_size=1024) as running:
        yield running


# -- the request line ---------------------------------------------------------------------


def test_an_empty_line_before_a_request_is_skipped(server: GracefulHTTPServer) -> None:
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request-line."""
    reply, _ = send(server, b"\r\n" + request_bytes("GET", "/", close=True))
    assert (reply.status, reply.body) == (200, b"hello")


def test_two_empty_lines_before_a_request_are_a_bad_request(server: GracefulHTTPServer) -> None:
    """One, not a stream of them."""
    assert refused(server, b"\r\n\r\n" + request_bytes("GET", "/", close=True)).status == 400


def test_the_request_line_limit_is_8190_bytes_then_414(
    server: GracefulHTTPServer, counting: Counting
) -> None:
    prefix, suffix = "GET /", " HTTP/1.1"
    at_limit = "/" + "a" * (8190 - len(prefix) - len(suffix))
    reply, _ = send(server, request_bytes("GET", at_limit, close=True))
    assert reply.status == 200
    reply = refused(server, request_bytes("GET", at_limit + "a", close=True))
    assert (reply.status, reply.reason) == (414, HTTPStatus(414).phrase)
    assert counting.calls == 1


def test_a_field_line_over_8190_bytes_gets_431(
    server: GracefulHTTPServer, counting: Counting
) -> None:
    name = "X-Big"
    at_limit = "v" * (8190 - len(name) - 2)
    assert send(server, request_bytes("GET", "/", {name: at_limit}, close=True))[0].status == 200
    reply = refused(server, request_bytes("GET", "/", {name: at_limit + "v"}, close=True))
    assert (reply.status, reply.reason) == (431, HTTPStatus(431).phrase)
    assert counting.calls == 1


def test_an_error_has_the_standard_reason_phrase_and_the_detail_in_its_body(
    server: GracefulHTTPServer, counting: Counting
) -> None:
    fields = {f"X-Field-{number}": "v" for number in range(101)}
    reply = refused(server, request_bytes("GET", "/", fields, close=True))
    assert (reply.status, reply.reason) == (431, HTTPStatus(431).phrase)
    assert b"more than 100 header fields" in reply.body
    assert counting.calls == 0


def test_the_limits_are_settings_of_both_servers(kind: str, counting: Counting) -> None:
    with serving(kind, target=target(kind, counting), limit_request_line=100) as server:
        reply = refused(server, request_bytes("GET", "/" + "a" * 100, close=True))
    assert reply.status == 414


# -- the body -------------------------------------------------------------------------------


def test_a_body_over_max_body_size_gets_413_and_never_reaches_the_app(
    server: GracefulHTTPServer, counting: Counting
) -> None:
    reply = refused(server, request_bytes("POST", "/", body=b"x" * 1025, close=True))
    assert (reply.status, reply.reason) == (413, HTTPStatus(413).phrase)
    reply, _ = send(server, request_bytes("POST", "/", body=b"x" * 1024, close=True))
    assert (reply.status, reply.body) == (200, b"1024")
    assert counting.calls == 1


def test_a_body_cut_short_is_never_answered_as_complete(server: GracefulHTTPServer) -> None:
    """The client sends 3 of 10 bytes and stops sending (EOF, as the reaper's cut of a
    stalled body looks from inside): the connection ends without an answer."""
    head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n"
    with Connection(address_of(server), timeout=TIMEOUT) as conn:
        conn.send(head + b"abc")
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.ending(TIMEOUT) == EOF  # no bytes: no "200 3"


def test_an_unread_body_is_discarded_and_the_connection_kept(kind: str, counting: Counting) -> None:
    with (
        serving(kind, target=target(kind, counting)) as server,
        Connection(address_of(server), timeout=TIMEOUT) as conn,
    ):
        conn.send(request_bytes("GET", "/", body=b"x" * 100))  # GET: the body is left
        first = conn.read_reply()
        conn.request("GET", "/")
        second = conn.read_reply()
    assert (first.status, first.says_close, second.status) == (200, False, 200)
    assert counting.calls == 2


def test_an_unread_body_over_the_discard_limit_ends_the_connection(
    kind: str, counting: Counting
) -> None:
    with serving(kind, target=target(kind, counting), discard_limit=10) as server:
        reply, ended = send(server, request_bytes("GET", "/", body=b"x" * 100))
    assert (reply.status, reply.says_close, ended) == (200, True, EOF)


# -- the drain --------------------------------------------------------------------------------


def test_once_the_listener_is_closed_a_response_says_close(kind: str, counting: Counting) -> None:
    """At the drain an idle keep-alive client's next request (inside its linger) is
    answered, with ``Connection: close``, then the connection ends."""
    with (
        serving(kind, target=target(kind, counting), drain_linger=5.0) as server,
        Connection(address_of(server), timeout=TIMEOUT) as conn,
    ):
        conn.request("GET", "/")
        assert not conn.read_reply().says_close
        drain = threading.Thread(target=server.drain, args=(TIMEOUT,), name="test-drain")
        drain.start()
        try:
            wait_until(lambda: server.listener_closed, TIMEOUT)
            conn.request("GET", "/")
            reply = conn.read_reply()
            assert (reply.status, reply.says_close, conn.ending(TIMEOUT)) == (200, True, EOF)
        finally:
            drain.join(TIMEOUT)


# -- wsgi.errors under --log-format json ------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    handler = Records()
    logger = logging.getLogger("graceserve")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_each_write_through_wsgi_errors_is_one_record(records: list[logging.LogRecord]) -> None:
    errors = ErrorStream()
    errors.write("[date] ERROR in app: Exception on /log [GET]\n")
    errors.write("Traceback (most recent call last):\n  File 'x'\nValueError: boom\n")
    print("a print", file=errors)  # the text, then "\n"
    errors.write("unfinished")
    assert [r.getMessage() for r in records] == [
        "[date] ERROR in app: Exception on /log [GET]",
        "Traceback (most recent call last):\n  File 'x'\nValueError: boom",
        "a print",
    ]
    errors.flush()
    assert records[-1].getMessage() == "unfinished"
    assert {getattr(r, "event", None) for r in records} == {"app"}
