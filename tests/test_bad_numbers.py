"""Numbers out of a real run's range are refused with exit 2 naming the flag or preset key, the
value and the range; every preset key is read by the planner; reasons say where a value came from."""

from __future__ import annotations

import json
import re
import typing

import pytest
from llmwizard.autotune import schema
from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import GOAL_FIELDS, Goals, goals_from_preset
from llmwizard.autotune.machine.hardware import from_spec
from llmwizard.autotune.model.model_spec import spec_from_config
from llmwizard.autotune.plan.planner import plan
from llmwizard.wizard.core import parse_goal_value

from tests.conftest import ROOT, run_cli
from tests.refusals import assert_refused

ESTIMATE = ["estimate", "--model", "embedded:tiny-llama", "--gpus", "1xRTX4090"]

# (argv, words the message must hold: the flag, the value, the allowed range). Each is refused
# while the arguments are parsed, before anything is planned.
BAD_FLAGS = [
    (["plan", "--epochs", "1e308"], ["--epochs", "1e308", "at most 10000"]),
    (["plan", "--epochs", "10001"], ["--epochs", "10001", "at most 10000"]),
    (["--yes", "--epochs", "1e308"], ["--epochs", "1e308", "at most 10000"]),
    (["plan", "--effective-batch", "99999999999999"], ["--effective-batch", "99999999999999", "at most 16777216"]),
    (["plan", "--micro-batch", "16777217"], ["--micro-batch", "16777217", "at most 16777216"]),
    (["plan", "--learning-rate", "1e-300"], ["--learning-rate", "1e-300", "from 1e-9 to 1"]),
    (["plan", "--lr", "1e308"], ["--lr", "1e308", "from 1e-9 to 1"]),
    (["plan", "--learning-rate", "2"], ["--learning-rate", "'2'", "from 1e-9 to 1"]),
    (["plan", "--processes", "99999999999"], ["--processes", "99999999999", "at most 1024"]),
    (["plan", "--max-steps", "10000000000"], ["--max-steps", "10000000000", "at most 1000000000"]),
    (["plan", "--eval-steps", "1e20"], ["--eval-steps", "1e20", "at most 1000000000"]),
    (["plan", "--lora-r", "65537"], ["--lora-r", "65537", "at most 65536"]),
    (["plan", "--max-length", "99999999999"], ["--max-length", "99999999999", "at most 16777216"]),
    (["plan", "--context-parallel", "5000"], ["--context-parallel", "5000", "at most 1024"]),
    (["plan", "--eval-fraction", "0.5"], ["--eval-fraction", "0.5", "under 0.5"]),
    (["plan", "--gpus", "8xH100", "--nodes", "100000"], ["--nodes", "100000", "at most 65536"]),
    (["plan", "--gpus", "8xH100", "--host-ram", "1e308"], ["--host-ram", "1e308", "at most 65536"]),
    ([*ESTIMATE, "--seq", "99999999999", "--batch", "1"], ["--seq", "99999999999", "at most 16777216"]),
    ([*ESTIMATE, "--seq", "128", "--batch", "1e30"], ["--batch", "1e30", "at most 16777216"]),
    ([*ESTIMATE, "--seq", "128", "--batch", "1", "--lora-r", "1e9"], ["--lora-r", "1e9", "at most 65536"]),
    # Each allowed, but together more examples per step than any batch: refused, not overflowed.
    (["plan", "--gpus", "8xH100", "--nodes", "60000", "--micro-batch", "64"],
     ["480000 process(es)", "micro_batch 64", "more than 16777216", "--micro-batch"]),
    (["stop", "somewhere", "--grace", "1e308"], ["--grace", "1e308", "at most 86400"]),
    (["stop", "somewhere", "--grace", "nan"], ["--grace", "nan", "greater than 0"]),
    (["try", "somewhere", "hello", "--max-new-tokens", "1e12"], ["--max-new-tokens", "1e12", "at most 65536"]),
]

