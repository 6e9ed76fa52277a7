"""Plans for preference and reward tasks: the task's own decisions and their reasons, the rules
plan.yaml holds them to, and the task's levers when nothing fits."""

from __future__ import annotations

import dataclasses

import pytest

from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.errors import UserError
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware import from_spec
from llmwizard.autotune.model.model_spec import load_model_spec
from llmwizard.autotune.plan import Plan, TaskSettings
from llmwizard.autotune.plan.planner import plan
from tests.conftest import run_cli
from tests.refusals import assert_refused

# Pairs of a prompt (up to 500 tokens) and responses (up to 1500): the shape of an SFT-after-DPO set.
PAIRS = DatasetProfile(source="/data/pairs.jsonl", format="preference", num_examples=5000, measured=5000,
                       tokenizer="test", exact_tokens=True, mean_tokens=600, p50_tokens=500, p90_tokens=900,
                       p95_tokens=1000, p99_tokens=1500, max_tokens=2000, total_tokens=3_000_000)
PROMPTS = dataclasses.replace(PAIRS, format="prompt_only", mean_tokens=120, p50_tokens=100, p90_tokens=200,
                              p95_tokens=220, p99_tokens=250, max_tokens=300, total_tokens=600_000)


@pytest.fixture(scope="module")
def llama8b():
    return load_model_spec("llama-3.1-8b")


def planned(model, data=PAIRS, gpus="1xRTX4090", **goals) -> Plan:
    return plan(from_spec(gpus), model, data, Goals().merged(**goals))


def test_dpo_with_lora_takes_the_disabled_adapter_as_reference_and_a_tenth_of_the_rate(llama8b):
    sft = planned(llama8b)
    dpo = planned(llama8b, task="dpo")
    assert (dpo.task, dpo.method) == ("dpo", "lora")
    assert dpo.task_settings.reference == "adapter" and dpo.task_settings.beta == 0.1
    assert dpo.learning_rate == pytest.approx(sft.learning_rate / 10)
    assert "no second copy" in dpo.reasons["task_settings"] and "DPO paper" in dpo.reasons["task_settings"]
    assert "a tenth of the SFT rate" in dpo.reasons["learning_rate"]


def test_sft_plans_carry_no_task_in_plan_yaml(llama8b, tmp_path):
    sft = planned(llama8b)
    assert "task" not in sft.to_dict() and "task" not in sft.reasons
    dpo = planned(llama8b, task="dpo")
    dpo.save(tmp_path / "plan.yaml")
    assert Plan.load(tmp_path / "plan.yaml") == dpo


def test_orpo_needs_no_reference_and_keeps_the_sft_rate(llama8b):
    # (TRL 1.16's ORPO builds the whole vocabulary's logits in fp32 for both answers: on one 24 GB GPU
    # an 8B LoRA run at these lengths does not fit, so this plan is for an 80 GB one)
    sft, orpo = planned(llama8b, gpus="1xH100-80GB"), planned(llama8b, gpus="1xH100-80GB", task="orpo")
    assert orpo.task_settings.reference == "none" and orpo.learning_rate == sft.learning_rate


def test_grpo_batches_hold_whole_groups_and_its_length_is_prompt_plus_completion(llama8b):
    grpo = planned(llama8b, PROMPTS, gpus="2xRTX4090", task="grpo", num_generations=6)
    settings = grpo.task_settings
    assert settings.num_generations == 6 and settings.reference == "none" and settings.beta == 0
    assert grpo.effective_batch % 6 == 0
    assert (grpo.micro_batch * grpo.num_processes * grpo.grad_accum) % 6 == 0
    assert grpo.max_length == 320 + settings.max_completion_length  # 300 rounded up to 64, then 512
    assert "prompts x 6 completions" in grpo.reasons["effective_batch"]


def test_grpo_with_a_kl_term_keeps_a_reference(llama8b):
    grpo = planned(llama8b, PROMPTS, task="grpo", beta=0.04)
    assert grpo.task_settings.reference == "adapter"


