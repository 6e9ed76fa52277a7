"""A run directory keeps what it holds: plan.yaml is what trains, hand edits and earlier results are
never overwritten silently, and one trainer works in a directory at a time.

Real `llmwizard` commands and real launches of the embedded tiny model. Every refusal is checked
for exit code 2, no traceback, and a directory whose files hash the same before and after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.plan import Plan
from llmwizard.runner import runlock
from llmwizard.runner.export import export, export_files
from llmwizard.runner.metrics import read_metrics
from llmwizard.runner.rundir import MANIFEST_FILE, read_manifest, sha256_file
from tests.conftest import run_cli

slow = pytest.mark.slow
RUN_FILES = ("plan.yaml", "accelerate_config.yaml", "sft_config.yaml", "launch.sh", "README.txt", MANIFEST_FILE)


def snapshot(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    flat = " ".join(out.replace("│", " ").split())
    for word in words:
        assert word in flat, f"{word!r} not in:\n{out[-3000:]}"


def logged_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("type") == "log" and "loss" in r]


def wait_for_step(run_dir: Path, child: subprocess.Popen[str], step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not [s for s in logged_steps(run_dir) if s >= step]:
        assert child.poll() is None, child.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"no step {step} within {timeout} s"
        time.sleep(0.1)


def start_cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "llmwizard.wizard.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, COLUMNS="120"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real finished run: exported for 3 steps, plan.yaml then edited to 2, run. (dir, stdout)"""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli("export", "--max-steps", "3", "--eval-fraction", "0", "--method", "lora", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    plan = run_dir / "plan.yaml"
    plan.write_text(plan.read_text().replace("\nmax_steps: 3\n", "\nmax_steps: 2\n"))
    result = run_cli("run", str(run_dir), cwd=run_dir.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result.stdout


@pytest.fixture()
def finished_copy(finished: tuple[Path, str], tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy, symlinks=True)
    return copy


def _exported(tmp_path: Path, *args: str) -> Path:
    run_dir = tmp_path / "run"
    result = run_cli("export", "--eval-fraction", "0", *args, "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


# ----------------------------------------------------------------------------- export

def test_the_manifest_records_each_file_and_the_plan(tmp_path: Path):
    run_dir = _exported(tmp_path, "--max-steps", "4")
    manifest = read_manifest(run_dir)
    assert manifest is not None
    assert set(manifest.files) == {"plan.yaml", "accelerate_config.yaml", "sft_config.yaml", "launch.sh", "README.txt"}
    for name, digest in manifest.files.items():
        assert sha256_file(run_dir / name) == digest, name
    assert Plan.load(run_dir / "plan.yaml").to_dict()["max_steps"] == manifest.plan["max_steps"] == 4


def test_export_refuses_a_non_empty_directory(tmp_path: Path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my notes\n")
    before = snapshot(target)
    assert_refused(run_cli("export", "--out", str(target), cwd=tmp_path), "is not empty", "--force")
    assert snapshot(target) == before

    run_dir = _exported(tmp_path, "--max-steps", "4")
    before = snapshot(run_dir)
    assert_refused(run_cli("export", "--max-steps", "9", "--out", str(run_dir), cwd=tmp_path),
                   "holds an exported run", "--force")
    assert snapshot(run_dir) == before


def test_export_force_never_touches_results_and_keeps_edits(finished_copy: Path, tmp_path: Path):
    run_dir = finished_copy
    results = {k: v for k, v in snapshot(run_dir).items() if k.split("/")[0] in ("output", "metrics.jsonl", "train.log")}
    assert "output/adapter_model.safetensors" in results and "metrics.jsonl" in results
    before = snapshot(run_dir)
    assert_refused(run_cli("export", "--max-steps", "9", "--out", str(run_dir), cwd=tmp_path), "finished run")
    assert snapshot(run_dir) == before

    sft = run_dir / "sft_config.yaml"
    sft.write_text(sft.read_text() + "# my note\n")
    edited = sft.read_text()
    result = run_cli("export", "--max-steps", "9", "--force", "--out", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = snapshot(run_dir)
    assert {k: after.get(k) for k in results} == results, "export --force changed a training result"
    assert yaml.safe_load(sft.read_text())["max_steps"] == 9
    (kept,) = run_dir.glob("sft_config.yaml.edited-*")
    assert kept.read_text() == edited


# ----------------------------------------------------------------------------- hand edits

def test_a_hand_edited_sft_config_is_detected_and_nothing_changes(tmp_path: Path):
    run_dir = _exported(tmp_path, "--max-steps", "4")
    sft = run_dir / "sft_config.yaml"
    sft.write_text(sft.read_text().replace("max_steps: 4", "max_steps: 5"))
    before = snapshot(run_dir)
    for command in ("run", "resume"):
        assert_refused(run_cli(command, str(run_dir), cwd=tmp_path), "sft_config.yaml", "edited by hand",
                       "--keep-edits", "--discard-edits")
        assert snapshot(run_dir) == before
    assert not (run_dir / "train.log").exists(), "nothing may launch"


def test_the_replan_export_keeps_unedited_files_in_sync_and_never_overwrites_an_edit(tmp_path: Path):
    """What the session's out-of-memory re-plan calls: export(smaller_plan, run_dir)."""
    run_dir = _exported(tmp_path, "--max-steps", "4")
    plan = Plan.load(run_dir / "plan.yaml")
    smaller = dataclasses.replace(plan, micro_batch=plan.micro_batch // 2, grad_accum=plan.grad_accum * 2)
    export(smaller, run_dir)  # nothing edited: every file follows the new plan
    assert yaml.safe_load((run_dir / "sft_config.yaml").read_text())["per_device_train_batch_size"] == smaller.micro_batch
    assert Plan.load(run_dir / "plan.yaml") == smaller

    accelerate = run_dir / "accelerate_config.yaml"
    accelerate.write_text(accelerate.read_text() + "# tuned by hand\n")
    before = snapshot(run_dir)
    with pytest.raises(UserError, match="accelerate_config.yaml"):
        export(plan, run_dir)
    assert snapshot(run_dir) == before, "a refused export wrote something"

    report = export_files(plan, run_dir, edits="keep")
    assert accelerate.read_text().endswith("# tuned by hand\n") and report.kept == ["accelerate_config.yaml"]
    assert export_files(plan, run_dir).kept == ["accelerate_config.yaml"], "a kept edit is kept for the same plan"
    with pytest.raises(UserError, match="accelerate_config.yaml"):
        export(smaller, run_dir)  # a new plan: the kept edit no longer matches it, so ask again

    export_files(smaller, run_dir, edits="discard")
    (aside,) = run_dir.glob("accelerate_config.yaml.edited-*")
    assert aside.read_text().endswith("# tuned by hand\n")
    assert "# tuned by hand" not in accelerate.read_text()


def test_a_plan_yaml_edit_is_what_trains(finished: tuple[Path, str]):
    run_dir, out = finished
    assert yaml.safe_load((run_dir / "sft_config.yaml").read_text())["max_steps"] == 2
    assert logged_steps(run_dir) == [1, 2]
    assert "plan.yaml changed since the last export: max_steps 3 -> 2" in " ".join(out.split())
    manifest = read_manifest(run_dir)
    assert manifest is not None and manifest.files["plan.yaml"] == sha256_file(run_dir / "plan.yaml")


# ----------------------------------------------------------------------------- finished runs

@slow
def test_a_finished_run_is_not_trained_over_and_fresh_keeps_the_old_output(finished_copy: Path, tmp_path: Path):
    run_dir = finished_copy
    before = snapshot(run_dir)
    assert_refused(run_cli("run", str(run_dir), cwd=tmp_path), "already finished", "--fresh", "previous-")
    assert snapshot(run_dir) == before

    started = time.monotonic()
    result = run_cli("resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    assert "already finished at step 2/2" in " ".join(result.stdout.split()) and "Traceback" not in result.stderr
    assert snapshot(run_dir) == before, "resume of a finished run launched or changed something"

    # plan.yaml asks for a long run now; --fresh trains it from the start, SIGTERM stops it (143).
    plan = run_dir / "plan.yaml"
    data = yaml.safe_load(plan.read_text())
    data.update(max_steps=300, learning_rate=1e-7)
    plan.write_text(yaml.safe_dump(data, sort_keys=False))
    child = start_cli("run", str(run_dir), "--fresh", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not list(run_dir.glob("previous-*")):  # until then metrics.jsonl is the finished run's
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()[0][-3000:]
            time.sleep(0.05)
        wait_for_step(run_dir, child, 1)
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143, out[-3000:]
    (previous,) = run_dir.glob("previous-*")
    kept = snapshot(previous)
    for name, digest in before.items():
        if name.split("/")[0] in ("output", "metrics.jsonl", "train.log"):
            assert kept.get(name) == digest, f"{name} of the finished run was not kept"
    begins = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "begin"]
    assert [(b["step"], b["max_steps"]) for b in begins] == [(0, 300)]


# ----------------------------------------------------------------------------- the run lock

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(directory: Path, **fields: object) -> None:
    info = dict(pid=_dead_pid(), pid_started=time.time() - 60, host=socket.gethostname(), boot_id=runlock.boot_id(),
                started="2026-01-01T00:00:00+00:00", run_dir=str(directory.resolve()), launcher_pid=None,
                launcher_started=None)
    info.update(fields)
    (directory / runlock.STATE_DIR).mkdir(exist_ok=True)
    (directory / runlock.LOCK_FILE).write_text(json.dumps(info))


@pytest.mark.parametrize("how", ["dead pid", "other host", "copied"])
def test_a_stale_lock_is_cleared_with_a_note(tmp_path: Path, how: str):
    run_dir = _exported(tmp_path, "--max-steps", "4")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = {"pid": sleeper.pid, "pid_started": psutil.Process(sleeper.pid).create_time()}
        fields = {"dead pid": {}, "other host": {**live, "host": "elsewhere"},
                  "copied": {**live, "run_dir": str(tmp_path / "original")}}[how]
        _write_lock(run_dir, **fields)
        lock = runlock.acquire(run_dir)
        assert lock.owned and any("stale run lock" in note for note in lock.notes), lock.notes
        assert runlock.read_lock(run_dir).pid == os.getpid()
        lock.release()
        assert not (run_dir / runlock.LOCK_FILE).exists()
    finally:
        sleeper.kill()


def test_a_live_lock_refuses_every_launch(tmp_path: Path):
    from llmwizard.runner.session.launch import Launch

    run_dir = _exported(tmp_path, "--max-steps", "4")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(run_dir, pid=sleeper.pid, pid_started=psutil.Process(sleeper.pid).create_time())
        before = snapshot(run_dir)
        with pytest.raises(UserError, match=f"Already running \\(pid {sleeper.pid}\\)"):
            Launch(run_dir).start()
        for command in ("run", "resume"):
            assert_refused(run_cli(command, str(run_dir), cwd=tmp_path), f"Already running (pid {sleeper.pid})",
                           f"llmwizard watch {run_dir}", f"llmwizard stop {run_dir}")
        assert snapshot(run_dir) == before
    finally:
        sleeper.kill()


def test_a_resume_with_a_stale_lock_clears_it(finished_copy: Path, tmp_path: Path):
    _write_lock(finished_copy)
    result = run_cli("resume", str(finished_copy), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cleared a stale run lock" in " ".join(result.stdout.split())
    assert not (finished_copy / runlock.LOCK_FILE).exists()


@slow
def test_one_trainer_per_directory_and_stop_ends_an_orphaned_run(tmp_path: Path):
    run_dir = _exported(tmp_path, "--max-steps", "300", "--learning-rate", "1e-7")
    child = start_cli("run", str(run_dir), cwd=tmp_path)
    try:
        wait_for_step(run_dir, child, 2)
        files = {name: sha256_file(run_dir / name) for name in RUN_FILES}
        for command in ("run", "resume"):
            assert_refused(run_cli(command, str(run_dir), cwd=tmp_path), f"Already running (pid {child.pid})",
                           "llmwizard stop")
        assert_refused(run_cli("export", "--force", "--max-steps", "5", "--out", str(run_dir), cwd=tmp_path),
                       f"Already running (pid {child.pid})")
        status = json.loads(run_cli("status", str(run_dir), "--json").stdout)
        assert [(s["state"], s["pid"]) for s in status] == [("running", child.pid)]

        child.kill()  # the llmwizard process dies; its launcher and ranks train on, orphaned
        child.wait()
        ranks = runlock.train_processes(run_dir)
        assert ranks, "the orphaned ranks should still run"
        assert_refused(run_cli("resume", str(run_dir), cwd=tmp_path), "Already running (pid")
        assert {name: sha256_file(run_dir / name) for name in RUN_FILES} == files

        result = run_cli("stop", str(run_dir), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        _, alive = psutil.wait_procs(ranks, timeout=15)
        assert not alive and not runlock.train_processes(run_dir), "ranks outlived `llmwizard stop`"
    finally:
        if child.poll() is None:
            child.kill()
        for process in runlock.train_processes(run_dir):
            process.kill()
    records = read_metrics(run_dir / "metrics.jsonl")
    (stop,) = [r for r in records if r["type"] == "stop"]
    assert stop["reason"] == "signal"
    assert (run_dir / "output" / f"checkpoint-{stop['step']}" / "trainer_state.json").is_file()
    assert f"checkpoint-{stop['step']}" in result.stdout
    assert not (run_dir / runlock.LOCK_FILE).exists()
    status = json.loads(run_cli("status", str(run_dir), "--json").stdout)
    assert status[0]["state"] == "stopped" and status[0]["checkpoint"] == f"output/checkpoint-{stop['step']}"


@slow
def test_watch_follows_and_stop_asks_a_live_llmwizard_to_stop(tmp_path: Path):
    """stop on a run whose llmwizard still lives: that llmwizard gets SIGTERM, stops every rank
    with a checkpoint and exits 143; a `watch` in another terminal follows it to the end."""
    run_dir = _exported(tmp_path, "--max-steps", "300", "--learning-rate", "1e-7")
    child = start_cli("run", str(run_dir), cwd=tmp_path)
    watcher: subprocess.Popen[str] | None = None
    try:
        wait_for_step(run_dir, child, 1)
        watcher = start_cli("watch", str(run_dir), cwd=tmp_path)
        wait_for_step(run_dir, child, 3)
        result = run_cli("stop", str(run_dir), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"sent SIGTERM to llmwizard (pid {child.pid})" in result.stdout
        out, _ = child.communicate(timeout=60)
        watched, _ = watcher.communicate(timeout=60)
    finally:
        for process in (child, watcher):
            if process is not None and process.poll() is None:
                process.kill()
    assert child.returncode == 143, out[-3000:]
    (stop,) = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "stop"]
    assert (run_dir / "output" / f"checkpoint-{stop['step']}" / "trainer_state.json").is_file()
    assert not runlock.train_processes(run_dir) and not (run_dir / runlock.LOCK_FILE).exists()
    assert f"Following {run_dir} (pid {child.pid})" in watched
    assert re.search(r"^step \d+/300 ", watched, re.MULTILINE), watched[-3000:]  # the live lines
    assert f"stopped at step {stop['step']}" in watched


def test_a_commented_plan_yaml_is_not_rewritten_and_kept_when_the_plan_changes(tmp_path: Path):
    run_dir = _exported(tmp_path, "--max-steps", "4")
    plan_file = run_dir / "plan.yaml"
    plan_file.write_text("# my notes on this run\n" + plan_file.read_text())
    mine = plan_file.read_text()
    plan = Plan.load(plan_file)
    export_files(plan, run_dir)  # what `run` does: plan.yaml is the input, left as written
    assert plan_file.read_text() == mine
    assert read_manifest(run_dir).files["plan.yaml"] == sha256_file(plan_file)

    plan_file.write_text(mine + "# more notes\n")
    report = export_files(dataclasses.replace(plan, micro_batch=plan.micro_batch // 2, grad_accum=plan.grad_accum * 2),
                          run_dir)  # a re-plan
    (kept,) = run_dir.glob("plan.yaml.edited-*")
    assert kept.read_text() == mine + "# more notes\n" and kept in report.set_aside
    assert Plan.load(plan_file).micro_batch == plan.micro_batch // 2


def test_stop_refuses_a_grace_period_that_is_not_a_positive_number(tmp_path: Path):
    run_dir = _exported(tmp_path, "--max-steps", "4")
    before = snapshot(run_dir)
    for grace in ("0", "-5", "nan", "inf"):
        assert_refused(run_cli("stop", str(run_dir), "--grace", grace, cwd=tmp_path), "--grace", grace)
    assert snapshot(run_dir) == before
    result = run_cli("stop", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0 and "Nothing is running" in result.stdout


def test_watch_on_a_finished_run_shows_what_it_came_to(finished_copy: Path, tmp_path: Path):
    """Not one line: the summary a newcomer looks for (loss, where the model is, the report)."""
    result = run_cli("watch", str(finished_copy), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "is not running: finished at step 2/2" in out
    for row in ("loss", "saved", "try it", "merge"):
        assert row in out, out


@pytest.mark.parametrize("command", ["runs", "status"])
def test_run_names_stay_whole_in_an_80_column_terminal(finished: tuple[Path, str], tmp_path: Path, command: str):
    """The name is what a user types back: at 80 columns the less needed columns go, the name stays."""
    name = "llama-3.1-8b-instruct-arithmetic-lora-20261206-153012"
    shutil.copytree(finished[0], tmp_path / name, symlinks=True)
    result = run_cli(command, str(tmp_path), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(name in line and "finished" in line for line in lines), result.stdout
    assert all(len(line) <= 80 for line in lines), result.stdout
