"""``-u/--user`` and ``-g/--group``: bind a low port as root, serve as ``nobody``.

Real processes, run as root here: the server binds a port below 1024 on
127.0.0.1, the test reads the serving processes' ids from ``/proc/PID/status``
and from the app itself (which also tries ``setuid(0)``), reloads with HUP,
and stops with TERM (the pidfile and the unix socket must be gone).  The
interpreter must be one ``nobody`` may run: a pyenv under ``/root`` is not, so
the system's ``python3`` serves (the standard library is all graceserve needs);
graceserve itself is copied next to the app, since the checkout may be anywhere
(CI clones into a directory only root may enter).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.process import REPO, ChildProcess, child_env
from testsupport.restarts import get, unix_get
from testsupport.waiting import wait_until

APP = """\
import json, os, sys

print(f"imported as uid {os.getuid()} euid {os.geteuid()}", file=sys.stderr, flush=True)


def app(environ, start_response):
    try:
        os.setuid(0)
        regain = "regained root"
    except PermissionError:
        regain = "refused"
    body = json.dumps({
        "pid": os.getpid(), "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
        "egid": os.getegid(), "groups": os.getgroups(), "setuid0": regain,
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def _ids(name: str, group: str) -> tuple[int, int] | None:
    try:
        return pwd.getpwnam(name).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return None


NOBODY = _ids("nobody", "nogroup")


def _reachable_by_all(path: str) -> bool:
    """Whether every directory on the way to ``path`` (and the file) lets others in."""
    real = os.path.realpath(path)
    parts = Path(real).parents
    return all(os.stat(part).st_mode & stat.S_IXOTH for part in parts) and bool(
        os.stat(real).st_mode & stat.S_IXOTH
    )


def _python() -> str | None:
    """An interpreter (3.10+) that ``nobody`` may run, or None."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and _reachable_by_all(candidate):
            check = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            if check.stdout.strip() == "True":
                return candidate
    return None


PYTHON = _python() if os.geteuid() == 0 and NOBODY else None

needs_root = pytest.mark.skipif(
    PYTHON is None,
    reason="needs root, a nobody user and nogroup group, and an interpreter nobody may run",
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory under /tmp that nobody may read (the app), with ``run/`` that it owns."""
    path = Path(tempfile.mkdtemp(prefix="graceserve-user-", dir="/tmp"))
    try:
        path.chmod(0o755)
        (path / "app.py").write_text(APP)
        shutil.copytree(
            REPO / "graceserve",
            path / "lib" / "graceserve",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        run = path / "run"
        run.mkdir()
        assert NOBODY is not None
        os.chown(run, *NOBODY)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _env(workdir: Path) -> dict[str, str]:
    """The child's environment: graceserve from the copy in ``workdir``, not the checkout."""
    env = child_env()
    env["PYTHONPATH"] = str(workdir / "lib")
    return env


def _status_ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/PID/status."""
    ids: dict[str, list[int]] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                ids[key] = [int(word) for word in value.split()]
    return ids


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(word) for word in children.read().split()]


def _start(workdir: Path, *args: str) -> ChildProcess:
    assert PYTHON is not None
    command = [PYTHON, "-m", "graceserve", "app:app", *args]
    return ChildProcess(command, env=_env(workdir), cwd=workdir)


def _start_on_low_port(workdir: Path, *args: str) -> tuple[ChildProcess, tuple[str, int]]:
    """Serve on a free port below 1024: a port found taken is retried with another (5 tries)."""
    ports = random.sample(range(700, 1024), 5)
    for port in ports:
        server = _start(workdir, "-b", f"127.0.0.1:{port}", *args)
        ready = server.wait_for_line_or_exit(r"listening on http://")
        if ready is not None:
            return server, ("127.0.0.1", port)
        server.stop()
        if "in use" not in server.output:
            pytest.fail(f"the server did not start:\n{server.output}")
    pytest.fail(f"ports {ports} were all in use")


def _as_nobody(body: str) -> dict[str, object]:
    assert NOBODY is not None
    seen: dict[str, object] = json.loads(body)
    uid, gid = NOBODY
    assert (seen["uid"], seen["euid"], seen["gid"], seen["egid"]) == (uid, uid, gid, gid)
    assert seen["groups"] == [gid]  # nobody is in no other group: initgroups gave these
    assert seen["setuid0"] == "refused"
    return seen


def _proc_is_nobody(pid: int) -> None:
    assert NOBODY is not None
    uid, gid = NOBODY
    ids = _status_ids(pid)
    assert ids["Uid"] == [uid] * 4, ids
    assert ids["Gid"] == [gid] * 4, ids
    assert ids["Groups"] == [gid], ids


@needs_root
def test_one_process_binds_a_low_port_then_serves_as_nobody(workdir: Path) -> None:
    pidfile = workdir / "run" / "app.pid"
    server, address = _start_on_low_port(
        workdir, "-u", "nobody", "-g", "nogroup", "-p", str(pidfile)
    )
    try:
        assert "imported as uid 65534 euid 65534" in server.output  # never as root
        status, body = get(address)
        assert status == 200
        seen = _as_nobody(body)
        assert seen["pid"] == server.proc.pid
        _proc_is_nobody(server.proc.pid)
        assert NOBODY is not None
        assert pidfile.stat().st_uid == NOBODY[0]

        server.send(signal.SIGHUP)  # a worker process started by the dropped process
        server.wait_for_line(r"generation 2 is ready")
        status, body = get(address)
        reloaded = _as_nobody(body)
        assert reloaded["pid"] != server.proc.pid
        _proc_is_nobody(int(str(reloaded["pid"])))

        server.send(signal.SIGTERM)
        assert server.wait_exit() == 0, server.output
        assert not pidfile.exists()
        assert not Path(f"{pidfile}.ctl").exists()
    finally:
        server.stop()


@needs_root
@pytest.mark.slow
def test_workers_drop_and_the_supervisor_stays_root(workdir: Path) -> None:
    pidfile = workdir / "run" / "app.pid"
    sock = workdir / "run" / "app.sock"
    server = _start(
        workdir, "-b", f"unix:{sock}", "-w", "2", "--user", "nobody", "-p", str(pidfile),
        "--umask", "007",
    )  # fmt: skip
    try:
        server.wait_for_line(r"2 workers ready")
        info = sock.stat()
        assert NOBODY is not None
        assert (info.st_uid, info.st_gid) == NOBODY  # its group (nginx's) may connect
        assert stat.S_IMODE(info.st_mode) == 0o770
        supervisor = server.proc.pid
        assert _status_ids(supervisor)["Uid"] == [0] * 4  # removes the pidfile and socket
        workers = _children(supervisor)
        assert len(workers) == 2
        for pid in workers:
            _proc_is_nobody(pid)
        status, body = unix_get(sock)
        assert status == 200
        assert _as_nobody(body)["pid"] in workers

        server.send(signal.SIGHUP)
        server.wait_for_line(r"generation 2 is ready")
        wait_until(lambda: not set(_children(supervisor)) & set(workers), what="old workers gone")
        renewed = _children(supervisor)
        assert len(renewed) == 2
        for pid in renewed:
            _proc_is_nobody(pid)
        status, body = unix_get(sock)
        assert status == 200
        assert _as_nobody(body)["pid"] in renewed

        server.send(signal.SIGTERM)
        assert server.wait_exit() == 0, server.output
        assert not sock.exists()
        assert not pidfile.exists()
    finally:
        server.stop()


@needs_root
@pytest.mark.parametrize("directory", ["owned", "sticky"])
def test_one_process_removes_its_unix_socket_and_pidfile(workdir: Path, directory: str) -> None:
    """As nobody at exit: in its own directory, and in a sticky one that anyone may write
    (root's, as /tmp), where only a file's owner may remove it: hence the chown."""
    place = workdir / "run"
    if directory == "sticky":
        place = workdir / "sticky"
        place.mkdir()
        place.chmod(0o1777)
    pidfile, sock = place / "app.pid", place / "app.sock"
    server = _start(workdir, "-b", f"unix:{sock}", "-u", "nobody", "-p", str(pidfile))
    try:
        server.wait_for_line(r"listening on unix:")
        assert NOBODY is not None
        assert (sock.stat().st_uid, sock.stat().st_gid) == NOBODY
        assert (pidfile.stat().st_uid, pidfile.stat().st_gid) == NOBODY
        status, body = unix_get(sock)
        assert status == 200
        assert _as_nobody(body)["pid"] == server.proc.pid
        server.send(signal.SIGTERM)
        assert server.wait_exit() == 0, server.output
        assert sorted(place.iterdir()) == [], server.output
    finally:
        server.stop()


@needs_root
def test_a_pidfile_directory_the_user_cannot_write_is_refused_first(workdir: Path) -> None:
    """Checked as the user before anything is made: one line, exit 3, nothing left."""
    assert PYTHON is not None
    pidfile = workdir / "app.pid"  # workdir: root's, 0755
    result = subprocess.run(
        [PYTHON, "-m", "graceserve", "app:app", "-b", "127.0.0.1:0", "-u", "nobody",
         "-p", str(pidfile)],
        cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot write {workdir}" in lines[0]
    assert not pidfile.exists()
    assert "imported" not in result.stderr


@needs_root
def test_check_config_imports_the_app_as_the_user(workdir: Path) -> None:
    assert PYTHON is not None
    result = subprocess.run(
        [PYTHON, "-m", "graceserve", "app:app", "--user", "nobody", "--check-config"],
        cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "imported as uid 65534" in result.stderr
    assert "configuration OK" in result.stdout
    assert "as user nobody" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--user", "no-such-user-here"], {}, "--user: no such user 'no-such-user-here'"),
        ([], {"GRACESERVE_USER": "no-such-user-here"}, "GRACESERVE_USER: no such user"),
        (["-u", "0"], {}, "--user 0 is root"),
        (["-g", "0"], {}, "--group 0 needs --user"),
        (["-u", "0", "-g", "no-such-group-here"], {}, "-g: no such group"),
        (["-u", "4000000000"], {}, "no entry in the user database: give --group too"),
        (["-u", "99999999999"], {}, "--user 99999999999: user ids go up to"),
        (["-u", "1", "-w", "2", "--preload"], {}, "--preload with --user"),
    ],
)
def test_bad_user_or_group_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], says: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "graceserve", *args, "--check-config"],
        env=child_env(env), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert lines[0].startswith("graceserve: error: ")


def test_a_config_file_names_the_user(tmp_path: Path) -> None:
    config = tmp_path / "conf.py"
    config.write_text('user = "no-such-user-here"\n')
    result = subprocess.run(
        [sys.executable, "-m", "graceserve", "-c", str(config), "--check-config"],
        env=child_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{config}: user: no such user" in result.stderr


@needs_root
def test_not_root_may_only_be_itself(workdir: Path) -> None:
    """As nobody: --user daemon cannot be had (exit 3, one line); --user nobody is accepted."""
    assert PYTHON is not None
    assert NOBODY is not None
    uid, gid = NOBODY
    result = subprocess.run(
        [PYTHON, "-m", "graceserve", "app:app", "-b", "127.0.0.1:0", "--user", "daemon"],
        cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=30, check=False,
        user=uid, group=gid, extra_groups=[],
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "only root can switch users" in lines[0]
    assert "imported" not in result.stderr

    same = subprocess.Popen(
        [PYTHON, "-m", "graceserve", "app:app", "-b", "127.0.0.1:0", "--user", "nobody"],
        cwd=workdir, env=_env(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, user=uid, group=gid, extra_groups=[],
        start_new_session=True,
    )  # fmt: skip
    try:
        assert same.stderr is not None
        for _ in range(50):  # bounded: start-up is a handful of lines
            line = same.stderr.readline()
            if not line or "listening on" in line:
                break
        assert "listening on" in line, line
        same.send_signal(signal.SIGTERM)
        assert same.wait(20) == 0
    finally:
        if same.poll() is None:
            os.killpg(same.pid, signal.SIGKILL)
            same.wait(10)
        if same.stderr is not None:
            same.stderr.close()
