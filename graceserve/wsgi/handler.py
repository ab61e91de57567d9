"""The request cycle's WSGI dispatcher: the environ, the app call, the access record.

Why this module exists: ``BaseHTTPRequestHandler`` parses every head through
``email.parser`` (its largest per-request cost, and lenient where leniency is
a smuggling hole) and writes head and body in separate calls.  A WSGI
connection needs neither: the head is read with ``graceserve.http.parse``,
the environ dict is built directly from its fields, and the response head
goes out in one ``sendall`` together with the first body chunk.

The cycle itself (states for the reaper, the race guard, limits, the body
reader, ``Connection: close`` once the listener has closed, the unread-body
rule) is the one a stdlib handler gets too: ``graceserve.http.cycle``; this
module fills in the WSGI steps (``Dispatcher``).  The response is
``graceserve.wsgi.response``.

Threading contract: a ``WSGIConnection`` is used by its connection's thread
only.
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
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote_to_bytes

from graceserve.core.server import FORCED, format_address
from graceserve.http import parse as httpparse
from graceserve.http import proxy
from graceserve.http.accesslog import bare_record
from graceserve.http.cycle import CycleServer, RequestCycle
from graceserve.http.parse import Framing, IncompleteHeadError, RequestError, RequestLine
from graceserve.logformat import json_lines
from graceserve.wsgi.errors import ErrorStream
from graceserve.wsgi.response import FileWrapper, Response

WSGIApplication = Any
"""A PEP 3333 application: ``app(environ, start_response) -> iterable of bytes``."""


class EnvironServer(Protocol):
    """What the environ is made of (``GracefulWSGIServer`` has it all)."""

    @property
    def server_name(self) -> str: ...

    @property
    def server_port(self) -> int: ...

    @property
    def root_path(self) -> str:
        """SCRIPT_NAME."""

    @property
    def server_software(self) -> str: ...

    @property
    def multiprocess(self) -> bool:
        """``wsgi.multiprocess``."""

    @property
    def stopping(self) -> bool:
        """True once the drain began (``environ["graceserve.stopping"]()``)."""


class ConnectionServer(CycleServer, EnvironServer, Protocol):
    """What a WSGI connection reads of its server (``GracefulWSGIServer`` has it all)."""

    @property
    def application(self) -> WSGIApplication: ...

    @property
    def base_environ(self) -> dict[str, Any]: ...

    def base_environ_for(self, request: Any) -> dict[str, Any]: ...

    @property
    def url_scheme(self) -> str: ...

    @property
    def trust(self) -> proxy.Trust: ...


__all__ = ["WSGIConnection", "http_date"]

log = logging.getLogger("graceserve")

# The socket file's buffer: every ordinary head fits (a head is read at once when it
# is all in the buffer; the head budget's free allowance is the same 16 KiB), bodies
# bypass it (read1 with an empty buffer reads straight into the result), and what an
# idle connection keeps resident after a large request stays small (1,000 idle
# connections after a 48 KiB head: 43 KiB each, against 88 KiB with 64 KiB).
RFILE_BUFFER = 16384
_SPECIAL = {"CONTENT_TYPE": "CONTENT_TYPE", "CONTENT_LENGTH": "CONTENT_LENGTH"}
_environ_keys: dict[str, str | None] = {}  # header name as sent -> environ key (None: dropped)
_MAX_CACHED_KEYS = 4096
_UNKNOWN = ""  # _environ_keys.get's default: no key is empty
AccessRecordArgs = tuple[str, str, str, str, int, int, str, str]


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


_date_cache: tuple[float, float, str] = (0.0, 0.0, "")  # [second, next) -> IMF-fixdate
_time = time.time


def http_date() -> str:
    """The current time as an IMF-fixdate, recomputed once a second.  Thread-safe."""
    global _date_cache
    now = _time()
    cached = _date_cache
    if not cached[0] <= now < cached[1]:  # a new second (or the clock was set back)
        second = int(now)
        cached = (second, second + 1, formatdate(second, usegmt=True))
        _date_cache = cached
    return cached[2]


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
    """The request cycle's WSGI dispatcher: serves one connection's requests, in order.

    Created and run by ``GracefulWSGIServer.finish_request`` in the
    connection's own thread.
    """

    def __init__(
        self,
        server: ConnectionServer,
        request: socket.socket,
        client_address: Any,
        rfile: BinaryIO | None = None,
    ) -> None:
        self.server = server
        self.request = request
        self.client_address = client_address
        if rfile is None:
            rfile = request.makefile("rb", RFILE_BUFFER)  # type: ignore[assignment]
        self.rfile: BinaryIO = rfile  # type: ignore[assignment]
        self.cycle = RequestCycle(server, request, client_address, self.rfile)
        environ = dict(server.base_environ_for(request))
        environ["wsgi.url_scheme"] = server.url_scheme
        if isinstance(client_address, tuple) and client_address != ("unix", 0):
            environ["REMOTE_ADDR"] = str(client_address[0])
            environ["REMOTE_PORT"] = str(client_address[1])
        else:
            environ["REMOTE_ADDR"] = environ["REMOTE_PORT"] = ""
        if json_lines():  # --log-format json: what the app writes becomes JSON records
            environ["wsgi.errors"] = ErrorStream()
        self.peer = environ["REMOTE_ADDR"] or "unix"
        self.proxied = server.trust.trusts(self.peer)  # believe its X-Forwarded-* fields
        self.connection_environ = environ
        self._request: tuple[RequestLine, list[tuple[str, str]], Framing] | None = None
        self.raw_requestline = b""
        self.close_connection = True
        self._record: AccessRecordArgs | None = None

    @property
    def closing(self) -> bool:
        """This connection ends after the current response (the cycle's)."""
        return self.cycle.closing

    @closing.setter
    def closing(self, value: bool) -> None:
        self.cycle.closing = value

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Serve requests until the client leaves, asks to close, or the drain ends us."""
        try:
            serve_one = self.cycle.serve_one
            while serve_one(self):
                pass
        finally:
            self.rfile.close()

    # -- the cycle's dispatcher ---------------------------------------------

    def parse_request(self) -> bool:
        """Parse the head after ``raw_requestline``; answer a bad one (and close).  True to
        dispatch."""
        cycle = self.cycle
        self._request = None
        self.close_connection = True
        self._record = None
        try:
            request_line = httpparse.parse_request_line(self.raw_requestline, cycle.limits)
            if request_line.version == "HTTP/0.9":  # no header block follows: answer now
                cycle.conn.to_busy()
                self.send_error(505, "HTTP/0.9 is not supported", version="HTTP/1.0")
                return False
            fields, framing = cycle.read_head(request_line)
        except (IncompleteHeadError, OSError):
            return False
        except RequestError as exc:
            if cycle.conn.to_busy() != FORCED:
                self.send_error(exc.status, exc.message)
            return False
        if not framing.keep_alive:
            cycle.closing = True
        self._request = (request_line, fields, framing)
        return True

    def dispatch(self) -> None:
        """Call the application and send its response."""
        request = self._request
        assert request is not None
        line, fields, framing = request  # (a call with *args is not inlined by CPython)
        self.close_connection = not self.handle_request(line, fields, framing)

    def request_finished(self) -> None:
        """Write the access record of the answered request (when the access log is on)."""
        record = self._record
        if record is not None:
            self.cycle.log_access(*record)

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
        known = _environ_keys.get
        for name, value in fields:
            key = known(name, _UNKNOWN)
            if key == _UNKNOWN:
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
        if self.proxied:  # a trusted peer: what it forwarded, if anything
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
        if framing.has_body:
            before = response.send_continue if framing.expect_continue else None
            environ["wsgi.input"] = response.body = self.cycle.open_body(framing, before)
        else:
            environ["wsgi.input"] = _EMPTY_INPUT
        client = environ["REMOTE_ADDR"] or "-"  # as we set it, whatever the app does to environ
        keep = response.run(self.server.application, environ, response.start)
        status = self.cycle.status = response.code  # 0: no status was sent
        if self.server.access_logger is not None:
            self._record = (
                client, request_line.method, request_line.target, request_line.version,
                status, response.sent, environ.get("HTTP_USER_AGENT", ""),
                environ.get("HTTP_REFERER", ""),
            )  # fmt: skip
        elif log.isEnabledFor(logging.DEBUG):  # no access log: --log-level debug has one
            log.debug(
                '%s "%s %s %s" %s %d', self.client_text(), request_line.method,
                request_line.target, request_line.version,
                response.status[:3] if response.status else "-", response.sent,
            )  # fmt: skip
        return keep

    # -- output -------------------------------------------------------------

    def ending(self) -> bool:
        """Whether the current response must end the connection (``Connection: close``)."""
        return self.cycle.ending()

    def send_error(self, status: int, message: str, version: str = "HTTP/1.1") -> None:
        """Answer a request we will not dispatch (malformed, over a limit), and close."""
        self.closing = True
        self.cycle.status = status
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
            taken = time.monotonic() - self.cycle.started
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


def make_base_environ(server: EnvironServer) -> dict[str, Any]:
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
