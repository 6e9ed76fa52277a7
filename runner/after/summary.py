"""A run's summary as plain data, and the words every view uses for a run's numbers.

`build_summary` gives the rows of (label, value) the console prints as a rich table
(llmwizard.runner.session.session.print_summary) and the wizard's run screen shows: one builder, so both
faces say the same, resume advice included. A preference run (DPO, ORPO, KTO) adds its reward
accuracy and margin, first, last and best, train and eval, its chosen and rejected rewards and
log-probs and KTO's KL (`task_rows`); a GRPO run its reward (mean +- spread), completion length,
the share of groups that scored alike and its KL. report.html shows the same rows.
Plain strings only: no rich, no textual.
"""

from __future__ import annotations

from typing import Any

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from llmwizard.autotune.errors import UserError
from llmwizard.runner import diagnostics
from llmwizard.runner import metrics as m
from llmwizard.runner import recovery
from llmwizard.runner.export import OUTPUT_DIR
from llmwizard.runner.state import RunState


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def format_bytes(value: int) -> str:
    return f"{value / 2**30:.1f} GiB" if value >= 2**30 else f"{value / 2**20:,.0f} MiB"


def memory_text(state: RunState) -> str | None:
    """Peak memory per rank as one phrase ("21.0 GiB (GPU, allocated)"); None before any."""
    kind = "GPU, allocated" if state.memory_kind == "cuda" else "host RSS"
    peaks = state.rank_peaks or ([state.peak_memory] if state.peak_memory else [])
    if not peaks:
        return None
    if len(peaks) == 1:
        return f"{format_bytes(peaks[0])} ({kind})"
    if len(peaks) <= 4:
        return " · ".join(f"r{i} {format_bytes(p)}" for i, p in enumerate(peaks)) + f" ({kind})"
    top = max(range(len(peaks)), key=lambda i: peaks[i])
    return (f"max {format_bytes(peaks[top])} on rank {top}, min {format_bytes(min(peaks))}, "
            f"{len(peaks)} ranks ({kind})")


def resume_command(run_dir: Path) -> str:
    """The command as one would paste it: the path quoted for the shell when it needs to be."""
    return f"llmwizard resume {shlex.quote(str(run_dir))}"


@dataclass
class Outcome:
    """How a session ended, and what it changed and noted on the way."""

    status: str                       # done | stopped | diverged | failed
    code: int                         # the launcher's exit status
    failure: recovery.Failure | None = None
    changes: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"done": 0, "stopped": 130}.get(self.status, 1)


@dataclass(frozen=True)
class Summary:
    status: str                                   # done | stopped | diverged | failed
    title: str                                    # "done", "stopped at step 12", ...
    style: str                                    # green | yellow | red
    rows: tuple[tuple[str, str], ...]
    findings: tuple[diagnostics.Finding, ...] = ()
    failure: recovery.Failure | None = None
    log_excerpt: tuple[str, ...] = ()
    log_path: str = ""
    free_disk: int | None = None                  # bytes free where the run writes, after a full disk
    resume: str = ""                              # after a failure: the resume command and where it continues


