"""The drain controller: the registry of live connections and the wait for zero.

Why this module exists: every question a drain asks ("how many connections are
live?", "has the drain started?", "are we at zero yet?", "which ones were cut?")
must be answered under one lock, or a connection can slip between "the count is
zero" and "the process exits".  So all of that state lives here, behind a single
``threading.Condition``, and nothing else in graceserve keeps a count of its own.

Rule: no sockets and no signals in this module.  The controller stores opaque
keys and values and calls nothing but the clock; the servers decide what a key
is (a socket) and how a connection is cut.  That keeps it testable without I/O.

Waiting is never polling: ``discard`` notifies the Condition the moment the
registry becomes empty, so a waiter wakes within the time it takes to switch
threads.  Waiters may pass a deadline and a ``wake_up`` predicate; whoever makes
the predicate true (a signal relay, say) must notify the Condition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["CLOSING", "FORCED", "OPEN", "DrainController", "DrainReport"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

OPEN, CLOSING, FORCED = 0, 1, 2
"""What has been done to a connection: nothing, read side shut while idle, cut by force."""


@dataclass(frozen=True)
class DrainReport:
    """What a drain did.  Immutable; safe to share between threads."""

    clean: bool
    """Every connection finished by itself before the deadline."""
    forced: int
    """Connections cut (at the deadline, or on request)."""
    elapsed: float
    """Seconds from the start of the drain to its end."""
    active_at_start: int
    """Connections live when the drain started."""
    served_during_drain: int
    """Connections that ended by themselves while draining (backlog ones included)."""
    backlog_accepted: int
    """Connections the kernel had already completed, accepted and served by the drain."""
    idle_closed: int
    """Idle keep-alive connections closed cleanly by the drain."""
    remaining: int
    """Connections still registered when the drain returned (handlers that ignored the cut)."""
    lost: int = 0
    """Clients the kernel had queued that could not be accepted (out of file descriptors)
    and were reset when the listener closed.  A drain that lost any is not clean."""


class DrainController(Generic[K, V]):
    """Registry of live connections under one Condition, and the drain's state.

    Thread-safe: every method may be called from any thread.  ``condition`` is
    public so that callers can hold the lock across several reads, and so that
    a thread that makes a ``wake_up`` predicate true can notify the waiters.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.RLock()
        """The Condition's lock: ``with lock:`` is the cheap way to hold it."""
        self.condition = threading.Condition(self.lock)
        self._clock = clock
        self._live: dict[K, V] = {}
        self._cut: dict[K, int] = {}  # key -> CLOSING or FORCED: the one record of a cut
        self._idle_counted: set[K] = set()  # closed while idle during the drain
        self._started_at: float | None = None
        self._active_at_start = 0
        self._ended_during_drain = 0
        self._forced = 0
        self._idle_closed = 0
        self._report: DrainReport | None = None

    # -- the registry -------------------------------------------------------

    def add(self, key: K, value: V) -> None:
        """Register a live connection."""
        with self.condition:
            self._live[key] = value

    def discard(self, key: K) -> V | None:
        """Forget a connection; idempotent.  Wakes the waiters when it was the last."""
        with self.condition:
            if key not in self._live:
                return None
            value = self._live.pop(key)
            self._idle_counted.discard(key)
            if self._cut.pop(key, None) is not None:
                pass
            elif self._started_at is not None:
                self._ended_during_drain += 1
            if not self._live:
                self.condition.notify_all()
            return value

    def get(self, key: K) -> V | None:
        """The value registered for ``key``, or None."""
        with self.condition:
            return self._live.get(key)

    @property
    def count(self) -> int:
        """How many connections are live right now."""
        with self.condition:
            return len(self._live)

    @contextmanager
    def locked_items(self) -> Iterator[list[tuple[K, V]]]:
        """Hold the lock and yield a snapshot of the registry.

        While the block runs no connection can be added or discarded, so a key
        yielded here still belongs to its connection (a socket is unregistered
        before it is closed, so its file descriptor cannot have been reused).
        """
        with self.condition:
            yield list(self._live.items())

    def mark_cut(self, key: K, forced: bool = True) -> bool:
        """Record that the connection ``key`` is being cut; False if there is nothing to do.

        Call with the lock held (inside ``locked_items``).  A forced cut (work
        interrupted) during the drain counts in the report's ``forced``; an
        unforced one (an idle keep-alive connection closed) in ``idle_closed``.
        An unforced cut can later be made forced.  Either way the connection
        does not count as served when it ends.
        """
        if key not in self._live:
            return False
        previous = self._cut.get(key, OPEN)
        if previous == FORCED or (previous == CLOSING and not forced):
            return False
        self._cut[key] = FORCED if forced else CLOSING
        if key in self._idle_counted:  # it was counted as closed while idle: no longer
            self._idle_counted.discard(key)
            self._idle_closed -= 1
        if self._started_at is not None:
            if forced:
                self._forced += 1
            else:
                self._idle_closed += 1
                self._idle_counted.add(key)
        return True

    def is_cut(self, key: K) -> bool:
        """Whether ``key`` was cut.  Call with the lock held for a stable answer."""
        return key in self._cut

    def cut_state(self, key: K) -> int:
        """OPEN, CLOSING or FORCED: what was done to ``key``.  Call with the lock held."""
        return self._cut.get(key, OPEN)

    @property
    def cuts(self) -> Mapping[K, int]:
        """The cuts recorded, by key (read-only; a live view).  ``cuts.get(key, OPEN)`` is
        ``cut_state(key)`` for a caller on a per-request path (one call less); read it with
        the lock held for a stable answer."""
        return self._cut

    # -- the drain ----------------------------------------------------------

    @property
    def draining(self) -> bool:
        """True from the moment ``begin`` was first called."""
        return self._started_at is not None

    @property
    def started_at(self) -> float | None:
        """The clock reading when the drain began, or None."""
        return self._started_at

    def begin(self, at: float | None = None) -> bool:
        """Mark the drain as started (at clock reading ``at``, default now); True only
        for the call that started it.  The grace and the report's ``elapsed`` are both
        measured from this one instant."""
        with self.condition:
            if self._started_at is not None:
                return False
            self._started_at = self._clock() if at is None else at
            self._active_at_start = len(self._live)
            return True

    def wait_for_zero(
        self,
        deadline: float | None = None,
        wake_up: Callable[[], bool] | None = None,
    ) -> bool:
        """Block until no connection is live; True if that happened.

        Returns False at ``deadline`` (a clock instant, None for never) or as
        soon as ``wake_up()`` is true.  ``wake_up`` is evaluated with the lock
        held; whoever changes its answer must notify ``condition``.
        """
        with self.condition:
            while self._live:
                if wake_up is not None and wake_up():
                    return False
                if deadline is None:
                    self.condition.wait()
                    continue
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                self.condition.wait(remaining)
            return True

    def finish(self, backlog_accepted: int = 0, lost: int = 0) -> DrainReport:
        """Close the books: build the report (once) and wake everyone waiting for it."""
        with self.condition:
            if self._report is not None:
                return self._report
            started = self._started_at if self._started_at is not None else self._clock()
            self._report = DrainReport(
                clean=self._forced == 0 and not self._live and not lost,
                forced=self._forced,
                elapsed=self._clock() - started,
                active_at_start=self._active_at_start,
                served_during_drain=self._ended_during_drain,
                backlog_accepted=backlog_accepted,
                idle_closed=self._idle_closed,
                remaining=len(self._live),
                lost=lost,
            )
            self.condition.notify_all()
            return self._report

    def wait_report(self, deadline: float | None = None) -> DrainReport | None:
        """Block until some thread has called ``finish``; the report, or None at the deadline."""
        with self.condition:
            while self._report is None:
                if deadline is None:
                    self.condition.wait()
                    continue
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return None
                self.condition.wait(remaining)
            return self._report

    @property
    def report(self) -> DrainReport | None:
        """The finished drain's report, or None while it runs or before it starts."""
        with self.condition:
            return self._report
