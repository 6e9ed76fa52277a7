"""The probe's verdict: what a few measured steps of the plan say about it, and the plan to try next.

llmwizard.runner.session.probe runs PROBE_STEPS optimizer steps of the planned configuration on the
longest rows at the full micro-batch (every row padded to max_length: the worst case), on every
rank, and measures each rank. `correct` turns those measurements into a verdict:

- a rank ran out of memory, or the worst rank's peak comes closer to the budget than the
  planner's HEADROOM allows: halve the micro-batch (accumulation doubled, the effective batch
  kept); at micro-batch 1 turn activation checkpointing on; with it on, go to the planner's next
  tier (optimizer states, then weights, offloaded to host RAM); nothing left: give up;
- the peak leaves room for twice the micro-batch (the model's growth, scaled by what was measured
  against what was expected, still within the headroom): double it, keeping the effective batch,
  unless an earlier round had to shrink;
- otherwise keep the plan.

Ranks that disagree are judged by the worst one. Pure: no I/O, no clocks, no processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from llmwizard.autotune.machine.hardware_types import GiB
from llmwizard.autotune.memory import estimate
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.plan import Plan
from llmwizard.autotune.memory.savers import fused_in_backward, with_adamw_implementation
from llmwizard.autotune.plan.replan import pinned_change, setup_of, shrink_micro_batch
from llmwizard.autotune.schema import Offload, Strategy
from llmwizard.autotune.plan.search import HEADROOM

PROBE_STEPS = 3        # the first step warms up (kernels, workspaces); the others are timed
MAX_ROUNDS = 3         # probes of one run at most: the plan, and two corrections
MAX_MICRO_BATCH = 64   # the largest micro-batch the planner's search tries
# Ranks whose peaks differ by more than this share are said to disagree (the verdict names it).
DISAGREEMENT = 0.10

Action = Literal["keep", "grow", "shrink", "checkpointing", "next_tier", "give_up"]
CHANGES: tuple[Action, ...] = ("grow", "shrink", "checkpointing", "next_tier")


@dataclass(frozen=True)
class RankMeasurement:
    """One rank's probe: peaks in bytes, the time of an optimizer step and the tokens it took in."""

    rank: int
    process_bytes: int            # what the system sees: NVML's figure for the process (GPU), peak RSS (CPU)
    peak_allocated: int = 0       # torch.cuda.max_memory_allocated (0 on the CPU)
    peak_reserved: int = 0        # torch.cuda.max_memory_reserved (0 on the CPU)
    step_s: float = 0.0
    tokens_per_s: float = 0.0     # the whole world's tokens per second, as this rank saw it
    oom: bool = False             # this rank ran out of device memory
    kind: str = "rss"             # "cuda" or "rss"

    @property
    def seen(self) -> int:
        """The peak judged against the budget. Without an NVML figure: the allocator's reserved
        peak (context and NCCL, outside it, are then missing: they are small beside a full GPU)."""
        return self.process_bytes or self.peak_reserved or self.peak_allocated


@dataclass(frozen=True)
class Verdict:
    action: Action
    plan: Plan                    # the plan to run (keep, give_up) or to probe next (a change)
    reason: str
    measured: int                 # the worst rank's peak (0 when it ran out of memory)
    worst_rank: int | None
    expected: int                 # the estimate's expected peak of the plan probed

    @property
    def changed(self) -> bool:
        return self.action in CHANGES


def worst_rank(measurements: list[RankMeasurement]) -> RankMeasurement | None:
    """The rank that decides: one that ran out of memory, else the highest peak."""
    if not measurements:
        return None
    return max(measurements, key=lambda m: (m.oom, m.seen))


