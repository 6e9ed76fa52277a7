"""Trainer callbacks that run inside each rank (imports transformers and torch).

llmwizard.runner.rank.train installs `default_callbacks(metrics_file)` on every rank:

- `MetricsCallback` writes the metrics stream (llmwizard.runner.metrics) from rank 0; every rank keeps the
  same records, so decisions taken from them agree across ranks.
- `RankSyncCallback` exchanges one small tensor per optimizer step between the ranks: a stop
  flag, each rank's peak memory and, at a step that saves, whether the checkpoint fits on each
  rank's disk. See its docstring for why this is a per-step collective.
- `StopOnSignalCallback` turns SIGTERM/SIGINT into "save a checkpoint and stop at the next step".
- `DivergenceCallback` stops a run whose loss became NaN/Inf or spiked, without saving the
  damaged weights, and names the last good checkpoint (llmwizard.runner.diagnostics).
- A checkpoint that would not fit on the disk is not started: every rank skips it and stops, the
  last complete checkpoint stays intact, and the run ends with a "Disk full" UserError
  (llmwizard.runner.checkpoint_space).
- `SameBestCheckpointCallback` makes every rank name the same best checkpoint after each save, so
  `load_best_model_at_end` loads it on all ranks or on none.

Tests add their own callbacks (an out-of-memory error on demand) to `default_callbacks` from
tests/hooks/site/sitecustomize.py; nothing here knows about them.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmwizard.runner import checkpoint_space
from llmwizard.runner import diagnostics
from llmwizard.runner import recovery
from llmwizard.runner.metrics import MetricsWriter

def peak_memory_bytes() -> tuple[int, str]:
    """Peak memory of this rank and its kind: the CUDA allocator's peak on GPUs, else peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "rss"  # Linux reports KiB


