"""Multi-task FedAvg as plain array math, tested directly; the Flower strategy is a shell around it.

Shared parameters are averaged over every client, weighted by its labelled examples. A task's
parameters are averaged only over the clients holding that task's labels, weighted by their label
count, so a merchant without ratings never dilutes the rating head. A parameter that no client
trained this round keeps its current global value.

Id-indexed tables (embeddings, first-order biases) can instead be averaged row by row
(`aggregate_rows`): each row over the clients whose training data looked it up, weighted by how
often. Under plain FedAvg a user seen by one merchant has that merchant's update averaged with every
other client's untouched copy, so on sparse data each row moves by a fraction of what it learned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from core.errors import InputError


REDUCERS = ("mean", "trimmed_mean", "median")
RowCounts = tuple[np.ndarray, np.ndarray]  # (row ids int64 [k], counts [k]) of one id-indexed table


@dataclass
class ClientUpdate:
    arrays: Mapping[str, np.ndarray]
    examples: int
    label_counts: Mapping[str, int] = field(default_factory=dict)
    row_counts: Mapping[str, RowCounts] = field(default_factory=dict)  # table name -> rows it trained
    row_values: Mapping[str, np.ndarray] = field(default_factory=dict)  # table -> those rows' values, when
                                                                        # sent sparse (core/update_codec.py)

    def trained_rows_of(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row ids, counts, the rows' trained values) of one id-indexed table, sent whole or sparse."""
        rows, counts = self.row_counts.get(name, (np.zeros(0, np.int64), np.zeros(0)))
        values = self.row_values[name] if name in self.row_values else self.arrays[name][rows]
        return rows, counts, values


def parameter_weights(owner: str | None, updates: Sequence[ClientUpdate]) -> np.ndarray:
    """Each client's weight for one parameter: its examples (shared) or its labels of the owning task."""
    return np.array([u.examples if owner is None else u.label_counts.get(owner, 0) for u in updates], float)


def robust_mean(values: Sequence[np.ndarray], method: str, trim_fraction: float = 0.0) -> np.ndarray:
    """Coordinate-wise median, or mean of what is left after cutting `trim_fraction` of the values at
    each end (Flower's trim_mean), unweighted: one client's extreme values cannot drag the result."""
    stacked = np.stack([np.asarray(v, np.float64) for v in values])
    if method == "median":
        return np.median(stacked, axis=0)
    if method == "trimmed_mean":
        return trim_mean(stacked, trim_fraction)
    raise InputError(f"federation.aggregation must be one of {', '.join(REDUCERS)}, got {method!r}")


def check_reducer(method: str, trim_fraction: float) -> None:
    if method not in REDUCERS:
        raise InputError(f"federation.aggregation must be one of {', '.join(REDUCERS)}, got {method!r}")
    if not 0 <= trim_fraction < 0.5:
        raise InputError(f"federation.trim_fraction must lie in [0, 0.5), got {trim_fraction:g}")


def aggregate_multitask(current: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                        owners: Mapping[str, str | None], method: str = "mean", trim_fraction: float = 0.0
                        ) -> dict[str, np.ndarray]:
    """Each parameter over the clients that own it: their weighted mean, or under `method` =
    trimmed_mean | median their robust mean (unweighted; the weights only say who takes part)."""
    result: dict[str, np.ndarray] = {}
    weights_by_owner = {owner: parameter_weights(owner, updates) for owner in set(owners.values())}
    for name, value in current.items():
        if name not in owners:
            raise KeyError(f"parameter {name!r} has no owner entry; the model and the server disagree")
        weights = weights_by_owner[owners[name]]
        total = weights.sum()
        if total <= 0:
            result[name] = np.array(value, copy=True)
            continue
        if method == "mean":
            acc = np.zeros(value.shape, dtype=np.float64)
            for w, update in zip(weights, updates):
                if w > 0:
                    acc += (w / total) * update.arrays[name]
        else:
            acc = robust_mean([u.arrays[name] for w, u in zip(weights, updates) if w > 0], method, trim_fraction)
        result[name] = acc.astype(value.dtype) if np.issubdtype(value.dtype, np.floating) \
            else np.rint(acc).astype(value.dtype)
    return result


