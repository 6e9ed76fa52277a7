"""The probe: a real probed run on the CPU (one, shared by its assertions), the verdicts fed with
measurements (room to grow, out of memory, too close, ranks that disagree), and the reserved
memory the fit decisions use."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from llmwizard.autotune.data.dataset import DatasetProfile
from llmwizard.autotune.goals import Goals
from llmwizard.autotune.machine.hardware import from_spec
from llmwizard.autotune.machine.hardware_types import GiB
from llmwizard.autotune.memory import TrainSetup, estimate
from llmwizard.autotune.model.model_spec import spec_from_config
from llmwizard.autotune.plan.planner import plan
from llmwizard.autotune.plan.probe import RankMeasurement, correct, memory_ratio
from llmwizard.autotune.memory.reserved import CUDA_CONTEXT, NCCL_COMMUNICATOR, expected_peak
from llmwizard.autotune.plan.search import HEADROOM
from llmwizard.runner.session import events

LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 131072, "tie_word_embeddings": True}
MODEL = spec_from_config("llama-1b", "catalog", None, LLAMA_1B)
DATA = DatasetProfile(source="/data/train.jsonl", format="messages", num_examples=600, measured=600,
                      tokenizer="test", exact_tokens=True, mean_tokens=300.0, p50_tokens=300, p90_tokens=900,
                      p95_tokens=900, p99_tokens=900, max_tokens=900, total_tokens=180000,
                      histogram=[(1, 900, 600)])


def planned(gpus: str = "1xH100-80GB", **goals):
    return plan(from_spec(gpus), MODEL, DATA, Goals(**goals))


def gpu(rank: int, seen: float, **kw) -> RankMeasurement:
    return RankMeasurement(rank, int(seen), peak_reserved=int(seen * 0.9), step_s=1.0, kind="cuda", **kw)


# ----------------------------------------------------------------------------- reserved memory

def test_the_expected_peak_adds_what_lives_outside_the_tensors():
    one = expected_peak(10 * GiB, "cuda", 1)
    assert one.parts["CUDA context"] == CUDA_CONTEXT and "NCCL buffers" not in one.parts
    assert one.parts["allocator reserve"] == pytest.approx(GiB, rel=0.01)  # 10% with expandable segments
    assert expected_peak(10 * GiB, "cuda", 1, expandable_segments=False).total > one.total
    assert expected_peak(10 * GiB, "cuda", 4).parts["NCCL buffers"] == NCCL_COMMUNICATOR
    assert "CUDA context" not in expected_peak(GiB, "cpu").parts
    e = planned().estimate
    assert e.tensor_peak < e.total and e.total == e.tensor_peak + sum(e.reserved_parts.values())
    assert e.total <= e.budget * (1 - HEADROOM)  # the fit decision used the reserved figure


def test_a_calibrated_estimate_is_scaled_and_says_so():
    from llmwizard.autotune.train_setup import Calibrated

    setup = TrainSetup(method="lora", seq_len=1024)
    plain = estimate(MODEL, setup, 80 * GiB)
    calibrated = estimate(MODEL, replace(setup, calibration={"single": Calibrated(1.07, 3)}), 80 * GiB)
    assert calibrated.total == pytest.approx(plain.total * 1.07, rel=1e-6)
    assert calibrated.calibration == "calibrated from 3 probes on this machine: x1.07"
    assert any("x1.07" in note for note in calibrated.notes)
    other = estimate(MODEL, replace(setup, calibration={"ddp": Calibrated(1.5, 2)}), 80 * GiB)
    assert other.total == plain.total and not other.calibration  # another strategy's factor


# ----------------------------------------------------------------------------- verdicts

def test_room_to_grow_doubles_the_micro_batch_and_keeps_the_effective_batch():
    p = planned(micro_batch=2, effective_batch=16)
    verdict = correct(p, [gpu(0, p.estimate.total)], MODEL)
    assert verdict.action == "grow" and verdict.changed
    after = verdict.plan
    assert (after.micro_batch, after.grad_accum, after.effective_batch) == (4, 4, 16)
    assert after.estimate.total > p.estimate.total and "doubled from 2" in after.reasons["batch"]
    # not when the user fixed it, nor after a round that had to shrink, nor without the model
    assert correct(p, [gpu(0, p.estimate.total)], MODEL, may_grow=False).action == "keep"
    assert correct(p, [gpu(0, p.estimate.total)], MODEL, earlier=("shrink",)).action == "keep"
    assert correct(p, [gpu(0, p.estimate.total)], None).action == "keep"


def test_no_growth_past_the_headroom():
    p = planned(micro_batch=2, effective_batch=16)
    usable = p.estimate.budget * (1 - HEADROOM)
    verdict = correct(p, [gpu(0, usable - 1024)], MODEL)   # fits, but twice the batch would not
    assert verdict.action == "keep" and verdict.plan is p and "within the 5% headroom" in verdict.reason


def test_out_of_memory_halves_the_micro_batch():
    p = planned(micro_batch=4, effective_batch=16)
    verdict = correct(p, [RankMeasurement(0, 0, oom=True, kind="cuda")], MODEL)
    assert verdict.action == "shrink" and "ran out of GPU memory" in verdict.reason
    assert (verdict.plan.micro_batch, verdict.plan.grad_accum, verdict.plan.effective_batch) == (2, 8, 16)
    assert memory_ratio([RankMeasurement(0, 0, oom=True)], p) is None  # nothing to calibrate


def test_too_close_to_the_budget_shrinks_then_checkpoints_then_offloads_then_gives_up():
    p = planned(micro_batch=2, effective_batch=16, checkpointing=False)
    close = p.estimate.budget * 0.97
    verdict = correct(p, [gpu(0, close)], MODEL)
    assert verdict.action == "shrink" and "closer than the 5% headroom" in verdict.reason
    one = verdict.plan
    assert one.micro_batch == 1
    verdict = correct(one, [gpu(0, close)], MODEL)
    assert verdict.action == "checkpointing" and verdict.plan.activation_checkpointing
    verdict = correct(verdict.plan, [gpu(0, close)], MODEL)
    assert verdict.action == "next_tier" and (verdict.plan.strategy, verdict.plan.offload) == ("zero2", "optimizer")
    verdict = correct(verdict.plan, [gpu(0, close)], MODEL)
    assert verdict.action == "next_tier" and (verdict.plan.strategy, verdict.plan.offload) == ("zero3", "params")
    assert correct(verdict.plan, [gpu(0, close)], MODEL).action == "give_up"


def test_ranks_that_disagree_are_judged_by_the_worst():
    p = planned("2xH100-80GB", micro_batch=2, effective_batch=16)
    budget = p.estimate.budget
    verdict = correct(p, [gpu(0, 20 * GiB), gpu(1, budget * 0.97)], MODEL)
    assert verdict.action == "shrink" and verdict.worst_rank == 1
    assert "rank 1 peaked" in verdict.reason and "ranks disagree" in verdict.reason
    # the same with an out-of-memory on rank 0 and a comfortable rank 1
    verdict = correct(p, [RankMeasurement(0, 0, oom=True, kind="cuda"), gpu(1, 20 * GiB)], MODEL)
    assert verdict.action == "shrink" and verdict.worst_rank == 0 and "ranks disagree" in verdict.reason
    # both fit: the higher one decides whether the batch may grow
    verdict = correct(p, [gpu(0, p.estimate.total), gpu(1, budget * 0.9)], MODEL)
    assert verdict.action == "keep" and verdict.worst_rank == 1


# ----------------------------------------------------------------------------- a real probe on the CPU

@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory):
    """One probed run of the embedded model: micro-batch 8 of an effective 16, so the probe has
    room to grow it once and then keeps it. The run it then launches is killed at once: what it
    launched is what is checked (the rest of a run is other tests' business)."""
    from llmwizard.autotune.data.dataset import profile_dataset
    from llmwizard.autotune.embedded import EMBEDDED_DATASET, ensure_embedded_model
    from llmwizard.autotune.model.model_spec import load_model_spec
    from llmwizard.autotune.data.tokens import counter_for
    from llmwizard.runner.session.engine import RunSession
    from llmwizard.runner.export import export

    root = tmp_path_factory.mktemp("probe")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMWIZARD_CALIBRATION_DIR", str(root / "cache"))
        profile = profile_dataset(EMBEDDED_DATASET, counter_for(ensure_embedded_model()))
        p = plan(from_spec("cpu"), load_model_spec(None), profile,
                 Goals(method="lora", max_steps=2, eval_fraction=0, micro_batch=8, effective_batch=16, probe=True))
        # A relative run directory, as the CLI's runs/NAME: launch.sh changes into it, the probe must
        # still find what the ranks wrote.
        patch.chdir(root)
        run_dir = Path("run")
        run_dir.mkdir()
        export(p, run_dir)
        seen: list[events.Event] = []

        def on_event(event: events.Event) -> None:
            seen.append(event)
            if isinstance(event, events.Started):
                session.kill()

        session = RunSession(p, run_dir, on_event, interval=0.1)
        session.probe_steps = 2
        outcome = session.run()
        from llmwizard.autotune.machine.calibration import Store

        store = Store.load()
    return p, root / "run", seen, session, outcome, store


@pytest.mark.slow
def test_the_probe_runs_real_steps_grows_the_batch_and_launches_its_plan(probed):
    p, run_dir, seen, session, outcome, _ = probed
    assert p.probe and p.micro_batch == 8
    assert outcome.status == "stopped", (run_dir / "train.log").read_text()[-3000:]
    probes = [e for e in seen if isinstance(e, events.Probe)]
    started = next(i for i, e in enumerate(seen) if isinstance(e, events.Started))
    assert probes and all(seen.index(e) < started for e in probes)  # the probe comes before the run
    first, last = probes[0], probes[-1]
    assert first.verdict == "grow" and first.before["micro_batch"] == 8 and first.after["micro_batch"] == 16
    assert last.final and last.verdict == "keep" and last.before["micro_batch"] == 16
    assert first.measured > 0 and first.memory_kind == "rss" and first.step_s and first.step_s > 0
    assert first.speed_ratio and first.speed_ratio > 0
    assert session.plan.micro_batch == 16 and session.plan.grad_accum == 1
    started_event = seen[started]
    assert isinstance(started_event, events.Started) and "micro-batch 16 x 1" in started_event.plan
    assert session.state.probe_step_s == last.step_s


@pytest.mark.slow
def test_the_probe_story_is_in_the_run_directory(probed):
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.metrics import read_metrics

    _, run_dir, _, _, _, _ = probed
    lines = [json.loads(line) for line in (run_dir / "probe.jsonl").read_text().splitlines()]
    assert [line["verdict"] for line in lines] == ["grow", "keep"]
    for line in lines:
        assert line["expected_peak"] > 0 and line["measured_peak"] > 0 and line["ratio_measured_to_expected"] > 0
        assert line["ranks"][0]["process_bytes"] == line["measured_peak"] and line["ranks"][0]["step_s"] > 0
        assert line["before"]["effective_batch"] == line["after"]["effective_batch"] == 16
    assert Plan.load(run_dir / "plan.yaml").micro_batch == 16  # the run's plan is the probe's
    # the probe's steps stay out of the run's metrics: the run, killed before its first step, has
    # only the end record the session writes for it
    assert [r["type"] for r in read_metrics(run_dir / "metrics.jsonl")] == ["end"]
    assert (run_dir / ".llmwizard" / "probe" / "round-1" / "metrics.jsonl").is_file()
    assert not (run_dir / ".llmwizard" / "probe" / "round-1" / "output").exists()


@pytest.mark.slow
def test_the_probe_calibrates_later_estimates(probed):
    from llmwizard.autotune.machine.calibration import Key

    _, _, _, _, _, store = probed
    entry = store.entries[Key("cpu", "llama", "lora", "single")]
    assert len(entry.memory) == 2 and all(ratio > 0 for ratio in entry.memory)
    factor = store.factors("cpu", "llama", "lora")["single"]
    assert factor.probes == 2 and factor.label.startswith("calibrated from 2 probes on this machine: x")


# ----------------------------------------------------------------------------- what the faces show

def test_the_probe_arguments_turn_a_run_into_a_probe():
    from llmwizard.runner.rank.train import parse_args

    own, rest = parse_args(["--config", "sft_config.yaml", "--probe", "3", "--probe-dir", "/r/.llmwizard/probe/round-1"])
    assert own.probe == 3 and rest[:2] == ["--config", "sft_config.yaml"]
    pairs = dict(zip(rest[2::2], rest[3::2]))
    assert pairs["--max_steps"] == "3" and pairs["--save_strategy"] == "no" and pairs["--eval_strategy"] == "no"
    assert pairs["--output_dir"] == "/r/.llmwizard/probe/round-1/output"
    own, rest = parse_args(["--config", "sft_config.yaml"])
    assert not own.probe and rest == ["--config", "sft_config.yaml"]


def test_the_console_shows_each_round_and_the_story():
    from rich.console import Console

    from llmwizard.runner.session.live import ConsoleView

    before = {"strategy": "single", "offload": "none", "micro_batch": 4, "grad_accum": 4, "checkpointing": False}
    after = dict(before, micro_batch=2, grad_accum=8)
    console = Console(record=True, width=120, force_terminal=False)
    view = ConsoleView(console, "run")
    view(events.Probe(1, "shrink", "rank 1 ran out of GPU memory in the probe", before, after, expected=20 * GiB,
                      worst_rank=1, ranks=2, memory_kind="cuda"))
    view(events.Probe(2, "keep", "rank 0 peaked at 18.00 GiB", after, after, expected=18 * GiB, measured=18 * GiB,
                      worst_rank=0, ranks=2, memory_kind="cuda", step_s=2.5, eta_s=250.0, final=True))
    text = console.export_text()
    assert "probe 1: shrink" in text and "probe 2: keep" in text and "2.50 s/step" in text
    assert "out of memory" in text and "single 2x8" in text and "as probed" in text
    assert view.state.probe_step_s == 2.5


def test_the_probe_step_time_is_the_eta_until_the_run_has_its_own():
    from llmwizard.runner.state import RunState

    state = RunState()
    state.update({"type": "begin", "max_steps": 10, "world_size": 1, "time": 0})
    assert state.eta() is None
    state.probe_step_s = 2.0
    assert state.eta() == pytest.approx(20.0)
    state.update({"type": "log", "step": 5, "max_steps": 10, "loss": 1.0, "time": 5.0})
    assert state.eta() == pytest.approx(10.0)  # one log is no rate yet (start-up is in its time): the probe's
    state.update({"type": "log", "step": 6, "max_steps": 10, "loss": 1.0, "time": 5.5})
    assert state.eta() == pytest.approx(2.0)  # its own rate: 1 step in 0.5 s, 4 steps left
