"""The loss plot of the live view: train and eval loss against the step, in braille dots.

Braille cells hold 2 x 4 dots, four times the vertical resolution of one character per row, so a
16-row plot shows a loss curve's shape rather than a staircase. The same plot draws a GRPO run's
reward (mean, with its spread as a dim band), and `sparkline` puts a whole series in a few block
characters beside its number (a preference run's reward accuracy and margin). Pure text
(rich.Text), no terminal needed: the tests render it to strings.
"""

from __future__ import annotations

import math
from itertools import pairwise

from rich.text import Text

TRAIN_STYLE = "cyan"
EVAL_STYLE = "magenta"
BAND_STYLE = "dim cyan"     # GRPO's reward mean +- its spread, under the mean
SPARK_STYLE = "cyan"

_BLOCKS = "▁▂▃▄▅▆▇█"
_ASCII_BLOCKS = "_.-=+*#@"

_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


class BrailleCanvas:
    """A dot canvas of width x height characters, one colour per character cell."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.bits = [[0] * width for _ in range(height)]
        self.styles: list[list[str | None]] = [[None] * width for _ in range(height)]

    def dot(self, x: int, y: int, style: str) -> None:
        if 0 <= x < 2 * self.width and 0 <= y < 4 * self.height:
            row, col = y // 4, x // 2
            self.bits[row][col] |= _DOTS[y % 4][x % 2]
            self.styles[row][col] = style

    def line(self, x0: int, y0: int, x1: int, y1: int, style: str) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps), style)

    def rows(self) -> list[Text]:
        out = []
        for bits, styles in zip(self.bits, self.styles, strict=True):
            text = Text()
            for value, style in zip(bits, styles, strict=True):
                text.append(chr(0x2800 + value) if value else " ", style=style or "")
            out.append(text)
        return out


def sparkline(values: list[float], width: int = 8, ascii_only: bool = False) -> str:
    """The whole series in `width` characters, one block per share of it (its mean), from the
    lowest to the highest value; a flat series is a row of middle blocks. "" without finite values."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    blocks = _ASCII_BLOCKS if ascii_only else _BLOCKS
    width = min(width, len(finite))
    cells = [finite[len(finite) * i // width:len(finite) * (i + 1) // width] for i in range(width)]
    means = [sum(cell) / len(cell) for cell in cells]
    low, high = min(means), max(means)
    if high - low < 1e-12:
        return blocks[len(blocks) // 2 - 1] * width
    return "".join(blocks[min(len(blocks) - 1, int((m - low) / (high - low) * len(blocks)))] for m in means)


def loss_plot(train: list[tuple[int, float]], evals: list[tuple[int, float]], max_steps: int,
              width: int, height: int, ascii_only: bool = False,
              band: tuple[list[tuple[int, float]], list[tuple[int, float]]] | None = None) -> list[Text]:
    """Train (cyan) and eval (magenta) loss against the step, over the whole run so far, with a
    y axis on the left and the step axis below. Empty when there is nothing finite to plot.
    `band`: a lower and an upper line drawn dim under the train line (GRPO's reward +- its spread)."""
    below, above = band or ([], [])
    finite = [v for _, v in train + evals + below + above if math.isfinite(v)]
    if not finite or width < 10 or height < 2:
        return []
    low, high = min(finite), max(finite)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    decimals = max(0, min(4, 2 - math.floor(math.log10(high - low))))
    labels = [f"{value:.{decimals}f}" for value in (high, (high + low) / 2, low)]
    gutter = max(len(label) for label in labels) + 1
    plot_width = max(8, width - gutter - 1)
    last_step = max([s for s, _ in train + evals + below + above] + [max_steps, 1])
    canvas = BrailleCanvas(plot_width, height)
    px_max, py_max = 2 * plot_width - 1, 4 * height - 1

    def px(step: int) -> int:
        return round(step / last_step * px_max)

    def py(value: float) -> int:
        return round((high - value) / (high - low) * py_max)

    for series, style in ((below, BAND_STYLE), (above, BAND_STYLE), (train, TRAIN_STYLE), (evals, EVAL_STYLE)):
        columns: dict[int, list[float]] = {}
        for step, value in series:
            if math.isfinite(value):
                columns.setdefault(px(step), []).append(value)
        points = [(x, py(sum(v) / len(v))) for x, v in sorted(columns.items())]
        for (x0, y0), (x1, y1) in pairwise(points):
            canvas.line(x0, y0, x1, y1, style)
        for x, y in points[:1] if len(points) == 1 else []:
            canvas.dot(x, y, style)
        if style == EVAL_STYLE:  # thicken eval points so a few evaluations stand out
            for x, y in points:
                canvas.dot(x + 1, y, style)
    rows = canvas.rows()
    if ascii_only:
        rows = [Text("".join("*" if ch != " " else " " for ch in row.plain)) for row in rows]
    # top and bottom win over the middle label where the plot is too short for three
    label_rows = {(height - 1) // 2: labels[1], 0: labels[0], height - 1: labels[2]}
    out = []
    for index, row in enumerate(rows):
        label = label_rows.get(index, "")
        line = Text()
        line.append(label.rjust(gutter - 1) + (" ┤" if label else " │"), style="dim")
        line.append_text(row)
        out.append(line)
    axis = Text(" " * gutter + "└" + "─" * plot_width, style="dim")
    ticks = Text(" " * (gutter + 1) + "0", style="dim")
    end_label = f"step {last_step}"
    middle = f"{last_step // 2}"
    middle_at = gutter + 1 + plot_width // 2 - len(middle) // 2
    ticks.append(" " * max(1, middle_at - len(ticks.plain)) + middle, style="dim")
    ticks.append(" " * max(1, gutter + 1 + plot_width - len(end_label) - len(ticks.plain)) + end_label, style="dim")
    return out + [axis, ticks]
