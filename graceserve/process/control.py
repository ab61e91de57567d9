"""The control channel: a Unix socket next to the pidfile that says how the server is doing.

Why this module exists: ``graceserve ctl`` (and ``systemctl reload`` through it) must
know when a reload has finished, whether it failed and why, and what a stop ended
with, even when the server is not its child.  Signals cannot answer; a socket the
server owns can.  It lives at ``<pidfile>.ctl`` (findable from the pidfile path,
never in the abstract namespace), mode 0600, and whoever holds the pidfile lock
owns that path: a file left there by a killed instance is simply replaced.

Protocol: one connection, one JSON request line, one JSON line back.

- ``{"cmd": "status"}`` -> ``{"ok": true, "status": {...}}``
- ``{"cmd": "wait", "generation": N, "reloads": K, "stopping": B, "timeout": S}``
  blocks (at most S seconds) until the generation passes N, a reload attempt ends
  after the K-th (ok or failed: ``reloads`` counts them, so an old failure never
  answers a new wait), the server stops or, with ``stopping`` true, starts to
  stop (``draining``); with neither N nor K it waits for the stop.  Answer:
  ``{"ok": true, "done": bool, "status": {...}}`` (``done`` false: timed out).

The status is whatever the provider returns; ``graceserve.process.status.ServerStatus``
(re-exported here) is the record the runner publishes, its fields listed there.

Closing is a small drain: no new connection is accepted, the ones already queued
are answered, and every waiter gets the final status.  So a client that connected
and sent ``wait`` before the TERM always learns the exit code.

Threading: one daemon thread accepts; each connection gets a short-lived daemon
thread (a wait blocks).  ``ServerStatus`` and ``ControlServer.changed`` are
thread-safe; ``start`` and ``close`` belong to the thread that owns the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from graceserve.process.status import ServerStatus

__all__ = ["ControlServer", "ServerStatus", "control_path", "publish", "request"]

log = logging.getLogger("graceserve")

SUFFIX = ".ctl"
MAX_REQUEST = 4096  # bytes in one request line
MAX_CLIENTS = 16  # connections answered at once; more are told "busy"
MAX_WAIT = 3600.0  # seconds a wait may block
READ_TIMEOUT = 2.0  # seconds a client may take to send its request
_RECHECK = 0.25  # seconds between re-reading a provider that did not say it changed
_UCRED = struct.Struct("iII")

Provider = Callable[[], dict[str, Any]]


def control_path(pidfile: str) -> str:
    """The control socket's path for ``pidfile``."""
    return os.path.abspath(pidfile) + SUFFIX


def temporary_path(path: str, pid: int) -> str:
    """Where process ``pid`` binds before its socket is published at ``path``."""
    return f"{path}.{pid}.tmp"


def publish(temporary: str, path: str) -> None:
    """Make the socket bound at ``temporary`` the one at ``path`` (atomic rename)."""
    os.rename(temporary, path)


