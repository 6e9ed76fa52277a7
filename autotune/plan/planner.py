"""plan(hardware, model, dataset, goals) -> Plan, with a reason for every choice.

Pure: no I/O, no clocks, no processes. The order of decisions:
1. dataset rules (epochs, learning rate, LoRA rank, length cap) from the data's size class;
2. max length from the real token-length distribution, capped by the rule and the model;
3. precision from the device (bf16 from compute capability 8.0, fp16 below, fp32 on the CPU);
4. strategy, offload, micro-batch and activation checkpointing: every candidate that fits the
   memory budget with headroom, ranked by the cost model (llmwizard.autotune.plan.search, llmwizard.autotune.memory.throughput);
5. gradient accumulation so that micro-batch x processes x accumulation = the effective batch;
6. schedule: eval, save and logging steps from the steps per epoch.
Each step is a function that returns its value with its reason (a `Decision`); `plan()` is the
steps in this order, and the Plan. Raising a micro-batch that ran out of memory: llmwizard.autotune.plan.replan.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.goals import GOAL_FIELDS, Goals
from llmwizard.autotune.machine.hardware_types import HardwareProfile
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.memory.long_context import context_parallel_sizes, packed_rows, packing_words
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.plan.no_fit import format_params
from llmwizard.autotune.plan import plan_steps as step
from llmwizard.autotune.plan import task_steps
from llmwizard.autotune.plan import Plan
from llmwizard.autotune.plan.plan_steps import DEFAULT_EFFECTIVE_BATCH, RANDOM_INIT_LR_SCALE, Decision
from llmwizard.autotune.plan.replan import setup_of, shrink_micro_batch
from llmwizard.autotune.memory.savers import fused_in_backward
from llmwizard.autotune.schema import Attention, Strategy
from llmwizard.autotune.plan.no_fit import DoesNotFit
from llmwizard.autotune.plan.search import HEADROOM, Choice, check_choices, choose
from llmwizard.autotune.plan import TaskSettings
from llmwizard.autotune.train_setup import Calibrated, TrainSetup

# Names callers import from here besides plan().
__all__ = ["DEFAULT_EFFECTIVE_BATCH", "HEADROOM", "RANDOM_INIT_LR_SCALE", "fixed_setup", "format_params", "plan",
           "setup_of", "shrink_micro_batch"]

T = TypeVar("T")


class _Record:
    """The reasons and warnings `plan()` gathers, in the order its steps decide."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}
        self.warnings: list[str] = []

    def take(self, key: str, decision: Decision[T]) -> T:
        if decision.reason:
            self.reasons[key] = decision.reason
        self.warnings.extend(decision.warnings)
        return decision.value


