"""End-to-end tests of ``python -m graceserve``: real processes, real signals, real sockets.

Every test starts its own server on ``127.0.0.1:0`` (or ``[::1]:0``) and reads the real
port from the readiness line.  A request is "in flight" once the test has connected and
sent it: the kernel has completed the handshake, so the server must serve it (the drain
sweeps the backlog).  No sleeps as synchronisation: the tests wait on the server's own
log lines, on process exit, or poll with a deadline.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.client
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graceserve import __version__
from graceserve.process.pidfile import PidFile
from graceserve.process.readiness import READY_PATTERN
from testsupport.process import REPO, ServerProcess, child_env
from testsupport.procfs import listening_ports
from testsupport.rawhttp import get, open_request, read_response
from testsupport.serve import Gate
from testsupport.stops import (
    IO_TIMEOUT,
    SUMMARY,
    StartServer,
    addr,
    assert_no_traceback,
    in_flight,
    read_until_closed,
    refused,
    start_ready,
    write_module,
)
from testsupport.targets import TARGETS
from testsupport.waiting import wait_until

QUICK = 5.0  # seconds: "at once" for a forced stop, with room for a slow CI machine


# -- helpers -------------------------------------------------------------------------


def count(server: ServerProcess, pattern: str) -> int:
    """How many stderr lines so far match ``pattern``."""
    regex = re.compile(pattern)
    return sum(1 for line in server.output.splitlines() if regex.search(line))


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- the signal table ----------------------------------------------------------------


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["TERM", "INT", "QUIT"]
)
def test_stop_signal_when_idle_exits_0(start_server: StartServer, signum: signal.Signals) -> None:
    server = start_ready(start_server, "--grace", "5")
    server.send(signum)
    assert server.wait_exit() == 0
    server.wait_for_line(rf"{signum.name}: draining 0 connections \(grace 5s\)")
    server.wait_for_line(SUMMARY.format(0))
    assert_no_traceback(server)


def _exited(pid: int) -> bool:
    return session_of(pid) is None


def session_of(pid: int) -> int | None:
    """The session id of a live (not zombie) process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[3])


@pytest.fixture
def successors() -> Iterator[list[tuple[int, int]]]:
    """(pid, session) of processes our servers started on HUP; SIGKILLed at teardown if alive.

    A successor is started by the server, in the server's session, so the fixture only
    kills a pid that is still in the session of the server the test started.
    """
    started: list[tuple[int, int]] = []
    yield started
    for pid, session in started:
        if session_of(pid) == session:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_hups_keep_the_main_pid_and_a_term_then_drains_like_a_first_stop(
    start_server: StartServer, successors: list[tuple[int, int]]
) -> None:
    """HUP is a graceful reload that never replaces the main process: a worker process
    takes over the serving, the main process stays (systemd's MAINPID, PID 1 of a
    container).  Several reloads then a TERM with a request in flight: 200, exit 0."""
    server = start_ready(start_server, "--grace", "5")
    host, port = addr(server)
    main = server.proc.pid
    with contextlib.closing(in_flight((host, port), "/slow?seconds=0.5")) as sock:
        server.send(signal.SIGHUP)
        server.wait_for_line(r"HUP: generation 2 is ready")
        assert read_response(sock)[0] == 200  # finished by the main process
    for generation in (3, 4):
        server.send(signal.SIGHUP)
        server.wait_for_line(rf"HUP: generation {generation} is ready")
    workers = [int(pid) for pid in re.findall(r"started worker pid (\d+)", server.output)]
    successors.extend((pid, main) for pid in workers)
    assert len(workers) == 3
    assert server.proc.poll() is None
    # Long enough that the stop reaches the worker first on a loaded machine.
    with contextlib.closing(in_flight((host, port), "/slow?seconds=3")) as sock:
        server.send(signal.SIGTERM)
        status, headers, _body = read_response(sock)
        assert status == 200
        assert headers.get("connection", "").lower() == "close"
    assert server.proc.wait(20) == 0
    server.wait_for_line(
        rf"graceserve\[{main}\] INFO stopped: \d workers, 1 served during the drain, 0 cut"
    )
    for pid in workers:
        wait_until(functools.partial(_exited, pid), what=f"worker {pid} to exit")
    assert_no_traceback(server)


