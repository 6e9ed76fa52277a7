"""The wizard's one door to the decision core and the runner.

Screens never import autotune/, runner/ or presets/ themselves: they call these functions (from
thread workers) and show what comes back. When a core API changes, this module changes and the
screens do not. Every import is inside a function so the app paints before the core loads, and
nothing here imports torch: training runs in a child process.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmwizard.autotune.data.dataset import DatasetProfile
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import HardwareProfile
    from llmwizard.autotune.memory import MemoryEstimate
    from llmwizard.autotune.model.model_spec import ModelSpec
    from llmwizard.autotune.plan import Plan
    from llmwizard.autotune.data.rules import SizeRule
    from rich.console import RenderableType
    from rich.text import Text

    from llmwizard.runner.diagnostics import Finding as DiagnosticFinding
    from llmwizard.runner.session.engine import RunSession
    from llmwizard.runner.session.events import Event
    from llmwizard.runner.state import RunState
    from llmwizard.runner.after.summary import Summary

EMBEDDED_MODEL = "embedded:tiny-llama"
EMBEDDED_DATASET = "embedded:arithmetic"
EMBEDDED_VISION_MODEL = "embedded:tiny-vision"
EMBEDDED_MOE_MODEL = "embedded:tiny-moe"
EMBEDDED_VISION_DATASET = "embedded:shapes"
DATASET_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


# ----------------------------------------------------------------------------- hardware

def detect_hardware(runs_dir: str | os.PathLike[str] = ".") -> HardwareProfile:
    from llmwizard.autotune.machine import hardware

    return hardware.detect(runs_dir)


def hardware_from_spec(spec: str, nodes: int = 1, host_ram_gib: float | None = None) -> HardwareProfile:
    """Hardware to plan for; raises UserError naming the spec when it cannot be read."""
    from llmwizard.autotune.machine import hardware

    return hardware.from_spec(spec, nodes=nodes, host_ram_gib=host_ram_gib)


def with_nodes(hardware: HardwareProfile, nodes: int) -> HardwareProfile:
    """This machine's profile for `nodes` machines like it (the same object when unchanged)."""
    import dataclasses

    return hardware if nodes == hardware.nodes else dataclasses.replace(hardware, nodes=nodes)


def gpu_spec_examples() -> list[str]:
    """Specs a user can type, built from the GPU catalog so new entries show up by themselves."""
    from llmwizard.autotune.machine.gpu_catalog import CATALOG

    return ["cpu", *(f"{count}x{name}" for name in CATALOG for count in (1, 2, 4, 8)), "2x24GB", "2x8xH100-80GB"]


# ----------------------------------------------------------------------------- presets and goals

def list_presets() -> list[tuple[str, str]]:
    """(name, description and the command it is for) of every preset, bundled and the user's."""
    from llmwizard.presets import all_presets

    return [(info.name, info.description + (f" (yours: {info.path})" if info.user else "")
             + (f"\nCommand line: {info.command}" if info.command else ""))
            for info in all_presets()]


# ----------------------------------------------------------------------------- tasks

# What to train, as step 1 offers it: the label, and one line on the rows the task needs and what it
# learns from them (the dataset step names the columns when a dataset lacks them).
TASKS = {
    "sft": ("SFT", "examples to imitate: chat messages, prompt/completion or text rows"),
    "dpo": ("DPO", "prompt/chosen/rejected pairs; prefers chosen, against a reference"),
    "orpo": ("ORPO", "prompt/chosen/rejected pairs; SFT on chosen, no reference model"),
    "kto": ("KTO", "prompt/completion rows labelled good or bad (true/false), or pairs"),
    "grpo": ("GRPO", "prompts, and what the reward reads (default: an exact `answer`)"),
}


def task_choices() -> list[str]:
    """The tasks a user may choose, as the schema allows them."""
    from llmwizard.autotune.schema import Task, choices

    return choices(Task)


def preset_task(preset: str | None) -> str | None:
    """The task a preset trains (its `task:`), or None when it leaves the task to the user."""
    return goals_for(preset, None).task if preset else None


