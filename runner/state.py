"""RunState: what a run's metrics records add up to, for every face that shows a run.

Both the headless live view (llmwizard.runner.session.live) and the wizard's run screen fold records from
llmwizard.runner.metrics into a RunState and draw from it; diagnostics are computed from its records.
Records come from llmwizard.runner.metrics's readers, which pass on only records of the right
shape with every number in its range (`check_record`), so `update` does arithmetic on them as they
are. `RunState.read` is how the commands that look at a finished or running run read its
metrics.jsonl: through that tolerant reader, with `damage` saying what it skipped.
Light on purpose: no rich, no textual, no torch.
"""

from __future__ import annotations

import copy as _copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from llmwizard.runner import diagnostics
from llmwizard.runner.metrics import EVAL_PREFIX, TASK_KEYS, TASKS, load_metrics, task_of

# Throughput is measured over this many recent log records: recent enough to show a slowdown,
# long enough to smooth one slow step (an evaluation or a checkpoint save between logs).
RATE_WINDOW = 5
# The smoothed loss averages the logs of this many recent steps (TensorBoard-like smoothing
# without its lag at the start of a run).
SMOOTHING_STEPS = 20
# TRL's next-token accuracy, as SFTTrainer logs it for training and evaluation.
ACCURACY = "mean_token_accuracy"
EVAL_ACCURACY = "eval_mean_token_accuracy"
# Diagnostics read the whole run; recompute them at most this often (seconds) while it runs.
FINDINGS_INTERVAL = 2.0
# What a preference or reward run logs besides the loss (llmwizard.runner.metrics), train and eval.
TRACKED = (*TASK_KEYS, *(EVAL_PREFIX + key for key in TASK_KEYS))


