"""The Plan: every decision for one run, with its reason. The single source of truth.

Everything a face shows or an exporter writes derives from a Plan, and `plan.yaml` loads back
into an equal Plan. Loading checks every key and type, so a damaged or hand-broken file gives a
message that names the field, not a traceback deep inside a launcher.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.memory import MemoryEstimate

PLAN_VERSION = 1


@dataclass
class LoraSettings:
    r: int
    alpha: int
    dropout: float
    target_modules: list[str]        # the linear layers adapted, by name
    # What PEFT receives: the names, or one regex when plain names would also match a vision
    # tower or when there is a single name (TRL passes a one-item list on as a regex string).
    peft_targets: list[str] = field(default_factory=list)


@dataclass
class Plan:
    name: str
    model: str                       # embedded:tiny-llama, a local directory, or a hub name
    model_source: str                # embedded | local | catalog | hub
    layer_cls: str                   # the class(es) FSDP wraps, comma-separated
    dataset: str                     # embedded:arithmetic, an absolute path, or a hub name
    dataset_format: str
    device: str                      # cuda | cpu
    hardware: str                    # one line: what was planned for
    strategy: str                    # single | ddp | fsdp | zero2 | zero3
    offload: str                     # none | optimizer | params
    launcher: str                    # accelerate | torchrun | deepspeed
    num_machines: int
    num_processes: int               # total over all machines
    method: str                      # full | lora | qlora
    precision: str                   # bf16 | fp16 | fp32
    optimizer: str                   # adamw | adamw_8bit | adafactor | sgd
    micro_batch: int
    grad_accum: int
    effective_batch: int
    activation_checkpointing: bool
    max_length: int
    epochs: float
    max_steps: int                   # -1: run the epochs
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    lora: LoraSettings | None
    eval_fraction: float
    eval_steps: int
    save_steps: int
    logging_steps: int
    seed: int
    trainable_params: int
    total_params: int
    estimate: MemoryEstimate
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    main_process_ip: str = "127.0.0.1"
    main_process_port: int = 29500
    attention: str = "sdpa"
    # FSDP2 across machines: shard inside each machine, replicate across them (HSDP), so the
    # per-layer weight gathers stay on the fast intra-node links.
    hybrid_shard: bool = False
    version: int = PLAN_VERSION

    @property
    def processes_per_machine(self) -> int:
        return self.num_processes // self.num_machines

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["estimate"] = self.estimate.to_dict()
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
            "hybrid_shard": self.hybrid_shard,
        }

    def save(self, path: Path) -> None:
        text = "# llmwizard plan: every choice for this run and why. `llmwizard run` reads it.\n"
        text += yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)
        path.write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Plan:
        fix = "Export the plan again (`llmwizard export --out DIR`) or restore the file."
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"Plan file not found: {path}", title="Plan",
                            fix="Pass a run directory that holds plan.yaml, or the plan.yaml itself.") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"Plan file {path} cannot be read: {exc}", title="Plan", fix=fix) from None
        if not isinstance(data, dict):
            raise UserError(f"Plan file {path} is not a mapping of plan fields.", title="Plan", fix=fix)
        try:
            return _build(cls, data, "plan")
        except (TypeError, ValueError) as exc:
            raise UserError(f"Plan file {path} is damaged: {exc}", title="Plan", fix=fix) from None


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct a dataclass from plain data, checking keys and types field by field."""
    if cls is MemoryEstimate:
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a mapping")
        data = dict(data)
        data.update(data.pop("per_gpu", {}) or {})
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} in {where}")
    values = {}
    for name, spec in known.items():
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ValueError(f"missing field '{name}' in {where}")
            continue
        values[name] = _coerce(hints[name], data[name], f"{where}.{name}")
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{where} has an invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping")
        return {str(k): _coerce(typing.get_args(hint)[1], v, where) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, not {value!r}")
        return value
    return value
