"""``--workers N`` (N > 1): bind, then hand the listener to a supervisor.

Why this module exists: the supervisor never serves, so it has no need to
import the target (unless ``--preload`` asks it to fail fast): it only binds
the listener (or adopts systemd's), exactly where and how a single process
would, and passes it to its workers.  The server object made for binding only
holds the socket; it never accepts, and takes none of the HTTP options (they
are the workers'; they are checked here so that a bad one fails at once).

Threading contract: the main thread only.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from graceserve.process import runstatus
from graceserve.process.banner import log_banner
from graceserve.process.control import ServerStatus
from graceserve.process.listener import check_http_options, make_listener, remove_unix_socket
from graceserve.process.pidfile import PidFile
from graceserve.process.signals import SignalRelay
from graceserve.process.supervisor import Supervisor
from graceserve.process.systemd import Notifier
from graceserve.settings import Settings

__all__ = ["run_supervised"]

log = logging.getLogger("graceserve")


def run_supervised(
    handler: Any,
    settings: Settings,
    relay: SignalRelay,
    notifier: Notifier,
    inherited: list[socket.socket],
    pidfile: PidFile | None = None,
) -> int:
    """Bind (or adopt ``inherited``), run the workers until a stop; the exit code.

    ``handler`` is the loaded target with ``--preload``, else its name (a
    string).  Either way the listener is bound by a server that serves nothing
    (``make_listener``): the HTTP options (TLS, access log) are the workers', and
    are only checked here, so that a bad one fails the start at once (exit 3).
    """
    check_http_options(settings, None if isinstance(handler, str) else handler)
    holder = make_listener(settings, inherited)
    holder.block_on_close = False  # it never served: nothing to drain
    try:
        listeners = [listener.dup() for listener in holder.listeners]
        log_banner(settings, holder, handler, supervisor=True)
        status = ServerStatus(
            workers=settings.workers, grace=settings.grace, drain_delay=settings.drain_delay,
            start_timeout=settings.start_timeout,
        )  # fmt: skip
        status.update(addresses=runstatus.addresses(holder))
        control = runstatus.open_control(holder, pidfile, status)
        try:
            supervisor = Supervisor(settings, listeners, relay, notifier, bool(inherited), status)
            return supervisor.run()
        finally:
            if control is not None:
                control.close()
    finally:
        holder.server_close()
        if not inherited:
            remove_unix_socket(holder)
