"""The supervisor: the main loop that runs the state machine against real processes.

Why this module exists: the process systemd tracks (``MAINPID``) and the PID 1
of a container must survive every reload, and one interpreter is one GIL.  So
the main process owns the listener, the pidfile, the signals and systemd's
notifications, and the serving is done by members: fresh-interpreter worker
processes (``graceserve.process.workerproc``) on the shared listener and, in
one-process mode, this process's own server until a reload hands it over
(``graceserve.process.inprocess``).  Every decision is ``graceserve.process.machine``'s; this
module is its driver: it turns signals, channel messages, exits and the clock
into the machine's events, and performs the machine's effects (start a worker,
send it a command, kill it, filter or shut the listener, sd_notify).

It is one thread (plus the signal relay's): a selector over the relay's wake-up
socket, each member's channel and each worker's pidfd, ticking every ``TICK``.
Signals are taken in order from one queue (``inbox``), one at a time, so that
a one-process stop (``stop_alone``) finds the rest of its batch still there.

The stop across processes, in order (``Machine``'s stop half): the lame duck
reaches every member at once; then the drop-all filter goes on the listeners
(a Unix listener's file is removed instead: new connects fail, what is queued
stays acceptable) and one deadline is set from the signal; every member but one (the sweeper)
stops accepting and closes only its own copy (``STOP shared``); once they all
have, the sweeper (``STOP sweep``) serves what the kernel queued and shuts the
listener for everyone (``DESIGN.md``, "Workers: verified facts"); a member
still alive a second after the deadline is killed and counted as cut.  Under
socket activation systemd keeps the listener: nobody filters, sweeps or shuts
it.  As PID 1 it also reaps orphans (``graceserve.process.orphans``), which are never
taken for workers.

Threading contract: ``Supervisor`` methods run on the main thread only.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import selectors
import signal
import socket
import time
from collections.abc import Callable

from graceserve.core.accepting import attach_drop_all_filter
from graceserve.process.balance import IDLE, AcceptTable
from graceserve.process.control import ServerStatus
from graceserve.process.inprocess import InProcessServer
from graceserve.process.listener import unlink_socket_file
from graceserve.process.machine import Config, Exit, Machine
from graceserve.process.metrics import MetricsBoard
from graceserve.process.orphans import OrphanReaper
from graceserve.process.signals import SignalRelay
from graceserve.process.systemd import Notifier
from graceserve.process.workerproc import ChannelEnd, WorkerProcess
from graceserve.settings import Settings

__all__ = ["TICK", "Supervisor"]

log = logging.getLogger("graceserve")

TICK = 0.25  # seconds between the machine's clock events


class Supervisor:
    """Runs the members on ``listeners`` until a stop; ``run()`` returns the exit code.

    Every worker gets every listener; the stop filters, and then shuts, each of them.
    """

    def __init__(
        self,
        settings: Settings,
        listeners: list[socket.socket],
        relay: SignalRelay,
        notifier: Notifier,
        shared_listener: bool,
        status: ServerStatus,
        *,
        inbox: collections.deque[int] | None = None,
        inprocess: InProcessServer | None = None,
        stop_alone: Callable[[int], int] | None = None,
        metrics: MetricsBoard | None = None,
    ) -> None:
        self.settings = settings
        self.listeners = listeners
        self.relay = relay
        self.notifier = notifier
        self.status = status
        self.inbox = inbox if inbox is not None else collections.deque()
        self.members: dict[int, ChannelEnd] = {}
        self.metrics = metrics  # --metrics-bind: every member's meters, for the endpoint
        self._stop_alone = stop_alone
        self.reaper = OrphanReaper()
        # Each worker publishes the connections it holds here; the busier leave clients to
        # the idler (graceserve.process.balance).  None without memfd: workers accept freely.
        self.accept_table = AcceptTable.create()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        relay.add_wakeup_socket(self.wake_w)
        relay.queue_dumps = True  # USR1 is passed on to every worker
        status.count_with(self._connections)
        status.update(start_timeout=settings.start_timeout)
        if inprocess is not None:
            self._register(inprocess)
        config = Config(
            target=settings.workers,
            scalable=inprocess is None,
            start_timeout=settings.start_timeout,
            grace=settings.grace,
            drain_delay=settings.drain_delay,
            worker_timeout=settings.worker_timeout,
            shared_listener=shared_listener,
            spares=1 if settings.max_requests else 0,
        )
        key = inprocess.pid if inprocess is not None else None
        self.machine = Machine(config, self, status, time.monotonic(), inprocess=key)
        self._count_workers()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until the machine has stopped; the exit code.  Main thread only."""
        machine = self.machine
        try:
            while not machine.finished:
                self._poll()
                if not machine.finished:
                    machine.tick(time.monotonic())
                self._count_workers()
        finally:
            self.close()
        assert machine.exit_code is not None
        return machine.exit_code

    def _poll(self) -> None:
        for key, _ in self.selector.select(TICK):
            if key.fileobj is self.wake_r:
                with contextlib.suppress(OSError):
                    while self.wake_r.recv(512):
                        pass
                continue
            member: ChannelEnd = key.data
            if self.members.get(member.pid) is not member:
                continue  # forgotten by an earlier event of this batch
            self._hear(member)
            ended = key.fileobj is not member.channel or isinstance(member, InProcessServer)
            if ended and member.reap():  # its pidfd (or this process's drain: its channel)
                self._ended(member)
        now = time.monotonic()
        if self.reaper.enabled:
            self.reaper.reap(now, skip=self.members)
        self.inbox.extend(self.relay.take())
        while self.inbox and not self.machine.finished:
            self.machine.signal(self.inbox.popleft(), time.monotonic())

    def _count_workers(self) -> None:
        """``--metrics-bind``'s ``graceserve_workers``: the members that serve now."""
        if self.metrics is not None:
            members = self.machine.members.values()
            self.metrics.workers = sum(1 for m in members if m.ready and not m.told)

    def _hear(self, member: ChannelEnd) -> None:
        """Every message waiting from ``member``, as machine events."""
        machine, key = self.machine, member.pid
        for kind in member.receive():
            now = time.monotonic()
            if kind == "READY":
                machine.ready(key, now)
            elif kind == "STATS":
                machine.progress(key, member.progress_at, member.active)
            elif kind == "METRICS" and self.metrics is not None and member.meters is not None:
                self.metrics.update(key, member.meters)
            elif kind == "CLOSED":
                machine.closed(key, now)
            elif kind == "RECYCLE":
                machine.recycle(key, member.requests, now)
            elif kind == "STANDBY":
                machine.standing_by(key, now)
            elif kind == "EOF" and isinstance(member, WorkerProcess):
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(member.channel)  # its pidfd says the rest

    def _ended(self, member: ChannelEnd) -> None:
        self._forget(member)
        report = member.report
        code = member.exit_code
        end = Exit(
            code, member.describe_exit(), member.why_not_ready(), member.failure,
            reported=report is not None,
            served=report.served if report else 0, forced=report.forced if report else 0,
            lost=report.lost if report else 0, requests=member.requests,
        )  # fmt: skip
        self.machine.exited(member.pid, end, time.monotonic())

    def _register(self, member: ChannelEnd) -> None:
        self.members[member.pid] = member
        if self.metrics is not None and isinstance(member, InProcessServer):
            self.metrics.attach(member.pid, member.current_meters)
        self.selector.register(member.channel, selectors.EVENT_READ, member)
        pidfd = getattr(member, "pidfd", None)
        if pidfd is not None:
            self.selector.register(pidfd, selectors.EVENT_READ, member)

    def _forget(self, member: ChannelEnd) -> None:
        del self.members[member.pid]
        if self.metrics is not None:
            self.metrics.retire(member.pid)  # its counters outlive it
        for fileobj in (member.channel, getattr(member, "pidfd", None)):
            if fileobj is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(fileobj)
        if isinstance(member, WorkerProcess) and member.seat and self.accept_table is not None:
            self.accept_table.release(member.seat[1])  # peers stop deferring to it
        member.close()

    def _connections(self) -> int:
        """Connections summed over the members (read by control threads)."""
        total = 0
        for member in list(self.members.values()):
            if isinstance(member, InProcessServer):
                total += member.live_connections
            else:
                total += member.active
        return total

    # -- the machine's effects ---------------------------------------------------------------

    def spawn(self, generation: int, spare: bool = False) -> int | None:
        limit = self.settings.max_requests
        if limit:
            limit += random.randint(0, self.settings.max_requests_jitter)
        table = self.accept_table
        slot = table.take() if table is not None else None
        seat = (table.fileno(), slot) if table is not None and slot is not None else None
        try:
            fds = [listener.fileno() for listener in self.listeners]
            worker = WorkerProcess(fds, generation, limit or None, spare, seat)
        except OSError as exc:
            log.error("cannot start a worker: %s", exc)
            if table is not None and slot is not None:
                table.release(slot)
            return None
        self._register(worker)
        log.info(
            "started worker pid %d (generation %d)%s", worker.pid, generation,
            ", a spare standing by for --max-requests" if spare else "",
        )  # fmt: skip
        return worker.pid

    def send(self, key: int, *words: object) -> None:
        member = self.members.get(key)
        if member is None:
            return
        seat = member.seat if isinstance(member, WorkerProcess) else None
        if words[:1] == ("STOP",) and seat is not None and self.accept_table is not None:
            # Its peers stop leaving clients to it now, even if it never reads this (frozen).
            self.accept_table.write(seat[1], IDLE)
        member.send(*words)

    def kill(self, key: int, signum: int) -> None:
        member = self.members.get(key)
        if member is not None:
            member.kill(signum)

    def abandon(self, key: int) -> None:
        member = self.members.get(key)
        if not isinstance(member, WorkerProcess):
            return
        member.kill(signal.SIGKILL)
        if member.exit_code is None:
            with contextlib.suppress(ChildProcessError):
                member.set_exit(os.waitpid(member.pid, 0)[1])
        self._forget(member)

    def filter_listener(self) -> None:
        for listener in self.listeners:
            if listener.family == socket.AF_UNIX:  # no filter: its file goes instead
                with contextlib.suppress(OSError):
                    unlink_socket_file(listener.getsockname())
            else:
                attach_drop_all_filter(listener)

    def shut_listener(self) -> None:
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)

    def notify(self, *fields: str) -> None:
        self.notifier.send(*fields)

    def stop_alone(self, signum: int) -> int:
        assert self._stop_alone is not None, "only this process's server can stop alone"
        return self._stop_alone(signum)

    # -- the end -------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill and reap every worker left, release everything (the end of ``run``)."""
        for member in list(self.members.values()):
            if isinstance(member, WorkerProcess):
                member.kill(signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(member.pid, 0)
            member.close()
        self.members.clear()
        self.selector.close()
        self.wake_w.close()
        self.wake_r.close()
        for listener in self.listeners:
            listener.close()
        if self.accept_table is not None:
            self.accept_table.close()
