"""The metrics stream: JSON lines that rank 0 writes and the live views read.

One record per line, each with a `type`:
- `begin`: step (non-zero when resumed), max_steps, num_train_epochs, world_size, logging_steps,
  save_steps, eval_steps, micro_batch, grad_accum, vocab_size, output_dir, memory_kind
  ("cuda": allocator peak, "rss": process peak resident set)
- `log`: step, epoch, and whatever the trainer logged (loss, learning_rate, grad_norm, eval_loss,
  ...), plus tokens_seen, peak_memory (the largest over ranks) and rank_peak_memory (one per
  rank, gathered at each step); time is seconds since `begin`
- `save`: step, checkpoint path
- `stop`: step, reason ("signal" or "diverged"), and for a divergence the finding and the last
  good checkpoint
- `end`: step, reason ("completed", "stopped" or "diverged")
A resumed run appends to the same file: its `begin` carries the step it resumed from, and log
records after that step from the earlier attempt are superseded (see `loss_series`).
Readers skip lines they cannot parse (the writer may be mid-line), so tailing never fails.
Non-finite numbers are written as NaN/Infinity, which Python's json reads back.
This module is light on purpose: the parent process reads metrics without importing torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

METRICS_FILE = "metrics.jsonl"


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
        return [record for record in map(_parse, lines) if record is not None]


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete record in a metrics file."""
    try:
        with open(path, encoding="utf-8") as f:
            return [record for record in map(_parse, f) if record is not None]
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


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
