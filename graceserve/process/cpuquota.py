"""How many CPUs this process may really use: affinity and the cgroup CPU quota.

Why this module exists: ``--workers auto`` must not start 64 workers in a pod
limited to one CPU on a 64-core node.  ``os.sched_getaffinity`` sees the
CPUs the scheduler may put us on (cpusets, ``taskset``, ``docker --cpuset-cpus``),
but not a CPU *quota* (``docker --cpus=1``, a Kubernetes CPU limit, systemd's
``CPUQuota=``): the kernel lets every CPU run us, a slice of each period.  The
quota is in the process's cgroup:

- cgroup v2: ``cpu.max`` holds ``QUOTA PERIOD`` (microseconds) or ``max PERIOD``;
- cgroup v1: ``cpu.cfs_quota_us`` (``-1``: none) and ``cpu.cfs_period_us`` in the
  ``cpu`` controller's hierarchy.

A parent cgroup's quota bounds its children too, so the smallest quota from the
process's own cgroup up to the root of the mount is the one that counts.  The
cgroup is found through ``/proc/self/cgroup`` and its directory through
``/proc/self/mountinfo`` (the mount's root tells where the hierarchy is cut,
as inside a container whose cgroup namespace is not private).

Every function takes ``root``, the directory that stands for ``/``, so the
tests build fake trees.  Pure reads of small files, no state: thread-safe.
Anything unreadable or malformed means "no quota known" (the count then falls
back to the affinity): a guess at the worker count must never stop a start.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["auto_workers", "available_cpus", "cgroup_cpu_quota"]


@dataclass(frozen=True)
class _Mount:
    """A cgroup mount from mountinfo: where it is, which cgroup path it shows."""

    version: int  # 1 or 2
    root: str  # the cgroup path mounted there ("/" unless the view is cut)
    point: str  # the mount point
    controllers: frozenset[str]  # v1: the controllers of the hierarchy


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read(65536)
    except OSError:
        return None


def _under(root: str, path: str) -> str:
    """``path`` (absolute) inside the tree that ``root`` stands for."""
    return os.path.join(root, path.lstrip("/"))


def _mounts(root: str) -> Iterator[_Mount]:
    text = _read(_under(root, "/proc/self/mountinfo")) or ""
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        fstype = rest[0]
        point = fields[4].replace("\\040", " ")
        if fstype == "cgroup2":
            yield _Mount(2, fields[3], point, frozenset())
        elif fstype == "cgroup":
            yield _Mount(1, fields[3], point, frozenset(rest[2].split(",")))


def _memberships(root: str) -> dict[str, str]:
    """Controller (``""`` for v2's unified line) to this process's cgroup path."""
    text = _read(_under(root, "/proc/self/cgroup")) or ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hierarchy, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _directories(mount: _Mount, cgroup: str) -> list[str]:
    """The cgroup's directory and its ancestors up to the mount point, innermost first."""
    base = mount.root.rstrip("/")
    # A cgroup outside the mounted part of the tree (no cgroup namespace): use the top.
    inside = cgroup == base or cgroup.startswith(base + "/")
    relative = cgroup[len(base) :] if inside else ""
    parts = [part for part in relative.split("/") if part]
    return [os.path.join(mount.point, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_quota(root: str, directory: str) -> float | None:
    text = _read(_under(root, os.path.join(directory, "cpu.max")))
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(root: str, directory: str) -> float | None:
    quota = _read(_under(root, os.path.join(directory, "cpu.cfs_quota_us")))
    period = _read(_under(root, os.path.join(directory, "cpu.cfs_period_us")))
    if quota is None or period is None:
        return None
    return _ratio(quota.strip(), period.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:  # -1: no quota (v1)
        return None
    return q / p


def cgroup_cpu_quota(root: str = "/") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 = one and a half), or None.

    The smallest quota on the way from the process's cgroup to the top of its
    mount, over the v2 hierarchy and the v1 ``cpu`` controller (a hybrid host
    has both).  None when there is no quota or it cannot be read.
    """
    memberships = _memberships(root)
    quotas: list[float] = []
    for mount in _mounts(root):
        if mount.version == 2 and "" in memberships:
            cgroup, reader = memberships[""], _v2_quota
        elif mount.version == 1 and "cpu" in mount.controllers and "cpu" in memberships:
            cgroup, reader = memberships["cpu"], _v1_quota
        else:
            continue
        for directory in _directories(mount, cgroup):
            quota = reader(root, directory)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def available_cpus() -> int:
    """The CPUs the scheduler may run this process on (affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def auto_workers(root: str = "/", cpus: int | None = None) -> int:
    """``--workers auto``: the affinity's CPU count, capped by the cgroup quota rounded up.

    ``cpus`` stands for ``available_cpus()`` (tests).  At least 1: a quota of
    half a CPU still needs one worker, and 1.5 CPUs get two.
    """
    count = available_cpus() if cpus is None else cpus
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
