"""The commands that act on a run directory: run, resume, watch, stop, status, runs, and export's guard.

plan.yaml is the source of truth: `run` and `resume` load and check it, then export the other
run files from it again before launching, so what trains is what plan.yaml says. A file edited
by hand is never overwritten silently (llmwizard.runner.export.export_files). A directory where
training already happened is never trained over: `run` asks for `--fresh` (the earlier results
move to previous-<time>/), `resume` on a finished run says so and launches nothing. One trainer
per directory: the run lock (llmwizard.runner.runlock) is held from the first look until the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex  # commands in messages name paths as a shell reads them back
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from llmwizard.autotune.errors import UserError

# Exit codes of a run stopped by a signal: 128 + the signal number, as a shell reports them.
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


def edits_choice(args: argparse.Namespace) -> str:
    if getattr(args, "keep_edits", False):
        return "keep"
    if getattr(args, "discard_edits", False):
        return "discard"
    return "refuse"


def check_export_target(out: Path, force: bool) -> None:
    """`export --out DIR` writes into an empty or new directory; a non-empty one needs --force."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory.", title="Output directory",
                        fix="Pass a new or empty directory to --out.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    from llmwizard.runner import rundir
    from llmwizard.runner import runlock

    status = rundir.run_status(out)
    if status.state == "running" and status.pid is not None:
        raise runlock.already_running(out, status.pid)  # even with --force: files in use stay as they are
    if force:
        return
    what = {"finished": "a finished run", "running": "a running run", "stopped": "a stopped run",
            "diverged": "a diverged run", "failed": "a failed run", "exported": "an exported run"}.get(
        status.state, "files")
    raise UserError(f"{out} is not empty: it holds {what}. Exporting into it would replace its run files.",
                    title="Output directory",
                    fix=f"Choose a new directory, or pass --force to export over it (output/, checkpoints, "
                        f"metrics.jsonl and train.log are never touched; hand-edited files are kept as "
                        f"NAME.edited-<time>). To launch what is there: llmwizard run {shlex.quote(str(out))}")


def run_dir_of(target: Path) -> tuple[Path, Path]:
    """(run directory, plan file) for `llmwizard run TARGET` (a directory or its plan.yaml)."""
    if target.suffix in (".yaml", ".yml"):
        return target.parent, target
    return target, target / "plan.yaml"


def cmd_run(args: argparse.Namespace, resume: bool = False) -> int:
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner import rundir
    from llmwizard.runner import runlock
    from llmwizard.runner.export import LAUNCH_FILES, edited_files, edited_files_error, export_files
    from llmwizard.runner.preflight import check_plan

    console = Console()
    run_dir, plan_file = run_dir_of(Path(args.target))
    plan = Plan.load(plan_file)  # checked first: a bad value is named before anything changes
    # Then what needs this machine, the model and the data, and that the directory takes writes:
    # a key the run cannot carry out is refused here, by name, before the lock or an export changes it.
    rundir.check_writable(run_dir, LAUNCH_FILES)
    check_plan(plan, plan_file)
    with runlock.hold(run_dir) as lock:
        for note in lock.notes:
            console.print(f"note: {note}", style="yellow", highlight=False)
        status = rundir.run_status(run_dir)
        if resume and status.state == "finished":
            console.print(f"{run_dir} already finished at step {status.step}/{status.max_steps or '?'} "
                          f"({status.detail} holds the final model). Nothing to resume; "
                          f"`llmwizard run {shlex.quote(str(run_dir))} --fresh` trains it again from the start.",
                          highlight=False)
            return 0
        choice = edits_choice(args)
        if choice == "refuse":  # before anything moves: a refusal leaves the directory as it was
            edited = edited_files(plan, run_dir)
            if edited:
                raise edited_files_error(run_dir, edited, rundir.read_manifest(run_dir) is None)
        if not resume and status.has_progress:
            if not getattr(args, "fresh", False):
                raise trained_here_error(run_dir, status)
            moved = rundir.set_aside(run_dir)
            if moved is not None:
                console.print(f"The earlier run's results are kept in {moved}.", highlight=False)
        report = export_files(plan, run_dir, edits=choice)
        for note in report.notes:
            console.print(f"note: {note}", style="yellow", highlight=False)
        from llmwizard.runner.session.session import run_session

        with signals_seen() as seen:
            code = run_session(console, plan, run_dir, resume=resume, probe=getattr(args, "probe", None))
    return exit_code(code, seen)


