"""Simple pooled references on exactly the project's splits and metrics: the yardstick a federated
model has to beat.

    python -m benchmarks.references [hydra overrides...]     (e.g. data=table data.path=my.csv)

prints how five simple methods do on a table, per task, combined over merchants like the models are:

- mean:               the train mean (rating) or base rate (binary), one value for everyone.
- merchant mean:      the same per merchant, from the merchant's own train labels (the global mean
                      where a merchant has no train label for the task).
- bias model:         mu + b_user + b_item + b_merchant (the classic baseline predictor, Koren 2008),
                      in label space for ratings and in logit space for binary tasks. Fitted by block
                      coordinate Newton: each sweep updates mu, then every user, item and merchant bias
                      in closed form, b_x += (sum(g) - lam * b_x) / (lam + sum(h)) with g, h the loss's
                      gradient and curvature per row. For squared error h = 1 and this is exactly the
                      alternating regularised mean b_x = sum(residual without b_x) / (lam + n_x); for
                      the logistic loss h = p(1 - p) and it is an exact Newton step (each row has one id
                      per group, so the Hessian within a group is diagonal). lam is tuned on validation.
- linear (one-hot):   scikit-learn on sparse one-hot user, item and merchant columns: LogisticRegression
                      (liblinear) for binary tasks (C tuned), Ridge for the rating (alpha tuned). It
                      fits the same additive model as the bias model with one shared penalty, so the
                      two agree closely: a cross-check more than a new method.
- MF:                 matrix factorisation, mu + b_u + b_i + b_m + p_u . q_i (dim 32): squared error for
                      the rating, BCE on the logit for binary tasks (logistic MF); SparseAdam in
                      mini-batches on one CPU thread, L2 on the batch's factors and biases tuned on
                      validation, epochs chosen by early stopping on the validation loss.

They run pooled (every merchant's train rows together): they are references, not product. "user" and
"item" are the shard columns of the features user_id and item_id, "merchant" is the merchant whose
shard a row comes from, and every other hashed feature (data.features.categorical, e.g. an item
category) joins as one more id column: a bias per value in the bias model and MF, one-hot columns in
the linear model. So the references read what the models read (numerical features excepted). Ids are the shards' hashed buckets, the very
ids the models see. Each task's vocabularies come from the train rows that carry its label; an id
never seen there (cold) gets the baseline's zero: no bias, a zero vector.

Tuning looks at the validation split only; where the run's models then refit their biases with the
validation rows (refit_biases, the default), each reference is then fitted on the train and
validation rows together with the chosen settings (MF: the chosen number of epochs), else on the
train rows. Without a validation split (data.val_fraction=0, the synthetic default) the references
hold out a seeded HOLDOUT share of the pooled train rows to tune on, then refit on every train row.
Either way they fit exactly the rows the models learn from. Test metrics are computed per merchant with tasks.training.score and
combined with tasks.metrics.combine_merchants (weights = test labels), exactly like the models'.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression, Ridge
from torch import nn

from core.errors import InputError
from data.features import feature_columns
from data.shards import Shard
from tasks.metrics import Metrics, combine_merchants
from tasks.registry import Task
from tasks.training import score, task_labels

USER, ITEM = "user_id", "item_id"
HOLDOUT = 0.1           # share of pooled train rows used for tuning when there is no validation split
EPS = 1e-7              # probabilities are clipped like tasks.metrics.binary_metrics does
IDENTITY, LOGIT = "identity", "logit"

BIAS_LAMBDAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
BIAS_SWEEPS = 25
LOGISTIC_CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
RIDGE_ALPHAS = (1.0, 3.0, 10.0, 30.0, 100.0)
MF_L2S = (1e-3, 1e-2, 3e-2, 1e-1)
MF_DIM = 32
MF_MAX_EPOCHS = 40
MF_PATIENCE = 3
MF_BATCH = 1024
MF_LR = 0.01


# ---------------------------------------------------------------------------------------------------
# Rows: one task's labelled rows of one split, pooled over merchants, with ids encoded on train.

@dataclass
class MerchantSplits:
    train: Shard
    val: Shard
    test: Shard


@dataclass
class Rows:
    """Raw ids [n, 3 + k] (user bucket, item bucket, merchant index, then the k other hashed features'
    buckets) and labels [n] (NaN = none)."""
    ids: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, positions: np.ndarray) -> "Rows":
        return Rows(self.ids[positions], self.y[positions])

    def labelled(self) -> "Rows":
        return self.take(np.flatnonzero(np.isfinite(self.y)))

    @staticmethod
    def concat(parts: Sequence["Rows"]) -> "Rows":
        if not parts:
            return Rows(np.zeros((0, 3), np.int64), np.zeros(0))
        return Rows(np.concatenate([p.ids for p in parts]), np.concatenate([p.y for p in parts]))


def shard_rows(shard: Shard, task: Task, merchant: int, columns: Sequence[int]) -> Rows:
    """Every row of a shard (labelled or not) as (user, item, merchant, other features...) ids and the
    task's labels; `columns` are the shard's user, item and other feature columns (id_columns)."""
    n = len(shard)
    ids = np.column_stack([shard.features[:, columns[0]], shard.features[:, columns[1]],
                           np.full(n, merchant, np.int64),
                           *(shard.features[:, c] for c in columns[2:])]).astype(np.int64)
    return Rows(ids, task_labels(shard, [task])[task.name].astype(np.float64))


@dataclass
class Vocabulary:
    """Per column, the sorted ids seen in train; encode() maps an id to its position, -1 if cold."""
    values: list[np.ndarray]

    @staticmethod
    def fit(ids: np.ndarray) -> "Vocabulary":
        return Vocabulary([np.unique(ids[:, j]) for j in range(ids.shape[1])])

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)

    def encode(self, ids: np.ndarray) -> np.ndarray:
        codes = np.full(ids.shape, -1, np.int64)
        for j, vocab in enumerate(self.values):
            if len(vocab):
                pos = np.minimum(np.searchsorted(vocab, ids[:, j]), len(vocab) - 1)
                codes[:, j] = np.where(vocab[pos] == ids[:, j], pos, -1)
        return codes


# ---------------------------------------------------------------------------------------------------
# Links and losses: the only thing that differs between the rating and the binary tasks.

def link_of(task: Task) -> str:
    return LOGIT if task.kind == "binary" else IDENTITY


def to_label_space(link: str, score_: np.ndarray) -> np.ndarray:
    if link == LOGIT:
        return np.clip(1.0 / (1.0 + np.exp(-score_)), EPS, 1 - EPS)
    return score_


def to_link_space(link: str, value: float) -> float:
    if link == LOGIT:
        p = min(max(value, EPS), 1 - EPS)
        return math.log(p / (1 - p))
    return value


def loss(link: str, y: np.ndarray, pred: np.ndarray) -> float:
    """Mean squared error (rating) or log-loss (binary) of label-space predictions: what tuning minimises."""
    if len(y) == 0:
        return math.nan
    if link == LOGIT:
        p = np.clip(pred, EPS, 1 - EPS)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(np.mean((y - pred) ** 2))


def gradient_curvature(link: str, y: np.ndarray, score_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, minus the loss's derivative and its second derivative in the score (link space)."""
    if link == LOGIT:
        p = 1.0 / (1.0 + np.exp(-score_))
        return y - p, np.maximum(p * (1 - p), 1e-12)
    return y - score_, np.ones_like(score_)


