"""Graceful restart on SIGHUP, end to end: real processes, real signals, real sockets.

On the first HUP the main process starts a worker process (a fresh interpreter) on its
listener, waits until it is ready, stops accepting, drains its own connections and
stays as the supervisor: its pid (pidfile, systemd's MAINPID, PID 1 of a container)
never changes.  Each later HUP starts a new worker and drains the old one.  A reload is
reported only once the old holder stopped accepting.  If the new worker fails, the
serving process keeps serving and the log says why.

Workers are the main process's children and log to its stderr pipe (so their lines
reach ``ServerProcess.lines``, prefixed ``graceserve[PID]``) from its process group.
The tests find their pids in those lines and see them exit by their "stopped" lines and
by their disappearance from /proc.  The ``start_server`` fixture's teardown kills
whatever is left of the process group, so a worker never outlives a failed test.

The target served here (``app.py``, written into ``tmp_path``; the server runs there)
names its pid in every answer, so a test knows which process served a request, and
lets a POST wait for its body, so a test decides when a request in flight ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testsupport.process import ServerProcess
from testsupport.procfs import listening_ports, open_descriptors
from testsupport.restarts import (
    APP,
    BROKEN_APP,
    IO_TIMEOUT,
    address_of,
    finish_post,
    first_exit,
    get,
    post_in_flight,
    process_status,
    short_directory,
    unix_get,
    wait_gone,
)
from testsupport.waiting import wait_until

StartServer = Callable[..., ServerProcess]

LOG_PID = re.compile(r"graceserve\[(\d+)\]|started pid (\d+)")


# Appended to app.py: the next process to import it stops just before it reports
# that it is ready (after it has adopted the listener and the pidfile), and says so.
HOLD_BEFORE_READY = """
import logging, sys, threading


class _HoldBeforeReady(logging.Filter):
    def filter(self, record):
        if record.getMessage().startswith("listening on"):
            print(f"test-app: pid {os.getpid()} holding before ready", file=sys.stderr, flush=True)
            threading.Event().wait()
        return True


logging.getLogger("graceserve").addFilter(_HoldBeforeReady())
"""


ECHO_APP = """\
import os
import socketserver


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(f"{os.getpid()} {line.decode()}".encode())
"""


# -- processes -----------------------------------------------------------------------


def group_members(pgid: int) -> set[int]:
    """Pids of the running processes in process group ``pgid``."""
    members: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            status = process_status(int(entry))
            if status is not None and status[1] == pgid and status[0] not in ("Z", "X"):
                members.add(int(entry))
    return members


def logged_pids(server: ServerProcess) -> set[int]:
    """Every pid named in the log of ``server`` and its successors."""
    return {int(a or b) for a, b in LOG_PID.findall(server.output)}


def signal_successor(server: ServerProcess, pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``, a process of ours: named in the log, in our group."""
    assert pid in logged_pids(server), f"pid {pid} is not in the log of our server"
    status = process_status(pid)
    assert status is not None, f"pid {pid} is gone"
    assert status[1] == server.proc.pid, f"pid {pid} is not in our process group"
    os.kill(pid, signum)


def stopped_line(pid: int, code: int = 0) -> str:
    """The summary a process logs just before it exits with ``code``."""
    return (
        rf"graceserve\[{pid}\] INFO stopped: (?P<served>\d+) served during the drain, "
        rf"0 cut, [\d.]+s, exit code {code}$"
    )


def started_successor(server: ServerProcess, parent: int) -> int:
    """The pid that ``parent`` logged it started on HUP."""
    match = server.wait_for_line(rf"graceserve\[{parent}\] INFO HUP: restarting: started pid (\d+)")
    return int(match[1])


# -- the app and its clients -----------------------------------------------------------


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """``tmp_path`` holding app.py; run the server there (cwd) as ``app:Handler``."""
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


@pytest.fixture
def short_dir() -> Iterator[Path]:
    yield from short_directory()


def start_app(
    start_server: StartServer, directory: Path, *args: str, bind: str = "127.0.0.1:0"
) -> ServerProcess:
    """Serve app:Handler from ``directory`` and wait until it is ready."""
    server = start_server(
        ["app:Handler", "--bind", bind, "--grace", "10", *args],
        cwd=directory,
        env={"PYTHONDONTWRITEBYTECODE": "1"},  # app.py is rewritten: no stale bytecode
    )
    if bind.startswith("unix:"):
        server.wait_for_line(rf"listening on {re.escape(bind)} ")
    else:
        server.wait_ready()
    return server


