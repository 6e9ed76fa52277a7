"""GPU models llmwizard knows: figures for hardware you plan for, and for GPUs NVML detects.

Figures per GPU (one entry = one part):
- memory: total as NVML / `nvidia-smi --query-gpu=memory.total` reports it on the real part, in MiB
  (the datasheet's "24 GB" minus what the driver and ECC reserve), because that is what a plan
  for the real machine will find.
- bf16_tflops: dense peak bf16 tensor throughput with fp32 accumulation, no 2:4 sparsity (the
  vendor datasheets print the sparse figure first, with an asterisk: this is half of it). Parts
  without bf16 (compute capability < 8.0: T4, V100) carry their fp16 tensor figure instead.
- bandwidth: memory bandwidth in GB/s from the datasheet.
- interconnect: between GPUs of one node: "nvlink" for SXM boards (NVLink/NVSwitch between all
  pairs), "pcie" for PCIe cards (consumer cards have no NVLink since Ada).
- host RAM and CPU cores per GPU for a hypothetical node: the cloud instance named beside the
  entry divided by its GPU count, or a stated workstation assumption. Override with ",ram=256GB".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.machine.hardware_types import GPU, GiB, HardwareProfile
from llmwizard.autotune.machine.host import read_host

MiB = 1024**2
# Share of a hypothetical node's RAM a run may count on: the OS, page cache, the launcher and
# dataloader workers keep the rest.
HOST_RAM_USABLE = 0.9
# An HGX/DGX board holds 8 GPUs; a few chassis hold 16 (DGX-2). More per node is a typo for nodes.
MAX_GPUS_PER_NODE = 16


@dataclass(frozen=True)
class GPUModel:
    key: str                                # the name users type: "RTX4090", "H100-80GB"
    name: str                               # as NVML names the part
    memory_mib: int
    compute_capability: tuple[int, int]
    bf16_tflops: float                      # dense; fp16 tensor figure where cc < 8.0
    bandwidth_gbs: float
    interconnect: str                       # "nvlink" or "pcie"
    host_ram_per_gpu_gib: int
    cores_per_gpu: int
    nvml_pattern: str                       # regex on NVML's upper-cased device name

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MiB


CATALOG: dict[str, GPUModel] = {m.key: m for m in (
    # T4 datasheet: 16 GB GDDR6, 320 GB/s, mixed-precision (FP16/FP32) 65 TFLOPS; no bf16.
    # Host: AWS g4dn.12xlarge, 4x T4, 48 vCPU, 192 GiB.
    GPUModel("T4", "Tesla T4", 15360, (7, 5), 65.0, 320, "pcie", 48, 12, r"\bT4\b"),
    # V100 SXM2 datasheet: 16/32 GB HBM2, 900 GB/s, tensor (fp16) 125 TFLOPS; NVLink 300 GB/s; no bf16.
    # Host: AWS p3.16xlarge (8x 16 GB, 64 vCPU, 488 GiB), p3dn.24xlarge (8x 32 GB, 96 vCPU, 768 GiB).
    GPUModel("V100-16GB", "Tesla V100-SXM2-16GB", 16384, (7, 0), 125.0, 900, "nvlink", 61, 8, r"\bV100"),
    GPUModel("V100-32GB", "Tesla V100-SXM2-32GB", 32768, (7, 0), 125.0, 900, "nvlink", 96, 12, r"\bV100"),
    # A10G (AWS's A10 variant, no public NVIDIA datasheet): 24 GB GDDR6, 600 GB/s; 70 TFLOPS dense
    # fp16/bf16 tensor as NVIDIA's A10G figures are quoted (Baseten, "NVIDIA A10 vs A10G").
    # Host: AWS g5.12xlarge, 4x A10G, 48 vCPU, 192 GiB.
    GPUModel("A10G", "NVIDIA A10G", 23028, (8, 6), 70.0, 600, "pcie", 48, 12, r"\bA10G\b"),
    # L4 datasheet: 24 GB GDDR6, 300 GB/s, BF16 tensor 242 TFLOPS with sparsity -> 121 dense.
    # Host: AWS g6.12xlarge, 4x L4, 48 vCPU, 192 GiB.
    GPUModel("L4", "NVIDIA L4", 23034, (8, 9), 121.0, 300, "pcie", 48, 12, r"\bL4\b"),
    # L40S datasheet: 48 GB GDDR6, 864 GB/s, BF16 tensor 362.05 | 733 (sparse) TFLOPS.
    # Host: AWS g6e.12xlarge, 4x L40S, 48 vCPU, 384 GiB.
    GPUModel("L40S", "NVIDIA L40S", 46068, (8, 9), 362.05, 864, "pcie", 96, 12, r"\bL40S\b"),
    # GA102 whitepaper (Ampere), RTX 3090: BF16 / FP16 tensor with FP32 accumulate 71 dense, 936 GB/s.
    # GeForce cards: a workstation assumption of 32 GiB RAM and 8 cores per 24 GB card (128 GiB for 4).
    GPUModel("RTX3090", "NVIDIA GeForce RTX 3090", 24576, (8, 6), 71.0, 936, "pcie", 32, 8, r"\bRTX 3090\b"),
    # Ada Lovelace whitepaper, RTX 4090: FP16/BF16 tensor with FP32 accumulate 165.2 dense, 1008 GB/s.
    GPUModel("RTX4090", "NVIDIA GeForce RTX 4090", 24564, (8, 9), 165.2, 1008, "pcie", 32, 8, r"\bRTX 4090\b"),
    # RTX Blackwell whitepaper, RTX 5090: FP16/BF16 tensor with FP32 accumulate 209.5 dense,
    # 32 GB GDDR7, 1792 GB/s; compute capability 12.0. Workstation assumption: 48 GiB RAM per card.
    GPUModel("RTX5090", "NVIDIA GeForce RTX 5090", 32607, (12, 0), 209.5, 1792, "pcie", 48, 8, r"\bRTX 5090\b"),
    # A100 datasheet (SXM4): BF16 tensor 312 TFLOPS dense; 40 GB HBM2 1555 GB/s, 80 GB HBM2e 2039 GB/s.
    # Host: AWS p4d.24xlarge / p4de.24xlarge, 8x A100, 96 vCPU, 1152 GiB.
    GPUModel("A100-40GB", "NVIDIA A100-SXM4-40GB", 40960, (8, 0), 312.0, 1555, "nvlink", 144, 12, r"\bA100\b"),
    GPUModel("A100-80GB", "NVIDIA A100-SXM4-80GB", 81920, (8, 0), 312.0, 2039, "nvlink", 144, 12, r"\bA100\b"),
    # H100 datasheet: SXM5 BF16 tensor 1979 sparse -> 989 dense, 3.35 TB/s; PCIe 1513 sparse ->
    # 756 dense, 2.0 TB/s. Host: AWS p5.48xlarge, 8x H100 SXM, 192 vCPU, 2048 GiB; the PCIe card
    # assumes a 128 GiB / 16-core share.
    GPUModel("H100-80GB", "NVIDIA H100 80GB HBM3", 81559, (9, 0), 989.0, 3350, "nvlink", 256, 24, r"\bH100\b"),
    GPUModel("H100-PCIE", "NVIDIA H100 PCIe", 81559, (9, 0), 756.0, 2000, "pcie", 128, 16, r"\bH100\b"),
    # H200 datasheet (SXM): 141 GB HBM3e, 4.8 TB/s, BF16 tensor 1979 sparse -> 989 dense.
    # Host: AWS p5e.48xlarge, 8x H200, 192 vCPU, 2048 GiB.
    GPUModel("H200", "NVIDIA H200", 143771, (9, 0), 989.0, 4800, "nvlink", 256, 24, r"\bH200\b"),
    # HGX B200 datasheet: 1.44 TB for 8 GPUs (180 GB each), 8 TB/s, FP16/BF16 tensor 4.5 PFLOPS
    # sparse -> 2250 dense per GPU; compute capability 10.0. Host: AWS p6-b200.48xlarge, 8x B200,
    # 192 vCPU, 2048 GiB.
    GPUModel("B200", "NVIDIA B200", 183359, (10, 0), 2250.0, 8000, "nvlink", 256, 24, r"\bB200\b"),
)}

# Names that mean one entry. Ambiguous family names resolve to the smaller or commoner part and
# the profile says so (AMBIGUOUS): a plan sized for the smaller card also runs on the larger one.
ALIASES: dict[str, str] = {
    "V100": "V100-16GB", "V100SXM216GB": "V100-16GB", "V100SXM232GB": "V100-32GB",
    "A100": "A100-40GB", "A100SXM440GB": "A100-40GB", "A100SXM480GB": "A100-80GB", "A10040G": "A100-40GB",
    "A10080G": "A100-80GB",
    "H100": "H100-80GB", "H100SXM": "H100-80GB", "H100SXM5": "H100-80GB", "H100SXM80GB": "H100-80GB",
    "H100SXM580GB": "H100-80GB",
    "H10080GBHBM3": "H100-80GB", "H100PCIE80GB": "H100-PCIE",
    "H200141GB": "H200", "H200SXM": "H200", "B200180GB": "B200", "B200192GB": "B200",
    "3090": "RTX3090", "4090": "RTX4090", "5090": "RTX5090",
}
AMBIGUOUS = {
    "V100": "'V100' read as V100-16GB (the smaller part, so the plan fits either); write V100-32GB for the 32 GB part.",
    "A100": "'A100' read as A100-40GB (the smaller part, so the plan fits either); write A100-80GB for the 80 GB part.",
    "H100": "'H100' read as H100-80GB, the SXM board with NVLink; write H100-PCIe for PCIe cards.",
}
_PREFIXES = ("NVIDIA", "GEFORCE", "TESLA", "QUADRO")


def _normalize(name: str) -> str:
    text = re.sub(r"[^A-Z0-9.]", "", name.upper())
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if text.startswith(prefix) and len(text) > len(prefix):
                text, changed = text[len(prefix):], True
    return text


_LOOKUP: dict[str, str] = {_normalize(key): key for key in CATALOG}
_LOOKUP.update({_normalize(alias): key for alias, key in ALIASES.items()})


def known_names() -> list[str]:
    return [*CATALOG, "cpu"]


def lookup(name: str) -> GPUModel | None:
    """The catalog entry a user's model name means ("RTX 4090", "4090", "h100-80gb"), or None."""
    key = _LOOKUP.get(_normalize(name))
    return CATALOG[key] if key else None


