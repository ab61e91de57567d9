"""Abuse: slow clients, floods, garbage, exhaustion, crashes.

Why these exist: a server that drains politely is no use if one hostile or broken
client can starve it first.  Every test here is one way of leaning on the server
(holding slots, trickling bytes, sending junk, eating its file descriptors,
raising in a handler, opening a thousand sockets, planting a symlink) followed by
the proof that it is still standing: it answers a normal request afterwards and
its stderr holds no traceback it did not mean to print.

How the waiting is done without sleeps: the kernel's accept queue of the
listener (``/proc/net/tcp``, the ``rx_queue`` column of a LISTEN socket) says
whether a client is held in the backlog or was accepted; the server's log lines
say when accept() failed or recovered; a ``select()`` on a client socket is both
the pause between trickled bytes and the detector of the server hanging up.  A
few assertions are about something *not* happening (a held client is not
served, a keep-alive client is not cut); they watch for it over a short bounded
window.

Most tests run the real CLI (``python -m graceserve``) because the flags are
what is under test; the resource-hygiene test runs the server in-process so it
can count this process's own threads and file descriptors.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from graceserve import GracefulHTTPServer
from graceserve.demo import DemoHandler
from graceserve.errors import EXIT_CANNOT_START, EXIT_OK
from testsupport.process import ServerProcess
from testsupport.procfs import accept_queue, cpu_seconds, status_field
from testsupport.rawhttp import get_request, http_get, read_response
from testsupport.waiting import wait_until

IO_TIMEOUT = 5.0  # seconds any single client read may block before we call it a hang
LOCALHOST = "127.0.0.1"
BIND_ANY_PORT = ["--bind", f"{LOCALHOST}:0"]
STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})[ \r]")

StartServer = Callable[..., ServerProcess]


# -- helpers -----------------------------------------------------------------


def read_to_close(sock: socket.socket, limit: int = 1 << 20) -> tuple[bytes, str]:
    """Everything the server sends until it closes: (bytes, "eof" or "reset").

    Fails the test if the server neither sends nor closes within IO_TIMEOUT.
    """
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"server hung: no close within {IO_TIMEOUT}s after {data[:80]!r}")
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
    pytest.fail(f"server sent more than {limit} bytes")


def exchange(address: tuple[str, int], payload: bytes, *, half_close: bool) -> tuple[bytes, str]:
    """Send ``payload`` (then FIN if ``half_close``) and read until the server closes."""
    with socket.create_connection(address, timeout=IO_TIMEOUT) as sock:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up on us mid-send: what it said so far is still readable
        return read_to_close(sock)


def assert_error_or_clean_close(data: bytes, end: str, payload: bytes) -> int | None:
    """A 4xx/5xx response with a real status line, or a clean close; the status."""
    if not data:
        assert end == "eof", f"reset without a response to {payload[:80]!r}"
        return None
    match = STATUS_LINE.match(data)
    assert match, f"no HTTP/1.x status line in answer to {payload[:80]!r}: {data[:120]!r}"
    status = int(match[1])
    first_line = data.split(b"\r\n", 1)[0]
    assert 400 <= status <= 599, f"{payload[:80]!r} got {first_line!r}"
    return status


def count_lines(server: ServerProcess, needle: str) -> int:
    """How many stderr lines so far contain ``needle``."""
    return server.output.count(needle)


def assert_no_traceback(server: ServerProcess) -> None:
    """Nothing on the server's stderr looks like a crash or a handler error."""
    output = server.output
    assert "Traceback" not in output, output
    assert " CRITICAL " not in output, output
    assert "exception while serving" not in output, output


