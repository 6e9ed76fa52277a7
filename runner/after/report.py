"""report.html: one self-contained page per run, to look at after the terminal is gone.

Written into the run directory by the run session at each evaluation and at the end
(llmwizard.runner.session.engine), and again on demand by `llmwizard report RUN` from the run's files
(a run launched with `bash launch.sh` gets one too). Everything is inline: the charts are SVG
drawn here, the style is in the page, and there is no script and no network access.

What it holds: the run's state and numbers; charts of train and eval loss (raw and smoothed),
next-token accuracy (TRL's mean_token_accuracy, train and eval), learning rate, grad norm,
tokens/s and peak memory per rank; the plan with its reasons and the memory breakdown; the
diagnostics; the recovery story (recovery.log, a stop); the held-out samples. A preference run
(DPO, ORPO, KTO) adds charts of its reward accuracy, reward margin, chosen and rejected rewards
and log-probs (and KTO's KL), a GRPO run of its reward (mean +- spread), completion length, the
share of groups that scored alike and its KL (beta > 0); the numbers hold the summary's rows for
them (llmwizard.runner.after.summary.task_rows): first, last and best values.

Each chart is an `<svg class="chart" data-chart=NAME>` whose series are `<polyline
data-series=NAME data-points=N>`: the page can be checked by machine as well as by eye.
A damaged file in the run directory leaves its part of the page out, and the page names it under
"Damaged files" (llmwizard.runner.after.runs.run_problems). Where report.html cannot be written (a
read-only directory, a directory in its place), `write_report` says so with a UserError and leaves
the directory as it was.
Light: no torch, no rich.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.runner import diagnostics
from llmwizard.runner import metrics as m
from llmwizard.runner import recovery
from llmwizard.runner import rundir
from llmwizard.runner.export.configs import METRICS_FILE, REPORT_FILE
from llmwizard.runner.metrics import current_records
from llmwizard.runner.after.runs import run_problems
from llmwizard.runner.rank.samples import printable, read_samples
from llmwizard.runner.state import ACCURACY, EVAL_ACCURACY, SMOOTHING_STEPS, RunState
from llmwizard.runner.after.summary import format_bytes, format_seconds, plan_task, task_rows

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")

Series = list[tuple[float, float]]


@dataclass(frozen=True)
class Line:
    name: str
    points: Series
    color: str
    faint: bool = False      # raw values under their smoothed line
    markers: bool = False    # few points (evaluations): a dot on each


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    unit: str
    lines: tuple[Line, ...]
    y_range: tuple[float, float] | None = None   # a fixed scale (accuracy: 0 to 1)

    @property
    def empty(self) -> bool:
        return not any(line.points for line in self.lines)


# ----------------------------------------------------------------------------- series

def series(records: list[dict[str, Any]], key: str, *, training: bool | None = None) -> Series:
    """(step, value) of every `log` record carrying a finite `key`; `training` True keeps the
    training logs only (those with a loss), False the evaluation logs only."""
    out: Series = []
    for record in records:
        if record.get("type") != "log":
            continue
        if training is True and "loss" not in record:
            continue
        if training is False and "eval_loss" not in record:
            continue
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append((float(record.get("step") or 0), float(value)))
    return out


def smoothed(points: Series, steps: int = SMOOTHING_STEPS) -> Series:
    """Each point's mean over the logs of the last `steps` steps (the live views' smoothing)."""
    out: Series = []
    for index, (step, _) in enumerate(points):
        window = [value for s, value in points[: index + 1] if s > step - steps]
        out.append((step, sum(window) / len(window)))
    return out


def tokens_per_second(records: list[dict[str, Any]]) -> Series:
    """Between consecutive training logs of one attempt: tokens seen over seconds passed."""
    out: Series = []
    last: tuple[float, int] | None = None
    for record in records:
        if record.get("type") == "begin":
            last = None
        if record.get("type") != "log" or "loss" not in record or not record.get("tokens_seen"):
            continue
        now = (float(record.get("time") or 0.0), int(record["tokens_seen"]))
        if last is not None and now[0] > last[0] and now[1] > last[1]:
            out.append((float(record["step"]), (now[1] - last[1]) / (now[0] - last[0])))
        last = now
    return out


def memory_per_rank(records: list[dict[str, Any]]) -> list[Series]:
    """Peak memory (GiB) per rank at each training log, as the ranks reported it."""
    ranks: list[Series] = []
    for record in records:
        peaks = record.get("rank_peak_memory")
        if record.get("type") != "log" or "loss" not in record or not isinstance(peaks, list):
            continue
        while len(ranks) < len(peaks):
            ranks.append([])
        for rank, value in enumerate(peaks):
            if isinstance(value, (int, float)):
                ranks[rank].append((float(record["step"]), float(value) / 2**30))
    return ranks


def task_charts(records: list[dict[str, Any]], task: str) -> list[Chart]:
    """A preference or reward run's own charts (`records` as `charts` passes them); none for SFT."""
    def train_and_eval(key: str, color: str = COLORS[0], eval_color: str = COLORS[1]) -> tuple[Line, ...]:
        raw = series(records, key, training=True)
        return (Line("train (raw)", raw, color, faint=True),
                Line(f"train (smoothed over {SMOOTHING_STEPS} steps)", smoothed(raw), color),
                Line("eval", series(records, m.EVAL_PREFIX + key, training=False), eval_color, markers=True))

    def kl() -> list[Chart]:
        per = "per token" if task == "grpo" else "per completion"
        points = series(records, m.KL, training=True)
        return [Chart("kl", f"KL to the reference ({per})", "nats", (
            Line("train", points, COLORS[3]),
            Line("eval", series(records, m.EVAL_PREFIX + m.KL, training=False), COLORS[1], markers=True),
        ))] if points else []

    if task in ("dpo", "orpo", "kto"):
        how = "per token" if task == "orpo" else "summed over each answer"
        out = [Chart("reward_accuracy", "Reward accuracy (pairs ranked right)", "",
                     train_and_eval(m.REWARD_ACCURACY), y_range=(0.0, 1.0))] if task != "kto" else []
        return out + [
            Chart("reward_margin", "Reward margin (chosen minus rejected)", "", train_and_eval(m.REWARD_MARGIN)),
            Chart("rewards", "Rewards: chosen and rejected", "", (
                Line("chosen", series(records, m.REWARD_CHOSEN, training=True), COLORS[2]),
                Line("rejected", series(records, m.REWARD_REJECTED, training=True), COLORS[1]),
                Line("eval chosen", series(records, m.EVAL_PREFIX + m.REWARD_CHOSEN, training=False), COLORS[2],
                     faint=True, markers=True),
                Line("eval rejected", series(records, m.EVAL_PREFIX + m.REWARD_REJECTED, training=False), COLORS[1],
                     faint=True, markers=True),
            )),
            Chart("logps", f"Log-probs: chosen and rejected ({how})", "nats", (
                Line("chosen", series(records, m.LOGPS_CHOSEN, training=True), COLORS[2]),
                Line("rejected", series(records, m.LOGPS_REJECTED, training=True), COLORS[1]),
            )),
            *kl(),
        ]
    if task == "grpo":
        reward = series(records, m.REWARD, training=True)
        spread = dict(series(records, m.REWARD_STD, training=True))
        return [
            Chart("reward", "Reward (mean ± std over the completions)", "", (
                Line("mean", reward, COLORS[0]),
                Line("mean + std", [(x, y + spread[x]) for x, y in reward if x in spread], COLORS[0], faint=True),
                Line("mean - std", [(x, y - spread[x]) for x, y in reward if x in spread], COLORS[0], faint=True),
                Line("eval mean", series(records, m.EVAL_PREFIX + m.REWARD, training=False), COLORS[1], markers=True),
            )),
            Chart("completion_length", "Completion length", "tokens", (
                Line("mean", series(records, m.COMPLETION_LENGTH, training=True), COLORS[2]),
                Line("max", series(records, "completions/max_length", training=True), COLORS[2], faint=True),
                Line("min", series(records, "completions/min_length", training=True), COLORS[2], faint=True),
            )),
            Chart("same_score_groups", "Groups whose completions all scored alike (no signal)", "", (
                Line("share of groups", series(records, m.ZERO_STD, training=True), COLORS[4]),
                Line("completions cut at max_completion_length", series(records, m.COMPLETION_CLIPPED, training=True),
                     COLORS[5]),
            ), y_range=(0.0, 1.0)),
            *kl(),
        ]
    return []


