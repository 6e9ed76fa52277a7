"""Per-device memory model for one training step, by component.

Every figure is bytes on ONE device (a GPU, or one process's share of host RAM on the CPU).
Sources: model states from the ZeRO paper (Rajbhandari et al. 2020); activations from
Korthikanti et al. 2022, adapted to the Llama block (RMSNorm, GQA, SwiGLU); logits from how HF's
causal-LM loss upcasts to fp32. The constants in OVERHEAD name where they come from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from autotune.model_spec import ModelSpec

GiB = 1024**3

STRATEGIES = ("single", "ddp", "fsdp", "zero2", "zero3")
METHODS = ("full", "lora", "qlora")
OFFLOADS = ("none", "optimizer", "params")
OPTIMIZERS = ("adamw", "adamw_8bit", "adafactor", "sgd")
PRECISIONS = ("bf16", "fp16", "fp32")

# Framework costs outside the tensors the model owns.
OVERHEAD = {
    # CUDA context and kernels loaded by torch: 0.3-0.6 GB, not seen by torch.cuda.max_memory_*.
    "cuda_context": int(0.5 * GiB),
    # One NCCL communicator's buffers: 0.5-1.6 GB per communicator (NCCL docs, measured).
    "nccl": int(0.6 * GiB),
    # The caching allocator reserves 1.1-1.25x what tensors hold (fragmentation).
    "fragmentation": 0.10,
    # Resident size of a CPU process with torch, transformers and the trainer loaded.
    "cpu_process": int(0.6 * GiB),
}

# Bytes of optimizer state per trainable parameter, fp32 states.
_OPTIMIZER_BYTES = {"adamw": 8, "adamw_8bit": 2, "adafactor": 4, "sgd": 0}
# NF4 weights with double quantization (bitsandbytes): 0.5 B/param + quantization constants.
_NF4_BYTES = 0.516


@dataclass
class TrainSetup:
    """The knobs the memory model depends on."""

    method: str = "lora"
    strategy: str = "single"
    offload: str = "none"
    num_gpus: int = 1                 # data-parallel world size: what sharding divides by
    micro_batch: int = 1
    seq_len: int = 1024
    checkpointing: bool = False
    precision: str = "bf16"
    optimizer: str = "adamw"
    attention: str = "sdpa"           # "sdpa" (flash / memory-efficient) or "eager"
    lora_r: int = 8
    lora_targets: list[str] | None = None
    lora_dropout: float = 0.05
    device: str = "cuda"


@dataclass
class MemoryEstimate:
    params: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    total: int
    host_ram: int
    budget: int
    fits: bool
    trainable_params: int
    total_params: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_gpu"] = {key: data.pop(key) for key in
                           ("params", "grads", "optimizer", "activations", "logits", "overhead", "total")}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryEstimate:
        flat = dict(data)
        flat.update(flat.pop("per_gpu", {}))
        return cls(**flat)


def trainable_params(model: ModelSpec, setup: TrainSetup) -> int:
    if setup.method == "full":
        return model.total_params
    return model.lora_params(setup.lora_r, setup.lora_targets)


def estimate(model: ModelSpec, setup: TrainSetup, budget: int) -> MemoryEstimate:
    """Peak bytes on one device for a training step, and whether that fits `budget`."""
    psi = model.total_params
    trainable = trainable_params(model, setup)
    shards = setup.num_gpus if setup.strategy in ("fsdp", "zero2", "zero3") else 1
    weight_bytes = 4 if setup.precision == "fp32" else 2
    notes: list[str] = []

    # Weights held on the device.
    if setup.method == "qlora":
        linear = model.num_layers * sum(lin.d_in * lin.d_out for lin in model.linears)
        base = linear * _NF4_BYTES + (psi - linear) * 2
    elif setup.method == "lora":
        base = psi * weight_bytes
    else:
        # Full fine-tuning keeps fp32 master weights (mixed precision: fp32 storage, bf16 compute).
        base = psi * 4
    full_shard = setup.strategy in ("fsdp", "zero3")
    if full_shard:
        gathered = model.largest_unit_params * (2 if setup.precision != "fp32" else 4)
        base = base / shards + 2 * gathered  # the unit being computed plus the one prefetched
    if setup.offload == "params":
        base = 2 * model.largest_unit_params * weight_bytes
    adapter = trainable * 4 if setup.method != "full" else 0  # PEFT keeps adapters in fp32
    params = base + (adapter / shards if full_shard else adapter)

    # Gradients: fp32 for fp32 masters and fp32 adapters.
    grad_shards = shards if setup.strategy in ("fsdp", "zero2", "zero3") else 1
    grads = trainable * 4 / grad_shards

    # Optimizer states (+ fp32 master copy under DeepSpeed bf16, which keeps weights in bf16).
    opt = trainable * _OPTIMIZER_BYTES[setup.optimizer]
    optimizer = opt / grad_shards
    host_optimizer = 0.0
    if setup.offload in ("optimizer", "params"):
        host_optimizer = optimizer * setup.num_gpus + grads * setup.num_gpus
        optimizer = 0.0
        notes.append("optimizer states live in host RAM")

    activations = activation_bytes(model, setup)
    logits = logits_bytes(model, setup)

    tensors = params + grads + optimizer + activations + logits
    if setup.device == "cuda":
        overhead = OVERHEAD["cuda_context"] + tensors * OVERHEAD["fragmentation"]
        if setup.num_gpus > 1:
            overhead += OVERHEAD["nccl"]
    else:
        overhead = OVERHEAD["cpu_process"] + tensors * OVERHEAD["fragmentation"]
    total = tensors + overhead

    host_ram = host_optimizer + psi * weight_bytes  # loading the checkpoint passes through RAM
    return MemoryEstimate(
        params=int(params), grads=int(grads), optimizer=int(optimizer),
        activations=int(activations), logits=int(logits), overhead=int(overhead),
        total=int(total), host_ram=int(host_ram), budget=int(budget), fits=total <= budget,
        trainable_params=int(trainable), total_params=int(psi), notes=notes,
    )


def activation_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Saved activations at the end of the forward pass, one micro-batch."""
    tokens = setup.micro_batch * setup.seq_len
    h, inter, layers = model.hidden_size, model.intermediate_size, model.num_layers
    h_kv = model.num_kv_heads * model.head_dim
    scale = 2 if setup.precision == "fp32" else 1  # the per-token figures below are bf16 bytes
    # Llama block, bf16, unfused HF RMSNorm (nu = 6): 2*nu*h + 8h + 4h_kv + 8I per token.
    per_token_layer = (12 * h + 8 * h + 4 * h_kv + 8 * inter) * scale
    if setup.method != "full" and setup.lora_dropout > 0:
        # lora_dropout keeps a dropped-out copy of every adapted linear's input.
        per_token_layer += sum(lin.d_in for lin in model.linears
                               if setup.lora_targets is None or lin.name in setup.lora_targets) * 2 * scale
    eager = 0.0
    if setup.attention == "eager":
        # softmax in fp32 (saved for backward) plus its bf16 cast for the value matmul.
        eager = 6 * model.num_heads * setup.seq_len**2 * setup.micro_batch
    if setup.checkpointing:
        # Each layer keeps only its input; one layer is recomputed whole during backward.
        return layers * tokens * 2 * h * scale + tokens * per_token_layer + eager
    return layers * (tokens * per_token_layer + eager)


def logits_bytes(model: ModelSpec, setup: TrainSetup) -> float:
    """Logits and the loss's fp32 buffers: often the peak for large vocabularies."""
    tokens = setup.micro_batch * setup.seq_len
    per_token = 12 if setup.precision == "fp32" else 14  # logits + fp32 copy + log-softmax + grad
    return tokens * model.vocab_size * per_token
