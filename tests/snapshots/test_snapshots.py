"""Snapshots of the wizard's key screens at 80x24 and 120x36, cursor blink off, fake GPUs.

Update after an intended change with `pytest tests/snapshots --snapshot-update` and look at
the SVGs (syrupy keeps them in tests/snapshots/__snapshots__/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import Static

from llmwizard.runner.state import RunState
from tests.test_app import fake_hardware, go_to, make_app, settle
from llmwizard.wizard.screens.run import metrics_text
from llmwizard.wizard.widgets.loss_plot import LossPlot


@pytest.fixture(autouse=True)
def fixed_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = fake_hardware(free_gib=(23.1, 23.6, 23.6, 20.2), total_gib=24,
                            name="NVIDIA GeForce RTX 4090", interconnect="pcie")
    monkeypatch.setattr("llmwizard.autotune.machine.hardware.detect", lambda *args, **kwargs: profile)


def at_step(step: int, *actions: str):
    async def run_before(pilot) -> None:
        await go_to(pilot, step)
        if actions:
            await pilot.press(*actions)
        await settle(pilot)

    return run_before


# Run directories carry a timestamp, so the export step is asserted in tests/test_app.py instead.
@pytest.mark.parametrize("size", [(80, 24), (120, 36)], ids=["80x24", "120x36"])
@pytest.mark.parametrize("step", [0, 1, 2, 3, 4], ids=["preset", "hardware", "model", "dataset", "plan"])
def test_step(snap_compare, step: int, size: tuple[int, int], tmp_path: Path):
    assert snap_compare(make_app(output=tmp_path), terminal_size=size, run_before=at_step(step))


def test_plan_that_does_not_fit(snap_compare, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    small = fake_hardware(free_gib=(1.0,), total_gib=16, name="NVIDIA T4-like", interconnect="none")
    monkeypatch.setattr("llmwizard.autotune.machine.hardware.detect", lambda *args, **kwargs: small)

    async def run_before(pilot) -> None:
        await go_to(pilot, 4)
        pilot.app.screen.query_one("#micro-batch").value = "4096"
        await settle(pilot)

    assert snap_compare(make_app("--preset", "large-dataset", output=tmp_path), terminal_size=(120, 36),
                        run_before=run_before)


def test_dataset_error_inline(snap_compare, tmp_path: Path):
    """A dataset that cannot be read: its error once, under the field, in the wizard's words; no dialog."""

    async def run_before(pilot) -> None:
        await go_to(pilot, 3)
        pilot.app.screen.query_one("#dataset").value = "data/missing.jsonl"
        await pilot.press("ctrl+n")
        await settle(pilot)

    assert snap_compare(make_app(output=tmp_path), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("task,step", [("dpo", 3), ("dpo", 4), ("grpo", 4)], ids=["dpo-dataset", "dpo-plan", "grpo-plan"])
def test_task_steps_at_80x24(snap_compare, task: str, step: int, tmp_path: Path):
    """A preference or reward task: the dataset read for it (each part's lengths) and its plan (the
    task's settings under the summary, its own fields above the others)."""
    assert snap_compare(make_app("--task", task, output=tmp_path), terminal_size=(80, 24), run_before=at_step(step))


def test_dataset_that_does_not_fit_the_task(snap_compare, tmp_path: Path):
    """The SFT data for DPO: refused under the field, its columns named, the way out in the wizard's words."""

    async def run_before(pilot) -> None:
        await go_to(pilot, 3)
        pilot.app.screen.query_one("#dataset").value = "embedded:arithmetic"
        await pilot.press("ctrl+n")
        await settle(pilot)

    assert snap_compare(make_app("--task", "dpo", output=tmp_path), terminal_size=(80, 24), run_before=run_before)


class LossView(App[None]):
    """The run screen's live part, fed a fixed metrics stream (training has its own test)."""

    def compose(self) -> ComposeResult:
        yield Static(id="metrics")
        yield LossPlot(id="loss")

    def on_mount(self) -> None:
        state = RunState()
        state.update({"type": "begin", "max_steps": 120, "world_size": 1, "time": 0})
        for step in range(1, 121):
            loss = 2.2 * 0.985**step + 0.35 + 0.08 * ((step * 7919) % 13) / 13
            record = {"type": "log", "step": step, "epoch": step / 40, "loss": loss, "learning_rate": 2e-4,
                      "grad_norm": 0.9, "tokens_seen": step * 2048, "peak_memory": 612 * 2**20, "time": step * 0.5}
            if step % 30 == 0:
                record["eval_loss"] = loss + 0.05
            state.update(record)
        self.query_one("#metrics", Static).update(Text.assemble(metrics_text(state)))
        self.query_one(LossPlot).update_series(state.losses, state.eval_losses, state.max_steps)


@pytest.mark.parametrize("size", [(80, 24), (120, 36)], ids=["80x24", "120x36"])
def test_loss_plot(snap_compare, size: tuple[int, int]):
    assert snap_compare(LossView(), terminal_size=size)


async def _plan_with(pilot, **values: str) -> None:
    await go_to(pilot, 4)
    for field, value in values.items():
        pilot.app.screen.query_one(f"#{field}").value = value
        await settle(pilot)


@pytest.mark.parametrize("state", ["fit", "not-fit", "pinned-refused"])
def test_plan_states_at_80x24(snap_compare, state: str, tmp_path: Path):
    """The plan step's one verdict at 80x24: a plan that fits; a model that fits nowhere here (no plan,
    the smallest change named); a pinned strategy the planner refuses (marked, the fix named). The
    hardware is the fixed fake machine above, so a GPU machine gives the same screens."""
    argv = {"fit": [], "not-fit": ["--model", "llama-3.1-70b", "--method", "full"], "pinned-refused": []}[state]
    values = {"pinned-refused": {"strategy": "single"}}.get(state, {})

    async def run_before(pilot) -> None:
        await _plan_with(pilot, **values)

    assert snap_compare(make_app(*argv, output=tmp_path), terminal_size=(80, 24), run_before=run_before)
