"""Runs at a glance: every run directory under a folder, with where it stands and what it reached.

`llmwizard runs [DIR]` prints these rows and `--json` gives the same for scripts. The state is
llmwizard.runner.rundir.run_status's (the lock, metrics.jsonl's begin/end records and output/);
the numbers come from metrics.jsonl as a resumed run's attempts add up (llmwizard.runner.state).

A damaged run directory is shown, not a failure: every file is read tolerantly, and
`run_problems` names what was damaged or skipped (metrics lines, plan.yaml, a checkpoint's
trainer_state.json, the state files in .llmwizard/, samples.jsonl, recovery.log), which `runs`,
`status`, `watch` and report.html print. Nothing here writes.
Light: no torch.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from llmwizard.runner import recovery
from llmwizard.runner import rundir
from llmwizard.runner import runlock
from llmwizard.runner.export.configs import METRICS_FILE, OUTPUT_DIR
from llmwizard.runner.after.merge import weights_problem
from llmwizard.runner.after.summary import plan_task
from llmwizard.runner.metrics import REWARD, REWARD_ACCURACY
from llmwizard.runner.rank.samples import SAMPLES_FILE
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
    problems: list[str] = field(default_factory=list)   # damaged files, named (run_problems)
    task: str = "sft"                     # sft | dpo | orpo | kto | grpo
    reward_accuracy: float | None = None  # DPO, ORPO: the last logged share of pairs ranked right
    reward: float | None = None           # GRPO: the last logged mean reward

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("train_loss", "eval_loss", "best_eval_loss", "mean_token_accuracy", "duration_s",
                    "reward_accuracy", "reward"):
            value = data[key]
            if isinstance(value, float) and not math.isfinite(value):
                data[key] = str(value)  # JSON has no NaN: "nan", "inf"
        return data


def run_dirs(root: Path) -> list[Path]:
    """`root` itself when it is a run, else the runs directly inside it, oldest first by name.
    An entry that cannot be looked at (a link to nowhere, no permission) is no run."""
    if _is_run(root):
        return [root]
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if _is_run(p))


def _is_run(path: Path) -> bool:
    try:
        return path.is_dir() and rundir.is_run_dir(path)
    except OSError:  # a folder this user may not look into
        return False


def directory_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def run_problems(run_dir: Path, state: RunState | None = None) -> list[str]:
    """Each damaged file of a run directory, named with what is wrong and what the commands do
    about it. `state`: the run's metrics as the caller read them already (RunState.read)."""
    problems: list[str] = []
    damage = (state or RunState.read(run_dir / METRICS_FILE)).damage
    if damage:
        problems.append(damage)
    problems += _plan_problems(run_dir)
    output = run_dir / OUTPUT_DIR
    if output.is_symlink() and not output.exists():
        problems.append(f"{output} is a link to nowhere: the run's checkpoints and final model are not there")
    elif output.exists() and not output.is_dir():
        problems.append(f"{output} is not a directory: the run's checkpoints and final model are not there")
    checkpoints = recovery.checkpoints(output) if output.is_dir() else []
    for checkpoint in checkpoints:
        state_file = checkpoint / "trainer_state.json"
        if (state_file.exists() or state_file.is_symlink()) and recovery.trainer_state(checkpoint) is None:
            problems.append(f"{state_file} is damaged: {checkpoint.name} is not resumed from "
                            "(`llmwizard resume` sets it aside and continues from the checkpoint before)")
    for weights in [output, *checkpoints] if output.is_dir() else []:
        problem = weights_problem(weights)
        if problem:
            problems.append(f"{problem}: `merge` and `try` pass over these weights")
    state_dir = run_dir / runlock.STATE_DIR
    if state_dir.exists() and not state_dir.is_dir():
        problems.append(f"{state_dir} is not a directory: the run's lock and export manifest cannot be kept there "
                        "(move it away before the next launch)")
    else:
        for name in (runlock.LOCK_FILE, rundir.MANIFEST_FILE):
            problem = _json_problem(run_dir / name)
            if problem:
                then = "the next launch writes it again" if problem.startswith("is damaged") else \
                    "move it away before the next launch"
                problems.append(f"{run_dir / name} {problem}; ignored ({then})")
    for name in (SAMPLES_FILE, recovery.RECOVERY_LOG):
        problem = _text_problem(run_dir / name)
        if problem:
            problems.append(f"{run_dir / name} {problem}; left out")
    problem = _kind_problem(run_dir / rundir.LOG_FILE)  # library output: any bytes are fine in a log
    if problem:
        problems.append(f"{run_dir / rundir.LOG_FILE} {problem}")
    return problems


def _plan_problems(run_dir: Path) -> list[str]:
    """plan.yaml missing, unreadable or refused by the schema (the message names the key)."""
    from llmwizard.autotune.errors import UserError
    from llmwizard.autotune.plan import Plan

    plan = run_dir / "plan.yaml"
    if not plan.exists() and not plan.is_symlink():
        return [f"{plan} is missing: `run`, `resume`, `watch`, `merge` and `try` need it"]
    problem = _kind_problem(plan)
    if problem:
        return [f"{plan} {problem}: `run`, `resume`, `watch`, `merge` and `try` need it"]
    try:
        Plan.load(plan)
    except UserError as exc:
        return [f"{plan} cannot be used: {exc.message}"]
    return []


def _kind_problem(path: Path) -> str | None:
    """What is wrong with `path` as a file: a link to nowhere, a directory, a pipe; None when it
    is a regular file or absent."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "is a link to nowhere" if path.is_symlink() else None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    return None if stat.S_ISREG(mode) else "is not a regular file"


def _json_problem(path: Path) -> str | None:
    problem = _kind_problem(path)
    if problem or not path.exists():
        return problem
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    except (ValueError, RecursionError):
        return "is damaged (not JSON)"
    return None if isinstance(data, dict) else "is damaged (not a JSON object)"


def _text_problem(path: Path) -> str | None:
    problem = _kind_problem(path)
    if problem or not path.exists():
        return problem
    try:
        with open(path, "rb") as f:
            f.read().decode("utf-8")
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    except UnicodeDecodeError:
        return "is damaged (not UTF-8 text)"
    return None


def run_row(run_dir: Path) -> RunRow:
    status = rundir.run_status(run_dir)
    metrics = run_dir / METRICS_FILE
    state = RunState.read(metrics)
    state.planned_task = plan_task(run_dir)
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
        updated=updated, detail=status.detail, problems=run_problems(run_dir, state),
        task=state.task, reward_accuracy=state.last(REWARD_ACCURACY), reward=state.last(REWARD),
    )


def list_runs(root: Path) -> list[RunRow]:
    return [run_row(path) for path in run_dirs(root)]
