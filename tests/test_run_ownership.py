"""A run always has someone attached: when llmwizard's output pipe closes or its terminal hangs up,
the run stops with a checkpoint as Ctrl-C stops it, and no trainer is left running unseen.

The real `llmwizard run DIR` of an exported embedded-model run on the CPU; the tests find the
trainer through the run lock's launcher pid (its process group) and the run directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llmwizard.runner.session import events
from llmwizard.runner import runlock
from llmwizard.runner.session.engine import RunSession
from llmwizard.runner.metrics import read_metrics
from llmwizard.runner.session.output import SafeOutput
from llmwizard.runner.rundir import run_status
from tests.conftest import run_cli

# Time for a stopped run to save its checkpoint and exit (the session's grace is 30 s; the other test
# worker may be loading the CPU meanwhile), and for the first step of the embedded model on a loaded CPU.
STOP_TIMEOUT_S = 240
FIRST_STEP_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def exported_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export of the embedded default with many steps; each test runs a copy of it."""
    run_dir = tmp_path_factory.mktemp("template") / "run"
    result = run_cli("export", "--max-steps", "2000", "--eval-fraction", "0", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture()
def run_dir(exported_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(exported_template, target)
    return target


def start_run(run_dir: Path, stdout: int | object) -> subprocess.Popen[bytes]:
    """`llmwizard run DIR`, as a user starts it, with stdout where the test says."""
    with (run_dir.parent / "stderr.txt").open("wb") as stderr:
        return subprocess.Popen([sys.executable, "-m", "llmwizard.wizard.cli", "run", str(run_dir)],
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,  # type: ignore[arg-type]
                                # unbuffered: a file is block-buffered, and the test reads the first step line
                                # as it is printed (buffered, it can arrive when the run is over)
                                env=dict(os.environ, COLUMNS="120", PYTHONUNBUFFERED="1"), cwd=run_dir.parent)


def launcher_group(run_dir: Path) -> int:
    """The launcher's pid (its process group holds every rank) from the run lock, once it is set."""
    deadline = time.monotonic() + FIRST_STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        info = runlock.read_lock(run_dir)
        if info is not None and info.launcher_pid:
            return info.launcher_pid
        time.sleep(0.1)
    raise AssertionError("the run lock never named a launcher")


def group_members(group: int) -> list[psutil.Process]:
    """Live (not zombie) processes of a process group."""
    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def assert_stopped_with_nothing_left(run_dir: Path, group: int, process: subprocess.Popen[bytes], code: int) -> None:
    """llmwizard exited with `code`, no trainer is left, the run says stopped and kept its checkpoint."""
    try:
        process.wait(STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
        for leftover in group_members(group) + runlock.train_processes(run_dir):
            leftover.kill()
    stderr = (run_dir.parent / "stderr.txt").read_text(errors="replace")
    assert process.returncode == code, stderr[-3000:] + (run_dir / "train.log").read_text(errors="replace")[-3000:]
    assert "Traceback" not in stderr
    assert group_members(group) == [] and runlock.train_processes(run_dir) == []
    assert runlock.read_lock(run_dir) is None  # released, not left to look stale
    status = run_status(run_dir)
    assert status.state == "stopped", status
    records = read_metrics(run_dir / "metrics.jsonl")
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "stopped"
    assert (run_dir / "plan.yaml").is_file() and (run_dir / "train.log").is_file()
    saved = [r for r in records if r["type"] == "save"]
    assert saved, "the first step was logged, so the stop saves a checkpoint"
    assert (run_dir / saved[-1]["checkpoint"] / "trainer_state.json").is_file()


@pytest.mark.slow
def test_a_closed_output_pipe_stops_the_run_with_a_checkpoint(run_dir: Path):
    """`llmwizard run DIR | head -3`: head exits after three lines and the pipe closes."""
    process = start_run(run_dir, subprocess.PIPE)
    assert process.stdout is not None
    group = launcher_group(run_dir)
    lines: list[bytes] = []
    deadline = time.monotonic() + FIRST_STEP_TIMEOUT_S
    while not any(line.startswith(b"step ") for line in lines):
        line = process.stdout.readline()
        assert line and time.monotonic() < deadline, b"".join(lines).decode(errors="replace")
        lines.append(line)
    process.stdout.close()  # the reader is gone
    assert_stopped_with_nothing_left(run_dir, group, process, 141)
    assert "the output pipe closed" in (run_dir / "train.log").read_text(errors="replace")


@pytest.mark.slow
def test_a_hangup_stops_the_run_with_a_checkpoint(run_dir: Path):
    """SIGHUP (the terminal closed) after the first metrics line: stopped like Ctrl-C, exit 129."""
    output = run_dir.parent / "stdout.txt"
    with output.open("wb") as handle:
        process = start_run(run_dir, handle)
    group = launcher_group(run_dir)
    deadline = time.monotonic() + FIRST_STEP_TIMEOUT_S
    while "\nstep " not in output.read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, output.read_text(errors="replace")
        time.sleep(0.1)
    process.send_signal(signal.SIGHUP)
    assert_stopped_with_nothing_left(run_dir, group, process, 129)
    assert "the terminal hung up (SIGHUP)" in (run_dir / "train.log").read_text(errors="replace")
    assert "llmwizard resume" in output.read_text(errors="replace")  # the summary still went to the file


def test_a_pipe_closed_before_the_launch_starts_nothing(tmp_path: Path):
    """`llmwizard --preset cpu-debug --yes | true`: nobody reads even the plan, so no run starts;
    the directory says stopped and nothing trains."""
    process = subprocess.Popen([sys.executable, "-m", "llmwizard.wizard.cli", "--preset", "cpu-debug", "--yes",
                                "--output-dir", str(tmp_path / "runs")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=tmp_path)
    assert process.stdout is not None
    process.stdout.close()
    _, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    assert process.returncode == 141, stderr.decode(errors="replace")[-3000:]
    assert b"Traceback" not in stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert runlock.train_processes(run_dir) == [] and runlock.read_lock(run_dir) is None
    assert run_status(run_dir).state == "stopped"
    assert not (run_dir / "output").exists()


def test_output_after_the_reader_left_never_raises(tmp_path: Path):
    """The one writer every print goes through: a write to a closed pipe is dropped, the owner is
    told once, and a closed pipe is seen without writing to it."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w", buffering=1)
    output = SafeOutput(stream)
    told: list[str] = []
    output.on_gone(lambda: told.append("gone"))
    assert output.write("first line\n") == len("first line\n") and not output.reader_gone()
    os.close(read_end)
    assert output.reader_gone() and told == ["gone"]
    assert output.write("x" * 100_000) == 100_000
    output.flush()
    assert told == ["gone"]
    late: list[str] = []
    output.on_gone(lambda: late.append("gone"))  # asked after the fact: told at once
    assert late == ["gone"]
    stream.close()  # the descriptor now points at /dev/null: closing flushes without an error


def test_a_follower_that_fails_stops_its_run(tmp_path: Path, exported_template: Path):
    """A view that raises (any error of the follower) must not orphan the run: the session stops the
    launch before the error goes on, and the run lock is released."""
    from llmwizard.autotune.plan import Plan

    run_dir = tmp_path / "run"
    shutil.copytree(exported_template, run_dir)
    (run_dir / "launch.sh").write_text("sleep 60\n")  # a launcher that outlives the follower

    def view(event: events.Event) -> None:
        if isinstance(event, events.Started):
            raise RuntimeError("the view broke")

    session = RunSession(Plan.load(run_dir / "plan.yaml"), run_dir, view, grace=5)
    with pytest.raises(RuntimeError, match="the view broke"):
        session.run()
    assert session.launch is not None and not session.running()
    assert runlock.read_lock(run_dir) is None
