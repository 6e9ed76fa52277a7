"""plan(hardware, model, dataset, goals) -> Plan, with a reason for every choice.

Pure: no I/O, no clocks, no processes. The order of decisions:
1. dataset rules (epochs, learning rate, LoRA rank, length cap) from the data's size class;
2. max length from the real token-length distribution, capped by the rule and the model;
3. precision from the device (bf16 from compute capability 8.0, fp16 below, fp32 on the CPU);
4. strategy, offload, micro-batch and activation checkpointing: every candidate that fits the
   memory budget with headroom, ranked by the cost model (llmwizard.autotune.search, llmwizard.autotune.throughput);
5. gradient accumulation so that micro-batch x processes x accumulation = the effective batch;
6. schedule: eval, save and logging steps from the steps per epoch.
"""

from __future__ import annotations

import math
import re

from llmwizard.autotune.dataset import DatasetProfile
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.hardware_types import HardwareProfile
from llmwizard.autotune.memory import estimate
from llmwizard.autotune.model_types import ModelSpec
from llmwizard.autotune.plan import LoraSettings, Plan
from llmwizard.autotune.rules import RULES, classify, round_up
from llmwizard.autotune.no_fit import format_params  # noqa: F401 (re-exported)
from llmwizard.autotune.search import HEADROOM, choose  # noqa: F401 (re-exported)
from llmwizard.autotune.train_setup import TrainSetup

DEFAULT_EFFECTIVE_BATCH = 16
# The embedded default is a random-init toy model: it learns visibly at ten times the rule's rate.
RANDOM_INIT_LR_SCALE = 10


