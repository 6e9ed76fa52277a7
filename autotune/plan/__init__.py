"""The Plan: every decision for one run, with its reason. The single source of truth.

Everything a face shows or an exporter writes derives from a Plan, and `plan.yaml` loads back
into an equal Plan. Plan and LoraSettings are pydantic dataclasses typed with
llmwizard.autotune.schema, so loading a damaged or hand-edited file names the key, the value and
what is allowed, instead of launching `zero4` or a micro-batch of -3.
"""

from __future__ import annotations

from dataclasses import asdict, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import yaml
from pydantic import ConfigDict, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import GOAL_FIELDS
from llmwizard.autotune.memory import MemoryEstimate
from llmwizard.autotune.schema import (
    Attention,
    BatchSize,
    Beta,
    ClassNames,
    DatasetFormat,
    Device,
    Epochs,
    EvalFraction,
    Fraction,
    Generations,
    HostAddress,
    Launcher,
    LearningRate,
    LoraAlpha,
    LoraRank,
    LrScheduler,
    MaxSteps,
    Method,
    ModelSource,
    ModuleNames,
    NodeCount,
    NonNegativeFloat,
    NonNegativeInt,
    Offload,
    OneLine,
    Optimizer,
    PeftTargets,
    Port,
    PositiveInt,
    Precision,
    ProcessCount,
    Reference,
    RewardName,
    RunName,
    Seed,
    StepCount,
    Strategy,
    Target,
    Task,
    Temperature,
    TokenLength,
    Tracker,
    WeightDecay,
    user_error,
)

PLAN_VERSION: Final = 1


class InvalidPlan(UserError):
    """Plan fields the schema refuses: each key, its value and what is allowed. Most come from a
    hand-edited plan.yaml (`Plan.load` names the file); the rest from input the planner copies
    into the plan as it is, such as a model directory whose path holds a line break."""

    def __init__(self, validation: ValidationError) -> None:
        self.validation = validation
        error = user_error(validation, cls=Plan, source="the plan", title="Plan",
                           fix="Change the value named (allowed values: docs/schema.md); a model or dataset path "
                               "must be one line of printable characters.")
        super().__init__(error.message, title=error.title, fix=error.fix)


STRICT = ConfigDict(extra="forbid")


@dataclass(config=STRICT)
class LoraSettings:
    r: LoraRank
    alpha: LoraAlpha
    dropout: Fraction
    target_modules: ModuleNames      # the linear layers adapted, by name
    # What PEFT receives: the names, or one regex when plain names would also match a vision
    # tower or when there is a single name (TRL passes a one-item list on as a regex string).
    peft_targets: PeftTargets = field(default_factory=list)
    # Mixture-of-Experts: the routed experts' fused 3-D weights PEFT adapts (target_parameters,
    # e.g. mlp.experts.gate_up_proj); empty: the experts stay frozen (the planner's default).
    target_parameters: PeftTargets = field(default_factory=list)

    def adapted(self) -> list[str]:
        """What the memory model adapts: the linears, and "experts" when the routed experts are."""
        return [*self.target_modules, *(["experts"] if self.target_parameters else [])]


@dataclass(config=STRICT)
class TaskSettings:
    """A preference or reward task's own choices (docs/tasks.md): what TRL's DPOConfig, ORPOConfig,
    KTOConfig or GRPOConfig receives beyond the SFT fields."""

    beta: Beta
    reference: Reference
    # GRPO: completions sampled per prompt, how long each may grow, and how they are sampled. The
    # plan's micro-batch and effective batch count completions (TRL's per-device batch).
    num_generations: Generations | None = None
    max_completion_length: TokenLength | None = None
    temperature: Temperature | None = None
    # GRPO: the reward functions, as importable `module.function` names (llmwizard.runner.rank.rewards).
    rewards: list[RewardName] = field(default_factory=list)
    # The data's longest prompt and response, in tokens, as profiled (what the length caps cover).
    prompt_tokens: NonNegativeInt = 0
    response_tokens: NonNegativeInt = 0


# A setting a user can pin, by its goal key (micro_batch, strategy, ...); a Literal built from Goals'
# fields, so plan.yaml refuses any other key and names the allowed ones.
if TYPE_CHECKING:
    PinnedKey = str
