"""The command line, its environment variables and the config file, parsed into Settings.

Why this module exists: every flag has an environment variable, and may be
written in a ``--config`` file (``graceserve.configfile``); the first of flag,
``GRACESERVE_*`` variable, config file, ``$PORT``/``$WEB_CONCURRENCY`` (as
gunicorn, Heroku and Cloud Run mean them) that says something wins.  Every
value, wherever it came from, is checked here by the same converter, once, so
that bad input ends with one clear line naming where it came from and exit
code 2 before anything is opened, bound or locked.  gunicorn's short flags and
names (``-b``, ``-w``, ``-t``/``--timeout``, ``--keep-alive``, ...) are aliases
of the flag that means the same; abbreviated long flags are not accepted.  The
defaults are not written here: they are ``graceserve.settings.DEFAULTS``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from graceserve._version import __version__
from graceserve.configfile import file_settings, listed, read_config_file
from graceserve.errors import UsageError
from graceserve.http.proxy import parse_allow_ips
from graceserve.process.cpuquota import auto_workers
from graceserve.process.launch import check_chdir, env_pairs, launch_dir
from graceserve.process.privileges import known_group, known_user, resolve
from graceserve.settings import DEFAULTS, Settings

__all__ = ["Config", "format_bind", "parse_args", "parse_bind"]

LOG_LEVELS = ("debug", "info", "warning", "error")

_BIND = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")

EPILOG = """\
signals:
  TERM, INT   graceful drain; a second TERM or INT during the drain cuts at once
  HUP         graceful reload: new worker processes with the same arguments take
              over the listening socket once all are ready (--start-timeout), the
              old serving ones drain; this process (the supervisor) stays; a HUP
              during a reload starts the next one when it ends (ignored under nohup)
  TTIN, TTOU  one more / one fewer worker process (not while one process serves by
              itself; the removed one drains)
  QUIT        immediate stop: cut every connection now
  USR1        dump every thread's stack to stderr (and every worker's), keep running

exit codes:
  0           drained cleanly: every connection finished by itself
  1           internal error
  2           usage error
  3           could not start (pidfile held, address in use, target not importable)
  4           grace deadline passed: connections were cut (or queued clients
              were reset, out of file descriptors)
  128+N       forced by a repeated signal N (143 for TERM, 130 for INT),
              or 131 when QUIT cut connections

control (with --pidfile; see the README):
  graceserve ctl graceful|stop|status --pidfile PATH
              reload and wait until the new generation serves (or say why not);
              stop and exit with the server's exit code; status (3: not running)

HTTPS: --certfile (and --keyfile) serve TLS 1.2+ on every --bind address; HUP
reads the certificate and key from disk again (a broken new pair is reported
and the old process keeps serving).

Every option can also be set with an environment variable, shown in brackets;
the flag wins.  TARGET is module:Handler (a socketserver handler class),
module:app (a WSGI application) or module:factory() (called once to get
either), imported with the working directory on sys.path; without it the
built-in demo app is served (/, /slow?seconds=N, /healthz).  Under systemd,
NOTIFY_SOCKET (Type=notify) and socket activation (LISTEN_FDS) are honoured.
"""


Config = Settings
"""What ``parse_args`` returns (the name the command line has always used)."""


def parse_bind(text: str) -> tuple[str, int] | str:
    """``HOST:PORT`` or ``[V6]:PORT`` into (host, port), ``:PORT`` into ("0.0.0.0", port)
    (every IPv4 interface, as gunicorn), ``unix:PATH`` into PATH."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path or "\0" in path:
            raise UsageError(f"--bind {text!r}: unix: needs a socket path")
        return os.path.abspath(path)
    match = _BIND.match(text.strip())
    if match is None:
        raise UsageError(f"--bind {text!r} is not HOST:PORT (or [IPV6]:PORT, :PORT)")
    port = int(match["port"])
    if port > 65535:
        raise UsageError(f"--bind {text!r}: port {port} is out of range 0-65535")
    return (match["v6"] or match["host"] or "0.0.0.0", port)


