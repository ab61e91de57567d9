"""What a serving process publishes on its control socket: one thread-safe record.

Why this module exists: the runner (one process) and a supervisor of workers both
publish the same fields, from whichever thread sees a change (the controller, a
worker's watcher), while control threads read them; one small record with one lock
keeps the fields consistent with each other.  ``graceserve.control`` re-exports it.

Fields (``snapshot()``): ``pid``, ``generation`` (1 at start, +1 per successful
reload), ``state`` (starting, serving, reloading, draining, stopped),
``active_connections`` (read live from a callable), ``workers`` (a count, or None),
``reloads`` (reload attempts that ended, ok or failed), ``last_reload``
(``{"generation", "ok", "reason"}`` or None), ``grace``, ``drain_delay``, and once
stopped ``exit_code`` and ``summary``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ServerStatus"]


class ServerStatus:
    """What the process publishes; the provider of a ``ControlServer``.  Thread-safe."""

    def __init__(
        self,
        connections: Callable[[], int] = lambda: 0,
        *,
        generation: int = 1,
        reloads: int = 0,
        workers: int | None = None,
        grace: float | None = None,
        drain_delay: float = 0.0,
    ) -> None:
        self._lock = threading.Lock()
        self._connections = connections
        self._listeners: list[Callable[[], None]] = []
        # guarded by _lock:
        self._fields: dict[str, Any] = {
            "pid": os.getpid(), "generation": generation, "state": "starting",
            "workers": workers, "reloads": reloads, "last_reload": None,
            "grace": grace, "drain_delay": drain_delay, "exit_code": None, "summary": None,
        }  # fmt: skip

    def count_with(self, connections: Callable[[], int]) -> None:
        """Count live connections with ``connections()`` from now on (a supervisor sums
        its workers')."""
        self._connections = connections

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (no lock held) after every change."""
        self._listeners.append(listener)

    def update(self, **fields: Any) -> None:
        """Set fields (``state``, ``workers``, ...) and tell the listeners."""
        with self._lock:
            self._fields.update(fields)
        self._changed()

    def record_reload(self, ok: bool, reason: str) -> None:
        """A reload attempt ended and the server is serving again; ``ok``: the
        generation moves on.  One update, so a waiter never sees the record
        without the state."""
        with self._lock:
            new = self._fields["generation"] + 1
            if ok:
                self._fields["generation"] = new
            self._fields["reloads"] += 1
            self._fields["last_reload"] = {"generation": new, "ok": ok, "reason": reason}
            self._fields["state"] = "serving"
        self._changed()

    def finish(self, exit_code: int, summary: dict[str, Any]) -> None:
        """The run is over: publish the exit code and the drain summary."""
        self.update(state="stopped", exit_code=exit_code, summary=summary)

    def snapshot(self) -> dict[str, Any]:
        """A copy of everything, with the live connection count."""
        with self._lock:
            fields = dict(self._fields)
        fields["active_connections"] = self._connections()
        return fields

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()
