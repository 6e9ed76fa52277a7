"""A training session as the faces run it: launch an exported run directory, watch it, recover
what can be recovered, summarise.

The CLI (headless, `run`, `resume`) calls `run_session`; the wizard drives `Launch` and
`RunState` itself. A failed or stopped run keeps its directory whole: plan, log, metrics and
checkpoints. Ctrl-C or SIGTERM stops the whole process group: every rank saves a checkpoint at
the end of its current step (llmwizard.runner.callbacks) and `llmwizard resume RUN_DIR` continues from it.
When a rank runs out of GPU memory the plan is redone with half the micro-batch (the effective
batch kept by more accumulation), the run files are exported again and the run resumes from its
last checkpoint, at most MAX_OOM_RETRIES times; recovery.log and plan.yaml say what changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from llmwizard.autotune.plan import Plan
from llmwizard.runner import diagnostics, recovery
from llmwizard.runner.export import METRICS_FILE, OUTPUT_DIR
from llmwizard.runner.launch import Launch
from llmwizard.runner.live import format_bytes, format_seconds, memory_line, watch
from llmwizard.runner.state import RunState, final_status
from llmwizard.runner.metrics import MetricsTail

# torch.distributed.elastic gives workers 30 s between SIGTERM and SIGKILL when torchrun shuts
# down; give a stopping run the same time to finish its step and write its checkpoint.
STOP_GRACE_S = 30.0
LOG_TAIL_LINES = 25


@dataclass
class Outcome:
    status: str                       # done | stopped | diverged | failed
    code: int                         # the launcher's exit status
    failure: recovery.Failure | None = None
    changes: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"done": 0, "stopped": 130}.get(self.status, 1)


def run_session(console: Console, plan: Plan, run_dir: Path, *, resume: bool = False) -> int:
    """Launch `run_dir` (exported from `plan`), follow it live, print the summary; the exit code."""
    if plan.model_source == "embedded":
        from llmwizard.autotune.embedded import ensure_embedded_model

        ensure_embedded_model()  # build once here, not concurrently in every rank
    output = run_dir / OUTPUT_DIR
    tail = MetricsTail(run_dir / METRICS_FILE)
    state = RunState()
    for record in tail.poll():  # earlier attempts stay in view without being printed again
        state.update(record)
    outcome = Outcome("failed", 1)
    if resume:
        outcome.notes += _prepare_resume(console, output)
    retries = 0
    with _sigterm_as_interrupt():
        while True:
            launch = Launch(run_dir, args=["--resume"] if resume else [], single_machine=plan.num_machines == 1)
            offset = _size(launch.log_path)
            console.print(f"Launching {plan.launcher} ({plan.strategy}, {plan.num_processes} process(es), "
                          f"micro-batch {plan.micro_batch} x {plan.grad_accum} accumulation); log: {launch.log_path}",
                          highlight=False)
            launch.start()
            try:
                code, state = watch(launch, run_dir / METRICS_FILE, console, title=plan.name, state=state, tail=tail)
            except KeyboardInterrupt:
                code = _stop(console, launch)
                for record in tail.poll():
                    state.update(record)
                outcome = Outcome("stopped", code, notes=outcome.notes, changes=outcome.changes)
                break
            failure = recovery.diagnose_failure(recovery.attempt_log(launch.log_path, offset), code)
            if failure is not None and failure.rank is None and plan.num_processes == 1:
                failure = dataclasses.replace(failure, rank=0)
            outcome = Outcome(final_status(state, code), code, failure, outcome.changes, notes=outcome.notes)
            if failure is not None and failure.kind == "cuda_oom" and retries < recovery.MAX_OOM_RETRIES:
                smaller = _replan_after_oom(console, plan, run_dir, state, failure)
                if smaller is not None:
                    retries += 1
                    plan = smaller[0]
                    outcome.changes.append(smaller[1])
                    resume = True
                    continue
            if failure is not None:
                log_text = recovery.attempt_log(launch.log_path, offset)
                outcome.log_tail = recovery.log_excerpt(log_text, failure, LOG_TAIL_LINES)
            break
    print_summary(console, plan, run_dir, state, outcome)
    return outcome.exit_code


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _prepare_resume(console: Console, output: Path) -> list[str]:
    notes = [f"{path.name}: its save was cut short, set aside so the run resumes from a complete checkpoint"
             for path in recovery.set_aside_incomplete(output)] if output.is_dir() else []
    last = recovery.last_checkpoint(output) if output.is_dir() else None
    notes.append(f"resumed from {last.relative_to(output.parent)}" if last else
                 "no checkpoint was saved before: started from the beginning")
    for note in notes:
        console.print(note, highlight=False)
    return notes


def _replan_after_oom(console: Console, plan: Plan, run_dir: Path, state: RunState,
                      failure: recovery.Failure) -> tuple[Plan, str] | None:
    """Half the micro-batch, same effective batch; export again and say so. None: nothing left."""
    from llmwizard.autotune.planner import shrink_micro_batch
    from llmwizard.runner.export import export

    who = f"rank {failure.rank}" if failure.rank is not None else "a rank"
    why = f"{who} ran out of GPU memory during step {state.step + 1}"
    smaller = shrink_micro_batch(plan, why, _model_spec(plan))
    if smaller is None:
        return None
    output = run_dir / OUTPUT_DIR
    last = None
    if output.is_dir():
        recovery.set_aside_incomplete(output)
        last = recovery.last_checkpoint(output)
    where = f"resuming from {last.name}" if last else "starting again (no checkpoint yet)"
    change = (f"{why}: micro-batch {plan.micro_batch} -> {smaller.micro_batch}, gradient accumulation "
              f"{plan.grad_accum} -> {smaller.grad_accum} (effective batch {smaller.effective_batch} unchanged); "
              f"{where}")
    export(smaller, run_dir)
    recovery.record_recovery(run_dir, change)
    console.print(Text(f"Out of GPU memory. {change}.", style="yellow"))
    return smaller, change


def _model_spec(plan: Plan):  # type: ignore[no-untyped-def]
    """The model's spec for re-estimating memory; None when it cannot be had offline."""
    try:
        from llmwizard.autotune.model_spec import load_model_spec

        return load_model_spec(None if plan.model_source == "embedded" else plan.model)
    except Exception:  # noqa: BLE001 (the estimate is a nicety; the re-plan works without it)
        return None


