"""A line plot of the loss in braille characters: 2x4 dots per cell, y-axis labels, eval points.

textual-plotext is not a dependency; a braille canvas gives four times the vertical resolution
of block characters, enough to see a loss curve flatten at 80 columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

# Braille dot bits by (row 0-3, column 0-1) inside a cell: Unicode "Braille Patterns" block.
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_BRAILLE = 0x2800


def _finite(points: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(step, value) for step, value in points if math.isfinite(value)]


def _resample(points: list[tuple[int, float]], limit: int) -> list[tuple[float, float]]:
    """At most `limit` points, each the mean of a run of neighbours, so a long run stays legible."""
    if len(points) <= limit:
        return [(float(s), v) for s, v in points]
    out = []
    for i in range(limit):
        chunk = points[i * len(points) // limit:(i + 1) * len(points) // limit]
        if chunk:
            out.append((sum(s for s, _ in chunk) / len(chunk), sum(v for _, v in chunk) / len(chunk)))
    return out


def _label(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


class LossPlot(Widget):
    """Training loss as a line, evaluation loss as points, on shared axes."""

    DEFAULT_CSS = """
    LossPlot {
        height: 1fr;
        min-height: 5;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.train: list[tuple[int, float]] = []
        self.eval: list[tuple[int, float]] = []
        self.max_steps = 0

    def update_series(self, train: Sequence[tuple[int, float]], eval_: Sequence[tuple[int, float]] = (),
                      max_steps: int = 0) -> None:
        self.train, self.eval, self.max_steps = list(train), list(eval_), max_steps
        self.refresh()

    def render(self) -> RenderResult:
        width, height = self.content_size.width, self.content_size.height
        train, eval_ = _finite(self.train), _finite(self.eval)
        if not train and not eval_:
            message = "waiting for the first logged loss" + (" (non-finite values only)" if self.train else "")
            return Text(message, style="dim")
        values = [v for _, v in train + eval_]
        low, high = min(values), max(values)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        axis = max(len(_label(high)), len(_label(low))) + 1
        cols, rows = max(4, width - axis - 1), max(2, height - 1)
        first = min(s for s, _ in train + eval_)
        last = max([s for s, _ in train + eval_] + [self.max_steps])
        span = max(1, last - first)
        xdots, ydots = cols * 2, rows * 4
        cells: dict[tuple[int, int], int] = {}
        colour: dict[tuple[int, int], str] = {}

        def to_dot(step: float, value: float) -> tuple[int, int]:
            x = round((step - first) / span * (xdots - 1))
            y = round((high - value) / (high - low) * (ydots - 1))
            return x, y

        def plot(x: int, y: int, style: str) -> None:
            key = (y // 4, x // 2)
            cells[key] = cells.get(key, 0) | _DOTS[y % 4][x % 2]
            if colour.get(key) != "eval":
                colour[key] = style

        previous: tuple[int, int] | None = None
        for step, value in _resample(train, xdots):
            point = to_dot(step, value)
            if previous is None:
                plot(*point, "train")
            else:
                for x, y in _line(previous, point):
                    plot(x, y, "train")
            previous = point
        for step, value in eval_:
            x, y = to_dot(step, value)
            for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                plot(min(xdots - 1, x + dx), min(ydots - 1, y + dy), "eval")

        text = Text(no_wrap=True, overflow="crop")
        labels = {0: _label(high), rows - 1: _label(low), (rows - 1) // 2: _label((high + low) / 2)}
        for row in range(rows):
            text.append(labels.get(row, "").rjust(axis - 1) + " ┤" if row in labels else " " * axis + "│",
                        style="dim")
            for col in range(cols):
                bits = cells.get((row, col))
                if bits is None:
                    text.append(" ")
                else:
                    text.append(chr(_BRAILLE + bits),
                                style="bold yellow" if colour[(row, col)] == "eval" else "cyan")
            text.append("\n")
        left, right = f"step {first}", f"{last}"
        legend = [("  ⣿", "cyan"), (" train", "dim")] + ([("  ⣿", "bold yellow"), (" eval", "dim")] if eval_ else [])
        pad = cols - len(left) - len(right) - sum(len(part) for part, _ in legend)
        if pad < 2:
            legend, pad = [], cols - len(left) - len(right)
        text.append(" " * axis + "└" + left, style="dim")
        for part, style in legend:
            text.append(part, style=style)
        text.append(" " * max(1, pad) + right, style="dim")
        return text


def _line(start: tuple[int, int], end: tuple[int, int]) -> list[tuple[int, int]]:
    """Bresenham's line between two dots, both ends included."""
    (x0, y0), (x1, y1) = start, end
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    points = []
    while True:
        points.append((x0, y0))
        if (x0, y0) == (x1, y1):
            return points
        doubled = 2 * err
        if doubled >= dy:
            err += dy
            x0 += sx
        if doubled <= dx:
            err += dx
            y0 += sy
