"""``--check-config``: everything a start checks before it binds, then exit.

Why this module exists: a deployment wants to know that its flags, variables,
configuration file and app are right before it replaces the running server
(gunicorn's ``--check-config``).  This runs the same checks a start runs, up
to the bind: the settings (already parsed), ``--env`` and ``--chdir``, the
target's import, the TLS files.  It binds nothing, takes no pidfile and starts
no worker, so it can run next to the live server.

Threading: call from the main thread (``--chdir`` is process-wide).
"""

from __future__ import annotations

from graceserve.config import format_bind
from graceserve.errors import StartupError, UsageError
from graceserve.http.tls import TLSSettingsError, build_context
from graceserve.process.launch import apply_launch
from graceserve.process.target import load_target
from graceserve.settings import Settings

__all__ = ["check_config"]


def check_config(settings: Settings) -> str:
    """A one-line summary of what would be served; UsageError (exit 2, one line) for
    anything wrong, an import failure of the target included."""
    try:
        apply_launch(settings)
        if settings.target is not None:
            load_target(settings.target)
        if settings.certfile is not None:
            build_context(
                settings.certfile, settings.keyfile, settings.ca_certs, settings.cert_reqs
            )
    except (StartupError, TLSSettingsError) as exc:
        raise UsageError(str(exc)) from None
    target = settings.target or "the demo app"
    workers = f"{settings.workers} worker" + ("s" if settings.workers != 1 else "")
    source = f", settings from {settings.config}" if settings.config else ""
    where = " and ".join(format_bind(address) for address in settings.binds)
    return f"configuration OK: {target} on {where}, {workers}{source}"
