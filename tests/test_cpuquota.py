"""``--workers auto``: the affinity capped by the cgroup CPU quota (v2 ``cpu.max``, v1 CFS).

Fake cgroup trees under ``tmp_path`` stand for ``/`` (``/proc/self/cgroup``,
``/proc/self/mountinfo`` and the cgroup files), as a host, a container and a
hybrid v1/v2 machine show them; then the real machine, and a real container
limited with ``podman run --cpus``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from graceserve.config import parse_args
from graceserve.process.cpuquota import auto_workers, available_cpus, cgroup_cpu_quota
from testsupport.process import REPO

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def tree(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> str:
    """Write a fake ``/`` under ``root``: the process's cgroup file, mountinfo, cgroup files."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return str(root)


def v2(root: Path, path: str, files: dict[str, str]) -> str:
    return tree(root, f"0::{path}\n", V2_MOUNT, files)


@pytest.mark.parametrize(
    ("cpu_max", "quota"),
    [
        ("max 100000\n", None),
        ("100000 100000\n", 1.0),
        ("150000 100000\n", 1.5),
        ("50000 100000\n", 0.5),
        ("400000 100000\n", 4.0),
        ("garbage\n", None),
        ("0 100000\n", None),
        ("100000 0\n", None),
    ],
)
def test_v2_cpu_max_of_the_process_cgroup(
    tmp_path: Path, cpu_max: str, quota: float | None
) -> None:
    root = v2(tmp_path, "/app.slice/web.service", {
        "/sys/fs/cgroup/app.slice/web.service/cpu.max": cpu_max,
    })  # fmt: skip
    assert cgroup_cpu_quota(root) == quota