def default_dataset(task: str) -> str:
    """The embedded dataset an empty Dataset field reads for `task`."""
    from llmwizard.autotune.data.preference import DEFAULT_DATASETS

    return DEFAULT_DATASETS[task]  # type: ignore[index]


def goals_for(preset: str | None, args: argparse.Namespace | None,
              overrides: dict[str, Any] | None = None) -> Goals:
    """Preset, then command-line flags, then the wizard's own edits: later wins."""
    from llmwizard.autotune.goals import GOAL_FIELDS, Goals
    from llmwizard.presets import load_preset

    goals = load_preset(preset) if preset else Goals()
    flags = {name: getattr(args, name, None) for name in GOAL_FIELDS - {"preset", "seed"}}
    return goals.merged(**flags).merged(**(overrides or {}))


# ----------------------------------------------------------------------------- models

def default_method(preset: str | None, model: ModelSpec | None) -> str:
    """The method the planner takes for `model` when the user picks none (the model step shows it
    as chosen, so the screen says what the plan will do)."""
    from llmwizard.autotune.plan.plan_steps import default_method as planned

    return planned(goals_for(preset, None), model)


@dataclass(frozen=True)
class Choice:
    """A completion: the value the input takes and the line the list shows."""

    value: str
    label: str


def model_choices(text: str, limit: int = 50) -> list[Choice]:
    """Catalog models matching `text` (the embedded default first), then local model directories."""
    from llmwizard.autotune.model import model_spec

    text = text.strip()
    found: list[Choice] = []
    if text.lower() in EMBEDDED_MODEL:
        found.append(Choice(EMBEDDED_MODEL, f"{EMBEDDED_MODEL}  (built here, trains anywhere)"))
    if text.lower() in EMBEDDED_VISION_MODEL:
        found.append(Choice(EMBEDDED_VISION_MODEL, f"{EMBEDDED_VISION_MODEL}  (images + text, built here)"))
    if text.lower() in EMBEDDED_MOE_MODEL:
        found.append(Choice(EMBEDDED_MOE_MODEL, f"{EMBEDDED_MOE_MODEL}  (Mixture-of-Experts, built here)"))
    search = getattr(model_spec, "search_catalog", None)
    if search is not None:
        for item in search(text, limit=limit if text else 10):
            found.append(_catalog_choice(item))
    elif hasattr(model_spec, "catalog_names"):
        found += [Choice(name, name) for name in model_spec.catalog_names() if text.lower() in name.lower()]
    found += [Choice(path, path) for path in _local_paths(text, want_dirs=True)]
    unique = {choice.value: choice for choice in found}
    return list(unique.values())[:limit]


def _catalog_choice(item: Any) -> Choice:
    if isinstance(item, str):
        return Choice(item, item)
    name = str(item.get("name"))
    details = [str(item[key]) for key in ("family",) if item.get(key)]
    if item.get("total_params"):
        details.append(f"{int(item['total_params']) / 1e9:.2f}B")
    if item.get("hub_id"):
        details.append(str(item["hub_id"]))
    return Choice(name, f"{name}  ({', '.join(details)})" if details else name)


def load_model(name: str | None, trust_remote_code: bool = False, task: str = "sft") -> ModelSpec:
    """The model's spec (none named: the task's default, as the command line takes it); a model that
    names its own code is refused unless `trust_remote_code`."""
    from llmwizard.autotune.model.model_spec import load_model_spec

    name = (name or "").strip() or default_model(task)
    return load_model_spec(name, trust_remote_code=trust_remote_code)


def default_model(task: str) -> str | None:
    """The model an empty Model field reads for `task` (None: the embedded tiny model): a preference
    or reward task starts from the embedded model after a short SFT warm-up."""
    from llmwizard.autotune.plan.inputs import default_model as default

    return default(task)  # type: ignore[arg-type]


def model_directory(model: ModelSpec) -> Path | None:
    """Where the model's tokenizer lives on disk (building the embedded model once), or None."""
    from llmwizard.autotune.plan.inputs import model_directory as directory

    return directory(model)


# ----------------------------------------------------------------------------- datasets

@dataclass
class DatasetReport:
    profile: DatasetProfile
    size: str                 # "small" or "large"
    why: str
    rule: SizeRule


