"""Per-task metrics and the one rule for combining merchants: a mean weighted by test labels."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

Metrics = dict[str, float]


# sklearn.metrics is imported where it is used: at module load it cost every client process ~1 s.


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> Metrics:
    from sklearn.metrics import mean_absolute_error
    return {"rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
            "mae": float(mean_absolute_error(y_true, y_pred))}


def binary_metrics(y_true: np.ndarray, p_pred: np.ndarray) -> Metrics:
    """AUC is NaN where a merchant's test split holds one class only; the combiner then skips it."""
    from sklearn.metrics import log_loss, roc_auc_score
    p = np.clip(p_pred.astype(np.float64), 1e-7, 1 - 1e-7)
    auc = float(roc_auc_score(y_true, p)) if len(np.unique(y_true)) == 2 else math.nan
    return {"auc": auc, "logloss": float(log_loss(y_true, p, labels=[0, 1]))}


def combine_merchants(per_merchant: Mapping[str, Mapping[str, Metrics]],
                      counts: Mapping[str, Mapping[str, int]]) -> dict[str, Metrics]:
    """Weighted mean over merchants of every task metric, weights = that task's test labels.

    Undefined values (NaN) are left out of both numerator and denominator.
    """
    sums: dict[str, dict[str, float]] = {}
    weights: dict[str, dict[str, float]] = {}
    for merchant, tasks in per_merchant.items():
        for task, metrics in tasks.items():
            n = counts[merchant].get(task, 0)
            for name, value in metrics.items():
                if n > 0 and value is not None and not math.isnan(value):
                    sums.setdefault(task, {}).setdefault(name, 0.0)
                    weights.setdefault(task, {}).setdefault(name, 0.0)
                    sums[task][name] += n * value
                    weights[task][name] += n
    return {task: {name: sums[task][name] / weights[task][name] for name in sums[task]} for task in sums}


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """The sampling error of one model's AUC on a test split of this many positives and negatives
    (Hanley & McNeil, 1982: exact for exponential scores, about 15 % high for binormal ones); NaN where
    the AUC is undefined. A few dozen positives make it several hundredths: a margin far inside it is a
    tie another test window could reverse."""
    if positives < 1 or negatives < 1 or not math.isfinite(auc):
        return math.nan
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    variance = (auc * (1.0 - auc) + (positives - 1) * (q1 - auc * auc)
                + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def rmse_standard_error(rmse: float, n: int) -> float:
    """The sampling error of an RMSE over n test rows with normal errors (delta method: RMSE / sqrt(2n))."""
    return rmse / math.sqrt(2.0 * n) if n > 0 and math.isfinite(rmse) else math.nan


def auc_difference_error(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """The sampling error of AUC(a) - AUC(b), two models' scores of the same rows with binary labels y
    (DeLong et al., 1988: each positive's and negative's share of the pairs it wins, per model; ties
    count half). Scored on the same rows, two models' AUCs move together with the test window, so
    their difference varies far less than either (auc_standard_error); NaN where an AUC is undefined."""
    from scipy.stats import rankdata
    y = np.asarray(y) > 0.5
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return math.nan

    def components(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(scores, np.float64)
        ranks = rankdata(scores)
        wins_of_positives = (ranks[y] - rankdata(scores[y])) / n   # negatives each positive beats
        losses_of_negatives = (ranks[~y] - rankdata(scores[~y])) / m  # positives each negative beats
        return wins_of_positives, 1.0 - losses_of_negatives

    positives_a, negatives_a = components(a)
    positives_b, negatives_b = components(b)
    variance = np.var(positives_a - positives_b, ddof=1) / m + np.var(negatives_a - negatives_b, ddof=1) / n
    return math.sqrt(max(float(variance), 0.0))


def rmse_difference_error(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """The sampling error of RMSE(a) - RMSE(b) on the same rows (delta method on the rows' squared
    errors: RMSE's derivative in the mean squared error is 1 / (2 RMSE)); NaN under two rows."""
    if len(y) < 2:
        return math.nan
    squared_a, squared_b = (np.asarray(y, np.float64) - a) ** 2, (np.asarray(y, np.float64) - b) ** 2
    rmse_a, rmse_b = math.sqrt(squared_a.mean()), math.sqrt(squared_b.mean())
    if rmse_a == 0 or rmse_b == 0:
        return math.nan
    return float(np.std(squared_a / (2 * rmse_a) - squared_b / (2 * rmse_b), ddof=1) / math.sqrt(len(y)))


def combined_standard_error(per_merchant: Mapping[str, tuple[float, int]]) -> float:
    """The standard error of combine_merchants' mean from each merchant's (standard error, test labels),
    merchants independent; undefined ones are left out, as combine_merchants leaves out their metric."""
    defined = [(se, n) for se, n in per_merchant.values() if n > 0 and math.isfinite(se)]
    total = sum(n for _, n in defined)
    return math.sqrt(sum((n * se) ** 2 for se, n in defined)) / total if total else math.nan


COUNT = "num-labels"  # per-task label count travelling with a task's metrics
RANKING = "ranking"   # pseudo-task holding HR/NDCG@K, weighted across merchants by positives scored


def flatten(nested: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{task: {name: v}} -> {"task.name": v}, the form of a Flower MetricRecord; NaN is left out."""
    return {f"{task}.{name}": value for task, metrics in nested.items() for name, value in metrics.items()
            if not (isinstance(value, float) and math.isnan(value))}


def unflatten(flat: Mapping[str, float]) -> dict[str, dict[str, float]]:
    nested: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        if "." in key:
            task, name = key.split(".", 1)
            nested.setdefault(task, {})[name] = value
    return nested


def with_counts(metrics: Mapping[str, Metrics], counts: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Attach each task's label count to its metrics, so one record carries both."""
    return {task: {**metrics.get(task, {}), COUNT: n} for task, n in counts.items()}


def combine_counted(per_merchant: Mapping[str, Mapping[str, Metrics]], counts: Mapping[str, Mapping[str, int]]
                    ) -> dict[str, dict[str, float]]:
    """combine_merchants' means, each task's label count over all merchants attached (with_counts): how
    validation metrics are kept, so a rule reading them knows how much evidence each one holds."""
    totals: dict[str, int] = {}
    for merchant_counts in counts.values():
        for task, n in merchant_counts.items():
            totals[task] = totals.get(task, 0) + n
    return with_counts(combine_merchants(per_merchant, counts), totals)


def split_counts(nested: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, Metrics], dict[str, int]]:
    metrics = {t: {k: float(v) for k, v in m.items() if k != COUNT} for t, m in nested.items()}
    counts = {t: int(m.get(COUNT, 0)) for t, m in nested.items()}
    return {t: m for t, m in metrics.items() if m}, counts
