"""The cost model that ranks candidate setups by estimated step time. One place, documented.

Step time (one optimizer step, the whole world) = compute x engine factor + exposed communication
+ collective latency + offload traffic.

- compute: 6 * params * tokens FLOPs for full fine-tuning (forward 2, backward 4; Kaplan et al.
  2020), 4 * params * tokens for LoRA / QLoRA (no weight gradients for the frozen base), plus
  2 * params * tokens when activations are recomputed; divided by peak bf16 FLOP/s x MFU and by
  the number of processes. Small micro-batches run kernels below their best: utilisation scales
  with tokens per micro-step up to SATURATION_TOKENS.
- communication volume per optimizer step, per GPU, ring algorithms (NCCL): all-reduce moves
  2(N-1)/N of the buffer, all-gather and reduce-scatter (N-1)/N.
  DDP: all-reduce the trainable gradients.
  ZeRO-2: reduce-scatter gradients + all-gather the updated trainable weights.
  FSDP / ZeRO-3: all-gather every weight in forward and again in backward (per micro-step:
  the gathered shards are freed between passes) + reduce-scatter gradients.
  Hybrid FSDP (HSDP) across machines gathers weights inside each machine only, and all-reduces
  the sharded gradients across machines.
  Gradient collectives overlap with backward (bucketing, prefetch): OVERLAP of them is hidden.
- latency: each collective costs ALPHA seconds; FSDP / ZeRO-3 issue per-layer collectives on
  every micro-step, DDP and ZeRO-2 a few buckets per step.
- engine factor: measured-order overheads of the wrappers beyond their collectives (hooks,
  flattening, Python bookkeeping): DeepSpeed ZeRO-3 is the slowest, plain DDP the leanest.
- offload: the optimizer's shard crosses PCIe twice per step and the CPU runs its update.
- attention: 4 * seq * (heads x head_dim) FLOPs per token per layer forward (QK^T and PV, causal
  halves it; x3 with backward), which long sequences make dominant. Context parallelism splits
  it evenly over the cp ranks (ring attention with load-balanced causal sharding).
- context parallelism: ring attention passes each rank's K and V around the ring, cp-1 hops per
  layer in forward and twice that in backward (K, V and their gradients), hidden behind the
  attention compute where it can be (OVERLAP).
- Ulysses (DeepSpeed): four all-to-alls per layer (q, k, v, output), (cp-1)/cp of each rank's
  share crossing, twice more in backward.
- activation offloading (TRL): the offloaded activations cross PCIe twice per micro-step, on a
  side stream that overlaps compute (OVERLAP).
- not timed: the optimizer step on the GPU (AdamW reads and writes some 16-32 bytes per trainable
  parameter once per step: about 0.1 s for 8B parameters at 3 TB/s, against seconds of forward
  and backward), so pure bf16, the low-bit AdamWs, Adafactor and AdaLomo change the ranking only
  through the micro-batch and checkpointing they allow; and Liger's layer kernels, which replace
  memory-bound element-wise work (norms, the gated activation, RoPE) that the compute term does
  not time apart from the matmuls. Liger's published end-to-end speed-ups include its fused
  cross-entropy, which TRL leaves off, so none is assumed; what its kernels buy here is memory.
Only the ranking is relied on; figures are shown as estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9

MFU = 0.40                 # sustained share of peak FLOP/s for HF + SDPA training
SATURATION_TOKENS = 4096   # tokens per micro-step at which GPU kernels reach full utilisation
# Achieved bus bandwidth, GB/s per GPU, for large collectives.
BANDWIDTH = {"nvlink": 150.0, "pcie": 12.0, "none": 12.0, "infiniband": 20.0, "ethernet": 2.5}
ALPHA = {"nvlink": 20e-6, "pcie": 50e-6, "none": 50e-6, "infiniband": 30e-6, "ethernet": 150e-6}
OVERLAP = 0.5              # share of communication hidden behind compute
ENGINE = {"single": 1.0, "ddp": 1.0, "zero2": 1.03, "fsdp": 1.05, "zero3": 1.12}
PCIE_OFFLOAD = 12.0        # GB/s host <-> device
CPU_ADAM = 1.0e9           # parameters per second a CPU Adam step updates (DeepSpeed CPUAdam, order)


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
              tflops: float, interconnect: str, micro_tokens: int, num_layers: int,
              grad_accum: int, hybrid: bool = False, gpus_per_node: int = 1, seq_len: int = 0,
              attention_width: int = 0, kv_width: int = 0, cp: int = 1,
              offloaded_activation_bytes: float = 0.0, cp_kind: str = "ring") -> StepCost:
    """Estimated seconds per optimizer step (tokens_per_step is global, micro_tokens per process).
    `attention_width` is layers x heads x head_dim, `kv_width` layers x kv heads x head_dim."""
    flops_per_token = (6 if method == "full" else 4) * total_params
    if checkpointing:
        flops_per_token += 2 * total_params
    # causal attention: half of 4 * seq * width per token forward; backward twice that (+1x recompute)
    flops_per_token += 2 * seq_len * attention_width * (3 + (1 if checkpointing else 0))
    utilisation = min(1.0, (micro_tokens / SATURATION_TOKENS) ** 0.3)
    compute = flops_per_token * tokens_per_step / (world * tflops * 1e12 * MFU * utilisation)
    compute *= ENGINE.get(strategy, 1.0)

    # Between machines: datacenter nodes (NVLink inside) come with InfiniBand/RoCE, PCIe boxes
    # usually with plain Ethernet.
    link = ("infiniband" if interconnect == "nvlink" else "ethernet") if nodes > 1 else interconnect
    bandwidth, alpha = BANDWIDTH[link] * GB, ALPHA[link]
    comm = 0.0
    if world > 1 and strategy != "single":
        share = (world - 1) / world
        grads = trainable_params * (2 if method == "full" else 4)   # bf16 grads / fp32 adapters
        weights = total_params * (0.5 if method == "qlora" else 2)
        if strategy == "ddp":
            volume, latency = 2 * share * grads * (1 - OVERLAP), 4 * alpha
        elif strategy == "zero2":
            volume = share * grads * (1 - OVERLAP) + share * trainable_params * 2
            latency = 8 * alpha
        elif hybrid:  # gathers inside the node; sharded grads all-reduced across nodes
            intra = "nvlink" if interconnect == "nvlink" else "pcie"
            local = (gpus_per_node - 1) / gpus_per_node
            inside = grad_accum * 2 * local * weights * (1 - OVERLAP) + local * grads * (1 - OVERLAP)
            across = 2 * (nodes - 1) / nodes * grads / gpus_per_node * (1 - OVERLAP)
            volume = 0.0
            latency = (inside / (BANDWIDTH[intra] * GB) + grad_accum * 3 * num_layers * ALPHA[intra]
                       + across / bandwidth + 4 * alpha)
        else:  # fsdp, zero3: weights gathered twice per micro-step, grads reduce-scattered
            volume = grad_accum * (2 * share * weights * (1 - OVERLAP)) + share * grads * (1 - OVERLAP)
            latency = grad_accum * 3 * num_layers * alpha
        comm = volume / bandwidth + latency

    if cp > 1:  # ring attention: K and V (bf16) around the ring, forward and backward (with gradients)
        # ring: this rank's K and V for every layer (micro_tokens: its shard) travel cp-1 hops
        volume = (cp - 1) * micro_tokens * 2 * kv_width * 2
        if cp_kind == "ulysses":  # all-to-all of q, k, v and the output: (cp-1)/cp of them leaves the rank
            volume = (cp - 1) / cp * micro_tokens * (2 * attention_width + 2 * kv_width) * 2
        link = "nvlink" if interconnect == "nvlink" else "pcie"
        comm += grad_accum * 3 * volume * (1 - OVERLAP) / (BANDWIDTH[link] * GB)
        comm += grad_accum * 3 * (cp - 1) * num_layers * ALPHA[link]  # one exchange per ring step and layer
    off = grad_accum * 2 * offloaded_activation_bytes * (1 - OVERLAP) / (PCIE_OFFLOAD * GB)
    if offload != "none":
        shard = trainable_params / world
        off = shard * 4 * 2 / (PCIE_OFFLOAD * GB) + shard / CPU_ADAM
        if offload == "params":
            off += grad_accum * 2 * total_params * 2 / world / (PCIE_OFFLOAD * GB)
    return StepCost(compute_s=compute, comm_s=comm, offload_s=off)