# ---------------------------------------------------------------------------------------------------
# The models: fit(codes, sizes, y, link, settings) -> model; predict(model, codes) -> label space.
# codes are train-vocabulary positions [n, 3 + k] (user, item, merchant, other features), -1 = cold.

def fit_mean(codes, sizes, y, link, settings, val=None, seed=0):
    return float(np.mean(y)), settings


def predict_mean(model, codes):
    return np.full(len(codes), model)


def fit_merchant_mean(codes, sizes, y, link, settings, val=None, seed=0):
    m = codes[:, 2]
    counts = np.bincount(m, minlength=sizes[2])
    sums = np.bincount(m, weights=y, minlength=sizes[2])
    mu = float(np.mean(y))
    return (mu, np.where(counts > 0, sums / np.maximum(counts, 1), mu)), settings


def predict_merchant_mean(model, codes):
    mu, means = model
    m = codes[:, 2]
    return np.where(m >= 0, means[np.maximum(m, 0)], mu)


@dataclass
class BiasModel:
    link: str
    mu: float
    biases: list[np.ndarray]  # per id column: one bias per train id

    def scores(self, codes: np.ndarray) -> np.ndarray:
        s = np.full(len(codes), self.mu)
        for j, b in enumerate(self.biases):
            c = codes[:, j]
            s += np.where(c >= 0, b[np.maximum(c, 0)], 0.0)
        return s


