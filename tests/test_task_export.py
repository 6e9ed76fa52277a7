"""Preference and reward tasks' exported files: the task's TRL YAML is read by TrlParser with the
task's own config class (every key a field it knows), and every launch path names the task. Then
the training entry's task pieces that need no training: its options, the reward functions (the
exact answer, a name that does not import), the held-out samples of each task's rows, and a run
directory as the model to start from.

Plans are the planner's SFT plans with the task swapped in (dataclasses.replace re-checks the
Plan's task rules), so what is tested here is the exporters alone.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.plan import Plan, TaskSettings
from llmwizard.runner.export import export, trl_config
from llmwizard.runner.export.configs import _NOT_A_FIELD, grpo_eval_batch, sft_config
from llmwizard.runner.rundir import TRL_CONFIGS, trl_config_name

EXACT = "llmwizard.runner.rank.rewards.exact_answer"
SETTINGS = {
    "dpo": TaskSettings(beta=0.1, reference="adapter"),
    "kto": TaskSettings(beta=0.2, reference="precompute"),
    "orpo": TaskSettings(beta=0.1, reference="none", max_completion_length=16),
    "grpo": TaskSettings(beta=0.04, reference="adapter", num_generations=4, max_completion_length=8,
                         temperature=0.9, rewards=[EXACT, "tests.rewards.length_reward"]),
}


def _sft_plan(**goals) -> Plan:
    from tests.test_export import _gpu_plan, _plan

    return _gpu_plan(**goals) if goals.pop("gpu", False) else _plan(**goals)


def task_plan(task: str, base: Plan | None = None, **changes) -> Plan:
    base = base or _sft_plan()
    batch = {"micro_batch": 2, "grad_accum": 2, "effective_batch": 2 * 2 * base.num_processes // base.context_parallel}
    values = {"task": task, "task_settings": SETTINGS[task], "learning_rate": base.learning_rate / 10, **batch}
    return dataclasses.replace(base, **{**values, **changes})


def classes(task: str) -> tuple[type, ...]:
    from trl import ModelConfig, ScriptArguments

    from llmwizard.runner.rank.tasks import config_class

    return ScriptArguments, config_class(task), ModelConfig


def parsed(directory: Path, task: str, *extra: str):
    from trl import TrlParser

    return TrlParser(classes(task)).parse_args_and_config(["--config", str(directory / trl_config_name(task)),
                                                           *extra])


@pytest.mark.parametrize("task", sorted(SETTINGS))
def test_task_yaml_is_read_by_its_own_config_class(tmp_path, task):
    plan = task_plan(task)
    export(plan, tmp_path)
    name = f"{task}_config.yaml"
    assert (tmp_path / name).is_file() and not (tmp_path / "sft_config.yaml").exists()
    data = yaml.safe_load((tmp_path / name).read_text())
    known = {f.name for cls in classes(task) for f in dataclasses.fields(cls)}
    assert set(data) - {"env"} <= known, set(data) - known
    script, training, model = parsed(tmp_path, task)
    assert training.beta == SETTINGS[task].beta
    assert training.learning_rate == pytest.approx(plan.learning_rate)
    assert training.per_device_train_batch_size == 2 and training.gradient_accumulation_steps == 2
    assert model.use_peft and script.dataset_name == plan.dataset
    if task in ("dpo", "kto"):
        assert training.precompute_ref_log_probs is (SETTINGS[task].reference == "precompute")
        assert training.max_length == plan.max_length
    if task == "orpo":
        assert training.max_completion_length == 16 and training.max_length == plan.max_length
    if task == "grpo":
        assert (training.num_generations, training.max_completion_length, training.temperature) == (4, 8, 0.9)
        assert "max_length" not in data  # GRPO's sequence is the prompt and max_completion_length
    # The header says how the entry reads it, and launch.sh runs the task with its rewards.
    assert (tmp_path / name).read_text().startswith(f"# TRL {task.upper()} config (TrlParser): python -m "
                                                    f"llmwizard.runner.rank.train --config {name} --task {task}\n")
    launch = (tmp_path / "launch.sh").read_text()
    rewards = f" --reward {EXACT} --reward tests.rewards.length_reward" if task == "grpo" else ""
    assert f"--config {name} --metrics-file metrics.jsonl --eval-fraction 0.1 --task {task}{rewards} \"$@\"" in launch
    assert name in (tmp_path / "README.txt").read_text()


def test_the_task_classes_lack_exactly_the_sft_keys_left_out():
    """_NOT_A_FIELD names what each task's class lacks of the SFT YAML's keys, no more and no less."""
    from trl import SFTConfig

    sft_keys = {f.name for f in dataclasses.fields(SFTConfig)}
    for task in SETTINGS:
        own = {f.name for f in dataclasses.fields(classes(task)[1])}
        written = set(sft_config(_sft_plan())) | {"packing_strategy", "activation_offloading", "pad_to_multiple_of"}
        assert set(_NOT_A_FIELD[task]) == (written & sft_keys) - own, task


@pytest.mark.parametrize("processes", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("generations", [2, 3, 4, 8, 16])
def test_grpo_eval_batch_holds_whole_groups(processes, generations):
    for micro in (1, 2, 3, 5, 8):
        batch = grpo_eval_batch(micro, processes, generations)
        assert batch >= micro and (batch * processes) % generations == 0
        assert batch - micro < generations  # the smallest such batch


def test_grpo_eval_batch_is_one_grpo_config_accepts(tmp_path):
    """GRPOConfig's own check (eval batch x processes divides by num_generations) passes on the export."""
    plan = task_plan("grpo", micro_batch=4, grad_accum=1, effective_batch=4)
    export(plan, tmp_path)
    _, training, _ = parsed(tmp_path, "grpo")
    assert training.eval_strategy == "steps" and training.per_device_eval_batch_size == 4


