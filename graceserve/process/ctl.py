"""``graceserve ctl graceful|stop|status``: the apachectl of graceserve.

Why this module exists: a reload that returns before the new code serves, or that
reports success when the new code cannot import, is a deploy tool that lies
(``ExecReload=kill -HUP`` did both).  ``ctl`` talks to the running server only
over what the server owns, and never guesses:

- the pidfile names the process; its ``flock`` (seen in ``/proc/locks``, without
  taking it) says whether anyone holds it;
- the control socket next to it (``<pidfile>.ctl``, ``graceserve.process.control``) must
  answer ``status`` for the same pid; only then is a signal sent, through a
  pidfd opened while the server is known to be alive (immune to pid reuse);
- ``graceful`` reads how many reloads the server has begun, sends HUP and waits
  on the control socket for the outcome of the next one by number: that one
  began after the call (a HUP during a reload is queued, never lost), so it
  loaded the code on disk at the time of the call or later.  The new
  generation serves (0), or the reload failed, with the server's reason (1);
- ``stop`` first sends ``wait`` (until stopped), then TERM; the server answers
  that connection with its exit code and drain summary just before it closes
  the socket, so ``ctl`` learns them although the server is not its child,
  then waits until the process is gone and exits with that code.
- TERM or INT (``systemctl stop`` during ``systemctl reload`` signals the
  reload's control process too) ends the wait at once: if the server is
  stopping (or starts to within ``INTERRUPT_GRACE``: systemd signals both at
  the same moment), that is what was asked for, and ``ctl`` says so and exits
  0; otherwise it exits 1, the outcome unknown.

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

from graceserve.errors import EXIT_USAGE
from graceserve.process.control import control_path, request

__all__ = ["EXIT_FAILED", "EXIT_NOT_RUNNING", "main"]

EXIT_FAILED = 1  # the reload failed or timed out, the stop could not be followed
EXIT_NOT_RUNNING = 3  # as LSB status: nothing runs
STATUS_TIMEOUT = 5.0  # seconds for one status answer
START_TIMEOUT = 30.0  # the server's --start-timeout, if it does not say
HAND_OVER = 10.0  # seconds a reload may take, beyond it, to hand over
STOP_MARGIN = 10.0  # seconds beyond the server's drain delay + grace
EXIT_MARGIN = 5.0  # seconds for the process to be gone after it reported
INTERRUPT_GRACE = 2.0  # seconds, once interrupted, for the server to show it is stopping
_POLL = 0.05
_STOPPING = ("draining", "stopped")


class _InterruptedError(Exception):
    """TERM or INT arrived (raised by the handler ``main`` installs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    for each in (signal.SIGTERM, signal.SIGINT):  # the first one decides
        signal.signal(each, signal.SIG_IGN)
    raise _InterruptedError(signum)


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
    server: _Server | None = None
    previous = {each: signal.signal(each, _interrupt) for each in (signal.SIGTERM, signal.SIGINT)}
    try:
        if not pidfile:
            raise CtlError("no pidfile: give --pidfile or set GRACESERVE_PIDFILE", EXIT_USAGE)
        server = _Server(pidfile)
        action = {"status": _do_status, "graceful": _do_graceful, "stop": _do_stop}
        return action[args.action](server, args)
    except CtlError as exc:
        print(f"graceserve ctl {args.action}: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except _InterruptedError as exc:
        return _interrupted(args.action, server, exc.signum)
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)
        if server is not None:
            server.close()


def _interrupted(action: str, server: _Server | None, signum: int) -> int:
    """TERM/INT ended the wait: 0 if the server is stopping (or gone), else 1."""
    name = signal.Signals(signum).name
    if server is None:
        print(f"graceserve ctl {action}: interrupted by {name}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    deadline = time.monotonic() + INTERRUPT_GRACE
    state = "?"
    while True:
        if not server.alive():
            state = "gone"
            break
        with contextlib.suppress(OSError, ValueError, CtlError):
            state = str(_status(server.socket, timeout=1.0).get("state"))
        if state in _STOPPING or time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    if state in (*_STOPPING, "gone"):
        print(
            f"graceserve ctl {action}: interrupted by {name}; pid {server.pid} is stopping "
            f"({state}): nothing more to wait for", file=sys.stderr, flush=True,
        )  # fmt: skip
        return 0
    print(
        f"graceserve ctl {action}: interrupted by {name} before the outcome; pid "
        f"{server.pid} is {state}", file=sys.stderr, flush=True,
    )  # fmt: skip
    return EXIT_FAILED


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
        "--timeout", type=_seconds, help="seconds to wait (graceful: twice the server's "
        "--start-timeout + 25, 85 by default; stop: drain delay + grace + 10)",
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
    if before.get("state") in _STOPPING:
        raise CtlError(f"pid {server.pid} is stopping ({before.get('state')}); not reloading")
    begun = int(before.get("reloads_started", before["reloads"]))  # older servers: "reloads"
    if args.timeout is not None:
        timeout = args.timeout
    else:
        start = float(before.get("start_timeout") or START_TIMEOUT)
        timeout = 2 * (start + HAND_OVER) + 5  # a reload in progress, then ours
    message = {"cmd": "wait", "reloads": begun, "stopping": True, "timeout": timeout}
    answer = _ask(server, message, timeout, lambda: server.signal(signal.SIGHUP))
    status = answer["status"]
    if not answer.get("done"):
        raise CtlError(f"no new generation after {timeout:g}s; {_describe(status)}")
    if status.get("state") in _STOPPING:
        raise CtlError(f"the server is stopping instead of reloading: {_describe(status)}")
    outcome = _outcome(status, begun + 1)
    if not outcome.get("ok"):
        raise CtlError(
            f"reload failed: {outcome.get('reason', 'no reason given')}; generation "
            f"{status.get('generation')} (pid {server.pid}) still serving"
        )
    with contextlib.suppress(OSError, ValueError, CtlError):
        status = _status(server.socket)  # the new generation's own answer, if it has one
    print(
        f"graceful: generation {outcome.get('generation')} serving: {_describe(status)}",
        flush=True,
    )
    return 0


def _outcome(status: dict[str, Any], number: int) -> dict[str, Any]:
    """The outcome of reload attempt ``number`` (the last one's, from an older server)."""
    for entry in status.get("recent_reloads") or []:
        if isinstance(entry, dict) and entry.get("number") == number:
            return entry
    last = status.get("last_reload")
    return last if isinstance(last, dict) else {}


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


def _status(path: str, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
    try:
        answer = request(path, {"cmd": "status"}, timeout)
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
    reload = status.get("reload")
    if isinstance(reload, dict):
        step = str(reload.get("step")).replace(" ", "-")
        words.append(f"reload=generation-{reload.get('generation')}-{step}")
    if status.get("reload_pending"):
        words.append("next_reload=queued")
    last = status.get("last_reload")
    if isinstance(last, dict) and not last.get("ok"):
        words.append(f"last_reload=failed({last.get('reason')})")
    addresses = status.get("addresses")  # older servers do not say
    if isinstance(addresses, list) and addresses:
        words.append("addresses=" + ",".join(str(address) for address in addresses))
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
