"""The drain-aware request loop slotted under a user's ``BaseHTTPRequestHandler``.

Why this module exists: a polite HTTP drain needs to know, for each
connection, whether it is idle between requests, half-way through a request
head or body, or running a handler; and it must never dispatch a request the
drain cut short.  The stdlib's request loop knows none of that and reads heads
through ``email.parser``, which is slow and lenient where leniency is a
request-smuggling hole.  So the handler owns the head reader (strict, via
``graceserve.httpparse``) and records its state on its ``HTTPConnection``,
where the server's reaper (``GracefulHTTPServer``) reads it.

The per-request price, on a keep-alive request without a body: one
uncontended lock round-trip (idle -> reading the head, atomic with the
reaper's decision to close an idle connection), two clock reads, plain
attribute writes for the other transitions, and no extra system call: the
handler blocks in ``rfile.readline`` exactly like the stdlib.  A request with
a body gets a bounded body reader (``RequestBody``) that times the body for
the reaper and discards what the handler left unread.
"""

from __future__ import annotations

import functools
import http.server
import socket
import time
from typing import TYPE_CHECKING, Any

from . import httpparse
from .bodyreader import DISCARD_LIMIT, RequestBody
from .httpaccess import CountingWriter, ProxyAndAccessLog
from .server import FORCED, Connection
from .tls import raw_socket

if TYPE_CHECKING:
    from .headbudget import HeadMeter
    from .httpserver import GracefulHTTPServer

__all__ = ["BODY", "BUSY", "HEAD", "IDLE", "DrainAwareRequestHandler", "HTTPConnection"]

# What a connection's handler thread is doing (HTTPConnection.state).
BUSY = 0  # running the handler, or between steps: never timed by the reaper
IDLE = 1  # waiting for the next request line (a keep-alive client's think time)
HEAD = 2  # the request line arrived; reading the header block
BODY = 3  # blocked reading the request body (``since`` moves with each chunk)

RHYTHM_DECAY = 0.75  # per request: how fast a long gap is forgotten
_now = time.monotonic


class HTTPConnection(Connection):
    """A live HTTP connection as the registry knows it.

    Threading contract: ``state``, ``since`` and ``rhythm`` are written by the
    connection's own thread, mostly without the registry lock (a write of one
    attribute is atomic), and read by the reaper.  The one transition the
    reaper must never miss, IDLE -> HEAD, is made under the registry lock
    together with the read of ``cut``: so a connection the reaper closes while
    idle either never reads its request, or knows it raced the close.  The
    reaper re-checks ``(state, since)`` under the lock before it cuts, so a
    connection that moved on meanwhile is left alone.

    The request body's clock (``body_*``) is written by the body reader
    (``graceserve.bodyreader``) in the connection's thread; ``head`` is set
    by the server before the thread starts; ``watch_writes`` by the thread
    once its TLS handshake is done; ``rate_mark`` and ``write_mark`` are the
    reaper's own notes, written by the reaper only.
    """

    __slots__ = (
        "body_received",
        "body_serial",
        "body_waited",
        "head",
        "rate_mark",
        "rhythm",
        "since",
        "state",
        "used",
        "watch_writes",
        "write_mark",
    )

    def __init__(self, request: socket.socket, address: Any, *args: Any) -> None:
        # BUSY until its handler reaches the request loop: a handler that replaces the
        # loop (its own handle()) never records a state, and is then never reaped.
        self.state = BUSY
        self.since = _now()  # when ``state`` was entered (BODY: last progress)
        self.rhythm = 0.0  # recent gaps between a response and the next request (decaying max)
        self.used = False  # a request arrived on it: idle from then on, it is kept alive
        self.head: HeadMeter | None = None  # charges long heads to the server's head budget
        self.body_serial = 0  # which request body the two counters below are about
        self.body_waited = 0.0  # seconds spent blocked waiting for it (reads finished)
        self.body_received = 0  # bytes of it read
        self.rate_mark: tuple[int, float, int] | None = None  # (serial, waited, received)
        self.watch_writes = False  # no kernel bound on its writes (TLS): the reaper watches
        self.write_mark: tuple[int, int, float] | None = None  # (unsent, acked, since)
        super().__init__(request, address, *args)  # its flags map onto ``state`` (below)

    def note_gap(self, gap: float) -> None:
        """Record the gap between a response and the next request (the rhythm the linger learns)."""
        decayed = self.rhythm * RHYTHM_DECAY
        self.rhythm = gap if gap > decayed else decayed
        self.used = True

    # The generic Connection's flags, for code written against them (reads and
    # writes map onto ``state``; same atomicity: one attribute per write).
    @property
    def idle(self) -> bool:
        """Waiting for the next request."""
        return self.state == IDLE

    @idle.setter
    def idle(self, value: bool) -> None:
        if value:
            self.state = IDLE
        elif self.state == IDLE:
            self.state = BUSY

    @property
    def reading(self) -> bool:
        """Half-way through a request head or body."""
        return self.state in (HEAD, BODY)

    @reading.setter
    def reading(self, value: bool) -> None:
        if value:
            self.state = HEAD
        elif self.state in (HEAD, BODY):
            self.state = BUSY

    @property
    def idle_since(self) -> float:
        """When the current state began."""
        return self.since

    @idle_since.setter
    def idle_since(self, value: float) -> None:
        self.since = value


