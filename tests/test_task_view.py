"""How preference (DPO, ORPO, KTO) and reward (GRPO) runs are watched, summed up and diagnosed.

The trainers' own names reach metrics.jsonl unchanged: each of TRL 1.16's four trainers runs a few
real steps on the tiny model with the project's callbacks, and the file is read back. Every other
test here folds synthetic metrics.jsonl records that carry those same names (the UI needs no
training): the console panel and plain lines, the wizard's numbers, the end-of-run summary,
report.html, `runs`, and each diagnostic, which fires on its pattern and stays quiet on a healthy
run and on SFT.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
from rich.console import Console

from llmwizard.runner import diagnostics as dx
from llmwizard.runner.after import report
from llmwizard.runner.after.summary import Outcome, build_summary, task_rows
from llmwizard.runner.metrics import load_metrics, records_task, task_of
from llmwizard.runner.session.live import PlainPrinter, numbers, render
from llmwizard.runner.state import RunState

SPARK = re.compile("[▁▂▃▄▅▆▇█]{4,}")


# ----------------------------------------------------------------------------- synthetic runs, TRL 1.16's names

def begin(task: str, max_steps: int, beta: float | None = 0.1) -> dict:
    record = {"type": "begin", "step": 0, "max_steps": max_steps, "num_train_epochs": 1.0, "world_size": 1,
              "logging_steps": 1, "save_steps": 500, "learning_rate": 5e-6, "memory_kind": "cuda", "time": 0.0}
    if task != "sft":
        record["task"] = task
        if beta is not None:
            record["beta"] = beta
    return record


def preference_run(task: str = "dpo", steps: int = 60, *, stall: bool = False, displace: bool = False,
                   kl_runaway: bool = False, with_task: bool = True, evals: int = 20) -> list[dict]:
    """A DPO, ORPO or KTO run as its trainer logs it. Healthy: the margin grows to 3, accuracy 50% ->
    95%, the chosen log-prob rises a little while the rejected one falls. `stall`: the margin flattens
    near 0.09 at 60% accuracy. `displace`: the chosen log-prob falls by 30%, the rejected faster."""
    out = [begin(task, steps) if with_task else {k: v for k, v in begin(task, steps).items()
                                                  if k not in ("task", "beta")}]
    for step in range(1, steps + 1):
        f = step / steps
        margin = 0.09 * (1 - math.exp(-step / 3)) if stall else 3.0 * (1 - math.exp(-3 * f)) / (1 - math.exp(-3))
        accuracy = 0.6 if stall else 0.5 + 0.45 * (1 - math.exp(-3 * f)) / (1 - math.exp(-3))
        chosen = -200.0 - 60 * f if displace else -200.0 + 4 * f
        rejected = chosen - margin / 0.1
        if task == "orpo":  # per-token means, rewards = beta x logps
            chosen, rejected = chosen / 100, rejected / 100
        record = {"type": "log", "step": step, "max_steps": steps, "epoch": f,
                  "loss": math.log1p(math.exp(-margin)) + (1.0 if task == "orpo" else 0.0),
                  "grad_norm": 1.2, "learning_rate": 5e-6, "entropy": 1.7, "num_tokens": 900.0 * step,
                  "logits/chosen": -0.8, "logits/rejected": -0.9,
                  "rewards/chosen": 0.1 * (chosen + 200), "rewards/rejected": 0.1 * (chosen + 200) - margin,
                  "rewards/margins": margin, "logps/chosen": chosen, "logps/rejected": rejected,
                  "peak_memory": 3 * 2**30, "rank_peak_memory": [3 * 2**30], "time": 0.5 * step}
        if task in ("dpo", "orpo"):
            record["rewards/accuracies"] = accuracy
        if task == "dpo":
            record["mean_token_accuracy"] = 0.41
        if task == "orpo":
            record.update({"nll_loss": 1.0, "log_odds_ratio": -0.4, "log_odds_chosen": 0.3})
        if task == "kto":
            record["kl"] = 40.0 * f ** 4 if kl_runaway else 0.5 + 0.2 * f
        out.append(record)
        if evals and step % evals == 0:
            evaluation = {"type": "log", "step": step, "max_steps": steps, "epoch": f,
                          "eval_loss": record["loss"] + 0.05, "eval_rewards/margins": 0.9 * margin,
                          "eval_rewards/chosen": 0.0, "eval_rewards/rejected": -0.9 * margin,
                          "eval_logps/chosen": chosen, "eval_logps/rejected": rejected,
                          "eval_runtime": 1.0, "time": 0.5 * step}
            if task in ("dpo", "orpo"):
                evaluation["eval_rewards/accuracies"] = accuracy - 0.05
            if task == "kto":
                evaluation["eval_kl"] = record["kl"]
            out.append(evaluation)
    return out


def grpo_run(steps: int = 60, *, mode: str = "healthy", beta: float = 0.04, with_task: bool = True) -> list[dict]:
    """A GRPO run as GRPOTrainer logs it, one reward function `exact`. Healthy: the reward climbs
    0.1 -> 0.7 with a spread of 0.3-0.4, a fifth of the groups scoring alike, the KL settling near
    0.02. `zero`: nothing scores; `max`: everything scores 1; `runaway`: the KL climbs past 0.5."""
    out = [begin("grpo", steps, beta) if with_task else {k: v for k, v in begin("grpo", steps).items()
                                                         if k not in ("task", "beta")}]
    for step in range(1, steps + 1):
        f = step / steps
        reward, spread, alike = {"zero": (0.0, 0.0, 1.0), "max": (1.0, 0.0, 1.0)}.get(
            mode, (0.1 + 0.6 * f, 0.4 - 0.1 * f, 0.2))
        record = {"type": "log", "step": step, "max_steps": steps, "epoch": f, "loss": 0.002 * (-1) ** step,
                  "grad_norm": 0.3, "learning_rate": 1e-6, "num_tokens": 2000.0 * step,
                  "completions/mean_length": 100 + 50 * f, "completions/min_length": 20.0,
                  "completions/max_length": 256.0, "completions/clipped_ratio": 0.3 if mode == "zero" else 0.05,
                  "completions/mean_terminated_length": 90.0, "completions/min_terminated_length": 20.0,
                  "completions/max_terminated_length": 200.0, "rewards/exact/mean": reward,
                  "rewards/exact/std": spread, "reward": reward, "reward_std": spread,
                  "frac_reward_zero_std": alike, "entropy": 0.9, "clip_ratio/low_mean": 0.0,
                  "clip_ratio/low_min": 0.0, "clip_ratio/high_mean": 0.0, "clip_ratio/high_max": 0.0,
                  "clip_ratio/region_mean": 0.0, "step_time": 1.9, "tokens_seen": 2000 * step,
                  "peak_memory": 5 * 2**30, "rank_peak_memory": [5 * 2**30], "time": 2.0 * step}
        if beta:
            record["kl"] = 0.6 * f ** 3 if mode == "runaway" else 0.02 * (1 - math.exp(-5 * f))
        out.append(record)
        if step % 20 == 0:
            out.append({"type": "log", "step": step, "max_steps": steps, "epoch": f, "eval_loss": 0.0,
                        "eval_reward": reward - 0.05, "eval_reward_std": spread, "eval_frac_reward_zero_std": alike,
                        "eval_completions/mean_length": 120.0, "tokens_seen": 2000 * step, "time": 2.0 * step})
    return out


def sft_run(steps: int = 60) -> list[dict]:
    out = [begin("sft", steps)]
    for step in range(1, steps + 1):
        loss = 2.0 * math.exp(-step / 6) + 0.5
        out.append({"type": "log", "step": step, "max_steps": steps, "epoch": step / steps, "loss": loss,
                    "grad_norm": 1.0, "learning_rate": 2e-4, "mean_token_accuracy": 0.3 + step / 200,
                    "tokens_seen": 4096 * step, "peak_memory": 2**30, "time": 0.5 * step})
    return out


def ended(records: list[dict]) -> list[dict]:
    return [*records, {"type": "end", "step": records[-1]["step"], "max_steps": records[0]["max_steps"],
                       "reason": "completed", "time": records[-1]["time"]}]


def run_dir(tmp_path: Path, name: str, records: list[dict]) -> Path:
    """A run directory as the ranks leave it: metrics.jsonl (and the manifest that marks a run)."""
    directory = tmp_path / name
    (directory / ".llmwizard").mkdir(parents=True)
    (directory / ".llmwizard" / "manifest.json").write_text("{}")
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def panel(state: RunState, width: int = 80, height: int = 24) -> str:
    console = Console(width=width, height=height, record=True, force_terminal=True, color_system="truecolor")
    console.print(render(state, "tiny-llama-pairs", width, height))
    return console.export_text()


def plain(records: list[dict]) -> list[str]:
    out = io.StringIO()
    printer = PlainPrinter(Console(file=out, width=80, force_terminal=False))
    state = RunState()
    for record in records:
        printer.record(state, record, state.update(record))
    return out.getvalue().splitlines()


def codes(records: list[dict], final: bool = True, task: str | None = None) -> list[str]:
    return [finding.code for finding in dx.diagnose(records, final=final, task=task)]


# ----------------------------------------------------------------------------- the names reach metrics.jsonl

def _dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def exact(completions: list[str], **kwargs) -> list[float]:
    """GRPO's reward in the real run below: 1 for the answer "5"."""
    return [1.0 if completion.strip() == "5" else 0.0 for completion in completions]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("task", ["dpo", "orpo", "kto", "grpo"])
