"""Least-connections accepting among workers: a page of counts every worker can read.

Why this module exists: every worker accepts from one shared listener, and the
kernel wakes all of them for each queued client (a level-triggered epoll on a
shared socket).  Whichever runs first takes the client, so a worker that is
scheduled sooner takes a whole burst: 50 keep-alive clients split 49 to 1 was
measured, and then one worker serves on one core while the other idles (half
the throughput of an even split on this machine's two cores).  uWSGI evens
this out with blocking ``accept`` (the kernel wakes its waiters in turn), which
would cost graceserve its wake-up socket and its non-blocking listener.

Instead the supervisor shares one page of memory (a ``memfd``, inherited like
the listener) in which each worker publishes how many connections it holds.
Before it accepts, a worker publishes its count and reads the others'; one that
holds more than a peer which accepts leaves the client to that peer for a
moment (the accept loop's ``ACCEPT_DEFER``, bounded: ``ACCEPT_DEFER_LIMIT``).
A count is a heuristic, never a promise: a stale or torn read only makes one
decision less even, and no client waits past the bound.

The page: word 0 is how many slots the supervisor has handed out (the
high-water mark), then one 32-bit word per slot: ``IDLE`` (-1, nobody, or a
worker that does not accept: a spare, or one that stopped) or a count.  The
supervisor hands each worker a slot (``GRACESERVE_WORKER_BALANCE=fd slot``)
and sets it back to ``IDLE`` when it tells the worker to stop (a frozen worker
never reads that) and when it reaps it; the worker sets it to ``IDLE`` itself
as soon as it reads the message (or finds the supervisor gone).

Threading contract: ``AcceptTable``'s supervisor half (``create``, ``take``,
``release``) on the supervisor's thread only; a ``Seat`` is written by its
worker's accept loop (``may_accept``, ``publish``) and by one other thread
(``leave``): single aligned words, no lock.
"""

from __future__ import annotations

import mmap
import os
import struct

__all__ = ["BALANCE_VARIABLE", "IDLE", "AcceptTable", "Seat", "seat_from_environment"]

BALANCE_VARIABLE = "GRACESERVE_WORKER_BALANCE"
IDLE = -1
PAGE = mmap.PAGESIZE
_WORD = struct.Struct("=i")
SLOTS = PAGE // _WORD.size - 1  # word 0 is the high-water mark
SLACK = 16  # a worker holding H leaves clients to a peer holding fewer than H - H // SLACK


class AcceptTable:
    """The shared page: ``create`` it in the supervisor, ``attach`` to it in a worker."""

    def __init__(self, fd: int, owner: bool) -> None:
        self._fd = fd if owner else -1  # the supervisor keeps its descriptor for spawns
        self.page = mmap.mmap(fd, PAGE)
        self._taken: set[int] = set()
        self._counts: dict[int, struct.Struct] = {}

    @classmethod
    def create(cls) -> AcceptTable | None:
        """A new table (supervisor), every slot ``IDLE``; None where there is no memfd."""
        make = getattr(os, "memfd_create", None)
        if make is None:
            return None
        try:
            fd = make("graceserve-accept-table", os.MFD_CLOEXEC)
        except OSError:
            return None
        try:
            os.ftruncate(fd, PAGE)
            table = cls(fd, owner=True)
        except (OSError, ValueError):
            os.close(fd)
            return None
        struct.pack_into(f"={SLOTS}i", table.page, _WORD.size, *([IDLE] * SLOTS))
        return table

    @classmethod
    def attach(cls, fd: int) -> AcceptTable:
        """Map the table a worker inherited on ``fd`` (which is closed here)."""
        try:
            return cls(fd, owner=False)
        finally:
            os.close(fd)

    def fileno(self) -> int:
        """The supervisor's descriptor (what a spawn passes on)."""
        return self._fd

    # -- the supervisor's half ---------------------------------------------------------

    def take(self) -> int | None:
        """The lowest free slot, now the caller's (``IDLE`` until its worker accepts);
        None when every slot is taken (that worker then accepts without looking)."""
        slot = next((i for i in range(SLOTS) if i not in self._taken), None)
        if slot is None:
            return None
        self._taken.add(slot)
        self.write(slot, IDLE)
        _WORD.pack_into(self.page, 0, max(self.high_water(), slot + 1))
        return slot

    def release(self, slot: int) -> None:
        """Free ``slot``: its worker has ended."""
        self.write(slot, IDLE)
        self._taken.discard(slot)

    def close(self) -> None:
        self.page.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- both halves -------------------------------------------------------------------

    def high_water(self) -> int:
        """How many slots were ever handed out (only those are read)."""
        return min(max(int(_WORD.unpack_from(self.page, 0)[0]), 0), SLOTS)

    def write(self, slot: int, value: int) -> None:
        _WORD.pack_into(self.page, _WORD.size * (slot + 1), value)

    def counts(self) -> tuple[int, ...]:
        """Every handed-out slot's word, in slot order."""
        n = self.high_water()
        reader = self._counts.get(n)
        if reader is None:
            reader = self._counts[n] = struct.Struct(f"={n}i")
        return reader.unpack_from(self.page, _WORD.size)


class Seat:
    """One worker's slot: what its accept loop asks before each accept."""

    def __init__(self, table: AcceptTable, slot: int) -> None:
        self.table = table
        self.slot = slot
        self.left = False

    def may_accept(self, held: int) -> bool:
        """Publish ``held`` (the connections this worker holds); False when another
        worker that accepts holds fewer by more than ``held // SLACK``, so that it should
        take the next client.  The accept loop's thread.

        The slack (none below ``SLACK`` connections) lets every worker accept at once
        in a burst of thousands of clients, when a strict rule would have them take
        turns; the split stays within a sixteenth."""
        if not self.publish(held):
            return True
        floor = held - held // SLACK
        for other, count in enumerate(self.table.counts()):
            if IDLE < count < floor and other != self.slot:
                return False
        return True

    def publish(self, held: int) -> bool:
        """Write ``held`` in this worker's slot, unless it has left; whether it stands.

        As the worker's accept loop starts and at each of its turns, not only before an
        accept: a worker that always wakes after its peers have taken the client must
        still be seen (from the start, and as its connections end); not before its
        loop runs (its peers would leave clients to it meanwhile).  The accept loop's
        thread."""
        if self.left:
            return False
        table, slot = self.table, self.slot
        table.write(slot, held)
        if self.left:  # ``leave`` ran meanwhile: its IDLE stands
            table.write(slot, IDLE)
            return False
        return True

    def leave(self) -> None:
        """This worker accepts no more: peers stop leaving clients to it.  Any thread."""
        self.left = True
        self.table.write(self.slot, IDLE)


def seat_from_environment(environ: dict[str, str] | None = None) -> Seat | None:
    """A worker's seat, as its supervisor passed it (the variable is consumed);
    None without one, or if it cannot be mapped (the worker then accepts as before)."""
    value = (os.environ if environ is None else environ).pop(BALANCE_VARIABLE, "")
    words = value.split()
    if len(words) != 2 or not all(word.isdigit() for word in words):
        return None
    fd, slot = (int(word) for word in words)
    if slot >= SLOTS:
        return None
    try:
        return Seat(AcceptTable.attach(fd), slot)
    except (OSError, ValueError):
        return None
