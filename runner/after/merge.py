"""After a run: which weights to use, the merged model, and the tuned model next to its base.

- `pick_weights` chooses what `merge` and `try` load: the checkpoint asked for, else the best
  checkpoint by eval loss (llmwizard.runner.recovery.best_checkpoint), else output/ (the final
  result), else the newest complete checkpoint. Weights whose config is damaged are passed over
  and named; a file the libraries then cannot load is a UserError naming the weights (`loading`).
- `merge` folds a LoRA adapter into its base model and writes safetensors with the tokenizer and
  chat template, which plain `AutoModelForCausalLM.from_pretrained` loads. It never writes over
  an existing directory: the model is written into a temporary folder beside the target and
  renamed into place whole. QLoRA adapters were trained against 4-bit weights; merging them into
  the 16-bit base changes the numbers slightly, so it needs `dequantize=True` said out loud.
- `load_tuned` gives the base with the adapter (or the fully tuned model and the base) for
  `llmwizard try`.

A missing base model, a missing adapter, a directory in the way or a place that cannot be written
(a read-only run directory: pass --out elsewhere) is a UserError (exit code 2), found before the
minutes of loading where it can be, and leaves nothing behind.
Torch is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.plan import Plan
from llmwizard.runner import recovery
from llmwizard.runner.export.configs import OUTPUT_DIR

MERGED_DIR = "merged"
WEIGHT_MARKERS = ("adapter_config.json", "config.json")


@dataclass(frozen=True)
class Weights:
    path: Path          # a directory holding an adapter (adapter_config.json) or a full model
    label: str          # "checkpoint-40 (best eval loss 1.2345)", "output/ (final)", ...
    adapter: bool
    skipped: tuple[str, ...] = ()   # better weights passed over because a file of theirs is damaged


def load_plan(run_dir: Path) -> Plan:
    if not run_dir.is_dir():
        raise UserError(f"Run directory not found: {run_dir}", title="Run directory",
                        fix="Pass a run directory (see `llmwizard runs`).")
    return Plan.load(run_dir / "plan.yaml")


def _holds_weights(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in WEIGHT_MARKERS)


def weights_problem(path: Path) -> str | None:
    """Why the weights in `path` cannot be loaded, from their small JSON files (a config or
    tokenizer config that is not a JSON object, or not a file); None when they look whole."""
    for name in (*WEIGHT_MARKERS, "tokenizer_config.json"):
        file = path / name
        if not file.exists() and not file.is_symlink():
            continue
        if not file.is_file():
            return f"{file} is not a file"
        try:
            data = json.loads(file.read_bytes())
        except OSError as exc:
            return f"{file} cannot be read ({exc.strerror or type(exc).__name__})"
        except (ValueError, RecursionError):
            return f"{file} is damaged (not JSON)"
        if not isinstance(data, dict):
            return f"{file} is damaged (not a JSON object)"
    return None


def pick_weights(run_dir: Path, checkpoint: str | None = None) -> Weights:
    """The weights `merge` and `try` load (see the module's docstring). Weights whose config is
    damaged are passed over and named in `skipped`; a damaged `--checkpoint` is refused by name."""
    output = run_dir / OUTPUT_DIR
    if checkpoint:
        candidates = [run_dir / checkpoint, output / checkpoint]
        path = next((c for c in candidates if _holds_weights(c)), None)
        if path is None:
            found = ", ".join(c.name for c in recovery.checkpoints(output)) if output.is_dir() else ""
            raise UserError(f"--checkpoint {checkpoint}: no adapter or model there.", title="Checkpoint",
                            fix=f"Pass one of: output{', ' + found if found else ''}.")
        if not path.resolve().is_relative_to(run_dir.resolve()):
            raise UserError(f"--checkpoint {checkpoint} is outside the run directory {run_dir}.", title="Checkpoint",
                            fix="Pass a checkpoint of this run (e.g. checkpoint-40, or output).")
        problem = weights_problem(path)
        if problem:
            raise UserError(f"--checkpoint {checkpoint}: {problem}, so these weights cannot be loaded.",
                            title="Checkpoint", fix="Pass another checkpoint, or restore the file from a copy.")
        return Weights(path, _relative(path, run_dir), (path / "adapter_config.json").is_file())
    skipped: list[str] = []

    def usable(path: Path) -> bool:
        if not _holds_weights(path):
            return False
        problem = weights_problem(path)
        if problem and problem not in skipped:
            skipped.append(problem)
        return problem is None

    best = recovery.best_checkpoint(run_dir, output) if output.is_dir() else None
    if best is not None and usable(best.path):
        metric = f", best eval loss {best.metric:.4f}" if best.metric is not None else ""
        return Weights(best.path, f"{_relative(best.path, run_dir)} (step {best.step}{metric})",
                       (best.path / "adapter_config.json").is_file(), tuple(skipped))
    if usable(output):
        return Weights(output, f"{OUTPUT_DIR}/ (the final result)", (output / "adapter_config.json").is_file(),
                       tuple(skipped))
    last = recovery.last_checkpoint(output) if output.is_dir() else None
    if last is not None and usable(last):
        return Weights(last, f"{_relative(last, run_dir)} (the newest checkpoint)",
                       (last / "adapter_config.json").is_file(), tuple(skipped))
    if skipped:
        raise UserError(f"{run_dir} holds no weights that can be loaded: {'; '.join(skipped)}.", title="Run directory",
                        fix="Restore the damaged file from a copy, or pass --checkpoint with a checkpoint whose "
                            f"files are whole (llmwizard runs {shlex.quote(str(run_dir))} names the damaged ones).")
    raise UserError(f"{run_dir} holds no trained weights yet (no checkpoint and nothing in {OUTPUT_DIR}/).",
                    title="Run directory", fix=f"Train it first: llmwizard run {shlex.quote(str(run_dir))}")


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)


def vision_language(plan: Plan) -> bool:
    """Whether the run's model is a vision-language model (its spec has a vision tower)."""
    from llmwizard.autotune.model.model_spec import load_model_spec

    try:
        return load_model_spec(plan.model, trust_remote_code=plan.trust_remote_code).vision is not None
    except UserError:
        return False


def refuse_vision_language(plan: Plan, command: str) -> None:
    if vision_language(plan):
        raise UserError(f"`llmwizard {command}` loads text-only models (AutoModelForCausalLM); {plan.model} is a "
                        "vision-language model.", title="Vision-language model",
                        fix="Load output/ with PEFT on top of AutoModelForImageTextToText, with the processor "
                            "saved beside it (docs/vision.md, 'After training').")


def base_model_path(plan: Plan) -> str:
    """Where the base weights are; a UserError when they are not on this machine nor fetchable. A
    run that started from another run (a DPO run on an SFT run's result) has that result as its base."""
    if plan.model_source == "embedded":
        from llmwizard.autotune.embedded.vision import ensure_embedded

        return str(ensure_embedded(plan.model))
    if plan.model_source == "local":
        from llmwizard.autotune.model.model_spec import run_start

        if run_start(Path(plan.model)) is not None:
            # The run started from another run's result: its full weights, or its adapter merged into
            # its base (as the ranks loaded it; made once into the cache).
            from llmwizard.runner.rank.start import start_model

            return start_model(plan.model, plan.trust_remote_code)
        if not _holds_weights(Path(plan.model)):
            raise UserError(f"The base model {plan.model} is not there any more (no config.json).",
                            title="Model weights",
                            fix="Put the base model back at that path, or edit model: in plan.yaml to where it is now.")
        return plan.model
    from llmwizard.runner.preflight import check_model_weights

    check_model_weights(plan.model, plan.model_source)  # raises with the fix when they cannot be had
    return plan.model


def torch_dtype(plan: Plan) -> Any:
    import torch

    if plan.device == "cpu" or plan.precision == "fp32":
        return torch.float32
    return torch.bfloat16 if plan.precision == "bf16" else torch.float16


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(weights: Weights, base: str) -> Any:
    from transformers import AutoTokenizer

    source = weights.path if (weights.path / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def loading(weights: Weights) -> Iterator[None]:
    """Loading the run's weights: a file of theirs that the libraries cannot read (a damaged
    safetensors file, a config of the wrong shape) is a UserError naming the weights, not a
    traceback. Only the run's own weights are loaded inside; the base model is not."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise UserError(f"The weights in {weights.path} cannot be loaded ({type(exc).__name__}: "
                        f"{str(exc)[:200]}): a file there is damaged.", title="Run weights",
                        fix="Pass --checkpoint with another checkpoint of the run, or restore the file from a "
                            "copy.") from None


def load_tuned(run_dir: Path, checkpoint: str | None = None) -> tuple[Any, Any, Any, Weights]:
    """(tuned model, base model or None when the tuned one is a PeftModel whose adapter can be
    switched off, tokenizer, the weights chosen), in eval mode on the GPU when there is one."""
    from transformers import AutoModelForCausalLM

    plan = load_plan(run_dir)
    refuse_vision_language(plan, "try")
    weights = pick_weights(run_dir, checkpoint)
    base_path = base_model_path(plan)
    dtype, device = torch_dtype(plan), _device()
    with loading(weights):
        tokenizer = load_tokenizer(weights, base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).to(device).eval()
    with loading(weights):
        if weights.adapter:
            from peft import PeftModel

            return PeftModel.from_pretrained(base, str(weights.path)).eval(), None, tokenizer, weights
        tuned = AutoModelForCausalLM.from_pretrained(str(weights.path), dtype=dtype).to(device).eval()
    return tuned, base, tokenizer, weights


def check_merge_target(out: Path) -> None:
    """`out` is new or an empty directory, in a place this process can write (tried with a real
    file, removed at once: permission bits say nothing to root, and a read-only mount refuses all)."""
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise UserError(f"{out} already exists and is not empty: a merge never writes over it.", title="Merge output",
                        fix=f"Pass a new directory with --out, or move {out} away first.")
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path.cwd())
    problem = None if parent.is_dir() else "not a directory"
    if problem is None:
        try:
            handle, trial = tempfile.mkstemp(prefix=".llmwizard-write-check-", dir=parent)
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
        else:
            os.close(handle)
            os.unlink(trial)
    if problem is not None:
        raise _cannot_write(out, parent, problem)


def _cannot_write(out: Path, where: Path, problem: str) -> UserError:
    return UserError(f"Cannot write the merged model to {out}: {where} cannot be written ({problem}). Nothing was "
                     "written.", title="Merge output",
                     fix=f"Pass --out with a new directory in a writable place (e.g. --out "
                         f"{shlex.quote(str(Path.home() / 'merged-model'))}), or make {where} writable.")


def _clear_staging(staging: Path) -> None:
    """Remove our own leftover staging folder (or a file of that name), never anything else."""
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging, ignore_errors=True)
    elif staging.exists() or staging.is_symlink():
        with contextlib.suppress(OSError):
            staging.unlink()


def merge(run_dir: Path, out: Path | None = None, checkpoint: str | None = None,
          dequantize: bool = False) -> tuple[Path, Weights]:
    """Merge the run's adapter into its base; (the new directory, the weights merged)."""
    plan = load_plan(run_dir)
    refuse_vision_language(plan, "merge")
    if plan.method == "full":
        raise UserError(f"{run_dir} trained the whole model (method full): there is no adapter to merge.",
                        title="Merge", fix=f"{run_dir / OUTPUT_DIR} already loads with "
                                           "AutoModelForCausalLM.from_pretrained.")
    if plan.method == "qlora" and not dequantize:
        raise UserError("This run trained a QLoRA adapter against 4-bit base weights; merging it into the 16-bit "
                        "base gives slightly different numbers from the model you evaluated.", title="Merge",
                        fix="Pass --dequantize to merge into the base loaded in 16-bit anyway, or serve the "
                            "adapter on the 4-bit base as it is.")
    out = out or run_dir / MERGED_DIR
    check_merge_target(out)
    weights = pick_weights(run_dir, checkpoint)
    if not weights.adapter:
        raise UserError(f"{weights.label} holds a full model, not an adapter: nothing to merge.", title="Merge",
                        fix="Pass --checkpoint with a checkpoint that holds adapter_config.json.")
    base_path = base_model_path(plan)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with loading(weights):
        tokenizer = load_tokenizer(weights, base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype(plan))
    with loading(weights):
        merged = PeftModel.from_pretrained(base, str(weights.path)).merge_and_unload()
    staging = out.with_name(f".{out.name}.partial")
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # what mkdir adds, to undo
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _clear_staging(staging)  # our own leftover from an interrupted merge, never the user's
        merged.save_pretrained(staging)  # safetensors (the only format transformers 5 writes)
        tokenizer.save_pretrained(staging)
        (staging / "llmwizard_merge.json").write_text(json.dumps({
            "run_dir": str(run_dir.resolve()), "weights": weights.label, "base": plan.model,
            "method": plan.method, "dequantized": plan.method == "qlora",
        }, indent=1) + "\n", encoding="utf-8")
        check_merge_target(out)  # nothing appeared there meanwhile
        if out.is_dir():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except OSError as exc:  # a disk that filled up or went read-only while writing
        _clear_staging(staging)
        for folder in made:  # innermost first: only the empty folders this merge made
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise _cannot_write(out, out.parent, exc.strerror or type(exc).__name__) from None
    finally:
        _clear_staging(staging)
    return out, weights