def stop_cleanly(server: ServerProcess) -> None:
    """TERM, then exit code 0."""
    server.send(signal.SIGTERM)
    assert server.wait_exit() == EXIT_OK, server.output


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def readable_within(sock: socket.socket, seconds: float) -> bool:
    """Whether ``sock`` becomes readable (data, EOF or reset) within ``seconds``."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return bool(readable)


# -- --max-connections: held in the backlog, not refused, not reset ------------


@pytest.mark.slow
def test_max_connections_holds_clients_in_backlog_and_caps_threads(
    start_server: StartServer,
) -> None:
    cap = 2
    server = start_server([*BIND_ANY_PORT, "--max-connections", str(cap)])
    address = server.wait_ready()
    port = address[1]
    pid = server.proc.pid
    base_threads = status_field(pid, "Threads")
    peak = base_threads

    def sample() -> None:
        nonlocal peak
        peak = max(peak, status_field(pid, "Threads"))

    with contextlib.ExitStack() as stack:
        holders = [
            stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
            for _ in range(cap)
        ]
        wait_until(lambda: accept_queue(port) == 0, what="both holders to be accepted")

        # The third connect succeeds (kernel backlog) but nobody reads its request.
        third = stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
        third.sendall(get_request(close=True))
        wait_until(lambda: accept_queue(port) == 1, what="the third client in the backlog")
        assert not readable_within(third, 0.3), "third client answered or reset over the cap"

        waiting = [third]
        for _ in range(19):
            client = stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
            client.sendall(get_request(close=True))
            waiting.append(client)
        wait_until(lambda: accept_queue(port) == 20, what="20 clients in the backlog")
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            sample()
            assert not readable_within(third, 0.02)
        assert server.proc.poll() is None

        # One slot frees: the first client in the backlog is served.
        holders[0].close()
        assert read_response(third)[0] == 200
        sample()
        # The other slot frees: everyone else gets through, one slot at a time.
        holders[1].close()
        for client in waiting[1:]:
            assert read_response(client)[0] == 200
            sample()

    assert peak <= base_threads + cap + 2, f"{peak} threads (base {base_threads}, cap {cap})"
    assert_no_traceback(server)
    stop_cleanly(server)


# -- --idle-timeout: silent, slowloris, and well-behaved keep-alive --------------

IDLE = 1.0
IDLE_ARGS = [*BIND_ANY_PORT, "--idle-timeout", f"{IDLE:g}"]
REAP_SLACK = 2.5  # the reaper runs every 0.5 s at most; generous for a loaded machine


@pytest.mark.slow
def test_idle_timeout_closes_a_silent_client_and_frees_its_slot(
    start_server: StartServer,
) -> None:
    server = start_server([*IDLE_ARGS, "--max-connections", "1"])
    address = server.wait_ready()
    with (
        socket.create_connection(address, timeout=IO_TIMEOUT) as silent,
        socket.create_connection(address, timeout=IO_TIMEOUT) as queued,
    ):
        connected = time.monotonic()
        queued.sendall(get_request(close=True))
        wait_until(lambda: accept_queue(address[1]) == 1, what="second client queued")

        assert readable_within(silent, IDLE + REAP_SLACK), "silent client never closed"
        closed_after = time.monotonic() - connected
        assert silent.recv(1) == b"", "silent client got bytes instead of EOF"
        assert closed_after >= IDLE - 0.1, f"cut after {closed_after:.2f}s, before the timeout"

        # Its slot went to the client waiting in the backlog.
        assert read_response(queued)[0] == 200
    assert_no_traceback(server)
    stop_cleanly(server)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("head", "trickle"),
    [
        pytest.param(b"", b"GET /" + b"a" * 60, id="request-line"),
        pytest.param(get_request().removesuffix(b"\r\n"), b"X-Slow: " + b"a" * 60, id="headers"),
    ],
)
def test_idle_timeout_closes_a_slowloris_that_keeps_trickling(
    start_server: StartServer, head: bytes, trickle: bytes
) -> None:
    server = start_server(IDLE_ARGS)
    address = server.wait_ready()
    with socket.create_connection(address, timeout=IO_TIMEOUT) as slow:
        started = time.monotonic()
        slow.sendall(head)
        sent = 0
        for byte in trickle:  # one byte every 0.2 s, for at most 13 s
            try:
                slow.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            if readable_within(slow, 0.2):
                break
        else:
            pytest.fail(f"still connected after trickling {sent} bytes over {IDLE}s timeout")
        elapsed = time.monotonic() - started
        data, _end = read_to_close(slow)
    assert data == b"", f"a trickled, unfinished head was answered: {data[:80]!r}"
    assert IDLE - 0.1 <= elapsed <= IDLE + REAP_SLACK, f"cut after {elapsed:.2f}s"
    assert sent >= 3, "the client was cut before it had trickled anything"
    assert http_get(address)[0] == 200
    assert_no_traceback(server)
    stop_cleanly(server)


@pytest.mark.slow
def test_idle_timeout_spares_a_keep_alive_client_between_requests(
    start_server: StartServer,
) -> None:
    idle = 2.0  # the gaps stay far under it, even on a loaded machine
    server = start_server([*BIND_ANY_PORT, "--idle-timeout", f"{idle:g}"])
    address = server.wait_ready()
    gap = 0.3
    requests = 9  # 9 requests 0.3 s apart: the connection outlives the 2 s timeout
    with socket.create_connection(address, timeout=IO_TIMEOUT) as client:
        opened = time.monotonic()
        for number in range(requests):
            client.sendall(get_request())
            status, headers, _body = read_response(client)
            assert status == 200
            assert headers.get("connection", "").lower() != "close"
            if number < requests - 1:
                assert not readable_within(client, gap), f"cut while idle after request {number}"
        assert time.monotonic() - opened > idle
    assert_no_traceback(server)
    stop_cleanly(server)


# -- garbage: a real status line and 4xx/5xx, or a clean close; never a hang -----


@pytest.fixture(scope="module")
def garbage_server() -> Iterator[ServerProcess]:
    """One demo-app server for all the garbage (and the fuzzing's many examples)."""
    server = ServerProcess([*BIND_ANY_PORT, "--idle-timeout", "2"])  # nothing stalls for long
    try:
        server.wait_ready()
        yield server
        server.send(signal.SIGTERM)
        assert server.wait_exit() == EXIT_OK, server.output
    finally:
        server.stop()


def _headers(count: int) -> bytes:
    return b"".join(b"X-Header-%d: v\r\n" % n for n in range(count))


GARBAGE = [
    pytest.param(random.Random(1).randbytes(512), True, None, id="random-bytes"),
    pytest.param(random.Random(2).randbytes(4096), True, None, id="random-bytes-4k"),
    pytest.param(bytes(range(256)) * 4, True, None, id="binary-junk"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), True, None, id="tls"),
    pytest.param(b"GET / HTTP/1.1\r\n" + _headers(200) + b"\r\n", False, 431, id="200-headers"),
    pytest.param(
        b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", False, 431, id="100k-header"
    ),
    pytest.param(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", False, 414, id="100k-url"),
    pytest.param(b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n", False, 501, id="unknown-method"),
    pytest.param(b"get / HTTP/1.1\r\nHost: x\r\n\r\n", False, 501, id="lowercase-method"),
    # Strict request lines (issue 11): a method that is not a token, a control byte in the
    # target, an HTTP/1.1 request without Host: 400, where the stdlib answered 501/404.
    pytest.param(b"\xff\xfe\xfd / HTTP/1.1\r\n\r\n", False, 400, id="binary-method"),
    pytest.param(b"FROB / HTTP/1.1\r\n\r\n", False, 400, id="missing-host"),
    pytest.param(b"POST /\r\n\r\n", False, 400, id="http09-post"),
    pytest.param(b"GET / HTTP/9.9\r\n\r\n", False, 505, id="http-9.9"),
    pytest.param(b"GET / HTTP/2.0\r\n\r\n", False, 505, id="http-2.0"),
    pytest.param(b"GET / HTTP/0.9\r\n\r\n", False, None, id="http-0.9-with-version"),
    pytest.param(b"GET / HTTP/1.1.1\r\n\r\n", False, 400, id="http-1.1.1"),
    pytest.param(b"GET / HTTPS/1.1\r\n\r\n", False, 400, id="https-version"),
    pytest.param(b"GET / HTTP/1\r\n\r\n", False, 400, id="http-1"),
    pytest.param(b"GET / HTTP/1.1 extra\r\n\r\n", False, 400, id="four-words"),
    pytest.param(b"GET / HTTP/1.1\x00\r\n\r\n", False, 400, id="nul-in-version"),
    pytest.param(b"G\x00T / HTTP/1.1\r\n\r\n", False, 400, id="nul-in-method"),
    pytest.param(b"GET /\x00 HTTP/1.1\r\nConnection: close\r\n\r\n", False, 400, id="nul-in-path"),
    pytest.param(b"\x00\x00\x00\x00\r\n\r\n", False, 400, id="nul-line"),
    pytest.param(b"GET / HTTP/1.1\rHost: x\r\r\n\r\n", False, 400, id="cr-without-lf"),
    pytest.param(b"\r\n", True, None, id="empty-line"),
]


@pytest.mark.parametrize(("payload", "half_close", "expected"), GARBAGE)
def test_garbage_gets_an_error_or_a_clean_close(
    garbage_server: ServerProcess, payload: bytes, half_close: bool, expected: int | None
) -> None:
    address = garbage_server.address
    assert address is not None
    data, end = exchange(address, payload, half_close=half_close)
    status = assert_error_or_clean_close(data, end, payload)
    if expected is not None:
        assert status == expected, data[:120]
    assert http_get(address)[0] == 200
    assert_no_traceback(garbage_server)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"GET / HTTP/1.1", id="request-line-only"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: test\r\n", id="no-blank-line"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: test\r\n\r", id="blank-line-cut-after-cr"),
    ],
)
def test_a_head_cut_short_by_eof_is_not_dispatched(
    garbage_server: ServerProcess, payload: bytes
) -> None:
    """The client half-closes before the blank line that ends the head: the request is
    incomplete (RFC 9112 section 8) and must not be acted upon, only answered 400 or closed."""
    address = garbage_server.address
    assert address is not None
    data, end = exchange(address, payload, half_close=True)
    assert_error_or_clean_close(data, end, payload)
    assert http_get(address)[0] == 200
    assert_no_traceback(garbage_server)