def fit_bias(codes, sizes, y, link, settings, val=None, seed=0, sweeps: int = BIAS_SWEEPS):
    """mu + one bias per id in each column, L2 `lam` on the biases (mu is free); block coordinate Newton."""
    lam = float(settings["lam"])
    model = BiasModel(link, to_link_space(link, float(np.mean(y))), [np.zeros(n) for n in sizes])
    for _ in range(sweeps):
        g, h = gradient_curvature(link, y, model.scores(codes))
        model.mu += float(np.clip(g.sum() / h.sum(), -5, 5))
        for j, b in enumerate(model.biases):
            g, h = gradient_curvature(link, y, model.scores(codes))
            c = codes[:, j]
            step = (np.bincount(c, g, len(b)) - lam * b) / (lam + np.bincount(c, h, len(b)))
            b += np.clip(step, -5, 5)
    return model, settings


def predict_bias(model: BiasModel, codes):
    return to_label_space(model.link, model.scores(codes))


def one_hot(codes: np.ndarray, sizes: Sequence[int]) -> sp.csr_matrix:
    """Sparse [n, sum(sizes)] with a 1 per known id; a cold id has no column set."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows, cols = [], []
    for j in range(codes.shape[1]):
        known = np.flatnonzero(codes[:, j] >= 0)
        rows.append(known)
        cols.append(codes[known, j] + offsets[j])
    rows_, cols_ = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(rows_)), (rows_, cols_)), shape=(len(codes), int(sum(sizes))))


@dataclass
class LinearModel:
    link: str
    sizes: tuple[int, ...]
    estimator: Any


def fit_linear(codes, sizes, y, link, settings, val=None, seed=0):
    x = one_hot(codes, sizes)
    if link == LOGIT:
        if len(np.unique(y)) < 2:  # one class only: the base rate is all there is to learn
            return LinearModel(link, tuple(sizes), float(np.mean(y))), settings
        # liblinear (primal trust-region Newton): ~10x faster than lbfgs on one-hot columns, same optimum;
        # it penalises the intercept as a feature of value intercept_scaling, 10 makes that negligible.
        estimator = LogisticRegression(C=float(settings["C"]), solver="liblinear", intercept_scaling=10.0,
                                       tol=1e-4, max_iter=1000, random_state=0)
    else:
        estimator = Ridge(alpha=float(settings["alpha"]), solver="sparse_cg", tol=1e-6, max_iter=2000)
    return LinearModel(link, tuple(sizes), estimator.fit(x, y)), settings


def predict_linear(model: LinearModel, codes):
    if isinstance(model.estimator, float):
        return np.full(len(codes), model.estimator)
    x = one_hot(codes, model.sizes)
    if model.link == LOGIT:
        return np.clip(model.estimator.predict_proba(x)[:, 1], EPS, 1 - EPS)
    return model.estimator.predict(x)


class Factors(nn.Module):
    """p_u . q_i; the last row of each table is the cold id's zero vector (padding, never trained)."""

    def __init__(self, sizes: Sequence[int], dim: int):
        super().__init__()
        self.sizes = torch.as_tensor(tuple(sizes[:2]))
        self.tables = nn.ModuleList(nn.Embedding(n + 1, dim, padding_idx=n, sparse=True) for n in sizes[:2])
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.1 / math.sqrt(dim))
            with torch.no_grad():
                table.weight[-1].zero_()

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The interaction term and the batch's L2 term (squared factors, mean over rows)."""
        c = torch.where(codes[:, :2] >= 0, codes[:, :2], self.sizes)
        p, q = (table(c[:, j]) for j, table in enumerate(self.tables))
        return (p * q).sum(1), (p.pow(2).sum(1) + q.pow(2).sum(1)).mean()


