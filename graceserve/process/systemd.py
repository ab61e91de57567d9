"""systemd's two protocols: socket activation and readiness notification.

Why this module exists: a native daemon tells its supervisor when it is ready,
reloading and stopping, and can serve on a socket someone else bound (systemd
socket units, and graceserve's own graceful restart, which hands the listener
to the new process this way).  Both protocols are a few environment variables
and datagrams, so they are implemented here on the stdlib, and both are no-ops
when the variables are absent.

- Activation: ``LISTEN_PID`` equal to our pid and ``LISTEN_FDS`` >= 1 mean
  file descriptor 3 is a listening socket for us.  The variables are removed
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

__all__ = ["LISTEN_FDS_START", "Notifier", "inherited_listener"]

log = logging.getLogger("graceserve")

LISTEN_FDS_START = 3
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def inherited_listener(environ: MutableMapping[str, str] = os.environ) -> socket.socket | None:
    """The listening socket passed to us by socket activation, or None.

    Consumes the activation variables.  Only the first of several sockets is
    used (the others are left open, and a line is logged).
    """
    pid, count = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    for name in _ACTIVATION_VARIABLES:
        environ.pop(name, None)
    if pid != str(os.getpid()) or not count.isdigit() or int(count) < 1:
        return None
    if int(count) > 1:
        log.warning("socket activation passed %s sockets; serving on the first only", count)
    sock = socket.socket(fileno=LISTEN_FDS_START)
    sock.set_inheritable(False)
    return sock


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
