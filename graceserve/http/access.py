"""The handler side of proxy trust and the access log, for ``DrainAwareRequestHandler``.

Why this module exists: a handler target gets the same access line as a WSGI
app and the same view of a trusted proxy (``forwarded_client``,
``forwarded_proto``, ``forwarded_host``; ``client_address`` stays the
socket's), without growing the request loop.  ``DrainAwareRequestHandler``
records the status (``send_response_only``) and the end of the head; this
mixin hands them to the request cycle's access record.

Threading contract: a handler instance is used by its connection's thread only.
The mixin sees its server as ``AccessServer``, the part of ``GracefulHTTPServer``
it reads, so that the server's module can import this one and not the reverse.
"""

from __future__ import annotations

import http.server
import logging
from typing import TYPE_CHECKING, Any, Protocol

from graceserve.http import proxy
from graceserve.http.accesslog import AccessLog
from graceserve.logformat import json_lines

if TYPE_CHECKING:
    from graceserve.http.cycle import RequestCycle

__all__ = ["AccessServer", "CountingWriter", "ProxyAndAccessLog"]


class AccessServer(Protocol):
    """What the mixin reads of its server (``GracefulHTTPServer`` has it all)."""

    @property
    def trust(self) -> proxy.Trust:
        """Which peers' forwarded fields are believed."""

    @property
    def url_scheme(self) -> str:
        """``http`` or ``https``: what this server's own connections are."""

    @property
    def access_logger(self) -> AccessLog | None:
        """The access log, if on."""


log = logging.getLogger("graceserve")


class CountingWriter:
    """``wfile`` that counts the bytes written (only while the access log is on)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.count = 0

    def write(self, data: Any) -> int:
        written: int = self.inner.write(data)
        self.count += len(data)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ProxyAndAccessLog:
    """Mixed into ``DrainAwareRequestHandler`` (above ``BaseHTTPRequestHandler``)."""

    if TYPE_CHECKING:  # BaseHTTPRequestHandler's, as this mixin uses them
        server: Any  # an AccessServer; the handler class names the type (a BaseServer too)
        client_address: Any
        wfile: Any
        request_version: str
        _graceserve_cycle: RequestCycle
    _graceserve_status: int | None = None  # the status sent, for the access log
    _graceserve_head_bytes = 0  # bytes written up to the end of the head (access log)
    _graceserve_forwarded: proxy.Forwarded | None = None

    @property
    def _server(self) -> AccessServer:
        server: AccessServer = self.server
        return server

    @property
    def forwarded(self) -> proxy.Forwarded:
        """What a trusted proxy forwarded for this request (``graceserve.http.proxy``)."""
        found = self._graceserve_forwarded
        if found is None:
            found = proxy.forwarded_from_message(
                str(self.client_address[0]), getattr(self, "headers", None), self._server.trust
            )
            self._graceserve_forwarded = found
        return found

    @property
    def forwarded_client(self) -> str:
        """The client's address: a trusted proxy's word, else the peer's (``client_address``
        stays the socket's)."""
        return self.forwarded.client or str(self.client_address[0])

    @property
    def forwarded_proto(self) -> str:
        """``http`` or ``https``: a trusted proxy's word, else this connection's."""
        return self.forwarded.proto or self._server.url_scheme

    @property
    def forwarded_host(self) -> str | None:
        """The Host the client asked for: a trusted proxy's word, else the ``Host`` field."""
        headers = getattr(self, "headers", None)
        return self.forwarded.host or (headers.get("Host") if headers is not None else None)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """The stdlib's request line on stderr, unless the access log is on (it has one)."""
        if self._server.access_logger is None:
            http.server.BaseHTTPRequestHandler.log_request(self, code, size)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:
        """The stdlib's stderr line; with ``--log-format json``, a JSON line via the logger."""
        if json_lines():
            log.info(
                "%s %s", self.address_string(), format % args,  # type: ignore[attr-defined]
                extra={"event": "handler"},
            )  # fmt: skip
        else:
            http.server.BaseHTTPRequestHandler.log_message(self, format, *args)  # type: ignore[arg-type]

    def _log_access(self) -> None:
        status, self._graceserve_status = self._graceserve_status, None
        if status is None:
            return
        headers = getattr(self, "headers", None)
        wfile = self.wfile
        sent = wfile.count - self._graceserve_head_bytes if isinstance(wfile, CountingWriter) else 0
        self._graceserve_cycle.log_access(
            client=self.forwarded_client,
            method=getattr(self, "command", None) or "-",
            target=getattr(self, "path", None) or "-",
            version=self.request_version,
            status=status,
            sent=max(sent, 0),
            user_agent=(headers.get("User-Agent") if headers is not None else None) or "",
            referer=(headers.get("Referer") if headers is not None else None) or "",
        )
