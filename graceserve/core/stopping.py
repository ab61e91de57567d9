"""The drain sequence, one for the library and the process runner alike.

Why this module exists: ``GracefulTCPServer.drain()`` and the CLI's stop used
to be two loops that measured the grace from two instants and added an unwind
allowance after the deadline.  Here is the one sequence, with hooks for what
the runner adds (progress lines, signals that force, systemd status):

1. start the drain (the instant the grace is measured from): stop accepting,
   sweep the queue, take the listener out of service, tell the handlers;
2. wait on the registry's Condition for zero, waking for a hook's interrupt
   and for progress;
3. at ``deadline - allowance`` (or at once, when forced) cut what is left, and
   give the cut handlers what is left of the budget to end, but never more:
   the grace is the whole budget, and whatever still runs is in ``remaining``.

Threading contract: ``run_drain`` runs in one thread (not a handler thread of
the server); the hooks are called from that thread.

The server is seen through ``Drainable``, the part of ``GracefulTCPServer``
this sequence uses, so that ``server`` can import this module and not the
reverse; a caller's hooks name the server type they get (``DrainHooks[S]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from graceserve.core.drain import DrainController, DrainReport

__all__ = ["FORCED_UNWIND", "DrainHooks", "Drainable", "run_drain"]


class Drainable(Protocol):
    """What the drain sequence asks of a server (``GracefulTCPServer`` has it all)."""

    cut_allowance: float

    @property
    def registry(self) -> DrainController[Any, Any]: ...

    @property
    def active_connections(self) -> int: ...

    def start_drain(self, shared_listener: bool = False) -> bool: ...

    def wait_drained(
        self, deadline: float | None, wake_up: Callable[[], bool] | None = None
    ) -> bool: ...

    def force_close(self) -> int: ...

    def finish_drain(self) -> DrainReport: ...


ServerT = TypeVar("ServerT", bound=Drainable)

FORCED_UNWIND = 0.1  # seconds cut handlers get after a forced stop (within the grace)


class DrainHooks(Generic[ServerT]):
    """What a caller adds to the drain; every method is optional.  Called in order
    from the draining thread, with the server being drained."""

    progress_interval: float | None = None
    """Call ``progress`` this often while connections remain; None: never."""

    def started(self, server: ServerT, deadline: float | None) -> None:
        """The listener is closed; ``server.draining_from`` connections are being drained."""

    def interrupted(self) -> bool:
        """Lock-free: whether something waits for ``take_force`` (a signal).  Whoever
        makes it true must notify ``server.registry.condition``."""
        return False

    def take_force(self) -> int:
        """Act on what ``interrupted`` saw; a nonzero code (a signal number) to cut now."""
        return 0

    def progress(self, server: ServerT, deadline: float | None) -> None:
        """Called every ``progress_interval`` seconds while connections remain."""

    def cutting(self, server: ServerT, forced_by: int) -> None:
        """About to cut what is left: forced by ``forced_by``, or (0) at the deadline."""


def run_drain(
    server: ServerT,
    grace: float | None,
    hooks: DrainHooks[ServerT] | None = None,
    *,
    force: int = 0,
    shared_listener: bool = False,
) -> tuple[DrainReport, int]:
    """Drain ``server`` within ``grace`` seconds of the drain's start; the report and
    what forced it (``force``, or what ``take_force`` returned; 0 if nothing did).

    ``force`` nonzero cuts as soon as the listener is closed (QUIT).  If the
    drain had already started elsewhere, waits (within ``grace``) for its report.
    """
    hooks = hooks if hooks is not None else DrainHooks[ServerT]()
    if not server.start_drain(shared_listener):  # started elsewhere: wait for its end
        until = None if grace is None else time.monotonic() + max(grace, 0.0)
        report = server.registry.wait_report(until)
        return (report if report is not None else server.finish_drain()), force
    started = server.registry.started_at
    assert started is not None
    deadline = None if grace is None else started + max(grace, 0.0)
    hooks.started(server, deadline)
    cut_at = None
    if deadline is not None and grace is not None:
        cut_at = deadline - min(server.cut_allowance, max(grace, 0.0) / 10)
    interval = hooks.progress_interval
    next_progress = None if interval is None else time.monotonic() + interval
    forced_by = force
    deadline_passed = False
    while not forced_by:
        wake = _earliest(cut_at, next_progress)
        if server.wait_drained(wake, hooks.interrupted):
            break
        if hooks.interrupted():
            forced_by = hooks.take_force()
            continue
        now = time.monotonic()
        if cut_at is not None and now >= cut_at:
            deadline_passed = True
            break
        if next_progress is not None and interval is not None and now >= next_progress:
            hooks.progress(server, deadline)
            next_progress = now + interval
    if forced_by or deadline_passed:
        hooks.cutting(server, forced_by)
        server.force_close()
        unwind_until = deadline
        if forced_by:
            unwind_until = _earliest(deadline, time.monotonic() + FORCED_UNWIND)
        if server.active_connections and unwind_until is not None:
            server.registry.wait_for_zero(unwind_until)
    return server.finish_drain(), forced_by


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
