"""GracefulHTTPServer in-process: keep-alive-aware drain, malformed input, stdlib handlers.

Why these exist: an HTTP/1.1 client counts an EOF on a keep-alive connection as an
error unless the last response said ``Connection: close``.  So every test here
checks what the *client* sees on the wire (raw sockets, or ``http.client``): a
complete response, the ``Connection`` header, and whether the connection then ends
with a clean EOF (``recv`` returns ``b""``) rather than a reset.

Synchronisation: handlers are gated on ``threading.Event`` objects the test
controls, the drain runs in a thread of its own when the test must act during
it, and "the listener is closed" (from when ``Connection: close`` is sent) is
waited for on ``server.listener_closed``.  Where the test needs a connection to be
in a given state (reading a request head), it polls the server's registry with
a deadline.  Nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from graceserve import GracefulHTTPServer
from graceserve.demo import DemoHandler
from graceserve.http.server import DrainAwareRequestHandler
from testsupport.httpharness import (
    DRAIN_TIMEOUT,
    GATE_TIMEOUT,
    SOCKET_TIMEOUT,
    UPLOAD_CHUNK,
    Drainer,
    Harness,
    address_of,
    idle_for,
    make_handler,
    request_bytes,
)
from testsupport.waiting import wait_until

EOF_BOUND = 2.0  # seconds: "shortly", for a drain that should end idle connections
UPLOAD_SIZE = 100_000


# -- a raw HTTP/1.x client ----------------------------------------------------


# -- a handler whose every step the test controls -----------------------------


# -- the harness ---------------------------------------------------------------


def get(conn: http.client.HTTPConnection, path: str, method: str = "GET") -> tuple[int, bytes]:
    """One request on ``conn``; status and body (the response is always closed)."""
    conn.request(method, path)
    with conn.getresponse() as response:
        return response.status, response.read()


def connection_state(server: GracefulHTTPServer) -> list[tuple[bool, bool]]:
    """(idle, reading) of every live connection, read under the registry lock."""
    with server.registry.locked_items() as items:
        return [(conn.idle, conn.reading) for _request, conn in items]


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


class WideLingerServer(GracefulHTTPServer):
    """Linger widened from 0.2 s so that "the next request arrives within the
    linger" holds on a loaded machine; the logic under test is the same."""

    drain_linger = 2.0


class SecondLingerServer(GracefulHTTPServer):
    drain_linger = 1.0


class QuickIdleServer(GracefulHTTPServer):
    idle_timeout = 0.5


# -- the keep-alive drain ------------------------------------------------------


def test_idle_keepalive_clients_get_a_clean_eof_when_the_drain_starts(harness: Harness) -> None:
    server = harness.serve()
    clients = [harness.client(server) for _ in range(5)]
    for number, client in enumerate(clients):
        client.get(f"/one-{number}")
        response = client.read_response()
        assert response.status == 200
        assert response.header("Connection") is None  # HTTP/1.1: still keep-alive
    wait_until(lambda: server.active_connections == 5, 5.0, "5 live connections")

    started = time.monotonic()
    report = server.drain(DRAIN_TIMEOUT)

    for client in clients:
        assert client.read_to_eof() == b""  # a FIN, not a reset, and no stray bytes
    assert time.monotonic() - started < EOF_BOUND
    assert report.clean
    assert report.forced == 0
    assert report.idle_closed == 5
    assert report.remaining == 0
    assert server.active_connections == 0


