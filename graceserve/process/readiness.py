"""The readiness line: the one log line that says the server is serving, and where.

Why this module exists: the line is a contract.  Supervisors, scripts, the tests
and the benchmarks wait for it and read the real address from it (``--bind
127.0.0.1:0`` picks a free port, and this line is the only place it is told), so
its format is written once, here, next to the parser that reads it back::

    listening on http://127.0.0.1:8000 (http, pid 4242, grace 8s)
    listening on tcp://[::1]:9000 (tcp, pid 4242, grace 8s)
    listening on unix:/run/app.sock (http, pid 4242, grace 8s)
    listening on https://127.0.0.1:8443 (https, pid 4242, grace 8s)

The URL names the address (``SCHEME://HOST:PORT``, IPv6 hosts in brackets, or
``unix:PATH``); the parenthesis says what is served there (``http`` or ``tcp``),
by which process, and with which grace.  With ``--log-format json`` the line is
the ``message`` of a JSON object; ``parse_ready`` reads it there too.  Pure
functions, no I/O: thread-safe.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = ["READY_PATTERN", "Ready", "listen_url", "parse_ready", "ready_line"]

READY_PATTERN = re.compile(
    r"listening on (?:"
    r"(?P<scheme>https|http|tcp)://(?:\[(?P<host6>[^\]\s]+)\]|(?P<host>[^\s:\[\]/]+)):(?P<port>\d+)\b"
    r"|unix:(?P<path>[^\n]+?)(?= \((?:https|http|tcp), pid \d+, grace [^\s)]+s\)))"
    r"(?: \((?P<protocol>https|http|tcp), pid (?P<pid>\d+), grace (?P<grace>[^\s)]+)s\))?"
)
"""Finds a readiness line in a log line (or a buffer of lines); ``parse_ready`` reads it.

Groups: ``scheme``, ``host`` or ``host6`` (bracketed), ``port`` for a TCP address;
``path`` for a Unix socket; ``protocol``, ``pid`` and ``grace`` from the parenthesis.
The parenthesis may be missing after a TCP address: the stand-in servers the
benchmarks compare with (``bench/peers.py``) print only ``listening on URL``.
"""


def listen_url(scheme: str, where: str) -> str:
    """The URL of ``where`` (``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH``) served as ``scheme``.

    A Unix socket keeps its ``unix:PATH``; a TCP address becomes ``SCHEME://HOST:PORT``.
    """
    return where if where.startswith("unix:") else f"{scheme}://{where}"


def ready_line(url: str, protocol: str, pid: int, grace: float) -> str:
    """The readiness line: ``listening on URL (PROTOCOL, pid PID, grace GRACEs)``."""
    return f"listening on {url} ({protocol}, pid {pid}, grace {grace:g}s)"


@dataclass(frozen=True)
class Ready:
    """What a readiness line says.

    ``host`` and ``port`` for a TCP address (``host`` without brackets), ``path``
    for a Unix socket; ``pid`` and ``grace`` are None when the line has no
    parenthesis (a stand-in server's line).
    """

    url: str
    protocol: str  # "http", "https" or "tcp": what is served
    host: str | None = None
    port: int | None = None
    path: str | None = None
    pid: int | None = None
    grace: float | None = None

    @property
    def address(self) -> tuple[str, int] | str:
        """``(host, port)``, or the Unix socket's path."""
        if self.path is not None:
            return self.path
        if self.host is None or self.port is None:
            raise ValueError(f"no address in {self.url!r}")
        return (self.host, self.port)


def parse_ready(text: str) -> Ready | None:
    """The first readiness line in ``text`` (one line or several, text or JSON), or None."""
    match = READY_PATTERN.search(_unwrap_json(text))
    if match is None:
        return None
    pid, grace = match["pid"], match["grace"]
    if match["path"] is not None:
        url, host, port = f"unix:{match['path']}", None, None
    else:
        host = match["host6"] or match["host"]
        port = int(match["port"])
        where = f"[{host}]:{port}" if match["host6"] else f"{host}:{port}"
        url = listen_url(match["scheme"], where)
    return Ready(
        url=url,
        protocol=match["protocol"] or match["scheme"],
        host=host,
        port=port,
        path=match["path"],
        pid=None if pid is None else int(pid),
        grace=None if grace is None else float(grace),
    )


def _unwrap_json(text: str) -> str:
    """``text`` with each JSON log line (``--log-format json``) replaced by its message."""
    if '{"' not in text:
        return text
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                message = json.loads(stripped).get("message")
            except (ValueError, AttributeError):
                message = None
            if isinstance(message, str):
                line = message
        lines.append(line)
    return "\n".join(lines)
