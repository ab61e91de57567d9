"""The ``graceserve`` command: parse, configure logging, serve, exit.

Why this module exists: to turn every way a run can end into the documented
exit code and, for bad input, one line on stderr instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from .config import parse_args
from .demo import DemoHandler
from .errors import EXIT_INTERNAL, StartupError
from .runner import serve

__all__ = ["main"]

log = logging.getLogger("graceserve")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.  Main thread only."""
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except StartupError as exc:
        _say(f"graceserve: error: {exc}")
        return exc.exit_code
    _configure_logging(config.log_level)
    try:
        return serve(
            config.target or DemoHandler,
            config.bind,
            grace=config.grace,
            pidfile=config.pidfile,
            max_connections=config.max_connections,
            idle_timeout=config.idle_timeout,
            drain_delay=config.drain_delay,
            **config.wsgi_settings(),
        )
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return exc.exit_code
    except Exception:
        log.critical("internal error", exc_info=True)
        return EXIT_INTERNAL


def run() -> None:
    """Entry point of ``python -m graceserve`` and the console script."""
    code = main()
    _flush_standard_streams()
    sys.exit(code)


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s graceserve[%(process)d] %(levelname)s %(message)s")
    )
    root = logging.getLogger("graceserve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


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
