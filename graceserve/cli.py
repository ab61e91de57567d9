"""The ``graceserve`` command: parse, configure logging, serve, exit.

Why this module exists: to turn every way a run can end into the documented
exit code and, for bad input, one line on stderr instead of a traceback (a
target whose own code fails to import adds the app's frames of its traceback
under that line: the user's bug, at the default log level).  The
process exits with the code it logged, whatever the app left behind (a
non-daemon thread would make the interpreter wait for it) and whatever signal
arrives after the drain (every signal we handled stays ignored).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Sequence

from graceserve.config import parse_args
from graceserve.errors import EXIT_INTERNAL, EXIT_OK, StartupError
from graceserve.logformat import configure_logging
from graceserve.process.autoreload import watch_working_directory
from graceserve.process.launch import apply_launch
from graceserve.process.runner import run as run_settings
from graceserve.process.workerproc import WORKER_VARIABLE

__all__ = ["main"]

log = logging.getLogger("graceserve")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.  Main thread only.

    ``graceserve ctl ...`` is dispatched before the server's parser: a TARGET
    always has a colon, so none can be named ``ctl``.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["ctl"]:
        from graceserve.process.ctl import main as ctl_main

        return ctl_main(args[1:])
    try:
        config = parse_args(args)
        if config.check_config:
            from graceserve.checkconfig import check_config  # loads TLS and the target's module

            print(f"graceserve: {check_config(config)}", flush=True)
            return EXIT_OK
    except StartupError as exc:
        _say(f"graceserve: error: {exc}")
        return exc.exit_code
    configure_logging(config.log_level, config.log_format)
    try:
        apply_launch(config)  # --env, --chdir: before the target is imported
        if config.reload and WORKER_VARIABLE not in os.environ:  # the main process only
            watch_working_directory()
        if config.target is None:
            from graceserve.demo import (
                DemoHandler,  # only when served: ctl must run when it is broken
            )

            return run_settings(DemoHandler, config, ignore_signals_after=True)
        return run_settings(config.target, config, ignore_signals_after=True)
    except StartupError as exc:
        app_error = exc.app_error  # the app's frames of its traceback, below the line
        log.error(
            "cannot start: %s", exc,
            exc_info=None if app_error is None else (type(app_error), app_error,
                                                     app_error.__traceback__),
            extra={"event": "start_failed", "exit_code": exc.exit_code},
        )  # fmt: skip
        return exc.exit_code
    except Exception:
        log.critical(
            "internal error",
            exc_info=True,
            extra={"event": "internal_error", "exit_code": EXIT_INTERNAL},
        )
        return EXIT_INTERNAL


def run() -> None:
    """Entry point of ``python -m graceserve`` and the console script."""
    code = main()
    leftovers = _leftover_threads()
    if leftovers:
        names = ", ".join(sorted(thread.name for thread in leftovers))
        log.warning(
            "exiting with code %d without waiting for %d threads the app left running: %s",
            code, len(leftovers), names,
        )  # fmt: skip
        _flush_standard_streams()
        os._exit(code)  # the interpreter would wait for them, past the grace
    _flush_standard_streams()
    sys.exit(code)


def _leftover_threads() -> list[threading.Thread]:
    """Non-daemon threads still running, other than this one."""
    current = threading.current_thread()
    return [
        thread
        for thread in threading.enumerate()
        if thread is not current and not thread.daemon and thread.is_alive()
    ]


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _flush_standard_streams() -> None:
    """Flush now; if a pipe is gone, point the fd at /dev/null so exit stays quiet.

    Otherwise the interpreter's final flush fails and turns our exit code into 120.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass
