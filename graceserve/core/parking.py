"""Parked connections: idle ones wait in one epoll, a bounded set of threads serves the ready ones.

Why this module exists: a thread per connection costs a thread (stack, a
wake-up and a GIL hand-off per request) for every client, busy or not: 10,000
idle keep-alive clients were 10,003 threads and ~300 MiB, and at a thousand
busy ones the GIL's unfairness left some clients waiting seconds.  Here
threads follow work instead:

- a connection with nothing to read is *parked*: its socket is armed in one
  ``epoll`` (``EPOLLONESHOT``: one event per arming, so a parked connection is
  handed to exactly one thread), and no thread waits for it;
- one pool thread at a time is normally *running*: it waits in ``epoll.poll``
  (holding ``_poll_lock``), queues what became readable, and serves the queue
  itself, one session after another, like an event loop.  The others are
  *spares*, each asleep on its own lock.  With one thread running there is no
  GIL hand-off between threads per request (with one thread per ready
  connection every system call of a request handed the GIL to another thread:
  ~12 futex calls and ~6.6 context switches per request at 50 connections);
- a spare is woken only when work may be waiting (input queued, or nobody
  waiting for input) and the threads serving cannot take it: they are
  *blocked* (an app waiting on I/O, a client trickling its request: together
  they used less than ``BUSY`` of the last tick's CPU, and none of them is
  running or waiting for a CPU now, so a thread that is merely slow for want
  of a CPU on a loaded machine is not taken for blocked), or no session began
  for ``LONG`` (one computes at length: the others then share the GIL with
  it, as threads always did).  The pool's *watcher* thread looks every
  ``TICK`` while sessions are served, and sleeps while the pool is idle.  It
  wakes as many spares as sessions are queued (at least one); for ``BLOCKING``
  seconds after it found threads blocked, a poll that finds several sessions
  ready wakes a spare for each at once, without waiting for the next tick.  A running
  thread that finds nothing queued and another thread already polling
  becomes a spare again, so an app that only computes is served by one
  thread, and one that waits gets as many as it waits on (up to ``threads``);
- a session serves what it was woken for, and parks again only when nothing
  is buffered (a pipelined request is served on the same thread);
- a thread blocks while a session reads the rest of a request, so clients
  that trickle their requests could hold every thread until the idle timeout
  cuts them.  The pool does not let them deny service: when no session has
  finished for ``STALL`` seconds while input waits (``unstick``, called by the
  accept loop), it starts threads for the waiting sessions, up to
  ``max_threads``; threads beyond ``size`` end as soon as they find nothing
  queued.

The pool knows nothing of HTTP and keeps no timers of its own (the watcher's
tick only decides when to wake spares): the server's reaper closes
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
_now = time.monotonic

_ARM = getattr(select, "EPOLLIN", 1) | getattr(select, "EPOLLONESHOT", 1 << 30)
_BATCH = 256  # events taken per epoll wait
TICK = 0.002  # seconds between the watcher's looks while sessions are served
BUSY = 0.5  # the share of a tick the threads serving must have used the CPU for: below it,
# and none of them runnable, they are blocked (wake spares for the work waiting)
BLOCKING = 1.0  # seconds after threads were found blocked during which a poll that finds
# several sessions ready wakes a spare for each at once (the app blocks: do not wait a tick)
LONG = 0.02  # seconds one session may compute while work waits before a spare shares the GIL
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


class _Worker:
    """A pool thread as the watcher sees it: its id, and whether it sleeps as a spare."""

    __slots__ = ("clock", "cpu", "lock", "spare", "stat")

    def __init__(self) -> None:
        """Made by the thread itself (its CPU clock is asked for while it surely lives)."""
        self.clock = time.pthread_getcpuclockid(threading.get_ident())
        self.stat = f"/proc/self/task/{threading.get_native_id()}/stat"
        self.cpu = -1  # its CPU time at the watcher's last look (-1: not looked at)
        self.lock = threading.Lock()  # held; the thread sleeps on it as a spare
        self.lock.acquire()
        self.spare = False

    def cpu_since(self) -> int | None:
        """Nanoseconds of CPU since the previous call (None at the first, or once ended)."""
        try:
            now = time.clock_gettime_ns(self.clock)
        except OSError:
            return None
        before, self.cpu = self.cpu, now
        return None if before < 0 else now - before

    def runnable(self) -> bool:
        """Whether the thread is running or waiting for a CPU (not blocked) right now;
        True when that cannot be told (no ``/proc``)."""
        try:
            with open(self.stat, "rb") as stat:
                line = stat.read(512)
        except OSError:
            return True
        state = line.rfind(b")") + 2  # after the name, which may hold ") "
        return line[state : state + 1] == b"R"


class ConnectionPool:
    """Up to ``threads`` threads serving the sessions parked here as they become readable.

    The threads are started by ``start`` or the first ``park``.  ``thread_setup`` runs first
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
        self._workers: dict[threading.Thread, _Worker] = {}
        self._spares: collections.deque[_Worker] = collections.deque()  # asleep, each on its
        # own (held) lock; releasing it wakes that thread
        self._active = threading.Event()  # set while sessions are served: the watcher looks
        self._watcher: threading.Thread | None = None
        self._blocking_until = 0.0  # see BLOCKING
        self._closed = False
        self.woken = 0
        """Times a spare was woken by the watcher (a statistic; for tests and the bench)."""
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
    def watching(self) -> bool:
        """Whether the watcher is looking (sessions are being served); False while the
        pool is idle (a snapshot)."""
        return self._active.is_set()

    @property
    def parked(self) -> int:
        """Sessions parked or queued for a thread right now (a snapshot)."""
        return len(self._parked)

    # -- any thread -------------------------------------------------------------------

    def start(self) -> None:
        """Start the threads now (else the first ``park`` does).  Idempotent; any thread."""
        if not self._threads:
            self._start()

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
        self._wake_spares(len(self._spares))
        self._active.set()  # the watcher sees ``_closed``
        current = threading.current_thread()
        deadline = time.monotonic() + _JOIN_TIMEOUT  # one budget for all of them
        threads = list(self._threads)
        if self._watcher is not None:
            threads.append(self._watcher)
        for thread in threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        if not any(thread.is_alive() for thread in threads):
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
        # The watcher may have taken this hold for a thread waiting for input and gone to
        # sleep, and a thread that met it become a spare: now nobody may poll.  It looks again.
        self._active.set()
        self._seen_at = now  # the next growth, if still stuck, after another STALL
        return self._add_threads(len(self._ready))

    # -- the pool's threads -----------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if not self._threads and not self._closed:
                self._add_threads_locked(self.size)
                if self.size > 1:  # with one thread there is no spare to wake
                    self._watcher = threading.Thread(
                        target=self._watch, name=f"{self._name}-watcher", daemon=True
                    )
                    self._watcher.start()

    def _add_threads(self, wanted: int) -> int:
        with self._start_lock:
            return self._add_threads_locked(wanted)

    def _add_threads_locked(self, wanted: int) -> int:
        """Start up to ``wanted`` threads (``max_threads`` in all); with ``_start_lock`` held.
        One beyond ``size`` is counted in ``grown`` before it starts (what it serves is seen
        by then: a test that reads ``grown`` once served must not race the count)."""
        started = 0
        while not self._closed and started < wanted and len(self._threads) < self.max_threads:
            self._serial += 1
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{self._serial}", daemon=True
            )
            if len(self._threads) >= self.size:
                self.grown += 1
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
        worker = self._workers[threading.current_thread()] = _Worker()
        try:
            self._serve(worker)
        finally:
            self._workers.pop(threading.current_thread(), None)

    def _serve(self, worker: _Worker) -> None:
        while True:
            session = self._next(worker)
            if session is None:
                return
            self._turns += 1
            try:
                park = session.resume()
            except BaseException:  # resume handles its own errors; this is a last resort
                log.exception("a pooled connection raised past its handler")
                park = False
            if park:
                self.park(session)

    def _next(self, worker: _Worker) -> Session | None:
        """The next ready session: queued, or polled for when no other thread polls (else
        this thread sleeps as a spare until woken); None at close."""
        ready = self._ready
        while True:
            try:
                return ready.popleft()
            except IndexError:
                pass
            if self._closed:
                return None
            if len(self._threads) > self.size and self._retire():
                return None  # an extra thread, and nothing is queued
            if self._poll_lock.acquire(blocking=False):
                try:
                    if ready or self._closed:
                        continue
                    if not self._queue_events(-1):
                        return None
                finally:
                    self._poll_lock.release()
                if ready:
                    if not self._active.is_set():
                        self._active.set()  # sessions to serve: the watcher looks again
                    if len(ready) > 1 and self._spares and _now() < self._blocking_until:
                        # The app has been blocking: a thread for each (the watcher would
                        # wake them a tick later, once this thread is blocked in the first).
                        self.woken += self._wake_spares(len(ready) - 1)
                continue
            # Another thread waits for input: sleep until the watcher wakes this one.
            worker.spare = True
            self._spares.append(worker)
            if self._closed:
                return None
            worker.lock.acquire()
            worker.spare = False

    def _wake_spares(self, count: int) -> int:
        """Wake up to ``count`` spare threads; how many were woken."""
        woken = 0
        spares = self._spares
        while woken < count:
            try:
                worker = spares.popleft()
            except IndexError:
                break
            worker.lock.release()
            woken += 1
        return woken

    def _watch(self) -> None:
        """The watcher (see the module's docstring): while sessions are served, every
        ``TICK``, wake spares when work may be waiting and the threads serving are blocked
        (they used less than ``BUSY`` of the tick's CPU, and none is running or waiting for
        a CPU now), or when no session began for ``LONG`` (one computes at length: the
        others share the GIL with it, as threads do).  Asleep while the pool is idle."""
        active, ready = self._active, self._ready
        while not self._closed:
            active.wait()
            seen_turns, seen_at = self._turns, _now()
            moved_at = seen_at  # when a session last began
            self._serving_cpu()
            while not self._closed:
                time.sleep(TICK)
                turns, now = self._turns, _now()
                used = self._serving_cpu()
                if turns != seen_turns:
                    moved_at = now
                waiting = self._work_may_wait()
                if not waiting:
                    if turns == seen_turns:  # a thread waits for input, nothing else moves
                        active.clear()
                        if not self._work_may_wait():  # (re-checked after the clear)
                            break
                        active.set()
                elif now - moved_at >= LONG:  # one computes at length
                    self.woken += self._wake_spares(max(1, len(ready)))
                    moved_at = now  # (the next spare after another LONG)
                elif (
                    used is not None
                    and used < BUSY * 1e9 * (now - seen_at)
                    and self._spares  # (else none to wake: spare the /proc reads)
                    and not self._serving_runnable()
                ):  # blocked
                    self.woken += self._wake_spares(max(1, len(ready)))
                    self._blocking_until = now + BLOCKING
                seen_turns, seen_at = turns, now

    def _work_may_wait(self) -> bool:
        """Sessions are queued, or no thread waits for input (a snapshot)."""
        return bool(self._ready) or not self._poll_lock.locked()

    def _serving_runnable(self) -> bool:
        """Whether a thread not asleep as a spare is running or waiting for a CPU (then it
        is slow for want of a CPU, not blocked, and more threads would not help)."""
        workers = list(self._workers.values())
        return any(worker.runnable() for worker in workers if not worker.spare)

    def _serving_cpu(self) -> int | None:
        """The CPU nanoseconds the threads not asleep as spares used since the previous call;
        None when one of them was not looked at then (it just began serving: counting it
        as blocked would wake spares in cascade)."""
        total: int | None = 0
        for worker in list(self._workers.values()):
            if worker.spare:
                worker.cpu = -1
                continue
            used = worker.cpu_since()
            if used is None or total is None:
                total = None
            else:
                total += used
        return total

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
