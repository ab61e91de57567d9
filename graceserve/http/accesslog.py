"""The access log: one line per response, in the combined format or as JSON.

Why this module exists: handler targets and WSGI apps must write the same
line, and writing it must never slow or stop serving.  So:

- the line is formatted in the connection's thread and written with one
  ``os.write`` on a descriptor opened with ``O_APPEND``: no Python lock at
  all (the kernel appends each write whole, so concurrent lines never
  interleave on a regular file, nor on a pipe below PIPE_BUF);
- a failing write (full disk, closed pipe) drops that line; the first failure
  is logged once, and again only after writing has worked in between;
- rotation needs no signal: at most once a second a writer checks (``stat``)
  whether the path still names the file we hold; if logrotate moved it away,
  the path is opened again and swapped in with ``dup2`` onto our descriptor,
  so a thread writing at that instant writes whole lines to the old or the new
  file, never to a closed or reused descriptor.  Only one thread reopens (a
  non-blocking lock: nobody waits for it).  ``copytruncate`` works too
  (``O_APPEND``).  SIGUSR2 is therefore not needed (and stays unhandled).

Threading contract: ``AccessLog.write`` is called from any connection thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass

__all__ = ["FORMATS", "AccessLog", "AccessRecord", "bare_record", "open_access_log"]

log = logging.getLogger("graceserve")

FORMATS = ("combined", "json")
REOPEN_CHECK_INTERVAL = 1.0
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class AccessRecord:
    """What is logged about one response."""

    time: float  # wall clock at the end of the response (time.time())
    client: str  # the client's address (a trusted proxy's X-Forwarded-For, or the peer)
    method: str
    path: str
    query: str
    protocol: str
    status: int
    bytes: int  # body bytes sent
    duration: float  # seconds from the request line to the end of the response
    user_agent: str
    referer: str


def bare_record(client: str, status: int, sent: int, duration: float) -> AccessRecord:
    """The record of a request refused before it was understood (a malformed head)."""
    return AccessRecord(time.time(), client, "-", "-", "", "-", status, sent, duration, "", "")


# What a combined-format field may not hold as it is, escaped as ``\xNN``: the
# quote and the backslash (they would end or fake a quoted field) and every
# unprintable latin-1 character (controls, DEL, the C1 range, NBSP, soft hyphen:
# CR or LF would start a forged line).  A field outside quotes (the client)
# may not hold a space either.  One ``str.translate``: no loop per character.
_QUOTED_ESCAPES = {
    code: f"\\x{code:02x}"
    for code in range(256)
    if chr(code) in '"\\' or not chr(code).isprintable()
}
_BARE_ESCAPES = {**_QUOTED_ESCAPES, ord(" "): "\\x20"}


def _quote(text: str, bare: bool = False) -> str:
    """``text`` fit for a combined-format field: a quoted one, or (``bare``) one
    between spaces.  No client-sent byte can end the field or the line."""
    if text.isprintable() and '"' not in text and "\\" not in text and not (bare and " " in text):
        return text
    escaped = text.translate(_BARE_ESCAPES if bare else _QUOTED_ESCAPES)
    if escaped.isprintable():
        return escaped
    # Beyond latin-1 (never from a request's bytes; an app's own strings).
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)


def format_combined(record: AccessRecord) -> str:
    """``client - - [time] "METHOD target PROTO" status bytes "referer" "agent" duration``."""
    t = time.gmtime(record.time)
    month = _MONTHS[t.tm_mon - 1]
    stamp = f"{t.tm_mday:02d}/{month}/{t.tm_year:04d}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    target = record.path + ("?" + record.query if record.query else "")
    request = _quote(f"{record.method} {target} {record.protocol}")
    referer = _quote(record.referer) or "-"
    agent = _quote(record.user_agent) or "-"
    client = _quote(record.client, bare=True) or "-"
    return (
        f'{client} - - [{stamp} +0000] "{request}" {record.status} {record.bytes or "-"}'
        f' "{referer}" "{agent}" {record.duration:.6f}\n'
    )


def format_json(record: AccessRecord) -> str:
    """One JSON object per line, keys as in ``AccessRecord`` (time in ISO 8601, UTC)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.time))
    fraction = "%.3f" % (record.time % 1)
    return (
        json.dumps(
            {
                "time": f"{stamp}{fraction[1:]}Z",
                "client": record.client,
                "method": record.method,
                "path": record.path,
                "query": record.query,
                "protocol": record.protocol,
                "status": record.status,
                "bytes": record.bytes,
                "duration": round(record.duration, 6),
                "user_agent": record.user_agent,
                "referer": record.referer,
            },
            ensure_ascii=True,
        )
        + "\n"
    )


class AccessLog:
    """Writes access lines to one path (or stderr), without a lock.  Thread-safe."""

    def __init__(self, target: str, fmt: str = "combined") -> None:
        """Open ``target`` (``-``: stderr) for appending; OSError if it cannot be."""
        if fmt not in FORMATS:
            raise ValueError(f"access log format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.target = target
        self.format = format_json if fmt == "json" else format_combined
        self.path = None if target == "-" else os.path.abspath(target)
        self.fd = 2 if self.path is None else self._open()
        self._identity = self._stat_fd()
        self._next_check = time.monotonic() + REOPEN_CHECK_INTERVAL
        self._reopening = threading.Lock()
        self._failing = False

    def _open(self) -> int:
        assert self.path is not None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.path, flags, 0o644)

    def _stat_fd(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        info = os.fstat(self.fd)
        return (info.st_dev, info.st_ino)

    def write(self, record: AccessRecord) -> None:
        """Format and append one line; never raises for I/O (the line is dropped)."""
        line = self.format(record).encode("utf-8", "replace")
        if self.path is not None and time.monotonic() >= self._next_check:
            self._maybe_reopen()
        try:
            os.write(self.fd, line)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "access log %s: cannot write (%s); lines are dropped until it works again",
                    self.target, exc.strerror or exc, extra={"event": "access_log_error"},
                )  # fmt: skip
            return
        if self._failing:
            self._failing = False

    def _maybe_reopen(self) -> None:
        """Reopen the path if it names another file now (rotated).  One thread at a time."""
        if not self._reopening.acquire(blocking=False):
            return
        try:
            self._next_check = time.monotonic() + REOPEN_CHECK_INTERVAL
            assert self.path is not None
            try:
                info = os.stat(self.path)
                if (info.st_dev, info.st_ino) == self._identity:
                    return
            except OSError:
                pass  # moved away and not yet recreated: create it
            try:
                fresh = self._open()
            except OSError as exc:
                log.warning("access log %s: cannot reopen (%s)", self.path, exc.strerror or exc)
                return
            try:
                os.dup2(fresh, self.fd)  # atomic: writers see the old file or the new one
            finally:
                os.close(fresh)
            self._identity = self._stat_fd()
        finally:
            self._reopening.release()

    def close(self) -> None:
        """Close the file (not stderr)."""
        if self.path is not None and self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def open_access_log(target: str | None, fmt: str) -> AccessLog | None:
    """The access log for a server's settings, or None when it is off."""
    return None if not target else AccessLog(target, fmt)