def test_connection_that_never_sent_a_request_gets_a_clean_eof(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    wait_until(lambda: server.active_connections == 1, 5.0, "the connection to be accepted")

    report = server.drain(DRAIN_TIMEOUT)

    assert client.read_to_eof() == b""
    assert report.clean
    assert harness.rec.dispatched == []


class LongBoundServer(GracefulHTTPServer):
    """The shortest linger and a long bound: a connection given the bound is told apart
    from one given the linger by seconds, not milliseconds, on a loaded machine."""

    drain_linger = 0.1
    drain_linger_max = 10.0


def test_connection_whose_first_request_is_late_gets_the_whole_bound(harness: Harness) -> None:
    """A client that connected and has not sent its first request yet (descheduled on
    a loaded machine, or between its connect and its send) is about to send it: an
    EOF on a fresh connection is an error no client retries.  So it gets the longest
    linger, ``drain_linger_max``, like a newly handshaken TLS connection, not the
    shortest (which closed it 0.1 s into the drain before).
    """
    server = harness.serve(server_class=LongBoundServer)
    client = harness.client(server)
    wait_until(lambda: server.active_connections == 1, 5.0, "the connection to be accepted")
    wait_until(lambda: idle_for(server) > 0.0, 5.0, "the connection to wait for its request")

    drainer = Drainer(server)
    drainer.wait_listener_closed()
    started = server.registry.started_at
    assert started is not None
    wait_until(
        lambda: time.monotonic() - started > 5 * LongBoundServer.drain_linger,
        5.0,
        "the drain to have run for five times the shortest linger",
    )
    assert server.active_connections == 1  # not closed as a used idle one would be
    client.get("/late")

    response = client.read_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert client.read_to_eof() == b""
    report = drainer.result()
    assert report.clean
    assert report.idle_closed == 0  # served, not cut


def test_in_flight_request_completes_with_connection_close(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.get("/gate/a")
    harness.rec.wait_entered("a")

    drainer = Drainer(server)
    drainer.wait_listener_closed()
    assert server.active_connections == 1  # the drain waits for it
    harness.rec.release("a")

    response = client.read_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert response.body == b"/gate/a draining=True stopping=True"
    assert client.read_to_eof() == b""
    report = drainer.result()
    assert report.clean
    assert report.forced == 0
    assert report.served_during_drain == 1


def test_next_request_right_after_the_drain_starts_is_served_with_close(
    harness: Harness,
) -> None:
    server = harness.serve(server_class=WideLingerServer)
    client = harness.client(server)
    client.get("/first")
    assert client.read_response().header("Connection") is None

    drainer = Drainer(server)
    drainer.wait_listener_closed()
    client.get("/second")  # within the linger of the first response

    response = client.read_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert response.body.startswith(b"/second draining=True")
    assert client.read_to_eof() == b""
    assert harness.rec.dispatched == ["GET /first", "GET /second"]
    report = drainer.result()
    assert report.clean
    assert report.idle_closed == 0  # served, not cut


def test_keepalive_client_that_sends_nothing_more_is_closed_after_the_linger(
    harness: Harness,
) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.get("/first")
    client.read_response()

    report = Drainer(server, timeout=30.0).result()  # ends long before the grace

    assert client.read_to_eof() == b""
    assert report.clean
    assert report.idle_closed == 1
    assert report.elapsed < EOF_BOUND


@pytest.mark.slow
def test_keepalive_client_idle_for_longer_than_the_linger_is_closed_at_once(
    harness: Harness,
) -> None:
    server = harness.serve(server_class=SecondLingerServer)
    client = harness.client(server)
    client.get("/first")
    client.read_response()
    wait_until(
        lambda: idle_for(server) > SecondLingerServer.drain_linger,
        5.0,
        "the connection to be idle for longer than the linger",
    )

    report = server.drain(DRAIN_TIMEOUT)

    assert client.read_to_eof() == b""
    assert report.idle_closed == 1
    assert report.elapsed < SecondLingerServer.drain_linger  # no linger for it


@pytest.mark.parametrize("when", ["same-write", "while-first-in-flight"])
def test_pipelined_request_behind_a_drained_response_is_not_dispatched(
    harness: Harness, when: str
) -> None:
    """RFC 9112 section 9.6: after a response with ``Connection: close`` the server
    MUST NOT process further requests on the connection; DESIGN.md: while draining,
    send ``Connection: close`` and set ``close_connection``.  So the first response
    is complete and says close, the second request is never dispatched (neither
    whole nor truncated), and the client sees a clean EOF, never a half response.
    """
    server = harness.serve()
    client = harness.client(server)
    first, second = request_bytes("/gate/p"), request_bytes("/second")
    client.send(first + second if when == "same-write" else first)
    harness.rec.wait_entered("p")
    if when == "while-first-in-flight":
        client.send(second)

    drainer = Drainer(server)
    drainer.wait_listener_closed()
    harness.rec.release("p")

    response = client.read_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert response.body.startswith(b"/gate/p draining=True")
    assert client.read_to_eof() == b""  # no second (let alone half a second) response
    assert harness.rec.dispatched == ["GET /gate/p"]
    assert drainer.result().clean


@pytest.mark.parametrize("draining", [False, True])
def test_expect_100_continue_then_final_response_says_close_during_drain(
    harness: Harness, draining: bool
) -> None:
    """``Expect: 100-continue`` (curl sends it for large bodies): the interim ``100``
    goes through ``end_headers`` too, but the *final* response is the one that must
    say ``Connection: close`` while draining, since the server then ends the
    connection (a keep-alive client counts EOF after a response without close as an
    error)."""
    server = harness.serve(server_class=WideLingerServer)
    client = harness.client(server)
    client.get("/first")
    assert client.read_response().status == 200
    drainer = Drainer(server) if draining else None
    if drainer is not None:
        drainer.wait_listener_closed()  # the next request comes within the linger

    client.send(
        b"POST /expect HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = client.read_response(head_only=True)
    assert interim.status == 100
    client.send(b"hello")
    final = client.read_response()

    assert final.status == 200
    assert final.body == b"received 5"
    if drainer is None:
        assert final.header("Connection") is None
        assert harness.rec.dispatched == ["GET /first", "POST /expect"]
        return
    assert final.header("Connection") == "close", f"final response headers: {final.headers}"
    assert client.read_to_eof() == b""
    assert drainer.result().clean


def test_half_received_request_head_is_never_dispatched(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.send(b"GET /truncated HTTP/1.1\r\nHost: x\r\n")  # no blank line
    wait_until(lambda: connection_state(server) == [(False, True)], 5.0, "the head to be read")

    report = server.drain(0.5)

    assert harness.rec.dispatched == []
    assert client.read_to_eof() == b""
    assert not report.clean
    assert report.forced == 1
    assert report.remaining == 0


@pytest.mark.parametrize(
    "partial",
    [b"GET /truncated HTTP/1.1\r\nHost: x\r\n", b"GET /truncated HTTP/1.1\r\nHo", b"GET /trunc"],
    ids=["after-a-header", "mid-header", "mid-request-line"],
)
def test_request_head_cut_short_by_client_eof_is_never_dispatched(
    harness: Harness, partial: bytes
) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.send(partial)
    client.sock.shutdown(socket.SHUT_WR)  # the client gives up half-way

    assert client.read_to_eof() == b""
    wait_until(lambda: server.active_connections == 0, 5.0, "the connection to end")
    assert harness.rec.dispatched == []


@pytest.mark.parametrize("protocol", ["HTTP/1.0", "HTTP/1.1"])
def test_http10_client_before_and_during_the_drain(harness: Harness, protocol: str) -> None:
    server = harness.serve(make_handler(harness.rec, protocol))
    before = harness.client(server)
    before.get("/before", "HTTP/1.0")
    response = before.read_response()
    assert response.status_line.startswith(b"HTTP/1.")
    assert response.status == 200
    assert response.body.startswith(b"/before draining=False")
    assert before.read_to_eof() == b""  # HTTP/1.0 without keep-alive: one request

    during = harness.client(server)
    during.get("/gate/h10", "HTTP/1.0")
    harness.rec.wait_entered("h10")
    drainer = Drainer(server)
    drainer.wait_listener_closed()
    harness.rec.release("h10")

    response = during.read_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert response.body.startswith(b"/gate/h10 draining=True")
    assert during.read_to_eof() == b""
    assert drainer.result().clean


def test_slow_upload_in_flight_at_drain_completes_with_close(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    body = bytes(range(256)) * (UPLOAD_SIZE // 256) + b"x" * (UPLOAD_SIZE % 256)
    head = (
        f"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {UPLOAD_SIZE}\r\n\r\n"
    ).encode()
    client.send(head + body[:UPLOAD_CHUNK])
    assert harness.rec.upload_progress.get(timeout=GATE_TIMEOUT) == UPLOAD_CHUNK

    drainer = Drainer(server)
    drainer.wait_listener_closed()
    for offset in range(UPLOAD_CHUNK, UPLOAD_SIZE, UPLOAD_CHUNK):
        client.send(body[offset : offset + UPLOAD_CHUNK])  # paced by the handler's reads
        received = harness.rec.upload_progress.get(timeout=GATE_TIMEOUT)
        assert received == offset + UPLOAD_CHUNK

    response = client.read_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert response.body == f"received {UPLOAD_SIZE}".encode()
    assert client.read_to_eof() == b""
    report = drainer.result()
    assert report.clean
    assert report.forced == 0


def test_connections_queued_in_the_backlog_are_served_by_the_drain(harness: Harness) -> None:
    """Backlog connections are accepted and served while the listener is still open, so
    their first response may or may not say close (DESIGN.md: ``Connection: close`` only
    once the listener is closed).  Either way no client is left with a broken
    connection: one told "keep-alive" gets its next requests answered, until one is
    answered with close."""
    server = harness.serve(server_class=WideLingerServer, forever=False)  # nobody accepts
    clients = [harness.client(server) for _ in range(3)]
    for number, client in enumerate(clients):
        client.get(f"/queued-{number}")

    drainer = Drainer(server)
    for number, client in enumerate(clients):
        response = client.read_response()
        assert response.status == 200
        assert response.body.startswith(f"/queued-{number} draining=True".encode())
        for again in range(100):  # keep-alive until told to close, as a client would
            if response.header("Connection") == "close":
                break
            client.get(f"/again-{number}-{again}")  # within the linger of the last response
            response = client.read_response()
            assert response.status == 200
        assert response.header("Connection") == "close"
        assert client.read_to_eof() == b""
    report = drainer.result()
    assert report.clean
    assert report.backlog_accepted == 3
    assert report.served_during_drain == 3
    assert report.idle_closed == 0
    assert sorted(d for d in harness.rec.dispatched if "queued" in d) == [
        f"GET /queued-{n}" for n in range(3)
    ]


def test_new_connections_are_refused_once_the_listener_is_closed(harness: Harness) -> None:
    server = harness.serve()
    address = address_of(server)
    client = harness.client(server)
    client.get("/gate/r")
    harness.rec.wait_entered("r")
    drainer = Drainer(server)
    drainer.wait_listener_closed()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=SOCKET_TIMEOUT).close()

    harness.rec.release("r")
    assert client.read_response().header("Connection") == "close"
    assert client.read_to_eof() == b""
    assert drainer.result().clean


# -- malformed input -------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET / HTTP/x.y\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 150 + b"\r\n", 431),
        (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET /\r\n\r\n", 505),
    ],
    ids=[
        "garbage",
        "four-words",
        "bad-version",
        "http2",
        "long-line",
        "long-header",
        "many-headers",
        "unknown-method",
        "http09",
    ],
)
def test_malformed_request_gets_a_real_status_line(
    harness: Harness, payload: bytes, status: int
) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.send(payload)

    data = client.read_to_eof()

    assert data.startswith(b"HTTP/1."), f"not an HTTP/1.x response (HTTP/0.9 style?): {data!r}"
    assert int(data.split(b" ", 2)[1]) == status
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nconnection: close" in head
    assert harness.rec.dispatched == []


def test_server_still_serves_after_malformed_requests(harness: Harness) -> None:
    server = harness.serve()
    bad = harness.client(server)
    bad.send(b"garbage\r\n\r\n")
    assert bad.read_to_eof().startswith(b"HTTP/1.1 400")
    conn = harness.http(server)
    assert get(conn, "/fine")[0] == 200


# -- socket options and timeouts -----------------------------------------------------


def test_accepted_sockets_have_tcp_nodelay(harness: Harness) -> None:
    server = harness.serve()
    conn = harness.http(server)
    status, body = get(conn, "/nodelay")
    assert status == 200
    assert int(body) != 0


def test_idle_timeout_closes_an_idle_keepalive_client(harness: Harness) -> None:
    server = harness.serve(server_class=QuickIdleServer, poll_interval=0.1)
    client = harness.client(server)
    client.get("/once")
    assert client.read_response().status == 200
    answered = time.monotonic()

    assert client.read_to_eof() == b""
    waited = time.monotonic() - answered

    assert waited >= QuickIdleServer.idle_timeout * 0.8  # not cut early
    assert waited < QuickIdleServer.idle_timeout + 4.0
    wait_until(lambda: server.active_connections == 0, 5.0, "the connection to be unregistered")
    assert not server.draining  # a plain idle close, no drain involved


@pytest.mark.slow
@pytest.mark.parametrize("part", ["request-line", "header-block"])
def test_idle_timeout_closes_a_client_trickling_a_request_head(harness: Harness, part: str) -> None:
    server = harness.serve(server_class=QuickIdleServer, poll_interval=0.1)
    client = harness.client(server)
    if part == "header-block":
        client.send(b"GET /trickle HTTP/1.1\r\nX-Slow: ")
    else:
        client.send(b"GET /trickle")
    started = time.monotonic()
    closed_after: float | None = None
    for _ in range(100):  # one byte each 0.05 s: 5 s at most, 10x the idle timeout
        readable, _w, _x = select.select([client.sock], [], [], 0.05)
        if readable:
            with contextlib.suppress(ConnectionResetError):
                assert client.sock.recv(65536) == b""  # no response to a half request
            closed_after = time.monotonic() - started
            break
        try:
            client.send(b"a")
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.monotonic() - started
            break

    assert closed_after is not None, "a client trickling a request head was never closed"
    assert closed_after >= QuickIdleServer.idle_timeout * 0.8  # trickling does not buy time
    assert harness.rec.dispatched == []
    wait_until(lambda: server.active_connections == 0, 5.0, "the connection to be unregistered")


# -- what handlers see ----------------------------------------------------------------


def test_draining_and_stopping_are_visible_to_handlers(harness: Harness) -> None:
    server = harness.serve()
    conn = harness.http(server)
    assert get(conn, "/a") == (200, b"/a draining=False stopping=False")

    server.announce_stop()
    assert get(conn, "/b") == (200, b"/b draining=False stopping=True")

    client = harness.client(server)
    client.get("/gate/s")
    harness.rec.wait_entered("s")
    drainer = Drainer(server)
    drainer.wait_listener_closed()
    harness.rec.release("s")
    assert client.read_response().body == b"/gate/s draining=True stopping=True"
    assert client.read_to_eof() == b""
    drainer.result()


def test_announce_stop_makes_the_demo_healthz_fail_while_serving_on(harness: Harness) -> None:
    server = harness.serve(DemoHandler)
    assert get(harness.http(server), "/healthz")[0] == 200

    server.announce_stop()

    assert get(harness.http(server), "/healthz") == (503, b"stopping\n")
    assert get(harness.http(server), "/") == (200, b"hello from graceserve\n")
    assert not server.draining
    report = server.drain(DRAIN_TIMEOUT)
    assert report.clean


# -- stdlib handlers and user overrides ---------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "hello.txt").write_bytes(b"hello, file\n")
    (tmp_path / "sub").mkdir()
    return tmp_path


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class KeepAliveFiles(QuietFiles):
    protocol_version = "HTTP/1.1"


@pytest.mark.parametrize("how", ["class-in-cwd", "partial-directory"])
def test_simple_http_request_handler_serves_a_directory(
    harness: Harness, site: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "class-in-cwd":
        monkeypatch.chdir(site)
        handler: Any = QuietFiles
    else:  # what `python -m http.server --directory` does
        handler = functools.partial(QuietFiles, directory=str(site))
    server = harness.serve(handler)

    assert get(harness.http(server), "/hello.txt") == (200, b"hello, file\n")
    status, listing = get(harness.http(server), "/")
    assert status == 200
    assert b"hello.txt" in listing
    assert b"sub/" in listing
    assert get(harness.http(server), "/missing.txt")[0] == 404

    conn = harness.http(server)
    conn.request("HEAD", "/hello.txt")
    with conn.getresponse() as response:
        assert response.status == 200
        assert response.getheader("Content-Length") == str(len(b"hello, file\n"))
        assert response.read() == b""


def test_simple_http_request_handler_keepalive_and_drain(harness: Harness, site: Path) -> None:
    server = harness.serve(functools.partial(KeepAliveFiles, directory=str(site)))
    conn = harness.http(server)
    conn.request("GET", "/hello.txt")
    with conn.getresponse() as response:
        assert response.read() == b"hello, file\n"
        assert not response.will_close
    sock = conn.sock
    conn.request("HEAD", "/hello.txt")
    with conn.getresponse() as response:
        assert response.status == 200
        assert response.read() == b""
        assert not response.will_close
    assert conn.sock is sock  # both on one connection
    assert server.active_connections == 1

    drainer = Drainer(server, timeout=DRAIN_TIMEOUT)
    drainer.wait_listener_closed()
    report = drainer.result()
    assert report.clean
    assert report.idle_closed == 1
    raw = cast(socket.socket, sock)
    assert raw.recv(1) == b""


def test_user_overrides_and_super_calls_still_work_and_drain_forces_close(
    harness: Harness,
) -> None:
    rec = harness.rec

    class Custom(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            rec.call("setup")

        def handle_one_request(self) -> None:
            rec.call("handle_one_request")
            super().handle_one_request()

        def parse_request(self) -> bool:
            ok = super().parse_request()
            rec.call(f"parse_request:{ok}")
            return ok

        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() == "server":
                value = "custom/1.0"
            super().send_header(keyword, value)

        def end_headers(self) -> None:
            self.send_header("X-Custom", "yes")
            super().end_headers()

        def do_GET(self) -> None:
            rec.dispatch(self.path)
            if self.path.startswith("/gate/"):
                rec.gate(self.path[len("/gate/") :])
            body = b"custom"
            self.send_response(200)
            self.send_header("Connection", "keep-alive")  # the user insists
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = harness.serve(Custom)
    client = harness.client(server)
    client.get("/plain")
    response = client.read_response()
    assert response.status == 200
    assert response.body == b"custom"
    assert response.header("Connection") == "keep-alive"
    assert response.header("Server") == "custom/1.0"
    assert response.header("X-Custom") == "yes"

    client.get("/gate/u")
    rec.wait_entered("u")
    drainer = Drainer(server)
    drainer.wait_listener_closed()
    rec.release("u")
    response = client.read_response()
    assert response.header("Connection") == "close"  # exactly one, and it says close
    assert response.header("X-Custom") == "yes"
    assert client.read_to_eof() == b""
    assert drainer.result().clean
    assert rec.dispatched == ["/plain", "/gate/u"]
    assert rec.calls[0] == "setup"
    assert rec.calls.count("parse_request:True") == 2
    assert rec.calls.count("handle_one_request") >= 2


def test_handler_already_drain_aware_is_used_as_is(harness: Harness) -> None:
    class Aware(DrainAwareRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = harness.serve(Aware)
    assert server.drain_aware(Aware) is Aware
    conn = harness.http(server)
    assert get(conn, "/")[0] == 204
    assert server.drain(DRAIN_TIMEOUT).clean
