"""The machine's reload: a transaction with a deadline that ends in exactly one report.

Why this module exists: a reload meets every other event (a HUP, a TTIN, a
worker's death, a stop) while it runs, so its own steps must be few and
explicit.  ``Reload`` is one attempt, from the HUP that began it to its report:

1. STARTING: generation G+1 starts while G serves; every new worker must say
   READY by ``--start-timeout`` (``deadline``).  A new worker that dies before
   READY fails the attempt; one that dies after READY is replaced (the attempt
   fails after ``MAX_START_FAILURES`` such deaths).  TTIN/TTOU change how many
   it waits for: only workers it started count.
2. The outcome is decided: G+1 serves (G is told to stop accepting: step
   HANDING_OVER) or G keeps serving with the reason (G+1's ready workers are
   told to stop accepting, the others killed: step FAILING).
3. It is reported (log line, status, ``READY=1``) once every loser stopped
   accepting (said CLOSED, or ended), within ``HAND_OVER_TIMEOUT``: a worker
   still accepting then is killed; this process's own server cannot be, and
   always ends its accepting by itself, so the report waits for it.

A stop abandons it unreported (``Machine``); a HUP meanwhile is queued by the
machine and begins the next attempt right after the report.

Threading contract: the machine's (the supervisor's) thread only.
"""

from __future__ import annotations

import logging
import signal

from graceserve.process.machineparts import HAND_OVER_TIMEOUT, MAX_START_FAILURES, Core, Phase, Step

__all__ = ["Reload"]

log = logging.getLogger("graceserve")


class Reload:
    """One reload attempt of ``machine``."""

    def __init__(self, machine: Core, number: int, now: float) -> None:
        self.machine = machine
        self.number = number  # attempts are numbered 1, 2, ... (status: reloads_started)
        self.previous = machine.generation  # the generation serving when it began
        self.generation = self.previous + 1
        self.deadline = now + machine.config.start_timeout
        self.step = Step.STARTING
        self.losers: set[int] = set()  # must stop accepting before the report
        self.outcome: tuple[bool, str] = (False, "")
        self.deaths = 0  # new workers that died after READY

    def __repr__(self) -> str:
        return (
            f"Reload(number={self.number}, generation={self.generation}, step={self.step}, "
            f"deadline={self.deadline}, losers={self.losers}, outcome={self.outcome})"
        )

    def begin(self, now: float) -> None:
        machine = self.machine
        machine.phase = Phase.RELOADING
        machine.status.update(
            state="reloading", reloads_started=self.number, reload_pending=False,
            reload={"number": self.number, "generation": self.generation, "step": "starting"},
        )  # fmt: skip
        machine.effects.notify("RELOADING=1", f"MONOTONIC_USEC={int(now * 1e6)}")
        workers = "1 worker" if machine.target == 1 else f"{machine.target} workers"
        log.info(
            "HUP: starting generation %d (%s); generation %d serves until it is ready",
            self.generation, workers, self.previous,
            extra={"event": "restarting", "generation": self.generation},
        )  # fmt: skip

    @property
    def starting(self) -> bool:
        return self.step is Step.STARTING

    def new_worker_died(self, how: str, now: float) -> bool:
        """A worker of G+1 died after READY: False if that fails the attempt."""
        self.deaths += 1
        if self.deaths < MAX_START_FAILURES:
            return True
        self.fail(f"workers of generation {self.generation} keep dying ({how})", now)
        return False

    def check(self, now: float) -> None:
        """Move on: every new worker ready (hand over), or every loser closed (report)."""
        machine = self.machine
        if self.starting:
            fresh = [m for m in machine.members.values() if m.generation == self.generation]
            fresh = [m for m in fresh if m.serving]
            if len(fresh) >= machine.target and all(m.ready for m in fresh):
                self._hand_over(now)
            return
        members = machine.members
        if all(key not in members or members[key].closed for key in self.losers):
            self._end(now)

    def tick(self, now: float) -> None:
        """The deadline: the start's (the attempt fails), or the hand-over's."""
        if now < self.deadline:
            return
        if not self.starting:
            self._give_up_hand_over(now)
            return
        machine = self.machine
        ready = sum(
            1 for m in machine.members.values()
            if m.generation == self.generation and m.ready and m.serving
        )  # fmt: skip
        self.fail(
            f"generation {self.generation} was not ready after "
            f"{machine.config.start_timeout:g}s ({ready} of {machine.target} workers ready)",
            now,
        )  # fmt: skip

    def fail(self, why: str, now: float) -> None:
        """G keeps serving: G+1's ready workers stop accepting, the others are killed."""
        machine = self.machine
        for member in [m for m in machine.members.values() if m.generation == self.generation]:
            if member.ready:
                machine.retire(member, now)
                if not member.closed:
                    self.losers.add(member.key)
            else:
                machine.abandon(member)
        self._decided(Step.FAILING, False, why, now)

    def _hand_over(self, now: float) -> None:
        """G+1 serves: G (and anything older) stops accepting."""
        machine = self.machine
        old = [m for m in machine.members.values() if m.generation != self.generation]
        for member in old:
            if member.ready:
                machine.retire(member, now)
            else:
                machine.abandon(member)
        machine.generation = self.generation
        self.losers = {m.key for m in old if m.key in machine.members and not m.closed}
        self._decided(Step.HANDING_OVER, True, f"generation {self.generation} is serving", now)

    def _decided(self, step: Step, ok: bool, why: str, now: float) -> None:
        self.step = step
        self.outcome = (ok, why)
        self.deadline = now + HAND_OVER_TIMEOUT
        self.machine.status.update(
            reload={"number": self.number, "generation": self.generation, "step": step.value}
        )
        self.check(now)

    def _give_up_hand_over(self, now: float) -> None:
        """A loser that still accepts ``HAND_OVER_TIMEOUT`` after it was told to stop is
        stuck: a worker is killed (then it accepts nothing) and the reload reported.
        This process's own server cannot be killed, and its drain thread always ends
        in CLOSED or its end: the reload waits for it, saying so."""
        machine = self.machine
        waiting = False
        for key in sorted(self.losers):
            member = machine.members.get(key)
            if member is None or member.closed:
                continue
            what = "waiting for it" if member.inprocess else "killing it"
            log.warning(
                "%s still accepts %gs after it was told to stop; %s",
                member, HAND_OVER_TIMEOUT, what,
            )  # fmt: skip
            if member.inprocess:
                waiting = True
                continue
            machine.effects.kill(key, signal.SIGKILL)
            member.closed = True
        if waiting:
            self.deadline = now + HAND_OVER_TIMEOUT
        else:
            self._end(now)

    def _end(self, now: float) -> None:
        """The one report: status, ``READY=1``, the log line; then the next one, if asked."""
        machine = self.machine
        machine.forget_reload()
        machine.phase = Phase.SERVING
        ok, why = self.outcome
        machine.status.record_reload(ok, why, number=self.number, generation=self.generation)
        machine.publish()
        if ok:
            machine.effects.notify("READY=1", f"STATUS=generation {self.generation} serving")
            log.info(
                "HUP: generation %d is ready; generation %d stopped accepting",
                self.generation, self.previous,
                extra={"event": "restarted", "generation": self.generation},
            )  # fmt: skip
        else:
            machine.effects.notify("READY=1", f"STATUS=reload failed: {why}")
            log.error(
                "HUP: reload failed: %s; generation %d keeps serving", why, machine.generation,
                extra={"event": "restart_failed", "generation": self.generation},
            )  # fmt: skip
        machine.reload_ended(now)
