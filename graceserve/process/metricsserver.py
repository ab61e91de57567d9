"""The metrics endpoint: ``GET /metrics`` on ``--metrics-bind``, in the main process.

Why this module exists: a scrape must never compete with the application for
its listener, its connection cap or its workers, and must keep answering while
they drain or are replaced.  So the main process (the one process, or the
supervisor of ``--workers N``) binds its own small address with the standard
library's ``ThreadingHTTPServer`` and answers ``GET``/``HEAD /metrics`` with
``MetricsBoard.render`` (``graceserve.process.metrics``); every other path is
404, every other method 405.  It is bound before the application's listener,
so that a bad address is exit code 3 before anything serves, and it is closed
only when the process ends: during the drain it reports ``graceserve_draining 1``.

Threading contract: ``open_metrics`` and ``close`` on the main thread; ``start``
once; requests are answered on the endpoint's own daemon threads.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from graceserve.core.server import format_address
from graceserve.errors import StartupError
from graceserve.process.metrics import CONTENT_TYPE
from graceserve.settings import Settings

__all__ = ["MetricsEndpoint", "open_metrics"]

log = logging.getLogger("graceserve")

PATH = "/metrics"
READ_TIMEOUT = 10.0  # seconds a scraper may take to send its request


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    render: Callable[[], str] = staticmethod(lambda: "")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        if self.path.partition("?")[0] != PATH:
            self._plain(404, b"not found: the metrics are at /metrics\n", head)
            return
        try:
            body = self.server.render().encode()
        except Exception:
            log.exception("metrics: rendering failed")
            self._plain(500, b"metrics failed; see the server's log\n", head)
            return
        self._send(200, CONTENT_TYPE, body, head)

    def _plain(self, code: int, body: bytes, head: bool) -> None:
        self._send(code, "text/plain; charset=utf-8", body, head)

    def _send(self, code: int, kind: str, body: bytes, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        if code == 501:  # an unsupported method: say which ones are (RFC 9110: Allow)
            code, message = 405, "only GET and HEAD"
        self.close_connection = True
        self._allow = code == 405
        super().send_error(code, message, explain)

    def end_headers(self) -> None:
        if getattr(self, "_allow", False):
            self.send_header("Allow", "GET, HEAD")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


class MetricsEndpoint:
    """A bound metrics server; ``start`` answers, ``close`` ends it."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread: threading.Thread | None = None
        self.url = f"http://{format_address(server.server_address)}{PATH}"

    def start(self, render: Callable[[], str]) -> None:
        """Answer scrapes with ``render()`` from now on, and say where.  Once."""
        self._server.render = render
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="graceserve-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on %s", self.url, extra={"event": "metrics", "url": self.url})

    def close(self) -> None:
        """Stop answering and close the socket.  Idempotent."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5.0)
            self._thread = None
        self._server.server_close()


def open_metrics(settings: Settings) -> MetricsEndpoint | None:
    """The endpoint bound on ``settings.metrics_bind`` (None without it); StartupError
    (exit code 3) if it cannot be bound."""
    address = settings.metrics_bind
    if address is None:
        return None
    host, port = address
    try:
        family, *_, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"--metrics-bind: cannot resolve {host!r}: {exc.strerror}") from None
    server_class = type("_Server", (_Server,), {"address_family": family})
    try:
        server = server_class(sockaddr, _Handler)
    except OSError as exc:
        where = format_address(sockaddr)
        raise StartupError(
            f"--metrics-bind: cannot listen on {where}: {exc.strerror or exc}"
        ) from None
    return MetricsEndpoint(server)
