"""Parked connections (graceserve.core.parking, graceserve.wsgi.pooled): threads follow work.

An idle keep-alive WSGI connection holds no thread: it waits in one epoll and
a pool thread serves it when it becomes readable.  Every promise of a thread
per connection holds for a parked one: the drain closes it with a FIN (and a
request that raced the drain is answered, with ``Connection: close``), the
idle timeout closes it, a pipelined request is served without parking, and
many idle connections cost no more threads than the pool has.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from pathlib import Path
from typing import BinaryIO

from graceserve.core.parking import STALL, ConnectionPool
from graceserve.core.serverhooks import ServerHooks
from graceserve.wsgi.server import GracefulWSGIServer
from testsupport.pki import make_pki
from testsupport.waiting import Call, wait_until
from testsupport.wsgiapps import Client, get, hello_app, serving

_REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"


def _parked(server: GracefulWSGIServer, count: int) -> bool:
    pool = server.pool
    return pool is not None and pool.parked == count


def test_an_idle_keepalive_connection_holds_no_thread_and_is_served_again() -> None:
    with serving(hello_app, threads=2) as server, Client(server.server_address) as client:
        for _ in range(3):
            client.request("GET", "/")
            assert client.read_response().body == b"hello\n"
            wait_until(lambda: _parked(server, 1), what="the connection to be parked")
        pool = server.pool
        assert pool is not None
        assert pool.threads == 2


def test_the_pool_threads_start_with_serving_not_at_the_first_client() -> None:
    """Started at the first client, they held up the accept loop for a burst's first
    clients (64 thread starts), and a worker's peers took them all."""
    with serving(hello_app, threads=3) as server:
        pool = server.pool
        assert pool is not None
        wait_until(lambda: pool.threads == 3, what="the pool's threads, with no client yet")
        assert server.active_connections == 0


class _Started(ServerHooks):
    """Says when the accept loop runs (its first ``loop_turn``)."""

    def __init__(self) -> None:
        self.looping = threading.Event()

    def loop_turn(self) -> None:
        self.looping.set()


def _first_client(server: GracefulWSGIServer, hooks: _Started) -> bytes:
    """Once the loop runs: thread starts work again, and one request is answered."""
    if not hooks.looping.wait(10.0):
        return b"the accept loop never ran"
    threading.stack_size(0)
    try:
        with Client(server.server_address) as client:
            client.request("GET", "/")
            return client.read_response().body
    finally:
        server.shutdown()


def test_threads_that_cannot_start_with_serving_leave_the_loop_serving() -> None:
    """The pool's threads start with ``serve_forever``; if no thread can start then (a
    pids limit, no memory for a stack), the accept loop must still run, and the first
    client starts them (as before they started with serving).  The failure ended
    ``serve_forever`` before its loop: a server (a worker) that never accepted."""
    server_class = type("TestWSGIServer", (GracefulWSGIServer,), {"threads": 2})
    server = server_class(("127.0.0.1", 0), hello_app)
    hooks = _Started()
    server.install_hooks(hooks)
    client = Call(_first_client, server, hooks)  # started while threads still can
    try:
        threading.stack_size(2**44)  # from here no thread starts (until the client resets it)
        server.serve_forever(0.05)
    finally:
        threading.stack_size(0)
        server.shutdown()
        client.join(15.0)
        server.drain(2.0)
        server.server_close()
    assert client.result() == b"hello\n"


def test_a_pipelined_request_is_served_without_parking() -> None:
    with serving(hello_app, threads=2) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        client.read_response()
        wait_until(lambda: _parked(server, 1), what="the connection to be parked")
        pool = server.pool
        assert pool is not None
        before = pool.parks
        client.sock.sendall(_REQUEST * 3)  # one segment: all three in the socket file's buffer
        for _ in range(3):
            assert client.read_response().status == 200
        wait_until(lambda: _parked(server, 1), what="the connection to be parked again")
        assert pool.parks == before + 1  # once, after the third response


