"""A training session in the console: `run_session` for the CLI (headless, `run`, `resume`).

llmwizard.runner.engine.RunSession does the work (launch, follow, diagnose, recover out-of-memory,
stop, summary data) in this thread; llmwizard.runner.live.ConsoleView renders its events, and
`print_summary` prints the summary it ends with. A failed or stopped run keeps its directory
whole: plan, log, metrics and checkpoints. Ctrl-C or SIGTERM stops the whole process group: every
rank saves a checkpoint at the end of its current step (llmwizard.runner.callbacks) and
`llmwizard resume RUN_DIR` continues from it; a second Ctrl-C kills at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from llmwizard.autotune.plan import Plan
from llmwizard.runner import diagnostics
from llmwizard.runner.engine import RunSession
from llmwizard.runner.live import ConsoleView
from llmwizard.runner.summary import Summary, format_bytes


def run_session(console: Console, plan: Plan, run_dir: Path, *, resume: bool = False, probe: bool | None = None,
                may_grow: bool = True) -> int:
    """Launch `run_dir` (exported from `plan`), follow it live, print the summary; the exit code.
    `probe` overrides the plan's (llmwizard.runner.probe runs first); `may_grow` lets it raise the
    micro-batch (false when the user fixed it)."""
    view = ConsoleView(console, plan.name)
    session = RunSession(plan, run_dir, view, resume=resume, probe=probe, may_grow=may_grow)
    try:
        with _sigterm_as_interrupt():
            outcome = session.run()
    finally:
        view.close()
    if view.end is not None:
        print_summary(console, view.end.summary)
    assert outcome is not None  # only a follower that detaches gets None
    return outcome.exit_code


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to llmwizard (a CI job cancelled, `kill`) stops the run like Ctrl-C does, instead of
    leaving the ranks running without a parent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- summary

def summary_table(summary: Summary) -> Table:
    """The summary's rows as a two-column grid (the wizard's run screen shows the same table)."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in summary.rows:
        table.add_row(label, Text(value))  # plain text: a path or a sample may hold [brackets]
    return table


def summary_title(summary: Summary) -> Text:
    return Text(summary.title, style=f"bold {summary.style}")


def finding_text(finding: diagnostics.Finding) -> Group:
    mark, style = ("✖", "bold red") if finding.severity == diagnostics.STOP else ("⚠", "bold yellow")
    head = Text(f"{mark} {finding.title}: ", style=style)
    head.append(finding.message, style="")
    fix = Text("  Fix: ", style="bold")
    fix.append(finding.fix, style="")
    return Group(head, fix)


def failure_text(summary: Summary) -> Text | None:
    """What failed in our words: the message, the log line that says so, the fix, where the full
    log is and how to continue; None when nothing failed. Library tracebacks stay in train.log."""
    failure = summary.failure
    if failure is None:
        return None
    body = Text(failure.message)
    if failure.evidence:
        body.append("\nseen in the log: ", style="dim")
        body.append(failure.evidence)
    if summary.free_disk is not None:
        body.append(f"\nfree now on that disk: {format_bytes(summary.free_disk)}", style="dim")
    body.append("\nFix: ", style="bold")
    body.append(failure.fix)
    if summary.log_path:
        body.append("\nfull log: ", style="dim")
        body.append(summary.log_path)
    if summary.resume:
        body.append("\nafter the fix: ", style="dim")
        body.append(summary.resume)
    return body


# An unrecognised failure shows this many of the log's last lines (tracebacks left out).
EXCERPT_LINES = 10


def print_summary(console: Console, summary: Summary) -> None:
    console.print(Panel(summary_table(summary), title=summary_title(summary), border_style=summary.style,
                        expand=False))
    for finding in summary.findings:
        console.print(finding_text(finding))
    failure = failure_text(summary)
    if failure is not None and summary.log_excerpt:
        lines = [Text(line, no_wrap=True, overflow="ellipsis") for line in summary.log_excerpt[-EXCERPT_LINES:]]
        console.print(Panel(Group(*lines), title="the last lines of train.log (tracebacks left out)",
                            title_align="left", border_style="red"))
    if failure is not None and summary.failure is not None:
        console.print(Panel(failure, title=Text(summary.failure.title, style="bold red"), border_style="red",
                            expand=False))
