"""Peer servers for the benchmarks: the same tiny app on stdlib, waitress and gunicorn.

Not a benchmark itself; bench/http_load.py and bench/signals.py start these.
Every peer answers like graceserve's demo app: ``GET /`` -> 200
``hello from graceserve\\n`` (text/plain, Content-Length), ``GET /slow?seconds=N``
-> 200 after N seconds, anything else 404.

    python bench/peers.py stdlib  [--port P] [--nodelay] [--backlog N]  # ThreadingHTTPServer
    python bench/peers.py stdlib-plain [--port P]       # ThreadingHTTPServer, no handler at all
    python bench/peers.py waitress [--port P] [--threads N] # needs: bash bench/setup
    python bench/peers.py cheroot [--port P] [--threads N]  # needs: bash bench/setup
    python -m gunicorn --chdir bench -w 1 -k sync peers:wsgi_app   # gunicorn, same app

The stdlib peer stops the way most scripts do it (the naive way): a SIGTERM
handler starts ``server.shutdown()`` in a thread, then the main thread calls
``server_close()`` and exits.  Its handler threads are daemon threads, so
requests in flight at exit are dropped.  It prints
``listening on http://127.0.0.1:PORT`` on stderr once the handler is installed.

``stdlib-plain`` is the stock server as most scripts run it: ``serve_forever()``
in the main thread and no signal handler, so SIGTERM kills it (exit -15).
``cheroot`` runs the WSGI app on ``cheroot.wsgi.Server`` and calls
``server.stop()`` on SIGTERM, the way cheroot's documentation shows.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, cast

HELLO = b"hello from graceserve\n"
CONTENT_TYPE = "text/plain; charset=utf-8"
MAX_SLOW = 300.0


def _slow_seconds(query: str) -> float | None:
    try:
        seconds = float(urllib.parse.parse_qs(query).get("seconds", ["1"])[0])
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_SLOW else None


class HelloHandler(http.server.BaseHTTPRequestHandler):
    """The demo app's ``/`` and ``/slow`` routes as a plain stdlib handler (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"
    server_version = "peer/1.0"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/":
            self._reply(200, HELLO)
        elif url.path == "/slow":
            seconds = _slow_seconds(url.query)
            if seconds is None:
                self._reply(400, b"bad seconds\n")
                return
            time.sleep(seconds)
            self._reply(200, f"slept {seconds:g} s\n".encode())
        else:
            self._reply(404, b"not found\n")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet, like graceserve's demo at its default log level."""


class NoDelayHTTPServer(http.server.ThreadingHTTPServer):
    """The stock server with ``TCP_NODELAY`` on accepted sockets (no Nagle stall)."""

    def get_request(self) -> tuple[socket.socket, Any]:
        request, address = self.socket.accept()
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return request, address


def wsgi_app(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    """The same routes as a WSGI app (for waitress and gunicorn)."""
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        status, body = "200 OK", HELLO
    elif path == "/slow":
        seconds = _slow_seconds(environ.get("QUERY_STRING", ""))
        if seconds is None:
            status, body = "400 Bad Request", b"bad seconds\n"
        else:
            time.sleep(seconds)
            status, body = "200 OK", f"slept {seconds:g} s\n".encode()
    else:
        status, body = "404 Not Found", b"not found\n"
    start_response(status, [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
    return [body]


ServerClass = type[http.server.ThreadingHTTPServer]


def run_stdlib(port: int, nodelay: bool, backlog: int | None = None) -> None:
    """The stock ThreadingHTTPServer with the naive SIGTERM handler."""
    cls = NoDelayHTTPServer if nodelay else http.server.ThreadingHTTPServer
    if backlog is not None:
        cls = cast(ServerClass, type(cls.__name__, (cls,), {"request_queue_size": backlog}))
    server = cls(("127.0.0.1", port), HelloHandler)
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()


def run_stdlib_plain(port: int) -> None:
    """The stock ThreadingHTTPServer, no signal handler: SIGTERM's default action kills it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), HelloHandler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()


def run_cheroot(port: int, threads: int) -> None:
    """cheroot.wsgi.Server of the WSGI app, stopped the way cheroot's docs show.

    The docs: ``prepare()``, ``serve()`` in a thread, wait for "some appropriate
    stop condition", then ``stop()``.  The stop condition here is SIGTERM,
    awaited with ``sigwait`` (blocked in every thread).  Calling ``stop()``
    straight from a SIGTERM handler deadlocks when ``serve()`` runs in the main
    thread: ``stop()`` waits for the serve loop the handler interrupted.
    """
    from cheroot import wsgi  # bench-only dependency, imported only here

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by every thread
    server = wsgi.Server(("127.0.0.1", port), wsgi_app, numthreads=threads)
    server.prepare()
    serving = threading.Thread(target=server.serve)
    serving.start()
    print(f"listening on http://127.0.0.1:{server.bind_addr[1]}", file=sys.stderr, flush=True)
    try:
        signal.sigwait({signal.SIGTERM})
    finally:
        server.stop()
        serving.join()


def run_waitress(port: int, threads: int) -> None:
    """waitress.serve() of the WSGI app (waitress handles SIGTERM by exiting)."""
    import waitress  # bench-only dependency, imported only here

    # "Task queue depth is N" on every request beyond `threads` busy ones: not what we measure.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    print(f"listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    waitress.serve(wsgi_app, host="127.0.0.1", port=port, threads=threads, _quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="peer servers for the benchmarks")
    parser.add_argument("kind", choices=["stdlib", "stdlib-plain", "waitress", "cheroot"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--nodelay", action="store_true", help="stdlib: set TCP_NODELAY")
    parser.add_argument("--backlog", type=int, help="stdlib: listen backlog (stdlib: 5)")
    parser.add_argument("--threads", type=int, default=4, help="waitress, cheroot: worker threads")
    args = parser.parse_args()
    if args.kind == "stdlib":
        run_stdlib(args.port, args.nodelay, args.backlog)
    elif args.kind == "stdlib-plain":
        run_stdlib_plain(args.port)
    elif args.kind == "cheroot":
        run_cheroot(args.port, args.threads)
    else:
        run_waitress(args.port, args.threads)


if __name__ == "__main__":
    main()