def test_the_drain_closes_parked_connections_with_fin_and_answers_a_racing_request() -> None:
    with serving(hello_app, threads=2, drain_linger=1.0) as server:
        racing, quiet = Client(server.server_address), Client(server.server_address)
        try:
            for client in (racing, quiet):
                client.request("GET", "/")
                client.read_response()
            wait_until(lambda: _parked(server, 2), what="both connections to be parked")
            drain = Call(server.drain, 10.0)
            wait_until(lambda: server.listener_closed, what="the listener to close")
            racing.request("GET", "/")  # within its linger: answered, saying close
            reply = racing.read_response()
            assert (reply.status, reply.header("Connection")) == (200, "close")
            assert racing.at_eof()  # a FIN (a reset would raise)
            assert quiet.at_eof()
            report = drain.result()
        finally:
            racing.close()
            quiet.close()
    assert report.clean
    assert report.forced == 0
    assert report.idle_closed == 1  # the quiet one; the racing one ended after its answer


def test_a_parked_connection_past_the_idle_timeout_is_closed() -> None:
    with serving(hello_app, threads=2, idle_timeout=0.5) as server:
        with Client(server.server_address) as client:
            client.request("GET", "/")
            client.read_response()
            assert client.at_eof()  # closed by the reaper, with a FIN
        wait_until(lambda: server.active_connections == 0, what="the connection to end")


def test_many_idle_connections_cost_no_more_threads_than_the_pool() -> None:
    before = threading.active_count()
    clients: list[socket.socket] = []
    with serving(hello_app, threads=4) as server:
        try:
            for _ in range(300):
                sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
                clients.append(sock)
                sock.sendall(_REQUEST)
            for sock in clients:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
            wait_until(lambda: _parked(server, 300), what="300 parked connections")
            assert server.active_connections == 300
            # The pool's 4, its watcher and the accept loop's: not one per connection.
            assert threading.active_count() <= before + 6
            assert get(server.server_address).status == 200  # a new client is served
        finally:
            for sock in clients:
                sock.close()


def test_without_threads_each_connection_has_its_own_thread() -> None:
    with serving(hello_app, threads=None) as server, Client(server.server_address) as client:
        client.request("GET", "/")
        assert client.read_response().status == 200
        assert server.pool is None


def test_tls_connections_are_parked_too(tmp_path: Path) -> None:
    """Over TLS: parked after its handshake and each response; a pipelined request in the
    TLS object's or the file's buffer is served without parking; the drain ends it with
    close_notify and a FIN."""
    pki = make_pki(tmp_path)
    cert, key = pki.issue("server", "graceserve-parked")
    context = pki.client_context()
    with serving(
        hello_app, threads=2, certfile=str(cert), keyfile=str(key), drain_linger=0.05
    ) as server:
        raw = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            reader: BinaryIO = tls.makefile("rb")
            tls.sendall(_REQUEST)
            assert _read_reply(reader).startswith(b"HTTP/1.1 200 ")
            wait_until(lambda: _parked(server, 1), what="the TLS connection to be parked")
            pool = server.pool
            assert pool is not None
            before = pool.parks
            tls.sendall(_REQUEST * 3)
            for _ in range(3):
                assert _read_reply(reader).startswith(b"HTTP/1.1 200 ")
            wait_until(lambda: _parked(server, 1), what="the TLS connection to be parked again")
            assert pool.parks == before + 1
            report = server.drain(10.0)
            assert reader.read(1) == b""  # close_notify, then FIN (a reset would raise)
            reader.close()
    assert report.clean
    assert report.idle_closed == 1


