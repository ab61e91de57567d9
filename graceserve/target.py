"""Turning ``module:attr`` into a request handler class.

Why this module exists: a bad target is the most common start-up mistake, and
each way it can be wrong (no colon, no module, an error inside the module, a
missing attribute, not a handler class) deserves its own one-line message
instead of a traceback.  The working directory is put on ``sys.path`` first,
as gunicorn does, so ``python -m graceserve app:Handler`` finds ``./app.py``.
"""

from __future__ import annotations

import http.server
import importlib
import logging
import os
import socketserver
import sys

from .errors import StartupError, UsageError

__all__ = ["is_http_handler", "load_handler"]

log = logging.getLogger("graceserve")


def load_handler(target: str) -> type[socketserver.BaseRequestHandler]:
    """Import ``module:attr`` and check it names a ``BaseRequestHandler`` subclass."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise UsageError(f"target {target!r} is not of the form module:Handler")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            missing = f"cannot import {module_name!r}: no module named {exc.name!r}"
            raise StartupError(missing) from None
        log.debug("importing %s failed", module_name, exc_info=True)
        raise StartupError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    except (Exception, SystemExit) as exc:
        log.debug("importing %s failed", module_name, exc_info=True)
        raise StartupError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    found: object = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise StartupError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not (isinstance(found, type) and issubclass(found, socketserver.BaseRequestHandler)):
        raise StartupError(
            f"{target} is {type(found).__name__} {found!r:.60}, "
            "not a socketserver.BaseRequestHandler subclass"
        )
    return found


def is_http_handler(handler_class: type[socketserver.BaseRequestHandler]) -> bool:
    """Whether the class speaks HTTP (and so gets GracefulHTTPServer)."""
    return issubclass(handler_class, http.server.BaseHTTPRequestHandler)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
