"""The candidate search: every setup that fits the memory budget, ranked by the cost model.

Candidates are strategy x offload x activation checkpointing x micro-batch (x hybrid sharding
across machines), searched in tiers: as asked; then, on GPUs when the optimizer is ours to choose,
8-bit AdamW; then offload to host RAM (DeepSpeed ZeRO-Offload even on one GPU). The largest
micro-batch that fits with HEADROOM is kept per strategy, and the fastest candidate by
llmwizard.autotune.throughput wins. When nothing fits, the error names the smallest change that would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.hardware_types import GiB, HardwareProfile
from llmwizard.autotune.memory import MemoryEstimate, estimate
from llmwizard.autotune.model_types import ModelSpec
from llmwizard.autotune.throughput import step_cost
from llmwizard.autotune.train_setup import OFFLOADS, OPTIMIZERS, STRATEGIES, TrainSetup

# Keep this share of the budget free: allocator spikes, evaluation and checkpoint saving.
HEADROOM = 0.05
CPU_TFLOPS = 0.2  # a few cores: only used to rank CPU candidates against each other


@dataclass
class Candidate:
    strategy: str
    offload: str
    micro_batch: int
    checkpointing: bool
    estimate: MemoryEstimate
    step_s: float
    hybrid: bool = False
    optimizer: str = "adamw"

    @property
    def label(self) -> str:
        return ("hsdp" if self.hybrid else self.strategy) + ("+offload" if self.offload != "none" else "")


def choose(hardware: HardwareProfile, model: ModelSpec, base: TrainSetup, goals: Goals, budget: int,
            effective: int, world: int, reasons: dict[str, str]) -> Candidate:
    """The fastest setup that fits, searched in tiers: as asked; then (on GPUs, when the optimizer
    is ours to choose) 8-bit AdamW; then offload to host RAM (ZeRO-Offload even on one GPU)."""
    _check_choices(goals, world)
    strategies = [goals.strategy] if goals.strategy else (
        ["single"] if world == 1 else ["ddp", "zero2", "fsdp", "zero3"])
    micro_options = [m for m in (64, 32, 16, 8, 4, 2, 1) if (effective // world) % m == 0]
    if goals.micro_batch:
        micro_options = [goals.micro_batch]
    checkpoint_options = [goals.checkpointing] if goals.checkpointing is not None else [False, True]
    gpu = hardware.smallest_gpu
    tflops = (gpu.bf16_tflops or 100.0) if gpu else CPU_TFLOPS
    usable = int(budget * (1 - HEADROOM))
    hybrid_options = [False, True] if hardware.nodes > 1 and hardware.gpus_per_node > 1 else [False]

    def search(strategy_options: list[str], offload_options: list[str], optimizer: str) -> list[Candidate]:
        found = []
        for strategy in strategy_options:
            for offload, hybrid in ((o, h) for o in offload_options for h in hybrid_options):
                if offload != "none" and strategy not in ("fsdp", "zero2", "zero3"):
                    continue
                if offload == "params" and strategy == "zero2":
                    continue
                if hybrid and strategy != "fsdp":
                    continue
                shards = hardware.gpus_per_node if hybrid else world
                for checkpointing in checkpoint_options:
                    for micro in micro_options:
                        setup = _replace(base, strategy=strategy, offload=offload, micro_batch=micro,
                                         checkpointing=checkpointing, num_gpus=shards, optimizer=optimizer)
                        est = estimate(model, setup, budget)
                        if est.total > usable:
                            continue
                        if offload != "none" and est.host_ram > hardware.host_ram_available:
                            continue
                        grad_accum = effective // (micro * world)
                        cost = step_cost(
                            total_params=model.total_params, trainable_params=est.trainable_params,
                            tokens_per_step=effective * base.seq_len, method=base.method, strategy=strategy,
                            offload=offload, checkpointing=checkpointing, world=world, nodes=hardware.nodes,
                            tflops=tflops, interconnect=hardware.interconnect, micro_tokens=micro * base.seq_len,
                            num_layers=model.num_layers, grad_accum=grad_accum, hybrid=hybrid,
                            gpus_per_node=hardware.gpus_per_node)
                        found.append(Candidate(strategy, offload, micro, checkpointing, est, cost.total_s,
                                               hybrid, optimizer))
                        break  # largest fitting micro-batch for this strategy and checkpointing
        return found

    tiers: list[tuple[list[str], list[str], str, str]] = [
        (strategies, [goals.offload] if goals.offload else ["none"], base.optimizer, "")]
    if not goals.optimizer and hardware.device == "cuda" and base.method == "full":
        tiers.append((strategies, ["none"], "adamw_8bit",
                      "8-bit AdamW (bitsandbytes): fp32 AdamW states do not fit; 8-bit states take a quarter"))
    if not goals.offload:
        offload_strategies = strategies if world > 1 or goals.strategy else ["zero2", "zero3"]
        tiers.append((offload_strategies, ["optimizer", "params"], base.optimizer,
                      "nothing fits on the GPU otherwise"))
    fitting: list[Candidate] = []
    why = ""
    for strategy_options, offload_options, optimizer, why in tiers:
        fitting = search(strategy_options, offload_options, optimizer)
        if fitting:
            break
    if not fitting:
        forced = _forced_choices(goals)
        if forced:
            free = Goals(**{**goals.__dict__, **{key: None for key in forced}})
            try:
                alternative = choose(hardware, model, base, free, budget, effective, world, {})
            except UserError:
                alternative = None
            if alternative is not None:
                asked = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in forced.items())
                raise UserError(
                    f"{asked} does not fit: {_forced_estimate(model, base, forced, world, budget)}",
                    title="Does not fit",
                    fix=f"Leave it to the planner, which fits {_label(alternative)} "
                        f"({alternative.estimate.total / GiB:.1f} GiB per {'GPU' if hardware.device == 'cuda' else 'process'}).")
        raise _nothing_fits(hardware, model, base, budget, world, goals)
    best = min(fitting, key=lambda c: c.step_s)
    est = best.estimate
    words = _strategy_words(best.strategy)
    if best.hybrid:
        words = (f"FSDP2 hybrid shard (HSDP): sharded across the {hardware.gpus_per_node} GPUs of each machine, "
                 f"replicated across the {hardware.nodes} machines so weight gathers stay on the fast local links")
    if world == 1 and best.strategy != "single":
        words += " on one GPU, for its CPU offload"
    reasons["strategy"] = (
        f"{words}: {est.total / GiB:.2f} GiB of {budget / GiB:.2f} GiB per "
        f"{'process' if hardware.device == 'cpu' else 'GPU'} at micro-batch {best.micro_batch}; "
        + ("the fastest of the setups that fit" + _alternatives(best, fitting) if not goals.strategy
           else "asked for"))
    if best.optimizer != base.optimizer:
        reasons["optimizer"] = why
    if best.offload != "none":
        reasons["offload"] = (f"{best.offload} offload to host RAM: {why or 'asked for'}; "
                              f"needs {est.host_ram / GiB:.0f} GiB of {hardware.host_ram_available / GiB:.0f} GiB host RAM")
    reasons["activation_checkpointing"] = (
        ("on: recomputing activations in backward is what makes it fit" if best.checkpointing else
         "off: activations fit without recomputation")
        if goals.checkpointing is None else ("on" if best.checkpointing else "off") + " (asked for)")
    return best


_FORCEABLE = ("strategy", "offload", "micro_batch", "checkpointing", "optimizer")


def _forced_choices(goals: Goals) -> dict[str, object]:
    return {key: getattr(goals, key) for key in _FORCEABLE if getattr(goals, key) is not None}


def _forced_estimate(model: ModelSpec, base: TrainSetup, forced: dict[str, object], world: int, budget: int) -> str:
    changes = {key: value for key, value in forced.items() if key in ("strategy", "offload", "micro_batch",
                                                                       "checkpointing", "optimizer")}
    setup = _replace(base, **{"strategy": "single" if world == 1 else "ddp", "micro_batch": 1, **changes})
    est = estimate(model, setup, budget)
    return f"it needs {est.total / GiB:.1f} GiB per device, and {budget / GiB:.1f} GiB is free."


def _label(c: Candidate) -> str:
    text = f"{'hsdp' if c.hybrid else c.strategy} at micro-batch {c.micro_batch}"
    if c.checkpointing:
        text += " with checkpointing"
    if c.offload != "none":
        text += f", {c.offload} offload"
    if c.optimizer != "adamw":
        text += f", {c.optimizer}"
    return text


def _check_choices(goals: Goals, world: int) -> None:
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
    if goals.optimizer is not None and goals.optimizer not in OPTIMIZERS:
        raise UserError(f"Unknown optimizer '{goals.optimizer}'.", title="Optimizer",
                        fix=f"Use one of: {', '.join(OPTIMIZERS)}.")


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


def _replace(setup: TrainSetup, **changes: object) -> TrainSetup:
    from dataclasses import replace

    return replace(setup, **changes)  # type: ignore[arg-type]


def _strategy_words(strategy: str) -> str:
    return {
        "single": "one process",
        "ddp": "DDP (weights replicated, gradients all-reduced)",
        "zero2": "DeepSpeed ZeRO-2 (optimizer states and gradients sharded)",
        "fsdp": "FSDP2 full shard (weights, gradients and optimizer states sharded)",
        "zero3": "DeepSpeed ZeRO-3 (weights, gradients and optimizer states sharded)",
    }[strategy]


def _nothing_fits(hardware: HardwareProfile, model: ModelSpec, base: TrainSetup, budget: int, world: int,
                  goals: Goals) -> UserError:
    """Name the smallest change that would make a plan fit."""
    smallest = _replace(base, strategy="zero3" if world > 1 else "single", micro_batch=1, checkpointing=True)
    est = estimate(model, smallest, budget)
    suggestions = []
    if base.method != "qlora" and hardware.device == "cuda":
        q = estimate(model, _replace(smallest, method="qlora"), budget)
        if q.total <= budget * (1 - HEADROOM):
            suggestions.append(f"fits with QLoRA (--method qlora): {q.total / GiB:.1f} GiB per GPU")
    if base.method == "full":
        lo = estimate(model, _replace(smallest, method="lora"), budget)
        if lo.total <= budget * (1 - HEADROOM):
            suggestions.append(f"fits with LoRA (--method lora): {lo.total / GiB:.1f} GiB per GPU")
    if hardware.device == "cuda":
        offload = estimate(model, _replace(smallest, strategy="zero3", offload="params", num_gpus=world,
                                           gpus_per_node=hardware.gpus_per_node), budget)
        if offload.total <= budget * (1 - HEADROOM) and offload.host_ram > hardware.host_ram_available:
            need = math.ceil(offload.host_ram / GiB / 16) * 16
            suggestions.append(f"fits with ZeRO-3 and CPU offload on a host with {need} GiB of RAM per machine "
                               f"({hardware.host_ram_available / GiB:.0f} GiB here; with --gpus add ',ram={need}GB')")
    seq = base.seq_len
    while seq > 256:
        seq //= 2
        short = estimate(model, _replace(smallest, seq_len=seq), budget)
        if short.total <= budget * (1 - HEADROOM):
            suggestions.append(f"fits at {seq} tokens (--max-length {seq})")
            break
    if hardware.device == "cuda":
        for extra in range(1, 512):
            more = estimate(model, _replace(smallest, strategy="zero3", num_gpus=world + extra), budget)
            if more.total <= budget * (1 - HEADROOM):
                gpu = hardware.smallest_gpu
                size = f"{gpu.total_memory / GiB:.0f} GB " if gpu else ""
                text = f"needs {extra} more {size}GPU(s) with ZeRO-3/FSDP ({world + extra} in all"
                per_node = hardware.gpus_per_node
                if per_node > 1:
                    text += f": {math.ceil((world + extra) / per_node)} nodes of {per_node}"
                suggestions.append(text + ")")
                break
    tail = "; ".join(suggestions) if suggestions else "try a smaller model"
    return UserError(
        f"{model.name} ({format_params(model.total_params)} parameters, {base.method}) does not fit: even "
        f"fully sharded at micro-batch 1 with checkpointing it needs {est.total / GiB:.1f} GiB per "
        f"{'GPU' if hardware.device == 'cuda' else 'process'}, and {budget / GiB:.1f} GiB is free.",
        title="Does not fit", fix=tail)


def format_params(count: int) -> str:
    """8.03B, 494M, 226K: parameter counts as people write them."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(count)