def trained_here_error(run_dir: Path, status: object) -> UserError:
    from llmwizard.runner.rundir import RunStatus

    assert isinstance(status, RunStatus)
    where = f"step {status.step}/{status.max_steps or '?'}"
    if status.state == "finished":
        what = f"already finished ({where}; {status.detail} holds the final model)"
        fix = f"Pass --fresh to train it again from the start (the earlier output/, metrics.jsonl and train.log "\
              f"move to {run_dir}/previous-<time>/; nothing is deleted)."
    else:
        what = f"was trained before ({status.state} at {where}, last checkpoint {status.checkpoint or 'none'})"
        fix = f"`llmwizard resume {shlex.quote(str(run_dir))}` continues it; --fresh starts again from the " \
              f"beginning (the earlier results move to {run_dir}/previous-<time>/)."
    return UserError(f"{run_dir} {what}. Running it again would overwrite its checkpoints and repeat its steps.",
                     title="Run directory", fix=fix)


def cmd_stop(args: argparse.Namespace) -> int:
    from llmwizard.runner import recovery
    from llmwizard.runner import runlock
    from llmwizard.runner.export.configs import OUTPUT_DIR

    run_dir = Path(args.target)
    if not run_dir.is_dir():
        raise UserError(f"Run directory not found: {run_dir}", title="Run directory",
                        fix="Pass a run directory (see `llmwizard status`).")
    if not (math.isfinite(args.grace) and args.grace > 0):
        raise UserError(f"--grace must be a positive number of seconds, not {args.grace}.", title="Grace period",
                        fix="Pass e.g. --grace 30.")
    console = Console()
    was_running, done = runlock.stop_run(run_dir, args.grace)
    for line in done:
        console.print(line, highlight=False)
    if not was_running:
        console.print(f"Nothing is running in {run_dir}.", highlight=False)
        return 0
    output = run_dir / OUTPUT_DIR
    last = recovery.last_checkpoint(output) if output.is_dir() else None
    console.print(f"Stopped. Last checkpoint: {last.relative_to(run_dir) if last else 'none'}; "
                  f"`llmwizard resume {shlex.quote(str(run_dir))}` continues.", highlight=False)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from llmwizard.runner import rundir
    from llmwizard.runner.after.runs import run_dirs, run_problems

    root = runs_root(args.target)
    runs = run_dirs(root)
    rows = [(path, rundir.run_status(path), run_problems(path)) for path in runs]
    if args.json:
        print(json.dumps([{"run_dir": str(path), "state": s.state, "step": s.step, "max_steps": s.max_steps,
                           "detail": s.detail, "pid": s.pid, "checkpoint": s.checkpoint, "problems": problems}
                          for path, s, problems in rows], indent=2))
        return 0
    console = Console()
    if not rows:
        console.print(f"No run directories under {root}.", highlight=False)
        return 0
    cells = [[_name_under(root, path), s.state, f"{s.step}/{s.max_steps or '?'}", s.checkpoint or "-", s.detail]
             for path, s, _ in rows]
    console.print(_fitted_table(console.width, ["run", "state", "steps", "last checkpoint", "detail"], cells,
                                drop=["detail", "last checkpoint"]))
    console.print(f"{len(rows)} run(s) under {root}", style="dim", highlight=False, markup=False)
    for path, _, problems in rows:  # damaged files, named (llmwizard.runner.after.runs.run_problems)
        for problem in problems:
            console.print(f"! {path.name}: {problem}", style="yellow", highlight=False, markup=False)
    return 0


def runs_root(target: str | None) -> Path:
    """The directory `status` and `runs` look in: TARGET, else . when it is a run, else ./runs."""
    from llmwizard.runner import rundir

    if target:
        root = Path(target)
        if not root.is_dir():
            raise UserError(f"Directory not found: {root}", title="Run directory",
                            fix="Pass a run directory or a directory of runs (default: ./ or ./runs).")
        return root
    return Path.cwd() if rundir.is_run_dir(Path.cwd()) or not Path("runs").is_dir() else Path("runs")


