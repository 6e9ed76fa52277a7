"""The headless live view: loss you can watch while a run trains.

`RunState` folds metrics records (runner.metrics) into what the views show. In a terminal the
view is a rich Live panel (progress, loss, a plot of the whole run); elsewhere (CI, pipes, log
files) it prints one plain line per logged step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runner.launch import Launch
from runner.metrics import MetricsTail

_BLOCKS = " ▁▂▃▄▅▆▇█"


@dataclass
class RunState:
    max_steps: int = 0
    step: int = 0
    epoch: float = 0.0
    world_size: int = 1
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_seen: int = 0
    tokens_per_second: float | None = None
    peak_memory: int = 0
    elapsed: float = 0.0
    checkpoints: list[str] = field(default_factory=list)
    began: bool = False
    ended: bool = False

    def update(self, record: dict[str, Any]) -> bool:
        """Fold one record in; True when it carried a training loss (a new line for plain output)."""
        kind = record.get("type")
        self.elapsed = max(self.elapsed, float(record.get("time", 0.0)))
        if kind == "begin":
            self.began = True
            self.max_steps = int(record.get("max_steps") or 0)
            self.world_size = int(record.get("world_size") or 1)
        elif kind == "log":
            self.step = int(record.get("step", self.step))
            self.max_steps = int(record.get("max_steps") or self.max_steps)
            self.epoch = float(record.get("epoch") or self.epoch)
            self.peak_memory = max(self.peak_memory, int(record.get("peak_memory") or 0))
            if record.get("tokens_seen"):
                tokens = int(record["tokens_seen"])
                if self.elapsed > 0:
                    self.tokens_per_second = tokens / self.elapsed
                self.tokens_seen = tokens
            if "learning_rate" in record:
                self.learning_rate = float(record["learning_rate"])
            if "grad_norm" in record:
                self.grad_norm = float(record["grad_norm"])
            if "eval_loss" in record:
                self.eval_losses.append((self.step, float(record["eval_loss"])))
            if "loss" in record:
                self.losses.append((self.step, float(record["loss"])))
                return True
        elif kind == "save":
            self.checkpoints.append(str(record.get("checkpoint")))
        elif kind == "end":
            self.ended = True
            self.step = int(record.get("step", self.step))
        return False

    @property
    def first_loss(self) -> float | None:
        return self.losses[0][1] if self.losses else None

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None

    def smoothed_loss(self, window: int = 5) -> float | None:
        if not self.losses:
            return None
        tail = [loss for _, loss in self.losses[-window:] if math.isfinite(loss)]
        return sum(tail) / len(tail) if tail else None

    def eta(self) -> float | None:
        if not self.max_steps or self.step <= 0 or self.elapsed <= 0:
            return None
        return self.elapsed / self.step * (self.max_steps - self.step)


def loss_chart(values: list[float], width: int = 60, height: int = 8) -> list[str]:
    """Column chart of a series, resampled to `width` columns, in block characters."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return []
    if len(values) > width:
        buckets = [values[i * len(values) // width:(i + 1) * len(values) // width] for i in range(width)]
        values = [sum(b) / len(b) for b in buckets if b]
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    levels = [round((v - low) / span * (height * 8 - 1)) + 1 if math.isfinite(v) else 0 for v in values]
    rows = []
    for row in range(height - 1, -1, -1):
        line = ""
        for level in levels:
            fill = min(8, max(0, level - row * 8))
            line += _BLOCKS[fill]
        rows.append(line)
    return rows


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB"


def render(state: RunState, title: str) -> RenderableType:
    bar = ProgressBar(total=max(1, state.max_steps), completed=state.step, width=50)
    progress = Table.grid(padding=(0, 2))
    progress.add_row(bar, f"step {state.step}/{state.max_steps or '?'}", f"epoch {state.epoch:.2f}",
                     f"elapsed {_format_seconds(state.elapsed)}", f"eta {_format_seconds(state.eta())}")
    metrics = Table.grid(padding=(0, 3))
    smoothed = state.smoothed_loss()
    metrics.add_row(
        f"loss [bold]{state.last_loss:.4f}[/]" if state.last_loss is not None else "loss -",
        f"smoothed {smoothed:.4f}" if smoothed is not None else "",
        f"eval {state.eval_losses[-1][1]:.4f}" if state.eval_losses else "eval -",
        f"lr {state.learning_rate:.2e}" if state.learning_rate is not None else "lr -",
        f"grad norm {state.grad_norm:.3f}" if state.grad_norm is not None else "",
        f"{state.tokens_per_second:,.0f} tok/s" if state.tokens_per_second else "",
        f"peak {_mib(state.peak_memory)}/rank" if state.peak_memory else "",
    )
    parts: list[RenderableType] = [progress, metrics]
    chart = loss_chart([loss for _, loss in state.losses])
    if chart:
        losses = [loss for _, loss in state.losses if math.isfinite(loss)]
        parts.append(Text(f"loss {max(losses):.3f}", style="dim"))
        parts.append(Text("\n".join(chart), style="cyan"))
        parts.append(Text(f"loss {min(losses):.3f}   (steps 1-{state.step})", style="dim"))
    return Panel(Group(*parts), title=title, border_style="blue")


def plain_line(state: RunState) -> str:
    fields = [f"step {state.step}/{state.max_steps}", f"epoch {state.epoch:.2f}"]
    if state.last_loss is not None:
        fields.append(f"loss {state.last_loss:.4f}")
    if state.eval_losses and state.eval_losses[-1][0] == state.step:
        fields.append(f"eval_loss {state.eval_losses[-1][1]:.4f}")
    if state.learning_rate is not None:
        fields.append(f"lr {state.learning_rate:.2e}")
    if state.grad_norm is not None:
        fields.append(f"grad_norm {state.grad_norm:.3f}")
    fields.append(f"elapsed {_format_seconds(state.elapsed)}")
    return "  ".join(fields)


def watch(launch: Launch, metrics_path: Path, console: Console, title: str,
          interval: float = 0.5) -> tuple[int, RunState]:
    """Follow a running launch until it exits; return (exit code, final state)."""
    state = RunState()
    tail = MetricsTail(metrics_path)

    def drain() -> list[bool]:
        return [state.update(record) for record in tail.poll()]

    if console.is_terminal:
        from rich.live import Live

        with Live(render(state, title), console=console, refresh_per_second=4, transient=False) as live:
            while launch.poll() is None:
                drain()
                live.update(render(state, title))
                time.sleep(interval)
            drain()
            live.update(render(state, title))
    else:
        while True:
            running = launch.poll() is None
            for record in tail.poll():
                if state.update(record):
                    console.print(plain_line(state), highlight=False, soft_wrap=True)
                elif record.get("type") == "log" and "eval_loss" in record:
                    console.print(f"step {state.step}  eval_loss {record['eval_loss']:.4f}",
                                  highlight=False)
            if not running:
                break
            time.sleep(interval)
    return launch.wait(), state
