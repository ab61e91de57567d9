"""What the kernel says about sockets and processes, read from ``/proc``.

Why this module exists: the tests wait on the kernel instead of sleeping (a
request is in flight once the server's end of the connection has nothing
unread; a client is held in the backlog while the listener's accept queue is
non-empty), and the benchmarks measure a server's CPU and memory.  Both read
the same files, parsed once, here.  Linux only; every function reads a fresh
snapshot and is thread-safe.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import mmap
import os
import struct
import sys
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "ESTABLISHED",
    "LISTEN",
    "TcpSocket",
    "accept_queue",
    "accept_table",
    "cpu_seconds",
    "listening_ports",
    "open_descriptors",
    "receive_queues",
    "socket_inodes",
    "status_field",
    "tcp_sockets",
]

ESTABLISHED = "01"
"""The ``st`` column of an established connection."""
LISTEN = "0A"
"""The ``st`` column of a listening socket."""
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


class TcpSocket(NamedTuple):
    """One row of /proc/net/tcp{,6}."""

    local_port: int
    remote_port: int
    state: str  # ESTABLISHED "01", LISTEN "0A", ...
    unsent: int  # tx_queue: bytes sent but not yet acknowledged by the peer
    unread: int  # rx_queue: bytes received but not yet read; for a listener, its accept queue
    inode: int  # 0 while the connection waits in the accept queue
    local_host: str  # the local IP address, as ``ipaddress`` writes it


@functools.lru_cache(maxsize=256)
def _host(hex_address: str) -> str:
    """An address column's IP: 32-bit words in the kernel's (here little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(swapped))


def tcp_sockets(tables: tuple[str, ...] = TABLES, state: str | None = None) -> list[TcpSocket]:
    """Every TCP socket in our network namespace (IPv4 and IPv6 unless ``tables`` says).

    With ``state``, only the sockets in that state: much faster on a machine
    with thousands of connections in TIME_WAIT.
    """
    entries: list[TcpSocket] = []
    for table in tables:
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if state is not None and fields[3] != state:
                    continue
                local_host, local_port = fields[1].rsplit(":", 1)
                tx_queue, rx_queue = fields[4].split(":")
                entries.append(
                    TcpSocket(
                        local_port=int(local_port, 16),
                        remote_port=int(fields[2].rsplit(":", 1)[1], 16),
                        state=fields[3],
                        unsent=int(tx_queue, 16),
                        unread=int(rx_queue, 16),
                        inode=int(fields[9]),
                        local_host=_host(local_host),
                    )
                )
    return entries


def accept_queue(port: int, host: str = "127.0.0.1") -> int:
    """How many completed connections wait in the accept queue of the listener ``host:port``."""
    for row in tcp_sockets(state=LISTEN):
        if row.local_port == port and row.local_host == host:
            return row.unread
    raise AssertionError(f"no listener on {host}:{port}")


def receive_queues() -> dict[tuple[int, int], int]:
    """Unread bytes of every established TCP socket, by (local port, remote port)."""
    return {(row.local_port, row.remote_port): row.unread for row in tcp_sockets(state=ESTABLISHED)}


def open_descriptors(pid: int | str = "self") -> list[str]:
    """What each open descriptor of ``pid`` refers to (``socket:[inode]``, a path, ...)."""
    targets: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets


def accept_table(pid: int) -> tuple[int, ...] | None:
    """The words of the accept table (``graceserve.process.balance``) supervisor ``pid``
    shares with its workers, one per slot handed out (-1: IDLE); None without one."""
    directory = f"/proc/{pid}/fd"
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(directory):
            with contextlib.suppress(OSError):
                if "graceserve-accept-table" in os.readlink(f"{directory}/{fd}"):
                    with open(f"{directory}/{fd}", "rb") as page:
                        data = page.read(mmap.PAGESIZE)
                    slots = max(0, int.from_bytes(data[:4], sys.byteorder, signed=True))
                    words = struct.unpack_from(f"={slots}i", data, 4)
                    return tuple(int(word) for word in words)
    return None


def socket_inodes(pid: int | str = "self") -> set[int]:
    """The inodes of the sockets process ``pid`` holds open."""
    prefix = "socket:["
    return {int(t[len(prefix) : -1]) for t in open_descriptors(pid) if t.startswith(prefix)}


def listening_ports(pid: int) -> list[int]:
    """TCP ports on which process ``pid`` holds a listening socket."""
    inodes = socket_inodes(pid)
    return [row.local_port for row in tcp_sockets(state=LISTEN) if row.inode in inodes]


def status_field(pid: int | str, name: str) -> int:
    """A numeric field of /proc/PID/status (``Threads``, ``VmRSS`` and ``VmHWM`` in KiB, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(f"no {name} line in /proc/{pid}/status")


def cpu_seconds(pid: int, descendants: bool = False) -> float:
    """User plus system CPU time used so far by process ``pid``.

    With ``descendants``, its living descendants count too (a pre-forking
    server's workers), so that it is measured like a single-process one.
    """
    if not descendants:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    tree: set[int] = set()
    frontier = {pid}
    while frontier:
        tree |= frontier
        frontier = {child for child, f in stats.items() if int(f[1]) in frontier} - tree
    ticks = sum(int(stats[p][11]) + int(stats[p][12]) for p in tree if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")
