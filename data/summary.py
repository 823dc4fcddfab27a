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
        return flat

    @staticmethod
    def from_flat(flat: Mapping[str, Any]) -> "DataSummary":
        rows = {split: int(flat.get(f"rows.{split}", 0)) for split in SPLITS}
        labels: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
        moments: dict[str, dict[str, float]] = {}
        for key, value in flat.items():
            kind, _, rest = key.partition(".")
            if kind == "labels":
                split, column = rest.split(".", 1)
                labels[split][column] = int(value)
            elif kind == "moments":
                column, stat = rest.rsplit(".", 1)
                moments.setdefault(column, {})[stat] = value
        return DataSummary(
            merchant_id=str(flat["merchant-id"]), label_columns=[str(c) for c in flat["label-columns"]],
            rows=rows, labels=labels,
            train_moments={c: LabelMoments(int(m["count"]), float(m["sum"]), float(m["sumsq"]))
                           for c, m in moments.items()},
        )


def pool_moments(moments: Iterable[LabelMoments]) -> LabelMoments:
    parts = list(moments)
    return LabelMoments(sum(m.count for m in parts), math.fsum(m.total for m in parts),
                        math.fsum(m.total_sq for m in parts))


def moments_to_stats(m: LabelMoments) -> dict[str, float]:
    """Mean and population std (ddof=0, as the rows' own std) from pooled moments."""
    mean = m.total / m.count
    variance = max(m.total_sq / m.count - mean * mean, 0.0)
    return {"mean": mean, "std": math.sqrt(variance), "count": m.count}


def pooled_label_stats(summaries: Iterable[DataSummary]) -> dict[str, dict[str, float]]:
    """{label: {"mean", "std", "count"}} over every merchant's train rows, for each label column with
    train labels, binary ones included (their mean is the base rate)."""
    by_column: dict[str, list[LabelMoments]] = {}
    for summary in summaries:
        for column, m in summary.train_moments.items():
            by_column.setdefault(column, []).append(m)
    pooled = {column: pool_moments(parts) for column, parts in by_column.items()}
    return {column: moments_to_stats(m) for column, m in sorted(pooled.items()) if m.count > 0}


def available_labels(summaries: Iterable[DataSummary]) -> list[str]:
    """Label columns some merchant has labels in (any split), as a table-wide check would see them."""
    return sorted({c for s in summaries for c in s.label_columns})
