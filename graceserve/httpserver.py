"""GracefulHTTPServer: http.server.ThreadingHTTPServer with a keep-alive-aware drain.

Why this module exists: an HTTP/1.1 client treats EOF on a keep-alive
connection as an error unless the last response said ``Connection: close``.
So a polite HTTP drain does not just wait; it ends every connection at a
moment the client accepts:

- a request in flight finishes, and its response carries ``Connection: close``;
- a connection that answered less than ``drain_linger`` seconds ago is given
  the chance to send one more request (it probably already has), which is
  answered with ``Connection: close``;
- a connection idle for longer, with nothing queued on it, gets a FIN;
- a request that raced the cut, or a request head cut half-way, is never
  dispatched (the race guard in ``handle_one_request``).

The user's handler stays a plain ``BaseHTTPRequestHandler`` subclass: the
server serves it through a subclass that puts ``DrainAwareRequestHandler``
just above ``BaseHTTPRequestHandler`` in its MRO, so the user's overrides win
and their ``super()`` calls reach ours.  The per-request path adds two
uncontended lock round-trips and no system call: the handler blocks in
``readline`` exactly like the stdlib, and idle timeouts are enforced from the
outside by the reaper (``service_actions`` and ``service_drain``).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import socketserver
import threading
import time
from typing import Any

from .server import CLOSING, FORCED, OPEN, Connection, GracefulTCPServer
from .settings import DEFAULTS

__all__ = ["DrainAwareRequestHandler", "GracefulHTTPServer"]

_MAX_REQUEST_LINE = 65536


class DrainAwareRequestHandler(http.server.BaseHTTPRequestHandler):
    """The drain-aware request loop, slotted under a user's handler class.

    Not meant to be subclassed directly (a user's plain handler gets it from
    ``GracefulHTTPServer``), though doing so is harmless.  Runs in the
    connection's own thread; shares ``Connection`` fields with the reaper
    only under the registry lock.
    """

    server: GracefulHTTPServer
    # The stdlib answers an unparsable request line HTTP/0.9-style, with no status line.
    default_request_version = "HTTP/1.0"
    _graceserve_interim = False
    _graceserve_closing = False
    _graceserve_conn: Connection | None = None
    _graceserve_lock: Any = None
    _graceserve_head: _HeadReader

    def setup(self) -> None:
        """Set up the streams and find this connection's registry record."""
        super().setup()
        registry = self.server.registry
        self._graceserve_conn = registry.get(self.request)
        self._graceserve_lock = registry.lock
        self._graceserve_head = _HeadReader(self.rfile)

    def handle_one_request(self) -> None:
        """Read, parse and dispatch one request; never dispatch one cut short."""
        if self._enter(idle=True, reading=False) != OPEN:
            self.close_connection = True
            return
        try:
            self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
        except (TimeoutError, ConnectionError):
            self.raw_requestline = b""
        state = self._enter(idle=False, reading=True)
        if state == FORCED or not self.raw_requestline:
            self.close_connection = True
            return
        if state == CLOSING:  # a request raced the close of an idle connection:
            self._graceserve_closing = True  # answer it, with Connection: close
        if len(self.raw_requestline) > _MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.raw_requestline.endswith(b"\n"):
            self.close_connection = True  # EOF in the request line: incomplete, ignore
            return
        rfile, head = self.rfile, self._graceserve_head
        head.truncated = False
        self.rfile = head  # type: ignore[assignment]  # duck-typed for parse_headers
        try:
            parsed = self.parse_request()
        finally:
            self.rfile = rfile
        if self._enter(idle=False, reading=False) == FORCED or head.truncated:
            # The head was cut half-way (by us, or by EOF before its blank
            # line, which http.client takes as the end): don't act on it.
            self.close_connection = True
            return
        if not parsed:
            return
        if self.request_version == "HTTP/0.9" or len(self.requestline.split()) < 3:
            self.request_version = "HTTP/1.0"  # answer with a status line, and close
            self.close_connection = True
            self.send_error(505, "HTTP/0.9 is not supported")
            return
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.send_error(501, f"Unsupported method ({self.command!r})")
            return
        method()
        self.wfile.flush()

    def _enter(self, idle: bool, reading: bool) -> int:
        """Move this connection to a new state; what the reaper did (OPEN, CLOSING, FORCED)."""
        conn = self._graceserve_conn
        if conn is None:
            return OPEN
        with self._graceserve_lock:
            conn.idle = idle
            conn.reading = reading
            if idle or reading:  # the reaper times only these two states
                conn.idle_since = time.monotonic()
            return conn.cut

    @property
    def _graceserve_ending(self) -> bool:
        """Whether this response must end the connection (drain, or an idle close)."""
        return self._graceserve_closing or self.server.listener_closed

    def send_response_only(self, code: int, message: str | None = None) -> None:
        """Start a response; an interim one (1xx, as for ``Expect``) is left alone."""
        self._graceserve_interim = code < 200
        super().send_response_only(code, message)

    def end_headers(self) -> None:
        """End the header block; while ending the connection, make it say ``close``.

        Any ``Connection`` header the handler sent is rewritten rather than
        doubled.  Only this once-per-response hook does the check, so the
        per-header path stays the stdlib's.
        """
        if self._graceserve_interim:
            self._graceserve_interim = False
        elif self._graceserve_ending:
            self._say_close()
        super().end_headers()

    def _say_close(self) -> None:
        lines: list[bytes] = getattr(self, "_headers_buffer", [])
        found = False
        for index, line in enumerate(lines):
            if line[:11].lower() == b"connection:":
                lines[index] = b"Connection: close\r\n"
                found = True
        if not found:
            self.send_header("Connection", "close")
        self.close_connection = True


