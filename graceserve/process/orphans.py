"""PID 1's duty: reap the orphans the kernel hands us, and only those.

Why this module exists: in a container graceserve is often PID 1 (the shipped
image runs it so), and every process whose parent dies is re-parented to PID 1;
if PID 1 never waits for them they stay zombies (20 of them after the app ran
20 ``sh -c 'cmd &'``), filling the pid table.  A supervisor could simply
``waitpid(-1)``, but with one process the app runs here too, and its own
children are ours: a ``waitpid(-1)`` would steal the status that its
``subprocess.run`` is about to wait for (Python then reports exit code 0).

So: only as PID 1 (anywhere else the orphans go to a real init), and only
zombies that have stayed zombies for ``MIN_AGE`` seconds (an app waiting for its
child reaps it as soon as it exits), never a pid the caller names (its workers,
reaped through their pidfds).  ``waitid(WNOWAIT)`` says cheaply whether any
zombie exists at all; only then are our children listed
(``/proc/self/task/*/children``) and the zombies among them timed.

Threading contract: one thread (the supervisor's loop).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Collection

__all__ = ["MIN_AGE", "OrphanReaper"]

log = logging.getLogger("graceserve")

MIN_AGE = 1.0  # seconds a zombie waits for its own parent's wait before we reap it


class OrphanReaper:
    """Reaps old zombies among our children, as PID 1 only."""

    def __init__(self, min_age: float = MIN_AGE) -> None:
        self.min_age = min_age
        self.enabled = os.getpid() == 1
        self._seen: dict[int, float] = {}  # zombie pid -> when first seen as one

    def reap(self, now: float, skip: Collection[int] = ()) -> int:
        """Reap the zombies old enough; how many were reaped."""
        if not self.enabled or not self._any_zombie():
            self._seen.clear()
            return 0
        zombies = {pid for pid in _children() if pid not in skip and _is_zombie(pid)}
        self._seen = {pid: self._seen.get(pid, now) for pid in zombies}
        reaped = 0
        for pid, since in list(self._seen.items()):
            if now - since < self.min_age:
                continue
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped += 1
                    log.debug("reaped pid %d (not a worker)", pid)
            del self._seen[pid]
        return reaped

    @staticmethod
    def _any_zombie() -> bool:
        try:
            return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return False


def _children() -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as file:
                found.update(int(word) for word in file.read().split())
    return found


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
