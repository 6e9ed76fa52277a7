"""Trainer callbacks that run inside each rank (imports transformers and torch)."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

from transformers import TrainerCallback

from runner.metrics import MetricsWriter


def peak_memory_bytes() -> int:
    """Peak memory of this rank: CUDA allocator peak on GPUs, else the process's peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


class MetricsCallback(TrainerCallback):
    """Writes the metrics stream (see runner.metrics) from rank 0 only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: MetricsWriter | None = None
        self._start = time.monotonic()

    def _write(self, state: Any, record: dict[str, Any]) -> None:
        if not state.is_world_process_zero:
            return
        if self._writer is None:
            self._writer = MetricsWriter(self.path)
        record.setdefault("time", round(time.monotonic() - self._start, 3))
        self._writer.write(record)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = time.monotonic()
        self._write(state, {
            "type": "begin",
            "step": state.global_step,
            "max_steps": state.max_steps,
            "num_train_epochs": args.num_train_epochs,
            "world_size": args.world_size,
        })

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        record: dict[str, Any] = {"type": "log", "step": state.global_step,
                                  "max_steps": state.max_steps, "epoch": state.epoch}
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float)):
                record[key] = value
        if getattr(state, "num_input_tokens_seen", 0):
            record["tokens_seen"] = int(state.num_input_tokens_seen)
        record["peak_memory"] = peak_memory_bytes()
        self._write(state, record)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write(state, {"type": "save", "step": state.global_step,
                            "checkpoint": f"{args.output_dir}/checkpoint-{state.global_step}"})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write(state, {"type": "end", "step": state.global_step, "max_steps": state.max_steps})
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def default_callbacks(metrics_file: str) -> list[TrainerCallback]:
    """Every callback the training entry installs on each rank."""
    return [MetricsCallback(metrics_file)]