def plan(hardware: HardwareProfile, model: ModelSpec, dataset: DatasetProfile, goals: Goals,
         *, name: str | None = None, calibration: dict[str, Calibrated] | None = None) -> Plan:
    """Every decision for one run, with its reason: the steps of the module docstring, in order.
    `calibration`: earlier probes' measured/expected ratios by strategy, for this machine's GPU,
    this model family and method (llmwizard.autotune.machine.calibration); the memory estimates use them."""
    record = _Record()
    record.warnings.extend(model.warnings)  # what the model's config leaves uncertain
    # 1. Dataset rules, and the method they are for.
    rule = record.take("dataset", step.size_rule(dataset, goals))
    method = record.take("method", step.method(hardware, goals, model))
    epochs = record.take("epochs", step.epochs(goals, rule, model))
    lr = record.take("learning_rate", step.learning_rate(model, goals, rule, method))
    task = goals.task_name
    if task != "sft":  # (SFT plans read as before)
        record.take("task", task_steps.task(goals))
    lr = record.take("learning_rate", task_steps.learning_rate(goals, lr, record.reasons.get("learning_rate", ""), model))
    epochs = record.take("epochs", task_steps.epochs(goals, epochs, record.reasons.get("epochs", ""), dataset))
    settings_decision = task_steps.settings(goals, dataset, method, model)
    settings = record.take("task_settings", settings_decision) if settings_decision else None
    lora = record.take("lora", step.lora(model, goals, rule, method))
    if model.vision is not None:
        record.take("vision", step.vision_tower(model, dataset, goals, method))
    # 2. Max length from the real distribution.
    if settings is not None and task == "grpo":  # the prompt and the completion sampled after it
        max_length = record.take("max_length", task_steps.max_length(settings, dataset, model))
    else:
        max_length = record.take("max_length", step.max_length(model, dataset, goals, rule.max_length))
    # 3. Precision.
    precision = record.take("precision", step.precision(hardware, goals))
    # 4. World layout, then strategy, offload, micro-batch and checkpointing.
    world = record.take("device", step.world(hardware, goals))
    effective = record.take("effective_batch", step.effective_batch(goals, world.size))
    if settings is not None and settings.num_generations:
        effective = record.take("effective_batch", task_steps.effective_batch(
            goals, world.size, settings.num_generations, effective))
    step.activation_offloading(hardware, goals)
    liger = record.take("liger_kernel", step.liger(hardware, goals, model))
    base = step.base_setup(hardware, world, method, max_length, precision, goals, lora, model, dataset, liger)
    if calibration:
        base = dataclasses.replace(base, calibration=calibration)
    base = task_steps.setup(base, task, settings)
    budget = step.budget(hardware, world.per_node)
    choice, settings = _choose_with_task(hardware, model, base, goals, budget, effective, world.size, settings, record)
    record.reasons.update(choice.reasons)
    chosen = choice.best
    if model.moe is not None:  # experts: total and active, how the strategy holds them, expert parallelism
        record.reasons["experts"] = step.experts(model, chosen.strategy, world.size, base)
    # 5. Gradient accumulation.
    # (context parallelism: cp ranks share each sequence, so world / cp ranks hold different ones)
    if fused_in_backward(chosen.optimizer):
        # AdaLomo updates inside backward: no accumulation, and its learning rate is relative.
        effective = record.take("effective_batch", step.fused_effective_batch(goals, chosen.micro_batch, effective))
        lr = record.take("learning_rate", step.fused_learning_rate(goals, lr))
    grad_accum = record.take("batch", step.grad_accum(goals, chosen.micro_batch, world.size // chosen.cp, effective))
    packing = bool(goals.packing)
    launcher = record.take("launcher", step.launcher(goals, chosen.strategy))
    report_to = record.take("report_to", step.trackers(goals))
    # 6. Schedule.
    eval_fraction = goals.eval_fraction if goals.eval_fraction is not None else 0.1
    words = packing_words(dataset, max_length, eval_fraction, effective, packing)
    if packing or (hardware.device == "cuda" and words.startswith("off (")):  # said where it matters
        record.reasons["packing"] = words
    rows = packed_rows(dataset, max_length, eval_fraction) if packing else None
    schedule = record.take("schedule", step.schedule(dataset, goals, effective, epochs, rows))
    return Plan(
        name=name or step.run_name(model.name, dataset.source),
        model=model.path if model.source == "local" and model.path else model.name,
        model_source=model.source, layer_cls=",".join(model.wrap_classes or [model.layer_cls]),
        dataset=dataset.source, dataset_format=dataset.format,
        device=hardware.device, hardware=hardware.describe(),
        strategy=chosen.strategy, offload=chosen.offload, launcher=launcher,
        num_machines=world.nodes, num_processes=world.size, method=method,
        precision=chosen.precision or precision,
        optimizer=chosen.optimizer, micro_batch=chosen.micro_batch, grad_accum=grad_accum, effective_batch=effective,
        activation_checkpointing=chosen.checkpointing, max_length=max_length, epochs=float(epochs),
        max_steps=goals.max_steps or -1, learning_rate=float(lr),
        lr_scheduler=goals.lr_scheduler or "cosine",
        warmup_ratio=goals.warmup_ratio if goals.warmup_ratio is not None else 0.03,
        weight_decay=goals.weight_decay if goals.weight_decay is not None else 0.0,
        lora=lora, eval_fraction=schedule.eval_fraction, eval_steps=schedule.eval_steps,
        save_steps=schedule.eval_steps, logging_steps=schedule.logging_steps, seed=goals.seed,
        trainable_params=chosen.estimate.trainable_params, total_params=model.total_params,
        estimate=chosen.estimate, reasons=record.reasons, warnings=record.warnings, hybrid_shard=chosen.hybrid,
        report_to=report_to,
        probe=goals.probe if goals.probe is not None else hardware.device == "cuda",
        predicted_tokens_per_s=round(effective * max_length / chosen.step_s, 3) if chosen.step_s > 0 else 0.0,
        context_parallel=chosen.cp, activation_offloading=chosen.offload_activations, packing=packing,
        liger_kernel=liger,
        train_vision_tower=bool(model.vision) and (method == "full" or goals.train_vision_tower),
        image_patches=base.image_patches, trust_remote_code=goals.trust_remote_code,
        pinned=sorted(goals.explicit & GOAL_FIELDS), task=task, task_settings=settings,
    )


def _choose_with_task(hardware: HardwareProfile, model: ModelSpec, base: TrainSetup, goals: Goals, budget: int,
                      effective: int, world: int, settings: TaskSettings | None,
                      record: _Record) -> tuple[Choice, TaskSettings | None]:
    """The search, with the task's reference settled: a full fine-tuning DPO or KTO run keeps a
    second copy of the weights when that fits, and otherwise precomputes the reference log-probs
    in a pass before training (the cheapest that fits). When nothing fits, the task's own levers
    (precompute, a LoRA reference, fewer generations, shorter completions) lead the advice."""
    try:
        return choose(hardware, model, base, goals, budget, effective, world), settings
    except DoesNotFit as refusal:
        if settings is None:
            raise
        error = refusal
    if settings.reference == "copy" and goals.reference is None and base.task in ("dpo", "kto"):
        try:
            choice = choose(hardware, model, dataclasses.replace(base, reference="precompute"), goals, budget,
                            effective, world)
        except DoesNotFit:
            pass
        else:
            settings = task_steps.with_reference(settings, "precompute")
            record.reasons["task_settings"] = record.reasons.get("task_settings", "").replace(
                "reference copy: a second, frozen copy of the weights (full fine-tuning changes every weight)",
                "reference precompute: a second copy of the weights does not fit, so the reference log-probs are "
                "computed in one no-grad pass over the data before training (about a third of an epoch's compute "
                "more) and no reference model is held")
            return choice, settings
    def try_with(changes: dict[str, Any], changed_goals: Goals) -> Choice:
        return choose(hardware, model, dataclasses.replace(base, **changes), changed_goals, budget, effective, world)

    raise task_steps.lead_with_levers(error, try_with, base, goals, settings)


def fixed_setup(hardware: HardwareProfile, model: ModelSpec, goals: Goals, seq_len: int, micro_batch: int,
                attention: Attention = "sdpa") -> tuple[TrainSetup, list[str]]:
    """The one setup `llmwizard estimate` sizes: every knob as given, checked by the plan's own
    steps (precision for the GPU, strategy, offload and optimizer together, context parallelism,
    activation offloading and Liger where they can run). Unset knobs: LoRA, no offload, one process
    or DDP (ZeRO-3 with an offload, FSDP2 on GPUs or ZeRO-3 elsewhere with a split sequence).
    Returns the setup and the warnings a plan would give."""
    if seq_len > model.max_positions:
        raise UserError(f"--seq {seq_len} is longer than {model.name} allows ({model.max_positions} positions).",
                        title="Sequence length", fix=f"Use --seq {model.max_positions} or less.")
    record = _Record()
    method = goals.method or "lora"
    precision = record.take("precision", step.precision(hardware, goals))
    world = record.take("device", step.world(hardware, goals))
    step.activation_offloading(hardware, goals)
    liger = record.take("liger_kernel", step.liger(hardware, goals, model))
    offload = goals.offload or "none"
    cp = goals.context_parallel or 1
    strategy: Strategy = goals.strategy or (
        "zero3" if offload != "none" else ("fsdp" if hardware.device == "cuda" else "zero3") if cp > 1
        else "single" if world.size == 1 else "ddp")
    checked = dataclasses.replace(goals, strategy=strategy)
    check_choices(checked, world.size, hardware.device, method)
    setup = TrainSetup(method=method, strategy=strategy, offload=offload, num_gpus=world.size,
                       micro_batch=micro_batch, seq_len=seq_len, checkpointing=bool(goals.checkpointing),
                       precision=precision, optimizer=goals.optimizer or "adamw", attention=attention,
                       lora_r=goals.lora_r or 8, device=hardware.device, gpus_per_node=world.per_node,
                       offload_activations=bool(goals.activation_offloading), liger=liger)
    # (an asked size is checked and returned as it is)
    context_parallel_sizes(hardware, model, setup, checked, world.size, micro_batch * world.size)
    return dataclasses.replace(setup, cp=cp), record.warnings
