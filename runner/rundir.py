"""What a run directory holds and where its run stands: the export manifest, the run's state,
and setting an earlier run aside for a fresh one.

plan.yaml is the source of truth; the other run files derive from it. The manifest
(`.llmwizard/manifest.json`, written by llmwizard.runner.export) records the sha256 of every
file as exported and the plan they were made from, so a later export can tell a file edited by
hand (its hash differs) from one that only needs to follow the plan, and never overwrite an
edit silently. Nothing here deletes: an earlier run is moved to `previous-<time>/`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.schema import Task, choices
from llmwizard.runner import recovery
from llmwizard.runner import runlock
from llmwizard.runner.metrics import read_metrics
from llmwizard.runner.state import RunState

# The run directory's files, by name (the exporters and the after-run commands use these).
OUTPUT_DIR = "output"
METRICS_FILE = "metrics.jsonl"
DS_CONFIG = "ds_config.json"
# TensorBoard event files, when the plan reports to it (relative to the run directory).
TENSORBOARD_DIR = "tensorboard"
HOSTFILE = "hostfile"
REPORT_FILE = "report.html"       # llmwizard report RUN (llmwizard.runner.after.report)


def trl_config_name(task: str) -> str:
    """The TRL YAML of a run that does `task` (the plan's task): sft_config.yaml, dpo_config.yaml,
    orpo_config.yaml, kto_config.yaml or grpo_config.yaml."""
    return f"{task}_config.yaml"


# Every task's TRL YAML, by name: the files a launch reads whichever the plan's task.
TRL_CONFIGS = tuple(trl_config_name(task) for task in choices(Task))

MANIFEST_FILE = f"{runlock.STATE_DIR}/manifest.json"
MANIFEST_VERSION = 1
LOG_FILE = "train.log"
# What a training run adds to its directory; `--fresh` moves these aside together.
RUN_RESULTS = (OUTPUT_DIR, METRICS_FILE, LOG_FILE, "recovery.log", "probe.jsonl", "samples.jsonl", "report.html",
               TENSORBOARD_DIR)
# What a finished save leaves in output/ (PEFT adapter, or a full model in one or several shards).
FINAL_MODEL_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def plan_digest(plan_data: dict[str, Any]) -> str:
    """A digest of the plan's values (not of plan.yaml's text, which comments change)."""
    return sha256_text(json.dumps(plan_data, sort_keys=True, default=str))


@dataclass
class Manifest:
    files: dict[str, str]                       # name -> sha256 as exported (plan.yaml included)
    plan: dict[str, Any]                        # the plan the files were made from
    plan_sha256: str
    exported: str
    kept_edits: dict[str, str] = field(default_factory=dict)  # name -> sha256 launched as edited
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "exported": self.exported, "plan_sha256": self.plan_sha256,
                           "files": self.files, "kept_edits": self.kept_edits, "plan": self.plan},
                          indent=1, default=str) + "\n"


def read_manifest(run_dir: Path) -> Manifest | None:
    """The manifest, or None (none yet, an older llmwizard's export, or a damaged file)."""
    try:
        data = json.loads((run_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        return Manifest(files=dict(data["files"]), plan=dict(data["plan"]), plan_sha256=str(data["plan_sha256"]),
                        exported=str(data["exported"]), kept_edits=dict(data.get("kept_edits") or {}),
                        version=int(data.get("version", MANIFEST_VERSION)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    path = run_dir / MANIFEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(manifest.to_json(), encoding="utf-8")
    temporary.replace(path)


def plan_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`key old -> new` for the plan's top-level values that differ (reasons and estimate left out)."""
    skip = {"reasons", "warnings", "estimate"}
    return [f"{key} {before.get(key)!r} -> {after.get(key)!r}" for key in after
            if key not in skip and before.get(key) != after.get(key)]


def stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def unused_name(directory: Path, base: str) -> Path:
    """`directory/base`, or base-2, base-3, ... whichever does not exist yet."""
    candidate = directory / base
    attempt = 1
    while candidate.exists() or candidate.is_symlink():
        attempt += 1
        candidate = directory / f"{base}-{attempt}"
    return candidate


# ----------------------------------------------------------------------------- run state

@dataclass
class RunStatus:
    state: str             # running | finished | stopped | diverged | failed | exported | empty
    step: int              # the last step logged
    max_steps: int
    detail: str
    pid: int | None = None  # the live process, when running
    checkpoint: str | None = None

    @property
    def has_progress(self) -> bool:
        """Training happened here: starting over would overwrite checkpoints and repeat steps."""
        return self.state == "finished" or self.step > 0 or self.checkpoint is not None


def final_model(run_dir: Path) -> Path | None:
    output = run_dir / OUTPUT_DIR
    for name in FINAL_MODEL_FILES:
        if (output / name).is_file():
            return output / name
    return None


def run_status(run_dir: Path) -> RunStatus:
    """Where the run in `run_dir` stands, from its lock, metrics.jsonl and output/."""
    state = RunState.from_records(read_metrics(run_dir / METRICS_FILE))
    output = run_dir / OUTPUT_DIR
    last = recovery.last_checkpoint(output) if output.is_dir() else None
    checkpoint = str(last.relative_to(run_dir)) if last else None
    steps = (state.step, state.max_steps)
    info = runlock.read_lock(run_dir)
    # A lock this process holds is the caller's own (`llmwizard run` looks before it launches).
    live = runlock.live_pid(info, run_dir) if info and info.pid != os.getpid() else None
    if live is None and info is None:
        ranks = runlock.train_processes(run_dir)
        live = ranks[0].pid if ranks else None
    if live is not None:
        return RunStatus("running", *steps, f"pid {live}", live, checkpoint)
    model = final_model(run_dir)
    if state.began and state.ended:
        if state.end_reason == "completed" and model is not None:
            return RunStatus("finished", *steps, f"{model.relative_to(run_dir)}", checkpoint=checkpoint)
        if state.end_reason == "stopped":
            return RunStatus("stopped", *steps, f"checkpoint {checkpoint or 'none'}", checkpoint=checkpoint)
        if state.end_reason == "diverged":
            return RunStatus("diverged", *steps, "the loss became NaN/Inf or spiked", checkpoint=checkpoint)
    if state.ended and not state.began and state.end_reason == "stopped":
        return RunStatus("stopped", *steps, "stopped before the first step", checkpoint=checkpoint)
    if model is not None and not state.began:
        return RunStatus("finished", *steps, f"{model.relative_to(run_dir)} (no metrics)", checkpoint=checkpoint)
    if state.began or (run_dir / LOG_FILE).exists():
        why = "ended without a final record (killed, or a rank failed)" if state.began else \
            f"exited before the first step (see {LOG_FILE})"
        if state.began and state.ended:
            why = f"ended ({state.end_reason}) without a final model"
        return RunStatus("failed", *steps, why, checkpoint=checkpoint)
    if (run_dir / "plan.yaml").is_file():
        return RunStatus("exported", *steps, "not launched yet", checkpoint=checkpoint)
    return RunStatus("empty", *steps, "no plan.yaml", checkpoint=checkpoint)


def set_aside(run_dir: Path) -> Path | None:
    """Move the earlier run's results (output/, metrics.jsonl, train.log, recovery.log, samples.jsonl,
    report.html, tensorboard/) into a new
    `previous-<time>/` inside the run directory; nothing is deleted. None when there was nothing."""
    present = [run_dir / name for name in RUN_RESULTS if (run_dir / name).exists()]
    if not present:
        return None
    target = unused_name(run_dir, f"previous-{stamp()}")
    target.mkdir()
    for path in present:
        path.rename(target / path.name)
    return target


# What a launch writes in its run directory, and whether each is a directory: a path of the other
# kind (a plain file named output) would fail inside the ranks after the launch.
RUN_WRITES: dict[str, bool] = {runlock.STATE_DIR: True, OUTPUT_DIR: True, TENSORBOARD_DIR: True,
                               **{name: False for name in RUN_RESULTS if name not in (OUTPUT_DIR, TENSORBOARD_DIR)}}


def check_writable(run_dir: Path, files: tuple[str, ...] = ()) -> None:
    """Refuse (UserError, exit code 2) a run directory a launch cannot write in, before anything in
    it changes: the directory, its state and output directories and the run's files must be
    writable and of the kind the run writes; `files` adds the exported files written again. The
    directories are tried with a real file (removed at once), since permission bits say nothing
    to root and a read-only mount refuses everyone."""
    fix = (f"Make {run_dir} writable (chmod u+w, or remount it read-write), or copy the run directory to a "
           f"writable place (cp -r {run_dir} NEW_DIR) and give llmwizard NEW_DIR.")
    for name, is_dir in {**RUN_WRITES, **{name: False for name in files}}.items():
        path = run_dir / name
        if path.exists() and path.is_dir() != is_dir:
            kind, wanted = ("a file", "a directory") if is_dir else ("a directory", "a file")
            raise UserError(f"{path} is {kind}, but the run writes {wanted} there; training would fail after "
                            "the launch.", title="Run directory",
                            fix=f"Move it out of the way (mv {path} {path}.old), then run again.")
    directories = [run_dir] + [run_dir / name for name, is_dir in RUN_WRITES.items() if is_dir]
    for directory in directories:
        problem = _cannot_write(directory) if directory.is_dir() else None
        if problem:
            raise UserError(f"Cannot write in {directory} ({problem}): the run keeps its lock, checkpoints, "
                            "metrics and log in its directory.", title="Run directory", fix=fix)
    for name in (*files, *(n for n, is_dir in RUN_WRITES.items() if not is_dir)):
        path = run_dir / name
        if path.is_file() and not os.access(path, os.W_OK):
            raise UserError(f"Cannot write {path} (read-only): the run writes it again.", title="Run directory",
                            fix=f"Make it writable (chmod u+w {path}), or {fix[0].lower()}{fix[1:]}")


def _cannot_write(directory: Path) -> str | None:
    """Why a file cannot be made in `directory` (None when it can); the trial file is removed."""
    import tempfile

    try:
        handle, name = tempfile.mkstemp(prefix=".llmwizard-write-check-", dir=directory)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(handle)
    Path(name).unlink()
    return None


def is_run_dir(path: Path) -> bool:
    return (path / "plan.yaml").is_file() or (path / MANIFEST_FILE).is_file()