# (preset text, words the message must hold: the key, the value, the allowed range or the fix).
# PyYAML reads 1e308 (no dot) as text and 1.0e+308 as a float: both are refused.
BAD_PRESETS = [
    ("epochs: 1e308\n", ["epochs", "1e308", "at most 10000"]),
    ("epochs: 1.0e+308\n", ["epochs", "1e+308", "at most 10000"]),
    ("learning_rate: 1.0e+308\n", ["learning_rate", "1e+308", "from 1e-9 to 1"]),
    ("learning_rate: 1e-300\n", ["learning_rate", "1e-300", "from 1e-9 to 1"]),
    ("lora_alpha: 1.0e+30\n", ["lora_alpha", "1e+30", "at most 65536"]),
    ("lora_r: 100000\n", ["lora_r", "100000", "at most 65536"]),
    ("weight_decay: 1.0e+308\n", ["weight_decay", "1e+308", "from 0 to 10"]),
    ("weight_decay: -0.1\n", ["weight_decay", "-0.1", "from 0 to 10"]),
    ("effective_batch: 99999999999999\n", ["effective_batch", "99999999999999", "at most 16777216"]),
    ("grad_accum: 0\n", ["grad_accum", "0", "1 or more"]),
    ("max_steps: 10000000000\n", ["max_steps", "10000000000", "at most 1000000000"]),
    ("evals_per_epoch: 0\n", ["evals_per_epoch", "0", "1 or more"]),
    ("max_length_cap: 99999999999\n", ["max_length_cap", "99999999999", "at most 16777216"]),
    ("processes: 99999999999\n", ["processes", "99999999999", "at most 1024"]),
    ("eval_fraction: 0.6\n", ["eval_fraction", "0.6", "under 0.5"]),
    ("seed: -1\n", ["seed", "-1", "0 to 4294967295"]),
    ("micro_batch: yes\n", ["micro_batch", "True", "an integer of 1 or more"]),
    ("epochs: true\n", ["epochs", "True", "a finite number greater than 0"]),
    ("lora_targets: []\n", ["lora_targets", "[]", "one or more linear layer names"]),
    ("extra: {a: 1}\n", ["extra", "unknown keys"]),
    ("report_to: wandb\n", ["report_to", "'wandb'", "a list, each one of: trackio"]),
    # A 400-digit number is named by its start and length, not printed whole.
    ("epochs: " + "9" * 400 + "\n", ["epochs", "999... (400 characters)", "at most 10000"]),
    # PyYAML keeps the last of two equal keys silently.
    ("epochs: 3\nlearning_rate: 1.0e-4\nepochs: 20\n", ["'epochs' twice", "lines 1 and 3", "Keep one"]),
    # A fixed accumulation and the batch it must divide, or the three batch keys that disagree.
    ("grad_accum: 3\neffective_batch: 16\n", ["effective_batch 16", "grad_accum 3", "from preset mine",
                                               "not a multiple of"]),
    ("grad_accum: 2\nmicro_batch: 2\neffective_batch: 16\n", ["effective_batch 16", "grad_accum 2",
                                                              "micro_batch 2", "does not match", "= 4",
                                                              "from preset mine"]),
]

CASES = ([pytest.param("flag", argv, words, id=" ".join(argv[-2:])) for argv, words in BAD_FLAGS]
         + [pytest.param("preset", text, words, id=f"preset {text.strip()}") for text, words in BAD_PRESETS])


@pytest.mark.parametrize("kind, given, words", CASES)
def test_bad_number_exits_2_naming_it(kind, given, words, tmp_path):
    if kind == "flag":
        result = run_cli(*given, cwd=tmp_path)
    else:
        preset = tmp_path / "mine.yaml"
        preset.write_text(given)
        result = run_cli("plan", "--preset", str(preset), cwd=tmp_path)
        # A schema refusal names the file; a planner's refusal names the preset.
        words = words if "from preset mine" in words else [*words, "mine.yaml"]
    assert_refused(result, words)


