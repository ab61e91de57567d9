"""serve(): a server as a process, with signals, pidfile, drain, restart and exit code.

Why this module exists: the order of a graceful stop matters more than any one
step, and it is easiest to get right when one thread owns it.  The main thread
is the controller:

1. install the signal handlers first, so that a signal during start-up is
   recorded and PID 1 does not ignore TERM;
2. import the target, take the pidfile, bind (or adopt an inherited
   listener), run ``serve_forever`` in a thread, report readiness;
3. sleep on a Condition until a signal arrives;
4. on HUP: start a successor with our argv, hand it the listener and the
   pidfile once it is ready, then drain; if it fails, keep serving;
5. on TERM/INT (or a HUP that restarted us): the lame-duck delay if any, then
   the drain: the main thread waits on the registry's Condition for zero,
   waking for a second signal (cut now), the grace deadline (cut now) and the
   progress line;
6. only then remove the pidfile, restore the signal handlers and return the
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
from typing import Any

from .drain import DrainReport
from .errors import EXIT_CUT, EXIT_OK, exit_code_for_signal
from .httpserver import GracefulHTTPServer
from .listener import Address, make_server, remove_unix_socket
from .pidfile import PidFile
from .restart import (
    PIDFILE_FD_VARIABLE,
    RESTART_SOCKET_VARIABLE,
    SOCKET_FILE_VARIABLE,
    Successor,
)
from .server import GracefulTCPServer, format_address
from .signals import SignalRelay
from .systemd import Notifier, inherited_listener
from .target import load_target
from .wsgi import WSGIApplication

__all__ = ["serve"]

log = logging.getLogger("graceserve")

PROGRESS_INTERVAL = 1.0
RESTART_TIMEOUT = 30.0
FORCED_UNWIND = 0.1  # seconds cut handlers get after a forcing signal (TERM twice, QUIT)
_FORCING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def serve(
    handler: type[socketserver.BaseRequestHandler] | WSGIApplication | str,
    address: Address = ("127.0.0.1", 8000),
    *,
    grace: float = 8.0,
    pidfile: str | None = None,
    max_connections: int | None = 1024,
    idle_timeout: float | None = 60.0,
    drain_delay: float = 0.0,
    **wsgi_settings: Any,
) -> int:
    """Serve ``handler`` on ``address`` until a stop signal; return the exit code.

    ``handler`` is a request handler class, a WSGI application, or a
    ``module:Handler`` / ``module:app`` / ``module:factory()`` target,
    imported after the signal handlers are in place (a slow import is part of
    start-up, and a TERM during it is honoured once serving has begun).  A
    socket passed by systemd socket activation (or by our own graceful
    restart) is served instead of binding ``address``.

    Raises StartupError (with a one-line message and ``exit_code``) if the
    server cannot start; nothing is left behind then.  Call from the main
    thread only: it installs signal handlers, and restores the previous ones
    before it returns.

    ``wsgi_settings`` apply to a WSGI application (GracefulWSGIServer class
    variables): ``root_path``, ``limit_request_line``, ``limit_request_fields``,
    ``limit_request_field_size``, ``max_body_size``.
    """
    relay = SignalRelay()
    relay.install()
    notifier = Notifier.from_environment()
    predecessor = Notifier(os.environ.pop(RESTART_SOCKET_VARIABLE, None))
    handed_socket_file = os.environ.pop(SOCKET_FILE_VARIABLE, "") == "1"
    inherited_pidfile = os.environ.pop(PIDFILE_FD_VARIABLE, "")
    try:
        handler_class = load_target(handler) if isinstance(handler, str) else handler
        pid = PidFile(pidfile) if pidfile else None
        if pid is not None and inherited_pidfile.isdigit():
            pid.adopt(int(inherited_pidfile))
        elif pid is not None:
            pid.acquire()
        try:
            inherited = inherited_listener()
            server = make_server(
                handler_class,
                address,
                inherited,
                max_connections=max_connections,
                idle_timeout=idle_timeout,
                **wsgi_settings,
            )
            # A unix socket file is removed by whoever bound it, or was handed it by a
            # restart; never one systemd bound (socket activation), nor one handed on.
            owns_socket_file = inherited is None or handed_socket_file
            controller = _Controller(server, relay, notifier, predecessor, pid, owns_socket_file)
            try:
                return controller.run(grace, drain_delay)
            finally:
                if owns_socket_file and not controller.stop.handed_over:
                    remove_unix_socket(server)
        finally:
            if pid is not None:
                pid.release()
    finally:
        notifier.close()
        predecessor.close()
        relay.restore()


@dataclass
class _Stop:
    """How the stop went, for the exit code and the summary line."""

    signum: int = 0
    forced_by: int = 0  # the signal that forced a cut, 0 if none
    deadline_passed: bool = False
    handed_over: bool = False  # a successor serves now; it speaks to systemd


class _Controller:
    """The main thread's view of one run.  Main thread only."""

    def __init__(
        self,
        server: GracefulTCPServer,
        relay: SignalRelay,
        notifier: Notifier,
        predecessor: Notifier,
        pidfile: PidFile | None,
        owns_socket_file: bool,
    ) -> None:
        self.owns_socket_file = owns_socket_file
        self.server = server
        self.relay = relay
        self.notifier = notifier
        self.predecessor = predecessor
        self.pidfile = pidfile
        self.stop = _Stop()
        relay.add_listener(server.registry.condition)

    def run(self, grace: float, drain_delay: float) -> int:
        server = self.server
        accept_thread = threading.Thread(
            target=server.serve_forever, name="graceserve-accept", daemon=True
        )
        accept_thread.start()
        try:
            self._report_ready(grace)
            self._serve_until_stop()
            if drain_delay > 0:
                self._lame_duck(drain_delay)
            report = self._drain(grace)
        finally:
            server.shutdown()
            accept_thread.join(timeout=5.0)
            server.server_close()
        code = self._exit_code(report)
        log.info(
            "stopped: %d served during the drain, %d cut, %.3fs, exit code %d",
            report.served_during_drain, report.forced, report.elapsed, code,
        )  # fmt: skip
        return code

    def _report_ready(self, grace: float) -> None:
        server = self.server
        scheme = "http" if isinstance(server, GracefulHTTPServer) else "tcp"
        where = format_address(server.server_address)
        if not where.startswith("unix:"):
            where = f"{scheme}://{where}"
        log.info("listening on %s (%s, pid %d, grace %gs)", where, scheme, os.getpid(), grace)
        if self.predecessor.enabled:
            self.predecessor.send("READY=1")  # it tells systemd, and hands over
        else:
            self.notifier.send("READY=1", f"STATUS=listening on {where}")

    def _serve_until_stop(self) -> None:
        """Sleep until a stop signal; a HUP that fails to restart us keeps us serving."""
        while True:
            self.relay.wait()
            for signum in self.relay.take():
                self.stop.signum = signum
                if signum != signal.SIGHUP or self._restart():
                    return

    def _restart(self) -> bool:
        """Start a successor and hand over to it; False (still serving) if it fails."""
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        pidfile_fd = self.pidfile.fileno if self.pidfile is not None else None
        successor = Successor(
            self.server.fileno(), pidfile_fd, self.notifier.address, self.owns_socket_file
        )
        try:
            pid = successor.start()
        except OSError as exc:
            successor.close()
            log.error("HUP: restart failed: cannot start a new process: %s; still serving", exc)
            self.notifier.send("READY=1", "STATUS=restart failed")
            return False
        log.info("HUP: restarting: started pid %d, waiting until it is ready", pid)
        why = successor.wait_ready(time.monotonic() + RESTART_TIMEOUT, self.relay.pending)
        if why is not None:
            successor.abandon()
            log.error("HUP: restart failed: %s; still serving", why)
            self.notifier.send("READY=1", "STATUS=restart failed; old process still serving")
            return False
        successor.close()
        if self.pidfile is not None:
            self.pidfile.hand_over(pid)
        self.notifier.send(f"MAINPID={pid}", "READY=1", f"STATUS=restarted as pid {pid}")
        self.stop.handed_over = True
        log.info("HUP: pid %d is serving; draining this process", pid)
        return True

    def _lame_duck(self, delay: float) -> None:
        """Keep serving for ``delay`` seconds while health checks fail; a new signal ends it."""
        if self.stop.signum == signal.SIGQUIT or self.stop.handed_over:
            return
        self.server.announce_stop()
        self._notify("STOPPING=1", "STATUS=lame duck: health checks fail, still serving")
        log.info("%s: lame duck for %gs (still serving, /healthz fails)", _name(self), delay)
        if self.relay.wait(delay):
            signum = self.relay.take()[0]
            if signum in _FORCING:
                self.stop.forced_by = signum

    def _drain(self, grace: float) -> DrainReport:
        server, stop = self.server, self.stop
        self._notify("STOPPING=1")
        server.start_drain()
        deadline = time.monotonic() + grace
        log.info(
            "%s: draining %d connections (grace %gs); new connections are refused",
            _name(self), server.draining_from, grace,
        )  # fmt: skip
        self._notify(f"STATUS=draining {server.draining_from} connections")
        if stop.signum == signal.SIGQUIT:
            stop.forced_by = signal.SIGQUIT
        next_progress = time.monotonic() + PROGRESS_INTERVAL
        last_count = server.active_connections
        while not stop.forced_by:
            if server.wait_drained(min(deadline, next_progress), wake_up=self.relay.pending):
                break
            self._take_signals_while_draining()
            now = time.monotonic()
            if not stop.forced_by and now >= deadline:
                stop.deadline_passed = True
                remaining = server.active_connections
                log.warning("grace of %gs passed: cutting %d connections", grace, remaining)
                break
            if now >= next_progress:
                count = server.active_connections
                log.info("draining: %d connections remaining", count)
                self._notify(f"STATUS=draining: {count} connections remaining")
                if count < last_count:  # progress: ask systemd for the time the grace allows
                    self._notify(f"EXTEND_TIMEOUT_USEC={int((deadline - now + 1) * 1e6)}")
                last_count = count
                next_progress = now + PROGRESS_INTERVAL
        if stop.forced_by and server.active_connections:
            remaining = server.active_connections
            log.warning("%s: cutting %d connections now", _name(self, forced=True), remaining)
        if stop.forced_by or stop.deadline_passed:
            server.force_close()
        # Asked to stop at once: handlers that ignore the cut get only a moment to unwind.
        return server.finish_drain(FORCED_UNWIND if stop.forced_by else None)

    def _take_signals_while_draining(self) -> None:
        for signum in self.relay.take():
            if signum in _FORCING:
                self.stop.forced_by = signum
                return
            log.info("%s: already draining", signal.Signals(signum).name)

    def _notify(self, *fields: str) -> None:
        if not self.stop.handed_over:
            self.notifier.send(*fields)

    def _exit_code(self, report: DrainReport) -> int:
        forced_by = self.stop.forced_by
        if forced_by == signal.SIGQUIT:
            cut = report.forced or report.remaining
            return exit_code_for_signal(signal.SIGQUIT) if cut else EXIT_OK
        if forced_by:
            return exit_code_for_signal(forced_by)
        return EXIT_OK if report.clean else EXIT_CUT


def _name(controller: _Controller, forced: bool = False) -> str:
    signum = controller.stop.forced_by if forced else controller.stop.signum
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
