"""The live view and the metrics stream: the panel at 80 and 120 columns, the plain lines for
pipes, and one real run (built to overfit) through the CLI with its metrics, evals and best checkpoint."""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import pytest
from rich.console import Console

from llmwizard.runner.session.live import ConsoleView, PlainPrinter, render
from llmwizard.runner.metrics import read_metrics
from llmwizard.runner.state import RunState
from llmwizard.runner.after.plot import loss_plot
from tests.conftest import run_cli

PLAIN_LINE = re.compile(r"^step (\d+)/(\d+)  epoch [\d.]+  loss [\d.]+  smoothed [\d.]+  (acc [\d.]+%  )?lr [\d.e+-]+  "
                        r"grad_norm [\d.]+  (tok/s \d+  )?peak_mem [\d,.]+(MiB|GiB)  elapsed [\d:]+  eta [\d:-]+$")


def records(steps: int = 30, max_steps: int = 60, ranks: int = 2) -> list[dict]:
    out: list[dict] = [{"type": "begin", "step": 0, "max_steps": max_steps, "num_train_epochs": 3.0,
                        "world_size": ranks, "logging_steps": 1, "learning_rate": 2e-4, "memory_kind": "cuda",
                        "time": 0.0}]
    for step in range(1, steps + 1):
        loss = 3.0 * 0.97 ** step + 0.05 * (-1) ** step
        out.append({"type": "log", "step": step, "max_steps": max_steps, "epoch": step / 20, "loss": loss,
                    "learning_rate": 2e-4, "grad_norm": 0.5, "tokens_seen": 4096 * step,
                    "peak_memory": 21 * 2**30, "rank_peak_memory": [21 * 2**30, 20 * 2**30 + rank_offset(step)][:ranks],
                    "time": step * 0.5})
        if step % 10 == 0:
            out.append({"type": "log", "step": step, "max_steps": max_steps, "epoch": step / 20,
                        "eval_loss": loss + 0.2, "time": step * 0.5})
            out.append({"type": "save", "step": step, "checkpoint": f"output/checkpoint-{step}"})
    return out


def rank_offset(step: int) -> int:
    return step * 2**20


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 36)])
def test_the_panel_fits_the_terminal_and_shows_everything(width, height):
    state = RunState.from_records(records())
    console = Console(width=width, height=height, record=True, force_terminal=True, color_system="truecolor")
    console.print(render(state, "tiny-llama-arithmetic", width, height))
    text = console.export_text()
    lines = text.splitlines()
    assert len(lines) < height, "the panel must leave the cursor line free"
    assert all(len(line) <= width for line in lines)
    losses = [r["loss"] for r in records() if "loss" in r]
    smoothed = sum(losses[-20:]) / 20  # the logs of the last 20 steps
    for needle in ("50% step 30/60", "epoch 1.50 of 3.00", "eta 0:15", f"loss {losses[-1]:.4f}",
                   f"smoothed {smoothed:.4f}", f"eval {losses[-1] + 0.2:.4f}",
                   "best eval", "lr 2.00e-04", "grad norm 0.500", "tokens/s 8,192", "r0 21.0 GiB",
                   "r1 20.0 GiB", "GPU, allocated", "train loss", "eval loss", "step 60"):
        assert needle in text, needle
    plot_rows = [line for line in lines if any("\u2800" <= ch <= "\u28ff" for ch in line)]
    assert len(plot_rows) >= 3


def test_the_plot_draws_train_and_eval_in_their_colours_over_the_whole_run():
    train = [(step, 3.0 - step / 30) for step in range(1, 31)]
    evals = [(10, 2.9), (20, 2.5), (30, 2.4)]
    rows = loss_plot(train, evals, max_steps=60, width=60, height=8)
    styles = {str(span.style) for row in rows for span in row.spans}
    assert {"cyan", "magenta"} <= styles
    plot = [row.plain for row in rows[:8]]
    drawn = [max((i for i, ch in enumerate(row) if "\u2801" <= ch <= "\u28ff"), default=0) for row in plot]
    assert max(drawn) < 60 * 0.6, "30 of 60 steps should fill about half of the plot's width"
    assert rows[-1].plain.rstrip().endswith("step 60")


def test_a_short_plot_labels_its_axis_with_the_highest_and_lowest_loss():
    train = [(1, 6.4045), (30, 2.74), (60, 3.05)]
    for height in (2, 3, 8):
        rows = loss_plot(train, [], max_steps=60, width=60, height=height)
        assert rows[0].plain.lstrip().startswith("6.40") and rows[height - 1].plain.lstrip().startswith("2.74"), height


