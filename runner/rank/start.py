"""The model a run starts from, as a directory from_pretrained loads: an embedded default (built
once), a finished run directory (`--model runs/<sft-run>`, llmwizard.autotune.model.model_spec.run_start),
or any other name as it is.

A run directory whose output/ holds full weights starts from them. One whose output/ holds a LoRA
adapter starts from its base with that adapter merged in: the merged model is written once per
machine into the cache (`start-models/<run>-<digest>`, the digest of the adapter's files and its
base), beside the tokenizer the run saved. Loading a directory (rather than merging in memory in
each rank) keeps every loader path as it is: FSDP's rank-0 loading, ZeRO-3's zero.Init, and the
reference TRL loads from the policy's `config._name_or_path` for a full fine-tune, which is then
the SFT model itself. The training entry calls `start_model` before the training arguments set up
the process group, so the merge loads plain, whole models; the ranks of one machine take a file
lock, and the first merges while the others wait for its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.model.model_spec import RunStart, run_start

DONE_FILE = "llmwizard_start.json"


def start_model(name: str | None, trust_remote_code: bool = False) -> str:
    """What from_pretrained loads for the plan's model `name` (see the module's docstring)."""
    from llmwizard.autotune.embedded.vision import ensure_embedded

    if name is None or name.startswith("embedded:"):
        return str(ensure_embedded(name))
    start = run_start(Path(name).expanduser())
    if start is None:
        return name
    if not start.adapter:
        return str(start.weights)
    return str(merged_start(start, trust_remote_code or start.trust_remote_code))


def merged_start(start: RunStart, trust_remote_code: bool = False) -> Path:
    """The run's adapter merged into its base, as a model directory in the cache (made once)."""
    from llmwizard.autotune.embedded import cache_root

    target = cache_root() / "start-models" / f"{_safe(start.run_dir.name)}-{_digest(start)}"
    if (target / DONE_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(target.name + ".lock")):
        if (target / DONE_FILE).is_file():  # another rank merged it while this one waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _merge_into(start, staging, trust_remote_code)
            if target.exists():  # a merge cut short before it finished: never complete, so never used
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _merge_into(start: RunStart, directory: Path, trust_remote_code: bool) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = start_model(start.base, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"Run directory {start.run_dir}: its base model {start.base} could not be loaded "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}).", title="Model",
                        fix=f"Make {start.base} available on this machine (the model the run trained from), or "
                            f"merge the run where it is (llmwizard merge {start.run_dir}) and pass the merged "
                            "directory as the model.") from None
    try:
        merged = PeftModel.from_pretrained(model, str(start.weights)).merge_and_unload()
        tokenizer_source = start.weights if (start.weights / "tokenizer_config.json").is_file() else base
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"Run directory {start.run_dir}: the adapter in {start.weights} does not load onto "
                        f"{start.base} ({type(exc).__name__}: {str(exc)[:200]}).", title="Model",
                        fix="Pass a run directory whose output/ is whole, or restore it from a copy.") from None
    merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    # Written last: a directory without it is a merge that did not finish.
    (directory / DONE_FILE).write_text(json.dumps({
        "run_dir": str(start.run_dir.resolve()), "adapter": str(start.weights.resolve()), "base": start.base,
    }, indent=1) + "\n", encoding="utf-8")


def _digest(start: RunStart) -> str:
    """The adapter's files and the base's name: a retrained run (or another base) merges anew."""
    digest = hashlib.sha256(start.base.encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(start.weights / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _safe(name: str) -> str:
    return "".join(char if char.isalnum() or char in "._-" else "-" for char in name)[:64] or "run"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` for this machine's ranks (the kernel drops it when a rank dies)."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
