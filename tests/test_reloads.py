"""Reloads that meet other events: every interleaving ends in a defined, reported state.

Real processes, real signals, ``graceserve ctl`` as its own process.  The code a reload
loads waits at a gate the test opens (``testsupport.reloads``), so a test decides when each
new worker becomes ready and what happens meanwhile: a TTIN, a TTOU, another reload, a
worker's death, a stop.  Both modes are covered where they differ in how they start:
one process (a worker process takes over at the first HUP) and ``--workers 2``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testsupport.process import ServerProcess
from testsupport.procfs import receive_queues
from testsupport.reloads import Ctl, arrivals, ctl_status, deploy, release, version_of
from testsupport.waiting import wait_until
from testsupport.workers import get, served_by

StartServer = Callable[..., ServerProcess]

# Every test waits on real reloads (new processes importing the code): seconds each.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

QUEUED = r"HUP: .*(already starting|next reload|restart failed)"  # a HUP during a reload


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    deploy(tmp_path, "v1", gate_open=True)
    return tmp_path


def start(
    start_server: StartServer,
    directory: Path,
    workers: int,
    *args: str,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Serve app:Handler with a pidfile and ``--workers``; wait until it serves."""
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", "--grace", "10", "--workers", str(workers),
         "--pidfile", str(directory / "server.pid"), *args],
        cwd=directory, env={"PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
    )  # fmt: skip
    server.wait_ready()
    if workers > 1:
        server.wait_for_line(rf"supervisor pid \d+: {workers} workers ready")
    return server


def address(server: ServerProcess) -> tuple[str, int]:
    assert server.address is not None
    return server.address


def versions(server: ServerProcess, asks: int = 8) -> set[str]:
    """The versions that answer ``asks`` fresh connections."""
    return {version_of(get(address(server))[1]) for _ in range(asks)}


def children(pid: int) -> set[int]:
    """The live (not zombie) children of ``pid``."""
    found: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                found.update(
                    int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                )
    return {child for child in found if _alive(child)}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def graceful(directory: Path, *args: str) -> Ctl:
    return Ctl("graceful", "--pidfile", str(directory / "server.pid"), "--timeout", "40", *args)


@pytest.fixture
def ctls() -> Iterator[list[Ctl]]:
    """Background ctl processes, killed at teardown if still running."""
    started: list[Ctl] = []
    yield started
    for ctl in started:
        ctl.kill()


# -- TTIN, TTOU during a reload ----------------------------------------------------------


def test_ttin_during_a_reload_grows_the_new_generation_and_the_reload_ends(
    start_server: StartServer, app_dir: Path, ctls: list[Ctl]
) -> None:
    server = start(start_server, app_dir, 2)
    deploy(app_dir, "v2")
    ctls.append(reload := graceful(app_dir))
    wait_until(lambda: arrivals(app_dir, "v2") == 2, 20, "two v2 workers importing")
    server.send(signal.SIGTTIN)
    server.wait_for_line(r"TTIN: 3 workers")
    release(app_dir, "v2")
    code, out = reload.result()
    assert code == 0, (out, server.output)
    assert "generation 2 serving" in out, out
    status = ctl_status(app_dir / "server.pid")
    assert (status["generation"], status["workers"], status["state"]) == (2, 3, "serving")
    wait_until(lambda: len(children(server.proc.pid)) == 3, 20, "three workers, all of v2")
    assert versions(server) == {"v2"}
    # The next reload works.
    deploy(app_dir, "v3", gate_open=True)
    code, out = graceful(app_dir).result()
    assert code == 0, (out, server.output)
    assert "generation 3 serving" in out, out