@pytest.mark.parametrize("how", ["reset-while-idle", "reset-mid-head", "gone-before-answer"])
def test_a_client_that_goes_away_is_not_a_server_error(start_server: StartServer, how: str) -> None:
    """A reset or EPIPE from a client that left is the client's doing, not a handler
    failure: no ERROR line and no traceback, or any client can flood the log at will."""
    server = start_server([*BIND_ANY_PORT, "--max-connections", "1"])
    address = server.wait_ready()
    port = address[1]
    if how == "gone-before-answer":
        with socket.create_connection(address, timeout=IO_TIMEOUT):  # holds the one slot
            wait_until(lambda: accept_queue(port) == 0, what="the holder to be accepted")
            with socket.create_connection(address, timeout=IO_TIMEOUT) as quitter:
                quitter.sendall(get_request() * 20)  # pipelined: 40 writes to a closed peer
                wait_until(lambda: accept_queue(port) == 1, what="the quitter in the backlog")
            # The quitter has left; freeing the slot lets the server answer into the void.
    else:
        with socket.create_connection(address, timeout=IO_TIMEOUT) as client:
            wait_until(lambda: accept_queue(port) == 0, what="the client to be accepted")
            if how == "reset-mid-head":
                client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n")  # read before the reset
            reset(client)
    # One slot: this request is only accepted once the other connection has ended.
    assert http_get(address)[0] == 200
    stop_cleanly(server)  # reads stderr to the end
    assert "exception while serving" not in server.output, server.output
    assert_no_traceback(server)