def correct(plan: Plan, measurements: list[RankMeasurement], model: ModelSpec | None = None, *,
            may_grow: bool = True, earlier: tuple[Action, ...] = ()) -> Verdict:
    """The verdict on `plan` from its probe's `measurements` (one per rank that reported).

    `model` lets the verdict size a grown or changed plan (without it, only shrinking is possible);
    `may_grow` is false when the caller forbids growing; a micro-batch the user pinned (plan.pinned)
    never grows either, and changes only to avoid running out of memory. `earlier` are the previous
    rounds' actions (a plan that had to shrink is not grown again)."""
    may_grow = may_grow and "micro_batch" not in plan.pinned
    worst = worst_rank(measurements)
    expected = plan.estimate.total
    budget = plan.estimate.budget
    usable = int(budget * (1 - HEADROOM))
    if worst is None:
        return Verdict("keep", plan, "no rank reported a measurement; the plan runs as planned", 0, None, expected)
    words = _device_words(worst)
    disagree = _disagreement(measurements, worst)
    if worst.oom:
        why = f"rank {worst.rank} ran out of {words} memory in the probe{disagree}"
        return _smaller(plan, why, model, 0, worst.rank, expected)
    if worst.seen > usable:
        why = (f"rank {worst.rank} peaked at {_gib(worst.seen)} of {_gib(budget)} {words} memory, closer than "
               f"the {HEADROOM:.0%} headroom allows ({_gib(usable)}){disagree}")
        return _smaller(plan, why, model, worst.seen, worst.rank, expected)
    grown = _grown(plan, worst, model, usable) if may_grow and not set(earlier) & {"shrink", "checkpointing",
                                                                                      "next_tier"} else None
    if grown is not None:
        return Verdict("grow", grown[0], grown[1] + disagree, worst.seen, worst.rank, expected)
    return Verdict("keep", plan, f"rank {worst.rank} peaked at {_gib(worst.seen)} of {_gib(budget)} "
                   f"({worst.seen / budget:.0%}), within the {HEADROOM:.0%} headroom{disagree}",
                   worst.seen, worst.rank, expected)


def _smaller(plan: Plan, why: str, model: ModelSpec | None, measured: int, rank: int,
             expected: int) -> Verdict:
    """Half the micro-batch; at 1, checkpointing; with it, the next tier; else give up."""
    smaller = shrink_micro_batch(plan, why, model)
    if smaller is not None:
        return Verdict("shrink", smaller, f"{why}: micro-batch {plan.micro_batch} -> {smaller.micro_batch}, "
                       f"accumulation {plan.grad_accum} -> {smaller.grad_accum}"
                       + pinned_change(plan, "micro_batch", plan.micro_batch, smaller.micro_batch),
                       measured, rank, expected)
    if not plan.activation_checkpointing:
        pinned = pinned_change(plan, "checkpointing", "off", "on")
        reasons = dict(plan.reasons)
        reasons["activation_checkpointing"] = f"on: {why} at micro-batch 1 without it{pinned}"
        changed = replace(plan, activation_checkpointing=True, reasons=reasons)
        return Verdict("checkpointing", _estimated(changed, model), f"{why}: activation checkpointing on{pinned}",
                       measured, rank, expected)
    tier = next_tier(plan, why)
    if tier is not None:
        pinned = (pinned_change(plan, "strategy", plan.strategy, tier.strategy) if tier.strategy != plan.strategy
                  else "") + pinned_change(plan, "offload", plan.offload, tier.offload)
        return Verdict("next_tier", _estimated(tier, model),
                       f"{why}: {tier.strategy} with {tier.offload} offload to host RAM{pinned}", measured, rank,
                       expected)
    return Verdict("give_up", plan, f"{why}; micro-batch 1 with checkpointing and offload is the smallest this "
                   "planner can make it", measured, rank, expected)


def next_tier(plan: Plan, why: str) -> Plan | None:
    """The planner's next tier for a GPU plan that does not fit: optimizer states to host RAM
    (DeepSpeed ZeRO-Offload, on one GPU too), then the weights (ZeRO-3 / FSDP). None on the CPU,
    where there is no device memory to relieve, after parameter offload, and for AdaLomo (its
    update runs on the GPU inside backward)."""
    if plan.device != "cuda" or plan.offload == "params" or fused_in_backward(plan.optimizer):
        return None
    strategy: Strategy
    offload: Offload
    if plan.offload == "none":
        strategy = plan.strategy if plan.strategy in ("zero2", "zero3", "fsdp") else "zero2"
        offload = "optimizer"
    else:
        strategy = "zero3" if plan.strategy == "zero2" else plan.strategy
        offload = "params"
    launcher = plan.launcher if plan.launcher != "deepspeed" or strategy.startswith("zero") else "accelerate"
    reasons = dict(plan.reasons)
    reasons["offload"] = f"{offload} offload to host RAM: {why}"
    if plan.optimizer == "adamw":  # ZeRO-Offload steps with DeepSpeed's CPU Adam
        reasons["optimizer"] = with_adamw_implementation(reasons.get("optimizer"), strategy, offload)
    return replace(plan, strategy=strategy, offload=offload, launcher=launcher, reasons=reasons, hybrid_shard=False)


