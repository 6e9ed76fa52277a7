"""A value the user pinned stays pinned: it travels in plan.yaml, the probe never grows a pinned
micro-batch, and where the probe or the out-of-memory recovery must change a pinned value to avoid
a failure, the reason says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmwizard.autotune.goals import Goals
from llmwizard.autotune.plan import Plan
from llmwizard.autotune.plan.probe import RankMeasurement, correct
from llmwizard.autotune.plan.replan import shrink_micro_batch
from llmwizard.autotune.plan.search import HEADROOM
from tests.conftest import run_cli
from tests.refusals import assert_refused
from tests.test_probe import MODEL, gpu, planned


def pinned_plan(**goals) -> Plan:
    """A plan made the way the faces make it: the user's values through Goals.merged."""
    from llmwizard.autotune.data.dataset import DatasetProfile  # noqa: F401  (the same data as test_probe)
    from llmwizard.autotune.machine.hardware import from_spec
    from llmwizard.autotune.plan.planner import plan
    from tests.test_probe import DATA

    return plan(from_spec("1xH100-80GB"), MODEL, DATA, Goals().merged(**goals))


def test_the_values_the_user_set_are_in_the_plan():
    p = pinned_plan(micro_batch=2, effective_batch=16)
    assert p.pinned == ["effective_batch", "micro_batch"]
    assert planned(micro_batch=2, effective_batch=16).pinned == []  # a preset's values are not pins


def test_a_pinned_micro_batch_never_grows():
    p = pinned_plan(micro_batch=2, effective_batch=16)
    roomy = [gpu(0, p.estimate.total)]
    assert correct(p, roomy, MODEL).action == "keep"
    unpinned = planned(micro_batch=2, effective_batch=16)
    assert correct(unpinned, roomy, MODEL).action == "grow"  # the same plan without the pin grows


def test_a_pinned_micro_batch_shrinks_only_to_avoid_a_failure_and_says_so():
    p = pinned_plan(micro_batch=4, effective_batch=16)
    verdict = correct(p, [RankMeasurement(0, 0, oom=True, kind="cuda")], MODEL)
    assert verdict.action == "shrink" and verdict.plan.micro_batch == 2
    assert "you set micro_batch 4; changed to 2 only because the run would fail otherwise" in verdict.reason
    assert "you set micro_batch 4" in verdict.plan.reasons["batch"]
    assert verdict.plan.pinned == p.pinned  # still pinned: a later round does not grow it back
    # the out-of-memory recovery uses the same halving, with the same words
    recovered = shrink_micro_batch(p, "rank 0 ran out of GPU memory", MODEL)
    assert recovered is not None and "you set micro_batch 4" in recovered.reasons["batch"]
    # an unpinned micro-batch shrinks without the note
    assert "you set" not in correct(planned(micro_batch=4, effective_batch=16),
                                    [RankMeasurement(0, 0, oom=True, kind="cuda")], MODEL).reason


def test_pinned_checkpointing_and_strategy_are_named_when_they_must_change():
    p = pinned_plan(micro_batch=1, effective_batch=16, checkpointing=False, strategy="single")
    close = [gpu(0, p.estimate.budget * (1 - HEADROOM / 2))]
    verdict = correct(p, close, MODEL)
    assert verdict.action == "checkpointing" and "you set checkpointing off; changed to on" in verdict.reason
    verdict = correct(verdict.plan, close, MODEL)
    assert verdict.action == "next_tier" and "you set strategy single; changed to zero2" in verdict.reason


def test_plan_yaml_refuses_a_pin_that_is_no_setting(tmp_path: Path):
    out = tmp_path / "run"
    assert run_cli("export", "--out", str(out), "--micro-batch", "2", "--max-steps", "1").returncode == 0
    data = yaml.safe_load((out / "plan.yaml").read_text())
    assert "micro_batch" in data["pinned"]
    data["pinned"] = ["colour"]
    (out / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert_refused(run_cli("run", str(out)), ["pinned", "colour", "micro_batch"])


@pytest.mark.slow
def test_a_probed_run_keeps_the_micro_batch_the_user_exported(tmp_path: Path):
    """`export --micro-batch 2`, then `run --probe`: the probe measures, but plan.yaml keeps 2."""
    out = tmp_path / "r2"
    result = run_cli("export", "--out", str(out), "--micro-batch", "2", "--effective-batch", "8", "--max-steps", "1",
                     "--eval-fraction", "0")
    assert result.returncode == 0, result.stderr
    result = run_cli("run", str(out), "--probe", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = Plan.load(out / "plan.yaml")
    assert after.micro_batch == 2 and after.grad_accum == 4 and "micro_batch" in after.pinned
    probe_lines = (out / "probe.jsonl").read_text().splitlines()
    assert probe_lines and all('"verdict": "keep"' in line or '"verdict":"keep"' in line for line in probe_lines)
