"""The smallest WSGI app for bench/speed.py: ``GET`` anything -> 200 ``ok`` (a 2-byte body).

What a server costs per request on its own: the app does next to nothing.
Every server in the speed bench imports this very module (``speed_hello:app``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"ok"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    """Answer 200 ``ok``, whatever was asked.  Thread-safe (no state)."""
    start_response("200 OK", list(HEADERS))
    return [BODY]
