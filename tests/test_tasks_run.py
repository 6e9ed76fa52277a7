"""Preference and reward tasks train for real: DPO, KTO, ORPO and GRPO on the tiny Llama, a few
steps each, through the planner, the exporters and the exported launch.sh, as a user runs them.

DPO runs under every strategy on two CPU processes (gloo), with each place a reference can come
from: the disabled LoRA adapter, TRL's frozen copy (full fine-tuning, under FSDP2 and ZeRO-3) and a
precomputed pass (ZeRO-2). KTO, ORPO and GRPO run in one process and under DDP. Each case checks the
strategy and the reference that really ran (the lines rank 0 prints after training, read from the
trainer), that the task's own trainer logged (its metrics in metrics.jsonl), and that the result loads.
Then: a GRPO reward that does not import is refused by name; a DPO run starts from a finished SFT
run directory (its adapter merged into its base), and `try` and `merge` work on that DPO run.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmwizard.runner.metrics import read_metrics
from tests.conftest import run_cli
from tests.tiny_models import run_launch_sh, strategy_ran, tiny_model

pytestmark = pytest.mark.slow

EXACT = "llmwizard.runner.rank.rewards.exact_answer"
# A metric only the task's own trainer logs.
TASK_METRIC = {"dpo": "rewards/margins", "kto": "kl", "orpo": "log_odds_ratio",
               "grpo": f"rewards/{EXACT.split('.')[-1]}/mean"}
# Ten times the rule's rate on these random tiny models (as tests/tiny_models.py's LEARNING_RATE), so a few
# steps move them.
LEARNING_RATE = {"lora": 0.02, "full": 0.003}
# The first rows of each task's embedded set: TRL tokenizes a whole dataset before the first step, and a
# few steps see no more than these.
ROWS = 128


def task_data(task: str) -> Path:
    """The task's embedded set cut to its first ROWS rows, in the test cache."""
    from llmwizard.autotune.data.dataset import local_path, resolve_dataset
    from llmwizard.autotune.embedded import cache_root

    source = local_path(resolve_dataset(None, task=task))
    assert source is not None
    path = cache_root() / "task-data" / f"{task}-{ROWS}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:ROWS]))
    return path


def task_plan(task: str, *, strategy: str = "single", method: str = "lora", launcher: str = "accelerate",
              model: Path | str | None = None, max_steps: int = 4, eval_fraction: float = 0.0, **goals):
    """The planner's plan for `task` on the tiny Llama (or `model`) and a slice of the task's embedded
    data: the route `llmwizard export --task TASK` takes."""
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import detect
    from llmwizard.autotune.model.model_spec import load_model_spec
    from llmwizard.autotune.plan.inputs import plan_for, profile_for

    spec = load_model_spec(str(model or tiny_model("llama")))
    wanted = Goals(task=task, strategy=strategy, launcher=launcher, method=method,
                   processes=1 if strategy == "single" else 2, max_steps=max_steps, checkpointing=False,
                   eval_fraction=eval_fraction, learning_rate=goals.pop("learning_rate", LEARNING_RATE[method]),
                   **goals)
    return plan_for(detect(), spec, profile_for(spec, str(task_data(task)), task), wanted)


def run(plan, tmp_path: Path, name: str = "run", timeout: float = 400) -> tuple[Path, str]:
    from llmwizard.runner.export import export

    run_dir = tmp_path / name
    export(plan, run_dir)
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")} if plan.strategy.startswith("zero") else {}
    result = run_launch_sh(run_dir, tmp_path, env=env, timeout=timeout)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    return run_dir, log


def task_ran(log: str) -> dict[str, str]:
    """The words of the line rank 0 prints for a task: task=dpo reference=adapter beta=0.1 ..."""
    match = re.search(r"^llmwizard: (task=.*)$", log, re.MULTILINE)
    assert match, "no task line in the log:\n" + log[-3000:]
    return dict(word.split("=", 1) for word in match.group(1).split())


