"""At ``max_connections``, idle keep-alive connections make room for a new client.

Why these exist: at the cap the accept loop leaves new clients in the kernel
backlog, so 1,024 idle keep-alive clients (the default cap) made every new
client wait up to the 60 s idle timeout.  Now the loop, at the cap with a
client queued, closes idle keep-alive connections, oldest idle first, the way
the drain closes them (a FIN, or a TLS ``close_notify`` then FIN; never one with
bytes queued), and the new client is served at once.  Connections that are
busy, in the middle of a request, or that have not sent their first request
keep their slots.

Synchronisation: the registry's states and the listener's accept queue
(``/proc/net/tcp``), polled with a deadline; a short bounded window where a
test shows something does *not* happen.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graceserve import GracefulHTTPServer
from graceserve.http.server import IDLE, HTTPConnection
from testsupport.front import (
    KINDS,
    Echo,
    address_of,
    connect,
    read_response,
    read_to_end,
    serving,
    wait_for_server,
)
from testsupport.procfs import accept_queue
from testsupport.tlsapp import Pki, make_pki
from testsupport.waiting import wait_until

CAP = 10
GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cert(pki: Pki) -> tuple[Path, Path]:
    return pki.issue("server", "localhost")


def idle_keep_alive(server: GracefulHTTPServer) -> int:
    with server.registry.locked_items() as items:
        return sum(
            1
            for _request, conn in items
            if isinstance(conn, HTTPConnection) and conn.state == IDLE and conn.used
        )


def idle_count(server: GracefulHTTPServer, count: int) -> Callable[[], bool]:
    return lambda: idle_keep_alive(server) == count


@pytest.mark.parametrize(
    "tls", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["plain", "tls"]
)
@pytest.mark.parametrize("kind", KINDS)
def test_a_new_client_at_the_cap_is_served_at_once_and_the_oldest_idle_one_makes_room(
    kind: str, tls: bool, pki: Pki, cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="graceserve")
    context = pki.client_context() if tls else None
    attributes: dict[str, Any] = {"max_connections": CAP, "idle_timeout": 60.0}
    with (
        serving(kind, cert if tls else None, **attributes) as server,
        contextlib.ExitStack() as stack,
    ):
        idle: list[socket.socket] = []
        for _ in range(CAP):  # one after the other: the first is the oldest idle
            sock = stack.enter_context(connect(server, context))
            sock.sendall(GET)
            assert read_response(sock)[:1] == (200,)
            idle.append(sock)
            # The server's thread, not only the client, is done with it: idle from now.
            wait_until(idle_count(server, len(idle)), 10.0, f"{len(idle)} clients idle")

        started = time.monotonic()
        with connect(server, context) as newcomer:
            newcomer.sendall(GET)
            status, _headers, body = read_response(newcomer)
            waited = time.monotonic() - started
        assert (status, body) == (200, b"hello")
        assert waited < 5.0, f"the new client waited {waited:.1f} s"  # not the 60 s timeout

        # The oldest idle client was closed cleanly: EOF, not a reset, nothing lost.
        assert read_to_end(idle[0]) == (b"", "eof")
        # The others kept their connections, and still work.
        for sock in idle[1:]:
            assert wait_for_server(sock, 0.05) is None, "another idle client was closed"
        for sock in idle[1:]:
            sock.sendall(GET)
            assert read_response(sock)[:1] == (200,)
    assert "closing idle keep-alive connections, oldest first, to make room" in caplog.text
    assert "Traceback" not in caplog.text


class Gated(Echo):
    """GET waits on the server's gate before it answers."""

    gate: threading.Event

    def do_GET(self) -> None:
        self.gate.wait(20)
        super().do_GET()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_busy_and_unfinished_connections_are_not_reclaimed(kind: str) -> None:
    gate = threading.Event()

    def gated_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        gate.wait(20)
        start_response("200 OK", [("Content-Length", "5")])
        return [b"hello"]

    target = type("G", (Gated,), {"gate": gate}) if kind == "handler" else gated_app
    attributes: dict[str, Any] = {"max_connections": CAP, "idle_timeout": 60.0}
    with serving(kind, None, target, **attributes) as server, contextlib.ExitStack() as stack:
        try:
            held = []
            for n in range(CAP):  # half in flight, half half-way through a head
                sock = stack.enter_context(connect(server))
                sock.sendall(GET if n % 2 else b"GET / HTTP/1.1\r\nHost: te")
                held.append(sock)
            wait_until(lambda: server.active_connections == CAP, 10.0, "every client in")
            newcomer = stack.enter_context(connect(server))
            newcomer.sendall(GET)
            port = address_of(server)[1]
            wait_until(lambda: accept_queue(port) == 1, 10.0, "the newcomer queued")
            assert wait_for_server(newcomer, 0.5) is None, "served over the cap"
            for sock in held:
                assert wait_for_server(sock, 0.0) is None, "a busy connection was closed"
        finally:
            gate.set()
        assert read_response(newcomer)[:1] == (200,)  # once a slot frees


def test_a_tcp_server_at_the_cap_leaves_new_clients_in_the_backlog() -> None:
    # The base server knows nothing of idleness: reclaim_idle closes none.
    from graceserve import GracefulTCPServer

    server = GracefulTCPServer(("127.0.0.1", 0), Echo)
    try:
        assert server.reclaim_idle(5) == 0
    finally:
        server.server_close()
