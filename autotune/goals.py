"""What the user wants, from a preset and flags. `None` means "let the planner decide".

Goals is a pydantic dataclass typed with llmwizard.autotune.schema: constructing one (from a
preset, flags or the wizard's edits) refuses unknown keys, unknown choices and out-of-range
numbers, while `dataclasses.replace`, `asdict` and `fields` keep working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field, fields
from typing import Any

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.schema import (
    DatasetSize,
    Fraction,
    Launcher,
    LrScheduler,
    Method,
    NonNegativeFloat,
    Offload,
    Optimizer,
    PositiveFloat,
    PositiveInt,
    Precision,
    Seed,
    Tracker,
    Strategy,
    user_error,
)


@dataclass(config=ConfigDict(extra="forbid"))
class Goals:
    preset: str | None = None
    dataset_size: DatasetSize | None = None   # None: classify the data
    method: Method | None = None
    epochs: PositiveFloat | None = None
    max_steps: PositiveInt | None = None
    learning_rate: PositiveFloat | None = None
    lora_r: PositiveInt | None = None
    lora_alpha: PositiveInt | None = None
    lora_dropout: Fraction | None = None
    lora_targets: list[str] | None = None
    max_length: PositiveInt | None = None      # asked for explicitly (--max-length)
    max_length_cap: PositiveInt | None = None  # a preset's cap on what the data would choose
    allow_truncation: bool = False
    effective_batch: PositiveInt | None = None
    micro_batch: PositiveInt | None = None
    grad_accum: PositiveInt | None = None
    eval_fraction: Fraction | None = None
    evals_per_epoch: PositiveInt | None = None
    eval_steps: PositiveInt | None = None       # evaluate and checkpoint every N steps (beats evals_per_epoch)
    lr_scheduler: LrScheduler | None = None
    warmup_ratio: Fraction | None = None
    weight_decay: NonNegativeFloat | None = None
    strategy: Strategy | None = None
    offload: Offload | None = None
    checkpointing: bool | None = None
    precision: Precision | None = None
    optimizer: Optimizer | None = None
    launcher: Launcher | None = None
    processes: PositiveInt | None = None       # processes per node; on the CPU, how many ranks
    report_to: list[Tracker] | None = None     # experiment trackers; None: none (the plan may suggest one)
    probe: bool | None = None                  # a few measured steps before the run; None: on GPUs only
    # Long-context and activation savers (llmwizard.autotune.long_context); None: the planner decides.
    context_parallel: PositiveInt | None = None    # GPUs one sequence is split over (FSDP2 cp_size)
    activation_offloading: bool | None = None      # TRL's activation offloading to host RAM
    packing: bool | None = None                    # padding-free packing (TRL packing, bfd strategy)
    liger_kernel: bool | None = None               # Liger's fused Triton kernels (GPU only)
    train_vision_tower: bool = False           # LoRA: adapt the vision tower too (frozen by default)
    seed: Seed = 42
    extra: dict[str, Any] = field(default_factory=dict)
    # The fields the user set (flags, wizard edits), as opposed to a preset's values: the plan's
    # reasons say "asked for" for these, and the planner never adjusts them.
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
        """Where a set value came from, for a reason: asked for, the preset, else `default`."""
        if key in self.explicit:
            return "asked for"
        if getattr(self, key) is not None and self.preset:
            return f"preset {self.preset}"
        return default


GOAL_FIELDS = {f.name for f in fields(Goals)} - {"extra", "explicit", "preset"}


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