def test_term_with_in_flight_request_finishes_it_with_connection_close(
    start_server: StartServer,
) -> None:
    server = start_ready(start_server, "--grace", "5")
    # Long enough that the drain has surely started (listener closed) before the answer.
    with contextlib.closing(in_flight(addr(server), "/slow?seconds=2")) as sock:
        server.send(signal.SIGTERM)
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"slept 2 s\n")
        assert headers.get("connection", "").lower() == "close"
        assert read_until_closed(sock) == b""
    assert server.wait_exit() == 0
    server.wait_for_line(
        r"SIGTERM: draining 1 connections \(grace 5s\); new connections are refused"
    )
    match = server.wait_for_line(SUMMARY.format(0))
    assert (match["served"], match["cut"]) == ("1", "0")
    assert_no_traceback(server)


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        (signal.SIGTERM, signal.SIGTERM, 143),
        (signal.SIGINT, signal.SIGINT, 130),
        (signal.SIGINT, signal.SIGTERM, 143),
        (signal.SIGTERM, signal.SIGQUIT, 131),
    ],
    ids=["TERM-TERM", "INT-INT", "INT-TERM", "TERM-QUIT"],
)
def test_second_signal_during_drain_cuts_at_once(
    start_server: StartServer, first: signal.Signals, second: signal.Signals, code: int
) -> None:
    server = start_ready(start_server, "--grace", "30")
    with contextlib.closing(in_flight(addr(server), "/slow?seconds=30")) as sock:
        server.send(first)
        server.wait_for_line(rf"{first.name}: draining 1 connections")
        started = time.monotonic()
        server.send(second)
        assert server.wait_exit() == code
        assert time.monotonic() - started < QUICK
        assert read_until_closed(sock) == b""  # EOF or reset, never a response
    server.wait_for_line(rf"{second.name}: cutting 1 connections now")
    server.wait_for_line(SUMMARY.format(code))
    assert_no_traceback(server)


def test_quit_with_in_flight_request_cuts_at_once_and_exits_131(
    start_server: StartServer,
) -> None:
    server = start_ready(start_server, "--grace", "30")
    with contextlib.closing(in_flight(addr(server), "/slow?seconds=30")) as sock:
        started = time.monotonic()
        server.send(signal.SIGQUIT)
        assert server.wait_exit() == 131
        assert time.monotonic() - started < QUICK
        assert read_until_closed(sock) == b""
    server.wait_for_line(r"SIGQUIT: draining 1 connections")
    server.wait_for_line(r"SIGQUIT: cutting 1 connections now")
    server.wait_for_line(SUMMARY.format(131))
    assert_no_traceback(server)


# A stack dump, in faulthandler's format ("Current thread 0x...", most recent call first)
# or traceback's ("Thread 0x... (name):", most recent call last): one header per thread,
# and the main thread's outermost frame (python -m: runpy) exactly once per dump.
THREAD_HEADER = r"^(Current thread|Thread) 0x[0-9a-f]+"
MAIN_THREAD_BOTTOM = r"line \d+,? in _run_module_as_main$"
GRACESERVE_FRAME = r'File ".*graceserve[/\\]\w+\.py", line \d+,? in \w+'


def dumps_seen(server: ServerProcess) -> int:
    return count(server, MAIN_THREAD_BOTTOM)


def test_usr1_dumps_threads_and_keeps_serving(start_server: StartServer) -> None:
    server = start_ready(start_server, "--grace", "5")
    server.send(signal.SIGUSR1)
    server.wait_for_line(MAIN_THREAD_BOTTOM)
    server.wait_for_line(GRACESERVE_FRAME)
    # every thread, not just one: main, the accept loop, the signal relay at least
    wait_until(lambda: count(server, THREAD_HEADER) >= 3, what="a header for every thread")
    assert server.proc.poll() is None
    assert get(addr(server))[0] == 200
    server.send(signal.SIGUSR1)  # and again: the dump is not a one-shot
    wait_until(lambda: dumps_seen(server) >= 2, what="a second dump")
    assert get(addr(server))[0] == 200
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert_no_traceback(server)


def test_usr1_dumps_even_at_log_level_error(start_server: StartServer) -> None:
    """USR1 is an explicit request for a dump on stderr: --log-level must not swallow it."""
    server = start_server(["--bind", "127.0.0.1:0", "--log-level", "error"])
    wait_until(
        lambda: listening_ports(server.proc.pid) or server.proc.poll() is not None,
        what="the server to listen",
    )
    server.send(signal.SIGUSR1)
    server.wait_for_line(MAIN_THREAD_BOTTOM, timeout=10.0)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


