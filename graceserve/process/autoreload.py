"""``--reload``: watch the app's source files and reload gracefully when one changes.

Why this module exists: in development every peer restarts the server when the
code changes.  graceserve already has a reload that lets the requests in flight
finish and keeps the old code serving if the new code cannot import (HUP), so
the watcher only notices a change and sends this process a HUP, exactly what
an operator would send.  Polling, standard library only: one ``os.stat`` per
watched file per interval, over a bounded number of files.

What is watched: the ``*.py`` files under the roots (the working directory by
default), skipping hidden directories, ``__pycache__``, virtual environments
(a directory holding ``pyvenv.cfg``) and ``site-packages``.  A change is a file
added, removed, or with a new size or modification time.  An editor that saves
in several steps makes one reload: the watcher waits until two scans a settle
interval apart agree before it acts.

Threading contract: ``Watcher`` runs in its own daemon thread; it reads the
file system and calls ``on_change`` from that thread (the default sends SIGHUP
to this process, whose handler only records it).  ``stop`` may be called from
any thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["MAX_FILES", "Watcher", "scan", "watch_working_directory"]

log = logging.getLogger("graceserve")

MAX_FILES = 20_000
"""Files one watcher looks at, at most: a bigger tree is cut there, with a warning."""
INTERVAL = 1.0  # seconds between two scans
SETTLE = 0.2  # seconds between the scan that saw a change and the one that confirms it
SETTLE_ROUNDS = 10  # a tree still changing after this many settles reloads anyway
SKIPPED_DIRECTORIES = frozenset({"__pycache__", "node_modules", "site-packages"})

Stamp = tuple[int, int]  # (st_mtime_ns, st_size)


def _python_files(root: Path) -> Iterator[Path]:
    """The ``*.py`` files under ``root``, in a stable order, pruning what is not the app's."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(
            name
            for name in subdirectories
            if not name.startswith(".")
            and name not in SKIPPED_DIRECTORIES
            and not os.path.exists(os.path.join(directory, name, "pyvenv.cfg"))
        )
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(directory, name)


def scan(roots: Iterable[Path], limit: int = MAX_FILES) -> tuple[dict[Path, Stamp], bool]:
    """Every watched file with its stamp; and whether ``limit`` cut the scan short."""
    stamps: dict[Path, Stamp] = {}
    for root in roots:
        for path in _python_files(root):
            if len(stamps) >= limit:
                return stamps, True
            try:
                status = path.stat()
            except OSError:  # removed between the listing and the stat
                continue
            stamps[path] = (status.st_mtime_ns, status.st_size)
    return stamps, False


def _changes(before: dict[Path, Stamp], after: dict[Path, Stamp]) -> list[Path]:
    changed = [path for path, stamp in after.items() if before.get(path) != stamp]
    return sorted(changed + [path for path in before if path not in after])


HANDLER_POLL = 0.1  # seconds between two looks for the HUP handler at start-up


def _send_hup(changed: list[Path]) -> None:
    """Send this process a HUP once it handles one: before the runner installed its
    handler, a HUP would end the process (its default action)."""
    while signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
        time.sleep(HANDLER_POLL)  # start-up: the runner installs it before serving
    os.kill(os.getpid(), signal.SIGHUP)


def watch_working_directory() -> Watcher:
    """Start ``--reload``'s watcher over the working directory (after ``--chdir``)."""
    watcher = Watcher([Path.cwd()])
    watcher.start()
    log.info(
        "--reload: watching %d Python files under %s", watcher.watched, Path.cwd(),
        extra={"event": "autoreload_watching", "files": watcher.watched},
    )  # fmt: skip
    return watcher


class Watcher(threading.Thread):
    """Scan ``roots`` every ``interval`` seconds; call ``on_change`` with what changed."""

    def __init__(
        self,
        roots: Iterable[Path],
        *,
        interval: float = INTERVAL,
        settle: float = SETTLE,
        limit: int = MAX_FILES,
        on_change: Callable[[list[Path]], None] = _send_hup,
    ) -> None:
        super().__init__(name="graceserve-reload-watcher", daemon=True)
        self.roots = [Path(root).resolve() for root in roots]
        self.interval = interval
        self.settle = settle
        self.limit = limit
        self.on_change = on_change
        self._stopped = threading.Event()
        self.stamps, cut = scan(self.roots, limit)
        if cut:
            log.warning(
                "--reload watches only the first %d Python files under %s",
                limit, ", ".join(map(str, self.roots)),
            )  # fmt: skip
        self.ready = threading.Event()
        """Set once the first scan after start is done: a change after it is seen."""

    @property
    def watched(self) -> int:
        """How many files the last scan saw."""
        return len(self.stamps)

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        self.ready.set()
        while not self._stopped.wait(self.interval):
            current, _ = scan(self.roots, self.limit)
            changed = _changes(self.stamps, current)
            if not changed:
                continue
            for _ in range(SETTLE_ROUNDS):  # an editor's save in several steps: one reload
                if self._stopped.wait(self.settle):
                    return
                settled, _ = scan(self.roots, self.limit)
                if settled == current:
                    break
                changed = _changes(self.stamps, settled)
                current = settled
            self.stamps = current
            names = ", ".join(str(path) for path in changed[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            log.info(
                "--reload: %s changed; reloading", names + more,
                extra={"event": "autoreload", "files": [str(path) for path in changed]},
            )  # fmt: skip
            self.on_change(changed)
