"""Every code snippet of the README, and every example's Run/Poke lines, run as written.

``testsupport.snippets`` extracts and runs them (see there for what "as written"
means for each kind: a ``# NAME.py`` file, a script, a shell line that starts a
server).  What cannot run here is listed below with its reason; an entry that no
longer matches anything fails the test, so the list cannot go stale.  The other
example files run in their own tests: ``examples/haproxy.cfg`` and
``examples/nginx.conf`` in tests/test_load_balancers.py, the systemd units in
tests/test_systemd_unit.py, the Dockerfile in tests/test_container.py;
``examples/kubernetes.yaml`` needs a cluster (tests/test_examples.py checks its numbers).

Marked ``slow``: it starts a dozen servers and a Django project.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from testsupport.process import REPO
from testsupport.snippets import (
    CommandLine,
    SnippetRunner,
    example_commands,
    fenced,
    module_name,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

README = REPO / "README.md"

# Lines of sh blocks (by a substring) that are not run here, and why.
NOT_RUN_LINES = {
    "git+https://github.com/OWNER/graceserve.git": "the URL is a placeholder until the "
    "repository is public",
    "python -m pip install .": "would install into the test's own environment; "
    "tests/test_packaging.py installs a clone into a fresh venv and runs it",
    "python -m pip install -e '.[test]' && python -m pytest": "the test suite itself "
    "(.ci/run runs exactly this command, on the newest supported Python)",
    "docker build": "needs Docker; tests/test_container.py builds the image with podman",
    "docker run": "needs Docker; tests/test_container.py runs and stops it with podman",
}
# Whole Python blocks (by a substring) that are not run here, and why.
NOT_RUN_BLOCKS = {
    'WSGIOptions(certfile="cert.pem", keyfile="key.pem")\n': "needs a certificate and its "
    "key; tests/test_tls.py serves with generated ones",
}
# Fenced blocks in other languages are not commands.
NOT_CODE = {
    "": "a synopsis or log output, not a command",
    "dockerfile": "built by tests/test_container.py (the Dockerfile) with podman",
}


def test_readme_snippets_run_as_written(tmp_path: Path) -> None:
    pytest.importorskip("flask", reason="the README's quick start serves Flask")
    pytest.importorskip("django", reason="the README's quick start serves Django")
    snippets = fenced(README.read_text(), "README.md")
    runner = SnippetRunner(tmp_path)
    matched: set[str] = set()
    modules: list[str] = []
    for snippet in snippets:
        if snippet.lang == "python":
            blocked = [key for key in NOT_RUN_BLOCKS if key in snippet.code]
            if blocked:
                matched.update(blocked)
                continue
            name = module_name(snippet)
            if name:
                modules.append(name)
            runner.run_python(snippet)
        elif snippet.lang in ("sh", "bash", "console", "shell"):
            matched.update(runner.run_sh(snippet, NOT_RUN_LINES))
        else:
            assert snippet.lang in NOT_CODE, f"{snippet.where}: run or list ```{snippet.lang}"
    stale = (set(NOT_RUN_LINES) | set(NOT_RUN_BLOCKS)) - matched
    assert not stale, f"not-run entries that match nothing: {stale}"
    for name in modules:  # a file the README shows is one the README serves
        assert any(target.startswith(f"{name}:") for target in runner.served), (name, runner.served)
    assert runner.ran >= 12, runner.ran  # what ran, counted: the loop above did not skip all


def runnable_pokes(commands: list[CommandLine]) -> list[CommandLine]:
    """Pokes a script can run: one-shot curl or bash commands (no `&`, no `curl -N` stream)."""
    kept = []
    for command in commands:
        words = shlex.split(command.text) if command.text[0].isalpha() else []
        one_shot_curl = words[:1] == ["curl"] and "-N" not in words and "&" not in words
        if one_shot_curl or words[:2] == ["bash", "-c"]:
            kept.append(command)
    return kept


EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_header_runs_as_written(example: Path, tmp_path: Path) -> None:
    commands = example_commands(example)
    assert len(commands.get("Run", [])) == 1, f"{example.name}: one Run: line in its header"
    pokes = runnable_pokes(commands.get("Poke", []))
    runner = SnippetRunner(tmp_path)
    runner.workdir = REPO  # the examples package is imported from the repository
    runner.run_commands([*commands["Run"], *pokes], {})
    assert runner.served == [f"examples.{example.stem}:{runner.served[0].split(':')[1]}"]
    assert runner.ran == 1 + len(pokes)
