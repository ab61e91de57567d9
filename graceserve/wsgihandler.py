"""One WSGI connection: the request loop, the environ, start_response and response framing.

Why this module exists: ``BaseHTTPRequestHandler`` parses every head through
``email.parser`` (its largest per-request cost, and lenient where leniency is
a smuggling hole) and writes head and body in separate calls.  A WSGI
connection needs neither: the head is read with ``graceserve.httpparse``,
the environ dict is built directly from its fields, and the response head
goes out in one ``sendall`` together with the first body chunk.

The drain hooks are those of ``DrainAwareRequestHandler``: between requests
the thread blocks in ``rfile.readline`` with the ``Connection`` record marked
idle (the reaper may cut it); while a head arrives it is marked reading;
a head cut short (EOF, or our own cut) is never dispatched; once the
listener has closed every response says ``Connection: close``.

Threading contract: a ``WSGIConnection`` is used by its connection's thread
only; it touches the shared ``Connection`` record under the registry lock.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote_to_bytes

from . import httpparse, proxy
from .accesslog import AccessRecord, bare_record
from .bodyreader import RequestBody
from .httphandler import HTTPConnection
from .httpparse import Body, Framing, IncompleteHeadError, RequestError, RequestLine
from .server import FORCED, OPEN, format_address
from .tls import raw_socket
from .wsgiresponse import FileWrapper, Response

if TYPE_CHECKING:
    from .headbudget import HeadMeter
    from .wsgi import GracefulWSGIServer

__all__ = ["WSGIConnection", "http_date"]

log = logging.getLogger("graceserve")

# The socket file's buffer: every ordinary head fits (a head is read at once when it
# is all in the buffer; the head budget's free allowance is the same 16 KiB), bodies
# bypass it (read1 with an empty buffer reads straight into the result), and what an
# idle connection keeps resident after a large request stays small (1,000 idle
# connections after a 48 KiB head: 43 KiB each, against 88 KiB with 64 KiB).
_RFILE_BUFFER = 16384
_SPECIAL = {"CONTENT_TYPE": "CONTENT_TYPE", "CONTENT_LENGTH": "CONTENT_LENGTH"}
_environ_keys: dict[str, str | None] = {}  # header name as sent -> environ key (None: dropped)
_MAX_CACHED_KEYS = 4096


def _environ_key(name: str) -> str | None:
    """``HTTP_X_FOO`` for ``X-Foo``; None for a name with ``_`` (it would alias ``-``)."""
    key = _environ_keys.get(name)
    if key is None and name not in _environ_keys:
        if "_" in name:
            key = None
        else:
            upper = name.upper().replace("-", "_")
            key = _SPECIAL.get(upper) or "HTTP_" + upper
        if len(_environ_keys) < _MAX_CACHED_KEYS:  # bounded: names are client-chosen
            _environ_keys[name] = key
    return key


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The current time as an IMF-fixdate, recomputed once a second.  Thread-safe."""
    global _date_cache
    now = int(time.time())
    cached = _date_cache
    if cached[0] != now:
        cached = (now, formatdate(now, usegmt=True))
        _date_cache = cached
    return cached[1]