def aggregate_rows(current: np.ndarray, updates: Sequence[ClientUpdate], name: str, progress_power: float = 0.0
                   ) -> np.ndarray:
    """One id-indexed table averaged row by row: a row's new value is its current value plus the
    count-weighted mean of the changes of the clients that trained it; rows nobody trained keep theirs.

    With every client training every row in proportion to its examples this is plain FedAvg.

    `progress_power` p > 0 first divides each client's change by its local progress on the row,
    count ** p, and scales the mean back by the count-weighted mean progress (FedNova, Wang et al.,
    NeurIPS 2020). Why: a client's change is not proportional to its count. Under Adagrad started
    afresh each round it grows like sqrt(count), so the plain mean weighs a client's mean gradient
    by count ** 1.5 where pooled training weighs it by count: the dominant merchant's view of a
    shared user or item drowns the others'. p = 0.5 restores the pooled weighting there.
    """
    base = current.astype(np.float64)
    change = np.zeros_like(base)
    weight = np.zeros(len(base))
    progress = np.zeros(len(base))
    for update in updates:
        rows, counts, values = update.trained_rows_of(name)
        if len(rows) == 0:
            continue
        counts = np.asarray(counts, np.float64)
        pace = np.where(counts > 0, counts, 1.0) ** progress_power
        delta = values.astype(np.float64) - base[rows]
        np.add.at(change, rows, _per_row(counts / pace, base) * delta)
        np.add.at(weight, rows, counts)
        np.add.at(progress, rows, counts * pace)
    touched = weight > 0
    base[touched] += change[touched] * _per_row(progress[touched] / weight[touched] ** 2, base)
    return base.astype(current.dtype)


def _per_row(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`values` (one per row) shaped to broadcast over the rows of `table`."""
    return values.reshape((-1,) + (1,) * (table.ndim - 1))


PROGRESS_POWERS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


def row_normalization_power(federation_cfg: Mapping[str, object], train_cfg: Mapping[str, object]) -> float:
    """federation.row_normalization as aggregate_rows' power: auto = sqrt where it was measured to
    help (Adagrad, its state fresh each round: README, What the federation does), none otherwise.
    A train.keep_optimizer_state still `auto` (the run's tasks not known yet) counts as fresh, as it
    is on any run with ratings; the server asks again once setup has resolved it."""
    chosen = str(federation_cfg.get("row_normalization", "none"))
    if chosen == "auto":
        keep = train_cfg.get("keep_optimizer_state", False)
        fresh_adagrad = str(train_cfg.get("optimizer", "")).lower() == "adagrad" \
            and (str(keep) == "auto" or not bool(keep))
        return PROGRESS_POWERS["sqrt" if fresh_adagrad else "none"]
    if chosen not in PROGRESS_POWERS:
        raise InputError(f"federation.row_normalization must be auto, {', '.join(PROGRESS_POWERS)}, got {chosen!r}")
    return PROGRESS_POWERS[chosen]


@dataclass
class RowTotals:
    """Labelled rows per embedding row over every merchant that has trained so far, summed from the
    row counts their replies already carry (nothing new reaches the server). Sent with each train
    request, they let a merchant apply only its share of each row's L2 prior (tasks/training.py
    inverse_row_counts), so the merchants' objectives add up to the pooled one."""
    tables: Mapping[str, int]  # embedding table -> its number of rows
    totals: dict[str, np.ndarray] = field(default_factory=dict)
    counted: set[str] = field(default_factory=set)  # merchants whose counts are in (a shard never changes)

    def add(self, merchant: str, row_counts: Mapping[str, RowCounts]) -> None:
        if merchant in self.counted or not all(name in row_counts for name in self.tables):
            return
        self.counted.add(merchant)
        for name, rows in self.tables.items():
            ids, counts = row_counts[name]
            np.add.at(self.totals.setdefault(name, np.zeros(rows)), np.asarray(ids, np.int64),
                      np.asarray(counts, np.float64))

    def state(self) -> dict[str, object]:
        return {"totals": dict(self.totals), "counted": sorted(self.counted)}

    def restore(self, state: Mapping[str, object]) -> None:
        self.totals = {k: np.asarray(v, np.float64) for k, v in dict(state.get("totals", {})).items()}
        self.counted = set(state.get("counted", []))


def aggregate(current: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
              owners: Mapping[str, str | None], row_tables: Sequence[str] = (), method: str = "mean",
              trim_fraction: float = 0.0, row_progress_power: float = 0.0) -> dict[str, np.ndarray]:
    """Multi-task FedAvg, with the named id-indexed tables averaged row by row (`method` applies to
    the other, dense parameters: a row has too few clients for a robust mean)."""
    dense = {k: v for k, v in current.items() if k not in row_tables}
    result = aggregate_multitask(dense, updates, owners, method, trim_fraction)
    result.update({name: aggregate_rows(current[name], updates, name, row_progress_power) for name in row_tables})
    return {k: result[k] for k in current}
