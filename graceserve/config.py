"""The command line and its environment variables, parsed into a Config.

Why this module exists: every flag has an environment variable (flag wins),
and every value is checked here, once, so that bad input ends with one clear
line and exit code 2 before anything is opened, bound or locked.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._version import __version__
from .errors import UsageError

__all__ = ["Config", "parse_args", "parse_bind"]

DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_GRACE = 8.0  # inside docker stop's 10 s, so graceserve decides what is cut
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_IDLE_TIMEOUT = 60.0
LOG_LEVELS = ("debug", "info", "warning", "error")

_BIND = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$")

EPILOG = """\
signals:
  TERM, INT   graceful drain; a second TERM or INT during the drain cuts at once
  HUP         graceful restart: a new process with the same arguments takes over
              the listening socket; this one then drains (ignored under nohup)
  QUIT        immediate stop: cut every connection now
  USR1        dump every thread's stack to stderr, keep running

exit codes:
  0           drained cleanly: every connection finished by itself
  1           internal error
  2           usage error
  3           could not start (pidfile held, address in use, target not importable)
  4           grace deadline passed: connections were cut
  128+N       forced by a repeated signal N (143 for TERM, 130 for INT),
              or 131 when QUIT cut connections

Every option can also be set with an environment variable, shown in brackets;
the flag wins.  TARGET is module:Handler (a socketserver handler class),
module:app (a WSGI application) or module:factory() (called once to get
either), imported with the working directory on sys.path; without it the
built-in demo app is served (/, /slow?seconds=N, /healthz).  Under systemd,
NOTIFY_SOCKET (Type=notify) and socket activation (LISTEN_FDS) are honoured.
"""


@dataclass(frozen=True)
class Config:
    """Everything the runner needs to know, validated."""

    target: str | None
    bind: tuple[str, int] | str
    grace: float
    pidfile: str | None
    max_connections: int
    idle_timeout: float | None
    drain_delay: float
    log_level: str
    root_path: str = ""
    limit_request_line: int = 8190
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190
    max_body_size: int | None = None

    def wsgi_settings(self) -> dict[str, Any]:
        """The settings that apply to a WSGI application (``serve(**...)``)."""
        return {name: getattr(self, name) for name in WSGI_SETTINGS}


WSGI_SETTINGS = (
    "root_path",
    "limit_request_line",
    "limit_request_fields",
    "limit_request_field_size",
    "max_body_size",
)


def parse_bind(text: str) -> tuple[str, int] | str:
    """``HOST:PORT`` or ``[V6]:PORT`` into (host, port), ``unix:PATH`` into PATH."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path or "\0" in path:
            raise UsageError(f"--bind {text!r}: unix: needs a socket path")
        return os.path.abspath(path)
    match = _BIND.match(text.strip())
    if match is None:
        raise UsageError(f"--bind {text!r} is not HOST:PORT (or [IPV6]:PORT)")
    port = int(match["port"])
    if port > 65535:
        raise UsageError(f"--bind {text!r}: port {port} is out of range 0-65535")
    return (match["v6"] or match["host"], port)


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} must be a finite number of seconds, 0 or more")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{text!r} must be 1 or more")
    return value


def _root_path(text: str) -> str:
    path = text.strip().rstrip("/")
    if path and not path.startswith("/"):
        raise ValueError(f"{text!r} must start with /")
    if any(c in path for c in "?#%") or not path.isprintable():
        raise ValueError(f"{text!r} is not a plain URL path")
    return path


