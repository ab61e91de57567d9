"""Options that only mean something with a supervisor, in every mode.

``--max-requests`` and ``--worker-timeout`` replace a serving process.  The
contract (issue 19): such an option either works in every mode or is refused
at start with one clear line and exit code 2.  Each row accepts either
outcome; what fails is a silent ignore (one process did, until issue 20: its
``--max-requests`` now hands its serving to a worker, ``--worker-timeout`` is
refused).
"""

from __future__ import annotations

import pytest

from testsupport import contract
from testsupport.contract import Recycling
from testsupport.matrix import Lab, rows

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(300)]

PHASES = [{"max requests": contract.max_requests, "worker timeout": contract.worker_timeout}]


def works_or_is_refused(outcome: object) -> None:
    assert isinstance(outcome, Recycling)
    if outcome.refused is not None:
        lines = outcome.refused.output.strip().splitlines()
        assert outcome.refused.code == 2, outcome.refused.output
        assert len(lines) == 1, lines
        assert "Traceback" not in lines[0], lines
    else:
        assert outcome.replaced, outcome.detail


@rows()
def test_max_requests_replaces_a_serving_process_or_is_refused(lab: Lab) -> None:
    """``--max-requests 3``: new pids answer after a few requests, or exit 2 at start."""
    works_or_is_refused(lab.outcome("max requests"))


@pytest.mark.slow
@rows()
def test_worker_timeout_replaces_a_frozen_process_or_is_refused(lab: Lab) -> None:
    """``--worker-timeout 2``: a process whose serving loop froze (the app holds the
    GIL) is killed and replaced, or the option exits 2 at start."""
    works_or_is_refused(lab.outcome("worker timeout"))