def charts(records: list[dict[str, Any]], memory_kind: str = "rss", task: str = "sft") -> list[Chart]:
    records = current_records(records)
    train = series(records, "loss", training=True)
    evals = series(records, "eval_loss", training=False)
    memory = memory_per_rank(records)
    kind = "GPU allocated" if memory_kind == "cuda" else "host RSS"
    accuracy = (
        Line("train", series(records, ACCURACY, training=True), COLORS[0]),
        Line("eval", series(records, EVAL_ACCURACY, training=False), COLORS[1], markers=True),
    )
    # Only DPO logs a next-token accuracy beside SFT (of its chosen answers); the other tasks none.
    next_token = [] if task != "sft" and not any(line.points for line in accuracy) else [
        Chart("accuracy", "Next-token accuracy" + ("" if task == "sft" else " (chosen answers)"), "", accuracy,
              y_range=(0.0, 1.0))]
    return [
        Chart("loss", "Loss" + (" (GRPO's surrogate: its value is no measure of progress)" if task == "grpo" else ""),
              "", (
            Line("train (raw)", train, COLORS[0], faint=True),
            Line(f"train (smoothed over {SMOOTHING_STEPS} steps)", smoothed(train), COLORS[0]),
            Line("eval (raw)", evals, COLORS[1], faint=True, markers=True),
            Line(f"eval (smoothed over {SMOOTHING_STEPS} steps)", smoothed(evals), COLORS[1], markers=True),
        )),
        *task_charts(records, task),
        *next_token,
        Chart("learning_rate", "Learning rate", "", (
            Line("learning rate", series(records, "learning_rate", training=True), COLORS[2]),)),
        Chart("grad_norm", "Gradient norm", "", (
            Line("grad norm", series(records, "grad_norm", training=True), COLORS[3]),)),
        Chart("tokens_per_second", "Throughput", "tokens/s", (
            Line("tokens/s (all ranks)", tokens_per_second(records), COLORS[4]),)),
        Chart("memory", f"Peak memory per rank ({kind})", "GiB", tuple(
            Line(f"rank {rank}", points, COLORS[rank % len(COLORS)]) for rank, points in enumerate(memory))),
    ]


