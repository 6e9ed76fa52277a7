"""The step bar at the top of every screen: where you are, what is done, click to go back."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from llmwizard.wizard.messages import StepSelected

STEPS = ("Preset", "Hardware", "Model", "Dataset", "Plan", "Launch", "Run")


class StepLabel(Static):
    def __init__(self, index: int, state: str) -> None:
        super().__init__(f" {index + 1} {STEPS[index]} ", classes=f"step -{state}")
        self.index = index

    def on_click(self, event: events.Click) -> None:
        if self.has_class("-done"):
            self.post_message(StepSelected(self.index))


class StepBar(Horizontal):
    """`current` is this screen's step; `reached` the furthest step the user has been to."""

    DEFAULT_CSS = """
    StepBar {
        height: 1;
        background: $panel;
    }
    StepBar > .brand {
        width: auto;
        text-style: bold;
        color: $accent;
        padding: 0 1;
    }
    StepBar > .step {
        width: auto;
        color: $text-muted;
    }
    StepBar > .step.-done {
        color: $success;
    }
    StepBar > .step.-done:hover {
        text-style: underline;
    }
    StepBar > .step.-current {
        background: $accent;
        color: $text;
        text-style: bold;
    }
    """

    def __init__(self, current: int, reached: int) -> None:
        super().__init__()
        self.current = current
        self.reached = reached

    def compose(self) -> ComposeResult:
        yield Static("llmwizard", classes="brand")
        for index in range(len(STEPS)):
            state = "current" if index == self.current else "done" if index <= self.reached else "todo"
            yield StepLabel(index, state)

    def set_reached(self, reached: int) -> None:
        self.reached = reached
        for label in self.query(StepLabel):
            if label.index != self.current:
                label.set_class(label.index <= reached, "-done")
                label.set_class(label.index > reached, "-todo")
