"""Several listeners in one server: ``--bind`` repeated, TCP, ``[::1]`` and ``unix:`` together.

One server (one process, or a supervisor and its workers) listens on every
address; they share one connection registry and one drain.  Each test starts
the contract target (``testsupport.targets``) as a handler and as a WSGI app,
in one process and with ``--workers 2``, on ``127.0.0.1:0``, a Unix socket and,
where the machine has an IPv6 loopback, ``[::1]:0``, and learns every address
from the control socket's ``addresses`` (what ``ctl status`` prints).  The
library API (``add_listener``, ``serve()`` with a list) is checked in-process
at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graceserve import GracefulTCPServer, GracefulWSGIServer
from graceserve.config import parse_bind
from graceserve.errors import EXIT_CANNOT_START, EXIT_USAGE
from testsupport.load import Load
from testsupport.process import ChildProcess, child_env
from testsupport.rawhttp import connect, get, open_request, read_response
from testsupport.serve import MODES, Gate, Served, serve
from testsupport.waiting import Call, wait_until

pytestmark = [pytest.mark.timeout(120)]

Address = tuple[str, int] | str
ONE, WORKERS = MODES[0], MODES[2]  # one process; --workers 2
KINDS = ("handler", "wsgi")
# One process, and --workers 2 (a second or more to start: slow).
WORKER_COUNTS = [pytest.param(1, id="one"), pytest.param(2, id="workers2", marks=pytest.mark.slow)]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _has_ipv6_loopback()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a Unix socket's path is at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="gs-l-") as directory:
        yield Path(directory)


def more_binds(directory: Path) -> list[str]:
    """The ``--bind`` flags after the harness's ``127.0.0.1:0``: a Unix socket, [::1]:0."""
    return ["--bind", f"unix:{directory / 'app.sock'}", *(["-b", "[::1]:0"] if IPV6 else [])]


def addresses(served: Served) -> list[Address]:
    """Every address the server says it listens on (its status's ``addresses``)."""
    said = served.status()["addresses"]
    assert isinstance(said, list), said
    return [parse_bind(str(text)) for text in said]


def answered_by(address: Address, path: str = "/") -> tuple[int, dict[str, object]]:
    """One GET on a fresh connection: the status and the JSON body."""
    status, _headers, body = get(address, path, close=True)
    return status, json.loads(body)


def refuses(address: Address) -> bool:
    """Whether a new connect to ``address`` fails (refused, or the socket file gone)."""
    try:
        with connect(address, timeout=5.0):
            return False
    except (ConnectionRefusedError, FileNotFoundError):
        return True


def start(served_kind: str, mode_workers: int, directory: Path, *args: str) -> Served:
    mode = WORKERS if mode_workers > 1 else ONE
    return serve(served_kind, mode, args=[*more_binds(directory), *args])


# -- every listener serves -------------------------------------------------------------


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_listener_answers_and_is_named(kind: str, workers: int, short_dir: Path) -> None:
    with start(kind, workers, short_dir, "--access-log", "-") as served:
        where = addresses(served)
        sock = str(short_dir / "app.sock")
        assert where[0] == served.address
        assert where[1:] == [sock, *([("::1", where[2][1])] if IPV6 else [])]
        pids = set()
        for number, address in enumerate(where):
            status, body = answered_by(address, f"/seen/{number}")
            assert (status, body["kind"]) == (200, kind)
            pids.add(body["pid"])
        # The banner and the readiness lines name every address, the first --bind's first.
        banner = served.wait_line(r"INFO graceserve .*: serving ")
        texts = served.status()["addresses"]
        assert ", ".join(texts[:-1]) + f" and {texts[-1]}" in banner, banner
        ready = [line for line in served.lines if "listening on" in line]
        assert len(ready) == len(where) * workers, ready
        assert f"listening on unix:{sock} (http" in served.log
        # The access log has a line for each listener's request.
        for number in range(len(where)):
            served.wait_line(rf'"GET /seen/{number} HTTP/1.1" 200 ')
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600  # --umask's default
        served.stop(signal.SIGTERM)
        assert served.wait_exit() == 0
    assert not os.path.exists(sock)