@pytest.mark.parametrize("changes, words", [
    (dict(task_settings=None), "needs task_settings"),
    (dict(method="full", lora=None), "reference adapter disables a LoRA adapter"),
    (dict(task_settings=TaskSettings(beta=0.0, reference="adapter")), "needs beta above 0"),
    (dict(task_settings=TaskSettings(beta=0.1, reference="none")), "compares the policy with a reference"),
    (dict(task_settings=TaskSettings(beta=0.1, reference="adapter", num_generations=4)), "GRPO's"),
])
def test_plan_yaml_refuses_a_task_setting_that_cannot_run(llama8b, changes, words):
    dpo = planned(llama8b, task="dpo")
    with pytest.raises(UserError, match=words):
        Plan(**{**{f.name: getattr(dpo, f.name) for f in dataclasses.fields(dpo)}, **changes})


def test_a_grpo_plan_yaml_with_a_broken_group_is_refused(llama8b):
    grpo = planned(llama8b, PROMPTS, task="grpo", num_generations=4)
    fields = {f.name: getattr(grpo, f.name) for f in dataclasses.fields(grpo)}
    odd = dataclasses.replace(grpo.task_settings, num_generations=3)
    with pytest.raises(UserError, match="must divide by num_generations"):
        Plan(**{**fields, "task_settings": odd, "micro_batch": 1, "grad_accum": 8, "effective_batch": 8})


def test_grpo_settings_on_another_task_are_refused(llama8b):
    with pytest.raises(UserError, match="GRPO's settings"):
        planned(llama8b, task="dpo", num_generations=4)


def test_nothing_fits_names_the_tasks_levers_first(llama8b):
    with pytest.raises(UserError) as refused:
        planned(llama8b, task="dpo", method="full")
    fix = refused.value.fix
    assert fix.startswith("The task's own levers first:") and "--method lora" in fix
    assert fix.index("--method lora") < fix.index("Otherwise")


@pytest.mark.parametrize("flags, words", [
    (["--task", "dpo", "--beta", "-1"], ["--beta", "'-1'", "a number from 0 to 10"]),
    (["--task", "grpo", "--num-generations", "1"], ["--num-generations", "'1'", "2 or more"]),
    (["--task", "grpo", "--temperature", "0"], ["--temperature", "'0'", "greater than 0"]),
    (["--task", "grpo", "--reward", "rm -rf"], ["--reward", "'rm -rf'", "module.function"]),
    (["--task", "ppo"], ["--task", "ppo"]),
    (["--task", "dpo", "--beta", "0"], ["needs beta above 0"]),
    (["--task", "dpo", "--packing"], ["packing (asked for)", "DPO trainer", "--packing"]),
    (["--task", "grpo", "--gpus", "1xH100", "--activation-offloading"], ["activation_offloading", "GRPO trainer"]),
])
def test_bad_task_flags_are_refused_by_name(flags, words, tmp_path):
    assert_refused(run_cli("plan", *flags, cwd=tmp_path), words)


def test_the_search_never_offloads_activations_for_a_trainer_without_it(llama8b):
    """ORPO and GRPO have no activation offloading in TRL: a tight plan does without it."""
    for task, data in (("orpo", PAIRS), ("grpo", PROMPTS)):
        try:
            p = planned(llama8b, data, task=task)
        except UserError:
            continue  # nothing fits without it: refused, never exported with a key the trainer lacks
        assert not p.activation_offloading, task


def test_grpo_plans_size_generation_for_the_whole_step_whatever_the_micro_batch(llama8b):
    """TRL generates a step's completions at once (steps_per_generation = the accumulation), so the
    plan's generation cache holds micro-batch x accumulation sequences, not one micro-batch's."""
    from llmwizard.autotune.memory import estimate
    from llmwizard.autotune.plan.replan import setup_of

    grpo = planned(llama8b, PROMPTS, gpus="1xH100-80GB", task="grpo", micro_batch=4, effective_batch=64)
    assert grpo.grad_accum == 16
    setup = dataclasses.replace(setup_of(grpo), task="grpo", reference="none", num_generations=8,
                                prompt_len=grpo.task_settings.prompt_tokens,
                                completion_len=grpo.task_settings.max_completion_length)
    one_micro_batch = estimate(llama8b, setup, 80 * 2**30)
    assert grpo.estimate.components["generation KV cache"] == pytest.approx(
        16 * one_micro_batch.components["generation KV cache"], rel=0.01)
