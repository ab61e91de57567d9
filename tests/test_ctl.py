"""``graceserve ctl``: real servers, real signals, the control socket next to the pidfile.

Every ``ctl`` runs as its own process (``python -m graceserve ctl ...``), as systemd's
``ExecReload=`` would run it; it is never the server's parent, so whatever it learns
about an exit code it learns over the control socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from graceserve.process.control import control_path
from testsupport.ctl import ctl, status_of
from testsupport.process import ServerProcess
from testsupport.stops import in_flight, read_until_closed
from testsupport.waiting import wait_until

StartServer = Callable[..., ServerProcess]

IO_TIMEOUT = 10.0

APP = """\
import os
from http.server import BaseHTTPRequestHandler


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        data = f"pid {os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass
"""
BROKEN_APP = 'raise RuntimeError("app.py broken on purpose")\n'


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line ``ctl`` printed (stdout and stderr together), with no traceback."""
    text = (result.stdout + result.stderr).strip()
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1, text
    return text


def get(address: tuple[str, int]) -> tuple[int, str]:
    connection = http.client.HTTPConnection(*address, timeout=IO_TIMEOUT)
    try:
        connection.request("GET", "/", headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


@pytest.fixture
def running(start_server: StartServer, app_dir: Path) -> tuple[ServerProcess, Path]:
    """The app served with a pidfile (in a long tmp_path: the socket path goes via /proc)."""
    pidfile = app_dir / "server.pid"
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", "--pidfile", str(pidfile), "--grace", "5"],
        cwd=app_dir,
    )
    server.wait_ready()
    return server, pidfile


# -- nothing to talk to --------------------------------------------------------------


def test_status_of_nothing_exits_3(tmp_path: Path) -> None:
    result = ctl("status", "--pidfile", str(tmp_path / "none.pid"))
    assert result.returncode == 3
    assert "not running" in one_line(result)


def test_status_of_a_stale_pidfile_exits_3(tmp_path: Path) -> None:
    pidfile = tmp_path / "stale.pid"
    pidfile.write_text("999999\n")  # unlocked: the process that wrote it is gone
    result = ctl("status", "--pidfile", str(pidfile))
    assert result.returncode == 3
    assert "stale" in one_line(result)


