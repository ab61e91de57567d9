"""One worker process, seen from the supervisor: start it, talk to it, reap it.

Why this module exists: forking a process that runs threads is unsafe (the
child inherits locks held by threads that do not exist there; Python 3.12+
warns), and the supervisor runs the signal relay's thread.  So a worker is a
fresh interpreter started with ``posix_spawn`` and the same argv, with two
inherited descriptors:

- fd 3: the shared listening socket (every worker accepts from its queue);
- fd 4: this worker's end of a private ``SOCK_SEQPACKET`` socketpair, the
  channel.  Each message is one datagram of space-separated ASCII words;
- fd 5 on: the further listening sockets (``--bind`` given again), as many as
  ``GRACESERVE_WORKER_LISTENERS`` says in all (absent: 1).  The first two
  numbers stay where they were, so a worker and a supervisor of different
  versions (a HUP after an upgrade) still find the first listener and the channel;
- after the listeners: the supervisor's accept table (``graceserve.process.balance``),
  its descriptor and this worker's slot in ``GRACESERVE_WORKER_BALANCE`` (absent:
  the worker accepts without looking at its peers).

``GRACESERVE_WORKER`` (the generation number) tells the new interpreter it is
a worker, ``GRACESERVE_WORKER_MAX_REQUESTS`` its own ``--max-requests`` (jitter
included), ``GRACESERVE_WORKER_STANDBY=1`` that it is a spare: it imports the
target, says ``STANDBY`` and waits for ``GO`` before it serves.  Worker to
supervisor: ``READY http|tcp`` (sent before it accepts:
a worker that never said READY never served), ``STATS requests active
loop_age``, ``METRICS ...`` (with ``--metrics-bind``: its meters, as
``graceserve.core.metering.Meters.to_words`` writes them; after READY, with each
STATS and before REPORT), ``RECYCLE requests`` (it reached its limit, sent by the request
that did), ``CLOSED`` (stopped accepting), ``REPORT code served forced
remaining lost elapsed requests``, ``FAILED reason``.  Supervisor to worker:
``GO`` (a spare), ``LAMEDUCK``, ``STOP shared|sweep DEADLINE`` (a ``time.monotonic()`` instant:
the clock is system-wide, so one deadline holds for every process), ``FORCE
SIGNUM``.  An end of file on the channel means the other side is gone.

A ``pidfd`` per worker makes its exit a readable descriptor in the
supervisor's selector.  Threading contract: the supervisor's thread only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

from graceserve.core.metering import Meters
from graceserve.process.balance import BALANCE_VARIABLE

__all__ = [
    "CHANNEL_FD",
    "LIMIT_VARIABLE",
    "LISTENERS_VARIABLE",
    "LISTENER_FD",
    "MORE_LISTENERS_FD",
    "STANDBY_VARIABLE",
    "WORKER_VARIABLE",
    "ChannelEnd",
    "WorkerProcess",
    "WorkerReport",
    "inherited_listener_fds",
]

WORKER_VARIABLE = "GRACESERVE_WORKER"
LIMIT_VARIABLE = "GRACESERVE_WORKER_MAX_REQUESTS"
STANDBY_VARIABLE = "GRACESERVE_WORKER_STANDBY"
LISTENERS_VARIABLE = "GRACESERVE_WORKER_LISTENERS"
LISTENER_FD = 3
CHANNEL_FD = 4
MORE_LISTENERS_FD = 5
_CLEARED = (
    "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", WORKER_VARIABLE,
    LIMIT_VARIABLE, STANDBY_VARIABLE, LISTENERS_VARIABLE, BALANCE_VARIABLE,
)  # fmt: skip


@dataclass
class WorkerReport:
    """What a worker said about its drain (or what its exit implies)."""

    code: int = 0
    served: int = 0
    forced: int = 0
    remaining: int = 0
    lost: int = 0
    elapsed: float = 0.0
    requests: int = 0


class ChannelEnd:
    """The supervisor's end of a member's channel, and what the member last said.

    ``pid`` is the member's key (a worker's pid; this process's own for its server).
    """

    pid: int
    channel: socket.socket

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.scheme = "http"
        self.requests = 0
        self.active = 0
        self.meters: Meters | None = None  # its last METRICS (--metrics-bind)
        self.progress_at = time.monotonic()  # the serving loop's last sign of life
        self.report: WorkerReport | None = None
        self.failure = ""
        self.exit_code: int | None = None  # os.waitstatus_to_exitcode: -N for signal N

    def __repr__(self) -> str:
        return f"worker {self.pid} (generation {self.generation})"

    def send(self, *words: object) -> None:
        """Send one message; a worker that is gone is noticed through its pidfd."""
        with contextlib.suppress(OSError):
            self.channel.send(" ".join(str(word) for word in words).encode())

    def receive(self) -> list[str]:
        """Read every waiting message and update our view; the kinds received.

        ``EOF`` is among them when the worker closed its end.
        """
        kinds: list[str] = []
        while True:
            try:
                data = self.channel.recv(4096)
            except (BlockingIOError, InterruptedError):
                return kinds
            except OSError:
                data = b""
            if not data:
                kinds.append("EOF")
                return kinds
            words = data.decode("ascii", "replace").split(" ")
            kinds.append(words[0])
            self._read(words)

    def _read(self, words: list[str]) -> None:
        kind, args = words[0], words[1:]
        now = time.monotonic()
        try:
            if kind == "READY":
                self.scheme = args[0] if args else "http"
                self.progress_at = now
            elif kind == "STATS":
                self.requests, self.active = int(args[0]), int(args[1])
                self.progress_at = max(self.progress_at, now - float(args[2]))
            elif kind == "METRICS":
                self.meters = Meters.from_words(args)
            elif kind == "RECYCLE":
                self.requests = max(self.requests, int(args[0]))
            elif kind == "REPORT":
                code, served, forced, remaining, lost = (int(word) for word in args[:5])
                self.report = WorkerReport(
                    code, served, forced, remaining, lost, float(args[5]), int(args[6])
                )
                self.requests = self.report.requests
                self.active = 0
            elif kind == "FAILED":
                self.failure = " ".join(args)
        except (IndexError, ValueError):
            pass  # a garbled message changes nothing

    def reap(self) -> bool:
        """True once the member has ended (its exit code is then known)."""
        raise NotImplementedError

    def kill(self, signum: int) -> None:
        """Send ``signum`` to the member, if that means anything for it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the channel (and whatever else the member holds)."""
        raise NotImplementedError

    def describe_exit(self) -> str:
        """``exit code N`` or ``killed by SIGNAME``."""
        code = self.exit_code
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def why_not_ready(self) -> str:
        """Why it never became ready: ``pid N exited with status 3 before it was ready:
        REASON`` (the reason it sent, if any)."""
        code = self.exit_code
        how = f"status {code}" if code is not None and code >= 0 else self.describe_exit()
        text = f"pid {self.pid} exited with {how} before it was ready"
        return f"{text}: {self.failure}" if self.failure else text


class WorkerProcess(ChannelEnd):
    """A worker process: its pid, channel, pidfd and what it last reported."""

    def __init__(
        self,
        listener_fds: list[int],
        generation: int,
        max_requests: int | None,
        standby: bool = False,
        seat: tuple[int, int] | None = None,
    ) -> None:
        """``seat``: the accept table's descriptor and this worker's slot in it."""
        super().__init__(generation)
        self.seat = seat
        self.channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.pid = _spawn(
                listener_fds, child_end.fileno(), generation, max_requests, standby, seat
            )
        except BaseException:
            self.channel.close()
            raise
        finally:
            child_end.close()
        self.channel.setblocking(False)
        self.pidfd: int | None = os.pidfd_open(self.pid)

    # -- the process ------------------------------------------------------------

    def reap(self) -> bool:
        """Collect the exit status if it has exited; True once it has."""
        if self.exit_code is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: set_exit did it
            return self.exit_code is not None
        if pid == 0:
            return False
        self.set_exit(status)
        return True

    def set_exit(self, status: int) -> None:
        """Record the wait status (whoever called ``waitpid`` for it).  Its last words
        (REPORT, FAILED) may still wait in the channel: ``receive`` them first."""
        self.exit_code = os.waitstatus_to_exitcode(status)

    def kill(self, signum: int) -> None:
        """Send ``signum`` to this worker (only while it has not been reaped)."""
        if self.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def close(self) -> None:
        """Release the channel and the pidfd."""
        self.channel.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


def _spawn(
    listener_fds: list[int], channel_fd: int, generation: int, max_requests: int | None,
    standby: bool, seat: tuple[int, int] | None,
) -> int:  # fmt: skip
    """posix_spawn this interpreter with our argv; the first listener on fd 3, the
    channel on 4, the further listeners from 5 on, then the accept table."""
    env = {key: value for key, value in os.environ.items() if key not in _CLEARED}
    env[WORKER_VARIABLE] = str(generation)
    if len(listener_fds) > 1:
        env[LISTENERS_VARIABLE] = str(len(listener_fds))
    if max_requests:
        env[LIMIT_VARIABLE] = str(max_requests)
    if standby:
        env[STANDBY_VARIABLE] = "1"
    first, *more = listener_fds
    sources = [first, channel_fd, *more]
    targets = [LISTENER_FD, CHANNEL_FD, *range(MORE_LISTENERS_FD, MORE_LISTENERS_FD + len(more))]
    if seat is not None:
        table_fd, slot = seat
        sources.append(table_fd)
        targets.append(MORE_LISTENERS_FD + len(more))
        env[BALANCE_VARIABLE] = f"{targets[-1]} {slot}"
    spare = max(*sources, *targets) + 1  # via spare numbers: no source is overwritten
    actions: list[tuple[int, int, int] | tuple[int, int]] = [
        (os.POSIX_SPAWN_DUP2, source, spare + i) for i, source in enumerate(sources)
    ]
    actions += [(os.POSIX_SPAWN_DUP2, spare + i, target) for i, target in enumerate(targets)]
    actions += [(os.POSIX_SPAWN_CLOSE, spare + i) for i in range(len(sources))]
    argv = [sys.executable, *sys.orig_argv[1:]]
    return os.posix_spawn(sys.executable, argv, env, file_actions=actions)


def inherited_listener_fds(environ: dict[str, str] | None = None) -> list[int]:
    """A worker's listening descriptors, as ``_spawn`` placed them (consumes the variable)."""
    count = (os.environ if environ is None else environ).pop(LISTENERS_VARIABLE, "1")
    total = int(count) if count.isdigit() and int(count) >= 1 else 1
    return [LISTENER_FD, *range(MORE_LISTENERS_FD, MORE_LISTENERS_FD + total - 1)]
