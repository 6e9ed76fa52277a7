"""The interactive wizard: from detected hardware to a running, plotted training job.

`llmwizard` with no arguments in a terminal calls `run_app(args)`. Seven steps, one screen
each (llmwizard.wizard.screens): preset and what to train (SFT, DPO, ORPO, KTO, GRPO), hardware,
model and method, dataset, plan with what-if edits, export and launch, live run. `WizardState` holds every answer so far; screens read it and
write it from their message handlers, on the UI thread. All decisions come from the core via
llmwizard.wizard.core; this module only wires screens together.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from llmwizard.wizard.widgets.steps import STEPS

if TYPE_CHECKING:
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import HardwareProfile
    from llmwizard.autotune.model.model_spec import ModelSpec
    from llmwizard.autotune.plan import Plan
    from rich.console import Console

    from llmwizard.runner.session.engine import RunSession
    from llmwizard.runner.session.launch import Launch
    from llmwizard.runner.after.summary import Summary
    from llmwizard.wizard.core import DatasetReport, ExportResult


@dataclass
class WizardState:
    """The user's answers and what the core made of them."""

    args: argparse.Namespace
    preset: str | None = None
    task: str | None = None                      # what to train, as chosen on step 1 (or --task); None: the preset's
    detected: HardwareProfile | None = None
    hardware: HardwareProfile | None = None      # what the plan is for
    other_hardware: bool = False                 # planning for hardware described by a spec
    gpu_spec: str = ""
    nodes: int = 1
    model_text: str = ""                         # as typed; "" is the embedded default
    model: ModelSpec | None = None
    method: str | None = None                    # None: the preset's or the planner's choice
    vision_tower: bool | None = None             # train the vision tower too; None: the preset's or flag's
    trust_code: bool = False                     # consent to run the model's own code (--trust-remote-code)
    dataset_text: str = ""
    dataset: DatasetReport | None = None
    dataset_key: tuple[str, str, str] | None = None   # (dataset, model, task) the report was made for
    overrides: dict[str, Any] = field(default_factory=dict)   # what-if edits on the plan step
    plan: Plan | None = None
    export: ExportResult | None = None
    exported_plan: Plan | None = None
    session: RunSession | None = None            # the session of the last launch (probing before its launch)
    launch: Launch | None = None
    launched_dir: Path | None = None             # the run directory of the last launch
    leave_running: bool = False                  # the user quit and chose to leave the run training
    stopped: bool = False                        # the user stopped the run
    ended: Summary | None = None                 # the summary of the last run that ended on the run step
    reached: int = 0

    @property
    def output_dir(self) -> str:
        return str(getattr(self.args, "output_dir", None) or "runs")

    def goals(self) -> Goals:
        return self.goals_with(self.overrides)

    def goals_with(self, edits: dict[str, Any]) -> Goals:
        """The goals for these what-if edits on top of the answers of the earlier steps (the method and
        the vision tower of step 3): the plan step re-plans with other edits to explain a refusal."""
        from llmwizard.wizard import core

        tower = self.vision_tower if self.model is not None and self.model.vision else None
        trust = True if self.trust_code else None  # the box adds consent; an unticked box leaves the flag's
        return core.goals_for(self.preset, self.args, {"method": self.method, "train_vision_tower": tower,
                                                       "trust_remote_code": trust, "task": self.task_edit(), **edits})

    def task_edit(self) -> str | None:
        """The task as an edit on top of the preset: None when it is the preset's own (or SFT without a
        preset task), so the plan says where the task came from."""
        from llmwizard.wizard import core

        if self.task is None or self.task == (core.preset_task(self.preset) or "sft"):
            return None
        return self.task

    @property
    def task_name(self) -> str:
        """What the run trains: the task chosen on step 1, else the preset's, else SFT."""
        from llmwizard.wizard import core

        return self.task or core.preset_task(self.preset) or "sft"

    def plan_inputs(self) -> tuple[Any, ...]:
        """What the plan depends on besides the what-if edits: a change means re-planning."""
        return (id(self.hardware), id(self.model), id(self.dataset), self.preset, self.task_name, self.method,
                self.vision_tower, self.trust_code)


def _screen_class(index: int) -> type:
    """Step `index`'s screen class, imported when first needed (the first paint waits for one)."""
    import importlib

    name = STEPS[index].lower()
    return getattr(importlib.import_module(f"llmwizard.wizard.screens.{name}"), f"{STEPS[index]}Screen")  # type: ignore[no-any-return]


class WizardApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "llmwizard"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+r", "watch_run", "Live run", priority=True),
    ]

    def __init__(self, args: argparse.Namespace | None = None, *, cursor_blink: bool = True) -> None:
        super().__init__()
        # Every flag is read with getattr(..., None): started without the CLI, nothing was given.
        args = argparse.Namespace(**vars(args)) if args is not None else argparse.Namespace()
        self.state = WizardState(args)
        self.state.preset = getattr(self.state.args, "preset", None)
        # --task becomes the wizard's own answer (step 1), so choosing another task on screen wins.
        self.state.task = getattr(self.state.args, "task", None)
        self.state.args.task = None
        if getattr(self.state.args, "gpus", None):
            self.state.other_hardware = True
            self.state.gpu_spec = self.state.args.gpus
        self.state.nodes = getattr(self.state.args, "nodes", None) or 1
        self.state.model_text = getattr(self.state.args, "model", None) or ""
        # --method becomes the wizard's own answer, so picking another method on screen wins.
        self.state.method = getattr(self.state.args, "method", None)
        self.state.args.method = None
        self.state.vision_tower = getattr(self.state.args, "train_vision_tower", None)  # the same for its box
        self.state.trust_code = bool(getattr(self.state.args, "trust_remote_code", None))
        self.state.args.train_vision_tower = None
        self.state.dataset_text = getattr(self.state.args, "dataset", None) or ""
        self.cursor_blink = cursor_blink
        self._screens_by_step: dict[int, Any] = {}

    def on_mount(self) -> None:
        self.goto(0)

    def step_screen(self, index: int) -> Any:
        if index not in self._screens_by_step:
            self._screens_by_step[index] = _screen_class(index)()
            self.install_screen(self._screens_by_step[index], STEPS[index].lower())
        return self._screens_by_step[index]

    def fresh_run_screen(self) -> Any:
        """A new run screen for a new launch: nothing of the last run (its figures, plot, summary,
        status line) can stay on it. The old one is off the screen stack while the launch step shows."""
        last = len(STEPS) - 1
        old = self._screens_by_step.pop(last, None)
        if old is not None and old not in self.screen_stack:
            self.uninstall_screen(old)
        return self.step_screen(last)

    def goto(self, index: int) -> None:
        """Show step `index` (0-based); a step is reachable once every step before it was."""
        index = max(0, min(index, len(STEPS) - 1))
        if index > self.state.reached + 1 or (index == len(STEPS) - 1 and self.state.session is None):
            return
        self.state.reached = max(self.state.reached, index)
        screen = self.step_screen(index)
        if self.screen_stack and self.screen is screen:
            return
        screen.entering()
        if len(self.screen_stack) <= 1:
            self.push_screen(screen)
        else:
            self.switch_screen(screen)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "watch_run":  # shown in the footer of every step once a run was launched
            return self.state.session is not None and getattr(self.screen, "STEP", None) != len(STEPS) - 1
        return True

    def action_watch_run(self) -> None:
        """The live run, from any step (Ctrl+R); a dialog that is open answers first."""
        from textual.screen import ModalScreen

        if self.state.session is not None and not isinstance(self.screen, ModalScreen):
            self.goto(len(STEPS) - 1)

    def running(self) -> bool:
        """A run trains, or its session probes the plan before launching it."""
        launch = self.state.launch
        if launch is not None and launch.process is not None:
            return launch.poll() is None
        return self.state.session is not None and self.state.ended is None and not self.state.stopped

    async def action_quit(self) -> None:
        if not self.running():
            self.finish()
            return
        from llmwizard.wizard.screens.dialogs import QuitModal

        def chosen(choice: str | None) -> None:
            if choice == "stop":
                self.step_screen(len(STEPS) - 1).stop_run(then_quit=True)
            elif choice == "leave":
                self.state.leave_running = True
                self.finish(0)

        self.push_screen(QuitModal(), chosen)

    def finish(self, code: int | None = None) -> None:
        """Leave the app; `run_app` returns the code (`exit_code()` unless given)."""
        code = self.exit_code() if code is None else code
        self.exit(code, return_code=code)

    def exit_code(self) -> int:
        """0 unless a run was launched and did not finish cleanly (1 failed, 130 stopped)."""
        launch = self.state.launch
        if launch is None or launch.process is None:
            return 0
        code = launch.poll()
        if code is None or code == 0:
            return 0
        return 130 if self.state.stopped else 1


def follow_hint(run_dir: Path) -> str:
    """What to type to follow a run the wizard left training."""
    from shlex import quote  # the paths as a shell reads them back (spaces, `$`, quotes)

    where, parent = quote(str(run_dir)), quote(str(run_dir.parent))
    return (f"The run keeps training in {run_dir} (train.log and metrics.jsonl there).\n"
            f"  follow it:     llmwizard watch {where}\n"
            f"  all runs:      llmwizard status {parent}\n"
            f"  stop it:       llmwizard stop {where}   (it saves a checkpoint first)")


def stop_after_hangup(app: WizardApp, grace: float = 30.0) -> int | None:
    """After the terminal closed: stop a run the user did not choose to leave running, the way Stop
    stops it (SIGTERM to its process group; every rank saves a checkpoint, then exits). The exit code,
    or None when there was nothing to stop."""
    launch = app.state.launch
    if launch is None or launch.process is None or launch.poll() is not None or app.state.leave_running:
        return None
    app.state.stopped = True
    return launch.stop(grace)


def run_app(args: argparse.Namespace) -> int:
    """The wizard in this terminal; its return value is the process exit code.

    Closing the terminal (SIGHUP) stops a run with a checkpoint unless the user chose "Leave
    running"; leaving it running prints how to follow it."""
    import signal

    app = WizardApp(args)
    hung_up = False
    previous = signal.getsignal(signal.SIGHUP)

    def on_hangup(signum: int, frame: object) -> None:
        nonlocal hung_up
        hung_up = True
        if app.is_running:  # nothing can be shown any more; the run is stopped below, once the app is down
            app.call_later(app.exit, 1, 129)

    signal.signal(signal.SIGHUP, on_hangup)
    try:
        app.run()
    finally:
        signal.signal(signal.SIGHUP, previous)
    if hung_up:
        stop_after_hangup(app)
        return 129
    if app.state.leave_running and app.state.launched_dir is not None:
        print(follow_hint(app.state.launched_dir))
    else:
        print_ended(app)
    return app.return_code or 0


def print_ended(app: WizardApp, console: Console | None = None) -> None:
    """After the wizard closed on a run that ended (finished, stopped, failed): the CLI's summary, with
    its resume command, stays in the terminal."""
    if app.state.ended is None:
        return
    from rich.console import Console

    from llmwizard.runner.session.session import print_summary

    print_summary(console if console is not None else Console(), app.state.ended)