class DrainAwareRequestHandler(ProxyAndAccessLog, http.server.BaseHTTPRequestHandler):
    """The drain-aware request loop, slotted under a user's handler class.

    Not meant to be subclassed directly (a user's plain handler gets it from
    ``GracefulHTTPServer``), though doing so is harmless.  Runs in the
    connection's own thread.  User overrides of ``parse_request``,
    ``send_header``, ``end_headers`` etc. win, and their ``super()`` calls
    reach these.
    """

    server: GracefulHTTPServer
    # Error responses get a status line: the stdlib's "HTTP/0.9" default answers an
    # unparsable request with a bare body.  A handler's own default wins (MRO).
    default_request_version = "HTTP/1.0"
    _graceserve_interim = False
    _graceserve_closing = False  # this response ends the connection (a raced or cut request)
    _graceserve_keep_alive = False  # HTTP/1.0 keep-alive was asked for and granted
    _graceserve_body: RequestBody | None = None
    _graceserve_conn: HTTPConnection
    _graceserve_lock: Any
    _graceserve_limits: httpparse.Limits
    _graceserve_meter: HeadMeter | None = None  # the head budget's meter for this connection
    _graceserve_on_line: Any = None  # its HeadMeter.line

    def setup(self) -> None:
        """Set up the streams and find this connection's registry record."""
        super().setup()
        server = self.server
        conn = server.registry.get(raw_socket(self.request))
        if not isinstance(conn, HTTPConnection):  # not registered: nobody will reap it
            conn = HTTPConnection(self.request, self.client_address)
        self._graceserve_conn = conn
        self._graceserve_lock = server.registry.lock
        self._graceserve_limits = server.request_limits
        if conn.head is not None:
            self._graceserve_meter = conn.head
            self._graceserve_on_line = conn.head.line
        if server.access_logger is not None:
            self.wfile = CountingWriter(self.wfile)

    def handle_one_request(self) -> None:
        """Read, parse and dispatch one request; never dispatch one cut short.

        As the stdlib's, a read or write that times out (a handler's own
        ``timeout``) ends the connection with one log line; so does a response
        the client stopped reading for ``idle_timeout`` (the server's write bound).
        """
        try:
            self._handle_one_request()
        except TimeoutError as exc:
            self.log_error("Request timed out: %r", exc)
            self.close_connection = True
        except BlockingIOError:  # a blocking socket: only the write bound says EAGAIN
            self.log_error("Response write stalled: the client stopped reading; closing")
            self.close_connection = True

    def _handle_one_request(self) -> None:
        conn = self._graceserve_conn
        conn.since = _now()
        conn.state = IDLE
        if conn.cut:
            self.close_connection = True
            return
        limit = self._graceserve_limits.request_line + 3  # CRLF, and one byte to tell "too long"
        raw = self.rfile.readline(limit)
        if raw == b"\r\n" or raw == b"\n":  # RFC 9112 2.2: one empty line before a request is ok
            raw = self.rfile.readline(limit)
        now = _now()
        with self._graceserve_lock:
            cut = conn.cut
            gap = now - conn.since
            conn.state = HEAD
            conn.since = now
        conn.note_gap(gap)
        self._graceserve_started = now
        self._graceserve_forwarded = None
        if cut == FORCED or not raw or (raw[-1:] != b"\n" and len(raw) < limit):
            self.close_connection = True  # cut, EOF, or EOF in the request line: ignore
            return
        if cut:  # a request raced the close of an idle connection: answer it, with close
            self._graceserve_closing = True
        self.raw_requestline = raw
        if not self.parse_request():
            conn.state = BUSY
            if self._graceserve_body is not None:
                self._end_body()
            if self.server.access_logger is not None:
                self._log_access()
            return
        conn.state = BUSY
        if conn.cut:
            # Cut while the head arrived: a forced cut is not acted on; a close
            # (the linger ran out) is answered, with Connection: close.
            if conn.cut == FORCED:
                self.close_connection = True
                return
            self._graceserve_closing = True
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.send_error(501, f"Unsupported method ({self.command!r})")
        else:
            method()
            self.wfile.flush()
        if self._graceserve_body is not None:
            self._end_body()
        if self.server.access_logger is not None:
            self._log_access()
        self.server.hooks.request_done()  # graceserve.serverhooks: --max-requests counts it
        meter = self._graceserve_meter
        if meter is not None and meter.charged:  # a long head: give its memory back
            meter.release()
            self.headers = httpparse.to_message([])

    def parse_request(self) -> bool:
        """Parse the request line and read the head, strictly (``graceserve.httpparse``).

        Sets what the stdlib's sets (``command``, ``path``, ``request_version``,
        ``requestline``, ``headers``, ``close_connection``) and answers
        ``Expect: 100-continue`` the same way.  On a malformed head it sends
        the error (a real status line, ``Connection: close``) and returns
        False; on a head cut short by EOF it sends nothing and returns False.
        A request with a body gets ``rfile`` bounded to that body.
        """
        self.command = None  # type: ignore[assignment]
        self.request_version = self.default_request_version
        self.close_connection = True
        self._graceserve_keep_alive = False
        raw = self.raw_requestline
        self.requestline = str(raw, "iso-8859-1").rstrip("\r\n")
        limits = self._graceserve_limits
        try:
            line = httpparse.parse_request_line(raw, limits)
            if line.version == "HTTP/0.9":
                return self._versionless(line)
            self.command, self.path, self.request_version = line.method, line.target, line.version
            if self.path.startswith("//"):  # as the stdlib (gh-87389): no open redirects
                self.path = "/" + self.path.lstrip("/")
            fields = httpparse.read_fields(
                self.rfile.readline, limits, on_line=self._graceserve_on_line
            )
            self.headers = httpparse.to_message(fields)
            framing = httpparse.framing(line, fields, limits)
        except httpparse.RequestError as exc:
            if self.request_version == "HTTP/0.9":
                self.request_version = "HTTP/1.0"
            self.send_error(exc.status, exc.message)
            return False
        except httpparse.IncompleteHeadError:
            return False  # EOF, or the drain's cut, inside the head: never dispatch it
        if framing.keep_alive and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
            self._graceserve_keep_alive = line.version == "HTTP/1.0"
        if framing.has_body:
            self._start_body(framing)
        expect = framing.expect_continue and self.protocol_version >= "HTTP/1.1"
        if expect and not self.handle_expect_100():
            self.close_connection = True  # the client may or may not send the body
            return False
        return True

    def _versionless(self, line: httpparse.RequestLine) -> bool:
        """``METHOD target`` with no version: graceserve's 505, or the handler's own default.

        A handler that left the stdlib's ``default_request_version`` ("HTTP/0.9")
        gets a 505 with a status line; one that chose another version gets the
        stdlib's dispatch (GET only) under that version.  Either way at once:
        an HTTP/0.9 request has no header block to wait for.
        """
        self.close_connection = True
        stdlib_default = _keeps_stdlib_default(type(self))
        if stdlib_default:
            self.request_version = "HTTP/1.0"
        if line.method != "GET":  # the stdlib's first answer, whatever the version
            self.send_error(400, f"Bad HTTP/0.9 request type ({line.method!r})")
            return False
        if stdlib_default:
            self.send_error(505, "HTTP/0.9 is not supported")
            return False
        self.command, self.path = line.method, line.target
        self.headers = httpparse.to_message([])
        return True

    def _start_body(self, framing: httpparse.Framing) -> None:
        """Bound ``rfile`` to the body; a chunked one is passed through, and ends the connection.

        Handlers written for the stdlib de-chunk a chunked body themselves, so
        they get its bytes as sent; since where it ends is then theirs to
        know, the connection is not reused after it.
        """
        chunked = framing.chunked
        body = RequestBody(
            self.rfile, self._graceserve_conn, None if chunked else framing.content_length
        )
        self._graceserve_body = body
        self.rfile = body  # type: ignore[assignment]
        if chunked:
            self._graceserve_closing = True

    def _end_body(self) -> None:
        """After the response: put ``rfile`` back, discard what is left of the body or close."""
        body = self._graceserve_body
        assert body is not None
        self._graceserve_body = None
        self.rfile = body.rfile
        if not self.close_connection and not body.discard(DISCARD_LIMIT):
            self.close_connection = True

    @property
    def _graceserve_ending(self) -> bool:
        """Whether this response must end the connection (drain, a cut, an unread body)."""
        if self._graceserve_closing or self.server.listener_closed:
            return True
        body = self._graceserve_body
        return body is not None and body.left_over > DISCARD_LIMIT

    def send_response_only(self, code: int, message: str | None = None) -> None:
        """Start a response; an interim one (1xx, as for ``Expect``) is left alone."""
        self._graceserve_interim = code < 200
        if code >= 200:
            self._graceserve_status = code
        super().send_response_only(code, message)

    def end_headers(self) -> None:
        """End the header block; say ``close`` when ending the connection (or when
        an HTTP/1.1 client asked to), and ``keep-alive`` when granting it to an
        HTTP/1.0 client.

        Any ``Connection`` header the handler sent is rewritten rather than
        doubled.  Only this once-per-response hook does the check, so the
        per-header path stays the stdlib's.
        """
        if self._graceserve_interim:
            self._graceserve_interim = False
        elif self._graceserve_ending:
            self._say_connection("close")
            self.close_connection = True
        elif self._graceserve_keep_alive and not self.close_connection:
            self._say_connection("keep-alive", rewrite=False)
        elif self.close_connection and self.request_version == "HTTP/1.1":
            # The client asked for close: say it back (RFC 9112 9.6), or a client
            # that reuses connections by default counts our EOF as an error.
            self._say_connection("close", rewrite=False)
        super().end_headers()
        wfile = self.wfile
        if isinstance(wfile, CountingWriter):
            self._graceserve_head_bytes = wfile.count

    def _say_connection(self, value: str, rewrite: bool = True) -> None:
        lines: list[bytes] = getattr(self, "_headers_buffer", [])
        found = False
        for index, line in enumerate(lines):
            if line[:11].lower() == b"connection:":
                found = True
                if rewrite:
                    lines[index] = f"Connection: {value}\r\n".encode()
        if not found:
            self.send_header("Connection", value)


