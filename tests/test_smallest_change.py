"""The smallest change is the core's (llmwizard.autotune.plan.refusal), and both faces give it: the CLI
in flags, the wizard in fields. Advice that is followed must work."""

from __future__ import annotations

import json
import re

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.machine.hardware import from_spec
from llmwizard.autotune.plan.inputs import plan_for, profile_for
from llmwizard.autotune.model.model_spec import load_model_spec
from llmwizard.autotune.plan.refusal import smallest_change
from llmwizard.wizard.core import goals_for
from tests.conftest import run_cli
from tests.refusals import assert_refused, flat


def test_the_core_names_the_pin_a_refusal_comes_from_and_what_else_works():
    hardware, model = from_spec("2xRTX4090"), load_model_spec(None)
    profile = profile_for(model, None)

    def plan_with(settings):
        return plan_for(hardware, model, profile, goals_for(None, None, settings))

    pinned = {"strategy": "single", "epochs": 2.0}
    try:
        plan_with(pinned)
    except UserError as error:
        found = smallest_change(plan_with, pinned, error)
    else:
        raise AssertionError("strategy single on two GPUs must be refused")
    assert found.refused == ["strategy"]            # the epochs are not the cause
    fix = found.fixes[0]
    assert fix.cleared.strategy == "ddp" and set(fix.others) == {"fsdp", "zero2", "zero3"}
    assert plan_with({"strategy": fix.others[0], "epochs": 2.0}).strategy == fix.others[0]  # each works


def test_the_cli_gives_the_smallest_change_in_flags():
    result = run_cli("plan", "--gpus", "2xRTX4090", "--strategy", "single", "--epochs", "2")
    message = assert_refused(result, ["--strategy single", "Smallest change of what you set",
                                      "drop --strategy single (the planner picks ddp)", "--strategy zero3"])
    assert "--epochs" not in message.split("Smallest change", 1)[1]


def test_the_ram_the_no_fit_advice_names_is_the_ram_that_fits():
    """The advice names a machine's total RAM (what ',ram=' takes), not the usable share."""
    result = run_cli("plan", "--model", "llama-3.1-8b", "--gpus", "1xRTX4090", "--method", "full")
    assert result.returncode == 2
    ram = re.search(r"add ',ram=(\d+)GB'", flat(result.stderr))
    assert ram, flat(result.stderr)
    followed = run_cli("plan", "--model", "llama-3.1-8b", "--gpus", f"1xRTX4090,ram={ram.group(1)}GB",
                       "--method", "full", "--json")
    assert followed.returncode == 0, followed.stderr
    assert json.loads(followed.stdout)["offload"] != "none"


def test_keeping_a_pinned_micro_batch_is_priced_at_that_micro_batch():
    result = run_cli("plan", "--model", "llama-3.1-8b", "--gpus", "1xRTX4090", "--micro-batch", "4096")
    message = assert_refused(result, ["micro batch 4096 does not fit"])
    keeping = message.split("keeping micro batch 4096:", 1)[1].split("Smallest change", 1)[0]
    assert "fits with QLoRA" not in keeping, keeping  # QLoRA at micro-batch 1 is no answer to 4096
