"""What the tests (tests/) and the benchmarks (bench/) share; not part of graceserve.

Why this package exists: both start servers and must never leave one behind,
both wait for the readiness line, both read the kernel's socket tables and
speak raw HTTP.  Written once, here: ``process`` (processes in their own
session, stderr line by line, the readiness line read with
``graceserve.readiness``), ``procfs`` (``/proc/net/tcp``, ``/proc/PID``),
``rawhttp`` (requests and responses on a plain socket).  Exit codes are not
here: import them from ``graceserve.errors``.

Importable from the repository root with nothing installed beyond graceserve's
own requirements: pytest puts the root on ``sys.path`` (``pythonpath`` in
pyproject.toml), and bench/benchutil.py does for the benchmarks.
"""

from __future__ import annotations

from .process import REPO, ChildProcess, ServerProcess, SupportError, child_env, fail

__all__ = ["REPO", "ChildProcess", "ServerProcess", "SupportError", "child_env", "fail"]
