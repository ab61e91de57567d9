"""``wsgi.errors`` under ``--log-format json``: what an app writes there, as JSON records.

Why this module exists: ``--log-format json`` promises one JSON object per
stderr line, and ``wsgi.errors`` is the app's stderr.  A framework writes an
exception log there as one ``write`` of many lines (Flask's handler: the
message, then the traceback); passed through, a collector gets 17 loose
lines per exception.  So under JSON each write that ends a line becomes one
record on the ``graceserve`` logger (``"event": "app"``), its lines kept
together in ``message``: a ``write`` without a line end (``print`` writes
the text, then ``"\\n"``) waits for the rest, or for ``flush``.  Text logs
keep ``sys.stderr`` itself (no cost, nothing changes).

Threading contract: one stream per connection, used by its thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["ErrorStream"]

log = logging.getLogger("graceserve")

_MOST = 65536  # characters kept waiting for a line end before they go out anyway


class ErrorStream:
    """A file-like ``wsgi.errors`` (PEP 3333: ``write``, ``writelines``, ``flush``)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[str] = []

    def write(self, text: str) -> int:
        """Queue ``text``; a write that ends a line (or a long one) goes out as one record."""
        if not isinstance(text, str):  # PEP 3333 says str; be kind to bytes
            text = bytes(text).decode("utf-8", "replace")
        self._pending.append(text)
        if text.endswith("\n") or sum(map(len, self._pending)) > _MOST:
            self.flush()
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each of ``lines`` (one record for all of them, at their end)."""
        for line in lines:
            self._pending.append(line)
        self.flush()

    def flush(self) -> None:
        """Send what is queued as one record."""
        text = "".join(self._pending).rstrip("\n")
        self._pending.clear()
        if text:
            log.error(text, extra={"event": "app"})

    def isatty(self) -> bool:
        """Not a terminal."""
        return False
