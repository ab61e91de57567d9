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
from graceserve.process.dropping import give_unix_sockets
from graceserve.process.listener import check_http_options, make_listener, remove_unix_socket
from graceserve.process.metrics import MetricsBoard
from graceserve.process.metricsserver import MetricsEndpoint, open_metrics
from graceserve.process.pidfile import PidFile
from graceserve.process.privileges import Identity
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
    identity: Identity | None = None,
) -> int:
    """Bind (or adopt ``inherited``), run the workers until a stop; the exit code.

    ``handler`` is the loaded target with ``--preload``, else its name (a
    string).  Either way the listener is bound by a server that serves nothing
    (``make_listener``): the HTTP options (TLS, access log) are the workers', and
    are only checked here, so that a bad one fails the start at once (exit 3).

    With ``identity`` (``--user``) this process stays root (it removes the
    pidfile and the sockets at exit, and never runs app code: ``--preload`` is
    refused then); a ``unix:`` socket is given to the user, and each worker
    switches to it before it imports the target (``graceserve.process.worker``).
    """
    check_http_options(settings, None if isinstance(handler, str) else handler)
    endpoint = open_metrics(settings)  # --metrics-bind: bound first, closed last
    try:
        return _run(handler, settings, relay, notifier, inherited, pidfile, endpoint, identity)
    finally:
        if endpoint is not None:
            endpoint.close()


def _run(
    handler: Any,
    settings: Settings,
    relay: SignalRelay,
    notifier: Notifier,
    inherited: list[socket.socket],
    pidfile: PidFile | None,
    endpoint: MetricsEndpoint | None,
    identity: Identity | None,
) -> int:
    holder = make_listener(settings, inherited)
    holder.block_on_close = False  # it never served: nothing to drain
    try:
        if identity is not None:
            if not inherited:
                give_unix_sockets(identity, holder)
            log.info("workers run as %s; this supervisor stays root", identity.describe())
        listeners = [listener.dup() for listener in holder.listeners]
        log_banner(settings, holder, handler, supervisor=True)
        status = ServerStatus(
            workers=settings.workers, grace=settings.grace, drain_delay=settings.drain_delay,
            start_timeout=settings.start_timeout,
        )  # fmt: skip
        status.update(addresses=runstatus.addresses(holder))
        control = runstatus.open_control(holder, pidfile, status)
        board = None
        if endpoint is not None:
            board = MetricsBoard(status)
            endpoint.start(board.render)
        try:
            supervisor = Supervisor(
                settings, listeners, relay, notifier, bool(inherited), status, metrics=board
            )
            return supervisor.run()
        finally:
            if control is not None:
                control.close()
    finally:
        holder.server_close()
        if not inherited:
            remove_unix_socket(holder)
