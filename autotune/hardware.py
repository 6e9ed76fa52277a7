"""What the machine has: GPUs through NVML, host RAM and cores through psutil and the cgroup.

`detect()` reads this machine; `from_spec("4xRTX4090", nodes=2)` describes hardware you plan for.
Planning uses FREE GPU memory (memory other processes hold is not ours) and the host RAM this
process may use (psutil's figure capped by the container's cgroup limit).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GiB = 1024**3


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_memory: int                       # bytes
    free_memory: int                        # bytes
    compute_capability: tuple[int, int]
    uuid: str | None = None
    pci_bus_id: str | None = None
    bf16_tflops: float | None = None        # dense peak, from the GPU catalog
    memory_bandwidth: float | None = None   # GB/s, from the GPU catalog


@dataclass
class HardwareProfile:
    """One node's devices (nodes are assumed alike) and how many nodes there are."""

    source: str                             # "detected" or "spec"
    gpus: list[GPU]
    nodes: int = 1
    interconnect: str = "none"              # between GPUs of a node: "nvlink", "pcie" or "none"
    host_ram_total: int = 0                 # bytes, per node
    host_ram_available: int = 0             # bytes, per node, capped by the cgroup limit
    cpu_cores: int = 1
    disk_free: int | None = None            # bytes free where runs are written
    spec: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"

    @property
    def gpus_per_node(self) -> int:
        return len(self.gpus)

    @property
    def smallest_gpu(self) -> GPU | None:
        return min(self.gpus, key=lambda g: g.free_memory) if self.gpus else None

    def describe(self) -> str:
        if not self.gpus:
            return f"CPU only: {self.cpu_cores} cores, {self.host_ram_available / GiB:.0f} GiB RAM available"
        names = sorted({g.name for g in self.gpus})
        gpu = self.smallest_gpu
        assert gpu is not None
        nodes = f"{self.nodes} nodes x " if self.nodes > 1 else ""
        return (f"{nodes}{len(self.gpus)}x {' / '.join(names)} "
                f"({gpu.free_memory / GiB:.1f} of {gpu.total_memory / GiB:.1f} GiB free), "
                f"{self.interconnect}, {self.host_ram_available / GiB:.0f} GiB host RAM")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = [dict(asdict(g), compute_capability=list(g.compute_capability)) for g in self.gpus]
        return data


def detect(runs_dir: str | os.PathLike[str] = ".") -> HardwareProfile:
    """This machine, read now."""
    import psutil

    gpus, note = _nvml_gpus()
    ram_total = psutil.virtual_memory().total
    ram_available = psutil.virtual_memory().available
    limit = cgroup_memory_limit()
    if limit is not None and limit < ram_total:
        ram_total = limit
        ram_available = min(ram_available, max(0, limit - (cgroup_memory_usage() or 0)))
    notes = [note] if note else []
    return HardwareProfile(
        source="detected",
        gpus=gpus,
        interconnect="pcie" if len(gpus) > 1 else "none",
        host_ram_total=ram_total,
        host_ram_available=ram_available,
        cpu_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        disk_free=_disk_free(Path(runs_dir)),
        notes=notes,
    )


def _nvml_gpus() -> tuple[list[GPU], str | None]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return [], "NVML found no NVIDIA driver: planning for the CPU."
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(GPU(
                index=index,
                name=name.decode() if isinstance(name, bytes) else str(name),
                total_memory=int(memory.total),
                free_memory=int(memory.free),
                compute_capability=tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle)),  # type: ignore[arg-type]
            ))
    finally:
        pynvml.nvmlShutdown()
    if not gpus:
        return [], "NVML found no GPU: planning for the CPU."
    return gpus, None


def cgroup_memory_limit() -> int | None:
    """The container's memory limit in bytes (cgroup v2, then v1), or None when unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        value = int(text)
        return None if value >= 2**60 else value  # v1 reports "unlimited" as a huge number
    return None


def cgroup_memory_usage() -> int | None:
    for path in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
        try:
            return int(Path(path).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def _disk_free(path: Path) -> int | None:
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def from_spec(spec: str, nodes: int = 1) -> HardwareProfile:
    """Hardware to plan for: "cpu", "4xRTX4090", "2x8xH100" (nodes x GPUs x model), "2x24GB"."""
    from autotune.gpu_catalog import parse_gpu_spec

    return parse_gpu_spec(spec, nodes)
