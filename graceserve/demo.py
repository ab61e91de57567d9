"""The built-in demo app, served when no target is given.

Why this module exists: to watch a drain happen (``/slow``) and to give
orchestrators a readiness probe that fails as soon as a stop begins
(``/healthz``), without writing any code.  It is also the model of a plain
``BaseHTTPRequestHandler`` subclass that uses ``self.server.stopping``.

Routes: ``GET /`` hello; ``GET /slow?seconds=N`` answers after N seconds
(0 <= N <= 300); ``GET /healthz`` 200, or 503 once the server is stopping.
"""

from __future__ import annotations

import http.server
import logging
import select
import time
import urllib.parse

from graceserve._version import __version__

__all__ = ["DemoHandler"]

log = logging.getLogger("graceserve.access")

MAX_SLOW_SECONDS = 300.0


class DemoHandler(http.server.BaseHTTPRequestHandler):
    """Hello, slow and health routes over HTTP/1.1 keep-alive.  One instance per connection."""

    protocol_version = "HTTP/1.1"
    server_version = f"graceserve/{__version__}"

    def do_GET(self) -> None:
        """Route a GET."""
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/":
            self._reply(200, "hello from graceserve\n")
        elif url.path == "/healthz":
            if getattr(self.server, "stopping", False):
                self._reply(503, "stopping\n")
            else:
                self._reply(200, "ok\n")
        elif url.path == "/slow":
            self._slow(urllib.parse.parse_qs(url.query).get("seconds", ["1"])[0])
        else:
            self._reply(404, "not found\n")

    def do_HEAD(self) -> None:
        """Answer HEAD like GET, without the body."""
        self._head_only = True
        self.do_GET()

    _head_only = False

    def _slow(self, raw: str) -> None:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_SLOW_SECONDS:
            self._reply(400, f"seconds must be a number from 0 to {MAX_SLOW_SECONDS:g}\n")
            return
        if self._wait_unless_cut(seconds):
            self._reply(200, f"slept {seconds:g} s\n")

    def _wait_unless_cut(self, seconds: float) -> bool:
        """Wait ``seconds``; False early if the connection is cut (hung up)."""
        poller = select.poll()
        poller.register(self.request, 0)  # only POLLHUP/POLLERR: both directions shut
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if poller.poll(max(1, int(remaining * 1000))):
                return False
        return True

    def _reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self._head_only:
            self.wfile.write(body)
        self._head_only = False

    def log_message(self, format: str, *args: object) -> None:
        """Access log at DEBUG (the hot path stays quiet at the default level)."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)
