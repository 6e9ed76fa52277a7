"""The allowed values of every setting, in one place: presets, plan.yaml, flags and the wizard.

Each choice is a `Literal` type and each number an `Annotated` type carrying a `Check` (the rule
and how it reads). Goals and Plan are pydantic dataclasses typed with these, argparse takes its
`choices=` and `type=` from them, and `describe()` renders what a type allows for messages and
docs/schema.md.

This module imports only the standard library at module level, so the command line builds its
parser (and answers `--help`) without loading pydantic; pydantic is imported when a value is
validated.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, Union

from llmwizard.autotune.errors import UserError

# ----------------------------------------------------------------------------- choices

Strategy = Literal["single", "ddp", "fsdp", "zero2", "zero3"]
Method = Literal["full", "lora", "qlora"]
Offload = Literal["none", "optimizer", "params"]
# torchao_adamw_8bit / _4bit: torchao's low-bit AdamW (the `lowmem` extra), which runs on the CPU
# too and rounds bf16 updates stochastically under pure_bf16; adamw_8bit is bitsandbytes' (CUDA).
# adalomo: AdaLomo (the lomo-optim package, CUDA), each weight updated inside backward: one
# process, no gradient accumulation (llmwizard.autotune.memory.savers). galore_adamw: GaLore's AdamW (the
# galore-torch package) with low-rank states for the decoder's linear layers, apollo_adamw APOLLO's
# (apollo-torch); one process or DDP.
Optimizer = Literal["adamw", "adamw_8bit", "torchao_adamw_8bit", "torchao_adamw_4bit", "adafactor", "sgd", "adalomo",
                    "galore_adamw", "apollo_adamw"]
# pure_bf16: weights, gradients and optimizer states all in bf16, no fp32 master copy.
Precision = Literal["bf16", "fp16", "fp32", "pure_bf16"]
Launcher = Literal["accelerate", "torchrun", "deepspeed"]
# transformers.SchedulerType values whose schedule needs no extra arguments
# (get_scheduler in transformers/optimization.py); the plateau and min-lr schedules need more.
LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                      "constant_with_warmup", "inverse_sqrt"]
Attention = Literal["sdpa", "flash", "eager"]
DatasetSize = Literal["small", "large"]       # the size classes of autotune/data/rules.py
Device = Literal["cuda", "cpu"]
ModelSource = Literal["embedded", "local", "catalog", "hub"]
# What TRL's trainers read: SFT's three, the paired preferences of DPO and ORPO (prompt/chosen/
# rejected, text or chat messages, the prompt explicit or implicit in a shared prefix), KTO's
# unpaired rows (prompt/completion/label) and GRPO's prompts.
DatasetFormat = Literal["messages", "prompt_completion", "text", "preference", "unpaired_preference", "prompt_only"]
# What the run optimises: supervised fine-tuning, or preference and reward tuning with TRL's
# DPOTrainer, ORPOTrainer (trl.experimental.orpo), KTOTrainer or GRPOTrainer (docs/tasks.md).
Task = Literal["sft", "dpo", "orpo", "kto", "grpo"]
# Where a preference task's reference log-probabilities come from: a second frozen copy of the
# model (full fine-tuning), the policy with its LoRA adapter disabled (no second copy), a pass
# over the data before training (`precompute_ref_log_probs`), or no reference (ORPO; GRPO at beta 0).
Reference = Literal["copy", "adapter", "precompute", "none"]
# Experiment trackers, as TRL/Trainer `report_to` names them ("none": metrics.jsonl only).
Tracker = Literal["trackio", "tensorboard", "wandb", "mlflow", "none"]

# Every choice type by the name docs/schema.md and tests use.
CHOICES: dict[str, Any] = {
    "Strategy": Strategy, "Method": Method, "Offload": Offload, "Optimizer": Optimizer,
    "Precision": Precision, "Launcher": Launcher, "LrScheduler": LrScheduler, "Attention": Attention,
    "DatasetSize": DatasetSize, "Device": Device, "ModelSource": ModelSource, "DatasetFormat": DatasetFormat,
    "Tracker": Tracker, "Task": Task, "Reference": Reference,
}


class Check:
    """Annotated metadata: a rule a value must pass after its type is checked, and how the rule
    reads in a message ("an integer of 1 or more"). pydantic applies it through the
    `__get_pydantic_core_schema__` hook."""

    __slots__ = ("allowed", "test")

    def __init__(self, test: Callable[[Any], bool], allowed: str) -> None:
        self.test = test
        self.allowed = allowed

    def __repr__(self) -> str:
        return f"Check({self.allowed!r})"

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def check(value: Any) -> Any:
            if not self.test(value):
                raise ValueError(f"must be {self.allowed}")
            return value

        def not_a_switch(value: Any) -> Any:
            # pydantic's lax mode reads true as 1: a switch where a number belongs is a mistake.
            # (a ValueError, not a TypeError: pydantic turns only ValueError into a validation error)
            if isinstance(value, bool):
                raise ValueError(f"must be {self.allowed}, not true or false")  # noqa: TRY004
            return value

        checked = core_schema.no_info_after_validator_function(check, handler(source))
        return core_schema.no_info_before_validator_function(not_a_switch, checked)


# ----------------------------------------------------------------------------- numbers
# NaN fails every comparison, so the float rules refuse it along with inf. The general rules
# come first; then one rule per setting a user sets (flag, preset key, plan.yaml key, the
# wizard's what-if fields), each with the range a real run can use and why: a value outside it
# is a typo or would overflow (1e308 epochs is an infinite step count), not a choice.

PositiveInt = Annotated[int, Check(lambda v: v >= 1, "an integer of 1 or more")]
NonNegativeInt = Annotated[int, Check(lambda v: v >= 0, "an integer of 0 or more")]
PositiveFloat = Annotated[float, Check(lambda v: 0 < v < math.inf, "a finite number greater than 0")]
NonNegativeFloat = Annotated[float, Check(lambda v: 0 <= v < math.inf, "a finite number of 0 or more")]
Fraction = Annotated[float, Check(lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1")]
Port = Annotated[int, Check(lambda v: 1 <= v <= 65535, "a port number from 1 to 65535")]
# numpy's seed (which transformers.set_seed sets) takes 0 .. 2**32 - 1.
Seed = Annotated[int, Check(lambda v: 0 <= v <= 2**32 - 1, "an integer from 0 to 4294967295")]

# A billion optimizer steps is decades of training at a step a second; the counts of steps a run
# uses (max steps, evaluation interval) stay far below, and the trainer's step counters stay exact.
MAX_STEP_COUNT = 10**9
# The trainer's convention: -1 runs the epochs, a positive count stops after that many steps.
MaxSteps = Annotated[int, Check(lambda v: v == -1 or 1 <= v <= MAX_STEP_COUNT,
                                f"-1 (run the epochs) or an integer of 1 or more, at most {MAX_STEP_COUNT}")]
StepCount = Annotated[int, Check(lambda v: 1 <= v <= MAX_STEP_COUNT,
                                 f"an integer of 1 or more, at most {MAX_STEP_COUNT}")]
# Fine-tuning runs 1 to 30 epochs; 10000 passes over any dataset is already a typo, and the step
# count (steps per epoch x epochs) must stay a finite integer.
MAX_EPOCHS = 10_000
Epochs = Annotated[float, Check(lambda v: 0 < v <= MAX_EPOCHS,
                                f"a finite number greater than 0, at most {MAX_EPOCHS}")]
# Above 1 every optimizer diverges; below 1e-9 an AdamW update (about the learning rate per step)
# is under what fp32 resolves of a weight of 0.01 (6e-10), so nothing trains.
MIN_LEARNING_RATE, MAX_LEARNING_RATE = 1e-9, 1.0
LearningRate = Annotated[float, Check(lambda v: MIN_LEARNING_RATE <= v <= MAX_LEARNING_RATE,
                                      "a finite number greater than 0, from 1e-9 to 1")]
# AdamW's decoupled decay shrinks each weight by learning rate x decay per step: fine-tuning uses
# 0 to 0.1, and above 10 the decay outweighs any gradient.
MAX_WEIGHT_DECAY = 10.0
WeightDecay = Annotated[float, Check(lambda v: 0 <= v <= MAX_WEIGHT_DECAY, "a number from 0 to 10")]
# Examples per optimizer step (effective batch, micro-batch) and the accumulation: 2**24 examples
# is beyond any published pretraining batch; larger counts only overflow the step arithmetic.
MAX_BATCH = 2**24
BatchSize = Annotated[int, Check(lambda v: 1 <= v <= MAX_BATCH, f"an integer of 1 or more, at most {MAX_BATCH}")]
# Tokens per sequence: 2**24 (16M) is above every model's context window; the model's own limit is
# checked when the plan is made.
MAX_TOKENS = 2**24
TokenLength = Annotated[int, Check(lambda v: 1 <= v <= MAX_TOKENS, f"an integer of 1 or more, at most {MAX_TOKENS}")]
# LoRA rank and alpha: a rank above the widest layer (65536 in any model today) adds nothing, and an
# alpha above 2**16 scales the adapter's output by more than 2**16 / rank (the gradient norm overflows).
MAX_LORA = 2**16
LoraRank = Annotated[int, Check(lambda v: 1 <= v <= MAX_LORA, f"an integer of 1 or more, at most {MAX_LORA}")]
LoraAlpha = Annotated[int, Check(lambda v: 1 <= v <= MAX_LORA, f"an integer of 1 or more, at most {MAX_LORA}")]
# Held out for evaluation: at least half of the rows must train.
EvalFraction = Annotated[float, Check(lambda v: 0 <= v < 0.5,
                                      "a number from 0 up to (not including) 1, and under 0.5 so that most rows "
                                      "train")]
# Processes per machine (and GPUs per sequence): machines have up to 16 GPUs and a few hundred
# cores; more ranks than 1024 on one machine is a typo. The planner checks the machine's own count.
MAX_PROCESSES = 1024
ProcessCount = Annotated[int, Check(lambda v: 1 <= v <= MAX_PROCESSES,
                                    f"an integer of 1 or more, at most {MAX_PROCESSES}")]
# Machines: the largest training clusters hold some tens of thousands of machines.
MAX_NODES = 65536
NodeCount = Annotated[int, Check(lambda v: 1 <= v <= MAX_NODES, f"an integer of 1 or more, at most {MAX_NODES}")]
# Host RAM per machine: 64 TiB is above any machine sold.
MAX_GIB = 65536
GiBAmount = Annotated[float, Check(lambda v: 0 < v <= MAX_GIB,
                                   f"a finite number of GiB greater than 0, at most {MAX_GIB}")]
# Waits in seconds (the stop's grace period for the ranks to save): a day at most.
MAX_SECONDS = 86_400
Seconds = Annotated[float, Check(lambda v: 0 < v <= MAX_SECONDS,
                                 f"a number of seconds greater than 0, at most {MAX_SECONDS}")]
# Tokens to generate in a try: beyond 2**16 a reply is no longer a sample.
MAX_NEW_TOKENS = 2**16
NewTokens = Annotated[int, Check(lambda v: 1 <= v <= MAX_NEW_TOKENS,
                                 f"an integer of 1 or more, at most {MAX_NEW_TOKENS}")]

# The preference and reward tasks' own numbers (docs/tasks.md). beta scales the implicit reward
# (DPO, KTO), ORPO's odds-ratio term or GRPO's KL penalty: 0.01 to 0.5 in published runs, 0 only
# for GRPO (no KL term, no reference); above 10 the loss saturates from the first step.
MAX_BETA = 10.0
Beta = Annotated[float, Check(lambda v: 0 <= v <= MAX_BETA, f"a number from 0 to {MAX_BETA:g}")]
# GRPO's completions per prompt: the advantage is a group's reward minus its mean, so a group
# needs 2; 256 per prompt is beyond any published run.
MAX_GENERATIONS = 256
Generations = Annotated[int, Check(lambda v: 2 <= v <= MAX_GENERATIONS,
                                   f"an integer of 2 or more (a group to compare), at most {MAX_GENERATIONS}")]
# Sampling temperature for GRPO's completions: 0 is greedy (every completion the same: no signal).
MAX_TEMPERATURE = 10.0
Temperature = Annotated[float, Check(lambda v: 0 < v <= MAX_TEMPERATURE,
                                     f"a number greater than 0, at most {MAX_TEMPERATURE:g}")]

# LoRA's target layers by name: an empty list would silently mean "every linear layer".
LoraTargets = Annotated[list[str], Check(lambda v: len(v) > 0 and all(name.strip() for name in v),
                                         "a list of one or more linear layer names")]

# Every number type by name, for docs/schema.md and its test.
NUMBERS: dict[str, Any] = {
    "PositiveInt": PositiveInt, "NonNegativeInt": NonNegativeInt, "PositiveFloat": PositiveFloat,
    "NonNegativeFloat": NonNegativeFloat, "Fraction": Fraction, "Port": Port, "Seed": Seed,
    "MaxSteps": MaxSteps, "StepCount": StepCount, "Epochs": Epochs, "LearningRate": LearningRate,
    "WeightDecay": WeightDecay, "BatchSize": BatchSize, "TokenLength": TokenLength, "LoraRank": LoraRank,
    "LoraAlpha": LoraAlpha, "EvalFraction": EvalFraction, "ProcessCount": ProcessCount, "NodeCount": NodeCount,
    "GiBAmount": GiBAmount, "Seconds": Seconds, "NewTokens": NewTokens, "Beta": Beta,
    "Generations": Generations, "Temperature": Temperature,
}


def choices(tp: Any) -> list[str]:
    """The values of a Literal type (through Optional and Annotated), for argparse and selects."""
    tp = _unwrap(tp)
    if typing.get_origin(tp) is not Literal:
        raise TypeError(f"{tp!r} is not a Literal type")
    return [str(value) for value in typing.get_args(tp)]


def describe(tp: Any) -> str:
    """What a type allows, in words: "one of: a, b", "an integer of 1 or more", ..."""
    if typing.get_origin(tp) is Annotated:
        for meta in tp.__metadata__:
            if isinstance(meta, Check):
                return meta.allowed
        return describe(typing.get_args(tp)[0])
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        # X | None: None only means "not set", so say what X allows.
        return " or ".join(describe(arg) for arg in typing.get_args(tp) if arg is not type(None))
    if origin is Literal:
        return "one of: " + ", ".join(str(v) for v in typing.get_args(tp))
    if origin in (list, frozenset, set, tuple):
        items = [arg for arg in typing.get_args(tp) if arg is not Ellipsis]
        if not items or items[0] is Any:
            return "a list"
        return "a list of names" if items[0] is str else f"a list, each {describe(items[0])}"
    if origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}
    if tp in names:
        return names[tp]
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return f"a mapping of {tp.__name__} fields: {', '.join(tp.__dataclass_fields__)}"
    return getattr(tp, "__name__", str(tp))


def _unwrap(tp: Any) -> Any:
    """The type inside Annotated[...] and X | None."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (Union, types.UnionType):
            options = [arg for arg in typing.get_args(tp) if arg is not type(None)]
            if len(options) == 1:
                tp = options[0]
                continue
        return tp