def _keeps_stdlib_default(handler_class: Any) -> bool:
    """Whether ``handler_class`` left ``default_request_version`` at the stdlib's "HTTP/0.9"."""
    for klass in handler_class.__mro__:
        if "default_request_version" in vars(klass):
            if klass in (DrainAwareRequestHandler, http.server.BaseHTTPRequestHandler):
                return True
            return bool(vars(klass)["default_request_version"] == "HTTP/0.9")
    return True


def make_drain_aware(handler_class: Any) -> Any:
    """The drain-aware variant of ``handler_class`` (uncached: see ``drain_aware``).

    A ``BaseHTTPRequestHandler`` subclass gets ``DrainAwareRequestHandler``
    slotted in just above ``BaseHTTPRequestHandler``, in a class named
    ``DrainAware[Name]``; a ``functools.partial`` of one is rebuilt around
    that; anything else is returned unchanged.
    """
    if isinstance(handler_class, functools.partial):
        inner = make_drain_aware(handler_class.func)
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
        f"DrainAware[{handler_class.__name__}]",
        (handler_class, DrainAwareRequestHandler),
        {
            "__module__": handler_class.__module__,
            "__qualname__": f"DrainAware[{handler_class.__qualname__}]",
            "__doc__": handler_class.__doc__,
        },
    )
