"""The console view of a run session: loss you can watch while a run trains.

It renders the events of llmwizard.runner.session.engine.RunSession (llmwizard.runner.session.events) and nothing
else. In a terminal the view is a rich Live panel: progress and ETA, the current numbers, a plot
of the train and eval loss over the whole run, and the diagnostics (llmwizard.runner.diagnostics)
as they appear. A preference run (DPO, ORPO, KTO) adds its reward accuracy and margin with a
sparkline of each, the chosen and rejected rewards and log-probs, and KTO's KL; a GRPO run its
reward (mean +- spread) and completion length with sparklines, the share of groups that scored
alike, and the KL when beta > 0, and its plot shows the reward instead of the loss. Elsewhere
(CI, pipes, log files) it prints one plain line per logged step, one per evaluation, and each
diagnostic once. The panel fits 80 columns and uses the room of wider terminals for the plot. The run's summary is printed by llmwizard.runner.session.session.print_summary.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from llmwizard.runner import diagnostics
from llmwizard.runner.session import events
from llmwizard.runner import metrics as m
from llmwizard.runner.after.plot import BAND_STYLE, EVAL_STYLE, SPARK_STYLE, TRAIN_STYLE, loss_plot, sparkline
from llmwizard.runner.state import RunState
from llmwizard.runner.after.summary import format_bytes, format_seconds, logp_text, memory_text

# ----------------------------------------------------------------------------- the panel

_MEASURE = Console(file=io.StringIO(), width=1000)   # wraps text to count its rows; never prints

def _pairs(*pairs: tuple[str, str | None], style: str = "bold") -> Text:
    text = Text()
    for label, value in pairs:
        if value is None:
            continue
        if text.plain:
            text.append("   ")
        text.append(f"{label} ", style="dim")
        text.append(value, style=style)
    return text


def memory_line(state: RunState) -> Text | None:
    memory = memory_text(state)
    return None if memory is None else _pairs(("peak memory", memory))


def accuracy_line(state: RunState) -> Text | None:
    """Next-token accuracy (TRL's mean_token_accuracy), train and eval; None before any."""
    if state.last_accuracy is None and state.last_eval_accuracy is None:
        return None
    return _pairs(
        ("acc", f"{state.last_accuracy:.1%}" if state.last_accuracy is not None else None),
        ("eval acc", f"{state.last_eval_accuracy:.1%}" if state.last_eval_accuracy is not None else None),
    )


def numbers(state: RunState, ascii_only: bool = False) -> list[Text]:
    smoothed = state.smoothed_loss()
    best = state.best_eval()
    loss = _pairs(
        ("loss", f"{state.last_loss:.4f}" if state.last_loss is not None else "-"),
        ("smoothed", f"{smoothed:.4f}" if smoothed is not None else None),
        ("eval", f"{state.eval_losses[-1][1]:.4f}" if state.eval_losses else None),
        ("best eval", f"{best[1]:.4f} @ step {best[0]}" if best and len(state.eval_losses) > 1
         and state.task != "grpo" else None),   # GRPO's lowest surrogate loss is no best
    )
    # A preference run's next-token accuracy (DPO logs it for the chosen answers) would read as its
    # reward accuracy: the task's lines say what it is judged by instead.
    accuracy = accuracy_line(state) if state.task == "sft" else None
    if accuracy is not None:
        loss = Text.assemble(loss, "   ", accuracy) if loss.plain else accuracy
    rates = _pairs(
        ("lr", f"{state.learning_rate:.2e}" if state.learning_rate is not None else None),
        ("grad norm", f"{state.grad_norm:.3f}" if state.grad_norm is not None else None),
        ("tokens/s", f"{state.tokens_per_second:,.0f}" if state.tokens_per_second else None),
    )
    memory = memory_line(state)
    return [line for line in (loss, *task_lines(state, ascii_only), rates, memory) if line is not None and line.plain]


# ----------------------------------------------------------------------------- preference and reward runs

def _number(value: float | None, signed: bool = False, digits: int = 3) -> str | None:
    """A reward or margin in a few characters, signed where its sign is the news."""
    if value is None:
        return None
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _with_sparks(*items: tuple[str, str | None, list[tuple[int, float]] | None], ascii_only: bool = False) -> Text:
    """`label value` pairs as `_pairs` writes them, each followed by the sparkline of its series."""
    text = Text()
    for label, value, series in items:
        if value is None:
            continue
        if text.plain:
            text.append("   ")
        text.append(f"{label} ", style="dim")
        text.append(value, style="bold")
        spark = sparkline([v for _, v in series], ascii_only=ascii_only) if series and len(series) > 1 else ""
        if spark:
            text.append(" ")
            text.append(spark, style=SPARK_STYLE)
    return text


def task_lines(state: RunState, ascii_only: bool = False) -> list[Text]:
    """A preference or reward run's own numbers, two lines; none for SFT."""
    if state.task in ("dpo", "orpo", "kto"):
        return preference_lines(state, ascii_only)
    if state.task == "grpo":
        return reward_lines(state, ascii_only)
    return []


def preference_lines(state: RunState, ascii_only: bool = False) -> list[Text]:
    """DPO, ORPO, KTO: reward accuracy and margin with their sparklines (KTO: its KL, no accuracy),
    the latest evaluation's; the chosen and rejected rewards and log-probs."""
    accuracy, margin = state.series(m.REWARD_ACCURACY), state.series(m.REWARD_MARGIN)
    eval_accuracy, eval_margin = state.last(m.EVAL_PREFIX + m.REWARD_ACCURACY), state.last(m.EVAL_PREFIX + m.REWARD_MARGIN)
    kl = state.last(m.KL)
    first = _with_sparks(
        ("reward acc", f"{accuracy[-1][1]:.1%}" if accuracy else None, accuracy),
        ("margin", _number(margin[-1][1] if margin else None, signed=True), margin),
        ("kl", f"{kl:.3g}" if kl is not None else None, None),
        ("eval acc", f"{eval_accuracy:.1%}" if eval_accuracy is not None else None, None),
        ("eval margin", _number(eval_margin, signed=True) if eval_accuracy is None else None, None),
        ascii_only=ascii_only)
    second = _pairs(
        ("reward chosen", _number(state.last(m.REWARD_CHOSEN), signed=True, digits=2)),
        ("rejected", _number(state.last(m.REWARD_REJECTED), signed=True, digits=2)),
        ("logp chosen", logp_text(state.last(m.LOGPS_CHOSEN))),
        ("rejected", logp_text(state.last(m.LOGPS_REJECTED))),
    )
    return [line for line in (first, second) if line.plain]


def reward_lines(state: RunState, ascii_only: bool = False) -> list[Text]:
    """GRPO: the reward's mean +- spread and the completions' mean length with their sparklines,
    the KL (beta > 0); the share of groups whose completions scored alike, of completions cut at
    max_completion_length, and the latest evaluation's reward."""
    reward, spread, length = state.series(m.REWARD), state.last(m.REWARD_STD), state.series(m.COMPLETION_LENGTH)
    kl = state.last(m.KL)
    first = _with_sparks(
        ("reward", f"{reward[-1][1]:.3f}" + (f" ± {spread:.3f}" if spread is not None else "") if reward else None,
         reward),
        ("length", f"{length[-1][1]:.0f} tokens" if length else None, length),
        ("kl", f"{kl:.3g}" if kl is not None else None, None),
        ascii_only=ascii_only)
    alike, clipped = state.last(m.ZERO_STD), state.last(m.COMPLETION_CLIPPED)
    eval_reward, eval_spread = state.last(m.EVAL_PREFIX + m.REWARD), state.last(m.EVAL_PREFIX + m.REWARD_STD)
    second = _pairs(
        ("same-score groups", f"{alike:.0%}" if alike is not None else None),
        ("cut at max length", f"{clipped:.0%}" if clipped is not None else None),
        ("eval reward", f"{eval_reward:.3f}" + (f" ± {eval_spread:.3f}" if eval_spread is not None else "")
         if eval_reward is not None else None),
    )
    return [line for line in (first, second) if line.plain]


def reward_band(state: RunState) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """GRPO's reward mean minus and plus its spread, at the steps both were logged."""
    spread = dict(state.series(m.REWARD_STD))
    pairs = [(step, mean, spread[step]) for step, mean in state.series(m.REWARD) if step in spread]
    return [(s, mean - sd) for s, mean, sd in pairs], [(s, mean + sd) for s, mean, sd in pairs]


def task_plain_fields(state: RunState) -> list[str]:
    """The task's numbers for the plain line (`key value`, keys without spaces); none for SFT."""
    named: tuple[tuple[str, str, str], ...]
    if state.task == "grpo":
        named = (("reward", m.REWARD, "{:.3f}"), ("reward_std", m.REWARD_STD, "{:.3f}"),
                 ("completion_len", m.COMPLETION_LENGTH, "{:.0f}"), ("same_score_groups", m.ZERO_STD, "{:.0%}"),
                 ("kl", m.KL, "{:.4g}"))
    elif state.task in ("dpo", "orpo", "kto"):
        named = (("reward_acc", m.REWARD_ACCURACY, "{:.1%}"), ("margin", m.REWARD_MARGIN, "{:+.3f}"),
                 ("chosen", m.REWARD_CHOSEN, "{:+.3f}"), ("rejected", m.REWARD_REJECTED, "{:+.3f}"),
                 ("logp_chosen", m.LOGPS_CHOSEN, "{}"), ("logp_rejected", m.LOGPS_REJECTED, "{}"),
                 ("kl", m.KL, "{:.4g}"))
    else:
        return []
    return [f"{name} {form.format(logp_text(value) if key in (m.LOGPS_CHOSEN, m.LOGPS_REJECTED) else value)}"
            for name, key, form in named if (value := state.last(key)) is not None]


def progress_lines(state: RunState, width: int) -> list[RenderableType]:
    total = max(1, state.max_steps)
    percent = f"{min(state.step, total) / total:4.0%}"
    counter = f"step {state.step}/{state.max_steps or '?'}"
    bar_width = max(10, width - len(percent) - len(counter) - 4)
    row = Table.grid(padding=(0, 1))
    row.add_row(ProgressBar(total=total, completed=min(state.step, total), width=bar_width),
                Text(percent, style="bold"), Text(counter))
    epochs = state.total_epochs()
    rate = state.steps_per_second()
    timing = _pairs(
        ("epoch", f"{state.epoch:.2f}" + (f" of {epochs:.2f}" if epochs else "")),
        ("elapsed", format_seconds(state.elapsed)),
        ("eta", format_seconds(state.eta())),
        ("steps/s", f"{rate:.2f}" if rate else None),
        ("resumed at step", str(state.start_step) if state.start_step else None),
        style="",
    )
    return [row, timing]


def finding_lines(findings: list[diagnostics.Finding], width: int, limit: int = 3, rows: int = 2) -> list[Text]:
    """The first `limit` findings, each cut to about `rows` lines (one: exactly one row)."""
    out = []
    for finding in findings[:limit]:
        mark, style = ("✖", "bold red") if finding.severity == diagnostics.STOP else ("⚠", "bold yellow")
        text = Text(f"{mark} {finding.title}: ", style=style)
        text.append(finding.message)
        text.truncate(max(20, rows * width - 2), overflow="ellipsis")
        out.append(text)
    return out


def fitted_findings(findings: list[diagnostics.Finding], width: int, room: int) -> tuple[list[Text], int]:
    """The findings' lines for a panel with `room` rows for them and the plot (which needs 3), and
    the rows they take (as they wrap at word boundaries): up to three of about two lines each; when
    that leaves the plot too little, one row each, then fewer findings."""
    lines: list[Text] = []
    rows = 0
    for limit, each in ((3, 2), (3, 1), (2, 1), (1, 1)):
        lines = finding_lines(findings, width, limit, each)
        rows = sum(len(line.wrap(_MEASURE, width)) for line in lines)
        if room - rows >= 3:
            break
    return lines, rows


def render(state: RunState, title: str, width: int = 100, height: int = 30, status: str = "running",
           ascii_only: bool = False) -> RenderableType:
    inner = max(20, width - 4)
    parts: list[RenderableType] = [*progress_lines(state, inner), Text(""), *numbers(state, ascii_only)]
    # A preference or reward run's own lines (each as many rows as it wraps to) come out of the plot.
    task_rows = sum(len(line.wrap(_MEASURE, inner)) for line in task_lines(state))
    # Rows other than the plot: borders 2, progress 2, blank 1, numbers 3, blank 1, axis 2,
    # legend 1, findings; keep one row spare for the cursor line below the panel.
    findings, finding_rows = fitted_findings(state.findings(final=state.ended), inner, height - 13 - 1 - task_rows)
    plot_height = max(3, min(16, height - 13 - finding_rows - 1 - task_rows))
    rewards = state.task == "grpo" and bool(state.series(m.REWARD))
    if rewards:  # GRPO's loss is a surrogate whose value says nothing of progress: its reward does
        plot = loss_plot(state.series(m.REWARD), state.series(m.EVAL_PREFIX + m.REWARD), state.max_steps, inner,
                         plot_height, ascii_only, band=reward_band(state))
    else:
        plot = loss_plot(state.losses, state.eval_losses, state.max_steps, inner, plot_height, ascii_only)
    if plot:
        parts.append(Text(""))
        parts.extend(plot)
        legend = Text(" " * 2)
        legend.append("━ reward (mean)" if rewards else "━ train loss", style=TRAIN_STYLE)
        if rewards and state.series(m.REWARD_STD):
            legend.append("   ")
            legend.append("━ ± its spread (std)", style=BAND_STYLE)
        if state.series(m.EVAL_PREFIX + m.REWARD) if rewards else state.eval_losses:
            legend.append("   ")
            legend.append("━ eval reward" if rewards else "━ eval loss", style=EVAL_STYLE)
        parts.append(legend)
    elif not state.began:
        parts.append(Text("waiting for the first step (loading the model and data) ...", style="dim"))
    parts.extend(findings)
    border = {"running": "blue", "done": "green", "stopping": "yellow", "stopped": "yellow"}.get(status, "red")
    return Panel(Group(*parts), title=f"[bold]{title}[/]", subtitle=status, border_style=border, width=width)


# ----------------------------------------------------------------------------- plain lines

def plain_line(state: RunState) -> str:
    """One line per logged step, `key value` pairs, for logs and CI."""
    fields = [f"step {state.step}/{state.max_steps}", f"epoch {state.epoch:.2f}"]
    if state.last_loss is not None:
        fields.append(f"loss {state.last_loss:.4f}")
    smoothed = state.smoothed_loss()
    if smoothed is not None:
        fields.append(f"smoothed {smoothed:.4f}")
    if state.last_accuracy is not None and state.task == "sft":
        fields.append(f"acc {state.last_accuracy:.1%}")
    fields += task_plain_fields(state)
    if state.learning_rate is not None:
        fields.append(f"lr {state.learning_rate:.2e}")
    if state.grad_norm is not None:
        fields.append(f"grad_norm {state.grad_norm:.3f}")
    if state.tokens_per_second:
        fields.append(f"tok/s {state.tokens_per_second:.0f}")
    if state.peak_memory:
        fields.append(f"peak_mem {format_bytes(max(state.rank_peaks or [state.peak_memory])).replace(' ', '')}")
    fields.append(f"elapsed {format_seconds(state.elapsed)}")
    fields.append(f"eta {format_seconds(state.eta())}")
    return "  ".join(fields)


def plain_eval_line(state: RunState) -> str:
    step, value = state.eval_losses[-1]
    best = state.best_eval()
    line = f"step {step}/{state.max_steps}  eval_loss {value:.4f}"
    if state.eval_accuracies and state.eval_accuracies[-1][0] == step and state.task == "sft":
        line += f"  eval_acc {state.eval_accuracies[-1][1]:.1%}"
    for name, key, form in (("eval_reward_acc", m.REWARD_ACCURACY, "{:.1%}"), ("eval_margin", m.REWARD_MARGIN, "{:+.3f}"),
                            ("eval_reward", m.REWARD, "{:.3f}"), ("eval_reward_std", m.REWARD_STD, "{:.3f}")):
        series = state.series(m.EVAL_PREFIX + key)
        if series and series[-1][0] == step and state.task != "sft":
            line += f"  {name} {form.format(series[-1][1])}"
    return line + (f"  best {best[1]:.4f} (step {best[0]})" if best and state.task != "grpo" else "")


def stop_reason_text(record: dict[str, Any]) -> str:
    """Why a run stops, from its `stop` record (llmwizard.runner.metrics), in a few words."""
    reason = record.get("reason")
    if reason == "signal":
        return f"signal {record.get('signal')}"
    if reason == "disk_full":
        skipped = str(record.get("skipped_checkpoint") or "the checkpoint").rsplit("/", 1)[-1]
        kept = record.get("good_checkpoint")
        return f"disk full: {skipped} skipped, " + (f"{kept} kept" if kept else "no checkpoint saved before")
    return str(reason)


class PlainPrinter:
    """Prints new records as lines; each diagnostic once."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.reported: set[str] = set()

    def record(self, state: RunState, record: dict[str, Any], is_loss: bool) -> None:
        kind = record.get("type")
        if kind == "begin":
            start = f", resuming at step {state.start_step}" if state.start_step else ""
            self.say(f"training: {state.max_steps} steps, {state.world_size} process(es){start}")
        elif is_loss:
            self.say(plain_line(state))
        if kind == "log" and "eval_loss" in record:
            self.say(plain_eval_line(state))
        if kind == "stop":
            self.say(f"stopping at step {record.get('step')} ({stop_reason_text(record)})")

    def finding(self, finding: diagnostics.Finding) -> None:
        if finding.code not in self.reported:
            self.reported.add(finding.code)
            self.say(f"{finding.severity}: {finding.title}: {finding.message} Fix: {finding.fix}")

    def findings(self, state: RunState, final: bool, now: bool = False) -> None:
        for finding in state.findings(final=final, now=now):
            self.finding(finding)

    def say(self, line: str) -> None:
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)


# ----------------------------------------------------------------------------- the probe

def probe_line(event: events.Probe) -> str:
    """One round of the probe in a line: verdict, worst rank's peak against the estimate, speed."""
    parts = [f"probe {event.round}: {event.verdict}"]
    if event.measured:
        parts.append(f"peak {format_bytes(event.measured)} (rank {event.worst_rank}, {event.memory_kind}) vs "
                     f"expected {format_bytes(event.expected)}")
    if event.step_s:
        parts.append(f"{event.step_s:.2f} s/step")
    if event.speed_ratio:
        parts.append(f"x{event.speed_ratio:.2f} the predicted tokens/s")
    if event.eta_s:
        parts.append(f"eta {format_seconds(event.eta_s)}")
    return " | ".join(parts) + f": {event.message}"


def _setup_text(facts: dict[str, Any]) -> str:
    """"single 16x1": strategy, micro-batch x accumulation, then "+ckpt", "+optimizer offload"."""
    text = f"{facts.get('strategy')} {facts.get('micro_batch')}x{facts.get('grad_accum')}"
    if facts.get("checkpointing"):
        text += " +ckpt"
    if facts.get("offload", "none") != "none":
        text += f" +{facts.get('offload')} offload"
    return text


def probe_table(rounds: list[events.Probe]) -> Table:
    """The probe's story: per round the estimate before, what was measured, and the plan after."""
    table = Table(title="probe: a few real steps on the longest rows before the run", title_justify="left",
                  header_style="bold", box=None, padding=(0, 2))
    for name in ("round", "probed", "expected", "measured", "s/step", "verdict", "after"):
        table.add_column(name, overflow="fold", no_wrap=name != "measured")
    for event in rounds:
        measured = ("out of memory" if event.verdict in ("shrink", "checkpointing", "next_tier", "give_up")
                    and not event.measured else format_bytes(event.measured) if event.measured else "-")
        if event.measured and event.expected:
            measured += f" (x{event.measured / event.expected:.2f})"
        changed = event.after != event.before
        table.add_row(str(event.round), _setup_text(event.before), format_bytes(event.expected), measured,
                      f"{event.step_s:.2f}" if event.step_s else "-",
                      Text(event.verdict, style="green" if event.verdict == "keep" else "yellow"),
                      _setup_text(event.after) if changed else "as probed")
    return table


# ----------------------------------------------------------------------------- the view

STOP_HINT = "\nStopping: every rank saves a checkpoint at the end of its step ... (Ctrl-C again to kill at once)"


class ConsoleView:
    """A RunSession's `on_event`: a Live panel for the whole session in a terminal (lines printed
    above it), plain lines elsewhere. `end` keeps the last event (its summary) once the run ended."""

    def __init__(self, console: Console, title: str, refresh_per_second: float = 4) -> None:
        self.console = console
        self.title = title
        self.refresh_per_second = refresh_per_second
        self.state = RunState()
        self.status = "running"
        self.end: events.Stopped | events.Finished | events.Failed | None = None
        self.printer = None if console.is_terminal else PlainPrinter(console)
        self._live: Any = None
        self.probes: list[events.Probe] = []

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Metrics):
            self.state = event.state
            if self.printer is not None:
                self.printer.record(event.state, event.record, event.is_loss)
        elif isinstance(event, events.Finding):
            if self.printer is not None:
                self.printer.finding(event.finding)
        elif isinstance(event, events.Started):
            self.say(f"Launching {event.plan}; log: {event.log_path}")
            self.status = "running"
            self.start()
        elif isinstance(event, events.Recovery):
            if event.kind == "oom_replan":
                self.console.print(Text(f"Out of GPU memory. {event.message}.", style="yellow"))
            else:
                self.say(event.message)
        elif isinstance(event, events.Probe):
            self.probes.append(event)
            self.say(probe_line(event))
            if event.final:
                self.console.print(probe_table(self.probes))
                if event.step_s:
                    self.state.probe_step_s = event.step_s
        elif isinstance(event, events.Stopping):
            self.status = "stopping"
            self.say("Killing the run (SIGKILL)." if event.force else STOP_HINT)
        elif isinstance(event, (events.Stopped, events.Finished, events.Failed)):
            self.end = event
            self.status = event.summary.status
            self.close()

    def say(self, line: str) -> None:
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def view(self) -> RenderableType:
        return render(self.state, self.title, self.console.width, self.console.height, self.status,
                      ascii_only=not self.console.encoding.lower().startswith("utf"))

    def start(self) -> None:
        """Show the Live panel (in a terminal); the first Started event does this for a session."""
        if self._live is not None or not self.console.is_terminal:
            return
        from rich.live import Live

        self._live = Live(console=self.console, refresh_per_second=self.refresh_per_second, transient=False,
                          vertical_overflow="crop", get_renderable=self.view)
        self._live.start()

    def close(self) -> None:
        """Draw the panel a last time and leave it on screen."""
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
