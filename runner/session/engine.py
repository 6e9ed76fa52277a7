"""RunSession: one training run from launch to summary, headless, speaking only in events.

Both faces run a run through this class: the CLI in its main thread (llmwizard.runner.session.session),
the wizard in a thread worker. The session launches the exported run directory, follows
metrics.jsonl, reports each diagnostic once, and when the launcher exits diagnoses the attempt's
part of train.log. A rank out of GPU memory is recovered: the plan is redone with half the
micro-batch (the effective batch kept by more accumulation), exported again, and the run resumes
from its last complete checkpoint, at most MAX_OOM_RETRIES times; recovery.log and plan.yaml say
what changed. `stop()` may be called from any thread: SIGTERM goes to the run's process group,
every rank saves a checkpoint at the end of its step and `llmwizard resume RUN_DIR` continues it.
Nothing here prints: every view renders the events (llmwizard.runner.session.events).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmwizard.autotune.errors import UserError
from llmwizard.autotune.plan.probe import PROBE_STEPS
from llmwizard.autotune.plan import Plan
from llmwizard.runner.session import events
from llmwizard.runner import recovery
from llmwizard.runner.export import METRICS_FILE, OUTPUT_DIR
from llmwizard.runner.session.launch import Launch
from llmwizard.runner.metrics import MetricsTail, MetricsWriter, read_metrics
from llmwizard.runner.preflight import check_model_weights, check_packages
from llmwizard.runner.state import RunState, final_status
from llmwizard.runner.after.summary import Outcome, build_summary, resume_command

# torch.distributed.elastic gives workers 30 s between SIGTERM and SIGKILL when torchrun shuts
# down; give a stopping run the same time to finish its step and write its checkpoint.
STOP_GRACE_S = 30.0
LOG_TAIL_LINES = 25


class _Detached(Exception):
    """The follower left; the run goes on."""


class RunSession:
    """Launch `run_dir` (exported from `plan`), follow, recover, stop; events to `on_event`."""

    def __init__(self, plan: Plan, run_dir: Path, on_event: events.EventSink, *, resume: bool = False,
                 interval: float = 0.5, grace: float = STOP_GRACE_S, probe: bool | None = None,
                 may_grow: bool = True) -> None:
        self.plan = plan
        # Probe the plan before the first launch (llmwizard.runner.session.probe); never on a resume, which
        # continues a run whose plan already ran, nor across machines, whose other ranks are
        # started on their own machines (slurm.sbatch, launch.sh there).
        self.probe = (plan.probe if probe is None else probe) and not resume and plan.num_machines == 1
        self.may_grow = may_grow
        self.probe_steps = PROBE_STEPS
        self._probe_pending = False
        self.run_dir = run_dir
        self.on_event = on_event
        self.resume = resume
        self.interval = interval
        self.grace = grace
        self.state = RunState()
        self.launch: Launch | None = None
        self.outcome: Outcome | None = None
        self._stop = threading.Event()
        self._kill = threading.Event()
        self._reported: set[str] = set()
        self._tail = MetricsTail(run_dir / METRICS_FILE)
        self._started = False
        self._attempt = 0
        self._oom_kills: int | None = None
        self._offset = 0
        self._outcome = Outcome("failed", 1)
        self._detached: Callable[[], bool] = lambda: False

    # ------------------------------------------------------------------ control, from any thread

    def stop(self) -> None:
        """Ask the run to stop: the ranks save a checkpoint at the end of their step."""
        self._stop.set()

    def kill(self) -> None:
        """Stop at once (SIGKILL): a second stop request."""
        self._stop.set()
        self._kill.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def running(self) -> bool:
        launch = self.launch
        return launch is not None and launch.process is not None and launch.poll() is None

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        """Launch the first attempt (once): set aside a half-written checkpoint on a resume, then
        launch. `run` calls it when nobody did; the wizard calls it first to show the run at once."""
        if self._started:
            return
        self._started = True
        check_packages(self.plan.method, self.plan.optimizer)
        if self.plan.model_source == "embedded":
            from llmwizard.autotune.embedded.vision import ensure_embedded

            ensure_embedded(self.plan.model)  # build once here, not concurrently in every rank
        else:
            check_model_weights(self.plan.model, self.plan.model_source)  # fail now, not inside every rank
        for record in self._tail.poll():  # earlier attempts stay in view without being shown again
            self.state.update(record)
        if self.resume:
            self._outcome.notes += self._prepare_resume()
        if self.probe:
            self._probe_pending = True  # run() probes first, in its own thread, then launches
        elif not self._stop.is_set():
            self._launch_attempt()

    def _run_probe(self) -> None:
        """Probe the plan, take the plan it ends with, then launch the run (unless stopped)."""
        from llmwizard.runner.session.probe import run_probe

        self._probe_pending = False
        result = run_probe(self.plan, self.run_dir, self.on_event, model=model_spec(self.plan),
                           may_grow=self.may_grow, stopping=self._stop.is_set, steps=self.probe_steps)
        if result.plan is not self.plan:
            self._outcome.changes.append(f"probe: {result.rounds[-1].message}")
        self.plan = result.plan
        self.state.probe_step_s = result.step_s
        if not self._stop.is_set():
            self._launch_attempt()

    def _launch_attempt(self) -> None:
        plan = self.plan
        self._attempt += 1
        launch = Launch(self.run_dir, args=["--resume"] if self.resume else [], single_machine=plan.num_machines == 1)
        self._offset = _size(launch.log_path)
        self._oom_kills = recovery.oom_kill_count()
        launch.start()
        self.launch = launch
        self._write_report("running")
        self.on_event(events.Started(
            f"{plan.launcher} ({plan.strategy}, {plan.num_processes} process(es), micro-batch "
            f"{plan.micro_batch} x {plan.grad_accum} accumulation)", plan.launcher, str(launch.log_path),
            self._attempt))

    def run(self, detached: Callable[[], bool] | None = None) -> Outcome | None:
        """Run to the end in the calling thread; the outcome (its summary went out as the last event).
        KeyboardInterrupt (Ctrl-C in the CLI's thread) stops the run like `stop()`. When `detached()`
        turns true (the wizard quit and left the run training), stop following and return None:
        the run keeps going and keeps writing its log and metrics."""
        self._detached = detached or (lambda: False)
        try:
            return self._run()
        except BaseException:
            self._stop_unfollowed()
            raise

    def _stop_unfollowed(self) -> None:
        """The follower itself failed (a view that raised, an error of ours): stop the run with a
        checkpoint, sending no events (a view may be what broke), rather than leave its ranks
        training with nobody attached and the run lock held by a process that is gone."""
        launch = self.launch
        if launch is None or launch.process is None or launch.poll() is not None:
            return
        try:
            if self._kill.is_set():
                launch.kill()
            else:
                launch.stop(self.grace)
        except BaseException:  # a second Ctrl-C, or anything else: no rank may outlive us
            launch.kill()

    def _run(self) -> Outcome | None:
        self.start()
        if self._probe_pending:
            try:
                self._run_probe()
            except KeyboardInterrupt:
                self._stop.set()
        outcome = self._outcome
        retries = 0
        while True:
            launch = self.launch
            if launch is None:  # stopped before the first launch
                outcome = Outcome("stopped", 130, notes=outcome.notes, changes=outcome.changes)
                break
            try:
                code, stopped = self._follow(launch)
            except _Detached:
                return None
            if stopped:
                outcome = Outcome("stopped", code, notes=outcome.notes, changes=outcome.changes)
                break
            log_text = recovery.attempt_log(launch.log_path, self._offset)
            failure = recovery.diagnose_failure(log_text, code, self._oom_kills_since_launch())
            if failure is not None and failure.rank is None and self.plan.num_processes == 1:
                failure = dataclasses.replace(failure, rank=0)
            outcome = Outcome(final_status(self.state, code), code, failure, outcome.changes, notes=outcome.notes)
            if failure is not None and failure.kind == "cuda_oom" and retries < recovery.MAX_OOM_RETRIES \
                    and not self._stop.is_set():
                smaller = self._replan_after_oom(self.plan, failure)
                if smaller is not None:
                    retries += 1
                    self.plan = smaller[0]
                    outcome.changes.append(smaller[1])
                    self.resume = True
                    if self._stop.is_set():  # asked to stop while re-planning: the next attempt is not started
                        outcome = Outcome("stopped", code, notes=outcome.notes, changes=outcome.changes)
                        break
                    self._launch_attempt()
                    continue
            if failure is not None:
                outcome.log_tail = recovery.log_excerpt(log_text, failure, LOG_TAIL_LINES)
            break
        if outcome.status == "stopped":
            self._record_early_stop()
        # A stopped or failed run is judged as it stood (see build_summary): "still falling" is no news.
        self._report_findings(final=outcome.status == "done")
        self.outcome = outcome
        self._write_report({"done": "finished"}.get(outcome.status, outcome.status))
        self.on_event(self._end_event(outcome))
        return outcome

    def _oom_kills_since_launch(self) -> int | None:
        """Processes the kernel's OOM killer ended in this cgroup during the attempt (None: unknown)."""
        now = recovery.oom_kill_count()
        return None if now is None or self._oom_kills is None else now - self._oom_kills

    def _follow(self, launch: Launch) -> tuple[int, bool]:
        """Follow one attempt until its launcher exits: (exit code, stopped by request)."""
        try:
            while True:
                running = launch.poll() is None
                self._drain()
                if not running:
                    break
                if self._stop.is_set():
                    return self._stop_launch(launch), True
                if self._detached():
                    raise _Detached
                time.sleep(self.interval)
        except KeyboardInterrupt:
            self._stop.set()
            return self._stop_launch(launch), True
        code = launch.wait()
        self._drain()
        return code, False

    def _stop_launch(self, launch: Launch) -> int:
        """SIGTERM to the group and wait for the checkpoint; a second request (or Ctrl-C) kills."""
        self.on_event(events.Stopping(force=self._kill.is_set()))
        try:
            if self._kill.is_set():
                code = launch.kill()
            else:
                code = self._stop_waiting(launch)
        except KeyboardInterrupt:
            self.on_event(events.Stopping(force=True))
            code = launch.kill()
        self._drain()
        return code

    def _stop_waiting(self, launch: Launch) -> int:
        """launch.stop in a helper thread, so a kill() from another thread still ends it at once."""
        result: list[int] = []
        helper = threading.Thread(target=lambda: result.append(launch.stop(self.grace)), daemon=True)
        helper.start()
        while helper.is_alive():
            helper.join(0.2)
            self._drain()
            if self._kill.is_set() and helper.is_alive():
                self.on_event(events.Stopping(force=True))
                code = launch.kill()
                helper.join(5)
                return code
        return result[0] if result else launch.wait()

    def _drain(self) -> None:
        """Fold new records into the state; one Metrics event each, then any new finding."""
        for record in self._tail.poll():
            is_loss = self.state.update(record)
            self.on_event(events.Metrics(record, is_loss, self.state.snapshot()))
            if record.get("type") == "log":
                self._report_findings(final=False, now="eval_loss" in record)
                if "eval_loss" in record:
                    self._write_report("running")

    def _write_report(self, state: str) -> None:
        """report.html as the run stands (llmwizard.runner.after.report); a failure to write it is noted
        once and never stops the run."""
        from llmwizard.runner.after.report import write_report
        from llmwizard.runner.rundir import RunStatus

        status = RunStatus(state, self.state.step, self.state.max_steps,
                           "training" if state == "running" else f"ended at step {self.state.step}")
        try:
            write_report(self.run_dir, status)
        except Exception as exc:  # noqa: BLE001 (the report is a view: the run goes on without it)
            note = f"report.html could not be written: {type(exc).__name__}: {exc}"
            if note not in self._outcome.notes:
                self._outcome.notes.append(note)

    def _report_findings(self, final: bool, now: bool = False) -> None:
        for finding in self.state.findings(final=final, now=now):
            if finding.code not in self._reported:
                self._reported.add(finding.code)
                self.on_event(events.Finding(finding, final))

    def _record_early_stop(self) -> None:
        """A run stopped before its ranks began training leaves no end record of its own: write one,
        so `llmwizard runs` and `watch` say stopped rather than failed."""
        path = self.run_dir / METRICS_FILE
        if RunState.from_records(read_metrics(path)).began:
            return
        writer = MetricsWriter(path)
        try:
            writer.write({"type": "end", "step": 0, "reason": "stopped"})
        finally:
            writer.close()

    def _end_event(self, outcome: Outcome) -> events.Event:
        summary = build_summary(self.run_dir, self.state, outcome)
        step = self.state.step
        if outcome.status == "done":
            return events.Finished(step, outcome.exit_code, summary)
        if outcome.status == "stopped":
            output = self.run_dir / OUTPUT_DIR
            last = recovery.last_checkpoint(output) if output.is_dir() else None
            return events.Stopped(step, outcome.exit_code, summary, last.name if last else None,
                                  resume_command(self.run_dir))
        return events.Failed(outcome.status, step, outcome.exit_code, summary, outcome.failure,
                             tuple(outcome.log_tail), resume_command(self.run_dir))

    # ------------------------------------------------------------------ recovery

    def _prepare_resume(self) -> list[str]:
        output = self.run_dir / OUTPUT_DIR
        notes = []
        for path in recovery.set_aside_incomplete(output) if output.is_dir() else []:
            note = f"{path.name}: its save was cut short, set aside so the run resumes from a complete checkpoint"
            notes.append(note)
            self.on_event(events.Recovery("set_aside", note))
        last = recovery.last_checkpoint(output) if output.is_dir() else None
        note = (f"resumed from {last.relative_to(output.parent)}" if last else
                "no checkpoint was saved before: started from the beginning")
        notes.append(note)
        self.on_event(events.Recovery("resume", note, checkpoint=last.name if last else None))
        return notes

    def _replan_after_oom(self, plan: Plan, failure: recovery.Failure) -> tuple[Plan, str] | None:
        """Half the micro-batch, same effective batch; export again and say so. None: nothing left."""
        from llmwizard.autotune.plan.planner import shrink_micro_batch
        from llmwizard.runner.export import export

        who = f"rank {failure.rank}" if failure.rank is not None else "a rank"
        why = f"{who} ran out of GPU memory during step {self.state.step + 1}"
        smaller = shrink_micro_batch(plan, why, model_spec(plan))
        if smaller is None:
            return None
        output = self.run_dir / OUTPUT_DIR
        last = None
        if output.is_dir():
            recovery.set_aside_incomplete(output)
            last = recovery.last_checkpoint(output)
        where = f"resuming from {last.name}" if last else "starting again (no checkpoint yet)"
        change = (f"{why}: micro-batch {plan.micro_batch} -> {smaller.micro_batch}, gradient accumulation "
                  f"{plan.grad_accum} -> {smaller.grad_accum} (effective batch {smaller.effective_batch} unchanged); "
                  f"{where}")
        try:
            export(smaller, self.run_dir)
        except UserError as exc:  # a launch file kept with --keep-edits: the re-plan would overwrite it
            self._outcome.notes.append(f"Out of GPU memory; the automatic re-plan (micro-batch {plan.micro_batch} -> "
                                       f"{smaller.micro_batch}) was not applied: {exc.message}")
            return None
        recovery.record_recovery(self.run_dir, change)
        self.on_event(events.Recovery("oom_replan", change, (plan.micro_batch, smaller.micro_batch),
                                      (plan.grad_accum, smaller.grad_accum), smaller.effective_batch,
                                      last.name if last else None))
        return smaller, change


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def model_spec(plan: Plan) -> Any:
    """The model's spec for re-estimating memory; None when it cannot be had offline."""
    try:
        from llmwizard.autotune.model.model_spec import load_model_spec

        return load_model_spec(plan.model, trust_remote_code=plan.trust_remote_code)
    except Exception:  # noqa: BLE001 (the estimate is a nicety; the re-plan works without it)
        return None
