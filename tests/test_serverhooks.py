"""Server hooks (``graceserve.core.serverhooks``): a runner's heartbeat and request counting.

A worker (and one process with ``--max-requests``) used to learn of turns and
requests by replacing the server's ``service_actions`` and subclassing its
handler class, which switched off the reaper and graceserve's own request cycle.
These tests hold the rule that replaced it: the server calls its hooks next to
its own work, never instead of it.  Real sockets on 127.0.0.1, every read
bounded; the servers drain at the end of each test.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from graceserve import GracefulHTTPServer, GracefulTCPServer, GracefulWSGIServer
from graceserve.core import accepting
from graceserve.core.serverhooks import ServerHooks
from testsupport.rawhttp import EOF, Connection, request_bytes
from testsupport.serve import MODES, serve
from testsupport.waiting import wait_until

TIMEOUT = 10.0  # seconds: every socket and every wait
IDLE = 0.5  # seconds: the idle timeout of the HTTP servers here

pytestmark = pytest.mark.timeout(60)


class Recorder(ServerHooks):
    """Counts what the server reports; the test waits on the counts."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.turns = 0
        self.requests = 0
        self.statuses: list[tuple[int, float]] = []

    def loop_turn(self) -> None:
        with self.changed:
            self.turns += 1
            self.changed.notify_all()

    def request_done(self, status: int = 0, seconds: float = 0.0) -> None:
        with self.changed:
            self.requests += 1
            self.statuses.append((status, seconds))
            self.changed.notify_all()

    def wait(self, turns: int = 0, requests: int = 0) -> None:
        with self.changed:
            done = self.changed.wait_for(
                lambda: self.turns >= turns and self.requests >= requests, TIMEOUT
            )
        assert done, (self.turns, self.requests)


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuickReapHTTP(GracefulHTTPServer):
    idle_timeout = IDLE


class QuickReapWSGI(GracefulWSGIServer):
    idle_timeout = IDLE


def hello_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = repr(environ["wsgi.multiprocess"]).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def serving(server: GracefulTCPServer, hooks: Recorder) -> Iterator[GracefulTCPServer]:
    server.install_hooks(hooks)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.drain(2.0)
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


def address(server: GracefulTCPServer) -> tuple[str, int]:
    host, port = server.server_address[:2]
    return str(host), int(port)


@pytest.mark.parametrize(
    "server_class",
    [QuickReapHTTP, pytest.param(QuickReapWSGI, marks=pytest.mark.slow)],
    ids=["handler", "wsgi"],
)
def test_requests_are_counted_with_their_status_and_duration(
    server_class: type[GracefulHTTPServer],
) -> None:
    hooks = Recorder()
    target: Any = hello_app if server_class is QuickReapWSGI else Hello
    for server in serving(server_class(("127.0.0.1", 0), target), hooks):
        with Connection(address(server), timeout=TIMEOUT) as conn:
            for _ in range(2):
                conn.request("GET", "/")
                assert conn.read_reply().status == 200
            conn.send(b"GET / HTTP/1.1\r\nno colon\r\n\r\n")  # refused by graceserve: 400
            assert conn.read_reply().status == 400
            hooks.wait(turns=1, requests=3)
        assert hooks.requests == 3
        assert [status for status, _ in hooks.statuses] == [200, 200, 400]
        assert all(0 <= seconds < TIMEOUT for _, seconds in hooks.statuses)


@pytest.mark.parametrize("server_class", [QuickReapHTTP, QuickReapWSGI], ids=["handler", "wsgi"])
def test_the_reaper_still_closes_an_idle_connection_with_hooks_installed(
    server_class: type[GracefulHTTPServer],
) -> None:
    hooks = Recorder()
    target: Any = hello_app if server_class is QuickReapWSGI else Hello
    for server in serving(server_class(("127.0.0.1", 0), target), hooks):
        with Connection(address(server), timeout=TIMEOUT) as conn:
            conn.request("GET", "/")
            assert conn.read_reply().status == 200
            hooks.wait(turns=1, requests=1)
            assert conn.ending() == EOF  # the idle timeout, with the hooks installed


def test_a_tcp_server_counts_each_connection_as_one_request() -> None:
    hooks = Recorder()
    for server in serving(GracefulTCPServer(("127.0.0.1", 0), Echo), hooks):
        for line in (b"one\n", b"two\n"):
            with socket.create_connection(address(server), timeout=TIMEOUT) as sock:
                sock.sendall(line)
                assert sock.recv(16) == line
        hooks.wait(requests=2)
        assert hooks.statuses == [(0, 0.0), (0, 0.0)]  # no status applies to TCP


