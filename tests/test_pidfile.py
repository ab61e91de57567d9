"""The pidfile: PidFile in-process, and its life cycle around a real server process.

``flock`` locks belong to an open file description, so two ``PidFile`` objects in this
one process conflict exactly like two processes do: the unit tests need no second
process.  The end-to-end tests start real servers (and SIGKILL one of them).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from graceserve.errors import EXIT_CANNOT_START, StartupError
from graceserve.process.pidfile import PidFile
from testsupport.process import ServerProcess

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def held() -> Iterator[list[PidFile]]:
    """PidFiles to release at teardown, whatever the test did."""
    pidfiles: list[PidFile] = []
    yield pidfiles
    for pidfile in pidfiles:
        pidfile.release()


def acquired(path: Path, held: list[PidFile], pid: int | None = None) -> PidFile:
    pidfile = PidFile(str(path))
    pidfile.acquire(pid)
    held.append(pidfile)
    return pidfile


# -- PidFile, in-process ---------------------------------------------------------------


def test_acquire_writes_our_pid_and_release_removes_it(tmp_path: Path, held: list[PidFile]) -> None:
    path = tmp_path / "app.pid"
    pidfile = acquired(path, held)
    assert pidfile.held
    assert path.read_text() == f"{os.getpid()}\n"
    mode = stat.S_IMODE(path.stat().st_mode)
    assert not mode & (stat.S_IWGRP | stat.S_IWOTH)
    pidfile.release()
    assert not pidfile.held
    assert not path.exists()


def test_acquire_with_an_explicit_pid(tmp_path: Path, held: list[PidFile]) -> None:
    path = tmp_path / "app.pid"
    pidfile = acquired(path, held, pid=4242)
    assert path.read_text() == "4242\n"
    pidfile.release()
    assert not path.exists()


def test_release_is_idempotent_and_safe_before_acquire(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    pidfile = PidFile(str(path))
    pidfile.release()  # never acquired
    pidfile.acquire()
    pidfile.release()
    pidfile.release()
    assert not path.exists()


def test_relative_path_is_made_absolute(
    tmp_path: Path, held: list[PidFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pidfile = PidFile("rel.pid")
    assert pidfile.path == str(tmp_path / "rel.pid")
    pidfile.acquire()
    held.append(pidfile)
    monkeypatch.chdir("/")  # the path stays the one we locked
    pidfile.release()
    assert not (tmp_path / "rel.pid").exists()


def test_a_second_holder_is_refused_naming_the_live_pid(
    tmp_path: Path, held: list[PidFile]
) -> None:
    path = tmp_path / "app.pid"
    first = acquired(path, held)
    second = PidFile(str(path))
    with pytest.raises(StartupError) as caught:
        second.acquire()
    assert caught.value.exit_code == EXIT_CANNOT_START == 3
    assert f"already running as pid {os.getpid()}" in str(caught.value)
    assert not second.held
    second.release()  # harmless: it holds nothing, and must not remove first's file
    assert path.read_text() == f"{os.getpid()}\n"
    assert first.held


def test_refused_without_a_readable_pid_names_another_process(
    tmp_path: Path, held: list[PidFile]
) -> None:
    path = tmp_path / "app.pid"
    first = acquired(path, held)
    path.write_text("")  # same inode: the lock stays, the pid is gone
    with pytest.raises(StartupError, match="already running as another process"):
        PidFile(str(path)).acquire()
    first.release()


def test_the_file_is_free_again_after_release(tmp_path: Path, held: list[PidFile]) -> None:
    path = tmp_path / "app.pid"
    first = acquired(path, held)
    first.release()
    second = acquired(path, held, pid=777)
    assert second.held
    assert path.read_text() == "777\n"


def test_stale_file_is_reclaimed_and_logged(
    tmp_path: Path, held: list[PidFile], graceserve_log: list[str]
) -> None:
    path = tmp_path / "app.pid"
    path.write_text("999999\n")  # left by a killed instance: nobody holds the lock
    acquired(path, held)
    assert path.read_text() == f"{os.getpid()}\n"
    assert any(
        re.search(rf"reclaiming stale pidfile {re.escape(str(path))} left by pid 999999", m)
        for m in graceserve_log
    ), graceserve_log


@pytest.mark.parametrize("content", ["", "garbage\n", "12 34\n", "-5\n", "\0\0\0"])
def test_unreadable_stale_content_is_overwritten(
    tmp_path: Path, held: list[PidFile], content: str
) -> None:
    path = tmp_path / "app.pid"
    path.write_text(content)
    acquired(path, held)
    assert path.read_text() == f"{os.getpid()}\n"


def test_longer_stale_content_is_truncated(tmp_path: Path, held: list[PidFile]) -> None:
    path = tmp_path / "app.pid"
    path.write_text("1234567890123\n")
    acquired(path, held, pid=5)
    assert path.read_text() == "5\n"


def test_replaced_file_is_left_alone_at_release(
    tmp_path: Path, held: list[PidFile], graceserve_log: list[str]
) -> None:
    path = tmp_path / "app.pid"
    pidfile = acquired(path, held)
    other = tmp_path / "other"
    other.write_text("31337\n")
    os.replace(other, path)
    pidfile.release()
    assert path.read_text() == "31337\n"
    assert any("replaced" in m for m in graceserve_log), graceserve_log


def test_file_rewritten_in_place_is_left_alone_at_release(
    tmp_path: Path, held: list[PidFile], graceserve_log: list[str]
) -> None:
    path = tmp_path / "app.pid"
    pidfile = acquired(path, held)
    path.write_text("31337\n")  # same inode, someone else's pid
    pidfile.release()
    assert path.read_text() == "31337\n"
    assert any("replaced" in m for m in graceserve_log), graceserve_log


def test_removed_file_does_not_break_release(tmp_path: Path, held: list[PidFile]) -> None:
    path = tmp_path / "app.pid"
    pidfile = acquired(path, held)
    path.unlink()
    pidfile.release()
    assert not pidfile.held
    assert not path.exists()


def test_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    link = tmp_path / "app.pid"
    link.symlink_to(victim)
    with pytest.raises(StartupError, match="symbolic link"):
        PidFile(str(link)).acquire()
    assert link.is_symlink()
    assert victim.read_text() == "keep me\n"


def test_dangling_symlink_is_refused_and_nothing_created(tmp_path: Path) -> None:
    link = tmp_path / "app.pid"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(StartupError, match="symbolic link"):
        PidFile(str(link)).acquire()
    assert not (tmp_path / "nowhere").exists()


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="does not exist") as caught:
        PidFile(str(tmp_path / "missing" / "app.pid")).acquire()
    assert caught.value.exit_code == 3
    assert not (tmp_path / "missing").exists()


def test_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StartupError, match="not a directory"):
        PidFile(str(tmp_path / "file" / "app.pid")).acquire()


def test_pidfile_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "app.pid").mkdir()
    with pytest.raises(StartupError):
        PidFile(str(tmp_path / "app.pid")).acquire()
    assert (tmp_path / "app.pid").is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_world_writable_directory_of_another_user_is_refused(
    tmp_path: Path, held: list[PidFile]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 65534, 65534)
    os.chmod(shared, 0o777)
    with pytest.raises(StartupError, match="anyone may write there"):
        PidFile(str(shared / "app.pid")).acquire()
    assert not (shared / "app.pid").exists()
    os.chmod(shared, 0o1777)  # sticky, like /tmp: others cannot replace our file
    acquired(shared / "app.pid", held)


def test_the_descriptor_is_not_inherited(tmp_path: Path, held: list[PidFile]) -> None:
    pidfile = acquired(tmp_path / "app.pid", held)
    fd = pidfile.fileno
    assert fd is not None
    assert not os.get_inheritable(fd)


# -- end to end ------------------------------------------------------------------------


def start(start_server: StartServer, pidfile: Path, *args: str) -> ServerProcess:
    return start_server(["--bind", "127.0.0.1:0", "--pidfile", str(pidfile), *args])


def get_ok(server: ServerProcess) -> bool:
    assert server.address is not None
    with socket.create_connection(server.address, timeout=10.0) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.startswith(b"HTTP/1.1 200 ")


def test_pidfile_lives_exactly_as_long_as_the_server(
    start_server: StartServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "gs.pid"
    server = start(start_server, pidfile)
    server.wait_ready()
    assert pidfile.read_text() == f"{server.proc.pid}\n"  # written before readiness
    assert get_ok(server)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert not pidfile.exists()


def test_second_instance_refused_while_the_first_keeps_serving(
    start_server: StartServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "gs.pid"
    first = start(start_server, pidfile)
    first.wait_ready()
    second = start(start_server, pidfile)
    assert second.wait_exit() == 3
    lines = second.output.splitlines()
    assert len(lines) == 1, second.output
    assert f"already running as pid {first.proc.pid}" in lines[0]
    assert "Traceback" not in second.output
    assert first.proc.poll() is None
    assert get_ok(first)
    assert pidfile.read_text() == f"{first.proc.pid}\n"
    first.send(signal.SIGTERM)
    assert first.wait_exit() == 0
    assert not pidfile.exists()


@pytest.mark.slow
def test_restart_after_sigkill_reclaims_the_stale_pidfile(
    start_server: StartServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "gs.pid"
    killed = start(start_server, pidfile)
    killed.wait_ready()
    os.killpg(killed.proc.pid, signal.SIGKILL)  # its own session: only what we started
    assert killed.wait_exit() == -signal.SIGKILL
    assert pidfile.read_text() == f"{killed.proc.pid}\n"  # stale: nobody removed it
    second = start(start_server, pidfile)
    second.wait_ready()
    second.wait_for_line(
        rf"reclaiming stale pidfile {re.escape(str(pidfile))} left by pid {killed.proc.pid}"
    )
    assert pidfile.read_text() == f"{second.proc.pid}\n"
    assert get_ok(second)
    second.send(signal.SIGTERM)
    assert second.wait_exit() == 0
    assert not pidfile.exists()


def test_pidfile_replaced_while_running_is_not_removed(
    start_server: StartServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "gs.pid"
    server = start(start_server, pidfile)
    server.wait_ready()
    replacement = tmp_path / "new.pid"
    replacement.write_text("31337\n")
    os.replace(replacement, pidfile)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    server.wait_for_line(rf"pidfile {re.escape(str(pidfile))} was replaced .*leaving it")
    assert pidfile.read_text() == "31337\n"


def test_pidfile_symlink_is_refused(start_server: StartServer, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    pidfile = tmp_path / "gs.pid"
    pidfile.symlink_to(victim)
    server = start(start_server, pidfile)
    assert server.wait_exit() == 3
    lines = server.output.splitlines()
    assert len(lines) == 1, server.output
    assert "symbolic link" in lines[0]
    assert "Traceback" not in server.output
    assert pidfile.is_symlink()
    assert victim.read_text() == "keep me\n"


def test_pidfile_removed_when_the_bind_fails(start_server: StartServer, tmp_path: Path) -> None:
    pidfile = tmp_path / "gs.pid"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(["--bind", f"127.0.0.1:{port}", "--pidfile", str(pidfile)])
        assert server.wait_exit() == 3
    assert "in use" in server.output
    assert not pidfile.exists()


@pytest.mark.slow
def test_pidfile_removed_after_a_forced_stop(start_server: StartServer, tmp_path: Path) -> None:
    pidfile = tmp_path / "gs.pid"
    server = start(start_server, pidfile, "--grace", "0.3")
    server.wait_ready()
    assert server.address is not None
    with socket.create_connection(server.address, timeout=10.0) as sock:
        sock.sendall(b"GET /slow?seconds=30 HTTP/1.1\r\nHost: test\r\n\r\n")
        server.send(signal.SIGTERM)
        assert server.wait_exit() == 4  # the kernel had accepted it: served, then cut
    assert not pidfile.exists()
