"""A client that stops reading its response does not hold a thread for ever.

Why: a request body that stops arriving and a head that never ends are cut by the
idle timeout; the same attack on the way out (ask for a large response, never
read it) used to hold the handler thread in ``sendall`` until the drain's cut,
so ``--max-connections`` such clients took the server down.  The server bounds
every write with the kernel's ``SO_SNDTIMEO`` (set once per connection to
``idle_timeout``): a send that makes no progress that long fails and the
connection ends with one log line.  A client that reads slowly but steadily is
never cut.  Over TLS the ssl module retries past the kernel's bound, so the
reaper watches a busy TLS connection's send queue instead (``SIOCOUTQ`` and the
bytes the client acknowledged): a queue that has not moved for the idle timeout
is cut, with one log line; a slow but steady TLS reader is never cut either.

Synchronisation: the registry's live connection count (polled with a
deadline), and the bytes the clients read.  The responses are larger than the
loopback buffers (a few MB) so that the server really blocks.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from graceserve import GracefulHTTPServer
from testsupport.front import KINDS, connect
from testsupport.front import serving as serving_kind
from testsupport.httpharness import Harness, address_of
from testsupport.tlsapp import Pki, make_pki
from testsupport.waiting import wait_until
from testsupport.wsgiapps import serving

# Each test waits out an idle timeout or a slow reader's seconds; the fast suite keeps
# tests/test_http_contract.py's one-line write timeout.
pytestmark = pytest.mark.slow

BODY = 32 * 1024 * 1024  # far more than the socket buffers hold
CHUNK = 64 * 1024
IO_TIMEOUT = 10.0


class Large(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        if self.path == "/small":
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")
            return
        self.send_header("Content-Length", str(BODY))
        self.end_headers()
        chunk = b"x" * CHUNK
        for _ in range(BODY // CHUNK):
            self.wfile.write(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        logging.getLogger("test.stalled").info(format, *args)


class StallBoundServer(GracefulHTTPServer):
    idle_timeout = 0.5


def large_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Length", str(BODY))])
    chunk = b"x" * CHUNK
    return iter([chunk] * (BODY // CHUNK))


def stalled_client(address: tuple[str, int]) -> socket.socket:
    """A client that asks for the large response and reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(IO_TIMEOUT)
    sock.connect(address)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    return sock


def received_before_the_end(sock: socket.socket) -> int:
    """Read what was queued until the server's close; the byte count."""
    total = 0
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(1 << 20):
            total += len(data)
    return total


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def wait_no_connection(server: GracefulHTTPServer) -> None:
    wait_until(lambda: server.active_connections == 0, 15, "the stalled connection to end")


def test_a_handler_writing_to_a_client_that_stopped_reading_is_freed(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = harness.serve(Large, StallBoundServer)
    with stalled_client(address_of(server)) as sock:
        wait_until(lambda: server.active_connections == 1, 10, "the request to be served")
        wait_no_connection(server)
        assert received_before_the_end(sock) < BODY
    assert "Response write stalled" in caplog.text
    assert "Traceback" not in caplog.text
    assert "exception while serving" not in caplog.text


@pytest.mark.parametrize("kind", ["iterable", "file_wrapper"])
def test_a_wsgi_response_to_a_client_that_stopped_reading_is_freed(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="graceserve")
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:
        out.truncate(BODY)  # sparse: no time spent writing it

    def file_app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", str(BODY))])
        return environ["wsgi.file_wrapper"](open(big, "rb"))

    app = large_app if kind == "iterable" else file_app
    with serving(app, validate=False, idle_timeout=0.5) as server:
        host, port = server.server_address[:2]
        with stalled_client((str(host), int(port))) as sock:
            wait_until(lambda: server.active_connections == 1, 10, "the request to be served")
            wait_no_connection(server)
            assert received_before_the_end(sock) < BODY
    assert "response write stalled" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_client_reading_slowly_but_steadily_gets_the_whole_response(harness: Harness) -> None:
    class Bounded(GracefulHTTPServer):
        # Less than the whole transfer takes (so a bound on the whole write would cut
        # it), far more than any one gap between the reader's reads.
        idle_timeout = 1.0

    server = harness.serve(Large, Bounded)
    started = time.monotonic()
    with socket.create_connection(address_of(server), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            assert data, "closed before the head"
            head += data
        received = len(head.partition(b"\r\n\r\n")[2])
        while received < BODY:
            data = sock.recv(256 * 1024)
            assert data, f"closed after {received} of {BODY} bytes"
            received += len(data)
            time.sleep(0.01)  # paces the reader (slow, never stalled); not synchronisation
    assert received == BODY
    assert time.monotonic() - started > Bounded.idle_timeout  # the bound is per stall


# -- over TLS: the reaper watches the send queue ---------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cert(pki: Pki) -> tuple[Path, Path]:
    return pki.issue("server", "localhost")


def large_target(kind: str) -> Any:
    return Large if kind == "handler" else large_app


@pytest.mark.parametrize("kind", KINDS)
def test_a_tls_client_that_stopped_reading_is_cut_after_the_idle_timeout(
    kind: str, pki: Pki, cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    idle = 1.0
    with (
        serving_kind(kind, cert, large_target(kind), idle_timeout=idle) as server,
        connect(server, pki.client_context(), rcvbuf=4096) as sock,
    ):
        asked = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        wait_until(lambda: server.active_connections == 1, 10, "the request to be served")
        wait_no_connection(server)
        cut_after = time.monotonic() - asked
        assert received_before_the_end(sock) < BODY
    assert cut_after >= idle * 0.8  # not before the stall lasted the idle timeout
    assert "response write stalled (the client read nothing for" in caplog.text
    assert caplog.text.count("response write stalled") == 1  # one line per cut
    assert "Traceback" not in caplog.text
    assert "exception while serving" not in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_a_tls_client_reading_slowly_but_steadily_gets_the_whole_response(
    kind: str, pki: Pki, cert: tuple[Path, Path]
) -> None:
    idle = 1.0  # less than the whole transfer takes, far more than any gap between reads
    with serving_kind(kind, cert, large_target(kind), idle_timeout=idle) as server:
        started = time.monotonic()
        with connect(server, pki.client_context()) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(4096)
                assert data, "closed before the head"
                head += data
            received = len(head.partition(b"\r\n\r\n")[2])
            paced = received
            while received < BODY:
                data = sock.recv(256 * 1024)
                assert data, f"closed after {received} of {BODY} bytes"
                received += len(data)
                if received - paced >= 1 << 20:
                    paced = received
                    time.sleep(0.05)  # paces the reader (slow, never stalled); not synchronisation
        assert received == BODY
        assert time.monotonic() - started > idle  # the bound is per stall, not per response
