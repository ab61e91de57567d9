"""The runner's side of the control channel: what it publishes, and the socket's handover.

Why this module exists: ``graceserve.control`` is a reusable socket and status record;
the process runner (and a supervisor of workers) must decide which generation it
is, open the socket next to its pidfile, and, while a graceful restart still
replaces the process, pass the socket's path on to the successor.  Those few
decisions live here so the runner's own sequence stays readable.

A successor binds its control socket at a temporary path (``control.temporary_path``)
and the process it replaces renames it into place once the successor is ready, just
before it hands over the pidfile: ``ctl`` never finds a socket that is not the
pidfile owner's.  The successor learns its generation and the reload count from
``GRACESERVE_CONTROL`` (``"generation,reloads"``).

Threading: every function runs on the controller (main) thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from .control import ControlServer, ServerStatus, control_path, publish, temporary_path
from .drain import DrainReport
from .errors import StartupError
from .settings import Settings

if TYPE_CHECKING:
    from .pidfile import PidFile
    from .server import GracefulTCPServer

__all__ = [
    "forget_successor",
    "hand_over",
    "handed_generation",
    "make_status",
    "open_control",
    "successor_generation",
    "summary",
]

log = logging.getLogger("graceserve")


def handed_generation(text: str) -> tuple[int, int] | None:
    """``generation,reloads`` handed by a predecessor, or None (a first start)."""
    generation, _, reloads = text.partition(",")
    if not (generation.isdigit() and reloads.isdigit()):
        return None
    return int(generation), int(reloads)


def successor_generation(status: ServerStatus) -> tuple[int, str]:
    """The generation a successor would be, and the variable's value to tell it so."""
    snapshot = status.snapshot()
    generation = int(snapshot["generation"]) + 1
    return generation, f"{generation},{int(snapshot['reloads']) + 1}"


def make_status(
    server: GracefulTCPServer, settings: Settings, handed: tuple[int, int] | None
) -> ServerStatus:
    """The status of a run (generation 1, or what a predecessor handed)."""
    generation, reloads = handed or (1, 0)
    status = ServerStatus(
        lambda: server.active_connections,
        generation=generation, reloads=reloads,
        grace=settings.grace, drain_delay=settings.drain_delay,
    )  # fmt: skip
    if handed is not None:
        status.update(last_reload={"generation": generation, "ok": True, "reason": "ready"})
    return status


def open_control(
    server: GracefulTCPServer, pid: PidFile | None, status: ServerStatus, publish_now: bool
) -> ControlServer | None:
    """The control socket next to the pidfile (none without one); StartupError if it
    cannot be made (the server is closed then)."""
    if pid is None:
        return None
    control = ControlServer(control_path(pid.path), status.snapshot)
    status.subscribe(control.changed)
    try:
        control.start(publish_now)
    except OSError as exc:
        server.server_close()
        raise StartupError(f"cannot make control socket {control.path}: {exc}") from None
    return control


def hand_over(pidfile_path: str, pid: int) -> None:
    """Publish successor ``pid``'s control socket at ours (it waits at a temporary path)."""
    path = control_path(pidfile_path)
    try:
        publish(temporary_path(path, pid), path)
    except OSError as exc:
        log.warning("HUP: could not hand over the control socket %s: %s", path, exc)


def forget_successor(pidfile_path: str, pid: int) -> None:
    """Remove the control socket a successor that never became ready may have left."""
    with contextlib.suppress(OSError):
        os.unlink(temporary_path(control_path(pidfile_path), pid))


def summary(report: DrainReport) -> dict[str, Any]:
    """The drain report, as published when the run is over."""
    return {
        "clean": report.clean, "served_during_drain": report.served_during_drain,
        "forced": report.forced, "remaining": report.remaining, "lost": report.lost,
        "elapsed": round(report.elapsed, 3),
    }  # fmt: skip
