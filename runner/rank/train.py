"""The per-rank training entry: `python -m llmwizard.runner.rank.train --config sft_config.yaml [options]`.

Every launcher (accelerate launch, torchrun, deepspeed) starts this module once per rank. The
TRL YAML carries everything TRL knows (ScriptArguments + the task's config class + ModelConfig,
parsed by TrlParser, unknown keys refused); the few things it has no field for are options here,
so the launch command shows them:

    --task sft|dpo|orpo|kto|grpo   what the run optimises (default sft): the config class and the
                                   trainer (llmwizard.runner.rank.tasks); the YAML is that task's
                                   (dpo_config.yaml, ...)
    --reward NAME [NAME ...]       GRPO's reward functions, importable `module.function` names
                                   (repeatable; llmwizard.runner.rank.rewards.exact_answer scores the
                                   embedded prompts)
    --metrics-file, --eval-fraction, --resume, --probe, --probe-dir   as below

The model may be a finished run directory (a DPO run from an SFT run's result): its full weights,
or its LoRA adapter merged into its base (llmwizard.runner.rank.start).

A user mistake (a dataset without usable columns, a model directory that does not load) ends the
rank with a one-paragraph message on stderr and exit code 2, never a traceback. Rank 0 prints
one line `llmwizard: strategy=... world_size=N ...` after training, read from the wrapped model
itself, so train.log says which strategy really ran (not only which one was asked for).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.schema import Task
from llmwizard.runner.runlock import STATE_DIR
from llmwizard.runner.rank.patches import (LibraryChanged, adalomo_keeps_its_moments, allow_fsdp_on_cpu,
                                      deepspeed_skips_its_shm_kernel,
                                      peft_sees_through_checkpoint_wrappers)

USER_ERROR_EXIT = 2

__all__ = ["allow_fsdp_on_cpu", "main", "train"]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from llmwizard.runner.rank.tasks import TASKS

    parser = argparse.ArgumentParser(prog="python -m llmwizard.runner.rank.train", add_help=False)
    parser.add_argument("--task", choices=TASKS, default="sft",
                        help="what the run optimises: the TRL config class and trainer (llmwizard.runner.rank.tasks)")
    parser.add_argument("--reward", action="extend", nargs="+", default=[], metavar="NAME",
                        help="GRPO: a reward function as an importable module.function name (repeatable)")
    parser.add_argument("--metrics-file", default="metrics.jsonl",
                        help="JSON-lines metrics written by rank 0")
    parser.add_argument("--eval-fraction", type=float, default=0.0,
                        help="hold out this share of the rows for evaluation when the dataset has no test split")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in output_dir")
    parser.add_argument("--probe", type=int, default=0, metavar="STEPS",
                        help="probe mode: this many optimizer steps on the longest rows, every row padded to "
                             "max_length; each rank writes its measurements into --probe-dir; nothing is saved")
    parser.add_argument("--probe-dir", default="", help="where probe mode writes rank-N.jsonl")
    own, rest = parser.parse_known_args(argv)
    if own.probe:
        rest = rest + probe_overrides(own.probe, own.probe_dir)
    return own, rest


def probe_overrides(steps: int, probe_dir: str) -> list[str]:
    """TRL arguments that turn the run into a probe: the same configuration (launcher, strategy,
    world, micro-batch, accumulation), `steps` optimizer steps, no saving, no evaluation, every
    batch padded to max_length (set in `train`, which knows it)."""
    return ["--max_steps", str(steps), "--save_strategy", "no", "--eval_strategy", "no",
            "--load_best_model_at_end", "false", "--logging_steps", "1",
            "--output_dir", str(Path(probe_dir) / "output")]


def main(argv: list[str] | None = None, extra_callbacks: list[Any] | None = None) -> int:
    """`extra_callbacks`: Trainer callbacks of an embedding runner (Ray Train's checkpoint reports)."""
    own, trl_argv = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        try:
            return train(own, trl_argv, extra_callbacks or [])
        except LibraryChanged as changed:
            raise UserError(changed.message, title=f"{changed.library} version",
                            fix=changed.fix) from None
    except UserError as error:
        rank = os.environ.get("RANK", "0")
        fix = f"\nFix: {error.fix}" if error.fix else ""
        # "UserError: message" then "Fix: ..." on the next line is what llmwizard.runner.recovery reads.
        print(f"llmwizard (rank {rank}, {error.title}) UserError: {error.message}{fix}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT


def train(own: argparse.Namespace, trl_argv: list[str], extra_callbacks: list[Any] | None = None) -> int:
    from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

    from llmwizard.runner.rank.tasks import build_trainer, config_class, load_rewards

    # Before anything loads: a reward that does not import is the user's to fix, said at once.
    rewards = load_rewards(own.task, list(own.reward))
    # Before the training arguments: they set up the process group, FSDP's rank-0-only loading and
    # DeepSpeed's zero.Init, and merging a run directory's adapter into its base loads whole models.
    model_path = resolve_model(*model_to_load(trl_argv))
    parser = TrlParser((ScriptArguments, config_class(own.task), ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(trl_argv)
    if own.probe and getattr(training_args, "max_length", None) and hasattr(training_args, "pad_to_multiple_of"):
        # Every sequence padded to max_length: the probe measures the worst batch the run can see.
        training_args.pad_to_multiple_of = training_args.max_length
    import torch

    if not torch.cuda.is_available():
        allow_fsdp_on_cpu()
    if model_args.use_peft:
        peft_sees_through_checkpoint_wrappers()
    if getattr(training_args.optim, "value", training_args.optim) == "adalomo":
        adalomo_keeps_its_moments()
    if training_args.deepspeed_plugin is not None:
        deepspeed_skips_its_shm_kernel()
        if training_args.deepspeed_plugin.zero_stage == 3 or os.environ.get("PARALLELISM_CONFIG_SP_SIZE", "1") != "1":
            # zero.Init (ZeRO-3 loading) and Ulysses' sequence-parallel groups need it before the Trainer
            join_deepspeed_comm()

    # From here on after the training arguments: they set up the process group, FSDP's rank-0-only
    # loading and DeepSpeed's zero.Init, which from_pretrained must see.
    train_dataset, eval_dataset = load_splits(script_args, training_args, own.eval_fraction, own.task)
    if getattr(training_args, "precompute_ref_log_probs", False):
        # TRL keeps the precomputed reference log-probs in an Arrow file beside the dataset's own, written
        # by rank 0 and read by every rank: rows built in memory have no such place (each rank would look
        # in its own temporary folder), so they are written into the run directory first.
        folder = Path(own.metrics_file).parent / STATE_DIR / "datasets"
        train_dataset = on_disk(train_dataset, folder, "train")
        eval_dataset = None if eval_dataset is None else on_disk(eval_dataset, folder, "eval")
    # Rows with images train through TRL's vision path: the image-text model class and its
    # processor (image processor + tokenizer + chat template) instead of the tokenizer alone.
    vision = "images" in train_dataset.column_names
    model, tokenizer = load_model(str(model_path), model_args, training_args, vision=vision)
    if training_args.deepspeed_plugin is not None and training_args.deepspeed_plugin.zero_stage == 3:
        from llmwizard.runner.rank.patches import moe_blocks_are_zero3_leaves

        moe_blocks_are_zero3_leaves(model)  # MoE blocks gathered whole (llmwizard.runner.rank.patches)

    from llmwizard.runner.rank.callbacks import ProbeCallback, default_callbacks, stop_reason

    callbacks = default_callbacks(own.metrics_file) + list(extra_callbacks or [])
    if own.probe:
        train_dataset = longest_rows(train_dataset, training_args.per_device_train_batch_size
                                     * training_args.gradient_accumulation_steps * training_args.world_size
                                     * own.probe)
        callbacks.append(ProbeCallback(own.probe_dir))
    trainer = build_trainer(own.task, model=model, args=training_args, train_dataset=train_dataset,
                            eval_dataset=eval_dataset, processing_class=tokenizer,
                            peft_config=get_peft_config(model_args), callbacks=callbacks, rewards=rewards)
    resume: str | bool | None = training_args.resume_from_checkpoint
    if own.resume:
        resume = last_checkpoint(training_args.output_dir) or None
    trainer.train(resume_from_checkpoint=None if own.probe else resume)
    if own.probe:  # measured; nothing to save
        trainer.accelerator.wait_for_everyone()
        if hasattr(trainer, "end"):
            trainer.end()
        return 0
    if trainer.accelerator.is_main_process:
        print(strategy_line(trainer), flush=True)
        if own.task != "sft":
            from llmwizard.runner.rank.tasks import task_line

            print(task_line(trainer, own.task), flush=True)
    if trainer.is_fsdp_enabled:
        # Checkpoints may be sharded (fast, resumable); the result is gathered whole so plain
        # transformers/PEFT load it. Trainer.save_model writes nothing for a sharded state dict.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    best = trainer.state.best_model_checkpoint if training_args.load_best_model_at_end else None
    reason = stop_reason(callbacks)
    if reason == "disk_full":
        pass  # the checkpoint did not fit, nor would the weights: the last checkpoint is the result
    elif reason == "diverged" and not best:
        # The weights in memory are the damaged ones; the last good checkpoint stays the result.
        if trainer.accelerator.is_main_process:
            print("llmwizard: training diverged; not saving the final weights "
                  f"(the checkpoints in {training_args.output_dir} hold the last good ones)", flush=True)
    else:
        trainer.save_model(training_args.output_dir)
        if trainer.accelerator.is_main_process:
            print(f"llmwizard: saved to {Path(training_args.output_dir).resolve()}", flush=True)
    if reason is None:
        write_eval_samples(trainer, eval_dataset, tokenizer, Path(own.metrics_file).parent)
    # Rank 0 may still be writing while the others reach the teardown; a rank that closes its
    # gloo connections under a peer still using them can abort it ("terminate called without an
    # active exception"), so all ranks leave together.
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):
        trainer.end()  # destroys the process group (transformers >= 5.18)
    # A full disk was said by rank 0 as a UserError (llmwizard.runner.rank.callbacks); it ends the run
    # like any other input to fix.
    return USER_ERROR_EXIT if reason == "disk_full" else 0


def write_eval_samples(trainer: Any, eval_dataset: Any, tokenizer: Any, run_dir: Path) -> None:
    """A few held-out examples generated greedily with the final weights, into samples.jsonl
    (llmwizard.runner.rank.samples). Called on every rank; rank 0 writes. When rank 0 holds the whole
    model (single process, DDP, ZeRO-2) it generates alone. When the weights are sharded (FSDP,
    ZeRO-3) every rank generates the same prompts with `synced_gpus`: each forward gathers each
    layer's shards from all ranks, so none may stop before the others. The eval split is the same
    on every rank (a seeded split, or the dataset's own), so each rank picks the same rows and
    makes the same number of forwards. A failure here costs the samples, never the run (sharded,
    a failure on one rank alone, such as running out of memory, leaves the others waiting in a
    collective until the process group's timeout, then they fail the same way)."""
    from llmwizard.runner.rank.samples import SAMPLES_FILE, SCORED_COUNT, eval_samples, write_samples

    main = trainer.accelerator.is_main_process
    sharded = is_sharded(trainer)
    if not (main or sharded):
        return
    if eval_dataset is None or len(eval_dataset) == 0:
        if main:
            print("llmwizard: no held-out rows, so no samples; `llmwizard try RUN_DIR \"prompt\"` tries the model",
                  flush=True)
        return
    try:
        rows = eval_dataset.select(range(min(len(eval_dataset), SCORED_COUNT)))
        samples = eval_samples(trainer.model, tokenizer, rows, device=trainer.accelerator.device,
                               synced_gpus=sharded and trainer.accelerator.num_processes > 1)
        if main:
            write_samples(run_dir / SAMPLES_FILE, samples, int(trainer.state.global_step))
    except Exception as exc:  # noqa: BLE001 (a sample is a nicety; the trained weights are saved already)
        if main:
            print(f"llmwizard: could not generate samples ({type(exc).__name__}: {exc})", flush=True)
        return
    if main:
        print(f"llmwizard: {len(samples)} held-out example(s) generated into {SAMPLES_FILE}", flush=True)


def is_sharded(trainer: Any) -> bool:
    """Whether the weights are split over the ranks: FSDP, or a DeepSpeed engine at ZeRO stage 3."""
    engine = getattr(trainer, "deepspeed", None)
    return bool(trainer.is_fsdp_enabled or (engine is not None and engine.zero_optimization_stage() == 3))


def join_deepspeed_comm() -> None:
    """Give deepspeed.comm the process group before from_pretrained runs zero.Init.

    accelerate's PartialState does this for accelerator ranks but skips it on CPU ranks, and an
    uninitialised deepspeed.comm reports world size 1: ZeRO-3's zero.Init then rejects the
    batch sizes the Trainer filled in for the real world size ("train_batch_size is not equal
    to micro_batch_per_gpu * gradient_acc_step * world_size").
    """
    import torch.distributed
    from deepspeed import comm

    if torch.distributed.is_initialized() and not comm.is_initialized():
        comm.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)


def strategy_line(trainer: Any) -> str:
    """What really wrapped the model: FSDP2 units, a DeepSpeed engine's ZeRO stage, or DDP."""
    import torch
    from torch.distributed.fsdp import FSDPModule

    accelerator = trainer.accelerator
    model = trainer.model_wrapped
    details = [f"distributed_type={accelerator.distributed_type.value}"]
    engine = getattr(trainer, "deepspeed", None)
    if engine is not None:
        stage = engine.zero_optimization_stage()
        strategy = f"zero{stage}"
        offload = engine.zero_offload_optimizer() if hasattr(engine, "zero_offload_optimizer") else None
        details.append(f"offload_optimizer={getattr(offload, 'device', None) or 'none'}")
    elif isinstance(trainer.model, FSDPModule) or isinstance(model, FSDPModule):
        root = trainer.model if isinstance(trainer.model, FSDPModule) else model
        units = sum(1 for module in root.modules() if isinstance(module, FSDPModule))
        # fully_shard renames a wrapped class to FSDP<name>: FSDPCheckpointWrapper.
        checkpointed = sum(1 for module in root.modules() if type(module).__name__.endswith("CheckpointWrapper"))
        # The sharded weights' device mesh: (shards,) for full shard, (replicas, shards) for HSDP.
        mesh = next((tuple(p.device_mesh.shape) for p in root.parameters() if hasattr(p, "device_mesh")), ())
        strategy = "fsdp2"
        details += [f"mesh={'x'.join(map(str, mesh))}", f"fsdp_units={units}",
                    f"activation_checkpointing={'on' if checkpointed else 'off'}"]
    elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
        strategy = "ddp"
        details.append(f"backend={torch.distributed.get_backend()}")
    else:
        strategy = "single"
    parallelism = getattr(accelerator, "parallelism_config", None)
    if parallelism is not None and getattr(parallelism, "sp_size", 1) > 1:
        details.append(f"sequence_parallel={parallelism.sp_size}")  # DeepSpeed Ulysses
    if parallelism is not None and getattr(parallelism, "cp_size", 1) > 1:
        details.append(f"context_parallel={parallelism.cp_size}")   # FSDP2 ring attention
    return f"llmwizard: strategy={strategy} world_size={accelerator.num_processes} " + " ".join(details)


@dataclasses.dataclass
class ModelConsent:
    """The one training-argument field the model's loading reads before the training arguments exist."""

    trust_remote_code: bool = False


def model_to_load(trl_argv: list[str]) -> tuple[str | None, bool]:
    """(model_name_or_path, trust_remote_code) from the YAML and the command line, read with
    ModelConfig alone: no training arguments are built, so no process group is set up yet."""
    from trl import ModelConfig, TrlParser

    model_args, consent, _ = TrlParser((ModelConfig, ModelConsent)).parse_args_and_config(
        trl_argv, return_remaining_strings=True)
    return model_args.model_name_or_path, consent.trust_remote_code


def resolve_model(name: str | None, trust_remote_code: bool = False) -> Path | str:
    """What from_pretrained loads: an embedded model's directory (built once), a run directory's
    result (its full weights, or its adapter merged into its base: llmwizard.runner.rank.start), or
    the name as it is."""
    from llmwizard.runner.rank.start import start_model

    return start_model(name, trust_remote_code)


def load_model(path: str, model_args: Any, training_args: Any, vision: bool = False) -> tuple[Any, Any]:
    """Model and tokenizer (or, for images, processor) as TRL's own sft script loads them, with a
    readable error."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
    from trl import get_quantization_config

    from llmwizard.runner.rank.vision import load_processor

    kwargs: dict[str, Any] = {"revision": model_args.model_revision,
                              "trust_remote_code": training_args.trust_remote_code}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.dtype and model_args.dtype != "auto":
        kwargs["dtype"] = getattr(torch, model_args.dtype)
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization  # bitsandbytes places it on this rank's GPU
    kwargs.update(training_args.model_init_kwargs or {})
    from llmwizard.runner.rank.patches import dequantized_for_training

    kwargs.update(dequantized_for_training(path, kwargs))  # gpt-oss: MXFP4 experts train in bf16
    try:
        if vision:
            tokenizer = load_processor(path, revision=model_args.model_revision,
                                       trust_remote_code=training_args.trust_remote_code)
            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision,
                                                      trust_remote_code=training_args.trust_remote_code)
            try:
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            except ValueError as exc:
                if "Unrecognized configuration" not in str(exc):
                    raise
                # A vision-language model on text-only data: its image-text class runs without pixels.
                model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"Model '{path}' could not be loaded: {str(exc).splitlines()[0]}", title="Model",
                        fix="Point model_name_or_path in the run's TRL YAML (sft_config.yaml, ...) at a directory "
                            "saved with save_pretrained() (config.json, weights, tokenizer), a finished run "
                            "directory, or a hub name you can reach.") from None
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds one
    if text_tokenizer.pad_token is None:
        text_tokenizer.pad_token = text_tokenizer.eos_token  # padding positions are masked out of the loss
    return model, tokenizer


def load_splits(script_args: Any, training_args: Any, eval_fraction: float, task: Task = "sft") -> tuple[Any, Any]:
    """Train and eval splits, normalised to the task's TRL format with autotune's row mapping."""
    import datasets

    from llmwizard.autotune.data.dataset import load_rows, local_path, normalize_rows, resolve_dataset

    source = resolve_dataset(script_args.dataset_name, task=task)
    test = None
    if local_path(source) is not None:
        # The same reader and row mapping the planner profiled, so what was measured is what trains.
        _, rows = normalize_rows(load_rows(source), source, task=task)
        train = datasets.Dataset.from_list(rows)
        if "images" in train.column_names:
            # Paths and bytes become images the collator reads when a batch is built.
            train = train.cast_column("images", datasets.List(datasets.Image()))
    else:
        try:
            loaded = datasets.load_dataset(source, name=script_args.dataset_config)
        except Exception as exc:  # offline, unknown name, gated: all are the user's to fix
            raise UserError(f"Could not load dataset '{source}': {str(exc).splitlines()[0]}", title="Dataset",
                            fix="Check the name and your network, or pass a local JSONL/JSON/CSV/Parquet "
                                "file.") from None
        train = _normalized(loaded[script_args.dataset_train_split], source, task)
        if training_args.eval_strategy != "no" and script_args.dataset_test_split in loaded:
            test = _normalized(loaded[script_args.dataset_test_split], source, task)
    if training_args.eval_strategy == "no":
        return train, None
    if test is not None:
        return train, test
    if eval_fraction <= 0:
        raise UserError("Evaluation is on but the dataset has no test split.", title="Evaluation",
                        fix="Pass --eval-fraction 0.1 to hold out rows, or set eval_strategy: 'no'.")
    split = train.train_test_split(test_size=eval_fraction, seed=training_args.seed)
    return split["train"], split["test"]


def on_disk(dataset: Any, folder: Path, name: str) -> Any:
    """`dataset` backed by an Arrow file in `folder` (named by the rows' fingerprint, so every rank of
    the run, and a rerun on the same rows, reads the same file)."""
    folder.mkdir(parents=True, exist_ok=True)
    return dataset.flatten_indices(cache_file_name=str(folder / f"{name}-{dataset._fingerprint}.arrow"))


def longest_rows(dataset: Any, count: int) -> Any:
    """The `count` longest rows (by their text's length), repeated when the dataset has fewer."""
    import json

    lengths = [len(json.dumps(row, ensure_ascii=False)) for row in dataset]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if not order:
        return dataset
    return dataset.select([order[i % len(order)] for i in range(max(1, count))])


def _normalized(dataset: Any, source: str, task: Task = "sft") -> Any:
    """Map a hub split to the task's TRL format; the error names the columns or the first bad row."""
    from llmwizard.autotune.data.dataset import detect_format

    fmt, convert = detect_format(dataset.column_names, task=task)

    def checked(row: dict[str, Any], index: int) -> dict[str, Any]:
        try:
            return convert(row)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{source}: row {index + 1} does not match the {fmt} format ({exc}).",
                            title="Dataset", fix="Make every row use the same fields.") from None

    return dataset.map(checked, with_indices=True, remove_columns=dataset.column_names)


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint (runner.recovery's rule), so a save cut short by a kill is
    never resumed from."""
    from llmwizard.runner.recovery import last_checkpoint as newest_complete

    found = newest_complete(Path(output_dir))
    return str(found) if found else None


def leave(code: int) -> None:
    """End the rank without the interpreter's C-level teardown. The work is done and saved and
    the process group destroyed, but gloo's and DeepSpeed's background threads can still abort a
    rank while static objects are destroyed ("terminate called without an active exception",
    exit 250 under load), which would turn a finished run into a failed one. Exit handlers
    (trackers' final sync) and logging still run first."""
    import atexit
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