_LINE_ENDS = st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\r\n", b"\n\r"])
_METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"FROB", b"get", b"", b"G\x00T"])
_TARGETS = st.sampled_from([b"/", b"/healthz", b"/nope", b"*", b"http://x/", b"", b"/\x00", b"//"])
_VERSIONS = st.sampled_from(
    [b"HTTP/1.0", b"HTTP/1.1", b"HTTP/9.9", b"HTTP/1.1.1", b"HTTP/", b"HTTP/0.9", b"http/1.1", b""]
)
_HEADER_LINES = st.sampled_from(
    [
        b"Host: x",
        b"Connection: close",
        b"Connection: keep-alive",
        b"X-Nul: \x00",
        b"no colon here",
        b" folded: line",
        b"Content-Length: 5",
        b"Content-Length: -1",
        b"Content-Length: abc",
        b"Transfer-Encoding: chunked",
        b": empty-name",
    ]
)


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """Request-line grammar fragments, random bytes in any slot, and headers."""
    method = draw(_METHODS | st.binary(max_size=8))
    target = draw(_TARGETS | st.binary(max_size=40))
    version = draw(_VERSIONS | st.binary(max_size=12))
    separator = draw(st.sampled_from([b" ", b"  ", b"\t", b"", b"\x00"]))
    end = draw(_LINE_ENDS)
    headers = draw(st.lists(_HEADER_LINES | st.binary(max_size=30), max_size=4))
    line = separator.join(part for part in (method, target, version) if part or draw(st.booleans()))
    tail = draw(st.sampled_from([b"\r\n", b"\n", b""]))
    return line + end + b"".join(header + end for header in headers) + tail


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples every run: a failure here is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payload=request_heads() | st.binary(min_size=1, max_size=600))
@example(payload=b"GET / HTTP/0.9\r\n\r\n")  # found by this test: answered with no status line
def test_fuzzed_requests_never_hang_or_crash(garbage_server: ServerProcess, payload: bytes) -> None:
    assume(b"slow" not in payload.lower())  # /slow?seconds=N is allowed to take N seconds
    address = garbage_server.address
    assert address is not None
    with _hypothesis_can_report_failures():
        data, end = exchange(address, payload, half_close=True)
        if data:
            answer = data[:80]
            assert STATUS_LINE.match(data), f"{payload!r} answered with no status line: {answer!r}"
        else:
            assert end == "eof", f"{payload!r}: reset without any response"
        assert garbage_server.proc.poll() is None


