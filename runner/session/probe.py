"""The probe: a few real steps of the plan before the run, measured on every rank, and corrected.

`run_probe` exports the plan into the run directory and launches it the way the run itself will
be launched (launch.sh: the same launcher, strategy and world size) with `--probe STEPS`: the
training entry (llmwizard.runner.rank.train) runs that many optimizer steps on the longest rows at the
full micro-batch, every row padded to max_length, saves nothing, and each rank writes its
measurements (llmwizard.runner.rank.callbacks.ProbeCallback). The verdict
(llmwizard.autotune.plan.probe.correct) keeps the plan, grows its micro-batch, or shrinks it / turns
checkpointing on / offloads after an out-of-memory or a peak too close to the budget; a changed
plan is exported and probed again, MAX_ROUNDS rounds at most.

Every round is a line of `probe.jsonl` in the run directory (estimate before, each rank's
measurements, verdict, plan after) and a `Probe` event. The last round's measured step time is the
run's first ETA; its memory and speed ratios go into the calibration store
(llmwizard.autotune.machine.calibration) for later estimates on this machine.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmwizard.autotune.plan import probe as verdicts
from llmwizard.autotune.plan import Plan
from llmwizard.runner.session import events
from llmwizard.runner import recovery
from llmwizard.runner.session.launch import Launch

PROBE_FILE = "probe.jsonl"
PROBE_DIR = ".llmwizard/probe"


@dataclass
class ProbeResult:
    plan: Plan                                  # the plan to run
    rounds: list[events.Probe] = field(default_factory=list)
    step_s: float | None = None                 # the last kept measurement's seconds per step
    stopped: bool = False


def probe_args(steps: int, probe_dir: Path) -> list[str]:
    """What launch.sh passes on to the training entry for a probe."""
    return ["--probe", str(steps), "--probe-dir", str(probe_dir),
            "--metrics-file", str(probe_dir / "metrics.jsonl")]


def run_probe(plan: Plan, run_dir: Path, on_event: events.EventSink, *, model: Any = None,
              may_grow: bool = True, steps: int = verdicts.PROBE_STEPS, rounds: int = verdicts.MAX_ROUNDS,
              stopping: Callable[[], bool] = lambda: False, calibrate: bool = True,
              gpu_name: str | None = None) -> ProbeResult:
    """Probe `plan` in `run_dir` (already exported from it); the plan to run, exported."""

    result = ProbeResult(plan)
    earlier: list[verdicts.Action] = []
    current = previous = plan
    for number in range(1, rounds + 1):
        if stopping():
            result.stopped = True
            break
        if number > 1 and not _exported(current, run_dir, on_event, number, previous):
            current = previous
            break
        # Absolute: launch.sh changes into the run directory, the ranks write there, we read here.
        probe_dir = (run_dir / PROBE_DIR / f"round-{number}").resolve()
        shutil.rmtree(probe_dir, ignore_errors=True)
        probe_dir.mkdir(parents=True)
        kills = recovery.oom_kill_count()
        code, log_text = _launch(run_dir, steps, probe_dir, current, stopping)
        now = recovery.oom_kill_count()
        oom_kills = None if kills is None or now is None else now - kills
        if code is None:
            result.stopped = True
            event = _event(number, "stopped", "stopped during the probe", current, current, [], final=True)
            _record(run_dir, event, [])
            on_event(event)
            result.rounds.append(event)
            break
        measurements = read_measurements(probe_dir)
        shutil.rmtree(probe_dir / "output", ignore_errors=True)
        failure = recovery.diagnose_failure(log_text, code, oom_kills) if code else None
        if failure is not None and failure.kind in ("cuda_oom", "host_oom"):
            rank = failure.rank if failure.rank is not None else 0
            measurements = [m for m in measurements if m.rank != rank] + [
                verdicts.RankMeasurement(rank, 0, oom=True, kind="cuda" if failure.kind == "cuda_oom" else "rss")]
        elif code:
            why = failure.message if failure else f"the probe exited with code {code}"
            fallback = previous if earlier and earlier[-1] == "grow" else current
            event = _event(number, "failed", f"{why}; the run starts with the last plan that was not refused "
                           "and will say more if it fails too", current, fallback, measurements, final=True)
            _record(run_dir, event, measurements)
            on_event(event)
            result.rounds.append(event)
            if fallback is not current and _exported(fallback, run_dir, on_event, number + 1, current):
                current = fallback
            break
        last_allowed = number == rounds
        verdict = verdicts.correct(current, measurements, model, may_grow=may_grow and not last_allowed,
                                   earlier=tuple(earlier))
        earlier.append(verdict.action)
        final = not verdict.changed or last_allowed
        timing = _timing(measurements)
        event = _event(number, verdict.action, verdict.reason, current, verdict.plan, measurements, final=final,
                       expected=verdict.expected, measured=verdict.measured, worst=verdict.worst_rank,
                       step_s=timing[0], tokens_per_s=timing[1], speed=verdicts.speed_ratio(measurements, current),
                       eta=_eta(current, timing[0]))
        _record(run_dir, event, measurements)
        on_event(event)
        result.rounds.append(event)
        if calibrate and measurements and not any(m.oom for m in measurements):
            _calibrate(current, measurements, model, gpu_name or _gpu_name(probe_dir))
        if timing[0] is not None:
            result.step_s = timing[0]
        if not verdict.changed:
            break
        previous, current = current, verdict.plan
        if final:
            # The last round changed the plan without measuring it again: a shrink (or more) is
            # safer than what was measured, so it is kept.
            if not _exported(current, run_dir, on_event, number + 1, previous):
                current = previous
            break
    result.plan = current
    return result


def _exported(plan: Plan, run_dir: Path, on_event: events.EventSink, number: int, previous: Plan) -> bool:
    """Export the corrected plan; False (and an event saying why) when a hand-edited run file
    refuses it, so the plan on disk runs."""
    from llmwizard.autotune.errors import UserError
    from llmwizard.runner.export import export

    try:
        export(plan, run_dir)
        return True
    except UserError as exc:
        event = _event(number, "failed", f"the corrected plan was not applied: {exc.message}", previous, previous,
                       [], final=True)
        _record(run_dir, event, [])
        on_event(event)
        return False


def _gpu_name(probe_dir: Path) -> str | None:
    """The GPU model rank 0 ran on, as torch names it (None on the CPU)."""
    try:
        first = (probe_dir / "rank-0.jsonl").read_text(encoding="utf-8").splitlines()[0]
        name = json.loads(first).get("gpu")
    except (OSError, IndexError, ValueError, AttributeError):
        return None
    return str(name) if name else None


def _launch(run_dir: Path, steps: int, probe_dir: Path, plan: Plan,
            stopping: Callable[[], bool]) -> tuple[int | None, str]:
    """Run one probe to its end: (exit code, its part of train.log); (None, "") when stopped."""
    launch = Launch(run_dir, args=probe_args(steps, probe_dir), single_machine=plan.num_machines == 1)
    offset = launch.log_path.stat().st_size if launch.log_path.exists() else 0
    launch.start()
    try:
        while launch.poll() is None:
            if stopping():
                launch.stop(10.0)
                return None, ""
            time.sleep(0.2)
    except KeyboardInterrupt:
        launch.kill()
        raise
    code = launch.wait()
    return code, recovery.attempt_log(launch.log_path, offset)


def read_measurements(probe_dir: Path) -> list[verdicts.RankMeasurement]:
    """One measurement per rank that wrote a file: its peaks over the probe's steps (the largest),
    and its step time and tokens per second over the steps after the first (the warm-up)."""
    found = []
    for path in sorted(probe_dir.glob("rank-*.jsonl")):
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        if not rows:
            continue
        timed = rows[1:] or rows
        step_s = sorted(float(r.get("step_s", 0.0)) for r in timed)[len(timed) // 2]
        rates = sorted(float(r.get("tokens_per_s", 0.0)) for r in timed)
        found.append(verdicts.RankMeasurement(
            rank=int(rows[0].get("rank", 0)), process_bytes=max(int(r.get("process_bytes", 0)) for r in rows),
            peak_allocated=max(int(r.get("peak_allocated", 0)) for r in rows),
            peak_reserved=max(int(r.get("peak_reserved", 0)) for r in rows), step_s=step_s,
            tokens_per_s=rates[len(rates) // 2], kind=str(rows[0].get("kind", "rss"))))
    return found


def _timing(measurements: list[verdicts.RankMeasurement]) -> tuple[float | None, float | None]:
    """The slowest rank's seconds per step and the world's tokens per second it saw."""
    timed = [m for m in measurements if m.step_s > 0 and not m.oom]
    if not timed:
        return None, None
    slowest = max(timed, key=lambda m: m.step_s)
    return slowest.step_s, slowest.tokens_per_s or None


def total_steps(plan: Plan) -> int | None:
    """The run's optimizer steps: max_steps, else what the schedule decision counted."""
    if plan.max_steps > 0:
        return plan.max_steps
    found = re.search(r"(\d+) steps in all", plan.reasons.get("schedule", ""))
    return int(found.group(1)) if found else None


