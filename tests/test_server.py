"""GracefulTCPServer with real sockets on 127.0.0.1.

Every server binds port 0; every client socket has a timeout; handlers that must
stay in flight wait on a ``threading.Event`` the test sets (the ``harness``
fixture sets every gate before it closes the servers, so a failing test cannot
leave a handler thread behind).  "The kernel queued this connection" is read
from the listener's accept queue (``TCP_INFO``), and "the accept loop went
round without accepting it" from ``service_actions`` calls, never from a sleep.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from graceserve import DrainController, DrainReport, GracefulTCPServer
from graceserve.core import accepting as accepting_module
from testsupport.tcpharness import (
    HOST,
    MAX_LINE,
    TIMEOUT,
    Client,
    Counter,
    GatedHandler,
    Harness,
    ProbeServer,
    address,
    listener_closed,
    probe,
)
from testsupport.waiting import Call, wait_until

MAX_LINES = 1000  # bound on any per-connection read loop


# -- helpers ------------------------------------------------------------------


def accept_queue_length(server: socketserver.TCPServer) -> int:
    """Connections the kernel completed that nobody accepted yet (tcpi_unacked of a listener)."""
    info = server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("=8B5I", info)[-1])


def conn_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("graceserve-conn-")]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def echo(server: socketserver.TCPServer, payload: bytes = b"ping\n") -> None:
    """One full session: the server still accepts and serves."""
    client = Client(server)
    try:
        client.send(payload)
        assert client.line() == payload
    finally:
        client.close()


# -- handlers -------------------------------------------------------------------


class EchoHandler(socketserver.StreamRequestHandler):
    """Echo lines until EOF."""

    def handle(self) -> None:
        for _ in range(MAX_LINES):
            line = self.rfile.readline(MAX_LINE)
            if not line:
                return
            self.wfile.write(line)


class IdleHandler(socketserver.StreamRequestHandler):
    """Say it is there, then block reading a line that never comes."""

    def handle(self) -> None:
        probe(self).entered.increment()
        self.rfile.readline(MAX_LINE)


# -- drop-in compatibility ------------------------------------------------------


def test_is_a_threading_tcp_server_and_echoes(harness: Harness) -> None:
    server = harness.server(EchoHandler)
    assert isinstance(server, socketserver.ThreadingTCPServer)
    assert address(server)[0] == HOST
    assert address(server)[1] != 0
    client = harness.client(server)
    for payload in (b"one\n", b"two\n"):
        client.send(payload)
        assert client.line() == payload
    assert server.active_connections == 1
    assert server.draining is False
    client.close()
    wait_until(lambda: server.active_connections == 0, what="connection to end")


def test_listen_backlog_is_larger_than_the_stdlib_default(harness: Harness) -> None:
    server = harness.server(EchoHandler, serve=False)
    info = server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    max_backlog = struct.unpack_from("=8B6I", info)[-1]  # tcpi_sacked of a listener
    assert max_backlog >= 128


def test_serve_forever_shutdown_and_server_close(harness: Harness) -> None:
    server = GracefulTCPServer((HOST, 0), EchoHandler)
    thread = harness.serve(server)
    try:
        echo(server)
        Call(server.shutdown).result()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    finally:
        server.server_close()
    assert server.draining is True  # server_close drains
    assert listener_closed(server)
    server.server_close()  # a second close is harmless


def test_serve_forever_again_after_shutdown(harness: Harness) -> None:
    server = harness.server(EchoHandler)
    echo(server, b"first\n")
    server.shutdown()
    harness.threads[0].join(TIMEOUT)
    assert not harness.threads[0].is_alive()
    harness.serve(server)
    echo(server, b"second\n")


def test_handle_request_serves_one_connection(harness: Harness) -> None:
    server = harness.server(EchoHandler, serve=False)
    server.timeout = TIMEOUT
    client = harness.client(server)
    client.send(b"once\n")
    server.handle_request()
    assert client.line() == b"once\n"
    client.close()
    wait_until(lambda: server.active_connections == 0, what="connection to end")


def test_handle_request_timeout_calls_handle_timeout(harness: Harness) -> None:
    timeouts = Counter()

    class TimeoutServer(ProbeServer):
        timeout = 0.01

        def handle_timeout(self) -> None:
            timeouts.increment()

    server = harness.server(EchoHandler, cls=TimeoutServer, serve=False)
    server.handle_request()
    assert timeouts.value == 1


def test_bind_and_activate_false(harness: Harness) -> None:
    server = GracefulTCPServer((HOST, 0), EchoHandler, bind_and_activate=False)
    harness.servers.append(server)
    server.server_bind()
    server.server_activate()
    harness.serve(server)
    echo(server)


def test_bind_failure_raises_and_leaks_nothing(harness: Harness) -> None:
    first = harness.server(EchoHandler, serve=False)
    with pytest.raises(OSError, match="in use") as excinfo:
        GracefulTCPServer(address(first), EchoHandler)
    assert excinfo.value.errno == errno.EADDRINUSE
    del excinfo
    gc.collect()  # an unclosed socket would raise ResourceWarning (an error) here


def test_context_manager_waits_for_in_flight_request(harness: Harness) -> None:
    # The gate opens only once the drain has started: leaving the block must
    # wait for the in-flight request (the stdlib abandons or hangs on it).
    server = ProbeServer(GatedHandler)
    harness.servers.append(server)  # teardown opens the gate if the test fails

    def open_when_draining() -> None:
        wait_until(lambda: server.draining, what="the drain to start")
        server.gate.set()

    with server as entered:
        assert entered is server
        serving = harness.serve(server)
        client = harness.client(server)
        client.send(b"cm\n")
        server.entered.wait_for(1)
        opener = Call(open_when_draining)
        assert server.active_connections == 1
    opener.result()
    assert server.active_connections == 0
    assert client.rest() == b"done cm\n"
    serving.join(TIMEOUT)
    assert not serving.is_alive()
    report = server.registry.report
    assert report is not None
    assert report.clean
    assert report.served_during_drain == 1


def test_subclass_hooks_are_called_in_order(harness: Harness) -> None:
    calls: list[str] = []

    class HookedServer(ProbeServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            calls.append("verify_request")
            return super().verify_request(request, client_address)

        def process_request(self, request: Any, client_address: Any) -> None:
            calls.append("process_request")
            super().process_request(request, client_address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            calls.append("finish_request")
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            calls.append("shutdown_request")
            super().shutdown_request(request)

        def close_request(self, request: Any) -> None:
            calls.append("close_request")
            super().close_request(request)

    server = harness.server(EchoHandler, cls=HookedServer, poll_interval=0.01)
    echo(server)
    wait_until(lambda: "close_request" in calls, what="close_request")
    assert calls == [
        "verify_request",
        "process_request",
        "finish_request",
        "shutdown_request",
        "close_request",
    ]
    assert server.active_connections == 0
    start = server.actions.value
    server.actions.wait_for(start + 2)  # service_actions runs on every turn of the loop


# -- shutdown -----------------------------------------------------------------------


def test_shutdown_wakes_the_loop_instead_of_polling(harness: Harness) -> None:
    # With a 60 s poll interval, a polling loop would keep shutdown() waiting ~60 s.
    server = harness.server(EchoHandler, poll_interval=60.0)
    echo(server)  # the loop is running
    Call(server.shutdown).result(timeout=5.0)
    harness.threads[0].join(TIMEOUT)
    assert not harness.threads[0].is_alive()


def test_shutdown_idle_server_returns_quickly(harness: Harness) -> None:
    server = harness.server(EchoHandler)
    echo(server)
    started = time.monotonic()
    server.shutdown()
    # Loose: the stdlib's 0.5 s poll stops in 0.25 s on average and up to 0.5 s.
    assert time.monotonic() - started < 0.4


def test_shutdown_when_serve_forever_never_ran_returns(harness: Harness) -> None:
    server = harness.server(EchoHandler, serve=False)
    Call(server.shutdown).result(timeout=5.0)  # the stdlib waits for ever here


def test_shutdown_from_the_serving_thread_does_not_deadlock(harness: Harness) -> None:
    class SelfStoppingServer(ProbeServer):
        def service_actions(self) -> None:
            super().service_actions()
            self.shutdown()

    server = harness.server(EchoHandler, cls=SelfStoppingServer, poll_interval=0.01)
    harness.threads[0].join(TIMEOUT)
    assert not harness.threads[0].is_alive()
    assert server.actions.value >= 1


def test_shutdown_leaves_in_flight_connections_alone(harness: Harness) -> None:
    server = harness.server(GatedHandler)
    client = harness.client(server)
    client.send(b"x\n")
    server.entered.wait_for(1)
    server.shutdown()
    assert server.active_connections == 1
    server.gate.set()
    assert client.rest() == b"done x\n"


# -- the drain ------------------------------------------------------------------------


def test_drain_idle_server_with_serve_forever_returns_promptly(harness: Harness) -> None:
    server = harness.server(EchoHandler, poll_interval=60.0)
    echo(server)
    wait_until(lambda: server.active_connections == 0, what="connection to end")
    report: DrainReport = Call(server.drain, 5.0).result(timeout=5.0)
    assert report.clean
    assert (report.forced, report.active_at_start, report.remaining) == (0, 0, 0)
    assert report.elapsed < 1.0  # loose; a polling loop would take up to 60 s
    harness.threads[0].join(TIMEOUT)
    assert not harness.threads[0].is_alive(), "serve_forever did not stop at the drain"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address(server), timeout=TIMEOUT).close()
    Call(server.serve_forever).result()  # returns at once after the drain


def test_drain_without_serve_forever(harness: Harness) -> None:
    server = harness.server(EchoHandler, serve=False)
    report = server.drain(5.0)
    assert report.clean
    assert report.backlog_accepted == 0
    assert listener_closed(server)


def test_drain_waits_for_in_flight_request(harness: Harness) -> None:
    server = harness.server(GatedHandler)
    client = harness.client(server)
    client.send(b"slow\n")
    server.entered.wait_for(1)
    drain = Call(server.drain, TIMEOUT)
    wait_until(lambda: listener_closed(server), what="the listener to close")
    assert server.draining
    assert server.active_connections == 1
    assert drain.is_alive(), "drain() returned with a request in flight"
    server.gate.set()
    report: DrainReport = drain.result()
    assert client.rest() == b"done slow\n"
    assert report.clean
    assert report.forced == 0
    assert report.active_at_start == 1
    assert report.served_during_drain == 1
    assert report.remaining == 0
    assert report.backlog_accepted == 0
    assert server.active_connections == 0


def test_active_connections_and_draining(harness: Harness) -> None:
    server = harness.server(GatedHandler)
    assert (server.active_connections, server.draining, server.stopping) == (0, False, False)
    clients = [harness.client(server) for _ in range(2)]
    for client in clients:
        client.send(b"held\n")
    server.entered.wait_for(2)
    assert (server.active_connections, server.draining) == (2, False)
    server.announce_stop()
    assert (server.stopping, server.draining) == (True, False)
    drain = Call(server.drain, TIMEOUT)
    wait_until(lambda: server.draining, what="the drain to start")
    assert server.active_connections == 2
    server.gate.set()
    report = drain.result()
    assert (server.active_connections, server.draining) == (0, True)
    assert report.served_during_drain == 2


def test_drain_serves_queued_backlog_without_serve_forever(harness: Harness) -> None:
    queued = 8
    server = harness.server(GatedHandler, serve=False)
    server.gate.set()
    clients = [harness.client(server) for _ in range(queued)]
    for i, client in enumerate(clients):
        client.send(b"q%d\n" % i)
    wait_until(lambda: accept_queue_length(server) == queued, what="clients to be queued")
    report = server.drain(TIMEOUT)
    for i, client in enumerate(clients):
        assert client.rest() == b"done q%d\n" % i  # served, not reset
    assert report.backlog_accepted == queued
    assert report.served_during_drain == queued
    assert report.active_at_start == 0
    assert report.clean
    assert server.active_connections == 0


def test_drain_serves_backlog_held_back_by_max_connections(harness: Harness) -> None:
    server = harness.server(GatedHandler, poll_interval=0.01)
    server.max_connections = 1
    server.gates[b"first"] = threading.Event()
    first = harness.client(server)
    first.send(b"first\n")
    server.entered.wait_for(1)
    server.gate.set()  # queued ones answer at once when served
    queued = [harness.client(server) for _ in range(3)]
    for i, client in enumerate(queued):
        client.send(b"q%d\n" % i)
    wait_until(lambda: accept_queue_length(server) == 3, what="clients to be queued")
    drain = Call(server.drain, TIMEOUT)
    wait_until(lambda: listener_closed(server), what="the listener to close")
    for i, client in enumerate(queued):
        assert client.rest() == b"done q%d\n" % i
    assert drain.is_alive()
    server.gates[b"first"].set()
    report: DrainReport = drain.result()
    assert first.rest() == b"done first\n"
    assert report.backlog_accepted == 3
    assert report.active_at_start == 1
    assert report.served_during_drain == 4
    assert report.clean


def test_drain_cuts_idle_connection_at_deadline(harness: Harness) -> None:
    server = harness.server(IdleHandler)
    client = harness.client(server)
    server.entered.wait_for(1)
    report = server.drain(0.2)
    assert client.rest() == b""  # EOF, not a hang and not a reset
    assert report.forced == 1
    assert report.clean is False
    assert report.remaining == 0
    assert report.served_during_drain == 0
    assert report.active_at_start == 1
    assert server.active_connections == 0
    assert server.errors == []  # a cut is not an error


def test_server_close_does_not_hang_on_idle_client(harness: Harness) -> None:
    server = harness.server(IdleHandler)
    server.close_timeout = 0.2
    harness.client(server)
    server.entered.wait_for(1)
    Call(server.server_close).result()  # the stdlib joins this handler for ever
    report = server.registry.report
    assert report is not None
    assert report.forced == 1


def test_drain_reports_stuck_handler_as_remaining(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    server = harness.server(GatedHandler)
    client = harness.client(server)
    client.send(b"stuck\n")
    server.entered.wait_for(1)
    report = server.drain(0.1)
    assert report.forced == 1
    assert report.remaining == 1
    assert report.clean is False
    assert server.active_connections == 1
    server.gate.set()  # the handler now writes to a cut socket
    wait_until(lambda: server.active_connections == 0, what="the stuck handler to end")
    wait_until(lambda: not conn_threads(), what="the handler thread to end")
    assert client.rest() == b""
    assert server.errors == [], "a write to a cut connection was reported as an error"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert server.drain() is report


def test_new_connection_refused_while_in_flight_one_is_served(harness: Harness) -> None:
    server = harness.server(GatedHandler)
    client = harness.client(server)
    client.send(b"inflight\n")
    server.entered.wait_for(1)
    drain = Call(server.drain, TIMEOUT)
    wait_until(lambda: listener_closed(server), what="the listener to close")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address(server), timeout=TIMEOUT).close()
    assert server.active_connections == 1
    server.gate.set()
    assert client.rest() == b"done inflight\n"
    report: DrainReport = drain.result()
    assert report.clean
    assert report.backlog_accepted == 0


def test_repeated_drain_returns_the_same_report(harness: Harness) -> None:
    server = harness.server(EchoHandler)
    first = server.drain(1.0)
    assert server.drain() is first
    assert server.drain(0) is first
    server.server_close()
    assert server.registry.report is first


def test_concurrent_drains_share_one_report(harness: Harness) -> None:
    server = harness.server(GatedHandler)
    client = harness.client(server)
    client.send(b"shared\n")
    server.entered.wait_for(1)
    drains = [Call(server.drain, TIMEOUT), Call(server.drain, TIMEOUT)]
    wait_until(lambda: listener_closed(server), what="the listener to close")
    assert all(d.is_alive() for d in drains)
    server.gate.set()
    first, second = (d.result() for d in drains)
    assert first is second
    assert first.clean
    assert first.served_during_drain == 1
    assert client.rest() == b"done shared\n"


def test_drain_from_a_handler_thread_raises(harness: Harness) -> None:
    class DrainingHandler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            server = probe(self)
            try:
                server.drain(0)
            except RuntimeError as exc:
                server.results.append(str(exc))
            self.wfile.write(b"ok\n")

    server = harness.server(DrainingHandler)
    client = harness.client(server)
    assert client.line() == b"ok\n"
    assert len(server.results) == 1
    assert "handler thread" in str(server.results[0])
    assert server.draining is False
    assert harness.client(server).line() == b"ok\n"  # still accepting


# -- connections never leak --------------------------------------------------------


def assert_recovered(server: ProbeServer, payload: bytes = b"again\n") -> None:
    """The count is back to zero and the server still serves, then drains cleanly."""
    wait_until(lambda: server.active_connections == 0, what="the count to return to zero")
    echo(server, payload)
    wait_until(lambda: server.active_connections == 0, what="the count to return to zero")
    report = server.drain(TIMEOUT)
    assert report.clean
    assert report.remaining == 0


@pytest.mark.parametrize("hook", ["setup", "handle", "finish"])
def test_exception_in_handler_hook_does_not_leak(harness: Harness, hook: str) -> None:
    failures = {"left": 1}

    class FailingHandler(EchoHandler):
        def maybe_fail(self, where: str) -> None:
            if where == hook and failures["left"]:
                failures["left"] -= 1
                raise ValueError(f"boom in {where}")

        def setup(self) -> None:
            super().setup()
            self.maybe_fail("setup")

        def handle(self) -> None:
            self.maybe_fail("handle")
            super().handle()

        def finish(self) -> None:
            super().finish()
            self.maybe_fail("finish")

    server = harness.server(FailingHandler)
    client = harness.client(server)
    if hook == "finish":
        client.send(b"before\n")
        assert client.line() == b"before\n"
        client.sock.shutdown(socket.SHUT_WR)
    assert client.rest() == b""
    wait_until(lambda: len(server.errors) == 1, what="handle_error")
    assert server.errors == [ValueError]
    assert_recovered(server)


def test_handle_error_logs_the_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    class RaisingHandler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            raise ValueError("boom")

    server = GracefulTCPServer((HOST, 0), RaisingHandler)
    harness.servers.append(server)
    harness.serve(server)
    assert harness.client(server).rest() == b""
    wait_until(lambda: server.active_connections == 0, what="the connection to end")
    records = [r for r in caplog.records if r.name == "graceserve" and "serving" in r.message]
    assert len(records) == 1
    # The docstring promises "with its traceback", as the stdlib's handle_error prints.
    assert records[0].exc_info is not None, "handle_error logged no traceback"
    assert isinstance(records[0].exc_info[1], ValueError)


def test_handle_error_raising_does_not_leak(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    class BadErrorHandlerServer(ProbeServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            super().handle_error(request, client_address)
            raise RuntimeError("handle_error is broken too")

    class RaisingHandler(EchoHandler):
        def handle(self) -> None:
            if not probe(self).errors:
                raise ValueError("boom")
            super().handle()

    server = harness.server(RaisingHandler, cls=BadErrorHandlerServer)
    assert harness.client(server).rest() == b""
    wait_until(lambda: server.active_connections == 0, what="the count to return to zero")
    assert any("handle_error() raised" in r.message for r in caplog.records)
    assert_recovered(server)


@pytest.mark.parametrize("verdict", ["refuse", "raise"])
def test_verify_request_false_or_raising_does_not_leak(harness: Harness, verdict: str) -> None:
    verdicts = [verdict]

    class PickyServer(ProbeServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            if verdicts:
                if verdicts.pop() == "raise":
                    raise ValueError("verify_request is broken")
                return False
            return True

    server = harness.server(EchoHandler, cls=PickyServer)
    assert harness.client(server).rest() == b""
    wait_until(lambda: not verdicts, what="verify_request")
    if verdict == "raise":
        wait_until(lambda: len(server.errors) == 1, what="handle_error")
        assert server.errors == [ValueError]
    else:
        assert server.errors == []
    assert_recovered(server)


def test_thread_start_failure_does_not_leak(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = threading.Thread.start
    failed = threading.Event()

    def start_failing_once(thread: threading.Thread) -> None:
        if thread.name.startswith("graceserve-conn-") and not failed.is_set():
            failed.set()
            raise RuntimeError("can't start new thread")
        real_start(thread)

    server = harness.server(EchoHandler)
    monkeypatch.setattr(threading.Thread, "start", start_failing_once)
    assert harness.client(server).rest() == b""
    assert failed.is_set()
    wait_until(lambda: len(server.errors) == 1, what="handle_error")
    assert server.errors == [RuntimeError]
    assert_recovered(server)
    server.server_close()  # the stdlib raises here after a failed start


def test_system_exit_in_handler_does_not_leak(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    escaped: list[type[BaseException]] = []
    reported = threading.Event()

    def excepthook(args: Any) -> None:
        escaped.append(args.exc_type)
        reported.set()

    monkeypatch.setattr(threading, "excepthook", excepthook)
    exits = {"left": 1}

    class ExitingHandler(EchoHandler):
        def handle(self) -> None:
            if exits["left"]:
                exits["left"] -= 1
                sys.exit(3)
            super().handle()

    server = harness.server(ExitingHandler)
    assert harness.client(server).rest() == b""
    assert reported.wait(TIMEOUT)
    assert escaped == [SystemExit]  # like the stdlib: it ends the thread, nothing else
    assert_recovered(server)


def test_shutdown_request_override_without_super_does_not_leak(harness: Harness) -> None:
    closed = Counter()

    class OwnCloseServer(ProbeServer):
        def shutdown_request(self, request: Any) -> None:
            closed.increment()
            request.close()

    server = harness.server(EchoHandler, cls=OwnCloseServer)
    echo(server, b"first\n")
    closed.wait_for(1)
    assert_recovered(server)
    assert closed.value == 2


@pytest.mark.parametrize(("code", "logged"), [(errno.EMFILE, True), (errno.ECONNABORTED, False)])
def test_accept_error_does_not_stop_the_accept_loop(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: int,
    logged: bool,
) -> None:
    server = harness.server(EchoHandler, serve=False)
    real_get_request = server.get_request
    failures = Counter()

    def get_request_failing_once() -> tuple[socket.socket, Any]:
        if failures.value == 0:
            failures.increment()
            raise OSError(code, os.strerror(code))
        return real_get_request()

    monkeypatch.setattr(server, "get_request", get_request_failing_once)
    thread = harness.serve(server, poll_interval=0.01)
    echo(server)
    assert failures.value == 1
    assert thread.is_alive()
    messages = [r.message for r in caplog.records if r.name == "graceserve"]
    if logged:
        assert any("accept() failed" in m for m in messages)
        assert any("accepting connections again" in m for m in messages)
    else:
        assert messages == []
    assert_recovered(server)


# -- wait_for_input ----------------------------------------------------------------


class WaitingHandler(socketserver.StreamRequestHandler):
    """Report what one wait_for_input() call returned."""

    def handle(self) -> None:
        server = probe(self)
        server.entered.increment()
        server.results.append(server.wait_for_input(self, server.input_timeout))
        server.gate.set()


def test_wait_for_input_true_when_client_sent_a_line(harness: Harness) -> None:
    server = harness.server(WaitingHandler)
    client = harness.client(server)
    server.entered.wait_for(1)
    client.send(b"hello\n")
    assert server.gate.wait(TIMEOUT)
    assert server.results == [True]


def test_wait_for_input_true_for_input_already_buffered(harness: Harness) -> None:
    class BufferedHandler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            server = probe(self)
            server.results.append(self.rfile.readline(MAX_LINE))
            # The second line sits in rfile's buffer; the socket itself has nothing.
            server.results.append(server.wait_for_input(self, 0))
            server.gate.set()

    server = harness.server(BufferedHandler)
    client = harness.client(server)
    client.send(b"one\ntwo\n")
    assert server.gate.wait(TIMEOUT)
    assert server.results == [b"one\n", True]


def test_wait_for_input_false_when_drain_starts(harness: Harness) -> None:
    server = harness.server(WaitingHandler)
    server.input_timeout = None  # only the drain (or, failing that, its cut) can end the wait
    harness.client(server)
    server.entered.wait_for(1)
    report = server.drain(TIMEOUT)
    assert server.results == [False]
    assert report.clean
    assert report.served_during_drain == 1


def test_wait_for_input_false_on_timeout(harness: Harness) -> None:
    server = harness.server(WaitingHandler)
    server.input_timeout = 0.05
    harness.client(server)
    assert server.gate.wait(TIMEOUT)
    assert server.results == [False]
    assert server.draining is False


def test_wait_for_input_default_timeout_is_input_timeout(harness: Harness) -> None:
    class DefaultTimeout(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            server = probe(self)
            server.results.append(server.wait_for_input(self))
            server.gate.set()

    server = harness.server(DefaultTimeout)
    server.input_timeout = 0.05
    assert not hasattr(GracefulTCPServer, "idle_timeout")  # one name, one meaning
    harness.client(server)
    assert server.gate.wait(TIMEOUT)
    assert server.results == [False]


def test_line_protocol_says_goodbye_at_drain(harness: Harness) -> None:
    class LineHandler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            server = probe(self)
            for _ in range(MAX_LINES):
                server.entered.increment()
                if not server.wait_for_input(self):
                    self.wfile.write(b"goodbye\n")
                    return
                line = self.rfile.readline(MAX_LINE)
                if not line:
                    return
                self.wfile.write(b"echo " + line)

    server = harness.server(LineHandler)
    client = harness.client(server)
    client.send(b"a\n")
    assert client.line() == b"echo a\n"
    server.entered.wait_for(2)  # back to waiting for the next line
    report = server.drain(TIMEOUT)
    assert client.line() == b"goodbye\n"
    assert client.rest() == b""
    assert report.clean
    assert report.forced == 0
    assert report.served_during_drain == 1


def test_wait_for_input_after_server_close_does_not_raise(harness: Harness) -> None:
    # A handler that ignored the cut past the drain's deadline comes back to
    # wait_for_input() after server_close(): it must get an answer, not an exception.
    class LateHandler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            server = probe(self)
            self.rfile.readline(MAX_LINE)
            server.entered.increment()
            server.gate.wait(TIMEOUT)
            try:
                server.results.append(server.wait_for_input(self, 0))
            except Exception as exc:
                server.results.append(repr(exc))

    server = harness.server(LateHandler)
    client = harness.client(server)
    client.send(b"late\n")
    server.entered.wait_for(1)
    report = server.drain(0.05)
    assert report.remaining == 1
    server.server_close()
    server.gate.set()
    wait_until(lambda: server.results, what="the late handler's wait_for_input")
    wait_until(lambda: server.active_connections == 0, what="the late handler to end")
    assert isinstance(server.results[0], bool), f"wait_for_input raised {server.results[0]!r}"


# -- max_connections ---------------------------------------------------------------


def test_max_connections_holds_new_clients_in_the_backlog(harness: Harness) -> None:
    server = harness.server(GatedHandler, poll_interval=0.01)
    server.max_connections = 2
    for name in (b"c1", b"c2", b"c3"):
        server.gates[name] = threading.Event()
    c1, c2 = harness.client(server), harness.client(server)
    c1.send(b"c1\n")
    c2.send(b"c2\n")
    server.entered.wait_for(2)
    c3 = harness.client(server)  # the kernel completes the handshake
    c3.send(b"c3\n")
    wait_until(lambda: accept_queue_length(server) == 1, what="c3 to be queued")
    turns = server.actions.value
    server.actions.wait_for(turns + 3)  # the loop went round and left c3 alone
    assert accept_queue_length(server) == 1
    assert server.active_connections == 2
    assert server.entered.value == 2

    server.gates[b"c1"].set()
    assert c1.rest() == b"done c1\n"
    server.entered.wait_for(3)  # the free slot went to c3
    assert accept_queue_length(server) == 0
    server.gates[b"c3"].set()
    assert c3.rest() == b"done c3\n"
    server.gates[b"c2"].set()
    assert c2.rest() == b"done c2\n"
    wait_until(lambda: server.active_connections == 0, what="the count to return to zero")


class SlotRaceController(DrainController[socket.socket, Any]):
    """Frees a slot at the worst moment: inside the accept loop's capacity check.

    The first time the serving thread reads ``count`` and finds a connection
    live, this opens that connection's gate and waits until its handler thread
    has ended, then returns the (now stale) count.  If the count is read with
    the registry lock held, no slot can be freed inside the check (and waiting
    for the handler would deadlock), so it only records that the check ran.
    """

    def __init__(self) -> None:
        super().__init__()
        self.slot_gate: threading.Event | None = None
        self.checked = threading.Event()

    @property
    def count(self) -> int:
        value = super().count
        if (
            self.slot_gate is not None
            and not self.checked.is_set()
            and value >= 1
            and threading.current_thread().name == "test-serve-forever"
        ):
            if not self.condition._is_owned():  # type: ignore[attr-defined]
                self.slot_gate.set()
                for thread in conn_threads():
                    thread.join(TIMEOUT)
            self.checked.set()
        return value


def test_max_connections_slot_freed_during_capacity_check_is_not_lost(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The accept loop must not sleep for a whole poll_interval with a slot free
    # and a client waiting in the backlog.
    monkeypatch.setattr(accepting_module, "DrainController", SlotRaceController)
    server = harness.server(GatedHandler, serve=False)
    registry = server.registry
    assert isinstance(registry, SlotRaceController)
    server.max_connections = 1
    server.gates[b"holder"] = registry.slot_gate = threading.Event()
    server.gate.set()
    holder = harness.client(server)
    holder.send(b"holder\n")
    harness.serve(server, poll_interval=30.0)
    assert registry.checked.wait(TIMEOUT), "the accept loop never checked its capacity"
    registry.slot_gate.set()
    assert holder.rest() == b"done holder\n"  # the slot is free again
    waiting = harness.client(server)
    waiting.sock.settimeout(5.0)
    waiting.send(b"waiting\n")
    assert waiting.rest() == b"done waiting\n", "client left in the backlog with a free slot"


# -- no leaks over many connections ---------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_sequential_connections_leave_nothing_behind(harness: Harness) -> None:
    class PingHandler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(self.request.recv(64))

    server = harness.server(PingHandler)
    target = address(server)

    def ping() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(target)
            sock.sendall(b"x")
            assert sock.recv(64) == b"x"

    ping()  # warm up, then measure the baseline
    wait_until(lambda: not conn_threads(), what="the warm-up handler to end")
    threads_before = threading.active_count()
    fds_before = fd_count()

    for _ in range(10_000):
        ping()

    wait_until(lambda: server.active_connections == 0, what="the count to return to zero")
    wait_until(
        lambda: threading.active_count() == threads_before,
        what=f"thread count back to {threads_before}",
    )
    wait_until(lambda: fd_count() <= fds_before + 2, what=f"fd count back to ~{fds_before}")
    assert server.active_connections == 0
    ping()  # still serving