def test_plain_output_is_one_line_per_logged_step_and_each_warning_once():
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    printer = PlainPrinter(console)
    state = RunState()
    flat = records()
    for record in flat:
        printer.record(state, record, state.update(record))
    printer.findings(state, final=True)
    lines = out.getvalue().splitlines()
    steps = [line for line in lines if PLAIN_LINE.match(line)]
    assert [int(PLAIN_LINE.match(line).group(1)) for line in steps] == list(range(1, 31))
    assert sum(line.startswith("step ") and "eval_loss" in line for line in lines) == 3
    assert lines[0] == "training: 60 steps, 2 process(es)"


@pytest.mark.slow
def test_a_real_run_streams_metrics_evals_and_keeps_the_best_checkpoint(tmp_path, write_jsonl):
    """32 rows of random answers, full fine-tuning for 20 epochs: the eval loss bottoms out and rises."""
    rng = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": f"Code {i}?"},
                          {"role": "assistant", "content": "".join(rng.choice("0123456789+-=") for _ in range(12))}]}
            for i in range(32)]
    data = write_jsonl(rows)
    run_dir = tmp_path / "run"
    result = run_cli("export", "--dataset", str(data), "--method", "full", "--learning-rate", "5e-3",
                     "--epochs", "20", "--eval-fraction", "0.25", "--micro-batch", "8", "--effective-batch", "8",
                     "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    result = run_cli("run", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    metrics = read_metrics(run_dir / "metrics.jsonl")
    begin = metrics[0]
    assert begin["type"] == "begin" and begin["max_steps"] == 60  # 24 training rows / 8 x 20 epochs
    every = begin["eval_steps"]
    assert begin["micro_batch"] == 8 and begin["memory_kind"] == "rss" and begin["vocab_size"] == 320
    losses = [r for r in metrics if r["type"] == "log" and "loss" in r]
    evals = [r for r in metrics if r["type"] == "log" and "eval_loss" in r]
    assert [r["step"] for r in losses] == list(range(1, 61, begin["logging_steps"]))[:len(losses)]
    assert losses[-1]["step"] == 60 or losses[-1]["step"] + begin["logging_steps"] > 60
    for record in losses:
        assert {"learning_rate", "grad_norm", "tokens_seen", "peak_memory", "epoch"} <= set(record)
        assert record["rank_peak_memory"] == [record["peak_memory"]] and record["peak_memory"] > 50 * 2**20
    assert [r["step"] for r in evals] == list(range(every, 61, every))
    assert metrics[-1]["type"] == "end" and metrics[-1]["reason"] == "completed"

    # The plain output: one line per logged step, one per evaluation, the overfitting warning once.
    lines = result.stdout.splitlines()
    assert [int(PLAIN_LINE.match(line).group(1)) for line in lines if PLAIN_LINE.match(line)] == \
        [r["step"] for r in losses]
    assert sum(" eval_loss " in line for line in lines) == len(evals)
    assert sum(line.startswith("warning: Overfitting") for line in lines) == 1

    # The best checkpoint by eval loss survives save_total_limit and the summary names it.
    best = min(evals, key=lambda r: r["eval_loss"])["step"]
    assert best < 60
    state = json.loads((run_dir / "output" / "checkpoint-60" / "trainer_state.json").read_text())
    assert state["best_global_step"] == best and Path(run_dir, state["best_model_checkpoint"]).is_dir()
    assert re.search(rf"best checkpoint +output/checkpoint-{best} \(step {best}\b", result.stdout), result.stdout[-2500:]
    assert "Overfitting" in result.stdout and f"at step {best}" in result.stdout


def test_the_terminal_view_follows_a_session_to_its_end(tmp_path: Path):
    """The rich Live path (a terminal): a RunSession over a real Launch whose launch.sh writes the metrics."""
    from llmwizard.runner.session.engine import RunSession
    from tests.test_session import exported

    run_dir = exported(tmp_path)
    lines = "".join(json.dumps(r) + "\n" for r in records(steps=12, max_steps=12, ranks=1))
    (run_dir / "stream.jsonl").write_text(lines)
    (run_dir / "launch.sh").write_text("sleep 0.3\ncat stream.jsonl >> metrics.jsonl\nsleep 0.3\n")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=30, color_system=None)
    view = ConsoleView(console, "terminal test", refresh_per_second=20)
    outcome = RunSession(app_plan(run_dir), run_dir, view, interval=0.05).run()
    assert outcome.exit_code == 0 and outcome.status == "done"
    assert view.state.step == 12 and len(view.state.losses) == 12 and view.state.eval_losses
    screen = out.getvalue()
    assert "terminal test" in screen and "step 12/12" in screen and "done" in screen
    assert "Launching" in screen and view.end is not None and view.end.summary.status == "done"