def served_by(body: str) -> int:
    """The pid named in an app answer."""
    match = re.search(r"pid (\d+)", body)
    assert match is not None, body
    return int(match[1])


def read_pidfile(path: Path) -> int:
    return int(path.read_text().strip())


def is_locked(path: Path) -> bool:
    """Whether some process holds the pidfile's lock."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# -- load ------------------------------------------------------------------------------


MAX_REQUESTS = 20_000  # per client: the load is bounded by count as well as by the test
LOAD_LIMIT = 30.0  # seconds: a client gives up after this, whatever happens


@dataclass
class Client:
    """One client thread's record.  Written by its thread, read by the test."""

    keepalive: bool
    requests: int = 0
    connects: int = 0
    closes: int = 0  # answers that said Connection: close
    pids: list[int] = field(default_factory=list)  # who served each request, in order
    failures: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        kind = "keep-alive" if self.keepalive else "fresh"
        served = {pid: self.pids.count(pid) for pid in dict.fromkeys(self.pids)}
        return (
            f"{kind} client: {self.requests} requests, {self.connects} connects, "
            f"{self.closes} closes, served by {served}, {len(self.failures)} failures"
        )


def run_client(address: tuple[str, int], client: Client, stop: threading.Event) -> None:
    """GET / in a loop until ``stop``; every exception or wrong answer is a failure.

    A keep-alive client reuses its connection until an answer says
    ``Connection: close`` (http.client then drops it and connects again for the
    next request); the other kind opens a fresh connection per request.
    """
    give_up = time.monotonic() + LOAD_LIMIT
    conn: http.client.HTTPConnection | None = None
    try:
        while not stop.is_set() and client.requests < MAX_REQUESTS:
            if time.monotonic() > give_up:
                client.failures.append("load did not stop in time")
                return
            try:
                if conn is None or not client.keepalive:
                    if conn is not None:
                        conn.close()
                    conn = http.client.HTTPConnection(*address, timeout=IO_TIMEOUT)
                if conn.sock is None:
                    client.connects += 1
                headers = {} if client.keepalive else {"Connection": "close"}
                conn.request("GET", "/", headers=headers)
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200 or not body.startswith("v1 pid "):
                    client.failures.append(f"{response.status} {body!r}")
                else:
                    client.pids.append(served_by(body))
                if response.will_close:
                    client.closes += 1
                client.requests += 1
            except (OSError, http.client.HTTPException) as exc:
                client.failures.append(f"request {client.requests + 1}: {exc!r}")
                if conn is not None:
                    conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


class Load:
    """Client threads hammering a server until ``stop()``."""

    def __init__(self, address: tuple[str, int], keepalive: int, fresh: int) -> None:
        self.clients = [Client(keepalive=True) for _ in range(keepalive)]
        self.clients += [Client(keepalive=False) for _ in range(fresh)]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=run_client,
                args=(address, client, self._stop),
                name=f"test-client-{index}",
                daemon=True,
            )
            for index, client in enumerate(self.clients)
        ]
        for thread in self._threads:
            thread.start()

    def wait_for_requests(self, more: int, timeout: float = 15.0) -> None:
        """Wait until every client has made ``more`` requests beyond its count now."""
        marks = [client.requests for client in self.clients]

        def done() -> bool:
            pairs = zip(self.clients, marks, strict=True)
            return all(client.requests >= mark + more for client, mark in pairs)

        wait_until(done, timeout=timeout, what=f"every client to make {more} more requests")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=IO_TIMEOUT * 2)
        assert not any(thread.is_alive() for thread in self._threads), "a client hangs"

    @property
    def failures(self) -> list[str]:
        return [failure for client in self.clients for failure in client.failures]


# -- tests -----------------------------------------------------------------------------
#
# The main process (our child, ``server.proc``) never changes: at the first HUP it
# starts a worker process on its listener, waits until it is ready, drains its own
# connections and stays as the supervisor; each later HUP starts a new worker and
# drains the old one.


