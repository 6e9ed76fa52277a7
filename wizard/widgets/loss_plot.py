"""The run screen's loss plot: train loss as a line, eval loss as points, in braille dots.

The drawing is llmwizard.runner.after.plot's, the same plot the headless live view shows; this widget only sizes
it to its content area. A GRPO run shows its reward there instead (mean, its spread as a dim band),
as the console does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from llmwizard.runner.after.plot import BAND_STYLE, EVAL_STYLE, TRAIN_STYLE, loss_plot


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
        self.band: tuple[list[tuple[int, float]], list[tuple[int, float]]] | None = None
        self.labels = ("train", "eval")

    def update_series(self, train: Sequence[tuple[int, float]], eval_: Sequence[tuple[int, float]] = (),
                      max_steps: int = 0, *,
                      band: tuple[list[tuple[int, float]], list[tuple[int, float]]] | None = None,
                      labels: tuple[str, str] = ("train", "eval")) -> None:
        """The series to draw; `band` a dim lower and upper line under the train one, `labels` the
        legend's words (GRPO: its reward)."""
        self.train, self.eval, self.max_steps = list(train), list(eval_), max_steps
        self.band, self.labels = band, labels
        self.refresh()

    def render(self) -> RenderResult:
        width, height = self.content_size.width, self.content_size.height
        finite = [v for _, v in self.train + self.eval if math.isfinite(v)]
        if not finite:
            message = "waiting for the first logged loss" + (" (non-finite values only)" if self.train else "")
            return Text(message, style="dim")
        legend = height >= 5
        rows = loss_plot(self.train, self.eval, self.max_steps, width, max(2, height - 2 - legend), band=self.band)
        text = Text(no_wrap=True, overflow="crop")
        text.append(Text("\n").join(rows))
        if legend:
            text.append(f"\n   ━ {self.labels[0]}", style=TRAIN_STYLE)
            if self.band and self.band[0]:
                text.append("   ━ ± spread", style=BAND_STYLE)
            if self.eval:
                text.append(f"   ━ {self.labels[1]}", style=EVAL_STYLE)
        return text
