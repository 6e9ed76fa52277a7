"""Step 6: write the run directory, show its files and the exact command, and launch it.

One run directory per launch: the plan is exported when it first comes here, and again only when
it changed (the screen says so, naming the old directory). A directory a run was launched from
belongs to that run: launching the same plan again writes a fresh one at Launch. While a run
trains nothing is launched; the button takes the user to the live run instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Button, Static

from llmwizard.wizard.messages import Exported, RunStarted
from llmwizard.wizard.screens.base import StepScreen, error_text

if TYPE_CHECKING:
    from llmwizard.autotune.plan import Plan
    from llmwizard.wizard.core import ExportResult


def export_text(result: ExportResult, launchable: bool, hardware: str, running: bool = False) -> Text:
    text = Text()
    text.append("Run directory  ", style="bold")
    text.append(f"{result.run_dir}\n")
    text.append("Files          ", style="bold")
    text.append("  ".join(path.name for path in result.files) + "\n\n")
    text.append("launch.sh runs\n", style="bold")
    text.append(f"  {result.command}\n\n", style="cyan")
    text.append("Rerun it any time with ", style="dim")
    from shlex import join  # commands to paste into a shell: the run directory's path quoted

    text.append(join(["bash", str(result.run_dir / "launch.sh")]), style="bold")
    text.append("; continue a stopped run with ", style="dim")
    text.append(join(["llmwizard", "resume", str(result.run_dir)]), style="bold")
    text.append(".\n", style="dim")
    if running:
        pass  # the screen says what to do while a run trains
    elif launchable:
        text.append("\nLaunch starts it here and shows the loss as it trains.", style="green")
    else:
        text.append(f"\nThis plan is for {hardware}, not this machine: copy the run directory there and "
                    "run launch.sh (multi-node: slurm.sbatch). Ctrl+Q quits.", style="yellow")
    return text


class LaunchScreen(StepScreen):
    STEP = 5
    NEXT_LABEL = "Launch"
    ERROR_PLACE = "#export"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+n", "next", "Launch", priority=True),
                                             Binding("ctrl+n", "watch", "Watch run", priority=True)]

    _failed: Plan | None = None      # the plan whose export is under way or failed
    _launch_after_export = False     # Launch was pressed for a plan whose directory a run used

    def body(self) -> ComposeResult:
        with VerticalScroll(id="export-box"):
            yield Static("Writing the run directory ...", id="export")

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        state = self.state
        button = self.query_one("#next", Button)
        button.label = "Launch"
        if state.plan is None:
            return
        same = state.export is not None and state.exported_plan == state.plan
        if same and state.export is not None:
            self._show(state.export)
        elif self._failed is state.plan:  # its error was just shown
            button.disabled = True
            self.query_one("#export", Static).update(
                Text("The run directory could not be written: fix the cause, then Back and Export again.",
                     style="yellow"))
        else:
            self._export(state.plan)

    def show_error(self, title: str, message: str, fix: str | None) -> None:
        """The run directory could not be written, or the run could not start: said once, here, with
        what to do next; Launch stays off until Back and Export (or Launch on a fresh export) again."""
        super().show_error(title, message, fix)
        self.query_one("#export", Static).update(
            error_text(message, fix) + Text("\n\nFix the cause, then Back and Export again.", style="yellow"))
        self.query_one("#next", Button).disabled = True

    def _export(self, plan: Plan) -> None:
        button = self.query_one("#next", Button)
        button.disabled = True
        self._failed = plan  # until the export succeeds
        self.query_one("#export", Static).update(Text("Writing the run directory ...", style="dim"))
        self.write_run(plan)

    def entering(self) -> None:
        self._failed = None  # coming here again (Export) retries a failed export

    @work(thread=True, exclusive=True, exit_on_error=False, group="export")
    def write_run(self, plan: Plan) -> None:
        from llmwizard.wizard import core

        self.post_message(Exported(plan, core.export_run(plan, self.state.output_dir)))

    @on(Exported)
    def exported(self, message: Exported) -> None:
        if message.plan is not self.state.plan:
            return  # the plan changed while this one was written
        before = self.state.export
        self.state.export, self.state.exported_plan = message.result, message.plan
        self._failed = None
        if self._launch_after_export:
            self._launch_after_export = False
            self._show(message.result)
            self.set_status(f"Wrote {message.result.run_dir.name} for this launch; starting ...")
            self.start(message.result)
            return
        self._show(message.result)
        if before is not None and before.run_dir != message.result.run_dir:
            self.set_status(f"The plan changed: wrote a new run directory ({before.run_dir.name} is kept).",
                            "warning")

    def _launchable(self) -> bool:
        from llmwizard.wizard import core

        state = self.state
        return (state.plan is not None and state.hardware is not None
                and core.can_launch_here(state.plan, state.hardware))

    def _used(self, result: ExportResult) -> bool:
        """A run was launched from this directory: it belongs to that run."""
        return self.state.launched_dir == result.run_dir

    def _show(self, result: ExportResult) -> None:
        launchable = self._launchable()
        hardware = self.state.plan.hardware if self.state.plan else ""
        button = self.query_one("#next", Button)
        running = self.wizard.running()
        text = export_text(result, launchable, hardware, running)
        if running:
            text.append("\nA run is training" + (" from this directory" if self._used(result) else "")
                        + ": Watch run (Ctrl+N or Ctrl+R, from any step) shows it. Launch again once it has "
                        "ended.", style="yellow")
            button.label, button.disabled = "Watch run", False
            self.set_status("A run is training: Ctrl+R shows it.", "warning")
        else:
            if self._used(result):
                text.append("\n\nThis directory belongs to the run launched from it. Launch writes a new run "
                            "directory for the same plan and starts that.", style="yellow")
            button.label, button.disabled = "Launch", not launchable
        self.query_one("#export", Static).update(text)
        self.refresh_bindings()
        button.focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Ctrl+N launches, or, while a run trains, shows it (the footer names which)."""
        if action in ("next", "watch"):
            return (action == "watch") == self.wizard.running()
        return super().check_action(action, parameters)

    def action_watch(self) -> None:
        self.wizard.goto(self.STEP + 1)

    def action_next(self) -> None:
        button = self.query_one("#next", Button)
        if self.wizard.running():
            self.wizard.goto(self.STEP + 1)
            return
        state = self.state
        if state.export is not None and state.plan is not None and not self._launchable():
            self.set_status("Planned for other hardware: run launch.sh there.", "warning")
            return
        if button.disabled or state.export is None or state.plan is None or state.exported_plan != state.plan:
            return
        button.disabled = True
        if self._used(state.export):
            self._launch_after_export = True
            self._export(state.plan)
            return
        self.set_status("Starting ...")
        self.start(state.export)

    @work(thread=True, exclusive=True, exit_on_error=False, group="launch")
    def start(self, result: ExportResult) -> None:
        from llmwizard.wizard import core

        assert self.state.plan is not None
        session, said = core.start_session(self.state.plan, result.run_dir)
        self.post_message(RunStarted(session, said))

    @on(RunStarted)
    def started(self, message: RunStarted) -> None:
        self.state.session = message.session
        self.state.launch = message.session.launch  # None while the session probes the plan first
        self.state.launched_dir = message.session.run_dir
        self.state.stopped = False
        self.state.leave_running = False
        self.state.ended = None
        self.wizard.fresh_run_screen().watch_session(message.session, message.said)
        self.set_status("")
        self.wizard.goto(self.STEP + 1)
