"""serve(): a server as a process, with signals, pidfile, drain and exit code.

Why this module exists: the order of a graceful stop matters more than any one
step, and it is easiest to get right when one thread owns it.  The main thread
is the controller:

1. install the signal handlers first, so that a signal during start-up is
   recorded and PID 1 does not ignore TERM;
2. take the pidfile, bind, run ``serve_forever`` in a thread, log readiness;
3. sleep on a Condition until a signal arrives;
4. on TERM/INT/HUP: the lame-duck delay if any, then the drain; the main
   thread waits on the registry's Condition for zero, waking for a second
   signal (cut now), the grace deadline (cut now) and the progress line;
5. only then remove the pidfile, restore the signal handlers and return the
   exit code.

Nothing here is specific to the CLI: tests and embedders call ``serve()``.
"""

from __future__ import annotations

import logging
import os
import signal
import socketserver
import threading
import time
from dataclasses import dataclass

from .drain import DrainReport
from .errors import EXIT_CUT, EXIT_OK, exit_code_for_signal
from .httpserver import GracefulHTTPServer
from .listener import Address, make_server, remove_unix_socket
from .pidfile import PidFile
from .server import GracefulTCPServer, format_address
from .signals import SignalRelay
from .target import load_handler

__all__ = ["serve"]

log = logging.getLogger("graceserve")

PROGRESS_INTERVAL = 1.0
_FORCING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


@dataclass
class _Stop:
    """How the stop went, for the exit code and the summary line."""

    signum: int = 0
    forced_by: int = 0  # the signal that forced a cut, 0 if none
    deadline_passed: bool = False


def serve(
    handler: type[socketserver.BaseRequestHandler] | str,
    address: Address = ("127.0.0.1", 8000),
    *,
    grace: float = 8.0,
    pidfile: str | None = None,
    max_connections: int | None = 1024,
    idle_timeout: float | None = 60.0,
    drain_delay: float = 0.0,
) -> int:
    """Serve ``handler`` on ``address`` until a stop signal; return the exit code.

    ``handler`` is a request handler class or a ``module:Handler`` target,
    imported after the signal handlers are in place (a slow import is part of
    start-up, and a TERM during it is honoured once serving has begun).

    Raises StartupError (with a one-line message and ``exit_code``) if the
    server cannot start; nothing is left behind then.  Call from the main
    thread only: it installs signal handlers, and restores the previous ones
    before it returns.
    """
    relay = SignalRelay()
    relay.install()
    try:
        pid = PidFile(pidfile) if pidfile else None
        if pid is not None:
            pid.acquire()
        try:
            handler_class = load_handler(handler) if isinstance(handler, str) else handler
            server = make_server(
                handler_class, address, max_connections=max_connections, idle_timeout=idle_timeout
            )
            try:
                return _run(server, relay, grace, drain_delay)
            finally:
                remove_unix_socket(server)
        finally:
            if pid is not None:
                pid.release()
    finally:
        relay.restore()


def _run(server: GracefulTCPServer, relay: SignalRelay, grace: float, drain_delay: float) -> int:
    relay.add_listener(server.registry.condition)
    accept_thread = threading.Thread(
        target=server.serve_forever, name="graceserve-accept", daemon=True
    )
    accept_thread.start()
    scheme = "http" if isinstance(server, GracefulHTTPServer) else "tcp"
    where = format_address(server.server_address)
    if not where.startswith("unix:"):
        where = f"{scheme}://{where}"
    log.info("listening on %s (%s, pid %d, grace %gs)", where, scheme, os.getpid(), grace)
    stop = _Stop()
    try:
        stop.signum = _wait_for_stop(relay)
        if drain_delay > 0:
            _lame_duck(server, relay, drain_delay, stop)
        report = _drain(server, relay, grace, stop)
    finally:
        server.shutdown()
        accept_thread.join(timeout=5.0)
        server.server_close()
    code = _exit_code(report, stop)
    log.info(
        "stopped: %d served during the drain, %d cut, %.3fs, exit code %d",
        report.served_during_drain, report.forced, report.elapsed, code,
    )  # fmt: skip
    return code


def _wait_for_stop(relay: SignalRelay) -> int:
    """Sleep until TERM, INT, HUP or QUIT; return it."""
    while True:
        relay.wait()
        for signum in relay.take():
            return signum


def _lame_duck(server: GracefulTCPServer, relay: SignalRelay, delay: float, stop: _Stop) -> None:
    """Keep serving for ``delay`` seconds while health checks fail; a new signal ends it."""
    if stop.signum == signal.SIGQUIT:
        return
    server.announce_stop()
    log.info("%s: lame duck for %gs (still serving, /healthz fails)", _name(stop.signum), delay)
    if relay.wait(delay):
        signum = relay.take()[0]
        if signum in _FORCING:
            stop.forced_by = signum


def _drain(server: GracefulTCPServer, relay: SignalRelay, grace: float, stop: _Stop) -> DrainReport:
    log.info(
        "%s: draining %d connections (grace %gs); new connections are refused",
        _name(stop.signum), server.active_connections, grace,
    )  # fmt: skip
    server.start_drain()
    deadline = time.monotonic() + grace
    if stop.signum == signal.SIGQUIT:
        stop.forced_by = signal.SIGQUIT
    next_progress = time.monotonic() + PROGRESS_INTERVAL
    while not stop.forced_by:
        if server.wait_drained(min(deadline, next_progress), wake_up=relay.pending):
            break
        for signum in relay.take():
            if signum in _FORCING:
                stop.forced_by = signum
                break
            log.info("%s: already draining", _name(signum))
        now = time.monotonic()
        if not stop.forced_by and now >= deadline:
            stop.deadline_passed = True
            remaining = server.active_connections
            log.warning("grace of %gs passed: cutting %d connections", grace, remaining)
            break
        if now >= next_progress:
            log.info("draining: %d connections remaining", server.active_connections)
            next_progress = now + PROGRESS_INTERVAL
    if stop.forced_by and server.active_connections:
        remaining = server.active_connections
        log.warning("%s: cutting %d connections now", _name(stop.forced_by), remaining)
    if stop.forced_by or stop.deadline_passed:
        server.force_close()
    return server.finish_drain()


def _exit_code(report: DrainReport, stop: _Stop) -> int:
    if stop.forced_by == signal.SIGQUIT:
        cut = report.forced or report.remaining
        return exit_code_for_signal(signal.SIGQUIT) if cut else EXIT_OK
    if stop.forced_by:
        return exit_code_for_signal(stop.forced_by)
    return EXIT_OK if report.clean else EXIT_CUT


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