def profile_dataset(source: str | None, model: ModelSpec, task: str = "sft") -> DatasetReport:
    """The dataset (empty: the task's embedded one) read as `task` reads it; a UserError naming the
    columns when it does not fit the task."""
    from llmwizard.autotune.plan.inputs import profile_for
    from llmwizard.autotune.data.rules import RULES, classify

    result = profile_for(model, source, task)  # type: ignore[arg-type]
    size, why = classify(result)
    return DatasetReport(result, size, why, RULES[size])


def dataset_choices(text: str, limit: int = 30, task: str = "sft") -> list[str]:
    """Embedded datasets that fit `task` (its default first) matching `text`, then dataset files."""
    embedded = {"sft": [EMBEDDED_DATASET, EMBEDDED_VISION_DATASET],
                "kto": [default_dataset("kto"), default_dataset("dpo")]}.get(task, [default_dataset(task)])
    found = [name for name in embedded if text.strip().lower() in name]
    return (found + _local_paths(text, want_dirs=False))[:limit]


def _local_paths(text: str, *, want_dirs: bool) -> list[str]:
    """Completions for a path being typed: model directories (config.json) or dataset files."""
    text = text.strip()
    if not text.startswith((".", "/", "~")) and "/" not in text:
        return []  # a catalog or hub name, not a path being typed
    typed = Path(text).expanduser()
    base, stem = (typed, "") if text.endswith("/") else (typed.parent, typed.name)
    try:
        entries = sorted(base.iterdir())[:500]
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.lower().startswith(stem.lower()):
            continue
        shown = str(entry)
        if text.startswith("./"):
            shown = "./" + shown
        if text.startswith("~"):
            shown = "~/" + str(entry.relative_to(Path.home()))
        if entry.is_dir():
            found.append(shown + "/" if not (want_dirs and (entry / "config.json").is_file()) else shown)
        elif not want_dirs and entry.suffix.lower() in DATASET_SUFFIXES:
            found.append(shown)
    return found


# ----------------------------------------------------------------------------- planning

def strategy_choices() -> list[str]:
    """The strategies a user may pin, as the schema allows them."""
    from llmwizard.autotune.schema import Strategy, choices

    return choices(Strategy)


def precision_choices() -> list[str]:
    from llmwizard.autotune.schema import Precision, choices

    return choices(Precision)


def optimizer_choices() -> list[str]:
    from llmwizard.autotune.schema import Optimizer, choices

    return choices(Optimizer)


def parse_goal_value(name: str, text: str) -> Any:
    """`text` as the Goals field `name` takes it ("1e-4" is a float); ValueError naming the value and
    what is allowed. The rules are the schema's, the same that flags, presets and plan.yaml obey."""
    from pydantic import ValidationError

    from llmwizard.autotune import schema
    from llmwizard.autotune.goals import Goals

    kind = schema.field_type(Goals, [name])
    try:
        return schema.validate(kind, text.strip())
    except ValidationError:
        raise ValueError(f"'{text.strip()}' is not allowed; use {schema.describe(kind)}") from None


def make_plan(hardware: HardwareProfile, model: ModelSpec, report: DatasetReport, goals: Goals) -> Plan:
    """The plan by the route every face takes (llmwizard.autotune.plan.inputs.plan_for); a damaged
    calibration store is a warning of the plan (the terminal belongs to the app). A plan whose
    task's trainer cannot take one of its settings (packing for DPO) is refused here with the
    exporter's own error, so the plan step never shows a plan that Export would refuse."""
    from llmwizard.autotune.plan.inputs import plan_for
    from llmwizard.runner.export.configs import trl_config

    plan = plan_for(hardware, model, report.profile, goals)
    trl_config(plan)  # the task's TRL config, as Export writes it
    return plan


# The what-if fields of the plan step, in the words the screen uses (Goals field -> label).
FIELD_WORDS = {"strategy": "strategy", "checkpointing": "checkpointing", "micro_batch": "micro-batch",
               "lora_r": "LoRA rank", "learning_rate": "learning rate", "epochs": "epochs",
               "max_steps": "max steps", "precision": "precision", "optimizer": "optimizer", "packing": "packing",
               "context_parallel": "GPUs per sequence", "activation_offloading": "activation offloading",
               "liger_kernel": "Liger", "beta": "beta", "num_generations": "generations", "reference": "reference"}
