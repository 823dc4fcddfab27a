"""Which columns of the table the model reads, and how a row becomes the model's input.

Four kinds of feature column, named in `data.features`:

* `ids` (default `[user_id, item_id]`): hashed into their own embedding tables; an empty cell is a
  bad row (the table must say who and what).
* `categorical`: hashed exactly like the ids; an empty cell is its own value, `MISSING`, so it
  lands in one fixed bucket per column and the model learns what "unknown" means.
* `numerical`: standardised with the federation's mean and std, pooled on the server from each
  merchant's count, sum and sum of squares over its train rows (never from rows). An empty cell is
  the mean (0 after standardising) plus a learned "missing" vector of its own (tasks/models/base.py).
* `bias_only` (default none): hashed like the categoricals but read by the first-order part only:
  one bias per value and task, no embedding. `[merchant_id]` gives each merchant its own level, as
  the bias model's and the one-hot references' merchant term does (as an embedding the same column
  overfits); off by default, since federated loses rating RMSE with it (README, Multi-task learning).

The model takes one int64 matrix per batch: the hashed columns (ids, then categoricals), the
numerical columns, each carried as the bit pattern of its raw float32 value (NaN = missing), then
the bias-only columns.
One matrix means every path that batches, shuffles, copies or scores rows (training, ranking,
scoring) carries numerical features unchanged; the embedding layer reads them back with
`unpack_numerical`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from core.errors import InputError

if TYPE_CHECKING:
    import torch

MISSING = "\x00missing"  # the value an empty categorical cell is hashed as (no real cell holds a NUL)


@dataclass(frozen=True)
class FeatureColumns:
    """The feature columns of a run, by kind, in the order their columns sit in the model input."""
    ids: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    numerical: tuple[str, ...] = ()
    bias_only: tuple[str, ...] = ()

    @property
    def hashed(self) -> list[str]:
        """Columns hashed into embedding tables: the model input's first columns, in this order."""
        return list(self.ids) + list(self.categorical)

    @property
    def all(self) -> list[str]:
        """Every feature column, in the order the model input holds them."""
        return self.hashed + list(self.numerical) + list(self.bias_only)


def feature_columns(data_cfg: Mapping[str, Any]) -> FeatureColumns:
    """The run's `data.features`, checked: every column named once."""
    spec = data_cfg["features"]
    if not isinstance(spec, Mapping):
        raise InputError("data.features must be a mapping with ids, categorical, numerical and bias_only lists, "
                         "e.g. data.features.categorical=[brand]")
    unknown = set(spec) - {"ids", "categorical", "numerical", "bias_only"}
    if unknown:
        raise InputError(f"data.features has unknown key(s) {', '.join(sorted(unknown))} "
                         "(known: ids, categorical, numerical, bias_only)")
    columns = FeatureColumns(*(tuple(spec.get(kind) or ()) for kind in ("ids", "categorical", "numerical", "bias_only")))
    if not columns.hashed:
        raise InputError("data.features needs at least one id or categorical column")
    seen: set[str] = set()
    for name in columns.all:
        if name in seen:
            raise InputError(f"data.features names column '{name}' twice")
        seen.add(name)
    return columns


@dataclass(frozen=True)
class FeatureSpec:
    """What a model needs to know of its input: rows per hashed column, the standardisation of each
    numerical column (the same on every node: it comes with the run plan), rows per bias-only column."""
    buckets: tuple[int, ...]
    numerical_mean: tuple[float, ...] = field(default=())
    numerical_std: tuple[float, ...] = field(default=())
    bias_buckets: tuple[int, ...] = field(default=())

    @property
    def n_numerical(self) -> int:
        return len(self.numerical_mean)

    @property
    def bias_columns(self) -> list[int]:
        """The model input's column of each bias-only feature: after the hashed and numerical ones."""
        start = len(self.buckets) + self.n_numerical
        return list(range(start, start + len(self.bias_buckets)))

    @staticmethod
    def of(features: "FeatureSpec | Sequence[int]") -> "FeatureSpec":
        """A spec as given, or one of hashed columns only (a plain list of bucket counts)."""
        return features if isinstance(features, FeatureSpec) else FeatureSpec(tuple(int(n) for n in features))


def numerical_scale(stats: Mapping[str, float] | None) -> tuple[float, float]:
    """(mean, std) of a numerical column from pooled {"mean", "std"}; std 1 where it would divide by
    zero (a constant column, or no value anywhere), so the standardised value stays finite."""
    if not stats or not stats.get("count"):
        return 0.0, 1.0
    std = float(stats["std"])
    return float(stats["mean"]), std if std > 0 and np.isfinite(std) else 1.0


def pack_numerical(values: np.ndarray) -> np.ndarray:
    """float [n, k] (NaN = missing) -> int64 [n, k] holding each value's float32 bit pattern."""
    return np.ascontiguousarray(values, dtype=np.float32).view(np.int32).astype(np.int64)


def unpack_numerical(columns: "torch.Tensor") -> "torch.Tensor":
    """The inverse of `pack_numerical`, on the model's input tensor: int64 [B, k] -> float32 [B, k]."""
    import torch  # here, so that data/ (converting, preparing) never loads torch

    return columns.to(torch.int32).view(torch.float32)
