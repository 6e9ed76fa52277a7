"""GPU models llmwizard knows, for planning hardware you do not have yet."""

from __future__ import annotations

import re
from dataclasses import dataclass

from autotune.errors import UserError
from autotune.hardware import GPU, GiB, HardwareProfile


@dataclass(frozen=True)
class GPUModel:
    name: str
    memory_gib: float
    compute_capability: tuple[int, int]
    bf16_tflops: float
    bandwidth_gbs: float
    interconnect: str


CATALOG = {
    "RTX4090": GPUModel("NVIDIA GeForce RTX 4090", 24, (8, 9), 165.2, 1008, "pcie"),
    "A100-80GB": GPUModel("NVIDIA A100-SXM4-80GB", 80, (8, 0), 312, 2039, "nvlink"),
    "H100-80GB": GPUModel("NVIDIA H100 80GB HBM3", 80, (9, 0), 989, 3350, "nvlink"),
}


def parse_gpu_spec(spec: str, nodes: int = 1) -> HardwareProfile:
    text = spec.strip().replace(" ", "")
    if text.lower() == "cpu":
        import psutil

        return HardwareProfile(source="spec", gpus=[], nodes=nodes, spec=spec,
                               host_ram_total=psutil.virtual_memory().total,
                               host_ram_available=psutil.virtual_memory().available, cpu_cores=1)
    match = re.fullmatch(r"(?:(\d+)x)?(\d+)x(.+)", text, flags=re.I)
    if not match:
        raise UserError(f"Cannot read GPU spec '{spec}'.", title="Hardware",
                        fix="Write COUNTxMODEL, e.g. 4xRTX4090, 8xH100-80GB, 2x24GB, or NODESxCOUNTxMODEL.")
    node_count = int(match.group(1) or nodes)
    count, name = int(match.group(2)), match.group(3).upper()
    size = re.fullmatch(r"(\d+)GB", name)
    if size:
        model = GPUModel(f"generic {size.group(1)} GB GPU", float(size.group(1)), (8, 0), 100, 1000, "pcie")
    elif name in CATALOG:
        model = CATALOG[name]
    else:
        raise UserError(f"Unknown GPU model '{match.group(3)}' in '{spec}'.", title="Hardware",
                        fix=f"Use one of {', '.join(CATALOG)}, or a size such as 24GB.")
    memory = int(model.memory_gib * GiB)
    gpus = [GPU(index=i, name=model.name, total_memory=memory, free_memory=memory,
                compute_capability=model.compute_capability, bf16_tflops=model.bf16_tflops,
                memory_bandwidth=model.bandwidth_gbs) for i in range(count)]
    return HardwareProfile(source="spec", gpus=gpus, nodes=node_count, spec=spec,
                           interconnect=model.interconnect if count > 1 else "none",
                           host_ram_total=int(256 * GiB), host_ram_available=int(240 * GiB), cpu_cores=32)
