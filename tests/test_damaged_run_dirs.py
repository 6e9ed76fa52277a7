"""Damaged run directories: every command that reads one skips or names the damage, never fails.

One real finished run (an export and `llmwizard run --max-steps 2`) is built once for the module;
each case copies it, damages one file (random bytes, a directory or a link to nowhere in its place,
a number out of range in metrics.jsonl, a garbage trainer_state.json, ...) and runs the real
command. Each must exit 0 or 2 with no traceback, name the damaged file where it matters, and leave
the directory as it was when it writes nothing. The tolerant metrics reader is also checked on its
own, line by line.

Tests run as root in CI, which chmod does not stop: the cases that must not be able to write use
a directory or a file in the way, which stops root too; the chmod cases skip when run as root.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from llmwizard.runner.metrics import MetricsTail, load_metrics
from tests.conftest import run_cli
from tests.refusals import assert_refused, flat

METRICS = "metrics.jsonl"
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LoRA run of two steps with a checkpoint at each, finished: output/ holds the adapter."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli("export", "--max-steps", "2", "--eval-fraction", "0", "--method", "lora", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    result = run_cli("run", str(run_dir), cwd=run_dir.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (run_dir / "output" / "checkpoint-2" / "trainer_state.json").is_file()
    return run_dir


@pytest.fixture()
def copy(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, alone in its own folder (so `runs FOLDER` lists only it)."""
    run_dir = tmp_path / "runs" / "run"
    shutil.copytree(finished, run_dir, symlinks=True)
    return run_dir


def tree(directory: Path) -> dict[str, object]:
    """Everything under `directory`, links and directories included, without following links."""
    found: dict[str, object] = {}
    for folder, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(directory))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = "dir"
            elif path.is_file():
                found[key] = path.read_bytes()
            else:
                found[key] = "special"  # a named pipe: reading it would wait for a writer
    return found


# ----------------------------------------------------------------------------- damage

