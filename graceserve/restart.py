"""Graceful restart: a fresh copy of this process takes over the listener.

Why this module exists: ``apachectl graceful`` restarts without refusing a
single client because the listening socket is never closed; it passes from
the old process to the new one.  Here the new process is started with the same
argv (so new code and configuration are picked up), receives the listener as
systemd socket activation would (fd 3, ``LISTEN_FDS=1``, ``LISTEN_PID`` set to
its own pid by a one-line ``sh`` trampoline), and the locked pidfile as fd 4.
It reports readiness over a private datagram socket, whose sender credentials
are checked.  Only then does the old process hand over the pidfile and drain
itself; if the new one dies or stays silent, the old one keeps serving.

Both processes accept from the same listen queue while they overlap, so no
connection is refused or reset at any point.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

__all__ = [
    "CONTROL_VARIABLE",
    "PIDFILE_FD_VARIABLE",
    "RESTART_SOCKET_VARIABLE",
    "SHARED_LISTENER_VARIABLE",
    "SOCKET_FILE_VARIABLE",
    "Successor",
]

RESTART_SOCKET_VARIABLE = "GRACESERVE_RESTART_SOCKET"
PIDFILE_FD_VARIABLE = "GRACESERVE_PIDFILE_FD"
SOCKET_FILE_VARIABLE = "GRACESERVE_OWNS_SOCKET_FILE"
SHARED_LISTENER_VARIABLE = "GRACESERVE_SHARED_LISTENER"  # systemd holds it too
CONTROL_VARIABLE = "GRACESERVE_CONTROL"  # "generation,reloads" of the successor
_LISTENER_FD = 3
_PIDFILE_FD = 4
_TRAMPOLINE = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'
_UCRED = struct.Struct("iII")  # pid, uid, gid


class Successor:
    """The process started to replace us.  Use from the controller thread only."""

    def __init__(
        self,
        listener_fd: int,
        pidfile_fd: int | None,
        notify_socket: str | None,
        owns_socket_file: bool = False,
        shared_listener: bool = False,
    ) -> None:
        self._owns_socket_file = owns_socket_file
        self._shared_listener = shared_listener
        self._listener_fd = listener_fd
        self._pidfile_fd = pidfile_fd
        self._notify_socket = notify_socket
        self._inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inbox.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._inbox.setblocking(False)
        self._name = f"graceserve-restart-{os.getpid()}-{secrets.token_hex(8)}"
        self._inbox.bind("\0" + self._name)
        self.pid = 0
        self.exit_status: int | None = None
        self.environment: dict[str, str] = {}  # more variables for the new process

    def start(self) -> int:
        """Start the new process; its pid."""
        env = dict(os.environ)
        env.update(self.environment)
        env.pop("LISTEN_PID", None)
        env["LISTEN_FDS"] = "1"
        env[RESTART_SOCKET_VARIABLE] = "@" + self._name
        env.pop(SOCKET_FILE_VARIABLE, None)
        if self._owns_socket_file:  # a unix socket file we bound: the successor removes it
            env[SOCKET_FILE_VARIABLE] = "1"
        env.pop(SHARED_LISTENER_VARIABLE, None)
        if self._shared_listener:  # socket activation: systemd keeps a copy after us both
            env[SHARED_LISTENER_VARIABLE] = "1"
        if self._notify_socket:
            env["NOTIFY_SOCKET"] = self._notify_socket
        # Move the descriptors into place via spare numbers, so neither overwrites the other.
        spare = max(self._listener_fd, self._pidfile_fd or 0) + 1
        actions: list[tuple[int, int, int] | tuple[int, int]] = [
            (os.POSIX_SPAWN_DUP2, self._listener_fd, spare)
        ]
        if self._pidfile_fd is not None:
            env[PIDFILE_FD_VARIABLE] = str(_PIDFILE_FD)
            actions.append((os.POSIX_SPAWN_DUP2, self._pidfile_fd, spare + 1))
            actions += [(os.POSIX_SPAWN_DUP2, spare + 1, _PIDFILE_FD)]
        actions += [(os.POSIX_SPAWN_DUP2, spare, _LISTENER_FD), (os.POSIX_SPAWN_CLOSE, spare)]
        if self._pidfile_fd is not None:
            actions.append((os.POSIX_SPAWN_CLOSE, spare + 1))
        else:
            env.pop(PIDFILE_FD_VARIABLE, None)
        argv = ["/bin/sh", "-c", _TRAMPOLINE, "graceserve", sys.executable, *sys.orig_argv[1:]]
        self.pid = os.posix_spawn("/bin/sh", argv, env, file_actions=actions)
        return self.pid

    def wait_ready(self, deadline: float, interrupted: Callable[[], bool]) -> str | None:
        """Wait for the new process to report READY=1; None if it did, else why not.

        Gives up at ``deadline`` (a ``time.monotonic()`` instant), when the
        process exits, or as soon as ``interrupted()`` is true.
        """
        while True:
            if self._received_ready():
                return None
            if self._exited():
                return f"pid {self.pid} exited with status {self.exit_status} before it was ready"
            if interrupted():
                return "interrupted by a signal"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"pid {self.pid} was not ready in time"
            select.select([self._inbox], [], [], min(remaining, 0.05))

    def abandon(self) -> None:
        """Kill the new process (it never became ready) and reap it."""
        if self.pid and self.exit_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self.close()

    def close(self) -> None:
        """Release the private socket."""
        self._inbox.close()

    def _received_ready(self) -> bool:
        while True:
            try:
                data, ancillary, _flags, _addr = self._inbox.recvmsg(
                    4096, socket.CMSG_SPACE(_UCRED.size)
                )
            except BlockingIOError:
                return False
            sender = _sender_pid(ancillary)
            if sender == self.pid and b"READY=1" in data.split(b"\n"):
                return True

    def _exited(self) -> bool:
        if self.exit_status is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.exit_status = -1
            return True
        if pid == 0:
            return False
        self.exit_status = os.waitstatus_to_exitcode(status)
        return True


def _sender_pid(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = _UCRED.unpack(data[: _UCRED.size])
            return int(pid)
    return 0
