"""What to say when nothing fits: the figures behind a "does not fit" error and the smallest change
that would make a plan fit. Pure: every figure comes from llmwizard.autotune.memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from llmwizard.autotune.memory.activations import LIGER_MODELS
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.machine.gpu_catalog import HOST_RAM_USABLE
from llmwizard.autotune.machine.hardware_types import GiB, HardwareProfile
from llmwizard.autotune.memory import estimate
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.train_setup import TrainSetup


class DoesNotFit(UserError):
    """A "does not fit" refusal whose fix is worked out when it is first read. The searched fixes
    (the largest length and the smallest hardware that fit) run the planner's search a few dozen
    times; a caller that only tries settings and reads no fix (llmwizard.autotune.plan.refusal, the
    wizard's what-if fields) does not pay for them."""

    def __init__(self, message: str, *, title: str = "Does not fit", make_fix: Callable[[], str]) -> None:
        self._make_fix: Callable[[], str] | None = make_fix
        self._fix: str | None = None
        super().__init__(message, title=title)

    @property  # type: ignore[override]
    def fix(self) -> str | None:
        if self._make_fix is not None:
            self._fix, self._make_fix = self._make_fix(), None
        return self._fix

    @fix.setter
    def fix(self, value: str | None) -> None:
        if value is not None or self._make_fix is None:  # (UserError.__init__ sets None first)
            self._fix, self._make_fix = value, None


def forced_estimate(model: ModelSpec, base: TrainSetup, forced: dict[str, object], world: int, budget: int,
                    limit: float, host_ram: int) -> str:
    """The figures behind "<asked> does not fit": the smallest setup with the asked-for knobs
    (micro-batch 1 and checkpointing unless asked otherwise) against the usable budget."""
    changes = {key: value for key, value in forced.items() if key in ("strategy", "offload", "micro_batch",
                                                                       "checkpointing", "optimizer", "precision")}
    setup = replace(base, **{"strategy": "single" if world == 1 else "ddp", "micro_batch": 1,  # type: ignore[arg-type]
                             "checkpointing": True, **changes})
    est = estimate(model, setup, budget)
    at = f"at micro-batch {setup.micro_batch}" + (" with checkpointing" if setup.checkpointing else "")
    if est.total > limit:
        return (f"{at} it needs {est.total / GiB:.1f} GiB per device, and {limit / GiB:.1f} GiB is usable "
                f"({budget / GiB:.1f} GiB free, less the headroom the planner keeps).")
    if est.host_ram > host_ram:
        return (f"{at} it needs {est.host_ram / GiB:.1f} GiB of host RAM per machine, and "
                f"{host_ram / GiB:.1f} GiB is available.")
    return f"{at} it needs {est.total / GiB:.1f} GiB per device, but no setup with it divides the batch evenly."


def nothing_fits(hardware: HardwareProfile, model: ModelSpec, base: TrainSetup, budget: int, world: int,
                 limit: float, lean: dict[str, object] | None = None,
                 lean_sharded: dict[str, object] | None = None,
                 searched: Callable[[], tuple[str, str]] | None = None, cp: int = 1) -> UserError:
    """Name the smallest change that would make a plan fit: what fits within `limit` bytes (the
    budget less the search's headroom) with another method, CPU offload, a shorter length or more GPUs.
    `lean` is the leanest memory saver the search may use (pure bf16, a low-memory optimizer:
    llmwizard.autotune.memory.savers); the figures are for the setup with it. `lean_sharded`: the same
    for more GPUs than one (AdaLomo runs on one GPU only; default: `lean`). `searched` gives the
    largest length and the smallest hardware that fit, found by the planner's own search over
    every tier, context parallelism included (llmwizard.autotune.plan.search.searched_fixes; "" where
    none fits), called only when the fix is read; without it they are estimated here for the
    leanest setup without context parallelism. `cp`: the widest split of one sequence over these
    GPUs that the search may use; the figures are for the setup split so."""
    lean = lean or {}
    sharded_lean = lean if lean_sharded is None else lean_sharded
    sharded = replace(base, **{"micro_batch": 1, "checkpointing": True, **sharded_lean})  # type: ignore[arg-type]
    smallest = replace(base, **{"strategy": "zero3" if world > 1 else "single", "micro_batch": 1,  # type: ignore[arg-type]
                                "checkpointing": True, "cp": cp if world > 1 else 1, **lean})
    est = estimate(model, smallest, budget)
    suggestions = []
    if base.method != "qlora" and hardware.device == "cuda":
        q = estimate(model, replace(smallest, method="qlora", optimizer=base.optimizer, precision=base.precision,
                                   offload_activations=False), budget)
        if q.total <= limit:
            suggestions.append(f"fits with QLoRA (--method qlora): {q.total / GiB:.1f} GiB per GPU")
    if base.method == "full":
        lo = estimate(model, replace(smallest, method="lora", optimizer=base.optimizer, precision=base.precision,
                                    offload_activations=False), budget)
        if lo.total <= limit:
            suggestions.append(f"fits with LoRA (--method lora): {lo.total / GiB:.1f} GiB per GPU")
    if hardware.device == "cuda":
        # (the search offloads with the planned optimizer and fp32 masters: DeepSpeed's CPU Adam)
        offload = estimate(model, replace(sharded, strategy="zero3", offload="params", num_gpus=world,
                                           gpus_per_node=hardware.gpus_per_node, optimizer=base.optimizer,
                                           precision=base.precision), budget)
        if offload.total <= limit and offload.host_ram > hardware.host_ram_available:
            # ",ram=" takes a machine's total RAM, of which HOST_RAM_USABLE is planned on: ask for
            # the total whose usable share holds the offload.
            need = math.ceil(offload.host_ram / HOST_RAM_USABLE / GiB / 16) * 16
            suggestions.append(f"fits with ZeRO-3 and CPU offload on a host with {need} GiB of RAM per machine "
                               f"({offload.host_ram / GiB:.0f} GiB of it used; {hardware.host_ram_available / GiB:.0f} "
                               f"GiB usable here; with --gpus add ',ram={need}GB')")
    if hardware.device == "cuda" and not base.liger and model.model_type in LIGER_MODELS:
        liger = estimate(model, replace(smallest, liger=True), budget)
        if liger.total <= limit:
            suggestions.append(f"fits with Liger's kernels (--liger-kernel, needs the liger-kernel package): "
                               f"{liger.total / GiB:.1f} GiB per GPU")
    if hardware.device == "cpu" and world > 1:
        fewer = _fewer_cpu_processes(hardware, model, smallest, world, limit / budget if budget else 0.0)
        if fewer:
            suggestions.append(fewer)
    seq = base.seq_len if searched is None else 0
    while seq > 256:
        seq //= 2
        short = estimate(model, replace(smallest, seq_len=seq), budget)
        if short.total <= limit:
            suggestions.append(f"fits at {seq} tokens (--max-length {seq})")
            break
    if hardware.device == "cuda" and searched is None:
        for extra in range(1, 512):
            more = estimate(model, replace(sharded, strategy="zero3", num_gpus=world + extra), budget)
            if more.total <= limit:
                gpu = hardware.smallest_gpu
                size = f"{gpu.total_memory / GiB:.0f} GB " if gpu else ""
                text = f"needs {extra} more {size}GPU(s) with ZeRO-3/FSDP ({world + extra} in all"
                per_node = hardware.gpus_per_node
                if per_node > 1:
                    text += f": {math.ceil((world + extra) / per_node)} nodes of {per_node}"
                suggestions.append(text + ")")
                break
    def fix() -> str:
        found = [text for text in (searched() if searched else ()) if text]
        return "; ".join(suggestions + found) or "try a smaller model"

    shared = (f" (the host RAM shared by {world // max(1, hardware.nodes)} processes)"
              if hardware.device == "cpu" and world > 1 else "")
    return DoesNotFit(
        f"{model.name} ({format_params(model.total_params)} parameters, {base.method}) does not fit: even "
        f"fully sharded at micro-batch 1 with checkpointing{_lean_words(lean, smallest.cp)} it needs "
        f"{est.total / GiB:.1f} GiB per "
        f"{'GPU' if hardware.device == 'cuda' else 'process'}, and {budget / GiB:.1f} GiB is free{shared}"
        + (f" ({limit / GiB:.1f} GiB usable: the planner keeps {1 - limit / budget:.0%} as headroom)."
           if est.total <= budget else "."),
        make_fix=fix)


def _fewer_cpu_processes(hardware: HardwareProfile, model: ModelSpec, smallest: TrainSetup, world: int,
                         usable: float) -> str:
    """On the CPU every process takes its share of the host RAM: the most processes (halving from
    the asked count) whose share fits (`usable` of it, as the search keeps headroom), as the fix,
    or "" when even one process does not fit."""
    per_node = world // max(1, hardware.nodes)
    count = per_node // 2
    while count >= 1:
        share = hardware.host_ram_available // count
        setup = replace(smallest, strategy="zero3" if count * hardware.nodes > 1 else "single",
                        num_gpus=count * hardware.nodes, gpus_per_node=count)
        if estimate(model, setup, share).total <= share * usable:
            return (f"fits with {count} process(es) per machine (--processes {count}): each of {per_node} processes "
                    f"gets 1/{per_node} of the {hardware.host_ram_available / GiB:.1f} GiB of RAM")
        count //= 2
    return ""


def _lean_words(lean: dict[str, object], cp: int = 1) -> str:
    words = [f"{cp} GPUs per sequence"] if cp > 1 else []
    words += [str(lean[key]) for key in ("precision", "optimizer") if key in lean]
    if lean.get("offload_activations"):
        words.append("activation offloading")
    return (", " + ", ".join(words)) if words else ""


def format_params(count: int) -> str:
    """8.03B, 494M, 226K: parameter counts as people write them."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(count)
