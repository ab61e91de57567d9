"""Running `graceserve ctl` against a real server and reading its status.

Why this module exists: the ctl and workers tests ask a server for its state the same
way; written once here.
Threading: each helper is called from one thread; it runs a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .process import child_env

__all__ = ["CTL_TIMEOUT", "ctl", "status_of"]


CTL_TIMEOUT = 60.0  # seconds any ctl may take (its own timeouts are shorter)


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m graceserve ctl ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "graceserve", "ctl", *args],
        env=child_env(env), capture_output=True, text=True, timeout=CTL_TIMEOUT, check=False,
    )  # fmt: skip


def status_of(pidfile: Path) -> dict[str, object]:
    result = ctl("status", "--json", "--pidfile", str(pidfile))
    assert result.returncode == 0, result
    status = json.loads(result.stdout)
    assert isinstance(status, dict)
    return status
