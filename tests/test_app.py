"""The Textual wizard driven by Pilot through every step, with fake GPUs (NVML is the only fake).

The planner, dataset profiler, exporter and launcher are the real ones; the run test trains the
embedded model on the CPU for real. Snapshot tests of the key screens live in tests/snapshots/.
"""

from __future__ import annotations

import io
import re
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from llmwizard.autotune.machine.hardware import GPU, HardwareProfile
from llmwizard.wizard.app import WizardApp
from llmwizard.wizard.cli import build_parser
from llmwizard.wizard.core import STRATEGY_WORDS

GiB = 1024**3


def fake_hardware(free_gib: tuple[float, ...] = (79.2, 61.5), total_gib: float = 80,
                  name: str = "NVIDIA A100-SXM4-80GB", interconnect: str = "nvlink") -> HardwareProfile:
    """What detect() would report for these GPUs: the NVML boundary, faked (catalog figures
    filled in as detect fills them)."""
    from llmwizard.autotune.machine.gpu_catalog import lookup

    part = lookup(name)
    gpus = [GPU(index=i, name=name, total_memory=int(total_gib * GiB), free_memory=int(free * GiB),
                compute_capability=part.compute_capability if part else (8, 0),
                bf16_tflops=part.bf16_tflops if part else None,
                memory_bandwidth=part.bandwidth_gbs if part else None) for i, free in enumerate(free_gib)]
    links = {f"{a}-{b}": interconnect for a in range(len(gpus)) for b in range(a + 1, len(gpus))}
    return HardwareProfile(source="detected", gpus=gpus, interconnect=interconnect if len(gpus) > 1 else "none",
                           links=links,
                           host_ram_total=256 * GiB, host_ram_available=230 * GiB, cpu_cores=32,
                           disk_free=500 * GiB)


@pytest.fixture()
def gpus(monkeypatch: pytest.MonkeyPatch) -> HardwareProfile:
    profile = fake_hardware()
    monkeypatch.setattr("llmwizard.autotune.machine.hardware.detect", lambda *args, **kwargs: profile)
    return profile


def make_app(*argv: str, output: Path | None = None) -> WizardApp:
    args = build_parser().parse_args([*argv, *(["--output-dir", str(output)] if output else [])])
    return WizardApp(args, cursor_blink=False)


async def settle(pilot, rounds: int = 3) -> None:
    """Let workers finish and their messages land (a result can start another worker)."""
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def launched(pilot) -> None:
    """Press Launch and wait for the run screen (not for workers: the run's tail lasts the run)."""
    await pilot.click("#next")
    if not await wait_until(pilot, lambda: getattr(pilot.app.screen, "STEP", -1) == 6, seconds=20, interval=0.1):
        raise AssertionError(f"no run screen: {pilot.app.screen!r}")


async def wait_until(pilot, condition, seconds: float, interval: float = 0.5) -> bool:
    """Let the app run in `interval` pauses until `condition()` holds; False if `seconds` pass first."""
    for _ in range(int(seconds / interval)):
        await pilot.pause(interval)
        if condition():
            return True
    return bool(condition())


async def go_to(pilot, step: int) -> None:
    """Accept each step's defaults with Ctrl+N until step `step` (0-based) shows."""
    for _ in range(12):
        await settle(pilot)
        if getattr(pilot.app.screen, "STEP", -1) >= step:
            return
        await pilot.press("ctrl+n")
    raise AssertionError(f"stuck on {pilot.app.screen!r}")


def text_of(app: WizardApp, selector: str) -> str:
    """The plain text a Static shows."""
    import io

    from rich.console import Console
    from textual.widgets import Static

    widget = app.screen.query_one(selector)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(widget.content if isinstance(widget, Static) else widget.render())
    return console.export_text().replace("\u00a0", " ")  # no-break spaces keep figures with their units


@pytest.mark.asyncio
async def test_every_step_from_detected_gpus_to_an_exported_plan(gpus: HardwareProfile, tmp_path: Path):
    app = make_app(output=tmp_path / "runs")
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        assert app.screen.STEP == 0
        await pilot.press("enter")  # no preset
        await settle(pilot)
        assert app.screen.STEP == 1
        detected = text_of(app, "#detected")
        assert "NVIDIA A100-SXM4-80GB" in detected and "61.5 / 80.0 GiB" in detected
        assert "NVLink" in detected and "230.0 GiB available" in detected

        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == 2 and app.state.hardware is gpus
        facts = text_of(app, "#model-facts")
        assert "225,856" in facts and "r=8" in facts  # parameters and the LoRA share

        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == 3
        facts = text_of(app, "#dataset-facts")
        assert "900 (chat messages)" in facts and "small dataset" in facts
        assert app.state.dataset is not None and app.state.dataset.profile.histogram

        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == 4
        plan = app.state.plan
        assert plan is not None and plan.num_processes == 2 and plan.device == "cuda"
        reasons = text_of(app, "#reasons")
        for key in plan.reasons:
            assert key.replace("_", " ") in reasons
        assert "per GPU: fits" in text_of(app, "#memory")

        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == 5
        export = app.state.export
        assert export is not None and (export.run_dir / "launch.sh").is_file()
        assert export.run_dir.parent == tmp_path / "runs"
        shown = text_of(app, "#export")
        assert "launch.sh" in shown and "accelerate.commands.launch" in shown
        # A plan for the detected GPUs launches here; this machine has them (as far as NVML says).
        assert not app.screen.query_one("#next").disabled


