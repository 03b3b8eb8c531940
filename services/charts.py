"""Server-side SVG charts: no JavaScript, no third-party code, works offline."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 16, 40
FALLBACK_COLOUR = "#777777"


@dataclass(frozen=True)
class StackedBars:
    """Values per category (x axis), stacked by series in the given order."""

    title: str
    categories: Sequence[str]
    series: Mapping[str, Sequence[int]]
    colours: Mapping[str, str]

    def totals(self) -> list[int]:
        """Return the stacked height of each category."""
        return [sum(values[index] for values in self.series.values()) for index in range(len(self.categories))]


def nice_ceiling(value: int) -> int:
    """Return a round axis maximum (1, 2 or 5 times a power of ten) at or above `value`."""
    if value <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    return next(step * magnitude for step in (1, 2, 5, 10) if step * magnitude >= value)


def stacked_bar_svg(chart: StackedBars) -> Markup:
    """Render the chart as an accessible inline SVG; every bar segment carries a <title>."""
    axis_max = nice_ceiling(max(chart.totals(), default=0))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">',
             f"<title>{escape(chart.title)}</title>"]
    parts += _axes(axis_max)
    parts += _bars(chart, axis_max)
    parts += _category_labels(chart.categories)
    parts += _legend(chart)
    parts.append("</svg>")
    return Markup("".join(parts))


def _plot_height() -> int:
    return HEIGHT - TOP - BOTTOM


def _slot_width(count: int) -> float:
    return (WIDTH - LEFT - RIGHT) / max(count, 1)


def _y(value: float, axis_max: int) -> float:
    return TOP + _plot_height() * (1 - value / axis_max)


def _axes(axis_max: int) -> list[str]:
    ticks = sorted({0, axis_max // 2, axis_max}) if axis_max > 1 else [0, 1]
    lines = []
    for tick in ticks:
        y = _y(tick, axis_max)
        lines.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#dddddd"/>')
        lines.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{tick}</text>')
    return lines


def _bars(chart: StackedBars, axis_max: int) -> list[str]:
    slot = _slot_width(len(chart.categories))
    rects = []
    for index, category in enumerate(chart.categories):
        stacked = 0
        for name, values in chart.series.items():
            count = values[index]
            if count <= 0:
                continue
            top, bottom = _y(stacked + count, axis_max), _y(stacked, axis_max)
            stacked += count
            colour = chart.colours.get(name, FALLBACK_COLOUR)
            rects.append(f'<rect class="bar" data-series="{escape(name)}" data-count="{count}" '
                         f'x="{LEFT + index * slot + 1:.1f}" y="{top:.1f}" width="{slot - 2:.1f}" '
                         f'height="{bottom - top:.1f}" fill="{escape(colour)}">'
                         f"<title>{escape(category)} {escape(name)}: {count}</title></rect>")
    return rects


def _category_labels(categories: Sequence[str]) -> list[str]:
    slot = _slot_width(len(categories))
    # At most eight labels stay readable at this width; counting back from the last keeps it labelled.
    step = max(1, math.ceil(len(categories) / 8))
    last = len(categories) - 1
    return [f'<text class="category" x="{LEFT + (index + 0.5) * slot:.1f}" y="{HEIGHT - BOTTOM + 16}" '
            f'text-anchor="middle" font-size="11">{escape(category)}</text>'
            for index, category in enumerate(categories) if (last - index) % step == 0]


def _legend(chart: StackedBars) -> list[str]:
    x = WIDTH - RIGHT + 16
    entries = []
    for position, (name, values) in enumerate(chart.series.items()):
        y = TOP + position * 20
        colour = chart.colours.get(name, FALLBACK_COLOUR)
        entries.append(f'<rect class="legend-swatch" x="{x}" y="{y}" width="12" height="12" '
                       f'fill="{escape(colour)}"/>')
        entries.append(f'<text class="legend" x="{x + 18}" y="{y + 11}" font-size="12">'
                       f"{escape(name)} ({sum(values)})</text>")
    return entries
