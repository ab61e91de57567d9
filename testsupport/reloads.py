"""Helpers for the reload tests: versioned code whose import the test holds at a gate, and
``graceserve ctl`` run in the background.

A deploy writes ``app.py`` naming its version (``v1``, ``v2``, ...).  Every import of it
takes the next arrival number (an ``arrived-VERSION-N`` file made with ``O_EXCL``, so two
workers importing at once get different numbers), says so on stderr, and then waits until
the test opens its gate: the file ``pass-VERSION`` (every arrival may pass) or
``pass-VERSION-N`` (only arrival N).  So a test decides exactly when each new worker
becomes ready, and can keep one importing for ever, without a sleep on its side.  The
wait inside the app is bounded (``GATE_LIMIT``) so that nothing outlives a failed test.
Every answer names the version and the pid that served it; ``/slow?seconds=N`` answers
after N seconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from .process import child_env

CTL_TIMEOUT = 120.0  # seconds any background ctl may take (its own timeouts are shorter)
GATE_LIMIT = 120.0  # seconds an import waits at its gate at most

APP = '''\
"""Reload test target {version}: answers name the version and the pid."""
import os
import sys
import time
from http.server import BaseHTTPRequestHandler

VERSION = "{version}"


def _arrive():
    number = 1
    while True:
        try:
            os.close(os.open(f"arrived-{{VERSION}}-{{number}}", os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            number += 1
    print(f"test-app: pid {{os.getpid()}} is arrival {{number}} of {{VERSION}}", file=sys.stderr,
          flush=True)
    give_up = time.monotonic() + {limit}
    while time.monotonic() < give_up:
        if os.path.exists(f"pass-{{VERSION}}") or os.path.exists(f"pass-{{VERSION}}-{{number}}"):
            return
        time.sleep(0.01)  # the app's own wait: the test opens the gate
    raise SystemExit(f"test-app: {{VERSION}} gate never opened")


_arrive()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(float(self.path.partition("=")[2] or "1"))
        data = f"{{VERSION}} pid {{os.getpid()}}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass
'''


def deploy(directory: Path, version: str, *, gate_open: bool = False) -> None:
    """Write ``app.py`` for ``version`` (its gate open or closed)."""
    if gate_open:
        release(directory, version)
    (directory / "app.py").write_text(APP.format(version=version, limit=GATE_LIMIT))


def release(directory: Path, version: str, arrival: int | None = None) -> None:
    """Open the gate of ``version`` for every arrival, or for ``arrival`` only."""
    name = f"pass-{version}" if arrival is None else f"pass-{version}-{arrival}"
    (directory / name).touch()


def arrivals(directory: Path, version: str) -> int:
    """How many imports of ``version`` have begun."""
    return len(list(directory.glob(f"arrived-{version}-*")))


def version_of(body: str) -> str:
    """The version named in an answer."""
    match = re.match(r"(v\d+) pid \d+", body)
    assert match is not None, body
    return match[1]


class Ctl:
    """``python -m graceserve ctl ARGS`` running in the background."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graceserve", "ctl", *args],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def done(self) -> bool:
        return self.proc.poll() is not None

    def result(self, timeout: float = CTL_TIMEOUT) -> tuple[int, str]:
        """Wait for it to end: (exit code, what it printed)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
            raise AssertionError(f"ctl did not end within {timeout}s: {out}") from None
        return self.proc.returncode, out.strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


def ctl_status(pidfile: Path) -> dict[str, Any]:
    """``ctl status --json`` (fails the test if it does not answer)."""
    result = subprocess.run(
        [sys.executable, "-m", "graceserve", "ctl", "status", "--json", "--pidfile", str(pidfile)],
        env=child_env(), capture_output=True, text=True, timeout=CTL_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result
    status = json.loads(result.stdout)
    assert isinstance(status, dict)
    return status
