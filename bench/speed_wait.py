"""A WSGI app that waits on I/O for bench/speed.py: ``GET`` anything -> 200 ``ok`` after 10 ms.

What a server does with an app that blocks rather than computes (a database
call, an upstream request): the requests in flight must overlap, or one
process serves at most 100 a second.  Every server in the speed bench imports
this very module (``speed_wait:app``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

WAIT = 0.010  # seconds each request waits, off the CPU (time.sleep releases the GIL)
BODY = b"ok"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    """Wait ``WAIT`` seconds, then answer 200 ``ok``.  Thread-safe (no state)."""
    time.sleep(WAIT)
    start_response("200 OK", list(HEADERS))
    return [BODY]
