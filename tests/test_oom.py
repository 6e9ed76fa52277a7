"""A rank that runs out of GPU memory (raised by the test hook tests/hooks/oom.py, so a CPU run takes
the real path): the session re-plans with half the micro-batch, exports again, records
why, resumes from the last checkpoint and finishes."""

from __future__ import annotations

import pytest
import yaml

from llmwizard.autotune.plan import Plan
from llmwizard.runner.metrics import read_metrics
from tests.conftest import run_cli
from tests.hooks.oom import environment


@pytest.mark.slow
def test_out_of_memory_replans_with_a_smaller_micro_batch_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("export", "--max-steps", "8", "--eval-fraction", "0", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    before = Plan.load(run_dir / "plan.yaml")
    assert (before.micro_batch, before.grad_accum, before.effective_batch) == (16, 1, 16)
    resumed = (6 - 1) // before.save_steps * before.save_steps  # the last checkpoint before step 6
    assert resumed > 0, "the plan should checkpoint before step 6"

    result = run_cli("run", str(run_dir), cwd=tmp_path, env=environment(above=8, at_step=6))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    after = Plan.load(run_dir / "plan.yaml")
    assert (after.micro_batch, after.grad_accum, after.effective_batch) == (8, 2, 16)
    assert "out of GPU memory during step 6" in after.reasons["batch"]
    sft = yaml.safe_load((run_dir / "sft_config.yaml").read_text())
    assert (sft["per_device_train_batch_size"], sft["gradient_accumulation_steps"]) == (8, 2)
    log = (run_dir / "recovery.log").read_text()
    assert "micro-batch 16 -> 8, gradient accumulation 1 -> 2 (effective batch 16 unchanged); " \
           f"resuming from checkpoint-{resumed}" in log
    assert "CUDA out of memory" in (run_dir / "train.log").read_text()

    records = read_metrics(run_dir / "metrics.jsonl")
    begins = [(r["step"], r["micro_batch"], r["grad_accum"]) for r in records if r["type"] == "begin"]
    assert begins == [(0, 16, 1), (resumed, 8, 2)]
    steps = [r["step"] for r in records if r["type"] == "log" and "loss" in r]
    assert steps == [1, 2, 3, 4, 5] + list(range(resumed + 1, 9)), "steps after the checkpoint are redone"
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "completed"
    summary = result.stdout[result.stdout.rindex("done"):]
    assert "recovered" in summary and "micro-batch 16 -> 8" in " ".join(summary.split())