# The what-if fields that are selects with an "auto" value (the others are typed numbers).
SELECT_FIELDS = ("strategy", "checkpointing", "precision", "optimizer", "packing", "context_parallel",
                 "activation_offloading", "liger_kernel", "reference")
STRATEGY_WORDS = {"single": "single", "ddp": "DDP", "fsdp": "FSDP2", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}
# Flags the planner's fixes name, as the wizard says them: a field of a step, or how to start it.
_FLAG_WORDS = [
    (r"(?:[Pp]ass|[Uu]se) --task ((?:sft|dpo|orpo|kto|grpo)(?:(?:, | or )(?:sft|dpo|orpo|kto|grpo))*)",
     lambda m: f"{'C' if m.group(0)[0].isupper() else 'c'}hoose "
               f"{' '.join(w if w == 'or' else w.upper() for w in m.group(1).split(' '))} under What to train on step 1"),
    (r"--task (\w+)", lambda m: m.group(1).upper()),
    (r"leave --dataset out", lambda m: "leave the Dataset field (step 4) empty"),
    (r"plan\.yaml sets (\w+): (\S+), which TRL's (\w+) trainer cannot do",
     lambda m: f"TRL's {m.group(3)} trainer cannot do {m.group(1).replace('_', ' ')} "
               f"{'on' if m.group(2) == 'True' else m.group(2)}"),
    (r"Set (\w+) back to its default in plan\.yaml, or train with task sft",
     lambda m: f"Set {FIELD_WORDS.get(m.group(1), m.group(1))} to auto, or choose SFT under What to train on step 1"),
    (r"--num-generations (\d+)", lambda m: f"generations {m.group(1)}"),
    (r"--num-generations\b", lambda m: "generations"),
    (r"--beta (\S+)", lambda m: f"beta {m.group(1)}"),
    (r"--reference (\w+)", lambda m: f"reference {m.group(1)}"),
    (r"--max-completion-length (\d+)", lambda m: f"max completion length {m.group(1)} (max_completion_length in a "
                                                 "preset of your own, chosen on step 1)"),
    (r"--effective-batch (\d+)", lambda m: f"effective batch {m.group(1)} (effective_batch in a preset of your own, "
                                           "chosen on step 1)"),
    (r"--method (\w+)", lambda m: f"method {m.group(1).replace('qlora', 'QLoRA').replace('lora', 'LoRA')}, "
                                   "on step 3"),
    (r"with --gpus add '([^']+)'", lambda m: f"add '{m.group(1)}' to the GPUs field on step 2"),
    (r"--gpus (\d+x[^\s;),]+(?:,ram=[^\s;)]+)?) --nodes (\d+)",
     lambda m: f"{m.group(1)} in the GPUs field and {m.group(2)} in the nodes field on step 2"),
    (r"--gpus (\d+x[^\s;),]+(?:,ram=[^\s;)]+)?)", lambda m: f"{m.group(1)} in the GPUs field on step 2"),
    (r"--gpus", lambda m: "the GPUs field on step 2"),
    (r"--processes (\d+)", lambda m: f"{m.group(1)} GPU(s) in the GPUs field on step 2"),
    (r"--strategy (\w+)", lambda m: f"strategy {STRATEGY_WORDS.get(m.group(1), m.group(1))}"),
    (r"--micro-batch (\d+)", lambda m: f"micro-batch {m.group(1)}"),
    (r"--lora-r (\d+)", lambda m: f"LoRA rank {m.group(1)}"),
    (r"--preset ([\w-]+)", lambda m: f"preset {m.group(1)} on step 1"),
    (r"--learning-rate (\S+?)\)", lambda m: f"learning rate {m.group(1)})"),
    (r"--learning-rate (\S+)", lambda m: f"learning rate {m.group(1)}"),
    (r"--epochs (\S+)", lambda m: f"epochs {m.group(1)}"),
    (r"--max-steps (\d+)", lambda m: f"max steps {m.group(1)}"),
    (r"--precision (\w+)", lambda m: f"precision {m.group(1)}"),
    (r"--optimizer (\w+)", lambda m: f"optimizer {m.group(1)}"),
    (r"--no-activation-offloading", lambda m: "activation offloading off"),
    (r"--no-liger-kernel", lambda m: "Liger off"),
    (r"leave --context-parallel to the planner", lambda m: "set GPUs per sequence to auto"),
    (r"--context-parallel (\d+)", lambda m: f"GPUs per sequence {m.group(1)}"),
    (r"--offload params", lambda m: "params offload (`offload: params` in a preset of your own, chosen on step 1)"),
    (r"--packing turns it on", lambda m: "the packing field turns it on"),
    (r"--no-packing", lambda m: "packing off"),
    (r"--packing", lambda m: "packing on"),
    (r"--no-checkpointing", lambda m: "checkpointing off"),
    (r"--checkpointing", lambda m: "checkpointing on"),
    (r"\(`llmwizard plan --model ([\w.-]+)`\)", lambda m: f"(such as {m.group(1)})"),
    (r"Point --model at", lambda m: "Type in the Model field (step 3)"),
    (r"\b([Pp])ass (a|its) directory", lambda m: f"{'T' if m.group(1) == 'P' else 't'}ype {m.group(2)} directory "
                                               "in the Model field (step 3)"),
    (r"([Pp])ass --dataset with", lambda m: f"{'G' if m.group(1) == 'P' else 'g'}ive the Dataset field (step 4)"),
    (r"--dataset\b", lambda m: "the Dataset field (step 4)"),
    (r"or leave it out to use the bundled", lambda m: "or leave it empty to use the bundled"),
    (r"--model\b", lambda m: "the model on step 3"),
    (r"raise --max-length\b", lambda m: "raise max length (max_length in a preset of your own, chosen on step 1)"),
    (r"llmwizard plan shows the token lengths", lambda m: "step 4 shows the token lengths"),
    (r"--max-length (\d+)", lambda m: f"max length {m.group(1)}, from a preset or when the wizard is started "
                                       "with it"),
]


