"""What the user wants, from a preset and flags. `None` means "let the planner decide"."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from llmwizard.autotune.errors import UserError


@dataclass
class Goals:
    preset: str | None = None
    dataset_size: str | None = None        # "small", "large", or None to classify the data
    method: str | None = None              # "full", "lora", "qlora"
    epochs: float | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_targets: list[str] | None = None
    max_length: int | None = None          # asked for explicitly (--max-length)
    max_length_cap: int | None = None      # a preset's cap on what the data would choose
    allow_truncation: bool = False
    effective_batch: int | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None
    eval_fraction: float | None = None
    evals_per_epoch: int | None = None
    lr_scheduler: str | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None
    strategy: str | None = None
    offload: str | None = None
    checkpointing: bool | None = None
    precision: str | None = None
    optimizer: str | None = None
    launcher: str | None = None
    processes: int | None = None           # processes per node; on the CPU, how many ranks
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict)
    # The fields the user set (flags, wizard edits), as opposed to a preset's values: the plan's
    # reasons say "asked for" for these, and the planner never adjusts them.
    explicit: frozenset[str] = frozenset()

    def merged(self, **overrides: Any) -> Goals:
        """A copy with every override that is not None applied, each marked explicit."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, explicit=self.explicit | set(given), **given)

    def source(self, key: str, default: str) -> str:
        """Where a set value came from, for a reason: asked for, the preset, else `default`."""
        if key in self.explicit:
            return "asked for"
        if getattr(self, key) is not None and self.preset:
            return f"preset {self.preset}"
        return default


GOAL_FIELDS = {f.name for f in fields(Goals)} - {"extra", "explicit", "preset"}


def goals_from_preset(name: str, values: dict[str, Any]) -> Goals:
    """Build Goals from a preset's mapping, refusing keys that no field takes."""
    values = {k: v for k, v in values.items() if k != "description"}
    unknown = sorted(set(values) - GOAL_FIELDS)
    if unknown:
        raise UserError(
            f"Preset '{name}' has unknown keys: {', '.join(unknown)}.",
            title="Preset",
            fix=f"Use only these keys: {', '.join(sorted(GOAL_FIELDS))}.",
        )
    return Goals(preset=name, **values)
