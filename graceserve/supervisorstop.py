"""The supervisor's stop: one deadline, the shared listener taken down in order, one sum.

Why this module exists: closing a listener that several processes share is
where clients get reset, so the order is the whole point (``DESIGN.md``,
"Workers: verified facts").  The stop across processes (TERM/INT), in order:

1. the lame duck (``--drain-delay``): every worker is told at once, so
   ``/healthz`` and ``server.stopping`` turn together;
2. the drop-all filter on the listener (new handshakes stop completing, for
   every holder at once), and one deadline, ``--grace`` from now, sent to all;
3. every worker but one (the sweeper) stops accepting and closes its own copy
   (``STOP shared``): closing a copy changes nothing for the others;
4. once all of them have, the sweeper (``STOP sweep``) accepts what the
   kernel queued, serves it, and shuts the listener for everyone (connects
   are refused from here);
5. every worker drains its connections by the deadline; one still alive a
   second after it is killed and counted as cut; the exit code sums it up (0,
   4 for any cut, 128+N when forced) and one line totals the counts.

Threading contract: the supervisor's thread only (a mixin of ``Supervisor``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable

from .accepting import attach_drop_all_filter
from .control import ServerStatus
from .errors import EXIT_CANNOT_START, EXIT_CUT, EXIT_OK, exit_code_for_signal
from .settings import Settings
from .systemd import Notifier
from .workerproc import WorkerProcess

__all__ = ["KILL_MARGIN", "StopSequence", "signal_name"]

log = logging.getLogger("graceserve")

KILL_MARGIN = 1.0  # seconds past the deadline before a worker that did not end is killed


class StopSequence:
    """The stop half of ``Supervisor``: its state is the supervisor's."""

    settings: Settings
    listener: socket.socket
    notifier: Notifier
    shared_listener: bool
    workers: dict[int, WorkerProcess]
    reports: list[WorkerProcess]
    reloading: int
    stopping: int
    stop_started: float
    forced_by: int
    lame_duck_until: float
    deadline: float | None
    sweeper: WorkerProcess | None
    sweep_sent: bool
    next_status: float
    fatal: str
    inprocess: Callable[[int], object] | None
    status: ServerStatus

    def _abandon(self, workers: list[WorkerProcess]) -> None:
        raise NotImplementedError

    def _begin_stop(self, signum: int) -> None:
        self.stopping = signum
        self.stop_started = time.monotonic()
        self.status.update(state="draining")
        self.notifier.send("STOPPING=1")
        if self.reloading:
            self._abandon([w for w in self.workers.values() if w.generation == self.reloading])
            self.reloading = 0
        delay = self.settings.drain_delay
        if delay > 0 and signum != signal.SIGQUIT:
            log.info(
                "%s: lame duck for %gs (still serving, /healthz fails)", signal_name(signum), delay
            )
            self.notifier.send("STATUS=lame duck: health checks fail, still serving")
            for worker in self.workers.values():
                worker.send("LAMEDUCK")
            self.lame_duck_until = time.monotonic() + delay
            return
        self._close_listener()
        if signum == signal.SIGQUIT:
            self._force(signum)

    def _close_listener(self) -> None:
        self.lame_duck_until = 0.0
        self.deadline = time.monotonic() + self.settings.grace
        where = (
            "wait in systemd's queue for the next start"
            if self.shared_listener
            else ("are refused")
        )
        # The count is the workers' last report (at most a second old).
        log.info(
            "%s: draining %d connections (grace %gs); new connections %s; %d workers",
            signal_name(self.stopping), sum(w.active for w in self.workers.values()),
            self.settings.grace, where, len(self.workers),
        )  # fmt: skip
        if not self.shared_listener:
            attach_drop_all_filter(self.listener)
            ready = [w for w in self.workers.values() if w.ready and not w.stopping]
            self.sweeper = ready[0] if ready else None
        for worker in self.workers.values():
            if worker is not self.sweeper:
                worker.stopping = True
                worker.send("STOP", "shared", f"{self.deadline:.6f}")
        self._send_sweep()

    def _send_sweep(self) -> None:
        """Once every other worker stopped accepting, the sweeper takes the listener down."""
        if self.deadline is None or self.sweep_sent or self.shared_listener:
            return
        others = [w for w in self.workers.values() if w is not self.sweeper]
        if not all(w.closed or w.exit_code is not None or not w.ready for w in others):
            return
        self.sweep_sent = True
        sweeper = self.sweeper
        if sweeper is not None and sweeper.pid in self.workers:
            sweeper.stopping = True
            sweeper.send("STOP", "sweep", f"{self.deadline:.6f}")
        else:  # nobody can serve the queue: refuse from now on
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)

    def _force(self, signum: int) -> None:
        if self.forced_by:
            return
        self.forced_by = signum
        if self.lame_duck_until:
            self._close_listener()
        log.warning("%s: cutting every connection now", signal_name(signum))
        sweeper = self.sweeper
        if not self.sweep_sent and sweeper is not None and sweeper.pid in self.workers:
            self.sweep_sent = True  # no waiting for the others: everything ends now
            sweeper.stopping = True
            sweeper.send("STOP", "sweep", f"{self.deadline:.6f}")
        for worker in self.workers.values():
            worker.send("FORCE", signum)
        if self.inprocess is not None:
            self.inprocess(signum)

    def _stop_progress(self, now: float) -> None:
        if self.lame_duck_until:
            if now >= self.lame_duck_until:
                self._close_listener()
            return
        if self.deadline is not None and now > self.deadline + KILL_MARGIN:
            for worker in self.workers.values():
                if not worker.killed_at:
                    log.warning("%r did not end by the deadline; killing it", worker)
                    worker.killed_at = now
                    worker.kill(signal.SIGKILL)
        if now >= self.next_status and self.workers:
            self.next_status = now + 1.0
            active = sum(w.active for w in self.workers.values())
            log.info("draining: %d connections remaining in %d workers", active, len(self.workers))
            self.notifier.send(f"STATUS=draining: {active} connections remaining")

    def _exit_code(self) -> int:
        if self.fatal:
            return EXIT_CANNOT_START
        served = cut = 0
        for worker in self.reports:
            report = worker.report
            if report is None:
                cut += max(worker.active, 1) if worker.ready else 0
                continue
            served += report.served
            cut += report.forced + report.lost  # the ones left running were cut too
        if self.forced_by == signal.SIGQUIT:
            code = exit_code_for_signal(signal.SIGQUIT) if cut else EXIT_OK
        elif self.forced_by:
            code = exit_code_for_signal(self.forced_by)
        else:
            code = EXIT_CUT if cut else EXIT_OK
        log.info(
            "stopped: %d workers, %d served during the drain, %d cut, %.3fs, exit code %d",
            len(self.reports), served, cut, time.monotonic() - self.stop_started, code,
        )  # fmt: skip
        elapsed = round(time.monotonic() - self.stop_started, 3)
        self.status.finish(code, {
            "clean": code == EXIT_OK and not cut, "served_during_drain": served, "forced": cut,
            "remaining": 0, "lost": 0, "elapsed": elapsed, "workers": len(self.reports),
        })  # fmt: skip
        return code


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
