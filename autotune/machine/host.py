"""The host: cores, RAM this process may use (capped by the container's cgroup, v1 or v2), free disk.

psutil reports the machine's RAM, not a container's limit, so the cgroup files are read too: the
smallest limit from this process's cgroup up to the root.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmwizard.autotune.machine.hardware_types import GiB

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")

@dataclass(frozen=True)
class CgroupLimits:
    """The container's limits. memory_used is the working set: usage minus inactive page cache,
    the figure the kubelet evicts on (cAdvisor's working_set_bytes), since cache is reclaimable."""

    version: int | None = None
    memory_limit: int | None = None
    memory_used: int | None = None
    cpu_limit: float | None = None          # CPUs' worth of quota


@dataclass(frozen=True)
class HostFacts:
    ram_total: int
    ram_available: int
    cpu_cores: int
    cgroup: CgroupLimits
    notes: list[str]


def read_host(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> HostFacts:
    import psutil

    memory = psutil.virtual_memory()
    total, available = int(memory.total), int(memory.available)
    limits = read_cgroup(cgroup_root, self_cgroup)
    notes = []
    if limits.memory_limit is not None and limits.memory_limit < total:
        room = limits.memory_limit - (limits.memory_used or 0)
        total, available = limits.memory_limit, min(available, max(0, room))
        notes.append(f"Container memory limit (cgroup v{limits.version}): {total / GiB:.1f} GiB of the host's "
                     f"{memory.total / GiB:.1f} GiB, {available / GiB:.1f} GiB of it free.")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if limits.cpu_limit is not None and limits.cpu_limit < cores:
        notes.append(f"Container CPU quota: {limits.cpu_limit:g} CPUs of the {cores} this process may run on.")
        cores = max(1, math.floor(limits.cpu_limit))
    return HostFacts(total, available, cores, limits, notes)


def read_cgroup(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> CgroupLimits:
    """Memory limit, working set and CPU quota of this process's cgroup (v2, else v1). A limit
    set on a parent cgroup binds too, so the smallest limit from the leaf up to the root counts."""
    paths = _cgroup_paths(self_cgroup)
    if (root / "cgroup.controllers").exists():
        leaf = _leaf(root, paths.get("", "/"))
        limit = _min_up(leaf, root, "memory.max", lambda text: None if text == "max" else int(text))
        used = _working_set(_read_int(leaf / "memory.current"), _stat(leaf / "memory.stat", "inactive_file"))
        cpu = _min_up(leaf, root, "cpu.max", _cpu_v2)
        return CgroupLimits(2, limit, used, cpu)
    memory_root = root / "memory"
    if memory_root.is_dir():
        leaf = _leaf(memory_root, paths.get("memory", "/"))
        # v1 writes "no limit" as a page-aligned LONG_MAX (9223372036854771712).
        limit = _min_up(leaf, memory_root, "memory.limit_in_bytes",
                        lambda text: None if int(text) >= 2**60 else int(text))
        stat = leaf / "memory.stat"
        inactive = _stat(stat, "total_inactive_file")
        used = _working_set(_read_int(leaf / "memory.usage_in_bytes"),
                            inactive if inactive is not None else _stat(stat, "inactive_file"))
        cpu = None
        for name in ("cpu,cpuacct", "cpu"):
            if (root / name).is_dir():
                cpu_leaf = _leaf(root / name, paths.get("cpu", "/"))
                quota, period = _read_int(cpu_leaf / "cpu.cfs_quota_us"), _read_int(cpu_leaf / "cpu.cfs_period_us")
                cpu = quota / period if quota and period and quota > 0 else None
                break
        return CgroupLimits(1, limit, used, cpu)
    return CgroupLimits()


def _cgroup_paths(self_cgroup: Path) -> dict[str, str]:
    """/proc/self/cgroup lines "ID:controllers:path"; v2's line is "0::/path" (key "")."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return {}
    paths: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    return paths


def _leaf(base: Path, relative: str) -> Path:
    """The process's cgroup directory; in a container with its own cgroup namespace (or a v1
    container whose mount is its own cgroup) the path does not exist below the mount: use the mount."""
    candidate = base / relative.strip("/")
    return candidate if relative.strip("/") and candidate.is_dir() else base


def _min_up(leaf: Path, base: Path, name: str, parse: Callable[[str], Any]) -> Any:
    found = []
    path = leaf
    while True:
        try:
            value = parse((path / name).read_text().strip())
        except (OSError, ValueError):
            value = None
        if value is not None:
            found.append(value)
        if path == base or base not in path.parents:
            break
        path = path.parent
    return min(found) if found else None


def _cpu_v2(text: str) -> float | None:
    quota, _, period = text.partition(" ")
    return None if quota == "max" else int(quota) / int(period or 100000)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stat(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    if usage is None:
        return None
    return max(0, usage - (inactive_file or 0))


def disk_free(path: Path) -> int | None:
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None