def reloaded(server: ServerProcess, reload: int = 1) -> int:
    """Wait until the worker of the ``reload``-th reload serves; its pid.  The main
    process's own server is generation 1: the first reload brings generation 2."""
    main = server.proc.pid
    generation = reload + 1
    server.wait_for_line(rf"graceserve\[{main}\] INFO HUP: generation {generation} is ready")
    match = server.wait_for_line(rf"started worker pid (\d+) \(generation {generation}\)")
    return int(match[1])


def worker_stopped_line(pid: int) -> str:
    return rf"graceserve\[{pid}\] INFO worker stopped: \d+ served during the drain, 0 cut"


@pytest.mark.slow
def test_restart_under_continuous_load_fails_no_request(
    start_server: StartServer, app_dir: Path
) -> None:
    pidfile = app_dir / "server.pid"
    server = start_app(start_server, app_dir, "--pidfile", str(pidfile))
    main = server.proc.pid
    load = Load(address_of(server), keepalive=4, fresh=2)
    try:
        load.wait_for_requests(20)
        server.send(signal.SIGHUP)
        new = reloaded(server)
        server.wait_for_line(rf"graceserve\[{main}\] INFO this process's drain: .* 0 cut")
        load.wait_for_requests(20)  # all of them now served by the worker
    finally:
        load.stop()

    assert load.failures == []
    for client in load.clients:
        assert (client.pids[0], client.pids[-1]) == (main, new), str(client)
        assert set(client.pids) == {main, new}, str(client)
        if client.keepalive:  # told to reconnect once the main process stopped serving
            assert client.closes >= 1, str(client)
            assert client.connects >= 2, str(client)
    assert read_pidfile(pidfile) == main  # the main process stays
    assert is_locked(pidfile)

    server.send(signal.SIGTERM)
    assert first_exit(server) == 0
    server.wait_for_line(worker_stopped_line(new))
    wait_gone(new)
    assert not pidfile.exists()
    assert "Traceback" not in server.output, server.output