class _EmptyInput:
    """``wsgi.input`` for a request without a body: always at its end.  Stateless."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


_EMPTY_INPUT = _EmptyInput()


class WSGIConnection:
    """Serves the requests of one connection, in order, until it must end.

    Created and run by ``GracefulWSGIServer.finish_request`` in the
    connection's own thread.
    """

    def __init__(
        self, server: GracefulWSGIServer, request: socket.socket, client_address: Any
    ) -> None:
        self.server = server
        self.request = request
        self.client_address = client_address
        self.rfile: BinaryIO = request.makefile("rb", _RFILE_BUFFER)  # type: ignore[assignment]
        registry = server.registry
        self.conn = registry.get(raw_socket(request))
        self.lock = registry.lock
        meter: HeadMeter | None = getattr(self.conn, "head", None)
        self.meter = meter  # this connection's meter on the head budget
        self.on_line: Callable[[bytes], object] | None = None if meter is None else meter.line
        self.closing = False  # this connection ends after the current response
        self.started = 0.0  # when the current request line arrived
        environ = dict(server.base_environ)
        environ["wsgi.url_scheme"] = server.url_scheme
        if isinstance(client_address, tuple) and client_address != ("unix", 0):
            environ["REMOTE_ADDR"] = str(client_address[0])
            environ["REMOTE_PORT"] = str(client_address[1])
        else:
            environ["REMOTE_ADDR"] = environ["REMOTE_PORT"] = ""
        self.peer = environ["REMOTE_ADDR"] or "unix"
        self.proxied = server.trust.trusts(self.peer)  # believe its X-Forwarded-* fields
        self.connection_environ = environ

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Serve requests until the client leaves, asks to close, or the drain ends us."""
        try:
            while self.serve_one():
                pass
        finally:
            self.rfile.close()

    # State changes, as the reaper sees them (``Connection`` fields).  Only the
    # move out of idle takes the registry lock, together with the read of
    # ``cut``: a connection the reaper closes while idle either never reads its
    # request, or knows it raced the close.  The other moves are single
    # attribute writes (atomic), ordered so the reaper never sees a state with
    # a stale timestamp: one lock round-trip per request.

    def _to_idle(self) -> int:
        """Waiting for the next request (the reaper may close us); what was done to us."""
        conn = self.conn
        if conn is None:
            return OPEN
        conn.reading = False
        conn.idle_since = time.monotonic()
        conn.idle = True
        return conn.cut

    def _to_reading(self) -> int:
        """A request (head or body) is arriving; what was done to us meanwhile."""
        conn = self.conn
        if conn is None:
            return OPEN
        now = time.monotonic()
        with self.lock:
            gap = now - conn.idle_since
            conn.idle_since = now
            conn.reading = True
            conn.idle = False
            cut = conn.cut
        if isinstance(conn, HTTPConnection):
            conn.note_gap(gap)  # the drain's linger learns this connection's rhythm
        return cut

    def _to_busy(self) -> int:
        """Serving a request: neither idle nor reading; what was done to us."""
        conn = self.conn
        if conn is None:
            return OPEN
        conn.reading = False
        conn.idle = False
        return conn.cut

    def serve_one(self) -> bool:
        """Read and answer one request; True if the connection may carry another."""
        if self._to_idle() != OPEN:
            return False
        limits = self.server.limits
        try:
            line = self.rfile.readline(limits.request_line + 3)
            if line in (b"\r\n", b"\n"):  # RFC 9112 2.2: one empty line before a request is ok
                line = self.rfile.readline(limits.request_line + 3)
        except OSError:
            line = b""
        self.started = time.monotonic()
        state = self._to_reading()
        if state == FORCED or not line:
            return False
        if state != OPEN:  # a request raced the close of an idle connection: answer, then close
            self.closing = True
        if not line.endswith(b"\n") and len(line) <= limits.request_line + 1:
            return False  # EOF inside the request line: incomplete, never dispatched
        try:
            request_line = httpparse.parse_request_line(line, limits)
            if request_line.version == "HTTP/0.9":  # no header block follows: answer now
                self._to_busy()
                self.send_error(505, "HTTP/0.9 is not supported", version="HTTP/1.0")
                return False
            fields = httpparse.read_fields(self.rfile.readline, limits, on_line=self.on_line)
            framing = httpparse.framing(request_line, fields, limits)
        except IncompleteHeadError:
            return False
        except OSError:
            return False
        except RequestError as exc:
            if self._to_busy() != FORCED:
                self.send_error(exc.status, exc.message)
            return False
        if self._to_busy() == FORCED:
            return False  # the head was cut half-way: never act on it
        if not framing.keep_alive:
            self.closing = True
        keep = self.handle_request(request_line, fields, framing)
        meter = self.meter
        if meter is not None and meter.charged:  # a long head: its request is done
            meter.release()
        return keep

    # -- one request --------------------------------------------------------

    def make_environ(
        self, request_line: RequestLine, fields: list[tuple[str, str]], framing: Framing
    ) -> dict[str, Any]:
        """The PEP 3333 environ for one request (``wsgi.input`` is set by the caller)."""
        environ = self.connection_environ.copy()
        target = request_line.target
        environ["REQUEST_METHOD"] = request_line.method
        environ["SERVER_PROTOCOL"] = request_line.version
        environ["REQUEST_URI"] = target
        authority = None
        if target[:1] != "/":  # absolute-form (or * / authority-form): keep the path
            authority, target = _split_absolute(target)
        path, _, query = target.partition("?")
        if "%" in path:  # the bytes as sent, decoded once (a str would be UTF-8 encoded first)
            path = unquote_to_bytes(path.encode("latin-1")).decode("latin-1")
        root = self.server.root_path
        if root and (path == root or path.startswith(root + "/")):
            path = path[len(root) :]
        environ["PATH_INFO"] = path
        environ["QUERY_STRING"] = query
        for name, value in fields:
            key = _environ_key(name)
            if key is None:
                continue
            if key in environ and key.startswith("HTTP_"):
                joiner = "; " if key == "HTTP_COOKIE" else ","
                environ[key] = environ[key] + joiner + value
            else:
                environ[key] = value
        if authority:  # RFC 9112 3.2.2: the target's authority replaces Host
            environ["HTTP_HOST"] = authority
        if framing.chunked:
            environ.pop("CONTENT_LENGTH", None)
        elif framing.content_length is not None:
            environ["CONTENT_LENGTH"] = str(framing.content_length)
        if self.proxied:
            _apply_forwarded(
                environ, proxy.forwarded_from_environ(self.peer, environ, self.server.trust)
            )
        return environ

    def handle_request(
        self, request_line: RequestLine, fields: list[tuple[str, str]], framing: Framing
    ) -> bool:
        """Call the application for one request and send its response; True to keep going."""
        environ = self.make_environ(request_line, fields, framing)
        response = Response(self, request_line, framing)
        body: Body | None = None
        if framing.has_body:
            before = response.send_continue if framing.expect_continue else None
            body = Body(self.body_source(), framing, self.server.limits, before)
            environ["wsgi.input"] = response.body = body
        else:
            environ["wsgi.input"] = _EMPTY_INPUT
        client = environ["REMOTE_ADDR"] or "-"  # as we set it, whatever the app does to environ
        keep = response.run(self.server.application, environ, response.start)
        access = self.server.access_logger
        if access is not None:
            path, _, query = request_line.target.partition("?")
            access.write(
                AccessRecord(
                    time=time.time(),
                    client=client,
                    method=request_line.method,
                    path=path,
                    query=query,
                    protocol=request_line.version,
                    status=int(response.status[:3]) if response.status else 0,
                    bytes=response.sent,
                    duration=time.monotonic() - self.started,
                    user_agent=environ.get("HTTP_USER_AGENT", ""),
                    referer=environ.get("HTTP_REFERER", ""),
                )
            )
        elif log.isEnabledFor(logging.DEBUG):  # no access log: --log-level debug has one
            log.debug(
                '%s "%s %s %s" %s %d', self.client_text(), request_line.method,
                request_line.target, request_line.version,
                response.status[:3] if response.status else "-", response.sent,
            )  # fmt: skip
        self.server.hooks.request_done()  # graceserve.serverhooks: --max-requests counts it
        if not keep or self.closing:
            return False
        if body is not None and not body.complete:
            if framing.expect_continue and not response.continue_sent:
                return False  # the client may never send a body we did not ask for
            if not body.discard(self.server.discard_limit):
                return False
        return True

    def body_source(self) -> BinaryIO:
        """What a request body is read from: ``rfile``, timed for the reaper.

        Each blocking read marks the connection as reading a body, and its
        progress moves the reaper's clock: a client that stops sending half-way
        is cut by the idle timeout (and at the drain, after the linger) instead
        of holding the application's thread for ever.
        """
        conn = self.conn
        if not isinstance(conn, HTTPConnection):
            return self.rfile
        return RequestBody(self.rfile, conn, None)  # type: ignore[return-value]

    # -- output -------------------------------------------------------------

    def ending(self) -> bool:
        """Whether the current response must end the connection (``Connection: close``)."""
        if self.closing:
            return True
        if self.server.listener_closed:
            self.closing = True
            return True
        return False

    def send_error(self, status: int, message: str, version: str = "HTTP/1.1") -> None:
        """Answer a request we will not dispatch (malformed, over a limit), and close."""
        self.closing = True
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = (message + "\n").encode("latin-1", "replace")
        head = (
            f"{version} {status} {phrase}\r\n"
            f"Date: {http_date()}\r\n"
            f"Server: {self.server.server_software}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        log.debug("%s: %d %s", format_address(self.client_address), status, message)
        with contextlib.suppress(OSError):
            self.request.sendall(head + body)
        if self.server.access_logger is not None:
            taken = time.monotonic() - self.started
            self.server.access_logger.write(bare_record(self.peer, status, len(body), taken))

    def date(self) -> str:
        """The ``Date`` header value."""
        return http_date()

    def client_text(self) -> str:
        """The client's address, for log lines."""
        return format_address(self.client_address)

    def log_app_error(self, environ: dict[str, Any], what: str) -> None:
        """Log the exception being handled, once, with its traceback."""
        log.error(
            "%s while serving %s %s for %s",
            what,
            environ.get("REQUEST_METHOD", "?"),
            environ.get("REQUEST_URI", "?"),
            format_address(self.client_address),
            exc_info=sys.exc_info(),
        )


def _apply_forwarded(environ: dict[str, Any], forwarded: proxy.Forwarded) -> None:
    """Put what a trusted proxy forwarded where a WSGI app looks for it."""
    if forwarded.client is not None:
        environ["REMOTE_ADDR"] = forwarded.client
        environ["REMOTE_PORT"] = forwarded.port or ""
    if forwarded.proto is not None:
        environ["wsgi.url_scheme"] = forwarded.proto
    if forwarded.host is not None:
        environ["HTTP_HOST"] = forwarded.host


def _split_absolute(target: str) -> tuple[str | None, str]:
    """An absolute-form target's authority and its path and query.

    ``*`` and authority-form give (None, '').
    """
    _scheme, sep, rest = target.partition("://")
    if not sep:
        return None, ""
    slash = rest.find("/")
    question = rest.find("?")
    if slash < 0 or (0 <= question < slash):
        end = question if question >= 0 else len(rest)
        return rest[:end], "/" + rest[question:] if question >= 0 else "/"
    return rest[:slash], rest[slash:]


def make_base_environ(server: GracefulWSGIServer) -> dict[str, Any]:
    """The environ keys that are the same for every request of a server."""
    stopping: Callable[[], bool] = lambda: server.stopping  # noqa: E731
    return {
        "SERVER_NAME": str(server.server_name),
        "SERVER_PORT": str(server.server_port),
        "SCRIPT_NAME": server.root_path,
        "SERVER_SOFTWARE": server.server_software,
        "GATEWAY_INTERFACE": "CGI/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": server.multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
        "graceserve.stopping": stopping,
    }
