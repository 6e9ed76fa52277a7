"""When the planner refuses the settings a user pinned: which of them the refusal comes from, and
the smallest change that makes a plan. Data only; each face words it (flags in the CLI, fields
and steps in the wizard).

Each pinned setting is tried without the others' help: cleared alone (the planner decides it), and
for the strategy and the micro-batch, other values. A setting whose clearing alone makes a plan is
one the refusal comes from; when none alone helps but clearing them all does, they fail together.
The memory the refused setup needs is priced as the planner prices a refused pin (no offload,
micro-batch 1 unless pinned), so a face's bar and its verdict give the same figure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.memory import MemoryEstimate, estimate
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.plan import Plan
from llmwizard.autotune.plan.replan import setup_of
from llmwizard.autotune.schema import Strategy, choices

# The settings tried, in the order a face lists the fixes: the structural choices first.
PIN_ORDER = ("strategy", "checkpointing", "precision", "optimizer", "packing", "context_parallel",
             "activation_offloading", "liger_kernel", "micro_batch", "lora_r", "max_steps", "epochs", "learning_rate")

PlanWith = Callable[[dict[str, Any]], Plan]   # the plan for a set of pinned settings; raises UserError


@dataclass(frozen=True)
class PinFix:
    """Clearing `key` (set to `value`) alone makes `cleared`; `others` are other values of it that
    work too (strategy); `largest` is the largest micro-batch up to half the asked one that works."""

    key: str
    value: Any
    cleared: Plan
    others: list[Any] = field(default_factory=list)
    largest: int | None = None


@dataclass(frozen=True)
class Refusal:
    """Why the pinned settings make no plan, as data.

    `fixes`: settings each of which alone blocks the plan, with what clearing it gives. `together`:
    no one of `pinned` alone helps, but clearing them all makes a plan. Neither: the hardware, the
    model or the data is the cause (`error` says which). `requested`: the memory the refused setup
    needs, when it does not fit."""

    error: UserError
    pinned: list[str]
    fixes: list[PinFix]
    together: bool
    requested: MemoryEstimate | None = None

    @property
    def refused(self) -> list[str]:
        """The pinned settings not applied."""
        if self.fixes:
            return [fix.key for fix in self.fixes]
        return list(self.pinned) if self.together else []


def smallest_change(plan_with: PlanWith, pinned: Mapping[str, Any], error: UserError,
                    model: ModelSpec | None = None, last: Plan | None = None) -> Refusal:
    """The refusal `error` of the settings `pinned` (key -> value), explained by trying each alone.

    `plan_with(settings)` plans with those settings pinned; `last` (the last plan that stood) and
    `model` let a does-not-fit refusal carry the memory of the setup asked for."""

    def works(settings: dict[str, Any]) -> Plan | None:
        try:
            return plan_with(settings)
        except UserError:
            return None

    keys = [key for key in PIN_ORDER if pinned.get(key) is not None]
    fixes: list[PinFix] = []
    for key in keys:
        rest = {k: v for k, v in pinned.items() if k != key}
        cleared = works(rest)
        if cleared is None:
            continue
        others: list[Any] = []
        largest: int | None = None
        if key == "strategy":
            others = [s for s in choices(Strategy) if s not in (pinned[key], cleared.strategy)
                      and works({**rest, key: s}) is not None]
        elif key == "micro_batch":
            value = int(pinned[key]) // 2
            while value >= 1 and works({**rest, key: value}) is None:
                value //= 2
            largest = value if value > cleared.micro_batch else None
        fixes.append(PinFix(key, pinned[key], cleared, others, largest))
    together = not fixes and bool(keys) and works({}) is not None
    requested = None
    if error.title == "Does not fit" and last is not None and model is not None and keys:
        try:
            requested = requested_memory(last, model, pinned)
        except UserError:
            requested = None
    return Refusal(error, keys, fixes, together, requested)


def requested_memory(last: Plan, model: ModelSpec, pinned: Mapping[str, Any]) -> MemoryEstimate:
    """Memory of the setup the user asked for, when the planner refused it: the last plan's setup
    with the pinned knobs applied, priced as the planner prices a refused pin (no offload,
    micro-batch 1 unless pinned)."""
    world = last.num_processes
    changes: dict[str, Any] = {"strategy": pinned.get("strategy") or ("single" if world == 1 else "ddp"),
                               "micro_batch": pinned.get("micro_batch") or 1, "offload": "none",
                               "checkpointing": bool(pinned.get("checkpointing") or False)}
    for name in ("precision", "optimizer"):
        if pinned.get(name):
            changes[name] = pinned[name]
    if pinned.get("lora_r") and last.lora:
        changes["lora_r"] = pinned["lora_r"]
    return estimate(model, setup_of(last, **changes), last.estimate.budget)