def test_restart_lets_the_old_process_finish_what_is_in_flight(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start_app(start_server, app_dir)
    main = server.proc.pid
    with contextlib.closing(post_in_flight(address_of(server))) as sock:
        server.send(signal.SIGHUP)
        new = reloaded(server)
        server.wait_for_line(
            rf"graceserve\[{main}\] INFO this process stopped accepting: draining its 1 conn"
        )
        answers: list[tuple[int, str]] = []

        def served_by_new() -> bool:
            answers.append(get(address_of(server)))
            return answers[-1] == (200, f"v1 pid {new}")

        wait_until(served_by_new, what=f"pid {new} to serve a new connection")
        assert set(answers) <= {(200, f"v1 pid {main}"), (200, f"v1 pid {new}")}
        status, headers, body = finish_post(sock)
    assert (status, body) == (200, f"v1 pid {main} got done")
    assert headers.get("connection", "").lower() == "close"
    match = server.wait_for_line(r"this process's drain: (?P<served>\d+) served during the drain")
    assert int(match["served"]) >= 0
    assert server.proc.poll() is None  # the main process stays, as the supervisor
    assert get(address_of(server)) == (200, f"v1 pid {new}")

    server.send(signal.SIGTERM)
    assert first_exit(server) == 0
    wait_gone(new)


@pytest.mark.slow
def test_restart_skips_the_lame_duck_delay(start_server: StartServer, app_dir: Path) -> None:
    """The lame duck keeps a stopping server serving while health checks fail; on a
    restart the worker serves instead, so the main process drains its own at once."""
    server = start_app(start_server, app_dir, "--drain-delay", "30")
    main = server.proc.pid
    server.send(signal.SIGHUP)
    new = reloaded(server)
    server.wait_for_line(rf"graceserve\[{main}\] INFO this process's drain")
    assert not re.search(r"lame duck", server.output), server.output
    assert get(address_of(server)) == (200, f"v1 pid {new}")

    # Stopped for real, the supervisor does go through the lame duck; a HUP ends it.
    server.send(signal.SIGTERM)
    server.wait_for_line(rf"graceserve\[{main}\] INFO SIGTERM: lame duck for 30s")
    server.send(signal.SIGHUP)
    assert first_exit(server) == 0
    wait_gone(new)


def test_failed_restart_keeps_the_old_process_serving(
    start_server: StartServer, app_dir: Path
) -> None:
    pidfile = app_dir / "server.pid"
    server = start_app(start_server, app_dir, "--pidfile", str(pidfile))
    main = server.proc.pid
    (app_dir / "app.py").write_text(BROKEN_APP)  # the worker will fail to import it

    server.send(signal.SIGHUP)
    match = server.wait_for_line(r"started worker pid (\d+)")
    new = int(match[1])
    server.wait_for_line(rf"graceserve\[{new}\] ERROR cannot start: .*broken on purpose")
    server.wait_for_line(
        rf"graceserve\[{main}\] ERROR HUP: reload failed: pid {new} exited with status 3 "
        r"before it was ready: importing 'app' failed: RuntimeError: app.py broken on purpose; "
        r"generation 1 keeps serving"
    )
    wait_gone(new)
    for _ in range(3):
        assert get(address_of(server)) == (200, f"v1 pid {main}")
    assert server.proc.poll() is None
    assert read_pidfile(pidfile) == main

    server.send(signal.SIGTERM)
    assert first_exit(server) == 0
    server.wait_for_line(stopped_line(main))
    assert not pidfile.exists()
    assert group_members(main) == set()


@pytest.mark.slow
def test_a_term_before_the_worker_is_ready_abandons_the_reload(
    start_server: StartServer, app_dir: Path
) -> None:
    """A worker that never reports ready is killed by a TERM; the main process, which
    kept serving and kept the pidfile, drains and exits 0."""
    pidfile = app_dir / "server.pid"
    server = start_app(start_server, app_dir, "--pidfile", str(pidfile))
    main = server.proc.pid
    (app_dir / "app.py").write_text(APP + HOLD_BEFORE_READY)

    server.send(signal.SIGHUP)
    new = int(server.wait_for_line(r"started worker pid (\d+)")[1])
    server.wait_for_line(rf"test-app: pid {new} holding before ready")
    assert read_pidfile(pidfile) == main

    server.send(signal.SIGTERM)
    # Abandoned, not reported: no "reload failed", no READY=1 in the middle of a stop.
    server.wait_for_line(
        rf"graceserve\[{main}\] INFO SIGTERM: the reload to generation 2 is abandoned"
    )
    assert first_exit(server) == 0
    server.wait_for_line(stopped_line(main))
    wait_gone(new)  # the main process killed it
    assert not pidfile.exists()
    assert "reload failed" not in server.output, server.output


@pytest.mark.slow
def test_three_restarts_leave_two_processes_and_no_leaked_descriptors(
    start_server: StartServer, app_dir: Path
) -> None:
    pidfile = app_dir / "server.pid"
    server = start_app(start_server, app_dir, "--pidfile", str(pidfile))
    address = address_of(server)
    main = server.proc.pid
    workers = []
    after_one: list[str] = []
    supervisor_after_one: list[str] = []
    for generation in (1, 2, 3):
        server.send(signal.SIGHUP)
        new = reloaded(server, generation)
        workers.append(new)
        if generation > 1:
            server.wait_for_line(worker_stopped_line(workers[-2]))
            wait_gone(workers[-2])
            # Logged once the supervisor reaped it and closed its channel and pidfd.
            server.wait_for_line(rf"worker {workers[-2]} \(generation {generation}\) stopped")
        if generation == 1:
            server.wait_for_line(r"this process's drain")
            after_one = serving_descriptors(new)
        if generation == 2:
            # The supervisor's own set once it supervises workers only (this process's
            # server, a member until its drain thread ended, long gone).
            supervisor_after_one = open_descriptors(main)
        assert get(address) == (200, f"v1 pid {new}")
        assert read_pidfile(pidfile) == main

    final = workers[-1]
    assert len(set(workers)) == 3
    wait_until(lambda: group_members(main) == {main, final}, what="the supervisor and one worker")
    assert listening_ports(final) == [address[1]]
    assert listening_ports(main) == [address[1]]
    held = serving_descriptors(final, like=after_one)
    assert kinds(held) == kinds(after_one), f"first: {after_one}\nthird: {held}"
    assert kinds(open_descriptors(main)) == kinds(supervisor_after_one)
    assert str(pidfile) not in held  # only the supervisor holds the pidfile

    server.send(signal.SIGTERM)
    assert first_exit(server) == 0
    wait_gone(final)
    assert not pidfile.exists()
    assert group_members(main) == set()


@pytest.mark.slow
def test_a_reload_is_reported_once_only_the_new_worker_accepts(
    start_server: StartServer, app_dir: Path
) -> None:
    # The reload's line (and READY=1, and what ``ctl graceful`` waits for) comes after
    # the old process or worker stopped accepting: the next connection meets the new
    # code, whichever of the listener's holders the kernel would have woken.
    # Under load, so that the old holder is busy when the reload completes.
    server = start_app(start_server, app_dir)
    address = address_of(server)
    load = Load(address, keepalive=4, fresh=4)
    try:
        for generation in (1, 2, 3):
            load.wait_for_requests(10)
            server.send(signal.SIGHUP)
            new = reloaded(server, generation)
            assert [served_by(get(address)[1]) for _ in range(10)] == [new] * 10
    finally:
        load.stop()
    assert load.failures == []
    server.send(signal.SIGTERM)
    assert first_exit(server) == 0


@pytest.mark.slow
def test_restart_keeps_the_unix_socket_file_for_the_new_process(
    start_server: StartServer, app_dir: Path, short_dir: Path
) -> None:
    path = short_dir / "app.sock"
    server = start_app(start_server, app_dir, bind=f"unix:{path}")
    main = server.proc.pid
    assert unix_get(path) == (200, f"v1 pid {main}")

    server.send(signal.SIGHUP)
    new = reloaded(server)
    server.wait_for_line(r"this process stopped accepting: draining its \d+ connections")
    assert path.is_socket(), f"the main process removed {path}\n{server.output}"
    assert unix_get(path) == (200, f"v1 pid {new}")

    server.send(signal.SIGTERM)
    assert first_exit(server) == 0
    wait_gone(new)
    assert not path.exists()  # its owner, the main process, removed it


def echo(address: tuple[str, int], text: str) -> str:
    """Send one line to the echo target on a fresh connection; its answer."""
    sock = socket.create_connection(address, timeout=IO_TIMEOUT)
    with sock, sock.makefile("rwb") as stream:
        stream.write(f"{text}\n".encode())
        stream.flush()
        return stream.readline().decode()


@pytest.mark.slow
def test_restart_of_a_plain_tcp_handler(start_server: StartServer, app_dir: Path) -> None:
    (app_dir / "echo.py").write_text(ECHO_APP)
    server = start_server(["echo:Echo", "--bind", "127.0.0.1:0", "--grace", "10"], cwd=app_dir)
    address = server.wait_ready()
    server.wait_for_line(r"listening on tcp://")
    old = server.proc.pid
    assert echo(address, "before") == f"{old} before\n"

    server.send(signal.SIGHUP)
    new = reloaded(server)
    server.wait_for_line(rf"graceserve\[{new}\] INFO listening on tcp://127\.0\.0\.1:{address[1]} ")
    server.wait_for_line(r"this process stopped accepting: draining its \d+ connections")
    assert echo(address, "after") == f"{new} after\n"

    server.send(signal.SIGTERM)
    assert first_exit(server) == 0
    wait_gone(new)


# -- descriptors -------------------------------------------------------------------------


def kinds(descriptors: list[str]) -> list[str]:
    """``descriptors`` without inode numbers, sorted: what kinds of things are open."""
    return sorted(re.sub(r":\[\d+\]$", "", target) for target in descriptors)


def serving_descriptors(pid: int, like: list[str] | None = None) -> list[str]:
    """The descriptors of a server that is idle and serving, once they have settled.

    The accept loop opens its selector just after the readiness line, and a
    connection just served is closed just after the answer: poll (with a
    deadline) until the selector is open and, given ``like``, until as many
    descriptors are open as there.
    """
    deadline = time.monotonic() + 10.0
    while True:
        held = open_descriptors(pid)
        settled = "anon_inode:[eventpoll]" in held and (like is None or len(held) <= len(like))
        if settled or time.monotonic() > deadline:
            return held
        time.sleep(0.005)
