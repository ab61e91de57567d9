"""What a new user reads first: ``--help``, the banner, log times, why an import failed.

- ``--help`` names the kind of each value (``--grace SECONDS``), never a word of the flag;
- the start-up banner names the version, the target, the address and the worker count,
  in words ("1 worker"), never a Python tuple, and is never taken for the readiness line;
- every log line's time carries its zone (ISO 8601), in text and in JSON;
- a target whose own code fails to import shows the app's frames of the traceback
  (not importlib's, not graceserve's) under the one-line reason, at the default level,
  and the reasons that are not the app's bug say what to do.
"""

from __future__ import annotations

import datetime
import json
import re
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from graceserve import __version__
from graceserve.config import build_parser
from graceserve.logformat import iso_time
from graceserve.process.banner import count_of
from graceserve.process.readiness import READY_PATTERN, parse_ready
from testsupport.process import ServerProcess

StartServer = Callable[..., ServerProcess]

# -- --help ------------------------------------------------------------------------------

PLACEHOLDERS = {
    "ADDRESS", "SECONDS", "PATH", "N", "N|auto", "BYTES", "LIST", "PATH|-",
    "DIR", "FILE", "MASK", "NAME=VALUE",
}  # fmt: skip


def test_help_placeholders_name_the_kind_of_value() -> None:
    text = build_parser().format_help()
    # "  --grace SECONDS, --graceful-timeout SECONDS": the placeholder before the comma
    options = re.findall(r"^  (--[\w-]+)(?: (\{[^}\s]*\}|[^\s,]+))?", text, re.MULTILINE)
    assert len(options) > 20, text
    for flag, metavar in options:
        if not metavar or flag in ("--help", "--version", "--preload"):
            continue
        assert metavar in PLACEHOLDERS or re.fullmatch(r"\{[a-z]+(,[a-z]+)+\}", metavar), (
            flag,
            metavar,
        )
    for expected in (
        "--grace SECONDS",
        "--bind ADDRESS",
        "--log-format {text,json}",
        "--log-level {debug,info,warning,error}",
        "--pidfile PATH",
        "--workers N|auto",
        "--max-body-size BYTES",
        "--cert-reqs {none,optional,required}",
    ):
        assert expected in text, expected
    for wrong in ("--grace GRACE", "--log-format LOG", "--max-connections MAX", "--bind BIND"):
        assert wrong not in text


# -- log times -----------------------------------------------------------------------------


def parse_time(stamp: str) -> datetime.datetime:
    """ISO 8601 with its zone (``Z`` too, which 3.10's fromisoformat does not read)."""
    moment = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, stamp
    return moment


def test_iso_time_has_milliseconds_and_a_zone() -> None:
    now = time.time()
    utc = iso_time(now, utc=True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utc), utc
    local = iso_time(now)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", local), local
    assert abs(parse_time(utc).timestamp() - now) < 0.002
    assert abs(parse_time(local).timestamp() - now) < 0.002


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "tz", "offset"),
    [("text", "UTC0", "+00:00"), ("text", "XYZ-3", "+03:00"), ("text", "ABC+5:30", "-05:30"),
     ("json", "XYZ-3", "Z")],
)  # fmt: skip
def test_log_lines_carry_their_zone(
    start_server: StartServer, fmt: str, tz: str, offset: str
) -> None:
    before = time.time()
    server = start_server(["--bind", "127.0.0.1:0", "--log-format", fmt], env={"TZ": tz})
    server.wait_ready()
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    lines = [line for line in server.output.splitlines() if line.strip()]
    assert len(lines) >= 3, server.output
    for line in lines:
        stamp = json.loads(line)["time"] if fmt == "json" else line.split(" ", 1)[0]
        assert stamp.endswith(offset), line
        moment = parse_time(stamp).timestamp()
        assert before - 1 <= moment <= time.time() + 1, line


# -- the banner ----------------------------------------------------------------------------

