"""The planner's steps, one function each: what it decides and why (a `Decision`).

llmwizard.autotune.plan.planner calls them in the order its docstring gives; the search for the
strategy (step 4) is llmwizard.autotune.plan.search. Pure: no I/O, no clocks, no processes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from llmwizard.autotune.memory import vision
from llmwizard.autotune.memory.activations import EXPERTS_TARGET, LIGER_MODELS, expert_targets, layout, moe_lora_note
from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.embedded import EMBEDDED_MODEL
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware_types import HardwareProfile
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.plan import LoraSettings
from llmwizard.autotune.data.rules import RULES, SizeRule, classify, round_up
from llmwizard.autotune.memory.savers import ADALOMO_LEARNING_RATE
from llmwizard.autotune.schema import MAX_BATCH, MAX_LEARNING_RATE, Launcher, Method, Precision, Tracker
from llmwizard.autotune.train_setup import TrainSetup

DEFAULT_EFFECTIVE_BATCH = 16
# The embedded default is a random-init toy model: it learns visibly at fifteen times the rule's rate
# (3e-3 for the small-dataset rule, and no tenth for full fine-tuning: no pretrained weights to keep).
RANDOM_INIT_LR_SCALE = 15
# ... and learns to add from scratch in about three times the rule's epochs: held-out sums right went
# from about half at 20 epochs to 82% at 40 and 92% at 60 (2 CPU cores, 42 s for the whole command).
RANDOM_INIT_EPOCHS_SCALE = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Decision(Generic[T]):
    """What one step decided, why, and what the user should know about it."""

    value: T
    reason: str = ""                  # empty: the step gives no reason of its own
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class World:
    """The processes of the run: nodes alike, the same number of processes on each."""

    nodes: int
    per_node: int                     # processes per node

    @property
    def size(self) -> int:
        return self.nodes * self.per_node


@dataclass(frozen=True)
class Schedule:
    """How much data is held out, and how often the run evaluates, checkpoints and logs."""

    eval_fraction: float
    eval_steps: int                   # also the checkpoint interval
    logging_steps: int


# ----------------------------------------------------------------------------- 1. dataset rules

def size_rule(dataset: DatasetProfile, goals: Goals) -> Decision[SizeRule]:
    """The preset's size class when it names one (warning when the data is the other), else the data's."""
    if goals.dataset_size not in RULES:
        size, why = classify(dataset)
        return Decision(RULES[size], f"{size} dataset: {why}")
    size = goals.dataset_size
    actual, why = classify(dataset)
    origin = goals.origin("dataset_size")
    warnings = () if actual == size else (
        f"dataset_size {size} ({origin}) but this dataset is {actual}: {why}; consider --preset {actual}-dataset.",)
    verdict = "as the data is" if actual == size else f"though the data is {actual}"
    return Decision(RULES[size], f"{size} dataset ({origin}), {verdict}: {why}", warnings)


def _rule_text(rule: SizeRule) -> str:
    return f"Google's rule for {rule.size} datasets"


def trains_fully_by_default(goals: Goals, model: ModelSpec | None) -> bool:
    """The embedded tiny model is randomly initialised: full fine-tuning unless the user set a method
    (a preset's method gives way; see `method`)."""
    from_rule = goals.method is None or (goals.preset is not None and "method" not in goals.explicit)
    return model is not None and model.name == EMBEDDED_MODEL and from_rule


def default_method(goals: Goals, model: ModelSpec | None) -> Method:
    """The method a plan takes when the user picks none: full for the embedded model, else the
    preset's, else LoRA. A face shows this as the choice already made."""
    return "full" if trains_fully_by_default(goals, model) else (goals.method or "lora")


def method(hardware: HardwareProfile, goals: Goals, model: ModelSpec | None = None) -> Decision[Method]:
    if trains_fully_by_default(goals, model):
        # LoRA adapters on frozen random layers hardly learn in the default run (2/90 held-out sums
        # right at rank 16, against 16/40 for full fine-tuning). A method the user set is kept.
        given = f"instead of {goals.method} {goals.origin('method')}, " if goals.method else ""
        return Decision("full", f"full fine-tuning: every weight trains ({given}because the embedded tiny model is "
                                "randomly initialised: LoRA on its frozen random layers barely learns; "
                                "--method lora to compare)")
    method = goals.method or "lora"
    if method not in ("full", "lora", "qlora"):
        raise UserError(f"Unknown method '{method}'.", title="Method", fix="Use full, lora or qlora.")
    if method == "qlora" and hardware.device == "cpu":
        raise UserError("QLoRA needs an NVIDIA GPU: bitsandbytes' 4-bit kernels do not run on the CPU.",
                        title="Method", fix="Use --method lora on this machine, or plan with --gpus.")
    return Decision(method, {
        "lora": "LoRA: adapters train a small share of the weights; the guidance's default for tuning",
        "qlora": "QLoRA: a 4-bit NF4 base with LoRA adapters, for the least memory",
        "full": "full fine-tuning: every weight trains (most memory, most capacity)",
    }[method] + (f" ({goals.origin('method')})" if goals.method else ""))


def epochs(goals: Goals, rule: SizeRule, model: ModelSpec | None = None) -> Decision[float]:
    epochs = goals.epochs if goals.epochs is not None else rule.epochs
    reason = f"{epochs:g} epochs: {goals.source('epochs', _rule_text(rule))}"
    if model is not None and model.name == EMBEDDED_MODEL and "epochs" not in goals.explicit:
        base, epochs = epochs, epochs * RANDOM_INIT_EPOCHS_SCALE
        reason = (f"{epochs:g} epochs: {RANDOM_INIT_EPOCHS_SCALE}x the {base:g} "
                  f"{goals.source('epochs', 'of ' + _rule_text(rule))}, because the embedded tiny model learns "
                  "from random weights, and the rule's epochs assume pretrained ones")
    return Decision(epochs, reason)


# Above this a learning rate is almost surely a typo (AdaLomo's relative 5e-4 and the embedded
# model's 15x rates are far below it).
MAX_SENSIBLE_LR = 0.1
# Below this (and above the schema's floor, where updates vanish in fp32) a run hardly trains.
MIN_SENSIBLE_LR = 1e-6


def learning_rate(model: ModelSpec, goals: Goals, rule: SizeRule, method: str) -> Decision[float]:
    rule_text = _rule_text(rule)
    lr = goals.learning_rate if goals.learning_rate is not None else rule.learning_rate
    reason = f"{lr:g}: {goals.source('learning_rate', rule_text)}"
    if method == "full" and goals.learning_rate is None and model.name != EMBEDDED_MODEL:
        lr = rule.learning_rate / 10
        reason = f"{lr:g}: a tenth of the LoRA rule ({rule.learning_rate:g}) for full fine-tuning"
    if model.source == "embedded" and "learning_rate" not in goals.explicit:
        # Google's rates are for tuning pretrained weights; the embedded model starts random and
        # learns visibly only at about fifteen times that rate (RANDOM_INIT_LR_SCALE).
        base = lr
        lr = min(lr * RANDOM_INIT_LR_SCALE, MAX_LEARNING_RATE)  # (the schema's ceiling holds for the plan too)
        reason = (f"{lr:g}: {lr / base:g}x the {base:g} "
                  f"{goals.source('learning_rate', 'of ' + rule_text)}, because the embedded tiny model is randomly "
                  "initialised and the rule's rates assume pretrained weights")
    warnings = ((f"Learning rate {lr:g} is far above what fine-tuning uses (1e-6 to 1e-2): the loss will "
                  "likely diverge; check the value."),) if lr > MAX_SENSIBLE_LR else (
                 (f"Learning rate {lr:g} is far below what fine-tuning uses (1e-6 to 1e-2): the weights will "
                  "hardly move; check the value."),) if lr < MIN_SENSIBLE_LR else ()
    return Decision(lr, reason, warnings)


def lora(model: ModelSpec, goals: Goals, rule: SizeRule, method: str) -> Decision[LoraSettings | None]:
    warnings: tuple[str, ...] = ((f"train_vision_tower ({goals.origin('train_vision_tower')}) changes nothing: {model.name} has no "
                 "vision tower."),) if goals.train_vision_tower and model.vision is None else ()
    if method == "full":
        return Decision(None, warnings=warnings)
    r = goals.lora_r or rule.lora_r
    asked = goals.lora_targets or model.linear_names
    experts = expert_targets(model, goals.lora_targets, goals.lora_dropout)  # the routed experts' fused weights
    targets = [name for name in asked if name != EXPERTS_TARGET]
    unknown = sorted(set(targets) - set(model.linear_names))
    if unknown or not targets:
        raise UserError(f"LoRA targets {', '.join(unknown)} are not linear layers of {model.name}." if unknown else
                        f"LoRA on {model.name} needs at least one linear layer beside the experts.",
                        title="LoRA", fix=f"Choose from: {', '.join(model.linear_names)}"
                        + (f", and {EXPERTS_TARGET} for the routed experts." if model.moe else "."))
    tower = model.vision is not None and goals.train_vision_tower
    lora = LoraSettings(r=r, alpha=goals.lora_alpha or 2 * r,
                        dropout=goals.lora_dropout if goals.lora_dropout is not None else 0.0 if experts else 0.05,
                        target_modules=list(targets), peft_targets=vision.lora_targets(model, list(targets), tower),
                        target_parameters=experts)
    count = model.lora_params(r, lora.adapted()) + (model.vision.lora_params(r) if tower and model.vision else 0)
    # PEFT's "trainable%": of the base plus the adapters (below 100% even for a tiny model at a high rank).
    share = count / (model.total_params + count)
    where = ""
    if model.vision is not None:
        where = (f" of the language model and the vision tower's blocks ({goals.origin('train_vision_tower')})"
                 if tower
                 else f" of the language model; {vision.frozen_note(model)}")
    alpha = f" ({goals.origin('lora_alpha')})" if goals.lora_alpha else ""
    if r > model.hidden_size:
        warnings += ((f"LoRA rank {r} is above {model.name}'s hidden size {model.hidden_size}: the adapters hold "
                      "more parameters than a full-rank update needs; check --lora-r."),)
    return Decision(lora, f"rank {r}, alpha {lora.alpha}{alpha} on {', '.join(targets)}{where}: "
                          f"{count:,} trainable parameters ({share:.2%}); "
                          f"rank {goals.source('lora_r', 'from ' + _rule_text(rule))}"
                          f"{moe_lora_note(model, r, experts)}", warnings)


def vision_tower(model: ModelSpec, dataset: DatasetProfile, goals: Goals, method: str) -> Decision[bool]:
    """Whether the vision tower trains, and what the images add (vision-language models only)."""
    assert model.vision is not None
    trains = method == "full" or goals.train_vision_tower
    images = (f"{dataset.images:,} images in {dataset.examples_with_images:,} examples "
              f"({dataset.image_min_size} to {dataset.image_max_size}), up to {dataset.image_tokens_max} image tokens "
              f"and {_patches(model, dataset):,} tower patches per example"
              if dataset.images else "no images in the data: the tower is not used")
    if method == "full":
        how = ("trains with every other weight (full fine-tuning); under FSDP each vision block and decoder layer "
               "is wrapped")
    elif trains:
        how = f"trains through LoRA adapters on its blocks ({goals.origin('train_vision_tower')})"
    else:
        how = "frozen (LoRA on the language model only; --train-vision-tower adapts it too)"
    return Decision(trains, f"{model.vision_params:,}-parameter vision tower {how}; {images}")


def _patches(model: ModelSpec, dataset: DatasetProfile) -> int:
    """Patches of the longest example's images (SigLIP: its images, each one fixed square)."""
    return vision.sequence_patches(model, dataset.image_tokens_max, dataset.max_images_per_example)


# ----------------------------------------------------------------------------- 2. max length

def max_length(model: ModelSpec, dataset: DatasetProfile, goals: Goals, rule_cap: int) -> Decision[int]:
    if goals.max_length is not None and goals.max_length > model.max_positions:
        raise UserError(
            f"Max length {goals.max_length} is longer than {model.name} allows ({model.max_positions} positions).",
            title="Max length", fix=f"Use --max-length {model.max_positions} or less.")
    if dataset.max_tokens > model.max_positions and not goals.allow_truncation:
        raise UserError(
            f"The longest example in {dataset.source} has {dataset.max_tokens} tokens, more than "
            f"{model.name} allows ({model.max_positions}); p99 is {dataset.p99_tokens}.",
            title="Dataset", fix="Shorten or drop those examples, or pass --allow-truncation to cut them.")
    if goals.max_length is not None:
        length = goals.max_length
        warnings = () if dataset.max_tokens <= length else (
            (f"About {_share_over(dataset, length):.0%} of examples are longer than {length} tokens "
             f"and will be truncated (longest: {dataset.max_tokens})."),)
        return Decision(length, f"{length} tokens ({goals.origin('max_length')}); p99 of the data is "
                                f"{dataset.p99_tokens} tokens",
                        warnings)
    cap = goals.max_length_cap or rule_cap
    # With images the longest example sets the length: TRL cannot cut a sequence inside an image's
    # tokens (the processor then finds fewer image tokens than the image has).
    wanted = round_up(dataset.max_tokens if dataset.images else dataset.p99_tokens)
    length = min(wanted, cap, model.max_positions)
    counted = (f"counted with the {dataset.tokenizer}" if dataset.exact_tokens else
               "estimated at 4 characters per token: the model's tokenizer is not on this machine")
    why = (f"{length} tokens: p99 of the data is {dataset.p99_tokens} tokens ({counted}), "
           "rounded up to a multiple of 64")
    if dataset.images:
        why = (f"{length} tokens: the longest example has {dataset.max_tokens} tokens with its images' "
               f"(p99 {dataset.p99_tokens}; {counted}), rounded up to a multiple of 64; image tokens are "
               f"{dataset.image_token_share:.0%} of the mean length ({dataset.image_tokens_mean:g} per example, "
               f"p99 {dataset.image_tokens_p99}: {dataset.image_tokens_rule})")
    if length < wanted:
        limit = "the model's" if length == model.max_positions else (
            f"preset {goals.preset}'s" if goals.max_length_cap else "the dataset rule's")
        why = f"{length} tokens: {limit} cap; p99 of the data is {dataset.p99_tokens} tokens"
    warnings = () if dataset.max_tokens <= length else (
        (f"About {_share_over(dataset, length):.0%} of examples are longer than {length} tokens and will be "
         f"truncated (longest: {dataset.max_tokens}). Raise --max-length if they matter."),)
    return Decision(length, why, warnings)


def _share_over(dataset: DatasetProfile, length: int) -> float:
    over = sum(count for low, high, count in dataset.histogram if low > length)
    return max(over / max(1, dataset.measured), 0.01)


# ----------------------------------------------------------------------------- 3. precision

def precision(hardware: HardwareProfile, goals: Goals) -> Decision[Precision]:
    if hardware.device == "cpu":
        precision = goals.precision or "fp32"
        warnings = ((f"Precision {precision} on the CPU: it has no fast bf16/fp16 training path, so this runs "
                     "slower than fp32 (leave precision to the planner for fp32)."),) if precision != "fp32" else ()
        return Decision(precision, "fp32: the CPU has no fast bf16/fp16 training path" if not goals.precision
                        else f"{precision} ({goals.origin('precision')})", warnings)
    gpu = hardware.smallest_gpu
    assert gpu is not None
    cc = f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    if goals.precision:
        if goals.precision in ("bf16", "pure_bf16") and gpu.compute_capability < (8, 0):
            raise UserError(f"{goals.precision} needs compute capability 8.0 or newer; {gpu.name} has {cc}.",
                            title="Precision", fix="Use --precision fp16 on this GPU.")
        return Decision(goals.precision, f"{goals.precision} ({goals.origin('precision')})")
    if gpu.compute_capability >= (8, 0):
        return Decision("bf16", f"bf16 mixed precision: {gpu.name} has compute capability {cc} (>= 8.0)")
    return Decision("fp16", f"fp16 mixed precision with loss scaling: {gpu.name} has compute capability {cc} "
                            "(< 8.0, no bf16)")


# ----------------------------------------------------------------------------- 4. world and strategy

def world(hardware: HardwareProfile, goals: Goals) -> Decision[World]:
    """Processes per node: one per GPU (or fewer, asked for); on the CPU, as many as asked."""
    if hardware.device == "cpu":
        world = World(hardware.nodes, goals.processes or 1)
        cores = hardware.cpu_cores
        warnings = ((f"{world.per_node} processes ({goals.origin('processes')}) on {cores} CPU core(s): the ranks "
                     f"share the cores and run slower than {cores} would."),) if world.per_node > cores else ()
        return Decision(world, f"CPU: {world.per_node} process(es) with the gloo backend"
                               + ("" if hardware.notes == [] else f" ({hardware.notes[0]})"), warnings)
    per_node = hardware.gpus_per_node
    if goals.processes and goals.processes != per_node:
        if goals.processes > per_node:
            raise UserError(
                f"processes = {goals.processes} ({goals.origin('processes')}: --processes or the preset key "
                f"processes) is more than this node's {per_node} GPU(s): one process per GPU, and two "
                "processes on one GPU fail with 'Duplicate GPU detected'.",
                title="Processes", fix=f"Use --processes {per_node} or fewer.")
        per_node = goals.processes
    world = World(hardware.nodes, per_node)
    return Decision(world, f"{world.size} GPU process(es): {hardware.describe()}")


def effective_batch(goals: Goals, world: int) -> Decision[int]:
    """The effective batch, raised to a multiple of what one micro-step takes in (no reason of its
    own: the batch reason states it). A fixed accumulation (`grad_accum`) sets it instead: the
    micro-batch x the data-parallel processes x the accumulation."""
    if goals.grad_accum:
        return _accumulated_batch(goals, world)
    effective = goals.effective_batch or DEFAULT_EFFECTIVE_BATCH
    step = world * (goals.micro_batch or 1)
    if not effective % step:
        return Decision(effective)
    raised = step * math.ceil(effective / step)
    if raised > MAX_BATCH:
        each = f"micro_batch {goals.micro_batch}" if goals.micro_batch else "at least one example"
        raise UserError(f"{world} process(es) x {each} is {step} examples per micro-step: the effective batch would "
                        f"be {raised}, more than {MAX_BATCH}.", title="Batch",
                        fix="Plan for fewer processes or machines" + (
                            ", or lower --micro-batch (or the preset's micro_batch)." if goals.micro_batch else "."))
    warnings = ((f"Effective batch raised from {effective} to {raised}: micro-batch {goals.micro_batch} "
                 f"x {world} process(es) must divide it."),) if goals.micro_batch else ()
    return Decision(raised, warnings=warnings)


def _accumulated_batch(goals: Goals, world: int) -> Decision[int]:
    """The effective batch of a fixed accumulation: micro-batch x data-parallel processes x
    grad_accum. Without a micro-batch, the effective batch (asked, or the default raised to a
    multiple) sets it, and the search holds it (llmwizard.autotune.plan.search.fixed_micro_batch)."""
    accum = goals.grad_accum
    assert accum is not None
    parallel = goals.data_parallel(world)
    keys = f"grad_accum {accum} ({goals.origin('grad_accum')})"
    if goals.micro_batch:
        effective = goals.micro_batch * parallel * accum
        if goals.effective_batch and goals.effective_batch != effective:
            raise UserError(
                f"effective_batch {goals.effective_batch} ({goals.origin('effective_batch')}) does not match {keys} "
                f"x micro_batch {goals.micro_batch} x {parallel} data-parallel process(es) = {effective}.",
                title="Batch", fix="Set two of effective_batch (--effective-batch), micro_batch (--micro-batch) and "
                                   "grad_accum (preset key), and the planner derives the third.")
        if effective > MAX_BATCH:
            raise UserError(f"micro_batch {goals.micro_batch} x {parallel} process(es) x {keys} is an effective batch "
                            f"of {effective}, more than {MAX_BATCH}.", title="Batch",
                            fix="Lower grad_accum or the micro-batch.")
        return Decision(effective)
    step = parallel * accum
    if goals.effective_batch:
        if goals.effective_batch % step:
            raise UserError(
                f"effective_batch {goals.effective_batch} ({goals.origin('effective_batch')}) is not a multiple of "
                f"{keys} x {parallel} data-parallel process(es) = {step}: the micro-batch would not be whole.",
                title="Batch", fix=f"Use an effective batch that {step} divides (e.g. "
                                   f"{step * max(1, goals.effective_batch // step)}), or drop grad_accum.")
        return Decision(goals.effective_batch)
    return Decision(step * math.ceil(DEFAULT_EFFECTIVE_BATCH / step))


def base_setup(hardware: HardwareProfile, world: World, method: Method, max_length: int, precision: Precision,
                goals: Goals, lora: LoraSettings | None, model: ModelSpec | None = None,
                dataset: DatasetProfile | None = None, liger: bool = False) -> TrainSetup:
    """What the search starts from: everything decided so far."""
    # The vision tower encodes the longest example's images (the memory peak's sequence).
    patches = _patches(model, dataset) if model and dataset else 0
    return TrainSetup(method=method, num_gpus=world.size, seq_len=max_length, precision=precision,
                      optimizer=goals.optimizer or "adamw", lora_r=lora.r if lora else 8,
                      lora_targets=lora.adapted() if lora else None,
                      lora_dropout=lora.dropout if lora else 0.0, device=hardware.device,
                      gpus_per_node=world.per_node, image_patches=patches,
                      train_vision_tower=bool(goals.train_vision_tower and model and model.vision), liger=liger)


def budget(hardware: HardwareProfile, per_node: int) -> int:
    """Bytes one process may use: the smallest GPU's free memory, or on the CPU a share of the RAM."""
    if hardware.device == "cpu":
        return hardware.host_ram_available // max(1, per_node)
    gpu = hardware.smallest_gpu
    assert gpu is not None
    return gpu.free_memory


# ----------------------------------------------------------------------------- 5. accumulation, launcher

def grad_accum(goals: Goals, micro: int, world: int, effective: int) -> Decision[int]:
    grad_accum = effective // (micro * world)
    origins = [f"{words} {goals.origin(key)}" for key, words in (
        ("effective_batch", "effective batch"), ("micro_batch", "micro-batch"), ("grad_accum", "accumulation"))
        if getattr(goals, key)]
    return Decision(grad_accum, f"micro-batch {micro} x {world} process(es) x {grad_accum} accumulation = "
                                f"effective batch {effective}" + (f" ({'; '.join(origins)})" if origins else ""))


def fused_effective_batch(goals: Goals, micro: int, effective: int) -> Decision[int]:
    """Under AdaLomo (one process, each backward updates the weights) the effective batch is the
    micro-batch: gradients cannot be accumulated."""
    reason = (f"{micro}: AdaLomo updates the weights inside each backward, so gradients cannot be accumulated "
              f"over micro-batches and the effective batch is one micro-batch"
              + (f" (the planner's batch was {effective}: more, smaller steps)" if micro != effective else ""))
    warnings = ((f"Effective batch {effective} not kept: AdaLomo cannot accumulate gradients, and micro-batch "
                 f"{micro} is the largest that fits; each step takes {micro} example(s)."),) \
        if goals.effective_batch and micro != effective else ()
    return Decision(micro, reason, warnings)


def fused_learning_rate(goals: Goals, lr: float) -> Decision[float]:
    """AdaLomo's learning rate scales each weight's RMS (like Adafactor's relative step): the
    rates for AdamW are far too small for it. Its paper's instruction-tuning rate, unless asked."""
    if goals.learning_rate is not None:
        return Decision(lr, f"{lr:g}: {goals.source('learning_rate', '')}; AdaLomo's rate is relative to each "
                            f"weight's RMS (its paper uses {ADALOMO_LEARNING_RATE:g})")
    return Decision(ADALOMO_LEARNING_RATE, f"{ADALOMO_LEARNING_RATE:g}: AdaLomo's rate is relative to each weight's "
                                           "RMS, so the AdamW rule does not carry over; this is the rate its paper "
                                           "tunes instructions with")


def launcher(goals: Goals, strategy: str) -> Decision[Launcher]:
    launcher = goals.launcher or "accelerate"
    if launcher == "deepspeed" and not strategy.startswith("zero"):
        raise UserError(f"The deepspeed launcher runs ZeRO strategies, not {strategy}.",
                        title="Launcher", fix="Use --launcher accelerate or torchrun, or --strategy zero2/zero3.")
    return Decision(launcher, {
        "accelerate": "accelerate launch: one config file for every strategy",
        "torchrun": "torchrun with accelerate's environment variables",
        "deepspeed": "the deepspeed launcher",
    }[launcher] + (f" ({goals.origin('launcher')})" if goals.launcher else ""))


# Trackers that need an account or a server, and what in the environment says one is set up.
# Trackio and TensorBoard write local files; they are suggested when installed and pointed somewhere
# (TRACKIO_SPACE_ID / TRACKIO_DIR, TENSORBOARD_LOGGING_DIR), so a plain machine's plan stays quiet.
TRACKER_SETUP: dict[str, tuple[str, tuple[str, ...]]] = {
    "wandb": ("wandb", ("WANDB_API_KEY",)),
    "mlflow": ("mlflow", ("MLFLOW_TRACKING_URI",)),
    "trackio": ("trackio", ("TRACKIO_SPACE_ID", "TRACKIO_DIR")),
    "tensorboard": ("tensorboard", ("TENSORBOARD_LOGGING_DIR",)),
}


def configured_trackers(environ: Mapping[str, str] | None = None) -> list[str]:
    """Trackers installed here whose setup is in the environment (an API key, a URI, a directory)."""
    import importlib.util
    import os

    environ = os.environ if environ is None else environ
    found = []
    for name, (module, variables) in TRACKER_SETUP.items():
        if any(environ.get(v) for v in variables) and importlib.util.find_spec(module) is not None:
            found.append(name)
    return found


def trackers(goals: Goals, environ: Mapping[str, str] | None = None) -> Decision[list[Tracker]]:
    """report_to: what was asked for ("none" alone clears it); else none, suggesting a tracker that is
    installed and configured."""
    asked = list(dict.fromkeys(goals.report_to or []))
    if "none" in asked and len(asked) > 1:
        raise UserError(f"--report-to {' '.join(asked)} mixes none with trackers.", title="Trackers",
                        fix="Pass trackers (e.g. --report-to tensorboard trackio) or none alone.")
    if asked:
        import importlib.util

        chosen: list[Tracker] = [t for t in asked if t != "none"]
        missing = [t for t in chosen if importlib.util.find_spec(TRACKER_SETUP[t][0]) is None]
        warnings = tuple(f"--report-to {t}: {TRACKER_SETUP[t][0]} is not installed here; install it where the "
                         f"run trains (pip install {TRACKER_SETUP[t][0]}), or the ranks stop at the start"
                         for t in missing)
        return Decision(chosen, (", ".join(chosen) if chosen else "none") + f" ({goals.origin('report_to')}); "
                        "metrics.jsonl is written in every case", warnings)
    ready = configured_trackers(environ)
    if not ready:
        return Decision([])
    return Decision([], f"none; {', '.join(ready)} {'is' if len(ready) == 1 else 'are'} installed and configured "
                        f"here: --report-to {' '.join(ready)} reports to {'it' if len(ready) == 1 else 'them'}")


# ----------------------------------------------------------------------------- 6. schedule

def schedule(dataset: DatasetProfile, goals: Goals, effective: int, epochs: float,
             rows: int | None = None) -> Decision[Schedule]:
    """`rows`: the training rows after packing, when packing is on."""
    eval_fraction = goals.eval_fraction if goals.eval_fraction is not None else 0.1  # (range: schema.EvalFraction)
    train_examples = rows or max(1, round(dataset.num_examples * (1 - eval_fraction)))
    steps_per_epoch = max(1, math.ceil(train_examples / effective))
    total_steps = goals.max_steps if goals.max_steps else math.ceil(steps_per_epoch * epochs)
    eval_steps = max(1, steps_per_epoch // (goals.evals_per_epoch or 1))
    if goals.max_steps:
        eval_steps = max(1, min(eval_steps, total_steps // 4 or 1))
    if goals.eval_steps:
        eval_steps = goals.eval_steps
    logging_steps = max(1, min(10, total_steps // 50 or 1))
    return Decision(Schedule(eval_fraction, eval_steps, logging_steps),
                    f"{steps_per_epoch} steps per epoch, {total_steps} steps in all; "
                    f"evaluate and checkpoint every {eval_steps} steps, log every {logging_steps}",
                    dataset.plan_warnings(eval_fraction))  # refuses a split that leaves no training row


def activation_offloading(hardware: HardwareProfile, goals: Goals) -> None:
    """TRL's activation offloading moves saved tensors from the accelerator to host RAM; on the
    CPU there is no accelerator and TRL fails building it (torch.accelerator.current_accelerator()
    is None)."""
    if goals.activation_offloading and hardware.device != "cuda":
        raise UserError("Activation offloading moves activations from a GPU to host RAM; this plan has no GPU "
                        "(TRL's offloading fails on the CPU).", title="Activation offloading",
                        fix="Plan with --gpus, or leave activation offloading off on the CPU (--no-activation-offloading).")


def liger(hardware: HardwareProfile, goals: Goals, model: ModelSpec) -> Decision[bool]:
    """Liger's layer kernels (TRL use_liger_kernel): asked for only; Triton kernels, GPU only. The
    search counts their savings (llmwizard.autotune.memory.activations.liger_layers) and states them."""
    if not goals.liger_kernel:
        return Decision(False)
    if hardware.device != "cuda":
        raise UserError("Liger's kernels are Triton kernels and need an NVIDIA GPU.", title="Liger kernel",
                        fix="Plan with --gpus, or leave Liger off on the CPU (--no-liger-kernel).")
    if model.model_type not in LIGER_MODELS:
        return Decision(True, f"on ({goals.origin('liger_kernel')}); the estimate counts Liger's savings for Llama, "
                              "Mistral, Qwen and "
                              f"Gemma decoders, so none for {model.model_type} (where Liger has no kernels for a "
                              "model type, transformers applies none)",
                        warnings=((f"The estimate counts no Liger saving for {model.model_type} models; the plan is "
                                   "sized as without --liger-kernel."),))
    return Decision(True)


def run_name(model: str, dataset: str) -> str:
    """"<model>-<dataset>" from their last path parts, safe as a directory name."""
    def stem(text: str) -> str:
        text = text.split(":")[-1].rstrip("/").split("/")[-1]
        text = re.sub(r"\.(jsonl|json|csv|parquet)$", "", text)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "run"

    return f"{stem(model)}-{stem(dataset)}"


def experts(model: ModelSpec, strategy: str, world: int, setup: TrainSetup) -> str:
    """The plan's word on a Mixture-of-Experts model: total and active parameters, how the chosen
    strategy holds the experts (FSDP2 wraps each decoder layer with its experts; ZeRO-3 gathers the
    MoE block whole as a leaf module, since gathering experts one by one as the router picks them
    hangs ranks that picked others), and expert parallelism, which accelerate, DeepSpeed ZeRO and
    FSDP2 under TRL do not offer for transformers' MoE blocks: the figure it would save per GPU."""
    moe = model.moe
    assert moe is not None
    routed = model.num_layers * moe.num_experts * moe.expert_params
    weight_bytes = layout(model, setup).weight

    def count(n: int) -> str:
        return f"{n / 1e9:.2f} B" if n >= 10**9 else f"{n:,}"

    text = (f"{count(model.total_params)} parameters, {count(model.active_params)} active per token "
            f"({moe.experts_per_token} of {moe.num_experts} routed experts per layer, {moe.expert_params:,} "
            f"parameters each)")
    if moe.quantization:
        text += f"; released with {moe.quantization.upper()} experts, dequantized to bf16 for training (counted so)"
    if strategy == "zero3":
        text += f"; ZeRO-3 gathers each {moe.block_cls} whole (a leaf module, deepspeed.utils.set_z3_leaf_modules)"
    elif strategy == "fsdp":
        text += f"; FSDP2 wraps each {model.layer_cls} with its experts"
    saved = routed * weight_bytes * (1 - 1 / world) / 2**30
    if world > 1 and strategy in ("ddp", "zero1", "zero2"):
        ep = (f"expert parallelism over {world} GPUs would hold 1/{world} of the routed experts' weights: "
              f"{saved:.2f} GiB less per GPU")
    elif world > 1:
        ep = (f"expert parallelism over {world} GPUs would keep each expert on one GPU instead of gathering "
              f"{routed * weight_bytes / model.num_layers / 2**30:.2f} GiB of experts per layer")
    else:
        ep = "expert parallelism needs several GPUs"
    return text + f"; {ep}, but the stack (accelerate, DeepSpeed ZeRO, FSDP2 under TRL) offers none for these models"
