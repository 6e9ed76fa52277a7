"""What every step screen shares: the step bar, Back/Next, and the one failure handler.

Workers run on the screen that starts them (`@work(thread=True, exclusive=True,
exit_on_error=False)`), so a worker's StateChanged reaches that screen; `worker_failed` below
is the single place where a failure becomes a message: a UserError shows its text and fix, any
other exception shows as a bug with its type. Nothing a worker raises ends the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static
from textual.worker import Worker, WorkerState

from llmwizard.wizard.messages import StepSelected
from llmwizard.wizard.screens.dialogs import ErrorModal
from llmwizard.wizard.widgets.steps import StepBar

if TYPE_CHECKING:
    from llmwizard.wizard.app import WizardApp, WizardState


def error_parts(error: BaseException) -> tuple[str, str, str | None]:
    """(title, message, fix) for any exception: a UserError's own words, else a bug report."""
    from llmwizard.autotune.errors import UserError

    if isinstance(error, UserError):
        return error.title, error.message, error.fix
    return ("Unexpected error", f"{type(error).__name__}: {error}",
            "This is a bug in llmwizard, not in your input. Please report it with the steps that led here.")


class StepScreen(Screen[None]):
    """A wizard step. Subclasses set STEP (index into STEPS) and compose `body()`."""

    STEP: ClassVar[int] = 0
    NEXT_LABEL: ClassVar[str] = "Next"
    HELP: ClassVar[str] = ""
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("escape", "back", "Back"),
    ]

    @property
    def wizard(self) -> WizardApp:
        return self.app  # type: ignore[return-value]

    @property
    def state(self) -> WizardState:
        return self.wizard.state

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP, self.state.reached)
        if self.HELP:
            yield Static(self.HELP, classes="help")
        yield from self.body()
        with Horizontal(classes="nav"):
            yield Static(id="nav-status", classes="nav-status")
            if self.STEP > 0:
                yield Button("Back", id="back", compact=True)
            if self.NEXT_LABEL:
                yield Button(self.NEXT_LABEL, id="next", variant="primary", compact=True)
        yield Footer()

    def body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        for field in self.query(Input):
            field.cursor_blink = self.wizard.cursor_blink

    def entering(self) -> None:
        """Called when navigation (not a closing dialog) brings this step up."""

    def on_screen_resume(self) -> None:
        self.query_one(StepBar).set_reached(self.state.reached)

    def set_status(self, text: str, style: str = "") -> None:
        status = self.query_one("#nav-status", Static)
        status.update(text)
        status.set_classes(f"nav-status {style}".strip())

    @on(Button.Pressed, "#next")
    def _next_pressed(self) -> None:
        self.action_next()

    @on(Button.Pressed, "#back")
    def _back_pressed(self) -> None:
        self.action_back()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "back" and self.STEP == 0)

    def action_next(self) -> None:
        self.wizard.goto(self.STEP + 1)

    def action_back(self) -> None:
        if self.STEP > 0:
            self.wizard.goto(self.STEP - 1)

    @on(StepSelected)
    def _step_selected(self, event: StepSelected) -> None:
        if event.index != self.STEP:
            self.wizard.goto(event.index)

    @on(Worker.StateChanged)
    def worker_failed(self, event: Worker.StateChanged) -> None:
        if event.state != WorkerState.ERROR or event.worker.error is None:
            return
        self.set_status("")
        title, message, fix = error_parts(event.worker.error)
        self.app.push_screen(ErrorModal(title, message, fix))
