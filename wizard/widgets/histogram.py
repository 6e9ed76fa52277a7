"""Token-length histogram: one row per bucket, bar length by count, percentiles marked.

Buckets come from DatasetProfile.histogram (low, high, count); when the widget is shorter than
the bucket list, neighbouring buckets merge so every example is still counted.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget


def merge_buckets(buckets: Sequence[tuple[int, int, int]], rows: int) -> list[tuple[int, int, int]]:
    """At most `rows` buckets, merging neighbours (counts add up, ranges join)."""
    merged = list(buckets)
    while len(merged) > max(1, rows):
        pairs = [merged[i:i + 2] for i in range(0, len(merged), 2)]
        merged = [(pair[0][0], pair[-1][1], sum(count for _, _, count in pair)) for pair in pairs]
    return merged


class TokenHistogram(Widget):
    DEFAULT_CSS = """
    TokenHistogram {
        height: 1fr;
        min-height: 3;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.buckets: list[tuple[int, int, int]] = []
        self.cutoff: int | None = None

    def show(self, buckets: Sequence[tuple[int, int, int]], cutoff: int | None = None) -> None:
        """`cutoff`: the length the dataset rule caps at; longer buckets are drawn as cut."""
        self.buckets, self.cutoff = list(buckets), cutoff
        self.refresh()

    def render(self) -> RenderResult:
        if not self.buckets:
            return Text("no dataset read yet", style="dim")
        width, height = self.content_size.width, self.content_size.height
        rows = merge_buckets(self.buckets, max(1, height - 1))
        labels = [str(low) if low == high else f"{low}-{high}" for low, high, _ in rows]
        label_width = max(len(label) for label in labels)
        count_width = max(len(str(count)) for _, _, count in rows)
        bar_width = max(1, width - label_width - count_width - 4)
        peak = max(count for _, _, count in rows) or 1
        text = Text(no_wrap=True, overflow="crop")
        text.append("tokens".rjust(label_width) + "  examples\n", style="dim")
        for label, (low, _, count) in zip(labels, rows, strict=True):
            cells = round(count / peak * bar_width) if count else 0
            over = self.cutoff is not None and low > self.cutoff
            text.append(label.rjust(label_width) + " │", style="dim")
            text.append("█" * cells, style="red" if over else "green")
            text.append(" " + str(count) + "\n", style="default")
        text.rstrip()
        return text
