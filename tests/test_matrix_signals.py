"""Signals while serving, in every mode: USR1, TTIN/TTOU, a reload that fails.

Rows of the contract matrix (README: "Signals", "Reload (HUP)", "graceserve
ctl"), for a handler and a WSGI app in every mode.  A single process ignores
TTIN/TTOU (README: "ignored by a single process"); a supervisor (``--workers
2``, or a single process after its first HUP) adds or removes a worker.
"""

from __future__ import annotations

import pytest

from testsupport import contract
from testsupport.contract import FailedReload, Signals
from testsupport.matrix import Lab, rows

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(300)]

PHASES = [{"signals": contract.signals, "failed reload": contract.failed_reload}]


def signals(lab: Lab) -> Signals:
    outcome = lab.outcome("signals")
    assert isinstance(outcome, Signals)
    return outcome


@rows()
def test_usr1_dumps_the_stacks_of_every_process_and_serving_goes_on(lab: Lab) -> None:
    outcome = signals(lab)
    assert outcome.dumps == outcome.processes, outcome.log[-3000:]
    assert outcome.after_dump == 200


@rows()
def test_ttin_adds_a_worker_under_a_supervisor_and_ttou_removes_it(lab: Lab) -> None:
    """Under a supervisor one more worker answers, then the count is back; a single
    process logs that it ignores both."""
    outcome = signals(lab)
    n = lab.combo.workers
    if lab.combo.supervised:
        assert outcome.workers == [n, n + 1, n], outcome.workers
        assert outcome.pids_after_ttin == n + 1
    else:
        assert outcome.workers == [None, None, None], outcome.workers
        assert outcome.pids_after_ttin == 1
        assert "SIGTTIN: ignored" in outcome.log


@rows()
def test_a_reload_of_code_that_cannot_import_fails_and_the_old_code_keeps_serving(
    lab: Lab,
) -> None:
    """``ctl graceful`` exits 1 with the reason; the generation stays; every request is
    served; once the code is fixed the next reload works."""
    outcome = lab.outcome("failed reload")
    assert isinstance(outcome, FailedReload)
    assert outcome.failed.returncode == 1, outcome.failed
    assert "broken on purpose" in outcome.failed.stderr + outcome.failed.stdout, outcome.failed
    before, after = outcome.generations
    assert after == before
    assert outcome.statuses == [200] * 5
    assert outcome.fixed.returncode == 0, outcome.fixed
