"""RunSession's events, from real launches of the embedded model on the CPU: a short run that
finishes, and a run stopped from another thread (as the wizard's Stop button does)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from llmwizard.runner.session import events
from llmwizard.runner.session.engine import RunSession


def exported(tmp_path: Path, **goals) -> Path:
    """A run directory exported from a real plan for this machine (the embedded model and data)."""
    from llmwizard.autotune.data.dataset import profile_dataset
    from llmwizard.autotune.embedded import EMBEDDED_DATASET, ensure_embedded_model
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import from_spec
    from llmwizard.autotune.model.model_spec import load_model_spec
    from llmwizard.autotune.plan.planner import plan
    from llmwizard.autotune.data.tokens import counter_for
    from llmwizard.runner.export import export

    profile = profile_dataset(EMBEDDED_DATASET, counter_for(ensure_embedded_model()))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    export(plan(from_spec("cpu"), load_model_spec(None), profile, Goals(**goals)), run_dir)
    return run_dir


def load_plan(run_dir: Path):
    from llmwizard.autotune.plan import Plan

    return Plan.load(run_dir / "plan.yaml")


def stopped_once(run_dir: Path, ready, *, seconds: float, interval: float, poll: float
                 ) -> tuple[RunSession, list[events.Event]]:
    """A session run in a thread, stopped from this one once `ready(events so far)` holds; it must end."""
    seen: list[events.Event] = []
    session = RunSession(load_plan(run_dir), run_dir, seen.append, interval=interval)
    worker = threading.Thread(target=session.run)
    worker.start()
    deadline = time.monotonic() + seconds
    while not ready(list(seen)):
        log = run_dir / "train.log"
        assert worker.is_alive(), log.read_text()[-3000:] if log.exists() else kinds(seen)
        assert time.monotonic() < deadline, f"not ready within {seconds:g} s: {kinds(seen)}"
        time.sleep(poll)
    session.stop()
    worker.join(120)
    assert not worker.is_alive(), "the session did not end after stop()"
    return session, seen


def kinds(seen: list[events.Event]) -> list[str]:
    """Event names with runs of Metrics folded into one, for comparing sequences."""
    out: list[str] = []
    for event in seen:
        name = type(event).__name__
        if not (out and out[-1] == name == "Metrics"):
            out.append(name)
    return out


@pytest.mark.slow
def test_a_short_run_starts_streams_metrics_and_finishes(tmp_path: Path):
    run_dir = exported(tmp_path, max_steps=4, eval_fraction=0)
    seen: list[events.Event] = []
    outcome = RunSession(load_plan(run_dir), run_dir, seen.append, interval=0.1).run()
    assert outcome.status == "done" and outcome.exit_code == 0, (run_dir / "train.log").read_text()[-3000:]

    names = kinds(seen)
    assert names[0] == "Started" and names[-1] == "Finished"
    assert set(names) <= {"Started", "Metrics", "Finding", "Finished"}, names
    started = seen[0]
    assert isinstance(started, events.Started) and started.attempt == 1
    assert started.log_path == str(run_dir / "train.log") and "micro-batch" in started.plan
    metrics = [e for e in seen if isinstance(e, events.Metrics)]
    assert metrics[0].record["type"] == "begin" and metrics[-1].record["type"] == "end"
    losses = [e.record["step"] for e in metrics if e.is_loss]
    assert losses == sorted(losses) and losses[-1] == 4
    # Each snapshot is the run as it stood then, not the live object that kept folding.
    assert metrics[0].state.step == 0 and metrics[-1].state.step == 4
    assert metrics[0].state.records is not metrics[-1].state.records

    finished = seen[-1]
    assert isinstance(finished, events.Finished) and finished.step == 4 and finished.exit_code == 0
    rows = dict(finished.summary.rows)
    assert finished.summary.title == "done" and rows["saved"] == str(run_dir / "output")
    assert rows["steps"].startswith("4/4") and rows["run directory"] == str(run_dir)
    assert (run_dir / "output" / "model.safetensors").is_file()  # the embedded model trains in full


@pytest.mark.slow
def test_stop_from_another_thread_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path):
    run_dir = exported(tmp_path, max_steps=2000, eval_fraction=0)
    session, seen = stopped_once(run_dir, lambda said: any(isinstance(e, events.Metrics) and e.is_loss for e in said),
                                 seconds=300, interval=0.1, poll=0.05)

    names = kinds(seen)
    assert names[0] == "Started" and "Stopping" in names and names[-1] == "Stopped", names
    stopped = seen[-1]
    assert isinstance(stopped, events.Stopped) and stopped.exit_code == 130
    assert stopped.resume_command == f"llmwizard resume {run_dir}"
    assert stopped.checkpoint == f"checkpoint-{stopped.step}" and 1 <= stopped.step < 2000
    assert (run_dir / "output" / stopped.checkpoint / "trainer_state.json").is_file()
    rows = dict(stopped.summary.rows)
    assert stopped.summary.title == f"stopped at step {stopped.step}"
    assert rows["resume"] == f"llmwizard resume {run_dir}"
    assert session.launch is not None and session.launch.poll() is not None and not session.running()


def test_a_run_stopped_before_its_first_step_is_listed_as_stopped_and_can_start_again(tmp_path: Path):
    from llmwizard.runner.metrics import read_metrics
    from llmwizard.runner.rundir import run_status

    run_dir = exported(tmp_path, max_steps=2000, eval_fraction=0)
    # stopped as soon as it started: the ranks are still importing their libraries
    _, seen = stopped_once(run_dir, lambda said: "Started" in kinds(said), seconds=60, interval=0.05, poll=0.01)
    assert kinds(seen)[-1] == "Stopped", kinds(seen)
    records = read_metrics(run_dir / "metrics.jsonl")
    assert not any(r["type"] == "begin" for r in records), records
    status = run_status(run_dir)
    assert (status.state, status.detail, status.step) == ("stopped", "stopped before the first step", 0)
    assert not status.has_progress  # nothing to lose: `llmwizard run` starts it again without --fresh


def test_a_failed_attempt_is_diagnosed_with_its_log_and_the_resume_command(tmp_path: Path):
    """launch.sh stands in for ranks that hit a full disk: the launcher's exit and log are real."""
    run_dir = exported(tmp_path, max_steps=4, eval_fraction=0)
    (run_dir / "launch.sh").write_text("echo 'loading'\necho 'OSError: [Errno 28] No space left on device' >&2\nexit 1\n")
    seen: list[events.Event] = []
    outcome = RunSession(load_plan(run_dir), run_dir, seen.append, interval=0.05).run()
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert kinds(seen) == ["Started", "Failed"]
    failed = seen[-1]
    assert isinstance(failed, events.Failed) and failed.failure is not None and failed.failure.kind == "disk_full"
    assert "No space left on device" in failed.failure.evidence and failed.log_excerpt == ()
    assert failed.resume_command == f"llmwizard resume {run_dir}"
    assert failed.summary.title == "training failed: Disk full" and failed.summary.free_disk is not None
    assert ("log", str(run_dir / "train.log")) in failed.summary.rows
    assert failed.summary.resume == f"llmwizard resume {run_dir} (starts again: no checkpoint was saved)"