@pytest.mark.asyncio
async def test_what_if_edits_replan_and_a_setup_that_does_not_fit_is_shown_inline(monkeypatch, tmp_path: Path):
    small = fake_hardware(free_gib=(1.0,), total_gib=16, name="NVIDIA T4-like", interconnect="none")
    monkeypatch.setattr("llmwizard.autotune.machine.hardware.detect", lambda *args, **kwargs: small)
    app = make_app("--method", "lora", output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        first = app.state.plan
        assert first is not None

        screen = app.screen
        screen.query_one("#lora-r").value = "16"
        await settle(pilot)
        assert app.state.plan is not None and app.state.plan.lora.r == 16
        assert app.state.overrides == {"lora_r": 16}
        assert "rank 16" in text_of(app, "#reasons")

        screen.query_one("#micro-batch").value = "4096"
        await settle(pilot)
        assert app.state.plan is None
        verdict = text_of(app, "#memory")
        assert verdict.startswith("micro-batch 4096 not applied: it needs") and "fits" not in verdict
        assert "▲ budget" in verdict  # the bar of what was asked for runs past the budget
        problem = text_of(app, "#plan-problem")
        assert "Fix: Set micro-batch to" in problem and "or clear it (the planner picks" in problem
        assert "✗ micro-batch" in str(screen.query_one("#label-micro-batch").content)
        assert screen.query_one("#micro-batch").has_class("-refused")

        await pilot.press("ctrl+n")  # Export refuses where the user is looking, without a dialog
        await pilot.pause()
        assert type(app.screen).__name__ == "PlanScreen" and not list(tmp_path.iterdir())
        assert "No plan to export" in text_of(app, "#nav-status")

        screen.query_one("#micro-batch").value = ""
        await settle(pilot)
        assert app.state.plan is not None and not screen.query_one("#plan-problem").display
        assert not screen.query_one("#micro-batch").has_class("-refused")
        assert str(screen.query_one("#label-micro-batch").content) == "micro-batch"


@pytest.mark.asyncio
@pytest.mark.parametrize(("field", "typed", "allowed"), [
    ("#learning-rate", "fast", "finite number greater than 0"),
    ("#lora-r", "abc", "1 or more"),
    ("#micro-batch", "0", "1 or more"),
    ("#epochs", "nan", "finite number greater than 0"),
])
async def test_a_bad_what_if_value_is_answered_with_the_schema_rule(gpus, tmp_path: Path, field: str, typed: str,
                                                                     allowed: str):
    """The plan screen's fields obey the rules flags, presets and plan.yaml obey; a bad value is
    named with what is allowed, and "1e-4" is a learning rate."""
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        screen = app.screen
        screen.query_one(field).value = typed
        await settle(pilot)
        verdict, problem = text_of(app, "#memory"), text_of(app, "#plan-problem")
        assert f"'{typed}' is not allowed" in verdict and allowed in verdict and "clear the field" in problem
        assert app.state.plan is None and "last plan that worked" in text_of(app, "#plan-summary")
        assert not screen.query_one(field).is_valid
        await pilot.press("ctrl+n")  # the last valid plan is not exported under an invalid field
        await pilot.pause()
        assert type(app.screen).__name__ == "PlanScreen" and not list(tmp_path.iterdir())
        assert "fix or clear it to export" in text_of(app, "#nav-status")
        assert app.state.plan is None
        screen.query_one(field).value = ""
        screen.query_one("#learning-rate").value = "1e-4"
        await settle(pilot)
        assert app.state.plan is not None and app.state.plan.learning_rate == 1e-4


@pytest.mark.asyncio
async def test_a_strategy_that_cannot_run_is_explained_not_crashed(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        app.screen.query_one("#strategy").value = "single"
        await settle(pilot)
        assert app.state.plan is None
        verdict = text_of(app, "#memory")
        assert verdict.startswith("strategy single not applied: it runs one process, but the plan has 2")
        fix = text_of(app, "#plan-problem")
        assert fix.startswith("Fix: Set strategy to auto (the planner picks") and "--" not in fix
        assert "FSDP2" in fix and "DDP" in fix  # the other strategies that work, by their names here
        app.screen.query_one("#strategy").value = "fsdp"
        await settle(pilot)
        assert app.state.plan is not None and app.state.plan.strategy == "fsdp"


@pytest.mark.asyncio
async def test_other_hardware_spec_is_checked_as_you_type_and_on_next(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 1)
        await pilot.click("#other")
        await pilot.click("#spec")
        await pilot.press(*"4xRTX9999")
        await settle(pilot)
        assert "Unknown GPU model" in text_of(app, "#spec-result")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert type(app.screen).__name__ == "HardwareScreen"  # said once, inline: no dialog
        assert "RTX4090" in text_of(app, "#spec-result") and app.focused is app.screen.query_one("#spec")
        spec = app.screen.query_one("#spec")
        spec.value = "2x8xH100-80GB"
        await settle(pilot)
        assert "8x NVIDIA H100" in text_of(app, "#spec-result")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == 2
        assert app.state.hardware.nodes == 2 and len(app.state.hardware.gpus) == 8
        await go_to(pilot, 5)
        # Planned for hardware this machine lacks: exported, not launched here.
        assert app.state.plan.num_machines == 2
        assert app.screen.query_one("#next").disabled
        assert "not this machine" in text_of(app, "#export")
        assert (app.state.export.run_dir / "slurm.sbatch").is_file()


@pytest.mark.asyncio
async def test_a_missing_dataset_file_shows_the_fix(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 3)
        field = app.screen.query_one("#dataset")
        field.value = str(tmp_path / "nope.jsonl")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == 3 and app.is_running
        facts = text_of(app, "#dataset-facts")
        assert "Dataset file not found" in facts and "Fix: Give the Dataset field (step 4)" in facts


@pytest.mark.asyncio
async def test_a_local_dataset_and_model_path_complete_and_profile(gpus, tmp_path: Path, write_jsonl):
    rows = [{"prompt": f"say {i}", "completion": " ok" * (i % 7 + 1)} for i in range(1200)]
    data = write_jsonl(rows, "pairs.jsonl")
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 3)
        field = app.screen.query_one("#dataset")
        field.focus()
        field.value = str(tmp_path / "pai")
        await pilot.pause(0.4)
        await settle(pilot)
        assert str(data) in field.suggester._suggestions  # completion offers the file
        field.value = str(data)
        await pilot.press("enter")
        await settle(pilot)
        facts = text_of(app, "#dataset-facts")
        assert "1,200 (prompt / completion)" in facts and "large dataset" in facts


@pytest.mark.asyncio
async def test_an_output_directory_that_cannot_be_written_is_reported_once(gpus, tmp_path: Path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs directory should be")
    app = make_app(output=blocker)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        await pilot.press("ctrl+n")  # Export
        await settle(pilot)
        assert app.screen.STEP == 5  # said once, inline: no dialog, and the export is not retried by itself
        shown = text_of(app, "#export")
        assert "run directory" in shown and "Back and Export again" in shown
        assert app.screen.query_one("#next").disabled
        blocker.unlink()
        await pilot.press("escape")  # Back to the plan, Export again
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.state.export is not None and app.state.export.run_dir.parent == blocker


@pytest.mark.asyncio
async def test_preset_and_flags_prefill_the_plan(gpus, tmp_path: Path):
    app = make_app("--preset", "large-dataset", "--max-steps", "7", "--method", "full", output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        plan = app.state.plan
        assert plan is not None
        assert plan.method == "full" and plan.max_steps == 7 and plan.effective_batch == 32
        assert "preset large-dataset" in plan.reasons["epochs"]
        # The model step shows what the planner takes for the embedded model (full fine-tuning, not
        # the preset's LoRA); choosing it hands the choice back to the planner, choosing LoRA pins LoRA.
        await go_to(pilot, 4)
        app.goto(2)
        await settle(pilot)
        await pilot.click("#lora")
        await settle(pilot)
        assert app.state.method == "lora"
        app.goto(4)
        await settle(pilot)
        assert app.state.plan.method == "lora"
        app.goto(2)
        await settle(pilot)
        await pilot.click("#full")
        await settle(pilot)
        assert app.state.method is None
        app.goto(4)
        await settle(pilot)
        assert app.state.plan.method == "full"


def test_the_wizard_process_imports_no_torch_through_export(tmp_path: Path):
    """Driven through plan and export in a fresh interpreter, nothing heavy is imported."""
    script = textwrap.dedent(f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        import llmwizard.autotune.machine.hardware
        from tests.test_app import fake_hardware, go_to, make_app
        from pathlib import Path
        llmwizard.autotune.machine.hardware.detect = lambda *a, **k: fake_hardware()
        async def main():
            app = make_app(output=Path({str(tmp_path)!r}))
            async with app.run_test(size=(120, 36)) as pilot:
                await go_to(pilot, 5)
                await go_to(pilot, 5)
                return app.state.export is not None
        exported = asyncio.run(main())
        print(json.dumps({{"exported": exported,
                          "heavy": sorted(m for m in ("torch", "transformers", "trl", "peft", "accelerate",
                                                       "deepspeed", "datasets") if m in sys.modules)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"exported": True, "heavy": []}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_launch_trains_on_the_cpu_and_plots_the_loss(tmp_path: Path):
    """A real run: the embedded model, 10 steps on the CPU, from the Launch button to the summary."""
    app = make_app("--gpus", "cpu", "--max-steps", "10", output=tmp_path / "runs")
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 5)
        assert app.state.plan.device == "cpu" and app.state.plan.max_steps == 10
        await launched(pilot)
        screen = app.screen
        await wait_until(pilot, lambda: screen.ended, seconds=600)  # 10 minutes on a busy machine
        assert screen.ended, app.state.launch.log_tail(30)
        run_dir = app.state.launch.run_dir
        summary = text_of(app, "#summary")
        assert "done" in summary and str(run_dir) in summary, summary
        assert screen.state_snapshot.step == 10
        plot = screen.query_one("#loss")
        assert len(plot.train) >= 5
        assert any(0x2800 < ord(ch) <= 0x28FF for ch in text_of(app, "#loss"))  # braille drawn
        assert (run_dir / "output" / "model.safetensors").is_file()  # the embedded model trains in full
        assert str(screen.query_one("#next").label) == "Quit"
        # Back to launch: the finished run keeps its directory (nothing is exported by going back);
        # Launch would write a new one.
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.STEP == 5 and app.state.export.run_dir == run_dir
        assert "belongs to the run launched from it" in text_of(app, "#export")
        assert not app.screen.query_one("#next").disabled and len(list(run_dir.parent.iterdir())) == 1
        await pilot.press("ctrl+q")
    assert app.return_code == 0


@pytest.mark.slow
@pytest.mark.asyncio
async def test_stop_ends_the_run_cleanly_and_quits_with_130(tmp_path: Path):
    app = make_app("--gpus", "cpu", "--max-steps", "2000", output=tmp_path / "runs")
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 5)
        await launched(pilot)
        screen = app.screen
        await wait_until(pilot, lambda: screen.state_snapshot is not None and screen.state_snapshot.losses,
                         seconds=600)
        assert screen.state_snapshot.losses, app.state.launch.log_tail(30)
        await pilot.press("ctrl+q")  # quitting mid-run asks first
        await pilot.pause()
        assert type(app.screen).__name__ == "QuitModal"
        await pilot.click("#stop")
        await wait_until(pilot, lambda: not app.is_running, seconds=120)
    assert app.return_code == 130 and app.state.stopped
    assert app.state.launch.poll() is not None  # the whole group is gone
    # The CLI's stop advice, from the same summary builder.
    from llmwizard.runner.session.events import Stopped

    run_dir = app.state.launch.run_dir
    end = screen.end_event
    assert isinstance(end, Stopped) and end.resume_command == f"llmwizard resume {run_dir}"
    assert ("resume", f"llmwizard resume {run_dir}") in end.summary.rows
    assert (run_dir / "output" / end.checkpoint / "trainer_state.json").is_file()
    # Once the wizard is gone, the terminal keeps the stop and how to resume.
    from llmwizard.wizard.app import print_ended

    console = Console(file=io.StringIO(), width=200)
    print_ended(app, console)
    printed = console.file.getvalue()
    assert f"stopped at step {end.step}" in printed and f"llmwizard resume {run_dir}" in printed


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_run_screen_recovers_from_out_of_memory_as_the_cli_does(tmp_path: Path, monkeypatch):
    """The OOM test hook (tests/hooks/oom.py) makes every rank run out of memory at step 6 while the
    micro-batch is above 8: the screen shows the re-plan and the resume, then the CLI's summary."""
    from llmwizard.autotune.plan import Plan
    from llmwizard.runner.session.events import Finished
    from llmwizard.runner.session.session import print_summary
    from tests.hooks.oom import environment

    for name, value in environment(above=8, at_step=6).items():
        monkeypatch.setenv(name, value)
    app = make_app("--gpus", "cpu", "--max-steps", "8", "--eval-fraction", "0", output=tmp_path / "runs")
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 5)
        before = app.state.plan
        assert (before.micro_batch, before.grad_accum, before.effective_batch) == (16, 1, 16)
        resumed = (6 - 1) // before.save_steps * before.save_steps  # the last checkpoint before step 6
        assert resumed > 0, "the plan should checkpoint before step 6"
        await launched(pilot)
        screen = app.screen
        await wait_until(pilot, lambda: screen.ended, seconds=600)
        assert screen.ended, app.state.launch.log_tail(30)
        run_dir = app.state.launch.run_dir

        shown = " ".join(text_of(app, "#recovery").split())
        assert "Out of GPU memory." in shown and "out of GPU memory during step 6" in shown
        assert "micro-batch 16 -> 8, gradient accumulation 1 -> 2 (effective batch 16 unchanged)" in shown
        assert f"resuming from checkpoint-{resumed}" in shown
        assert "Attempt 2:" in shown and "micro-batch 8 x 2 accumulation" in shown
        assert screen.state_snapshot.step == 8 and app.state.launch.poll() == 0
        after = Plan.load(run_dir / "plan.yaml")
        assert (after.micro_batch, after.grad_accum, after.effective_batch) == (8, 2, 16)

        end = screen.end_event
        assert isinstance(end, Finished) and end.exit_code == 0
        summary = " ".join(text_of(app, "#summary").split())
        assert summary.startswith("done")
        # Every row the CLI prints for this run, the screen shows.
        cli = io.StringIO()
        print_summary(Console(file=cli, width=200), end.summary)
        for label, value in end.summary.rows:
            assert f"{label} {' '.join(value.split())}" in summary, (label, value)
            assert " ".join(value.split()) in " ".join(cli.getvalue().replace("│", " ").split())
        assert any(label == "recovered" and "micro-batch 16 -> 8" in value for label, value in end.summary.rows)
        assert str(screen.query_one("#next").label) == "Quit"
        # On a small terminal the summary runs below the screen: the keys scroll down to it and back.
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert screen.max_scroll_y > 0
        await pilot.press("end")
        await settle(pilot)
        assert screen.scroll_y == screen.max_scroll_y
        await pilot.press("pageup", "home")
        await settle(pilot)
        assert screen.scroll_y == 0
        await pilot.press("ctrl+q")
    assert app.return_code == 0


def test_diagnostics_are_worded_for_the_run_screen():
    """The run screen shows what llmwizard.runner.diagnostics finds, with its fix (initial loss above 10)."""
    from llmwizard.runner.state import RunState
    from llmwizard.wizard.screens.run import findings_view

    records = [{"type": "begin", "step": 0, "max_steps": 100, "world_size": 1, "time": 0.0}]
    records += [{"type": "log", "step": s, "max_steps": 100, "loss": 12.5 - 0.01 * s, "time": float(s)}
                for s in range(1, 11)]
    findings = RunState.from_records(records).findings()
    assert findings and "10" in findings[0].message
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(findings_view(findings))
    shown = " ".join(console.export_text().split())
    assert findings[0].message in shown and "Fix: Check the dataset format" in shown and "step 4 shows" in shown
    assert "--" not in shown  # the run screen's advice names the wizard's steps, not flags


def shown_plan(app: WizardApp) -> dict[str, object]:
    """What the plan step shows, read back from the screen's text (not from the app's state)."""
    import re

    summary = " ".join(text_of(app, "#plan-summary").split())
    found = re.search(r"^([\w-]+)(?: \+ \w+ offload)? on (\d+) \w+ · (\w+)(?: r=(\d+))? · (\w+) · micro-batch (\d+) x accum (\d+) = (\d+) · "
                      r"(\d+) tokens · .* · lr (\S+)$", summary)
    assert found, summary
    strategy, world, method, rank, precision, micro, accum, effective, length, lr = found.groups()
    reasons = " ".join(text_of(app, "#reasons").split())
    optimizer = re.search(r"optimizer (\w+) \(asked for\)", reasons)
    split = re.search(r"context parallel (\d+) GPUs per sequence", reasons)
    strategy = {words: name for name, words in STRATEGY_WORDS.items()}[strategy]
    return {"summary": summary, "strategy": strategy, "num_processes": int(world), "method": method,
            "lora_r": int(rank) if rank else None, "micro_batch": int(micro), "grad_accum": int(accum),
            "effective_batch": int(effective), "max_length": int(length), "learning_rate": float(lr),
            "precision": precision, "optimizer": optimizer.group(1) if optimizer else None,
            "packing": "packing on:" in reasons, "context_parallel": int(split.group(1)) if split else 1,
            "activation_offloading": "activation offloading on" in reasons, "liger_kernel": "liger kernel on" in reasons}


def exported_plan(run_dir: Path) -> dict[str, object]:
    """The same facts from the run directory's plan.yaml and sft_config.yaml."""
    import yaml

    from llmwizard.autotune.plan import Plan
    from llmwizard.wizard.screens.plan import summary_line

    plan = Plan.load(run_dir / "plan.yaml")
    sft = yaml.safe_load((run_dir / "sft_config.yaml").read_text())
    assert sft["learning_rate"] == plan.learning_rate and sft["per_device_train_batch_size"] == plan.micro_batch
    assert sft["gradient_accumulation_steps"] == plan.grad_accum and sft["max_length"] == plan.max_length
    assert sft.get("lora_r") == (plan.lora.r if plan.lora else None)
    return {"summary": " ".join(summary_line(plan).plain.split()), "strategy": plan.strategy,
            "num_processes": plan.num_processes, "method": plan.method, "lora_r": sft.get("lora_r"),
            "micro_batch": sft["per_device_train_batch_size"], "grad_accum": sft["gradient_accumulation_steps"],
            "effective_batch": plan.effective_batch, "max_length": sft["max_length"],
            "learning_rate": sft["learning_rate"], "precision": plan.precision,
            "optimizer": sft["optim"] if "asked for" in plan.reasons.get("optimizer", "") else None,
            "packing": bool(sft.get("packing")),
            "context_parallel": plan.context_parallel, "activation_offloading": bool(sft.get("activation_offloading")),
            "liger_kernel": bool(sft.get("use_liger_kernel"))}


@pytest.mark.asyncio
async def test_the_plan_on_screen_is_the_plan_exported_after_every_kind_of_edit(gpus, tmp_path: Path):
    """After each kind of edit (learning rate, rank, micro-batch, a strategy pin, other hardware)
    the plan the screen shows is the one plan.yaml and sft_config.yaml hold; a pin that was refused
    exports nothing."""
    app = make_app("--method", "lora", output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 4)
        edits = [("#learning-rate", "1e-4"), ("#lora-r", "16"), ("#micro-batch", "2"), ("#strategy", "zero2"),
                 ("#strategy", "single"), ("#precision", "pure_bf16"), ("#optimizer", "adafactor"),
                 ("#context-parallel", "2"), ("#context-parallel", "auto"), ("#activation-offloading", "on"),
                 ("#liger", "on"), ("#packing", "on"), ("hardware", "1xT4")]
        exports: list[Path] = []
        for field, value in edits:
            if field == "hardware":  # Back to the hardware step: plan for one T4 instead (no bf16 there)
                for select in ("#precision", "#optimizer", "#packing", "#activation-offloading", "#liger"):
                    app.screen.query_one(select).value = "auto"
                await settle(pilot)
                app.goto(1)
                await settle(pilot)
                await pilot.click("#other")
                app.screen.query_one("#spec").value = value
                await settle(pilot)
                await pilot.press("ctrl+n")
                await go_to(pilot, 4)
                assert "T4" in app.state.hardware.describe()
            else:
                app.screen.query_one(field).value = value
                await settle(pilot)
            screen = app.screen
            if value == "single":  # refused on two GPUs: shown as not applied, nothing exported
                assert "strategy single not applied" in text_of(app, "#memory")
                assert screen.query_one("#strategy").has_class("-refused")
                await pilot.press("ctrl+n")
                await settle(pilot)
                assert app.screen is screen and len(list(tmp_path.iterdir())) == len(exports)
                screen.query_one("#strategy").value = "auto"
                await settle(pilot)
                continue
            shown = shown_plan(app)
            if field == "#learning-rate":
                assert shown["learning_rate"] == 1e-4
            elif field == "#lora-r":
                assert shown["lora_r"] == 16
            elif field == "#micro-batch":
                assert shown["micro_batch"] == 2
            elif field == "#strategy":
                assert shown["strategy"] == "zero2"
            elif field == "#precision":
                assert shown["precision"] == "pure_bf16"
            elif field == "#optimizer":
                assert shown["optimizer"] == "adafactor"
            elif field == "#packing":
                assert shown["packing"]
            elif field == "#context-parallel":
                assert shown["context_parallel"] == (2 if value == "2" else 1)
            elif field == "#activation-offloading":
                assert shown["activation_offloading"]
            elif field == "#liger":
                assert shown["liger_kernel"]
            else:
                assert shown["num_processes"] == 1 and shown["strategy"] == "single"
                assert "per GPU: fits" in text_of(app, "#memory")
            await pilot.press("ctrl+n")  # Export
            await settle(pilot)
            assert app.screen.STEP == 5
            run_dir = app.state.export.run_dir
            assert run_dir not in exports
            exports.append(run_dir)
            assert exported_plan(run_dir) == shown, field
            await pilot.press("escape")
            await settle(pilot)
            assert app.screen.STEP == 4
        assert sorted(tmp_path.iterdir()) == sorted(exports)


@pytest.mark.asyncio
async def test_switching_hardware_leaves_nothing_of_the_old_plan_on_screen(gpus, tmp_path: Path):
    """H100s, then one T4 for a model that does not fit it: the verdict is the T4's alone."""
    app = make_app("--gpus", "8xH100-80GB", "--model", "llama-3.1-8b", "--method", "full", output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 4)
        assert "per GPU: fits" in text_of(app, "#memory") and app.state.plan is not None
        app.goto(1)
        await settle(pilot)
        app.screen.query_one("#spec").value = "1xT4"
        await settle(pilot)
        await pilot.press("ctrl+n")
        await go_to(pilot, 4)
        await settle(pilot)
        verdict = text_of(app, "#memory")
        assert app.state.plan is None
        assert verdict.startswith("No plan:") and "fits" not in verdict.replace("does not fit", "")
        assert "H100" not in text_of(app, "#plan-summary") + verdict and "15.0 GiB is free" in verdict
        assert "No plan yet" in text_of(app, "#plan-summary") and not text_of(app, "#reasons").strip()
        fix = text_of(app, "#plan-problem")
        assert fix.startswith("Fix:") and "--" not in fix and "method QLoRA, on step 3" in fix


class FakeLaunch:
    """The launcher's side of a run for UI tests: running until stopped (no processes)."""

    def __init__(self, run_dir: Path) -> None:
        import time

        self.run_dir, self.process, self.started = run_dir, object(), time.monotonic()
        self.code: int | None = None
        self.stops: list[float] = []

    def poll(self) -> int | None:
        return self.code

    def log_tail(self, lines: int) -> list[str]:
        return []

    def stop(self, grace: float = 30.0) -> int:
        self.stops.append(grace)
        self.code = 130
        return 130


class FakeSession:
    """A run session that trains nothing: it runs until stopped or until the wizard stops following."""

    def __init__(self, plan, run_dir: Path, said) -> None:
        self.plan, self.run_dir, self.launch, self.on_event = plan, run_dir, FakeLaunch(run_dir), said

    def start(self) -> None:
        pass

    def running(self) -> bool:
        return self.launch.code is None

    def stop(self) -> None:
        self.launch.stop()

    def run(self, detached=None) -> None:
        import time

        while self.launch.code is None and not (detached and detached()):
            time.sleep(0.05)


async def calm(pilot) -> None:
    """Let the UI answer while a run is followed (its worker lasts the run, so `settle` would wait)."""
    for _ in range(3):
        pending = [w for w in pilot.app.workers if w.group != "follow"]
        for worker in pending:
            await worker.wait()
        await pilot.pause(0.05)


@pytest.fixture()
def fake_runs(monkeypatch: pytest.MonkeyPatch) -> list[FakeSession]:
    started: list[FakeSession] = []

    def start_session(plan, run_dir):
        said: list = []
        started.append(FakeSession(plan, run_dir, said.append))
        return started[-1], said

    monkeypatch.setattr("llmwizard.wizard.core.start_session", start_session)
    return started


@pytest.mark.asyncio
async def test_one_run_directory_per_launch_and_the_live_run_is_reachable_from_every_step(gpus, fake_runs,
                                                                                          tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 5)
        await launched(pilot)
        run_dir = fake_runs[0].run_dir
        assert list(tmp_path.iterdir()) == [run_dir]
        # Back from the run, and Export again from the plan, while it trains: no new directory.
        await pilot.press("escape")
        await calm(pilot)
        assert app.screen.STEP == 5 and str(app.screen.query_one("#next").label) == "Watch run"
        assert not app.screen.query_one("#next").disabled and "A run is training" in text_of(app, "#export")
        assert app.screen.active_bindings["ctrl+n"].binding.description == "Watch run"  # the footer says so
        await pilot.press("ctrl+n")  # the button goes to the live run: Esc is not a dead end
        await calm(pilot)
        assert app.screen.STEP == 6
        for step in (5, 4, 1):
            app.goto(step)
            await calm(pilot)
            assert app.screen.STEP == step
            binding = app.screen.active_bindings["ctrl+r"]
            assert binding.enabled and binding.binding.description == "Live run"  # shown in the footer
            await pilot.press("ctrl+r")  # from any step
            await calm(pilot)
            assert app.screen.STEP == 6
        app.goto(4)
        await calm(pilot)
        await pilot.press("ctrl+n")
        await calm(pilot)
        assert app.screen.STEP == 5 and list(tmp_path.iterdir()) == [run_dir]
        # A changed plan is exported once, and the user is told.
        await pilot.press("escape")
        await calm(pilot)
        app.screen.query_one("#learning-rate").value = "1e-4"
        await calm(pilot)
        await pilot.press("ctrl+n")
        await calm(pilot)
        assert len(list(tmp_path.iterdir())) == 2
        assert f"The plan changed: wrote a new run directory ({run_dir.name} is kept)" in text_of(app, "#nav-status")
        assert app.screen.query_one("#next").label.plain == "Watch run"  # no second launch while one trains
        # The run ends: the directory it used is not launched again; Launch writes a fresh one.
        fake_runs[0].stop()
        await pilot.press("ctrl+r")
        await calm(pilot)
        app.goto(5)
        await calm(pilot)
        assert str(app.screen.query_one("#next").label) == "Launch"
        app.state.launched_dir = app.state.export.run_dir  # as if the changed plan had been launched
        app.goto(4)
        await calm(pilot)
        await pilot.press("ctrl+n")
        await calm(pilot)
        assert "belongs to the run launched from it" in text_of(app, "#export") and len(list(tmp_path.iterdir())) == 2
        used = app.state.launched_dir
        await launched(pilot)
        assert len(list(tmp_path.iterdir())) == 3 and fake_runs[1].run_dir not in (run_dir, used)


def test_leave_running_prints_how_to_follow_the_run(gpus, fake_runs, tmp_path: Path, capsys, monkeypatch):
    from llmwizard.wizard import app as app_module

    async def drive(app: WizardApp) -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await go_to(pilot, 5)
            await launched(pilot)
            await pilot.press("ctrl+q")
            await pilot.pause()
            assert type(app.screen).__name__ == "QuitModal"
            await pilot.click("#leave")
            await wait_until(pilot, lambda: not app.is_running, seconds=10, interval=0.1)
        self_return.append(app.return_code)

    self_return: list[int | None] = []

    def run(self) -> None:
        import asyncio

        asyncio.run(drive(self))

    monkeypatch.setattr(app_module.WizardApp, "run", run)
    args = build_parser().parse_args(["--output-dir", str(tmp_path)])
    assert app_module.run_app(args) == 0 and self_return == [0]
    run_dir = fake_runs[0].run_dir
    printed = capsys.readouterr().out
    assert f"llmwizard watch {run_dir}" in printed and f"llmwizard status {tmp_path}" in printed
    assert fake_runs[0].launch.stops == []  # left running


def test_closing_the_terminal_stops_the_run_with_a_checkpoint(gpus, tmp_path: Path, monkeypatch):
    """SIGHUP while a run trains: the wizard ends and stops the run as Stop does (the launcher's
    graceful stop: SIGTERM to the group, every rank saves a checkpoint), unless it was left running."""
    import os
    import signal

    from llmwizard.wizard import app as app_module

    launches: list[FakeLaunch] = []

    def run(self) -> None:
        launches.append(FakeLaunch(tmp_path))
        self.state.launch = launches[-1]
        self.state.leave_running = len(launches) == 2
        os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(app_module.WizardApp, "run", run)
    args = build_parser().parse_args(["--output-dir", str(tmp_path)])
    assert app_module.run_app(args) == 129
    assert launches[0].stops == [30.0] and launches[0].poll() == 130
    assert signal.getsignal(signal.SIGHUP) is not None and app_module.run_app(args) == 129
    assert launches[1].stops == []  # the user chose to leave it running


@pytest.mark.asyncio
async def test_library_log_noise_stays_in_train_log(gpus, fake_runs, tmp_path: Path, monkeypatch):
    """DeepSpeed's accelerator notice and tqdm's tokenizing bar are in train.log, not in the status line;
    llmwizard's own lines are."""
    noise = ["[2026-01-01 10:00:00,000] [INFO] [real_accelerator.py:254:get_accelerator] Setting ds_accelerator "
             "to cuda (auto detect)", "Tokenizing train dataset:  40%|████      | 160/400 [00:00<00:00, 9.1 examples/s]"
             "\rTokenizing train dataset: 100%|██████████| 400/400 [00:00<00:00, 9.3 examples/s]"]
    tail = {"lines": noise}
    monkeypatch.setattr(FakeLaunch, "log_tail", lambda self, lines: tail["lines"][-lines:])
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 5)
        await launched(pilot)
        app.screen._tick()
        title = text_of(app, "#run-title")
        assert "starting" in title and "accelerator" not in title and "Tokenizing" not in title
        tail["lines"] = [noise[0], "llmwizard: strategy=ddp world_size=2 backend=nccl", *noise]
        app.screen._tick()
        title = text_of(app, "#run-title")
        assert "llmwizard: strategy=ddp world_size=2" in title and "Tokenizing" not in title


def test_the_stop_summary_gives_the_step_its_checkpoint_holds(tmp_path: Path):
    """Logged every 9 steps, stopped at step 58: the summary says 58, as checkpoint-58 does."""
    from llmwizard.runner.state import RunState
    from llmwizard.runner.after.summary import Outcome, build_summary

    records = [{"type": "begin", "step": 0, "max_steps": 460, "world_size": 1, "time": 0.0}]
    records += [{"type": "log", "step": s, "epoch": s / 23, "loss": 2.0 - s / 100, "time": float(s)}
                for s in range(9, 55, 9)]
    records.append({"type": "stop", "step": 58, "reason": "signal", "checkpoint": "output/checkpoint-58"})
    (tmp_path / "output" / "checkpoint-58").mkdir(parents=True)
    (tmp_path / "output" / "checkpoint-58" / "trainer_state.json").write_text("{}")
    summary = build_summary(tmp_path, RunState.from_records(records), Outcome("stopped", 130))
    rows = dict(summary.rows)
    assert summary.title == "stopped at step 58" and rows["steps"].startswith("58/460")
    assert "checkpoint-58" in rows["checkpoint"] and "(step 58)" in rows["checkpoint"]


def test_the_lora_share_is_of_all_parameters_and_below_100_percent_on_the_tiny_model():
    from llmwizard.wizard import core
    from llmwizard.wizard.screens.model import RANKS, lora_share, model_facts

    model = core.load_model(None)  # the embedded tiny model
    assert model.lora_params(64) > model.total_params  # rank-64 adapters outgrow the tiny model
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(model_facts(model))
    shown = console.export_text()
    for r in RANKS:
        share = lora_share(model, r)
        assert 0 < share < 1 and f"r={r}:" in shown and f"({share:.1%})" in shown
        assert share == model.lora_params(r) / (model.total_params + model.lora_params(r))


@pytest.mark.asyncio
async def test_the_gpus_field_is_off_for_this_machine_and_zero_memory_is_refused(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 1)
        screen = app.screen
        spec, nodes = screen.query_one("#spec"), screen.query_one("#nodes")
        assert spec.disabled and screen.query_one("#spec-label").has_class("-off")
        await pilot.click("#spec")  # says how to turn it on
        await pilot.pause()
        assert "pick Other hardware" in text_of(app, "#nav-status") and app.focused is screen.query_one("#target")
        await pilot.press("tab")
        assert app.focused is nodes
        await pilot.press(*"4xA100")  # meant for the GPUs field: nothing of it lands in nodes
        await pilot.pause()
        assert nodes.value == "1" and "nodes is a whole number" in text_of(app, "#nav-status")
        await pilot.click("#other")
        await pilot.pause()
        assert not spec.disabled and not screen.query_one("#spec-label").has_class("-off")
        spec.value = "4x0GB"
        await settle(pilot)
        assert "is not a size" in text_of(app, "#spec-result")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert type(app.screen).__name__ == "HardwareScreen" and app.state.hardware is None
        assert "is not a size" in text_of(app, "#spec-result")


def test_zero_gpu_memory_exits_2_on_the_command_line(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "llmwizard.wizard.cli", "plan", "--gpus", "4x0GB"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "4x0GB" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.asyncio
async def test_a_pinned_strategy_on_a_70b_plan_is_refused_once_inline_and_other_edits_still_apply(gpus, tmp_path):
    """DDP pinned where only a sharded strategy fits: no dialog (not now, not on later
    keystrokes), the pin is shown as not applied, the fix names the strategy field, and an edit to
    another field is still answered."""
    app = make_app("--gpus", "8xH100-80GB", "--model", "llama-3.1-70b", "--method", "full", output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 4)
        from llmwizard.wizard.core import STRATEGY_WORDS

        assert app.state.plan is not None and app.state.plan.strategy in ("fsdp", "zero3")
        sharded = app.state.plan.strategy
        screen = app.screen
        screen.query_one("#strategy").value = "ddp"
        await settle(pilot)
        assert app.screen is screen and app.state.plan is None
        verdict, fix = text_of(app, "#memory"), text_of(app, "#plan-problem")
        assert verdict.startswith("strategy DDP not applied: it needs") and "fits" not in verdict
        assert fix.startswith(f"Fix: Set strategy to auto (the planner picks {STRATEGY_WORDS[sharded]}") and "--" not in fix
        assert "strategy False" not in fix and "checkpointing False" not in verdict + fix
        assert screen.query_one("#strategy").has_class("-refused")
        screen.query_one("#learning-rate").focus()
        await pilot.press(*"3e-5")
        await settle(pilot)
        assert app.screen is screen and screen.query_one("#learning-rate").value == "3e-5"
        assert app.state.overrides == {"strategy": "ddp", "learning_rate": 3e-5}
        assert text_of(app, "#memory").startswith("strategy DDP not applied")
        screen.query_one("#strategy").value = sharded
        await settle(pilot)
        assert app.state.plan is not None and app.state.plan.strategy == sharded
        assert app.state.plan.learning_rate == 3e-5 and not screen.query_one("#strategy").has_class("-refused")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert exported_plan(app.state.export.run_dir)["strategy"] == sharded


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
async def test_the_memory_legend_never_splits_a_figure_from_its_unit(tmp_path: Path, monkeypatch, size):
    """The legend lays out its entries itself: the terminal's word wrap broke "1.69 GiB" after the figure."""
    rtx = fake_hardware(free_gib=(23.1, 23.6, 23.6, 20.2), total_gib=24, name="NVIDIA GeForce RTX 4090",
                        interconnect="pcie")
    monkeypatch.setattr("llmwizard.autotune.machine.hardware.detect", lambda *args, **kwargs: rtx)
    app = make_app("--model", "llama-3.1-8b", "--method", "full", output=tmp_path)
    async with app.run_test(size=size) as pilot:
        await go_to(pilot, 4)
        app.screen.query_one("#checkpointing").value = "off"
        await settle(pilot)
        bar = app.screen.query_one("#memory")
        lines = ["".join(segment.text for segment in line).rstrip()
                 for line in bar.render_lines(bar.region.reset_offset)]
        legend = [line for line in lines if "■" in line]
        assert len(legend) >= 2 and all(line.strip().startswith("■") for line in legend), lines
        for name in ("params", "grads", "optimizer", "activations", "logits", "overhead"):
            assert any(re.search(rf"{name} [\d.]+ (GiB|MiB)", line) for line in legend), (name, lines)


@pytest.mark.asyncio
async def test_a_precision_the_gpu_lacks_is_refused_inline_and_auto_applies(gpus, tmp_path):
    """bf16 pinned on a T4 (compute capability 7.5): the pin is marked, the fix names the field in
    the step's words, Export stays off; back to auto, the plan stands with fp16."""
    app = make_app("--gpus", "1xT4", output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 4)
        screen = app.screen
        screen.query_one("#precision").value = "bf16"
        await settle(pilot)
        assert app.state.plan is None and screen.query_one("#precision").has_class("-refused")
        assert text_of(app, "#memory").startswith("precision bf16 not applied")
        fix = text_of(app, "#plan-problem")
        assert "Set precision to auto (the planner picks fp16)" in fix and "--" not in fix
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen is screen and not list(tmp_path.iterdir())
        screen.query_one("#precision").value = "auto"
        await settle(pilot)
        assert app.state.plan is not None and app.state.plan.precision == "fp16"
        assert not screen.query_one("#precision").has_class("-refused")


def test_the_summary_line_counts_gpus_per_machine_and_names_offload():
    from llmwizard.wizard.screens.plan import summary_line
    from tests.test_export import _gpu_plan

    p = _gpu_plan("4xRTX4090", nodes=2, strategy="zero3", offload="params", method="full")
    assert (p.num_processes, p.num_machines, p.offload) == (8, 2, "params")
    assert summary_line(p).plain.startswith("ZeRO-3 + params offload on 4 GPUs x 2 nodes · full")
    one = _gpu_plan("1xA100-80GB", nodes=2, strategy="fsdp", method="lora")
    assert summary_line(one).plain.startswith("FSDP2 on 1 GPU x 2 nodes · lora")


# ----------------------------------------------------------------------------- a newcomer's pass


def metrics_event(step: int, max_steps: int = 10):
    """A metrics snapshot with a loss, an eval loss and an eval accuracy, as the session emits it."""
    from llmwizard.runner.session.events import Metrics
    from llmwizard.runner.state import RunState

    state = RunState()
    state.update({"type": "begin", "max_steps": max_steps, "world_size": 1, "time": 0})
    record = {"type": "log", "step": step, "epoch": 0.5, "loss": 1.2345, "learning_rate": 2e-4, "time": 1.0,
              "eval_loss": 1.1111, "eval_mean_token_accuracy": 0.4242}
    state.update(record)
    return Metrics(record, True, state)


@pytest.mark.asyncio
async def test_a_new_launch_starts_from_a_clean_run_screen(gpus, fake_runs, tmp_path: Path):
    from llmwizard.runner.session.events import Stopped
    from llmwizard.runner.after.summary import Outcome, build_summary

    app = make_app(output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 5)
        await launched(pilot)
        first = app.screen
        event = metrics_event(4)
        first.show(event)
        fake_runs[0].stop()
        first.show(Stopped(4, 130, build_summary(fake_runs[0].run_dir, event.state, Outcome("stopped", 130))))
        await calm(pilot)
        assert "1.2345" in text_of(app, "#run-metrics") and "1.1111" in text_of(app, "#run-metrics")
        assert "launch again" in text_of(app, "#nav-status")
        await pilot.press("escape")
        await calm(pilot)
        assert app.screen.STEP == 5
        await launched(pilot)
        await calm(pilot)
        assert len(fake_runs) == 2
        # Nothing of the first run: no loss, eval or accuracy, no summary, no status line, its directory gone.
        for selector in ("#run-metrics", "#nav-status"):
            assert not text_of(app, selector).strip(), selector
        assert not app.screen.query_one("#summary").display
        assert fake_runs[0].run_dir.name not in text_of(app, "#report-link")
        assert "1.2345" not in text_of(app, "#loss") and "step 4/10" not in text_of(app, "#run-title")


class ProbingSession(FakeSession):
    """A session whose plan is probed first: no launch until its probe ends (as RunSession does)."""

    probe = True

    def __init__(self, plan, run_dir: Path, said) -> None:
        super().__init__(plan, run_dir, said)
        self.probed, self.launch = FakeLaunch(run_dir), None
        self.go_on = False

    def run(self, detached=None) -> None:
        import time

        from llmwizard.runner.session.events import Probe, Started

        facts = {"strategy": "ddp", "micro_batch": 4, "grad_accum": 2, "checkpointing": False}
        self.on_event(Probe(1, "keep", "the measured peak is within the estimate", facts, facts,
                            expected=3 * GiB, measured=int(2.5 * GiB), worst_rank=1, ranks=2, memory_kind="cuda",
                            step_s=0.42, final=True))
        while not self.go_on and not (detached and detached()):
            time.sleep(0.05)
        self.launch = self.probed
        self.on_event(Started("accelerate (ddp)", "accelerate", str(self.run_dir / "train.log"), 1))
        super().run(detached)


@pytest.mark.asyncio
async def test_the_probe_is_shown_on_the_run_screen(gpus, tmp_path: Path, monkeypatch):
    started: list[ProbingSession] = []

    def start_session(plan, run_dir):
        said: list = []
        started.append(ProbingSession(plan, run_dir, said.append))
        return started[-1], said

    monkeypatch.setattr("llmwizard.wizard.core.start_session", start_session)
    app = make_app(output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 4)
        assert "Launch first measures it: a few real steps" in text_of(app, "#plan-probe")  # a GPU plan is probed
        await go_to(pilot, 5)
        await launched(pilot)  # the run screen shows while the session probes (no launch yet)
        assert await wait_until(pilot, lambda: "probe 1: keep" in text_of(app, "#probe"), seconds=10, interval=0.1)
        probe = text_of(app, "#probe")
        assert "2.5 GiB" in probe and "3.0 GiB" in probe and "0.42" in probe  # what it measured and expected
        assert "probing" in text_of(app, "#run-title") and "Probe done: keep" in text_of(app, "#nav-status")
        assert app.running()  # quitting now asks first
        started[0].go_on = True
        assert await wait_until(pilot, lambda: app.state.launch is started[0].probed, seconds=10, interval=0.1)
        app.screen._tick()
        assert "probing" not in text_of(app, "#run-title") and not text_of(app, "#nav-status").strip()
        started[0].stop()


@pytest.mark.asyncio
async def test_the_plan_says_it_will_be_probed_and_that_its_figure_is_calibrated(tmp_path: Path, monkeypatch):
    from llmwizard.autotune.machine import calibration

    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path / "cache"))
    app = make_app(output=tmp_path / "runs")
    async with app.run_test(size=(120, 36)) as pilot:  # on the CPU, no probe and no calibration: nothing said
        await go_to(pilot, 4)
        assert app.state.plan is not None and not app.screen.query_one("#plan-probe").display
    store = calibration.Store.load()
    for strategy in ("single", "ddp"):
        store.record(calibration.Key("cpu", "llama", "lora", strategy), 1.25)
    store.save()
    app = make_app("--probe", output=tmp_path / "runs")
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        plan = app.state.plan
        assert plan is not None and plan.probe and plan.estimate.calibration
        shown = text_of(app, "#plan-probe")
        assert "Launch first measures it: a few real steps" in shown
        assert "calibrated from 1 probe" in shown and "x1.25" in shown


@pytest.mark.asyncio
async def test_an_error_is_said_once_in_the_wizards_words_and_no_dialog_reopens(gpus, tmp_path: Path,
                                                                                 write_jsonl):
    good = write_jsonl([{"prompt": f"q{i}", "completion": " a" * (i % 5 + 1)} for i in range(50)], "good.jsonl")
    app = make_app(output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 3)
        field = app.screen.query_one("#dataset")
        field.value = str(good)
        await pilot.press("enter")
        await settle(pilot)
        assert "50 (prompt / completion)" in text_of(app, "#dataset-facts")
        assert "no dataset read yet" not in text_of(app, "#histogram")
        field.value = str(tmp_path / "missing.jsonl")
        for _ in range(3):  # Next again and again: the same inline message, never a dialog
            await pilot.press("ctrl+n")
            await settle(pilot)
            assert app.screen.STEP == 3 and not any(type(s).__name__ == "ErrorModal" for s in app.screen_stack)
        facts = text_of(app, "#dataset-facts")
        assert facts.count("Dataset file not found") == 1 and "--" not in facts and "Dataset field" in facts
        assert "no dataset read yet" in text_of(app, "#histogram")  # the old dataset's histogram is gone
        assert "Dataset" in text_of(app, "#nav-status") and app.focused is field


@pytest.mark.asyncio
async def test_choosing_other_hardware_puts_the_cursor_where_the_help_says(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await go_to(pilot, 1)
        screen = app.screen
        screen.query_one("#target").focus()
        await pilot.press("down", "space")  # choose Other hardware with the keys the help names
        await pilot.pause()
        help_line = text_of(app, ".help")
        assert app.focused is screen.query_one("#spec") and "cursor is in the GPUs field" in help_line
        await pilot.press(*"4xA100")
        await settle(pilot)
        assert screen.query_one("#spec").value == "4xA100" and screen.query_one("#nodes").value == "1"
        await pilot.press("tab")  # Tab goes to nodes, as the help says; letters there go back to the GPUs field
        assert app.focused is screen.query_one("#nodes")
        await pilot.press(*"-80GB")
        await settle(pilot)
        assert screen.query_one("#spec").value == "4xA100-80GB" and app.focused is screen.query_one("#spec")


@pytest.mark.asyncio
async def test_two_bad_fields_are_both_named(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 1)
        await pilot.click("#other")
        screen = app.screen
        screen.query_one("#spec").value = "4xRTX9999"
        screen.query_one("#nodes").value = "0"
        await settle(pilot)
        result = text_of(app, "#spec-result")
        assert "nodes: '0' is not allowed" in result and "GPUs: Unknown GPU model" in result
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert "nodes and GPUs" in text_of(app, "#nav-status") and app.screen.STEP == 1
        screen.query_one("#spec").value = "2xH100-80GB"
        screen.query_one("#nodes").value = "1"
        await settle(pilot)
        await go_to(pilot, 4)
        plan_screen = app.screen
        plan_screen.query_one("#learning-rate").value = "fast"
        plan_screen.query_one("#epochs").value = "-1"
        await settle(pilot)
        verdict = text_of(app, "#memory")
        assert "Learning rate: 'fast'" in verdict and "Epochs: '-1'" in verdict
        for field_id in ("learning-rate", "epochs"):
            assert plan_screen.query_one(f"#{field_id}").has_class("-refused")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert "Learning rate, Epochs: fix or clear them" in text_of(app, "#nav-status")


@pytest.mark.asyncio
async def test_the_vision_tower_has_a_field_for_vision_models(tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 2)
        screen = app.screen
        assert not screen.query_one("#tower-row").display  # a text model: no such field
        screen.query_one("#model").value = "embedded:tiny-vision"
        await pilot.pause(0.4)
        await settle(pilot)
        assert screen.query_one("#tower-row").display
        screen.query_one("#vision-tower").value = True
        await settle(pilot)
        assert app.state.vision_tower is True
        await go_to(pilot, 3)
        app.screen.query_one("#dataset").value = "embedded:shapes"
        await pilot.press("enter")
        await settle(pilot)
        await go_to(pilot, 4)
        assert app.state.plan is not None and app.state.plan.train_vision_tower
        assert app.state.goals().train_vision_tower


def test_the_memory_bar_is_drawn_to_scale():
    from llmwizard.wizard.widgets.memory_bar import bar_cells

    # Five parts of 1% each on a 60-cell bar: 0.6 cells each, 3 cells in all, not 5.
    assert sum(bar_cells([1.0] * 5, 5, 100, 60)) == round(5 / 100 * 60)
    # A part below half a cell gets none; the bar's length is the total's share of the width.
    cells = bar_cells([50, 0.4, 30], 80.4, 100, 60)
    assert cells[1] == 0 and sum(cells) == round(80.4 / 100 * 60) and cells == [30, 0, 18]
    # A total far below the budget: no cell at all, not one cell per part.
    assert bar_cells([0.2, 0.2, 0.2], 0.6, 100, 60) == [0, 0, 0]
    # Over the budget (the scale is the total) the bar fills the width exactly, whatever the parts add up to.
    over = bar_cells([0.6, 0.1, 0.4, 3950, 340, 980], 5140, 5140, 118)
    assert sum(over) == 118 and min(over) == 0 and over[:3] == [0, 0, 0]


@pytest.mark.asyncio
async def test_returning_to_a_step_gives_the_focus_back_to_its_field(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        screen = app.screen
        screen.query_one("#epochs").focus()
        await pilot.pause()
        await pilot.click("#next")  # Export with the mouse: the button takes the focus on the way out
        await settle(pilot)
        assert app.screen.STEP == 5
        await pilot.click("#back")
        await settle(pilot)
        assert app.screen is screen and app.focused is screen.query_one("#epochs")
        await pilot.press(*"3")  # typing goes on where it was
        assert screen.query_one("#epochs").value == "3"
        app.goto(1)
        await settle(pilot)
        app.screen.query_one("#nodes").focus()
        await pilot.click("#next")
        await settle(pilot)
        await pilot.click("#back")
        await settle(pilot)
        assert app.screen.STEP == 1 and app.focused is app.screen.query_one("#nodes")


@pytest.mark.asyncio
async def test_a_model_with_its_own_code_asks_for_consent_on_the_model_step(tmp_path: Path):
    """A config naming its own code is refused on the model step, with the consent box shown;
    ticking it reads the model with its code, and the plan carries the consent."""
    from tests.test_moe import CUSTOM, _model_dir

    directory = _model_dir(tmp_path / "homemoe", CUSTOM, {}, code=True)
    app = make_app("--model", str(directory), output=tmp_path / "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await go_to(pilot, 2)
        await settle(pilot)
        screen = app.screen
        assert "--trust-remote-code" in text_of(app, "#model-facts") or "own code" in text_of(app, "#model-facts")
        assert screen.query_one("#trust-row").display
        screen.query_one("#trust-code").value = True
        await settle(pilot)
        assert app.state.trust_code and "experts" in text_of(app, "#model-facts").lower()
        await go_to(pilot, 4)
        assert app.state.plan is not None and app.state.plan.trust_remote_code


def test_the_tiny_moe_is_in_the_model_list():
    from llmwizard.wizard import core

    assert "embedded:tiny-moe" in [choice.value for choice in core.model_choices("")]


# ----------------------------------------------------------------------------- what to train

def one_line(app: WizardApp, selector: str) -> str:
    return " ".join(text_of(app, selector).split())


@pytest.mark.asyncio
async def test_dpo_chosen_on_step_1_is_read_planned_shown_and_exported_as_shown(gpus, tmp_path: Path):
    """DPO chosen with the keyboard on step 1: the dataset step reads the bundled pairs with each
    part's lengths, the plan is DPO's with beta and the reference (and why) on screen, beta and
    reference edits re-plan, and plan.yaml and the DPO config hold what the screen showed."""
    import yaml

    from llmwizard.autotune.plan import Plan
    from llmwizard.wizard import core
    from llmwizard.wizard.screens.plan import summary_line, task_line

    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("tab")  # from the presets to What to train
        assert app.focused is app.screen.query_one("#task")
        await pilot.press("right", "enter")  # SFT -> DPO
        await settle(pilot)
        assert app.screen.STEP == 0 and "DPO needs prompt/chosen/rejected pairs" in one_line(app, "#task-help")
        await pilot.press("ctrl+n")
        assert app.state.task == "dpo" and app.state.goals().task_name == "dpo"

        await go_to(pilot, 3)
        profile = app.state.dataset.profile
        assert profile.task == "dpo" and profile.source == core.default_dataset("dpo")
        assert app.state.dataset_key == ("", "embedded:tiny-llama-sft", "dpo")  # the task's default model
        facts = one_line(app, "#dataset-facts")
        assert "prompt / chosen / rejected pairs" in facts
        for part in ("prompt", "chosen", "rejected"):
            assert (f"{part} p99 {getattr(profile, f'{part}_tokens_p99')}, "
                    f"max {getattr(profile, f'{part}_tokens_max')}") in facts
        assert app.screen.query_one("#dataset").placeholder == "empty: the bundled arithmetic pairs"

        await go_to(pilot, 4)
        plan = app.state.plan
        assert plan is not None and plan.task == "dpo" and plan.task_settings.beta == 0.1
        shown = one_line(app, "#plan-task")
        assert shown.startswith("DPO · beta 0.1 · reference ") and f"reference {plan.task_settings.reference}" in shown
        reasons = one_line(app, "#reasons")
        assert " ".join(core.in_wizard_words(plan.reasons["task_settings"]).split()) in reasons
        assert "task settings beta 0.1" in reasons and f"reference {plan.task_settings.reference}:" in reasons
        assert "pairs ·" in one_line(app, "#plan-summary")  # the batch counts pairs
        assert plan.estimate.components and "task memory" in reasons  # the reference's memory, in the total
        assert all(name in reasons for name in plan.estimate.components)
        screen = app.screen
        assert screen.query_one("#beta").display and not screen.query_one("#num-generations").display
        assert screen.query_one("#beta").placeholder == "0.1"

        screen.query_one("#beta").value = "0.25"
        await settle(pilot)
        screen.query_one("#reference").value = "precompute"
        await settle(pilot)
        plan = app.state.plan
        assert plan.task_settings.beta == 0.25 and plan.task_settings.reference == "precompute"
        assert "beta 0.25 · reference precompute" in one_line(app, "#plan-task")
        assert "beta 0.25 (asked for)" in one_line(app, "#reasons")
        summary, line = one_line(app, "#plan-summary"), one_line(app, "#plan-task")

        await pilot.press("ctrl+n")  # Export
        await settle(pilot)
        assert app.screen.STEP == 5
        run_dir = app.state.export.run_dir
        exported = Plan.load(run_dir / "plan.yaml")
        assert exported.task == "dpo" and exported.task_settings == plan.task_settings
        assert " ".join(summary_line(exported).plain.split()) == summary
        assert " ".join(task_line(exported).plain.split()) == line
        config = yaml.safe_load((run_dir / "dpo_config.yaml").read_text())
        assert config["beta"] == 0.25 and config["learning_rate"] == exported.learning_rate
        assert config["per_device_train_batch_size"] == exported.micro_batch


@pytest.mark.asyncio
async def test_grpo_from_the_flag_shows_its_group_and_a_generations_edit_is_exported(gpus, tmp_path: Path):
    import yaml

    from llmwizard.autotune.plan import Plan

    app = make_app("--task", "grpo", output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.screen.chosen_task() == "grpo"  # the flag's task is the step's default
        await go_to(pilot, 4)
        plan = app.state.plan
        assert plan.task == "grpo" and plan.task_settings.num_generations == 8
        shown = one_line(app, "#plan-task")
        assert shown.startswith(f"GRPO · 8 completions per prompt, up to {plan.task_settings.max_completion_length} "
                                f"tokens each · temperature {plan.task_settings.temperature:g} · reward exact_answer · "
                                "beta 0 · reference none")
        assert app.screen.query_one("#num-generations").display and app.focused is app.screen.query_one("#beta")
        await pilot.press("tab", "tab")  # beta, reference, then the completions per prompt
        assert app.focused is app.screen.query_one("#num-generations")
        await pilot.press("4")
        await settle(pilot)
        plan = app.state.plan
        assert plan.task_settings.num_generations == 4 and plan.effective_batch % 4 == 0
        assert "4 completions per prompt" in one_line(app, "#plan-task")
        assert f"= {plan.effective_batch} completions ·" in one_line(app, "#plan-summary")
        await pilot.press("ctrl+n")
        await settle(pilot)
        run_dir = app.state.export.run_dir
        exported = Plan.load(run_dir / "plan.yaml")
        assert exported.task_settings == plan.task_settings and exported.effective_batch == plan.effective_batch
        config = yaml.safe_load((run_dir / "grpo_config.yaml").read_text())
        assert config["num_generations"] == 4 and config["beta"] == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("field,value,verdict,fix", [
    ("beta", "0", "beta 0 not applied", "Clear beta (the planner picks 0.1)"),
    ("packing", "on", "packing on not applied: packing (asked for) is not something TRL's DPO trainer can do",
     "Set packing to auto (the planner picks off)"),
], ids=["beta-0", "packing"])
async def test_a_setting_dpo_cannot_take_is_not_applied_and_named(gpus, tmp_path: Path, field, value, verdict, fix):
    """Beta 0, or packing (SFT's), for DPO: the field is marked, the verdict names it, setting it
    back is the fix, and nothing exports (the exporter would refuse packing for DPO)."""
    app = make_app("--task", "dpo", output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        app.screen.query_one(f"#{field}").value = value
        await settle(pilot)
        assert app.state.plan is None
        assert verdict in one_line(app, "#memory") and fix in one_line(app, "#plan-problem")
        assert app.screen.query_one(f"#{field}").has_class("-refused")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == 4 and not list(tmp_path.iterdir())


@pytest.mark.asyncio
@pytest.mark.parametrize("task,rows,columns", [
    ("dpo", None, "['messages']"),
    ("kto", [{"prompt": "2+2=", "completion": "4"}], "['completion', 'prompt']"),
], ids=["sft-data-for-dpo", "kto-without-labels"])
async def test_a_dataset_that_does_not_fit_the_task_is_named_on_the_dataset_step(gpus, tmp_path: Path, write_jsonl,
                                                                                 task, rows, columns):
    app = make_app("--task", task, output=tmp_path / "runs")
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 3)
        field = app.screen.query_one("#dataset")
        field.value = str(write_jsonl(rows * 20)) if rows else "embedded:arithmetic"
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.screen.STEP == 3 and app.state.dataset_key[0] != field.value  # the report is the last good read
        facts = one_line(app, "#dataset-facts")
        assert f"does not fit {task.upper()}" in facts and f"found columns {columns}" in facts
        assert "What to train on step 1" in facts or "leave the Dataset field (step 4) empty" in facts
        assert "--" not in facts  # the wizard's fields and steps, not flags
        assert app.focused is field


@pytest.mark.asyncio
async def test_a_task_preset_sets_the_task_and_another_task_leaves_the_preset(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        screen = app.screen
        ids = [screen.query_one("#presets").get_option_at_index(i).id
               for i in range(screen.query_one("#presets").option_count)]
        await pilot.press(*["down"] * ids.index("dpo"))
        await settle(pilot)
        assert screen.chosen_task() == "dpo"
        await pilot.press("down")  # a preset without a task: the task chosen before (SFT) is back
        await settle(pilot)
        assert ids[ids.index("dpo") + 1] not in screen.preset_tasks and screen.chosen_task() == "sft"
        await pilot.press(*["down"] * (ids.index("grpo") - ids.index("dpo") - 1))
        await settle(pilot)
        assert screen.chosen_task() == "grpo"
        await pilot.press("tab", "left", "left", "enter")  # GRPO -> KTO -> ORPO
        await settle(pilot)
        assert screen.chosen_task() == "orpo"
        assert screen.query_one("#presets").highlighted == 0  # No preset: grpo's settings are GRPO's
        assert "Preset grpo trains GRPO: for ORPO, No preset is chosen." in text_of(app, "#nav-status")
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.state.preset is None and app.state.task == "orpo"
        await go_to(pilot, 4)
        assert app.state.plan.task == "orpo" and app.state.plan.task_settings.reference == "none"
        assert not app.screen.query_one("#reference").display  # ORPO has no reference to choose

    app = make_app("--preset", "dpo", output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        assert app.state.plan.task == "dpo" and "(from preset dpo)" in app.state.plan.reasons["task"]


@pytest.mark.asyncio
async def test_another_task_rereads_the_dataset_replans_and_clears_the_edits(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        plan_screen = app.screen
        assert app.state.plan.task == "sft" and not plan_screen.query_one("#task-fields").display
        assert not plan_screen.query_one("#plan-task").display
        plan_screen.query_one("#learning-rate").value = "1e-3"
        await settle(pilot)
        assert app.state.overrides == {"learning_rate": 1e-3}
        app.goto(0)
        await settle(pilot)
        await pilot.click("#kto")
        await settle(pilot)
        await pilot.press("ctrl+n")
        await go_to(pilot, 4)
        assert app.state.dataset_key[2] == "kto" and app.state.dataset.profile.task == "kto"
        assert app.state.dataset.profile.desirable_rows > 0
        assert app.state.plan.task == "kto" and app.state.overrides == {}
        assert plan_screen.query_one("#learning-rate").value == ""  # the edit made for SFT is gone
        assert plan_screen.query_one("#task-fields").display and one_line(app, "#plan-task").startswith("KTO ·")
        app.goto(3)
        await settle(pilot)
        assert "desirable" in one_line(app, "#dataset-facts")
        app.goto(0)
        await settle(pilot)
        await pilot.click("#sft")
        await pilot.press("ctrl+n")
        await go_to(pilot, 4)
        assert app.state.plan.task == "sft" and app.state.plan.task_settings is None
        assert not plan_screen.query_one("#task-fields").display and not plan_screen.query_one("#plan-task").display


@pytest.mark.asyncio
async def test_what_to_train_keeps_the_focus_when_the_step_comes_back(gpus, tmp_path: Path):
    app = make_app(output=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("tab")
        task = app.screen.query_one("#task")
        assert app.focused is task
        await pilot.press("ctrl+n")
        await settle(pilot)
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.STEP == 0 and app.focused is task
        await pilot.press("shift+tab")
        assert app.focused is app.screen.query_one("#presets")


@pytest.mark.asyncio
@pytest.mark.parametrize("task", ["dpo", "grpo"])
async def test_the_wizard_plans_a_task_as_the_command_line_does(tmp_path: Path, task: str):
    """The same flags give the same plan in both faces: the task's default model (the embedded model
    after SFT), its default dataset, its settings and their reasons."""
    from llmwizard.wizard import cli

    argv = ["--gpus", "2xRTX4090", "--task", task]
    from_cli, *_ = cli._make_plan(cli.build_subparser("plan").parse_args(argv))
    app = make_app(*argv, output=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await go_to(pilot, 4)
        assert app.state.model.name == from_cli.model == "embedded:tiny-llama-sft"
        assert app.state.plan.to_dict() == from_cli.to_dict()
