"""What a run session tells its views: small frozen dataclasses, plain data only.

llmwizard.runner.session.engine.RunSession launches, follows, diagnoses, recovers and stops a run and
says what happens through these events, one callback call each. The views only render them: the
console view (llmwizard.runner.session.live.ConsoleView, a rich panel in a terminal, plain lines
elsewhere) and the wizard's run screen, which posts each event to itself as a Textual message.
No rich objects here, so an event can cross threads and be shown by any face.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from llmwizard.runner.diagnostics import Finding as DiagnosticFinding
    from llmwizard.runner.recovery import Failure
    from llmwizard.runner.state import RunState
    from llmwizard.runner.after.summary import Summary


@dataclass(frozen=True)
class Started:
    """One attempt was launched (the first, a resume, or a retry after a re-plan)."""

    plan: str            # "accelerate (ddp, 2 process(es), micro-batch 8 x 2 accumulation)"
    launcher: str
    log_path: str
    attempt: int         # 1 for the first launch of this session


@dataclass(frozen=True)
class Metrics:
    """One record of metrics.jsonl, and the run as it stands after it (a snapshot: it is not
    changed later, so another thread may keep it)."""

    record: dict[str, Any]
    is_loss: bool        # the record carried a training loss (a new line in plain output)
    state: RunState


@dataclass(frozen=True)
class Finding:
    """A diagnostic seen for the first time in this session (each finding code once)."""

    finding: DiagnosticFinding
    final: bool = False  # judged on the whole, ended run


@dataclass(frozen=True)
class Recovery:
    """Something the session changed or found before (re)launching: a checkpoint set aside,
    where the run resumes from, a re-plan after running out of GPU memory."""

    kind: str            # set_aside | resume | oom_replan
    message: str
    micro_batch: tuple[int, int] | None = None    # (before, after) for oom_replan
    grad_accum: tuple[int, int] | None = None
    effective_batch: int | None = None
    checkpoint: str | None = None                 # the checkpoint resumed from, if any


@dataclass(frozen=True)
class Probe:
    """One round of the probe (llmwizard.runner.session.probe): the plan probed, what the worst rank
    measured, the verdict and the plan after it. `final` is the last round's event."""

    round: int
    verdict: str         # keep | grow | shrink | checkpointing | next_tier | give_up | failed | stopped
    message: str
    before: dict[str, Any]                 # the plan probed: micro_batch, grad_accum, checkpointing, ...
    after: dict[str, Any]                  # the plan after the verdict (the same for keep)
    expected: int = 0                      # the estimate's expected peak of the plan probed (bytes)
    measured: int = 0                      # the worst rank's peak (0: none, or out of memory)
    worst_rank: int | None = None
    ranks: int = 0                         # ranks that reported
    memory_kind: str = "rss"               # cuda | rss
    step_s: float | None = None            # measured seconds per optimizer step (worst batch)
    tokens_per_s: float | None = None
    speed_ratio: float | None = None       # measured / predicted tokens per second
    eta_s: float | None = None             # step_s x the run's optimizer steps
    final: bool = False


@dataclass(frozen=True)
class Stopping:
    """A stop was asked for: the ranks save a checkpoint at the end of their step. `force`:
    asked twice, the run is killed at once."""

    force: bool = False


@dataclass(frozen=True)
class Stopped:
    """The run was stopped; its checkpoint is kept and `resume_command` continues it."""

    step: int
    exit_code: int
    summary: Summary
    checkpoint: str | None = None
    resume_command: str = ""


@dataclass(frozen=True)
class Finished:
    """The run reached its end and saved its result."""

    step: int
    exit_code: int
    summary: Summary


@dataclass(frozen=True)
class Failed:
    """The run ended badly: a diagnosed failure (`failure`, with the log lines before it) or a
    divergence (status "diverged", failure None)."""

    status: str          # failed | diverged
    step: int
    exit_code: int
    summary: Summary
    failure: Failure | None = None
    log_excerpt: tuple[str, ...] = field(default_factory=tuple)
    resume_command: str = ""


Event = Union[Started, Metrics, Finding, Recovery, Probe, Stopping, Stopped, Finished, Failed]
END_EVENTS = (Stopped, Finished, Failed)
EventSink = Callable[[Event], None]
