"""The supervisor's life as a state machine: every decision, and no I/O.

Why this module exists: a supervisor meets events in any order (a HUP while a
reload starts, a TTIN while new workers import, a worker that dies after it was
ready while its sibling still imports, a stop in the middle of all of it), and
each interleaving must end in a defined, reported state.  That is only
checkable if the decisions live in one place, apart from processes and sockets
(h11's rule).  So ``Machine`` holds the phase, the target, the generations and
the reload transaction, receives events from its driver
(``graceserve.process.supervisor``) and acts through ``Effects`` (spawn, send, kill, ...)
that the driver performs; the tests drive it with fake workers and a fake clock.

Phases (``ctl status`` shows them as ``state``; the lame duck as ``draining``)::

    STARTING   the first workers start (--workers N); nothing announced yet
    SERVING    one generation serves
    RELOADING  a reload transaction is open (below)
    LAME_DUCK  a stop with --drain-delay: still serving, health checks fail
    DRAINING   the stop: the listener goes down in order, every member drains
    STOPPED    everything ended; ``exit_code`` is set

The reload is a transaction with a deadline (``graceserve.process.machinereload``):
generation G+1 starts while G serves, and it ends in exactly one reported
outcome: G+1 serves, or G keeps serving with the reason.  A HUP meanwhile is
never lost: it is queued (several coalesce into one) and starts the next reload
as soon as this one ends, so whoever sent it gets a reload that began after it,
with the code on disk then.  The stop is ``graceserve.process.machinestop``.

Members are worker processes and, in one-process mode, this process's own
server (``inprocess``): generation 1, always ready, never killed; a first
reload or its ``--max-requests`` replaces it with a worker process exactly as
a reload or a recycling replaces a worker.  While it is the only member, a stop
is the one-process stop (``Effects.stop_alone``).  A worker accepts only once
it said READY, so one that has not may be killed (``abandon``) at any time.
With ``--max-requests`` one spare per generation imports the code ahead and
stands by (STANDBY) until a replacement is needed (GO): a recycled worker then
stops accepting within milliseconds of its limit.

Threading contract: not thread-safe; the driver's thread only.  Time is the
``now`` each event brings (``time.monotonic()``, or a test's clock).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from graceserve.errors import EXIT_CANNOT_START, EXIT_CUT
from graceserve.process.machineparts import (
    ABORT_GRACE,
    MAX_START_FAILURES,
    Config,
    Effects,
    Exit,
    Member,
    Phase,
    Step,
    signal_name,
)
from graceserve.process.machinereload import Reload
from graceserve.process.machinestop import Stop
from graceserve.process.status import ServerStatus

__all__ = ["Config", "Effects", "Exit", "Machine", "Member", "Phase", "Reload", "Step"]

log = logging.getLogger("graceserve")


class Machine:
    """The supervisor's decisions.  Events in, ``Effects`` out; see the module docstring."""

    def __init__(
        self,
        config: Config,
        effects: Effects,
        status: ServerStatus,
        now: float,
        inprocess: int | None = None,
    ) -> None:
        self.config = config
        self.effects = effects
        self.status = status
        self.target = config.target
        self.members: dict[int, Member] = {}
        self.phase = Phase.STARTING
        fields = status.snapshot()
        self.generation = int(fields["generation"])  # serving (taking over, in a hand-over)
        self.reloads_started = int(fields["reloads_started"])
        self.reload: Reload | None = None
        self.pending = False  # a HUP arrived during a reload
        self.failures = 0  # start failures in a row
        self.respawn_at = 0.0
        self.ever_ready = False
        self.stop: Stop | None = None
        self.fatal = ""
        self.exit_code: int | None = None
        self._on_signal: dict[int, Callable[[int, float], None]] = {
            signal.SIGHUP: self._handle_hup,
            signal.SIGTTIN: self._handle_ttin,
            signal.SIGTTOU: self._handle_ttou,
            signal.SIGTERM: self._handle_stop,
            signal.SIGINT: self._handle_stop,
            signal.SIGQUIT: self._handle_stop,
            signal.SIGUSR1: self._handle_usr1,
        }
        if inprocess is not None:
            self.members[inprocess] = Member(
                inprocess, self.generation, now, inprocess=True, ready=True, progress_at=now
            )
            self.phase = Phase.SERVING
            self.ever_ready = True
        self.publish()
        self._fill(now)

    # -- queries -----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.phase in (Phase.LAME_DUCK, Phase.DRAINING)

    @property
    def finished(self) -> bool:
        return self.phase is Phase.STOPPED

    def _of(self, generation: int) -> list[Member]:
        return [m for m in self.members.values() if m.generation == generation]

    def _growing(self) -> int:
        """The generation that new workers join: the one a reload starts, else the
        serving one."""
        if self.reload is not None and self.reload.starting:
            return self.reload.generation
        return self.generation

    # -- events: signals -------------------------------------------------------------

    def signal(self, signum: int, now: float) -> None:
        """A signal arrived (the dispatch table: ``_handle_<signal>``)."""
        handler = self._on_signal.get(signum)
        if handler is not None and self.phase is not Phase.STOPPED:
            handler(signum, now)

    def _handle_hup(self, signum: int, now: float) -> None:
        if self._stopping_signal(signum, now):
            return
        if self.phase is Phase.SERVING:
            self._start_reload(now)
            return
        self.pending = True  # STARTING or RELOADING: the next reload, once this ends
        self.status.update(reload_pending=True)
        if self.reload is None:
            log.info("HUP: the workers are still starting; the reload begins once they serve")
        else:
            log.info(
                "HUP: generation %d is %s; the next reload starts once this one ends",
                self.reload.generation, self.reload.step.value,
            )  # fmt: skip

    def _handle_ttin(self, signum: int, now: float) -> None:
        if self._stopping_signal(signum, now) or not self._scalable(signum):
            return
        self.target += 1
        self.publish()
        log.info("TTIN: %d workers", self.target)
        self._fill(now)
        self._move_on(now)

    def _handle_ttou(self, signum: int, now: float) -> None:
        if self._stopping_signal(signum, now) or not self._scalable(signum):
            return
        if self.target <= 1:
            log.info("TTOU: already at one worker")
            return
        self.target -= 1
        self.publish()
        log.info("TTOU: %d workers", self.target)
        self._trim(self._growing(), now)
        if self.reload is not None and self.reload.starting:
            self._trim(self.generation, now)  # the old one too: never more than the target
        self._move_on(now)

    def _handle_usr1(self, signum: int, now: float) -> None:
        for member in self.members.values():
            if not member.inprocess:
                self.effects.kill(member.key, signal.SIGUSR1)

    def _handle_stop(self, signum: int, now: float) -> None:
        if self.stop is not None:
            self.stop.force(signum, now)
            return
        if self.reload is not None:
            log.info(
                "%s: the reload to generation %d is %s", signal_name(signum),
                self.reload.generation,
                "abandoned" if self.reload.starting else "overtaken: not reported",
            )  # fmt: skip
        self.reload = None
        self.pending = False
        for member in list(self.members.values()):
            if not member.ready:  # it never served (a worker accepts only once READY)
                self.abandon(member)
        alone = [m for m in self.members.values() if m.inprocess and not m.told]
        if alone and len(self.members) == 1:
            self.phase = Phase.DRAINING
            self.exit_code = self.effects.stop_alone(signum)
            self.members.clear()
            self.phase = Phase.STOPPED
            return
        self.stop = Stop(self, signum, now)
        self.stop.begin(now)

    def _stopping_signal(self, signum: int, now: float) -> bool:
        """A non-forcing signal during the stop: it ends the lame duck, or nothing."""
        if self.stop is None:
            return False
        if self.phase is Phase.LAME_DUCK:
            log.info("%s: ending the lame duck", signal_name(signum))
            self.stop.close_listener(now)
        else:
            log.info("%s: already stopping", signal_name(signum))
        return True

    def _scalable(self, signum: int) -> bool:
        """TTIN/TTOU change the count of worker processes: not while this process's own
        server serves (one process, until its first reload hands the serving over)."""
        if self.config.scalable or not any(
            m.inprocess and not m.told for m in self.members.values()
        ):
            return True
        log.info(
            "%s: ignored (one process serves by itself; a worker can be added once a "
            "reload made worker processes serve, or start with --workers N)", signal_name(signum),
        )  # fmt: skip
        return False

    # -- events: members -------------------------------------------------------------

    def ready(self, key: int, now: float) -> None:
        """A worker said READY: it accepts from now on."""
        member = self.members.get(key)
        if member is None or member.ready:
            return
        member.ready = True
        member.progress_at = now
        self.ever_ready = True
        self.failures = 0
        if self.stopping:
            return
        self._move_on(now)

    def closed(self, key: int, now: float) -> None:
        """A member said it stopped accepting."""
        member = self.members.get(key)
        if member is None:
            return
        member.closed = True
        if self.stop is not None:
            self.stop.send_sweep()
        else:
            self._check_reload(now)

    def standing_by(self, key: int, now: float) -> None:
        """A spare said STANDBY: imported and waiting; it replaces the next one that
        must be (``_fill``)."""
        member = self.members.get(key)
        if member is None or not member.spare:
            return
        member.standing = True
        self.failures = 0
        self._fill(now)
        self._move_on(now)

    def recycle(self, key: int, requests: int, now: float) -> None:
        """A member served its ``--max-requests``: replace it (it keeps serving until
        its replacement is ready)."""
        member = self.members.get(key)
        if member is None or not member.serving or not member.ready or self.stopping:
            return
        log.info("%s served %d requests: recycling it", member, requests)
        member.recycling = True
        self.status.count_restart()
        self._fill(now)

    def progress(self, key: int, at: float, active: int) -> None:
        """A worker's counters: its serving loop turned at ``at``; ``active`` connections."""
        member = self.members.get(key)
        if member is not None:
            member.progress_at = max(member.progress_at, at)
            member.active = active

    def exited(self, key: int, end: Exit, now: float) -> None:
        """A member ended (a process reaped, or this process's drain over)."""
        member = self.members.pop(key, None)
        if member is None:
            return
        if self.stop is not None:
            self.stop.exited(member, end, now)
            return
        reload = self.reload
        if member.told and (end.reported or end.code in (0, EXIT_CUT)):
            if not member.inprocess:
                if end.forced:
                    log.warning(
                        "%s stopped: %d connections cut, after %d requests", member,
                        end.forced, end.requests,
                    )  # fmt: skip
                else:
                    log.info("%s stopped (%s) after %d requests", member, end.how, end.requests)
        elif not member.ready:
            self._start_failed(member, end.why_not_ready, now, end.failure)
        elif member.told:
            log.warning("%s died while draining (%s)", member, end.how)
        elif reload is not None and reload.starting:
            if member.generation == reload.generation:
                if reload.new_worker_died(end.how, now):
                    log.error("%s died unexpectedly (%s); replacing it", member, end.how)
                    self.status.count_restart()
            else:
                log.error(
                    "%s died unexpectedly (%s); generation %d, starting, takes over",
                    member, end.how, reload.generation,
                )  # fmt: skip
        else:
            log.error("%s died unexpectedly (%s); replacing it", member, end.how)
            self.status.count_restart()
            self.respawn_at = min(self.respawn_at, now)
        self._fill(now)
        self._move_on(now)

    # -- the clock ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Act on every deadline that has passed."""
        if self.phase is Phase.STOPPED:
            return
        if self.stop is not None:
            self.stop.tick(now)
            return
        for member in list(self.members.values()):
            if not member.inprocess and member.key in self.members:
                self._watch(member, now)
                if self.finished:
                    return
        if self.reload is not None:
            self.reload.tick(now)
        if not self.finished:
            self._fill(now)
            self._move_on(now)

    # -- supervision ---------------------------------------------------------------------

    def _watch(self, member: Member, now: float) -> None:
        """A worker's deadlines: ``--worker-timeout`` (SIGABRT, then SIGKILL) and, for
        one that is not part of a reload, ``--start-timeout``."""
        timeout = self.config.worker_timeout
        if member.aborted_at:
            if now - member.aborted_at > ABORT_GRACE:
                self.effects.kill(member.key, signal.SIGKILL)
        elif timeout and member.ready and not member.told and now - member.progress_at > timeout:
            log.error(
                "%s: its serving loop made no progress for %.1fs; killing it (SIGABRT)",
                member, now - member.progress_at,
            )  # fmt: skip
            member.aborted_at = now
            self.effects.kill(member.key, signal.SIGABRT)
        in_reload = self.reload is not None and member.generation == self.reload.generation
        late = now - member.started_at > self.config.start_timeout
        if not member.ready and not member.standing and not in_reload and late:
            self.abandon(member)
            self._start_failed(
                    member, f"pid {member.key} was not ready after "
                    f"{self.config.start_timeout:g}s", now,
                )  # fmt: skip

    def _fill(self, now: float) -> None:
        """Start workers until the growing generation has the target: a spare standing
        by first (it serves at once), else a new one; then spares (``--max-requests``)
        for the serving generation."""
        if self.stopping or self.phase is Phase.STOPPED:
            return
        generation = self._growing()
        missing = self.target - sum(1 for m in self._of(generation) if m.serving)
        for spare in [m for m in self._of(generation) if m.standing][: max(missing, 0)]:
            spare.spare = spare.standing = False
            spare.started_at = now  # from now on, a worker that must say READY in time
            self.effects.send(spare.key, "GO")
            missing -= 1
        if generation == self.generation and now < self.respawn_at:
            return  # backing off: replacements keep failing to start
        for _ in range(max(missing, 0)):
            if not self._spawn(generation, now):
                if self.reload is not None and self.reload.starting:
                    self.reload.fail(f"cannot start a worker of generation {generation}", now)
                return
        if self.reload is None:
            spares = sum(1 for m in self._of(generation) if m.spare)
            for _ in range(self.config.spares - spares):
                if not self._spawn(generation, now, spare=True):
                    return
        if generation == self.generation:
            self.respawn_at = 0.0

    def _spawn(self, generation: int, now: float, spare: bool = False) -> bool:
        key = self.effects.spawn(generation, spare)
        if key is None:
            self.respawn_at = now + 1.0
            return False
        self.members[key] = Member(key, generation, now, progress_at=now, spare=spare)
        return True

    def _trim(self, generation: int, now: float) -> None:
        """Retire (or, if never ready, abandon) the newest members of ``generation``
        until it has at most the target."""
        serving = sorted(
            (m for m in self._of(generation) if m.serving and not m.inprocess),
            key=lambda m: m.started_at,
        )
        for member in serving[self.target :][::-1]:
            if member.ready:
                self.retire(member, now)
            else:
                self.abandon(member)
                log.info("%s was still starting: stopped (it never served)", member)

    def retire(self, member: Member, now: float) -> None:
        """Let ``member`` drain while the others keep accepting."""
        if not member.told:
            member.told = True
            self.effects.send(member.key, "STOP", "shared", f"{now + self.config.grace:.6f}")
            if member.inprocess:
                self.publish()

    def abandon(self, member: Member) -> None:
        self.members.pop(member.key, None)
        self.effects.abandon(member.key)

    def _start_failed(self, member: Member, why: str, now: float, failure: str = "") -> None:
        """``member`` never got ready (``failure``: the reason it gave, if any)."""
        reload = self.reload
        if reload is not None and reload.starting and member.generation == reload.generation:
            reload.fail(why, now)
            return
        self.failures += 1
        alive = [m for m in self.members.values() if m.ready and not m.told]
        if not self.ever_ready or (self.failures >= MAX_START_FAILURES and not alive):
            self._cannot_start(failure or why, now)
            return
        delay = min(0.1 * 2**self.failures, 10.0)
        log.error("%s failed to start (%s); next attempt in %.1fs", member, why, delay)
        self.respawn_at = now + delay

    def _cannot_start(self, why: str, now: float) -> None:
        """No worker can start and none serves: exit 3 (never a restart loop that looks
        healthy).  Workers still draining (retired earlier) finish first, as in a stop."""
        log.error("cannot start: %s", why)
        self.fatal = why
        self.reload = None
        self.pending = False
        for member in list(self.members.values()):
            if not member.ready:
                self.abandon(member)
        if not self.members:
            self.phase = Phase.STOPPED
            self.exit_code = EXIT_CANNOT_START
            self.status.finish(EXIT_CANNOT_START, {"clean": False, "cannot_start": why})
            return
        self.stop = Stop(self, signal.SIGTERM, now, why="cannot start")
        self.stop.begin(now)

    def _move_on(self, now: float) -> None:
        """After any change: recycled workers whose replacements serve stop accepting;
        the reload's next step; the first announcement."""
        for generation in {self.generation, self._growing()}:
            self._retire_recycled(generation, now)
        self._check_reload(now)
        self._announce(now)

    def _retire_recycled(self, generation: int, now: float) -> None:
        """A recycled member stops accepting as soon as, without it, the target of
        ready members accept (its replacement is ready, or a TTOU made it spare)."""
        recycled = sorted(
            (m for m in self._of(generation) if m.recycling and not m.told),
            key=lambda m: m.started_at,
        )
        ready = sum(1 for m in self._of(generation) if m.serving and m.ready)
        for member in recycled[: max(ready + len(recycled) - self.target, 0)]:
            self.retire(member, now)

    def _announce(self, now: float) -> None:
        """The first generation serves: READY=1, once."""
        if self.phase is not Phase.STARTING:
            return
        serving = [m for m in self._of(self.generation) if m.serving]
        if len(serving) < self.target or not all(m.ready for m in serving):
            return
        self.phase = Phase.SERVING
        self.status.update(state="serving")
        log.info("supervisor pid %d: %d workers ready", os.getpid(), len(serving))
        self.effects.notify("READY=1", f"STATUS=serving with {self.target} workers")
        if self.pending:
            self._start_reload(now)

    # -- the reload transaction (graceserve.process.machinereload) --------------------------------

    def _start_reload(self, now: float) -> None:
        self.reloads_started += 1
        self.pending = False
        self.reload = Reload(self, self.reloads_started, now)
        self.reload.begin(now)
        self._fill(now)

    def _check_reload(self, now: float) -> None:
        if self.reload is not None and not self.stopping:
            self.reload.check(now)

    def forget_reload(self) -> None:
        """The reload in progress has ended (its report comes next)."""
        self.reload = None

    def reload_ended(self, now: float) -> None:
        """After a reload's report: the next one, if a HUP asked meanwhile."""
        if self.pending:
            self._start_reload(now)
        else:
            self._fill(now)

    def publish(self) -> None:
        """The target, as ``ctl status`` shows it: worker processes, or None while this
        process's own server is the serving generation."""
        inprocess = any(m.inprocess and not m.told for m in self.members.values())
        self.status.update(workers=None if inprocess and self.reload is None else self.target)