def test_wsgi_multiprocess_is_false_for_a_library_server() -> None:
    for server in serving(GracefulWSGIServer(("127.0.0.1", 0), hello_app), Recorder()):
        with Connection(address(server), timeout=TIMEOUT) as conn:
            conn.request("GET", "/", close=True)
            assert conn.read_reply().body == b"False"


def test_the_loop_turns_once_as_it_starts_before_any_client_or_poll() -> None:
    """``loop_turn`` runs as the loop starts, not only after its first wait: a worker
    publishes its count there (``graceserve.process.balance``), and one whose first
    wait was long (no client woke it; ``poll_interval``) stayed unseen by its peers,
    which took every client meanwhile (20 clients one after another went 20 to 0)."""
    hooks = Recorder()
    server = GracefulTCPServer(("127.0.0.1", 0), Echo)
    server.install_hooks(hooks)
    thread = threading.Thread(target=server.serve_forever, args=(3600.0,), daemon=True)
    thread.start()
    try:
        hooks.wait(turns=1)
    finally:
        server.drain(2.0)
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


def test_hooks_cannot_be_installed_once_the_server_serves() -> None:
    hooks = Recorder()
    for server in serving(GracefulTCPServer(("127.0.0.1", 0), Echo), hooks):
        hooks.wait(turns=1)
        with pytest.raises(RuntimeError, match="before serve_forever"):
            server.install_hooks(ServerHooks())


def test_one_process_with_max_requests_still_runs_graceserve_s_request_cycle() -> None:
    """``--max-requests`` counts through the hooks: the handler path stays graceserve's
    (an empty line before a request is skipped, the access log is written)."""
    one = next(mode for mode in MODES if not mode.supervised)
    args = ["--max-requests", "1000", "--access-log", "-"]
    with serve("handler", one, args=args) as served, served.connect() as conn:
        conn.send(b"\r\n" + request_bytes("GET", "/counted", close=True))
        assert conn.read_reply().status == 200
        served.wait_line(r'"GET /counted HTTP/1.1" 200 ')


class Declining(Recorder):
    """Leaves every client to a peer that does not exist (a worker whose peers stopped)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    def may_accept(self, held: int) -> bool:
        self.asked.append(held)
        return self.caught_up

    caught_up = False  # the peers' counts, as the hooks see them: one holds fewer


def test_a_client_left_to_peers_that_never_take_it_is_accepted_within_the_bound() -> None:
    """``may_accept`` False defers a client (``ACCEPT_DEFER`` at a time), never for good:
    after ``ACCEPT_DEFER_LIMIT`` the loop accepts it, and asks again only later."""
    hooks = Declining()
    for server in serving(QuickReapHTTP(("127.0.0.1", 0), Hello), hooks):
        for _ in range(2):
            with Connection(address(server), timeout=TIMEOUT) as conn:
                conn.request("GET", "/", close=True)
                assert conn.read_reply().status == 200
        assert server.accept_defer_limits >= 1
        assert server.accept_deferrals >= 1
        assert hooks.asked[:1] == [0]  # it said how many it held: none


def left_alone(server: GracefulTCPServer, deferrals: int, limits: int = 0) -> Callable[[], bool]:
    """Whether ``server`` has deferred ``deferrals`` times in all, or reached the limit
    more than ``limits`` times."""
    return lambda: server.accept_deferrals >= deferrals or server.accept_defer_limits > limits


def limits_reached(server: GracefulTCPServer, limits: int) -> Callable[[], bool]:
    return lambda: server.accept_defer_limits >= limits


def trusting(server: GracefulTCPServer) -> Callable[[], bool]:
    """Whether ``server``'s distrust period is over (it asks its hooks again)."""
    return lambda: time.monotonic() >= server._trust_after


