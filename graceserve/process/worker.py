"""A worker: a fresh interpreter that serves on the supervisor's listener until told to stop.

Why this module exists: with a supervisor, the decisions (when to stop, who
closes the shared listener, what the deadline is) belong to one process, and
the serving to others.  A worker therefore ignores the stop signals (a Ctrl-C
or systemd's ``KillMode=control-group`` reaches the whole group; the
supervisor alone decides) and obeys its channel (``graceserve.process.workerproc``
describes the messages).  It serves exactly like the single process does, and
drains with the same sequence (``graceserve.stopping.run_drain``), with one
difference: told ``STOP shared``, it stops accepting and closes only its own
copy of the listener, since other workers still accept from the queue; told
``STOP sweep`` (the last worker, once every other one stopped accepting), it
takes the listener out of service for everyone: the drop-all filter, the
sweep of what the kernel queued, ``shutdown``.

With ``--user`` it switches users before it imports the target
(``graceserve.process.privileges``: a worker of a root supervisor drops; one
started by a single process that already dropped is the user already).

It reports readiness (before it accepts: a worker that never said READY never
served, so the supervisor may kill it without breaking a connection), then every
second its counters and the age of its serving loop's last turn
(``--worker-timeout`` reads it), and at the end its drain report.  Both the turn
and each finished request reach it through hooks its server calls
(``graceserve.core.serverhooks``), next to the server's own work: the reaper and
graceserve's request cycle run in a worker exactly as in one process.  The
request that reaches its ``--max-requests`` says ``RECYCLE`` at once, and it
serves on until the supervisor, once a replacement is ready, tells it to stop
accepting.  If the channel reaches its end (the supervisor died), it drains by
itself.  USR1 dumps its stacks; SIGABRT (``--worker-timeout``) dumps them
through ``faulthandler`` before the process dies.

Threading contract: ``run_worker`` on the main thread; a reader thread turns
channel messages into injected signals on the relay.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from graceserve.core.drain import DrainReport
from graceserve.core.metering import RequestMeter
from graceserve.core.server import GracefulTCPServer, format_address
from graceserve.core.serverhooks import ServerHooks
from graceserve.core.stopping import DrainHooks, run_drain
from graceserve.errors import EXIT_CUT, EXIT_OK, StartupError, exit_code_for_signal
from graceserve.http.server import GracefulHTTPServer
from graceserve.process.balance import Seat, seat_from_environment
from graceserve.process.listener import make_server
from graceserve.process.metrics import connection_gauges
from graceserve.process.privileges import drop, resolve
from graceserve.process.readiness import listen_url, ready_line
from graceserve.process.signals import STOP_SIGNALS, WORKER_SIGNALS, SignalRelay
from graceserve.process.target import load_target
from graceserve.process.workerproc import CHANNEL_FD, inherited_listener_fds
from graceserve.settings import Settings

__all__ = ["run_worker"]

log = logging.getLogger("graceserve")

STATS_INTERVAL = 1.0


def run_worker(
    handler: Any,
    settings: Settings,
    generation: str,
    ignore_signals_after: bool = False,
    standby: bool = False,
) -> int:
    """Serve as a worker of generation ``generation``; the exit code.  Main thread only.

    ``standby``: a spare (``--max-requests``): import the target and make the server,
    say ``STANDBY``, and start serving only when the supervisor says ``GO`` (a
    recycled worker's replacement is then ready at once)."""
    channel = socket.socket(fileno=CHANNEL_FD)
    channel.set_inheritable(False)
    listeners = [socket.socket(fileno=fd) for fd in inherited_listener_fds()]
    for listener in listeners:
        listener.set_inheritable(False)
    relay = SignalRelay()
    relay.install()
    for signum in (*STOP_SIGNALS, *WORKER_SIGNALS):  # the supervisor decides
        signal.signal(signum, signal.SIG_IGN)
    faulthandler.enable(all_threads=True)  # SIGABRT (--worker-timeout): stacks first
    seat = seat_from_environment()  # least-connections accepting among the workers
    link = _Link(channel, relay, settings.grace, seat)
    try:
        try:
            identity = resolve(settings.user, settings.group)
            if identity is not None:
                drop(identity)  # before the app is imported; nothing if we are the user
            handler_class = load_target(handler) if isinstance(handler, str) else handler
            server = make_server(handler_class, settings, listeners)
        except StartupError as exc:
            link.send("FAILED", str(exc))
            raise
        if standby and not link.stand_by():
            server.block_on_close = False  # it never served: close our copy of the listener
            server.server_close()
            return EXIT_OK
        meter = RequestMeter() if settings.metrics_bind is not None else None
        return _Worker(server, link, relay, generation, settings.max_requests, meter, seat).run()
    finally:
        link.close()
        relay.restore(ignore=ignore_signals_after)


class _Link:
    """The channel: a reader thread turns commands into injected signals."""

    def __init__(
        self, channel: socket.socket, relay: SignalRelay, grace: float, seat: Seat | None
    ) -> None:
        self.channel = channel
        self.seat = seat  # left as soon as we are told to stop: peers stop deferring to us
        self.relay = relay
        self.grace = grace
        self.mode = "shared"
        self.deadline: float | None = None
        self.server: GracefulTCPServer | None = None
        self.lame_duck = False
        self.forced = 0  # the signal a FORCE named (it may come before any STOP)
        self.go = threading.Event()  # a spare may serve (GO), or the supervisor is gone
        self._closing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="graceserve-channel", daemon=True)
        self._thread.start()

    def send(self, *words: object) -> None:
        with self._lock, contextlib.suppress(OSError):
            self.channel.send(" ".join(str(word) for word in words).encode())

    def attach(self, server: GracefulTCPServer) -> None:
        self.server = server
        if self.lame_duck:
            server.announce_stop()

    def _read(self) -> None:
        while True:
            try:
                data = self.channel.recv(4096)
            except OSError:
                data = b""
            if not data:  # the supervisor is gone: drain by ourselves
                if self.seat is not None:
                    self.seat.leave()
                self.go.set()
                if self.deadline is None and not self._closing:
                    log.warning("worker: the supervisor is gone; draining")
                    self.deadline = time.monotonic() + self.grace
                    self.relay.inject(signal.SIGTERM)
                return
            words = data.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "GO":
                self.go.set()
            elif words[0] == "LAMEDUCK":
                self.lame_duck = True
                if self.server is not None:
                    self.server.announce_stop()
            elif words[0] == "STOP" and len(words) == 3 and self.deadline is None:
                if self.seat is not None:
                    self.seat.leave()
                self.mode = words[1]
                self.deadline = float(words[2])
                self.go.set()  # a spare told to stop never serves
                self.relay.inject(signal.SIGTERM)
            elif words[0] == "FORCE" and len(words) == 2 and words[1].isdigit():
                self.forced = int(words[1])
                self.relay.inject(self.forced)

    def stand_by(self) -> bool:
        """A spare: say STANDBY and wait for GO; False if the supervisor went away."""
        self.send("STANDBY")
        self.go.wait()
        return self.deadline is None

    def close(self) -> None:
        self._closing = True  # our own shutdown below ends the reader: not the supervisor's
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2.0)
        self.channel.close()


