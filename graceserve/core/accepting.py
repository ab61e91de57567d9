"""The accept loop, and taking the listener out of service without resetting anyone.

Why this module exists: the two ends of a listener's life are where the stdlib
loses clients.  ``serve_forever`` polls for shutdown every 0.5 s; here the loop
sleeps in a selector woken through a socketpair, backs off when out of file
descriptors, and leaves clients in the kernel backlog when the connection cap
is reached, unless idle connections can make room for them: at the cap the
loop still watches the listener, and when a client is queued it asks the
server to close some idle ones (``reclaim_idle``; an HTTP server closes idle
keep-alive connections politely, oldest first), so a new client never waits
behind connections that do nothing.  At the drain the listener must stop
completing handshakes *before* the queue is emptied, or the handshakes that
complete between the last accept and ``close()`` are reset: a drop-all classic
BPF filter on the listening socket does that (new SYNs are dropped, the
clients retry and are refused once the listener is closed), then the queue is
swept until EAGAIN, then the listener is shut for every process holding a
copy, then closed.

Several processes may accept from one listener (workers): the kernel wakes
them all for each client and the first to run takes it.  Before it accepts,
the loop asks its hooks (``may_accept``) whether a peer holding fewer
connections should take this one; if so it stops watching the listener for
``ACCEPT_DEFER`` and looks again.  The deferral is bounded: after
``ACCEPT_DEFER_LIMIT`` of unbroken deferring the loop accepts what is queued,
and asks the hooks again only after a distrust period, which starts at
``ACCEPT_DISTRUST`` and doubles (up to ``ACCEPT_DISTRUST_MAX``) each time the
limit is reached again before a peer took a client left to it.  So a peer
that is slow for a moment costs a burst little, and one that does not accept
at all (a stopped process) costs at most one bound every ``ACCEPT_DISTRUST_MAX``.

A server may listen on several sockets (``add_listener``: ``--bind`` given
again, TCP and Unix together, or several sockets from systemd): one loop
selects over all of them, so they share one connection registry, one cap and
one drain.  ``self.socket`` (and ``server_address``) stay the first one's, as
socketserver has them; ``listeners`` and ``server_addresses`` list them all.
At the drain every listener gets the filter before any is swept, then each is
swept, shut and closed.

Threading contract: ``serve_forever`` runs in one thread; ``shutdown`` and
``close_listener`` may be called from any other thread (the drain);
``add_listener`` before ``serve_forever``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import platform
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

from graceserve.core.connection import Connection, drain_socket
from graceserve.core.drain import DrainController
from graceserve.core.serverhooks import NO_HOOKS, ServerHooks

__all__ = ["AcceptingServer", "attach_drop_all_filter"]

log = logging.getLogger("graceserve")

_Address = Any
_ACCEPT_LIMIT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: "return the constant k" (bytes of the packet to keep)
_DROP_ALL = struct.pack("=HBBI", _BPF_RET_K, 0, 0, 0)  # one instruction: ret #0
_TCP_INFO_LISTEN_QUEUE = struct.Struct("I")  # tcpi_unacked: the accept queue, on a listener
_TCP_INFO_LISTEN_QUEUE_OFFSET = 24
RECLAIM_INTERVAL = 0.1  # seconds between attempts to make room at the cap (each scans the registry)
ACCEPT_BATCH = 16  # clients accepted in one turn of the loop at most
ACCEPT_DEFER = 0.001  # seconds a client left to a peer waits before this loop looks again
ACCEPT_DEFER_LIMIT = 0.02  # ... and at most this long in a row: then it is accepted here
ACCEPT_DISTRUST = 0.05  # seconds of accepting without asking, after the limit was reached
ACCEPT_DISTRUST_MAX = 2.0  # ... doubled at each limit reached in a row, up to this


class AcceptingServer(socketserver.ThreadingTCPServer):
    """The accept half of GracefulTCPServer: the loop and the listener's end.

    Subclasses provide ``process_request`` (register, then start a thread) and
    ``handle_error``; the registry (``self._registry``) is created here because
    the connection cap reads it.  ``hooks`` (``graceserve.core.serverhooks``) are
    called by the loop (``loop_turn``) and by subclasses (``request_done``);
    ``install_hooks`` sets them.
    """

    request_queue_size = 1024
    allow_reuse_address = True
    max_connections: int | None = None
    hooks: ServerHooks = NO_HOOKS

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
        self._serving_thread: int | None = None
        self._is_shut_down = threading.Event()
        self._is_shut_down.set()
        self._accept_paused_until = 0.0
        self._accept_failing = False
        self._accept_capped = False
        self._next_reclaim = 0.0  # at the cap: no reclaim_idle before this instant
        self._defer_until = 0.0  # clients left to a peer: the listener unwatched until then
        self._deferring_since: float | None = None  # the start of this run of deferrals
        self._left_any = False  # clients were left to a peer since the last limit or trust
        self._asks_peers = False  # the hooks override may_accept (install_hooks)
        self._trust_after = 0.0  # the limit was reached: may_accept not asked until then
        self._distrust = ACCEPT_DISTRUST  # the next distrust period
        self.accept_deferrals = 0  # clients left to a peer (each look that did), for tests
        self.accept_defer_limits = 0  # runs of deferrals that reached the limit
        # The listeners after self.socket, and their addresses (add_listener).
        self._more_listeners: list[socket.socket] = []
        self._more_addresses: list[_Address] = []
        super().__init__(server_address, RequestHandlerClass, bind_and_activate)

    # -- the loop -----------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until shutdown() or the drain.

        Unlike the stdlib this does not poll for shutdown: ``shutdown()`` wakes
        the loop at once.  ``poll_interval`` only paces ``service_actions``.
        Returns at once if the drain has already started.
        """
        with self._registry.lock:  # either the drain sees us serving, or we see it
            if self._registry.draining:
                return
            # Non-blocking accepts: a listener shared with another process (a graceful
            # restart) can be readable here and emptied there before we accept.
            for listener in self.listeners:
                listener.setblocking(False)
            self._is_shut_down.clear()
            self._serving_thread = threading.get_ident()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._wakeup_r, selectors.EVENT_READ)
                listening = False
                self.hooks.loop_turn()  # the loop runs: turn 0, before its first wait
                while not self._shutdown_request:
                    paused = self._accept_paused()
                    now = time.monotonic()
                    # At the cap the listener is still watched, for clients to make room
                    # for, but after each attempt not for RECLAIM_INTERVAL: a queued
                    # client never makes the loop spin or scan the registry in a loop.
                    reclaim = self._accept_capped and now >= self._next_reclaim
                    deferring = now < self._defer_until
                    watch = not (paused or deferring) or reclaim
                    if listening != watch:
                        for listener in self.listeners:
                            if watch:
                                selector.register(listener, selectors.EVENT_READ, listener)
                            else:
                                selector.unregister(listener)
                    listening = watch
                    timeout = poll_interval
                    if paused and not self._accept_capped:
                        timeout = min(timeout, self._accept_paused_until - now)
                    elif self._accept_capped and not reclaim:
                        timeout = min(timeout, self._next_reclaim - now)
                    elif deferring:
                        timeout = min(timeout, self._defer_until - now)
                    ready = selector.select(max(timeout, 0))
                    if self._shutdown_request:
                        break
                    queued = any(key.fileobj is not self._wakeup_r for key, _ in ready)
                    if listening and not queued:  # what was left to a peer is gone:
                        self._deferring_since = None  # the next deferral starts a new run
                    for key, _ in ready:
                        if key.fileobj is self._wakeup_r:
                            drain_socket(self._wakeup_r)
                        elif paused:  # at the cap, and a client is queued
                            self._make_room(key.data)
                        elif not self._leave_to_peer():
                            self._accept_some(key.data)
                    self.service_actions()
                    self.hooks.loop_turn()  # next to service_actions (the reaper), not instead
        finally:
            self._shutdown_request = False
            self._serving_thread = None
            self._is_shut_down.set()

    def install_hooks(self, hooks: ServerHooks) -> None:
        """Call ``hooks`` (a heartbeat, request counting) from now on.

        Call before ``serve_forever`` starts (RuntimeError after): a runner's
        hooks see every turn and every request, or none.
        """
        if self._serving_thread is not None:
            raise RuntimeError("install_hooks() must be called before serve_forever()")
        self.hooks = hooks
        self._asks_peers = type(hooks).may_accept is not ServerHooks.may_accept

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

    def _leave_to_peer(self) -> bool:
        """Whether to leave the queued client to a peer for ``ACCEPT_DEFER`` (the hooks
        say so, and this run of deferrals is shorter than ``ACCEPT_DEFER_LIMIT``).

        A run is unbroken while a client stays queued: it ends when the loop,
        watching again, finds the queue empty (someone took the clients: under a
        steady stream the next one comes within the limit, and starts a new run),
        or when a look comes later than the limit after the last deferral's end
        (the loop did not watch meanwhile).  The distrust period starts again from
        ``ACCEPT_DISTRUST`` when the hooks let this loop accept after it left
        clients to a peer (the peer took them and caught up); not when the queue
        empties: that says nothing of who took the clients (a peer that does not
        ask, or that defers too, to a stopped process, and took them at its own
        limit).  Never raises.
        """
        if not self._asks_peers:
            return False
        now = time.monotonic()
        if now < self._trust_after:
            return False
        try:
            accept = self.hooks.may_accept(self._registry.count)
        except Exception:
            log.exception("may_accept() raised")
            accept = True
        since = self._deferring_since
        if accept:
            self._deferring_since = None
            if self._left_any:  # a peer took what was left to it, and caught up
                self._left_any = False
                self._distrust = ACCEPT_DISTRUST
            return False
        if since is None or now - self._defer_until > ACCEPT_DEFER_LIMIT:
            self._deferring_since = now
        elif now - since >= ACCEPT_DEFER_LIMIT:  # the peers do not take them: we do
            self._deferring_since = None
            self._left_any = False
            self._trust_after = now + self._distrust
            self._distrust = min(self._distrust * 2, ACCEPT_DISTRUST_MAX)
            self.accept_defer_limits += 1
            return False
        self._left_any = True
        self._defer_until = now + ACCEPT_DEFER
        self.accept_deferrals += 1
        return True

    def _make_room(self, listener: socket.socket) -> None:
        """At the cap with clients queued: ask ``reclaim_idle`` to close idle connections.

        Each one it closes wakes the loop as it ends (a slot is free), and the
        loop accepts.  Never raises.
        """
        if not self._accept_paused():  # a slot freed meanwhile: the loop accepts next
            return
        self._next_reclaim = time.monotonic() + RECLAIM_INTERVAL
        queued = _accept_queue_length(listener) or 1
        try:
            self.reclaim_idle(queued)
        except Exception:
            log.exception("reclaim_idle() raised")

    def reclaim_idle(self, wanted: int) -> int:
        """Close up to ``wanted`` idle connections to make room at ``max_connections``.

        Called by the accept loop when it is at the cap and clients are
        queued; returns how many it closed (their handlers end, which frees
        their slots).  This server does not know which connections are idle:
        it closes none.  May be overridden (the HTTP server does); must not
        block.
        """
        return 0

    def _wake(self) -> None:
        # OSError: full (a wake-up is already pending) or closed.
        with contextlib.suppress(OSError):
            self._wakeup_w.send(b"\0")

    # -- the listeners --------------------------------------------------------

    def add_listener(self, sock: socket.socket) -> None:
        """Accept on ``sock`` too: a bound stream socket (TCP or Unix), put in
        listening state here with ``request_queue_size``.

        The server owns it from here on (the drain closes it).  Connections from
        every listener share the registry, the connection cap and the drain.
        Call before ``serve_forever`` (RuntimeError after, or once draining).
        """
        if self._serving_thread is not None or self._registry.draining:
            raise RuntimeError("add_listener() must be called before serve_forever()")
        sock.listen(self.request_queue_size)
        self._more_listeners.append(sock)
        self._more_addresses.append(sock.getsockname())

    @property
    def listeners(self) -> list[socket.socket]:
        """Every listening socket, ``self.socket`` first.  A new list each time."""
        return [self.socket, *self._more_listeners]

    @property
    def server_addresses(self) -> list[_Address]:
        """The address of every listener, ``server_address`` first (a new list).

        (host, port) for TCP (IPv6: socketserver's 4-tuple), a path for a Unix socket.
        """
        return [self.server_address, *self._more_addresses]

    def get_request(self) -> tuple[socket.socket, _Address]:
        """Accept a connection on ``self.socket`` (socketserver's hook): ``accept_from``.

        Overriding it still works, for the first listener only; ``accept_from``
        is the hook every listener goes through.
        """
        return self.accept_from(self.socket)

    def accept_from(self, listener: socket.socket) -> tuple[socket.socket, _Address]:
        """Accept one connection on ``listener`` (one of ``listeners``).  May be extended."""
        return listener.accept()

    def _accept(self, listener: socket.socket) -> tuple[socket.socket, _Address]:
        if listener is self.socket:
            return self.get_request()  # a subclass's override of the stdlib hook
        return self.accept_from(listener)

    def _accept_some(self, listener: socket.socket) -> None:
        """Accept up to ``ACCEPT_BATCH`` queued clients on ``listener``: fewer once none is
        queued, the cap is reached, or a peer should take the next.  A burst of clients
        costs one turn of the loop per batch, not per client."""
        for _ in range(ACCEPT_BATCH):
            if not self._accept_one(listener) or self._accept_paused() or self._leave_to_peer():
                return

    def _handle_request_noblock(self, listener: socket.socket | None = None) -> None:
        """Accept one connection and hand it over.  Never raises for a client's sake."""
        self._accept_one(listener or self.socket)

    def _accept_one(self, listener: socket.socket) -> bool:
        """``_handle_request_noblock`` on ``listener``; whether a client was accepted."""
        try:
            request, client_address = self._accept(listener)
        except OSError as exc:
            self._accept_failed(exc)
            return False
        self._accept_recovered()
        self._handle_accepted(request, client_address)
        return True

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

    # -- the listener's end -------------------------------------------------

    def close_listener(self, shared: bool = False) -> tuple[list[tuple[Any, _Address]], int]:
        """Take every listener out of service; the connections swept from their
        queues, and how many queued clients could not be accepted (reset by the close).

        Call after the accept loop has stopped.  With ``shared`` (another
        process serves on, or will serve on, the same listening sockets: the
        worker a reload started, or systemd, which keeps an activated
        socket to start the service again) only our copies are closed: no filter,
        no sweep, no ``shutdown``, since all of those act on the socket every
        holder shares.  Otherwise every listener gets the filter first, so none
        completes a handshake while another is swept.
        """
        listeners = self.listeners
        if shared:
            for listener in listeners:
                listener.close()
            return [], 0
        filtered = [attach_drop_all_filter(listener) for listener in listeners]
        swept: list[tuple[Any, _Address]] = []
        lost = 0
        for listener, until_empty in zip(listeners, filtered, strict=True):
            taken, left = self._sweep_backlog(listener, until_empty)
            swept += taken
            lost += left
        if lost:
            log.error(
                "%d queued clients will be reset: out of file descriptors to accept them", lost
            )
        for listener in listeners:
            # Out of service for every process holding a copy (a handler that forked).
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        return swept, lost

    def _sweep_backlog(
        self, listener: socket.socket, until_empty: bool
    ) -> tuple[list[tuple[Any, _Address]], int]:
        """Accept, without blocking, what the kernel already queued on ``listener``;
        and count what is left.

        ``until_empty``: no new handshake can complete (the filter is on), so
        sweep until EAGAIN.  Otherwise today's bound: the accept queue's length
        at this moment (``TCP_INFO``), or a few milliseconds where the kernel
        does not say, since under a storm of new connects the queue never empties.
        """
        try:
            listener.setblocking(False)
        except OSError:  # the listener is already closed
            return [], 0
        queued = None if until_empty else _accept_queue_length(listener)
        limit = queued if queued is not None else 4 * max(self.request_queue_size, 1024)
        give_up = time.monotonic() + 0.005
        swept: list[tuple[Any, _Address]] = []
        lost = 0
        while len(swept) < limit and (
            until_empty or queued is not None or time.monotonic() < give_up
        ):
            try:
                request, client_address = self._accept(listener)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                if exc.errno in _ACCEPT_LIMIT_ERRNOS:
                    lost = _queued_left(listener)
                break
            request.setblocking(True)
            swept.append((request, client_address))
        return swept, lost

    def server_close(self) -> None:
        """Close every listener (socketserver closes ``self.socket``).  Idempotent."""
        super().server_close()
        for listener in self._more_listeners:
            listener.close()


