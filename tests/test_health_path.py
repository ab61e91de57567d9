"""``--health-path``: graceserve answers a health check itself, for any app.

Real servers (``python -m graceserve``) of both kinds, a handler class and a WSGI
app, neither of which has the path: 200 ``ok`` while serving, 503 ``stopping``
from the moment a stop begins (``--drain-delay``'s lame duck, while the app
still serves), HEAD without a body, the query ignored, other methods and paths
left to the app, the connection kept alive, nothing in the access log.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys

import pytest

from testsupport.process import REPO, ServerProcess, child_env
from testsupport.waiting import wait_until

TARGETS = {"handler": "examples.hello_http:Handler", "wsgi": "examples.wsgi_app:app"}
PATH = "/livez"  # neither example has it: without the flag they answer it their way
TIMEOUT = 10.0


def start(kind: str, *args: str) -> tuple[ServerProcess, tuple[str, int]]:
    server = ServerProcess(["--bind", "127.0.0.1:0", *args, TARGETS[kind]], cwd=REPO)
    return server, server.wait_ready()


def ask(
    conn: http.client.HTTPConnection, method: str, path: str
) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn.request(method, path)
    response = conn.getresponse()
    return response.status, response.read(), response


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_the_path_is_answered_for_any_app_and_the_rest_is_the_apps(kind: str, workers: str) -> None:
    server, address = start(kind, "--health-path", PATH, "--access-log", "-", "--workers", workers)
    try:
        conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
        status, body, response = ask(conn, "GET", PATH)
        assert (status, body) == (200, b"ok\n")
        assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
        assert response.getheader("Cache-Control") == "no-store"
        status, body, response = ask(conn, "HEAD", PATH)  # the same connection: kept alive
        assert (status, body, response.getheader("Content-Length")) == (200, b"", "3")
        assert ask(conn, "GET", PATH + "?probe=1")[:2] == (200, b"ok\n")
        assert ask(conn, "GET", "/")[0] == 200  # the app's own paths are the app's
        assert ask(conn, "GET", PATH + "/more")[1] != b"ok\n"  # the app's answer
        assert ask(conn, "POST", PATH)[1] != b"ok\n"  # only GET and HEAD are ours
        conn.close()
        wait_until(lambda: '"GET / HTTP/1.1" 200' in server.output, TIMEOUT, "the app's line")
        assert f"{PATH} " not in server.output.replace(f"POST {PATH} ", "")  # ours: unlogged
    finally:
        server.stop()


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_without_the_flag_the_path_is_the_apps(kind: str) -> None:
    server, address = start(kind)
    try:
        conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
        assert ask(conn, "GET", PATH)[1] != b"ok\n"
        conn.close()
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_from_the_moment_a_stop_begins_it_answers_503_while_the_app_still_serves(
    kind: str,
) -> None:
    server, address = start(kind, "--health-path", PATH, "--drain-delay", "5", "--grace", "10")
    try:
        conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
        assert ask(conn, "GET", PATH)[:2] == (200, b"ok\n")
        server.send(signal.SIGTERM)
        server.wait_for_line("lame duck|drain-delay|draining in", timeout=TIMEOUT)
        fresh = http.client.HTTPConnection(*address, timeout=TIMEOUT)
        status, body, _ = ask(fresh, "GET", PATH)
        assert (status, body) == (503, b"stopping\n")
        assert ask(fresh, "GET", "/")[0] == 200  # the lame duck still serves the app
        fresh.close()
        conn.close()
        assert server.wait_exit(30) == 0
    finally:
        server.stop()


@pytest.mark.parametrize("value", ["healthz", "/a b", "/x?y", "/%41"])
def test_a_bad_path_is_one_line_and_exit_2(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "graceserve", "--health-path", value],
        env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "--health-path" in done.stderr


def test_a_tcp_target_is_refused_with_exit_3() -> None:
    server = ServerProcess(
        ["--bind", "127.0.0.1:0", "--health-path", PATH, "examples.echo:Handler"]
    )
    try:
        assert server.wait_exit(30) == 3
        assert "--health-path are for HTTP handlers and WSGI apps" in server.output
    finally:
        server.stop()
