"""What the machine has: GPUs through NVML, host RAM and cores through psutil and the cgroup.

`detect()` reads this machine; `from_spec("4xRTX4090", nodes=2)` describes hardware you plan for.
Planning uses FREE GPU memory (memory other processes hold is not ours), only the GPUs CUDA will
show this process (CUDA_VISIBLE_DEVICES, which NVML ignores), and the host RAM this process may
use (psutil's figure capped by the container's cgroup limit). `interconnect` is the link between
GPUs inside one node; between nodes the planner assumes the network.

Imports stay light: pynvml and psutil are imported inside the functions that read hardware.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmwizard.autotune.host import CGROUP_ROOT, SELF_CGROUP, GiB, disk_free, read_cgroup, read_host  # noqa: F401 (re-exported)



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
                + (f"{'NVLink' if self.interconnect == 'nvlink' else 'PCIe'}, " if len(self.gpus) > 1 else "")
                + f"host RAM {self.host_ram_available / GiB:.0f} of {self.host_ram_total / GiB:.0f} GiB usable")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = [dict(asdict(g), compute_capability=list(g.compute_capability)) for g in self.gpus]
        return data


def detect(runs_dir: str | os.PathLike[str] = ".", *, cgroup_root: Path = CGROUP_ROOT,
           self_cgroup: Path = SELF_CGROUP, environ: Mapping[str, str] | None = None) -> HardwareProfile:
    """This machine, read now. Never raises for missing drivers or NVML errors: it notes them."""
    from llmwizard.autotune.nvml import link_notes, read_nvml

    gpus, links, notes = read_nvml(os.environ if environ is None else environ)
    host = read_host(cgroup_root, self_cgroup)
    if len(gpus) < 2:
        interconnect = "none"
    else:
        interconnect = "nvlink" if all(kind == "nvlink" for kind in links.values()) else "pcie"
    return HardwareProfile(
        source="detected", gpus=gpus, interconnect=interconnect, links=links,
        host_ram_total=host.ram_total, host_ram_available=host.ram_available, cpu_cores=host.cpu_cores,
        disk_free=disk_free(Path(runs_dir)), cgroup_memory_limit=host.cgroup.memory_limit,
        notes=notes + link_notes(gpus, links) + host.notes,
    )


def from_spec(spec: str, nodes: int | None = 1, host_ram_gib: float | None = None) -> HardwareProfile:
    """Hardware to plan for: "cpu", "4xRTX4090", "2x8xH100" (nodes x GPUs x model), "2x24GB",
    with ",ram=512GB" or `host_ram_gib` for one node's RAM. See llmwizard.autotune.gpu_catalog."""
    from llmwizard.autotune.gpu_catalog import parse_gpu_spec

    return parse_gpu_spec(spec, nodes, host_ram_gib)
