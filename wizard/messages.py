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
    from llmwizard.autotune.hardware import HardwareProfile
    from llmwizard.autotune.memory import MemoryEstimate
    from llmwizard.autotune.model_spec import ModelSpec
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.launch import Launch
    from llmwizard.runner.state import RunState
    from llmwizard.wizard.core import Choice, DatasetReport, ExportResult, Finding


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
    key: tuple[str, str]
    report: DatasetReport
    advance: bool = False


@dataclass
class PlanReady(Message):
    serial: int
    plan: Plan


@dataclass
class PlanRejected(Message):
    """The planner refused the edited goals: shown inline beside the last plan that worked."""

    serial: int
    error: UserError
    requested: MemoryEstimate | None = None


@dataclass
class Exported(Message):
    plan: Plan
    result: ExportResult


@dataclass
class RunStarted(Message):
    launch: Launch


@dataclass
class RunProgress(Message):
    """A snapshot of the run; a newer one supersedes an unhandled older one."""

    state: RunState
    findings: list[Finding] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunProgress)


@dataclass
class RunEnded(Message):
    code: int
    state: RunState
    log_tail: list[str]
    stopped: bool = False
    findings: list[Finding] = field(default_factory=list)


@dataclass
class StepSelected(Message):
    """A click on a step in the step bar."""

    index: int
