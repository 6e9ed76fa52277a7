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
A resumed run appends to the same file: its `begin` carries the step it resumed from, and log
records after that step from the earlier attempt are superseded (see `loss_series`).
The shapes are the TypedDicts below. Readers skip lines they cannot parse and records whose known
keys have the wrong type (a hand-edited or damaged file), keeping a note of each, so tailing and
the live view never fail on one bad line.
Non-finite numbers are written as NaN/Infinity, which Python's json reads back.
This module is light on purpose: the parent process reads metrics without importing torch.
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, TypedDict

METRICS_FILE = "metrics.jsonl"


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


@dataclass
class MetricsTail:
    """Reads new complete lines from a metrics file each time `poll()` is called."""

    path: Path
    _offset: int = 0
    _partial: str = field(default="", repr=False)
    notes: list[str] = field(default_factory=list)   # one per skipped line, for the views to show

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return []
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # "" when the chunk ended on a newline
        return [record for record in (_parse(line, self.notes) for line in lines) if record is not None]


def read_metrics(path: str | os.PathLike[str], notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Every well-formed record in a metrics file; a note per skipped line goes to `notes`."""
    try:
        with open(path, encoding="utf-8") as f:
            return [record for record in (_parse(line, notes) for line in f) if record is not None]
    except FileNotFoundError:
        return []


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


def _parse(line: str, notes: list[str] | None = None) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        problem: str | None = "not JSON"
    else:
        problem = check_record(record)
    if problem is None:
        return record  # type: ignore[no-any-return]
    if notes is not None:
        notes.append(f"skipped a metrics line ({problem}): {line[:80]}")
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
    """What is wrong with a record's shape, or None: a known `type`, its required keys, and the
    right type for each known key. A few dict lookups, so cheap enough for every line."""
    if not isinstance(record, dict):
        return "not a mapping"
    kind = record.get("type")
    if kind not in _SHAPES:
        return f"unknown type {kind!r}"
    required, accepted = _SHAPES[kind]
    missing = required - record.keys()
    if missing:
        return f"{kind} record without {', '.join(sorted(missing))}"
    for key, value in record.items():
        allowed = accepted.get(key)
        if allowed is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
            return f"{kind} record with {key} = {value!r}"
    return None
