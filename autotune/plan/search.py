"""The candidate search: every setup that fits the memory budget, ranked by the cost model.

Candidates are strategy x offload x activation checkpointing x micro-batch (x hybrid sharding
across machines), searched in tiers: as asked; then, on GPUs when the optimizer is ours to choose,
8-bit AdamW; then offload to host RAM (DeepSpeed ZeRO-Offload even on one GPU). The largest
micro-batch that fits with HEADROOM is kept per strategy, and the fastest candidate by
llmwizard.autotune.memory.throughput wins. `choose` is three steps: `generate` the candidates that fit,
`rank` them, `explain` the winner. When nothing fits, the error names the smallest change that
would (llmwizard.autotune.plan.no_fit).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace

from llmwizard.autotune.memory.activations import liger_layers
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.gpu_catalog import parse_gpu_spec
from llmwizard.autotune.machine.hardware_types import GiB, HardwareProfile
from llmwizard.autotune.memory.long_context import context_parallel_sizes, offloaded_activations, ulysses_splits
from llmwizard.autotune.memory import MemoryEstimate, estimate
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.plan.no_fit import DoesNotFit, forced_estimate, nothing_fits
from llmwizard.autotune.memory.savers import (
    ADALOMO_NEEDS,
    LOW_RANK_NEEDS,
    LOW_RANK_OPTIMIZERS,
    LOW_RANK_WHY,
    compensation,
    fused_in_backward,
    fused_tier,
    leanest,
    saver_tiers,
    with_adamw_implementation,
)
from llmwizard.autotune.schema import Offload, Optimizer, Precision, Strategy
from llmwizard.autotune.memory.throughput import step_cost
from llmwizard.autotune.train_setup import OFFLOADS, OPTIMIZERS, STRATEGIES, TrainSetup

# Keep this share of the budget free: allocator spikes, evaluation and checkpoint saving.
HEADROOM = 0.05
# Tasks whose TRL trainer has no activation offloading (ORPOConfig and GRPOConfig lack the field).
NO_ACTIVATION_OFFLOADING = ("orpo", "grpo")
CPU_TFLOPS = 0.2  # a few cores: only used to rank CPU candidates against each other


@dataclass
class Candidate:
    strategy: Strategy
    offload: Offload
    micro_batch: int
    checkpointing: bool
    estimate: MemoryEstimate
    step_s: float
    hybrid: bool = False
    optimizer: Optimizer = "adamw"
    precision: Precision | None = None   # None: the base setup's
    cp: int = 1                          # GPUs one sequence is split over
    offload_activations: bool = False

    @property
    def label(self) -> str:
        return (("hsdp" if self.hybrid else self.strategy) + (f"+cp{self.cp}" if self.cp > 1 else "")
                + ("+offload" if self.offload != "none" else "")
                + ("+act-offload" if self.offload_activations else ""))


@dataclass
class Choice:
    """The winning candidate, and why: reasons keyed as the Plan's (strategy, optimizer, offload,
    activation_checkpointing)."""

    best: Candidate
    reasons: dict[str, str]


def choose(hardware: HardwareProfile, model: ModelSpec, base: TrainSetup, goals: Goals, budget: int,
           effective: int, world: int) -> Choice:
    """The fastest setup that fits, searched in tiers: as asked; then (on GPUs, when the optimizer
    is ours to choose) 8-bit AdamW; then offload to host RAM (ZeRO-Offload even on one GPU)."""
    check_choices(goals, world, hardware.device, base.method)
    space = _space(hardware, model, base, goals, budget, effective, world)
    fitting, why = generate(space, goals)
    if not fitting:
        raise _does_not_fit(space, goals)
    best = rank(fitting)
    return Choice(best, explain(space, goals, best, fitting, why))


@dataclass(frozen=True)
class SearchSpace:
    """What the search holds fixed (the machine, the model, the base setup, the batch) and the
    knobs it turns besides strategy, offload and optimizer, which each tier sets."""

    hardware: HardwareProfile
    model: ModelSpec
    base: TrainSetup
    budget: int
    effective: int                    # the effective batch: micro-batch x world x accumulation
    world: int
    strategies: list[Strategy]
    micro_batches: list[int]          # largest first: the first that fits is kept
    checkpointing: list[bool]
    hybrid: list[bool]
    cps: list[int] = field(default_factory=lambda: [1])   # context-parallel sizes to try
    forced_micro: int | None = None

    def micro_batches_for(self, cp: int) -> list[int]:
        """Micro-batches that divide the batch of one data-parallel rank (world / cp of them)."""
        if cp == 1:
            return self.micro_batches
        if self.forced_micro:
            return [self.forced_micro]
        per_rank = self.effective // (self.world // cp)
        return [m for m in (64, 32, 16, 8, 4, 2, 1) if per_rank % m == 0]

    @property
    def usable(self) -> int:
        return int(self.budget * (1 - HEADROOM))

    @property
    def tflops(self) -> float:
        gpu = self.hardware.smallest_gpu
        return (gpu.bf16_tflops or 100.0) if gpu else CPU_TFLOPS


def _space(hardware: HardwareProfile, model: ModelSpec, base: TrainSetup, goals: Goals, budget: int,
           effective: int, world: int) -> SearchSpace:
    # (GaLore and APOLLO project whole weights: one process or DDP)
    strategies: list[Strategy] = [goals.strategy] if goals.strategy else (
        ["single"] if world == 1 else ["ddp"] if base.optimizer in LOW_RANK_OPTIMIZERS
        else ["ddp", "zero2", "fsdp", "zero3"])
    micro_batches = [m for m in (64, 32, 16, 8, 4, 2, 1) if (effective // world) % m == 0]
    if base.task == "kto":  # its KL term pairs each prompt with another row's completion of the micro-batch
        micro_batches = [m for m in micro_batches if m >= 2]
    fixed = fixed_micro_batch(goals, effective, world)
    if fixed:
        micro_batches = [fixed]
    checkpointing = [goals.checkpointing] if goals.checkpointing is not None else [False, True]
    hybrid = [False, True] if hardware.nodes > 1 and hardware.gpus_per_node > 1 else [False]
    cps = context_parallel_sizes(hardware, model, base, goals, world, effective)
    if goals.grad_accum:  # the accumulation was fixed for this split (Goals.data_parallel)
        cps = [goals.context_parallel or 1]
    return SearchSpace(hardware, model, base, budget, effective, world, strategies, micro_batches, checkpointing,
                       hybrid, cps, fixed)


def fixed_micro_batch(goals: Goals, effective: int, world: int) -> int | None:
    """The micro-batch the goals fix: asked for, or what a fixed accumulation leaves of the
    effective batch (effective / (data-parallel processes x grad_accum)); None: searched."""
    if goals.micro_batch or not goals.grad_accum:
        return goals.micro_batch
    return max(1, effective // (goals.data_parallel(world) * goals.grad_accum))


@dataclass(frozen=True)
class Tier:
    """One round of the search, and why the plan would need it (empty for the first)."""

    strategies: list[Strategy]
    offloads: list[Offload]
    optimizer: Optimizer
    why: str
    precision: Precision | None = None   # None: the base setup's
    offload_activations: bool = False
    activations_why: str = ""             # why activation offloading, when this tier adds it


ACTIVATIONS_WHY = ("activations do not fit on the GPU: TRL's activation offloading keeps them in pinned host RAM "
                   "and brings each layer's back in backward")


def _tiers(space: SearchSpace, goals: Goals) -> list[Tier]:
    base, strategies = space.base, space.strategies
    asked = bool(goals.activation_offloading)  # activation offloading asked for holds in every tier
    offloads: list[Offload] = [goals.offload] if goals.offload else ["none"]  # an asked offload holds in every tier
    tiers = [Tier(strategies, offloads, base.optimizer, "", offload_activations=asked)]
    # The GPU optimizer savers replace what offload to host RAM would do: not with an asked offload.
    savers = goals.offload in (None, "none") and space.hardware.device == "cuda"
    if savers and not goals.optimizer and base.method == "full":
        tiers.append(Tier(strategies, ["none"], "adamw_8bit",
                          "8-bit AdamW (bitsandbytes): fp32 AdamW states do not fit; 8-bit states take a quarter",
                          offload_activations=asked))
    # Pure bf16 and the low-memory optimizers (llmwizard.autotune.saver_tiers), before offload.
    if savers:
        tiers += [Tier(strategies, ["none"], optimizer, why, precision, offload_activations=asked)
                  for optimizer, precision, why in saver_tiers(space.hardware.device, base, goals)]
    # (TRL's ORPO and GRPO trainers have no activation offloading)
    may_offload_activations = goals.activation_offloading is None and base.task not in NO_ACTIVATION_OFFLOADING
    if may_offload_activations and space.hardware.device == "cuda":
        last = tiers[-1]
        tiers.append(Tier(strategies, last.offloads, last.optimizer, last.why, last.precision,
                          offload_activations=True, activations_why=ACTIVATIONS_WHY))
    # AdaLomo, the update fused into backward (one GPU; it gives up gradient accumulation).
    # (AdaLomo accumulates nothing: not with a fixed accumulation above 1)
    fused = fused_tier(space.hardware.device, base, goals) if savers and (goals.grad_accum or 1) == 1 else None
    if fused:
        optimizer, precision, why = fused
        tiers.append(Tier(strategies, ["none"], optimizer, why, precision, offload_activations=asked))
        if may_offload_activations:
            tiers.append(Tier(strategies, ["none"], optimizer, why, precision, offload_activations=True,
                              activations_why=ACTIVATIONS_WHY))
    if not goals.offload and not fused_in_backward(base.optimizer) and base.optimizer not in LOW_RANK_OPTIMIZERS:
        offload_strategies: list[Strategy] = strategies if space.world > 1 or goals.strategy else ["zero2", "zero3"]
        tiers.append(Tier(offload_strategies, ["optimizer", "params"], base.optimizer,
                          "nothing fits on the GPU otherwise", offload_activations=asked))
    return tiers


def generate(space: SearchSpace, goals: Goals) -> tuple[list[Candidate], str]:
    """Every candidate that fits, from the first tier where any does, and that tier's reason
    (for activation offloading, after a newline: llmwizard.autotune.plan.search.explain splits it)."""
    for tier in _tiers(space, goals):
        fitting = []
        for strategy, offload, hybrid, cp in itertools.product(tier.strategies, tier.offloads, space.hybrid,
                                                                space.cps):
            if not _compatible(strategy, offload, hybrid) or (cp > 1 and not _splits_sequences(space, strategy, cp,
                                                                                                hybrid)):
                continue
            for checkpointing in space.checkpointing:
                candidate = _largest_fitting(space, strategy, offload, hybrid, checkpointing, tier.optimizer,
                                             tier.precision, cp, tier.offload_activations)
                if candidate is not None:
                    fitting.append(candidate)
        if fitting:
            return fitting, tier.why + (f"\n{tier.activations_why}" if tier.activations_why else "")
    return [], ""


def _splits_sequences(space: SearchSpace, strategy: Strategy, cp: int, hybrid: bool) -> bool:
    """FSDP2 splits a sequence with context parallelism (ring attention); ZeRO with DeepSpeed's
    Ulysses, which splits attention by heads (the head counts must divide)."""
    if hybrid:
        return False
    if strategy == "fsdp":
        return space.hardware.device == "cuda"  # torch's ring attention has CUDA kernels only
    return strategy in ("zero2", "zero3") and ulysses_splits(space.model, cp)


def _compatible(strategy: Strategy, offload: Offload, hybrid: bool) -> bool:
    """Offload needs a sharded strategy, ZeRO-2 cannot offload parameters, only FSDP shards hybrid."""
    if offload != "none" and strategy not in ("fsdp", "zero2", "zero3"):
        return False
    if offload == "params" and strategy == "zero2":
        return False
    return not hybrid or strategy == "fsdp"


def _largest_fitting(space: SearchSpace, strategy: Strategy, offload: Offload, hybrid: bool, checkpointing: bool,
                     optimizer: Optimizer, precision: Precision | None = None, cp: int = 1,
                     offload_activations: bool = False) -> Candidate | None:
    """The candidate at the largest micro-batch that fits the budget (and the host RAM, when it
    offloads), or None."""
    hardware, base = space.hardware, space.base
    shards = hardware.gpus_per_node if hybrid else space.world
    for micro in space.micro_batches_for(cp):
        setup = _replace(base, strategy=strategy, offload=offload, micro_batch=micro, checkpointing=checkpointing,
                         num_gpus=shards, optimizer=optimizer, precision=precision or base.precision, cp=cp,
                         offload_activations=offload_activations)
        # GRPO generates for a whole optimizer step's completions at once (TRL's steps_per_generation
        # defaults to the accumulation): a smaller micro-batch does not shrink the generation batch.
        accum = space.effective * cp // (micro * space.world) if base.task == "grpo" else 1
        est = estimate(space.model, setup, space.budget, grad_accum=max(1, accum))
        if est.total > space.usable:
            continue
        if (offload != "none" or offload_activations) and est.host_ram > hardware.host_ram_available:
            continue
        cost = step_cost(
            total_params=space.model.total_params, trainable_params=est.trainable_params,
            tokens_per_step=space.effective * base.seq_len, method=base.method, strategy=strategy,
            offload=offload, checkpointing=checkpointing, world=space.world, nodes=hardware.nodes,
            tflops=space.tflops, interconnect=hardware.interconnect, micro_tokens=micro * base.seq_len // cp,
            num_layers=space.model.num_layers, grad_accum=space.effective * cp // (micro * space.world),
            hybrid=hybrid, gpus_per_node=hardware.gpus_per_node, seq_len=base.seq_len,
            attention_width=space.model.num_layers * space.model.num_heads * space.model.head_dim,
            kv_width=space.model.num_layers * space.model.num_kv_heads * space.model.head_dim, cp=cp,
            cp_kind="ring" if strategy == "fsdp" else "ulysses",
            offloaded_activation_bytes=offloaded_activations(space.model, setup))
        return Candidate(strategy, offload, micro, checkpointing, est, cost.total_s, hybrid, optimizer, precision,
                         cp, offload_activations)
    return None


def rank(fitting: list[Candidate]) -> Candidate:
    """The fastest by the cost model; the first generated wins a tie. Under AdaLomo the micro-batch
    is the whole effective batch, so the largest that fits comes first (checkpointing buys it)."""
    return min(fitting, key=lambda c: (-c.micro_batch if fused_in_backward(c.optimizer) else 0, c.step_s))


def explain(space: SearchSpace, goals: Goals, best: Candidate, fitting: list[Candidate], why: str) -> dict[str, str]:
    """The reasons for the strategy, and for the optimizer and offload when a later tier chose them."""
    why, _, activations_why = why.partition("\n")
    hardware, est = space.hardware, best.estimate
    words = _strategy_words(best.strategy)
    if best.hybrid:
        words = (f"FSDP2 hybrid shard (HSDP): sharded across the {hardware.gpus_per_node} GPUs of each machine, "
                 f"replicated across the {hardware.nodes} machines so weight gathers stay on the fast local links")
    if space.world == 1 and best.strategy != "single":
        words += " on one GPU, for its CPU offload"
    reasons = {"strategy": (
        f"{words}: {est.total / GiB:.2f} GiB of {space.budget / GiB:.2f} GiB per "
        f"{'process' if hardware.device == 'cpu' else 'GPU'} at micro-batch {best.micro_batch}; "
        + ("the largest micro-batch that fits, since under AdaLomo it is the whole batch"
           if fused_in_backward(best.optimizer) and not goals.strategy else
           "the fastest of the setups that fit" + _alternatives(best, fitting) if not goals.strategy
           else goals.origin("strategy")))}
    if best.optimizer != space.base.optimizer:
        reasons["optimizer"] = why
    elif goals.optimizer in LOW_RANK_OPTIMIZERS:
        reasons["optimizer"] = (f"{goals.optimizer} ({goals.origin('optimizer')}): {est.optimizer / GiB:.2f} GiB of "
                                "optimizer states and "
                                f"step temporaries; {LOW_RANK_WHY[goals.optimizer]}")
    elif goals.optimizer:
        reasons["optimizer"] = f"{goals.optimizer} ({goals.origin('optimizer')})"
    if best.optimizer == "adamw":  # which AdamW runs, and why that one
        reasons["optimizer"] = with_adamw_implementation(reasons.get("optimizer"), best.strategy, best.offload)
    precision = best.precision or space.base.precision
    if best.precision is not None and best.precision != space.base.precision:
        reasons["precision"] = why if not fused_in_backward(best.optimizer) else (
            "pure bf16 (bf16 weights and gradients, no fp32 master copy): with AdaLomo, fp32 weights do not fit")
    if precision == "pure_bf16" and space.base.method == "full":
        reasons["precision"] = (reasons.get("precision") or f"pure_bf16 ({goals.origin('precision')})") + (
            f"; the trade-off: {compensation(best.optimizer)}")
    elif precision == "pure_bf16":
        reasons["precision"] = (f"pure_bf16 ({goals.origin('precision')}): with LoRA the layout of bf16, the frozen "
                                "base in bf16 and "
                                "the adapters and their optimizer states in fp32")
    if best.offload != "none":
        reasons["offload"] = (f"{best.offload} offload to host RAM: {why or goals.origin('offload')}; needs "
                              f"{est.host_ram / GiB:.0f} GiB of {hardware.host_ram_available / GiB:.0f} GiB host RAM")
    if best.cp > 1:
        one = [c for c in fitting if c.cp == 1]
        slower = min(c.step_s for c in one) / best.step_s - 1 if one else 0.0
        versus = f"one GPU per sequence is ~{slower:.0%} slower" if one else "one GPU per sequence does not fit"
        how = ("FSDP2 context parallelism, ring attention" if best.strategy == "fsdp" else
               "DeepSpeed Ulysses sequence parallelism, attention split by heads")
        reasons["context_parallel"] = (
            f"{best.cp} GPUs per sequence ({how}): each holds "
            f"{space.base.seq_len // best.cp} of the {space.base.seq_len} tokens; {versus}"
            if not goals.context_parallel else f"{best.cp} GPUs per sequence ({goals.origin('context_parallel')})")
    elif not goals.context_parallel and any(c.cp > 1 for c in fitting):
        split = min((c for c in fitting if c.cp > 1), key=lambda c: c.step_s)
        reasons["context_parallel"] = (
            f"1 GPU per sequence: it fits, and splitting each sequence over {split.cp} GPUs ("
            + ("FSDP2 context parallelism" if split.strategy == "fsdp" else f"{split.strategy} with Ulysses")
            + f", the fastest split) would be ~{split.step_s / best.step_s - 1:.0%} slower (attention traffic "
            "between the GPUs) without freeing memory the plan needs")
    if best.offload_activations:
        reasons["activation_offloading"] = (
            f"on: {activations_why or goals.origin('activation_offloading')}; about "
            f"{offloaded_activations(space.model, _setup_of(space, best)) / GiB:.1f} GiB "
            "per process in host RAM, crossing PCIe twice per micro-step on a side stream")
    if liger_layers(space.model, space.base):
        without = estimate(space.model, _replace(_setup_of(space, best), liger=False), space.budget)
        reasons["liger_kernel"] = (
            f"on ({goals.origin('liger_kernel')}): Liger's RMSNorm, SwiGLU/GeGLU and RoPE Triton kernels save "
            f"{(without.total - est.total) / GiB:.2f} GiB per GPU at this micro-batch (each norm keeps its input "
            "as it came instead of an fp32 copy, the gated MLP recomputes its activation in backward); TRL keeps its "
            "own fused LM head instead of Liger's cross-entropy; needs a GPU and the liger-kernel package")
    reasons["activation_checkpointing"] = (
        ("on: recomputing activations in backward is what makes it fit" if best.checkpointing else
         "off: activations fit without recomputation")
        if goals.checkpointing is None
        else ("on" if best.checkpointing else "off") + f" ({goals.origin('checkpointing')})")
    return reasons


def _does_not_fit(space: SearchSpace, goals: Goals) -> UserError:
    """Nothing fits. When the user forced a knob and the planner could fit without it, say so;
    otherwise name the smallest change that would make a plan fit."""
    hardware, model, base, budget, world = space.hardware, space.model, space.base, space.budget, space.world
    forced = _forced_choices(goals)
    if forced:
        free = Goals(**{**goals.__dict__, **{key: None for key in forced}})
        free_base = _replace(base, optimizer="adamw") if "optimizer" in forced else base  # the planner's own start
        try:
            alternative = choose(hardware, model, free_base, free, budget, space.effective, world).best
        except UserError:
            alternative = None
        if alternative is not None:
            asked = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in forced.items())
            # (GaLore, APOLLO and AdaLomo rule out the other layouts nothing_fits would name)
            # what would fit keeping the asked knobs: priced at the asked micro-batch, checkpointing,
            # optimizer and precision (the strategy and offload are what each suggestion varies)
            kept = {key: value for key, value in forced.items()
                    if key in ("micro_batch", "checkpointing", "optimizer", "precision")}
            figures = forced_estimate(model, base, forced, world, budget, budget * (1 - HEADROOM),
                                      hardware.host_ram_available)
            found = alternative

            def fix() -> str:
                keeping = "" if forced.get("optimizer") in (*LOW_RANK_OPTIMIZERS, "adalomo") else (
                    f"; or, keeping {asked}: " + str(nothing_fits(hardware, model, base, budget, world,
                                                                  budget * (1 - HEADROOM), kept,
                                                                  searched=lambda: searched_fixes(space, goals)).fix))
                return (f"Leave it to the planner, which fits {_label(found)} "
                        f"({found.estimate.total / GiB:.1f} GiB per {_device_word(hardware)}){keeping}.")

            return DoesNotFit(f"{asked} does not fit: {figures}", make_fix=fix)
    return nothing_fits(hardware, model, base, budget, world, budget * (1 - HEADROOM),
                        leanest(hardware.device, base, goals),
                        leanest(hardware.device, _replace(base, num_gpus=2), goals),  # (more GPUs: no AdaLomo)
                        searched=lambda: searched_fixes(space, goals), cp=_widest_split(space))


def _widest_split(space: SearchSpace) -> int:
    """The most GPUs the search may split one sequence over here (Ulysses or ring attention), 1 when none."""
    return max(cp for cp in space.cps if cp == 1 or _splits_sequences(space, "zero3", cp, False)
               or _splits_sequences(space, "fsdp", cp, False))


# The lengths the no-fit advice names are multiples of this, as the planner rounds the data's p99.
LENGTH_STEP = 64
# The most machines the advice looks for (as many GPUs as the old estimate-only advice tried).
MAX_NODES = 64


def _search_fits(space: SearchSpace, goals: Goals) -> Candidate | None:
    """The planner's own pick for `space` (every tier, context parallelism included), or None when
    nothing fits: the probe of the no-fit advice, so it words no advice of its own."""
    fitting, _ = generate(space, goals)
    return rank(fitting) if fitting else None


def _space_or_none(hardware: HardwareProfile, base: TrainSetup, space: SearchSpace, goals: Goals, budget: int,
                   effective: int, world: int) -> SearchSpace | None:
    """The search space on other hardware or at another length; None where the goals rule it out
    (an asked context-parallel size that no longer divides the GPUs)."""
    try:
        return _space(hardware, space.model, base, goals, budget, effective, world)
    except UserError:
        return None


def longest_fitting_length(space: SearchSpace, goals: Goals) -> tuple[int, Candidate] | None:
    """The largest max_length (a multiple of LENGTH_STEP, below the asked one) at which the
    planner's search fits on this hardware, and its pick there: a bisection, each probe the whole
    search, so Ulysses or ring attention over several GPUs counts as much as a saver does. What
    `--max-length` with that value plans (the length step passes it through to the search)."""
    lo, hi = 0, -(-space.base.seq_len // LENGTH_STEP)    # in LENGTH_STEPs: lo fits (0: none yet), hi does not
    found: Candidate | None = None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        shorter = _space_or_none(space.hardware, _replace(space.base, seq_len=mid * LENGTH_STEP), space, goals,
                                 space.budget, space.effective, space.world)
        best = _search_fits(shorter, goals) if shorter else None
        if best is None:
            hi = mid
        else:
            lo, found = mid, best
    return (lo * LENGTH_STEP, found) if found else None


def _gpu_model(hardware: HardwareProfile) -> str:
    """The GPU part of a --gpus spec for more of these GPUs: "H100-80GB" from "8xH100-80GB,ram=1TB";
    for detected GPUs their memory ("24GB"), which is what the plan turns on."""
    if hardware.spec:
        text = hardware.spec.split(",", 1)[0]
        match = re.fullmatch(r"\s*(?:\d+\s*[xX]\s*){0,2}(.+?)\s*", text)
        if match:
            return match.group(1)
    gpu = hardware.smallest_gpu
    return f"{round(gpu.total_memory / GiB)}GB" if gpu else "cpu"


def _ram_suffix(hardware: HardwareProfile) -> str:
    """The spec's ",ram=..." when it has one: the advice keeps what the user said of the host."""
    if hardware.spec and "," in hardware.spec:
        return "," + hardware.spec.split(",", 1)[1].strip()
    return ""


