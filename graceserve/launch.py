"""What happens to the process before the target is imported: ``--env``, ``--chdir``,
and ``--check-config``'s dry run.

Why this module exists: gunicorn users set the app's environment and working
directory on the command line (``--env``, ``--chdir``) and check a deployment
with ``--check-config`` before they start it.  Both must happen before the
target is imported (the app reads its environment at import; ``--chdir`` puts
the directory on ``sys.path``), and once per process: worker processes inherit
the environment and the directory, and apply the same settings again, which
changes nothing (``graceserve.config`` resolves their relative paths against
``GRACESERVE_LAUNCH_DIR``, the directory the first process started in).

Threading: call from the main thread, before any other thread starts
(``os.chdir`` and ``os.environ`` are process-wide).
"""

from __future__ import annotations

import os

from .config import LAUNCH_VARIABLE, format_bind
from .errors import StartupError, UsageError
from .settings import Settings
from .workerproc import WORKER_VARIABLE

__all__ = ["apply_launch", "check_config"]


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


def check_config(settings: Settings) -> str:
    """``--check-config``: what a start would check before it binds; a one-line summary.

    Applies ``--env`` and ``--chdir``, imports the target (the demo app without
    one) and loads the TLS files.  UsageError (exit 2, one line) for anything wrong.
    """
    from .target import load_target
    from .tls import TLSSettingsError, build_context

    try:
        apply_launch(settings)
        if settings.target is not None:
            load_target(settings.target)
        if settings.certfile is not None:
            build_context(
                settings.certfile, settings.keyfile, settings.ca_certs, settings.cert_reqs
            )
    except StartupError as exc:
        raise UsageError(str(exc)) from None
    except TLSSettingsError as exc:
        raise UsageError(str(exc)) from None
    target = settings.target or "the demo app"
    workers = f"{settings.workers} worker" + ("s" if settings.workers != 1 else "")
    source = f", settings from {settings.config}" if settings.config else ""
    return f"configuration OK: {target} on {format_bind(settings.bind)}, {workers}{source}"
