"""The per-merchant view: each merchant's test metric against its size (train rows), one series per
mode. "Does federation help small merchants" is read off it: a small merchant alone (local) against
the same merchant in the federation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from server_app.figures import metric_panels

if TYPE_CHECKING:  # outputs.py draws this view, so the import only serves the type hints
    from server_app.outputs import RunResult


def merchant_points(result: "RunResult", task: str, metric: str) -> list[tuple[int, float, str]]:
    """(train rows, metric, merchant) of every merchant with both, smallest first."""
    points = []
    for merchant, rows in result.merchant_rows.items():
        value = result.per_merchant.get(merchant, {}).get(task, {}).get(metric)
        if value is not None and math.isfinite(value):
            points.append((int(rows), float(value), merchant))
    return sorted(points)


def plot_merchants(results: Mapping[str, "RunResult"], path: Path, metric_names: Mapping[str, tuple[str, ...]]
                   ) -> None:
    """One panel per task metric: x = the merchant's train rows (log scale), y = its test metric, one
    series per run (mode)."""
    title = "per merchant: test metric against size (" + ", ".join(results) + ")"
    for ax, task, metric in metric_panels(metric_names, path, title, "merchant train rows", height=2.9):
        for label, result in results.items():
            points = merchant_points(result, task, metric)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, lw=0.8, label=label)
        ax.set_xscale("log")
