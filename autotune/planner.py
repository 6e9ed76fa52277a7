"""plan(hardware, model, dataset, goals) -> Plan, with a reason for every choice.

Pure: no I/O, no clocks, no processes. The order of decisions:
1. dataset rules (epochs, learning rate, LoRA rank, length cap) from the data's size class;
2. max length from the real token-length distribution, capped by the rule and the model;
3. precision from the device (bf16 from compute capability 8.0, fp16 below, fp32 on the CPU);
4. strategy, offload, micro-batch and activation checkpointing: every candidate that fits the
   memory budget with headroom, ranked by the cost model in autotune.throughput;
5. gradient accumulation so that micro-batch x processes x accumulation = the effective batch;
6. schedule: eval, save and logging steps from the steps per epoch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from autotune.dataset import DatasetProfile
from autotune.errors import UserError
from autotune.goals import Goals
from autotune.hardware import GiB, HardwareProfile
from autotune.memory import OFFLOADS, OPTIMIZERS, STRATEGIES, MemoryEstimate, TrainSetup, estimate
from autotune.model_spec import ModelSpec
from autotune.plan import LoraSettings, Plan
from autotune.rules import RULES, classify, round_up
from autotune.throughput import step_cost

# Keep this share of the budget free: allocator spikes, evaluation and checkpoint saving.
HEADROOM = 0.05
DEFAULT_EFFECTIVE_BATCH = 16
# The embedded default is a random-init toy model: it learns visibly at ten times the rule's rate.
RANDOM_INIT_LR_SCALE = 10
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
    chosen = _choose(hardware, model, setup, goals, budget, effective, world, reasons)
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


def _choose(hardware: HardwareProfile, model: ModelSpec, base: TrainSetup, goals: Goals, budget: int,
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
                alternative = _choose(hardware, model, base, free, budget, effective, world, {})
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


def format_params(count: int) -> str:
    """8.03B, 494M, 226K: parameter counts as people write them."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(count)
