"""The metrics stream: JSON lines that rank 0 writes and the live views read.

One record per line, each with a `type`:
- `begin`: step (non-zero when resumed), max_steps, num_train_epochs, world_size, logging_steps,
  save_steps, eval_steps, micro_batch, grad_accum, vocab_size, output_dir, memory_kind
  ("cuda": allocator peak, "rss": process peak resident set)
- `log`: step, epoch, and whatever the trainer logged (loss, learning_rate, grad_norm, eval_loss,
  ...), plus tokens_seen, peak_memory (the largest over ranks) and rank_peak_memory (one per
  rank, gathered at each step); time is seconds since `begin`
- `save`: step, checkpoint path
- `stop`: step, reason ("signal", "diverged" or "disk_full"), and for a divergence the finding
  and the last good checkpoint; for a full disk the checkpoint that was skipped, the bytes it
  needed and the bytes free on the rank that was short, and the last complete checkpoint
- `end`: step, reason ("completed", "stopped", "diverged" or "disk_full")
A preference or reward run's `begin` also carries `task` (dpo, orpo, kto, grpo; sft is left
out) and `beta`, and its `log` records the trainer's own names, slashes included; evaluation logs
carry each with an `eval_` prefix. TRL 1.16 logs:
- DPO: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
  logps/rejected (summed over the completion's tokens), logits/chosen, logits/rejected, entropy,
  num_tokens, mean_token_accuracy (of the chosen completions), aux_loss (MoE)
- ORPO: the same rewards/* and logps/* (log-probs averaged per token; rewards = beta x logps),
  logits/chosen, logits/rejected, nll_loss, log_odds_ratio, log_odds_chosen
- KTO: kl, rewards/chosen, rewards/rejected, rewards/margins, logps/chosen, logps/rejected (summed),
  logits/chosen, logits/rejected, entropy, num_tokens; no rewards/accuracies (rows are unpaired)
- GRPO: reward, reward_std, frac_reward_zero_std, rewards/<function>/mean and /std,
  completions/mean_length, /min_length, /max_length, /clipped_ratio, /mean_terminated_length,
  /min_terminated_length, /max_terminated_length, kl (only when beta > 0), entropy,
  clip_ratio/low_mean, /high_mean, /region_mean, /low_min, /high_max, num_tokens, step_time
`task_of` tells the task from these names when the `begin` record does not say.
A resumed run appends to the same file: its `begin` carries the step it resumed from, and log
records after that step from the earlier attempt are superseded (see `loss_series`).
The shapes are the TypedDicts below. Every reader goes through `check_record` (`load_metrics`,
`read_metrics`, `MetricsTail`, and `RunState.update` for records from elsewhere): a line that is
not UTF-8 or not JSON, a record whose known keys have the wrong type, and a number out of its
range (a step of 1e30, a negative time, a peak memory that is text) is skipped and counted, so
every command and view says "N damaged lines skipped in metrics.jsonl" instead of failing. A
metrics.jsonl that cannot be read at all (a directory, a link to nowhere) reads as no records,
with the reason.
Non-finite numbers are written as NaN/Infinity, which Python's json reads back: a NaN or infinite
loss is how a divergence shows, so the trainer's values may be non-finite; counts, steps, times
and sizes may not.
This module is light on purpose: the parent process reads metrics without importing torch.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, TextIO, TypedDict

METRICS_FILE = "metrics.jsonl"

# Ranges of the numbers a record carries: far beyond any real run, so only damage falls outside;
# inside them every view can do arithmetic (an int of 10**30 steps, or a float that overflows a
# sum, would not fail to parse, but would fail or mislead later).
STEP_LIMIT = 10**9               # optimizer steps
COUNT_LIMIT = 10**7              # ranks, micro-batch, accumulation, vocabulary entries
SECONDS_LIMIT = 10.0**9          # about 31 years
EPOCH_LIMIT = 10.0**9
TOKEN_LIMIT = 10**18
BYTE_LIMIT = 2**60               # an exbibyte
# The trainer's own values (loss, grad norm, learning rate, accuracy, ...) are computed in fp32 or
# narrower: a finite one beyond fp32's largest number did not come from a trainer.
VALUE_LIMIT = 3.4028234663852886e38
_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("step", "max_steps", "logging_steps", "save_steps", "eval_steps"), (0, STEP_LIMIT)),
    **dict.fromkeys(("world_size", "micro_batch", "grad_accum", "vocab_size"), (1, COUNT_LIMIT)),
    "rank": (0, COUNT_LIMIT),
    "time": (0, SECONDS_LIMIT),
    **dict.fromkeys(("epoch", "num_train_epochs"), (0, EPOCH_LIMIT)),
    "tokens_seen": (0, TOKEN_LIMIT),
    **dict.fromkeys(("peak_memory", "rank_peak_memory", "needed_bytes", "free_bytes"), (0, BYTE_LIMIT)),
}


# The names preference and reward trainers log under (TRL 1.16), as the views read them.
REWARD_ACCURACY = "rewards/accuracies"   # DPO, ORPO: share of pairs whose chosen reward beats the rejected one
REWARD_MARGIN = "rewards/margins"        # mean of chosen reward minus rejected reward
REWARD_CHOSEN = "rewards/chosen"
REWARD_REJECTED = "rewards/rejected"
LOGPS_CHOSEN = "logps/chosen"
LOGPS_REJECTED = "logps/rejected"
KL = "kl"                                # KTO always; GRPO when beta > 0
REWARD = "reward"                        # GRPO: mean (weighted) reward over the completions
REWARD_STD = "reward_std"                # GRPO: their standard deviation
ZERO_STD = "frac_reward_zero_std"        # GRPO: share of groups whose completions all scored the same
COMPLETION_LENGTH = "completions/mean_length"
COMPLETION_CLIPPED = "completions/clipped_ratio"   # share of completions cut at max_completion_length
TASK_KEYS = (REWARD_ACCURACY, REWARD_MARGIN, REWARD_CHOSEN, REWARD_REJECTED, LOGPS_CHOSEN, LOGPS_REJECTED, KL,
             REWARD, REWARD_STD, ZERO_STD, COMPLETION_LENGTH, COMPLETION_CLIPPED)
EVAL_PREFIX = "eval_"
TASKS = ("sft", "dpo", "orpo", "kto", "grpo")


def task_of(keys: Iterable[str]) -> str:
    """The task whose trainer logs these names (train or eval_ ones): GRPO's reward statistics,
    ORPO's odds ratio, KTO's kl beside the rewards, DPO's rewards alone; else "sft"."""
    names = {key.removeprefix(EVAL_PREFIX) for key in keys}
    if names & {REWARD_STD, ZERO_STD, COMPLETION_LENGTH}:
        return "grpo"
    if names & {"log_odds_ratio", "log_odds_chosen", "nll_loss"}:
        return "orpo"
    if names & {REWARD_CHOSEN, REWARD_REJECTED, REWARD_MARGIN, REWARD_ACCURACY}:
        return "kto" if KL in names else "dpo"
    return "sft"


