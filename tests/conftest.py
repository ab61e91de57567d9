"""Shared fixtures: a real graceserve process, and a check that tests leave no trace.

Rules for every test in this suite: real sockets on 127.0.0.1 only, no sleeps
as synchronisation (wait on events, on the lines the server prints, or poll
with a deadline), every socket with a timeout, every loop bounded, and only
processes we started are signalled (by pid or process group).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(
    r"listening on (?P<scheme>http|tcp)://"
    r"(?:\[(?P<host6>[^\]]+)\]|(?P<host>[^\s:\]]+)):(?P<port>\d+)"
)
WATCHED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def _leaves_process_state_alone() -> Iterator[None]:
    """Signal handlers and threads are back to what they were after each test."""
    handlers = {signum: signal.getsignal(signum) for signum in WATCHED_SIGNALS}
    threads = set(threading.enumerate())
    yield
    assert {signum: signal.getsignal(signum) for signum in WATCHED_SIGNALS} == handlers
    wait_until(
        lambda: not [t for t in threading.enumerate() if t not in threads and t.is_alive()],
        timeout=10.0,
        what="threads started by the test to end",
    )


class Call(threading.Thread):
    """Run ``fn(*args)`` in a thread and keep its result or exception."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(name=f"test-call-{getattr(fn, '__name__', 'fn')}", daemon=True)
        self._fn = fn
        self._args = args
        self.value: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self._fn(*self._args)
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 10.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.value


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def graceserve_log() -> Iterator[list[str]]:
    """Messages logged on the "graceserve" logger during the test (whatever its propagation)."""
    logger = logging.getLogger("graceserve")
    handler = _Messages()
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


class ServerProcess:
    """``python -m graceserve ...`` in its own session, its stderr read line by line."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        prefix: list[str] | None = None,
        stdout: int | None = subprocess.DEVNULL,
    ) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [full_env.get("PYTHONPATH")])]
        )
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        for key in [k for k in full_env if k.startswith("GRACESERVE_")]:
            del full_env[key]
        full_env.update(env or {})
        command = [*(prefix or []), sys.executable, "-m", "graceserve", *args]
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="test-stderr-reader", daemon=True)
        self._reader.start()
        self.address: tuple[str, int] | None = None

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Everything the server printed on stderr so far."""
        with self._changed:
            return "\n".join(self.lines)

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
                    pytest.fail(f"no line matching {regex.pattern!r}; stderr:\n{self.output}")
                self._changed.wait(min(remaining, 0.5))

    def wait_ready(self, timeout: float = 15.0) -> tuple[str, int]:
        """Wait for the readiness line; return the real (host, port)."""
        match = self.wait_for_line(READY, timeout)
        self.address = (match["host6"] or match["host"], int(match["port"]))
        return self.address

    def send(self, signum: int) -> None:
        """Send ``signum`` to the server process (only ours, by pid)."""
        os.kill(self.proc.pid, signum)

    def wait_exit(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit; its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server did not exit within {timeout}s; stderr:\n{self.output}")
        self._reader.join(timeout=5.0)
        return code

    def stop(self) -> None:
        """Kill the process group (a restart's successor is in it too); release everything."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(timeout=5.0)
        # Closing under a reader still blocked (a stray holder of the pipe) would hang.
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_server(args, env=..., cwd=...)``; every process is killed at teardown."""
    started: list[ServerProcess] = []

    def start(args: list[str] | None = None, **kwargs: object) -> ServerProcess:
        process = ServerProcess(list(args or []), **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