# ----------------------------------------------------------------------------- stopping

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


def _stop(console: Console, launch: Launch) -> int:
    """Stop with words on the console; a second Ctrl-C kills at once."""
    console.print("\nStopping: every rank saves a checkpoint at the end of its step ... "
                  "(Ctrl-C again to kill at once)", highlight=False)
    try:
        return launch.stop(STOP_GRACE_S)
    except KeyboardInterrupt:
        console.print("Killing the run (SIGKILL).", highlight=False)
        return launch.kill()


# ----------------------------------------------------------------------------- summary

def print_summary(console: Console, plan: Plan, run_dir: Path, state: RunState, outcome: Outcome) -> None:
    output = run_dir / OUTPUT_DIR
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    steps = f"{state.step}/{state.max_steps or '?'}" + (f" (epoch {state.epoch:.2f})" if state.epoch else "")
    table.add_row("steps", steps)
    if state.first_loss is not None and state.last_loss is not None:
        smoothed = state.smoothed_loss()
        table.add_row("loss", f"{state.first_loss:.4f} -> {state.last_loss:.4f}"
                      + (f" (smoothed {smoothed:.4f})" if smoothed is not None else ""))
    best_eval = state.best_eval()
    if state.eval_losses and best_eval:
        table.add_row("eval loss", f"{state.eval_losses[-1][1]:.4f} (best {best_eval[1]:.4f} at step {best_eval[0]})")
    best = recovery.best_checkpoint(run_dir, output) if output.is_dir() else None
    if best is not None:
        metric = f", eval loss {best.metric:.4f}" if best.metric is not None else ""
        held = "; output/ holds this model" if outcome.status in ("done", "diverged") else ""
        table.add_row("best checkpoint", f"{_rel(best.path, run_dir)} (step {best.step}{metric}, kept{held})")
    memory = memory_line(state)
    if memory is not None:
        table.add_row("peak memory", memory.plain.removeprefix("peak memory "))
    rate = state.average_tokens_per_second()
    if rate:
        table.add_row("throughput", f"{rate:,.0f} tokens/s (all ranks, evaluations and saves included)")
    table.add_row("wall time", f"{format_seconds(state.elapsed)} of training")
    for change in outcome.changes:
        table.add_row("recovered", change)
    for note in outcome.notes:
        table.add_row("note", note)
    table.add_row("run directory", str(run_dir))

    title, style = _status_rows(table, plan, run_dir, state, outcome, output)
    console.print(Panel(table, title=title, border_style=style, expand=False))
    # A stopped or failed run is judged as it stood: "still falling" would be no news.
    findings = state.findings(final=outcome.status == "done")
    if outcome.status == "diverged":
        findings = [f for f in findings if f.severity != diagnostics.STOP]  # already in the panel
    for finding in findings:
        console.print(_finding_text(finding))
    if outcome.failure is not None and outcome.log_tail:
        lines = [Text(line, no_wrap=True, overflow="ellipsis") for line in outcome.log_tail]
        console.print(Panel(Group(*lines), title=f"train.log (the lines before the error; full log: "
                            f"{run_dir / 'train.log'})", title_align="left", border_style="red"))
    if outcome.failure is not None:
        failure = outcome.failure
        body = Text(failure.message)
        if failure.evidence:
            body.append("\nseen in the log: ", style="dim")
            body.append(failure.evidence)
        if failure.kind == "disk_full":
            free = recovery.free_disk_bytes(run_dir)
            if free is not None:
                body.append(f"\nfree now on that disk: {format_bytes(free)}", style="dim")
        body.append("\nFix: ", style="bold")
        body.append(failure.fix)
        console.print(Panel(body, title=f"[bold red]{failure.title}[/]", border_style="red", expand=False))


