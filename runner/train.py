"""The per-rank training entry: `python -m runner.train --config sft_config.yaml [options]`.

Every launcher (accelerate launch, torchrun, deepspeed) starts this module once per rank. The
TRL YAML carries everything TRL knows (ScriptArguments + SFTConfig + ModelConfig, parsed by
TrlParser, unknown keys refused); the few things it has no field for are options here, so the
launch command shows them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m runner.train", add_help=False)
    parser.add_argument("--metrics-file", default="metrics.jsonl",
                        help="JSON-lines metrics written by rank 0")
    parser.add_argument("--eval-fraction", type=float, default=0.0,
                        help="hold out this share of the rows for evaluation when the dataset has no test split")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in output_dir")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    own, trl_argv = parse_args(sys.argv[1:] if argv is None else argv)

    from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser, get_peft_config

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(trl_argv)

    model_path = resolve_model(model_args.model_name_or_path)
    train_dataset, eval_dataset = load_splits(script_args, training_args, own.eval_fraction)

    from runner.callbacks import default_callbacks

    model_init_kwargs: dict[str, Any] = dict(training_args.model_init_kwargs or {})
    if model_args.dtype and "dtype" not in model_init_kwargs:
        model_init_kwargs["dtype"] = model_args.dtype
    if model_args.attn_implementation and "attn_implementation" not in model_init_kwargs:
        model_init_kwargs["attn_implementation"] = model_args.attn_implementation
    training_args.model_init_kwargs = model_init_kwargs or None

    trainer = SFTTrainer(
        model=str(model_path),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        callbacks=default_callbacks(own.metrics_file),
    )
    resume: str | bool | None = training_args.resume_from_checkpoint
    if own.resume:
        resume = last_checkpoint(training_args.output_dir) or None
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        print(f"llmwizard: saved to {Path(training_args.output_dir).resolve()}", flush=True)
    if hasattr(trainer, "end"):
        trainer.end()
    return 0


def resolve_model(name: str | None) -> Path | str:
    from autotune.embedded import EMBEDDED_MODEL, ensure_embedded_model

    if name is None or name == EMBEDDED_MODEL:
        return ensure_embedded_model()
    return name


def load_splits(script_args: Any, training_args: Any, eval_fraction: float) -> tuple[Any, Any]:
    """Train and eval splits, normalised to a TRL format with autotune's row mapping."""
    import datasets

    from autotune.dataset import SUFFIXES, detect_format, local_path, resolve_dataset

    source = resolve_dataset(script_args.dataset_name)
    path = local_path(source)
    if path is not None:
        builder = SUFFIXES[path.suffix.lower()]
        loaded = datasets.load_dataset(builder, data_files={"train": str(path)})
    else:
        loaded = datasets.load_dataset(source, name=script_args.dataset_config)
    train = loaded[script_args.dataset_train_split]
    _, convert = detect_format(train.column_names)
    train = train.map(convert, remove_columns=train.column_names)
    evaluate = training_args.eval_strategy != "no"
    if not evaluate:
        return train, None
    if script_args.dataset_test_split in loaded:
        test = loaded[script_args.dataset_test_split]
        return train, test.map(convert, remove_columns=test.column_names)
    if eval_fraction <= 0:
        raise SystemExit("llmwizard: evaluation is on but there is no test split; pass --eval-fraction")
    split = train.train_test_split(test_size=eval_fraction, seed=training_args.seed)
    return split["train"], split["test"]


def last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not os.path.isdir(output_dir):
        return None
    return get_last_checkpoint(output_dir)


if __name__ == "__main__":
    raise SystemExit(main())