def build_summary(run_dir: Path, state: RunState, outcome: Outcome) -> Summary:
    output = run_dir / OUTPUT_DIR
    rows: list[tuple[str, str]] = []
    rows.append(("steps", f"{state.step}/{state.max_steps or '?'}"
                 + (f" (epoch {state.epoch:.2f})" if state.epoch else "")))
    if state.first_loss is not None and state.last_loss is not None:
        smoothed = state.smoothed_loss()
        rows.append(("loss", f"{state.first_loss:.4f} -> {state.last_loss:.4f}"
                     + (f" (smoothed {smoothed:.4f})" if smoothed is not None else "")))
    state.planned_task = state.planned_task or plan_task(run_dir)
    best_eval = state.best_eval()
    if state.eval_losses and best_eval and state.task == "grpo":  # its lowest surrogate loss is no best
        rows.append(("eval loss", f"{state.eval_losses[-1][1]:.4f}"))
    elif state.eval_losses and best_eval:
        rows.append(("eval loss", f"{state.eval_losses[-1][1]:.4f} (best {best_eval[1]:.4f} at step {best_eval[0]})"))
    accuracy = accuracy_text(state)
    if accuracy is not None:
        rows.append(("next-token accuracy" if state.task == "sft" else "next-token accuracy (chosen answers)",
                     accuracy))
    rows += task_rows(state)
    best = recovery.best_checkpoint(run_dir, output) if output.is_dir() else None
    if best is not None:
        metric = f", eval loss {best.metric:.4f}" if best.metric is not None else ""
        held = "; output/ holds this model" if outcome.status in ("done", "diverged") else ""
        rows.append(("best checkpoint", f"{_rel(best.path, run_dir)} (step {best.step}{metric}, kept{held})"))
    memory = memory_text(state)
    if memory is not None:
        rows.append(("peak memory", memory))
    rate = state.average_tokens_per_second()
    if rate:
        rows.append(("throughput", f"{rate:,.0f} tokens/s (all ranks, evaluations and saves included)"))
    rows.append(("wall time", f"{format_seconds(state.elapsed)} of training"))
    rows += [("recovered", change) for change in outcome.changes]
    rows += [("note", note) for note in outcome.notes]
    rows.append(("run directory", str(run_dir)))
    title, style = _status_rows(rows, run_dir, state, outcome, output)
    rows += _after_rows(run_dir, outcome)
    # A stopped or failed run is judged as it stood: "still falling" would be no news.
    findings = state.findings(final=outcome.status == "done")
    if outcome.status == "diverged":
        findings = [f for f in findings if f.severity != diagnostics.STOP]  # already in the rows
    free = recovery.free_disk_bytes(run_dir) if outcome.failure and outcome.failure.kind == "disk_full" else None
    return Summary(outcome.status, title, style, tuple(rows), tuple(findings), outcome.failure,
                   tuple(outcome.log_tail), str(run_dir / "train.log"), free, _resume_advice(run_dir, outcome, output))


def accuracy_text(state: RunState) -> str | None:
    """Next-token accuracy as the runs log it (TRL's mean_token_accuracy): "41.2% -> 63.0% (eval 61.5%)"."""
    parts = []
    if state.accuracies:
        first, last = state.accuracies[0][1], state.accuracies[-1][1]
        parts.append(f"{first:.1%} -> {last:.1%}")
    if state.eval_accuracies:
        parts.append(f"eval {state.eval_accuracies[-1][1]:.1%}")
    if not parts:
        return None
    return parts[0] + (f" ({parts[1]})" if len(parts) > 1 else "") if state.accuracies else parts[0]


def plan_task(run_dir: Path) -> str | None:
    """The task plan.yaml names (sft, dpo, orpo, kto, grpo); None when it cannot be read, and then
    the run's records say (llmwizard.runner.state.RunState.task)."""
    from llmwizard.autotune.plan import Plan

    path = run_dir / "plan.yaml"
    if not path.is_file():  # missing, or no regular file (a pipe there would block the read)
        return None
    try:
        return str(Plan.load(path).task)
    except (UserError, OSError, ValueError):
        return None


def _first_last_best(state: RunState, key: str, form: str) -> str | None:
    """"first -> last (best B at step S; eval E, best B at step S)" for one of the task's series, with
    the evaluations' when there were any; None when it was never logged."""
    series = state.series(key)
    if not series:
        return None
    text = f"{form.format(series[0][1])} -> {form.format(series[-1][1])}"
    notes = []
    best = state.best(key)
    if best is not None and len(series) > 1:
        notes.append(f"best {form.format(best[1])} at step {best[0]}")
    evals = state.series(m.EVAL_PREFIX + key)
    if evals:
        eval_best = state.best(m.EVAL_PREFIX + key)
        notes.append(f"eval {form.format(evals[-1][1])}" + (f", best {form.format(eval_best[1])} at step {eval_best[0]}"
                                                           if eval_best is not None and len(evals) > 1 else ""))
    return text + (f" ({'; '.join(notes)})" if notes else "")


