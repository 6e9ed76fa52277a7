"""Step 7: the run as it trains: progress, live loss plot, metrics, diagnostics, recovery, stop, summary.

A preference run's numbers (reward accuracy and margin with sparklines, chosen and rejected rewards
and log-probs, KL) and a GRPO run's (reward +- spread, completion length, KL) come with the
console's lines; a GRPO run's plot shows its reward instead of the loss.

The run is a llmwizard.runner.session.engine.RunSession, the same the CLI runs: it diagnoses failures,
re-plans after running out of GPU memory and resumes, and ends with the CLI's summary and resume
advice. A thread worker runs it and posts each of its events (llmwizard.runner.session.events) as a
RunEvent message; this screen only renders them. Metrics snapshots supersede each other, so a
burst of records costs one repaint. Stop asks the session to stop: SIGTERM to the run's process
group, every rank saves a checkpoint.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Button, ProgressBar, Static
from textual.worker import get_current_worker

from llmwizard.wizard.messages import RunEvent
from llmwizard.wizard.screens.base import StepScreen
from llmwizard.wizard.widgets.loss_plot import LossPlot

if TYPE_CHECKING:
    from llmwizard.runner.session import events
    from llmwizard.runner.session.engine import RunSession
    from llmwizard.runner.session.events import Event
    from llmwizard.runner.state import RunState


def metrics_text(state: RunState) -> Text:
    """The numbers block: the console's lines (llmwizard.runner.session.live.numbers), one per row."""
    from llmwizard.wizard import core

    return Text("\n").join(core.metrics_lines(state))


def own_line(lines: list[str]) -> str | None:
    """The newest line of train.log that llmwizard's rank wrote itself ("llmwizard: ..."), or None.
    Library output (DeepSpeed's accelerator notice, tqdm's "Tokenizing train dataset" bars, warnings)
    stays in train.log and never reaches the status line."""
    for line in reversed(lines):
        for part in reversed(line.split("\r")):  # a progress bar rewrites its line with carriage returns
            part = part.strip()
            if part.startswith("llmwizard"):
                return part
    return None


def findings_view(findings: list[Any]) -> Any:
    """The diagnostics so far, worded as the console words them (each with its fix)."""
    from llmwizard.wizard import core

    if not findings:
        return Text("Diagnostics: nothing unusual so far.", style="dim")
    return Group(*(core.finding_view(finding) for finding in findings))


def report_link(run_dir: Any) -> Text:
    """The run's report.html (written at each evaluation and at the end), as a terminal link."""
    from pathlib import Path

    from llmwizard.runner.export.configs import REPORT_FILE

    path = (Path(run_dir) / REPORT_FILE).resolve()
    text = Text("report: ", style="dim")
    text.append(str(path), style=f"link {path.as_uri()}")
    text.append("  (updated at each evaluation; `llmwizard report` opens it)", style="dim")
    return text


