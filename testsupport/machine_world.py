"""A fake world for ``graceserve.process.machine``: records for workers, a number for a clock.

The machine acts through ``Effects``; ``World`` performs them on fake workers and
remembers what a real one would know: the code version on disk when it started
(``World.disk``, bumped by a deploy), whether it said READY, was told to stop
(STOP shared/sweep), said CLOSED, or was killed (it dies at the next ``settle``
or ``deliver_deaths``).  A test (or the model-based walk) decides what each
worker does next and feeds that back to the machine as its events.

``Ctl`` plays ``graceserve ctl graceful`` against the machine's status: it reads
how many reloads began, deploys new code, sends HUP, and takes as its answer the
outcome of the next reload by number, or the stop.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from graceserve.process.machine import Config, Exit, Machine, Phase
from graceserve.process.status import ServerStatus

INPROCESS = 1  # the key of this process's own server in one-process worlds


@dataclass
class Worker:
    """A fake worker process (or this process's server, ``inprocess``)."""

    key: int
    generation: int
    code: int  # the code version on disk when it started
    inprocess: bool = False
    ready: bool = False
    stop: str = ""  # "", "shared" or "sweep": what it was told
    closed: bool = False
    forced: bool = False
    killed: int = 0  # the signal that kills it (it dies at the next settle)
    lameduck: bool = False
    spare: bool = False  # waits for GO before it may say READY
    standing: bool = False  # a spare that said STANDBY


@dataclass
class Ctl:
    """One ``ctl graceful``: what it saw, and the answer it got."""

    number: int  # the reload whose outcome it waits for
    code: int  # the code on disk when it was called
    answer: str = ""  # "", "ok", "failed" or "stopping"
    generation: int = 0
    serving_codes: set[int] = field(default_factory=set)  # what accepted when it got "ok"


class World:
    """Performs the machine's effects on fake workers; see the module docstring."""

    def __init__(self, target: int = 2, inprocess: bool = False, **config: object) -> None:
        self.now = 1000.0
        self.disk = 1
        self.next_key = 100
        self.workers: dict[int, Worker] = {}
        self.notified: list[tuple[str, ...]] = []
        self.listener = "open"
        self.alone_stops: list[int] = []
        self.ctls: list[Ctl] = []
        self.abandoned: list[tuple[float, int]] = []  # (when, generation) of every abandon
        self.status = ServerStatus()
        self.status.update(state="serving" if inprocess else "starting")
        if inprocess:
            self.workers[INPROCESS] = Worker(INPROCESS, 1, self.disk, inprocess=True, ready=True)
        settings = {"grace": 8.0, "start_timeout": 30.0, "worker_timeout": None, **config}
        self.machine = Machine(
            Config(target=target, scalable=not inprocess, **settings),  # type: ignore[arg-type]
            self, self.status, self.now, inprocess=INPROCESS if inprocess else None,
        )  # fmt: skip

    # -- Effects -------------------------------------------------------------------------

    def spawn(self, generation: int, spare: bool = False) -> int | None:
        key = self.next_key
        self.next_key += 1
        self.workers[key] = Worker(key, generation, self.disk, spare=spare)
        return key

    def send(self, key: int, *words: object) -> None:
        worker = self.workers[key]
        if words[0] == "GO":
            assert worker.standing, f"GO to {worker}, which is not standing by"
            worker.spare = worker.standing = False
        elif words[0] == "STOP" and not worker.stop:
            worker.stop = str(words[1])
        elif words[0] == "FORCE":
            worker.forced = True
        elif words[0] == "LAMEDUCK":
            worker.lameduck = True

    def kill(self, key: int, signum: int) -> None:
        assert key != INPROCESS, "this process's server is never killed"
        if signum in (signal.SIGKILL, signal.SIGABRT):
            self.workers[key].killed = signum

    def abandon(self, key: int) -> None:
        assert key != INPROCESS, "this process's server is never abandoned"
        worker = self.workers.pop(key)
        assert not worker.ready, f"{worker} served: it must drain, not be killed"
        self.abandoned.append((self.now, worker.generation))

    def filter_listener(self) -> None:
        self.listener = "filtered"

    def shut_listener(self) -> None:
        self.listener = "shut"

    def notify(self, *fields: str) -> None:
        self.notified.append(fields)

    def stop_alone(self, signum: int) -> int:
        self.alone_stops.append(signum)
        self.workers.clear()
        self.status.finish(0, {})
        return 0

    # -- what workers do -------------------------------------------------------------------

    def alive(self) -> list[Worker]:
        return [w for w in self.workers.values() if not w.killed]

    def ready(self, worker: Worker) -> None:
        """It imported its code: a spare stands by, any other worker is ready."""
        if worker.spare:
            worker.standing = True
            self.machine.standing_by(worker.key, self.now)
            return
        worker.ready = True
        self.machine.ready(worker.key, self.now)

    def close(self, worker: Worker) -> None:
        worker.closed = True
        self.machine.closed(worker.key, self.now)

    def exit(self, worker: Worker, code: int, reported: bool, why: str = "") -> None:
        del self.workers[worker.key]
        how = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        why = why or f"pid {worker.key} exited before it was ready"
        end = Exit(code, how, why, reported=reported)
        self.machine.exited(worker.key, end, self.now)

    def deliver_deaths(self) -> None:
        for worker in list(self.workers.values()):
            if worker.killed and worker.key in self.workers:
                self.exit(worker, -worker.killed, reported=False)

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.machine.tick(self.now)
        self.answer()

    def signal(self, signum: int) -> None:
        self.machine.signal(signum, self.now)
        self.answer()

    def graceful(self) -> Ctl:
        """Deploy new code and run ``ctl graceful``'s protocol."""
        self.disk += 1
        begun = int(self.status.snapshot()["reloads_started"])
        ctl = Ctl(begun + 1, self.disk)
        self.ctls.append(ctl)
        self.signal(signal.SIGHUP)
        return ctl

    def answer(self) -> None:
        """Give every waiting ctl what the control socket's ``wait`` would."""
        status = self.status.snapshot()
        for ctl in self.ctls:
            if ctl.answer:
                continue
            if status["state"] in ("draining", "stopped"):
                ctl.answer = "stopping"
            elif status["reloads"] >= ctl.number:
                outcome = next(e for e in status["recent_reloads"] if e["number"] == ctl.number)
                ctl.answer = "ok" if outcome["ok"] else "failed"
                ctl.generation = outcome["generation"]
                ctl.serving_codes = {w.code for w in self.accepting()}

    def accepting(self) -> list[Worker]:
        """The members that may accept a connection now (a worker accepts once READY)."""
        return [w for w in self.workers.values() if w.ready and not w.closed and not w.killed]

    def settle(self, rounds: int = 60) -> None:
        """Every worker cooperates, time passes: the machine must come to rest."""
        for _ in range(rounds):
            self.deliver_deaths()
            for worker in list(self.workers.values()):
                if worker.key not in self.workers:
                    continue
                if not worker.ready and not worker.stop and not worker.standing:
                    self.ready(worker)
                elif worker.stop and not worker.closed:
                    self.close(worker)
                elif worker.stop and worker.closed:
                    self.exit(worker, 0, reported=True)
                elif worker.ready:
                    self.machine.progress(worker.key, self.now, 0)
            self.tick(1.0)
            self.answer()

    @property
    def phase(self) -> Phase:
        return self.machine.phase
