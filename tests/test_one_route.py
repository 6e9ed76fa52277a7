"""One route from input to plan: the CLI and the wizard turn the same inputs into the same plan
(llmwizard.autotune.plan.inputs), the flag-to-goal mapping is Goals' own fields, and a Goals field
without a flag is documented as preset-only."""

from __future__ import annotations

import json
import re

from llmwizard.autotune.goals import GOAL_FIELDS
from llmwizard.wizard import cli, core
from tests.conftest import ROOT

ARGV = ["--gpus", "2xRTX4090", "--micro-batch", "2", "--epochs", "3", "--no-checkpointing", "--lr", "3e-4"]


def _flag_table() -> dict[str, set[str]]:
    """docs/schema.md's preset keys with the flags its last column names (empty: preset-only)."""
    doc = (ROOT / "docs" / "schema.md").read_text()
    section = doc.split("## Preset keys", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        match = re.match(r"^\| `(\w+)` \|.*\|([^|]*)\|\s*$", line)
        if match:
            table[match.group(1)] = set(re.findall(r"`(--[\w-]+)`", match.group(2)))
    return table


def test_every_goal_has_its_flag_or_is_documented_as_preset_only():
    parser = cli.build_subparser("plan")
    flags: dict[str, set[str]] = {}
    for action in parser._actions:
        if action.dest in GOAL_FIELDS:
            flags.setdefault(action.dest, set()).update(action.option_strings)
    table = _flag_table()
    assert set(table) == GOAL_FIELDS
    for key in GOAL_FIELDS:
        assert table[key] == flags.get(key, set()), f"docs/schema.md's flags for {key}: {table[key]} vs {flags.get(key)}"
    assert "Preset-only" in (ROOT / "docs" / "schema.md").read_text()


def test_every_goal_flag_reaches_the_goals_and_is_pinned():
    args = cli.build_subparser("plan").parse_args(ARGV)
    goals = cli._goals(args)
    assert (goals.micro_batch, goals.epochs, goals.checkpointing, goals.learning_rate) == (2, 3.0, False, 3e-4)
    assert goals.explicit == {"micro_batch", "epochs", "checkpointing", "learning_rate"}


def test_the_cli_and_the_wizard_make_the_same_plan():
    args = cli.build_subparser("plan").parse_args(ARGV)
    from_cli, *_ = cli._make_plan(args)

    hardware = core.hardware_from_spec("2xRTX4090")
    model = core.load_model(None)
    report = core.profile_dataset(None, model)
    goals = core.goals_for(None, None, {"micro_batch": 2, "epochs": 3.0, "checkpointing": False,
                                        "learning_rate": 3e-4})
    from_wizard = core.make_plan(hardware, model, report, goals)
    assert from_wizard.to_dict() == from_cli.to_dict()
    assert from_cli.pinned == ["checkpointing", "epochs", "learning_rate", "micro_batch"]


def test_a_damaged_calibration_store_is_a_warning_of_the_plan_in_both_faces(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMWIZARD_CALIBRATION_DIR", str(tmp_path))
    from llmwizard.autotune.machine.calibration import store_path

    store_path().write_text("{not json")
    args = cli.build_subparser("plan").parse_args(ARGV)
    from_cli, *_ = cli._make_plan(args)
    assert any("Calibration store" in warning for warning in from_cli.warnings), from_cli.warnings
    assert "Calibration store" in json.dumps(from_cli.to_json_summary())  # `plan --json` carries it too
    model = core.load_model(None)
    from_wizard = core.make_plan(core.hardware_from_spec("2xRTX4090"), model, core.profile_dataset(None, model),
                                 core.goals_for(None, args))
    assert from_wizard.warnings == from_cli.warnings
