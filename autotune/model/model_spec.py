"""What the planner needs to know about a model, without its weights.

A `ModelSpec` holds the dimensions that drive memory (hidden, MLP width, layers, heads, vocab),
the decoder-layer class FSDP wraps, the linear projections LoRA adapts and the parameter counts
by part. Names resolve in this order: the embedded default, a finished run directory (`run_start`:
a run starts from another's result, e.g. DPO from an SFT run), a local directory with config.json,
the bundled catalog (`model_catalog.json`, names and aliases, case-insensitive), a hub id.

Counts are exact. Catalog models carry counts made by building each model on the meta device
(`bench/build_model_catalog.py`), so planning for them imports no torch. A local or hub config
is counted on the meta device once and cached under the user cache, keyed by a hash of its
config.json. The analytic formula below needs no torch; it is the fallback for configs
transformers cannot build, and the tests hold it equal to the meta count for every catalog
architecture.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmwizard.autotune.schema import ModelSource
from llmwizard.autotune.embedded import EMBEDDED_MODEL, MODEL_CONFIG, embedded_model_dir
from llmwizard.autotune.embedded.vision import (EMBEDDED_GEMMA3_MODEL, EMBEDDED_VISION_MODEL, GEMMA3_MODEL_CONFIG,
                                                 VISION_MODEL_CONFIG, gemma3_model_dir, vision_model_dir)
from llmwizard.autotune.embedded.moe import EMBEDDED_MOE_MODEL, MOE_MODEL_CONFIG, moe_model_dir
from llmwizard.autotune.embedded.warm import EMBEDDED_SFT_MODEL, warm_model_dir
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.model.model_types import Linear, ModelSpec
from llmwizard.autotune.model.param_counts import cached_meta_counts, meta_count_error, spec_from_config, with_counts

# Names callers import from here; the types live in llmwizard.autotune.model.model_types and the
# analytic counts in llmwizard.autotune.model.param_counts.
__all__ = ["CATALOG_PATH", "Linear", "ModelSpec", "RunStart", "catalog_names", "load_model_spec", "run_start",
           "search_catalog", "spec_from_config"]

CATALOG_PATH = Path(__file__).parent / "model_catalog.json"


# ----------------------------------------------------------------------------- names

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model_spec(name: str | None, trust_remote_code: bool = False) -> ModelSpec:
    """The embedded default, a local model directory, a catalog name or alias, or a hub id.

    `trust_remote_code` is the user's consent to run a model's own code: without it a config that
    names custom code (auto_map) or an unknown model_type is refused (param_counts.check_config)."""
    if name is None or name == EMBEDDED_MODEL:
        return spec_from_config(EMBEDDED_MODEL, "embedded", str(embedded_model_dir()), MODEL_CONFIG)
    if name == EMBEDDED_VISION_MODEL:
        return spec_from_config(EMBEDDED_VISION_MODEL, "embedded", str(vision_model_dir()), VISION_MODEL_CONFIG)
    if name == EMBEDDED_GEMMA3_MODEL:
        return spec_from_config(EMBEDDED_GEMMA3_MODEL, "embedded", str(gemma3_model_dir()), GEMMA3_MODEL_CONFIG)
    if name == EMBEDDED_MOE_MODEL:
        return spec_from_config(EMBEDDED_MOE_MODEL, "embedded", str(moe_model_dir()), MOE_MODEL_CONFIG)
    if name == EMBEDDED_SFT_MODEL:  # the base after a short SFT warm-up: the same config
        return spec_from_config(EMBEDDED_SFT_MODEL, "embedded", str(warm_model_dir()), MODEL_CONFIG)
    path = Path(name).expanduser()
    start = run_start(path)
    if start is not None:
        return _spec_from_run(start, trust_remote_code)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UserError(f"Model directory {name} has no config.json.", title="Model",
                            fix="Point --model at a directory saved with save_pretrained().")
        return _spec_from_file(path.name, "local", str(path.resolve()), config_file, trust_remote_code)
    entry = _catalog_lookup(name)
    if entry is not None:
        # A hub id the user typed (base or instruct) is what gets loaded, in the hub's own spelling.
        hub_ids = [entry["hub_id"], *entry["hub_ids"]]
        hub_id = next((h for h in hub_ids if _catalog_key(h) == _catalog_key(name)), entry["hub_id"])
        return _spec_from_catalog(entry, hub_id)
    known = [key for entry in _catalog()["models"] for key in (entry["name"], *entry["aliases"])]
    suggestions = difflib.get_close_matches(name.strip().lower(), known, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(suggestions)}?)" if suggestions else ""
    if not _HUB_ID.match(name):
        raise UserError(f"Unknown model '{name}': not a local directory and not in the catalog{hint}.",
                        title="Model", fix="Pass a directory that holds config.json, a catalog name "
                        "(`llmwizard plan --model llama-3.1-8b`) or a hub id such as org/name.")
    hub_file, why = _hub_config_file(name)
    if hub_file is None:
        raise UserError(
            f"Unknown model '{name}': not a local directory, not in the catalog{hint} "
            f"and the hub is unreachable ({why}).", title="Model",
            fix="Download the model (huggingface-cli download) and pass its directory, or allow hub "
                "access (unset HF_HUB_OFFLINE, log in for gated models), or pick a catalog name.")
    return _spec_from_file(name, "hub", None, hub_file, trust_remote_code)


# ----------------------------------------------------------------------------- run directories

# What a finished run leaves in output/: a LoRA adapter, or a full model (one or several shards).
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class RunStart:
    """A finished run directory that another run starts from (`--model runs/<sft-run>`).

    `weights` is the run's output/: a LoRA adapter on `base` (the model that run trained from,
    itself any model name, a run directory included), or full weights that load as they are."""

    run_dir: Path
    weights: Path
    adapter: bool
    base: str                      # the run's own model (its plan.yaml `model`); "" for full weights
    trust_remote_code: bool = False


def run_start(path: Path) -> RunStart | None:
    """The run directory at `path` as a model to start from; None when `path` is no run directory
    (no plan.yaml, or a model directory with config.json). A run directory without a finished
    output/ is a UserError naming it."""
    if not path.is_dir() or (path / "config.json").is_file() or not (path / "plan.yaml").is_file():
        return None
    plan = _run_plan(path)
    output = path / "output"
    if all((output / name).is_file() for name in _ADAPTER_FILES):
        base = plan.get("model")
        if not isinstance(base, str) or not base.strip():
            adapter = _json_object(output / "adapter_config.json")
            base = adapter.get("base_model_name_or_path")
        if not isinstance(base, str) or not base.strip():
            raise UserError(f"Run directory {path}: its plan.yaml names no model, so the base its LoRA adapter "
                            "(output/) was trained on is unknown.", title="Model",
                            fix=f"Restore {path / 'plan.yaml'} (its model: line), or merge the run first "
                                f"(llmwizard merge {path}) and pass the merged directory as the model.")
        if Path(base).expanduser().resolve() == path.resolve():
            raise UserError(f"Run directory {path} names itself as its model.", title="Model",
                            fix=f"Restore {path / 'plan.yaml'}'s model: line.")
        return RunStart(path, output, True, base, bool(plan.get("trust_remote_code")))
    if (output / "config.json").is_file() and any((output / name).is_file() for name in _MODEL_WEIGHTS):
        return RunStart(path, output, False, "", bool(plan.get("trust_remote_code")))
    raise UserError(f"Run directory {path} has no finished model in output/ (no adapter_model.safetensors nor "
                    "model.safetensors): the run has not finished, or stopped before its final save.",
                    title="Model", fix=f"Finish it first (llmwizard resume {path}), or pass a run directory whose "
                                       "run finished, or a model directory.")


def _run_plan(path: Path) -> dict[str, Any]:
    """The run's plan.yaml as plain data (the model and its consent are all that is read here)."""
    import yaml

    try:
        data = yaml.safe_load((path / "plan.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"Run directory {path}: plan.yaml cannot be read ({type(exc).__name__}).", title="Model",
                        fix=f"Restore {path / 'plan.yaml'}, or pass a model directory.") from None
    if not isinstance(data, dict):
        raise UserError(f"Run directory {path}: plan.yaml holds no plan.", title="Model",
                        fix=f"Restore {path / 'plan.yaml'}, or pass a model directory.")
    return data


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _spec_from_run(start: RunStart, trust_remote_code: bool) -> ModelSpec:
    """The run's model as the planner sizes it: the base's spec for an adapter (merging it changes no
    shape), or the full weights' own config; named and loaded as the run directory."""
    consent = trust_remote_code or start.trust_remote_code
    if start.adapter:
        spec = load_model_spec(start.base, trust_remote_code=consent)
    else:
        spec = _spec_from_file(start.run_dir.name, "local", str(start.weights.resolve()),
                               start.weights / "config.json", consent)
    return dataclasses.replace(spec, name=start.run_dir.name, source="local", path=str(start.run_dir.resolve()),
                               catalog_name=None)


def catalog_names() -> list[str]:
    """The short names of every catalog model, in catalog order."""
    return [entry["name"] for entry in _catalog()["models"]]


def search_catalog(text: str, limit: int = 10) -> list[dict[str, Any]]:
    """Catalog models whose name, alias, hub id or family contains `text` (for completion).

    Each match is {"name", "hub_id", "family", "total_params", "layer_cls"}; names that start
    with the text come first.
    """
    needle = text.strip().lower()
    scored = []
    for order, entry in enumerate(_catalog()["models"]):
        keys = [entry["name"], entry["hub_id"], *entry["hub_ids"], *entry["aliases"], entry["family"]]
        keys = [k.lower() for k in keys]
        if needle and not any(needle in k for k in keys):
            continue
        rank = 0 if any(k.startswith(needle) or k.split("/")[-1].startswith(needle) for k in keys) else 1
        scored.append((rank, order, entry))
    scored.sort(key=lambda item: item[:2])
    return [{"name": e["name"], "hub_id": e["hub_id"], "family": e["family"],
             "total_params": e["exact"]["total"], "layer_cls": e["exact"]["layer_cls"]}
            for _, _, e in scored[:limit]]


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Any]:
    return json.loads(CATALOG_PATH.read_text())