@contextlib.contextmanager
def _hypothesis_can_report_failures() -> Iterator[None]:
    """On a failure, pre-import hypothesis' patch writer with DeprecationWarning silenced.

    Hypothesis' pytest plugin imports it (and libcst) to report a failing example, and
    libcst's import warns here (mypy_extensions.TypedDict); with filterwarnings=error
    that becomes an INTERNALERROR which ends the session and hides the example.
    """
    try:
        yield
    except BaseException:
        with warnings.catch_warnings(), contextlib.suppress(ImportError):
            warnings.simplefilter("ignore", DeprecationWarning)
            import hypothesis.extra._patching  # noqa: F401
        raise


def test_garbage_server_still_serves_and_never_crashed(garbage_server: ServerProcess) -> None:
    address = garbage_server.address
    assert address is not None
    assert http_get(address, "/healthz") == (200, b"ok\n")
    assert_no_traceback(garbage_server)
    assert " ERROR " not in garbage_server.output, garbage_server.output


# -- out of file descriptors ------------------------------------------------------

FD_LIMIT = 64
ACCEPT_FAILED = "accept() failed"
ACCEPTING_AGAIN = "accepting connections again"


@pytest.mark.slow
def test_out_of_file_descriptors_backs_off_logs_once_and_recovers(
    start_server: StartServer,
) -> None:
    server = start_server(BIND_ANY_PORT, prefix=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}"])
    server.wait_ready()
    _exhaust_and_recover(server, episode=1, window=1.0)
    _exhaust_and_recover(server, episode=2, window=0.3)  # the log line is re-armed
    assert_no_traceback(server)
    stop_cleanly(server)


def _exhaust_and_recover(server: ServerProcess, episode: int, window: float) -> None:
    """Open more connections than the server has descriptors; check it idles, then recovers."""
    address = server.address
    assert address is not None
    pid = server.proc.pid
    with contextlib.ExitStack() as probe_stack:
        with contextlib.ExitStack() as stack:
            for _ in range(FD_LIMIT + 16):
                stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
            wait_until(
                lambda: count_lines(server, ACCEPT_FAILED) == episode,
                what=f"accept() failure #{episode} in the log",
            )
            # Exhausted: a newcomer waits, and the server must not spin meanwhile.
            probe = probe_stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
            probe.sendall(get_request(close=True))
            cpu_before, started = cpu_seconds(pid), time.monotonic()
            assert not readable_within(probe, window), "served while out of descriptors?"
            burnt = cpu_seconds(pid) - cpu_before
            elapsed = time.monotonic() - started
            assert burnt < 0.2 * elapsed, f"busy loop: {burnt:.2f} CPU s in {elapsed:.2f} s"
            assert server.proc.poll() is None, server.output
            assert count_lines(server, ACCEPT_FAILED) == episode, "logged more than once"
        # Everyone else hung up: descriptors come back and the waiting client is served.
        assert read_response(probe)[0] == 200
    assert http_get(address)[0] == 200
    wait_until(lambda: count_lines(server, ACCEPTING_AGAIN) == episode, what="recovery line")