def _eta(plan: Plan, step_s: float | None) -> float | None:
    steps = total_steps(plan)
    return steps * step_s if steps and step_s else None


def plan_facts(plan: Plan) -> dict[str, Any]:
    return {"strategy": plan.strategy, "offload": plan.offload, "micro_batch": plan.micro_batch,
            "grad_accum": plan.grad_accum, "effective_batch": plan.effective_batch,
            "checkpointing": plan.activation_checkpointing, "expected_peak": plan.estimate.total,
            "tensor_peak": plan.estimate.tensor_peak, "budget": plan.estimate.budget}


def _event(number: int, verdict: str, message: str, before: Plan, after: Plan,
           measurements: list[verdicts.RankMeasurement], *, final: bool, expected: int = 0, measured: int = 0,
           worst: int | None = None, step_s: float | None = None, tokens_per_s: float | None = None,
           speed: float | None = None, eta: float | None = None) -> events.Probe:
    kind = next((m.kind for m in measurements if not m.oom), "cuda" if before.device == "cuda" else "rss")
    return events.Probe(number, verdict, message, plan_facts(before), plan_facts(after),
                        expected or before.estimate.total, measured, worst, len(measurements), kind, step_s,
                        tokens_per_s, None if speed is None else round(speed, 4), eta, final)


