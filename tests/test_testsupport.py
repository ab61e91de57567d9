"""The support package the tests and the benchmarks share: checked against the kernel itself."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from graceserve.process.readiness import listen_url, ready_line
from testsupport import ChildProcess, child_env
from testsupport.procfs import (
    LISTEN,
    accept_queue,
    cpu_seconds,
    listening_ports,
    receive_queues,
    status_field,
    tcp_sockets,
)
from testsupport.waiting import wait_until

TIMEOUT = 5.0


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0), backlog=8) as sock:
        yield sock


def test_a_listener_its_accept_queue_and_its_owner(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert accept_queue(port) == 0
    assert port in listening_ports(os.getpid())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT),
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT),
    ):
        wait_until(lambda: accept_queue(port) == 2, what="two connections queued")
        rows = [r for r in tcp_sockets() if r.state == LISTEN and r.local_port == port]
        assert [(r.local_host, r.unread) for r in rows] == [("127.0.0.1", 2)]
        with pytest.raises(AssertionError, match="no listener"):
            accept_queue(port, host="127.0.0.2")


def test_unread_bytes_of_an_established_connection(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        server_end, _ = listener.accept()
        with server_end:
            client.sendall(b"12345")
            key = (port, client.getsockname()[1])
            wait_until(lambda: receive_queues().get(key) == 5, what="5 bytes unread")
            assert server_end.recv(5) == b"12345"
            wait_until(lambda: receive_queues().get(key) == 0, what="nothing unread")


def test_an_ipv6_listener_names_its_host() -> None:
    try:
        sock = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with sock:
        port = sock.getsockname()[1]
        rows = [r for r in tcp_sockets() if r.state == LISTEN and r.local_port == port]
        assert [r.local_host for r in rows] == ["::1"]


def test_process_fields() -> None:
    assert status_field("self", "Threads") >= 1
    with pytest.raises(KeyError):
        status_field("self", "NoSuchField")
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn a little CPU to measure
        pass
    own = cpu_seconds(os.getpid())
    assert own > 0
    assert cpu_seconds(os.getpid(), descendants=True) >= own  # read later, and more processes


def test_a_child_reports_readiness_and_exit() -> None:
    line = ready_line(listen_url("tcp", "127.0.0.1:7"), "tcp", 1, 2.5)
    script = f"import sys; print('starting', file=sys.stderr); print({line!r}, file=sys.stderr)"
    child = ChildProcess([sys.executable, "-c", script])
    try:
        assert child.wait_ready() == ("127.0.0.1", 7)
        assert child.ready is not None
        assert (child.ready.protocol, child.ready.grace) == ("tcp", 2.5)
        assert child.exited_within(TIMEOUT) == 0
        assert child.output == f"starting\n{line}"
        assert child.new_lines(0) == ["starting", line]
        assert child.new_lines(0) == []
    finally:
        child.stop()


def test_a_child_that_never_gets_ready_fails_the_wait_early() -> None:
    child = ChildProcess([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        started = time.monotonic()
        with pytest.raises(pytest.fail.Exception, match="no line matching"):
            child.wait_readiness(timeout=30.0)
        assert time.monotonic() - started < 15.0  # stderr closed: no need to wait it out
        assert child.wait_exit() == 3
    finally:
        child.stop()


def test_stop_kills_the_whole_group() -> None:
    # The child starts a grandchild in its group, says so, and both sleep.
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('grandchild', p.pid, file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = ChildProcess([sys.executable, "-c", script])
    grandchild = int(child.wait_for_line(r"grandchild (\d+)")[1])
    child.stop()
    assert child.proc.returncode == -signal.SIGKILL

    def gone() -> bool:
        try:
            with open(f"/proc/{grandchild}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    wait_until(gone, what="the grandchild to be killed")


def test_child_env_puts_this_checkout_first_and_drops_graceserve_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRACESERVE_GRACE", "1")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    env = child_env({"GRACESERVE_BIND": "127.0.0.1:0"}, path=["/bench"])
    assert env["PYTHONPATH"].split(os.pathsep)[1:] == ["/bench", "/elsewhere"]
    assert "GRACESERVE_GRACE" not in env
    assert env["GRACESERVE_BIND"] == "127.0.0.1:0"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert child_env({"PYTHONUNBUFFERED": "0"})["PYTHONUNBUFFERED"] == "0"
