"""The drain-aware HTTP handler's contract with handlers and clients (issue 11, HTTP half).

Why these exist: each test pins one hole found on landed main, seen from the
wire (raw sockets) or from the handler: the handler's own
``default_request_version``, the stdlib's quiet end of a write that timed
out, an honest class name, stalled bodies and unfinished heads against the
idle timeout and the drain, request smuggling, HTTP/1.0 keep-alive said out
loud, and no body wrapper on a bodiless request.

Synchronisation: as in test_httpserver (gates, the registry polled with a
deadline, ``listener_closed``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import http.server
import io
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from graceserve import GracefulHTTPServer
from graceserve.core.server import OPEN, Connection
from graceserve.http import server as httpserver
from graceserve.http.server import BODY, HEAD, IDLE, HTTPConnection
from testsupport.httpharness import (
    DRAIN_TIMEOUT,
    Drainer,
    Harness,
    RawClient,
    address_of,
    idle_for,
    make_handler,
)
from testsupport.process import ServerProcess
from testsupport.waiting import wait_until


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def states(server: GracefulHTTPServer) -> list[int]:
    """The state of every live connection."""
    with server.registry.locked_items() as items:
        return [conn.state for _request, conn in items if isinstance(conn, HTTPConnection)]


# -- 1. default_request_version, and HTTP/0.9 -----------------------------------


class NoGetHandler(http.server.BaseHTTPRequestHandler):
    """A handler that chose HTTP/1.1 as its default version and has no do_GET."""

    default_request_version = "HTTP/1.1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_handlers_own_default_request_version_is_honoured(harness: Harness) -> None:
    server = harness.serve(NoGetHandler)
    client = harness.client(server)
    client.send(b"GET /\r\n\r\n")

    data = client.read_to_eof()

    # What the stdlib answers with the same handler: no do_GET, so 501 (not 505).
    assert data.startswith(b"HTTP/1.1 501 "), data


def test_versionless_request_is_dispatched_as_the_stdlib_would(harness: Harness) -> None:
    rec = harness.rec

    class Handler(NoGetHandler):
        def do_GET(self) -> None:
            rec.dispatch(f"{self.command} {self.path} {self.request_version}")
            body = b"hi"
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(body)

    server = harness.serve(Handler)
    client = harness.client(server)
    client.send(b"GET /v\r\n")  # no blank line: an HTTP/0.9 request is one line

    data = client.read_to_eof()  # answered at once, and closed

    assert data.startswith(b"HTTP/1.1 200 "), data
    assert data.endswith(b"hi")
    assert rec.dispatched == ["GET /v HTTP/1.1"]


def test_http09_request_without_blank_line_gets_505_at_once(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.send(b"GET /\r\n")  # a real HTTP/0.9 request: no headers, no blank line

    data = client.read_to_eof()  # the stdlib would wait for headers here

    assert data.startswith(b"HTTP/1."), data
    assert int(data.split(b" ", 2)[1]) == 505
    assert harness.rec.dispatched == []


# -- 2. a write that times out ends the connection quietly ----------------------------


def test_write_timeout_to_a_stalled_client_is_one_log_line(
    harness: Harness, graceserve_log: list[str]
) -> None:
    logged: list[str] = []
    done = threading.Event()

    class Big(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 0.3  # StreamRequestHandler: a socket timeout on the connection

        def do_GET(self) -> None:
            body = b"x" * (64 * 1024 * 1024)  # far more than the socket buffers hold
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logged.append(format % args)

        def finish(self) -> None:
            super().finish()
            done.set()

    server = harness.serve(Big)
    client = harness.client(server)
    client.get("/big")  # and never read the response

    assert done.wait(10.0), "the handler never ended"
    wait_until(lambda: server.active_connections == 0, 5.0, "the connection to end")
    assert [line for line in logged if "timed out" in line.lower()], logged
    assert not [m for m in graceserve_log if "exception" in m.lower()], graceserve_log


# -- 3. an honest class name ----------------------------------------------------------


def test_drain_aware_class_has_an_honest_name(harness: Harness) -> None:
    handler = make_handler(harness.rec)
    server = harness.serve(handler)

    aware = server.drain_aware(handler)

    assert aware is not handler
    assert aware.__name__ == f"DrainAware[{handler.__name__}]"
    assert aware.__qualname__ == f"DrainAware[{handler.__qualname__}]"
    assert repr(aware) != repr(handler)


# -- 5. a stalled body is cut by the idle timeout --------------------------------------


class CappedQuickIdle(GracefulHTTPServer):
    idle_timeout = 1.0
    max_connections = 10


def stalled_post(address: tuple[str, int], sent: bytes = b"abc") -> RawClient:
    client = RawClient(address)
    client.send(b"POST /stall HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n" + sent)
    return client


@pytest.mark.slow
def test_stalled_request_bodies_are_cut_by_the_idle_timeout(harness: Harness) -> None:
    server = harness.serve(server_class=CappedQuickIdle, poll_interval=0.1)
    address = address_of(server)
    stalled = [stalled_post(address) for _ in range(10)]
    try:
        wait_until(lambda: states(server).count(BODY) == 10, 5.0, "ten bodies being read")
        normal = harness.client(server)  # the eleventh waits in the backlog
        normal.get("/after")

        response = normal.read_response()  # a slot frees once a stalled body is cut

        assert response.status == 200
        assert response.body.startswith(b"/after")
        for client in stalled:
            data = client.read_to_eof()
            assert not data.startswith(b"HTTP/1.1 200"), data  # no handler saw a whole body
    finally:
        for client in stalled:
            client.close()


# -- 6. an unfinished request is not in-flight work at the drain --------------------------


class ShortLingerMax(GracefulHTTPServer):
    """The tests of the linger's bound need not wait out the default 2 s: what they
    check is measured against ``drain_linger_max`` itself."""

    drain_linger_max = 0.5


@pytest.mark.slow
@pytest.mark.parametrize("what", ["stalled-head", "slowloris", "stalled-body"])
def test_unfinished_request_at_drain_gets_the_linger_then_is_closed(
    harness: Harness, what: str
) -> None:
    server = harness.serve(server_class=ShortLingerMax)
    client = harness.client(server)
    if what == "stalled-body":
        client.send(b"POST /p HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nabc")
        expected = BODY
    else:
        client.send(b"GET /unfinished HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        expected = HEAD
    wait_until(lambda: states(server) == [expected], 5.0, "the request to be half read")
    stop = threading.Event()

    def trickle() -> None:  # 1 byte each 0.05 s until cut (bounded)
        for _ in range(400):
            if stop.wait(0.05):
                return
            try:
                client.send(b"a")
            except OSError:
                return

    trickler = threading.Thread(target=trickle, name="test-slowloris", daemon=True)
    if what == "slowloris":
        trickler.start()
    try:
        report = server.drain(DRAIN_TIMEOUT)
    finally:
        stop.set()
        if trickler.is_alive():
            trickler.join(5.0)

    assert report.elapsed < server.drain_linger_max + 2.0, report
    assert report.forced == 0, report
    assert report.remaining == 0, report
    # A stalled body's handler was dispatched, and saw the body end short: no 200.
    assert harness.rec.dispatched == (["POST /p"] if what == "stalled-body" else [])
    assert not client.read_to_eof().startswith(b"HTTP/1.1 200")


# -- 7. request smuggling -------------------------------------------------------------------

SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-cl": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "space-before-colon": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
    "cl-list": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
}


@pytest.mark.parametrize("payload", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_vectors_get_400_and_close(harness: Harness, payload: bytes) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.send(payload + b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")

    data = client.read_to_eof()

    assert data.startswith(b"HTTP/1.1 400 "), data
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nconnection: close" in head
    assert data.count(b"HTTP/1.1 ") == 1, data
    assert harness.rec.dispatched == []


def test_unread_body_is_discarded_not_parsed_as_a_request(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    inner = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    client.send(
        b"GET /outer HTTP/1.1\r\nHost: t\r\nContent-Length: "
        + str(len(inner)).encode()
        + b"\r\n\r\n"
        + inner
    )
    first = client.read_response()
    client.get("/next")  # the same connection carries on after the discarded body
    second = client.read_response()

    assert first.status == 200
    assert second.status == 200
    assert second.body.startswith(b"/next")
    assert harness.rec.dispatched == ["GET /outer", "GET /next"]


def test_unread_body_too_large_to_discard_closes_the_connection(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.send(b"GET /big-body HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")

    response = client.read_response()

    assert response.status == 200
    assert response.header("Connection") == "close"
    assert client.read_to_eof() == b""


def test_body_reader_only_on_requests_with_a_body(harness: Harness) -> None:
    seen: list[tuple[str, bool, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(("GET", isinstance(self.rfile, io.BufferedReader), b""))
            self.reply()

        def do_POST(self) -> None:
            raw = isinstance(self.rfile, io.BufferedReader)
            seen.append(("POST", raw, self.rfile.read()))  # read() stops at the body's end
            self.reply()

        def reply(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = harness.serve(Handler)
    client = harness.client(server)
    client.send(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
    assert client.read_response().status == 204
    client.get("/g")
    assert client.read_response().status == 204

    assert seen == [("POST", False, b"hello"), ("GET", True, b"")]


# -- 8. HTTP/1.0 keep-alive granted is said ----------------------------------------------


def test_http10_keep_alive_granted_is_said_in_the_response(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    for path in ("/one", "/two"):
        client.send(f"GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
        response = client.read_response()
        assert response.status == 200
        assert response.header("Connection") == "keep-alive"
        assert response.body.startswith(path.encode())
    assert harness.rec.dispatched == ["GET /one", "GET /two"]


def test_http10_without_keep_alive_is_not_told_keep_alive(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.send(b"GET /one HTTP/1.0\r\n\r\n")
    response = client.read_response()
    assert response.header("Connection") != "keep-alive"
    assert client.read_to_eof() == b""


# -- 9. the reaper: state transitions, and no cut of a connection that moved on ----------------


def test_idle_state_is_recorded_between_requests(harness: Harness) -> None:
    server = harness.serve()
    client = harness.client(server)
    client.get("/a")
    client.read_response()
    wait_until(lambda: states(server) == [IDLE], 5.0, "the connection to be idle")
    started = time.monotonic()
    server.drain(DRAIN_TIMEOUT)
    assert time.monotonic() - started < DRAIN_TIMEOUT
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address_of(server), timeout=1.0).close()


def test_drain_during_a_request_that_raced_the_linger_is_answered_with_close(
    harness: Harness,
) -> None:
    """A client whose next request comes within its learned rhythm is answered, with close."""
    server = harness.serve()
    client = harness.client(server)
    for number in range(5):
        client.get(f"/r{number}")
        assert client.read_response().status == 200
    drainer = Drainer(server)
    drainer.wait_listener_closed()
    client.get("/last")
    response = client.read_response()
    assert response.header("Connection") == "close"
    assert client.read_to_eof() == b""
    assert drainer.result().clean


# -- 4. the linger follows each connection's rhythm -----------------------------------------

RHYTHM = 0.5  # seconds between a response and the next request (the client's think time)


@pytest.mark.slow
def test_linger_learns_a_connections_rhythm(harness: Harness) -> None:
    """Idle for longer than ``drain_linger`` at the drain, but within its own rhythm:
    the next request is answered with close instead of a FIN racing it."""
    server = harness.serve()
    client = harness.client(server)
    for number in range(4):
        if number:
            time.sleep(RHYTHM)  # the client's think time: the behaviour under test
        client.get(f"/r{number}")
        assert client.read_response().status == 200
    wait_until(
        lambda: idle_for(server) > server.drain_linger + 0.05,
        5.0,
        "the connection to be idle for longer than the fixed linger",
    )
    assert server.drain_linger_max + 0.01 > 3 * RHYTHM  # the learned linger is not capped

    drainer = Drainer(server)
    drainer.wait_listener_closed()
    client.get("/next")
    response = client.read_response()

    assert response.status == 200
    assert response.header("Connection") == "close"
    assert client.read_to_eof() == b""
    report = drainer.result()
    assert report.clean
    assert report.idle_closed == 0


def test_linger_of_a_silent_connection_is_bounded(harness: Harness) -> None:
    """However slow its rhythm, an idle connection is closed within ``drain_linger_max``."""
    server = harness.serve(server_class=ShortLingerMax)
    client = harness.client(server)
    client.get("/first")
    client.read_response()
    with server.registry.locked_items() as items:
        for _request, conn in items:
            assert isinstance(conn, HTTPConnection)
            conn.rhythm = 100.0  # as if it had a 100 s think time
    report = server.drain(DRAIN_TIMEOUT)
    assert client.read_to_eof() == b""
    assert report.idle_closed == 1
    assert report.elapsed < server.drain_linger_max + 1.0


# -- 9. the reaper's system calls are made outside the registry lock ----------------------------


def test_reaper_peeks_outside_the_registry_lock(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the reaper checks a socket for queued bytes, handlers can still take the lock."""
    server = harness.serve()
    client = harness.client(server)
    client.get("/first")
    client.read_response()
    free_during_peek: list[bool] = []
    real_peek = httpserver._has_queued_bytes

    def peek(sock: socket.socket) -> bool:
        def try_lock() -> None:
            got = server.registry.lock.acquire(timeout=2.0)
            free_during_peek.append(got)
            if got:
                server.registry.lock.release()

        other = threading.Thread(target=try_lock, name="test-lock-probe")
        other.start()
        other.join(5.0)
        return real_peek(sock)

    monkeypatch.setattr(httpserver, "_has_queued_bytes", peek)
    report = server.drain(DRAIN_TIMEOUT)

    assert free_during_peek, "the reaper never peeked"
    assert all(free_during_peek), "the registry lock was held during a peek"
    assert report.idle_closed == 1
    assert client.read_to_eof() == b""


