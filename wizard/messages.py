"""Messages thread workers post to their screens: small dataclasses, one per result.

A worker never touches a widget; it posts one of these and the screen's handler (on the UI
thread) updates state and widgets. Failures are not messages: a worker raises, and the screens'
one `Worker.StateChanged` handler shows the error (see llmwizard.wizard.screens.base).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from llmwizard.autotune.errors import UserError
    from llmwizard.autotune.machine.hardware import HardwareProfile
    from llmwizard.autotune.model.model_spec import ModelSpec
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.session.engine import RunSession
    from llmwizard.runner.session.events import Event
    from llmwizard.wizard.core import Choice, DatasetReport, ExportResult, Refusal


@dataclass
class HardwareDetected(Message):
    hardware: HardwareProfile


@dataclass
class HardwareResolved(Message):
    """The "plan for other hardware" spec as typed: a profile, or the error that names the fix."""

    spec: str
    hardware: HardwareProfile | None
    error: UserError | None = None
    advance: bool = False


@dataclass
class Completions(Message):
    """Matches for what is being typed in an input (model names, dataset files)."""

    target: str
    text: str
    choices: list[Choice]


@dataclass
class ModelLoaded(Message):
    """The spec of the model as typed, or the error that names what is wrong with it."""

    name: str
    model: ModelSpec | None
    error: UserError | None = None
    advance: bool = False


@dataclass
class DatasetProfiled(Message):
    key: tuple[str, str, str]        # (dataset, model, task) it was read for
    report: DatasetReport
    advance: bool = False


@dataclass
class PlanReady(Message):
    serial: int
    plan: Plan


@dataclass
class PlanRejected(Message):
    """The planner refused the edited goals: its error, and what the plan step makes of it (which
    edits are not applied, the smallest change that makes a plan), shown inline."""

    serial: int
    error: UserError
    refusal: Refusal


@dataclass
class Exported(Message):
    plan: Plan
    result: ExportResult


@dataclass
class RunStarted(Message):
    """A run session whose first attempt was launched, and the events it said on the way."""

    session: RunSession
    said: list[Event] = field(default_factory=list)


@dataclass
class RunEvent(Message):
    """One event of the run session (llmwizard.runner.session.events); a metrics snapshot supersedes an
    unhandled older one, every other event is shown."""

    event: Event

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunEvent) and type(message.event).__name__ == type(self.event).__name__ == "Metrics"


@dataclass
class StepSelected(Message):
    """A click on a step in the step bar."""

    index: int
