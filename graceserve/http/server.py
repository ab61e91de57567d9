"""GracefulHTTPServer: http.server.ThreadingHTTPServer with a keep-alive-aware drain.

Why this module exists: an HTTP/1.1 client treats EOF on a keep-alive
connection as an error unless the last response said ``Connection: close``,
and a close of an idle connection always races a client about to send.  The
server's lever is *when* it closes.  So a polite HTTP drain ends every
connection at a moment the client accepts:

- a request in flight finishes, and its response carries ``Connection: close``;
- an idle keep-alive connection is given its *linger* to send one more request
  (answered with ``Connection: close``): a small multiple of that connection's
  own recent gaps between a response and the next request (at least
  ``drain_linger``), counted from its last response, and never more than
  ``drain_linger_max`` from the drain's start; one idle for longer, with
  nothing queued on it, gets a FIN at once;
- a request that is still arriving (an unfinished head, a stalled body) is not
  work in flight: it gets ``drain_linger_max`` to make progress, then is closed;
- a request that raced the close, or a head cut half-way, is never dispatched
  truncated (the race guard in ``DrainAwareRequestHandler``).

The user's handler stays a plain ``BaseHTTPRequestHandler`` subclass: the
server serves it through a subclass (``DrainAware[Handler]``) that puts
``DrainAwareRequestHandler`` just above ``BaseHTTPRequestHandler`` in its MRO.
Timeouts and the drain are enforced from the outside by the reaper
(``service_actions`` and ``service_drain``), from the state each handler
records on its ``HTTPConnection``; a response that a client stops reading is
bounded by the kernel (``SO_SNDTIMEO``, set once per connection: a send that
makes no progress for ``idle_timeout`` fails, at no cost per write), and over
TLS, where the ssl module retries past that bound, by the reaper watching the
send queue; a request body trickled below ``min_body_rate`` is cut by the
reaper too (``graceserve.http.slowclients``).  Long request heads share one memory
budget (``graceserve.http.headbudget``).  At ``max_connections`` with a
client queued, the oldest idle keep-alive connections are closed politely to
make room (``reclaim_idle``).
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
from typing import Any

from graceserve.core.connection import format_address
from graceserve.core.options import TCPOptions
from graceserve.core.server import Connection, GracefulTCPServer
from graceserve.http import parse as httpparse
from graceserve.http import slowclients, tls
from graceserve.http.accesslog import AccessLog, open_access_log
from graceserve.http.bodyreader import DISCARD_LIMIT
from graceserve.http.connection import BODY, BUSY, HEAD, IDLE, HTTPConnection
from graceserve.http.handler import DrainAwareRequestHandler, make_drain_aware
from graceserve.http.headbudget import DEFAULT_ALLOWANCE, DEFAULT_BUDGET, HeadBudget
from graceserve.http.options import HTTPOptions
from graceserve.http.proxy import Trust, parse_allow_ips
from graceserve.settings import DEFAULTS

log = logging.getLogger("graceserve")

__all__ = [
    "BODY",
    "BUSY",
    "HEAD",
    "IDLE",
    "DrainAwareRequestHandler",
    "GracefulHTTPServer",
    "HTTPConnection",
]

RHYTHM_FACTOR = 3.0  # a connection's linger: this many times its recent gaps (then bounded)

# The stdlib's own head limits (http.client._MAXLINE, _MAXHEADERS), for a subclass
# that wants them back (``request_limits = STDLIB_LIMITS``).
STDLIB_LIMITS = httpparse.Limits(request_line=65536, fields=100, field_size=65536)


class GracefulHTTPServer(GracefulTCPServer, http.server.ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` whose drain ends keep-alive connections cleanly.

    Serves any ``BaseHTTPRequestHandler`` subclass unchanged (or a
    ``functools.partial`` of one, as ``http.server`` does for ``--directory``).

    Options: ``graceserve.http.options.HTTPOptions``, applied once in the
    constructor, before the bind: ``GracefulHTTPServer(address, Handler,
    options=HTTPOptions(idle_timeout=5))``.  The TLS context is built, the access
    log opened, the proxy trust parsed and ``limits`` computed there, so an
    unusable option fails at construction (``tls.TLSSettingsError``, OSError,
    ValueError), never at the first request.  Compatibility rule: without
    ``options=``, each option is the class attribute of its name (``class
    S(GracefulHTTPServer): idle_timeout = 5`` keeps working); an explicit
    ``options=`` wins.  The options are marked (option) below.

    Class variables (in addition to GracefulTCPServer's):

    - idle_timeout = 60.0       (option) close a keep-alive connection idle this long, a
                                request head still arriving after this long, a
                                request body that made no progress for this long,
                                or a response the client stopped reading this long
    - min_body_rate = 500       (option) bytes/s a request body must average over each
                                ``idle_timeout`` of waiting for it (None: no minimum)
    - head_budget = 32 MiB      bytes of field lines that request heads may hold
                                beyond ``head_allowance`` each, in all, until their
                                request is done; a head that finds none left gets
                                503 (None: no budget)
    - head_allowance = 16 KiB   what each head may hold without drawing on it
    - drain_linger = 0.2        at drain, the least an idle keep-alive connection
                                is given to send one more request (answered with
                                ``Connection: close``), from its last response
    - drain_linger_max = 2.0    (option) the most it is given (a connection with a slow
                                rhythm), and what an unfinished request is given
                                to make progress; a runner gives a fraction of
                                the grace
    - limit_request_line = 8190       (option) bytes in the request line (414 beyond)
    - limit_request_fields = 100      (option) header fields (431 beyond)
    - limit_request_field_size = 8190 (option) bytes in one header field line (431 beyond)
    - max_body_size = None            (option) bytes of request body (413 beyond);
                                      None: no limit
    - request_limits = None     an ``httpparse.Limits`` that replaces the four above
    - discard_limit = 65536     unread body bytes discarded to keep a connection;
                                more than that and the connection is closed
    - tcp_nodelay = True        no Nagle stall between header and body writes
    - health_path = None        (option) a path (``/healthz``) that graceserve answers itself,
                                for any target: GET/HEAD get 200 ``ok``, then 503
                                ``stopping`` from the moment a stop begins (the
                                lame duck of ``--drain-delay`` included); not in the
                                access log; None: every path is the app's

    - certfile, keyfile, ca_certs, cert_reqs   (options) TLS (``graceserve.http.tls``);
                                or set ``ssl_context`` yourself
    - tls_handshake_timeout = 10.0   seconds a client gets to finish its handshake
    - access_log, access_log_format  (options) ``-`` or a path, combined or json
                                (``graceserve.http.accesslog``); None: off
    - forwarded_allow_ips       (option) peers whose X-Forwarded-* / Forwarded
                                headers are believed (``graceserve.http.proxy``)

    Threading contract: as GracefulTCPServer.
    """

    idle_timeout: float | None = DEFAULTS.idle_timeout
    min_body_rate: float | None = DEFAULTS.min_body_rate
    head_budget: int | None = DEFAULT_BUDGET
    head_allowance: int = DEFAULT_ALLOWANCE
    drain_linger = 0.2
    drain_linger_max = DEFAULTS.drain_linger_max
    limit_request_line = DEFAULTS.limit_request_line
    limit_request_fields = DEFAULTS.limit_request_fields
    limit_request_field_size = DEFAULTS.limit_request_field_size
    max_body_size: int | None = DEFAULTS.max_body_size
    request_limits: httpparse.Limits | None = None
    discard_limit = DISCARD_LIMIT
    tcp_nodelay = True
    health_path: str | None = DEFAULTS.health_path
    certfile: str | None = DEFAULTS.certfile
    keyfile: str | None = DEFAULTS.keyfile
    ca_certs: str | None = DEFAULTS.ca_certs
    cert_reqs: str = DEFAULTS.cert_reqs
    tls_handshake_timeout: float | None = 10.0
    ssl_context: ssl.SSLContext | None = None
    access_log: str | None = DEFAULTS.access_log
    access_log_format: str = DEFAULTS.access_log_format
    access_logger: AccessLog | None = None
    forwarded_allow_ips: str = DEFAULTS.forwarded_allow_ips
    trust: Trust = parse_allow_ips(DEFAULTS.forwarded_allow_ips)
    options_class: type[HTTPOptions] = HTTPOptions
    options: HTTPOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._handler_classes: dict[Any, Any] = {}
        self._handler_classes_lock = threading.Lock()
        self._next_reap = 0.0
        self._heads: HeadBudget | None = None  # made at the first connection (settings first)
        self._reclaimed = 0  # idle keep-alive connections closed to make room at the cap
        self._reclaim_logged_at: float | None = None
        super().__init__(*args, **kwargs)

    def apply_options(self, options: TCPOptions) -> None:
        """Put ``options`` in force: the limits, the proxy trust, the TLS context, the
        access log.  Once, from the constructor, before the bind.

        Raises ``tls.TLSSettingsError`` (a certificate that does not load),
        OSError (an access log that cannot be opened) or ValueError (a bad
        ``forwarded_allow_ips``); the runner turns each into one line and exit
        code 3.
        """
        super().apply_options(options)
        self.setup_limits()
        self.trust = parse_allow_ips(self.forwarded_allow_ips)
        if self.certfile is not None:
            self.ssl_context = tls.build_context(
                self.certfile, self.keyfile, self.ca_certs, self.cert_reqs
            )
        self.access_logger = open_access_log(self.access_log, self.access_log_format)

    def server_bind(self) -> None:
        """Bind (on a Unix socket, without http.server's host:port bookkeeping)."""
        if self.address_family != socket.AF_UNIX:
            super().server_bind()
        else:
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = "localhost", 0
            self.server_bound()

    def setup_limits(self) -> None:
        """(Re)compute ``limits`` from ``request_limits`` or the ``limit_*`` options.

        Called by the constructor; call again after changing them.
        """
        self.limits = self.request_limits or httpparse.Limits(
            request_line=self.limit_request_line,
            fields=self.limit_request_fields,
            field_size=self.limit_request_field_size,
            body=self.max_body_size,
        )

    def accept_from(self, listener: socket.socket) -> tuple[socket.socket, Any]:
        """Accept a connection on ``listener``, with ``TCP_NODELAY`` and the write bound set."""
        request, client_address = listener.accept()
        if self.idle_timeout:
            # A send blocked this long without progress fails with EAGAIN
            # (BlockingIOError): the thread of a client that stopped reading is freed.
            seconds, fraction = divmod(self.idle_timeout, 1.0)
            bound = struct.pack("ll", int(seconds), int(fraction * 1_000_000))
            with contextlib.suppress(OSError):
                request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
        if listener.family == socket.AF_UNIX:
            return request, ("unix", 0)  # http.server logs client_address[0]
        if self.tcp_nodelay:
            with contextlib.suppress(OSError):
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return request, client_address

    def make_connection(self, request: socket.socket, client_address: Any) -> HTTPConnection:
        """The registry record: an ``HTTPConnection`` (its handler records its state there),
        with a meter on the head budget."""
        conn = HTTPConnection(request, client_address, self.registry)
        heads = self._heads
        if heads is None and self.head_budget is not None:
            with self._handler_classes_lock:
                if self._heads is None:
                    self._heads = HeadBudget(self.head_budget, self.head_allowance)
                heads = self._heads
        if heads is not None:
            conn.head = heads.meter()
        return conn

    @property
    def heads(self) -> HeadBudget | None:
        """The head budget (None before the first connection, or with ``head_budget`` None)."""
        return self._heads

    @property
    def url_scheme(self) -> str:
        """``https`` when serving TLS, else ``http``."""
        return "http" if self.ssl_context is None else "https"

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection (after its TLS handshake, when serving TLS)."""
        conn = self.registry.get(request)
        try:
            context = self.ssl_context
            if context is None:
                self.serve_connection(request, client_address)
                return
            if isinstance(conn, HTTPConnection):  # the reaper times the handshake as a head
                conn.to_handshake(time.monotonic())
            timeout = self.tls_handshake_timeout
            with tls.secured(context, request, client_address, timeout) as stream:
                if stream is None:
                    return
                if isinstance(conn, HTTPConnection):
                    # (Its first request, a round trip or more after the handshake, gets
                    # the longest linger at a drain, as on every connection not yet used.)
                    conn.watch_writes = True  # SO_SNDTIMEO does not bound TLS writes
                self.serve_connection(stream, client_address)
        finally:
            head = getattr(conn, "head", None)
            if head is not None:  # a head the connection ended in the middle of
                head.release()

    def serve_connection(self, request: Any, client_address: Any) -> None:
        """Serve the connection with the drain-aware variant of the handler class."""
        self.drain_aware(self.RequestHandlerClass)(request, client_address, self)

    def server_close(self) -> None:
        """Drain and close (as GracefulTCPServer), then close the access log."""
        super().server_close()
        writer, self.access_logger = self.access_logger, None
        if writer is not None:
            writer.close()

    def drain_aware(self, handler_class: Any) -> Any:
        """The handler class to use for ``handler_class``: a cached drain-aware subclass.

        ``BaseHTTPRequestHandler`` subclasses get ``DrainAwareRequestHandler``
        slotted in (class ``DrainAware[Name]``); a ``functools.partial`` of one
        is rebuilt around that subclass; anything else is returned unchanged
        (and is then only cut at the deadline).  Thread-safe.
        """
        with self._handler_classes_lock:
            cached = self._handler_classes.get(handler_class)
            if cached is None:
                cached = make_drain_aware(handler_class)
                self._handler_classes[handler_class] = cached
            return cached

    # -- the reaper -----------------------------------------------------------

    def service_actions(self) -> None:
        """Close connections idle (or stalled mid-request) past ``idle_timeout``.

        Called by serve_forever.  The registry is scanned once per quarter of
        the timeout (0.5 s at most), not on every accept.
        """
        super().service_actions()
        if self.idle_timeout is None or self.draining:
            return
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + min(self.idle_timeout / 4, 0.5)
            self._reap(now, draining=False)

    def service_drain(self) -> float | None:
        """Close idle and unfinished connections whose linger has passed; say when to look again."""
        super().service_drain()
        return self._reap(time.monotonic(), draining=True)

    def linger_until(self, conn: Connection, since: float, started: float) -> float:
        """Until when an idle ``conn`` (idle from ``since``) may send one more request.

        Three times its recent gaps (at least ``drain_linger``) from its last
        response, but never past ``drain_linger_max`` from the drain's start
        (``started``): a connection with a slow rhythm gets the whole bound,
        one idle for longer than its rhythm says gets a FIN at once.  A
        connection that has not sent its first request has no rhythm yet and
        is about to send (an EOF on a fresh connection is an error no client
        retries): it gets ``drain_linger_max`` from when it began to wait.
        """
        linger = RHYTHM_FACTOR * getattr(conn, "rhythm", 0.0)
        if not getattr(conn, "used", True) and linger < self.drain_linger_max:
            linger = self.drain_linger_max
        if linger < self.drain_linger:
            linger = self.drain_linger
        return min(since + linger, started + max(self.drain_linger_max, self.drain_linger))

    def _reap(self, now: float, draining: bool) -> float | None:
        """Cut connections whose time is up; while draining, when to run again.

        Outside the drain: idle, unfinished heads and stalled bodies past
        ``idle_timeout``.  While draining: idle connections past their linger,
        unfinished requests without progress for ``drain_linger_max`` since the
        drain began or their last progress.

        Locking, and why: the registry is read under its lock, once, into a
        snapshot; the decisions and the ``recv(MSG_PEEK)`` checks are made
        outside it, so handlers changing state are not held up by our system
        calls.  A peek may hit a socket closed meanwhile (EBADF: "nothing
        queued") or, if its descriptor was reused, another connection (MSG_PEEK
        reads nothing away): either way a wrong answer only nominates a
        candidate.  Each cut is then made under the lock, and only if the
        connection is still registered in the very state (and ``since``) the
        decision was made on.  The ``shutdown`` itself stays under the lock: a
        socket is closed only after it is unregistered, and unregistering takes
        this lock, so under it the descriptor cannot have been closed and
        reused by a new connection; outside it, a shutdown could hit an
        innocent one.  It is one short, non-blocking call per cut, never per
        request.
        """
        with self.registry.locked_items() as items:
            pass
        if not items:
            return None
        started = self.registry.started_at if draining else None
        timeout = self.idle_timeout
        linger_max = max(self.drain_linger_max, self.drain_linger)
        due: float | None = now + self.drain_linger if draining else None
        candidates: list[tuple[socket.socket, Connection, int, float]] = []
        slow: list[tuple[socket.socket, HTTPConnection, int, int, str]] = []
        for request, conn in items:
            state, since = _state_of(conn)
            if started is None and isinstance(conn, HTTPConnection) and state in (BUSY, BODY):
                why = slowclients.verdict(request, conn, state, now, timeout, self.min_body_rate)
                if why is not None:
                    slow.append((request, conn, state, conn.body_serial, why))
                    continue
            if state == BUSY:
                continue
            if started is None:  # the idle timeout
                if timeout is None or now - since < timeout:
                    continue
            elif state == IDLE:
                ripe = self.linger_until(conn, since, started)
                if ripe > now:
                    due = ripe if due is None else min(due, ripe)
                    continue
            else:  # an unfinished request: no progress since the drain began, or since it moved
                ripe = max(since, started) + linger_max
                if ripe > now:
                    due = ripe if due is None else min(due, ripe)
                    continue
            if state == IDLE and _has_queued_bytes(request):
                continue  # a request is arriving: look again
            candidates.append((request, conn, state, since))
        if slow:
            self._cut_slow(slow)
        stalled_bodies = 0
        if candidates:
            with self.registry.locked_items():
                for request, conn, state, since in candidates:
                    if _state_of(conn) == (state, since) and self.cut_connection(
                        request, forced=False
                    ):
                        stalled_bodies += state == BODY
        if stalled_bodies and draining:  # their handler or app was called: say so
            log.warning(
                "closed %d connections whose request body stopped arriving "
                "(their requests are not answered)",
                stalled_bodies,
            )
        return due

    def _cut_slow(self, slow: list[tuple[socket.socket, HTTPConnection, int, int, str]]) -> None:
        """Cut the slow clients ``slowclients.verdict`` found, if still as found; log each.

        A stalled writer is cut both ways and reset when it closes (SO_LINGER 0):
        its client reads nothing, and the unsent bytes would otherwise hold
        kernel memory for minutes.  A slow body has its reading side shut, as
        a stalled one: the handler's read meets the body's end.
        """
        cut: list[tuple[HTTPConnection, str]] = []
        with self.registry.locked_items():
            for request, conn, state, serial, why in slow:
                if conn.state != state or self.registry.get(request) is not conn:
                    continue  # moved on, or gone
                if state == BUSY:
                    with contextlib.suppress(OSError):
                        request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
                elif conn.body_serial != serial:
                    continue
                if self.cut_connection(request, forced=state == BUSY):
                    cut.append((conn, why))
        for conn, why in cut:
            log.info("%s: %s", format_address(conn.address), why)

    # -- making room at the connection cap ---------------------------------------

    def reclaim_idle(self, wanted: int) -> int:
        """Close up to ``wanted`` idle keep-alive connections, oldest idle first; how many.

        Called by the accept loop at ``max_connections`` with clients queued.
        Only a keep-alive connection (one that has sent a request: a client
        that has not sent its first one yet is bounded by the idle timeout)
        idle for longer than its linger is a candidate (the time the drain
        would give it to send one more request: three times its recent gaps,
        at least ``drain_linger``, at most ``drain_linger_max``), and never one
        with bytes queued: a connection in the middle of a burst of requests
        keeps its slot.  Each is closed as the drain closes an idle
        one (its reading side shut: the handler sees EOF and the client gets a
        FIN, or a TLS ``close_notify`` then FIN; a request that raced the close
        is answered, with ``Connection: close``).  The first close in a minute
        is logged.
        """
        if self.draining:
            return 0
        now = time.monotonic()
        with self.registry.locked_items() as items:
            pass
        idle: list[tuple[float, socket.socket, Connection]] = []
        for request, conn in items:
            if not getattr(conn, "used", False):
                continue
            state, since = _state_of(conn)
            if state == IDLE and self.linger_until(conn, since, since) <= now:
                idle.append((since, request, conn))
        idle.sort(key=lambda entry: entry[0])
        closed = 0
        for since, request, conn in idle:
            if closed >= wanted:
                break
            if _has_queued_bytes(request):
                continue  # its next request is arriving
            with self.registry.locked_items():
                if _state_of(conn) == (IDLE, since) and self.cut_connection(request, forced=False):
                    closed += 1
        if closed:
            self._reclaimed += closed
            last = self._reclaim_logged_at
            if last is None or now - last >= 60.0:
                self._reclaim_logged_at = now
                log.info(
                    "at --max-connections (%s) with clients waiting: closing idle keep-alive "
                    "connections, oldest first, to make room (%d so far)",
                    self.max_connections, self._reclaimed,
                )  # fmt: skip
        return closed


_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets, drops unsent bytes


def _state_of(conn: Connection) -> tuple[int, float]:
    """(state, since) of a registry record; a plain ``Connection`` by its flags."""
    if isinstance(conn, HTTPConnection):
        return conn.state, conn.since
    state = IDLE if conn.idle else HEAD if conn.reading else BUSY
    return state, conn.idle_since


def _has_queued_bytes(sock: socket.socket) -> bool:
    """Whether the peer has sent bytes nobody has read yet.  Never blocks."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing there (EAGAIN), or closed meanwhile
        return False