class RunScreen(StepScreen):
    STEP = 6
    NEXT_LABEL = "Stop"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "next", "Stop / Quit", show=False, priority=True),
        Binding("s", "stop", "Stop run"),
        # The summary below the plot is taller than a small terminal: the keys scroll the step.
        Binding("down", "scroll_down", show=False), Binding("up", "scroll_up", show=False),
        Binding("pagedown", "page_down", show=False), Binding("pageup", "page_up", show=False),
        Binding("end", "scroll_end", show=False), Binding("home", "scroll_home", show=False),
    ]

    ended = False                   # the watched run has ended
    quit_after_stop = False         # "Stop and quit" was chosen
    pending: tuple[RunSession, list[Event]] | None = None   # handed over by the launch step

    def body(self) -> ComposeResult:
        yield Static(id="run-title")
        yield ProgressBar(id="progress", show_eta=False)
        yield Static(id="run-metrics")
        yield Static(id="report-link")
        yield Static(id="probe")
        yield LossPlot(id="loss")
        yield Static(id="recovery")
        yield Static(id="diagnostics")
        yield Static(id="summary")

    def on_mount(self) -> None:
        super().on_mount()
        self.session: RunSession | None = None
        self.state_snapshot: RunState | None = None
        self.findings: list[Any] = []
        self.recoveries: list[Text] = []
        self.probes: list[events.Probe] = []
        self.end_event: Event | None = None
        self.began = time.monotonic()  # when the session was handed over: the probe's clock
        self.query_one("#probe", Static).display = False
        self.set_interval(1.0, self._tick)
        self.query_one("#next", Button).variant = "error"

    def watch_session(self, session: RunSession, said: list[Event]) -> None:
        """The launch step hands over a started session and the events it said so far."""
        self.pending = (session, said)

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.pending is None:
            return
        session, said = self.pending
        self.pending = None
        self.began = time.monotonic()
        self.session, self.ended, self.end_event = session, False, None
        self.state_snapshot, self.findings, self.recoveries = None, [], []
        for widget in ("#summary", "#recovery"):
            self.query_one(widget, Static).display = False
        self.query_one("#diagnostics", Static).update(findings_view([]))
        self.query_one(LossPlot).update_series([], [])
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)
        button = self.query_one("#next", Button)
        button.label, button.variant, button.disabled = "Stop", "error", False
        if getattr(session, "probe", False) and session.launch is None:
            self.set_status("Probing the plan before the run: a few real steps on the longest rows.")
        for event in said:
            self.show(event)
        self._tick()
        self.follow(session)

    @work(thread=True, exclusive=True, exit_on_error=False, group="follow")
    def follow(self, session: RunSession) -> None:
        """Run the session here; every event goes to the screen as a message (never a widget).
        Quitting the wizard cancels this worker: the session stops following and the run, if it
        was left running, goes on by itself."""
        worker = get_current_worker()

        def deliver(event: Event) -> None:
            if not worker.is_cancelled:
                self.post_message(RunEvent(event))

        session.on_event = deliver
        session.run(detached=lambda: worker.is_cancelled)

    @on(RunEvent)
    def run_event(self, message: RunEvent) -> None:
        self.show(message.event)

    def show(self, event: Event) -> None:
        """Render one event: `_on_<event class>` (the events are plain data; no runner import here)."""
        handler = getattr(self, f"_on_{type(event).__name__.lower()}", None)
        if handler is not None:
            handler(event)

    def _on_metrics(self, event: events.Metrics) -> None:
        self._metrics(event.state)

    def _on_finding(self, event: events.Finding) -> None:
        self.findings.append(event.finding)
        self.query_one("#diagnostics", Static).update(findings_view(self.findings))

    def _on_started(self, event: events.Started) -> None:
        if self.session is not None:
            self.state.launch = self.session.launch  # the attempt now running
            self.query_one("#report-link", Static).update(report_link(self.session.run_dir))
        if event.attempt == 1 and self.probes:
            self.set_status("")  # the probe's status line is answered: the run itself starts
        if event.attempt > 1:
            self._recovery(Text(f"Attempt {event.attempt}: {event.plan}", style="dim"))

    def _on_recovery(self, event: events.Recovery) -> None:
        if event.kind == "oom_replan":
            self._recovery(Text(f"Out of GPU memory. {event.message}.", style="yellow"))
        else:
            self._recovery(Text(event.message))

    def _on_probe(self, event: events.Probe) -> None:
        """A round of the probe, before the run: what it measured and its verdict, as the console's
        table (one row per round) and the round's line in the console's words."""
        from llmwizard.runner.session.live import probe_line, probe_table

        self.probes.append(event)
        widget = self.query_one("#probe", Static)
        line = Text(probe_line(event), style="green" if event.verdict == "keep" else "yellow")
        widget.update(Group(probe_table(self.probes), line))
        widget.display = True
        if event.final and event.verdict not in ("stopped", "failed", "give_up"):
            self.set_status(f"Probe done: {event.verdict}; launching the run ...")
        self._tick()

    def _on_stopping(self, event: events.Stopping) -> None:
        self.set_status("Killing the run ..." if event.force else
                        "Stopping: each rank checkpoints after its step ...", "warning")

    def _on_stopped(self, event: events.Stopped) -> None:
        self._ended(event)

    def _on_finished(self, event: events.Finished) -> None:
        self._ended(event)

    def _on_failed(self, event: events.Failed) -> None:
        self._ended(event)

    def _recovery(self, line: Text) -> None:
        self.recoveries.append(line)
        widget = self.query_one("#recovery", Static)
        widget.update(Group(*self.recoveries))
        widget.display = True

    def _metrics(self, state: RunState) -> None:
        self.state_snapshot = state
        self.query_one("#progress", ProgressBar).update(total=state.max_steps or None, progress=state.step)
        self.query_one("#run-metrics", Static).update(metrics_text(state))
        if state.task == "grpo" and state.series("reward"):
            from llmwizard.runner.session.live import reward_band

            # GRPO's loss says nothing of progress; its reward does (as the console plots it).
            self.query_one(LossPlot).update_series(state.series("reward"), state.series("eval_reward"), state.max_steps,
                                                   band=reward_band(state), labels=("reward (mean)", "eval reward"))
        else:
            self.query_one(LossPlot).update_series(state.losses, state.eval_losses, state.max_steps)
        self._tick()

    def _tick(self) -> None:
        from llmwizard.wizard import core

        launch, state = self.state.launch, self.state_snapshot
        if self.session is None:
            return
        plan = self.session.plan
        title = Text(plan.name, style="bold")
        if self.ended:
            pass
        elif launch is None:  # the session probes the plan before launching it
            since = core.format_seconds(time.monotonic() - self.began)
            done = f" | round {len(self.probes)} done" if self.probes else ""
            title.append(f"   probing ({since}): a few real steps on the longest rows check the plan{done}",
                         style="dim")
        elif state is None or not state.began:
            line = own_line(launch.log_tail(40)) if launch.process is not None else None
            since = core.format_seconds(time.monotonic() - launch.started)
            title.append(f"   starting ({since}): loading the model and data"
                         + (f" | {line[:80]}" if line else ""), style="dim")
        else:
            title.append(f"   step {state.step}/{state.max_steps or '?'}   epoch {state.epoch:.2f}   "
                         f"elapsed {core.format_seconds(state.elapsed)}   eta {core.format_seconds(state.eta())}")
        self.query_one("#run-title", Static).update(title)

    def _ended(self, event: events.Stopped | events.Finished | events.Failed) -> None:
        from llmwizard.wizard import core

        self.ended = True
        self.end_event = event
        self.state.stopped = self.state.stopped or event.summary.status == "stopped"
        self.state.ended = event.summary  # printed in the terminal once the wizard closes
        if self.state_snapshot is not None:
            state = self.state_snapshot
            self.query_one("#progress", ProgressBar).update(total=max(1, state.max_steps), progress=state.step)
        else:  # ended before its first step (stopped during the probe, say): no step was done
            self.query_one("#progress", ProgressBar).update(total=1, progress=0)
        summary = self.query_one("#summary", Static)
        summary.update(core.summary_view(event.summary))
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
        if self.session is None or self.ended:
            if then_quit:
                self.wizard.finish()
            return
        self.state.stopped = True
        self.query_one("#next", Button).disabled = True
        self.set_status("Stopping: the run saves a checkpoint first ...", "warning")
        self.session.stop()  # the session's worker stops the run; its last event ends this screen
