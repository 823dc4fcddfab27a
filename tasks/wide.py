"""The first-order (wide) part fitted by Newton steps on sums, the way the bias model is fitted.

Per-id biases are what sparse logs mostly teach (a user's propensity, an item's popularity), and
they converge slowly under SGD while the deep part overfits within a few passes. Here the deep part
never trains the biases: every round, after its epochs of the deep part, each trainer sums per bias
row the loss gradient and curvature of its labelled rows at its model (g = y - p, h = p (1 - p) for
a logit; g = the standardised residual, h = 1 for a rating), and the biases take one damped Newton
step on the summed statistics with an L2 prior of lam rows: b += damping (G - lam b) / (lam + H), lam
per column estimated from the same sums by default (`bias_l2: auto`, tasks/shrinkage.py) or fixed.
Sums are all a merchant sends for this part, so the server adds them like any other count. While
only the biases train (the first `wide_rounds` rounds) a step is exactly the same pooled or spread
over merchants, so federated, centralized and local fit the wide part identically and the deep part
starts from the bias model, to learn what is left (user x item affinity).
Bias-only columns (the merchant's bias, data.features.bias_only) are fitted by the trainer on its
own rows (`fit_bias_only`): a merchant's rows are all its bias ever sees, so its node solves it
exactly, as pooled training would, during the wide rounds (a merchant first drawn later, at its
first round), and then holds it. Refitted every round it and the deep part drift apart in opposite
directions (synthetic_60k: click validation log-loss rising from round 4); stepped with the other
biases by the server it and the global bias overshoot one shift together; trained by SGD under a
fresh Adagrad each round it jitters.
`train_round` is one trainer's round in either fit, for the clients and the baselines alike.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from core.errors import InputError
from data.shards import Shard
from tasks.models import MultiTaskModel
from tasks.registry import Task
from tasks.shrinkage import EstimatedPrior
from tasks.training import (BIAS_L2_WITHOUT_SUMS, TrainReport, bias_priors, label_counts, labelled_rows, newton_fit,
                            sgd_bias_tasks, task_labels, train_epochs)
from tasks.weighting import LossWeighting

# parameter name -> (row ids [k], gradient sums [k], curvature sums [k]); a task's global bias has one row, id 0.
# An embedding table's (tasks/embedding_newton.py): gradient sums [k, d], curvature sums [k, d, d].
WideStats = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
GLOBAL_BIAS = "first_order.bias."  # + task: a task's global bias


@torch.no_grad()
def additive_outputs(model: MultiTaskModel, shard: Shard, tasks: Sequence[Task], device: torch.device,
                     batch_size: int = 16384) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per task whose head adds the biases directly (ESMM's purchase biases stay with SGD): its
    labelled rows' mask, labels and head outputs (float64), the model in eval mode."""
    model.eval()
    outputs: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    for chunk in torch.as_tensor(shard.features, device=device).split(batch_size):
        for name, value in model.raw(chunk).items():
            outputs[name].append(value.float().cpu().numpy())
    additive = set(model.additive_tasks())
    out = {}
    for task, y in zip(tasks, task_labels(shard, tasks).values()):
        if task.name in additive:
            z = np.concatenate(outputs[task.name]) if outputs[task.name] else np.zeros(0, np.float32)
            mask = np.isfinite(y)
            out[task.name] = (mask, y[mask].astype(np.float64), z[mask].astype(np.float64))
    return out


