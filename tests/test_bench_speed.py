"""Sanity of the speed harness (bench/speed.py), not its figures.

Its argument parsing (a bad ``--rows`` or ``--servers`` is one line and exit
2), and one tiny real row against graceserve alone (no peer, no venv): the
hello app under wrk for a second, and the 20-connection idle row; the JSON it
writes and the table it prints have the expected shape.  The numbers are
printed by ``python bench/speed.py``, never asserted here.  Skipped when wrk is
not installed (``bash bench/setup`` installs it).
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def speed() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("speed")
    finally:
        sys.path.remove(str(BENCH))


def test_rows_and_servers_are_parsed(speed: ModuleType) -> None:
    args = speed.parse_args(["--quick", "--rows", "hello, c1000", "--servers", "graceserve,uwsgi"])
    assert args.row_list == ["hello", "c1000"]
    assert [p.name for p in args.peers] == [
        "graceserve 1",
        "uWSGI 1x16",
        "graceserve 2",
        "uWSGI 2x16",
    ]
    everything = speed.parse_args([])
    assert everything.row_list == list(speed.ROWS)
    assert len(everything.peers) == len(speed.PEERS)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [["--rows", "hello,bogus"], ["--rows", ","], ["--servers", "nginx"], ["--rounds", "0"]],
)
def test_bad_arguments_are_one_line_and_exit_2(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "speed.py"), *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("speed.py: error: --")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_tiny_real_run_against_graceserve_alone(tmp_path: Path) -> None:
    servers = "graceserve 1,graceserve 2"
    argv = ["--tiny", "--servers", servers, "--rows", "hello,idle", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(BENCH / "speed.py"), *argv],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout
    assert "| req/s (wrk -t2, keep-alive) | graceserve 1 |" in table
    assert "| hello |" in table
    assert "| graceserve 1 | 20 |" in table  # the idle row: all 20 answered
    [written] = tmp_path.glob("speed-*.json")
    data = json.loads(written.read_text())
    assert {"command", "date", "machine", "versions", "config", "rows"} <= set(data)
    assert set(data["rows"]) == {"hello", "idle"}
    hello = data["rows"]["hello"]["graceserve 1"]
    assert hello["rps"] > 0
    assert len(hello["rounds"]) == 1
    assert hello["timeouts"] == [0]
    # The split is a sample half-way through the run: on a loaded machine, what was
    # accepted by then (it once was nothing: a 1 s run).  How evenly: test_workers.py.
    [one] = hello["split"]
    assert len(one) <= 1  # one process
    assert sum(one) <= 50
    [shares] = data["rows"]["hello"]["graceserve 2"]["split"]
    assert len(shares) <= 2  # a supervisor holds none: only its two workers count
    assert sum(shares) <= 50
    assert "| connections per process, half-way | graceserve 2 |" in table
    [idle] = data["rows"]["idle"]["graceserve 1"]
    assert idle["answered"] == 20
    assert idle["FIN"] + idle["RST"] + idle["data"] + idle["open"] == 20
    assert idle["exit"] == "0"