def test_more_processes_than_gpus_is_refused_naming_the_preset_key(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("processes: 4\n")
    result = run_cli("plan", "--preset", str(preset), "--gpus", "2xH100", cwd=tmp_path)
    assert_refused(result, ["processes = 4", "from preset mine", "2 GPU(s)", "--processes 2 or fewer"])


def test_too_many_cpu_processes_names_the_count_that_fits(tmp_path):
    # 1024 ranks share the host RAM: the advice is fewer processes, not a smaller model.
    result = run_cli("plan", "--processes", "1024", "--gpus", "cpu,ram=16GB", cwd=tmp_path)
    message = assert_refused(result, ["shared by 1024 processes", "--processes"])
    assert "smaller model" not in message


# ----------------------------------------------------------------------------- every key is read

LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 131072, "tie_word_embeddings": True}


def _data(longest: int = 900) -> DatasetProfile:
    return DatasetProfile(source="/data/train.jsonl", format="messages", num_examples=600, measured=600,
                          tokenizer="test", exact_tokens=True, mean_tokens=300.0, p50_tokens=300, p90_tokens=900,
                          p95_tokens=900, p99_tokens=900, max_tokens=longest, total_tokens=180000,
                          histogram=[(1, 900, 599), (901, longest, 1)])


# A value for every preset key that differs from what the planner would choose by itself.
SAMPLES: dict[str, object] = {
    "dataset_size": "large", "method": "full", "epochs": 3, "max_steps": 5, "learning_rate": 3e-5, "lora_r": 16,
    "lora_alpha": 64, "lora_dropout": 0.2, "lora_targets": ["q_proj"], "max_length": 128, "max_length_cap": 256,
    "allow_truncation": True, "effective_batch": 64, "micro_batch": 1, "grad_accum": 4, "eval_fraction": 0.2,
    "evals_per_epoch": 4, "eval_steps": 7, "lr_scheduler": "linear", "warmup_ratio": 0.2, "weight_decay": 0.1,
    "strategy": "zero3", "offload": "optimizer", "checkpointing": True, "precision": "fp16",
    "optimizer": "adafactor", "launcher": "torchrun", "processes": 1, "report_to": ["none"], "probe": False,
    "context_parallel": 2, "activation_offloading": True, "packing": True, "liger_kernel": True,
    "train_vision_tower": True, "trust_remote_code": True, "seed": 7,
    # The task's own keys: alone (the task is sft) each of them is refused, which changes the outcome too.
    "task": "dpo", "beta": 0.2, "reference": "precompute", "num_generations": 4, "max_completion_length": 64,
    "temperature": 0.7, "rewards": ["my_rewards.score"],
}


def test_every_preset_key_has_a_sample():
    assert set(SAMPLES) == GOAL_FIELDS


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_every_preset_key_changes_the_plan(key):
    """A key the planner never reads would give the same plan as without it (grad_accum did)."""
    hardware, model = from_spec("2xH100-80GB"), spec_from_config("llama-1b", "catalog", None, LLAMA_1B)
    # allow_truncation matters only when an example is longer than the model allows.
    data = _data(longest=200_000 if key == "allow_truncation" else 900)

    def planned(goals: Goals) -> object:
        try:
            return plan(hardware, model, data, goals)
        except UserError as error:
            return error.message

    baseline = planned(Goals(preset="mine"))
    assert planned(goals_from_preset("mine", {key: SAMPLES[key]})) != baseline