@pytest.mark.slow
def test_locked_pidfile_without_control_socket_is_a_failure_not_a_guess(tmp_path: Path) -> None:
    pidfile = tmp_path / "held.pid"
    with open(pidfile, "w") as held:
        held.write(f"{os.getpid()}\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for action in ("status", "graceful", "stop"):
            result = ctl(action, "--pidfile", str(pidfile))
            assert result.returncode == 1, result
            assert "does not answer" in one_line(result)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink", "unreadable"])
def test_a_path_that_cannot_be_a_pidfile_exits_2(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.pid"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        (tmp_path / "real.pid").write_text("1\n")
        path.symlink_to(tmp_path / "real.pid")
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path.write_text("1\n")
        path.chmod(0)
    result = ctl("status", "--pidfile", str(path))
    assert result.returncode == 2, result
    assert str(path) in one_line(result)


def test_no_pidfile_given_exits_2() -> None:
    result = ctl("status")
    assert result.returncode == 2
    assert "GRACESERVE_PIDFILE" in one_line(result)


def test_unknown_action_exits_2() -> None:
    result = ctl("restart", "--pidfile", "/nonexistent.pid")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# -- a running server ------------------------------------------------------------------


def test_status_of_a_running_server(running: tuple[ServerProcess, Path]) -> None:
    server, pidfile = running
    result = ctl("status", env={"GRACESERVE_PIDFILE": str(pidfile)})  # the variable works
    assert result.returncode == 0, result
    line = one_line(result)
    assert re.fullmatch(
        rf"pid={server.proc.pid} generation=1 state=serving active_connections=0 "
        r"addresses=127\.0\.0\.1:\d+",
        line,
    ), line
    socket_file = Path(control_path(str(pidfile)))
    assert stat.S_IMODE(socket_file.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(socket_file.stat().st_mode)
    status = status_of(pidfile)
    assert (status["pid"], status["generation"], status["reloads"]) == (server.proc.pid, 1, 0)
    assert (status["workers"], status["last_reload"], status["grace"]) == (None, None, 5.0)


def test_status_counts_active_connections(running: tuple[ServerProcess, Path]) -> None:
    server, pidfile = running
    assert server.address is not None
    with contextlib.closing(in_flight(server.address, "/")):  # keep-alive: stays open
        wait_until(lambda: status_of(pidfile)["active_connections"] == 1, what="1 connection")


@pytest.mark.slow
def test_graceful_waits_for_the_new_generation(
    running: tuple[ServerProcess, Path], app_dir: Path
) -> None:
    server, pidfile = running
    assert server.address is not None
    old = server.proc.pid
    result = ctl("graceful", "--pidfile", str(pidfile))
    assert result.returncode == 0, (result, server.output)
    line = one_line(result)
    assert int(pidfile.read_text()) == old  # the main process stays (as the supervisor)
    assert f"generation 2 serving: pid={old} generation=2 state=serving" in line
    # ctl returned once the new generation serves: a worker process answers at once.
    code, body = get(server.address)
    assert code == 200
    assert body != f"pid {old}"
    status = status_of(pidfile)
    assert (status["generation"], status["reloads"]) == (2, 1)

    assert ctl("graceful", "--pidfile", str(pidfile)).returncode == 0
    assert status_of(pidfile)["generation"] == 3
    stop = ctl("stop", "--pidfile", str(pidfile))
    assert stop.returncode == 0, (stop, server.output)
    assert not pidfile.exists()
    assert not Path(control_path(str(pidfile))).exists()
    assert [name for name in os.listdir(app_dir) if ".ctl" in name] == []  # nor a temporary one


@pytest.mark.slow
def test_graceful_with_code_that_cannot_import_fails_and_the_old_keeps_serving(
    running: tuple[ServerProcess, Path], app_dir: Path
) -> None:
    server, pidfile = running
    assert server.address is not None
    old = server.proc.pid
    (app_dir / "app.py").write_text(BROKEN_APP)
    result = ctl("graceful", "--pidfile", str(pidfile))
    assert result.returncode == 1, (result, server.output)
    line = one_line(result)
    assert re.search(r"reload failed: pid \d+ exited with status 3 before it was ready", line)
    assert f"generation 1 (pid {old}) still serving" in line
    assert get(server.address) == (200, f"pid {old}")
    status = status_of(pidfile)
    assert (status["pid"], status["generation"], status["state"]) == (old, 1, "serving")
    assert status["last_reload"] == {
        "number": 1, "generation": 2, "ok": False,
        "reason": status["last_reload"]["reason"],  # type: ignore[index]
    }  # fmt: skip

    # A second failure is reported as a new one (not mistaken for the old), then a fix works.
    assert ctl("graceful", "--pidfile", str(pidfile)).returncode == 1
    assert status_of(pidfile)["reloads"] == 2
    (app_dir / "app.py").write_text(APP)
    assert ctl("graceful", "--pidfile", str(pidfile)).returncode == 0
    assert status_of(pidfile)["generation"] == 2
    assert "Traceback" not in server.output.split("broken on purpose")[-1]


def test_stop_of_a_clean_server_exits_0_with_the_summary(
    running: tuple[ServerProcess, Path],
) -> None:
    server, pidfile = running
    result = ctl("stop", "--pidfile", str(pidfile))
    assert result.returncode == 0, (result, server.output)
    line = one_line(result)
    assert re.fullmatch(
        rf"stopped: pid {server.proc.pid}, exit code 0: 0 served during the drain, 0 cut, "
        r"[\d.]+s",
        line,
    ), line
    assert server.wait_exit() == 0
    assert not pidfile.exists()
    assert not Path(control_path(str(pidfile))).exists()
    assert ctl("status", "--pidfile", str(pidfile)).returncode == 3


@pytest.mark.slow
def test_stop_that_has_to_cut_exits_4_with_the_summary(
    start_server: StartServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "demo.pid"
    server = start_server(["--bind", "127.0.0.1:0", "--pidfile", str(pidfile), "--grace", "0.5"])
    address = server.wait_ready()
    with contextlib.closing(in_flight(address, "/slow?seconds=30")) as sock:
        result = ctl("stop", "--pidfile", str(pidfile))
        assert read_until_closed(sock) == b""
    assert result.returncode == 4, (result, server.output)
    line = one_line(result)
    assert re.fullmatch(
        rf"stopped: pid {server.proc.pid}, exit code 4: 0 served during the drain, 1 cut, "
        r"[\d.]+s",
        line,
    ), line
    assert server.wait_exit() == 4


@pytest.mark.slow
def test_graceful_of_a_draining_server_is_refused(
    start_server: StartServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "demo.pid"
    server = start_server(
        ["--bind", "127.0.0.1:0", "--pidfile", str(pidfile), "--drain-delay", "30"]
    )
    server.wait_ready()
    server.send(15)
    wait_until(lambda: status_of(pidfile)["state"] == "draining", what="the lame duck")
    result = ctl("graceful", "--pidfile", str(pidfile))
    assert result.returncode == 1
    assert "is stopping (draining); not reloading" in one_line(result)


# -- ctl interrupted (systemd: `systemctl stop` during `systemctl reload`) -----------------


@pytest.mark.slow
def test_graceful_interrupted_by_term_while_the_server_stops_exits_0(
    start_server: StartServer, tmp_path: Path
) -> None:
    """systemd signals the reload's control process (ctl graceful) and the server at
    once: ctl stops waiting, says so, and exits 0, so the unit does not fail."""
    from testsupport.reloads import Ctl, arrivals, deploy

    deploy(tmp_path, "v1", gate_open=True)
    pidfile = tmp_path / "server.pid"
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", "--pidfile", str(pidfile), "--grace", "5"],
        cwd=tmp_path, env={"PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    server.wait_ready()
    deploy(tmp_path, "v2")  # its import waits at a gate that never opens
    reload = Ctl("graceful", "--pidfile", str(pidfile))
    try:
        wait_until(lambda: arrivals(tmp_path, "v2") == 1, what="the reload to begin")
        server.send(signal.SIGTERM)
        reload.proc.send_signal(signal.SIGTERM)
        code, out = reload.result(30)
    finally:
        reload.kill()
    assert code == 0, (out, server.output)
    said = r"graceserve ctl graceful: interrupted by SIGTERM; pid \d+ is stopping "
    assert re.fullmatch(said + r"\((draining|stopped|gone)\): nothing more to wait for", out), out
    assert server.wait_exit() == 0


@pytest.mark.slow
def test_graceful_interrupted_while_the_server_serves_exits_1(
    start_server: StartServer, tmp_path: Path
) -> None:
    from testsupport.reloads import Ctl, arrivals, deploy

    deploy(tmp_path, "v1", gate_open=True)
    pidfile = tmp_path / "server.pid"
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", "--pidfile", str(pidfile)],
        cwd=tmp_path, env={"PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    server.wait_ready()
    deploy(tmp_path, "v2")
    reload = Ctl("graceful", "--pidfile", str(pidfile))
    try:
        wait_until(lambda: arrivals(tmp_path, "v2") == 1, what="the reload to begin")
        reload.proc.send_signal(signal.SIGINT)
        code, out = reload.result(30)
    finally:
        reload.kill()
    assert code == 1, (out, server.output)
    said = r"graceserve ctl graceful: interrupted by SIGINT before the outcome; pid \d+ is "
    assert re.fullmatch(said + "reloading", out), out
    assert "Traceback" not in out
