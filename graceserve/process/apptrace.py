"""The app's own frames of a traceback: what a failed import or factory call shows.

Why this module exists: when the target fails to import (``RuntimeError: db
not configured`` three modules deep), the user needs the file and line in
*their* code, at the default log level, and nothing else: not the frames of
``importlib``'s machinery nor graceserve's loader, which are the same for every
failure and bury the one line that matters.  ``app_frames`` rebuilds the
exception's traceback without them; the logger then prints it as usual (text:
the standard ``Traceback (most recent call last):`` block; JSON: the
``traceback`` string).  Chained exceptions (``__cause__``, ``__context__``)
raised inside the app keep their own tracebacks.

Pure functions: thread-safe.
"""

from __future__ import annotations

import importlib
import os
from types import TracebackType

__all__ = ["app_frames", "is_app_frame"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_IMPORTLIB = os.path.dirname(os.path.abspath(importlib.__file__ or "")) + os.sep


def is_app_frame(filename: str) -> bool:
    """Whether a frame of ``filename`` is worth showing: not importlib's, not graceserve's."""
    if filename.startswith("<frozen importlib"):
        return False
    path = os.path.abspath(filename)
    return not (path.startswith(_PACKAGE) or path.startswith(_IMPORTLIB))


def app_frames(exc: BaseException) -> BaseException:
    """``exc`` with its traceback cut to the app's frames (importlib's and ours dropped).

    The frames keep their order (outermost first).  Returns ``exc`` itself,
    changed in place (``with_traceback``).
    """
    kept: list[TracebackType] = []
    tb = exc.__traceback__
    while tb is not None:
        if is_app_frame(tb.tb_frame.f_code.co_filename):
            kept.append(tb)
        tb = tb.tb_next
    rebuilt: TracebackType | None = None
    for old in reversed(kept):
        rebuilt = TracebackType(rebuilt, old.tb_frame, old.tb_lasti, old.tb_lineno)
    return exc.with_traceback(rebuilt)
