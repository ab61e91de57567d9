"""--workers: a supervisor and its worker processes, end to end with real processes.

The supervisor (the process we start) owns the listener, the pidfile and the signals;
workers are fresh interpreters serving on the shared listener.  Each answer of the
test app names the pid that served it.  Load is real keep-alive HTTP from client
threads; a request sent and not answered 200 is a failure, a connect refused after the
stop began is not.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from testsupport.procfs import accept_table, receive_queues
from testsupport.rawhttp import read_response
from testsupport.serve import KINDS, MODES, Mode, Served, serve
from testsupport.waiting import wait_until
from testsupport.workers import (
    Load,
    StartServer,
    connect_refused,
    get,
    served_by,
    start_workers,
    worker_pids,
    write_app,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_app(tmp_path)


def _gone(pid: int) -> bool:
    return not alive(pid)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_term_under_keepalive_load_breaks_nothing(start_server: StartServer, app_dir: Path) -> None:
    pidfile = app_dir / "server.pid"
    server = start_workers(start_server, app_dir, "--workers", "2", "--pidfile", str(pidfile))
    assert int(pidfile.read_text()) == server.proc.pid
    address = server.address
    assert address is not None
    workers = set(worker_pids(server))
    # Both serve (which one accepts a connection is the kernel's choice: ask until both did).
    wait_until(lambda: workers <= {served_by(get(address)[1]) for _ in range(6)}, 20)
    load = Load(address, clients=12)
    try:
        load.wait_for_requests(300)
        load.stopping.set()
        server.send(signal.SIGTERM)
        assert server.wait_exit(30) == 0, server.output
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.pids, server.output
    assert load.pids <= workers, (load.pids, server.output)
    assert connect_refused(address)
    assert not pidfile.exists()
    assert any(alive(pid) for pid in worker_pids(server)) is False
    assert "stopped: 2 workers" in server.output
    assert "Traceback" not in server.output, server.output


@pytest.mark.slow
def test_hup_under_keepalive_load_keeps_the_supervisor_and_breaks_nothing(
    start_server: StartServer, app_dir: Path
) -> None:
    pidfile = app_dir / "server.pid"
    server = start_workers(start_server, app_dir, "--workers", "2", "--pidfile", str(pidfile))
    assert server.address is not None
    first = worker_pids(server)
    load = Load(server.address, clients=12)
    try:
        load.wait_for_requests(200)
        server.send(signal.SIGHUP)
        server.wait_for_line(r"HUP: generation 2 is ready")
        for pid in first:
            wait_until(functools.partial(_gone, pid), 20, f"old worker {pid} to drain and exit")
        load.wait_for_requests(200)
        second = worker_pids(server)[2:]
        assert len(second) == 2
        address = server.address
        wait_until(lambda: set(second) <= {served_by(get(address)[1]) for _ in range(6)}, 20)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.pids & set(second), (load.pids, second)
    assert load.pids <= {*first, *second}, (load.pids, second)
    assert int(pidfile.read_text()) == server.proc.pid  # the supervisor stays
    server.send(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output


@pytest.mark.parametrize("mode", [m for m in MODES if m.workers == 2], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_clients_that_stay_connected_are_shared_evenly_between_the_workers(
    kind: str, mode: Mode
) -> None:
    """Least-connections accepting (graceserve.process.balance): each new client goes
    to the worker holding fewer connections, not to whichever woke first (50 keep-alive
    clients were split 49 to 1 before, and one worker served them on one core); after
    a reload too (the old generation's places in the table are given up)."""
    clients = 20
    served: collections.Counter[int] = collections.Counter()
    with serve(kind, mode) as server, contextlib.ExitStack() as held:
        # Both accept loops run (a worker says READY before its loop starts).
        wait_until(lambda: published(server) == [0, 0], 10.0, "both workers' counts: 0")
        for _ in range(clients):  # one at a time, each kept open once answered
            conn = held.enter_context(server.connect())
            conn.request("GET", "/")
            reply = conn.read_reply()
            assert reply.status == 200
            served[json.loads(reply.body)["pid"]] += 1
    assert len(served) == 2, served
    # Even on a quiet machine (10/10); on one overloaded with three test suites, the
    # bounded deferral (20 ms, then the busier worker accepts) gave 13/7.  Without the
    # table: 20/0, 19/1, 17/3.
    assert min(served.values()) >= clients // 4, served


def published(server: Served) -> list[int]:
    """The counts in the accept table of ``server``, its slots not IDLE, in slot order."""
    return [word for word in accept_table(server.pid) or () if word != -1]


@pytest.mark.parametrize("mode", [m for m in MODES if m.workers == 2], ids=str)
def test_the_accept_table_shows_each_serving_worker_s_connections(mode: Mode) -> None:
    """Each serving worker has its count in the accept table from its start (the old
    generation's places are IDLE after a reload), and it follows the worker's
    connections as they end.  A worker used to publish only when it found a client
    queued: one that always woke after its peer had taken the client stayed IDLE (or
    at its count of long ago), and its peer never left it a client (6 keep-alive
    clients one after another went 6 to 0)."""
    with serve("wsgi", mode) as server:
        wait_until(lambda: published(server) == [0, 0], 10.0, "both workers' counts: 0")
        with server.connect() as first, server.connect() as second:
            for conn in (first, second):
                conn.request("GET", "/")
                assert conn.read_reply().status == 200
            wait_until(lambda: sum(published(server)) == 2, 10.0, "their 2 connections")
        wait_until(lambda: published(server) == [0, 0], 10.0, "both counts back to 0")


def test_a_frozen_worker_told_to_stop_is_no_longer_left_clients() -> None:
    """A worker told to stop leaves the table (its place IDLE) when the supervisor tells
    it, not only when it reads the message: a frozen one (SIGSTOP, stuck in C code)
    never reads it, and until it was killed at the deadline its peers went on leaving
    clients to it, 20 ms at a time (the sweeper at a stop too)."""
    mode = next(m for m in MODES if m.workers == 2 and not m.reloaded)
    with serve("wsgi", mode) as server:
        wait_until(lambda: published(server) == [0, 0], 10.0, "both workers' counts: 0")
        newest = int(re.findall(r"started worker pid (\d+)", server.log)[-1])
        os.kill(newest, signal.SIGSTOP)
        try:
            server.stop(signal.SIGTTOU)  # the newest worker is retired
            wait_until(lambda: published(server) == [0], 10.0, "the frozen worker's place IDLE")
        finally:
            os.kill(newest, signal.SIGCONT)  # it reads its STOP and drains
        server.stop(signal.SIGTERM)
        assert server.wait_exit() == 0, server.log


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_serving_goes_on(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start_workers(start_server, app_dir, "--workers", "2")
    assert server.address is not None
    victim = worker_pids(server)[0]
    load = Load(server.address, clients=6)
    try:
        load.wait_for_requests(100)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        server.wait_for_line(
            rf"worker {victim} \(generation 1\) died unexpectedly \(killed by SIGKILL\)"
        )
        wait_until(lambda: len(worker_pids(server)) == 3, 10, "a replacement")
        started = time.monotonic() - killed_at
        replacement = worker_pids(server)[2]
        address = server.address
        assert address is not None
        wait_until(lambda: replacement in {served_by(get(address)[1]) for _ in range(6)}, 20)
        load.wait_for_requests(100)
    finally:
        load.stop()
    # Clients of the killed worker saw their connection reset: that is the crash, not us.
    assert all("request" in failure for failure in load.failures), load.failures[:5]
    assert started < 5.0
    server.send(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output


@pytest.mark.slow
def test_a_worker_that_cannot_import_ends_the_supervisor_with_3(
    start_server: StartServer, tmp_path: Path
) -> None:
    write_app(tmp_path, "raise RuntimeError('broken on purpose')\n")
    server = start_server(["app:Handler", "--bind", "127.0.0.1:0", "--workers", "2"], cwd=tmp_path)
    assert server.wait_exit(30) == 3, server.output
    assert "cannot start: importing 'app' failed: RuntimeError: broken on purpose" in server.output
    assert len(worker_pids(server)) <= 2, server.output  # no restart loop


def test_preload_fails_before_any_worker_starts(start_server: StartServer, tmp_path: Path) -> None:
    write_app(tmp_path, "raise RuntimeError('broken on purpose')\n")
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", "--workers", "2", "--preload"], cwd=tmp_path
    )
    assert server.wait_exit(30) == 3, server.output
    assert worker_pids(server) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("--access-log", "missing-dir/access.log", "cannot start: --access-log {dir}/missing-dir/"),
        ("--certfile", "missing.pem", "cannot start: --certfile {dir}/missing.pem"),
    ],
)
def test_an_http_option_that_cannot_work_fails_before_any_worker_starts(
    start_server: StartServer, app_dir: Path, option: str, value: str, error: str
) -> None:
    """The supervisor serves nothing, but checks the workers' HTTP options: exit 3 at once,
    with the option's own error (it used to refuse every --access-log and --certfile),
    naming the path as resolved from where graceserve was started."""
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", "--workers", "2", option, value], cwd=app_dir
    )
    assert server.wait_exit(30) == 3, server.output
    assert error.format(dir=app_dir) in server.output, server.output
    assert worker_pids(server) == []


