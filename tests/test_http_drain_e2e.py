"""End to end: ``python -m graceserve`` (the demo app) drained by real signals.

Why these exist: the in-process tests prove the drain's pieces; these prove the
process as a user runs it: the signal relay, the lame-duck delay, the order of
the drain steps and the exit code, seen from real clients on 127.0.0.1.

Synchronisation: the server prints a line when it is listening, when the lame
duck starts and when the drain starts; the tests wait on those lines, on
responses, or poll with a deadline.  Nothing sleeps to synchronise.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Callable

import pytest

from testsupport.httpharness import RawClient
from testsupport.keepalive import (
    LOAD_DEADLINE,
    LOAD_THREADS,
    SOCKET_TIMEOUT,
    ClientLog,
    keepalive_client,
)
from testsupport.process import ServerProcess
from testsupport.waiting import wait_until

EOF_BOUND = 2.0  # seconds from SIGTERM to the EOF of an idle keep-alive connection

StartServer = Callable[..., ServerProcess]


def start_demo(start_server: StartServer, *args: str) -> tuple[ServerProcess, tuple[str, int]]:
    """The demo app on a free port of 127.0.0.1; the process and its real address."""
    proc = start_server(["--bind", "127.0.0.1:0", *args])
    return proc, proc.wait_ready()


def fetch(address: tuple[str, int], path: str) -> tuple[int, bytes, str | None]:
    """One request on a new connection: status, body and the Connection header."""
    conn = http.client.HTTPConnection(*address, timeout=SOCKET_TIMEOUT)
    try:
        conn.request("GET", path)
        with conn.getresponse() as response:
            return response.status, response.read(), response.getheader("Connection")
    finally:
        conn.close()


def refused(address: tuple[str, int]) -> bool:
    """Whether a new connection to ``address`` is refused right now.

    A reset means the connect raced the listener's close (it landed in the backlog
    after the sweep): not refused yet, so look again.
    """
    try:
        socket.create_connection(address, timeout=SOCKET_TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


def test_idle_keepalive_clients_get_a_clean_eof_shortly_after_sigterm(
    start_server: StartServer,
) -> None:
    proc, address = start_demo(start_server)
    clients = [RawClient(address) for _ in range(5)]
    try:
        for client in clients:
            client.get("/")
            response = client.read_response()
            assert response.status == 200
            assert response.header("Connection") is None  # keep-alive

        proc.send(signal.SIGTERM)
        sent = time.monotonic()
        for client in clients:
            assert client.read_to_eof() == b""  # a FIN, never a reset
        assert time.monotonic() - sent < EOF_BOUND
    finally:
        for client in clients:
            client.close()
    assert proc.wait_exit() == 0, proc.output
    assert "stopped:" in proc.output


@pytest.mark.slow
def test_in_flight_request_completes_with_close_after_sigterm(start_server: StartServer) -> None:
    proc, address = start_demo(start_server)
    slow = RawClient(address)
    idle = RawClient(address)
    try:
        idle.get("/")
        assert idle.read_response().status == 200
        slow.get("/slow?seconds=3")  # long enough that the drain starts first, under load

        proc.send(signal.SIGTERM)
        proc.wait_for_line(r"draining")
        assert idle.read_to_eof() == b""
        wait_until(lambda: refused(address), 5.0, "new connections to be refused")

        response = slow.read_response()
        assert response.status == 200
        assert response.body == b"slept 3 s\n"
        assert response.header("Connection") == "close"
        assert slow.read_to_eof() == b""
    finally:
        slow.close()
        idle.close()
    assert proc.wait_exit() == 0, proc.output


@pytest.mark.slow
def test_drain_delay_keeps_serving_while_healthz_fails(start_server: StartServer) -> None:
    proc, address = start_demo(start_server, "--drain-delay", "3")
    assert fetch(address, "/healthz")[0] == 200
    early = RawClient(address)  # a keep-alive client from before the signal
    try:
        early.get("/")
        assert early.read_response().status == 200

        proc.send(signal.SIGTERM)
        proc.wait_for_line(r"lame duck")
        lame_duck_started = time.monotonic()
        try:
            health = fetch(address, "/healthz")  # new connections are still accepted
            hello = fetch(address, "/")
            early.get("/")
            kept = early.read_response()
        except ConnectionRefusedError:
            pytest.fail(
                f"refused {time.monotonic() - lame_duck_started:.2f}s into a 3s lame duck;"
                f" stderr:\n{proc.output}"
            )
        assert health == (503, b"stopping\n", None)
        assert hello == (200, b"hello from graceserve\n", None)
        assert kept.status == 200
        assert kept.header("Connection") is None  # still keep-alive during the lame duck

        proc.wait_for_line(r"draining")
        assert time.monotonic() - lame_duck_started >= 2.0  # we may see its start late
        wait_until(lambda: refused(address), 5.0, "the listener to close after the delay")
        assert early.read_to_eof() == b""
    finally:
        early.close()
    assert proc.wait_exit() == 0, proc.output


# -- keep-alive under load ---------------------------------------------------------


def test_keepalive_load_through_sigterm_breaks_no_request(start_server: StartServer) -> None:
    """Every request sent gets a complete response; a connection only ends after a
    response that said close, and the reconnect is refused; exit code 0."""
    proc, address = start_demo(start_server)
    deadline = time.monotonic() + LOAD_DEADLINE
    logs = [ClientLog() for _ in range(LOAD_THREADS)]
    threads = [
        threading.Thread(
            target=keepalive_client, args=(address, log, deadline), name=f"test-load-{n}"
        )
        for n, log in enumerate(logs)
    ]
    for thread in threads:
        thread.start()
    try:
        for log in logs:
            assert log.warm.wait(LOAD_DEADLINE), f"a client never got warm: {log}"
        proc.send(signal.SIGTERM)
    finally:
        for thread in threads:
            thread.join(LOAD_DEADLINE + SOCKET_TIMEOUT)
    code = proc.wait_exit()

    summary = "\n".join(f"client {n}: {log}" for n, log in enumerate(logs))
    assert not [log for log in logs if log.errors], f"broken requests:\n{summary}"
    timely = [log for log in logs if not log.late]
    assert len(timely) >= LOAD_THREADS // 2, f"most clients were late:\n{summary}"
    assert all(log.refused_after_close for log in timely), (
        f"a client did not end cleanly:\n{summary}"
    )
    assert all(log.close_responses == log.connects for log in timely), summary
    assert code == 0, proc.output