def _grown(plan: Plan, worst: RankMeasurement, model: ModelSpec | None, usable: int) -> tuple[Plan, str] | None:
    """Twice the micro-batch when the effective batch allows it and the measured peak, grown by
    what the model expects (scaled by measured / expected), stays within the headroom."""
    micro = plan.micro_batch * 2
    per_step = micro * plan.num_processes
    if model is None or micro > MAX_MICRO_BATCH or plan.effective_batch % per_step:
        return None
    now = estimate(model, setup_of(plan), plan.estimate.budget)
    bigger = estimate(model, setup_of(plan, micro_batch=micro), plan.estimate.budget)
    scale = worst.seen / now.total if now.total else 1.0
    predicted = worst.seen + max(0, bigger.total - now.total) * scale
    if predicted > usable:
        return None
    grad_accum = plan.effective_batch // per_step
    reasons = dict(plan.reasons)
    why = (f"the probe peaked at {_gib(worst.seen)}; micro-batch {micro} is expected at {_gib(predicted)}, "
           f"within the {HEADROOM:.0%} headroom ({_gib(usable)})")
    reasons["batch"] = (f"micro-batch {micro} x {plan.num_processes} process(es) x {grad_accum} accumulation = "
                        f"effective batch {plan.effective_batch}; doubled from {plan.micro_batch} because {why}")
    grown = replace(plan, micro_batch=micro, grad_accum=grad_accum, reasons=reasons, estimate=bigger)
    return grown, f"{why}: micro-batch {plan.micro_batch} -> {micro}, accumulation {plan.grad_accum} -> {grad_accum}"


def _estimated(plan: Plan, model: ModelSpec | None) -> Plan:
    if model is None:
        return plan
    return replace(plan, estimate=estimate(model, setup_of(plan), plan.estimate.budget))


def _disagreement(measurements: list[RankMeasurement], worst: RankMeasurement) -> str:
    """"; ranks disagree (...): judged by the worst" when their peaks differ by more than DISAGREEMENT."""
    seen = [m for m in measurements if not m.oom]
    if len(measurements) < 2:
        return ""
    low = min(seen, key=lambda m: m.seen) if seen else None
    if worst.oom and low is not None:
        return f"; ranks disagree (rank {low.rank} peaked at {_gib(low.seen)}): judged by the worst"
    if low is not None and worst.seen and (worst.seen - low.seen) / worst.seen > DISAGREEMENT:
        return (f"; ranks disagree (rank {low.rank} at {_gib(low.seen)}, rank {worst.rank} at "
                f"{_gib(worst.seen)}): judged by the worst")
    return ""


def _device_words(m: RankMeasurement) -> str:
    return "GPU" if m.kind == "cuda" else "host"


def _gib(value: float) -> str:
    return f"{value / GiB:.2f} GiB"


def memory_ratio(measurements: list[RankMeasurement], plan: Plan) -> float | None:
    """The worst rank's peak over the expected peak before calibration; None after an OOM."""
    worst = worst_rank(measurements)
    if worst is None or worst.oom or not worst.seen:
        return None
    uncalibrated = plan.estimate.total / (plan.estimate.calibration_factor or 1.0)
    return worst.seen / uncalibrated if uncalibrated else None


def speed_ratio(measurements: list[RankMeasurement], plan: Plan) -> float | None:
    """Measured over predicted tokens per second (the slowest rank's view); None when unknown."""
    rates = [m.tokens_per_s for m in measurements if m.tokens_per_s > 0 and not m.oom]
    if not rates or not plan.predicted_tokens_per_s:
        return None
    return min(rates) / plan.predicted_tokens_per_s
