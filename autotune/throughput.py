"""The cost model that ranks candidate setups by estimated step time. One place, documented.

step time = compute + exposed communication + offload traffic, per optimizer step:
- compute: 6 * params * tokens FLOPs for full fine-tuning (forward 2, backward 4; Kaplan et al.),
  4 * params * tokens for LoRA (no weight gradients for the frozen base), plus 2 * params *
  tokens when activations are recomputed; divided by peak bf16 FLOP/s times a utilisation (MFU).
- communication per step, ring collectives moving 2(N-1)/N of the buffer: DDP all-reduces
  gradients; ZeRO-2 reduce-scatters gradients and all-gathers updated weights; FSDP / ZeRO-3
  all-gather weights in forward and backward and reduce-scatter gradients. Half of it is taken
  as hidden behind compute (bucketing and prefetch overlap).
- offload: optimizer states cross PCIe twice per step, and the CPU runs the optimizer.
Only the ranking matters; figures are shown as estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9

# Sustained fraction of peak FLOP/s for transformer training with HF + SDPA.
MFU = 0.40
# Achieved collective bandwidth, GB/s per GPU.
BANDWIDTH = {"nvlink": 150.0, "pcie": 12.0, "none": 12.0, "infiniband": 20.0, "ethernet": 2.5}
PCIE_OFFLOAD = 12.0       # GB/s host <-> device
CPU_ADAM = 1.0e9          # parameters per second a CPU Adam step updates (DeepSpeed CPUAdam, order)
OVERLAP = 0.5             # share of communication hidden behind compute


@dataclass
class StepCost:
    compute_s: float
    comm_s: float
    offload_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s + self.offload_s


def step_cost(*, total_params: int, trainable_params: int, tokens_per_step: int, method: str,
              strategy: str, offload: str, checkpointing: bool, world: int, nodes: int,
              tflops: float, interconnect: str) -> StepCost:
    """Estimated seconds per optimizer step for the whole world (tokens_per_step is global)."""
    flops_per_token = (6 if method == "full" else 4) * total_params
    if checkpointing:
        flops_per_token += 2 * total_params
    compute = flops_per_token * tokens_per_step / (world * tflops * 1e12 * MFU)

    link = BANDWIDTH["ethernet" if nodes > 1 else interconnect]
    ring = 2 * (world - 1) / world if world > 1 else 0.0
    grad_bytes = trainable_params * (4 if method != "full" else 2)
    weight_bytes = total_params * (0.5 if method == "qlora" else 2)
    if strategy in ("single",) or world == 1:
        volume = 0.0
    elif strategy == "ddp":
        volume = grad_bytes * ring
    elif strategy == "zero2":
        volume = grad_bytes * ring / 2 + (trainable_params * 2) * ring / 2
    else:  # fsdp, zero3: gather weights twice (forward, backward) + reduce-scatter grads
        volume = weight_bytes * ring + grad_bytes * ring / 2
    comm = (1 - OVERLAP) * volume / (link * GB)

    off = 0.0
    if offload != "none":
        shard = trainable_params / world
        off = (shard * 4 * 2) / (PCIE_OFFLOAD * GB) + shard / CPU_ADAM
        if offload == "params":
            off += 2 * weight_bytes / world / (PCIE_OFFLOAD * GB)
    return StepCost(compute_s=compute, comm_s=comm, offload_s=off)