def _metrics_bind(text: str) -> tuple[str, int] | None:
    """``--metrics-bind``: HOST:PORT as ``--bind`` takes it (a TCP address: Prometheus
    scrapes over TCP); empty: off."""
    if not text.strip():
        return None
    if text.startswith("unix:"):
        raise ValueError(f"{text!r}: a unix: socket cannot be scraped; give HOST:PORT")
    address = parse_bind(text)
    assert isinstance(address, tuple)
    return address


def format_bind(address: tuple[str, int] | str) -> str:
    """An address as ``--bind`` takes it (``[::1]:8000``, ``unix:/run/app.sock``)."""
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} must be a finite number of seconds, 0 or more")
    return value


def _timeout(text: str) -> float:
    value = _duration(text)
    if value == 0:
        raise ValueError(f"{text!r} must be more than 0 seconds")
    return value


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < least:
        raise ValueError(f"{text!r} must be {least} or more")
    return value


def _count(text: str) -> int:
    return _whole(text, 1)


def _natural(text: str) -> int:
    return _whole(text, 0)


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return auto_workers()
    value = _count(text)
    if value > 256:
        raise ValueError(f"{text!r} is more than 256 workers")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not one of 1, true, yes, on, 0, false, no, off")


def _at_most(most: int) -> Callable[[str], int]:
    """A whole number from 1 to ``most``: a request limit, bounded so it stays a limit."""

    def convert(text: str) -> int:
        value = _count(text)
        if value > most:
            raise ValueError(f"{text!r} is more than {most}")
        return value

    return convert


MAX_LINE_LIMIT = 1 << 20  # bytes: a request line or header field line of 1 MiB is absurd already
MAX_FIELDS_LIMIT = 10_000


def _root_path(text: str) -> str:
    path = text.strip().rstrip("/")
    if path and not path.startswith("/"):
        raise ValueError(f"{text!r} must start with /")
    if any(c in path for c in "?#%") or not path.isprintable():
        raise ValueError(f"{text!r} is not a plain URL path")
    return path


def _health_path(text: str) -> str | None:
    path = text.strip()
    if not path:
        return None
    if not path.startswith("/") or len(path) > 1024:
        raise ValueError(f"{text!r} must be a path that starts with / (at most 1024 bytes)")
    if any(c in path for c in "?#%") or not path.isascii() or not path.isprintable() or " " in path:
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


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text.lower()

    return convert


def _octal(text: str) -> int:
    """Digits are octal, as the ``umask`` command's (``007``); ``0o7`` and ``0x7`` as Python."""
    stripped = text.strip()
    try:
        value = int(stripped, 0 if stripped[1:2].isalpha() else 8)
    except ValueError:
        raise ValueError(f"{text!r} is not an octal mask such as 007") from None
    if not 0 <= value <= 0o777:
        raise ValueError(f"{text!r} is not an octal mask from 000 to 777")
    return value


def _user(text: str) -> str:
    name = text.strip()
    if name and not name.isdigit() and not known_user(name):
        raise ValueError(f"no such user {text!r}")
    return name


def _group(text: str) -> str:
    name = text.strip()
    if name and not name.isdigit() and not known_group(name):
        raise ValueError(f"no such group {text!r}")
    return name


def _allow_ips(text: str) -> str:
    parse_allow_ips(text)  # ValueError for an entry that is not an address or network
    return ",".join(entry.strip() for entry in text.split(",") if entry.strip())


def _level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.lower()


