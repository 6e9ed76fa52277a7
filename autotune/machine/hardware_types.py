"""The hardware a plan is made for, as data: one GPU, and a node's GPUs and host.

The bottom of the hardware modules: llmwizard.autotune.machine.host, .nvml and .gpu_catalog fill these
types in, llmwizard.autotune.machine.hardware puts them together, and the planner only reads them. Imports
nothing from llmwizard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llmwizard.autotune.schema import Device

GiB = 1024**3


@dataclass(frozen=True)
class GPU:
    index: int                              # CUDA ordinal as this process sees it (cuda:<index>)
    name: str
    total_memory: int                       # bytes
    free_memory: int                        # bytes
    compute_capability: tuple[int, int]
    uuid: str | None = None
    pci_bus_id: str | None = None
    bf16_tflops: float | None = None        # dense peak, from the GPU catalog (fp16 where cc < 8.0)
    memory_bandwidth: float | None = None   # GB/s, from the GPU catalog
    nvml_index: int | None = None           # NVML's index, which ignores CUDA_VISIBLE_DEVICES
    catalog_name: str | None = None         # the catalog entry the figures come from


@dataclass
class HardwareProfile:
    """One node's devices (nodes are assumed alike) and how many nodes there are."""

    source: str                             # "detected" or "spec"
    gpus: list[GPU]
    nodes: int = 1
    interconnect: str = "none"              # inside a node: "nvlink" (every pair), "pcie" or "none"
    host_ram_total: int = 0                 # bytes, per node
    host_ram_available: int = 0             # bytes, per node, capped by the cgroup limit
    cpu_cores: int = 1
    disk_free: int | None = None            # bytes free where runs are written
    spec: str | None = None
    notes: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # "0-1" -> "nvlink" | "pcie-p2p" | "pcie"
    cgroup_memory_limit: int | None = None  # bytes, the container's limit when there is one

    @property
    def device(self) -> Device:
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
                + (f"{'NVLink' if self.interconnect == 'nvlink' else 'PCIe'}, " if len(self.gpus) > 1 else "")
                + f"host RAM {self.host_ram_available / GiB:.0f} of {self.host_ram_total / GiB:.0f} GiB usable")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = [dict(asdict(g), compute_capability=list(g.compute_capability)) for g in self.gpus]
        return data