def test_each_trainer_s_own_names_reach_metrics_jsonl_and_the_views(task, tmp_path):
    """Three real steps and an evaluation of TRL 1.16's trainer on the tiny model, with the
    callbacks every rank installs: metrics.jsonl holds the trainer's names, slashes and all, the
    begin record names the task and its beta, nothing is skipped as damaged, and the views read it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmwizard.runner.rank.callbacks import default_callbacks
    from tests.tiny_models import tiny_model

    model_dir = tiny_model("llama")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    pairs = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a in range(5) for b in range(5)]
    metrics = tmp_path / "metrics.jsonl"
    common = dict(output_dir=str(tmp_path / "output"), max_steps=3, per_device_train_batch_size=4, logging_steps=1,
                  report_to=[], save_strategy="no", use_cpu=True, eval_strategy="steps", eval_steps=3,
                  per_device_eval_batch_size=4, learning_rate=1e-3, beta=0.2)
    callbacks = default_callbacks(str(metrics))
    if task == "dpo":
        from trl import DPOConfig, DPOTrainer

        data = _dataset(pairs)
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, max_length=32), train_dataset=data,
                             eval_dataset=data.select(range(8)), processing_class=tokenizer, callbacks=callbacks)
    elif task == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        data = _dataset(pairs)
        trainer = ORPOTrainer(model=model, args=ORPOConfig(**common, max_length=32), train_dataset=data,
                              eval_dataset=data.select(range(8)), processing_class=tokenizer, callbacks=callbacks)
    elif task == "kto":
        from trl import KTOConfig, KTOTrainer

        rows = [{"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
                for p in pairs for key in ("chosen", "rejected")]
        data = _dataset(rows).shuffle(seed=0)
        trainer = KTOTrainer(model=model, args=KTOConfig(**common, max_length=32), train_dataset=data,
                             eval_dataset=data.select(range(8)), processing_class=tokenizer, callbacks=callbacks)
    else:
        from trl import GRPOConfig, GRPOTrainer

        data = _dataset([{"prompt": p["prompt"]} for p in pairs])
        trainer = GRPOTrainer(model=model, reward_funcs=[exact], train_dataset=data, eval_dataset=data.select(range(8)),
                              args=GRPOConfig(**common, num_generations=4, max_completion_length=8),
                              processing_class=tokenizer, callbacks=callbacks)
    trainer.train()

    found = load_metrics(metrics)
    assert found.damaged == 0 and found.unreadable is None, found.notes
    first = found.records[0]
    assert first["type"] == "begin" and first["task"] == task and first["beta"] == pytest.approx(0.2)
    train_logs = [r for r in found.records if r.get("type") == "log" and "loss" in r]
    eval_logs = [r for r in found.records if r.get("type") == "log" and "eval_loss" in r]
    assert len(train_logs) == 3 and len(eval_logs) == 1
    expected = {
        "dpo": {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "logits/chosen", "logits/rejected", "mean_token_accuracy"},
        "orpo": {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                 "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"},
        "kto": {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"},
        "grpo": {"reward", "reward_std", "frac_reward_zero_std", "rewards/exact/mean", "rewards/exact/std",
                 "completions/mean_length", "completions/clipped_ratio", "kl"},
    }[task]
    for log in train_logs:
        assert expected <= log.keys(), expected - log.keys()
    assert {f"eval_{key}" for key in expected} <= eval_logs[0].keys()
    if task == "kto":
        assert "rewards/accuracies" not in train_logs[0]   # KTO's rows are unpaired: no accuracy
    assert task_of(train_logs[0]) == task and task_of(eval_logs[0]) == task
    assert records_task(found.records[1:]) == task      # from the names alone, without the begin record

    state = RunState.from_records(found.records)
    assert state.task == task and state.beta == pytest.approx(0.2)
    text = panel(state)
    assert all(len(line) <= 80 for line in text.splitlines()) and len(text.splitlines()) < 24
    assert ("reward" in text) and ("kl" in text if task in ("kto", "grpo") else True)


# ----------------------------------------------------------------------------- which task a run is

@pytest.mark.parametrize("task", ["dpo", "orpo", "kto", "grpo"])
def test_the_task_is_the_begin_record_s_or_else_what_the_names_show(task):
    records = grpo_run(with_task=False) if task == "grpo" else preference_run(task, with_task=False)
    assert records_task(records) == task and RunState.from_records(records).task == task
    assert records_task(sft_run()) == "sft" and RunState.from_records(sft_run()).task == "sft"
    state = RunState.from_records(sft_run())
    state.planned_task = "dpo"   # plan.yaml's word counts when the records name none
    assert state.task == "dpo"


def test_a_resume_drops_the_task_series_after_its_checkpoint():
    records = preference_run("dpo", steps=20, evals=0)
    resumed = [*records[:11], {**begin("dpo", 20), "step": 5, "time": 0.0}, *records[6:]]
    state = RunState.from_records(resumed)
    steps = [step for step, _ in state.series("rewards/margins")]
    assert steps == sorted(steps) and len(steps) == 20 and steps[0] == 1


# ----------------------------------------------------------------------------- the live view

@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 36)])
@pytest.mark.parametrize("task", ["dpo", "orpo", "kto"])
def test_the_panel_shows_a_preference_run_s_accuracy_margin_rewards_and_log_probs(task, width, height):
    state = RunState.from_records(preference_run(task))
    text = panel(state, width, height)
    lines = text.splitlines()
    assert len(lines) < height and all(len(line) <= width for line in lines)
    assert "margin +3.000" in text and "eval margin" not in text or task == "kto"
    assert "reward chosen" in text and "rejected" in text and "logp chosen" in text
    assert SPARK.search(text), "the margin's sparkline"
    if task == "kto":
        assert "kl 0.7" in text and "reward acc" not in text and "eval margin +2.700" in text
    else:
        assert "reward acc 95.0%" in text and "eval acc 90.0%" in text and "kl " not in text
    assert "acc 41.0%" not in text, "DPO's next-token accuracy is not shown as the run's accuracy"
    assert "train loss" in text   # the plot is still the loss


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 36)])
def test_the_panel_plots_a_grpo_run_s_reward_with_its_spread(width, height):
    state = RunState.from_records(grpo_run())
    text = panel(state, width, height)
    lines = text.splitlines()
    assert len(lines) < height and all(len(line) <= width for line in lines)
    for needle in ("reward 0.700 ± 0.300", "length 150 tokens", "kl 0.0199", "same-score groups 20%",
                   "cut at max length 5%", "eval reward 0.650 ± 0.300", "reward (mean)", "± its spread",
                   "eval reward"):
        assert needle in text, needle
    assert "train loss" not in text and "best eval" not in text
    assert len(SPARK.findall(text)) == 2
    without_kl = panel(RunState.from_records(grpo_run(beta=0.0)), width, height)
    assert "kl " not in without_kl   # beta 0: TRL logs no KL


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 36)])
def test_the_panel_still_fits_with_every_finding_of_a_troubled_run(width, height):
    for records in (preference_run("kto", stall=True, displace=True, kl_runaway=True), grpo_run(mode="zero"),
                    preference_run("dpo", stall=True, displace=True)):
        state = RunState.from_records(records)
        assert len(state.findings()) >= 1
        lines = panel(state, width, height).splitlines()
        assert len(lines) < height and all(len(line) <= width for line in lines)


def test_the_sft_panel_has_none_of_the_task_lines():
    state = RunState.from_records(sft_run())
    assert state.task == "sft"
    text = panel(state)
    assert "reward" not in text and "margin" not in text and "acc 60.0%" in text and "train loss" in text
    assert len(numbers(state)) == 3


def test_an_ascii_terminal_gets_ascii_sparklines():
    state = RunState.from_records(preference_run("dpo"))
    lines = " ".join(line.plain for line in numbers(state, ascii_only=True))
    assert not SPARK.search(lines) and re.search(r"margin \+3\.000 [_.\-=+*#@]{8}", lines)


def test_plain_lines_carry_the_task_s_numbers_each_step_and_evaluation():
    lines = plain(preference_run("dpo"))
    last = next(line for line in lines if line.startswith("step 60/60  epoch"))
    assert "reward_acc 95.0%  margin +3.000  chosen +0.400  rejected -2.600  logp_chosen -196  " \
           "logp_rejected -226" in last
    assert " acc " not in last
    assert any(line.startswith("step 60/60  eval_loss") and "eval_reward_acc 90.0%  eval_margin +2.700" in line
               for line in lines)
    kto = next(line for line in plain(preference_run("kto")) if line.startswith("step 60/60  epoch"))
    assert "margin +3.000" in kto and "kl 0.7" in kto and "reward_acc" not in kto

    lines = plain(grpo_run())
    last = next(line for line in lines if line.startswith("step 60/60  epoch"))
    assert "reward 0.700  reward_std 0.300  completion_len 150  same_score_groups 20%  kl 0.01987" in last
    evaluation = next(line for line in lines if line.startswith("step 60/60  eval_loss"))
    assert "eval_reward 0.650  eval_reward_std 0.300" in evaluation and "best" not in evaluation


def test_the_wizard_shows_the_same_task_lines():
    from llmwizard.wizard.screens.run import metrics_text

    shown = metrics_text(RunState.from_records(preference_run("dpo"))).plain
    assert "reward acc 95.0%" in shown and "margin +3.000" in shown and "logp chosen" in shown
    shown = metrics_text(RunState.from_records(grpo_run())).plain
    assert "reward 0.700 ± 0.300" in shown and "length 150 tokens" in shown


@pytest.mark.asyncio
async def test_the_run_screen_plots_a_grpo_run_s_reward_and_an_sft_run_s_loss():
    """RunScreen._metrics, on the widgets it draws into: GRPO's reward and spread, SFT's loss."""
    from types import SimpleNamespace

    from textual.app import App, ComposeResult
    from textual.widgets import ProgressBar, Static

    from llmwizard.wizard.screens.run import RunScreen
    from llmwizard.wizard.widgets.loss_plot import LossPlot

    class Widgets(App):
        def compose(self) -> ComposeResult:
            yield ProgressBar(id="progress")
            yield Static(id="run-metrics")
            yield LossPlot(id="loss")

    app = Widgets()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = SimpleNamespace(query_one=app.query_one, _tick=lambda: None, state_snapshot=None)
        plot = app.query_one(LossPlot)
        RunScreen._metrics(screen, RunState.from_records(grpo_run()))
        await pilot.pause()
        assert plot.labels == ("reward (mean)", "eval reward") and plot.train[-1] == (60, 0.7)
        assert plot.band is not None and plot.band[1][-1] == (60, pytest.approx(1.0))
        text = plot.render().plain
        assert "━ reward (mean)" in text and "━ ± spread" in text and "━ eval reward" in text
        RunScreen._metrics(screen, RunState.from_records(sft_run()))
        await pilot.pause()
        assert plot.labels == ("train", "eval") and plot.band is None and plot.train[0][1] == pytest.approx(2.0 * math.exp(-1 / 6) + 0.5)


# ----------------------------------------------------------------------------- summary, runs, report

def test_the_summary_gives_first_last_and_best_of_a_preference_run(tmp_path):
    directory = run_dir(tmp_path, "dpo", ended(preference_run("dpo")))
    summary = build_summary(directory, RunState.read(directory / "metrics.jsonl"), Outcome("done", 0))
    rows = dict(summary.rows)
    logs = [r for r in preference_run("dpo") if "loss" in r]
    first_accuracy, first_margin = logs[0]["rewards/accuracies"], logs[0]["rewards/margins"]
    assert rows["reward accuracy"] == (f"{first_accuracy:.1%} -> 95.0% (best 95.0% at step 60; eval 90.0%, best "
                                       "90.0% at step 60)")
    assert rows["reward margin"] == (f"{first_margin:+.3f} -> +3.000 (best +3.000 at step 60; eval +2.700, best "
                                     "+2.700 at step 60)")
    assert rows["rewards"] == "chosen +0.400, rejected -2.600 (at the last log)"
    assert rows["log-probs"] == "chosen -199.9 -> -196, rejected -201.5 -> -226 (summed over each answer)"
    assert rows["next-token accuracy (chosen answers)"] == "41.0% -> 41.0%"
    assert "kl" not in rows and not summary.findings

    kto = run_dir(tmp_path, "kto", ended(preference_run("kto")))
    rows = dict(build_summary(kto, RunState.read(kto / "metrics.jsonl"), Outcome("done", 0)).rows)
    assert "reward accuracy" not in rows and rows["kl"] == "0.503 -> 0.7"


def test_the_summary_gives_a_grpo_run_s_reward_with_its_spread(tmp_path):
    directory = run_dir(tmp_path, "grpo", ended(grpo_run()))
    summary = build_summary(directory, RunState.read(directory / "metrics.jsonl"), Outcome("done", 0))
    rows = dict(summary.rows)
    # (sixty noisy logs: the means of the first and last tenth, and the last log with its spread)
    assert rows["reward"] == ("0.135 -> 0.675 (means of the first and last 6 logs; last log 0.700 ± 0.300; "
                              "best 0.700 at step 60; eval 0.650)")
    assert rows["completion length"] == "101 -> 150 tokens (5% cut at max_completion_length at the last log)"
    assert rows["same-score groups"].startswith("20% -> 20%")
    assert rows["kl"] == "0.0016 -> 0.0199"
    assert rows["eval loss"] == "0.0000"   # no "best" of a surrogate loss
    assert not summary.findings


def test_the_sft_summary_has_no_task_rows(tmp_path):
    directory = run_dir(tmp_path, "sft", ended(sft_run()))
    rows = dict(build_summary(directory, RunState.read(directory / "metrics.jsonl"), Outcome("done", 0)).rows)
    assert "next-token accuracy" in rows and not {"reward accuracy", "reward margin", "reward", "kl"} & rows.keys()
    assert task_rows(RunState.from_records(sft_run())) == []


def test_watch_on_a_finished_preference_run_prints_its_figures(tmp_path, capsys):
    from llmwizard.wizard.cli import main as cli_main

    directory = run_dir(tmp_path, "dpo", ended(preference_run("dpo", stall=True)))
    (directory / "output").mkdir()
    (directory / "output" / "model.safetensors").write_bytes(b"")
    cli_main(["watch", str(directory)])
    out = " ".join(capsys.readouterr().out.split())
    assert "reward accuracy 60.0% -> 60.0%" in out and "reward margin" in out
    assert "Reward margin stopped growing" in out and "Fix: Raise task_settings.beta" in out


def test_runs_lists_the_task_and_its_accuracy_or_reward(tmp_path, capsys):
    from llmwizard.runner.after.runs import list_runs
    from llmwizard.wizard.cli import main as cli_main

    run_dir(tmp_path, "a-sft", ended(sft_run()))
    run_dir(tmp_path, "b-dpo", ended(preference_run("dpo")))
    run_dir(tmp_path, "c-grpo", ended(grpo_run()))
    rows = {row.name: row for row in list_runs(tmp_path)}
    assert (rows["a-sft"].task, rows["b-dpo"].task, rows["c-grpo"].task) == ("sft", "dpo", "grpo")
    assert rows["b-dpo"].reward_accuracy == pytest.approx(0.95) and rows["c-grpo"].reward == pytest.approx(0.7)
    assert rows["a-sft"].reward_accuracy is None and rows["a-sft"].to_json()["task"] == "sft"

    assert cli_main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"b-dpo .* dpo .* 95\.0%", out) and re.search(r"c-grpo .* grpo .* 0\.700", out)
    assert re.search(r"a-sft .* sft .* 60\.0%", out)
    assert "reward accuracy (dpo, orpo)" in " ".join(out.split())


def test_runs_of_sft_alone_keep_their_table(tmp_path, capsys):
    from llmwizard.wizard.cli import main as cli_main

    run_dir(tmp_path, "a-sft", ended(sft_run()))
    assert cli_main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "run" in line and "state" in line)
    assert header.split() == ["run", "state", "steps", "loss", "eval", "acc", "time", "size"]
    assert "reward" not in out


def _charts(page: str) -> dict[str, dict[str, int]]:
    """Each chart of report.html by its key, with the points of each of its series."""
    out: dict[str, dict[str, int]] = {}
    for chart, body in re.findall(r'<svg class="chart" data-chart="(\w+)"(.*?)</svg>', page, re.S):
        out[chart] = {name: int(n) for name, n in re.findall(r'data-series="([^"]+)" data-points="(\d+)"', body)}
    return out


def test_report_charts_a_preference_run_s_accuracy_margin_rewards_and_log_probs(tmp_path):
    directory = run_dir(tmp_path, "dpo", ended(preference_run("dpo", displace=True)))
    page = report.render(directory)
    charts = _charts(page)
    assert list(charts)[:5] == ["loss", "reward_accuracy", "reward_margin", "rewards", "logps"]
    assert charts["reward_accuracy"]["train (raw)"] == 60 and charts["reward_accuracy"]["eval"] == 3
    assert charts["reward_margin"]["eval"] == 3 and charts["logps"] == {"chosen": 60, "rejected": 60}
    assert charts["accuracy"]["train"] == 60   # DPO's next-token accuracy of the chosen answers
    assert "Next-token accuracy (chosen answers)" in page and "kl" not in charts
    assert "<th>task</th><td class=\"\">dpo, beta 0.1</td>" in page
    assert "<th>reward accuracy</th>" in page and "best 95.0% at step 60" in page
    assert "Chosen answers are growing less likely" in page and "likelihood displacement" in page

    kto = _charts(report.render(run_dir(tmp_path, "kto", ended(preference_run("kto")))))
    assert "reward_accuracy" not in kto and kto["kl"]["train"] == 60 and "accuracy" not in kto


def test_report_charts_a_grpo_run_s_reward_mean_and_spread(tmp_path):
    directory = run_dir(tmp_path, "grpo", ended(grpo_run(mode="zero")))
    page = report.render(directory)
    charts = _charts(page)
    assert list(charts)[:5] == ["loss", "reward", "completion_length", "same_score_groups", "kl"]
    assert charts["reward"] == {"mean": 60, "mean + std": 60, "mean - std": 60, "eval mean": 3}
    assert "accuracy" not in charts and "GRPO&#x27;s surrogate" in page
    assert "No completion earns a reward" in page and "--num-generations" in page


def test_report_of_sft_has_no_task_charts(tmp_path):
    charts = _charts(report.render(run_dir(tmp_path, "sft", ended(sft_run()))))
    assert list(charts) == ["loss", "accuracy", "learning_rate", "grad_norm", "tokens_per_second", "memory"]


def test_plan_yaml_names_the_task_for_the_report_and_summary(tmp_path):
    """A run whose records name no task (written before the begin record carried it) is read as
    plan.yaml says; the report's plan section gives the task's settings."""
    import dataclasses

    from llmwizard.autotune.plan import TaskSettings
    from llmwizard.runner.after.summary import plan_task
    from tests.tiny_models import make_plan

    plan = make_plan(processes=1, strategy="single", method="lora")
    directory = run_dir(tmp_path, "dpo", ended(preference_run("dpo", with_task=False)))
    dataclasses.replace(plan, task="dpo", task_settings=TaskSettings(beta=0.1, reference="adapter")).save(
        directory / "plan.yaml")
    assert plan_task(directory) == "dpo" and plan_task(tmp_path) is None
    page = report.render(directory)
    assert '<th>task</th><td class="">dpo: beta 0.1, reference adapter</td>' in page
    assert "reward_accuracy" in _charts(page)


# ----------------------------------------------------------------------------- diagnostics

@pytest.mark.parametrize("task", ["dpo", "orpo", "kto"])
def test_a_healthy_preference_run_has_no_findings(task):
    assert codes(preference_run(task)) == []
    assert codes(preference_run(task), final=False) == []


@pytest.mark.parametrize("mode", ["healthy"])
def test_a_healthy_grpo_run_has_no_findings(mode):
    assert codes(grpo_run(mode=mode)) == [] and codes(grpo_run(mode=mode, beta=0.0)) == []


def test_an_sft_run_gets_none_of_the_task_findings():
    falling = sft_run()
    assert codes(falling) == codes(falling, task="sft") == []
    flat = [dict(r, loss=1.0) if r["type"] == "log" else r for r in sft_run()]
    assert codes(flat) == ["plateau"]  # SFT's own rule still speaks


@pytest.mark.parametrize("task", ["dpo", "orpo"])
def test_a_margin_that_stops_growing_below_90_percent_accuracy_is_named_with_beta_and_learning_rate(task):
    records = preference_run(task, stall=True)
    found = {f.code: f for f in dx.diagnose(records, final=True)}
    assert "margin_stall" in found and "plateau" not in found
    finding = found["margin_stall"]
    assert "60% of the pairs are ranked right" in finding.message and finding.severity == dx.WARNING
    assert "task_settings.beta in plan.yaml from 0.1 to 0.2 (--beta 0.2)" in finding.fix
    assert "--learning-rate 2e-05" in finding.fix
    # Near 100% a flat margin has converged: no finding.
    converged = [dict(r, **{"rewards/accuracies": 0.97}) if "rewards/accuracies" in r else r for r in records]
    assert "margin_stall" not in codes(converged)
    # Half-way through a run it is too early to call.
    assert "margin_stall" not in codes(records[:25], final=False)


def test_a_kto_margin_stall_is_judged_by_the_margin_itself():
    assert "margin_stall" in codes(preference_run("kto", stall=True))
    wide = [dict(r, **{"rewards/margins": 3.0 + 0.001 * r["step"]}) if "rewards/margins" in r else r
            for r in preference_run("kto", stall=True)]
    assert "margin_stall" not in codes(wide)   # flat, but far past ln(9): converged


def test_swapped_pairs_are_named_when_accuracy_stays_below_40_percent():
    records = [dict(r, **{"rewards/accuracies": 0.3}) if "rewards/accuracies" in r else r
               for r in preference_run("dpo", stall=True)]
    finding = next(f for f in dx.diagnose(records, final=True) if f.code == "margin_stall")
    assert "not swapped" in finding.message


@pytest.mark.parametrize("task", ["dpo", "kto", "orpo"])
def test_chosen_log_probs_falling_with_the_rejected_is_likelihood_displacement(task):
    finding = next(f for f in dx.diagnose(preference_run(task, displace=True), final=True)
                   if f.code == "likelihood_displacement")
    assert "likelihood displacement" in finding.message and "the rejected faster" in finding.message
    if task == "orpo":
        assert "per token" in finding.message and "Lower task_settings.beta in plan.yaml from 0.1 to 0.05" in finding.fix
    else:
        assert "summed over each answer" in finding.message
        assert finding.fix.startswith("Lower learning_rate in plan.yaml to a third, 2e-06 (--learning-rate 2e-06)")
        assert "--beta 0.2" in finding.fix and "--task orpo" in finding.fix
    # The chosen answers holding their probability while the rejected fall is the healthy pattern.
    assert "likelihood_displacement" not in codes(preference_run(task))


@pytest.mark.parametrize("task", ["grpo", "kto"])
def test_a_kl_that_keeps_climbing_past_its_limit_is_named(task):
    records = grpo_run(mode="runaway") if task == "grpo" else preference_run("kto", kl_runaway=True)
    finding = next(f for f in dx.diagnose(records, final=False) if f.code == "kl_runaway")
    unit = "nats per token" if task == "grpo" else "nats per completion"
    assert unit in finding.message and "still climbing" in finding.message
    beta = "0.04 to 0.08 (--beta 0.08)" if task == "grpo" else "0.1 to 0.2 (--beta 0.2)"
    assert f"Raise task_settings.beta in plan.yaml from {beta}" in finding.fix and "learning_rate" in finding.fix
    # DPO logs no KL; GRPO at beta 0 neither.
    assert "kl_runaway" not in codes(grpo_run(mode="runaway", beta=0.0))


def test_grpo_rewards_stuck_at_zero_say_the_task_is_too_hard():
    finding = next(f for f in dx.diagnose(grpo_run(mode="zero"), final=True))
    assert finding.code == "reward_zero" and "100% of the groups scored all their completions alike" in finding.message
    for advice in ("easier prompts", "--task sft", "--num-generations", "--max-completion-length",
                   "30% of the completions were cut"):
        assert advice in finding.fix, advice
    assert "reward_zero" not in codes(grpo_run(mode="zero")[:25], final=False)   # too early to call


def test_grpo_rewards_stuck_at_the_top_say_the_task_is_too_easy():
    finding = next(f for f in dx.diagnose(grpo_run(mode="max"), final=True))
    assert finding.code == "reward_saturated" and "the highest of the run" in finding.message
    assert "harder prompts" in finding.fix


def test_a_climb_to_the_top_that_stays_there_is_saturation_and_a_fall_to_the_floor_is_no_signal():
    climb = grpo_run()
    for record in climb[1:]:
        if "reward" in record and record["step"] > 20:
            record.update(reward=1.0, reward_std=0.0, frac_reward_zero_std=1.0)
    assert codes(climb) == ["reward_saturated"]
    without_share = [{k: v for k, v in r.items() if k != "frac_reward_zero_std"} for r in climb]
    assert codes(without_share) == ["reward_saturated"]   # reward_std 0 says the same


def test_grpo_s_loss_is_judged_by_no_loss_rule():
    """GRPO's loss is a surrogate near 0 of either sign: flat is normal, and a jump is no divergence."""
    records = grpo_run()
    assert codes(records) == []            # a flat loss: no "Loss is flat"
    jumpy = [dict(r, loss=-0.01 if r["step"] < 40 else 0.6) if "loss" in r else r for r in records]
    assert dx.divergence(jumpy) is None and not dx.spike_pending(jumpy)
    nan = [dict(r, loss=float("nan")) if "loss" in r and r["step"] == 30 else r for r in records]
    assert dx.divergence(nan).code == "non_finite"   # NaN still stops it


