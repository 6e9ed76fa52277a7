"""Checks made before a launch, so a run that cannot start fails in seconds with our words rather
than minutes later inside a rank with a library's traceback.

- Packages a plan needs beyond the base install: bitsandbytes for QLoRA and 8-bit AdamW,
  lomo-optim for AdaLomo, galore-torch for GaLore, apollo-torch for APOLLO.
- The model's weights: a catalog or hub model must be in the local Hugging Face cache, or the hub
  must be reachable to fetch it. Without either, the ranks would each fail in `from_pretrained`
  after the whole stack started.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmwizard.autotune.errors import UserError

# Any of these in a snapshot means the weights are there (sharded checkpoints have the index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HUB_TIMEOUT_S = 10.0


def check_packages(method: str, optimizer: str) -> None:
    """Raise UserError (exit code 2) when the plan needs a package that is not installed."""
    import importlib.util

    low_rank = {"galore_adamw": ("GaLore", "galore-torch", "galore_torch"),
                "apollo_adamw": ("APOLLO", "apollo-torch", "apollo_torch")}.get(optimizer)
    if low_rank and (importlib.util.find_spec(low_rank[2]) is None or importlib.util.find_spec("bitsandbytes") is None):
        name, package, _ = low_rank
        raise UserError(f"{name} (--optimizer {optimizer}) needs the {package} package, and bitsandbytes, which "
                        f"{package} imports; one of them is not installed.", title="Missing package",
                        fix=f"Install them (pip install {package} bitsandbytes, which llmwizard's lowmem extra also "
                            "installs), or plan without it: --optimizer adafactor.")
    if optimizer == "adalomo" and importlib.util.find_spec("lomo_optim") is None:
        raise UserError("AdaLomo (--optimizer adalomo) needs the lomo-optim package, which is not installed.",
                        title="Missing package",
                        fix="Install it (pip install lomo-optim, which llmwizard's lowmem extra also installs; NVIDIA "
                            "GPUs only), or plan without it: --optimizer adafactor.")

    needs = [what for what, used in (("QLoRA (--method qlora)", method == "qlora"),
                                     ("8-bit AdamW (--optimizer adamw_8bit)", optimizer == "adamw_8bit")) if used]
    if needs and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"{' and '.join(needs)} needs bitsandbytes, which is not installed.", title="Missing package",
                        fix="Install it on every machine of the run (pip install bitsandbytes, which llmwizard's gpu extra "
                            "also installs; NVIDIA GPUs only), or plan without it: --method lora / --optimizer adamw.")


def check_model_weights(model: str, source: str) -> str | None:
    """Raise UserError when `model`'s weights cannot be had; else a note on where they come from
    (None for local and embedded models, which need no check here)."""
    if source not in ("catalog", "hub"):
        return None
    if _cached(model):
        return f"{model}: weights found in the local Hugging Face cache"
    local_fix = f"or pass a local directory that holds config.json and the weights: --model /path/to/{model.split('/')[-1]}"
    download = f"hf download {model}"
    if _offline():
        raise UserError(f"The weights of {model} are not on this machine, and the hub is switched off "
                        "(HF_HUB_OFFLINE is set).", title="Model weights",
                        fix=f"Download them first ({download}) where the hub is reachable, {local_fix}.")
    problem = _hub_problem(model)
    if problem is None:
        return f"{model}: not cached yet; each machine downloads it from the hub before training"
    raise UserError(f"The weights of {model} are not on this machine, and {problem}.", title="Model weights",
                    fix=f"Download them ({download}, after `hf auth login` for a gated model), {local_fix}.")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for name in WEIGHT_FILES:
        try:
            found = try_to_load_from_cache(model, name)
        except Exception:  # noqa: BLE001 (an odd id or cache layout: treat as not cached)
            return False
        if isinstance(found, str) and Path(found).is_file():
            return True
    return False


def _hub_problem(model: str) -> str | None:
    """Why the hub cannot provide `model` (None when it can)."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(model, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return "the hub says it is gated: its licence must be accepted and a token given"
    except RepositoryNotFoundError:
        return "the hub has no such model (or it is private)"
    except Exception as exc:  # noqa: BLE001 (no network, DNS, proxy: all mean "cannot fetch")
        return f"the hub cannot be reached ({type(exc).__name__})"
    return None