def cmd_runs(args: argparse.Namespace) -> int:
    """The runs under a directory: state, steps, final train and eval loss, duration and size."""
    from rich.text import Text

    from llmwizard.runner.after.runs import RunRow, list_runs
    from llmwizard.runner.after.summary import format_bytes, format_seconds

    root = runs_root(args.target)
    rows = list_runs(root)
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
        return 0
    console = Console()
    if not rows:
        console.print(f"No run directories under {root}.", highlight=False)
        return 0
    styles = {"finished": "green", "running": "cyan", "stopped": "yellow", "diverged": "red", "failed": "red"}

    def number(value: float | None, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def accuracy(row: RunRow) -> float | None:
        """SFT's next-token accuracy; a DPO or ORPO run's reward accuracy (pairs ranked right)."""
        return row.mean_token_accuracy if row.task == "sft" else row.reward_accuracy

    tasks = any(row.task != "sft" for row in rows)      # SFT alone: the table as it always was
    rewards = any(row.task == "grpo" for row in rows)
    cells = [[row.name, Text(row.state, style=styles.get(row.state, "dim")),
              *([row.task] if tasks else []), f"{row.step}/{row.max_steps or '?'}",
              number(row.train_loss), number(row.eval_loss),
              "-" if accuracy(row) is None else f"{accuracy(row):.1%}",
              *([number(row.reward, 3)] if rewards else []),
              format_seconds(row.duration_s), format_bytes(row.size_bytes)] for row in rows]
    headers = ["run", "state", *(["task"] if tasks else []), "steps", "loss", "eval", "acc",
               *(["reward"] if rewards else []), "time", "size"]
    table = _fitted_table(console.width, headers, cells,
                          drop=["size", "time", *(["task"] if tasks else []), "acc", "eval", "loss"])
    shown = {str(column.header) for column in table.columns}
    table.caption = " · ".join(words for key, words in (
        ("loss", "loss: the last training loss"), ("eval", "eval: the last eval loss"),
        ("acc", "acc: next-token accuracy" + (" (sft), reward accuracy (dpo, orpo)" if tasks else "")),
        ("reward", "reward: GRPO's mean reward"), ("time", "time: training time")) if key in shown)
    table.caption_justify = "left"
    console.print(table)
    for row in rows:  # damaged files, named (llmwizard.runner.after.runs.run_problems)
        for problem in row.problems:
            console.print(f"! {row.name}: {problem}", style="yellow", highlight=False, markup=False)
    console.print(f"{len(rows)} run(s) under {root}", style="dim", highlight=False, markup=False)
    return 0


def _name_under(root: Path, path: Path) -> str:
    """A run as typed from where the runs are listed: its path under `root`, else the whole path."""
    try:
        return str(path.relative_to(root)) if path != root else str(path)
    except ValueError:
        return str(path)


_NUMBERS = ("steps", "loss", "eval", "acc", "reward", "time", "size")


def _fitted_table(width: int, headers: list[str], rows: list[list[Any]], drop: list[str]) -> Table:
    """A table whose first column (the run's name, which a user types back) never wraps: at a narrow
    width the columns in `drop` go first, in that order; only when the rest is still too wide does the
    name fold. Cells are Text (a `[` in a directory name is not markup)."""
    from rich.cells import cell_len
    from rich.text import Text

    cells = [[cell if isinstance(cell, Text) else Text(str(cell)) for cell in row] for row in rows]

    def needed(columns: list[int], pad: int = 2) -> int:  # each cell is padded on both sides
        return sum(max([len(headers[i])] + [cell_len(row[i].plain) for row in cells]) + 2 * pad for i in columns)

    keep = list(range(len(headers)))
    for name in drop:
        if needed(keep) <= width:
            break
        keep.remove(headers.index(name))
    pad = 2 if needed(keep) <= width else 1
    table = Table(box=None, padding=(0, pad))
    for i in keep:
        table.add_column(headers[i], no_wrap=i > 0 or needed(keep, pad) <= width, overflow="fold",
                         justify="right" if headers[i] in _NUMBERS else "left")
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    return table


class _Followed:
    """What llmwizard.runner.session.live.watch needs of a launch, for a run another process started:
    running while its lock is live (or its ranks work in the directory); read-only."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.code: int | None = None

    def poll(self) -> int | None:
        from llmwizard.runner import rundir

        if self.code is None:
            status = rundir.run_status(self.run_dir)
            if status.state != "running":
                self.code = 0 if status.state == "finished" else 1
        return self.code

    def wait(self, timeout: float | None = None) -> int:
        while self.poll() is None:
            time.sleep(0.5)
        assert self.code is not None
        return self.code


def cmd_watch(args: argparse.Namespace) -> int:
    """The live view of a run that another process owns, read from its metrics file alone."""
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.session import events
    from llmwizard.runner import rundir
    from llmwizard.runner.export.configs import METRICS_FILE
    from llmwizard.runner.session.live import ConsoleView
    from llmwizard.runner.metrics import MetricsTail
    from llmwizard.runner.after.runs import run_problems
    from llmwizard.runner.session.session import print_summary
    from llmwizard.runner.state import RunState, final_status
    from llmwizard.runner.after.summary import Outcome, build_summary

    run_dir = Path(args.target)
    if not run_dir.is_dir() or not rundir.is_run_dir(run_dir):
        Plan.load(run_dir / "plan.yaml")  # says what is wrong: no run directory, no plan.yaml
    console = Console()
    status = rundir.run_status(run_dir)
    problems = run_problems(run_dir)  # damaged files, named; watching reads around them
    for problem in problems:
        console.print(f"! {problem}", style="yellow", highlight=False, markup=False)
    if status.state != "running":
        console.print(f"{run_dir} is not running: {status.state} at step {status.step}/{status.max_steps or '?'} "
                      f"({status.detail}).", highlight=False, markup=False)
        ended = RunState.read(run_dir / METRICS_FILE)
        if ended.began:  # a run that trained: what it came to (losses, best checkpoint, report, samples)
            words = {"finished": "done"}.get(status.state, status.state)
            notes = [ended.damage] if ended.damage else []
            print_summary(console, build_summary(run_dir, ended, Outcome(words, 0, notes=notes)))
        return 0
    try:
        title = Plan.load(run_dir / "plan.yaml").name
    except UserError:  # named above; the view needs no more of the plan than its name
        title = run_dir.name
    console.print(f"Following {run_dir} (pid {status.pid}); Ctrl-C stops following, not the run.", highlight=False,
                  markup=False)
    view, tail, state, followed = ConsoleView(console, title), MetricsTail(run_dir / METRICS_FILE), RunState(), \
        _Followed(run_dir)
    view.start()
    try:
        while True:
            code = followed.poll()
            for record in tail.poll():
                is_loss = state.update(record)
                view(events.Metrics(record, is_loss, state.snapshot()))
            if code is not None:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        view.close()
        console.print(f"\nStopped following; the run goes on (`llmwizard stop {shlex.quote(str(run_dir))}` stops it).",
                      highlight=False)
        return EXIT_SIGINT
    view.close()
    damage = [note for note in (tail.damage(),) if note]  # "N damaged lines skipped in PATH"
    print_summary(console, build_summary(run_dir, state, Outcome(final_status(state, code), code, notes=damage)))
    return code


@contextlib.contextmanager
def signals_seen() -> Iterator[set[int]]:
    """The signals that reach this process inside the block, whoever handles them: the C-level
    handler writes each one's number to the wakeup fd (signal.set_wakeup_fd), so a SIGTERM that
    the session turns into a stop is told apart from Ctrl-C."""
    seen: set[int] = set()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        yield seen
    finally:
        signal.set_wakeup_fd(previous)
        with contextlib.suppress(BlockingIOError, OSError):
            seen.update(reader.recv(4096))
        reader.close()
        writer.close()


def exit_code(code: int, seen: set[int]) -> int:
    """A run stopped by SIGTERM exits 143, by Ctrl-C 130 (128 + the signal, as shells report it)."""
    if code == EXIT_SIGINT and signal.SIGTERM in seen and signal.SIGINT not in seen:
        return EXIT_SIGTERM
    return code