@pytest.mark.slow
def test_usr1_while_requests_come_and_go_keeps_the_server_alive(
    start_server: StartServer,
) -> None:
    """USR1 must never take the server down, even while handler threads start and end.

    Paced by the server itself: each USR1 is followed by one more answered request, while
    three client threads keep connections (and so handler threads) coming and going.
    """
    server = start_ready(start_server, "--grace", "5")
    address = addr(server)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        while not stop.is_set():
            try:
                get(address)
            except (OSError, http.client.HTTPException) as exc:
                if not stop.is_set():
                    errors.append(exc)
                return

    clients = [threading.Thread(target=churn, name=f"test-churn-{i}") for i in range(3)]
    for client in clients:
        client.start()
    try:
        for _ in range(150):
            server.send(signal.SIGUSR1)  # (one sent while a dump is running is dropped)
            try:
                assert get(address)[0] == 200
            except (OSError, http.client.HTTPException):
                code = server.wait_exit()
                pytest.fail(f"the server died (exit status {code}) on USR1 under load")
    finally:
        stop.set()
        for client in clients:
            client.join(IO_TIMEOUT)
    assert get(address)[0] == 200
    assert server.proc.poll() is None, f"server died: {server.proc.returncode}"
    assert errors == []
    wait_until(lambda: dumps_seen(server) >= 1, what="a dump")
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_usr1_with_stderr_closed_at_start_keeps_running(start_server: StartServer) -> None:
    """Started with fd 2 closed (some supervisors do): USR1 has nowhere to dump, but it
    must not kill the server (its default action) either."""
    server = start_server(
        ["--bind", "127.0.0.1:0", "--grace", "5"], prefix=["sh", "-c", 'exec "$0" "$@" 2>&-']
    )
    ports: list[int] = []

    def listening() -> bool:
        ports[:] = listening_ports(server.proc.pid)
        return bool(ports) or server.proc.poll() is not None

    wait_until(listening, what="the server to listen")
    assert len(ports) == 1
    address = ("127.0.0.1", ports[0])
    assert get(address)[0] == 200
    server.send(signal.SIGUSR1)
    try:
        assert get(address)[0] == 200
    except (OSError, http.client.HTTPException):
        pytest.fail(f"USR1 killed the server: exit status {server.wait_exit()}")
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_grace_deadline_cuts_and_exits_4(start_server: StartServer) -> None:
    server = start_ready(start_server, "--grace", "0.5")
    with contextlib.closing(in_flight(addr(server), "/slow?seconds=30")) as sock:
        started = time.monotonic()
        server.send(signal.SIGTERM)
        assert server.wait_exit() == 4
        elapsed = time.monotonic() - started
        assert 0.4 < elapsed < QUICK
        assert read_until_closed(sock) == b""
    server.wait_for_line(r"SIGTERM: draining 1 connections \(grace 0.5s\)")
    server.wait_for_line(r"grace of 0.5s passed: cutting 1 connections")
    match = server.wait_for_line(SUMMARY.format(4))
    assert match["cut"] == "1"
    assert_no_traceback(server)


@pytest.mark.slow
def test_hup_during_drain_does_not_force(start_server: StartServer) -> None:
    server = start_ready(start_server, "--grace", "5")
    with contextlib.closing(in_flight(addr(server), "/slow?seconds=1")) as sock:
        server.send(signal.SIGTERM)
        server.wait_for_line(r"SIGTERM: draining 1 connections")
        server.send(signal.SIGHUP)
        server.wait_for_line(r"SIGHUP: already draining")
        assert read_response(sock)[0] == 200
    assert server.wait_exit() == 0


@pytest.mark.slow
def test_new_connections_are_refused_during_the_drain(start_server: StartServer) -> None:
    server = start_ready(start_server, "--grace", "5")
    with contextlib.closing(in_flight(addr(server), "/slow?seconds=0.5")) as sock:
        server.send(signal.SIGTERM)
        server.wait_for_line(r"SIGTERM: draining 1 connections")
        # The listener closes right after that line: from then on every connect is refused.
        wait_until(lambda: refused(addr(server)), what="connects to be refused")
        for _ in range(3):
            assert refused(addr(server))
        assert read_response(sock)[0] == 200
    assert server.wait_exit() == 0


# -- logging -------------------------------------------------------------------------


