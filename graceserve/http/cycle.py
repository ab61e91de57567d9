"""One HTTP request cycle per connection, under two dispatchers: a stdlib handler and WSGI.

Why this module exists: what makes graceserve's HTTP polite and safe happens
around the application, not in it, and it must happen the same way whatever
serves the request.  Written twice (once under ``BaseHTTPRequestHandler``,
once for WSGI) the two copies drifted: an empty line before a request, the
head limits, the reason phrase of an error, a body cut short.  So this is the
one cycle, in the order a request lives it:

1. idle: wait for the request line, the state marked for the reaper; a
   connection the drain closed meanwhile reads nothing;
2. the request line arrives (one empty line before it is skipped, RFC 9112
   2.2): reading its head, atomic with the drain's cut; a request that raced
   the close of an idle connection is answered with ``Connection: close``;
   one cut by force (or by EOF) inside its head is never dispatched;
3. the head is read strictly (``graceserve.http.parse``) under the server's
   limits and head budget; a body gets the one body reader (``httpbody.Body``
   over a ``TimedSource`` the reaper times);
4. busy: the dispatcher runs the application; every response says
   ``Connection: close`` once the listener is closed, or when the unread
   body will end the connection;
5. the unread-body rule: what the application left of the body is discarded
   (up to ``discard_limit``) or the connection ends; a body cut short (EOF,
   the idle timeout) ends it without an answer;
6. the access record, then the head budget is given back: the request is done.

A dispatcher (``Dispatcher``) fills in the steps that differ: how the head
is parsed and refused (a stdlib handler's ``parse_request`` and
``send_error``, which a user may override), how the application is called,
what the access record says.  ``serve_one`` is the only request loop body;
a ``BaseHTTPRequestHandler`` is a dispatcher by its own names
(``raw_requestline``, ``parse_request``, ``close_connection``).

Threading contract: a ``RequestCycle`` is used by its connection's thread
only; the connection's state changes go through ``HTTPConnection``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from graceserve.core.server import FORCED
from graceserve.core.serverhooks import ServerHooks
from graceserve.http import parse as httpparse
from graceserve.http.accesslog import AccessRecord
from graceserve.http.body import Body
from graceserve.http.bodyreader import TimedSource
from graceserve.http.connection import HTTPConnection
from graceserve.http.framing import framing
from graceserve.http.parse import Framing, IncompleteBodyError, RequestLine
from graceserve.http.tls import raw_socket

if TYPE_CHECKING:
    import socket

    from graceserve.core.drain import DrainController
    from graceserve.core.server import Connection
    from graceserve.http.accesslog import AccessLog

__all__ = ["CycleServer", "Dispatcher", "RequestCycle"]

log = logging.getLogger("graceserve")
_now = time.monotonic


class CycleServer(Protocol):
    """What a request cycle reads of its server (``GracefulHTTPServer`` has it all)."""

    @property
    def registry(self) -> DrainController[socket.socket, Connection]:
        """The connections, their cuts and the lock."""

    @property
    def limits(self) -> httpparse.Limits:
        """The head and body limits."""

    @property
    def discard_limit(self) -> int:
        """Unread body bytes discarded to keep a connection."""

    @property
    def access_logger(self) -> AccessLog | None:
        """The access log, if on."""

    @property
    def listener_closed(self) -> bool:
        """True once the drain closed the listener."""

    @property
    def health_path(self) -> str | None:
        """The path answered by graceserve itself (``--health-path``), or None."""

    @property
    def stopping(self) -> bool:
        """True from the moment a stop begins (the lame duck included)."""

    @property
    def hooks(self) -> ServerHooks:
        """What a worker or the runner asked to hear of (each finished request)."""


class Dispatcher(Protocol):
    """What a request cycle asks of the code that serves the request (the stdlib's names,
    so that a ``BaseHTTPRequestHandler`` is one as it stands)."""

    raw_requestline: bytes
    """The request line, set by the cycle before ``parse_request``."""
    close_connection: bool
    """True once the response ended the connection's keep-alive."""

    def parse_request(self) -> bool:
        """Read the head after ``raw_requestline`` (``RequestCycle.read_head``) and open
        its body; True to dispatch it.  False: refused (answered) or dropped."""

    def dispatch(self) -> None:
        """Call the application and send its response."""

    def request_finished(self) -> None:
        """The request was answered: put its body reader away, write its access record
        (``RequestCycle.log_access``).  Called only when there is a body, an access log or
        a long head to give back."""