def value_words(name: str, value: Any) -> str:
    """A what-if value as the plan step shows it: "strategy DDP", "checkpointing off"."""
    if name == "strategy":
        shown = STRATEGY_WORDS.get(str(value), str(value))
    elif isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, float):
        shown = f"{value:g}"
    else:
        shown = str(value)
    return f"{FIELD_WORDS.get(name, name.replace('_', ' '))} {shown}"


def in_wizard_words(text: str) -> str:
    """A planner message or fix with its command-line flags said as the wizard's fields and steps."""
    import re

    for pattern, words in _FLAG_WORDS:
        text = re.sub(pattern, words, text)  # type: ignore[arg-type]
    return text


@dataclass
class Refusal:
    """Why the planner refused the edited goals, in the plan step's words.

    `refused`: the what-if fields whose values are not applied (each alone blocks the plan; all of
    them when only clearing them all helps; none when the hardware, model or data is the cause).
    `verdict`: one line that says so; `fix`: the smallest change that makes a plan, naming fields.
    `requested`: the memory of the setup asked for, when it does not fit (the figure the verdict gives).
    """

    verdict: str
    fix: str | None
    refused: list[str]
    requested: MemoryEstimate | None = None


def explain_refusal(hardware: HardwareProfile, model: ModelSpec, report: DatasetReport,
                    goals_with: Any, overrides: dict[str, Any], error: Any, last: Plan | None) -> Refusal:
    """The core's smallest change (llmwizard.autotune.plan.refusal) for the what-if values `overrides`,
    in the plan step's words. `goals_with(overrides)` builds the goals for a set of edits."""
    from llmwizard.autotune.plan.refusal import smallest_change

    found = smallest_change(lambda changed: make_plan(hardware, model, report, goals_with(changed)),
                            overrides, error, model, last)
    detail = _detail(error, overrides)
    if found.requested is not None:  # the verdict gives the bar's own figure
        from llmwizard.wizard.report import size_text

        detail = (f"it needs {size_text(found.requested.total)} per "
                  f"{'GPU' if hardware.device == 'cuda' else 'process'}, "
                  f"and {size_text(found.requested.budget)} is free.")
    if found.fixes:
        changes = []
        for fix in found.fixes:
            label = FIELD_WORDS[fix.key]
            auto = f"set {label} to auto" if fix.key in SELECT_FIELDS else f"clear {label}"
            change = f"{auto} (the planner picks {_picked(fix.key, fix.cleared)})"
            if fix.others:
                words = [STRATEGY_WORDS.get(s, s) for s in fix.others]
                change += f"; {', '.join(words)} also {'work' if len(words) > 1 else 'works'}"
            if fix.largest is not None:
                change = (f"set micro-batch to {fix.largest} or less, or clear it "
                          f"(the planner picks {fix.cleared.micro_batch})")
            changes.append(change)
        asked = ", ".join(value_words(fix.key, fix.value) for fix in found.fixes)
        return Refusal(f"{asked} not applied: {detail}",
                       "; or ".join(c[:1].upper() + c[1:] if i == 0 else c for i, c in enumerate(changes)) + ".",
                       found.refused, found.requested)
    if found.together:
        asked = ", ".join(value_words(name, overrides[name]) for name in found.pinned)
        cleared_words = " and ".join(
            f"set {FIELD_WORDS[n]} to auto" if n in SELECT_FIELDS else f"clear {FIELD_WORDS[n]}"
            for n in found.pinned)
        return Refusal(f"{asked} not applied together: {detail}",
                       f"{cleared_words[:1].upper()}{cleared_words[1:]}: no one of them alone makes a plan.",
                       found.refused, found.requested)
    task_fix = _task_field_fix(hardware, model, report, goals_with, overrides, detail)
    if task_fix is not None:
        return task_fix
    return Refusal(f"No plan: {in_wizard_words(error.message)}",
                   in_wizard_words(error.fix) if error.fix else None, [], found.requested)


