"""What every step screen shares: the step bar, Back/Next, and the one failure handler.

Workers run on the screen that starts them (`@work(thread=True, exclusive=True,
exit_on_error=False)`), so a worker's StateChanged reaches that screen; `worker_failed` below
is the single place where a failure becomes a message: a UserError shows its text and fix once,
in the wizard's words (fields and steps, not flags), inline where the step shows its input
(`ERROR_PLACE`), any other exception shows as a bug with its type in a dialog. Nothing a worker
raises ends the app, and no dialog opens again by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text

from textual import events, on
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
        from llmwizard.wizard import core

        return (error.title, core.in_wizard_words(error.message),
                core.in_wizard_words(error.fix) if error.fix else None)
    return ("Unexpected error", f"{type(error).__name__}: {error}",
            "This is a bug in llmwizard, not in your input. Please report it with the steps that led here.")


def error_text(message: str, fix: str | None) -> Text:
    """An input error as a step shows it inline: what is wrong, then the fix."""
    text = Text(message, style="red")
    if fix:
        text.append(f"\nFix: {fix}", style="default")
    return text


class StepScreen(Screen[None]):
    """A wizard step. Subclasses set STEP (index into STEPS) and compose `body()`; a step with an input
    sets ERROR_PLACE (the Static under it) and ERROR_FIELD (the input the error is about)."""

    STEP: ClassVar[int] = 0
    ERROR_PLACE: ClassVar[str | None] = None
    ERROR_FIELD: ClassVar[str | None] = None
    _focus_id: str | None = None      # the field that last had the focus (never Back or Next)
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
        if self._focus_id is not None:  # back on this step: the field that had the focus has it again
            widgets = self.query(f"#{self._focus_id}")
            if widgets and widgets.first().focusable and widgets.first() is not self.focused:
                self.call_after_refresh(widgets.first().focus)

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """Remember the last field that had the focus; not Back or Next, which a click on them focuses
        on the way out of the step."""
        widget = event.widget
        if widget.id and widget.id not in ("back", "next"):
            self._focus_id = widget.id

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
        from llmwizard.autotune.errors import UserError

        title, message, fix = error_parts(event.worker.error)
        if isinstance(event.worker.error, UserError) and self.ERROR_PLACE is not None:
            self.show_error(title, message, fix)
        elif not isinstance(self.app.screen, ErrorModal):  # one dialog at a time
            self.app.push_screen(ErrorModal(title, message, fix))

    def show_error(self, title: str, message: str, fix: str | None) -> None:
        """A UserError about this step's input, once, where the input is: the message and its fix under
        the field, the field focused, and the status line pointing at them."""
        assert self.ERROR_PLACE is not None
        self.query_one(self.ERROR_PLACE, Static).update(error_text(message, fix))
        if self.ERROR_FIELD is not None:
            self.query_one(self.ERROR_FIELD).focus()
        self.set_status(f"{title}: fix what the message above names, then Next.", "error")
