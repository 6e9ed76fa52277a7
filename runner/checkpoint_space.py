"""Is there room for the next checkpoint? The size a save needs, the space it has, and the words
for a shortfall.

A disk that fills up during a save leaves a half-written checkpoint behind and ends the rank with
a torch error ("inline_container.cc ... unexpected pos"). Instead, llmwizard.runner.rank.callbacks
asks here on every rank when a save is due (one statvfs per save, never per step), and all ranks
skip the save and stop together when one of them is short.

Light on purpose (no torch import): the parameters of the model are read by duck typing.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmwizard.runner import recovery

TITLE = "Disk full"
# The next checkpoint is about the size of the last one; trainer_state.json grows with the log
# history, and an estimate misses small files: a tenth more, plus room for the tokenizer files,
# scheduler and RNG states and training_args.bin (a few MiB each at most).
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 64 * 2**20
# What optimizer.pt holds per trainable parameter: torch.optim.AdamW (the Trainer's default
# optimizer) keeps two moments, exp_avg and exp_avg_sq, counted here in fp32 (4 bytes each, as
# in mixed precision, where trainable parameters are fp32). DeepSpeed also keeps an fp32 master
# copy of the weights in its optimizer states (ZeRO paper, Rajbhandari et al. 2020: 12 bytes per
# parameter for mixed-precision Adam).
ADAM_BYTES_PER_PARAMETER = 2 * 4
DEEPSPEED_MASTER_BYTES_PER_PARAMETER = 4


@dataclass(frozen=True)
class Room:
    """What a save needs and what the disk has, on one rank."""

    needed: int
    free: int

    @property
    def short(self) -> bool:
        return self.needed > self.free


def directory_bytes(path: Path) -> int:
    """The bytes of every file under `path` (a checkpoint: a few to a few hundred files)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def estimate_bytes(model: Any, deepspeed: bool = False) -> int:
    """What the HF Trainer writes into a checkpoint of `model`, before one exists to measure.

    A LoRA checkpoint holds adapter_model.safetensors (the trainable adapter weights only); a
    full fine-tune's holds model.safetensors (every weight). Both hold optimizer.pt with the
    optimizer's states of the trainable parameters (see ADAM_BYTES_PER_PARAMETER). Sharded
    parameters count whole (FSDP2's DTensor.numel is the global size; DeepSpeed ZeRO-3 keeps it in
    ds_numel): a sharded checkpoint holds every shard.
    """
    weights = trainable_count = trainable_weights = 0
    for parameter in model.parameters():
        count = int(getattr(parameter, "ds_numel", 0) or parameter.numel())
        size = count * int(parameter.element_size())
        weights += size
        if parameter.requires_grad:
            trainable_count += count
            trainable_weights += size
    adapter = hasattr(model, "peft_config")  # a PeftModel saves only its adapter
    per_parameter = ADAM_BYTES_PER_PARAMETER + (DEEPSPEED_MASTER_BYTES_PER_PARAMETER if deepspeed else 0)
    return (trainable_weights if adapter else weights) + trainable_count * per_parameter


def with_margin(size: int) -> int:
    return int(size * (1 + MARGIN_FRACTION)) + MARGIN_BYTES


def existing_directory(path: Path) -> Path:
    """`path`, or its nearest parent that exists (output_dir appears at the first save; an export's
    directory at its first file). A name the kernel refuses to look up (one over 255 bytes) counts
    as missing rather than raising, so the caller can say what is wrong with it."""
    path = path.resolve()
    while not _exists(path) and path.parent != path:
        path = path.parent
    return path


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError:  # missing, a name too long, a parent that is a file: nothing there to use
        return False
    return True


class CheckpointSpace:
    """One rank's check before each save: the last complete checkpoint's size (measured once per
    checkpoint), else an estimate from the model (computed once); the free space is read anew at
    each save, since other programs share the disk."""

    def __init__(self) -> None:
        self._estimate: int | None = None
        self._measured: tuple[Path | None, int] = (None, 0)

    def needed(self, output_dir: str, model: Any, deepspeed: bool = False) -> int:
        last = recovery.last_checkpoint(Path(output_dir)) if Path(output_dir).is_dir() else None
        if last is not None:
            if self._measured[0] != last:
                self._measured = (last, directory_bytes(last))
            return with_margin(self._measured[1])
        if self._estimate is None:
            self._estimate = estimate_bytes(model, deepspeed) if model is not None else 0
        return with_margin(self._estimate)

    def room(self, output_dir: str, model: Any, deepspeed: bool = False) -> Room:
        free = shutil.disk_usage(existing_directory(Path(output_dir))).free
        return Room(self.needed(output_dir, model, deepspeed), int(free))


def gib(size: int) -> str:
    """Bytes as GiB for a sentence: "12.3", or two significant digits below 1 GiB ("0.031")."""
    value = size / 2**30
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def shortfall(step: int, output_dir: str, room: Room) -> tuple[str, str]:
    """The message and the fix when checkpoint-`step` does not fit (the UserError's words)."""
    path = existing_directory(Path(output_dir))  # the directory whose filesystem was read
    message = (f"Not enough free disk space for checkpoint-{step} on {path}: it needs about {gib(room.needed)} GiB, "
               f"{gib(room.free)} GiB are free.")
    fix = ("Free space on that disk (old run directories and checkpoints can go), or start the run again with "
           "--output-dir on a larger disk, or keep fewer checkpoints (save_total_limit in the run's TRL YAML, "
           "sft_config.yaml or the task's, kept with --keep-edits). The last complete checkpoint is kept: "
           "`llmwizard resume` continues from it once there is room.")
    return message, fix


def user_error_line(rank: int, message: str, fix: str) -> str:
    """The two lines llmwizard.runner.recovery reads as this failure (the format of
    llmwizard.runner.rank.train.main's UserError lines, with this failure's title)."""
    return f"llmwizard (rank {rank}, {TITLE}) UserError: {message}\nFix: {fix}"