def plan(hardware: HardwareProfile, model: ModelSpec, dataset: DatasetProfile, goals: Goals,
         *, name: str | None = None) -> Plan:
    reasons: dict[str, str] = {}
    warnings: list[str] = []
    cpu = hardware.device == "cpu"

    # 1. Dataset rules.
    if goals.dataset_size in RULES:
        size, why = goals.dataset_size, f"preset {goals.preset or ''} is for {goals.dataset_size} datasets".strip()
        actual, _ = classify(dataset)
        if actual != size:
            warnings.append(f"The preset is for {size} datasets but this one is {actual}; "
                            f"consider --preset {actual}-dataset.")
    else:
        size, why = classify(dataset)
    rule = RULES[size]
    reasons["dataset"] = f"{size} dataset: {why}"
    rule_text = f"Google's rule for {size} datasets"

    method = goals.method or "lora"
    if method not in ("full", "lora", "qlora"):
        raise UserError(f"Unknown method '{method}'.", title="Method", fix="Use full, lora or qlora.")
    if method == "qlora" and cpu:
        raise UserError("QLoRA needs an NVIDIA GPU: bitsandbytes' 4-bit kernels do not run on the CPU.",
                        title="Method", fix="Use --method lora on this machine, or plan with --gpus.")
    reasons["method"] = {
        "lora": "LoRA: adapters train a small share of the weights; the guidance's default for tuning",
        "qlora": "QLoRA: a 4-bit NF4 base with LoRA adapters, for the least memory",
        "full": "full fine-tuning: every weight trains (most memory, most capacity)",
    }[method] + (f" ({goals.source('method', '')})" if goals.method else "")

    epochs = goals.epochs if goals.epochs is not None else rule.epochs
    reasons["epochs"] = f"{epochs:g} epochs: {goals.source('epochs', rule_text)}"
    lr = goals.learning_rate if goals.learning_rate is not None else rule.learning_rate
    reasons["learning_rate"] = f"{lr:g}: {goals.source('learning_rate', rule_text)}"
    if method == "full" and goals.learning_rate is None:
        lr = rule.learning_rate / 10
        reasons["learning_rate"] = f"{lr:g}: a tenth of the LoRA rule ({rule.learning_rate:g}) for full fine-tuning"
    if model.source == "embedded" and "learning_rate" not in goals.explicit:
        # Google's rates are for tuning pretrained weights; the embedded model starts random and
        # learns visibly only at about ten times that rate (bench: 6.5 -> 2.0 in the default run).
        lr *= RANDOM_INIT_LR_SCALE
        reasons["learning_rate"] = (f"{lr:g}: {RANDOM_INIT_LR_SCALE}x {goals.source('learning_rate', rule_text)}'s "
                                    f"{lr / RANDOM_INIT_LR_SCALE:g}, because the embedded tiny model is randomly "
                                    "initialised and the rule's rates assume pretrained weights")

    lora = None
    if method != "full":
        r = goals.lora_r or rule.lora_r
        targets = goals.lora_targets or model.linear_names
        unknown = sorted(set(targets) - set(model.linear_names))
        if unknown:
            raise UserError(f"LoRA targets {', '.join(unknown)} are not linear layers of {model.name}.",
                            title="LoRA", fix=f"Choose from: {', '.join(model.linear_names)}.")
        lora = LoraSettings(r=r, alpha=goals.lora_alpha or 2 * r,
                            dropout=goals.lora_dropout if goals.lora_dropout is not None else 0.05,
                            target_modules=list(targets), peft_targets=model.lora_target_modules(targets))
        share = model.lora_params(r, targets) / model.total_params
        reasons["lora"] = (f"rank {r}, alpha {lora.alpha} on {', '.join(targets)}: "
                           f"{model.lora_params(r, targets):,} trainable parameters ({share:.2%}); "
                           f"rank from {goals.source('lora_r', rule_text)}")

    # 2. Max length from the real distribution.
    max_length = _max_length(model, dataset, goals, rule.max_length, reasons, warnings)

    # 3. Precision.
    precision = _precision(hardware, goals, reasons)

    # 4. World layout and strategy.
    nodes = hardware.nodes
    per_node = (goals.processes or 1) if cpu else hardware.gpus_per_node
    if not cpu and goals.processes and goals.processes != hardware.gpus_per_node:
        if goals.processes > hardware.gpus_per_node:
            raise UserError(
                f"{goals.processes} processes per node but this node has {hardware.gpus_per_node} GPU(s): "
                "two processes on one GPU fail with 'Duplicate GPU detected'.",
                title="Processes", fix=f"Use --processes {hardware.gpus_per_node} or fewer.")
        per_node = goals.processes
    world = nodes * per_node
    if cpu:
        reasons["device"] = (f"CPU: {per_node} process(es) with the gloo backend"
                             + ("" if hardware.notes == [] else f" ({hardware.notes[0]})"))
    else:
        gpu = hardware.smallest_gpu
        assert gpu is not None
        reasons["device"] = f"{world} GPU process(es): {hardware.describe()}"

    effective = goals.effective_batch or DEFAULT_EFFECTIVE_BATCH
    step = world * (goals.micro_batch or 1)
    if effective % step:
        raised = step * math.ceil(effective / step)
        if goals.micro_batch:
            warnings.append(f"Effective batch raised from {effective} to {raised}: micro-batch {goals.micro_batch} "
                            f"x {world} process(es) must divide it.")
        effective = raised
    budget = _budget(hardware, per_node)
    setup = TrainSetup(method=method, num_gpus=world, seq_len=max_length, precision=precision,
                       optimizer=goals.optimizer or "adamw", lora_r=lora.r if lora else 8,
                       lora_targets=lora.target_modules if lora else None,
                       lora_dropout=lora.dropout if lora else 0.0, device=hardware.device,
                       gpus_per_node=per_node)
    choice = choose(hardware, model, setup, goals, budget, effective, world)
    reasons.update(choice.reasons)
    chosen = choice.best
    micro = chosen.micro_batch
    grad_accum = effective // (micro * world)
    reasons["batch"] = (f"micro-batch {micro} x {world} process(es) x {grad_accum} accumulation = "
                        f"effective batch {effective}"
                        + (f" ({goals.source('effective_batch', '')})" if goals.effective_batch else ""))

    launcher = goals.launcher or "accelerate"
    if launcher == "deepspeed" and not chosen.strategy.startswith("zero"):
        raise UserError(f"The deepspeed launcher runs ZeRO strategies, not {chosen.strategy}.",
                        title="Launcher", fix="Use --launcher accelerate or torchrun, or --strategy zero2/zero3.")
    reasons["launcher"] = {
        "accelerate": "accelerate launch: one config file for every strategy",
        "torchrun": "torchrun with accelerate's environment variables",
        "deepspeed": "the deepspeed launcher",
    }[launcher] + (" (asked for)" if goals.launcher else "")

    # 6. Schedule.
    eval_fraction = goals.eval_fraction if goals.eval_fraction is not None else 0.1
    if not 0 <= eval_fraction < 0.5:
        raise UserError(f"Eval fraction {eval_fraction} is out of range.", title="Evaluation",
                        fix="Hold out between 0 (no evaluation) and 0.5 of the rows, e.g. --eval-fraction 0.1.")
    train_examples = max(1, round(dataset.num_examples * (1 - eval_fraction)))
    steps_per_epoch = max(1, math.ceil(train_examples / effective))
    total_steps = goals.max_steps if goals.max_steps else math.ceil(steps_per_epoch * epochs)
    evals = goals.evals_per_epoch or 1
    eval_steps = max(1, steps_per_epoch // evals)
    if goals.max_steps:
        eval_steps = max(1, min(eval_steps, total_steps // 4 or 1))
    logging_steps = max(1, min(10, total_steps // 50 or 1))
    reasons["schedule"] = (f"{steps_per_epoch} steps per epoch, {total_steps} steps in all; "
                           f"evaluate and checkpoint every {eval_steps} steps, log every {logging_steps}")

    trainable = chosen.estimate.trainable_params
    return Plan(
        name=name or _run_name(model.name, dataset.source),
        model=model.path if model.source == "local" and model.path else model.name,
        model_source=model.source, layer_cls=",".join(model.wrap_classes or [model.layer_cls]),
        dataset=dataset.source, dataset_format=dataset.format,
        device=hardware.device, hardware=hardware.describe(),
        strategy=chosen.strategy, offload=chosen.offload, launcher=launcher,
        num_machines=nodes, num_processes=world, method=method, precision=precision,
        optimizer=chosen.optimizer, micro_batch=micro, grad_accum=grad_accum, effective_batch=effective,
        activation_checkpointing=chosen.checkpointing, max_length=max_length, epochs=float(epochs),
        max_steps=goals.max_steps or -1, learning_rate=float(lr),
        lr_scheduler=goals.lr_scheduler or "cosine",
        warmup_ratio=goals.warmup_ratio if goals.warmup_ratio is not None else 0.03,
        weight_decay=goals.weight_decay if goals.weight_decay is not None else 0.0,
        lora=lora, eval_fraction=eval_fraction,
        eval_steps=eval_steps, save_steps=eval_steps, logging_steps=logging_steps, seed=goals.seed,
        trainable_params=trainable, total_params=model.total_params, estimate=chosen.estimate,
        reasons=reasons, warnings=warnings, hybrid_shard=chosen.hybrid,
    )


def _max_length(model: ModelSpec, dataset: DatasetProfile, goals: Goals, rule_cap: int,
                reasons: dict[str, str], warnings: list[str]) -> int:
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
        reasons["max_length"] = f"{length} tokens (asked for); p99 of the data is {dataset.p99_tokens} tokens"
        if dataset.max_tokens > length:
            warnings.append(f"About {_share_over(dataset, length):.0%} of examples are longer than {length} tokens "
                            f"and will be truncated (longest: {dataset.max_tokens}).")
        return length
    cap = goals.max_length_cap or rule_cap
    wanted = round_up(dataset.p99_tokens)
    length = min(wanted, cap, model.max_positions)
    counted = (f"counted with the {dataset.tokenizer}" if dataset.exact_tokens else
               "estimated at 4 characters per token: the model's tokenizer is not on this machine")
    why = (f"{length} tokens: p99 of the data is {dataset.p99_tokens} tokens ({counted}), "
           "rounded up to a multiple of 64")
    if length < wanted:
        limit = "the model's" if length == model.max_positions else (
            f"preset {goals.preset}'s" if goals.max_length_cap else "the dataset rule's")
        why = f"{length} tokens: {limit} cap; p99 of the data is {dataset.p99_tokens} tokens"
    if dataset.max_tokens > length:
        over = _share_over(dataset, length)
        warnings.append(f"About {over:.0%} of examples are longer than {length} tokens and will be truncated "
                        f"(longest: {dataset.max_tokens}). Raise --max-length if they matter.")
    reasons["max_length"] = why
    return length


def _share_over(dataset: DatasetProfile, length: int) -> float:
    over = sum(count for low, high, count in dataset.histogram if low > length)
    return max(over / max(1, dataset.measured), 0.01)


def _precision(hardware: HardwareProfile, goals: Goals, reasons: dict[str, str]) -> str:
    if hardware.device == "cpu":
        precision = goals.precision or "fp32"
        reasons["precision"] = "fp32: the CPU has no fast bf16/fp16 training path" if not goals.precision else f"{precision} (asked for)"
        return precision
    gpu = hardware.smallest_gpu
    assert gpu is not None
    cc = f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    if goals.precision:
        if goals.precision == "bf16" and gpu.compute_capability < (8, 0):
            raise UserError(f"bf16 needs compute capability 8.0 or newer; {gpu.name} has {cc}.",
                            title="Precision", fix="Use --precision fp16 on this GPU.")
        reasons["precision"] = f"{goals.precision} (asked for)"
        return goals.precision
    if gpu.compute_capability >= (8, 0):
        reasons["precision"] = f"bf16 mixed precision: {gpu.name} has compute capability {cc} (>= 8.0)"
        return "bf16"
    reasons["precision"] = f"fp16 mixed precision with loss scaling: {gpu.name} has compute capability {cc} (< 8.0, no bf16)"
    return "fp16"


def _budget(hardware: HardwareProfile, per_node: int) -> int:
    if hardware.device == "cpu":
        return hardware.host_ram_available // max(1, per_node)
    gpu = hardware.smallest_gpu
    assert gpu is not None
    return gpu.free_memory


def _run_name(model: str, dataset: str) -> str:
    def stem(text: str) -> str:
        text = text.split(":")[-1].rstrip("/").split("/")[-1]
        text = re.sub(r"\.(jsonl|json|csv|parquet)$", "", text)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "run"

    return f"{stem(model)}-{stem(dataset)}"


def setup_of(plan_: Plan, **changes: object) -> TrainSetup:
    """The memory model's view of a plan, with `changes` applied (e.g. micro_batch=2)."""
    from dataclasses import replace

    setup = TrainSetup(method=plan_.method, strategy=plan_.strategy, offload=plan_.offload,
                       num_gpus=plan_.num_processes // (plan_.num_machines if plan_.hybrid_shard else 1),
                       micro_batch=plan_.micro_batch, seq_len=plan_.max_length,
                       checkpointing=plan_.activation_checkpointing, precision=plan_.precision,
                       optimizer=plan_.optimizer, attention=plan_.attention,
                       lora_r=plan_.lora.r if plan_.lora else 8,
                       lora_targets=plan_.lora.target_modules if plan_.lora else None,
                       lora_dropout=plan_.lora.dropout if plan_.lora else 0.0, device=plan_.device,
                       gpus_per_node=plan_.processes_per_machine)
    return replace(setup, **changes)  # type: ignore[arg-type]


def shrink_micro_batch(plan_: Plan, why: str, model: ModelSpec | None = None) -> Plan | None:
    """The same plan at half the micro-batch, accumulation doubled so the effective batch stays;
    None when the micro-batch is already 1. Used after an out-of-memory failure."""
    from dataclasses import replace

    if plan_.micro_batch <= 1:
        return None
    micro = plan_.micro_batch // 2
    grad_accum = plan_.effective_batch // (micro * plan_.num_processes)
    reasons = dict(plan_.reasons)
    reasons["batch"] = (f"micro-batch {micro} x {plan_.num_processes} process(es) x {grad_accum} accumulation = "
                        f"effective batch {plan_.effective_batch}; halved from {plan_.micro_batch} because {why}")
    new = replace(plan_, micro_batch=micro, grad_accum=grad_accum, reasons=reasons)
    if model is not None:
        new = replace(new, estimate=estimate(model, setup_of(new), plan_.estimate.budget))
    return new