def _read_reply(reader: BinaryIO) -> bytes:
    """One hello_app response (its head and its 6-byte body)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        assert line, "EOF inside a response head"
        head += line
    return head + reader.read(6)


class _Echo:
    """A session that hands on what it reads; it ends (forgotten, closed) at EOF.

    Told ``block``, it waits (off the CPU) for ``release``; told ``spin``, it computes
    (on the CPU, holding the GIL but for the interpreter's switches) until ``release``.
    """

    def __init__(self, pool: ConnectionPool, sock: socket.socket) -> None:
        self.pool = pool
        self.sock = sock
        self.fd = sock.fileno()
        self.seen: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.threads: set[str] = set()
        self.release = threading.Event()

    def fileno(self) -> int:
        return self.fd

    def resume(self) -> bool:
        self.threads.add(threading.current_thread().name)
        data = self.sock.recv(100)
        self.seen.put(data)
        if data == b"block":
            self.release.wait(30)
        elif data == b"spin":
            deadline = time.monotonic() + 30
            while not self.release.is_set() and time.monotonic() < deadline:
                pass
        if data:
            return True
        self.pool.forget(self)
        self.sock.close()
        return False


def test_the_pool_serves_parked_sessions_as_they_become_readable_on_its_threads_only() -> None:
    """The core pool alone (no HTTP): 50 sessions on 2 threads; each resumed once per
    input, none resumed without input; EOF ends them; ``close`` ends the threads."""
    pool = ConnectionPool(2, "test-pool")
    pairs = [socket.socketpair() for _ in range(50)]
    sessions = [_Echo(pool, ours) for ours, _ in pairs]
    try:
        for session in sessions:
            pool.park(session)
        for turn in (b"a", b"b"):
            for _, peer in pairs:
                peer.sendall(turn)
            for session in sessions:
                assert session.seen.get(timeout=10) == turn
        wait_until(lambda: pool.parked == 50, what="all 50 parked again")
        assert all(session.seen.empty() for session in sessions)  # no resume without input
        for _, peer in pairs:
            peer.close()
        for session in sessions:
            assert session.seen.get(timeout=10) == b""
        wait_until(lambda: pool.parked == 0, what="every session to end")
        assert pool.threads == 2
        assert set().union(*(s.threads for s in sessions)) <= {"test-pool-1", "test-pool-2"}
    finally:
        pool.close()
        for ours, peer in pairs:
            ours.close()
            peer.close()


def _sessions(pool: ConnectionPool, count: int) -> tuple[list[_Echo], list[socket.socket]]:
    pairs = [socket.socketpair() for _ in range(count)]
    sessions = [_Echo(pool, ours) for ours, _ in pairs]
    for session in sessions:
        pool.park(session)
    return sessions, [peer for _, peer in pairs]


def _end(pool: ConnectionPool, sessions: list[_Echo], peers: list[socket.socket]) -> None:
    for session in sessions:
        session.release.set()
    pool.close()
    for session, peer in zip(sessions, peers, strict=True):
        session.sock.close()
        peer.close()


def test_sessions_blocked_in_io_get_spare_threads_for_the_others() -> None:
    """One thread serves while sessions only compute; each session that blocks (an app
    waiting on I/O) gets the work waiting behind it a spare thread: three blocked at once
    on a pool of four, and a fourth is still served."""
    pool = ConnectionPool(4, "test-pool")
    sessions, peers = _sessions(pool, 4)
    try:
        for session, peer in zip(sessions[:3], peers[:3], strict=True):
            peer.sendall(b"block")
            assert session.seen.get(timeout=10) == b"block"  # begun (and now blocked)
        peers[3].sendall(b"x")
        assert sessions[3].seen.get(timeout=10) == b"x"
        assert all(not session.release.is_set() for session in sessions[:3])
        assert pool.woken >= 3
        assert pool.threads == 4
    finally:
        _end(pool, sessions, peers)


def test_a_session_that_computes_at_length_does_not_hold_up_the_others() -> None:
    """A session computing (runnable, never blocked) for longer than ``LONG`` while
    input waits: a spare serves the input, sharing the GIL with it, as threads do."""
    pool = ConnectionPool(2, "test-pool")
    sessions, peers = _sessions(pool, 2)
    try:
        peers[0].sendall(b"spin")
        assert sessions[0].seen.get(timeout=10) == b"spin"
        peers[1].sendall(b"x")
        assert sessions[1].seen.get(timeout=20) == b"x"
        assert not sessions[0].release.is_set()  # served while the other still computes
    finally:
        _end(pool, sessions, peers)


def test_the_watcher_sleeps_while_the_pool_is_idle() -> None:
    pool = ConnectionPool(2, "test-pool")
    sessions, peers = _sessions(pool, 1)
    try:
        peers[0].sendall(b"x")
        assert sessions[0].seen.get(timeout=10) == b"x"
        wait_until(lambda: not pool.watching, what="the watcher to go to sleep")
        wait_until(lambda: pool.parked == 1, what="the session to be parked again")
    finally:
        _end(pool, sessions, peers)


def test_clients_trickling_their_requests_do_not_starve_the_pool() -> None:
    """Both pool threads blocked in unfinished request heads: after ``STALL`` the pool
    starts a thread for the client waiting, and the extra threads end once unneeded."""
    with serving(hello_app, threads=2, idle_timeout=30.0) as server:
        trickling = [
            socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
            for _ in range(2)
        ]
        try:
            for sock in trickling:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # then nothing: its head waits
            wait_until(lambda: _stuck(server, 2), what="both pool threads to be held")
            began = time.monotonic()
            assert get(server.server_address).status == 200  # not after the idle timeout
            assert time.monotonic() - began < STALL + 5.0
            pool = server.pool
            assert pool is not None
            assert pool.grown >= 1
        finally:
            for sock in trickling:
                sock.close()
        wait_until(lambda: pool.threads == 2, what="the extra threads to end")


def _stuck(server: GracefulWSGIServer, count: int) -> bool:
    """Whether ``count`` connections are half-way through a request (held by a thread)."""
    with server.registry.locked_items() as items:
        return sum(1 for _, conn in items if conn.reading) == count


def test_input_is_served_after_unstick_held_the_poll_lock_while_the_watcher_looked() -> None:
    """``unstick`` holds the poll lock while it takes the input waiting.  If the watcher
    looks then, it takes the holder for a thread waiting for input and sleeps; a thread
    ending its turn then finds the lock held and becomes a spare.  Once ``unstick`` lets
    go nobody polls, and the input it queued (no thread to start: the pool is at its
    ``max_threads``) must still be served by that spare, not left until a blocked
    session ends.

    The test holds the lock itself, as ``unstick`` does for its poll (only longer)."""
    pool = ConnectionPool(2, "test-pool")
    sessions, peers = _sessions(pool, 3)
    try:
        for session, peer in zip(sessions[:2], peers[:2], strict=True):
            peer.sendall(b"block")
            assert session.seen.get(timeout=10) == b"block"  # both threads blocked
        with pool._poll_lock:  # unstick's hold
            wait_until(lambda: not pool.watching, what="the watcher to take it for a poller")
            sessions[0].release.set()  # its thread ends the turn and meets the lock held
            wait_until(lambda: len(pool._spares) == 1, what="that thread to become a spare")
        peers[2].sendall(b"x")
        pool.unstick(time.monotonic())  # (records the progress mark)
        assert pool.unstick(time.monotonic() + STALL) == 0  # stuck; queued, none started
        assert sessions[2].seen.get(timeout=10) == b"x"
    finally:
        _end(pool, sessions, peers)


def test_a_pool_whose_threads_are_all_blocked_keeps_no_cpu_busy() -> None:
    """Every thread blocked in a session (long polls, clients trickling their requests)
    and so no spare to wake: the watcher still looks every tick while input may wait, but
    must not read each thread's ``/proc`` state at each (with 64 threads that kept a
    third of a core busy).  The process's CPU time over a second of it is the measure:
    other processes' load does not add to it."""
    threads = 64
    pool = ConnectionPool(threads, "test-pool")
    sessions, peers = _sessions(pool, threads)
    try:
        for peer in peers:
            peer.sendall(b"block")
        for session in sessions:
            assert session.seen.get(timeout=20) == b"block"  # each on its own thread
        cpu, began = time.process_time(), time.monotonic()
        threading.Event().wait(1.0)  # (the measuring window, not a synchronisation)
        share = (time.process_time() - cpu) / (time.monotonic() - began)
        assert share < 0.15, f"{share:.0%} of a CPU with every pool thread blocked"
    finally:
        _end(pool, sessions, peers)