@dataclass
class RankRun:
    """What the callbacks of one rank share."""

    path: str
    records: list[dict[str, Any]] = field(default_factory=list)
    rank_peaks: list[int] = field(default_factory=list)
    memory_kind: str = "rss"
    stop_signal: int = 0             # the signal this rank caught, 0 for none
    stop_reason: str | None = None   # why training stops early: "signal" | "diverged" | "disk_full"
    is_main: bool = True
    _writer: MetricsWriter | None = None
    _start: float = field(default_factory=time.monotonic)

    def emit(self, record: dict[str, Any]) -> None:
        """Keep the record on every rank; write it on rank 0."""
        record.setdefault("time", round(time.monotonic() - self._start, 3))
        self.records.append(record)
        if not self.is_main:
            return
        if self._writer is None:
            self._writer = MetricsWriter(self.path)
        self._writer.write(record)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MetricsCallback(TrainerCallback):
    """Writes the metrics stream (see llmwizard.runner.metrics) from rank 0."""

    def __init__(self, run: RankRun) -> None:
        self.run = run

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer replaces a NaN/Inf step loss with the running mean when this is on (its
        # default), so a diverged run would log finite, even zero, losses. The stream must show
        # the truth: the divergence check depends on it.
        args.logging_nan_inf_filter = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.is_main = bool(state.is_world_process_zero)
        self.run._start = time.monotonic()
        peak, self.run.memory_kind = peak_memory_bytes()
        self.run.rank_peaks = [peak]
        model = kwargs.get("model")
        config = getattr(model, "config", None)
        self.run.emit({
            "type": "begin",
            "step": state.global_step,
            "max_steps": state.max_steps,
            "num_train_epochs": args.num_train_epochs,
            "world_size": args.world_size,
            "logging_steps": state.logging_steps,
            "save_steps": state.save_steps,
            "eval_steps": state.eval_steps if args.eval_strategy != "no" else None,
            "micro_batch": args.per_device_train_batch_size,
            "grad_accum": args.gradient_accumulation_steps,
            "learning_rate": args.learning_rate,
            # The settings a divergence is traced to (llmwizard.runner.diagnostics.suspects), as the
            # ranks really trained with them: plan.yaml's weight_decay, warmup_ratio (TRL's warmup_steps
            # below 1), precision fp16 and lora r / alpha.
            "weight_decay": args.weight_decay,
            "warmup_steps": args.warmup_steps,
            "fp16": bool(args.fp16),
            **lora_settings(model),
            "vocab_size": getattr(config, "vocab_size", None),
            "output_dir": args.output_dir,
            "memory_kind": self.run.memory_kind,
            **task_settings(args),
        })

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        record: dict[str, Any] = {"type": "log", "step": state.global_step,
                                  "max_steps": state.max_steps, "epoch": state.epoch}
        # Every number the trainer logged goes in under the trainer's own name: the preference and
        # reward trainers' names hold slashes (rewards/margins, completions/mean_length), which JSON
        # keeps as they are. Only what is no number is left out: GRPO logs None for a metric whose
        # every value in the interval was NaN (a reward function that scored nothing).
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[key] = value
        if getattr(state, "num_input_tokens_seen", 0):
            record["tokens_seen"] = int(state.num_input_tokens_seen)
        peaks = list(self.run.rank_peaks) or [peak_memory_bytes()[0]]
        record["peak_memory"] = max(peaks)
        record["rank_peak_memory"] = peaks
        self.run.emit(record)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.emit({"type": "save", "step": state.global_step,
                       "checkpoint": f"{args.output_dir}/checkpoint-{state.global_step}"})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.emit({"type": "end", "step": state.global_step, "max_steps": state.max_steps,
                       "reason": self.run.stop_reason and ("stopped" if self.run.stop_reason == "signal"
                                                           else self.run.stop_reason) or "completed"})
        self.run.close()


# TRL's config classes by the task they train; a subclass counts as its base (the MRO is searched).
_CONFIG_TASKS = {"SFTConfig": "sft", "DPOConfig": "dpo", "ORPOConfig": "orpo", "KTOConfig": "kto",
                 "GRPOConfig": "grpo"}


def task_settings(args: Any) -> dict[str, Any]:
    """The task the trainer's config is for and its beta, for the `begin` record (the views and the
    diagnostics word a run by its task); {} for SFT and for configs this does not know."""
    task = next((_CONFIG_TASKS[c.__name__] for c in type(args).__mro__ if c.__name__ in _CONFIG_TASKS), None)
    if task is None or task == "sft":
        return {}
    beta = getattr(args, "beta", None)
    return {"task": task, **({"beta": float(beta)} if isinstance(beta, (int, float)) and not isinstance(beta, bool)
                             else {})}


def lora_settings(model: Any) -> dict[str, Any]:
    """The LoRA adapters' rank and alpha (and rsLoRA) from the PEFT model; {} without adapters."""
    configs = getattr(model, "peft_config", None)
    config = next(iter(configs.values()), None) if isinstance(configs, dict) else None
    if config is None or not hasattr(config, "lora_alpha"):
        return {}
    return {"lora_r": config.r, "lora_alpha": config.lora_alpha,
            "lora_rslora": bool(getattr(config, "use_rslora", False))}


class RankSyncCallback(TrainerCallback):
    """Once per optimizer step, every rank learns every rank's stop flag, peak memory and, when the
    step saves a checkpoint, whether it fits on that rank's disk.

    Why a per-step collective: a stop must happen at the same step on every rank, or the ranks
    that stopped wait forever in the checkpoint's collectives while the others wait in the next
    step's gradient all-reduce. The signal reaches the ranks at slightly different points of a
    step, so each rank's own flag is not enough. One all_gather of four int64 per rank per step is
    tiny next to a step's own all-reduce; the Trainer already synchronises with the device every
    step (it reads the step's loss). The same exchange carries each rank's peak memory, so rank 0
    can report every rank without a file per rank (which would be missing on other nodes), and
    the disk check: a sharded save is a collective, so no rank may skip a save the others enter.
    The disk is read only at a step that saves (one statvfs), never at the others.
    """

    def __init__(self, run: RankRun) -> None:
        self.run = run
        self.space = checkpoint_space.CheckpointSpace()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        peak, _ = peak_memory_bytes()
        # A caught signal asks for a save at this step too (below); the other ranks' signals are
        # only known after the exchange, and reach them within the same step as a rule.
        saving = not self.run.stop_reason and (bool(control.should_save) or bool(self.run.stop_signal))
        room = self._room(args, kwargs) if saving else checkpoint_space.Room(0, 0)
        flag, peaks, rooms = exchange(self.run.stop_signal, peak, room)
        self.run.rank_peaks = peaks
        if self.run.stop_reason:
            return
        short = next(((rank, r) for rank, r in enumerate(rooms) if r.short), None)
        if short is not None and (control.should_save or flag):
            self._stop_for_disk(args, state, control, *short)
        elif flag:
            self.run.stop_signal = self.run.stop_signal or flag
            self.run.stop_reason = "signal"
            control.should_save = True
            control.should_log = True   # log the steps since the last log, so the curve is whole
            control.should_evaluate = False
            control.should_training_stop = True
            self.run.emit({"type": "stop", "step": state.global_step, "reason": "signal",
                           "signal": recovery.signal_name(flag),
                           "checkpoint": f"{args.output_dir}/checkpoint-{state.global_step}"})

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """An epoch-end save (save_strategy "epoch") is checked the same way, with its own exchange
        (every rank saves there, so every rank reaches it); after a disk stop nothing is saved."""
        if self.run.stop_reason == "disk_full":
            control.should_save = False
        elif control.should_save and not self.run.stop_reason:
            _, _, rooms = exchange(0, peak_memory_bytes()[0], self._room(args, kwargs))
            short = next(((rank, r) for rank, r in enumerate(rooms) if r.short), None)
            if short is not None:
                self._stop_for_disk(args, state, control, *short)

    def _room(self, args: Any, kwargs: dict[str, Any]) -> checkpoint_space.Room:
        deepspeed = getattr(args, "deepspeed_plugin", None) is not None
        return self.space.room(args.output_dir, kwargs.get("model"), deepspeed)

    def _stop_for_disk(self, args: Any, state: Any, control: Any, rank: int, room: checkpoint_space.Room) -> None:
        """Skip this save on every rank and stop; rank 0 says why (metrics and a UserError line)."""
        self.run.stop_reason = "disk_full"
        control.should_save = False
        control.should_evaluate = False
        control.should_log = True   # the steps since the last log, so the curve is whole
        control.should_training_stop = True
        message, fix = checkpoint_space.shortfall(state.global_step, args.output_dir, room)
        good = last_complete_checkpoint(args.output_dir)
        self.run.emit({"type": "stop", "step": state.global_step, "reason": "disk_full",
                       "skipped_checkpoint": f"{args.output_dir}/checkpoint-{state.global_step}",
                       "needed_bytes": room.needed, "free_bytes": room.free, "rank": rank,
                       "good_checkpoint": good})
        if self.run.is_main:
            print(checkpoint_space.user_error_line(rank, message, fix), file=sys.stderr, flush=True)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """output_dir/checkpoint-N of the newest save that finished, as the metrics name checkpoints."""
    last = recovery.last_checkpoint(Path(output_dir)) if Path(output_dir).is_dir() else None
    return f"{output_dir}/{last.name}" if last is not None else None


def exchange(flag: int, peak: int, room: checkpoint_space.Room | None = None
             ) -> tuple[int, list[int], list[checkpoint_space.Room]]:
    """(largest stop flag over the ranks, each rank's peak, each rank's room for a checkpoint) via
    one all_gather; local when alone."""
    import torch
    import torch.distributed as dist

    room = room or checkpoint_space.Room(0, 0)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag, [peak], [room]
    backend = str(dist.get_backend())
    device = torch.device("cuda", torch.cuda.current_device()) \
        if "nccl" in backend and torch.cuda.is_available() else torch.device("cpu")
    mine = torch.tensor([flag, peak, room.needed, room.free], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    rows = [t.tolist() for t in gathered]
    return (max(int(r[0]) for r in rows), [int(r[1]) for r in rows],
            [checkpoint_space.Room(int(r[2]), int(r[3])) for r in rows])


class StopOnSignalCallback(TrainerCallback):
    """SIGTERM or SIGINT: save a checkpoint at the end of the current step, then stop cleanly.

    llmwizard.runner.session.launch stops a run by sending SIGTERM to the whole process group (launcher and ranks),
    and torchrun/accelerate forward it to their workers too, so every rank sees it, possibly
    twice. The handler only sets a flag; RankSyncCallback makes every rank act on it at the same
    step. A second SIGINT (Ctrl-C twice in a terminal running launch.sh) gives up at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, run: RankRun) -> None:
        self.run = run
        self._previous: dict[int, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.run.stop_signal and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        if not self.run.stop_signal:
            print(f"llmwizard: {recovery.signal_name(signum)} received; saving a checkpoint at the end of "
                  "this step, then stopping", file=sys.stderr, flush=True)
        self.run.stop_signal = self.run.stop_signal or int(signum)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous.clear()


class DivergenceCallback(TrainerCallback):
    """NaN/Inf or a loss spike: stop now, skip this step's save and eval, name the good checkpoint.
    A first spike-high loss only defers the save; the next log confirms it or not.

    Every rank decides from the same logged values (the Trainer gathers the loss over ranks
    before logging), so every rank stops at the same step without a further exchange.
    """

    def __init__(self, run: RankRun) -> None:
        self.run = run

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if self.run.stop_reason or not logs or not any(k in logs for k in ("loss", "grad_norm", "eval_loss")):
            return
        # Only the latest log can be new: look at a short tail, not the whole run, at every log.
        tail = self.run.records[:1] + self.run.records[-4 * diagnostics.SPIKE_WINDOW:]
        finding = diagnostics.divergence(tail, since_step=state.global_step)
        if finding is None:
            if "loss" in logs and diagnostics.spike_pending(tail):
                control.should_save = False  # these weights may be the damaged ones; see spike_pending
            return
        self.run.stop_reason = "diverged"
        control.should_training_stop = True
        control.should_save = False       # the weights after this step are the damaged ones
        control.should_evaluate = False
        good = diagnostics.last_good_checkpoint(self.run.records, finding.step)
        print(f"llmwizard: {finding.title} at step {finding.step}; stopping. Last good checkpoint: "
              f"{good or 'none'}", file=sys.stderr, flush=True)
        self.run.emit({"type": "stop", "step": state.global_step, "reason": "diverged",
                       "finding": finding.to_dict(), "good_checkpoint": good})


class SameBestCheckpointCallback(TrainerCallback):
    """After each save, every rank takes rank 0's `best_model_checkpoint`.

    The Trainer sets it in `_save_checkpoint` on each rank from `os.path.exists(checkpoint-N)`,
    checked after `save_model`. Under FSDP with sharded checkpoints `save_model` writes nothing:
    the folder appears just after, when each rank saves its shards. A rank that is quicker past
    the barrier creates it while a slower one is still checking, so the ranks can disagree; at the
    end one rank loads the best checkpoint (collectives) while the others save the model (other
    collectives), and the run hangs. `on_save` comes after the whole save on every rank, where
    the folder of a finished save exists for rank 0; one small broadcast per save makes the
    others agree. It runs before the next save's rotation, which protects that checkpoint."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        best = state.best_model_checkpoint
        step = getattr(state, "best_global_step", None)
        if step:
            path = os.path.join(args.output_dir, f"checkpoint-{step}")  # the Trainer's spelling
            best = path if os.path.isdir(path) else best
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shared = [best]
            dist.broadcast_object_list(shared, src=0)
            best = shared[0]
        state.best_model_checkpoint = best


def stop_reason(callbacks: list[TrainerCallback]) -> str | None:
    """Why training ended early ("signal", "diverged" or "disk_full"), None when it ran to the
    end: the training entry skips saving diverged weights, and the final weights and exits
    non-zero after a full disk."""
    for callback in callbacks:
        if isinstance(callback, MetricsCallback):
            return callback.run.stop_reason
    return None


def default_callbacks(metrics_file: str) -> list[TrainerCallback]:
    """Every callback the training entry installs on each rank (order matters: sync before stop)."""
    run = RankRun(metrics_file)
    return [MetricsCallback(run), RankSyncCallback(run), StopOnSignalCallback(run), DivergenceCallback(run),
            SameBestCheckpointCallback()]



def probe_file(probe_dir: str | Path, rank: int) -> Path:
    return Path(probe_dir) / f"rank-{rank}.jsonl"


class ProbeCallback(TrainerCallback):
    """Probe mode (llmwizard.runner.rank.train --probe): after every optimizer step each rank appends
    one line to <probe_dir>/rank-N.jsonl: the step's time and the world's tokens per second, its
    peak allocated and reserved memory (torch.cuda) and the process's memory as NVML sees it on a
    GPU, its peak RSS on the CPU. Each rank writes its own file, so no rank waits for another."""

    def __init__(self, probe_dir: str) -> None:
        self.probe_dir = probe_dir
        self._t0 = 0.0
        self._tokens = 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()
        self._tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import json
        import os

        import torch

        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            torch.cuda.synchronize()
        step_s = time.perf_counter() - self._t0
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self._tokens
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        record: dict[str, Any] = {
            "rank": int(os.environ.get("RANK", "0")), "step": state.global_step, "step_s": round(step_s, 4),
            "tokens": tokens, "tokens_per_s": round(tokens / step_s, 3) if step_s > 0 and tokens > 0 else 0.0,
            "micro_batch": args.per_device_train_batch_size, "grad_accum": args.gradient_accumulation_steps,
            "kind": "cuda" if cuda else "rss",
            "peak_allocated": int(torch.cuda.max_memory_allocated()) if cuda else 0,
            "peak_reserved": int(torch.cuda.max_memory_reserved()) if cuda else 0,
            "process_bytes": _nvml_process_bytes() if cuda else int(rss if sys.platform == "darwin" else rss * 1024),
            "gpu": torch.cuda.get_device_name() if cuda else None,
        }
        path = probe_file(self.probe_dir, record["rank"])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _nvml_process_bytes() -> int:
    """This process's memory on its GPU as NVML (and nvidia-smi) reports it; 0 when unknown."""
    import os

    import torch

    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            index = torch.cuda.current_device()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            ids = [part.strip() for part in visible.split(",") if part.strip()]
            if ids and ids[index].isdigit():
                index = int(ids[index])
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == os.getpid() and process.usedGpuMemory:
                    return int(process.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 (no NVML, a container hiding pids: the allocator's figure stands)
        return 0
    return 0