# ----------------------------------------------------------------------------- SVG

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 12, 32


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def svg_chart(chart: Chart) -> str:
    points = [p for line in chart.lines for p in line.points]
    if not points:
        return (f'<svg class="chart" data-chart="{chart.key}" viewBox="0 0 {WIDTH} 60" role="img">'
                f'<text x="{WIDTH / 2}" y="34" text-anchor="middle" class="none">nothing logged yet</text></svg>')
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = chart.y_range or (min(ys), max(ys))
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 1, x1 + 1
    if y1 - y0 < 1e-12:
        pad = abs(y0) * 0.05 or 0.5
        y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - x0) / (x1 - x0) * plot_w, 2)

    def py(y: float) -> float:
        return round(TOP + (y1 - y) / (y1 - y0) * plot_h, 2)

    parts = [f'<svg class="chart" data-chart="{chart.key}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{html.escape(chart.title)}">']
    for i in range(5):  # horizontal grid with value labels
        value = y0 + (y1 - y0) * i / 4
        y = py(value)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{_tick(value)}</text>')
    for step in sorted({round(x0 + (x1 - x0) * i / 4) for i in range(5)}):  # whole steps, where they are
        if x0 <= step <= x1:
            parts.append(f'<text class="tick" x="{px(step)}" y="{HEIGHT - 12}" text-anchor="middle">{step}</text>')
    parts.append(f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 1}" text-anchor="end">step</text>')
    for line in chart.lines:
        coords = " ".join(f"{px(x)},{py(y)}" for x, y in line.points)
        opacity = "0.35" if line.faint else "1"
        parts.append(f'<polyline data-series="{html.escape(line.name)}" data-points="{len(line.points)}" '
                     f'points="{coords}" fill="none" stroke="{line.color}" stroke-opacity="{opacity}" '
                     f'stroke-width="{1 if line.faint else 2}"/>')
        if line.markers or len(line.points) == 1:
            for x, y in line.points:
                parts.append(f'<circle cx="{px(x)}" cy="{py(y)}" r="3" fill="{line.color}" '
                             f'fill-opacity="{opacity}"/>')
    parts.append("</svg>")
    return "".join(parts)


