"""Ctrl-C mid-run saves a checkpoint and ends every process; `llmwizard resume` continues the
step count from it to the end. A near-zero learning rate also makes the plateau diagnosis real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmwizard.runner.metrics import read_metrics
from tests.conftest import run_cli


def processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is `directory` (the launcher and its ranks run there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def logged_steps(path: Path) -> list[int]:
    return [r["step"] for r in read_metrics(path) if r.get("type") == "log" and "loss" in r]


STEPS = 300


def ctrl_c_delivered() -> None:
    """SIGINT as a terminal's foreground job has it: a suite started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_continues_the_step_count(tmp_path):
    run_dir = (tmp_path / "run").resolve()
    # Long enough that SIGINT lands mid-run however fast the machine: the tiny model can take 16
    # steps in under a second, faster than a signal at step 2 is acted on.
    result = run_cli("export", "--max-steps", str(STEPS), "--learning-rate", "1e-7", "--eval-fraction", "0",
                     "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    metrics = run_dir / "metrics.jsonl"

    child = subprocess.Popen([sys.executable, "-m", "llmwizard.wizard.cli", "run", str(run_dir)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, COLUMNS="120"), preexec_fn=ctrl_c_delivered)
    deadline = time.monotonic() + 300
    while not [s for s in logged_steps(metrics) if s >= 2]:
        assert child.poll() is None, child.stdout.read()
        assert time.monotonic() < deadline, "no training step within 300 s"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to llmwizard
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 130, out

    records = read_metrics(metrics)
    (stop,) = [r for r in records if r["type"] == "stop"]
    stopped = stop["step"]
    assert stop["reason"] == "signal" and stop["signal"] == "SIGTERM"
    assert 2 <= stopped < STEPS, "the run should stop mid-way"
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "stopped"
    checkpoint = run_dir / "output" / f"checkpoint-{stopped}"
    assert (checkpoint / "trainer_state.json").is_file(), "no checkpoint saved at the stop"
    assert processes_in(run_dir) == [], "processes of the run outlived the stop"
    assert f"stopped at step {stopped}" in out and f"llmwizard resume {run_dir}" in out

    # An edit of plan.yaml applies from the resumed step (and keeps this test short): fewer steps.
    plan_file = run_dir / "plan.yaml"
    every = int(re.search(r"^logging_steps: (\d+)$", plan_file.read_text(), flags=re.M).group(1))
    end = (stopped // every + 10) * every  # a logged step
    plan_file.write_text(re.sub(rf"^max_steps: {STEPS}$", f"max_steps: {end}", plan_file.read_text(), flags=re.M))
    result = run_cli("resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = read_metrics(metrics)
    begins = [r for r in records if r["type"] == "begin"]
    assert [b["step"] for b in begins] == [0, stopped] and begins[-1]["max_steps"] == end
    steps = logged_steps(metrics)
    assert steps == sorted(set(steps)) and steps[-1] == end, "each logged step once, continuing after the checkpoint"
    assert [s for s in steps if s > stopped], "nothing logged after the resume"
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "completed" and records[-1]["step"] == end
    assert f"resumed from output/checkpoint-{stopped}" in result.stdout
    assert "Loss is flat" in result.stdout and "Raise the learning rate" in result.stdout
