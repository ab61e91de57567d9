"""Reading a configuration file (``--config``): a Python file, or TOML.

Why this module exists: gunicorn users keep their settings in a
``gunicorn.conf.py`` whose module-level names are the settings, and TOML is
the standard library's own configuration format since Python 3.11
(``tomllib``).  This module only reads a file into ``{name: value}``, with
each way it can be wrong turned into one line (``UsageError``, exit 2), and turns the values into
the text a flag would give (``file_settings``): how they are checked is
``graceserve.config``'s, the same code that checks flags and environment
variables.

A Python file is executed as gunicorn executes its own: code runs, and every
module-level name that does not start with ``_``, is not a module and is not a
function or class counts as a setting.  Functions named like gunicorn's server
hooks (``post_fork``, ``on_starting``, ...) are refused rather than ignored:
graceserve would never call them.

Threading: plain functions, no state.
"""

from __future__ import annotations

import importlib
import sys
import traceback
import types
from collections.abc import Collection, Mapping
from typing import Any

from graceserve.errors import UsageError

__all__ = ["GUNICORN_HOOKS", "file_settings", "listed", "read_config_file"]

GUNICORN_HOOKS = frozenset(
    {
        "on_starting", "on_reload", "when_ready", "pre_fork", "post_fork", "post_worker_init",
        "worker_int", "worker_abort", "pre_exec", "pre_request", "post_request", "child_exit",
        "worker_exit", "nworkers_changed", "on_exit", "ssl_context",
    }
)  # fmt: skip


def read_config_file(path: str) -> dict[str, Any]:
    """The settings in ``path``: ``{name: value}``, names with ``-`` written as ``_``.

    ``.toml`` files are TOML (Python 3.11+), anything else is Python.  UsageError
    (one line naming the file) if it cannot be read or run.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror or exc}") from None
    if path.endswith(".toml"):
        return _read_toml(path, data)
    return _read_python(path, data)


def _read_toml(path: str, data: bytes) -> dict[str, Any]:
    if sys.version_info < (3, 11):
        raise UsageError(
            f"--config {path}: TOML needs Python 3.11 or later (tomllib); "
            "use a Python configuration file (the same names, as module-level variables)"
        )
    return _toml_settings(path, data)


def _toml_settings(path: str, data: bytes) -> dict[str, Any]:
    """The top-level keys of a TOML file (Python 3.11+: ``tomllib``)."""
    tomllib: Any = importlib.import_module("tomllib")  # mypy reads this code as 3.10's
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"--config {path}: not valid TOML: {exc}") from None
    settings: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            raise UsageError(f"--config {path}: [{key}] is a table; settings are top-level keys")
        settings[key.replace("-", "_")] = value
    return settings


def _read_python(path: str, data: bytes) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__file__": path, "__name__": "__config__"}
    try:
        code = compile(data, path, "exec")
    except (SyntaxError, ValueError) as exc:
        where = f"line {exc.lineno}: " if isinstance(exc, SyntaxError) and exc.lineno else ""
        message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise UsageError(f"--config {path}: {where}{message}") from None
    try:
        exec(code, namespace)
    except (Exception, SystemExit) as exc:
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
        where = f"line {lines[-1]}: " if lines else ""
        text = " ".join(str(exc).split())
        raise UsageError(
            f"--config {path}: {where}{type(exc).__name__}" + (f": {text}" if text else "")
        ) from None
    settings: dict[str, Any] = {}
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if name in GUNICORN_HOOKS and callable(value):
            raise UsageError(
                f"--config {path}: {name} is a gunicorn server hook; graceserve runs no hooks "
                "(code for every worker runs when the app is imported)"
            )
        if isinstance(value, type) or callable(value):
            continue  # a helper, or an imported function or class
        settings[name] = value
    return settings


# A config file's names that are not a flag's own, and gunicorn's names for ours.
_FILE_ALIASES = {
    # the flags' other names: -t/--timeout, --keep-alive, --graceful-timeout, -p/--pid
    "timeout": "worker_timeout",
    "keep_alive": "idle_timeout",
    "graceful_timeout": "grace",
    "pid": "pidfile",
    # gunicorn.conf.py's own names, where they mean the same as ours
    "keepalive": "idle_timeout",
    "preload_app": "preload",
    "raw_env": "env",
    "loglevel": "log_level",
    "wsgi_app": "target",
}
_GUNICORN_NAMES = {  # gunicorn's names for what is not quite the same here
    "accesslog": "access_log, where - is stderr", "worker_connections": "max_connections",
}  # fmt: skip


def file_settings(
    found: Mapping[str, Any], path: str, known: Collection[str], refused: Mapping[str, str]
) -> dict[str, tuple[str, Any]]:
    """A config file's ``{name: value}`` as ``{field: (source, text)}`` (``bind`` and
    ``env`` may hold a list): the text a flag would give, for the command line's checks.

    ``known``: the settings' names; ``refused``: names refused with their flag's
    message.  UsageError for a name that is no setting, or a value of the wrong kind."""
    settings: dict[str, tuple[str, Any]] = {}
    for name, value in found.items():
        field = _FILE_ALIASES.get(name, name)
        source = f"{path}: {name}"
        if name in refused:
            raise UsageError(f"{path}: {refused[name].replace('--' + name, name, 1)}")
        if field not in known and field not in ("env", "target"):
            hint = _GUNICORN_NAMES.get(name)
            said = f" (graceserve's: {hint})" if hint else ""
            raise UsageError(f"{source}: not a graceserve setting{said}")
        if value is None:
            continue
        if field in ("bind", "env") and isinstance(value, (list, tuple)):
            if not all(isinstance(item, str) for item in value) or not value:
                raise UsageError(f"{source}: expected a string or a list of strings")
            settings[field] = (source, list(value))
            continue
        settings[field] = (source, _text(source, field, value))
    return settings


def _text(source: str, field: str, value: Any) -> str:
    """A config file's value as the text a flag would give."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if field == "umask" and isinstance(value, int):
        return format(value, "o")  # umask = 0o007 in Python, not the digits 7
    if isinstance(value, (int, float, str)):
        return str(value)
    raise UsageError(f"{source}: {value!r:.40} is not a string or a number")


def listed(found: tuple[str, Any] | None) -> list[tuple[str, str]]:
    """A config file's ``bind``/``env``, one string or a list of them, as (source, text)."""
    if found is None:
        return []
    source, value = found
    items = value if isinstance(value, list) else [value]
    return [(source, item) for item in items]