def field_type(cls: type, path: Iterable[str | int]) -> Any:
    """The declared type at a dotted path of a (pydantic or plain) dataclass, or None."""
    tp: Any = cls
    for part in path:
        inner = _unwrap(tp)
        if isinstance(part, int) or typing.get_origin(inner) in (list, dict, frozenset, tuple):
            args = typing.get_args(inner)
            tp = args[-1] if args else Any
            continue
        if not (isinstance(inner, type) and hasattr(inner, "__dataclass_fields__")):
            return None
        hints = typing.get_type_hints(inner, include_extras=True)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


# ----------------------------------------------------------------------------- errors

def user_error(exc: Any, *, cls: type | None, source: str, title: str, fix: str | None = None,
               key_name: Callable[[str], str] | None = None) -> UserError:
    """A UserError for a pydantic ValidationError: the key (dotted path), the value given and
    what is allowed, for each problem. `source` says where the values came from ("plan.yaml",
    "preset small-dataset"); `key_name` turns a dotted key into what the user typed."""
    lines = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        key = ".".join(str(part) for part in loc)
        shown = key_name(key) if key_name else key
        kind = error.get("type", "")
        if kind in ("unexpected_keyword_argument", "extra_forbidden"):
            known = _field_names(cls, loc[:-1]) if cls else []
            lines.append(f"{source}: unknown key '{shown}'"
                         + (f"; known keys: {', '.join(known)}" if known else ""))
            continue
        if not loc:     # a check across fields
            lines.append(f"{source}: {error.get('msg', '').removeprefix('Value error, ')}")
            continue
        if kind in ("missing", "missing_argument"):
            lines.append(f"{source}: missing key '{shown}'")
            continue
        tp = field_type(cls, loc) if cls else None
        allowed = describe(tp) if tp is not None else error.get("msg", "")
        lines.append(f"{source}: {shown} = {_shown_value(error.get('input'))} is not allowed; use {allowed}")
    return UserError(".\n".join(lines) + ".", title=title, fix=fix)