def test_gpu_zero3_full_dpo_with_a_reference_copy_parses(tmp_path, monkeypatch):
    base = _sft_plan(gpu=True, strategy="zero3", method="full", launcher="torchrun")
    plan = task_plan("dpo", base, task_settings=TaskSettings(beta=0.1, reference="copy"))
    export(plan, tmp_path)
    monkeypatch.chdir(tmp_path)  # ds_config.json is relative, as launch.sh runs it
    _, training, model = parsed(Path("."), "dpo", "--bf16", "false", "--use_cpu", "true")
    assert not model.use_peft and training.precompute_ref_log_probs is False
    assert training.hf_deepspeed_config.config["zero_optimization"]["stage"] == 3
    assert "--task dpo" in (tmp_path / "launch.sh").read_text()
    assert subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")]).returncode == 0


def test_every_launch_path_names_the_task(tmp_path):
    """torchrun, deepspeed, Slurm on two machines and the cluster targets all start the entry as
    launch.sh does; Ray's worker calls it with the same arguments."""
    from llmwizard.runner.export.scripts import train_arguments
    from llmwizard.runner.export.targets.ray_worker import worker_arguments

    base = _sft_plan(gpu=True, strategy="zero2", launcher="deepspeed", nodes=2, method="lora")
    plan = task_plan("grpo", base, targets=["skypilot", "kubernetes", "ray"])
    export(plan, tmp_path)
    words = train_arguments(plan)
    assert words[:3] == ["-m", "llmwizard.runner.rank.train", "--config"] and words[3] == "grpo_config.yaml"
    assert words[words.index("--task") + 1] == "grpo"
    assert [words[i + 1] for i, w in enumerate(words) if w == "--reward"] == SETTINGS["grpo"].rewards
    assert " ".join(words[1:]) in (tmp_path / "launch.sh").read_text()
    args, _ = worker_arguments(tmp_path)
    assert args[:len(words) - 2] == words[2:]
    assert "launch.sh" in (tmp_path / "slurm.sbatch").read_text()
    for target in ("skypilot.yaml", "trainjob.yaml"):
        assert "launch.sh" in (tmp_path / target).read_text()


def test_reexport_as_another_task_replaces_the_yaml(tmp_path):
    """An SFT run directory exported again as DPO: dpo_config.yaml appears and the untouched
    sft_config.yaml goes; an edited one would be named as an edit, like any launch file."""
    sft = _sft_plan()
    export(sft, tmp_path)
    export(task_plan("dpo", sft), tmp_path)
    assert (tmp_path / "dpo_config.yaml").is_file() and not (tmp_path / "sft_config.yaml").exists()
    assert set(TRL_CONFIGS) == {f"{t}_config.yaml" for t in ("sft", "dpo", "orpo", "kto", "grpo")}


def test_sft_yaml_is_unchanged_by_the_task_export():
    sft = _sft_plan()
    assert trl_config(sft) == sft_config(sft)


@pytest.mark.parametrize(("task", "change", "key"), [
    ("dpo", {"packing": True}, "packing"),
    ("orpo", {"activation_offloading": True}, "activation_offloading"),
    ("grpo", {"activation_offloading": True}, "activation_offloading"),
])
def test_a_plan_value_the_task_cannot_take_is_refused_by_its_key(task, change, key):
    plan = task_plan(task, **change)
    with pytest.raises(UserError) as raised:
        trl_config(plan)
    assert f"plan.yaml sets {key}" in raised.value.message and task.upper() in raised.value.message


# ----------------------------------------------------------------------------- the entry's task pieces

def test_the_entry_takes_its_task_and_rewards_and_leaves_the_rest_to_trl():
    from llmwizard.runner.rank.train import parse_args

    own, rest = parse_args(["--config", "grpo_config.yaml", "--task", "grpo", "--reward", "a.b", "c.d",
                            "--reward", "e.f", "--max_steps", "3"])
    assert (own.task, own.reward) == ("grpo", ["a.b", "c.d", "e.f"])
    assert rest == ["--config", "grpo_config.yaml", "--max_steps", "3"]
    assert parse_args(["--config", "sft_config.yaml"])[0].task == "sft"
    with pytest.raises(SystemExit) as refused:
        parse_args(["--task", "ppo"])
    assert refused.value.code == 2


