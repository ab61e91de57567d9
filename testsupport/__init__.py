"""What the tests (tests/) and the benchmarks (bench/) share; not part of graceserve.

Why this package exists: both start servers and must never leave one behind,
both wait for the readiness line, both read the kernel's socket tables and
speak raw HTTP.  Written once, here: ``process`` (processes in their own
session, stderr line by line, the readiness line read with
``graceserve.process.readiness``), ``procfs`` (``/proc/net/tcp``, ``/proc/PID``),
``rawhttp`` (requests and responses on a plain or TLS socket, exactly framed),
``waiting`` (poll with a deadline), ``load`` (keep-alive clients that classify
what broke), ``pki`` (a test CA made with openssl).  Exit codes are not here:
import them from ``graceserve.errors``.

The contract matrix (tests/test_matrix_*.py) adds: ``targets`` (one app as a
handler and as a WSGI app), ``serve`` (start it in a mode: one process or
``--workers 2``, fresh or after a HUP, plain or TLS; ``Served``, ``Gate``),
``matrix`` (combinations, labs, rows and the findings of issue 19; imports
pytest) and ``contract`` (the scenarios the rows assert on).

Importable from the repository root with nothing installed beyond graceserve's
own requirements: pytest puts the root on ``sys.path`` (``pythonpath`` in
pyproject.toml), and bench/benchutil.py does for the benchmarks.
"""

from __future__ import annotations

from .process import REPO, ChildProcess, ServerProcess, SupportError, child_env, fail

__all__ = ["REPO", "ChildProcess", "ServerProcess", "SupportError", "child_env", "fail"]