@pytest.mark.slow
def test_a_preloaded_tcp_handler_with_an_access_log_is_refused_before_any_worker_starts(
    start_server: StartServer, tmp_path: Path
) -> None:
    write_app(
        tmp_path, "import socketserver\nclass Echo(socketserver.StreamRequestHandler): pass\n"
    )
    server = start_server(
        ["app:Echo", "--bind", "127.0.0.1:0", "--workers", "2", "--preload", "--access-log", "-"],
        cwd=tmp_path,
    )
    assert server.wait_exit(30) == 3, server.output
    assert (
        "--certfile, --access-log and --health-path are for HTTP handlers and WSGI apps"
        in server.output
    )
    assert worker_pids(server) == []


@pytest.mark.slow
def test_ttin_adds_and_ttou_removes_a_worker_that_drains(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start_workers(start_server, app_dir, "--workers", "2")
    assert server.address is not None
    server.send(signal.SIGTTIN)
    server.wait_for_line(r"TTIN: 3 workers")
    wait_until(lambda: len(worker_pids(server)) == 3, 10, "a third worker")
    third = worker_pids(server)[2]
    server.wait_for_line(rf"pid {third}, grace")
    server.send(signal.SIGTTOU)
    server.wait_for_line(r"TTOU: 2 workers")
    # It drains; or, if its READY had not reached the supervisor yet, it never served.
    server.wait_for_line(
        rf"worker {third} \(generation 1\) (stopped \(exit code 0\)|was still starting)"
    )
    assert not any(alive(pid) for pid in [third])
    assert all(alive(pid) for pid in worker_pids(server)[:2])
    assert get(server.address)[0] == 200
    server.send(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output


@pytest.mark.slow
def test_worker_timeout_kills_a_frozen_worker_with_a_stack_dump_and_replaces_it(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start_workers(start_server, app_dir, "--workers", "2", "--worker-timeout", "2")
    assert server.address is not None
    # The worker freezes with our request (it holds the GIL): it is never answered.
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"GET /freeze HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(100) == b""  # the worker was killed
    server.wait_for_line(r"serving loop made no progress for [\d.]+s; killing it \(SIGABRT\)")
    # faulthandler's stack dump; its pieces are separate writes, and the supervisor's own
    # lines on the same stderr can land between them.
    server.wait_for_line(r"Fatal Python error: ")
    server.wait_for_line(r"Aborted")
    wait_until(lambda: len(worker_pids(server)) == 3, 15, "a replacement")
    assert get(server.address)[0] == 200
    server.send(signal.SIGTERM)
    assert server.wait_exit(30) in (0, 4), server.output


@pytest.mark.slow
def test_max_requests_recycles_workers_under_load_without_a_failure(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start_workers(
        start_server, app_dir, "--workers", "2", "--max-requests", "150",
        "--max-requests-jitter", "50",
    )  # fmt: skip
    assert server.address is not None
    load = Load(server.address, clients=8)
    try:
        wait_until(lambda: len(worker_pids(server)) >= 5, 40, "three recyclings")
        load.wait_for_requests(100)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert "recycling it" in server.output
    server.send(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output


@pytest.mark.slow
def test_max_requests_is_decided_by_the_request_that_reaches_it(
    start_server: StartServer, app_dir: Path
) -> None:
    """The worker counts its own requests: the one that reaches the limit says so at once
    (not a once-a-second sample), and a spare standing by takes over."""
    server = start_workers(start_server, app_dir, "--workers", "2", "--max-requests", "100")
    assert server.address is not None
    server.wait_for_line(r"a spare standing by for --max-requests")
    load = Load(server.address, clients=8)
    try:
        wait_until(lambda: server.output.count("recycling it") >= 3, 40, "three recyclings")
        load.wait_for_requests(100)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    decided = re.findall(r"served (\d+) requests: recycling it", server.output)
    assert set(decided) == {"100"}, decided
    server.send(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output


@pytest.mark.slow
def test_one_process_with_max_requests_hands_its_serving_to_a_worker(
    start_server: StartServer, app_dir: Path
) -> None:
    """--max-requests means the same with one process: after N requests a worker process
    (a spare, standing by since the start) serves instead, and recycles in turn."""
    pidfile = app_dir / "server.pid"
    server = start_workers(start_server, app_dir, "--max-requests", "20", "--pidfile", str(pidfile))
    assert server.address is not None
    main = server.proc.pid
    server.wait_for_line(r"a spare standing by for --max-requests")
    for _ in range(20):
        assert served_by(get(server.address)[1]) == main
    server.wait_for_line(r"this process's server \(generation 1\) served 20 requests: recycling")
    server.wait_for_line(r"this process stopped accepting")
    workers = {served_by(get(server.address)[1]) for _ in range(10)}
    assert main not in workers, workers
    from testsupport.ctl import status_of

    status = status_of(pidfile)
    assert (status["generation"], status["workers"], status["state"]) == (1, 1, "serving")
    server.send(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output


def in_flight(address: tuple[str, int], path: str) -> socket.socket:
    """Send GET ``path`` and wait until a worker has read it (its receive queue is empty)."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    key = (address[1], sock.getsockname()[1])
    wait_until(lambda: receive_queues().get(key) == 0, 10, "a worker to read the request")
    return sock


@pytest.mark.slow
def test_second_term_forces_every_worker(start_server: StartServer, app_dir: Path) -> None:
    server = start_workers(start_server, app_dir, "--workers", "2")
    assert server.address is not None
    socks = [in_flight(server.address, "/slow?seconds=20") for _ in range(4)]
    try:
        server.send(signal.SIGTERM)
        server.wait_for_line(r"SIGTERM: draining \d+ connections .*; 2 workers")
        server.send(signal.SIGTERM)
        assert server.wait_exit(15) == 143, server.output
        for sock in socks:
            assert sock.recv(100) == b""  # cut
    finally:
        for sock in socks:
            sock.close()
    assert "stopped: 2 workers, 0 served during the drain, 4 cut" in server.output


@pytest.mark.slow
def test_a_request_in_flight_finishes_within_the_grace(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start_workers(start_server, app_dir, "--workers", "2")
    assert server.address is not None
    sock = in_flight(server.address, "/slow?seconds=2")
    with sock:
        server.send(signal.SIGTERM)
        status, _headers, _body = read_response(sock)
    assert status == 200
    assert server.wait_exit(15) == 0, server.output


@pytest.mark.slow
def test_ctl_sees_the_supervisor_its_connections_and_its_reloads(
    start_server: StartServer, app_dir: Path
) -> None:
    from testsupport.ctl import ctl, status_of

    pidfile = app_dir / "server.pid"
    server = start_workers(start_server, app_dir, "--workers", "2", "--pidfile", str(pidfile))
    assert server.address is not None
    with in_flight(server.address, "/slow?seconds=30"):
        wait_until(lambda: status_of(pidfile)["active_connections"] == 1, 10, "1 connection")
        status = status_of(pidfile)
        assert (status["pid"], status["workers"], status["state"]) == (
            server.proc.pid, 2, "serving",
        )  # fmt: skip
        assert status["generation"] == 1
        result = ctl("graceful", "--pidfile", str(pidfile))
        assert result.returncode == 0, (result, server.output)
        status = status_of(pidfile)
        assert (status["generation"], status["reloads"], status["pid"]) == (2, 1, server.proc.pid)
        assert status["last_reload"]["ok"] is True  # type: ignore[index]
        stop = ctl("stop", "--pidfile", str(pidfile))
    assert stop.returncode == 4, (stop, server.output)  # the 30 s request was cut
    assert server.wait_exit(20) == 4


@pytest.mark.slow
def test_quit_during_the_lame_duck_cuts_every_worker_at_once(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start_workers(start_server, app_dir, "--workers", "2", "--drain-delay", "30")
    assert server.address is not None
    sock = in_flight(server.address, "/slow?seconds=30")
    with sock:
        server.send(signal.SIGTERM)
        server.wait_for_line(r"SIGTERM: lame duck for 30s")
        server.send(signal.SIGQUIT)
        assert server.exited_within(10) == 131, server.output
        assert sock.recv(100) == b""  # cut
    assert "stopped: 2 workers, 0 served during the drain, 1 cut" in server.output


@pytest.mark.slow
def test_usr1_dumps_the_stacks_of_the_supervisor_and_every_worker(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start_workers(start_server, app_dir, "--workers", "2")
    server.send(signal.SIGUSR1)
    wait_until(lambda: server.output.count("SIGUSR1: stacks of") >= 3, 10, "three dumps")
    assert "graceserve-accept" in server.output  # a worker's serving thread
    server.send(signal.SIGTERM)
    assert server.wait_exit(20) == 0, server.output


ORPHAN_APP = """
import subprocess
from http.server import BaseHTTPRequestHandler


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        # sh exits at once; its background sleep is reparented to PID 1 (the supervisor).
        subprocess.run(["sh", "-c", "sleep 0.3 &"], check=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass
"""


@pytest.mark.slow
def test_as_pid_1_the_supervisor_reaps_orphans_and_never_takes_them_for_workers(
    start_server: StartServer, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare --pid)")
    write_app(tmp_path, ORPHAN_APP)
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", "--workers", "2", "--log-level", "debug"],
        cwd=tmp_path, prefix=["unshare", "--pid", "--fork", "--mount-proc"],
    )  # fmt: skip
    server.wait_ready()
    server.wait_for_line(r"supervisor pid 1: 2 workers ready")
    assert server.address is not None
    assert get(server.address)[0] == 200
    server.wait_for_line(r"reaped pid \d+ \(not a worker\)")
    assert get(server.address)[0] == 200
    assert "died unexpectedly" not in server.output
    assert len(worker_pids(server)) == 2
    inner = int(Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text())
    os.kill(inner, signal.SIGTERM)
    assert server.wait_exit(20) == 0, server.output


@pytest.mark.slow
def test_replacements_that_cannot_start_back_off_and_recover(
    start_server: StartServer, app_dir: Path
) -> None:
    """A worker killed while the code on disk is broken: its replacements fail to start,
    each attempt later than the one before, the other worker serves on; once the code
    is fixed, a replacement starts."""
    good = (app_dir / "app.py").read_text()
    server = start_workers(start_server, app_dir, "--workers", "2")
    assert server.address is not None
    (app_dir / "app.py").write_text("raise RuntimeError('broken on purpose')\n")
    os.kill(worker_pids(server)[0], signal.SIGKILL)
    server.wait_for_line(r"failed to start \(.*broken on purpose.*\); next attempt in 0\.4s")
    server.wait_for_line(r"failed to start \(.*broken on purpose.*\); next attempt in 0\.8s")
    assert get(server.address)[0] == 200  # the other worker serves meanwhile
    (app_dir / "app.py").write_text(good)
    wait_until(lambda: server.output.count("listening on") >= 3, 20, "a replacement to start")
    assert get(server.address)[0] == 200
    server.send(signal.SIGTERM)
    assert server.wait_exit(20) == 0, server.output


ORPHANS_APP = """
import subprocess
from http.server import BaseHTTPRequestHandler


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # sh's background sleep outlives sh: it is re-parented to PID 1 (this process).
        # sh's own status is the app's: it must get it, not the reaper.
        code = subprocess.run(["sh", "-c", "sleep 0.2 & exit 7"], check=False).returncode
        data = str(code).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass
"""


def zombies_of(pid: int) -> list[int]:
    """The children of ``pid`` that are zombies."""
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            children += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return [child for child in children if not alive(child) and os.path.exists(f"/proc/{child}")]


@pytest.mark.slow
def test_one_process_as_pid_1_reaps_orphans_and_never_the_apps_own_children(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The shipped image runs one process as PID 1: the orphans re-parented to it are
    reaped (before any HUP), and the statuses of the app's own children stay the app's."""
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare --pid)")
    write_app(tmp_path, ORPHANS_APP)
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", "--log-level", "debug"],
        cwd=tmp_path, prefix=["unshare", "--pid", "--fork", "--mount-proc"],
    )  # fmt: skip
    server.wait_for_line(r"\(http, pid 1, grace")
    assert server.wait_ready() is not None
    inner = int(Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text())
    answers = [get(server.address)[1] for _ in range(20)]  # type: ignore[arg-type]
    assert answers == ["7"] * 20  # subprocess.run got sh's own status every time
    wait_until(lambda: len(server.output.split("(not a worker)")) > 20, 20, "20 orphans reaped")
    wait_until(lambda: zombies_of(inner) == [], 10, "no zombie left")
    os.kill(inner, signal.SIGTERM)
    assert server.wait_exit(20) == 0, server.output
