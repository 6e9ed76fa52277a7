"""A candidate training setup, as data: the knobs the memory model and the search turn.

The bottom of the decision modules: llmwizard.autotune.memory.activations and .memory size a
`TrainSetup`, llmwizard.autotune.plan.search generates and ranks them, the planner turns the winner into
a Plan. Imports nothing from llmwizard but the schema's types.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmwizard.autotune.schema import (Attention, Device, Method, Offload, Optimizer, Precision, Reference, Strategy,
                                       Task, choices)

# The values each knob may take: the schema's.
STRATEGIES = tuple(choices(Strategy))
METHODS = tuple(choices(Method))
OFFLOADS = tuple(choices(Offload))
OPTIMIZERS = tuple(choices(Optimizer))
PRECISIONS = tuple(choices(Precision))
ATTENTIONS = tuple(choices(Attention))


@dataclass(frozen=True)
class Calibrated:
    """What earlier probes on this machine measured for one strategy: the mean of measured /
    estimated peaks (llmwizard.autotune.machine.calibration keeps them)."""

    factor: float
    probes: int

    @property
    def label(self) -> str:
        return f"calibrated from {self.probes} probe{'s' if self.probes != 1 else ''} on this machine: x{self.factor:.2f}"


@dataclass
class TrainSetup:
    """The knobs the memory model depends on."""

    method: Method = "lora"
    strategy: Strategy = "single"
    offload: Offload = "none"
    num_gpus: int = 1                 # data-parallel world size: what sharding divides by
    micro_batch: int = 1
    seq_len: int = 1024
    checkpointing: bool = False
    precision: Precision = "bf16"
    optimizer: Optimizer = "adamw"
    attention: Attention = "sdpa"           # "sdpa" (flash / memory-efficient), "flash" (flash_attention_2) or "eager"
    lora_r: int = 8
    lora_targets: list[str] | None = None
    lora_dropout: float = 0.05
    device: Device = "cuda"
    gpus_per_node: int = 0            # processes sharing one host's RAM; 0: all of num_gpus
    cp: int = 1                       # context parallelism: ranks one sequence is split over
    offload_activations: bool = False  # TRL's activation offloading: saved tensors to host RAM
    liger: bool = False               # Liger's RMSNorm and gated-MLP kernels (llmwizard.autotune.memory.activations)
    # Measured/estimated peak ratios of earlier probes on this machine, by strategy (for this GPU
    # model, model family and method); the estimate is scaled by the one for its strategy.
    calibration: dict[str, Calibrated] | None = None
    # Vision-language models (llmwizard.autotune.memory.vision): patches the vision tower encodes per
    # sequence (0: no images), and whether LoRA adapts the tower too.
    image_patches: int = 0
    train_vision_tower: bool = False
    # Preference and reward tasks (llmwizard.autotune.memory.tasks, docs/tasks.md). For DPO and ORPO
    # micro_batch counts pairs (each a chosen and a rejected sequence of seq_len), for KTO rows (and
    # as many mismatched rows for its KL term), for GRPO completions (num_generations per prompt:
    # prompt_len tokens, then up to completion_len generated).
    task: Task = "sft"
    reference: Reference = "none"
    num_generations: int = 0
    prompt_len: int = 0
    completion_len: int = 0

    @property
    def data_parallel(self) -> int:
        """Processes the model states are spread over: the whole world, except for `single`."""
        return self.num_gpus if self.strategy != "single" else 1

    @property
    def grad_shards(self) -> int:
        """What gradients and optimizer states are divided by: the world under ZeRO and FSDP, else 1."""
        return self.data_parallel if self.strategy in ("fsdp", "zero2", "zero3") else 1