def test_readiness_line_names_the_real_address_pid_and_grace(start_server: StartServer) -> None:
    server = start_server(["--bind", "127.0.0.1:0", "--grace", "1.5"])
    host, port = server.wait_ready()
    assert server.ready is not None
    ready = (host, server.ready.protocol, server.ready.pid, server.ready.grace)
    assert ready == ("127.0.0.1", "http", server.proc.pid, 1.5)
    assert port != 0
    server.wait_for_line(
        rf"listening on http://127\.0\.0\.1:{port} \(.*pid {server.proc.pid}, grace 1.5s\)"
    )
    assert get((host, port))[0] == 200
    assert port in listening_ports(server.proc.pid)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


@pytest.mark.slow
def test_progress_line_every_second_during_a_long_drain(start_server: StartServer) -> None:
    # The drain lasts exactly the grace (the request would take 30 s): lines at 1 s (and 2 s).
    server = start_ready(start_server, "--grace", "2.5")
    with contextlib.closing(in_flight(addr(server), "/slow?seconds=30")) as sock:
        server.send(signal.SIGTERM)
        server.wait_for_line(r"draining: 1 connections remaining")
        assert server.wait_exit() == 4
        assert read_until_closed(sock) == b""
    assert 1 <= count(server, r"draining: 1 connections remaining") <= 2
    server.wait_for_line(SUMMARY.format(4))


def test_log_level_debug_shows_access_lines(start_server: StartServer) -> None:
    server = start_ready(start_server, "--log-level", "debug")
    assert get(addr(server), "/healthz")[0] == 200
    server.wait_for_line(r'"GET /healthz HTTP/1.1" 200')
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_log_level_info_hides_access_lines(start_server: StartServer) -> None:
    server = start_ready(start_server)
    assert get(addr(server), "/healthz")[0] == 200
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "GET /healthz" not in server.output


def test_log_level_error_prints_nothing_on_a_clean_run(start_server: StartServer) -> None:
    server = start_server(["--bind", "127.0.0.1:0", "--log-level", "error"])
    # No readiness line at this level: find the port the process listens on.
    ports: list[int] = []

    def listening() -> bool:
        ports[:] = listening_ports(server.proc.pid)
        return bool(ports) or server.proc.poll() is not None

    wait_until(listening, what="the server to listen")
    assert len(ports) == 1, server.output
    assert get(("127.0.0.1", ports[0]))[0] == 200
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.output == ""


def test_ipv6_loopback(start_server: StartServer) -> None:
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback here")
    server = start_server(["--bind", "[::1]:0"])
    host, port = server.wait_ready()
    assert host == "::1"
    assert get((host, port))[0] == 200
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


# -- bad starts ----------------------------------------------------------------------

MODULES = {
    "app": """
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            pass

        NOT_A_HANDLER = 42

        class NotAHandler:
            pass
    """,
    "broken": """
        raise RuntimeError("boom at import")
    """,
    "exits": """
        import sys
        sys.exit("exit at import")
    """,
    "needsdep": """
        import graceserve_no_such_dependency  # noqa: F401
    """,
}


BAD_STARTS = [
    # (id, args, env, exit code, message)
    ("unknown-module", ["nosuchmodule:Handler"], {}, 3, r"no module named 'nosuchmodule'"),
    ("missing-attribute", ["app:Missing"], {}, 3, r"module 'app' has no attribute 'Missing'"),
    (
        "not-a-class",
        ["app:NOT_A_HANDLER"],
        {},
        3,
        r"not a socketserver.BaseRequestHandler subclass",
    ),
    (
        "not-a-handler",
        ["app:NotAHandler"],
        {},
        3,
        r"not a socketserver.BaseRequestHandler subclass",
    ),
    (
        "raises-at-import",
        ["broken:Handler"],
        {},
        3,
        r"importing 'broken' failed: RuntimeError: boom",
    ),
    ("exits-at-import", ["exits:Handler"], {}, 3, r"importing 'exits' failed: SystemExit"),
    (
        "missing-dependency",
        ["needsdep:Handler"],
        {},
        3,
        r"importing 'needsdep' failed: ModuleNotFoundError: .*graceserve_no_such_dependency",
    ),
    ("target-without-colon", ["appHandler"], {}, 2, r"not of the form module:Handler"),
    ("bind-unparsable", ["--bind", "nonsense"], {}, 2, r"--bind 'nonsense' is not HOST:PORT"),
    ("port-out-of-range", ["--bind", "127.0.0.1:65536"], {}, 2, r"out of range"),
    ("grace-negative", ["--grace", "-1"], {}, 2, r"--grace: '-1' must be a finite number"),
    ("grace-not-a-number", ["--grace", "abc"], {}, 2, r"--grace: 'abc' is not a number"),
    ("grace-env-not-a-number", [], {"GRACESERVE_GRACE": "abc"}, 2, r"GRACESERVE_GRACE: 'abc'"),
    ("unknown-flag", ["--frobnicate"], {}, 2, r"unrecognized arguments: --frobnicate"),
]


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [case[1:] for case in BAD_STARTS],
    ids=[case[0] for case in BAD_STARTS],
)
def test_bad_start_says_one_line_and_exits_with_the_documented_code(
    start_server: StartServer,
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    code: int,
    message: str,
) -> None:
    for name, source in MODULES.items():
        write_module(tmp_path, name, source)
    pidfile = tmp_path / "graceserve.pid"
    full = [*args, "--pidfile", str(pidfile)]
    if not any(a.startswith("--bind") for a in args) and "GRACESERVE_BIND" not in env:
        full += ["--bind", "127.0.0.1:0"]
    server = start_server(full, env=env, cwd=tmp_path)
    assert server.wait_exit() == code
    lines = [line for line in server.output.splitlines() if line.strip()]
    assert re.search(message, lines[0]), lines[0]
    if "importing" in message:  # the app's own code raised: its frames follow, not ours
        assert lines[1] == "Traceback (most recent call last):", server.output
        assert not re.search(GRACESERVE_FRAME, server.output), server.output
        assert "importlib" not in server.output
    else:
        assert len(lines) == 1, server.output
        assert_no_traceback(server)
    assert "listening on" not in server.output
    assert not pidfile.exists()


