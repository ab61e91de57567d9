"""CPU per KB of the slowest inputs we know, for every parsing step, at maximal size.

Run from the repository root (stdlib only, nothing to install):

    python bench/parse_worst.py                 # every shape, both limit sets (~1 min)
    python bench/parse_worst.py --quick         # one timed run per shape
    python bench/parse_worst.py --worst 10      # only the 10 slowest lines at the end

Why: every parsing step must be linear in its input, or one client's head
stalls every connection (``re`` holds the GIL).  The shapes
(``testsupport/worstinputs.py``, shared with ``tests/test_parse_linear.py``)
are the crafted inputs that make a backtracking regex or a per-byte loop
blow up, each at the largest size the limits let in: the WSGI server's
(8,190-byte lines) and the handler server's (65,536).  For each, the CPU time
of this thread (``time.thread_time``) per parse, divided by the input's size
in KB.  The goal: well under 1,000 us/KB (a millisecond per KB) for all.

A shape that takes longer than ``--budget`` CPU seconds for one parse is
interrupted (a ``SIGPROF`` timer: ``re`` checks for signals) and reported as
``> budget``: the code before the fix needed minutes for some.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testsupport.worstinputs import HANDLER_LIMITS, WSGI_LIMITS, Case, cases  # noqa: E402


class OverBudgetError(Exception):
    """One parse used more CPU than the budget."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise OverBudgetError


def measure(case: Case, repeats: int, budget: float) -> float | None:
    """Median CPU seconds of one parse; None if one took longer than ``budget``."""
    samples = []
    old = signal.signal(signal.SIGPROF, _interrupt)
    try:
        for _ in range(repeats):
            signal.setitimer(signal.ITIMER_PROF, budget)
            try:
                t0 = time.thread_time()
                case.run()
                samples.append(time.thread_time() - t0)
            except OverBudgetError:
                return None
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
    finally:
        signal.signal(signal.SIGPROF, old)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed parse per shape")
    parser.add_argument("--budget", type=float, default=5.0, help="CPU seconds per parse")
    parser.add_argument("--worst", type=int, default=0, help="list only the N slowest")
    args = parser.parse_args()
    repeats = 1 if args.quick else 5
    rows: list[tuple[float, str]] = []
    print(f"Python {sys.version.split()[0]}, median of {repeats} parse(s), CPU time")
    print(f"{'limits':8} {'step':20} {'shape':42} {'KB':>7} {'ms':>9} {'us/KB':>9}")
    for label, limits in (("wsgi", WSGI_LIMITS), ("handler", HANDLER_LIMITS)):
        for case in cases(limits):
            kb = case.size / 1024
            seconds = measure(case, repeats, args.budget)
            if seconds is None:
                cost = f"> {args.budget * 1e3:.0f}"
                per_kb = f"> {args.budget * 1e6 / kb:.0f}"
                sort_key = float("inf")
            else:
                cost = f"{seconds * 1e3:.2f}"
                per_kb = f"{seconds * 1e6 / kb:.2f}"
                sort_key = seconds / kb
            line = f"{label:8} {case.step:20} {case.shape:42} {kb:7.0f} {cost:>9} {per_kb:>9}"
            rows.append((sort_key, line))
            if not args.worst:
                print(line, flush=True)
    if args.worst:
        for _, line in sorted(rows, reverse=True)[: args.worst]:
            print(line)
    finite = [key for key, _ in rows if key != float("inf")]
    over = len(rows) - len(finite)
    print(f"slowest: {max(finite) * 1e6:.2f} us/KB" + (f"; {over} over budget" if over else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
