"""A GracefulHTTPServer in this process, a raw client, and the handlers the tests gate.

Why this module exists: the HTTP server, contract, stalled-reader and drain tests drive
the same in-process server with the same raw client; written once here.
Threading: the server runs serve_forever in its own thread; the handlers run in its
threads; a RawClient belongs to the one thread that uses it.
"""

from __future__ import annotations

import http.client
import http.server
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from graceserve import GracefulHTTPServer
from graceserve.core.drain import DrainReport

from .waiting import wait_until

__all__ = [
    "DRAIN_TIMEOUT",
    "GATE_TIMEOUT",
    "LOCALHOST",
    "SOCKET_TIMEOUT",
    "UPLOAD_CHUNK",
    "Address",
    "Drainer",
    "Harness",
    "RawClient",
    "Recorder",
    "Response",
    "address_of",
    "idle_for",
    "make_handler",
    "request_bytes",
]


LOCALHOST = "127.0.0.1"


SOCKET_TIMEOUT = 5.0  # seconds; every socket in this module has it


GATE_TIMEOUT = 10.0  # seconds a gated handler waits before giving up by itself


DRAIN_TIMEOUT = 10.0  # grace for drains that are expected to end by themselves


UPLOAD_CHUNK = 10_000


Address = tuple[str, int]


@dataclass
class Response:
    """One response as it came off the wire."""

    status_line: bytes
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        """The status code."""
        return int(self.status_line.split()[1])

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        """The single value of header ``name``, or None; fails if it was sent twice."""
        found = self.values(name)
        assert len(found) <= 1, f"{name} sent {len(found)} times: {self.headers}"
        return found[0] if found else None


class RawClient:
    """One TCP connection, speaking HTTP/1.x by hand so the test sees every byte."""

    def __init__(self, address: Address) -> None:
        self.sock = socket.create_connection(address, timeout=SOCKET_TIMEOUT)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        """Send ``data`` in one write."""
        self.sock.sendall(data)

    def get(self, path: str, version: str = "HTTP/1.1") -> None:
        """Send one GET request."""
        self.send(request_bytes(path, version))

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"EOF with {len(self._buffer)} bytes of a response: {self._buffer!r}")
        self._buffer += chunk

    def read_response(self, head_only: bool = False) -> Response:
        """Read exactly one complete response (Content-Length framing)."""
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        headers = []
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        response = Response(status_line, headers, b"")
        length = 0 if head_only else int(response.header("Content-Length") or 0)
        while len(self._buffer) < length:
            self._fill()
        response.body, self._buffer = self._buffer[:length], self._buffer[length:]
        return response

    def read_to_eof(self) -> bytes:
        """Everything left until a clean EOF; a reset raises ConnectionResetError."""
        data, self._buffer = self._buffer, b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()


def request_bytes(path: str, version: str = "HTTP/1.1", method: str = "GET") -> bytes:
    """A minimal request head."""
    host = b"Host: test\r\n" if version == "HTTP/1.1" else b""
    return f"{method} {path} {version}\r\n".encode() + host + b"\r\n"