@pytest.mark.slow
def test_a_python_error_in_a_rank_is_shown_in_our_words_and_its_traceback_kept_in_train_log(tmp_path: Path):
    """A value the trainer refuses (hand-written into sft_config.yaml, which the session launches
    as it is) raises in the rank: the console's summary and the wizard's run screen show the error
    line, the fix, the log's path and the resume command, and no traceback; train.log keeps it."""
    import io

    from rich.console import Console

    from llmwizard.runner.session.session import print_summary
    from llmwizard.wizard.core import summary_view

    run_dir = exported(tmp_path, max_steps=4, eval_fraction=0)
    config = run_dir / "sft_config.yaml"
    assert "\nlr_scheduler_type: cosine\n" in config.read_text()
    config.write_text(config.read_text().replace("\nlr_scheduler_type: cosine\n", "\nlr_scheduler_type: bogus\n"))
    seen: list[events.Event] = []
    outcome = RunSession(load_plan(run_dir), run_dir, seen.append, interval=0.1).run()
    log = (run_dir / "train.log").read_text()
    assert outcome.status == "failed" and outcome.exit_code == 1, log[-3000:]
    assert "Traceback (most recent call last):" in log and 'File "' in log
    failed = seen[-1]
    assert isinstance(failed, events.Failed) and failed.failure is not None and failed.failure.kind == "unknown"
    assert failed.failure.evidence.startswith("ValueError: bogus is not a valid SchedulerType")

    console, wizard = io.StringIO(), io.StringIO()
    print_summary(Console(file=console, width=120), failed.summary)
    Console(file=wizard, width=120).print(summary_view(failed.summary))
    for printed in (console.getvalue(), wizard.getvalue()):
        assert "Traceback" not in printed and 'File "' not in printed and "CalledProcessError" not in printed
        words = " ".join(printed.replace("│", " ").split())
        assert "training failed: Training failed" in words
        assert "Last error: ValueError: bogus is not a valid SchedulerType" in words
        assert f"full log: {run_dir / 'train.log'}" in words
        assert f"after the fix: llmwizard resume {run_dir} (starts again: no checkpoint was saved)" in words


def test_a_follower_that_detaches_leaves_the_run_going(tmp_path: Path):
    """The wizard quit with "leave running": the session stops following, the launch goes on."""
    run_dir = exported(tmp_path, max_steps=4, eval_fraction=0)
    (run_dir / "launch.sh").write_text("sleep 30\n")
    seen: list[events.Event] = []
    session = RunSession(load_plan(run_dir), run_dir, seen.append, interval=0.05)
    try:
        assert session.run(detached=lambda: True) is None
        assert kinds(seen) == ["Started"] and session.running()
    finally:
        session.launch.kill()
    assert not session.running()
