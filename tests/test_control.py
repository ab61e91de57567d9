"""graceserve.process.control in one process: the socket file, the protocol, the wait, the close."""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from graceserve.process.control import (
    ControlServer,
    ServerStatus,
    control_path,
    request,
    temporary_path,
)
from graceserve.process.status import RECENT_RELOADS
from testsupport.waiting import Call

TIMEOUT = 10.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose paths fit in a sockaddr_un (tmp_path may be too long)."""
    with tempfile.TemporaryDirectory(prefix="gs-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def served(short_dir: Path) -> Iterator[tuple[ServerStatus, ControlServer]]:
    status = ServerStatus(lambda: 7, grace=3.0)
    server = ControlServer(control_path(str(short_dir / "x.pid")), status.snapshot)
    status.subscribe(server.changed)
    server.start()
    try:
        yield status, server
    finally:
        server.close()


def test_socket_file_is_0600_next_to_the_pidfile_and_removed_at_close(tmp_path: Path) -> None:
    path = control_path(str(tmp_path / "x.pid"))
    assert path == str(tmp_path / "x.pid.ctl")
    Path(path).write_text("left by a killed instance")  # whoever holds the pidfile replaces it
    server = ControlServer(path, ServerStatus().snapshot)
    server.start()
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    server.close()
    assert os.listdir(tmp_path) == []


def test_close_leaves_a_socket_file_that_is_no_longer_ours(tmp_path: Path) -> None:
    path = control_path(str(tmp_path / "x.pid"))
    old = ControlServer(path, ServerStatus().snapshot)
    old.start()
    new = ControlServer(path, ServerStatus().snapshot)  # as the next pidfile holder does
    new.start()  # renamed over the old one's file
    assert not os.path.exists(temporary_path(path, os.getpid()))
    old.close()
    assert request(path, {"cmd": "status"}, TIMEOUT)["ok"]  # new's socket is still there
    new.close()
    assert os.listdir(tmp_path) == []


def test_status(served: tuple[ServerStatus, ControlServer]) -> None:
    _status, server = served
    answer = request(server.path, {"cmd": "status"}, TIMEOUT)
    assert answer["ok"] is True
    assert answer["status"] == {
        "pid": os.getpid(), "generation": 1, "state": "starting", "workers": None,
        "reloads_started": 0, "reloads": 0, "reload": None, "reload_pending": False,
        "last_reload": None, "recent_reloads": [], "reload_failures": 0, "worker_restarts": 0,
        "start_timeout": None, "grace": 3.0, "drain_delay": 0.0, "exit_code": None,
        "summary": None, "addresses": [], "active_connections": 7,
    }  # fmt: skip


@pytest.mark.parametrize(
    "line",
    [b"nonsense\n", b'{"cmd": "reboot"}\n', b"[1]\n", b'{"cmd": "wait", "timeout": "x"}\n'],
)
def test_bad_requests_get_an_error_answer(
    served: tuple[ServerStatus, ControlServer], line: bytes
) -> None:
    _status, server = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(server.path)
        sock.sendall(line)
        answer = sock.makefile("rb").readline()
    assert b'"ok": false' in answer
    assert b'"error"' in answer


def test_wait_returns_on_a_reload_after_the_one_it_saw(
    served: tuple[ServerStatus, ControlServer],
) -> None:
    status, server = served
    status.record_reload(False, "first failure")
    # The old failure does not answer a wait that saw it (reloads 1): it times out.
    seen = {"cmd": "wait", "generation": 1, "reloads": 1}
    assert request(server.path, {**seen, "timeout": 0}, TIMEOUT)["done"] is False
    waiting = Call(request, server.path, {**seen, "timeout": TIMEOUT}, TIMEOUT)
    status.record_reload(True, "pid 9 is serving")
    answer = waiting.result()
    assert answer["done"] is True
    assert answer["status"]["generation"] == 2
    assert answer["status"]["state"] == "serving"  # in the same update as the record
    assert answer["status"]["last_reload"] == {
        "number": 2, "generation": 2, "ok": True, "reason": "pid 9 is serving"
    }  # fmt: skip
    assert [entry["ok"] for entry in answer["status"]["recent_reloads"]] == [False, True]
    assert answer["status"]["reload_failures"] == 1  # all of them, not only the recent ones


def test_failures_and_restarts_are_counted_past_the_recent_ones() -> None:
    status = ServerStatus()
    for number in range(RECENT_RELOADS + 2):
        status.record_reload(False, f"failure {number}")
    status.count_restart()
    fields = status.snapshot()
    assert len(fields["recent_reloads"]) == RECENT_RELOADS
    assert fields["reload_failures"] == RECENT_RELOADS + 2
    assert fields["worker_restarts"] == 1


def test_wait_for_stopping_returns_once_the_server_drains(
    served: tuple[ServerStatus, ControlServer],
) -> None:
    status, server = served
    waiting = Call(
        request, server.path,
        {"cmd": "wait", "reloads": 0, "stopping": True, "timeout": TIMEOUT}, TIMEOUT,
    )  # fmt: skip
    status.update(state="draining")
    answer = waiting.result()
    assert (answer["done"], answer["status"]["state"]) == (True, "draining")
    # Without "stopping", draining is not the end of a wait.
    plain = {"cmd": "wait", "reloads": 0, "timeout": 0}
    assert request(server.path, plain, TIMEOUT)["done"] is False


def test_wait_times_out_with_done_false(served: tuple[ServerStatus, ControlServer]) -> None:
    _status, server = served
    answer = request(server.path, {"cmd": "wait", "generation": 1, "timeout": 0.1}, TIMEOUT)
    assert answer["done"] is False


def test_close_answers_waiters_and_queued_clients_with_the_final_status(
    short_dir: Path,
) -> None:
    status = ServerStatus()
    server = ControlServer(control_path(str(short_dir / "x.pid")), status.snapshot)
    status.subscribe(server.changed)
    server.start()
    clients = []
    for _ in range(3):  # sent before the close: each must be answered
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(server.path)
        sock.sendall(b'{"cmd": "wait", "timeout": 60}\n')
        clients.append(sock)
    status.finish(4, {"forced": 1})
    server.close()
    for sock in clients:
        with sock:
            answer = json.loads(sock.makefile("rb").readline())
        assert answer["done"] is True
        assert (answer["status"]["state"], answer["status"]["exit_code"]) == ("stopped", 4)
        assert answer["status"]["summary"] == {"forced": 1}
    assert os.listdir(short_dir) == []