class ControlServer:
    """Answers requests on a Unix socket at ``path`` with what ``provider()`` returns.

    ``provider`` is called from control threads and must be thread-safe.  Call
    ``changed()`` (never while holding a lock the provider takes) when its answer
    changes, so that waiters wake at once; they also re-read it every 0.25 s.
    """

    def __init__(self, path: str, provider: Provider) -> None:
        self.path = path
        self.provider = provider
        self._sock: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._temporary = ""
        self._cond = threading.Condition()
        self._version = 0  # guarded by _cond: bumped by changed()
        self._closing = False  # guarded by _cond
        self._clients: set[threading.Thread] = set()  # guarded by _cond
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="graceserve-control", daemon=True)

    def start(self) -> None:
        """Bind (mode 0600, at a temporary path renamed into place, so that ``ctl``
        never meets a half-made socket) and start answering.  Raises OSError if the
        socket cannot be made."""
        self._temporary = temporary_path(self.path, os.getpid())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temporary)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _address(self._temporary) as address:
                sock.bind(address)
            os.chmod(self._temporary, 0o600)
            info = os.stat(self._temporary, follow_symlinks=False)
            self._bound = (info.st_dev, info.st_ino)
            sock.listen(MAX_CLIENTS)
            publish(self._temporary, self.path)
        except BaseException:
            sock.close()
            self._unlink_if_ours(self._temporary)
            raise
        self._sock = sock
        self._thread.start()

    def changed(self) -> None:
        """The provider's answer changed: wake the waiters.  Thread-safe."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def close(self, timeout: float = 1.0) -> None:
        """Answer what is queued and every waiter (with the final status), then close
        and remove the socket file if it is still ours.  Waits at most ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join(max(deadline - time.monotonic(), 0.0))
        while True:
            with self._cond:
                clients = list(self._clients)
            left = deadline - time.monotonic()
            if not clients or left <= 0:
                break
            clients[0].join(left)
        if self._sock is not None:
            self._sock.close()
        self._unlink_if_ours(self.path)
        self._unlink_if_ours(self._temporary)
        self._wake_r.close()
        self._wake_w.close()

    # -- serving ----------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        poller = select.poll()  # no descriptor of its own, unlike epoll: every one we hold
        poller.register(self._sock, select.POLLIN)  # exists once start() returns
        poller.register(self._wake_r, select.POLLIN)
        while not self._closed():
            for fd, _events in poller.poll():
                if fd == self._sock.fileno():
                    self._accept_one()
        with contextlib.suppress(OSError):  # closed under us if close() gave up waiting
            self._sock.setblocking(False)  # closing: answer what is already queued
            while self._accept_one():
                pass

    def _accept_one(self) -> bool:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            log.warning("control socket: accept failed: %s", exc)
            return False
        thread = threading.Thread(
            target=self._answer, args=(conn,), name="graceserve-control-client", daemon=True
        )
        with self._cond:
            busy = len(self._clients) >= MAX_CLIENTS
            if not busy:
                self._clients.add(thread)
        if busy:
            with conn:
                _send(conn, {"ok": False, "error": "busy"})
        else:
            thread.start()
        return True

    def _closed(self) -> bool:
        with self._cond:
            return self._closing

    def _answer(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.setblocking(True)
                conn.settimeout(READ_TIMEOUT)
                if not _same_user(conn):
                    _send(conn, {"ok": False, "error": "permission denied"})
                    return
                _send(conn, self._reply(_read_line(conn)))
        except OSError as exc:
            log.debug("control socket: client went away: %s", exc)
        except Exception:
            log.exception("control socket: internal error")
        finally:
            with self._cond:
                self._clients.discard(threading.current_thread())

    def _reply(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "not a JSON request line"}
        command = message.get("cmd") if isinstance(message, dict) else None
        if command == "status":
            return {"ok": True, "status": self.provider()}
        if command == "wait":
            return self._wait(message)
        return {"ok": False, "error": f"unknown command {command!r}"}

    def _wait(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            generation = _optional_int(message.get("generation"))
            reloads = _optional_int(message.get("reloads"))
            timeout = min(max(float(message.get("timeout", 30.0)), 0.0), MAX_WAIT)
            stopping = message.get("stopping", False) is True
        except (TypeError, ValueError):
            return {"ok": False, "error": "wait: generation, reloads and timeout are numbers"}
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                version, closing = self._version, self._closing
            status = self.provider()
            done = status.get("state") == "stopped"
            done |= stopping and status.get("state") == "draining"
            done |= generation is not None and status.get("generation", 0) > generation
            done |= reloads is not None and status.get("reloads", 0) > reloads
            left = deadline - time.monotonic()
            if done or closing or left <= 0:
                return {"ok": True, "done": done, "status": status}
            with self._cond:
                if self._version == version and not self._closing:
                    self._cond.wait(min(left, _RECHECK))

    def _unlink_if_ours(self, path: str) -> None:
        try:
            info = os.stat(path, follow_symlinks=False)
            if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == self._bound:
                os.unlink(path)
        except OSError:
            pass


def request(
    path: str,
    message: dict[str, Any],
    timeout: float,
    sent: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Send ``message`` to the control socket at ``path``; its answer.

    ``sent()`` is called once the request is sent, before the answer is read
    (``ctl stop`` sends its TERM there: the server already holds the request).

    Raises OSError (FileNotFoundError, ConnectionRefusedError: nothing answers
    there; TimeoutError) or ValueError (the answer is not a JSON object).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        with _address(path) as address:
            sock.connect(address)
        sock.sendall(json.dumps(message).encode() + b"\n")
        if sent is not None:
            sent()
        answer = json.loads(_read_line(sock, limit=1 << 20) or b"null")
    if not isinstance(answer, dict):
        raise ValueError("the control socket closed without an answer")
    return answer


@contextlib.contextmanager
def _address(path: str) -> Iterator[str]:
    """``path`` as a socket address; through /proc/self/fd when it is too long (108)."""
    if len(os.fsencode(path)) < 100:
        yield path
        return
    directory = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{os.path.basename(path)}"
    finally:
        os.close(directory)


def _read_line(sock: socket.socket, limit: int = MAX_REQUEST) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < limit:
        chunk = sock.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def _send(sock: socket.socket, answer: dict[str, Any]) -> None:
    sock.sendall(json.dumps(answer).encode() + b"\n")


def _same_user(sock: socket.socket) -> bool:
    """The peer runs as our user or as root (the file mode says so too)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(data)
    return uid in (0, os.geteuid())


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value