WSGI_APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\\n"]
"""


def test_count_of_says_one_worker() -> None:
    assert count_of(1, "worker") == "1 worker"
    assert count_of(2, "worker") == "2 workers"
    assert count_of(0, "worker") == "0 workers"


def banner_of(server: ServerProcess) -> str:
    return server.wait_for_line(r"graceserve \S+ \(Python [\d.]+\): serving .*")[0]


def test_banner_names_version_target_address_and_one_worker(
    start_server: StartServer, tmp_path: Path
) -> None:
    (tmp_path / "hello.py").write_text(WSGI_APP)
    server = start_server(["hello:app", "--bind", "127.0.0.1:0"], cwd=tmp_path)
    host, port = server.wait_ready()
    banner = banner_of(server)
    assert (
        f"graceserve {__version__} (Python {sys.version.split()[0]}): serving hello:app "
        f"(a WSGI app) at {host}:{port}, 1 worker (pid {server.proc.pid})"
    ) == banner
    assert READY_PATTERN.search(banner) is None  # never taken for the readiness line
    assert parse_ready(server.output).port == port  # type: ignore[union-attr]
    lines = server.output.splitlines()
    assert lines.index(next(line for line in lines if banner in line)) == 0  # the first line
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_banner_of_a_supervisor_counts_workers_in_words(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(["--bind", "127.0.0.1:0", "--workers", "2"])
    server.wait_for_line(r"supervisor pid \d+: 2 workers ready")
    ready = parse_ready(server.output)
    assert ready is not None
    banner = banner_of(server)
    assert banner.endswith(
        f"serving the demo app at 127.0.0.1:{ready.port}, 2 workers "
        f"(supervisor pid {server.proc.pid})"
    ), banner
    assert "('127.0.0.1'" not in server.output  # no Python tuple anywhere
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_banner_of_a_handler_and_of_json_logs(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(
        ["examples.hello_http:Handler", "--bind", "127.0.0.1:0", "--log-format", "json"]
    )
    server.wait_ready()
    entry = json.loads(server.output.splitlines()[0])
    assert entry["event"] == "banner"
    assert entry["target"] == "examples.hello_http:Handler"
    assert entry["workers"] == 1
    assert entry["version"] == __version__
    assert "(an HTTP handler)" in entry["message"]
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


# -- a target that cannot be imported ------------------------------------------------------

MODULES = {
    "outer": "import db\n",
    "db": """\
        import os


        def connect():
            raise RuntimeError("db not configured")


        connect()
        """,
    "needsdep": "import graceserve_no_such_dependency\n",
    "factory": """\
        def create_app():
            settings = {}
            return settings["missing"]


        def make_app():
            return lambda environ, start_response: []
        """,
}


def failed_start(
    start_server: StartServer, tmp_path: Path, *args: str
) -> tuple[list[str], ServerProcess]:
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    server = start_server([*args, "--bind", "127.0.0.1:0"], cwd=tmp_path)
    assert server.wait_exit() == 3
    assert "listening on" not in server.output
    return [line for line in server.output.splitlines() if line.strip()], server


def assert_only_app_frames(lines: list[str], files: list[str]) -> None:
    """A standard traceback whose frames are exactly ``files``, in order."""
    assert lines[0] == "Traceback (most recent call last):", lines
    frames = re.findall(r'^  File "([^"]+)", line \d+', "\n".join(lines), re.MULTILINE)
    assert [Path(frame).name for frame in frames] == files, lines
    text = "\n".join(lines)
    assert "importlib" not in text
    assert not re.search(r"graceserve[/\\]", text)  # no frame of graceserve's own files


def test_an_error_raised_at_import_shows_the_app_frames(
    start_server: StartServer, tmp_path: Path
) -> None:
    lines, _ = failed_start(start_server, tmp_path, "outer:app")
    assert re.search(
        r" ERROR cannot start: importing 'outer' failed: RuntimeError: db not configured$",
        lines[0],
    ), lines[0]
    assert_only_app_frames(lines[1:], ["outer.py", "db.py", "db.py"])
    assert '    raise RuntimeError("db not configured")' in lines
    assert lines[-1] == "RuntimeError: db not configured"


def test_the_traceback_is_one_json_field(start_server: StartServer, tmp_path: Path) -> None:
    lines, _ = failed_start(start_server, tmp_path, "outer:app", "--log-format", "json")
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["event"] == "start_failed"
    assert entry["exit_code"] == 3
    assert (
        entry["message"]
        == "cannot start: importing 'outer' failed: RuntimeError: db not configured"
    )
    assert_only_app_frames(entry["traceback"].splitlines(), ["outer.py", "db.py", "db.py"])


def test_a_missing_dependency_names_the_interpreter(
    start_server: StartServer, tmp_path: Path
) -> None:
    lines, _ = failed_start(start_server, tmp_path, "needsdep:app")
    assert "ModuleNotFoundError: No module named 'graceserve_no_such_dependency'" in lines[0]
    assert f"not installed for {sys.executable}, the Python running graceserve" in lines[0]
    assert_only_app_frames(lines[1:], ["needsdep.py"])


def test_a_missing_target_module_says_where_it_looked(
    start_server: StartServer, tmp_path: Path
) -> None:
    lines, server = failed_start(start_server, tmp_path, "nosuchmodule:app")
    assert len(lines) == 1, server.output
    assert f"no module named 'nosuchmodule' in {tmp_path} or on sys.path" in lines[0]
    assert "run graceserve from the directory that holds it" in lines[0]


def test_a_missing_attribute_suggests_a_near_name(
    start_server: StartServer, tmp_path: Path
) -> None:
    lines, server = failed_start(start_server, tmp_path, "factory:make_ap()")
    assert len(lines) == 1, server.output
    assert "module 'factory' has no attribute 'make_ap' (did you mean 'make_app'?)" in lines[0]


def test_a_factory_that_raises_shows_its_frames(start_server: StartServer, tmp_path: Path) -> None:
    lines, _ = failed_start(start_server, tmp_path, "factory:create_app()")
    assert "calling factory.create_app() failed: KeyError: 'missing'" in lines[0]
    assert_only_app_frames(lines[1:], ["factory.py"])
    assert '    return settings["missing"]' in lines


@pytest.mark.slow
def test_with_workers_each_failing_worker_shows_the_app_frames(
    start_server: StartServer, tmp_path: Path
) -> None:
    lines, server = failed_start(start_server, tmp_path, "outer:app", "--workers", "2")
    assert "Traceback (most recent call last):" in lines, server.output
    assert 'File "' + str(tmp_path / "db.py") + '", line 5, in connect' in server.output
    assert "importlib" not in server.output
