"""The contract's scenarios: what a test does to a server, and what it observed.

Why this module exists: the README's guarantees are checked in every mode by
rows in ``tests/test_matrix_*.py``; most of them need a server of their own
(a stop ends it) and some time (a grace, a lame duck, an idle timeout).  So
each guarantee's *experiment* is a scenario here: it starts its server through
the ``Lab`` (the target kind and the mode are the lab's; TLS is the scenario's
choice), acts as the README's clients would, and returns a frozen record of
what it saw.  A lab runs the scenarios of every selected matrix module at
once (each module lists its own in ``PHASES``); the rows assert on the records.  The
scenarios assert nothing about the contract themselves (only that the
experiment could be made: a server that never served, a gate never reached).

Every wait is on something observable: the gate (a request is in the app),
the kernel's LISTEN table (the listener is closed), the accept queue, the
control socket, process exit.  The one pause is a client's think time in
``term_drain`` (the rhythm the linger learns), which shapes the client under
test; it synchronises nothing.

Threading: each scenario runs in its own thread on its own server(s) and
sockets; nothing is shared between scenarios.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .load import Load
from .matrix import Lab
from .pki import https_get
from .procfs import accept_queue
from .rawhttp import EOF, OPEN, RESET, Connection, Reply
from .serve import Gate, NotServingError, Served
from .targets import BREAK_IMPORT
from .waiting import eventually, wait_until

__all__ = [
    "IDLE_TIMEOUT",
    "AccessLog",
    "Cut",
    "FailedReload",
    "Held",
    "IdleProbes",
    "JsonLogs",
    "LameDuck",
    "LoadRun",
    "Recycling",
    "Signals",
    "Stalled",
    "TermDrain",
    "TlsServed",
    "access_log",
    "answer",
    "failed_reload",
    "grace_cut",
    "idle_timeout",
    "json_logs",
    "lame_duck",
    "load_through_hup",
    "load_through_term",
    "max_connections",
    "max_requests",
    "quit_idle",
    "quit_in_flight",
    "second_term",
    "shared_server",
    "signals",
    "term_drain",
    "tls_certificate",
    "worker_timeout",
]

EXIT_WAIT = 30.0  # seconds a stopped server may take to exit before the scenario gives up
END_WAIT = 4.0  # seconds a client waits for the server to end a connection (the linger max is 2)
PACE = 0.02  # seconds between two requests of a client that waits for a new process to answer


def answer(conn: Connection) -> Reply | str:
    """The response on ``conn``, or how the connection ended without one (``EOF``,
    ``RESET``, ``OPEN``)."""
    try:
        return conn.read_reply()
    except EOFError as exc:
        return RESET if "reset" in str(exc) else EOF
    except (ConnectionResetError, BrokenPipeError):
        return RESET
    except TimeoutError:
        return OPEN


def _ending(conn: Connection, timeout: float = END_WAIT) -> str:
    """How the server ended ``conn`` (``Connection.ending``), or what went wrong instead."""
    try:
        return conn.ending(timeout)
    except AssertionError as exc:  # bytes where the end was expected
        return f"data: {exc}"
    except OSError as exc:  # a connection already timed out while reading
        return f"error: {exc!r}"


def shared_server(lab: Lab) -> Served:
    """A server for the rows that do not stop or reconfigure it (``--max-body-size 1024``)."""
    return lab.serve(args=["--max-body-size", "1024"])


# -- the stop (TERM) with work of every kind in flight ----------------------------------

THINK = 0.6  # seconds between the racing client's requests: its linger at the drain is ~3x


@dataclass(frozen=True)
class TermDrain:
    """What clients of every kind saw when the server got one TERM (grace 10 s)."""

    in_flight: Reply | str
    """The request held in the app at the TERM, released after the listener closed."""
    in_flight_end: str
    stream: Reply | str
    """A streamed (chunked) response running at the TERM: its whole body, or how it ended."""
    stream_end: str
    idle_end: str
    """How an idle keep-alive connection (last response seconds before) ended at the drain."""
    race: Reply | str
    """A keep-alive client's next request, sent once the listener was closed, inside its
    linger (three times its think time after its last response)."""
    race_end: str
    refused: bool
    """A new connect once the listener left LISTEN, while work was still in flight."""
    exit_code: int
    log: str
    leftovers: list[str] = field(default_factory=list)
    """What was left of the pidfile and its control socket after the exit."""


TERM_GRACE = 10.0  # seconds: room for every (bounded) observation below before the deadline


def term_drain(lab: Lab, tls: bool = False) -> TermDrain:
    """TERM with a request in the app, a stream, an idle keep-alive client and a keep-alive
    client with a steady rhythm that sends once more after the listener closed.

    Each observation is bounded (END_WAIT) and all of them end well inside the grace,
    so that one broken guarantee does not break the rows of the others."""
    served = lab.serve(grace=TERM_GRACE, tls=tls)
    with Gate() as gate, contextlib.ExitStack() as stack:
        in_flight = stack.enter_context(served.connect())
        in_flight.request("GET", gate.target)
        gate.wait_entered()
        stream = stack.enter_context(served.connect())
        stream.request("GET", "/stream")
        stream_head = stream.read_head()
        stream.read_chunk(stream_head)
        idle = stack.enter_context(served.connect())
        idle.request("GET", "/")
        idle.read_reply()
        racer = stack.enter_context(served.connect())
        for _ in range(3):
            racer.request("GET", "/")
            racer.read_reply()
            time.sleep(THINK)  # the client's think time (its rhythm), not a synchronisation
        racer.request("GET", "/")
        racer.read_reply()
        served.stop(signal.SIGTERM)
        wait_until(lambda: not served.listening(), 15, "the listener to close")
        racer.request("GET", "/?race")
        race = answer(racer)
        race_end = _ending(racer)
        refused = served.refuses()
        idle_end = _ending(idle)
        stream_reply: Reply | str = stream_head
        stream.sock.settimeout(END_WAIT)  # the stream should end at once: bounded like the rest
        try:
            while stream.read_chunk(stream_head) is not None:
                pass
        except TimeoutError:
            stream_reply = f"{OPEN}: still streaming {END_WAIT}s after the drain began"
        except (EOFError, OSError) as exc:
            stream_reply = f"{EOF if isinstance(exc, EOFError) else RESET}: {exc}"
        stream_end = _ending(stream)
        gate.release()
        reply = answer(in_flight)
        in_flight_end = _ending(in_flight)
        code = served.wait_exit(EXIT_WAIT)
    leftovers = [
        path for path in (served.pidfile, served.pidfile + ".ctl") if os.path.lexists(path)
    ]
    return TermDrain(
        reply, in_flight_end, stream_reply, stream_end, idle_end, race, race_end, refused,
        code, served.log, leftovers,
    )  # fmt: skip


# -- cuts: the grace deadline, a second TERM, QUIT -------------------------------------


@dataclass(frozen=True)
class Cut:
    """A stop that had to cut a request the app never finished."""

    exit_code: int
    seconds: float
    """From the signal that decided the cut (the TERM; the second TERM; the QUIT) to exit."""
    client: Reply | str
    """What the client of the held request got."""
    log: str


def _held_stop(lab: Lab, grace: float, *signals: int) -> Cut:
    """Hold a request in the app, send ``signals`` (waiting for the listener to close
    between them), time the last one to the exit."""
    served = lab.serve(grace=grace)
    with Gate() as gate, served.connect(timeout=EXIT_WAIT) as conn:
        conn.request("GET", gate.target)
        gate.wait_entered()
        started = time.monotonic()
        for index, signum in enumerate(signals):
            if index:
                wait_until(lambda: not served.listening(), 15, "the listener to close")
            started = time.monotonic()
            served.stop(signum)
        code = served.wait_exit(EXIT_WAIT)
        seconds = time.monotonic() - started
        client = answer(conn)
    return Cut(code, seconds, client, served.log)


GRACE_CUT = 1.0  # seconds of grace in the deadline scenario


def grace_cut(lab: Lab) -> Cut:
    """``--grace 1``, a request the app never finishes, TERM."""
    return _held_stop(lab, GRACE_CUT, signal.SIGTERM)


def second_term(lab: Lab) -> Cut:
    """A request the app never finishes, TERM, then TERM again once the drain is on."""
    return _held_stop(lab, 10.0, signal.SIGTERM, signal.SIGTERM)


def quit_in_flight(lab: Lab) -> Cut:
    """A request the app never finishes, QUIT."""
    return _held_stop(lab, 10.0, signal.SIGQUIT)


def quit_idle(lab: Lab) -> int:
    """QUIT with nothing to cut: the exit code."""
    served = lab.serve()
    served.stop(signal.SIGQUIT)
    return served.wait_exit(EXIT_WAIT)


# -- the lame duck ---------------------------------------------------------------------

DRAIN_DELAY = 4.0


@dataclass(frozen=True)
class LameDuck:
    """``--drain-delay 4`` then TERM: what new clients were told meanwhile."""

    healthz: list[int | str]
    """/healthz on new connections from the TERM on, until it said 503 and /env said
    stopping (or the delay ran out); a connection that failed is its error."""
    stopping: list[object]
    """/env's ``stopping`` on new connections, asked after each /healthz."""
    exit_code: int


