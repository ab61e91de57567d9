"""The memory request heads in progress may hold, server-wide (``graceserve.http.headbudget``).

Why these exist: 300 clients each sending a maximal head and stalling before its
blank line took a handler target from 25 MiB to 1.9 GiB (and a WSGI app to 284
MiB): every head held all its lines until the idle timeout.  Now each head
holds a small allowance for free and the rest is charged to one budget per
server; a head that finds the budget spent is answered 503 with
``Connection: close``, logged once per episode, and ordinary heads are never
affected.  (The RSS figures are ``python bench/abuse.py --only heads``.)

The accounting is tested without I/O; the end-to-end tests hold heads open
with real clients, for a handler target and a WSGI app, plain and TLS, and
synchronise on the budget's own counter (polled with a deadline).
"""

from __future__ import annotations

import http.server
import io
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from graceserve import GracefulHTTPServer
from graceserve.http import parse as httpparse
from graceserve.http.headbudget import HeadBudget
from testsupport.front import KINDS, Echo, connect, read_response, read_to_end, serving
from testsupport.tlsapp import Pki, make_pki
from testsupport.waiting import wait_until

KIB = 1024


# -- the accounting --------------------------------------------------------------


def test_a_head_within_its_allowance_draws_nothing() -> None:
    budget = HeadBudget(total=10 * KIB, allowance=4 * KIB)
    meter = budget.meter()
    for _ in range(3):
        meter.line(b"X: " + b"a" * 1000 + b"\r\n")
    assert budget.used == 0
    meter.line(b"\r\n")
    assert budget.used == 0


def test_what_a_head_holds_beyond_its_allowance_is_charged_until_its_request_is_done() -> None:
    budget = HeadBudget(total=10 * KIB, allowance=4 * KIB)
    meter = budget.meter()
    line = b"X: " + b"a" * (KIB - 5) + b"\r\n"  # 1 KiB
    for _ in range(6):
        meter.line(line)
    meter.line(b"\r\n")  # the head is complete; its request (and its memory) goes on
    assert budget.used == meter.charged == 2 * KIB + 2
    meter.release()  # the request is done
    assert budget.used == meter.charged == 0
    for _ in range(5):  # the next head of the connection starts from nothing
        meter.line(line)
    assert budget.used == KIB
    meter.release()  # the connection ended mid-head
    meter.release()  # idempotent
    assert budget.used == 0


def test_a_head_that_finds_the_budget_spent_is_refused_with_503_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="graceserve")
    budget = HeadBudget(total=4 * KIB, allowance=KIB)
    hog, refused, other = budget.meter(), budget.meter(), budget.meter()
    hog.line(b"a" * 5 * KIB)  # 4 KiB beyond its allowance: all of the budget
    assert budget.used == 4 * KIB
    with pytest.raises(httpparse.RequestError) as info:
        refused.line(b"b" * 2 * KIB)
    assert info.value.status == 503
    with pytest.raises(httpparse.RequestError):
        other.line(b"c" * 2 * KIB)
    refused.release()
    other.release()
    assert budget.used == 4 * KIB  # a refused line charged nothing
    assert budget.refused == 2
    assert caplog.text.count("hold the whole head budget") == 1  # one line per episode
    hog.release()
    assert budget.used == 0
    with pytest.raises(httpparse.RequestError):  # a new episode, a new line
        budget.meter().line(b"d" * 6 * KIB)
    assert caplog.text.count("hold the whole head budget") == 2


def test_read_fields_reports_each_line_it_reads_one_at_a_time() -> None:
    head = b"Host: a\r\nX-One: 1\r\n\r\n"
    seen: list[bytes] = []
    fields = httpparse.read_fields(io.BytesIO(head).readline, on_line=seen.append)
    assert fields == [("Host", "a"), ("X-One", "1")]
    assert seen == [b"Host: a\r\n", b"X-One: 1\r\n", b"\r\n"]


def test_read_fields_reports_nothing_for_a_head_already_whole_in_the_buffer() -> None:
    # The busy path: the block is taken at once and holds no memory beyond the buffer.
    seen: list[bytes] = []
    rfile = io.BufferedReader(io.BytesIO(b"Host: a\r\nX-One: 1\r\n\r\n"))
    fields = httpparse.read_fields(rfile.readline, on_line=seen.append)
    assert fields == [("Host", "a"), ("X-One", "1")]
    assert seen == []


# -- end to end ---------------------------------------------------------------------

