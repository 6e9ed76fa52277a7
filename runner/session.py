"""A training session as the faces run it: launch an exported run directory, watch it, summarise.

The CLI (headless, `run`, `resume`) calls `run_session`; the wizard drives `Launch` and
`RunState` itself. A failed or stopped run keeps its directory whole: plan, log, metrics and
checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from autotune.plan import Plan
from runner.export import METRICS_FILE, OUTPUT_DIR
from runner.launch import Launch
from runner.live import RunState, watch


def run_session(console: Console, plan: Plan, run_dir: Path, *, resume: bool = False) -> int:
    """Launch `run_dir` (exported from `plan`), follow it live, print the summary; the exit code."""
    if plan.model_source == "embedded":
        from autotune.embedded import ensure_embedded_model

        ensure_embedded_model()  # build once here, not concurrently in every rank
    launch = Launch(run_dir, args=["--resume"] if resume else [], single_machine=plan.num_machines == 1)
    console.print(f"Launching {plan.launcher} ({plan.strategy}, {plan.num_processes} process(es)); "
                  f"log: {launch.log_path}")
    launch.start()
    try:
        code, state = watch(launch, run_dir / METRICS_FILE, console, title=plan.name)
    except KeyboardInterrupt:
        console.print("\nStopping: the run saves a checkpoint when it can ...")
        launch.stop()
        console.print(f"Stopped. Plan, log and checkpoints stay in {run_dir}")
        return 130
    print_summary(console, plan, run_dir, state, code, launch.log_tail(30), run_dir / OUTPUT_DIR)
    return 0 if code == 0 else 1


def print_summary(console: Console, plan: Plan, run_dir: Path, state: RunState, code: int,
                  log_tail: list[str], output: Path) -> None:
    table = Table.grid(padding=(0, 2))
    if state.first_loss is not None and state.last_loss is not None:
        table.add_row("loss", f"{state.first_loss:.4f} -> {state.last_loss:.4f}")
    if state.eval_losses:
        best_step, best = min(state.eval_losses, key=lambda item: item[1])
        table.add_row("eval loss", f"{state.eval_losses[-1][1]:.4f} (best {best:.4f} at step {best_step})")
    table.add_row("steps", f"{state.step}/{state.max_steps}")
    table.add_row("wall time", f"{state.elapsed:.1f} s of training")
    table.add_row("run directory", str(run_dir))
    if code == 0:
        table.add_row("saved", str(output))
        console.print(Panel(table, title="[bold green]done[/]", border_style="green", expand=False))
        return
    table.add_row("exit code", str(code))
    table.add_row("log", str(run_dir / "train.log"))
    console.print(Panel(table, title="[bold red]training failed[/]", border_style="red", expand=False))
    if log_tail:
        console.print(Panel("\n".join(log_tail), title="last lines of train.log", border_style="red"),
                      highlight=False, markup=False)