def assert_task_trained(run_dir: Path, log: str, plan, strategy: str, reference: str) -> list[dict]:
    """The strategy, the task and its reference as they ran; the task's own metric logged at every step."""
    assert strategy_ran(log) == (strategy, plan.num_processes)
    words = task_ran(log)
    assert (words["task"], words["reference"]) == (plan.task, reference), words
    assert float(words["beta"]) == plan.task_settings.beta
    logs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "log" and "loss" in r]
    assert [r["step"] for r in logs] == list(range(1, plan.max_steps + 1)), logs
    assert all(TASK_METRIC[plan.task] in r and math.isfinite(r["loss"]) for r in logs), logs[0]
    output = run_dir / "output"
    assert (output / ("adapter_model.safetensors" if plan.lora else "model.safetensors")).is_file()
    return logs


DPO_CASES = [
    # strategy, launcher, method, reference asked (None: the planner's), reference that runs
    pytest.param("single", "accelerate", "lora", None, "adapter", id="single-lora-adapter"),
    pytest.param("ddp", "accelerate", "lora", None, "adapter", id="ddp-lora-adapter"),
    pytest.param("fsdp", "torchrun", "full", None, "copy", id="fsdp2-full-copy-torchrun"),
    pytest.param("zero2", "deepspeed", "full", "precompute", "precompute", id="zero2-full-precompute-deepspeed"),
    pytest.param("zero3", "accelerate", "full", None, "copy", id="zero3-full-copy"),
]


@pytest.mark.parametrize(("strategy", "launcher", "method", "asked", "reference"), DPO_CASES)
def test_dpo_trains_under_every_strategy(tmp_path: Path, strategy, launcher, method, asked, reference):
    from tests.test_strategies import assert_result_loads

    plan = task_plan("dpo", strategy=strategy, launcher=launcher, method=method, reference=asked)
    assert plan.task_settings.reference == reference
    run_dir, log = run(plan, tmp_path)
    logs = assert_task_trained(run_dir, log, plan, {"fsdp": "fsdp2"}.get(strategy, strategy), reference)
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=0.01)  # the policy starts as its reference
    assert_result_loads(run_dir / "output", "llama", plan)
    if reference == "precompute":  # rank 0 wrote the reference's log-probs where every rank read them
        assert list((run_dir / ".llmwizard" / "datasets").glob("train-*.arrow"))


@pytest.mark.parametrize("task", ["kto", "orpo", "grpo"])
@pytest.mark.parametrize("strategy", ["single", "ddp"])
def test_kto_orpo_and_grpo_train_in_one_process_and_under_ddp(tmp_path: Path, task, strategy):
    """KTO against the disabled adapter (one process) and a precomputed pass (DDP); ORPO with no
    reference, LoRA and full; GRPO at beta 0 (no reference) and with a KL term against the disabled
    adapter, evaluating whole groups on held-out prompts under DDP, which then write their samples."""
    goals: dict = {}
    method, reference = "lora", "adapter"
    if task == "kto" and strategy == "ddp":
        goals, reference = {"reference": "precompute"}, "precompute"
    if task == "orpo":
        method, reference = ("lora" if strategy == "single" else "full"), "none"
    if task == "grpo":
        goals = {"num_generations": 4, "max_completion_length": 4}
        if strategy == "single":
            reference = "none"
        else:
            goals.update(beta=0.04, eval_fraction=0.05, eval_steps=2, max_steps=2)
    plan = task_plan(task, strategy=strategy, method=method, **goals)
    run_dir, log = run(plan, tmp_path)
    assert_task_trained(run_dir, log, plan, strategy, reference)
    if task == "grpo":
        assert f"rewards={EXACT.split('.')[-1]}" in log
        assert task_ran(log)["num_generations"] == "4"
    if plan.eval_fraction:
        evaluated = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "log" and "eval_loss" in r]
        assert evaluated, "no evaluation ran"
        samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
        # every held-out prompt (TRL's split rounds up), its answer the reference, scored exactly
        assert len(samples) == math.ceil(ROWS * plan.eval_fraction), samples
        assert all(re.fullmatch(r"\d+\+\d+=", s["prompt"]) and re.fullmatch(r"\d+", s["reference"]) and "exact" in s
                   for s in samples), samples


