"""``graceserve ctl graceful|stop|status``: the apachectl of graceserve.

Why this module exists: a reload that returns before the new code serves, or that
reports success when the new code cannot import, is a deploy tool that lies
(``ExecReload=kill -HUP`` did both).  ``ctl`` talks to the running server only
over what the server owns, and never guesses:

- the pidfile names the process; its ``flock`` (seen in ``/proc/locks``, without
  taking it) says whether anyone holds it;
- the control socket next to it (``<pidfile>.ctl``, ``graceserve.control``) must
  answer ``status`` for the same pid; only then is a signal sent, through a
  pidfd opened while the server is known to be alive (immune to pid reuse);
- ``graceful`` sends HUP and waits on the control socket until the reload
  count moves past what it saw before the HUP: the new generation serves (0) or
  the reload failed, with the server's reason (1);
- ``stop`` first sends ``wait`` (until stopped), then TERM; the server answers
  that connection with its exit code and drain summary just before it closes
  the socket, so ``ctl`` learns them although the server is not its child,
  then waits until the process is gone and exits with that code.

Dispatched by ``graceserve.cli`` when the first argument is ``ctl``: a TARGET
always has a colon (``module:attr``), so no TARGET can be named ``ctl``.
This module imports nothing that loads the app or the demo: it must run when
the deployed code is broken.  Single-threaded.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .control import control_path, request
from .errors import EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_NOT_RUNNING", "main"]

EXIT_FAILED = 1  # the reload failed or timed out, the stop could not be followed
EXIT_NOT_RUNNING = 3  # as LSB status: nothing runs
STATUS_TIMEOUT = 5.0  # seconds for one status answer
GRACEFUL_TIMEOUT = 60.0  # the server gives up on a new worker after 30 s
STOP_MARGIN = 10.0  # seconds beyond the server's drain delay + grace
EXIT_MARGIN = 5.0  # seconds for the process to be gone after it reported
_POLL = 0.05


class CtlError(Exception):
    """Ends ``ctl`` with one line and ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class _Server:
    """A running server, found through its pidfile and verified over its control socket."""

    def __init__(self, pidfile: str) -> None:
        self.pidfile = os.path.abspath(pidfile)
        self.socket = control_path(self.pidfile)
        self.status = self._find()
        self.pid = int(self.status["pid"])
        try:
            self.pidfd: int | None = os.pidfd_open(self.pid)
        except OSError:
            self.pidfd = None  # old kernel: os.kill, checked just before
        if not self.alive():
            raise CtlError(f"not running: pid {self.pid} has just exited", EXIT_NOT_RUNNING)

    def _find(self) -> dict[str, Any]:
        deadline = time.monotonic() + 1.0  # a restart writes the pidfile just after the socket
        while True:
            written = _read_pidfile(self.pidfile)
            try:
                status = _status(self.socket)
            except (FileNotFoundError, ConnectionRefusedError):
                if _locked(self.pidfile):
                    raise CtlError(
                        f"pid {written or '?'} holds {self.pidfile} but its control socket "
                        f"{self.socket} does not answer"
                    ) from None
                raise CtlError(f"not running ({self.pidfile}: stale)", EXIT_NOT_RUNNING) from None
            if status.get("pid") == written:
                return status
            if time.monotonic() > deadline:
                raise CtlError(
                    f"{self.pidfile} says pid {written or '?'} but {self.socket} answers for "
                    f"pid {status.get('pid')}"
                )
            time.sleep(_POLL)

    def signal(self, signum: int) -> None:
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            raise CtlError(f"pid {self.pid} exited before the signal") from None
        except PermissionError:
            raise CtlError(f"not allowed to signal pid {self.pid}", EXIT_USAGE) from None

    def alive(self) -> bool:
        if self.pidfd is not None:
            return not select.select([self.pidfd], [], [], 0)[0]
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def wait_gone(self, deadline: float) -> bool:
        while self.alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.pidfd is not None:
                select.select([self.pidfd], [], [], left)
            else:
                time.sleep(min(left, _POLL))
        return True

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)


