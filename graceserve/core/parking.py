"""Parked connections: idle ones wait in one epoll, a bounded set of threads serves the ready ones.

Why this module exists: a thread per connection costs a thread (stack, a
wake-up and a GIL hand-off per request) for every client, busy or not: 10,000
idle keep-alive clients were 10,003 threads and ~300 MiB, and at a thousand
busy ones the GIL's unfairness left some clients waiting seconds.  Here
threads follow work instead:

- a connection with nothing to read is *parked*: its socket is armed in one
  ``epoll`` (``EPOLLONESHOT``: one event per arming, so a parked connection is
  handed to exactly one thread), and no thread waits for it;
- the pool's threads take turns being the *poller* (leader/follower): the one
  holding ``_poll_lock`` waits in ``epoll.poll``, queues what became readable,
  and serves the first itself; the others take the queued ones.  There is no
  separate parker thread, so a ready connection is served by the thread that
  noticed it, without a hand-off, whenever that thread is free;
- a session serves what it was woken for, and parks again only when nothing
  is buffered (a pipelined request is served on the same thread);
- a thread blocks while a session reads the rest of a request, so clients
  that trickle their requests could hold every thread until the idle timeout
  cuts them.  The pool does not let them deny service: when no session has
  finished for ``STALL`` seconds while input waits (``unstick``, called by the
  accept loop), it starts threads for the waiting sessions, up to
  ``max_threads``; threads beyond ``size`` end as soon as they find nothing
  queued.

The pool knows nothing of HTTP and has no timers: the server's reaper closes
idle connections (idle timeout, drain linger, the connection cap) by shutting
their read side, which makes a parked socket readable, so a thread resumes it,
meets the EOF, and ends it the ordinary way.  Needs ``select.epoll`` (Linux);
``ConnectionPool.available()`` says whether it is there.

Threading contract: ``park`` and ``forget`` may be called from any thread
(``epoll_ctl`` is thread-safe; the dict of parked sessions is only changed by
single operations under the GIL); ``close`` once, from the thread that owns
the server, after the drain.  A session is run by one pool thread at a time.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["ConnectionPool", "Session"]

log = logging.getLogger("graceserve")

_ARM = getattr(select, "EPOLLIN", 1) | getattr(select, "EPOLLONESHOT", 1 << 30)
_BATCH = 256  # events taken per epoll wait
STALL = 1.0  # seconds without a finished turn, with input waiting, before the pool grows
_JOIN_TIMEOUT = 0.5  # seconds ``close`` waits for the threads, all together (idle ones end
# at once; one still in an app after the drain's deadline is left behind, as a daemon)


class Session(Protocol):
    """A connection as the pool runs it."""

    def fileno(self) -> int:
        """The descriptor watched for input (fixed for the session's life)."""

    def resume(self) -> bool:
        """Serve what arrived; True when idle again with nothing buffered (park it),
        False once the session has ended and cleaned up (it called ``forget``)."""


class ConnectionPool:
    """Up to ``threads`` threads serving the sessions parked here as they become readable.

    The threads are started at the first ``park``.  ``thread_setup`` runs first
    in each (the server marks its handler threads with it).  While all of them
    are stuck (see ``unstick``) up to ``max_threads`` run.
    """

    def __init__(
        self,
        threads: int,
        name: str = "graceserve-pool",
        thread_setup: Callable[[], None] | None = None,
        max_threads: int | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"a pool needs at least one thread, not {threads}")
        self.size = threads
        self.max_threads = max(threads, max_threads or threads)
        self._turns = 0  # sessions served (a progress mark for ``unstick``)
        self._seen_turns = -1
        self._seen_at = 0.0
        self._serial = 0
        self.grown = 0
        """Threads started beyond ``size`` by ``unstick`` (a statistic)."""
        self._name = name
        self._setup = thread_setup
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._epoll.register(self._wake_r.fileno(), getattr(select, "EPOLLIN", 1))
        self._parked: dict[int, Session] = {}  # fd -> session, armed or queued
        self._registered: set[int] = set()  # fds known to the epoll (armed or spent)
        self._ready: collections.deque[Session] = collections.deque()
        self._poll_lock = threading.Lock()  # held by the one thread waiting in epoll.poll
        self._start_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.parks = 0
        """How many times a session was parked (a statistic; for tests and the bench)."""

    @staticmethod
    def available() -> bool:
        """Whether this platform has what the pool needs (``select.epoll``)."""
        return hasattr(select, "epoll")

    @property
    def threads(self) -> int:
        """Threads running: ``size``, more while sessions were stuck (``unstick``)."""
        return len(self._threads)

    @property
    def parked(self) -> int:
        """Sessions parked or queued for a thread right now (a snapshot)."""
        return len(self._parked)

    # -- any thread -------------------------------------------------------------------

    def park(self, session: Session) -> None:
        """Watch ``session``; a pool thread resumes it when it has input (or EOF)."""
        if not self._threads:
            self._start()
        fd = session.fileno()
        self._parked[fd] = session
        self.parks += 1
        try:
            self._arm(fd)
        except (OSError, ValueError):  # closed meanwhile: resume it, it meets the end
            self._ready.append(session)
            self._wake()

    def _arm(self, fd: int) -> None:
        """One event for ``fd``'s next input.  Recorded as registered *before* it is: the
        event may fire, and the session be served and parked again by a pool thread,
        before ``register`` returns here."""
        if fd in self._registered:
            self._epoll.modify(fd, _ARM)
            return
        self._registered.add(fd)
        try:
            self._epoll.register(fd, _ARM)
        except FileExistsError:  # armed by that pool thread meanwhile: arm (again)
            self._epoll.modify(fd, _ARM)

    def forget(self, session: Session) -> None:
        """Stop watching ``session``; call before its socket is closed."""
        fd = session.fileno()
        if self._parked.get(fd) is session:
            del self._parked[fd]
        if fd in self._registered:
            self._registered.discard(fd)
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def close(self) -> None:
        """Stop the threads (each ends after its current session) and wait a little for them.

        Sessions still parked are left as they are (the drain has cut them).
        """
        self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        current = threading.current_thread()
        deadline = time.monotonic() + _JOIN_TIMEOUT  # one budget for all of them
        for thread in self._threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        if not any(thread.is_alive() for thread in self._threads):
            self._epoll.close()
            self._wake_r.close()
            self._wake_w.close()

    def unstick(self, now: float) -> int:
        """Start threads for waiting input if no session finished for ``STALL`` seconds;
        how many were started.

        Call periodically from one thread (the accept loop); ``now`` is
        ``time.monotonic()``.  Cheap when the pool makes progress (a comparison)
        or has a thread waiting for input (its poll lock is held).  Otherwise
        the ready input is taken from the epoll here and queued, and a thread
        is started for each queued session, up to ``max_threads`` in all.
        """
        turns = self._turns
        if turns != self._seen_turns:
            self._seen_turns, self._seen_at = turns, now
            return 0
        if now - self._seen_at < STALL or self._closed or not self._threads:
            return 0
        if not self._poll_lock.acquire(blocking=False):
            return 0  # a thread is waiting for input: nothing is stuck
        try:
            self._queue_events(0)
        finally:
            self._poll_lock.release()
        self._seen_at = now  # the next growth, if still stuck, after another STALL
        started = self._add_threads(len(self._ready))
        self.grown += started
        return started

    # -- the pool's threads -----------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if not self._threads:
                self._add_threads_locked(self.size)

    def _add_threads(self, wanted: int) -> int:
        with self._start_lock:
            return self._add_threads_locked(wanted)

    def _add_threads_locked(self, wanted: int) -> int:
        """Start up to ``wanted`` threads (``max_threads`` in all); with ``_start_lock`` held."""
        started = 0
        while not self._closed and started < wanted and len(self._threads) < self.max_threads:
            self._serial += 1
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{self._serial}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            started += 1
        return started

    def _retire(self) -> bool:
        """End the calling thread if the pool has more than ``size``: True if so."""
        with self._start_lock:
            if len(self._threads) <= self.size:
                return False
            self._threads.remove(threading.current_thread())
            return True

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _work(self) -> None:
        if self._setup is not None:
            self._setup()
        while True:
            session = self._next()
            if session is None:
                return
            try:
                park = session.resume()
            except BaseException:  # resume handles its own errors; this is a last resort
                log.exception("a pooled connection raised past its handler")
                park = False
            self._turns += 1
            if park:
                self.park(session)

    def _next(self) -> Session | None:
        """The next ready session, polling for one when none is queued; None at close."""
        ready = self._ready
        while True:
            try:
                return ready.popleft()
            except IndexError:
                pass
            if len(self._threads) > self.size and self._retire():
                return None  # an extra thread, and nothing is queued
            with self._poll_lock:
                if self._closed:
                    return None
                if ready:
                    continue
                if not self._queue_events(-1):
                    return None

    def _queue_events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` (-1: no limit) for input; queue the sessions that have
        some.  Call with ``_poll_lock`` held.  False if the epoll is closed."""
        try:
            events = self._epoll.poll(timeout, _BATCH)
        except (OSError, ValueError):  # closed under us
            return False
        wake = self._wake_r.fileno()
        parked = self._parked
        ready = self._ready
        for fd, _ in events:
            if fd == wake:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
                continue
            session = parked.pop(fd, None)
            if session is not None:
                ready.append(session)
        return True
