from __future__ import annotations

import pytest
import yaml

from llmwizard.autotune.dataset import profile_dataset
from llmwizard.autotune.embedded import EMBEDDED_DATASET, ensure_embedded_model
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.hardware import detect
from llmwizard.autotune.model_spec import load_model_spec
from llmwizard.autotune.plan import Plan
from llmwizard.autotune.planner import plan
from llmwizard.autotune.tokens import counter_for
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
    from llmwizard.autotune.planner import shrink_micro_batch

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