BUDGET = 200_000
BIG_LINES = 12  # of 8,000 bytes: 96 kB per head, 80 kB of it beyond the allowance
ALLOWANCE = 16 * KIB


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cert(pki: Pki) -> tuple[Path, Path]:
    return pki.issue("server", "localhost")


def big_head(complete: bool) -> bytes:
    lines = [b"GET /big HTTP/1.1\r\n", b"Host: test\r\n"]
    for n in range(BIG_LINES):
        name = b"X-Big-%02d: " % n
        lines.append(name + b"a" * (8000 - len(name)) + b"\r\n")
    return b"".join(lines) + (b"\r\n" if complete else b"")


def used(server: GracefulHTTPServer) -> int:
    heads = server.heads
    return 0 if heads is None else heads.used


def charged(server: GracefulHTTPServer, at_least: int) -> Callable[[], bool]:
    return lambda: used(server) >= at_least


@pytest.fixture(params=[False, True], ids=["plain", "tls"])
def tls(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.mark.parametrize("kind", KINDS)
def test_heads_over_the_budget_get_503_and_ordinary_ones_are_served(
    kind: str, tls: bool, pki: Pki, cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="graceserve")
    context = pki.client_context() if tls else None
    attributes: dict[str, Any] = {
        "head_budget": BUDGET,
        "head_allowance": ALLOWANCE,
        "idle_timeout": 30.0,
    }
    with serving(kind, cert if tls else None, **attributes) as server:
        stalled: list[socket.socket] = []
        try:
            for n in (1, 2):  # two heads stall before their blank line: 160 kB charged
                sock = connect(server, context)
                stalled.append(sock)
                sock.sendall(big_head(complete=False))
                held = n * (BIG_LINES * 8000 - ALLOWANCE)
                wait_until(charged(server, held), 10.0, f"{n} heads charged")

            for _ in range(2):  # a third big head cannot be held: 503, and the connection closes
                with connect(server, context) as sock:
                    sock.sendall(big_head(complete=True))
                    status, headers, _body = read_response(sock)
                    assert status == 503
                    assert headers.get("connection") == "close"
                    assert read_to_end(sock) == (b"", "eof")

            with connect(server, context) as sock:  # an ordinary head is not affected
                sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                assert read_response(sock)[:1] == (200,)
        finally:
            for sock in stalled:
                sock.close()
        wait_until(lambda: used(server) == 0, 10.0, "the stalled heads' charge to be returned")

        with connect(server, context) as sock:  # the budget is back: big heads are served
            sock.sendall(big_head(complete=True))
            assert read_response(sock)[0] == 200
    assert caplog.text.count("hold the whole head budget") == 1
    assert "Traceback" not in caplog.text


class Keeper(Echo):
    """Echo that keeps a reference to each of its handler objects (to look at later)."""

    seen: ClassVar[list[http.server.BaseHTTPRequestHandler]] = []

    def do_POST(self) -> None:
        self.seen.append(self)
        super().do_POST()


@pytest.mark.parametrize("kind", KINDS)
def test_a_long_head_is_charged_while_its_request_runs_and_given_back_after(kind: str) -> None:
    # Its fields are in memory until the request is done (a body may take its time):
    # charged until then; once answered, the idle connection holds nothing.
    over = BIG_LINES * 8000 - ALLOWANCE
    head = big_head(complete=False) + b"Content-Length: 100\r\n\r\n"
    seen: list[http.server.BaseHTTPRequestHandler] = []
    target = type("K", (Keeper,), {"seen": seen}) if kind == "handler" else None
    attributes: dict[str, Any] = {"head_budget": BUDGET, "head_allowance": ALLOWANCE}
    with serving(kind, None, target, **attributes) as server, connect(server) as sock:
        sock.sendall(head.replace(b"GET /big", b"POST /big") + b"b" * 10)
        wait_until(charged(server, over), 10.0, "the head to be charged")
        assert used(server) >= over  # the body is still arriving: the head is held
        sock.sendall(b"b" * 90)
        assert read_response(sock)[::2] == (200, b"100")
        wait_until(lambda: used(server) == 0, 10.0, "the charge to be given back")
        assert server.active_connections == 1  # kept alive, idle, and holding nothing
        if target is not None:
            (handler,) = seen
            assert "X-Big-00" not in handler.headers  # a handler drops what it held


def test_without_a_budget_nothing_is_metered() -> None:
    with serving("wsgi", head_budget=None) as server:
        with connect(server) as sock:
            sock.sendall(big_head(complete=True))
            assert read_response(sock)[0] == 200
        assert server.heads is None
