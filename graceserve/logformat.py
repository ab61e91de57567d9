"""graceserve's own log lines as text or as JSON objects, one per line.

Why this module exists: log collectors (Kubernetes, journald exporters) want
one JSON object per line with stable keys, not prose to parse.  Every
graceserve log call may pass ``extra={"event": "...", ...}``; in JSON those
become keys next to ``time``, ``level``, ``pid``, ``logger``, ``event`` (``log``
when the call named none) and ``message`` (the text line's message, exactly:
the readiness line stays parseable by ``graceserve.readiness.parse_ready``).
A traceback is the string value of ``traceback``, never loose lines.  With
JSON chosen, a ``BaseHTTPRequestHandler``'s own lines (the stdlib's
``log_message``, which writes to stderr directly) go through the logger too,
as ``"event": "handler"``, so that stderr stays one JSON object per line.

Threading contract: a logging.Formatter; called under the handler's lock.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["FORMATS", "TEXT_FORMAT", "JSONFormatter", "configure_logging", "json_lines"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s graceserve[%(process)d] %(levelname)s %(message)s"

# What every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newline inside it)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "event": "log",
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=True)


_json_lines = False


def json_lines() -> bool:
    """Whether ``configure_logging`` chose JSON (handlers then log their own lines through it)."""
    return _json_lines


def configure_logging(level: str, fmt: str = "text") -> None:
    """Send the ``graceserve`` logger to stderr at ``level``, as text or JSON."""
    global _json_lines
    _json_lines = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
    formatter = JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger("graceserve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
