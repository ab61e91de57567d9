"""Waiting without sleeping as synchronisation: poll a condition until a deadline.

Why this module exists: the tests and the harness wait on what they can observe
(a line the server printed, a port leaving LISTEN, a count reaching a number)
and must fail with a clear message when it never comes.  Under pytest a
failure is ``pytest.fail``; outside it (the benchmarks) ``SupportError``.
Thread-safe: each call polls its own predicate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .process import fail

__all__ = ["POLL", "eventually", "wait_until"]

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