def logp_text(value: float | None) -> str | None:
    """A log-prob in at most six characters: -212.4, -1.234 (ORPO's per-token means), -1500."""
    if value is None:
        return None
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _first_last(state: RunState, key: str, form: str) -> str | None:
    series = state.series(key)
    if not series:
        return None
    first, last = series[0][1], series[-1][1]
    if form == "logp":
        return f"{logp_text(first)} -> {logp_text(last)}"
    return f"{form.format(first)} -> {form.format(last)}"


def _reward_words(reward: list[tuple[int, float]], with_spread: Any, notes: list[str]) -> str:
    """First -> last reward. One step's reward is the mean over a few prompts' groups and jumps from
    step to step, so with ten logs or more the words compare the means of the first and last tenth."""
    window = len(reward) // 10
    if window < 1:
        return f"{with_spread(*reward[0])} -> {with_spread(*reward[-1])}" + (f" ({'; '.join(notes)})" if notes else "")
    first = sum(value for _, value in reward[:window]) / window
    last = sum(value for _, value in reward[-window:]) / window
    return (f"{first:.3f} -> {last:.3f} (means of the first and last {window} logs; last log "
            f"{with_spread(*reward[-1])}" + "".join(f"; {note}" for note in notes) + ")")


def task_rows(state: RunState) -> list[tuple[str, str]]:
    """A preference or reward run's own figures, first -> last with the best, as summary rows;
    none for SFT."""
    rows: list[tuple[str | None, str | None]] = []
    if state.task in ("dpo", "orpo", "kto"):
        chosen, rejected = state.last(m.REWARD_CHOSEN), state.last(m.REWARD_REJECTED)
        logps_chosen, logps_rejected = _first_last(state, m.LOGPS_CHOSEN, "logp"), \
            _first_last(state, m.LOGPS_REJECTED, "logp")
        how = "per token" if state.task == "orpo" else "summed over each answer"
        rows += [
            ("reward accuracy", _first_last_best(state, m.REWARD_ACCURACY, "{:.1%}")),
            ("reward margin", _first_last_best(state, m.REWARD_MARGIN, "{:+.3f}")),
            ("rewards", f"chosen {chosen:+.3f}, rejected {rejected:+.3f} (at the last log)"
             if chosen is not None and rejected is not None else None),
            ("log-probs", f"chosen {logps_chosen}, rejected {logps_rejected} ({how})"
             if logps_chosen and logps_rejected else None),
            ("kl", _first_last(state, m.KL, "{:.3g}")),
        ]
    elif state.task == "grpo":
        reward, spread = state.series(m.REWARD), dict(state.series(m.REWARD_STD))

        def with_spread(step: int, value: float) -> str:
            return f"{value:.3f}" + (f" ± {spread[step]:.3f}" if step in spread else "")

        best, evals = state.best(m.REWARD), state.series(m.EVAL_PREFIX + m.REWARD)
        notes = ([f"best {best[1]:.3f} at step {best[0]}"] if best and len(reward) > 1 else []) + \
            ([f"eval {evals[-1][1]:.3f}"] if evals else [])
        clipped = state.last(m.COMPLETION_CLIPPED)
        length = _first_last(state, m.COMPLETION_LENGTH, "{:.0f}")
        alike = _first_last(state, m.ZERO_STD, "{:.0%}")
        rows += [
            ("reward", _reward_words(reward, with_spread, notes) if reward else None),
            ("completion length", f"{length} tokens" + (f" ({clipped:.0%} cut at max_completion_length at the last "
                                                        "log)" if clipped is not None else "") if length else None),
            ("same-score groups", f"{alike} (groups whose completions all scored alike teach nothing)"
             if alike else None),
            ("kl", _first_last(state, m.KL, "{:.3g}")),
        ]
    return [(label, value) for label, value in rows if label and value]


def _vision_language(run_dir: Path) -> bool:
    """`try` and `merge` are for text-only models (llmwizard.runner.after.merge)."""
    from llmwizard.runner.after.merge import load_plan, vision_language

    try:
        return vision_language(load_plan(run_dir))
    except (UserError, OSError):  # no readable plan.yaml: offer the commands, which say what is wrong
        return False


