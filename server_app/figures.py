"""The grid of one panel per task metric that every figure a run writes is drawn on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Mapping


def metric_panels(metric_names: Mapping[str, tuple[str, ...]], path: Path, title: str, xlabel: str,
                  height: float = 2.8) -> Iterator[tuple[Any, str, str]]:
    """Yields (axes, task, metric) per panel for the caller to draw on, then saves the figure to `path`
    with the first panel's legend: `for ax, task, metric in metric_panels(...): ax.plot(...)`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, m) for t, names in metric_names.items() for m in names]
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, height * rows), squeeze=False)
    for ax, (task, metric) in zip(axes.flat, panels):
        yield ax, task, metric
        ax.set_title(f"{task} {metric}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
