"""Start ``python -m graceserve`` in one mode of the contract matrix, and talk to it.

Why this module exists: every guarantee must hold in every mode a deployment
uses, so the contract suite starts the same target (``testsupport.targets``)
as a handler or a WSGI app, in one process or under a supervisor of two
workers, fresh or after a graceful reload, plain or over TLS.  One function,
``serve``, knows how to bring a server into each of those states and to tell
when it is there; what it returns (``Served``) knows the address, the main
pid, the log, and how to reload, signal, ask ``ctl`` and connect.

When is a server "serving" in a mode?  Not at its first readiness line (a
worker prints its own before its siblings are up): when its control socket
(``--pidfile P`` makes ``P.ctl``) says ``state`` is ``serving``, the state the
runner publishes with its readiness line and a supervisor once every worker
is ready.  After a HUP: when ``graceserve ctl graceful`` exits 0, which it does
only once the reload is reported, that is once no worker of the old
generation accepts (README, "Reload"): from then on every new connection meets
the new generation.

Threading: ``serve`` may be called from several threads at once (each server
has its own temporary directory and process group).  A ``Served`` is used by
one test at a time; its log is read by a reader thread (``ChildProcess``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graceserve.process.readiness import READY_PATTERN

from .process import ServerProcess, child_env, fail
from .procfs import LISTEN, tcp_sockets
from .rawhttp import IO_TIMEOUT, Connection, Reply
from .targets import TARGETS
from .waiting import wait_until

__all__ = [
    "KINDS",
    "MODES",
    "Gate",
    "Mode",
    "NotServingError",
    "Served",
    "TlsFiles",
    "serve",
]

KINDS = tuple(TARGETS)
"""``handler`` (a BaseHTTPRequestHandler subclass) and ``wsgi`` (a WSGI app)."""

START_TIMEOUT = 30.0  # seconds from start to serving, reload included (a loaded machine)
CTL_TIMEOUT = 60.0  # seconds a ctl command may take


@dataclass(frozen=True)
class Mode:
    """How the server runs: ``workers`` serving processes, ``reloaded`` once or not."""

    name: str
    workers: int
    reloaded: bool

    @property
    def supervised(self) -> bool:
        """Whether a supervisor process runs workers (every mode but a fresh single one)."""
        return self.workers > 1 or self.reloaded

    def __str__(self) -> str:
        return self.name


MODES = (
    Mode("one", 1, False),
    Mode("one-hup", 1, True),
    Mode("workers2", 2, False),
    Mode("workers2-hup", 2, True),
)
"""One process; one process after a HUP (it supervises one worker then); ``--workers 2``;
``--workers 2`` after a HUP (a second generation of workers)."""


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and key, and a client context that trusts their CA."""

    certfile: Path
    keyfile: Path
    client: ssl.SSLContext


class NotServingError(AssertionError):
    """The server exited before it served (``code``, ``output``: its stderr)."""

    def __init__(self, code: int, output: str) -> None:
        lines = output.splitlines()
        super().__init__(
            f"the server exited with {code} before serving; stderr:\n" + "\n".join(lines[-15:])
        )
        self.code = code
        self.output = output


