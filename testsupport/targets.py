"""The contract suite's target, written twice: a stdlib handler and a WSGI app, same routes.

Why this module exists: every guarantee of the README is checked on both kinds
of target (``tests/test_matrix*.py``), so the two must behave identically as
applications and differ only in how graceserve serves them.  The server
imports this module by name (``testsupport.targets:Handler`` or
``testsupport.targets:app``; the repository root is on the child's
``PYTHONPATH``), so nothing is written to disk per test.

Routes (GET unless said):

- ``/``: 200, JSON ``{"pid", "kind", "path"}``.
- ``/gate?path=P``: connect to the Unix socket ``P`` (a ``testsupport.serve.Gate``)
  and wait for one byte or its close; then 200 with ``{"pid", "stopping"}``,
  ``stopping`` read after the wait.  The test knows the request is in the app
  (the gate accepted) and decides when it ends: no sleeps.
- ``/slow?seconds=N``: sleep N seconds (deaf to any cut), then 200.
- ``/stream``: a chunked response, one ``tick`` chunk every 50 ms while the server
  is not stopping; at the stop one ``bye`` chunk and the end (README's event stream).
- ``/healthz``: 200, or 503 once the server is stopping.
- ``/env``: ``{"pid", "stopping", "multiprocess", "multithread", "run_once", "client",
  "scheme"}`` (the ``wsgi.*`` flags are None for the handler; ``client`` and ``scheme``
  are what graceserve made of a trusted proxy's headers: ``REMOTE_ADDR`` and
  ``wsgi.url_scheme``, or the handler's ``forwarded_client`` and ``forwarded_proto``).
- ``/log?id=X``: the app logs: the WSGI app writes a Flask-style exception log
  (a line and a traceback) to ``wsgi.errors``; the handler calls ``log_message``
  and ``log_error``.  Then 200.
- ``/seen/...``: like ``/``, after writing ``app-saw <path>`` to stderr (so a
  test can tell that a request reached the app, or did not).
- ``/freeze?seconds=N``: hold the GIL N seconds (the serving loop stops).
- ``POST /echo``: the body back (``Content-Length`` bodies; the WSGI app also
  de-chunked ones).

If the environment names a file in ``MATRIX_BREAK_IMPORT`` and that file exists,
importing this module fails: a reload of "broken code" without writing code.

Threading: one handler instance per connection (stdlib); the WSGI app is
reentrant.  No state is shared between requests.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

__all__ = ["BREAK_IMPORT", "TARGETS", "Handler", "app"]

TARGETS = {"handler": "testsupport.targets:Handler", "wsgi": "testsupport.targets:app"}
"""The command-line TARGET of each kind."""

BREAK_IMPORT = "MATRIX_BREAK_IMPORT"
"""The environment variable naming the file whose presence makes the import fail."""
if (_broken := os.environ.get(BREAK_IMPORT)) and os.path.exists(_broken):
    raise ImportError(f"broken on purpose: {_broken} exists")

GATE_TIMEOUT = 60.0  # seconds a request waits at a gate at most (a test that forgot it)
TICK = 0.05  # seconds between the chunks of /stream


def gate(path: str) -> None:
    """Check in at the test's gate ``path`` and wait until it lets us go."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(GATE_TIMEOUT)
        sock.connect(path)
        with contextlib.suppress(OSError):
            sock.recv(1)


def freeze(seconds: float) -> None:
    """Sleep in C while holding the GIL: every thread of the process stops."""
    ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))


def _query(raw: str) -> dict[str, str]:
    return {key: values[0] for key, values in urllib.parse.parse_qs(raw).items()}


def _json(payload: dict[str, object]) -> bytes:
    return json.dumps(payload).encode() + b"\n"


def _stream(stopping: Callable[[], bool]) -> Iterator[bytes]:
    for tick in range(int(GATE_TIMEOUT / TICK)):
        if stopping():
            yield b"bye\n"
            return
        yield f"tick {tick}\n".encode()
        time.sleep(TICK)


# -- the WSGI app ------------------------------------------------------------------


def _never() -> bool:
    return False


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The routes above, as a PEP 3333 application."""
    stopping: Callable[[], bool] = environ.get("graceserve.stopping", _never)
    path = environ.get("PATH_INFO", "/")
    query = _query(environ.get("QUERY_STRING", ""))
    status = "200 OK"
    if path == "/stream":
        start_response(status, [("Content-Type", "text/plain")])
        return _stream(stopping)
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response(status, [("Content-Length", str(len(body)))])
        return [body]
    payload: dict[str, object] = {"pid": os.getpid(), "kind": "wsgi", "path": path}
    if path == "/gate":
        gate(query["path"])
        payload["stopping"] = stopping()
    elif path == "/slow":
        time.sleep(float(query.get("seconds", "1")))
    elif path == "/healthz":
        payload["stopping"] = stopping()
        status = "503 Service Unavailable" if payload["stopping"] else status
    elif path == "/env":
        payload["stopping"] = stopping()
        for flag in ("multiprocess", "multithread", "run_once"):
            payload[flag] = environ[f"wsgi.{flag}"]
        payload.update(client=environ["REMOTE_ADDR"], scheme=environ["wsgi.url_scheme"])
    elif path == "/log":
        errors = environ["wsgi.errors"]
        try:
            raise ValueError(f"app failure {query.get('id', '')}")
        except ValueError:  # what Flask's default handler writes for an unhandled exception
            errors.write(f"[{time.ctime()}] ERROR in app: Exception on /log [GET]\n")
            errors.write(traceback.format_exc())
        errors.flush()
    elif path.startswith("/seen/"):
        print(f"app-saw {path}", file=sys.stderr, flush=True)
    elif path == "/freeze":
        freeze(float(query.get("seconds", "10")))
    body = _json(payload)
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


# -- the stdlib handler ------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """The routes above, as a plain ``BaseHTTPRequestHandler`` (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"

    def _stopping(self) -> bool:
        return bool(getattr(self.server, "stopping", False))

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = _query(url.query)
        if url.path == "/stream":
            self._stream()
            return
        payload: dict[str, object] = {"pid": os.getpid(), "kind": "handler", "path": url.path}
        status = 200
        if url.path == "/gate":
            gate(query["path"])
            payload["stopping"] = self._stopping()
        elif url.path == "/slow":
            time.sleep(float(query.get("seconds", "1")))
        elif url.path == "/healthz":
            payload["stopping"] = self._stopping()
            status = 503 if payload["stopping"] else 200
        elif url.path == "/env":
            payload["stopping"] = self._stopping()
            payload.update(multiprocess=None, multithread=None, run_once=None)
            payload["client"] = getattr(self, "forwarded_client", None)
            payload["scheme"] = getattr(self, "forwarded_proto", None)
        elif url.path == "/log":
            self.log_message("app message %s", query.get("id", ""))
            self.log_error("app error %s", query.get("id", ""))
        elif url.path.startswith("/seen/"):
            print(f"app-saw {url.path}", file=sys.stderr, flush=True)
        elif url.path == "/freeze":
            freeze(float(query.get("seconds", "10")))
        self._reply(status, _json(payload))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply(200, body)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in _stream(self._stopping):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