def _body_size(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of bytes") from None
    if value < 0:
        raise ValueError(f"{text!r} must be 0 (no limit) or more")
    return value or None


def _level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.lower()


# (flag, environment variable, converter, default, help)
_OPTIONS: list[tuple[str, str, Callable[[str], Any], Any, str]] = [
    ("--bind", "GRACESERVE_BIND", parse_bind, DEFAULT_BIND,
     "HOST:PORT, [IPV6]:PORT or unix:PATH to listen on; port 0 picks a free one"),
    ("--grace", "GRACESERVE_GRACE", _duration, DEFAULT_GRACE,
     "seconds in-flight connections get to finish before they are cut"),
    ("--pidfile", "GRACESERVE_PIDFILE", str, None,
     "write our pid here, locked; removed after the drain"),
    ("--max-connections", "GRACESERVE_MAX_CONNECTIONS", _count, DEFAULT_MAX_CONNECTIONS,
     "at this many live connections new clients wait in the kernel backlog"),
    ("--idle-timeout", "GRACESERVE_IDLE_TIMEOUT", _duration, DEFAULT_IDLE_TIMEOUT,
     "close HTTP connections idle (or sending a request head) this long; 0 disables"),
    ("--drain-delay", "GRACESERVE_DRAIN_DELAY", _duration, 0.0,
     "lame-duck seconds after the stop signal: keep serving, /healthz answers 503"),
    ("--log-level", "GRACESERVE_LOG_LEVEL", _level, "info",
     "one of " + ", ".join(LOG_LEVELS)),
    # WSGI applications only:
    ("--root-path", "GRACESERVE_ROOT_PATH", _root_path, "",
     "WSGI: SCRIPT_NAME, the path the app is mounted at behind a proxy (e.g. /app)"),
    ("--limit-request-line", "GRACESERVE_LIMIT_REQUEST_LINE", _count, 8190,
     "WSGI: bytes in a request line; longer ones get 414"),
    ("--limit-request-fields", "GRACESERVE_LIMIT_REQUEST_FIELDS", _count, 100,
     "WSGI: header fields in a request; more get 431"),
    ("--limit-request-field-size", "GRACESERVE_LIMIT_REQUEST_FIELD_SIZE", _count, 8190,
     "WSGI: bytes in one header field line; longer ones get 431"),
    ("--max-body-size", "GRACESERVE_MAX_BODY_SIZE", _body_size, None,
     "WSGI: bytes of request body; larger ones get 413; 0 or unset: no limit"),
]  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also what ``--help`` prints)."""
    parser = _Parser(
        prog="graceserve",
        description="Serve a socketserver/http.server handler or a WSGI app and stop gracefully.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target", nargs="?", metavar="TARGET",
        help="module:Handler, module:app (WSGI) or module:factory() to serve "
        "[GRACESERVE_TARGET]; default: the demo app",
    )  # fmt: skip
    for flag, env, _convert, default, text in _OPTIONS:
        shown = default[0] + ":" + str(default[1]) if isinstance(default, tuple) else default
        parser.add_argument(
            flag, metavar=flag.lstrip("-").split("-")[0].upper(),
            help=f"{text} [{env}]" + (f" (default: {shown})" if shown is not None else ""),
        )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"graceserve {__version__}")
    return parser


def parse_args(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Config:
    """Flags, then environment variables, then defaults; UsageError on bad input."""
    args = build_parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    for flag, env, convert, default, _text in _OPTIONS:
        name = flag.lstrip("-").replace("-", "_")
        given = getattr(args, name)
        source = flag
        if given is None and env in environ:
            given, source = environ[env], env
        if given is None:
            values[name] = convert(default) if isinstance(default, str) and default else default
            continue
        try:
            values[name] = convert(given)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--bind", source, 1)) from None
        except ValueError as exc:
            raise UsageError(f"{source}: {exc}") from None
    target = args.target or environ.get("GRACESERVE_TARGET") or None
    return Config(
        target=target,
        bind=values["bind"],
        grace=values["grace"],
        pidfile=values["pidfile"] or None,
        max_connections=values["max_connections"],
        idle_timeout=values["idle_timeout"] or None,
        drain_delay=values["drain_delay"],
        log_level=values["log_level"],
        **{name: values[name] for name in WSGI_SETTINGS},
    )