def test_the_rank_s_divergence_check_reads_the_task_from_the_tail_it_is_given():
    """DivergenceCallback passes the first record and the last few: the task must still show."""
    records = grpo_run()
    jumpy = [dict(r, loss=-0.01 if r["step"] < 40 else 0.6) if "loss" in r else r for r in records]
    tail = jumpy[:1] + jumpy[-4 * dx.SPIKE_WINDOW:]
    assert dx.divergence(tail, since_step=50) is None
    no_task = [{k: v for k, v in r.items() if k not in ("task", "beta")} for r in tail]
    assert dx.divergence(no_task, since_step=50) is None


def test_the_findings_reach_the_views_once(tmp_path):
    lines = plain(preference_run("dpo", stall=True))
    state = RunState.from_records(preference_run("dpo", stall=True))
    out = io.StringIO()
    printer = PlainPrinter(Console(file=out, width=200, force_terminal=False))
    printer.findings(state, final=True)
    printer.findings(state, final=True)
    said = out.getvalue().splitlines()
    assert len(said) == 1 and said[0].startswith("warning: Reward margin stopped growing:") and "Fix: Raise" in said[0]
    assert lines  # the plain lines themselves were printed


def test_the_module_names_the_trainers_keys_it_relies_on():
    """The names the views read are those TRL 1.16 logs (checked for real above); this pins the
    module's constants to them so a rename shows here first."""
    from llmwizard.runner import metrics

    assert (metrics.REWARD_ACCURACY, metrics.REWARD_MARGIN, metrics.LOGPS_CHOSEN, metrics.KL, metrics.REWARD,
            metrics.REWARD_STD, metrics.ZERO_STD, metrics.COMPLETION_LENGTH) == (
        "rewards/accuracies", "rewards/margins", "logps/chosen", "kl", "reward", "reward_std",
        "frac_reward_zero_std", "completions/mean_length")