def gradient_curvature(task: Task, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, minus the loss's derivative in the head's output z and its second derivative:
    (y - p, p (1 - p)) for a logit, (the standardised residual, 1) for a rating."""
    if task.kind == "binary":
        p = 1.0 / (1.0 + np.exp(-z))
        return y - p, p * (1.0 - p)
    return (y - task.center) / task.scale - z, np.ones_like(z)


def wide_statistics(model: MultiTaskModel, shard: Shard, tasks: Sequence[Task], device: torch.device,
                    batch_size: int = 16384) -> WideStats:
    """Per bias row of the embedded columns, the sums of g and h over this shard's rows labelled for
    the bias's task."""
    stats: WideStats = {}
    by_name = {t.name: t for t in tasks}
    for name, (mask, y, z) in additive_outputs(model, shard, tasks, device, batch_size).items():
        g, h = gradient_curvature(by_name[name], y, z)
        stats[GLOBAL_BIAS + name] = (np.zeros(1, np.int64), np.array([g.sum()]), np.array([h.sum()]))
        for j in range(model.first_order.n_embedded):  # bias-only columns: fit_bias_only
            ids, inverse = np.unique(shard.features[mask, j], return_inverse=True)
            stats[f"first_order.tables.{name}.{j}.weight"] = (
                ids, np.bincount(inverse, g, len(ids)), np.bincount(inverse, h, len(ids)))
    return stats


def has_unfitted_rows(model: MultiTaskModel, shard: Shard, tasks: Sequence[Task]) -> bool:
    """Whether some bias-only row that this shard's labelled rows look up is still at its initial zero."""
    first_order, additive = model.first_order, set(model.additive_tasks())
    for task, y in zip(tasks, task_labels(shard, tasks).values()):
        if task.name in additive:
            for j in range(first_order.n_embedded, len(first_order.tables[task.name])):
                ids = np.unique(shard.features[np.isfinite(y), first_order.columns[j]])
                table = first_order.tables[task.name][j].weight
                if bool((table[torch.as_tensor(ids, device=table.device), 0] == 0).any()):
                    return True
    return False


# Newton iterations of a bias-only row: a logit's converges in a few; a rating's is exact in one.
BIAS_ONLY_STEPS = 8


@torch.no_grad()
def fit_bias_only(model: MultiTaskModel, shard: Shard, tasks: Sequence[Task], train_cfg: Mapping[str, Any],
                  device: torch.device, only_unfitted: bool = False) -> None:
    """Each bias-only row (a merchant's bias) of the Newton-fitted tasks set to its L2-regularised
    optimum on this shard's labelled rows, everything else in the model held: per value v, b_v =
    argmin sum loss(z - b_old + b_v) + lam / 2 b_v^2 (lam = the task's `bias_l2`), columns in turn.
    `only_unfitted`: rows still at their initial zero only (a merchant's first round after the
    wide rounds); the others keep their value."""
    if model.first_order is None or not newton_fit(train_cfg) or not model.bias_only_tables():
        return
    first_order = model.first_order
    if only_unfitted and not has_unfitted_rows(model, shard, tasks):
        return  # every row this shard labels is held: no pass over its rows
    priors = bias_priors(train_cfg, model.task_names, auto_as=BIAS_L2_WITHOUT_SUMS)
    by_name = {t.name: t for t in tasks}
    for name, (mask, y, z) in additive_outputs(model, shard, tasks, device).items():
        task, lam = by_name[name], priors[name]
        for j in range(first_order.n_embedded, len(first_order.tables[name])):
            table = first_order.tables[name][j].weight
            ids, inverse = np.unique(shard.features[mask, first_order.columns[j]], return_inverse=True)
            rows = torch.as_tensor(ids, device=table.device)
            old = table[rows, 0].double().cpu().numpy()
            base, bias = z - old[inverse], old.copy()
            for _ in range(BIAS_ONLY_STEPS if task.kind == "binary" else 1):
                g, h = gradient_curvature(task, y, base + bias[inverse])
                G, H = np.bincount(inverse, g, len(ids)), np.bincount(inverse, h, len(ids))
                bias += (G - lam * bias) / np.maximum(lam + H, 1e-12)
            if only_unfitted:
                bias = np.where(old == 0, bias, old)
            table[rows, 0] = torch.as_tensor(bias, dtype=table.dtype, device=table.device)
            z = base + bias[inverse]  # the next bias-only column fits on this one's result


def sum_statistics(parts: Sequence[WideStats]) -> WideStats:
    """Many trainers' statistics as if their rows were one shard's (per row a scalar, or the vector and
    matrix of tasks/embedding_newton.py)."""
    total: WideStats = {}
    for name in sorted({name for part in parts for name in part}):
        ids = np.concatenate([part[name][0] for part in parts if name in part])
        unique, inverse = np.unique(ids, return_inverse=True)
        sums = []
        for k in (1, 2):
            values = np.concatenate([np.asarray(part[name][k], np.float64) for part in parts if name in part])
            summed = np.zeros((len(unique),) + values.shape[1:])
            np.add.at(summed, inverse, values)
            sums.append(summed)
        total[name] = (unique, sums[0], sums[1])
    return total


Prior = float | EstimatedPrior


def newton_update(params: Mapping[str, np.ndarray], stats: WideStats, lam: Prior | Mapping[str, Prior],
                  damping: float, max_step: Mapping[str, float] | None = None,
                  priors_taken: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """One damped Newton step of every bias row the statistics cover; other rows keep their value.

    `lam`: the prior in rows, one for all or per task (newton_settings); an EstimatedPrior is
    estimated per column from these very sums (tasks/shrinkage.py). Global biases carry no
    prior (lam applies to per-id rows only), like the bias model's mean. `max_step`: per task, the
    largest move in one step of a bias whose prior is 0 or estimated (newton_settings); tasks it
    leaves out are unbounded.
    A task's global bias steps first, and its per-id columns then step on their gradient less that
    shift (G - H * step, exact for a rating, to first order for a logit): the global bias is on every
    row, so each column's sums also hold the shared residual, and with weak (estimated) priors every
    column took it at once and their steps overshot together. Fitted so alone, the bias model's
    purchase AUC on synthetic_events fell from 0.612 (step 2) to 0.566 (step 20); with the shift taken
    out it reaches the block-coordinate fit's 0.630 by step 8. `priors_taken`, where given, receives
    each per-id table's prior (estimated or fixed) by its parameter name.
    """
    updated, shifts = {}, {}
    for name in sorted(stats, key=lambda n: not n.startswith(GLOBAL_BIAS)):  # global biases first
        ids, g, h = stats[name]
        value = np.array(params[name], dtype=np.float64, copy=True)
        flat = value.reshape(-1) if value.ndim < 2 else value[:, 0]
        task = name.split(".")[2]  # first_order.tables.<task>.<column>.weight
        is_global = name.startswith(GLOBAL_BIAS)
        prior = 0.0 if is_global else lam[task] if isinstance(lam, Mapping) else lam
        if not is_global:
            g = g - h * shifts.get(task, 0.0)
        current = flat[ids]
        estimated = isinstance(prior, EstimatedPrior)
        if estimated:
            prior = prior.estimate(current + g / np.maximum(h, 1e-12), h)
        if priors_taken is not None and not is_global:
            priors_taken[name] = float(prior)
        step = damping * (g - prior * current) / np.maximum(prior + h, 1e-12)
        if prior == 0.0 or estimated:  # nothing else holds the bias back where the curvature vanishes
            bound = (max_step or {}).get(task, np.inf)
            step = np.clip(step, -bound, bound)
        if is_global:
            shifts[task] = float(step[0])
        flat[ids] = current + step  # a view: writes through to value
        updated[name] = value.reshape(np.shape(params[name])).astype(np.asarray(params[name]).dtype)
    return updated


# Newton steps of the per-id biases on every labelled row, validation rows included, once the round is
# chosen (`refit_biases: auto`): one step took synthetic_events' click AUC most of the way (README).
REFIT_STEPS = 2


def refit_statistics(model: MultiTaskModel, shards: Sequence[Shard], tasks: Sequence[Task],
                     device: torch.device) -> WideStats:
    """The per-id bias statistics of these shards' rows together (a trainer's train and validation
    splits); no global bias: calibration set each task's level on the latest rows, and refitted on
    all of them it would fall back towards the older rows' level."""
    stats = wide_statistics(model, Shard.concat(list(shards)), tasks, device)
    return {name: value for name, value in stats.items() if not name.startswith(GLOBAL_BIAS)}


def refit_steps(setting: Any, key: str = "refit_biases", default: int = REFIT_STEPS) -> int:
    """A refit setting (`key`) as a number of Newton steps: auto or true = `default`, false = 0, or a count."""
    if str(setting) == "auto" or setting is True:
        return default
    if setting is False or setting is None:
        return 0
    if isinstance(setting, int) and setting >= 0:
        return setting
    raise InputError(f"{key}={setting!r}: give auto, true, false or a number of Newton steps >= 0")


def newton_settings(train_cfg: Mapping[str, Any], tasks: Sequence[Task]
                    ) -> tuple[dict[str, Prior], float, dict[str, float]]:
    """newton_update's (priors, damping, max_step) from the train config, the same for the server and
    the trainers. Prior-free biases (a task's global one; per-id ones too under bias_l2=0) move by
    at most `newton_max_step` per step (XGBoost's max_delta_step; a logit's units, a rating's
    standardised ones): where a small merchant's deep part has saturated its predictions, h = p (1 - p)
    nearly vanishes and one step on its few rows moves the global bias by several logits (3.7 on the
    tiny local-mode test). So do per-id biases whose prior is estimated: the estimate can be weak (a
    merchant alone in local mode, its deep part saturated, overflowed a logit on synthetic_events),
    while a fixed prior of lam rows holds a step to the id's rows / lam. A rating's step is exact on
    its quadratic loss, but its biases and a small merchant's deep part can still chase one residual
    between them: unbounded, `synthetic_coldstart`'s local mode (8 rounds, patience=0) took small
    merchants' rating biases to 850 standard deviations (a merchant of 93 rows kept such a round on
    two seeds of the bench: test RMSE 80 and 101); bounded, they stay within 4."""
    bound = train_cfg.get("newton_max_step")
    if bound is not None and not float(bound) > 0:
        raise InputError(f"train.newton_max_step must be > 0 or null, got {bound}")
    max_step = {t.name: float(bound) for t in tasks} if bound is not None else {}
    given = bias_priors(train_cfg, [t.name for t in tasks])
    priors: dict[str, Prior] = {t.name: EstimatedPrior(known_dispersion=t.kind == "binary") if given[t.name] is None
                                else given[t.name] for t in tasks}
    return priors, float(train_cfg["newton_damping"]), max_step


@torch.no_grad()
def step_in_place(model: MultiTaskModel, stats: WideStats,
                  update: Callable[[dict[str, np.ndarray], WideStats], dict[str, np.ndarray]]) -> None:
    """A trainer's own step (centralized, local): `update` (the arrays the statistics cover, the
    statistics -> their new values) applied to the model in place; no-op without stats."""
    if not stats:
        return
    state = model.state_dict()
    for name, value in update({name: state[name].cpu().numpy() for name in stats}, stats).items():
        state[name].copy_(torch.as_tensor(value))


def apply_newton(model: MultiTaskModel, stats: WideStats, train_cfg: Mapping[str, Any], tasks: Sequence[Task]
                 ) -> dict[str, float]:
    """The trainer's own bias step: the model's biases moved in place; returns the priors it took
    (newton_update's `priors_taken`)."""
    settings, taken = newton_settings(train_cfg, tasks), {}
    step_in_place(model, stats, lambda params, summed: newton_update(params, summed, *settings, priors_taken=taken))
    return taken


def named_priors(priors_taken: Mapping[str, float], columns: Sequence[str]) -> dict[str, dict[str, float]]:
    """newton_update's priors by task and column name, as a run's round records show them: `columns`
    names the first-order tables' columns in order (data/features.py: hashed, then bias-only)."""
    named: dict[str, dict[str, float]] = {}
    for name, lam in sorted(priors_taken.items()):
        _, _, task, table, _ = name.split(".")  # first_order.tables.<task>.<table>.weight
        named.setdefault(task, {})[columns[int(table)]] = lam
    return named


def first_deep_round(train_cfg: Mapping[str, Any]) -> int:
    """The first round whose training moves the deep part: past the bias-only rounds under newton."""
    return int(train_cfg.get("wide_rounds", 0)) + 1 if newton_fit(train_cfg) else 1


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
    deep = server_round >= first_deep_round(train_cfg)
    if not deep:
        report = TrainReport(examples=int(labelled_rows(shard, tasks).sum()), label_counts=label_counts(shard, tasks),
                             losses={})
    else:
        report = train_epochs(model, weighting, optimizer, shard, tasks, train_cfg, seed, device, proximal, row_totals)
    # After the deep part's epochs: the biases then correct only the residual the deep part left. Taken
    # before them, both parts would chase the same residual and overshoot, round after round.
    fit_bias_only(model, shard, tasks, train_cfg, device, only_unfitted=deep)
    return report, wide_statistics(model, shard, tasks, device)


def newton_fitted(model: MultiTaskModel, train_cfg: Mapping[str, Any]) -> set[str]:
    """Names of the first-order biases a Newton step sets (not SGD, not averaging): the server
    optimiser leaves them alone."""
    if model.first_order is None or not newton_fit(train_cfg):
        return set()
    by_sgd = set(sgd_bias_tasks(model, train_cfg))
    fitted = {id(p) for t in model.task_names if t not in by_sgd for p in model.first_order_parameters(t)}
    sent = model.bias_only_tables()  # fitted by the trainer itself (fit_bias_only): they travel as rows
    return {name for name, p in model.named_parameters() if id(p) in fitted and name not in sent}


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