def _append(run_dir: Path, line: str) -> None:
    with open(run_dir / METRICS, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _log(**fields: object) -> str:
    return json.dumps({"type": "log", "step": 2, "max_steps": 2, "loss": 1.0, "tokens_seen": 10, "time": 2.0,
                       **fields})


def _replace_by_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("not a metrics line\n")


def _link_to_nowhere(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(path.parent / "nowhere" / path.name)


def _checkpoint_state(run_dir: Path) -> Path:
    return run_dir / "output" / "checkpoint-2" / "trainer_state.json"


DAMAGES: dict[str, Callable[[Path], None]] = {
    "metrics random bytes": lambda d: (d / METRICS).write_bytes(bytes(range(256)) * 8 + b"\n\xff\xfe{\n"),
    "metrics a directory": lambda d: _replace_by_directory(d / METRICS),
    "metrics link to nowhere": lambda d: _link_to_nowhere(d / METRICS),
    "metrics a named pipe": lambda d: ((d / METRICS).unlink(), os.mkfifo(d / METRICS)),
    "rank_peak_memory text": lambda d: _append(d, _log(rank_peak_memory=["abc"], peak_memory=1)),
    "rank_peak_memory nested": lambda d: _append(d, _log(rank_peak_memory=[[1, 2]])),
    "step 10**30": lambda d: _append(d, _log(step=10**30)),
    "step 1e400": lambda d: _append(d, '{"type": "log", "step": 1e400, "loss": 1.0}'),
    "time and size out of range": lambda d: (_append(d, _log(time=-5.0)), _append(d, _log(peak_memory=2**70)),
                                             _append(d, _log(learning_rate=10**50))),
    "plan.yaml missing": lambda d: (d / "plan.yaml").unlink(),
    "plan.yaml garbage": lambda d: (d / "plan.yaml").write_bytes(b"\x00\xff: [\n" * 40),
    "train.log missing": lambda d: (d / "train.log").unlink(),
    "train.log binary": lambda d: (d / "train.log").write_bytes(bytes(range(256)) * 16),
    "state files garbage": lambda d: ((d / ".llmwizard" / "manifest.json").write_bytes(b"\xff{{" * 30),
                                      (d / ".llmwizard" / "lock.json").write_text("[1, 2")),
    "state directory a file": lambda d: (shutil.rmtree(d / ".llmwizard"), (d / ".llmwizard").write_text("x")),
    "checkpoint without trainer_state": lambda d: _checkpoint_state(d).unlink(),
    "checkpoint garbage trainer_state": lambda d: _checkpoint_state(d).write_bytes(b"\x89garbage{"),
    "checkpoint trainer_state a list": lambda d: _checkpoint_state(d).write_text('[{"best_model_checkpoint": 5}]'),
    "samples and recovery binary": lambda d: ((d / "samples.jsonl").write_bytes(b"\xff\xfe\x00" * 50),
                                              (d / "recovery.log").write_bytes(b"\xc3\x28" * 50)),
    "output link to nowhere": lambda d: _link_to_nowhere(d / "output"),
}

# What each damage must be named as, by the commands that show a run (status, runs, watch, report).
NAMED: dict[str, list[str]] = {
    "metrics random bytes": ["damaged lines skipped in", METRICS],
    "metrics a directory": [METRICS, "cannot be read", "a directory"],
    "metrics link to nowhere": [METRICS, "a link to", "does not exist"],
    "metrics a named pipe": [METRICS, "cannot be read", "not a regular file"],
    "rank_peak_memory text": ["1 damaged line skipped in", METRICS],
    "rank_peak_memory nested": ["1 damaged line skipped in", METRICS],
    "step 10**30": ["1 damaged line skipped in", METRICS],
    "step 1e400": ["1 damaged line skipped in", METRICS],
    "time and size out of range": ["3 damaged lines skipped in", METRICS],
    "plan.yaml missing": ["plan.yaml is missing"],
    "plan.yaml garbage": ["plan.yaml cannot be used"],
    "train.log missing": [],
    "train.log binary": [],
    "state files garbage": ["manifest.json is damaged", "lock.json is damaged"],
    "state directory a file": [".llmwizard is not a directory"],
    "checkpoint without trainer_state": [],
    "checkpoint garbage trainer_state": ["checkpoint-2/trainer_state.json is damaged"],
    "checkpoint trainer_state a list": ["checkpoint-2/trainer_state.json is damaged"],
    "samples and recovery binary": ["samples.jsonl is damaged", "recovery.log is damaged"],
    "output link to nowhere": ["output is a link to nowhere"],
}

# The commands that only read: they must leave the directory exactly as it was.
READERS = {
    "status": ("status", "run"),
    "runs --json": ("runs", ".", "--json"),
    "watch": ("watch", "run"),
}


def _check(result: subprocess.CompletedProcess[str], words: list[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode in (0, 2), output
    assert "Traceback" not in output, output
    text = flat(output)
    for word in words:
        assert word in text, f"{word!r} not in: {text}"
    return text


@pytest.mark.parametrize("command", sorted(READERS))
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_command_that_reads_a_damaged_run_names_the_damage_and_changes_nothing(copy: Path, damage: str,
                                                                                   command: str):
    DAMAGES[damage](copy)
    before = tree(copy.parent)
    result = run_cli(*READERS[command], cwd=copy.parent)
    _check(result, NAMED[damage])
    assert result.returncode == 0
    if command.endswith("--json"):
        rows = json.loads(result.stdout)
        assert [row["name"] for row in rows] == ["run"]
        assert all(word in " ".join(rows[0]["problems"]) for word in NAMED[damage])
    assert tree(copy.parent) == before


@pytest.mark.parametrize("command", [("runs", "."), ("status", "run", "--json")])
def test_the_other_listings_name_the_damage_too(copy: Path, command: tuple[str, ...]):
    DAMAGES["metrics random bytes"](copy)
    DAMAGES["checkpoint garbage trainer_state"](copy)
    before = tree(copy)
    result = run_cli(*command, cwd=copy.parent)
    _check(result, NAMED["metrics random bytes"] + NAMED["checkpoint garbage trainer_state"])
    assert result.returncode == 0
    assert tree(copy) == before


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_report_writes_the_page_of_a_damaged_run_and_names_the_damage(copy: Path, damage: str):
    DAMAGES[damage](copy)
    before = tree(copy)
    result = run_cli("report", "run", "--no-open", cwd=copy.parent)
    _check(result, NAMED[damage])
    assert result.returncode == 0
    page = (copy / "report.html").read_text(encoding="utf-8")
    assert "Traceback" not in page
    for word in NAMED[damage]:
        assert word in " ".join(page.replace("&#x27;", "'").split()), word
    after = tree(copy)
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert changed == {"report.html"}  # no temporary file left beside it


def test_a_metrics_line_out_of_range_leaves_the_numbers_of_the_others(copy: Path):
    """The huge step is skipped, not taken: the run still shows its two steps and its last loss."""
    DAMAGES["step 10**30"](copy)
    result = run_cli("runs", ".", "--json", cwd=copy.parent)
    row = _check(result, []) and json.loads(result.stdout)[0]
    assert (row["state"], row["step"], row["max_steps"]) == ("finished", 2, 2)
    assert row["train_loss"] is not None and row["train_loss"] != 1.0


def test_watch_follows_a_live_run_past_its_damaged_lines_and_counts_them(copy: Path):
    """A live lock (held by a process that ends once watch follows) makes the run `running`: watch
    follows metrics.jsonl until that process ends, and its summary says how many lines it skipped."""
    import psutil

    from llmwizard.runner import runlock

    DAMAGES["time and size out of range"](copy)
    holder = subprocess.Popen(["sleep", "600"])
    watch = None
    try:
        (copy / runlock.LOCK_FILE).write_text(json.dumps({
            "pid": holder.pid, "pid_started": psutil.Process(holder.pid).create_time(), "host": socket.gethostname(),
            "boot_id": runlock.boot_id(), "started": "2026-01-01T00:00:00+00:00", "run_dir": str(copy.resolve())}))
        before = tree(copy)
        watch = subprocess.Popen([sys.executable, "-m", "llmwizard.wizard.cli", "watch", "run"], cwd=copy.parent,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=dict(os.environ, COLUMNS="120"))
        assert watch.stdout is not None
        seen: list[str] = []
        for line in watch.stdout:  # the damage named first, then it follows
            seen.append(line)
            if line.startswith("Following run"):
                break
        assert seen and seen[-1].startswith("Following run"), "".join(seen)
        holder.kill()
        holder.wait()
        followed = watch.communicate(timeout=300)[0]
        output = "".join(seen) + followed
    finally:
        holder.kill()
        if watch is not None and watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, output
    _check(subprocess.CompletedProcess([], 0, output, ""), ["3 damaged lines skipped in run/metrics.jsonl"])
    assert "note 3 damaged lines skipped in run/metrics.jsonl" in flat(followed)  # the summary's own count
    assert tree(copy) == before


# ----------------------------------------------------------------------------- commands that write

def test_report_into_a_directory_in_the_way_is_refused_and_changes_nothing(copy: Path):
    (copy / "report.html").unlink()
    (copy / "report.html").mkdir()
    (copy / "report.html" / "mine.txt").write_text("kept")
    before = tree(copy)
    assert_refused(run_cli("report", "run", "--no-open", cwd=copy.parent), ["report.html", "is a directory", "mv"])
    assert tree(copy) == before


@pytest.mark.skipif(ROOT_USER, reason="root writes through chmod; the directory-in-the-way cases cover it")
def test_a_read_only_run_is_read_by_every_reader_and_report_says_it_cannot_write(copy: Path):
    DAMAGES["rank_peak_memory text"](copy)
    before = tree(copy)
    for path in [copy, *(p for p in copy.rglob("*") if p.is_dir() and not p.is_symlink())]:
        path.chmod(0o555)
    try:
        for command in READERS.values():
            _check(run_cli(*command, cwd=copy.parent), NAMED["rank_peak_memory text"])
        assert_refused(run_cli("report", "run", "--no-open", cwd=copy.parent),
                       ["Cannot write", "report.html", "writable"])
        assert_refused(run_cli("merge", "run", cwd=copy.parent), ["merged", "cannot be written", "--out"])
        assert tree(copy) == before
    finally:
        for path in [copy, *(p for p in copy.rglob("*") if p.is_dir() and not p.is_symlink())]:
            path.chmod(0o755)


@pytest.mark.parametrize("out, words", [
    ("run/merged", ["merged", "already exists"]),                          # a file where the model would go
    ("blocker/merged", ["blocker", "cannot be written", "not a directory"]),  # a file where a folder must be
])
def test_merge_with_something_in_the_way_is_refused_before_loading_and_changes_nothing(copy: Path, out: str,
                                                                                       words: list[str]):
    (copy / "merged").write_text("mine")
    (copy.parent / "blocker").write_text("mine")
    before = tree(copy.parent)
    args = ("merge", "run") if out == "run/merged" else ("merge", "run", "--out", out)
    assert_refused(run_cli(*args, cwd=copy.parent), words)
    assert tree(copy.parent) == before


@pytest.mark.parametrize("damage", ["plan.yaml garbage", "plan.yaml missing"])
@pytest.mark.parametrize("command", ["merge", "try", "resume"])
def test_a_command_that_needs_the_plan_refuses_a_damaged_one_by_name(copy: Path, command: str, damage: str):
    DAMAGES[damage](copy)
    before = tree(copy)
    args = {"merge": ("merge", "run"), "try": ("try", "run", "2+3="), "resume": ("resume", "run")}[command]
    assert_refused(run_cli(*args, cwd=copy.parent), ["plan.yaml"])
    assert tree(copy) == before


def test_merge_skips_a_damaged_checkpoint_and_clears_its_own_leftover(copy: Path):
    """checkpoint-2's trainer_state.json is garbage: the merge takes output/ (the final result),
    and an interrupted merge's leftover file of the staging name does not stop it."""
    DAMAGES["checkpoint garbage trainer_state"](copy)
    (copy / ".merged.partial").write_text("left by an interrupted merge")
    result = run_cli("merge", "run", cwd=copy.parent)
    _check(result, ["output/", "Merged"])
    assert result.returncode == 0
    assert (copy / "merged" / "config.json").is_file() and not (copy / ".merged.partial").exists()


def _garbage_configs(run_dir: Path, *folders: str) -> None:
    for folder in folders:
        (run_dir / folder / "adapter_config.json").write_bytes(b"\x87\x00 not json")


@pytest.mark.parametrize("command", ["merge", "try"])
def test_weights_whose_config_is_damaged_are_passed_over_and_named(copy: Path, command: str):
    """output/'s adapter_config.json is garbage: both take the newest checkpoint and say why."""
    _garbage_configs(copy, "output")
    args = ("merge", "run") if command == "merge" else ("try", "run", "2+3=", "--max-new-tokens", "2")
    result = run_cli(*args, cwd=copy.parent)
    _check(result, ["passed over", "output/adapter_config.json is damaged", "checkpoint-2"])
    assert result.returncode == 0


@pytest.mark.parametrize("command", ["merge", "try", "try --checkpoint"])
def test_a_run_whose_weights_are_all_damaged_is_refused_by_name(copy: Path, command: str):
    _garbage_configs(copy, "output", "output/checkpoint-1", "output/checkpoint-2")
    before = tree(copy)
    args = {"merge": ("merge", "run"), "try": ("try", "run", "2+3="),
            "try --checkpoint": ("try", "run", "2+3=", "--checkpoint", "checkpoint-1")}[command]
    assert_refused(run_cli(*args, cwd=copy.parent), ["adapter_config.json is damaged"])
    assert tree(copy) == before


def test_weights_the_libraries_cannot_load_are_refused_by_name(copy: Path):
    (copy / "output" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    before = tree(copy)
    assert_refused(run_cli("try", "run", "2+3=", cwd=copy.parent), ["cannot be loaded", "output", "damaged"])
    assert tree(copy) == before


def test_try_on_a_run_with_damaged_metrics_and_checkpoint_generates(copy: Path):
    DAMAGES["metrics random bytes"](copy)
    DAMAGES["checkpoint trainer_state a list"](copy)
    before = tree(copy)
    result = run_cli("try", "run", "2+3=", "--max-new-tokens", "2", "--json", cwd=copy.parent)
    _check(result, [])
    assert result.returncode == 0 and json.loads(result.stdout)["weights"].startswith("output/")
    assert tree(copy) == before


def test_resume_of_a_finished_run_with_damaged_metrics_launches_nothing(copy: Path):
    DAMAGES["metrics random bytes"](copy)
    result = run_cli("resume", "run", cwd=copy.parent)
    _check(result, ["already finished", "Nothing to resume"])
    assert result.returncode == 0


@pytest.mark.slow
def test_resume_sets_a_damaged_checkpoint_aside_and_continues_from_the_one_before(copy: Path):
    """A run that died after saving checkpoint-2 with a garbage trainer_state.json: resume does
    not load it (the Trainer would fail on it) but sets it aside and continues from checkpoint-1."""
    lines = (copy / METRICS).read_text().splitlines()
    (copy / METRICS).write_text("".join(line + "\n" for line in lines if '"type": "end"' not in line))
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (copy / "output" / name).unlink()
    DAMAGES["checkpoint garbage trainer_state"](copy)
    status = json.loads(run_cli("status", "run", "--json", cwd=copy.parent).stdout)[0]
    assert (status["state"], status["checkpoint"]) == ("failed", "output/checkpoint-1")
    result = run_cli("resume", "run", cwd=copy.parent)
    text = _check(result, ["incomplete-checkpoint-2", "resumed from output/checkpoint-1"])
    assert result.returncode == 0, text
    assert (copy / "output" / "incomplete-checkpoint-2" / "trainer_state.json").read_bytes() == b"\x89garbage{"
    assert (copy / "output" / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------- the run directory itself

@pytest.mark.parametrize("command", [("status", "run"), ("runs", "run"), ("watch", "run"), ("report", "run"),
                                     ("resume", "run"), ("merge", "run"), ("try", "run", "hi")])
def test_a_run_directory_that_is_a_file_is_refused_by_name(tmp_path: Path, command: tuple[str, ...]):
    (tmp_path / "run").write_text("not a directory")
    assert_refused(run_cli(*command, cwd=tmp_path), ["run"])
    assert (tmp_path / "run").read_text() == "not a directory"


# ----------------------------------------------------------------------------- calibration store

@pytest.mark.parametrize("kind", ["directory", "garbage", "cache directory a file"])
def test_calibration_reset_of_a_damaged_store(tmp_path: Path, kind: str):
    cache = tmp_path / "cache"
    store = cache / "calibration.json"
    if kind == "directory":
        store.mkdir(parents=True)
        (store / "mine.txt").write_text("kept")
    elif kind == "garbage":
        cache.mkdir()
        store.write_bytes(b'\xff{"format": "llmwizard-calibration", "entries": ' + b"[" * 5000)
    else:
        cache.write_text("not a directory")
    env = {"LLMWIZARD_CALIBRATION_DIR": str(cache)}
    shown = run_cli("calibration", env=env)
    _check(shown, ["calibration.json"])
    assert shown.returncode == 0
    before = tree(tmp_path)
    reset = run_cli("calibration", "--reset", env=env)
    if kind == "directory":
        assert_refused(reset, [str(store), "is a directory", "rm -r", "LLMWIZARD_CALIBRATION_DIR"])
        assert tree(tmp_path) == before
    elif kind == "garbage":
        _check(reset, ["Removed the calibration store", str(store)])
        assert reset.returncode == 0 and not store.exists()
    else:
        _check(reset, ["No calibration store"])
        assert reset.returncode == 0 and cache.read_text() == "not a directory"


def test_calibration_store_with_an_enormous_number_is_ignored_with_a_warning(tmp_path: Path):
    (tmp_path / "calibration.json").write_text(json.dumps({
        "format": "llmwizard-calibration", "version": 1,
        "entries": {"cpu|llama|lora|ddp": {"memory": [1.1], "speed": [], "updated": 10**400}}}))
    result = run_cli("calibration", "--json", env={"LLMWIZARD_CALIBRATION_DIR": str(tmp_path)})
    _check(result, ["damaged; skipped"])
    assert result.returncode == 0 and json.loads(result.stdout)["entries"] == []


# ----------------------------------------------------------------------------- the metrics reader itself

BEGIN = '{"type": "begin", "step": 0, "max_steps": 4, "world_size": 1, "time": 0.0}'
BAD_LINES = [
    b"\xff\xfe not text",
    b"not json",
    b'{"type": "log", "step": "three", "loss": 1.0}',
    b'{"type": "log", "step": 1e400, "loss": 1.0}',
    b'{"type": "log", "step": 1000000000000000000000000000000, "loss": 1.0}',
    b'{"type": "log", "step": -1, "loss": 1.0}',
    b'{"type": "log", "step": 1, "loss": 1.0, "rank_peak_memory": ["abc"]}',
    b'{"type": "log", "step": 1, "loss": 1.0, "rank_peak_memory": [-1]}',
    b'{"type": "log", "step": 1, "loss": 1.0, "time": NaN}',
    b'{"type": "log", "step": 1, "loss": 1.0, "tokens_seen": 1e300}',
    b'{"type": "log", "step": 1, "loss": 1.0, "grad_norm": 1e300}',
    b'{"type": "log", "step": 1, "loss": 1.0, "entropy": 1' + b"0" * 400 + b"}",
    b'{"type": "begin", "step": 0, "world_size": 0}',
    b'{"type": "save", "step": 1, "checkpoint": ["x"]}',
    b'{"type": "end", "step": 1, "reason": 5}',
    b'{"type": ["log"], "step": 1}',
    b"[" * 100000 + b"]" * 100000,
]


def test_every_bad_metrics_line_is_skipped_and_counted_and_good_ones_kept(tmp_path: Path):
    path = tmp_path / METRICS
    good = [b'{"type": "log", "step": 1, "loss": NaN, "grad_norm": Infinity, "time": 1.0}',  # a divergence
            b'{"type": "log", "step": 2, "loss": 0.5, "rank_peak_memory": [1, 2], "peak_memory": 2}']
    path.write_bytes(BEGIN.encode() + b"\n" + b"\n".join(BAD_LINES + good) + b"\n")
    found = load_metrics(path)
    assert [r.get("step") for r in found.records] == [0, 1, 2]
    assert found.damaged == len(BAD_LINES) == len(found.notes)
    assert found.damage() == f"{len(BAD_LINES)} damaged lines skipped in {path}"
    assert "line 2, not UTF-8 text" in found.notes[0] and "out of range" in found.notes[4]


def test_the_tail_reads_a_line_split_across_polls_and_counts_the_damaged(tmp_path: Path):
    path = tmp_path / METRICS
    tail = MetricsTail(path)
    assert tail.poll() == [] and tail.damage() is None  # not there yet: no damage
    path.write_bytes(BEGIN.encode() + b'\n{"type": "log", "step": 1, "lo')
    assert [r["type"] for r in tail.poll()] == ["begin"]
    with open(path, "ab") as f:
        f.write(b'ss": 2.0}\n\xff\xff\n')
    assert [r["step"] for r in tail.poll()] == [1]
    assert tail.damage() == f"1 damaged line skipped in {path}"
    path.unlink()
    path.mkdir()
    assert tail.poll() == [] and "cannot be read" in (tail.damage() or "")


@pytest.mark.parametrize("tail, records, damaged", [
    (b'{"type": "log", "st', 1, 0),          # a record still being written: not damage, not yet a record
    (b'{"type": "end", "step": 0}', 2, 0),   # a file cut after its last record: the record counts
    (b"\xff\xfe", 1, 1),                     # garbage with no newline after it is damage all the same
    (b"garbage", 1, 1),
])
def test_the_last_line_without_its_newline(tmp_path: Path, tail: bytes, records: int, damaged: int):
    path = tmp_path / METRICS
    path.write_bytes(BEGIN.encode() + b"\n" + tail)
    found = load_metrics(path)
    assert (len(found.records), found.damaged) == (records, damaged)