def test_ttou_during_a_reload_leaves_exactly_the_target(
    start_server: StartServer, app_dir: Path, ctls: list[Ctl]
) -> None:
    server = start(start_server, app_dir, 2)
    deploy(app_dir, "v2")
    ctls.append(reload := graceful(app_dir))
    wait_until(lambda: arrivals(app_dir, "v2") == 2, 20, "two v2 workers importing")
    server.send(signal.SIGTTOU)
    server.wait_for_line(r"TTOU: 1 workers")
    release(app_dir, "v2")
    code, out = reload.result()
    assert code == 0, (out, server.output)
    assert ctl_status(app_dir / "server.pid")["workers"] == 1
    wait_until(lambda: len(children(server.proc.pid)) == 1, 20, "one worker left")
    assert versions(server) == {"v2"}
    server.send(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output


# -- a new worker that dies, or never gets ready -----------------------------------------


def test_a_new_worker_that_dies_after_ready_while_a_sibling_imports_is_replaced(
    start_server: StartServer, app_dir: Path, ctls: list[Ctl]
) -> None:
    server = start(start_server, app_dir, 2)
    deploy(app_dir, "v2")
    release(app_dir, "v2", arrival=1)  # the first new worker gets ready, the second waits
    ctls.append(reload := graceful(app_dir))
    first = int(server.wait_for_line(r"test-app: pid (\d+) is arrival 1 of v2")[1])
    # Serving, so its READY was sent (before it accepts); its "listening on" line comes
    # just before READY, and a kill between the two is a death before ready.
    wait_until(
        lambda: served_by(get(address(server))[1]) == first, 20, "the first v2 worker to serve"
    )
    wait_until(lambda: arrivals(app_dir, "v2") == 2, 20, "the second v2 worker importing")
    os.kill(first, signal.SIGKILL)  # say, the out-of-memory killer
    server.wait_for_line(rf"worker {first} \(generation 2\) died")
    release(app_dir, "v2")
    code, out = reload.result()
    assert code == 0, (out, server.output)
    assert "generation 2 serving" in out, out
    wait_until(lambda: len(children(server.proc.pid)) == 2, 20, "two workers, all of v2")
    assert versions(server) == {"v2"}
    assert first not in {served_by(get(address(server))[1]) for _ in range(6)}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_new_worker_whose_import_never_ends_fails_the_reload_at_the_deadline(
    start_server: StartServer, app_dir: Path, workers: int
) -> None:
    # Long enough for a worker to start on a loaded machine (the fixed reload below).
    server = start(start_server, app_dir, workers, env={"GRACESERVE_START_TIMEOUT": "10"})
    deploy(app_dir, "v2")  # its gate never opens
    code, out = graceful(app_dir, "--timeout", "40").result()
    assert code == 1, (out, server.output)
    assert re.search(r"reload failed: .*not ready after 10s .*generation 1 .*still serving", out)
    assert versions(server) == {"v1"}
    wait_until(lambda: len(children(server.proc.pid)) == (workers if workers > 1 else 0), 20,
               "the stuck new workers to be gone")  # fmt: skip
    # Fixed, the next reload works.
    deploy(app_dir, "v3", gate_open=True)
    code, out = graceful(app_dir, "--timeout", "40").result()
    assert code == 0, (out, server.output)
    assert "generation 2 serving" in out, out
    assert versions(server) == {"v3"}


# -- a HUP during a reload ---------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_asked_for_during_a_reload_loads_the_code_of_its_time(
    start_server: StartServer, app_dir: Path, ctls: list[Ctl], workers: int
) -> None:
    """deploy v2, ctl graceful; while v2 imports deploy v3, ctl graceful: the first ctl
    returns once v2 serves, the second only once v3 (the code on disk when it was
    called) serves."""
    server = start(start_server, app_dir, workers)
    deploy(app_dir, "v2")
    ctls.append(first := graceful(app_dir))
    wait_until(lambda: arrivals(app_dir, "v2") == workers, 20, "v2 importing")
    deploy(app_dir, "v3")
    ctls.append(second := graceful(app_dir))
    server.wait_for_line(QUEUED)
    release(app_dir, "v2")
    code, out = first.result()
    assert code == 0, (out, server.output)
    assert "generation 2 serving" in out, out
    wait_until(lambda: arrivals(app_dir, "v3") == workers, 20, "v3 importing")
    assert not second.done(), second.result()
    release(app_dir, "v3")
    code, out = second.result()
    assert code == 0, (out, server.output)
    assert "generation 3 serving" in out, out
    assert versions(server) == {"v3"}
    assert "reload failed" not in server.output


# -- one process, before its first reload ------------------------------------------------


def test_ttin_during_the_first_reload_of_one_process_is_ignored(
    start_server: StartServer, app_dir: Path, ctls: list[Ctl]
) -> None:
    server = start(start_server, app_dir, 1)
    deploy(app_dir, "v2")
    ctls.append(reload := graceful(app_dir))
    wait_until(lambda: arrivals(app_dir, "v2") == 1, 20, "v2 importing")
    server.send(signal.SIGTTIN)
    server.wait_for_line(r"TTIN: ignored")
    release(app_dir, "v2")
    code, out = reload.result()
    assert code == 0, (out, server.output)
    assert "generation 2 serving" in out, out
    assert versions(server) == {"v2"}


