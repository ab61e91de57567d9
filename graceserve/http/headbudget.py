"""The memory that request heads in progress may hold, server-wide.

Why this module exists: a head is read line by line into memory until its
blank line, and a client can stop just before that line for as long as the
idle timeout allows; once complete, the head stays in memory while its request
is served, however long the client takes to send the body (and a stdlib
handler keeps ``self.headers`` until its next request).  At the stdlib's limits
(100 field lines of 64 KiB, what handler targets get) that is 6.5 MB per
connection; 300 such clients took a server from 25 MiB to 1.9-2.3 GiB
(``python bench/abuse.py --only heads``).  The limits per head cannot fix that
without refusing legitimate large heads, so the bound is on the total: each
head may hold a small ``allowance`` of field lines for free (every ordinary
head fits in it), and what it holds beyond that is charged to one
``HeadBudget`` shared by the whole server, from the line that needs it until
its request is done (the request loop calls ``release``, and a handler then
drops its ``headers``) or the connection ends.  A head that cannot get budget
is refused with 503 (the server is short of memory, not the client at fault)
and its connection closed; the first refusal of an episode is logged.

Only heads read line by line are metered (``httpparse.read_fields`` calls
``HeadMeter.line`` for each line it reads one at a time): a head that was
already whole in the socket file's buffer is parsed at once and holds no
memory beyond that buffer, so the busy path pays nothing.  What the meter
cannot see is the one line still being read (at most the field size limit)
and the request line (at most its own limit): both are bounded per
connection by the head limits.

Threading contract: a ``HeadBudget`` is shared by every connection thread
(its counters are guarded by its lock); a ``HeadMeter`` belongs to one
connection: its thread calls ``line`` and ``release`` (after each request
that drew on the budget: ``charged`` says so), and the server calls
``release`` once the thread is done.
"""

from __future__ import annotations

import logging
import threading

from graceserve.http.parse import RequestError

__all__ = ["DEFAULT_ALLOWANCE", "DEFAULT_BUDGET", "HeadBudget", "HeadMeter"]

log = logging.getLogger("graceserve")

DEFAULT_BUDGET = 32 * 1024 * 1024
"""Bytes of field lines that heads in progress may hold beyond their allowances, in all."""
DEFAULT_ALLOWANCE = 16 * 1024
"""Bytes of field lines each head may hold without drawing on the budget."""


class HeadBudget:
    """Bytes that heads in progress hold beyond their allowance, bounded server-wide.

    Thread-safe.  ``used`` is guarded by the lock (read without it for a
    glance).
    """

    def __init__(self, total: int = DEFAULT_BUDGET, allowance: int = DEFAULT_ALLOWANCE) -> None:
        self.total = total
        self.allowance = allowance
        self.used = 0  # guarded by _lock
        self.refused = 0  # guarded by _lock: heads refused since the budget was created
        self._lock = threading.Lock()
        self._short = False  # guarded by _lock: in an episode of refusals (logged once)

    def meter(self) -> HeadMeter:
        """A meter for one connection's heads."""
        return HeadMeter(self)

    def take(self, size: int) -> bool:
        """Charge ``size`` bytes; False (nothing charged) if that would pass ``total``."""
        with self._lock:
            if self.used + size <= self.total:
                self.used += size
                return True
            self.refused += 1
            if self._short:
                return False
            self._short = True
        log.warning(
            "request heads in progress hold the whole head budget (%d MiB): heads over "
            "%d KiB are answered 503 until it frees up",
            self.total >> 20, self.allowance >> 10,
        )  # fmt: skip
        return False

    def give(self, size: int) -> None:
        """Return ``size`` charged bytes; an episode of refusals ends below half of ``total``."""
        with self._lock:
            self.used -= size
            if self._short and self.used <= self.total // 2:
                self._short = False


class HeadMeter:
    """What one connection's current head holds, and its charge on the budget.

    Used by the connection's thread: ``line`` via ``httpparse.read_fields``,
    ``release`` when the request is done; and by the server once the thread
    has ended (``release`` again: idempotent).
    """

    __slots__ = ("_budget", "_read", "charged")

    def __init__(self, budget: HeadBudget) -> None:
        self._budget = budget
        self._read = 0  # bytes of field lines of the current head read so far
        self.charged = 0  # of which charged to the budget (0: nothing to release)

    def line(self, line: bytes) -> None:
        """Account for one line of the head, read one at a time.

        Raises ``RequestError(503)`` when the head needs budget that is not there.
        """
        read = self._read + len(line)
        self._read = read
        over = read - self._budget.allowance - self.charged
        if over > 0:
            if not self._budget.take(over):
                raise RequestError(503, "the server is short of memory for request heads")
            self.charged += over

    def release(self) -> None:
        """Give back what the head holds (its request is done, or its connection)."""
        charged = self.charged
        self._read = self.charged = 0
        if charged:
            self._budget.give(charged)