class _Worker:
    """The worker's main thread."""

    def __init__(
        self,
        server: GracefulTCPServer,
        link: _Link,
        relay: SignalRelay,
        generation: str,
        max_requests: int | None = None,
        meter: RequestMeter | None = None,
        seat: Seat | None = None,
    ) -> None:
        """``seat``: this worker's place in the supervisor's accept table, which its
        accept loop consults (``graceserve.process.balance``); None: it accepts freely."""
        self.server = server
        self.meter = meter  # --metrics-bind: each request's status and duration
        self.link = link
        self.relay = relay
        self.generation = generation
        self.requests = itertools.count()
        self.served = 0
        self.limit = max_requests or 0
        self.loop_at = time.monotonic()
        self.forced_by = 0
        server.install_hooks(_WorkerServerHooks(self, seat))  # next to the reaper, not instead
        relay.add_listener(server.registry.condition)
        link.attach(server)

    def one_request(self) -> None:
        """A handler thread: one more request (``next`` on a count is atomic)."""
        served = self.served = next(self.requests) + 1
        if served == self.limit:
            self.link.send("RECYCLE", served)

    def beat(self) -> None:
        """The serving thread: its accept loop made a turn (``--worker-timeout`` reads it)."""
        self.loop_at = time.monotonic()

    def stats(self) -> None:
        age = 0.0 if self.server.draining else time.monotonic() - self.loop_at
        self.link.send("STATS", self.served, self.server.active_connections, f"{age:.3f}")
        self.send_meters()

    def send_meters(self) -> None:
        """With ``--metrics-bind``: our meters, for the main process's endpoint."""
        if self.meter is not None:
            meters = connection_gauges(self.server, self.meter.snapshot())
            meters.http = isinstance(self.server, GracefulHTTPServer)
            self.link.send("METRICS", *meters.to_words())

    def run(self) -> int:
        server = self.server
        accept_thread = threading.Thread(
            target=server.serve_forever, args=(0.25,), name="graceserve-accept", daemon=True
        )
        scheme = server.url_scheme if isinstance(server, GracefulHTTPServer) else "tcp"
        grace = self.link.grace
        for address in server.server_addresses:  # one readiness line per listener
            where = listen_url(scheme, format_address(address))
            log.info(
                "%s", ready_line(where, scheme, os.getpid(), grace),
                extra={"event": "ready", "url": where, "protocol": scheme, "grace": grace},
            )  # fmt: skip
        self.link.send("READY", scheme)  # before it accepts (see the module docstring)
        self.send_meters()
        accept_thread.start()
        try:
            force = self._serve_until_stop()
            deadline = self.link.deadline or time.monotonic() + grace
            report, self.forced_by = run_drain(
                server, max(deadline - time.monotonic(), 0.0), _WorkerHooks(self),
                force=force, shared_listener=self.link.mode != "sweep",
            )  # fmt: skip
        finally:
            server.shutdown()
            accept_thread.join(timeout=5.0)
            server.server_close()
        code = self._exit_code(report)
        log.info(
            "worker stopped: %d served during the drain, %d cut, %.3fs, exit code %d",
            report.served_during_drain, report.forced, report.elapsed, code,
            extra={"event": "worker_stopped", "served_during_drain": report.served_during_drain,
                   "forced": report.forced, "elapsed": round(report.elapsed, 3),
                   "exit_code": code, "clean": report.clean},
        )  # fmt: skip
        self.send_meters()  # the last word on its counters: they outlive it
        self.link.send(
            "REPORT", code, report.served_during_drain, report.forced, report.remaining,
            report.lost, f"{report.elapsed:.3f}", self.served,
        )  # fmt: skip
        return code

    def _serve_until_stop(self) -> int:
        """Send counters every second until told to stop; the forcing signal, if any."""
        while True:
            if self.relay.wait(STATS_INTERVAL):
                self.relay.take()
                if self.link.deadline is not None or self.link.forced:
                    return self.link.forced
            self.stats()

    def _exit_code(self, report: DrainReport) -> int:
        if self.forced_by == signal.SIGQUIT:
            cut = report.forced or report.remaining or report.lost
            return exit_code_for_signal(signal.SIGQUIT) if cut else EXIT_OK
        if self.forced_by:
            return exit_code_for_signal(self.forced_by)
        return EXIT_OK if report.clean else EXIT_CUT


