"""Per-device memory as one bar split by component, against the budget.

The scale is the budget, or the total when the setup is over budget, so an overflow shows as
a bar that runs past the budget mark. Every part is drawn to that scale (`bar_cells`): a part
below half a cell is not drawn (the legend still gives its figure). Colours match the headless
report (llmwizard.wizard.report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

# The same components, colours and sizes as the headless report, so both faces read alike.
from llmwizard.wizard.report import COLORS, COMPONENTS, size_text

if TYPE_CHECKING:
    from llmwizard.autotune.memory import MemoryEstimate


def bar_cells(parts: list[float], total: float, scale: float, width: int) -> list[int]:
    """Cells per part of a bar `width` cells long for `scale` bytes, drawn to scale: the bar is the
    total's share of the width (rounded; the total is the peak, which need not be the parts' sum),
    the parts split it by their shares, and a part below half a cell takes none, so small figures
    never look large. Cells left by rounding go to the parts of at least half a cell whose exact
    share lost most (largest remainder)."""
    length = min(width, round(total / scale * width)) if scale > 0 and total > 0 else 0
    whole = sum(max(0.0, part) for part in parts)
    exact = [max(0.0, part) / whole * length if whole > 0 else 0.0 for part in parts]
    cells = [int(share) if share >= 0.5 else 0 for share in exact]
    visible = sorted((i for i, share in enumerate(exact) if share >= 0.5),
                     key=lambda i: exact[i] - cells[i], reverse=True)
    while visible and sum(cells) < length:
        for i in visible[:length - sum(cells)]:
            cells[i] += 1
    return cells


class MemoryBar(Widget):
    """Bar, budget mark and legend for one MemoryEstimate."""

    DEFAULT_CSS = """
    MemoryBar {
        height: auto;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.estimate: MemoryEstimate | None = None
        self.device = "GPU"
        self.caption = ""
        self.headline: Text | None = None

    def show(self, estimate: MemoryEstimate | None, device: str = "GPU", caption: str = "",
             headline: Text | None = None) -> None:
        """`headline`, when given, is the verdict line in place of the bar's own "fits" line: the
        screen's one verdict (a refused request, a field that is not a value), over the bar of
        `estimate` if there is one."""
        self.estimate, self.device, self.caption, self.headline = estimate, device, caption, headline
        self.refresh(layout=True)

    def render(self) -> RenderResult:
        est = self.estimate
        if est is None:
            return self.headline or Text("no memory estimate without a plan", style="dim")
        width = max(10, self.content_size.width)
        scale = max(est.budget, est.total) or 1
        text = Text()
        if self.headline is not None:
            text.append_text(self.headline)
        else:
            verdict = "fits" if est.total <= est.budget else "does NOT fit"
            text.append(f"{self.caption}{size_text(est.total)} of {size_text(est.budget)} per {self.device}: ",
                        style="bold")
            text.append(verdict, style="bold green" if est.total <= est.budget else "bold red")
        text.append("\n")
        budget_cell = min(width - 1, round(est.budget / scale * width))
        used = 0
        parts = [getattr(est, name) for name in COMPONENTS]
        for name, cells in zip(COMPONENTS, bar_cells(parts, est.total, scale, width), strict=True):
            text.append("█" * cells, style=COLORS[name])
            used += cells
        if used < width:
            text.append("░" * (width - used), style="dim")
        if est.total > est.budget:
            text.append("\n" + " " * budget_cell + "▲ budget", style="bold red")
        # The legend, laid out here entry by entry: a line never breaks inside one ("1.67 GiB" stays
        # whole; the terminal's word wrap would break at any space, no-break ones included).
        text.append("\n")
        column = 0
        for name in COMPONENTS:
            entry = f"{name} {size_text(getattr(est, name))}"
            if column and column + 4 + len(entry) > width:  # "  " then "■ " then the entry
                text.append("\n")
                column = 0
            elif column:
                text.append("  ")
                column += 2
            text.append("■ ", style=COLORS[name])
            text.append(entry, style="default")
            column += 2 + len(entry)
        return text