class _HeadReader:
    """Wraps ``rfile`` while the header block is parsed, noting an EOF inside it.

    ``http.client.parse_headers`` treats EOF like the blank line that ends a
    head, so a request cut short would be dispatched as if complete.
    """

    __slots__ = ("_rfile", "truncated")

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        self.truncated = False

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._rfile.readline(limit)
        if not line.endswith(b"\n") and (limit < 0 or len(line) < limit):
            self.truncated = True
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rfile, name)


class GracefulHTTPServer(GracefulTCPServer, http.server.ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` whose drain ends keep-alive connections cleanly.

    Serves any ``BaseHTTPRequestHandler`` subclass unchanged (or a
    ``functools.partial`` of one, as ``http.server`` does for ``--directory``).

    Class variables (in addition to GracefulTCPServer's):

    - idle_timeout = 60.0     close a keep-alive connection idle this long, or a
                              request head still arriving after this long
    - drain_linger = 0.2      at drain, a connection that answered less than this
                              long ago may send one more request (answered with
                              ``Connection: close``) before it is closed
    - tcp_nodelay = True      no Nagle stall between header and body writes

    Threading contract: as GracefulTCPServer.
    """

    idle_timeout: float | None = DEFAULTS.idle_timeout
    drain_linger = 0.2
    tcp_nodelay = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._handler_classes: dict[Any, Any] = {}
        self._handler_classes_lock = threading.Lock()
        self._next_reap = 0.0
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """Bind; on a Unix socket, without http.server's host:port bookkeeping."""
        if self.address_family != socket.AF_UNIX:
            super().server_bind()
            return
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 0

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, with ``TCP_NODELAY`` set."""
        request, client_address = self.socket.accept()
        if self.address_family == socket.AF_UNIX:
            return request, ("unix", 0)  # http.server logs client_address[0]
        if self.tcp_nodelay:
            with contextlib.suppress(OSError):
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return request, client_address

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection with the drain-aware variant of the handler class."""
        self.drain_aware(self.RequestHandlerClass)(request, client_address, self)

    def drain_aware(self, handler_class: Any) -> Any:
        """The handler class to use for ``handler_class``: a cached drain-aware subclass.

        ``BaseHTTPRequestHandler`` subclasses get ``DrainAwareRequestHandler``
        slotted in; a ``functools.partial`` of one is rebuilt around that
        subclass; anything else is returned unchanged (and is then only cut at
        the deadline).  Thread-safe.
        """
        with self._handler_classes_lock:
            cached = self._handler_classes.get(handler_class)
            if cached is None:
                cached = _make_drain_aware(handler_class)
                self._handler_classes[handler_class] = cached
            return cached

    def service_actions(self) -> None:
        """Close connections idle past ``idle_timeout``.  Called by serve_forever.

        The registry is scanned once per quarter of the timeout (0.5 s at
        most), not on every accept.
        """
        super().service_actions()
        if self.idle_timeout is None:
            return
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + min(self.idle_timeout / 4, 0.5)
            self._reap(now, self.idle_timeout, self.idle_timeout, forced=True)

    def service_drain(self) -> float | None:
        """Close idle connections whose linger has passed; ask to be called for the rest."""
        super().service_drain()
        return self._reap(time.monotonic(), self.drain_linger, self.idle_timeout, forced=False)

    def _reap(
        self, now: float, idle_after: float, reading_after: float | None, forced: bool
    ) -> float | None:
        """Cut idle connections quiet for ``idle_after`` seconds with nothing queued.

        Also cuts request heads still arriving after ``reading_after`` seconds.
        Returns when it wants to run again (while draining, at least every
        ``idle_after`` seconds as long as connections are live), or None.
        """
        due: float | None = None
        with self.registry.locked_items() as items:
            if items and not forced:  # busy ones may go idle: look again after a linger
                due = now + idle_after
            for request, conn in items:
                if conn.idle:
                    ripe = conn.idle_since + idle_after
                    if ripe > now:
                        due = ripe if due is None else min(due, ripe)
                    elif not _has_queued_bytes(request):
                        self.cut_connection(request, forced=forced)
                elif (
                    conn.reading
                    and reading_after is not None
                    and now - conn.idle_since >= reading_after
                ):
                    self.cut_connection(request, forced=True)
        return due


def _has_queued_bytes(sock: socket.socket) -> bool:
    """Whether the peer has sent bytes nobody has read yet.  Never blocks."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False


def _make_drain_aware(handler_class: Any) -> Any:
    if isinstance(handler_class, functools.partial):
        inner = _make_drain_aware(handler_class.func)
        if inner is handler_class.func:
            return handler_class
        return functools.partial(inner, *handler_class.args, **handler_class.keywords)
    if not (
        isinstance(handler_class, type)
        and issubclass(handler_class, http.server.BaseHTTPRequestHandler)
    ):
        return handler_class
    if issubclass(handler_class, DrainAwareRequestHandler):
        return handler_class
    return type(
        handler_class.__name__,
        (handler_class, DrainAwareRequestHandler),
        {"__module__": handler_class.__module__, "__qualname__": handler_class.__qualname__},
    )