def test_a_peer_that_takes_each_client_left_to_it_never_makes_the_loop_accept_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of deferrals ends once the client left to a peer is gone from the queue
    (the peer took it): the next client starts a new run.  It used to last as long as
    clients kept coming within ``ACCEPT_DEFER_LIMIT`` of each other, so a steady stream
    reached the limit although the peer took every client at once, and the loop then
    accepted without asking for a distrust period that doubled (balancing off for up
    to 2 s).  The test is the peer: it accepts each client from the same listener once
    the server has left it alone a while.  The limit is raised so that a loaded machine
    never keeps a client queued for that long, and the stream outlasts it."""
    monkeypatch.setattr(accepting, "ACCEPT_DEFER_LIMIT", 1.0)
    hooks = Declining()
    for server in serving(QuickReapHTTP(("127.0.0.1", 0), Hello), hooks):
        peer = server.socket.dup()  # the same listener: O_NONBLOCK is shared with the loop
        start, taken = time.monotonic(), 0
        with peer:
            while time.monotonic() - start < 1.5 and not server.accept_defer_limits:
                assert taken < 200
                deferrals = server.accept_deferrals
                with socket.create_connection(address(server), timeout=TIMEOUT):
                    wait_until(  # left to the peer for a while (each deferral is 1 ms or more)
                        left_alone(server, deferrals + 10), TIMEOUT, "a client left to the peer"
                    )
                    if server.accept_defer_limits:
                        break
                    taken_sock, _ = peer.accept()
                    taken_sock.close()
                    taken += 1
                    turns = hooks.turns  # three more turns: one looked at an empty queue
                    hooks.wait(turns=turns + 3)
        assert server.accept_defer_limits == 0, (taken, time.monotonic() - start)
        assert server.active_connections == 0
        assert taken >= 2


def limited_then_trusting(server: GracefulTCPServer) -> None:
    """Leave one client queued until ``server`` reaches the limit (it accepts it, and
    distrusts its hooks for ``ACCEPT_DISTRUST``), then wait out that period."""
    with socket.create_connection(address(server), timeout=TIMEOUT):
        wait_until(limits_reached(server, 1), TIMEOUT, "the limit")
        assert server._distrust == 2 * accepting.ACCEPT_DISTRUST
        wait_until(trusting(server), TIMEOUT, "the end of the distrust period")


def left_and_taken(server: GracefulTCPServer, hooks: Recorder, peer: socket.socket) -> None:
    """Connect a client; once ``server`` leaves it to the peer, the peer takes it; return
    once the server has looked at the empty queue (three more turns)."""
    deferrals = server.accept_deferrals
    with socket.create_connection(address(server), timeout=TIMEOUT):
        wait_until(left_alone(server, deferrals + 1, 1), TIMEOUT, "a client left to the peer")
        assert server.accept_defer_limits == 1
        taken, _ = peer.accept()
        taken.close()
        turns = hooks.turns
        hooks.wait(turns=turns + 3)


def test_a_peer_that_took_what_was_left_to_it_and_caught_up_ends_the_distrust(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the limit the loop asks again only after a distrust period, doubled at
    each limit in a row.  Once a client left to a peer was taken and the hooks let
    the loop accept again (the peer caught up), the period starts again from
    ``ACCEPT_DISTRUST``, also now that a run ends when the queue is found empty,
    before the hooks are asked again.  The test is the peer."""
    monkeypatch.setattr(accepting, "ACCEPT_DEFER_LIMIT", 1.0)  # "at once": well within it
    hooks = Declining()
    for server in serving(QuickReapHTTP(("127.0.0.1", 0), Hello), hooks):
        with server.socket.dup() as peer, contextlib.ExitStack() as held:
            limited_then_trusting(server)
            left_and_taken(server, hooks, peer)
            assert server._distrust == 2 * accepting.ACCEPT_DISTRUST
            hooks.caught_up = True
            asked = len(hooks.asked)
            conn = held.enter_context(Connection(address(server), timeout=TIMEOUT))
            conn.request("GET", "/")
            assert conn.read_reply().status == 200  # accepted here, after asking
            assert len(hooks.asked) > asked
        assert server._distrust == accepting.ACCEPT_DISTRUST


def test_a_client_taken_while_a_peer_still_holds_fewer_leaves_the_distrust_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty queue does not say who took the client: with a stopped worker holding
    fewer than all, another worker in its distrust period takes the clients at once
    without asking.  Reset there, two workers deferring to a stopped third reset each
    other's period and neither ever grew (20 ms for many a client, not one per
    ``ACCEPT_DISTRUST_MAX``).  The test is that peer; the hooks never let the loop accept."""
    monkeypatch.setattr(accepting, "ACCEPT_DEFER_LIMIT", 1.0)
    hooks = Declining()
    for server in serving(QuickReapHTTP(("127.0.0.1", 0), Hello), hooks):
        with server.socket.dup() as peer:
            limited_then_trusting(server)
            left_and_taken(server, hooks, peer)
        assert server.accept_defer_limits == 1
        assert server._distrust == 2 * accepting.ACCEPT_DISTRUST