def attach_drop_all_filter(listener: socket.socket) -> bool:
    """Make ``listener`` drop every packet it receives; True if the filter is on (Linux).

    A listening socket with this filter completes no new handshake (their
    SYNs and final ACKs are dropped; clients retry and are refused once the
    listener is closed), while the connections already queued stay acceptable.
    The ``sock_fprog`` points at the instruction with the address of a bytes
    object's buffer (CPython's layout; elsewhere, no filter).
    """
    if sys.platform != "linux" or platform.python_implementation() != "CPython":
        return False
    if listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    program = _DROP_ALL
    address = id(program) + sys.getsizeof(b"") - 1  # PyBytesObject.ob_sval
    fprog = struct.pack("@HP", 1, address)
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.debug("cannot filter the listener (%s); closing it unfiltered", exc)
        return False
    return True


def _accept_queue_length(listener: socket.socket) -> int | None:
    """How many completed connections wait to be accepted (Linux), or None."""
    if listener.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return int(_TCP_INFO_LISTEN_QUEUE.unpack_from(info, _TCP_INFO_LISTEN_QUEUE_OFFSET)[0])
    except (OSError, struct.error):
        return None


def _queued_left(listener: socket.socket) -> int:
    """Clients still queued on ``listener``; at least 1 if it is readable and the kernel
    does not say how many."""
    queued = _accept_queue_length(listener)
    if queued is not None:
        return queued
    try:
        readable, _, _ = select.select([listener], [], [], 0)
    except (OSError, ValueError):
        return 0
    return 1 if readable else 0
