"""graceserve installed the way users install servers, run from the install, not the checkout.

The sdist and the wheel are built with ``python -m build`` from a copy of the
checkout (so the checkout gets no ``build/`` or ``*.egg-info``), or taken from
``GRACESERVE_DIST`` (``.ci/run`` builds them once).  Each is checked for what it
must and must not hold; the wheel is installed into a fresh virtual environment
(no access to this checkout or our site-packages), and the ``graceserve``
console script is started from a directory outside the repository: it answers
``GET /`` and exits 0 on SIGTERM.  ``pip install .`` from a copy of a clone is
the other way the README gives.  Marked ``slow``: each step runs pip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from graceserve import __version__
from testsupport.process import REPO, ChildProcess
from testsupport.rawhttp import get

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PIP_TIMEOUT = 300.0  # seconds: pip may fetch setuptools for an isolated build
IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv*", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".hypothesis", "*.pyc",
)  # fmt: skip


def run(*command: str | Path, cwd: Path | None = None) -> str:
    """Run ``command`` to completion with a clean environment; its output (fail on error)."""
    env = clean_env()
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=PIP_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"{command} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


def clean_env() -> dict[str, str]:
    """Our environment without what would let a child import this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {k: v for k, v in env.items() if not k.startswith("GRACESERVE_")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel): from ``GRACESERVE_DIST`` if set, else built here from a copy."""
    given = os.environ.get("GRACESERVE_DIST")
    if given:
        where = Path(given)
    else:
        pytest.importorskip("build", reason="the test extra's `build` builds the sdist and wheel")
        source = tmp_path_factory.mktemp("src") / "graceserve"
        shutil.copytree(REPO, source, ignore=IGNORED)
        where = tmp_path_factory.mktemp("dist")
        run(sys.executable, "-m", "build", "--outdir", where, source)
    sdists = sorted(where.glob(f"graceserve-{__version__}.tar.gz"))
    wheels = sorted(where.glob(f"graceserve-{__version__}-py3-none-any.whl"))
    assert len(sdists) == 1, sorted(where.iterdir())
    assert len(wheels) == 1, sorted(where.iterdir())
    return sdists[0], wheels[0]


def test_the_wheel_holds_the_package_typed_and_nothing_else(dist: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(dist[1]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(f"graceserve-{__version__}.dist-info/METADATA").decode()
        entry_points = wheel.read(f"graceserve-{__version__}.dist-info/entry_points.txt").decode()
    assert "graceserve/py.typed" in names
    assert "graceserve/__main__.py" in names
    for module in ("core/server.py", "http/cycle.py", "wsgi/server.py", "process/runner.py"):
        assert f"graceserve/{module}" in names, module  # every subpackage is in the wheel
    assert f"graceserve-{__version__}.dist-info/licenses/LICENSE" in names
    top = {name.split("/")[0] for name in names}
    assert top == {"graceserve", f"graceserve-{__version__}.dist-info"}, top  # no tests, bench
    assert not [name for name in names if name.endswith((".pyc", ".so"))]
    assert "graceserve = graceserve.cli:run" in entry_points
    assert "Requires-Python: >=3.10" in metadata
    assert f"Version: {__version__}" in metadata
    assert "Requires-Dist: pytest" in metadata  # only as an extra:
    assert not [line for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]  # fmt: skip
    assert "Description-Content-Type: text/markdown" in metadata
    assert "pip install" in metadata  # the README is the long description


def test_the_sdist_holds_what_builds_the_package(dist: tuple[Path, Path]) -> None:
    with tarfile.open(dist[0]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "graceserve/py.typed",
                   "graceserve/_version.py", "graceserve/cli.py"):  # fmt: skip
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "bench/", "testsupport/", ".ci/"))]


def fresh_venv(where: Path) -> Path:
    """A virtual environment of this Python that sees nothing of ours; its bin directory."""
    run(sys.executable, "-m", "venv", where)
    return where / "bin"


def serve_and_stop(bin_dir: Path, cwd: Path) -> None:
    """Start the installed console script outside the checkout; GET /; TERM; exit 0."""
    where = run(bin_dir / "python", "-c", "import graceserve; print(graceserve.__file__)", cwd=cwd)
    assert Path(where.strip()).is_relative_to(bin_dir.parent), where  # the install, not REPO
    assert run(bin_dir / "graceserve", "--version", cwd=cwd).strip() == f"graceserve {__version__}"
    server = ChildProcess(
        [str(bin_dir / "graceserve"), "--bind", "127.0.0.1:0"], env=clean_env(), cwd=cwd
    )
    try:
        address = server.wait_ready()
        status, _headers, body = get(address, "/")
        assert (status, body) == (200, b"hello from graceserve\n")
        server.send(signal.SIGTERM)
        assert server.wait_exit() == 0
        assert f"graceserve {__version__} (Python" in server.output  # the banner
    finally:
        server.stop()


def test_the_installed_wheel_serves_outside_the_checkout(
    dist: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir = fresh_venv(tmp_path / "venv")
    run(bin_dir / "python", "-m", "pip", "install", "--no-index", "--quiet", dist[1])
    (tmp_path / "elsewhere").mkdir()
    serve_and_stop(bin_dir, tmp_path / "elsewhere")


def test_pip_install_dot_from_a_clone(tmp_path: Path) -> None:
    clone = tmp_path / "graceserve"
    shutil.copytree(REPO, clone, ignore=IGNORED)
    bin_dir = fresh_venv(tmp_path / "venv")
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", ".", cwd=clone)
    (tmp_path / "elsewhere").mkdir()
    serve_and_stop(bin_dir, tmp_path / "elsewhere")
