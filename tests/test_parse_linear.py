"""Every parsing step is linear in its input: no crafted shape of maximal size is slow.

The shapes are ``testsupport/worstinputs.py``'s (the benchmark
``bench/parse_worst.py`` prints their cost per KB).  Each is parsed once and
its CPU time (``time.process_time``: a loaded machine's waiting does not
count) must stay under ``BOUND``, generous against noise: the largest input
takes a few tens of milliseconds, a quadratic regex took minutes.  A
``SIGPROF`` timer stops a parse that runs far past the bound, so a regression
fails in seconds instead of hanging the suite (``re`` checks for signals).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from testsupport.worstinputs import HANDLER_LIMITS, WSGI_LIMITS, Case, cases

BOUND = 0.5  # CPU seconds for one parse of a maximal input
WATCHDOG = 5.0  # CPU seconds after which a parse is interrupted


class _TooSlowError(Exception):
    pass


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise _TooSlowError


@pytest.fixture
def watchdog() -> Iterator[None]:
    old = signal.signal(signal.SIGPROF, _interrupt)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


# The handler's limits are the larger (its inputs take seconds to build and parse): those
# cases are ``slow``; the WSGI cases keep every step and shape in the fast suite.
_CASES = [
    pytest.param(
        case,
        id=f"{label}-{case.step}-{case.shape}",
        marks=[pytest.mark.slow] if label == "handler" else [],
    )
    for label, limits in (("wsgi", WSGI_LIMITS), ("handler", HANDLER_LIMITS))
    for case in cases(limits)
]


def _cpu_seconds(case: Case) -> float:
    """CPU time of one parse; fails the test if it runs past the watchdog."""
    signal.setitimer(signal.ITIMER_PROF, WATCHDOG)
    started = time.process_time()
    try:
        case.run()
    except _TooSlowError:
        pytest.fail(f"{case.size} bytes still parsing after {WATCHDOG} s of CPU")
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    return time.process_time() - started


@pytest.mark.usefixtures("watchdog")
@pytest.mark.parametrize("case", _CASES)
def test_a_maximal_input_parses_in_bounded_time(case: Case) -> None:
    _cpu_seconds(case)  # warm: first-use costs (imports, caches) are not the input's
    taken = _cpu_seconds(case)
    assert taken < BOUND, f"{case.size} bytes took {taken:.2f} s of CPU"
