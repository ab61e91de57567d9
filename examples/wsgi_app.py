# Run:   python -m graceserve examples.wsgi_app:app --bind 127.0.0.1:8080
# Poke:  curl -i http://127.0.0.1:8080/                      (hello)
#        curl -i -d 'some body' http://127.0.0.1:8080/echo   (the body back)
#        curl -N http://127.0.0.1:8080/events                (a tick a second, until a stop)
#        curl -i http://127.0.0.1:8080/slow?seconds=3        (answers after 3 s)
#        curl -i http://127.0.0.1:8080/healthz               (200, or 503 once stopping)
# Stop:  kill -TERM <pid>: in-flight requests finish with "Connection: close", /events
#        says goodbye and ends its stream, idle keep-alive connections close cleanly, exit 0.
"""A stdlib-only WSGI application, served by graceserve with the same drain as a handler.

Nothing here is graceserve-specific except ``environ["graceserve.stopping"]``,
read through ``.get`` so the app still runs under any other WSGI server: a
zero-argument callable that turns True the moment a stop begins.  The event
stream checks it between events and ends its response politely, instead of
being cut when the grace runs out; the health check fails with it, so a load
balancer stops routing here (give it time with ``--drain-delay``).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

StartResponse = Callable[..., Any]


def _never() -> bool:
    return False


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes] | list[bytes]:
    """GET /, POST /echo, GET /events, GET /slow?seconds=N, GET /healthz."""
    stopping: Callable[[], bool] = environ.get("graceserve.stopping", _never)
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        return _reply(start_response, "200 OK", {"hello": "world"})
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])  # fmt: skip
        return [body]
    if path == "/events":
        start_response("200 OK", [("Content-Type", "text/event-stream"),
                                  ("Cache-Control", "no-cache")])  # fmt: skip
        return _events(stopping)
    if path == "/slow":
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        seconds = min(float(query.get("seconds", ["1"])[0]), 60.0)
        time.sleep(seconds)
        return _reply(start_response, "200 OK", {"slept": seconds})
    if path == "/healthz":
        down = stopping()
        return _reply(start_response, "503 Service Unavailable" if down else "200 OK",
                      {"stopping": down})  # fmt: skip
    return _reply(start_response, "404 Not Found", {"error": "no such route"})


def _events(stopping: Callable[[], bool]) -> Iterator[bytes]:
    """One event a second for up to an hour; a polite last event when a stop begins."""
    for tick in range(3600):
        if stopping():
            yield b"event: bye\ndata: server stopping, reconnect elsewhere\n\n"
            return
        yield f"data: tick {tick}\n\n".encode()
        for _ in range(10):  # wake often, so the goodbye is prompt
            if stopping():
                break
            time.sleep(0.1)


def _reply(start_response: StartResponse, status: str, payload: object) -> list[bytes]:
    body = json.dumps(payload).encode() + b"\n"
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])  # fmt: skip
    return [body]
