"""Top-K recommendation quality of one scoring head on one merchant, computed on that merchant's client.

AUC and RMSE say how well a head predicts labels; a recommender is judged by where it puts the item
a user actually liked among the items it could have shown instead. Two protocols:

* sampled: the test item against `n_negatives` items drawn uniformly, without replacement, from the
  merchant's catalogue minus everything the user touched in this merchant's train or test split
  (the NCF protocol, He et al. 2017, used across the federated-recommendation literature). Where
  fewer than `n_negatives` such items exist, all of them are used, so that case is easier.
* full ("filtered"): the test item against the whole catalogue minus the user's other known items.

The catalogue is the set of hashed item ids seen in the merchant's train and test shards; nothing
outside the merchant is needed, so no item list ever leaves a client. A user's known items are every
item of every row of that user (hashed id) in train or test, labelled or not. Candidate rows copy the
test row and replace only the item column, so the merchant, user and any extra features stay those
of the test interaction.

Ties: a case's rank is n_higher + n_tied / 2 in expectation (the other candidates scoring strictly
higher, plus half of those scoring the same), and HR@K and NDCG@K are averaged exactly over every
order of the tied candidates (McSherry & Najork, 2008). A constant scorer therefore sits at chance
(HR@10 = 10/100 with 99 negatives) rather than at the top, and without ties the usual values result.
NaN scores count as the lowest score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch

from core.errors import InputError
from data.shards import Shard
from tasks.calibration import calibration_moments
from tasks.models import MultiTaskModel
from tasks.registry import Task
from tasks.metrics import RANKING
from tasks.personalization import (kept_where_better, local_heads, local_offsets, personal_metrics,
                                   personalization_of, shifted)
from tasks.training import predict, score, task_labels

if TYPE_CHECKING:
    from tasks.experiment import Experiment

ScoreFn = Callable[[np.ndarray], np.ndarray]  # int64 features [n, n_features] -> scores [n], higher = better

_MAX_CELLS = 1 << 22  # candidate-matrix cells per batch of positives (keys, masks): ~32 MB of float64


@dataclass(frozen=True)
class RankingConfig:
    k: int = 10
    n_negatives: int = 99
    relevant_rating: float = 4.0  # regression heads: a test row with label >= this is a positive
    seed: int = 0                 # negative sampling, and the sample of positives below
    max_positives: int = 0        # > 0: score a seeded sample of at most this many positives (cost cap)
    batch_rows: int = 4096        # most rows per score_fn call, and the size of a batch of positives


def relevant_rows(shard: Shard, task: Task, relevant_rating: float) -> np.ndarray:
    """Positives of the task: label >= relevant_rating (regression) or label == 1 (binary); unlabelled
    rows (NaN, or no such column) never are."""
    y = shard.labels.get(task.label)
    if y is None:
        return np.zeros(len(shard), bool)
    return y >= relevant_rating if task.kind == "regression" else y == 1


def model_score_fn(model: MultiTaskModel, task: Task, device: torch.device) -> ScoreFn:
    """The task head's prediction in label space (a probability or a rating) as a ranking score."""
    def score(features: np.ndarray) -> np.ndarray:
        return predict(model, features, [task], device)[task.name]
    return score


class _Interactions:
    """One merchant's catalogue and who touched what, as sorted codes user * n_items + item."""

    def __init__(self, train: Shard, test: Shard, user_position: int, item_position: int) -> None:
        features = np.concatenate([train.features, test.features])
        self.catalogue, items = np.unique(features[:, item_position], return_inverse=True)
        _, users = np.unique(features[:, user_position], return_inverse=True)
        self.n_items = len(self.catalogue)
        self.known = np.unique(users.astype(np.int64) * self.n_items + items)
        self.test_users, self.test_items = users[len(train):], items[len(train):]

    def touched(self, users: np.ndarray) -> np.ndarray:
        """bool [len(users), n_items]: the items each user has a train or test row with."""
        lo = np.searchsorted(self.known, users * self.n_items)
        hi = np.searchsorted(self.known, (users + 1) * self.n_items)
        counts = hi - lo
        case = np.repeat(np.arange(len(users)), counts)
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)  # offset of each pair into `known`
        mask = np.zeros((len(users), self.n_items), bool)
        mask[case, self.known[starts + np.arange(counts.sum())] % self.n_items] = True
        return mask


def _score(score_fn: ScoreFn, rows: np.ndarray, batch_rows: int) -> np.ndarray:
    parts = []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start:start + batch_rows]
        scores = np.asarray(score_fn(chunk), dtype=np.float64).reshape(-1)
        if len(scores) != len(chunk):
            raise ValueError(f"score_fn returned {len(scores)} scores for {len(chunk)} rows")
        parts.append(scores)
    scores = np.concatenate(parts) if parts else np.zeros(0)
    return np.where(np.isnan(scores), -np.inf, scores)