def app_plan(run_dir: Path):
    from llmwizard.autotune.plan import Plan

    return Plan.load(run_dir / "plan.yaml")


def test_the_plain_view_renders_each_event_as_the_console_always_printed_it():
    """Events in, the CLI's lines out: launch, the numbers, a finding once, a re-plan, a stop."""
    from llmwizard.runner.session import events
    from llmwizard.runner.diagnostics import Finding

    out = io.StringIO()
    view = ConsoleView(Console(file=out, width=200, force_terminal=False), "plain test")
    view(events.Started("accelerate (ddp, 2 process(es), micro-batch 16 x 1 accumulation)", "accelerate",
                        "/runs/x/train.log", 1))
    state = RunState()
    for record in records(steps=3, max_steps=60, ranks=2):
        view(events.Metrics(record, state.update(record), state.snapshot()))
    finding = Finding("plateau", "warning", 3, "Loss is flat", "It stopped falling.", "Raise the learning rate.")
    view(events.Finding(finding))
    view(events.Finding(finding))
    view(events.Recovery("oom_replan", "rank 0 ran out of GPU memory during step 4: micro-batch 16 -> 8",
                         (16, 8), (1, 2), 16, "checkpoint-2"))
    view(events.Stopping())
    lines = out.getvalue().splitlines()
    assert lines[0] == "Launching accelerate (ddp, 2 process(es), micro-batch 16 x 1 accumulation); log: " \
                       "/runs/x/train.log"
    assert lines[1] == "training: 60 steps, 2 process(es)"
    assert [int(PLAIN_LINE.match(line).group(1)) for line in lines if PLAIN_LINE.match(line)] == [1, 2, 3]
    assert lines.count("warning: Loss is flat: It stopped falling. Fix: Raise the learning rate.") == 1
    assert "Out of GPU memory. rank 0 ran out of GPU memory during step 4: micro-batch 16 -> 8." in lines
    assert lines[-1].startswith("Stopping: every rank saves a checkpoint") and view.status == "stopping"
    assert view.state.step == 3 and view.end is None


def test_a_stop_for_a_full_disk_says_which_checkpoint_was_skipped_and_which_is_kept():
    out = io.StringIO()
    printer = PlainPrinter(Console(file=out, width=200, force_terminal=False))
    state = RunState()
    stop = {"type": "stop", "step": 4, "reason": "disk_full", "skipped_checkpoint": "output/checkpoint-4",
            "needed_bytes": 2**30, "free_bytes": 2**20, "rank": 1, "good_checkpoint": "output/checkpoint-2"}
    printer.record(state, stop, state.update(stop))
    first = dict(stop, good_checkpoint=None)
    printer.record(state, first, state.update(first))
    assert out.getvalue().splitlines() == [
        "stopping at step 4 (disk full: checkpoint-4 skipped, output/checkpoint-2 kept)",
        "stopping at step 4 (disk full: checkpoint-4 skipped, no checkpoint saved before)"]


@pytest.mark.parametrize("width", [80, 120])
def test_next_token_accuracy_shows_beside_the_loss_train_and_eval(width):
    """TRL logs mean_token_accuracy (train) and eval_mean_token_accuracy; the panel, the plain lines
    and the wizard's numbers (the same lines) show both, and the panel still fits."""
    flat = records()
    for record in flat:
        if "loss" in record:
            record["mean_token_accuracy"] = 0.2 + record["step"] / 100
        if "eval_loss" in record:
            record["eval_mean_token_accuracy"] = 0.1 + record["step"] / 100
    state = RunState.from_records(flat)
    console = Console(width=width, height=30, record=True, force_terminal=True, color_system="truecolor")
    console.print(render(state, "tiny-llama-arithmetic", width, 30))
    text = console.export_text()
    assert all(len(line) <= width for line in text.splitlines())
    assert "acc 50.0%" in text and "eval acc 40.0%" in text

    out = io.StringIO()
    printer = PlainPrinter(Console(file=out, width=80, force_terminal=False))
    plain = RunState()
    for record in flat:
        printer.record(plain, record, plain.update(record))
    lines = out.getvalue().splitlines()
    assert any(line.startswith("step 30/60") and "acc 50.0%" in line for line in lines)
    assert any("eval_loss" in line and "eval_acc 40.0%" in line for line in lines)

    from llmwizard.wizard.core import metrics_lines

    assert "acc 50.0%" in " ".join(line.plain for line in metrics_lines(state))
