"""systemd's two protocols: socket activation and readiness notification.

Why this module exists: a native daemon tells its supervisor when it is ready,
reloading and stopping, and can serve on a socket someone else bound (systemd
socket units, and graceserve's own graceful restart, which hands the listener
to the new process this way).  Both protocols are a few environment variables
and datagrams, so they are implemented here on the stdlib, and both are no-ops
when the variables are absent.

- Activation: ``LISTEN_PID`` equal to our pid and ``LISTEN_FDS`` = N >= 1 mean
  file descriptors 3 to 3+N-1 are listening sockets for us (a socket unit with
  several ``ListenStream=``): one server listens on all of them.  The variables are removed
  once read, so children do not mistake it for theirs.
- Notification: ``NOTIFY_SOCKET`` names a Unix datagram socket (``@`` for the
  abstract namespace); each message is ``KEY=VALUE`` lines.  Sending never
  raises: a supervisor that went away must not stop the drain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import MutableMapping

from graceserve.errors import StartupError

__all__ = ["LISTEN_FDS_START", "Notifier", "inherited_listeners"]

log = logging.getLogger("graceserve")

LISTEN_FDS_START = 3
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def inherited_listeners(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The listening sockets passed to us by socket activation, in order; [] if none.

    Consumes the activation variables.  StartupError if one of the descriptors
    is not a socket (a unit that passes something else).
    """
    pid, count = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    for name in _ACTIVATION_VARIABLES:
        environ.pop(name, None)
    if pid != str(os.getpid()) or not count.isdigit() or int(count) < 1:
        return []
    sockets: list[socket.socket] = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            for taken in sockets:
                taken.detach()  # not closed: they are systemd's too
            raise StartupError(
                f"socket activation: fd {fd} of LISTEN_FDS={count} is not a socket "
                f"({exc.strerror or exc})"
            ) from None
        sock.set_inheritable(False)
        sockets.append(sock)
    return sockets


class Notifier:
    """Sends ``sd_notify`` messages to ``NOTIFY_SOCKET`` (or nowhere).  Thread-safe."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._target = address or None
        self._sock: socket.socket | None = None
        if self._target is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)  # a supervisor that stops reading must not stop us

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """The notifier for ``NOTIFY_SOCKET``; the variable is kept for nothing else."""
        return cls(environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """Send one message made of ``KEY=VALUE`` fields; never raises."""
        if self._sock is None or self._target is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._target)
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
