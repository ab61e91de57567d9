"""The drain, for WSGI: the same promises as for handlers (test_httpserver, test_http_drain_e2e).

In-flight requests finish (with ``Connection: close``), idle keep-alive
connections get a clean EOF, a request racing the drain is answered with
``Connection: close``, and a response still streaming at the deadline is cut
with its iterable's ``close()`` called.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest

from graceserve.http.server import BODY
from testsupport.waiting import Call, wait_until
from testsupport.wsgiapps import Address, Client, get, hello_app, serving

Environ = dict[str, Any]


def test_in_flight_request_finishes_with_connection_close() -> None:
    entered, release = threading.Event(), threading.Event()

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        entered.set()
        release.wait(10)
        return hello_app(environ, start_response)

    with serving(app) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        assert entered.wait(10)
        drain = Call(server.drain, 10.0)
        wait_until(lambda: server.listener_closed, what="the listener to close")
        release.set()
        reply = client.read_response()
        assert (reply.status, reply.body) == (200, b"hello\n")
        assert reply.header("Connection") == "close"
        assert client.at_eof()
        report = drain.result()
    assert report.clean
    assert report.forced == 0


def test_idle_keepalive_connection_is_closed_cleanly() -> None:
    with serving(hello_app, drain_linger=0.05) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        reply = client.read_response()
        assert reply.header("Connection") is None
        wait_until(lambda: _idle(server), what="the connection to be idle")
        report = server.drain(10.0)
        assert client.at_eof()
    assert report.clean
    assert report.idle_closed == 1


def _idle(server: Any) -> bool:
    with server.registry.locked_items() as items:
        return bool(items) and all(conn.idle for _, conn in items)


def test_request_racing_the_drain_is_answered_with_connection_close() -> None:
    """Within the linger, a keep-alive client's next request is answered, saying close."""
    with serving(hello_app, drain_linger=5.0) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        client.read_response()
        wait_until(lambda: _idle(server), what="the connection to be idle")
        drain = Call(server.drain, 10.0)
        wait_until(lambda: server.listener_closed, what="the listener to close")
        client.request("GET", "/")
        reply = client.read_response()
        assert reply.status == 200
        assert reply.header("Connection") == "close"
        assert client.at_eof()
        assert drain.result().clean


def test_streaming_response_cut_at_the_deadline_has_close_called() -> None:
    closed = threading.Event()
    streaming = threading.Event()

    class Ticker:
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(100000):  # bounded: ~ an hour
                streaming.set()
                yield b"tick\n"
                time.sleep(0.02)

        def close(self) -> None:
            closed.set()

    def app(environ: Environ, start_response: Any) -> Ticker:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Ticker()

    with serving(app) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        client.read_head()
        assert streaming.wait(10)
        report = server.drain(0.3)
        assert report.forced == 1
        assert not report.clean
        assert closed.wait(10)


def test_streaming_app_ends_politely_when_graceserve_stopping() -> None:
    def app(environ: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        stopping = environ["graceserve.stopping"]
        for _ in range(100000):
            if stopping():
                yield b"data: bye\n\n"
                return
            yield b"data: tick\n\n"
            time.sleep(0.01)

    with serving(app) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        reply_head = client.read_head()
        assert reply_head.header("Transfer-Encoding") == "chunked"
        report = server.drain(10.0)
        assert report.clean
        rest = client.file.read()
        assert rest.endswith(b"data: bye\n\n\r\n0\r\n\r\n")


def test_example_app_events_say_goodbye_at_the_drain_and_health_fails() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        from examples.wsgi_app import app
    finally:
        sys.path.pop(0)
    with serving(app) as server, Client(server.server_address) as client:
        assert get_status(server.server_address, "/healthz") == 200
        client.request("GET", "/events")
        assert client.read_head().header("Content-Type") == "text/event-stream"
        assert client.file.readline() == b"e\r\n"  # the first chunk: "data: tick 0\n\n"
        report = server.drain(10.0)
        assert report.clean
        assert b"event: bye" in client.file.read()


def get_status(address: Address, path: str) -> int:
    with Client(address) as client:
        client.request("GET", path, headers={"Connection": "close"})
        return client.read_response().status


def test_idle_timeout_closes_a_quiet_keepalive_connection() -> None:
    with serving(hello_app, idle_timeout=0.2) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        assert client.read_response().status == 200
        assert client.at_eof()  # closed by the reaper, between requests


def test_head_trickling_in_past_the_idle_timeout_is_cut_and_never_dispatched() -> None:
    called = threading.Event()

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        called.set()
        return hello_app(environ, start_response)

    with serving(app, idle_timeout=0.2) as server, Client(server.server_address) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: h\r\n")  # and never the blank line
        assert client.at_eof()
    assert not called.is_set()


def _reading_app(errors: list[BaseException]) -> Any:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            body = environ["wsgi.input"].read(length)
        except ConnectionError as exc:
            errors.append(exc)
            raise
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"got %d" % len(body)]

    return app


def test_body_stalled_while_the_app_reads_it_is_cut_by_the_idle_timeout() -> None:
    errors: list[BaseException] = []
    with (
        serving(_reading_app(errors), idle_timeout=0.3) as server,
        Client(server.server_address) as client,
    ):
        client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
        assert client.at_eof()  # cut: the thread is not held for ever
        wait_until(lambda: errors, what="the app's read to fail")
        assert isinstance(errors[0], ConnectionError)
        assert get(server.server_address).status == 200  # and the server still serves


@pytest.mark.slow
def test_body_that_keeps_arriving_is_never_cut_however_long_it_takes() -> None:
    # ... as long as it keeps up the minimum rate (500 bytes/s by default): 1,000 here.
    errors: list[BaseException] = []
    with (
        serving(_reading_app(errors), idle_timeout=2.0) as server,
        Client(server.server_address) as client,
    ):
        client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2500\r\n\r\n")
        for _ in range(25):  # 2.5 s in all, longer than the idle timeout; gaps far under it
            time.sleep(0.1)  # paces the upload; not synchronisation
            client.send(b"x" * 100)
        reply = client.read_response()
        assert (reply.status, reply.body) == (200, b"got 2500")
    assert errors == []


def test_body_stalled_at_the_drain_is_closed_after_the_linger_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[BaseException] = []
    with (
        serving(_reading_app(errors), drain_linger_max=0.3) as server,
        Client(server.server_address) as client,
    ):
        client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")

        def reading_body() -> bool:
            with server.registry.locked_items() as items:
                return any(getattr(conn, "state", None) == BODY for _sock, conn in items)

        wait_until(reading_body, what="the app to wait for the rest of the body")
        with caplog.at_level(logging.WARNING, logger="graceserve"):
            report = server.drain(5.0)
        assert report.elapsed < 3.0  # the linger, not the grace
        assert client.at_eof()
    assert "closed 1 connections whose request body stopped arriving" in caplog.text


def test_unix_socket_serves_with_empty_remote_addr(tmp_path: Path) -> None:
    import socket

    from graceserve.wsgi.server import GracefulWSGIServer

    def app(environ: Environ, start_response: Any) -> list[bytes]:
        body = f"[{environ['REMOTE_ADDR']}]".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    path = str(tmp_path / "wsgi.sock")
    server_class = type("UnixWSGI", (GracefulWSGIServer,), {"address_family": socket.AF_UNIX})
    server = server_class(path, validator(app))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            data = b"".join(iter(lambda: sock.recv(65536), b""))
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert data.endswith(b"\r\n\r\n2\r\n[]\r\n0\r\n\r\n")
    finally:
        server.server_close()
        thread.join(10)