class Gate:
    """Where the app's ``/gate`` route waits: the test knows a request is in the app
    (``wait_entered``) and decides when it ends (``release``).  No sleeps.

    A Unix socket in a short temporary directory; each waiting request is one
    accepted connection, released by a byte (or by ``close``).  Use from one thread.
    """

    def __init__(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="gs-gate-")
        self.path = os.path.join(self._directory, "gate")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(128)
        self._waiting: list[socket.socket] = []
        self.entered = 0
        """Requests that reached the gate so far."""

    @property
    def target(self) -> str:
        """The request target that waits here."""
        return "/gate?" + urllib.parse.urlencode({"path": self.path})

    def wait_entered(self, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until ``count`` requests in all have reached the gate."""
        deadline = time.monotonic() + timeout
        while self.entered < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                fail(f"{self.entered} of {count} requests reached the gate in {timeout}s")
            self._listener.settimeout(remaining)
            try:
                visitor, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._waiting.append(visitor)
            self.entered += 1

    def release(self) -> None:
        """Let every request waiting here go on."""
        for visitor in self._waiting:
            with contextlib.suppress(OSError):
                visitor.sendall(b"x")
            visitor.close()
        self._waiting.clear()

    def close(self) -> None:
        """Release everything and remove the socket."""
        self.release()
        self._listener.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Served:
    """A graceserve process serving the contract target in ``mode``.

    ``address``, ``pid`` (the main process: the one signals go to), ``log`` (its
    stderr so far, workers' lines included), ``tls`` (the client context, or None).
    Close it (or use it as a context manager): the whole process group is killed.
    """

    def __init__(
        self, process: ServerProcess, kind: str, mode: Mode, directory: str, tls: TlsFiles | None
    ) -> None:
        self.process = process
        self.kind = kind
        self.mode = mode
        self.directory = directory
        self.pidfile = os.path.join(directory, "pid")
        self.tls = tls.client if tls is not None else None
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.pid = process.proc.pid

    def __repr__(self) -> str:
        return f"<Served {self.kind} {self.mode} pid {self.pid} at {self.address}>"

    # -- the process -------------------------------------------------------------

    @property
    def log(self) -> str:
        """Everything the server (and its workers) printed on stderr so far."""
        return self.process.output

    @property
    def lines(self) -> list[str]:
        """The stderr lines so far (a copy)."""
        return self.log.splitlines()

    def wait_line(self, pattern: str, timeout: float = 15.0) -> str:
        """The first stderr line matching ``pattern`` (waiting for it)."""
        return self.process.wait_for_line(pattern, timeout).string

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the main process."""
        self.process.send(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The main process's exit code (fail if it is still running after ``timeout``)."""
        code = self.process.exited_within(timeout)
        if code is None:
            fail(f"{self!r} still running {timeout}s later; stderr:\n{self.log}")
        return code

    def close(self) -> None:
        """Kill the process group (workers included) and remove the temporary files."""
        self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- control -----------------------------------------------------------------

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """What the control socket says (``{"cmd": "status"}``, README's protocol)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(self.pidfile + ".ctl")
            sock.sendall(b'{"cmd": "status"}\n')
            answer = sock.makefile("rb").readline()
        status = json.loads(answer)["status"]
        assert isinstance(status, dict), answer
        return status

    def state(self) -> str | None:
        """The published ``state``, or None while the control socket does not answer."""
        try:
            return str(self.status()["state"])
        except (OSError, ValueError):
            return None

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``python -m graceserve ctl ARGS --pidfile P``: its exit code and output."""
        return subprocess.run(
            [sys.executable, "-m", "graceserve", "ctl", *args, "--pidfile", self.pidfile],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def reload(self) -> str:
        """A graceful reload through ``ctl graceful``; returns once the new generation
        serves (ctl's line), fails if it did not."""
        done = self.ctl("graceful")
        if done.returncode != 0:
            fail(f"ctl graceful exited {done.returncode}: {done.stderr}{done.stdout}\n{self.log}")
        return (done.stdout + done.stderr).strip()

    # -- the listener --------------------------------------------------------------

    def listening(self) -> bool:
        """Whether the kernel still has our port in LISTEN."""
        host, port = self.address
        return any(
            row.local_port == port and row.local_host == host for row in tcp_sockets(state=LISTEN)
        )

    def refuses(self, timeout: float = 5.0) -> bool:
        """Whether a new connect is refused right now (an accepted one is closed again)."""
        try:
            with socket.create_connection(self.address, timeout=timeout):
                return False
        except ConnectionRefusedError:
            return True

    # -- HTTP ----------------------------------------------------------------------

    def connect(self, timeout: float = IO_TIMEOUT) -> Connection:
        """A new client connection (TLS if the server serves TLS)."""
        return Connection(self.address, tls=self.tls, timeout=timeout)

    def get(self, target: str = "/", headers: dict[str, str] | None = None) -> Reply:
        """One ``GET target`` on a new connection with ``Connection: close``."""
        with self.connect() as conn:
            conn.request("GET", target, headers, close=True)
            return conn.read_reply()


def _tls_args(tls: TlsFiles | None) -> list[str]:
    if tls is None:
        return []
    return ["--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile)]


def serve(
    kind: str,
    mode: Mode,
    *,
    tls: TlsFiles | None = None,
    args: Sequence[str] = (),
    grace: float = 10.0,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Served:
    """Start the contract target of ``kind`` in ``mode`` on 127.0.0.1:0 with ``args``;
    return once it serves in that mode (see the module's docstring).

    Raises ``NotServingError`` if the process exits first (a refused option, a start
    that fails); fails the test on a timeout.  The caller closes what it gets.
    """
    directory = tempfile.mkdtemp(prefix="gs-")  # short: the control socket's path
    command = [
        TARGETS[kind], "--bind", "127.0.0.1:0", "--grace", f"{grace:g}",
        "--pidfile", os.path.join(directory, "pid"),
        *(["--workers", str(mode.workers)] if mode.workers > 1 else []),
        *_tls_args(tls), *args,
    ]  # fmt: skip
    process = ServerProcess(command, env=env)
    served = Served(process, kind, mode, directory, tls)
    try:
        ready = process.wait_for_line_or_exit(READY_PATTERN, timeout)
        if ready is None:
            raise NotServingError(process.proc.returncode, process.output)
        served.address = process.wait_ready(0)
        wait_until(
            lambda: served.state() == "serving" or process.proc.poll() is not None,
            timeout, f"{served!r} to say it is serving",
        )  # fmt: skip
        if process.proc.poll() is not None:
            process.wait_exit(5)
            raise NotServingError(process.proc.returncode, process.output)
        if mode.reloaded:
            served.reload()
    except BaseException:
        served.close()
        raise
    return served
