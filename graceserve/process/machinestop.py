"""The machine's stop: one deadline, the shared listener taken down in order, one sum.

Why this module exists: closing a listener that several processes share is
where clients get reset, so the order is the whole point (``DESIGN.md``,
"Workers: verified facts").  The stop across members (TERM/INT), in order:

1. the lame duck (``--drain-delay``): every member is told at once, so
   ``/healthz`` and ``server.stopping`` turn together (phase LAME_DUCK);
2. the drop-all filter on the listener (new handshakes stop completing, for
   every holder at once), and one deadline, ``--grace`` from now, for all
   (phase DRAINING);
3. every member but one (the sweeper, a worker process if there is one) stops
   accepting and closes its own copy (``STOP shared``): closing a copy changes
   nothing for the others;
4. once all of them have, the sweeper (``STOP sweep``) accepts what the kernel
   queued, serves it, and shuts the listener for everyone (connects are
   refused from here); with no sweeper the listener is shut at once;
5. every member drains by the deadline; a worker still alive ``KILL_MARGIN``
   after it is killed and counted as cut; the exit code sums every member's
   report, this process's own server's included (0; 4 for any cut; 128+N when
   forced; QUIT: 131 if it cut anything), and one line totals the counts.

A second TERM/INT forces every member; QUIT forces at once.  Under socket
activation systemd keeps the listener: nobody filters, sweeps or shuts it.

Threading contract: the machine's (the supervisor's) thread only.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from graceserve.errors import EXIT_CANNOT_START, EXIT_CUT, EXIT_OK, exit_code_for_signal
from graceserve.process.machineparts import (
    KILL_MARGIN,
    PROGRESS_INTERVAL,
    Core,
    Exit,
    Member,
    Phase,
    signal_name,
)

__all__ = ["Stop"]

log = logging.getLogger("graceserve")


class Stop:
    """One stop of ``machine``, from its signal to the exit code."""

    def __init__(self, machine: Core, signum: int, now: float, why: str = "") -> None:
        self.machine = machine
        self.signum = signum
        self.why = why or signal_name(signum)  # what the log lines say started it
        self.started = now
        self.forced_by = 0
        self.lame_duck_until = 0.0
        self.deadline: float | None = None
        self.sweeper: int | None = None
        self.sweep_sent = False
        self.next_progress = 0.0
        self.reports: list[tuple[Member, Exit]] = []

    def begin(self, now: float) -> None:
        machine = self.machine
        machine.phase = Phase.DRAINING
        machine.status.update(state="draining", reload=None, reload_pending=False)
        machine.effects.notify("STOPPING=1")
        delay = machine.config.drain_delay
        if delay > 0 and self.signum != signal.SIGQUIT and not machine.fatal:
            machine.phase = Phase.LAME_DUCK
            log.info("%s: lame duck for %gs (still serving, /healthz fails)", self.why, delay)
            machine.effects.notify("STATUS=lame duck: health checks fail, still serving")
            for member in machine.members.values():
                machine.effects.send(member.key, "LAMEDUCK")
            self.lame_duck_until = now + delay
            return
        self.close_listener(now)
        if self.signum == signal.SIGQUIT:
            self.force(self.signum, now)

    def close_listener(self, now: float) -> None:
        """Steps 2 and 3 (and 4 if nobody else accepts)."""
        machine = self.machine
        members = machine.members
        machine.phase = Phase.DRAINING
        self.lame_duck_until = 0.0
        self.deadline = now + machine.config.grace
        self.next_progress = now + PROGRESS_INTERVAL
        shared = machine.config.shared_listener
        active = sum(m.active for m in members.values())
        workers = sum(1 for m in members.values() if not m.inprocess)
        log.info(
            "%s: draining %d connections (grace %gs); new connections %s; %d workers",
            self.why, active, machine.config.grace,
            "wait in systemd's queue for the next start" if shared else "are refused", workers,
            extra={"event": "drain_start", "signal": self.why, "connections": active,
                   "grace": machine.config.grace, "workers": workers},
        )  # fmt: skip
        if not shared:
            machine.effects.filter_listener()
            candidates = [m for m in members.values() if m.ready and not m.told]
            candidates.sort(key=lambda m: m.inprocess)  # a worker process first
            self.sweeper = candidates[0].key if candidates else None
        for member in members.values():
            if member.key != self.sweeper and not member.told:
                member.told = True
                machine.effects.send(member.key, "STOP", "shared", f"{self.deadline:.6f}")
        self.send_sweep()
        self.check_stopped(now)

    def send_sweep(self) -> None:
        """Once every other member stopped accepting, the sweeper takes the listener down."""
        machine = self.machine
        if self.deadline is None or self.sweep_sent or machine.config.shared_listener:
            return
        others = [m for m in machine.members.values() if m.key != self.sweeper]
        if not all(m.closed or not m.ready for m in others):
            return
        self._sweep()

    def _sweep(self) -> None:
        machine = self.machine
        self.sweep_sent = True
        sweeper = machine.members.get(self.sweeper) if self.sweeper is not None else None
        if sweeper is not None:
            sweeper.told = True
            machine.effects.send(sweeper.key, "STOP", "sweep", f"{self.deadline:.6f}")
        elif not machine.config.shared_listener:  # nobody can serve the queue: refuse now
            machine.effects.shut_listener()

    def force(self, signum: int, now: float) -> None:
        """A second TERM/INT, or QUIT: cut everything now."""
        if self.forced_by:
            return
        self.forced_by = signum
        machine = self.machine
        if machine.phase is Phase.LAME_DUCK:
            self.close_listener(now)
        log.warning(
            "%s: cutting every connection now", signal_name(signum),
            extra={"event": "cutting", "signal": signal_name(signum),
                   "connections": sum(m.active for m in machine.members.values())},
        )  # fmt: skip
        if not self.sweep_sent and self.sweeper in machine.members:
            self._sweep()  # no waiting for the others: everything ends now
        for member in machine.members.values():
            machine.effects.send(member.key, "FORCE", signum)

    def exited(self, member: Member, end: Exit, now: float) -> None:
        self.reports.append((member, end))
        self.send_sweep()
        self.check_stopped(now)

    def tick(self, now: float) -> None:
        machine = self.machine
        if machine.phase is Phase.LAME_DUCK:
            if now >= self.lame_duck_until:
                self.close_listener(now)
            return
        if self.deadline is not None and now > self.deadline + KILL_MARGIN:
            for member in machine.members.values():
                if not member.inprocess and not member.aborted_at:
                    log.warning("%s did not end by the deadline; killing it", member)
                    member.aborted_at = now
                    machine.effects.kill(member.key, signal.SIGKILL)
        if now >= self.next_progress and machine.members:
            self.next_progress = now + PROGRESS_INTERVAL
            active = sum(m.active for m in machine.members.values())
            log.info(
                "draining: %d connections remaining in %d workers", active, len(machine.members),
                extra={"event": "drain_progress", "connections": active},
            )  # fmt: skip
            machine.effects.notify(f"STATUS=draining: {active} connections remaining")
        self.check_stopped(now)

    def check_stopped(self, now: float) -> None:
        """Every member has ended: the exit code, the summary line, the final status."""
        machine = self.machine
        if machine.phase is not Phase.DRAINING or machine.members:
            return
        machine.phase = Phase.STOPPED
        if machine.fatal:  # it could not start: what was draining has ended
            machine.exit_code = EXIT_CANNOT_START
            machine.status.finish(
                EXIT_CANNOT_START, {"clean": False, "cannot_start": machine.fatal}
            )
            return
        served = cut = 0
        for member, end in self.reports:
            if not end.reported:
                cut += max(member.active, 1) if member.ready else 0
                continue
            served += end.served
            cut += end.forced + end.lost
        if self.forced_by == signal.SIGQUIT:
            code = exit_code_for_signal(signal.SIGQUIT) if cut else EXIT_OK
        elif self.forced_by:
            code = exit_code_for_signal(self.forced_by)
        else:
            code = EXIT_CUT if cut else EXIT_OK
        machine.exit_code = code
        elapsed = now - self.started
        processes = sum(1 for member, _ in self.reports if not member.inprocess)
        log.info(
            "stopped: %d workers, %d served during the drain, %d cut, %.3fs, exit code %d",
            processes, served, cut, elapsed, code,
            extra={"event": "stopped", "served_during_drain": served, "forced": cut,
                   "elapsed": round(elapsed, 3), "exit_code": code, "clean": not cut},
        )  # fmt: skip
        summary: dict[str, Any] = {
            "clean": code == EXIT_OK and not cut, "served_during_drain": served,
            "forced": cut, "remaining": 0, "lost": 0, "elapsed": round(elapsed, 3),
            "workers": processes,
        }  # fmt: skip
        machine.status.finish(code, summary)
