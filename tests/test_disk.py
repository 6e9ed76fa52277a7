"""Free disk space is checked before each checkpoint save: a save that would not fit is skipped on
every rank, the run stops with "Disk full", its fix and the resume command, and the last complete
checkpoint stays intact. The real runs fake only the OS's answer (tests/hooks/disk.py)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from llmwizard.runner import checkpoint_space
from llmwizard.runner import recovery
from llmwizard.runner.metrics import read_metrics
from tests.conftest import run_cli
from tests.hooks.disk import environment


# ----------------------------------------------------------------------------- sizes and words

class FakeParameter:
    """A parameter as the estimate reads one (numel, element_size, requires_grad)."""

    def __init__(self, count: int, size: int, trainable: bool) -> None:
        self.count, self.size, self.requires_grad = count, size, trainable

    def numel(self) -> int:
        return self.count

    def element_size(self) -> int:
        return self.size


def model(*parameters: FakeParameter, adapter: bool = False) -> SimpleNamespace:
    found = SimpleNamespace(parameters=lambda: iter(parameters))
    if adapter:
        found.peft_config = {"default": None}
    return found


def test_the_estimate_counts_the_weights_a_checkpoint_holds_and_the_optimizer_states():
    base, lora = FakeParameter(1000, 2, trainable=False), FakeParameter(10, 4, trainable=True)
    # LoRA: the adapter's weights (10 x 4 bytes) and two fp32 Adam moments per adapter parameter.
    assert checkpoint_space.estimate_bytes(model(base, lora, adapter=True)) == 40 + 10 * 8
    # Full fine-tune: every weight, and the moments of the trainable ones.
    full = FakeParameter(1000, 2, trainable=True)
    assert checkpoint_space.estimate_bytes(model(full)) == 2000 + 1000 * 8
    assert checkpoint_space.estimate_bytes(model(full), deepspeed=True) == 2000 + 1000 * 12


def test_the_last_complete_checkpoint_is_measured_and_a_partial_one_ignored(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-2" / "optimizer.pt").write_bytes(b"x" * 5000)
    (tmp_path / "checkpoint-4").mkdir()  # cut short: no trainer_state.json
    (tmp_path / "checkpoint-4" / "optimizer.pt").write_bytes(b"x" * 10**6)
    space = checkpoint_space.CheckpointSpace()
    huge = model(FakeParameter(10**9, 4, trainable=True))
    assert space.needed(str(tmp_path), huge) == checkpoint_space.with_margin(5002)
    assert space.needed(str(tmp_path / "none"), huge) == checkpoint_space.with_margin(10**9 * 12)


def test_the_shortfall_names_the_checkpoint_the_disk_and_both_sizes(tmp_path):
    room = checkpoint_space.Room(needed=3 * 2**30, free=2**29)
    assert room.short and not checkpoint_space.Room(10, 10).short
    message, fix = checkpoint_space.shortfall(40, str(tmp_path / "output"), room)
    assert message == (f"Not enough free disk space for checkpoint-40 on {tmp_path.resolve()}: it needs about 3.0 GiB, "
                       "0.5 GiB are free.")
    assert "--output-dir" in fix and "save_total_limit" in fix and "llmwizard resume" in fix


def test_the_ranks_own_disk_full_line_wins_over_the_library_error():
    message, fix = checkpoint_space.shortfall(4, "/data/run/output", checkpoint_space.Room(2**31, 2**20))
    log = "\n".join(["step 3", checkpoint_space.user_error_line(1, message, fix),
                     "RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos 64 vs 0"])
    failure = recovery.diagnose_failure(log, 1)
    assert failure is not None and failure.kind == "disk_full" and failure.title == "Disk full"
    assert failure.message == message and failure.fix == fix and failure.rank == 1
    assert "Not enough free disk space for checkpoint-4" in failure.evidence


# ----------------------------------------------------------------------------- a real run

def plain(console_text: str) -> str:
    """The words of rich panels, without their borders and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", console_text).split())


def set_save_steps(run_dir, steps: int) -> None:
    plan = run_dir / "plan.yaml"
    text, count = re.subn(r"\nsave_steps: \d+\n", f"\nsave_steps: {steps}\n", plan.read_text())
    assert count == 1
    plan.write_text(text)


@pytest.mark.slow
def test_a_full_disk_skips_the_save_on_every_rank_stops_and_keeps_the_last_checkpoint(tmp_path):
    """Two DDP ranks; only rank 1's disk is full from step 4: rank 0 must skip checkpoint-4 too."""
    from llmwizard.runner.export import export
    from tests.tiny_models import make_plan

    run_dir = tmp_path / "run"
    export(make_plan(strategy="ddp", processes=2, max_steps=6), run_dir)
    set_save_steps(run_dir, 2)
    calls = tmp_path / "disk_calls.txt"
    result = run_cli("run", str(run_dir), cwd=tmp_path, env=environment(from_step=4, calls_file=calls, rank=1))
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]

    summary = plain(result.stdout[result.stdout.rindex("training failed"):])
    assert "training failed: Disk full" in summary
    assert "Not enough free disk space for checkpoint-4 on" in summary and "GiB are free" in summary
    assert "--output-dir on a larger disk" in summary and "save_total_limit" in summary
    assert f"llmwizard resume {run_dir}" in summary and "continues from checkpoint-2" in summary
    assert "Traceback" not in result.stdout and 'File "' not in result.stdout

    output = run_dir / "output"
    assert not (output / "checkpoint-4").exists() and not (output / "checkpoint-6").exists()
    assert recovery.last_checkpoint(output) == output / "checkpoint-2"
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        assert (output / "checkpoint-2" / name).is_file(), name
    assert not (output / "adapter_model.safetensors").exists(), "the final weights were saved on a full disk"

    records = read_metrics(run_dir / "metrics.jsonl")
    (stop,) = [r for r in records if r["type"] == "stop"]
    assert stop["reason"] == "disk_full" and stop["step"] == 4 and stop["rank"] == 1
    assert stop["good_checkpoint"] == "output/checkpoint-2" and stop["needed_bytes"] > stop["free_bytes"]
    assert [r["step"] for r in records if r["type"] == "save"] == [2]
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "disk_full"
    log = (run_dir / "train.log").read_text()
    assert re.search(r"llmwizard \(rank 1, Disk full\) UserError: Not enough free disk space for checkpoint-4 "
                     r"on \S+output: it needs about [\d.]+ GiB, [\d.e-]+ GiB are free\.\nFix: ", log)

    # One look at the disk per rank and save, none at the steps between.
    looked = sorted({tuple(line.split()[:2]) for line in calls.read_text().splitlines()})
    assert looked == [("0", "2"), ("0", "4"), ("1", "2"), ("1", "4")], looked
    assert len(calls.read_text().splitlines()) == 4

    # The kept checkpoint is whole: the run continues from it once there is room.
    result = run_cli("resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    begins = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "begin"]
    assert begins == [0, 2]
    assert (output / "adapter_model.safetensors").is_file()