def test_concurrent_ctl_graceful_during_a_first_reload_all_succeed(
    start_server: StartServer, app_dir: Path, ctls: list[Ctl]
) -> None:
    server = start(start_server, app_dir, 1)
    deploy(app_dir, "v2")
    server.send(signal.SIGHUP)
    wait_until(lambda: arrivals(app_dir, "v2") == 1, 20, "v2 importing")
    ctls.extend(graceful(app_dir) for _ in range(3))
    wait_until(
        lambda: any(ctl.done() for ctl in ctls) or re.search(QUEUED, server.output), 30,
        "a ctl's HUP to reach the server",
    )  # fmt: skip
    release(app_dir, "v2")
    results = [ctl.result() for ctl in ctls]
    assert [code for code, _ in results] == [0, 0, 0], (results, server.output)
    # Each serves code from after its call: generation 3 (or 4, for a ctl whose call
    # came only once generation 3 had begun).
    generations = [int(re.search(r"generation (\d+) serving", out)[1]) for _, out in results]  # type: ignore[index]
    assert all(generation >= 3 for generation in generations), results
    assert versions(server) == {"v2"}


def test_a_hup_storm_during_a_first_reload_fails_nothing(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start(start_server, app_dir, 1)
    deploy(app_dir, "v2")
    server.send(signal.SIGHUP)
    wait_until(lambda: arrivals(app_dir, "v2") == 1, 20, "v2 importing")
    for _ in range(15):
        seen = server.output.count("HUP:")
        server.send(signal.SIGHUP)
        wait_until(lambda: server.output.count("HUP:") > seen, 10, "the HUP to be acted on")  # noqa: B023
    release(app_dir, "v2")

    def settled() -> bool:
        status = ctl_status(app_dir / "server.pid")
        return (status["state"], status["reloads"]) == ("serving", 2)

    wait_until(settled, 60, "the reload and the one queued behind it")
    status = ctl_status(app_dir / "server.pid")
    assert status["generation"] == 3, status
    assert all(entry["ok"] for entry in status["recent_reloads"]), status
    assert "failed" not in server.output, server.output
    assert versions(server) == {"v2"}


def test_one_numbering_of_generations_in_the_log_and_ctl_status(
    start_server: StartServer, app_dir: Path
) -> None:
    server = start(start_server, app_dir, 1)
    deploy(app_dir, "v2", gate_open=True)
    code, out = graceful(app_dir).result()
    assert code == 0, (out, server.output)
    assert "generation 2 serving" in out
    assert ctl_status(app_dir / "server.pid")["generation"] == 2
    worker = int(server.wait_for_line(r"started worker pid (\d+) \(generation (\d+)\)")[1])
    assert re.search(rf"started worker pid {worker} \(generation 2\)", server.output)
    server.wait_for_line(r"HUP: generation 2 is ready")
    assert "generation 1 is ready" not in server.output


# -- a stop after the first reload -------------------------------------------------------


def in_flight(where: tuple[str, int], path: str) -> contextlib.closing:  # type: ignore[type-arg]
    import socket

    sock = socket.create_connection(where, timeout=20)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    key = (where[1], sock.getsockname()[1])
    wait_until(lambda: receive_queues().get(key) == 0, 10, "the server to read the request")
    return contextlib.closing(sock)


def test_a_stop_after_a_hup_counts_what_this_process_cut(
    start_server: StartServer, app_dir: Path
) -> None:
    """grace 3, a 10 s request in flight in the process itself, HUP, ctl stop: the
    request is cut by this process's own drain, and the stop says so (exit code 4)."""
    server = start_server(
        ["app:Handler", "--bind", "127.0.0.1:0", "--grace", "3",
         "--pidfile", str(app_dir / "server.pid")],
        cwd=app_dir, env={"PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    server.wait_ready()
    with in_flight(address(server), "/slow?seconds=10"):
        code, out = graceful(app_dir).result()
        assert code == 0, (out, server.output)
        stop = Ctl("stop", "--pidfile", str(app_dir / "server.pid"))
        code, out = stop.result()
    assert code == 4, (out, server.output)
    assert re.search(r"exit code 4: \d+ served during the drain, 1 cut", out), out
    assert server.wait_exit(20) == 4
