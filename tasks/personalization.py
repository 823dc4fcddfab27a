"""Personalisation kept on the merchant (`personalization=none|local_bias|local_heads`): what a
merchant-id feature learns in pooled training, learned where federated learning allows it.

local_bias: before scoring, each merchant fits one offset per task on its own train split against the
model it was given (a logit offset for a binary task, a value offset for a rating), shrunk towards 0
by an L2 prior of `l2` rows, the way the per-id biases are fitted (tasks/wide.py): a merchant with
few rows keeps the global model's level, a large one moves to its own base rate. The offset never
leaves the node and nothing is stored between rounds (a node fits it again from the model it is
sent), so resume and checkpoints are unaffected. Within one merchant an offset is monotone, so the
AUCs and the ranking are those of the global model; log-loss and RMSE are where it shows. Every mode
applies it alike (centralized and local score each merchant with its own offset too), so the modes
stay comparable; the personalised metrics travel beside the global ones as `<metric>_personal`.

local_heads (FedPer's per-client heads, fitted afresh as in FedBABU): at every scoring, each merchant
trains a copy of the model's task heads (the towers and every other per-task part but the Newton-
fitted biases) for `steps` passes over its own train split, everything shared held, with FedProx's
proximal term of strength `l2` pulling them towards the global heads, and keeps a task's personal
head only where it lowers the merchant's validation loss (`kept_where_better`). Unlike an offset, a
head can reorder a merchant's rows, so the AUCs may change too. The same rules: nothing leaves the
node or is stored, every mode applies it, the scores travel as `<metric>_personal`.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch

import numpy as np

from core.errors import InputError
from data.shards import Shard
from tasks.models import MultiTaskModel, parameter_tasks
from tasks.registry import Task
from tasks.training import make_optimizer, predict, score, task_labels, train_epochs
from tasks.weighting import LossWeighting

MODES = ("none", "local_bias", "local_heads")
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


def head_parameters(model: MultiTaskModel) -> list[torch.nn.Parameter]:
    """The parameters local_heads trains: every per-task one but the first-order biases (their
    Newton fit is the federation's, and local_bias is the per-merchant level)."""
    owners = parameter_tasks(model)
    return [p for name, p in model.named_parameters()
            if owners[name] is not None and not name.startswith("first_order.")]


def local_heads(model: MultiTaskModel, weighting: LossWeighting, train: Shard, tasks: Sequence[Task],
                train_cfg: Mapping[str, Any], device: torch.device, l2: float, steps: int, seed: int
                ) -> MultiTaskModel:
    """A copy of `model` whose heads trained `steps` passes over this merchant's train split, pulled
    towards the global heads by a proximal term of strength `l2`; `model` itself is left as it is."""
    personal = copy.deepcopy(model)
    heads = head_parameters(personal)
    if not heads or len(train) == 0:
        return personal
    fit_cfg = {**train_cfg, "local_epochs": steps, "embedding_l2": 0.0}
    optimizer = make_optimizer(personal, weighting, fit_cfg, only=heads)
    train_epochs(personal, weighting, optimizer, train, tasks, fit_cfg, seed, device, proximal=l2)
    personal.eval()
    return personal


def kept_where_better(tasks: Sequence[Task], val: Shard, global_val: Mapping[str, np.ndarray],
                      personal_val: Mapping[str, np.ndarray]) -> dict[str, bool]:
    """Per task, whether the personal head lowers the merchant's validation loss (log-loss, RMSE):
    trained on rows the global model already fits, a head mostly overfits them, so it is kept only
    where the merchant's latest rows say it helps. True where the split holds no label."""
    global_scores, _ = score(global_val, val, tasks)
    personal_scores, _ = score(personal_val, val, tasks)
    return {task.name: task.name not in global_scores
            or task.loss_from_metrics(personal_scores[task.name]) < task.loss_from_metrics(global_scores[task.name])
            for task in tasks}


def personal_metrics(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Metrics renamed `<metric>_personal`, to travel beside the global ones."""
    return {task: {name + SUFFIX: value for name, value in values.items()} for task, values in metrics.items()}
