"""Personalisation kept on the merchant (`personalization=none|local_bias`): what a merchant-id
feature learns in pooled training, learned where federated learning allows it.

local_bias: before scoring, each merchant fits one offset per task on its own train split against the
model it was given (a logit offset for a binary task, a value offset for a rating), shrunk towards 0
by an L2 prior of `l2` rows, the way the per-id biases are fitted (tasks/wide.py): a merchant with
few rows keeps the global model's level, a large one moves to its own base rate. The offset never
leaves the node and nothing is stored between rounds (a node fits it again from the model it is
sent), so resume and checkpoints are unaffected. Within one merchant an offset is monotone, so the
AUCs and the ranking are those of the global model; log-loss and RMSE are where it shows. Every mode
applies it alike (centralized and local score each merchant with its own offset too), so the modes
stay comparable; the personalised metrics travel beside the global ones as `<metric>_personal`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

import numpy as np

from core.errors import InputError
from data.shards import Shard
from tasks.models import MultiTaskModel
from tasks.registry import Task
from tasks.training import predict, task_labels

MODES = ("none", "local_bias")
SUFFIX = "_personal"
EPS = 1e-6


def personalization_of(cfg: Mapping[str, Any]) -> tuple[str, float, int]:
    """(mode, l2 prior in rows, Newton steps) of the run, each checked to one line."""
    given = cfg.get("personalization") or {"name": "none"}
    mode = str(given.get("name", "none"))
    if mode not in MODES:
        raise InputError(f"personalization must be one of {', '.join(MODES)}, got {mode!r}")
    l2, steps = float(given.get("l2", 0.0)), int(given.get("steps", 0))
    if mode != "none" and (not l2 >= 0 or steps < 1):
        raise InputError(f"personalization.l2 must be >= 0 and personalization.steps >= 1, got {l2:g} and {steps}")
    return mode, l2, steps


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def fit_offset(task: Task, y: np.ndarray, prediction: np.ndarray, l2: float, steps: int) -> float:
    """The merchant's offset for one task over its labelled train rows (y finite)."""
    if len(y) == 0:
        return 0.0
    y = y.astype(np.float64)
    if task.kind != "binary":  # squared error: the shrunk mean residual, in one step
        return float((y - prediction).sum() / (len(y) + l2))
    z, b = _logit(prediction), 0.0
    for _ in range(steps):  # Newton on the penalised log-likelihood of z + b
        p = 1.0 / (1.0 + np.exp(-(z + b)))
        b += float(((y - p).sum() - l2 * b) / (max((p * (1 - p)).sum(), EPS) + l2))
    return b


def shifted(task: Task, prediction: np.ndarray, offset: float) -> np.ndarray:
    if task.kind != "binary":
        return (prediction + offset).astype(prediction.dtype)
    return (1.0 / (1.0 + np.exp(-(_logit(prediction) + offset)))).astype(prediction.dtype)


def merchant_offsets(tasks: Sequence[Task], labels: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
                     l2: float, steps: int) -> dict[str, float]:
    """Per task, the offset fitted on the train rows that carry its label."""
    offsets = {}
    for task in tasks:
        y = labels[task.name]
        mask = np.isfinite(y)
        offsets[task.name] = fit_offset(task, y[mask], predictions[task.name][mask], l2, steps)
    return offsets


def local_offsets(model: MultiTaskModel, tasks: Sequence[Task], device: torch.device,
                  val: tuple[Shard, Mapping[str, np.ndarray] | None], train: Shard | None, l2: float, steps: int
                  ) -> dict[str, float]:
    """Per task, the merchant's offset: fitted on its validation rows (its latest: drift shows there,
    and cold ids, which the train rows' own biases cannot stand for) when they hold the task's label,
    else on its train rows; 0 without labels. `val` = (split, the model's predictions on it or None)."""
    val_split, val_predictions = val
    offsets: dict[str, float] = {}
    train_predictions = None
    for task in tasks:
        if val_predictions is not None and np.isfinite(task_labels(val_split, [task])[task.name]).any():
            shard, predictions = val_split, val_predictions
        elif train is not None and np.isfinite(task_labels(train, [task])[task.name]).any():
            train_predictions = train_predictions or predict(model, train.features, tasks, device)
            shard, predictions = train, train_predictions
        else:
            offsets[task.name] = 0.0
            continue
        offsets.update(merchant_offsets([task], task_labels(shard, [task]), predictions, l2, steps))
    return offsets


def personal_metrics(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Metrics renamed `<metric>_personal`, to travel beside the global ones."""
    return {task: {name + SUFFIX: value for name, value in values.items()} for task, values in metrics.items()}
