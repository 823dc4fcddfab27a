"""The first-order (wide) part fitted by Newton steps on sums, the way the bias model is fitted.

Per-id biases are what sparse logs mostly teach (a user's propensity, an item's popularity), and
they converge slowly under SGD while the deep part overfits within a few passes. Here the deep part
never trains the biases: every round, after its epochs of the deep part, each trainer sums per bias
row the loss gradient and curvature of its labelled rows at its model (g = y - p, h = p (1 - p) for
a logit; g = the standardised residual, h = 1 for a rating), and the biases take one damped Newton
step on the summed statistics with an L2 prior of `bias_l2` rows: b += damping (G - lam b) / (lam + H).
Sums are all a merchant sends for this part, so the server adds them like any other count. While
only the biases train (the first `wide_rounds` rounds) a step is exactly the same pooled or spread
over merchants, so federated, centralized and local fit the wide part identically and the deep part
starts from the bias model, to learn what is left (user x item affinity).
Bias-only columns (the merchant's bias, data.features.bias_only) are not fitted here: a merchant's
bias fitted exactly every round (here, or by its node on its own rows) and the deep part drift
apart in opposite directions (synthetic_60k: click validation log-loss rising from round 4). They
train with the deep part, and the Newton step fits the other biases on the residual they leave.
`train_round` is one trainer's round in either fit, for the clients and the baselines alike.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from core.errors import InputError
from data.shards import Shard
from tasks.models import MultiTaskModel
from tasks.registry import Task
from tasks.training import (TrainReport, bias_priors, label_counts, labelled_rows, newton_fit, sgd_bias_tasks,
                            task_labels, train_epochs)
from tasks.weighting import LossWeighting

# parameter name -> (row ids [k], gradient sums [k], curvature sums [k]); a task's global bias has one row, id 0
WideStats = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


@torch.no_grad()
def wide_statistics(model: MultiTaskModel, shard: Shard, tasks: Sequence[Task], device: torch.device,
                    batch_size: int = 16384) -> WideStats:
    """Per bias row, the sums of g and h over this shard's rows labelled for the bias's task (tasks
    whose head adds the biases directly; ESMM's purchase biases stay with SGD)."""
    model.eval()
    outputs: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    for chunk in torch.as_tensor(shard.features, device=device).split(batch_size):
        for name, value in model(chunk).items():
            outputs[name].append(value.float().cpu().numpy())
    stats: WideStats = {}
    additive = set(model.additive_tasks())
    for task, y in zip(tasks, task_labels(shard, tasks).values()):
        if task.name not in additive:
            continue
        z = np.concatenate(outputs[task.name]) if outputs[task.name] else np.zeros(0, np.float32)
        mask = np.isfinite(y)
        z, y = z[mask].astype(np.float64), y[mask].astype(np.float64)
        if task.kind == "binary":
            p = 1.0 / (1.0 + np.exp(-z))
            g, h = y - p, p * (1.0 - p)
        else:
            g, h = (y - task.center) / task.scale - z, np.ones_like(z)
        stats[f"first_order.bias.{task.name}"] = (np.zeros(1, np.int64), np.array([g.sum()]), np.array([h.sum()]))
        for j in range(model.first_order.n_embedded):  # bias-only columns train with the deep part
            ids, inverse = np.unique(shard.features[mask, j], return_inverse=True)
            stats[f"first_order.tables.{task.name}.{j}.weight"] = (
                ids, np.bincount(inverse, g, len(ids)), np.bincount(inverse, h, len(ids)))
    return stats


def sum_statistics(parts: Sequence[WideStats]) -> WideStats:
    """Many trainers' statistics as if their rows were one shard's."""
    total: WideStats = {}
    for name in sorted({name for part in parts for name in part}):
        ids = np.concatenate([part[name][0] for part in parts if name in part])
        unique, inverse = np.unique(ids, return_inverse=True)
        sums = [np.bincount(inverse, np.concatenate([part[name][k] for part in parts if name in part]), len(unique))
                for k in (1, 2)]
        total[name] = (unique, sums[0], sums[1])
    return total


def newton_update(params: Mapping[str, np.ndarray], stats: WideStats, lam: float | Mapping[str, float],
                  damping: float) -> dict[str, np.ndarray]:
    """One damped Newton step of every bias row the statistics cover; other rows keep their value.

    `lam`: the prior in rows, one for all or per task (training.bias_priors). Global biases carry no
    prior (lam applies to per-id rows only), like the bias model's mean.
    """
    updated = {}
    for name, (ids, g, h) in stats.items():
        value = np.array(params[name], dtype=np.float64, copy=True)
        flat = value.reshape(-1) if value.ndim < 2 else value[:, 0]
        task = name.split(".")[2]  # first_order.tables.<task>.<column>.weight
        prior = 0.0 if name.startswith("first_order.bias.") else lam[task] if isinstance(lam, Mapping) else lam
        current = flat[ids]
        step = damping * (g - prior * current) / np.maximum(prior + h, 1e-12)
        flat[ids] = current + step  # a view: writes through to value
        updated[name] = value.reshape(np.shape(params[name])).astype(np.asarray(params[name]).dtype)
    return updated


@torch.no_grad()
def apply_newton(model: MultiTaskModel, stats: WideStats, train_cfg: Mapping[str, object]) -> None:
    """The trainer's own step (centralized, local): the model's biases moved in place; no-op without stats."""
    if not stats:
        return
    state = model.state_dict()
    params = {name: state[name].cpu().numpy() for name in stats}
    for name, value in newton_update(params, stats, bias_priors(train_cfg, model.task_names),
                                     float(train_cfg["newton_damping"])).items():
        state[name].copy_(torch.as_tensor(value))


def train_round(model: MultiTaskModel, weighting: LossWeighting, optimizer: torch.optim.Optimizer | None,
                shard: Shard, tasks: Sequence[Task], train_cfg: Mapping[str, object], seed: int,
                device: torch.device, server_round: int, proximal: float = 0.0,
                row_totals: Mapping[int, np.ndarray] | None = None) -> tuple[TrainReport, WideStats]:
    """One trainer's round, the same for a federated client and the centralized/local baselines.

    Under first_order_fit=newton: the deep part's epochs (none during the first `wide_rounds`), then
    the wide statistics at the model they leave; whoever aggregates applies the Newton step.
    Under sgd: the epochs train every parameter and there are no statistics. `proximal`: FedProx's mu;
    `row_totals`: every merchant's row counts (tasks/training.py inverse_row_counts).
    """
    if not newton_fit(train_cfg):
        return train_epochs(model, weighting, optimizer, shard, tasks, train_cfg, seed, device, proximal, row_totals), {}
    if server_round <= int(train_cfg.get("wide_rounds", 0)):
        report = TrainReport(examples=int(labelled_rows(shard, tasks).sum()), label_counts=label_counts(shard, tasks),
                             losses={})
    else:
        report = train_epochs(model, weighting, optimizer, shard, tasks, train_cfg, seed, device, proximal, row_totals)
    # After the deep part's epochs: the biases then correct only the residual the deep part left. Taken
    # before them, both parts would chase the same residual and overshoot, round after round.
    return report, wide_statistics(model, shard, tasks, device)


def newton_fitted(model: MultiTaskModel, train_cfg: Mapping[str, Any]) -> set[str]:
    """Names of the first-order biases a Newton step sets (not SGD, not averaging): the server
    optimiser leaves them alone."""
    if model.first_order is None or not newton_fit(train_cfg):
        return set()
    by_sgd = set(sgd_bias_tasks(model, train_cfg))
    fitted = {id(p) for t in model.task_names if t not in by_sgd for p in model.first_order_parameters(t)}
    return {name for name, p in model.named_parameters() if id(p) in fitted}


def averaged_by_rows(model: MultiTaskModel, cfg: Mapping[str, Any]) -> list[str]:
    """The id-indexed tables the server averages row by row (federation.table_aggregation=rows), for
    the clients, which count their rows, and the server alike: every table but the Newton-fitted biases."""
    if cfg["federation"]["table_aggregation"] not in ("rows", "dense"):
        raise InputError(f"federation.table_aggregation must be rows or dense, got {cfg['federation']['table_aggregation']!r}")
    if cfg["federation"]["table_aggregation"] == "dense":
        return []
    trained_by_sgd = set(sgd_bias_tasks(model, cfg["train"]))
    bias_only = model.bias_only_tables()
    return [name for name, (_, task) in model.id_tables().items()
            if task is None or task in trained_by_sgd or name in bias_only]
