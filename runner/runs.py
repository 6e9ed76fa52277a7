"""Runs at a glance: every run directory under a folder, with where it stands and what it reached.

`llmwizard runs [DIR]` prints these rows and `--json` gives the same for scripts. The state is
llmwizard.runner.rundir.run_status's (the lock, metrics.jsonl's begin/end records and output/);
the numbers come from metrics.jsonl as a resumed run's attempts add up (llmwizard.runner.state).
Light: no torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from llmwizard.runner import rundir
from llmwizard.runner.configs import METRICS_FILE
from llmwizard.runner.metrics import read_metrics
from llmwizard.runner.state import RunState


@dataclass(frozen=True)
class RunRow:
    run_dir: str
    name: str
    state: str                       # running | finished | stopped | diverged | failed | exported | empty
    step: int
    max_steps: int
    train_loss: float | None         # the last logged training loss
    eval_loss: float | None          # the last evaluation's loss
    best_eval_loss: float | None
    mean_token_accuracy: float | None
    duration_s: float | None         # seconds of training, over every attempt
    size_bytes: int                  # everything in the directory, checkpoints included
    updated: str | None              # metrics.jsonl's last write (local time, ISO): the last sign of life
    detail: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("train_loss", "eval_loss", "best_eval_loss", "mean_token_accuracy", "duration_s"):
            value = data[key]
            if isinstance(value, float) and not math.isfinite(value):
                data[key] = str(value)  # JSON has no NaN: "nan", "inf"
        return data


def run_dirs(root: Path) -> list[Path]:
    """`root` itself when it is a run, else the runs directly inside it, oldest first by name."""
    if rundir.is_run_dir(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and rundir.is_run_dir(p))


def directory_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def run_row(run_dir: Path) -> RunRow:
    status = rundir.run_status(run_dir)
    metrics = run_dir / METRICS_FILE
    state = RunState.from_records(read_metrics(metrics))
    best = state.best_eval()
    updated = None
    if state.began:
        try:
            updated = datetime.fromtimestamp(metrics.stat().st_mtime).isoformat(timespec="seconds")
        except OSError:
            updated = None
    return RunRow(
        run_dir=str(run_dir), name=run_dir.name, state=status.state, step=status.step, max_steps=status.max_steps,
        train_loss=state.last_loss, eval_loss=state.eval_losses[-1][1] if state.eval_losses else None,
        best_eval_loss=best[1] if best else None, mean_token_accuracy=state.last_accuracy,
        duration_s=state.elapsed if state.began else None, size_bytes=directory_size(run_dir),
        updated=updated, detail=status.detail,
    )


def list_runs(root: Path) -> list[RunRow]:
    return [run_row(path) for path in run_dirs(root)]
