"""Modal dialogs: an error with its fix, and the question asked before quitting during a run."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ErrorModal(ModalScreen[None]):
    """What went wrong and what to do about it; Enter or Escape closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "close", "Close", show=True)]

    def __init__(self, title: str, message: str, fix: str | None = None) -> None:
        super().__init__(classes="dialog")
        self.title_text, self.message, self.fix = title, message, fix

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error"):
            yield Static(self.title_text, id="dialog-title", markup=False)
            with VerticalScroll(id="dialog-body"):
                yield Static(self.message, id="error-message", markup=False)
                if self.fix:
                    yield Static(f"Fix: {self.fix}", id="error-fix", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", id="ok", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#ok", Button).focus()

    @on(Button.Pressed, "#ok")
    def action_close(self) -> None:
        self.dismiss(None)


class QuitModal(ModalScreen[str]):
    """Quitting while a run trains: stop it (it checkpoints), leave it running, or stay."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "choose('cancel')", "Stay", show=True)]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("A run is still training", id="dialog-title")
            yield Static("Stop it (it saves a checkpoint first), or quit and leave it running: it keeps "
                         "writing train.log and metrics.jsonl in its run directory, and `llmwizard watch RUN` "
                         "follows it again (the wizard prints the command as it quits). Closing the terminal "
                         "stops it like Stop.", id="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop and quit", id="stop", variant="error", compact=True)
                yield Button("Leave running", id="leave", compact=True)
                yield Button("Stay", id="cancel", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "cancel")

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)