@dataclass
class RunState:
    max_steps: int = 0
    step: int = 0
    epoch: float = 0.0
    num_train_epochs: float = 0.0
    world_size: int = 1
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    # Next-token accuracy (TRL's mean_token_accuracy): on the training batches, and at each evaluation.
    accuracies: list[tuple[int, float]] = field(default_factory=list)
    eval_accuracies: list[tuple[int, float]] = field(default_factory=list)
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_seen: int = 0
    tokens_per_second: float | None = None
    peak_memory: int = 0
    rank_peaks: list[int] = field(default_factory=list)
    memory_kind: str = "rss"
    elapsed: float = 0.0
    checkpoints: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    start_step: int = 0              # where the current attempt began (non-zero after a resume)
    attempts: int = 0
    stop: dict[str, Any] | None = None
    end_reason: str | None = None
    began: bool = False
    ended: bool = False
    probe_step_s: float | None = None   # seconds per step a probe measured: the ETA until the run has its own
    damage: str | None = None            # what `read` skipped: "N damaged lines skipped in PATH", or None
    # A preference or reward run's own numbers (TRACKED), each as (step, value) over the run.
    task_series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    planned_task: str | None = None      # the task plan.yaml names, where the caller read it
    beta: float | None = None            # the task's beta, as the trainer had it (begin record)
    _begin_task: str | None = None       # the task the latest begin record names
    _logged_task: str = "sft"            # the task the logged names show (metrics.task_of)
    _time_base: float = 0.0
    _rate_points: list[tuple[float, int]] = field(default_factory=list)
    _attempt_tokens: tuple[float, int] | None = None   # first (time, tokens) of this attempt
    _first_step: tuple[float, int] | None = None       # (time, step) of this attempt's first training log
    _findings: tuple[int, bool, float, list[diagnostics.Finding]] = (-1, False, 0.0, [])

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> RunState:
        state = cls()
        for record in records:
            state.update(record)
        return state

    @classmethod
    def read(cls, metrics_path: Path) -> RunState:
        """The state a metrics file adds up to, read tolerantly: damaged lines are skipped and
        counted, a file that cannot be read is no records; `damage` says which (None: all read)."""
        found = load_metrics(metrics_path)
        state = cls.from_records(found.records)
        state.damage = found.damage()
        return state

    def snapshot(self) -> RunState:
        """A copy another thread may keep while this one folds on: the lists are copied (records
        themselves are never changed once read), so this costs pointers, not a deep copy."""
        copy = _copy.copy(self)
        for name in ("losses", "eval_losses", "accuracies", "eval_accuracies", "rank_peaks", "checkpoints", "records",
                     "_rate_points"):
            setattr(copy, name, list(getattr(self, name)))
        copy.task_series = {key: list(values) for key, values in self.task_series.items()}
        return copy

    def update(self, record: dict[str, Any]) -> bool:
        """Fold one record in; True when it carried a training loss (a new line for plain output)."""
        self.records.append(record)
        if "time" in record:
            self.elapsed = max(self.elapsed, self._time_base + float(record.get("time") or 0.0))
        fold = self._FOLDS.get(str(record.get("type")))
        return bool(fold(self, record)) if fold is not None else False

    def _begin(self, record: dict[str, Any]) -> None:
        """A new attempt (the first, or a resume): its clock, step and totals start here."""
        self.began, self.ended = True, False
        self.attempts += 1
        self.stop = self.end_reason = None
        self._time_base = self.elapsed
        self._rate_points, self._attempt_tokens, self._first_step = [], None, None
        self.start_step = self.step = int(record.get("step") or 0)
        self.max_steps = int(record.get("max_steps") or self.max_steps)
        self.num_train_epochs = float(record.get("num_train_epochs") or 0.0)
        self.world_size = int(record.get("world_size") or 1)
        self.memory_kind = str(record.get("memory_kind") or self.memory_kind)
        task = record.get("task")
        self._begin_task = task if task in TASKS else self._begin_task
        beta = record.get("beta")
        self.beta = float(beta) if isinstance(beta, (int, float)) else self.beta
        # A resume from an earlier checkpoint throws away what came after it.
        for name in ("losses", "eval_losses", "accuracies", "eval_accuracies"):
            setattr(self, name, [(s, v) for s, v in getattr(self, name) if s <= self.start_step])
        for key, values in self.task_series.items():
            self.task_series[key] = [(s, v) for s, v in values if s <= self.start_step]

    def _log(self, record: dict[str, Any]) -> bool:
        self.step = int(record.get("step", self.step))
        self.max_steps = int(record.get("max_steps") or self.max_steps)
        self.epoch = float(record.get("epoch") or self.epoch)
        self._fold_peaks(record)
        training = "loss" in record
        if record.get("tokens_seen") and training:  # training logs: not eval or the end summary
            self._fold_tokens(int(record["tokens_seen"]))
        if training and self._first_step is None:
            self._first_step = (self.elapsed, self.step)
        if "learning_rate" in record:
            self.learning_rate = float(record["learning_rate"])
        if "grad_norm" in record:
            self.grad_norm = float(record["grad_norm"])
        for key, series in (("eval_loss", self.eval_losses), (ACCURACY, self.accuracies),
                            (EVAL_ACCURACY, self.eval_accuracies)):
            if isinstance(record.get(key), (int, float)):
                series.append((self.step, float(record[key])))
        for key in TRACKED:
            value = record.get(key)
            if isinstance(value, (int, float)):
                self.task_series.setdefault(key, []).append((self.step, float(value)))
        if self._logged_task == "sft" and any(key in record for key in TRACKED):
            self._logged_task = task_of(record)
        if training:
            self.losses.append((self.step, float(record["loss"])))
        return training

    def _fold_peaks(self, record: dict[str, Any]) -> None:
        self.peak_memory = max(self.peak_memory, int(record.get("peak_memory") or 0))
        peaks = record.get("rank_peak_memory")
        if isinstance(peaks, list) and peaks:
            if len(peaks) != len(self.rank_peaks):
                self.rank_peaks = [0] * len(peaks)
            self.rank_peaks = [max(a, int(b)) for a, b in zip(self.rank_peaks, peaks, strict=True)]

    def _fold_tokens(self, tokens_seen: int) -> None:
        """Tokens per second over the last RATE_WINDOW training logs."""
        self.tokens_seen = tokens_seen
        self._rate_points.append((self.elapsed, tokens_seen))
        self._attempt_tokens = self._attempt_tokens or (self.elapsed, tokens_seen)
        self._rate_points = self._rate_points[-(RATE_WINDOW + 1):]
        (t0, n0), (t1, n1) = self._rate_points[0], self._rate_points[-1]
        if t1 > t0 and n1 > n0:
            self.tokens_per_second = (n1 - n0) / (t1 - t0)

    def _save(self, record: dict[str, Any]) -> None:
        self.checkpoints.append(str(record.get("checkpoint")))
        self.step = max(self.step, int(record.get("step") or 0))  # saved after steps not logged yet

    def _stop(self, record: dict[str, Any]) -> None:
        self.stop = record
        self.step = max(self.step, int(record.get("step") or 0))  # the step its checkpoint holds

    def _end(self, record: dict[str, Any]) -> None:
        self.ended = True
        self.end_reason = record.get("reason")
        self.step = int(record.get("step", self.step))

    _FOLDS: ClassVar[dict[str, Callable[[RunState, dict[str, Any]], bool | None]]] = {
        "begin": _begin, "log": _log, "save": _save, "stop": _stop, "end": _end}

    @property
    def task(self) -> str:
        """sft, dpo, orpo, kto or grpo: as the run's begin record or plan.yaml says, else as its
        logged names show (an SFT run logs none of TRACKED)."""
        return self._begin_task or self.planned_task or self._logged_task

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of one of TRACKED over the run (eval_ names for the evaluations)."""
        return self.task_series.get(key, [])

    def last(self, key: str) -> float | None:
        values = self.task_series.get(key)
        return values[-1][1] if values else None

    def best(self, key: str) -> tuple[int, float] | None:
        """The step and value of the highest finite `key` logged (accuracy, margin, reward)."""
        finite = [item for item in self.task_series.get(key, []) if math.isfinite(item[1])]
        return max(finite, key=lambda item: item[1]) if finite else None

    @property
    def first_loss(self) -> float | None:
        return self.losses[0][1] if self.losses else None

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None

    @property
    def last_accuracy(self) -> float | None:
        return self.accuracies[-1][1] if self.accuracies else None

    @property
    def last_eval_accuracy(self) -> float | None:
        return self.eval_accuracies[-1][1] if self.eval_accuracies else None

    def smoothed_loss(self, steps: int = SMOOTHING_STEPS) -> float | None:
        """Mean of the losses logged over the last `steps` steps (at least the last log): one
        batch's loss is noisy, and a window in steps means the same whatever the logging interval."""
        finite = [(step, loss) for step, loss in self.losses if math.isfinite(loss)]
        if not finite:
            return None
        last = finite[-1][0]
        window = [loss for step, loss in finite if step > last - steps] or [finite[-1][1]]
        return sum(window) / len(window)

    def best_eval(self) -> tuple[int, float] | None:
        finite = [item for item in self.eval_losses if math.isfinite(item[1])]
        return min(finite, key=lambda item: item[1]) if finite else None

    def average_tokens_per_second(self) -> float | None:
        """Over the current attempt's training logs (the live figure is a recent window)."""
        if self._attempt_tokens is None or not self._rate_points:
            return None
        (t0, n0), (t1, n1) = self._attempt_tokens, self._rate_points[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 and n1 > n0 else self.tokens_per_second

    def steps_per_second(self) -> float | None:
        """Steps per second since this attempt's first training log. The time before it (loading
        the model, compiling, the first step's warm-up) is not a step's time: counted in, the first
        ETA of a short run came out several times too long."""
        if self._first_step is None:
            return None
        t0, s0 = self._first_step
        done, seconds = self.step - s0, self.elapsed - t0
        return done / seconds if done > 0 and seconds > 0 else None

    def eta(self) -> float | None:
        rate = self.steps_per_second()
        if rate is None and self.probe_step_s:
            rate = 1 / self.probe_step_s
        if not self.max_steps or rate is None:
            return None
        return max(0, self.max_steps - self.step) / rate

    def total_epochs(self) -> float | None:
        """Epochs the whole run covers (max_steps may end it before num_train_epochs)."""
        if self.step > 0 and self.epoch > 0 and self.max_steps:
            return self.epoch / self.step * self.max_steps
        return self.num_train_epochs or None

    def findings(self, final: bool = False, now: bool = False) -> list[diagnostics.Finding]:
        """The diagnostics so far. They read the whole run, so while it runs they are recomputed
        at most every FINDINGS_INTERVAL seconds; a stop record, the final verdict or `now` (an
        evaluation just came) at once."""
        count, was_final, when, cached = self._findings
        clock = time.monotonic()
        stale = count != len(self.records) or final != was_final
        due = now or count < 0 or final != was_final or self.stop is not None or clock - when >= FINDINGS_INTERVAL
        if stale and due:
            cached = diagnostics.diagnose(self.records, final=final, task=self.task)
            self._findings = (len(self.records), final, clock, cached)
        return cached


def final_status(state: RunState, code: int) -> str:
    if state.end_reason == "diverged":
        return "diverged"
    if state.end_reason == "stopped":
        return "stopped"
    return "done" if code == 0 else "failed"
