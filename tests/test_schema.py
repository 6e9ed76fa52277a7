"""The schema: bad flags, preset keys and plan.yaml values are refused by the real command with
exit 2, no traceback, and a message naming the input, the value and what is allowed; the
allowed values the parser, the presets and the docs show are the schema's."""

from __future__ import annotations

import json
import re
import shutil
import typing
from pathlib import Path

import pytest
import yaml

from llmwizard.autotune import schema
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import GOAL_FIELDS, Goals
from llmwizard.autotune.plan import Plan
from llmwizard.presets import load_preset
from llmwizard.runner.metrics import MetricsTail
from llmwizard.wizard.cli import build_parser, build_subparser
from tests.conftest import ROOT, run_cli
from tests.refusals import assert_refused
from tests.refusals import snapshot as _snapshot

ESTIMATE = ["estimate", "--model", "embedded:tiny-llama", "--gpus", "1xRTX4090"]

# (argv, words the message must hold: the flag as typed, the value, what is allowed)
BAD_FLAGS = [
    (["plan", "--epochs", "nan"], ["--epochs", "nan", "finite number greater than 0"]),
    (["plan", "--epochs", "inf"], ["--epochs", "inf", "finite number greater than 0"]),
    (["plan", "--epochs", "0"], ["--epochs", "'0'", "greater than 0"]),
    (["plan", "--epochs", "-1"], ["--epochs", "'-1'", "greater than 0"]),
    (["plan", "--max-steps", "0"], ["--max-steps", "'0'", "1 or more"]),
    (["plan", "--max-steps", "-5"], ["--max-steps", "'-5'", "1 or more"]),
    (["plan", "--lora-r", "0"], ["--lora-r", "'0'", "1 or more"]),
    (["plan", "--micro-batch", "0"], ["--micro-batch", "'0'", "1 or more"]),
    (["plan", "--processes", "0"], ["--processes", "'0'", "1 or more"]),
    (["plan", "--learning-rate", "-1"], ["--learning-rate", "'-1'", "greater than 0"]),
    (["plan", "--host-ram", "-4"], ["--host-ram", "'-4'", "greater than 0"]),
    (["plan", "--eval-fraction", "1"], ["--eval-fraction", "'1'", "not including) 1"]),
    (["--yes", "--epochs", "many"], ["--epochs", "many", "finite number"]),
    (["plan", "--strategy", "zero4"], ["--strategy", "zero4", "zero3"]),
    ([*ESTIMATE, "--seq", "128", "--batch", "1", "--lora-r", "0"], ["--lora-r", "'0'", "1 or more"]),
    ([*ESTIMATE, "--seq", "0", "--batch", "1"], ["--seq", "'0'", "1 or more"]),
    (["plan", "--nodes", "2"], ["--nodes 2", "--gpus"]),
    ([*ESTIMATE, "--seq", "10000000", "--batch", "1"], ["--seq 10000000", "positions", "--seq 512 or less"]),
    (["estimate", "--model", "embedded:tiny-llama", "--gpus", "cpu", "--seq", "128", "--batch", "1", "--liger-kernel"],
     ["Liger", "GPU", "--no-liger-kernel"]),
    ([*ESTIMATE, "--seq", "128", "--batch", "1", "--activation-offloading", "--gpus", "cpu"],
     ["Activation offloading", "no GPU"]),
    (["estimate", "--model", "llama-3.1-8b", "--gpus", "8xH100", "--seq", "128", "--batch", "1", "--context-parallel", "3"],
     ["Context parallelism over 3", "divide the number of processes (8)"]),
    (["estimate", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--seq", "128", "--batch", "1", "--strategy", "zero2",
      "--offload", "params"], ["Offload params with strategy zero2", "--strategy zero3"]),
    ([*ESTIMATE, "--seq", "128", "--batch", "1", "--offload", "disk"], ["--offload", "disk", "'optimizer', 'params'"]),
    (["plan", "--offload", "params"], ["Offload params", "no GPU", "Drop --offload"]),
    (["estimate", "--model", "embedded:tiny-llama", "--gpus", "cpu", "--seq", "128", "--batch", "1", "--offload"],
     ["Offload optimizer", "no GPU", "--gpus"]),
    (["plan", "--gpus", "4x0GB"], ["4x0GB"]),
    (["plan", "--context-parallel", "0"], ["--context-parallel", "'0'", "1 or more"]),
    (["plan", "--activation-offloading"], ["Activation offloading", "no GPU", "--no-activation-offloading"]),
    (["plan", "--liger-kernel"], ["Liger", "GPU", "--no-liger-kernel"]),
    (["plan", "--gpus", "8xH100", "--context-parallel", "4", "--packing"], ["packing", "--no-packing"]),
    (["plan", "--gpus", "8xH100", "--context-parallel", "3"], ["Context parallelism over 3", "divide the number of processes (8)"]),
    (["plan", "--gpus", "6xH100", "--model", "llama-3.1-8b", "--context-parallel", "3", "--strategy", "zero3"],
     ["Context parallelism over 3", "32 heads and 8 key/value heads", "divide the 6 processes: 2"]),
    (["plan", "--gpus", "2xH100", "--strategy", "zero2", "--offload", "params"],
     ["Offload params with strategy zero2", "--strategy zero3", "--offload optimizer"]),
    (["plan", "--gpus", "2xH100", "--strategy", "ddp", "--offload", "optimizer"],
     ["Offload optimizer with strategy ddp", "drop --offload"]),
]

