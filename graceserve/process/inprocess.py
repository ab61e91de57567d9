"""This process's own server, as a member of the supervisor (one-process mode).

Why this module exists: with ``--workers 1`` the process serves by itself until a
reload (or its ``--max-requests``) hands the serving to a worker process; from
then on it only supervises.  So that one state machine (``graceserve.process.machine``)
decides for both modes, this process's server looks to the supervisor like a
worker: same key type (our pid), same channel grammar (``CLOSED``, ``REPORT``,
``RECYCLE``, then the end of the channel when it has ended), same commands
(``LAMEDUCK``, ``STOP shared|sweep DEADLINE``, ``FORCE N``).  A STOP drains it in
a thread (``run_drain``, like a worker's drain), so the supervisor's loop goes
on, and its drain report counts in the exit code like any worker's.  It cannot
be killed; its drain ends by its deadline (the grace is the whole budget).

While it is the only member the stop is the one-process stop on the main thread
(``Effects.stop_alone``, in ``graceserve.process.runner``), not this.

Threading contract: ``send``, ``receive``, ``reap``, ``close`` on the
supervisor's thread; ``count`` from any handler thread; ``current_meters`` from any
thread; the drain thread writes its end of the channel.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time

from graceserve.core.metering import Meters, RequestMeter
from graceserve.core.server import GracefulTCPServer
from graceserve.core.serverhooks import ServerHooks
from graceserve.core.stopping import DrainHooks, run_drain
from graceserve.http.server import GracefulHTTPServer
from graceserve.process.metrics import connection_gauges
from graceserve.process.workerproc import ChannelEnd

__all__ = ["InProcessServer"]

log = logging.getLogger("graceserve")


class InProcessServer(ChannelEnd):
    """``server``, served by this process, seen as a supervisor's member."""

    def __init__(
        self,
        server: GracefulTCPServer,
        shared_listener: bool,
        max_requests: int | None = None,
        meter: RequestMeter | None = None,
    ) -> None:
        super().__init__(generation=1)
        self.pid = os.getpid()
        self.server = server
        self.shared_listener = shared_listener  # systemd keeps the listener: never shut it
        self.max_requests = max_requests
        self.meter = meter  # --metrics-bind: each request's status and duration
        self.channel, self._end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.channel.setblocking(False)
        self.pidfd: int | None = None
        self._lock = threading.Lock()  # guards _end's sends and _ended
        self._ended = False
        self._requests = itertools.count(1)
        self._drain: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"this process's server (generation {self.generation})"

    @property
    def live_connections(self) -> int:
        return self.server.active_connections

    # -- what the supervisor says ---------------------------------------------------

    def send(self, *words: object) -> None:
        """Obey one command (see the module docstring)."""
        kind = str(words[0])
        if kind == "LAMEDUCK":
            self.server.announce_stop()
        elif kind == "STOP" and len(words) == 3 and self._drain is None:
            self._drain = threading.Thread(
                target=self._run_drain, args=(str(words[1]), float(str(words[2]))),
                name="graceserve-drain", daemon=True,
            )  # fmt: skip
            self._drain.start()
        elif kind == "FORCE":
            self.server.force_close()

    def kill(self, signum: int) -> None:
        """Nothing: this process's server is never killed (its drain has a deadline)."""

    def count(self) -> None:
        """One request served (a handler thread); at ``--max-requests``, say so once."""
        served = next(self._requests)
        if served == self.max_requests:
            self._say("RECYCLE", served)

    def hooks(self) -> ServerHooks:
        """Hooks for our server that ``count`` each request it finishes (``--max-requests``)
        and meter it (``--metrics-bind``)."""
        return _Counting(self)

    def current_meters(self) -> Meters:
        """Our server's meters now (``--metrics-bind``; read by the endpoint's threads)."""
        meters = self.meter.snapshot() if self.meter is not None else Meters()
        meters.http = isinstance(self.server, GracefulHTTPServer)
        return connection_gauges(self.server, meters)

    # -- its end ----------------------------------------------------------------------

    def reap(self) -> bool:
        """True once the drain has ended and said its report."""
        if self._drain is None or self._drain.is_alive():
            return False
        if self.exit_code is None:
            self.exit_code = self.report.code if self.report is not None else 0
        return True

    def close(self) -> None:
        self.channel.close()
        with self._lock:
            self._ended = True
            self._end.close()

    def _run_drain(self, mode: str, deadline: float) -> None:
        hooks = _Hooks(self)
        report, _ = run_drain(
            self.server, max(deadline - time.monotonic(), 0.0), hooks,
            shared_listener=self.shared_listener or mode != "sweep",
        )  # fmt: skip
        log.info(
            "this process's drain: %d served during the drain, %d cut, %.3fs",
            report.served_during_drain, report.forced, report.elapsed,
        )  # fmt: skip
        code = 0 if report.clean else 4
        self._say(
            "REPORT", code, report.served_during_drain, report.forced, report.remaining,
            report.lost, f"{report.elapsed:.3f}", 0,
        )  # fmt: skip
        with self._lock:
            self._ended = True
            with contextlib.suppress(OSError):
                self._end.shutdown(socket.SHUT_RDWR)  # the supervisor reads the end

    def _say(self, *words: object) -> None:
        with self._lock:
            if self._ended:
                return
            with contextlib.suppress(OSError):
                self._end.send(" ".join(str(word) for word in words).encode())


class _Counting(ServerHooks):
    """Our server's hooks: each finished request counts towards ``--max-requests``."""

    def __init__(self, member: InProcessServer) -> None:
        self.member = member
        self.record = member.meter.record if member.meter is not None else None
        self.counting = bool(member.max_requests)

    def request_done(self, status: int = 0, seconds: float = 0.0) -> None:
        if self.record is not None:
            self.record(status, seconds)
        if self.counting:
            self.member.count()


class _Hooks(DrainHooks[GracefulTCPServer]):
    """This process stopped accepting: tell the supervisor, say so."""

    def __init__(self, member: InProcessServer) -> None:
        self.member = member

    def started(self, server: GracefulTCPServer, deadline: float | None) -> None:
        log.info(
            "this process stopped accepting: draining its %d connections; new connections "
            "go to the worker processes", server.draining_from,
            extra={"event": "drain_start", "connections": server.draining_from},
        )  # fmt: skip
        self.member._say("CLOSED")
