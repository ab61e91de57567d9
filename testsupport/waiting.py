"""Waiting without sleeping as synchronisation: poll a condition until a deadline.

Why this module exists: the tests and the harness wait on what they can observe
(a line the server printed, a port leaving LISTEN, a count reaching a number)
and must fail with a clear message when it never comes.  Under pytest a
failure is ``pytest.fail``; outside it (the benchmarks) ``SupportError``.
Thread-safe: each call polls its own predicate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .process import fail

__all__ = ["POLL", "Call", "eventually", "wait_until"]

POLL = 0.005
"""Seconds between two looks at the condition."""


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(POLL)


def eventually(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true or for ``timeout`` seconds; whether it came true
    (for a scenario that records what it saw instead of failing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


class Call(threading.Thread):
    """Run ``fn(*args)`` in a daemon thread and keep its result or exception.

    Threading: ``result`` is called from one other thread (the test's), which
    joins this one before it reads what ``run`` stored.
    """

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
        """What ``fn`` returned (or raise what it raised), waiting up to ``timeout`` seconds."""
        self.join(timeout)
        if self.is_alive():
            fail(f"{self.name} still running after {timeout}s")
        if self.error is not None:
            raise self.error
        return self.value