def test_v2_an_ancestor_quota_bounds_the_child(tmp_path: Path) -> None:
    root = v2(tmp_path, "/kubepods/pod1/ctr", {
        "/sys/fs/cgroup/kubepods/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/kubepods/pod1/cpu.max": "200000 100000\n",
        "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root) == 2.0
    # The smallest on the way up wins, wherever it is.
    (tmp_path / "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max").write_text("300000 100000\n")
    assert cgroup_cpu_quota(root) == 2.0
    (tmp_path / "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max").write_text("50000 100000\n")
    assert cgroup_cpu_quota(root) == 0.5


def test_v2_inside_a_container_with_its_own_cgroup_namespace(tmp_path: Path) -> None:
    """The container sees itself at ``/``: its own ``cpu.max`` is the mount's top file."""
    root = v2(tmp_path, "/", {"/sys/fs/cgroup/cpu.max": "100000 100000\n"})
    assert cgroup_cpu_quota(root) == 1.0


def test_v2_cgroup_outside_the_mounted_view_reads_the_mount_top(tmp_path: Path) -> None:
    """No cgroup namespace: /proc/self/cgroup names a host path the mount does not show."""
    mountinfo = "30 23 0:26 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
    root = tree(tmp_path, "0::/system.slice/docker-abc.scope\n", mountinfo, {
        "/sys/fs/cgroup/cpu.max": "150000 100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root) == 1.5


def test_v1_cfs_quota_in_a_container_view(tmp_path: Path) -> None:
    """As podman shows it (cgroupfs, v1): the mount's root is the container's own cgroup."""
    ctr = "/libpod_parent/libpod-0123"
    mountinfo = (
        "92 84 0:48 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
        f"93 92 0:29 {ctr} /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n"
        f"94 92 0:30 {ctr} /sys/fs/cgroup/cpuacct ro - cgroup cgroup rw,cpuacct\n"
        f"96 92 0:32 {ctr} /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
    )
    cgroup = f"4:memory:{ctr}\n2:cpuacct:{ctr}\n1:cpu:{ctr}\n0::{ctr}\n"
    root = tree(tmp_path, cgroup, mountinfo, {
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000\n",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/memory/cpu.cfs_quota_us": "1\n",  # another controller: never read
        "/sys/fs/cgroup/memory/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root) == 1.0


def test_v1_combined_cpu_cpuacct_hierarchy_on_a_host(tmp_path: Path) -> None:
    mountinfo = "40 31 0:36 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
    root = tree(tmp_path, "3:cpu,cpuacct:/batch/job7\n", mountinfo, {
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_quota_us": "250000\n",
        "/sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/batch/job7/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/batch/job7/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cgroup_cpu_quota(root) == 2.5


def test_hybrid_host_takes_the_smaller_of_v1_and_v2(tmp_path: Path) -> None:
    mountinfo = (
        "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    root = tree(tmp_path, "1:cpu:/\n0::/\n", mountinfo, {
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "300000\n",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        # No cpu controller on the unified side of a hybrid host: no cpu.max there.
    })  # fmt: skip
    assert cgroup_cpu_quota(root) == 3.0


@pytest.mark.parametrize(
    "setup",
    ["nothing", "no mountinfo", "garbage", "no cgroup files", "v1 period missing"],
)
def test_no_quota_known_is_none_never_an_error(tmp_path: Path, setup: str) -> None:
    if setup == "nothing":
        assert cgroup_cpu_quota(str(tmp_path)) is None
        return
    if setup == "no mountinfo":
        root = tree(tmp_path, "0::/\n", "", {"/sys/fs/cgroup/cpu.max": "100000 100000\n"})
    elif setup == "garbage":
        root = tree(tmp_path, "\x00:::\nnonsense\n", "1 2 3\n - \n - cgroup2\n", {})
    elif setup == "no cgroup files":
        root = v2(tmp_path, "/a/b", {})
    else:
        mount = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        root = tree(tmp_path, "1:cpu:/\n", mount, {
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000\n",
        })  # fmt: skip
    assert cgroup_cpu_quota(root) is None


@pytest.mark.parametrize(
    ("cpu_max", "cpus", "workers"),
    [
        ("max 100000\n", 64, 64),  # no quota: the affinity
        ("100000 100000\n", 64, 1),  # a 1-CPU pod on a 64-core node
        ("150000 100000\n", 64, 2),  # 1.5 CPUs: rounded up
        ("50000 100000\n", 64, 1),  # half a CPU: still one worker
        ("800000 100000\n", 2, 2),  # a quota above the affinity: the affinity
        ("200001 100000\n", 64, 3),  # just above 2: rounded up
    ],
)
def test_auto_workers(tmp_path: Path, cpu_max: str, cpus: int, workers: int) -> None:
    root = v2(tmp_path, "/", {"/sys/fs/cgroup/cpu.max": cpu_max})
    assert auto_workers(root, cpus=cpus) == workers


def test_auto_on_this_machine_is_the_affinity_capped_by_its_real_quota() -> None:
    quota = cgroup_cpu_quota()
    expected = len(os.sched_getaffinity(0))
    if quota is not None:
        expected = max(1, min(expected, math.ceil(quota)))
    assert available_cpus() == len(os.sched_getaffinity(0))
    assert auto_workers() == expected
    assert parse_args(["--workers", "auto"], {}).workers == expected
    assert parse_args([], {"GRACESERVE_WORKERS": "AUTO"}).workers == expected


PODMAN_CONF = Path(os.environ.get("GRACESERVE_PODMAN_DIR", "/var/tmp/graceserve-podman"))
BASE_IMAGE = "localhost/pyslim:bookworm"


@pytest.mark.container
def test_auto_inside_a_container_limited_to_one_cpu() -> None:
    """``podman run --cpus=1`` on a host with more CPUs: one worker, not the host's count."""
    conf = PODMAN_CONF / "containers.conf"
    if shutil.which("podman") is None or not conf.is_file() or os.geteuid() != 0:
        pytest.skip("needs podman as root and bash .ci/container-setup")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a host with 2 CPUs or more to tell a quota from the affinity")

    def workers_in_container(*options: str) -> int:
        result = subprocess.run(
            ["podman", "run", "--rm", *options, "-v", f"{REPO}:/src:ro", "-w", "/tmp",
             "-e", "PYTHONPATH=/src", BASE_IMAGE, "python3", "-c",
             "from graceserve.config import parse_args;"
             "print(parse_args(['--workers', 'auto'], {}).workers)"],
            env=dict(os.environ, CONTAINERS_CONF=str(conf)),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip())

    assert workers_in_container("--cpus=1") == 1
    assert workers_in_container("--cpus=1.5") == 2
    assert workers_in_container() == len(os.sched_getaffinity(0))
