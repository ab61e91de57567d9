"""GracefulTCPServer: socketserver.ThreadingTCPServer that can stop politely.

Why this module exists: the stdlib server cannot drain.  ``shutdown()`` polls
(0.5 s), ``server_close()`` resets the connections the kernel already queued,
and with ``block_on_close`` it joins handler threads with no timeout, so one
idle client hangs it forever.  This subclass keeps every hook and calling
convention of ``ThreadingTCPServer`` and adds the drain:

1. stop the accept loop (woken through a socketpair, no poll latency);
2. accept and serve what the kernel already queued (the backlog sweep);
3. close the listener, so new connects are refused at once;
4. tell the handlers (``draining``, ``wait_for_input``, ``service_drain``);
5. wait on the drain controller's Condition until no connection is live;
6. at the deadline, ``shutdown(SHUT_RDWR)`` what is left so blocked reads
   return EOF, and report.

Counting rule: a connection is registered in ``process_request`` before its
thread starts and unregistered, idempotently, on every way out (thread start
failure, the ``finally`` of ``process_request_thread``, ``shutdown_request``).
Handler hooks that raise are logged, never allowed to kill the accept loop.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import select
import selectors
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .drain import DrainController, DrainReport

__all__ = ["CLOSING", "FORCED", "OPEN", "Connection", "GracefulTCPServer", "format_address"]

log = logging.getLogger("graceserve")

_Address = Any  # socketserver's own address type: a tuple for TCP
_handler_thread = threading.local()
_conn_ids = itertools.count(1)
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_ACCEPT_LIMIT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


OPEN, CLOSING, FORCED = 0, 1, 2  # what has been done to a connection (Connection.cut)


class Connection:
    """One live connection, as the registry knows it.

    Written by its handler thread, read by the drain; the fields the two share
    are only touched with the drain controller's lock held.
    """

    __slots__ = ("address", "cut", "idle", "idle_since", "reading", "request")

    def __init__(self, request: socket.socket, address: _Address) -> None:
        self.request = request
        self.address = address
        self.idle = False  # waiting for the next request and safe to cut
        self.reading = False  # receiving a request head
        self.idle_since = time.monotonic()  # when ``idle`` or ``reading`` last changed
        self.cut = OPEN  # OPEN, CLOSING (read side shut while idle) or FORCED


class GracefulTCPServer(socketserver.ThreadingTCPServer):
    """A ``ThreadingTCPServer`` with a drain.

    Methods for the caller (in addition to socketserver's):

    - drain(timeout) -> DrainReport     stop accepting, serve what is queued,
                                        wait for zero, cut the rest at the deadline
    - start_drain(), wait_drained(deadline), force_close(), finish_drain()
                                        the same drain in steps, for a controller
                                        that has more to watch (see graceserve.runner)
    - active_connections, draining      thread-safe reads
    - wait_for_input(handler, timeout)  for a handler: block until the client
                                        sends, or until the drain starts

    Methods that may be overridden (as in socketserver): server_bind,
    server_activate, get_request, verify_request, process_request,
    finish_request, handle_error, shutdown_request, close_request,
    service_actions; and ``service_drain`` (called while waiting for zero).

    Class variables:

    - request_queue_size = 1024   listen backlog (stdlib: 5)
    - daemon_threads = True       handler threads never keep the process alive;
                                  the drain, not thread joins, waits for them
    - block_on_close = True       server_close() drains with ``close_timeout``
    - close_timeout = 5.0         grace used by server_close() / ``with``
    - unwind_timeout = 1.0        after a cut, how long to wait for handlers to end
    - idle_timeout = None         default timeout of ``wait_for_input``
    - max_connections = None      at this many live connections, stop accepting
                                  (new clients wait in the kernel backlog)

    Threading contract: ``drain`` and ``shutdown`` may be called from any thread
    except a handler thread of this server; ``serve_forever`` from one thread.
    """

    request_queue_size = 1024
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = True
    close_timeout: float | None = 5.0
    unwind_timeout = 1.0
    idle_timeout: float | None = None
    max_connections: int | None = None

    def __init__(
        self,
        server_address: _Address,
        RequestHandlerClass: Callable[[Any, Any, Any], socketserver.BaseRequestHandler],  # noqa: N803
        bind_and_activate: bool = True,
    ) -> None:
        # Our state first: a failed bind calls server_close() from the base __init__.
        self._registry: DrainController[socket.socket, Connection] = DrainController()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._notice_r, self._notice_w = socket.socketpair()
        for sock in (self._wakeup_r, self._wakeup_w, self._notice_r, self._notice_w):
            sock.setblocking(False)
        self._shutdown_request = False
        self._stopping = False
        self._listener_closed = False
        self._serving_thread: int | None = None
        self._is_shut_down = threading.Event()
        self._is_shut_down.set()
        self._accept_paused_until = 0.0
        self._accept_failing = False
        self._accept_capped = False
        self._backlog_accepted = 0
        self._draining_from = 0
        super().__init__(server_address, RequestHandlerClass, bind_and_activate)

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
        """Connections live when the listener closed (swept backlog included), before
        any handler was told of the drain.  0 until then.  Thread-safe."""
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
        ``idle_timeout``, itself None for no limit).  On False, say goodbye
        and return.  Call from the handler's own thread.
        """
        sock: socket.socket = handler.request
        if _has_buffered_input(handler, sock):
            return True
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if self.draining:  # only what is already there counts
            timeout = 0.0
        else:
            poller.register(self._notice_r, select.POLLIN)
            if timeout is None:
                timeout = self.idle_timeout
        ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        return any(fd == sock.fileno() for fd, _ in ready)

    # -- the accept loop ----------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until shutdown() or the drain.

        Unlike the stdlib this does not poll for shutdown: ``shutdown()`` wakes
        the loop at once.  ``poll_interval`` only paces ``service_actions``.
        Returns at once if the drain has already started.
        """
        with self._registry.lock:  # either the drain sees us serving, or we see it
            if self.draining:
                return
            # Non-blocking accepts: a listener shared with another process (a graceful
            # restart) can be readable here and emptied there before we accept.
            self.socket.setblocking(False)
            self._is_shut_down.clear()
            self._serving_thread = threading.get_ident()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._wakeup_r, selectors.EVENT_READ)
                listening = False
                while not self._shutdown_request:
                    paused = self._accept_paused()
                    if listening and paused:
                        selector.unregister(self)
                    elif not listening and not paused:
                        selector.register(self, selectors.EVENT_READ)
                    listening = not paused
                    timeout = poll_interval
                    if paused and not self._accept_capped:
                        timeout = min(timeout, self._accept_paused_until - time.monotonic())
                    ready = selector.select(max(timeout, 0))
                    if self._shutdown_request:
                        break
                    for key, _ in ready:
                        if key.fileobj is self._wakeup_r:
                            _drain_socket(self._wakeup_r)
                        else:
                            self._handle_request_noblock()
                    self.service_actions()
        finally:
            self._shutdown_request = False
            self._serving_thread = None
            self._is_shut_down.set()

    def shutdown(self) -> None:
        """Stop the serve_forever loop and wait until it has stopped.

        Returns at once when the loop is not running; from the serving thread
        itself it only asks the loop to stop (the stdlib deadlocks there).
        Connections being served are not touched: see ``drain``.
        """
        self._shutdown_request = True
        self._wake()
        if self._serving_thread is None or self._serving_thread == threading.get_ident():
            return
        self._is_shut_down.wait()

    def _accept_paused(self) -> bool:
        """Whether the accept loop should leave new clients in the kernel backlog."""
        cap = self.max_connections
        with self._registry.condition:  # a handler ending now sees the flag, or we see it end
            self._accept_capped = cap is not None and self._registry.count >= cap
        return self._accept_capped or time.monotonic() < self._accept_paused_until

    def _wake(self) -> None:
        # OSError: full (a wake-up is already pending) or closed.
        with contextlib.suppress(OSError):
            self._wakeup_w.send(b"\0")

    def _handle_request_noblock(self) -> None:
        """Accept one connection and hand it over.  Never raises for a client's sake."""
        try:
            request, client_address = self.get_request()
        except OSError as exc:
            self._accept_failed(exc)
            return
        self._accept_recovered()
        self._handle_accepted(request, client_address)

    def _handle_accepted(self, request: socket.socket, client_address: _Address) -> None:
        try:
            accepted = self.verify_request(request, client_address)
        except Exception:
            self._report_error(request, client_address)
            self._safe_shutdown_request(request)
            return
        if not accepted:
            self._safe_shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self._report_error(request, client_address)
            self._safe_shutdown_request(request)
        except BaseException:
            self._safe_shutdown_request(request)
            raise

    def _accept_failed(self, exc: OSError) -> None:
        """accept() failed: back off on resource exhaustion instead of spinning."""
        if exc.errno not in _ACCEPT_LIMIT_ERRNOS:
            return  # the client went away before we accepted it: nothing to do
        self._accept_paused_until = time.monotonic() + 0.1
        if not self._accept_failing:
            self._accept_failing = True
            log.error("accept() failed (%s); pausing accepts until resources free up", exc)

    def _accept_recovered(self) -> None:
        if self._accept_failing:
            self._accept_failing = False
            log.warning("accepting connections again")

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
        return Connection(request, client_address)

    def process_request_thread(self, request: Any, client_address: _Address) -> None:
        """Serve one connection in its own thread; always unregisters it."""
        _handler_thread.server = self
        try:
            try:
                self.finish_request(request, client_address)
            except _CLIENT_GONE as exc:  # the client left: its business, not a bug
                log.debug("%s went away: %s", format_address(client_address), exc)
            except Exception as exc:
                if not (isinstance(exc, OSError) and self._was_cut(request)):
                    self._report_error(request, client_address)
            finally:
                self._safe_shutdown_request(request)
        finally:
            _handler_thread.server = None
            with self._registry.condition:
                self._registry.discard(request)
                capped = self._accept_capped
            if capped:  # a slot is free: let the accept loop resume
                self._wake()

    def shutdown_request(self, request: Any) -> None:
        """Unregister, then shut down and close the connection.  May be extended."""
        self._registry.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: _Address) -> None:
        """Log the exception being handled, with its traceback.  May be overridden."""
        log.error(
            "exception while serving %s", format_address(client_address), exc_info=sys.exc_info()
        )

    def _report_error(self, request: Any, client_address: _Address) -> None:
        try:
            self.handle_error(request, client_address)
        except Exception:
            log.exception("handle_error() raised while reporting another exception")

    def _safe_shutdown_request(self, request: Any) -> None:
        try:
            self.shutdown_request(request)
        except Exception:
            log.exception("shutdown_request() raised")
            self._registry.discard(request)

    def _was_cut(self, request: socket.socket) -> bool:
        with self._registry.condition:
            return self._registry.is_cut(request)

    # -- the drain ----------------------------------------------------------

    def drain(self, timeout: float | None = None) -> DrainReport:
        """Stop accepting, serve what is in flight and queued, cut the rest at the deadline.

        New connects are refused from the moment the listener closes (a few
        milliseconds in); connections the kernel had already completed are
        accepted and served.  ``timeout`` is the grace in seconds (None: wait
        for ever).  Idempotent: a second call waits for the first drain and
        returns its report.  Works with or without ``serve_forever`` running.
        Call from any thread except a handler thread of this server.
        """
        if getattr(_handler_thread, "server", None) is self:
            raise RuntimeError("drain() called from a handler thread would wait for itself")
        if not self.start_drain():
            report = self._registry.wait_report()
            assert report is not None
            return report
        started = self._registry.started_at
        assert started is not None
        deadline = None if timeout is None else started + max(timeout, 0.0)
        if not self.wait_drained(deadline):
            self.force_close()
        return self.finish_drain()

    def start_drain(self) -> bool:
        """Begin the drain: stop accepting, sweep the backlog, close the listener, notify.

        Returns False (and does nothing) if the drain had already started.
        Thread-safe; returns as soon as the listener is closed.
        """
        if not self._registry.begin():
            return False
        # 1. Stop the accept loop; it may be in the middle of an accept.
        self.shutdown()
        # 2. Take what the kernel already queued: closing would reset it.
        swept = self._sweep_backlog()
        # 3. Close the listener: from now on new connects are refused.
        self.socket.close()
        self._draining_from = self.active_connections + len(swept)
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

    def _sweep_backlog(self) -> list[tuple[Any, _Address]]:
        """Accept, without blocking, the connections the kernel completed before now.

        Bounded by the accept queue's length at this moment (``TCP_INFO``), or
        by a few milliseconds where the kernel does not say: under a storm of
        new connects the queue never empties, and the listener must close.
        """
        try:
            self.socket.setblocking(False)
        except OSError:  # the listener is already closed
            return []
        queued = _accept_queue_length(self.socket)
        limit = queued if queued is not None else max(self.request_queue_size, 1)
        give_up = time.monotonic() + 0.005
        swept: list[tuple[Any, _Address]] = []
        while len(swept) < limit and (queued is not None or time.monotonic() < give_up):
            try:
                request, client_address = self.get_request()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                if exc.errno in _ACCEPT_LIMIT_ERRNOS:
                    log.error("backlog sweep stopped: %s; queued clients will be reset", exc)
                break
            request.setblocking(True)
            swept.append((request, client_address))
        return swept

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
        """
        if not self._registry.mark_cut(request, forced):
            return False
        conn = self._registry.get(request)
        if conn is not None:
            conn.cut = FORCED if forced else CLOSING
        _shutdown_quietly(request, socket.SHUT_RDWR if forced else socket.SHUT_RD)
        return True

    def finish_drain(self, unwind_timeout: float | None = None) -> DrainReport:
        """Give cut handlers ``unwind_timeout`` seconds (default: the class's) to end; report."""
        report = self._registry.report
        if report is not None:
            return report
        if unwind_timeout is None:
            unwind_timeout = self.unwind_timeout
        if self._registry.count:
            self._registry.wait_for_zero(time.monotonic() + unwind_timeout)
        return self._registry.finish(self._backlog_accepted)

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


_TCP_INFO_LISTEN_QUEUE = struct.Struct("I")  # tcpi_unacked: the accept queue, on a listener
_TCP_INFO_LISTEN_QUEUE_OFFSET = 24


def _accept_queue_length(listener: socket.socket) -> int | None:
    """How many completed connections wait to be accepted (Linux), or None."""
    if listener.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return int(_TCP_INFO_LISTEN_QUEUE.unpack_from(info, _TCP_INFO_LISTEN_QUEUE_OFFSET)[0])
    except (OSError, struct.error):
        return None


def _drain_socket(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def _shutdown_quietly(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def _has_buffered_input(handler: socketserver.BaseRequestHandler, sock: socket.socket) -> bool:
    """True if the handler's buffered ``rfile`` already holds unread bytes."""
    rfile = getattr(handler, "rfile", None)
    peek = getattr(rfile, "peek", None)
    if peek is None:
        return False
    previous = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(peek(1))
    except OSError:
        return False
    finally:
        sock.settimeout(previous)


def format_address(address: _Address) -> str:
    """``host:port``, with brackets around an IPv6 host; ``unix:PATH`` for a path."""
    if isinstance(address, (str, bytes)):
        return "unix:" + (address.decode() if isinstance(address, bytes) else address)
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
