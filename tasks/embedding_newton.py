"""The embedding rows refitted by one Gauss-Newton step on summed per-row statistics, after each round.

Why: on logs without a rating task, averaging the merchants' models stalls the federated deep part
near the bias model (README, "Tables unlike the presets"): one epoch on a merchant's few thousand
rows of rare binary labels moves each embedding row mostly by noise, and the average keeps little of
the signal. The first-order biases never had that problem, because they are fitted from sums
(tasks/wide.py). Here the embedding rows are too, the step alternating least squares takes on a
factorisation: with the rest of the model held at the round's global model, every trainer sums over
its labelled train rows, per embedding row e, G = sum g J and H = sum h J J^T (J = the task head's
derivative in e; g, h as tasks/wide.py gradient_curvature, summed over the tasks), and the row takes
one damped step with an L2 prior of `train.embedding_l2` rows: e += damping (H + lam I)^-1 (G - lam e).
The merchants' sums add up to the pooled ones, so a federated step is the pooled step exactly.
Federated, the sums come from a query after the round's average (server_app/federated.py): taken at
each merchant's own trained model instead, or at the model the round started from, the step and the
local epochs chase the same residual and the rounds oscillate (measured in-process, README).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from core.errors import InputError
from data.shards import Shard
from tasks.models import MultiTaskModel
from tasks.registry import Task
from tasks.training import task_labels
from tasks.wide import WideStats, gradient_curvature, step_in_place

# The per-row outer products of one chunk of rows are held at once: at most this many float64 values.
CHUNK_VALUES = 1 << 24


def embedding_newton(train_cfg: Mapping[str, Any]) -> bool:
    """Whether the embedding rows take the Newton step (train.embedding_newton, `auto` already resolved
    by tasks/experiment.py resolved_training)."""
    value = train_cfg.get("embedding_newton", False)
    if not isinstance(value, bool):
        raise InputError(f"train.embedding_newton must be auto, true or false, got {value!r}")
    return value


def embedding_statistics(model: MultiTaskModel, shard: Shard, tasks: Sequence[Task], device: torch.device,
                         drop_ids: bool = True) -> WideStats:
    """Per embedding table looked up by this shard's labelled rows: (row ids [k], G [k, d], H [k, d, d]),
    float64, at the model as it is (eval mode: no dropout), ids dropped as in training (model.id_dropout)
    unless `drop_ids` is false."""
    model.eval()
    tables = model.embedding.tables
    labels = task_labels(shard, tasks)
    labelled = np.flatnonzero(np.any([np.isfinite(y) for y in labels.values()], axis=0)) if labels else np.zeros(0, int)
    if not len(tables) or not len(labelled):
        return {}
    dim = tables[0].embedding_dim
    columns = [np.unique(shard.features[labelled, j], return_inverse=True) for j in range(len(tables))]
    sums = [(torch.zeros(len(ids), dim, dtype=torch.float64), torch.zeros(len(ids), dim, dim, dtype=torch.float64))
            for ids, _ in columns]
    chunk = max(64, CHUNK_VALUES // (len(tables) * dim * dim))
    for start in range(0, len(labelled), chunk):
        rows = labelled[start:start + chunk]
        features = torch.as_tensor(shard.features[rows], device=device)
        vectors = model.embedding.vectors(features).detach().requires_grad_(True)
        outputs = model.link(model.raw_from_vectors(features, dropped_ids(model, vectors) if drop_ids else vectors))
        g_j = torch.zeros(len(rows), len(tables), dim, dtype=torch.float64)
        h_jj = torch.zeros(len(rows), len(tables), dim, dim, dtype=torch.float64)
        for task in tasks:
            y = labels[task.name][rows]
            mask = np.isfinite(y)
            if not mask.any():
                continue
            jacobian, = torch.autograd.grad(outputs[task.name].sum(), vectors, retain_graph=True)
            jacobian = jacobian[:, :len(tables)].double().cpu()  # numerical columns' vectors are not rows
            g, h = gradient_curvature(task, np.nan_to_num(y).astype(np.float64),
                                      outputs[task.name].detach().double().cpu().numpy())
            g, h = torch.as_tensor(np.where(mask, g, 0.0)), torch.as_tensor(np.where(mask, h, 0.0))
            g_j += g[:, None, None] * jacobian
            h_jj += h[:, None, None, None] * jacobian[..., :, None] * jacobian[..., None, :]
        for j, (_, inverse) in enumerate(columns):
            index = torch.as_tensor(inverse[start:start + chunk])
            sums[j][0].index_add_(0, index, g_j[:, j])
            sums[j][1].index_add_(0, index, h_jj[:, j])
    return {f"embedding.tables.{j}.weight": (ids.astype(np.int64), g.numpy(), h.numpy())
            for j, ((ids, _), (g, h)) in enumerate(zip(columns, sums))}


def dropped_ids(model: MultiTaskModel, vectors: torch.Tensor) -> torch.Tensor:
    """The vectors with the hashed columns' ids dropped as in training (model.id_dropout), so the sums
    are a draw of the objective id dropout trains: a dropped row gets J = 0 from that example, and the
    other rows are fitted for predicting without it (what a cold test row asks of them)."""
    if not model.embedding.drops_ids:
        return vectors
    hashed = len(model.embedding.tables)
    return torch.cat([model.embedding.drop_ids(vectors[:, :hashed]), vectors[:, hashed:]], dim=1)


def embedding_newton_update(params: Mapping[str, np.ndarray], stats: WideStats, lam: float, damping: float
                            ) -> dict[str, np.ndarray]:
    """One damped Newton step of every embedding row the statistics cover; other rows keep their value.
    A row no labelled row reaches through the model (J = 0) is only shrunk by its prior."""
    updated = {}
    for name, (ids, g, h) in stats.items():
        table = np.array(params[name], dtype=np.float64, copy=True)
        current = table[ids]
        dim = table.shape[1]
        # a vanishing ridge keeps a row with neither curvature nor prior (embedding_l2=0) solvable
        ridge = (lam + 1e-9 * (1.0 + np.trace(h, axis1=1, axis2=2) / dim))[:, None, None] * np.eye(dim)
        step = np.linalg.solve(h + ridge, (g - lam * current)[..., None])[..., 0]
        table[ids] = current + damping * step
        updated[name] = table.astype(np.asarray(params[name]).dtype)
    return updated


def embedding_newton_settings(train_cfg: Mapping[str, Any]) -> tuple[float, float]:
    """(prior rows, damping): the embeddings' L2 prior and the Newton damping the biases use."""
    return float(train_cfg["embedding_l2"]), float(train_cfg["newton_damping"])


