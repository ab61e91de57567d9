"""In-process servers of both target kinds, plain or TLS, for the front door's resource bounds.

Each bound (the head budget, the minimum body rate, the TLS write stall, the
idle reclaim at the cap) must hold for a ``BaseHTTPRequestHandler`` target and
for a WSGI app, over plain TCP and over TLS: ``serving`` builds either, with
the class attributes a test gives, and ``connect`` opens a client to it.
Both targets answer ``GET`` with ``hello`` and ``POST`` with the length of
the body they read (all of it, from ``Content-Length``).

Loopback only; every socket has a timeout; the server is drained, its loop
stopped and its thread joined on the way out.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from graceserve import GracefulHTTPServer
from graceserve.wsgi.server import GracefulWSGIServer

IO_TIMEOUT = 10.0
KINDS = ("handler", "wsgi")


class Echo(http.server.BaseHTTPRequestHandler):
    """GET: ``hello``; POST: how many body bytes it read."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(b"hello")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer(str(len(body)).encode())

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logging.getLogger("test.front").info(format, *args)


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The WSGI twin of ``Echo``."""
    if environ["REQUEST_METHOD"] == "POST":
        body = str(len(environ["wsgi.input"].read())).encode()
    else:
        body = b"hello"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@contextlib.contextmanager
def serving(
    kind: str,
    cert: tuple[Path, Path] | None = None,
    target: Any = None,
    **attributes: Any,
) -> Iterator[GracefulHTTPServer]:
    """A server of ``kind`` ("handler" or "wsgi") on 127.0.0.1:0, serving in a thread.

    ``target`` is the handler class or WSGI app (default: ``Echo`` /
    ``echo_app``); ``cert`` (certificate, key) serves TLS; ``attributes``
    are set on the server class (``idle_timeout=1.0``, ...).
    """
    base: type[GracefulHTTPServer] = GracefulHTTPServer if kind == "handler" else GracefulWSGIServer
    if cert is not None:
        attributes.update(certfile=str(cert[0]), keyfile=str(cert[1]))
    server_class = type(f"Test{base.__name__}", (base,), attributes)
    default = Echo if kind == "handler" else echo_app
    server = server_class(("127.0.0.1", 0), target or default)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="test-front-serve"
    )
    thread.start()
    try:
        yield server
    finally:
        server.drain(5.0)
        server.shutdown()
        thread.join(IO_TIMEOUT)
        server.server_close()


def address_of(server: GracefulHTTPServer) -> tuple[str, int]:
    host, port = server.server_address[:2]
    return str(host), int(port)


def connect(
    server: GracefulHTTPServer, context: ssl.SSLContext | None = None, rcvbuf: int | None = None
) -> socket.socket:
    """A client connected to ``server`` (over TLS with ``context``); ``rcvbuf`` shrinks its
    receive buffer (set before connecting, so the window is small from the start)."""
    raw = socket.socket()
    try:
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(IO_TIMEOUT)
        raw.connect(address_of(server))
        if context is None:
            return raw
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response, framed by its Content-Length: status, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole head: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(body)} of {length} body bytes")
        body += chunk
    return status, headers, body


def wait_for_server(sock: socket.socket, seconds: float) -> bytes | None:
    """Wait up to ``seconds`` for the server to send or hang up: what it sent (b"" for a
    hang-up), or None if it did neither.

    Over TLS a readable socket may only hold records without data (the session
    tickets a TLS 1.3 server sends after the handshake): those are read and do
    not count.  At most one byte of a response is read (returned).
    """
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        readable, _, _ = select.select([sock], [], [], max(left, 0))
        if not readable:
            return None
        if not isinstance(sock, ssl.SSLSocket):
            return b"" if _hung_up(sock) else sock.recv(1)
        sock.setblocking(False)
        try:
            return sock.recv(1)
        except ssl.SSLWantReadError:
            continue  # only a record without data
        except OSError:
            return b""
        finally:
            sock.settimeout(IO_TIMEOUT)


def _hung_up(sock: socket.socket) -> bool:
    try:
        return not sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return True


def read_to_end(sock: socket.socket) -> tuple[bytes, str]:
    """What the server sends until it closes: (bytes, "eof" or "reset")."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