# The task's what-if fields, which the core's search of pinned settings leaves out.
TASK_FIELDS = ("beta", "reference", "num_generations")


def _task_field_fix(hardware: HardwareProfile, model: ModelSpec, report: DatasetReport, goals_with: Any,
                    overrides: dict[str, Any], detail: str) -> Refusal | None:
    """A refusal that one of the task's fields alone causes (beta 0 for DPO, a reference the method
    cannot have, a group too large for the batch): that field not applied, and what the planner
    picks without it. None when no one of them alone is the cause."""
    from llmwizard.autotune.errors import UserError

    for name in TASK_FIELDS:
        if overrides.get(name) is None:
            continue
        try:
            cleared = make_plan(hardware, model, report, goals_with({k: v for k, v in overrides.items() if k != name}))
        except UserError:
            continue
        label = FIELD_WORDS[name]
        auto = f"set {label} to auto" if name in SELECT_FIELDS else f"clear {label}"
        return Refusal(f"{value_words(name, overrides[name])} not applied: {detail.removeprefix('the plan: ')}",
                       f"{auto[:1].upper()}{auto[1:]} (the planner picks {_picked(name, cleared)}).", [name])
    return None


def _picked(name: str, plan: Plan) -> str:
    if name == "strategy":
        text = f"{STRATEGY_WORDS.get(plan.strategy, plan.strategy)} at micro-batch {plan.micro_batch}"
        if plan.offload != "none":
            text += f" with {plan.offload} offload"
        return text
    if name == "checkpointing":
        return "on" if plan.activation_checkpointing else "off"
    if name in ("precision", "optimizer"):
        return str(getattr(plan, name))
    if name == "packing":
        return "on" if plan.packing else "off"
    if name == "context_parallel":
        return str(plan.context_parallel)
    if name in ("activation_offloading", "liger_kernel"):
        return "on" if getattr(plan, name) else "off"
    if name == "micro_batch":
        return str(plan.micro_batch)
    if name in ("beta", "num_generations", "reference"):  # the task's settings
        value = getattr(plan.task_settings, name, None)
        return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    if name == "lora_r":
        return str(plan.lora.r) if plan.lora else "none: full fine-tuning"
    if name == "max_steps":
        return f"{plan.epochs:g} epochs"
    if name == "epochs":
        return f"{plan.epochs:g}"
    return f"{getattr(plan, name):g}"