def _tie_counts(score_fn: ScoreFn, test_rows: np.ndarray, candidates: np.ndarray, valid: np.ndarray,
                target: np.ndarray, item_position: int, batch_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Score each case's valid candidates (hashed item ids [B, M]; column `target` is the test item) on
    copies of its test row; return, per case, how many other candidates score higher and how many tie."""
    case, slot = np.nonzero(valid)
    rows = test_rows[case]  # fancy indexing copies
    rows[:, item_position] = candidates[case, slot]
    scores = np.full(valid.shape, -np.inf)
    scores[case, slot] = _score(score_fn, rows, batch_rows)
    cases = np.arange(len(target))
    own = scores[cases, target][:, None]
    others = valid.copy()
    others[cases, target] = False
    return (others & (scores > own)).sum(1), (others & (scores == own)).sum(1)


def _top_k(higher: np.ndarray, tied: np.ndarray, k: int) -> dict[str, float]:
    """Mean HR@K and NDCG@K, each case averaged over the tie orders: its rank is uniform on
    [higher, higher + tied]."""
    gain_before = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])  # sum of gains of ranks < n
    lo, hi = np.minimum(higher, k), np.minimum(higher + tied + 1, k)
    return {"hr": float(np.mean((hi - lo) / (tied + 1))),
            "ndcg": float(np.mean((gain_before[hi] - gain_before[lo]) / (tied + 1)))}


def _sampled(interactions: _Interactions, positives: np.ndarray, rng: np.random.Generator, n_negatives: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates [B, 1 + m] (test item first) with m uniform picks among the items the user never
    touched: the m smallest of uniform keys, with touched items keyed at infinity."""
    users, items = interactions.test_users[positives], interactions.test_items[positives]
    keys = rng.random((len(positives), interactions.n_items))
    keys[interactions.touched(users)] = np.inf  # includes the test item itself
    m = min(n_negatives, interactions.n_items)
    picks = np.argpartition(keys, m - 1, axis=1)[:, :m] if m else np.zeros((len(positives), 0), np.int64)
    candidates = np.concatenate([items[:, None], picks], axis=1)
    valid = np.concatenate([np.ones((len(positives), 1), bool),
                            np.isfinite(np.take_along_axis(keys, picks, axis=1))], axis=1)
    return candidates, valid, np.zeros(len(positives), np.int64)


def _full(interactions: _Interactions, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates = the whole catalogue, minus the user's other touched items."""
    users, items = interactions.test_users[positives], interactions.test_items[positives]
    valid = ~interactions.touched(users)
    valid[np.arange(len(positives)), items] = True
    candidates = np.broadcast_to(np.arange(interactions.n_items), valid.shape)
    return candidates, valid, items


def ranking_metrics(score_fn: ScoreFn, train: Shard, test: Shard, task: Task, user_position: int,
                    item_position: int, cfg: RankingConfig = RankingConfig()) -> tuple[dict[str, float], int]:
    """HR@K and NDCG@K of `score_fn` on this merchant's relevant test rows, sampled and full
    ({"hr@10", "ndcg@10", "hr@10_full", "ndcg@10_full"}), and the number of relevant rows.

    ({}, 0) when the merchant has no relevant test row for the task. The count is of the positives
    scored (after `max_positives`), which is the merchant's weight when merchants are combined. Cost: n_positives *
    (1 + n_negatives) + n_positives * n_items rows scored, in calls of at most cfg.batch_rows rows.
    """
    if cfg.k < 1 or cfg.n_negatives < 0 or cfg.batch_rows < 1:
        raise InputError(f"ranking needs k >= 1, n_negatives >= 0 and batch_rows >= 1; got {cfg}")
    positives = np.flatnonzero(relevant_rows(test, task, cfg.relevant_rating))
    if len(positives) == 0:
        return {}, 0
    interactions = _Interactions(train, test, user_position, item_position)
    rng = np.random.default_rng(cfg.seed)
    if 0 < cfg.max_positives < len(positives):
        positives = np.sort(rng.choice(positives, cfg.max_positives, replace=False))
    n_items = interactions.n_items
    protocols = {
        "": (lambda batch: _sampled(interactions, batch, rng, cfg.n_negatives), 1 + cfg.n_negatives),
        "_full": (lambda batch: _full(interactions, batch), n_items),
    }
    metrics: dict[str, float] = {}
    for suffix, (build, width) in protocols.items():
        per_batch = max(1, min(cfg.batch_rows // max(width, 1), _MAX_CELLS // n_items))
        higher, tied = [], []
        for start in range(0, len(positives), per_batch):
            batch = positives[start:start + per_batch]
            candidates, valid, target = build(batch)
            h, t = _tie_counts(score_fn, test.features[batch], interactions.catalogue[candidates], valid,
                               target, item_position, cfg.batch_rows)
            higher.append(h)
            tied.append(t)
        top = _top_k(np.concatenate(higher), np.concatenate(tied), cfg.k)
        metrics[f"hr@{cfg.k}{suffix}"] = top["hr"]
        metrics[f"ndcg@{cfg.k}{suffix}"] = top["ndcg"]
    return metrics, len(positives)


def ranking_task(tasks: list[Task], choice: str) -> Task | None:
    """The head that recommends: `auto` = rating if the run has it, else click, else purchase."""
    by_name = {t.name: t for t in tasks}
    if choice != "auto":
        if choice not in by_name:
            raise InputError(f"ranking.task={choice} is not a task of this run ({', '.join(by_name)})")
        return by_name[choice]
    return next((by_name[n] for n in ("rating", "click", "purchase") if n in by_name), None)


def wants_ranking(cfg: Mapping[str, Any], final: bool) -> bool:
    """Ranking costs many scored rows, so by default only the final evaluation of the kept model has it."""
    ranking = cfg["ranking"]
    return bool(ranking["enabled"]) and (final or bool(ranking["every_round"]))


def rank_merchant(model: MultiTaskModel, train: Shard, test: Shard, tasks: list[Task], features: list[str],
                  ranking_cfg: dict, device: torch.device) -> tuple[dict[str, float], int]:
    """Ranking metrics of one merchant's model from the run config's `ranking` block."""
    options = dict(ranking_cfg)
    task = ranking_task(tasks, str(options.pop("task", "auto")))
    options.pop("enabled", None)
    options.pop("every_round", None)
    if task is None or "user_id" not in features or "item_id" not in features:
        return {}, 0
    return ranking_metrics(model_score_fn(model, task, device), train, test, task, features.index("user_id"),
                           features.index("item_id"), RankingConfig(**options))


Scores = tuple[dict[str, dict[str, float]], dict[str, int]]  # per-task metrics, per-task label counts


def evaluate_merchant(model: MultiTaskModel, experiment: "Experiment", train: Shard | None, test: Shard, val: Shard,
                      with_ranking: bool) -> tuple[Scores, Scores]:
    """One merchant's (test, validation) scores, the test ones with the ranking pseudo-task when asked:
    the one scoring that federated clients and the centralized/local baselines both use. Under
    personalization=local_bias the test metrics also hold `<metric>_personal`: the scores with this
    merchant's own offsets (tasks/personalization.py), fitted on its validation split, its latest
    rows, when that holds the task's labels (else on its train split); under local_heads, with heads
    trained on its train split where they lower its validation loss."""
    tasks, device = experiment.tasks, experiment.device
    test_predictions = predict(model, test.features, tasks, device)
    val_predictions = predict(model, val.features, tasks, device) if len(val) else None
    metrics, counts = score(test_predictions, test, tasks)
    mode, l2, steps = personalization_of(experiment.cfg)
    personal_predictions = None
    if mode == "local_bias":
        offsets = local_offsets(model, tasks, device, (val, val_predictions), train, l2, steps)
        personal_predictions = {t.name: shifted(t, test_predictions[t.name], offsets[t.name]) for t in tasks}
    elif mode == "local_heads" and train is not None:
        personal = local_heads(model, experiment.new_weighting(), train, tasks, experiment.cfg["train"], device, l2,
                               steps, int(experiment.cfg["seed"]))
        personal_predictions = predict(personal, test.features, tasks, device)
        if val_predictions is not None:
            keep = kept_where_better(tasks, val, val_predictions, predict(personal, val.features, tasks, device))
            personal_predictions = {t: p if keep[t] else test_predictions[t] for t, p in personal_predictions.items()}
    if personal_predictions is not None:
        personal_scores, _ = score(personal_predictions, test, tasks)
        for task, values in personal_metrics(personal_scores).items():
            metrics[task].update(values)
    if with_ranking:
        if train is None:
            raise ValueError("ranking filters the user's training items: pass the merchant's train split")
        ranking, n = rank_merchant(model, train, test, tasks, experiment.features, experiment.cfg["ranking"], device)
        if n:
            metrics[RANKING], counts[RANKING] = ranking, n
    validation = score(val_predictions, val, tasks) if val_predictions is not None else ({}, {})
    for task, y in zip(tasks, task_labels(val, tasks).values()) if val_predictions is not None else ():
        mask = np.isfinite(y)
        if mask.any():  # what the server recalibrates the kept model's heads by (tasks/calibration.py)
            validation[0][task.name].update(calibration_moments(task, y[mask], val_predictions[task.name][mask]))
    return (metrics, counts), validation