else:
    PinnedKey = Literal[tuple(sorted(GOAL_FIELDS))]


@dataclass(config=STRICT)
class Plan:
    # The text fields reach launch.sh, slurm.sbatch and README.txt: each type allows only what it
    # needs (llmwizard.autotune.schema), and the exporters shell-quote every word besides.
    name: RunName                    # <model>-<dataset> (plan_steps.run_name), or as typed in plan.yaml
    model: OneLine                   # embedded:tiny-llama, a local directory, or a hub name
    model_source: ModelSource
    layer_cls: ClassNames            # the class(es) FSDP wraps, comma-separated
    dataset: OneLine                 # embedded:arithmetic, an absolute path, or a hub name
    dataset_format: DatasetFormat
    device: Device
    hardware: OneLine                # what was planned for
    strategy: Strategy
    offload: Offload
    launcher: Launcher
    num_machines: NodeCount
    num_processes: PositiveInt       # total over all machines
    method: Method
    precision: Precision
    optimizer: Optimizer
    micro_batch: BatchSize
    grad_accum: BatchSize
    effective_batch: BatchSize
    activation_checkpointing: bool
    max_length: TokenLength
    epochs: Epochs
    max_steps: MaxSteps              # -1: run the epochs
    learning_rate: LearningRate
    lr_scheduler: LrScheduler
    warmup_ratio: Fraction
    weight_decay: WeightDecay
    lora: LoraSettings | None
    eval_fraction: EvalFraction      # the --eval-fraction rule
    eval_steps: StepCount
    save_steps: StepCount
    logging_steps: StepCount
    seed: Seed
    trainable_params: NonNegativeInt
    total_params: PositiveInt
    estimate: MemoryEstimate
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    main_process_ip: HostAddress = "127.0.0.1"
    main_process_port: Port = 29500
    attention: Attention = "sdpa"
    # FSDP2 across machines: shard inside each machine, replicate across them (HSDP), so the
    # per-layer weight gathers stay on the fast intra-node links.
    hybrid_shard: bool = False
    # Experiment trackers the run reports to (TRL's report_to); empty: metrics.jsonl only.
    report_to: list[Tracker] = field(default_factory=list)
    # The cost model's tokens per second for full-length sequences (llmwizard.autotune.memory.throughput);
    # a probe compares it with what it measures. 0: not predicted (a plan from an older version).
    predicted_tokens_per_s: NonNegativeFloat = 0.0
    # Probe the plan with a few real steps before the run (llmwizard.runner.session.probe).
    probe: bool = False
    # Long-context and activation savers (llmwizard.autotune.memory.long_context): the GPUs one sequence
    # is split over (FSDP2 context parallelism), TRL's activation offloading, padding-free packing
    # and Liger's kernels.
    context_parallel: ProcessCount = 1
    activation_offloading: bool = False
    packing: bool = False
    liger_kernel: bool = False
    # Vision-language models: the vision tower trains (LoRA adapters on its blocks too, or every
    # weight under full fine-tuning); with LoRA and false it stays frozen.
    train_vision_tower: bool = False
    # The model's own code (auto_map) runs when it loads: the user consented (--trust-remote-code).
    trust_remote_code: bool = False
    # Vision-language models: the vision tower's patches for the longest example's images (what the
    # estimate sized; a re-plan after an out-of-memory failure sizes the same). 0: no images.
    image_patches: NonNegativeInt = 0
    # The goals the user set (flags, wizard fields), by their goal key (micro_batch, strategy, ...):
    # the probe and the out-of-memory recovery change one only to avoid a failure, and say so.
    pinned: list[PinnedKey] = field(default_factory=list)
    # Other systems the run is exported for besides launch.sh (llmwizard.runner.export.targets, docs/targets.md):
    # skypilot.yaml, trainjob.yaml, ray_train.py. Left out of plan.yaml when empty.
    targets: list[Target] = field(default_factory=list)
    # What the run optimises, and a preference or reward task's settings (None for sft). Both are
    # left out of plan.yaml for sft, so SFT plans read as before.
    task: Task = "sft"
    task_settings: TaskSettings | None = None
    version: Literal[1] = PLAN_VERSION

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        """Relations the planner always keeps, checked so a hand edit cannot break them."""
        if self.strategy == "single" and (self.num_processes, self.num_machines) != (1, 1):
            raise ValueError(f"strategy single runs one process on one machine, but num_processes is "
                             f"{self.num_processes} and num_machines {self.num_machines}: set both to 1, or choose "
                             "ddp, fsdp, zero2 or zero3 for several processes")
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes ({self.num_processes}) must be a multiple of num_machines "
                             f"({self.num_machines}): every machine runs the same number of processes")
        if self.num_processes % self.context_parallel:
            raise ValueError(f"context_parallel ({self.context_parallel}) must divide num_processes "
                             f"({self.num_processes})")
        if self.context_parallel > 1 and (self.strategy not in ("fsdp", "zero2", "zero3") or self.packing):
            raise ValueError("context_parallel above 1 needs strategy fsdp (FSDP2 context parallelism) or zero2/zero3 "
                             "(DeepSpeed Ulysses sequence parallelism), and packing off")
        if self.optimizer == "adalomo" and (self.grad_accum != 1 or self.num_processes != 1 or self.device != "cuda"
                                            or self.offload != "none"):
            raise ValueError(f"optimizer adalomo updates the weights inside backward: it needs grad_accum 1 (got "
                             f"{self.grad_accum}), one process (got {self.num_processes}), device cuda (got "
                             f"{self.device}) and offload none (got {self.offload})")
        replicas = self.num_processes // self.context_parallel  # ranks that hold different sequences
        if self.micro_batch * replicas * self.grad_accum != self.effective_batch:
            raise ValueError(f"effective_batch ({self.effective_batch}) must be micro_batch x num_processes / "
                             f"context_parallel x grad_accum = {self.micro_batch} x {replicas} x {self.grad_accum} = "
                             f"{self.micro_batch * replicas * self.grad_accum}; change them together")
        self._task_consistent(replicas)
        if (self.method == "full") != (self.lora is None):
            raise ValueError(f"method {self.method} " + ("takes no lora settings (set lora: null)"
                             if self.method == "full" else "needs lora settings (r, alpha, dropout, ...)"))
        return self

    def _task_consistent(self, replicas: int) -> None:
        """The task's own rules: where its reference comes from, and GRPO's whole groups."""
        settings = self.task_settings
        if (self.task == "sft") != (settings is None):
            raise ValueError(f"task {self.task} " + ("takes no task_settings (set task_settings: null)"
                             if self.task == "sft" else "needs task_settings (beta, reference, ...)"))
        if settings is None:
            return
        reference, beta = settings.reference, settings.beta
        if reference == "adapter" and self.method == "full":
            raise ValueError("reference adapter disables a LoRA adapter, but method is full: use reference copy or "
                             "precompute, or method lora")
        if reference == "copy" and self.method != "full":
            raise ValueError(f"reference copy loads a second model, but method {self.method} has the same weights "
                             "with the adapter disabled: use reference adapter")
        if self.task == "orpo" and reference != "none":
            raise ValueError(f"ORPO has no reference model: set reference none (got {reference})")
        if self.task in ("dpo", "kto") and reference == "none":
            raise ValueError(f"{self.task} compares the policy with a reference: set reference copy, adapter or precompute")
        if self.task == "kto" and self.micro_batch < 2:
            raise ValueError("KTO needs micro_batch 2 or more: its KL term pairs each prompt with another row's "
                             "completion of the same micro-batch")
        if self.task in ("dpo", "kto", "orpo") and beta <= 0:
            raise ValueError(f"{self.task} needs beta above 0 (got {beta}); 0.1 is the published default")
        if self.task == "grpo":
            if reference == "precompute":
                raise ValueError("GRPO samples new completions each step, so their reference log-probs cannot be "
                                 "precomputed: use reference copy or adapter, or beta 0 with reference none")
            if (beta == 0) != (reference == "none"):
                raise ValueError(f"GRPO with beta {beta} needs " + ("reference none (no KL term)" if beta == 0
                                 else "a reference (copy or adapter) for its KL term, or beta 0"))
            generations = settings.num_generations
            if generations is None or settings.max_completion_length is None or not settings.rewards:
                raise ValueError("GRPO needs num_generations, max_completion_length and at least one reward")
            if (self.micro_batch * replicas * self.grad_accum) % generations:
                raise ValueError(f"GRPO's batch of completions (micro_batch x processes x grad_accum = "
                                 f"{self.micro_batch * replicas * self.grad_accum}) must divide by num_generations "
                                 f"({generations}): every prompt's group is complete")
        elif settings.num_generations is not None or settings.rewards:
            raise ValueError(f"num_generations and rewards are GRPO's; task {self.task} takes none")

    @model_validator(mode="wrap")
    @classmethod
    def _users_to_fix(cls, values: Any, handler: Any) -> Plan:
        """A value the planner copied from the user's input (a model or dataset path with a line
        break in it) is refused as a UserError naming it, not a traceback; `load` names the file.
        Defined after `_consistent` so that it wraps that check too."""
        try:
            return handler(values)
        except ValidationError as exc:
            raise InvalidPlan(exc) from None

    @property
    def processes_per_machine(self) -> int:
        return self.num_processes // self.num_machines

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["estimate"] = self.estimate.to_dict()
        if not data["targets"]:  # plans without targets read as before (and keep their digests)
            del data["targets"]
        if self.task == "sft":  # likewise SFT plans
            del data["task"], data["task_settings"]
        return data

    def to_json_summary(self) -> dict[str, Any]:
        """The stable `llmwizard plan --json` shape (keys are only ever added)."""
        lora = asdict(self.lora) if self.lora else None
        return {
            "strategy": self.strategy, "offload": self.offload, "launcher": self.launcher,
            "num_machines": self.num_machines, "num_processes": self.num_processes,
            "method": self.method, "precision": self.precision, "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum, "effective_batch": self.effective_batch,
            "activation_checkpointing": self.activation_checkpointing, "max_length": self.max_length,
            "epochs": self.epochs, "learning_rate": self.learning_rate, "lora": lora,
            "trainable_params": self.trainable_params, "total_params": self.total_params,
            "estimate": self.estimate.to_dict(),
            "reasons": [f"{key}: {text}" for key, text in self.reasons.items()],
            "model": self.model, "dataset": self.dataset, "device": self.device,
            "optimizer": self.optimizer, "max_steps": self.max_steps, "warnings": self.warnings,
            "hybrid_shard": self.hybrid_shard, "report_to": list(self.report_to),
            "context_parallel": self.context_parallel,
            "activation_offloading": self.activation_offloading, "packing": self.packing,
            "liger_kernel": self.liger_kernel, "task": self.task,
            "task_settings": asdict(self.task_settings) if self.task_settings else None,
        }

    def save(self, path: Path) -> None:
        text = "# llmwizard plan: every choice for this run and why. `llmwizard run` reads it.\n"
        text += yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)
        path.write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Plan:
        """The plan in `path`; a UserError (title "Plan") names any key that is unknown, missing or
        holds a value the schema refuses, with the value and what is allowed."""
        fix = ("Correct the value (allowed values: docs/schema.md), export the plan again "
               "(`llmwizard export --out DIR`) or restore the file.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"Plan file not found: {path}", title="Plan",
                            fix="Pass a run directory that holds plan.yaml, or the plan.yaml itself.") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"Plan file {path} cannot be read: {exc}", title="Plan", fix=fix) from None
        if not isinstance(data, dict):
            raise UserError(f"Plan file {path} is not a mapping of plan fields.", title="Plan", fix=fix)
        data = dict(data)
        estimate = data.get("estimate")
        if isinstance(estimate, dict):
            # plan.yaml groups the per-device components under per_gpu (MemoryEstimate.to_dict).
            flat = dict(estimate)
            per_gpu = flat.pop("per_gpu", None)
            flat.update(per_gpu if isinstance(per_gpu, dict) else {})
            data["estimate"] = flat
        try:
            return cls(**data)
        except InvalidPlan as exc:
            raise user_error(exc.validation, cls=cls, source=str(path), title="Plan", fix=fix) from None