# (flag, environment variable, converter, default, help); the Settings field is the
# flag's name.  A value that converts to 0 (or "") means "none" where the field is
# optional (--pidfile, --idle-timeout).
_OPTIONS: list[tuple[str, str, Callable[[str], Any], Any, str]] = [
    ("--bind", "GRACESERVE_BIND", parse_bind, DEFAULTS.bind,
     "HOST:PORT, [IPV6]:PORT, :PORT (every IPv4 interface) or unix:PATH to listen on; port "
     "0 picks a free one; repeat it to listen on several (GRACESERVE_BIND and a config "
     "file's string: separated by commas or spaces); unset and $PORT set (Heroku, "
     "Cloud Run): 0.0.0.0:$PORT"),
    ("--umask", "GRACESERVE_UMASK", _octal, DEFAULTS.umask,
     "octal mask for a unix: socket's mode: 007 lets the socket's group (nginx's user) "
     "connect"),
    ("--user", "GRACESERVE_USER", _user, DEFAULTS.user,
     "run as this user (name or uid) once the listener is bound and the pidfile taken: "
     "bind port 80 as root, serve as www-data; the app is imported only after the switch; "
     "needs root (or to be that user already)"),
    ("--group", "GRACESERVE_GROUP", _group, DEFAULTS.group,
     "with --user: run with this group (name or gid) instead of the user's own"),
    ("--chdir", "GRACESERVE_CHDIR", str, DEFAULTS.chdir,
     "change to this directory before importing the target (it goes on sys.path)"),
    ("--grace", "GRACESERVE_GRACE", _duration, DEFAULTS.grace,
     "seconds in-flight connections get to finish before they are cut"),
    ("--pidfile", "GRACESERVE_PIDFILE", str, DEFAULTS.pidfile,
     "write our pid here, locked; removed after the drain"),
    ("--max-connections", "GRACESERVE_MAX_CONNECTIONS", _count, DEFAULTS.max_connections,
     "at this many live connections new clients wait in the kernel backlog"),
    ("--idle-timeout", "GRACESERVE_IDLE_TIMEOUT", _duration, DEFAULTS.idle_timeout,
     "close HTTP connections idle (or sending a request head) this long (TCP targets: "
     "the default timeout of wait_for_input); 0 disables; --keep-alive is gunicorn's name "
     "(there 0 turns keep-alive off: refused)"),
    ("--min-body-rate", "GRACESERVE_MIN_BODY_RATE", _natural, DEFAULTS.min_body_rate,
     "HTTP: bytes/s a request body must average over each --idle-timeout spent waiting "
     "for it; slower ones are closed; 0 disables"),
    ("--threads", "GRACESERVE_THREADS", _natural, DEFAULTS.threads,
     "WSGI: threads serving requests, per process; idle keep-alive connections wait in "
     "one selector and hold none; while all are held for over a second with requests "
     "waiting, more are started (up to --max-connections); 0: a thread per connection"),
    ("--drain-delay", "GRACESERVE_DRAIN_DELAY", _duration, DEFAULTS.drain_delay,
     "lame-duck seconds after the stop signal: keep serving, /healthz answers 503"),
    ("--health-path", "GRACESERVE_HEALTH_PATH", _health_path, DEFAULTS.health_path,
     "HTTP: answer GET/HEAD of this path (/healthz) for any app: 200, then 503 from the "
     "moment a stop begins (the lame duck included); not in the access log"),
    ("--metrics-bind", "GRACESERVE_METRICS_BIND", _metrics_bind, DEFAULTS.metrics_bind,
     "HOST:PORT where the main process serves Prometheus metrics (GET /metrics) summed "
     "over every worker: requests by status class, their durations, connections, the "
     "drain, reloads, worker restarts; off by default"),
    ("--log-level", "GRACESERVE_LOG_LEVEL", _level, DEFAULTS.log_level,
     "the least severe of graceserve's own lines to show"),
    ("--workers", "GRACESERVE_WORKERS", _workers, DEFAULTS.workers,
     "serving processes, or auto (one per CPU this process may use: its affinity, capped by "
     "its cgroup's CPU quota, rounded up); more than 1: "
     "a supervisor process runs them; unset: $WEB_CONCURRENCY if set"),
    ("--preload", "GRACESERVE_PRELOAD", _boolean, DEFAULTS.preload,
     "import the target in the supervisor before starting workers (fail fast)"),
    ("--reload", "GRACESERVE_RELOAD", _boolean, DEFAULTS.reload,
     "development: reload gracefully (as HUP) when a Python file under the working "
     "directory changes; code that fails to import leaves the old code serving"),
    ("--worker-timeout", "GRACESERVE_WORKER_TIMEOUT", _duration, DEFAULTS.worker_timeout,
     "kill and replace a worker whose serving loop made no progress this long (gunicorn's "
     "--timeout); 0 disables (needs --workers 2 or more)"),
    ("--max-requests", "GRACESERVE_MAX_REQUESTS", _natural, DEFAULTS.max_requests,
     "replace a worker gracefully after it served this many requests (one process: a "
     "worker process takes over its serving); 0 disables"),
    ("--start-timeout", "GRACESERVE_START_TIMEOUT", _timeout, DEFAULTS.start_timeout,
     "seconds a new worker process gets to be ready; a reload whose workers are not ready "
     "by then fails and the old generation keeps serving"),
    ("--max-requests-jitter", "GRACESERVE_MAX_REQUESTS_JITTER", _natural,
     DEFAULTS.max_requests_jitter, "add a random 0..N to each worker's --max-requests"),
    # WSGI applications only:
    ("--root-path", "GRACESERVE_ROOT_PATH", _root_path, DEFAULTS.root_path,
     "WSGI: SCRIPT_NAME, the path the app is mounted at behind a proxy (e.g. /app)"),
    ("--limit-request-line", "GRACESERVE_LIMIT_REQUEST_LINE", _at_most(MAX_LINE_LIMIT),
     DEFAULTS.limit_request_line, "WSGI: bytes in a request line; longer ones get 414"),
    ("--limit-request-fields", "GRACESERVE_LIMIT_REQUEST_FIELDS", _at_most(MAX_FIELDS_LIMIT),
     DEFAULTS.limit_request_fields, "WSGI: header fields in a request; more get 431"),
    ("--limit-request-field-size", "GRACESERVE_LIMIT_REQUEST_FIELD_SIZE",
     _at_most(MAX_LINE_LIMIT),
     DEFAULTS.limit_request_field_size,
     "WSGI: bytes in one header field line; longer ones get 431"),
    ("--max-body-size", "GRACESERVE_MAX_BODY_SIZE", _body_size, DEFAULTS.max_body_size,
     "WSGI: bytes of request body; larger ones get 413; 0 or unset: no limit"),
    # Production (HTTP and WSGI targets):
    ("--certfile", "GRACESERVE_CERTFILE", str, DEFAULTS.certfile,
     "serve HTTPS with this certificate chain (PEM); reloaded from disk by HUP"),
    ("--keyfile", "GRACESERVE_KEYFILE", str, DEFAULTS.keyfile,
     "the private key of --certfile (PEM); default: inside --certfile"),
    ("--ca-certs", "GRACESERVE_CA_CERTS", str, DEFAULTS.ca_certs,
     "CA certificates (PEM) that client certificates are checked against"),
    ("--cert-reqs", "GRACESERVE_CERT_REQS", _choice("none", "optional", "required"),
     DEFAULTS.cert_reqs, "client certificates: none, optional or required (needs --ca-certs)"),
    ("--access-log", "GRACESERVE_ACCESS_LOG", str, DEFAULTS.access_log,
     "write one line per response to PATH, or - for stderr; off by default"),
    ("--access-log-format", "GRACESERVE_ACCESS_LOG_FORMAT", _choice("combined", "json"),
     DEFAULTS.access_log_format, "combined (Apache/nginx, plus seconds taken) or json"),
    ("--log-format", "GRACESERVE_LOG_FORMAT", _choice("text", "json"), DEFAULTS.log_format,
     "graceserve's own log lines: text, or json (one object per line)"),
    ("--forwarded-allow-ips", "GRACESERVE_FORWARDED_ALLOW_IPS", _allow_ips,
     DEFAULTS.forwarded_allow_ips,
     "peers (addresses, networks, or *) whose X-Forwarded-* and Forwarded headers are trusted"),
]  # fmt: skip


