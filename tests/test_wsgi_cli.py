"""``python -m graceserve module:app``: WSGI targets through the real command line.

A WSGI app, a factory call, a bad target (one line, exit 3), the WSGI flags
and their environment variables, and SIGTERM with a request in flight.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from graceserve.process.readiness import READY_PATTERN as READY
from testsupport import keepalive
from testsupport.process import REPO, ServerProcess
from testsupport.wsgiapps import Client, get

StartServer = Callable[..., ServerProcess]

APP = """
import threading, time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(environ["QUERY_STRING"] or "1"))
    body = ("%s|%s|%s" % (environ["SCRIPT_NAME"], environ["PATH_INFO"],
                          environ["graceserve.stopping"]())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]

def create_app(name="the factory", excited=False):
    def factory_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("from " + name + ("!" if excited else "")).encode()]
    return factory_app

def hello(environ, start_response):
    body = b"hello from graceserve\\n"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]

import functools, http.server
Files = functools.partial(http.server.SimpleHTTPRequestHandler, directory=".")

def needs_arguments(x, y, z):
    return []

def failing_factory():
    raise RuntimeError("factory blew up")
"""


def start(start_server: StartServer, tmp_path: Path, *args: str, **env: str) -> ServerProcess:
    (tmp_path / "wsgimod.py").write_text(textwrap.dedent(APP))
    server = start_server([*args, "--bind", "127.0.0.1:0"], cwd=tmp_path, env=env)
    server.wait_ready()
    return server


def test_wsgi_app_is_served_and_stops_cleanly(start_server: StartServer, tmp_path: Path) -> None:
    server = start(start_server, tmp_path, "wsgimod:app")
    assert server.address is not None
    reply = get(server.address, "/x")
    assert (reply.status, reply.body) == (200, b"|/x|False")
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "Traceback" not in server.output


@pytest.mark.slow
def test_log_level_debug_shows_access_lines(start_server: StartServer, tmp_path: Path) -> None:
    server = start(start_server, tmp_path, "wsgimod:app", "--log-level", "debug")
    assert server.address is not None
    assert get(server.address, "/seen?q=1").status == 200
    server.wait_for_line(r'127\.0\.0\.1:\d+ "GET /seen\?q=1 HTTP/1\.1" 200 \d+')
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


@pytest.mark.slow
def test_partial_of_a_handler_is_served_as_a_handler(
    start_server: StartServer, tmp_path: Path
) -> None:
    (tmp_path / "served.txt").write_text("static file\n")
    server = start(start_server, tmp_path, "wsgimod:Files")
    assert server.address is not None
    reply = get(server.address, "/served.txt")
    assert (reply.status, reply.body) == (200, b"static file\n")
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("wsgimod:create_app()", b"from the factory"),
        ("wsgimod:create_app('prod', excited=True)", b"from prod!"),  # literals, as gunicorn
    ],
)
def test_factory_call_target(
    start_server: StartServer, tmp_path: Path, target: str, body: bytes
) -> None:
    server = start(start_server, tmp_path, target)
    assert server.address is not None
    assert get(server.address).body == body
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


@pytest.mark.slow
def test_wsgi_flags_and_their_environment_variables(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start(
        start_server, tmp_path, "wsgimod:app", "--root-path", "/mount",
        GRACESERVE_LIMIT_REQUEST_LINE="64",
    )  # fmt: skip
    assert server.address is not None
    assert get(server.address, "/mount/p").body == b"/mount|/p|False"
    assert get(server.address, "/" + "a" * 100).status == 414
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


@pytest.mark.slow
def test_sigterm_with_a_request_in_flight_finishes_it_with_close(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start(start_server, tmp_path, "wsgimod:app")
    assert server.address is not None
    with Client(server.address) as client:
        client.request("GET", "/slow?1.0")  # in flight, or in the backlog: served either way
        server.send(signal.SIGTERM)
        server.wait_for_line("draining")
        reply = client.read_response()
        assert reply.status == 200
        assert reply.body == b"|/slow|True"
        assert reply.header("Connection") == "close"
    assert server.wait_exit() == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("wsgimod:needs_arguments", r"nor a WSGI application"),
        ("wsgimod:failing_factory()", r"calling wsgimod.failing_factory\(\) failed: RuntimeError"),
        ("wsgimod:nothing()", r"has no attribute 'nothing'"),
    ],
)
def test_bad_wsgi_target_says_one_line_and_exits_3(  # and a failing factory's frames
    start_server: StartServer, tmp_path: Path, target: str, message: str
) -> None:
    (tmp_path / "wsgimod.py").write_text(textwrap.dedent(APP))
    server = start_server([target, "--bind", "127.0.0.1:0"], cwd=tmp_path)
    assert server.wait_exit() == 3
    lines = [line for line in server.output.splitlines() if line.strip()]
    assert re.search(message, lines[0]), lines[0]
    if "failed" in message:  # the factory raised: its own frames follow the line
        assert lines[1] == "Traceback (most recent call last):", server.output
        assert "wsgimod.py" in server.output
        assert "graceserve/" not in server.output
    else:
        assert len(lines) == 1, server.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--root-path", "app"], r"--root-path: 'app' must start with /"),
        (["--max-body-size", "-1"], r"--max-body-size: '-1' must be 0"),
        (["--limit-request-fields", "0"], r"--limit-request-fields: '0' must be 1 or more"),
        (["--limit-request-line", "9" * 20], r"--limit-request-line: '9+' is more than 1048576"),
        (["--limit-request-field-size", "2000000"], r"field-size: '2000000' is more than"),
        (["--limit-request-fields", "10001"], r"--limit-request-fields: '10001' is more than"),
        (["wsgimod:create_app(name)"], r"a factory call takes literal arguments only"),
    ],
)
def test_bad_wsgi_flag_is_a_usage_error(
    start_server: StartServer, tmp_path: Path, args: list[str], message: str
) -> None:
    server = start_server(["--bind", "127.0.0.1:0", *args], cwd=tmp_path)
    assert server.wait_exit() == 2
    assert re.search(message, server.output), server.output


@pytest.mark.slow
def test_library_serve_takes_a_wsgi_app(tmp_path: Path) -> None:
    (tmp_path / "wsgimod.py").write_text(textwrap.dedent(APP))
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from graceserve import serve\n"
        "from wsgimod import app\n"
        "sys.exit(serve(app, ('127.0.0.1', 0), grace=5, root_path='/lib'))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        match = None
        for _ in range(50):  # bounded: start-up logs a handful of lines
            line = proc.stderr.readline().decode()
            match = READY.search(line)
            if match or not line:
                break
        assert match is not None, "no readiness line"
        address = (match["host"], int(match["port"]))
        assert get(address, "/lib/x").body == b"/lib|/x|False"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.slow
def test_keepalive_load_through_sigterm_breaks_no_request(
    start_server: StartServer, tmp_path: Path
) -> None:
    """As test_http_drain_e2e's, on a WSGI app: every request sent gets a complete
    response, a connection ends only after a response that said close, and the
    reconnect is refused; exit code 0."""
    server = start(start_server, tmp_path, "wsgimod:hello")
    address = server.address
    deadline = time.monotonic() + keepalive.LOAD_DEADLINE
    logs = [keepalive.ClientLog() for _ in range(keepalive.LOAD_THREADS)]
    threads = [
        threading.Thread(
            target=keepalive.keepalive_client, args=(address, log, deadline), name=f"test-load-{n}"
        )
        for n, log in enumerate(logs)
    ]
    for thread in threads:
        thread.start()
    try:
        for log in logs:
            assert log.warm.wait(keepalive.LOAD_DEADLINE), f"a client never got warm: {log}"
        server.send(signal.SIGTERM)
    finally:
        for thread in threads:
            thread.join(keepalive.LOAD_DEADLINE + keepalive.SOCKET_TIMEOUT)
    code = server.wait_exit()
    summary = "\n".join(f"client {n}: {log}" for n, log in enumerate(logs))
    assert not [log for log in logs if log.errors], f"broken requests:\n{summary}"
    assert all(log.refused_after_close for log in logs), f"a client did not end cleanly:\n{summary}"
    assert all(log.close_responses == log.connects for log in logs), summary
    assert code == 0, server.output
