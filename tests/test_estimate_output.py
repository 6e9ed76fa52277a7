"""`llmwizard estimate`: its verdict is the planner's (the budget less HEADROOM), and the command prints
only its own output, also when it builds a local model on the meta device to count its parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llmwizard.autotune.plan.search import HEADROOM

from tests.conftest import ROOT, run_cli
from tests.refusals import flat

ESTIMATE = ("--seq", "2048", "--batch", "4")
# What torchao, torch, DeepSpeed and transformers print when transformers' modeling code is first imported.
LIBRARY_NOISE = ("Failed to load", "_C_mxfp8", "_pytree", "register_constant", "Setting accelerator",
                 "FutureWarning", "DeprecationWarning", "UserWarning")


@pytest.fixture(scope="module")
def expected_total() -> int:
    """The expected peak of the setup, from a GPU far larger than it needs (the figure does not depend on it)."""
    result = run_cli("estimate", "--model", "qwen2.5-0.5b", "--gpus", "1x80GB", *ESTIMATE, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["per_gpu"]["total"]


@pytest.mark.parametrize("share, verdict, fits, fits_with_headroom", [
    (0.90, "fits in", True, True),
    (0.975, f"fits only without the planner's {HEADROOM:.0%} headroom", True, False),
    (1.05, "does NOT fit in", False, False),
])
def test_the_verdict_is_the_planner_s(expected_total, share, verdict, fits, fits_with_headroom):
    """The GPU is sized so the total is `share` of it: 97.5% is within the budget, not within a plan's."""
    gpus = f"1x{expected_total / share / 2**30:.3f}GB"
    shown = run_cli("estimate", "--model", "qwen2.5-0.5b", "--gpus", gpus, *ESTIMATE)
    assert shown.returncode == 0, shown.stderr
    text = flat(shown.stdout)
    assert verdict in text
    if not fits_with_headroom:
        assert "fits in" not in text
    data = json.loads(run_cli("estimate", "--model", "qwen2.5-0.5b", "--gpus", gpus, *ESTIMATE, "--json").stdout)
    assert data["per_gpu"]["total"] == expected_total
    assert data["usable"] == int(data["budget"] * (1 - HEADROOM))
    assert (data["fits"], data["fits_with_headroom"]) == (fits, fits_with_headroom)


def test_estimate_of_a_local_model_prints_only_its_own_output(tmp_path: Path):
    """A model directory never seen before is built on the meta device (torch, transformers and what they
    import); the libraries' start-up warnings stay out of the output."""
    catalog = json.loads((ROOT / "autotune" / "model" / "model_catalog.json").read_text())["models"]
    config = next(entry["config"] for entry in catalog if entry["name"] == "qwen2.5-0.5b")
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    cache = tmp_path / "cache"  # empty: the parameter count is not cached yet
    result = run_cli("estimate", "--model", str(model), "--gpus", "1x24GB", *ESTIMATE,
                     env={"LLMWIZARD_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert [noise for noise in LIBRARY_NOISE if noise in result.stdout] == []
    assert "my-model" in result.stdout and "fits in 24.00 GiB" in flat(result.stdout)
    counted = [json.loads(path.read_text()) for path in (cache / "specs").glob("*.json")]
    assert [entry["exact"]["total"] for entry in counted] == [494032768]  # built on the meta device, not guessed