# -- a handler that raises --------------------------------------------------------

BOOM_APP = """\
import http.server


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/boom"):
            raise RuntimeError("boom at " + self.path)
        body = b"fine\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass
"""


def test_handler_exception_is_logged_once_per_request_and_drain_stays_clean(
    start_server: StartServer, tmp_path: Path
) -> None:
    (tmp_path / "boomapp.py").write_text(BOOM_APP)
    server = start_server(["boomapp:Handler", *BIND_ANY_PORT], cwd=tmp_path)
    address = server.wait_ready()
    failures = 3
    for number in range(failures):
        with socket.create_connection(address, timeout=IO_TIMEOUT) as sock:
            if number == 0:  # a keep-alive connection that worked, then a request that fails
                sock.sendall(get_request("/ok"))
                assert read_response(sock)[0] == 200
            sock.sendall(get_request(f"/boom/{number}"))
            data, end = read_to_close(sock)
            assert (data, end) == (b"", "eof"), "the connection should just be closed"
    wait_until(
        lambda: count_lines(server, "exception while serving") == failures,
        what=f"{failures} error lines",
    )
    assert http_get(address, "/ok") == (200, b"fine\n")
    output = server.output
    assert output.count("Traceback (most recent call last)") == failures, output
    for number in range(failures):
        assert output.count(f"RuntimeError: boom at /boom/{number}") == 1, output
    server.send(signal.SIGTERM)
    assert server.wait_exit() == EXIT_OK, server.output
    server.wait_for_line(r"draining 0 connections")
    server.wait_for_line(r"stopped: .* 0 cut")


# -- resource hygiene: a thousand connections come and go -------------------------

HYGIENE_CLIENTS = 1000


@pytest.fixture
def enough_descriptors() -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE for 2,000+ sockets in this process, within the hard limit."""
    want = 2 * HYGIENE_CLIENTS + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class _HygieneServer(GracefulHTTPServer):
    idle_timeout = 60.0
    max_connections = 2 * HYGIENE_CLIENTS


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("graceserve-conn-")]


@pytest.mark.slow
@pytest.mark.usefixtures("enough_descriptors")
def test_thousand_connections_leave_no_threads_fds_or_memory_behind() -> None:
    server = _HygieneServer((LOCALHOST, 0), DemoHandler)
    accept_thread = threading.Thread(target=server.serve_forever, name="hygiene-accept")
    accept_thread.start()
    try:
        address = (LOCALHOST, int(server.server_address[1]))
        assert http_get(address)[0] == 200  # warm up: imports, caches, first thread
        wait_until(lambda: not _handler_threads(), what="the warm-up handler thread to end")
        base = (threading.active_count(), _fd_count(), status_field("self", "VmRSS"))

        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(socket.create_connection(address, timeout=IO_TIMEOUT))
                for _ in range(HYGIENE_CLIENTS)
            ]
            for client in clients:
                client.sendall(get_request())
            for client in clients:
                assert read_response(client)[0] == 200
            wait_until(lambda: server.active_connections == HYGIENE_CLIENTS, timeout=20)
            peak = (threading.active_count(), _fd_count(), status_field("self", "VmRSS"))
        wait_until(lambda: server.active_connections == 0, what="every connection to end")
        wait_until(lambda: not _handler_threads(), what="handler threads to end")
        assert threading.active_count() == base[0]
        wait_until(lambda: _fd_count() == base[1], what="descriptors back to baseline")
        after = (threading.active_count(), _fd_count(), status_field("self", "VmRSS"))
    finally:
        server.shutdown()
        server.server_close()
        accept_thread.join(timeout=10)

    mib = [kib / 1024 for kib in (base[2], peak[2], after[2])]
    print(
        f"\nhygiene: threads {base[0]} -> peak {peak[0]} -> {after[0]}; "
        f"fds {base[1]} -> peak {peak[1]} -> {after[1]}; "
        f"RSS {mib[0]:.1f} MiB -> peak {mib[1]:.1f} MiB -> {mib[2]:.1f} MiB"
    )
    assert peak[0] >= base[0] + HYGIENE_CLIENTS  # they really were concurrent
    assert peak[1] >= base[1] + 2 * HYGIENE_CLIENTS
    assert after[2] - base[2] < 64 * 1024, f"RSS grew by {(after[2] - base[2]) / 1024:.1f} MiB"


# -- pidfile safety ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_pidfile_that_is_a_symlink_is_refused(
    start_server: StartServer, tmp_path: Path, dangling: bool
) -> None:
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_text("precious\n")
    link = tmp_path / "graceserve.pid"
    link.symlink_to(victim)
    server = start_server([*BIND_ANY_PORT, "--pidfile", str(link)])
    assert server.wait_exit() == EXIT_CANNOT_START, server.output
    assert "symbolic link" in server.output
    assert "listening on" not in server.output
    assert link.is_symlink()
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_text() == "precious\n"


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to give a directory to another uid"
)
NOBODY = 65534


@needs_root
def test_pidfile_in_a_foreign_world_writable_directory_is_refused(
    start_server: StartServer, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, NOBODY, NOBODY)
    shared.chmod(0o777)
    pidfile = shared / "graceserve.pid"
    server = start_server([*BIND_ANY_PORT, "--pidfile", str(pidfile)])
    assert server.wait_exit() == EXIT_CANNOT_START, server.output
    assert "anyone may write" in server.output
    assert not pidfile.exists()


@needs_root
def test_pidfile_in_a_sticky_world_writable_directory_is_accepted(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The control for the refusal above: /tmp-like (sticky) directories are fine."""
    shared = tmp_path / "sticky"
    shared.mkdir()
    os.chown(shared, NOBODY, NOBODY)
    shared.chmod(0o1777)
    pidfile = shared / "graceserve.pid"
    server = start_server([*BIND_ANY_PORT, "--pidfile", str(pidfile)])
    server.wait_ready()
    assert pidfile.read_text() == f"{server.proc.pid}\n"
    stop_cleanly(server)
    assert not pidfile.exists()