# Every training and evaluation log of a preference or reward run carries its trainer's names; only
# the last log (the Trainer's run summary) carries none. This many recent logs always show them.
TASK_LOGS = 20


def records_task(records: list[dict[str, Any]]) -> str:
    """The task of a run: the latest `begin` record's, else the one its recent log records' names
    show (read from the end, so a long run costs no more than a short one)."""
    keys: set[str] = set()
    logs = 0
    for record in reversed(records):
        kind = record.get("type")
        if kind == "begin":
            if record.get("task") in TASKS:
                return str(record["task"])
            if logs:  # the attempt's own logs were read; an earlier attempt's begin says no more
                break
        elif kind == "log" and logs < TASK_LOGS:
            keys.update(record)
            logs += 1
    return task_of(keys)


class _Stepped(TypedDict):
    """Every record has a step (the optimizer step it was written at); `type` names the shape."""

    step: int


class BeginRecord(_Stepped, total=False):
    type: Literal["begin"]
    time: float
    max_steps: int
    num_train_epochs: float
    world_size: int
    logging_steps: int
    save_steps: int
    eval_steps: int | None
    micro_batch: int
    grad_accum: int
    learning_rate: float
    vocab_size: int | None
    output_dir: str
    memory_kind: str
    task: str            # dpo, orpo, kto, grpo (left out for sft)
    beta: float          # the task's beta as the trainer had it


class LogRecord(_Stepped, total=False):
    """Also carries whatever numbers the trainer logged, under the trainer's names."""

    type: Literal["log"]
    time: float
    max_steps: int
    epoch: float | None
    loss: float
    eval_loss: float
    learning_rate: float
    grad_norm: float
    tokens_seen: int
    peak_memory: int
    rank_peak_memory: list[int]


