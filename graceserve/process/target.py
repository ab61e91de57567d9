"""Turning ``module:attr`` into a request handler class or a WSGI application.

Why this module exists: a bad target is the most common start-up mistake, and
each way it can be wrong (no colon, no module, an error inside the module, a
missing attribute, not a handler class) deserves its own one-line message
with a hint, instead of graceserve's traceback.  An exception raised by the
app's own code (at import, or by its factory) travels with the StartupError
as ``app_error``, its traceback cut to the app's frames, so the command line
shows the file and line that failed.  The working directory is put on ``sys.path`` first,
as gunicorn does, so ``python -m graceserve app:Handler`` finds ``./app.py``.

What is served: a ``socketserver.BaseRequestHandler`` subclass (or a
``functools.partial`` of one) as a handler; ``module:factory()`` calls the
factory (no arguments) and serves what it returns; any other callable is a
WSGI application.
"""

from __future__ import annotations

import ast
import difflib
import functools
import http.server
import importlib
import inspect
import logging
import os
import socketserver
import sys
from typing import Any

from graceserve.errors import StartupError, UsageError
from graceserve.process.apptrace import app_frames

__all__ = ["is_handler", "is_http_handler", "is_wsgi_app", "load_handler", "load_target"]

log = logging.getLogger("graceserve")


def load_handler(target: str) -> type[socketserver.BaseRequestHandler]:
    """Import ``module:attr`` and check it names a ``BaseRequestHandler`` subclass."""
    found = load_target(target)
    if not (isinstance(found, type) and issubclass(found, socketserver.BaseRequestHandler)):
        raise StartupError(
            f"{target} is {type(found).__name__} {found!r:.60}, "
            "not a socketserver.BaseRequestHandler subclass"
        )
    return found


def load_target(target: str) -> Any:
    """Import ``module:attr`` (or call ``module:factory()``): a handler class or a WSGI app."""
    module_name, colon, attr = target.partition(":")
    factory = attr.endswith(")")
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if factory:
        attr, args, kwargs = _factory_call(target, attr)
    if not colon or not module_name or not attr:
        raise UsageError(f"target {target!r} is not of the form module:Handler or module:app")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            missing = (
                f"cannot import {module_name!r}: no module named {exc.name!r} in {cwd} "
                "or on sys.path (run graceserve from the directory that holds it, "
                "or add that directory to PYTHONPATH)"
            )
            raise StartupError(missing) from None
        hint = (
            f" ({exc.name!r} is not installed for {sys.executable}, the Python running "
            "graceserve: install graceserve into the app's environment, or what the app "
            "needs into this one)"
            if exc.name
            else ""
        )
        raise StartupError(
            f"importing {module_name!r} failed: {_one_line(exc)}{hint}", app_frames(exc)
        ) from None
    except (Exception, SystemExit) as exc:
        raise StartupError(
            f"importing {module_name!r} failed: {_one_line(exc)}", app_frames(exc)
        ) from None
    found: object = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise StartupError(
                f"module {module_name!r} has no attribute {attr!r}{_did_you_mean(found, part)}"
            ) from None
    if factory:
        if not callable(found):
            raise StartupError(f"{target}: {module_name}.{attr} is not callable")
        try:
            found = found(*args, **kwargs)
        except Exception as exc:
            raise StartupError(
                f"calling {module_name}.{attr}() failed: {_one_line(exc)}", app_frames(exc)
            ) from None
    if not (is_handler(found) or _takes_two_arguments(found)):
        raise StartupError(
            f"{target} is {type(found).__name__} {found!r:.60}, not a socketserver."
            "BaseRequestHandler subclass, nor a WSGI application (environ, start_response)"
        )
    return found


def _factory_call(target: str, call: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """``name(literal, key=literal)`` into its name and arguments (literals only, as gunicorn)."""
    try:
        node = ast.parse(call, mode="eval").body
        if not isinstance(node, ast.Call):
            raise ValueError("not a call")
        name = ast.unparse(node.func)
        args = tuple(ast.literal_eval(arg) for arg in node.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        if len(kwargs) != len(node.keywords):
            raise ValueError("**kwargs")
    except (SyntaxError, ValueError) as exc:
        raise UsageError(
            f"target {target!r}: a factory call takes literal arguments only ({exc})"
        ) from None
    return name, args, kwargs


def _takes_two_arguments(found: object) -> bool:
    """Whether ``found`` can be called as ``app(environ, start_response)``, as far as we know."""
    if not callable(found):
        return False
    try:
        signature = inspect.signature(found)
    except (TypeError, ValueError):  # no signature to read (a builtin): give it the benefit
        return True
    try:
        signature.bind(None, None)
    except TypeError:
        return False
    return True


def _handler_class(target: Any) -> Any:
    while isinstance(target, functools.partial):
        target = target.func
    return target


def is_handler(target: Any) -> bool:
    """Whether ``target`` is a BaseRequestHandler subclass (or a functools.partial of one)."""
    found = _handler_class(target)
    return isinstance(found, type) and issubclass(found, socketserver.BaseRequestHandler)


def is_http_handler(handler_class: Any) -> bool:
    """Whether the class speaks HTTP (and so gets GracefulHTTPServer)."""
    found = _handler_class(handler_class)
    return isinstance(found, type) and issubclass(found, http.server.BaseHTTPRequestHandler)


def is_wsgi_app(target: Any) -> bool:
    """Whether ``target`` is served as a WSGI application: a callable that is not a handler."""
    return callable(target) and not is_handler(target)


def _did_you_mean(holder: object, name: str) -> str:
    """`` (did you mean 'app'?)`` for a near miss among ``holder``'s public names, or ''."""
    names = [n for n in dir(holder) if not n.startswith("_")]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
