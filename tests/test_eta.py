"""The ETA counts steps from the first training log: the minutes before it (loading the model,
the first step's warm-up) are no step's time."""

from __future__ import annotations

import pytest

from llmwizard.runner.state import RunState


def _run(first_log_at: float, step_s: float, steps: int) -> RunState:
    records = [{"type": "begin", "time": 0.0, "step": 0, "max_steps": 100}]
    for step in range(1, steps + 1):
        records.append({"type": "log", "time": first_log_at + (step - 1) * step_s, "step": step, "loss": 2.0,
                        "tokens_seen": step * 64})
    return RunState.from_records(records)


def test_the_first_eta_is_the_steps_left_at_the_measured_step_time():
    state = _run(first_log_at=40.0, step_s=0.5, steps=5)   # 40 s of start-up, then 0.5 s a step
    assert state.eta() == pytest.approx((100 - 5) * 0.5)     # not (100 - 5) * 40.5 / 5


def test_no_eta_from_one_log_without_a_probe():
    state = _run(first_log_at=40.0, step_s=0.5, steps=1)
    assert state.eta() is None
    state.probe_step_s = 0.5
    assert state.eta() == pytest.approx(99 * 0.5)


def test_a_resume_measures_its_own_steps():
    state = _run(first_log_at=10.0, step_s=1.0, steps=3)
    for record in [{"type": "end", "time": 13.0, "step": 3, "reason": "stopped"},
                   {"type": "begin", "time": 0.0, "step": 3, "max_steps": 100},
                   {"type": "log", "time": 20.0, "step": 4, "loss": 2.0, "tokens_seen": 300},
                   {"type": "log", "time": 20.25, "step": 5, "loss": 2.0, "tokens_seen": 364}]:
        state.update(record)
    assert state.eta() == pytest.approx(95 * 0.25)