def smallest_fitting_hardware(space: SearchSpace, goals: Goals) -> tuple[str, int, Candidate] | None:
    """The fewest GPUs of this model on which the planner's search fits, as the --gpus (and
    --nodes) that ask for them, their count, and the search's pick there: first more GPUs in this
    machine (up to 8), then machines of 8 (or of this many), the node count bisected. Each probe plans the hardware as
    `--gpus` would describe it (llmwizard.autotune.machine.gpu_catalog), with the effective batch raised
    as the batch step raises it."""
    hardware = space.hardware
    one_gpu_only = goals.strategy == "single" or fused_in_backward(space.base.optimizer)
    if hardware.device != "cuda" or one_gpu_only or (goals.processes and goals.processes < hardware.gpus_per_node):
        return None
    name, ram = _gpu_model(hardware), _ram_suffix(hardware)

    def fits(per_node: int, nodes: int) -> tuple[str, int, Candidate] | None:
        try:
            more = parse_gpu_spec(f"{per_node}x{name}{ram}", nodes)
        except UserError:
            return None
        gpu = more.smallest_gpu
        world = per_node * nodes
        step = world * (goals.micro_batch or 1)
        effective = (space.effective * world // space.world if goals.grad_accum
                     else step * -(-space.effective // step))
        base = _replace(space.base, num_gpus=world, gpus_per_node=per_node)
        more_space = _space_or_none(more, base, space, goals, gpu.free_memory if gpu else space.budget, effective,
                                    world)
        best = _search_fits(more_space, goals) if more_space else None
        flags = f"--gpus {per_node}x{name}{ram}" + (f" --nodes {nodes}" if nodes > 1 else "")
        return (flags, world, best) if best else None

    per_node, nodes = hardware.gpus_per_node, hardware.nodes
    if nodes == 1:
        for count in range(per_node + 1, max(8, per_node) + 1):
            found = fits(count, 1)
            if found:
                return found
        per_node, nodes = max(8, per_node), 1
    lo, hi = nodes, MAX_NODES        # lo does not fit; hi is checked first
    found = fits(per_node, hi)
    if found is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probe = fits(per_node, mid)
        if probe is None:
            lo = mid
        else:
            hi, found = mid, probe
    return found


def _reach_words(best: Candidate, hardware: HardwareProfile) -> str:
    return f"{_label(best)}, {best.estimate.total / GiB:.1f} GiB per {_device_word(hardware)}"


def searched_fixes(space: SearchSpace, goals: Goals) -> tuple[str, str]:
    """The no-fit advice's two searched fixes, in words: the largest length that fits here and the
    smallest hardware that fits, each with the plan that gets there ("" where there is none)."""
    length = ""
    longest = longest_fitting_length(space, goals)
    if longest:
        tokens, best = longest
        length = f"fits at {tokens:,} tokens (--max-length {tokens}): {_reach_words(best, space.hardware)}"
    more = ""
    bigger = smallest_fitting_hardware(space, goals)
    if bigger:
        flags, count, best = bigger
        more = (f"fits on {count} GPUs ({flags}; {count - space.world} more than here): "
                f"{_reach_words(best, space.hardware)}")
    return length, more


_FORCEABLE = ("strategy", "offload", "micro_batch", "checkpointing", "optimizer", "precision")


def _forced_choices(goals: Goals) -> dict[str, object]:
    return {key: getattr(goals, key) for key in _FORCEABLE if getattr(goals, key) is not None}


def _label(c: Candidate) -> str:
    text = f"{'hsdp' if c.hybrid else c.strategy} at micro-batch {c.micro_batch}"
    if c.checkpointing:
        text += " with checkpointing"
    if c.offload != "none":
        text += f", {c.offload} offload"
    if c.optimizer != "adamw":
        text += f", {c.optimizer}"
    if c.precision is not None:
        text += f", {c.precision}"
    if c.cp > 1:
        text += f", {c.cp} GPUs per sequence"
    if c.offload_activations:
        text += ", activation offloading"
    return text


def check_choices(goals: Goals, world: int, device: str, method: str) -> None:
    """Refuse knobs asked for that cannot go together (strategy, offload, optimizer, method)."""
    if goals.strategy is not None:
        if goals.strategy not in STRATEGIES:
            raise UserError(f"Unknown strategy '{goals.strategy}'.", title="Strategy",
                            fix=f"Use one of: {', '.join(STRATEGIES)}.")
        if goals.strategy == "single" and world > 1:
            raise UserError(f"Strategy 'single' runs one process, but the plan has {world}.",
                            title="Strategy", fix="Use ddp, fsdp, zero2 or zero3, or --processes 1.")
        single_gpu_offload = goals.strategy in ("zero2", "zero3") and goals.offload not in (None, "none")
        if goals.strategy != "single" and world == 1 and not single_gpu_offload:
            raise UserError(f"Strategy '{goals.strategy}' needs two or more processes; this plan has one.",
                            title="Strategy", fix="Plan for more GPUs (--gpus) or processes (--processes 2), "
                            "or add --offload optimizer for DeepSpeed's single-GPU offload.")
    if goals.offload is not None and goals.offload not in OFFLOADS:
        raise UserError(f"Unknown offload '{goals.offload}'.", title="Offload",
                        fix=f"Use one of: {', '.join(OFFLOADS)}.")
    if goals.offload not in (None, "none") and device != "cuda":
        raise UserError(f"Offload {goals.offload} moves GPU memory to host RAM; this plan has no GPU (on the CPU "
                        "everything is in host RAM already).", title="Offload",
                        fix="Drop --offload (or set offload: none), or plan for GPUs with --gpus.")
    if goals.offload not in (None, "none") and goals.strategy is not None and not _compatible(
            goals.strategy, goals.offload, False):
        raise UserError(
            f"Offload {goals.offload} with strategy {goals.strategy}: "
            + ("ZeRO-2 shards gradients and optimizer states but not the weights, so it cannot offload them."
               if goals.strategy == "zero2" else
               f"{goals.strategy} keeps a whole copy of the model on each GPU and offloads nothing."),
            title="Offload",
            fix="Use --strategy zero3 or fsdp (they offload optimizer states and weights)"
                + (", or --offload optimizer with zero2." if goals.strategy == "zero2" else
                   ", zero2 (optimizer states only), or drop --offload."))
    if goals.optimizer is not None and goals.optimizer not in OPTIMIZERS:
        raise UserError(f"Unknown optimizer '{goals.optimizer}'.", title="Optimizer",
                        fix=f"Use one of: {', '.join(OPTIMIZERS)}.")
    if goals.optimizer in LOW_RANK_OPTIMIZERS and (method != "full" or goals.strategy not in (None, "single", "ddp")
                                                   or goals.offload not in (None, "none")):
        asked = (f"method {method}" if method != "full" else f"strategy {goals.strategy}" if goals.strategy
                 not in (None, "single", "ddp") else f"offload {goals.offload}")
        raise UserError(f"Optimizer {goals.optimizer} with {asked}: {LOW_RANK_NEEDS}.", title="Optimizer",
                        fix="Use --method full with --strategy ddp (or leave the strategy to the planner) and no "
                            "--offload, or choose another optimizer (adafactor, torchao_adamw_8bit).")
    if goals.optimizer is not None and fused_in_backward(goals.optimizer):
        if device != "cuda" or world > 1:
            raise UserError(f"Optimizer {goals.optimizer}: {ADALOMO_NEEDS}; this plan has "
                            + ("no GPU." if device != "cuda" else f"{world} processes."), title="Optimizer",
                            fix="Plan for one GPU (--gpus 1xMODEL), or choose another optimizer "
                                "(adafactor and torchao_adamw_8bit also save memory).")
        if (goals.grad_accum or 1) > 1:
            raise UserError(f"Optimizer {goals.optimizer} updates the weights inside each backward, so it cannot "
                            f"accumulate gradients; grad_accum {goals.grad_accum} ({goals.origin('grad_accum')}) "
                            "is refused.", title="Optimizer",
                            fix="Drop grad_accum (AdaLomo's batch is one micro-batch), or choose another optimizer.")
        if goals.offload not in (None, "none"):
            raise UserError(f"Optimizer {goals.optimizer} updates the weights on the GPU inside backward; it "
                            f"cannot step on the CPU, so offload {goals.offload} is refused.", title="Optimizer",
                            fix="Drop --offload, or choose another optimizer (adamw with --offload optimizer).")


def _alternatives(best: Candidate, fitting: list[Candidate]) -> str:
    """"(also fit: zero2 ~3% slower, ...)": the fastest setup of each other strategy."""
    fastest: dict[str, Candidate] = {}
    for c in fitting:
        key = c.label
        if key != best.label and (key not in fastest or c.step_s < fastest[key].step_s):
            fastest[key] = c
    if not fastest:
        return ""
    def slower(ratio: float) -> str:
        return f"~{ratio:.0f}x slower" if ratio >= 2 else f"~{ratio - 1:.0%} slower"

    parts = [f"{key} {slower(c.step_s / best.step_s)}"
             for key, c in sorted(fastest.items(), key=lambda item: item[1].step_s)]
    return f" (also fit: {', '.join(parts)})"


def _setup_of(space: SearchSpace, c: Candidate) -> TrainSetup:
    return _replace(space.base, strategy=c.strategy, offload=c.offload, micro_batch=c.micro_batch,
                    checkpointing=c.checkpointing, num_gpus=space.hardware.gpus_per_node if c.hybrid else space.world,
                    optimizer=c.optimizer, precision=c.precision or space.base.precision, cp=c.cp,
                    offload_activations=c.offload_activations)


def _replace(setup: TrainSetup, **changes: object) -> TrainSetup:
    return replace(setup, **changes)  # type: ignore[arg-type]


def _device_word(hardware: HardwareProfile) -> str:
    return "GPU" if hardware.device == "cuda" else "process"


def _strategy_words(strategy: str) -> str:
    return {
        "single": "one process",
        "ddp": "DDP (weights replicated, gradients all-reduced)",
        "zero2": "DeepSpeed ZeRO-2 (optimizer states and gradients sharded)",
        "fsdp": "FSDP2 full shard (weights, gradients and optimizer states sharded)",
        "zero3": "DeepSpeed ZeRO-3 (weights, gradients and optimizer states sharded)",
    }[strategy]