def legend(chart: Chart) -> str:
    items = []
    for line in chart.lines:
        last = f" · last {_tick(line.points[-1][1])}" if line.points else " · none"
        style = "opacity:.5" if line.faint else ""
        items.append(f'<span class="key" style="{style}"><i style="background:{line.color}"></i>'
                     f'{html.escape(line.name)}{last}</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


# ----------------------------------------------------------------------------- page

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
main{max-width:1400px;margin:0 auto;padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:24px 0 8px}
.state{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}
.finished,.done{background:#2e7d32}.running{background:#0277bd}.stopped{background:#b7791f}
.failed,.diverged{background:#c62828}.exported,.empty{background:#607d8b}
.grid2{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px}
figcaption{font-weight:600;margin-bottom:4px}
svg.chart{width:100%;height:auto;display:block}
line.grid{stroke:#e4e7eb}text.tick{font-size:11px;fill:#5f6b7a}text.none{font-size:13px;fill:#8a94a3}
.legend{font-size:12px;color:#3d4752}.key{margin-right:14px;white-space:nowrap}
.key i{display:inline-block;width:12px;height:3px;margin:0 5px 3px 0;vertical-align:middle}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e6}
td,th{padding:4px 10px;border-bottom:1px solid #eef0f3;text-align:left;vertical-align:top}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.finding{background:#fff;border-left:4px solid #b7791f;padding:6px 10px;margin:6px 0}
.finding.stop{border-color:#c62828}.muted{color:#5f6b7a}pre{white-space:pre-wrap;margin:0}
"""


def _text(text: str) -> str:
    return html.escape(printable(text))


def _table(rows: Sequence[tuple[str, str]], numeric: bool = False) -> str:
    body = "".join(f'<tr><th>{html.escape(k)}</th><td class="{"num" if numeric else ""}">{html.escape(v)}</td></tr>'
                   for k, v in rows)
    return f"<table>{body}</table>"


def _plan_section(run_dir: Path) -> str:
    from llmwizard.autotune.plan import Plan

    try:
        plan = Plan.load(run_dir / "plan.yaml")
    except UserError as exc:
        return f'<p class="muted">plan.yaml could not be read: {html.escape(exc.message)}</p>'
    settings = [
        ("model", plan.model), ("dataset", f"{plan.dataset} ({plan.dataset_format})"), ("hardware", plan.hardware),
        ("strategy", f"{plan.strategy}, offload {plan.offload}, {plan.num_processes} process(es) on "
                     f"{plan.num_machines} machine(s), {plan.launcher}"),
        ("method", plan.method + (f" (r {plan.lora.r}, alpha {plan.lora.alpha})" if plan.lora else "")),
        ("precision", plan.precision), ("optimizer", plan.optimizer),
        ("batch", f"micro-batch {plan.micro_batch} x {plan.grad_accum} accumulation x {plan.num_processes} = "
                  f"{plan.effective_batch}"),
        ("max length", str(plan.max_length)), ("learning rate", f"{plan.learning_rate:g} ({plan.lr_scheduler})"),
        ("steps", f"{plan.max_steps if plan.max_steps > 0 else '-'} (epochs {plan.epochs:g}); eval every "
                  f"{plan.eval_steps}, save every {plan.save_steps}"),
        ("trackers", ", ".join(plan.report_to) or "none (metrics.jsonl)"),
        ("trainable", f"{plan.trainable_params:,} of {plan.total_params:,} parameters"),
    ]
    if plan.task != "sft" and plan.task_settings is not None:
        task = plan.task_settings
        extra = [f"beta {task.beta:g}", f"reference {task.reference}"]
        if task.num_generations:
            extra.append(f"{task.num_generations} generations per prompt")
        if task.max_completion_length:
            extra.append(f"completions up to {task.max_completion_length} tokens")
        if task.temperature:
            extra.append(f"temperature {task.temperature:g}")
        if task.rewards:
            extra.append("rewards " + ", ".join(task.rewards))
        settings.insert(0, ("task", f"{plan.task}: " + ", ".join(extra)))
    reasons = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in plan.reasons.items())
    estimate = plan.estimate.to_dict()
    per_gpu = estimate.get("per_gpu") or {}
    where = "per GPU" if plan.device == "cuda" else "in host memory"
    memory_rows = [(k, format_bytes(int(v))) for k, v in per_gpu.items() if isinstance(v, (int, float))]
    budget = estimate.get("budget")
    if isinstance(budget, (int, float)):
        memory_rows.append(("budget", format_bytes(int(budget)) + (" (fits)" if estimate.get("fits") else " (over)")))
    if estimate.get("peak_at"):
        memory_rows.append(("peak during", str(estimate["peak_at"])))
    notes = "".join(f"<li>{html.escape(str(n))}</li>" for n in estimate.get("notes") or [])
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in plan.warnings)
    return (f"<h2>Plan</h2>{_table(settings)}"
            f"<h2>Why</h2><table>{reasons}</table>"
            + (f"<h3>Warnings</h3><ul>{warnings}</ul>" if warnings else "")
            + f"<h2>Memory estimate ({where})</h2>{_table(memory_rows, numeric=True)}"
            + (f"<ul class='muted'>{notes}</ul>" if notes else ""))


def render(run_dir: Path, status: rundir.RunStatus | None = None) -> str:
    """The page for the run in `run_dir`, from its files; `status` when the caller knows better
    than the files (the session that runs it)."""
    state = RunState.read(run_dir / METRICS_FILE)
    state.planned_task = plan_task(run_dir)
    records = state.records
    status = status or rundir.run_status(run_dir)
    problems = run_problems(run_dir, state)
    problems_html = ("<h2>Damaged files</h2><ul>" + "".join(f"<li>{_text(p)}</li>" for p in problems) + "</ul>"
                     if problems else "")
    best = state.best_eval()
    numbers = [
        *([("task", state.task + (f", beta {state.beta:g}" if state.beta is not None else ""))]
          if state.task != "sft" else []),
        ("steps", f"{state.step}/{state.max_steps or '?'}" + (f" (epoch {state.epoch:.2f})" if state.epoch else "")),
        ("train loss", f"{state.first_loss:.4f} -> {state.last_loss:.4f}" if state.losses else "-"),
        ("eval loss", f"{state.eval_losses[-1][1]:.4f} (best {best[1]:.4f} at step {best[0]})"
         if state.eval_losses and best else "-"),
        *([] if state.task != "sft" and state.last_accuracy is None else [(
            "next-token accuracy" + ("" if state.task == "sft" else " (chosen answers)"),
            " · ".join(f"{label} {value:.1%}" for label, value in
                       (("train", state.last_accuracy), ("eval", state.last_eval_accuracy)) if value is not None) or "-")]),
        *task_rows(state),
        ("throughput", f"{state.average_tokens_per_second():,.0f} tokens/s" if state.average_tokens_per_second() else "-"),
        ("wall time", format_seconds(state.elapsed) if state.began else "-"),
        ("attempts", str(state.attempts)),
    ]
    ended = status.state in ("finished", "stopped", "diverged", "failed")
    findings = state.findings(final=status.state == "finished")
    finding_html = "".join(
        f'<div class="finding {"stop" if f.severity == diagnostics.STOP else ""}"><b>{html.escape(f.title)}</b> '
        f'(step {f.step}): {html.escape(f.message)}<br><b>Fix:</b> {html.escape(f.fix)}</div>' for f in findings
    ) or '<p class="muted">No findings' + ("." if ended else " so far.") + "</p>"
    story = [html.escape(line) for line in recovery.read_recoveries(run_dir)]
    if state.stop:
        reason = state.stop.get("reason")
        detail = {"signal": f"stopped by {state.stop.get('signal', 'a signal')} at step {state.stop.get('step')}; "
                            f"checkpoint {state.stop.get('checkpoint', '-')}",
                  "diverged": f"stopped at step {state.stop.get('step')}: training diverged; last good checkpoint "
                              f"{state.stop.get('good_checkpoint') or 'none'}",
                  "disk_full": f"stopped at step {state.stop.get('step')}: disk full; last complete checkpoint "
                               f"{state.stop.get('good_checkpoint') or 'none'}"}.get(str(reason), str(reason))
        story.append(html.escape(detail))
    if state.attempts > 1:
        story.append(f"{state.attempts} attempts; each resumed from the last complete checkpoint")
    story_html = "<ul>" + "".join(f"<li>{line}</li>" for line in story) + "</ul>" if story else \
        '<p class="muted">Nothing to recover from.</p>'
    samples = read_samples(run_dir)
    samples_html = ("<table><tr><th>prompt</th><th>reference</th><th>output</th></tr>" + "".join(
        f"<tr><td><pre>{_text(s['prompt'])}</pre></td><td><pre>{_text(s['reference'])}</pre></td>"
        f"<td><pre>{_text(s['output'])}</pre></td></tr>" for s in samples) + "</table>") if samples else \
        '<p class="muted">None yet: written at the end of a run that has held-out rows.</p>'
    figures = "".join(f'<figure><figcaption>{html.escape(c.title)}{" (" + c.unit + ")" if c.unit else ""}'
                      f"</figcaption>{svg_chart(c)}{legend(c)}</figure>"
                      for c in charts(records, state.memory_kind, state.task))
    when = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(run_dir.name)}: llmwizard report</title><style>{CSS}</style></head><body><main>"
        f"<h1>{html.escape(run_dir.name)} <span class='state {status.state}'>{status.state}</span></h1>"
        f"<p class='muted'>{html.escape(str(run_dir.resolve()))} · {html.escape(status.detail)} · written {when}</p>"
        f"{_table(numbers)}{problems_html}<h2>Curves</h2><div class='grid2'>{figures}</div>"
        f"<h2>Diagnostics</h2>{finding_html}<h2>Recovery</h2>{story_html}"
        f"<h2>Held-out samples</h2>{samples_html}{_plan_section(run_dir)}"
        "</main></body></html>\n"
    )


def write_report(run_dir: Path, status: rundir.RunStatus | None = None) -> Path:
    """Write report.html atomically (a browser reloading it never sees half a page); its path.

    A UserError names report.html and the fix when it cannot be written; nothing is left behind."""
    path = run_dir / REPORT_FILE
    page = render(run_dir, status)
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{path} is a directory, so the report cannot be written there; nothing was changed.",
                        title="Report", fix=f"Move it out of the way (mv {shlex.quote(str(path))} "
                                            f"{shlex.quote(str(path) + '.old')}), then write the report again.")
    temporary: str | None = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{REPORT_FILE}.", suffix=".tmp", dir=run_dir)
        with open(handle, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(temporary, 0o644)  # as a plain write would leave it (mkstemp makes it private)
        os.replace(temporary, path)
        temporary = None
    except OSError as exc:
        where = shlex.quote(str(run_dir))
        raise UserError(f"Cannot write {path} ({exc.strerror or type(exc).__name__}); nothing was changed.",
                        title="Report", fix=f"Make {run_dir} writable (chmod u+w {where}, or remount it read-write), "
                                            f"or copy the run elsewhere and report there (cp -r {where} NEW_DIR && "
                                            "llmwizard report NEW_DIR).") from None
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    return path