def _record(run_dir: Path, event: events.Probe, measurements: list[verdicts.RankMeasurement]) -> None:
    """One line of probe.jsonl: the round, the plan before and after, every rank, the verdict."""
    line = {"round": event.round, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "verdict": event.verdict,
            "reason": event.message, "before": event.before, "after": event.after,
            "expected_peak": event.expected, "measured_peak": event.measured, "worst_rank": event.worst_rank,
            "memory_kind": event.memory_kind,
            "ratio_measured_to_expected": round(event.measured / event.expected, 4)
            if event.measured and event.expected else None,
            "step_s": event.step_s, "tokens_per_s": event.tokens_per_s, "speed_ratio": event.speed_ratio,
            "eta_s": event.eta_s,
            "ranks": [{"rank": m.rank, "process_bytes": m.process_bytes, "peak_allocated": m.peak_allocated,
                       "peak_reserved": m.peak_reserved, "step_s": m.step_s, "tokens_per_s": m.tokens_per_s,
                       "oom": m.oom} for m in measurements]}
    with (run_dir / PROBE_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def _calibrate(plan: Plan, measurements: list[verdicts.RankMeasurement], model: Any, gpu_name: str | None) -> None:
    """Store this probe's ratios (llmwizard.autotune.machine.calibration); a store that cannot be written
    costs the calibration, never the run."""
    from llmwizard.autotune.machine.calibration import Key, Store, gpu_key

    memory = verdicts.memory_ratio(measurements, plan)
    speed = verdicts.speed_ratio(measurements, plan)
    family = getattr(model, "model_type", None) or plan.model
    key = Key(gpu_key(plan.device, gpu_name), str(family), plan.method, plan.strategy)
    store = Store.load()
    if store.record(key, memory, speed):
        try:
            store.save()
        except OSError:
            pass