# What --help shows after each flag: the kind of value, or the choices.
_METAVARS = {
    "--bind": "ADDRESS", "--grace": "SECONDS", "--pidfile": "PATH",
    "--max-connections": "N", "--threads": "N", "--idle-timeout": "SECONDS",
    "--min-body-rate": "BYTES",
    "--drain-delay": "SECONDS",
    "--log-level": "{" + ",".join(LOG_LEVELS) + "}", "--workers": "N|auto",
    "--worker-timeout": "SECONDS", "--max-requests": "N", "--max-requests-jitter": "N",
    "--start-timeout": "SECONDS",
    "--root-path": "PATH", "--limit-request-line": "BYTES", "--limit-request-fields": "N",
    "--limit-request-field-size": "BYTES", "--max-body-size": "BYTES",
    "--certfile": "PATH", "--keyfile": "PATH", "--ca-certs": "PATH",
    "--cert-reqs": "{none,optional,required}", "--access-log": "PATH|-",
    "--access-log-format": "{combined,json}", "--log-format": "{text,json}",
    "--forwarded-allow-ips": "LIST", "--umask": "MASK", "--chdir": "DIR",
    "--health-path": "PATH", "--user": "USER", "--group": "GROUP",
    "--metrics-bind": "ADDRESS",
}  # fmt: skip