def test_a_grpo_reward_that_does_not_import_is_refused_by_name(tmp_path: Path):
    """Refused before any model or data loads: the entry exits 2 with one UserError line naming the
    reward, no traceback; through launch.sh the run fails with that line, which the diagnosis reads."""
    from llmwizard.runner.export import export
    from llmwizard.runner.recovery import diagnose_failure

    plan = task_plan("grpo", num_generations=2, max_completion_length=2, rewards=["tests.no_such_rewards.score"])
    run_dir = tmp_path / "run"
    export(plan, run_dir)
    entry = subprocess.run([sys.executable, "-m", "llmwizard.runner.rank.train", "--config", "grpo_config.yaml",
                            "--task", "grpo", "--reward", "tests.no_such_rewards.score"],
                           cwd=run_dir, capture_output=True, text=True, timeout=300)
    assert entry.returncode == 2, entry.stderr[-3000:]
    assert ("UserError: --reward tests.no_such_rewards.score: the module tests.no_such_rewards does not import "
            "(ModuleNotFoundError") in entry.stderr
    assert "Traceback" not in entry.stderr
    launched = run_launch_sh(run_dir, tmp_path, timeout=300)
    log = launched.stdout + launched.stderr
    assert launched.returncode != 0 and "--reward tests.no_such_rewards.score" in log
    failure = diagnose_failure(log, launched.returncode)
    assert failure is not None and "tests.no_such_rewards.score" in failure.message
    assert not (run_dir / "output").exists()


def test_dpo_starts_from_a_finished_sft_run_then_try_and_merge_use_it(tmp_path: Path):
    """An SFT LoRA run, then DPO with `--model <the SFT run>`: the planner sizes it as its base, the
    ranks load the base with the SFT adapter merged in (so the SFT model is the reference: the DPO
    loss starts at log 2), and `try` and `merge` on the DPO run use that SFT model as the base."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmwizard.autotune.model.model_spec import load_model_spec
    from llmwizard.runner.after.merge import merge as merge_run
    from tests.tiny_models import make_plan

    sft_plan = make_plan(strategy="single", processes=1, max_steps=3)
    sft_dir, _ = run(sft_plan, tmp_path, "sft")
    assert (sft_dir / "output" / "adapter_config.json").is_file()
    sft_merged, _ = merge_run(sft_dir, tmp_path / "sft-merged")

    spec = load_model_spec(str(sft_dir))
    assert (spec.source, spec.path) == ("local", str(sft_dir.resolve()))
    assert spec.total_params == load_model_spec(str(tiny_model("llama"))).total_params
    plan = task_plan("dpo", model=sft_dir, max_steps=3)
    assert plan.model == str(sft_dir.resolve())
    dpo_dir, log = run(plan, tmp_path, "dpo")
    logs = assert_task_trained(dpo_dir, log, plan, "single", "adapter")
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=0.01)

    # The ranks' start model is the SFT model: the same weights `llmwizard merge` makes of the SFT run.
    from llmwizard.runner.rank.start import start_model

    start = AutoModelForCausalLM.from_pretrained(start_model(str(sft_dir)))
    expected = AutoModelForCausalLM.from_pretrained(sft_merged)
    for (name, a), (_, b) in zip(start.named_parameters(), expected.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name

    tried = run_cli("try", str(dpo_dir), "3+4=", "--json", timeout=300)
    assert tried.returncode == 0, tried.stderr[-3000:]
    answer = json.loads(tried.stdout)
    assert set(answer) >= {"tuned", "base"} and answer["weights"]
    merged = run_cli("merge", str(dpo_dir), "--out", str(tmp_path / "dpo-merged"), timeout=300)
    assert merged.returncode == 0, merged.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo-merged")
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), expected.parameters(), strict=True))


def test_a_run_directory_without_a_finished_result_is_refused_by_name(tmp_path: Path):
    """A run directory that never finished is no model to start from: the plan is refused naming it."""
    from llmwizard.autotune.errors import UserError
    from llmwizard.runner.export import export
    from tests.tiny_models import make_plan

    unfinished = tmp_path / "sft-unfinished"
    export(make_plan(strategy="single", processes=1, max_steps=3), unfinished)
    (unfinished / "output" / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(UserError) as refused:
        task_plan("dpo", model=unfinished)
    assert str(unfinished) in refused.value.message and "no finished model in output/" in refused.value.message
    exported = run_cli("export", "--task", "dpo", "--model", str(unfinished), "--out", str(tmp_path / "dpo"))
    assert exported.returncode == 2 and "Traceback" not in exported.stderr
    said = " ".join(re.sub(r"[│╭╮╰╯─]", " ", exported.stdout + exported.stderr).split())
    assert f"Run directory {unfinished} has no finished model in output/" in said
    assert not (tmp_path / "dpo").exists()
