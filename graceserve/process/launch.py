"""What happens to the process before the target is imported: ``--env`` and ``--chdir``.

Why this module exists: gunicorn users set the app's environment and working
directory on the command line (``--env``, ``--chdir``).  Both must happen before the
target is imported (the app reads its environment at import; ``--chdir`` puts
the directory on ``sys.path``), and once per process: worker processes inherit
the environment and the directory, and apply the same settings again, which
changes nothing (their relative paths are resolved against ``LAUNCH_VARIABLE``,
the directory the first process started in: ``launch_dir``).

Threading: call from the main thread, before any other thread starts
(``os.chdir`` and ``os.environ`` are process-wide).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from graceserve.errors import StartupError, UsageError
from graceserve.process.workerproc import WORKER_VARIABLE
from graceserve.settings import Settings

__all__ = ["LAUNCH_VARIABLE", "apply_launch", "check_chdir", "env_pairs", "launch_dir"]


LAUNCH_VARIABLE = "GRACESERVE_LAUNCH_DIR"
"""Set by ``apply_launch`` before ``--chdir``: the directory relative paths are
relative to, for the worker processes (they start in the ``--chdir`` directory)."""


def apply_launch(settings: Settings) -> None:
    """Put ``settings.env`` into ``os.environ``, then change to ``settings.chdir``.

    StartupError (exit 3) if the directory cannot be entered.
    """
    for name, value in settings.env:
        os.environ[name] = value
    if settings.chdir is None:
        return
    if WORKER_VARIABLE not in os.environ:  # a worker is told by its supervisor
        os.environ[LAUNCH_VARIABLE] = os.getcwd()
    try:
        os.chdir(settings.chdir)
    except OSError as exc:
        raise StartupError(f"--chdir {settings.chdir}: {exc.strerror or exc}") from None


def launch_dir(environ: Mapping[str, str]) -> str:
    """Where relative paths start: where graceserve was started (a worker is told)."""
    if WORKER_VARIABLE in environ and environ.get(LAUNCH_VARIABLE):
        return environ[LAUNCH_VARIABLE]
    return os.getcwd()


def env_pairs(given: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``(source, NAME=VALUE)`` texts as (name, value) pairs, the last of a name winning."""
    pairs: dict[str, str] = {}
    for source, text in given:
        key, equals, value = text.partition("=")
        if not equals or not key or "\0" in text or not key.isprintable() or " " in key:
            raise UsageError(f"{source} {text!r} is not NAME=VALUE")
        if key.startswith("GRACESERVE_"):
            raise UsageError(
                f"{source} {key}: graceserve's own settings are flags or variables of "
                "graceserve's environment, not --env (which is the app's)"
            )
        pairs[key] = value
    return tuple(pairs.items())


def check_chdir(path: str | None) -> None:
    """UsageError unless ``path`` (absolute) is None or a directory."""
    if path is not None and not os.path.isdir(path):
        raise UsageError(f"--chdir {path}: no such directory")
