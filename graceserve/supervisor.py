"""The supervisor: the main process that owns the listener and runs worker processes.

Why this module exists: the process systemd tracks (``MAINPID``) and the PID 1
of a container must survive every reload, and one interpreter is one GIL.  So
with ``--workers N`` (N > 1), or from the first HUP of a single process, the
main process stops serving and supervises: it keeps the listener, the pidfile,
the signals and systemd's notifications, and runs fresh-interpreter workers
(``graceserve.workerproc``) that serve on the shared listener.  It is one
thread (plus the signal relay's): a selector over the relay's wake-up socket,
each worker's channel and each worker's pidfd, and timers.

The stop across processes (TERM/INT, in order, with one deadline) is
``graceserve.supervisorstop``.  A second TERM/INT forces every worker; QUIT
stops everything at once.  Under socket activation systemd keeps the
listener: nobody filters, sweeps or shuts it.

Reload (HUP): a new generation starts; once every new worker is ready, the
old ones drain with ``STOP shared`` (the new ones keep accepting); if one
cannot start, the old generation keeps serving.  Supervision: a worker that
dies is logged and replaced at once (after a growing back-off when workers
keep dying before they are ready; exit 3 when no worker ever starts, or five
in a row fail with none serving); ``--worker-timeout`` (SIGABRT, then
SIGKILL), ``--max-requests`` (the replacement is ready before the old one
stops accepting), TTIN/TTOU, USR1 (passed on to every worker).  As PID 1 it
also reaps orphans, which are never taken for workers (they are not in its
table of pids).

Threading contract: ``Supervisor`` methods run on the main thread only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import selectors
import signal
import socket
import time
from collections.abc import Callable

from .control import ServerStatus
from .errors import EXIT_CUT
from .settings import Settings
from .signals import SignalRelay
from .supervisorstop import StopSequence
from .systemd import Notifier
from .workerproc import WorkerProcess

__all__ = ["Supervisor"]

log = logging.getLogger("graceserve")

TICK = 0.25
ABORT_GRACE = 2.0  # seconds between SIGABRT (stack dump) and SIGKILL
MAX_START_FAILURES = 5
_FORCING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class Supervisor(StopSequence):
    """Runs the workers on ``listener`` until a stop; ``run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        listener: socket.socket,
        relay: SignalRelay,
        notifier: Notifier,
        shared_listener: bool,
        inprocess: Callable[[int], object] | None = None,
        status: ServerStatus | None = None,
    ) -> None:
        self.settings = settings
        self.active_total = 0  # connections summed over the workers (read by control threads)
        self.status = status if status is not None else ServerStatus()
        self.status.update(workers=settings.workers)
        self.status.count_with(lambda: self.active_total)
        self.listener = listener
        self.relay = relay
        self.notifier = notifier
        self.shared_listener = shared_listener
        self.target = settings.workers
        self.workers: dict[int, WorkerProcess] = {}
        self.generation = 1
        self.reloading = 0  # the generation being started by a HUP, 0 if none
        # (generation, old workers' pids): a reload waiting for them to stop accepting
        self.handing_over: tuple[int, set[int]] | None = None
        self.announced = False  # READY=1 sent once
        self.ever_ready = inprocess is not None
        self.failures = 0
        self.respawn_at = 0.0
        self.stopping = 0  # the signal that started the stop
        self.forced_by = 0
        self.lame_duck_until = 0.0
        self.deadline: float | None = None
        self.sweeper: WorkerProcess | None = None
        self.sweep_sent = False
        self.fatal = ""
        self.reports: list[WorkerProcess] = []
        self.inprocess = inprocess  # force the draining in-process server (a first HUP)
        self.stop_started = 0.0
        self.next_status = 0.0
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        relay.add_wakeup_socket(self.wake_w)

    # -- starting ---------------------------------------------------------------

    def spawn(self, generation: int) -> WorkerProcess | None:
        limit = self.settings.max_requests
        if limit:
            limit += random.randint(0, self.settings.max_requests_jitter)
        try:
            worker = WorkerProcess(self.listener.fileno(), generation, limit or None)
        except OSError as exc:
            log.error("cannot start a worker: %s", exc)
            self.respawn_at = time.monotonic() + 1.0
            return None
        self.workers[worker.pid] = worker
        self.selector.register(worker.channel, selectors.EVENT_READ, worker)
        self.selector.register(worker.pidfd, selectors.EVENT_READ, worker)
        log.info("started worker pid %d (generation %d)", worker.pid, generation)
        return worker

    def first_worker(self, deadline: float, interrupted: Callable[[], bool]) -> str | None:
        """Start the first worker (a single process's first HUP) and wait until it is
        ready: None, or why it is not (it is gone then).  ``interrupted()`` gives up."""
        worker = self.spawn(self.generation)
        if worker is None:
            return "cannot start a worker"
        while not worker.ready:
            if worker.reap():
                why = worker.why_not_ready()
            elif interrupted():
                why = "interrupted by a signal"
            elif time.monotonic() >= deadline:
                why = f"pid {worker.pid} was not ready in time"
            else:
                self.selector.select(0.05)
                worker.receive()
                continue
            self._abandon([worker])
            return why
        self.announced = True
        return None

    # -- the loop -----------------------------------------------------------------

    def run(self) -> int:
        """Supervise until every worker has stopped; the exit code.  Main thread only."""
        self.relay.queue_dumps = True
        try:
            while not self._finished():
                self._poll(time.monotonic() + TICK)
                self._tick()
        finally:
            self._close()
        return self._exit_code()

    def _finished(self) -> bool:
        return bool(self.stopping or self.fatal) and not self.workers and not self.lame_duck_until

    def _poll(self, until: float) -> None:
        timeout = max(0.0, min(until - time.monotonic(), TICK))
        for key, _ in self.selector.select(timeout):
            if key.fileobj is self.wake_r:
                try:
                    while self.wake_r.recv(512):
                        pass
                except OSError:
                    pass
                continue
            worker: WorkerProcess = key.data
            if self.workers.get(worker.pid, None) is not worker:
                continue  # forgotten by an earlier event of this batch (abandoned with others)
            if key.fileobj is worker.channel:
                for kind in worker.receive():
                    self._message(worker, kind)
            elif worker.reap():
                self._exited(worker)
        if os.getpid() == 1:
            self._reap_orphans()
        for signum in self.relay.take():
            self._signal(signum)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.stopping:
            self._stop_progress(now)
            return
        if self.fatal:
            return
        for worker in list(self.workers.values()):
            self._check_timeout(worker, now)
        serving = self._serving()
        if not self.reloading and len(serving) < self.target and now >= self.respawn_at:
            for _ in range(self.target - len(serving)):
                self.spawn(self.generation)

    def _serving(self) -> list[WorkerProcess]:
        """The current generation's workers that are meant to keep serving."""
        return [
            w for w in self.workers.values()
            if w.generation == self.generation and not w.stopping and not w.recycling
        ]  # fmt: skip

    # -- what workers say ---------------------------------------------------------

    def _message(self, worker: WorkerProcess, kind: str) -> None:
        if kind == "READY":
            self.ever_ready = True
            self.failures = 0
            self._ready(worker)
        elif kind == "STATS":
            self.active_total = sum(w.active for w in self.workers.values())
            limit = worker.max_requests
            due = limit and worker.requests >= limit and not worker.recycling and worker.ready
            if due and not (self.stopping or worker.stopping or self.reloading):
                log.info("%r served %d requests: recycling it", worker, worker.requests)
                worker.recycling = True
                self.respawn_at = 0.0  # the replacement starts at once (_tick)
        elif kind == "CLOSED" and self.stopping:
            self._send_sweep()
        elif kind == "CLOSED":
            self._reloaded()

    def _ready(self, worker: WorkerProcess) -> None:
        if self.stopping:
            return
        if self.reloading == worker.generation:
            fresh = [w for w in self.workers.values() if w.generation == self.reloading]
            if len(fresh) >= self.target and all(w.ready for w in fresh):
                old = [w for w in self.workers.values() if w.generation != self.reloading]
                self._report_reload()  # a previous reload still handing over: done now
                self.generation, self.reloading = self.reloading, 0
                self._retire(old)
                self.handing_over = (self.generation, {w.pid for w in old})
                self._reloaded()
            return
        recycled = [w for w in self.workers.values() if w.recycling and not w.stopping]
        if recycled and worker.generation == self.generation:
            self._retire(recycled[:1])
        serving = self._serving()
        if not self.announced and len(serving) >= self.target and all(w.ready for w in serving):
            self.announced = True
            self.status.update(state="serving")
            log.info("supervisor pid %d: %d workers ready", os.getpid(), len(serving))
            self.notifier.send("READY=1", f"STATUS=serving with {self.target} workers")

    def _reloaded(self) -> None:
        """Report the reload once no worker of an older generation accepts (each said
        CLOSED, or is gone): from then on every new connection meets the new code."""
        if self.stopping:  # a stop overtook the reload: it is never reported as done
            self.handing_over = None
        if self.handing_over is not None and all(
            pid not in self.workers or self.workers[pid].closed for pid in self.handing_over[1]
        ):
            self._report_reload()

    def _report_reload(self) -> None:
        if self.handing_over is None:
            return
        generation, self.handing_over = self.handing_over[0], None
        self.status.record_reload(True, f"generation {generation} is serving")
        self.notifier.send("READY=1", f"STATUS=generation {generation} serving")
        log.info("HUP: generation %d is ready; the old one stopped accepting", generation)

    def _retire(self, workers: list[WorkerProcess]) -> None:
        """Let ``workers`` drain while the others keep accepting."""
        deadline = time.monotonic() + self.settings.grace
        for worker in workers:
            if not worker.stopping:
                worker.stopping = True
                worker.send("STOP", "shared", f"{deadline:.6f}")

    def _forget(self, worker: WorkerProcess) -> None:
        del self.workers[worker.pid]
        self.selector.unregister(worker.channel)
        self.selector.unregister(worker.pidfd)
        worker.close()

    def _exited(self, worker: WorkerProcess) -> None:
        self._forget(worker)
        self._reloaded()
        how = worker.describe_exit()
        if self.stopping:
            self.reports.append(worker)
            self._send_sweep()
            return
        if (worker.stopping and worker.exit_code in (0, EXIT_CUT)) or worker.report is not None:
            if worker.report is not None and worker.report.forced:
                log.warning("%r stopped: %d connections cut", worker, worker.report.forced)
            else:
                log.info("%r stopped (%s)", worker, how)
            return
        if not worker.ready:
            self._start_failed(worker, how)
            return
        log.error("%r died unexpectedly (%s); replacing it", worker, how)
        self.respawn_at = time.monotonic()

    def _start_failed(self, worker: WorkerProcess, how: str) -> None:
        why = worker.why_not_ready()
        if worker.generation == self.reloading:
            self._abandon([w for w in self.workers.values() if w.generation == self.reloading])
            self.reloading = 0
            self.status.record_reload(False, why)
            self.notifier.send("READY=1", f"STATUS=reload failed: {why}")
            log.error("HUP: reload failed: %s; generation %d keeps serving", why, self.generation)
            return
        self.failures += 1
        alive = [w for w in self.workers.values() if w.ready and not w.stopping]
        if not self.ever_ready or (self.failures >= MAX_START_FAILURES and not alive):
            log.error("cannot start: %s", worker.failure or why)
            self.fatal = why
            self._abandon(list(self.workers.values()))
            return
        delay = min(0.1 * 2**self.failures, 10.0)
        log.error("%r failed to start (%s); next attempt in %.1fs", worker, why, delay)
        self.respawn_at = time.monotonic() + delay

    def _abandon(self, workers: list[WorkerProcess]) -> None:
        """Kill workers that never served and forget them."""
        for worker in workers:
            worker.kill(signal.SIGKILL)
            worker.stopping = True
        for worker in workers:
            if worker.pid in self.workers:
                if worker.exit_code is None:
                    with contextlib.suppress(ChildProcessError):
                        worker.set_exit(os.waitpid(worker.pid, 0)[1])
                self._forget(worker)

    def _check_timeout(self, worker: WorkerProcess, now: float) -> None:
        limit = self.settings.worker_timeout
        if worker.killed_at and now - worker.killed_at > ABORT_GRACE:
            worker.kill(signal.SIGKILL)
        elif limit and worker.ready and not worker.stopping and now - worker.progress_at > limit:
            log.error(
                "%r: its serving loop made no progress for %.1fs; killing it (SIGABRT)",
                worker, now - worker.progress_at,
            )  # fmt: skip
            worker.stopping = True
            worker.killed_at = now
            worker.kill(signal.SIGABRT)

    # -- signals ---------------------------------------------------------------

    def _signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:
            for worker in self.workers.values():
                worker.kill(signal.SIGUSR1)
        elif self.stopping and signum in _FORCING:
            self._force(signum)
        elif self.stopping and self.lame_duck_until:
            log.info("%s: ending the lame duck", name)
            self._close_listener()
        elif self.stopping:
            log.info("%s: already stopping", name)
        elif signum in _FORCING:
            self._begin_stop(signum)
        elif signum == signal.SIGHUP:
            self._reload()
        elif signum == signal.SIGTTIN:
            self.target += 1
            self.status.update(workers=self.target)
            log.info("TTIN: %d workers", self.target)
        elif signum == signal.SIGTTOU and self.target > 1:
            self.target -= 1
            self.status.update(workers=self.target)
            log.info("TTOU: %d workers", self.target)
            serving = self._serving()
            self._retire(serving[-1:] if len(serving) > self.target else [])
        elif signum == signal.SIGTTOU:
            log.info("TTOU: already at one worker")

    def _reload(self) -> None:
        if self.reloading:
            log.info("HUP: generation %d is already starting", self.reloading)
            return
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self.reloading = self.generation + 1
        self.status.update(state="reloading")
        log.info("HUP: starting generation %d (%d workers)", self.reloading, self.target)
        for _ in range(self.target):
            self.spawn(self.reloading)

    # -- the end -------------------------------------------------------------------

    def _reap_orphans(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.get(pid)
            if worker is not None:
                worker.set_exit(status)
                self._exited(worker)
            else:
                log.debug("reaped pid %d (not a worker)", pid)

    def close(self) -> None:
        """Kill and reap every worker left, release everything (the end of ``run``)."""
        self._close()

    def _close(self) -> None:
        for worker in list(self.workers.values()):
            worker.kill(signal.SIGKILL)
            os.waitpid(worker.pid, 0)
            worker.close()
        self.workers.clear()
        self.selector.close()
        self.wake_w.close()
        self.wake_r.close()
        self.listener.close()
