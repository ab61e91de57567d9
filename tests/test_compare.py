"""Sanity of the comparison harness (bench/compare.py), not its figures.

Only graceserve and the stdlib peers (no third-party package needed), with
the harness's tiny "sanity" durations: every server starts, every scenario
completes and yields a row.  The numbers themselves are printed by
``python bench/compare.py``, never asserted here.  The wrk scenarios are
skipped when wrk is not installed; the chart when matplotlib is not.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
STDLIB_ONLY = ("graceserve", "graceserve (WSGI)", "stdlib (plain)", "stdlib (naive)")
NO_WRK = "wrk is not installed (bash bench/setup installs it)"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("compare")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def cfg(compare: ModuleType) -> Any:  # compare.Config, loaded at run time
    return compare.MODES["sanity"]


def spec(compare: ModuleType, name: str) -> object:
    return next(s for s in compare.SPECS if s.name == name)


OUTCOMES = ("completed", "reset", "no response", "refused", "other")


@pytest.mark.slow
@pytest.mark.parametrize("name", STDLIB_ONLY)
def test_inflight_scenario_completes(compare: ModuleType, cfg: Any, name: str) -> None:
    row = compare.inflight_run(spec(compare, name), cfg)
    assert sum(row[k] for k in OUTCOMES) == cfg.in_flight
    assert row["exit"] != "killed"
    assert row["new conn"] != "-"


@pytest.mark.slow
@pytest.mark.parametrize("name", STDLIB_ONLY)
def test_idle_scenario_completes(compare: ModuleType, cfg: Any, name: str) -> None:
    row = compare.idle_run(spec(compare, name), cfg)
    seen = row["closed before"] + row["FIN"] + row["RST"] + row["open at exit limit"]
    assert seen == cfg.idle_conns
    assert row["exit"] != "killed"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["graceserve", "stdlib (naive)"])
def test_second_signal_scenario_completes(compare: ModuleType, cfg: Any, name: str) -> None:
    row = compare.second_run(spec(compare, name), cfg, signal.SIGINT)
    assert row["completed"] + row["cut"] == cfg.second_in_flight
    assert row["exit"] != "killed"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason=NO_WRK)
def test_wrk_scenarios_complete(compare: ModuleType, cfg: Any) -> None:
    row = compare.wrk_run(spec(compare, "graceserve"), cfg, use_perf=False)
    assert row["requests"] > 0
    assert row["exit"] != "killed"
    results = compare.throughput([spec(compare, n) for n in STDLIB_ONLY[:2]], cfg)
    assert all(len(runs) == cfg.tput_rounds and runs[0].requests > 0 for runs in results.values())


@pytest.mark.slow
def test_report_is_written(
    compare: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--sanity", "--servers", "graceserve", "--scenarios", "1", "--out", str(tmp_path)]
    assert compare.run([*argv, "--no-chart"]) == 0
    report = (tmp_path / "comparison.md").read_text()
    assert report == capsys.readouterr().out
    assert "python bench/compare.py --sanity" in report
    assert "| graceserve |" in report


def test_filters_and_missing_packages(compare: ModuleType) -> None:
    assert [s.name for s in compare.select_specs(["stdlib"])] == list(STDLIB_ONLY[2:])
    assert len(compare.select_specs(None)) == len(compare.SPECS)
    assert all(compare.available(spec(compare, n)) for n in STDLIB_ONLY)


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed"
)
def test_chart_renders(compare: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    compare.write_chart(path, [("a", {"graceserve": 20.0, "x": float("nan")}), ("b", {"y": 1.0})])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
