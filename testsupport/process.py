"""Processes started for a test or a benchmark: own session, stderr read line by line.

Why this module exists: the tests and the benchmarks both start servers
(``python -m graceserve``, the stdlib peers, gunicorn) and must never leave one
behind.  Each runs in its own session, so its whole process group (a graceful
restart's successor included) can be killed by group id; a thread reads its
stderr all the time, so a server that logs a lot never blocks on a full pipe;
and the readiness line is found and read with graceserve's own parser.

Threading: one reader thread per process appends to ``lines`` under a
Condition; every method may be called from any thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from graceserve.process.readiness import READY_PATTERN, Ready, parse_ready

__all__ = ["REPO", "ChildProcess", "ServerProcess", "SupportError", "child_env", "fail"]

REPO = Path(__file__).resolve().parent.parent
"""The repository root: put first on a child's ``PYTHONPATH``."""


class SupportError(AssertionError):
    """A wait in this package ran out (raised outside pytest: the benchmarks)."""


def fail(message: str) -> NoReturn:
    """Fail: the test (``pytest.fail``) under pytest, else raise SupportError.

    pytest is looked up, not imported: the benchmarks run without it.
    """
    pytest = sys.modules.get("pytest")
    if pytest is not None:
        pytest.fail(message)
    raise SupportError(message)


def child_env(
    extra: Mapping[str, str] | None = None, path: Sequence[str | os.PathLike[str]] = ()
) -> dict[str, str]:
    """The environment for a child: this repository (then ``path``) first on ``PYTHONPATH``.

    No ``GRACESERVE_*`` variable leaks in from ours (only ``extra`` may set one);
    ``PYTHONUNBUFFERED=1`` unless ``extra`` or our environment says otherwise.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRACESERVE_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *map(str, path), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


class ChildProcess:
    """``command`` in its own session, its stderr collected line by line in ``lines``.

    ``max_lines`` bounds what is kept (later lines are read and dropped), for
    servers that may log without end under load.  ``pass_fds``: descriptors the
    child inherits (a listening socket handed to it, as ``fd@N`` to HAProxy).
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: int | None = subprocess.DEVNULL,
        max_lines: int | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=child_env() if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        self.lines: list[str] = []
        self.address: tuple[str, int] | None = None
        self.ready: Ready | None = None
        self._max_lines = max_lines
        self._seen = 0
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="test-stderr-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                if self._max_lines is None or len(self.lines) < self._max_lines:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Everything the process printed on stderr so far."""
        with self._changed:
            return "\n".join(self.lines)

    def new_lines(self, timeout: float) -> list[str]:
        """The lines not returned by an earlier call (waiting up to ``timeout`` for one)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.lines) > self._seen, timeout)
            new = self.lines[self._seen :]
            self._seen = len(self.lines)
        return new

    def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = 15.0) -> re.Match[str]:
        """The first stderr line matching ``pattern``, waiting for it if need be."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    fail(f"no line matching {regex.pattern!r}; stderr:\n{self.output}")
                self._changed.wait(min(remaining, 0.5))

    def wait_for_line_or_exit(
        self, pattern: str | re.Pattern[str], timeout: float = 15.0
    ) -> re.Match[str] | None:
        """The first stderr line matching ``pattern``, or None once the process has
        exited (and its stderr ended) without printing one; fail after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                if not self._reader.is_alive():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    fail(f"no line matching {regex.pattern!r}; stderr:\n{self.output}")
                self._changed.wait(min(remaining, 0.5))
        self.proc.wait(5)
        return None

    def wait_readiness(self, timeout: float = 15.0) -> Ready:
        """Wait for the readiness line; what it says (also kept in ``ready``)."""
        ready = parse_ready(self.wait_for_line(READY_PATTERN, timeout)[0])
        assert ready is not None  # the pattern matched it
        self.ready = ready
        return ready

    def wait_ready(self, timeout: float = 15.0) -> tuple[str, int]:
        """Wait for the readiness line of a TCP server; the real (host, port)."""
        ready = self.wait_readiness(timeout)
        if ready.path is not None:
            fail(f"the server listens on {ready.url}, not on TCP (use wait_readiness)")
        address = ready.address
        assert isinstance(address, tuple)
        self.address = address
        return address

    def send(self, signum: int) -> None:
        """Send ``signum`` to the process itself (only ours, by pid; not its group)."""
        os.kill(self.proc.pid, signum)

    def exited_within(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` for the exit; the exit code, or None if still running.

        Woken by a pidfd the moment the process exits (``Popen.wait`` with a
        timeout sleeps in steps of up to 50 ms, too coarse to time an exit).
        """
        try:
            if self.proc.returncode is None:
                pidfd = os.pidfd_open(self.proc.pid)
                try:
                    poller = select.poll()
                    poller.register(pidfd, select.POLLIN)
                    if not poller.poll(max(0, int(timeout * 1000))):
                        return None
                finally:
                    os.close(pidfd)
            code = self.proc.wait(5)
            self._reader.join(2)  # stderr's last lines
            return code
        except subprocess.TimeoutExpired:
            return None

    def wait_exit(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit; its exit code (fail if it does not)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            fail(f"process did not exit within {timeout}s; stderr:\n{self.output}")
        self._reader.join(timeout=5.0)
        return code

    def kill_group(self, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to the process group (only ours: it has its own session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def stop(self) -> None:
        """Kill the process group (a restart's successor is in it too); release everything."""
        self.kill_group()
        self.proc.wait(10)
        self._reader.join(timeout=5.0)
        # Closing under a reader still blocked (a stray holder of the pipe) would hang.
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()


class ServerProcess(ChildProcess):
    """``python -m graceserve ARGS`` (after an optional command ``prefix``) in its own session.

    ``env`` is added to ``child_env()``.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        prefix: Sequence[str] | None = None,
        stdout: int | None = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
    ) -> None:
        command = [*(prefix or []), sys.executable, "-m", "graceserve", *args]
        super().__init__(command, env=child_env(env), cwd=cwd, stdout=stdout, pass_fds=pass_fds)
