"""Exit codes and the errors that end a start-up.

Why this module exists: the exit codes are a contract (README, ``--help``,
systemd's ``SuccessExitStatus``, scripts), so they are named once, here, and
every way the process can end maps to one of them.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CANNOT_START",
    "EXIT_CUT",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_USAGE",
    "StartupError",
    "UsageError",
    "exit_code_for_signal",
]

EXIT_OK = 0
"""Drained cleanly: every connection finished by itself."""
EXIT_INTERNAL = 1
"""Internal error (a bug in graceserve or in a hook it calls)."""
EXIT_USAGE = 2
"""Usage error: a bad flag, environment variable or target syntax."""
EXIT_CANNOT_START = 3
"""Could not start: pidfile held, address in use, target not importable, ..."""
EXIT_CUT = 4
"""The grace deadline passed and connections were cut."""


def exit_code_for_signal(signum: int) -> int:
    """128 + N: stopped by force on signal N (143 for TERM, 130 for INT)."""
    return 128 + signum


class StartupError(Exception):
    """The server could not start; ``str()`` is the one-line reason for the user.

    ``app_error``: the app's own exception behind it (its import or factory call
    raised), with its traceback cut to the app's frames
    (``graceserve.process.apptrace``); the command line logs that traceback under the
    one-line reason.  None for everything else (a flag, a port, a pidfile).
    """

    exit_code = EXIT_CANNOT_START

    def __init__(self, message: str, app_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.app_error = app_error


class UsageError(StartupError):
    """The command line or environment is malformed."""

    exit_code = EXIT_USAGE