class RequestCycle:
    """The request cycle of one connection (see the module's docstring)."""

    __slots__ = (
        "body",
        "closing",
        "conn",
        "framing",
        "health",
        "limits",
        "line",
        "lock",
        "meter",
        "on_line",
        "parked",
        "rfile",
        "server",
        "sock",
        "started",
        "status",
    )

    def __init__(self, server: CycleServer, request: Any, client_address: Any, rfile: Any):
        self.server = server
        self.sock = request  # what the connection speaks through (a TLS socket over TLS)
        self.rfile: BinaryIO = rfile
        registry = server.registry
        conn = registry.get(raw_socket(request))
        if not isinstance(conn, HTTPConnection):  # not registered: nobody will reap it
            conn = HTTPConnection(request, client_address)
        self.conn = conn
        self.lock = registry.lock
        self.limits: httpparse.Limits = server.limits
        self.meter = meter = conn.head  # this connection's meter on the head budget (or None)
        self.on_line = None if meter is None else meter.line
        self.closing = False  # this connection ends after the current response
        self.started = 0.0  # when the current request line arrived
        self.status = 0  # the current response's status, once sent (the dispatchers set it)
        self.body: Body | TimedSource | None = None
        self.health = server.health_path
        self.line: RequestLine | None = None  # the current request's, once its head is read
        self.framing: Framing | None = None  # and its body's framing
        self.parked = False  # idle since ``park``: the next request line finds it idle already

    # -- the loop body --------------------------------------------------------------------

    def serve_one(self, dispatcher: Dispatcher) -> bool:
        """Read, dispatch and finish one request; True if the connection may carry another."""
        raw = self.request_line()
        if raw is None:
            return False
        dispatcher.raw_requestline = raw
        self.line = self.framing = None
        self.status = 0
        answered_here = False
        try:
            if dispatcher.parse_request():
                cut = self.conn.to_busy()
                if cut:
                    if cut == FORCED:
                        return False  # the head was cut by force half-way: never act on it
                    self.closing = True  # a close (the linger ran out): answered, with close
                if self.health is not None and self.is_health_check():
                    self.answer_health(dispatcher)
                    answered_here = True
                else:
                    dispatcher.dispatch()
            else:
                self.conn.to_busy()
        except IncompleteBodyError as exc:  # EOF or the reaper's cut inside the body
            log.debug("%s: %s; closed without an answer", self.conn.address, exc)
            self.closing = True
            return False
        keep = not (dispatcher.close_connection or self.closing)
        meter = self.meter
        long_head = meter is not None and meter.charged
        if self.body is not None:
            keep = self.end_body(keep)
            dispatcher.request_finished()
        elif long_head or (self.server.access_logger is not None and not answered_here):
            dispatcher.request_finished()
        if long_head and meter is not None:  # give its memory back
            meter.release()
        # The request is done (answered, recorded): the one place, for both dispatchers.
        # graceserve.core.serverhooks: --max-requests counts it, --metrics-bind meters it
        self.server.hooks.request_done(self.status, _now() - self.started)
        return keep

    # -- the steps ------------------------------------------------------------------------

    def request_line(self) -> bytes | None:
        """Wait (idle) for the next request line; None to end the connection quietly.

        None when the drain closed the connection meanwhile, at EOF, or at EOF
        inside the line.  A line over the limit is returned (the dispatcher's
        ``httpparse.parse_request_line`` answers it 414).  A handler's own
        ``timeout`` raises TimeoutError.
        """
        conn = self.conn
        if self.parked:  # idle since it was parked (its idle time runs from then)
            self.parked = False
        elif conn.to_idle(_now()):
            return None
        limit = self.limits.request_line + 3  # CRLF, and one byte to tell "too long"
        readline = self.rfile.readline
        try:
            raw = readline(limit)
            if raw == b"\r\n" or raw == b"\n":  # RFC 9112 2.2: one empty line before is ok
                raw = readline(limit)
        except TimeoutError:
            raise
        except OSError:  # a reset: as EOF
            raw = b""
        now = _now()
        cut = conn.to_head(self.lock, now)
        self.started = now
        if cut == FORCED or not raw or (raw[-1:] != b"\n" and len(raw) < limit):
            return None  # cut, EOF, or EOF inside the request line
        if cut:  # a request raced the close of an idle connection: answer it, with close
            self.closing = True
        return raw

    def park(self) -> bool:
        """The response is out and nothing is buffered: idle from now, without a thread.

        True when the connection may be parked (its next ``request_line`` reads
        on from this idle state, as a thread blocked in its read would); False
        when the drain or the reaper closed it meanwhile (end it quietly).
        """
        if self.conn.to_idle(_now()):
            return False
        self.parked = True
        return True

    def read_head(self, line: RequestLine) -> tuple[list[tuple[str, str]], Framing]:
        """The field lines after request line ``line`` (``httpparse.parse_request_line``
        under ``limits``) and the body's framing, under the limits and the head budget;
        raises ``RequestError`` or IncompleteHeadError (never dispatch)."""
        fields = httpparse.read_fields(self.rfile.readline, self.limits, on_line=self.on_line)
        self.line = line
        self.framing = found = framing(line, fields, self.limits)
        return fields, found

    def open_body(self, framing: Framing, before: Any = None, raw: bool = False) -> Any:
        """The request's body reader: ``httpbody.Body`` (``before`` runs before its first
        read), or with ``raw`` the timed stream itself (a stdlib handler de-chunks a
        chunked body; the connection then ends after it)."""
        source = TimedSource(self.rfile, self.conn)
        if raw:
            self.closing = True
            self.body = source
            return source
        body = Body(source, framing, self.limits, before)  # type: ignore[arg-type]
        self.body = body
        return body

    def is_health_check(self) -> bool:
        """Whether the current request is a GET or HEAD of ``--health-path`` without a body."""
        line, found = self.line, self.framing
        if line is None or found is None or line.method not in ("GET", "HEAD"):
            return False
        if found.chunked or found.content_length:
            return False
        return line.target.partition("?")[0] == self.health

    def answer_health(self, dispatcher: Dispatcher) -> None:
        """Answer ``--health-path`` here, for any app: 200 ``ok`` while serving, 503
        ``stopping`` from the moment a stop begins.  Not in the access log."""
        if self.server.stopping:
            status, text = b"503 Service Unavailable", b"stopping\n"
        else:
            status, text = b"200 OK", b"ok\n"
        self.status = int(status[:3])
        close = dispatcher.close_connection or self.ending()
        head = (
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Cache-Control: no-store\r\nContent-Length: " + str(len(text)).encode() + b"\r\n"
            + (b"Connection: close\r\n" if close else b"") + b"\r\n"
        )  # fmt: skip
        line = self.line
        head_only = line is not None and line.method == "HEAD"
        self.sock.sendall(head if head_only else head + text)
        if close:
            self.closing = True

    def ending(self) -> bool:
        """Whether the response being sent must end the connection (``Connection: close``):
        a raced or cut request, a listener closed by the drain, an unread body too big to
        discard (``Body.ends_connection``)."""
        if self.closing:
            return True
        if self.server.listener_closed:
            self.closing = True
            return True
        body = self.body
        if body is None:
            return False
        if not isinstance(body, Body) or body.ends_connection(self.server.discard_limit):
            self.closing = True
            return True
        return False

    def end_body(self, keep: bool) -> bool:
        """The unread-body rule, after the response; whether the connection stays open."""
        body, self.body = self.body, None
        if body is None or not keep:
            return keep
        return isinstance(body, Body) and body.discard(self.server.discard_limit)

    def log_access(
        self,
        client: str,
        method: str,
        target: str,
        version: str,
        status: int,
        sent: int,
        user_agent: str,
        referer: str,
    ) -> None:
        """The request's access record (when the access log is on)."""
        logger = self.server.access_logger
        if logger is None:
            return
        path, _, query = target.partition("?")
        logger.write(
            AccessRecord(
                time=time.time(),
                client=client,
                method=method,
                path=path,
                query=query,
                protocol=version,
                status=status,
                bytes=sent,
                duration=_now() - self.started,
                user_agent=user_agent,
                referer=referer,
            )
        )
