"""What the user wants, from a preset and flags. `None` means "let the planner decide".

Goals is a pydantic dataclass typed with llmwizard.autotune.schema: constructing one (from a
preset, flags or the wizard's edits) refuses unknown keys, unknown choices and out-of-range
numbers, while `dataclasses.replace`, `asdict` and `fields` keep working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.schema import (
    BatchSize,
    Beta,
    DatasetSize,
    Epochs,
    EvalFraction,
    Fraction,
    Generations,
    Launcher,
    LearningRate,
    LoraAlpha,
    LoraRank,
    LoraTargets,
    LrScheduler,
    Method,
    Offload,
    Optimizer,
    Precision,
    ProcessCount,
    Reference,
    RewardNames,
    Seed,
    StepCount,
    Strategy,
    Task,
    Temperature,
    TokenLength,
    Tracker,
    WeightDecay,
    user_error,
)
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass


@dataclass(config=ConfigDict(extra="forbid"))
class Goals:
    preset: str | None = None
    # What the run optimises (docs/tasks.md); None: supervised fine-tuning.
    task: Task | None = None
    dataset_size: DatasetSize | None = None   # None: classify the data
    method: Method | None = None
    epochs: Epochs | None = None
    max_steps: StepCount | None = None
    learning_rate: LearningRate | None = None
    lora_r: LoraRank | None = None
    lora_alpha: LoraAlpha | None = None
    lora_dropout: Fraction | None = None
    lora_targets: LoraTargets | None = None
    max_length: TokenLength | None = None      # asked for explicitly (--max-length)
    max_length_cap: TokenLength | None = None  # a preset's cap on what the data would choose
    allow_truncation: bool = False
    effective_batch: BatchSize | None = None
    micro_batch: BatchSize | None = None
    # Fixes the accumulation: the effective batch follows (micro-batch x processes x grad_accum).
    grad_accum: BatchSize | None = None
    eval_fraction: EvalFraction | None = None
    evals_per_epoch: StepCount | None = None
    eval_steps: StepCount | None = None         # evaluate and checkpoint every N steps (beats evals_per_epoch)
    lr_scheduler: LrScheduler | None = None
    warmup_ratio: Fraction | None = None
    weight_decay: WeightDecay | None = None
    strategy: Strategy | None = None
    offload: Offload | None = None
    checkpointing: bool | None = None
    precision: Precision | None = None
    optimizer: Optimizer | None = None
    launcher: Launcher | None = None
    processes: ProcessCount | None = None       # processes per node; on the CPU, how many ranks
    report_to: list[Tracker] | None = None     # experiment trackers; None: none (the plan may suggest one)
    probe: bool | None = None                  # a few measured steps before the run; None: on GPUs only
    # Long-context and activation savers (llmwizard.autotune.memory.long_context); None: the planner decides.
    context_parallel: ProcessCount | None = None    # GPUs one sequence is split over (FSDP2 cp_size)
    activation_offloading: bool | None = None      # TRL's activation offloading to host RAM
    packing: bool | None = None                    # padding-free packing (TRL packing, bfd strategy)
    liger_kernel: bool | None = None               # Liger's fused Triton kernels (GPU only)
    # Preference and reward tasks (docs/tasks.md); None: the planner decides from the task and the data.
    beta: Beta | None = None                        # DPO/KTO implicit-reward scale, ORPO's lambda, GRPO's KL weight
    reference: Reference | None = None              # where the reference log-probs come from
    num_generations: Generations | None = None      # GRPO: completions sampled per prompt
    max_completion_length: TokenLength | None = None  # GRPO: tokens generated per completion; ORPO: its cap
    temperature: Temperature | None = None          # GRPO: sampling temperature
    rewards: RewardNames | None = None              # GRPO: reward functions, `module.function`
    train_vision_tower: bool = False           # LoRA: adapt the vision tower too (frozen by default)
    # Consent to run the model's own code (config.json's auto_map, an unknown model_type): to count it
    # on the meta device and to load it for training. Without it such a model is refused, never guessed.
    trust_remote_code: bool = False
    seed: Seed = 42
    # The fields the user set (flags, wizard edits), as opposed to a preset's values: the plan's
    # reasons say "asked for" for these and "from preset NAME" for the preset's.
    explicit: frozenset[str] = frozenset()

    def merged(self, **overrides: Any) -> Goals:
        """A copy with every override that is not None applied, each marked explicit."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return dataclasses.replace(self, explicit=self.explicit | set(given), **given)
        except ValidationError as exc:
            raise user_error(exc, cls=Goals, source="settings", title="Settings",
                             fix="Change the values named above.") from None

    def source(self, key: str, default: str) -> str:
        """Where a value came from, for a reason: "asked for", "from preset NAME", or `default`
        when the goal leaves it to the planner."""
        if key in self.explicit:
            return "asked for"
        if getattr(self, key) is not None and self.preset:
            return f"from preset {self.preset}"
        return default

    def origin(self, key: str) -> str:
        """Where a value that is set came from: the preset's file, else the user (a flag, a wizard
        edit, or Goals built by hand)."""
        if key not in self.explicit and self.preset:
            return f"from preset {self.preset}"
        return "asked for"

    def data_parallel(self, world: int) -> int:
        """Processes holding different examples: all `world` of them, or world / context_parallel
        when one sequence is split over several. A fixed accumulation (grad_accum) is planned for
        the split asked for, or none."""
        return max(1, world // (self.context_parallel or 1))

    @property
    def task_name(self) -> Task:
        return self.task or "sft"


GOAL_FIELDS = {f.name for f in fields(Goals)} - {"explicit", "preset"}


def goals_from_preset(name: str, values: dict[str, Any], where: str | None = None) -> Goals:
    """Build Goals from a preset's mapping: an unknown key or a bad value names the preset (file)
    and the key, the value and what is allowed."""
    values = {k: v for k, v in values.items() if k != "description"}
    source = f"preset {where or name}"
    unknown = sorted(str(k) for k in set(values) - GOAL_FIELDS)
    if unknown:
        raise UserError(
            f"{source} has unknown keys: {', '.join(unknown)}.",
            title="Preset",
            fix=f"Use only these keys: {', '.join(sorted(GOAL_FIELDS))} (see docs/schema.md).",
        )
    try:
        return Goals(preset=name, **values)
    except ValidationError as exc:
        raise user_error(exc, cls=Goals, source=source, title="Preset",
                         fix="Change the value in the preset file (see docs/schema.md).") from None