def test_umask_applies_to_every_unix_listener(short_dir: Path) -> None:
    first, second = short_dir / "a.sock", short_dir / "b.sock"
    args = ["--bind", f"unix:{first}", "--bind", f"unix:{second}", "--umask", "007"]
    with serve("wsgi", ONE, args=args) as served:
        for path in (first, second):
            assert stat.S_IMODE(path.stat().st_mode) == 0o770, path
            assert answered_by(str(path))[0] == 200
        served.stop(signal.SIGTERM)
        assert served.wait_exit() == 0
    assert not first.exists()
    assert not second.exists()


# -- the stop: one drain over every listener --------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["one", "workers2"])
@pytest.mark.parametrize("kind", KINDS)
def test_term_drains_what_is_in_flight_on_every_listener(
    kind: str, workers: int, short_dir: Path
) -> None:
    with start(kind, workers, short_dir) as served, Gate() as gate:
        where = addresses(served)
        in_flight = [open_request(address, gate.target) for address in where]
        try:
            gate.wait_entered(len(where))
            served.stop(signal.SIGTERM)
            # Every listener closes (new clients are refused) while the requests still run;
            # a Unix socket's file goes first (its drop-all filter).
            wait_until(lambda: all(refuses(address) for address in where), 15, "refused")
            assert not os.path.exists(str(short_dir / "app.sock"))
            gate.release()
            for sock in in_flight:
                status, headers, body = read_response(sock)
                assert (status, headers.get("connection")) == (200, "close"), body
        finally:
            for sock in in_flight:
                sock.close()
        assert served.wait_exit() == 0
        assert " 0 cut" in served.log, served.log


@pytest.mark.parametrize("workers", [1, 2], ids=["one", "workers2"])
def test_keep_alive_load_on_every_listener_through_term_breaks_nothing(
    workers: int, short_dir: Path
) -> None:
    with start("wsgi", workers, short_dir) as served:
        loads = [Load(address, 3, tail=0.2) for address in addresses(served)]
        try:
            for load in loads:
                load.wait_for_requests(30)
            for load in loads:
                load.stopping.set()
            served.stop(signal.SIGTERM)
            assert served.wait_exit() == 0
        finally:
            for load in loads:
                load.stop()
    for load in loads:
        assert (load.failures, load.total() > 0) == ([], True), load.address


# -- the reload: every listener goes to the new generation ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=["one", "workers2"])
@pytest.mark.parametrize("kind", KINDS)
def test_hup_keeps_every_listener_serving(kind: str, workers: int, short_dir: Path) -> None:
    with start(kind, workers, short_dir) as served, Gate() as gate:
        where = addresses(served)
        before = {answered_by(address)[1]["pid"] for address in where}
        loads = [Load(address, 2, tail=0.2) for address in where]
        in_flight = [open_request(address, gate.target) for address in where]
        try:
            gate.wait_entered(len(where))
            reload = threading.Thread(target=served.reload, daemon=True)
            reload.start()
            # The old generation's requests are still in the app: the reload waits for
            # the new one to be ready, not for them; then they finish.
            served.wait_line(r"(is ready|are ready); ")
            gate.release()
            reload.join(60)
            assert not reload.is_alive(), served.log
            for sock in in_flight:
                assert read_response(sock)[0] == 200
            for load in loads:
                load.wait_for_requests(20)
            after = [answered_by(address)[1]["pid"] for address in where]
            assert not set(after) & before, (before, after)
        finally:
            for sock in in_flight:
                sock.close()
            for load in loads:
                load.stop()
        for load in loads:
            assert load.failures == [], load.address
        assert served.status()["generation"] == 2
        served.stop(signal.SIGTERM)
        assert served.wait_exit() == 0


# -- refusals -------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graceserve", *args],
        cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_later_bind_that_fails_exits_3_and_leaves_nothing_listening(
    workers: str, short_dir: Path
) -> None:
    sock = short_dir / "app.sock"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli(
            "-w", workers, "-b", f"unix:{sock}", "-b", "127.0.0.1:0", "-b", f"127.0.0.1:{port}",
            cwd=short_dir,
        )  # fmt: skip
    assert result.returncode == EXIT_CANNOT_START, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in lines[0]
    assert not sock.exists()  # the listener bound before it was closed, its file removed


