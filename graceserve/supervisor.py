"""The supervisor: the main process that owns the listener and runs worker processes.

Why this module exists: the process systemd tracks (``MAINPID``) and the PID 1
of a container must survive every reload, and one interpreter is one GIL.  So
with ``--workers N`` (N > 1), or from the first HUP of a single process, the
main process stops serving and supervises: it keeps the listener, the pidfile,
the signals and systemd's notifications, and runs fresh-interpreter workers
(``graceserve.workerproc``) that serve on the shared listener.  It is one
thread (plus the signal relay's): a selector over the relay's wake-up socket,
each worker's channel and each worker's pidfd, and timers.

The stop across processes (TERM/INT), in order:

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

A second TERM/INT forces every worker; QUIT stops everything at once.  Under
socket activation systemd keeps the listener: nobody filters, sweeps or
shuts it.  Reload (HUP): a new generation starts; once every new worker is
ready, the old ones drain with ``STOP shared`` (the new ones keep accepting);
if one cannot start, the old generation keeps serving.  Supervision: a worker
that dies is logged and replaced at once (after a growing back-off when
workers keep dying before they are ready; exit 3 when no worker ever starts,
or five in a row fail with none serving); ``--worker-timeout`` (SIGABRT, then
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

from .accepting import attach_drop_all_filter
from .errors import EXIT_CANNOT_START, EXIT_CUT, EXIT_OK, exit_code_for_signal
from .settings import Settings
from .signals import SignalRelay
from .systemd import Notifier
from .workerproc import WorkerProcess

__all__ = ["Supervisor"]

log = logging.getLogger("graceserve")

TICK = 0.25
KILL_MARGIN = 1.0  # seconds past the deadline before a worker that did not end is killed
ABORT_GRACE = 2.0  # seconds between SIGABRT (stack dump) and SIGKILL
MAX_START_FAILURES = 5
_FORCING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class Supervisor:
    """Runs the workers on ``listener`` until a stop; ``run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        listener: socket.socket,
        relay: SignalRelay,
        notifier: Notifier,
        shared_listener: bool,
        inprocess: Callable[[int], object] | None = None,
    ) -> None:
        self.settings = settings
        self.listener = listener
        self.relay = relay
        self.notifier = notifier
        self.shared_listener = shared_listener
        self.target = settings.workers
        self.workers: dict[int, WorkerProcess] = {}
        self.generation = 1
        self.reloading = 0  # the generation being started by a HUP, 0 if none
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
                why = f"{worker.failure or worker.describe_exit()} (pid {worker.pid})"
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
                self._poll(self._next_timer())
                self._tick()
        finally:
            self._close()
        return self._exit_code()

    def _finished(self) -> bool:
        return bool(self.stopping or self.fatal) and not self.workers and not self.lame_duck_until

    def _next_timer(self) -> float:
        return time.monotonic() + TICK

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
            worker = key.data
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
            limit = worker.max_requests
            due = limit and worker.requests >= limit and not worker.recycling and worker.ready
            if due and not (self.stopping or worker.stopping or self.reloading):
                log.info("%r served %d requests: recycling it", worker, worker.requests)
                worker.recycling = True
                self.respawn_at = 0.0  # the replacement starts at once (_tick)
        elif kind == "CLOSED" and self.stopping:
            self._send_sweep()

    def _ready(self, worker: WorkerProcess) -> None:
        if self.stopping:
            return
        if self.reloading == worker.generation:
            fresh = [w for w in self.workers.values() if w.generation == self.reloading]
            if len(fresh) >= self.target and all(w.ready for w in fresh):
                old = [w for w in self.workers.values() if w.generation != self.reloading]
                self.generation, self.reloading = self.reloading, 0
                log.info("HUP: generation %d is ready; draining the old one", self.generation)
                self._retire(old)
                self.notifier.send("READY=1", f"STATUS=generation {self.generation} serving")
            return
        recycled = [w for w in self.workers.values() if w.recycling and not w.stopping]
        if recycled and worker.generation == self.generation:
            self._retire(recycled[:1])
        serving = self._serving()
        if not self.announced and len(serving) >= self.target and all(w.ready for w in serving):
            self.announced = True
            log.info("supervisor pid %d: %d workers ready", os.getpid(), len(serving))
            self.notifier.send("READY=1", f"STATUS=serving with {self.target} workers")

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
        why = worker.failure or how
        if worker.generation == self.reloading:
            log.error("HUP: reload failed: %s; generation %d keeps serving", why, self.generation)
            self._abandon([w for w in self.workers.values() if w.generation == self.reloading])
            self.reloading = 0
            self.notifier.send("READY=1", f"STATUS=reload failed: {why}")
            return
        self.failures += 1
        alive = [w for w in self.workers.values() if w.ready and not w.stopping]
        if not self.ever_ready or (self.failures >= MAX_START_FAILURES and not alive):
            log.error("cannot start: %s", why)
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
            log.info("TTIN: %d workers", self.target)
        elif signum == signal.SIGTTOU and self.target > 1:
            self.target -= 1
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
        log.info("HUP: starting generation %d (%d workers)", self.reloading, self.target)
        for _ in range(self.target):
            self.spawn(self.reloading)

    def _begin_stop(self, signum: int) -> None:
        self.stopping = signum
        self.stop_started = time.monotonic()
        self.notifier.send("STOPPING=1")
        if self.reloading:
            self._abandon([w for w in self.workers.values() if w.generation == self.reloading])
            self.reloading = 0
        delay = self.settings.drain_delay
        if delay > 0 and signum != signal.SIGQUIT:
            log.info("%s: lame duck for %gs (still serving, /healthz fails)", _name(signum), delay)
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
        log.info(
            "%s: draining %d workers (grace %gs); new connections are refused",
            _name(self.stopping), len(self.workers), self.settings.grace,
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
        log.warning("%s: cutting every connection now", _name(signum))
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
        return code

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


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
