"""After a run, from real CPU runs of the embedded model shared by every test here (one module
fixture, so the suite pays for three short launches once):

- a run that finishes (6 steps, evaluations at 3 and 6, TensorBoard and Trackio on), launched
  through RunSession so report.html and samples.jsonl come from the real path;
- a run stopped by SIGTERM at step 2 (tests/hooks/stop.py), and one whose rank fails at step 3
  (tests/hooks/oom.py), both started with `bash launch.sh` beside it.

Checked: `llmwizard runs` (states, steps, losses), report.html in headless Chromium, the trackers'
files read back, samples, `llmwizard merge` (the merged model generates the adapter's tokens) and
its refusals, and `llmwizard try`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmwizard.runner.metrics import read_metrics
from llmwizard.wizard.cli import main as cli_main
from tests.hooks import oom as oom_hook
from tests.hooks import stop as stop_hook

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def export_run(run_dir: Path, *, report_to: list[str] | None = None, **goals: Any) -> Path:
    from llmwizard.autotune.data.dataset import profile_dataset
    from llmwizard.autotune.embedded import EMBEDDED_DATASET, ensure_embedded_model
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import from_spec
    from llmwizard.autotune.model.model_spec import load_model_spec
    from llmwizard.autotune.plan.planner import plan
    from llmwizard.autotune.data.tokens import counter_for
    from llmwizard.runner.export import export

    profile = profile_dataset(EMBEDDED_DATASET, counter_for(ensure_embedded_model()))
    goals = {"method": "lora", **goals}  # the adapter is what merge and the samples are checked against
    planned = plan(from_spec("cpu"), load_model_spec(None), profile, Goals(report_to=report_to, **goals))
    if planned.eval_fraction > 0:  # two evaluations and two checkpoints in six steps
        planned = dataclasses.replace(planned, eval_steps=3, save_steps=3, logging_steps=1)
    run_dir.mkdir(parents=True)
    export(planned, run_dir)
    return run_dir


def launch_beside(run_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    from llmwizard.runner.session.launch import free_port

    log = open(run_dir / "train.log", "wb")  # noqa: SIM115 (closed when the process ends)
    return subprocess.Popen(["bash", str(run_dir / "launch.sh")], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, MAIN_PROCESS_PORT=str(free_port()), **env))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.session.engine import RunSession

    root = tmp_path_factory.mktemp("runs")
    trackio_dir = tmp_path_factory.mktemp("trackio")
    finished = export_run(root / "finished", max_steps=6, eval_fraction=0.1, report_to=["tensorboard", "trackio"])
    stopped = export_run(root / "stopped", max_steps=200, eval_fraction=0)
    failed = export_run(root / "failed", max_steps=200, eval_fraction=0)
    beside = [launch_beside(stopped, stop_hook.environment(at_step=2)),
              launch_beside(failed, oom_hook.environment(above=0, at_step=3))]
    seen: list[Any] = []
    previous = os.environ.get("TRACKIO_DIR")
    os.environ["TRACKIO_DIR"] = str(trackio_dir)  # Trackio's local store, inherited by the ranks
    from llmwizard.runner.after import report

    writes: list[tuple[str, int]] = []   # (state shown, evaluations in metrics.jsonl) at each write
    write_report = report.write_report

    def counted(run_dir: Path, status: Any = None) -> Path:
        path = write_report(run_dir, status)
        writes.append((status.state if status else "-", len(logs(run_dir, "eval_loss", eval_only=True))))
        return path

    report.write_report = counted
    try:
        outcome = RunSession(Plan.load(finished / "plan.yaml"), finished, seen.append, interval=0.2).run()
    finally:
        report.write_report = write_report
        if previous is None:
            os.environ.pop("TRACKIO_DIR", None)
        else:
            os.environ["TRACKIO_DIR"] = previous
        codes = [process.wait(600) for process in beside]
    log = (finished / "train.log").read_text()
    assert outcome is not None and outcome.status == "done", log[-3000:]
    assert codes[0] == 0, (stopped / "train.log").read_text()[-3000:]
    assert codes[1] != 0, (failed / "train.log").read_text()[-3000:]
    return {"root": root, "finished": finished, "stopped": stopped, "failed": failed, "events": seen,
            "trackio": trackio_dir, "report_writes": writes}


def logs(run_dir: Path, key: str, *, eval_only: bool = False) -> list[tuple[int, float]]:
    out = []
    for record in read_metrics(run_dir / "metrics.jsonl"):
        if record.get("type") == "log" and key in record and (("eval_loss" in record) == eval_only):
            out.append((record["step"], record[key]))
    return out


# ----------------------------------------------------------------------------- runs

@pytest.mark.slow
def test_runs_lists_finished_stopped_and_failed_runs(runs, capsys):
    assert cli_main(["runs", str(runs["root"]), "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"finished", "stopped", "failed"}

    finished, stopped, failed = listed["finished"], listed["stopped"], listed["failed"]
    assert finished["state"] == "finished" and (finished["step"], finished["max_steps"]) == (6, 6)
    assert finished["train_loss"] == logs(runs["finished"], "loss")[-1][1]
    evals = logs(runs["finished"], "eval_loss", eval_only=True)
    assert [step for step, _ in evals] == [3, 6] and finished["eval_loss"] == evals[-1][1]
    assert finished["best_eval_loss"] == min(v for _, v in evals)
    assert finished["mean_token_accuracy"] == logs(runs["finished"], "mean_token_accuracy")[-1][1]

    assert stopped["state"] == "stopped" and stopped["step"] == 2 and stopped["eval_loss"] is None
    assert stopped["train_loss"] == logs(runs["stopped"], "loss")[-1][1]
    assert (runs["stopped"] / "output" / "checkpoint-2").is_dir()

    assert failed["state"] == "failed" and 1 <= failed["step"] < 3
    assert "without a final record" in failed["detail"]

    from llmwizard.runner.after.runs import directory_size

    for name, row in listed.items():
        assert row["duration_s"] > 0 and row["size_bytes"] == directory_size(runs["root"] / name)
    assert finished["size_bytes"] > stopped["size_bytes"] > 0  # two checkpoints and the final adapter

    assert cli_main(["runs", str(runs["root"])]) == 0
    table = capsys.readouterr().out
    for name, state in (("finished", "finished"), ("stopped", "stopped"), ("failed", "failed")):
        line = next(line for line in table.splitlines() if line.strip().startswith(name))
        assert state in line.split()[1:3], line
    assert "6/6" in table and "2/200" in table


def test_runs_refuses_a_missing_directory(tmp_path, capsys):
    assert cli_main(["runs", str(tmp_path / "nope")]) == 2
    assert "Directory not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- trackers

@pytest.mark.slow
def test_tensorboard_and_trackio_files_are_written_and_read_back(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = logs(runs["finished"], "loss")
    (events_dir,) = {p.parent for p in (runs["finished"] / "tensorboard").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events_dir))
    accumulator.Reload()
    scalars = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
    assert [s for s, _ in scalars] == [s for s, _ in train]
    assert [round(v, 4) for _, v in scalars] == [round(v, 4) for _, v in train]
    assert len(accumulator.Scalars("eval/loss")) == 2

    script = ("import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage as S\n"
              "print(json.dumps([S.get_runs('llmwizard'), S.get_logs('llmwizard', 'tiny-llama-arithmetic')]))")
    read = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TRACKIO_DIR=str(runs["trackio"])))
    assert read.returncode == 0, read.stderr[-2000:]
    names, rows = json.loads(read.stdout.splitlines()[-1])
    assert names == ["tiny-llama-arithmetic"]
    tracked = [(row["train/global_step"], row["train/loss"]) for row in rows if "train/loss" in row]
    assert [s for s, _ in tracked] == [s for s, _ in train]
    assert [round(v, 4) for _, v in tracked] == [round(v, 4) for _, v in train]
    assert len([row for row in rows if "eval/loss" in row]) == 2


# ----------------------------------------------------------------------------- report.html

@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_with_every_point(runs):
    from playwright.sync_api import sync_playwright

    run_dir = runs["finished"]
    report = run_dir / "report.html"
    assert report.is_file()
    train_steps = len(logs(run_dir, "loss"))
    expected = {
        ("loss", "train (raw)"): train_steps, ("loss", "eval (raw)"): 2,
        ("accuracy", "train"): train_steps, ("accuracy", "eval"): 2,
        ("learning_rate", "learning rate"): train_steps, ("grad_norm", "grad norm"): train_steps,
        ("tokens_per_second", "tokens/s (all ranks)"): train_steps - 1, ("memory", "rank 0"): train_steps,
    }
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.resolve().as_uri(), wait_until="load")
            assert "finished" in page.inner_text("h1")
            charts = page.eval_on_selector_all("svg.chart", """svgs => svgs.map(svg => ({
                chart: svg.dataset.chart,
                box: svg.getBoundingClientRect().width * svg.getBoundingClientRect().height,
                series: [...svg.querySelectorAll('polyline')].map(p => ({
                    name: p.dataset.series, declared: Number(p.dataset.points),
                    drawn: p.points.numberOfItems}))}))""")
            body = page.inner_text("body")
        finally:
            browser.close()
    assert problems == []
    assert [url for url in requests if not url.startswith("file://")] == []  # nothing from the network
    assert [c["chart"] for c in charts] == ["loss", "accuracy", "learning_rate", "grad_norm", "tokens_per_second",
                                            "memory"]
    drawn = {(c["chart"], s["name"]): s for c in charts for s in c["series"]}
    for key, count in expected.items():
        assert drawn[key]["drawn"] == drawn[key]["declared"] == count, (key, drawn[key])
    assert all(c["box"] > 1000 for c in charts)  # laid out, not collapsed
    for heading in ("Plan", "Why", "Memory estimate", "Diagnostics", "Recovery", "Held-out samples"):
        assert heading in body
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["reference"] in body


@pytest.mark.slow
def test_the_session_writes_the_report_at_launch_at_each_evaluation_and_at_the_end(runs):
    writes = runs["report_writes"]
    assert writes[0] == ("running", 0) and writes[-1] == ("finished", 2)
    assert [evals for state, evals in writes[1:-1]] == [1, 2] and {s for s, _ in writes[1:-1]} == {"running"}


@pytest.mark.slow
def test_report_command_prints_the_path_and_tells_a_stopped_run_s_story(runs, capsys):
    stopped = runs["stopped"]
    assert cli_main(["report", str(stopped), "--no-open"]) == 0
    assert capsys.readouterr().out.strip() == str((stopped / "report.html").resolve())
    page = (stopped / "report.html").read_text()
    assert "class='state stopped'" in page and "stopped by SIGTERM at step 2" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page


# ----------------------------------------------------------------------------- samples and summary

@pytest.mark.slow
def test_samples_are_written_at_the_end_and_the_summary_shows_one(runs):
    from llmwizard.runner.session import events

    run_dir = runs["finished"]
    from llmwizard.runner.rank.samples import SCORED_COUNT

    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert 3 <= len(samples) <= SCORED_COUNT   # three shown, more held-out short answers scored
    for sample in samples:
        assert sample["prompt"] and sample["reference"] and isinstance(sample["output"], str)
        assert sample["step"] == 6 and isinstance(sample.get("exact"), bool)
    finished = runs["events"][-1]
    assert isinstance(finished, events.Finished)
    rows = dict(finished.summary.rows)
    assert rows["report"] == str(run_dir / "report.html")
    assert rows["sample"].startswith(repr(" ".join(samples[0]["prompt"].split()))[:20])
    assert rows["merge"] == f"llmwizard merge {run_dir}" and rows["try it"].startswith(f"llmwizard try {run_dir}")
    assert "next-token accuracy" in rows


# ----------------------------------------------------------------------------- merge and try

def greedy_ids(model, tokenizer, prompts: list[str], new: int = 12) -> list[list[int]]:
    import torch

    from llmwizard.runner.rank.samples import encode

    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([encode(tokenizer, prompt)])
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=new, pad_token_id=tokenizer.pad_token_id)
            out.append(generated[0, ids.shape[1]:].tolist())
    return out


@pytest.mark.slow
def test_merge_writes_a_plain_model_that_generates_the_adapter_s_tokens(runs, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmwizard.autotune.embedded import ensure_embedded_model
    from llmwizard.runner.recovery import best_checkpoint

    run_dir = runs["finished"]
    out = tmp_path / "merged"
    assert cli_main(["merge", str(run_dir), "--out", str(out)]) == 0
    best = best_checkpoint(run_dir, run_dir / "output")
    assert best is not None and f"Merged {best.path.relative_to(run_dir)}" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ensure_embedded_model()),
                                        str(best.path)).eval()
    prompts = ["12+7=", "what is 3*4?", "9-5="]
    assert greedy_ids(merged, tokenizer, prompts) == greedy_ids(adapted, tokenizer, prompts)

    # Never over an existing directory: the merged model stays as it was.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert cli_main(["merge", str(run_dir), "--out", str(out)]) == 2
    assert "never writes over it" in capsys.readouterr().err
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def _copy_with_plan(run_dir: Path, target: Path, **changes: str) -> Path:
    import yaml

    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("checkpoint-*", "tensorboard"))
    plan = yaml.safe_load((target / "plan.yaml").read_text())
    plan.update(changes)
    (target / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return target


@pytest.mark.slow
def test_merge_refuses_qlora_without_dequantize_and_a_missing_base(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the long temporary path on one line of the message
    qlora = _copy_with_plan(runs["finished"], tmp_path / "qlora", method="qlora")
    assert cli_main(["merge", str(qlora)]) == 2
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert "QLoRA" in err and "--dequantize" in err and not (qlora / "merged").exists()

    gone = _copy_with_plan(runs["finished"], tmp_path / "gone", model_source="local",
                           model=str(tmp_path / "no-such-model"))
    assert cli_main(["merge", str(gone)]) == 2
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert "no-such-model" in err and "is not there" in err and not (gone / "merged").exists()


@pytest.mark.slow
def test_try_generates_from_the_tuned_model_and_the_base_side_by_side(runs, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmwizard.autotune.embedded import ensure_embedded_model
    from llmwizard.runner.rank.samples import generate

    run_dir = runs["finished"]
    assert cli_main(["try", str(run_dir), "12+7=", "--json", "--max-new-tokens", "8"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["prompt"] == "12+7=" and shown["chat_template"] is True
    assert shown["weights"].startswith("output/checkpoint-")
    base_dir = ensure_embedded_model()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    assert shown["base"] == generate(base, AutoTokenizer.from_pretrained(base_dir), ["12+7="], 8)[0]
    assert isinstance(shown["tuned"], str)

    assert cli_main(["try", str(run_dir), "12+7=", "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert "tuned: output/checkpoint-" in text and "base" in text


# ----------------------------------------------------------------------------- trackers in the plan

def _plan_with(**goals: Any):
    from llmwizard.autotune.data.dataset import profile_dataset
    from llmwizard.autotune.embedded import EMBEDDED_DATASET, ensure_embedded_model
    from llmwizard.autotune.goals import Goals
    from llmwizard.autotune.machine.hardware import from_spec
    from llmwizard.autotune.model.model_spec import load_model_spec
    from llmwizard.autotune.plan.planner import plan
    from llmwizard.autotune.data.tokens import counter_for

    profile = profile_dataset(EMBEDDED_DATASET, counter_for(ensure_embedded_model()))
    return plan(from_spec("cpu"), load_model_spec(None), profile, Goals(**goals))


def test_report_to_reaches_trl_and_the_plan_suggests_only_a_configured_tracker(monkeypatch, capsys):
    from llmwizard.autotune.plan.plan_steps import configured_trackers
    from llmwizard.runner.export.configs import sft_config

    for name in ("WANDB_API_KEY", "MLFLOW_TRACKING_URI", "TRACKIO_SPACE_ID", "TRACKIO_DIR", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(name, raising=False)
    quiet = _plan_with()
    assert quiet.report_to == [] and "report_to" not in quiet.reasons
    assert sft_config(quiet)["report_to"] == "none"

    asked = _plan_with(report_to=["tensorboard", "trackio"])
    config = sft_config(asked)
    assert config["report_to"] == ["tensorboard", "trackio"] and config["project"] == "llmwizard"
    assert config["env"]["TENSORBOARD_LOGGING_DIR"] == "tensorboard" and config["run_name"] == asked.name
    assert asked.reasons["report_to"].startswith("tensorboard, trackio (asked for)")

    # Installed and configured: suggested, not switched on. A key for a tracker that is not installed: silent.
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "/tmp/tb")
    assert configured_trackers() == ["tensorboard"]
    suggested = _plan_with()
    assert suggested.report_to == [] and "--report-to tensorboard" in suggested.reasons["report_to"]
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        assert configured_trackers({"WANDB_API_KEY": "k"}) == []
        warned = _plan_with(report_to=["wandb"])
        assert warned.report_to == ["wandb"] and any("pip install wandb" in w for w in warned.warnings)

    assert cli_main(["plan", "--report-to", "none", "tensorboard"]) == 2
    assert "mixes none with trackers" in capsys.readouterr().err