def test_the_same_address_twice_is_a_usage_error(short_dir: Path) -> None:
    result = run_cli("-b", "127.0.0.1:8123", "-b", "127.0.0.1:8123", cwd=short_dir)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.count("\n") == 1, result.stderr
    assert "given twice" in result.stderr, result.stderr


@pytest.mark.skipif(not IPV6, reason="no IPv6 loopback on this machine")
def test_ipv4_and_ipv6_wildcards_on_one_port(short_dir: Path) -> None:
    """``-b 0.0.0.0:P -b [::]:P``: the IPv6 listener is IPv6-only, so both bind."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with serve("wsgi", ONE, args=["-b", f"0.0.0.0:{port}", "-b", f"[::]:{port}"]) as served:
        texts = served.status()["addresses"]
        assert texts[1:] == [f"0.0.0.0:{port}", f"[::]:{port}"], texts
        assert answered_by(("127.0.0.1", port))[0] == 200
        assert answered_by(("::1", port))[0] == 200


# -- the library ------------------------------------------------------------------------------


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def test_add_listener_serves_both_and_one_drain_closes_both(short_dir: Path) -> None:
    path = str(short_dir / "lib.sock")
    server = GracefulTCPServer(("127.0.0.1", 0), _Echo)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    server.add_listener(unix)
    assert server.server_addresses == [server.server_address, path]
    assert server.listeners == [server.socket, unix]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for address in server.server_addresses:
            with connect(address) as client:
                client.sendall(b"hi\n")
                assert client.makefile("rb").readline() == b"hi\n"
        with socket.socket() as late, pytest.raises(RuntimeError, match="before serve_forever"):
            server.add_listener(late)
        held = connect(path)  # in flight at the drain: served, then the drain ends
        wait_until(lambda: server.active_connections == 1, 10, "the connection registered")
        report = Call(server.drain, 10.0)
        wait_until(lambda: all(refuses(a) for a in server.server_addresses), 10, "refused")
        with held:
            held.sendall(b"last\n")
            assert held.makefile("rb").readline() == b"last\n"
        assert report.result().clean
    finally:
        server.server_close()
        thread.join(10)
    assert unix.fileno() == -1  # closed by the server, which owned it


def test_a_wsgi_request_names_the_listener_it_arrived_on(short_dir: Path) -> None:
    """SERVER_NAME and SERVER_PORT (PEP 3333: with SCRIPT_NAME and PATH_INFO they rebuild
    the URL when there is no Host) are those of the listener that accepted the client,
    not the first listener's for all."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = f"{environ['SERVER_NAME']} {environ['SERVER_PORT']}".encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    path = str(short_dir / "wsgi.sock")
    server = GracefulWSGIServer(("127.0.0.1", 0), app)
    second = socket.socket()
    second.bind(("127.0.0.1", 0))
    server.add_listener(second)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    server.add_listener(unix)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        first_port, second_port = server.server_address[1], second.getsockname()[1]
        name = server.server_name
        cases: list[tuple[Address, str]] = [
            (("127.0.0.1", first_port), f"{name} {first_port}"),
            (("127.0.0.1", second_port), f"{socket.getfqdn('127.0.0.1')} {second_port}"),
            (path, "localhost 0"),
        ]
        for address, expected in cases:
            status, _, body = get(address)
            assert (status, body.decode()) == (200, expected)
    finally:
        server.drain(5.0)
        server.shutdown()
        server.server_close()
        thread.join(10)


SERVE_TWO = """
import logging, sys
from graceserve import serve

logging.basicConfig(level=logging.INFO, format="%(message)s")

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"pid": 0, "kind": "serve"}']

sys.exit(serve(app, [("127.0.0.1", 0), sys.argv[1]], grace=5))
"""


def test_serve_takes_a_list_of_addresses(short_dir: Path) -> None:
    path = str(short_dir / "serve.sock")
    process = ChildProcess([sys.executable, "-c", SERVE_TWO, path], env=child_env())
    try:
        tcp = process.wait_ready()
        process.wait_for_line(rf"listening on unix:{path} ")
        for address in (tcp, path):
            assert answered_by(address) == (200, {"pid": 0, "kind": "serve"})
        process.send(signal.SIGTERM)
        assert process.wait_exit() == 0
    finally:
        process.stop()
    assert not os.path.exists(path)