def test_chunked_body_is_passed_through_and_the_connection_then_closes(harness: Harness) -> None:
    """A stdlib handler de-chunks a chunked body itself: it gets the bytes as sent."""
    got: list[bytes] = []

    class Dechunker(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            data = b""
            while size := int(self.rfile.readline().strip(), 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()  # the blank line after the last chunk
            got.append(data)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = harness.serve(Dechunker)
    client = harness.client(server)
    client.send(
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    response = client.read_response()

    assert response.status == 204
    assert response.header("Connection") == "close"
    assert client.read_to_eof() == b""
    assert got == [b"hello world"]


def test_expect_100_refused_by_the_handler_closes_the_connection(harness: Harness) -> None:
    class Refuser(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_expect_100(self) -> bool:
            self.send_response_only(417)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = harness.serve(Refuser)
    client = harness.client(server)
    client.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert client.read_response().status == 417
    assert client.read_to_eof() == b""  # at once: no wait for a body that may never come


def test_the_wait_before_a_first_request_is_not_a_rhythm() -> None:
    """The rhythm is the gap between a response and the next request.  The wait before
    the first one is the client's connect-to-send time plus however long the server took
    to read it (a pool thread busy elsewhere, a loaded machine): learning it gave a fresh
    connection a linger of three times a scheduling delay, so making room at the
    connection cap closed a newer idle connection instead of the oldest."""
    left, right = socket.socketpair()
    try:
        conn = httpserver.HTTPConnection(left, ("test", 0))
        conn.to_idle(10.0)  # accepted (or parked before its first byte)
        conn.to_head(threading.Lock(), 13.0)  # its first request line, read 3 s later
        assert (conn.rhythm, conn.used) == (0.0, True)
    finally:
        left.close()
        right.close()


def test_an_http_connection_has_one_state_and_its_flags_only_read_it() -> None:
    """One connection state with one writer: its transitions.  The generic
    ``Connection`` flags (idle, reading, idle_since) are views of it, never a second
    way to write it."""
    left, right = socket.socketpair()
    try:
        conn = httpserver.HTTPConnection(left, ("test", 0))
        assert conn.state == httpserver.BUSY
        assert conn.to_idle(12.5) == OPEN
        assert (conn.state, conn.since, conn.idle, conn.reading, conn.idle_since) == (
            IDLE, 12.5, True, False, 12.5,
        )  # fmt: skip
        assert conn.to_head(threading.Lock(), 13.0) == OPEN
        assert (conn.state, conn.idle, conn.reading, conn.used) == (HEAD, False, True, True)
        assert conn.to_busy() == OPEN
        assert (conn.state, conn.idle, conn.reading) == (httpserver.BUSY, False, False)
        assert conn.to_idle(14.0) == OPEN
        assert conn.to_head(threading.Lock(), 14.5) == OPEN
        assert conn.rhythm == 0.5  # the gap between a response and the next request
        with pytest.raises(AttributeError):
            conn.idle = True  # type: ignore[misc]
    finally:
        left.close()
        right.close()


@pytest.mark.slow
def test_sigterm_with_unfinished_requests_exits_0_well_within_the_grace(
    start_server: Callable[..., ServerProcess],
) -> None:
    """The process view of item 6: stalled heads and bodies do not hold the drain to
    the grace (it used to exit 4 after the whole grace)."""
    grace = 10.0
    proc = start_server(["--bind", "127.0.0.1:0", "--grace", f"{grace:g}"])
    address = proc.wait_ready()
    clients = [RawClient(address) for _ in range(3)]
    try:
        clients[0].send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Stalled: ")
        clients[1].send(b"GET /")
        clients[2].send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        healthy = RawClient(address)
        clients.append(healthy)
        healthy.get("/")
        assert healthy.read_response().status == 200  # every connection was accepted

        sent = time.monotonic()
        proc.send(signal.SIGTERM)
        code = proc.wait_exit()
        took = time.monotonic() - sent
    finally:
        for client in clients:
            client.close()
    assert code == 0, proc.output
    assert took < grace / 2, f"exit after {took:.1f}s:\n{proc.output}"


def test_reaper_also_reads_a_plain_connections_flags(harness: Harness) -> None:
    """A registry record that is a plain ``Connection`` (a subclass's own make_connection)
    is reaped by its ``idle`` flag like an HTTPConnection."""
    server = harness.serve(forever=False)
    left, right = socket.socketpair()
    try:
        conn = Connection(left, ("test", 0))
        conn.idle = True
        conn.idle_since = time.monotonic() - 10.0  # idle far longer than any linger
        server.registry.add(left, conn)

        def serve() -> None:  # what a handler thread does: block, then unregister
            left.recv(1)
            server.registry.discard(left)

        handler = threading.Thread(target=serve, name="test-plain-conn")
        handler.start()
        report = server.drain(DRAIN_TIMEOUT)
        handler.join(5.0)
    finally:
        left.close()
        right.close()
    assert report.idle_closed == 1
    assert report.elapsed < server.drain_linger_max
