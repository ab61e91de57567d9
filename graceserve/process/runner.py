"""serve(): a server as a process, with signals, pidfile, drain, reload and exit code.

Why this module exists: the order of a graceful stop matters more than any one
step, and it is easiest to get right when one thread owns it.  The main thread
is the controller:

1. install the signal handlers first, so that a signal during start-up is
   recorded and PID 1 does not ignore TERM;
2. import the target, take the pidfile, bind (or adopt an inherited
   listener), run ``serve_forever`` in a thread, report readiness; with
   ``--user``, take the pidfile and bind first, then switch users, and only
   then import the target (``graceserve.process.dropping``);
3. run the supervisor's loop (``graceserve.process.supervisor``) with this process's
   server as its one member (``graceserve.process.inprocess``): the same state machine
   as with ``--workers N`` decides what each signal does.  A HUP (or
   ``--max-requests``) starts a worker process on our listener; once it is
   ready our server drains in a thread and this process stays as the
   supervisor, so the main pid never changes (systemd, PID 1); if the reload
   fails, our server keeps serving.  With ``--workers N`` (N > 1) there is no
   member of ours (``graceserve.process.prefork``), and a worker process runs
   ``run_worker``;
4. on TERM/INT while our server is the only member (``_stop_alone``): the
   lame-duck delay if any, then the drain: the main thread waits on the
   registry's Condition for zero, waking for a second signal (cut now), the
   grace deadline (cut now) and the progress line;
5. only then remove the pidfile, restore the signal handlers (or, for the
   command line, leave every one ignored so that nothing arriving after the
   drain changes the exit code) and return the exit code.

Every signal is acted on, in the order it arrived: one queue (``inbox``) feeds
the supervisor's loop and then the drain, so a batch (HUP then TERM, TERM then
TERM) is never cut to its first element.  The drain itself is
``graceserve.stopping.run_drain``, the same sequence
``GracefulTCPServer.drain()`` runs, with hooks for the progress line, the
signals that force, and systemd's status.

Nothing here is specific to the CLI: tests and embedders call ``serve()``.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import signal
import socket
import socketserver
import threading
from dataclasses import dataclass
from typing import Any

from graceserve.core.drain import DrainReport
from graceserve.core.metering import RequestMeter
from graceserve.core.server import GracefulTCPServer, format_address
from graceserve.core.stopping import run_drain
from graceserve.errors import EXIT_CUT, EXIT_OK, exit_code_for_signal
from graceserve.http.server import GracefulHTTPServer
from graceserve.process import runstatus
from graceserve.process.banner import log_banner
from graceserve.process.control import ServerStatus
from graceserve.process.dropping import bind_then_drop, check_pidfile_directory
from graceserve.process.inprocess import InProcessServer
from graceserve.process.listener import Address, make_server, remove_unix_socket
from graceserve.process.metrics import MetricsBoard
from graceserve.process.metricsserver import MetricsEndpoint, open_metrics
from graceserve.process.pidfile import PidFile
from graceserve.process.prefork import run_supervised
from graceserve.process.privileges import Identity, check_possible, resolve
from graceserve.process.readiness import listen_url, ready_line
from graceserve.process.runnerhooks import RunnerHooks, name_of
from graceserve.process.signals import SignalRelay
from graceserve.process.supervisor import Supervisor
from graceserve.process.systemd import Notifier, inherited_listeners
from graceserve.process.target import load_target
from graceserve.process.worker import run_worker
from graceserve.process.workerproc import LIMIT_VARIABLE, STANDBY_VARIABLE, WORKER_VARIABLE
from graceserve.settings import DEFAULTS, Settings
from graceserve.wsgi.server import WSGIApplication

__all__ = ["run", "serve"]

log = logging.getLogger("graceserve")

_FORCING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def serve(
    handler: type[socketserver.BaseRequestHandler] | WSGIApplication | str,
    address: Address | list[Address] = DEFAULTS.bind,
    *,
    grace: float = DEFAULTS.grace,
    pidfile: str | None = DEFAULTS.pidfile,
    max_connections: int | None = DEFAULTS.max_connections,
    idle_timeout: float | None = DEFAULTS.idle_timeout,
    drain_delay: float = DEFAULTS.drain_delay,
    **wsgi_settings: Any,
) -> int:
    """Serve ``handler`` on ``address`` until a stop signal; return the exit code.

    ``address`` is ``(host, port)``, a Unix socket's path, or a list of those: one
    server listens on all of them (one registry, one drain).

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

    ``wsgi_settings`` are further ``Settings`` fields for a WSGI application:
    ``root_path``, ``limit_request_line``, ``limit_request_fields``,
    ``limit_request_field_size``, ``max_body_size``; and, for any HTTP target,
    ``certfile``, ``keyfile``, ``ca_certs``, ``cert_reqs``, ``access_log``,
    ``access_log_format``, ``forwarded_allow_ips`` (``log_format`` is the
    caller's: ``graceserve.logformat.configure_logging``).
    """
    addresses = address if isinstance(address, list) else [address]
    if not addresses:
        raise ValueError("serve() needs at least one address")
    settings = DEFAULTS.but(
        bind=addresses[0],
        extra_binds=tuple(addresses[1:]),
        grace=grace,
        pidfile=pidfile,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        drain_delay=drain_delay,
        **wsgi_settings,
    )
    return run(handler, settings)


def run(
    handler: type[socketserver.BaseRequestHandler] | WSGIApplication | str,
    settings: Settings,
    *,
    ignore_signals_after: bool = False,
) -> int:
    """``serve()`` with its settings in one object.

    ``ignore_signals_after``: instead of restoring the previous signal
    handlers, leave every signal we handled ignored (the command line: the
    process is about to exit with the code it logged, and a late TERM, INT or
    USR1 must not kill it with another).
    """
    generation = os.environ.pop(WORKER_VARIABLE, None)
    if generation is not None:  # started by a supervisor
        limit = os.environ.pop(LIMIT_VARIABLE, "")
        standby = os.environ.pop(STANDBY_VARIABLE, "") == "1"
        settings = settings.but(max_requests=int(limit) if limit.isdigit() else None)
        return run_worker(handler, settings, generation, ignore_signals_after, standby)
    relay = SignalRelay()
    relay.install()
    notifier = Notifier.from_environment()
    try:
        supervised = settings.workers > 1
        identity = resolve(settings.user, settings.group)
        if identity is not None:
            check_possible(identity)  # before anything is opened: exit 3
            if not supervised and settings.pidfile:
                check_pidfile_directory(identity, settings.pidfile)
        handler_class: type[socketserver.BaseRequestHandler] | WSGIApplication | str = handler
        if isinstance(handler, str) and (settings.preload or not supervised) and not identity:
            handler_class = load_target(handler)  # --user: only once we are the user
        pid = PidFile(settings.pidfile) if settings.pidfile else None
        if pid is not None:
            pid.acquire()
        try:
            inherited = inherited_listeners()
            if supervised:
                return run_supervised(
                    handler_class, settings, relay, notifier, inherited, pid, identity
                )
            # --metrics-bind: bound first (before a --user switch: it may be a low port),
            # closed last.
            endpoint = open_metrics(settings)
            try:
                return _run_alone(
                    handler_class, settings, relay, notifier, inherited, pid, endpoint, identity
                )
            finally:
                if endpoint is not None:
                    endpoint.close()
        finally:
            if pid is not None:
                pid.release()
    finally:
        notifier.close()
        relay.restore(ignore=ignore_signals_after)


def _run_alone(
    handler_class: type[socketserver.BaseRequestHandler] | WSGIApplication | str,
    settings: Settings,
    relay: SignalRelay,
    notifier: Notifier,
    inherited: list[socket.socket],
    pid: PidFile | None,
    endpoint: MetricsEndpoint | None,
    identity: Identity | None,
) -> int:
    """This process serves (until a reload hands the serving to worker processes).

    ``handler_class`` is the loaded target, or (with ``identity``, ``--user``) still
    its name: it is imported only once this process is the user."""
    if identity is not None:
        server = bind_then_drop(handler_class, settings, identity, inherited, pid)
    else:
        assert not isinstance(handler_class, str)
        server = make_server(handler_class, settings, inherited)
    # With socket activation systemd holds the listener (and a unix socket's
    # file) after us: never filter, shut or remove what is also systemd's.
    shared = bool(inherited)
    controller = _Controller(server, relay, notifier, pid, shared, settings)
    status = controller.status = runstatus.make_status(server, settings)
    if endpoint is not None:
        controller.metrics = MetricsBoard(status)
        controller.metrics.workers = 1  # this process serves
        endpoint.start(controller.metrics.render)
    control = None
    try:
        control = runstatus.open_control(server, pid, status)
        return controller.run(settings.grace)
    finally:
        if control is not None:
            control.close()
        if not shared:
            remove_unix_socket(server)


@dataclass
class _Stop:
    """How the stop went, for the exit code and the summary line."""

    signum: int = 0
    forced_by: int = 0  # the signal that forced a cut, 0 if none
    deadline_passed: bool = False


class _Controller:
    """The main thread's view of one run.  Main thread only."""

    def __init__(
        self,
        server: GracefulTCPServer,
        relay: SignalRelay,
        notifier: Notifier,
        pidfile: PidFile | None,
        shared_listener: bool = False,
        settings: Settings = DEFAULTS,
    ) -> None:
        self.settings = settings
        self.shared_listener = shared_listener  # systemd keeps it: never filter or shut it
        self.server = server
        self.relay = relay
        self.notifier = notifier
        self.pidfile = pidfile
        self.stop = _Stop()
        self.status = ServerStatus()  # what the control socket publishes
        self.metrics: MetricsBoard | None = None  # --metrics-bind
        self.inbox: collections.deque[int] = collections.deque()  # taken, not yet acted on
        relay.add_listener(server.registry.condition)

    # -- signals, in order ------------------------------------------------------

    def has_signal(self) -> bool:
        """Whether a signal waits to be acted on.  Lock-free (a ``wake_up`` predicate)."""
        return bool(self.inbox) or self.relay.pending()

    def next_signal(self) -> int | None:
        """The oldest signal not yet acted on, or None."""
        if not self.inbox:
            self.inbox.extend(self.relay.take())
        return self.inbox.popleft() if self.inbox else None

    # -- the run ----------------------------------------------------------------

    def run(self, grace: float) -> int:
        server = self.server
        member = self._member()  # before serve_forever: its hooks count every request
        accept_thread = threading.Thread(
            target=server.serve_forever, name="graceserve-accept", daemon=True
        )
        accept_thread.start()
        try:
            self._report_ready(grace)
            return self._supervise(member)
        finally:
            server.shutdown()
            accept_thread.join(timeout=5.0)
            server.server_close()

    def _member(self) -> InProcessServer:
        """Our server as the supervisor's member; with ``--max-requests`` it counts our
        server's requests through the server's hooks (``graceserve.core.serverhooks``)."""
        settings = self.settings
        limit = settings.max_requests
        if limit:
            limit += random.randint(0, settings.max_requests_jitter)
        meter = RequestMeter() if self.metrics is not None else None
        member = InProcessServer(self.server, self.shared_listener, limit or None, meter)
        if limit or meter is not None:
            self.server.install_hooks(member.hooks())
        return member

    def _supervise(self, member: InProcessServer) -> int:
        """The supervisor's loop, our server its one member, until the stop; the exit code.

        In one-process mode a worker process has no watchdog (``--worker-timeout``
        is refused with ``--workers 1``: a process cannot kill and replace its own
        stuck serving loop, so neither does it once a worker took over).
        """
        settings = self.settings
        supervisor = Supervisor(
            settings.but(workers=1, worker_timeout=None),
            [listener.dup() for listener in self.server.listeners], self.relay,
            self.notifier, self.shared_listener, self.status, inbox=self.inbox,
            inprocess=member, stop_alone=self._stop_alone, metrics=self.metrics,
        )  # fmt: skip
        return supervisor.run()

    def _stop_alone(self, signum: int) -> int:
        """The stop while our server is the only member: lame duck, drain, summary."""
        self.relay.queue_dumps = False  # no worker to pass a USR1 to
        self.stop.signum = signum
        grace = self.settings.grace
        if self.settings.drain_delay > 0:
            self._lame_duck(self.settings.drain_delay)
        report = self._drain(grace)
        code = self._exit_code(report)
        self.status.finish(code, runstatus.summary(report))
        if report.remaining:
            log.warning(
                "still running: %d %s the cut; leaving them behind",
                report.remaining,
                "handler ignored" if report.remaining == 1 else "handlers ignored",
                extra={"event": "handlers_left", "remaining": report.remaining},
            )
        if report.lost:
            log.error(
                "%d queued clients were reset: out of file descriptors", report.lost,
                extra={"event": "clients_reset", "lost": report.lost},
            )  # fmt: skip
        log.info(
            "stopped: %d served during the drain, %d cut, %.3fs, exit code %d",
            report.served_during_drain, report.forced, report.elapsed, code,
            extra={"event": "stopped", "served_during_drain": report.served_during_drain,
                   "forced": report.forced, "elapsed": round(report.elapsed, 3),
                   "exit_code": code, "clean": report.clean},
        )  # fmt: skip
        return code

    def _report_ready(self, grace: float) -> None:
        server = self.server
        scheme = server.url_scheme if isinstance(server, GracefulHTTPServer) else "tcp"
        urls = [listen_url(scheme, format_address(where)) for where in server.server_addresses]
        self.status.update(state="serving")  # first: whoever reads the line may ask
        log_banner(self.settings, server)  # version, target, addresses, workers: one line
        self.notifier.send("READY=1", f"STATUS=listening on {', '.join(urls)}")
        for where in urls:  # one readiness line per listener, the first --bind's first
            log.info(
                "%s", ready_line(where, scheme, os.getpid(), grace),
                extra={"event": "ready", "url": where, "protocol": scheme, "grace": grace},
            )  # fmt: skip

    def _lame_duck(self, delay: float) -> None:
        """Keep serving for ``delay`` seconds while health checks fail; a new signal ends
        it, and a second stop signal (TERM, INT, QUIT) forces."""
        if self.stop.signum == signal.SIGQUIT:
            return
        self.server.announce_stop()
        self.status.update(state="draining")
        self.notifier.send("STOPPING=1", "STATUS=lame duck: health checks fail, still serving")
        log.info("%s: lame duck for %gs (still serving, /healthz fails)", name_of(self), delay)
        if self.has_signal() or self.relay.wait(delay):
            self.take_signals()

    def take_signals(self, doing: str = "stopping") -> int:
        """Act on every signal waiting, in order; the first forcing one is returned (0: none)."""
        while (signum := self.next_signal()) is not None:
            if signum in _FORCING:
                self.stop.forced_by = signum
                self.inbox.clear()  # forced: nothing after it can matter
                return signum
            log.info("%s: already %s", signal.Signals(signum).name, doing)
        return 0

    def _drain(self, grace: float) -> DrainReport:
        self.notifier.send("STOPPING=1")
        self.status.update(state="draining")
        if not self.shared_listener:
            # A Unix listener has no drop-all filter: removing its file now refuses new
            # connects (no such file) while the sweep still takes what is queued.
            remove_unix_socket(self.server)
        force = self.stop.forced_by or (signal.SIGQUIT if self.stop.signum == signal.SIGQUIT else 0)
        report, forced_by = run_drain(
            self.server, grace, RunnerHooks(self, grace), force=force,
            shared_listener=self.shared_listener,
        )  # fmt: skip
        self.stop.forced_by = forced_by
        return report

    def _exit_code(self, report: DrainReport) -> int:
        forced_by = self.stop.forced_by
        if forced_by == signal.SIGQUIT:
            cut = report.forced or report.remaining or report.lost
            return exit_code_for_signal(signal.SIGQUIT) if cut else EXIT_OK
        if forced_by:
            return exit_code_for_signal(forced_by)
        return EXIT_OK if report.clean else EXIT_CUT
