"""GracefulTCPServer: socketserver.ThreadingTCPServer that can stop politely.

Why this module exists: the stdlib server cannot drain.  ``shutdown()`` polls
(0.5 s), ``server_close()`` resets the connections the kernel already queued,
and with ``block_on_close`` it joins handler threads with no timeout, so one
idle client hangs it forever.  This subclass keeps every hook and calling
convention of ``ThreadingTCPServer`` and adds the drain:

1. stop the accept loop (woken through a socketpair, no poll latency);
2. stop new handshakes, accept and serve what the kernel already queued (the
   backlog sweep), then shut and close the listener (``graceserve.core.accepting``);
3. tell the handlers (``draining``, ``wait_for_input``, ``service_drain``);
4. wait on the drain controller's Condition until no connection is live;
5. near the deadline, ``shutdown(SHUT_RDWR)`` what is left so blocked reads
   return EOF, and report at the deadline (``graceserve.stopping``).

Counting rule: a connection is registered in ``process_request`` before its
thread starts and unregistered, idempotently, on every way out (thread start
failure, the ``finally`` of ``process_request_thread``, ``shutdown_request``).
Handler hooks that raise are logged, never allowed to kill the accept loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import itertools
import logging
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from graceserve.core.accepting import AcceptingServer
from graceserve.core.connection import (
    CLOSING,
    FORCED,
    OPEN,
    Connection,
    format_address,
    has_buffered_input,
)
from graceserve.core.connection import shutdown_quietly as _shutdown_quietly
from graceserve.core.drain import DrainController, DrainReport
from graceserve.core.options import TCPOptions
from graceserve.core.stopping import run_drain

__all__ = ["CLOSING", "FORCED", "OPEN", "Connection", "GracefulTCPServer", "format_address"]

log = logging.getLogger("graceserve")

_Address = Any  # socketserver's own address type: a tuple for TCP
_Server = TypeVar("_Server", bound="GracefulTCPServer")
_handler_thread = threading.local()
_conn_ids = itertools.count(1)
# The client left (TLS: it closed without close_notify, or mid-record): its business, not a bug.
_CLIENT_GONE = (
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class GracefulTCPServer(AcceptingServer):
    """A ``ThreadingTCPServer`` with a drain.

    Methods for the caller (in addition to socketserver's):

    - drain(timeout) -> DrainReport     stop accepting, serve what is queued,
                                        wait for zero, cut the rest, return by
                                        the deadline
    - from_socket(sock, handler, options=None)
                                        serve an already bound socket
    - add_listener(sock)                accept on another bound socket too
                                        (before serve_forever); ``listeners``
                                        and ``server_addresses`` list them all,
                                        ``socket``/``server_address`` stay the
                                        first's
    - install_hooks(hooks)              a runner's heartbeat and request
                                        counting (graceserve.core.serverhooks),
                                        before serve_forever
    - start_drain(), wait_drained(deadline), force_close(), finish_drain()
                                        the drain's steps (graceserve.stopping
                                        runs them for drain() and the runner)
    - active_connections, draining      thread-safe reads
    - wait_for_input(handler, timeout)  for a handler: block until the client
                                        sends, or until the drain starts

    Methods that may be overridden (as in socketserver): server_bind,
    server_activate, get_request (the first listener's accept), accept_from
    (every listener's), verify_request, process_request,
    finish_request, handle_error, shutdown_request, close_request,
    service_actions; and ``service_drain`` (called while waiting for zero).

    Options (``graceserve.core.options.TCPOptions``), applied once in the
    constructor, before it binds: ``GracefulTCPServer(address, Handler,
    options=TCPOptions(max_connections=100))``.  Without ``options=`` they are
    read from the class attributes of the same names (a subclass's
    ``max_connections = 100`` keeps working); an explicit ``options=`` wins.
    ``self.options`` is the object in force.

    Class variables:

    - request_queue_size = 1024   listen backlog (stdlib: 5)
    - daemon_threads = True       handler threads never keep the process alive;
                                  the drain, not thread joins, waits for them
    - block_on_close = True       server_close() drains with ``close_timeout``
    - close_timeout = 5.0         grace used by server_close() / ``with``
    - cut_allowance = 0.1         the last seconds of the grace (at most a tenth
                                  of it) in which cut handlers may end; the
                                  drain never runs past its grace
    - input_timeout = None        default timeout of ``wait_for_input`` (an option)
    - max_connections = None      at this many live connections, stop accepting
                                  (new clients wait in the kernel backlog) (an option)
    - options_class = TCPOptions  the options type this server kind reads

    Threading contract: ``drain`` and ``shutdown`` may be called from any thread
    except a handler thread of this server; ``serve_forever`` from one thread.
    """

    daemon_threads = True
    block_on_close = True
    close_timeout: float | None = 5.0
    cut_allowance = 0.1
    input_timeout: float | None = None
    options_class: type[TCPOptions] = TCPOptions
    options: TCPOptions

    def __init__(
        self,
        server_address: _Address,
        RequestHandlerClass: Callable[[Any, Any, Any], socketserver.BaseRequestHandler],  # noqa: N803
        bind_and_activate: bool = True,
        *,
        options: TCPOptions | None = None,
    ) -> None:
        self._stopping = False
        self._listener_closed = False
        self._backlog_accepted = 0
        self._lost = 0
        self._draining_from = 0
        self.apply_options(options if options is not None else self.default_options())
        super().__init__(server_address, RequestHandlerClass, bind_and_activate)

    @classmethod
    def default_options(cls) -> TCPOptions:
        """The options this class gives without ``options=``: its class attributes."""
        return cls.options_class.from_class(cls)

    def apply_options(self, options: TCPOptions) -> None:
        """Put ``options`` in force; called once, by the constructor, before the bind.

        TypeError for options of another type, or with a field this server
        class does not have (a user's subclass of the options).  Each field
        becomes the instance attribute of its name (what the server reads).
        Subclasses extend it to build what the options describe (the HTTP
        server's TLS context, access log, limits); they raise on options that
        cannot be used, before any socket exists.
        """
        if not isinstance(options, self.options_class):
            raise TypeError(
                f"{type(self).__name__} takes {self.options_class.__name__}, "
                f"not {type(options).__name__}"
            )
        fields = dataclasses.fields(options)
        unknown = [field.name for field in fields if not hasattr(type(self), field.name)]
        if unknown:  # an option the server would not read: an error, never dropped
            raise TypeError(f"{type(self).__name__} has no option {unknown[0]!r}")
        self.options = options
        for field in fields:
            setattr(self, field.name, getattr(options, field.name))

    @classmethod
    def from_socket(
        cls: type[_Server],
        sock: socket.socket,
        RequestHandlerClass: Callable[[Any, Any, Any], socketserver.BaseRequestHandler],  # noqa: N803
        options: TCPOptions | None = None,
    ) -> _Server:
        """A server on ``sock``, already bound (and perhaps listening): Go's ``Serve(listener)``.

        The server owns the socket from here on (the drain closes it).  It is
        put in listening state with ``request_queue_size``; the server's
        ``address_family`` and ``server_address`` are the socket's.
        ``options`` as for the constructor; ``server_bound`` runs as after a bind.
        """
        server = cls.__new__(cls)
        server.address_family = sock.family
        cls.__init__(
            server, sock.getsockname(), RequestHandlerClass, bind_and_activate=False,
            options=options,
        )  # fmt: skip
        server.socket.close()
        server.socket = sock
        server.server_address = sock.getsockname()
        if isinstance(server, http.server.HTTPServer):  # what its server_bind would set
            address = server.server_address
            server.server_name = "localhost"
            server.server_port = address[1] if isinstance(address, tuple) else 0
        server.server_bound()
        sock.listen(server.request_queue_size)
        return server

    def server_bind(self) -> None:
        """Bind (as socketserver), then ``server_bound``."""
        super().server_bind()
        self.server_bound()

    def server_bound(self) -> None:
        """Called once the listening address is known (after ``server_bind``, or in
        ``from_socket``); subclasses compute what depends on it.  Does nothing here."""

    # -- state for callers and handlers -------------------------------------

    @property
    def active_connections(self) -> int:
        """Connections being served right now.  Thread-safe."""
        return self._registry.count

    @property
    def draining(self) -> bool:
        """True from the moment the drain starts.  Thread-safe."""
        return self._registry.draining

    @property
    def stopping(self) -> bool:
        """True once a stop is announced (lame-duck phase) or the drain started.

        Health checks should fail from here on, so load balancers stop sending
        traffic.  Thread-safe.
        """
        return self._stopping or self._registry.draining

    @property
    def listener_closed(self) -> bool:
        """True once the drain has closed the listener (new connects are refused).

        The HTTP server starts answering ``Connection: close`` only from here:
        a client told to reconnect earlier would land in a backlog about to
        be closed.  Thread-safe.
        """
        return self._listener_closed

    @property
    def draining_from(self) -> int:
        """Connections live when the listener closed (swept backlog included), or when
        the drain began if more were then.  0 until then.  Thread-safe."""
        return self._draining_from

    def announce_stop(self) -> None:
        """Enter the lame-duck phase: keep serving, but ``stopping`` is True.  Thread-safe."""
        self._stopping = True

    @property
    def registry(self) -> DrainController[socket.socket, Connection]:
        """The drain controller (lock, registry, report).  For subclasses and the runner."""
        return self._registry

    def wait_for_input(
        self, handler: socketserver.BaseRequestHandler, timeout: float | None = None
    ) -> bool:
        """Block until the handler's client has sent something; False if it should stop.

        For long-lived stream protocols: call it before each read.  It returns
        True when input is waiting (in the handler's ``rfile`` buffer or on the
        socket, EOF included), and False once the drain has started with
        nothing pending, or after ``timeout`` seconds (None: the server's
        ``input_timeout``, itself None for no limit).  On False, say goodbye
        and return.  Call from the handler's own thread.
        """
        sock: socket.socket = handler.request
        if has_buffered_input(handler, sock):
            return True
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if self.draining:  # only what is already there counts
            timeout = 0.0
        else:
            poller.register(self._notice_r, select.POLLIN)
            if timeout is None:
                timeout = self.input_timeout
        ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        return any(fd == sock.fileno() for fd, _ in ready)

    # -- one thread per connection ------------------------------------------

    def process_request(self, request: Any, client_address: _Address) -> None:
        """Register the connection, then start its thread.  May be extended."""
        self._registry.add(request, self.make_connection(request, client_address))
        try:
            thread = threading.Thread(
                target=self.process_request_thread,
                args=(request, client_address),
                name=f"graceserve-conn-{next(_conn_ids)}",
                daemon=self.daemon_threads,
            )
            thread.start()
        except BaseException:
            self._registry.discard(request)
            raise

    def make_connection(self, request: socket.socket, client_address: _Address) -> Connection:
        """The registry record for a new connection.  May be overridden."""
        return Connection(request, client_address, self._registry)

    def finish_request(self, request: Any, client_address: _Address) -> None:
        """Serve the connection with the handler class; then, for a TCP server, where a
        connection is one request, ``hooks.request_done()``.  May be overridden (the
        HTTP servers count each request instead)."""
        try:
            super().finish_request(request, client_address)
        finally:
            self.hooks.request_done()

    def process_request_thread(self, request: Any, client_address: _Address) -> None:
        """Serve one connection in its own thread; always unregisters it."""
        self.mark_handler_thread()
        try:
            try:
                self.run_guarded(request, client_address, self.finish_request)
            finally:
                self._safe_shutdown_request(request)
        finally:
            _handler_thread.server = None
            self.connection_ended(request)

    def mark_handler_thread(self) -> None:
        """Mark the calling thread as one serving this server's connections (``drain()``
        refuses to run there: it would wait for itself).  For a pool's threads."""
        _handler_thread.server = self

    def run_guarded(
        self, request: Any, client_address: _Address, serve: Callable[[Any, _Address], Any]
    ) -> Any:
        """``serve(request, client_address)``, its errors handled as a connection's are:
        a client that left is logged at DEBUG, an error after a cut is ignored, any other
        is reported (``handle_error``).  Its result, or None after an error."""
        try:
            return serve(request, client_address)
        except _CLIENT_GONE as exc:  # the client left: its business, not a bug
            log.debug("%s went away: %s", format_address(client_address), exc)
        except Exception as exc:
            if not (isinstance(exc, OSError) and self._was_cut(request)):
                self._report_error(request, client_address)
        return None

    def connection_ended(self, request: Any) -> None:
        """Unregister a connection whose socket was shut and closed (``shutdown_request``);
        at the connection cap, let the accept loop resume.  Idempotent."""
        with self._registry.condition:
            self._registry.discard(request)
            capped = self._accept_capped
        if capped:  # a slot is free: let the accept loop resume
            self._wake()

    def end_connection(self, request: Any) -> None:
        """Shut, close and unregister a connection served by a pool (never raises for it)."""
        try:
            self._safe_shutdown_request(request)
        finally:
            self.connection_ended(request)

    def shutdown_request(self, request: Any) -> None:
        """Unregister, then shut down and close the connection.  May be extended."""
        self._registry.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: _Address) -> None:
        """Log the exception being handled, with its traceback.  May be overridden."""
        log.error(
            "exception while serving %s", format_address(client_address), exc_info=sys.exc_info()
        )

    def _was_cut(self, request: socket.socket) -> bool:
        with self._registry.condition:
            return self._registry.is_cut(request)

    # -- the drain ----------------------------------------------------------

    def drain(self, timeout: float | None = None) -> DrainReport:
        """Stop accepting, serve what is in flight and queued, cut the rest; return by the deadline.

        New connects are refused from the moment the listener closes (a few
        milliseconds in); connections the kernel had already completed are
        accepted and served.  ``timeout`` is the grace in seconds (None: wait
        for ever), the whole budget: handlers still running near its end are
        cut, and the drain returns at the deadline even if some ignore the cut
        (they are counted in ``remaining``).  Idempotent: a second call waits
        for the first drain and returns its report.  Works with or without
        ``serve_forever`` running.  Call from any thread except a handler
        thread of this server.
        """
        if getattr(_handler_thread, "server", None) is self:
            raise RuntimeError("drain() called from a handler thread would wait for itself")
        return run_drain(self, timeout)[0]

    def start_drain(self, shared_listener: bool = False) -> bool:
        """Begin the drain: stop accepting, sweep the backlog, close the listener, notify.

        Returns False (and does nothing) if the drain had already started.
        With ``shared_listener`` (a worker process after a reload, or systemd,
        holds the same listening socket) the listener is left in service for
        the other holder: only our copy is closed.
        Thread-safe; returns as soon as the listener is closed.
        """
        if not self._registry.begin():
            return False
        # Handlers see ``draining`` from here on, and one idle in wait_for_input may end
        # before the listener is closed: it was live when the drain began, so it counts.
        live_at_begin = self.active_connections
        # 1. Stop the accept loop; it may be in the middle of an accept.
        self.shutdown()
        # 2-3. Stop new handshakes, take what the kernel queued, close the listener.
        swept, self._lost = self.close_listener(shared_listener)
        self._draining_from = max(live_at_begin, self.active_connections) + len(swept)
        self._listener_closed = True
        # 4. Serve the swept connections (starting threads is the slow part).
        self._backlog_accepted = len(swept)
        for request, client_address in swept:
            self._handle_accepted(request, client_address)
        # 5. Tell the handlers.
        with contextlib.suppress(OSError):
            self._notice_w.send(b"\0")
        log.debug(
            "listener closed; %d connections, %d of them from the backlog",
            self.active_connections, self._backlog_accepted,
        )  # fmt: skip
        self.service_drain()
        return True

    def wait_drained(
        self, deadline: float | None, wake_up: Callable[[], bool] | None = None
    ) -> bool:
        """Wait on the Condition until no connection is live; True if so.

        False at ``deadline`` (a ``time.monotonic()`` instant) or when
        ``wake_up()`` turns true (whoever flips it must notify
        ``registry.condition``).  Runs ``service_drain`` whenever it asks to.
        """
        while True:
            until = deadline
            tick = self.service_drain()
            if tick is not None and (until is None or tick < until):
                until = tick
            if self._registry.wait_for_zero(until, wake_up):
                return True
            if wake_up is not None and wake_up():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def service_drain(self) -> float | None:
        """Called when the drain starts and whenever it asked to be called again.

        Returns the ``time.monotonic()`` instant at which it wants to be called
        next, or None.  The HTTP server closes idle keep-alive connections here.
        May be overridden; should be quick and must not block.
        """
        return None

    def force_close(self) -> int:
        """Cut every live connection now: blocked reads return EOF, writes fail.

        Uses ``shutdown(SHUT_RDWR)`` under the registry lock, so it never
        touches a socket that is being closed.  Returns how many were cut.
        Thread-safe; does not wait for the handlers.
        """
        cut = 0
        with self._registry.locked_items() as items:
            for request, _conn in items:
                cut += self.cut_connection(request, forced=True)
        if cut:
            log.debug("cut %d connections", cut)
        return cut

    def cut_connection(self, request: socket.socket, forced: bool = True) -> bool:
        """Cut one connection; call with ``registry.condition`` held.  True if it was cut now.

        A forced cut shuts both directions: blocked reads return EOF, writes
        fail.  An unforced one (closing an idle connection) shuts only the
        reading side: the handler's blocked read returns EOF, and a request
        that raced the cut can still be read and answered before it closes.
        The cut is recorded once, in the registry (``Connection.cut`` reads it).
        """
        if not self._registry.mark_cut(request, forced):
            return False
        _shutdown_quietly(request, socket.SHUT_RDWR if forced else socket.SHUT_RD)
        return True

    def finish_drain(self) -> DrainReport:
        """Close the books: the report (what still runs is in ``remaining``).  Does not wait."""
        report = self._registry.report
        if report is not None:
            return report
        return self._registry.finish(self._backlog_accepted, self._lost)

    # -- closing -----------------------------------------------------------

    def server_close(self) -> None:
        """Close the listener; with ``block_on_close``, drain within ``close_timeout``.

        Never hangs for ever on idle handler threads: the drain cuts them at
        the deadline.  Safe to call more than once.
        """
        if self.block_on_close and getattr(self, "_registry", None) is not None:
            self.drain(self.close_timeout)
        super().server_close()
        for sock in ("_wakeup_r", "_wakeup_w", "_notice_r", "_notice_w"):
            closing = getattr(self, sock, None)
            if closing is not None:
                closing.close()
