"""``--check-config``: everything a start checks before it binds, then exit.

Why this module exists: a deployment wants to know that its flags, variables,
configuration file and app are right before it replaces the running server
(gunicorn's ``--check-config``).  This runs the same checks a start runs, up
to the bind: the settings (already parsed, ``--user``/``--group`` names
included), ``--env`` and ``--chdir``, the target's import, the TLS files.  Run
as root with ``--user``, it switches to that user before the import, as the
server does (the app never runs as root, and a file the user cannot read fails
here); run as anyone else it checks the names only and imports as itself.
It binds nothing, takes no pidfile and starts no worker, so it can run next
to the live server.

Threading: call from the main thread (``--chdir`` is process-wide).
"""

from __future__ import annotations

import os

from graceserve.config import format_bind
from graceserve.errors import StartupError, UsageError
from graceserve.http.tls import TLSSettingsError, build_context
from graceserve.process.launch import apply_launch
from graceserve.process.privileges import drop, resolve
from graceserve.process.target import load_target
from graceserve.settings import Settings

__all__ = ["check_config"]


def check_config(settings: Settings) -> str:
    """A one-line summary of what would be served; UsageError (exit 2, one line) for
    anything wrong, an import failure of the target included."""
    try:
        apply_launch(settings)
        identity = resolve(settings.user, settings.group)
        if identity is not None and os.geteuid() == 0:
            drop(identity)
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
    user = f", as user {settings.user}" if settings.user else ""
    where = " and ".join(format_bind(address) for address in settings.binds)
    return f"configuration OK: {target} on {where}, {workers}{user}{source}"
