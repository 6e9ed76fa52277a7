"""What the machine has: GPUs through NVML, host RAM and cores through psutil and the cgroup.

`detect()` reads this machine; `from_spec("4xRTX4090", nodes=2)` describes hardware you plan for.
Planning uses FREE GPU memory (memory other processes hold is not ours), only the GPUs CUDA will
show this process (CUDA_VISIBLE_DEVICES, which NVML ignores), and the host RAM this process may
use (psutil's figure capped by the container's cgroup limit). `interconnect` is the link between
GPUs inside one node; between nodes the planner assumes the network.

The top of the hardware modules: it joins llmwizard.autotune.machine.nvml, .host and .gpu_catalog, which
build the types of llmwizard.autotune.machine.hardware_types. Imports stay light: pynvml and psutil are
imported inside the functions that read hardware.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from llmwizard.autotune.machine.gpu_catalog import parse_gpu_spec
from llmwizard.autotune.machine.hardware_types import GPU, GiB, HardwareProfile
from llmwizard.autotune.machine.host import CGROUP_ROOT, SELF_CGROUP, disk_free, read_cgroup, read_host
from llmwizard.autotune.machine.nvml import link_notes, read_nvml

# Names callers import from here; the types live in llmwizard.autotune.machine.hardware_types.
__all__ = ["CGROUP_ROOT", "GPU", "GiB", "HardwareProfile", "SELF_CGROUP", "detect", "disk_free", "from_spec",
           "read_cgroup", "read_host"]


def detect(runs_dir: str | os.PathLike[str] = ".", *, cgroup_root: Path = CGROUP_ROOT,
           self_cgroup: Path = SELF_CGROUP, environ: Mapping[str, str] | None = None) -> HardwareProfile:
    """This machine, read now. Never raises for missing drivers or NVML errors: it notes them."""
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
    with ",ram=512GB" or `host_ram_gib` for one node's RAM. See llmwizard.autotune.machine.gpu_catalog."""
    return parse_gpu_spec(spec, nodes, host_ram_gib)