def _detail(error: Any, overrides: dict[str, Any]) -> str:
    """The planner's reason without its own restatement of what was asked (already in the verdict)."""
    import re

    message = str(error.message)
    if " does not fit: " in message:
        return message.split(" does not fit: ", 1)[1]
    message = re.sub(r"^Strategy '\w+' ", "it ", message)
    return in_wizard_words(message)


def estimate_request(last: Plan, model: ModelSpec, overrides: dict[str, Any]) -> MemoryEstimate:
    """Memory of the setup the user asked for, when the planner refused it (the core's figure, so
    the bar and the verdict agree)."""
    from llmwizard.autotune.plan.refusal import requested_memory

    return requested_memory(last, model, overrides)


# ----------------------------------------------------------------------------- export and run

@dataclass
class ExportResult:
    run_dir: Path
    files: list[Path]
    command: str              # the exact command launch.sh runs


def export_run(plan: Plan, output_dir: str | os.PathLike[str]) -> ExportResult:
    from llmwizard.runner.export import export
    from llmwizard.runner.session.launch import new_run_dir

    run_dir = new_run_dir(Path(output_dir), plan.name)
    files = export(plan, run_dir)
    script = (run_dir / "launch.sh").read_text(encoding="utf-8")
    command = next((line for line in script.splitlines() if line.startswith("exec ")), "bash launch.sh")
    return ExportResult(run_dir, files, command)


def can_launch_here(plan: Plan, hardware: HardwareProfile) -> bool:
    """A plan for this machine launches here; one for described GPUs or many nodes is exported."""
    if plan.num_machines > 1:
        return False
    return hardware.source == "detected" or plan.device == "cpu"


def start_session(plan: Plan, run_dir: Path) -> tuple[RunSession, list[Event]]:
    """A RunSession for `run_dir`, its first attempt launched, and the events that said so.

    The run screen follows it afterwards (`RunSession.run` in its thread worker, with its own
    sink): the session itself diagnoses, recovers from running out of GPU memory and stops.
    """
    from llmwizard.runner.session.engine import RunSession

    said: list[Event] = []
    session = RunSession(plan, run_dir, said.append)
    session.start()
    return session, said


# ----------------------------------------------------------------------------- run views

def format_seconds(seconds: float | None) -> str:
    from llmwizard.runner.after.summary import format_seconds as clock

    return clock(seconds)


def metrics_lines(state: RunState) -> list[Text]:
    """The current numbers (loss, eval, lr, grad norm, tokens/s, peak memory), as the console shows them."""
    from llmwizard.runner.session.live import numbers

    return numbers(state)


def finding_view(finding: DiagnosticFinding) -> RenderableType:
    """A diagnostic as the console shows it, its fix in the wizard's words (fields, not flags)."""
    from dataclasses import replace

    from llmwizard.runner.session.session import finding_text

    return finding_text(replace(finding, message=in_wizard_words(finding.message), fix=in_wizard_words(finding.fix)))


def summary_view(summary: Summary, log_lines: int = 8) -> RenderableType:
    """The end-of-run summary as the console prints it: title, rows, findings, failure and fix."""
    from rich.console import Group
    from rich.text import Text

    from llmwizard.runner.session.session import failure_text, summary_table, summary_title

    parts: list[RenderableType] = [summary_title(summary), summary_table(summary)]
    parts += [finding_view(finding) for finding in summary.findings]
    if summary.log_excerpt:
        parts.append(Text("the last lines of train.log (tracebacks left out; the whole log keeps them):", style="dim"))
        parts += [Text(line, style="red", no_wrap=True, overflow="ellipsis") for line in summary.log_excerpt[-log_lines:]]
    failure = failure_text(summary)
    if failure is not None and summary.failure is not None:
        parts += [Text(summary.failure.title, style="bold red"), failure]
    return Group(*parts)
