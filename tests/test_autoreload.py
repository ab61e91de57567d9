"""``--reload``'s watcher: which files it sees, and that every kind of change is one call.

The watcher runs for real (its thread, the real file system, short intervals);
``on_change`` puts what it got on a queue the test waits on.  Changes are made
with explicit modification times, so a coarse file-system clock cannot hide one.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graceserve.process.autoreload import Watcher, scan
from testsupport.process import ServerProcess
from testsupport.waiting import wait_until
from testsupport.workers import get

WAIT = 10.0  # seconds a change may take to be seen on a loaded machine


def touch(path: Path, text: str, stamp: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    touch(tmp_path / "app.py", "VERSION = 1\n", 1_000_000_000)
    touch(tmp_path / "pkg" / "views.py", "X = 1\n", 1_000_000_000)
    touch(tmp_path / "pkg" / "__pycache__" / "views.cpython-311.py", "", 1_000_000_000)
    touch(tmp_path / ".git" / "hook.py", "", 1_000_000_000)
    touch(tmp_path / "venv" / "lib" / "dep.py", "", 1_000_000_000)
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    touch(tmp_path / "README.md", "not python\n", 1_000_000_000)
    return tmp_path


@pytest.fixture
def calls(tree: Path) -> Iterator[queue.Queue[list[Path]]]:
    got: queue.Queue[list[Path]] = queue.Queue()
    watcher = Watcher([tree], interval=0.02, settle=0.02, on_change=got.put)
    watcher.start()
    assert watcher.ready.wait(WAIT)
    yield got
    watcher.stop()
    watcher.join(WAIT)
    assert not watcher.is_alive()


def test_only_the_apps_python_files_are_watched(tree: Path) -> None:
    stamps, cut = scan([tree])
    assert sorted(path.relative_to(tree).as_posix() for path in stamps) == [
        "app.py",
        "pkg/views.py",
    ]
    assert not cut


def test_the_number_of_files_is_bounded(tree: Path) -> None:
    stamps, cut = scan([tree], limit=1)
    assert len(stamps) == 1
    assert cut


@pytest.mark.parametrize("change", ["modified", "added", "removed", "same size, new time"])
def test_every_kind_of_change_is_one_call(
    tree: Path, calls: queue.Queue[list[Path]], change: str
) -> None:
    if change == "modified":
        touch(tree / "app.py", "VERSION = 22\n", 2_000_000_000)
        expected = tree / "app.py"
    elif change == "added":
        touch(tree / "pkg" / "models.py", "", 2_000_000_000)
        expected = tree / "pkg" / "models.py"
    elif change == "removed":
        (tree / "pkg" / "views.py").unlink()
        expected = tree / "pkg" / "views.py"
    else:
        touch(tree / "app.py", "VERSION = 2\n", 2_000_000_000)
        expected = tree / "app.py"
    assert calls.get(timeout=WAIT) == [expected.resolve()]
    touch(tree / "app.py", "VERSION = 3\n", 3_000_000_000)  # and the next change, once
    assert calls.get(timeout=WAIT) == [(tree / "app.py").resolve()]


def test_changes_outside_the_app_are_ignored(tree: Path, calls: queue.Queue[list[Path]]) -> None:
    touch(tree / "pkg" / "__pycache__" / "views.cpython-311.py", "x", 2_000_000_000)
    touch(tree / ".git" / "hook.py", "x", 2_000_000_000)
    touch(tree / "venv" / "lib" / "dep.py", "x", 2_000_000_000)
    touch(tree / "README.md", "changed\n", 2_000_000_000)
    touch(tree / "app.py", "VERSION = 9\n", 2_000_000_000)  # a change that counts, last
    assert calls.get(timeout=WAIT) == [(tree / "app.py").resolve()]
    assert calls.empty()


@pytest.mark.slow
def test_a_save_in_several_steps_is_one_reload(tree: Path) -> None:
    got: queue.Queue[list[Path]] = queue.Queue()
    watcher = Watcher([tree], interval=0.02, settle=0.5, on_change=got.put)
    watcher.start()
    try:
        assert watcher.ready.wait(WAIT)
        began = time.monotonic()
        touch(tree / "app.py", "", 2_000_000_000)  # truncated, then written, then a sibling
        touch(tree / "app.py", "VERSION = 2\n", 2_100_000_000)
        touch(tree / "pkg" / "views.py", "X = 2\n", 2_100_000_000)
        took = time.monotonic() - began
        first = got.get(timeout=WAIT)
        both = [(tree / "app.py").resolve(), (tree / "pkg" / "views.py").resolve()]
        if took < 0.25:  # well inside one settle interval: one call for the whole save
            assert first == both
            touch(tree / "app.py", "VERSION = 3\n", 3_000_000_000)
            assert got.get(timeout=WAIT) == [both[0]]
    finally:
        watcher.stop()
        watcher.join(WAIT)


# -- the command line: --reload end to end ------------------------------------------------

APP = """\
from http.server import BaseHTTPRequestHandler


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"{version}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass
"""


class Requests(threading.Thread):
    """Fresh-connection GETs until stopped: every answer's body, and every failure."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(name="test-reload-requests", daemon=True)
        self.address = address
        self.bodies: list[str] = []
        self.failures: list[str] = []
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        for _ in range(100_000):  # bounded; stopped long before
            if self.done.is_set():
                return
            try:
                status, body = get(self.address)
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            if status != 200:
                self.failures.append(f"{status} {body}")
            self.bodies.append(body)

    def latest(self) -> str:
        return self.bodies[-1] if self.bodies else ""

    def stop(self) -> None:
        self.done.set()
        self.join(WAIT)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_code_change_reloads_without_a_failed_request(tmp_path: Path, workers: str) -> None:
    touch(tmp_path / "app.py", APP.format(version="v1"), 1_000_000_000)
    server = ServerProcess(
        ["--reload", "--workers", workers, "--bind", "127.0.0.1:0", "app:App"], cwd=tmp_path
    )
    try:
        address = server.wait_ready()
        server.wait_for_line(r"--reload: watching \d+ Python files")
        requests = Requests(address)
        try:
            wait_until(lambda: requests.latest() == "v1", WAIT, "v1 to answer")
            touch(tmp_path / "app.py", APP.format(version="v2"), 2_000_000_000)
            server.wait_for_line(r"--reload: .*app\.py changed; reloading")
            # The whole generation is ready before the next change (one v2 answer is not
            # enough with two workers: the second may still be importing).
            server.wait_for_line(r"HUP: generation 2 is ready", timeout=60)
            wait_until(lambda: requests.latest() == "v2", 60, "v2 to answer")
            touch(tmp_path / "app.py", "this is not Python\n", 3_000_000_000)
            server.wait_for_line(r"reload failed", timeout=60)
            count = len(requests.bodies)
            wait_until(lambda: len(requests.bodies) > count + 5, WAIT, "more answers")
            assert requests.latest() == "v2"  # the old code keeps serving
            touch(tmp_path / "app.py", APP.format(version="v3"), 4_000_000_000)
            wait_until(lambda: requests.latest() == "v3", 60, "v3 to answer")
        finally:
            requests.stop()
        assert requests.failures == []
        server.send(signal.SIGTERM)
        assert server.wait_exit() == 0
    finally:
        server.stop()
