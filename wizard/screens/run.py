"""Step 7: the run as it trains: progress, live loss plot, metrics, diagnostics, stop, summary.

A thread worker tails `metrics.jsonl` (llmwizard.runner.metrics.MetricsTail), folds records into a
llmwizard.runner.live.RunState and posts snapshots; snapshots supersede each other, so a burst of records
costs one repaint. Stop sends SIGTERM to the run's process group (ranks save a checkpoint).
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Button, ProgressBar, Static
from textual.worker import get_current_worker

from llmwizard.wizard.messages import RunEnded, RunProgress
from llmwizard.wizard.screens.base import StepScreen
from llmwizard.wizard.widgets.loss_plot import LossPlot

if TYPE_CHECKING:
    from pathlib import Path

    from llmwizard.runner.launch import Launch
    from llmwizard.runner.state import RunState
    from llmwizard.wizard.core import Finding


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def metrics_text(state: RunState) -> Text:
    parts: list[tuple[str, str]] = []
    if state.last_loss is not None:
        parts.append((f"loss {state.last_loss:.4f}", "bold"))
    smoothed = state.smoothed_loss()
    if smoothed is not None:
        parts.append((f"smoothed {smoothed:.4f}", ""))
    if state.eval_losses:
        parts.append((f"eval {state.eval_losses[-1][1]:.4f}", "bold yellow"))
    if state.learning_rate is not None:
        parts.append((f"lr {state.learning_rate:.2e}", ""))
    if state.grad_norm is not None:
        parts.append((f"grad norm {state.grad_norm:.3f}", ""))
    if state.tokens_per_second:
        parts.append((f"{state.tokens_per_second:,.0f} tok/s", ""))
    if state.peak_memory:
        parts.append((f"peak {state.peak_memory / 2**20:,.0f} MiB/rank", ""))
    text = Text()
    for index, (part, style) in enumerate(parts):
        text.append(("   " if index else "") + part, style=style)
    return text


def findings_text(findings: list[Finding]) -> Text:
    if not findings:
        return Text("Diagnostics: nothing unusual so far.", style="dim")
    text = Text()
    for index, finding in enumerate(findings):
        style = "bold red" if finding.level == "stop" else "yellow"
        text.append(("\n" if index else "") + f"! {finding.message}", style=style)
        if finding.fix:
            text.append(f"  Fix: {finding.fix}", style="dim")
    return text


def summary_table(state: RunState, code: int, stopped: bool, run_dir: Path, output: Path,
                  log_tail: list[str]) -> Table:
    table = Table.grid(padding=(0, 2))
    title = ("stopped" if stopped else "done" if code == 0 else f"training failed (exit code {code})")
    table.add_row(Text(title, style="bold green" if code == 0 and not stopped else "bold red"), "")
    if state.first_loss is not None and state.last_loss is not None:
        table.add_row("loss", f"{state.first_loss:.4f} -> {state.last_loss:.4f}")
    if state.eval_losses:
        best_step, best = min(state.eval_losses, key=lambda item: item[1])
        table.add_row("eval loss", f"{state.eval_losses[-1][1]:.4f} (best {best:.4f} at step {best_step})")
    table.add_row("steps", f"{state.step}/{state.max_steps or '?'} in {clock(state.elapsed)}")
    table.add_row("run directory", str(run_dir))
    if code == 0 and not stopped:
        table.add_row("saved", str(output))
    elif stopped:
        table.add_row("continue", f"bash {run_dir}/launch.sh --resume")
    else:
        table.add_row("log", str(run_dir / "train.log"))
        for line in log_tail[-8:]:
            table.add_row("", Text(line, style="red"))
    return table


class RunScreen(StepScreen):
    STEP = 6
    NEXT_LABEL = "Stop"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "next", "Stop / Quit", show=False, priority=True),
        Binding("s", "stop", "Stop run"),
    ]

    ended = False                   # the watched run has exited
    quit_after_stop = False         # "Stop and quit" was chosen

    def body(self) -> ComposeResult:
        yield Static(id="run-title")
        yield ProgressBar(id="progress", show_eta=False)
        yield Static(id="run-metrics")
        yield LossPlot(id="loss")
        yield Static(id="diagnostics")
        yield Static(id="summary")

    def on_mount(self) -> None:
        super().on_mount()
        self.watching: Launch | None = None
        self.ended = False
        self.state_snapshot: RunState | None = None
        self.last_log: list[str] = []
        self.set_interval(1.0, self._tick)
        self.query_one("#next", Button).variant = "error"

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        launch = self.state.launch
        if launch is not None and launch is not self.watching:
            self.watching, self.ended = launch, False
            self.state_snapshot, self.last_log = None, []
            self.query_one("#summary", Static).display = False
            self.query_one(LossPlot).update_series([], [])
            self.query_one("#progress", ProgressBar).update(total=None, progress=0)
            button = self.query_one("#next", Button)
            button.label, button.variant, button.disabled = "Stop", "error", False
            self._tick()
            self.follow(launch)

    @work(thread=True, exclusive=True, exit_on_error=False, group="follow")
    def follow(self, launch: Launch) -> None:
        from llmwizard.wizard import core

        worker = get_current_worker()
        state = core.new_run_state()
        tail = core.metrics_tail(launch.run_dir)
        records: list[dict[str, Any]] = []
        last_post = 0.0
        while not worker.is_cancelled:
            running = launch.poll() is None
            new = tail.poll()
            for record in new:
                state.update(record)
            records.extend(new)
            if new or time.monotonic() - last_post > 1.0:
                self.post_message(RunProgress(copy.deepcopy(state), core.diagnose(records),
                                              launch.log_tail(3)))
                last_post = time.monotonic()
            if not running:
                break
            time.sleep(0.25)
        if worker.is_cancelled:
            return
        code = launch.wait()
        for record in tail.poll():
            state.update(record)
            records.append(record)
        self.post_message(RunEnded(code, state, launch.log_tail(30), self.state.stopped,
                                   core.diagnose(records, final=True)))

    @on(RunProgress)
    def progress(self, message: RunProgress) -> None:
        state = self.state_snapshot = message.state
        self.last_log = message.log_tail
        self.query_one("#progress", ProgressBar).update(total=state.max_steps or None, progress=state.step)
        self.query_one("#run-metrics", Static).update(metrics_text(state))
        self.query_one(LossPlot).update_series(state.losses, state.eval_losses, state.max_steps)
        self.query_one("#diagnostics", Static).update(findings_text(message.findings))
        self._tick()

    def _tick(self) -> None:
        launch, state = self.watching, self.state_snapshot
        if launch is None:
            return
        plan = self.state.exported_plan
        title = Text(f"{plan.name if plan else launch.run_dir.name}", style="bold")
        if self.ended:
            pass
        elif state is None or not state.began:
            line = self.last_log[-1] if self.last_log else ""
            title.append(f"   starting ({clock(time.monotonic() - launch.started)}): loading the model and data"
                         + (f" | {line[:80]}" if line else ""), style="dim")
        else:
            title.append(f"   step {state.step}/{state.max_steps or '?'}   epoch {state.epoch:.2f}   "
                         f"elapsed {clock(state.elapsed)}   eta {clock(state.eta())}")
        self.query_one("#run-title", Static).update(title)

    @on(RunEnded)
    def run_ended(self, message: RunEnded) -> None:
        from llmwizard.wizard import core

        self.ended = True
        state = self.state_snapshot = message.state
        self.query_one("#progress", ProgressBar).update(total=max(1, state.max_steps), progress=state.step)
        self.query_one("#run-metrics", Static).update(metrics_text(state))
        self.query_one(LossPlot).update_series(state.losses, state.eval_losses, state.max_steps)
        self.query_one("#diagnostics", Static).update(findings_text(message.findings))
        assert self.watching is not None
        summary = self.query_one("#summary", Static)
        summary.update(summary_table(state, message.code, message.stopped, self.watching.run_dir,
                                     core.output_dir(self.watching.run_dir), message.log_tail))
        summary.display = True
        self._tick()
        button = self.query_one("#next", Button)
        button.label, button.variant, button.disabled = "Quit", "primary", False
        self.refresh_bindings()
        self.set_status("Back: change the plan and launch again.")
        if self.quit_after_stop:
            self.wizard.finish()

    def action_next(self) -> None:
        if self.ended:
            self.wizard.finish()
        else:
            self.stop_run()

    def action_stop(self) -> None:
        if not self.ended:
            self.stop_run()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return not self.ended
        return super().check_action(action, parameters)

    def stop_run(self, then_quit: bool = False) -> None:
        self.quit_after_stop = then_quit
        if self.state.launch is None or self.ended:
            if then_quit:
                self.wizard.finish()
            return
        self.state.stopped = True
        self.query_one("#next", Button).disabled = True
        self.set_status("Stopping: the run saves a checkpoint first ...", "warning")
        self.stop_worker(self.state.launch)

    @work(thread=True, exclusive=True, exit_on_error=False, group="stop")
    def stop_worker(self, launch: Launch) -> None:
        launch.stop()