class Recorder:
    """What the handlers saw, and the gates they wait on.  Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.dispatched: list[str] = []
        self.calls: list[str] = []
        self._entered: dict[str, threading.Event] = {}
        self._release: dict[str, threading.Event] = {}
        self.upload_progress: queue.Queue[int] = queue.Queue()

    def _events(self, name: str) -> tuple[threading.Event, threading.Event]:
        with self._lock:
            entered = self._entered.setdefault(name, threading.Event())
            release = self._release.setdefault(name, threading.Event())
            return entered, release

    def dispatch(self, what: str) -> None:
        """Record that a request was dispatched to a ``do_*`` method."""
        with self._lock:
            self.dispatched.append(what)

    def call(self, what: str) -> None:
        """Record that a user override ran."""
        with self._lock:
            self.calls.append(what)

    def gate(self, name: str) -> None:
        """In a handler: say we are here, then wait until the test releases ``name``."""
        entered, release = self._events(name)
        entered.set()
        release.wait(GATE_TIMEOUT)

    def wait_entered(self, name: str) -> None:
        """In the test: wait until a handler is held at gate ``name``."""
        entered, _ = self._events(name)
        assert entered.wait(GATE_TIMEOUT), f"no handler reached gate {name!r}"

    def release(self, name: str) -> None:
        """Let the handler held at gate ``name`` go on."""
        self._events(name)[1].set()

    def release_all(self) -> None:
        """Open every gate (teardown)."""
        with self._lock:
            for event in self._release.values():
                event.set()


def make_handler(
    rec: Recorder, protocol: str = "HTTP/1.1"
) -> type[http.server.BaseHTTPRequestHandler]:
    """A plain BaseHTTPRequestHandler subclass, as a user would write it.

    ``GET /gate/NAME`` holds the request at gate NAME; every GET answers with the
    server's ``draining``/``stopping`` as seen from the handler once it is done;
    ``GET /nodelay`` answers the accepted socket's TCP_NODELAY; ``POST`` reads its
    body in chunks, reporting progress to ``rec.upload_progress``.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = protocol

        def do_GET(self) -> None:
            rec.dispatch(f"GET {self.path}")
            if self.path.startswith("/gate/"):
                rec.gate(self.path[len("/gate/") :])
            server = cast(GracefulHTTPServer, self.server)
            if self.path == "/nodelay":
                body = str(self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            else:
                body = f"{self.path} draining={server.draining} stopping={server.stopping}"
            self.reply(200, body.encode())

        def do_POST(self) -> None:
            rec.dispatch(f"POST {self.path}")
            remaining = int(self.headers["Content-Length"])
            received = 0
            while remaining:
                chunk = self.rfile.read(min(UPLOAD_CHUNK, remaining))
                if not chunk:
                    break
                received += len(chunk)
                remaining -= len(chunk)
                rec.upload_progress.put(received)
            self.reply(200, f"received {received}".encode())

        def reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class Drainer:
    """``server.drain(timeout)`` in a thread of its own, so the test can act meanwhile."""

    def __init__(self, server: GracefulHTTPServer, timeout: float = DRAIN_TIMEOUT) -> None:
        self._server = server
        self._timeout = timeout
        self._report: DrainReport | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._report = self._server.drain(self._timeout)
        except BaseException as exc:
            self._error = exc

    def wait_listener_closed(self) -> None:
        """Wait until the drain has closed the listener (``Connection: close`` from then on)."""
        wait_until(lambda: self._server.listener_closed, 5.0, "the drain to close the listener")

    def result(self) -> DrainReport:
        """Wait for the drain to end; its report."""
        self._thread.join(self._timeout + 10.0)
        assert not self._thread.is_alive(), "drain() did not return"
        if self._error is not None:
            raise self._error
        assert self._report is not None
        return self._report


class Harness:
    """Servers, clients and gates for one test; everything is released at teardown."""

    def __init__(self) -> None:
        self.rec = Recorder()
        self._servers: list[GracefulHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._closers: list[Callable[[], None]] = []

    def serve(
        self,
        handler: Any = None,
        server_class: type[GracefulHTTPServer] = GracefulHTTPServer,
        *,
        forever: bool = True,
        poll_interval: float = 0.5,
    ) -> GracefulHTTPServer:
        """A server on 127.0.0.1, port 0; with ``forever``, serve_forever runs in a thread."""
        server = server_class((LOCALHOST, 0), handler or make_handler(self.rec))
        self._servers.append(server)
        if forever:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": poll_interval},
                name="test-serve-forever",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return server

    def client(self, server: GracefulHTTPServer) -> RawClient:
        """A raw connection to ``server``, closed at teardown."""
        client = RawClient(address_of(server))
        self._closers.append(client.close)
        return client

    def http(self, server: GracefulHTTPServer) -> http.client.HTTPConnection:
        """An ``http.client`` connection to ``server``, closed at teardown."""
        host, port = address_of(server)
        conn = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT)
        self._closers.append(conn.close)
        return conn

    def close(self) -> None:
        self.rec.release_all()
        for close in self._closers:
            close()
        for server in self._servers:
            server.server_close()
        for thread in self._threads:
            thread.join(10.0)


def address_of(server: GracefulHTTPServer) -> Address:
    host, port = server.server_address[:2]
    return str(host), int(port)


def idle_for(server: GracefulHTTPServer) -> float:
    """How long the least idle connection has been idle (0 if any is busy)."""
    now = time.monotonic()
    with server.registry.locked_items() as items:
        return min((now - conn.idle_since if conn.idle else 0.0) for _r, conn in items)
