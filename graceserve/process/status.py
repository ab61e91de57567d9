"""What a serving process publishes on its control socket: one thread-safe record.

Why this module exists: the runner (one process) and a supervisor of workers both
publish the same fields, from whichever thread sees a change (the controller, a
worker's watcher), while control threads read them; one small record with one lock
keeps the fields consistent with each other.  ``graceserve.process.control`` re-exports it.

Fields (``snapshot()``): ``pid``, ``generation`` (1 at start, +1 per successful
reload: the number the log and sd_notify's STATUS use too), ``state`` (starting,
serving, reloading, draining, stopped), ``active_connections`` (read live from a
callable), ``workers`` (the target count of worker processes, or None while this
process serves by itself), ``reloads_started`` and ``reloads`` (reload attempts
begun, and ended ok or failed: attempts are numbered 1, 2, ... and end in order),
``reload`` (the attempt in progress: ``{"number", "generation", "step"}``, or None),
``reload_pending`` (a HUP arrived during a reload: the next one starts when it
ends), ``last_reload`` and ``recent_reloads`` (the last attempt's outcome, and the
last 16 of them: ``{"number", "generation", "ok", "reason"}``), ``reload_failures``
(attempts that failed, all of them), ``worker_restarts`` (worker processes replaced
outside a reload: died, killed by ``--worker-timeout``, recycled), ``start_timeout``,
``grace``, ``drain_delay``, ``addresses`` (every listening address, as ``--bind``
takes it: ``127.0.0.1:8000``, ``[::1]:8000``, ``unix:/run/app.sock``), and once
stopped ``exit_code`` and ``summary``.

``graceserve ctl graceful`` reads ``reloads_started`` before it sends its HUP and
waits for the outcome of the next attempt by number: that attempt began after the
call, so it loaded the code on disk at the time of the call or later.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["RECENT_RELOADS", "ServerStatus"]

RECENT_RELOADS = 16  # outcomes kept in ``recent_reloads``


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
        start_timeout: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._connections = connections
        self._listeners: list[Callable[[], None]] = []
        # guarded by _lock:
        self._fields: dict[str, Any] = {
            "pid": os.getpid(), "generation": generation, "state": "starting",
            "workers": workers, "reloads_started": reloads, "reloads": reloads,
            "reload": None, "reload_pending": False, "last_reload": None, "recent_reloads": [],
            "reload_failures": 0, "worker_restarts": 0,
            "start_timeout": start_timeout, "grace": grace, "drain_delay": drain_delay,
            "exit_code": None, "summary": None, "addresses": [],
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

    def record_reload(
        self, ok: bool, reason: str, *, number: int | None = None, generation: int | None = None
    ) -> None:
        """Reload attempt ``number`` (default: the last one begun) of ``generation``
        (default: the next one) ended and the server is serving again; ``ok``: that
        generation serves now.  One update, so a waiter never sees the record
        without the state."""
        with self._lock:
            fields = self._fields
            new = fields["generation"] + 1 if generation is None else generation
            if number is None:
                number = max(fields["reloads_started"], fields["reloads"] + 1)
            if ok:
                fields["generation"] = new
            fields["reloads"] = number
            fields["reload_failures"] += not ok
            fields["reloads_started"] = max(fields["reloads_started"], number)
            outcome = {"number": number, "generation": new, "ok": ok, "reason": reason}
            fields["last_reload"] = outcome
            fields["recent_reloads"] = [*fields["recent_reloads"], outcome][-RECENT_RELOADS:]
            fields["reload"] = None
            fields["state"] = "serving"
        self._changed()

    def count_restart(self) -> None:
        """A worker process is being replaced outside a reload (``worker_restarts``)."""
        with self._lock:
            self._fields["worker_restarts"] += 1
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
