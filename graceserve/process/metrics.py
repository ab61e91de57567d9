"""The main process's metrics: every member's meters, summed, as Prometheus text.

Why this module exists: ``--metrics-bind`` is answered by the main process (the
one systemd and the container runtime know), while requests are answered by
members that come and go: this process's own server in one-process mode,
worker processes that a reload, ``--max-requests`` or a crash replace.  A
counter must never go backwards across that, so ``MetricsBoard`` keeps, per
live member, its latest snapshot (``graceserve.core.metering.Meters``: workers
send one with each heartbeat; this process's own server is read at the
scrape) and, for every member that ended, its last counters added to
``retired``.  A worker killed without a word loses at most the requests of
its last second; what it had reported stays counted.

The process-level facts come from the status record the control socket
publishes (``graceserve.process.status``): the drain, reloads and their
failures, worker restarts; the worker gauge from the supervisor.

A TCP target has no requests to meter: its members say so (``Meters.http``)
and the request families are left out; the connection gauges remain.

Threading contract: ``attach``, ``update``, ``retire`` and ``workers`` are
written by the supervisor's thread; ``render`` is called by the metrics
endpoint's threads.  One lock guards the members and the totals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from graceserve.core.metering import BUCKETS, CLASSES, Meters
from graceserve.core.server import GracefulTCPServer
from graceserve.http.connection import BODY, BUSY, IDLE
from graceserve.process.status import ServerStatus

__all__ = ["CONTENT_TYPE", "MetricsBoard", "connection_gauges"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format, version 0.0.4."""


def connection_gauges(server: GracefulTCPServer, meters: Meters) -> Meters:
    """``meters`` with the server's connection gauges of the moment (one pass over its
    registry, under its lock).  Any thread."""
    in_flight = active = idle = 0
    with server.registry.locked_items() as items:
        for _sock, conn in items:
            state = getattr(conn, "state", None)
            if state is None:  # a TCP connection: its own idle flag (wait_for_input)
                idle += conn.idle
                active += not conn.idle
            elif state == IDLE:
                idle += 1
            else:
                active += 1
                in_flight += state in (BUSY, BODY)
    meters.in_flight, meters.active, meters.idle = in_flight, active, idle
    return meters


class MetricsBoard:
    """Every member's meters and the process's counters.  Thread-safe (see module)."""

    def __init__(self, status: ServerStatus) -> None:
        self.status = status
        self.workers = 0
        """Serving processes (set by the supervisor's thread; an int is read atomically)."""
        self._lock = threading.Lock()
        self._live: dict[int, Callable[[], Meters]] = {}  # guarded by _lock
        self._retired = Meters()  # guarded by _lock
        self._http: bool | None = None  # guarded by _lock: what the members said last

    def attach(self, key: int, source: Callable[[], Meters]) -> None:
        """Read member ``key``'s meters with ``source()`` at each scrape (this process's
        own server)."""
        with self._lock:
            self._live[key] = source

    def update(self, key: int, meters: Meters) -> None:
        """Member ``key``'s latest snapshot (a worker's heartbeat)."""
        with self._lock:
            self._live[key] = lambda: meters
            self._http = meters.http

    def retire(self, key: int) -> None:
        """Member ``key`` ended: its last counters join the totals for good."""
        with self._lock:
            source = self._live.pop(key, None)
            if source is not None:
                self._retired.add_counters(source())

    def totals(self) -> Meters:
        """The counters of every member that ever served, the gauges of the live ones."""
        with self._lock:
            sources = list(self._live.values())
            total = Meters(http=self._http is not False)
            total.add_counters(self._retired)
        live = [source() for source in sources]  # reads a server's registry: not under our lock
        for meters in live:
            total.add_counters(meters)
            total.add_gauges(meters)
        if live:
            total.http = any(meters.http for meters in live)
        return total

    def render(self) -> str:
        """The Prometheus text (0.0.4) of everything.  Any thread."""
        total = self.totals()
        fields = self.status.snapshot()
        out: list[str] = []
        if total.http:
            _family(out, "requests_total", "counter", "HTTP requests answered, by status class.")
            for name, count in zip(CLASSES, total.codes, strict=True):
                out.append(f'graceserve_requests_total{{code="{name}"}} {count}')
            _family(out, "requests_in_flight", "gauge", "HTTP requests being answered now.")
            out.append(f"graceserve_requests_in_flight {total.in_flight}")
            _family(
                out, "request_duration_seconds", "histogram",
                "Seconds from a request's first line to the end of its response.",
            )  # fmt: skip
            cumulative = 0
            bounds = [*map(repr, BUCKETS), "+Inf"]
            for bound, count in zip(bounds, total.buckets, strict=True):
                cumulative += count
                out.append(
                    f'graceserve_request_duration_seconds_bucket{{le="{bound}"}} {cumulative}'
                )
            out.append(f"graceserve_request_duration_seconds_sum {total.seconds!r}")
            out.append(f"graceserve_request_duration_seconds_count {cumulative}")
        _family(out, "connections", "gauge", "Live client connections, by state.")
        out.append(f'graceserve_connections{{state="active"}} {total.active}')
        out.append(f'graceserve_connections{{state="idle"}} {total.idle}')
        _family(out, "draining", "gauge", "1 from the moment a stop begins, else 0.")
        out.append(f"graceserve_draining {int(fields['state'] in ('draining', 'stopped'))}")
        _family(out, "reloads_total", "counter", "Reloads (HUP) that ended, ok or failed.")
        out.append(f"graceserve_reloads_total {fields['reloads']}")
        _family(out, "reload_failures_total", "counter", "Reloads that failed (old code kept).")
        out.append(f"graceserve_reload_failures_total {fields.get('reload_failures', 0)}")
        _family(
            out, "worker_restarts_total", "counter",
            "Worker processes replaced outside a reload: died, killed by --worker-timeout, "
            "or recycled by --max-requests.",
        )  # fmt: skip
        out.append(f"graceserve_worker_restarts_total {fields.get('worker_restarts', 0)}")
        _family(out, "workers", "gauge", "Processes serving now.")
        out.append(f"graceserve_workers {self.workers}")
        return "\n".join(out) + "\n"


def _family(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP graceserve_{name} {text}")
    out.append(f"# TYPE graceserve_{name} {kind}")
