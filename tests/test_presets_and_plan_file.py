from __future__ import annotations

import pytest
import yaml

from llmwizard.autotune.data.dataset import profile_dataset
from llmwizard.autotune.embedded import EMBEDDED_DATASET, ensure_embedded_model
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.machine.hardware import detect
from llmwizard.autotune.model.model_spec import load_model_spec
from llmwizard.autotune.plan import Plan
from llmwizard.autotune.plan.planner import plan
from llmwizard.autotune.data.tokens import counter_for
from llmwizard.presets import list_presets, load_preset


@pytest.fixture(scope="module")
def cpu_plan() -> Plan:
    profile = profile_dataset(EMBEDDED_DATASET, counter_for(ensure_embedded_model()))
    return plan(detect(), load_model_spec(None), profile, load_preset("small-dataset"))


def test_presets_carry_the_dataset_rules():
    names = dict(list_presets())
    assert {"small-dataset", "large-dataset"} <= set(names)
    small, large = load_preset("small-dataset"), load_preset("large-dataset")
    assert (small.epochs, small.learning_rate, small.lora_r, small.max_length_cap) == (20, 2e-4, 4, 1024)
    assert (large.epochs, large.learning_rate, large.lora_r, large.max_length_cap) == (10, 1e-4, 8, 2048)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(UserError, match="Unknown preset 'tiny'") as err:
        load_preset("tiny")
    assert "small-dataset" in err.value.fix


def test_preset_with_unknown_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 3\nepoch_count: 4\n")
    with pytest.raises(UserError, match="epoch_count"):
        load_preset(str(path))


def test_plan_round_trips(tmp_path, cpu_plan):
    cpu_plan.save(tmp_path / "plan.yaml")
    assert Plan.load(tmp_path / "plan.yaml") == cpu_plan


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("strategy"), "missing key 'strategy'"),
    (lambda d: d.update(micro_batch="four"), "micro_batch = 'four' is not allowed; use an integer of 1 or more"),
    (lambda d: d.update(colour="blue"), "unknown key 'colour'"),
    (lambda d: d["estimate"]["per_gpu"].update(total="many"), "estimate.total"),
])
def test_damaged_plan_names_the_field(tmp_path, cpu_plan, damage, message):
    data = cpu_plan.to_dict()
    damage(data)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=message):
        Plan.load(path)


def test_unparseable_plan(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("strategy: [unclosed\n")
    with pytest.raises(UserError, match="cannot be read"):
        Plan.load(path)


def test_shrinking_the_micro_batch_keeps_the_effective_batch(cpu_plan):
    from llmwizard.autotune.plan.planner import shrink_micro_batch

    smaller = shrink_micro_batch(cpu_plan, "out of memory at step 3", load_model_spec(None))
    assert smaller is not None
    assert smaller.micro_batch == cpu_plan.micro_batch // 2
    assert smaller.micro_batch * smaller.grad_accum * smaller.num_processes == cpu_plan.effective_batch
    assert "out of memory" in smaller.reasons["batch"]
    assert smaller.estimate.activations < cpu_plan.estimate.activations
    one = cpu_plan
    while one.micro_batch > 1:
        one = shrink_micro_batch(one, "test")
    assert shrink_micro_batch(one, "test") is None


# ----------------------------------------------------------------------------- the presets

BUNDLED = ["cpu-debug", "dpo", "full-finetune", "grpo", "kto", "large-dataset", "long-context", "multi-node", "orpo",
           "qlora", "small-dataset"]


def test_every_bundled_preset_passes_the_schema_and_names_its_command():
    from llmwizard.presets import PRESET_DIR, all_presets

    infos = {info.name: info for info in all_presets() if not info.user}
    assert sorted(infos) == BUNDLED
    for name, info in infos.items():
        assert info.path.parent == PRESET_DIR and info.description
        assert info.command.startswith("llmwizard ") and f"--preset {name}" in info.command, info.command
        assert load_preset(name).preset == name
    assert load_preset("qlora").method == "qlora" and load_preset("full-finetune").method == "full"
    assert load_preset("long-context").max_length_cap == 131072
    assert load_preset("multi-node").launcher == "torchrun"
    assert [load_preset(name).task for name in ("dpo", "orpo", "kto", "grpo")] == ["dpo", "orpo", "kto", "grpo"]


@pytest.mark.parametrize("name", ["long-context", "full-finetune", "qlora", "multi-node"])
def test_a_presets_heading_command_runs(tmp_path, name):
    """The command each GPU preset is headed by plans (or exports) for its hardware spec."""
    import shlex

    from llmwizard.presets import preset_info
    from tests.conftest import run_cli

    words = shlex.split(preset_info(name).command)
    assert words[0] == "llmwizard" and words[1] in ("plan", "export")
    result = run_cli(*words[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    if name == "multi-node":
        run = tmp_path / "runs" / "two-nodes"
        assert (run / "slurm.sbatch").is_file()
        assert "--rdzv_backend c10d" in (run / "launch.sh").read_text()
    if name == "long-context":
        assert "131072 tokens" in result.stdout and "checkpointing" in result.stdout


def test_long_context_that_cannot_fit_says_so_with_figures():
    from tests.conftest import run_cli

    result = run_cli("plan", "--preset", "long-context", "--model", "llama-3.1-8b", "--gpus", "1xRTX4090",
                     "--max-length", "131072")
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, out
    assert "does not fit" in out and "GiB" in out and "--max-length" in out


def test_user_presets_are_listed_shown_and_checked(tmp_path):
    from tests.conftest import run_cli

    user_dir = tmp_path / "config" / "presets"
    user_dir.mkdir(parents=True)
    (user_dir / "my-team.yaml").write_text("# Our defaults.\n#   llmwizard --preset my-team --yes\n"
                                           "description: our team's settings\nepochs: 2\nlora_r: 16\n")
    env = {"LLMWIZARD_CONFIG_DIR": str(tmp_path / "config")}
    listed = run_cli("presets", env=env)
    assert listed.returncode == 0, listed.stderr
    for name in [*BUNDLED, "my-team (yours)"]:
        assert name in listed.stdout
    assert "llmwizard --preset my-team --yes" in listed.stdout and "llmwizard --preset cpu-debug --yes" in listed.stdout
    shown = run_cli("presets", "show", "my-team", env=env)
    assert shown.returncode == 0 and "lora_r: 16" in shown.stdout
    planned = run_cli("plan", "--preset", "my-team", "--json", env=env)
    assert planned.returncode == 0, planned.stderr

    (user_dir / "broken.yaml").write_text("epochs: 2\nlora_rank: 16\n")
    for args in (("presets", "show", "broken"), ("plan", "--preset", "broken")):
        failed = run_cli(*args, env=env)
        assert failed.returncode == 2 and "lora_rank" in failed.stderr and "Traceback" not in failed.stderr


def test_qlora_without_bitsandbytes_stops_before_launch(monkeypatch):
    import importlib.util

    from llmwizard.runner.preflight import check_packages

    check_packages("lora", "adamw")
    if importlib.util.find_spec("bitsandbytes") is not None:  # the test extra installs it (GaLore imports it)
        check_packages("qlora", "adamw_8bit")
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(UserError, match="QLoRA .* needs bitsandbytes") as err:
        check_packages("qlora", "adamw")
    assert "pip install bitsandbytes" in err.value.fix
