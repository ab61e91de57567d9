"""graceserve's own log lines as text or as JSON objects, one per line.

Why this module exists: log collectors (Kubernetes, journald exporters) want
one JSON object per line with stable keys, not prose to parse.  Every
graceserve log call may pass ``extra={"event": "...", ...}``; in JSON those
become keys next to ``time``, ``level``, ``pid``, ``logger``, ``event`` (``log``
when the call named none) and ``message`` (the text line's message, exactly:
the readiness line stays parseable by ``graceserve.process.readiness.parse_ready``).
A traceback is the string value of ``traceback``, never loose lines.  Times
carry their zone: ``time`` is UTC (``...Z``) in JSON, as in the JSON access
log; a text line starts with the local time and its offset (ISO 8601).  With
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

__all__ = [
    "FORMATS",
    "TEXT_FORMAT",
    "JSONFormatter",
    "TextFormatter",
    "configure_logging",
    "iso_time",
    "json_lines",
]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s graceserve[%(process)d] %(levelname)s %(message)s"


def iso_time(created: float, utc: bool = False) -> str:
    """``created`` (a ``time.time()``) as ISO 8601 with milliseconds and its zone.

    Local time with its offset (``2026-12-02T04:51:44.123+01:00``), or UTC with
    ``Z`` (``2026-12-02T03:51:44.123Z``): never a time without its zone, which
    is ambiguous once lines from two hosts, or two seasons, meet.
    """
    moment = time.gmtime(created) if utc else time.localtime(created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", moment)
    millis = int(created * 1000) % 1000
    if utc:
        return f"{stamp}.{millis:03d}Z"
    offset = moment.tm_gmtoff or 0
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return f"{stamp}.{millis:03d}{sign}{hours:02d}:{minutes:02d}"


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, with the local time and its UTC offset (ISO 8601)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """The record's time as ``iso_time`` writes it (local, with its offset)."""
        return iso_time(record.created)


# What every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newline inside it)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso_time(record.created, utc=True),
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
    formatter = JSONFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger("graceserve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