def _mf_loss(link: str, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(s, y) if link == LOGIT else F.mse_loss(s, y)


@dataclass
class FactorModel:
    bias: BiasModel
    factors: Factors

    @torch.no_grad()
    def scores(self, codes: np.ndarray) -> np.ndarray:
        return self.bias.scores(codes) + self.factors(torch.as_tensor(codes))[0].double().numpy()


def fit_mf(codes, sizes, y, link, settings, val=None, seed=0):
    """The bias model (settings['lam']) plus p_u . q_i learned on top of it, biases fixed.

    SparseAdam on mini-batches of the loss (squared error or BCE on the logit) + l2 * mean squared
    factors. With `val` (codes, y) the epochs stop at the best validation loss (patience MF_PATIENCE;
    epoch 0 is the bias model alone) and the best epoch's factors are kept; without, settings['epochs']
    run."""
    l2 = float(settings["l2"])
    bias, _ = fit_bias(codes, sizes, y, link, settings)
    max_epochs = MF_MAX_EPOCHS if val is not None else int(settings["epochs"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = FactorModel(bias, Factors(sizes, MF_DIM))
        optimizer = torch.optim.SparseAdam(list(model.factors.parameters()), lr=MF_LR)
        x, t = torch.as_tensor(codes), torch.as_tensor(y, dtype=torch.float32)
        offset = torch.as_tensor(bias.scores(codes), dtype=torch.float32)
        generator = torch.Generator().manual_seed(seed)

        def val_loss() -> float:
            return loss(link, val[1], to_label_space(link, model.scores(val[0])))
        best, best_epoch, since = (val_loss(), 0, 0) if val is not None else (math.inf, 0, 0)
        best_state = copy.deepcopy(model.factors.state_dict())
        for epoch in range(1, max_epochs + 1):
            for idx in torch.randperm(len(t), generator=generator).split(MF_BATCH):
                interaction, penalty = model.factors(x[idx])
                optimizer.zero_grad()
                (_mf_loss(link, offset[idx] + interaction, t[idx]) + l2 * penalty).backward()
                optimizer.step()
            if val is None:
                continue
            current = val_loss()
            if not math.isfinite(current):
                raise InputError(f"MF reference diverged at epoch {epoch} (l2={l2})")
            if current < best - 1e-6:
                best, best_epoch, best_state, since = current, epoch, copy.deepcopy(model.factors.state_dict()), 0
            else:
                since += 1
                if since >= MF_PATIENCE:
                    break
        if val is not None:
            model.factors.load_state_dict(best_state)
        return model, {**settings, "epochs": best_epoch if val is not None else max_epochs}
    finally:
        torch.set_num_threads(threads)


def predict_mf(model: FactorModel, codes):
    return to_label_space(model.bias.link, model.scores(codes))


# ---------------------------------------------------------------------------------------------------
# The references, their grids, and tuning.

@dataclass(frozen=True)
class Reference:
    name: str
    fit: Callable[..., tuple[Any, dict]]
    predict: Callable[[Any, np.ndarray], np.ndarray]
    grid: Callable[[str], list[dict]]            # link -> settings to try
    builds_on: str | None = None                  # a reference whose chosen settings every grid entry takes
    describe: Callable[[str, dict], str] = lambda link, s: ", ".join(f"{k}={v:g}" for k, v in s.items())


REFERENCES: tuple[Reference, ...] = (
    Reference("mean", fit_mean, predict_mean, lambda link: [{}]),
    Reference("merchant mean", fit_merchant_mean, predict_merchant_mean, lambda link: [{}]),
    Reference("bias model", fit_bias, predict_bias, lambda link: [{"lam": v} for v in BIAS_LAMBDAS]),
    Reference("linear (one-hot)", fit_linear, predict_linear,
              lambda link: [{"C": c} for c in LOGISTIC_CS] if link == LOGIT else [{"alpha": a} for a in RIDGE_ALPHAS],
              describe=lambda link, s: ("logistic regression, " if link == LOGIT else "ridge, ")
              + ", ".join(f"{k}={v:g}" for k, v in s.items())),
    Reference("MF", fit_mf, predict_mf, lambda link: [{"l2": v} for v in MF_L2S], builds_on="bias model"),
)
NAMES = tuple(r.name for r in REFERENCES)


def tune(reference: Reference, train: Rows, val: Rows, link: str, seed: int = 0, base: Mapping[str, Any] = {}
         ) -> tuple[Any, Vocabulary, dict, dict[str, float]]:
    """Fit every grid setting (each joined to `base`) on `train`, keep the lowest validation loss.

    Returns the model, its vocabulary, the chosen settings (MF: with the epochs it stopped at) and the
    validation loss of every setting tried (keyed by its description)."""
    vocab = Vocabulary.fit(train.ids)
    codes, val_codes = vocab.encode(train.ids), vocab.encode(val.ids)
    best, tried = None, {}
    for settings in reference.grid(link):
        settings = {**base, **settings}
        model, used = reference.fit(codes, vocab.sizes, train.y, link, settings, val=(val_codes, val.y), seed=seed)
        value = loss(link, val.y, reference.predict(model, val_codes))
        tried[reference.describe(link, used) or "-"] = value
        if best is None or value < best[0]:
            best = (value, model, used)
    assert best is not None
    return best[1], vocab, best[2], tried


def fit_reference(reference: Reference, train: Rows, val: Rows, link: str, seed: int = 0,
                  base: Mapping[str, Any] = {}, refit: bool = False) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """A predictor (raw ids -> label-space predictions) and the chosen settings.

    With no validation rows, tune on a seeded HOLDOUT share of train, then refit on all of train; a
    reference with nothing to tune (a single setting) just fits. `refit`: the validation rows join
    the fit once the settings are chosen on them (the run's models refit their biases so:
    refit_biases), else they only tune."""
    grid = reference.grid(link)
    every = Rows.concat([train, val]) if refit else train
    if len(grid) == 1 and not reference.builds_on:
        vocab = Vocabulary.fit(every.ids)
        model, settings = reference.fit(vocab.encode(every.ids), vocab.sizes, every.y, link, {**base, **grid[0]},
                                        seed=seed)
    elif len(val) == 0 or refit:
        if len(val) == 0:
            if len(train) < 2:
                raise InputError("the references need at least 2 labelled train rows per task")
            order = np.random.default_rng(seed).permutation(len(train))
            n_out = max(1, int(round(HOLDOUT * len(train))))
            train, val = train.take(np.sort(order[n_out:])), train.take(np.sort(order[:n_out]))
        _, _, settings, _ = tune(reference, train, val, link, seed, base)
        vocab = Vocabulary.fit(every.ids)
        model, settings = reference.fit(vocab.encode(every.ids), vocab.sizes, every.y, link, settings, seed=seed)
    else:
        model, vocab, settings, _ = tune(reference, train, val, link, seed, base)
    return (lambda ids: reference.predict(model, vocab.encode(ids))), settings


# ---------------------------------------------------------------------------------------------------
# Running them all on a run's merchants.

@dataclass
class ReferenceResult:
    name: str
    final: dict[str, Metrics]                      # test metrics, merchants combined by test labels
    per_merchant: dict[str, dict[str, Metrics]]
    chosen: dict[str, str]                         # task -> the settings validation chose
    seconds: float = 0.0                           # fitting and tuning, all tasks
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # merchant -> task -> its test split's predictions, every row (a model's paired comparison: make bench)
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)


def id_columns(features: Sequence[str]) -> tuple[int, ...]:
    """Shard columns of the user, the item, then every other hashed feature (`features`: hashed names)."""
    features = list(features)
    missing = [f for f in (USER, ITEM) if f not in features]
    if missing:
        raise InputError(f"the references need the features {USER} and {ITEM} (data.features is {features})")
    others = [k for k, f in enumerate(features) if f not in (USER, ITEM)]
    return (features.index(USER), features.index(ITEM), *others)


def run_references(splits: Mapping[str, MerchantSplits], tasks: Sequence[Task], features: Sequence[str],
                   seed: int = 0, names: Sequence[str] = NAMES, refit: bool = False) -> dict[str, ReferenceResult]:
    """Every reference (or those in `names`) fitted pooled per task, scored per merchant on its own test
    split and combined like the models' metrics; `refit`: fitted on train and validation once tuned
    (fit_reference)."""
    columns = id_columns(features)
    merchants = list(splits)
    by_name = {r.name: r for r in REFERENCES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(f"unknown reference(s) {', '.join(unknown)} (known: {', '.join(NAMES)})")
    predictors: dict[str, dict[str, Callable]] = {n: {} for n in names}
    chosen: dict[str, dict[str, str]] = {n: {} for n in names}
    seconds = {n: 0.0 for n in names}
    for task in tasks:
        pooled = {split: Rows.concat([shard_rows(getattr(splits[m], split), task, k, columns)
                                      for k, m in enumerate(merchants)]).labelled() for split in ("train", "val")}
        if len(pooled["train"]) == 0:
            continue
        link = link_of(task)
        settings_of: dict[str, dict] = {}

        def fit(name: str) -> Callable:
            reference = by_name[name]
            base = {}
            if reference.builds_on:
                if reference.builds_on not in settings_of:
                    fit(reference.builds_on)
                base = settings_of[reference.builds_on]
            predictor, settings_of[name] = fit_reference(reference, pooled["train"], pooled["val"], link, seed, base,
                                                          refit)
            return predictor

        for name in sorted(names, key=NAMES.index):
            start = time.perf_counter()
            predictors[name][task.name] = fit(name)
            seconds[name] += time.perf_counter() - start
            chosen[name][task.name] = by_name[name].describe(link, settings_of[name]) or "-"
    results = {}
    for name in names:
        per_merchant, counts, predicted = {}, {}, {}
        fitted = predictors[name]
        scored = [t for t in tasks if t.name in fitted]
        for k, merchant in enumerate(merchants):
            test = splits[merchant].test
            predictions = {t.name: fitted[t.name](shard_rows(test, t, k, columns).ids) for t in scored}
            per_merchant[merchant], counts[merchant] = score(predictions, test, scored)
            predicted[merchant] = predictions
        results[name] = ReferenceResult(name, combine_merchants(per_merchant, counts), per_merchant, chosen[name],
                                        seconds[name], counts, predicted)
    return results


def gather_splits(cfg: Mapping[str, Any]) -> tuple[dict[str, MerchantSplits], list[Task], list[str]]:
    """Each merchant's (train, val, test) shards exactly as the modes see them, the run's tasks and
    hashed features. The one place that knows how shards are read."""
    from tasks.experiment import open_experiment
    experiment = open_experiment(cfg, prepare=True)
    splits = {m: MerchantSplits(*(experiment.shard(m, s) for s in ("train", "val", "test")))
              for m in experiment.index.merchant_ids}
    return splits, experiment.tasks, feature_columns(experiment.cfg["data"]).hashed


def refits(cfg: Mapping[str, Any], splits: Mapping[str, MerchantSplits]) -> bool:
    """Whether the run's models refit their biases on the validation rows once the round is chosen
    (refit_biases): the references then fit on them too once tuned, so both use the same rows."""
    from tasks.experiment import bias_refit_steps
    from tasks.selection import resolve_rule
    rule = resolve_rule(str(cfg["select_round"]), sum(len(s.val) for s in splits.values()))
    return bias_refit_steps({**cfg, "select_round": rule}) > 0


def tuning_note(splits: Mapping[str, MerchantSplits], refit: bool = False) -> str:
    if any(len(s.val) for s in splits.values()):
        return ("settings chosen on the validation split, then fitted on the train and validation splits "
                "together, as the models' biases are refitted (refit_biases)" if refit else
                "settings chosen on the validation split, fitted on the train split")
    return (f"no validation split (data.val_fraction=0): settings chosen on a seeded {HOLDOUT:.0%} holdout of "
            "the pooled train rows, then refitted on all of them")


def chosen_table(results: Mapping[str, ReferenceResult], task_names: Sequence[str]) -> str:
    """The settings validation chose, per reference (those with something to choose) and task."""
    from benchmarks.report import markdown
    return markdown(["chosen settings", *task_names],
                    [[name, *(r.chosen.get(t, "-") for t in task_names)] for name, r in results.items()
                     if any(v != "-" for v in r.chosen.values())])


def table(results: Mapping[str, ReferenceResult], tasks: Sequence[Task]) -> str:
    from benchmarks.report import markdown
    cols = [(t.name, m) for t in tasks for m in t.metric_names]

    def fmt(v):
        return "-" if v is None or not math.isfinite(v) else f"{v:.4f}"
    rows = [[name, *(fmt(r.final.get(t, {}).get(m)) for t, m in cols), f"{r.seconds:.1f}"]
            for name, r in results.items()]
    main = markdown(["reference (pooled)", *(f"{t} {m}" for t, m in cols), "seconds"], rows)
    return f"{main}\n\n{chosen_table(results, [t.name for t in tasks])}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="How simple pooled methods do on a table: "
                                     "the references of make bench, alone.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (data=table data.path=..., data.val_fraction=0.1)")
    args = parser.parse_args(argv)
    from core.config import compose_config, to_plain
    try:
        cfg = to_plain(compose_config(args.overrides))
        start = time.perf_counter()
        splits, tasks, features = gather_splits(cfg)
        loaded = time.perf_counter() - start
        refit = refits(cfg, splits)
        results = run_references(splits, tasks, features, seed=int(cfg["seed"]), refit=refit)
    except InputError as exc:
        print(f"references: error: {exc}", file=sys.stderr)
        return 2
    print(table(results, tasks))
    print(f"{len(splits)} merchants; {tuning_note(splits, refit)}")
    print(f"shards read in {loaded:.1f} s, references fitted and scored in {time.perf_counter() - start - loaded:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