def test_address_in_use_exits_3(start_server: StartServer, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pidfile = tmp_path / "graceserve.pid"
        server = start_server(["--bind", f"127.0.0.1:{port}", "--pidfile", str(pidfile)])
        assert server.wait_exit() == 3
        lines = server.output.splitlines()
        assert len(lines) == 1, server.output
        assert re.search(rf"cannot listen on 127\.0\.0\.1:{port}: .*in use", lines[0]), lines[0]
        assert_no_traceback(server)
        assert not pidfile.exists()  # taken before the bind, released on the way out
        # Our listener is untouched: a client still reaches it.
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT):
            conn, _ = taken.accept()
            conn.close()


def test_pidfile_held_by_a_live_instance_exits_3_naming_its_pid(
    start_server: StartServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "graceserve.pid"
    holder = PidFile(str(pidfile))
    holder.acquire()  # this test process is the live instance
    try:
        server = start_server(["--bind", "127.0.0.1:0", "--pidfile", str(pidfile)])
        assert server.wait_exit() == 3
        lines = server.output.splitlines()
        assert len(lines) == 1, server.output
        assert f"already running as pid {os.getpid()}" in lines[0]
        assert_no_traceback(server)
        assert pidfile.read_text() == f"{os.getpid()}\n"  # not touched
    finally:
        holder.release()
    assert not pidfile.exists()


def test_pidfile_directory_missing_exits_3(start_server: StartServer, tmp_path: Path) -> None:
    pidfile = tmp_path / "missing" / "graceserve.pid"
    server = start_server(["--bind", "127.0.0.1:0", "--pidfile", str(pidfile)])
    assert server.wait_exit() == 3
    lines = server.output.splitlines()
    assert len(lines) == 1, server.output
    assert f"pidfile directory {tmp_path / 'missing'} does not exist" in lines[0]
    assert_no_traceback(server)
    assert not (tmp_path / "missing").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graceserve", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"graceserve {__version__}"
    assert "Traceback" not in result.stderr


def test_help_mentions_signals_exit_codes_and_env_vars() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    text = result.stdout
    for needle in ("signals:", "TERM", "INT", "HUP", "QUIT", "USR1", "exit codes:", "143", "130"):
        assert needle in text, needle
    for code in ("0", "1", "2", "3", "4"):
        assert re.search(rf"^\s+{code}\s+\w", text, re.MULTILINE), code
    for env in ("GRACESERVE_BIND", "GRACESERVE_GRACE", "GRACESERVE_PIDFILE", "GRACESERVE_TARGET"):
        assert env in text, env


# -- user handlers -------------------------------------------------------------------

ECHO = """
    import socketserver

    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)

    class PoliteEcho(socketserver.StreamRequestHandler):
        def handle(self):
            while self.server.wait_for_input(self):
                line = self.rfile.readline()
                if not line:
                    return
                self.wfile.write(line)
            self.wfile.write(b"bye\\n")
"""

HELLO = """
    import http.server

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hi from a plain handler\\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass
"""


def echo_once(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    received = b""
    while not received.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def test_stream_handler_is_served_over_tcp(start_server: StartServer, tmp_path: Path) -> None:
    write_module(tmp_path, "echo", ECHO)
    server = start_server(["echo:Echo", "--bind", "127.0.0.1:0"], cwd=tmp_path)
    server.wait_ready()
    server.wait_for_line(r"listening on tcp://127\.0\.0\.1:\d+")
    with socket.create_connection(addr(server), timeout=IO_TIMEOUT) as sock:
        assert echo_once(sock, b"hello\n") == b"hello\n"
        assert echo_once(sock, b"again\n") == b"again\n"
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b""
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert_no_traceback(server)


@pytest.mark.slow
def test_stream_handler_idle_client_is_cut_at_the_deadline(
    start_server: StartServer, tmp_path: Path
) -> None:
    write_module(tmp_path, "echo", ECHO)
    server = start_server(["echo:Echo", "--bind", "127.0.0.1:0", "--grace", "0.5"], cwd=tmp_path)
    server.wait_ready()
    with socket.create_connection(addr(server), timeout=IO_TIMEOUT) as sock:
        assert echo_once(sock, b"hello\n") == b"hello\n"
        server.send(signal.SIGTERM)
        assert server.wait_exit() == 4
        assert read_until_closed(sock) == b""
    server.wait_for_line(r"grace of 0.5s passed: cutting 1 connections")


def test_stream_handler_using_wait_for_input_ends_cleanly(
    start_server: StartServer, tmp_path: Path
) -> None:
    write_module(tmp_path, "echo", ECHO)
    server = start_server(["echo:PoliteEcho", "--bind", "127.0.0.1:0"], cwd=tmp_path)
    server.wait_ready()
    with socket.create_connection(addr(server), timeout=IO_TIMEOUT) as sock:
        assert echo_once(sock, b"hello\n") == b"hello\n"
        server.send(signal.SIGTERM)  # the client is idle: the handler says goodbye
        assert read_until_closed(sock) == b"bye\n"
    assert server.wait_exit() == 0
    server.wait_for_line(r"SIGTERM: draining 1 connections")


def test_plain_http_handler_is_served_over_http(start_server: StartServer, tmp_path: Path) -> None:
    write_module(tmp_path, "hello", HELLO)
    server = start_server(["hello:Hello", "--bind", "127.0.0.1:0"], cwd=tmp_path)
    server.wait_ready()
    server.wait_for_line(r"listening on http://127\.0\.0\.1:\d+")
    status, _headers, body = get(addr(server))
    assert (status, body) == (200, b"hi from a plain handler\n")
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert_no_traceback(server)


# -- environment variables -----------------------------------------------------------


def test_environment_variables_are_honoured(start_server: StartServer, tmp_path: Path) -> None:
    write_module(tmp_path, "hello", HELLO)
    pidfile = tmp_path / "env.pid"
    server = start_server(
        [],
        cwd=tmp_path,
        env={
            "GRACESERVE_TARGET": "hello:Hello",
            "GRACESERVE_BIND": "127.0.0.1:0",
            "GRACESERVE_GRACE": "2.5",
            "GRACESERVE_PIDFILE": str(pidfile),
            "GRACESERVE_LOG_LEVEL": "debug",
        },
    )
    server.wait_ready()
    server.wait_for_line(r"listening on http://127\.0\.0\.1:\d+ \(.*pid \d+, grace 2.5s\)")
    assert pidfile.read_text() == f"{server.proc.pid}\n"
    assert get(addr(server))[1].get("content-length") == str(len(b"hi from a plain handler\n"))
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    server.wait_for_line(r" DEBUG ")  # the level came from the environment
    assert not pidfile.exists()


def test_flags_win_over_environment_variables(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(
        ["--bind", "127.0.0.1:0", "--grace", "0.5", "--log-level", "info"],
        cwd=tmp_path,
        env={
            "GRACESERVE_BIND": "not an address",  # never parsed: the flag wins
            "GRACESERVE_GRACE": "7",
            "GRACESERVE_LOG_LEVEL": "error",
        },
    )
    server.wait_ready()  # the readiness line is there: info, not error
    server.wait_for_line(r"pid \d+, grace 0.5s\)")
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_target_argument_wins_over_environment(start_server: StartServer, tmp_path: Path) -> None:
    write_module(tmp_path, "hello", HELLO)
    server = start_server(
        ["hello:Hello", "--bind", "127.0.0.1:0"],
        cwd=tmp_path,
        env={"GRACESERVE_TARGET": "nosuchmodule:Nothing"},
    )
    server.wait_ready()
    assert get(addr(server))[2] == b"hi from a plain handler\n"
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


# -- signals at awkward moments ------------------------------------------------------

GATE = """
    import os
    import sys
    import time

    print("gate: importing", file=sys.stderr, flush=True)
    _deadline = time.monotonic() + 20.0
    while not os.path.exists(os.environ["GATE_FILE"]) and time.monotonic() < _deadline:
        time.sleep(0.01)
    print("gate: imported", file=sys.stderr, flush=True)

    from graceserve.demo import DemoHandler as Handler
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_stop_signal_during_start_up_is_recorded(
    start_server: StartServer, tmp_path: Path, signum: signal.Signals
) -> None:
    """DESIGN: "Install signal handlers first, so a signal during start-up is recorded".

    The target blocks at import until the test creates the gate file; the signal is sent
    while it imports.  The server must then start, drain at once and exit 0, not be
    killed by the default disposition (-15) or die with KeyboardInterrupt.
    """
    write_module(tmp_path, "gate", GATE)
    gate = tmp_path / "gate.open"
    server = start_server(
        ["gate:Handler", "--bind", "127.0.0.1:0"], cwd=tmp_path, env={"GATE_FILE": str(gate)}
    )
    server.wait_for_line(r"^gate: importing")
    server.send(signum)
    gate.touch()
    code = server.wait_exit()
    assert code == 0, f"exit {code}; stderr:\n{server.output}"
    server.wait_for_line(rf"{signum.name}: draining 0 connections")
    assert_no_traceback(server)


@pytest.mark.slow
def test_sigint_inherited_as_ignored_still_drains(start_server: StartServer) -> None:
    """A background job of a shell starts with INT ignored; graceserve installs it anyway."""
    server = start_server(
        ["--bind", "127.0.0.1:0"], prefix=["sh", "-c", 'trap "" INT; exec "$0" "$@"']
    )
    server.wait_ready()
    with contextlib.closing(in_flight(addr(server), "/slow?seconds=0.5")) as sock:
        server.send(signal.SIGINT)
        assert read_response(sock)[0] == 200
    assert server.wait_exit() == 0
    server.wait_for_line(r"SIGINT: draining 1 connections")


def test_sighup_inherited_as_ignored_stays_ignored(start_server: StartServer) -> None:
    """Under nohup HUP is ignored: the server keeps serving; TERM still drains."""
    server = start_server(
        ["--bind", "127.0.0.1:0"], prefix=["sh", "-c", 'trap "" HUP; exec "$0" "$@"']
    )
    server.wait_ready()
    server.send(signal.SIGHUP)  # an ignored signal is discarded when it is sent
    assert get(addr(server))[0] == 200
    assert server.proc.poll() is None
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "SIGHUP" not in server.output
    server.wait_for_line(r"SIGTERM: draining \d+ connections")


# -- PID 1 ---------------------------------------------------------------------------


@pytest.fixture
def pid_namespace_prefix() -> list[str]:
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"]
    if os.geteuid() != 0:
        pytest.skip("PID 1 test needs root (unshare --pid)")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"unshare unavailable: {exc}")
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid failed here: {probe.stderr.decode(errors='replace').strip()}")
    return prefix


@pytest.mark.slow
def test_term_reaches_graceserve_running_as_pid_1(
    start_server: StartServer, pid_namespace_prefix: list[str]
) -> None:
    args = [TARGETS["handler"], "--bind", "127.0.0.1:0", "--grace", "5"]
    server = start_server(args, prefix=pid_namespace_prefix, cwd=REPO)
    server.wait_ready()
    server.wait_for_line(r"pid 1, grace 5s\)")  # it really is PID 1 in its namespace
    unshare_pid = server.proc.pid
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    assert len(children) == 1, children
    inner = int(children[0])
    # The request waits at a gate until the drain has begun: a 0.5 s sleep there once
    # ended before an overloaded machine delivered the TERM ("draining 0 connections").
    with Gate() as gate, contextlib.closing(open_request(addr(server), gate.target)) as sock:
        gate.wait_entered()
        started = time.monotonic()
        os.kill(inner, signal.SIGTERM)  # the inner graceserve: a process we started
        server.wait_for_line(r"SIGTERM: draining 1 connections")
        gate.release()
        assert read_response(sock)[0] == 200
    assert server.wait_exit() == 0
    assert time.monotonic() - started < QUICK
    server.wait_for_line(SUMMARY.format(0))


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_hup_to_graceserve_as_pid_1_keeps_serving_under_load(
    start_server: StartServer, pid_namespace_prefix: list[str], workers: str
) -> None:
    """When PID 1 of a namespace exits, the kernel kills every process left in it: the
    main process must survive the reload.  Under load, HUP twice: no failed request,
    still serving, then TERM drains and exits 0."""
    from testsupport.workers import Load  # the worker tests' keep-alive load

    server = start_server(
        ["--bind", "127.0.0.1:0", "--grace", "5", "--workers", workers],
        prefix=pid_namespace_prefix,
    )
    server.wait_ready()
    server.wait_for_line(r"pid 1, grace 5s\)" if workers == "1" else r"supervisor pid 1: ")
    unshare_pid = server.proc.pid
    inner = int(Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()[0])
    load = Load(addr(server), clients=6)
    try:
        load.wait_for_requests(100)
        for generation in (2, 3):
            os.kill(inner, signal.SIGHUP)  # the inner graceserve: a process we started
            server.wait_for_line(rf"HUP: generation {generation} is ready")
            load.wait_for_requests(100)
        assert server.proc.poll() is None
        assert get(addr(server))[0] == 200
        load.stopping.set()
        os.kill(inner, signal.SIGTERM)
        assert server.wait_exit(20) == 0, server.output
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert_no_traceback(server)


# -- broken and slow stderr ----------------------------------------------------------


@contextlib.contextmanager
def spawned(
    args: list[str], stdout: int | None = subprocess.DEVNULL
) -> Iterator[subprocess.Popen[bytes]]:
    """A server we spawn ourselves (to own its pipes); its process group is killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "graceserve", *args],
        env=child_env({"PYTHONUNBUFFERED": "1"}),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def read_readiness(fd: int, timeout: float = 15.0) -> tuple[str, int]:
    """Read raw bytes from ``fd`` until the readiness line has arrived; its address."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        match = READY_PATTERN.search(data.decode("utf-8", "replace"))
        if match and b"\n" in data[match.end() :]:
            return match["host"], int(match["port"])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no readiness line; got {data!r}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"stderr closed before the readiness line; got {data!r}")
            data += chunk


@pytest.mark.slow
@pytest.mark.parametrize("close_stdout", [False, True], ids=["stderr", "stdout+stderr"])
def test_closed_stderr_pipe_does_not_change_the_exit_code(close_stdout: bool) -> None:
    stdout = subprocess.PIPE if close_stdout else subprocess.DEVNULL
    with spawned(["--bind", "127.0.0.1:0", "--grace", "5"], stdout=stdout) as proc:
        assert proc.stderr is not None
        address = read_readiness(proc.stderr.fileno())
        proc.stderr.close()  # every later log line hits EPIPE
        if proc.stdout is not None:
            proc.stdout.close()
        with contextlib.closing(in_flight(address, "/slow?seconds=0.3")) as sock:
            os.kill(proc.pid, signal.SIGUSR1)  # faulthandler writes into the broken pipe too
            os.kill(proc.pid, signal.SIGTERM)
            assert read_response(sock)[0] == 200
        assert proc.wait(20) == 0


@pytest.mark.slow
def test_slow_stderr_reader_does_not_break_the_drain() -> None:
    with spawned(["--bind", "127.0.0.1:0", "--grace", "5"]) as proc:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, fills quickly
        address = read_readiness(fd)
        received: list[bytes] = []

        def slow_reader() -> None:
            while True:
                chunk = os.read(fd, 128)
                if not chunk:
                    return
                received.append(chunk)
                time.sleep(0.002)  # pacing the reader, not synchronisation

        reader = threading.Thread(target=slow_reader, name="test-slow-reader")
        reader.start()
        try:
            with contextlib.closing(in_flight(address, "/slow?seconds=0.3")) as sock:
                for _ in range(3):  # three dumps overflow the 4 KiB pipe
                    os.kill(proc.pid, signal.SIGUSR1)
                os.kill(proc.pid, signal.SIGTERM)
                assert read_response(sock)[0] == 200
            assert proc.wait(20) == 0
        finally:
            reader.join(20)
        text = b"".join(received).decode("utf-8", "replace")
        assert re.search(MAIN_THREAD_BOTTOM, text, re.MULTILINE), text
        assert re.search(SUMMARY.format(0), text), text
