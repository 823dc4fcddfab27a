"""What one merchant may tell the server about its data: counts and sums, never rows.

A node summarises its own prepared splits; the server pools the summaries of every node into the
federation's label statistics. The pooled mean and standard deviation equal those of the pooled rows
because count, sum and sum of squares add up across merchants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelMoments:
    """Sufficient statistics of one label column over some rows: enough for an exact pooled mean and std."""
    count: int
    total: float
    total_sq: float

    @staticmethod
    def of(values: np.ndarray) -> "LabelMoments":
        """Moments of the labelled (finite) values; float64 sums, so pooling loses nothing measurable."""
        known = np.asarray(values, dtype=np.float64)
        known = known[np.isfinite(known)]
        return LabelMoments(int(len(known)), float(known.sum()), float(np.square(known).sum()))


@dataclass(frozen=True)
class DataSummary:
    """One merchant's aggregates: the setup reply of its node."""
    merchant_id: str
    label_columns: list[str]                          # label columns with at least one label in its rows
    rows: dict[str, int]                              # split -> rows
    labels: dict[str, dict[str, int]]                 # split -> label column -> labelled rows
    train_moments: dict[str, LabelMoments] = field(default_factory=dict)  # label column -> train moments
    feature_moments: dict[str, LabelMoments] = field(default_factory=dict)  # numerical feature -> train moments
    bad_rows: dict[str, int] = field(default_factory=dict)  # reason -> rows left out (data.on_bad_rows=skip)
    # hashed column -> validation rows whose value no train row of this merchant has: how often the
    # model meets a cold id, which sets model.id_dropout=auto (tasks/models/base.py)
    cold_val: dict[str, int] = field(default_factory=dict)

    def to_flat(self) -> dict[str, Any]:
        """Flat keys and scalar (or list of str) values: the shape of a Flower ConfigRecord."""
        flat: dict[str, Any] = {"merchant-id": self.merchant_id, "label-columns": list(self.label_columns)}
        for split in SPLITS:
            flat[f"rows.{split}"] = int(self.rows.get(split, 0))
            for column, n in self.labels.get(split, {}).items():
                flat[f"labels.{split}.{column}"] = int(n)
        for column, m in self.train_moments.items():
            flat.update({f"moments.{column}.count": m.count, f"moments.{column}.sum": m.total,
                         f"moments.{column}.sumsq": m.total_sq})
        for column, m in self.feature_moments.items():
            flat.update({f"feature-moments.{column}.count": m.count, f"feature-moments.{column}.sum": m.total,
                         f"feature-moments.{column}.sumsq": m.total_sq})
        flat.update({f"bad-rows.{reason}": int(n) for reason, n in self.bad_rows.items()})
        flat.update({f"cold-val.{column}": int(n) for column, n in self.cold_val.items()})
        return flat

    @staticmethod
    def from_flat(flat: Mapping[str, Any]) -> "DataSummary":
        rows = {split: int(flat.get(f"rows.{split}", 0)) for split in SPLITS}
        labels: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
        moments: dict[str, dict[str, dict[str, float]]] = {"moments": {}, "feature-moments": {}}
        bad_rows: dict[str, int] = {}
        cold_val: dict[str, int] = {}
        for key, value in flat.items():
            kind, _, rest = key.partition(".")
            if kind == "labels":
                split, column = rest.split(".", 1)
                labels[split][column] = int(value)
            elif kind in moments:
                column, stat = rest.rsplit(".", 1)
                moments[kind].setdefault(column, {})[stat] = value
            elif kind == "bad-rows":
                bad_rows[rest] = int(value)
            elif kind == "cold-val":
                cold_val[rest] = int(value)
        return DataSummary(
            merchant_id=str(flat["merchant-id"]), label_columns=[str(c) for c in flat["label-columns"]],
            rows=rows, labels=labels,
            train_moments=_moments_from(moments["moments"]), feature_moments=_moments_from(moments["feature-moments"]),
            bad_rows=bad_rows, cold_val=cold_val,
        )


def _moments_from(flat: Mapping[str, Mapping[str, float]]) -> dict[str, LabelMoments]:
    return {c: LabelMoments(int(m["count"]), float(m["sum"]), float(m["sumsq"])) for c, m in flat.items()}


def pool_moments(moments: Iterable[LabelMoments]) -> LabelMoments:
    parts = list(moments)
    return LabelMoments(sum(m.count for m in parts), math.fsum(m.total for m in parts),
                        math.fsum(m.total_sq for m in parts))


def moments_to_stats(m: LabelMoments) -> dict[str, float]:
    """Mean and population std (ddof=0, as the rows' own std) from pooled moments."""
    mean = m.total / m.count
    variance = max(m.total_sq / m.count - mean * mean, 0.0)
    return {"mean": mean, "std": math.sqrt(variance), "count": m.count}


def _pooled(per_merchant: Iterable[Mapping[str, LabelMoments]]) -> dict[str, dict[str, float]]:
    by_column: dict[str, list[LabelMoments]] = {}
    for moments in per_merchant:
        for column, m in moments.items():
            by_column.setdefault(column, []).append(m)
    pooled = {column: pool_moments(parts) for column, parts in by_column.items()}
    return {column: moments_to_stats(m) for column, m in sorted(pooled.items()) if m.count > 0}


def pooled_label_stats(summaries: Iterable[DataSummary]) -> dict[str, dict[str, float]]:
    """{label: {"mean", "std", "count"}} over every merchant's train rows, for each label column with
    train labels, binary ones included (their mean is the base rate)."""
    return _pooled(s.train_moments for s in summaries)


def pooled_feature_stats(summaries: Iterable[DataSummary]) -> dict[str, dict[str, float]]:
    """{numerical feature: {"mean", "std", "count"}} over every merchant's train rows with a value:
    the standardisation every node applies alike."""
    return _pooled(s.feature_moments for s in summaries)


def pooled_bad_rows(summaries: Iterable[DataSummary]) -> dict[str, int]:
    """Rows left out per reason, summed over the merchants (each node counts only its own)."""
    total: dict[str, int] = {}
    for summary in summaries:
        for reason, n in summary.bad_rows.items():
            total[reason] = total.get(reason, 0) + int(n)
    return dict(sorted(total.items()))  # by reason: the same line whichever merchant set up first


def pooled_cold_shares(summaries: Iterable[DataSummary]) -> dict[str, float]:
    """Hashed column -> share of every merchant's validation rows whose value that merchant never
    trained on (an empty dict without validation rows)."""
    summaries = list(summaries)
    val_rows = sum(s.rows.get("val", 0) for s in summaries)
    columns = sorted({c for s in summaries for c in s.cold_val})
    return {c: sum(s.cold_val.get(c, 0) for s in summaries) / val_rows for c in columns} if val_rows else {}


def available_labels(summaries: Iterable[DataSummary]) -> list[str]:
    """Label columns some merchant has labels in (any split), as a table-wide check would see them."""
    return sorted({c for s in summaries for c in s.label_columns})