class SaveRecord(_Stepped, total=False):
    type: Literal["save"]
    time: float
    checkpoint: str


class StopRecord(_Stepped, total=False):
    type: Literal["stop"]
    time: float
    reason: str
    signal: str
    checkpoint: str
    finding: dict[str, Any]
    good_checkpoint: str | None
    skipped_checkpoint: str
    needed_bytes: int
    free_bytes: int
    rank: int


class EndRecord(_Stepped, total=False):
    type: Literal["end"]
    time: float
    max_steps: int
    reason: str


Record = BeginRecord | LogRecord | SaveRecord | StopRecord | EndRecord


class MetricsWriter:
    """Appends records and flushes each one, so a reader sees it at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def damage_text(path: Path, damaged: int, unreadable: str | None) -> str | None:
    """The sentence every command prints for a damaged metrics file, or None when it is whole."""
    if unreadable is not None:
        return f"{path} cannot be read ({unreadable}); the run's numbers are left out"
    if damaged:
        return f"{damaged} damaged {'line' if damaged == 1 else 'lines'} skipped in {path}"
    return None


def _unreadable(path: Path, exc: OSError) -> str | None:
    """Why the metrics file cannot be read, or None when it simply is not there yet."""
    if isinstance(exc, FileNotFoundError):
        if not path.is_symlink():
            return None
        try:
            return f"a link to {os.readlink(path)}, which does not exist"
        except OSError:
            return "a link to nowhere"
    return exc.strerror or type(exc).__name__


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading when it is a regular file; an OSError saying what it is otherwise.
    Opened without blocking first: reading a named pipe put in its place would wait forever."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise OSError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL,
                      "a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file")
    return os.fdopen(descriptor, "rb")


@dataclass
class MetricsTail:
    """Reads new complete lines from a metrics file each time `poll()` is called."""

    path: Path
    _offset: int = 0
    _partial: bytes = field(default=b"", repr=False)
    notes: list[str] = field(default_factory=list)   # one per skipped line, for the views to show
    damaged: int = 0                                   # lines skipped so far
    unreadable: str | None = None                      # why the file could not be read, at the last poll

    def poll(self) -> list[dict[str, Any]]:
        try:
            with _open_regular(self.path) as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except OSError as exc:
            problem = _unreadable(self.path, exc)
            if problem is not None and problem != self.unreadable:
                self.notes.append(f"{self.path} cannot be read ({problem})")
            self.unreadable = problem
            return []
        self.unreadable = None
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended on a newline
        count = len(self.notes)
        records = [record for record in (_parse(line, self.notes) for line in lines) if record is not None]
        self.damaged += len(self.notes) - count
        return records

    def damage(self) -> str | None:
        """"N damaged lines skipped in PATH" (or why it cannot be read); None when all was well."""
        return damage_text(self.path, self.damaged, self.unreadable)


@dataclass
class MetricsFile:
    """What one read of a metrics file found: its well-formed records, and what was skipped."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)    # one per skipped line: which, and what was wrong
    damaged: int = 0
    unreadable: str | None = None                      # why the file could not be read at all

    def damage(self) -> str | None:
        return damage_text(self.path, self.damaged, self.unreadable)


def load_metrics(path: str | os.PathLike[str]) -> MetricsFile:
    """Every well-formed record of a metrics file, and a count and a note of each damaged line.

    Never raises: a missing file is no records yet; one that cannot be read (a directory, a link
    to nowhere, no permission) is no records with the reason."""
    result = MetricsFile(Path(path))
    try:
        with _open_regular(result.path) as f:
            data = f.read()
    except OSError as exc:
        result.unreadable = _unreadable(result.path, exc)
        return result
    lines = data.split(b"\n")
    unfinished = lines.pop()  # b"" when the file ends on a newline; else a line still being written
    for number, line in enumerate(lines, start=1):
        count = len(result.notes)
        record = _parse(line, result.notes, number)
        if record is not None:
            result.records.append(record)
        result.damaged += len(result.notes) - count
    # The last line without its newline: whole (a file cut after its last record), or a record
    # still being written (the writer's JSON is ASCII and starts with "{"), or damage.
    record = _parse(unfinished)
    if record is not None:
        result.records.append(record)
    elif unfinished.strip() and not (unfinished.isascii() and unfinished.lstrip().startswith(b"{")):
        _parse(unfinished, result.notes, len(lines) + 1)
        result.damaged += 1
    return result


