"""A training session in the console: `run_session` for the CLI (headless, `run`, `resume`).

llmwizard.runner.session.engine.RunSession does the work (launch, follow, diagnose, recover out-of-memory,
stop, summary data) in this thread; llmwizard.runner.session.live.ConsoleView renders its events, and
`print_summary` prints the summary it ends with. A failed or stopped run keeps its directory
whole: plan, log, metrics and checkpoints. Ctrl-C or SIGTERM stops the whole process group: every
rank saves a checkpoint at the end of its current step (llmwizard.runner.rank.callbacks) and
`llmwizard resume RUN_DIR` continues from it; a second Ctrl-C kills at once.

A run always has someone attached (`RunOwner`): when nobody can see it any more, because the
output pipe closed (`llmwizard run DIR | head`) or the terminal hung up (SIGHUP), it is stopped
the same way, with a checkpoint, rather than left training unseen; llmwizard then exits 141 or
129 (128 + SIGPIPE or SIGHUP). Handing it over to `watch`/`stop` instead would need a note that,
with the pipe closed, nobody would read.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from llmwizard.autotune.plan import Plan
from llmwizard.runner import diagnostics
from llmwizard.runner.session.engine import RunSession
from llmwizard.runner.session.launch import LOG_FILE
from llmwizard.runner.session.live import ConsoleView
from llmwizard.runner.session.output import SafeOutput
from llmwizard.runner.after.summary import Summary, format_bytes

# Exit codes of a run stopped because nobody could see it any more: 128 + the signal, as a shell
# reports a process that signal ended.
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE
EXIT_HANGUP = 128 + signal.SIGHUP
# How often the owner looks for a closed output pipe while nothing is written (seconds).
READER_CHECK_S = 0.5


def run_session(console: Console, plan: Plan, run_dir: Path, *, resume: bool = False, probe: bool | None = None,
                may_grow: bool = True) -> int:
    """Launch `run_dir` (exported from `plan`), follow it live, print the summary; the exit code.
    `probe` overrides the plan's (llmwizard.runner.session.probe runs first); `may_grow` lets it raise the
    micro-batch (false when the user fixed it)."""
    console.file = cast(IO[str], SafeOutput.wrap(console.file))  # a closed pipe never raises out of the view
    view = ConsoleView(console, plan.name)
    session = RunSession(plan, run_dir, view, resume=resume, probe=probe, may_grow=may_grow)
    owner = RunOwner(session, console.file, run_dir / LOG_FILE)
    with owner:
        try:
            outcome = session.run()
        finally:
            view.close()
        if view.end is not None:
            print_summary(console, view.end.summary)
    assert outcome is not None  # only a follower that detaches gets None
    return owner.exit_code(outcome.status, outcome.exit_code)


class RunOwner:
    """Keeps someone attached to a console session's run, for the length of the `with` block.

    SIGTERM stops the run like Ctrl-C (KeyboardInterrupt in this thread: a second one kills).
    SIGHUP (the terminal closed) and a closed output pipe stop it gracefully through
    `RunSession.stop`, from the signal handler or the writer, and never escalate to a kill: they
    come again on their own. A SIGHUP that was ignored when llmwizard started (`nohup`) stays
    ignored, and the run goes on. Signal handlers are only set in the main thread.
    """

    def __init__(self, session: RunSession, output: object, log_path: Path) -> None:
        self.session = session
        self.output = output if isinstance(output, SafeOutput) else None
        self.log_path = log_path
        self.cause: str | None = None   # "pipe" | "hangup": why nobody could see the run
        self._done = threading.Event()
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> RunOwner:
        if threading.current_thread() is threading.main_thread():
            self._handle(signal.SIGTERM, self._on_sigterm)
            if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
                self._handle(signal.SIGHUP, self._on_sighup)
        if self.output is not None:
            self._undo.append(self.output.on_gone(lambda: self._lost("pipe")))
            watcher = threading.Thread(target=self._watch_reader, name="llmwizard-reader-check", daemon=True)
            watcher.start()
            self._undo.append(lambda: self._end_watch(watcher))
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def exit_code(self, status: str, code: int) -> int:
        """The session's code, or 141/129 for a run stopped because nobody could see it."""
        if status == "stopped" and self.cause == "pipe":
            return EXIT_PIPE_CLOSED
        if status == "stopped" and self.cause == "hangup":
            return EXIT_HANGUP
        return code

    def _handle(self, signum: int, handler: Callable[[int, object], None]) -> None:
        previous = signal.signal(signum, handler)

        def restore() -> None:
            signal.signal(signum, previous)

        self._undo.append(restore)

    def _end_watch(self, watcher: threading.Thread) -> None:
        self._done.set()
        watcher.join(2)

    @staticmethod
    def _on_sigterm(signum: int, frame: object) -> None:
        """SIGTERM to llmwizard (a CI job cancelled, `kill`, `llmwizard stop`) stops the run like Ctrl-C."""
        raise KeyboardInterrupt

    def _on_sighup(self, signum: int, frame: object) -> None:
        self._lost("hangup")

    def _watch_reader(self) -> None:
        """A pipe closed while nothing is written (the model loading, a long step) is noticed too."""
        assert self.output is not None
        while not self._done.wait(READER_CHECK_S):
            if self.output.reader_gone():
                return

    def _lost(self, cause: str) -> None:
        """Nobody can see the run any more: stop it with a checkpoint, once, and say why in train.log."""
        if self.cause is not None:
            return
        self.cause = cause
        why = "the output pipe closed" if cause == "pipe" else "the terminal hung up (SIGHUP)"
        self.session.stop()
        with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"llmwizard: {why}: nobody follows the run any more, so it stops with a checkpoint "
                      f"(`llmwizard resume {self.log_path.parent}` continues it)\n")


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
