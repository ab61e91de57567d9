"""Request metering: what ``--metrics-bind`` counts in every serving process, cheaply.

Why this module exists: the metrics endpoint (``graceserve.process.metrics``)
is served by the main process, but the requests are answered by handler
threads in worker processes.  The handler thread's share must stay negligible
(no lock, no syscall, no allocation beyond one small tuple): ``record`` is one
``deque.append`` (atomic, documented thread-safe) of the status and the
seconds taken.  The arithmetic (status class, histogram bucket, sum) is done
later by ``fold``: on the worker's once-a-second heartbeat, at a scrape, or by
the recording thread itself every ``FOLD_AT`` requests so that the queue stays
bounded even if nobody folds.

A ``Meters`` snapshot is what crosses the worker's channel (``to_words`` /
``from_words``): cumulative counters since the process started serving, and
the connection gauges of the moment.  Counters only grow, so the main process
can add the last snapshot of a worker that exited to its totals and never go
backwards.

Threading contract: ``RequestMeter.record`` from any thread, concurrently;
``fold`` and ``snapshot`` from any thread (one lock, never held by ``record``).
"""

from __future__ import annotations

import bisect
import collections
import threading
from dataclasses import dataclass, field

__all__ = ["BUCKETS", "CLASSES", "FOLD_AT", "Meters", "RequestMeter"]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the request duration histogram; ``+Inf`` follows."""
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
"""Status classes, in the order ``Meters.codes`` counts them."""
FOLD_AT = 4096
"""Recorded requests after which the recording thread folds them itself."""


@dataclass
class Meters:
    """One process's counters (cumulative) and connection gauges (of the moment)."""

    http: bool = True
    """False for a TCP target: requests are not metered, only connections."""
    in_flight: int = 0
    """Requests whose head was read and whose response is not finished."""
    active: int = 0
    """Live connections that are not idle between requests."""
    idle: int = 0
    """Keep-alive connections idle between requests."""
    codes: list[int] = field(default_factory=lambda: [0] * len(CLASSES))
    """Answered requests per status class (``CLASSES``)."""
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    """Answered requests per duration bucket (not cumulative; the last is ``+Inf``)."""
    seconds: float = 0.0
    """The sum of their durations."""

    @property
    def count(self) -> int:
        """Answered requests."""
        return sum(self.codes)

    def add_counters(self, other: Meters) -> None:
        """Add ``other``'s counters (not its gauges) to ours."""
        self.codes = [a + b for a, b in zip(self.codes, other.codes, strict=True)]
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.seconds += other.seconds

    def add_gauges(self, other: Meters) -> None:
        """Add ``other``'s gauges to ours."""
        self.in_flight += other.in_flight
        self.active += other.active
        self.idle += other.idle

    def to_words(self) -> list[str]:
        """The snapshot as channel words (``from_words`` reads them)."""
        return [
            "http" if self.http else "tcp",
            str(self.in_flight), str(self.active), str(self.idle),
            *map(str, self.codes), repr(self.seconds), *map(str, self.buckets),
        ]  # fmt: skip

    @classmethod
    def from_words(cls, words: list[str]) -> Meters:
        """A snapshot from ``to_words``; ValueError if the words are not one."""
        classes, buckets = len(CLASSES), len(BUCKETS) + 1
        if len(words) != 4 + classes + 1 + buckets or words[0] not in ("http", "tcp"):
            raise ValueError("not a metrics snapshot")
        numbers = [int(word) for word in words[1 : 4 + classes]]
        seconds = float(words[4 + classes])
        counts = [int(word) for word in words[5 + classes :]]
        if min(numbers + counts) < 0 or not seconds >= 0:
            raise ValueError("not a metrics snapshot")
        return cls(
            words[0] == "http", numbers[0], numbers[1], numbers[2],
            numbers[3:], counts, seconds,
        )  # fmt: skip


class RequestMeter:
    """Counts answered requests by status class and duration.  Thread-safe (see module)."""

    def __init__(self) -> None:
        self._pending: collections.deque[tuple[int, float]] = collections.deque()
        self._lock = threading.Lock()
        self._totals = Meters()  # guarded by _lock

    def record(self, status: int, seconds: float) -> None:
        """One request ended with ``status`` (0: never answered: not counted) after
        ``seconds``.  Any thread; no lock unless ``FOLD_AT`` are waiting."""
        pending = self._pending
        pending.append((status, seconds))
        if len(pending) > FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Count what was recorded since the last fold.  Any thread."""
        pending = self._pending
        with self._lock:
            totals = self._totals
            codes, buckets = totals.codes, totals.buckets
            while True:
                try:
                    status, seconds = pending.popleft()
                except IndexError:
                    break
                if not 100 <= status < 600:
                    continue
                codes[status // 100 - 1] += 1
                buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
                totals.seconds += seconds

    def snapshot(self) -> Meters:
        """A copy of the counters, everything recorded so far folded in (gauges zero)."""
        self.fold()
        with self._lock:
            totals = self._totals
            return Meters(codes=list(totals.codes), buckets=list(totals.buckets),
                          seconds=totals.seconds)  # fmt: skip
