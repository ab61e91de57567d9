"""Clients slow on purpose: a body trickled below the minimum rate, a head trickled for ever.

Why these exist: the idle timeout counts from a connection's last progress, so a
body trickled one byte at a time reset it for ever and held a thread per client
(any number of clients: a slow POST attack).  The reaper now asks a body for
``min_body_rate`` bytes per second over each ``idle_timeout`` of waiting for it
(``graceserve.http.slowclients``); the app's own time between reads does not count,
and a slow but steady upload is served.  A request head already has a
whole-head deadline (``idle_timeout`` from its request line; trickling does not
move it): checked here for WSGI apps and TLS too, where it was not before.
Every case runs for a handler target and a WSGI app.

Synchronisation: a ``select()`` on the client socket is both the pause between
trickled bytes and the detector of the server hanging up; the registry's state
(polled with a deadline) says when a body is being read.  Nothing sleeps to
synchronise (the waits inside the apps are the apps' own simulated work).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from graceserve import GracefulHTTPServer
from graceserve.http.server import BODY, HTTPConnection
from graceserve.http.slowclients import acked_bytes, body_too_slow, unsent_bytes, write_stalled
from testsupport.front import (
    KINDS,
    Echo,
    connect,
    read_response,
    read_to_end,
    serving,
    wait_for_server,
)
from testsupport.tlsapp import Pki, make_pki
from testsupport.waiting import wait_until

IDLE = 1.0  # idle_timeout, and the rate's window
SLACK = 6.0  # the reaper runs every quarter of IDLE; generous for a loaded machine


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cert(pki: Pki) -> tuple[Path, Path]:
    return pki.issue("server", "localhost")


def states(server: GracefulHTTPServer) -> list[int]:
    with server.registry.locked_items() as items:
        return [conn.state for _request, conn in items if isinstance(conn, HTTPConnection)]


def post_head(length: int) -> bytes:
    return f"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\n\r\n".encode()


def trickle(sock: socket.socket, pause: float, limit: int) -> tuple[int, float | None, bytes]:
    """Send one byte every ``pause`` s until the server answers or hangs up (or ``limit``
    bytes): (bytes sent, seconds until then or None, the first byte it sent)."""
    started = time.monotonic()
    for sent in range(limit):
        spoke = wait_for_server(sock, pause)
        if spoke is not None:
            return sent, time.monotonic() - started, spoke
        try:
            sock.sendall(b"a")
        except OSError:
            return sent, time.monotonic() - started, b""
    return limit, None, b""


# -- the rules, without I/O (body) and on a real socket pair (writes) ---------------


def body_waiting(waited: float, received: int, serial: int = 1) -> HTTPConnection:
    """A record whose body has waited ``waited`` s in all (all of it now) for ``received`` bytes."""
    conn = HTTPConnection(cast(Any, None), ("test", 0))
    conn.state, conn.body_serial, conn.body_received = BODY, serial, received
    conn.body_waited, conn.since = 0.0, 100.0 - waited  # blocked since then, "now" is 100
    return conn


def test_the_rate_is_judged_once_per_window_of_waiting() -> None:
    conn = body_waiting(waited=0.9, received=10)
    assert body_too_slow(conn, 100.0, 1.0, 500) is None  # the window is not over
    conn.since = 99.0  # one second of waiting for 10 bytes
    assert body_too_slow(conn, 100.0, 1.0, 500) == pytest.approx(10.0)


def test_a_fast_start_buys_one_window_not_a_licence_to_trickle() -> None:
    conn = body_waiting(waited=1.0, received=1_000_000)
    assert body_too_slow(conn, 100.0, 1.0, 500) is None  # 1 MB/s: the next window starts
    conn.body_received += 10  # then 10 bytes in the next second of waiting
    conn.since = 98.0
    assert body_too_slow(conn, 100.0, 1.0, 500) == pytest.approx(10.0)


def test_a_new_body_starts_from_nothing() -> None:
    conn = body_waiting(waited=1.0, received=1_000_000)
    assert body_too_slow(conn, 100.0, 1.0, 500) is None
    conn.body_serial, conn.body_received = 2, 0  # the connection's next request
    conn.since = 99.5
    assert body_too_slow(conn, 100.0, 1.0, 500) is None  # half a window of its own


def test_a_send_queue_that_does_not_move_is_a_stall_and_one_that_moves_is_not() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited: no autotuning
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        writer = socket.create_connection(listener.getsockname(), timeout=5)
        reader, _ = listener.accept()
        with writer, reader:
            conn = HTTPConnection(writer, ("test", 0))
            assert write_stalled(writer, conn, 0.0, 1.0) is None  # nothing queued
            writer.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:  # fill the queue: the reader reads nothing
                    writer.send(b"x" * 65536)
            samples = [(-1, -1)]

            def steady() -> bool:  # the kernel has moved all it can into the reader's buffer
                samples.append((unsent_bytes(writer), acked_bytes(writer) or 0))
                return samples[-1] == samples[-2] and samples[-1][0] > 0

            wait_until(steady, 10.0, "the queue to stop moving")
            assert write_stalled(writer, conn, 10.0, 1.0) is None  # first seen now
            assert write_stalled(writer, conn, 10.5, 1.0) is None  # not for long enough
            assert write_stalled(writer, conn, 11.0, 1.0) == pytest.approx(1.0)
            acked = acked_bytes(writer)
            reader.settimeout(5)
            reader.recv(1 << 20)  # it reads: acknowledged bytes move
            wait_until(lambda: acked_bytes(writer) != acked, 5.0, "an acknowledgement")
            assert write_stalled(writer, conn, 12.0, 1.0) is None


# -- a body below the minimum rate is cut ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_body_trickled_below_the_minimum_rate_is_cut(
    kind: str, tls: bool, pki: Pki, cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="graceserve")
    # 20 bytes/s, each byte well inside the idle timeout: only the rate can catch it.
    with serving(kind, cert if tls else None, idle_timeout=IDLE) as server:
        context = pki.client_context() if tls else None
        with connect(server, context) as sock:
            sock.sendall(post_head(100_000))
            wait_until(lambda: BODY in states(server), 5.0, "the body to be read")
            sent, cut_after, first = trickle(sock, 0.05, int((IDLE + SLACK) / 0.05))
            assert cut_after is not None, f"still connected after trickling {sent} bytes"
            data = first + read_to_end(sock)[0]
            assert b"\r\n\r\n100000" not in data, data  # the target never saw a whole body
            assert cut_after >= IDLE * 0.8  # a window of waiting first
        wait_until(lambda: server.active_connections == 0, 5.0, "the connection to end")
        with connect(server, context) as sock:  # the server serves on
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_response(sock)[0] == 200
    assert "under the minimum of 500 (--min-body-rate)" in caplog.text
    assert "Traceback" not in caplog.text
    assert "exception while serving" not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_without_a_minimum_rate_a_trickled_body_is_not_cut(kind: str) -> None:
    # The same trickle for three windows, with --min-body-rate 0: the old behaviour.
    with serving(kind, idle_timeout=IDLE, min_body_rate=None) as server, connect(server) as sock:
        sock.sendall(post_head(100_000))
        wait_until(lambda: BODY in states(server), 5.0, "the body to be read")
        sent, cut_after, _first = trickle(sock, 0.05, int(3 * IDLE / 0.05))
        assert cut_after is None, f"cut after {cut_after} s ({sent} bytes)"


# -- what must not be cut --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_but_steady_upload_is_served(kind: str) -> None:
    # 1,000 bytes every 0.15 s for ~6 s: three windows of 2 s, each needing 200 bytes.
    chunks, size = 40, 1000
    with serving(kind, idle_timeout=2.0, min_body_rate=100) as server, connect(server) as sock:
        sock.sendall(post_head(chunks * size))
        for _ in range(chunks):
            spoke = wait_for_server(sock, 0.15)
            assert spoke is None, "the server answered or hung up in the middle"
            sock.sendall(b"u" * size)
        status, _headers, body = read_response(sock)
    assert (status, body) == (200, str(chunks * size).encode())


class SlowReader(Echo):
    """Reads its body 100 bytes at a time, with work between the reads."""

    def do_POST(self) -> None:
        total = 0
        while chunk := self.rfile.read(100):
            total += len(chunk)
            threading.Event().wait(0.1)  # the app's own work, not synchronisation
        self._answer(str(total).encode())


def slow_reader_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    total = 0
    while chunk := environ["wsgi.input"].read(100):
        total += len(chunk)
        threading.Event().wait(0.1)  # the app's own work, not synchronisation
    body = str(total).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_an_app_that_reads_its_body_slowly_is_not_the_clients_fault(kind: str) -> None:
    # 2 s of reading a body that arrived at once: far under 100 kB/s by the wall
    # clock, but the server never waited for the client.
    target = SlowReader if kind == "handler" else slow_reader_app
    attributes: dict[str, Any] = {"idle_timeout": IDLE, "min_body_rate": 100_000}
    with serving(kind, target=target, **attributes) as server, connect(server) as sock:
        sock.sendall(post_head(2000) + b"b" * 2000)
        status, _headers, body = read_response(sock)
    assert (status, body) == (200, b"2000")


# -- a trickled head: the whole-head deadline --------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_head_trickled_for_ever_is_cut_by_the_whole_head_deadline(
    kind: str, tls: bool, pki: Pki, cert: tuple[Path, Path]
) -> None:
    with serving(kind, cert if tls else None, idle_timeout=IDLE) as server:
        context = pki.client_context() if tls else None
        with connect(server, context) as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            sent, cut_after, first = trickle(sock, 0.05, int((IDLE + SLACK) / 0.05))
            assert cut_after is not None, f"still connected after trickling {sent} bytes"
            assert cut_after >= IDLE * 0.8
            data = first + read_to_end(sock)[0]
    assert data == b"", f"an unfinished head was answered: {data[:80]!r}"
