"""A WSGI connection served by the pool: served while it has input, parked while idle.

Why this module exists: with a thread per connection an idle keep-alive
client holds a thread blocked in ``recv``.  A ``GracefulWSGIServer`` with
``threads`` set parks such a connection instead (``graceserve.core.parking``)
and a pool thread resumes it when it becomes readable.  This is the piece
that makes one WSGI connection resumable, and the rules that keep it exactly
as safe as the thread it replaces:

- it parks only at a request boundary and only with nothing buffered: not in
  the socket file's buffer (read through a counting raw stream, so "the file
  has handed out every byte it received" is one comparison, no system call),
  and not inside the TLS object (``SSLSocket.pending()``).  A pipelined
  request already read is served on the same thread, at once;
- while parked it is IDLE for the reaper, from its last response (as a thread
  blocked in its read would be): the idle timeout, the drain's linger and the
  connection cap close it by shutting its read side, which wakes it; the
  resumed request cycle then meets the EOF, or a request that raced the close
  and answers it with ``Connection: close`` (``RequestCycle.park``);
- a new connection is parked before its first byte (IDLE, or for TLS timed as
  a handshake), so clients that connect and wait cost no thread;
- it ends the way a connection thread ends: TLS ``close_notify`` unless it
  failed, the head budget given back, ``shutdown_request``, unregistered.

The handler path (a user's ``BaseHTTPRequestHandler``) is not pooled: its
``handle()`` loop owns the thread and a subclass may read ``rfile`` anywhere.

Threading contract: a ``WSGISession`` is run by one pool thread at a time
(``ConnectionPool``); it is made by the accept loop (or the drain's sweep).
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from graceserve.http import tls
from graceserve.http.connection import HTTPConnection
from graceserve.wsgi.handler import RFILE_BUFFER, ConnectionServer, WSGIConnection

__all__ = ["CountingSocketIO", "PoolServer", "WSGISession"]


class PoolServer(ConnectionServer, Protocol):
    """What a pooled session reads of its server (``GracefulWSGIServer`` has it all)."""

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context, when serving TLS."""

    @property
    def tls_handshake_timeout(self) -> float | None:
        """Seconds a client gets to finish its handshake."""

    def run_guarded(
        self, request: Any, client_address: Any, serve: Callable[[Any, Any], Any]
    ) -> Any:
        """``serve(request, client_address)`` with a connection's error handling."""

    def pool_forget(self, session: WSGISession) -> None:
        """Stop watching ``session`` (before its socket closes)."""

    def end_connection(self, request: Any) -> None:
        """Shut, close and unregister the connection."""


class CountingSocketIO(socket.SocketIO):
    """A socket's raw stream that counts the bytes it received (``tell``).

    Under an ``io.BufferedReader``, ``reader.tell()`` is then the bytes the
    reader handed out, so ``reader.tell() != raw.received`` says "bytes are
    buffered" without a system call.
    """

    received = 0

    def readinto(self, b: Any) -> int | None:
        """As ``SocketIO.readinto``, counted."""
        n = super().readinto(b)
        if n:
            self.received += n
        return n

    def tell(self) -> int:
        """Bytes received so far."""
        return self.received


class WSGISession:
    """One pooled WSGI connection (see the module's docstring)."""

    __slots__ = (
        "client_address",
        "conn",
        "failed",
        "fd",
        "raw",
        "request",
        "server",
        "tls",
        "wsgi",
    )

    def __init__(self, server: PoolServer, request: socket.socket, client_address: Any):
        self.server = server
        self.request = request  # the raw socket: registered, watched, cut
        self.client_address = client_address
        self.fd = request.fileno()
        conn = server.registry.get(request)
        self.conn = conn if isinstance(conn, HTTPConnection) else None
        self.wsgi: WSGIConnection | None = None
        self.raw: CountingSocketIO | None = None
        self.tls: AbstractContextManager[tls.ServerTLSSocket | None] | None = None
        self.failed = False
        if self.conn is not None:  # parked before its first byte, as its thread would wait
            now = time.monotonic()
            if server.ssl_context is None:
                self.conn.to_idle(now)
            else:
                self.conn.to_handshake(now)

    def fileno(self) -> int:
        """The raw socket's descriptor (what the pool watches)."""
        return self.fd

    def resume(self) -> bool:
        """Serve what arrived; True to park again, False once ended (a pool thread)."""
        try:
            park = self.server.run_guarded(self.request, self.client_address, self._turn)
        except BaseException:
            self.failed = True
            self.end()
            raise
        if park is True:
            return True
        self.end()
        return False

    def _turn(self, request: socket.socket, client_address: Any) -> bool:
        wsgi = self.wsgi
        if wsgi is None:
            wsgi = self._open()
            if wsgi is None:
                return False
        try:
            cycle = wsgi.cycle
            serve_one = cycle.serve_one
            while serve_one(wsgi):
                if self._buffered(wsgi):
                    continue  # pipelined: served here, no hand-off
                return cycle.park()
            return False
        except BaseException:
            self.failed = True
            raise

    def _open(self) -> WSGIConnection | None:
        """The first turn: the TLS handshake (when serving TLS), then the connection."""
        server = self.server
        stream: Any = self.request
        context = server.ssl_context
        conn = self.conn
        if context is not None:
            if conn is not None:
                conn.to_handshake(time.monotonic())
            secured = tls.secured(
                context, self.request, self.client_address, server.tls_handshake_timeout
            )
            self.tls = secured
            stream = secured.__enter__()
            if stream is None:
                return None
            if conn is not None:
                # (Its first request gets the longest linger at a drain, as on every
                # connection not yet used: GracefulHTTPServer.linger_until.)
                conn.watch_writes = True  # SO_SNDTIMEO does not bound TLS writes
        self.raw = raw = CountingSocketIO(stream, "rb")
        rfile = io.BufferedReader(raw, RFILE_BUFFER)
        wsgi = WSGIConnection(server, stream, self.client_address, rfile=rfile)
        if context is None:
            wsgi.cycle.parked = True  # idle since it was accepted
        self.wsgi = wsgi
        return wsgi

    def _buffered(self, wsgi: WSGIConnection) -> bool:
        """Whether input is already here: in the socket file, or decrypted in the TLS object."""
        raw = self.raw
        if raw is not None and wsgi.rfile.tell() != raw.received:
            return True
        pending = getattr(wsgi.request, "pending", None)
        return pending is not None and bool(pending())

    def end(self) -> None:
        """End the connection as its thread would have; unregisters it.  Idempotent enough:
        called once, by the thread that ran its last turn."""
        server = self.server
        server.pool_forget(self)
        try:
            wsgi = self.wsgi
            if wsgi is not None:
                with contextlib.suppress(OSError):
                    wsgi.rfile.close()
            secured, self.tls = self.tls, None
            if secured is not None:
                if self.failed:  # as an exception through ``with tls.secured``: no close_notify
                    failure = ConnectionAbortedError("the connection failed")
                    secured.__exit__(type(failure), failure, None)
                else:
                    secured.__exit__(None, None, None)
        finally:
            conn = self.conn
            head = None if conn is None else conn.head
            if head is not None:  # a head the connection ended in the middle of
                head.release()
            server.end_connection(self.request)