def read_metrics(path: str | os.PathLike[str], notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Every well-formed record in a metrics file; a note per skipped line goes to `notes`."""
    found = load_metrics(path)
    if notes is not None:
        notes += found.notes
        if found.unreadable is not None:
            notes.append(f"{found.path} cannot be read ({found.unreadable})")
    return found.records


def iter_logs(records: list[dict[str, Any]], key: str = "loss") -> Iterator[tuple[int, float]]:
    """(step, value) for each `log` record that carries `key`."""
    for record in records:
        if record.get("type") == "log" and isinstance(record.get(key), (int, float)):
            yield int(record["step"]), float(record[key])


def current_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records without the log lines a resumed attempt superseded.

    When an attempt resumes from a checkpoint, the steps the previous attempt logged after that
    checkpoint were thrown away with its weights; drop them so each step appears once.
    """
    out: list[dict[str, Any]] = []
    for record in records:
        if record.get("type") == "begin":
            start = int(record.get("step") or 0)
            out = [r for r in out if r.get("type") != "log" or int(r.get("step") or 0) <= start]
        out.append(record)
    return out


def loss_series(records: list[dict[str, Any]], key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) over the whole run, across resumed attempts (see `current_records`)."""
    return list(iter_logs(current_records(records), key))


def _parse(line: bytes | str, notes: list[str] | None = None, number: int | None = None) -> dict[str, Any] | None:
    """The record on one line, or None: blank, or damaged (then a note goes to `notes`)."""
    raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        problem: str | None = "not UTF-8 text"
    except (ValueError, RecursionError):  # RecursionError: brackets nested thousands deep
        problem = "not JSON"
    else:
        problem = check_record(record)
    if problem is None:
        return record  # type: ignore[no-any-return]
    if notes is not None:
        where = f"line {number}, " if number is not None else ""
        notes.append(f"skipped a metrics line ({where}{problem}): {text[:80]!r}")
    return None


def _accepts(hint: Any) -> tuple[type, ...]:
    """The runtime types a TypedDict annotation admits (an int is a float, a bool is neither)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _accepts(arg))
    if origin is Literal:
        return (str,)
    if hint is float:
        return (int, float)
    if hint is type(None):
        return (type(None),)
    return (origin or hint,)


# For each record type: its required keys and the types each known key admits, from the TypedDicts.
_SHAPES: dict[str, tuple[frozenset[str], dict[str, tuple[type, ...]]]] = {
    typing.get_args(typing.get_type_hints(shape)["type"])[0]: (
        shape.__required_keys__,
        {key: _accepts(hint) for key, hint in typing.get_type_hints(shape).items() if key != "type"},
    )
    for shape in typing.get_args(Record)
}


def check_record(record: Any) -> str | None:
    """What is wrong with a record, or None: a known `type`, its required keys, the right type for
    each known key, and each number in its range (`_RANGES`; the trainer's other numbers finite
    within fp32's range, or NaN/Inf). A few dict lookups, so cheap enough for every line."""
    if not isinstance(record, dict):
        return "not a mapping"
    kind = record.get("type")
    if not isinstance(kind, str) or kind not in _SHAPES:
        return f"unknown type {kind!r}"
    required, accepted = _SHAPES[kind]
    missing = required - record.keys()
    if missing:
        return f"{kind} record without {', '.join(sorted(missing))}"
    for key, value in record.items():
        allowed = accepted.get(key)
        if allowed is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
            return f"{kind} record with {key} = {_short(value)}"
        if key == "rank_peak_memory":
            if len(value) > COUNT_LIMIT or not all(_in_range(key, item, int) for item in value):
                return f"{kind} record with {key} = {_short(value)}"
        elif (allowed is not None or kind == "log") and not _in_range(key, value, None):
            return f"{kind} record with {key} = {_short(value)} (out of range)"
    return None


def _in_range(key: str, value: Any, kind: type | None) -> bool:
    """A number within its key's range (`_RANGES`, finite), else any non-finite or fp32-sized
    number; a value that is no number passes here (its type was checked, or it is not a number's
    key). `kind` demands that type (list items)."""
    if kind is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value is None or (kind is None and key not in _RANGES)
    bounds = _RANGES.get(key)
    if bounds is not None:
        return (isinstance(value, int) or math.isfinite(value)) and bounds[0] <= value <= bounds[1]
    return (isinstance(value, float) and not math.isfinite(value)) or abs(value) <= VALUE_LIMIT


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