# -- unix:PATH sockets --------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="gs-abuse-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unix_get(path: Path, requests: int = 1) -> list[int]:
    """``requests`` keep-alive GETs over the Unix socket at ``path``; their statuses."""
    statuses = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.connect(str(path))
        for number in range(requests):
            sock.sendall(get_request(close=number == requests - 1))
            statuses.append(read_response(sock)[0])
    return statuses


def start_unix(start_server: StartServer, path: Path) -> ServerProcess:
    server = start_server(["--bind", f"unix:{path}"])
    server.wait_for_line(r"listening on unix:" + re.escape(str(path)))
    return server


def test_unix_socket_serves_http_with_mode_0600_and_is_removed_at_exit(
    start_server: StartServer, short_dir: Path
) -> None:
    path = short_dir / "gs.sock"
    server = start_unix(start_server, path)
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600, oct(info.st_mode)
    assert unix_get(path, requests=3) == [200, 200, 200]
    stop_cleanly(server)
    assert not path.exists()


def test_unix_socket_stale_file_is_replaced(start_server: StartServer, short_dir: Path) -> None:
    path = short_dir / "gs.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # closed without unlinking: what a SIGKILLed server leaves
    assert stat.S_ISSOCK(path.lstat().st_mode)
    server = start_unix(start_server, path)
    assert unix_get(path) == [200]
    stop_cleanly(server)
    assert not path.exists()


def test_unix_socket_path_that_is_a_regular_file_is_refused(
    start_server: StartServer, short_dir: Path
) -> None:
    path = short_dir / "gs.sock"
    path.write_text("not a socket\n")
    server = start_server(["--bind", f"unix:{path}"])
    assert server.wait_exit() == EXIT_CANNOT_START, server.output
    assert "not a socket" in server.output
    assert path.read_text() == "not a socket\n"


def test_unix_socket_held_by_a_live_server_is_refused(
    start_server: StartServer, short_dir: Path
) -> None:
    path = short_dir / "gs.sock"
    first = start_unix(start_server, path)
    second = start_server(["--bind", f"unix:{path}"])
    assert second.wait_exit() == EXIT_CANNOT_START, second.output
    assert "another server is listening" in second.output
    # The loser did not take the winner's socket file with it.
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert unix_get(path) == [200]
    stop_cleanly(first)
    assert not path.exists()