def generic(memory_gib: float) -> GPUModel:
    """A GPU known only by its memory: assumed an Ampere-class PCIe card (compute capability 8.0,
    so bf16), 100 TFLOP/s and 1000 GB/s. Only the memory is a fact; speed figures rank strategies."""
    return GPUModel(f"{memory_gib:g}GB", f"GPU with {memory_gib:g} GB", int(memory_gib * 1024), (8, 0), 100.0,
                    1000, "pcie", max(16, int(2 * memory_gib)), 8, r"$^")


def match_nvml_name(name: str, total_memory: int | None = None) -> GPUModel | None:
    """The catalog entry for a GPU NVML detected, by its name; memory picks between sizes
    (A100 40/80 GB) and "PCIe"/"NVL" in the name picks the PCIe flavour of an SXM family."""
    upper = name.upper()
    found = [m for m in CATALOG.values() if re.search(m.nvml_pattern, upper)]
    if not found:
        return None
    pcie_named = "PCIE" in upper or re.search(r"\bNVL\b", upper) is not None
    flavour = [m for m in found if (m.interconnect == "pcie") == pcie_named]
    found = flavour or found
    if total_memory is None:
        return found[0]
    return min(found, key=lambda m: abs(m.memory_bytes - total_memory))


_SEP = r"\s*[x×*]\s*"
_SPEC = re.compile(rf"^(?:(\d+){_SEP})?(?:(\d+){_SEP})?(.+)$", re.IGNORECASE)
# A number as a user may write one, signs, nan and inf included, so that those are refused by name
# rather than read as an unknown GPU model.
_NUMBER = r"([-+]?\d+(?:\.\d+)?|[-+]?(?:nan|inf|infinity))"
_SIZE = re.compile(rf"^{_NUMBER}\s*(?:GB|GIB|G)$", re.IGNORECASE)
_RAM = re.compile(rf"^(?:ram|host[-_ ]?ram)\s*=\s*{_NUMBER}\s*(?:GB|GIB|G)?$", re.IGNORECASE)


