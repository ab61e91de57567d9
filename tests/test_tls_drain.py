"""The drain and the graceful restart over HTTPS, under wrk's keep-alive load.

What is proved: SIGTERM under ``wrk -c50`` over https breaks no connection
(in-flight requests finish, idle keep-alive connections get ``Connection:
close`` or a ``close_notify`` and FIN, exit code 0); SIGHUP under the same load
serves the new certificate and key from disk with zero failed requests, and a
broken new certificate is reported while the old process keeps serving.

wrk counts a refused connect as an error: after SIGTERM the listener is closed
on purpose, so connect errors are expected there (and only there); broken
connections are read, write and timeout errors and non-2xx answers.
Synchronisation: the readiness and restart lines, the established
connections in /proc/net/tcp, wrk's own exit.  Nothing sleeps to synchronise.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from testsupport.process import ServerProcess
from testsupport.procfs import ESTABLISHED, tcp_sockets
from testsupport.tlsapp import APP, Pki, https_get, make_pki
from testsupport.waiting import wait_until

# Seconds of wrk load through each stop or reload.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]

StartServer = Callable[..., ServerProcess]
WRK_CONNECTIONS = 50


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def start_wrk(port: int, seconds: int) -> subprocess.Popen[str]:
    command = ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", f"https://127.0.0.1:{port}/"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_errors(output: str) -> dict[str, int]:
    """Socket errors and non-2xx answers wrk reported (all 0 when it printed none)."""
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors.update(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors["non2xx"] = int(m[1])
    return errors


def requests_done(output: str) -> int:
    match = re.search(r"(\d+) requests in", output)
    return int(match[1]) if match else 0


def established_to(port: int) -> int:
    return sum(1 for row in tcp_sockets(state=ESTABLISHED) if row.local_port == port)


def wait_for_load(port: int) -> None:
    """Until wrk's connections are all up (each counted once, on the server side)."""
    wait_until(lambda: established_to(port) >= WRK_CONNECTIONS, timeout=20, what="wrk connected")


def finish(wrk: subprocess.Popen[str]) -> str:
    try:
        output, _ = wrk.communicate(timeout=60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
    return output


@pytest.mark.parametrize("target", ["demo", "wsgi"])
def test_sigterm_under_https_load_breaks_nothing(
    start_server: StartServer, pki: Pki, tmp_path: Path, target: str
) -> None:
    cert, key = pki.issue(f"server-{target}", "graceserve")
    (tmp_path / "app.py").write_text(APP)
    args = ["--bind", "127.0.0.1:0", "--certfile", str(cert), "--keyfile", str(key)]
    server = start_server((["app:app"] if target == "wsgi" else []) + args, cwd=tmp_path)
    _host, port = server.wait_ready()
    wrk = start_wrk(port, 3)
    try:
        wait_for_load(port)
    finally:
        server.send(signal.SIGTERM)
    assert server.wait_exit() == 0, server.output
    output = finish(wrk)
    errors = wrk_errors(output)
    assert requests_done(output) > 0, output
    assert {k: v for k, v in errors.items() if k != "connect"} == {
        "read": 0, "write": 0, "timeout": 0, "non2xx": 0,
    }, output  # fmt: skip
    assert re.search(r"stopped: \d+ served during the drain, 0 cut", server.output)


def test_sighup_rotates_the_certificate_under_load(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    one, two = pki.issue("one", "cert-one"), pki.issue("two", "cert-two")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(one[0], cert)
    shutil.copy(one[1], key)
    server = start_server(["--bind", "127.0.0.1:0", "--certfile", str(cert), "--keyfile", str(key)])
    address = server.wait_ready()
    old = server.proc.pid
    context = pki.client_context()
    assert https_get(address, "/", context)[2] == "cert-one"
    wrk = start_wrk(address[1], 4)
    try:
        wait_for_load(address[1])
        # New pair on disk, then HUP: the successor reads it.
        shutil.copy(two[0], cert)
        shutil.copy(two[1], key)
        server.send(signal.SIGHUP)
        # The main process stays (as the supervisor); a fresh worker reads the new pair.
        server.wait_for_line(rf"graceserve\[{old}\] INFO HUP: generation 2 is ready")
        assert https_get(address, "/", context)[2] == "cert-two"
        server.wait_for_line(rf"graceserve\[{old}\] INFO this process's drain: .* 0 cut")
    finally:
        output = finish(wrk)
    assert requests_done(output) > 0, output
    assert wrk_errors(output) == {
        "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0,
    }, output  # fmt: skip
    # A broken new certificate: the new worker cannot start (exit 3), the supervisor
    # says so and the worker it has keeps serving the pair it read.
    cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    server.send(signal.SIGHUP)
    server.wait_for_line(
        rf"graceserve\[\d+\] ERROR cannot start: --certfile {re.escape(str(cert))}"
    )
    server.wait_for_line(rf"graceserve\[{old}\] ERROR HUP: reload failed: .* keeps serving")
    assert https_get(address, "/", context)[2] == "cert-two"
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "Traceback" not in server.output, server.output