def lame_duck(lab: Lab) -> LameDuck:
    """TERM during ``--drain-delay``: new connections are served, health checks fail.

    Every serving process learns of the stop on its own, so both answers are asked
    again (on new connections) until both say stopping, within the delay."""
    served = lab.serve(args=["--drain-delay", f"{DRAIN_DELAY:g}"])
    healthz: list[int | str] = []
    stopping: list[object] = []
    served.stop(signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_DELAY
    while time.monotonic() < deadline and not (healthz[-1:] == [503] and stopping[-1:] == [True]):
        try:
            healthz.append(served.get("/healthz").status)
            stopping.append(served.get("/env").json()["stopping"])
        except (OSError, EOFError) as exc:
            healthz.append(repr(exc))
            break
    return LameDuck(healthz, stopping, served.wait_exit(EXIT_WAIT))


# -- load through a stop and a reload ----------------------------------------------------

LOAD_CLIENTS = 8
LOAD_REQUESTS = 200  # answered before (and after) the event
LINGER_MIN = 0.2  # seconds: the shortest linger (README: drain_linger), the tail's threshold


@dataclass(frozen=True)
class LoadRun:
    """Keep-alive clients through an event: what broke."""

    requests: int
    failures: list[str]
    kinds: Counter[str]
    refused: int
    exit_code: int
    tail: list[str] = field(default_factory=list)
    """EOFs the README's linger allows: the client sent more than LINGER_MIN after its
    previous request (a starved test process; not failures)."""


def load_through_term(lab: Lab, tls: bool = False) -> LoadRun:
    """Keep-alive clients sending back to back; TERM."""
    served = lab.serve(tls=tls)
    load = Load(served.address, LOAD_CLIENTS, tls=served.tls, tail=LINGER_MIN)
    try:
        load.wait_for_requests(LOAD_REQUESTS)
        load.stopping.set()
        served.stop(signal.SIGTERM)
        code = served.wait_exit(EXIT_WAIT)
    finally:
        load.stop()
    return LoadRun(
        load.total(), load.failures, load.failure_kinds(), load.refused, code, load.tail_eofs
    )


def load_through_hup(lab: Lab) -> LoadRun:
    """Keep-alive clients sending back to back; a graceful reload (``ctl graceful``); then,
    the load stopped, TERM."""
    served = lab.serve()
    load = Load(served.address, LOAD_CLIENTS, tls=served.tls, tail=LINGER_MIN)
    try:
        load.wait_for_requests(LOAD_REQUESTS)
        served.reload()
        load.wait_for_requests(LOAD_REQUESTS)
    finally:
        load.stop()
    served.stop(signal.SIGTERM)
    code = served.wait_exit(EXIT_WAIT)
    return LoadRun(
        load.total(), load.failures, load.failure_kinds(), load.refused, code, load.tail_eofs
    )


# -- the idle timeout -------------------------------------------------------------------

IDLE_TIMEOUT = 1.0
IDLE_WAIT = 6.0  # seconds a probe waits for the close (the timeout, and room for a loaded machine)


@dataclass(frozen=True)
class Stalled:
    """How the server ended one stalled connection, and when (seconds after it stalled)."""

    ended: Reply | str
    seconds: float


@dataclass(frozen=True)
class IdleProbes:
    """``--idle-timeout 1``: three connections that stall, watched at once."""

    idle: Stalled
    """A keep-alive connection idle after its response."""
    head: Stalled
    """A request head that stops half-way."""
    body: Stalled
    """A request whose body (10 bytes declared) stops after 3."""
    silent: Stalled | None = None
    """TLS only: a TCP client that never starts the handshake."""


def _stall(served: Served, what: str) -> Stalled:
    if what == "silent":  # no TLS handshake, no request: a plain TCP client that waits
        conn = Connection(served.address, timeout=IDLE_WAIT)
    else:
        conn = served.connect(timeout=IDLE_WAIT)
    with conn:
        if what in ("idle", "silent"):
            if what == "idle":
                conn.request("GET", "/")
                conn.read_reply()
            started = time.monotonic()
            return Stalled(_ending(conn, IDLE_WAIT), time.monotonic() - started)
        if what == "head":
            conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n")
        else:
            conn.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        ended = answer(conn)
        return Stalled(ended, time.monotonic() - started)


def idle_timeout(lab: Lab, tls: bool = False) -> IdleProbes:
    """``--idle-timeout 1``; an idle keep-alive connection, a stalled head, a stalled body."""
    served = lab.serve(args=["--idle-timeout", f"{IDLE_TIMEOUT:g}"], tls=tls)
    results: dict[str, Stalled] = {}

    def probe(what: str) -> None:
        results[what] = _stall(served, what)

    kinds = ("idle", "head", "body", "silent") if tls else ("idle", "head", "body")
    threads = [
        threading.Thread(target=probe, args=(what,), name=f"test-stall-{what}") for what in kinds
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(IDLE_WAIT + 5)
    missing = set(kinds) - set(results)
    assert not missing, f"probes that did not finish: {missing}"
    return IdleProbes(results["idle"], results["head"], results["body"], results.get("silent"))


# -- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsServed:
    """``--certfile/--keyfile``: what a verifying client and a plain HTTP client got."""

    common_name: str
    """The CN of the certificate the server presented (the client verified it)."""
    status: int
    plain: Reply | str
    """A plain HTTP request on the TLS port."""
    plain_end: str


def tls_certificate(lab: Lab) -> TlsServed:
    """Serve TLS; one verified HTTPS request; one plain HTTP request on the same port."""
    served = lab.serve(tls=True)
    assert served.tls is not None
    status, _body, common_name = https_get(served.address, "/", served.tls)
    with Connection(served.address) as plain:
        plain.request("GET", "/", close=True)
        answered = answer(plain)
        ended = _ending(plain)
    return TlsServed(common_name, status, answered, ended)


# -- --max-connections ------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """``--max-connections 1``: every serving process holds one request; one more client."""

    queued: int
    """The listener's accept queue while the others were held (the client waits there)."""
    waiting: Reply | str
    """What that client got once the held requests were let go."""
    held: list[Reply | str]


def max_connections(lab: Lab) -> Held:
    """Fill every serving process to ``--max-connections 1``; one more client waits."""
    served = lab.serve(args=["--max-connections", "1"])
    port = served.address[1]
    with Gate() as gate, contextlib.ExitStack() as stack:
        held = []
        for _ in range(lab.combo.workers):
            conn = stack.enter_context(served.connect())
            conn.request("GET", gate.target, close=True)  # its slot frees when it ends
            held.append(conn)
        gate.wait_entered(lab.combo.workers)
        waiting = stack.enter_context(served.connect())
        waiting.request("GET", "/?waiting")
        wait_until(lambda: accept_queue(port) > 0, 10, "the client to wait in the accept queue")
        queued = accept_queue(port)
        gate.release()
        return Held(queued, answer(waiting), [answer(conn) for conn in held])


# -- access log, JSON logs -----------------------------------------------------------------


@dataclass(frozen=True)
class AccessLog:
    """Three responses (two on one keep-alive connection), then TERM: the file's lines."""

    lines: list[str]
    exit_code: int


def access_log(fmt: str) -> Any:
    """The scenario for ``--access-log FILE --access-log-format fmt``."""

    def scenario(lab: Lab) -> AccessLog:
        directory = tempfile.mkdtemp(prefix="gs-access-")
        path = os.path.join(directory, "access.log")
        try:
            served = lab.serve(args=["--access-log", path, "--access-log-format", fmt])
            with served.connect() as conn:
                conn.request("GET", "/?q=1", {"User-Agent": "matrix/1", "Referer": "http://r/"})
                conn.read_reply()
                conn.request("POST", "/echo", body=b"hello")
                conn.read_reply()
            served.get("/seen/access")
            served.stop(signal.SIGTERM)
            code = served.wait_exit(EXIT_WAIT)
            with open(path, encoding="utf-8") as file:
                return AccessLog(file.read().splitlines(), code)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    return scenario


@dataclass(frozen=True)
class JsonLogs:
    """``--log-format json``: the app logs (``/log``), then TERM; every stderr line."""

    marker: str
    lines: list[str]
    exit_code: int

    @property
    def objects(self) -> list[dict[str, Any]]:
        """The lines that are JSON objects."""
        parsed = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    parsed.append(value)
        return parsed

    @property
    def loose(self) -> list[str]:
        """The lines that are not JSON objects."""
        loose = []
        for line in self.lines:
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                loose.append(line)
        return loose


def json_logs(lab: Lab) -> JsonLogs:
    """``--log-format json``; the app writes its logs (``/log``); TERM."""
    served = lab.serve(args=["--log-format", "json"])
    marker = uuid.uuid4().hex
    served.get(f"/log?id={marker}")
    served.stop(signal.SIGTERM)
    code = served.wait_exit(EXIT_WAIT)
    return JsonLogs(marker, served.lines, code)


# -- signals while serving: USR1, TTIN/TTOU; a reload that fails ------------------------------

DUMP_END = re.compile(r"line \d+,? in _run_module_as_main$", re.MULTILINE)
"""The main thread's outermost frame: once per stack dump (``python -m graceserve``)."""
SIGNAL_WAIT = 15.0  # seconds for a signal's effect to show


@dataclass(frozen=True)
class Signals:
    """USR1, then TTIN and TTOU, to a serving server: what each did."""

    processes: int
    """Processes of the server before (the main one, and its workers if it supervises)."""
    dumps: int
    """Stack dumps on stderr after one USR1 (waited for until ``processes`` came)."""
    after_dump: int
    """The status of a request after the dump."""
    pids_after_ttin: int
    """Distinct pids answering after TTIN (requests until one more answered, or a while)."""
    workers: list[object]
    """The control socket's ``workers`` at the start, after TTIN, after TTOU."""
    log: str


def signals(lab: Lab) -> Signals:
    """USR1 (every process dumps its stacks), then TTIN and TTOU."""
    served = lab.serve()
    processes = 1 + lab.combo.workers if lab.combo.supervised else 1
    served.stop(signal.SIGUSR1)
    eventually(lambda: len(DUMP_END.findall(served.log)) >= processes, SIGNAL_WAIT)
    dumps = len(DUMP_END.findall(served.log))
    after_dump = served.get("/").status
    workers: list[object] = [served.status()["workers"]]
    served.stop(signal.SIGTTIN)
    expected = lab.combo.workers + (1 if lab.combo.supervised else 0)
    pids: set[object] = set()
    deadline = time.monotonic() + SIGNAL_WAIT
    while len(pids) < expected and time.monotonic() < deadline:
        pids.add(served.get("/").json()["pid"])
        time.sleep(PACE)  # the client's pace: a new worker needs a moment to start
    workers.append(served.status()["workers"])
    served.stop(signal.SIGTTOU)
    if lab.combo.supervised:
        eventually(lambda: served.status()["workers"] == workers[0], SIGNAL_WAIT)
    else:
        served.wait_line("SIGTTOU: ignored")
    workers.append(served.status()["workers"])
    return Signals(processes, dumps, after_dump, len(pids), workers, served.log)


@dataclass(frozen=True)
class FailedReload:
    """A reload whose new code cannot be imported, then one that can."""

    failed: subprocess.CompletedProcess[str]
    """``ctl graceful`` while the code is broken."""
    generations: tuple[object, object]
    """The control socket's ``generation`` before and after that reload."""
    statuses: list[int]
    """Requests on new connections after the failed reload."""
    fixed: subprocess.CompletedProcess[str]
    """``ctl graceful`` once the code is fixed."""


def failed_reload(lab: Lab) -> FailedReload:
    """Break the target's import (``MATRIX_BREAK_IMPORT``), reload, fix it, reload."""
    directory = tempfile.mkdtemp(prefix="gs-broken-")
    flag = os.path.join(directory, "broken")
    try:
        served = lab.serve(env={BREAK_IMPORT: flag})
        before = served.status()["generation"]
        open(flag, "w").close()
        failed = served.ctl("graceful")
        after = served.status()["generation"]
        statuses = [served.get("/").status for _ in range(5)]
        os.remove(flag)
        fixed = served.ctl("graceful")
        return FailedReload(failed, (before, after), statuses, fixed)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- options for a supervisor: --max-requests, --worker-timeout ---------------------------------


@dataclass(frozen=True)
class Recycling:
    """An option that replaces serving processes: refused at start, or what it did."""

    refused: NotServingError | None
    """The start's failure (exit code and stderr), if the option was refused."""
    replaced: bool
    """A serving process was replaced (a pid not serving before answered)."""
    detail: str = ""
    pids: list[int] = field(default_factory=list)


RECYCLE_WAIT = 12.0  # seconds to see a process replaced


def max_requests(lab: Lab) -> Recycling:
    """``--max-requests 3``: requests on new connections until a new pid answers."""
    try:
        served = lab.serve(args=["--max-requests", "3"])
    except NotServingError as exc:
        return Recycling(exc, False)
    pids: list[int] = []
    deadline = time.monotonic() + RECYCLE_WAIT
    while time.monotonic() < deadline:
        pid = served.get("/").json()["pid"]
        assert isinstance(pid, int)
        pids.append(pid)
        if len(set(pids)) > lab.combo.workers:
            return Recycling(None, True, pids=pids)
        time.sleep(PACE)  # the client's pace (workers report their counts once a second)
    return Recycling(None, False, f"{len(pids)} requests, pids {Counter(pids)}", pids)


FREEZE = 15.0  # seconds the app holds the GIL


def worker_timeout(lab: Lab) -> Recycling:
    """``--worker-timeout 2``: the app freezes its process (holds the GIL); is it replaced?"""
    try:
        served = lab.serve(args=["--worker-timeout", "2"])
    except NotServingError as exc:
        return Recycling(exc, False)
    with served.connect(timeout=RECYCLE_WAIT) as frozen:
        frozen.request("GET", f"/freeze?seconds={FREEZE:g}")
        ended = answer(frozen)  # the frozen process killed: EOF or reset; else OPEN
    if ended == OPEN:
        return Recycling(None, False, "the frozen process still held its connection")
    reply = served.get("/")
    return Recycling(None, reply.status == 200, f"after the kill: {reply.status}")