class _WorkerServerHooks(ServerHooks):
    """What the server tells the worker: the heartbeat and each finished request; what
    the worker tells the server: whether to leave the next client to another worker."""

    def __init__(self, worker: _Worker, seat: Seat | None = None) -> None:
        self.worker = worker
        self.record = worker.meter.record if worker.meter is not None else None
        self.seat = seat

    def loop_turn(self) -> None:
        self.worker.beat()
        if self.seat is not None:  # seen as its loop starts (not at its first client), and
            self.seat.publish(self.worker.server.active_connections)  # as connections end

    def may_accept(self, held: int) -> bool:
        return self.seat is None or self.seat.may_accept(held)

    def request_done(self, status: int = 0, seconds: float = 0.0) -> None:
        if self.record is not None:
            self.record(status, seconds)
        self.worker.one_request()


class _WorkerHooks(DrainHooks[GracefulTCPServer]):
    progress_interval = STATS_INTERVAL

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker

    def started(self, server: GracefulTCPServer, deadline: float | None) -> None:
        self.worker.link.send("CLOSED")
        log.debug("worker: draining %d connections", server.draining_from)

    def interrupted(self) -> bool:
        return self.worker.relay.pending()

    def take_force(self) -> int:
        self.worker.relay.take()
        return self.worker.link.forced

    def progress(self, server: GracefulTCPServer, deadline: float | None) -> None:
        self.worker.stats()