# (preset text, words the message must hold: the key, the value, what is allowed)
BAD_PRESETS = [
    ("epochs: many\n", ["epochs", "many", "finite number greater than 0"]),
    ("learning_rate: -1e-4\n", ["learning_rate", "-1e-4", "greater than 0"]),
    ("strategy: zero4\n", ["strategy", "zero4", "single, ddp, fsdp, zero2, zero3"]),
    ("lora_dropout: 1.5\n", ["lora_dropout", "1.5", "up to (not including) 1"]),
    ("micro_batch: 0\n", ["micro_batch", "0", "1 or more"]),
    ("epochs: 3\nepoch_count: 4\n", ["epoch_count", "unknown keys"]),
]

# (plan.yaml change, words the message must hold)
BAD_PLANS = [
    ({"strategy": "zero4"}, ["strategy", "zero4", "single, ddp, fsdp, zero2, zero3"]),
    ({"micro_batch": -3}, ["micro_batch", "-3", "1 or more"]),
    ({"epochs": "many"}, ["epochs", "many", "finite number greater than 0"]),
    ({"learning_rate": float("nan")}, ["learning_rate", "nan", "finite number greater than 0"]),
    ({"max_steps": 0}, ["max_steps", "0", "-1 (run the epochs)"]),
    ({"main_process_port": 70000}, ["main_process_port", "70000", "1 to 65535"]),
    ({"grad_accum": 7}, ["effective_batch", "x 7 =", "change them together"]),
    ({"colour": "blue"}, ["unknown key 'colour'"]),
    # plan.yaml takes the flags' ranges: what `--epochs` or a preset refuses, a hand edit cannot set
    ({"epochs": 1e308}, ["epochs", "at most 10000"]),
    ({"weight_decay": 1e308}, ["weight_decay", "from 0 to 10"]),
    ({"learning_rate": 1e-300}, ["learning_rate", "from 1e-9 to 1"]),
    ({"micro_batch": 2**40, "effective_batch": 2**40}, ["micro_batch", "at most 16777216"]),
    ({"lora": {"r": 4, "alpha": 10**30, "dropout": 0.05, "target_modules": ["q_proj"]}}, ["lora.alpha", "at most 65536"]),
    ({"pinned": ["colour"]}, ["pinned", "colour", "micro_batch"]),
    ({"lora": {"r": 0, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj"]}}, ["lora.r", "0", "1 or more"]),
]

CASES = ([pytest.param("flag", argv, words, id=" ".join(argv[-2:])) for argv, words in BAD_FLAGS]
         + [pytest.param("preset", text, words, id=f"preset {text.strip()}") for text, words in BAD_PRESETS]
         + [pytest.param("plan", change, words, id=f"plan.yaml {change}") for change, words in BAD_PLANS])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run directory, exported by the command."""
    out = tmp_path_factory.mktemp("export") / "run"
    result = run_cli("export", "--out", str(out), "--max-steps", "2")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("kind, given, words", CASES)
def test_bad_input_exits_2_naming_it(kind, given, words, tmp_path, exported):
    if kind == "flag":
        result = run_cli(*given, cwd=tmp_path)
    elif kind == "preset":
        preset = tmp_path / "mine.yaml"
        preset.write_text(given)
        result = run_cli("plan", "--preset", str(preset), cwd=tmp_path)
        words = [*words, "mine.yaml"]
    else:
        run_dir = tmp_path / "run"
        shutil.copytree(exported, run_dir)
        data = yaml.safe_load((run_dir / "plan.yaml").read_text())
        data.update(given)
        (run_dir / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        before = _snapshot(run_dir)
        result = run_cli("run", str(run_dir), cwd=tmp_path)
        assert _snapshot(run_dir) == before, "a refused plan.yaml must leave the run directory as it was"
        words = [*words, "plan.yaml"]
    assert_refused(result, words)


def test_scientific_notation_without_a_dot_is_a_float(tmp_path, exported):
    # PyYAML reads `1e-4` (no dot) as a string; the schema's lax float parsing takes it.
    assert yaml.safe_load("x: 1e-4")["x"] == "1e-4"
    preset = tmp_path / "mine.yaml"
    preset.write_text("learning_rate: 1e-4\nepochs: 2e0\n")
    goals = load_preset(str(preset))
    assert (goals.learning_rate, goals.epochs) == (1e-4, 2.0)

    text = (exported / "plan.yaml").read_text()
    text = re.sub(r"^learning_rate: .*$", "learning_rate: 1e-4", text, flags=re.M)
    (tmp_path / "plan.yaml").write_text(text)
    assert Plan.load(tmp_path / "plan.yaml").learning_rate == 1e-4

    assert build_subparser("plan").parse_args(["--lr", "1e-4"]).learning_rate == 1e-4


def test_saved_plan_loads_back_equal(tmp_path, exported):
    plan = Plan.load(exported / "plan.yaml")
    plan.save(tmp_path / "plan.yaml")
    assert Plan.load(tmp_path / "plan.yaml") == plan
    assert (tmp_path / "plan.yaml").read_text() == (exported / "plan.yaml").read_text()


def _parsers():
    return [build_parser(), build_subparser("plan"), build_subparser("export"), build_subparser("estimate")]


FLAG_CHOICES = {"method": schema.Method, "strategy": schema.Strategy, "offload": schema.Offload,
                "launcher": schema.Launcher, "precision": schema.Precision, "optimizer": schema.Optimizer,
                "attention": schema.Attention, "report_to": schema.Tracker, "lr_scheduler": schema.LrScheduler,
                "task": schema.Task, "reference": schema.Reference}


def test_argparse_choices_are_the_schema_literals():
    seen = set()
    for parser in _parsers():
        for action in parser._actions:
            if action.choices is not None:
                assert action.dest in FLAG_CHOICES, f"--{action.dest} has choices outside the schema"
                assert list(action.choices) == list(typing.get_args(FLAG_CHOICES[action.dest]))
                seen.add(action.dest)
    assert seen == set(FLAG_CHOICES)


def test_goal_flags_take_the_goals_field_types():
    hints = typing.get_type_hints(Goals, include_extras=True)
    checked = 0
    for parser in _parsers()[:3]:
        for action in parser._actions:
            if action.dest in GOAL_FIELDS and hasattr(action.type, "schema_type"):
                if action.nargs == "+":  # a list flag: each word has the item's type; Goals checks the list
                    assert typing.get_origin(typing.get_args(hints[action.dest])[0]) is typing.Annotated
                    continue
                assert hints[action.dest] == action.type.schema_type | None, action.dest
                checked += 1
    assert checked >= 3 * 8


def test_goals_refuse_bad_values_as_user_errors():
    with pytest.raises(UserError, match="micro_batch = 0"):
        Goals().merged(micro_batch=0)
    with pytest.raises(UserError, match="strategy = 'zero4'"):
        Goals().merged(strategy="zero4")
    assert Goals().merged(epochs="1e-4").epochs == 1e-4


@pytest.mark.parametrize("name", sorted(schema.CHOICES))
def test_docs_list_every_choice(name):
    doc = (ROOT / "docs" / "schema.md").read_text()
    line = next((ln for ln in doc.splitlines() if f"`{name}`" in ln), None)
    assert line is not None, f"docs/schema.md does not describe {name}"
    for value in schema.choices(schema.CHOICES[name]):
        assert f"`{value}`" in line, f"docs/schema.md: {name} lacks {value}"


@pytest.mark.parametrize("name", sorted(schema.NUMBERS))
def test_docs_state_every_number_rule(name):
    doc = (ROOT / "docs" / "schema.md").read_text()
    line = next((ln for ln in doc.splitlines() if f"`{name}`" in ln), None)
    assert line is not None and schema.describe(schema.NUMBERS[name]) in line, name


def test_a_malformed_metrics_line_is_skipped_with_a_note(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "begin", "step": 0, "max_steps": 4}\n'
                    '{"type": "log", "step": "three", "loss": 1.0}\n'
                    '{"type": "log", "step": 4, "loss": NaN}\n'
                    'not json\n'
                    '{"type": "log", "step": 5, "loss": 0.5}')
    tail = MetricsTail(path)
    records = tail.poll()
    assert [(r["type"], r["step"]) for r in records] == [("begin", 0), ("log", 4)]
    assert len(tail.notes) == 2 and "step = 'three'" in tail.notes[0] and "not JSON" in tail.notes[1]
    with open(path, "a") as f:
        f.write("\n")
    assert [r["step"] for r in tail.poll()] == [5]


@pytest.mark.parametrize("flags, field, value", [
    (["--gpus", "8xH100", "--model", "qwen2.5-7b", "--max-length", "32768", "--context-parallel", "4"],
     "context_parallel", 4),
    (["--packing"], "packing", True),
    (["--gpus", "1xH100", "--activation-offloading"], "activation_offloading", True),
    (["--gpus", "1xH100", "--liger-kernel"], "liger_kernel", True),
    (["--gpus", "1xH100", "--no-liger-kernel"], "liger_kernel", False),
])
def test_saver_flags_reach_the_plan(capsys, flags, field, value):
    from llmwizard.wizard.cli import main

    assert main(["plan", "--dataset", "embedded:arithmetic", *flags, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[field] == value