def test_grad_accum_is_honoured_and_the_effective_batch_follows():
    hardware, model = from_spec("2xH100-80GB"), spec_from_config("llama-1b", "catalog", None, LLAMA_1B)
    fixed = plan(hardware, model, _data(), goals_from_preset("mine", {"grad_accum": 4, "micro_batch": 2}))
    assert (fixed.micro_batch, fixed.grad_accum, fixed.effective_batch) == (2, 4, 2 * 2 * 4)
    assert "accumulation from preset mine" in fixed.reasons["batch"]
    alone = plan(hardware, model, _data(), goals_from_preset("mine", {"grad_accum": 3}))
    assert alone.grad_accum == 3
    assert alone.micro_batch * alone.num_processes * alone.grad_accum == alone.effective_batch


def test_docs_list_exactly_the_preset_keys():
    doc = (ROOT / "docs" / "schema.md").read_text()
    section = doc.split("## Preset keys", 1)[1].split("\n## ", 1)[0]
    keys = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert keys == GOAL_FIELDS, f"docs/schema.md lists {sorted(keys ^ GOAL_FIELDS)} unlike Goals"


def test_docs_name_each_preset_keys_rule():
    doc = (ROOT / "docs" / "schema.md").read_text()
    section = doc.split("## Preset keys", 1)[1].split("\n## ", 1)[0]
    hints = typing.get_type_hints(Goals, include_extras=True)
    checked = 0
    for key in GOAL_FIELDS:
        hint = hints[key]
        options = [hint] if typing.get_origin(hint) is typing.Annotated else typing.get_args(hint) or [hint]
        declared = [tp for tp in options if tp is not type(None)]
        rule = next((name for name, tp in schema.NUMBERS.items() if declared and tp == declared[0]), None)
        if rule:
            line = next(ln for ln in section.splitlines() if ln.startswith(f"| `{key}` |"))
            assert f"`{rule}`" in line, f"docs/schema.md: {key} is {rule}"
            checked += 1
    assert checked == 23  # every numeric key


# ----------------------------------------------------------------------------- one rule everywhere

@pytest.mark.parametrize("key, text", [("epochs", "1e308"), ("learning_rate", "1e-300"), ("lora_r", "65537"),
                                       ("micro_batch", "99999999999999"), ("max_steps", "1e10")])
def test_the_wizard_fields_use_the_same_rule(key, text):
    with pytest.raises(ValueError, match=re.escape(schema.describe(schema.field_type(Goals, [key])))):
        parse_goal_value(key, text)


def test_a_lora_rank_above_the_hidden_size_is_warned_about():
    hardware, model = from_spec("2xH100-80GB"), spec_from_config("llama-1b", "catalog", None, LLAMA_1B)
    wide = plan(hardware, model, _data(), Goals(lora_r=4096))
    assert any("above llama-1b's hidden size 2048" in w for w in wide.warnings), wide.warnings
    assert not any("hidden size" in w for w in plan(hardware, model, _data(), Goals(lora_r=64)).warnings)


def test_a_tiny_learning_rate_is_warned_about(tmp_path):
    result = run_cli("plan", "--learning-rate", "1e-8", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert any("far below" in w for w in json.loads(result.stdout)["warnings"])


# ----------------------------------------------------------------------------- reasons say where a value came from

def test_reasons_say_from_preset_and_why_the_size_class(tmp_path):
    # (a pretrained model: the embedded random-init one scales the rule's epochs and trains fully)
    result = run_cli("plan", "--preset", "small-dataset", "--lora-r", "8", "--model", "llama-3.2-1b",
                     "--gpus", "1xA100-80GB", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reasons = dict(line.split(": ", 1) for line in json.loads(result.stdout)["reasons"])
    assert reasons["epochs"] == "20 epochs: from preset small-dataset"
    assert "rank asked for" in reasons["lora"] and "alpha 8 (from preset small-dataset)" in reasons["lora"]
    # The size class says why: the data's rows and tokens against the rule's limits.
    assert re.search(r"small dataset \(from preset small-dataset\), as the data is: \d+ examples \(< 1000\) "
                     r"averaging \d+ tokens \(< 500\)", reasons["dataset"]), reasons["dataset"]
    assert "(asked for)" not in reasons["method"]
