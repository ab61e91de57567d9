"""The runner's side of the control channel: what it publishes, and where.

Why this module exists: ``graceserve.process.control`` is a reusable socket and status record;
the process runner and the supervisor of workers each make a status, open the socket
next to their pidfile, and publish a summary when the run is over.  Those few
decisions live here so the runner's own sequence stays readable.

Threading: every function runs on the controller (main) thread.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from graceserve.core.connection import format_address
from graceserve.core.drain import DrainReport
from graceserve.errors import StartupError
from graceserve.process.control import ControlServer, ServerStatus, control_path
from graceserve.settings import Settings

if TYPE_CHECKING:
    from graceserve.core.server import GracefulTCPServer
    from graceserve.process.pidfile import PidFile

__all__ = ["addresses", "make_status", "open_control", "summary"]

log = logging.getLogger("graceserve")


def make_status(server: GracefulTCPServer, settings: Settings) -> ServerStatus:
    """The status of a single-process run, generation 1."""
    status = ServerStatus(
        lambda: server.active_connections,
        grace=settings.grace, drain_delay=settings.drain_delay,
    )  # fmt: skip
    status.update(addresses=addresses(server))
    return status


def addresses(server: GracefulTCPServer) -> list[str]:
    """Every address ``server`` listens on, as ``--bind`` takes it (``127.0.0.1:8000``,
    ``[::1]:8000``, ``unix:/run/app.sock``): the status's ``addresses``."""
    return [format_address(address) for address in server.server_addresses]


def open_control(
    server: GracefulTCPServer, pid: PidFile | None, status: ServerStatus
) -> ControlServer | None:
    """The control socket next to the pidfile (none without one); StartupError if it
    cannot be made (the server is closed then)."""
    if pid is None:
        return None
    control = ControlServer(control_path(pid.path), status.snapshot)
    status.subscribe(control.changed)
    try:
        control.start()
    except OSError as exc:
        server.server_close()
        raise StartupError(f"cannot make control socket {control.path}: {exc}") from None
    return control


def summary(report: DrainReport) -> dict[str, Any]:
    """The drain report, as published when the run is over."""
    return {
        "clean": report.clean, "served_during_drain": report.served_during_drain,
        "forced": report.forced, "remaining": report.remaining, "lost": report.lost,
        "elapsed": round(report.elapsed, 3),
    }  # fmt: skip
