"""The "does not fit" advice searches every tier the planner has, context parallelism included: the
largest length that fits and the smallest hardware that fits, each with the plan that gets there,
and following either one plans. Real commands (`llmwizard plan`), real model configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware import from_spec
from llmwizard.autotune.model.model_spec import spec_from_config
from llmwizard.autotune.plan.no_fit import DoesNotFit
from llmwizard.autotune.plan.planner import plan
from tests.conftest import ROOT, run_cli
from tests.refusals import assert_refused
from tests.test_planner import LARGE

CATALOG = {m["name"]: m for m in json.loads((ROOT / "autotune" / "model" / "model_catalog.json").read_text())["models"]}


@pytest.fixture(scope="module")
def llama_8b_4m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-3.1-8B's config with 4 M positions (ALST's 3.7 M-token runs stretch RoPE that far), as
    a local model directory: the catalog's copy stops at 131,072."""
    directory = tmp_path_factory.mktemp("models") / "llama-3.1-8b-4m"
    directory.mkdir()
    config = dict(CATALOG["llama-3.1-8b"]["config"], max_position_embeddings=4_194_304)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _advised_length(message: str) -> int:
    match = re.search(r"fits at [\d,]+ tokens \(--max-length (\d+)\)", message)
    assert match, message
    return int(match.group(1))


def test_3_7m_tokens_on_8_h100_is_told_the_longest_length_ulysses_reaches_and_it_plans(llama_8b_4m: Path):
    """The issue's case: 3.7 M tokens of Llama-3.1-8B full fine-tuning on 8x H100 does not fit. The
    advice was 'fits at 115,625 tokens', from one GPU per sequence; the planner itself splits one
    sequence over 8 GPUs and fits 1 M tokens, so the advice must name at least that."""
    common = ("plan", "--model", str(llama_8b_4m), "--gpus", "8xH100-80GB", "--method", "full")
    # the figure is for the sequence split over the 8 GPUs too, as the search would split it
    message = assert_refused(run_cli(*common, "--max-length", "3700000"),
                             ["Does not fit", "with checkpointing, 8 GPUs per sequence"])
    length = _advised_length(message)
    assert 1_000_000 <= length < 3_700_000, message
    followed = run_cli(*common, "--max-length", str(length), "--json")
    assert followed.returncode == 0, followed.stderr
    planned = json.loads(followed.stdout)
    assert planned["max_length"] == length and planned["context_parallel"] > 1
    # the largest: one step of the advice's grid longer does not fit (the planner in process, its
    # fix left unread, so no advice is searched for)
    config = json.loads((llama_8b_4m / "config.json").read_text())
    model = spec_from_config("llama-3.1-8b-4m", "local", None, config)
    with pytest.raises(DoesNotFit):
        plan(from_spec("8xH100-80GB"), model, LARGE, Goals(method="full", max_length=length + 64))
    assert plan(from_spec("8xH100-80GB"), model, LARGE, Goals(method="full", max_length=length)).context_parallel > 1


def test_the_smallest_hardware_that_fits_is_named_with_its_plan_and_it_plans():
    """131,072 tokens on 2x A100 40GB: two more GPUs fit (four GPUs per sequence); one more does not."""
    common = ("plan", "--model", "llama-3.1-8b", "--method", "full", "--max-length", "131072")
    message = assert_refused(run_cli(*common, "--gpus", "2xA100-40GB"),
                             ["Does not fit", "fits on 4 GPUs (--gpus 4xA100-40GB; 2 more than here)"])
    assert re.search(r"fits on 4 GPUs [^;]*; 2 more than here\): \w+ at micro-batch \d+", message), message
    assert _advised_length(message) > 32_768  # (one GPU per sequence: 32,768 at most)
    followed = run_cli(*common, "--gpus", "4xA100-40GB", "--json")
    assert followed.returncode == 0, followed.stderr
    assert json.loads(followed.stdout)["context_parallel"] > 1
    assert_refused(run_cli(*common, "--gpus", "3xA100-40GB"), ["Does not fit"])


def test_more_machines_are_named_with_nodes_when_one_machine_of_8_is_not_enough():
    """Llama-3.1-70B full at 131,072 tokens: 8x A100 40GB do not fit; two machines of 8 do."""
    common = ("plan", "--model", "llama-3.1-70b", "--method", "full", "--max-length", "131072", "--gpus",
              "8xA100-40GB")
    assert_refused(run_cli(*common), ["fits on 16 GPUs (--gpus 8xA100-40GB --nodes 2; 8 more than here)"])
    followed = run_cli(*common, "--nodes", "2", "--json")
    assert followed.returncode == 0, followed.stderr
    assert json.loads(followed.stdout)["num_machines"] == 2


@pytest.mark.parametrize(("gpus", "goals", "absent"), [
    # AdaLomo runs on one GPU and strategy single on one process: more GPUs are no fix for them
    ("1xRTX4090,ram=32GB", {"method": "full", "optimizer": "adalomo"}, "more than here"),
    ("1xRTX4090,ram=32GB", {"method": "full", "strategy": "single", "offload": "none"}, "more than here"),
])
def test_pins_more_gpus_cannot_help_get_no_hardware_advice(gpus: str, goals: dict, absent: str):
    model = spec_from_config("llama-3.1-8b", "catalog", None, CATALOG["llama-3.1-8b"]["config"])
    with pytest.raises(DoesNotFit) as err:
        plan(from_spec(gpus), model, LARGE, Goals(max_length=32768, **goals))
    assert absent not in str(err.value.fix)


def test_the_searched_fixes_are_worked_out_only_when_read():
    """A caller that only tries settings (the wizard's what-if fields, llmwizard.autotune.plan.refusal)
    reads no fix and pays nothing for the search; reading it twice searches once."""
    model = spec_from_config("llama-3.1-8b", "catalog", None, CATALOG["llama-3.1-8b"]["config"])
    calls: list[int] = []
    with pytest.raises(DoesNotFit) as err:
        plan(from_spec("2xA100-40GB"), model, LARGE, Goals(method="full", max_length=131072))
    error = err.value
    original = error._make_fix
    assert original is not None

    def counted() -> str:
        calls.append(1)
        return original()

    error._make_fix = counted
    first = error.fix
    assert error.fix == first and calls == [1]
    assert first and "--max-length" in first and "--gpus 4xA100-40GB" in first


def test_the_wizard_says_the_hardware_fix_in_its_fields():
    from llmwizard.wizard.core import in_wizard_words

    fix = ("fits on 4 GPUs (--gpus 4xA100-40GB,ram=256GB; 2 more than here): fsdp; "
           "fits on 16 GPUs (--gpus 8xA100-40GB --nodes 2; 8 more than here): fsdp")
    words = in_wizard_words(fix)
    assert "--" not in words, words
    assert "4xA100-40GB,ram=256GB in the GPUs field on step 2" in words
    assert "8xA100-40GB in the GPUs field and 2 in the nodes field on step 2" in words
