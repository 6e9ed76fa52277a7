"""One route from what the user gave to a plan, for every face.

The CLI (`plan`, `export`, `estimate`, the headless run) and the wizard both go through these
functions, so a model, a dataset and a set of goals give the same plan whichever face asked:
the same tokenizer measures the data, the same earlier probes calibrate the estimates, and the
same warnings reach the plan. A face turns its own inputs (flags, fields) into Goals and renders
what comes back; it decides nothing here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware_types import HardwareProfile
from llmwizard.autotune.model.model_types import ModelSpec
from llmwizard.autotune.plan import Plan
from llmwizard.autotune.schema import Task


def default_model(task: Task) -> str | None:
    """The model when none is named: the embedded tiny model for SFT (None), and for a preference
    or reward task the same model after a short SFT warm-up (llmwizard.autotune.embedded.warm),
    since those tasks tune a model that already answers."""
    from llmwizard.autotune.embedded.warm import EMBEDDED_SFT_MODEL

    return None if task == "sft" else EMBEDDED_SFT_MODEL


def model_directory(model: ModelSpec) -> Path | None:
    """Where the model's tokenizer and processor live on disk (building the embedded model once),
    or None for a model known only by its config (a catalog name)."""
    if model.source == "embedded":
        from llmwizard.autotune.embedded.vision import ensure_embedded
        from llmwizard.autotune.embedded.warm import EMBEDDED_SFT_MODEL

        # The warmed-up model shares the base's tokenizer and config; its weights are built at launch.
        return ensure_embedded(None if model.name == EMBEDDED_SFT_MODEL else model.name)
    if not model.path or not Path(model.path).is_dir():
        return None
    from llmwizard.autotune.model.model_spec import run_start

    start = run_start(Path(model.path))  # a finished run: its output/ holds the tokenizer it trained with
    return start.weights if start is not None else Path(model.path)


def profile_for(model: ModelSpec, dataset: str | None, task: Task = "sft") -> DatasetProfile:
    """The dataset (None: the task's embedded default) measured with the model's own tokenizer,
    chat template and image processor, in the shape the task reads (a preference task's prompt,
    chosen and rejected lengths apart)."""
    from llmwizard.autotune.data.dataset import profile_dataset, resolve_dataset
    from llmwizard.autotune.data.images import token_rule
    from llmwizard.autotune.data.tokens import counter_for

    source = resolve_dataset((dataset or "").strip() or None, task=task)
    directory = model_directory(model)
    return profile_dataset(source, counter_for(directory), token_rule(model.vision, directory), model.name, task=task)


def calibration_for(hardware: HardwareProfile, model: ModelSpec, method: str) -> tuple[dict[str, Any], list[str]]:
    """Earlier probes' measured/expected factors for this machine's GPU model, this model family
    and method, by strategy; and the store's warnings (a damaged store is ignored and said)."""
    from llmwizard.autotune.machine.calibration import Store, gpu_key

    store = Store.load()
    gpu = hardware.smallest_gpu
    factors = store.factors(gpu_key(hardware.device, gpu.name if gpu else None), model.model_type, method)
    return factors, list(store.warnings)


def plan_for(hardware: HardwareProfile, model: ModelSpec, profile: DatasetProfile, goals: Goals) -> Plan:
    """The plan, with earlier probes' calibration applied; the calibration store's warnings join
    the plan's own, so every face shows them where it shows the plan."""
    from llmwizard.autotune.plan.planner import plan

    factors, warnings = calibration_for(hardware, model, goals.method or "lora")
    result = plan(hardware, model, profile, goals, calibration=factors or None)
    return dataclasses.replace(result, warnings=result.warnings + warnings) if warnings else result