@lru_cache(maxsize=1)
def _catalog_index() -> dict[str, dict[str, Any]]:
    index: dict[str, dict[str, Any]] = {}
    for entry in _catalog()["models"]:
        for key in (entry["name"], entry["hub_id"], *entry["hub_ids"], *entry["aliases"]):
            index[_catalog_key(key)] = entry
    return index


def _catalog_lookup(name: str) -> dict[str, Any] | None:
    return _catalog_index().get(_catalog_key(name))


def _catalog_key(name: str) -> str:
    """Case and separators do not matter: "LLaMA3.1-8B" finds "llama-3.1-8b"."""
    return re.sub(r"[-_\s]", "", name.strip().lower())


def _spec_from_catalog(entry: dict[str, Any], hub_id: str) -> ModelSpec:
    spec = spec_from_config(hub_id, "catalog", None, entry["config"],
                            origin=f"the catalog entry {entry['name']} ({CATALOG_PATH.name})")
    spec.catalog_name = entry["name"]
    return with_counts(spec, entry["exact"])


def _hub_config_file(repo_id: str) -> tuple[Path | None, str]:
    """config.json of a hub model: the local HF cache first, the network unless HF_HUB_OFFLINE."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_OFFLINE
    except ImportError:
        return None, "huggingface_hub is not installed"
    try:
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=True)), ""
    except Exception:  # noqa: BLE001 (not cached: any failure here means "ask the hub")
        pass
    if HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None, "HF_HUB_OFFLINE is set and config.json is not in the local cache"
    try:
        return Path(hf_hub_download(repo_id, "config.json")), ""
    except Exception as exc:  # noqa: BLE001 (gated, missing, no network: all read the same to the user)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no answer'}"


def _spec_from_file(name: str, source: ModelSource, path: str | None, config_file: Path,
                    trust_remote_code: bool = False) -> ModelSpec:
    try:
        raw = config_file.read_bytes()
    except OSError as exc:
        raise UserError(f"{config_file} cannot be read: {exc.strerror or exc}.", title="Model",
                        fix="Make config.json readable (permissions), or restore it.") from None
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise UserError(f"{config_file} is not valid JSON: {exc}", title="Model",
                        fix="Restore the model's config.json.") from None
    except RecursionError:
        raise UserError(f"{config_file} nests its JSON too deeply to read.", title="Model",
                        fix="Restore the model's config.json.") from None
    # Checked before any counting; refused here unless the model's code may run.
    spec = spec_from_config(name, source, path, config, origin=str(config_file), trust_remote_code=trust_remote_code)
    code_from = (path or name) if spec.warnings and trust_remote_code else None
    counts = cached_meta_counts(raw, config, code_from)
    if counts:
        return with_counts(spec, counts)
    if code_from:  # consent given, and still the model's code could not build it: never guess
        why = meta_count_error(raw, code_from)
        raise UserError(f"{config_file}: the model's own code could not build it on the meta device"
                        f"{f' ({why})' if why else ''}, so its size is unknown and llmwizard will not plan it as "
                        "another model.", title="Model code",
                        fix="If the code files auto_map names are missing, put them beside config.json (or use "
                            "the hub repository that has them). A model whose decoder layers differ in size (dense "
                            "and expert layers mixed) is not one llmwizard's per-layer counts describe.")
    return spec