def _status_rows(table: Table, plan: Plan, run_dir: Path, state: RunState, outcome: Outcome,
                 output: Path) -> tuple[str, str]:
    if outcome.status == "done":
        table.add_row("saved", str(output))
        return "[bold green]done[/]", "green"
    if outcome.status == "stopped":
        last = recovery.last_checkpoint(output) if output.is_dir() else None
        table.add_row("checkpoint", f"{_rel(last, run_dir)} (step {last.name.rsplit('-', 1)[-1]})" if last
                      else "none saved (stopped before the first step ended)")
        table.add_row("resume", f"llmwizard resume {run_dir}")
        return f"[bold yellow]stopped at step {state.step}[/]", "yellow"
    if outcome.status == "diverged":
        stop = state.stop or {}
        finding = stop.get("finding") or {}
        good = stop.get("good_checkpoint")
        table.add_row("diverged", f"{finding.get('message', 'the loss became NaN/Inf or spiked')}")
        if good and (run_dir / good).is_dir():
            later = [c.name for c in recovery.checkpoints(output) if _step(c.name) > _step(good)]
            table.add_row("good checkpoint", f"{good} (the last saved before the damage)"
                          + (f"; {', '.join(later)} {'holds' if len(later) == 1 else 'hold'} damaged weights"
                             if later else ""))
        else:
            table.add_row("good checkpoint", "none: no checkpoint was saved before the damage")
        if recovery.best_checkpoint(run_dir, output) is None:
            table.add_row("output/", "the weights at the stop: damaged, do not use them")
        table.add_row("fix", finding.get("fix") or "Lower the learning rate and start again.")
        return f"[bold red]stopped: training diverged at step {finding.get('step', state.step)}[/]", "red"
    failure = outcome.failure
    table.add_row("exit status", str(outcome.code))
    table.add_row("log", str(run_dir / "train.log"))
    return f"[bold red]training failed{': ' + failure.title if failure else ''}[/]", "red"


def _finding_text(finding: diagnostics.Finding) -> Group:
    mark, style = ("✖", "bold red") if finding.severity == diagnostics.STOP else ("⚠", "bold yellow")
    head = Text(f"{mark} {finding.title}: ", style=style)
    head.append(finding.message, style="")
    fix = Text("  Fix: ", style="bold")
    fix.append(finding.fix, style="")
    return Group(head, fix)


def _rel(path: Path | None, run_dir: Path) -> str:
    if path is None:
        return "-"
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)


def _step(name: str) -> int:
    suffix = name.rstrip("/").rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1