def main(argv: Sequence[str]) -> int:
    """``graceserve ctl ARGV``; the exit code.  Prints one line."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse printed its usage line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    pidfile = args.pidfile or os.environ.get("GRACESERVE_PIDFILE", "")
    try:
        if not pidfile:
            raise CtlError("no pidfile: give --pidfile or set GRACESERVE_PIDFILE", EXIT_USAGE)
        server = _Server(pidfile)
        try:
            action = {"status": _do_status, "graceful": _do_graceful, "stop": _do_stop}
            return action[args.action](server, args)
        finally:
            server.close()
    except CtlError as exc:
        print(f"graceserve ctl {args.action}: {exc}", file=sys.stderr, flush=True)
        return exc.code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graceserve ctl",
        description="Talk to a running graceserve through its pidfile and control socket.",
        epilog="exit codes: 0 done; 1 failed (reload failed, timeout); 2 usage, or a pidfile "
        "that cannot be one; 3 not running; stop: the server's own exit code (0, 4, 128+N)",
    )
    parser.add_argument("action", choices=("graceful", "stop", "status"))
    parser.add_argument("--pidfile", help="the server's --pidfile [GRACESERVE_PIDFILE]")
    parser.add_argument(
        "--timeout", type=_seconds, help="seconds to wait (graceful: 60; stop: drain delay + "
        "grace + 10)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="status: print the raw status")
    return parser


def _do_status(server: _Server, args: argparse.Namespace) -> int:
    status = server.status
    if args.json:
        print(json.dumps(status, sort_keys=True), flush=True)
    else:
        print(_describe(status), flush=True)
    return EXIT_NOT_RUNNING if status.get("state") == "stopped" else 0


def _do_graceful(server: _Server, args: argparse.Namespace) -> int:
    before = server.status
    if before.get("state") in ("draining", "stopped"):
        raise CtlError(f"pid {server.pid} is stopping ({before.get('state')}); not reloading")
    timeout = GRACEFUL_TIMEOUT if args.timeout is None else args.timeout
    message = {
        "cmd": "wait", "generation": before["generation"], "reloads": before["reloads"],
        "timeout": timeout,
    }  # fmt: skip
    answer = _ask(server, message, timeout, lambda: server.signal(signal.SIGHUP))
    status = answer["status"]
    last = status.get("last_reload") or {}
    if not answer.get("done"):
        raise CtlError(f"no new generation after {timeout:g}s; {_describe(status)}")
    if status.get("reloads", 0) <= before["reloads"]:  # stopped instead
        raise CtlError(f"the server stopped instead of reloading: {_describe(status)}")
    if not last.get("ok"):
        raise CtlError(
            f"reload failed: {last.get('reason', 'no reason given')}; generation "
            f"{before['generation']} (pid {server.pid}) still serving"
        )
    with contextlib.suppress(OSError, ValueError, CtlError):
        status = _status(server.socket)  # the new generation's own answer, if it has one
    print(f"graceful: generation {last.get('generation')} serving: {_describe(status)}", flush=True)
    return 0


def _do_stop(server: _Server, args: argparse.Namespace) -> int:
    status = server.status
    budget = float(status.get("grace") or 0) + float(status.get("drain_delay") or 0)
    timeout = budget + STOP_MARGIN if args.timeout is None else args.timeout
    answer = _ask(
        server, {"cmd": "wait", "timeout": timeout}, timeout, lambda: server.signal(signal.SIGTERM)
    )
    final = answer["status"]
    if final.get("state") != "stopped":
        raise CtlError(f"still running after {timeout:g}s: {_describe(final)}")
    if not server.wait_gone(time.monotonic() + EXIT_MARGIN):
        raise CtlError(f"pid {server.pid} reported its stop but is still running")
    code = int(final.get("exit_code", EXIT_FAILED))
    print(f"stopped: pid {server.pid}, exit code {code}: {_summary(final)}", flush=True)
    return code


def _ask(
    server: _Server, message: dict[str, Any], timeout: float, then: Callable[[], None]
) -> dict[str, Any]:
    """Send ``message``, call ``then()`` (the signal), read the answer."""
    try:
        answer = request(server.socket, message, timeout + STATUS_TIMEOUT, sent=then)
    except (OSError, ValueError) as exc:
        gone = "" if server.alive() else f"pid {server.pid} exited; "
        raise CtlError(f"{gone}no answer from {server.socket}: {_reason(exc)}") from None
    if not answer.get("ok") or not isinstance(answer.get("status"), dict):
        raise CtlError(f"the server refused: {answer.get('error', answer)}")
    return answer


def _status(path: str) -> dict[str, Any]:
    try:
        answer = request(path, {"cmd": "status"}, STATUS_TIMEOUT)
    except PermissionError:
        raise CtlError(
            f"not allowed to use {path} (run as the server's user)", EXIT_USAGE
        ) from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise
    except (OSError, ValueError) as exc:
        raise CtlError(f"no answer from {path}: {_reason(exc)}") from None
    if not answer.get("ok") or not isinstance(answer.get("status"), dict):
        raise CtlError(f"{path} refused: {answer.get('error', answer)}")
    return dict(answer["status"])


def _read_pidfile(path: str) -> int:
    """The pid the file names (0 if none); CtlError when the path cannot be a pidfile."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise CtlError(f"not running (no pidfile {path})", EXIT_NOT_RUNNING) from None
    except OSError as exc:
        raise CtlError(f"cannot use pidfile {path}: {exc.strerror}", EXIT_USAGE) from None
    if not stat.S_ISREG(info.st_mode):
        raise CtlError(f"{path} is not a pidfile (not a regular file)", EXIT_USAGE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CtlError(f"not running (no pidfile {path})", EXIT_NOT_RUNNING) from None
    except OSError as exc:
        raise CtlError(f"cannot read pidfile {path}: {exc.strerror}", EXIT_USAGE) from None
    try:
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else 0


def _locked(path: str) -> bool:
    """Whether anyone holds an flock on ``path``, read from /proc/locks (not taken)."""
    try:
        info = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return False
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return any("FLOCK" in line and "->" not in line and device in line.split() for line in lines)


def _describe(status: dict[str, Any]) -> str:
    words = [
        f"pid={status.get('pid')}", f"generation={status.get('generation')}",
        f"state={status.get('state')}", f"active_connections={status.get('active_connections')}",
    ]  # fmt: skip
    if status.get("workers") is not None:
        words.append(f"workers={status.get('workers')}")
    last = status.get("last_reload")
    if isinstance(last, dict) and not last.get("ok"):
        words.append(f"last_reload=failed({last.get('reason')})")
    return " ".join(words)


def _summary(status: dict[str, Any]) -> str:
    summary = status.get("summary") or {}
    return (
        f"{summary.get('served_during_drain', '?')} served during the drain, "
        f"{summary.get('forced', '?')} cut, {summary.get('elapsed', '?')}s"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno) if exc.errno != errno.ETIMEDOUT else "timed out"
    return str(exc) or type(exc).__name__


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value