def refit_embeddings(model: MultiTaskModel, shard: Shard, tasks: Sequence[Task], train_cfg: Mapping[str, Any],
                     device: torch.device) -> None:
    """The trainer's own step (centralized, local): statistics on its shard, applied in place."""
    settings = embedding_newton_settings(train_cfg)
    step_in_place(model, embedding_statistics(model, shard, tasks, device),
                  lambda params, stats: embedding_newton_update(params, stats, *settings))


# Newton steps of the embedding rows on the train and validation rows together, after the bias refit
# (`refit_embeddings: auto`). On the 3-seed benches' kept models one step gained on every preset and
# table with a rating task (a movie-like ratings log of 21 merchants 0.996 -> 0.985 RMSE on every seed;
# synthetic_coldstart purchase AUC +0.01).
EMBEDDING_REFIT_STEPS = 1
# Without a rating task the refit's prior is this many times train.embedding_l2: at 1x the step cost
# synthetic_events purchase AUC on every seed (-0.0002 to -0.0300); at 10x it gained both AUCs there
# (0.6249 / 0.5942 -> 0.6282 / 0.5972) and on an event-log-shaped table it was not tuned on
# (0.5840 / 0.5722 -> 0.5956 / 0.5733). A rare binary label's residuals are mostly noise, so the rows
# need more shrinkage than a rating's; with ratings 1x was best (3x, 10x, 30x worse on synthetic_sparse).
BINARY_REFIT_PRIOR_SCALE = 10.0


def refit_prior_scale(tasks: Sequence[Task]) -> float:
    """The refit's prior over train.embedding_l2: 1 where a rating task trains, else BINARY_REFIT_PRIOR_SCALE."""
    return 1.0 if any(t.kind != "binary" for t in tasks) else BINARY_REFIT_PRIOR_SCALE


def refit_embedding_statistics(model: MultiTaskModel, shards: Sequence[Shard], tasks: Sequence[Task],
                               device: torch.device) -> WideStats:
    """The embedding statistics of these shards' rows together (a trainer's train and validation
    splits): refit_embeddings' sums, as tasks/wide.py refit_statistics are refit_biases'. No id is
    dropped here: the deep part is fixed by now and only the rows are fitted, for test rows where
    their ids are present; a random draw of model.id_dropout would only take rows away from them, as
    a new user's few validation rows. On the movie-like log (README) seed 0: 0.9817 -> 0.9787."""
    return embedding_statistics(model, Shard.concat(list(shards)), tasks, device, drop_ids=False)


def pack_statistics(stats: WideStats) -> dict[str, np.ndarray]:
    """Per table one float64 array [k, 1 + d + d * d]: each row's id, G, then H flattened (the wire form)."""
    return {name: np.concatenate([ids.astype(np.float64)[:, None], g, h.reshape(len(ids), -1)], axis=1)
            for name, (ids, g, h) in stats.items()}


def unpack_statistics(packed: Mapping[str, np.ndarray]) -> WideStats:
    """pack_statistics undone; ValueError for an array that is not of that form."""
    stats = {}
    for name, array in packed.items():
        width = array.shape[1] if array.ndim == 2 else 0
        dim = int(round((np.sqrt(max(4 * width - 3, 0)) - 1) / 2))
        if dim < 1 or 1 + dim + dim * dim != width:
            raise ValueError(f"embedding statistics for {name!r} are {list(array.shape)}, not [rows, 1 + d + d * d]")
        stats[name] = (array[:, 0].astype(np.int64), array[:, 1:1 + dim], array[:, 1 + dim:].reshape(-1, dim, dim))
    return stats