def parse_gpu_spec(spec: str, nodes: int | None = 1, host_ram_gib: float | None = None) -> HardwareProfile:
    """Hardware to plan for: "cpu", "4xRTX4090", "8 x H100-80GB", "2x24GB", "2x8xH100" (nodes x
    GPUs x model), optionally ",ram=512GB" for the host RAM of one node. `nodes` (--nodes) may
    restate the spec's node count but not contradict it."""
    nodes = 1 if nodes is None else nodes
    text, ram = _split_ram(spec)
    if host_ram_gib is not None:
        ram = _positive(host_ram_gib, f"Host RAM --host-ram {host_ram_gib:g} for '{spec}'",
                        "Give the RAM of one node in GiB, e.g. --host-ram 256.")
    if nodes < 1:
        raise UserError(f"--nodes {nodes} is not a node count.", title="Hardware", fix="Use --nodes 1 or more.")
    if not text:
        raise UserError("The GPU spec is empty.", title="Hardware", fix=_FIX)
    if text.lower() == "cpu":
        return _cpu_profile(spec, nodes, ram)
    match = _SPEC.match(text)
    assert match is not None  # (.+) matches any non-empty text
    first, second, model_name = match.groups()
    if second is not None:
        spec_nodes, count = int(first), int(second)
    else:
        spec_nodes, count = None, int(first) if first is not None else 1
    model_name = model_name.strip()
    if spec_nodes is not None and nodes > 1 and spec_nodes != nodes:
        raise UserError(f"'{spec}' says {spec_nodes} nodes but --nodes says {nodes}.", title="Hardware",
                        fix=f"Write {count}x{model_name} with --nodes {nodes}, or drop --nodes.")
    node_count = spec_nodes if spec_nodes is not None else nodes
    if count < 1 or node_count < 1:
        what = f"{count} GPUs per node" if count < 1 else f"{node_count} nodes"
        raise UserError(f"'{spec}' asks for no GPU: {what}.", title="Hardware",
                        fix="Ask for 1 or more of each. " + _FIX)
    if count > MAX_GPUS_PER_NODE:
        raise UserError(f"'{spec}' puts {count} GPUs in one node; nodes hold at most {MAX_GPUS_PER_NODE}.",
                        title="Hardware", fix=f"Write NODESxGPUSxMODEL, e.g. {max(1, count // 8)}x8x{model_name}.")
    notes = []
    size = _SIZE.match(model_name)
    if size:
        memory = _positive(float(size.group(1)), f"GPU memory '{model_name}' in '{spec}'",
                           f"Give each GPU's memory in GB, e.g. {count}x24GB.", smallest=1 / 1024)
        model = generic(memory)
        notes.append(f"{model.key} GPUs: only the memory is known; assumed bf16-capable (compute capability 8.0), "
                     "PCIe, 100 TFLOP/s.")
    else:
        found = lookup(model_name)
        if found is None:
            raise UserError(f"Unknown GPU model '{model_name}' in '{spec}'.", title="Hardware",
                            fix=f"Use one of: {', '.join(known_names())}; or a memory size such as 24GB. "
                                "Examples: 4xRTX4090, 2x8xH100-80GB, 2x24GB.")
        model = found
        note = AMBIGUOUS.get(_normalize(model_name))
        if note:
            notes.append(note)
    gpus = [GPU(index=i, name=model.name, total_memory=model.memory_bytes, free_memory=model.memory_bytes,
                compute_capability=model.compute_capability, bf16_tflops=model.bf16_tflops,
                memory_bandwidth=model.bandwidth_gbs, catalog_name=model.key) for i in range(count)]
    ram_total = int((ram if ram is not None else model.host_ram_per_gpu_gib * count) * GiB)
    if ram is None:
        notes.append(f"Host RAM assumed {ram_total / GiB:.0f} GiB per node ({model.host_ram_per_gpu_gib} GiB per "
                     f"{model.key}); add ',ram=NGB' to the spec if yours differs.")
    links = {f"{a}-{b}": model.interconnect for a in range(count) for b in range(a + 1, count)}
    return HardwareProfile(source="spec", gpus=gpus, nodes=node_count, spec=spec,
                           interconnect=model.interconnect if count > 1 else "none", links=links,
                           host_ram_total=ram_total, host_ram_available=int(ram_total * HOST_RAM_USABLE),
                           cpu_cores=model.cores_per_gpu * count, notes=notes)


