"""Multi-task FedAvg as plain array math, tested directly; the Flower strategy is a shell around it.

Shared parameters are averaged over every client, weighted by its labelled examples. A task's
parameters are averaged only over the clients holding that task's labels, weighted by their label
count, so a merchant without ratings never dilutes the rating head. A parameter that no client
trained this round keeps its current global value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass
class ClientUpdate:
    arrays: Mapping[str, np.ndarray]
    examples: int
    label_counts: Mapping[str, int] = field(default_factory=dict)


def parameter_weights(owner: str | None, updates: Sequence[ClientUpdate]) -> np.ndarray:
    """Each client's weight for one parameter: its examples (shared) or its labels of the owning task."""
    return np.array([u.examples if owner is None else u.label_counts.get(owner, 0) for u in updates], float)


def aggregate_multitask(current: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                        owners: Mapping[str, str | None]) -> dict[str, np.ndarray]:
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
        acc = np.zeros(value.shape, dtype=np.float64)
        for w, update in zip(weights, updates):
            if w > 0:
                acc += (w / total) * update.arrays[name]
        result[name] = acc.astype(value.dtype) if np.issubdtype(value.dtype, np.floating) \
            else np.rint(acc).astype(value.dtype)
    return result
