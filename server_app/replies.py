"""Which clients a round asks, which replies it accepts, and whether enough came back: plain functions.

A reply is checked against the global model before anything is averaged: one NaN or one array of the
wrong shape would otherwise spread into every parameter it touches, and from there to every node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from core.errors import InputError
from server_app.aggregation import check_reducer, row_normalization_power


def sample_clients(indices: Sequence[int], fraction: float, count: int | None, seed: int, server_round: int,
                   phase: str) -> list[int]:
    """The merchant indices a round addresses: `count` of them (or `fraction`, at least one), drawn by a
    generator seeded from the run's seed, the round and the phase, so a run (and its resume) draws the
    same clients. Sampling by merchant index, not node id: node ids change from run to run."""
    indices = sorted(indices)
    take = sample_count(len(indices), fraction, count)
    if take >= len(indices):
        return indices
    rng = np.random.default_rng([int(seed), int(server_round), {"train": 0, "evaluate": 1}[phase]])
    return sorted(int(i) for i in rng.choice(indices, size=take, replace=False))


def sample_count(nodes: int, fraction: float, count: int | None) -> int:
    """How many of `nodes` a round asks: `count`, else `fraction` of them (at least one), at most all."""
    take = nodes if count is None else int(count)
    if count is None and fraction < 1.0:
        take = max(1, int(nodes * fraction))
    return min(take, nodes)


def check_sampling(fraction_train: float, clients_per_round: int | None) -> None:
    if clients_per_round is not None and int(clients_per_round) < 1:
        raise InputError(f"federation.clients_per_round must be >= 1 (or null: use fraction_train), "
                         f"got {clients_per_round}")
    if not 0 < fraction_train <= 1:
        raise InputError(f"federation.fraction_train must lie in (0, 1], got {fraction_train:g}")


def required_replies(min_replies: float, addressed: int) -> int:
    """How many usable train replies make a round valid: `min_replies` >= 1 is a count, a value in
    (0, 1) a fraction of the clients addressed (rounded up); never fewer than one."""
    if not min_replies > 0:
        raise InputError(f"federation.min_replies must be a count >= 1 or a fraction in (0, 1), got {min_replies:g}")
    if min_replies < 1:
        return max(1, int(np.ceil(min_replies * addressed - 1e-9)))
    return int(min_replies)


def reply_problem(global_arrays: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray],
                  row_counts: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  wide_stats: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                  row_values: Mapping[str, np.ndarray] | None = None) -> str | None:
    """Why a train reply cannot be aggregated (one line), or None when it can: its arrays must be the
    global model's names, shapes and dtypes, all finite, a table sent sparse as `row_values` (the rows
    of its row counts); its row ids must lie in their tables; its counts and Newton statistics must
    be finite (counts >= 0)."""
    row_values = row_values or {}
    expected = set(global_arrays) - set(row_values)
    missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
    if missing or extra:
        return f"arrays do not match the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, value in row_values.items():
        reference = global_arrays[name]
        if value.shape[1:] != reference.shape[1:] or value.dtype != reference.dtype:
            return (f"rows of {name!r} are {value.dtype}{list(value.shape)}, "
                    f"the global table is {reference.dtype}{list(reference.shape)}")
        if not np.isfinite(value).all():
            return f"rows of {name!r} hold {int((~np.isfinite(value)).sum())} non-finite value(s)"
    for name in (n for n in global_arrays if n in expected):
        reference, value = global_arrays[name], arrays[name]
        if value.shape != reference.shape or value.dtype != reference.dtype:
            return (f"array {name!r} is {value.dtype}{list(value.shape)}, "
                    f"the global model's is {reference.dtype}{list(reference.shape)}")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            return f"array {name!r} holds {int((~np.isfinite(value)).sum())} non-finite value(s)"
    for name, (ids, counts) in row_counts.items():
        if name not in global_arrays or len(ids) != len(counts):
            return f"row counts for {name!r} do not match a table of the global model"
        if len(ids) and (ids.min() < 0 or ids.max() >= len(global_arrays[name])):
            return f"row counts for {name!r} name rows outside its {len(global_arrays[name])} rows"
        if not (np.isfinite(counts).all() and (counts >= 0).all()):
            return f"row counts for {name!r} are negative or not finite"
    return statistics_problem(global_arrays, wide_stats, "first-order")


def statistics_problem(global_arrays: Mapping[str, np.ndarray],
                       stats: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], kind: str) -> str | None:
    """Why per-row Newton statistics cannot be summed (one line), or None: each must name a parameter
    of the global model, rows inside it, a scalar per row (a bias) or the row's vector and matrix (an
    embedding, tasks/embedding_newton.py), all finite."""
    for name, (ids, g, h) in stats.items():
        if name not in global_arrays or not len(ids) == len(g) == len(h):
            return f"{kind} statistics for {name!r} do not match a parameter of the global model"
        reference = global_arrays[name]
        if g.ndim > 1 and (reference.ndim != 2 or g.shape[1:] != reference.shape[1:]
                           or h.shape[1:] != 2 * reference.shape[1:]):
            return f"{kind} statistics for {name!r} do not match its rows of {list(reference.shape[1:])}"
        rows = reference.size if reference.ndim < 2 else reference.shape[0]  # as tasks/wide.newton_update reads it
        if len(ids) and (ids.min() < 0 or ids.max() >= rows):
            return f"{kind} statistics for {name!r} name rows outside it"
        if not (np.isfinite(g).all() and np.isfinite(h).all()):
            return f"{kind} statistics for {name!r} are not finite"
    return None


@dataclass(frozen=True)
class RoundRules:
    """How a round picks its clients, which replies count and how many it needs (federation.*)."""
    seed: int = 0
    clients_per_round: int | None = None   # None: fraction_train of the connected set-up nodes
    min_replies: float = 1                  # a count >= 1, or a fraction in (0, 1) of the clients addressed
    aggregation: str = "mean"               # mean | trimmed_mean | median, of the dense parameters
    trim_fraction: float = 0.0
    row_progress_power: float = 0.0         # federation.row_normalization (aggregation.aggregate_rows)


def round_rules(cfg: Mapping[str, Any]) -> RoundRules:
    """The run's rules, each option checked to one clear line."""
    fed = cfg["federation"]
    per_round = fed.get("clients_per_round")
    check_sampling(float(fed["fraction_train"]), per_round)
    rules = RoundRules(int(cfg["seed"]), None if per_round is None else int(per_round),
                       float(fed.get("min_replies", 1)), str(fed.get("aggregation", "mean")),
                       float(fed.get("trim_fraction", 0.0)), row_normalization_power(fed, cfg["train"]))
    required_replies(rules.min_replies, 1)
    check_reducer(rules.aggregation, rules.trim_fraction)
    return rules
