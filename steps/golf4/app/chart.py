"""The timeline chart's geometry (pure): one bar per team on a shared time axis, drawn as SVG
by the dashboard's template from these numbers."""

from __future__ import annotations

import math
from typing import Any

# Pixels: the label column, the plot's width, one row per team.
LABEL_WIDTH = 110
PLOT_WIDTH = 760
ROW_HEIGHT = 22
BAR_HEIGHT = 14
AXIS_HEIGHT = 28
# A team that settled without running (blocked: duration 0) still gets a visible mark.
MIN_BAR_WIDTH = 3.0


def _tick_step(total: float) -> float:
    """A round step giving about five to ten ticks over ``total`` seconds."""
    if total <= 0:
        return 1.0
    raw = total / 6
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover (the loop always returns)


def geometry(view: dict[str, Any]) -> dict[str, Any]:
    """Bars, ticks and the drawing's size for ``reports.timeline_view``'s spans."""
    spans = view["spans"]
    origin = view["origin"] or 0.0
    total = max(view["makespan"], 1.0)
    scale = PLOT_WIDTH / total
    bars = []
    for row, span in enumerate(spans):
        x = LABEL_WIDTH + (span["start"] - origin) * scale
        width = max(span["duration"] * scale, MIN_BAR_WIDTH)
        # Keep a late, minimum-width mark inside the plot.
        x = min(x, LABEL_WIDTH + PLOT_WIDTH - width)
        bars.append(
            {
                "team": span["team"],
                "outcome": span["outcome"],
                "x": round(x, 2),
                "y": AXIS_HEIGHT + row * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2,
                "width": round(width, 2),
                "height": BAR_HEIGHT,
                "label_y": AXIS_HEIGHT + row * ROW_HEIGHT + ROW_HEIGHT / 2 + 4,
                "title": f"{span['team']}: {span['outcome']}, {span['duration']:.1f} s "
                f"from {span['start'] - origin:.1f} s",
            }
        )
    step = _tick_step(total)
    ticks = []
    count = int(total // step)
    for index in range(count + 1):
        seconds = index * step
        ticks.append({"x": round(LABEL_WIDTH + seconds * scale, 2), "label": f"{seconds:g} s"})
    return {
        "width": LABEL_WIDTH + PLOT_WIDTH + 20,
        "height": AXIS_HEIGHT + max(len(spans), 1) * ROW_HEIGHT + 6,
        "plot_left": LABEL_WIDTH,
        "plot_right": LABEL_WIDTH + PLOT_WIDTH,
        "axis_y": AXIS_HEIGHT - 6,
        "bars": bars,
        "ticks": ticks,
    }