def test_exact_answer_scores_plain_and_conversational_completions():
    from llmwizard.runner.rank.rewards import exact_answer

    plain = exact_answer(["19", " 19 ", "91", "19 20"], ["19", "19", "19", "19"])
    chat = exact_answer([[{"role": "assistant", "content": "38"}], [{"role": "assistant", "content": "37"}]],
                        answer=["38", 38], prompts=[[{"role": "user", "content": "24+14="}]] * 2,
                        completion_ids=[[], []], trainer_state=None, log_extra=None, log_metric=None)
    assert plain == [1.0, 1.0, 0.0, 0.0] and chat == [1.0, 0.0]


@pytest.mark.parametrize(("names", "words"), [
    (["tests.no_such_rewards.score"], "the module tests.no_such_rewards does not import (ModuleNotFoundError"),
    (["llmwizard.runner.rank.rewards.no_such_reward"], "has no no_such_reward"),
    (["llmwizard.runner.rank.rewards.EXACT_ANSWER"], "is a str, not a function"),
    (["exact_answer"], "is not a dotted name module.function"),
    ([], "none was given"),
])
def test_a_reward_that_cannot_be_had_is_refused_by_name(names, words):
    from llmwizard.runner.rank.tasks import load_rewards

    with pytest.raises(UserError) as refused:
        load_rewards("grpo", names)
    assert words in refused.value.message and refused.value.title == "Reward"
    assert all(name in refused.value.message for name in names)


def test_rewards_are_grpo_s_alone():
    from llmwizard.runner.rank.rewards import exact_answer
    from llmwizard.runner.rank.tasks import load_rewards

    assert load_rewards("grpo", [EXACT]) == [exact_answer]
    assert load_rewards("dpo", []) == []
    with pytest.raises(UserError) as refused:
        load_rewards("dpo", [EXACT])
    assert "reward functions are GRPO's, but the task is dpo" in refused.value.message


@pytest.mark.parametrize("task", ["dpo", "orpo", "kto", "grpo"])
def test_each_task_s_rows_give_held_out_samples(task):
    """The embedded rows as the entry reads them: a pair's chosen answer, a desirable row's completion
    (an undesirable one is no reference) and a prompt's answer are what its prompt is scored against."""
    from llmwizard.autotune.data.dataset import load_rows, normalize_rows, resolve_dataset
    from llmwizard.runner.rank.samples import prompt_text, split_example

    source = resolve_dataset(None, task=task)
    _, rows = normalize_rows(load_rows(source)[:20], source, task=task)
    split = [split_example(row) for row in rows]
    if task == "kto":
        assert [s is not None for s in split] == [row["label"] is True for row in rows]
    examples = [s for s in split if s is not None]
    assert examples
    for prompt, reference in examples:
        assert re.fullmatch(r"\d+\+\d+=", prompt_text(prompt)) and re.fullmatch(r"\d+", reference)
        a, b = prompt_text(prompt)[:-1].split("+")
        assert int(reference) == int(a) + int(b)  # the chosen, desirable or expected answer: the right sum


def test_an_implicit_prompt_pair_gives_its_shared_conversation():
    from llmwizard.runner.rank.samples import split_example

    chosen = [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    rejected = [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "5"}]
    assert split_example({"chosen": chosen, "rejected": rejected}) == ([{"role": "user", "content": "2+2="}], "4")


def test_a_run_directory_is_a_model_to_start_from(tmp_path):
    """Full weights in output/ are loaded as they are; an adapter names the run's own model as its
    base; no finished output is refused naming the directory; a model directory is no run directory."""
    from llmwizard.autotune.model.model_spec import load_model_spec, run_start
    from llmwizard.runner.rank.start import start_model
    from tests.tiny_models import tiny_model

    model = tiny_model("llama")
    run = tmp_path / "run"
    export(_sft_plan(), run)
    with pytest.raises(UserError) as refused:
        run_start(run)
    assert f"Run directory {run} has no finished model in output/" in refused.value.message
    (run / "output").symlink_to(model, target_is_directory=True)
    start = run_start(run)
    assert start is not None and not start.adapter and start.weights == run / "output"
    assert start_model(str(run)) == str(run / "output")
    spec = load_model_spec(str(run))
    assert (spec.name, spec.source, spec.path) == ("run", "local", str(run.resolve()))
    assert spec.total_params == load_model_spec(str(model)).total_params
    assert run_start(model) is None and start_model(str(model)) == str(model)
    (run / "output").unlink()
    (run / "output").mkdir()
    (run / "output" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/elsewhere"}))
    (run / "output" / "adapter_model.safetensors").write_bytes(b"")
    start = run_start(run)
    assert start is not None and start.adapter and start.base == _sft_plan().model  # plan.yaml's model
    assert load_model_spec(str(run)).total_params == load_model_spec(_sft_plan().model).total_params