_FIX = "Write COUNTxMODEL (4xRTX4090, 8xH100-80GB, 2x24GB), NODESxCOUNTxMODEL (2x8xH100) or cpu."


def _split_ram(spec: str) -> tuple[str, float | None]:
    parts = [p.strip() for p in spec.split(",")]
    ram = None
    for extra in parts[1:]:
        match = _RAM.match(extra)
        if not match:
            raise UserError(f"Cannot read '{extra}' in '{spec}'.", title="Hardware",
                            fix="After the GPUs only the host RAM of one node may follow: 4xRTX4090,ram=256GB.")
        ram = _positive(float(match.group(1)), f"Host RAM '{extra}' in '{spec}'",
                        "Give the RAM of one node in GB, e.g. ram=256GB.")
    return parts[0], ram


def _positive(value: float, what: str, fix: str, smallest: float = 0.0) -> float:
    """`value` when it is a finite size above zero (and at least `smallest`: a GPU's memory is
    counted in MiB); else a UserError naming `what`, the value and the fix."""
    if not math.isfinite(value) or value <= 0 or value < smallest:
        rule = f"of at least {smallest * 1024:g} MiB" if smallest else "above 0"
        raise UserError(f"{what} is not a size: {value:g} (it must be a finite number {rule}).",
                        title="Hardware", fix=fix)
    return value


def _cpu_profile(spec: str, nodes: int, ram_gib: float | None) -> HardwareProfile:
    """Planning for the CPU uses this machine's host (RAM capped by its cgroup, affinity cores)."""
    host = read_host()
    profile = HardwareProfile(source="spec", gpus=[], nodes=nodes, spec=spec, host_ram_total=host.ram_total,
                              host_ram_available=host.ram_available, cpu_cores=host.cpu_cores,
                              cgroup_memory_limit=host.cgroup.memory_limit,
                              notes=["Planning for the CPU (--gpus cpu)."])
    if ram_gib is not None:
        profile.host_ram_total = int(ram_gib * GiB)
        profile.host_ram_available = int(profile.host_ram_total * HOST_RAM_USABLE)
    return profile
