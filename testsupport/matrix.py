"""The contract matrix's plumbing: combinations, one lab per combination, rows with findings.

Why this module exists: the contract suite (``tests/test_matrix_*.py``) checks
every README guarantee for every target kind in every mode, plain and TLS.
Started one after another, the ~200 servers that takes would cost ~10 minutes
on two cores; most of it is waiting (a grace, a lame duck, an idle timeout).
So for each combination one ``Lab`` runs every scenario the selected rows read
(each matrix module lists its own in ``PHASES``) at once, each on its own
server (or on one shared server where they cannot interfere), and the rows
(test functions) then assert on what the scenarios recorded.  A scenario
that raised re-raises in every row that reads it.

``rows`` parametrises a row over the combinations with session scope, so
pytest runs every row of one combination, from every module, together (one
lab alive at a time); and it marks the combinations a known finding breaks
``xfail(strict=True)``: the suite stays green while a finding is open and
turns red (XPASS) when its fix lands, forcing the marker's removal.  Issue
19's thirteen findings are fixed: no combination is marked today.

Test-only: imports pytest (bench/ never imports this module).
Threading: a Lab runs its scenarios in threads; ``serve`` may be called from
them; rows read outcomes from the test's thread once the lab is set up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from .serve import KINDS, MODES, Mode, Served, TlsFiles, serve

__all__ = [
    "COMBOS",
    "Combo",
    "Finding",
    "Lab",
    "Scenario",
    "lab_fixture_body",
    "phases_of",
    "rows",
]


@dataclass(frozen=True)
class Combo:
    """One column of the matrix: target ``kind`` and ``mode`` (TLS is a scenario's choice)."""

    kind: str
    mode: Mode

    def __str__(self) -> str:
        return f"{self.kind}-{self.mode}"

    @property
    def wsgi(self) -> bool:
        return self.kind == "wsgi"

    @property
    def handler(self) -> bool:
        return self.kind == "handler"

    @property
    def supervised(self) -> bool:
        """A supervisor runs workers: ``--workers 2``, or any mode after a HUP."""
        return self.mode.supervised

    @property
    def workers(self) -> int:
        return self.mode.workers


COMBOS = tuple(Combo(kind, mode) for kind in KINDS for mode in MODES)

Applies = Callable[[Combo], bool]


@dataclass(frozen=True)
class Finding:
    """A way in which main breaks the contract today, and where (``applies``)."""

    text: str
    applies: Applies

    @property
    def reason(self) -> str:
        return f"issue 19: {self.text}"


def rows(*known: Finding, only: Applies | None = None, why_not: str = "") -> pytest.MarkDecorator:
    """Parametrise a row (its ``lab`` fixture) over every combination, one lab each.

    A combination that a ``known`` finding applies to is ``xfail(strict=True)``
    with the findings' reasons; one that ``only`` excludes is skipped
    (``why_not``).  Every row gets the same list in the same order, so pytest
    runs all rows of one combination together (scope="session").
    """
    params = []
    for combo in COMBOS:
        marks: list[pytest.MarkDecorator] = []
        if only is not None and not only(combo):
            marks.append(pytest.mark.skip(reason=why_not or "does not apply"))
        reasons = [finding.reason for finding in known if finding.applies(combo)]
        if reasons and not marks:
            marks.append(pytest.mark.xfail(strict=True, reason="; ".join(reasons)))
        params.append(pytest.param(combo, id=str(combo), marks=marks))
    return pytest.mark.parametrize("lab", params, indirect=True, scope="session")


Scenario = Callable[["Lab"], Any]
"""Does something to servers of the lab's combination; returns what it observed."""

TIMES_VARIABLE = "GRACESERVE_MATRIX_TIMES"
"""An environment variable naming a file: each lab appends how long it took there."""
SCENARIO_TIMEOUT = 120.0  # seconds every scenario of a phase gets, together (a loaded machine)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Lab:
    """The servers and scenario outcomes of one combination, for every selected row.

    ``phases``: lists of named scenarios; the scenarios of a phase run at once
    (each in a thread), the phases one after another (a load phase apart from
    the timing-sensitive ones).  ``serve`` starts a server of this combination,
    closed with the lab.  Use as a context manager: entering runs everything.
    """

    def __init__(
        self,
        combo: Combo,
        phases: Sequence[Mapping[str, Scenario]],
        tls: TlsFiles | None = None,
        timeout: float = SCENARIO_TIMEOUT,
    ) -> None:
        self.combo = combo
        self.phases = phases
        self.tls_files = tls
        self.timeout = timeout
        self._lock = threading.Lock()
        self._servers: list[Served] = []  # guarded by _lock
        self._outcomes: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        """How long each scenario took (for the report of the run time)."""

    # -- for scenarios ------------------------------------------------------------

    def serve(
        self, *, args: Sequence[str] = (), grace: float = 10.0, tls: bool = False, **options: Any
    ) -> Served:
        """A server of this combination with ``args`` (HTTPS with ``tls``), closed with the lab."""
        if tls and self.tls_files is None:
            raise ValueError("this lab has no certificate to serve TLS with")
        served = serve(
            self.combo.kind, self.combo.mode, tls=self.tls_files if tls else None, args=args,
            grace=grace, **options,
        )  # fmt: skip
        with self._lock:
            self._servers.append(served)
        return served

    # -- for rows -----------------------------------------------------------------

    def outcome(self, name: str) -> Any:
        """What scenario ``name`` observed; re-raises what it raised."""
        result = self._outcomes[name]
        if isinstance(result, _Failed):
            raise result.error
        return result

    # -- running ------------------------------------------------------------------

    def _run(self, name: str, scenario: Scenario) -> None:
        started = time.monotonic()
        try:
            self._outcomes[name] = scenario(self)
        except BaseException as exc:  # pytest.fail is a BaseException: keep it for the rows
            self._outcomes[name] = _Failed(exc)
        finally:
            self.seconds[name] = time.monotonic() - started

    def __enter__(self) -> Lab:
        try:
            for phase in self.phases:
                threads = [  # daemons: a scenario hung past the timeout must not keep pytest
                    threading.Thread(
                        target=self._run, args=item, name=f"test-lab-{item[0]}", daemon=True
                    )
                    for item in phase.items()
                ]
                for thread in threads:
                    thread.start()
                deadline = time.monotonic() + self.timeout
                for thread in threads:
                    thread.join(max(0.0, deadline - time.monotonic()))
                hung = [thread.name for thread in threads if thread.is_alive()]
                if hung:
                    raise AssertionError(f"{self.combo}: scenarios still running: {hung}")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill every server the lab started."""
        with self._lock:
            servers, self._servers = self._servers, []
        for served in servers:
            served.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def phases_of(items: Sequence[pytest.Item]) -> list[dict[str, Scenario]]:
    """The union of the ``PHASES`` of the modules that ``items`` (the selected rows) come
    from, phase by phase: what a lab must run for them."""
    merged: list[dict[str, Scenario]] = []
    seen: set[str] = set()
    for item in items:
        module = getattr(item, "module", None)
        uses_lab = "lab" in getattr(item, "fixturenames", ())
        if module is None or module.__name__ in seen or not uses_lab:
            continue
        seen.add(module.__name__)
        for index, phase in enumerate(getattr(module, "PHASES", ())):
            while len(merged) <= index:
                merged.append({})
            merged[index].update(phase)
    return merged


def lab_fixture_body(request: pytest.FixtureRequest, tls: TlsFiles | None) -> Iterator[Lab]:
    """The body of the ``lab`` fixture: the lab of ``request.param`` for the selected rows."""
    combo = request.param
    assert isinstance(combo, Combo), combo
    started = time.monotonic()
    with Lab(combo, phases_of(request.session.items), tls) as lab:
        setup = time.monotonic() - started
        yield lab
    if times := os.environ.get(TIMES_VARIABLE):  # where to append how long the lab took
        slowest = sorted(lab.seconds.items(), key=lambda item: -item[1])[:3]
        with open(times, "a", encoding="utf-8") as file:
            file.write(
                f"{combo}: lab {setup:.1f}s; slowest: "
                + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in slowest)
                + "\n"
            )