def _shown_value(value: Any, limit: int = 60) -> str:
    """The value as given, cut to `limit` characters: a 400-digit number is named, not printed."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _field_names(cls: type, path: tuple[Any, ...]) -> list[str]:
    tp = _unwrap(field_type(cls, path)) if path else cls
    fields = getattr(tp, "__dataclass_fields__", None)
    return list(fields) if fields else []


def validate(tp: Any, value: Any) -> Any:
    """`value` checked and converted to `tp` (pydantic's lax mode: "1e-4" is a float); raises
    pydantic's ValidationError."""
    return _adapter(tp).validate_python(value)


_ADAPTERS: dict[Any, Any] = {}


def _adapter(tp: Any) -> Any:
    from pydantic import TypeAdapter

    if tp not in _ADAPTERS:
        _ADAPTERS[tp] = TypeAdapter(tp)
    return _ADAPTERS[tp]


def flag_type(tp: Any) -> Callable[[str], Any]:
    """An argparse `type=` function for `tp`: a bad value exits 2 naming the flag (argparse adds
    it), the value and what is allowed."""

    def convert(text: str) -> Any:
        import argparse

        from pydantic import ValidationError

        try:
            return validate(tp, text.strip())
        except ValidationError:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; use {describe(tp)}") from None

    convert.__name__ = getattr(_unwrap(tp), "__name__", "value")
    convert.schema_type = tp  # type: ignore[attr-defined]
    return convert


# ----------------------------------------------------------------------------- text
# Text that reaches the run's files (launch.sh, slurm.sbatch, README.txt, the configs). Each kind
# allows only what it needs, so no value can end a comment line, start an option or hold shell
# syntax; the exporters shell-quote every word as well.

def _matches(pattern: str, value: str) -> bool:
    import re

    return re.fullmatch(pattern, value, flags=re.ASCII) is not None


def _is_host(value: str) -> bool:
    """An IPv4/IPv6 address, or a host name of dot-separated labels (RFC 1123) whose last label
    is not all digits (so a malformed address such as 10.0.0.999 is no host name either)."""
    import ipaddress

    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    return (len(value) <= 253 and not labels[-1].isdigit()
            and all(_matches(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in labels))


def _is_regex(value: str) -> bool:
    import re

    try:
        re.compile(value)
    except re.error:
        return False
    return True


_MODULE = r"\w+(?:\.\w+)*"     # q_proj, mlp.down_proj, layers.0.q_proj

# A directory name, a tracker's run name and an argument of its own in launch.sh and slurm.sbatch.
RunName = Annotated[str, Check(lambda v: _matches(r"(?!-)(?!\.+$)[A-Za-z0-9._-]{1,128}", v),
                               "letters, digits, '.', '_' and '-' (1 to 128, not starting with '-')")]
OneLine = Annotated[str, Check(lambda v: v != "" and v.isprintable(), "one line of printable characters")]
HostAddress = Annotated[str, Check(_is_host, "a host name (letters, digits, '-', '.') or an IPv4/IPv6 address")]
ClassNames = Annotated[str, Check(lambda v: all(_matches(r"[A-Za-z_]\w*", name) for name in v.split(",")),
                                  "comma-separated Python class names (LlamaDecoderLayer,SiglipEncoderLayer)")]
ModuleNames = Annotated[list[str], Check(lambda v: bool(v) and all(_matches(_MODULE, name) for name in v),
                                         "a list of module names (q_proj, mlp.down_proj)")]
# What PEFT receives: the names, or one regex (TRL passes a one-item list on as a regex string).
PeftTargets = Annotated[list[str], Check(
    lambda v: all(_matches(_MODULE, name) for name in v) or (len(v) == 1 and v[0].isprintable() and _is_regex(v[0])),
    "a list of module names, or one regular expression that compiles")]

# Every text type by name, for docs/schema.md.
TEXTS: dict[str, Any] = {
    "RunName": RunName, "OneLine": OneLine, "HostAddress": HostAddress, "ClassNames": ClassNames,
    "ModuleNames": ModuleNames, "PeftTargets": PeftTargets,
}

# Where else a run can be exported for (llmwizard.runner.export.targets): SkyPilot task YAML, a Kubeflow
# Trainer v2 TrainJob, a Ray Train driver. plan.yaml's `targets` and `llmwizard export --target`.
Target = Literal["skypilot", "kubernetes", "ray"]
# GRPO's reward functions: importable dotted names (`package.module.function`), which the training
# entry imports; nothing else reaches it.
_REWARD = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+"
RewardName = Annotated[str, Check(lambda v: _matches(_REWARD, v),
                                  "an importable function name, `module.function` (letters, digits, '_' and dots)")]
RewardNames = Annotated[list[str], Check(
    lambda v: bool(v) and all(_matches(_REWARD, name) for name in v),
    "one or more importable function names, each `module.function` (letters, digits, '_' and dots)")]
CHOICES["Target"] = Target
