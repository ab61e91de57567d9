"""What the single-process runner adds to the drain: log lines, systemd status, signals.

Why this module exists: ``graceserve.stopping.run_drain`` is one sequence for
the library and the process; these hooks are the process's part of it (split
from ``runner`` to keep each module small).

Threading contract: the hooks are called from the draining thread (the
runner's main thread).  They see the runner's controller through
``Controller``, the part of it they use, so the runner imports them and not
the reverse.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Protocol

from graceserve.core.server import GracefulTCPServer
from graceserve.core.stopping import DrainHooks
from graceserve.process.systemd import Notifier

__all__ = ["Controller", "RunnerHooks", "StopRecord", "name_of"]

log = logging.getLogger("graceserve")

PROGRESS_INTERVAL = 1.0


class StopRecord(Protocol):
    """How the stop goes: the signal that began it, and the one that forced a cut (0: none)."""

    @property
    def signum(self) -> int: ...

    @property
    def forced_by(self) -> int: ...


class Controller(Protocol):
    """The runner's controller as the hooks see it.  Main thread only."""

    @property
    def notifier(self) -> Notifier: ...

    @property
    def shared_listener(self) -> bool: ...

    @property
    def stop(self) -> StopRecord: ...

    def has_signal(self) -> bool:
        """Lock-free: whether a signal waits to be taken."""

    def take_signals(self, doing: str = "stopping") -> int:
        """Act on the signals that arrived; a nonzero signal number if one forces a cut."""


class RunnerHooks(DrainHooks[GracefulTCPServer]):
    """What the process adds to the drain: log lines, systemd status, signals that force."""

    progress_interval = PROGRESS_INTERVAL

    def __init__(self, controller: Controller, grace: float) -> None:
        self.controller = controller
        self.grace = grace
        self.last_count = 0

    def started(self, server: GracefulTCPServer, deadline: float | None) -> None:
        log.info(
            "%s: draining %d connections (grace %gs); new connections %s",
            name_of(self.controller), server.draining_from, self.grace, self._where_new_go(),
            extra={"event": "drain_start", "signal": name_of(self.controller),
                   "connections": server.draining_from, "grace": self.grace},
        )  # fmt: skip
        self.controller.notifier.send(f"STATUS=draining {server.draining_from} connections")
        self.last_count = server.active_connections

    def _where_new_go(self) -> str:
        if self.controller.shared_listener:  # socket activation: systemd keeps the socket
            return "wait in systemd's queue for the next start"
        return "are refused"

    def interrupted(self) -> bool:
        return self.controller.has_signal()

    def take_force(self) -> int:
        return self.controller.take_signals("draining")

    def progress(self, server: GracefulTCPServer, deadline: float | None) -> None:
        count = server.active_connections
        log.info(
            "draining: %d connections remaining", count,
            extra={"event": "drain_progress", "connections": count},
        )  # fmt: skip
        self.controller.notifier.send(f"STATUS=draining: {count} connections remaining")
        if count < self.last_count and deadline is not None:
            # Progress: ask systemd for the time the grace allows.
            left = deadline - time.monotonic() + 1
            self.controller.notifier.send(f"EXTEND_TIMEOUT_USEC={int(left * 1e6)}")
        self.last_count = count

    def cutting(self, server: GracefulTCPServer, forced_by: int) -> None:
        remaining = server.active_connections
        if forced_by:
            if remaining:
                name = name_of(self.controller, forced=True, signum=forced_by)
                log.warning(
                    "%s: cutting %d connections now", name, remaining,
                    extra={"event": "cutting", "signal": name, "connections": remaining},
                )  # fmt: skip
        else:
            log.warning(
                "grace of %gs passed: cutting %d connections", self.grace, remaining,
                extra={"event": "cutting", "connections": remaining},
            )  # fmt: skip


def name_of(controller: Controller, forced: bool = False, signum: int = 0) -> str:
    if not signum:
        signum = controller.stop.forced_by if forced else controller.stop.signum
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