# gunicorn's names and short flags, written before ours (the last is the reference's anchor).
_ALIASES = {
    "--bind": ("-b",), "--workers": ("-w",), "--worker-timeout": ("-t", "--timeout"),
    "--umask": ("-m",), "--pidfile": ("-p", "--pid"), "--user": ("-u",), "--group": ("-g",),
}  # fmt: skip
_AFTER = {"--idle-timeout": ("--keep-alive",), "--grace": ("--graceful-timeout",)}  # gunicorn's

# Defaults as --help writes them, where the value itself reads badly.
_SHOWN: dict[str, Any] = {"--umask": f"{DEFAULTS.umask:03o}"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


class _Typed(argparse.Action):
    """Store ``(the flag as typed, its text)``: errors name what the user wrote."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
        values: Any, option_string: str | None = None,
    ) -> None:  # fmt: skip
        setattr(namespace, self.dest, (option_string or self.dest, values))


class _Repeated(argparse.Action):
    """Append ``(the flag as typed, its text)``: --bind and --env may be given again."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
        values: Any, option_string: str | None = None,
    ) -> None:  # fmt: skip
        given = list(getattr(namespace, self.dest) or [])
        setattr(namespace, self.dest, [*given, (option_string or self.dest, values)])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also what ``--help`` prints)."""
    parser = _Parser(
        prog="graceserve",
        description="Serve a socketserver/http.server handler or a WSGI app, and stop gracefully.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --work must not quietly mean --workers (or, later, something else)
    )
    parser.add_argument(
        "target", nargs="?", metavar="TARGET",
        help="module:Handler, module:app (WSGI) or module:factory() to serve "
        "[GRACESERVE_TARGET]; default: the demo app",
    )  # fmt: skip
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help="read settings from FILE: Python (module-level names as the flags, - written "
        "as _, as gunicorn.conf.py) or .toml (Python 3.11+); flags and GRACESERVE_* "
        "variables win over it [GRACESERVE_CONFIG]",
    )  # fmt: skip
    parser.add_argument(
        "--check-config", action="store_true",
        help="check every setting and import the target, then exit: 0, or 2 with one line",
    )  # fmt: skip
    for flag, env, convert, default, text in _OPTIONS:
        flags = (*_ALIASES.get(flag, ()), flag, *_AFTER.get(flag, ()))
        if convert is _boolean:
            parser.add_argument(*flags, action="store_true", default=None, help=f"{text} [{env}]")
            continue
        shown = _SHOWN.get(flag, default)
        if isinstance(shown, tuple):
            shown = shown[0] + ":" + str(shown[1])
        parser.add_argument(
            *flags, metavar=_METAVARS[flag], dest=_field(flag),
            action=_Repeated if flag == "--bind" else _Typed,
            help=f"{text} [{env}]" + (f" (default: {shown})" if shown is not None else ""),
        )  # fmt: skip
    parser.add_argument(
        "-e", "--env", metavar="NAME=VALUE", action=_Repeated, dest="env",
        help="set this environment variable for the app before it is imported; repeatable "
        "(graceserve's own settings are not read from it)",
    )  # fmt: skip
    parser.add_argument("-v", "--version", action="version", version=f"graceserve {__version__}")
    return parser


# 0 or "" given: none
_OPTIONAL = frozenset(
    {
        "pidfile", "idle_timeout", "certfile", "keyfile", "ca_certs", "access_log",
        "worker_timeout", "max_requests", "min_body_rate", "chdir", "health_path",
        "user", "group", "metrics_bind",
    }
)  # fmt: skip

# Paths: relative ones are relative to the directory graceserve was started in.
_PATHS = ("pidfile", "certfile", "keyfile", "ca_certs", "access_log", "chdir")


def _field(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def parse_args(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Settings:
    """Flags, then ``GRACESERVE_*`` variables, then the ``--config`` file, then
    ``$PORT`` and ``$WEB_CONCURRENCY``, then defaults; UsageError on bad input."""
    args = build_parser().parse_args(list(argv))
    base = launch_dir(environ)
    config_path = args.config or environ.get("GRACESERVE_CONFIG") or None
    filed: dict[str, tuple[str, Any]] = {}
    if config_path is not None:
        config_path = os.path.join(base, config_path)
        known = {_field(flag) for flag, *_ in _OPTIONS}
        raw = read_config_file(config_path)
        filed = file_settings(raw, config_path, known, {})
    values: dict[str, Any] = {}
    for flag, env, convert, _default, _text in _OPTIONS:
        name = _field(flag)
        if name == "bind":
            values.update(_binds(args.bind, environ, filed, base))
            continue
        found = _lookup(name, getattr(args, name), env, environ, filed)
        if found is None:
            continue  # the default, from Settings
        source, given = found
        if given is True:  # a flag without a value (--preload)
            values[name] = True
            continue
        try:
            value = convert(given)
        except UsageError as exc:  # an address's own message names --bind: say the source
            raise UsageError(str(exc).replace("--bind", source, 1)) from None
        except ValueError as exc:
            raise UsageError(f"{source}: {exc}") from None
        if name == "idle_timeout" and value == 0 and "keep" in source:
            raise UsageError(f"{source} 0: {_KEEP_ALIVE_ZERO}")
        values[name] = value if value or name not in _OPTIONAL else None
        if name in ("preload", "reload"):
            values[name] = bool(value)
    for name in _PATHS:
        if isinstance(values.get(name), str) and values[name] != "-":
            values[name] = os.path.normpath(os.path.join(base, values[name]))
    check_chdir(values.get("chdir"))
    pairs = env_pairs([*listed(filed.get("env")), *(args.env or [])])
    target = args.target or environ.get("GRACESERVE_TARGET") or filed.get("target", ("", None))[1]
    settings = Settings(
        target=target or None, config=config_path, check_config=bool(args.check_config),
        env=pairs, **values,
    )  # fmt: skip
    _check_tls(settings)
    _check_user(settings)
    return _check_workers(settings, given=values)


_KEEP_ALIVE_ZERO = (
    "gunicorn turns keep-alive off with 0; graceserve always keeps connections alive and "
    "ends them itself at a stop (--idle-timeout 0: never close an idle one)"
)


def _lookup(
    name: str, flagged: Any, env: str, environ: Mapping[str, str],
    filed: Mapping[str, tuple[str, Any]],
) -> tuple[str, Any] | None:  # fmt: skip
    """(source, text) of the first place that sets ``name``, in precedence order."""
    if flagged is True:
        return (name, True)
    if flagged is not None:
        source, text = flagged
        return (source, text)
    if env in environ:
        return (env, environ[env])
    if name in filed:
        return filed[name]
    platform = _PLATFORM.get(name)
    if platform is not None and environ.get(platform[0], "").strip():
        variable, make = platform
        return (variable, make(environ[variable].strip()))
    return None


def _port(text: str) -> str:
    if not text.isdigit() or int(text) > 65535:
        raise UsageError(f"PORT={text!r} (the port the platform gives) is not a port 0-65535")
    return f"0.0.0.0:{text}"


# Variables other servers (gunicorn, Heroku, Cloud Run) honour, below the config file.
_PLATFORM: dict[str, tuple[str, Callable[[str], str]]] = {
    "workers": ("WEB_CONCURRENCY", str),
}


_SEPARATORS = re.compile(r"[,\s]+")


def _binds(
    flagged: list[tuple[str, str]] | None, environ: Mapping[str, str],
    filed: Mapping[str, tuple[str, Any]], base: str,
) -> dict[str, Any]:  # fmt: skip
    """``bind`` and ``extra_binds`` from the first place that names addresses: every
    ``--bind``, else ``GRACESERVE_BIND`` (separated by commas or spaces), else the
    config file's ``bind`` (a list, or a string as the variable), else ``$PORT``;
    {} for the default.  The same address twice is refused (port 0 excepted: each
    picks its own port)."""
    given: list[tuple[str, str]] = list(flagged or [])
    if not given and "GRACESERVE_BIND" in environ:
        given = _split("GRACESERVE_BIND", environ["GRACESERVE_BIND"])
    elif not given and "bind" in filed:
        for source, text in listed(filed["bind"]):
            given += _split(source, text) if isinstance(text, str) else [(source, text)]
    elif not given and environ.get("PORT", "").strip():
        given = [("PORT", _port(environ["PORT"].strip()))]
    if not given:
        return {}
    addresses: list[Any] = []
    for source, text in given:
        if not isinstance(text, str):
            raise UsageError(f"{source}: {text!r} is not an address string")
        if text.startswith("unix:") and text[len("unix:") :]:
            text = "unix:" + os.path.join(base, text[len("unix:") :])  # not the cwd's
        try:
            address = parse_bind(text)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--bind", source, 1)) from None
        if address in addresses and (isinstance(address, str) or address[1] != 0):
            raise UsageError(
                f"{source} {format_bind(address)} is given twice: each listener needs "
                "its own address"
            )
        addresses.append(address)
    return {"bind": addresses[0], "extra_binds": tuple(addresses[1:])}


def _split(source: str, text: str) -> list[tuple[str, str]]:
    words = [word for word in _SEPARATORS.split(text.strip()) if word]
    if not words:
        raise UsageError(f"{source} {text!r} names no address")
    return [(source, word) for word in words]


def _check_workers(settings: Settings, given: Mapping[str, Any]) -> Settings:
    """One process has no watchdog: a process cannot kill and replace its own stuck
    serving loop (its interpreter is the one that is stuck).  So ``--worker-timeout``
    asked for with one worker is refused; its default is not used there (also not
    once a reload made a worker process take over the serving: one process stays
    one; ``graceserve.process.runner``)."""
    if settings.workers == 1 and given.get("worker_timeout"):
        raise UsageError(
            "--worker-timeout needs --workers 2 or more (also as -t/--timeout): one "
            "process cannot kill and "
            "replace its own stuck serving loop"
        )
    return settings


def _check_user(settings: Settings) -> None:
    """--user and --group together (``resolve``'s UsageError); with workers, the
    supervisor stays root, so it must not import the app (``--preload``)."""
    if resolve(settings.user, settings.group) is None:
        return
    if settings.preload and settings.workers > 1:
        raise UsageError(
            "--preload with --user would import the app in the supervisor, which stays "
            "root (it binds, and removes the pidfile and sockets at exit); drop --preload"
        )


def _check_tls(settings: Settings) -> None:
    """The TLS options that only make sense together (the files are read at start-up)."""
    if settings.certfile is None:
        for name in ("keyfile", "ca_certs"):
            if getattr(settings, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')} needs --certfile")
    if settings.cert_reqs != "none" and settings.ca_certs is None:
        raise UsageError(f"--cert-reqs {settings.cert_reqs} needs --ca-certs")
