"""The stdlib dispatcher of the request cycle, slotted under a user's ``BaseHTTPRequestHandler``.

Why this module exists: a user's handler must stay a plain
``BaseHTTPRequestHandler`` subclass (its ``do_GET``, ``parse_request``,
``send_error``, ``end_headers`` overrides win), yet get graceserve's request
cycle (``graceserve.http.cycle``: the drain-aware states, the strict head
reader, the limits, the one body reader, the linger's ``Connection: close``,
the unread-body rule, the access record).  So ``handle_one_request`` is one
turn of the cycle, and this class is its dispatcher: ``parse_request`` reads
the head through the cycle, ``do_<METHOD>`` answers, ``end_headers`` says
``Connection: close`` when the cycle says the connection ends.

The per-request price, on a keep-alive request without a body: one
uncontended lock round-trip (idle -> reading the head, atomic with the
reaper's decision to close an idle connection), two clock reads, plain
attribute writes for the other transitions, and no extra system call: the
handler blocks in ``rfile.readline`` exactly like the stdlib.
"""

from __future__ import annotations

import functools
import http.server
from typing import TYPE_CHECKING, Any

from graceserve.core.server import FORCED
from graceserve.http import parse as httpparse
from graceserve.http.access import AccessServer, CountingWriter, ProxyAndAccessLog
from graceserve.http.connection import BODY, BUSY, HEAD, IDLE, HTTPConnection
from graceserve.http.cycle import CycleServer, RequestCycle

if TYPE_CHECKING:
    import socketserver

    class HandlerServer(socketserver.BaseServer, CycleServer, AccessServer):
        """The server as the handler sees it: a ``BaseServer`` (the stdlib's handler
        asks that) with what the request cycle and the access mixin read of it;
        ``GracefulHTTPServer`` is one.  A type only, never made."""


__all__ = ["BODY", "BUSY", "HEAD", "IDLE", "DrainAwareRequestHandler", "HTTPConnection"]


class DrainAwareRequestHandler(ProxyAndAccessLog, http.server.BaseHTTPRequestHandler):
    """The request cycle's stdlib dispatcher, slotted under a user's handler class.

    Not meant to be subclassed directly (a user's plain handler gets it from
    ``GracefulHTTPServer``), though doing so is harmless.  Runs in the
    connection's own thread.  User overrides of ``parse_request``,
    ``send_error``, ``send_header``, ``end_headers`` etc. win, and their
    ``super()`` calls reach these.
    """

    server: HandlerServer
    # Error responses get a status line: the stdlib's "HTTP/0.9" default answers an
    # unparsable request with a bare body.  A handler's own default wins (MRO).
    default_request_version = "HTTP/1.0"
    _graceserve_interim = False
    _graceserve_keep_alive = False  # HTTP/1.0 keep-alive was asked for and granted
    _graceserve_cycle: RequestCycle
    raw_requestline: bytes  # the stdlib's, set by the cycle before ``parse_request``

    def setup(self) -> None:
        """Set up the streams and this connection's request cycle."""
        super().setup()
        server = self.server
        if server.access_logger is not None:
            self.wfile = CountingWriter(self.wfile)
        self._graceserve_cycle = RequestCycle(server, self.request, self.client_address, self.rfile)

    def handle_one_request(self) -> None:
        """One turn of the request cycle: read, parse and dispatch one request.

        As the stdlib's, a read or write that times out (a handler's own
        ``timeout``) ends the connection with one log line; so does a response
        the client stopped reading for ``idle_timeout`` (the server's write bound).
        """
        try:
            if not self._graceserve_cycle.serve_one(self):
                self.close_connection = True
        except TimeoutError as exc:
            self.log_error("Request timed out: %r", exc)
            self.close_connection = True
        except BlockingIOError:  # a blocking socket: only the write bound says EAGAIN
            self.log_error("Response write stalled: the client stopped reading; closing")
            self.close_connection = True

    # -- the cycle's dispatcher -----------------------------------------------------------

    def dispatch(self) -> None:
        """Call ``do_<METHOD>``; 501 without one."""
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.send_error(501, None, f"Unsupported method ({self.command!r})")
        else:
            method()
            self.wfile.flush()

    def request_finished(self) -> None:
        """Put ``rfile`` back, write the access record, drop a long head's fields."""
        cycle = self._graceserve_cycle
        self.rfile = cycle.rfile  # type: ignore[assignment]
        if self.server.access_logger is not None:
            self._log_access()
        meter = cycle.meter
        if meter is not None and meter.charged:  # a long head: its memory is given back
            self.headers = httpparse.to_message([])

    def parse_request(self) -> bool:
        """Parse the request line and read the head, strictly (``graceserve.http.cycle``).

        Sets what the stdlib's sets (``command``, ``path``, ``request_version``,
        ``requestline``, ``headers``, ``close_connection``) and answers
        ``Expect: 100-continue`` the same way.  On a malformed head it sends
        the error (a real status line with the standard reason phrase, the
        detail in the body, ``Connection: close``) and returns False; on a
        head cut short by EOF it sends nothing and returns False.  A request
        with a body gets ``rfile`` bounded to that body.
        """
        self.command = None  # type: ignore[assignment]
        self.request_version = self.default_request_version
        self.close_connection = True
        self._graceserve_keep_alive = False
        self._graceserve_forwarded = None
        raw = self.raw_requestline
        self.requestline = str(raw, "iso-8859-1").rstrip("\r\n")
        cycle = self._graceserve_cycle
        try:
            line = httpparse.parse_request_line(raw, cycle.limits)
            if line.version == "HTTP/0.9":
                return self._versionless(line)
            self.command, self.path, self.request_version = line.method, line.target, line.version
            if self.path.startswith("//"):  # as the stdlib (gh-87389): no open redirects
                self.path = "/" + self.path.lstrip("/")
            fields, framing = cycle.read_head(line)
            self.headers = httpparse.to_message(fields)
        except httpparse.RequestError as exc:
            if cycle.conn.to_busy() == FORCED:
                return False  # the drain cut it by force: never answered (as WSGI)
            if self.request_version == "HTTP/0.9":
                self.request_version = "HTTP/1.0"
            self.send_error(exc.status, None, exc.message)
            return False
        except httpparse.IncompleteHeadError:
            return False  # EOF, or the drain's cut, inside the head: never dispatch it
        if framing.keep_alive and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
            self._graceserve_keep_alive = line.version == "HTTP/1.0"
        if framing.has_body:
            # Handlers written for the stdlib de-chunk a chunked body themselves: they
            # get its bytes as sent (timed), and the connection ends after it.
            self.rfile = cycle.open_body(framing, raw=framing.chunked)
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
            self.send_error(400, None, f"Bad HTTP/0.9 request type ({line.method!r})")
            return False
        if stdlib_default:
            self.send_error(505, None, "HTTP/0.9 is not supported")
            return False
        self.command, self.path = line.method, line.target
        self.headers = httpparse.to_message([])
        return True

    def send_response_only(self, code: int, message: str | None = None) -> None:
        """Start a response; an interim one (1xx, as for ``Expect``) is left alone."""
        self._graceserve_interim = code < 200
        if code >= 200:
            self._graceserve_status = self._graceserve_cycle.status = code
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
        elif self._graceserve_cycle.ending():
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