def _after_rows(run_dir: Path, outcome: Outcome) -> list[tuple[str, str]]:
    """What to look at and do next: the report, one held-out sample, merge and try."""
    from llmwizard.runner.export.configs import REPORT_FILE
    from llmwizard.runner.rank.samples import exact_line, read_samples

    rows: list[tuple[str, str]] = []
    if (run_dir / REPORT_FILE).is_file():
        rows.append(("report", str(run_dir / REPORT_FILE)))
    samples = read_samples(run_dir)
    if samples:
        first = samples[0]
        rows.append(("sample", f"{_short(first['prompt'])} -> {_short(first['output'])} "
                               f"(reference: {_short(first['reference'])}; all in samples.jsonl)"))
        exact = exact_line(samples)
        if exact:
            rows.append(("held-out", exact))
    if outcome.status == "done" and not _vision_language(run_dir):
        rows.append(("try it", f'llmwizard try {shlex.quote(str(run_dir))} "your prompt"'))
        if (run_dir / OUTPUT_DIR / "adapter_config.json").is_file():
            rows.append(("merge", f"llmwizard merge {shlex.quote(str(run_dir))}"))
    return rows


def _short(text: str, width: int = 60) -> str:
    from llmwizard.runner.rank.samples import printable

    flat = " ".join(printable(text).split())
    return repr(flat if len(flat) <= width else flat[: width - 1] + "…")


def _resume_advice(run_dir: Path, outcome: Outcome, output: Path) -> str:
    """For a failure panel: the command that continues the run after the fix, and from where."""
    if outcome.failure is None:
        return ""
    last = recovery.last_checkpoint(output) if output.is_dir() else None
    where = f"continues from {last.name}" if last else "starts again: no checkpoint was saved"
    return f"{resume_command(run_dir)} ({where})"


def _status_rows(rows: list[tuple[str, str]], run_dir: Path, state: RunState, outcome: Outcome,
                 output: Path) -> tuple[str, str]:
    last = recovery.last_checkpoint(output) if output.is_dir() else None
    if outcome.status == "done":
        rows.append(("saved", str(output)))
        return "done", "green"
    if outcome.status == "stopped":
        rows.append(("checkpoint", f"{_rel(last, run_dir)} (step {last.name.rsplit('-', 1)[-1]})" if last
                     else "none saved (stopped before the first step ended)"))
        rows.append(("resume", resume_command(run_dir)))
        return f"stopped at step {state.step}", "yellow"
    if outcome.status == "diverged":
        stop = state.stop or {}
        finding = stop.get("finding") or {}
        good = stop.get("good_checkpoint")
        rows.append(("diverged", f"{finding.get('message', 'the loss became NaN/Inf or spiked')}"))
        if good and (run_dir / good).is_dir():
            later = [c.name for c in recovery.checkpoints(output) if _step(c.name) > _step(good)]
            rows.append(("good checkpoint", f"{good} (the last saved before the damage)"
                         + (f"; {', '.join(later)} {'holds' if len(later) == 1 else 'hold'} damaged weights"
                            if later else "")))
        else:
            rows.append(("good checkpoint", "none: no checkpoint was saved before the damage"))
        if recovery.best_checkpoint(run_dir, output) is None:
            rows.append(("output/", "the weights at the stop: damaged, do not use them"))
        rows.append(("fix", finding.get("fix") or "Lower the learning rate and start again."))
        return f"stopped: training diverged at step {finding.get('step', state.step)}", "red"
    failure = outcome.failure
    rows.append(("exit status", str(outcome.code)))
    rows.append(("log", str(run_dir / "train.log")))
    if last is not None:
        rows.append(("resume", f"{resume_command(run_dir)} (after the fix; continues from {last.name})"))
    return f"training failed{': ' + failure.title if failure else ''}", "red"


def _rel(path: Path | None, run_dir: Path) -> str:
    if path is None:
        return "-"
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)


def _step(name: str) -> int:
    suffix = name.rstrip("/").rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1
