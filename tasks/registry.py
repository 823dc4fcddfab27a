"""The task registry: each task is a head with its label column, its loss and its metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import InputError
from tasks.metrics import Metrics, binary_metrics, regression_metrics


@dataclass(frozen=True)
class Task:
    name: str
    label: str  # column of the interactions table
    kind: str   # "regression": the head outputs the value; "binary": the head outputs a logit
    metric_names: tuple[str, ...]
    higher_is_better: tuple[str, ...]
    # Regression heads work in standardised units, (y - center) / scale, so a 1-5 rating starts with a
    # loss near 1 like a BCE task instead of drowning the other tasks' gradients.
    center: float = 0.0
    scale: float = 1.0
    # Binary heads: the share of positives among the train labels, the head's starting prediction.
    base_rate: float | None = None

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(output, target)
        return F.mse_loss(output, (target - self.center) / self.scale)

    def to_prediction(self, output: torch.Tensor) -> torch.Tensor:
        """Head output in label space: a probability or a value."""
        return torch.sigmoid(output) if self.kind == "binary" else output * self.scale + self.center

    def loss_from_metrics(self, metrics: Metrics) -> float:
        """The training loss recovered from this task's metrics (BCE = logloss; standardised MSE)."""
        if self.kind == "binary":
            return float(metrics.get("logloss", math.nan))
        return float((metrics.get("rmse", math.nan) / self.scale) ** 2)

    @property
    def metrics_fn(self) -> Callable[[np.ndarray, np.ndarray], Metrics]:
        return binary_metrics if self.kind == "binary" else regression_metrics


TASKS: dict[str, Task] = {
    "rating": Task("rating", "rating", "regression", ("rmse", "mae"), ()),
    "purchase": Task("purchase", "purchase", "binary", ("auc", "logloss"), ("auc",)),
    "click": Task("click", "click", "binary", ("auc", "logloss"), ("auc",)),
}


def resolve_tasks(requested: Sequence[str] | None, available_labels: Sequence[str], source: str = "the data",
                  label_stats: Mapping[str, Mapping[str, float]] | None = None) -> list[Task]:
    """The tasks of a run in registry order; None means every task whose labels the data has.

    `label_stats` (label -> mean, std of the train labels) centres and scales regression heads.
    """
    if requested is None:
        names = [t.name for t in TASKS.values() if t.label in available_labels]
    else:
        if isinstance(requested, str):
            requested = [requested]
        names = list(dict.fromkeys(requested))
        if not names:
            raise InputError(f"tasks must be a non-empty subset of [{', '.join(TASKS)}]")
        for name in names:
            if name not in TASKS:
                raise InputError(f"unknown task {name!r} in tasks (known: {', '.join(TASKS)})")
            if TASKS[name].label not in available_labels:
                raise InputError(f"task {name!r} asked for, but {source} has no '{TASKS[name].label}' labels")
    if not names:
        raise InputError(f"{source} has labels for none of the tasks {', '.join(TASKS)}")
    tasks = [TASKS[n] for n in TASKS if n in names]
    stats = label_stats or {}
    return [_with_stats(t, stats[t.label]) if t.label in stats else t for t in tasks]


def _with_stats(task: Task, stats: Mapping[str, float]) -> Task:
    if task.kind == "regression":
        return replace(task, center=float(stats["mean"]), scale=max(float(stats["std"]), 1e-6))
    return replace(task, base_rate=float(stats["mean"]))
